//! The webhook signature, so that a business can tell a POST came from tether and is fresh.
//!
//! # Scheme (version 1)
//!
//! Every POST carries:
//! - `X-Tether-Timestamp`: when this attempt was sent, in seconds since the Unix epoch;
//! - `X-Tether-Signature`: `v1=` followed by the lowercase hex HMAC-SHA256, keyed with the
//!   app's `secret`, of the bytes `timestamp + "." + body` (the timestamp exactly as in its
//!   header, then one dot, then the raw request body, before any JSON parsing);
//! - `X-Tether-Delivery`: the delivery's id, the same on every retry of one delivery (it is
//!   also the body's `id`);
//! - `X-Tether-Event`: `upstream`, `presence` or `subscribe_check`.
//!
//! The business recomputes the HMAC and compares in constant time, rejects a timestamp more
//! than a few minutes from its own clock (a replay), and drops a delivery id it has already
//! seen within that window (a retry, or a replay inside the window). Each retry is signed
//! again with a new timestamp, so a retry after a long backoff is still fresh.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-tether-timestamp";
pub const SIGNATURE_HEADER: &str = "x-tether-signature";
pub const DELIVERY_HEADER: &str = "x-tether-delivery";
pub const EVENT_HEADER: &str = "x-tether-event";

/// The prefix of a version 1 signature.
const V1: &str = "v1=";

/// The `X-Tether-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mac = mac(secret, &timestamp.to_string(), body);
    let mut out = String::with_capacity(V1.len() + 64);
    out.push_str(V1);
    for b in mac.finalize().into_bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Why a signed request does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is further than the tolerance from now (a replay, or a skewed clock)")]
    Stale,
    #[error("the signature does not match")]
    BadSignature,
}

/// Checks the headers of a webhook request the way a business should: the timestamp within
/// `tolerance` of `now_secs`, then the signature, compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: u64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if ts.abs_diff(now_secs) > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let hex = signature
        .strip_prefix(V1)
        .ok_or(VerifyError::BadSignature)?;
    let expected = unhex(hex).ok_or(VerifyError::BadSignature)?;
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| VerifyError::BadSignature)
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this never fails.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn known_vector() {
        // Computed independently:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'secret-0123456789'
        let sig = sign(b"secret-0123456789", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "v1=692511b180bbcd561410894fd2bedac27a99690e45169490ea808f433b5d0097"
        );
    }

    #[test]
    fn verifies_and_rejects() {
        let secret = b"secret-0123456789";
        let body = br#"{"type":"upstream"}"#;
        let sig = sign(secret, 1_700_000_000, body);
        let ok = verify(secret, "1700000000", &sig, body, 1_700_000_030, MINUTE);
        assert_eq!(ok, Ok(()));
        assert_eq!(
            verify(secret, "1700000000", &sig, body, 1_700_000_100, MINUTE),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(secret, "1700000001", &sig, body, 1_700_000_000, MINUTE),
            Err(VerifyError::BadSignature),
            "the timestamp is signed"
        );
        assert_eq!(
            verify(secret, "1700000000", &sig, b"{}", 1_700_000_000, MINUTE),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(
                b"other-secret",
                "1700000000",
                &sig,
                body,
                1_700_000_000,
                MINUTE
            ),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(secret, "soon", &sig, body, 1_700_000_000, MINUTE),
            Err(VerifyError::BadTimestamp)
        );
        for bad in ["", "v1=", "v1=zz", "v2=00", &sig[3..]] {
            assert_eq!(
                verify(secret, "1700000000", bad, body, 1_700_000_000, MINUTE),
                Err(VerifyError::BadSignature),
                "{bad:?}"
            );
        }
    }
}
