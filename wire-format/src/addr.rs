//! The 16-byte address fields: IPv4 (as IPv4-mapped IPv6), IPv6, or an RDMA GID.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::FieldError;
use crate::values::AddressFamily;

/// An RDMA global identifier: 16 raw bytes, formatted like an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gid(pub [u8; 16]);

impl std::fmt::Display for Gid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // GIDs are conventionally written in IPv6 notation.
        Ipv6Addr::from(self.0).fmt(f)
    }
}

/// The family that stores both `a` and `b` in one record: IPv4 only when both
/// are IPv4, otherwise IPv6 (with any IPv4 side mapped).
pub(crate) fn ip_family(a: IpAddr, b: IpAddr) -> AddressFamily {
    match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) => AddressFamily::Ipv4,
        _ => AddressFamily::Ipv6,
    }
}

/// The 16 wire bytes of an IP address; IPv4 becomes `::ffff:a.b.c.d`.
pub(crate) fn ip_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Reads an address of an IP family back; `None` for [`AddressFamily::Gid`]
/// or unknown families. Assumes the bytes passed [`check_addr`].
pub(crate) fn ip_from_bytes(family: AddressFamily, bytes: [u8; 16]) -> Option<IpAddr> {
    let v6 = Ipv6Addr::from(bytes);
    match family {
        AddressFamily::Ipv4 => Some(IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))),
        AddressFamily::Ipv6 => Some(IpAddr::V6(v6)),
        AddressFamily::Gid | AddressFamily::Unknown(_) => None,
    }
}

/// Checks that `bytes` is a valid address of `family`: an IPv4 address must be
/// IPv4-mapped so that one IP has exactly one encoding.
pub(crate) fn check_addr(family: AddressFamily, bytes: &[u8; 16], field: &'static str) -> Result<(), FieldError> {
    if family == AddressFamily::Ipv4 && Ipv6Addr::from(*bytes).to_ipv4_mapped().is_none() {
        return Err(FieldError::Invalid {
            field,
            // The first eight bytes are where a non-mapped address differs.
            value: u64::from_be_bytes([
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
            ]),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_mapped_and_read_back() {
        let ip: IpAddr = "198.18.1.2".parse().unwrap();
        let bytes = ip_to_bytes(ip);
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2]);
        assert_eq!(check_addr(AddressFamily::Ipv4, &bytes, "src_addr"), Ok(()));
        assert_eq!(ip_from_bytes(AddressFamily::Ipv4, bytes), Some(ip));
    }

    #[test]
    fn unmapped_bytes_are_not_ipv4() {
        let bytes = Ipv6Addr::LOCALHOST.octets();
        assert!(check_addr(AddressFamily::Ipv4, &bytes, "src_addr").is_err());
        assert_eq!(check_addr(AddressFamily::Ipv6, &bytes, "src_addr"), Ok(()));
    }

    #[test]
    fn mixed_families_are_stored_as_ipv6() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(ip_family(v4, v4), AddressFamily::Ipv4);
        assert_eq!(ip_family(v4, v6), AddressFamily::Ipv6);
        assert_eq!(ip_family(v6, v6), AddressFamily::Ipv6);
    }

    #[test]
    fn gid_displays_like_ipv6() {
        let gid = Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(gid.to_string(), "fe80::1");
    }
}
