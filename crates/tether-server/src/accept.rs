//! What a listener does when `accept` fails: out of descriptors (`EMFILE`, `ENFILE`), mostly,
//! which lasts until something closes. Every listener backs off instead of spinning, counts
//! the failure (`tether_accept_errors_total{listener}`), warns at most once a second, and
//! accepts again as soon as the backoff is over: recovery needs nothing but a free descriptor.
//!
//! The HTTP API's listener is [`ApiListener`], so that it behaves like the gateway's rather
//! than like axum's own (which logs an error and sleeps a whole second per failure); the HTTPS
//! API's is [`TlsApiListener`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::warn;

/// How long a listener waits after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Shortest time between two warnings of one listener.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// One listener's failed accepts.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    failed: u64,
    warned: Option<Instant>,
}

impl AcceptErrors {
    /// `listener` names it in the metric and the log: `tcp`, `ws`, `http`.
    pub fn new(listener: &'static str) -> Self {
        AcceptErrors {
            listener,
            failed: 0,
            warned: None,
        }
    }

    /// Counts a failed accept, warns if it did not lately, and waits [`ACCEPT_BACKOFF`].
    /// Errors about the one connection (reset or aborted before it was accepted) are not the
    /// listener's and are not waited for.
    pub async fn failed(&mut self, e: &io::Error) {
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        crate::metrics::accept_error(self.listener);
        self.failed += 1;
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            warn!(
                listener = self.listener,
                error = %e,
                failed = self.failed,
                "accept failed; backing off (out of open files?)"
            );
            self.warned = Some(Instant::now());
            self.failed = 0;
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// The peer of an HTTP API connection (`ConnectInfo<Peer>`), for the listener's guard.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, ApiListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The HTTP API's listener, for `axum::serve`.
#[derive(Debug)]
pub struct ApiListener {
    inner: TcpListener,
    errors: AcceptErrors,
}

impl ApiListener {
    pub fn new(inner: TcpListener) -> Self {
        ApiListener {
            inner,
            errors: AcceptErrors::new("http"),
        }
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => self.errors.failed(&e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Most HTTPS API handshakes under way at once; a connection past them is closed.
const MAX_API_HANDSHAKES: usize = 256;

/// A TLS stream of the HTTPS API, handshake done.
pub type ApiTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The HTTPS API's listener, for `axum::serve`.
///
/// axum accepts one connection after the other, so the TLS handshake cannot happen in
/// [`axum::serve::Listener::accept`]: one silent client would hold up every other. A task of
/// its own accepts instead and gives each connection's handshake a task (at most
/// [`MAX_API_HANDSHAKES`] at once, each within `timeout`); axum takes the connections whose
/// handshake is done.
#[derive(Debug)]
pub struct TlsApiListener {
    ready: tokio::sync::mpsc::Receiver<(ApiTlsStream, SocketAddr)>,
    local: SocketAddr,
}

impl TlsApiListener {
    /// Accepts on `inner` until `shutdown`, with the certificate in `certs`.
    pub fn start(
        inner: TcpListener,
        certs: std::sync::Arc<crate::tls::Certs>,
        timeout: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> io::Result<Self> {
        let local = inner.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_API_HANDSHAKES));
        tokio::spawn(async move {
            let mut errors = AcceptErrors::new("https");
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = inner.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        errors.failed(&e).await;
                        continue;
                    }
                };
                let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                    crate::metrics::tls_handshake("https", "overload");
                    continue;
                };
                let acceptor = certs.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            crate::metrics::tls_handshake("https", "ok");
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            crate::metrics::tls_handshake("https", "error");
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                        }
                        Err(_) => crate::metrics::tls_handshake("https", "timeout"),
                    }
                });
            }
        });
        Ok(TlsApiListener { ready, local })
    }
}

impl axum::serve::Listener for TlsApiListener {
    type Io = ApiTlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ApiTlsStream, SocketAddr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task ended (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsApiListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsApiListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}
