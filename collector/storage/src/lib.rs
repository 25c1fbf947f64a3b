//! flowmesh's storage library: where sampler batches are kept and how every
//! tier reads them back. The collector daemon writes through it; the
//! analyzer, the query CLI and the benchmarks read through it. It owns the
//! schema and its migrations, the idempotent batch write path, the typed
//! readers and the canned queries — no other crate names a table.
//!
//! # Backends are trait objects
//!
//! A backend implements [`BatchWriter`] (the collector's writer thread
//! holds one) and [`Reader`] (everything that reads holds one). Callers take
//! `&mut dyn BatchWriter` or `&dyn Reader` and never learn which backend is
//! behind it: detection code in the analyzer sees [`PathWindow`]s and
//! [`AgentWindow`]s, nothing else.
//!
//! Traits rather than an enum of backends because a backend brings its own
//! client: an enum would make this crate, and so the analyzer and every
//! benchmark, depend on every backend's client library (a server-side
//! engine's HTTP client and its async runtime) whether configured or not,
//! while a trait lets such a backend live in a crate of its own, linked only
//! where it is used. The same traits let one conformance suite run against
//! each backend. The price, one virtual call per batch or per window — never
//! per row — is nothing beside the I/O behind it.
//!
//! Below the traits a backend is free: [`sqlite`] merges a path's rows in
//! Rust ([`PathMerge`]) because that is where SQLite's rows arrive anyway; a
//! server-side engine may merge them in its query and ship one row per path.
//! What a reader returns is fixed: one [`PathWindow`] per (window, source,
//! destination), windows in time order, rows in (source, destination) order.
//!
//! # What lives where
//!
//! - [`rows`]: the typed rows readers return and what a write reports.
//! - [`merge`]: merging a path's rows of one window (DSCP classes, probe
//!   transports, batch parts) into one [`PathWindow`], histogram-exact.
//! - [`read`]: reading a range window by window with parallel readers.
//! - [`query`]: the canned questions and their backend-neutral answers.
//! - [`text`]: stored labels and addresses back into wire values.
//! - [`sqlite`]: the embedded SQLite backend (schema, migrations, writes,
//!   reads, retention).

mod error;
pub mod merge;
pub mod query;
pub mod read;
pub mod rows;
pub mod sqlite;
pub mod text;

pub use error::StoreError;
pub use merge::PathMerge;
pub use query::{Answer, Question, Value};
pub use read::{for_each_window, load_paths};
pub use rows::{AgentWindow, BatchRow, PathWindow, RowCounts, SampledFlowRow, SampledProbeRow, Stored, WindowInfo};
pub use sqlite::SqliteStore;

use wire_format::BatchView;

/// Writes validated batches, each exactly once, and keeps the names of racks
/// and nodes that readers join with.
///
/// A batch whose id is already stored is reported [`Stored::Duplicate`] and
/// nothing of it is written again, so a sampler may replay freely. When a
/// call returns `Ok`, what it stored is durable: the collector acknowledges
/// a batch only after that.
pub trait BatchWriter: Send {
    /// Stores `batches` as one durable unit (one transaction, one sync),
    /// returning what happened to each, in order. On error nothing is
    /// stored and the caller may retry all of them.
    fn store_batches(&mut self, batches: &[BatchView<'_>], received_ns: u64) -> Result<Vec<Stored>, StoreError>;

    /// Stores one batch in its own durable unit.
    fn store_batch(&mut self, batch: &BatchView<'_>, received_ns: u64) -> Result<Stored, StoreError> {
        let outcomes = self.store_batches(std::slice::from_ref(batch), received_ns)?;
        outcomes.first().copied().ok_or(StoreError::Outcomes {
            batches: 1,
            outcomes: 0,
        })
    }

    /// Records a rack's name (or renames it).
    fn upsert_rack(&mut self, rack_id: u32, name: &str) -> Result<(), StoreError>;

    /// Records a node's name and rack.
    fn upsert_node(&mut self, node_id: u32, name: &str, rack_id: u32) -> Result<(), StoreError>;

    /// Further writers of the same store that may commit at the same time
    /// as this one, each from its own thread: a server-side engine takes
    /// concurrent inserts, so the collector overlaps their round trips.
    /// None (the default) for a backend with one writer, as SQLite.
    fn concurrent(&self) -> Result<Vec<Box<dyn BatchWriter>>, StoreError> {
        Ok(Vec::new())
    }

    /// Deletes the oldest batches whose window started before `cutoff_ns`,
    /// with every row they carried, as one unit; returns how many batches.
    /// Whole windows go together: the oldest `max_batches` batches set how
    /// far one call reaches, and other racks' batches of the same windows go
    /// with them. Call repeatedly with a small `max_batches` so the writer is
    /// held briefly each time.
    fn prune(&mut self, cutoff_ns: u64, max_batches: usize) -> Result<usize, StoreError>;
}

/// Reads stored telemetry back as typed rows. Ranges are half-open,
/// `[from_ns, to_ns)`, on window start times (ns since the Unix epoch).
pub trait Reader: Send {
    /// The windows starting in the range that batches arrived for, in time
    /// order, with the path rows each holds (for progress and parallel
    /// reading).
    fn windows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<WindowInfo>, StoreError>;

    /// One window's path windows, merged to one per (source, destination)
    /// and ordered by them; `progress(n)` is told every so many rows read.
    fn path_windows(&self, window: &WindowInfo, progress: &dyn Fn(u64)) -> Result<Vec<PathWindow>, StoreError>;

    /// Agent windows starting in the range, one per (window, node), ordered
    /// by them.
    fn agent_windows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<AgentWindow>, StoreError>;

    /// Where reading must start so that the window at `from_ns` has
    /// `windows` earlier windows before it (for baselines): the start of the
    /// `windows`-th window before `from_ns`, or 0 if there are fewer.
    fn history_start(&self, from_ns: u64, windows: u32) -> Result<u64, StoreError>;

    /// Batches whose window starts in the range, ordered by (window, sampler,
    /// batch id).
    fn batches(&self, from_ns: u64, to_ns: u64) -> Result<Vec<BatchRow>, StoreError>;

    /// Sampled flow records of windows in the range, in stored order within
    /// (window, node).
    fn sampled_flows(&self, from_ns: u64, to_ns: u64) -> Result<Vec<SampledFlowRow>, StoreError>;

    /// Sampled probe records of windows in the range, in stored order within
    /// (window, node).
    fn sampled_probes(&self, from_ns: u64, to_ns: u64) -> Result<Vec<SampledProbeRow>, StoreError>;

    /// How many rows of each kind are stored.
    fn row_counts(&self) -> Result<RowCounts, StoreError>;

    /// Answers a canned question over windows from `since_ns` on, at most
    /// `limit` rows.
    fn ask(&self, question: &Question, since_ns: u64, limit: usize) -> Result<Answer, StoreError>;

    /// Another reader of the same data, independent of this one, for reading
    /// in parallel; `None` when the backend cannot open one (an in-memory
    /// database), and the caller reads serially.
    fn another(&self) -> Result<Option<Box<dyn Reader>>, StoreError>;
}
