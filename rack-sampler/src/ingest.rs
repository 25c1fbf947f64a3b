//! UDP ingest of agent datagrams: sockets bound per configured address
//! (an IPv6 socket is IPv6-only, so `0.0.0.0` and `[::]` on one port can both
//! be listed), and a receive loop taking up to 32 datagrams per system call
//! (recvmmsg, through quinn-udp; coalesced GRO buffers are split by their
//! stride) and aggregating a whole receive under one lock.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::warn;
use wire_format::MAX_UDP_PAYLOAD;

use crate::aggregate::Aggregator;

/// Datagrams taken per receive system call at most (quinn-udp's batch).
pub const RECV_BATCH: usize = 32;

/// A bound ingest socket and the receive buffer the kernel granted.
#[derive(Debug)]
pub struct IngestSocket {
    /// The socket.
    pub socket: UdpSocket,
    /// Receive buffer granted, bytes (the kernel doubles the request and caps
    /// it at `net.core.rmem_max`).
    pub buffer_bytes: usize,
}

/// Binds `addr` with a receive buffer of about `buffer_bytes`. Must be
/// called within a tokio runtime.
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<IngestSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Root may exceed rmem_max (SO_RCVBUFFORCE); others get what the cap allows.
    if socket.set_recv_buffer_size(buffer_bytes).is_ok() {
        let granted = socket.recv_buffer_size().unwrap_or(0);
        if granted < buffer_bytes {
            warn!(
                message = "socket receive buffer is smaller than configured; raise net.core.rmem_max (sysctl -w net.core.rmem_max=BYTES)",
                requested = buffer_bytes,
                granted
            );
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket.into())?;
    let buffer_bytes = socket2::SockRef::from(&socket).recv_buffer_size()?;
    Ok(IngestSocket { socket, buffer_bytes })
}

/// Receives and aggregates datagrams until `shutdown` turns true. At most
/// `per_lock` datagrams are aggregated per lock of the aggregator, so the
/// window closer is never starved.
pub async fn run(
    socket: UdpSocket,
    aggregator: Arc<Mutex<Aggregator>>,
    per_lock: usize,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let state = UdpSocketState::new((&socket).into())?;
    // One buffer per datagram of a batch; with GRO one buffer holds several
    // datagrams of one sender, at most 64 KiB in all.
    let mut buffers = vec![vec![0u8; MAX_UDP_PAYLOAD.next_power_of_two()]; RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    let per_lock = per_lock.max(1);
    loop {
        tokio::select! {
            ready = socket.readable() => ready?,
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut taken = 0;
        while taken < per_lock {
            let mut slices: Vec<IoSliceMut<'_>> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let received = socket.try_io(Interest::READABLE, || {
                state.recv((&socket).into(), &mut slices, &mut meta)
            });
            let count = match received {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            drop(slices);
            let now = crate::now_ns();
            let mut aggregator = lock(&aggregator);
            for (buffer, m) in buffers.iter().zip(&meta).take(count) {
                if m.len == 0 {
                    // An empty datagram is refused (truncated), not ignored.
                    aggregator.ingest(&[], now);
                    taken += 1;
                    continue;
                }
                for datagram in buffer[..m.len].chunks(m.stride.max(1)) {
                    aggregator.ingest(datagram, now);
                    taken += 1;
                }
            }
        }
    }
}

/// Locks the aggregator; its state stays consistent across a panic in
/// another holder (each update is a few plain additions), so poison is
/// ignored.
pub fn lock(aggregator: &Mutex<Aggregator>) -> std::sync::MutexGuard<'_, Aggregator> {
    aggregator.lock().unwrap_or_else(|poison| poison.into_inner())
}
