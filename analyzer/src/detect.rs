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
//!   burst — a spurious timeout, a stalled host — is one event);
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
//!   network RTT.

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
    /// TCP retransmissions below the SLA but above the path's own baseline.
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
}

impl Symptom {
    /// Whether this is a network symptom (loss, retransmissions, RTT), as
    /// opposed to a slow responder.
    pub fn is_network(&self) -> bool {
        !matches!(self, Symptom::ResponderDelay { .. })
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
        }
    }

    /// Judges `paths`, all of one window and later than every window judged
    /// before; those without evidence enough are left out.
    pub fn judge_window<'a>(&mut self, paths: &'a [PathWindow]) -> Vec<Judged<'a>> {
        let last = std::mem::take(&mut self.last);
        let mut seen = Vec::with_capacity(paths.len());
        let judged = paths
            .iter()
            .enumerate()
            .filter_map(|(i, path)| {
                let key = (path.src, path.dst);
                let slot = match last.get(i) {
                    Some(&(k, slot)) if k == key => slot,
                    _ => self.slot(key),
                };
                seen.push((key, slot));
                self.judge(path, slot).map(|symptoms| Judged { path, symptoms })
            })
            .collect();
        self.last = seen;
        judged
    }

    /// The path's slot in the baseline arenas, made on first sight.
    fn slot(&mut self, key: (u32, u32)) -> usize {
        let next = self.slots.len();
        let slot = *self.slots.entry(key).or_insert(next);
        for arena in [&mut self.history, &mut self.loss, &mut self.retrans] {
            arena.grow(slot);
        }
        slot
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
        if probes_judged && let Some(rate) = path.loss_rate() {
            symptoms.extend(self.judge_rate(Rate::Loss, slot, rate, path.probes_sent));
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
        if segments_judged && let Some(rate) = path.retrans_rate() {
            if path.flows_with_retrans >= u64::from(cfg.min_retrans_flows) {
                symptoms.extend(self.judge_rate(Rate::Retrans, slot, rate, path.segs_out));
            } else {
                // One flow's burst is one event, not the path's state: it
                // joins the baseline as a healthy window's rate does.
                self.retrans.push(slot, (rate * PPB) as u64);
            }
        }
        Some(symptoms)
    }

    /// Judges a loss or retransmission rate of `out_of` probes or segments
    /// against its SLA, then against the path's baseline, whose spread is at
    /// least one of `out_of` so counting noise never flags. A healthy rate
    /// joins the baseline.
    fn judge_rate(&mut self, which: Rate, slot: usize, rate: f64, out_of: u64) -> Option<Symptom> {
        let (sla, arena) = match which {
            Rate::Loss => (self.cfg.loss_rate, &mut self.loss),
            Rate::Retrans => (self.cfg.retrans_rate, &mut self.retrans),
        };
        if rate > sla {
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
            arena.push(slot, (rate * PPB) as u64);
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
