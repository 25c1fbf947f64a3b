//! [`FlowRecord`]: one TCP flow as the agent's eBPF programs saw it.

use std::net::IpAddr;

use zerocopy::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::addr::{check_addr, ip_family, ip_from_bytes, ip_to_bytes};
use crate::error::FieldError;
use crate::record::{Record, check_known, check_zero};
use crate::values::{AddressFamily, Direction, EndReason, RecordKind};

/// One finished, or periodically reported, TCP flow (104 bytes).
///
/// Counters are cumulative from the flow's start. A flow still open at report
/// time is sent with [`EndReason::Open`]; its later reports carry the same
/// `flow_id` and supersede earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FlowRecord {
    /// Identifies the connection on the reporting host: the kernel's socket
    /// cookie, which the kernel never reuses while it runs, even when a new
    /// connection reuses the same addresses and ports. `(node, flow_id,
    /// start_ns)` is unique across reboots.
    pub flow_id: U64,
    /// When the flow was established, in nanoseconds since the Unix epoch.
    pub start_ns: U64,
    /// Time from establishment to the end (or to the report), in nanoseconds.
    pub duration_ns: U64,
    /// Payload bytes sent and acknowledged by the peer (`tcp_sock.bytes_acked`).
    pub bytes_acked: U64,
    /// Payload bytes received (`tcp_sock.bytes_received`).
    pub bytes_received: U64,
    /// Local address, 16 bytes; IPv4 as `::ffff:a.b.c.d`.
    pub src_addr: [u8; 16],
    /// Remote address, 16 bytes; IPv4 as `::ffff:a.b.c.d`.
    pub dst_addr: [u8; 16],
    /// Local port.
    pub src_port: U16,
    /// Remote port.
    pub dst_port: U16,
    /// [`AddressFamily`]: IPv4 or IPv6 (not GID).
    pub family: u8,
    /// [`Direction`] of the open.
    pub direction: u8,
    /// [`EndReason`].
    pub end_reason: u8,
    /// DSCP of the flow's outgoing packets (0–63).
    pub dscp: u8,
    /// Segments sent, retransmissions included.
    pub segs_out: U32,
    /// Segments received.
    pub segs_in: U32,
    /// Segments retransmitted (`tcp_sock.total_retrans`).
    pub retrans_segs: U32,
    /// Smoothed RTT at the end of the flow, in microseconds.
    pub srtt_us: U32,
    /// Minimum RTT seen over the flow, in microseconds.
    pub min_rtt_us: U32,
    /// Zero.
    pub reserved: [u8; 4],
}

const _: () = assert!(size_of::<FlowRecord>() == 104);

impl FlowRecord {
    /// The address family.
    #[inline]
    pub fn family(&self) -> AddressFamily {
        AddressFamily::from(self.family)
    }

    /// The local address.
    #[inline]
    pub fn src_ip(&self) -> Option<IpAddr> {
        ip_from_bytes(self.family(), self.src_addr)
    }

    /// The remote address.
    #[inline]
    pub fn dst_ip(&self) -> Option<IpAddr> {
        ip_from_bytes(self.family(), self.dst_addr)
    }

    /// Which side opened the flow.
    #[inline]
    pub fn direction(&self) -> Direction {
        Direction::from(self.direction)
    }

    /// Why the record was emitted.
    #[inline]
    pub fn end_reason(&self) -> EndReason {
        EndReason::from(self.end_reason)
    }
}

impl Record for FlowRecord {
    const KIND: RecordKind = RecordKind::Flow;

    fn validate(&self) -> Result<(), FieldError> {
        let family = self.family();
        if !matches!(family, AddressFamily::Ipv4 | AddressFamily::Ipv6) {
            return Err(FieldError::Invalid {
                field: "family",
                value: self.family.into(),
            });
        }
        check_addr(family, &self.src_addr, "src_addr")?;
        check_addr(family, &self.dst_addr, "dst_addr")?;
        check_known(self.direction(), "direction")?;
        check_known(self.end_reason(), "end_reason")?;
        if self.dscp > 63 {
            return Err(FieldError::Invalid {
                field: "dscp",
                value: self.dscp.into(),
            });
        }
        check_zero(&self.reserved, "reserved")
    }
}

/// A [`FlowRecord`] as plain values: what the agent fills in and what tests
/// and tools compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// See [`FlowRecord::flow_id`].
    pub flow_id: u64,
    /// Local address. If exactly one side is IPv4 the record is IPv6 and the
    /// IPv4 side reads back IPv4-mapped.
    pub src: IpAddr,
    /// Remote address.
    pub dst: IpAddr,
    /// Local port.
    pub src_port: u16,
    /// Remote port.
    pub dst_port: u16,
    /// DSCP, 0–63.
    pub dscp: u8,
    /// Which side opened the flow.
    pub direction: Direction,
    /// Why the record was emitted.
    pub end_reason: EndReason,
    /// Establishment time, ns since the Unix epoch.
    pub start_ns: u64,
    /// Duration, ns.
    pub duration_ns: u64,
    /// Bytes sent and acknowledged.
    pub bytes_acked: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Segments sent.
    pub segs_out: u32,
    /// Segments received.
    pub segs_in: u32,
    /// Segments retransmitted.
    pub retrans_segs: u32,
    /// Smoothed RTT, µs.
    pub srtt_us: u32,
    /// Minimum RTT, µs.
    pub min_rtt_us: u32,
}

impl Flow {
    /// Encodes this flow. The result passes [`Record::validate`] when `dscp`
    /// is at most 63 and the enums are known.
    pub fn to_record(&self) -> FlowRecord {
        FlowRecord {
            flow_id: self.flow_id.into(),
            start_ns: self.start_ns.into(),
            duration_ns: self.duration_ns.into(),
            bytes_acked: self.bytes_acked.into(),
            bytes_received: self.bytes_received.into(),
            src_addr: ip_to_bytes(self.src),
            dst_addr: ip_to_bytes(self.dst),
            src_port: self.src_port.into(),
            dst_port: self.dst_port.into(),
            family: ip_family(self.src, self.dst).into(),
            direction: self.direction.into(),
            end_reason: self.end_reason.into(),
            dscp: self.dscp,
            segs_out: self.segs_out.into(),
            segs_in: self.segs_in.into(),
            retrans_segs: self.retrans_segs.into(),
            srtt_us: self.srtt_us.into(),
            min_rtt_us: self.min_rtt_us.into(),
            reserved: [0; 4],
        }
    }

    /// Decodes a record, validating it first.
    pub fn from_record(record: &FlowRecord) -> Result<Flow, FieldError> {
        record.validate()?;
        let (Some(src), Some(dst)) = (record.src_ip(), record.dst_ip()) else {
            // validate() admits only IP families, for which both are Some.
            return Err(FieldError::Invalid {
                field: "family",
                value: record.family.into(),
            });
        };
        Ok(Flow {
            flow_id: record.flow_id.get(),
            src,
            dst,
            src_port: record.src_port.get(),
            dst_port: record.dst_port.get(),
            dscp: record.dscp,
            direction: record.direction(),
            end_reason: record.end_reason(),
            start_ns: record.start_ns.get(),
            duration_ns: record.duration_ns.get(),
            bytes_acked: record.bytes_acked.get(),
            bytes_received: record.bytes_received.get(),
            segs_out: record.segs_out.get(),
            segs_in: record.segs_in.get(),
            retrans_segs: record.retrans_segs.get(),
            srtt_us: record.srtt_us.get(),
            min_rtt_us: record.min_rtt_us.get(),
        })
    }
}
