//! What the collector's Prometheus endpoint reports
//! ([`configs_runtime::endpoint`] serves it): batches by outcome (and
//! unauthorized ones by reason), rows stored, refused clients, write
//! latency, database size and the QUIC socket's receive buffer. Each family
//! is declared once here and recorded through that declaration.

use std::path::Path;
use std::sync::Arc;

use configs_runtime::endpoint::Endpoint;
use configs_runtime::metric::Family;
use metrics::Unit;

use crate::server::{Stats, Unauthorized};

/// Batches answered, by outcome.
pub const BATCHES: Family = Family::counter(
    "flowmesh_collector_batches_total",
    "Batches answered, by outcome: stored, duplicate, rejected (invalid), unauthorized, retry_later.",
);
/// Batches refused because the sampler's certificate may not write them.
pub const BATCHES_UNAUTHORIZED: Family = Family::counter(
    "flowmesh_collector_batches_unauthorized_total",
    "Batches refused because the sampler's certificate may not write them, by reason: certificate (it carries \
     no granted name), rack (another rack's batch), sampler (a sampler id not granted to it), batch_id (an id \
     outside its sampler id's namespace).",
);
/// Rows written.
pub const ROWS_STORED: Family = Family::counter(
    "flowmesh_collector_rows_stored_total",
    "Rows written to the database, all tables.",
);
/// Connections refused.
pub const CONNECTIONS_REFUSED: Family = Family::counter(
    "flowmesh_collector_connections_refused_total",
    "Connections refused during the handshake (unknown certificate, wrong protocol).",
);
/// Transactions committed.
pub const TRANSACTIONS: Family = Family::counter(
    "flowmesh_collector_transactions_total",
    "Database transactions committed.",
);
/// Batches deleted by retention.
pub const BATCHES_PRUNED: Family = Family::counter(
    "flowmesh_collector_batches_pruned_total",
    "Batches deleted by retention.",
);
/// Write latency, recorded by the writer thread.
pub const WRITE_SECONDS: Family = Family::histogram(
    "flowmesh_collector_write_seconds",
    "Time to store and commit one transaction of batches.",
    &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ],
)
.with_unit(Unit::Seconds);
/// Database size.
pub const DATABASE_BYTES: Family = Family::gauge(
    "flowmesh_collector_database_bytes",
    "Size of the database file and its write-ahead log.",
)
.with_unit(Unit::Bytes);

/// Receive buffer the kernel granted the QUIC socket.
pub const RECEIVE_BUFFER_BYTES: Family = Family::gauge(
    "flowmesh_collector_receive_buffer_bytes",
    "Receive buffer the kernel granted the QUIC socket (SO_RCVBUF): twice socket_buffer_bytes unless net.core.rmem_max capped it.",
)
.with_unit(Unit::Bytes);
/// 1 if net.core.rmem_max capped the QUIC socket's receive buffer.
pub const RECEIVE_BUFFER_CAPPED: Family = Family::gauge(
    "flowmesh_collector_receive_buffer_capped",
    "1 if net.core.rmem_max capped the QUIC socket's receive buffer below what socket_buffer_bytes asks (the samplers' window-end bursts overflow it and QUIC resends), else 0.",
);

/// Every family the collector exports.
pub const FAMILIES: &[Family] = &[
    BATCHES,
    BATCHES_UNAUTHORIZED,
    ROWS_STORED,
    CONNECTIONS_REFUSED,
    TRANSACTIONS,
    BATCHES_PRUNED,
    WRITE_SECONDS,
    DATABASE_BYTES,
    RECEIVE_BUFFER_BYTES,
    RECEIVE_BUFFER_CAPPED,
];

/// The collector's endpoint: its counters in `stats`, the size of the
/// SQLite database file at `database` (`None`: another backend, whose size
/// its own server reports), and the QUIC socket's receive buffer as bound
/// (bytes granted, whether `net.core.rmem_max` capped it).
pub fn endpoint(stats: Arc<Stats>, database: Option<&Path>, receive_buffer: (usize, bool)) -> Endpoint {
    let database = database.map(Path::to_path_buf);
    Endpoint::new(
        "collector",
        FAMILIES,
        Arc::new(move || {
            let s = &stats;
            for (outcome, counter) in [
                ("stored", &s.batches_stored),
                ("duplicate", &s.batches_duplicate),
                ("rejected", &s.batches_rejected),
                ("retry_later", &s.batches_retry),
            ] {
                BATCHES.absolute(&[("outcome", outcome)], Stats::get(counter));
            }
            BATCHES.absolute(&[("outcome", "unauthorized")], s.unauthorized_total());
            for reason in Unauthorized::ALL {
                BATCHES_UNAUTHORIZED.absolute(&[("reason", reason.as_str())], s.unauthorized(reason));
            }
            ROWS_STORED.absolute(&[], Stats::get(&s.rows_stored));
            CONNECTIONS_REFUSED.absolute(&[], Stats::get(&s.connections_refused));
            TRANSACTIONS.absolute(&[], Stats::get(&s.transactions));
            BATCHES_PRUNED.absolute(&[], Stats::get(&s.batches_pruned));
            RECEIVE_BUFFER_BYTES.set(&[], receive_buffer.0 as f64);
            RECEIVE_BUFFER_CAPPED.set(&[], f64::from(u8::from(receive_buffer.1)));
            if let Some(database) = &database {
                DATABASE_BYTES.set(&[], collector_storage::sqlite::database_bytes(database) as f64);
            }
        }),
    )
}
