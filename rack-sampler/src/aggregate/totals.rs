//! What the aggregator tells its caller about the datagrams it was given:
//! each datagram's outcome ([`Ingested`], [`Refusal`]) and the running
//! totals since the sampler started ([`Totals`], [`AgentTotals`]), which the
//! metrics endpoint exposes. Kept apart from the per-window state because
//! these outlive every window.

use std::collections::BTreeMap;

use wire_format::DropReason;

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It failed wire-format validation.
    Malformed(DropReason),
    /// Its node id is not a node of this sampler's rack.
    ForeignNode(u32),
    /// Its sequence number is too far behind its agent's newest to tell
    /// whether it was already counted (a replay of old datagrams).
    TooOld,
}

impl Refusal {
    /// Every metric label a refusal is counted under.
    pub const LABELS: [&'static str; DropReason::ALL.len() + 2] = {
        let mut labels = [""; DropReason::ALL.len() + 2];
        let mut i = 0;
        while i < DropReason::ALL.len() {
            labels[i] = DropReason::ALL[i].as_str();
            i += 1;
        }
        labels[i] = "foreign_node";
        labels[i + 1] = "sequence_too_old";
        labels
    };

    /// Index of this refusal's label in [`Refusal::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Refusal::Malformed(reason) => usize::from(reason.code()) - 1,
            Refusal::ForeignNode(_) => DropReason::ALL.len(),
            Refusal::TooOld => DropReason::ALL.len() + 1,
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// What became of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Its records were aggregated.
    Accepted {
        /// Records in it.
        records: usize,
    },
    /// Already received: dropped so its records do not count twice.
    Duplicate,
    /// Refused, and counted under the reason.
    Refused(Refusal),
}

/// Running totals since the sampler started, for its metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Datagrams accepted.
    pub datagrams: u64,
    /// Flow records accepted.
    pub flow_records: u64,
    /// Probe records accepted.
    pub probe_records: u64,
    /// Datagrams refused, by [`Refusal::index`].
    pub refused: [u64; Refusal::LABELS.len()],
    /// Duplicate datagrams dropped.
    pub duplicates: u64,
    /// Datagrams counted in the window of their arrival, not of their send
    /// time.
    pub rewindowed: u64,
    /// Records counted in their datagram's window because the window of
    /// their own time was already emitted (or is ahead of the clock).
    pub records_late: u64,
    /// Records not aggregated because a window held `max_paths` paths.
    pub records_over_capacity: u64,
    /// Raw records not kept (or displaced) because a window held
    /// `max_samples`.
    pub samples_over_capacity: u64,
    /// Flow reports whose flow could not be remembered (`max_flows`): their
    /// counters were taken as the window's share.
    pub flows_untracked: u64,
    /// Windows emitted.
    pub windows_emitted: u64,
    /// Windows skipped after the process was stopped for too long.
    pub windows_skipped: u64,
    /// Per agent of the rack.
    pub agents: BTreeMap<u32, AgentTotals>,
}

/// Per-agent running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentTotals {
    /// Datagrams the sequence numbers say were sent.
    pub expected: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// Duplicates dropped.
    pub duplicate: u64,
    /// Datagrams that arrived after a later one.
    pub reordered: u64,
    /// Records received.
    pub records: u64,
    /// Restarts seen (epoch changes).
    pub restarts: u64,
    /// Last arrival, ns since the Unix epoch; 0 if never.
    pub last_seen_ns: u64,
}
