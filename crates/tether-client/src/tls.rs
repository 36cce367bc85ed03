//! TLS for `tls://` and `wss://` gateways and `https://` dispatchers: which authorities are
//! trusted ([`TlsRoots`]), the one rustls config a client builds from them, and the handshake,
//! whose refusals are told apart: a certificate not trusted, or another TLS failure.
//!
//! rustls with ring, TLS 1.2 and 1.3 (rustls' safe defaults), no client certificate. The name
//! checked is the URL's host, a DNS name or an IP address, and is also sent as SNI (not for an
//! IP address: TLS has no SNI for those). The crypto provider is handed to the config, never
//! installed process-wide, so that an application's own rustls setup is left alone.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::ClientError;

/// The certificate authorities that TLS connections trust.
///
/// The default is the system's roots: the operating system's store (on Linux the CA bundle of
/// `ca-certificates`; `SSL_CERT_FILE` and `SSL_CERT_DIR` point elsewhere), read at the client's
/// first TLS connection, so a client that never uses TLS never reads them. With a CA file
/// ([`TlsRoots::from_pem_file`], [`crate::ClientConfig::with_ca_file`]), only that file's
/// certificates are trusted: the way to reach a server whose certificate a private CA issued,
/// or a self-signed one.
#[derive(Clone, Default)]
pub struct TlsRoots(Roots);

#[derive(Clone, Default)]
enum Roots {
    #[default]
    System,
    Custom {
        /// Where the certificates came from, for `Debug`.
        origin: String,
        store: Arc<RootCertStore>,
    },
}

impl TlsRoots {
    /// The system's roots (the default).
    pub fn system() -> Self {
        TlsRoots(Roots::System)
    }

    /// The certificates of a PEM file: one or more `BEGIN CERTIFICATE` blocks (other blocks,
    /// such as keys, are skipped). Fails when the file cannot be read or holds no certificate
    /// that can serve as a root, so that a wrong path shows before any connection.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let origin = format!("CA file {}", path.display());
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Config(format!("{origin}: cannot read it: {e}")))?;
        Self::parse(&pem, origin)
    }

    /// The certificates of PEM text, as [`TlsRoots::from_pem_file`] (for a CA shipped inside
    /// the application).
    pub fn from_pem(pem: &[u8]) -> Result<Self, ClientError> {
        Self::parse(pem, "CA certificates".to_owned())
    }

    fn parse(pem: &[u8], origin: String) -> Result<Self, ClientError> {
        let bad = |why: String| ClientError::Config(format!("{origin}: {why}"));
        let mut store = RootCertStore::empty();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| bad(format!("not readable as PEM: {e}")))?;
            store.add(cert).map_err(|e| {
                bad(format!(
                    "certificate {} cannot serve as a trusted root: {e}",
                    i + 1
                ))
            })?;
        }
        if store.is_empty() {
            return Err(bad(
                "holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)".to_owned(),
            ));
        }
        Ok(TlsRoots(Roots::Custom {
            origin,
            store: Arc::new(store),
        }))
    }
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Roots::System => f.write_str("TlsRoots(system)"),
            Roots::Custom { origin, store } => {
                write!(f, "TlsRoots({origin}: {} certificates)", store.len())
            }
        }
    }
}

/// A client's TLS config: built at its first use from the [`TlsRoots`], then shared by every
/// later connection, to gateways and to the dispatcher alike.
#[derive(Debug)]
pub(crate) struct Tls {
    roots: TlsRoots,
    config: Option<Arc<rustls::ClientConfig>>,
}

impl Tls {
    pub fn new(roots: TlsRoots) -> Self {
        Tls {
            roots,
            config: None,
        }
    }

    /// The config, built on the first call. Fails when the system's roots are asked for and
    /// the system has none (a configuration problem: retrying cannot help).
    pub fn config(&mut self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        let roots = match &self.roots.0 {
            Roots::System => Arc::new(system_roots()?),
            Roots::Custom { store, .. } => store.clone(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(format!("cannot set up TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = Arc::new(config);
        self.config = Some(config.clone());
        Ok(config)
    }
}

/// The operating system's trusted roots. Unreadable entries are skipped (a CA bundle often
/// holds a few that rustls does not take); none at all is an error that says what to do.
fn system_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, skipped) = store.add_parsable_certificates(found.certs);
    if !found.errors.is_empty() || skipped > 0 {
        tracing::debug!(
            added,
            skipped,
            errors = ?found.errors,
            "some of the system's root certificates were skipped"
        );
    }
    if store.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(String::new, |e| format!(" ({e})"));
        return Err(ClientError::Config(format!(
            "no trusted root certificates found on this system{why}: install the CA bundle \
             (ca-certificates), point SSL_CERT_FILE at one, or give a CA file"
        )));
    }
    Ok(store)
}

/// The name a server's certificate must be for: a DNS name, or an IP address (written without
/// IPv6 brackets, as [`crate::config::Endpoint::host`] holds it).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ClientError::InvalidUrl {
        url: host.to_owned(),
        reason: "the host is not a valid TLS server name".to_owned(),
    })
}

/// Runs the TLS handshake over `tcp`, checking the server's certificate against `host`. The
/// caller bounds the time.
pub(crate) async fn handshake(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let name = server_name(host)?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(handshake_error)
}

/// tokio-rustls reports rustls' errors inside an `io::Error`: a refused certificate becomes
/// [`ClientError::UntrustedCertificate`], other TLS failures [`ClientError::Tls`], and what is
/// left (a reset, end of stream) stays I/O.
fn handshake_error(e: io::Error) -> ClientError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(why)) => {
            ClientError::UntrustedCertificate(describe(why))
        }
        Some(other) => ClientError::Tls(other.to_string()),
        None => ClientError::Io(e),
    }
}

/// rustls' reason, with a hint for the usual case: a certificate from a private CA.
fn describe(why: &CertificateError) -> String {
    match why {
        CertificateError::UnknownIssuer => "issued by an authority that is not among the \
            trusted roots (UnknownIssuer); for a private CA, give its certificate as the CA file"
            .to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(result: Result<TlsRoots, ClientError>) -> String {
        match result {
            Err(ClientError::Config(why)) => why,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_is_refused() {
        let missing = config_error(TlsRoots::from_pem_file("/nonexistent/ca.pem"));
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        assert!(missing.contains("cannot read"), "{missing}");

        let empty = config_error(TlsRoots::from_pem(b""));
        assert!(empty.contains("no certificate"), "{empty}");
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(config_error(TlsRoots::from_pem(key_only)).contains("no certificate"));
        let not_der = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let not_der = config_error(TlsRoots::from_pem(not_der));
        assert!(not_der.contains("certificate 1"), "{not_der}");
    }

    #[test]
    fn server_names_are_dns_names_or_ip_addresses() {
        assert!(matches!(
            server_name("push.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("bad name"),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn certificate_refusals_are_told_apart_from_other_failures() {
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let e = handshake_error(refused);
        assert!(matches!(e, ClientError::UntrustedCertificate(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("certificate not trusted: "),
            "{e}"
        );
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert!(matches!(handshake_error(alert), ClientError::Tls(_)));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(handshake_error(reset), ClientError::Io(_)));
    }

    #[test]
    fn debug_names_the_roots() {
        assert_eq!(format!("{:?}", TlsRoots::default()), "TlsRoots(system)");
    }
}
