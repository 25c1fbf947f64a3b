//! The fault classes, each with how it is injected into the simulated
//! network, how it is cleared, and what the analyzer must name for it:
//! - host down: the node's link goes down;
//! - host NIC loss: nftables drops 30 % of what arrives at the node;
//! - rack uplink loss: nftables on the spine drops 30 % of what crosses the
//!   rack's uplink, either way;
//! - rack-pair queueing delay: on the spine, traffic from one rack to the
//!   other goes through an HTB class limited to 2 Mbit/s with a tbf queue,
//!   filled by a UDP stream between the two racks (no netem here: the delay
//!   comes from a real queue);
//! - TCP retransmissions: the node's switch port drops 10 % of its TCP
//!   segments, both ways (probes unaffected);
//! - one-directional path loss: the spine drops 30 % of what one host sends
//!   to one host of another rack, that way only (a bad ECMP member, an
//!   ACL): probes both ways see it (a round trip crosses it once), TCP only
//!   on the flows sending that way;
//! - a flapping host: its link goes down for 10 s and up for 10 s, three
//!   times — one incident, not three;
//! - a sampler crash: a rack's sampler is killed (SIGKILL) and restarted on
//!   its spool 3 s later — the window it restarted in must read incomplete
//!   (a telemetry gap), not complete.
//!
//! Every change a fault makes lives in a namespace of the simulation (an
//! nftables table `fmfault`, a qdisc, a link state) or in a process the
//! simulation owns, so deleting the namespaces removes a fault that was
//! never cleared.

use std::fmt;
use std::net::SocketAddr;

use super::daemons::Daemons;
use super::namespaces::{Network, SIMULATED, gateway, ip, spine_port, switch_port};
use super::traffic;
use crate::harness::run;

/// The fault classes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// A host's link goes down.
    HostDown,
    /// 30 % loss at a host's NIC (input).
    NicLoss,
    /// 30 % loss on a rack's uplink.
    UplinkLoss,
    /// Queueing delay between two racks (HTB + tbf, filled by a UDP stream).
    RackPairDelay,
    /// 10 % of a host's TCP segments dropped at its switch port.
    TcpRetrans,
    /// 30 % loss from one host to one host of another rack, one way.
    PathLoss,
    /// A host's link down 10 s, up 10 s, three times.
    HostFlap,
    /// A rack's sampler killed (SIGKILL) and restarted 3 s later.
    SamplerCrash,
}

/// Port the delay fault's UDP stream is sent to (nothing listens).
const DISCARD_PORT: u16 = 9;

impl FaultKind {
    /// Every fault class, in the order a run injects them by default.
    pub(super) const ALL: [FaultKind; 8] = [
        FaultKind::HostDown,
        FaultKind::NicLoss,
        FaultKind::UplinkLoss,
        FaultKind::RackPairDelay,
        FaultKind::TcpRetrans,
        FaultKind::PathLoss,
        FaultKind::HostFlap,
        FaultKind::SamplerCrash,
    ];

    /// The rack whose sampler crashes (its sampler id is the rack's).
    pub(super) const CRASHED_RACK: u32 = 2;

    /// The host whose link flaps, and its cycles (down, then up).
    const FLAP_NODE: (u32, u32) = (2, 3);
    const FLAP_CYCLES: u32 = 3;
    const FLAP_HALF_SECS: u32 = 10;

    /// How long the fault must stay before it is cleared: a flapping host
    /// flaps all its cycles.
    pub(super) fn min_hold(self) -> std::time::Duration {
        match self {
            FaultKind::HostFlap => {
                std::time::Duration::from_secs(u64::from(2 * Self::FLAP_CYCLES * Self::FLAP_HALF_SECS))
            }
            _ => std::time::Duration::ZERO,
        }
    }

    /// Injects the fault; returns what the analyzer should name.
    pub(super) fn inject(self, net: &Network, daemons: &mut Daemons) -> anyhow::Result<Expected> {
        let racks = net.racks;
        match self {
            FaultKind::HostDown => {
                let node = net.node(2, 2);
                ip(&node.ns, &["link", "set", "eth0", "down"])?;
                Ok(Expected::new("host", node.name()))
            }
            FaultKind::NicLoss => {
                let node = net.node(1, 3);
                nft(&node.ns, &nic_loss_ruleset())?;
                Ok(Expected::new("host", node.name()))
            }
            FaultKind::UplinkLoss => {
                nft(&net.spine(), &uplink_loss_ruleset(&spine_port(racks)))?;
                Ok(Expected::new("rack", format!("rack{racks}")))
            }
            FaultKind::RackPairDelay => {
                let spine = net.spine();
                // Traffic from rack 1 into rack 2 shares a 2 Mbit/s class
                // whose tbf queue holds up to 80 ms; a 4 Mbit/s UDP stream
                // keeps it full. Probes either way between the two racks
                // cross it (the request or the reply); other pairs do not.
                for args in [
                    "qdisc add dev r2 root handle 1: htb default 10",
                    "class add dev r2 parent 1: classid 1:10 htb rate 1gbit",
                    "class add dev r2 parent 1: classid 1:20 htb rate 2mbit ceil 2mbit",
                    "qdisc add dev r2 parent 1:20 handle 20: tbf rate 2mbit burst 16kbit latency 80ms",
                    "filter add dev r2 parent 1: protocol ip u32 match ip src 198.18.1.0/24 flowid 1:20",
                ] {
                    let mut full = vec!["tc", "-n", &spine];
                    full.extend(args.split(' '));
                    run(&full)?;
                }
                let to = SocketAddr::from((net.node(2, 1).ip(), DISCARD_PORT));
                traffic::start_blast(daemons, net.node(1, 1), to, 4_000)?;
                Ok(Expected::new("rack_pair", "rack1↔rack2".into()))
            }
            FaultKind::TcpRetrans => {
                let node = net.node(racks, 1);
                nft(&net.switch(racks), &tcp_retrans_ruleset(&switch_port(node.index)))?;
                Ok(Expected::new("host", node.name()))
            }
            FaultKind::PathLoss => {
                let (from, to) = (net.node(1, 2), net.node(racks, 2));
                nft(
                    &net.spine(),
                    &path_loss_ruleset(&from.ip().to_string(), &to.ip().to_string()),
                )?;
                // The direction comes from TCP (retransmissions one way
                // only); in a window where TCP cannot tell, the pair is
                // named both ways, still the right element.
                Ok(Expected {
                    also: Some(format!("{}↔{}", from.name(), to.name())),
                    ..Expected::new("node_pair", format!("{}→{}", from.name(), to.name()))
                })
            }
            FaultKind::HostFlap => {
                let (rack, index) = Self::FLAP_NODE;
                let node = net.node(rack, index);
                // A shell on the host flaps its own link; taking it down
                // removes the route through it, so each up restores that.
                let script = format!(
                    "for i in $(seq {cycles}); do ip link set eth0 down; sleep {half}; \
                     ip link set eth0 up; ip route replace {SIMULATED} via {via}; sleep {half}; done",
                    cycles = Self::FLAP_CYCLES,
                    half = Self::FLAP_HALF_SECS,
                    via = gateway(rack),
                );
                let args = ["-c".to_string(), script];
                daemons.spawn_transient("host-flap", &node.ns, std::path::Path::new("sh"), &args)?;
                Ok(Expected::new("host", node.name()))
            }
            FaultKind::SamplerCrash => {
                let rack = Self::CRASHED_RACK;
                daemons.stop_sampler(rack, true)?;
                std::thread::sleep(std::time::Duration::from_secs(3));
                daemons.start_sampler(net, rack)?;
                Ok(Expected::new("telemetry_gap", net.node(rack, 1).name()))
            }
        }
    }

    /// Clears the fault.
    pub(super) fn clear(self, net: &Network, daemons: &mut Daemons) -> anyhow::Result<()> {
        let racks = net.racks;
        match self {
            FaultKind::HostDown => {
                let ns = &net.node(2, 2).ns;
                ip(ns, &["link", "set", "eth0", "up"])?;
                // Taking the link down removed the route through it.
                let via = gateway(2).to_string();
                ip(ns, &["route", "replace", SIMULATED, "via", &via])
            }
            FaultKind::NicLoss => delete_table(&net.node(1, 3).ns, "inet"),
            FaultKind::UplinkLoss => delete_table(&net.spine(), "inet"),
            FaultKind::RackPairDelay => {
                daemons.stop_transient();
                run(&["tc", "-n", &net.spine(), "qdisc", "del", "dev", "r2", "root"])
            }
            FaultKind::TcpRetrans => delete_table(&net.switch(racks), "bridge"),
            FaultKind::PathLoss => delete_table(&net.spine(), "inet"),
            FaultKind::HostFlap => {
                daemons.stop_transient();
                let (rack, index) = Self::FLAP_NODE;
                let ns = &net.node(rack, index).ns;
                ip(ns, &["link", "set", "eth0", "up"])?;
                let via = gateway(rack).to_string();
                ip(ns, &["route", "replace", SIMULATED, "via", &via])
            }
            // Restarted when injected.
            FaultKind::SamplerCrash => Ok(()),
        }
    }
}

/// Drops 30 % of what the spine forwards from `from` to `to` (that way
/// only).
fn path_loss_ruleset(from: &str, to: &str) -> String {
    format!(
        "table inet fmfault {{\n chain fault {{\n  type filter hook forward priority 0\n  \
         ip saddr {from} ip daddr {to} numgen random mod 100 < 30 drop\n }}\n}}\n"
    )
}

/// Drops 30 % of what arrives at a host.
fn nic_loss_ruleset() -> String {
    "table inet fmfault {\n chain in {\n  type filter hook input priority 0\n  \
     numgen random mod 100 < 30 drop\n }\n}\n"
        .to_string()
}

/// Drops 30 % of what the spine forwards through interface `port`, either
/// way.
fn uplink_loss_ruleset(port: &str) -> String {
    format!(
        "table inet fmfault {{\n chain fault {{\n  type filter hook forward priority 0\n  \
         iifname \"{port}\" numgen random mod 100 < 30 drop\n  \
         oifname \"{port}\" numgen random mod 100 < 30 drop\n }}\n}}\n"
    )
}

/// Drops 10 % of the TCP segments a bridge forwards through `port`, either
/// way.
fn tcp_retrans_ruleset(port: &str) -> String {
    format!(
        "table bridge fmfault {{\n chain fault {{\n  type filter hook forward priority 0\n  \
         iifname \"{port}\" meta l4proto tcp numgen random mod 100 < 10 drop\n  \
         oifname \"{port}\" meta l4proto tcp numgen random mod 100 < 10 drop\n }}\n}}\n"
    )
}

/// Loads an nftables ruleset in namespace `ns`.
fn nft(ns: &str, ruleset: &str) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), ruleset)?;
    let path = file.path().display().to_string();
    run(&["ip", "netns", "exec", ns, "nft", "-f", &path])
}

/// Deletes the fault's nftables table of `family` in namespace `ns`.
fn delete_table(ns: &str, family: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "exec", ns, "nft", "delete", "table", family, "fmfault"])
}

/// What the analyzer should name for a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Expected {
    /// The kind of element: "host", "rack", "rack_pair", "node_pair", or
    /// "telemetry_gap" for a node whose telemetry must read incomplete.
    pub(super) kind: &'static str,
    /// Its name, as the analyzer's report writes it.
    pub(super) element: String,
    /// Another name of the same element the analyzer may use (a node pair
    /// named both ways when TCP shows no direction).
    pub(super) also: Option<String>,
}

impl Expected {
    fn new(kind: &'static str, element: String) -> Expected {
        Expected {
            kind,
            element,
            also: None,
        }
    }

    /// Whether `kind` and `element` name it.
    pub(super) fn is(&self, kind: &str, element: &str) -> bool {
        kind == self.kind && (element == self.element || self.also.as_deref() == Some(element))
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.element)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use super::*;

    /// Every ruleset is one nft accepts (checked, not loaded: `nft -c`).
    /// Needs root and nft, as the simulation does.
    #[test]
    fn every_ruleset_passes_nfts_check() {
        for ruleset in [
            nic_loss_ruleset(),
            uplink_loss_ruleset(&spine_port(3)),
            tcp_retrans_ruleset(&switch_port(1)),
            path_loss_ruleset("198.18.1.2", "198.18.3.2"),
        ] {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &ruleset).unwrap();
            let path = file.path().display().to_string();
            run(&["nft", "-c", "-f", &path]).unwrap_or_else(|e| panic!("{e}\n{ruleset}"));
        }
    }

    #[test]
    fn an_expected_element_reads_as_the_analyzer_names_it() {
        assert_eq!(
            Expected::new("rack_pair", "rack1↔rack2".into()).to_string(),
            "rack_pair rack1↔rack2"
        );
    }

    #[test]
    fn all_lists_every_fault_class() {
        use clap::ValueEnum;
        assert_eq!(FaultKind::ALL.as_slice(), FaultKind::value_variants());
    }
}
