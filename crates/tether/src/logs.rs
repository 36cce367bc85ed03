//! `tether serve`'s logs: what is logged (the filter), how (text or JSON lines), and where
//! (stderr, coloured only on a terminal).
//!
//! The environment wins over the configuration's `[log]`: the filter is `TETHER_LOG`, else
//! `RUST_LOG`, else `log.filter` (by default [`DEFAULT_LOG_FILTER`]: our own events at INFO,
//! the storage engine's at WARN); the format is `--log-format` (`TETHER_LOG_FORMAT`), else
//! `log.format`. A filter given names its own levels (`TETHER_LOG=info,fjall=info`).
//!
//! The JSON format is our own [`JsonLines`] rather than `tracing-subscriber`'s: that one
//! writes the `log.file` of events bridged from the `log` crate (a path on the build
//! machine), and its field map cannot leave them out.

use std::fmt;

use serde_json::{Map, Value};
use tether_server::config::{DEFAULT_LOG_FILTER, LogConfig};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log format of `--log-format`: `text` (one line per event, for people) or `json` (one
/// JSON object per line, for a collector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl From<tether_server::config::LogFormat> for LogFormat {
    fn from(format: tether_server::config::LogFormat) -> Self {
        match format {
            tether_server::config::LogFormat::Text => LogFormat::Text,
            tether_server::config::LogFormat::Json => LogFormat::Json,
        }
    }
}

/// The filter from the environment (`TETHER_LOG`, then `RUST_LOG`), else `configured` (the
/// configuration checked it). An invalid variable is reported on stderr and skipped: a typo
/// must not silence the node.
fn filter(configured: &str) -> EnvFilter {
    for var in ["TETHER_LOG", "RUST_LOG"] {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        match EnvFilter::try_new(&value) {
            Ok(filter) => return filter,
            Err(e) => eprintln!("{var}={value:?} is not a log filter ({e}); ignored"),
        }
    }
    EnvFilter::try_new(configured).unwrap_or_else(|e| {
        eprintln!(
            "log.filter {configured:?} is not a log filter ({e}); using {DEFAULT_LOG_FILTER:?}"
        );
        EnvFilter::new(DEFAULT_LOG_FILTER)
    })
}

/// Installs the global subscriber on stderr, colours only when stderr is a terminal (not in a
/// log file, journald or a test's pipe): `format` (the command line's) or else the
/// configuration's, with the filter of [`filter`].
pub fn init(config: &LogConfig, format: Option<LogFormat>) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&config.filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format.unwrap_or(config.format.into()) {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`,
/// then the event's fields at the top level, each a JSON number, boolean or string (a
/// `Display` or `Debug` field as its text). The `log.*` fields of events from the `log` crate
/// are dropped, except `log.target`, which becomes the `target`. Spans are not written (the
/// node's events carry what they need as fields).
#[derive(Debug, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::from(timestamp()));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        let target = fields.log_target.take();
        line.insert(
            "target".into(),
            Value::from(target.as_deref().unwrap_or(meta.target())),
        );
        line.insert(
            "message".into(),
            fields.message.take().unwrap_or(Value::Null),
        );
        for (name, value) in fields.values {
            // A field named like one of ours keeps ours and is written with a prefix.
            let name = match line.contains_key(&name) {
                true => format!("field.{name}"),
                false => name,
            };
            line.insert(name, value);
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The fields of one event, as plain JSON values.
#[derive(Default)]
struct Fields {
    message: Option<Value>,
    log_target: Option<String>,
    values: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = Some(value),
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            name if name.starts_with("log.") => {}
            name => self
                .values
                .push((name.strip_prefix("r#").unwrap_or(name).to_owned(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its causes, as `{e:#}` would say them with anyhow.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        self.put(field, Value::from(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, their Debug being their Display.
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// Now, as RFC 3339 in UTC with microseconds: `2026-12-07T08:49:17.917810Z`.
fn timestamp() -> String {
    let mut text = String::new();
    let _ = tracing_subscriber::fmt::time::FormatTime::format_time(
        &tracing_subscriber::fmt::time::SystemTime,
        &mut Writer::new(&mut text),
    );
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_have_plain_values_and_no_log_metadata() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        let addr: std::net::SocketAddr = "127.0.0.1:7400".parse().unwrap();
        let none: Option<std::net::SocketAddr> = None;
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                tcp = Some(tracing::field::display(addr)),
                ws = none.map(tracing::field::display),
                connections = 3u64,
                ok = true,
                "log.file" = "/home/builder/.cargo/registry/src/x.rs",
                "log.target" = "fjall::db",
                "tether node started"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["message"], "tether node started");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["tcp"], "127.0.0.1:7400");
        assert!(line.get("ws").is_none(), "an absent listener has no field");
        assert_eq!(line["connections"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["target"], "fjall::db");
        assert!(
            !text.contains("log.file") && !text.contains("/home/"),
            "{text}"
        );
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
