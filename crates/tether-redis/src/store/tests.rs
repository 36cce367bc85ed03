//! Unit tests of the store's encoding and of its keys' TTLs.

use bytes::Bytes;
use tether_core::MessageId;
use tether_core::store::StoredMessage;
use tether_proto::PayloadKind;

use super::codec::{MESSAGE_HEADER, decode_element};
use super::*;

fn element(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = seq.to_be_bytes().to_vec();
    out.extend(encode_element(
        MessageId(7),
        100,
        200,
        PayloadKind::Json,
        payload,
    ));
    out
}

#[test]
fn an_element_comes_back_whole() {
    let m = decode_element(element(3, b"{}")).unwrap();
    assert_eq!(
        m,
        StoredMessage {
            seq: Seq(3),
            id: MessageId(7),
            created_ms: 100,
            expires_ms: 200,
            kind: PayloadKind::Json,
            payload: Bytes::from_static(b"{}"),
        }
    );
    assert!(decode_element(element(3, b"")).unwrap().payload.is_empty());
}

#[test]
fn damaged_values_are_corrupt_never_a_panic() {
    let whole = element(3, b"x");
    for len in 0..MESSAGE_HEADER {
        assert!(
            matches!(
                decode_element(whole[..len].to_vec()),
                Err(StoreError::Corrupt(_))
            ),
            "{len} bytes"
        );
    }
    let mut kind = whole.clone();
    kind[17] = 9;
    assert!(matches!(decode_element(kind), Err(StoreError::Corrupt(_))));
    let mut version = whole;
    version[8] = 0;
    assert!(matches!(
        decode_element(version),
        Err(StoreError::Corrupt(_))
    ));

    let claim = encode_claim(Claim {
        id: MessageId(1),
        created_ms: 2,
        window_end_ms: 3,
    });
    assert_eq!(decode_claim(&claim).unwrap().window_end_ms, 3);
    assert!(decode_claim(&claim[..24]).is_err());
    assert!(decode_claim(&[&claim[..], &[0]].concat()).is_err());

    assert_eq!(
        decode_cursor(b"5:6:7").unwrap(),
        Cursor {
            acked: Seq(5),
            attempt_seq: Seq(6),
            attempts: 7
        }
    );
    for bad in [
        &b""[..],
        b"5:6",
        b"5:6:7:8",
        b"+5:6:7",
        b"5::7",
        b"5:6:99999999999",
        b"\xff",
    ] {
        assert!(decode_cursor(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn key_ttls_cover_the_message_and_stay_in_range() {
    assert_eq!(key_ttl(1_000, 61_000), 60_000 + TTL_MARGIN_MS);
    assert_eq!(key_ttl(5_000, 1_000), TTL_MARGIN_MS);
    assert_eq!(key_ttl(0, u64::MAX), MAX_TTL_MS + TTL_MARGIN_MS);
}
