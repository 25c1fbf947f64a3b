//! [`ProbeRecord`]: one Pingmesh-style probe and its four timestamps.

use std::net::IpAddr;

use zerocopy::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::addr::{Gid, check_addr, ip_family, ip_from_bytes, ip_to_bytes};
use crate::error::FieldError;
use crate::record::{Record, check_known, check_max, check_zero};
use crate::values::{AddressFamily, ProbeOutcome, RecordKind, Transport};

/// Largest RDMA queue-pair number (24 bits).
pub const MAX_QPN: u32 = 0x00ff_ffff;

/// One probe from the reporting node to `dst_node` (96 bytes).
///
/// The four timestamps split the round trip into network time and responder
/// processing time: `t1` and `t4` come from the requester's clock, `t2` and
/// `t3` from the responder's, so only differences taken on one clock are
/// meaningful. See [`ProbeRecord::network_rtt_ns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProbeRecord {
    /// Probe sequence number, per requester and target.
    pub seq: U64,
    /// t1: requester sent the probe (requester clock, ns since the Unix epoch).
    pub requester_send_ns: U64,
    /// t2: responder received it (responder clock); 0 if unknown.
    pub responder_receive_ns: U64,
    /// t3: responder sent the reply (responder clock); 0 if unknown.
    pub responder_send_ns: U64,
    /// t4: requester received the reply (requester clock); 0 when none arrived.
    pub requester_receive_ns: U64,
    /// Requester address: IP (IPv4 mapped) or GID, per `family`.
    pub src_addr: [u8; 16],
    /// Responder address: IP (IPv4 mapped) or GID, per `family`.
    pub dst_addr: [u8; 16],
    /// Requester UDP/TCP port, or queue-pair number for RDMA UD.
    pub src_port: U32,
    /// Responder UDP/TCP port, or queue-pair number for RDMA UD.
    pub dst_port: U32,
    /// Topology node id of the responder (0: not in the topology).
    pub dst_node: U32,
    /// [`Transport`].
    pub transport: u8,
    /// [`AddressFamily`]: GID exactly when the transport is RDMA UD.
    pub family: u8,
    /// DSCP the probe was sent with (0–63).
    pub dscp: u8,
    /// [`ProbeOutcome`].
    pub outcome: u8,
    /// For [`ProbeOutcome::Error`]: an errno for IP transports, an
    /// `ibv_wc_status` for RDMA. Zero otherwise.
    pub error_code: U16,
    /// Zero.
    pub reserved: [u8; 6],
}

const _: () = assert!(size_of::<ProbeRecord>() == 96);

impl ProbeRecord {
    /// The transport.
    #[inline]
    pub fn transport(&self) -> Transport {
        Transport::from(self.transport)
    }

    /// The address family.
    #[inline]
    pub fn family(&self) -> AddressFamily {
        AddressFamily::from(self.family)
    }

    /// The outcome.
    #[inline]
    pub fn outcome(&self) -> ProbeOutcome {
        ProbeOutcome::from(self.outcome)
    }

    /// The requester's address.
    #[inline]
    pub fn src(&self) -> ProbeAddr {
        self.addr(self.src_addr)
    }

    /// The responder's address.
    #[inline]
    pub fn dst(&self) -> ProbeAddr {
        self.addr(self.dst_addr)
    }

    fn addr(&self, bytes: [u8; 16]) -> ProbeAddr {
        match ip_from_bytes(self.family(), bytes) {
            Some(ip) => ProbeAddr::Ip(ip),
            None => ProbeAddr::Gid(Gid(bytes)),
        }
    }

    /// Time the responder held the probe (t3 − t2), when it reported both
    /// timestamps and a reply arrived.
    #[inline]
    pub fn responder_delay_ns(&self) -> Option<u64> {
        let (t2, t3) = (self.responder_receive_ns.get(), self.responder_send_ns.get());
        (self.outcome() == ProbeOutcome::Ok && t2 != 0 && t3 != 0).then(|| t3.saturating_sub(t2))
    }

    /// Network round-trip time: (t4 − t1) minus the responder's delay, when a
    /// reply arrived. Without responder timestamps it is the whole round trip.
    /// Saturates at zero rather than going negative on inconsistent clocks.
    #[inline]
    pub fn network_rtt_ns(&self) -> Option<u64> {
        if self.outcome() != ProbeOutcome::Ok {
            return None;
        }
        let round_trip = self
            .requester_receive_ns
            .get()
            .saturating_sub(self.requester_send_ns.get());
        Some(round_trip.saturating_sub(self.responder_delay_ns().unwrap_or(0)))
    }
}

impl Record for ProbeRecord {
    const KIND: RecordKind = RecordKind::Probe;

    fn validate(&self) -> Result<(), FieldError> {
        let transport = self.transport();
        check_known(transport, "transport")?;
        let family = self.family();
        let family_ok = match transport {
            Transport::RdmaUd => family == AddressFamily::Gid,
            _ => matches!(family, AddressFamily::Ipv4 | AddressFamily::Ipv6),
        };
        if !family_ok {
            return Err(FieldError::Invalid {
                field: "family",
                value: self.family.into(),
            });
        }
        check_addr(family, &self.src_addr, "src_addr")?;
        check_addr(family, &self.dst_addr, "dst_addr")?;
        let max_port = if transport == Transport::RdmaUd {
            MAX_QPN
        } else {
            u16::MAX.into()
        };
        check_max(self.src_port.get().into(), max_port.into(), "src_port")?;
        check_max(self.dst_port.get().into(), max_port.into(), "dst_port")?;
        check_max(self.dscp.into(), 63, "dscp")?;
        let outcome = self.outcome();
        check_known(outcome, "outcome")?;
        if outcome != ProbeOutcome::Error && self.error_code.get() != 0 {
            return Err(FieldError::Invalid {
                field: "error_code",
                value: self.error_code.get().into(),
            });
        }
        check_zero(&self.reserved, "reserved")
    }
}

/// A probe endpoint address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeAddr {
    /// UDP or TCP probes.
    Ip(IpAddr),
    /// RDMA UD probes.
    Gid(Gid),
}

impl std::fmt::Display for ProbeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeAddr::Ip(ip) => ip.fmt(f),
            ProbeAddr::Gid(gid) => gid.fmt(f),
        }
    }
}

/// The four probe timestamps, ns since the Unix epoch (0 = not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeTimestamps {
    /// t1, requester clock.
    pub requester_send_ns: u64,
    /// t2, responder clock.
    pub responder_receive_ns: u64,
    /// t3, responder clock.
    pub responder_send_ns: u64,
    /// t4, requester clock.
    pub requester_receive_ns: u64,
}

/// A [`ProbeRecord`] as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Transport used.
    pub transport: Transport,
    /// Requester address; a GID exactly when `transport` is RDMA UD.
    pub src: ProbeAddr,
    /// Responder address; same kind as `src`.
    pub dst: ProbeAddr,
    /// Requester port or QPN.
    pub src_port: u32,
    /// Responder port or QPN.
    pub dst_port: u32,
    /// Responder's topology node id.
    pub dst_node: u32,
    /// DSCP, 0–63.
    pub dscp: u8,
    /// Sequence number.
    pub seq: u64,
    /// Outcome.
    pub outcome: ProbeOutcome,
    /// Error code for [`ProbeOutcome::Error`], else 0.
    pub error_code: u16,
    /// The four timestamps.
    pub timestamps: ProbeTimestamps,
}

impl Probe {
    /// Encodes this probe. Mixed IP/GID endpoints encode as GID family, which
    /// validation then refuses for IP transports.
    pub fn to_record(&self) -> ProbeRecord {
        let (family, src_addr, dst_addr) = match (self.src, self.dst) {
            (ProbeAddr::Ip(a), ProbeAddr::Ip(b)) => (ip_family(a, b), ip_to_bytes(a), ip_to_bytes(b)),
            (a, b) => (AddressFamily::Gid, raw(a), raw(b)),
        };
        let t = &self.timestamps;
        ProbeRecord {
            seq: self.seq.into(),
            requester_send_ns: t.requester_send_ns.into(),
            responder_receive_ns: t.responder_receive_ns.into(),
            responder_send_ns: t.responder_send_ns.into(),
            requester_receive_ns: t.requester_receive_ns.into(),
            src_addr,
            dst_addr,
            src_port: self.src_port.into(),
            dst_port: self.dst_port.into(),
            dst_node: self.dst_node.into(),
            transport: self.transport.into(),
            family: family.into(),
            dscp: self.dscp,
            outcome: self.outcome.into(),
            error_code: self.error_code.into(),
            reserved: [0; 6],
        }
    }

    /// Decodes a record, validating it first.
    pub fn from_record(record: &ProbeRecord) -> Result<Probe, FieldError> {
        record.validate()?;
        Ok(Probe {
            transport: record.transport(),
            src: record.src(),
            dst: record.dst(),
            src_port: record.src_port.get(),
            dst_port: record.dst_port.get(),
            dst_node: record.dst_node.get(),
            dscp: record.dscp,
            seq: record.seq.get(),
            outcome: record.outcome(),
            error_code: record.error_code.get(),
            timestamps: ProbeTimestamps {
                requester_send_ns: record.requester_send_ns.get(),
                responder_receive_ns: record.responder_receive_ns.get(),
                responder_send_ns: record.responder_send_ns.get(),
                requester_receive_ns: record.requester_receive_ns.get(),
            },
        })
    }
}

fn raw(addr: ProbeAddr) -> [u8; 16] {
    match addr {
        ProbeAddr::Ip(ip) => ip_to_bytes(ip),
        ProbeAddr::Gid(gid) => gid.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_probe(t: [u64; 4]) -> ProbeRecord {
        Probe {
            transport: Transport::Udp,
            src: ProbeAddr::Ip("198.18.1.1".parse().unwrap()),
            dst: ProbeAddr::Ip("198.18.1.2".parse().unwrap()),
            src_port: 40000,
            dst_port: 7788,
            dst_node: 2,
            dscp: 0,
            seq: 1,
            outcome: ProbeOutcome::Ok,
            error_code: 0,
            timestamps: ProbeTimestamps {
                requester_send_ns: t[0],
                responder_receive_ns: t[1],
                responder_send_ns: t[2],
                requester_receive_ns: t[3],
            },
        }
        .to_record()
    }

    #[test]
    fn network_rtt_excludes_responder_delay() {
        // Clocks differ by a large offset; only same-clock differences count.
        let probe = ok_probe([1_000, 9_000_500, 9_030_500, 41_000]);
        assert_eq!(probe.responder_delay_ns(), Some(30_000));
        assert_eq!(probe.network_rtt_ns(), Some(10_000));
    }

    #[test]
    fn rtt_without_responder_timestamps_is_the_round_trip() {
        let probe = ok_probe([1_000, 0, 0, 41_000]);
        assert_eq!(probe.responder_delay_ns(), None);
        assert_eq!(probe.network_rtt_ns(), Some(40_000));
    }

    #[test]
    fn inconsistent_timestamps_saturate_instead_of_wrapping() {
        let probe = ok_probe([50_000, 100, 90_000, 40_000]);
        assert_eq!(probe.network_rtt_ns(), Some(0));
    }

    #[test]
    fn timed_out_probe_has_no_rtt() {
        let mut probe = ok_probe([1_000, 0, 0, 0]);
        probe.outcome = ProbeOutcome::Timeout.into();
        assert_eq!(probe.validate(), Ok(()));
        assert_eq!(probe.network_rtt_ns(), None);
    }

    #[test]
    fn rdma_needs_gid_addresses_and_24_bit_qpns() {
        let mut probe = ok_probe([1, 2, 3, 4]);
        probe.transport = Transport::RdmaUd.into();
        assert!(matches!(
            probe.validate(),
            Err(FieldError::Invalid { field: "family", .. })
        ));
        probe.family = AddressFamily::Gid.into();
        assert_eq!(probe.validate(), Ok(()));
        probe.dst_port = (MAX_QPN + 1).into();
        assert!(matches!(
            probe.validate(),
            Err(FieldError::Invalid { field: "dst_port", .. })
        ));
    }

    #[test]
    fn error_code_only_with_error_outcome() {
        let mut probe = ok_probe([1, 2, 3, 4]);
        probe.error_code = 111.into();
        assert!(matches!(
            probe.validate(),
            Err(FieldError::Invalid {
                field: "error_code",
                ..
            })
        ));
        probe.outcome = ProbeOutcome::Error.into();
        assert_eq!(probe.validate(), Ok(()));
    }
}
