"""An MQTT 5 device on Eclipse Paho (paho-mqtt), driven by crates/tether-server/tests/mqtt.rs.

    python paho_client.py wait-disconnect PORT TOKEN   connect, subscribe to the inbox, and
                                                       print the server's DISCONNECT reason
    python paho_client.py qos2 PORT TOKEN              publish QoS 2 and print the DISCONNECT
                                                       reason the server answers with

Prints "disconnected <reason code>" and exits 0; exits 1 when nothing came within 10 s.
"""

import sys
import threading

import paho.mqtt.client as mqtt


def main():
    mode, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
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
