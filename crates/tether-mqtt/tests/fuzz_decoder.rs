//! A fuzz target that runs on stable, as a proptest: hostile input into the decoder.
//!
//! By default, arbitrary bytes run 20,000 cases and each mutation property 5,000 (about 20 s in
//! debug: generating valid packets costs more than decoding them). `PROPTEST_CASES` sets every
//! property's case count. To fuzz longer:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test -p tether-mqtt --release --test fuzz_decoder
//! ```
//!
//! Inputs are (a) arbitrary bytes and (b) valid packets of both versions with random bit
//! flips, byte changes, insertions, removals and truncations, read as a connection would:
//! before CONNECT, or in either version. Properties: nothing panics; a packet the decoder
//! accepts encodes again to bytes that decode to the same packet; `Ok(None)` consumes
//! nothing; nothing is consumed past the input.

mod common;

use bytes::BytesMut;
use common::{Mutation, mutate, mutation, versioned_packet};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use tether_mqtt::*;

/// `default_cases`, unless `PROPTEST_CASES` says otherwise.
fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Decode `input` as a connection whose version is `version` (`None`: before CONNECT),
/// until incomplete or an error, checking what is accepted.
fn check_stream(input: &[u8], mut version: Option<Version>, max: u32) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    let mut consumed = 0;
    loop {
        let before = buf.len();
        match decode(&mut buf, version, max) {
            Ok(Some(p)) => {
                let used = before - buf.len();
                prop_assert!(used as u64 <= u64::from(max), "a packet over the limit");
                consumed += used;
                let v = match &p {
                    Packet::Connect(c) => c.version,
                    _ => version.expect("only CONNECT decodes without a version"),
                };
                // What the decoder accepts, the encoder writes, and it reads back the same.
                let again = encode_to_bytes(&p, v)
                    .map_err(|e| TestCaseError::fail(format!("{p:?} does not encode: {e}")))?;
                let mut again = BytesMut::from(&again[..]);
                prop_assert_eq!(decode(&mut again, Some(v), u32::MAX)?, Some(p.clone()));
                if version.is_none() {
                    version = Some(v);
                }
            }
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "incomplete consumed bytes");
                prop_assert_eq!(consumed + buf.len(), input.len());
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

fn known_version() -> impl Strategy<Value = Option<Version>> {
    prop_oneof![
        Just(None),
        Just(Some(Version::V311)),
        Just(Some(Version::V5))
    ]
}

fn max_packet() -> impl Strategy<Value = u32> {
    prop_oneof![0..32u32, Just(65_536u32), Just(u32::MAX)]
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn arbitrary_bytes(input in vec(any::<u8>(), 0..200), v in known_version(), max in max_packet()) {
        check_stream(&input, v, max)?;
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn mutated_packets(
        packets in vec(versioned_packet(), 1..3),
        mutations in vec(mutation(), 1..4),
        fix_length in any::<bool>(),
        max in max_packet(),
    ) {
        let v = packets[0].0;
        let mut wire = BytesMut::new();
        for (_, p) in &packets {
            encode(p, v, &mut wire).ok();
        }
        let mut input = wire.to_vec();
        mutate(&mut input, &mutations);
        // Half the time, make the first packet's remaining length agree with the input again
        // (when it fits one byte) so that the mutation reaches the body parsers.
        if fix_length && input.len() >= 2 && input.len() - 2 < 128 {
            input[1] = (input.len() - 2) as u8;
        }
        for known in [None, Some(v)] {
            check_stream(&input, known, max)?;
        }
    }

    /// Mutations that keep the fixed header: the body parsers of one packet type.
    #[test]
    fn mutated_bodies(
        (v, p) in versioned_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let bytes = encode_to_bytes(&p, v)?;
        let (_, n) = wire::read_vbi(&bytes[1..])?.expect("whole header");
        let mut input = bytes.to_vec();
        if input.len() > 1 + n {
            let body = input.len() - 1 - n;
            let mutations: Vec<Mutation> = edits
                .into_iter()
                .map(|(i, b)| Mutation::Set(i, b))
                .collect();
            let mut tail = input.split_off(1 + n);
            mutate(&mut tail, &mutations);
            prop_assert_eq!(tail.len(), body);
            input.extend(tail);
        }
        check_stream(&input, Some(v), u32::MAX)?;
        check_stream(&input, None, u32::MAX)?;
    }
}
