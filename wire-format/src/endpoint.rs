//! [`EndpointPacket`]: how an agent learns a peer's RDMA UD queue pair.
//!
//! An unreliable-datagram send needs the peer's GID, queue-pair number and
//! Q_Key. The GID is in the topology file; the queue-pair number is chosen
//! by the NIC when the peer's agent starts, so the requester asks the
//! peer's UDP probe responder for it with a query and gets a reply.

use zerocopy::network_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, FieldError};
use crate::probe::MAX_QPN;
use crate::record::{check_max, check_zero, exact_message};

/// First four bytes of every endpoint packet.
pub const ENDPOINT_MAGIC: [u8; 4] = *b"FMEP";

/// The endpoint packet version this crate reads and writes.
pub const ENDPOINT_VERSION: u8 = 1;

/// [`EndpointPacket::kind`] of a query.
pub const ENDPOINT_QUERY: u8 = 1;

/// [`EndpointPacket::kind`] of a reply.
pub const ENDPOINT_REPLY: u8 = 2;

/// A query for a node's RDMA UD endpoint, or the reply (36 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EndpointPacket {
    /// [`ENDPOINT_MAGIC`].
    pub magic: [u8; 4],
    /// [`ENDPOINT_VERSION`].
    pub version: u8,
    /// [`ENDPOINT_QUERY`] or [`ENDPOINT_REPLY`].
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 2],
    /// Topology node id: the one asked about (query) or answering (reply).
    pub node: U32,
    /// Queue-pair number of the node's UD probe QP; 0 in a query, and in a
    /// reply from a node without an RDMA endpoint.
    pub qpn: U32,
    /// Q_Key the QP accepts; 0 in a query.
    pub qkey: U32,
    /// GID the QP is reachable at; zero in a query.
    pub gid: [u8; 16],
}

const _: () = assert!(size_of::<EndpointPacket>() == 36);

impl EndpointPacket {
    /// A query for `node`'s endpoint.
    pub fn query(node: u32) -> EndpointPacket {
        EndpointPacket {
            magic: ENDPOINT_MAGIC,
            version: ENDPOINT_VERSION,
            kind: ENDPOINT_QUERY,
            reserved: [0; 2],
            node: node.into(),
            qpn: 0.into(),
            qkey: 0.into(),
            gid: [0; 16],
        }
    }

    /// `node`'s reply: its endpoint, or `None` when it has no RDMA device.
    pub fn reply(node: u32, endpoint: Option<(u32, u32, [u8; 16])>) -> EndpointPacket {
        let (qpn, qkey, gid) = endpoint.unwrap_or_default();
        EndpointPacket {
            kind: ENDPOINT_REPLY,
            qpn: qpn.into(),
            qkey: qkey.into(),
            gid,
            ..EndpointPacket::query(node)
        }
    }

    /// The endpoint a reply carries: (QPN, Q_Key, GID), or `None`.
    pub fn endpoint(&self) -> Option<(u32, u32, [u8; 16])> {
        (self.kind == ENDPOINT_REPLY && self.qpn.get() != 0).then(|| (self.qpn.get(), self.qkey.get(), self.gid))
    }

    /// Parses and validates an endpoint packet: exactly 36 bytes, magic,
    /// version, a known kind, zero reserved bytes, a 24-bit QPN.
    pub fn parse(bytes: &[u8]) -> Result<&EndpointPacket, Error> {
        let packet: &EndpointPacket = exact_message(
            bytes,
            |m: &EndpointPacket| (m.magic, m.version),
            ENDPOINT_MAGIC,
            ENDPOINT_VERSION,
        )?;
        if packet.kind != ENDPOINT_QUERY && packet.kind != ENDPOINT_REPLY {
            return Err(Error::UnknownKind(packet.kind));
        }
        let field = |e: FieldError| Error::Field { index: None, source: e };
        check_zero(&packet.reserved, "reserved").map_err(field)?;
        check_max(packet.qpn.get().into(), MAX_QPN.into(), "qpn").map_err(field)?;
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_reply_round_trip() {
        let query = EndpointPacket::query(7);
        let parsed = EndpointPacket::parse(query.as_bytes()).unwrap();
        assert_eq!(
            (parsed.kind, parsed.node.get(), parsed.endpoint()),
            (ENDPOINT_QUERY, 7, None)
        );
        let gid = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let reply = EndpointPacket::reply(7, Some((0x12, 0x4d46_5052, gid)));
        let bytes = reply.as_bytes();
        assert_eq!(&bytes[..4], b"FMEP");
        assert_eq!(
            EndpointPacket::parse(bytes).unwrap().endpoint(),
            Some((0x12, 0x4d46_5052, gid))
        );
        let none = EndpointPacket::reply(7, None);
        assert_eq!(EndpointPacket::parse(none.as_bytes()).unwrap().endpoint(), None);
    }

    #[test]
    fn bad_packets_are_refused_by_reason() {
        let good = EndpointPacket::reply(1, Some((2, 3, [0; 16]))).as_bytes().to_vec();
        assert!(matches!(
            EndpointPacket::parse(&good[..35]),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            EndpointPacket::parse(&[good.clone(), vec![0]].concat()),
            Err(Error::Oversized { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(EndpointPacket::parse(&bad), Err(Error::BadMagic { .. })));
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(matches!(EndpointPacket::parse(&bad), Err(Error::UnsupportedVersion(2))));
        let mut bad = good.clone();
        bad[5] = 3;
        assert!(matches!(EndpointPacket::parse(&bad), Err(Error::UnknownKind(3))));
        let mut bad = good.clone();
        bad[7] = 1;
        assert!(matches!(EndpointPacket::parse(&bad), Err(Error::Field { .. })));
        let mut bad = good;
        bad[12] = 1; // QPN above 24 bits
        assert!(matches!(EndpointPacket::parse(&bad), Err(Error::Field { .. })));
    }
}
