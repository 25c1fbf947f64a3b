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
    /// Whether `net.core.rmem_max` capped the buffer below what the request
    /// would have been granted: the bursts it was sized for can overflow
    /// it. The daemons export it, so a cap is an alert, not only a log
    /// line read at start.
    pub capped: bool,
}

/// Binds `addr` (IPv6-only when `only_v6`) with a receive buffer of about
/// `buffer_bytes`; a request the kernel capped is logged with the `key`
/// that asked for it and the sysctl that caps it.
pub fn bind(addr: SocketAddr, buffer_bytes: usize, only_v6: bool, key: &str) -> std::io::Result<Bound> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(only_v6)?;
    }
    // A refused request leaves the kernel's default, which is a cap too.
    let asked = socket.set_recv_buffer_size(buffer_bytes).is_ok();
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let granted = socket.recv_buffer_size()?;
    // The kernel grants twice the request (room for its own overhead)
    // unless net.core.rmem_max capped it: less than that is a cap, even
    // when it still reads as at least the number asked for. It holds any
    // request to half of i32::MAX whatever the sysctl, which is no cap of
    // the sysctl's.
    let uncapped = buffer_bytes.min(i32::MAX as usize / 2).saturating_mul(2);
    let capped = !asked || granted < uncapped;
    if capped {
        warn!(
            message = "socket receive buffer is smaller than configured; raise net.core.rmem_max (sysctl -w net.core.rmem_max=BYTES)",
            key,
            requested = buffer_bytes,
            granted
        );
    }
    Ok(Bound {
        socket: socket.into(),
        buffer_bytes: granted,
        capped,
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
        assert_eq!(bound.capped, requested > rmem_max);
        assert_ne!(bound.socket.local_addr().unwrap().port(), 0);
    }

    /// A request above `net.core.rmem_max` is capped, and says so: the
    /// request is made larger than this host's limit, whatever it is.
    #[test]
    fn a_request_above_rmem_max_is_reported_as_capped() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The kernel also holds a request to half of i32::MAX: a host whose
        // limit is above that cannot be asked for more than it.
        if rmem_max >= (i32::MAX / 2) as usize {
            return;
        }
        let bound = bind("127.0.0.1:0".parse().unwrap(), rmem_max + 4096, true, "test").unwrap();
        assert!(bound.capped);
        assert_eq!(bound.buffer_bytes, 2 * rmem_max);
        let small = bind("127.0.0.1:0".parse().unwrap(), 4096, true, "test").unwrap();
        assert!(!small.capped, "4 KiB is under rmem_max's default, 208 KiB");
    }
}
