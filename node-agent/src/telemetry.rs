//! What the agent's Prometheus endpoint reports ([`configs::endpoint`]
//! serves it): flows traced, the kernel side's drops by reason, datagrams
//! and records sent, probe outcomes.

use std::sync::{Arc, Mutex};

use configs::endpoint::{Endpoint, prometheus};
use metrics::{counter, describe_counter};

use crate::probe::ProbeStats;
use crate::sender::SenderStats;

/// Labels of [`AgentStats::kernel_drops`], in the eBPF drop counters' order.
pub const KERNEL_DROP_REASONS: [&str; 4] = ["ring_full", "flows_full", "untracked_end", "procs_full"];

/// Most command names with a label of their own on the connect counter;
/// the rest are counted under `other`, so a host running thousands of
/// distinct programs cannot blow up the metric's cardinality.
pub const MAX_COMM_LABELS: usize = 32;

/// Per-process connect counts as labelled series: the first
/// [`MAX_COMM_LABELS`] command names seen keep their own label for the
/// agent's life, later ones add to `other` — so every series only grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectLabels {
    labelled: std::collections::BTreeSet<String>,
}

impl ConnectLabels {
    /// The series for these totals (command name → connects since start).
    pub fn series(&mut self, totals: &std::collections::BTreeMap<String, u64>) -> Vec<(String, u64)> {
        for comm in totals.keys() {
            if self.labelled.len() < MAX_COMM_LABELS && comm != "other" {
                self.labelled.insert(comm.clone());
            }
        }
        let mut other = 0;
        let mut out = Vec::new();
        for (comm, &count) in totals {
            if self.labelled.contains(comm) {
                out.push((comm.clone(), count));
            } else {
                other += count;
            }
        }
        out.push(("other".to_string(), other));
        out
    }
}

/// The agent's counters, updated by its main loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Flows reported by the kernel side.
    pub flows: u64,
    /// Reports of flows still open (`flows.report_open_secs`).
    pub open_reports: u64,
    /// The kernel side's drops, by [`KERNEL_DROP_REASONS`].
    pub kernel_drops: [u64; 4],
    /// TCP connects by command name since start.
    pub connects: std::collections::BTreeMap<String, u64>,
    /// The sender's counters.
    pub sender: SenderStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The agent's endpoint.
pub fn endpoint(stats: Arc<Mutex<AgentStats>>, probes: Arc<Mutex<ProbeStats>>) -> Endpoint {
    let handle = prometheus(&[]);
    for (name, help) in [
        ("flowmesh_agent_flows_total", "TCP flows the eBPF program reported."),
        (
            "flowmesh_agent_connects_total",
            "TCP connect() calls by command name (the first 32 names seen; the rest as other).",
        ),
        (
            "flowmesh_agent_open_flow_reports_total",
            "Reports of TCP flows still open (every flows.report_open_secs).",
        ),
        (
            "flowmesh_agent_kernel_drops_total",
            "Events the eBPF programs could not deliver, by reason (ring buffer full, flow table full, flow ended untracked, process table full).",
        ),
        ("flowmesh_agent_datagrams_sent_total", "Datagrams sent to the samplers."),
        ("flowmesh_agent_records_sent_total", "Records sent to the samplers."),
        (
            "flowmesh_agent_send_errors_total",
            "Datagram sends that failed, per sampler.",
        ),
        (
            "flowmesh_agent_datagrams_dropped_total",
            "Datagrams not sent, by reason (rate_limit: over uplink.max_datagrams_per_sec).",
        ),
        (
            "flowmesh_agent_records_dropped_total",
            "Records in datagrams not sent, by reason.",
        ),
        (
            "flowmesh_agent_heartbeats_total",
            "Empty datagrams sent after a quiet spell.",
        ),
        (
            "flowmesh_agent_probes_total",
            "Probes by outcome (sent, answered, timed_out, late, duplicate, rate_limited).",
        ),
        (
            "flowmesh_agent_probe_packets_malformed_total",
            "Packets on the probe sockets that were not valid probes.",
        ),
        (
            "flowmesh_agent_probe_requests_answered_total",
            "Probe requests this agent answered.",
        ),
    ] {
        describe_counter!(name, help);
    }
    let labels = Mutex::new(ConnectLabels::default());
    Endpoint::new(Arc::new(move || {
        let s = lock(&stats).clone();
        let p = *lock(&probes);
        counter!("flowmesh_agent_flows_total").absolute(s.flows);
        counter!("flowmesh_agent_open_flow_reports_total").absolute(s.open_reports);
        for (comm, count) in lock(&labels).series(&s.connects) {
            counter!("flowmesh_agent_connects_total", "comm" => comm).absolute(count);
        }
        for (reason, count) in KERNEL_DROP_REASONS.iter().zip(s.kernel_drops) {
            counter!("flowmesh_agent_kernel_drops_total", "reason" => *reason).absolute(count);
        }
        counter!("flowmesh_agent_datagrams_sent_total").absolute(s.sender.datagrams);
        counter!("flowmesh_agent_records_sent_total").absolute(s.sender.records);
        counter!("flowmesh_agent_send_errors_total").absolute(s.sender.send_errors);
        counter!("flowmesh_agent_datagrams_dropped_total", "reason" => "rate_limit")
            .absolute(s.sender.rate_limited_datagrams);
        counter!("flowmesh_agent_records_dropped_total", "reason" => "rate_limit")
            .absolute(s.sender.rate_limited_records);
        counter!("flowmesh_agent_heartbeats_total").absolute(s.sender.heartbeats);
        for (outcome, count) in [
            ("sent", p.sent),
            ("answered", p.answered),
            ("timed_out", p.timed_out),
            ("late", p.late),
            ("duplicate", p.duplicate),
            ("rate_limited", p.rate_limited),
        ] {
            counter!("flowmesh_agent_probes_total", "outcome" => outcome).absolute(count);
        }
        counter!("flowmesh_agent_probe_packets_malformed_total").absolute(p.malformed);
        counter!("flowmesh_agent_probe_requests_answered_total").absolute(p.responded);
        handle.render()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_labels_are_bounded_and_every_series_only_grows() {
        let mut labels = ConnectLabels::default();
        let mut totals: std::collections::BTreeMap<String, u64> = (0..40).map(|i| (format!("p{i:02}"), 1)).collect();
        let first = labels.series(&totals);
        assert_eq!(first.len(), MAX_COMM_LABELS + 1);
        assert_eq!(first.last(), Some(&("other".to_string(), 8)));
        // A new name sorting first does not take a label from a name that
        // had one, and "other" does not go down.
        totals.insert("a-new-one".into(), 5);
        *totals.get_mut("p00").unwrap_or(&mut 0) += 1;
        let second = labels.series(&totals);
        assert_eq!(second.len(), MAX_COMM_LABELS + 1);
        assert!(second.contains(&("p00".to_string(), 2)));
        assert_eq!(second.last(), Some(&("other".to_string(), 13)));
    }
}
