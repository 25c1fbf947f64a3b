//! The canned questions in ClickHouse SQL, answering with the same columns
//! as SQLite's views (docs/schema.md), so `flowmesh-collector query` prints
//! the same table whichever backend holds the data.
//!
//! Answers come back as `JSONCompact` (column types and values), so one
//! decoder serves every question. Node names are filled in here rather than
//! joined in SQL: ClickHouse 18.16 allows one `JOIN` per `SELECT` and
//! refuses joins of two Distributed tables by default, while the node list
//! is small. A query selects a node's id under the name column's alias
//! (`src_node AS src_name`), and [`ask`] replaces it by the name.

use std::collections::HashMap;

use collector_storage::{Answer, Question, StoreError, Value};

use crate::ClickHouseStore;

/// The SQL of one question; `{since}`, `{limit}` and `{nodes}` are filled in.
fn sql(question: &Question) -> &'static str {
    // Inner aliases differ from column names: ClickHouse aliases are global
    // to a query, and `sum(x) AS x` would leak into every other use of x.
    match question {
        Question::WorstPaths => {
            "SELECT src_node AS src_name, src_node, dst_node AS dst_name, dst_node, sent AS probes_sent,
                    lost AS probes_lost, loss AS loss_rate, worst AS worst_rtt_p99_us, n AS windows
             FROM (SELECT src_node, dst_node, sum(probes_sent) AS sent, sum(probes_lost) AS lost, lost / sent AS loss,
                          max(rtt_p99_ns) / 1000 AS worst, count() AS n
                   FROM path_windows FINAL WHERE probes_sent > 0 AND window_start_ns >= {since}
                   GROUP BY src_node, dst_node)
             ORDER BY loss_rate DESC, worst_rtt_p99_us DESC, src_node, dst_node LIMIT {limit}"
        }
        // Each flow (node_id, flow_id, start_ns) counts once over the range,
        // by its latest report in it (counters are cumulative) — the largest
        // `latest`, SQLite's `ROW_NUMBER() … ORDER BY` the same columns —
        // times that report's weight. The innermost SELECT aggregates on the
        // shards: a flow's reports of several windows came in several
        // batches, possibly on different shards.
        Question::TopTalkers => {
            "SELECT node_id, node_id AS node_name, dst AS dst_addr, flows AS est_flows, sent AS est_bytes_sent,
                    received AS est_bytes_received
             FROM (SELECT node_id, dst, sum(w) AS flows, sum(w * acked) AS sent, sum(w * got) AS received
                   FROM (SELECT node_id,
                                argMax(dst_addr, (duration_ns, bytes_acked, bytes_received, segs_out, retrans_segs,
                                                  weight, anomalies) AS latest) AS dst,
                                argMax(weight, latest) AS w, argMax(bytes_acked, latest) AS acked,
                                argMax(bytes_received, latest) AS got
                         FROM sampled_flows FINAL WHERE window_start_ns >= {since}
                         GROUP BY node_id, flow_id, start_ns)
                   GROUP BY node_id, dst)
             ORDER BY est_bytes_sent DESC, node_id, dst_addr LIMIT {limit}"
        }
        Question::Node(_) => {
            "SELECT toString(toDateTime(intDiv(window_start_ns, 1000000000), 'UTC')) AS window_start,
                    src_node AS src_name, dst_node AS dst_name, transport, dscp, probes_sent, probes_lost,
                    probes_lost / probes_sent AS loss_rate, rtt_p50_ns / 1000 AS rtt_p50_us,
                    rtt_p99_ns / 1000 AS rtt_p99_us, responder_delay_p99_ns / 1000 AS responder_delay_p99_us, flows,
                    retrans_segs / segs_out AS retrans_rate
             FROM path_windows FINAL
             WHERE window_start_ns >= {since} AND (src_node IN ({nodes}) OR dst_node IN ({nodes}))
             ORDER BY window_start_ns DESC, src_node, dst_node, dscp, transport NULLS FIRST LIMIT {limit}"
        }
        Question::Completeness => {
            "SELECT toString(toDateTime(intDiv(window_start_ns, 1000000000), 'UTC')) AS window_start, rack_id,
                    node_id, node_id AS node_name, datagrams_expected, datagrams_received,
                    toInt64(datagrams_expected) - toInt64(datagrams_received) AS datagrams_missing,
                    if(datagrams_expected > 0, datagrams_received / datagrams_expected, NULL) AS completeness, silent, restarted
             FROM agent_windows FINAL
             WHERE window_start_ns >= {since} AND (silent != 0 OR datagrams_received < datagrams_expected)
             ORDER BY window_start_ns DESC, completeness NULLS FIRST, node_id LIMIT {limit}"
        }
    }
}

#[derive(serde::Deserialize)]
struct Compact {
    meta: Vec<Column>,
    data: Vec<Vec<serde_json::Value>>,
}

#[derive(serde::Deserialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

fn names(store: &ClickHouseStore) -> Result<HashMap<u32, String>, StoreError> {
    let rows: Vec<(u32, String)> = store.run(
        "reading node names",
        store.client.query("SELECT node_id, name FROM nodes FINAL").fetch_all(),
    )?;
    Ok(rows.into_iter().collect())
}

pub(crate) fn ask(
    store: &ClickHouseStore,
    question: &Question,
    since_ns: u64,
    limit: usize,
) -> Result<Answer, StoreError> {
    let names = names(store)?;
    let nodes = match question {
        // By name or by id, as SQLite's `src_name = ? OR CAST(src_node AS TEXT) = ?`.
        Question::Node(node) => {
            let mut ids: Vec<u32> = names.iter().filter(|(_, n)| *n == node).map(|(id, _)| *id).collect();
            ids.extend(node.parse::<u32>().ok());
            // No such node: an id no node has keeps the query's shape.
            let ids = if ids.is_empty() { vec![u32::MAX] } else { ids };
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
        _ => String::new(),
    };
    let sql = sql(question)
        .replace("{since}", &since_ns.to_string())
        .replace("{limit}", &limit.to_string())
        .replace("{nodes}", &nodes);
    let bytes = store.run("answering the question", async {
        store
            .client
            .query(&sql)
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes("JSONCompact")?
            .collect()
            .await
    })?;
    let compact: Compact = serde_json::from_slice(&bytes).map_err(|e| crate::error("decoding the answer", e))?;
    let columns: Vec<String> = compact.meta.iter().map(|c| c.name.clone()).collect();
    let rows = compact
        .data
        .into_iter()
        .map(|row| {
            row.into_iter()
                .zip(&compact.meta)
                .map(|(v, column)| value(v, column, &names))
                .collect()
        })
        .collect();
    Ok(Answer { columns, rows })
}

/// One JSON value as an answer value: a `*_name` column holds a node id to
/// name (no name: NULL, as SQLite's LEFT JOIN gives); floats are reals,
/// other numbers integers; NaN and infinities (a rate of nothing) arrive as
/// null, like SQLite's division by zero.
fn value(v: serde_json::Value, column: &Column, names: &HashMap<u32, String>) -> Value {
    use serde_json::Value as J;
    if column.name.ends_with("_name") {
        return v
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .and_then(|id| names.get(&id))
            .map_or(Value::Null, |n| Value::Text(n.clone()));
    }
    match v {
        J::Null => Value::Null,
        J::Number(n) if column.kind.contains("Float") => n.as_f64().map_or(Value::Null, Value::Real),
        J::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
            .map_or(Value::Null, Value::Int),
        J::String(s) => Value::Text(s),
        J::Bool(b) => Value::Int(i64::from(b)),
        other => Value::Text(other.to_string()),
    }
}
