//! Every byte flowmesh sends over a wire, defined once.
//!
//! - Agent → sampler: UDP [datagrams](datagram) of fixed-size [`FlowRecord`]s
//!   or [`ProbeRecord`]s behind a 24-byte [`DatagramHeader`] whose first two
//!   bytes are the record count.
//! - Agent ↔ agent: UDP [`ProbePacket`]s, requests and replies carrying the
//!   four timestamps of a Pingmesh-style probe (over UDP, or over RDMA UD
//!   where agents learn each other's queue pair with an [`EndpointPacket`]).
//! - Sampler → collector: [batches](batch) of per-path window summaries,
//!   per-agent completeness and sampled raw records, answered by a
//!   [`BatchAck`].
//!
//! All integers are big-endian (network order) and every layout is
//! unaligned, so any byte slice of the right length can be viewed in place
//! with no copy. Untrusted bytes go through the checked parsers — [`parse`],
//! [`BatchView::parse`], [`BatchAck::parse`], [`decode_histogram`] — which
//! validate lengths, versions, kinds, enumerated values and reserved bytes,
//! never panic and allocate nothing per record. docs/wire-format.md gives
//! every field's offset and the versioning rule.
//!
//! Each record type has an owned twin ([`Flow`], [`Probe`]) with plain Rust
//! values, for the code that builds records and for tests.

mod addr;
pub mod batch;
pub mod datagram;
mod endpoint;
mod error;
mod flow;
mod histogram;
mod ping;
mod probe;
mod record;
mod values;

pub use addr::Gid;
pub use batch::{
    ACK_MAGIC, ACK_VERSION, AgentCompleteness, BATCH_ALPN, BATCH_HEADER_LEN, BATCH_MAGIC, BATCH_VERSION, BatchAck,
    BatchBuilder, BatchHeader, BatchId, BatchInfo, BatchView, MAX_BATCH_BYTES, PathSummary, SampleMeta, SampledFlow,
    SampledProbe, anomaly, completeness_flags,
};
pub use datagram::{
    DATAGRAM_HEADER_LEN, DATAGRAM_VERSION, DEFAULT_MAX_DATAGRAM, Datagram, DatagramBuilder, DatagramHeader, Full,
    MAX_UDP_PAYLOAD, Origin, Records, capacity, parse,
};
pub use endpoint::{ENDPOINT_MAGIC, ENDPOINT_QUERY, ENDPOINT_REPLY, ENDPOINT_VERSION, EndpointPacket};
pub use error::{DropReason, Error, FieldError};
pub use flow::{Flow, FlowRecord};
pub use histogram::{
    HistogramError, MAX_HISTOGRAM_SAMPLES, RTT_HISTOGRAM_MAX_NS, RTT_HISTOGRAM_SIGFIGS, decode_histogram,
    encode_histogram, new_rtt_histogram, tail_quantile,
};
pub use ping::{PROBE_FOLLOW_UP, PROBE_MAGIC, PROBE_REPLY, PROBE_REQUEST, PROBE_VERSION, ProbePacket};
pub use probe::{MAX_QPN, Probe, ProbeAddr, ProbeRecord, ProbeTimestamps};
pub use record::Record;
pub use values::{AckStatus, AddressFamily, Direction, EndReason, ProbeOutcome, RecordKind, Transport, WireEnum};
