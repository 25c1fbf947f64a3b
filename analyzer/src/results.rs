//! The analysis as Prometheus metrics: what `flowmesh-analyzer watch`
//! serves on `/metrics` so that alert rules and dashboards see the
//! network's state, not only the daemons' health.
//!
//! Each pass renders a complete page from its analysis ([`exposition`]),
//! and the page replaces the previous one: an anomaly that clears is simply
//! absent from the next page, so no series outlives what it describes
//! (a metrics registry would keep exporting a gauge nobody sets any more).
//!
//! Cardinality is bounded by configuration, not by the fleet: rack pairs
//! are racks², hosts get series of their own only while an anomaly or a
//! telemetry gap names them, and at most `metrics.max_host_series` of those.
//!
//! `flowmesh_anomaly_active` describes the newest window (alert rules rely
//! on it); `flowmesh_incident_open` stays 1 through an incident's quiet
//! windows, so a flapping element is one open incident, not a series that
//! comes and goes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use configs::Topology;

use crate::incident::symptom_kind;
use crate::model::PathWindow;
use crate::report::Analysis;

/// One metric family of the page: its name and help. Every family here is
/// a gauge: each page is a snapshot of one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// Metric name.
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
}

/// `{element_type, element, kind}` 1 per kind of symptom an active anomaly shows.
pub const ANOMALY_ACTIVE: Family = Family {
    name: "flowmesh_anomaly_active",
    help: "1 while an anomaly is active: element_type (host, rack, rack_pair, node_pair, unlocalized), element, kind (loss, rtt, retransmissions, responder_delay).",
};
/// When the active anomaly's first window started.
pub const ANOMALY_STARTED: Family = Family {
    name: "flowmesh_anomaly_started_timestamp_seconds",
    help: "Start of an active anomaly's first window, Unix time.",
};
/// Bad paths through the element in the anomaly's worst window.
pub const ANOMALY_BAD_PATHS: Family = Family {
    name: "flowmesh_anomaly_bad_paths",
    help: "Bad paths through an anomaly's element in its worst window.",
};
/// Judged paths through the element in the anomaly's worst window.
pub const ANOMALY_JUDGED_PATHS: Family = Family {
    name: "flowmesh_anomaly_judged_paths",
    help: "Judged paths through an anomaly's element in its worst window.",
};
/// An open incident.
pub const INCIDENT_OPEN: Family = Family {
    name: "flowmesh_incident_open",
    help: "1 while an incident is open: its element was blamed in the newest analyzed window or fewer than incidents.quiet_windows clean windows before it. element_type (host, rack, rack_pair, node_pair, unlocalized), element.",
};
/// The flaps of an open incident.
pub const INCIDENT_FLAPS: Family = Family {
    name: "flowmesh_incident_flaps",
    help: "Times an open incident cleared for at least one window and came back.",
};
/// How many anomalies are active (present even when 0).
pub const ACTIVE_ANOMALIES: Family = Family {
    name: "flowmesh_active_anomalies",
    help: "Anomalies active in the newest analyzed window.",
};
/// How many telemetry gaps are active (present even when 0).
pub const ACTIVE_GAPS: Family = Family {
    name: "flowmesh_active_telemetry_gaps",
    help: "Agents whose telemetry is missing or incomplete in the newest analyzed window.",
};
/// Probe loss per directed rack pair.
pub const RACK_PAIR_LOSS: Family = Family {
    name: "flowmesh_rack_pair_probe_loss_ratio",
    help: "Probes lost or failed over probes sent from src_rack to dst_rack in the newest analyzed window.",
};
/// p99 network RTT per directed rack pair.
pub const RACK_PAIR_RTT_P99: Family = Family {
    name: "flowmesh_rack_pair_rtt_p99_seconds",
    help: "Largest p99 network RTT among the paths from src_rack to dst_rack in the newest analyzed window.",
};
/// Probes per directed rack pair.
pub const RACK_PAIR_PROBES: Family = Family {
    name: "flowmesh_rack_pair_probes",
    help: "Probes with a known outcome from src_rack to dst_rack in the newest analyzed window.",
};
/// A named host's probe loss, worse direction.
pub const HOST_LOSS: Family = Family {
    name: "flowmesh_host_probe_loss_ratio",
    help: "Probe loss of a host an anomaly or telemetry gap names, in its worse direction (paths out of it or into it), newest analyzed window.",
};
/// A named host's p99 RTT.
pub const HOST_RTT_P99: Family = Family {
    name: "flowmesh_host_rtt_p99_seconds",
    help: "Largest p99 network RTT of the paths out of or into a host an anomaly or telemetry gap names, newest analyzed window.",
};
/// An agent's active telemetry gap.
pub const AGENT_GAP: Family = Family {
    name: "flowmesh_agent_telemetry_gap",
    help: "1 while an agent's telemetry is missing: state silent (nothing arrived), incomplete (datagrams missing) or no_telemetry (no row: its rack's sampler sent nothing).",
};
/// The received share over an active gap.
pub const AGENT_COMPLETENESS: Family = Family {
    name: "flowmesh_agent_telemetry_completeness_ratio",
    help: "Lowest share of an agent's datagrams received over its active telemetry gap.",
};
/// The end of the newest analyzed window.
pub const LAST_WINDOW_END: Family = Family {
    name: "flowmesh_analyzer_last_window_end_timestamp_seconds",
    help: "End of the newest window with judged paths, Unix time; 0 when none.",
};
/// Path windows judged in the newest window.
pub const JUDGED_PATHS: Family = Family {
    name: "flowmesh_analyzer_judged_paths",
    help: "Path windows judged in the newest analyzed window.",
};

/// Every family the page can hold, in page order (docs/analyzer.md lists
/// them; a test keeps the two in step).
pub const FAMILIES: &[Family] = &[
    ANOMALY_ACTIVE,
    ANOMALY_STARTED,
    ANOMALY_BAD_PATHS,
    ANOMALY_JUDGED_PATHS,
    INCIDENT_OPEN,
    INCIDENT_FLAPS,
    ACTIVE_ANOMALIES,
    ACTIVE_GAPS,
    RACK_PAIR_LOSS,
    RACK_PAIR_RTT_P99,
    RACK_PAIR_PROBES,
    HOST_LOSS,
    HOST_RTT_P99,
    AGENT_GAP,
    AGENT_COMPLETENESS,
    LAST_WINDOW_END,
    JUDGED_PATHS,
];

/// The label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// Series by family, rendered in [`FAMILIES`] order.
#[derive(Default)]
struct Page(BTreeMap<&'static str, BTreeMap<Labels, f64>>);

impl Page {
    fn set(&mut self, family: Family, labels: Labels, value: f64) {
        self.0.entry(family.name).or_default().insert(labels, value);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for family in FAMILIES {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} gauge", family.name);
            for (labels, value) in self.0.get(family.name).into_iter().flatten() {
                out.push_str(family.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (key, text)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{key}=\"{}\"", escape(text));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// A label value as the text format needs it.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Probe counts of a set of paths in one window.
#[derive(Default, Clone, Copy)]
struct Probes {
    sent: u64,
    bad: u64,
    rtt_p99_ns: u64,
    answered: u64,
}

impl Probes {
    fn add(&mut self, p: &PathWindow) {
        self.sent += p.probes_sent;
        self.bad += p.probes_lost + p.probes_failed;
        if p.probes_answered() > 0 {
            self.answered += p.probes_answered();
            self.rtt_p99_ns = self.rtt_p99_ns.max(p.rtt_p99_ns);
        }
    }

    fn loss(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.bad.min(self.sent) as f64 / self.sent as f64)
    }

    fn rtt_p99_seconds(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.rtt_p99_ns as f64 / 1e9)
    }
}

/// The `/metrics` page of one analysis: `latest` holds the path windows of
/// its newest judged window (`analysis.last_window_ns`; others are
/// ignored), the per-pair and per-host figures come from them.
pub fn exposition(analysis: &Analysis, latest: &[PathWindow], topology: &Topology, max_host_series: usize) -> String {
    let mut page = Page::default();
    let newest = analysis.last_window_ns;
    let latest: Vec<&PathWindow> = if analysis.windows == 0 {
        Vec::new()
    } else {
        latest.iter().filter(|p| p.window_ns == newest).collect()
    };
    let rack_name = |rack: u32| {
        topology
            .rack(rack)
            .map_or_else(|| format!("rack {rack}"), |r| r.name.clone())
    };

    // Anomalies active in the newest window, most severe first.
    let active: Vec<_> = analysis
        .anomalies
        .iter()
        .filter(|a| analysis.windows > 0 && a.last_window_ns == newest)
        .collect();
    let mut hosts: Vec<&str> = Vec::new();
    let mut summary: BTreeMap<Labels, (u64, usize, usize)> = BTreeMap::new();
    for a in &active {
        let element_type = if a.kind == "slow_host" { "host" } else { a.kind };
        let kinds: BTreeSet<&str> = if a.kind == "slow_host" {
            BTreeSet::from(["responder_delay"])
        } else {
            a.symptoms.keys().map(|l| symptom_kind(l)).collect()
        };
        let element = vec![
            ("element_type", element_type.to_string()),
            ("element", a.element.clone()),
        ];
        for kind in kinds {
            let mut labels = element.clone();
            labels.push(("kind", kind.to_string()));
            page.set(ANOMALY_ACTIVE, labels, 1.0);
        }
        // A host can be both a network and a slow-responder anomaly: one
        // series per element, the earlier start and the worse counts.
        let entry = summary.entry(element).or_insert((a.first_window_ns, 0, 0));
        entry.0 = entry.0.min(a.first_window_ns);
        if a.bad_paths > entry.1 {
            (entry.1, entry.2) = (a.bad_paths, a.paths);
        }
        if element_type == "host" {
            hosts.push(&a.element);
        }
    }
    for (labels, (first_ns, bad, judged)) in summary {
        page.set(ANOMALY_STARTED, labels.clone(), first_ns as f64 / 1e9);
        page.set(ANOMALY_BAD_PATHS, labels.clone(), bad as f64);
        page.set(ANOMALY_JUDGED_PATHS, labels, judged as f64);
    }
    page.set(ACTIVE_ANOMALIES, Vec::new(), active.len() as f64);

    // Open incidents, through their quiet windows. A host's network and
    // slow-responder incidents share a series: the larger flaps.
    let mut open: BTreeMap<Labels, u32> = BTreeMap::new();
    for i in analysis.incidents.iter().filter(|i| i.open) {
        let element_type = if i.kind == "slow_host" { "host" } else { i.kind };
        let labels = vec![
            ("element_type", element_type.to_string()),
            ("element", i.element.clone()),
        ];
        let flaps = open.entry(labels).or_default();
        *flaps = (*flaps).max(i.flaps);
    }
    for (labels, flaps) in open {
        page.set(INCIDENT_OPEN, labels.clone(), 1.0);
        page.set(INCIDENT_FLAPS, labels, f64::from(flaps));
    }

    // Telemetry gaps open in the newest window (for no telemetry, the one
    // before it).
    let open: Vec<_> = analysis.telemetry_gaps.iter().filter(|g| g.open).collect();
    // One per node (gaps come node by node, oldest first): the newer, when
    // a node without telemetry is silent in the newest window.
    let gaps: Vec<_> = open
        .chunk_by(|a, b| a.node == b.node)
        .filter_map(|same| same.last().copied())
        .collect();
    let node_by_name: BTreeMap<&str, &configs::Node> = topology.nodes().iter().map(|n| (n.name.as_str(), n)).collect();
    let host_labels = |name: &str| -> Labels {
        let rack = node_by_name.get(name).map_or_else(String::new, |n| rack_name(n.rack));
        vec![("host", name.to_string()), ("rack", rack)]
    };
    for g in &gaps {
        let mut labels = host_labels(&g.node);
        page.set(AGENT_COMPLETENESS, labels.clone(), g.min_completeness);
        labels.push(("state", g.state.label().to_string()));
        page.set(AGENT_GAP, labels, 1.0);
        hosts.push(&g.node);
    }
    page.set(ACTIVE_GAPS, Vec::new(), gaps.len() as f64);

    // Rack pairs, directed: racks² series at most.
    let mut pairs: BTreeMap<(u32, u32), Probes> = BTreeMap::new();
    for p in &latest {
        let (Some(src), Some(dst)) = (topology.node(p.src), topology.node(p.dst)) else {
            continue;
        };
        pairs.entry((src.rack, dst.rack)).or_default().add(p);
    }
    for ((src, dst), probes) in pairs {
        let labels = vec![("src_rack", rack_name(src)), ("dst_rack", rack_name(dst))];
        page.set(RACK_PAIR_PROBES, labels.clone(), probes.sent as f64);
        if let Some(loss) = probes.loss() {
            page.set(RACK_PAIR_LOSS, labels.clone(), loss);
        }
        if let Some(rtt) = probes.rtt_p99_seconds() {
            page.set(RACK_PAIR_RTT_P99, labels, rtt);
        }
    }

    // Hosts that an anomaly or a gap names, worst first, at most the limit.
    let mut seen = BTreeSet::new();
    hosts.retain(|h| seen.insert(*h));
    for host in hosts.into_iter().take(max_host_series) {
        let Some(node) = node_by_name.get(host) else {
            continue;
        };
        let (mut out, mut into) = (Probes::default(), Probes::default());
        for p in &latest {
            if p.src == node.id {
                out.add(p);
            }
            if p.dst == node.id {
                into.add(p);
            }
        }
        let labels = host_labels(host);
        if let Some(loss) = out.loss().into_iter().chain(into.loss()).reduce(f64::max) {
            page.set(HOST_LOSS, labels.clone(), loss);
        }
        if let Some(rtt) = out
            .rtt_p99_seconds()
            .into_iter()
            .chain(into.rtt_p99_seconds())
            .reduce(f64::max)
        {
            page.set(HOST_RTT_P99, labels, rtt);
        }
    }

    let end_ns = latest.first().map_or(newest, |p| newest + p.window_len_ns);
    let end = if analysis.windows == 0 {
        0.0
    } else {
        end_ns as f64 / 1e9
    };
    page.set(LAST_WINDOW_END, Vec::new(), end);
    page.set(JUDGED_PATHS, Vec::new(), analysis.last_window_judged_paths as f64);
    page.render()
}
