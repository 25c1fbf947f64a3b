//! The RDMA UD probe exchange, free of any device: what to post, and which
//! probe records follow from the completions the NIC reports.
//!
//! A requester posts a [`ProbePacket`] request; its send completion time is
//! t1. The responder's receive completion time is t2; it replies at once,
//! and when the reply's own send completion arrives (t3) it sends a
//! follow-up carrying t3, since the reply left before the NIC could say
//! when. The requester's receive completion of the reply is t4. Network
//! RTT is (t4 − t1) − (t3 − t2), each difference on one host's clock
//! (R-Pingmesh's split of network from responder time).
//!
//! The requester's side — pacing, sequence numbers, probes in flight,
//! timeouts, late and duplicate replies, records — is the shared
//! [`ProbeSession`] (node-agent-probe), the same engine the UDP prober
//! drives, set to expect t3 in a follow-up. This layer adds only what RDMA
//! needs: work-request ids (a completion names its work request, not its
//! probe), the responder's reply and follow-up, and forgetting sends whose
//! completion never comes.
//!
//! Record timestamps are wall-clock ns: the driver converts the NIC's
//! completion timestamps with a [`Calibration`](crate::Calibration), or
//! stamps completions itself on a device without them. Deadlines and
//! pacing run on the monotonic `now` the driver passes in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use node_agent_probe::{Local, Peer, ProbeKey, ProbeSession, ResponderSendTime, SessionConfig, SessionStats};
use wire_format::{Gid, PROBE_REQUEST, Probe, ProbeAddr, ProbePacket, Transport};

/// Where a UD probe queue pair is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Topology node id of its host.
    pub node: u32,
    /// GID of the port.
    pub gid: [u8; 16],
    /// Queue-pair number.
    pub qpn: u32,
    /// Q_Key the QP accepts.
    pub qkey: u32,
}

impl Peer for Endpoint {
    fn node(&self) -> u32 {
        self.node
    }

    fn addr(&self) -> ProbeAddr {
        ProbeAddr::Gid(Gid(self.gid))
    }

    fn port(&self) -> u32 {
        self.qpn
    }
}

/// A packet for the driver to post as a signalled UD send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// Work-request id: hand it back with the send's completion.
    pub wr_id: u64,
    /// Destination.
    pub to: Endpoint,
    /// The packet.
    pub packet: ProbePacket,
}

/// Counters of the exchange, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// The requester's side: the probe session's counters.
    pub probes: SessionStats,
    /// Requests this node answered (reply sent).
    pub responded: u64,
    /// Sends the NIC completed with an error (requests, replies and
    /// follow-ups).
    pub send_errors: u64,
}

/// What a posted send was for.
#[derive(Debug)]
enum Purpose {
    Request(ProbeKey),
    Reply { to: Endpoint, reply: ProbePacket },
    FollowUp,
}

#[derive(Debug)]
struct Posted {
    purpose: Purpose,
    posted_at: Instant,
}

/// One host's side of RDMA UD probing: requester and responder.
#[derive(Debug)]
pub struct Exchange {
    me: Endpoint,
    session: ProbeSession<Endpoint>,
    timeout: Duration,
    next_wr_id: u64,
    posted: HashMap<u64, Posted>,
    responded: u64,
    send_errors: u64,
}

impl Exchange {
    /// The exchange of the QP at `me`, probing with `dscp` (for records),
    /// paced and timed out by `config`, started at `now`.
    pub fn new(me: Endpoint, dscp: u8, config: SessionConfig, now: Instant) -> Exchange {
        let local = Local {
            node: me.node,
            transport: Transport::RdmaUd,
            addr: me.addr(),
            port: me.qpn,
            dscp,
            responder_send_time: ResponderSendTime::InFollowUp,
        };
        Exchange {
            me,
            session: ProbeSession::new(local, config, now),
            timeout: config.timeout,
            next_wr_id: 1,
            posted: HashMap::new(),
            responded: 0,
            send_errors: 0,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ExchangeStats {
        ExchangeStats {
            probes: self.session.stats(),
            responded: self.responded,
            send_errors: self.send_errors,
        }
    }

    /// Probes in flight (for bounding the driver's memory).
    pub fn in_flight(&self) -> usize {
        self.session.in_flight()
    }

    /// When the driver should call [`Exchange::schedule`] or
    /// [`Exchange::expire`] next.
    pub fn poll_timeout(&self) -> Instant {
        self.session.poll_timeout()
    }

    fn post(&mut self, to: Endpoint, packet: ProbePacket, purpose: Purpose, now: Instant) -> Outgoing {
        let wr_id = self.next_wr_id;
        self.next_wr_id += 1;
        self.posted.insert(
            wr_id,
            Posted {
                purpose,
                posted_at: now,
            },
        );
        Outgoing { wr_id, to, packet }
    }

    /// The requests to post at `now` (none between ticks), to the slice of
    /// `pinglist(round)` — the peers whose endpoint is known — that this
    /// tick's budget allows. `wall_ns` is the wall-clock time: a request's
    /// send time until its completion says.
    pub fn schedule(
        &mut self,
        now: Instant,
        wall_ns: u64,
        pinglist: impl FnOnce(u64) -> Vec<Endpoint>,
    ) -> Vec<Outgoing> {
        let requests = self.session.schedule(now, wall_ns, pinglist);
        requests
            .into_iter()
            .map(|r| self.post(r.peer, r.packet, Purpose::Request(r.key), now))
            .collect()
    }

    /// The send `wr_id` completed at `at_ns` with `status` (0 = success,
    /// else an `ibv_wc_status`; the driver passes `u32::MAX` for a post
    /// that failed); returns the follow-up to post, if any.
    pub fn sent(&mut self, now: Instant, wr_id: u64, status: u32, at_ns: u64) -> Option<Outgoing> {
        let posted = self.posted.remove(&wr_id)?;
        if status != 0 {
            self.send_errors += 1;
        }
        match posted.purpose {
            Purpose::Request(key) if status == 0 => {
                self.session.sent(key, at_ns);
                None
            }
            Purpose::Request(key) => {
                self.session.send_failed(key, u16::try_from(status).unwrap_or(u16::MAX));
                None
            }
            Purpose::Reply { to, reply } if status == 0 => {
                self.responded += 1;
                let follow_up = reply.follow_up(at_ns);
                Some(self.post(to, follow_up, Purpose::FollowUp, now))
            }
            Purpose::Reply { .. } | Purpose::FollowUp => None,
        }
    }

    /// A packet of `payload` bytes arrived at `at_ns` (its receive
    /// completion time; seen by the driver at `now`) from the QP `from_qpn`
    /// at `from_gid`; returns the reply to post when it is a request for
    /// this node. Anything else goes to the session as a reply, follow-up
    /// or malformed packet; a reply is in time if `at_ns` is less than the
    /// timeout after its request's send completion, however late the
    /// driver polls it (before [`Exchange::expire`] settles its probe).
    pub fn received(
        &mut self,
        now: Instant,
        from_gid: [u8; 16],
        from_qpn: u32,
        payload: &[u8],
        at_ns: u64,
    ) -> Option<Outgoing> {
        if let Ok(request) = ProbePacket::parse(payload)
            && request.kind == PROBE_REQUEST
            && request.responder_node.get() == self.me.node
        {
            let to = Endpoint {
                node: request.requester_node.get(),
                gid: from_gid,
                qpn: from_qpn,
                qkey: self.me.qkey,
            };
            let reply = request.reply(at_ns, 0);
            return Some(self.post(to, reply, Purpose::Reply { to, reply }, now));
        }
        self.session.on_reply(payload, at_ns);
        None
    }

    /// Settles probes past their deadline at `now` (unanswered ones time
    /// out; answered ones still missing their follow-up are recorded
    /// without it), and forgets sends whose completion never came. `now`
    /// is the moment the driver last found the completion queue empty
    /// (node_agent_probe::drain_ready), so that no completion waiting there
    /// is judged by the driver's stall rather than its timestamp.
    pub fn expire(&mut self, now: Instant) {
        self.session.expire(now);
        let keep = self.timeout.saturating_mul(4);
        self.posted
            .retain(|_, posted| now.saturating_duration_since(posted.posted_at) <= keep);
    }

    /// The probe records settled since the last call.
    pub fn drain_records(&mut self) -> Vec<Probe> {
        self.session.drain_records()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_format::{ProbeOutcome, Record};
    use zerocopy::IntoBytes;

    const MS: Duration = Duration::from_millis(1);
    const TIMEOUT: Duration = Duration::from_secs(1);
    /// A tick every 10 ms.
    const TICK: Duration = Duration::from_millis(10);

    fn endpoint(node: u32) -> Endpoint {
        let mut gid = [0u8; 16];
        gid[0] = 0xfd;
        gid[15] = node as u8;
        Endpoint {
            node,
            gid,
            qpn: 0x100 + node,
            qkey: 0x464d_5052,
        }
    }

    fn exchange(node: u32, dscp: u8, now: Instant) -> Exchange {
        let config = SessionConfig {
            interval: TICK,
            timeout: TIMEOUT,
            rotate_secs: 60,
            max_probes_per_sec: 1_000,
        };
        Exchange::new(endpoint(node), dscp, config, now)
    }

    /// A probe from `x` to `to`, posted at `now` (a tick must be due) and
    /// wall-clock `wall_ns`.
    fn probe(x: &mut Exchange, to: Endpoint, now: Instant, wall_ns: u64) -> Outgoing {
        let out = x.schedule(now, wall_ns, |_| vec![to]);
        assert_eq!(out.len(), 1, "a tick due");
        out[0]
    }

    /// Two exchanges wired back to back: what one posts the other receives,
    /// with the times given.
    struct Pair {
        t0: Instant,
        a: Exchange,
        b: Exchange,
    }

    impl Pair {
        fn new() -> Pair {
            let t0 = Instant::now();
            Pair {
                t0,
                a: exchange(1, 46, t0),
                b: exchange(2, 46, t0),
            }
        }

        /// A full exchange: t1 (A's send completion), t2 (B's receive),
        /// t3 (B's reply send completion), t4 (A's receive).
        fn run(&mut self, t: [u64; 4], deliver_follow_up: bool) -> Vec<Probe> {
            let now = self.t0 + MS;
            let request = probe(&mut self.a, endpoint(2), now, t[0] - 500);
            assert!(self.a.sent(now, request.wr_id, 0, t[0]).is_none());
            let reply = self
                .b
                .received(now, endpoint(1).gid, endpoint(1).qpn, request.packet.as_bytes(), t[1])
                .expect("a reply");
            assert_eq!(reply.to, endpoint(1));
            assert!(
                self.a
                    .received(now, endpoint(2).gid, endpoint(2).qpn, reply.packet.as_bytes(), t[3])
                    .is_none()
            );
            let follow_up = self.b.sent(now, reply.wr_id, 0, t[2]).expect("a follow-up");
            assert!(self.b.sent(now, follow_up.wr_id, 0, t[2] + 100).is_none());
            if deliver_follow_up {
                self.a.received(
                    now,
                    endpoint(2).gid,
                    endpoint(2).qpn,
                    follow_up.packet.as_bytes(),
                    t[3] + 200,
                );
            }
            self.a.drain_records()
        }
    }

    #[test]
    fn a_full_exchange_separates_network_time_from_the_responders_hold() {
        let mut pair = Pair::new();
        let records = pair.run([1_000_000, 9_000_000_000, 9_000_015_000, 1_040_000], true);
        assert_eq!(records.len(), 1);
        let record = records[0].to_record();
        record.validate().expect("a valid wire record");
        assert_eq!(record.transport(), Transport::RdmaUd);
        assert_eq!(record.responder_delay_ns(), Some(15_000));
        assert_eq!(record.network_rtt_ns(), Some(25_000));
        let probe = &records[0];
        assert_eq!((probe.src_port, probe.dst_port, probe.dst_node), (0x101, 0x102, 2));
        assert_eq!(probe.dst, ProbeAddr::Gid(Gid(endpoint(2).gid)));
        assert_eq!(probe.src, ProbeAddr::Gid(Gid(endpoint(1).gid)));
        assert_eq!(probe.dscp, 46);
        assert_eq!(pair.b.stats().responded, 1);
        assert_eq!((pair.a.stats().probes.answered, pair.a.stats().probes.sent), (1, 1));
    }

    #[test]
    fn a_lost_follow_up_records_the_whole_round_trip_at_the_deadline() {
        let mut pair = Pair::new();
        assert!(pair.run([1_000_000, 5, 10, 1_040_000], false).is_empty());
        pair.a.expire(pair.t0 + MS + TIMEOUT - Duration::from_nanos(1));
        assert!(pair.a.drain_records().is_empty());
        pair.a.expire(pair.t0 + MS + TIMEOUT);
        let records = pair.a.drain_records();
        assert_eq!(records.len(), 1);
        let record = records[0].to_record();
        assert_eq!(record.responder_delay_ns(), None);
        assert_eq!(record.network_rtt_ns(), Some(40_000));
        assert_eq!(pair.a.stats().probes.follow_ups_missing, 1);
    }

    #[test]
    fn unanswered_probes_time_out_and_late_replies_are_counted_as_late() {
        let t0 = Instant::now();
        let mut a = exchange(1, 0, t0);
        let mut b = exchange(2, 0, t0);
        let request = probe(&mut a, endpoint(2), t0, 100);
        a.sent(t0, request.wr_id, 0, 150);
        a.expire(t0 + TIMEOUT - Duration::from_nanos(1));
        assert!(a.drain_records().is_empty());
        a.expire(t0 + TIMEOUT);
        let records = a.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, ProbeOutcome::Timeout);
        assert_eq!(records[0].timestamps.requester_send_ns, 150);
        let reply = b
            .received(t0, endpoint(1).gid, 0x101, request.packet.as_bytes(), 200)
            .unwrap();
        a.received(t0 + TIMEOUT + MS, endpoint(2).gid, 0x102, reply.packet.as_bytes(), 5);
        let stats = a.stats().probes;
        assert_eq!((stats.late, stats.duplicate, stats.timed_out), (1, 0, 1));
        assert!(a.drain_records().is_empty());
    }

    /// A driver stalled for 3 s polls completions the NIC timestamped long
    /// before: the completion times decide, as for UDP the kernel's.
    #[test]
    fn a_reply_polled_3_s_late_but_completed_in_time_is_answered() {
        let t0 = Instant::now();
        let mut a = exchange(1, 0, t0);
        let timeout_ns = TIMEOUT.as_nanos() as u64;
        let requests = a.schedule(t0, 100, |_| vec![endpoint(2), endpoint(3)]);
        let polled = t0 + Duration::from_secs(3);
        // Node 2's reply completed 1 ns before the deadline, node 3's at it.
        for (request, t4) in [(requests[0], 1_000 + timeout_ns - 1), (requests[1], 1_000 + timeout_ns)] {
            let peer = request.to;
            let mut responder = exchange(peer.node, 0, t0);
            a.sent(polled, request.wr_id, 0, 1_000);
            let reply = responder
                .received(t0, endpoint(1).gid, 0x101, request.packet.as_bytes(), 500)
                .unwrap();
            let follow_up = responder.sent(t0, reply.wr_id, 0, 600).unwrap();
            a.received(polled, peer.gid, peer.qpn, reply.packet.as_bytes(), t4);
            a.received(polled, peer.gid, peer.qpn, follow_up.packet.as_bytes(), t4 + 1);
        }
        a.expire(polled);
        let outcomes: Vec<ProbeOutcome> = a.drain_records().iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [ProbeOutcome::Ok, ProbeOutcome::Timeout]);
        let stats = a.stats().probes;
        assert_eq!((stats.answered, stats.timed_out, stats.late), (1, 1, 1));
    }

    #[test]
    fn duplicated_replies_are_detected_by_sequence() {
        let t0 = Instant::now();
        let mut a = exchange(1, 0, t0);
        let mut b = exchange(2, 0, t0);
        let request = probe(&mut a, endpoint(2), t0, 100);
        let reply = b
            .received(t0, endpoint(1).gid, 0x101, request.packet.as_bytes(), 200)
            .unwrap();
        a.received(t0, endpoint(2).gid, 0x102, reply.packet.as_bytes(), 300);
        a.received(t0, endpoint(2).gid, 0x102, reply.packet.as_bytes(), 301);
        assert_eq!(a.stats().probes.duplicate, 1);
        // The send completion and follow-up may come in any order.
        let follow_up = b.sent(t0, reply.wr_id, 0, 250).unwrap();
        a.received(t0, endpoint(2).gid, 0x102, follow_up.packet.as_bytes(), 320);
        assert!(a.drain_records().is_empty(), "t1 not known yet");
        a.sent(t0, request.wr_id, 0, 110);
        let records = a.drain_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].to_record().network_rtt_ns(), Some(140));
        assert_eq!(records[0].seq, 1);
        assert_eq!(probe(&mut a, endpoint(2), t0 + TICK, 400).packet.seq.get(), 2);
    }

    #[test]
    fn a_failed_send_is_an_error_record_with_the_completion_status() {
        let t0 = Instant::now();
        let mut a = exchange(1, 0, t0);
        let requests = a.schedule(t0, 100, |_| vec![endpoint(3), endpoint(4)]);
        // IBV_WC_RETRY_EXC_ERR is 12; a post that failed is u32::MAX.
        a.sent(t0, requests[0].wr_id, 12, 120);
        a.sent(t0, requests[1].wr_id, u32::MAX, 120);
        let records = a.drain_records();
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].outcome, records[0].error_code), (ProbeOutcome::Error, 12));
        assert_eq!(
            (records[1].outcome, records[1].error_code),
            (ProbeOutcome::Error, u16::MAX)
        );
        records[0].to_record().validate().expect("valid");
        assert_eq!(a.in_flight(), 0);
        assert_eq!(
            (a.stats().send_errors, a.stats().probes.failed, a.stats().probes.sent),
            (2, 2, 0)
        );
    }

    #[test]
    fn packets_for_another_node_or_not_probes_are_malformed() {
        let t0 = Instant::now();
        let mut b = exchange(2, 0, t0);
        let mut a = exchange(1, 0, t0);
        let to_someone_else = probe(&mut a, endpoint(9), t0, 100);
        assert!(
            b.received(t0, [0; 16], 1, to_someone_else.packet.as_bytes(), 200)
                .is_none()
        );
        assert!(b.received(t0, [0; 16], 1, b"not a probe", 200).is_none());
        assert_eq!(b.stats().probes.malformed, 2);
    }

    #[test]
    fn sends_never_completed_are_forgotten() {
        let t0 = Instant::now();
        let mut a = exchange(1, 0, t0);
        let mut now = t0;
        for i in 0..100 {
            probe(&mut a, endpoint(2), now, i);
            now += TICK;
        }
        assert_eq!(a.posted.len(), 100);
        a.expire(now + 5 * TIMEOUT);
        assert_eq!((a.in_flight(), a.posted.len()), (0, 0));
        assert_eq!(a.drain_records().len(), 100);
        assert_eq!(a.stats().probes.timed_out, 100);
    }

    #[test]
    fn the_exchange_probes_under_the_sessions_rate_cap() {
        let t0 = Instant::now();
        // 10 probes a tick (1 000/s, 10 ms ticks) to 25 peers.
        let mut a = exchange(1, 0, t0);
        let peers: Vec<Endpoint> = (2..27).map(endpoint).collect();
        let posted: usize = (0..1_000u32)
            .map(|ms| a.schedule(t0 + ms * MS, 1, |_| peers.clone()).len())
            .sum();
        assert_eq!(posted, 1_000);
        assert_eq!(a.stats().probes.rate_limited, 100 * 15);
        assert_eq!(a.poll_timeout(), t0 + 1_000 * MS);
    }
}
