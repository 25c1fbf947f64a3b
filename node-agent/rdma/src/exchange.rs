//! The RDMA UD probe exchange, free of any device: what to send, and which
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
//! Every time here is wall-clock ns: the driver converts the NIC's
//! completion timestamps with a [`Calibration`](crate::Calibration), or
//! stamps completions itself on a device without them.

use std::collections::{HashMap, VecDeque};

use wire_format::{
    Gid, PROBE_FOLLOW_UP, PROBE_REPLY, PROBE_REQUEST, Probe, ProbeAddr, ProbeOutcome, ProbePacket, ProbeTimestamps,
    Transport,
};

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
    /// Requests posted.
    pub sent: u64,
    /// Probes answered in time.
    pub answered: u64,
    /// Probes without a reply in time.
    pub timed_out: u64,
    /// Replies after their probe had timed out.
    pub late: u64,
    /// Replies to a probe already answered.
    pub duplicate: u64,
    /// Received packets that were not valid probe packets for this node.
    pub malformed: u64,
    /// Requests this node answered (reply sent).
    pub responded: u64,
    /// Sends the NIC completed with an error.
    pub send_errors: u64,
    /// Answered probes whose follow-up (t3) never came: recorded without
    /// a responder delay.
    pub follow_ups_missing: u64,
}

#[derive(Debug)]
enum Purpose {
    Request { node: u32, seq: u64 },
    Reply { to: Endpoint, reply: ProbePacket },
    FollowUp,
}

#[derive(Debug)]
struct Posted {
    purpose: Purpose,
    posted_ns: u64,
}

#[derive(Debug)]
struct Pending {
    to: Endpoint,
    /// When the request was posted: t1 until the send completion says.
    posted_ns: u64,
    t1: Option<u64>,
    /// (t2, t4) once the reply came.
    reply: Option<(u64, u64)>,
    t3: Option<u64>,
    deadline_ns: u64,
}

/// Recently expired probes remembered to tell a late reply from a stray.
const EXPIRED_MEMORY: usize = 4_096;

/// One host's side of RDMA UD probing: requester and responder.
#[derive(Debug)]
pub struct Exchange {
    me: Endpoint,
    dscp: u8,
    timeout_ns: u64,
    next_wr_id: u64,
    next_seq: HashMap<u32, u64>,
    posted: HashMap<u64, Posted>,
    pending: HashMap<(u32, u64), Pending>,
    expired: VecDeque<(u32, u64)>,
    records: Vec<Probe>,
    stats: ExchangeStats,
}

impl Exchange {
    /// The exchange of the QP at `me`, probing with `dscp` (for records) and
    /// declaring a probe lost `timeout_ns` after it was posted.
    pub fn new(me: Endpoint, dscp: u8, timeout_ns: u64) -> Exchange {
        Exchange {
            me,
            dscp,
            timeout_ns,
            next_wr_id: 1,
            next_seq: HashMap::new(),
            posted: HashMap::new(),
            pending: HashMap::new(),
            expired: VecDeque::new(),
            records: Vec::new(),
            stats: ExchangeStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// Probes in flight (for bounding the driver's memory).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn post(&mut self, to: Endpoint, packet: ProbePacket, purpose: Purpose, now_ns: u64) -> Outgoing {
        let wr_id = self.next_wr_id;
        self.next_wr_id += 1;
        self.posted.insert(
            wr_id,
            Posted {
                purpose,
                posted_ns: now_ns,
            },
        );
        Outgoing { wr_id, to, packet }
    }

    /// A new probe to `to`, posted now.
    pub fn probe(&mut self, to: Endpoint, now_ns: u64) -> Outgoing {
        let seq = self.next_seq.entry(to.node).or_default();
        *seq += 1;
        let seq = *seq;
        self.stats.sent += 1;
        self.pending.insert(
            (to.node, seq),
            Pending {
                to,
                posted_ns: now_ns,
                t1: None,
                reply: None,
                t3: None,
                deadline_ns: now_ns.saturating_add(self.timeout_ns),
            },
        );
        let request = ProbePacket::request(self.me.node, to.node, seq, now_ns);
        self.post(to, request, Purpose::Request { node: to.node, seq }, now_ns)
    }

    /// The send `wr_id` completed at `at_ns` with `status` (0 = success,
    /// else an `ibv_wc_status`); returns the follow-up to post, if any.
    pub fn sent(&mut self, wr_id: u64, status: u32, at_ns: u64) -> Option<Outgoing> {
        let posted = self.posted.remove(&wr_id)?;
        if status != 0 {
            self.stats.send_errors += 1;
        }
        match posted.purpose {
            Purpose::Request { node, seq } => {
                if status == 0 {
                    if let Some(p) = self.pending.get_mut(&(node, seq)) {
                        p.t1 = Some(at_ns);
                    }
                    self.finish_if_complete((node, seq));
                } else if let Some(p) = self.pending.remove(&(node, seq)) {
                    let ts = ProbeTimestamps {
                        requester_send_ns: p.posted_ns,
                        ..ProbeTimestamps::default()
                    };
                    let code = u16::try_from(status).unwrap_or(u16::MAX);
                    self.records
                        .push(self.record(&p.to, seq, ProbeOutcome::Error, code, ts));
                }
                None
            }
            Purpose::Reply { to, reply } if status == 0 => {
                self.stats.responded += 1;
                let follow_up = reply.follow_up(at_ns);
                Some(self.post(to, follow_up, Purpose::FollowUp, at_ns))
            }
            Purpose::Reply { .. } | Purpose::FollowUp => None,
        }
    }

    /// A packet of `payload` bytes arrived at `at_ns` from the QP `from_qpn`
    /// at `from_gid`; returns the reply to post when it is a request.
    pub fn received(&mut self, from_gid: [u8; 16], from_qpn: u32, payload: &[u8], at_ns: u64) -> Option<Outgoing> {
        let Ok(packet) = ProbePacket::parse(payload) else {
            self.stats.malformed += 1;
            return None;
        };
        let packet = *packet;
        match packet.kind {
            PROBE_REQUEST if packet.responder_node.get() == self.me.node => {
                let to = Endpoint {
                    node: packet.requester_node.get(),
                    gid: from_gid,
                    qpn: from_qpn,
                    qkey: self.me.qkey,
                };
                let reply = packet.reply(at_ns, 0);
                Some(self.post(to, reply, Purpose::Reply { to, reply }, at_ns))
            }
            PROBE_REPLY | PROBE_FOLLOW_UP if packet.requester_node.get() == self.me.node => {
                let key = (packet.responder_node.get(), packet.seq.get());
                match self.pending.get_mut(&key) {
                    Some(p) if packet.kind == PROBE_FOLLOW_UP => {
                        p.t3 = Some(packet.responder_send_ns.get());
                    }
                    Some(p) if p.reply.is_none() => {
                        p.reply = Some((packet.responder_receive_ns.get(), at_ns));
                    }
                    Some(_) => self.stats.duplicate += 1,
                    None if packet.kind == PROBE_FOLLOW_UP => {}
                    None if self.expired.contains(&key) => self.stats.late += 1,
                    None => self.stats.duplicate += 1,
                }
                self.finish_if_complete(key);
                None
            }
            _ => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn finish_if_complete(&mut self, key: (u32, u64)) {
        let complete = self
            .pending
            .get(&key)
            .is_some_and(|p| p.t1.is_some() && p.reply.is_some() && p.t3.is_some());
        if complete && let Some(p) = self.pending.remove(&key) {
            self.answer(key.1, &p);
        }
    }

    fn answer(&mut self, seq: u64, p: &Pending) {
        let (t2, t4) = p.reply.unwrap_or_default();
        let ts = ProbeTimestamps {
            requester_send_ns: p.t1.unwrap_or(p.posted_ns),
            responder_receive_ns: t2,
            // Without the follow-up the responder's hold is unknown (0), so
            // the record's network RTT is the whole round trip.
            responder_send_ns: p.t3.map_or(0, |t3| t3.max(t2)),
            requester_receive_ns: t4,
        };
        self.stats.answered += 1;
        if p.t3.is_none() {
            self.stats.follow_ups_missing += 1;
        }
        self.records.push(self.record(&p.to, seq, ProbeOutcome::Ok, 0, ts));
    }

    /// Settles probes past their deadline at `now_ns`: unanswered ones time
    /// out, answered ones still missing their follow-up are recorded
    /// without it. Forgets sends whose completion never came.
    pub fn expire(&mut self, now_ns: u64) {
        let due: Vec<(u32, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ns <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(p) = self.pending.remove(&key) else { continue };
            if p.reply.is_some() {
                self.answer(key.1, &p);
                continue;
            }
            self.stats.timed_out += 1;
            let ts = ProbeTimestamps {
                requester_send_ns: p.t1.unwrap_or(p.posted_ns),
                ..ProbeTimestamps::default()
            };
            self.records
                .push(self.record(&p.to, key.1, ProbeOutcome::Timeout, 0, ts));
            self.expired.push_back(key);
            if self.expired.len() > EXPIRED_MEMORY {
                self.expired.pop_front();
            }
        }
        let stale = now_ns.saturating_sub(self.timeout_ns.saturating_mul(4));
        self.posted.retain(|_, posted| posted.posted_ns >= stale);
    }

    /// The probe records settled since the last call.
    pub fn take_records(&mut self) -> Vec<Probe> {
        std::mem::take(&mut self.records)
    }

    fn record(&self, to: &Endpoint, seq: u64, outcome: ProbeOutcome, error_code: u16, ts: ProbeTimestamps) -> Probe {
        Probe {
            transport: Transport::RdmaUd,
            src: ProbeAddr::Gid(Gid(self.me.gid)),
            dst: ProbeAddr::Gid(Gid(to.gid)),
            src_port: self.me.qpn,
            dst_port: to.qpn,
            dst_node: to.node,
            dscp: self.dscp,
            seq,
            outcome,
            error_code,
            timestamps: ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_format::Record;
    use zerocopy::IntoBytes;

    const TIMEOUT: u64 = 1_000_000_000;

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

    /// Two exchanges wired back to back: what one posts the other receives,
    /// with the times given.
    struct Pair {
        a: Exchange,
        b: Exchange,
    }

    impl Pair {
        fn new() -> Pair {
            Pair {
                a: Exchange::new(endpoint(1), 46, TIMEOUT),
                b: Exchange::new(endpoint(2), 46, TIMEOUT),
            }
        }

        /// A full exchange: t1 (A's send completion), t2 (B's receive),
        /// t3 (B's reply send completion), t4 (A's receive).
        fn run(&mut self, t: [u64; 4], deliver_follow_up: bool) -> Vec<Probe> {
            let request = self.a.probe(endpoint(2), t[0] - 500);
            assert!(self.a.sent(request.wr_id, 0, t[0]).is_none());
            let reply = self
                .b
                .received(endpoint(1).gid, endpoint(1).qpn, request.packet.as_bytes(), t[1])
                .expect("a reply");
            assert_eq!(reply.to, endpoint(1));
            assert!(
                self.a
                    .received(endpoint(2).gid, endpoint(2).qpn, reply.packet.as_bytes(), t[3])
                    .is_none()
            );
            let follow_up = self.b.sent(reply.wr_id, 0, t[2]).expect("a follow-up");
            assert!(self.b.sent(follow_up.wr_id, 0, t[2] + 100).is_none());
            if deliver_follow_up {
                self.a.received(
                    endpoint(2).gid,
                    endpoint(2).qpn,
                    follow_up.packet.as_bytes(),
                    t[3] + 200,
                );
            }
            self.a.take_records()
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
        assert_eq!(pair.b.stats().responded, 1);
        assert_eq!(pair.a.stats().answered, 1);
    }

    #[test]
    fn a_lost_follow_up_records_the_whole_round_trip_at_the_deadline() {
        let mut pair = Pair::new();
        assert!(pair.run([1_000_000, 5, 10, 1_040_000], false).is_empty());
        pair.a.expire(1_000_000 + TIMEOUT);
        let records = pair.a.take_records();
        assert_eq!(records.len(), 1);
        let record = records[0].to_record();
        assert_eq!(record.responder_delay_ns(), None);
        assert_eq!(record.network_rtt_ns(), Some(40_000));
        assert_eq!(pair.a.stats().follow_ups_missing, 1);
    }

    #[test]
    fn unanswered_probes_time_out_and_late_replies_are_counted_as_late() {
        let mut a = Exchange::new(endpoint(1), 0, TIMEOUT);
        let mut b = Exchange::new(endpoint(2), 0, TIMEOUT);
        let request = a.probe(endpoint(2), 100);
        a.sent(request.wr_id, 0, 150);
        a.expire(100 + TIMEOUT - 1);
        assert!(a.take_records().is_empty());
        a.expire(100 + TIMEOUT);
        let records = a.take_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome, ProbeOutcome::Timeout);
        assert_eq!(records[0].timestamps.requester_send_ns, 150);
        let reply = b
            .received(endpoint(1).gid, 0x101, request.packet.as_bytes(), 200)
            .unwrap();
        a.received(endpoint(2).gid, 0x102, reply.packet.as_bytes(), 100 + TIMEOUT + 5);
        assert_eq!((a.stats().late, a.stats().duplicate, a.stats().timed_out), (1, 0, 1));
        assert!(a.take_records().is_empty());
    }

    #[test]
    fn duplicated_replies_are_detected_by_sequence() {
        let mut a = Exchange::new(endpoint(1), 0, TIMEOUT);
        let mut b = Exchange::new(endpoint(2), 0, TIMEOUT);
        let request = a.probe(endpoint(2), 100);
        let reply = b
            .received(endpoint(1).gid, 0x101, request.packet.as_bytes(), 200)
            .unwrap();
        a.received(endpoint(2).gid, 0x102, reply.packet.as_bytes(), 300);
        a.received(endpoint(2).gid, 0x102, reply.packet.as_bytes(), 301);
        assert_eq!(a.stats().duplicate, 1);
        // The send completion and follow-up may come in any order.
        let follow_up = b.sent(reply.wr_id, 0, 250).unwrap();
        a.received(endpoint(2).gid, 0x102, follow_up.packet.as_bytes(), 320);
        assert!(a.take_records().is_empty(), "t1 not known yet");
        a.sent(request.wr_id, 0, 110);
        let records = a.take_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].to_record().network_rtt_ns(), Some(140));
        assert_eq!(records[0].seq, 1);
        assert_eq!(a.probe(endpoint(2), 400).packet.seq.get(), 2);
    }

    #[test]
    fn a_failed_send_is_an_error_record_with_the_completion_status() {
        let mut a = Exchange::new(endpoint(1), 0, TIMEOUT);
        let request = a.probe(endpoint(3), 100);
        // IBV_WC_RETRY_EXC_ERR is 12.
        a.sent(request.wr_id, 12, 120);
        let records = a.take_records();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].outcome, records[0].error_code), (ProbeOutcome::Error, 12));
        records[0].to_record().validate().expect("valid");
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn packets_for_another_node_or_not_probes_are_malformed() {
        let mut b = Exchange::new(endpoint(2), 0, TIMEOUT);
        let mut a = Exchange::new(endpoint(1), 0, TIMEOUT);
        let to_someone_else = a.probe(endpoint(9), 100);
        assert!(b.received([0; 16], 1, to_someone_else.packet.as_bytes(), 200).is_none());
        assert!(b.received([0; 16], 1, b"not a probe", 200).is_none());
        assert_eq!(b.stats().malformed, 2);
    }

    #[test]
    fn sends_never_completed_are_forgotten() {
        let mut a = Exchange::new(endpoint(1), 0, TIMEOUT);
        for i in 0..100 {
            a.probe(endpoint(2), i);
        }
        a.expire(100 + 5 * TIMEOUT);
        assert_eq!((a.in_flight(), a.posted.len()), (0, 0));
        assert_eq!(a.take_records().len(), 100);
    }
}
