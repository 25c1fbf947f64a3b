//! Sampler → collector batches: one rack's aggregated window, and the
//! acknowledgement the collector returns once the batch is committed.
//!
//! A batch is a fixed [`BatchHeader`] followed by five sections in this order:
//! `path_count` [`PathSummary`], `completeness_count` [`AgentCompleteness`],
//! `flow_sample_count` [`SampledFlow`], `probe_sample_count` [`SampledProbe`],
//! and `histogram_bytes` bytes of encoded RTT histograms that path summaries
//! point into.

use zerocopy::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, FieldError};
use crate::flow::FlowRecord;
use crate::probe::ProbeRecord;
use crate::record::{Record, check_known, check_max, check_zero, exact_message};
use crate::values::{AckStatus, Transport, WireEnum};

/// ALPN protocol id of the sampler → collector batch protocol (QUIC, TLS 1.3).
pub const BATCH_ALPN: &[u8] = b"flowmesh-batch/1";

/// First four bytes of every batch.
pub const BATCH_MAGIC: [u8; 4] = *b"FMBT";

/// The batch format version this crate reads and writes.
pub const BATCH_VERSION: u8 = 1;

/// Largest batch a reader accepts or a writer produces (64 MiB). A sampler
/// whose window would exceed it splits the window into parts.
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// Size of [`BatchHeader`].
pub const BATCH_HEADER_LEN: usize = size_of::<BatchHeader>();

/// The idempotency key of a batch: the collector stores each id once.
///
/// Samplers build it with [`BatchId::for_window`], so the same window and part
/// always get the same id, also after a sampler restart replays its spool.
/// Readers treat it as 16 opaque bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(transparent)]
pub struct BatchId(pub [u8; 16]);

impl BatchId {
    /// The id of part `part` of the window starting at `window_start_ns` from
    /// sampler `sampler_id`: those three values, big-endian, then two zero
    /// bytes.
    pub fn for_window(sampler_id: u32, window_start_ns: u64, part: u16) -> BatchId {
        let mut id = [0u8; 16];
        id[0..4].copy_from_slice(&sampler_id.to_be_bytes());
        id[4..12].copy_from_slice(&window_start_ns.to_be_bytes());
        id[12..14].copy_from_slice(&part.to_be_bytes());
        BatchId(id)
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The fixed start of a batch (96 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    /// [`BATCH_MAGIC`].
    pub magic: [u8; 4],
    /// [`BATCH_VERSION`].
    pub version: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// Idempotency key.
    pub batch_id: BatchId,
    /// Configured id of the sampler that built the batch.
    pub sampler_id: U32,
    /// Topology id of the rack the batch covers.
    pub rack_id: U32,
    /// Start of the aggregation window, ns since the Unix epoch.
    pub window_start_ns: U64,
    /// Length of the window, ns (non-zero).
    pub window_len_ns: U64,
    /// When the sampler built the batch, ns since the Unix epoch.
    pub created_ns: U64,
    /// Number of [`PathSummary`] items.
    pub path_count: U32,
    /// Number of [`AgentCompleteness`] items.
    pub completeness_count: U32,
    /// Number of [`SampledFlow`] items.
    pub flow_sample_count: U32,
    /// Number of [`SampledProbe`] items.
    pub probe_sample_count: U32,
    /// Length of the histogram section in bytes.
    pub histogram_bytes: U32,
    /// Datagrams the sampler refused in this window, all reasons.
    pub malformed_datagrams: U32,
    /// Valid records the sampler could not aggregate in this window because a
    /// configured memory bound was reached.
    pub records_over_capacity: U32,
    /// Batches the sampler's spool discarded (oldest first when full, or
    /// unwritable) whose loss no batch delivered before this one reported,
    /// counts carried by discarded batches included: summed over delivered
    /// batches, the windows that will never arrive.
    pub spool_dropped_batches: U32,
    /// Zero.
    pub reserved2: [u8; 8],
}

const _: () = assert!(BATCH_HEADER_LEN == 96);

/// A batch header's values, for building one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// See [`BatchHeader::batch_id`].
    pub batch_id: BatchId,
    /// See [`BatchHeader::sampler_id`].
    pub sampler_id: u32,
    /// See [`BatchHeader::rack_id`].
    pub rack_id: u32,
    /// See [`BatchHeader::window_start_ns`].
    pub window_start_ns: u64,
    /// See [`BatchHeader::window_len_ns`].
    pub window_len_ns: u64,
    /// See [`BatchHeader::created_ns`].
    pub created_ns: u64,
    /// See [`BatchHeader::malformed_datagrams`].
    pub malformed_datagrams: u32,
    /// See [`BatchHeader::records_over_capacity`].
    pub records_over_capacity: u32,
    /// See [`BatchHeader::spool_dropped_batches`].
    pub spool_dropped_batches: u32,
}

impl BatchInfo {
    /// Values for part 0 of sampler `sampler_id`'s window of rack `rack_id`:
    /// the id from [`BatchId::for_window`], `created_ns` at the window's end,
    /// all loss counters zero.
    pub fn window(sampler_id: u32, rack_id: u32, window_start_ns: u64, window_len_ns: u64) -> Self {
        BatchInfo {
            batch_id: BatchId::for_window(sampler_id, window_start_ns, 0),
            sampler_id,
            rack_id,
            window_start_ns,
            window_len_ns,
            created_ns: window_start_ns.saturating_add(window_len_ns),
            malformed_datagrams: 0,
            records_over_capacity: 0,
            spool_dropped_batches: 0,
        }
    }
}

impl BatchHeader {
    /// The header's values.
    pub fn info(&self) -> BatchInfo {
        BatchInfo {
            batch_id: self.batch_id,
            sampler_id: self.sampler_id.get(),
            rack_id: self.rack_id.get(),
            window_start_ns: self.window_start_ns.get(),
            window_len_ns: self.window_len_ns.get(),
            created_ns: self.created_ns.get(),
            malformed_datagrams: self.malformed_datagrams.get(),
            records_over_capacity: self.records_over_capacity.get(),
            spool_dropped_batches: self.spool_dropped_batches.get(),
        }
    }
}

/// One path's aggregate over the window (144 bytes): probes from `src_node`
/// to `dst_node`, and TCP flows between them, for one DSCP.
///
/// A path appears once per (src, dst, dscp, transport). Summaries carrying only
/// flow counters have `transport` 0 and zero probe fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PathSummary {
    /// Topology node id of the source (the reporting agent).
    pub src_node: U32,
    /// Topology node id of the destination; 0 for addresses outside the
    /// topology.
    pub dst_node: U32,
    /// DSCP, 0–63.
    pub dscp: u8,
    /// [`Transport`] of the probes counted here, or 0 when none.
    pub transport: u8,
    /// Zero.
    pub reserved: [u8; 2],
    /// Probes whose outcome is known (ok + lost + failed).
    pub probes_sent: U32,
    /// Probes that timed out.
    pub probes_lost: U32,
    /// Probes that ended in an error.
    pub probes_failed: U32,
    /// Smallest network RTT, ns (0 when no probe succeeded).
    pub rtt_min_ns: U64,
    /// Median network RTT, ns.
    pub rtt_p50_ns: U64,
    /// 90th percentile network RTT, ns.
    pub rtt_p90_ns: U64,
    /// 99th percentile network RTT, ns.
    pub rtt_p99_ns: U64,
    /// 99.9th percentile network RTT, ns.
    pub rtt_p999_ns: U64,
    /// Largest network RTT, ns.
    pub rtt_max_ns: U64,
    /// Median responder processing delay, ns.
    pub responder_delay_p50_ns: U64,
    /// 99th percentile responder processing delay, ns.
    pub responder_delay_p99_ns: U64,
    /// TCP flow records counted (each flow once per window, by its latest
    /// report).
    pub flows: U32,
    /// Of those, flows with at least one retransmission.
    pub flows_with_retrans: U32,
    /// Of those, flows that ended in a reset.
    pub flows_reset: U32,
    /// Length of this path's encoded RTT histogram (0: none).
    pub histogram_len: U32,
    /// Bytes sent and acknowledged by these flows.
    pub bytes_sent: U64,
    /// Bytes received by these flows.
    pub bytes_received: U64,
    /// Segments sent by these flows.
    pub segs_out: U64,
    /// Segments retransmitted by these flows.
    pub retrans_segs: U64,
    /// Offset of the encoded histogram within the histogram section.
    pub histogram_offset: U32,
    /// Zero.
    pub reserved2: [u8; 4],
}

const _: () = assert!(size_of::<PathSummary>() == 144);

impl PathSummary {
    /// An all-zero summary for the given key.
    pub fn new(src_node: u32, dst_node: u32, dscp: u8, transport: Option<Transport>) -> Self {
        let mut summary = PathSummary::new_zeroed();
        summary.src_node = src_node.into();
        summary.dst_node = dst_node.into();
        summary.dscp = dscp;
        summary.transport = transport.map_or(0, u8::from);
        summary
    }

    /// The probe transport, `None` for a flows-only summary.
    pub fn transport(&self) -> Option<Transport> {
        (self.transport != 0).then(|| Transport::from(self.transport))
    }

    fn validate(&self, histogram_bytes: usize) -> Result<(), FieldError> {
        check_max(self.dscp.into(), 63, "dscp")?;
        match self.transport() {
            Some(transport) => check_known(transport, "transport")?,
            None => check_max(self.probes_sent.get().into(), 0, "probes_sent")?,
        }
        let unanswered = u64::from(self.probes_lost.get()) + u64::from(self.probes_failed.get());
        check_max(unanswered, self.probes_sent.get().into(), "probes_lost")?;
        check_max(
            self.flows_with_retrans.get().into(),
            self.flows.get().into(),
            "flows_with_retrans",
        )?;
        check_max(self.flows_reset.get().into(), self.flows.get().into(), "flows_reset")?;
        let end = u64::from(self.histogram_offset.get()) + u64::from(self.histogram_len.get());
        check_max(end, histogram_bytes as u64, "histogram_offset")?;
        check_zero(&self.reserved, "reserved")?;
        check_zero(&self.reserved2, "reserved2")
    }
}

/// Bits of [`AgentCompleteness::flags`].
pub mod completeness_flags {
    /// No datagram arrived from this agent in the window.
    pub const SILENT: u8 = 1;
    /// The agent's epoch changed in the window: it restarted.
    pub const RESTARTED: u8 = 2;
    /// Every defined bit.
    pub const ALL: u8 = SILENT | RESTARTED;
}

/// How much of one agent's telemetry reached the sampler in the window
/// (40 bytes), from datagram sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AgentCompleteness {
    /// Topology node id of the agent.
    pub node_id: U32,
    /// The agent's latest epoch seen.
    pub agent_epoch: U32,
    /// Datagrams the sequence numbers say were sent in the window.
    pub datagrams_expected: U32,
    /// Distinct datagrams received.
    pub datagrams_received: U32,
    /// Datagrams received more than once.
    pub datagrams_duplicate: U32,
    /// Datagrams that arrived after a later one.
    pub datagrams_reordered: U32,
    /// Records received.
    pub records: U32,
    /// [`completeness_flags`] bits.
    pub flags: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// Last time a datagram arrived from the agent, ns since the Unix epoch
    /// (sampler's clock); 0 if never.
    pub last_seen_ns: U64,
}

const _: () = assert!(size_of::<AgentCompleteness>() == 40);

impl AgentCompleteness {
    /// All-zero completeness for agent `node_id`.
    pub fn new(node_id: u32) -> Self {
        let mut completeness = AgentCompleteness::new_zeroed();
        completeness.node_id = node_id.into();
        completeness
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.flags & !completeness_flags::ALL != 0 {
            return Err(FieldError::Invalid {
                field: "flags",
                value: self.flags.into(),
            });
        }
        check_zero(&self.reserved, "reserved")
    }
}

/// Bits of [`SampleMeta::anomalies`]: why a raw record was kept regardless of
/// sampling. A record with any bit set was kept unconditionally (weight 1).
pub mod anomaly {
    /// A flow with retransmitted segments.
    pub const RETRANS: u8 = 1;
    /// A flow that ended in a reset.
    pub const RESET: u8 = 2;
    /// A flow the kernel timed out.
    pub const FLOW_TIMEOUT: u8 = 4;
    /// RTT above the configured threshold (flow srtt or probe network RTT).
    pub const HIGH_RTT: u8 = 8;
    /// A probe that timed out.
    pub const PROBE_TIMEOUT: u8 = 16;
    /// A probe that ended in an error.
    pub const PROBE_ERROR: u8 = 32;
    /// Every defined bit.
    pub const ALL: u8 = RETRANS | RESET | FLOW_TIMEOUT | HIGH_RTT | PROBE_TIMEOUT | PROBE_ERROR;
}

/// What a sampled raw record carries beside the record (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SampleMeta {
    /// Topology node id of the agent that reported the record.
    pub node_id: U32,
    /// How many records this one stands for: N for a 1-in-N sample, 1 for a
    /// record kept because it is anomalous.
    pub weight: U32,
    /// [`anomaly`] bits; 0 for a record kept by sampling.
    pub anomalies: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

const _: () = assert!(size_of::<SampleMeta>() == 16);

impl SampleMeta {
    /// Meta for a record from `node_id` with the given weight and anomalies.
    pub fn new(node_id: u32, weight: u32, anomalies: u8) -> Self {
        SampleMeta {
            node_id: node_id.into(),
            weight: weight.into(),
            anomalies,
            reserved: [0; 7],
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.anomalies & !anomaly::ALL != 0 {
            return Err(FieldError::Invalid {
                field: "anomalies",
                value: self.anomalies.into(),
            });
        }
        let weight = self.weight.get();
        let weight_ok = if self.anomalies != 0 { weight == 1 } else { weight >= 1 };
        if !weight_ok {
            return Err(FieldError::Invalid {
                field: "weight",
                value: weight.into(),
            });
        }
        check_zero(&self.reserved, "reserved")
    }
}

/// A raw flow record kept by the sampler, with its weight (120 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SampledFlow {
    /// Origin, weight and why it was kept.
    pub meta: SampleMeta,
    /// The record as the agent sent it.
    pub record: FlowRecord,
}

const _: () = assert!(size_of::<SampledFlow>() == 120);

/// A raw probe record kept by the sampler, with its weight (112 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SampledProbe {
    /// Origin, weight and why it was kept.
    pub meta: SampleMeta,
    /// The record as the agent sent it.
    pub record: ProbeRecord,
}

const _: () = assert!(size_of::<SampledProbe>() == 112);

/// A validated batch: zero-copy views of every section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView<'a> {
    /// The header.
    pub header: &'a BatchHeader,
    /// Path summaries.
    pub paths: &'a [PathSummary],
    /// Per-agent completeness.
    pub completeness: &'a [AgentCompleteness],
    /// Sampled flows.
    pub flows: &'a [SampledFlow],
    /// Sampled probes.
    pub probes: &'a [SampledProbe],
    /// The histogram section.
    pub histograms: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Parses and validates a batch.
    ///
    /// Checks the size limit, magic, version and reserved bytes, that the
    /// length is exactly what the counts imply, every item's fields, and that
    /// every histogram range lies inside the histogram section. Histogram
    /// bytes themselves are decoded by [`decode_histogram`](crate::decode_histogram)
    /// when wanted. Never panics; allocates nothing.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_BATCH_BYTES {
            return Err(Error::TooLarge {
                len: bytes.len(),
                limit: MAX_BATCH_BYTES,
            });
        }
        let (header, rest) = BatchHeader::ref_from_prefix(bytes).map_err(|_| Error::Truncated {
            len: bytes.len(),
            need: BATCH_HEADER_LEN,
        })?;
        if header.magic != BATCH_MAGIC {
            return Err(Error::BadMagic {
                found: header.magic,
                expected: BATCH_MAGIC,
            });
        }
        if header.version != BATCH_VERSION {
            return Err(Error::UnsupportedVersion(header.version));
        }
        check_zero(&header.reserved, "reserved").map_err(Error::header)?;
        check_zero(&header.reserved2, "reserved2").map_err(Error::header)?;
        if header.window_len_ns.get() == 0 {
            return Err(Error::header(FieldError::Invalid {
                field: "window_len_ns",
                value: 0,
            }));
        }
        let size = |n: U32| usize::try_from(n.get()).unwrap_or(usize::MAX);
        let expected = encoded_len(
            size(header.path_count),
            size(header.completeness_count),
            size(header.flow_sample_count),
            size(header.probe_sample_count),
            size(header.histogram_bytes),
        );
        match expected {
            Some(expected) if bytes.len() > expected => {
                return Err(Error::Oversized {
                    len: bytes.len(),
                    expected,
                });
            }
            Some(expected) if bytes.len() == expected => {}
            need => {
                return Err(Error::Truncated {
                    len: bytes.len(),
                    need: need.unwrap_or(usize::MAX),
                });
            }
        }
        // The length matches the counts exactly, so no section can come up short.
        let (paths, rest) = section::<PathSummary>(rest, header.path_count.get())?;
        let (completeness, rest) = section::<AgentCompleteness>(rest, header.completeness_count.get())?;
        let (flows, rest) = section::<SampledFlow>(rest, header.flow_sample_count.get())?;
        let (probes, histograms) = section::<SampledProbe>(rest, header.probe_sample_count.get())?;

        validate_each(paths, |p| p.validate(histograms.len()))?;
        validate_each(completeness, AgentCompleteness::validate)?;
        validate_each(flows, |s| s.meta.validate().and_then(|()| s.record.validate()))?;
        validate_each(probes, |s| s.meta.validate().and_then(|()| s.record.validate()))?;
        Ok(BatchView {
            header,
            paths,
            completeness,
            flows,
            probes,
            histograms,
        })
    }

    /// The encoded histogram of `path` (empty when it has none). `path` must
    /// come from this view; ranges were checked by [`BatchView::parse`].
    pub fn histogram(&self, path: &PathSummary) -> &'a [u8] {
        let start = path.histogram_offset.get() as usize;
        let end = start + path.histogram_len.get() as usize;
        self.histograms.get(start..end).unwrap_or(&[])
    }
}

/// Splits `count` items of `T` off the front of `bytes`.
fn section<T: FromBytes + KnownLayout + Immutable + Unaligned>(
    bytes: &[u8],
    count: u32,
) -> Result<(&[T], &[u8]), Error> {
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    <[T]>::ref_from_prefix_with_elems(bytes, count).map_err(|_| Error::Truncated {
        len: bytes.len(),
        need: count.saturating_mul(size_of::<T>()),
    })
}

/// Validates every item of a section, naming the first bad one's index.
fn validate_each<T>(items: &[T], check: impl Fn(&T) -> Result<(), FieldError>) -> Result<(), Error> {
    items
        .iter()
        .enumerate()
        .try_for_each(|(index, item)| check(item).map_err(|e| Error::item(index, e)))
}

/// Bytes a batch with these section sizes occupies, or `None` on overflow.
fn encoded_len(
    paths: usize,
    completeness: usize,
    flows: usize,
    probes: usize,
    histogram_bytes: usize,
) -> Option<usize> {
    BATCH_HEADER_LEN
        .checked_add(paths.checked_mul(size_of::<PathSummary>())?)?
        .checked_add(completeness.checked_mul(size_of::<AgentCompleteness>())?)?
        .checked_add(flows.checked_mul(size_of::<SampledFlow>())?)?
        .checked_add(probes.checked_mul(size_of::<SampledProbe>())?)?
        .checked_add(histogram_bytes)
}

/// Collects a batch's sections and encodes them.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    info: BatchInfo,
    paths: Vec<PathSummary>,
    completeness: Vec<AgentCompleteness>,
    flows: Vec<SampledFlow>,
    probes: Vec<SampledProbe>,
    histograms: Vec<u8>,
}

impl BatchBuilder {
    /// An empty batch with the given header values.
    pub fn new(info: BatchInfo) -> Self {
        BatchBuilder {
            info,
            paths: Vec::new(),
            completeness: Vec::new(),
            flows: Vec::new(),
            probes: Vec::new(),
            histograms: Vec::new(),
        }
    }

    /// Adds a path summary and its encoded histogram (empty for none),
    /// filling in the summary's histogram offset and length.
    pub fn push_path(&mut self, mut summary: PathSummary, histogram: &[u8]) -> Result<(), Error> {
        let offset = self.histograms.len();
        let too_large = Error::TooLarge {
            len: offset.saturating_add(histogram.len()),
            limit: MAX_BATCH_BYTES,
        };
        summary.histogram_offset = u32::try_from(offset).map_err(|_| too_large)?.into();
        summary.histogram_len = u32::try_from(histogram.len()).map_err(|_| too_large)?.into();
        self.histograms.extend_from_slice(histogram);
        self.paths.push(summary);
        Ok(())
    }

    /// Adds one agent's completeness.
    pub fn push_completeness(&mut self, completeness: AgentCompleteness) {
        self.completeness.push(completeness);
    }

    /// Adds a sampled flow.
    pub fn push_flow(&mut self, meta: SampleMeta, record: FlowRecord) {
        self.flows.push(SampledFlow { meta, record });
    }

    /// Adds a sampled probe.
    pub fn push_probe(&mut self, meta: SampleMeta, record: ProbeRecord) {
        self.probes.push(SampledProbe { meta, record });
    }

    /// Whether no item has been added yet.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.completeness.is_empty() && self.flows.is_empty() && self.probes.is_empty()
    }

    /// Bytes the encoded batch will occupy.
    pub fn encoded_len(&self) -> usize {
        encoded_len(
            self.paths.len(),
            self.completeness.len(),
            self.flows.len(),
            self.probes.len(),
            self.histograms.len(),
        )
        .unwrap_or(usize::MAX)
    }

    /// Encodes the batch, appending it to `out`. Fails only when it would
    /// exceed [`MAX_BATCH_BYTES`].
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let len = self.encoded_len();
        if len > MAX_BATCH_BYTES {
            return Err(Error::TooLarge {
                len,
                limit: MAX_BATCH_BYTES,
            });
        }
        // Every count is below MAX_BATCH_BYTES, so it fits a u32.
        let count = |n: usize| U32::new(n as u32);
        let info = &self.info;
        let header = BatchHeader {
            magic: BATCH_MAGIC,
            version: BATCH_VERSION,
            reserved: [0; 3],
            batch_id: info.batch_id,
            sampler_id: info.sampler_id.into(),
            rack_id: info.rack_id.into(),
            window_start_ns: info.window_start_ns.into(),
            window_len_ns: info.window_len_ns.into(),
            created_ns: info.created_ns.into(),
            path_count: count(self.paths.len()),
            completeness_count: count(self.completeness.len()),
            flow_sample_count: count(self.flows.len()),
            probe_sample_count: count(self.probes.len()),
            histogram_bytes: count(self.histograms.len()),
            malformed_datagrams: info.malformed_datagrams.into(),
            records_over_capacity: info.records_over_capacity.into(),
            spool_dropped_batches: info.spool_dropped_batches.into(),
            reserved2: [0; 8],
        };
        out.reserve(len);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(self.paths.as_bytes());
        out.extend_from_slice(self.completeness.as_bytes());
        out.extend_from_slice(self.flows.as_bytes());
        out.extend_from_slice(self.probes.as_bytes());
        out.extend_from_slice(&self.histograms);
        Ok(())
    }

    /// Encodes the batch into a new vector.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// First four bytes of every acknowledgement.
pub const ACK_MAGIC: [u8; 4] = *b"FMAK";

/// The acknowledgement format version.
pub const ACK_VERSION: u8 = 1;

/// [`BatchAck::error_code`] of a batch [`AckStatus::Rejected`] because the
/// sampler's certificate may not write it: another rack's, a sampler id not
/// granted to that certificate, or a batch id outside its sampler's
/// namespace ([`BatchId::for_window`]). Resending the same bytes over the
/// same certificate is refused again. Codes from 256 up say who sent a
/// batch, not what is wrong with its bytes; below 256 they are
/// [`DropReason`](crate::DropReason) codes.
pub const ACK_UNAUTHORIZED: u16 = 256;

/// The collector's answer to one batch (24 bytes), sent on the batch's
/// stream once the outcome is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchAck {
    /// [`ACK_MAGIC`].
    pub magic: [u8; 4],
    /// [`ACK_VERSION`].
    pub version: u8,
    /// [`AckStatus`].
    pub status: u8,
    /// For [`AckStatus::Rejected`], the [`DropReason`](crate::DropReason) code,
    /// or [`ACK_UNAUTHORIZED`]; else 0.
    pub error_code: U16,
    /// The batch this answers.
    pub batch_id: BatchId,
}

const _: () = assert!(size_of::<BatchAck>() == 24);

impl BatchAck {
    /// An acknowledgement of `batch_id`.
    pub fn new(batch_id: BatchId, status: AckStatus, error_code: u16) -> Self {
        BatchAck {
            magic: ACK_MAGIC,
            version: ACK_VERSION,
            status: status.into(),
            error_code: error_code.into(),
            batch_id,
        }
    }

    /// The status.
    pub fn status(&self) -> AckStatus {
        AckStatus::from(self.status)
    }

    /// Parses and validates an acknowledgement: exactly 24 bytes, magic,
    /// version and a known status.
    pub fn parse(bytes: &[u8]) -> Result<&BatchAck, Error> {
        let ack: &BatchAck = exact_message(bytes, |m: &BatchAck| (m.magic, m.version), ACK_MAGIC, ACK_VERSION)?;
        if !ack.status().is_known() {
            return Err(Error::header(FieldError::Invalid {
                field: "status",
                value: ack.status.into(),
            }));
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BatchInfo {
        BatchInfo {
            batch_id: BatchId::for_window(3, 1_700_000_000_000_000_000, 0),
            sampler_id: 3,
            rack_id: 1,
            window_start_ns: 1_700_000_000_000_000_000,
            window_len_ns: 10_000_000_000,
            created_ns: 1_700_000_010_100_000_000,
            malformed_datagrams: 2,
            records_over_capacity: 0,
            spool_dropped_batches: 0,
        }
    }

    #[test]
    fn empty_batch_is_just_a_header() {
        let bytes = BatchBuilder::new(info()).encode().unwrap();
        assert_eq!(bytes.len(), BATCH_HEADER_LEN);
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!(view.header.info(), info());
        assert!(view.paths.is_empty() && view.histograms.is_empty());
    }

    #[test]
    fn histograms_are_addressed_per_path() {
        let mut builder = BatchBuilder::new(info());
        builder
            .push_path(PathSummary::new(1, 2, 0, Some(Transport::Udp)), b"abc")
            .unwrap();
        builder.push_path(PathSummary::new(1, 3, 0, None), b"").unwrap();
        builder
            .push_path(PathSummary::new(1, 4, 0, Some(Transport::Udp)), b"defgh")
            .unwrap();
        let bytes = builder.encode().unwrap();
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!(view.histogram(&view.paths[0]), b"abc");
        assert_eq!(view.histogram(&view.paths[1]), b"");
        assert_eq!(view.histogram(&view.paths[2]), b"defgh");
    }

    #[test]
    fn histogram_range_outside_the_section_is_refused() {
        let mut builder = BatchBuilder::new(info());
        builder.push_path(PathSummary::new(1, 2, 0, None), b"abc").unwrap();
        let mut bytes = builder.encode().unwrap();
        // histogram_offset of path 0 lives at header + 136.
        bytes[BATCH_HEADER_LEN + 139] = 1;
        assert_eq!(
            BatchView::parse(&bytes).unwrap_err().to_string(),
            "item 0: field `histogram_offset` has invalid value 4"
        );
    }

    #[test]
    fn anomalous_samples_must_weigh_one() {
        let meta = SampleMeta::new(1, 10, anomaly::RETRANS);
        assert!(matches!(
            meta.validate(),
            Err(FieldError::Invalid { field: "weight", .. })
        ));
        assert_eq!(SampleMeta::new(1, 1, anomaly::RETRANS).validate(), Ok(()));
        assert!(SampleMeta::new(1, 0, 0).validate().is_err());
        assert!(SampleMeta::new(1, 1, 0x80).validate().is_err());
    }

    #[test]
    fn lost_probes_cannot_exceed_sent() {
        let mut path = PathSummary::new(1, 2, 0, Some(Transport::Udp));
        path.probes_sent = 3.into();
        path.probes_lost = 2.into();
        path.probes_failed = 1.into();
        assert_eq!(path.validate(0), Ok(()));
        path.probes_failed = 2.into();
        assert!(path.validate(0).is_err());
    }

    #[test]
    fn counts_larger_than_the_bytes_are_truncation_not_a_panic() {
        let mut bytes = BatchBuilder::new(info()).encode().unwrap();
        // path_count := u32::MAX
        bytes[56..60].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(BatchView::parse(&bytes), Err(Error::Truncated { .. })));
    }

    #[test]
    fn ack_round_trips_and_checks_status() {
        let ack = BatchAck::new(BatchId::for_window(1, 2, 3), AckStatus::Duplicate, 0);
        let parsed = BatchAck::parse(ack.as_bytes()).unwrap();
        assert_eq!(parsed, &ack);
        assert_eq!(parsed.status(), AckStatus::Duplicate);
        let mut bytes = ack.as_bytes().to_vec();
        bytes[5] = 0;
        assert!(matches!(BatchAck::parse(&bytes), Err(Error::Field { index: None, .. })));
        assert!(matches!(BatchAck::parse(&bytes[..23]), Err(Error::Truncated { .. })));
    }

    #[test]
    fn batch_id_layout() {
        let id = BatchId::for_window(0x01020304, 0x1122334455667788, 0xaabb);
        assert_eq!(id.to_string(), "010203041122334455667788aabb0000");
    }
}
