//! What the agent's Prometheus endpoint reports
//! ([`configs_runtime::endpoint`] serves it): flows traced, the kernel
//! side's drops by reason, datagrams and records sent, failed lookups of
//! the samplers' names, probe outcomes.
//! Each family is declared once here, as a `const` [`Family`], and both
//! described and recorded through that declaration.

use std::sync::{Arc, Mutex};

use configs_runtime::endpoint::Endpoint;
use configs_runtime::metric::Family;

use crate::probe::ProbeStats;
use crate::sender::SenderStats;

/// Flows the kernel side reported.
pub const FLOWS: Family = Family::counter("flowmesh_agent_flows_total", "TCP flows the eBPF programs reported.");
/// Flow ends without an establishment.
pub const UNTRACKED_ENDS: Family = Family::counter(
    "flowmesh_agent_untracked_ends_total",
    "TCP flows that ended without the agent having seen them established: flows older than the agent, or whose establishment was lost (counted under flowmesh_agent_kernel_drops_total, reasons establish_ring_full, flows_full, recursion_miss). Not reported.",
);
/// TCP connects by command name.
pub const CONNECTS: Family = Family::counter(
    "flowmesh_agent_connects_total",
    "TCP connects (a socket entering SYN_SENT) by command name (the first 32 names seen; the rest as other).",
);
/// Reports of flows still open.
pub const OPEN_FLOW_REPORTS: Family = Family::counter(
    "flowmesh_agent_open_flow_reports_total",
    "Reports of TCP flows still open (every flows.report_open_secs).",
);
/// Reports of open flows whose retransmissions grew.
pub const RETRANS_FLOW_REPORTS: Family = Family::counter(
    "flowmesh_agent_retrans_flow_reports_total",
    "Reports of TCP flows still open whose retransmission counter grew (within flows.retrans_report_ms of the retransmission).",
);
/// Kernel events lost, by reason.
pub const KERNEL_DROPS: Family = Family::counter(
    "flowmesh_agent_kernel_drops_total",
    "Events the eBPF programs could not deliver, by reason (ring_full: a flow's end; flows_full: the agent's table of open flows; procs_full: the process table; retrans_ring_full: an open flow's retransmission; establish_ring_full: a flow's establishment; recursion_miss: a program run the kernel skipped; invalid_event: an event the agent could not read).",
);
/// Datagrams sent.
pub const DATAGRAMS_SENT: Family =
    Family::counter("flowmesh_agent_datagrams_sent_total", "Datagrams sent to the samplers.");
/// Records sent.
pub const RECORDS_SENT: Family = Family::counter("flowmesh_agent_records_sent_total", "Records sent to the samplers.");
/// Failed sends.
pub const SEND_ERRORS: Family = Family::counter(
    "flowmesh_agent_send_errors_total",
    "Datagram sends that failed, per sampler (to a sampler whose name had not resolved yet included).",
);
/// Failed lookups of the samplers' names.
pub const SAMPLER_LOOKUP_FAILURES: Family = Family::counter(
    "flowmesh_agent_sampler_lookup_failures_total",
    "Lookups of a sampler's name (uplink.sampler, uplink.secondary_sampler or the rack's sampler) that failed: no answer within 5 s, an error, or no address. The agent keeps sending to the address the name had, and tries again after a failed send and every 30 s.",
);
/// Datagrams not sent, by reason.
pub const DATAGRAMS_DROPPED: Family = Family::counter(
    "flowmesh_agent_datagrams_dropped_total",
    "Datagrams not sent, by reason (rate_limit: over uplink.max_datagrams_per_sec).",
);
/// Records in datagrams not sent, by reason.
pub const RECORDS_DROPPED: Family = Family::counter(
    "flowmesh_agent_records_dropped_total",
    "Records in datagrams not sent, by reason.",
);
/// Heartbeats.
pub const HEARTBEATS: Family = Family::counter(
    "flowmesh_agent_heartbeats_total",
    "Empty datagrams sent after a quiet spell.",
);
/// Probes by outcome.
pub const PROBES: Family = Family::counter(
    "flowmesh_agent_probes_total",
    "Probes by outcome (sent, answered, timed_out, late, duplicate, rate_limited).",
);
/// Malformed packets on the probe sockets.
pub const PROBE_PACKETS_MALFORMED: Family = Family::counter(
    "flowmesh_agent_probe_packets_malformed_total",
    "Packets on the probe sockets that were not valid probes.",
);
/// Probe requests answered.
pub const PROBE_REQUESTS_ANSWERED: Family = Family::counter(
    "flowmesh_agent_probe_requests_answered_total",
    "Probe requests this agent answered.",
);

/// Every family the agent exports.
pub const FAMILIES: &[Family] = &[
    FLOWS,
    UNTRACKED_ENDS,
    CONNECTS,
    OPEN_FLOW_REPORTS,
    RETRANS_FLOW_REPORTS,
    KERNEL_DROPS,
    DATAGRAMS_SENT,
    RECORDS_SENT,
    SEND_ERRORS,
    SAMPLER_LOOKUP_FAILURES,
    DATAGRAMS_DROPPED,
    RECORDS_DROPPED,
    HEARTBEATS,
    PROBES,
    PROBE_PACKETS_MALFORMED,
    PROBE_REQUESTS_ANSWERED,
];

/// Labels of [`AgentStats::kernel_drops`], in the eBPF drop counters' order
/// (node-ebpf-common's `drops`).
pub const KERNEL_DROP_REASONS: [&str; KERNEL_DROP_COUNTERS] = [
    "ring_full",
    "flows_full",
    "procs_full",
    "retrans_ring_full",
    "establish_ring_full",
    "recursion_miss",
];
/// The label of [`AgentStats::invalid_events`] beside them: events the
/// programs delivered that the agent could not read (`tracer::InvalidEvent`).
pub const INVALID_EVENT_REASON: &str = "invalid_event";
/// Number of the eBPF programs' drop counters.
const KERNEL_DROP_COUNTERS: usize = node_ebpf_common::drops::COUNT as usize;

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
    /// Reports of flows still open that retransmitted
    /// (`flows.retrans_report_ms`).
    pub retrans_reports: u64,
    /// The kernel side's drops, by [`KERNEL_DROP_REASONS`].
    pub kernel_drops: [u64; KERNEL_DROP_COUNTERS],
    /// Flow ends without an establishment (not drops: see
    /// [`UNTRACKED_ENDS`]).
    pub untracked_ends: u64,
    /// Kernel events refused as invalid (short, or a value the shared
    /// definition does not have), by [`INVALID_EVENT_REASON`].
    pub invalid_events: u64,
    /// TCP connects by command name since start.
    pub connects: std::collections::BTreeMap<String, u64>,
    /// The sender's counters.
    pub sender: SenderStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The agent's endpoint: its counters in `stats` and `probes`, published
/// at each scrape.
pub fn endpoint(stats: Arc<Mutex<AgentStats>>, probes: Arc<Mutex<ProbeStats>>) -> Endpoint {
    let labels = Mutex::new(ConnectLabels::default());
    Endpoint::new(
        "agent",
        FAMILIES,
        Arc::new(move || {
            let s = lock(&stats).clone();
            let p = *lock(&probes);
            FLOWS.absolute(&[], s.flows);
            UNTRACKED_ENDS.absolute(&[], s.untracked_ends);
            OPEN_FLOW_REPORTS.absolute(&[], s.open_reports);
            RETRANS_FLOW_REPORTS.absolute(&[], s.retrans_reports);
            for (comm, count) in lock(&labels).series(&s.connects) {
                CONNECTS.absolute(&[("comm", &comm)], count);
            }
            for (reason, count) in KERNEL_DROP_REASONS.iter().zip(s.kernel_drops) {
                KERNEL_DROPS.absolute(&[("reason", reason)], count);
            }
            KERNEL_DROPS.absolute(&[("reason", INVALID_EVENT_REASON)], s.invalid_events);
            DATAGRAMS_SENT.absolute(&[], s.sender.datagrams);
            RECORDS_SENT.absolute(&[], s.sender.records);
            SEND_ERRORS.absolute(&[], s.sender.send_errors);
            SAMPLER_LOOKUP_FAILURES.absolute(&[], s.sender.lookup_failures);
            DATAGRAMS_DROPPED.absolute(&[("reason", "rate_limit")], s.sender.rate_limited_datagrams);
            RECORDS_DROPPED.absolute(&[("reason", "rate_limit")], s.sender.rate_limited_records);
            HEARTBEATS.absolute(&[], s.sender.heartbeats);
            for (outcome, count) in [
                ("sent", p.sent),
                ("answered", p.answered),
                ("timed_out", p.timed_out),
                ("late", p.late),
                ("duplicate", p.duplicate),
                ("rate_limited", p.rate_limited),
            ] {
                PROBES.absolute(&[("outcome", outcome)], count);
            }
            PROBE_PACKETS_MALFORMED.absolute(&[], p.malformed);
            PROBE_REQUESTS_ANSWERED.absolute(&[], p.responded);
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family shows on the page with its help and type, each series
    /// with the value its counter holds, in a form promtool accepts.
    #[test]
    fn the_page_shows_every_family_as_declared() {
        let stats = AgentStats {
            flows: 11,
            open_reports: 2,
            retrans_reports: 3,
            kernel_drops: [1, 2, 4, 6, 8, 9],
            untracked_ends: 10,
            invalid_events: 5,
            connects: [("curl".to_string(), 7)].into_iter().collect(),
            sender: SenderStats {
                datagrams: 12,
                records: 13,
                send_errors: 14,
                lookup_failures: 18,
                rate_limited_datagrams: 15,
                rate_limited_records: 16,
                heartbeats: 17,
            },
        };
        let probes = ProbeStats {
            sent: 21,
            late: 22,
            malformed: 23,
            responded: 24,
            ..ProbeStats::default()
        };
        let page = endpoint(Arc::new(Mutex::new(stats)), Arc::new(Mutex::new(probes))).render();
        for family in FAMILIES {
            let (name, help) = (family.name(), family.help());
            assert!(page.contains(&format!("# HELP {name} {help}\n")), "{name}:\n{page}");
            assert!(page.contains(&format!("# TYPE {name} counter\n")), "{name}:\n{page}");
        }
        for series in [
            "flowmesh_agent_flows_total 11",
            "flowmesh_agent_open_flow_reports_total 2",
            "flowmesh_agent_retrans_flow_reports_total 3",
            "flowmesh_agent_connects_total{comm=\"curl\"} 7",
            "flowmesh_agent_connects_total{comm=\"other\"} 0",
            "flowmesh_agent_kernel_drops_total{reason=\"ring_full\"} 1",
            "flowmesh_agent_kernel_drops_total{reason=\"flows_full\"} 2",
            "flowmesh_agent_untracked_ends_total 10",
            "flowmesh_agent_kernel_drops_total{reason=\"procs_full\"} 4",
            "flowmesh_agent_kernel_drops_total{reason=\"retrans_ring_full\"} 6",
            "flowmesh_agent_kernel_drops_total{reason=\"establish_ring_full\"} 8",
            "flowmesh_agent_kernel_drops_total{reason=\"recursion_miss\"} 9",
            "flowmesh_agent_kernel_drops_total{reason=\"invalid_event\"} 5",
            "flowmesh_agent_datagrams_sent_total 12",
            "flowmesh_agent_records_sent_total 13",
            "flowmesh_agent_send_errors_total 14",
            "flowmesh_agent_sampler_lookup_failures_total 18",
            "flowmesh_agent_datagrams_dropped_total{reason=\"rate_limit\"} 15",
            "flowmesh_agent_records_dropped_total{reason=\"rate_limit\"} 16",
            "flowmesh_agent_heartbeats_total 17",
            "flowmesh_agent_probes_total{outcome=\"sent\"} 21",
            "flowmesh_agent_probes_total{outcome=\"late\"} 22",
            "flowmesh_agent_probes_total{outcome=\"answered\"} 0",
            "flowmesh_agent_probe_packets_malformed_total 23",
            "flowmesh_agent_probe_requests_answered_total 24",
        ] {
            assert!(page.lines().any(|l| l == series), "{series} missing from\n{page}");
        }
        configs_runtime::promtool::promtool_check(&page).unwrap();
    }

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
