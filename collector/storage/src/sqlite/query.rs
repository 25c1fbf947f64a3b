//! The canned questions as SQL over the views and tables of docs/schema.md.

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::StoreError;
use crate::query::{Answer, Question, Value};

/// Answers `question` over windows that started at or after `since_ns`,
/// returning at most `limit` rows.
pub(super) fn ask(conn: &Connection, question: &Question, since_ns: u64, limit: usize) -> Result<Answer, StoreError> {
    let since = i64::try_from(since_ns).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (sql, node) = match question {
        Question::WorstPaths => (
            "SELECT src_name, src_node, dst_name, dst_node, SUM(probes_sent) AS probes_sent,
                    SUM(probes_lost) AS probes_lost,
                    CAST(SUM(probes_lost) AS REAL) / SUM(probes_sent) AS loss_rate,
                    MAX(rtt_p99_us) AS worst_rtt_p99_us, COUNT(*) AS windows
             FROM path_window_report
             WHERE probes_sent > 0 AND window_start_ns >= ?1
             GROUP BY src_node, dst_node
             ORDER BY loss_rate DESC, worst_rtt_p99_us DESC, src_node, dst_node
             LIMIT ?2",
            None,
        ),
        // Each flow (node_id, flow_id, start_ns) counts once over the range,
        // by its latest report in it (counters are cumulative), times that
        // report's weight — not once per report or per window, which
        // summing `flow_estimates` over windows would do (docs/schema.md).
        // ClickHouse's query (collector-storage-clickhouse) is the same.
        Question::TopTalkers => (
            "SELECT f.node_id, n.name AS node_name, f.dst_addr, SUM(f.weight) AS est_flows,
                    SUM(f.weight * f.bytes_acked) AS est_bytes_sent,
                    SUM(f.weight * f.bytes_received) AS est_bytes_received
             FROM (SELECT node_id, dst_addr, weight, bytes_acked, bytes_received,
                          ROW_NUMBER() OVER (
                              PARTITION BY node_id, flow_id, start_ns
                              ORDER BY duration_ns DESC, bytes_acked DESC, bytes_received DESC, segs_out DESC,
                                       retrans_segs DESC, weight DESC, anomalies DESC
                          ) AS report_rank
                   FROM sampled_flows
                   WHERE window_start_ns >= ?1) f
             LEFT JOIN nodes n ON n.node_id = f.node_id
             WHERE f.report_rank = 1
             GROUP BY f.node_id, f.dst_addr
             ORDER BY est_bytes_sent DESC, f.node_id, f.dst_addr
             LIMIT ?2",
            None,
        ),
        Question::Node(node) => (
            "SELECT window_start, src_name, dst_name, transport, dscp, probes_sent, probes_lost, loss_rate,
                    rtt_p50_us, rtt_p99_us, responder_delay_p99_us, flows, retrans_rate
             FROM path_window_report
             WHERE window_start_ns >= ?1
               AND (src_name = ?3 OR dst_name = ?3 OR CAST(src_node AS TEXT) = ?3 OR CAST(dst_node AS TEXT) = ?3)
             ORDER BY window_start_ns DESC, src_node, dst_node, dscp, transport
             LIMIT ?2",
            Some(node.as_str()),
        ),
        Question::Completeness => (
            "SELECT window_start, rack_id, node_id, node_name, datagrams_expected, datagrams_received,
                    datagrams_missing, completeness, silent, restarted
             FROM agents_missing_telemetry
             WHERE window_start_ns >= ?1
             ORDER BY window_start_ns DESC, completeness, node_id
             LIMIT ?2",
            None,
        ),
    };
    let mut stmt = conn.prepare(sql)?;
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let width = columns.len();
    let mut rows = match node {
        Some(node) => stmt.query(rusqlite::params![since, limit, node])?,
        None => stmt.query(rusqlite::params![since, limit])?,
    };
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Text(b.iter().map(|x| format!("{x:02x}")).collect()),
            });
        }
        out.push(values);
    }
    Ok(Answer { columns, rows: out })
}
