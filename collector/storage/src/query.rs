//! The canned questions people ask of stored telemetry
//! (`flowmesh-collector query`) and their answers, as plain columns and
//! values so any backend can answer and any front end can print them.
//! Each backend answers them in its own query language
//! ([`sqlite`](crate::sqlite) over its views, see docs/schema.md).

/// A question the query CLI answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Paths by probe loss over the range, worst first.
    WorstPaths,
    /// Estimated bytes sent per (node, remote address) from sampled flows
    /// expanded by their weights, largest first.
    TopTalkers,
    /// One node's path windows (by name or id), as source or destination,
    /// newest first.
    Node(String),
    /// Agent windows with missing telemetry or silence, newest first.
    Completeness,
}

/// An answer: column names and rows of values.
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
    /// No value (SQL NULL: e.g. a rate with nothing to divide by).
    Null,
    /// An integer.
    Int(i64),
    /// A real number.
    Real(f64),
    /// Text (binary values are shown as hex).
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Int(v) => write!(f, "{v}"),
            // Rates and µs: enough digits to compare, not more.
            Value::Real(v) => f.write_str(&format_real(*v)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_show_enough_digits_to_compare() {
        assert_eq!(Value::Real(0.2).to_string(), "0.2");
        assert_eq!(Value::Real(130.0 / 300.0).to_string(), "0.4333");
        assert_eq!(Value::Real(2.0).to_string(), "2");
        assert_eq!(Value::Real(0.000_123).to_string(), "1.230e-4");
        assert_eq!(Value::Real(0.0).to_string(), "0");
        assert_eq!(Value::Null.to_string(), "");
    }
}
