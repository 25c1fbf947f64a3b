//! The typed rows a [`Reader`](crate::Reader) returns, and what a
//! [`BatchWriter`](crate::BatchWriter) reports for each batch. Plain values,
//! the same whichever backend stored them.

use wire_format::{BatchId, Flow, Probe};

/// What storing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The batch was written and is durable.
    New,
    /// A batch with this id was already stored; nothing was written.
    Duplicate,
}

/// A window that batches arrived for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowInfo {
    /// Window start, ns since the Unix epoch.
    pub start_ns: u64,
    /// Window length, ns (the largest any batch of the window gave).
    pub len_ns: u64,
    /// Path rows stored for it, before merging (for progress and for
    /// deciding whether parallel reading pays).
    pub rows: u64,
}

/// One directed path in one window, all DSCP classes, probe transports and
/// batch parts merged.
#[derive(Debug, Clone, PartialEq)]
pub struct PathWindow {
    /// Window start, ns since the Unix epoch.
    pub window_ns: u64,
    /// Window length, ns.
    pub window_len_ns: u64,
    /// Source node (the reporting agent).
    pub src: u32,
    /// Destination node; 0 for addresses outside the topology.
    pub dst: u32,
    /// Probes with a known outcome.
    pub probes_sent: u64,
    /// Probes that timed out.
    pub probes_lost: u64,
    /// Probes that ended in an error.
    pub probes_failed: u64,
    /// 99th percentile network RTT, ns ([`wire_format::tail_quantile`] of
    /// the merged histogram when every row carried one, else the largest of
    /// the rows' p99s).
    pub rtt_p99_ns: u64,
    /// 99th percentile responder delay, ns (the largest of the merged rows:
    /// responder delays carry no histogram).
    pub responder_delay_p99_ns: u64,
    /// TCP segments sent by the path's flows.
    pub segs_out: u64,
    /// Of those, retransmitted.
    pub retrans_segs: u64,
    /// Flows that retransmitted (each counted in the window of its first
    /// retransmission).
    pub flows_with_retrans: u64,
}

impl PathWindow {
    /// Probe loss rate (lost + failed over sent), if any probe was sent.
    pub fn loss_rate(&self) -> Option<f64> {
        (self.probes_sent > 0).then(|| (self.probes_lost + self.probes_failed) as f64 / self.probes_sent as f64)
    }

    /// TCP retransmission rate, if any segment was sent.
    pub fn retrans_rate(&self) -> Option<f64> {
        (self.segs_out > 0).then(|| self.retrans_segs as f64 / self.segs_out as f64)
    }

    /// Probes answered.
    pub fn probes_answered(&self) -> u64 {
        self.probes_sent.saturating_sub(self.probes_lost + self.probes_failed)
    }
}

/// One agent's telemetry completeness in one window, all batch parts
/// merged.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentWindow {
    /// Window start, ns.
    pub window_ns: u64,
    /// The agent's node.
    pub node: u32,
    /// Datagrams its sequence numbers say were sent.
    pub expected: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// Nothing arrived from it in the window.
    pub silent: bool,
    /// It restarted in the window.
    pub restarted: bool,
}

/// One stored batch: its header and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// The batch's id.
    pub batch_id: BatchId,
    /// The sampler that sent it.
    pub sampler_id: u32,
    /// The rack it describes.
    pub rack_id: u32,
    /// Window start, ns.
    pub window_start_ns: u64,
    /// Window length, ns.
    pub window_len_ns: u64,
    /// When the sampler built it, ns (sampler clock).
    pub created_ns: u64,
    /// When the collector first received it, ns (collector clock).
    pub received_ns: u64,
    /// Path summaries it carried.
    pub path_count: u32,
    /// Agent completeness entries it carried.
    pub completeness_count: u32,
    /// Sampled flow records it carried.
    pub flow_sample_count: u32,
    /// Sampled probe records it carried.
    pub probe_sample_count: u32,
    /// Datagrams the sampler dropped as malformed in the window.
    pub malformed_datagrams: u32,
    /// Records the sampler could not aggregate (bounds reached).
    pub records_over_capacity: u32,
    /// Batches the sampler's spool dropped before this one.
    pub spool_dropped_batches: u32,
}

/// A sampled flow record as stored, with its sampling metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledFlowRow {
    /// The batch that carried it.
    pub batch_id: BatchId,
    /// Window start, ns.
    pub window_start_ns: u64,
    /// The reporting node.
    pub node_id: u32,
    /// How many records it stands for.
    pub weight: u32,
    /// Why it was kept (`wire_format::anomaly` bits; 0 = sampled).
    pub anomalies: u8,
    /// The record.
    pub flow: Flow,
}

/// A sampled probe record as stored, with its sampling metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledProbeRow {
    /// The batch that carried it.
    pub batch_id: BatchId,
    /// Window start, ns.
    pub window_start_ns: u64,
    /// The requesting node.
    pub node_id: u32,
    /// How many records it stands for.
    pub weight: u32,
    /// Why it was kept (`wire_format::anomaly` bits; 0 = sampled).
    pub anomalies: u8,
    /// The record.
    pub probe: Probe,
}

/// Rows stored, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Batches.
    pub batches: u64,
    /// Path windows (before merging).
    pub path_windows: u64,
    /// Agent windows (before merging).
    pub agent_windows: u64,
    /// Sampled flow records.
    pub sampled_flows: u64,
    /// Sampled probe records.
    pub sampled_probes: u64,
}

impl RowCounts {
    /// Every row of every kind.
    pub fn total(&self) -> u64 {
        self.batches + self.path_windows + self.agent_windows + self.sampled_flows + self.sampled_probes
    }
}
