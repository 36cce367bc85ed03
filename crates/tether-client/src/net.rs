//! Opening a connection: TCP, then TLS when the URL asks for it. Gateways and the dispatcher
//! open theirs here, so they share one TLS config and one set of trusted roots.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::ClientError;
use crate::tls;

/// A connected socket, plain (`Left`) or inside TLS (`Right`, boxed: rustls' connection
/// state is large, and the box is one allocation per connection). `Either` passes reads, writes
/// (vectored too) and the shutdown through; for TLS the shutdown sends `close_notify` first, so
/// the server sees a clean end.
pub(crate) type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Connects to `host:port` and, with a TLS config, runs the TLS handshake (the certificate
/// checked against `host`). The caller bounds the time.
pub(crate) async fn open(
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Stream, ClientError> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Either::Left(tcp)),
        Some(config) => Ok(Either::Right(Box::new(
            tls::handshake(config, host, tcp).await?,
        ))),
    }
}
