//! Agent → sampler UDP datagrams: a fixed header, then `count` records of one
//! kind. The checked parser [`parse`] and the [`DatagramBuilder`].

use std::marker::PhantomData;

use zerocopy::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::Error;
use crate::flow::FlowRecord;
use crate::probe::ProbeRecord;
use crate::record::Record;
use crate::values::RecordKind;

/// The datagram format version this crate reads and writes.
pub const DATAGRAM_VERSION: u8 = 1;

/// Size of [`DatagramHeader`].
pub const DATAGRAM_HEADER_LEN: usize = size_of::<DatagramHeader>();

/// Default maximum datagram size: the UDP payload that fits a 1500-byte
/// Ethernet MTU over IPv4 without fragmentation (1500 − 20 − 8). Over IPv6 the
/// headers are 20 bytes larger; senders on IPv6-only paths should use 1452.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// Largest UDP payload over IPv4 (65535 − 20 − 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// The fixed header every agent datagram starts with (24 bytes).
///
/// Its first two bytes are the record count, so a reader of the seed
/// Workfeed format (`[u16 count][records]`) finds the count where it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DatagramHeader {
    /// Number of records after the header.
    pub count: U16,
    /// Format version ([`DATAGRAM_VERSION`]).
    pub version: u8,
    /// [`RecordKind`] of every record in the datagram.
    pub kind: u8,
    /// Topology node id of the sending agent.
    pub node_id: U32,
    /// Identifies one run of the agent (e.g. its start time in seconds).
    /// Sequence numbers restart when it changes.
    pub agent_epoch: U32,
    /// Per-(node, epoch) datagram sequence number, +1 for each datagram sent
    /// to a sampler, wrapping at 2³². Gaps are lost telemetry.
    pub sequence: U32,
    /// When the datagram was sent, ns since the Unix epoch (sender's clock).
    pub sent_at_ns: U64,
}

const _: () = assert!(DATAGRAM_HEADER_LEN == 24);

impl DatagramHeader {
    /// The record kind.
    #[inline]
    pub fn kind(&self) -> RecordKind {
        RecordKind::from(self.kind)
    }
}

/// The records of a parsed datagram, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records<'a> {
    /// Flow records.
    Flow(&'a [FlowRecord]),
    /// Probe records.
    Probe(&'a [ProbeRecord]),
}

impl Records<'_> {
    /// Number of records.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Records::Flow(records) => records.len(),
            Records::Probe(records) => records.len(),
        }
    }

    /// Whether there are no records (a heartbeat datagram).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated datagram: zero-copy views of its header and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The header.
    pub header: &'a DatagramHeader,
    /// The records.
    pub records: Records<'a>,
}

/// Parses and validates one agent datagram.
///
/// Checks, in order: the header fits; the version is
/// [`DATAGRAM_VERSION`]; the kind is known; the length is exactly header +
/// `count` × record size; every record passes [`Record::validate`]. Never
/// panics and never allocates.
pub fn parse(bytes: &[u8]) -> Result<Datagram<'_>, Error> {
    let (header, body) = DatagramHeader::ref_from_prefix(bytes).map_err(|_| Error::Truncated {
        len: bytes.len(),
        need: DATAGRAM_HEADER_LEN,
    })?;
    if header.version != DATAGRAM_VERSION {
        return Err(Error::UnsupportedVersion(header.version));
    }
    let count = usize::from(header.count.get());
    let records = match header.kind() {
        RecordKind::Flow => Records::Flow(parse_records(bytes.len(), body, count)?),
        RecordKind::Probe => Records::Probe(parse_records(bytes.len(), body, count)?),
        RecordKind::Unknown(kind) => return Err(Error::UnknownKind(kind)),
    };
    Ok(Datagram { header, records })
}

fn parse_records<R: Record>(len: usize, body: &[u8], count: usize) -> Result<&[R], Error> {
    // count ≤ u16::MAX and SIZE is small, so this cannot overflow.
    let expected = DATAGRAM_HEADER_LEN + count * R::SIZE;
    if len < expected {
        return Err(Error::Truncated { len, need: expected });
    }
    if len > expected {
        return Err(Error::Oversized { len, expected });
    }
    let records = <[R]>::ref_from_bytes(body).map_err(|_| Error::Truncated { len, need: expected })?;
    for (index, record) in records.iter().enumerate() {
        record.validate().map_err(|e| Error::item(index, e))?;
    }
    Ok(records)
}

/// How many records of type `R` fit in a datagram of at most `max_len` bytes.
pub const fn capacity<R: Record>(max_len: usize) -> usize {
    if max_len < DATAGRAM_HEADER_LEN {
        return 0;
    }
    let fit = (max_len - DATAGRAM_HEADER_LEN) / R::SIZE;
    if fit > u16::MAX as usize {
        u16::MAX as usize
    } else {
        fit
    }
}

/// Who sends a datagram: fixed for the life of an agent run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Topology node id.
    pub node_id: u32,
    /// See [`DatagramHeader::agent_epoch`].
    pub agent_epoch: u32,
}

/// The record did not fit: the datagram is full. Send it and start another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("datagram full")]
pub struct Full;

/// Fills a caller-supplied buffer with one datagram of `R` records.
///
/// The buffer's length is the maximum datagram size: pass
/// `&mut buf[..DEFAULT_MAX_DATAGRAM]` for the default. Records are copied in
/// as they are pushed; [`DatagramBuilder::finish`] writes the header.
pub struct DatagramBuilder<'a, R: Record> {
    buf: &'a mut [u8],
    origin: Origin,
    count: usize,
    capacity: usize,
    _record: PhantomData<R>,
}

impl<'a, R: Record> DatagramBuilder<'a, R> {
    /// Starts a datagram in `buf`; `None` when `buf` cannot hold even one
    /// record.
    pub fn new(buf: &'a mut [u8], origin: Origin) -> Option<Self> {
        let capacity = capacity::<R>(buf.len());
        (capacity > 0).then_some(DatagramBuilder {
            buf,
            origin,
            count: 0,
            capacity,
            _record: PhantomData,
        })
    }

    /// Appends a record, or says the datagram is full.
    #[inline]
    pub fn push(&mut self, record: &R) -> Result<(), Full> {
        if self.count == self.capacity {
            return Err(Full);
        }
        let start = DATAGRAM_HEADER_LEN + self.count * R::SIZE;
        record
            .write_to(&mut self.buf[start..start + R::SIZE])
            .map_err(|_| Full)?;
        self.count += 1;
        Ok(())
    }

    /// Records pushed so far.
    #[inline]
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether no more records fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.count == self.capacity
    }

    /// Whether no record has been pushed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the header and returns the finished datagram's bytes.
    pub fn finish(self, sequence: u32, sent_at_ns: u64) -> &'a [u8] {
        let header = DatagramHeader {
            // capacity() caps count at u16::MAX.
            count: U16::new(self.count as u16),
            version: DATAGRAM_VERSION,
            kind: R::KIND.into(),
            node_id: self.origin.node_id.into(),
            agent_epoch: self.origin.agent_epoch.into(),
            sequence: sequence.into(),
            sent_at_ns: sent_at_ns.into(),
        };
        let len = DATAGRAM_HEADER_LEN + self.count * R::SIZE;
        let buf = &mut self.buf[..len];
        // The buffer holds at least a header (capacity > 0), so this is Ok.
        let _ = header.write_to_prefix(buf);
        &*buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Flow;
    use crate::values::{Direction, EndReason};

    fn flow(id: u64) -> FlowRecord {
        Flow {
            flow_id: id,
            src: "127.0.0.1".parse().unwrap(),
            dst: "127.0.0.1".parse().unwrap(),
            src_port: 1234,
            dst_port: 80,
            dscp: 0,
            direction: Direction::Outbound,
            end_reason: EndReason::Closed,
            start_ns: 1,
            duration_ns: 2,
            bytes_acked: 3,
            bytes_received: 4,
            segs_out: 5,
            segs_in: 6,
            retrans_segs: 0,
            srtt_us: 7,
            min_rtt_us: 8,
        }
        .to_record()
    }

    const ORIGIN: Origin = Origin {
        node_id: 7,
        agent_epoch: 99,
    };

    #[test]
    fn default_datagram_holds_13_flows_and_15_probes() {
        assert_eq!(capacity::<FlowRecord>(DEFAULT_MAX_DATAGRAM), 13);
        assert_eq!(capacity::<ProbeRecord>(DEFAULT_MAX_DATAGRAM), 15);
        assert_eq!(capacity::<FlowRecord>(DATAGRAM_HEADER_LEN + 103), 0);
        assert_eq!(capacity::<FlowRecord>(usize::MAX), usize::from(u16::MAX));
    }

    #[test]
    fn builder_fills_to_capacity_then_reports_full() {
        let mut buf = [0xa5u8; DEFAULT_MAX_DATAGRAM];
        let mut builder = DatagramBuilder::<FlowRecord>::new(&mut buf, ORIGIN).unwrap();
        for id in 0..13 {
            builder.push(&flow(id)).unwrap();
        }
        assert!(builder.is_full());
        assert_eq!(builder.push(&flow(13)), Err(Full));
        let bytes = builder.finish(5, 1_000);
        assert_eq!(bytes.len(), 24 + 13 * 104);
        let datagram = parse(bytes).unwrap();
        assert_eq!(datagram.header.count.get(), 13);
        assert_eq!(datagram.header.node_id.get(), 7);
        assert_eq!(datagram.header.agent_epoch.get(), 99);
        assert_eq!(datagram.header.sequence.get(), 5);
        assert_eq!(datagram.header.sent_at_ns.get(), 1_000);
        let Records::Flow(records) = datagram.records else {
            panic!("expected flows");
        };
        assert_eq!(records[12].flow_id.get(), 12);
    }

    #[test]
    fn empty_datagram_is_a_valid_heartbeat() {
        let mut buf = [0u8; 256];
        let builder = DatagramBuilder::<ProbeRecord>::new(&mut buf, ORIGIN).unwrap();
        let bytes = builder.finish(0, 0);
        assert_eq!(bytes.len(), DATAGRAM_HEADER_LEN);
        assert!(parse(bytes).unwrap().records.is_empty());
    }

    #[test]
    fn buffer_too_small_for_one_record_is_refused() {
        let mut buf = [0u8; 100];
        assert!(DatagramBuilder::<FlowRecord>::new(&mut buf, ORIGIN).is_none());
    }

    #[test]
    fn length_errors_say_which_way() {
        let mut buf = [0u8; 256];
        let mut builder = DatagramBuilder::<FlowRecord>::new(&mut buf, ORIGIN).unwrap();
        builder.push(&flow(1)).unwrap();
        let bytes = builder.finish(0, 0).to_vec();
        assert_eq!(
            parse(&bytes[..bytes.len() - 1]),
            Err(Error::Truncated { len: 127, need: 128 })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            parse(&longer),
            Err(Error::Oversized {
                len: 129,
                expected: 128
            })
        );
        assert_eq!(parse(&bytes[..10]), Err(Error::Truncated { len: 10, need: 24 }));
    }

    #[test]
    fn unknown_version_and_kind_are_refused() {
        let mut buf = [0u8; 256];
        let builder = DatagramBuilder::<FlowRecord>::new(&mut buf, ORIGIN).unwrap();
        let mut bytes = builder.finish(0, 0).to_vec();
        bytes[3] = 9;
        assert_eq!(parse(&bytes), Err(Error::UnknownKind(9)));
        bytes[2] = 2;
        assert_eq!(parse(&bytes), Err(Error::UnsupportedVersion(2)));
    }

    #[test]
    fn an_invalid_record_names_its_index() {
        let mut buf = [0u8; 512];
        let mut builder = DatagramBuilder::<FlowRecord>::new(&mut buf, ORIGIN).unwrap();
        builder.push(&flow(1)).unwrap();
        let mut bad = flow(2);
        bad.reserved = [0, 0, 1, 0];
        builder.push(&bad).unwrap();
        let bytes = builder.finish(0, 0);
        let err = parse(bytes).unwrap_err();
        assert_eq!(err.to_string(), "item 1: reserved field `reserved` is not zero");
    }
}
