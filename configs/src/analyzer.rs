//! `flowmesh-analyzer`: reads the collector's database, flags anomalies and
//! localizes them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::component::{Checks, Component, Invalid};
use crate::storage::Storage;

/// Configuration of `flowmesh-analyzer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// The collector's SQLite database (opened read-only), when
    /// `storage.backend` is `sqlite`.
    pub database: PathBuf,
    /// The storage backend: SQLite (`database`) or a ClickHouse cluster.
    pub storage: Storage,
    /// The topology file.
    pub topology: PathBuf,
    /// Anomaly thresholds.
    pub detect: Detection,
    /// Attribution of anomalous paths to a host, rack or rack pair.
    pub localize: Localization,
    /// Grouping of anomalies into incidents.
    pub incidents: Incidents,
    /// What `watch` serves to Prometheus.
    pub metrics: ResultsEndpoint,
}

/// The endpoint `flowmesh-analyzer watch` serves: its findings as metrics
/// (`/metrics`), `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultsEndpoint {
    /// Listen address; unset: `watch` serves nothing (`--metrics-listen`
    /// sets it too). A report run never serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// Most hosts exported with their own loss and RTT series at once (the
    /// hosts an active anomaly or telemetry gap names, worst first): bounds
    /// the series a fleet-wide fault can create. Rack pairs are bounded by
    /// the topology (racks²).
    pub max_host_series: u32,
}

impl Default for ResultsEndpoint {
    fn default() -> Self {
        ResultsEndpoint {
            listen: None,
            max_host_series: 100,
        }
    }
}

/// Anomaly thresholds. Defaults follow the anchors: Pingmesh treats drop
/// rates of 1e-4–1e-5 as normal; rpingmesh flags loss above 2% or p99 RTT
/// above 500 µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Detection {
    /// Probe loss rate (lost / sent) above which a path window is flagged.
    pub loss_rate: f64,
    /// Significance of the pooled test of each host's probe loss against
    /// `loss_rate`: a one-sided binomial test of the window's probes from
    /// and to the host. A host whose p-value is at or below this is taken to
    /// lose above `loss_rate`, and its paths that lost probes are flagged
    /// (`loss_pooled`) even when no path alone crosses `loss_rate`. It is
    /// at most the share of windows in which a host losing exactly
    /// `loss_rate` is flagged; one losing half as much is flagged about once
    /// in 4 000 windows of 800 probes, a healthy one practically never. 0
    /// turns the test off.
    pub loss_significance: f64,
    /// TCP retransmission rate (retransmitted / sent segments) above which a
    /// path window is flagged.
    pub retrans_rate: f64,
    /// Significance of the test that a path window's retransmissions cross
    /// `retrans_rate`: a one-sided binomial test of its segments. A window
    /// above `retrans_rate` by no more than counting noise (a path of 400
    /// segments retransmitting 6 at a 1 % SLA; the test takes 10, of 10 000
    /// segments 125) is judged against the path's own baseline instead. A
    /// path retransmitting exactly `retrans_rate` crosses it in at most this
    /// share of windows. 0 turns the test off (any rate above flags).
    pub retrans_significance: f64,
    /// Fewest flows of a path window with retransmissions before its
    /// retransmission rate can flag it: one flow's burst (a spurious
    /// timeout, a stalled host) is one event, not the path's state — the
    /// flows that retransmit are the votes, as in 007.
    pub min_retrans_flows: u32,
    /// p99 network RTT above which a path window is flagged, µs.
    pub p99_rtt_us: u64,
    /// p99 responder delay (how long the answering host held probes) above
    /// which the responder is flagged as slow, µs: a host threshold, kept
    /// apart from the network's.
    pub p99_responder_delay_us: u64,
    /// Windows of a path's own history that form its baseline.
    pub baseline_windows: u32,
    /// A value more than this many median absolute deviations above the
    /// baseline median is flagged.
    pub mad_k: f64,
    /// Least rise of a p99 above its path's baseline median that is flagged,
    /// µs: a path at 40 µs reading 80 µs has doubled, but by less than
    /// datacenter RTTs move under ordinary load.
    pub rtt_baseline_min_increase_us: u64,
    /// Fewest probes a window needs before it can be flagged.
    pub min_probes: u32,
    /// An agent whose datagrams arrive below this share of those sent is a
    /// telemetry gap.
    pub min_completeness: f64,
}

/// How anomalous paths are attributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Localization {
    /// Share of an element's paths (those not yet explained by an earlier
    /// verdict of the window) that must be bad before it is blamed; of the
    /// elements that pass, the one whose bad paths exceed this share of its
    /// paths by the most is blamed first.
    pub min_bad_share: f64,
    /// Fewest paths through an element before it can be blamed (a node
    /// pair has two: above 2, node pairs are never blamed).
    pub min_paths: u32,
}

/// How anomalies are grouped into incidents: an element blamed again after
/// fewer than `quiet_windows` clean windows is the same incident flapping,
/// not a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Incidents {
    /// Clean windows in a row that end an incident (`watch` prints its END
    /// then; until then it is open). The default, 3, makes a host flapping
    /// every 10 s in 5 s windows (two bad windows, two clean) one incident.
    pub quiet_windows: u32,
}

impl Default for Incidents {
    fn default() -> Self {
        Incidents { quiet_windows: 3 }
    }
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            database: PathBuf::from("/var/lib/flowmesh/flowmesh.db"),
            storage: Storage::default(),
            topology: PathBuf::from("/etc/flowmesh/topology.toml"),
            detect: Detection::default(),
            localize: Localization::default(),
            incidents: Incidents::default(),
            metrics: ResultsEndpoint::default(),
        }
    }
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            loss_rate: 0.02,
            loss_significance: 0.2,
            retrans_rate: 0.01,
            retrans_significance: 0.01,
            min_retrans_flows: 2,
            p99_rtt_us: 500,
            p99_responder_delay_us: 500,
            baseline_windows: 30,
            mad_k: 5.0,
            rtt_baseline_min_increase_us: 100,
            min_probes: 20,
            min_completeness: 0.9,
        }
    }
}

impl Default for Localization {
    fn default() -> Self {
        Localization {
            min_bad_share: 0.6,
            min_paths: 2,
        }
    }
}

impl Component for AnalyzerConfig {
    const NAME: &'static str = "analyzer";
    const ENV_PREFIX: &'static str = "FLOWMESH_ANALYZER";

    fn validate(&self) -> Vec<Invalid> {
        let mut c = Checks::default();
        c.path("database", &self.database);
        self.storage.check(&mut c);
        c.path("topology", &self.topology);
        let d = &self.detect;
        c.range("detect.loss_rate", d.loss_rate, 0.0..=1.0, "a fraction");
        c.range(
            "detect.loss_significance",
            d.loss_significance,
            0.0..=1.0,
            "a probability",
        );
        c.range("detect.retrans_rate", d.retrans_rate, 0.0..=1.0, "a fraction");
        c.range(
            "detect.retrans_significance",
            d.retrans_significance,
            0.0..=1.0,
            "a probability",
        );
        c.range("detect.min_retrans_flows", d.min_retrans_flows, 1..=1_000_000, "flows");
        c.range("detect.p99_rtt_us", d.p99_rtt_us, 1..=60_000_000, "microseconds");
        c.range(
            "detect.p99_responder_delay_us",
            d.p99_responder_delay_us,
            1..=60_000_000,
            "microseconds",
        );
        c.range("detect.baseline_windows", d.baseline_windows, 3..=100_000, "windows");
        c.range("detect.mad_k", d.mad_k, 0.5..=100.0, "a multiple");
        c.range(
            "detect.rtt_baseline_min_increase_us",
            d.rtt_baseline_min_increase_us,
            0..=60_000_000,
            "microseconds",
        );
        c.range("detect.min_probes", d.min_probes, 1..=1_000_000, "probes");
        c.range("detect.min_completeness", d.min_completeness, 0.0..=1.0, "a fraction");
        let l = &self.localize;
        c.range("localize.min_bad_share", l.min_bad_share, 0.0..=1.0, "a fraction");
        c.range("localize.min_paths", l.min_paths, 1..=100_000, "paths");
        c.range(
            "incidents.quiet_windows",
            self.incidents.quiet_windows,
            1..=100_000,
            "windows",
        );
        c.range(
            "metrics.max_host_series",
            self.metrics.max_host_series,
            0..=100_000,
            "series",
        );
        c.0
    }
}
