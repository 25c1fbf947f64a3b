//! Pingmesh-style UDP probes: the pinglist from the topology, a responder
//! that echoes requests with its own timestamps, and a prober that sends,
//! matches replies, times out the unanswered and emits probe records.
//!
//! Timestamps are taken in user space when a packet is handed to or taken
//! from the socket (the kernel receive timestamps the issue asks for are not
//! used yet), so both RTT and responder delay include a little scheduling
//! time on each host; the responder's share is still reported apart from
//! the network's.
//!
//! RDMA UD probes (hosts with RDMA NICs) are not built: this machine has no
//! RDMA device to test them on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use configs::{Probing, Topology};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use wire_format::{
    PROBE_REPLY, PROBE_REQUEST, Probe, ProbeAddr, ProbeOutcome, ProbePacket, ProbeRecord, ProbeTimestamps, Transport,
};
use zerocopy::IntoBytes;

use crate::now_ns;

/// One node to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Its node id.
    pub node: u32,
    /// Where its responder listens.
    pub addr: SocketAddr,
}

/// The nodes `me` probes in rotation `round`: every other node of its rack,
/// and `inter_rack_peers` of each other rack, a different window of them
/// each round so every inter-rack path is covered over time.
pub fn pinglist(topology: &Topology, me: u32, port: u16, inter_rack_peers: u32, round: u64) -> Vec<Target> {
    let Some(my_rack) = topology.node(me).map(|n| n.rack) else {
        return Vec::new();
    };
    let target = |n: &configs::Node| {
        n.addresses.first().map(|&ip| Target {
            node: n.id,
            addr: SocketAddr::new(ip, port),
        })
    };
    let mut out: Vec<Target> = topology
        .nodes_in_rack(my_rack)
        .filter(|n| n.id != me)
        .filter_map(target)
        .collect();
    for rack in topology.racks().iter().filter(|r| r.id != my_rack) {
        let nodes: Vec<&configs::Node> = topology.nodes_in_rack(rack.id).collect();
        if nodes.is_empty() {
            continue;
        }
        let take = (inter_rack_peers as usize).min(nodes.len());
        // Offset by our own id so the racks' nodes are not all probed by
        // everyone at once, and by the round so coverage rotates.
        let start = (u64::from(me) + round * take as u64) as usize % nodes.len();
        out.extend((0..take).filter_map(|i| target(nodes[(start + i) % nodes.len()])));
    }
    out
}

/// Probes one tick of `interval` may send under a cap of `max_per_sec`
/// (at least one, so a tiny cap still probes slowly rather than never).
/// When the pinglist is longer, each tick probes the next slice of it.
pub fn per_tick_budget(max_per_sec: u32, interval: Duration) -> usize {
    ((u128::from(max_per_sec) * interval.as_millis()) / 1_000).max(1) as usize
}

/// Counters of the probing side, for the agent's metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Requests sent.
    pub sent: u64,
    /// Replies matched in time.
    pub answered: u64,
    /// Probes that timed out.
    pub timed_out: u64,
    /// Replies that came after their probe had timed out.
    pub late: u64,
    /// Replies for a probe already answered.
    pub duplicate: u64,
    /// Packets that were not valid probe packets.
    pub malformed: u64,
    /// Requests answered by the responder.
    pub responded: u64,
    /// Probes skipped to stay under `probes.max_probes_per_sec`.
    pub rate_limited: u64,
}

/// Answers probe requests on `socket` for node `me` until the task is
/// dropped.
pub async fn respond(socket: Arc<UdpSocket>, me: u32, stats: Arc<std::sync::Mutex<ProbeStats>>) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let received = now_ns();
        let reply = match ProbePacket::parse(&buf[..len]) {
            Ok(p) if p.kind == PROBE_REQUEST && p.responder_node.get() == me => p.reply(received, now_ns()),
            _ => {
                lock(&stats).malformed += 1;
                continue;
            }
        };
        if socket.send_to(reply.as_bytes(), from).await.is_ok() {
            lock(&stats).responded += 1;
        }
    }
}

fn lock(stats: &std::sync::Mutex<ProbeStats>) -> std::sync::MutexGuard<'_, ProbeStats> {
    stats.lock().unwrap_or_else(|poison| poison.into_inner())
}

struct Outstanding {
    target: Target,
    sent_ns: u64,
    deadline: tokio::time::Instant,
}

/// The prober's settings.
#[derive(Debug, Clone)]
pub struct ProberSettings {
    /// This node.
    pub me: u32,
    /// This node's address (probe records' source).
    pub local: IpAddr,
    /// Probe configuration.
    pub probing: Probing,
}

/// Probes the pinglist until the task is dropped, sending a record for
/// every probe whose outcome is known to `records`.
pub async fn probe(
    socket: UdpSocket,
    topology: Arc<Topology>,
    settings: ProberSettings,
    records: mpsc::Sender<ProbeRecord>,
    stats: Arc<std::sync::Mutex<ProbeStats>>,
) {
    let p = &settings.probing;
    let interval = Duration::from_millis(p.interval_ms);
    let timeout = Duration::from_millis(p.timeout_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outstanding: HashMap<(u32, u64), Outstanding> = HashMap::new();
    // Probes that timed out recently, so a late reply is told from a
    // duplicate; bounded.
    let mut timed_out: VecDeque<(u32, u64)> = VecDeque::new();
    let mut next_seq: BTreeMap<u32, u64> = BTreeMap::new();
    let local_port = socket.local_addr().map_or(0, |a| a.port());
    let started = tokio::time::Instant::now();
    let budget = per_tick_budget(p.max_probes_per_sec, interval);
    let mut cursor = 0usize;
    let mut buf = [0u8; 64];
    let record = |target: Target, seq: u64, outcome: ProbeOutcome, ts: ProbeTimestamps| {
        Probe {
            transport: Transport::Udp,
            src: ProbeAddr::Ip(settings.local),
            dst: ProbeAddr::Ip(target.addr.ip()),
            src_port: local_port.into(),
            dst_port: target.addr.port().into(),
            dst_node: target.node,
            dscp: p.dscp,
            seq,
            outcome,
            error_code: 0,
            timestamps: ts,
        }
        .to_record()
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let round = started.elapsed().as_secs() / p.rotate_secs.max(1);
                let targets = pinglist(&topology, settings.me, p.port, p.inter_rack_peers, round);
                let count = targets.len().min(budget);
                lock(&stats).rate_limited += (targets.len() - count) as u64;
                for i in 0..count {
                    let target = targets[(cursor + i) % targets.len()];
                    let seq = next_seq.entry(target.node).or_default();
                    *seq += 1;
                    let sent_ns = now_ns();
                    let request = ProbePacket::request(settings.me, target.node, *seq, sent_ns);
                    if socket.send_to(request.as_bytes(), target.addr).await.is_err() {
                        // Unreachable at once (no route, refused): an error outcome.
                        let ts = ProbeTimestamps { requester_send_ns: sent_ns, ..ProbeTimestamps::default() };
                        let mut r = record(target, *seq, ProbeOutcome::Error, ts);
                        r.error_code = 1.into();
                        let _ = records.send(r).await;
                        continue;
                    }
                    lock(&stats).sent += 1;
                    outstanding.insert((target.node, *seq), Outstanding { target, sent_ns, deadline: tokio::time::Instant::now() + timeout });
                }
                if !targets.is_empty() {
                    cursor = (cursor + count) % targets.len();
                }
                // Expire what is past its deadline.
                let now = tokio::time::Instant::now();
                let expired: Vec<(u32, u64)> = outstanding.iter().filter(|(_, o)| o.deadline <= now).map(|(k, _)| *k).collect();
                for key in expired {
                    if let Some(o) = outstanding.remove(&key) {
                        lock(&stats).timed_out += 1;
                        let ts = ProbeTimestamps { requester_send_ns: o.sent_ns, ..ProbeTimestamps::default() };
                        let _ = records.send(record(o.target, key.1, ProbeOutcome::Timeout, ts)).await;
                        timed_out.push_back(key);
                        if timed_out.len() > 4_096 {
                            timed_out.pop_front();
                        }
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = received else { continue };
                let received_ns = now_ns();
                let Ok(reply) = ProbePacket::parse(&buf[..len]) else {
                    lock(&stats).malformed += 1;
                    continue;
                };
                if reply.kind != PROBE_REPLY || reply.requester_node.get() != settings.me {
                    lock(&stats).malformed += 1;
                    continue;
                }
                let key = (reply.responder_node.get(), reply.seq.get());
                match outstanding.remove(&key) {
                    Some(o) => {
                        lock(&stats).answered += 1;
                        let ts = ProbeTimestamps {
                            requester_send_ns: o.sent_ns,
                            responder_receive_ns: reply.responder_receive_ns.get(),
                            responder_send_ns: reply.responder_send_ns.get(),
                            requester_receive_ns: received_ns,
                        };
                        let _ = records.send(record(o.target, key.1, ProbeOutcome::Ok, ts)).await;
                    }
                    None if timed_out.contains(&key) => lock(&stats).late += 1,
                    None => lock(&stats).duplicate += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(racks: u32, per_rack: u32) -> Topology {
        let mut text = String::new();
        for r in 1..=racks {
            text += &format!("[[racks]]\nid = {r}\nname = \"rack{r}\"\n");
            for n in 1..=per_rack {
                text += &format!(
                    "[[nodes]]\nid = {}\nname = \"r{r}n{n}\"\nrack = \"rack{r}\"\naddresses = [\"10.{}.{}.{}\"]\n",
                    r * 1_000 + n,
                    r,
                    n / 250,
                    n % 250 + 1
                );
            }
        }
        Topology::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn in_rack_full_mesh_and_rotating_inter_rack_peers() {
        let t = topology(3, 10);
        let list = pinglist(&t, 1_001, 7788, 4, 0);
        let in_rack = list.iter().filter(|x| x.node / 1_000 == 1).count();
        assert_eq!(in_rack, 9);
        assert_eq!(list.len(), 9 + 2 * 4);
        assert!(list.iter().all(|x| x.node != 1_001 && x.addr.port() == 7788));
        // Over enough rounds every node of every other rack is probed.
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..3 {
            seen.extend(pinglist(&t, 1_001, 7788, 4, round).into_iter().map(|x| x.node));
        }
        assert_eq!(seen.len(), 29);
        // An unknown node probes no one.
        assert!(pinglist(&t, 42, 7788, 4, 0).is_empty());
    }

    #[test]
    fn the_rate_cap_holds_for_a_large_topology() {
        // 500 nodes: 10 racks of 50; a node's pinglist is 49 + 9 × 4 = 85.
        let t = topology(10, 50);
        let list = pinglist(&t, 1_001, 7788, 4, 0);
        assert_eq!(list.len(), 85);
        for (cap, interval_ms) in [(200, 1_000), (50, 1_000), (20, 100), (1, 10)] {
            let interval = Duration::from_millis(interval_ms);
            let per_tick = per_tick_budget(cap, interval).min(list.len());
            let per_sec = per_tick as f64 * 1_000.0 / interval_ms as f64;
            // Within the cap, except that one probe per tick is the floor.
            assert!(
                per_sec <= f64::from(cap).max(1_000.0 / interval_ms as f64),
                "{cap}/s: {per_sec}/s"
            );
        }
        assert_eq!(per_tick_budget(200, Duration::from_secs(1)), 200);
        assert_eq!(per_tick_budget(50, Duration::from_secs(1)), 50);
    }
}
