//! One GET of a JWKS URL: HTTP/1.1 over TCP, or over TLS 1.2/1.3 (rustls with ring, checked
//! against the system's roots and Mozilla's), bounded in time and size, without redirects or
//! proxies.
//!
//! Not reqwest, which the webhooks use: this build compiles it without TLS, and giving it TLS
//! would either bring a second crypto library (aws-lc), which leaves rustls unable to choose a
//! default provider for the Redis client's TLS, or make every reqwest client of the workspace
//! depend on a provider installed process-wide first. hyper's client, already in the tree,
//! with tokio-rustls and ring, as the Redis client has them, needs neither.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::task::AbortOnDropHandle;

/// How long a fetch may take, from the connect to the document's last byte.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The largest document read (providers' sets are a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// Why a fetch failed (for the log; clients never see it).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0} (redirects are not followed)")]
    Status(StatusCode),
    #[error("the document is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the document could not be read: {0}")]
    Body(String),
    #[error("not a URL this fetcher can use")]
    Url,
}

/// Fetches JWKS documents; one per node (its roots are read once), shared by every app.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client that trusts the system's roots (where an operator adds a private CA) and
    /// Mozilla's (for hosts without a system store).
    pub fn new() -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let system = rustls_native_certs::load_native_certs();
        if !system.errors.is_empty() {
            tracing::debug!(errors = ?system.errors, "some system roots could not be read");
        }
        roots.add_parsable_certificates(system.certs);
        Client::with_roots(roots)
    }

    /// A client that trusts `roots` only.
    pub fn with_roots(roots: rustls::RootCertStore) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    /// The body of a `200` answer to a GET of `url`, within [`TIMEOUT`] and [`MAX_BODY`].
    pub async fn get(&self, url: &Url) -> Result<Bytes, FetchError> {
        tokio::time::timeout(TIMEOUT, self.get_unbounded(url))
            .await
            .unwrap_or(Err(FetchError::Timeout(TIMEOUT)))
    }

    async fn get_unbounded(&self, url: &Url) -> Result<Bytes, FetchError> {
        let port = url.port_or_known_default().ok_or(FetchError::Url)?;
        // An IPv6 address comes in brackets; a name or an address connects and names the
        // server alike.
        let host = url.host_str().ok_or(FetchError::Url)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match url.scheme() {
            "http" => exchange(tcp, url).await,
            "https" => {
                let name = ServerName::try_from(host.to_owned()).map_err(|_| FetchError::Url)?;
                let tls = self.tls.connect(name, tcp).await.map_err(FetchError::Tls)?;
                exchange(tls, url).await
            }
            _ => Err(FetchError::Url),
        }
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// One request on a fresh connection, and its answer's body.
async fn exchange<S>(io: S, url: &Url) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Drives the connection while the answer is read; stopped when this returns.
    let _connection = AbortOnDropHandle::new(tokio::spawn(connection));
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let request = Request::get(path)
        .header(HOST, authority)
        .header(USER_AGENT, concat!("tether/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|_| FetchError::Url)?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status(response.status()));
    }
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(FetchError::TooLarge);
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => FetchError::TooLarge,
            Err(e) => FetchError::Body(e.to_string()),
        })?;
    Ok(body.to_bytes())
}
