//! What a listener does when `accept` fails: out of descriptors (`EMFILE`, `ENFILE`), mostly,
//! which lasts until something closes. Every listener backs off instead of spinning, counts
//! the failure (`tether_accept_errors_total{listener}`), warns at most once a second, and
//! accepts again as soon as the backoff is over: recovery needs nothing but a free descriptor.
//!
//! The HTTP API's listener is [`ApiListener`], so that it behaves like the gateway's rather
//! than like axum's own (which logs an error and sleeps a whole second per failure).

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
