//! Both versions, every packet: round trips, incomplete input, the size limit, streams.

mod common;

use bytes::BytesMut;
use common::{packet, versioned_packet};
use proptest::collection::vec;
use proptest::prelude::*;
use tether_mqtt::*;

/// The version a receiver knows when this packet arrives: none before a CONNECT.
fn known(v: Version, p: &Packet) -> Option<Version> {
    match p {
        Packet::Connect(_) => None,
        _ => Some(v),
    }
}

proptest! {
    #[test]
    fn round_trip((v, p) in versioned_packet()) {
        let bytes = encode_to_bytes(&p, v)?;
        prop_assert_eq!(bytes.len(), encoded_len(&p, v)?);
        prop_assert_eq!(check(&bytes, known(v, &p), u32::MAX), Ok(Some(bytes.len())));
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, known(v, &p), u32::MAX)?, Some(p.clone()));
        prop_assert!(buf.is_empty());
        // Once the version is known, a CONNECT still reads by its own level.
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, Some(v), u32::MAX)?, Some(p));
    }

    /// Any prefix of a valid packet is "not yet", never an error, and nothing is consumed.
    #[test]
    fn every_prefix_is_incomplete((v, p) in versioned_packet()) {
        let bytes = encode_to_bytes(&p, v)?;
        for n in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..n]);
            prop_assert_eq!(decode(&mut buf, known(v, &p), u32::MAX), Ok(None), "prefix {}", n);
            prop_assert_eq!(buf.len(), n);
        }
    }

    /// A packet one byte over the limit is refused from its fixed header alone, before its
    /// body is there; at the limit it decodes.
    #[test]
    fn the_limit_is_checked_from_the_fixed_header((v, p) in versioned_packet()) {
        let bytes = encode_to_bytes(&p, v)?;
        let len = bytes.len() as u32;
        let header = 1 + wire::read_vbi(&bytes[1..])?.map(|(_, n)| n).unwrap_or(0);
        let too_large = Err(DecodeError::TooLarge { len: u64::from(len), max: len - 1 });
        prop_assert_eq!(check(&bytes[..header], known(v, &p), len - 1), too_large.clone());
        prop_assert_eq!(check(&bytes, known(v, &p), len - 1), too_large);
        prop_assert_eq!(check(&bytes, known(v, &p), len), Ok(Some(bytes.len())));
    }

    /// Packets written back to back and read in arbitrary chunks come out whole and in order.
    #[test]
    fn stream_split_anywhere(
        (v, packets) in common::version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..6))),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            encode(p, v, &mut wire)?;
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for to in cuts {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(p) = decode(&mut buf, Some(v), u32::MAX)? {
                got.push(p);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, packets);
    }
}
