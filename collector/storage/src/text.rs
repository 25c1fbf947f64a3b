//! Stored text back into wire values: enum labels (`Transport::as_str` and
//! the like), addresses and GIDs, as every backend stores them. A value no
//! flowmesh writes is [`StoreError::Corrupt`].

use std::net::IpAddr;

use wire_format::{Gid, ProbeAddr, Transport};

use crate::StoreError;

/// Parses a stored name back into a wire enum by its `as_str` label.
pub fn label<E: Copy>(
    all: &[E],
    as_str: fn(E) -> &'static str,
    text: &str,
    table: &'static str,
    column: &'static str,
) -> Result<E, StoreError> {
    all.iter()
        .copied()
        .find(|v| as_str(*v) == text)
        .ok_or_else(|| StoreError::Corrupt {
            table,
            column,
            value: text.to_string(),
        })
}

/// Parses a stored IP address.
pub fn ip(text: &str, table: &'static str, column: &'static str) -> Result<IpAddr, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table,
        column,
        value: text.to_string(),
    })
}

/// A probe address: a GID is stored in IPv6 notation, like an IPv6 address;
/// the transport says which it is.
pub fn probe_addr(
    transport: Transport,
    text: &str,
    table: &'static str,
    column: &'static str,
) -> Result<ProbeAddr, StoreError> {
    let addr = ip(text, table, column)?;
    Ok(match (transport, addr) {
        (Transport::RdmaUd, IpAddr::V6(v6)) => ProbeAddr::Gid(Gid(v6.octets())),
        (Transport::RdmaUd, IpAddr::V4(v4)) => ProbeAddr::Gid(Gid(v4.to_ipv6_mapped().octets())),
        (_, addr) => ProbeAddr::Ip(addr),
    })
}
