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
