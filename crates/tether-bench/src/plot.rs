//! The `plot` subcommand: a PNG of how the servers and Redis grow with connections, from the
//! time series (`samples`) of `connections --redis ... --json` results.
//!
//! Left: memory against the sessions registered in Redis (the servers' RSS together, Redis'
//! `used_memory`, and how much of the machine's memory the run took: `MemAvailable` at the
//! first sample minus now, which adds the kernel's sockets and the client's processes).
//! Right: CPU seconds spent since the first sample, servers and Redis, against the same.
//!
//! Drawn with plotters' bitmap backend; text uses the font in `assets/` through ab_glyph, so
//! nothing depends on the machine's fonts.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use plotters::prelude::*;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `connections` results (JSON) with samples; each is drawn as its own lines.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// A line under the panels' titles (e.g. the machine and the setup).
    #[arg(long, default_value = "")]
    note: String,
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// One run's series, x in thousands of sessions.
#[derive(Debug, Default)]
struct Series {
    server_rss_mib: Vec<(f64, f64)>,
    redis_mib: Vec<(f64, f64)>,
    machine_mib: Vec<(f64, f64)>,
    server_cpu_s: Vec<(f64, f64)>,
    redis_cpu_s: Vec<(f64, f64)>,
}

fn series_of(path: &Path) -> anyhow::Result<Series> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let samples = json["samples"]
        .as_array()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("{}: no samples (run with --redis)", path.display()))?;
    let first = &samples[0];
    let num = |v: &Value, key: &str| v[key].as_f64();
    let redis = |v: &Value, key: &str| v["redis"][key].as_f64();
    let mut s = Series::default();
    for v in samples {
        let Some(sessions) = redis(v, "sessions") else {
            continue;
        };
        let x = sessions / 1000.0;
        if let Some(rss) = num(v, "server_rss_kib") {
            s.server_rss_mib.push((x, rss / 1024.0));
        }
        if let Some(m) = redis(v, "used_memory") {
            s.redis_mib.push((x, m / 1048576.0));
        }
        if let (Some(a0), Some(a)) = (num(first, "mem_available_kib"), num(v, "mem_available_kib"))
        {
            s.machine_mib.push((x, (a0 - a) / 1024.0));
        }
        if let (Some(c0), Some(c)) = (num(first, "server_cpu_s"), num(v, "server_cpu_s")) {
            s.server_cpu_s.push((x, c - c0));
        }
        if let (Some(c0), Some(c)) = (redis(first, "cpu_s"), redis(v, "cpu_s")) {
            s.redis_cpu_s.push((x, c - c0));
        }
    }
    if s.redis_mib.is_empty() {
        bail!("{}: no sample has Redis figures", path.display());
    }
    Ok(s)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the bundled font does not load"))?;
    let runs: Vec<Series> = args
        .results
        .iter()
        .map(|p| series_of(p))
        .collect::<anyhow::Result<_>>()?;
    draw(&runs, &args.out, &args.note)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

type Line<'a> = (&'a str, RGBColor, fn(&Series) -> &Vec<(f64, f64)>);

fn draw(runs: &[Series], out: &Path, note: &str) -> anyhow::Result<()> {
    let root = BitMapBackend::new(out, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if note.is_empty() {
        root
    } else {
        root.titled(note, ("sans-serif", 16))?
    };
    let (left, right) = root.split_horizontally(700);
    let memory: [Line; 3] = [
        ("tether RSS, all nodes", RED, |s| &s.server_rss_mib),
        ("Redis used_memory", BLUE, |s| &s.redis_mib),
        ("machine memory taken", RGBColor(120, 120, 120), |s| {
            &s.machine_mib
        }),
    ];
    panel(&left, runs, "Memory against connections", "MiB", &memory)?;
    let cpu: [Line; 2] = [
        ("tether CPU, all nodes", RED, |s| &s.server_cpu_s),
        ("Redis CPU", BLUE, |s| &s.redis_cpu_s),
    ];
    panel(
        &right,
        runs,
        "CPU spent against connections",
        "CPU seconds since start",
        &cpu,
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    runs: &[Series],
    title: &str,
    y_desc: &str,
    lines: &[Line<'_>],
) -> anyhow::Result<()> {
    let points = || {
        runs.iter()
            .flat_map(|r| lines.iter().flat_map(move |(_, _, f)| f(r).iter()))
    };
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("connections (sessions in Redis), thousands")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        for &(label, color, f) in lines {
            let drawn = chart.draw_series(LineSeries::new(
                f(run).iter().copied(),
                color.stroke_width(2),
            ))?;
            // One legend entry per line, whatever the number of runs.
            if i == 0 {
                drawn.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
