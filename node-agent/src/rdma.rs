//! RDMA UD probes (feature `rdma`): on a host whose topology entry lists an
//! RDMA GID held by one of its NICs, probe the peers that also list one,
//! over a UD queue pair, alongside the UDP probes.
//!
//! A peer's queue-pair number is learnt from its UDP responder
//! ([`wire_format::EndpointPacket`]) and asked again every
//! [`RESOLVE_EVERY`], since a restarted agent gets a new queue pair. The
//! exchange itself is `node_agent_rdma::Exchange` — the probe session the
//! UDP prober also drives (pacing, timeouts, late and duplicate replies),
//! plus the follow-ups carrying the responder's send time; this module
//! drives it from the NIC's completions on a thread of its own, since the
//! verbs calls block, and adds what only the hardware needs: the NIC
//! clock's calibration to wall-clock time and the peers' queue pairs.
//!
//! Not exercised end to end here: the machines flowmesh is tested on have
//! no RDMA NIC, so CI builds this module and runs its "no device" path.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use configs::{Probing, Topology};
use node_agent_probe::drain_ready;
use node_agent_rdma::verbs::{Completion, UdQueuePair};
use node_agent_rdma::{Calibration, Endpoint, Exchange, ExchangeStats, grh};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use wire_format::{ENDPOINT_REPLY, EndpointPacket, ProbeRecord};
use zerocopy::IntoBytes;

use crate::now_ns;
use crate::probe::{RdmaEndpoint, Target, pinglist, session_config};

/// How long a peer's learnt queue pair is trusted before asking again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// How often the NIC clock is paired with the wall clock again.
const CALIBRATE_EVERY: Duration = Duration::from_secs(10);
/// Endpoint queries per probe tick, so resolving never stalls probing.
const RESOLVES_PER_TICK: usize = 4;
/// Polls of up to 32 completions each before probes are expired.
const MAX_POLLS: usize = 256;

/// The running RDMA prober; dropping it stops the thread.
pub struct RdmaProber {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<ExchangeStats>>,
}

impl Drop for RdmaProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && let Ok(stats) = thread.join()
        {
            info!(message = "RDMA probes", ?stats);
        }
    }
}

/// Opens this node's UD queue pair and starts probing, publishing the
/// endpoint through `published`. `None` when this host has no GID in the
/// topology, or no RDMA (said once, here).
pub fn start(
    me: u32,
    topology: watch::Receiver<Arc<Topology>>,
    probing: &Probing,
    published: RdmaEndpoint,
    records: mpsc::Sender<ProbeRecord>,
) -> Option<RdmaProber> {
    let gid = topology.borrow().node(me).and_then(|n| n.rdma_gids.first().copied())?;
    let qp = match UdQueuePair::open(gid, probing.rdma_qkey) {
        Ok(qp) => qp,
        // The topology says this node has RDMA, so its absence is worth a
        // warning (once, here).
        Err(e) if e.is_absent() => {
            warn!(message = "no RDMA on this host; probing over UDP only", reason = %e);
            return None;
        }
        Err(e) => {
            warn!(message = "RDMA probes not started; probing over UDP only", error = %e);
            return None;
        }
    };
    published.set(qp.qpn(), qp.qkey(), gid);
    info!(
        message = "probing over RDMA UD",
        gid = %wire_format::Gid(gid),
        qpn = qp.qpn(),
        nic_timestamps = qp.clock().is_some()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let driver = Driver {
        me,
        probing: probing.clone(),
        topology,
        records,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("rdma-probes".into())
        .spawn(move || driver.run(qp))
        .ok()?;
    Some(RdmaProber {
        stop,
        thread: Some(thread),
    })
}

struct Driver {
    me: u32,
    probing: Probing,
    topology: watch::Receiver<Arc<Topology>>,
    records: mpsc::Sender<ProbeRecord>,
    stop: Arc<AtomicBool>,
}

impl Driver {
    fn run(self, mut qp: UdQueuePair) -> ExchangeStats {
        let p = &self.probing;
        let me = Endpoint {
            node: self.me,
            gid: qp.gid(),
            qpn: qp.qpn(),
            qkey: qp.qkey(),
        };
        let mut exchange = Exchange::new(me, p.dscp, session_config(p), Instant::now());
        let mut resolver = Resolver::default();
        let mut calibration: Option<(Calibration, Instant)> = None;
        while !self.stop.load(Ordering::Relaxed) {
            if calibration.is_none_or(|(_, at)| at.elapsed() >= CALIBRATE_EVERY) {
                calibration = qp
                    .clock()
                    .zip(qp.read_clock().ok())
                    .map(|(clock, ticks)| (Calibration::new(clock, ticks, now_ns()), Instant::now()));
            }
            let wall = |ticks: Option<u64>| match (ticks, calibration) {
                (Some(t), Some((c, _))) => c.wall_ns(t),
                _ => now_ns(),
            };
            let outgoing = exchange.schedule(Instant::now(), now_ns(), |round| {
                let current = Arc::clone(&self.topology.borrow());
                let targets: Vec<(Target, [u8; 16])> = pinglist(&current, self.me, p.port, p.inter_rack_peers, round)
                    .into_iter()
                    .filter_map(|t| Some((t, current.node(t.node)?.rdma_gids.first().copied()?)))
                    .collect();
                resolver.resolve(&targets);
                // Only peers whose queue pair is known can be probed; the
                // tick's budget goes to them.
                targets.iter().filter_map(|(t, _)| resolver.endpoint(t.node)).collect()
            });
            for out in outgoing {
                if let Err(e) = qp.send(&out, p.dscp) {
                    warn!(message = "RDMA probe send failed", node = out.to.node, error = %e);
                    // Its completion will never come: settle it as an error.
                    exchange.sent(Instant::now(), out.wr_id, u32::MAX, now_ns());
                }
            }
            let wait = exchange
                .poll_timeout()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            match qp.wait(wait) {
                Ok(completions) => handle(&mut exchange, &mut qp, completions, p.dscp, wall),
                Err(e) => {
                    warn!(message = "RDMA completion queue", error = %e);
                    std::thread::sleep(wait);
                }
            }
            // Every completion already queued is handled before probes are
            // expired: a reply is in time by its completion timestamp, so
            // a thread stalled past the timeout must not time out probes
            // whose replies wait in the queue.
            let drained_at = drain_ready(MAX_POLLS, Instant::now, || match qp.wait(Duration::ZERO) {
                Ok(completions) if !completions.is_empty() => {
                    handle(&mut exchange, &mut qp, completions, p.dscp, wall);
                    true
                }
                _ => false,
            });
            exchange.expire(drained_at);
            for record in exchange.drain_records() {
                if self.records.blocking_send(record.to_record()).is_err() {
                    return exchange.stats();
                }
            }
        }
        exchange.stats()
    }
}

/// Hands `completions` to the exchange, posting the replies and follow-ups
/// it asks for; `wall` turns a completion timestamp into wall-clock ns.
fn handle(
    exchange: &mut Exchange,
    qp: &mut UdQueuePair,
    completions: Vec<Completion>,
    dscp: u8,
    wall: impl Fn(Option<u64>) -> u64,
) {
    for completion in completions {
        let answer = match completion {
            Completion::Sent {
                wr_id,
                status,
                timestamp,
            } => exchange.sent(Instant::now(), wr_id, status, wall(timestamp)),
            Completion::Received {
                status: 0,
                src_qp,
                timestamp,
                bytes,
            } => grh::split(&bytes, bytes.len())
                .and_then(|(gid, payload)| exchange.received(Instant::now(), gid, src_qp, payload, wall(timestamp))),
            Completion::Received { .. } => None,
        };
        if let Some(out) = answer
            && let Err(e) = qp.send(&out, dscp)
        {
            warn!(message = "RDMA reply send failed", error = %e);
        }
    }
}

/// Peers' UD endpoints, learnt from their UDP responders.
#[derive(Default)]
struct Resolver {
    socket: Option<UdpSocket>,
    known: HashMap<u32, (Endpoint, Instant)>,
    asked: HashMap<u32, Instant>,
}

impl Resolver {
    fn endpoint(&self, node: u32) -> Option<Endpoint> {
        self.known.get(&node).map(|(e, _)| *e)
    }

    /// Asks a few of the targets whose endpoint is unknown or old, and
    /// reads whatever answers have come in.
    fn resolve(&mut self, targets: &[(Target, [u8; 16])]) {
        let socket = match &self.socket {
            Some(s) => s,
            None => {
                let bind = if targets.first().is_some_and(|(t, _)| t.addr.is_ipv6()) {
                    SocketAddr::from(([0u16; 8], 0))
                } else {
                    SocketAddr::from(([0, 0, 0, 0], 0))
                };
                let Ok(s) = UdpSocket::bind(bind) else { return };
                if s.set_nonblocking(true).is_err() {
                    return;
                }
                self.socket.insert(s)
            }
        };
        let mut buf = [0u8; 64];
        while let Ok((len, _)) = socket.recv_from(&mut buf) {
            let Ok(reply) = EndpointPacket::parse(&buf[..len]) else {
                continue;
            };
            if reply.kind != ENDPOINT_REPLY {
                continue;
            }
            let node = reply.node.get();
            match reply.endpoint() {
                Some((qpn, qkey, gid)) => {
                    let endpoint = Endpoint { node, gid, qpn, qkey };
                    self.known.insert(node, (endpoint, Instant::now()));
                }
                // The peer has no RDMA (now): probe it over UDP only.
                None => {
                    self.known.remove(&node);
                }
            }
        }
        let stale = |node: &u32| {
            self.known.get(node).is_none_or(|(_, at)| at.elapsed() >= RESOLVE_EVERY)
                && self.asked.get(node).is_none_or(|at| at.elapsed() >= RESOLVE_EVERY / 4)
        };
        let due: Vec<Target> = targets
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| stale(&t.node))
            .take(RESOLVES_PER_TICK)
            .collect();
        for target in due {
            let _ = socket.send_to(EndpointPacket::query(target.node).as_bytes(), target.addr);
            self.asked.insert(target.node, Instant::now());
        }
    }
}
