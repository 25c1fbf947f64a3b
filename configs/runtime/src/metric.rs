//! Metric families declared once. A daemon's telemetry module holds one
//! `const` [`Family`] per metric — name, help, unit, kind, histogram
//! buckets — and the same value describes the family when the endpoint
//! starts ([`Endpoint::new`](crate::endpoint::Endpoint::new)) and records
//! its series, so a name typed in two places cannot drift apart. The raw
//! `metrics` macros are disallowed elsewhere (clippy.toml).
//!
//! Daemons keep their counters in atomics on the hot path and publish them
//! here once per scrape, so recording takes labels as plain `&str` pairs.

use metrics::{Label, Unit};

/// What kind of series a family holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Only goes up (published with its absolute value).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets with these upper bounds.
    Histogram(&'static [f64]),
}

/// One metric family: everything Prometheus shows about it but the values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
}

impl Family {
    /// A counter.
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            unit: None,
            kind: Kind::Counter,
        }
    }

    /// A gauge.
    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            unit: None,
            kind: Kind::Gauge,
        }
    }

    /// A histogram with these bucket upper bounds.
    pub const fn histogram(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Family {
        Family {
            name,
            help,
            unit: None,
            kind: Kind::Histogram(buckets),
        }
    }

    /// The same family with a unit.
    pub const fn with_unit(self, unit: Unit) -> Family {
        Family {
            unit: Some(unit),
            ..self
        }
    }

    /// The family's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Its kind.
    pub const fn kind(&self) -> Kind {
        self.kind
    }

    /// Its help text.
    pub const fn help(&self) -> &'static str {
        self.help
    }

    /// Publishes a counter series' absolute value.
    pub fn absolute(&self, labels: &[(&'static str, &str)], value: u64) {
        debug_assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        #[allow(clippy::disallowed_macros)] // this is the one place that records
        metrics::counter!(self.name, to_labels(labels)).absolute(value);
    }

    /// Sets a gauge series.
    pub fn set(&self, labels: &[(&'static str, &str)], value: f64) {
        debug_assert_eq!(self.kind, Kind::Gauge, "{} is not a gauge", self.name);
        #[allow(clippy::disallowed_macros)]
        metrics::gauge!(self.name, to_labels(labels)).set(value);
    }

    /// Records one observation in a histogram series.
    pub fn record(&self, labels: &[(&'static str, &str)], value: f64) {
        debug_assert!(
            matches!(self.kind, Kind::Histogram(_)),
            "{} is not a histogram",
            self.name
        );
        #[allow(clippy::disallowed_macros)]
        metrics::histogram!(self.name, to_labels(labels)).record(value);
    }

    /// Registers the family's help and unit with the recorder.
    pub(crate) fn describe(&self) {
        #[allow(clippy::disallowed_macros)]
        match (self.kind, self.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(self.name, unit, self.help),
            (Kind::Counter, None) => metrics::describe_counter!(self.name, self.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(self.name, unit, self.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(self.name, self.help),
            (Kind::Histogram(_), Some(unit)) => metrics::describe_histogram!(self.name, unit, self.help),
            (Kind::Histogram(_), None) => metrics::describe_histogram!(self.name, self.help),
        }
    }
}

fn to_labels(labels: &[(&'static str, &str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(key, value)| Label::new(*key, value.to_string()))
        .collect()
}
