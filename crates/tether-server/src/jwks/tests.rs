use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::fetch::{FetchError, MAX_BODY, TIMEOUT};
use super::*;

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

/// A tiny HTTP server: answers every request with the status and body in force, counts the
/// requests, and closes the connection.
#[derive(Clone)]
struct Served {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    answer: Arc<Mutex<(u16, Vec<u8>)>>,
}

impl Served {
    async fn start(status: u16, body: Vec<u8>, tls: Option<TlsAcceptor>) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = Served {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            answer: Arc::new(Mutex::new((status, body))),
        };
        let server = served.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                server.answer(stream).await;
                            }
                        }
                        None => server.answer(stream).await,
                    }
                });
            }
        });
        served
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        let (status, body) = self.answer.lock().unwrap().clone();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }

    fn set(&self, status: u16, body: Vec<u8>) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The document's URL: by address for `http` (no name to resolve, which a paused clock
    /// would not wait for), by the certificate's name for `https`.
    fn url(&self, scheme: &str) -> Url {
        let host = if scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        Url::parse(&format!("{scheme}://{host}:{}/jwks.json", self.addr.port())).unwrap()
    }
}

/// A JWKS document with the test EC key (tether-core's testdata), named `kid`.
fn document(kid: &str) -> Vec<u8> {
    let pem = include_bytes!("../../../tether-core/src/auth/testdata/ec8.pem");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_vec(&json!({ "keys": [jwk] })).unwrap()
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kids(keys: &RemoteKeys) -> Vec<String> {
    keys.current().map_or(Vec::new(), |k| {
        k.kids().into_iter().map(str::to_owned).collect()
    })
}

#[tokio::test]
async fn a_fetch_reads_a_200_and_refuses_other_statuses_and_oversized_documents() {
    let served = Served::start(200, document("k1"), None).await;
    let client = Client::new();
    let body = client.get(&served.url("http")).await.unwrap();
    assert_eq!(body, document("k1"));
    served.set(302, Vec::new());
    let redirect = client.get(&served.url("http")).await.unwrap_err();
    assert!(
        matches!(redirect, FetchError::Status(s) if s == 302),
        "{redirect}"
    );
    served.set(200, vec![b' '; MAX_BODY + 1]);
    let large = client.get(&served.url("http")).await.unwrap_err();
    assert!(matches!(large, FetchError::TooLarge), "{large}");
    let closed = Url::parse("http://127.0.0.1:1/jwks").unwrap();
    let refused = client.get(&closed).await.unwrap_err();
    assert!(matches!(refused, FetchError::Connect(_)), "{refused}");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_gets_no_answer_ends_at_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    // Accepts, reads, never answers.
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let began = Instant::now();
    let silent = Client::new().get(&url).await.unwrap_err();
    assert!(matches!(silent, FetchError::Timeout(_)), "{silent}");
    assert!(began.elapsed() >= TIMEOUT);
}

#[tokio::test]
async fn an_https_url_is_fetched_over_tls_and_only_from_a_trusted_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let tls = TlsAcceptor::from(Arc::new(config));
    let served = Served::start(200, document("k1"), Some(tls)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let body = Client::with_roots(roots)
        .get(&served.url("https"))
        .await
        .unwrap();
    assert_eq!(body, document("k1"));
    // The system's and Mozilla's roots do not know the test's certificate.
    let untrusted = Client::new().get(&served.url("https")).await.unwrap_err();
    assert!(matches!(untrusted, FetchError::Tls(_)), "{untrusted}");
    // Plain HTTP to a TLS port fails too, rather than reading garbage as a document.
    assert!(Client::new().get(&served.url("http")).await.is_err());
}

#[tokio::test]
async fn the_keys_are_fetched_at_once_and_again_for_an_unknown_kid_at_most_once_a_minute() {
    let served = Served::start(200, document("k1"), None).await;
    let refreshers = Refreshers::new(CancellationToken::new());
    let app = AppId::from("idp");
    let url = served.url("http");
    let keys = refreshers
        .start(&app, url.as_str(), Duration::from_secs(600), None)
        .unwrap();
    tokio::time::timeout(WAIT, keys.settled()).await.unwrap();
    assert_eq!(kids(&keys), ["k1"]);
    assert_eq!(served.hits(), 1);

    served.set(200, document("k2"));
    keys.unknown_kid();
    until("the refetch of k2", || kids(&keys) == ["k2"]).await;
    assert_eq!(served.hits(), 2);
    // Within the minute, more unknown kids fetch nothing.
    served.set(200, document("k3"));
    for _ in 0..10 {
        keys.unknown_kid();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served.hits(), 2);
    assert_eq!(kids(&keys), ["k2"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_keys_and_is_retried_sooner_than_the_refresh() {
    let served = Served::start(200, document("k1"), None).await;
    let refreshers = Refreshers::new(CancellationToken::new());
    let every = Duration::from_secs(600);
    let keys = refreshers
        .start(
            &AppId::from("idp"),
            served.url("http").as_str(),
            every,
            None,
        )
        .unwrap();
    keys.settled().await;
    assert_eq!(kids(&keys), ["k1"]);

    served.set(503, b"down".to_vec());
    tokio::time::sleep(every + Duration::from_millis(100)).await;
    until("the failed refresh", || served.hits() == 2).await;
    assert_eq!(kids(&keys), ["k1"], "a failure keeps the keys in force");
    served.set(200, b"{\"keys\": []}".to_vec());
    tokio::time::sleep(retry_after(1) + Duration::from_millis(100)).await;
    until("the first retry", || served.hits() == 3).await;
    assert_eq!(
        kids(&keys),
        ["k1"],
        "a set without keys keeps the keys in force"
    );
    served.set(200, document("k2"));
    tokio::time::sleep(retry_after(2) + Duration::from_millis(100)).await;
    until("the second retry", || kids(&keys) == ["k2"]).await;
}

#[test]
fn retries_double_from_a_second_up_to_five_minutes() {
    let waits: Vec<u64> = (1..=12).map(|n| retry_after(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(retry_after(u32::MAX), RETRY_MAX);
}

#[tokio::test]
async fn a_refresher_ends_when_its_keys_are_dropped_or_the_node_stops() {
    let served = Served::start(200, document("k1"), None).await;
    let stop = CancellationToken::new();
    let refreshers = Refreshers::new(stop.clone());
    let url = served.url("http");
    let every = Duration::from_secs(600);
    let dropped = refreshers
        .start(&AppId::from("a"), url.as_str(), every, None)
        .unwrap();
    let kept = refreshers
        .start(&AppId::from("b"), url.as_str(), every, None)
        .unwrap();
    // The task holds the state while it runs.
    let (dropped_state, kept_state) = (Arc::downgrade(&dropped.state), Arc::downgrade(&kept.state));
    drop(dropped);
    until("the dropped keys' task to end", || {
        dropped_state.strong_count() == 0
    })
    .await;
    assert_eq!(kept_state.strong_count(), 2);
    stop.cancel();
    until("the stopped node's task to end", || {
        kept_state.strong_count() == 1
    })
    .await;
}

#[tokio::test]
async fn a_reload_starts_from_the_keys_it_replaces_so_no_token_is_refused_meanwhile() {
    let served = Served::start(200, document("k1"), None).await;
    let refreshers = Refreshers::new(CancellationToken::new());
    let url = served.url("http");
    let app = AppId::from("idp");
    let every = Duration::from_secs(600);
    let before = refreshers.start(&app, url.as_str(), every, None).unwrap();
    before.settled().await;
    // The provider is down when the reload happens.
    served.set(500, Vec::new());
    let after = refreshers
        .start(&app, url.as_str(), every, before.current())
        .unwrap();
    assert_eq!(kids(&after), ["k1"]);
    tokio::time::timeout(WAIT, after.settled()).await.unwrap();
    assert_eq!(kids(&after), ["k1"]);
    assert!(before.is_for(url.as_str()));
    assert!(!before.is_for("http://localhost:1/other.json"));
}

#[test]
fn a_jwks_url_is_http_or_https_with_a_host_and_no_credentials() {
    assert!(check_url("https://login.example.com/.well-known/jwks.json").is_ok());
    assert!(check_url("http://10.0.0.5:8080/keys").is_ok());
    for (bad, why) in [
        ("login.example.com/jwks", "is not a URL"),
        ("ftp://example.com/jwks", "must start with https://"),
        ("file:///etc/jwks.json", "must start with https://"),
        ("https://user:pw@example.com/jwks", "user name or password"),
    ] {
        let e = check_url(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}
