//! Batches flow and probe records into wire-format datagrams (one kind per
//! datagram) and sends them over UDP to the rack's sampler (and the
//! secondary, with the same sequence number, so either sampler can account
//! for every datagram).
//!
//! [`Batcher`] is the logic, with time passed in and no I/O: records per
//! datagram (a datagram leaves when full, or when the caller flushes on its
//! timer), sequence numbers, the datagram rate cap, and heartbeats after a
//! quiet spell; it is unit-tested on a virtual clock. [`Sender`] is the
//! thin async shell: it reads the clock, sends whatever the batcher emits
//! to every sampler at its current address ([`SamplerAddress`], resolved
//! off the record path) and notes whether the primary took it. A failed
//! send, or a sampler whose name has not resolved yet, counts as a send
//! error and asks for the name to be looked up again; its datagram is lost
//! to that sampler, which sees the gap in the sequence numbers.
//!
//! Datagram buffers: the batcher writes each datagram once, in place, into
//! a [`BytesMut`] arena with room for many datagrams, and cuts it off as a
//! [`Bytes`] (`split().freeze()`: a reference into the arena, no copy)
//! that the shell hands to the socket for every sampler. Once the shell
//! has sent and dropped the datagrams, the arena is theirs no more, and the
//! next datagram that does not fit in what is left reclaims it from the
//! start (`BytesMut::reserve` on a buffer no `Bytes` points into any
//! more), so a sender that keeps up allocates nothing per datagram — the
//! previous design allocated a `Vec` for each. A new arena is allocated
//! only while datagrams cut from the old one are still held.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use wire_format::{DatagramBuilder, FlowRecord, Origin, ProbeRecord, Record, capacity};

use crate::sampler_address::SamplerAddress;

/// What the sender has done, for the agent's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Datagrams sent (counted once, whatever the number of samplers).
    pub datagrams: u64,
    /// Records sent.
    pub records: u64,
    /// Sends that failed (per sampler), a sampler whose name had not
    /// resolved included; their records are lost to that sampler and show
    /// there as a sequence gap.
    pub send_errors: u64,
    /// Lookups of the samplers' names that failed (every sampler).
    pub lookup_failures: u64,
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
    fn new(per_sec: u32, now: Instant) -> RateCap {
        RateCap {
            per_sec: f64::from(per_sec.max(1)),
            tokens: f64::from(per_sec.max(1)),
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        // Never backwards: an earlier `now` refills nothing next time either.
        self.refilled = self.refilled.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bytes of datagram arena allocated at a time (at least one datagram):
/// 44 datagrams of the default 1 472 bytes.
const ARENA_BYTES: usize = 64 * 1024;

/// The sender's logic: records into datagrams under the rate cap, with
/// `now` (monotonic, for the cap and idleness) and `wall_ns` (the
/// datagram header's send time) passed in. Datagrams to send wait in an
/// outbox ([`Batcher::poll_transmit`]).
#[derive(Debug)]
pub struct Batcher {
    origin: Origin,
    sequence: u32,
    batch_size: usize,
    max_datagram: usize,
    flows: Vec<FlowRecord>,
    probes: Vec<ProbeRecord>,
    cap: RateCap,
    last_sent: Instant,
    stats: SenderStats,
    /// Where datagrams are built, one after the other (see the module doc).
    arena: BytesMut,
    outbox: VecDeque<Bytes>,
}

impl Batcher {
    /// A batcher for `origin`, started at `now`: datagrams of at most
    /// `max_datagram` bytes and `batch_size` records (0: as many as fit),
    /// at most `max_per_sec` of them a second.
    pub fn new(origin: Origin, max_datagram: usize, batch_size: usize, max_per_sec: u32, now: Instant) -> Batcher {
        Batcher {
            origin,
            sequence: 0,
            batch_size,
            max_datagram,
            flows: Vec::new(),
            probes: Vec::new(),
            cap: RateCap::new(max_per_sec, now),
            last_sent: now,
            stats: SenderStats::default(),
            arena: BytesMut::new(),
            outbox: VecDeque::new(),
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

    /// Queues a flow record; a full datagram goes to the outbox. `clock`
    /// gives (`now`, `wall_ns`) and is read only when a datagram is
    /// complete: most records only join one, and at tens of thousands of
    /// flows a second two clock reads per record are measurable.
    pub fn push_flow(&mut self, record: FlowRecord, clock: impl FnOnce() -> (Instant, u64)) {
        self.flows.push(record);
        if self.flows.len() >= self.per_datagram::<FlowRecord>() {
            let (now, wall_ns) = clock();
            let mut flows = std::mem::take(&mut self.flows);
            self.emit_all(&flows, now, wall_ns);
            // Keep the allocation for the next datagram's records.
            flows.clear();
            self.flows = flows;
        }
    }

    /// Queues a probe record; a full datagram goes to the outbox (`clock`
    /// as for [`Batcher::push_flow`]).
    pub fn push_probe(&mut self, record: ProbeRecord, clock: impl FnOnce() -> (Instant, u64)) {
        self.probes.push(record);
        if self.probes.len() >= self.per_datagram::<ProbeRecord>() {
            let (now, wall_ns) = clock();
            let mut probes = std::mem::take(&mut self.probes);
            self.emit_all(&probes, now, wall_ns);
            probes.clear();
            self.probes = probes;
        }
    }

    /// Everything queued to the outbox (the caller's timer, `uplink.flush_ms`).
    pub fn flush(&mut self, now: Instant, wall_ns: u64) {
        let flows = std::mem::take(&mut self.flows);
        self.emit_all(&flows, now, wall_ns);
        let probes = std::mem::take(&mut self.probes);
        self.emit_all(&probes, now, wall_ns);
    }

    /// An empty datagram to the outbox if nothing has been sent for `idle`
    /// (heartbeats are not rate-capped: at most one per `idle`).
    pub fn heartbeat_if_idle(&mut self, now: Instant, wall_ns: u64, idle: Duration) {
        if now.saturating_duration_since(self.last_sent) < idle {
            return;
        }
        if let Some(datagram) = self.build::<ProbeRecord>(&[], wall_ns) {
            self.outbox.push_back(datagram);
            self.sent(now, 0);
            self.stats.heartbeats += 1;
        }
    }

    /// The next datagram to send, oldest first: a view into the batcher's
    /// arena, to drop once sent so the arena can be reused.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.outbox.pop_front()
    }

    /// What has been emitted and dropped (`send_errors` is the shell's).
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// `pending` in datagrams of at most [`Batcher::per_datagram`] records,
    /// each under the rate cap.
    fn emit_all<R: Record>(&mut self, pending: &[R], now: Instant, wall_ns: u64) {
        for chunk in pending.chunks(self.per_datagram::<R>()) {
            let Some(datagram) = self.build(chunk, wall_ns) else {
                return;
            };
            if !self.cap.take(now) {
                // Its sequence number is spent: the samplers see the gap.
                self.stats.rate_limited_datagrams += 1;
                self.stats.rate_limited_records += chunk.len() as u64;
                continue;
            }
            self.outbox.push_back(datagram);
            self.sent(now, chunk.len());
        }
    }

    /// A datagram of `records` with the next sequence number; `None` (and
    /// no sequence number spent) if `max_datagram` cannot hold a header and
    /// a record.
    fn build<R: Record>(&mut self, records: &[R], wall_ns: u64) -> Option<Bytes> {
        if self.arena.capacity() < self.max_datagram {
            // Reclaims the arena if every datagram cut from it is gone,
            // else allocates the next one.
            self.arena.reserve(ARENA_BYTES.max(self.max_datagram));
        }
        self.arena.resize(self.max_datagram, 0);
        let Some(mut builder) = DatagramBuilder::<R>::new(&mut self.arena, self.origin) else {
            self.arena.clear();
            return None;
        };
        for record in records {
            // `per_datagram` never exceeds the capacity, so this fits.
            let _ = builder.push(record);
        }
        let len = builder.finish(self.sequence, wall_ns).len();
        self.arena.truncate(len);
        self.sequence = self.sequence.wrapping_add(1);
        Some(self.arena.split().freeze())
    }

    fn sent(&mut self, now: Instant, records: usize) {
        self.last_sent = now;
        self.stats.datagrams += 1;
        self.stats.records += records as u64;
    }
}

/// The sender's UDP sockets, one per address family, each bound to an
/// ephemeral port at the first send to that family: a sampler's name may
/// lead to IPv4 or IPv6, and a host may lack either.
#[derive(Debug, Default)]
struct Sockets([Option<UdpSocket>; 2]);

impl Sockets {
    /// The socket for `to`'s family, bound now if it is the first.
    fn for_addr(&mut self, to: SocketAddr) -> std::io::Result<&UdpSocket> {
        let slot = &mut self.0[usize::from(to.is_ipv6())];
        let socket = match slot.take() {
            Some(socket) => socket,
            None => {
                let any: SocketAddr = if to.is_ipv6() {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let socket = std::net::UdpSocket::bind(any)?;
                socket.set_nonblocking(true)?;
                UdpSocket::from_std(socket)?
            }
        };
        Ok(slot.insert(socket))
    }
}

/// A batcher of records for the samplers, sending over UDP.
#[derive(Debug)]
pub struct Sender {
    sockets: Sockets,
    samplers: Vec<SamplerAddress>,
    batcher: Batcher,
    send_errors: u64,
    /// Whether the latest send to the primary sampler succeeded.
    primary_ok: bool,
}

impl Sender {
    /// A sender to `samplers` (the primary first), from sockets it binds
    /// as needed. `batch_size` caps records per datagram (0: as many as
    /// `max_datagram` bytes hold); at most `max_per_sec` datagrams leave
    /// per second.
    pub fn new(
        samplers: Vec<SamplerAddress>,
        origin: Origin,
        max_datagram: usize,
        batch_size: usize,
        max_per_sec: u32,
    ) -> Sender {
        Sender {
            sockets: Sockets::default(),
            samplers,
            batcher: Batcher::new(origin, max_datagram, batch_size, max_per_sec, Instant::now()),
            send_errors: 0,
            primary_ok: true,
        }
    }

    /// Waits until every sampler's name has resolved, at most `within` in
    /// all (the agent's start: datagrams sent before would be lost).
    pub async fn wait_resolved(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for sampler in &self.samplers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            sampler.resolved(left).await;
        }
    }

    /// The samplers, the primary first.
    pub fn samplers(&self) -> &[SamplerAddress] {
        &self.samplers
    }

    /// Queues a flow record, sending a datagram when one is full.
    pub async fn push_flow(&mut self, record: FlowRecord) {
        self.batcher.push_flow(record, || (Instant::now(), crate::now_ns()));
        self.transmit().await;
    }

    /// Queues a probe record, sending a datagram when one is full.
    pub async fn push_probe(&mut self, record: ProbeRecord) {
        self.batcher.push_probe(record, || (Instant::now(), crate::now_ns()));
        self.transmit().await;
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) {
        self.batcher.flush(Instant::now(), crate::now_ns());
        self.transmit().await;
    }

    /// Sends an empty datagram if nothing has been sent for `idle`.
    pub async fn heartbeat_if_idle(&mut self, idle: Duration) {
        self.batcher.heartbeat_if_idle(Instant::now(), crate::now_ns(), idle);
        self.transmit().await;
    }

    /// Sends what the batcher emitted to every sampler (the same bytes,
    /// the same sequence number), noting whether the primary took it. A
    /// sampler with no address yet, or a send that fails, asks for its name
    /// to be looked up again (a no-op for an IP address).
    async fn transmit(&mut self) {
        while let Some(datagram) = self.batcher.poll_transmit() {
            for (i, sampler) in self.samplers.iter().enumerate() {
                let ok = match sampler.current() {
                    Some(to) => match self.sockets.for_addr(to) {
                        Ok(socket) => socket.send_to(&datagram, to).await.is_ok(),
                        Err(_) => false,
                    },
                    None => false,
                };
                if !ok {
                    self.send_errors += 1;
                    sampler.send_failed();
                }
                if i == 0 {
                    self.primary_ok = ok;
                }
            }
        }
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
        SenderStats {
            send_errors: self.send_errors,
            lookup_failures: self.samplers.iter().map(SamplerAddress::lookup_failures).sum(),
            ..self.batcher.stats()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler_address::{Lookup, Refresh, system_lookup};
    use wire_format::RecordKind;

    const ORIGIN: Origin = Origin {
        node_id: 7,
        agent_epoch: 1,
    };

    fn record() -> ProbeRecord {
        wire_format::Probe {
            transport: wire_format::Transport::Udp,
            src: wire_format::ProbeAddr::Ip(std::net::Ipv4Addr::LOCALHOST.into()),
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

    fn flow() -> FlowRecord {
        wire_format::Flow {
            flow_id: 1,
            src: std::net::Ipv4Addr::LOCALHOST.into(),
            dst: std::net::Ipv4Addr::LOCALHOST.into(),
            src_port: 1,
            dst_port: 2,
            direction: wire_format::Direction::Outbound,
            end_reason: wire_format::EndReason::Closed,
            dscp: 0,
            start_ns: 1,
            duration_ns: 1,
            bytes_acked: 1,
            bytes_received: 1,
            segs_out: 1,
            segs_in: 1,
            retrans_segs: 0,
            srtt_us: 1,
            min_rtt_us: 1,
        }
        .to_record()
    }

    /// The sequence numbers and record counts of the datagrams in the outbox.
    fn drain(batcher: &mut Batcher) -> Vec<(u32, usize, RecordKind)> {
        std::iter::from_fn(|| batcher.poll_transmit())
            .map(|bytes| {
                let datagram = wire_format::parse(&bytes).expect("a valid datagram");
                (
                    datagram.header.sequence.get(),
                    datagram.records.len(),
                    datagram.header.kind(),
                )
            })
            .collect()
    }

    /// Over the cap, datagrams are dropped and counted, and their sequence
    /// numbers are used, so the sampler sees the gap; the bucket refills at
    /// the cap's rate and holds at most one second's worth.
    #[test]
    fn the_rate_cap_drops_and_counts_on_a_virtual_clock() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(ORIGIN, 1472, 1, 10, t0);
        for _ in 0..25 {
            batcher.push_probe(record(), || (t0, 1));
        }
        let stats = batcher.stats();
        assert_eq!((stats.datagrams, stats.rate_limited_datagrams), (10, 15), "{stats:?}");
        assert_eq!((stats.records, stats.rate_limited_records), (10, 15));
        let sent: Vec<u32> = drain(&mut batcher).into_iter().map(|(seq, ..)| seq).collect();
        assert_eq!(sent, (0..10).collect::<Vec<u32>>());
        // Half a second later: five tokens back.
        for _ in 0..10 {
            batcher.push_probe(record(), || (t0 + Duration::from_millis(500), 1));
        }
        let sent: Vec<u32> = drain(&mut batcher).into_iter().map(|(seq, ..)| seq).collect();
        assert_eq!(sent, (25..30).collect::<Vec<u32>>());
        // A long quiet spell refills one second's worth, not more.
        for _ in 0..20 {
            batcher.push_probe(record(), || (t0 + Duration::from_secs(60), 1));
        }
        assert_eq!(drain(&mut batcher).len(), 10);
        assert_eq!(batcher.stats().rate_limited_datagrams, 15 + 5 + 10);
        // A clock read out of order refills nothing.
        batcher.push_probe(record(), || (t0, 1));
        assert_eq!(drain(&mut batcher).len(), 0);
    }

    /// An idle batcher heartbeats with an empty datagram once `idle` has
    /// passed since the latest datagram, whatever the cap.
    #[test]
    fn heartbeats_come_after_a_quiet_spell_only() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(5);
        let mut batcher = Batcher::new(ORIGIN, 1472, 1, 1, t0);
        batcher.heartbeat_if_idle(t0 + idle - Duration::from_nanos(1), 1, idle);
        assert_eq!(batcher.stats().heartbeats, 0, "not idle yet");
        batcher.push_probe(record(), || (t0 + Duration::from_secs(3), 1));
        batcher.heartbeat_if_idle(t0 + idle, 1, idle);
        assert_eq!(batcher.stats().heartbeats, 0, "sent 2 s ago");
        // The cap (1/s) is spent; the heartbeat goes all the same.
        batcher.push_probe(record(), || (t0 + Duration::from_secs(3), 1));
        batcher.heartbeat_if_idle(t0 + Duration::from_secs(8), 1, idle);
        assert_eq!(batcher.stats().heartbeats, 1);
        assert_eq!(
            drain(&mut batcher),
            [(0, 1, RecordKind::Probe), (2, 0, RecordKind::Probe)],
            "the dropped datagram's sequence number 1 is a gap"
        );
        // A heartbeat counts as a send: the next one is `idle` later.
        batcher.heartbeat_if_idle(t0 + Duration::from_secs(12), 1, idle);
        assert_eq!(batcher.stats().heartbeats, 1);
        batcher.heartbeat_if_idle(t0 + Duration::from_secs(13), 1, idle);
        assert_eq!(batcher.stats().heartbeats, 2);
        assert_eq!(batcher.stats().datagrams, 3);
    }

    /// A datagram leaves when full (`batch_size`, or as many records as
    /// `max_datagram` bytes hold), the rest on flush; flows and probes
    /// never share a datagram.
    #[test]
    fn records_are_batched_by_size_and_flushed_on_demand() {
        let t0 = Instant::now();
        // (1472 − 24) / 96 = 15 probe records a datagram.
        let mut batcher = Batcher::new(ORIGIN, 1472, 0, 1_000, t0);
        for _ in 0..20 {
            batcher.push_probe(record(), || (t0, 1));
        }
        batcher.push_flow(flow(), || (t0, 1));
        assert_eq!(drain(&mut batcher), [(0, 15, RecordKind::Probe)]);
        batcher.flush(t0, 1);
        assert_eq!(
            drain(&mut batcher),
            [(1, 1, RecordKind::Flow), (2, 5, RecordKind::Probe)]
        );
        batcher.flush(t0, 1);
        assert!(drain(&mut batcher).is_empty(), "nothing queued, nothing sent");
        let mut batcher = Batcher::new(ORIGIN, 1472, 4, 1_000, t0);
        for _ in 0..9 {
            batcher.push_flow(flow(), || (t0, 1));
        }
        batcher.flush(t0, 1);
        let sizes: Vec<usize> = drain(&mut batcher).into_iter().map(|(_, n, _)| n).collect();
        assert_eq!(sizes, [4, 4, 1]);
        assert_eq!(batcher.stats().records, 9);
        // Too small for a header and a record: nothing is built.
        let mut batcher = Batcher::new(ORIGIN, 30, 0, 1_000, t0);
        batcher.push_probe(record(), || (t0, 1));
        batcher.heartbeat_if_idle(t0 + Duration::from_secs(9), 1, Duration::ZERO);
        assert!(drain(&mut batcher).is_empty());
    }

    /// Datagrams are cut one after the other from one allocation, which is
    /// reused once they have been sent and dropped: no allocation per
    /// datagram.
    #[test]
    fn datagrams_share_one_reused_allocation() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(ORIGIN, 1472, 1, 1_000_000, t0);
        for _ in 0..3 {
            batcher.push_probe(record(), || (t0, 1));
        }
        let held: Vec<Bytes> = std::iter::from_fn(|| batcher.poll_transmit()).collect();
        let start = held[0].as_ptr() as usize;
        let one = held[0].len();
        assert_eq!(one, 24 + 96);
        // Back to back in the arena: no copy, no allocation of their own.
        let addrs: Vec<usize> = held.iter().map(|d| d.as_ptr() as usize).collect();
        assert_eq!(addrs, [start, start + one, start + 2 * one]);
        drop(held);
        // Many arenas' worth, each sent and dropped at once: every datagram
        // lies in the first arena, reclaimed from its start when full.
        let arena = start..start + ARENA_BYTES;
        let mut wrapped = 0;
        let mut previous = start + 2 * one;
        for _ in 0..3 * ARENA_BYTES / one {
            batcher.push_probe(record(), || (t0, 1));
            let datagram = batcher.poll_transmit().expect("a datagram");
            let at = datagram.as_ptr() as usize;
            assert!(
                arena.contains(&at) && arena.contains(&(at + one - 1)),
                "a new allocation"
            );
            wire_format::parse(&datagram).expect("a valid datagram");
            if at == start {
                wrapped += 1;
            } else {
                assert_eq!(at, previous + one);
            }
            previous = at;
        }
        assert!(wrapped >= 3, "reclaimed {wrapped} times");
        // While a datagram is held, the next arena is a new allocation.
        for _ in 0..ARENA_BYTES / one {
            batcher.push_probe(record(), || (t0, 1));
        }
        let held: Vec<Bytes> = std::iter::from_fn(|| batcher.poll_transmit()).collect();
        assert!(held.iter().any(|d| !arena.contains(&(d.as_ptr() as usize))));
        assert_eq!(
            batcher.stats().datagrams as usize,
            3 + 3 * ARENA_BYTES / one + ARENA_BYTES / one
        );
    }

    /// A sampler at a fixed address (no lookup).
    fn at(addr: SocketAddr) -> SamplerAddress {
        SamplerAddress::new(addr.into(), system_lookup(), Refresh::default())
    }

    /// Receives `count` datagrams on `socket` (5 s each at most): their
    /// sequence numbers and record counts.
    fn receive(socket: &std::net::UdpSocket, count: usize) -> Vec<(u32, usize)> {
        let mut buf = [0u8; 2048];
        (0..count)
            .map(|_| {
                let len = socket.recv(&mut buf).expect("a datagram within 5 s");
                let datagram = wire_format::parse(&buf[..len]).expect("valid");
                (datagram.header.sequence.get(), datagram.records.len())
            })
            .collect()
    }

    fn bind(ip: std::net::IpAddr) -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        socket
    }

    /// The shell sends every datagram to both samplers with the same
    /// sequence number, heartbeats included.
    #[tokio::test]
    async fn both_samplers_get_every_datagram() {
        let samplers: Vec<std::net::UdpSocket> = (0..2).map(|_| bind(Ipv4Addr::LOCALHOST.into())).collect();
        let to = samplers.iter().map(|s| at(s.local_addr().expect("addr"))).collect();
        let mut sender = Sender::new(to, ORIGIN, 1472, 1, 100);
        for _ in 0..3 {
            sender.push_probe(record()).await;
        }
        sender.heartbeat_if_idle(Duration::ZERO).await;
        for sampler in &samplers {
            assert_eq!(receive(sampler, 4), [(0, 1), (1, 1), (2, 1), (3, 0)]);
        }
        let stats = sender.stats();
        assert_eq!(
            (stats.datagrams, stats.records, stats.heartbeats, stats.send_errors),
            (4, 3, 1, 0)
        );
        assert!(sender.reachable());
    }

    /// A sampler the kernel refuses to send to (port 0 on loopback: no
    /// packet leaves) makes the agent not ready, and counts the errors.
    #[tokio::test]
    async fn an_unreachable_sampler_is_noticed() {
        let to = vec![at(SocketAddr::from(([127, 0, 0, 1], 0)))];
        let mut sender = Sender::new(to, ORIGIN, 1472, 1, 100);
        assert!(sender.reachable(), "nothing sent yet");
        sender.push_probe(record()).await;
        assert!(!sender.reachable());
        assert_eq!(sender.stats().send_errors, 1);
    }

    /// A sampler named `localhost:PORT` is looked up with the system
    /// resolver and gets the datagrams on a real socket at the address the
    /// name has (127.0.0.1 here).
    #[tokio::test]
    async fn a_sampler_named_localhost_gets_the_datagrams() {
        let first = tokio::net::lookup_host("localhost:0")
            .await
            .expect("localhost resolves")
            .next()
            .expect("an address");
        assert!(first.ip().is_loopback(), "{first}");
        let sampler = bind(first.ip());
        let port = sampler.local_addr().expect("addr").port();
        let named = SamplerAddress::new(
            format!("localhost:{port}").parse().expect("host:port"),
            system_lookup(),
            Refresh::default(),
        );
        let mut sender = Sender::new(vec![named], ORIGIN, 1472, 1, 100);
        tokio::time::timeout(Duration::from_secs(10), sender.wait_resolved(Duration::from_secs(5)))
            .await
            .expect("bounded by its own deadline");
        assert_eq!(sender.samplers()[0].current(), Some(SocketAddr::new(first.ip(), port)));
        sender.push_probe(record()).await;
        sender.heartbeat_if_idle(Duration::ZERO).await;
        assert_eq!(receive(&sampler, 2), [(0, 1), (1, 0)]);
        let stats = sender.stats();
        assert_eq!((stats.send_errors, stats.lookup_failures), (0, 0));
        assert!(sender.reachable());
    }

    /// A lookup that answers from a list, one answer per call (the last
    /// one again once the list runs out).
    fn answers(list: Vec<Option<SocketAddr>>) -> Lookup {
        let list = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::from(list)));
        std::sync::Arc::new(move |_: &str| {
            let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
            let answer = if list.len() > 1 {
                list.pop_front().flatten()
            } else {
                list.front().copied().flatten()
            };
            Box::pin(async move {
                answer
                    .map(|a| vec![a])
                    .ok_or_else(|| std::io::Error::other("no such name"))
            })
        })
    }

    /// The name first leads where the kernel refuses to send (the sampler
    /// moved); the failed send makes the agent look it up again, and the
    /// next datagram reaches the sampler at its new address. A name that
    /// does not resolve yet is a send error too, and looked up again.
    #[tokio::test]
    async fn a_failed_send_follows_the_sampler_to_its_new_address() {
        let sampler = bind(Ipv4Addr::LOCALHOST.into());
        let moved = sampler.local_addr().expect("addr");
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 0));
        // Looked up only at the start and after a failed send.
        let refresh = Refresh {
            period: Duration::from_secs(3_600),
            timeout: Duration::from_secs(1),
            min_interval: Duration::ZERO,
        };
        let name: configs::HostPort = "sampler.test:5001".parse().expect("host:port");
        let lookup = answers(vec![None, Some(nowhere), Some(moved)]);
        let mut sender = Sender::new(vec![SamplerAddress::new(name, lookup, refresh)], ORIGIN, 1472, 1, 100);
        let wait = |sender: &Sender, what: &'static str, want: Option<SocketAddr>| {
            let sampler = sender.samplers()[0].clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while sampler.current() != want || (want.is_none() && sampler.lookup_failures() == 0) {
                    assert!(Instant::now() < deadline, "not within 5 s: {what}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait(&sender, "the failed first lookup", None).await;
        sender.push_probe(record()).await;
        assert!(!sender.reachable());
        wait(&sender, "the address nobody can send to", Some(nowhere)).await;
        sender.push_probe(record()).await;
        assert!(!sender.reachable());
        wait(&sender, "the sampler's new address", Some(moved)).await;
        sender.push_probe(record()).await;
        assert!(sender.reachable());
        // Sequence numbers 0 and 1 were lost: the sampler sees the gap.
        assert_eq!(receive(&sampler, 1), [(2, 1)]);
        let stats = sender.stats();
        assert_eq!((stats.datagrams, stats.send_errors, stats.lookup_failures), (3, 2, 1));
    }
}
