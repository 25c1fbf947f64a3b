//! Path summaries: what one window says about one path, and how it becomes
//! a batch's [`PathSummary`] with its RTT histogram.
//!
//! Probes are summarized per (source node, destination node, DSCP,
//! transport); flows per (reporting node, the node owning the remote address
//! or 0 outside the topology, DSCP) with transport 0. A path counts probes
//! by outcome and flows' shares of the window ([`FlowDelta`]), and keeps
//! the distributions of network RTT and responder delay: raw values while
//! there are few (the common case), an HDR histogram beyond that.

use hdrhistogram::Histogram;
use wire_format::{
    PathSummary, ProbeOutcome, ProbeRecord, RTT_HISTOGRAM_MAX_NS, Transport, anomaly, encode_histogram,
    new_rtt_histogram, tail_quantile,
};

use super::flows::FlowDelta;

/// Values held per path as raw values before switching to a histogram: a
/// few probes per path and window is the common case, at 8 bytes each.
const FEW_SAMPLES: usize = 256;

/// Significant digits of the sampler's RTT histograms: values within 1 %.
/// Three digits would cost 2 048 counters per power of two, 80 KiB for a
/// path with sub-millisecond RTTs — over a gigabyte for a busy rack's few
/// thousand paths; two digits cost 12 KiB and resolve 1 µs at 100 µs, well
/// inside what the SLA thresholds (hundreds of µs) need.
pub const HISTOGRAM_SIGFIGS: u8 = 2;

/// Values are clamped below this so a histogram that grows to hold them
/// stays within the range readers accept.
const HISTOGRAM_CLAMP_NS: u64 = RTT_HISTOGRAM_MAX_NS / 2;

/// A path's identity within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct PathKey {
    /// Probing or reporting node.
    pub(super) src: u32,
    /// Probed node, or the node owning a flow's remote address (0: outside
    /// the topology).
    pub(super) dst: u32,
    /// DSCP of the probes or the flow.
    pub(super) dscp: u8,
    /// Probe transport code; 0 for flows.
    pub(super) transport: u8,
}

/// A distribution of values: raw while small, a histogram when large.
#[derive(Debug, Clone)]
enum Dist {
    Few(Vec<u64>),
    Many(Box<Histogram<u64>>),
}

impl Default for Dist {
    fn default() -> Self {
        Dist::Few(Vec::new())
    }
}

impl Dist {
    /// Records `value`; beyond `spill_at` raw values the distribution turns
    /// into a histogram.
    fn record(&mut self, value: u64, spill_at: usize) {
        let value = value.min(HISTOGRAM_CLAMP_NS);
        match self {
            Dist::Few(values) if values.len() < spill_at => values.push(value),
            Dist::Few(values) => {
                values.push(value);
                let histogram = sized_histogram(values);
                *self = Dist::Many(Box::new(histogram));
            }
            Dist::Many(histogram) => {
                // Auto-resizing, and values are clamped: cannot fail.
                let _ = histogram.record(value);
            }
        }
    }

    /// Adds `other`'s values. Two histograms are added bucket by bucket
    /// ([`Histogram::add`]), never expanded value by value: a merged path
    /// may hold millions of values.
    fn merge(&mut self, other: Dist, spill_at: usize) {
        if let (Dist::Few(mine), Dist::Few(theirs)) = (&mut *self, &other)
            && mine.len() + theirs.len() <= spill_at
        {
            mine.extend_from_slice(theirs);
            return;
        }
        // The larger side (a histogram, if either is one) takes the other.
        let (mut histogram, rest) = match (std::mem::take(self), other) {
            (Dist::Many(h), rest) => (h, rest),
            (few, Dist::Many(h)) => (h, few),
            (Dist::Few(values), rest) => (Box::new(sized_histogram(&values)), rest),
        };
        match rest {
            Dist::Few(values) => {
                for v in values {
                    // Auto-resizing, and values are clamped: cannot fail.
                    let _ = histogram.record(v);
                }
            }
            Dist::Many(other) => {
                // Auto-resizing, and the other's values were clamped when
                // recorded: cannot fail.
                let _ = histogram.add(&*other);
            }
        }
        *self = Dist::Many(histogram);
    }

    fn is_empty(&self) -> bool {
        match self {
            Dist::Few(values) => values.is_empty(),
            Dist::Many(histogram) => histogram.is_empty(),
        }
    }

    fn into_histogram(self) -> Histogram<u64> {
        match self {
            Dist::Many(histogram) => *histogram,
            Dist::Few(values) => sized_histogram(&values),
        }
    }
}

/// A histogram of `values` covering just their range (it grows if more are
/// recorded), so small RTTs cost a small allocation.
fn sized_histogram(values: &[u64]) -> Histogram<u64> {
    let highest = values.iter().copied().max().unwrap_or(0).max(2);
    let mut histogram =
        Histogram::new_with_bounds(1, highest, HISTOGRAM_SIGFIGS).unwrap_or_else(|_| new_rtt_histogram());
    histogram.auto(true);
    for &v in values {
        let _ = histogram.record(v);
    }
    histogram
}

/// One path's aggregate over a window.
#[derive(Debug, Clone, Default)]
pub(super) struct PathAgg {
    /// Raw values this path holds before switching to a histogram. It
    /// differs between paths so that a busy window's paths, all filling at
    /// the same pace, do not all convert in the same millisecond and stall
    /// ingest.
    spill_at: usize,
    probes_sent: u32,
    probes_lost: u32,
    probes_failed: u32,
    rtt_min_ns: u64,
    rtt_max_ns: u64,
    rtts: Dist,
    delays: Dist,
    flows: u32,
    flows_with_retrans: u32,
    flows_reset: u32,
    bytes_sent: u64,
    bytes_received: u64,
    segs_out: u64,
    retrans_segs: u64,
}

impl PathAgg {
    /// An empty aggregate for path `key`.
    pub(super) fn new(key: &PathKey) -> PathAgg {
        // A cheap mix of the key spreads thresholds over [FEW, 2·FEW).
        let mix =
            (u64::from(key.src) << 32 | u64::from(key.dst)) ^ (u64::from(key.dscp) << 8 | u64::from(key.transport));
        let spread = (mix.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % FEW_SAMPLES;
        PathAgg {
            spill_at: FEW_SAMPLES + spread,
            ..PathAgg::default()
        }
    }

    fn record_rtt(&mut self, rtt: u64) {
        if self.rtts.is_empty() || rtt < self.rtt_min_ns {
            self.rtt_min_ns = rtt;
        }
        self.rtt_max_ns = self.rtt_max_ns.max(rtt);
        self.rtts.record(rtt, self.spill_at);
    }

    /// Counts one probe record; returns why it is anomalous ([`anomaly`]
    /// bits; 0 if it is not).
    pub(super) fn add_probe(&mut self, record: &ProbeRecord, rtt_anomaly_ns: u64) -> u8 {
        self.probes_sent += 1;
        let mut anomalies = 0;
        match record.outcome() {
            ProbeOutcome::Ok => {
                if let Some(rtt) = record.network_rtt_ns() {
                    self.record_rtt(rtt);
                    if rtt > rtt_anomaly_ns {
                        anomalies |= anomaly::HIGH_RTT;
                    }
                }
                if let Some(delay) = record.responder_delay_ns() {
                    self.delays.record(delay, self.spill_at);
                }
            }
            ProbeOutcome::Timeout => {
                self.probes_lost += 1;
                anomalies |= anomaly::PROBE_TIMEOUT;
            }
            // Validation refuses unknown outcomes; count anything else as an error.
            _ => {
                self.probes_failed += 1;
                anomalies |= anomaly::PROBE_ERROR;
            }
        }
        anomalies
    }

    /// Adds one flow report's share of the window.
    pub(super) fn add_flow(&mut self, share: &FlowDelta) {
        self.flows += u32::from(share.first_in_window);
        self.flows_with_retrans += u32::from(share.retrans_first);
        self.flows_reset += u32::from(share.reset_first);
        self.bytes_sent += share.bytes_sent;
        self.bytes_received += share.bytes_received;
        self.segs_out += share.segs_out;
        self.retrans_segs += share.retrans_segs;
    }

    /// Adds the same path's aggregate from another window (catching up
    /// after a long pause).
    pub(super) fn merge(&mut self, other: PathAgg) {
        self.probes_sent += other.probes_sent;
        self.probes_lost += other.probes_lost;
        self.probes_failed += other.probes_failed;
        self.flows += other.flows;
        self.flows_with_retrans += other.flows_with_retrans;
        self.flows_reset += other.flows_reset;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.segs_out += other.segs_out;
        self.retrans_segs += other.retrans_segs;
        if !other.rtts.is_empty() {
            if self.rtts.is_empty() || other.rtt_min_ns < self.rtt_min_ns {
                self.rtt_min_ns = other.rtt_min_ns;
            }
            self.rtt_max_ns = self.rtt_max_ns.max(other.rtt_max_ns);
        }
        self.rtts.merge(other.rtts, self.spill_at);
        self.delays.merge(other.delays, self.spill_at);
    }
}

/// The batch's summary of path `key` and its encoded RTT histogram (empty
/// when no probe was answered). `scratch` is reused between paths.
pub(super) fn summarize(key: &PathKey, p: PathAgg, scratch: &mut Vec<u8>) -> (PathSummary, Vec<u8>) {
    let transport = (key.transport != 0).then(|| Transport::from(key.transport));
    let mut s = PathSummary::new(key.src, key.dst, key.dscp, transport);
    s.probes_sent = p.probes_sent.into();
    s.probes_lost = p.probes_lost.into();
    s.probes_failed = p.probes_failed.into();
    s.flows = p.flows.into();
    s.flows_with_retrans = p.flows_with_retrans.into();
    s.flows_reset = p.flows_reset.into();
    s.bytes_sent = p.bytes_sent.into();
    s.bytes_received = p.bytes_received.into();
    s.segs_out = p.segs_out.into();
    s.retrans_segs = p.retrans_segs.into();
    scratch.clear();
    if !p.rtts.is_empty() {
        let h = p.rtts.into_histogram();
        s.rtt_min_ns = p.rtt_min_ns.into();
        s.rtt_max_ns = p.rtt_max_ns.into();
        // Quantiles report the highest value equivalent to the bucket, which
        // may exceed the exact maximum by the histogram's precision.
        let q = |q: f64| h.value_at_quantile(q).min(p.rtt_max_ns);
        s.rtt_p50_ns = q(0.5).into();
        s.rtt_p90_ns = q(0.9).into();
        s.rtt_p99_ns = q(tail_quantile(h.len())).into();
        s.rtt_p999_ns = q(0.999).into();
        // Encoding a valid histogram into a Vec cannot fail; a path without
        // a histogram still carries its quantiles.
        let _ = encode_histogram(&h, scratch);
    }
    if !p.delays.is_empty() {
        let h = p.delays.into_histogram();
        s.responder_delay_p50_ns = h.value_at_quantile(0.5).into();
        s.responder_delay_p99_ns = h.value_at_quantile(tail_quantile(h.len())).into();
    }
    (s, scratch.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    fn dist(values: impl IntoIterator<Item = u64>, spill_at: usize) -> Dist {
        let mut d = Dist::default();
        for v in values {
            d.record(v, spill_at);
        }
        d
    }

    /// Merging gives the histogram of every value, whichever sides are raw
    /// values or histograms.
    #[test]
    fn merged_distributions_hold_every_value() {
        let spill_at = 8;
        let a: Vec<u64> = (1..=5).map(|i| i * 1_000).collect();
        let b: Vec<u64> = (1..=50).map(|i| 100_000 + i * 997).collect();
        let c: Vec<u64> = (1..=30).map(|i| 7_000_000 + i * 10_007).collect();
        for (left, right) in [(&a, &a), (&a, &b), (&b, &a), (&b, &c), (&c, &b)] {
            let mut merged = dist(left.iter().copied(), spill_at);
            merged.merge(dist(right.iter().copied(), spill_at), spill_at);
            let all = dist(left.iter().chain(right.iter()).copied(), spill_at).into_histogram();
            let merged = merged.into_histogram();
            assert_eq!(merged.len(), (left.len() + right.len()) as u64);
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                let (got, want) = (merged.value_at_quantile(q), all.value_at_quantile(q));
                assert!(merged.equivalent(got, want), "q{q}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn few_values_stay_raw_until_the_threshold() {
        let mut d = dist([1, 2, 3], 8);
        d.merge(dist([4, 5], 8), 8);
        assert!(matches!(&d, Dist::Few(v) if v == &[1, 2, 3, 4, 5]));
        d.merge(dist([6, 7, 8, 9], 8), 8);
        assert!(matches!(d, Dist::Many(_)));
    }

    #[test]
    fn a_merged_path_keeps_exact_extremes_and_sums() {
        let key = PathKey {
            src: 1,
            dst: 2,
            dscp: 0,
            transport: 1,
        };
        let mut a = PathAgg::new(&key);
        let mut b = PathAgg::new(&key);
        for (i, rtt) in [5_000, 9_000, 7_000].into_iter().enumerate() {
            a.record_rtt(rtt);
            b.record_rtt(rtt * 3 + i as u64);
        }
        a.probes_sent = 3;
        b.probes_sent = 4;
        b.probes_lost = 1;
        a.merge(b);
        assert_eq!((a.probes_sent, a.probes_lost), (7, 1));
        assert_eq!((a.rtt_min_ns, a.rtt_max_ns), (5_000, 27_001));
        let mut empty = PathAgg::new(&key);
        empty.merge(a);
        assert_eq!(empty.rtt_min_ns, 5_000, "an empty path takes the other's minimum");
    }
}
