//! Whom a node probes: every other node of its rack, and a rotating window
//! of each other rack's nodes ([`pinglist`]); and the probe session's
//! settings from the agent's `probes` configuration.

use std::net::SocketAddr;
use std::time::Duration;

use configs::{Probing, Topology};
use node_agent_probe::{Peer, SessionConfig};
use wire_format::ProbeAddr;

/// One node to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Its node id.
    pub node: u32,
    /// Where its responder listens.
    pub addr: SocketAddr,
}

impl Peer for Target {
    fn node(&self) -> u32 {
        self.node
    }

    fn addr(&self) -> ProbeAddr {
        ProbeAddr::Ip(self.addr.ip())
    }

    fn port(&self) -> u32 {
        self.addr.port().into()
    }
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

/// The probe session's pacing and timeout settings from `probes`.
pub fn session_config(probing: &Probing) -> SessionConfig {
    SessionConfig {
        interval: Duration::from_millis(probing.interval_ms),
        timeout: Duration::from_millis(probing.timeout_ms),
        rotate_secs: probing.rotate_secs,
        max_probes_per_sec: probing.max_probes_per_sec,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use node_agent_probe::{Local, ProbeSession, ResponderSendTime, per_tick_budget};
    use wire_format::Transport;

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

    /// Node 1 001 probing over UDP, as the prober sets it up.
    fn local() -> Local {
        Local {
            node: 1_001,
            transport: Transport::Udp,
            addr: ProbeAddr::Ip("10.1.0.2".parse().unwrap()),
            port: 40_000,
            dscp: 0,
            responder_send_time: ResponderSendTime::InReply,
        }
    }

    /// A session driven as the UDP prober drives it, on a virtual clock:
    /// inter-rack peers rotate every `rotate_secs`, and over three rounds
    /// every node of the other racks has been probed; the in-rack peers are
    /// probed every tick.
    #[test]
    fn a_session_rotates_the_inter_rack_peers_over_rounds() {
        let t = topology(3, 10);
        let probing = Probing {
            interval_ms: 1_000,
            rotate_secs: 60,
            inter_rack_peers: 4,
            ..Probing::default()
        };
        let t0 = Instant::now();
        let mut session: ProbeSession<Target> = ProbeSession::new(local(), session_config(&probing), t0);
        let mut by_round: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 3];
        for secs in 0..180u64 {
            let now = t0 + Duration::from_secs(secs);
            let requests = session.schedule(now, 1, |round| pinglist(&t, 1_001, probing.port, 4, round));
            // 17 targets, well under the cap of 200: the whole list each tick.
            assert_eq!(requests.len(), 17, "at {secs} s");
            assert_eq!(requests.iter().filter(|r| r.peer.node / 1_000 == 1).count(), 9);
            by_round[(secs / 60) as usize].extend(requests.iter().map(|r| r.peer.node));
            session.expire(now);
        }
        let inter_rack = |round: usize| by_round[round].iter().filter(|&&n| n / 1_000 != 1).count();
        assert_eq!((inter_rack(0), inter_rack(1), inter_rack(2)), (8, 8, 8));
        assert_ne!(by_round[0], by_round[1]);
        let all: BTreeSet<u32> = by_round.iter().flatten().copied().collect();
        assert_eq!(all.len(), 29, "every other node over three rounds");
        assert_eq!(session.stats().rate_limited, 0);
    }

    /// Under a cap below the pinglist's length, successive ticks cover it
    /// slice by slice, and the rest are counted as rate-limited.
    #[test]
    fn under_a_tight_cap_ticks_cover_the_pinglist_in_turn() {
        let t = topology(3, 10);
        let probing = Probing {
            interval_ms: 1_000,
            max_probes_per_sec: 5,
            inter_rack_peers: 4,
            ..Probing::default()
        };
        let t0 = Instant::now();
        let mut session: ProbeSession<Target> = ProbeSession::new(local(), session_config(&probing), t0);
        let mut seen = BTreeSet::new();
        for secs in 0..4u64 {
            let requests = session.schedule(t0 + Duration::from_secs(secs), 1, |round| {
                pinglist(&t, 1_001, probing.port, 4, round)
            });
            assert_eq!(requests.len(), 5);
            seen.extend(requests.iter().map(|r| r.peer.node));
        }
        assert_eq!(seen.len(), 17, "the whole list of 17 in four ticks of 5");
        assert_eq!(session.stats().rate_limited, 4 * 12);
    }
}
