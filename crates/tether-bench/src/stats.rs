//! Measuring and reporting: latency histograms shared by many tasks, the server's CPU and RSS
//! from `/proc`, and the output (an aligned table on stdout, the same figures as JSON).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// A monotonic clock in microseconds since the Unix epoch: read once from the system clock at
/// start, then advanced by an [`Instant`], so that a timestamp written into a payload by one
/// task and read back by another measures a true interval (no NTP steps), while staying
/// comparable with other processes' wall clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            base: Instant::now(),
            base_unix_us: unix.as_micros() as u64,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.base_unix_us + self.base.elapsed().as_micros() as u64
    }
}

/// Highest latency the histograms hold (larger values are clamped to it), in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;

/// An empty latency histogram (µs).
pub fn histogram() -> Histogram<u64> {
    // 3 significant digits over 1 µs .. 120 s: about 0.1% error at any magnitude.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Latencies in microseconds, recorded by many tasks.
///
/// Tasks record into one of a few mutex-guarded shards (task `i` uses shard `i % n`), a batch
/// at a time, so that the two worker threads rarely meet on one lock and a histogram (a few
/// hundred KiB) is not allocated per task.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    pub fn new(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(histogram()))
                .collect(),
        }
    }

    /// Records every value of `batch` into shard `shard % n`, and empties `batch`.
    pub fn record(&self, shard: usize, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let mut h = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &v in batch.iter() {
            h.saturating_record(v.max(1));
        }
        batch.clear();
    }

    pub fn record_one(&self, shard: usize, value: u64) {
        let mut h = self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.saturating_record(value.max(1));
    }

    /// Every shard merged into one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides: adding cannot fail.
            all.add(&*h).expect("histograms share their bounds");
        }
        all
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// `p50 1.23 ms  p90 ...`, the quantiles named in `which` (50, 90, 99, 999, max).
    pub fn line(&self, which: &[&str]) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        which
            .iter()
            .map(|w| {
                let v = match *w {
                    "50" => self.p50_us,
                    "90" => self.p90_us,
                    "99" => self.p99_us,
                    "999" => self.p999_us,
                    _ => self.max_us,
                };
                let label = match *w {
                    "999" => "p99.9".to_owned(),
                    "max" => "max".to_owned(),
                    q => format!("p{q}"),
                };
                format!("{label} {}", fmt_us(v))
            })
            .collect::<Vec<_>>()
            .join("  ")
    }
}

/// `850 µs`, `12.3 ms`, `1.20 s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..10_000 => format!("{:.2} ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// `1,234,567` (rounded to a whole number).
pub fn fmt_count(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `/proc/PID/stat` counts CPU time in clock ticks; `USER_HZ` is 100 on every Linux
/// architecture tether runs on (reading it would take `sysconf`, i.e. `unsafe` or a new
/// dependency).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// CPU time a process has used so far.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
}

impl Cpu {
    /// Reads `/proc/<pid>/stat` (`pid` "self" for this process).
    pub fn read(pid: &str) -> Option<Cpu> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        // After ')': state is field 3, so utime (field 14) is the 12th, stime the 13th.
        let utime: f64 = fields.nth(11)?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        Some(Cpu {
            user_s: utime / CLOCK_TICKS_PER_S,
            system_s: stime / CLOCK_TICKS_PER_S,
        })
    }

    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user_s: self.user_s - earlier.user_s,
            system_s: self.system_s - earlier.system_s,
        }
    }

    pub fn total_s(self) -> f64 {
        self.user_s + self.system_s
    }
}

/// The whole machine's CPU time so far (every process, every core), from `/proc/stat`: on a
/// shared machine, what other processes (`busy_s`) or the hypervisor (`steal_s`) took during a
/// run shows next to the server's and the client's share.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    pub busy_s: f64,
    pub steal_s: f64,
    /// Time in software interrupts, part of `busy_s`. On loopback, TCP's receive work runs
    /// there, mostly in the sending process's context; with tick-based accounting (this
    /// kernel: no `CONFIG_IRQ_TIME_ACCOUNTING`) it is also charged to whichever process was
    /// running, so it is a breakdown of the processes' system time, not an addition to it.
    pub softirq_s: f64,
}

impl Machine {
    pub fn read() -> Option<Machine> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<f64> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user already).
        let &[user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks.as_slice()
        else {
            return None;
        };
        Some(Machine {
            busy_s: (user + nice + system + irq + softirq) / CLOCK_TICKS_PER_S,
            steal_s: steal / CLOCK_TICKS_PER_S,
            softirq_s: softirq / CLOCK_TICKS_PER_S,
        })
    }
}

/// A process's resident set size, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A server's processes: the pids given and all their descendants (nginx's workers under its
/// master), looked up once when the run starts.
#[derive(Debug, Clone, Default)]
pub struct Processes {
    pub pids: Vec<u32>,
}

impl Processes {
    pub fn with_descendants(roots: &[u32]) -> Self {
        let mut pids = roots.to_vec();
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                // After the command name: state, then the parent's pid.
                let ppid = stat[stat.rfind(')')? + 1..]
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            for &(pid, ppid) in &parents {
                if ppid == parent && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            i += 1;
        }
        Processes { pids }
    }

    /// The CPU time of every process together (`None` if none could be read).
    pub fn cpu(&self) -> Option<Cpu> {
        let all: Vec<Cpu> = self
            .pids
            .iter()
            .filter_map(|p| Cpu::read(&p.to_string()))
            .collect();
        (!all.is_empty()).then(|| Cpu {
            user_s: all.iter().map(|c| c.user_s).sum(),
            system_s: all.iter().map(|c| c.system_s).sum(),
        })
    }

    /// The proportional set of every process together, in KiB: shared pages (nginx's shared
    /// memory zone) divided among the processes that map them, so they count once.
    pub fn pss_kib(&self) -> Option<u64> {
        let all: Vec<u64> = self
            .pids
            .iter()
            .filter_map(|p| {
                let s = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
                let line = s.lines().find(|l| l.starts_with("Pss:"))?;
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .collect();
        (!all.is_empty()).then(|| all.iter().sum())
    }

    /// The resident set of every process together, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let all: Vec<u64> = self.pids.iter().filter_map(|&p| rss_kib(p)).collect();
        (!all.is_empty()).then(|| all.iter().sum())
    }
}

/// CPU used over a window, scaled per million of some unit.
#[derive(Debug, Clone, Serialize)]
pub struct CpuCost {
    pub user_s: f64,
    pub system_s: f64,
    /// Share of one core over the window (1.0 = one core busy).
    pub cores: f64,
    /// CPU-seconds (user + system) per million messages.
    pub s_per_million: Option<f64>,
    pub user_s_per_million: Option<f64>,
    pub system_s_per_million: Option<f64>,
}

impl CpuCost {
    pub fn of(cpu: Cpu, window: Duration, units: u64) -> Self {
        let per_million = |s: f64| (units > 0).then(|| s * 1e6 / units as f64);
        CpuCost {
            user_s: cpu.user_s,
            system_s: cpu.system_s,
            cores: cpu.total_s() / window.as_secs_f64().max(1e-9),
            s_per_million: per_million(cpu.total_s()),
            user_s_per_million: per_million(cpu.user_s),
            system_s_per_million: per_million(cpu.system_s),
        }
    }

    pub fn line(&self) -> String {
        self.line_per("messages")
    }

    /// The same, naming the unit counted.
    pub fn line_per(&self, unit: &str) -> String {
        let mut s = format!(
            "{:.2} s user + {:.2} s system ({:.2} cores)",
            self.user_s, self.system_s, self.cores
        );
        if let (Some(all), Some(user)) = (self.s_per_million, self.user_s_per_million) {
            s.push_str(&format!(
                ", {all:.2} s per million {unit} ({user:.2} s user)"
            ));
        }
        s
    }
}

/// Rows of `label  value`, printed with the labels aligned.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.into(), value.into()));
        self
    }

    pub fn print(&self) {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.rows {
            println!("{label:<width$}  {value}");
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu() {
        let cpu = Cpu::read("self").expect("/proc/self/stat is readable");
        assert!(cpu.user_s >= 0.0 && cpu.system_s >= 0.0);
    }

    #[test]
    fn reads_machine_cpu() {
        assert!(Machine::read().is_some_and(|m| m.busy_s > 0.0 && m.steal_s >= 0.0));
    }

    #[test]
    fn finds_own_process_tree() {
        let me = std::process::id();
        let p = Processes::with_descendants(&[me]);
        assert_eq!(p.pids[0], me);
        assert!(p.cpu().is_some());
        assert!(p.rss_kib().is_some_and(|k| k > 0));
    }

    #[test]
    fn shards_merge() {
        let r = Recorder::new(3);
        r.record(0, &mut vec![10, 20]);
        r.record(4, &mut vec![30]);
        r.record_one(2, 0);
        let h = r.merged();
        assert_eq!(h.len(), 4);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 30);
    }

    #[test]
    fn formats_latencies() {
        assert_eq!(fmt_us(850), "850 µs");
        assert_eq!(fmt_us(1_234), "1.23 ms");
        assert_eq!(fmt_us(12_345), "12.3 ms");
        assert_eq!(fmt_us(1_200_000), "1.20 s");
        assert_eq!(fmt_count(0.4), "0");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1000.0), "1,000");
        assert_eq!(fmt_count(1_234_567.0), "1,234,567");
    }
}
