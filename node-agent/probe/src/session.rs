//! [`ProbeSession`]: one node's probing as a state machine with time passed
//! in — which probes to send now, which reply settles which probe, which
//! probes time out, and the probe records that follow.
//!
//! A driver (the UDP prober, the RDMA UD exchange) calls, with the current
//! time:
//! - [`ProbeSession::schedule`] when [`ProbeSession::poll_timeout`] has
//!   passed: the requests due this tick, under the rate cap, to the slice
//!   of the pinglist the rotation round and cursor choose;
//! - [`ProbeSession::sent`] once the transport says when a request left
//!   (t1), or [`ProbeSession::send_failed`];
//! - [`ProbeSession::on_reply`] for every packet arriving on the probing
//!   side, with the time the transport received it (t4);
//! - [`ProbeSession::expire`] to settle probes past their deadline — after
//!   handing the session every packet the transport already holds, with
//!   the moment the transport was found drained ([`drain_ready`]);
//! - [`ProbeSession::drain_records`] to take the settled probes' records.
//!
//! A probe is settled (one record, exactly once) when its send time, its
//! reply and the responder's send time t3 are all known — t3 comes in the
//! reply over UDP, in a follow-up over RDMA UD ([`ResponderSendTime`]) — or
//! at its deadline: unanswered, it times out; answered but still missing
//! the follow-up, it is recorded without the responder's hold. A reply for
//! a probe that timed out recently is late, any other unmatched reply a
//! duplicate. Deadlines are monotonic ([`Instant`]); the four timestamps
//! in records are wall-clock ns, as the samplers compare them.
//!
//! Whether a reply came in time is the transport's verdict, not the
//! driver's: a reply the kernel (or the NIC) received less than `timeout`
//! after t1 is answered however late the agent reads it, and one received
//! at or after t1 + `timeout` is late however early it is read. The
//! driver's reading time decides nothing, so an agent stalled for longer
//! than the timeout (a busy host, a CPU hog) does not report its own stall
//! as network loss — provided it drains its socket or completion queue
//! before it expires probes, which [`drain_ready`] makes a one-liner. Where
//! the transport gives no receive time, the driver's reading time stands
//! in for it, and the verdict falls back to when the reply was read.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use wire_format::{
    PROBE_FOLLOW_UP, PROBE_REPLY, Probe, ProbeAddr, ProbeOutcome, ProbePacket, ProbeTimestamps, Transport,
};

use crate::pace::Pacer;

/// Recently timed-out probes remembered to tell a late reply from a
/// duplicate; older ones are forgotten, so memory stays bounded.
pub const EXPIRED_MEMORY: usize = 4_096;

/// A probe target as a transport addresses it.
pub trait Peer: Copy {
    /// Its topology node id.
    fn node(&self) -> u32;
    /// Its address, as probe records carry it.
    fn addr(&self) -> ProbeAddr;
    /// Its port (UDP) or queue-pair number (RDMA UD), as records carry it.
    fn port(&self) -> u32;
}

/// Where the responder's send time (t3) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponderSendTime {
    /// In the reply itself: the UDP responder stamps it just before sending.
    InReply,
    /// In a follow-up after the reply (RDMA UD): only the reply's send
    /// completion says when it left, so it comes in a second packet.
    InFollowUp,
}

/// This end of the probes: what its records say about the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// This node's topology id (requests carry it; replies must echo it).
    pub node: u32,
    /// The transport, as records carry it.
    pub transport: Transport,
    /// This end's address (IP for UDP, GID for RDMA UD).
    pub addr: ProbeAddr,
    /// This end's port (UDP) or queue-pair number (RDMA UD).
    pub port: u32,
    /// DSCP the transport sends probes with.
    pub dscp: u8,
    /// Where t3 comes from.
    pub responder_send_time: ResponderSendTime,
}

/// Pacing and timeout settings (from the agent's `probes` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Time between ticks.
    pub interval: Duration,
    /// A probe without its reply after this long is lost.
    pub timeout: Duration,
    /// How often the pinglist's inter-rack peers rotate, seconds.
    pub rotate_secs: u64,
    /// Cap on probes per second, all targets together.
    pub max_probes_per_sec: u32,
}

/// One probe: its target's node and its sequence number to that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey {
    /// The target's node id.
    pub node: u32,
    /// Sequence number, per target, from 1.
    pub seq: u64,
}

/// A request for the driver to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<P> {
    /// Which probe it is (for [`ProbeSession::sent`] and
    /// [`ProbeSession::send_failed`]).
    pub key: ProbeKey,
    /// Where it goes.
    pub peer: P,
    /// The packet.
    pub packet: ProbePacket,
}

/// Counters of a session, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Requests whose send the transport confirmed.
    pub sent: u64,
    /// Probes answered in time.
    pub answered: u64,
    /// Probes without a reply in time (by the transport's receive time).
    pub timed_out: u64,
    /// Replies the transport received at or after their probe's deadline
    /// (t1 + timeout); their probes count as timed out.
    pub late: u64,
    /// Replies for a probe already answered (or never sent).
    pub duplicate: u64,
    /// Packets that were not replies (or follow-ups) to this node's probes.
    pub malformed: u64,
    /// Targets left out of a tick to stay under the rate cap.
    pub rate_limited: u64,
    /// Requests the transport could not send (error records).
    pub failed: u64,
    /// Answered probes whose follow-up (t3) never came: recorded without a
    /// responder delay ([`ResponderSendTime::InFollowUp`] only).
    pub follow_ups_missing: u64,
}

impl SessionStats {
    /// What was counted since `earlier`, a copy of these counters taken
    /// before (for adding to counters shared with another task).
    pub fn since(&self, earlier: &SessionStats) -> SessionStats {
        SessionStats {
            sent: self.sent.saturating_sub(earlier.sent),
            answered: self.answered.saturating_sub(earlier.answered),
            timed_out: self.timed_out.saturating_sub(earlier.timed_out),
            late: self.late.saturating_sub(earlier.late),
            duplicate: self.duplicate.saturating_sub(earlier.duplicate),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
            failed: self.failed.saturating_sub(earlier.failed),
            follow_ups_missing: self.follow_ups_missing.saturating_sub(earlier.follow_ups_missing),
        }
    }
}

/// A probe sent and not settled yet.
#[derive(Debug)]
struct InFlight<P> {
    peer: P,
    /// Wall-clock ns when it was scheduled: t1 until the transport says.
    scheduled_ns: u64,
    t1: Option<u64>,
    /// (t2, t4) once the reply came.
    reply: Option<(u64, u64)>,
    t3: Option<u64>,
    deadline: Instant,
}

/// One node's probing: pacing, sequence numbers, probes in flight and
/// their deadlines, late and duplicate replies, records and counters —
/// for any transport, with no I/O.
#[derive(Debug)]
pub struct ProbeSession<P> {
    local: Local,
    timeout: Duration,
    pacer: Pacer,
    next_seq: HashMap<u32, u64>,
    in_flight: HashMap<ProbeKey, InFlight<P>>,
    /// The in-flight probes by deadline, earliest first.
    deadlines: BTreeSet<(Instant, ProbeKey)>,
    /// Recently timed-out probes, oldest first (at most [`EXPIRED_MEMORY`]).
    expired: VecDeque<ProbeKey>,
    records: Vec<Probe>,
    stats: SessionStats,
}

impl<P: Peer> ProbeSession<P> {
    /// A session for `local`, started at `now` (its first tick is due then).
    pub fn new(local: Local, config: SessionConfig, now: Instant) -> ProbeSession<P> {
        ProbeSession {
            local,
            timeout: config.timeout,
            pacer: Pacer::new(config.interval, config.rotate_secs, config.max_probes_per_sec, now),
            next_seq: HashMap::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeSet::new(),
            expired: VecDeque::new(),
            records: Vec::new(),
            stats: SessionStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Probes in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When the driver should call again: the next tick, or the earliest
    /// deadline if that comes first.
    pub fn poll_timeout(&self) -> Instant {
        let tick = self.pacer.next_tick();
        self.deadlines.first().map_or(tick, |&(deadline, _)| deadline.min(tick))
    }

    /// The requests due at `now` (none between ticks): `pinglist(round)`
    /// gives the targets for the current rotation round, and this tick
    /// probes the next slice of them within the rate cap (the rest are
    /// counted as rate-limited). `wall_ns` is the wall-clock time, written
    /// into the requests and kept as their send time until
    /// [`ProbeSession::sent`] gives the exact one. `pinglist` is only
    /// called when a tick is due.
    pub fn schedule(&mut self, now: Instant, wall_ns: u64, pinglist: impl FnOnce(u64) -> Vec<P>) -> Vec<Request<P>> {
        let Some(round) = self.pacer.tick(now) else {
            return Vec::new();
        };
        let (picked, skipped) = self.pacer.pick(&pinglist(round));
        self.stats.rate_limited += skipped as u64;
        picked.into_iter().map(|peer| self.start(peer, now, wall_ns)).collect()
    }

    fn start(&mut self, peer: P, now: Instant, wall_ns: u64) -> Request<P> {
        let seq = self.next_seq.entry(peer.node()).or_default();
        *seq += 1;
        let key = ProbeKey {
            node: peer.node(),
            seq: *seq,
        };
        let deadline = now + self.timeout;
        self.in_flight.insert(
            key,
            InFlight {
                peer,
                scheduled_ns: wall_ns,
                t1: None,
                reply: None,
                t3: None,
                deadline,
            },
        );
        self.deadlines.insert((deadline, key));
        Request {
            key,
            peer,
            packet: ProbePacket::request(self.local.node, key.node, key.seq, wall_ns),
        }
    }

    /// The request `key` left at `t1_ns` (wall clock: taken just before the
    /// send call, or the NIC's send completion time).
    pub fn sent(&mut self, key: ProbeKey, t1_ns: u64) {
        let Some(probe) = self.in_flight.get_mut(&key) else {
            return;
        };
        if probe.t1.is_none() {
            probe.t1 = Some(t1_ns);
            self.stats.sent += 1;
        }
        self.settle_if_complete(key);
    }

    /// The request `key` could not be sent: an error record with
    /// `error_code` (an errno for IP transports, an `ibv_wc_status` for
    /// RDMA).
    pub fn send_failed(&mut self, key: ProbeKey, error_code: u16) {
        let Some(probe) = self.remove(key) else {
            return;
        };
        self.stats.failed += 1;
        let ts = ProbeTimestamps {
            requester_send_ns: probe.t1.unwrap_or(probe.scheduled_ns),
            ..ProbeTimestamps::default()
        };
        self.push_record(&probe.peer, key.seq, ProbeOutcome::Error, error_code, ts);
    }

    /// A packet arrived on the probing side; the transport received it at
    /// `received_ns` (wall clock: the kernel's or the NIC's receive time,
    /// t4 if it is a reply). Whether a reply is in time is decided by that
    /// time against its probe's t1, not by when the driver reads it: a
    /// reply received before t1 + timeout is answered even when the driver
    /// reads it after the probe's deadline, as long as it does so before
    /// [`ProbeSession::expire`] settles that probe.
    pub fn on_reply(&mut self, packet: &[u8], received_ns: u64) {
        let Ok(packet) = ProbePacket::parse(packet) else {
            self.stats.malformed += 1;
            return;
        };
        let follow_up =
            packet.kind == PROBE_FOLLOW_UP && self.local.responder_send_time == ResponderSendTime::InFollowUp;
        if !(packet.kind == PROBE_REPLY || follow_up) || packet.requester_node.get() != self.local.node {
            self.stats.malformed += 1;
            return;
        }
        let key = ProbeKey {
            node: packet.responder_node.get(),
            seq: packet.seq.get(),
        };
        let in_reply = self.local.responder_send_time == ResponderSendTime::InReply;
        match self.in_flight.get_mut(&key) {
            Some(probe) if follow_up => probe.t3 = Some(packet.responder_send_ns.get()),
            Some(probe) if probe.reply.is_none() => {
                probe.reply = Some((packet.responder_receive_ns.get(), received_ns));
                if in_reply {
                    // 0: a responder that did not say.
                    probe.t3 = Some(packet.responder_send_ns.get()).filter(|&t3| t3 != 0);
                }
            }
            Some(_) => self.stats.duplicate += 1,
            // A follow-up to a probe already settled (recorded without it).
            None if follow_up => {}
            None if self.expired.contains(&key) => self.stats.late += 1,
            None => self.stats.duplicate += 1,
        }
        self.settle_if_complete(key);
    }

    /// Settles the probes whose deadline is at or before `now`: unanswered
    /// ones time out; answered ones still waiting for their send time or
    /// follow-up are recorded with what is known.
    ///
    /// A reply still waiting in the transport when its probe is expired
    /// counts as late, whenever it was received; so a driver passes, as
    /// `now`, the moment it last found the transport empty, after handing
    /// every packet it held to [`ProbeSession::on_reply`] ([`drain_ready`]).
    pub fn expire(&mut self, now: Instant) {
        while self.deadlines.first().is_some_and(|&(deadline, _)| deadline <= now) {
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(probe) = self.in_flight.remove(&key) else {
                continue;
            };
            self.settle(key, &probe);
        }
    }

    /// The records of the probes settled since the last call.
    pub fn drain_records(&mut self) -> Vec<Probe> {
        std::mem::take(&mut self.records)
    }

    fn remove(&mut self, key: ProbeKey) -> Option<InFlight<P>> {
        let probe = self.in_flight.remove(&key)?;
        self.deadlines.remove(&(probe.deadline, key));
        Some(probe)
    }

    fn settle_if_complete(&mut self, key: ProbeKey) {
        let needs_t3 = self.local.responder_send_time == ResponderSendTime::InFollowUp;
        let complete = self
            .in_flight
            .get(&key)
            .is_some_and(|p| p.t1.is_some() && p.reply.is_some() && (p.t3.is_some() || !needs_t3));
        if complete && let Some(probe) = self.remove(key) {
            self.settle(key, &probe);
        }
    }

    /// The record of a probe leaving flight: answered if its reply was
    /// received before t1 + timeout (by the transport's clock), timed out
    /// otherwise — and late too if a reply came after all.
    fn settle(&mut self, key: ProbeKey, probe: &InFlight<P>) {
        let t1 = probe.t1.unwrap_or(probe.scheduled_ns);
        let timeout_ns = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        match probe.reply {
            // A receive time before t1 (the wall clock stepped back) is in
            // time: only a reply known to be past the deadline is late.
            Some((t2, t4)) if t4.saturating_sub(t1) < timeout_ns => self.answer(key, probe, t1, t2, t4),
            Some(_) => {
                self.stats.late += 1;
                self.time_out(key, probe, t1);
            }
            None => self.time_out(key, probe, t1),
        }
    }

    fn time_out(&mut self, key: ProbeKey, probe: &InFlight<P>, t1: u64) {
        self.stats.timed_out += 1;
        let ts = ProbeTimestamps {
            requester_send_ns: t1,
            ..ProbeTimestamps::default()
        };
        self.push_record(&probe.peer, key.seq, ProbeOutcome::Timeout, 0, ts);
        self.expired.push_back(key);
        if self.expired.len() > EXPIRED_MEMORY {
            self.expired.pop_front();
        }
    }

    fn answer(&mut self, key: ProbeKey, probe: &InFlight<P>, t1: u64, t2: u64, t4: u64) {
        let ts = ProbeTimestamps {
            requester_send_ns: t1,
            responder_receive_ns: t2,
            // Without t3 the responder's hold is unknown (0), so the
            // record's network RTT is the whole round trip. A t3 before t2
            // (the responder's clock stepped back, or NIC calibration
            // drift) is a hold of zero.
            responder_send_ns: probe.t3.map_or(0, |t3| t3.max(t2)),
            requester_receive_ns: t4,
        };
        self.stats.answered += 1;
        if probe.t3.is_none() && self.local.responder_send_time == ResponderSendTime::InFollowUp {
            self.stats.follow_ups_missing += 1;
        }
        self.push_record(&probe.peer, key.seq, ProbeOutcome::Ok, 0, ts);
    }

    fn push_record(&mut self, peer: &P, seq: u64, outcome: ProbeOutcome, error_code: u16, ts: ProbeTimestamps) {
        self.records.push(Probe {
            transport: self.local.transport,
            src: self.local.addr,
            dst: peer.addr(),
            src_port: self.local.port,
            dst_port: peer.port(),
            dst_node: peer.node(),
            dscp: self.local.dscp,
            seq,
            outcome,
            error_code,
            timestamps: ts,
        });
    }
}

/// Reads what a transport already holds before the driver expires probes:
/// calls `read_one` (which hands one packet, or one batch of completions,
/// to the session and says whether there was any) until it finds nothing
/// or has read `max_reads` times, and returns the moment the transport was
/// found empty — `clock` read just before that last read. Everything the
/// transport received before that moment has been handed over, so it is
/// the `now` for [`ProbeSession::expire`]: no reply that arrived in time
/// is left waiting while its probe is expired, however long the driver was
/// stalled before it got here.
///
/// A transport still not empty after `max_reads` (a flood of packets)
/// gives the moment before the first read instead, so expiry is never put
/// off for good; a reply queued behind such a flood may then count as
/// late.
pub fn drain_ready(
    max_reads: usize,
    mut clock: impl FnMut() -> Instant,
    mut read_one: impl FnMut() -> bool,
) -> Instant {
    let started = clock();
    let mut before = started;
    for _ in 0..max_reads {
        if !read_one() {
            return before;
        }
        before = clock();
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;
    use wire_format::{PROBE_REQUEST, Record};
    use zerocopy::IntoBytes;

    const MS: Duration = Duration::from_millis(1);
    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A target reached at 10.0.0.<node>:7788.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Node(u32);

    impl Peer for Node {
        fn node(&self) -> u32 {
            self.0
        }
        fn addr(&self) -> ProbeAddr {
            ProbeAddr::Ip(Ipv4Addr::new(10, 0, 0, self.0 as u8).into())
        }
        fn port(&self) -> u32 {
            7788
        }
    }

    fn local(responder_send_time: ResponderSendTime) -> Local {
        Local {
            node: 1,
            transport: Transport::Udp,
            addr: ProbeAddr::Ip(Ipv4Addr::new(10, 0, 0, 1).into()),
            port: 40_000,
            dscp: 46,
            responder_send_time,
        }
    }

    fn config(interval_ms: u64, max_probes_per_sec: u32) -> SessionConfig {
        SessionConfig {
            interval: Duration::from_millis(interval_ms),
            timeout: TIMEOUT,
            rotate_secs: 60,
            max_probes_per_sec,
        }
    }

    /// A UDP-style session started at `t0`: a tick every 100 ms, 100 probes
    /// a tick at most.
    fn session(t0: Instant) -> ProbeSession<Node> {
        ProbeSession::new(local(ResponderSendTime::InReply), config(100, 1_000), t0)
    }

    /// The reply a responder would send, as bytes.
    fn reply(request: &Request<Node>, t2: u64, t3: u64) -> Vec<u8> {
        request.packet.reply(t2, t3).as_bytes().to_vec()
    }

    /// Schedules one probe to `node` at `now` (a tick must be due), sent at `t1`.
    fn probe_one(s: &mut ProbeSession<Node>, now: Instant, node: u32, t1: u64) -> Request<Node> {
        let requests = s.schedule(now, t1 - 10, |_| vec![Node(node)]);
        assert_eq!(requests.len(), 1, "a tick due at {now:?}");
        s.sent(requests[0].key, t1);
        requests[0]
    }

    #[test]
    fn a_reply_in_time_is_a_record_with_all_four_timestamps() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let request = probe_one(&mut s, t0, 2, 1_000);
        assert_eq!(request.packet.kind, PROBE_REQUEST);
        assert_eq!(
            (request.packet.requester_node.get(), request.packet.responder_node.get()),
            (1, 2)
        );
        assert!(s.drain_records().is_empty());
        s.on_reply(&reply(&request, 9_000, 9_500), 5_000);
        let records = s.drain_records();
        assert_eq!(records.len(), 1);
        let probe = records[0];
        assert_eq!((probe.outcome, probe.seq, probe.dst_node), (ProbeOutcome::Ok, 1, 2));
        assert_eq!(
            probe.timestamps,
            ProbeTimestamps {
                requester_send_ns: 1_000,
                responder_receive_ns: 9_000,
                responder_send_ns: 9_500,
                requester_receive_ns: 5_000,
            }
        );
        assert_eq!((probe.src_port, probe.dst_port, probe.dscp), (40_000, 7788, 46));
        let record = probe.to_record();
        record.validate().expect("a valid wire record");
        assert_eq!(record.network_rtt_ns(), Some(3_500));
        assert_eq!(record.responder_delay_ns(), Some(500));
        assert_eq!((s.stats().sent, s.stats().answered, s.in_flight()), (1, 1, 0));
    }

    #[test]
    fn an_unanswered_probe_times_out_at_its_deadline_not_before() {
        let t0 = Instant::now();
        let mut s = session(t0);
        probe_one(&mut s, t0, 2, 1_000);
        // The next tick (100 ms) comes before the deadline (300 ms).
        assert_eq!(s.poll_timeout(), t0 + 100 * MS);
        assert!(s.schedule(t0 + 100 * MS, 2_000, |_| vec![]).is_empty());
        assert!(s.schedule(t0 + 200 * MS, 2_000, |_| vec![]).is_empty());
        assert_eq!(s.poll_timeout(), t0 + TIMEOUT);
        s.expire(t0 + TIMEOUT - Duration::from_nanos(1));
        assert!(s.drain_records().is_empty());
        s.expire(t0 + TIMEOUT);
        let records = s.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, ProbeOutcome::Timeout);
        assert_eq!(records[0].timestamps.requester_send_ns, 1_000);
        assert_eq!(records[0].timestamps.requester_receive_ns, 0);
        records[0].to_record().validate().expect("valid");
        assert_eq!((s.stats().timed_out, s.in_flight()), (1, 0));
        assert_eq!(s.poll_timeout(), t0 + 300 * MS, "the next tick");
    }

    /// t1 of the probes in the kernel-clock tests: wall-clock ns.
    const T1: u64 = 1_700_000_000_000_000_000;

    fn ns(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap()
    }

    #[test]
    fn a_reply_received_after_the_deadline_is_late_whatever_the_call_order() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let request = probe_one(&mut s, t0, 2, T1);
        // Read at once, long before the probe's deadline on the agent's
        // clock, but the kernel received it at t1 + timeout: late.
        s.on_reply(&reply(&request, 9_000, 9_500), T1 + ns(TIMEOUT));
        let records = s.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, ProbeOutcome::Timeout);
        assert_eq!(records[0].timestamps.requester_send_ns, T1);
        records[0].to_record().validate().expect("valid");
        let stats = s.stats();
        assert_eq!(
            (stats.timed_out, stats.late, stats.answered, stats.duplicate),
            (1, 1, 0, 0)
        );
        // Once more: still late, and no second record.
        s.on_reply(&reply(&request, 9_000, 9_500), T1 + ns(TIMEOUT));
        assert_eq!(s.stats().late, 2);
        assert!(s.drain_records().is_empty());
        // Expired first, then read: late as well.
        let request = probe_one(&mut s, t0 + 100 * MS, 3, T1);
        s.expire(t0 + 100 * MS + TIMEOUT);
        s.on_reply(&reply(&request, 9_000, 9_500), T1 + ns(MS));
        assert_eq!(s.drain_records()[0].outcome, ProbeOutcome::Timeout);
        assert_eq!((s.stats().timed_out, s.stats().late), (2, 3));
    }

    /// An agent stalled for 3 s (a busy host) reads replies the kernel
    /// received long before: the received time decides, not the reading
    /// time, so the stall is not reported as network loss.
    #[test]
    fn a_reply_read_3_s_late_but_received_in_time_is_answered() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let requests = s.schedule(t0, T1 - 10, |_| vec![Node(2), Node(3), Node(4)]);
        for r in &requests {
            s.sent(r.key, T1);
        }
        // The agent wakes 3 s later and drains its socket before expiring:
        // the kernel received node 2's reply 1 ms after t1, node 3's 1 ns
        // before its deadline, node 4's at its deadline.
        let read_at = t0 + Duration::from_secs(3);
        s.on_reply(&reply(&requests[0], 9_000, 9_500), T1 + ns(MS));
        s.on_reply(&reply(&requests[1], 9_000, 9_500), T1 + ns(TIMEOUT) - 1);
        s.on_reply(&reply(&requests[2], 9_000, 9_500), T1 + ns(TIMEOUT));
        s.expire(read_at);
        let mut records = s.drain_records();
        records.sort_by_key(|r| r.dst_node);
        let outcomes: Vec<(u32, ProbeOutcome)> = records.iter().map(|r| (r.dst_node, r.outcome)).collect();
        assert_eq!(
            outcomes,
            [(2, ProbeOutcome::Ok), (3, ProbeOutcome::Ok), (4, ProbeOutcome::Timeout)]
        );
        // The network RTT is the kernel's: 1 ms less the responder's hold.
        assert_eq!(records[0].to_record().network_rtt_ns(), Some(ns(MS) - 500));
        assert_eq!(records[0].timestamps.requester_receive_ns, T1 + ns(MS));
        let stats = s.stats();
        assert_eq!(
            (stats.answered, stats.timed_out, stats.late, s.in_flight()),
            (2, 1, 1, 0)
        );
    }

    /// Over RDMA UD the reply may come before the send completion gives
    /// t1: the verdict waits for it, and is the NIC clock's too.
    #[test]
    fn with_follow_ups_lateness_is_judged_against_the_send_completion() {
        let t0 = Instant::now();
        let mut s: ProbeSession<Node> = ProbeSession::new(local(ResponderSendTime::InFollowUp), config(100, 1_000), t0);
        let requests = s.schedule(t0, T1 - 1_000, |_| vec![Node(2), Node(3)]);
        let (a, b) = (requests[0], requests[1]);
        for (r, received) in [(a, T1 + ns(TIMEOUT) - 1), (b, T1 + ns(TIMEOUT))] {
            let reply = r.packet.reply(9_000, 0);
            s.on_reply(reply.as_bytes(), received);
            s.on_reply(reply.follow_up(9_100).as_bytes(), received + 5);
        }
        assert!(s.drain_records().is_empty(), "t1 not known yet");
        s.sent(a.key, T1);
        s.sent(b.key, T1);
        let outcomes: Vec<ProbeOutcome> = s.drain_records().iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [ProbeOutcome::Ok, ProbeOutcome::Timeout]);
        assert_eq!((s.stats().answered, s.stats().late, s.stats().timed_out), (1, 1, 1));
    }

    #[test]
    fn the_transport_is_drained_up_to_the_read_that_found_it_empty() {
        // A virtual clock that moves 1 ms per reading.
        let t0 = Instant::now();
        let mut ticks = 0u32;
        let mut clock = || {
            ticks += 1;
            t0 + ticks * MS
        };
        let mut queued = 3;
        let mut read = 0;
        let drained = drain_ready(10, &mut clock, || {
            read += 1;
            queued > 0 && {
                queued -= 1;
                true
            }
        });
        // Readings: 1 ms before the first read, 2, 3, 4 ms before the
        // second, third and fourth; the fourth found nothing.
        assert_eq!((read, drained), (4, t0 + 4 * MS));
        // Still not empty after the bound: the moment before the first read.
        let mut read = 0;
        let flooded = drain_ready(5, &mut clock, || {
            read += 1;
            true
        });
        assert_eq!((read, flooded), (5, t0 + 5 * MS));
        // Nothing to read: the moment of the only read.
        assert_eq!(drain_ready(5, &mut clock, || false), t0 + 11 * MS);
    }

    #[test]
    fn late_replies_are_told_from_duplicates_for_the_latest_timeouts_only() {
        let t0 = Instant::now();
        let targets: Vec<Node> = (2..=101).map(Node).collect();
        let mut s = session(t0);
        let mut requests = Vec::new();
        let mut now = t0;
        // 100 probes a tick until more than EXPIRED_MEMORY have timed out.
        while requests.len() <= EXPIRED_MEMORY {
            for r in s.schedule(now, 1_000, |_| targets.clone()) {
                s.sent(r.key, 1_000);
                requests.push(r);
            }
            now += 100 * MS;
        }
        s.expire(now + TIMEOUT);
        assert_eq!(s.stats().timed_out as usize, requests.len());
        let oldest = &requests[0];
        let newest = &requests[requests.len() - 1];
        s.on_reply(&reply(newest, 1, 2), 3);
        s.on_reply(&reply(oldest, 1, 2), 3);
        assert_eq!((s.stats().late, s.stats().duplicate), (1, 1));
    }

    #[test]
    fn a_second_reply_to_one_probe_is_a_duplicate() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let request = probe_one(&mut s, t0, 2, 1_000);
        s.on_reply(&reply(&request, 9_000, 9_500), 5_000);
        s.on_reply(&reply(&request, 9_000, 9_500), 5_001);
        assert_eq!((s.stats().answered, s.stats().duplicate), (1, 1));
        assert_eq!(s.drain_records().len(), 1);
        // A reply to a probe never sent (seq 7) is a duplicate too, not late.
        let mut stray = request.packet.reply(1, 2);
        stray.seq = 7.into();
        s.on_reply(stray.as_bytes(), 5_002);
        assert_eq!((s.stats().duplicate, s.stats().late), (2, 0));
    }

    #[test]
    fn packets_that_are_not_replies_to_this_node_are_malformed() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let request = probe_one(&mut s, t0, 2, 1_000);
        s.on_reply(b"not a probe", 1);
        // A request arriving at the prober.
        s.on_reply(request.packet.as_bytes(), 1);
        // A reply to someone else's probe.
        let mut other = request.packet.reply(1, 2);
        other.requester_node = 9.into();
        s.on_reply(other.as_bytes(), 1);
        // A follow-up where t3 comes in the reply.
        s.on_reply(request.packet.reply(1, 2).follow_up(3).as_bytes(), 1);
        assert_eq!(s.stats().malformed, 4);
        assert_eq!((s.stats().answered, s.in_flight()), (0, 1));
    }

    #[test]
    fn a_failed_send_is_an_error_record_and_not_sent() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let requests = s.schedule(t0, 1_000, |_| vec![Node(2), Node(3)]);
        s.sent(requests[0].key, 1_010);
        s.send_failed(requests[1].key, 101);
        let records = s.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].outcome, records[0].error_code), (ProbeOutcome::Error, 101));
        assert_eq!(
            (records[0].dst_node, records[0].timestamps.requester_send_ns),
            (3, 1_000)
        );
        records[0].to_record().validate().expect("valid");
        assert_eq!((s.stats().sent, s.stats().failed, s.in_flight()), (1, 1, 1));
        // Its deadline went with it: nothing more at expiry than the other.
        s.expire(t0 + TIMEOUT);
        assert_eq!(s.drain_records().len(), 1);
        assert_eq!(s.stats().timed_out, 1);
    }

    #[test]
    fn with_follow_ups_a_probe_settles_once_send_time_reply_and_t3_are_known() {
        let t0 = Instant::now();
        let mut s: ProbeSession<Node> = ProbeSession::new(local(ResponderSendTime::InFollowUp), config(100, 1_000), t0);
        let requests = s.schedule(t0, 100, |_| vec![Node(2), Node(3)]);
        let (a, b) = (requests[0], requests[1]);
        // a: follow-up first, then the reply, then the send completion.
        let a_reply = a.packet.reply(9_000, 0);
        s.on_reply(a_reply.follow_up(9_040).as_bytes(), 0);
        s.on_reply(a_reply.as_bytes(), 1_200);
        assert!(s.drain_records().is_empty(), "t1 not known yet");
        s.sent(a.key, 110);
        let records = s.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].to_record().network_rtt_ns(), Some(1_050));
        assert_eq!(records[0].to_record().responder_delay_ns(), Some(40));
        // b: sent and answered, the follow-up lost: recorded at the deadline
        // with the whole round trip.
        s.sent(b.key, 120);
        s.on_reply(b.packet.reply(9_000, 0).as_bytes(), 1_120);
        assert!(s.drain_records().is_empty());
        s.expire(t0 + TIMEOUT);
        let records = s.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, ProbeOutcome::Ok);
        assert_eq!(records[0].to_record().responder_delay_ns(), None);
        assert_eq!(records[0].to_record().network_rtt_ns(), Some(1_000));
        let stats = s.stats();
        assert_eq!((stats.answered, stats.follow_ups_missing, stats.timed_out), (2, 1, 0));
        // Its follow-up, coming after all, changes nothing.
        s.on_reply(b.packet.reply(9_000, 0).follow_up(9_100).as_bytes(), 0);
        assert_eq!(s.stats(), stats);
    }

    #[test]
    fn the_rate_cap_holds_on_a_virtual_clock() {
        let t0 = Instant::now();
        // 85 targets, 50 probes/s, a tick a second, the driver calling every ms.
        let targets: Vec<Node> = (2..=86).map(Node).collect();
        let mut s: ProbeSession<Node> = ProbeSession::new(local(ResponderSendTime::InReply), config(1_000, 50), t0);
        let mut per_second = vec![0usize; 10];
        for ms in 0..10_000u32 {
            let now = t0 + ms * MS;
            per_second[(ms / 1_000) as usize] += s.schedule(now, 1, |_| targets.clone()).len();
            s.expire(now);
        }
        assert_eq!(per_second, vec![50; 10]);
        assert_eq!(s.stats().rate_limited, 10 * 35);
        // A fine-grained tick keeps the same cap: 20/s in ticks of 100 ms.
        let mut s: ProbeSession<Node> = ProbeSession::new(local(ResponderSendTime::InReply), config(100, 20), t0);
        let sent: usize = (0..10_000u32)
            .map(|ms| s.schedule(t0 + ms * MS, 1, |_| targets.clone()).len())
            .sum();
        assert_eq!(sent, 200);
        // A driver stalled for five seconds gets one tick's budget, not a burst.
        assert_eq!(
            s.schedule(t0 + 15 * Duration::from_secs(1), 1, |_| targets.clone())
                .len(),
            2
        );
        assert!(
            s.schedule(t0 + 15 * Duration::from_secs(1), 1, |_| targets.clone())
                .is_empty()
        );
    }

    #[test]
    fn rounds_rotate_the_pinglist_and_sequence_numbers_count_per_target() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut rounds = Vec::new();
        for secs in [0, 59, 60, 61, 125] {
            let now = t0 + Duration::from_secs(secs);
            let requests = s.schedule(now, 1, |round| {
                rounds.push(round);
                vec![Node(2 + round as u32), Node(9)]
            });
            let nodes_seqs: Vec<(u32, u64)> = requests.iter().map(|r| (r.key.node, r.packet.seq.get())).collect();
            assert_eq!(nodes_seqs[0].0, 2 + rounds[rounds.len() - 1] as u32);
            assert_eq!(requests[1].key.node, 9);
        }
        assert_eq!(rounds, [0, 0, 1, 1, 2]);
        // Node 9 was probed every tick: its sequence numbers ran 1..=5.
        assert_eq!(s.next_seq[&9], 5);
        assert_eq!((s.next_seq[&2], s.next_seq[&3], s.next_seq[&4]), (2, 2, 1));
        // Between ticks the pinglist is not even asked for.
        assert!(
            s.schedule(t0 + Duration::from_secs(125), 1, |_| unreachable!())
                .is_empty()
        );
    }

    /// One step of a driver, for the property test.
    #[derive(Debug, Clone)]
    enum Step {
        /// The clock moves on this many ms.
        Wait(u16),
        /// Schedule what is due, to this many targets.
        Schedule(u8),
        /// The transport confirms the i-th (mod) request sent.
        Sent(usize),
        /// The i-th (mod) request fails to send.
        Fail(usize),
        /// A reply to the i-th (mod) request arrives, received in time or
        /// (true) after its deadline by the transport's clock.
        Reply(usize, bool),
        /// Deadlines are checked.
        Expire,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u16..400).prop_map(Step::Wait),
            (0u8..8).prop_map(Step::Schedule),
            any::<usize>().prop_map(Step::Sent),
            any::<usize>().prop_map(Step::Fail),
            (any::<usize>(), any::<bool>()).prop_map(|(i, late)| Step::Reply(i, late)),
            Just(Step::Expire),
        ]
    }

    proptest! {
        /// Whatever happens in whatever order, every scheduled probe is
        /// settled exactly once — answered, timed out or failed — and the
        /// counters add up to the records.
        #[test]
        fn every_probe_is_recorded_exactly_once(steps in proptest::collection::vec(step(), 0..200)) {
            let t0 = Instant::now();
            let mut s: ProbeSession<Node> = ProbeSession::new(local(ResponderSendTime::InReply), config(50, 100), t0);
            let mut now = t0;
            let mut requests: Vec<Request<Node>> = Vec::new();
            let mut records = Vec::new();
            for step in steps {
                match step {
                    Step::Wait(ms) => now += u32::from(ms) * MS,
                    Step::Schedule(n) => {
                        requests.extend(s.schedule(now, 1, |_| (2..2 + u32::from(n)).map(Node).collect()));
                    }
                    Step::Sent(i) if !requests.is_empty() => s.sent(requests[i % requests.len()].key, 2),
                    Step::Fail(i) if !requests.is_empty() => s.send_failed(requests[i % requests.len()].key, 1),
                    Step::Reply(i, late) if !requests.is_empty() => {
                        let received = if late { 2 + ns(TIMEOUT) } else { 5 };
                        s.on_reply(&reply(&requests[i % requests.len()], 3, 4), received);
                    }
                    Step::Expire => s.expire(now),
                    Step::Sent(_) | Step::Fail(_) | Step::Reply(..) => {}
                }
                records.extend(s.drain_records());
            }
            s.expire(now + TIMEOUT);
            records.extend(s.drain_records());
            prop_assert_eq!(s.in_flight(), 0);
            let mut keys: Vec<(u32, u64)> = records.iter().map(|r| (r.dst_node, r.seq)).collect();
            keys.sort_unstable();
            let mut scheduled: Vec<(u32, u64)> = requests.iter().map(|r| (r.key.node, r.key.seq)).collect();
            scheduled.sort_unstable();
            prop_assert_eq!(keys, scheduled);
            let stats = s.stats();
            prop_assert_eq!((stats.answered + stats.timed_out + stats.failed) as usize, records.len());
            prop_assert!(stats.sent as usize <= requests.len());
            for record in &records {
                prop_assert!(record.to_record().validate().is_ok());
                // Only replies the transport received in time answer.
                let ts = record.timestamps;
                prop_assert!(
                    record.outcome != ProbeOutcome::Ok
                        || ts.requester_receive_ns - ts.requester_send_ns < ns(TIMEOUT)
                );
            }
        }
    }
}
