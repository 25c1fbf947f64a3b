//! `flowmesh-collector query`: the canned questions' answers
//! ([`collector_storage::query`]) printed as a table, JSON or CSV.
//! Anything else: the sqlite3 CLI against docs/schema.md.

use std::io::Write;

use collector_storage::{Answer, Value};

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

/// Writes `answer` in `format`.
pub fn write(answer: &Answer, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Table => write_table(answer, out),
        Format::Json => write_json(answer, out),
        Format::Csv => write_csv(answer, out),
    }
}

fn write_table(answer: &Answer, out: &mut impl Write) -> std::io::Result<()> {
    let cells: Vec<Vec<String>> = answer
        .rows
        .iter()
        .map(|r| r.iter().map(ToString::to_string).collect())
        .collect();
    let widths: Vec<usize> = (0..answer.columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([answer.columns[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, values: &[String]| -> std::io::Result<()> {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    line(out, &answer.columns)?;
    line(out, &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())?;
    for row in &cells {
        line(out, row)?;
    }
    if cells.is_empty() {
        writeln!(out, "(no rows)")?;
    }
    Ok(())
}

fn write_json(answer: &Answer, out: &mut impl Write) -> std::io::Result<()> {
    let rows: Vec<serde_json::Value> = answer
        .rows
        .iter()
        .map(|row| {
            let object = answer.columns.iter().zip(row).map(|(c, v)| {
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

fn write_csv(answer: &Answer, out: &mut impl Write) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(&answer.columns)?;
    for row in &answer.rows {
        writer.write_record(row.iter().map(ToString::to_string))?;
    }
    writer.flush()
}
