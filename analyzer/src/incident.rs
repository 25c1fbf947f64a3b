//! Incidents: the anomalies of one element grouped across the clean windows
//! between them, so that a host flapping down and up is one incident with
//! its flaps, not a new anomaly per blip (`group`); and what `watch`
//! remembers between passes to print an incident's start, its changes and
//! its end ([`Watch`]).
//!
//! The rule: an anomaly (a run of consecutive windows blaming one element,
//! of one kind) joins the element's previous incident when fewer than
//! `incidents.quiet_windows` clean windows separate them; a clean window is
//! one with judged paths in which the element was not blamed (a window with
//! nothing judged is no evidence of health and counts for nothing). An
//! incident ends once `quiet_windows` clean windows have followed its last
//! bad window; until then it is open. Grouping walks the anomalies once, in
//! the order they were found: its cost is in anomalies, not path windows.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::report::{Analysis, Anomaly, GapState, PathEvidence, RunnerUp, evidence_line, sort_worst, utc};

/// One run of an incident: an anomaly, consecutive windows in which its
/// element was blamed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// First window, ns.
    pub first_window_ns: u64,
    /// Last window, ns.
    pub last_window_ns: u64,
    /// Windows it spans.
    pub windows: u32,
    /// Clean windows between the previous run and this one (0 for the
    /// first run; 0 too after windows with nothing judged).
    pub clean_windows_before: u32,
    /// Bad path windows it explains, summed over its windows.
    pub bad_path_windows: usize,
    /// Bad paths through the element in the run's worst window.
    pub bad_paths: usize,
    /// Judged paths through the element in that window.
    pub paths: usize,
    /// `bad_paths / paths`.
    pub share: f64,
    /// Symptom counts over its bad path windows.
    pub symptoms: BTreeMap<&'static str, usize>,
}

/// An element's anomalies separated by fewer than `quiet_windows` clean
/// windows: one incident, however often it flapped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Its anomalies' kind: `host`, `rack`, `rack_pair`, `slow_host`, …
    pub kind: &'static str,
    /// The blamed element's name (`-` when unlocalized).
    pub element: String,
    /// Start of its first bad window, ns.
    pub start_ns: u64,
    /// Start of its last bad window, ns.
    pub last_window_ns: u64,
    /// End of its last bad window, ns; `None` while it is open.
    pub end_ns: Option<u64>,
    /// Fewer than `quiet_windows` clean windows have followed its last bad
    /// window: it may still come back as part of this incident.
    pub open: bool,
    /// Bad windows (the windows of its runs).
    pub windows: u32,
    /// Clean windows between its runs.
    pub clean_windows: u32,
    /// Windows analyzed after its last bad window, up to the newest: all
    /// clean while it is open (it ends when they reach `quiet_windows`).
    pub windows_since: u32,
    /// Times it cleared (for at least one clean window) and came back.
    pub flaps: u32,
    /// Bad path windows it explains, summed over its runs.
    pub bad_path_windows: usize,
    /// Bad paths through the element in its worst window.
    pub bad_paths: usize,
    /// Judged paths through the element in that window.
    pub paths: usize,
    /// `bad_paths / paths`: the highest share of bad paths through it in a
    /// window.
    pub share: f64,
    /// Symptom counts over all its bad path windows.
    pub symptoms: BTreeMap<&'static str, usize>,
    /// Its runs, oldest first.
    pub runs: Vec<Run>,
    /// The worst of its bad path windows over all its runs (at most five).
    pub worst: Vec<PathEvidence>,
    /// The runners-up in its worst window.
    pub runners_up: Vec<RunnerUp>,
}

impl Run {
    fn of(a: &Anomaly, clean_windows_before: u32) -> Run {
        Run {
            first_window_ns: a.first_window_ns,
            last_window_ns: a.last_window_ns,
            windows: a.windows,
            clean_windows_before,
            bad_path_windows: a.bad_path_windows,
            bad_paths: a.bad_paths,
            paths: a.paths,
            share: a.share,
            symptoms: a.symptoms.clone(),
        }
    }
}

impl Incident {
    fn of(a: &Anomaly) -> Incident {
        Incident {
            kind: a.kind,
            element: a.element.clone(),
            start_ns: a.first_window_ns,
            last_window_ns: a.last_window_ns,
            end_ns: None,
            open: true,
            windows: a.windows,
            clean_windows: 0,
            windows_since: 0,
            flaps: 0,
            bad_path_windows: a.bad_path_windows,
            bad_paths: a.bad_paths,
            paths: a.paths,
            share: a.share,
            symptoms: a.symptoms.clone(),
            runs: vec![Run::of(a, 0)],
            worst: a.worst.clone(),
            runners_up: a.runners_up.clone(),
        }
    }

    /// Adds the element's next anomaly, `clean` clean windows after the
    /// last.
    fn add(&mut self, a: &Anomaly, clean: u32) {
        self.element = merged_name(self.kind, &self.element, &a.element);
        self.last_window_ns = a.last_window_ns;
        self.windows += a.windows;
        self.clean_windows += clean;
        self.flaps += u32::from(clean > 0);
        self.bad_path_windows += a.bad_path_windows;
        for (&label, &n) in &a.symptoms {
            *self.symptoms.entry(label).or_default() += n;
        }
        if a.share > self.share || (a.share == self.share && a.paths > self.paths) {
            self.share = a.share;
            self.paths = a.paths;
            self.bad_paths = a.bad_paths;
            self.runners_up.clone_from(&a.runners_up);
        }
        self.worst.extend(a.worst.iter().cloned());
        sort_worst(&mut self.worst);
        self.runs.push(Run::of(a, clean));
    }

    /// Its symptom counts as text: `loss ×48, rtt ×3`.
    pub fn symptom_summary(&self) -> String {
        crate::report::symptom_summary(&self.symptoms)
    }

    /// Its evidence in one line, as an anomaly's: `3 of 16 paths through it
    /// bad (19 %) at worst; 2 window(s) … → …; loss ×6`, the windows its
    /// bad ones.
    pub fn evidence_line(&self) -> String {
        evidence_line(
            (self.bad_paths, self.paths, self.share),
            self.windows,
            (self.start_ns, self.last_window_ns),
            &self.symptoms,
        )
    }

    /// Its course in one line: when it started and ended (or that it is
    /// still open), its runs and flaps.
    pub fn course(&self, quiet_windows: u32) -> String {
        let state = match self.end_ns {
            Some(end) => format!("{} → {} (ended)", utc(self.start_ns), utc(end)),
            None => format!("since {}", utc(self.start_ns)),
        };
        let open = match (self.open, self.windows_since) {
            (false, _) => String::new(),
            (true, 0) => "; open: bad in the newest window".to_string(),
            (true, n) => format!("; open: clean for {n} of {quiet_windows} window(s)"),
        };
        format!(
            "incident {state}: {} bad window(s) in {} run(s), flapped {} time(s){open}",
            self.windows,
            self.runs.len(),
            self.flaps
        )
    }

    /// The kinds of symptom it showed: `loss`, `rtt`, `retransmissions`,
    /// `responder_delay` (baseline variants fold into their kind).
    pub fn symptom_kinds(&self) -> BTreeSet<&'static str> {
        self.symptoms.keys().map(|label| symptom_kind(label)).collect()
    }
}

/// The kind of symptom a detector label belongs to: baseline variants are
/// the same kind.
pub fn symptom_kind(label: &str) -> &'static str {
    match label {
        "loss" | "loss_baseline" | "loss_pooled" => "loss",
        "retransmissions" | "retransmissions_baseline" => "retransmissions",
        "rtt" | "rtt_baseline" => "rtt",
        "responder_delay" => "responder_delay",
        _ => "other",
    }
}

/// Groups `anomalies` — in the order they were found, `spans[i]` the
/// ordinals (1 for the first window with judged paths) of anomaly `i`'s
/// first and last window — into incidents, most severe first. `windows` is
/// the ordinal of the newest window analyzed.
pub(crate) fn group(
    anomalies: &[Anomaly],
    spans: &[(usize, usize)],
    windows: usize,
    window_len_ns: u64,
    quiet_windows: u32,
) -> Vec<Incident> {
    let quiet = usize::try_from(quiet_windows.max(1)).unwrap_or(usize::MAX);
    let close = |incident: &mut Incident, last: usize| {
        let since = windows.saturating_sub(last);
        incident.windows_since = u32::try_from(since).unwrap_or(u32::MAX);
        incident.open = since < quiet;
        incident.end_ns = (!incident.open).then(|| incident.last_window_ns + window_len_ns);
    };
    let mut incidents: Vec<Incident> = Vec::new();
    // Per element: its latest incident, and the ordinal of that incident's
    // last bad window.
    let mut latest: FxHashMap<(&'static str, Cow<'_, str>), (usize, usize)> = FxHashMap::default();
    for (a, &(first, last)) in anomalies.iter().zip(spans) {
        let key = (a.kind, identity(a.kind, &a.element));
        match latest.get_mut(&key) {
            Some((i, previous)) if first.saturating_sub(*previous + 1) < quiet => {
                let clean = first.saturating_sub(*previous + 1);
                incidents[*i].add(a, u32::try_from(clean).unwrap_or(u32::MAX));
                *previous = last;
            }
            found => {
                // The element's previous incident, if any, is over.
                if let Some((i, previous)) = found {
                    close(&mut incidents[*i], *previous);
                }
                latest.insert(key, (incidents.len(), last));
                incidents.push(Incident::of(a));
            }
        }
    }
    for (i, last) in latest.into_values() {
        close(&mut incidents[i], last);
    }
    // Most severe first, as anomalies: the most bad path windows, then the
    // clearest share.
    incidents.sort_by(|x, y| {
        y.bad_path_windows
            .cmp(&x.bad_path_windows)
            .then(y.share.total_cmp(&x.share))
    });
    incidents
}

/// The identity of an element across windows: its name, except that a node
/// pair is one element whichever direction TCP showed (`r1n2→r3n2`,
/// `r3n2→r1n2` and `r1n2↔r3n2` are all `r1n2↔r3n2`), so a pair whose
/// direction is seen in some windows and not in others is one anomaly and
/// one incident, not several.
pub(crate) fn identity<'a>(kind: &str, element: &'a str) -> Cow<'a, str> {
    if kind != "node_pair" {
        return Cow::Borrowed(element);
    }
    match element.split_once(['→', '↔']) {
        Some((a, b)) if a <= b => Cow::Owned(format!("{a}↔{b}")),
        Some((a, b)) => Cow::Owned(format!("{b}↔{a}")),
        None => Cow::Borrowed(element),
    }
}

/// The name of one element (same [`identity`]) seen as `current` so far and
/// as `new` in its latest window: a direction once TCP shows one, and
/// undirected again if two windows showed opposite directions.
pub(crate) fn merged_name(kind: &str, current: &str, new: &str) -> String {
    let directed = |name: &str| name.contains('→');
    match (directed(current), directed(new)) {
        _ if current == new => current.to_string(),
        (true, true) => identity(kind, current).into_owned(),
        (true, false) => current.to_string(),
        (false, _) => new.to_string(),
    }
}

/// A line `watch` prints: an incident or a telemetry gap started, changed
/// or ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub transition: Transition,
    /// The incident's kind (`host`, …, `slow_host`), or `telemetry_gap`.
    pub kind: String,
    /// The element or node.
    pub element: String,
    /// What it is, for people.
    pub detail: String,
}

/// What happened to an incident or a telemetry gap between two passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It opened.
    Start,
    /// It flapped back, showed a new kind of symptom, or got materially
    /// worse (a gap: its state changed).
    Change,
    /// It ended (an incident: after `quiet_windows` clean windows).
    End,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.transition {
            Transition::Start => "START",
            Transition::Change => "CHANGE",
            Transition::End => "END",
        };
        write!(f, "{verb:<7} {} {}: {}", self.kind, self.element, self.detail)
    }
}

/// A rise of an incident's worst share at least this large is a change
/// worth a line (60 % of a host's paths bad becoming 80 %).
pub const MATERIAL_SHARE: f64 = 0.2;

/// What `watch` knows of an open incident.
#[derive(Debug, Clone)]
struct Followed {
    start_ns: u64,
    last_window_ns: u64,
    /// Start of its newest run seen.
    last_run_ns: u64,
    windows: u32,
    flaps: u32,
    kinds: BTreeSet<&'static str>,
    share: f64,
}

/// `watch`'s memory between passes: the incidents and telemetry gaps open
/// at the previous pass. Each pass analyzes a sliding range afresh;
/// comparing with this turns the analyses into START, CHANGE and END lines
/// — one START and one END per incident, however often it flaps.
#[derive(Debug, Default)]
pub struct Watch {
    incidents: BTreeMap<(&'static str, String), Followed>,
    /// Per node: the open gap's state, first window and rack.
    gaps: BTreeMap<String, (GapState, u64, String)>,
}

impl Watch {
    /// What changed since the previous pass, given this pass's analysis.
    pub fn pass(&mut self, analysis: &Analysis) -> Vec<Event> {
        let mut events = Vec::new();
        let open: BTreeMap<(&'static str, Cow<'_, str>), &Incident> = analysis
            .incidents
            .iter()
            .filter(|i| i.open)
            .map(|i| ((i.kind, identity(i.kind, &i.element)), i))
            .collect();
        // Ended: no longer open, or replaced by a later incident of the same
        // element (it ended and another began between two passes).
        self.incidents.retain(|(kind, element), f| {
            let ended = open
                .get(&(*kind, Cow::Borrowed(element.as_str())))
                .is_none_or(|i| i.start_ns > f.last_window_ns);
            if ended {
                // The analysis's record of its end, while still in range.
                let record = analysis.incidents.iter().find(|i| {
                    !i.open
                        && i.kind == *kind
                        && identity(i.kind, &i.element) == element.as_str()
                        && i.last_window_ns >= f.last_window_ns
                });
                let end = record
                    .and_then(|i| i.end_ns)
                    .unwrap_or(f.last_window_ns + analysis.window_len_ns);
                let windows = record.map_or(f.windows, |i| i.windows.max(f.windows));
                let flaps = record.map_or(f.flaps, |i| i.flaps.max(f.flaps));
                events.push(Event {
                    transition: Transition::End,
                    kind: kind.to_string(),
                    element: element.clone(),
                    detail: format!(
                        "{} → {}, {windows} bad window(s), {flaps} flap(s)",
                        utc(f.start_ns),
                        utc(end)
                    ),
                });
            }
            !ended
        });
        for i in analysis.incidents.iter().filter(|i| i.open) {
            let now = format!(
                "{} of {} paths bad ({:.0} %); {}",
                i.bad_paths,
                i.paths,
                i.share * 100.0,
                i.symptom_summary()
            );
            let last_run_ns = i.runs.last().map_or(i.start_ns, |r| r.first_window_ns);
            let key = (i.kind, identity(i.kind, &i.element).into_owned());
            let Some(f) = self.incidents.get_mut(&key) else {
                events.push(Event {
                    transition: Transition::Start,
                    kind: i.kind.to_string(),
                    element: i.element.clone(),
                    detail: format!(
                        "{} of {} paths bad ({:.0} %) since {}; {}",
                        i.bad_paths,
                        i.paths,
                        i.share * 100.0,
                        utc(i.start_ns),
                        i.symptom_summary()
                    ),
                });
                self.incidents.insert(
                    key,
                    Followed {
                        start_ns: i.start_ns,
                        last_window_ns: i.last_window_ns,
                        last_run_ns,
                        windows: i.windows,
                        flaps: i.flaps,
                        kinds: i.symptom_kinds(),
                        share: i.share,
                    },
                );
                continue;
            };
            let mut changes = Vec::new();
            // Runs begun since the last pass after a clean window: flaps.
            for run in i
                .runs
                .iter()
                .filter(|r| r.first_window_ns > f.last_run_ns && r.clean_windows_before > 0)
            {
                f.flaps += 1;
                changes.push(format!(
                    "flapped back (flap {}) at {} after {} clean window(s)",
                    f.flaps,
                    utc(run.first_window_ns),
                    run.clean_windows_before
                ));
            }
            let kinds = i.symptom_kinds();
            let new: Vec<&str> = kinds.difference(&f.kinds).copied().collect();
            if !new.is_empty() {
                changes.push(format!("now also {}", new.join(", ")));
                f.kinds.extend(new);
            }
            if i.share >= f.share + MATERIAL_SHARE {
                changes.push(format!(
                    "worse: {:.0} % of its paths bad (was {:.0} %)",
                    i.share * 100.0,
                    f.share * 100.0
                ));
                f.share = i.share;
            }
            // Bad windows since the last pass, counted here: the range
            // slides, and the windows before it fall out of the analysis,
            // not out of the incident.
            let len = analysis.window_len_ns.max(1);
            let added: u64 = i
                .runs
                .iter()
                .map(|r| {
                    if r.first_window_ns > f.last_window_ns {
                        u64::from(r.windows)
                    } else {
                        r.last_window_ns.saturating_sub(f.last_window_ns) / len
                    }
                })
                .sum();
            f.windows = f.windows.saturating_add(u32::try_from(added).unwrap_or(u32::MAX));
            f.last_window_ns = f.last_window_ns.max(i.last_window_ns);
            f.last_run_ns = f.last_run_ns.max(last_run_ns);
            if !changes.is_empty() {
                events.push(Event {
                    transition: Transition::Change,
                    kind: i.kind.to_string(),
                    element: i.element.clone(),
                    detail: format!("{}; {now}", changes.join("; ")),
                });
            }
        }
        self.gap_events(analysis, &mut events);
        events
    }

    /// Telemetry gaps start and end with the windows they cover (no quiet
    /// windows): a gap is a fact about the data, not a verdict that flaps.
    /// Nodes of one rack whose gaps start, change or end alike (a rack's
    /// sampler down: every agent of it without telemetry) are one line
    /// naming the rack and its nodes, not a line per node.
    fn gap_events(&mut self, analysis: &Analysis, events: &mut Vec<Event>) {
        let mut open: BTreeMap<&str, &crate::report::TelemetryGap> = BTreeMap::new();
        for g in analysis.telemetry_gaps.iter().filter(|g| g.open) {
            let entry = open.entry(g.node.as_str()).or_insert(g);
            if g.last_window_ns > entry.last_window_ns {
                *entry = g;
            }
        }
        // (transition, rack, detail) → nodes, in the order first seen.
        let mut lines: Vec<((Transition, String, String), Vec<String>)> = Vec::new();
        let mut line = |transition: Transition, node: &str, rack: &str, detail: String| {
            let key = (transition, rack.to_string(), detail);
            match lines.iter_mut().find(|(k, _)| !key.1.is_empty() && *k == key) {
                Some((_, nodes)) => nodes.push(node.to_string()),
                None => lines.push((key, vec![node.to_string()])),
            }
        };
        self.gaps.retain(|node, (state, first, rack)| {
            let gone = !open.contains_key(node.as_str());
            if gone {
                line(
                    Transition::End,
                    node,
                    rack,
                    format!("{} since {}", state.describe(), utc(*first)),
                );
            }
            !gone
        });
        for (node, g) in open {
            let what = format!("{} since {}", g.describe(), utc(g.first_window_ns));
            let now = (g.state, g.first_window_ns, g.rack.clone());
            match self.gaps.insert(node.to_string(), now) {
                None => line(Transition::Start, node, &g.rack, what),
                Some((state, ..)) if state != g.state => line(Transition::Change, node, &g.rack, format!("now {what}")),
                Some((state, first, rack)) => {
                    // Same state: keep when it began.
                    self.gaps
                        .insert(node.to_string(), (state, first.min(g.first_window_ns), rack));
                }
            }
        }
        for ((transition, rack, detail), nodes) in lines {
            let element = match nodes.as_slice() {
                [node] => node.clone(),
                nodes => format!("{rack} ({})", nodes.join(", ")),
            };
            events.push(Event {
                transition,
                kind: "telemetry_gap".to_string(),
                element,
                detail,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TelemetryGap;

    const W: u64 = 10;

    /// An anomaly of `element` in windows `first..=last` (ordinals and
    /// window starts alike, windows of length `W`).
    fn anomaly(kind: &'static str, element: &str, first: usize, last: usize) -> (Anomaly, (usize, usize)) {
        let windows = u32::try_from(last - first + 1).unwrap_or(0);
        let a = Anomaly {
            kind,
            element: element.to_string(),
            first_window_ns: first as u64 * W,
            last_window_ns: last as u64 * W,
            windows,
            bad_path_windows: 4 * windows as usize,
            bad_paths: 4,
            paths: 8,
            share: 0.5,
            symptoms: BTreeMap::from([("loss", 4 * windows as usize)]),
            worst: Vec::new(),
            runners_up: Vec::new(),
        };
        (a, (first, last))
    }

    fn grouped(list: &[(Anomaly, (usize, usize))], windows: usize, quiet: u32) -> Vec<Incident> {
        let anomalies: Vec<Anomaly> = list.iter().map(|(a, _)| a.clone()).collect();
        let spans: Vec<(usize, usize)> = list.iter().map(|(_, s)| *s).collect();
        group(&anomalies, &spans, windows, W, quiet)
    }

    #[test]
    fn runs_fewer_than_quiet_windows_apart_are_one_incident() {
        // Bad in 1–2, 4 and 8; windows 1 to 12 analyzed.
        let list = [
            anomaly("host", "r1n1", 1, 2),
            anomaly("host", "r1n1", 4, 4),
            anomaly("host", "r1n1", 8, 8),
        ];
        let incidents = grouped(&list, 12, 3);
        assert_eq!(incidents.len(), 2, "{incidents:#?}");
        let first = incidents.iter().find(|i| i.start_ns == W).unwrap();
        assert_eq!((first.windows, first.flaps, first.clean_windows), (3, 1, 1));
        assert_eq!(first.runs.len(), 2);
        assert_eq!((first.end_ns, first.open), (Some(5 * W), false));
        assert_eq!(first.symptoms["loss"], 12);
        let second = incidents.iter().find(|i| i.start_ns == 8 * W).unwrap();
        assert_eq!(
            (second.open, second.end_ns, second.windows_since),
            (false, Some(9 * W), 4)
        );
        // With 4 quiet windows the three runs are one, and 8 → 12 leaves it
        // clean for 4: ended.
        let one = grouped(&list, 12, 4);
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].flaps, one[0].clean_windows, one[0].windows), (2, 4, 4));
        // Analyzed to window 10: two clean windows since, still open.
        let open = grouped(&list, 10, 4);
        assert_eq!((open[0].open, open[0].end_ns, open[0].windows_since), (true, None, 2));
    }

    /// A node pair is one element whichever direction TCP showed: one
    /// incident, named by the direction while only one was seen.
    #[test]
    fn a_node_pair_is_one_incident_whatever_direction_each_window_showed() {
        let seen = grouped(
            &[
                anomaly("node_pair", "r2n1↔r1n1", 1, 1),
                anomaly("node_pair", "r2n1→r1n1", 3, 3),
            ],
            6,
            3,
        );
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert_eq!((seen[0].element.as_str(), seen[0].flaps), ("r2n1→r1n1", 1));
        let flipped = grouped(
            &[
                anomaly("node_pair", "r1n1→r2n1", 1, 2),
                anomaly("node_pair", "r2n1→r1n1", 4, 4),
            ],
            6,
            3,
        );
        assert_eq!(flipped.len(), 1, "{flipped:#?}");
        assert_eq!(flipped[0].element, "r1n1↔r2n1");
        assert_eq!(identity("host", "r1n1→x"), "r1n1→x", "only node pairs");
    }

    #[test]
    fn elements_and_kinds_are_incidents_of_their_own() {
        let list = [
            anomaly("host", "r1n1", 1, 1),
            anomaly("slow_host", "r1n1", 2, 2),
            anomaly("host", "r1n2", 3, 3),
            anomaly("host", "r1n1", 3, 5),
        ];
        let incidents = grouped(&list, 5, 3);
        assert_eq!(incidents.len(), 3, "{incidents:#?}");
        // Most bad path windows first.
        assert_eq!((incidents[0].kind, incidents[0].element.as_str()), ("host", "r1n1"));
        assert_eq!((incidents[0].windows, incidents[0].flaps), (4, 1));
    }

    #[test]
    fn runs_with_nothing_judged_between_them_are_no_flap() {
        // Ordinals 1 and 2 are consecutive judged windows, though the
        // window starts are not: a window between had nothing judged.
        let (a, _) = anomaly("rack", "rack1", 1, 1);
        let (mut b, _) = anomaly("rack", "rack1", 3, 3);
        b.first_window_ns = 3 * W;
        let incidents = group(&[a, b], &[(1, 1), (2, 2)], 2, W, 3);
        assert_eq!(incidents.len(), 1);
        assert_eq!((incidents[0].flaps, incidents[0].runs.len()), (0, 2));
    }

    fn analysis(incidents: Vec<Incident>, gaps: Vec<TelemetryGap>) -> Analysis {
        Analysis {
            schema_version: crate::report::SCHEMA_VERSION,
            from_ns: 0,
            to_ns: 100 * W,
            windows: 1,
            last_window_ns: 0,
            judged_paths: 1,
            last_window_judged_paths: 1,
            window_len_ns: W,
            quiet_windows: 3,
            anomalies: Vec::new(),
            incidents,
            telemetry_gaps: gaps,
        }
    }

    fn lines(events: &[Event]) -> Vec<String> {
        events.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn watch_prints_one_start_a_change_per_flap_and_one_end() {
        let mut watch = Watch::default();
        let bad = |runs: &[(usize, usize)], windows: usize| {
            let list: Vec<_> = runs.iter().map(|&(a, b)| anomaly("host", "r3n3", a, b)).collect();
            analysis(grouped(&list, windows, 3), Vec::new())
        };
        let start = lines(&watch.pass(&bad(&[(1, 1)], 1)));
        assert_eq!(start.len(), 1);
        assert!(
            start[0].starts_with("START   host r3n3: 4 of 8 paths bad (50 %) since "),
            "{start:?}"
        );
        // Clean in window 2: open, nothing to say.
        assert!(watch.pass(&bad(&[(1, 1)], 2)).is_empty());
        // Bad again in 3: it flapped.
        let change = lines(&watch.pass(&bad(&[(1, 1), (3, 4)], 4)));
        assert_eq!(change.len(), 1, "{change:?}");
        assert!(
            change[0]
                .starts_with("CHANGE  host r3n3: flapped back (flap 1) at 1970-01-01 00:00:00 after 1 clean window(s)"),
            "{change:?}"
        );
        // Still bad, no change; then much worse.
        assert!(watch.pass(&bad(&[(1, 1), (3, 5)], 5)).is_empty());
        let mut worse = bad(&[(1, 1), (3, 6)], 6);
        worse.incidents[0].share = 0.75;
        let change = lines(&watch.pass(&worse));
        assert!(
            change[0].contains("worse: 75 % of its paths bad (was 50 %)"),
            "{change:?}"
        );
        // Clean for two windows: still open; for three: ended.
        assert!(watch.pass(&bad(&[(1, 1), (3, 6)], 8)).is_empty());
        let end = lines(&watch.pass(&bad(&[(1, 1), (3, 6)], 9)));
        assert_eq!(
            end,
            ["END     host r3n3: 1970-01-01 00:00:00 → 1970-01-01 00:00:00, 5 bad window(s), 1 flap(s)"]
        );
        assert!(watch.pass(&bad(&[(1, 1), (3, 6)], 10)).is_empty());
    }

    #[test]
    fn watch_follows_a_gap_through_its_states() {
        let gap = |state: GapState, first: u64, open: bool| TelemetryGap {
            node: "r1n2".to_string(),
            rack: "rack1".to_string(),
            first_window_ns: first * W,
            last_window_ns: first * W,
            windows: 1,
            silent: state == GapState::Silent,
            min_completeness: 0.41,
            state,
            open,
        };
        let mut watch = Watch::default();
        let start = lines(&watch.pass(&analysis(Vec::new(), vec![gap(GapState::Incomplete, 1, true)])));
        assert_eq!(start.len(), 1);
        assert!(start[0].starts_with("START   telemetry_gap r1n2: 41 % of datagrams received since "));
        let change = lines(&watch.pass(&analysis(
            Vec::new(),
            vec![gap(GapState::Incomplete, 1, false), gap(GapState::Silent, 2, true)],
        )));
        assert_eq!(change.len(), 1);
        assert!(
            change[0].starts_with("CHANGE  telemetry_gap r1n2: now silent since "),
            "{change:?}"
        );
        assert!(
            watch
                .pass(&analysis(Vec::new(), vec![gap(GapState::Silent, 2, true)]))
                .is_empty()
        );
        let end = lines(&watch.pass(&analysis(Vec::new(), vec![gap(GapState::Silent, 2, false)])));
        assert_eq!(end.len(), 1);
        assert!(
            end[0].starts_with("END     telemetry_gap r1n2: silent since "),
            "{end:?}"
        );
    }

    /// A rack's sampler down: every agent of the rack without telemetry
    /// from the same window is one START and one END naming the rack and
    /// its nodes; a node of another rack is a line of its own.
    #[test]
    fn watch_tells_a_racks_gaps_in_one_line() {
        let gap = |node: &str, rack: &str, open: bool| TelemetryGap {
            node: node.to_string(),
            rack: rack.to_string(),
            first_window_ns: 3 * W,
            last_window_ns: 4 * W,
            windows: 2,
            silent: false,
            min_completeness: 0.0,
            state: GapState::NoTelemetry,
            open,
        };
        let gaps = |open: bool| {
            vec![
                gap("r2n1", "rack2", open),
                gap("r2n2", "rack2", open),
                gap("r2n3", "rack2", open),
                gap("r3n1", "rack3", open),
            ]
        };
        let mut watch = Watch::default();
        let start = lines(&watch.pass(&analysis(Vec::new(), gaps(true))));
        assert_eq!(start.len(), 2, "{start:?}");
        assert!(
            start[0].starts_with("START   telemetry_gap rack2 (r2n1, r2n2, r2n3): no telemetry"),
            "{start:?}"
        );
        assert!(start[1].starts_with("START   telemetry_gap r3n1: "), "{start:?}");
        let end = lines(&watch.pass(&analysis(Vec::new(), gaps(false))));
        assert_eq!(end.len(), 2, "{end:?}");
        assert!(
            end[0].starts_with("END     telemetry_gap rack2 (r2n1, r2n2, r2n3): "),
            "{end:?}"
        );
    }
}
