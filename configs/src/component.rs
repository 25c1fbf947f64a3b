//! Loading a component's configuration: file, environment, validation; the
//! command-line flags every binary shares; pieces several components use.
//!
//! The `config` crate merges the defaults, the file and the
//! `FLOWMESH_<COMPONENT>_…` environment overrides. It converts between types
//! on the way (`2.7` or `true` for an integer, `5` for a path), so the file is
//! first deserialized on its own with `toml`, which does not: a file value of
//! the wrong type is refused with its key, the value and the type expected.
//! Environment values are text, which the `config` crate reads as the key's
//! type, refusing text that is not one (`abc`, `2.7` or `-1` for an unsigned
//! integer). The one conversion left is the `config` crate's reading of
//! words: from the environment an integer key takes `true`, `on` and `yes`
//! as 1 and `false`, `off` and `no` as 0, and a boolean key takes `1`, `on`
//! and `yes` for true and `0`, `off` and `no` for false.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// One configuration value refused (out of range, of the wrong type, or at an
/// unknown key): the key, the value and the form expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key, as in the TOML file (`uplink.flush_ms`).
    pub key: String,
    /// The value found, as text.
    pub value: String,
    /// What the key accepts.
    pub expected: String,
}

impl Invalid {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.as_str() {
            "" => write!(f, "{}: expected {}", self.key, self.expected),
            value => write!(f, "{} = {value}: expected {}", self.key, self.expected),
        }
    }
}

/// Why a configuration could not be loaded: one line naming the component,
/// where the mistake is and what is wrong. No variant has a
/// [`source`](std::error::Error::source), as each message already holds its
/// cause.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("{component} configuration in {}: cannot read: {error}", .file.display())]
    Read {
        /// The component ("agent", …).
        component: &'static str,
        /// The file.
        file: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{component} configuration in {}: {message}", .file.display())]
    Syntax {
        /// The component.
        component: &'static str,
        /// The file.
        file: PathBuf,
        /// Line, column, the line itself and what the parser expected.
        message: String,
    },
    /// A value of the wrong type, or a key the component does not have, in
    /// the file or in an environment variable.
    #[error("{component} configuration {origin}: {problem}")]
    Value {
        /// The component.
        component: &'static str,
        /// "in FILE: line L, column C" or "from environment variable NAME".
        origin: String,
        /// The key, the value and the type expected (boxed to keep
        /// `Result<_, ConfigError>` small).
        problem: Box<Invalid>,
    },
    /// Values parsed but some are out of range.
    #[error("{component} configuration{}: {}", origin(.file), list(.problems))]
    Invalid {
        /// The component.
        component: &'static str,
        /// The file, if one was given.
        file: Option<PathBuf>,
        /// Every problem found, not just the first.
        problems: Vec<Invalid>,
    },
}

fn origin(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!(" in {}", f.display()))
        .unwrap_or_default()
}

fn list(problems: &[Invalid]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// "line L, column C" where `at` (a byte offset) is in `text`, the column
/// in characters; and that line, trimmed.
fn line_column(text: &str, mut at: usize) -> (String, &str) {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[start..at].chars().count() + 1;
    (format!("line {line}, column {column}"), text[start..end].trim())
}

/// A TOML syntax error on one line: "line 2, column 7: `foo bar = 1`: key
/// with no value, expected `=`".
pub(crate) fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    match error.span().map(|span| line_column(text, span.start)) {
        Some((at, "")) => format!("{at}: {message}"),
        Some((at, line)) => format!("{at}: `{line}`: {message}"),
        None => message,
    }
}

/// Deserializes `text` as `C` with `toml`, which converts nothing: `None` if
/// it fits, else the first unknown key or value of the wrong type, with where
/// in `text` it starts.
fn wrong_type<C: DeserializeOwned>(text: &str) -> Result<Option<(Invalid, Option<usize>)>, toml::de::Error> {
    let Err(error) = serde_path_to_error::deserialize::<_, C>(toml::Deserializer::parse(text)?) else {
        return Ok(None);
    };
    // The value as TOML writes it, found by its path (which for an unknown
    // key ends with that key).
    let root = toml::Value::Table(text.parse().unwrap_or_default());
    let value = error.path().iter().try_fold(&root, |value, segment| match segment {
        Segment::Seq { index } => value.get(index),
        Segment::Map { key } => value.get(key.as_str()),
        Segment::Enum { .. } | Segment::Unknown => None,
    });
    let value = value.map(ToString::to_string).unwrap_or_default();
    let problem = Invalid::new(error.path().to_string(), value, describe(error.inner().message()).1);
    Ok(Some((problem, error.inner().span().map(|span| span.start))))
}

/// What a deserializer's message (`toml`'s or the `config` crate's) says is
/// expected, in the documentation's words; and the key, if the message is
/// about a key the component does not have.
fn describe(message: &str) -> (Option<String>, String) {
    let expected = message.rsplit_once("expected ").map_or(message, |m| m.1);
    if let Some((name, _)) = message.strip_prefix("unknown field `").and_then(|m| m.split_once('`')) {
        let keys = expected
            .trim_start_matches("one of ")
            .replace(" or ", ", ")
            .replace('`', "");
        return (Some(name.to_string()), format!("one of the keys {keys}"));
    }
    let expected = match expected {
        "u8" => format!("an integer from 0 to {}", u8::MAX),
        "u16" => format!("an integer from 0 to {}", u16::MAX),
        "u32" => format!("an integer from 0 to {}", u32::MAX),
        "u64" | "usize" => "an integer, 0 or more".to_string(),
        "f64" | "a floating point" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "path string" => "a path (a string)".to_string(),
        "socket address" | "invalid socket address syntax" => {
            "an address and port such as \"127.0.0.1:4433\" or \"[::1]:4433\"".to_string()
        }
        "a sequence" => "an array".to_string(),
        "wanted string or table" => "a string".to_string(),
        e if e.starts_with("struct ") || e == "a map" => "a table".to_string(),
        e => e.replace('`', "\""),
    };
    (None, expected)
}

/// An environment override, `FLOWMESH_SAMPLER_AGGREGATE__WINDOW_SECS=5`: the
/// key it sets as the `config` crate names it (`aggregate.window_secs`), the
/// variable, and its text — for a list key, its comma-separated items.
type Override = (String, String, toml::Value);

/// What the `config` crate refused, the file having passed [`wrong_type`]:
/// an environment variable, found by the key in the error. Its text is
/// described as `toml` sees it at that key: as a string or a list of strings.
fn env_error<C: DeserializeOwned>(env: &[Override], error: &config::ConfigError) -> (String, Invalid) {
    let key = match error {
        config::ConfigError::Type { key: Some(key), .. } | config::ConfigError::At { key: Some(key), .. } => key,
        _ => "",
    };
    let (unknown, expected) = describe(&error.to_string());
    let key = match (key, unknown) {
        ("", Some(name)) => name,
        (key, Some(name)) => format!("{key}.{name}"),
        (key, None) => key.to_string(),
    };
    // `ingest.listen[1]` is an item of `ingest.listen`; a variable may set a
    // key below the one refused (`DATABASE__PATH` for `database`).
    let list = key.split_once('[').map_or(key.as_str(), |(list, _)| list);
    let below = format!("{list}.");
    let Some((set, variable, value)) = env.iter().find(|(set, ..)| set == list || set.starts_with(&below)) else {
        return (String::from("from the environment"), Invalid::new(key, "", expected));
    };
    let origin = format!("from environment variable {variable}");
    match wrong_type::<C>(&format!("{set} = {value}")) {
        Ok(Some((problem, _))) => (origin, problem),
        _ => (origin, Invalid::new(key, value, expected)),
    }
}

/// A daemon's or CLI's configuration.
pub trait Component: Serialize + DeserializeOwned + Default {
    /// Short name, used in messages and the environment prefix.
    const NAME: &'static str;

    /// Environment variable prefix: `FLOWMESH_AGENT` makes
    /// `FLOWMESH_AGENT_UPLINK__FLUSH_MS=100` set `uplink.flush_ms`. Nested keys
    /// are joined by a double underscore, since keys contain single ones.
    const ENV_PREFIX: &'static str;

    /// Keys whose environment values are comma-separated lists, besides
    /// every key whose default value is an array (which is one too).
    const LIST_KEYS: &'static [&'static str] = &[];

    /// Checks ranges and cross-field rules; returns every problem found.
    fn validate(&self) -> Vec<Invalid>;

    /// Loads the configuration: defaults, then `file` (if given), then
    /// environment overrides, then validation. A value of the wrong type is
    /// refused with its key, its value and the type expected.
    fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// [`Component::load`] with the environment given explicitly (for tests).
    fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let value_error = |origin, problem| ConfigError::Value {
            component: Self::NAME,
            origin,
            problem: Box::new(problem),
        };
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
                component: Self::NAME,
                file: file.to_path_buf(),
                error,
            })?;
            let syntax = |e| ConfigError::Syntax {
                component: Self::NAME,
                file: file.to_path_buf(),
                message: syntax_message(&text, &e),
            };
            if let Some((problem, at)) = wrong_type::<Self>(&text).map_err(syntax)? {
                let at = at
                    .map(|at| format!(": {}", line_column(&text, at).0))
                    .unwrap_or_default();
                return Err(value_error(format!("in {}{at}", file.display()), problem));
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // Lists are comma-separated: the keys of LIST_KEYS, and every key
        // whose default value is an array.
        let defaults = toml::Value::Table(Self::default_toml().parse().unwrap_or_default());
        let prefix = format!("{}_", Self::ENV_PREFIX).to_lowercase();
        let env: Vec<Override> = env
            .into_iter()
            .filter_map(|(variable, text)| {
                let key = variable.to_lowercase().strip_prefix(&prefix)?.replace("__", ".");
                let default = key.split('.').try_fold(&defaults, |value, key| value.get(key));
                let value = if Self::LIST_KEYS.contains(&key.as_str()) || default.is_some_and(toml::Value::is_array) {
                    text.split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .collect::<Vec<_>>()
                        .into()
                } else {
                    text.into()
                };
                Some((key, variable, value))
            })
            .collect();
        let config_error = |e| {
            let (origin, problem) = env_error::<Self>(&env, &e);
            value_error(origin, problem)
        };
        for (key, _, value) in &env {
            if let Some(items) = value.as_array() {
                let items: Vec<&str> = items.iter().filter_map(toml::Value::as_str).collect();
                builder = builder.set_override(key, items).map_err(config_error)?;
            }
        }
        let texts = env
            .iter()
            .filter_map(|(_, variable, text)| Some((variable.clone(), text.as_str()?.to_string())));
        // Text is read as the key's type (without `try_parsing`, which would
        // round "2.7" for an integer key).
        let environment = config::Environment::with_prefix(Self::ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .source(Some(texts.collect()));
        let config: Self = builder
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(config_error)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                component: Self::NAME,
                file: file.map(Path::to_path_buf),
                problems,
            })
        }
    }

    /// The default configuration as a TOML file.
    fn default_toml() -> String {
        toml::to_string_pretty(&Self::default())
            .unwrap_or_else(|e| unreachable!("configuration structs serialize to TOML: {e}"))
    }
}

/// The flags every flowmesh binary takes for its configuration; flatten it
/// into the binary's clap arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Without it, defaults and FLOWMESH_…
    /// environment overrides apply.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

impl ConfigArgs {
    /// Loads `C`, or — with `--print-default-config` — prints its defaults to
    /// stdout and returns `None`, after which the binary exits.
    pub fn load_or_print<C: Component>(&self) -> Result<Option<C>, ConfigError> {
        if self.print_default_config {
            print!("{}", C::default_toml());
            return Ok(None);
        }
        C::load(self.config.as_deref()).map(Some)
    }
}

/// Where a daemon serves Prometheus metrics and its health endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsEndpoint {
    /// Listen address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
}

/// Certificate files for mutual TLS over QUIC (PEM).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate that signs the peer's certificate.
    pub ca: PathBuf,
    /// This process's certificate chain.
    pub cert: PathBuf,
    /// This process's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The default file locations under `/etc/flowmesh/tls/` for `name`.
    pub(crate) fn under_etc(name: &str) -> Self {
        let dir = Path::new("/etc/flowmesh/tls");
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// Collects range problems for one component.
#[derive(Default)]
pub(crate) struct Checks(pub(crate) Vec<Invalid>);

impl Checks {
    /// `value` must lie in `range`.
    pub(crate) fn range<T>(&mut self, key: &str, value: T, range: std::ops::RangeInclusive<T>, unit: &str)
    where
        T: PartialOrd + fmt::Display + Copy,
    {
        if !range.contains(&value) {
            let expected = format!("{unit} from {} to {}", range.start(), range.end());
            self.0.push(Invalid::new(key, value, expected));
        }
    }

    /// `ok` must hold; otherwise report `value` against `expected`.
    pub(crate) fn check(&mut self, ok: bool, key: &str, value: impl fmt::Display, expected: &str) {
        if !ok {
            self.0.push(Invalid::new(key, value, expected));
        }
    }

    /// A path that must not be empty.
    pub(crate) fn path(&mut self, key: &str, path: &Path) {
        self.check(!path.as_os_str().is_empty(), key, "\"\"", "a file path");
    }
}

/// How far back a command looks: "30s", "15m", "6h", "7d", or "all" (no
/// limit), as given on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since(pub Option<std::time::Duration>);

impl Since {
    /// Parses the command-line form; the error says what was expected.
    pub fn parse(text: &str) -> Result<Since, String> {
        if text == "all" {
            return Ok(Since(None));
        }
        let expected = || format!("{text:?}: expected a number with s, m, h or d (e.g. 30m, 6h, 7d), or \"all\"");
        let split = text.len().checked_sub(1).ok_or_else(expected)?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| expected())?;
        let seconds = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3_600,
            "d" => n * 86_400,
            _ => return Err(expected()),
        };
        Ok(Since(Some(std::time::Duration::from_secs(seconds))))
    }

    /// The start of the range ending at `now_ns` (0 for "all").
    pub fn start_ns(&self, now_ns: u64) -> u64 {
        self.0.map_or(0, |d| {
            now_ns.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        })
    }
}
