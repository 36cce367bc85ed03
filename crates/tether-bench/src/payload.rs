//! The benchmark's message: `{"t":<µs>,"n":<number>,"s":<slot>,"pad":"xx…"}`, padded to the
//! requested size. `t` is the send time on [`crate::stats::Clock`] (publish-to-delivery
//! latency), `n` numbers every publish of a run (losses and duplicates), `s` says which
//! measured window the message belongs to (0: none, a warm-up).
//!
//! The same bytes go to every target; tether gets them as the JSON `payload` of its API.
//! Reading tolerates reordered keys and spaces, in case a server re-serializes the JSON.

use std::io::Write as _;

/// What a received payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub t: u64,
    pub n: u64,
    pub s: u8,
}

/// Writes the message into `out` (cleared first), padded to `size` bytes when that is room
/// enough for the fields.
pub fn write(out: &mut Vec<u8>, f: Fields, size: usize) {
    out.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"t\":{},\"n\":{},\"s\":{},\"pad\":\"",
        f.t, f.n, f.s
    );
    const TAIL: usize = 2; // `"}`
    let pad = size.saturating_sub(out.len() + TAIL);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// The fields of a received message, or `None` if it is not one of ours.
pub fn read(payload: &[u8]) -> Option<Fields> {
    read_as_written(payload).or_else(|| read_any_order(payload))
}

/// The fast path: the fields in the order and spacing [`write`] uses.
fn read_as_written(payload: &[u8]) -> Option<Fields> {
    let (t, rest) = number_after(payload, b"{\"t\":")?;
    let (n, rest) = number_after(rest, b",\"n\":")?;
    let (s, _) = number_after(rest, b",\"s\":")?;
    Some(Fields {
        t,
        n,
        s: u8::try_from(s).ok()?,
    })
}

/// The digits right after `prefix` at the start of `text`, and what follows them.
fn number_after<'a>(text: &'a [u8], prefix: &[u8]) -> Option<(u64, &'a [u8])> {
    let rest = text.strip_prefix(prefix)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0_u64;
    for &d in &rest[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &rest[digits..]))
}

/// Any key order, spaces allowed (a server that re-serializes the JSON).
fn read_any_order(payload: &[u8]) -> Option<Fields> {
    Some(Fields {
        t: json_u64(payload, b"\"t\"")?,
        n: json_u64(payload, b"\"n\"")?,
        s: u8::try_from(json_u64(payload, b"\"s\"")?).ok()?,
    })
}

/// The unsigned integer value of JSON key `key` (quotes included), spaces allowed around the
/// colon.
pub fn json_u64(text: &[u8], key: &[u8]) -> Option<u64> {
    let mut at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let skip_spaces = |at: &mut usize| {
        while text.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    skip_spaces(&mut at);
    if text.get(at) != Some(&b':') {
        return None;
    }
    at += 1;
    skip_spaces(&mut at);
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Fields = Fields {
        t: 1_763_700_000_123_456,
        n: 42,
        s: 3,
    };

    #[test]
    fn sized_and_readable() {
        for size in [0, 50, 100, 1024] {
            let mut out = Vec::new();
            write(&mut out, F, size);
            assert_eq!(out.len(), size.max(44), "{}", String::from_utf8_lossy(&out));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["n"], 42);
            assert_eq!(read(&out), Some(F));
        }
    }

    #[test]
    fn tolerates_reserialized_json() {
        let sorted = br#"{"n": 42, "pad": "xx", "s" :3, "t":1763700000123456}"#;
        assert_eq!(read_as_written(sorted), None);
        assert_eq!(read(sorted), Some(F));
        assert_eq!(read(br#"{"t":99999999999999999999,"n":1,"s":0}"#), None);
        assert_eq!(read(br#"{"t":1,"n":2}"#), None);
        assert_eq!(read(br#"{"t":"1","n":2,"s":0}"#), None);
        assert_eq!(read(br#"{"t":1,"n":2,"s":300}"#), None);
        assert_eq!(read(b"garbage"), None);
    }
}
