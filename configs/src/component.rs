//! Loading a component's configuration: file, environment, validation; the
//! command-line flags every binary shares; pieces several components use.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One configuration value out of range: the key, the value and the form
/// expected.
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
        write!(f, "{} = {}: expected {}", self.key, self.value, self.expected)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable, is not TOML, has an unknown key, or a
    /// value of the wrong type (in the file or an environment override).
    #[error("{component} configuration{}: {source}", origin(.file))]
    Load {
        /// The component ("agent", …).
        component: &'static str,
        /// The file, if one was given.
        file: Option<PathBuf>,
        /// The underlying error; it names the key.
        source: Box<config::ConfigError>,
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

/// A daemon's or CLI's configuration.
pub trait Component: Serialize + DeserializeOwned + Default {
    /// Short name, used in messages and the environment prefix.
    const NAME: &'static str;

    /// Environment variable prefix: `FLOWMESH_AGENT` makes
    /// `FLOWMESH_AGENT_UPLINK__FLUSH_MS=100` set `uplink.flush_ms`. Nested keys
    /// are joined by a double underscore, since keys contain single ones.
    const ENV_PREFIX: &'static str;

    /// Keys whose environment values are comma-separated lists.
    const LIST_KEYS: &'static [&'static str] = &[];

    /// Checks ranges and cross-field rules; returns every problem found.
    fn validate(&self) -> Vec<Invalid>;

    /// Loads the configuration: defaults, then `file` (if given), then
    /// environment overrides, then validation.
    fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// [`Component::load`] with the environment given explicitly (for tests).
    fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let load_error = |source| ConfigError::Load {
            component: Self::NAME,
            file: file.map(Path::to_path_buf),
            source: Box::new(source),
        };
        let env: config::Map<String, String> = env.into_iter().collect();
        let mut environment = config::Environment::with_prefix(Self::ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(env));
        if !Self::LIST_KEYS.is_empty() {
            environment = environment.list_separator(",");
            for key in Self::LIST_KEYS {
                environment = environment.with_list_parse_key(key);
            }
        }
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml).required(true));
        }
        let config: Self = builder
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(load_error)?;
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
