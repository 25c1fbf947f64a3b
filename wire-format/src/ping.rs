//! [`ProbePacket`]: the UDP probe agents exchange to measure the network
//! between them (Pingmesh-style), with the responder's own timestamps so the
//! requester can subtract the time the responder held the probe.

use zerocopy::network_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, FieldError};
use crate::record::{check_zero, exact_message};

/// First four bytes of every probe packet.
pub const PROBE_MAGIC: [u8; 4] = *b"FMPR";

/// The probe packet version this crate reads and writes.
pub const PROBE_VERSION: u8 = 1;

/// [`ProbePacket::kind`] of a request.
pub const PROBE_REQUEST: u8 = 1;

/// [`ProbePacket::kind`] of a reply.
pub const PROBE_REPLY: u8 = 2;

/// [`ProbePacket::kind`] of an RDMA UD responder's follow-up: the reply
/// itself leaves before the NIC can say when it left, so the responder
/// sends its send completion time t3 in a second packet, R-Pingmesh style.
pub const PROBE_FOLLOW_UP: u8 = 3;

/// A probe request or its reply (48 bytes); the reply echoes the request
/// with the responder's receive and send times filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ProbePacket {
    /// [`PROBE_MAGIC`].
    pub magic: [u8; 4],
    /// [`PROBE_VERSION`].
    pub version: u8,
    /// [`PROBE_REQUEST`], [`PROBE_REPLY`] or [`PROBE_FOLLOW_UP`].
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 2],
    /// Topology node id of the requester.
    pub requester_node: U32,
    /// Topology node id the requester meant to reach.
    pub responder_node: U32,
    /// Per-requester, per-target sequence number.
    pub seq: U64,
    /// When the requester sent it (requester's clock, ns since the Unix epoch).
    pub requester_send_ns: U64,
    /// When the responder received it (responder's clock); 0 in a request.
    pub responder_receive_ns: U64,
    /// When the responder sent the reply (responder's clock); 0 in a request.
    pub responder_send_ns: U64,
}

const _: () = assert!(size_of::<ProbePacket>() == 48);

impl ProbePacket {
    /// A request from `requester` to `responder`.
    pub fn request(requester: u32, responder: u32, seq: u64, sent_ns: u64) -> ProbePacket {
        ProbePacket {
            magic: PROBE_MAGIC,
            version: PROBE_VERSION,
            kind: PROBE_REQUEST,
            reserved: [0; 2],
            requester_node: requester.into(),
            responder_node: responder.into(),
            seq: seq.into(),
            requester_send_ns: sent_ns.into(),
            responder_receive_ns: 0.into(),
            responder_send_ns: 0.into(),
        }
    }

    /// The reply to this request.
    pub fn reply(&self, received_ns: u64, sent_ns: u64) -> ProbePacket {
        ProbePacket {
            kind: PROBE_REPLY,
            responder_receive_ns: received_ns.into(),
            responder_send_ns: sent_ns.into(),
            ..*self
        }
    }

    /// The follow-up to this reply, carrying the responder's send time
    /// `sent_ns` as measured once the reply had left.
    pub fn follow_up(&self, sent_ns: u64) -> ProbePacket {
        ProbePacket {
            kind: PROBE_FOLLOW_UP,
            responder_send_ns: sent_ns.into(),
            ..*self
        }
    }

    /// Parses and validates a probe packet: exactly 48 bytes, magic,
    /// version, a known kind, zero reserved bytes.
    pub fn parse(bytes: &[u8]) -> Result<&ProbePacket, Error> {
        let packet: &ProbePacket = exact_message(
            bytes,
            |m: &ProbePacket| (m.magic, m.version),
            PROBE_MAGIC,
            PROBE_VERSION,
        )?;
        if !matches!(packet.kind, PROBE_REQUEST | PROBE_REPLY | PROBE_FOLLOW_UP) {
            return Err(Error::UnknownKind(packet.kind));
        }
        check_zero(&packet.reserved, "reserved").map_err(|e: FieldError| Error::Field { index: None, source: e })?;
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        let request = ProbePacket::request(101, 202, 7, 1_000);
        let bytes = request.as_bytes().to_vec();
        assert_eq!(&bytes[..4], b"FMPR");
        assert_eq!(ProbePacket::parse(&bytes).unwrap(), &request);
        let reply = request.reply(5_000, 5_020);
        let parsed = ProbePacket::parse(reply.as_bytes()).unwrap();
        assert_eq!(
            (parsed.kind, parsed.seq.get(), parsed.responder_send_ns.get()),
            (PROBE_REPLY, 7, 5_020)
        );
    }

    #[test]
    fn bad_packets_are_refused_by_reason() {
        let good = ProbePacket::request(1, 2, 3, 4).as_bytes().to_vec();
        assert!(matches!(ProbePacket::parse(&good[..47]), Err(Error::Truncated { .. })));
        assert!(matches!(
            ProbePacket::parse(&[good.clone(), vec![0]].concat()),
            Err(Error::Oversized { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(ProbePacket::parse(&bad), Err(Error::BadMagic { .. })));
        let mut bad = good.clone();
        bad[4] = 9;
        assert!(matches!(ProbePacket::parse(&bad), Err(Error::UnsupportedVersion(9))));
        let mut bad = good.clone();
        bad[5] = 4;
        assert!(matches!(ProbePacket::parse(&bad), Err(Error::UnknownKind(4))));
        let mut bad = good;
        bad[6] = 1;
        assert!(matches!(ProbePacket::parse(&bad), Err(Error::Field { .. })));
    }
}
