//! [`PathMerge`]: the rows of one path in one window — one per DSCP class,
//! probe transport and batch part — merged into one [`PathWindow`].
//!
//! Counts add up. The p99 RTT is exact where it can be: a single probe row
//! keeps the quantile the sampler computed from every sample; several probe
//! rows that all carry histograms are merged by adding the histograms
//! (`Histogram::add`) and taking [`tail_quantile`] of the sum; if any probe
//! row lacks a usable histogram, the merge falls back to the largest p99 (a
//! window is as bad as its worst part).

use hdrhistogram::Histogram;
use wire_format::{decode_histogram, tail_quantile};

use crate::rows::PathWindow;

/// The rows of one (window, source, destination) key while they are merged.
#[derive(Debug)]
pub struct PathMerge {
    row: PathWindow,
    /// The first probe row's encoded histogram, decoded only if a second
    /// probe row arrives: most keys have one row, whose stored quantiles the
    /// sampler computed from every sample, and decoding millions of
    /// histograms would dominate a long report's time.
    first_histogram: Option<Vec<u8>>,
    /// Whether the caller's scratch histogram holds the merge so far.
    merging: bool,
    /// A probe row came without a usable histogram: keep the conservative
    /// merge of quantiles.
    missing_histogram: bool,
}

impl PathMerge {
    /// Starts a merge with the key's first row and its encoded RTT
    /// histogram (`None` or empty: none stored).
    pub fn new(row: PathWindow, histogram: Option<&[u8]>) -> PathMerge {
        let mut merge = PathMerge {
            row,
            first_histogram: None,
            merging: false,
            missing_histogram: false,
        };
        if merge.row.probes_sent > 0 {
            match histogram.filter(|h| !h.is_empty()) {
                Some(h) => merge.first_histogram = Some(h.to_vec()),
                None => merge.missing_histogram = true,
            }
        }
        merge
    }

    /// The key being merged: (source, destination).
    pub fn key(&self) -> (u32, u32) {
        (self.row.src, self.row.dst)
    }

    /// Adds another row of the same key. `scratch` is the caller's histogram,
    /// reused across keys (reset here when this key starts merging); it must
    /// be left alone until [`PathMerge::finish`].
    pub fn add(&mut self, row: &PathWindow, histogram: Option<&[u8]>, scratch: &mut Histogram<u64>) {
        if row.probes_sent > 0 && !self.missing_histogram {
            if !self.merging {
                scratch.reset();
                self.merging = true;
                // Only a probe row brought a histogram: a flows-only first
                // row has none to add and must not spoil the merge.
                if let Some(first) = self.first_histogram.take() {
                    self.missing_histogram |= !add_encoded(scratch, Some(&first));
                }
            }
            self.missing_histogram |= !add_encoded(scratch, histogram);
        }
        let acc = &mut self.row;
        acc.probes_sent += row.probes_sent;
        acc.probes_lost += row.probes_lost;
        acc.probes_failed += row.probes_failed;
        // Without histograms the best merge of quantiles is the larger.
        acc.rtt_p99_ns = acc.rtt_p99_ns.max(row.rtt_p99_ns);
        acc.responder_delay_p99_ns = acc.responder_delay_p99_ns.max(row.responder_delay_p99_ns);
        acc.segs_out += row.segs_out;
        acc.retrans_segs += row.retrans_segs;
        acc.flows_with_retrans += row.flows_with_retrans;
    }

    /// The merged path window.
    pub fn finish(mut self, scratch: &Histogram<u64>) -> PathWindow {
        if self.merging && !self.missing_histogram && !scratch.is_empty() {
            self.row.rtt_p99_ns = scratch.value_at_quantile(tail_quantile(scratch.len()));
        }
        self.row
    }
}

/// The tail quantile ([`tail_quantile`]) of the sum of a path window's
/// encoded probe-row histograms, as [`PathMerge`] computes it for several
/// probe rows; `None` if any is missing or does not decode, when the merge
/// falls back to the largest p99. For backends that collect a path's
/// histograms in their query instead of streaming rows.
pub fn merged_tail<'h>(histograms: impl IntoIterator<Item = &'h [u8]>, scratch: &mut Histogram<u64>) -> Option<u64> {
    scratch.reset();
    for h in histograms {
        if !add_encoded(scratch, Some(h)) {
            return None;
        }
    }
    (!scratch.is_empty()).then(|| scratch.value_at_quantile(tail_quantile(scratch.len())))
}

/// Adds an encoded histogram to `total`; false if there was none or it did
/// not decode.
fn add_encoded(total: &mut Histogram<u64>, encoded: Option<&[u8]>) -> bool {
    match encoded.filter(|h| !h.is_empty()).map(decode_histogram) {
        // Both are within the RTT bounds, so adding cannot fail.
        Some(Ok(h)) => total.add(&h).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use wire_format::{encode_histogram, new_rtt_histogram};

    use super::*;

    fn row(probes: u64, p99: u64) -> PathWindow {
        PathWindow {
            window_ns: 0,
            window_len_ns: 1,
            src: 1,
            dst: 2,
            probes_sent: probes,
            probes_lost: 1,
            probes_failed: 0,
            rtt_p99_ns: p99,
            responder_delay_p99_ns: p99 / 10,
            segs_out: 10,
            retrans_segs: 1,
            flows_with_retrans: 1,
        }
    }

    fn encoded(values: &[u64]) -> Vec<u8> {
        let mut h = new_rtt_histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        let mut out = Vec::new();
        encode_histogram(&h, &mut out).unwrap();
        out
    }

    #[test]
    fn one_row_keeps_the_samplers_quantile() {
        let mut scratch = new_rtt_histogram();
        scratch.record(1).unwrap(); // left over from another key: ignored
        let merged = PathMerge::new(row(10, 777), Some(&encoded(&[5; 10]))).finish(&scratch);
        assert_eq!(merged.rtt_p99_ns, 777);
    }

    #[test]
    fn rows_with_histograms_merge_exactly() {
        let mut scratch = new_rtt_histogram();
        let mut m = PathMerge::new(row(50, 10_000), Some(&encoded(&[10_000; 50])));
        m.add(&row(50, 90_000), Some(&encoded(&[90_000; 50])), &mut scratch);
        let merged = m.finish(&scratch);
        assert_eq!((merged.probes_sent, merged.probes_lost, merged.segs_out), (100, 2, 20));
        // 100 probes, half at 90 µs: the p99 is in the upper half, within
        // the histogram's two significant digits.
        assert!((89_000..=91_000).contains(&merged.rtt_p99_ns), "{merged:?}");
        assert_eq!(merged.responder_delay_p99_ns, 9_000);
    }

    #[test]
    fn a_row_without_histogram_falls_back_to_the_largest_p99() {
        let mut scratch = new_rtt_histogram();
        let mut m = PathMerge::new(row(50, 10_000), Some(&encoded(&[10_000; 50])));
        m.add(&row(50, 20_000), None, &mut scratch);
        m.add(&row(50, 15_000), Some(&encoded(&[15_000; 50])), &mut scratch);
        assert_eq!(m.finish(&scratch).rtt_p99_ns, 20_000);
    }

    #[test]
    fn a_flows_only_first_row_does_not_spoil_the_histogram_merge() {
        let mut scratch = new_rtt_histogram();
        let mut m = PathMerge::new(row(0, 0), None);
        m.add(&row(50, 10_000), Some(&encoded(&[10_000; 50])), &mut scratch);
        m.add(&row(50, 90_000), Some(&encoded(&[90_000; 50])), &mut scratch);
        let merged = m.finish(&scratch);
        // Merged, not the larger stored p99 (90 µs exactly).
        assert!((89_000..=91_000).contains(&merged.rtt_p99_ns), "{merged:?}");
        assert_ne!(merged.rtt_p99_ns, 90_000, "fell back to the larger p99");
    }

    #[test]
    fn flow_only_rows_do_not_disturb_the_probe_quantile() {
        let mut scratch = new_rtt_histogram();
        let mut m = PathMerge::new(row(10, 700), Some(&encoded(&[700; 10])));
        m.add(&row(0, 0), None, &mut scratch);
        let merged = m.finish(&scratch);
        assert_eq!((merged.rtt_p99_ns, merged.segs_out), (700, 20));
    }
}
