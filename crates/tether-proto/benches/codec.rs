//! Encode and decode of a push frame, the fan-out hot path, in both encodings.
//!
//! ```text
//! cargo bench -p tether-proto -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Throughput is the encoded frame's size in bytes.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tether_proto::{DEFAULT_MAX_FRAME, Frame, PayloadKind, Push, binary, json};

fn push(kind: PayloadKind, size: usize) -> Frame {
    let payload = match kind {
        // A JSON object of about `size` bytes.
        PayloadKind::Json => {
            let filler = "x".repeat(size.saturating_sub(12));
            format!(r#"{{"text":"{filler}"}}"#).into_bytes()
        }
        PayloadKind::Binary => (0..size).map(|i| i as u8).collect(),
    };
    Frame::new(
        0,
        Push {
            app: "demo".into(),
            msg_id: 1_234_567_890_123,
            seq: 42,
            qos: 1,
            created_ms: 1_763_700_000_000,
            kind,
            payload: Bytes::from(payload),
        },
    )
}

fn binary(c: &mut Criterion) {
    let mut g = c.benchmark_group("binary");
    for size in [100, 1024] {
        let frame = push(PayloadKind::Binary, size);
        let encoded = binary::encode_to_bytes(&frame);
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode_push", size), &frame, |b, f| {
            b.iter(|| binary::encode_to_bytes(black_box(f)))
        });
        g.bench_with_input(BenchmarkId::new("decode_push", size), &encoded, |b, e| {
            b.iter_batched(
                || BytesMut::from(&e[..]),
                |mut buf| binary::decode(black_box(&mut buf), DEFAULT_MAX_FRAME),
                criterion::BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("parse_push", size), &encoded, |b, e| {
            b.iter(|| binary::parse(black_box(e.clone()), DEFAULT_MAX_FRAME))
        });
    }
    g.finish();
}

fn json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    for (kind, label) in [(PayloadKind::Json, "json"), (PayloadKind::Binary, "base64")] {
        for size in [100, 1024] {
            let frame = push(kind, size);
            let encoded = json::encode(&frame);
            g.throughput(Throughput::Bytes(encoded.len() as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("encode_push_{label}"), size),
                &frame,
                |b, f| b.iter(|| json::encode(black_box(f))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("decode_push_{label}"), size),
                &encoded,
                |b, e| b.iter(|| json::decode(black_box(e.as_bytes()))),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, binary, json);
criterion_main!(benches);
