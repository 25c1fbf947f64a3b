//! Batches flow records into wire-format datagrams and sends them over UDP
//! to the rack's sampler (and the secondary, with the same sequence number,
//! so either sampler can account for every datagram).

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use wire_format::{DatagramBuilder, FlowRecord, Origin, capacity};

/// What the sender has done, for the agent's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Datagrams sent (counted once, whatever the number of samplers).
    pub datagrams: u64,
    /// Records sent.
    pub records: u64,
    /// Sends that failed (per sampler); their records are lost to that
    /// sampler and show there as a sequence gap.
    pub send_errors: u64,
}

/// A batcher of flow records for the samplers.
#[derive(Debug)]
pub struct Sender {
    socket: UdpSocket,
    samplers: Vec<SocketAddr>,
    origin: Origin,
    sequence: u32,
    per_datagram: usize,
    max_datagram: usize,
    pending: Vec<FlowRecord>,
    stats: SenderStats,
}

impl Sender {
    /// A sender from a socket bound for the samplers' family. `batch_size`
    /// caps records per datagram (0: as many as `max_datagram` bytes hold).
    pub fn new(
        socket: UdpSocket,
        samplers: Vec<SocketAddr>,
        origin: Origin,
        max_datagram: usize,
        batch_size: usize,
    ) -> Sender {
        let fit = capacity::<FlowRecord>(max_datagram).max(1);
        let per_datagram = if batch_size == 0 { fit } else { batch_size.min(fit) };
        Sender {
            socket,
            samplers,
            origin,
            sequence: 0,
            per_datagram,
            max_datagram,
            pending: Vec::new(),
            stats: SenderStats::default(),
        }
    }

    /// Queues a record, sending a datagram when one is full.
    pub async fn push(&mut self, record: FlowRecord) {
        self.pending.push(record);
        if self.pending.len() >= self.per_datagram {
            self.flush().await;
        }
    }

    /// Sends what is queued (at most one datagram's worth at a time).
    pub async fn flush(&mut self) {
        while !self.pending.is_empty() {
            let take = self.pending.len().min(self.per_datagram);
            let mut buf = vec![0u8; self.max_datagram];
            let Some(mut builder) = DatagramBuilder::<FlowRecord>::new(&mut buf, self.origin) else {
                return;
            };
            for record in self.pending.drain(..take) {
                // per_datagram never exceeds the capacity, so this fits.
                let _ = builder.push(&record);
            }
            let bytes = builder.finish(self.sequence, crate::now_ns());
            for sampler in &self.samplers {
                if self.socket.send_to(bytes, sampler).await.is_err() {
                    self.stats.send_errors += 1;
                }
            }
            self.sequence = self.sequence.wrapping_add(1);
            self.stats.datagrams += 1;
            self.stats.records += take as u64;
        }
    }

    /// What has been sent.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }
}
