//! Encode and decode of a PUBLISH, the fan-out and upstream hot paths, in both versions.
//!
//! ```text
//! cargo bench -p tether-mqtt -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Throughput is the encoded packet's size in bytes.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tether_mqtt::{
    Packet, Properties, Property, Publish, PublishHead, QoS, Version, decode, encode,
    encode_publish_head, encode_to_bytes,
};

/// An inbox push as tether sends it: QoS 1 on `$tether/inbox/demo`, with MQTT 5's
/// user properties `seq`, `msg_id` and `created_ms`.
fn push(size: usize, v: Version) -> Publish {
    let mut properties = Properties::new();
    if v == Version::V5 {
        properties
            .push(Property::UserProperty("seq".into(), "42".into()))
            .push(Property::UserProperty(
                "msg_id".into(),
                "1234567890123".into(),
            ))
            .push(Property::UserProperty(
                "created_ms".into(),
                "1763700000000".into(),
            ));
    }
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "$tether/inbox/demo".into(),
        packet_id: 7,
        properties,
        payload: Bytes::from((0..size).map(|i| i as u8).collect::<Vec<_>>()),
    }
}

fn publish(c: &mut Criterion) {
    for (v, label) in [(Version::V311, "v311"), (Version::V5, "v5")] {
        let mut g = c.benchmark_group(format!("publish_{label}"));
        for size in [100, 1024] {
            let p = push(size, v);
            let packet = Packet::Publish(p.clone());
            let encoded = encode_to_bytes(&packet, v).expect("encodes");
            g.throughput(Throughput::Bytes(encoded.len() as u64));
            g.bench_with_input(BenchmarkId::new("encode", size), &packet, |b, p| {
                let mut out = BytesMut::with_capacity(4096);
                b.iter(|| {
                    out.clear();
                    encode(black_box(p), v, &mut out)
                })
            });
            // What a fan-out does per connection: the head alone, the payload shared.
            g.bench_with_input(BenchmarkId::new("encode_head", size), &p, |b, p| {
                let mut out = BytesMut::with_capacity(256);
                b.iter(|| {
                    out.clear();
                    encode_publish_head(
                        v,
                        &PublishHead::of(black_box(p)),
                        p.payload.len(),
                        &mut out,
                    )
                })
            });
            g.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, e| {
                b.iter_batched(
                    || BytesMut::from(&e[..]),
                    |mut buf| decode(black_box(&mut buf), Some(v), 65_536),
                    criterion::BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

criterion_group!(benches, publish);
criterion_main!(benches);
