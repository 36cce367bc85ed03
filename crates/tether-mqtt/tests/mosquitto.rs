//! The codec against MQTT clients nobody here wrote: `mosquitto_pub` and `mosquitto_sub`
//! (Debian `mosquitto-clients`) connect, in 3.1.1 and in MQTT 5, to a tiny listener in this
//! test that decodes what they send and answers with packets this crate encodes. A client
//! that cannot read an answer fails its exit status or prints nothing.
//!
//! Without the tools the tests are skipped, except under `CI=true`, where they fail
//! (`.ci/run` installs `mosquitto-clients`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tether_mqtt::*;

const WAIT: Duration = Duration::from_secs(10);

/// The tool's path, or `None` to skip (a failure under `CI=true`).
fn tool(name: &'static str) -> Option<&'static str> {
    let path = name;
    let found = Command::new(path)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is missing (Debian package mosquitto-clients): required under CI=true");
    }
    eprintln!("skipping: {name} is not installed (Debian package mosquitto-clients)");
    None
}

/// A child process killed when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kill {
    /// Its exit status and its output, within [`WAIT`].
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                let mut out = String::new();
                if let Some(mut o) = self.0.stdout.take() {
                    o.read_to_string(&mut out).expect("stdout");
                }
                return (status, out);
            }
            assert!(Instant::now() < deadline, "the client did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the client did not connect");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// One side of a connection, as the transport will hold it: a read buffer and the version.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    version: Option<Version>,
}

impl Conn {
    fn read(&mut self) -> Packet {
        loop {
            if let Some(p) = decode(&mut self.buf, self.version, 65_536).expect("decodes") {
                if let Packet::Connect(c) = &p {
                    self.version = Some(c.version);
                }
                return p;
            }
            let mut chunk = [0u8; 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .expect("read (bounded by WAIT)");
            assert!(n > 0, "the client closed early");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn send(&mut self, p: Packet) {
        let v = self.version.expect("after CONNECT");
        self.stream
            .write_all(&encode_to_bytes(&p, v).expect("encodes"))
            .expect("write");
    }

    /// The CONNACK tether's transport sends (docs/mqtt.md section 2), so that the client
    /// has to read its MQTT 5 properties.
    fn connack(&mut self) {
        let mut properties = Properties::new();
        if self.version == Some(Version::V5) {
            properties
                .push(Property::ReceiveMaximum(16))
                .push(Property::MaximumPacketSize(65_536))
                .push(Property::MaximumQos(1))
                .push(Property::RetainAvailable(0))
                .push(Property::WildcardSubscriptionAvailable(0))
                .push(Property::SubscriptionIdentifierAvailable(0))
                .push(Property::SharedSubscriptionAvailable(0))
                .push(Property::ServerKeepAlive(30))
                .push(Property::UserProperty("user".into(), "demo:alice".into()));
        }
        self.send(Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties,
        }));
    }
}

fn connect_of(p: Packet) -> Connect {
    match p {
        Packet::Connect(c) => *c,
        other => panic!("expected CONNECT, got {other:?}"),
    }
}

#[test]
fn mosquitto_pub_connects_publishes_at_qos_1_and_disconnects() {
    let Some(pub_) = tool("mosquitto_pub") else {
        return;
    };
    for (flag, version) in [("mqttv311", Version::V311), ("mqttv5", Version::V5)] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        let child = Kill(
            Command::new(pub_)
                .args(["-h", "127.0.0.1", "-p", &port, "-V", flag, "-i", "phone-1"])
                .args([
                    "-u",
                    "demo,chat",
                    "-P",
                    "tok-a,tok-b",
                    "-k",
                    "30",
                    "-q",
                    "1",
                ])
                .args(["-t", "chat", "-m", "hello"])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn mosquitto_pub"),
        );
        let mut c = Conn {
            stream: accept(&listener),
            buf: BytesMut::new(),
            version: None,
        };
        let connect = connect_of(c.read());
        assert_eq!(connect.version, version);
        assert_eq!(connect.client_id, "phone-1");
        assert_eq!(connect.username.as_deref(), Some("demo,chat"));
        assert_eq!(connect.password, Some(Bytes::from_static(b"tok-a,tok-b")));
        assert_eq!(connect.keep_alive, 30);
        assert!(connect.clean_start);
        assert!(connect.will.is_none());
        c.connack();
        let Packet::Publish(p) = c.read() else {
            panic!("expected PUBLISH")
        };
        assert_eq!((p.qos, p.topic.as_str()), (QoS::AtLeastOnce, "chat"));
        assert_eq!(&p.payload[..], b"hello");
        c.send(Packet::PubAck(Ack::new(p.packet_id)));
        assert!(matches!(c.read(), Packet::Disconnect(_)));
        let (status, _) = child.finish();
        assert!(
            status.success(),
            "{flag}: mosquitto_pub exited with {status}"
        );
    }
}

#[test]
fn mosquitto_sub_subscribes_and_reads_inbox_publishes() {
    let Some(sub) = tool("mosquitto_sub") else {
        return;
    };
    for (flag, version) in [("mqttv311", Version::V311), ("mqttv5", Version::V5)] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port().to_string();
        let child = Kill(
            Command::new(sub)
                .args(["-h", "127.0.0.1", "-p", &port, "-V", flag, "-i", "phone-2"])
                .args(["-u", "demo", "-P", "tok", "-c", "-q", "1"])
                .args(["-t", "$tether/inbox/demo", "-t", "room/#", "-C", "2", "-v"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn mosquitto_sub"),
        );
        let mut c = Conn {
            stream: accept(&listener),
            buf: BytesMut::new(),
            version: None,
        };
        let connect = connect_of(c.read());
        assert_eq!(connect.version, version);
        assert!(!connect.clean_start, "-c asks for a persistent session");
        if version == Version::V5 {
            // mosquitto's "-c": a session that never expires.
            assert!(
                connect
                    .properties
                    .iter()
                    .any(|p| *p == Property::SessionExpiryInterval(u32::MAX))
            );
        }
        c.connack();
        let Packet::Subscribe(s) = c.read() else {
            panic!("expected SUBSCRIBE")
        };
        let filters: Vec<&str> = s.filters.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(filters, ["$tether/inbox/demo", "room/#"]);
        assert!(s.filters.iter().all(|(_, o)| o.qos == QoS::AtLeastOnce));
        // The inbox granted at QoS 1, the wildcard refused (docs/mqtt.md section 5).
        let refused = match version {
            Version::V311 => ReasonCode(reason::v311::SUBACK_FAILURE),
            Version::V5 => ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        };
        c.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes: vec![ReasonCode::GRANTED_QOS_1, refused],
        }));
        // A durable push at QoS 1, acked; then a qos 0 push.
        let mut properties = Properties::new();
        if version == Version::V5 {
            properties
                .push(Property::PayloadFormatIndicator(1))
                .push(Property::ContentType("application/json".into()))
                .push(Property::UserProperty("seq".into(), "18".into()));
        }
        c.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "$tether/inbox/demo".into(),
            packet_id: 1,
            properties,
            payload: Bytes::from_static(b"{\"n\":1}"),
        }));
        match c.read() {
            Packet::PubAck(a) => assert_eq!(a.packet_id, 1),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        c.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "$tether/inbox/demo".into(),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from_static(b"two"),
        }));
        assert!(matches!(c.read(), Packet::Disconnect(_)));
        let (status, out) = child.finish();
        assert!(
            status.success(),
            "{flag}: mosquitto_sub exited with {status}"
        );
        assert_eq!(
            out, "$tether/inbox/demo {\"n\":1}\n$tether/inbox/demo two\n",
            "{flag}"
        );
    }
}
