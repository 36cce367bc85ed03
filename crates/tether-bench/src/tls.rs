//! TLS for the load generator's connections (`--tls`): a rustls client (ring, TLS 1.3 only)
//! that trusts one CA file, and [`Stream`], the socket a subscriber holds, plain or inside TLS.
//!
//! Every connection makes a full handshake: resumption is off, so that handshakes per second
//! and the server's CPU per handshake are those of new clients (ECDHE and a signature each),
//! not of returning ones.
//!
//! What a TLS connection costs this side: its `ClientConnection` (boxed, so that plain
//! connections do not pay for it), which keeps rustls' 4 KiB read buffer once a record has
//! been read, and the record keys. `connections` reports the load generator's own RSS per
//! connection beside the server's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// The command-line options of TLS, shared by the scenarios that open subscribers.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Connect inside TLS 1.3: tether's `tls://` listener (default 127.0.0.1:7402), or with
    /// `--transport ws` its `wss://` one (default 127.0.0.1:7403).
    #[arg(long)]
    pub tls: bool,
    /// With --tls: the CA certificates (PEM) to trust; `tether-bench cert` makes one.
    #[arg(long, requires = "tls")]
    pub ca_file: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry.
    #[arg(long, default_value = "localhost", requires = "tls")]
    pub server_name: String,
    /// With --tls: offer only this cipher suite (the server follows the client's order, so
    /// this is what it uses); default: rustls' order, AES-256-GCM first.
    #[arg(long, value_enum, requires = "tls")]
    pub tls_suite: Option<Suite>,
}

/// A TLS 1.3 cipher suite the client may insist on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Suite {
    Aes256,
    Aes128,
    Chacha20,
}

impl Suite {
    fn rustls(self) -> rustls::SupportedCipherSuite {
        use rustls::crypto::ring::cipher_suite as cs;
        match self {
            Suite::Aes256 => cs::TLS13_AES_256_GCM_SHA384,
            Suite::Aes128 => cs::TLS13_AES_128_GCM_SHA256,
            Suite::Chacha20 => cs::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }
}

impl TlsArgs {
    /// The client, with the CA file read now (so that a wrong path fails before connecting),
    /// or `None` without --tls.
    pub fn client(&self) -> anyhow::Result<Option<TlsClient>> {
        if !self.tls {
            return Ok(None);
        }
        let Some(path) = &self.ca_file else {
            anyhow::bail!("--tls needs --ca-file (the CA that signed the server's certificate)");
        };
        TlsClient::new(path, &self.server_name, self.tls_suite).map(Some)
    }
}

/// A TLS client configuration. Serializable (worker processes get it with the target): the
/// CA's PEM travels, the rustls configuration is built once per process on first use.
#[derive(Clone, Serialize, Deserialize)]
pub struct TlsClient {
    ca_pem: String,
    server_name: String,
    suite: Option<Suite>,
    #[serde(skip)]
    connector: OnceLock<TlsConnector>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting the certificates of the PEM file at `ca`, expecting `server_name`,
    /// offering only `suite` if there is one.
    pub fn new(ca: &Path, server_name: &str, suite: Option<Suite>) -> anyhow::Result<TlsClient> {
        let ca_pem = std::fs::read_to_string(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
        let client = TlsClient {
            ca_pem,
            server_name: server_name.to_owned(),
            suite,
            connector: OnceLock::new(),
        };
        // Checked now: certificates that parse, a name that is one.
        client.connector()?;
        Ok(client)
    }

    fn connector(&self) -> anyhow::Result<&TlsConnector> {
        if let Some(connector) = self.connector.get() {
            return Ok(connector);
        }
        let config = client_config(&self.ca_pem, self.suite)?;
        Ok(self
            .connector
            .get_or_init(|| TlsConnector::from(Arc::new(config))))
    }

    /// Makes the TLS handshake on `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> anyhow::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(self.server_name.clone())
            .with_context(|| format!("`{}` is not a server name", self.server_name))?;
        self.connector()?
            .connect(name, tcp)
            .await
            .context("TLS handshake")
    }
}

/// TLS 1.3 only, the CA's certificates as the only roots, no resumption.
fn client_config(ca_pem: &str, suite: Option<Suite>) -> anyhow::Result<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("a certificate of the CA file")?)
            .context("a certificate of the CA file")?;
    }
    anyhow::ensure!(!roots.is_empty(), "the CA file holds no certificate");
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites = vec![suite.rustls()];
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// A subscriber's socket: plain (`Left`), or inside TLS (`Right`, boxed: a client session is a
/// few hundred bytes inline, which plain connections should not carry).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// `tcp` as it is, or inside TLS once the handshake is done.
pub async fn open(tcp: TcpStream, tls: Option<&TlsClient>) -> anyhow::Result<Stream> {
    match tls {
        None => Ok(Either::Left(tcp)),
        Some(client) => Ok(Either::Right(Box::new(client.connect(tcp).await?))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use rustls::ServerConfig;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::target::{Kind, TargetArgs};

    const WAIT: Duration = Duration::from_secs(5);

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        target: TargetArgs,
    }

    fn parse(args: &[&str]) -> Result<TargetArgs, clap::Error> {
        let argv = ["tether-bench", "--secret", "s"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| cli.target)
    }

    fn cert_dir() -> (tempfile::TempDir, crate::cert::Files) {
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let files = crate::cert::make(dir.path(), &names, None).unwrap();
        (dir, files)
    }

    #[test]
    fn tls_targets_connect_to_the_tls_listener_by_default() {
        let (_dir, files) = cert_dir();
        let ca = files.ca.to_str().unwrap();
        let target = parse(&["--tls", "--ca-file", ca])
            .unwrap()
            .target(10)
            .unwrap();
        assert_eq!(target.addrs, ["127.0.0.1:7402".parse().unwrap()]);
        assert!(target.tls.is_some());
        let target = parse(&["--tls", "--ca-file", ca, "--addr", "127.0.0.1:9000"])
            .unwrap()
            .target(10)
            .unwrap();
        assert_eq!(target.addrs, ["127.0.0.1:9000".parse().unwrap()]);
        let plain = parse(&[]).unwrap().target(10).unwrap();
        assert_eq!(plain.addrs, [Kind::Tether.default_addr()]);
        assert!(plain.tls.is_none());
        let target = parse(&["--tls", "--ca-file", ca, "--tls-suite", "aes128"])
            .unwrap()
            .target(10)
            .unwrap();
        assert_eq!(target.tls.unwrap().suite, Some(Suite::Aes128));
    }

    #[test]
    fn tls_options_that_cannot_work_are_refused() {
        let (_dir, files) = cert_dir();
        let ca = files.ca.to_str().unwrap();
        // No CA to trust.
        let err = parse(&["--tls"]).unwrap().target(10).unwrap_err();
        assert!(err.to_string().contains("--ca-file"), "{err}");
        // A CA file or a suite without --tls, or a missing CA file.
        assert!(parse(&["--ca-file", ca]).is_err());
        assert!(parse(&["--tls-suite", "chacha20"]).is_err());
        let err = parse(&["--tls", "--ca-file", "/nonexistent/ca.pem"])
            .unwrap()
            .target(10)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        // A file with no certificate in it (the key).
        let key = files.key.to_str().unwrap();
        assert!(
            parse(&["--tls", "--ca-file", key])
                .unwrap()
                .target(10)
                .is_err()
        );
        // Only tether has TLS listeners.
        let err = parse(&["--target", "mosquitto", "--tls", "--ca-file", ca])
            .unwrap()
            .target(10)
            .unwrap_err();
        assert!(err.to_string().contains("tether only"), "{err}");
    }

    /// A TLS echo server with the certificate of `files`: answers each read with its bytes.
    async fn echo_server(files: &crate::cert::Files) -> std::net::SocketAddr {
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0; 256];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tls_stream_carries_bytes_both_ways_with_tls_1_3_and_the_suite_asked_for() {
        let (_dir, files) = cert_dir();
        let addr = echo_server(&files).await;
        let suite = Some(Suite::Chacha20);
        let client = TlsClient::new(&files.ca, "localhost", suite).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut stream = timeout(WAIT, open(tcp, Some(&client)))
            .await
            .unwrap()
            .unwrap();
        let Either::Right(tls) = &stream else {
            panic!("a plain stream with a TLS client");
        };
        let session = tls.get_ref().1;
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let negotiated = session.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(negotiated, Some(Suite::Chacha20.rustls().suite()));
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut back = [0; 4];
        timeout(WAIT, stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"ping");
    }

    #[tokio::test]
    async fn a_server_signed_by_another_ca_is_refused() {
        let (_dir, files) = cert_dir();
        let (_other_dir, other) = cert_dir();
        let addr = echo_server(&files).await;
        let client = TlsClient::new(&other.ca, "localhost", None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = timeout(WAIT, open(tcp, Some(&client)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(format!("{err:#}").contains("certificate"), "{err:#}");
        // The right CA but a name the certificate does not carry.
        let client = TlsClient::new(&files.ca, "example.com", None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = timeout(WAIT, open(tcp, Some(&client)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    }
}
