//! `[storage]`: which backend holds the telemetry — the embedded SQLite file
//! (the default, for small fleets and the README's demo) or a ClickHouse
//! cluster (past one machine) — shared by the collector, which writes it,
//! and the analyzer, which reads it.

use serde::{Deserialize, Serialize};

use crate::component::Checks;

/// Where telemetry is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `sqlite`: the file at the top-level `database` key; `clickhouse`: the
    /// cluster in `[storage.clickhouse]`.
    pub backend: Backend,
    /// The ClickHouse cluster, when `backend = "clickhouse"`.
    pub clickhouse: ClickHouseStorage,
}

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file, embedded.
    #[default]
    Sqlite,
    /// A ClickHouse cluster, through Distributed tables.
    Clickhouse,
}

/// How to reach a ClickHouse cluster (docs/schema.md describes its tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseStorage {
    /// HTTP URL of the server to write to and read from (any server of the
    /// cluster), e.g. `http://clickhouse-0:8123`.
    pub url: String,
    /// Database of flowmesh's tables (created if missing).
    pub database: String,
    /// Cluster name (a `remote_servers` entry in the servers' configuration)
    /// the Distributed tables span.
    pub cluster: String,
    /// User; empty: ClickHouse's `default`.
    pub user: String,
    /// Password; prefer the environment
    /// (`FLOWMESH_<COMPONENT>_STORAGE__CLICKHOUSE__PASSWORD`) to a file.
    pub password: String,
    /// HTTP URL of every shard's server, where the collector creates the
    /// schema and drops expired partitions. Empty: one shard, at `url`.
    pub shard_urls: Vec<String>,
    /// Longest a request may take, seconds.
    pub timeout_secs: u64,
    /// Inserts the collector keeps in flight at once (writer threads).
    pub concurrent_inserts: usize,
}

impl Default for ClickHouseStorage {
    fn default() -> Self {
        ClickHouseStorage {
            url: "http://127.0.0.1:8123".to_string(),
            database: "flowmesh".to_string(),
            cluster: "flowmesh".to_string(),
            user: String::new(),
            password: String::new(),
            shard_urls: Vec::new(),
            timeout_secs: 60,
            concurrent_inserts: 1,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::Sqlite,
            clickhouse: ClickHouseStorage::default(),
        }
    }
}

/// A name ClickHouse takes unquoted, which flowmesh puts into statements.
fn identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An `http://host:port` URL (the client speaks plain HTTP; put a TLS
/// proxy in front for `https`).
fn http_url(url: &str) -> bool {
    url.strip_prefix("http://").is_some_and(|rest| {
        let host = rest.trim_end_matches('/');
        !host.is_empty() && !host.contains('/')
    })
}

impl Storage {
    pub(crate) fn check(&self, c: &mut Checks) {
        if self.backend != Backend::Clickhouse {
            return;
        }
        let ch = &self.clickhouse;
        c.check(
            http_url(&ch.url),
            "storage.clickhouse.url",
            format!("{:?}", ch.url),
            "an http://host:port URL",
        );
        for url in &ch.shard_urls {
            c.check(
                http_url(url),
                "storage.clickhouse.shard_urls",
                format!("{url:?}"),
                "http://host:port URLs",
            );
        }
        for (key, name) in [
            ("storage.clickhouse.database", &ch.database),
            ("storage.clickhouse.cluster", &ch.cluster),
        ] {
            c.check(
                identifier(name),
                key,
                format!("{name:?}"),
                "a name of letters, digits and underscores",
            );
        }
        c.range("storage.clickhouse.timeout_secs", ch.timeout_secs, 1..=3_600, "seconds");
        c.range(
            "storage.clickhouse.concurrent_inserts",
            ch.concurrent_inserts,
            1..=64,
            "inserts",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_settings_are_checked_only_when_chosen() {
        let mut storage = Storage::default();
        storage.clickhouse.url = "nonsense".into();
        let mut c = Checks::default();
        storage.check(&mut c);
        assert!(c.0.is_empty());

        storage.backend = Backend::Clickhouse;
        storage.clickhouse.database = "drop table; --".into();
        storage.clickhouse.shard_urls = vec!["http://a:8123".into(), "https://b:8443".into()];
        let mut c = Checks::default();
        storage.check(&mut c);
        let keys: Vec<&str> = c.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "storage.clickhouse.url",
                "storage.clickhouse.shard_urls",
                "storage.clickhouse.database"
            ]
        );
    }

    #[test]
    fn urls_and_names() {
        assert!(http_url("http://clickhouse-0:8123"));
        assert!(http_url("http://127.0.0.1:8123/"));
        assert!(!http_url("https://x:8443"));
        assert!(!http_url("http://x:8123/db"));
        assert!(identifier("flowmesh_2"));
        assert!(!identifier("2x") && !identifier("a-b") && !identifier(""));
    }
}
