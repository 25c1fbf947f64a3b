//! flowmesh's ClickHouse backend: the collector's batches written through
//! `Distributed` tables over the shards of a named cluster, and every reader
//! (analyzer, query CLI, benchmarks) reading them back exactly once — behind
//! the same [`BatchWriter`] and [`Reader`] traits as the embedded SQLite
//! store, so nothing above knows which backend it has.
//!
//! # How it keeps the storage contract
//!
//! - **Durable before acknowledged.** Inserts run with
//!   `insert_distributed_sync = 1`: the Distributed table returns only when
//!   every shard the rows go to has written them, so `store_batches`
//!   returning `Ok` means the rows are on their shards, and the collector
//!   acknowledges only then. A shard that is down fails the insert; the
//!   collector acknowledges nothing, and the sampler keeps the batches in its
//!   spool and sends them again.
//! - **Exactly once.** A batch is looked up before it is written (a batch
//!   already there is [`Stored::Duplicate`], as with SQLite) and its `batches`
//!   row is inserted after all its rows, so a found batch is a complete one.
//!   Two collectors given the same batch at once (a failover) can both find
//!   it missing and both insert it; the copies have equal sorting keys on the
//!   same shard, and every read collapses them (`FINAL`), so readers count it
//!   once either way. docs/schema.md gives the reasoning.
//! - **Work where the rows are.** A window's rows of one path are summed on
//!   the shards (`GROUP BY`); only paths with several probe rows bring their
//!   histograms back, to be merged exactly as SQLite's reader does.
//!
//! The client is the official `clickhouse` crate over HTTP with RowBinary,
//! with validation off (ClickHouse 18.16 refuses the setting it sends).
//! It is async; each store runs its own single-threaded runtime and blocks on
//! it, because the traits are synchronous (the collector's writer has a
//! thread of its own; readers run on the analyzer's threads).

pub mod cluster;
mod query;
mod read;
pub mod schema;
mod write;

use std::time::Duration;

use collector_storage::{
    AgentWindow, Answer, BatchRow, BatchWriter, PathWindow, Question, Reader, RowCounts, SampledFlowRow,
    SampledProbeRow, StoreError, Stored, WindowInfo,
};
use wire_format::BatchView;

/// Where the cluster is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// HTTP URL of the server writes and reads go to (any server of the
    /// cluster: each has the Distributed tables), e.g.
    /// `http://clickhouse-0:8123`.
    pub url: String,
    /// The database holding flowmesh's tables.
    pub database: String,
    /// The cluster (a `remote_servers` entry of the servers' configuration)
    /// whose shards the Distributed tables span.
    pub cluster: String,
    /// User name; `None` = ClickHouse's `default`.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// HTTP URL of every shard's server, for what must run on each shard
    /// (creating the schema, retention). Empty: the cluster has one shard,
    /// at `url`.
    pub shard_urls: Vec<String>,
    /// Longest any request may take before it fails.
    pub timeout: Duration,
    /// Inserts the collector keeps in flight at once (its writer threads):
    /// each waits for the shards' answer, so several overlap the round
    /// trips.
    pub concurrent_inserts: usize,
}

impl Options {
    /// Options for `url` with flowmesh's defaults: database `default`,
    /// cluster `flowmesh`, one shard, a 60 s timeout, one insert at a time
    /// (on one 2-core machine that also runs the servers, more concurrent
    /// inserts only competed for the cores: 0.50× against 0.42× the SQLite
    /// path with two, `flowmesh-bench collector-ingest`).
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            database: "default".to_string(),
            cluster: "flowmesh".to_string(),
            user: None,
            password: None,
            shard_urls: Vec::new(),
            timeout: Duration::from_secs(60),
            concurrent_inserts: 1,
        }
    }

    /// The options a component's `[storage.clickhouse]` section gives.
    pub fn from_config(config: &configs::ClickHouseStorage) -> Options {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Options {
            url: config.url.clone(),
            database: config.database.clone(),
            cluster: config.cluster.clone(),
            user: text(&config.user),
            password: text(&config.password),
            shard_urls: config.shard_urls.clone(),
            timeout: Duration::from_secs(config.timeout_secs),
            concurrent_inserts: config.concurrent_inserts,
        }
    }

    fn shards(&self) -> Vec<&str> {
        if self.shard_urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.shard_urls.iter().map(String::as_str).collect()
        }
    }
}

/// The ClickHouse store: a client and the runtime it runs on.
pub struct ClickHouseStore {
    options: Options,
    client: clickhouse::Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("options", &self.options)
            .finish()
    }
}

/// A ClickHouse failure as a [`StoreError`], on one line: the server's
/// message without its exception class and stack.
pub(crate) fn error(context: &str, e: impl std::fmt::Display) -> StoreError {
    let text = e.to_string();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let line = line.split(", e.what()").next().unwrap_or(line);
    StoreError::Backend {
        backend: "clickhouse",
        message: format!("{context}: {line}"),
    }
}

fn client(options: &Options, url: &str) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(url)
        .with_database(&options.database)
        .with_validation(false)
        // Acknowledged only when on the shards (see the crate docs).
        .with_setting("insert_distributed_sync", "1");
    if let Some(user) = &options.user {
        client = client.with_user(user);
    }
    if let Some(password) = &options.password {
        client = client.with_password(password);
    }
    client
}

impl ClickHouseStore {
    fn with_client(options: Options) -> Result<ClickHouseStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| error("starting the ClickHouse client's runtime", e))?;
        Ok(ClickHouseStore {
            client: client(&options, &options.url),
            options,
            runtime,
        })
    }

    /// Opens the store for writing: creates the schema on every shard where
    /// it is missing (idempotent; safe for several collectors at once) and
    /// refuses a schema newer than this build's.
    pub fn open(options: Options) -> Result<ClickHouseStore, StoreError> {
        let store = ClickHouseStore::with_client(options)?;
        for url in store.options.shards() {
            // The database may not exist yet: create it from `default`.
            let server = client(
                &Options {
                    database: "default".to_string(),
                    ..store.options.clone()
                },
                url,
            );
            store.run(
                &format!("creating database {} on {url}", store.options.database),
                server
                    .query(&format!("CREATE DATABASE IF NOT EXISTS {}", store.options.database))
                    .execute(),
            )?;
            let shard = client(&store.options, url);
            for statement in schema::create_statements(&store.options.database, &store.options.cluster) {
                store.run(
                    &format!("creating the schema on {url}"),
                    shard.query(&statement).execute(),
                )?;
            }
            let found = store.schema_version_at(&shard, url)?;
            match found {
                None => store.run(
                    &format!("recording the schema version on {url}"),
                    shard
                        .query("INSERT INTO flowmesh_schema (version) VALUES (?)")
                        .bind(schema::SCHEMA_VERSION)
                        .execute(),
                )?,
                Some(v) if v > schema::SCHEMA_VERSION => return Err(store.newer(url, v)),
                Some(_) => {}
            }
        }
        Ok(store)
    }

    /// Opens the store for reading: checks that the schema exists at `url`
    /// and is one this build reads.
    pub fn open_read_only(options: Options) -> Result<ClickHouseStore, StoreError> {
        let store = ClickHouseStore::with_client(options)?;
        let url = store.options.url.clone();
        match store.schema_version_at(&store.client, &url)? {
            Some(v) if v == schema::SCHEMA_VERSION => Ok(store),
            Some(v) if v > schema::SCHEMA_VERSION => Err(store.newer(&url, v)),
            found => Err(StoreError::Backend {
                backend: "clickhouse",
                message: format!(
                    "{url} database {} has {}; start flowmesh-collector with storage.backend = \"clickhouse\" \
                     once to create or migrate it",
                    store.options.database,
                    found.map_or("no flowmesh schema".to_string(), |v| format!(
                        "flowmesh schema version {v}"
                    )),
                ),
            }),
        }
    }

    /// Bytes on disk of each flowmesh table, summed over the shards (the
    /// active parts of `<table>_local` on every server of `shard_urls`),
    /// in [`schema::TABLES`] order.
    pub fn bytes_on_disk(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut sizes: Vec<(&'static str, u64)> = schema::TABLES.iter().map(|t| (*t, 0)).collect();
        for url in self.options.shards() {
            let shard = client(&self.options, url);
            let rows: Vec<(String, u64)> = self.run(
                &format!("reading table sizes on {url}"),
                shard
                    .query(
                        "SELECT table, sum(bytes_on_disk) FROM system.parts
                         WHERE database = ? AND active GROUP BY table",
                    )
                    .bind(&self.options.database)
                    .fetch_all(),
            )?;
            for (table, bytes) in rows {
                if let Some(entry) = sizes.iter_mut().find(|(t, _)| table.strip_suffix("_local") == Some(*t)) {
                    entry.1 += bytes;
                }
            }
        }
        Ok(sizes)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    fn newer(&self, url: &str, found: u32) -> StoreError {
        StoreError::Backend {
            backend: "clickhouse",
            message: format!(
                "{url} database {} has flowmesh schema version {found}, newer than this build's {}; \
                 run a flowmesh at least as new as the one that wrote it",
                self.options.database,
                schema::SCHEMA_VERSION
            ),
        }
    }

    /// The schema version recorded at one server, `None` when there is none.
    fn schema_version_at(&self, client: &clickhouse::Client, url: &str) -> Result<Option<u32>, StoreError> {
        let exists: u8 = self.run(
            &format!("reading the schema version at {url}"),
            client
                .query("SELECT count() > 0 FROM system.tables WHERE database = ? AND name = 'flowmesh_schema'")
                .bind(&self.options.database)
                .fetch_one(),
        )?;
        if exists == 0 {
            return Ok(None);
        }
        let versions: Vec<u32> = self.run(
            &format!("reading the schema version at {url}"),
            client.query("SELECT version FROM flowmesh_schema").fetch_all(),
        )?;
        Ok(versions.into_iter().max())
    }

    /// Runs one request to completion within the timeout.
    pub(crate) fn run<T, E: std::fmt::Display>(
        &self,
        context: &str,
        request: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        // The timer needs the runtime's context, so it is made inside it.
        let timeout = self.options.timeout;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, request).await })
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error(context, e)),
            Err(_) => Err(error(
                context,
                format!("no answer from {} in {:?}", self.options.url, self.options.timeout),
            )),
        }
    }
}

impl BatchWriter for ClickHouseStore {
    fn store_batches(&mut self, batches: &[BatchView<'_>], received_ns: u64) -> Result<Vec<Stored>, StoreError> {
        write::store_batches(self, batches, received_ns)
    }

    fn upsert_rack(&mut self, rack_id: u32, name: &str) -> Result<(), StoreError> {
        write::upsert_rack(self, rack_id, name)
    }

    fn upsert_node(&mut self, node_id: u32, name: &str, rack_id: u32) -> Result<(), StoreError> {
        write::upsert_node(self, node_id, name, rack_id)
    }

    fn prune(&mut self, cutoff_ns: u64, max_batches: usize) -> Result<usize, StoreError> {
        write::prune(self, cutoff_ns, max_batches)
    }

    fn concurrent(&self) -> Result<Vec<Box<dyn BatchWriter>>, StoreError> {
        (1..self.options.concurrent_inserts)
            .map(|_| Ok(Box::new(ClickHouseStore::with_client(self.options.clone())?) as Box<dyn BatchWriter>))
            .collect()
    }
}

impl Reader for ClickHouseStore {
    fn windows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<WindowInfo>, StoreError> {
        read::windows(self, from_ns, to_ns)
    }

    fn path_windows(&self, window: &WindowInfo, progress: &dyn Fn(u64)) -> Result<Vec<PathWindow>, StoreError> {
        read::path_windows(self, window, progress)
    }

    fn agent_windows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<AgentWindow>, StoreError> {
        read::agent_windows(self, from_ns, to_ns)
    }

    fn history_start(&self, from_ns: u64, windows: u32) -> Result<u64, StoreError> {
        read::history_start(self, from_ns, windows)
    }

    fn batches(&self, from_ns: u64, to_ns: u64) -> Result<Vec<BatchRow>, StoreError> {
        read::batches(self, from_ns, to_ns)
    }

    fn sampled_flows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<SampledFlowRow>, StoreError> {
        read::sampled_flows(self, from_ns, to_ns)
    }

    fn sampled_probes(&self, from_ns: u64, to_ns: u64) -> Result<Vec<SampledProbeRow>, StoreError> {
        read::sampled_probes(self, from_ns, to_ns)
    }

    fn row_counts(&self) -> Result<RowCounts, StoreError> {
        read::row_counts(self)
    }

    fn ask(&self, question: &Question, since_ns: u64, limit: usize) -> Result<Answer, StoreError> {
        query::ask(self, question, since_ns, limit)
    }

    fn another(&self) -> Result<Option<Box<dyn Reader>>, StoreError> {
        Ok(Some(Box::new(ClickHouseStore::with_client(self.options.clone())?)))
    }
}
