//! The simulated network (../shared/notes/test-hosts.md): one network
//! namespace per node with a veth into its rack's switch namespace, where a
//! Linux bridge is the top-of-rack switch; each switch has an uplink veth
//! into a spine namespace that routes between the racks.
//!
//! The address plan lives here and nowhere else: node `rRnN` is
//! 198.18.R.N/24, the rack's sampler 198.18.R.250 on the switch's bridge,
//! the spine 198.18.R.254 on each rack's segment and 198.18.0.1 (the
//! collector's and Prometheus's address) on its loopback. There is no
//! default route anywhere, so nothing can leave the box.
//!
//! [`Network`] is the cleanup guard of what it builds: dropping it deletes
//! the namespaces (with their links, qdiscs and nftables tables) and the
//! nodes' cgroups, also after a build that failed half-way.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::harness::{cgroup_root, run};

/// The spine's own address: the collector and Prometheus listen there.
pub(super) const SPINE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Every simulated address, and the only route anywhere.
pub(super) const SIMULATED: &str = "198.18.0.0/15";

/// The address of rack `rack`'s sampler, on its switch's bridge.
pub(super) fn sampler_ip(rack: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, octet(rack), 250)
}

/// The spine's address on rack `rack`'s segment: its nodes' gateway.
pub(super) fn gateway(rack: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, octet(rack), 254)
}

/// The spine's interface to rack `rack`'s uplink.
pub(super) fn spine_port(rack: u32) -> String {
    format!("r{rack}")
}

/// The switch's bridge port to node `index` of its rack.
pub(super) fn switch_port(index: u32) -> String {
    format!("n{index}")
}

/// One byte of an address; `Options` keeps racks and nodes far below 250.
fn octet(n: u32) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// Runs `ip -n ns args…`: ip(8) on namespace `ns`'s links, addresses and
/// routes.
pub(super) fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    run(&[&["ip", "-n", ns], args].concat())
}

/// `nsenter` into namespace `ns`'s network, ready for a program and its
/// arguments. nsenter, not `ip netns exec`: that mounts a fresh /sys,
/// hiding the cgroup v2 tree the agents attach to. nsenter execs the
/// program, so the child's PID is the program's.
pub(super) fn nsenter(ns: &str) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{ns}"));
    command
}

/// Runs `f` on a thread inside network namespace `ns`: sockets it opens
/// and processes it starts live there (the ClickHouse cluster on the spine,
/// and reading it).
pub(super) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // Only this thread moves: setns applies to the calling thread.
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
    })
}

/// A node of the simulation.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// Its rack, from 1.
    pub(super) rack: u32,
    /// Its index in the rack, from 1.
    pub(super) index: u32,
    /// Its network namespace.
    pub(super) ns: String,
    /// The cgroup its agent traces and its traffic runs in.
    pub(super) cgroup: PathBuf,
}

impl Node {
    /// Its id in the topology.
    pub(super) fn id(&self) -> u32 {
        self.rack * 100 + self.index
    }

    /// Its name in the topology and in the analyzer's verdicts.
    pub(super) fn name(&self) -> String {
        format!("r{}n{}", self.rack, self.index)
    }

    /// Its address.
    pub(super) fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, octet(self.rack), octet(self.index))
    }
}

/// The namespaces, links and cgroups of a simulation; dropping it removes
/// them.
pub(super) struct Network {
    /// Prefix of every namespace and cgroup name of this run.
    pub(super) tag: String,
    /// Racks, numbered from 1.
    pub(super) racks: u32,
    /// Every node, rack by rack.
    pub(super) nodes: Vec<Node>,
    /// Namespaces created so far, to delete.
    namespaces: Vec<String>,
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for node in &self.nodes {
            let _ = std::fs::remove_dir(&node.cgroup);
        }
    }
}

impl Network {
    /// Builds `racks` racks of `per_rack` nodes: the namespaces, bridges,
    /// uplinks, routes and one cgroup per node.
    pub(super) fn build(racks: u32, per_rack: u32) -> anyhow::Result<Network> {
        // Short and unique: namespace names show in `ip netns`, and a killed
        // run's leftovers never collide with this one.
        let tag = format!(
            "fs{:x}",
            ((rack_sampler::now_ns() / 1_000) ^ u64::from(std::process::id())) & 0xf_ffff
        );
        let cgroot = cgroup_root()?;
        // Built into the guard step by step, so a failure removes what
        // exists so far.
        let mut net = Network {
            tag,
            racks,
            nodes: Vec::new(),
            namespaces: Vec::new(),
        };
        let spine = net.spine();
        net.add_ns(&spine)?;
        ip(&spine, &["addr", "add", &format!("{SPINE_IP}/32"), "dev", "lo"])?;
        run(&["ip", "netns", "exec", &spine, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for r in 1..=racks {
            let switch = net.switch(r);
            net.add_ns(&switch)?;
            ip(&switch, &["link", "add", "br0", "type", "bridge"])?;
            ip(&switch, &["link", "set", "br0", "up"])?;
            let rack_if = spine_port(r);
            run(&[
                "ip", "link", "add", "uplink", "netns", &switch, "type", "veth", "peer", "name", &rack_if, "netns",
                &spine,
            ])?;
            ip(&switch, &["link", "set", "uplink", "master", "br0", "up"])?;
            let gateway = gateway(r).to_string();
            ip(&spine, &["addr", "add", &format!("{gateway}/24"), "dev", &rack_if])?;
            ip(&spine, &["link", "set", &rack_if, "up"])?;
            // The sampler's address is on the bridge itself.
            let sampler = format!("{}/24", sampler_ip(r));
            ip(&switch, &["addr", "add", &sampler, "dev", "br0"])?;
            ip(&switch, &["route", "add", SIMULATED, "via", &gateway])?;
            for n in 1..=per_rack {
                let node = Node {
                    rack: r,
                    index: n,
                    ns: format!("{}r{r}n{n}", net.tag),
                    cgroup: cgroot.join(format!("flowmesh-{}-r{r}n{n}", net.tag)),
                };
                net.add_ns(&node.ns)?;
                let port = switch_port(n);
                run(&[
                    "ip", "link", "add", "eth0", "netns", &node.ns, "type", "veth", "peer", "name", &port, "netns",
                    &switch,
                ])?;
                ip(&switch, &["link", "set", &port, "master", "br0", "up"])?;
                ip(&node.ns, &["addr", "add", &format!("{}/24", node.ip()), "dev", "eth0"])?;
                ip(&node.ns, &["link", "set", "eth0", "up"])?;
                ip(&node.ns, &["route", "add", SIMULATED, "via", &gateway])?;
                std::fs::create_dir(&node.cgroup)
                    .with_context(|| format!("creating cgroup {}", node.cgroup.display()))?;
                net.nodes.push(node);
            }
        }
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(ns, &["link", "set", "lo", "up"])
    }

    /// The spine's namespace.
    pub(super) fn spine(&self) -> String {
        format!("{}sp", self.tag)
    }

    /// Rack `rack`'s switch namespace.
    pub(super) fn switch(&self, rack: u32) -> String {
        format!("{}t{rack}", self.tag)
    }

    /// Nodes per rack.
    pub(super) fn per_rack(&self) -> u32 {
        self.nodes.len() as u32 / self.racks.max(1)
    }

    /// Node `index` of rack `rack`, both from 1.
    pub(super) fn node(&self, rack: u32, index: u32) -> &Node {
        &self.nodes[((rack - 1) * self.per_rack() + index - 1) as usize]
    }

    /// Whether `ns` is one of this network's namespaces.
    #[cfg(test)]
    fn owns(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == ns)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use super::*;

    /// What a TCP connect from namespace `ns` to `to` port 7 meets (bash's
    /// /dev/tcp, so no server and no extra tool is needed): "Connection
    /// refused" means the packet reached the host and it answered.
    fn connect_from(ns: &str, to: Ipv4Addr) -> String {
        let out = nsenter(ns)
            .args(["timeout", "5", "bash", "-c", &format!("exec 3<>/dev/tcp/{to}/7")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn netns_list() -> String {
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned()
    }

    /// Needs root, `ip` and a cgroup v2 hierarchy, as the simulation does.
    #[test]
    fn racks_route_through_the_spine_only_and_leave_nothing_behind() {
        let net = Network::build(3, 2).unwrap();
        assert_eq!(net.nodes.len(), 6);
        assert_eq!(net.per_rack(), 2);
        let far = net.node(3, 2);
        assert_eq!(
            (far.name(), far.ip(), far.id()),
            ("r3n2".into(), Ipv4Addr::new(198, 18, 3, 2), 302)
        );
        assert!(net.owns(&net.spine()) && net.owns(&net.switch(3)) && net.owns(&far.ns));
        assert!(far.cgroup.is_dir());

        let from = &net.node(1, 1).ns;
        for to in [far.ip(), net.node(1, 2).ip(), SPINE_IP] {
            let said = connect_from(from, to);
            assert!(said.contains("Connection refused"), "{to}: {said}");
        }
        let said = connect_from(from, Ipv4Addr::new(192, 0, 2, 1));
        assert!(said.contains("Network is unreachable"), "{said}");

        let (tag, cgroups): (String, Vec<PathBuf>) =
            (net.tag.clone(), net.nodes.iter().map(|n| n.cgroup.clone()).collect());
        assert!(netns_list().contains(&tag));
        drop(net);
        assert!(!netns_list().contains(&tag), "{}", netns_list());
        assert!(cgroups.iter().all(|c| !c.exists()));
    }
}
