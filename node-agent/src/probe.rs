//! Pingmesh-style UDP probes: the pinglist from the topology, a responder
//! that echoes requests with its own timestamps, and a prober that sends,
//! matches replies, times out the unanswered and emits probe records.
//!
//! Receive times (t2 on the responder, t4 on the requester) are the
//! kernel's (`SO_TIMESTAMPNS`): the moment the packet reached the socket,
//! not the moment the agent got round to reading it, so the agent's own
//! scheduling delay stays out of the network RTT — on the responder it is
//! part of the responder delay, where it belongs. Send times (t1, t3) are
//! taken just before the send system call. Probe packets carry the
//! configured DSCP in their TOS byte (IPv4) or traffic class (IPv6), so
//! they see the queues of the traffic class they measure.
//!
//! The responder also answers [`EndpointPacket`] queries with this host's
//! RDMA UD probe endpoint (see [`RdmaEndpoint`] and the `rdma` module), so
//! peers can address its queue pair.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use configs::{Probing, Topology};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use wire_format::{
    ENDPOINT_MAGIC, ENDPOINT_QUERY, EndpointPacket, PROBE_REPLY, PROBE_REQUEST, Probe, ProbeAddr, ProbeOutcome,
    ProbePacket, ProbeRecord, ProbeTimestamps, Transport,
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

/// Binds a probe socket on `addr` whose packets leave with `dscp` in their
/// TOS byte (IPv4) or traffic class (IPv6), and whose received packets the
/// kernel timestamps (read them with [`recv_stamped`]).
pub async fn bind(addr: SocketAddr, dscp: u8) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).await?;
    // DSCP is the upper six bits; the lower two (ECN) stay 0.
    let tos = i32::from(dscp & 0x3f) << 2;
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::Ipv4Tos, &tos)?;
    } else {
        setsockopt(&socket, sockopt::Ipv6TClass, &tos)?;
    }
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
    Ok(socket)
}

/// Receives one datagram into `buf`: its length, its sender and when the
/// kernel received it (ns since the Unix epoch; the current time if the
/// socket was not bound with [`bind`] and the kernel gave none).
pub async fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    let fd = socket.as_raw_fd();
    socket.async_io(Interest::READABLE, || recv_now(fd, buf)).await
}

fn recv_now(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    // Non-blocking: tokio retries on EAGAIN when the socket is readable.
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let mut stamp = None;
    // A truncated control buffer only loses the stamp.
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            stamp = u64::try_from(t.tv_sec())
                .ok()
                .zip(u64::try_from(t.tv_nsec()).ok())
                .map(|(secs, nanos)| secs * 1_000_000_000 + nanos);
        }
    }
    let from = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| std::io::Error::other("datagram without an IP source address"))?;
    Ok((msg.bytes, from, stamp.unwrap_or_else(now_ns)))
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    match addr.family()? {
        nix::sys::socket::AddressFamily::Inet => addr.as_sockaddr_in().map(|a| SocketAddr::from(*a)),
        nix::sys::socket::AddressFamily::Inet6 => addr.as_sockaddr_in6().map(|a| SocketAddr::from(*a)),
        _ => None,
    }
}

/// Reloads the topology file at `path` on every SIGHUP until the task is
/// dropped, publishing it to the prober; a file that does not load is
/// reported and the previous topology kept. `hangup` is the installed
/// SIGHUP stream (installed early, so a SIGHUP never kills the agent).
pub async fn reload_on_sighup(
    mut hangup: tokio::signal::unix::Signal,
    path: std::path::PathBuf,
    me: u32,
    local: IpAddr,
    topology: tokio::sync::watch::Sender<Arc<Topology>>,
) {
    while hangup.recv().await.is_some() {
        match Topology::load(&path) {
            Ok(new) => {
                let address = new.node(me).and_then(|n| n.addresses.first().copied());
                if address != Some(local) {
                    tracing::warn!(
                        message = "This node's address changed in the reloaded topology; probes still use the old one \
                                   until the agent restarts.",
                        node_id = me,
                        old = %local,
                        new = ?address,
                    );
                }
                tracing::info!(message = "Reloaded the topology.", path = %path.display(), nodes = new.nodes().len());
                topology.send_replace(Arc::new(new));
            }
            Err(error) => {
                tracing::warn!(message = "Topology reload failed; keeping the previous one.", %error);
            }
        }
    }
}

/// This host's RDMA UD probe endpoint — (QPN, Q_Key, GID) — once its queue
/// pair is open; empty on hosts without RDMA. The responder hands it to
/// peers that ask.
#[derive(Debug, Clone, Default)]
pub struct RdmaEndpoint(Arc<std::sync::OnceLock<(u32, u32, [u8; 16])>>);

impl RdmaEndpoint {
    /// Publishes the endpoint (once; later calls are ignored).
    pub fn set(&self, qpn: u32, qkey: u32, gid: [u8; 16]) {
        let _ = self.0.set((qpn, qkey, gid));
    }

    /// The endpoint, if published.
    pub fn get(&self) -> Option<(u32, u32, [u8; 16])> {
        self.0.get().copied()
    }
}

/// Answers probe requests and RDMA endpoint queries on `socket` for node
/// `me` until the task is dropped.
pub async fn respond(socket: Arc<UdpSocket>, me: u32, rdma: RdmaEndpoint, stats: Arc<std::sync::Mutex<ProbeStats>>) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((len, from, received)) = recv_stamped(&socket, &mut buf).await else {
            continue;
        };
        if buf[..len].starts_with(&ENDPOINT_MAGIC) {
            match EndpointPacket::parse(&buf[..len]) {
                Ok(q) if q.kind == ENDPOINT_QUERY && q.node.get() == me => {
                    let reply = EndpointPacket::reply(me, rdma.get());
                    let _ = socket.send_to(reply.as_bytes(), from).await;
                }
                _ => lock(&stats).malformed += 1,
            }
            continue;
        }
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
/// every probe whose outcome is known to `records`. The pinglist is derived
/// each tick from the latest topology `topology` holds, so a reloaded
/// topology takes effect at the next tick.
pub async fn probe(
    socket: UdpSocket,
    topology: tokio::sync::watch::Receiver<Arc<Topology>>,
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
                let current = Arc::clone(&topology.borrow());
                let targets = pinglist(&current, settings.me, p.port, p.inter_rack_peers, round);
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
            received = recv_stamped(&socket, &mut buf) => {
                let Ok((len, _, received_ns)) = received else { continue };
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

    /// Peers learn this host's RDMA UD queue pair from the UDP responder;
    /// a host without one answers that it has none.
    #[tokio::test]
    async fn the_responder_answers_rdma_endpoint_queries() {
        let responder = Arc::new(bind("127.0.0.1:0".parse().unwrap(), 0).await.unwrap());
        let at = responder.local_addr().unwrap();
        let rdma = RdmaEndpoint::default();
        let stats = Arc::new(std::sync::Mutex::new(ProbeStats::default()));
        let task = tokio::spawn(respond(responder, 7, rdma.clone(), stats.clone()));
        let asker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |node: u32| {
            let asker = &asker;
            async move {
                asker.send_to(EndpointPacket::query(node).as_bytes(), at).await.unwrap();
                let mut buf = [0u8; 64];
                let got = tokio::time::timeout(Duration::from_secs(2), asker.recv(&mut buf)).await;
                got.ok()
                    .map(|len| EndpointPacket::parse(&buf[..len.unwrap()]).copied().unwrap())
            }
        };
        let reply = ask(7).await.expect("a reply");
        assert_eq!((reply.node.get(), reply.endpoint()), (7, None));
        let gid = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        rdma.set(0x1234, 0x464d_5052, gid);
        assert_eq!(
            ask(7).await.expect("a reply").endpoint(),
            Some((0x1234, 0x464d_5052, gid))
        );
        // A query meant for another node is not answered, and counted.
        let before = lock(&stats).malformed;
        asker.send_to(EndpointPacket::query(8).as_bytes(), at).await.unwrap();
        assert_eq!(ask(7).await.expect("a reply").node.get(), 7);
        assert_eq!(lock(&stats).malformed, before + 1);
        task.abort();
    }

    /// The receive time is the kernel's, when the packet reached the
    /// socket, not when the agent read it.
    #[tokio::test]
    async fn receive_times_are_the_kernels() {
        let rx = bind("127.0.0.1:0".parse().unwrap(), 0).await.unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel turns receive timestamping on for the whole system in
        // deferred work when the first socket asks; until then a packet is
        // stamped when read. One packet through first, as an agent's
        // sockets have long been open before they carry probes.
        let mut buf = [0u8; 64];
        tx.send_to(b"warm", rx.local_addr().unwrap()).unwrap();
        recv_stamped(&rx, &mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = now_ns();
        tx.send_to(b"stamp", rx.local_addr().unwrap()).unwrap();
        // The agent busy elsewhere for 200 ms.
        std::thread::sleep(Duration::from_millis(200));
        let (len, from, stamp) = tokio::time::timeout(Duration::from_secs(5), recv_stamped(&rx, &mut buf))
            .await
            .unwrap()
            .unwrap();
        let read = now_ns();
        assert_eq!((len, from), (5, tx.local_addr().unwrap()));
        assert!(
            stamp + 1_000_000 >= sent && stamp < sent + 100_000_000,
            "stamp {stamp}, sent {sent}"
        );
        assert!(
            read - stamp >= 150_000_000,
            "read {} ms after the stamp",
            (read - stamp) / 1_000_000
        );
    }

    /// What a receiver sees in the TOS byte or traffic class of a probe
    /// socket's packets.
    fn received_tos(dscp: u8, local: &str) -> i32 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rx = std::net::UdpSocket::bind(local).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let v4 = rx.local_addr().unwrap().is_ipv4();
        if v4 {
            setsockopt(&rx, sockopt::IpRecvTos, &true).unwrap();
        } else {
            setsockopt(&rx, sockopt::Ipv6RecvTClass, &true).unwrap();
        }
        runtime.block_on(async {
            let tx = bind(local.parse().unwrap(), dscp).await.unwrap();
            tx.send_to(b"dscp", rx.local_addr().unwrap()).await.unwrap();
        });
        let mut buf = [0u8; 16];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(i32);
        let msg = recvmsg::<SockaddrStorage>(rx.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        msg.cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::Ipv4Tos(tos) => Some(i32::from(tos)),
                ControlMessageOwned::Ipv6TClass(class) => Some(class),
                _ => None,
            })
            .expect("a TOS or traffic class control message")
    }

    #[test]
    fn probe_packets_carry_the_configured_dscp() {
        // EF (46) is TOS 0xb8; CS1 (8) is 0x20; 0 stays 0.
        assert_eq!(received_tos(46, "127.0.0.1:0"), 0xb8);
        assert_eq!(received_tos(8, "127.0.0.1:0"), 0x20);
        assert_eq!(received_tos(0, "127.0.0.1:0"), 0);
        assert_eq!(received_tos(46, "[::1]:0"), 0xb8);
    }
}
