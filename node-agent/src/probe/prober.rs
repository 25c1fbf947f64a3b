//! The UDP prober: a thin driver of the shared probe session
//! ([`ProbeSession`]) over a UDP socket. It sleeps until the session's next
//! tick or deadline, or until a datagram arrives; then it hands the session
//! every datagram waiting in the socket with the kernel's receive time,
//! expires what is overdue, sends the requests the session schedules
//! (stamping t1 just before each send), and forwards the records and
//! counters. Pacing, sequence numbers, timeouts, late and duplicate replies
//! are the session's, and unit-tested there on a virtual clock.
//!
//! Replies are read before probes are expired, every time: whether a reply
//! is in time is the kernel's receive time against t1, so an agent stalled
//! past the timeout must still read the replies the kernel took in on time
//! before it times their probes out — or its own stall would be reported as
//! network loss.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use configs::{Probing, Topology};
use node_agent_probe::{Local, ProbeSession, ResponderSendTime, drain_ready};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use wire_format::{ProbeAddr, ProbeRecord, Transport};
use zerocopy::IntoBytes;

use super::pinglist::{Target, pinglist, session_config};
use super::socket::try_recv_stamped;
use super::stats::{ProbeStats, lock};
use crate::now_ns;

/// The error code of a probe whose send failed at once (no route,
/// refused): the records of UDP probes carry 1 rather than the errno.
const SEND_FAILED: u16 = 1;
/// Datagrams read in one pass before probes are expired: a bound on the
/// pass, far above what a pinglist's replies fill between two wake-ups.
const MAX_READS: usize = 4_096;

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
    topology: watch::Receiver<Arc<Topology>>,
    settings: ProberSettings,
    records: mpsc::Sender<ProbeRecord>,
    stats: Arc<Mutex<ProbeStats>>,
) {
    let p = &settings.probing;
    let local = Local {
        node: settings.me,
        transport: Transport::Udp,
        addr: ProbeAddr::Ip(settings.local),
        port: socket.local_addr().map_or(0, |a| a.port()).into(),
        dscp: p.dscp,
        responder_send_time: ResponderSendTime::InReply,
    };
    let mut session: ProbeSession<Target> = ProbeSession::new(local, session_config(p), Instant::now());
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(session.poll_timeout().into()) => {}
            // Readable, or an error: the reads below find out either way.
            _ = socket.readable() => {}
        }
        let before = session.stats();
        let drained_at = drain_ready(MAX_READS, Instant::now, || {
            match try_recv_stamped(&socket, &mut buf) {
                Ok((len, _, received_ns)) => {
                    session.on_reply(&buf[..len], received_ns);
                    true
                }
                // Empty. Any other error came with a datagram the kernel
                // dropped (or will report again): keep reading.
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        });
        session.expire(drained_at);
        let requests = session.schedule(Instant::now(), now_ns(), |round| {
            pinglist(&topology.borrow(), settings.me, p.port, p.inter_rack_peers, round)
        });
        for request in requests {
            let t1 = now_ns();
            match socket.send_to(request.packet.as_bytes(), request.peer.addr).await {
                Ok(_) => session.sent(request.key, t1),
                Err(_) => session.send_failed(request.key, SEND_FAILED),
            }
        }
        lock(&stats).add(&session.stats().since(&before));
        for record in session.drain_records() {
            let _ = records.send(record.to_record()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wire_format::ProbeOutcome;

    use super::*;
    use crate::probe::responder::{RdmaEndpoint, respond};
    use crate::probe::socket::bind;

    /// The driver on real loopback sockets: node 1 probes node 2, whose
    /// responder answers, and node 3, where nobody listens; records and
    /// counters come out of the session as they should.
    #[tokio::test]
    async fn the_udp_driver_probes_answers_and_times_out_on_loopback() {
        let responder = bind("127.0.0.2:0".parse().unwrap(), 0).await.unwrap();
        let port = responder.local_addr().unwrap().port();
        let topology = Topology::parse(
            "[[racks]]\nid = 1\nname = \"rack1\"\n\
             [[nodes]]\nid = 1\nname = \"n1\"\nrack = \"rack1\"\naddresses = [\"127.0.0.1\"]\n\
             [[nodes]]\nid = 2\nname = \"n2\"\nrack = \"rack1\"\naddresses = [\"127.0.0.2\"]\n\
             [[nodes]]\nid = 3\nname = \"n3\"\nrack = \"rack1\"\naddresses = [\"127.0.0.3\"]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let stats = Arc::new(Mutex::new(ProbeStats::default()));
        let responding = tokio::spawn(respond(Arc::new(responder), 2, RdmaEndpoint::default(), stats.clone()));
        let (_topology_tx, topology_rx) = watch::channel(Arc::new(topology));
        let (tx, mut rx) = mpsc::channel(64);
        let settings = ProberSettings {
            me: 1,
            local: "127.0.0.1".parse().unwrap(),
            probing: Probing {
                port,
                interval_ms: 20,
                timeout_ms: 200,
                ..Probing::default()
            },
        };
        let socket = bind("127.0.0.1:0".parse().unwrap(), 0).await.unwrap();
        let probing = tokio::spawn(probe(socket, topology_rx, settings, tx, stats.clone()));
        let mut answered = 0;
        let mut timed_out = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while answered < 5 || timed_out < 2 {
            let record = tokio::time::timeout_at(until, rx.recv())
                .await
                .expect("records within 10 s")
                .expect("the prober runs");
            match (record.dst_node.get(), record.outcome()) {
                (2, ProbeOutcome::Ok) => {
                    answered += 1;
                    assert!(record.network_rtt_ns().is_some_and(|rtt| rtt < 100_000_000));
                    assert!(record.responder_delay_ns().is_some());
                }
                (3, ProbeOutcome::Timeout) => timed_out += 1,
                other => panic!("unexpected record {other:?}: {record:?}"),
            }
        }
        probing.abort();
        responding.abort();
        let s = *lock(&stats);
        assert!(s.answered >= 5 && s.timed_out >= 2 && s.responded >= 5, "{s:?}");
        assert!(s.sent >= s.answered + s.timed_out, "{s:?}");
    }

    /// An agent stalled for three timeouts right after its probe went out
    /// (a CPU hog on a busy host) still records the probe as answered: the
    /// kernel received the reply in time, and the driver reads it before it
    /// expires the probe, whether its timer or its socket wakes it first.
    #[test]
    fn a_stalled_driver_reads_waiting_replies_before_it_expires_probes() {
        // A single-threaded runtime runs only while this thread blocks on
        // it: between two `block_on`s the agent is stalled.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The responder is this test, answering from a plain socket.
        let responder = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        responder.set_nonblocking(true).unwrap();
        let topology = Topology::parse(
            "[[racks]]\nid = 1\nname = \"rack1\"\n\
             [[nodes]]\nid = 1\nname = \"n1\"\nrack = \"rack1\"\naddresses = [\"127.0.0.1\"]\n\
             [[nodes]]\nid = 2\nname = \"n2\"\nrack = \"rack1\"\naddresses = [\"127.0.0.2\"]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let timeout = Duration::from_millis(200);
        let settings = ProberSettings {
            me: 1,
            local: "127.0.0.1".parse().unwrap(),
            probing: Probing {
                port: responder.local_addr().unwrap().port(),
                // One tick in this test: the first, at once.
                interval_ms: 600_000,
                timeout_ms: timeout.as_millis() as u64,
                ..Probing::default()
            },
        };
        let stats = Arc::new(Mutex::new(ProbeStats::default()));
        let (_topology_tx, topology_rx) = watch::channel(Arc::new(topology));
        let (tx, mut rx) = mpsc::channel(8);
        let socket = runtime.block_on(bind("127.0.0.1:0".parse().unwrap(), 0)).unwrap();
        let probing = runtime.spawn(probe(socket, topology_rx, settings, tx, stats.clone()));
        // Run the agent until its request is out.
        let mut buf = [0u8; 64];
        let (len, from) = runtime.block_on(async {
            for _ in 0..5_000 {
                if let Ok(got) = responder.recv_from(&mut buf) {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("no probe request within 5 s");
        });
        let request = wire_format::ProbePacket::parse(&buf[..len]).unwrap();
        let reply = request.reply(now_ns(), now_ns());
        responder.send_to(reply.as_bytes(), from).unwrap();
        // The agent stalled: the kernel holds the reply, the probe's
        // deadline passes three times over.
        std::thread::sleep(3 * timeout);
        let record = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv()).await })
            .expect("a record within 5 s")
            .expect("the prober runs");
        probing.abort();
        assert_eq!(
            (record.dst_node.get(), record.outcome()),
            (2, ProbeOutcome::Ok),
            "{record:?}"
        );
        let rtt = record.network_rtt_ns().expect("an RTT");
        assert!(rtt < timeout.as_nanos() as u64, "network RTT {rtt} ns counts the stall");
        let s = *lock(&stats);
        assert_eq!((s.answered, s.timed_out, s.late), (1, 0, 0), "{s:?}");
    }
}
