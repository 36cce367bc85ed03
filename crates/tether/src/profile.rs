//! `tether profile`: records a node's CPU profile through the admin API
//! (`GET /v1/admin/profile`) and writes it to a file: a flame graph (SVG) or a pprof protobuf.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::api::extend;
use crate::target::NodeArgs;

/// How long the node may take to build its answer once the recording ends (its own limit is
/// `limits.api_timeout`).
const REPORT_MARGIN: Duration = Duration::from_secs(60);

/// What the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A flame graph, an SVG to open in a browser (click a frame to zoom).
    Svg,
    /// Google's pprof protobuf, for `go tool pprof` or `pprof` (e.g. `pprof -top FILE`).
    Pprof,
}

impl Format {
    fn query(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Pprof => "pprof",
        }
    }

    /// The format a file name suggests: pprof for `.pb`, `.pprof` and `.prof`, else SVG.
    fn from_path(path: &Path) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match ext.as_str() {
            "pb" | "pprof" | "prof" => Format::Pprof,
            _ => Format::Svg,
        }
    }
}

/// Record a node's CPU profile for a few seconds and write it to a file, as a flame graph
/// (SVG) or a pprof protobuf (GET /v1/admin/profile, with the admin key).
///
/// The node samples its threads 99 times per second of CPU time, one profile at a time (while
/// one is recorded, another answers HTTP 409). Prints what it wrote.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The node's admin key (default: `[admin] key` in the configuration).
    #[arg(
        long,
        env = "TETHER_ADMIN_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub admin_key: Option<String>,
    /// How long to record, 1 to 60 seconds (the node may allow less:
    /// `admin.profile_max_seconds`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub seconds: u32,
    /// The file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The file's format. Default: `pprof` when FILE ends in .pb, .pprof or .prof, else `svg`.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

pub async fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let format = args.format.unwrap_or_else(|| Format::from_path(&args.out));
    let mut resolve = args.node.resolver();
    let mut url = resolve.base_url(args.node.url.as_deref())?;
    extend(&mut url, &["v1", "admin", "profile"])?;
    url.query_pairs_mut()
        .append_pair("seconds", &args.seconds.to_string())
        .append_pair("format", format.query());
    let key = resolve.admin_key(args.admin_key.as_deref())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.seconds.into()) + REPORT_MARGIN)
        .build()
        .context("cannot build the HTTP client")?;
    eprintln!("recording {} s of CPU profile from {url} ...", args.seconds);
    let response = http
        .get(url.clone())
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {}", crate::push::error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("GET {url}: the answer was lost"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        if !text.trim().is_empty() {
            eprintln!("{}", text.trim_end());
        }
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned));
        match code {
            Some(code) => bail!("GET {url}: HTTP {status} {code}"),
            None => bail!("GET {url}: HTTP {status}"),
        }
    }
    std::fs::write(&args.out, &body)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} bytes ({}) to {}",
        body.len(),
        format.query(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_name_suggests_the_format() {
        assert_eq!(Format::from_path(Path::new("cpu.svg")), Format::Svg);
        assert_eq!(Format::from_path(Path::new("cpu.PB")), Format::Pprof);
        assert_eq!(Format::from_path(Path::new("/tmp/x.pprof")), Format::Pprof);
        assert_eq!(Format::from_path(Path::new("profile")), Format::Svg);
    }
}
