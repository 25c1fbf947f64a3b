//! Detection: which path windows are anomalous, and which agents' telemetry
//! has gaps. Plain functions over [`Observations`].
//!
//! A path window is judged only when it has evidence enough: at least
//! `min_probes` probes for probe symptoms, at least [`MIN_SEGMENTS`] TCP
//! segments for retransmissions. Symptoms:
//!
//! - **loss**: (lost + failed) / sent above `loss_rate`;
//! - **retransmissions**: retransmitted / sent segments above
//!   `retrans_rate`;
//! - **RTT**: p99 network RTT above `p99_rtt_us`, or above the path's own
//!   baseline — the median of its previous `baseline_windows` judged windows
//!   plus `mad_k` median absolute deviations (at least
//!   [`MIN_BASELINE_WINDOWS`] of them, and a deviation floor of
//!   [`MAD_FLOOR_SHARE`] of the median so a perfectly steady path does not
//!   flag on jitter);
//! - **responder delay**: the responder held probes longer than
//!   `p99_rtt_us` at the 99th percentile — a slow *host*, kept apart from
//!   the network symptoms because the sampler already subtracts it from the
//!   network RTT.

use std::collections::{BTreeMap, HashMap, VecDeque};

use configs::Detection;
use serde::Serialize;

use crate::model::{Observations, PathWindow};

/// Fewest TCP segments a path window needs before its retransmission rate
/// is judged.
pub const MIN_SEGMENTS: u64 = 100;

/// Fewest earlier windows that make a baseline.
pub const MIN_BASELINE_WINDOWS: usize = 5;

/// The MAD used is at least this share of the baseline median.
pub const MAD_FLOOR_SHARE: f64 = 0.05;

/// One reason a path window is anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "symptom", rename_all = "snake_case")]
pub enum Symptom {
    /// Probe loss above the SLA.
    Loss {
        /// Lost share of probes.
        rate: f64,
    },
    /// TCP retransmissions above the SLA.
    Retransmissions {
        /// Retransmitted share of segments.
        rate: f64,
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
            Symptom::Retransmissions { .. } => "retransmissions",
            Symptom::Rtt { .. } => "rtt",
            Symptom::RttBaseline { .. } => "rtt_baseline",
            Symptom::ResponderDelay { .. } => "responder_delay",
        }
    }
}

/// A judged path window and what is wrong with it (nothing, if healthy).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The path window.
    pub path: PathWindow,
    /// Its symptoms; empty when healthy.
    pub symptoms: Vec<Symptom>,
}

impl Judged {
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

/// Detection's result for the analyzed range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detected {
    /// Every judged path window in the range, by window.
    pub windows: BTreeMap<u64, Vec<Judged>>,
    /// Telemetry gaps in the range.
    pub gaps: Vec<Gap>,
}

/// Judges every path window starting at or after `from_ns`; earlier ones in
/// `obs` serve as baseline history.
pub fn detect(obs: &Observations, from_ns: u64, cfg: &Detection) -> Detected {
    let mut history: HashMap<(u32, u32), VecDeque<u64>> = HashMap::new();
    let mut detected = Detected::default();
    for path in &obs.paths {
        let probes_judged = path.probes_sent >= u64::from(cfg.min_probes);
        let segments_judged = path.segs_out >= MIN_SEGMENTS;
        if !probes_judged && !segments_judged {
            continue;
        }
        let mut symptoms = Vec::new();
        let history = history.entry((path.src, path.dst)).or_default();
        if probes_judged {
            if let Some(rate) = path.loss_rate().filter(|&r| r > cfg.loss_rate) {
                symptoms.push(Symptom::Loss { rate });
            }
            if path.probes_answered() >= u64::from(cfg.min_probes) {
                let p99 = path.rtt_p99_ns;
                if p99 > cfg.p99_rtt_us * 1_000 {
                    symptoms.push(Symptom::Rtt { p99_us: us(p99) });
                } else if let Some((median, threshold)) = baseline(history, cfg.mad_k)
                    && p99 as f64 > threshold
                {
                    symptoms.push(Symptom::RttBaseline {
                        p99_us: us(p99),
                        median_us: median / 1_000.0,
                        threshold_us: threshold / 1_000.0,
                    });
                }
                if path.responder_delay_p99_ns > cfg.p99_rtt_us * 1_000 {
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
                    history.push_back(p99);
                    if history.len() > cfg.baseline_windows as usize {
                        history.pop_front();
                    }
                }
            }
        }
        if segments_judged && let Some(rate) = path.retrans_rate().filter(|&r| r > cfg.retrans_rate) {
            symptoms.push(Symptom::Retransmissions { rate });
        }
        if path.window_ns >= from_ns {
            detected.windows.entry(path.window_ns).or_default().push(Judged {
                path: path.clone(),
                symptoms,
            });
        }
    }
    for agent in obs.agents.iter().filter(|a| a.window_ns >= from_ns) {
        let completeness = if agent.expected == 0 {
            1.0
        } else {
            agent.received as f64 / agent.expected as f64
        };
        if agent.silent || completeness < cfg.min_completeness {
            detected.gaps.push(Gap {
                window_ns: agent.window_ns,
                node: agent.node,
                silent: agent.silent,
                completeness,
            });
        }
    }
    detected
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// The baseline median and the threshold above it, in ns, if the history
/// is long enough.
fn baseline(history: &VecDeque<u64>, k: f64) -> Option<(f64, f64)> {
    if history.len() < MIN_BASELINE_WINDOWS {
        return None;
    }
    let median = median(history.iter().map(|&v| v as f64).collect());
    let mad = median_abs_deviation(history, median);
    let spread = mad.max(median * MAD_FLOOR_SHARE);
    Some((median, median + k * spread))
}

fn median(mut values: Vec<f64>) -> f64 {
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

fn median_abs_deviation(history: &VecDeque<u64>, median_value: f64) -> f64 {
    median(history.iter().map(|&v| (v as f64 - median_value).abs()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let h: VecDeque<u64> = [100, 102, 98, 101, 99, 150].into_iter().collect();
        let m = median(h.iter().map(|&v| v as f64).collect());
        assert_eq!(m, 100.5);
        assert_eq!(median_abs_deviation(&h, m), 1.5);
        // Spread floors at 5 % of the median: 100.5 + 5 × 5.025.
        let (_, threshold) = baseline(&h, 5.0).unwrap();
        assert!((threshold - 125.625).abs() < 1e-9);
        assert!(baseline(&h.iter().take(4).copied().collect(), 5.0).is_none());
    }
}
