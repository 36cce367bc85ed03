//! Who may connect, per listener, before a byte is read: IP allow and deny lists, a per-IP
//! rate of new connections, and the Origin header of WebSocket upgrades and of the HTTP API's
//! client-facing routes (CORS, `crate::api::cors`).
//!
//! - this module: [`Guard`], one listener's checks, and [`Refusal`], why one said no; the
//!   count (`tether_connections_refused_total{listener, reason}`) and the rate-limited log
//!   line of every refusal.
//! - [`cidr`]: networks and lists of them ([`cidr::IpList`]).
//! - [`origin`]: allowed origins and subdomain patterns ([`origin::Origins`]).
//! - [`cors`]: the CORS answers of client-facing routes, from a guard's origins.
//!
//! The gateway asks its TCP and WebSocket listeners' guards as soon as a socket is accepted;
//! the API asks its listener's guard in a middleware. What each refusal looks like to the
//! client is theirs to say (a close, a `disconnect` with 4004, `403`, `429`); see
//! `docs/security.md`.
//!
//! # Cost
//! A guard with nothing configured answers from one boolean: no lock, no allocation. The lists
//! are binary searches over sorted ranges; the rate is a mutex-guarded map lookup (see
//! `benches/edge.rs` for the figures).

pub mod cidr;
pub mod cors;
pub mod origin;

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use tether_proto::Code;
use tracing::info;

use crate::config::{AccessConfig, ListenConfig};
use crate::rate::KeyedLimit;
use cidr::IpList;
use origin::Origins;

/// Most client addresses one listener's rate limit keeps track of: at most about 4 MiB (33 bytes
/// a slot, at most 131,072 slots).
pub const RATE_KEYS: usize = 65_536;

/// Why a connection was refused, as counted in `tether_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in the listener's `deny` list.
    IpDenied,
    /// The listener has an `allow` list and the address is not in it.
    IpNotAllowed,
    /// The address opened connections faster than `connections_per_ip_per_sec`.
    IpRate,
    /// A WebSocket upgrade with an Origin that is not allowed, or with none when one is
    /// required; a request to one of the API's client-facing routes from an origin that is
    /// not listed.
    Origin,
    /// The address holds `limits.max_connections_per_ip` connections already.
    IpLimit,
    /// The node holds `limits.max_connections` connections already.
    ConnectionLimit,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::IpDenied,
        Refusal::IpNotAllowed,
        Refusal::IpRate,
        Refusal::Origin,
        Refusal::IpLimit,
        Refusal::ConnectionLimit,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::IpDenied => "ip_denied",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::IpRate => "ip_rate",
            Refusal::Origin => "origin",
            Refusal::IpLimit => "ip_limit",
            Refusal::ConnectionLimit => "connection_limit",
        }
    }

    /// The refusal of one of the gateway's connection limits.
    pub fn of_limit(code: Code) -> Refusal {
        if code == Code::IP_LIMIT {
            Refusal::IpLimit
        } else {
            Refusal::ConnectionLimit
        }
    }

    /// The close code a client refused this way is told, where the protocol can tell it:
    /// `None` for the lists, whose clients are closed without a word (a denied address needs
    /// no explanation, and an answer would cost a write to whoever floods the port).
    pub fn code(self) -> Option<Code> {
        match self {
            Refusal::IpRate | Refusal::IpLimit => Some(Code::IP_LIMIT),
            Refusal::ConnectionLimit => Some(Code::CONNECTION_LIMIT),
            Refusal::IpDenied | Refusal::IpNotAllowed | Refusal::Origin => None,
        }
    }
}

/// The guards of a node's three listeners.
#[derive(Debug, Clone)]
pub struct Guards {
    pub tcp: Arc<Guard>,
    pub ws: Arc<Guard>,
    pub mqtt: Arc<Guard>,
    pub http: Arc<Guard>,
}

impl Guards {
    pub fn new(listen: &ListenConfig) -> Result<Guards, String> {
        Ok(Guards {
            tcp: Arc::new(Guard::new("tcp", "listen.tcp_access", &listen.tcp_access)?),
            ws: Arc::new(Guard::new("ws", "listen.ws_access", &listen.ws_access)?),
            mqtt: Arc::new(Guard::new(
                "mqtt",
                "listen.mqtt_access",
                &listen.mqtt_access,
            )?),
            http: Arc::new(Guard::new(
                "http",
                "listen.http_access",
                &listen.http_access,
            )?),
        })
    }
}

/// One listener's checks, built from its `listen.*_access` table.
#[derive(Debug)]
pub struct Guard {
    listener: &'static str,
    /// Nothing to check of an address: [`Guard::check_ip`] answers from this alone.
    ip_open: bool,
    allow: IpList,
    deny: IpList,
    /// Per address (IPv6: per /64).
    rate: Option<KeyedLimit<IpAddr>>,
    origins: Origins,
    allow_missing_origin: bool,
    /// One per [`Refusal`], in [`Refusal::ALL`]'s order; `None` for those the listener never
    /// sees (so that `/metrics` shows no series that must stay at zero).
    refused: [Option<Counter>; 6],
    logs: [LogLimit; 6],
}

impl Guard {
    /// The guard of `listener` (`tcp`, `ws`, `http`: the metric's label). Fails on an entry
    /// that does not read, naming it from `key` (`listen.ws_access`); the configuration's
    /// validation reports those first, so a node never meets one here.
    pub fn new(listener: &'static str, key: &str, config: &AccessConfig) -> Result<Guard, String> {
        let allow =
            IpList::parse(&config.allow).map_err(|(i, e)| format!("{key}.allow[{i}]: {e}"))?;
        let deny = IpList::parse(&config.deny).map_err(|(i, e)| format!("{key}.deny[{i}]: {e}"))?;
        let origins =
            Origins::parse(&config.origins).map_err(|(i, e)| format!("{key}.origins[{i}]: {e}"))?;
        let rate = KeyedLimit::new(
            config.connections_per_ip_per_sec,
            config.connections_per_ip_burst,
            RATE_KEYS,
        );
        Ok(Guard {
            listener,
            ip_open: allow.is_empty() && deny.is_empty() && rate.is_none(),
            allow,
            deny,
            rate,
            origins,
            allow_missing_origin: config.allow_missing_origin,
            refused: counters(listener, !config.origins.is_empty()),
            logs: Default::default(),
        })
    }

    /// A guard that lets everyone in.
    pub fn open(listener: &'static str) -> Guard {
        Guard {
            listener,
            ip_open: true,
            allow: IpList::default(),
            deny: IpList::default(),
            rate: None,
            origins: Origins::default(),
            allow_missing_origin: true,
            refused: counters(listener, false),
            logs: Default::default(),
        }
    }

    /// Whether the guard checks addresses at all (the API adds no middleware otherwise).
    pub fn checks_ips(&self) -> bool {
        !self.ip_open
    }

    /// Whether a connection from `ip` may go on. A refusal is counted and logged.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.ip_open {
            return Ok(());
        }
        let ip = ip.to_canonical();
        // Deny wins over allow.
        let refusal = if self.deny.contains(ip) {
            Refusal::IpDenied
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            Refusal::IpNotAllowed
        } else if self
            .rate
            .as_ref()
            .is_some_and(|r| r.check(&rate_key(ip)).is_err())
        {
            Refusal::IpRate
        } else {
            return Ok(());
        };
        self.refused(refusal, ip);
        Err(refusal)
    }

    /// Whether the listener has an `origins` list (else any origin may go on).
    pub fn lists_origins(&self) -> bool {
        !self.origins.is_empty()
    }

    /// Whether a request with this `Origin` header (`None`: without one) from `ip` (`None`:
    /// not known) may go on: a WebSocket upgrade, or a call to one of the API's client-facing
    /// routes. A refusal is counted and logged.
    pub fn check_origin(
        &self,
        origin: Option<&[u8]>,
        ip: impl Into<Option<IpAddr>>,
    ) -> Result<(), Refusal> {
        let ok = match origin {
            None => self.allow_missing_origin,
            Some(_) if self.origins.is_empty() => true,
            Some(value) => self.origins.allows(value),
        };
        if ok {
            return Ok(());
        }
        self.refused(Refusal::Origin, ip.into().map(|ip| ip.to_canonical()));
        Err(Refusal::Origin)
    }

    /// Counts and logs a refusal decided elsewhere (the gateway's connection limits). `ip` is
    /// `None` where the address is not known (the API keeps it only for a guard that checks
    /// addresses).
    pub fn refused(&self, refusal: Refusal, ip: impl Into<Option<IpAddr>>) {
        let ip = ip.into();
        let i = refusal as usize;
        if let Some(counter) = &self.refused[i] {
            counter.increment(1);
        }
        if let Some(suppressed) = self.logs[i].take() {
            info!(
                listener = self.listener,
                reason = refusal.label(),
                ip = ip.map(tracing::field::display),
                suppressed,
                "connection refused (suppressed: refusals for this reason not logged since the previous line)"
            );
        }
    }
}

/// The refusal counters of `listener`: the API's listener refuses by its lists, and by origin
/// only when it `lists_origins` (any origin may call it otherwise); the TCP listener reads no
/// origins.
fn counters(listener: &'static str, lists_origins: bool) -> [Option<Counter>; 6] {
    Refusal::ALL.map(|r| {
        let applies = match listener {
            "http" => {
                matches!(r, Refusal::IpDenied | Refusal::IpNotAllowed)
                    || (r == Refusal::Origin && lists_origins)
            }
            "tcp" => r != Refusal::Origin,
            _ => true,
        };
        applies.then(|| crate::metrics::connection_refused(listener, r.label()))
    })
}

/// The key of an address in the per-IP rate: the address, or for IPv6 its /64, which one host
/// or home network usually gets whole (limiting single IPv6 addresses would let it open as
/// many connections as it likes, one address each).
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1))),
    }
}

/// At most one log line a second for one reason, with the number of refusals not logged
/// since the last one. Two atomics, no lock. (The gateway's handshake refusals use it too.)
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// Milliseconds since [`epoch`] when the next line may be written.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub(crate) const fn new() -> Self {
        LogLimit {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be written now.
    pub(crate) fn take(&self) -> Option<u64> {
        let now = epoch().elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The process's start, for [`LogLimit`].
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(edit: impl FnOnce(&mut AccessConfig)) -> Guard {
        let mut config = AccessConfig::default();
        edit(&mut config);
        Guard::new("test", "listen.test_access", &config).expect("a valid config")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn deny_wins_over_allow_and_an_allow_list_shuts_out_the_rest() {
        let g = guard(|c| {
            c.allow = vec!["10.0.0.0/8".into(), "::1".into()];
            c.deny = vec!["10.0.0.66".into()];
        });
        assert_eq!(g.check_ip(ip("10.1.1.1")), Ok(()));
        assert_eq!(g.check_ip(ip("::ffff:10.1.1.1")), Ok(()));
        assert_eq!(g.check_ip(ip("::1")), Ok(()));
        assert_eq!(g.check_ip(ip("10.0.0.66")), Err(Refusal::IpDenied));
        assert_eq!(g.check_ip(ip("192.0.2.1")), Err(Refusal::IpNotAllowed));
        assert!(guard(|_| {}).check_ip(ip("192.0.2.1")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_counts_an_ipv6_slash_64_as_one_address() {
        let g = guard(|c| {
            c.connections_per_ip_per_sec = 1;
            c.connections_per_ip_burst = 2;
        });
        assert_eq!(g.check_ip(ip("2001:db8::1")), Ok(()));
        assert_eq!(g.check_ip(ip("2001:db8::2")), Ok(()));
        assert_eq!(g.check_ip(ip("2001:db8::3")), Err(Refusal::IpRate));
        assert_eq!(g.check_ip(ip("2001:db8:0:1::1")), Ok(()));
        assert_eq!(g.check_ip(ip("192.0.2.1")), Ok(()));
    }

    #[test]
    fn origins_and_a_missing_origin_follow_the_settings() {
        let any = guard(|_| {});
        assert!(
            any.check_origin(Some(b"https://x.example"), ip("::1"))
                .is_ok()
        );
        assert!(any.check_origin(None, ip("::1")).is_ok());
        let strict = guard(|c| {
            c.origins = vec!["https://*.example.com".into()];
            c.allow_missing_origin = false;
        });
        assert!(
            strict
                .check_origin(Some(b"https://a.example.com"), ip("::1"))
                .is_ok()
        );
        assert_eq!(
            strict.check_origin(Some(b"https://example.org"), ip("::1")),
            Err(Refusal::Origin)
        );
        assert_eq!(strict.check_origin(None, ip("::1")), Err(Refusal::Origin));
    }

    #[test]
    fn the_log_allows_one_line_a_second_and_counts_the_rest() {
        let log = LogLimit::default();
        // The first line may go at once (whatever the process's age).
        assert_eq!(log.take(), Some(0));
        assert_eq!(log.take(), None);
        assert_eq!(log.take(), None);
        log.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(log.take(), Some(2));
    }
}
