//! `flowmesh-collector query`: the common questions asked of the database,
//! answered as a table, JSON or CSV. Anything else: the sqlite3 CLI against
//! docs/schema.md.

use std::io::Write;

use rusqlite::types::ValueRef;

use crate::store::{Store, StoreError};

/// A question the query CLI answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Paths by probe loss over the range, worst first.
    WorstPaths,
    /// Estimated bytes sent per (node, remote address) from sampled flows
    /// expanded by their weights, largest first.
    TopTalkers,
    /// One node's path windows, as source or destination, newest first.
    Node(String),
    /// Agent windows with missing telemetry or silence, newest first.
    Completeness,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// An array of objects, one per row.
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

/// A query result: column names and rows of SQLite values.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each as many values as there are columns.
    pub rows: Vec<Vec<Value>>,
}

/// One value of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A real number.
    Real(f64),
    /// Text (BLOBs are shown as hex).
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Int(v) => write!(f, "{v}"),
            // Rates and µs: enough digits to compare, not more.
            Value::Real(v) => write!(f, "{}", format_real(*v)),
            Value::Text(v) => f.write_str(v),
        }
    }
}

fn format_real(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.001 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Answers `question` over windows that started at or after `since_ns`,
/// returning at most `limit` rows.
pub fn ask(store: &Store, question: &Question, since_ns: u64, limit: usize) -> Result<Answer, StoreError> {
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
             ORDER BY loss_rate DESC, worst_rtt_p99_us DESC
             LIMIT ?2",
            None,
        ),
        Question::TopTalkers => (
            "SELECT f.node_id, n.name AS node_name, f.dst_addr, SUM(f.est_flows) AS est_flows,
                    SUM(f.est_bytes_sent) AS est_bytes_sent, SUM(f.est_bytes_received) AS est_bytes_received
             FROM flow_estimates f LEFT JOIN nodes n ON n.node_id = f.node_id
             WHERE f.window_start_ns >= ?1
             GROUP BY f.node_id, f.dst_addr
             ORDER BY est_bytes_sent DESC
             LIMIT ?2",
            None,
        ),
        Question::Node(node) => (
            "SELECT window_start, src_name, dst_name, transport, dscp, probes_sent, probes_lost, loss_rate,
                    rtt_p50_us, rtt_p99_us, responder_delay_p99_us, flows, retrans_rate
             FROM path_window_report
             WHERE window_start_ns >= ?1
               AND (src_name = ?3 OR dst_name = ?3 OR CAST(src_node AS TEXT) = ?3 OR CAST(dst_node AS TEXT) = ?3)
             ORDER BY window_start_ns DESC, src_node, dst_node
             LIMIT ?2",
            Some(node.as_str()),
        ),
        Question::Completeness => (
            "SELECT window_start, rack_id, node_id, node_name, datagrams_expected, datagrams_received,
                    datagrams_missing, completeness, silent, restarted
             FROM agents_missing_telemetry
             WHERE window_start_ns >= ?1
             LIMIT ?2",
            None,
        ),
    };
    let conn = store.connection();
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

impl Answer {
    /// Writes the answer in `format`.
    pub fn write(&self, format: Format, out: &mut impl Write) -> std::io::Result<()> {
        match format {
            Format::Table => self.write_table(out),
            Format::Json => self.write_json(out),
            Format::Csv => self.write_csv(out),
        }
    }

    fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(ToString::to_string).collect())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |out: &mut dyn Write, values: &[String]| -> std::io::Result<()> {
            let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
            writeln!(out, "{}", padded.join("  ").trim_end())
        };
        line(out, &self.columns)?;
        line(out, &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())?;
        for row in &cells {
            line(out, row)?;
        }
        if cells.is_empty() {
            writeln!(out, "(no rows)")?;
        }
        Ok(())
    }

    fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|row| {
                let object = self.columns.iter().zip(row).map(|(c, v)| {
                    let value = match v {
                        Value::Null => serde_json::Value::Null,
                        Value::Int(i) => (*i).into(),
                        Value::Real(r) => serde_json::Number::from_f64(*r).map_or(serde_json::Value::Null, Into::into),
                        Value::Text(t) => t.clone().into(),
                    };
                    (c.clone(), value)
                });
                serde_json::Value::Object(object.collect())
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)
    }

    fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(&self.columns)?;
        for row in &self.rows {
            writer.write_record(row.iter().map(ToString::to_string))?;
        }
        writer.flush()
    }
}
