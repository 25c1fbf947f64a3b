//! What the agent's Prometheus endpoint reports ([`configs::endpoint`]
//! serves it): flows traced, the kernel side's drops by reason, datagrams
//! and records sent, probe outcomes.

use std::sync::{Arc, Mutex};

use configs::endpoint::{Endpoint, prometheus};
use metrics::{counter, describe_counter};

use crate::probe::ProbeStats;
use crate::sender::SenderStats;

/// Labels of [`AgentStats::kernel_drops`], in the eBPF drop counters' order.
pub const KERNEL_DROP_REASONS: [&str; 3] = ["ring_full", "flows_full", "untracked_end"];

/// The agent's counters, updated by its main loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Flows reported by the kernel side.
    pub flows: u64,
    /// The kernel side's drops, by [`KERNEL_DROP_REASONS`].
    pub kernel_drops: [u64; 3],
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
            "flowmesh_agent_kernel_drops_total",
            "Events the eBPF program could not deliver, by reason (ring buffer full, flow table full, flow ended untracked).",
        ),
        ("flowmesh_agent_datagrams_sent_total", "Datagrams sent to the samplers."),
        ("flowmesh_agent_records_sent_total", "Records sent to the samplers."),
        (
            "flowmesh_agent_send_errors_total",
            "Datagram sends that failed, per sampler.",
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
    Endpoint::new(Arc::new(move || {
        let s = *lock(&stats);
        let p = *lock(&probes);
        counter!("flowmesh_agent_flows_total").absolute(s.flows);
        for (reason, count) in KERNEL_DROP_REASONS.iter().zip(s.kernel_drops) {
            counter!("flowmesh_agent_kernel_drops_total", "reason" => *reason).absolute(count);
        }
        counter!("flowmesh_agent_datagrams_sent_total").absolute(s.sender.datagrams);
        counter!("flowmesh_agent_records_sent_total").absolute(s.sender.records);
        counter!("flowmesh_agent_send_errors_total").absolute(s.sender.send_errors);
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
