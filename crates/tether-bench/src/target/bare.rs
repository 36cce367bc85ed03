//! The bare writer's wire format (see [`crate::bare_writer`]): a connection's first byte says
//! what it is, then messages travel as a u32 BE length and the payload, both ways.

use super::Item;

/// First byte of a subscriber's connection.
pub const SUBSCRIBER: u8 = b'S';
/// First byte of a publisher's connection.
pub const PUBLISHER: u8 = b'P';

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bare message of {0} bytes is over the limit")]
pub struct TooLarge(pub usize);

/// Appends one message (length prefix and payload) to `out`.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The next whole message in `buf` and its length, or `None` while incomplete.
pub fn next(buf: &[u8], max: usize) -> Result<Option<(usize, Item)>, TooLarge> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max {
        return Err(TooLarge(len));
    }
    Ok((buf.len() >= 4 + len).then(|| (4 + len, Item::Payload(4..4 + len))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        frame(&mut out, b"hello");
        frame(&mut out, b"");
        assert_eq!(next(&out, 100).unwrap(), Some((9, Item::Payload(4..9))));
        assert_eq!(
            next(&out[9..], 100).unwrap(),
            Some((4, Item::Payload(4..4)))
        );
        assert_eq!(next(&out[..8], 100).unwrap(), None);
        assert_eq!(next(&out[..3], 100).unwrap(), None);
        assert_eq!(next(&out, 4), Err(TooLarge(5)));
    }
}
