//! The database schema, as an ordered list of migrations.
//!
//! `PRAGMA user_version` records how many migrations a database has had.
//! Migrations are append-only: never edit one that has shipped, add the next.
//! docs/schema.md documents the result.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// Migration `i` takes a database from version `i` to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Version 1: batches and what they carry, racks and nodes, and the views
/// people query with the sqlite3 CLI.
///
/// Every index on the row tables leads with `window_start_ns`. Windows only
/// move forward, so inserts land at the right edge of each index and stay
/// cheap as tables grow (indexes led by node or batch id made ingest about
/// 3× slower, measured with `flowmesh-bench collector-ingest`), while time-
/// range queries — what the analyzer and people ask — still use them. Rows
/// point to their batch by `batch_id` without a foreign key: retention
/// deletes by window range, and the store writes a batch and its rows in one
/// transaction.
const V1: &str = r#"
CREATE TABLE racks (
    rack_id     INTEGER PRIMARY KEY,
    name        TEXT
);

CREATE TABLE nodes (
    node_id     INTEGER PRIMARY KEY,
    name        TEXT,
    rack_id     INTEGER
);

CREATE TABLE batches (
    batch_id                BLOB PRIMARY KEY,
    sampler_id              INTEGER NOT NULL,
    rack_id                 INTEGER NOT NULL,
    window_start_ns         INTEGER NOT NULL,
    window_len_ns           INTEGER NOT NULL,
    created_ns              INTEGER NOT NULL,
    received_ns             INTEGER NOT NULL,
    path_count              INTEGER NOT NULL,
    completeness_count      INTEGER NOT NULL,
    flow_sample_count       INTEGER NOT NULL,
    probe_sample_count      INTEGER NOT NULL,
    malformed_datagrams     INTEGER NOT NULL,
    records_over_capacity   INTEGER NOT NULL,
    spool_dropped_batches   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX batches_by_window ON batches (window_start_ns);
CREATE INDEX batches_by_rack ON batches (rack_id, window_start_ns);

CREATE TABLE path_windows (
    batch_id                BLOB NOT NULL,
    window_start_ns         INTEGER NOT NULL,
    window_len_ns           INTEGER NOT NULL,
    rack_id                 INTEGER NOT NULL,
    src_node                INTEGER NOT NULL,
    dst_node                INTEGER NOT NULL,
    dscp                    INTEGER NOT NULL,
    transport               TEXT,
    probes_sent             INTEGER NOT NULL,
    probes_lost             INTEGER NOT NULL,
    probes_failed           INTEGER NOT NULL,
    rtt_min_ns              INTEGER NOT NULL,
    rtt_p50_ns              INTEGER NOT NULL,
    rtt_p90_ns              INTEGER NOT NULL,
    rtt_p99_ns              INTEGER NOT NULL,
    rtt_p999_ns             INTEGER NOT NULL,
    rtt_max_ns              INTEGER NOT NULL,
    responder_delay_p50_ns  INTEGER NOT NULL,
    responder_delay_p99_ns  INTEGER NOT NULL,
    flows                   INTEGER NOT NULL,
    flows_with_retrans      INTEGER NOT NULL,
    flows_reset             INTEGER NOT NULL,
    bytes_sent              INTEGER NOT NULL,
    bytes_received          INTEGER NOT NULL,
    segs_out                INTEGER NOT NULL,
    retrans_segs            INTEGER NOT NULL,
    rtt_histogram           BLOB
);
CREATE INDEX path_windows_by_path ON path_windows (window_start_ns, src_node, dst_node);
CREATE INDEX path_windows_by_rack ON path_windows (window_start_ns, rack_id);

CREATE TABLE agent_windows (
    batch_id                BLOB NOT NULL,
    window_start_ns         INTEGER NOT NULL,
    window_len_ns           INTEGER NOT NULL,
    rack_id                 INTEGER NOT NULL,
    node_id                 INTEGER NOT NULL,
    agent_epoch             INTEGER NOT NULL,
    datagrams_expected      INTEGER NOT NULL,
    datagrams_received      INTEGER NOT NULL,
    datagrams_duplicate     INTEGER NOT NULL,
    datagrams_reordered     INTEGER NOT NULL,
    records                 INTEGER NOT NULL,
    silent                  INTEGER NOT NULL,
    restarted               INTEGER NOT NULL,
    last_seen_ns            INTEGER NOT NULL
);
CREATE INDEX agent_windows_by_node ON agent_windows (window_start_ns, node_id);

CREATE TABLE sampled_flows (
    batch_id                BLOB NOT NULL,
    window_start_ns         INTEGER NOT NULL,
    node_id                 INTEGER NOT NULL,
    weight                  INTEGER NOT NULL,
    anomalies               INTEGER NOT NULL,
    flow_id                 INTEGER NOT NULL,
    src_addr                TEXT NOT NULL,
    dst_addr                TEXT NOT NULL,
    src_port                INTEGER NOT NULL,
    dst_port                INTEGER NOT NULL,
    dscp                    INTEGER NOT NULL,
    direction               TEXT NOT NULL,
    end_reason              TEXT NOT NULL,
    start_ns                INTEGER NOT NULL,
    duration_ns             INTEGER NOT NULL,
    bytes_acked             INTEGER NOT NULL,
    bytes_received          INTEGER NOT NULL,
    segs_out                INTEGER NOT NULL,
    segs_in                 INTEGER NOT NULL,
    retrans_segs            INTEGER NOT NULL,
    srtt_us                 INTEGER NOT NULL,
    min_rtt_us              INTEGER NOT NULL
);
CREATE INDEX sampled_flows_by_node ON sampled_flows (window_start_ns, node_id);

CREATE TABLE sampled_probes (
    batch_id                BLOB NOT NULL,
    window_start_ns         INTEGER NOT NULL,
    node_id                 INTEGER NOT NULL,
    weight                  INTEGER NOT NULL,
    anomalies               INTEGER NOT NULL,
    dst_node                INTEGER NOT NULL,
    transport               TEXT NOT NULL,
    src_addr                TEXT NOT NULL,
    dst_addr                TEXT NOT NULL,
    src_port                INTEGER NOT NULL,
    dst_port                INTEGER NOT NULL,
    dscp                    INTEGER NOT NULL,
    seq                     INTEGER NOT NULL,
    outcome                 TEXT NOT NULL,
    error_code              INTEGER NOT NULL,
    requester_send_ns       INTEGER NOT NULL,
    responder_receive_ns    INTEGER NOT NULL,
    responder_send_ns       INTEGER NOT NULL,
    requester_receive_ns    INTEGER NOT NULL,
    network_rtt_ns          INTEGER,
    responder_delay_ns      INTEGER
);
CREATE INDEX sampled_probes_by_path ON sampled_probes (window_start_ns, node_id, dst_node);

-- Path windows with names and rates: the starting point for most questions.
CREATE VIEW path_window_report AS
SELECT
    p.window_start_ns,
    datetime(p.window_start_ns / 1000000000, 'unixepoch') AS window_start,
    p.rack_id,
    src.name AS src_name,
    p.src_node,
    dst.name AS dst_name,
    p.dst_node,
    p.dscp,
    p.transport,
    p.probes_sent,
    p.probes_lost,
    CASE WHEN p.probes_sent > 0 THEN CAST(p.probes_lost AS REAL) / p.probes_sent END AS loss_rate,
    p.rtt_p50_ns / 1000.0 AS rtt_p50_us,
    p.rtt_p99_ns / 1000.0 AS rtt_p99_us,
    p.responder_delay_p99_ns / 1000.0 AS responder_delay_p99_us,
    p.flows,
    p.bytes_sent,
    p.retrans_segs,
    CASE WHEN p.segs_out > 0 THEN CAST(p.retrans_segs AS REAL) / p.segs_out END AS retrans_rate
FROM path_windows p
LEFT JOIN nodes src ON src.node_id = p.src_node
LEFT JOIN nodes dst ON dst.node_id = p.dst_node;

-- Probe loss per path over the last hour, worst first.
CREATE VIEW worst_paths_last_hour AS
SELECT
    src_node,
    dst_node,
    MAX(src_name) AS src_name,
    MAX(dst_name) AS dst_name,
    SUM(probes_sent) AS probes_sent,
    SUM(probes_lost) AS probes_lost,
    CAST(SUM(probes_lost) AS REAL) / SUM(probes_sent) AS loss_rate,
    MAX(rtt_p99_us) AS worst_window_rtt_p99_us,
    COUNT(*) AS windows
FROM path_window_report
WHERE probes_sent > 0
  AND window_start_ns >= (unixepoch('now') - 3600) * 1000000000
GROUP BY src_node, dst_node
ORDER BY loss_rate DESC, worst_window_rtt_p99_us DESC;

-- Sampled flows expanded back into estimates: each stands for `weight` flows.
CREATE VIEW flow_estimates AS
SELECT
    window_start_ns,
    node_id,
    src_addr,
    dst_addr,
    dst_port,
    dscp,
    SUM(weight) AS est_flows,
    SUM(weight * bytes_acked) AS est_bytes_sent,
    SUM(weight * bytes_received) AS est_bytes_received,
    SUM(weight * retrans_segs) AS est_retrans_segs,
    SUM(CASE WHEN anomalies != 0 THEN 1 ELSE 0 END) AS anomalous_flows
FROM sampled_flows
GROUP BY window_start_ns, node_id, src_addr, dst_addr, dst_port, dscp;

-- Agents whose telemetry did not all arrive, or that were silent.
CREATE VIEW agents_missing_telemetry AS
SELECT
    a.window_start_ns,
    datetime(a.window_start_ns / 1000000000, 'unixepoch') AS window_start,
    a.rack_id,
    a.node_id,
    n.name AS node_name,
    a.datagrams_expected,
    a.datagrams_received,
    a.datagrams_expected - a.datagrams_received AS datagrams_missing,
    CASE WHEN a.datagrams_expected > 0
         THEN CAST(a.datagrams_received AS REAL) / a.datagrams_expected END AS completeness,
    a.silent,
    a.restarted
FROM agent_windows a
LEFT JOIN nodes n ON n.node_id = a.node_id
WHERE a.silent != 0 OR a.datagrams_received < a.datagrams_expected
ORDER BY a.window_start_ns DESC, completeness;
"#;

/// Version 2: drops `path_windows_by_rack`. No query used it — every rack
/// question is bounded in time and `path_windows_by_path` serves the time
/// range — and maintaining it cost about 12% of ingest throughput (measured
/// with `flowmesh-bench collector-ingest`: ceiling 280–300 k → 320–345 k
/// rows/s).
const V2: &str = "DROP INDEX path_windows_by_rack;";

/// Version 3: `flow_estimates` counts each flow once per window. Sampled
/// flows carry counters cumulative since the flow began, and an open flow is
/// reported again every `flows.report_open_secs`; version 1 summed every
/// report, so a flow reported three times in a window counted its bytes
/// three times. Now each flow — `(node_id, flow_id, start_ns)` — counts by
/// its latest report in the window (longest duration, then largest
/// counters), times that report's weight; `anomalous_flows` counts flows
/// with an anomalous report in the window. The columns are unchanged.
///
/// The sums are window functions over the chosen reports rather than a
/// `GROUP BY` over a subquery: SQLite pushes a reader's bound on
/// `window_start_ns` down through window functions partitioned by it, to
/// `sampled_flows_by_node`, but not through an aggregate into the subquery
/// below it (it would scan every window).
const V3: &str = r#"
DROP VIEW flow_estimates;

-- Sampled flows expanded back into estimates: each flow counts once per
-- window, by its latest report there, which stands for `weight` flows.
CREATE VIEW flow_estimates AS
SELECT
    window_start_ns, node_id, src_addr, dst_addr, dst_port, dscp,
    est_flows, est_bytes_sent, est_bytes_received, est_retrans_segs, anomalous_flows
FROM (
    SELECT
        window_start_ns, node_id, src_addr, dst_addr, dst_port, dscp,
        SUM(weight) OVER estimate AS est_flows,
        SUM(weight * bytes_acked) OVER estimate AS est_bytes_sent,
        SUM(weight * bytes_received) OVER estimate AS est_bytes_received,
        SUM(weight * retrans_segs) OVER estimate AS est_retrans_segs,
        SUM(anomalous) OVER estimate AS anomalous_flows,
        ROW_NUMBER() OVER estimate AS estimate_row
    FROM (
        SELECT
            window_start_ns, node_id, src_addr, dst_addr, dst_port, dscp, weight,
            bytes_acked, bytes_received, retrans_segs,
            ROW_NUMBER() OVER (
                PARTITION BY window_start_ns, node_id, flow_id, start_ns
                ORDER BY duration_ns DESC, bytes_acked DESC, bytes_received DESC, segs_out DESC,
                         retrans_segs DESC, weight DESC, anomalies DESC
            ) AS report_rank,
            MAX(anomalies != 0) OVER (PARTITION BY window_start_ns, node_id, flow_id, start_ns) AS anomalous
        FROM sampled_flows
    )
    WHERE report_rank = 1
    WINDOW estimate AS (PARTITION BY window_start_ns, node_id, src_addr, dst_addr, dst_port, dscp)
)
WHERE estimate_row = 1;
"#;

/// The database's schema version (`PRAGMA user_version`).
pub(super) fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Applies migrations until the database is at `target`, each in its own
/// transaction together with the version bump.
pub(super) fn migrate(conn: &Connection, path: &Path, target: u32) -> Result<(), StoreError> {
    let found = refuse_newer(conn, path)?;
    for version in found..target {
        let apply = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let result = conn
                .execute_batch(MIGRATIONS[version as usize])
                .and_then(|()| conn.execute_batch(&format!("PRAGMA user_version = {}", version + 1)));
            match result {
                Ok(()) => conn.execute_batch("COMMIT"),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        };
        apply().map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            version: version + 1,
            source,
        })?;
    }
    Ok(())
}

/// The database's schema version, refused if newer than this build knows.
pub(super) fn refuse_newer(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let found = version(conn).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}
