"""An MQTT 5 device on Eclipse Paho (paho-mqtt), driven by crates/tether-server/tests/mqtt.rs.

    python paho_client.py wait-disconnect PORT TOKEN   connect, subscribe to the inbox, and
                                                       print the server's DISCONNECT reason
    python paho_client.py qos2 PORT TOKEN              publish QoS 2 and print the DISCONNECT
                                                       reason the server answers with

Prints "disconnected <reason code>" and exits 0; exits 1 when nothing came within 10 s.

    python paho_client.py session-start PORT TOKEN ID  connect as ID with Clean Start 1 and a
                                                       Session Expiry Interval of 300 s,
                                                       subscribe to the inbox and to `room-s`
                                                       at QoS 1, print "present <0|1>" and
                                                       "subscribed", then DISCONNECT
    python paho_client.py session-resume PORT TOKEN ID N
                                                       connect as ID with Clean Start 0 and the
                                                       same expiry, subscribe to nothing, print
                                                       "present <0|1>" and each message as
                                                       "<topic> <payload>" until N came, then
                                                       DISCONNECT (exits 1 after 10 s)
    python paho_client.py session-hold PORT TOKEN ID   as session-start (`room-s` at QoS 0:
                                                       its offset is the last one sent), but
                                                       stays connected:
                                                       prints each message as
                                                       "<topic> <payload>" and the server's
                                                       DISCONNECT as "disconnected <reason>"
                                                       (exits 1 if none within 10 s)
    python paho_client.py slow-acks PORT TOKEN N       connect with a Receive Maximum of 2
                                                       and acks of its own, subscribe to
                                                       `room-q` at QoS 1, print "subscribed",
                                                       then ack each message 50 ms after it
                                                       came; print each as "<qos> <payload>"
                                                       and the most ever unacked as
                                                       "in flight <n>" once N came (exits 1
                                                       after 15 s)
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def session(mode, port, token, client_id, count):
    """The session-start, session-hold and session-resume modes."""
    done = threading.Event()
    got = []

    def on_connect(client, userdata, flags, rc, properties):
        if rc != 0:
            print(f"refused {rc.value}", flush=True)
            done.set()
            return
        print(f"present {int(flags.session_present)}", flush=True)
        if mode == "session-start":
            client.subscribe([("$tether/inbox/demo", 1), ("room-s", 1)])
        elif mode == "session-hold":
            client.subscribe([("$tether/inbox/demo", 1), ("room-s", 0)])

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print("subscribed " + " ".join(str(c.value) for c in reason_codes), flush=True)
        if mode == "session-start":
            done.set()

    def on_disconnect(client, userdata, flags, rc, properties):
        if mode == "session-hold":
            print(f"disconnected {rc.value}", flush=True)
            done.set()

    def on_message(client, userdata, message):
        print(f"{message.topic} {message.payload.decode()}", flush=True)
        got.append(message)
        if mode == "session-resume" and len(got) >= count:
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("demo", token)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect(
        "127.0.0.1",
        port,
        keepalive=30,
        clean_start=(mode != "session-resume"),
        properties=props,
    )
    client.loop_start()
    ok = done.wait(10)
    client.disconnect()
    client.loop_stop()
    sys.exit(0 if ok else 1)


def slow_acks(port, token, count):
    """The slow-acks mode: a device that takes its time, with a small window."""
    done = threading.Event()
    lock = threading.Lock()
    got = []
    unacked = []
    most = [0]

    def on_connect(client, userdata, flags, rc, properties):
        client.subscribe("room-q", qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print("subscribed " + " ".join(str(c.value) for c in reason_codes), flush=True)

    def on_message(client, userdata, message):
        with lock:
            got.append(f"{message.qos} {message.payload.decode()}")
            if message.qos > 0:
                unacked.append(message.mid)
                most[0] = max(most[0], len(unacked))
            if len(got) >= count:
                done.set()

    def acker():
        while not done.is_set():
            time.sleep(0.05)
            with lock:
                mid = unacked.pop(0) if unacked else None
            if mid is not None:
                client.ack(mid, 1)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="paho-slow-acks",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.username_pw_set("demo", token)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 2
    client.connect("127.0.0.1", port, keepalive=30, properties=props)
    client.loop_start()
    threading.Thread(target=acker, daemon=True).start()
    ok = done.wait(15)
    for line in got:
        print(line, flush=True)
    print(f"in flight {most[0]}", flush=True)
    client.disconnect()
    client.loop_stop()
    sys.exit(0 if ok else 1)


def main():
    mode, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "slow-acks":
        slow_acks(port, token, int(sys.argv[4]))
    if mode.startswith("session-"):
        count = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        session(mode, port, token, sys.argv[4], count)
    done = threading.Event()
    reason = []

    def on_connect(client, userdata, flags, rc, properties):
        if rc != 0:
            print(f"refused {rc.value}", flush=True)
            done.set()
            return
        if mode == "wait-disconnect":
            client.subscribe("$tether/inbox/demo", qos=1)
        elif mode == "qos2":
            client.publish("telemetry", b"{}", qos=2)

    def on_disconnect(client, userdata, flags, rc, properties):
        reason.append(rc.value)
        done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-{mode}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("demo", token)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    ok = done.wait(10)
    client.loop_stop()
    if not ok or not reason:
        print("nothing within 10 s", flush=True)
        sys.exit(1)
    print(f"disconnected {reason[0]}", flush=True)


main()
