//! TLS on every listener: `tls://` raw TCP, `wss://` WebSocket (and SSE), the HTTPS API with client
//! certificates; certificates loaded again at a reload and when their files change. The
//! certificates are made here (rcgen); the clients are rustls, `openssl s_client` and Python's
//! `ssl` module.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{APP, Http, WAIT, connect_frame, encode, expect_connected, expect_push, start};
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tether_proto::{Body, Code, Frame, binary};
use tether_server::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

/// A certificate authority of the test's own.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca(CertifiedIssuer::self_signed(params, key).expect("CA certificate"))
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 (a server's) or for a client: its PEM and
    /// its key's.
    fn issue(&self, client: bool) -> (String, String) {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names).expect("params");
        if client {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.0).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Certificate files in a directory of the test's.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path
    }

    /// Writes a server certificate by `ca` as `cert.pem` and `key.pem`.
    fn server(&self, ca: &Ca) {
        let (cert, key) = ca.issue(false);
        self.write("cert.pem", &cert);
        self.write("key.pem", &key);
    }
}

/// A node with every TLS listener, serving the certificate in `files`.
fn tls_config(files: &Files) -> Config {
    let mut config = Config::for_tests();
    config.listen.tls = "127.0.0.1:0".into();
    config.listen.wss = "127.0.0.1:0".into();
    config.listen.https = "127.0.0.1:0".into();
    config.tls.cert = Some(files.path("cert.pem"));
    config.tls.key = Some(files.path("key.pem"));
    config
}

/// A rustls client that trusts `ca` alone.
fn connector(ca_pem: &str, client: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client chain");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                .expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    TlsConnector::from(Arc::new(config))
}

/// A TLS handshake with `addr` as `localhost`.
async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")?;
    let name = ServerName::try_from("localhost").expect("server name");
    timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

/// Raw TCP frames inside TLS.
struct TlsClient {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl TlsClient {
    async fn connected(connector: &TlsConnector, addr: SocketAddr, user: &str) -> TlsClient {
        let stream = handshake(connector, addr).await.expect("TLS handshake");
        let mut client = TlsClient {
            stream,
            buf: BytesMut::new(),
        };
        client.send(&connect_frame(user, "d1", 30_000)).await;
        expect_connected(client.frame().await);
        client
    }

    async fn send(&mut self, frame: &Frame) {
        timeout(WAIT, self.stream.write_all(&encode(frame)))
            .await
            .expect("TLS write timed out")
            .expect("TLS write failed");
    }

    async fn frame(&mut self) -> Frame {
        timeout(WAIT, async {
            loop {
                if let Some(frame) = binary::decode(&mut self.buf, 1 << 20).expect("a frame") {
                    return frame;
                }
                let n = self.stream.read_buf(&mut self.buf).await.expect("TLS read");
                assert!(n > 0, "the server closed the connection");
            }
        })
        .await
        .expect("no frame in time")
    }
}

/// Waits until `done` holds, at most [`WAIT`].
async fn eventually(mut done: impl FnMut() -> bool, what: &str) {
    let waited = timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(waited.await.is_ok(), "{what}: not within {WAIT:?}");
}

async fn push_to(node: &Node, user: &str, text: &str) {
    let body = serde_json::json!({ "users": [user], "payload": text }).to_string();
    Http::new(node).push(&body).await;
}

#[tokio::test]
async fn raw_tcp_in_tls_connects_parks_and_receives_pushes() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    files.server(&ca);
    let mut config = tls_config(&files);
    // Woken by a push, a connection parks again when the sweep asks, after this.
    config.gateway.park_after = Duration::from_millis(100);
    let node = start(config).await;
    let addr = node.tls_addr().expect("tls listener");
    let connector = connector(&ca.pem(), None);

    let mut client = TlsClient::connected(&connector, addr, "alice").await;
    // Idle after its handshake, the connection gives its task up, TLS session and all.
    eventually(
        || node.parked_connections() == 1,
        "the TLS connection parked",
    )
    .await;
    push_to(&node, "alice", "over tls").await;
    let push = expect_push(client.frame().await);
    assert_eq!(&push.payload[..], b"\"over tls\"");
    // The push woke it; it parks again, and a ping wakes it from the client's side.
    eventually(|| node.parked_connections() == 1, "parked again").await;
    client.send(&Frame::new(7, Body::Ping)).await;
    assert!(matches!(client.frame().await.body, Body::Pong));
    // A payload larger than a TLS record (16 KiB) crosses several.
    let big = "x".repeat(30_000);
    push_to(&node, "alice", &big).await;
    let push = expect_push(client.frame().await);
    assert_eq!(push.payload.len(), big.len() + 2);
    // The client changes its keys (TLS 1.3 KeyUpdate, asking the server to change its own):
    // the server answers inside the session, and both directions go on.
    client
        .stream
        .get_mut()
        .1
        .refresh_traffic_keys()
        .expect("key update");
    client.send(&Frame::new(8, Body::Ping)).await;
    assert!(matches!(client.frame().await.body, Body::Pong));
    push_to(&node, "alice", "after the key update").await;
    assert_eq!(
        &expect_push(client.frame().await).payload[..],
        b"\"after the key update\""
    );
    // Many pushes in a row arrive whole and in order through the session.
    for i in 0..200 {
        push_to(&node, "alice", &format!("n{i}")).await;
    }
    for i in 0..200 {
        let push = expect_push(client.frame().await);
        assert_eq!(push.payload, format!("\"n{i}\"").into_bytes());
    }

    // A plain client on the TLS port gets no frame: its `connect` is not a TLS hello.
    let mut plain = common::TcpClient::open(addr).await;
    plain.send(&connect_frame("bob", "d1", 30_000)).await;
    assert!(
        !matches!(plain.recv_within(WAIT).await, Some(Ok(Some(_)))),
        "a plain client must not be served on the TLS port"
    );

    // Shutdown says goodbye inside TLS.
    node.shutdown();
    let goodbye = client.frame().await;
    assert!(
        matches!(&goodbye.body, Body::Disconnect(d) if d.code == Code::SHUTDOWN),
        "{goodbye:?}"
    );
}

#[tokio::test]
async fn a_client_that_comes_back_resumes_its_tls_session() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    files.server(&ca);
    let node = start(tls_config(&files)).await;
    let addr = node.tls_addr().expect("tls listener");
    // One client configuration, as an app keeps: it holds the tickets it was given.
    let connector = connector(&ca.pem(), None);
    let mut first = TlsClient::connected(&connector, addr, "ann").await;
    let kind = |client: &TlsClient| client.stream.get_ref().1.handshake_kind();
    assert_eq!(kind(&first), Some(rustls::HandshakeKind::Full));
    // The ticket came after the handshake; a round trip makes sure the client has read it.
    first.send(&Frame::new(2, Body::Ping)).await;
    assert!(matches!(first.frame().await.body, Body::Pong));
    let mut again = TlsClient::connected(&connector, addr, "ann-2").await;
    assert_eq!(
        kind(&again),
        Some(rustls::HandshakeKind::Resumed),
        "the second connection resumes with the ticket of the first"
    );
    push_to(&node, "ann-2", "resumed").await;
    assert_eq!(
        &expect_push(again.frame().await).payload[..],
        b"\"resumed\""
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    files.server(&ca);
    let node = start(tls_config(&files)).await;
    let stranger = connector(&Ca::new("another CA").pem(), None);
    let refused = handshake(&stranger, node.tls_addr().expect("tls")).await;
    let error = refused.expect_err("an untrusted certificate must fail the handshake");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn websocket_in_tls_carries_json_and_binary_frames() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    files.server(&ca);
    let node = start(tls_config(&files)).await;
    let addr = node.wss_addr().expect("wss listener");
    let connector = connector(&ca.pem(), None);
    for (user, json) in [("jay", true), ("bea", false)] {
        let tls = handshake(&connector, addr).await.expect("TLS handshake");
        let url = format!("wss://localhost:{}/ws", addr.port());
        let (mut ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url, tls))
            .await
            .expect("upgrade timed out")
            .expect("upgrade");
        let connect = connect_frame(user, "d1", 30_000);
        let message = if json {
            Message::text(tether_proto::json::encode(&connect))
        } else {
            Message::binary(encode(&connect))
        };
        ws.send(message).await.expect("send connect");
        let mut next = async || {
            let message = timeout(WAIT, ws.next())
                .await
                .expect("no message in time")
                .expect("closed")
                .expect("a message");
            match message {
                Message::Text(text) => tether_proto::json::decode(text.as_bytes()).expect("JSON"),
                Message::Binary(bytes) => binary::parse(bytes, 1 << 20).expect("binary"),
                other => panic!("unexpected {other:?}"),
            }
        };
        expect_connected(next().await);
        eventually(
            || node.parked_connections() >= 1,
            "the wss connection parked",
        )
        .await;
        push_to(&node, user, "over wss").await;
        let push = expect_push(next().await);
        assert_eq!(&push.payload[..], b"\"over wss\"");
    }
}

/// Reads from `stream` into `buf` until it holds `what`; panics after [`WAIT`].
async fn read_until(stream: &mut TlsStream<TcpStream>, buf: &mut BytesMut, what: &str) {
    while !String::from_utf8_lossy(buf).contains(what) {
        let n = timeout(WAIT, stream.read_buf(buf))
            .await
            .unwrap_or_else(|_| panic!("no {what:?} in time; got {buf:?}"))
            .expect("read");
        assert!(n > 0, "closed before {what:?}; got {buf:?}");
    }
}

#[tokio::test]
async fn sse_in_tls_streams_parks_and_takes_posts_on_the_wss_listener() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    files.server(&ca);
    let node = start(tls_config(&files)).await;
    let addr = node.wss_addr().expect("wss listener");
    let connector = connector(&ca.pem(), None);
    let mut stream = handshake(&connector, addr).await.expect("TLS handshake");
    let token = common::token("kim");
    let request = format!(
        "GET /v1/sse?device=d1&app={APP}&token={token} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    read_until(&mut stream, &mut buf, "\"op\":\"connected\"").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let session = text
        .split("event: session\ndata: ")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .expect("a session event")
        .to_owned();
    eventually(|| node.parked_connections() == 1, "the stream parked").await;

    push_to(&node, "kim", "over https").await;
    read_until(&mut stream, &mut buf, "over https").await;

    // A POST inside TLS too, on a connection of its own.
    let mut post = handshake(&connector, addr).await.expect("TLS handshake");
    let ping = r#"{"op":"ping","id":9}"#;
    let request = format!(
        "POST /v1/sse/{session} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{ping}",
        ping.len()
    );
    post.write_all(request.as_bytes()).await.unwrap();
    let mut answer = BytesMut::new();
    read_until(&mut post, &mut answer, "\r\n\r\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 202 Accepted\r\n"),
        "{answer:?}"
    );
    read_until(&mut stream, &mut buf, r#"{"op":"pong","id":9}"#).await;
}

#[tokio::test]
async fn certificates_load_again_at_a_reload_and_when_their_files_change() {
    let (first, files) = (Ca::new("first CA"), Files::new());
    files.server(&first);
    let mut config = tls_config(&files);
    config.tls.watch_interval = Duration::from_millis(100);
    let node = start(config.clone()).await;
    let addr = node.tls_addr().expect("tls");
    let mut kept = TlsClient::connected(&connector(&first.pem(), None), addr, "kept").await;

    // A reload with a broken key keeps the old certificate and says what is wrong. (The
    // watcher sees the broken file too, and keeps the old certificate as well.)
    std::fs::write(files.path("key.pem"), "not a key").expect("write");
    let problems = node
        .apply(config.clone())
        .expect_err("a broken key must not load");
    assert!(
        problems.iter().any(|p| p.contains("tls.key")),
        "{problems:?}"
    );
    TlsClient::connected(&connector(&first.pem(), None), addr, "kim").await;

    // A reload with a new certificate: new handshakes get it, the open connection stays.
    let second = Ca::new("second CA");
    files.server(&second);
    node.apply(config.clone()).expect("reload");
    TlsClient::connected(&connector(&second.pem(), None), addr, "kai").await;
    assert!(
        handshake(&connector(&first.pem(), None), addr)
            .await
            .is_err()
    );
    kept.send(&Frame::new(3, Body::Ping)).await;
    assert!(matches!(kept.frame().await.body, Body::Pong));

    // Files replaced on disk (a renewal) are loaded without a reload.
    let third = Ca::new("third CA");
    files.server(&third);
    let renewed = connector(&third.pem(), None);
    let loaded = timeout(WAIT, async {
        while handshake(&renewed, addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(
        loaded.await.is_ok(),
        "the renewed certificate was not loaded"
    );
}

#[tokio::test]
async fn a_tls_listener_without_a_certificate_is_a_config_problem() {
    let mut config = Config::for_tests();
    config.listen.wss = "127.0.0.1:0".into();
    let error = Node::start(config).await.expect_err("no certificate");
    let text = format!("{error:#}");
    assert!(
        text.contains("listen.wss") && text.contains("tls.cert"),
        "{text}"
    );

    // A key that is not the certificate's; then no key file at all, and no certificate in
    // the certificate file.
    let files = Files::new();
    files.server(&Ca::new("test CA"));
    let (_, other_key) = Ca::new("test CA").issue(false);
    files.write("key.pem", &other_key);
    let mut config = tls_config(&files);
    config.listen.tls = String::new();
    config.listen.https = String::new();
    let error = Node::start(config.clone())
        .await
        .expect_err("a key of another certificate");
    let text = format!("{error:#}");
    assert!(
        text.contains("tls: the certificate and key do not go together"),
        "{text}"
    );
    std::fs::remove_file(files.path("key.pem")).expect("remove");
    files.write("cert.pem", "no PEM here\n");
    let error = Node::start(config).await.expect_err("bad files");
    let text = format!("{error:#}");
    assert!(
        text.contains("tls.cert") && text.contains("tls.key"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Clients that are not ours

/// Whether `tool` is installed; under `CI=true` a missing one fails the test.
fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is needed by this test (`.ci/run` installs it)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

/// Runs `program` with `args`, `input` on its standard input, within [`WAIT`] times two:
/// its exit success and its output (stdout and stderr).
async fn run(program: &str, args: &[&str], input: &[u8]) -> (bool, String) {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("write stdin");
    drop(stdin);
    let output = timeout(WAIT * 2, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish"))
        .expect("output");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test]
async fn openssl_s_client_verifies_the_certificate_and_upgrades_a_websocket() {
    if !have("openssl") {
        return;
    }
    let (ca, files) = (Ca::new("test CA"), Files::new());
    files.server(&ca);
    let ca_file = files.write("ca.pem", &ca.pem());
    let mut config = tls_config(&files);
    config.gateway.handshake_timeout = Duration::from_secs(1);
    let node = start(config).await;
    let ca_arg = ca_file.to_str().expect("path");

    for (addr, version, expect) in [
        (node.tls_addr(), "-tls1_3", "TLSv1.3"),
        (node.tls_addr(), "-tls1_2", "TLSv1.2"),
    ] {
        let connect = addr.expect("tls").to_string();
        let args = [
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-CAfile",
            ca_arg,
            "-verify_return_error",
            "-brief",
            version,
        ];
        let (_, out) = run("openssl", &args, b"").await;
        assert!(out.contains("Verification: OK"), "{out}");
        assert!(
            out.contains(&format!("Protocol version: {expect}")),
            "{out}"
        );
    }

    // A WebSocket upgrade typed by hand, inside TLS.
    let connect = node.wss_addr().expect("wss").to_string();
    let request = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let args = [
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "localhost",
        "-CAfile",
        ca_arg,
        "-verify_return_error",
        "-quiet",
        "-ign_eof",
    ];
    // `-ign_eof` waits for the server: it closes the upgraded connection when no `connect`
    // comes within the handshake timeout, which ends the run.
    let (_, out) = run("openssl", &args, request.as_bytes()).await;
    assert!(out.contains("101 Switching Protocols"), "{out}");
    assert!(
        out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{out}"
    );
}

/// Fetches `url` with Python's `ssl` and `urllib`, trusting `ca`, with a client certificate
/// when given: the body, or `Err` with Python's error.
async fn python_get(
    url: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<String, String> {
    const SCRIPT: &str = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
if len(sys.argv) > 3:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
try:
    body = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=3).read()
    print("BODY " + body.decode())
except Exception as e:
    print("ERROR " + repr(e))
    sys.exit(3)
"#;
    let mut args = vec!["-c", SCRIPT, url, ca.to_str().expect("path")];
    if let Some((cert, key)) = client {
        args.push(cert.to_str().expect("path"));
        args.push(key.to_str().expect("path"));
    }
    let (ok, out) = run("python3", &args, b"").await;
    if ok { Ok(out) } else { Err(out) }
}

#[tokio::test]
async fn python_reads_the_https_api_only_with_a_client_certificate() {
    if !have("python3") {
        return;
    }
    let (ca, clients, files) = (Ca::new("test CA"), Ca::new("client CA"), Files::new());
    files.server(&ca);
    let ca_file = files.write("ca.pem", &ca.pem());
    let client_ca = files.write("client-ca.pem", &clients.pem());
    let (cert, key) = clients.issue(true);
    let (cert, key) = (
        files.write("client.pem", &cert),
        files.write("client-key.pem", &key),
    );
    let (stranger_cert, stranger_key) = Ca::new("stranger").issue(true);
    let stranger = (
        files.write("stranger.pem", &stranger_cert),
        files.write("stranger-key.pem", &stranger_key),
    );
    let mut config = tls_config(&files);
    config.tls.client_ca = Some(client_ca);
    let node = start(config).await;
    let https = node.https_addr().expect("https listener");
    let health = format!("https://localhost:{}/healthz", https.port());

    let body = python_get(&health, &ca_file, Some((&cert, &key))).await;
    assert!(
        body.as_deref().is_ok_and(|b| b.contains("BODY ok")),
        "{body:?}"
    );
    // The API itself still wants the app's key.
    let stats = format!("https://localhost:{}/v1/apps/{APP}/topics/t", https.port());
    let refused = python_get(&stats, &ca_file, Some((&cert, &key))).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("401")),
        "{refused:?}"
    );

    let without = python_get(&health, &ca_file, None).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let (c, k) = (&stranger.0, &stranger.1);
    let untrusted = python_get(&health, &ca_file, Some((c, k))).await;
    assert!(
        untrusted.is_err(),
        "a certificate of another CA: {untrusted:?}"
    );
    // The plain HTTP listener is unaffected.
    let plain = Http::new(&node).get("/healthz", None).await;
    assert_eq!(plain.status, 200);
}
