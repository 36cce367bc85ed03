//! A fuzz target that runs on stable, as a proptest: hostile input into both decoders.
//!
//! By default, arbitrary bytes run 20,000 cases and each mutation property 10,000 (about 5 s of
//! CPU in debug; generating valid frames costs more than decoding them). `PROPTEST_CASES` sets
//! every property's case count. To fuzz longer:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test -p tether-proto --release --test fuzz_decoder
//! ```
//!
//! Inputs are (a) arbitrary bytes and (b) valid frames, in both encodings, with random bit
//! flips, byte changes, insertions, removals and truncations. Properties: nothing panics, and
//! any frame a decoder accepts re-encodes to the same frame (for the binary encoding, to the very
//! same bytes: it is canonical).

mod common;

use bytes::{Bytes, BytesMut};
use common::{Mutation, Payloads, frame, mutate, mutation};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use tether_proto::{DEFAULT_MAX_FRAME, binary, json};

/// `default_cases`, unless `PROPTEST_CASES` says otherwise.
fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        // Keep the shrinker short: a failing input is already small.
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Feed `input` to every decoder and check what they accept.
fn check_all(input: &[u8], max_frame: u32) -> Result<(), TestCaseError> {
    // Binary, one WebSocket message.
    if let Ok(f) = binary::parse(Bytes::copy_from_slice(input), max_frame) {
        prop_assert_eq!(
            &binary::encode_to_bytes(&f)[..],
            input,
            "binary is canonical"
        );
    }
    // Binary, as a stream: decode until incomplete or error.
    let mut buf = BytesMut::from(input);
    let mut consumed = 0;
    loop {
        match binary::decode(&mut buf, max_frame) {
            Ok(Some(f)) => {
                let again = binary::encode_to_bytes(&f);
                prop_assert_eq!(&again[..], &input[consumed..consumed + again.len()]);
                consumed += again.len();
            }
            // Incomplete: what is left stays buffered.
            Ok(None) => {
                prop_assert_eq!(consumed + buf.len(), input.len());
                break;
            }
            // The stream is dead; nothing more to check.
            Err(_) => break,
        }
    }
    // JSON.
    if let Ok(f) = json::decode(input) {
        let text = json::encode(&f);
        prop_assert_eq!(json::decode(text.as_bytes())?, f);
    }
    Ok(())
}

fn max_frame() -> impl Strategy<Value = u32> {
    prop_oneof![0..32u32, Just(DEFAULT_MAX_FRAME), Just(u32::MAX)]
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn arbitrary_bytes(input in vec(any::<u8>(), 0..200), max in max_frame()) {
        check_all(&input, max)?;
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn mutated_binary_frames(
        frames in vec(frame(Payloads::Any), 1..3),
        mutations in vec(mutation(), 1..4),
        fix_prefix in any::<bool>(),
        max in max_frame(),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            binary::encode(f, &mut wire);
        }
        let mut input = wire.to_vec();
        mutate(&mut input, &mutations);
        // Half the time, make the prefix agree with the length again so that the mutation
        // reaches the header and body parsers instead of stopping at the length check.
        if fix_prefix && input.len() >= 4 {
            let len = (input.len() - 4) as u32;
            input[..4].copy_from_slice(&len.to_be_bytes());
        }
        check_all(&input, max)?;
    }

    #[test]
    fn mutated_json_frames(
        frame in frame(Payloads::Any),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut input = json::encode(&frame).into_bytes();
        mutate(&mut input, &mutations);
        check_all(&input, DEFAULT_MAX_FRAME)?;
    }

    /// Printable mutations keep JSON closer to valid, so the field decoders see more variety.
    #[test]
    fn mutated_json_frames_with_json_bytes(
        frame in frame(Payloads::JsonRoundTrip),
        edits in vec((any::<prop::sample::Index>(), prop::sample::select(&b"{}[]\":,0 1-ex\\nult"[..])), 1..4),
    ) {
        let mut input = json::encode(&frame).into_bytes();
        let mutations: Vec<Mutation> = edits
            .into_iter()
            .enumerate()
            .map(|(n, (i, b))| if n % 2 == 0 { Mutation::Set(i, b) } else { Mutation::Insert(i, b) })
            .collect();
        mutate(&mut input, &mutations);
        check_all(&input, DEFAULT_MAX_FRAME)?;
    }
}

/// Deep nesting in an ignored field or a payload must not overflow the stack.
#[test]
fn deep_json_nesting() {
    for depth in [100, 200, 100_000] {
        let nested = "[".repeat(depth) + &"]".repeat(depth);
        let payload = format!(r#"{{"op":"push","app":"a","msg_id":"1","payload":{nested}}}"#);
        let extra = format!(r#"{{"op":"ping","extra":{nested}}}"#);
        let bindings = format!(r#"{{"op":"connect","device":"d","bindings":{nested}}}"#);
        for text in [payload, extra, bindings] {
            let _ = json::decode(text.as_bytes());
        }
    }
}
