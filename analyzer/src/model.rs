//! What the analyzer reads: path windows and agent windows over a time
//! range, from any storage backend through its [`Reader`]. The rows
//! themselves — one
//! [`PathWindow`] per (window, source, destination) with DSCP classes,
//! probe transports and batch parts merged, one [`AgentWindow`] per
//! (window, node) — are defined by the storage library, which also reads a
//! long range window by window in parallel
//! ([`collector_storage::for_each_window`]); detection sees nothing else.

use collector_storage::{Reader, StoreError, load_paths};

pub use collector_storage::{AgentWindow, PathWindow};

/// Everything read for one analysis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    /// Path windows, ordered by (window, src, dst).
    pub paths: Vec<PathWindow>,
    /// Agent windows, ordered by (window, node).
    pub agents: Vec<AgentWindow>,
}

/// Reads windows starting in `[from_ns, to_ns)`.
pub fn load(reader: &dyn Reader, from_ns: u64, to_ns: u64) -> Result<Observations, StoreError> {
    Ok(Observations {
        paths: load_paths(reader, from_ns, to_ns)?,
        agents: reader.agent_windows(from_ns, to_ns)?,
    })
}
