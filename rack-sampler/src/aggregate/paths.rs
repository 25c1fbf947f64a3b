//! Path summaries: what one window says about one path, and how it becomes
//! a batch's [`PathSummary`] with its RTT histogram.
//!
//! Probes are summarized per (source node, destination node, DSCP,
//! transport); flows per (reporting node, the node owning the remote address
//! or 0 outside the topology, DSCP) with transport 0. A path counts probes
//! by outcome and flows' shares of the window ([`FlowDelta`]), and keeps
//! the distributions of network RTT and responder delay: raw values while
//! there are few (the common case), counts in the buckets of the batch's HDR
//! histogram beyond that — only the buckets the path's values fall in, so a
//! busy rack's paths stay small enough for the caches and a value costs a
//! shift and an increment. The HDR histogram the batch carries is built
//! from them when the window is summarized.

use hdrhistogram::Histogram;
use wire_format::{
    PathSummary, ProbeOutcome, ProbeRecord, RTT_HISTOGRAM_MAX_NS, Transport, anomaly, encode_histogram,
    new_rtt_histogram, tail_quantile,
};

use super::flows::FlowDelta;

/// Values held per path as raw values before switching to bucket counts: a
/// few probes per path and window is the common case, at 8 bytes each. Past
/// this, counts over the buckets the values fall in take less room (a path
/// whose RTTs span one power of two needs 128 buckets, 512 bytes).
const FEW_SAMPLES: usize = 64;

/// Significant digits of the sampler's RTT histograms: values within 1 %.
/// Three digits would cost 2 048 counters per power of two, 80 KiB for a
/// path with sub-millisecond RTTs — over a gigabyte for a busy rack's few
/// thousand paths; two digits cost 128 counters per power of two and
/// resolve 1 µs at 100 µs, well inside what the SLA thresholds (hundreds of
/// µs) need.
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

/// The bucket layout of an HDR histogram from 1 ns with [`HISTOGRAM_SIGFIGS`]
/// digits — the histogram a batch carries — computed here so that a value
/// is counted with a shift and an increment: no histogram (≈ 13 KiB for RTTs
/// up to 1 ms) per path while a window is open, only the buckets the path's
/// values fall in. [`Counts::histogram`] turns the counts into that HDR
/// histogram when the window is summarized; the test
/// `buckets_match_the_hdr_layout` checks the two layouts agree.
mod layout {
    use super::{HISTOGRAM_CLAMP_NS, HISTOGRAM_SIGFIGS};

    /// log2 of the sub-buckets per power of two: the smallest power of two
    /// above 2·10^digits (what hdrhistogram resolves to one unit).
    const SUB_BUCKET_MAGNITUDE: u32 = {
        let largest = 2 * 10u64.pow(HISTOGRAM_SIGFIGS as u32);
        let mut magnitude = 0;
        while (1u64 << magnitude) < largest {
            magnitude += 1;
        }
        magnitude
    };
    const HALF_MAGNITUDE: u32 = SUB_BUCKET_MAGNITUDE - 1;
    const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_MAGNITUDE) - 1;

    /// The bucket (hdrhistogram's counts index) of `value`.
    #[inline]
    pub(super) fn bucket_of(value: u64) -> usize {
        // Powers of two above what the first bucket holds: 0 up to 2^mag.
        let shift = (64 - SUB_BUCKET_MAGNITUDE) - (value | SUB_BUCKET_MASK).leading_zeros();
        // shift·half + value >> shift: hdrhistogram's (shift + 1)·half +
        // (sub-bucket − half).
        ((shift as usize) << HALF_MAGNITUDE) + (value >> shift) as usize
    }

    /// The lowest value counted in `bucket`.
    pub(super) fn lowest_in(bucket: usize) -> u64 {
        if bucket < 1 << SUB_BUCKET_MAGNITUDE {
            return bucket as u64;
        }
        let shift = (bucket >> HALF_MAGNITUDE) - 1;
        let sub_bucket = (bucket & ((1 << HALF_MAGNITUDE) - 1)) + (1 << HALF_MAGNITUDE);
        (sub_bucket as u64) << shift
    }

    /// Buckets a (clamped) value can fall in.
    pub(super) const BUCKETS: usize = {
        let value = HISTOGRAM_CLAMP_NS;
        let shift = (64 - SUB_BUCKET_MAGNITUDE) - (value | SUB_BUCKET_MASK).leading_zeros();
        ((shift as usize) << HALF_MAGNITUDE) + (value >> shift) as usize + 1
    };
}

/// Values counted per bucket ([`layout`]), over just the range of buckets a
/// path's values fall in: the same information as the HDR histogram the
/// batch carries, in 4 bytes per bucket used instead of 8 per bucket from
/// 1 ns up.
#[derive(Debug, Clone, Default)]
struct Counts {
    /// Bucket of the first cell.
    first: usize,
    cells: Cells,
    /// Values counted.
    total: u64,
}

/// The cells of [`Counts`]: 4-byte counts, widened to 8 bytes if a bucket
/// ever passes `u32::MAX` values (billions of probes on one path in one
/// window: possible with long windows, never seen).
#[derive(Debug, Clone)]
enum Cells {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Default for Cells {
    fn default() -> Self {
        Cells::Narrow(Vec::new())
    }
}

impl Cells {
    fn len(&self) -> usize {
        match self {
            Cells::Narrow(c) => c.len(),
            Cells::Wide(c) => c.len(),
        }
    }

    /// Calls `f` with the index and count of every non-zero cell, in order.
    fn each_nonzero(&self, mut f: impl FnMut(usize, u64)) {
        match self {
            Cells::Narrow(c) => c
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n != 0)
                .for_each(|(i, &n)| f(i, u64::from(n))),
            Cells::Wide(c) => c
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n != 0)
                .for_each(|(i, &n)| f(i, n)),
        }
    }
}

/// `cells` (whose first cell is bucket `first`) moved into a vector of
/// `len` cells whose first is bucket `new_first`.
fn regrown<C: Copy + Default>(cells: &[C], first: usize, new_first: usize, len: usize) -> Vec<C> {
    let mut grown = vec![C::default(); len];
    let at = first - new_first;
    grown[at..at + cells.len()].copy_from_slice(cells);
    grown
}

impl Counts {
    /// Counts of `values` (clamped), cells covering just their range.
    fn of(values: &[u64]) -> Counts {
        let (low, high) = values.iter().fold((usize::MAX, 0), |(low, high), &v| {
            let b = layout::bucket_of(v);
            (low.min(b), high.max(b))
        });
        let mut counts = Counts::default();
        if low <= high {
            counts.first = low;
            counts.cells = Cells::Narrow(vec![0; high - low + 1]);
        }
        for &v in values {
            counts.record(v);
        }
        counts
    }

    /// Counts one (clamped) value.
    #[inline]
    fn record(&mut self, value: u64) {
        let bucket = layout::bucket_of(value);
        self.total += 1;
        if let Cells::Narrow(cells) = &mut self.cells
            && let Some(cell) = bucket.checked_sub(self.first).and_then(|i| cells.get_mut(i))
            && let Some(sum) = cell.checked_add(1)
        {
            *cell = sum;
            return;
        }
        self.add_slow(bucket, 1);
    }

    /// Adds `n` values to `bucket`, growing or widening the cells.
    fn add_slow(&mut self, bucket: usize, n: u64) {
        self.cover(bucket);
        let i = bucket - self.first;
        if let Cells::Narrow(cells) = &mut self.cells {
            match u32::try_from(n).ok().and_then(|n| cells[i].checked_add(n)) {
                Some(sum) => {
                    cells[i] = sum;
                    return;
                }
                None => self.cells = Cells::Wide(cells.iter().map(|&c| u64::from(c)).collect()),
            }
        }
        if let Cells::Wide(cells) = &mut self.cells {
            // At most 2⁶⁴ − 1 values fit in memory's worth of probes.
            cells[i] = cells[i].saturating_add(n);
        }
    }

    /// Grows the cells to cover `bucket`, with room for a quarter more on
    /// the side grown so a path's range settles after a few growths.
    fn cover(&mut self, bucket: usize) {
        let (first, len) = (self.first, self.cells.len());
        if len == 0 {
            self.first = bucket;
            self.cells = Cells::Narrow(vec![0; 1]);
            return;
        }
        if (first..first + len).contains(&bucket) {
            return;
        }
        let slack = len / 4 + 8;
        let new_first = if bucket < first {
            bucket.saturating_sub(slack)
        } else {
            first
        };
        let end = if bucket >= first + len {
            (bucket + 1 + slack).min(layout::BUCKETS).max(bucket + 1)
        } else {
            first + len
        };
        let new_len = end - new_first;
        self.cells = match &self.cells {
            Cells::Narrow(c) => Cells::Narrow(regrown(c, first, new_first, new_len)),
            Cells::Wide(c) => Cells::Wide(regrown(c, first, new_first, new_len)),
        };
        self.first = new_first;
    }

    /// Adds `other`'s counts bucket by bucket.
    fn absorb(&mut self, other: &Counts) {
        other.cells.each_nonzero(|i, n| self.add_slow(other.first + i, n));
        self.total += other.total;
    }

    /// hdrhistogram's `value_at_quantile` of each of `quantiles`, in one
    /// pass over just this path's cells: a window's summary needs a few
    /// quantiles of every path, and building each path's histogram to scan
    /// it once per quantile from 1 ns up was most of encoding a window.
    fn values_at_quantiles<const N: usize>(&self, quantiles: [f64; N]) -> [u64; N] {
        // hdrhistogram's count to reach: ⌈q·total⌉, at least 1.
        let targets = quantiles.map(|q| {
            // As hdrhistogram caps it (a NaN is not capped, and counts 0).
            let q = if q > 1.0 { 1.0 } else { q };
            ((q * self.total as f64).ceil() as u64).max(1)
        });
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_unstable_by_key(|&i| targets[i]);
        let mut values = [0; N];
        let mut next = 0;
        let mut seen = 0u64;
        self.cells.each_nonzero(|i, n| {
            seen += n;
            let bucket = self.first + i;
            while next < N && seen >= targets[order[next]] {
                let q = order[next];
                // The lowest value of the bucket for quantile 0, else its
                // highest (the next bucket's lowest less one), as
                // hdrhistogram reports.
                values[q] = if quantiles[q] == 0.0 {
                    layout::lowest_in(bucket)
                } else {
                    layout::lowest_in(bucket + 1) - 1
                };
                next += 1;
            }
        });
        values
    }

    /// The HDR histogram of the values recorded: the same buckets, so the
    /// same quantiles and encoding as recording each value into it.
    fn histogram(&self) -> Histogram<u64> {
        let mut top = 0;
        self.cells.each_nonzero(|i, _| top = self.first + i);
        let mut histogram = Histogram::new_with_bounds(1, layout::lowest_in(top).max(2), HISTOGRAM_SIGFIGS)
            .unwrap_or_else(|_| new_rtt_histogram());
        histogram.auto(true);
        self.cells.each_nonzero(|i, n| {
            // Auto-resizing, and values were clamped: cannot fail.
            let _ = histogram.record_n(layout::lowest_in(self.first + i), n);
        });
        histogram
    }
}

/// Makes room in a path's raw values on a schedule of the path's own: from
/// an eighth of its spill threshold, doubling, up to the threshold.
///
/// Not `Vec`'s 4, 8, 16, …: a rack's paths see values at about the same
/// rate, so with one schedule every path reallocated at the same moment of
/// a window — at 100 values a second per path and 20 000 paths, 40 000
/// reallocations within a few milliseconds at 0.16, 0.33 and 0.65 s into
/// each window, on top of the receive thread's profile while its socket
/// overflowed. The thresholds are spread over [64, 128) per path, so these
/// growth points are spread over a factor of two in time. The last step
/// makes room for the value that spills (`spill_at + 1`), so spilling
/// never reallocates first.
#[cold]
fn grow(values: &mut Vec<u64>, spill_at: usize) {
    let mut target = (values.len() * 2).max(spill_at / 8);
    if target >= spill_at {
        target = spill_at + 1;
    }
    values.reserve_exact(target - values.len());
}

/// A distribution of values: raw while few, counts per bucket beyond.
#[derive(Debug, Clone)]
enum Dist {
    Few(Vec<u64>),
    Many(Counts),
}

impl Default for Dist {
    fn default() -> Self {
        Dist::Few(Vec::new())
    }
}

impl Dist {
    /// Records `value`; beyond `spill_at` raw values the distribution turns
    /// into bucket counts.
    #[inline]
    fn record(&mut self, value: u64, spill_at: usize) {
        let value = value.min(HISTOGRAM_CLAMP_NS);
        match self {
            Dist::Many(counts) => counts.record(value),
            Dist::Few(values) if values.len() < spill_at => {
                if values.len() == values.capacity() {
                    grow(values, spill_at);
                }
                values.push(value);
            }
            Dist::Few(values) => {
                values.push(value);
                *self = Dist::Many(Counts::of(values));
            }
        }
    }

    /// Adds `other`'s values; two sets of counts are added bucket by
    /// bucket, never expanded value by value (a merged path may hold
    /// millions of values).
    fn merge(&mut self, other: Dist, spill_at: usize) {
        if let (Dist::Few(mine), Dist::Few(theirs)) = (&mut *self, &other)
            && mine.len() + theirs.len() <= spill_at
        {
            mine.extend_from_slice(theirs);
            return;
        }
        let mut counts = match std::mem::take(self) {
            Dist::Many(counts) => counts,
            Dist::Few(values) => Counts::of(&values),
        };
        match other {
            Dist::Few(values) => values.iter().for_each(|&v| counts.record(v)),
            Dist::Many(other) => counts.absorb(&other),
        }
        *self = Dist::Many(counts);
    }

    fn is_empty(&self) -> bool {
        match self {
            Dist::Few(values) => values.is_empty(),
            Dist::Many(counts) => counts.total == 0,
        }
    }

    fn into_counts(self) -> Counts {
        match self {
            Dist::Many(counts) => counts,
            Dist::Few(values) => Counts::of(&values),
        }
    }

    #[cfg(test)]
    fn into_histogram(self) -> Histogram<u64> {
        self.into_counts().histogram()
    }
}

/// Answered probes a path holds before recording their values into its
/// distributions together (see [`PathAgg::batch`]).
const BATCH: usize = 8;

/// A batched probe without a responder delay (delays from `u32::MAX` ns up
/// are recorded at once, not batched).
const NO_DELAY: u32 = u32::MAX;

/// One path's aggregate over a window.
///
/// Laid out for the cache: a probe record touches only the first 96 bytes
/// (its counts, the RTT extremes and the batch), which `align(64)` keeps in
/// two cache lines; the distributions and flow counts follow. With 20 000
/// paths the aggregates are 6 MiB and their distributions tens of MiB, more
/// than the caches hold.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub(super) struct PathAgg {
    probes_sent: u32,
    probes_lost: u32,
    probes_failed: u32,
    /// Pairs held in `batch`.
    held: u32,
    rtt_min_ns: u64,
    rtt_max_ns: u64,
    /// Network RTT and responder delay ([`NO_DELAY`]: none) of answered
    /// probes not yet recorded into `rtts` and `delays`: `batch[..held]`.
    /// A value lands in a random place of its distribution, rarely in the
    /// cache with thousands of paths: recorded one at a time, every probe
    /// would wait for memory twice; recorded in batches, the misses of a
    /// batch overlap. RTTs from `u32::MAX` ns up are recorded at once.
    batch: [[u32; 2]; BATCH],
    rtts: Dist,
    delays: Dist,
    /// Raw values this path holds before switching to bucket counts. It
    /// differs between paths so that a busy window's paths, all filling at
    /// the same pace, do not all convert in the same millisecond.
    spill_at: usize,
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
            probes_sent: 0,
            probes_lost: 0,
            probes_failed: 0,
            held: 0,
            rtt_min_ns: u64::MAX,
            rtt_max_ns: 0,
            batch: [[0; 2]; BATCH],
            rtts: Dist::default(),
            delays: Dist::default(),
            spill_at: FEW_SAMPLES + spread,
            flows: 0,
            flows_with_retrans: 0,
            flows_reset: 0,
            bytes_sent: 0,
            bytes_received: 0,
            segs_out: 0,
            retrans_segs: 0,
        }
    }

    /// Records an answered probe's network RTT and responder delay.
    #[inline]
    fn record_answer(&mut self, rtt: u64, delay: Option<u64>) {
        self.rtt_min_ns = self.rtt_min_ns.min(rtt);
        self.rtt_max_ns = self.rtt_max_ns.max(rtt);
        let batched_delay = match delay {
            None => Some(NO_DELAY),
            Some(delay) => u32::try_from(delay).ok().filter(|&d| d != NO_DELAY),
        };
        if let (Ok(rtt), Some(delay)) = (u32::try_from(rtt), batched_delay)
            && let Some(slot) = self.batch.get_mut(self.held as usize)
        {
            *slot = [rtt, delay];
            self.held += 1;
            if self.held as usize == BATCH {
                self.record_batch();
            }
            return;
        }
        self.rtts.record(rtt, self.spill_at);
        if let Some(delay) = delay {
            self.delays.record(delay, self.spill_at);
        }
    }

    /// Records the batched values into the distributions.
    fn record_batch(&mut self) {
        let held = std::mem::take(&mut self.held) as usize;
        for &[rtt, delay] in &self.batch[..held] {
            self.rtts.record(u64::from(rtt), self.spill_at);
            if delay != NO_DELAY {
                self.delays.record(u64::from(delay), self.spill_at);
            }
        }
    }

    /// Counts one probe record; returns why it is anomalous ([`anomaly`]
    /// bits; 0 if it is not).
    pub(super) fn add_probe(&mut self, record: &ProbeRecord, rtt_anomaly_ns: u64) -> u8 {
        self.probes_sent += 1;
        let mut anomalies = 0;
        match record.outcome() {
            ProbeOutcome::Ok => {
                let delay = record.responder_delay_ns();
                // An answered probe always has a network RTT.
                let rtt = record.network_rtt_ns().unwrap_or(0);
                self.record_answer(rtt, delay);
                if rtt > rtt_anomaly_ns {
                    anomalies |= anomaly::HIGH_RTT;
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
    pub(super) fn merge(&mut self, mut other: PathAgg) {
        self.record_batch();
        other.record_batch();
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
        // Extremes of no RTT at all are u64::MAX and 0.
        self.rtt_min_ns = self.rtt_min_ns.min(other.rtt_min_ns);
        self.rtt_max_ns = self.rtt_max_ns.max(other.rtt_max_ns);
        self.rtts.merge(other.rtts, self.spill_at);
        self.delays.merge(other.delays, self.spill_at);
    }
}

/// The batch's summary of path `key` and its encoded RTT histogram (empty
/// when no probe was answered). `scratch` is reused between paths.
pub(super) fn summarize(key: &PathKey, mut p: PathAgg, scratch: &mut Vec<u8>) -> (PathSummary, Vec<u8>) {
    p.record_batch();
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
        let counts = p.rtts.into_counts();
        s.rtt_min_ns = p.rtt_min_ns.into();
        s.rtt_max_ns = p.rtt_max_ns.into();
        // Quantiles report the highest value equivalent to the bucket, which
        // may exceed the exact maximum by the histogram's precision.
        let [p50, p90, p99, p999] = counts
            .values_at_quantiles([0.5, 0.9, tail_quantile(counts.total), 0.999])
            .map(|v| v.min(p.rtt_max_ns));
        (s.rtt_p50_ns, s.rtt_p90_ns, s.rtt_p99_ns, s.rtt_p999_ns) = (p50.into(), p90.into(), p99.into(), p999.into());
        // Encoding a valid histogram into a Vec cannot fail; a path without
        // a histogram still carries its quantiles.
        let _ = encode_histogram(&counts.histogram(), scratch);
    }
    if !p.delays.is_empty() {
        // Only quantiles of the delays travel: no histogram is built.
        let counts = p.delays.into_counts();
        let [p50, p99] = counts.values_at_quantiles([0.5, tail_quantile(counts.total)]);
        (s.responder_delay_p50_ns, s.responder_delay_p99_ns) = (p50.into(), p99.into());
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

    /// The buckets are hdrhistogram's (1 ns, [`HISTOGRAM_SIGFIGS`] digits):
    /// same bucket for the same values, and each bucket's lowest value.
    #[test]
    fn buckets_match_the_hdr_layout() {
        let hdr = Histogram::<u64>::new_with_bounds(1, HISTOGRAM_CLAMP_NS, HISTOGRAM_SIGFIGS).unwrap();
        let mut values: Vec<u64> = (0..5_000).collect();
        for shift in 0..=42 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1, p + p / 3, p + p / 2, p * 2 - 1]);
        }
        values.push(HISTOGRAM_CLAMP_NS);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            values.push((rng % HISTOGRAM_CLAMP_NS) >> (rng % 40));
        }
        for v in values {
            let v = v.min(HISTOGRAM_CLAMP_NS);
            let bucket = layout::bucket_of(v);
            assert!(bucket < layout::BUCKETS, "{v}");
            assert_eq!(layout::lowest_in(bucket), hdr.lowest_equivalent(v), "{v}");
            assert_eq!(layout::bucket_of(hdr.highest_equivalent(v)), bucket, "{v}");
            if layout::lowest_in(bucket) > 0 {
                assert_eq!(layout::bucket_of(layout::lowest_in(bucket) - 1), bucket - 1, "{v}");
            }
        }
        assert_eq!(layout::BUCKETS, layout::bucket_of(HISTOGRAM_CLAMP_NS) + 1);
    }

    /// Counting values in buckets and building the histogram from the
    /// counts gives the histogram of recording every value: equal counts,
    /// quantiles and encoding — whether the counts grew down, up, or
    /// widened past `u32::MAX`.
    #[test]
    fn counts_give_the_histogram_of_every_value() {
        let sets: [Vec<u64>; 4] = [
            (1..=300).map(|i| 400_000 - i * 1_111).collect(),
            (1..=300).map(|i| 50_000 + i * 1_511).collect(),
            [0, 1, 7, 255, 256, 1 << 20, HISTOGRAM_CLAMP_NS, 3, 99_999].repeat(40),
            (0..400).map(|i| 10_000 << (i % 30)).collect(),
        ];
        for values in sets {
            let mut direct = Histogram::<u64>::new_with_bounds(1, 2, HISTOGRAM_SIGFIGS).unwrap();
            direct.auto(true);
            let mut d = Dist::default();
            for &v in &values {
                direct.record(v.min(HISTOGRAM_CLAMP_NS)).unwrap();
                d.record(v, 16);
            }
            let h = d.into_histogram();
            // Every bucket's count (the extremes hdrhistogram keeps on the
            // side differ: the batch carries the exact ones apart).
            let buckets = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
                h.iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value()))
                    .collect()
            };
            let (x, y) = (buckets(&h), buckets(&direct));
            if x != y {
                let diff: Vec<_> = x.iter().zip(&y).filter(|(a, b)| a != b).take(5).collect();
                panic!("{} vs {} buckets; {diff:?}", x.len(), y.len());
            }
            assert_eq!(h.len(), direct.len());
            let quantiles = [
                0.0,
                0.01,
                0.5,
                0.9,
                0.99,
                0.999,
                1.0,
                tail_quantile(direct.len()),
                0.3,
                1e-9,
            ];
            let from_counts = dist(values.iter().copied(), 16)
                .into_counts()
                .values_at_quantiles(quantiles);
            for (q, from_counts) in quantiles.into_iter().zip(from_counts) {
                assert_eq!(h.value_at_quantile(q), direct.value_at_quantile(q), "q{q}");
                assert_eq!(from_counts, direct.value_at_quantile(q), "q{q} from the counts");
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            wire_format::encode_histogram(&h, &mut a).unwrap();
            wire_format::encode_histogram(&direct, &mut b).unwrap();
            let (a, b) = (
                wire_format::decode_histogram(&a).unwrap(),
                wire_format::decode_histogram(&b).unwrap(),
            );
            assert!(a == b, "decoded histograms differ");
        }

        let mut counts = Counts::of(&[1_000, 2_000]);
        counts.add_slow(layout::bucket_of(1_000), u64::from(u32::MAX));
        counts.total += u64::from(u32::MAX);
        counts.record(1_000);
        assert!(matches!(counts.cells, Cells::Wide(_)));
        let h = counts.histogram();
        assert_eq!(h.count_at(1_000), u64::from(u32::MAX) + 2);
        assert_eq!(h.len(), u64::from(u32::MAX) + 3);
    }

    /// Raw values grow from an eighth of the path's own threshold,
    /// doubling, and end with room for the value that spills: growth
    /// points differ between thresholds, and spilling never reallocates.
    #[test]
    fn raw_values_grow_on_the_paths_own_schedule() {
        let mut first_steps = std::collections::BTreeSet::new();
        for spill_at in FEW_SAMPLES..2 * FEW_SAMPLES {
            let mut d = Dist::default();
            let mut capacities = Vec::new();
            for v in 0..spill_at as u64 {
                d.record(v, spill_at);
                let Dist::Few(values) = &d else {
                    panic!("spilled early at {spill_at}")
                };
                capacities.push(values.capacity());
            }
            assert_eq!(capacities[0], spill_at / 8, "{spill_at}");
            assert_eq!(capacities.last(), Some(&(spill_at + 1)), "{spill_at}");
            first_steps.insert(capacities[0]);
            d.record(7, spill_at);
            assert!(matches!(&d, Dist::Many(c) if c.total == spill_at as u64 + 1));
        }
        assert_eq!(first_steps.len(), 8, "{first_steps:?}");
    }

    #[test]
    fn few_values_stay_raw_until_the_threshold() {
        let mut d = dist([1, 2, 3], 8);
        d.merge(dist([4, 5], 8), 8);
        assert!(matches!(&d, Dist::Few(v) if v == &[1, 2, 3, 4, 5]));
        d.merge(dist([6, 7, 8, 9], 8), 8);
        assert!(matches!(d, Dist::Many(_)));
    }

    /// The probe path 1 → 2 the tests below fill.
    fn probe_key() -> PathKey {
        PathKey {
            src: 1,
            dst: 2,
            dscp: 0,
            transport: 1,
        }
    }

    /// Answers still in the batch when the window is summarized are in its
    /// histograms, and so are values too large to batch; a probe without a
    /// responder delay adds no delay.
    #[test]
    fn batched_answers_are_all_summarized() {
        let key = probe_key();
        let mut p = PathAgg::new(&key);
        let answers = BATCH as u64 * 3 + 5;
        for i in 0..answers {
            let rtt = if i == 7 { 5_000_000_000 } else { 100_000 + i * 1_000 };
            let delay = match i % 4 {
                0 => None,
                1 => Some(u64::from(u32::MAX)),
                _ => Some(10_000),
            };
            p.record_answer(rtt, delay);
        }
        assert!(p.held > 0, "some answers are still batched");
        let mut scratch = Vec::new();
        let (s, histogram) = summarize(&key, p, &mut scratch);
        let rtts = wire_format::decode_histogram(&histogram).unwrap();
        assert_eq!(rtts.len(), answers);
        assert_eq!((s.rtt_min_ns.get(), s.rtt_max_ns.get()), (100_000, 5_000_000_000));
        // Delays: 3 in 4 answers, the largest u32::MAX ns.
        assert!(s.responder_delay_p50_ns.get().abs_diff(10_000) <= 100);
        assert!(s.responder_delay_p99_ns.get() >= u64::from(u32::MAX));
    }

    #[test]
    fn a_merged_path_keeps_exact_extremes_and_sums() {
        let key = probe_key();
        let mut a = PathAgg::new(&key);
        let mut b = PathAgg::new(&key);
        for (i, rtt) in [5_000, 9_000, 7_000].into_iter().enumerate() {
            a.record_answer(rtt, None);
            b.record_answer(rtt * 3 + i as u64, Some(1_000));
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
