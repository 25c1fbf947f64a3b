//! Batches flow and probe records into wire-format datagrams (one kind per
//! datagram) and sends them over UDP to the rack's sampler (and the
//! secondary, with the same sequence number, so either sampler can account
//! for every datagram).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// Datagrams not sent to stay under the rate cap (their sequence
    /// numbers are used, so samplers count them as lost).
    pub rate_limited_datagrams: u64,
    /// Records in those datagrams.
    pub rate_limited_records: u64,
    /// Empty datagrams sent after a quiet spell, so samplers can tell an
    /// idle agent from a dead one.
    pub heartbeats: u64,
}

/// A token bucket of datagrams: `per_sec` a second, bursts of one second's
/// worth.
#[derive(Debug)]
struct RateCap {
    per_sec: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateCap {
    fn new(per_sec: u32) -> RateCap {
        RateCap {
            per_sec: f64::from(per_sec.max(1)),
            tokens: f64::from(per_sec.max(1)),
            refilled: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
    cap: RateCap,
    last_sent: Instant,
    /// Whether the latest send to the primary sampler succeeded.
    primary_ok: bool,
}

impl Sender {
    /// A sender from a socket bound for the samplers' family. `batch_size`
    /// caps records per datagram (0: as many as `max_datagram` bytes hold);
    /// at most `max_per_sec` datagrams leave per second.
    pub fn new(
        socket: UdpSocket,
        samplers: Vec<SocketAddr>,
        origin: Origin,
        max_datagram: usize,
        batch_size: usize,
        max_per_sec: u32,
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
            cap: RateCap::new(max_per_sec),
            last_sent: Instant::now(),
            primary_ok: true,
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
            self.sequence = self.sequence.wrapping_add(1);
            if !self.cap.take(Instant::now()) {
                self.stats.rate_limited_datagrams += 1;
                self.stats.rate_limited_records += take as u64;
                continue;
            }
            self.send_to_samplers(bytes).await;
            self.stats.records += take as u64;
        }
    }

    /// Sends one datagram to every sampler (the same bytes, the same
    /// sequence number), noting whether the primary took it.
    async fn send_to_samplers(&mut self, bytes: &[u8]) {
        for (i, sampler) in self.samplers.iter().enumerate() {
            let ok = self.socket.send_to(bytes, sampler).await.is_ok();
            if !ok {
                self.stats.send_errors += 1;
            }
            if i == 0 {
                self.primary_ok = ok;
            }
        }
        self.last_sent = Instant::now();
        self.stats.datagrams += 1;
    }

    /// Sends an empty datagram if nothing has been sent for `idle`.
    pub async fn heartbeat_if_idle(&mut self, idle: Duration) {
        if self.last_sent.elapsed() < idle {
            return;
        }
        let mut buf = vec![0u8; self.max_datagram];
        let Some(builder) = DatagramBuilder::<ProbeRecord>::new(&mut buf, self.origin) else {
            return;
        };
        let bytes = builder.finish(self.sequence, crate::now_ns());
        self.sequence = self.sequence.wrapping_add(1);
        self.send_to_samplers(bytes).await;
        self.stats.heartbeats += 1;
    }

    /// Whether the primary sampler was reachable at the latest send: the
    /// kernel could route to it and no error came back. (UDP cannot tell
    /// whether anything listens there; the sampler's completeness does.)
    /// Heartbeats keep this current on an idle host.
    pub fn reachable(&self) -> bool {
        self.primary_ok
    }

    /// What has been sent.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ProbeRecord {
        wire_format::Probe {
            transport: wire_format::Transport::Udp,
            src: wire_format::ProbeAddr::Ip("127.0.0.1".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())),
            dst: wire_format::ProbeAddr::Ip(std::net::Ipv4Addr::LOCALHOST.into()),
            src_port: 1,
            dst_port: 2,
            dst_node: 2,
            dscp: 0,
            seq: 1,
            outcome: wire_format::ProbeOutcome::Timeout,
            error_code: 0,
            timestamps: wire_format::ProbeTimestamps::default(),
        }
        .to_record()
    }

    /// Over the cap, datagrams are dropped and counted, and their sequence
    /// numbers are used, so the sampler sees the gap; an idle sender
    /// heartbeats with empty datagrams.
    #[tokio::test]
    async fn the_rate_cap_drops_and_counts_and_idle_senders_heartbeat() {
        let sampler = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sampler.set_nonblocking(true).expect("nonblocking");
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let origin = Origin {
            node_id: 7,
            agent_epoch: 1,
        };
        let to = vec![sampler.local_addr().expect("addr")];
        let mut sender = Sender::new(socket, to, origin, 1472, 1, 10);
        for _ in 0..25 {
            sender.push_probe(record()).await;
        }
        let stats = sender.stats();
        assert_eq!((stats.datagrams, stats.rate_limited_datagrams), (10, 15), "{stats:?}");
        assert_eq!(stats.rate_limited_records, 15);
        let mut buf = [0u8; 2048];
        let mut sequences = Vec::new();
        while let Ok(len) = sampler.recv(&mut buf) {
            let datagram = wire_format::parse(&buf[..len]).expect("valid");
            sequences.push(datagram.header.sequence.get());
        }
        assert_eq!(sequences, (0..10).collect::<Vec<u32>>());

        sender.heartbeat_if_idle(Duration::from_secs(3_600)).await;
        assert_eq!(sender.stats().heartbeats, 0, "not idle yet");
        sender.heartbeat_if_idle(Duration::ZERO).await;
        assert_eq!(sender.stats().heartbeats, 1);
        let len = loop {
            if let Ok(len) = sampler.recv(&mut buf) {
                break len;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let heartbeat = wire_format::parse(&buf[..len]).expect("valid");
        assert!(heartbeat.records.is_empty());
        // The 15 dropped datagrams used sequence numbers 10..25.
        assert_eq!(heartbeat.header.sequence.get(), 25);
        assert!(sender.reachable());
    }

    /// A sampler the kernel refuses to send to (port 0 on loopback: no
    /// packet leaves) makes the agent not ready, and counts the errors.
    #[tokio::test]
    async fn an_unreachable_sampler_is_noticed() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let origin = Origin {
            node_id: 7,
            agent_epoch: 1,
        };
        let to = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        let mut sender = Sender::new(socket, to, origin, 1472, 1, 100);
        assert!(sender.reachable(), "nothing sent yet");
        sender.push_probe(record()).await;
        assert!(!sender.reachable());
        assert_eq!(sender.stats().send_errors, 1);
    }
}
