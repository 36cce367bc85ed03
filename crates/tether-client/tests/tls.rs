//! The client over TLS against a real node on port 0: `tls://` and `wss://` (binary and JSON)
//! with a CA file (a private CA's, or a self-signed certificate), an `https://` dispatcher that answers a `wss://` endpoint, and the refusals:
//! a client that trusts only the system's roots, a certificate for another name, and a
//! reconnect that meets a certificate it does not trust (backs off and tries again).
//!
//! The node speaks plain TCP, WebSocket and HTTP: in front of it stands a small
//! TLS-terminating proxy (tokio-rustls on port 0, forwarding bytes both ways), holding a
//! certificate from a CA made in the test with rcgen.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::PrivateKeyDer;
use serde_json::{Value, json};
use tether_client::{Client, ClientConfig, ClientError, Event, WsEncoding};
use tether_core::{AppId, UserId};
use tether_server::{Config, Node};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

const SECRET: &[u8] = b"demo-secret-0123456789";
const API_KEY: &str = "demo-api-key-0123456789";
const STEP: Duration = Duration::from_secs(3);

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Ca { issuer }
    }

    /// The CA's certificate in a PEM file, as an operator would hand it to the client.
    fn file(&self) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, self.issuer.pem().as_bytes()).expect("write CA");
        file
    }

    /// A server's TLS config with a certificate this CA issued for `names` (DNS names or IP
    /// addresses).
    fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::from(key))
            .expect("server TLS config");
        Arc::new(config)
    }

    /// A server certificate and its key in PEM files, as a node reads them (`[tls]`).
    fn server_files(&self, names: &[&str]) -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
        let (cert, key) = self.issue(names);
        let write = |text: String| {
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            std::io::Write::write_all(&mut file, text.as_bytes()).expect("write PEM");
            file
        };
        (write(cert.pem()), write(key.serialize_pem()))
    }

    /// A certificate this CA issued for `names`, and its key.
    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        (cert, key)
    }
}

/// A TLS-terminating proxy on port 0: the TLS handshake with the client, then the bytes both
/// ways to `target`. Bound before it serves, so that a node can advertise its address.
struct Proxy {
    addr: SocketAddr,
    /// The config for the next handshakes (a test swaps it).
    tls: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    /// The connections it carries, to cut them.
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    listener: Option<TcpListener>,
}

impl Proxy {
    async fn bind(tls: Arc<rustls::ServerConfig>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Proxy {
            addr: listener.local_addr().expect("proxy addr"),
            tls: Arc::new(Mutex::new(tls)),
            conns: Arc::new(Mutex::new(Vec::new())),
            listener: Some(listener),
        }
    }

    /// Starts forwarding accepted connections to `target`.
    fn serve(&mut self, target: SocketAddr) {
        let listener = self.listener.take().expect("served once");
        let (tls, conns) = (self.tls.clone(), self.conns.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = TlsAcceptor::from(tls.lock().unwrap().clone());
                let conn = tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    let Ok(Ok(mut client)) = timeout(STEP, acceptor.accept(client)).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    let _ = client.shutdown().await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
    }

    /// Uses `tls` for the handshakes from now on.
    fn swap(&self, tls: Arc<rustls::ServerConfig>) {
        *self.tls.lock().unwrap() = tls;
    }

    /// Cuts every connection it carries.
    fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

fn token(user: &str) -> String {
    tether_core::auth::mint(
        SECRET,
        &AppId::from("demo"),
        &UserId::from(user),
        Duration::from_secs(3600),
    )
}

fn client_config(url: String, user: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, format!("device-{user}")).bind("demo", token(user));
    config.reconnect.initial = Duration::from_millis(20);
    config.reconnect.max = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(2);
    config
}

async fn start_node(config: Config) -> Node {
    Node::start(config).await.expect("node starts")
}

/// The node's TCP, WebSocket or HTTP listener behind a proxy with `tls`.
async fn proxy_to(target: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Proxy {
    let mut proxy = Proxy::bind(tls).await;
    proxy.serve(target);
    proxy
}

async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

async fn expect_connected(client: &mut Client) {
    match next(client).await {
        Event::Connected(_) => {}
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Pushes `n` to `user` through the node's (plain) HTTP API and checks that the client gets it.
async fn push_arrives(node: &Node, client: &mut Client, user: &str, n: u64) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/apps/demo/push", node.http_addr()))
        .bearer_auth(API_KEY)
        .json(&json!({"users": [user], "payload": {"n": n}, "qos": 0}))
        .send()
        .await
        .expect("push request");
    let answer: Value = response.json().await.expect("JSON answer");
    assert_eq!(answer["connections"], 1, "{answer}");
    match next(client).await {
        Event::Message(push) => {
            let got: Value = serde_json::from_slice(&push.payload).expect("JSON payload");
            assert_eq!(got, json!({"n": n}));
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

fn untrusted_reason(result: Result<Client, ClientError>) -> String {
    match result {
        Err(e @ ClientError::UntrustedCertificate(_)) => {
            assert!(e.is_retryable(), "like other connect failures");
            let text = e.to_string();
            assert!(text.starts_with("certificate not trusted: "), "{text}");
            text
        }
        Err(other) => panic!("expected an untrusted certificate, got {other:?}"),
        Ok(_) => panic!("expected an untrusted certificate, got a connection"),
    }
}

#[tokio::test]
async fn a_tls_client_trusting_the_ca_file_receives_pushes() {
    let node = start_node(Config::for_tests()).await;
    let ca = Ca::new("tether test CA");
    let tls = ca.server(&["localhost", "127.0.0.1"]);
    let proxy = proxy_to(node.tcp_addr().expect("tcp"), tls).await;
    let ca_file = ca.file();

    let config = client_config(format!("tls://localhost:{}", proxy.addr.port()), "alice")
        .with_ca_file(ca_file.path())
        .expect("the CA file reads");
    let mut client = Client::connect(config).await.expect("connect over TLS");
    expect_connected(&mut client).await;
    push_arrives(&node, &mut client, "alice", 1).await;
    push_arrives(&node, &mut client, "alice", 2).await;
    client.close().await;

    // An IP address as the host: the certificate names 127.0.0.1 too.
    let config = client_config(format!("tls://{}", proxy.addr), "alice")
        .with_ca_file(ca_file.path())
        .expect("the CA file reads");
    let mut client = Client::connect(config).await.expect("connect to an IP");
    expect_connected(&mut client).await;
    push_arrives(&node, &mut client, "alice", 3).await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn the_client_connects_to_the_node_s_own_tls_and_wss_listeners() {
    let ca = Ca::new("tether test CA");
    let (cert, key) = ca.server_files(&["localhost", "127.0.0.1"]);
    let mut config = Config::for_tests();
    config.listen.tls = "127.0.0.1:0".into();
    config.listen.wss = "127.0.0.1:0".into();
    config.tls.cert = Some(cert.path().to_owned());
    config.tls.key = Some(key.path().to_owned());
    let node = start_node(config).await;
    let ca_file = ca.file();
    let urls = [
        format!("tls://localhost:{}", node.tls_addr().expect("tls").port()),
        format!("wss://{}/ws", node.wss_addr().expect("wss")),
    ];
    for (n, url) in (1..).zip(urls) {
        let config = client_config(url, "dana")
            .with_ca_file(ca_file.path())
            .expect("the CA file reads");
        let mut client = Client::connect(config).await.expect("connect over TLS");
        expect_connected(&mut client).await;
        push_arrives(&node, &mut client, "dana", n).await;
        client.close().await;
    }
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn wss_clients_trusting_the_ca_file_receive_pushes_in_both_encodings() {
    let node = start_node(Config::for_tests()).await;
    let ca = Ca::new("tether test CA");
    let proxy = proxy_to(node.ws_addr().expect("ws"), ca.server(&["127.0.0.1"])).await;
    let ca_file = ca.file();
    for (encoding, user) in [(WsEncoding::Binary, "bob"), (WsEncoding::Json, "carol")] {
        let mut config = client_config(format!("wss://{}/ws", proxy.addr), user)
            .with_ca_file(ca_file.path())
            .expect("the CA file reads");
        config.ws_encoding = encoding;
        let mut client = Client::connect(config).await.expect("connect over wss");
        expect_connected(&mut client).await;
        push_arrives(&node, &mut client, user, 1).await;
        client.close().await;
    }
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn a_self_signed_certificate_given_as_the_ca_file_is_trusted() {
    let node = start_node(Config::for_tests()).await;
    let self_signed =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![self_signed.cert.der().clone()],
            PrivateKeyDer::from(self_signed.signing_key),
        )
        .expect("server TLS config");
    let proxy = proxy_to(node.tcp_addr().expect("tcp"), Arc::new(tls)).await;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, self_signed.cert.pem().as_bytes()).expect("write");

    let config = client_config(format!("tls://localhost:{}", proxy.addr.port()), "alice")
        .with_ca_file(file.path())
        .expect("the certificate reads");
    let mut client = Client::connect(config).await.expect("connect over TLS");
    expect_connected(&mut client).await;
    push_arrives(&node, &mut client, "alice", 1).await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn a_client_trusting_only_the_system_roots_refuses_a_private_ca() {
    let node = start_node(Config::for_tests()).await;
    let ca = Ca::new("tether test CA");
    let tls = ca.server(&["localhost", "127.0.0.1"]);
    let tcp = proxy_to(node.tcp_addr().expect("tcp"), tls.clone()).await;
    let ws = proxy_to(node.ws_addr().expect("ws"), tls).await;

    let url = format!("tls://localhost:{}", tcp.addr.port());
    let reason = untrusted_reason(Client::connect(client_config(url, "alice")).await);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    let url = format!("wss://{}/ws", ws.addr);
    let reason = untrusted_reason(Client::connect(client_config(url, "alice")).await);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let node = start_node(Config::for_tests()).await;
    let ca = Ca::new("tether test CA");
    let proxy = proxy_to(
        node.tcp_addr().expect("tcp"),
        ca.server(&["push.example.com"]),
    )
    .await;
    let ca_file = ca.file();
    for host in ["localhost", "127.0.0.1"] {
        let config = client_config(format!("tls://{host}:{}", proxy.addr.port()), "alice")
            .with_ca_file(ca_file.path())
            .expect("the CA file reads");
        let reason = untrusted_reason(Client::connect(config).await);
        assert!(reason.contains("not valid for name"), "{reason}");
        assert!(reason.contains(host), "{reason}");
    }
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn a_reconnect_that_meets_an_untrusted_certificate_backs_off_and_tries_again() {
    let node = start_node(Config::for_tests()).await;
    let ca = Ca::new("tether test CA");
    let good = ca.server(&["localhost"]);
    let proxy = proxy_to(node.tcp_addr().expect("tcp"), good.clone()).await;
    let ca_file = ca.file();
    let config = client_config(format!("tls://localhost:{}", proxy.addr.port()), "alice")
        .with_ca_file(ca_file.path())
        .expect("the CA file reads");
    let mut client = Client::connect(config).await.expect("connect over TLS");
    expect_connected(&mut client).await;

    // The server's certificate is replaced by one from a CA the client does not know.
    proxy.swap(Ca::new("another CA").server(&["localhost"]));
    proxy.cut();
    match next(&mut client).await {
        Event::Disconnected { reconnecting, .. } => assert!(reconnecting),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    for _ in 0..2 {
        match next(&mut client).await {
            Event::Disconnected {
                reason,
                reconnecting,
                ..
            } => {
                assert!(reason.contains("certificate not trusted"), "{reason}");
                assert!(reconnecting, "an untrusted certificate is retried");
            }
            other => panic!("expected a failed reconnect, got {other:?}"),
        }
    }
    // Fixed on the server: the client comes back by itself.
    proxy.swap(good);
    loop {
        match next(&mut client).await {
            Event::Connected(_) => break,
            Event::Disconnected { reconnecting, .. } => assert!(reconnecting),
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    push_arrives(&node, &mut client, "alice", 1).await;
    client.close().await;
    node.shutdown();
    node.wait().await;
}

#[tokio::test]
async fn an_https_dispatcher_sends_the_client_to_a_wss_endpoint() {
    let ca = Ca::new("tether test CA");
    let tls = ca.server(&["localhost", "127.0.0.1"]);
    // The proxies are bound first, so that the node can advertise the WebSocket one.
    let mut ws = Proxy::bind(tls.clone()).await;
    let mut http = Proxy::bind(tls).await;
    let mut node_config = Config::for_tests();
    // No plain TCP endpoint to answer: the dispatcher's only one is wss://.
    node_config.listen.tcp = String::new();
    node_config.node.advertise_ws = vec![format!("wss://localhost:{}/ws", ws.addr.port())];
    let node = start_node(node_config).await;
    ws.serve(node.ws_addr().expect("ws"));
    http.serve(node.http_addr());
    let dispatch = format!("https://localhost:{}/v1/dispatch", http.addr.port());
    let ca_file = ca.file();

    let mut config =
        ClientConfig::dispatched(&dispatch, "device-alice").bind("demo", token("alice"));
    config.connect_timeout = Duration::from_secs(2);
    let config = config
        .with_ca_file(ca_file.path())
        .expect("the CA file reads");
    let mut client = Client::connect(config)
        .await
        .expect("connect through the dispatcher");
    expect_connected(&mut client).await;
    push_arrives(&node, &mut client, "alice", 1).await;
    client.close().await;

    // Without the CA, the dispatcher's certificate is not trusted, and there is nothing to
    // fall back on.
    let without_ca =
        ClientConfig::dispatched(&dispatch, "device-alice").bind("demo", token("alice"));
    match Client::connect(without_ca).await {
        Err(ClientError::Dispatch {
            status: None,
            message,
            ..
        }) => assert!(message.contains("certificate not trusted"), "{message}"),
        Err(other) => panic!("expected an unreachable dispatcher, got {other:?}"),
        Ok(_) => panic!("expected an unreachable dispatcher, got a connection"),
    }
    node.shutdown();
    node.wait().await;
}
