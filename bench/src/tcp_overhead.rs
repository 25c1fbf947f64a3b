//! `flowmesh-bench tcp-overhead`: what tracing costs the traced host. TCP
//! connection rate (connect, a 64-byte request and reply, close) and bulk
//! throughput on loopback, measured untraced, with `flowmesh-agent`
//! attached to the benchmark's cgroup, and with a bpftrace script on the
//! TCP state tracepoint (the peer: a tcplife-style tracer that records
//! each flow's start and end). The runs alternate, `--rounds` times, and
//! the medians are compared as ratios to the untraced runs of the same
//! invocation. Also reported: the agent's CPU time per 100 000 flows and
//! its peak RSS, and — the figure this VM's noise cannot move — the BPF run
//! time per traced flow of each tracer's programs, from the kernel's own
//! accounting (`kernel.bpf_stats_enabled`, read with `bpftool prog show`
//! around each connection-rate run, for the programs the tracer's process
//! holds: the `prog_id`s in its file descriptors' fdinfo). The bpftrace peer runs twice: printing
//! a line per flow (as tcplife does), and aggregating in the kernel (a
//! histogram of lifetimes, nothing per event to user space) — its fair job.
//!
//! Clients close with SO_LINGER 0 (a reset): at tens of thousands of
//! connections per second, TIME_WAIT would otherwise exhaust loopback's
//! ephemeral ports within seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::harness::{
    ChildGuard, cgroup_root, cpu_seconds, free_local_addr, metric, peak_rss_kib, scrape, sibling_binary, start_daemon,
    wait_for,
};

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Seconds of each connection-rate run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Seconds of each bulk-throughput run.
    #[arg(long, default_value_t = 4)]
    bulk_seconds: u64,
    /// Client threads opening connections.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Rounds of (untraced, agent, bpftrace) runs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The peer tracer: per flow, its start at ESTABLISHED and a line at CLOSE
/// with ports and duration — less than the agent records, on the same
/// kind of kernel hook (TCP state changes).
const BPFTRACE_PEER: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  if (args->newstate == 1) { @start[args->skaddr] = nsecs; }
  if (args->newstate == 7 && @start[args->skaddr] != 0) {
    printf("%d %d %d\n", args->sport, args->dport, (nsecs - @start[args->skaddr]) / 1000);
    delete(@start[args->skaddr]);
  }
}
"#;

/// The peer again, aggregating in the kernel: a histogram of flow
/// lifetimes, printed once at exit — nothing per event to user space.
const BPFTRACE_PEER_AGGREGATED: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  if (args->newstate == 1) { @start[args->skaddr] = nsecs; }
  if (args->newstate == 7 && @start[args->skaddr] != 0) {
    @lifetime_us = hist((nsecs - @start[args->skaddr]) / 1000);
    delete(@start[args->skaddr]);
  }
}
"#;

/// The tracers compared, in the order each round runs them.
const TRACERS: [&str; 4] = [
    "untraced",
    "flowmesh-agent",
    "bpftrace peer, printf",
    "bpftrace peer, in-kernel hist",
];

/// The goal for the agent's BPF run time per traced flow (issue 20).
const GOAL_BPF_NS_PER_FLOW: f64 = 400.0;

/// Connections per second over `seconds` with `clients` threads, and the
/// connections made.
fn connection_rate(seconds: u64, clients: usize) -> anyhow::Result<(f64, u64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if server_stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 64];
            if stream.read_exact(&mut buf).is_ok() {
                let _ = stream.write_all(&buf);
            }
        }
    });
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let request = [7u8; 64];
                let mut reply = [0u8; 64];
                while Instant::now() < deadline {
                    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                    socket.set_linger(Some(Duration::ZERO))?;
                    socket.connect(&addr.into())?;
                    let mut stream: TcpStream = socket.into();
                    stream.write_all(&request)?;
                    stream.read_exact(&mut reply)?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let started = Instant::now();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Wake the accept loop so it sees the flag.
    let _ = TcpStream::connect(addr);
    let _ = server.join();
    let done = done.load(Ordering::Relaxed);
    Ok((done as f64 / elapsed, done))
}

/// `kernel.bpf_stats_enabled` on while the benchmark runs (the kernel then
/// times every run of every BPF program), and as it was found on drop.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("enabling {BPF_STATS} (as root)"))?;
        Ok(BpfStats {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

/// The ids of the BPF programs process `pid` holds, through a program's
/// file descriptor or a link's: each one's fdinfo has a `prog_id` line.
/// (Debian's bpftool cannot list a program's processes itself.)
fn held_programs(pid: u32) -> anyhow::Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed meanwhile is no program of it.
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(prog_id(&info));
    }
    Ok(ids)
}

/// The `prog_id` of one fdinfo text, if it names one.
fn prog_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// Run time (ns) and runs of the BPF programs one process holds, per
/// program (`type name`).
#[derive(Debug, Clone, Default, PartialEq)]
struct ProgRuns(BTreeMap<String, (u64, u64)>);

impl ProgRuns {
    /// Of the programs process `pid` holds now.
    fn of(pid: u32) -> anyhow::Result<ProgRuns> {
        let held = held_programs(pid)?;
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
            .context("running bpftool (Debian package bpftool; scripts/setup installs it)")?;
        if !out.status.success() {
            bail!("bpftool prog show: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        ProgRuns::parse(&out.stdout, &held)
    }

    /// From `bpftool prog show --json`: the programs with an id in `held`.
    fn parse(json: &[u8], held: &BTreeSet<u64>) -> anyhow::Result<ProgRuns> {
        let progs: Vec<serde_json::Value> = serde_json::from_slice(json).context("bpftool's JSON")?;
        let mut runs = BTreeMap::new();
        for p in progs {
            if !p["id"].as_u64().is_some_and(|id| held.contains(&id)) {
                continue;
            }
            let name = format!(
                "{} {}",
                p["type"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("?")
            );
            let entry: &mut (u64, u64) = runs.entry(name).or_default();
            entry.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            entry.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
        Ok(ProgRuns(runs))
    }

    /// What ran between `before` and `self`.
    fn since(&self, before: &ProgRuns) -> ProgRuns {
        ProgRuns(
            self.0
                .iter()
                .map(|(name, &(ns, runs))| {
                    let (ns0, runs0) = before.0.get(name).copied().unwrap_or_default();
                    (name.clone(), (ns.saturating_sub(ns0), runs.saturating_sub(runs0)))
                })
                .collect(),
        )
    }

    /// Run time and runs of all its programs together.
    fn total(&self) -> (u64, u64) {
        self.0.values().fold((0, 0), |(ns, runs), &(n, r)| (ns + n, runs + r))
    }

    /// `type name: runs/flow × ns/run` for each program that ran.
    fn per_flow(&self, flows: u64) -> String {
        self.0
            .iter()
            .filter(|(_, (_, runs))| *runs > 0)
            .map(|(name, &(ns, runs))| {
                format!(
                    "{name}: {:.2} runs/flow × {:.0} ns",
                    runs as f64 / flows.max(1) as f64,
                    ns as f64 / runs as f64
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Bytes per second one connection carries over `seconds`.
fn bulk_rate(seconds: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        stream.write_all(&chunk)?;
    }
    drop(stream);
    let total = server
        .join()
        .map_err(|_| anyhow::anyhow!("the bulk server panicked"))??;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A cgroup for the benchmark's own process, so the agent traces exactly
/// its connections; the process moves back and the cgroup is removed on
/// drop.
struct OwnCgroup {
    path: PathBuf,
    previous: PathBuf,
}

impl OwnCgroup {
    fn enter() -> anyhow::Result<OwnCgroup> {
        let root = cgroup_root()?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let relative = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("this process is in no cgroup v2")?;
        let previous = root.join(relative.trim_start_matches('/'));
        let path = root.join(format!("flowmesh-overhead-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(path.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(OwnCgroup { path, previous })
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.previous.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.path);
    }
}

struct Agent {
    child: ChildGuard,
    metrics: SocketAddr,
    _sink: std::net::UdpSocket,
}

fn start_agent(dir: &Path, cgroup: &Path) -> anyhow::Result<Agent> {
    let agent = sibling_binary("flowmesh-agent", "cargo build --release -p node-agent -p bench")?;
    // The agent sends its datagrams here; nothing reads them (the kernel
    // drops what overflows the buffer), as a sampler elsewhere would.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let metrics = free_local_addr()?;
    std::fs::write(
        dir.join("topology.toml"),
        "[[racks]]\nid = 1\nname = \"r\"\n[[nodes]]\nid = 1\nname = \"n\"\nrack = \"r\"\naddresses = [\"127.0.0.1\"]\n",
    )?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 1\ntopology = \"{}\"\n[uplink]\nsampler = \"{}\"\n[flows]\ncgroup = \"{}\"\n\
             [probes]\nenabled = false\n[metrics]\nlisten = \"{metrics}\"\n",
            dir.join("topology.toml").display(),
            sink.local_addr()?,
            cgroup.display()
        ),
    )?;
    let mut command = Command::new(&agent);
    command.env("RUST_LOG", "error");
    let child = start_daemon(command, &config, &dir.join("agent.log"), metrics, "flowmesh-agent")?;
    Ok(Agent {
        child,
        metrics,
        _sink: sink,
    })
}

/// tracefs, mounted for the benchmark if it was not, and unmounted again
/// on drop: the machine is left as it was found.
struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    fn ensure() -> anyhow::Result<Tracefs> {
        if Path::new("/sys/kernel/tracing/events").exists() {
            return Ok(Tracefs { mounted_here: false });
        }
        // bpftrace reads tracepoint formats from tracefs.
        let status = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()?;
        if !status.success() {
            bail!("tracefs is not mounted and could not be: mount -t tracefs tracefs /sys/kernel/tracing");
        }
        Ok(Tracefs { mounted_here: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

fn start_bpftrace(dir: &Path, script: &str) -> anyhow::Result<ChildGuard> {
    let out = std::fs::File::create(dir.join("bpftrace.out"))?;
    let child = ChildGuard(
        Command::new("bpftrace")
            .args(["-e", script])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::from(std::fs::File::create(dir.join("bpftrace.log"))?))
            .spawn()
            .context("starting bpftrace (Debian package bpftrace; scripts/setup installs it)")?,
    );
    // Attached once it says so.
    let attached = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        Ok(std::fs::read_to_string(dir.join("bpftrace.out"))?.contains("Attaching"))
    })?;
    if !attached {
        bail!(
            "bpftrace did not attach: {}",
            std::fs::read_to_string(dir.join("bpftrace.log"))?
        );
    }
    Ok(child)
}

/// The agent's dropped events, every reason
/// (`flowmesh_agent_kernel_drops_total`, all series) in a scraped page.
fn kernel_drops(page: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("flowmesh_agent_kernel_drops_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the benchmark and prints its report.
pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _tracefs = Tracefs::ensure()?;
    let _stats = BpfStats::enable()?;
    let cgroup = OwnCgroup::enter()?;
    println!(
        "tcp-overhead: loopback TCP, {} client threads, {} s connection-rate runs, {} s bulk runs, {} rounds",
        opts.clients, opts.seconds, opts.bulk_seconds, opts.rounds
    );
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut bulks: [Vec<f64>; 4] = Default::default();
    // Per tracer: BPF ns per flow in each round.
    let mut bpf_per_flow: [Vec<f64>; 4] = Default::default();
    let mut agent_cpu = 0.0;
    let mut agent_flows = 0u64;
    let mut agent_lost = 0u64;
    let mut agent_rss_kib = 0u64;
    for round in 0..opts.rounds {
        for (which, name) in TRACERS.iter().enumerate() {
            let agent = if which == 1 {
                Some(start_agent(dir.path(), &cgroup.path)?)
            } else {
                None
            };
            let tracer = match which {
                2 => Some(start_bpftrace(dir.path(), BPFTRACE_PEER)?),
                3 => Some(start_bpftrace(dir.path(), BPFTRACE_PEER_AGGREGATED)?),
                _ => None,
            };
            let pid = agent
                .as_ref()
                .map(|a| a.child.0.id())
                .or(tracer.as_ref().map(|t| t.0.id()));
            let before = match &agent {
                Some(a) => {
                    let page = scrape(a.metrics)?;
                    (
                        cpu_seconds(&a.child.0.id().to_string())?,
                        metric(&page, "flowmesh_agent_flows_total"),
                        kernel_drops(&page),
                    )
                }
                None => (0.0, 0, 0),
            };
            let runs_before = pid.map(ProgRuns::of).transpose()?;
            let (rate, connections) = connection_rate(opts.seconds, opts.clients)?;
            let bpf = match (pid, runs_before) {
                (Some(pid), Some(runs_before)) => Some(ProgRuns::of(pid)?.since(&runs_before)),
                _ => None,
            };
            let bulk = bulk_rate(opts.bulk_seconds)?;
            let mut lost = None;
            if let Some(a) = &agent {
                // The last flows reach the agent's counters.
                std::thread::sleep(Duration::from_millis(500));
                agent_cpu += cpu_seconds(&a.child.0.id().to_string())? - before.0;
                let page = scrape(a.metrics)?;
                agent_flows += metric(&page, "flowmesh_agent_flows_total") - before.1;
                // A run that dropped events is no measure of the programs:
                // an event the ring had no room for was never written.
                lost = Some(kernel_drops(&page) - before.2);
                agent_lost += lost.unwrap_or(0);
                agent_rss_kib = agent_rss_kib.max(peak_rss_kib(a.child.0.id())?);
            }
            drop(tracer);
            drop(agent);
            // Both ends of every connection are traced: two flows each.
            let flows = 2 * connections;
            let cost = bpf.map(|bpf| {
                let (ns, runs) = bpf.total();
                let per_flow = ns as f64 / flows.max(1) as f64;
                bpf_per_flow[which].push(per_flow);
                format!(
                    "   BPF {per_flow:>5.0} ns/flow ({:.0} ns/run; {})",
                    ns as f64 / runs.max(1) as f64,
                    bpf.per_flow(flows)
                )
            });
            println!(
                "  round {}: {name:<30} {rate:>9.0} connections/s   bulk {:>7.0} MB/s{}{}",
                round + 1,
                bulk / 1e6,
                cost.unwrap_or_default(),
                lost.filter(|&n| n > 0).map_or(String::new(), |n| format!(
                    "   DROPPED {n} events (flowmesh_agent_kernel_drops_total)"
                ))
            );
            rates[which].push(rate);
            bulks[which].push(bulk);
        }
    }
    // The agent's BPF time per flow against the in-kernel bpftrace peer's
    // in the same round: this VM's speed moves both alike, the ratio less.
    let mut against_peer: Vec<f64> = bpf_per_flow[1]
        .iter()
        .zip(&bpf_per_flow[3])
        .map(|(agent, peer)| agent / peer.max(1.0))
        .collect();
    let r: Vec<f64> = rates.iter_mut().map(|v| median(v)).collect();
    let b: Vec<f64> = bulks.iter_mut().map(|v| median(v)).collect();
    let bpf: Vec<Option<f64>> = bpf_per_flow
        .iter_mut()
        .map(|v| (!v.is_empty()).then(|| median(v)))
        .collect();
    println!("  medians                         connections/s  ratio   bulk MB/s  ratio   BPF ns/flow");
    for (i, name) in TRACERS.iter().enumerate() {
        println!(
            "  {name:<30} {:>13.0}  {:>5.3}   {:>9.0}  {:>5.3}   {}",
            r[i],
            r[i] / r[0],
            b[i] / 1e6,
            b[i] / b[0],
            bpf[i].map_or("-".to_string(), |ns| format!("{ns:>11.0}"))
        );
    }
    if !against_peer.is_empty() {
        println!(
            "  same round: agent BPF ns/flow ÷ the in-kernel bpftrace peer's, median {:.2}",
            median(&mut against_peer)
        );
    }
    println!(
        "  flowmesh-agent: {:.2} CPU-s per 100 000 flows ({agent_flows} flows traced, {agent_lost} events dropped), peak RSS {} MiB",
        agent_cpu * 100_000.0 / agent_flows.max(1) as f64,
        agent_rss_kib / 1024
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  goal: agent ≥ 0.97× untraced connections/s ({}), less overhead than the bpftrace peer ({}), \
         ≤ {GOAL_BPF_NS_PER_FLOW:.0} ns of BPF per flow ({})",
        met(r[1] / r[0] >= 0.97),
        met(r[1] >= r[2].max(r[3])),
        met(bpf[1].is_some_and(|ns| ns <= GOAL_BPF_NS_PER_FLOW))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    #[test]
    fn kernel_drops_sum_every_reason_and_nothing_else() {
        let page = "# HELP flowmesh_agent_kernel_drops_total x\n\
                    flowmesh_agent_kernel_drops_total{reason=\"ring_full\"} 3\n\
                    flowmesh_agent_kernel_drops_total{reason=\"recursion_miss\"} 2\n\
                    flowmesh_agent_kernel_drops_totally 100\n\
                    flowmesh_agent_flows_total 7\n";
        assert_eq!(kernel_drops(page), 5);
        assert_eq!(kernel_drops(""), 0);
    }

    /// The shape `bpftool prog show --json` prints (bpftool 7).
    #[test]
    fn program_runs_are_read_per_process_and_differenced() {
        let json = br#"[
            {"id": 10, "type": "sock_ops", "name": "flowmesh_sock_", "run_time_ns": 2000, "run_cnt": 10},
            {"id": 11, "type": "cgroup_sock_addr", "name": "connect4", "run_time_ns": 500, "run_cnt": 2},
            {"id": 12, "type": "tracepoint", "name": "other", "run_time_ns": 9, "run_cnt": 9},
            {"id": 13, "type": "kprobe", "name": "no_stats"}
        ]"#;
        let held = BTreeSet::from([10, 11, 13]);
        let after = ProgRuns::parse(json, &held).unwrap();
        assert_eq!(after.total(), (2_500, 12));
        let before = ProgRuns(BTreeMap::from([("sock_ops flowmesh_sock_".to_string(), (1_000, 5))]));
        let ran = after.since(&before);
        assert_eq!(ran.total(), (1_500, 7));
        assert_eq!(
            ran.per_flow(5),
            "cgroup_sock_addr connect4: 0.40 runs/flow × 250 ns; sock_ops flowmesh_sock_: 1.00 runs/flow × 200 ns"
        );
        assert!(ProgRuns::parse(b"[]", &held).unwrap().0.is_empty());
        // A program's fdinfo, and a link's, name the program; a map's not.
        assert_eq!(
            prog_id("pos:\t0\nflags:\t02000002\nprog_type:\t13\nprog_id:\t5845\nrun_time_ns:\t0\n"),
            Some(5845)
        );
        assert_eq!(
            prog_id("link_type:\tcgroup\nlink_id:\t3\nprog_tag:\tab\nprog_id:\t77\n"),
            Some(77)
        );
        assert_eq!(prog_id("map_type:\t2\nmap_id:\t9\n"), None);
    }
}
