//! The process's own figures, read from `/proc/self` when `/metrics` is scraped (Linux only;
//! elsewhere nothing is written): resident memory, CPU seconds, open descriptors, threads.
//!
//! Written as text after the recorder's output rather than through the recorder: CPU seconds
//! are a fractional counter, which the `metrics` crate's integer counters cannot hold. The
//! names are the ones Prometheus's own client libraries use, so that stock dashboards work.
//!
//! Cost per scrape: two small reads (`stat`, `status`) and one directory listing of
//! `/proc/self/fd`, which grows with the connections (about a millisecond per 10,000).

use std::fmt::Write;

/// Appends the process metrics to `out` in the text exposition format.
pub fn render(out: &mut String) {
    if let Some(cpu) = cpu_seconds() {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            cpu,
        );
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status_field(&status, "VmRSS:") {
            family(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size, in bytes.",
                (kib * 1024) as f64,
            );
        }
        if let Some(kib) = status_field(&status, "VmSize:") {
            family(
                out,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size, in bytes.",
                (kib * 1024) as f64,
            );
        }
        if let Some(n) = status_field(&status, "Threads:") {
            family(
                out,
                "process_threads",
                "gauge",
                "Threads in the process.",
                n as f64,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The listing's own descriptor is among the entries.
        let n = dir.count().saturating_sub(1);
        family(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors (connections, files, listeners).",
            n as f64,
        );
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(limit) = limit {
        family(
            out,
            "process_max_fds",
            "gauge",
            "The open-file limit (soft).",
            limit as f64,
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
    );
}

/// `utime + stime` of `/proc/self/stat`, in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    Some((utime + stime) as f64 / ticks as f64)
}

/// The number of a `/proc/self/status` line such as `VmRSS:   1234 kB`.
fn status_field(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read_and_plausible() {
        let mut out = String::new();
        render(&mut out);
        let value = |name: &str| -> f64 {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from {out}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_threads") >= 1.0);
        // stdin, stdout, stderr at least, unless a harness closed them; the test binary opens
        // files of its own.
        assert!(value("process_open_fds") >= 1.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
        ] {
            assert!(out.contains(&format!("# HELP {name} ")), "{name}");
            assert!(out.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn a_status_line_gives_its_number() {
        let status = "Name:\tx\nVmRSS:\t  5120 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(5120));
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmSize:"), None);
    }
}
