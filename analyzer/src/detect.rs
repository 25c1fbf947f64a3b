//! Detection: which path windows are anomalous, and which agents' telemetry
//! has gaps.
//!
//! A path window is judged only when it has evidence enough: at least
//! `min_probes` probes for probe symptoms, at least [`MIN_SEGMENTS`] TCP
//! segments for retransmissions. Symptoms:
//!
//! - **loss**: (lost + failed) / sent above `loss_rate`;
//! - **retransmissions**: retransmitted / sent segments above
//!   `retrans_rate`, from at least `min_retrans_flows` flows (one flow's
//!   burst — a spurious timeout, a stalled host — is one event), and by
//!   more than counting noise: a one-sided binomial test of the window's
//!   segments against `retrans_rate` at `retrans_significance`. A path
//!   sending 400 segments a window at exactly the SLA retransmits 6 or more
//!   in one window of five; the test takes 10 (2.5 %), of 10 000 segments
//!   125 (1.25 %). A window above the SLA by no more than noise is judged
//!   against the path's baseline instead;
//! - **loss and retransmissions against the path's baseline**: a rate
//!   above the median of the path's previous `baseline_windows` healthy
//!   windows plus `mad_k` deviations, the deviation at least one probe (or
//!   segment) out of those sent — below the SLA, but far from what this
//!   path does: with 20 probes it takes the SLA's loss, with 10 000 a
//!   handful of lost probes on a path that never loses any;
//! - **RTT**: p99 network RTT above `p99_rtt_us`, or above the path's own
//!   baseline — the median of its previous `baseline_windows` judged windows
//!   plus `mad_k` median absolute deviations (at least
//!   [`MIN_BASELINE_WINDOWS`] of them, and a deviation floor of
//!   [`MAD_FLOOR_SHARE`] of the median so a perfectly steady path does not
//!   flag on jitter);
//! - **responder delay**: the responder held probes longer than
//!   `p99_responder_delay_us` at the 99th percentile — a slow *host*, kept apart from
//!   the network symptoms because the sampler already subtracts it from the
//!   network RTT;
//! - **pooled loss** (`loss_pooled`): a path that lost probes, though not
//!   beyond the SLA, of a host whose probes — every probe of the window from
//!   or to it, pooled — lose above `loss_rate` by a one-sided binomial test
//!   at significance `loss_significance`. Tens of probes per path cannot tell
//!   3 % from 2 %; the host's hundreds can ([`Detector::judge_window`]).
//!
//! **Clean probes outvote a fault's retransmission tail.** When a path's
//! probes showed a fault (a loss or RTT symptom) in one of the previous
//! [`RECOVERY_WINDOWS`] windows and are clean now (judged, none lost, no
//! loss or RTT symptom), a retransmission symptom in this window is not
//! taken: those retransmissions are TCP recovering what the fault lost
//! (timeouts backed off to seconds fire after the fault cleared), not the
//! path's state now. A fault only TCP sees (an MTU black hole, an ACL on
//! TCP) showed nothing in the probes before, so its retransmissions count
//! from its first window — and its tail is told by its rate instead: with
//! the probes clean, a retransmission symptom at most [`TAIL_SHARE`] of the
//! rate the path's retransmissions were flagged at in the last
//! [`RECOVERY_WINDOWS`] windows is the fault's tail, not taken. A fault
//! that persists keeps its rate; the timeouts a cleared one leaves behind
//! are a few segments (the CI's rack simulation once blamed two paths on
//! them after a TCP-only fault was cleared).

use std::f64::consts::PI;

use configs::Detection;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::model::{AgentWindow, PathWindow};

/// Fewest TCP segments a path window needs before its retransmission rate
/// is judged.
pub const MIN_SEGMENTS: u64 = 100;

/// Fewest earlier windows that make a baseline. With five, a path whose
/// p99 jitters healthily between 60 and 100 µs was flagged now and then:
/// the MAD of so few values is often small by chance.
pub const MIN_BASELINE_WINDOWS: usize = 10;

/// The MAD used is at least this share of the baseline median: with the
/// default `mad_k` of 5, a p99 must be at least 1.5× the path's median to
/// flag, however steady the path has been. At 5 %, healthy jitter of
/// ±25 % read as anomalies whenever a path's recent windows happened to be
/// alike.
pub const MAD_FLOOR_SHARE: f64 = 0.10;

/// For this many windows after a path's probes last showed a fault, its
/// retransmissions in a window whose probes are clean are taken as the
/// fault's tail (see the module's "Clean probes outvote …"): TCP's backed
/// off timeouts reach seconds, so the tail can outlast a short window.
pub const RECOVERY_WINDOWS: u64 = 2;

/// With the probes clean, retransmissions at most this share of the rate
/// a path's retransmissions were flagged at in the last
/// [`RECOVERY_WINDOWS`] windows are a TCP-only fault's tail (see the
/// module's "Clean probes outvote …"). A fault that persists holds its
/// rate within far less than a factor of three from one window to the
/// next; in the rack simulation a cleared one fell from 5–9 % to nothing.
pub const TAIL_SHARE: f64 = 1.0 / 3.0;

/// One reason a path window is anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "symptom", rename_all = "snake_case")]
pub enum Symptom {
    /// Probe loss above the SLA.
    Loss {
        /// Lost share of probes.
        rate: f64,
    },
    /// Probe loss below the SLA but above the path's own baseline.
    LossBaseline {
        /// Lost share of probes.
        rate: f64,
        /// Baseline median share.
        median: f64,
        /// Threshold it crossed.
        threshold: f64,
    },
    /// TCP retransmissions above the SLA.
    Retransmissions {
        /// Retransmitted share of segments.
        rate: f64,
    },
    /// TCP retransmissions not shown above the SLA (at or below it, or
    /// above it by counting noise) but above the path's own baseline.
    RetransmissionsBaseline {
        /// Retransmitted share of segments.
        rate: f64,
        /// Baseline median share.
        median: f64,
        /// Threshold it crossed.
        threshold: f64,
    },
    /// p99 network RTT above the absolute SLA.
    Rtt {
        /// p99, µs.
        p99_us: f64,
    },
    /// p99 network RTT above the path's own baseline.
    RttBaseline {
        /// p99, µs.
        p99_us: f64,
        /// Baseline median, µs.
        median_us: f64,
        /// Threshold it crossed, µs.
        threshold_us: f64,
    },
    /// The responder, not the network, was slow.
    ResponderDelay {
        /// p99 responder delay, µs.
        p99_us: f64,
    },
    /// Probes lost on a path of a host whose pooled probes lose
    /// significantly more than the SLA, though this path alone does not.
    LossPooled {
        /// Lost share of this path's probes.
        rate: f64,
        /// Lost share of the host's probes, from and to it.
        host_rate: f64,
        /// The host's probes.
        host_probes: u64,
        /// One-sided binomial p-value of the host's lost probes at the SLA.
        p_value: f64,
    },
}

impl Symptom {
    /// Whether this is a network symptom (loss, retransmissions, RTT), as
    /// opposed to a slow responder.
    pub fn is_network(&self) -> bool {
        !matches!(self, Symptom::ResponderDelay { .. })
    }

    /// Whether the probes show a fault of the network: loss or RTT.
    pub fn is_probe_fault(&self) -> bool {
        matches!(
            self,
            Symptom::Loss { .. }
                | Symptom::LossBaseline { .. }
                | Symptom::LossPooled { .. }
                | Symptom::Rtt { .. }
                | Symptom::RttBaseline { .. }
        )
    }

    /// Short label.
    pub fn label(&self) -> &'static str {
        match self {
            Symptom::Loss { .. } => "loss",
            Symptom::LossBaseline { .. } => "loss_baseline",
            Symptom::Retransmissions { .. } => "retransmissions",
            Symptom::RetransmissionsBaseline { .. } => "retransmissions_baseline",
            Symptom::Rtt { .. } => "rtt",
            Symptom::RttBaseline { .. } => "rtt_baseline",
            Symptom::ResponderDelay { .. } => "responder_delay",
            Symptom::LossPooled { .. } => "loss_pooled",
        }
    }
}

/// A judged path window and what is wrong with it (nothing, if healthy).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged<'a> {
    /// The path window.
    pub path: &'a PathWindow,
    /// Its symptoms; empty when healthy.
    pub symptoms: Vec<Symptom>,
}

impl Judged<'_> {
    /// Whether it shows a network symptom.
    pub fn network_bad(&self) -> bool {
        self.symptoms.iter().any(Symptom::is_network)
    }

    /// Whether its responder was slow.
    pub fn responder_slow(&self) -> bool {
        self.symptoms.iter().any(|s| !s.is_network())
    }

    /// Whether it is network-bad only as part of its host's pooled loss
    /// ([`Symptom::LossPooled`]), not on its own evidence.
    pub fn pooled_only(&self) -> bool {
        self.network_bad()
            && self
                .symptoms
                .iter()
                .all(|s| !s.is_network() || matches!(s, Symptom::LossPooled { .. }))
    }

    /// Whether its TCP flows retransmit: `None` when it carried too few
    /// segments to judge.
    pub fn retransmits(&self) -> Option<bool> {
        let flagged = self.symptoms.iter().any(|s| {
            matches!(
                s,
                Symptom::Retransmissions { .. } | Symptom::RetransmissionsBaseline { .. }
            )
        });
        (flagged || self.path.segs_out >= MIN_SEGMENTS).then_some(flagged)
    }
}

/// An agent's telemetry was missing or incomplete in a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gap {
    /// Window start, ns.
    pub window_ns: u64,
    /// The agent's node.
    pub node: u32,
    /// Nothing arrived from it.
    pub silent: bool,
    /// Received share of the datagrams it sent (1 when silent is true and
    /// nothing is known).
    pub completeness: f64,
}

/// Judges path windows one window at a time, in window order, carrying each
/// path's RTT baseline history from window to window. Memory holds the
/// history, not the judged windows: a report over millions of path windows
/// localizes each window and lets it go.
pub struct Detector<'c> {
    cfg: &'c Detection,
    /// Each path's slot in the baseline arenas, in order of first sight.
    slots: FxHashMap<(u32, u32), usize>,
    /// The previous window's paths and slots, in its order: windows list
    /// the same paths in the same order, so the slot is nearly always the
    /// one at the same position, and the hash lookup is skipped.
    last: Vec<((u32, u32), usize)>,
    /// Recent p99 RTTs, ns.
    history: Baselines,
    /// Recent probe loss rates, parts per billion.
    loss: Baselines,
    /// Recent retransmission rates, parts per billion.
    retrans: Baselines,
    scratch: Vec<f64>,
    /// Each node's dense index, for pooling its probes.
    nodes: FxHashMap<u32, usize>,
    /// Per path slot: the dense indexes of its source and destination
    /// (`None` for addresses outside the topology, node 0).
    ends: Vec<[Option<usize>; 2]>,
    /// Per dense node: the window's probes from and to it.
    pools: Vec<Pool>,
    /// The slots of the window's judged paths, in order.
    judged_slots: Vec<usize>,
    /// Windows judged so far: the current window's number.
    window_number: u64,
    /// Per path slot: the number of the latest window in which its probes
    /// showed a fault, loss or RTT (0: never).
    probe_fault_in: Vec<u64>,
    /// Per path slot: the latest window in which its retransmissions were
    /// flagged, and the highest rate they were flagged at in that run of
    /// windows.
    retrans_fault: Vec<RetransFault>,
}

/// When a path's retransmissions were last flagged, and at what rate.
#[derive(Debug, Clone, Copy, Default)]
struct RetransFault {
    /// Window number (0: never).
    window: u64,
    /// The highest rate of the run of flagged windows that ended there.
    rate: f64,
}

/// A host's probes in one window, from and to it.
#[derive(Debug, Clone, Copy, Default)]
struct Pool {
    sent: u64,
    lost: u64,
    /// One-sided p-value of `lost` at the SLA; 1 when not above it.
    p_value: f64,
}

/// Rates are kept in the baseline arenas as parts per billion.
const PPB: f64 = 1e9;

/// Every path's recent p99s, at most `cap` each, in one flat arena: slots
/// are handed out in the order paths first appear, which is the order each
/// window lists them, so judging a window walks the arena front to back
/// instead of chasing one small allocation per path (cache misses were
/// most of detection's time over millions of path windows).
struct Baselines {
    cap: usize,
    values: Vec<u64>,
    /// Per slot: values held, and the position of the oldest once full.
    fill: Vec<(usize, usize)>,
}

impl Baselines {
    fn new(cap: usize) -> Baselines {
        Baselines {
            cap,
            values: Vec::new(),
            fill: Vec::new(),
        }
    }

    /// Makes room for slots up to `slot` (slots are handed out in order).
    fn grow(&mut self, slot: usize) {
        if slot >= self.fill.len() {
            self.fill.resize(slot + 1, (0, 0));
            self.values.resize(self.fill.len() * self.cap, 0);
        }
    }

    /// The slot's values, oldest first only until it wraps (order does not
    /// matter to medians).
    fn values(&self, slot: usize) -> &[u64] {
        let start = slot * self.cap;
        &self.values[start..start + self.fill[slot].0]
    }

    /// Adds a value, dropping the oldest when full.
    fn push(&mut self, slot: usize, value: u64) {
        if self.cap == 0 {
            return;
        }
        let start = slot * self.cap;
        let (len, oldest) = &mut self.fill[slot];
        if *len < self.cap {
            self.values[start + *len] = value;
            *len += 1;
        } else {
            self.values[start + *oldest] = value;
            *oldest = (*oldest + 1) % self.cap;
        }
    }
}

impl<'c> Detector<'c> {
    /// A detector with no history.
    pub fn new(cfg: &'c Detection) -> Detector<'c> {
        Detector {
            cfg,
            slots: FxHashMap::default(),
            last: Vec::new(),
            history: Baselines::new(cfg.baseline_windows as usize),
            loss: Baselines::new(cfg.baseline_windows as usize),
            retrans: Baselines::new(cfg.baseline_windows as usize),
            scratch: Vec::new(),
            nodes: FxHashMap::default(),
            ends: Vec::new(),
            pools: Vec::new(),
            judged_slots: Vec::new(),
            window_number: 0,
            probe_fault_in: Vec::new(),
            retrans_fault: Vec::new(),
        }
    }

    /// Judges `paths`, all of one window and later than every window judged
    /// before; those without evidence enough are left out. Each path is
    /// judged alone, then each host's probes are pooled
    /// (`pool_hosts`).
    pub fn judge_window<'a>(&mut self, paths: &'a [PathWindow]) -> Vec<Judged<'a>> {
        let last = std::mem::take(&mut self.last);
        self.window_number += 1;
        let mut seen = Vec::with_capacity(paths.len());
        let mut slots = std::mem::take(&mut self.judged_slots);
        slots.clear();
        let mut judged: Vec<Judged<'a>> = paths
            .iter()
            .enumerate()
            .filter_map(|(i, path)| {
                let key = (path.src, path.dst);
                let slot = match last.get(i) {
                    Some(&(k, slot)) if k == key => slot,
                    _ => self.slot(key),
                };
                seen.push((key, slot));
                let symptoms = self.judge(path, slot)?;
                slots.push(slot);
                Some(Judged { path, symptoms })
            })
            .collect();
        self.last = seen;
        self.pool_hosts(&mut judged, &slots);
        self.judged_slots = slots;
        judged
    }

    /// The path's slot in the baseline arenas, made on first sight.
    fn slot(&mut self, key: (u32, u32)) -> usize {
        let next = self.slots.len();
        let slot = *self.slots.entry(key).or_insert(next);
        if slot == next {
            let ends = [key.0, key.1].map(|node| self.node(node));
            self.ends.push(ends);
        }
        for arena in [&mut self.history, &mut self.loss, &mut self.retrans] {
            arena.grow(slot);
        }
        if slot >= self.probe_fault_in.len() {
            self.probe_fault_in.resize(slot + 1, 0);
            self.retrans_fault.resize(slot + 1, RetransFault::default());
        }
        slot
    }

    /// A node's dense index, made on first sight; `None` for node 0, the
    /// addresses outside the topology, which are no host.
    fn node(&mut self, id: u32) -> Option<usize> {
        let next = self.nodes.len();
        (id != 0).then(|| *self.nodes.entry(id).or_insert(next))
    }

    /// The pooled test of each host's probe loss against the SLA.
    ///
    /// Every probe of the window from or to a host is one trial: a probe is a
    /// round trip, so a host dropping packets either way loses probes of
    /// both directions alike, and pooling both doubles the evidence. A host
    /// whose pool loses above `loss_rate` with a one-sided binomial p-value
    /// (the chance of losing as many at exactly `loss_rate`) at or below
    /// `loss_significance` is taken to lose above the SLA, and each of its
    /// paths that lost probes without crossing the SLA alone is flagged
    /// [`Symptom::LossPooled`]; paths that lost none stay healthy, so a
    /// host whose loss is all on some of its paths (a rack uplink's, one
    /// peer's) is not painted bad throughout. One window is pooled, not
    /// two: pooling the previous one dilutes a fault's first window with
    /// healthy probes and, at the same false-positive rate, finds no more.
    fn pool_hosts(&mut self, judged: &mut [Judged<'_>], slots: &[usize]) {
        let (sla, significance) = (self.cfg.loss_rate, self.cfg.loss_significance);
        if significance <= 0.0 || judged.is_empty() {
            return;
        }
        self.pools.clear();
        self.pools.resize(self.nodes.len(), Pool::default());
        for (j, &slot) in judged.iter().zip(slots) {
            let p = j.path;
            let lost = (p.probes_lost + p.probes_failed).min(p.probes_sent);
            for node in self.ends[slot].into_iter().flatten() {
                self.pools[node].sent += p.probes_sent;
                self.pools[node].lost += lost;
            }
        }
        let mut any = false;
        for pool in &mut self.pools {
            // At or below the SLA the p-value is near 1/2 or more: skipped,
            // as nearly every host of a window is.
            pool.p_value = if pool.lost as f64 > pool.sent as f64 * sla {
                binomial_tail(pool.sent, pool.lost, sla)
            } else {
                1.0
            };
            any |= pool.p_value <= significance;
        }
        if !any {
            return;
        }
        let min_probes = u64::from(self.cfg.min_probes);
        for (j, &slot) in judged.iter_mut().zip(slots) {
            let p = j.path;
            let lost = (p.probes_lost + p.probes_failed).min(p.probes_sent);
            let crossed = j
                .symptoms
                .iter()
                .any(|s| matches!(s, Symptom::Loss { .. } | Symptom::LossBaseline { .. }));
            if p.probes_sent < min_probes || lost == 0 || crossed {
                continue;
            }
            let host = self.ends[slot]
                .into_iter()
                .flatten()
                .map(|node| self.pools[node])
                .filter(|pool| pool.p_value <= significance)
                .min_by(|x, y| x.p_value.total_cmp(&y.p_value));
            if let Some(pool) = host {
                self.probe_fault_in[slot] = self.window_number;
                j.symptoms.push(Symptom::LossPooled {
                    rate: lost as f64 / p.probes_sent as f64,
                    host_rate: pool.lost as f64 / pool.sent as f64,
                    host_probes: pool.sent,
                    p_value: pool.p_value,
                });
            }
        }
    }

    /// Whether a retransmission symptom of rate `rate` on a path whose
    /// probes are clean now (judged, none lost, no symptom so far — loss and
    /// RTT are judged before retransmissions) is a fault's tail: its probes
    /// showed a fault in one of the last [`RECOVERY_WINDOWS`] windows, or its
    /// retransmissions were flagged there at more than 1 / [`TAIL_SHARE`]
    /// times this rate.
    fn tail(&self, slot: usize, rate: f64, probes_clean: bool) -> bool {
        let recent = |window: u64| window != 0 && self.window_number - window <= RECOVERY_WINDOWS;
        let retrans = self.retrans_fault[slot];
        probes_clean
            && (recent(self.probe_fault_in[slot]) || (recent(retrans.window) && rate <= TAIL_SHARE * retrans.rate))
    }

    /// The symptoms of one path window (empty: healthy), or `None` when it
    /// has evidence enough for no judgement.
    fn judge(&mut self, path: &PathWindow, slot: usize) -> Option<Vec<Symptom>> {
        let cfg = self.cfg;
        let probes_judged = path.probes_sent >= u64::from(cfg.min_probes);
        let segments_judged = path.segs_out >= MIN_SEGMENTS;
        if !probes_judged && !segments_judged {
            return None;
        }
        let mut symptoms = Vec::new();
        if probes_judged {
            let lost = path.probes_lost + path.probes_failed;
            symptoms.extend(self.judge_rate(Rate::Loss, slot, lost, path.probes_sent));
        }
        if probes_judged && path.probes_answered() >= u64::from(cfg.min_probes) {
            let p99 = path.rtt_p99_ns;
            if p99 > cfg.p99_rtt_us * 1_000 {
                symptoms.push(Symptom::Rtt { p99_us: us(p99) });
            } else if let Some((median, threshold)) = baseline(
                self.history.values(slot),
                cfg.mad_k,
                p99,
                Spread {
                    share: MAD_FLOOR_SHARE,
                    // k spreads of this are the least rise flagged.
                    min: (cfg.rtt_baseline_min_increase_us * 1_000) as f64 / cfg.mad_k.max(f64::MIN_POSITIVE),
                },
                &mut self.scratch,
            ) && p99 as f64 > threshold
            {
                symptoms.push(Symptom::RttBaseline {
                    p99_us: us(p99),
                    median_us: median / 1_000.0,
                    threshold_us: threshold / 1_000.0,
                });
            }
            if path.responder_delay_p99_ns > cfg.p99_responder_delay_us * 1_000 {
                symptoms.push(Symptom::ResponderDelay {
                    p99_us: us(path.responder_delay_p99_ns),
                });
            }
            // Anomalous windows stay out of the baseline, so a long
            // incident does not become the new normal.
            if !symptoms
                .iter()
                .any(|s| matches!(s, Symptom::Rtt { .. } | Symptom::RttBaseline { .. }))
            {
                self.history.push(slot, p99);
            }
        }
        if symptoms.iter().any(Symptom::is_probe_fault) {
            self.probe_fault_in[slot] = self.window_number;
        }
        if segments_judged && let Some(rate) = path.retrans_rate() {
            if path.flows_with_retrans >= u64::from(cfg.min_retrans_flows) {
                let symptom = self.judge_rate(Rate::Retrans, slot, path.retrans_segs, path.segs_out);
                let probes_clean = probes_judged
                    && path.probes_lost + path.probes_failed == 0
                    && !symptoms.iter().any(Symptom::is_probe_fault);
                if let Some(symptom) = symptom
                    && !self.tail(slot, rate, probes_clean)
                {
                    let window = self.window_number;
                    let last = &mut self.retrans_fault[slot];
                    let continued = last.window != 0 && window - last.window <= RECOVERY_WINDOWS;
                    last.rate = if continued { last.rate.max(rate) } else { rate };
                    last.window = window;
                    symptoms.push(symptom);
                }
            } else {
                // One flow's burst is one event, not the path's state: it
                // joins the baseline as a healthy window's rate does.
                self.retrans.push(slot, (rate * PPB) as u64);
            }
        }
        Some(symptoms)
    }

    /// Judges `count` lost probes or retransmitted segments of `out_of`
    /// against the SLA, then against the path's baseline, whose spread is at
    /// least one of `out_of` so counting noise never flags. A healthy rate
    /// joins the baseline. Retransmissions cross the SLA only when the count
    /// is improbable at the SLA's rate (`retrans_significance`); one above
    /// the SLA by counting noise is judged against the baseline, and does
    /// not join it.
    fn judge_rate(&mut self, which: Rate, slot: usize, count: u64, out_of: u64) -> Option<Symptom> {
        let rate = count as f64 / out_of as f64;
        let (sla, significance, arena) = match which {
            Rate::Loss => (self.cfg.loss_rate, 0.0, &mut self.loss),
            Rate::Retrans => (self.cfg.retrans_rate, self.cfg.retrans_significance, &mut self.retrans),
        };
        let above = rate > sla;
        if above && (significance <= 0.0 || binomial_tail(out_of, count, sla) <= significance) {
            return Some(match which {
                Rate::Loss => Symptom::Loss { rate },
                Rate::Retrans => Symptom::Retransmissions { rate },
            });
        }
        let spread = Spread {
            share: 0.0,
            min: PPB / out_of as f64,
        };
        let crossed = baseline(
            arena.values(slot),
            self.cfg.mad_k,
            (rate * PPB) as u64,
            spread,
            &mut self.scratch,
        )
        .filter(|&(_, threshold)| rate * PPB > threshold);
        let Some((median, threshold)) = crossed else {
            if !above {
                arena.push(slot, (rate * PPB) as u64);
            }
            return None;
        };
        let (median, threshold) = (median / PPB, threshold / PPB);
        Some(match which {
            Rate::Loss => Symptom::LossBaseline {
                rate,
                median,
                threshold,
            },
            Rate::Retrans => Symptom::RetransmissionsBaseline {
                rate,
                median,
                threshold,
            },
        })
    }
}

/// The telemetry gaps of windows starting at or after `from_ns`.
pub fn gaps(agents: &[AgentWindow], from_ns: u64, cfg: &Detection) -> Vec<Gap> {
    agents
        .iter()
        .filter(|a| a.window_ns >= from_ns)
        .filter_map(|agent| {
            let completeness = if agent.expected == 0 {
                1.0
            } else {
                agent.received as f64 / agent.expected as f64
            };
            (agent.silent || completeness < cfg.min_completeness).then_some(Gap {
                window_ns: agent.window_ns,
                node: agent.node,
                silent: agent.silent,
                completeness,
            })
        })
        .collect()
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// Which rate a baseline is for.
#[derive(Clone, Copy)]
enum Rate {
    Loss,
    Retrans,
}

/// The least deviation a baseline assumes: a share of its median and an
/// absolute amount, whichever is larger.
#[derive(Clone, Copy)]
struct Spread {
    share: f64,
    min: f64,
}

/// The baseline median and the threshold above it, in the history's unit,
/// if the history is long enough — or `None` too when `value` is plainly
/// within it.
///
/// The threshold is median + k × max(MAD, share × median, min). The median
/// is at least the history's smallest value, so the threshold is at least
/// both smallest × (1 + k × share) and smallest + k × min; a value at or
/// below either cannot cross it, and the two medians are skipped — nearly
/// every window of a healthy path.
fn baseline(history: &[u64], k: f64, value: u64, spread: Spread, scratch: &mut Vec<f64>) -> Option<(f64, f64)> {
    if history.len() < MIN_BASELINE_WINDOWS {
        return None;
    }
    let smallest = history.iter().min().copied().unwrap_or(0) as f64;
    let bound = (smallest * (1.0 + k * spread.share)).max(smallest + k * spread.min);
    if k >= 0.0 && value as f64 <= bound {
        return None;
    }
    scratch.clear();
    scratch.extend(history.iter().map(|&v| v as f64));
    let median = median(scratch);
    scratch.clear();
    scratch.extend(history.iter().map(|&v| (v as f64 - median).abs()));
    let mad = self::median(scratch);
    let spread = mad.max(median * spread.share).max(spread.min);
    Some((median, median + k * spread))
}

/// P(X ≥ k) for X ~ Binomial(n, p): the one-sided p-value of `k` lost of
/// `n` probes each lost with probability `p`. Summed from `k` up: past the
/// mean the terms shrink geometrically, so a few standard deviations' worth
/// are added, not `n`.
fn binomial_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 || p >= 1.0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    let (nf, kf) = (n as f64, k as f64);
    if kf <= nf * p {
        // Up to the mean, the complement is the tail that converges: with
        // Y = n − X lost at 1 − p, P(X ≤ k − 1) = P(Y ≥ n − k + 1).
        return 1.0 - binomial_tail(n, n - k + 1, 1.0 - p);
    }
    let ln_first =
        ln_gamma(nf + 1.0) - ln_gamma(kf + 1.0) - ln_gamma(nf - kf + 1.0) + kf * p.ln() + (nf - kf) * (-p).ln_1p();
    let odds = p / (1.0 - p);
    let mut term = ln_first.exp();
    let mut sum = term;
    let mut i = k;
    while i < n && term > sum * 1e-15 {
        term *= (n - i) as f64 / (i + 1) as f64 * odds;
        sum += term;
        i += 1;
    }
    sum.min(1.0)
}

/// ln Γ(x) for x ≥ 1 (Lanczos, g = 7, nine terms: relative error near
/// 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |sum, (i, c)| sum + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let h = [100, 102, 98, 101, 99, 150, 100, 102, 98, 101];
        let mut scratch = Vec::new();
        // Median 100.5, MAD 1.5; the spread floors at 10 % of the median:
        // 100.5 + 5 × 10.05.
        let rtt = Spread {
            share: MAD_FLOOR_SHARE,
            min: 0.0,
        };
        let (m, threshold) = baseline(&h, 5.0, 200, rtt, &mut scratch).unwrap();
        assert_eq!(m, 100.5);
        assert!((threshold - 150.75).abs() < 1e-9);
        // At most 1.5 × the smallest (98): cannot cross, medians skipped.
        assert!(baseline(&h, 5.0, 147, rtt, &mut scratch).is_none());
        assert!(baseline(&h, 5.0, 148, rtt, &mut scratch).is_some());
        assert!(baseline(&h[..9], 5.0, 200, rtt, &mut scratch).is_none());
        // An absolute floor: a path that never loses anything.
        let zero = [0; 10];
        let loss = Spread { share: 0.0, min: 10.0 };
        assert!(baseline(&zero, 5.0, 50, loss, &mut scratch).is_none());
        assert_eq!(baseline(&zero, 5.0, 51, loss, &mut scratch), Some((0.0, 50.0)));
    }

    #[test]
    fn binomial_tails_match_exact_sums() {
        // Γ(n + 1) = n!.
        for (n, factorial) in [(1.0, 1.0), (5.0, 120.0), (10.0, 3_628_800.0_f64)] {
            assert!((ln_gamma(n + 1.0) - factorial.ln()).abs() < 1e-12, "{n}");
        }
        // P(X ≥ 3), X ~ B(10, 1/2) = 1 − (1 + 10 + 45) / 1024.
        assert!((binomial_tail(10, 3, 0.5) - (1.0 - 56.0 / 1_024.0)).abs() < 1e-12);
        // Against the plain sum of the pmf, built term by term.
        for (n, p) in [(50, 0.02_f64), (800, 0.02), (1_600, 0.02), (5_000, 0.001)] {
            let mut pmf = vec![(1.0 - p).powi(n as i32)];
            for i in 0..n {
                let next = pmf[i] * (n - i) as f64 / (i + 1) as f64 * p / (1.0 - p);
                pmf.push(next);
            }
            for k in [1, 2, n / 50, n / 40, n / 20, n] {
                let exact: f64 = pmf[k..].iter().sum();
                let tail = binomial_tail(n as u64, k as u64, p);
                assert!(
                    (tail - exact).abs() <= 1e-9 * exact.max(1e-300),
                    "{n} {k} {tail} {exact}"
                );
            }
        }
        assert_eq!(binomial_tail(800, 0, 0.02), 1.0);
        assert_eq!(binomial_tail(800, 801, 0.02), 0.0);
        assert_eq!(binomial_tail(800, 1, 0.0), 0.0);
    }

    #[test]
    fn baselines_keep_the_latest_values_of_each_path() {
        let mut b = Baselines::new(3);
        let (x, y) = (0, 1);
        b.grow(y);
        for v in 1..=5 {
            b.push(x, v);
        }
        b.push(y, 9);
        let mut kept = b.values(x).to_vec();
        kept.sort_unstable();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(b.values(y), [9]);
        let mut none = Baselines::new(0);
        let z = 0;
        none.grow(z);
        none.push(z, 1);
        assert!(none.values(z).is_empty());
    }

    /// The shortcut never hides a crossing: against the full computation on
    /// varied histories.
    #[test]
    fn the_shortcut_agrees_with_the_full_baseline() {
        let mut lcg = 7u64;
        let mut next = move || {
            lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            lcg >> 40
        };
        let mut scratch = Vec::new();
        for _ in 0..2_000 {
            let len = MIN_BASELINE_WINDOWS + (next() % 30) as usize;
            let base = 10_000 + next() % 50_000;
            let h: Vec<u64> = (0..len).map(|_| base + next() % (base / 2)).collect();
            let p99 = base / 2 + next() % (base * 2);
            let k = (next() % 80) as f64 / 10.0;
            let spread = Spread {
                share: [0.0, MAD_FLOOR_SHARE][(next() % 2) as usize],
                min: (next() % 3 * 1_000) as f64,
            };
            let mut values: Vec<f64> = h.iter().map(|&v| v as f64).collect();
            let m = median(&mut values);
            let mut dev: Vec<f64> = h.iter().map(|&v| (v as f64 - m).abs()).collect();
            let threshold = m + k * median(&mut dev).max(m * spread.share).max(spread.min);
            let crossed = baseline(&h, k, p99, spread, &mut scratch).is_some_and(|(_, t)| p99 as f64 > t);
            assert_eq!(crossed, p99 as f64 > threshold, "{h:?} {p99} {k}");
        }
    }
}
