//! The broadcast run's results: one [`Step`] per rate, the [`Report`] around them, the
//! saturation rule, and the table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::stats::{CpuCost, Latency, Table, fmt_count, fmt_us};

#[derive(Debug, Serialize)]
pub(super) struct Step {
    pub(super) slot: u8,
    pub(super) target_rate: f64,
    pub(super) publishers: usize,
    pub(super) publishes_per_s: f64,
    pub(super) publishes_ok: u64,
    pub(super) publishes_failed: u64,
    /// Deliveries received during the window, per second.
    pub(super) deliveries_per_s: f64,
    /// Deliveries the window's accepted publishes called for, per second.
    pub(super) offered_deliveries_per_s: f64,
    /// Deliveries the window's accepted publishes called for, and how many of them arrived
    /// by the end of the drain.
    pub(super) expected: u64,
    pub(super) delivered: u64,
    /// Average subscriber count in the server's answers (tether, Nchan).
    pub(super) subscribers_per_publish: Option<f64>,
    pub(super) latency: Latency,
    /// Time to the server's answer (HTTP targets).
    pub(super) publish_latency: Option<Latency>,
    /// Server CPU over the window, per million deliveries received in it.
    pub(super) server_cpu: Option<CpuCost>,
    pub(super) client_cpu: Option<CpuCost>,
    pub(super) machine_busy_cores: Option<f64>,
    /// Busy cores outside the server and the client (other work on a shared machine).
    pub(super) outside_cores: Option<f64>,
    /// Cores in software interrupts, machine-wide, and per million deliveries: on loopback,
    /// TCP's receive work, run mostly in the sender's context and charged to it (tick-based
    /// accounting), so mostly inside the server's system time already: a breakdown.
    pub(super) softirq_cores: Option<f64>,
    pub(super) softirq_s_per_million: Option<f64>,
    pub(super) steal_cores: Option<f64>,
    pub(super) errors: BTreeMap<String, u64>,
    /// Why the step counts as saturated (--max).
    pub(super) saturated: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) scenario: &'static str,
    pub(super) target: &'static str,
    /// tether: "topic" or "broadcast".
    pub(super) tether_publish: Option<String>,
    pub(super) mode: &'static str,
    pub(super) subscribers: u64,
    pub(super) connected: u64,
    pub(super) connect_failures: BTreeMap<String, u64>,
    pub(super) workers: usize,
    pub(super) payload_bytes: usize,
    pub(super) warmup_s: f64,
    pub(super) duration_s: f64,
    pub(super) steps: Vec<Step>,
    /// --max: the highest deliveries/s of any step, and the rate of that step.
    pub(super) saturation_deliveries_per_s: Option<f64>,
    pub(super) saturation_rate: Option<f64>,
    /// Accepted publishes (all steps, warm-ups included) x connected subscribers.
    pub(super) expected_deliveries: u64,
    pub(super) distinct_deliveries: u64,
    pub(super) lost: i64,
    pub(super) duplicates: u64,
    pub(super) unparsed: u64,
    pub(super) dropped: BTreeMap<String, u64>,
    pub(super) notices: BTreeMap<String, u64>,
    pub(super) server_pids: Vec<u32>,
    pub(super) server_rss_kib: Option<u64>,
    pub(super) cores: usize,
    pub(super) client_threads: usize,
}

/// Why a step counts as saturated, if it does.
pub(super) fn saturation(step: &Step, max_p99: Duration) -> Option<String> {
    if step.publishes_per_s < 0.9 * step.target_rate {
        return Some(format!(
            "publishers reached {:.1} of {:.1} publishes/s",
            step.publishes_per_s, step.target_rate
        ));
    }
    if step.deliveries_per_s < 0.9 * step.offered_deliveries_per_s {
        return Some(format!(
            "delivered {} of {} deliveries/s",
            fmt_count(step.deliveries_per_s),
            fmt_count(step.offered_deliveries_per_s)
        ));
    }
    if step.latency.p99_us > max_p99.as_micros() as u64 {
        return Some(format!(
            "p99 {} over {}",
            fmt_us(step.latency.p99_us),
            fmt_us(max_p99.as_micros() as u64)
        ));
    }
    None
}

impl Report {
    pub(super) fn print(&self) {
        let mut t = Table::default();
        t.row(
            "scenario",
            format!(
                "broadcast to {}{}, {} mode",
                self.target,
                self.tether_publish
                    .as_ref()
                    .map_or(String::new(), |m| format!(" ({m})")),
                self.mode
            ),
        )
        .row(
            "subscribers",
            format!(
                "{} connected of {}{}",
                self.connected,
                self.subscribers,
                if self.workers > 0 {
                    format!(", in {} worker processes", self.workers)
                } else {
                    String::new()
                }
            ),
        )
        .row(
            "load",
            format!(
                "{} B payload, {:.1} s windows after {:.1} s warm-up",
                self.payload_bytes, self.duration_s, self.warmup_s
            ),
        );
        for (reason, n) in &self.connect_failures {
            t.row("connect failed", format!("{n}  {reason}"));
        }
        for s in &self.steps {
            let p = if self.steps.len() > 1 {
                format!("step {} ", s.slot)
            } else {
                String::new()
            };
            t.row(
                format!("{p}publishes/s"),
                format!(
                    "{:.1} of {:.1} target  ({} ok, {} failed, {} publishers)",
                    s.publishes_per_s,
                    s.target_rate,
                    s.publishes_ok,
                    s.publishes_failed,
                    s.publishers
                ),
            )
            .row(
                format!("{p}deliveries/s"),
                format!(
                    "{}  (offered {}; {} of {} window deliveries arrived)",
                    fmt_count(s.deliveries_per_s),
                    fmt_count(s.offered_deliveries_per_s),
                    s.delivered,
                    s.expected
                ),
            )
            .row(
                format!("{p}latency"),
                s.latency.line(&["50", "99", "999", "max"]),
            );
            if let Some(l) = &s.publish_latency {
                t.row(format!("{p}publish answer"), l.line(&["50", "99", "max"]));
            }
            if let Some(n) = s.subscribers_per_publish {
                t.row(
                    format!("{p}server says"),
                    format!("{n:.0} subscribers per publish"),
                );
            }
            if let Some(c) = &s.server_cpu {
                t.row(format!("{p}server CPU"), server_line(c));
            }
            if let Some(c) = &s.client_cpu {
                t.row(format!("{p}client CPU"), c.line_per("deliveries"));
            }
            if let Some(busy) = s.machine_busy_cores {
                t.row(
                    format!("{p}machine"),
                    format!(
                        "{busy:.2} of {} cores busy ({:.2} outside server and client), {:.2} \
                         in softirq ({:.2} s per million deliveries), {:.2} stolen",
                        self.cores,
                        s.outside_cores.unwrap_or(0.0),
                        s.softirq_cores.unwrap_or(0.0),
                        s.softirq_s_per_million.unwrap_or(0.0),
                        s.steal_cores.unwrap_or(0.0)
                    ),
                );
            }
            for (key, n) in &s.errors {
                t.row(format!("{p}publish error"), format!("{n}  {key}"));
            }
            if let Some(why) = &s.saturated {
                t.row(format!("{p}saturated"), why.clone());
            }
        }
        if let (Some(d), Some(r)) = (self.saturation_deliveries_per_s, self.saturation_rate) {
            t.row(
                "saturation",
                format!("{} deliveries/s (step at {r:.1} publishes/s)", fmt_count(d)),
            );
        }
        t.row(
            "completeness",
            format!(
                "{} lost of {} expected, {} duplicates{}",
                self.lost,
                self.expected_deliveries,
                self.duplicates,
                if self.unparsed > 0 {
                    format!(", {} unparsed", self.unparsed)
                } else {
                    String::new()
                }
            ),
        );
        for (key, n) in &self.dropped {
            t.row("dropped", format!("{n}  {key}"));
        }
        for (key, n) in &self.notices {
            t.row("server error", format!("{n}  {key}"));
        }
        if let Some(rss) = self.server_rss_kib {
            t.row(
                "server RSS",
                format!("{:.1} MiB at the end", rss as f64 / 1024.0),
            );
        }
        t.print();
    }
}

/// `0.81 s user + 6.90 s system per million deliveries (1.20 cores)`.
fn server_line(c: &CpuCost) -> String {
    match (c.user_s_per_million, c.system_s_per_million) {
        (Some(u), Some(s)) => format!(
            "{u:.2} s user + {s:.2} s system per million deliveries ({:.2} cores)",
            c.cores
        ),
        _ => c.line_per("deliveries"),
    }
}
