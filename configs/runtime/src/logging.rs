//! Logging: `tracing` events to stderr, where journald, `kubectl logs` and a
//! terminal all find them — as plain text (the default) or, with
//! `--log-format json`, one JSON object per line for log pipelines.

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Json, JsonFields};
use tracing_subscriber::fmt::{MakeWriter, SubscriberBuilder};

/// How log lines look: the daemons' `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields at the top level, and the enclosing spans
    /// (`span`, `spans`) when there are any.
    Json,
}

impl LogFormat {
    /// The names `--log-format` accepts.
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    /// Parses `text` or `json` (clap's `value_parser`).
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        s.parse()
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: expected text or json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Logs to stderr in `format` at the level `RUST_LOG` names (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only for people: journald, log files and pipes get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => json(builder).init(),
    }
}

/// The JSON form: one object per event and line, the event's fields
/// (`message` among them) beside `timestamp`, `level` and `target` rather
/// than under `fields`, so a pipeline filters on `.peer` not `.fields.peer`.
fn json<W>(
    builder: SubscriberBuilder<DefaultFields, Format, EnvFilter, W>,
) -> SubscriberBuilder<JsonFields, Format<Json>, EnvFilter, W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    builder.json().flatten_event(true).with_ansi(false)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Appends to a shared buffer.
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_format_parses_and_prints_its_names() {
        for name in LogFormat::NAMES {
            assert_eq!(LogFormat::parse(name).unwrap().to_string(), *name);
        }
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert!(LogFormat::parse("yaml").unwrap_err().contains("text or json"));
    }

    /// Each event is one line holding one JSON object, with the message and
    /// the event's fields at the top level.
    #[test]
    fn json_writes_one_object_per_event_and_line() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = json(
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("info"))
                .with_writer(move || Buffer(sink.clone())),
        )
        .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(peer = "10.0.0.7:4433", batches = 3, "batch stored");
            tracing::warn!(message = "uplink lost", reason = "timeout \"quoted\"\nnewline");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "batch stored");
        assert_eq!(lines[0]["peer"], "10.0.0.7:4433");
        assert_eq!(lines[0]["batches"], 3);
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["target"], module_path!());
        assert!(lines[0]["timestamp"].is_string(), "{text}");
        assert!(lines[0].get("fields").is_none(), "{text}");
        assert_eq!(lines[1]["message"], "uplink lost");
        assert_eq!(lines[1]["reason"], "timeout \"quoted\"\nnewline");
        assert_eq!(lines[1]["level"], "WARN");
    }
}
