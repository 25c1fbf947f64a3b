//! `flowmesh-bench pipeline`: synthetic agents' datagrams through the real
//! `flowmesh-sampler` and `flowmesh-collector` into SQLite, at rising rates;
//! for each rate, whether anything was lost anywhere and how busy each tier
//! was, so the first tier to saturate is measured, not guessed.
//!
//! Zero loss at a rate means: every datagram sent was received by the
//! sampler, and every window the sampler emitted was stored by the collector
//! (acknowledged, nothing left in the spool). The sampler runs pinned to
//! CPU 1; the collector and the sender (this process) share CPU 0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use configs_runtime::tls::DevPki;

use crate::harness::{
    ChildGuard, CollectorToml, cpu_seconds, free_local_addr, metric, pinned, scrape, sibling_binary, start_daemon,
};
use crate::sampler_ingest::{self, Kind, RECEIVER_CPU, blast, build_traffic};

/// The CPU the collector shares with the sender (this process).
const COLLECTOR_CPU: u32 = 0;
/// How to build what this benchmark runs.
const BUILD: &str = "cargo build --release -p collector -p rack-sampler -p bench";

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Agents (source nodes) in the rack.
    #[arg(long, default_value_t = 200)]
    agents: u32,
    /// Probe targets per agent (paths = agents × targets).
    #[arg(long, default_value_t = 100)]
    targets: u32,
    /// The sampler's aggregation window, seconds.
    #[arg(long, default_value_t = 5)]
    window_secs: u64,
    /// Seconds each rate is sent for.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offered rates, million records per second, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.5, 1.0, 2.0, 3.0])]
    rates: Vec<f64>,
}

/// Counters of both tiers at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    datagrams: u64,
    records: u64,
    windows_emitted: u64,
    batches_acked: u64,
    spool_batches: u64,
    rows_stored: u64,
    batches_stored: u64,
    sampler_cpu: f64,
    collector_cpu: f64,
}

struct Tiers {
    ingest: SocketAddr,
    sampler: ChildGuard,
    sampler_metrics: SocketAddr,
    collector: ChildGuard,
    collector_metrics: SocketAddr,
}

impl Tiers {
    fn counters(&self) -> anyhow::Result<Counters> {
        let s = scrape(self.sampler_metrics)?;
        let c = scrape(self.collector_metrics)?;
        Ok(Counters {
            datagrams: metric(&s, "flowmesh_sampler_datagrams_received_total"),
            records: metric(&s, "flowmesh_sampler_records_received_total{kind=\"probe\"}"),
            windows_emitted: metric(&s, "flowmesh_sampler_windows_emitted_total"),
            batches_acked: metric(&s, "flowmesh_sampler_uplink_batches_acked_total{status=\"stored\"}"),
            spool_batches: metric(&s, "flowmesh_sampler_spool_batches"),
            rows_stored: metric(&c, "flowmesh_collector_rows_stored_total"),
            batches_stored: metric(&c, "flowmesh_collector_batches_total{outcome=\"stored\"}"),
            sampler_cpu: cpu_seconds(&self.sampler.0.id().to_string())?,
            collector_cpu: cpu_seconds(&self.collector.0.id().to_string())?,
        })
    }
}

fn start(dir: &std::path::Path, traffic_opts: &sampler_ingest::Options) -> anyhow::Result<Tiers> {
    let collector_addr = free_local_addr()?;
    let collector_metrics = free_local_addr()?;
    let ingest = free_local_addr()?;
    let sampler_metrics = free_local_addr()?;
    // Also writes the topology and the PKI the collector's configuration
    // names.
    let sampler_config = sampler_ingest::write_setup(dir, traffic_opts, ingest, sampler_metrics, Some(collector_addr))?;
    let collector_config = dir.join("collector.toml");
    let collector_toml = CollectorToml {
        listen: collector_addr,
        metrics: collector_metrics,
        database: &dir.join("flowmesh.db"),
        topology: &dir.join("topology.toml"),
        tls: &DevPki { dir: dir.join("pki") }.collector(),
        clickhouse: None,
    };
    std::fs::write(&collector_config, collector_toml.render())?;
    // At a lower priority than the sender it shares CPU 0 with: storing a
    // window's batch (~0.3 s of CPU) would otherwise hold the sender back,
    // which then catches up in a burst no set of independent agents sends
    // (the "sender lag" column), and the sampler's loss would be the
    // harness's.
    let mut collector = std::process::Command::new("nice");
    collector
        .args(["-n", "10", "taskset", "-c", &COLLECTOR_CPU.to_string()])
        .arg(sibling_binary("flowmesh-collector", BUILD)?);
    collector.env("RUST_LOG", "error");
    let collector = start_daemon(
        collector,
        &collector_config,
        &dir.join("collector.log"),
        collector_metrics,
        "flowmesh-collector",
    )?;
    let mut sampler = pinned(RECEIVER_CPU, &sibling_binary("flowmesh-sampler", BUILD)?);
    // As in sampler-ingest: e.g. `rack_sampler=debug` for each window's
    // encoding and spooling times, printed at the end.
    sampler.env(
        "RUST_LOG",
        std::env::var("FLOWMESH_BENCH_SAMPLER_LOG").unwrap_or_else(|_| "error".into()),
    );
    let sampler = start_daemon(
        sampler,
        &sampler_config,
        &dir.join("sampler.log"),
        sampler_metrics,
        "flowmesh-sampler",
    )?;
    Ok(Tiers {
        ingest,
        sampler,
        sampler_metrics,
        collector,
        collector_metrics,
    })
}

/// Runs the benchmark and prints its report.
pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    let traffic_opts = sampler_ingest::Options {
        seconds: opts.seconds,
        window_secs: opts.window_secs,
        agents: opts.agents,
        targets: opts.targets,
        kind: Kind::Probe,
        paced: 1.0,
        runs: 1,
        aggregation_only: false,
    };
    let mut traffic = build_traffic(&traffic_opts)?;
    let per = traffic.records_per_datagram;
    let paths = u64::from(opts.agents) * u64::from(opts.targets);
    println!(
        "pipeline: synthetic agents → flowmesh-sampler (CPU 1) → QUIC → flowmesh-collector (CPU 0, with the sender) → SQLite; \
         {} agents × {} targets = {paths} paths, {} s windows, {} s per rate",
        opts.agents, opts.targets, opts.window_secs, opts.seconds
    );
    let dir = tempfile::tempdir()?;
    let tiers = start(dir.path(), &traffic_opts)?;
    // The sampler's socket buffer, which decides how long a stall it rides
    // out, is the kernel's to cap: say what the socket got, so runs compare.
    let page = scrape(tiers.sampler_metrics)?;
    let series = format!(
        "flowmesh_sampler_ingest_receive_buffer_bytes{{listen=\"{}\"}}",
        tiers.ingest
    );
    let capped = format!(
        "flowmesh_sampler_ingest_receive_buffer_capped{{listen=\"{}\"}}",
        tiers.ingest
    );
    let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").map_or(0, |t| t.trim().parse().unwrap_or(0));
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "  the sampler's ingest socket buffer: {:.1} MiB{} (net.core.rmem_max {:.1} MiB; deploy/sysctl.d/60-flowmesh.conf sets 8 MiB)",
        mib(metric(&page, &series)),
        if metric(&page, &capped) == 1 {
            ", capped by net.core.rmem_max"
        } else {
            ""
        },
        mib(rmem_max)
    );
    println!(
        "  offered M rec/s | received M rec/s | lost datagrams | windows stored/emitted | spool | rows/s stored | sampler CPU | collector CPU | sender lag"
    );
    let settle = Duration::from_secs(opts.window_secs + 4);
    let mut best = None;
    let mut first_loss = None;
    for &rate in &opts.rates {
        let before = tiers.counters()?;
        let started = Instant::now();
        let sent = blast(&mut traffic, tiers.ingest, opts.seconds, Some(rate * 1e6 / per))?;
        let sending = started.elapsed().as_secs_f64();
        std::thread::sleep(settle);
        let after = tiers.counters()?;
        let elapsed = started.elapsed().as_secs_f64();
        let received = after.datagrams - before.datagrams;
        let lost = sent.saturating_sub(received);
        let emitted = after.windows_emitted - before.windows_emitted;
        let stored = after.batches_stored - before.batches_stored;
        let acked = after.batches_acked - before.batches_acked;
        let zero_loss = lost == 0 && stored >= emitted && acked >= emitted && after.spool_batches == 0;
        println!(
            "  {:>15.2} | {:>16.2} | {:>14} | {:>10} / {:<11} | {:>5} | {:>13.0} | {:>10.0} % | {:>11.0} % | {:>7.1} ms{}",
            sent as f64 * per / sending / 1e6,
            (after.records - before.records) as f64 / sending / 1e6,
            lost,
            stored,
            emitted,
            after.spool_batches,
            (after.rows_stored - before.rows_stored) as f64 / elapsed,
            100.0 * (after.sampler_cpu - before.sampler_cpu) / elapsed,
            100.0 * (after.collector_cpu - before.collector_cpu) / elapsed,
            traffic.max_lag.as_secs_f64() * 1e3,
            if zero_loss { "" } else { "  ← loss" }
        );
        if zero_loss && first_loss.is_none() {
            best = Some(sent as f64 * per / sending);
        } else if !zero_loss && first_loss.is_none() {
            first_loss = Some(if lost > 0 {
                "sampler (UDP ingest)"
            } else {
                "sampler → collector uplink or collector"
            });
        }
    }
    match best {
        Some(rate) => println!(
            "  highest rate with zero loss end to end: {:.2} M records/s",
            rate / 1e6
        ),
        None => println!("  no rate was loss-free"),
    }
    match first_loss {
        Some(tier) => println!("  first tier to lose records: {tier}"),
        None => println!("  no tier lost records at the rates offered"),
    }
    if std::env::var_os("FLOWMESH_BENCH_SAMPLER_LOG").is_some() {
        print!("{}", std::fs::read_to_string(dir.path().join("sampler.log"))?);
    }
    Ok(())
}
