"""An MQTT device on Eclipse Paho (paho-mqtt) that reads its inbox, driven by
crates/tether-server/tests/mqtt_edge.rs, over any of the MQTT listener's carriers.

    python paho_inbox.py PORT TOKEN COUNT WAIT [--ws PATH] [--tls CAFILE] [--v311]

Connects as device `paho-inbox` of the app `demo` (the token's user), over TCP, or WebSocket
at PATH (`--ws /mqtt`), inside TLS trusting CAFILE alone (`--tls`); subscribes to
`$tether/inbox/demo` at QoS 1 and prints each payload on a line as it comes (Paho sends its
PUBACK once the callback returns). Exits 0 after COUNT messages, or after WAIT seconds with
what came; exits 2 when the connection is refused or fails, 3 when the subscription is.
"""

import ssl
import sys
import threading

import paho.mqtt.client as mqtt


def main():
    port, token, count, wait = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    args = sys.argv[5:]
    ws_path = args[args.index("--ws") + 1] if "--ws" in args else None
    cafile = args[args.index("--tls") + 1] if "--tls" in args else None
    protocol = mqtt.MQTTv311 if "--v311" in args else mqtt.MQTTv5
    done = threading.Event()
    got = []
    failed = []

    def on_connect(client, userdata, flags, rc, properties):
        if rc != 0:
            failed.append((2, f"refused {rc}"))
            done.set()
            return
        client.subscribe("$tether/inbox/demo", qos=1)

    def on_subscribe(client, userdata, mid, codes, properties):
        if any(c.is_failure for c in codes):
            failed.append((3, f"subscription refused {codes}"))
            done.set()

    def on_message(client, userdata, message):
        print(message.payload.decode(), flush=True)
        got.append(message.payload)
        if len(got) >= count:
            # After this callback Paho writes the PUBACK; the loop's next pass sends it.
            threading.Timer(0.3, done.set).start()

    def on_connect_fail(client, userdata):
        failed.append((2, "connection failed"))
        done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id="paho-inbox",
        protocol=protocol,
        transport="websockets" if ws_path else "tcp",
    )
    if ws_path:
        client.ws_set_options(path=ws_path)
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
        client.tls_set_context(context)
    client.username_pw_set("demo", token)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_connect_fail = on_connect_fail
    try:
        client.connect("localhost" if cafile else "127.0.0.1", port, keepalive=30)
    except Exception as e:  # noqa: BLE001 - any failure to connect is the answer
        print(f"cannot connect: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    client.loop_start()
    done.wait(wait)
    client.disconnect()
    client.loop_stop()
    if failed:
        print(failed[0][1], file=sys.stderr, flush=True)
        sys.exit(failed[0][0])


main()
