//! `flowmesh-bench rack-sim`: racks of simulated hosts on one machine, the
//! whole pipeline running on them, faults injected one at a time, and the
//! analyzer's verdict checked for each.
//!
//! Every node runs a `flowmesh-agent` and a traffic generator, every rack a
//! `flowmesh-sampler`, the spine the `flowmesh-collector` on an SQLite file
//! — or, with `--store clickhouse`, two collectors on a two-shard ClickHouse
//! cluster of private servers, the samplers failing over between them.
//! After a clean period, which must yield no anomaly, each fault must be
//! named by `flowmesh-analyzer` within two aggregation windows of its
//! injection; the time it took is printed. Everything is removed on exit,
//! on Ctrl-C and on failure: processes, namespaces (with their links,
//! qdiscs and nftables tables) and cgroups.
//!
//! Where things live:
//! - [`namespaces`]: the network — namespaces, bridges, veths, the spine,
//!   the address plan — and the guard that removes it;
//! - [`daemons`]: the processes — configurations, PKI, starting the agents,
//!   samplers, collector and Prometheus, the guard that stops them;
//! - [`traffic`](mod@traffic): the traffic generator those nodes run;
//! - [`faults`]: each fault class, injected and cleared;
//! - [`scenario`]: the clean period, the fault loop and every check;
//! - here: the options, the order of it all, and Ctrl-C.

mod alerting;
mod daemons;
mod faults;
mod namespaces;
mod scenario;
mod traffic;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use self::daemons::Daemons;
use self::faults::FaultKind;
use self::namespaces::{Network, SIMULATED};
pub(crate) use self::traffic::{TrafficOptions, traffic};
use crate::harness::sibling_binary;

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
    /// Run the operators' stack on the spine: `flowmesh-analyzer watch`
    /// serving its findings, Prometheus scraping every daemon and
    /// evaluating deploy/prometheus's rules, Alertmanager posting to a
    /// webhook receiver in this process. Checks: every daemon up and
    /// promtool accepting each exposition; each fault's alert firing with
    /// its element within two windows plus the evaluation interval and
    /// resolving after the fault clears; nothing firing in the clean
    /// period; every Grafana panel's query (deploy/grafana/) returning data.
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
    /// Where the collectors store: one collector on an SQLite file, or two
    /// collectors on a two-shard ClickHouse cluster (private servers on the
    /// spine); with `--collector-outage` on ClickHouse, the first collector
    /// is killed (SIGKILL) and the samplers fail over to the second.
    #[arg(long, value_enum, default_value_t = Store::Sqlite)]
    store: Store,
}

/// Where the simulation stores.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// One collector, one SQLite file.
    Sqlite,
    /// Two collectors, a two-shard ClickHouse cluster.
    Clickhouse,
}

/// The database the simulation's ClickHouse cluster stores in.
const CLICKHOUSE_DATABASE: &str = "flowmesh";

/// The simulated network and what runs on it. Fields drop in declaration
/// order: the processes stop before the cluster they write to, and both
/// before the namespaces they run in go.
struct Simulation {
    daemons: Daemons,
    clickhouse: Option<ClickHouse>,
    net: Network,
}

/// The ClickHouse cluster on the spine and how the daemons reach it.
struct ClickHouse {
    /// Its servers (stopped when dropped).
    _cluster: collector_storage_clickhouse::cluster::LocalCluster,
    /// The `[storage]` section collectors and the analyzer use.
    toml: crate::harness::ClickHouseToml,
}

impl ClickHouse {
    /// Starts a two-shard cluster inside the spine's namespace, where the
    /// collectors run.
    fn start(net: &Network) -> anyhow::Result<ClickHouse> {
        let cluster = namespaces::in_netns(&net.spine(), || {
            Ok(collector_storage_clickhouse::cluster::LocalCluster::start(2)?)
        })
        .context("starting the ClickHouse cluster on the spine")?;
        let toml = crate::harness::ClickHouseToml {
            url: cluster.url(0),
            shard_urls: cluster.urls(),
            database: CLICKHOUSE_DATABASE.to_string(),
            cluster: collector_storage_clickhouse::cluster::CLUSTER.to_string(),
        };
        Ok(ClickHouse {
            _cluster: cluster,
            toml,
        })
    }
}

/// Set by SIGINT/SIGTERM: every wait checks it, so the simulation stops and
/// tears down promptly.
static STOP: AtomicBool = AtomicBool::new(false);

/// When the run started: every line printed says how long ago.
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Sleeps for `d`, failing at once on Ctrl-C or SIGTERM so the guards clean
/// up.
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

/// Prints a line of progress with the seconds since the start.
fn say(what: impl std::fmt::Display) {
    println!("[{:>6.1} s] {what}", STARTED.elapsed().as_secs_f64());
}

/// Starts the clock and a thread that sets [`STOP`] on SIGINT or SIGTERM.
fn install_stop_handler() -> anyhow::Result<()> {
    LazyLock::force(&STARTED);
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

/// Runs the simulation: build, start, then the scenario.
pub(crate) fn run_sim(options: &Options) -> anyhow::Result<()> {
    if options.racks < 3 {
        bail!("--racks must be 3 or more: with two, a rack's uplink and the pair of racks are the same evidence");
    }
    let faults = if options.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        options.faults.clone()
    };
    install_stop_handler()?;
    // Declared before the simulation, so dropped after it: the processes
    // stop before their working directory goes.
    let temp = tempfile::tempdir()?;
    let dir = match &options.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => temp.path().to_path_buf(),
    };
    for needed in [
        "flowmesh-agent",
        "flowmesh-sampler",
        "flowmesh-collector",
        "flowmesh-analyzer",
    ] {
        sibling_binary(
            needed,
            "cargo build -p node-agent -p rack-sampler -p collector -p analyzer",
        )?;
    }
    let bin = std::env::current_exe()?
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    let mut sim = Simulation {
        daemons: Daemons::new(dir.clone(), bin),
        clickhouse: None,
        net: Network::build(options.racks, options.nodes_per_rack)?,
    };
    say(format!(
        "built {} racks × {} nodes in network namespaces {}* ({SIMULATED})",
        options.racks, options.nodes_per_rack, sim.net.tag
    ));
    if options.store == Store::Clickhouse {
        sim.clickhouse = Some(ClickHouse::start(&sim.net)?);
        say("started a two-shard ClickHouse cluster on the spine");
    }
    let clickhouse = sim.clickhouse.as_ref().map(|c| c.toml.clone());
    sim.daemons.start(&sim.net, options.window_secs, clickhouse.as_ref())?;
    // The agents attach to their cgroups before traffic starts, so every
    // flow is traced from its first segment.
    pause(Duration::from_secs(2))?;
    traffic::start_generators(&sim.net, &mut sim.daemons)?;
    sim.daemons.check_alive()?;
    let store = match &sim.clickhouse {
        Some(c) => format!("ClickHouse at {} (shards {:?})", c.toml.url, c.toml.shard_urls),
        None => format!("SQLite at {}", dir.join("flowmesh.db").display()),
    };
    say(format!(
        "started {} agents, {} samplers ({} s windows), {} collector(s), {} traffic generators; {store}",
        sim.net.nodes.len(),
        options.racks,
        options.window_secs,
        sim.daemons.collectors,
        sim.net.nodes.len(),
    ));
    scenario::run(&mut sim, options, &faults)
}
