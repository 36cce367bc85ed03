//! `GET /v1/admin/profile`: the node's CPU profile over a few seconds, as a flame graph (SVG)
//! or Google's pprof protobuf, so that an operator can see where a running node spends its CPU
//! without restarting it under a profiler.
//!
//! The profiler is pprof-rs: `setitimer(ITIMER_PROF)` sends SIGPROF every 1/99 s of CPU time the
//! process uses (on whichever thread is running), and the handler unwinds that thread's stack
//! into a fixed-size table (spilling to a temporary file when the table is full); symbols are
//! resolved once, after the recording. What it costs is bounded:
//!
//! - one profile at a time on a node: a second request answers 409 `profile_running` at once
//!   (the profiler is process-wide, and two would each see half the samples);
//! - at most `admin.profile_max_seconds` (60 at most), 99 samples per CPU-second: at most about
//!   12,000 samples on two busy cores in 60 s;
//! - the sampler's table is allocated when the first profile starts and kept for the process's
//!   life (pprof-rs's, a fresh one after each profile, with the symbol resolver's caches: about
//!   186 MiB in a release build, docs/benchmarks.md); the report and the answer are as large as
//!   the distinct stacks seen, at most one per sample;
//! - the recording and the report run on a blocking thread, not on the async workers; a client
//!   that goes away ends its recording early.
//!
//! Samples whose innermost frame is in the C library, libgcc, libpthread or the vDSO are
//! dropped (pprof-rs's advice: unwinding from a signal inside those can deadlock), so the CPU
//! time of system calls (a socket `write`, an `fsync`) is not in the profile.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pprof::protos::Message as _;
use serde::Deserialize;
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, Ops};

/// Samples per second of CPU time: 99, not 100, so that sampling does not run in step with
/// work done on 10 ms timers and see only that.
pub const FREQUENCY: i32 = 99;

/// How long a profile records when the request does not say (or the node's maximum, if lower).
pub const DEFAULT_SECONDS: u32 = 10;

/// Shared objects whose frames end a stack the sampler drops (see the module's doc).
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// The profile route's state: its limit, and the node's one profiling slot.
#[derive(Debug)]
pub struct Profiler {
    /// `admin.profile_max_seconds`: the longest recording; 0, the route is off.
    max_seconds: u32,
    /// One permit: held by the recording under way.
    slot: Arc<Semaphore>,
    /// How long the report may take once the recording ends (`limits.api_timeout`).
    report_timeout: Duration,
    node: String,
}

impl Profiler {
    pub fn new(max_seconds: u32, report_timeout: Duration, node: String) -> Self {
        Profiler {
            max_seconds,
            slot: Arc::new(Semaphore::new(1)),
            report_timeout,
            node,
        }
    }
}

/// What a profile is answered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProfileFormat {
    /// A flame graph, `image/svg+xml` (inferno's, clickable in a browser).
    Svg,
    /// Google's pprof protobuf (`profile.proto`, not gzipped), `application/octet-stream`,
    /// for `go tool pprof` or `pprof`.
    Pprof,
}

impl ProfileFormat {
    fn content_type(self) -> &'static str {
        match self {
            ProfileFormat::Svg => "image/svg+xml",
            ProfileFormat::Pprof => "application/octet-stream",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            ProfileFormat::Svg => "tether-profile.svg",
            ProfileFormat::Pprof => "tether-profile.pb",
        }
    }

    /// The format an `Accept` header asks for: pprof when it names a protobuf or octet-stream
    /// type and not SVG; otherwise the flame graph.
    fn from_accept(headers: &HeaderMap) -> Self {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        let wants_pprof = ["application/octet-stream", "protobuf"]
            .iter()
            .any(|t| accept.contains(t));
        if wants_pprof && !accept.contains("image/svg+xml") {
            ProfileFormat::Pprof
        } else {
            ProfileFormat::Svg
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ProfileQuery {
    /// How long to record, in seconds: 1 to the node's `admin.profile_max_seconds` (at most
    /// 60). Default 10, or that maximum if it is lower.
    #[param(minimum = 1, maximum = 60)]
    seconds: Option<u32>,
    /// `svg` or `pprof`. Default: `pprof` if `Accept` names `application/octet-stream` or a
    /// protobuf type (and not `image/svg+xml`), else `svg`.
    #[param(inline)]
    format: Option<ProfileFormat>,
}

/// Why a recording gave no profile.
#[derive(Debug, thiserror::Error)]
enum ProfileError {
    #[error("the profiler did not start: {0}")]
    Start(pprof::Error),
    #[error("the report could not be built: {0}")]
    Report(pprof::Error),
    #[error("the flame graph could not be drawn: {0}")]
    Draw(String),
    /// The request was dropped (its client went away) before the end.
    #[error("cancelled")]
    Cancelled,
}

/// Records the node's CPU profile for `seconds` (default 10), then answers it as a flame graph
/// or a pprof protobuf. One at a time; see docs/operations.md for reading it.
#[utoipa::path(
    get,
    path = "/v1/admin/profile",
    tag = "admin",
    params(ProfileQuery),
    responses(
        (status = 200, description = "The profile: a flame graph (SVG) or a pprof protobuf",
         headers(("Content-Disposition" = String, description = "attachment, with a file name")),
         content(
             (String = "image/svg+xml"),
             (Vec<u8> = "application/octet-stream"),
         )),
        super::openapi::ProfileErrors,
    ),
    security(("admin_key" = [])),
)]
pub(super) async fn profile(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    query: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    ops.admin(&headers)?;
    let profiler = &ops.profiler;
    let max = profiler.max_seconds;
    if max == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "profile_disabled",
            "profiling is off on this node (admin.profile_max_seconds = 0)",
        ));
    }
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let seconds = query.seconds.unwrap_or(DEFAULT_SECONDS.min(max));
    if !(1..=max).contains(&seconds) {
        return Err(ApiError::bad_request(format!(
            "seconds must be between 1 and {max} (admin.profile_max_seconds)"
        )));
    }
    let format = query
        .format
        .unwrap_or_else(|| ProfileFormat::from_accept(&headers));
    let permit = profiler.slot.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "profile_running",
            "a profile is being recorded on this node; one at a time: retry once it ends",
        )
    })?;
    let length = Duration::from_secs(seconds.into());
    // Dropped with this request (its client gone, the node shutting down): the recording
    // thread sees the channel close and stops.
    let (_stop, stopped) = mpsc::channel::<()>();
    let title = format!(
        "tether CPU profile: node {}, {seconds} s at {FREQUENCY} Hz",
        profiler.node
    );
    let recording = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        record(length, format, &title, &stopped)
    });
    let body = match tokio::time::timeout(length + profiler.report_timeout, recording).await {
        Ok(Ok(Ok(body))) => body,
        Ok(Ok(Err(e))) => {
            tracing::warn!("admin profile: {e}");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{e}"),
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!("admin profile: the recording thread failed: {e}");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the recording failed; see the node's log",
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the report took longer than {} ms after the recording",
                    profiler.report_timeout.as_millis()
                ),
            ));
        }
    };
    let disposition = format!("attachment; filename=\"{}\"", format.file_name());
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).expect("an ASCII header value"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response())
}

/// Samples the process for `length` (less if `stop` closes), then builds the answer. Runs on a
/// blocking thread: starting the profiler and resolving symbols read the binary's tables.
fn record(
    length: Duration,
    format: ProfileFormat,
    title: &str,
    stop: &mpsc::Receiver<()>,
) -> Result<Vec<u8>, ProfileError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&BLOCKLIST)
        .build()
        .map_err(ProfileError::Start)?;
    match stop.recv_timeout(length) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(()) | Err(RecvTimeoutError::Disconnected) => return Err(ProfileError::Cancelled),
    }
    let report = guard.report().build().map_err(ProfileError::Report)?;
    // Stops the sampling before the encoding, which is not part of what was asked about.
    drop(guard);
    match format {
        ProfileFormat::Svg => flame_graph(&report, title),
        ProfileFormat::Pprof => Ok(report
            .pprof()
            .map_err(ProfileError::Report)?
            .encode_to_vec()),
    }
}

/// The report's stacks in the folded format (`thread;outermost;...;innermost count`), which is
/// what a flame graph is drawn from.
fn folded(report: &pprof::Report) -> Vec<String> {
    report
        .data
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(stack, count)| {
            let mut line = stack.thread_name_or_id().replace(';', ":");
            for frame in stack.frames.iter().rev() {
                for symbol in frame.iter().rev() {
                    line.push(';');
                    // `;` separates frames: one inside a name (`[u8; 4]`) would split it.
                    line.push_str(&symbol.to_string().replace(';', ":"));
                }
            }
            line.push_str(&format!(" {count}"));
            line
        })
        .collect()
}

fn flame_graph(report: &pprof::Report, title: &str) -> Result<Vec<u8>, ProfileError> {
    let lines = folded(report);
    if lines.is_empty() {
        return Ok(no_samples(title));
    }
    let mut options = pprof::flamegraph::Options::default();
    options.title = title.to_owned();
    let mut svg = Vec::new();
    pprof::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(|e| ProfileError::Draw(e.to_string()))?;
    Ok(svg)
}

/// An SVG that says the recording caught no sample: the node used less than 1/99 s of CPU
/// (outside the C library) the whole time. (The flame graph needs at least one stack.)
fn no_samples(title: &str) -> Vec<u8> {
    let title = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"80\" viewBox=\"0 0 1200 80\" \
         xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"600\" y=\"30\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"17\">{title}</text>\
         <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"14\">No samples: the node used no measurable CPU time while it was \
         recorded</text></svg>\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> ProfileFormat {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        ProfileFormat::from_accept(&headers)
    }

    #[test]
    fn accept_chooses_pprof_only_when_it_asks_for_bytes_and_not_svg() {
        assert_eq!(
            ProfileFormat::from_accept(&HeaderMap::new()),
            ProfileFormat::Svg
        );
        assert_eq!(accept("*/*"), ProfileFormat::Svg);
        assert_eq!(accept("image/svg+xml"), ProfileFormat::Svg);
        assert_eq!(accept("application/octet-stream"), ProfileFormat::Pprof);
        assert_eq!(accept("application/x-protobuf"), ProfileFormat::Pprof);
        assert_eq!(
            accept("image/svg+xml, application/octet-stream;q=0.5"),
            ProfileFormat::Svg
        );
    }

    #[test]
    fn an_empty_recording_is_still_an_svg_with_its_title() {
        let svg = String::from_utf8(no_samples("tether CPU profile: node n1")).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("node n1"));
    }
}
