//! Localization: which host, rack or pair of racks best explains a window's
//! anomalous paths.
//!
//! Every element the topology knows is scored by the share of the judged
//! paths through it that are bad:
//!
//! - a **host**: paths from or to it;
//! - a **rack** (its switch or uplink): paths between it and other racks —
//!   a rack uplink fault spares in-rack paths;
//! - a **rack pair**: paths between the two racks.
//!
//! (This is Pingmesh's black-hole score — the share of an element's
//! servers showing the symptom — taken per path, with 007's idea that every
//! bad path votes for the elements on it.) The verdicts are chosen greedily:
//! the element with the highest share of at least `min_bad_share` over at
//! least `min_paths` judged paths wins, ties going to the element that
//! explains more bad paths, then to the narrower claim (host, then rack
//! pair, then rack); its bad paths are removed and scoring repeats. Bad
//! paths no element explains are reported as unlocalized. Each verdict
//! keeps the runners-up's scores as evidence.
//!
//! A rack's uplink and a pair of racks are the same evidence when there are
//! only two racks; the verdict is then the pair, with both racks as equally
//! scored runners-up.

use std::collections::{BTreeMap, BTreeSet};

use configs::{Localization, Topology};
use serde::Serialize;

use crate::detect::Judged;

/// An element of the network a verdict can blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Element {
    /// A host (node id).
    Host {
        /// Node id.
        node: u32,
    },
    /// A rack pair, lower id first.
    RackPair {
        /// One rack.
        a: u32,
        /// The other.
        b: u32,
    },
    /// A rack's switch or uplink.
    Rack {
        /// Rack id.
        rack: u32,
    },
}

impl Element {
    /// A readable name using the topology's names.
    pub fn name(&self, topology: &Topology) -> String {
        let node = |id: u32| {
            topology
                .node(id)
                .map_or_else(|| format!("node {id}"), |n| n.name.clone())
        };
        let rack = |id: u32| {
            topology
                .rack(id)
                .map_or_else(|| format!("rack {id}"), |r| r.name.clone())
        };
        match *self {
            Element::Host { node: id } => node(id),
            Element::Rack { rack: id } => rack(id),
            Element::RackPair { a, b } => format!("{}↔{}", rack(a), rack(b)),
        }
    }

    /// `host`, `rack` or `rack_pair`.
    pub fn kind(&self) -> &'static str {
        match self {
            Element::Host { .. } => "host",
            Element::Rack { .. } => "rack",
            Element::RackPair { .. } => "rack_pair",
        }
    }
}

/// How much of an element's evidence is bad.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// The element.
    pub element: Element,
    /// Bad paths through it (not yet explained by an earlier verdict).
    pub bad: usize,
    /// Judged paths through it.
    pub paths: usize,
    /// `bad / paths`.
    pub share: f64,
}

/// One window's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What is blamed; `None` for bad paths no element explains.
    pub element: Option<Element>,
    /// Its score (for unlocalized: the paths left over).
    pub score: Option<Score>,
    /// The next best candidates when it was chosen.
    pub runners_up: Vec<Score>,
    /// Indexes (into the window's judged paths) of the bad paths explained.
    pub paths: Vec<usize>,
}

/// The elements a path runs through.
fn elements(topology: &Topology, src: u32, dst: u32) -> Vec<Element> {
    let mut out = Vec::with_capacity(5);
    let rack_of = |n: u32| topology.node(n).map(|n| n.rack);
    for node in [src, dst] {
        if topology.node(node).is_some() {
            out.push(Element::Host { node });
        }
    }
    if let (Some(a), Some(b)) = (rack_of(src), rack_of(dst))
        && a != b
    {
        out.push(Element::Rack { rack: a });
        out.push(Element::Rack { rack: b });
        out.push(Element::RackPair {
            a: a.min(b),
            b: a.max(b),
        });
    }
    out
}

/// Localizes one window's bad paths, judged by `is_bad`.
pub fn localize(
    topology: &Topology,
    judged: &[Judged],
    is_bad: impl Fn(&Judged) -> bool,
    cfg: &Localization,
) -> Vec<Verdict> {
    let through: Vec<Vec<Element>> = judged
        .iter()
        .map(|j| elements(topology, j.path.src, j.path.dst))
        .collect();
    let mut totals: BTreeMap<Element, usize> = BTreeMap::new();
    for elements in &through {
        for e in elements {
            *totals.entry(*e).or_default() += 1;
        }
    }
    let mut unexplained: BTreeSet<usize> = (0..judged.len()).filter(|&i| is_bad(&judged[i])).collect();
    let mut verdicts = Vec::new();
    while !unexplained.is_empty() {
        let mut bad: BTreeMap<Element, usize> = BTreeMap::new();
        for &i in &unexplained {
            for e in &through[i] {
                *bad.entry(*e).or_default() += 1;
            }
        }
        let mut scores: Vec<Score> = bad
            .iter()
            .map(|(&element, &bad)| {
                let paths = totals[&element];
                Score {
                    element,
                    bad,
                    paths,
                    share: bad as f64 / paths as f64,
                }
            })
            .collect();
        // Highest share, then most explained, then the narrower claim
        // (Element's order: host, rack pair, rack).
        scores.sort_by(|x, y| {
            y.share
                .total_cmp(&x.share)
                .then(y.bad.cmp(&x.bad))
                .then(x.element.cmp(&y.element))
        });
        let Some(best) = scores
            .iter()
            .position(|s| s.share >= cfg.min_bad_share && s.paths >= cfg.min_paths as usize)
        else {
            break;
        };
        let chosen = scores[best];
        let runners_up = scores
            .iter()
            .filter(|s| s.element != chosen.element)
            .take(3)
            .copied()
            .collect();
        let paths: Vec<usize> = unexplained
            .iter()
            .copied()
            .filter(|&i| through[i].contains(&chosen.element))
            .collect();
        for i in &paths {
            unexplained.remove(i);
        }
        verdicts.push(Verdict {
            element: Some(chosen.element),
            score: Some(chosen),
            runners_up,
            paths,
        });
    }
    if !unexplained.is_empty() {
        verdicts.push(Verdict {
            element: None,
            score: None,
            runners_up: Vec::new(),
            paths: unexplained.into_iter().collect(),
        });
    }
    verdicts
}

/// Hosts that held probes too long as responders: responder delay is a
/// property of the destination, so a host is scored over the paths *to* it.
pub fn slow_responders(judged: &[Judged], cfg: &Localization) -> Vec<Verdict> {
    let mut to: BTreeMap<u32, (Vec<usize>, usize)> = BTreeMap::new();
    for (i, j) in judged.iter().enumerate() {
        let entry = to.entry(j.path.dst).or_default();
        entry.1 += 1;
        if j.responder_slow() {
            entry.0.push(i);
        }
    }
    to.into_iter()
        .filter(|(node, (bad, paths))| *node != 0 && !bad.is_empty() && *paths >= cfg.min_paths as usize)
        .filter_map(|(node, (bad, paths))| {
            let share = bad.len() as f64 / paths as f64;
            (share >= cfg.min_bad_share).then(|| {
                let element = Element::Host { node };
                Verdict {
                    element: Some(element),
                    score: Some(Score {
                        element,
                        bad: bad.len(),
                        paths,
                        share,
                    }),
                    runners_up: Vec::new(),
                    paths: bad,
                }
            })
        })
        .collect()
}
