//! Localization: which host, rack, pair of racks or pair of hosts best
//! explains a window's anomalous paths.
//!
//! Every element the topology knows is scored by the share of the judged
//! paths through it that are bad:
//!
//! - a **host**: paths from or to it — or only one direction's, when all
//!   its paths do not pass but that direction's do: a host that dies
//!   mid-window still reported its own paths as they were before it died,
//!   while its peers' paths to it tell the whole window;
//! - a **rack** (its switch or uplink): paths between it and other racks —
//!   a rack uplink fault spares in-rack paths;
//! - a **rack pair**: paths between the two racks;
//! - a **node pair**: the two paths between two hosts (a cable, an ACL, an
//!   ECMP member), named in the direction TCP shows when its flows
//!   retransmit on one path only — probes are round trips, so both probe
//!   paths lose whichever way packets drop.
//!
//! (This is Pingmesh's black-hole score — the share of an element's
//! servers showing the symptom — taken per path, with 007's idea that every
//! bad path votes for the elements on it.)
//!
//! The verdicts are a greedy set cover. An element is a candidate when at
//! least `min_bad_share` of at least `min_paths` judged paths through it
//! are bad; of the candidates, the one whose bad paths exceed that share of
//! its paths by the most — `bad − min_bad_share × paths`, the evidence it
//! explains beyond what the threshold asks — is chosen, ties going to the
//! one explaining more bad paths, then to the claim first in [`Element`]'s
//! order (host, rack pair, rack, node pair). Its bad paths are removed, and
//! scoring repeats over the paths not yet explained — in both the bad paths
//! and the judged paths it divides them by, so a host's share does not
//! shrink because its rack explained some of its paths. The rule prefers
//! the fewest elements: a rack whose every path is bad (36 of 36: excess
//! 14.4) over each of its pairs (18 of 18: 7.2), a lossy host (16 of 16:
//! 6.4) over its rack (12 of 36: below the threshold), two lossy hosts of a
//! rack over the rack that would need them as well.
//!
//! A node pair is the narrowest claim and rests on two paths: it is a
//! candidate only when its hosts' other paths are mostly healthy — each has
//! fewer other bad paths than the pair has — since a host whose loss shows
//! on some of its paths makes pairs of them bad too.
//!
//! A path bad only as part of its host's pooled loss
//! ([`Symptom::LossPooled`](crate::detect::Symptom::LossPooled)) votes for
//! its hosts, racks and rack pair, not for its node pair, and when nothing
//! explains it, it is dropped rather than reported: it is evidence about the
//! host, not a finding of its own. Other bad paths no element explains are
//! reported as unlocalized. Each verdict keeps the runners-up's scores as
//! evidence: the next candidates, then the elements that did not pass,
//! highest share first — leaving out node pairs it explains entirely (every
//! pair of a lossy host scores 100 %, which says nothing the host does
//! not).
//!
//! A rack's uplink and a pair of racks are the same evidence when there are
//! only two racks; the verdict is then the pair, with both racks as equally
//! scored runners-up.

use configs::{Localization, Topology};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::detect::Judged;

/// An element of the network a verdict can blame. The order is the
/// tie-break between claims on the same evidence: a host, then a rack pair
/// (with two racks, both racks' evidence), then a rack, then a node pair —
/// named only when nothing in the topology explains its paths as well.
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
    /// The two paths between two hosts: a cable, an ACL or an ECMP member
    /// between them.
    NodePair {
        /// One host: the one whose packets to `b` are dropped when
        /// `one_way`, else the lower id.
        a: u32,
        /// The other host.
        b: u32,
        /// Whether TCP shows the loss from `a` to `b` only.
        one_way: bool,
    },
}

impl Element {
    /// A readable name using the topology's names: `r1n2`, `rack1`,
    /// `rack1↔rack3`, `r1n1→r2n3` (TCP shows the direction) or `r1n1↔r2n3`.
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
            Element::NodePair { a, b, one_way: true } => format!("{}→{}", node(a), node(b)),
            Element::NodePair { a, b, one_way: false } => format!("{}↔{}", node(a), node(b)),
        }
    }

    /// `host`, `rack`, `rack_pair` or `node_pair`.
    pub fn kind(&self) -> &'static str {
        match self {
            Element::Host { .. } => "host",
            Element::Rack { .. } => "rack",
            Element::RackPair { .. } => "rack_pair",
            Element::NodePair { .. } => "node_pair",
        }
    }
}

/// How much of an element's evidence is bad.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// The element.
    pub element: Element,
    /// Bad paths through it not yet explained by an earlier verdict; for a
    /// host claimed by one direction, that direction's.
    pub bad: usize,
    /// Judged paths through it not yet explained by an earlier verdict,
    /// counted as `bad` is.
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
    /// Indexes (into the window's judged paths) of the bad paths explained:
    /// as many as `score.bad`.
    pub paths: Vec<usize>,
}

/// Positions in [`elements`]' answer.
const SRC: usize = 0;
const DST: usize = 1;
const NODE_PAIR: usize = 5;

/// The elements a path runs through (at most six: two hosts, two racks,
/// their pair and the node pair), given each known node's rack.
fn elements(rack_of: &FxHashMap<u32, u32>, src: u32, dst: u32) -> [Option<Element>; 6] {
    let (a, b) = (rack_of.get(&src).copied(), rack_of.get(&dst).copied());
    let host = |node: u32, rack: Option<u32>| rack.map(|_| Element::Host { node });
    let mut out = [host(src, a), host(dst, b), None, None, None, None];
    if let (Some(a), Some(b)) = (a, b) {
        out[NODE_PAIR] = Some(Element::NodePair {
            a: src.min(dst),
            b: src.max(dst),
            one_way: false,
        });
        if a != b {
            out[2] = Some(Element::Rack { rack: a });
            out[3] = Some(Element::Rack { rack: b });
            out[4] = Some(Element::RackPair {
                a: a.min(b),
                b: a.max(b),
            });
        }
    }
    out
}

/// Judged paths not yet explained through every host, rack and rack pair
/// of the topology, counted with dense arrays: every judged path of a
/// window passes here, most of them healthy, and hashing each one's
/// elements was most of localization's time. (A node pair's two paths are
/// looked up only for bad paths: [`PathIndex`].)
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
        self.each(src, dst, |n| *n += 1);
    }

    /// Takes an explained path out of every element it runs through.
    fn uncount(&mut self, src: u32, dst: u32) {
        self.each(src, dst, |n| *n -= 1);
    }

    fn each(&mut self, src: u32, dst: u32, f: impl Fn(&mut usize)) {
        let (a, b) = (self.node.get(&src).copied(), self.node.get(&dst).copied());
        if let Some((host, _)) = a {
            f(&mut self.hosts[host].from);
        }
        if let Some((host, _)) = b {
            f(&mut self.hosts[host].to);
        }
        if let (Some((_, x)), Some((_, y))) = (a, b)
            && x != y
        {
            f(&mut self.racks[x]);
            f(&mut self.racks[y]);
            f(&mut self.pairs[x.min(y) * self.racks.len() + x.max(y)]);
        }
    }

    /// Paths counted through a rack.
    fn rack(&self, rack: u32) -> usize {
        self.rack.get(&rack).map_or(0, |&r| self.racks[r])
    }

    /// Paths counted between two racks.
    fn pair(&self, a: u32, b: u32) -> usize {
        match (self.rack.get(&a), self.rack.get(&b)) {
            (Some(&x), Some(&y)) => self.pairs[x.min(y) * self.racks.len() + x.max(y)],
            _ => 0,
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

/// Finds a judged path by its ends: by binary search when the window lists
/// its paths by (source, destination), as the stores do, else through a
/// map built once.
enum PathIndex {
    Sorted,
    Map(FxHashMap<(u32, u32), usize>),
}

impl PathIndex {
    fn new(judged: &[Judged]) -> PathIndex {
        if judged.is_sorted_by_key(|j| (j.path.src, j.path.dst)) {
            PathIndex::Sorted
        } else {
            PathIndex::Map(
                judged
                    .iter()
                    .enumerate()
                    .map(|(i, j)| ((j.path.src, j.path.dst), i))
                    .collect(),
            )
        }
    }

    fn find(&self, judged: &[Judged], src: u32, dst: u32) -> Option<usize> {
        match self {
            PathIndex::Sorted => judged
                .binary_search_by_key(&(src, dst), |j| (j.path.src, j.path.dst))
                .ok(),
            PathIndex::Map(map) => map.get(&(src, dst)).copied(),
        }
    }
}

/// A bad path not yet explained.
struct Evidence {
    /// Index into the window's judged paths.
    index: usize,
    /// The elements it runs through ([`elements`]).
    through: [Option<Element>; 6],
    /// Bad on its own evidence, not only as part of its host's pooled loss:
    /// only such paths vote for their node pair, and only they are reported
    /// unlocalized.
    own: bool,
    /// Its reverse path was judged and is healthy.
    reverse_healthy: bool,
}

impl Evidence {
    /// The elements it votes for, with their position in `through`.
    fn votes(&self) -> impl Iterator<Item = (usize, Element)> + '_ {
        self.through
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != NODE_PAIR || self.own)
            .filter_map(|(k, e)| e.map(|e| (k, e)))
    }
}

/// The unexplained evidence through one element in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Bad paths voting for it.
    bad: usize,
    /// Of those, paths from it (hosts).
    bad_from: usize,
    /// Node pairs: unexplained bad paths between the two hosts, voting or
    /// not, and whether the other path was judged healthy.
    pair_paths: usize,
    reverse_healthy: bool,
}

/// Which of a host's paths a claim covers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    All,
    From,
    To,
}

/// An element's score in one round, and whether it may be chosen.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: Score,
    side: Side,
    passes: bool,
    /// `bad − min_bad_share × paths`.
    excess: f64,
}

/// Scores `element` from its tally: the claim (for a host, the side) that
/// passes, else the one closest to passing.
fn candidate(
    element: Element,
    t: Tally,
    tally: &FxHashMap<Element, Tally>,
    totals: &Totals,
    cfg: &Localization,
) -> Candidate {
    let min_paths = cfg.min_paths as usize;
    let make = |bad: usize, paths: usize, side: Side| {
        let share = if paths == 0 { 0.0 } else { bad as f64 / paths as f64 };
        Candidate {
            score: Score {
                element,
                bad,
                paths,
                share,
            },
            side,
            passes: bad > 0 && paths >= min_paths && share >= cfg.min_bad_share,
            excess: bad as f64 - cfg.min_bad_share * paths as f64,
        }
    };
    match element {
        Element::Host { node } => {
            let d = totals.host(node);
            let all = make(t.bad, d.from + d.to, Side::All);
            if all.passes {
                return all;
            }
            // A direction alone, when all of the host's paths do not pass.
            [
                make(t.bad_from, d.from, Side::From),
                make(t.bad - t.bad_from, d.to, Side::To),
            ]
            .into_iter()
            .filter(|c| c.passes)
            .max_by(|x, y| x.excess.total_cmp(&y.excess))
            .unwrap_or(all)
        }
        Element::Rack { rack } => make(t.bad, totals.rack(rack), Side::All),
        Element::RackPair { a, b } => make(t.bad, totals.pair(a, b), Side::All),
        Element::NodePair { a, b, .. } => {
            let mut c = make(t.bad, t.pair_paths + usize::from(t.reverse_healthy), Side::All);
            // Each host's other bad paths must be fewer than the pair's.
            let others = |node: u32| {
                tally
                    .get(&Element::Host { node })
                    .map_or(0, |h| h.bad.saturating_sub(t.pair_paths))
            };
            c.passes &= others(a) < t.bad && others(b) < t.bad;
            c
        }
    }
}

/// Whether `e` is among the paths `chosen` claims on `side`.
fn claims(e: &Evidence, chosen: Element, side: Side) -> bool {
    match side {
        Side::From => e.through[SRC] == Some(chosen),
        Side::To => e.through[DST] == Some(chosen),
        Side::All => e.votes().any(|(_, v)| v == chosen),
    }
}

/// The node pair as named: in the direction TCP shows when the flows of one
/// of its paths retransmit and those of the other, judged, do not.
fn directed(pair: Element, judged: &[Judged], index: &PathIndex) -> Element {
    let Element::NodePair { a, b, .. } = pair else {
        return pair;
    };
    let retransmits = |src: u32, dst: u32| index.find(judged, src, dst).and_then(|i| judged[i].retransmits());
    match (retransmits(a, b), retransmits(b, a)) {
        (Some(true), Some(false)) => Element::NodePair { a, b, one_way: true },
        (Some(false), Some(true)) => Element::NodePair {
            a: b,
            b: a,
            one_way: true,
        },
        _ => pair,
    }
}

/// Localizes one window's bad paths, judged by `is_bad`.
///
/// Elements are chosen greedily, the largest excess over `min_bad_share`
/// first; a greedy choice can be made redundant by later ones (three lossy
/// hosts of four make their rack's share 3/4, and its excess in paths
/// beats each host's, though the three hosts explain every one of its bad
/// paths and the fourth host's clean ones speak against it). So when every
/// bad path of a chosen element runs through another chosen element, the
/// window is localized again without it, and that answer is kept if it
/// names fewer elements and leaves no more paths unexplained.
pub fn localize<'a>(
    topology: &Topology,
    judged: &[Judged<'a>],
    is_bad: impl Fn(&Judged<'a>) -> bool,
    cfg: &Localization,
) -> Vec<Verdict> {
    let mut banned: Vec<Element> = Vec::new();
    let mut verdicts = choose(topology, judged, &is_bad, cfg, &banned);
    let rack_of: FxHashMap<u32, u32> = topology.nodes().iter().map(|n| (n.id, n.rack)).collect();
    // Each round bans one more element; there are at most as many as verdicts.
    while let Some(redundant) = redundant(&verdicts, judged, &rack_of) {
        banned.push(redundant);
        let again = choose(topology, judged, &is_bad, cfg, &banned);
        if named(&again) < named(&verdicts) && unexplained(&again) <= unexplained(&verdicts) {
            verdicts = again;
        } else {
            break;
        }
    }
    verdicts
}

/// Elements a set of verdicts names.
fn named(verdicts: &[Verdict]) -> usize {
    verdicts.iter().filter(|v| v.element.is_some()).count()
}

/// Bad paths a set of verdicts leaves unexplained.
fn unexplained(verdicts: &[Verdict]) -> usize {
    verdicts
        .iter()
        .filter(|v| v.element.is_none())
        .map(|v| v.paths.len())
        .sum()
}

/// The first chosen element every bad path of which runs through another
/// chosen element (a node pair compared whatever its direction).
fn redundant(verdicts: &[Verdict], judged: &[Judged], rack_of: &FxHashMap<u32, u32>) -> Option<Element> {
    let undirected = |e: Element| match e {
        Element::NodePair { a, b, .. } => Element::NodePair {
            a: a.min(b),
            b: a.max(b),
            one_way: false,
        },
        other => other,
    };
    let chosen: Vec<Element> = verdicts.iter().filter_map(|v| v.element).map(undirected).collect();
    if chosen.len() < 2 {
        return None;
    }
    chosen
        .iter()
        .zip(verdicts.iter().filter(|v| v.element.is_some()))
        .find_map(|(&e, v)| {
            let covered = v.paths.iter().all(|&i| {
                let path = judged[i].path;
                elements(rack_of, path.src, path.dst)
                    .into_iter()
                    .flatten()
                    .any(|through| through != e && chosen.contains(&through))
            });
            covered.then_some(e)
        })
}

/// One greedy localization, never choosing an element of `banned`.
fn choose<'a>(
    topology: &Topology,
    judged: &[Judged<'a>],
    is_bad: &impl Fn(&Judged<'a>) -> bool,
    cfg: &Localization,
    banned: &[Element],
) -> Vec<Verdict> {
    let mut totals = Totals::new(topology);
    for j in judged {
        totals.count(j.path.src, j.path.dst);
    }
    let bad: Vec<usize> = (0..judged.len()).filter(|&i| is_bad(&judged[i])).collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let rack_of: FxHashMap<u32, u32> = topology.nodes().iter().map(|n| (n.id, n.rack)).collect();
    let index = PathIndex::new(judged);
    // Ascending, so verdicts list their paths in the window's order.
    let mut unexplained: Vec<Evidence> = bad
        .into_iter()
        .map(|i| {
            let j = &judged[i];
            let (src, dst) = (j.path.src, j.path.dst);
            Evidence {
                index: i,
                through: elements(&rack_of, src, dst),
                own: !j.pooled_only(),
                reverse_healthy: index.find(judged, dst, src).is_some_and(|r| !is_bad(&judged[r])),
            }
        })
        .collect();
    let mut verdicts = Vec::new();
    let mut chosen_before: Vec<Element> = Vec::new();
    let mut tally: FxHashMap<Element, Tally> = FxHashMap::default();
    loop {
        tally.clear();
        for e in &unexplained {
            if let Some(pair) = e.through[NODE_PAIR] {
                let t = tally.entry(pair).or_default();
                t.pair_paths += 1;
                t.reverse_healthy |= e.reverse_healthy;
            }
            for (k, element) in e.votes() {
                let t = tally.entry(element).or_default();
                t.bad += 1;
                t.bad_from += usize::from(k == SRC);
            }
        }
        let mut candidates: Vec<Candidate> = tally
            .iter()
            .filter(|&(element, t)| t.bad > 0 && !chosen_before.contains(element) && !banned.contains(element))
            .map(|(&element, &t)| candidate(element, t, &tally, &totals, cfg))
            .collect();
        // The candidates that pass, most excess first; then those that do
        // not, highest share first (as runners-up); then most explained,
        // then the first claim in Element's order.
        candidates.sort_by(|x, y| {
            y.passes
                .cmp(&x.passes)
                .then_with(|| {
                    if x.passes {
                        y.excess.total_cmp(&x.excess)
                    } else {
                        y.score.share.total_cmp(&x.score.share)
                    }
                })
                .then(y.score.bad.cmp(&x.score.bad))
                .then(x.score.element.cmp(&y.score.element))
        });
        let Some(best) = candidates.iter().position(|c| c.passes) else {
            break;
        };
        let Candidate { mut score, side, .. } = candidates[best];
        let element = score.element;
        chosen_before.push(element);
        let (explained, rest): (Vec<Evidence>, Vec<Evidence>) =
            unexplained.into_iter().partition(|e| claims(e, element, side));
        unexplained = rest;
        // Node pairs whose every bad path this verdict explains are parts of
        // it, not alternatives.
        let mut parts: FxHashMap<Element, usize> = FxHashMap::default();
        for e in &explained {
            totals.uncount(judged[e.index].path.src, judged[e.index].path.dst);
            if let Some(pair) = e.through[NODE_PAIR].filter(|_| e.own) {
                *parts.entry(pair).or_default() += 1;
            }
        }
        let runners_up = candidates
            .iter()
            .enumerate()
            .filter(|&(i, c)| i != best && parts.get(&c.score.element) != Some(&c.score.bad))
            .take(3)
            .map(|(_, c)| c.score)
            .collect();
        score.element = directed(element, judged, &index);
        verdicts.push(Verdict {
            element: Some(score.element),
            score: Some(score),
            runners_up,
            paths: explained.into_iter().map(|e| e.index).collect(),
        });
    }
    let left: Vec<usize> = unexplained.into_iter().filter(|e| e.own).map(|e| e.index).collect();
    if !left.is_empty() {
        verdicts.push(Verdict {
            element: None,
            score: None,
            runners_up: Vec::new(),
            paths: left,
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
