//! One open window's state — its paths, its agents' datagram counts, its
//! samples and its window-level counts — and how a skipped window is merged
//! into a later one. The [`Aggregator`](super::Aggregator) decides which
//! window a datagram belongs to; this is what it fills.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;
use wire_format::{AgentCompleteness, FlowRecord, ProbeRecord, completeness_flags};

use super::paths::{PathAgg, PathKey};
use super::sampling::Sampler;

/// One agent's datagrams in a window.
#[derive(Debug, Clone, Default)]
pub(super) struct AgentWindow {
    /// The agent's epoch (latest run) when last heard in the window.
    pub(super) epoch: u32,
    /// Datagrams the sequence numbers say were sent (less what was imputed
    /// to an earlier window's silence), and, after a restart of the
    /// sampler, what the previous process had received into the window.
    pub(super) expected: u32,
    /// Distinct datagrams received.
    pub(super) received: u32,
    /// Duplicates dropped.
    pub(super) duplicate: u32,
    /// Datagrams that arrived after a later one.
    pub(super) reordered: u32,
    /// Records received.
    pub(super) records: u32,
    /// The agent restarted in the window.
    pub(super) restarted: bool,
}

impl AgentWindow {
    fn merge(&mut self, other: &AgentWindow) {
        self.epoch = self.epoch.max(other.epoch);
        self.expected += other.expected;
        self.received += other.received;
        self.duplicate += other.duplicate;
        self.reordered += other.reordered;
        self.records += other.records;
        self.restarted |= other.restarted;
    }
}

/// A window's path aggregates: a small map from each key to its place in a
/// vector. The map (16 bytes a path) stays in the cache where a map holding
/// the aggregates themselves would not, and the aggregates keep the layout
/// [`PathAgg`] chose for them. Looked up for every record, so with FxHash:
/// SipHash cost a quarter of ingest, and its protection against chosen
/// collisions is not worth that here — the keys are node ids, a window holds
/// at most `max_paths` of them, and whoever can send the sampler datagrams
/// can flood its socket anyway.
#[derive(Debug, Default)]
pub(super) struct Paths {
    index: FxHashMap<PathKey, u32>,
    keys: Vec<PathKey>,
    aggs: Vec<PathAgg>,
}

impl Paths {
    /// The paths and their aggregates, in key order.
    pub(super) fn into_sorted(self) -> Vec<(PathKey, PathAgg)> {
        let mut paths: Vec<(PathKey, PathAgg)> = self.keys.into_iter().zip(self.aggs).collect();
        paths.sort_unstable_by_key(|(k, _)| *k);
        paths
    }
}

/// An open window.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Path aggregates, at most `max_paths`.
    pub(super) paths: Paths,
    /// Agents heard in the window.
    pub(super) agents: BTreeMap<u32, AgentWindow>,
    /// Flow record samples.
    pub(super) flows: Sampler<FlowRecord>,
    /// Probe record samples.
    pub(super) probes: Sampler<ProbeRecord>,
    /// Datagrams refused.
    pub(super) malformed: u32,
    /// Records (or merged paths) turned away by `max_paths`.
    pub(super) records_over_capacity: u32,
    /// Records aggregated.
    pub(super) records: u64,
}

impl Window {
    /// The aggregate of path `key`, created if the window holds fewer than
    /// `max_paths` paths; `None` (counted) if it is full.
    pub(super) fn path(&mut self, key: PathKey, max_paths: usize) -> Option<&mut PathAgg> {
        let paths = &mut self.paths;
        let full = paths.keys.len() >= max_paths;
        let at = match paths.index.entry(key) {
            Entry::Occupied(e) => *e.get() as usize,
            Entry::Vacant(_) if full => {
                self.records_over_capacity += 1;
                return None;
            }
            Entry::Vacant(e) => {
                // At most `max_paths` paths (validated ≤ 10⁸): fits a u32.
                e.insert(u32::try_from(paths.aggs.len()).unwrap_or(u32::MAX));
                paths.keys.push(key);
                paths.aggs.push(PathAgg::new(&key));
                paths.aggs.len() - 1
            }
        };
        paths.aggs.get_mut(at)
    }

    /// Adds a skipped window's counts to this one: paths are summed into the
    /// same keys (a path the bound turns away counts once in
    /// `records_over_capacity`), histograms added, samples kept with exact
    /// weights.
    pub(super) fn absorb(&mut self, other: Window, max_paths: usize) {
        self.malformed += other.malformed;
        self.records_over_capacity += other.records_over_capacity;
        self.records += other.records;
        for (key, p) in other.paths.keys.into_iter().zip(other.paths.aggs) {
            if let Some(t) = self.path(key, max_paths) {
                t.merge(p);
            }
        }
        for (node, a) in &other.agents {
            self.agents.entry(*node).or_default().merge(a);
        }
        self.flows.absorb(other.flows);
        self.probes.absorb(other.probes);
    }
}

/// Agent `node`'s completeness record for a window in which it sent
/// `window` (`None`: nothing); `epoch` is its latest run and `last_seen_ns`
/// its latest arrival, from before or during the window; `imputed` is what
/// its cadence says it sent in stretches of the window the sampler could
/// not see (see [`super::cadence`]), expected and not received.
pub(super) fn completeness(
    node: u32,
    window: Option<&AgentWindow>,
    epoch: u32,
    last_seen_ns: u64,
    imputed: u32,
) -> AgentCompleteness {
    let mut c = AgentCompleteness::new(node);
    c.last_seen_ns = last_seen_ns.into();
    match window {
        Some(w) => {
            c.agent_epoch = w.epoch.into();
            c.datagrams_expected = w.expected.saturating_add(imputed).into();
            c.datagrams_received = w.received.into();
            c.datagrams_duplicate = w.duplicate.into();
            c.datagrams_reordered = w.reordered.into();
            c.records = w.records.into();
            if w.restarted {
                c.flags |= completeness_flags::RESTARTED;
            }
            if w.received == 0 {
                c.flags |= completeness_flags::SILENT;
            }
        }
        None => {
            c.agent_epoch = epoch.into();
            c.datagrams_expected = imputed.into();
            c.flags |= completeness_flags::SILENT;
        }
    }
    c
}
