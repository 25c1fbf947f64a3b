//! What the collector's Prometheus endpoint reports
//! ([`configs::endpoint`] serves it): batches by outcome, rows stored,
//! refused clients, write latency and database size.

use std::path::Path;
use std::sync::Arc;

use configs::endpoint::{Endpoint, prometheus};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::server::Stats;

/// Name of the write-latency histogram.
pub const WRITE_SECONDS: &str = "flowmesh_collector_write_seconds";

const WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn describe() {
    describe_counter!("flowmesh_collector_batches_total", "Batches answered, by outcome.");
    describe_counter!(
        "flowmesh_collector_rows_stored_total",
        "Rows written to the database, all tables."
    );
    describe_counter!(
        "flowmesh_collector_connections_refused_total",
        "Connections refused during the handshake (unknown certificate, wrong protocol)."
    );
    describe_counter!(
        "flowmesh_collector_transactions_total",
        "Database transactions committed."
    );
    describe_counter!(
        "flowmesh_collector_batches_pruned_total",
        "Batches deleted by retention."
    );
    describe_histogram!(
        WRITE_SECONDS,
        Unit::Seconds,
        "Time to store and commit one transaction of batches."
    );
    describe_gauge!(
        "flowmesh_collector_database_bytes",
        Unit::Bytes,
        "Size of the database file and its write-ahead log."
    );
}

/// The collector's endpoint: its counters in `stats`, the size of the
/// database file at `database`.
pub fn endpoint(stats: Arc<Stats>, database: &Path) -> Endpoint {
    let handle = prometheus(&[(WRITE_SECONDS, WRITE_BUCKETS)]);
    describe();
    let database = database.to_path_buf();
    Endpoint::new(Arc::new(move || {
        let s = &stats;
        for (outcome, counter) in [
            ("stored", &s.batches_stored),
            ("duplicate", &s.batches_duplicate),
            ("rejected", &s.batches_rejected),
            ("retry_later", &s.batches_retry),
        ] {
            counter!("flowmesh_collector_batches_total", "outcome" => outcome).absolute(Stats::get(counter));
        }
        counter!("flowmesh_collector_rows_stored_total").absolute(Stats::get(&s.rows_stored));
        counter!("flowmesh_collector_connections_refused_total").absolute(Stats::get(&s.connections_refused));
        counter!("flowmesh_collector_transactions_total").absolute(Stats::get(&s.transactions));
        counter!("flowmesh_collector_batches_pruned_total").absolute(Stats::get(&s.batches_pruned));
        gauge!("flowmesh_collector_database_bytes").set(collector_storage::sqlite::database_bytes(&database) as f64);
        handle.render()
    }))
}
