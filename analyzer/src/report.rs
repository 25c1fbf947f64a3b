//! The analysis of a time range and its renderings: a terminal table (most
//! severe first) and JSON (see docs/analyzer.md for the schema).

use std::collections::BTreeMap;
use std::io::Write;

use configs::{AnalyzerConfig, Topology};
use serde::Serialize;

use crate::detect::{self, Judged};
use crate::localize::{self, Verdict};
use crate::model::{AgentWindow, Observations, PathWindow};

/// Version of the JSON report's schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// A bad path window cited as evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathEvidence {
    /// Window start, ns.
    pub window_ns: u64,
    /// Source node name.
    pub src: String,
    /// Destination node name.
    pub dst: String,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probe loss rate, if probes were sent.
    pub loss_rate: Option<f64>,
    /// p99 network RTT, µs.
    pub rtt_p99_us: f64,
    /// p99 responder delay, µs.
    pub responder_delay_p99_us: f64,
    /// TCP retransmission rate, if segments were sent.
    pub retrans_rate: Option<f64>,
    /// What was wrong.
    pub symptoms: Vec<detect::Symptom>,
}

/// A candidate that scored below the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerUp {
    /// `host`, `rack` or `rack_pair`.
    pub kind: &'static str,
    /// Its name.
    pub element: String,
    /// Bad paths through it.
    pub bad_paths: usize,
    /// Judged paths through it.
    pub paths: usize,
    /// `bad_paths / paths`.
    pub share: f64,
}

impl PathEvidence {
    /// The loss rate as text, `-` when no probe was sent.
    pub fn loss_text(&self) -> String {
        self.loss_rate.map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
    }

    /// The retransmission rate as text, `-` when no segment was sent.
    pub fn retrans_text(&self) -> String {
        self.retrans_rate.map_or("-".into(), |r| format!("{:.2} %", r * 100.0))
    }
}

impl Anomaly {
    /// Its symptom counts as text: `loss ×48, rtt ×3`.
    pub fn symptom_summary(&self) -> String {
        let parts: Vec<String> = self.symptoms.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        parts.join(", ")
    }

    /// Its evidence in one line, as the table and the HTML report print it:
    /// `3 of 16 paths through it bad (19 %) at worst; 2 window(s) … → …; loss ×6`.
    pub fn evidence_line(&self) -> String {
        format!(
            "{} of {} paths through it bad ({:.0} %) at worst; {} window(s) {} → {}; {}",
            self.bad_paths,
            self.paths,
            self.share * 100.0,
            self.windows,
            utc(self.first_window_ns),
            utc(self.last_window_ns),
            self.symptom_summary()
        )
    }
}

impl std::fmt::Display for RunnerUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}/{} ({:.0} %)",
            self.kind,
            self.element,
            self.bad_paths,
            self.paths,
            self.share * 100.0
        )
    }
}

/// One anomaly: an element blamed over consecutive windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// `host`, `rack`, `rack_pair`, `slow_host` (responder delay, not the
    /// network) or `unlocalized`.
    pub kind: &'static str,
    /// The blamed element's name (`-` when unlocalized).
    pub element: String,
    /// First window it was seen in, ns.
    pub first_window_ns: u64,
    /// Last window it was seen in, ns.
    pub last_window_ns: u64,
    /// Windows it was seen in.
    pub windows: u32,
    /// Bad path windows it explains, summed over its windows.
    pub bad_path_windows: usize,
    /// Bad paths through it in its worst window (for a host scored by one
    /// direction, the bad paths into it or out of it).
    pub bad_paths: usize,
    /// Judged paths through it in its worst window (likewise).
    pub paths: usize,
    /// `bad_paths / paths`: the highest share of bad paths through it in a
    /// window.
    pub share: f64,
    /// Symptom counts over its bad path windows.
    pub symptoms: BTreeMap<&'static str, usize>,
    /// The worst of its bad path windows (at most five).
    pub worst: Vec<PathEvidence>,
    /// The runners-up in its worst window.
    pub runners_up: Vec<RunnerUp>,
}

/// An agent's telemetry gap over consecutive windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryGap {
    /// The node's name.
    pub node: String,
    /// First window, ns.
    pub first_window_ns: u64,
    /// Last window, ns.
    pub last_window_ns: u64,
    /// Windows affected.
    pub windows: u32,
    /// Whether it was silent (nothing arrived) in all of them.
    pub silent: bool,
    /// Lowest received share of its datagrams.
    pub min_completeness: f64,
}

/// The analysis of one time range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Range start, ns.
    pub from_ns: u64,
    /// Range end, ns.
    pub to_ns: u64,
    /// Windows with judged paths.
    pub windows: usize,
    /// Start of the newest window with judged paths, ns; 0 when none.
    pub last_window_ns: u64,
    /// Path windows judged.
    pub judged_paths: usize,
    /// Path windows judged in the newest window.
    pub last_window_judged_paths: usize,
    /// Anomalies, most severe first.
    pub anomalies: Vec<Anomaly>,
    /// Telemetry gaps. Silence is never read as health: a silent agent's
    /// own paths were not judged.
    pub telemetry_gaps: Vec<TelemetryGap>,
}

impl Analysis {
    /// Whether anything needs attention.
    pub fn found_anything(&self) -> bool {
        !self.anomalies.is_empty() || !self.telemetry_gaps.is_empty()
    }
}

/// Analyzes windows starting in `[from_ns, to_ns)`; `obs` may hold earlier
/// windows as RTT baseline history.
pub fn analyze(obs: &Observations, from_ns: u64, to_ns: u64, topology: &Topology, cfg: &AnalyzerConfig) -> Analysis {
    let sorted;
    let paths = if obs.paths.is_sorted_by_key(|p| p.window_ns) {
        &obs.paths[..]
    } else {
        sorted = {
            let mut p = obs.paths.clone();
            p.sort_by_key(|p| p.window_ns);
            p
        };
        &sorted[..]
    };
    let mut analyzer = Analyzer::new(from_ns, to_ns, topology, cfg);
    for window in paths.chunk_by(|a, b| a.window_ns == b.window_ns) {
        analyzer.window(window);
    }
    analyzer.finish(&obs.agents)
}

/// An analysis fed one window at a time, in time order, so a long range
/// need never be in memory at once.
pub struct Analyzer<'a> {
    from_ns: u64,
    to_ns: u64,
    topology: &'a Topology,
    cfg: &'a AnalyzerConfig,
    detector: detect::Detector<'a>,
    anomalies: Vec<Anomaly>,
    /// Open anomaly per key, for merging consecutive windows.
    open: BTreeMap<(&'static str, String), usize>,
    judged_paths: usize,
    last_window_judged_paths: usize,
    windows: usize,
    last_window_ns: u64,
}

impl<'a> Analyzer<'a> {
    /// An analysis of windows starting in `[from_ns, to_ns)`; windows before
    /// `from_ns` fed to it serve as RTT baseline history.
    pub fn new(from_ns: u64, to_ns: u64, topology: &'a Topology, cfg: &'a AnalyzerConfig) -> Analyzer<'a> {
        Analyzer {
            from_ns,
            to_ns,
            topology,
            cfg,
            detector: detect::Detector::new(&cfg.detect),
            anomalies: Vec::new(),
            open: BTreeMap::new(),
            judged_paths: 0,
            last_window_judged_paths: 0,
            windows: 0,
            last_window_ns: 0,
        }
    }

    /// Adds one window's path windows (all of one window, later than any
    /// added before).
    pub fn window(&mut self, window_paths: &[PathWindow]) {
        let Some(first) = window_paths.first() else {
            return;
        };
        let window = first.window_ns;
        let judged = self.detector.judge_window(window_paths);
        // Earlier windows only build the baselines.
        if window < self.from_ns || judged.is_empty() {
            return;
        }
        self.windows += 1;
        self.last_window_ns = window;
        self.judged_paths += judged.len();
        self.last_window_judged_paths = judged.len();
        self.localize(window, &judged);
    }

    fn localize(&mut self, window: u64, judged: &[Judged<'_>]) {
        let (topology, cfg) = (self.topology, self.cfg);
        let (anomalies, open) = (&mut self.anomalies, &mut self.open);
        let len = judged.first().map_or(0, |j| j.path.window_len_ns);
        let network = localize::localize(topology, judged, Judged::network_bad, &cfg.localize);
        let slow = localize::slow_responders(judged, &cfg.localize);
        for (verdict, slow_host) in network
            .into_iter()
            .map(|v| (v, false))
            .chain(slow.into_iter().map(|v| (v, true)))
        {
            let kind = match (&verdict.element, slow_host) {
                (_, true) => "slow_host",
                (Some(e), false) => e.kind(),
                (None, false) => "unlocalized",
            };
            let element = verdict.element.map_or_else(|| "-".to_string(), |e| e.name(topology));
            let key = (kind, element.clone());
            let evidence = evidence(topology, judged, &verdict);
            let share = verdict.score.map_or(1.0, |s| s.share);
            let paths = verdict.score.map_or(verdict.paths.len(), |s| s.paths);
            let bad = verdict.paths.len();
            let runners_up: Vec<RunnerUp> = verdict
                .runners_up
                .iter()
                .map(|s| RunnerUp {
                    kind: s.element.kind(),
                    element: s.element.name(topology),
                    bad_paths: s.bad,
                    paths: s.paths,
                    share: s.share,
                })
                .collect();
            let mut symptoms: BTreeMap<&'static str, usize> = BTreeMap::new();
            for &i in &verdict.paths {
                for s in &judged[i].symptoms {
                    if s.is_network() != slow_host {
                        *symptoms.entry(s.label()).or_default() += 1;
                    }
                }
            }
            match open.get(&key).map(|&i| &mut anomalies[i]) {
                Some(a) if a.last_window_ns + len == window => {
                    a.last_window_ns = window;
                    a.windows += 1;
                    a.bad_path_windows += bad;
                    for (label, n) in symptoms {
                        *a.symptoms.entry(label).or_default() += n;
                    }
                    if share > a.share || (share == a.share && paths > a.paths) {
                        a.share = share;
                        a.paths = paths;
                        a.bad_paths = bad;
                        a.runners_up = runners_up;
                    }
                    a.worst.extend(evidence);
                    sort_worst(&mut a.worst);
                }
                _ => {
                    open.insert(key, anomalies.len());
                    let mut worst = evidence;
                    sort_worst(&mut worst);
                    anomalies.push(Anomaly {
                        kind,
                        element,
                        first_window_ns: window,
                        last_window_ns: window,
                        windows: 1,
                        bad_path_windows: bad,
                        bad_paths: bad,
                        paths,
                        share,
                        symptoms,
                        worst,
                        runners_up,
                    });
                }
            }
        }
    }

    /// The analysis, with the telemetry gaps of `agents`.
    pub fn finish(mut self, agents: &[AgentWindow]) -> Analysis {
        // Most severe first: the most bad path windows explained, then the
        // clearest share.
        self.anomalies.sort_by(|x, y| {
            y.bad_path_windows
                .cmp(&x.bad_path_windows)
                .then(y.share.total_cmp(&x.share))
        });
        Analysis {
            schema_version: SCHEMA_VERSION,
            from_ns: self.from_ns,
            to_ns: self.to_ns,
            windows: self.windows,
            last_window_ns: self.last_window_ns,
            judged_paths: self.judged_paths,
            last_window_judged_paths: self.last_window_judged_paths,
            anomalies: self.anomalies,
            telemetry_gaps: gaps(self.topology, &detect::gaps(agents, self.from_ns, &self.cfg.detect)),
        }
    }
}

fn node_name(topology: &Topology, id: u32) -> String {
    match topology.node(id) {
        Some(n) => n.name.clone(),
        None if id == 0 => "outside".to_string(),
        None => format!("node {id}"),
    }
}

fn evidence(topology: &Topology, judged: &[Judged], verdict: &Verdict) -> Vec<PathEvidence> {
    verdict
        .paths
        .iter()
        .map(|&i| {
            let j = &judged[i];
            let p = j.path;
            PathEvidence {
                window_ns: p.window_ns,
                src: node_name(topology, p.src),
                dst: node_name(topology, p.dst),
                probes_sent: p.probes_sent,
                loss_rate: p.loss_rate(),
                rtt_p99_us: p.rtt_p99_ns as f64 / 1_000.0,
                responder_delay_p99_us: p.responder_delay_p99_ns as f64 / 1_000.0,
                retrans_rate: p.retrans_rate(),
                symptoms: j.symptoms.clone(),
            }
        })
        .collect()
}

fn sort_worst(worst: &mut Vec<PathEvidence>) {
    worst.sort_by(|x, y| {
        y.loss_rate
            .unwrap_or(0.0)
            .total_cmp(&x.loss_rate.unwrap_or(0.0))
            .then(y.rtt_p99_us.total_cmp(&x.rtt_p99_us))
            .then(y.retrans_rate.unwrap_or(0.0).total_cmp(&x.retrans_rate.unwrap_or(0.0)))
    });
    worst.truncate(5);
}

fn gaps(topology: &Topology, gaps: &[detect::Gap]) -> Vec<TelemetryGap> {
    let mut by_node: BTreeMap<u32, Vec<&detect::Gap>> = BTreeMap::new();
    for g in gaps {
        by_node.entry(g.node).or_default().push(g);
    }
    let mut out = Vec::new();
    for (node, mut list) in by_node {
        list.sort_by_key(|g| g.window_ns);
        let mut current: Option<TelemetryGap> = None;
        let mut previous = 0;
        for g in list {
            match &mut current {
                // Consecutive gap windows merge; the window length is the
                // spacing of the agent's rows.
                Some(c) if c.windows == 1 || g.window_ns - c.last_window_ns == previous => {
                    previous = g.window_ns - c.last_window_ns;
                    c.last_window_ns = g.window_ns;
                    c.windows += 1;
                    c.silent &= g.silent;
                    c.min_completeness = c.min_completeness.min(g.completeness);
                }
                _ => {
                    out.extend(current.take());
                    current = Some(TelemetryGap {
                        node: node_name(topology, node),
                        first_window_ns: g.window_ns,
                        last_window_ns: g.window_ns,
                        windows: 1,
                        silent: g.silent,
                        min_completeness: g.completeness,
                    });
                }
            }
        }
        out.extend(current);
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC for a time in ns since the Unix epoch.
pub fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), for days since 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

impl Analysis {
    /// The terminal report.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "flowmesh analysis {} → {} UTC: {} windows, {} path windows judged",
            utc(self.from_ns),
            utc(self.to_ns),
            self.windows,
            self.judged_paths
        )?;
        if self.anomalies.is_empty() {
            writeln!(out, "\nNo network anomalies.")?;
        } else {
            writeln!(out, "\nAnomalies, most severe first:")?;
        }
        for (n, a) in self.anomalies.iter().enumerate() {
            writeln!(
                out,
                "\n{}. {} {} — {}",
                n + 1,
                a.kind.replace('_', " ").to_uppercase(),
                a.element,
                a.evidence_line()
            )?;
            for w in &a.worst {
                writeln!(
                    out,
                    "     {} → {}: {} probes, loss {}, p99 RTT {:.0} µs, responder p99 {:.0} µs, retrans {}",
                    w.src,
                    w.dst,
                    w.probes_sent,
                    w.loss_text(),
                    w.rtt_p99_us,
                    w.responder_delay_p99_us,
                    w.retrans_text(),
                )?;
            }
            if !a.runners_up.is_empty() {
                let runners: Vec<String> = a.runners_up.iter().map(RunnerUp::to_string).collect();
                writeln!(out, "     runners-up: {}", runners.join("; "))?;
            }
        }
        if !self.telemetry_gaps.is_empty() {
            writeln!(out, "\nTelemetry gaps (not evidence of health):")?;
            for g in &self.telemetry_gaps {
                writeln!(
                    out,
                    "  {}: {} for {} window(s) {} → {}",
                    g.node,
                    if g.silent {
                        "silent".to_string()
                    } else {
                        format!("{:.0} % of datagrams received", g.min_completeness * 100.0)
                    },
                    g.windows,
                    utc(g.first_window_ns),
                    utc(g.last_window_ns)
                )?;
            }
        }
        Ok(())
    }
}

impl Analysis {
    /// What is wrong in the newest window analyzed: (kind, element) → a one
    /// line description. `watch` compares these between passes.
    pub fn active(&self) -> BTreeMap<(String, String), String> {
        let latest = self.last_window_ns;
        let mut out = BTreeMap::new();
        if self.windows == 0 {
            return out;
        }
        for a in self.anomalies.iter().filter(|a| a.last_window_ns == latest) {
            out.insert(
                (a.kind.to_string(), a.element.clone()),
                format!(
                    "{} of {} paths bad ({:.0} %) since {}; {}",
                    a.bad_paths,
                    a.paths,
                    a.share * 100.0,
                    utc(a.first_window_ns),
                    a.symptom_summary()
                ),
            );
        }
        for g in self.telemetry_gaps.iter().filter(|g| g.last_window_ns == latest) {
            let what = if g.silent {
                "silent".to_string()
            } else {
                format!("{:.0} % of datagrams", g.min_completeness * 100.0)
            };
            out.insert(
                ("telemetry_gap".to_string(), g.node.clone()),
                format!("{what} since {}", utc(g.first_window_ns)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_426_431 * 1_000_000_000), "2026-11-23 09:33:51");
    }
}
