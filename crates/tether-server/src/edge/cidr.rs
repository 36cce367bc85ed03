//! IP networks in CIDR notation, and lists of them matched in O(log n).
//!
//! An entry is `10.0.0.0/8`, `2001:db8::/32`, or a single address (`192.0.2.7`, `::1`). IPv4
//! and IPv6 are separate families: an IPv4 client, also one seen as `::ffff:a.b.c.d` on a
//! dual-stack socket, is matched by IPv4 entries (and by IPv6 entries written inside
//! `::ffff:0:0/96`, which are read as the IPv4 networks they are); an IPv6 entry such as `::/0`
//! matches IPv6 clients only.
//!
//! A list keeps each family's networks as sorted, merged, disjoint ranges of integers, so a
//! lookup is a binary search with no allocation, whatever the list's length.

use std::net::{IpAddr, Ipv6Addr};

/// One network, as the range of addresses it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    v4: bool,
    first: u128,
    last: u128,
}

impl Net {
    /// Reads `a.b.c.d/len`, `x:y::/len` or a bare address. Bits set past the prefix are an
    /// error (`10.0.0.1/8` is most likely a typo of `10.0.0.0/8` or of `10.0.0.1/32`).
    pub fn parse(text: &str) -> Result<Net, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an IP network like 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7")
        })?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => match p.parse::<u32>() {
                Ok(n) if n <= width && plain_number(p) => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {width}")),
            },
        };
        let (v4, bits, width, prefix) = match addr {
            IpAddr::V4(a) => (true, u128::from(u32::from(a)), 32, prefix),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                // Inside ::ffff:0:0/96: the IPv4 network it stands for.
                Some(v4) if prefix >= 96 => (true, u128::from(u32::from(v4)), 32, prefix - 96),
                _ => (false, u128::from(a), 128, prefix),
            },
        };
        let host = host_mask(width, prefix);
        if bits & host != 0 {
            let network = bits & !host;
            let shown = if v4 {
                IpAddr::from(std::net::Ipv4Addr::from(network as u32))
            } else {
                IpAddr::from(Ipv6Addr::from(network))
            };
            return Err(format!(
                "{text:?} has bits set past its prefix: the network is {shown}/{prefix}"
            ));
        }
        Ok(Net {
            v4,
            first: bits,
            last: bits | host,
        })
    }
}

/// Whether `p` is a prefix length written plainly: digits, no sign, no leading zero.
fn plain_number(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
}

/// The bits of an address of `width` bits that lie past a `prefix`-bit network part.
fn host_mask(width: u32, prefix: u32) -> u128 {
    let host_bits = width - prefix;
    if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// A set of networks of both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList {
    /// Sorted, disjoint, not adjacent: `(first, last)` inclusive.
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl IpList {
    pub fn new(nets: impl IntoIterator<Item = Net>) -> IpList {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            let family = if net.v4 { &mut v4 } else { &mut v6 };
            family.push((net.first, net.last));
        }
        IpList {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    /// Every entry of `entries`, or the first one that does not read, with its index.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<IpList, (usize, String)> {
        let nets = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Net::parse(e.as_ref()).map_err(|err| (i, err)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IpList::new(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` lies in one of the networks. An IPv4-mapped IPv6 address is its IPv4
    /// address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (ranges, x) = match ip.to_canonical() {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        // The last range starting at or before `x` is the only one that can hold it.
        let after = ranges.partition_point(|&(first, _)| first <= x);
        after > 0 && ranges[after - 1].1 >= x
    }
}

/// `ranges` sorted, with overlapping and adjacent ones joined.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out.shrink_to_fit();
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn list(entries: &[&str]) -> IpList {
        IpList::parse(entries).expect("valid entries")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn networks_of_both_families_match_their_addresses() {
        let l = list(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]);
        for yes in [
            "10.1.2.3",
            "10.255.255.255",
            "192.0.2.7",
            "2001:db8:1::5",
            "::1",
        ] {
            assert!(l.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.0",
            "9.255.255.255",
            "192.0.2.8",
            "2001:db9::",
            "::2",
        ] {
            assert!(!l.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_entries_and_ipv6_entries_do_not_take_ipv4() {
        let l = list(&["127.0.0.0/8"]);
        assert!(l.contains(ip("::ffff:127.0.0.1")));
        assert!(!l.contains(ip("::ffff:128.0.0.1")));
        // Written in the mapped form: the IPv4 network it stands for.
        let mapped = list(&["::ffff:10.0.0.0/104"]);
        assert_eq!(mapped, list(&["10.0.0.0/8"]));
        let all6 = list(&["::/0"]);
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(!all6.contains(ip("10.0.0.1")));
        assert!(!all6.contains(ip("::ffff:10.0.0.1")));
        assert!(list(&["0.0.0.0/0"]).contains(ip("::ffff:1.2.3.4")));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let cases = [
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("::/129", "prefix length must be 0 to 128"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/08", "prefix length"),
            ("10.0.0.1/8", "the network is 10.0.0.0/8"),
            ("2001:db8::1/32", "the network is 2001:db8::/32"),
            ("10.0.0", "is not an IP network"),
            ("example.com", "is not an IP network"),
            (" 10.0.0.0/8", "is not an IP network"),
        ];
        for (entry, says) in cases {
            let e = Net::parse(entry).expect_err(entry);
            assert!(e.contains(says), "{entry}: {e}");
        }
        assert_eq!(IpList::parse(&["::1", "x"]).unwrap_err().0, 1);
    }

    /// The reference: a linear scan, each rule a masked comparison on u128.
    fn reference(rules: &[(bool, u128, u32)], ip: IpAddr) -> bool {
        let (v4, x) = match ip {
            IpAddr::V4(a) => (true, u128::from(u32::from(a))),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => (true, u128::from(u32::from(m))),
                None => (false, u128::from(a)),
            },
        };
        rules.iter().any(|&(rv4, net, prefix)| {
            let width = if rv4 { 32 } else { 128 };
            rv4 == v4 && (x ^ net).checked_shr(width - prefix).unwrap_or(0) == 0
        })
    }

    /// A rule as text, and as the reference reads it: (IPv4, network bits, prefix).
    fn rule() -> impl Strategy<Value = (String, (bool, u128, u32))> {
        prop_oneof![
            (any::<u32>(), 0u32..=32).prop_map(|(a, p)| {
                let net = u128::from(a) & !host_mask(32, p);
                let text = format!("{}/{p}", Ipv4Addr::from(net as u32));
                (text, (true, net, p))
            }),
            (any::<u128>(), 0u32..=128).prop_map(|(a, p)| {
                let net = a & !host_mask(128, p);
                let text = format!("{}/{p}", Ipv6Addr::from(net));
                // An IPv6 rule inside ::ffff:0:0/96 is read as IPv4: say so to the reference.
                match Ipv6Addr::from(net).to_ipv4_mapped() {
                    Some(v4) if p >= 96 => (text, (true, u128::from(u32::from(v4)), p - 96)),
                    _ => (text, (false, net, p)),
                }
            }),
        ]
    }

    /// Addresses near the rules' edges as well as anywhere: random ones rarely hit a rule.
    fn address(near: Vec<(bool, u128, u32)>) -> impl Strategy<Value = IpAddr> {
        let near = std::sync::Arc::new(near);
        (any::<u128>(), any::<usize>(), 0u8..5, any::<bool>()).prop_map(
            move |(r, pick, how, mapped)| {
                let (v4, x) = match (near.get(pick % near.len().max(1)), how) {
                    (Some(&(v4, net, p)), 0..3) => {
                        let width = if v4 { 32 } else { 128 };
                        let host = host_mask(width, p);
                        let x = match how {
                            0 => net,
                            1 => net | host,
                            _ => net | (r & host),
                        };
                        (v4, x)
                    }
                    (Some(&(v4, net, p)), 3) => {
                        // Just past the end, or just before the start.
                        let width = if v4 { 32 } else { 128 };
                        let last = net | host_mask(width, p);
                        let limit = if v4 { u128::from(u32::MAX) } else { u128::MAX };
                        (
                            v4,
                            if r & 1 == 0 {
                                last.min(limit - 1) + 1
                            } else {
                                net.max(1) - 1
                            },
                        )
                    }
                    _ => (r & 1 == 0, r >> 1),
                };
                if v4 {
                    let a = Ipv4Addr::from(x as u32);
                    if mapped {
                        IpAddr::V6(a.to_ipv6_mapped())
                    } else {
                        IpAddr::V4(a)
                    }
                } else {
                    IpAddr::V6(Ipv6Addr::from(x))
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_list_agrees_with_a_linear_scan_of_masks(
            (rules, addrs) in proptest::collection::vec(rule(), 0..12).prop_flat_map(|rules| {
                let parsed: Vec<_> = rules.iter().map(|(_, r)| *r).collect();
                (Just(rules), proptest::collection::vec(address(parsed), 1..32))
            })
        ) {
            let texts: Vec<&str> = rules.iter().map(|(t, _)| t.as_str()).collect();
            let parsed: Vec<_> = rules.iter().map(|(_, r)| *r).collect();
            let l = IpList::parse(&texts).expect("generated rules are valid");
            for a in addrs {
                prop_assert_eq!(l.contains(a), reference(&parsed, a), "{} in {:?}", a, texts);
            }
        }

        #[test]
        fn a_network_text_reads_back_as_itself((text, (v4, net, p)) in rule()) {
            let n = Net::parse(&text).expect("valid");
            let width = if v4 { 32 } else { 128 };
            prop_assert_eq!(n, Net { v4, first: net, last: net | host_mask(width, p) });
        }
    }
}
