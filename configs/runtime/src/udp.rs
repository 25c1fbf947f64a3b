//! UDP sockets bound with a receive buffer of a configured size: the
//! sampler's ingest sockets and the collector's QUIC socket, both of which
//! take bursts (a rack's agents; every rack's batch at a window's end) that
//! the kernel's default buffer, about 208 KiB, drops.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

/// A bound, non-blocking UDP socket and the receive buffer the kernel
/// granted.
#[derive(Debug)]
pub struct Bound {
    /// The socket, for the runtime that will use it.
    pub socket: std::net::UdpSocket,
    /// Receive buffer granted, bytes: the kernel doubles the request (for
    /// its own overhead) and caps it at twice `net.core.rmem_max`.
    pub buffer_bytes: usize,
}

/// Binds `addr` (IPv6-only when `only_v6`) with a receive buffer of about
/// `buffer_bytes`; a request the kernel capped is logged with the `key`
/// that asked for it and the sysctl that caps it.
pub fn bind(addr: SocketAddr, buffer_bytes: usize, only_v6: bool, key: &str) -> std::io::Result<Bound> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(only_v6)?;
    }
    if socket.set_recv_buffer_size(buffer_bytes).is_ok() {
        // The kernel grants twice the request (room for its own overhead)
        // unless net.core.rmem_max capped it: less than that is a cap, even
        // when it still reads as at least the number asked for.
        let granted = socket.recv_buffer_size().unwrap_or(0);
        if granted < buffer_bytes.saturating_mul(2) {
            warn!(
                message = "socket receive buffer is smaller than configured; raise net.core.rmem_max (sysctl -w net.core.rmem_max=BYTES)",
                key,
                requested = buffer_bytes,
                granted
            );
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let buffer_bytes = socket.recv_buffer_size()?;
    Ok(Bound {
        socket: socket.into(),
        buffer_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_is_what_the_kernel_grants_for_the_request() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let requested = 300_000;
        let bound = bind("127.0.0.1:0".parse().unwrap(), requested, true, "test").unwrap();
        assert_eq!(bound.buffer_bytes, 2 * requested.min(rmem_max));
        assert_ne!(bound.socket.local_addr().unwrap().port(), 0);
    }
}
