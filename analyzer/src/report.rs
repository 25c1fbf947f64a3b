//! The analysis of a time range and its renderings: a terminal table (most
//! severe first) and JSON (see docs/analyzer.md for the schema). Its
//! anomalies are grouped into incidents by [`crate::incident`]; its
//! telemetry gaps are runs of one state (silent, incomplete, no telemetry)
//! of one agent.

use std::collections::BTreeMap;
use std::io::Write;

use configs::{AnalyzerConfig, Topology};
use serde::Serialize;

use crate::detect::{self, Judged};
use crate::incident::{self, Incident};
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
    /// `host`, `rack`, `rack_pair` or `node_pair`.
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

/// Symptom counts as text: `loss ×48, rtt ×3`.
pub(crate) fn symptom_summary(symptoms: &BTreeMap<&'static str, usize>) -> String {
    let parts: Vec<String> = symptoms.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    parts.join(", ")
}

/// `3 of 16 paths through it bad (19 %) at worst; 2 window(s) … → …; loss ×6`
/// from (bad, judged, share) in the worst window, the windows, the first
/// and last window starts and the symptom counts.
pub(crate) fn evidence_line(
    (bad, paths, share): (usize, usize, f64),
    windows: u32,
    (first_ns, last_ns): (u64, u64),
    symptoms: &BTreeMap<&'static str, usize>,
) -> String {
    format!(
        "{bad} of {paths} paths through it bad ({:.0} %) at worst; {windows} window(s) {} → {}; {}",
        share * 100.0,
        utc(first_ns),
        utc(last_ns),
        symptom_summary(symptoms)
    )
}

impl Anomaly {
    /// Its symptom counts as text: `loss ×48, rtt ×3`.
    pub fn symptom_summary(&self) -> String {
        symptom_summary(&self.symptoms)
    }

    /// Its evidence in one line, as the table and the HTML report print it:
    /// `3 of 16 paths through it bad (19 %) at worst; 2 window(s) … → …; loss ×6`.
    pub fn evidence_line(&self) -> String {
        evidence_line(
            (self.bad_paths, self.paths, self.share),
            self.windows,
            (self.first_window_ns, self.last_window_ns),
            &self.symptoms,
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
    /// `host`, `rack`, `rack_pair`, `node_pair`, `slow_host` (responder
    /// delay, not the network) or `unlocalized`.
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

/// What was missing of an agent's telemetry in a gap's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapState {
    /// Its rack's sampler marked it `SILENT`: nothing arrived from it.
    Silent,
    /// Fewer than `detect.min_completeness` of its datagrams arrived.
    Incomplete,
    /// No row at all — its rack's sampler sent nothing for a window the
    /// other racks sent (down, restarting, cut off) — or the sampler does
    /// not know the agent.
    NoTelemetry,
}

impl GapState {
    /// As in the JSON report and the metrics' `state` label.
    pub fn label(self) -> &'static str {
        match self {
            GapState::Silent => "silent",
            GapState::Incomplete => "incomplete",
            GapState::NoTelemetry => "no_telemetry",
        }
    }

    /// For people, without the completeness.
    pub fn describe(self) -> &'static str {
        match self {
            GapState::Silent => "silent",
            GapState::Incomplete => "incomplete",
            GapState::NoTelemetry => "no telemetry (no row from its rack's sampler)",
        }
    }
}

/// An agent's telemetry gap: consecutive windows of one [`GapState`]. A
/// silent window and an incomplete one next to it are two gaps, so the
/// silence stays visible.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryGap {
    /// The node's name.
    pub node: String,
    /// Its rack's name (empty for a node outside the topology).
    pub rack: String,
    /// First window, ns.
    pub first_window_ns: u64,
    /// Last window, ns.
    pub last_window_ns: u64,
    /// Windows affected.
    pub windows: u32,
    /// Whether it was silent (nothing arrived, as its sampler says): `state`
    /// is `silent`. Kept for readers of the first JSON reports.
    pub silent: bool,
    /// Lowest received share of its datagrams (1 when silent and nothing is
    /// known, 0 with no telemetry).
    pub min_completeness: f64,
    /// Silent, incomplete or no telemetry.
    pub state: GapState,
    /// It lasts to the newest window analyzed — for no telemetry, to the
    /// window before it, the newest not being checked for missing rows.
    pub open: bool,
}

impl TelemetryGap {
    /// What was missing, for people: `silent`, `41 % of datagrams
    /// received`, `no telemetry (…)`.
    pub fn describe(&self) -> String {
        match self.state {
            GapState::Incomplete => format!("{:.0} % of datagrams received", self.min_completeness * 100.0),
            state => state.describe().to_string(),
        }
    }
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
    /// Length of a window, ns; 0 when no window was read.
    pub window_len_ns: u64,
    /// `incidents.quiet_windows`: clean windows in a row that end an
    /// incident.
    pub quiet_windows: u32,
    /// Anomalies, most severe first: one per run of consecutive windows.
    pub anomalies: Vec<Anomaly>,
    /// The anomalies grouped into incidents, most severe first.
    pub incidents: Vec<Incident>,
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
    /// Per anomaly, the ordinals of its first and last window among the
    /// windows with judged paths (1 for the first): incidents count the
    /// clean windows between anomalies with them.
    spans: Vec<(usize, usize)>,
    /// Open anomaly per key, for merging consecutive windows.
    open: BTreeMap<(&'static str, String), usize>,
    judged_paths: usize,
    last_window_judged_paths: usize,
    windows: usize,
    last_window_ns: u64,
    window_len_ns: u64,
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
            spans: Vec::new(),
            open: BTreeMap::new(),
            judged_paths: 0,
            last_window_judged_paths: 0,
            windows: 0,
            last_window_ns: 0,
            window_len_ns: 0,
        }
    }

    /// Adds one window's path windows (all of one window, later than any
    /// added before).
    pub fn window(&mut self, window_paths: &[PathWindow]) {
        let Some(first) = window_paths.first() else {
            return;
        };
        let window = first.window_ns;
        self.window_len_ns = first.window_len_ns;
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
        let (anomalies, spans, open) = (&mut self.anomalies, &mut self.spans, &mut self.open);
        let ordinal = self.windows;
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
            let key = (kind, incident::identity(kind, &element).into_owned());
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
            match open.get(&key).copied() {
                Some(i) if anomalies[i].last_window_ns + len == window => {
                    let a = &mut anomalies[i];
                    a.element = incident::merged_name(kind, &a.element, &element);
                    spans[i].1 = ordinal;
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
                    spans.push((ordinal, ordinal));
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
        // Grouped before the anomalies are sorted: in the order found, each
        // element's anomalies come oldest first.
        let quiet_windows = self.cfg.incidents.quiet_windows;
        let incidents = incident::group(
            &self.anomalies,
            &self.spans,
            self.windows,
            self.window_len_ns,
            quiet_windows,
        );
        let newest = (self.windows > 0).then_some(self.last_window_ns);
        let telemetry_gaps = gaps(
            self.topology,
            agents,
            self.from_ns,
            &self.cfg.detect,
            self.window_len_ns,
            newest,
        );
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
            window_len_ns: self.window_len_ns,
            quiet_windows,
            anomalies: self.anomalies,
            incidents,
            telemetry_gaps,
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

/// The worst five path windows, worst first.
pub(crate) fn sort_worst(worst: &mut Vec<PathEvidence>) {
    worst.sort_by(|x, y| {
        y.loss_rate
            .unwrap_or(0.0)
            .total_cmp(&x.loss_rate.unwrap_or(0.0))
            .then(y.rtt_p99_us.total_cmp(&x.rtt_p99_us))
            .then(y.retrans_rate.unwrap_or(0.0).total_cmp(&x.retrans_rate.unwrap_or(0.0)))
    });
    worst.truncate(5);
}

/// The telemetry gaps of `agents` from `from_ns` on: each agent's runs of
/// consecutive windows of one state. `newest` is the newest window with
/// judged paths (`None`: none, and no gap is open).
fn gaps(
    topology: &Topology,
    agents: &[AgentWindow],
    from_ns: u64,
    cfg: &configs::Detection,
    window_len_ns: u64,
    newest: Option<u64>,
) -> Vec<TelemetryGap> {
    // (node, window, state, completeness)
    let mut found: Vec<(u32, u64, GapState, f64)> = detect::gaps(agents, from_ns, cfg)
        .iter()
        .map(|g| {
            let state = if g.silent {
                GapState::Silent
            } else {
                GapState::Incomplete
            };
            (g.node, g.window_ns, state, g.completeness)
        })
        .collect();

    // Nodes without a row in a window others have rows for. Not in the
    // newest window: the other samplers' batches for it may be on their way
    // still, and a gap that vanishes at the next pass is noise.
    let mut rows: Vec<(u64, u32)> = agents
        .iter()
        .filter(|a| a.window_ns >= from_ns)
        .map(|a| (a.window_ns, a.node))
        .collect();
    rows.sort_unstable();
    rows.dedup();
    let windows: Vec<&[(u64, u32)]> = rows.chunk_by(|a, b| a.0 == b.0).collect();
    if let Some((_, checked)) = windows.split_last() {
        for window in checked {
            for node in topology.nodes() {
                if window.binary_search_by_key(&node.id, |r| r.1).is_err() {
                    found.push((node.id, window[0].0, GapState::NoTelemetry, 0.0));
                }
            }
        }
    }
    // The window length: the path windows', else the agent windows'
    // spacing.
    let len = if window_len_ns > 0 {
        window_len_ns
    } else {
        windows.windows(2).map(|w| w[1][0].0 - w[0][0].0).min().unwrap_or(0)
    };

    found.sort_by_key(|&(node, window, ..)| (node, window));
    let mut out: Vec<TelemetryGap> = Vec::new();
    let mut previous: Option<(u32, GapState)> = None;
    for (node, window, state, completeness) in found {
        match out.last_mut() {
            // Consecutive windows of one state merge.
            Some(g) if previous == Some((node, state)) && len > 0 && window == g.last_window_ns + len => {
                g.last_window_ns = window;
                g.windows += 1;
                g.min_completeness = g.min_completeness.min(completeness);
            }
            _ => out.push(TelemetryGap {
                node: node_name(topology, node),
                rack: topology
                    .node(node)
                    .and_then(|n| topology.rack(n.rack))
                    .map_or_else(String::new, |r| r.name.clone()),
                first_window_ns: window,
                last_window_ns: window,
                windows: 1,
                silent: state == GapState::Silent,
                min_completeness: completeness,
                state,
                open: false,
            }),
        }
        previous = Some((node, state));
    }
    if let Some(newest) = newest {
        for g in &mut out {
            let reach = if g.state == GapState::NoTelemetry { len } else { 0 };
            g.open = g.last_window_ns + reach >= newest;
        }
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
    /// The terminal report: incidents, most severe first, each with its
    /// runs when it has several, its worst path windows and runners-up;
    /// then the telemetry gaps.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "flowmesh analysis {} → {} UTC: {} windows, {} path windows judged",
            utc(self.from_ns),
            utc(self.to_ns),
            self.windows,
            self.judged_paths
        )?;
        if self.incidents.is_empty() {
            writeln!(out, "\nNo network anomalies.")?;
        } else {
            writeln!(out, "\nIncidents, most severe first:")?;
        }
        for (n, i) in self.incidents.iter().enumerate() {
            writeln!(
                out,
                "\n{}. {} {} — {}",
                n + 1,
                i.kind.replace('_', " ").to_uppercase(),
                i.element,
                i.evidence_line()
            )?;
            writeln!(out, "     {}", i.course(self.quiet_windows))?;
            if i.runs.len() > 1 {
                for (k, r) in i.runs.iter().enumerate() {
                    let after = match r.clean_windows_before {
                        0 => String::new(),
                        n => format!(" after {n} clean window(s)"),
                    };
                    writeln!(
                        out,
                        "     run {}: {} → {}, {} window(s){after}; {} of {} paths bad ({:.0} %); {}",
                        k + 1,
                        utc(r.first_window_ns),
                        utc(r.last_window_ns),
                        r.windows,
                        r.bad_paths,
                        r.paths,
                        r.share * 100.0,
                        symptom_summary(&r.symptoms)
                    )?;
                }
            }
            for w in &i.worst {
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
            if !i.runners_up.is_empty() {
                let runners: Vec<String> = i.runners_up.iter().map(RunnerUp::to_string).collect();
                writeln!(out, "     runners-up: {}", runners.join("; "))?;
            }
        }
        if !self.telemetry_gaps.is_empty() {
            writeln!(out, "\nTelemetry gaps (not evidence of health):")?;
            for g in &self.telemetry_gaps {
                writeln!(
                    out,
                    "  {}: {} for {} window(s) {} → {}{}",
                    g.node,
                    g.describe(),
                    g.windows,
                    utc(g.first_window_ns),
                    utc(g.last_window_ns),
                    if g.open { " (open)" } else { "" }
                )?;
            }
        }
        Ok(())
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
