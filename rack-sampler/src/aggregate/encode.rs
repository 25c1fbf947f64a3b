//! Batch encoding: a closed window becomes one batch, or several parts when
//! it would exceed the batch size limit.
//!
//! Closing a window ([`Aggregator::take_due`](super::Aggregator::take_due))
//! is cheap and happens under the ingest lock; summarizing paths, finishing
//! the sampling and encoding ([`ClosedWindow::encode`]) is the expensive
//! part and runs outside it. Parts of one window carry consecutive part
//! numbers in their batch ids ([`BatchId::for_window`]); window-level counts
//! (malformed datagrams, records over capacity) travel in the first part
//! only, so summing parts never counts them twice. A path, an agent's
//! completeness and a sample are never split between parts.

use wire_format::{
    AgentCompleteness, BatchBuilder, BatchId, BatchInfo, FlowRecord, MAX_BATCH_BYTES, PathSummary, ProbeRecord,
    SampleMeta, SampledFlow, SampledProbe,
};

use super::paths::summarize;
use super::window::Window;

/// One emitted window: its batch (or parts, when it would exceed the batch
/// size limit), ready to spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedWindow {
    /// Window start, ns since the Unix epoch.
    pub start_ns: u64,
    /// Encoded batches with their part numbers.
    pub parts: Vec<(u16, Vec<u8>)>,
    /// Paths summarized.
    pub paths: usize,
    /// Records aggregated.
    pub records: u64,
}

/// A window detached from the [`Aggregator`](super::Aggregator), not yet
/// encoded.
#[derive(Debug)]
pub struct ClosedWindow {
    pub(super) info: BatchInfo,
    /// Part number of the first batch (after a restart within the window).
    pub(super) first_part: u16,
    pub(super) window: Window,
    pub(super) completeness: Vec<AgentCompleteness>,
    /// Largest encoded part, bytes.
    pub(super) part_limit: usize,
}

impl ClosedWindow {
    /// Window start, ns since the Unix epoch.
    pub fn start_ns(&self) -> u64 {
        self.info.window_start_ns
    }

    /// Summarizes the paths (quantiles, histograms), finishes sampling and
    /// encodes the batch, in parts if it would exceed the size limit.
    pub fn encode(self) -> EmittedWindow {
        let ClosedWindow {
            info,
            first_part,
            mut window,
            completeness,
            part_limit,
        } = self;
        let mut parts = Parts::new(info, first_part, part_limit);
        let paths = std::mem::take(&mut window.paths).into_sorted();
        let path_count = paths.len();
        let mut histogram_bytes = Vec::new();
        for (key, path) in paths {
            let (summary, histogram) = summarize(&key, path, &mut histogram_bytes);
            parts.path(summary, histogram);
        }
        for c in completeness {
            parts.completeness(c);
        }
        window.flows.finish();
        window.probes.finish();
        for (meta, record) in window.flows.into_kept() {
            parts.flow(meta, record);
        }
        for (meta, record) in window.probes.into_kept() {
            parts.probe(meta, record);
        }
        EmittedWindow {
            start_ns: info.window_start_ns,
            parts: parts.finish(),
            paths: path_count,
            records: window.records,
        }
    }
}

/// The part number a restart within `window`'s window continues from.
pub fn next_part(window: &EmittedWindow) -> (u64, u16) {
    (window.start_ns, window.parts.last().map_or(0, |(p, _)| p + 1))
}

/// Splits one window's items into batches of at most `limit` bytes.
struct Parts {
    info: BatchInfo,
    next_part: u16,
    current: BatchBuilder,
    done: Vec<(u16, Vec<u8>)>,
    limit: usize,
}

impl Parts {
    /// Parts numbered from `first_part`, each at most `limit` bytes (and
    /// never over [`MAX_BATCH_BYTES`]) unless one item alone is larger.
    fn new(mut info: BatchInfo, first_part: u16, limit: usize) -> Parts {
        info.batch_id = BatchId::for_window(info.sampler_id, info.window_start_ns, first_part);
        Parts {
            current: BatchBuilder::new(info),
            info,
            next_part: first_part,
            done: Vec::new(),
            limit: limit.min(MAX_BATCH_BYTES),
        }
    }

    fn make_room(&mut self, bytes: usize) {
        if self.current.encoded_len() + bytes <= self.limit || self.current.is_empty() {
            return;
        }
        self.next_part += 1;
        let mut info = self.info;
        info.batch_id = BatchId::for_window(info.sampler_id, info.window_start_ns, self.next_part);
        // Window-level counts are reported once, in the first part.
        info.malformed_datagrams = 0;
        info.records_over_capacity = 0;
        let full = std::mem::replace(&mut self.current, BatchBuilder::new(info));
        self.push_done(self.next_part - 1, &full);
    }

    fn push_done(&mut self, part: u16, builder: &BatchBuilder) {
        // Items were sized against the limit, which is within the format's.
        if let Ok(bytes) = builder.encode() {
            self.done.push((part, bytes));
        }
    }

    fn path(&mut self, summary: PathSummary, histogram: Vec<u8>) {
        self.make_room(size_of::<PathSummary>() + histogram.len());
        if self.current.push_path(summary, &histogram).is_err() {
            let _ = self.current.push_path(summary, &[]);
        }
    }

    fn completeness(&mut self, c: AgentCompleteness) {
        self.make_room(size_of::<AgentCompleteness>());
        self.current.push_completeness(c);
    }

    fn flow(&mut self, meta: SampleMeta, record: FlowRecord) {
        self.make_room(size_of::<SampledFlow>());
        self.current.push_flow(meta, record);
    }

    fn probe(&mut self, meta: SampleMeta, record: ProbeRecord) {
        self.make_room(size_of::<SampledProbe>());
        self.current.push_probe(meta, record);
    }

    fn finish(mut self) -> Vec<(u16, Vec<u8>)> {
        let last = std::mem::replace(&mut self.current, BatchBuilder::new(self.info));
        self.push_done(self.next_part, &last);
        self.done
    }
}
