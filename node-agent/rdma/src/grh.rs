//! What a UD receive buffer holds: 40 bytes of Global Route Header, then
//! the payload.

/// Bytes the NIC writes before a UD payload: an InfiniBand GRH, or for
/// RoCE v2 the IP header placed at the end of those 40 bytes.
pub const GRH_LEN: usize = 40;

/// The sender's GID and the payload of a UD receive of `len` bytes in
/// `buf`; `None` when it is too short to hold a GRH.
///
/// With an InfiniBand GRH or RoCE v2 over IPv6 the source GID sits at
/// bytes 8..24; RoCE v2 over IPv4 leaves the first 20 bytes zero and puts
/// the 20-byte IPv4 header in the last 20, whose source address becomes an
/// IPv4-mapped GID.
pub fn split(buf: &[u8], len: usize) -> Option<([u8; 16], &[u8])> {
    let received = buf.get(..len)?;
    if received.len() < GRH_LEN {
        return None;
    }
    let (header, payload) = received.split_at(GRH_LEN);
    let mut gid = [0u8; 16];
    if header[..20].iter().all(|&b| b == 0) && header[20] >> 4 == 4 {
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&header[32..36]);
    } else {
        gid.copy_from_slice(&header[8..24]);
    }
    Some((gid, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_infiniband_or_ipv6_grh_gives_the_source_gid() {
        let mut buf = vec![0u8; GRH_LEN + 4];
        buf[0] = 0x60; // IP version 6 / GRH IPVer
        let gid: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        buf[8..24].copy_from_slice(&gid);
        buf[GRH_LEN..].copy_from_slice(b"FMPR");
        assert_eq!(split(&buf, buf.len()), Some((gid, &b"FMPR"[..])));
    }

    #[test]
    fn roce_v2_over_ipv4_gives_an_ipv4_mapped_gid() {
        let mut buf = vec![0u8; GRH_LEN + 2];
        buf[20] = 0x45;
        buf[32..36].copy_from_slice(&[198, 18, 1, 2]);
        let (gid, payload) = split(&buf, buf.len()).unwrap();
        assert_eq!(
            std::net::Ipv6Addr::from(gid).to_ipv4_mapped(),
            Some(std::net::Ipv4Addr::new(198, 18, 1, 2))
        );
        assert_eq!(payload.len(), 2);
    }

    #[test]
    fn short_receives_are_refused() {
        let buf = [0u8; 64];
        assert_eq!(split(&buf, 39), None);
        assert_eq!(split(&buf, 65), None);
        assert_eq!(split(&buf, 40).map(|(_, p)| p.len()), Some(0));
    }
}
