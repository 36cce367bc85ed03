//! The HTTP client the scenarios share: hyper's connection-level HTTP/1.1 client over one
//! keep-alive connection (no pool, no task per request), one request in flight.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::RETRY_AFTER;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Sender = SendRequest<Full<Bytes>>;

/// Opens one keep-alive connection.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection's driver: one task per HTTP connection, for the run.
    tokio::spawn(conn);
    Ok(sender)
}

/// One keep-alive connection driven by the task that sends on it, instead of by a task of its
/// own: a request and its answer then cost no hand-off between tasks (two wake-ups and polls
/// per request), which is a fair part of the load generator's CPU at 15-20k requests/s on a
/// machine it shares with the server. The connection is only driven while a request is in
/// flight, which is all one-request-at-a-time senders need.
pub struct Inline {
    sender: Sender,
    conn: hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline").finish_non_exhaustive()
    }
}

impl Inline {
    /// Opens one keep-alive connection.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Inline> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Inline { sender, conn })
    }

    /// Sends one request and reads the whole answer, driving the connection meanwhile.
    pub async fn call(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        let Inline { sender, conn } = self;
        let answer = call(sender, request);
        tokio::pin!(answer);
        tokio::select! {
            biased;
            answer = &mut answer => answer,
            end = conn => match end {
                Ok(()) => anyhow::bail!("the server closed the connection"),
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Sends one request and reads the whole answer.
pub async fn call(sender: &mut Sender, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .map(Duration::from_secs);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// `503 overloaded`: the status and the API's error code, to count errors by.
pub fn error_key(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{} {code}", status.as_u16()).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_keys() {
        let body = br#"{"error":"store queue full; retry later","code":"overloaded"}"#;
        assert_eq!(
            error_key(StatusCode::SERVICE_UNAVAILABLE, body),
            "503 overloaded"
        );
        assert_eq!(error_key(StatusCode::BAD_GATEWAY, b"<html>"), "502");
    }
}
