//! What the sampler's Prometheus endpoint reports ([`configs::endpoint`]
//! serves it): datagrams and records received, drops by reason, per-agent
//! completeness, bounds reached, spool depth and the uplink's state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use configs::Topology;
use configs::endpoint::{Endpoint, prometheus};
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

use crate::aggregate::{Aggregator, Refusal};
use crate::ingest;
use crate::spool::Spool;
use crate::uplink::{self, FAILURE_KINDS, UplinkStats};

fn describe() {
    for (name, help) in [
        ("flowmesh_sampler_datagrams_received_total", "Agent datagrams accepted."),
        ("flowmesh_sampler_records_received_total", "Records accepted, by kind."),
        (
            "flowmesh_sampler_datagrams_dropped_total",
            "Datagrams refused, by reason (malformed, or from a node not in this rack).",
        ),
        (
            "flowmesh_sampler_datagrams_duplicate_total",
            "Datagrams received again and dropped so records count once.",
        ),
        (
            "flowmesh_sampler_datagrams_rewindowed_total",
            "Datagrams counted in the window of their arrival: late past the grace period, or from a skewed clock.",
        ),
        (
            "flowmesh_sampler_records_over_capacity_total",
            "Records not aggregated because a window held aggregate.max_paths paths.",
        ),
        (
            "flowmesh_sampler_samples_over_capacity_total",
            "Raw records not kept, or displaced, because a window held aggregate.max_samples.",
        ),
        (
            "flowmesh_sampler_flows_untracked_total",
            "Flow reports counted whole because aggregate.max_flows flows were remembered.",
        ),
        (
            "flowmesh_sampler_windows_emitted_total",
            "Aggregation windows emitted as batches.",
        ),
        (
            "flowmesh_sampler_windows_skipped_total",
            "Windows not emitted because the process was stopped for longer than the catch-up limit.",
        ),
        (
            "flowmesh_sampler_agent_datagrams_expected_total",
            "Datagrams an agent's sequence numbers say it sent.",
        ),
        (
            "flowmesh_sampler_agent_datagrams_received_total",
            "Distinct datagrams received from an agent.",
        ),
        (
            "flowmesh_sampler_agent_datagrams_reordered_total",
            "An agent's datagrams that arrived after a later one.",
        ),
        (
            "flowmesh_sampler_agent_restarts_total",
            "Agent restarts seen (epoch changes).",
        ),
        (
            "flowmesh_sampler_spool_dropped_batches_total",
            "Batches the full spool discarded: windows that will never reach the collector.",
        ),
        (
            "flowmesh_sampler_uplink_batches_sent_total",
            "Batches written to the collector.",
        ),
        (
            "flowmesh_sampler_uplink_batches_acked_total",
            "Batches the collector acknowledged, by status.",
        ),
        (
            "flowmesh_sampler_uplink_batches_rejected_total",
            "Batches the collector rejected as invalid (set aside in the spool's rejected/ directory).",
        ),
        ("flowmesh_sampler_uplink_failures_total", "Uplink failures, by kind."),
    ] {
        describe_counter!(name, help);
    }
    describe_gauge!(
        "flowmesh_sampler_agent_last_seen_seconds",
        Unit::Seconds,
        "When a datagram last arrived from an agent, Unix time; 0 if never."
    );
    describe_gauge!(
        "flowmesh_sampler_flows_tracked",
        "Open flows remembered between reports."
    );
    describe_gauge!("flowmesh_sampler_spool_batches", "Batches waiting in the spool.");
    describe_gauge!(
        "flowmesh_sampler_spool_bytes",
        Unit::Bytes,
        "Bytes waiting in the spool."
    );
    describe_gauge!(
        "flowmesh_sampler_uplink_connected",
        "1 while connected to the collector, else 0."
    );
}

/// The sampler's endpoint over its shared state.
pub fn endpoint(
    aggregator: Arc<Mutex<Aggregator>>,
    spool: Arc<Mutex<Spool>>,
    uplink: Arc<UplinkStats>,
    topology: Arc<Topology>,
) -> Endpoint {
    let handle = prometheus(&[]);
    describe();
    Endpoint::new(Arc::new(move || {
        let (totals, tracked) = {
            let a = ingest::lock(&aggregator);
            (a.totals().clone(), a.tracked_flows())
        };
        counter!("flowmesh_sampler_datagrams_received_total").absolute(totals.datagrams);
        counter!("flowmesh_sampler_records_received_total", "kind" => "flow").absolute(totals.flow_records);
        counter!("flowmesh_sampler_records_received_total", "kind" => "probe").absolute(totals.probe_records);
        for (label, count) in Refusal::LABELS.iter().zip(totals.refused) {
            counter!("flowmesh_sampler_datagrams_dropped_total", "reason" => *label).absolute(count);
        }
        counter!("flowmesh_sampler_datagrams_duplicate_total").absolute(totals.duplicates);
        counter!("flowmesh_sampler_datagrams_rewindowed_total").absolute(totals.rewindowed);
        counter!("flowmesh_sampler_records_over_capacity_total").absolute(totals.records_over_capacity);
        counter!("flowmesh_sampler_samples_over_capacity_total").absolute(totals.samples_over_capacity);
        counter!("flowmesh_sampler_flows_untracked_total").absolute(totals.flows_untracked);
        counter!("flowmesh_sampler_windows_emitted_total").absolute(totals.windows_emitted);
        counter!("flowmesh_sampler_windows_skipped_total").absolute(totals.windows_skipped);
        gauge!("flowmesh_sampler_flows_tracked").set(tracked as f64);
        for (node, a) in &totals.agents {
            let name = topology.node(*node).map_or_else(String::new, |n| n.name.clone());
            let labels = [("node", node.to_string()), ("name", name)];
            counter!("flowmesh_sampler_agent_datagrams_expected_total", &labels).absolute(a.expected);
            counter!("flowmesh_sampler_agent_datagrams_received_total", &labels).absolute(a.received);
            counter!("flowmesh_sampler_agent_datagrams_reordered_total", &labels).absolute(a.reordered);
            counter!("flowmesh_sampler_agent_restarts_total", &labels).absolute(a.restarts);
            gauge!("flowmesh_sampler_agent_last_seen_seconds", &labels).set(a.last_seen_ns as f64 / 1e9);
        }
        {
            let s = uplink::lock(&spool);
            gauge!("flowmesh_sampler_spool_batches").set(s.len() as f64);
            gauge!("flowmesh_sampler_spool_bytes").set(s.bytes() as f64);
            counter!("flowmesh_sampler_spool_dropped_batches_total").absolute(s.dropped_total());
        }
        let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        gauge!("flowmesh_sampler_uplink_connected").set(f64::from(u8::from(uplink.connected.load(Ordering::Relaxed))));
        counter!("flowmesh_sampler_uplink_batches_sent_total").absolute(get(&uplink.batches_sent));
        counter!("flowmesh_sampler_uplink_batches_acked_total", "status" => "stored")
            .absolute(get(&uplink.acked_stored));
        counter!("flowmesh_sampler_uplink_batches_acked_total", "status" => "duplicate")
            .absolute(get(&uplink.acked_duplicate));
        counter!("flowmesh_sampler_uplink_batches_rejected_total").absolute(get(&uplink.rejected));
        for (kind, count) in FAILURE_KINDS.iter().zip(&uplink.failures) {
            counter!("flowmesh_sampler_uplink_failures_total", "kind" => *kind).absolute(get(count));
        }
        handle.render()
    }))
}
