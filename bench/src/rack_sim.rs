//! `flowmesh-bench rack-sim`: racks of simulated hosts on one machine, the
//! whole pipeline running on them, faults injected one at a time, and the
//! analyzer's verdict checked for each.
//!
//! The network (../shared/notes/test-hosts.md): one network namespace per
//! node with a veth into its rack's switch namespace, where a Linux bridge
//! is the top-of-rack switch; each switch has an uplink veth into a spine
//! namespace that routes between the racks. Node `rRnN` is 198.18.R.N/24,
//! the rack's sampler 198.18.R.250 on the switch, the spine 198.18.R.254 on
//! each rack's segment and the collector 198.18.0.1 on the spine. There is
//! no default route anywhere, so nothing can leave the box.
//!
//! Every node runs a `flowmesh-agent` (its own cgroup, so it traces only
//! its node's sockets) and a traffic generator (TCP request/response to
//! every peer, and bulk transfers); every rack runs a `flowmesh-sampler`;
//! the spine runs the `flowmesh-collector` on an SQLite file.
//!
//! Faults, one at a time, each cleared before the next:
//! - host down: the node's link goes down;
//! - host NIC loss: nftables drops 30 % of what arrives at the node;
//! - rack uplink loss: nftables on the spine drops 30 % of what crosses the
//!   rack's uplink, either way;
//! - rack-pair queueing delay: on the spine, traffic from one rack to the
//!   other goes through an HTB class limited to 2 Mbit/s with a tbf queue,
//!   filled by a UDP stream between the two racks (no netem here: the delay
//!   comes from a real queue);
//! - TCP retransmissions: the node's switch port drops 10 % of its TCP
//!   segments, both ways (probes unaffected).
//!
//! After a clean period, which must yield no anomaly, each fault must be
//! named by `flowmesh-analyzer` — the right kind of element and the right
//! host, rack or rack pair — within two aggregation windows of its
//! injection; the time it took is printed. Everything is removed on exit,
//! on Ctrl-C and on failure: processes, namespaces (with their links,
//! qdiscs and nftables tables) and cgroups.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use collector_storage::{Reader, SqliteStore};
use configs::tls::DevPki;

/// Options of `flowmesh-bench rack-sim`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Racks (3 or more, so a rack's uplink and a pair of racks differ).
    #[arg(long, default_value_t = 3)]
    racks: u32,
    /// Nodes per rack.
    #[arg(long, default_value_t = 3)]
    nodes_per_rack: u32,
    /// Aggregation window of the samplers, seconds.
    #[arg(long, default_value_t = 5)]
    window_secs: u64,
    /// Seconds of clean running, after warm-up, that must yield no anomaly.
    #[arg(long, default_value_t = 120)]
    clean_secs: u64,
    /// Faults to inject, in order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// Keep each fault at least this long, seconds (it is cleared once
    /// named, or after two windows, whichever is later).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// During the clean period, stop the collector for two windows and
    /// restart it: the samplers spool and replay, and the end checks that
    /// every window is stored exactly once.
    #[arg(long)]
    collector_outage: bool,
    /// Run a Prometheus server (on the spine) scraping every daemon, and
    /// check at the end that all are up and `promtool check metrics`
    /// accepts each exposition.
    #[arg(long)]
    prometheus: bool,
    /// At the end, print the analyzer's report over the whole run and
    /// write report.json and report.html into the directory.
    #[arg(long)]
    report: bool,
    /// Keep the working directory (database, configs, logs) here; default:
    /// a temporary directory removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

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
}

const ALL_FAULTS: [FaultKind; 5] = [
    FaultKind::HostDown,
    FaultKind::NicLoss,
    FaultKind::UplinkLoss,
    FaultKind::RackPairDelay,
    FaultKind::TcpRetrans,
];

/// Port of every node's traffic-generator server.
const TRAFFIC_PORT: u16 = 8000;
/// Port the delay fault's UDP stream is sent to (nothing listens).
const DISCARD_PORT: u16 = 9;

/// Set by SIGINT/SIGTERM: every wait checks it, so the simulation stops and
/// tears down promptly.
static STOP: AtomicBool = AtomicBool::new(false);

fn pause(d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Runs a command to completion, failing with its stderr.
fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A node of the simulation.
#[derive(Debug, Clone)]
struct Node {
    rack: u32,
    index: u32,
    ns: String,
    cgroup: PathBuf,
}

impl Node {
    fn id(&self) -> u32 {
        self.rack * 100 + self.index
    }

    fn name(&self) -> String {
        format!("r{}n{}", self.rack, self.index)
    }

    fn ip(&self) -> String {
        format!("198.18.{}.{}", self.rack, self.index)
    }
}

/// The simulated network and everything running on it; dropping it stops
/// the processes and removes the namespaces and cgroups.
struct Simulation {
    tag: String,
    racks: u32,
    nodes: Vec<Node>,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    /// Processes of the current fault (the delay fault's UDP stream).
    fault_children: Vec<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

impl Drop for Simulation {
    fn drop(&mut self) {
        let all = self
            .children
            .iter_mut()
            .map(|(_, c)| c)
            .chain(self.fault_children.iter_mut());
        let mut all: Vec<&mut Child> = all.collect();
        for child in &mut all {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut all {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for node in &self.nodes {
            let _ = std::fs::remove_dir(&node.cgroup);
        }
    }
}

/// The cgroup v2 hierarchy's mount point.
pub(crate) fn cgroup_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .context("no cgroup v2 hierarchy mounted")
}

impl Simulation {
    fn ns_path(ns: &str) -> String {
        format!("--net=/run/netns/{ns}")
    }

    fn spine(&self) -> String {
        format!("{}sp", self.tag)
    }

    fn switch(&self, rack: u32) -> String {
        format!("{}t{rack}", self.tag)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])
    }

    /// Builds the namespaces, bridges, uplinks and routes.
    fn build(racks: u32, per_rack: u32, dir: PathBuf, bin: PathBuf) -> anyhow::Result<Simulation> {
        // Short and unique: namespace names show in `ip netns`, and a killed
        // run's leftovers never collide with this one.
        let tag = format!(
            "fs{:x}",
            ((now_ns() / 1_000) ^ u64::from(std::process::id())) & 0xf_ffff
        );
        let cgroot = cgroup_root()?;
        let mut sim = Simulation {
            tag,
            racks,
            nodes: Vec::new(),
            namespaces: Vec::new(),
            children: Vec::new(),
            fault_children: Vec::new(),
            dir,
            bin,
        };
        let spine = sim.spine();
        sim.add_ns(&spine)?;
        run(&["ip", "-n", &spine, "addr", "add", "198.18.0.1/32", "dev", "lo"])?;
        run(&["ip", "netns", "exec", &spine, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for r in 1..=racks {
            let switch = sim.switch(r);
            sim.add_ns(&switch)?;
            run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"])?;
            run(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
            let rack_if = format!("r{r}");
            run(&[
                "ip", "link", "add", "uplink", "netns", &switch, "type", "veth", "peer", "name", &rack_if, "netns",
                &spine,
            ])?;
            run(&["ip", "-n", &switch, "link", "set", "uplink", "master", "br0", "up"])?;
            run(&[
                "ip",
                "-n",
                &spine,
                "addr",
                "add",
                &format!("198.18.{r}.254/24"),
                "dev",
                &rack_if,
            ])?;
            run(&["ip", "-n", &spine, "link", "set", &rack_if, "up"])?;
            // The sampler's address is on the bridge itself.
            run(&[
                "ip",
                "-n",
                &switch,
                "addr",
                "add",
                &format!("198.18.{r}.250/24"),
                "dev",
                "br0",
            ])?;
            let gateway = format!("198.18.{r}.254");
            run(&["ip", "-n", &switch, "route", "add", "198.18.0.0/15", "via", &gateway])?;
            for n in 1..=per_rack {
                let node = Node {
                    rack: r,
                    index: n,
                    ns: format!("{}r{r}n{n}", sim.tag),
                    cgroup: cgroot.join(format!("flowmesh-{}-r{r}n{n}", sim.tag)),
                };
                sim.add_ns(&node.ns)?;
                let port = format!("n{n}");
                run(&[
                    "ip", "link", "add", "eth0", "netns", &node.ns, "type", "veth", "peer", "name", &port, "netns",
                    &switch,
                ])?;
                run(&["ip", "-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
                run(&[
                    "ip",
                    "-n",
                    &node.ns,
                    "addr",
                    "add",
                    &format!("{}/24", node.ip()),
                    "dev",
                    "eth0",
                ])?;
                run(&["ip", "-n", &node.ns, "link", "set", "eth0", "up"])?;
                run(&["ip", "-n", &node.ns, "route", "add", "198.18.0.0/15", "via", &gateway])?;
                std::fs::create_dir(&node.cgroup)
                    .with_context(|| format!("creating cgroup {}", node.cgroup.display()))?;
                sim.nodes.push(node);
            }
        }
        Ok(sim)
    }

    fn node(&self, rack: u32, index: u32) -> &Node {
        &self.nodes[((rack - 1) * (self.nodes.len() as u32 / self.racks) + index - 1) as usize]
    }

    /// Starts `program args…` in namespace `ns`, logging to `<name>.log`.
    fn spawn(&mut self, name: &str, ns: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        // nsenter, not `ip netns exec`: that mounts a fresh /sys, hiding
        // the cgroup v2 tree the agents attach to.
        let child = Command::new("nsenter")
            .arg(Self::ns_path(ns))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Writes the topology and configurations and starts every process.
    fn start(&mut self, window_secs: u64) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let mut topology = String::new();
        for r in 1..=self.racks {
            topology += &format!("[[racks]]\nid = {r}\nname = \"rack{r}\"\nsampler = \"198.18.{r}.250:5001\"\n\n");
        }
        for node in &self.nodes {
            topology += &format!(
                "[[nodes]]\nid = {}\nname = \"{}\"\nrack = \"rack{}\"\naddresses = [\"{}\"]\n\n",
                node.id(),
                node.name(),
                node.rack,
                node.ip()
            );
        }
        let topology = self.write("topology.toml", &topology)?;
        let samplers: Vec<String> = (1..=self.racks).map(|r| format!("rack{r}")).collect();
        DevPki::generate(&dir.join("pki"), &["localhost".to_string()], &samplers)?;
        let pki = |name: &str| dir.join("pki").join(name).display().to_string();
        let collector = self.write(
            "collector.toml",
            &format!(
                "listen = \"198.18.0.1:4433\"\ndatabase = \"{}\"\ntopology = \"{}\"\n\
                 [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[metrics]\nlisten = \"198.18.0.1:9103\"\n",
                dir.join("flowmesh.db").display(),
                topology.display(),
                pki("ca.pem"),
                pki("collector.pem"),
                pki("collector.key"),
            ),
        )?;
        let bin = self.bin.clone();
        self.start_collector(&collector)?;
        for r in 1..=self.racks {
            let config = self.write(
                &format!("sampler-rack{r}.toml"),
                &format!(
                    "sampler_id = {r}\nrack = \"rack{r}\"\ntopology = \"{}\"\n\
                     [ingest]\nlisten = [\"198.18.{r}.250:5001\"]\n\
                     [aggregate]\nwindow_secs = {window_secs}\ngrace_ms = 1000\n\
                     [uplink]\ncollector = \"198.18.0.1:4433\"\nserver_name = \"localhost\"\nspool_dir = \"{}\"\n\
                     tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n[metrics]\nlisten = \"198.18.{r}.250:9102\"\n",
                    topology.display(),
                    dir.join(format!("spool-rack{r}")).display(),
                    pki("ca.pem"),
                    pki(&format!("rack{r}.pem")),
                    pki(&format!("rack{r}.key")),
                ),
            )?;
            let switch = self.switch(r);
            self.spawn(
                &format!("sampler-rack{r}"),
                &switch,
                &bin.join("flowmesh-sampler"),
                &["--config".into(), config.display().to_string()],
            )?;
        }
        let per_rack = self.nodes.len() as u32 / self.racks;
        for node in self.nodes.clone() {
            let config = self.write(
                &format!("agent-{}.toml", node.name()),
                &format!(
                    "node_id = {}\ntopology = \"{}\"\n[flows]\ncgroup = \"{}\"\n\
                     [probes]\ninterval_ms = 100\ntimeout_ms = 500\ninter_rack_peers = {per_rack}\n\
                     [metrics]\nlisten = \"{}:9101\"\n",
                    node.id(),
                    topology.display(),
                    node.cgroup.display(),
                    node.ip()
                ),
            )?;
            self.spawn(
                &format!("agent-{}", node.name()),
                &node.ns,
                &bin.join("flowmesh-agent"),
                &["--config".into(), config.display().to_string()],
            )?;
        }
        // The agents attach to their cgroups before traffic starts, so
        // every flow is traced from its first segment.
        pause(Duration::from_secs(2))?;
        let exe = std::env::current_exe()?;
        for node in self.nodes.clone() {
            let peers: Vec<String> = self
                .nodes
                .iter()
                .filter(|p| p.id() != node.id())
                .map(|p| format!("{}:{TRAFFIC_PORT}", p.ip()))
                .collect();
            self.spawn(
                &format!("traffic-{}", node.name()),
                &node.ns,
                &exe,
                &[
                    "traffic".into(),
                    "--cgroup".into(),
                    node.cgroup.display().to_string(),
                    "--listen".into(),
                    format!("{}:{TRAFFIC_PORT}", node.ip()),
                    "--peers".into(),
                    peers.join(","),
                ],
            )?;
        }
        self.check_alive()
    }

    fn start_collector(&mut self, config: &Path) -> anyhow::Result<()> {
        let spine = self.spine();
        let program = self.bin.join("flowmesh-collector");
        self.spawn(
            "collector",
            &spine,
            &program,
            &["--config".into(), config.display().to_string()],
        )
    }

    /// Stops the collector (SIGTERM, as an operator would) and forgets it.
    fn stop_collector(&mut self) -> anyhow::Result<()> {
        let at = self
            .children
            .iter()
            .position(|(name, _)| name == "collector")
            .context("no collector running")?;
        let (_, mut child) = self.children.remove(at);
        run(&["kill", "-TERM", &child.id().to_string()])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Every daemon's metrics endpoint.
    fn metrics_targets(&self) -> Vec<String> {
        let mut targets = vec!["198.18.0.1:9103".to_string()];
        targets.extend((1..=self.racks).map(|r| format!("198.18.{r}.250:9102")));
        targets.extend(self.nodes.iter().map(|n| format!("{}:9101", n.ip())));
        targets
    }

    /// Starts Prometheus on the spine, which routes to every daemon.
    fn start_prometheus(&mut self) -> anyhow::Result<()> {
        let targets: Vec<String> = self.metrics_targets().iter().map(|t| format!("\"{t}\"")).collect();
        let config = self.write(
            "prometheus.yml",
            &format!(
                "global: {{ scrape_interval: 2s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: flowmesh\n    \
                 static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let spine = self.spine();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", self.dir.join("prometheus").display()),
            "--web.listen-address=198.18.0.1:9090".to_string(),
        ];
        self.spawn("prometheus", &spine, Path::new("prometheus"), &args)
    }

    /// An HTTP GET from the spine (where every address routes), via curl.
    fn get(&self, url: &str) -> anyhow::Result<String> {
        let out = Command::new("nsenter")
            .arg(Self::ns_path(&self.spine()))
            .args(["curl", "-fsS", "--max-time", "5", url])
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many daemons Prometheus has up, and the expositions promtool
    /// rejects.
    fn check_prometheus(&self) -> anyhow::Result<(usize, Vec<String>)> {
        let body = self.get("http://198.18.0.1:9090/api/v1/query?query=up")?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let up = json["data"]["result"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|x| x["value"][1] == "1").count());
        let mut rejected = Vec::new();
        for target in self.metrics_targets() {
            let page = self.get(&format!("http://{target}/metrics"))?;
            let mut check = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            check
                .stdin
                .take()
                .context("promtool's stdin")?
                .write_all(page.as_bytes())?;
            if !check.wait()?.success() {
                rejected.push(target);
            }
        }
        Ok((up, rejected))
    }

    /// Fails naming the first process that has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "{name} exited ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Injects `fault`; returns what the analyzer should name.
    fn inject(&mut self, fault: FaultKind) -> anyhow::Result<Expected> {
        let racks = self.racks;
        match fault {
            FaultKind::HostDown => {
                let node = self.node(2, 2).clone();
                run(&["ip", "-n", &node.ns, "link", "set", "eth0", "down"])?;
                Ok(Expected::new("host", node.name()))
            }
            FaultKind::NicLoss => {
                let node = self.node(1, 3).clone();
                nft(
                    &node.ns,
                    "table inet fmfault {\n chain in {\n  type filter hook input priority 0\n  \
                     numgen random mod 100 < 30 drop\n }\n}\n",
                )?;
                Ok(Expected::new("host", node.name()))
            }
            FaultKind::UplinkLoss => {
                let spine = self.spine();
                nft(
                    &spine,
                    &format!(
                        "table inet fmfault {{\n chain fault {{\n  type filter hook forward priority 0\n  \
                         iifname \"r{racks}\" numgen random mod 100 < 30 drop\n  \
                         oifname \"r{racks}\" numgen random mod 100 < 30 drop\n }}\n}}\n"
                    ),
                )?;
                Ok(Expected::new("rack", format!("rack{racks}")))
            }
            FaultKind::RackPairDelay => {
                let spine = self.spine();
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
                let from = self.node(1, 1).clone();
                let to = self.node(2, 1).ip();
                let log = std::fs::File::create(self.dir.join("blast.log"))?;
                let child = Command::new("nsenter")
                    .arg(Self::ns_path(&from.ns))
                    .arg(std::env::current_exe()?)
                    .args([
                        "traffic",
                        "--blast",
                        &format!("{to}:{DISCARD_PORT}"),
                        "--blast-kbps",
                        "4000",
                    ])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                self.fault_children.push(child);
                Ok(Expected::new("rack_pair", "rack1↔rack2".into()))
            }
            FaultKind::TcpRetrans => {
                let node = self.node(racks, 1).clone();
                let switch = self.switch(racks);
                let port = format!("n{}", node.index);
                nft(
                    &switch,
                    &format!(
                        "table bridge fmfault {{\n chain fault {{\n  type filter hook forward priority 0\n  \
                         iifname \"{port}\" meta l4proto tcp numgen random mod 100 < 10 drop\n  \
                         oifname \"{port}\" meta l4proto tcp numgen random mod 100 < 10 drop\n }}\n}}\n"
                    ),
                )?;
                Ok(Expected::new("host", node.name()))
            }
        }
    }

    /// Clears `fault`.
    fn clear(&mut self, fault: FaultKind) -> anyhow::Result<()> {
        let racks = self.racks;
        match fault {
            FaultKind::HostDown => {
                let ns = self.node(2, 2).ns.clone();
                run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
                // Taking the link down removed the route through it.
                run(&[
                    "ip",
                    "-n",
                    &ns,
                    "route",
                    "replace",
                    "198.18.0.0/15",
                    "via",
                    "198.18.2.254",
                ])
            }
            FaultKind::NicLoss => run(&[
                "ip",
                "netns",
                "exec",
                &self.node(1, 3).ns,
                "nft",
                "delete",
                "table",
                "inet",
                "fmfault",
            ]),
            FaultKind::UplinkLoss => run(&[
                "ip",
                "netns",
                "exec",
                &self.spine(),
                "nft",
                "delete",
                "table",
                "inet",
                "fmfault",
            ]),
            FaultKind::RackPairDelay => {
                for mut child in self.fault_children.drain(..) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                run(&["tc", "-n", &self.spine(), "qdisc", "del", "dev", "r2", "root"])
            }
            FaultKind::TcpRetrans => run(&[
                "ip",
                "netns",
                "exec",
                &self.switch(racks),
                "nft",
                "delete",
                "table",
                "bridge",
                "fmfault",
            ]),
        }
    }

    /// The analyzer's JSON report over the last `since`.
    fn analyze(&self, since: Duration, config: &Path) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(self.bin.join("flowmesh-analyzer"))
            .args(["--config"])
            .arg(config)
            .args([
                "report",
                "--format",
                "json",
                "--since",
                &format!("{}s", since.as_secs().max(1)),
            ])
            .output()
            .context("running flowmesh-analyzer")?;
        // Exit 2 means "anomalies found": a normal outcome here.
        if !matches!(out.status.code(), Some(0 | 2)) {
            bail!("flowmesh-analyzer: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).context("reading the analyzer's JSON report")
    }
}

/// Loads an nftables ruleset in namespace `ns`.
fn nft(ns: &str, ruleset: &str) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), ruleset)?;
    let path = file.path().display().to_string();
    run(&["ip", "netns", "exec", ns, "nft", "-f", &path])
}

/// What the analyzer should name for a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    kind: &'static str,
    element: String,
}

impl Expected {
    fn new(kind: &'static str, element: String) -> Expected {
        Expected { kind, element }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.element)
    }
}

/// Anomalies of a report whose last window ends after `after_ns`, as
/// "kind element (symptoms)".
fn anomalies_after(report: &serde_json::Value, after_ns: u64) -> Vec<(String, String, String)> {
    report["anomalies"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|a| a["last_window_ns"].as_u64().unwrap_or(0) >= after_ns)
                .map(|a| {
                    let symptoms = a["symptoms"]
                        .as_object()
                        .map(|s| s.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default();
                    (
                        a["kind"].as_str().unwrap_or("?").to_string(),
                        a["element"].as_str().unwrap_or("?").to_string(),
                        symptoms,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Samplers whose windows, from their first to their last, are not each
/// in the database exactly once ("sampler: present of expected"). Batch ids
/// are per sampler, window and part, so a replayed batch is never stored
/// twice; a missing one is a gap.
fn windows_not_once(database: &Path, window_ns: u64) -> anyhow::Result<Vec<String>> {
    let batches = SqliteStore::open_read_only(database)?.batches(0, u64::MAX)?;
    // Per sampler: its distinct windows, and its first and last.
    let mut samplers: BTreeMap<u32, (BTreeSet<u64>, u64, u64)> = BTreeMap::new();
    for b in &batches {
        let (windows, first, last) = samplers.entry(b.sampler_id).or_insert((BTreeSet::new(), u64::MAX, 0));
        windows.insert(b.window_start_ns);
        *first = (*first).min(b.window_start_ns);
        *last = (*last).max(b.window_start_ns);
    }
    Ok(samplers
        .into_iter()
        .filter_map(|(sampler, (windows, first, last))| {
            let expected = (last - first) / window_ns.max(1) + 1;
            (windows.len() as u64 != expected).then(|| format!("{sampler}: {} of {expected}", windows.len()))
        })
        .collect())
}

/// One fault's outcome.
struct Outcome {
    fault: FaultKind,
    expected: Expected,
    latency: Option<Duration>,
    named: Vec<(String, String, String)>,
}

/// Runs the simulation: build, start, clean period, each fault.
pub(crate) fn run_sim(options: &Options) -> anyhow::Result<()> {
    if options.racks < 3 {
        bail!("--racks must be 3 or more: with two, a rack's uplink and the pair of racks are the same evidence");
    }
    let faults = if options.faults.is_empty() {
        ALL_FAULTS.to_vec()
    } else {
        options.faults.clone()
    };
    install_stop_handler()?;
    let temp = tempfile::tempdir()?;
    let dir = match &options.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => temp.path().to_path_buf(),
    };
    let bin = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    for needed in [
        "flowmesh-agent",
        "flowmesh-sampler",
        "flowmesh-collector",
        "flowmesh-analyzer",
    ] {
        if !bin.join(needed).exists() {
            bail!(
                "{needed} is not built next to flowmesh-bench in {}: cargo build -p node-agent -p rack-sampler -p collector -p analyzer",
                bin.display()
            );
        }
    }
    let window = Duration::from_secs(options.window_secs);
    let window_ns = options.window_secs * 1_000_000_000;
    let say = |what: String| println!("[{:>6.1} s] {what}", STARTED.elapsed().as_secs_f64());
    let mut sim = Simulation::build(options.racks, options.nodes_per_rack, dir.clone(), bin)?;
    say(format!(
        "built {} racks × {} nodes in network namespaces {}* (198.18.0.0/15)",
        options.racks, options.nodes_per_rack, sim.tag
    ));
    sim.start(options.window_secs)?;
    if options.prometheus {
        sim.start_prometheus()?;
    }
    say(format!(
        "started {} agents, {} samplers ({} s windows), 1 collector, {} traffic generators; SQLite at {}",
        sim.nodes.len(),
        options.racks,
        options.window_secs,
        sim.nodes.len(),
        dir.join("flowmesh.db").display()
    ));
    // A shared 2-core machine schedules nine agents, traffic and the
    // pipeline: its RTTs jitter by milliseconds, which is no fault. The
    // faults' symptoms are loss, retransmissions and tens of ms of queueing.
    let analyzer = sim.write(
        "analyzer.toml",
        &format!(
            "database = \"{}\"\ntopology = \"{}\"\n[detect]\np99_rtt_us = 5000\nrtt_baseline_min_increase_us = 5000\n\
             p99_responder_delay_us = 50000\n",
            dir.join("flowmesh.db").display(),
            dir.join("topology.toml").display()
        ),
    )?;
    // Warm-up: agents' first probes meet responders not yet started.
    pause(window * 2)?;
    let clean_from = now_ns().div_ceil(window_ns) * window_ns;
    say(format!("clean running for {} s", options.clean_secs));
    let clean_started = Instant::now();
    if options.collector_outage {
        pause(Duration::from_secs(5))?;
        sim.stop_collector()?;
        say(format!(
            "stopped the collector for {} s: the samplers spool their windows",
            2 * options.window_secs
        ));
        pause(window * 2)?;
        let config = dir.join("collector.toml");
        sim.start_collector(&config)?;
        say("restarted the collector: the samplers replay their spools".into());
    }
    let clean_until = Duration::from_secs(options.clean_secs) + window + Duration::from_secs(3);
    while let Some(left) = clean_until
        .checked_sub(clean_started.elapsed())
        .filter(|d| !d.is_zero())
    {
        say(format!("running clean: {} s left", left.as_secs()));
        pause(left.min(Duration::from_secs(15)))?;
    }
    sim.check_alive()?;
    let since = Duration::from_nanos(now_ns() - clean_from) + window;
    let report = sim.analyze(since, &analyzer)?;
    let clean = anomalies_after(&report, clean_from);
    let clean_windows = report["windows"].as_u64().unwrap_or(0);
    say(format!(
        "clean period: {clean_windows} windows, {} judged path windows, {} anomalies{}",
        report["judged_paths"],
        clean.len(),
        if clean.is_empty() {
            String::new()
        } else {
            format!(": {clean:?}")
        }
    ));
    let mut outcomes = Vec::new();
    for fault in faults {
        let injected = now_ns();
        let started = Instant::now();
        let expected = sim.inject(fault)?;
        say(format!("injected {fault:?}; expecting {expected}"));
        let deadline = window * 2 + Duration::from_secs(4);
        let from_window = injected / window_ns * window_ns;
        let mut outcome = Outcome {
            fault,
            expected: expected.clone(),
            latency: None,
            named: Vec::new(),
        };
        while started.elapsed() < deadline {
            pause(Duration::from_millis(500))?;
            let report = sim.analyze(started.elapsed() + window * 2, &analyzer)?;
            outcome.named = anomalies_after(&report, from_window);
            if outcome
                .named
                .iter()
                .any(|(kind, element, _)| kind == expected.kind && *element == expected.element)
            {
                outcome.latency = Some(started.elapsed());
                break;
            }
        }
        match outcome.latency {
            Some(latency) => say(format!(
                "  named {expected} after {:.1} s ({:.1} windows): {:?}",
                latency.as_secs_f64(),
                latency.as_secs_f64() / window.as_secs_f64(),
                outcome.named
            )),
            None => say(format!(
                "  NOT named within {:.0} s; the analyzer said {:?}",
                deadline.as_secs_f64(),
                outcome.named
            )),
        }
        pause(Duration::from_secs(options.hold_secs).saturating_sub(started.elapsed()))?;
        sim.clear(fault)?;
        say(format!("cleared {fault:?}"));
        outcomes.push(outcome);
        sim.check_alive()?;
        // Recovery: the next fault starts from clean windows.
        pause(window * 2)?;
    }
    // The last windows reach the database.
    pause(window + Duration::from_secs(4))?;
    let mut failures = Vec::new();
    let missing = windows_not_once(&dir.join("flowmesh.db"), window_ns)?;
    if missing.is_empty() {
        say("every sampler's windows are in the database exactly once".into());
    } else {
        failures.push(format!(
            "windows missing or repeated (sampler: present of expected): {missing:?}"
        ));
    }
    if options.prometheus {
        let (up, rejected) = sim.check_prometheus()?;
        let all = sim.metrics_targets().len();
        if up == all && rejected.is_empty() {
            say(format!(
                "Prometheus scraped all {all} daemons (up = 1); promtool accepts every exposition"
            ));
        } else {
            failures.push(format!(
                "Prometheus sees {up} of {all} daemons up; promtool rejects {rejected:?}"
            ));
        }
    }
    if options.report {
        let since = format!("{}s", (now_ns() - clean_from) / 1_000_000_000 + options.window_secs);
        let analyzer_bin = sim.bin.join("flowmesh-analyzer");
        for (format, file) in [("json", "report.json"), ("html", "report.html")] {
            Command::new(&analyzer_bin)
                .arg("--config")
                .arg(&analyzer)
                .args(["report", "--since", &since, "--format", format, "--output"])
                .arg(dir.join(file))
                .stderr(Stdio::null())
                .status()?;
        }
        println!();
        Command::new(&analyzer_bin)
            .arg("--config")
            .arg(&analyzer)
            .args(["report", "--since", &since])
            .stderr(Stdio::null())
            .status()?;
    }
    println!("\nfault              expected               detection latency");
    for o in &outcomes {
        let latency = o.latency.map_or("NOT DETECTED".to_string(), |l| {
            format!(
                "{:.1} s ({:.1} windows)",
                l.as_secs_f64(),
                l.as_secs_f64() / window.as_secs_f64()
            )
        });
        println!(
            "{:<18} {:<22} {latency}",
            format!("{:?}", o.fault),
            o.expected.to_string()
        );
    }
    let missed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.latency.is_none())
        .map(|o| format!("{:?} (named {:?})", o.fault, o.named))
        .collect();
    if !clean.is_empty() {
        failures.push(format!("clean-period anomalies {clean:?}"));
    }
    if !missed.is_empty() {
        failures.push(format!("faults not named within two windows: {missed:?}"));
    }
    if options.dir.is_some() {
        println!("database:    {}", dir.join("flowmesh.db").display());
        if options.report {
            println!("HTML report: {}", dir.join("report.html").display());
        }
        println!("logs and configurations: {}", dir.display());
    }
    if !failures.is_empty() {
        bail!("rack-sim failed: {}", failures.join("; "));
    }
    println!("rack-sim: the clean period had no anomaly and every fault was named within two windows");
    Ok(())
}

static STARTED: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn install_stop_handler() -> anyhow::Result<()> {
    std::sync::LazyLock::force(&STARTED);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        runtime.block_on(async {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            STOP.store(true, Ordering::Relaxed);
        });
    })?;
    Ok(())
}

/// Options of the traffic generator (`flowmesh-bench traffic`, started by
/// rack-sim in each node's namespace).
#[derive(clap::Args, Debug)]
pub(crate) struct TrafficOptions {
    /// Join this cgroup first, so the node's agent traces the connections.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Serve requests here.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Peers to connect to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Request/response exchanges per second with each peer.
    #[arg(long, default_value_t = 2.0)]
    per_peer_per_sec: f64,
    /// Response size of a request, bytes.
    #[arg(long, default_value_t = 32_768)]
    response_bytes: u64,
    /// A bulk upload of this many bytes to one peer every 5 s.
    #[arg(long, default_value_t = 1_000_000)]
    bulk_bytes: u64,
    /// Instead: send a UDP stream to this address...
    #[arg(long)]
    blast: Option<SocketAddr>,
    /// ...at this rate, kbit/s.
    #[arg(long, default_value_t = 4_000)]
    blast_kbps: u64,
}

/// Runs the traffic generator until killed.
pub(crate) fn traffic(options: &TrafficOptions) -> anyhow::Result<()> {
    if let Some(cgroup) = &options.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cgroup.display()))?;
    }
    if let Some(to) = options.blast {
        return blast(to, options.blast_kbps);
    }
    if let Some(listen) = options.listen {
        let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
    }
    let stats = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let peers = options.peers.clone();
    let interval = Duration::from_secs_f64(1.0 / (options.per_peer_per_sec * peers.len().max(1) as f64));
    let mut next = Instant::now();
    let mut next_bulk = Instant::now() + Duration::from_secs(5);
    let mut turn = 0usize;
    loop {
        if peers.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let peer = peers[turn % peers.len()];
        turn += 1;
        let (upload, response) = if Instant::now() >= next_bulk {
            next_bulk += Duration::from_secs(5);
            (options.bulk_bytes, 0)
        } else {
            (1_000, options.response_bytes)
        };
        let counts = stats.clone();
        // One thread per exchange so a slow peer (a fault) never stalls
        // the others; exchanges time out.
        std::thread::spawn(move || {
            let ok = exchange(peer, upload, response).is_ok();
            let mut s = counts.lock().unwrap_or_else(|p| p.into_inner());
            if ok { s.0 += 1 } else { s.1 += 1 }
        });
        if turn.is_multiple_of(1_000) {
            let s = *stats.lock().unwrap_or_else(|p| p.into_inner());
            println!("exchanges: {} ok, {} failed", s.0, s.1);
        }
    }
}

/// One exchange: a 16-byte header (bytes to upload, bytes wanted back),
/// the upload, then the response until the server closes.
fn exchange(peer: SocketAddr, upload: u64, response: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&peer, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&upload.to_be_bytes());
    header[8..].copy_from_slice(&response.to_be_bytes());
    stream.write_all(&header)?;
    let chunk = [0x5au8; 16_384];
    let mut left = upload;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut buf = [0u8; 16_384];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != response {
        return Err(std::io::Error::other(format!("got {got} of {response} bytes")));
    }
    Ok(())
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut header = [0u8; 16];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    // Bounded: a request for more than 64 MiB either way is refused.
    let (upload, response) = (field(0), field(8));
    if upload > 64 << 20 || response > 64 << 20 {
        return;
    }
    let mut buf = [0u8; 16_384];
    let mut left = upload;
    while left > 0 {
        match stream.read(&mut buf[..left.min(16_384) as usize]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n as u64,
        }
    }
    let chunk = [0xa5u8; 16_384];
    let mut left = response;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

/// A paced UDP stream of 1 200-byte datagrams.
fn blast(to: SocketAddr, kbps: u64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0u8; 1_200];
    let per_sec = (kbps * 1_000 / 8 / payload.len() as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / per_sec as f64);
    let mut next = Instant::now();
    loop {
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        // Unreachable-port errors from earlier datagrams are expected.
        let _ = socket.send_to(&payload, to);
    }
}
