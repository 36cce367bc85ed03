//! A minimal WebSocket client (RFC 6455) for Nchan's subscribers: the upgrade request, and a
//! reader of server frames that finds each message's payload in place.
//!
//! Server frames are never masked. Fragmented messages are not reassembled (Nchan sends each
//! message as one frame); a continuation frame is reported as an error. Pings are answered.

use std::ops::Range;

use crate::tls::Stream;
use anyhow::bail;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::Item;

/// Largest upgrade answer read before giving up.
const MAX_HEAD: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("WebSocket frame of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("fragmented WebSocket messages are not supported")]
    Fragmented,
    #[error("unknown WebSocket opcode {0}")]
    UnknownOpcode(u8),
    #[error("masked frame from the server")]
    Masked,
}

/// Sends the upgrade request for `path` and reads the answer; bytes after it stay in `buf`.
pub async fn handshake(
    stream: &mut Stream,
    buf: &mut BytesMut,
    host: &str,
    path: &str,
) -> anyhow::Result<()> {
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            bail!("upgrade answer over {MAX_HEAD} bytes");
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            bail!("closed during the upgrade");
        }
    };
    let head = buf.split_to(end);
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status}");
    }
    let accept = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim().to_owned())
    });
    if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        bail!("bad Sec-WebSocket-Accept in the upgrade answer");
    }
    Ok(())
}

/// A server frame's header: its opcode, whether it ends a message, and where its payload is.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    payload: Range<usize>,
}

/// Check: the header of the whole frame at the front of `buf`, or `None` if incomplete.
fn check(buf: &[u8], max: usize) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err(WsError::Masked);
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| b.first_chunk::<8>()) {
            Some(b) => (u64::from_be_bytes(*b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > max as u64 {
        return Err(WsError::TooLarge(len));
    }
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload: at..end,
    }))
}

/// The next whole frame as an [`Item`], and its length.
pub fn next(buf: &[u8], max: usize) -> Result<Option<(usize, Item)>, WsError> {
    let Some(h) = check(buf, max)? else {
        return Ok(None);
    };
    let len = h.payload.end;
    let item = match h.opcode {
        0x1 | 0x2 if h.fin => Item::Payload(h.payload),
        0x0..=0x2 => return Err(WsError::Fragmented),
        0x8 => {
            let code = buf[h.payload.clone()]
                .first_chunk::<2>()
                .map_or(1005, |c| u16::from_be_bytes(*c));
            Item::Closed(format!("websocket close {code}"))
        }
        0x9 => Item::Reply(client_frame(0xA, &buf[h.payload])),
        0xA => Item::Skip,
        op => return Err(WsError::UnknownOpcode(op)),
    };
    Ok(Some((len, item)))
}

/// A whole client frame (FIN set, masked as clients must) with a short control payload.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    // Control payloads are at most 125 bytes; the mask only has to be present, not secret,
    // for a benchmark client talking to a local server.
    let payload = &payload[..payload.len().min(125)];
    let mask = [0x5a, 0xc3, 0x1e, 0x87];
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=65535 => {
                out.push(126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn text_frames_of_every_length_encoding() {
        for size in [0, 100, 125, 126, 1000, 65535, 65536, 70_000] {
            let payload = vec![b'x'; size];
            let frame = server_frame(0x81, &payload);
            let (len, item) = next(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(len, frame.len());
            let Item::Payload(range) = item else {
                panic!("{item:?}")
            };
            assert_eq!(&frame[range], &payload[..]);
            assert_eq!(next(&frame[..frame.len() - 1], 1 << 20).unwrap(), None);
        }
        assert_eq!(next(&[0x81], 100).unwrap(), None);
        assert_eq!(next(&[0x81, 126, 0], 100).unwrap(), None);
    }

    #[test]
    fn control_frames_and_errors() {
        let ping = server_frame(0x89, b"hi");
        let (_, item) = next(&ping, 100).unwrap().unwrap();
        let pong = client_frame(0xA, b"hi");
        assert_eq!(item, Item::Reply(pong.clone()));
        assert_eq!(pong[0], 0x8A);
        assert_eq!(pong[1], 0x80 | 2);
        let unmasked: Vec<u8> = pong[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ pong[2 + i % 4])
            .collect();
        assert_eq!(unmasked, b"hi");

        let close = server_frame(0x88, &1001_u16.to_be_bytes());
        assert_eq!(
            next(&close, 100).unwrap().unwrap().1,
            Item::Closed("websocket close 1001".into())
        );
        assert_eq!(
            next(&server_frame(0x01, b"part"), 100),
            Err(WsError::Fragmented)
        );
        assert_eq!(
            next(&server_frame(0x81, &[0; 200]), 100),
            Err(WsError::TooLarge(200))
        );
        assert_eq!(next(&[0x81, 0x85, 0, 0], 100), Err(WsError::Masked));
        assert_eq!(
            next(&server_frame(0x83, b""), 100),
            Err(WsError::UnknownOpcode(3))
        );
    }
}
