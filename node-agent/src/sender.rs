//! Batches flow and probe records into wire-format datagrams (one kind per
//! datagram) and sends them over UDP to the rack's sampler (and the
//! secondary, with the same sequence number, so either sampler can account
//! for every datagram).

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use wire_format::{DatagramBuilder, FlowRecord, Origin, ProbeRecord, Record, capacity};

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
    batch_size: usize,
    max_datagram: usize,
    flows: Vec<FlowRecord>,
    probes: Vec<ProbeRecord>,
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
        Sender {
            socket,
            samplers,
            origin,
            sequence: 0,
            batch_size,
            max_datagram,
            flows: Vec::new(),
            probes: Vec::new(),
            stats: SenderStats::default(),
        }
    }

    /// Records of type `R` per datagram.
    fn per_datagram<R: Record>(&self) -> usize {
        let fit = capacity::<R>(self.max_datagram).max(1);
        if self.batch_size == 0 {
            fit
        } else {
            self.batch_size.min(fit)
        }
    }

    /// Queues a flow record, sending a datagram when one is full.
    pub async fn push_flow(&mut self, record: FlowRecord) {
        self.flows.push(record);
        if self.flows.len() >= self.per_datagram::<FlowRecord>() {
            let mut flows = std::mem::take(&mut self.flows);
            self.send_all(&mut flows).await;
        }
    }

    /// Queues a probe record, sending a datagram when one is full.
    pub async fn push_probe(&mut self, record: ProbeRecord) {
        self.probes.push(record);
        if self.probes.len() >= self.per_datagram::<ProbeRecord>() {
            let mut probes = std::mem::take(&mut self.probes);
            self.send_all(&mut probes).await;
        }
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) {
        let mut flows = std::mem::take(&mut self.flows);
        self.send_all(&mut flows).await;
        let mut probes = std::mem::take(&mut self.probes);
        self.send_all(&mut probes).await;
    }

    async fn send_all<R: Record>(&mut self, pending: &mut Vec<R>) {
        let per = self.per_datagram::<R>();
        while !pending.is_empty() {
            let take = pending.len().min(per);
            let mut buf = vec![0u8; self.max_datagram];
            let Some(mut builder) = DatagramBuilder::<R>::new(&mut buf, self.origin) else {
                return;
            };
            for record in pending.drain(..take) {
                // `per` never exceeds the capacity, so this fits.
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
