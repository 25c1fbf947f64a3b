//! The processes of the simulation and their set-up: the topology file, the
//! development PKI, each daemon's configuration, and starting them in
//! their namespaces — a `flowmesh-agent` per node (its own cgroup, so it
//! traces only its node's sockets), a `flowmesh-sampler` per rack on its
//! switch, the `flowmesh-collector` (two, on a ClickHouse cluster, with
//! `--store clickhouse`). Also here: stopping and restarting a collector,
//! Prometheus's and promtool's verdicts (Prometheus itself is started by
//! [`super::alerting`]), and noticing a daemon that died.
//!
//! [`Daemons`] owns every process it started, the traffic generators and a
//! fault's helpers included, and stops them all when dropped (SIGTERM, then
//! SIGKILL after 5 s), before the network they run in is removed.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use configs_runtime::tls::DevPki;

use super::alerting::{ANALYZER_METRICS_PORT, PROMETHEUS_PORT};
use super::namespaces::{Network, SPINE_IP, nsenter, sampler_ip};
use crate::harness::{ClickHouseToml, CollectorToml, SamplerToml, terminate};

/// The first collector's QUIC port; the second's is the next.
const COLLECTOR_PORT: u16 = 4433;
/// The first collector's metrics port; the second's is the next.
const COLLECTOR_METRICS_PORT: u16 = 9103;
/// Each sampler's ingest port.
const SAMPLER_PORT: u16 = 5001;
/// Each sampler's metrics port.
const SAMPLER_METRICS_PORT: u16 = 9102;
/// Each agent's metrics port.
const AGENT_METRICS_PORT: u16 = 9101;
/// How long the processes get to exit after SIGTERM at the end.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the collector gets to finish its transaction when stopped.
const COLLECTOR_STOP_GRACE: Duration = Duration::from_secs(10);

/// Every process of the simulation; dropping it stops them.
pub(super) struct Daemons {
    /// Long-lived processes by name (each logs to `<name>.log`), watched by
    /// [`Daemons::check_alive`].
    children: Vec<(String, Child)>,
    /// Processes of the current fault (the delay fault's UDP stream).
    transient: Vec<Child>,
    /// The working directory: configurations, logs, database.
    pub(super) dir: PathBuf,
    /// Where the flowmesh binaries are.
    pub(super) bin: PathBuf,
    /// Collectors: one on SQLite, two (any may fail) on ClickHouse.
    pub(super) collectors: u16,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let all = self
            .children
            .iter_mut()
            .map(|(_, c)| c)
            .chain(self.transient.iter_mut());
        let _ = terminate(all, STOP_GRACE);
    }
}

/// `ip:port`.
fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Every daemon's metrics endpoint: the collectors', the samplers', the
/// agents'.
pub(super) fn metrics_targets(net: &Network, collectors: u16) -> Vec<SocketAddr> {
    let mut targets: Vec<SocketAddr> = (0..collectors)
        .map(|i| addr(SPINE_IP, COLLECTOR_METRICS_PORT + i))
        .collect();
    targets.extend((1..=net.racks).map(|r| addr(sampler_ip(r), SAMPLER_METRICS_PORT)));
    targets.extend(net.nodes.iter().map(|n| addr(n.ip(), AGENT_METRICS_PORT)));
    targets
}

impl Daemons {
    /// No process yet; configurations and logs go into `dir`.
    pub(super) fn new(dir: PathBuf, bin: PathBuf) -> Daemons {
        Daemons {
            children: Vec::new(),
            transient: Vec::new(),
            dir,
            bin,
            collectors: 1,
        }
    }

    /// Collector `i`'s process name (from 0).
    fn collector_name(i: u16) -> String {
        match i {
            0 => "collector".to_string(),
            _ => format!("collector-{}", i + 1),
        }
    }

    /// Starts `program args…` in namespace `ns`, its output in
    /// `<name>.log`.
    fn spawn_logged(&self, name: &str, ns: &str, program: &Path, args: &[String]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        nsenter(ns)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    /// Starts a long-lived process (see [`Daemons::spawn_logged`]).
    pub(super) fn spawn(&mut self, name: &str, ns: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let child = self.spawn_logged(name, ns, program, args)?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Starts a process that lives as long as the current fault, until
    /// [`Daemons::stop_transient`].
    pub(super) fn spawn_transient(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<()> {
        let child = self.spawn_logged(name, ns, program, args)?;
        self.transient.push(child);
        Ok(())
    }

    /// Kills the current fault's processes.
    pub(super) fn stop_transient(&mut self) {
        for mut child in self.transient.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes `text` to `name` in the working directory.
    pub(super) fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Writes the topology, the PKI and the configurations, and starts the
    /// collector (two, both on the cluster, with `clickhouse`), every sampler
    /// and every agent.
    pub(super) fn start(
        &mut self,
        net: &Network,
        window_secs: u64,
        clickhouse: Option<&ClickHouseToml>,
    ) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let mut topology = String::new();
        for r in 1..=net.racks {
            topology += &format!(
                "[[racks]]\nid = {r}\nname = \"rack{r}\"\nsampler = \"{}\"\n\n",
                addr(sampler_ip(r), SAMPLER_PORT)
            );
        }
        for node in &net.nodes {
            topology += &format!(
                "[[nodes]]\nid = {}\nname = \"{}\"\nrack = \"rack{}\"\naddresses = [\"{}\"]\n\n",
                node.id(),
                node.name(),
                node.rack,
                node.ip()
            );
        }
        let topology = self.write("topology.toml", &topology)?;
        let samplers: Vec<String> = (1..=net.racks).map(|r| format!("rack{r}")).collect();
        let pki = DevPki::generate(&dir.join("pki"), &["localhost".to_string()], &samplers)?;
        self.collectors = if clickhouse.is_some() { 2 } else { 1 };
        for i in 0..self.collectors {
            // Each collector talks to its own server: either may go down.
            let clickhouse = clickhouse.map(|c| ClickHouseToml {
                url: c.shard_urls[usize::from(i) % c.shard_urls.len()].clone(),
                ..c.clone()
            });
            let collector = CollectorToml {
                listen: addr(SPINE_IP, COLLECTOR_PORT + i),
                metrics: addr(SPINE_IP, COLLECTOR_METRICS_PORT + i),
                database: &dir.join("flowmesh.db"),
                topology: &topology,
                tls: &pki.collector(),
                clickhouse: clickhouse.as_ref(),
            };
            self.write(&format!("{}.toml", Self::collector_name(i)), &collector.render())?;
            self.start_collector(net, i)?;
        }
        let collectors: Vec<SocketAddr> = (0..self.collectors)
            .map(|i| addr(SPINE_IP, COLLECTOR_PORT + i))
            .collect();
        for (r, rack) in (1..=net.racks).zip(&samplers) {
            let name = format!("sampler-{rack}");
            let sampler = SamplerToml {
                id: r,
                rack,
                topology: &topology,
                ingest: addr(sampler_ip(r), SAMPLER_PORT),
                window_secs,
                grace_ms: 1_000,
                collectors: collectors.clone(),
                spool: &dir.join(format!("spool-{rack}")),
                tls: &pki.sampler(rack),
                metrics: addr(sampler_ip(r), SAMPLER_METRICS_PORT),
            };
            self.write(&format!("{name}.toml"), &sampler.render())?;
            self.start_sampler(net, r)?;
        }
        for node in &net.nodes {
            let name = format!("agent-{}", node.name());
            let config = self.write(
                &format!("{name}.toml"),
                &format!(
                    "node_id = {}\ntopology = \"{}\"\n[flows]\ncgroup = \"{}\"\n\
                     [probes]\ninterval_ms = 100\ntimeout_ms = 500\ninter_rack_peers = {}\n\
                     [metrics]\nlisten = \"{}\"\n",
                    node.id(),
                    topology.display(),
                    node.cgroup.display(),
                    net.per_rack(),
                    addr(node.ip(), AGENT_METRICS_PORT)
                ),
            )?;
            let program = self.bin.join("flowmesh-agent");
            self.spawn(&name, &node.ns, &program, &config_arg(&config))?;
        }
        Ok(())
    }

    /// Starts collector `i` (from 0) on the spine with the configuration
    /// [`Daemons::start`] wrote.
    pub(super) fn start_collector(&mut self, net: &Network, i: u16) -> anyhow::Result<()> {
        let program = self.bin.join("flowmesh-collector");
        let name = Self::collector_name(i);
        let config = self.dir.join(format!("{name}.toml"));
        self.spawn(&name, &net.spine(), &program, &config_arg(&config))
    }

    /// Starts rack `r`'s sampler on its switch with the configuration
    /// [`Daemons::start`] wrote (and the spool it left, after a stop).
    pub(super) fn start_sampler(&mut self, net: &Network, r: u32) -> anyhow::Result<()> {
        let name = format!("sampler-rack{r}");
        let program = self.bin.join("flowmesh-sampler");
        let config = self.dir.join(format!("{name}.toml"));
        self.spawn(&name, &net.switch(r), &program, &config_arg(&config))
    }

    /// Stops rack `r`'s sampler (see [`Daemons::stop`]).
    pub(super) fn stop_sampler(&mut self, r: u32, crash: bool) -> anyhow::Result<()> {
        self.stop(&format!("sampler-rack{r}"), crash, STOP_GRACE)
    }

    /// Stops collector `i` (see [`Daemons::stop`]).
    pub(super) fn stop_collector(&mut self, i: u16, crash: bool) -> anyhow::Result<()> {
        self.stop(&Self::collector_name(i), crash, COLLECTOR_STOP_GRACE)
    }

    /// Stops the process `name` and forgets it: with SIGTERM, as an operator
    /// would (SIGKILL after `grace`), or with SIGKILL, as a crash would.
    fn stop(&mut self, name: &str, crash: bool, grace: Duration) -> anyhow::Result<()> {
        let at = self
            .children
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("no {name} running"))?;
        let (_, mut child) = self.children.remove(at);
        if crash {
            child.kill()?;
            child.wait()?;
            return Ok(());
        }
        terminate([&mut child], grace)
    }

    /// How many daemons Prometheus has up, and the expositions promtool
    /// rejects.
    pub(super) fn check_prometheus(&self, net: &Network) -> anyhow::Result<(usize, Vec<String>)> {
        let prometheus = addr(SPINE_IP, PROMETHEUS_PORT);
        let body = get(net, &format!("http://{prometheus}/api/v1/query?query=up"))?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let up = json["data"]["result"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|x| x["value"][1] == "1").count());
        let mut rejected = Vec::new();
        let analyzer = addr(SPINE_IP, ANALYZER_METRICS_PORT);
        for target in metrics_targets(net, self.collectors).into_iter().chain([analyzer]) {
            let page = get(net, &format!("http://{target}/metrics"))?;
            let mut check = std::process::Command::new("promtool")
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
                rejected.push(target.to_string());
            }
        }
        Ok((up, rejected))
    }

    /// Fails naming the first long-lived process that has exited, with the
    /// end of its log.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
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
}

/// `--config FILE`, as every flowmesh daemon takes it.
fn config_arg(config: &Path) -> [String; 2] {
    ["--config".into(), config.display().to_string()]
}

/// An HTTP GET from the spine (where every address routes), via curl.
pub(super) fn get(net: &Network, url: &str) -> anyhow::Result<String> {
    let out = nsenter(&net.spine())
        .args(["curl", "-fsS", "--max-time", "5", url])
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
