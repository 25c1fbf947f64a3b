//! The ClickHouse schema: on every shard a `*_local` table holding that
//! shard's rows, and over them a `Distributed` table of the same name without
//! the suffix that writers insert into and readers query. docs/schema.md
//! documents it beside the SQLite schema.
//!
//! Only what ClickHouse 18.16 (Debian 12's package) has: no `TTL`, no codecs,
//! no `LowCardinality`; so it also runs on current releases.
//!
//! - **Exactly once.** Row tables are `ReplacingMergeTree`s whose sorting key
//!   ends in (`batch_id`, `row`): a batch stored twice (a replay, or two
//!   collectors during a failover) gives rows with equal keys, which merges
//!   collapse and readers collapse with `FINAL` until then. The sharding key
//!   is the batch id, so both copies land on the same shard, where `FINAL`
//!   sees them together.
//! - **Retention.** Every row table is partitioned by the UTC day of its
//!   window; retention drops whole days (`ALTER TABLE … DROP PARTITION`), a
//!   metadata operation that never holds up inserts.
//! - **Versioning.** `flowmesh_schema` on each shard holds the version; a
//!   build refuses a newer one.

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The row tables, in the order a batch's rows are inserted: `batches` last,
/// so a batch row is only ever stored with all the rows it carries (a
/// collector that finds the batch row treats the batch as stored).
pub const TABLES: [&str; 7] = [
    "racks",
    "nodes",
    "path_windows",
    "agent_windows",
    "sampled_flows",
    "sampled_probes",
    "batches",
];

/// The partition key of every row table: the UTC day of the window.
const DAY: &str = "toYYYYMMDD(toDateTime(intDiv(window_start_ns, 1000000000), 'UTC'))";

/// Whether a local table is partitioned by day, and its columns and engine
/// clause.
fn local_table(table: &str) -> (bool, String) {
    let (columns, engine): (&str, &str) = match table {
        "racks" => (
            "rack_id UInt32, name String, updated_ns UInt64",
            "ReplacingMergeTree(updated_ns) ORDER BY rack_id",
        ),
        "nodes" => (
            "node_id UInt32, name String, rack_id UInt32, updated_ns UInt64",
            "ReplacingMergeTree(updated_ns) ORDER BY node_id",
        ),
        "batches" => (
            "batch_id FixedString(16), sampler_id UInt32, rack_id UInt32, window_start_ns UInt64,
             window_len_ns UInt64, created_ns UInt64, received_ns UInt64, path_count UInt32,
             completeness_count UInt32, flow_sample_count UInt32, probe_sample_count UInt32,
             malformed_datagrams UInt32, records_over_capacity UInt32, spool_dropped_batches UInt32",
            "ReplacingMergeTree PARTITION BY {day} ORDER BY (window_start_ns, batch_id)",
        ),
        "path_windows" => (
            "batch_id FixedString(16), row UInt32, window_start_ns UInt64, window_len_ns UInt64, rack_id UInt32,
             src_node UInt32, dst_node UInt32, dscp UInt8, transport Nullable(String), probes_sent UInt32,
             probes_lost UInt32, probes_failed UInt32, rtt_min_ns UInt64, rtt_p50_ns UInt64, rtt_p90_ns UInt64,
             rtt_p99_ns UInt64, rtt_p999_ns UInt64, rtt_max_ns UInt64, responder_delay_p50_ns UInt64,
             responder_delay_p99_ns UInt64, flows UInt32, flows_with_retrans UInt32, flows_reset UInt32,
             bytes_sent UInt64, bytes_received UInt64, segs_out UInt64, retrans_segs UInt64, rtt_histogram String",
            "ReplacingMergeTree PARTITION BY {day} ORDER BY (window_start_ns, src_node, dst_node, batch_id, row)",
        ),
        "agent_windows" => (
            "batch_id FixedString(16), row UInt32, window_start_ns UInt64, window_len_ns UInt64, rack_id UInt32,
             node_id UInt32, agent_epoch UInt32, datagrams_expected UInt32, datagrams_received UInt32,
             datagrams_duplicate UInt32, datagrams_reordered UInt32, records UInt32, silent UInt8,
             restarted UInt8, last_seen_ns UInt64",
            "ReplacingMergeTree PARTITION BY {day} ORDER BY (window_start_ns, node_id, batch_id, row)",
        ),
        "sampled_flows" => (
            "batch_id FixedString(16), row UInt32, window_start_ns UInt64, node_id UInt32, weight UInt32,
             anomalies UInt8, flow_id UInt64, src_addr String, dst_addr String, src_port UInt16, dst_port UInt16,
             dscp UInt8, direction String, end_reason String, start_ns UInt64, duration_ns UInt64,
             bytes_acked UInt64, bytes_received UInt64, segs_out UInt32, segs_in UInt32, retrans_segs UInt32,
             srtt_us UInt32, min_rtt_us UInt32",
            "ReplacingMergeTree PARTITION BY {day} ORDER BY (window_start_ns, node_id, batch_id, row)",
        ),
        "sampled_probes" => (
            "batch_id FixedString(16), row UInt32, window_start_ns UInt64, node_id UInt32, weight UInt32,
             anomalies UInt8, dst_node UInt32, transport String, src_addr String, dst_addr String,
             src_port UInt32, dst_port UInt32, dscp UInt8, seq UInt64, outcome String, error_code UInt16,
             requester_send_ns UInt64, responder_receive_ns UInt64, responder_send_ns UInt64,
             requester_receive_ns UInt64, network_rtt_ns Nullable(UInt64), responder_delay_ns Nullable(UInt64)",
            "ReplacingMergeTree PARTITION BY {day} ORDER BY (window_start_ns, node_id, batch_id, row)",
        ),
        _ => unreachable!("not a flowmesh table: {table}"),
    };
    (
        engine.contains("{day}"),
        format!("({columns}) ENGINE = {}", engine.replace("{day}", DAY)),
    )
}

/// The sharding key of a table's rows: the batch id for rows that came in a
/// batch (a batch and its duplicates share a shard), the id for names.
fn sharding_key(table: &str) -> &'static str {
    match table {
        "racks" => "rack_id",
        "nodes" => "node_id",
        _ => "cityHash64(batch_id)",
    }
}

/// The statements that create the schema on one shard, idempotently: the
/// version table, every local table, and every Distributed table (on each
/// shard, so that any server of the cluster can be written to and read).
pub fn create_statements(database: &str, cluster: &str) -> Vec<String> {
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {database}.flowmesh_schema (version UInt32) ENGINE = TinyLog"
    )];
    for table in TABLES {
        let (_, body) = local_table(table);
        statements.push(format!("CREATE TABLE IF NOT EXISTS {database}.{table}_local {body}"));
    }
    for table in TABLES {
        statements.push(format!(
            "CREATE TABLE IF NOT EXISTS {database}.{table} AS {database}.{table}_local
             ENGINE = Distributed({cluster}, {database}, {table}_local, {})",
            sharding_key(table)
        ));
    }
    statements
}

/// Tables partitioned by day, whose old partitions retention drops.
pub fn partitioned_tables() -> impl Iterator<Item = &'static str> {
    TABLES.into_iter().filter(|t| local_table(t).0)
}

/// The partition (`YYYYMMDD`, UTC) of a window starting at `ns`.
pub fn day_of(ns: u64) -> u32 {
    let days = ns / 1_000_000_000 / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    (y * 10_000 + m * 100 + d) as u32
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_of(0), 19_700_101);
        // 2026-12-01T10:00:00Z
        assert_eq!(day_of(1_796_119_200 * 1_000_000_000), 20_261_201);
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(day_of(1_709_251_199 * 1_000_000_000), 20_240_229);
    }

    #[test]
    fn every_table_is_created_locally_and_distributed() {
        let all = create_statements("db", "c").join("\n");
        for table in TABLES {
            assert!(all.contains(&format!("db.{table}_local (")), "{table}");
            assert!(all.contains(&format!("Distributed(c, db, {table}_local,")), "{table}");
        }
        assert_eq!(partitioned_tables().count(), 5);
    }
}
