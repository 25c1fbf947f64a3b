//! What the sampler's Prometheus endpoint reports
//! ([`configs_runtime::endpoint`] serves it): datagrams and records
//! received, drops by reason, per-agent completeness, bounds reached, spool
//! depth, the uplink's state (which collector it is connected to,
//! failovers) and the ingest sockets' receive buffers. Each family is
//! declared once here and recorded through that declaration.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use configs::Topology;
use configs_runtime::endpoint::Endpoint;
use configs_runtime::metric::Family;
use metrics::Unit;

use crate::aggregate::{Aggregator, Refusal};
use crate::ingest;
use crate::spool::Spool;
use crate::uplink::{self, FAILURE_KINDS, UplinkStats};

/// Agent datagrams accepted.
pub const DATAGRAMS_RECEIVED: Family =
    Family::counter("flowmesh_sampler_datagrams_received_total", "Agent datagrams accepted.");

/// Records accepted, by kind.
pub const RECORDS_RECEIVED: Family =
    Family::counter("flowmesh_sampler_records_received_total", "Records accepted, by kind.");

/// Datagrams refused, by reason (malformed, or from a node not in this rack).
pub const DATAGRAMS_DROPPED: Family = Family::counter(
    "flowmesh_sampler_datagrams_dropped_total",
    "Datagrams refused, by reason (malformed, or from a node not in this rack).",
);

/// Datagrams received again and dropped so records count once.
pub const DATAGRAMS_DUPLICATE: Family = Family::counter(
    "flowmesh_sampler_datagrams_duplicate_total",
    "Datagrams received again and dropped so records count once.",
);

/// Datagrams counted in the window of their arrival: late past the grace period, or from a skewed clock.
pub const DATAGRAMS_REWINDOWED: Family = Family::counter(
    "flowmesh_sampler_datagrams_rewindowed_total",
    "Datagrams counted in the window of their arrival: late past the grace period, or from a skewed clock.",
);

/// Records counted in their datagram's window because the window of their own time was already emitted (an answer later than aggregate.grace_ms) or lies ahead of the clock.
pub const RECORDS_LATE: Family = Family::counter(
    "flowmesh_sampler_records_late_total",
    "Records counted in their datagram's window because the window of their own time was already emitted (an answer later than aggregate.grace_ms) or lies ahead of the clock.",
);

/// Records not aggregated because a window held aggregate.max_paths paths.
pub const RECORDS_OVER_CAPACITY: Family = Family::counter(
    "flowmesh_sampler_records_over_capacity_total",
    "Records not aggregated because a window held aggregate.max_paths paths.",
);

/// Raw records not kept, or displaced, because a window held aggregate.max_samples.
pub const SAMPLES_OVER_CAPACITY: Family = Family::counter(
    "flowmesh_sampler_samples_over_capacity_total",
    "Raw records not kept, or displaced, because a window held aggregate.max_samples.",
);

/// Flow reports counted whole because aggregate.max_flows flows were remembered.
pub const FLOWS_UNTRACKED: Family = Family::counter(
    "flowmesh_sampler_flows_untracked_total",
    "Flow reports counted whole because aggregate.max_flows flows were remembered.",
);

/// Aggregation windows emitted as batches.
pub const WINDOWS_EMITTED: Family = Family::counter(
    "flowmesh_sampler_windows_emitted_total",
    "Aggregation windows emitted as batches.",
);

/// Windows not emitted because the process was stopped for longer than the catch-up limit.
pub const WINDOWS_SKIPPED: Family = Family::counter(
    "flowmesh_sampler_windows_skipped_total",
    "Windows not emitted because the process was stopped for longer than the catch-up limit.",
);

/// Datagrams an agent's sequence numbers say it sent.
pub const AGENT_DATAGRAMS_EXPECTED: Family = Family::counter(
    "flowmesh_sampler_agent_datagrams_expected_total",
    "Datagrams an agent's sequence numbers say it sent.",
);

/// Distinct datagrams received from an agent.
pub const AGENT_DATAGRAMS_RECEIVED: Family = Family::counter(
    "flowmesh_sampler_agent_datagrams_received_total",
    "Distinct datagrams received from an agent.",
);

/// An agent's datagrams that arrived after a later one.
pub const AGENT_DATAGRAMS_REORDERED: Family = Family::counter(
    "flowmesh_sampler_agent_datagrams_reordered_total",
    "An agent's datagrams that arrived after a later one.",
);

/// Agent restarts seen (epoch changes).
pub const AGENT_RESTARTS: Family = Family::counter(
    "flowmesh_sampler_agent_restarts_total",
    "Agent restarts seen (epoch changes).",
);

/// Batches the full spool discarded: windows that will never reach the collector.
pub const SPOOL_DROPPED_BATCHES: Family = Family::counter(
    "flowmesh_sampler_spool_dropped_batches_total",
    "Batches the spool discarded (full, a batch larger than it, or a failed write): windows that will never reach the collector.",
);

/// Batches written to the collector.
pub const UPLINK_BATCHES_SENT: Family = Family::counter(
    "flowmesh_sampler_uplink_batches_sent_total",
    "Batches written to the collector.",
);

/// Batches the collector acknowledged, by status.
pub const UPLINK_BATCHES_ACKED: Family = Family::counter(
    "flowmesh_sampler_uplink_batches_acked_total",
    "Batches the collector acknowledged, by status.",
);

/// Batches the collector rejected as invalid (set aside in the spool's rejected/ directory).
pub const UPLINK_BATCHES_REJECTED: Family = Family::counter(
    "flowmesh_sampler_uplink_batches_rejected_total",
    "Batches the collector rejected as invalid (set aside in the spool's rejected/ directory).",
);

/// Uplink failures, by kind.
pub const UPLINK_FAILURES: Family =
    Family::counter("flowmesh_sampler_uplink_failures_total", "Uplink failures, by kind.");

/// When a datagram last arrived from an agent, Unix time; 0 if never.
pub const AGENT_LAST_SEEN_SECONDS: Family = Family::gauge(
    "flowmesh_sampler_agent_last_seen_seconds",
    "When a datagram last arrived from an agent, Unix time; 0 if never.",
)
.with_unit(Unit::Seconds);

/// Open flows remembered between reports.
pub const FLOWS_TRACKED: Family = Family::gauge(
    "flowmesh_sampler_flows_tracked",
    "Open flows remembered between reports.",
);

/// Batches waiting in the spool.
pub const SPOOL_BATCHES: Family = Family::gauge("flowmesh_sampler_spool_batches", "Batches waiting in the spool.");

/// Bytes waiting in the spool.
pub const SPOOL_BYTES: Family =
    Family::gauge("flowmesh_sampler_spool_bytes", "Bytes waiting in the spool.").with_unit(Unit::Bytes);

/// The spool's capacity, for alerting on how full it is.
pub const SPOOL_CAPACITY_BYTES: Family = Family::gauge(
    "flowmesh_sampler_spool_capacity_bytes",
    "The most bytes the spool holds (uplink.spool_max_bytes); beyond it the oldest batches are dropped.",
)
.with_unit(Unit::Bytes);

/// Receive buffer the kernel granted each ingest socket.
pub const INGEST_RECEIVE_BUFFER_BYTES: Family = Family::gauge(
    "flowmesh_sampler_ingest_receive_buffer_bytes",
    "Receive buffer the kernel granted each ingest socket (SO_RCVBUF): twice ingest.socket_buffer_bytes unless net.core.rmem_max capped it.",
)
.with_unit(Unit::Bytes);

/// 1 if net.core.rmem_max capped an ingest socket's receive buffer.
pub const INGEST_RECEIVE_BUFFER_CAPPED: Family = Family::gauge(
    "flowmesh_sampler_ingest_receive_buffer_capped",
    "1 if net.core.rmem_max capped the ingest socket's receive buffer below what ingest.socket_buffer_bytes asks (bursts it was sized for overflow it), else 0.",
);

/// 1 while connected to a collector, else 0.
pub const UPLINK_CONNECTED: Family = Family::gauge(
    "flowmesh_sampler_uplink_connected",
    "1 while connected to a collector, else 0.",
);

/// 1 for the collector of uplink.collectors the uplink is connected to, 0 for the others.
pub const UPLINK_COLLECTOR_CONNECTED: Family = Family::gauge(
    "flowmesh_sampler_uplink_collector_connected",
    "1 for the collector of uplink.collectors the uplink is connected to, 0 for the others.",
);

/// Times the uplink moved on to the next collector of uplink.collectors after a failure.
pub const UPLINK_FAILOVERS: Family = Family::counter(
    "flowmesh_sampler_uplink_failovers_total",
    "Times the uplink moved on to the next collector of uplink.collectors after a failure.",
);

/// Every family the sampler exports.
pub const FAMILIES: &[Family] = &[
    DATAGRAMS_RECEIVED,
    RECORDS_RECEIVED,
    DATAGRAMS_DROPPED,
    DATAGRAMS_DUPLICATE,
    DATAGRAMS_REWINDOWED,
    RECORDS_LATE,
    RECORDS_OVER_CAPACITY,
    SAMPLES_OVER_CAPACITY,
    FLOWS_UNTRACKED,
    WINDOWS_EMITTED,
    WINDOWS_SKIPPED,
    AGENT_DATAGRAMS_EXPECTED,
    AGENT_DATAGRAMS_RECEIVED,
    AGENT_DATAGRAMS_REORDERED,
    AGENT_RESTARTS,
    SPOOL_DROPPED_BATCHES,
    UPLINK_BATCHES_SENT,
    UPLINK_BATCHES_ACKED,
    UPLINK_BATCHES_REJECTED,
    UPLINK_FAILURES,
    UPLINK_FAILOVERS,
    FLOWS_TRACKED,
    SPOOL_BATCHES,
    UPLINK_CONNECTED,
    UPLINK_COLLECTOR_CONNECTED,
    AGENT_LAST_SEEN_SECONDS,
    SPOOL_BYTES,
    SPOOL_CAPACITY_BYTES,
    INGEST_RECEIVE_BUFFER_BYTES,
    INGEST_RECEIVE_BUFFER_CAPPED,
];

/// An ingest socket's receive buffer as the kernel granted it at start.
#[derive(Clone, Debug)]
pub struct ReceiveBuffer {
    /// The socket's address (the `listen` label).
    pub listen: String,
    /// Bytes granted.
    pub bytes: usize,
    /// Capped by `net.core.rmem_max` below what was configured.
    pub capped: bool,
}

/// The sampler's endpoint over its shared state.
pub fn endpoint(
    aggregator: Arc<Mutex<Aggregator>>,
    spool: Arc<Mutex<Spool>>,
    uplink: Arc<UplinkStats>,
    topology: Arc<Topology>,
    buffers: Vec<ReceiveBuffer>,
) -> Endpoint {
    Endpoint::new(
        "sampler",
        FAMILIES,
        Arc::new(move || {
            let (totals, tracked) = {
                let a = ingest::lock(&aggregator);
                (a.totals().clone(), a.tracked_flows())
            };
            DATAGRAMS_RECEIVED.absolute(&[], totals.datagrams);
            RECORDS_RECEIVED.absolute(&[("kind", "flow")], totals.flow_records);
            RECORDS_RECEIVED.absolute(&[("kind", "probe")], totals.probe_records);
            for (label, count) in Refusal::LABELS.iter().zip(totals.refused) {
                DATAGRAMS_DROPPED.absolute(&[("reason", *label)], count);
            }
            DATAGRAMS_DUPLICATE.absolute(&[], totals.duplicates);
            DATAGRAMS_REWINDOWED.absolute(&[], totals.rewindowed);
            RECORDS_LATE.absolute(&[], totals.records_late);
            RECORDS_OVER_CAPACITY.absolute(&[], totals.records_over_capacity);
            SAMPLES_OVER_CAPACITY.absolute(&[], totals.samples_over_capacity);
            FLOWS_UNTRACKED.absolute(&[], totals.flows_untracked);
            WINDOWS_EMITTED.absolute(&[], totals.windows_emitted);
            WINDOWS_SKIPPED.absolute(&[], totals.windows_skipped);
            FLOWS_TRACKED.set(&[], tracked as f64);
            for buffer in &buffers {
                let labels = [("listen", buffer.listen.as_str())];
                INGEST_RECEIVE_BUFFER_BYTES.set(&labels, buffer.bytes as f64);
                INGEST_RECEIVE_BUFFER_CAPPED.set(&labels, f64::from(u8::from(buffer.capped)));
            }
            for (node, a) in &totals.agents {
                let id = node.to_string();
                let name = topology.node(*node).map_or("", |n| n.name.as_str());
                let labels = [("node", id.as_str()), ("name", name)];
                AGENT_DATAGRAMS_EXPECTED.absolute(&labels, a.expected);
                AGENT_DATAGRAMS_RECEIVED.absolute(&labels, a.received);
                AGENT_DATAGRAMS_REORDERED.absolute(&labels, a.reordered);
                AGENT_RESTARTS.absolute(&labels, a.restarts);
                AGENT_LAST_SEEN_SECONDS.set(&labels, a.last_seen_ns as f64 / 1e9);
            }
            {
                let s = uplink::lock(&spool);
                SPOOL_BATCHES.set(&[], s.len() as f64);
                SPOOL_BYTES.set(&[], s.bytes() as f64);
                SPOOL_CAPACITY_BYTES.set(&[], s.max_bytes() as f64);
                SPOOL_DROPPED_BATCHES.absolute(&[], s.dropped_total());
            }
            let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            let connected = uplink.connected_to();
            UPLINK_CONNECTED.set(&[], f64::from(u8::from(connected.is_some())));
            // One series per configured collector, so none goes stale.
            for (index, collector) in uplink.collectors.iter().enumerate() {
                let up = f64::from(u8::from(connected == Some(index)));
                UPLINK_COLLECTOR_CONNECTED.set(&[("collector", collector)], up);
            }
            UPLINK_FAILOVERS.absolute(&[], get(&uplink.failovers));
            UPLINK_BATCHES_SENT.absolute(&[], get(&uplink.batches_sent));
            UPLINK_BATCHES_ACKED.absolute(&[("status", "stored")], get(&uplink.acked_stored));
            UPLINK_BATCHES_ACKED.absolute(&[("status", "duplicate")], get(&uplink.acked_duplicate));
            UPLINK_BATCHES_REJECTED.absolute(&[], get(&uplink.rejected));
            for (kind, count) in FAILURE_KINDS.iter().zip(&uplink.failures) {
                UPLINK_FAILURES.absolute(&[("kind", *kind)], get(count));
            }
        }),
    )
}
