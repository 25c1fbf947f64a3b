//! Localization: which host, rack or pair of racks best explains a window's
//! anomalous paths.
//!
//! Every element the topology knows is scored by the share of the judged
//! paths through it that are bad:
//!
//! - a **host**: paths from or to it — the worse of the two directions
//!   when each has `min_paths`, since a host that dies mid-window still
//!   reported its own paths as they were before it died, while its peers'
//!   paths to it tell the whole window;
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

use configs::{Localization, Topology};
use rustc_hash::FxHashMap;
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
    /// Bad paths through it (not yet explained by an earlier verdict); for
    /// a host whose paths in one direction alone score worse, those.
    pub bad: usize,
    /// Judged paths through it (for a host, perhaps one direction's).
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

/// The elements a path runs through (at most five: two hosts, two racks and
/// their pair), given each known node's rack.
fn elements(rack_of: &FxHashMap<u32, u32>, src: u32, dst: u32) -> [Option<Element>; 5] {
    let (a, b) = (rack_of.get(&src).copied(), rack_of.get(&dst).copied());
    let host = |node: u32, rack: Option<u32>| rack.map(|_| Element::Host { node });
    let mut out = [host(src, a), host(dst, b), None, None, None];
    if let (Some(a), Some(b)) = (a, b)
        && a != b
    {
        out[2] = Some(Element::Rack { rack: a });
        out[3] = Some(Element::Rack { rack: b });
        out[4] = Some(Element::RackPair {
            a: a.min(b),
            b: a.max(b),
        });
    }
    out
}

/// Judged paths through every element of the topology, counted with dense
/// arrays: every judged path of a window passes here, most of them healthy,
/// and hashing each one's five elements was most of localization's time.
struct Totals {
    /// Node id → (dense node, dense rack).
    node: FxHashMap<u32, (usize, usize)>,
    /// Rack id → dense rack.
    rack: FxHashMap<u32, usize>,
    /// Judged paths from and to each dense node.
    hosts: Vec<Directions>,
    racks: Vec<usize>,
    /// Dense rack pairs, lower first: `a * racks + b`.
    pairs: Vec<usize>,
}

impl Totals {
    fn new(topology: &Topology) -> Totals {
        let rack: FxHashMap<u32, usize> = topology.racks().iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        let node: FxHashMap<u32, (usize, usize)> = topology
            .nodes()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| rack.get(&n.rack).map(|&r| (n.id, (i, r))))
            .collect();
        let n = rack.len();
        Totals {
            hosts: vec![Directions::default(); topology.nodes().len()],
            racks: vec![0; n],
            pairs: vec![0; n * n],
            node,
            rack,
        }
    }

    /// Counts a path in every element it runs through (as [`elements`]).
    fn count(&mut self, src: u32, dst: u32) {
        let (a, b) = (self.node.get(&src).copied(), self.node.get(&dst).copied());
        if let Some((host, _)) = a {
            self.hosts[host].from += 1;
        }
        if let Some((host, _)) = b {
            self.hosts[host].to += 1;
        }
        if let (Some((_, x)), Some((_, y))) = (a, b)
            && x != y
        {
            self.racks[x] += 1;
            self.racks[y] += 1;
            self.pairs[x.min(y) * self.racks.len() + x.max(y)] += 1;
        }
    }

    /// Paths counted through `element`.
    fn of(&self, element: Element) -> usize {
        match element {
            Element::Host { node } => self.host(node).total(),
            Element::Rack { rack } => self.rack.get(&rack).map_or(0, |&r| self.racks[r]),
            Element::RackPair { a, b } => match (self.rack.get(&a), self.rack.get(&b)) {
                (Some(&x), Some(&y)) => self.pairs[x.min(y) * self.racks.len() + x.max(y)],
                _ => 0,
            },
        }
    }

    /// Paths counted from and to a node.
    fn host(&self, node: u32) -> Directions {
        self.node
            .get(&node)
            .map_or_else(Directions::default, |&(n, _)| self.hosts[n])
    }
}

/// Paths from and to a host.
#[derive(Debug, Clone, Copy, Default)]
struct Directions {
    from: usize,
    to: usize,
}

impl Directions {
    fn total(self) -> usize {
        self.from + self.to
    }
}

/// Localizes one window's bad paths, judged by `is_bad`.
pub fn localize<'a>(
    topology: &Topology,
    judged: &[Judged<'a>],
    is_bad: impl Fn(&Judged<'a>) -> bool,
    cfg: &Localization,
) -> Vec<Verdict> {
    let mut totals = Totals::new(topology);
    for j in judged {
        totals.count(j.path.src, j.path.dst);
    }
    let rack_of: FxHashMap<u32, u32> = topology.nodes().iter().map(|n| (n.id, n.rack)).collect();
    // Bad paths with the elements they run through; ascending, so verdicts
    // list their paths in the window's order.
    let mut unexplained: Vec<(usize, [Option<Element>; 5])> = judged
        .iter()
        .enumerate()
        .filter(|(_, j)| is_bad(j))
        .map(|(i, j)| (i, elements(&rack_of, j.path.src, j.path.dst)))
        .collect();
    let mut verdicts = Vec::new();
    while !unexplained.is_empty() {
        let mut bad: FxHashMap<Element, usize> = FxHashMap::default();
        // Bad paths from each host (the rest of a host's are to it).
        let mut bad_from: FxHashMap<u32, usize> = FxHashMap::default();
        for (_, through) in &unexplained {
            for e in through.iter().flatten() {
                *bad.entry(*e).or_default() += 1;
            }
            if let Some(Element::Host { node }) = through[0] {
                *bad_from.entry(node).or_default() += 1;
            }
        }
        let min_paths = cfg.min_paths as usize;
        let mut scores: Vec<Score> = bad
            .iter()
            .map(|(&element, &bad)| {
                let mut best = (bad, totals.of(element));
                if let Element::Host { node } = element {
                    let all = totals.host(node);
                    let from = bad_from.get(&node).copied().unwrap_or(0);
                    for (bad, paths) in [(from, all.from), (bad - from, all.to)] {
                        // bad / paths > best.0 / best.1, without division.
                        if paths >= min_paths && bad * best.1 > best.0 * paths {
                            best = (bad, paths);
                        }
                    }
                }
                let (bad, paths) = best;
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
            .position(|s| s.share >= cfg.min_bad_share && s.paths >= min_paths)
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
        let (explained, rest): (Vec<_>, Vec<_>) = unexplained
            .into_iter()
            .partition(|(_, through)| through.contains(&Some(chosen.element)));
        unexplained = rest;
        verdicts.push(Verdict {
            element: Some(chosen.element),
            score: Some(chosen),
            runners_up,
            paths: explained.into_iter().map(|(i, _)| i).collect(),
        });
    }
    if !unexplained.is_empty() {
        verdicts.push(Verdict {
            element: None,
            score: None,
            runners_up: Vec::new(),
            paths: unexplained.into_iter().map(|(i, _)| i).collect(),
        });
    }
    verdicts
}

/// Hosts that held probes too long as responders: responder delay is a
/// property of the destination, so a host is scored over the paths *to* it.
pub fn slow_responders(judged: &[Judged], cfg: &Localization) -> Vec<Verdict> {
    let mut to: FxHashMap<u32, (Vec<usize>, usize)> = FxHashMap::default();
    for (i, j) in judged.iter().enumerate() {
        let entry = to.entry(j.path.dst).or_default();
        entry.1 += 1;
        if j.responder_slow() {
            entry.0.push(i);
        }
    }
    let mut to: Vec<_> = to.into_iter().collect();
    to.sort_unstable_by_key(|(node, _)| *node);
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
