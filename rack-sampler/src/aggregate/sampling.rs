//! Downsampling of raw records: which of a window's flow and probe records
//! travel in its batch, and with what weight.
//!
//! Every anomalous record (the bits are decided where the record is
//! counted: [`FlowDelta::anomalies`](super::flows::FlowDelta::anomalies),
//! [`PathAgg::add_probe`](super::paths::PathAgg::add_probe)) is kept with
//! weight 1 and its reasons. Of the rest, the sampler keeps every N-th with
//! weight N, and when the window ends the last record of an incomplete
//! group with weight equal to that group's size, so the weights of a
//! window's samples sum to exactly the number of records they stand for.
//! `max_samples` bounds what a window keeps; an anomaly arriving when it is
//! full displaces an ordinary sample. What the bound turns away is counted
//! by the caller, and is the only way weights under-count.

use wire_format::SampleMeta;

use super::Settings;

/// One kind's sampling state in a window.
#[derive(Debug, Clone)]
pub(super) struct Sampler<R> {
    kept: Vec<(SampleMeta, R)>,
    /// Indexes into `kept` of ordinary (not anomalous) samples, which an
    /// anomalous record may displace when the window is full.
    ordinary: Vec<usize>,
    /// Ordinary records seen since the last one kept, and the latest of them.
    since_kept: u32,
    pending: Option<(u32, R)>,
}

impl<R> Default for Sampler<R> {
    fn default() -> Self {
        Sampler {
            kept: Vec::new(),
            ordinary: Vec::new(),
            since_kept: 0,
            pending: None,
        }
    }
}

impl<R: Copy> Sampler<R> {
    /// Keeps `record` from agent `node` if it is anomalous or its turn in
    /// the 1-in-N sample; returns how many samples the window's bound turned
    /// away (0 or 1).
    pub(super) fn offer(&mut self, settings: &Settings, node: u32, anomalies: u8, record: R) -> u64 {
        if anomalies != 0 {
            let meta = SampleMeta::new(node, 1, anomalies);
            if self.kept.len() < settings.max_samples {
                self.kept.push((meta, record));
                return 0;
            }
            // Anomalies first: displace an ordinary sample if there is one.
            if let Some(index) = self.ordinary.pop() {
                self.kept[index] = (meta, record);
            }
            return 1;
        }
        self.since_kept += 1;
        if self.since_kept < settings.sample_one_in {
            self.pending = Some((node, record));
            return 0;
        }
        let weight = std::mem::take(&mut self.since_kept);
        self.pending = None;
        self.keep_ordinary(settings.max_samples, SampleMeta::new(node, weight, 0), record)
    }

    fn keep_ordinary(&mut self, max_samples: usize, meta: SampleMeta, record: R) -> u64 {
        if self.kept.len() >= max_samples {
            return 1;
        }
        self.ordinary.push(self.kept.len());
        self.kept.push((meta, record));
        0
    }
}

impl<R> Sampler<R> {
    /// Ends the sampling: keeps the last record of an incomplete group,
    /// standing for the whole group, so weights sum to the records seen.
    pub(super) fn finish(&mut self) {
        if let Some((node, record)) = self.pending.take() {
            let weight = std::mem::take(&mut self.since_kept);
            // The bound was checked when the window filled; a final group
            // beyond it is still kept, as the weights would otherwise
            // under-count.
            self.kept.push((SampleMeta::new(node, weight, 0), record));
        }
    }

    /// Takes in the samples of another window merged into this one
    /// (catching up after a long pause). The other window's incomplete group
    /// is finished first, as at the end of a window, so no record it stood
    /// for is lost and the weights still sum to the records seen. The bound
    /// is not applied: dropping a merged sample would lose its weight.
    pub(super) fn absorb(&mut self, mut other: Sampler<R>) {
        other.finish();
        let offset = self.kept.len();
        self.ordinary.extend(other.ordinary.iter().map(|i| i + offset));
        self.kept.extend(other.kept);
    }

    /// The samples, in the order kept; call [`Sampler::finish`] first.
    pub(super) fn into_kept(self) -> Vec<(SampleMeta, R)> {
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sample_one_in: u32, max_samples: usize) -> Settings {
        Settings {
            sampler_id: 1,
            rack_id: 1,
            window_ns: 1,
            grace_ns: 0,
            max_paths: 10,
            max_flows: 10,
            sample_one_in,
            rtt_anomaly_ns: 1,
            max_samples,
            max_batch_bytes: wire_format::MAX_BATCH_BYTES,
            heartbeat_ns: 5_000_000_000,
        }
    }

    fn weights(sampler: Sampler<u32>) -> Vec<u32> {
        sampler.into_kept().iter().map(|(m, _)| m.weight.get()).collect()
    }

    /// `ordinary` ordinary records, with an anomaly after every
    /// `anomaly_every`-th.
    fn offered(s: &Settings, ordinary: u32, anomaly_every: u32) -> Sampler<u32> {
        let mut sampler = Sampler::default();
        for i in 1..=ordinary {
            sampler.offer(s, 1, 0, i);
            if i % anomaly_every == 0 {
                sampler.offer(s, 1, wire_format::anomaly::RETRANS, i);
            }
        }
        sampler
    }

    #[test]
    fn ordinary_records_are_kept_one_in_n_with_the_rest_at_the_end() {
        let s = settings(4, 100);
        let mut sampler = offered(&s, 11, 5);
        sampler.finish();
        // Groups of 4, 4 and a final 3; the two anomalies with weight 1.
        assert_eq!(weights(sampler), [4, 1, 4, 1, 3]);
    }

    #[test]
    fn an_absorbed_window_keeps_its_incomplete_group() {
        let s = settings(4, 100);
        let mut target = offered(&s, 6, 100); // one group of 4, 2 pending
        target.absorb(offered(&s, 7, 3)); // 4 + 3 pending, 2 anomalies
        target.finish();
        let w = weights(target);
        assert_eq!(w.iter().sum::<u32>(), 6 + 7 + 2);
        assert_eq!(w, [4, 1, 4, 1, 3, 2]);
    }

    #[test]
    fn a_full_window_turns_records_away_and_anomalies_displace_ordinary_ones() {
        let s = settings(1, 2);
        let mut sampler = Sampler::default();
        assert_eq!(sampler.offer(&s, 1, 0, 1), 0);
        assert_eq!(sampler.offer(&s, 1, 0, 2), 0);
        assert_eq!(sampler.offer(&s, 1, 0, 3), 1);
        assert_eq!(sampler.offer(&s, 1, wire_format::anomaly::RESET, 4), 1);
        let kept: Vec<(u8, u32)> = sampler.into_kept().iter().map(|(m, r)| (m.anomalies, *r)).collect();
        assert_eq!(kept, [(0, 1), (wire_format::anomaly::RESET, 4)]);
    }
}
