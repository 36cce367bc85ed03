//! What a listener's guard costs per accepted connection (see `tether_server::edge`): each
//! check alone, in user space, without the socket.
//!
//! ```text
//! cargo bench -p tether-server --bench edge -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `ip/open`: nothing configured, the default: one boolean.
//! - `ip/lists_N`: an allowed address checked against a `deny` list of N networks (half IPv4,
//!   half IPv6) and an `allow` list that covers it: both lists searched.
//! - `ip/rate_*`: the per-IP rate alone, for one address or spread over 50,000 addresses
//!   (the lookup in a map that large; every check allowed, the rate set high).
//! - `origin/*`: an Origin header against five entries, allowed at the last or refused (the
//!   refusal's metric and rate-limited log included).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use tether_server::config::AccessConfig;
use tether_server::edge::Guard;

fn guard(edit: impl FnOnce(&mut AccessConfig)) -> Guard {
    let mut config = AccessConfig::default();
    edit(&mut config);
    Guard::new("bench", "listen.bench_access", &config).expect("a valid config")
}

/// `n` networks, half /24s of 10.0.0.0/8, half /48s of 2001:db8::/32, spread out.
fn networks(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let i = i as u32 * 7919;
            if i.is_multiple_of(2) {
                format!("10.{}.{}.0/24", (i >> 8) & 0xff, i & 0xff)
            } else {
                format!("2001:db8:{:x}::/48", i & 0xffff)
            }
        })
        .collect()
}

fn ip_checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("ip");
    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let open = Guard::open("bench");
    group.bench_function("open", |b| b.iter(|| open.check_ip(black_box(client))));
    for n in [10, 1000, 100_000] {
        let g = guard(|c| {
            c.deny = networks(n);
            c.allow = vec!["0.0.0.0/0".into(), "::/0".into()];
            c.allow.extend(networks(n));
        });
        let allowed = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert!(g.check_ip(allowed).is_ok());
        group.bench_function(format!("lists_{n}"), |b| {
            b.iter(|| g.check_ip(black_box(allowed)))
        });
    }
    let rate = guard(|c| {
        c.connections_per_ip_per_sec = 1_000_000_000;
        c.connections_per_ip_burst = 1_000_000_000;
    });
    group.bench_function("rate_one_address", |b| {
        b.iter(|| rate.check_ip(black_box(client)))
    });
    let addrs: Vec<IpAddr> = (0..50_000u32)
        .map(|i| IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64)))
        .collect();
    let mut next = 0;
    group.bench_function("rate_50k_addresses", |b| {
        b.iter(|| {
            next = (next + 1) % addrs.len();
            rate.check_ip(black_box(addrs[next]))
        })
    });
    group.finish();
}

fn origin_checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("origin");
    let g = guard(|c| {
        c.origins = [
            "https://a.example.com",
            "https://b.example.com",
            "http://localhost:3000",
            "capacitor://localhost",
            "https://*.example.org",
        ]
        .map(String::from)
        .to_vec();
    });
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    group.bench_function("allowed_by_the_fifth", |b| {
        b.iter(|| g.check_origin(Some(black_box(b"https://chat.eu.example.org")), ip))
    });
    group.bench_function("refused", |b| {
        b.iter(|| g.check_origin(Some(black_box(b"https://evil.example")), ip))
    });
    let any = Guard::open("bench");
    group.bench_function("open", |b| {
        b.iter(|| any.check_origin(Some(black_box(b"https://evil.example")), ip))
    });
    group.finish();
}

criterion_group!(benches, ip_checks, origin_checks);
criterion_main!(benches);
