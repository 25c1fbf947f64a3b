//! UDP ingest of agent datagrams: sockets bound per configured address
//! (an IPv6 socket is IPv6-only, so `0.0.0.0` and `[::]` on one port can both
//! be listed), and a receive loop taking up to 32 datagrams per system call
//! (recvmmsg, through quinn-udp; coalesced GRO buffers are split by their
//! stride) and aggregating a whole receive under one lock.
//!
//! The receive loops run on a thread of their own ([`Receivers`]), apart
//! from the runtime that encodes and spools windows and sends them to the
//! collector, whose threads the daemon runs at a lower priority
//! ([`background_nice`]).
//! A socket's buffer holds a fraction of a second of a busy rack's
//! datagrams; sending a window's batch over QUIC (a 15 MB batch with
//! 20 000 paths) took the same runtime worker for long enough to overflow
//! it, whenever the sampler had one core.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};
use wire_format::MAX_UDP_PAYLOAD;

use crate::aggregate::Aggregator;

/// Datagrams taken per receive system call at most (quinn-udp's batch).
pub const RECV_BATCH: usize = 32;

/// Binds `addr` with a receive buffer of about `buffer_bytes`; an IPv6
/// socket is IPv6-only.
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<configs_runtime::udp::Bound> {
    configs_runtime::udp::bind(addr, buffer_bytes, true, "ingest.socket_buffer_bytes")
}

/// How much lower than the receive thread's the priority of the daemon's
/// other threads is (nice levels): enough that the scheduler runs the
/// receive loop first whenever both want the same core.
pub const BACKGROUND_NICE: i32 = 10;

/// The nice value for the daemon's runtime threads: [`BACKGROUND_NICE`]
/// above the calling thread's, at most 19. Read once, before the runtime
/// starts, and set as it is ([`set_thread_nice`]): a thread started from
/// a runtime thread inherits its nice value, and adding to that would
/// lower it again.
pub fn background_nice() -> i32 {
    rustix::process::getpriority_process(None).map_or(BACKGROUND_NICE, |nice| (nice + BACKGROUND_NICE).min(19))
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
/// Lowering a thread's priority needs no privilege; a failure is logged,
/// as the daemon works without it.
pub fn set_thread_nice(nice: i32) {
    if let Err(error) = rustix::process::setpriority_process(None, nice) {
        debug!(message = "could not set a runtime thread's priority", nice, %error);
    }
}

/// The receive loops' runtime and sockets, ready to run on their thread.
pub struct Receivers {
    runtime: tokio::runtime::Runtime,
    sockets: Vec<UdpSocket>,
}

impl Receivers {
    /// Registers `sockets` with a single-threaded runtime of their own.
    pub fn new(sockets: Vec<std::net::UdpSocket>) -> std::io::Result<Receivers> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        let sockets = {
            let _entered = runtime.enter();
            sockets
                .into_iter()
                .map(UdpSocket::from_std)
                .collect::<std::io::Result<_>>()?
        };
        Ok(Receivers { runtime, sockets })
    }

    /// Runs the receive loops on a thread of their own, which takes the
    /// calling thread's priority — call it from the daemon's main thread,
    /// not from a runtime thread run at [`background_nice`]. The thread
    /// ends when every loop has (when `shutdown` turns true).
    pub fn spawn(
        self,
        aggregator: Arc<Mutex<Aggregator>>,
        per_lock: usize,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("flowmesh-ingest".into())
            .spawn(move || {
                let Receivers { runtime, sockets } = self;
                runtime.block_on(async move {
                    let mut loops = tokio::task::JoinSet::new();
                    for socket in sockets {
                        let task = run(socket, aggregator.clone(), per_lock, shutdown.clone());
                        loops.spawn(async move {
                            if let Err(error) = task.await {
                                warn!(message = "ingest socket failed", %error);
                            }
                        });
                    }
                    while loops.join_next().await.is_some() {}
                });
            })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_threads_take_one_nice_value_however_they_were_started() {
        let ours = rustix::process::getpriority_process(None).unwrap();
        let background = background_nice();
        assert_eq!(background, (ours + BACKGROUND_NICE).min(19));
        let (first, second) = std::thread::spawn(move || {
            set_thread_nice(background);
            let first = rustix::process::getpriority_process(None).unwrap();
            // A thread started from a runtime thread (tokio's blocking
            // pool) inherits its value and sets the same again.
            let second = std::thread::spawn(move || {
                set_thread_nice(background);
                rustix::process::getpriority_process(None).unwrap()
            })
            .join()
            .unwrap();
            (first, second)
        })
        .join()
        .unwrap();
        assert_eq!((first, second), (background, background));
        // Per thread: this one is untouched.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), ours);
    }
}
