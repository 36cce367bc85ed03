//! `tether-bench summary`: the side-by-side table of a compare run (`bench/compare.sh`).
//!
//! Reads the JSON results the scenarios wrote (`connections`, `broadcast` at a fixed rate,
//! `broadcast --max`, `churn`), one column per target, and shows each figure with its ratio to
//! a reference target (per row: `--reference`, else tether, else the bare writer, else the
//! first with a value): a ratio above 1 means more of that figure than the reference (more
//! memory, more CPU, more deliveries per second).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::stats::{fmt_count, fmt_us};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Result files, or directories whose `*.json` files are read.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The target the ratios are taken against, in rows where it has a value. Default: tether,
    /// else bare.
    #[arg(long)]
    reference: Option<String>,
    /// Write the table as JSON to this file (skipped when reading inputs).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Targets in the order they are shown.
const ORDER: [&str; 5] = ["tether", "tether-mqtt", "nchan", "mosquitto", "bare"];

/// How a figure is shown.
#[derive(Debug, Clone, Copy)]
enum Unit {
    KiB,
    PerSecond,
    Seconds,
    Micros,
    Count,
}

#[derive(Debug, Serialize)]
struct Row {
    figure: String,
    /// Target -> value.
    values: BTreeMap<String, f64>,
    /// The target this row's ratios are taken against: --reference, else tether, else bare,
    /// else the first with a non-zero value.
    reference: Option<String>,
    /// Target -> value / the reference's value.
    ratios: BTreeMap<String, f64>,
    #[serde(skip)]
    unit: Option<Unit>,
}

#[derive(Debug, Serialize)]
struct Summary {
    targets: Vec<String>,
    rows: Vec<Row>,
    /// Context for the figures (rates, subscriber counts), per target and scenario.
    notes: Vec<String>,
}

fn files(inputs: &[PathBuf], skip: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut dir: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot read {}", input.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            dir.sort();
            out.extend(dir);
        } else {
            out.push(input.clone());
        }
    }
    if let Some(skip) = skip {
        out.retain(|p| p.file_name() != skip.file_name());
    }
    Ok(out)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    let mut notes = Vec::new();
    let mut add = |figure: &str, unit: Unit, target: &str, value: Option<f64>| {
        let Some(value) = value.filter(|v| v.is_finite()) else {
            return;
        };
        let row = match rows.iter_mut().position(|r| r.figure == figure) {
            Some(i) => &mut rows[i],
            None => {
                rows.push(Row {
                    figure: figure.to_owned(),
                    reference: None,
                    values: BTreeMap::new(),
                    ratios: BTreeMap::new(),
                    unit: Some(unit),
                });
                rows.last_mut().expect("just pushed")
            }
        };
        row.values.insert(target.to_owned(), value);
    };
    for path in files(&args.inputs, args.json.as_deref())? {
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(v) = serde_json::from_slice::<Value>(&text) else {
            eprintln!("skipping {} (not JSON)", path.display());
            continue;
        };
        let target = v["target"].as_str().unwrap_or("tether").to_owned();
        let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
        match (v["scenario"].as_str(), v["mode"].as_str()) {
            (Some("connections"), _) => {
                let kib = |b: Option<f64>| b.map(|b| b / 1024.0);
                add(
                    "idle RSS per connection",
                    Unit::KiB,
                    &target,
                    kib(f("/server_rss_bytes_per_connection")),
                );
                add(
                    "idle PSS per connection",
                    Unit::KiB,
                    &target,
                    kib(f("/server_pss_bytes_per_connection")),
                );
                add(
                    "handshakes/s (connections)",
                    Unit::PerSecond,
                    &target,
                    f("/handshakes_per_s"),
                );
                notes.push(format!(
                    "{target} connections: {} of {} connected{}",
                    v["connected"],
                    v["requested"],
                    if v["subscribed"] == true {
                        ", subscribed"
                    } else {
                        ""
                    }
                ));
            }
            (Some("broadcast"), Some("rate")) => {
                let s = "/steps/0";
                add(
                    "deliveries/s at equal rate",
                    Unit::PerSecond,
                    &target,
                    f(&format!("{s}/deliveries_per_s")),
                );
                for (label, key) in [
                    ("server CPU s/M deliveries, user", "user_s_per_million"),
                    ("server CPU s/M deliveries, system", "system_s_per_million"),
                    ("server CPU s/M deliveries, total", "s_per_million"),
                ] {
                    add(
                        label,
                        Unit::Seconds,
                        &target,
                        f(&format!("{s}/server_cpu/{key}")),
                    );
                }
                for (label, key) in [
                    ("latency p50", "p50_us"),
                    ("latency p99", "p99_us"),
                    ("latency p99.9", "p999_us"),
                    ("latency max", "max_us"),
                ] {
                    add(
                        label,
                        Unit::Micros,
                        &target,
                        f(&format!("{s}/latency/{key}")),
                    );
                }
                add(
                    "softirq s/M deliveries, machine-wide",
                    Unit::Seconds,
                    &target,
                    f(&format!("{s}/softirq_s_per_million")),
                );
                add(
                    "cores busy outside server and client (equal rate)",
                    Unit::Count,
                    &target,
                    f(&format!("{s}/outside_cores")),
                );
                add("lost (equal rate)", Unit::Count, &target, f("/lost"));
                add(
                    "duplicates (equal rate)",
                    Unit::Count,
                    &target,
                    f("/duplicates"),
                );
                notes.push(format!(
                    "{target} broadcast: {} subscribers, {} publishes/s target, {} B",
                    v["connected"],
                    v.pointer(&format!("{s}/target_rate"))
                        .unwrap_or(&Value::Null),
                    v["payload_bytes"]
                ));
            }
            (Some("broadcast"), Some("max")) => {
                add(
                    "saturation deliveries/s",
                    Unit::PerSecond,
                    &target,
                    f("/saturation_deliveries_per_s"),
                );
                // The CPU of the step that reached it.
                let best = v["steps"].as_array().and_then(|steps| {
                    steps.iter().max_by(|a, b| {
                        let d = |s: &Value| s["deliveries_per_s"].as_f64().unwrap_or(0.0);
                        d(a).total_cmp(&d(b))
                    })
                });
                if let Some(step) = best {
                    add(
                        "server CPU s/M deliveries at saturation",
                        Unit::Seconds,
                        &target,
                        step.pointer("/server_cpu/s_per_million")
                            .and_then(Value::as_f64),
                    );
                    add(
                        "server cores busy at saturation",
                        Unit::Count,
                        &target,
                        step.pointer("/server_cpu/cores").and_then(Value::as_f64),
                    );
                    add(
                        "latency p99 at saturation",
                        Unit::Micros,
                        &target,
                        step.pointer("/latency/p99_us").and_then(Value::as_f64),
                    );
                }
            }
            (Some("churn"), _) => {
                add(
                    "churn handshakes/s",
                    Unit::PerSecond,
                    &target,
                    f("/handshakes_per_s"),
                );
            }
            _ => eprintln!("skipping {} (not a known result)", path.display()),
        }
    }
    let mut targets: Vec<String> = ORDER
        .iter()
        .filter(|t| rows.iter().any(|r| r.values.contains_key(**t)))
        .map(|t| (*t).to_owned())
        .collect();
    for r in &rows {
        for t in r.values.keys() {
            if !targets.contains(t) {
                targets.push(t.clone());
            }
        }
    }
    // Each row's ratios are taken against the first of these with a value in that row.
    let mut preference: Vec<String> = args.reference.iter().cloned().collect();
    preference.extend(["tether", "tether-mqtt", "bare"].map(str::to_owned));
    preference.extend(targets.iter().cloned());
    for r in &mut rows {
        let Some((reference, base)) = preference.iter().find_map(|t| {
            r.values
                .get(t)
                .filter(|v| **v != 0.0)
                .map(|v| (t.clone(), *v))
        }) else {
            continue;
        };
        r.ratios = r
            .values
            .iter()
            .map(|(t, v)| (t.clone(), v / base))
            .collect();
        r.reference = Some(reference);
    }
    let summary = Summary {
        targets,
        rows,
        notes,
    };
    summary.print();
    if let Some(path) = &args.json {
        crate::stats::write_json(path, &summary)?;
    }
    Ok(())
}

fn show(unit: Option<Unit>, v: f64) -> String {
    match unit {
        Some(Unit::KiB) => format!("{v:.2} KiB"),
        Some(Unit::PerSecond) => fmt_count(v),
        Some(Unit::Seconds) => format!("{v:.2} s"),
        Some(Unit::Micros) => fmt_us(v as u64),
        Some(Unit::Count) | None => {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        }
    }
}

impl Summary {
    fn print(&self) {
        let mut cells: Vec<Vec<String>> = vec![{
            let mut h = vec!["figure".to_owned()];
            h.extend(self.targets.iter().cloned());
            h
        }];
        for r in &self.rows {
            let mut line = vec![r.figure.clone()];
            for t in &self.targets {
                line.push(match r.values.get(t) {
                    None => "-".into(),
                    Some(&v) => match r.ratios.get(t) {
                        _ if r.reference.as_ref() == Some(t) => {
                            format!("{} (ref)", show(r.unit, v))
                        }
                        Some(ratio) => format!("{} ({ratio:.2}x)", show(r.unit, v)),
                        None => show(r.unit, v),
                    },
                });
            }
            cells.push(line);
        }
        let widths: Vec<usize> = (0..cells[0].len())
            .map(|c| {
                cells
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in &cells {
            let text: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    if i == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            println!("{}", text.join("  "));
        }
        println!("(ratios: value / the value of the row's (ref) column)");
        for n in &self.notes {
            println!("  {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_results_and_takes_ratios() {
        let dir = std::env::temp_dir().join(format!("tether-bench-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, v: Value| {
            std::fs::write(dir.join(name), serde_json::to_vec(&v).unwrap()).unwrap();
        };
        write(
            "bare-connections.json",
            serde_json::json!({"scenario":"connections","target":"bare","connected":10,
                "requested":10,"server_rss_bytes_per_connection":512.0}),
        );
        write(
            "nchan-connections.json",
            serde_json::json!({"scenario":"connections","target":"nchan","connected":10,
                "requested":10,"server_rss_bytes_per_connection":10240.0}),
        );
        write(
            "nchan-max.json",
            serde_json::json!({"scenario":"broadcast","target":"nchan","mode":"max",
                "saturation_deliveries_per_s":150000.0,
                "steps":[{"deliveries_per_s":150000.0,"server_cpu":{"s_per_million":8.0}}]}),
        );
        write("notes.json", serde_json::json!({"something": "else"}));
        let out = dir.join("summary.json");
        run(&Args {
            inputs: vec![dir.clone()],
            reference: None,
            json: Some(out.clone()),
        })
        .unwrap();
        let s: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(s["targets"], serde_json::json!(["nchan", "bare"]));
        let rss = &s["rows"][0];
        assert_eq!(rss["figure"], "idle RSS per connection");
        assert_eq!(rss["reference"], "bare");
        assert_eq!(rss["ratios"]["nchan"], 20.0);
        // A row only one target has is its own reference.
        let saturation = s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["figure"] == "saturation deliveries/s")
            .unwrap();
        assert_eq!(saturation["reference"], "nchan");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
