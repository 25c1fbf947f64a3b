//! `flowmesh-bench`: benchmarks of whole tiers over real sockets and files,
//! each reported beside a baseline measured in the same run.
//!
//! `flowmesh-bench collector-ingest` measures rows/s from a QUIC client
//! through the collector into SQLite, against a bare rusqlite loop inserting
//! the same rows with prepared statements in the same transaction sizes (the
//! ceiling), and the collector's store API without QUIC (where the rest goes).
//!
//! `flowmesh-bench analyzer-report` measures `flowmesh-analyzer report`
//! over a 1 000-node hour of path windows against a bare scan of the same
//! rows ([`analyzer_report`]).
//!
//! `flowmesh-bench sampler-ingest` measures the sampler's UDP ingest against
//! a bare receive loop ([`sampler_ingest`]).
//!
//! `flowmesh-bench pipeline` sends synthetic agents' datagrams through the
//! sampler and the collector into SQLite at rising rates and reports loss
//! and each tier's load ([`pipeline`]).
//!
//! `flowmesh-bench tcp-overhead` measures what tracing costs: loopback TCP
//! connection rate and throughput untraced, with the agent, and with a
//! bpftrace peer ([`tcp_overhead`]).
//!
//! `flowmesh-bench rack-sim` runs the whole pipeline on racks of simulated
//! hosts in network namespaces, injects each fault class and checks the
//! analyzer names it within two windows ([`rack_sim`]).
//!
//! The benchmarks start, watch and stop flowmesh's daemons through one set
//! of process helpers ([`harness`]).

mod analyzer_report;
mod clickhouse_ingest;
mod harness;
mod pipeline;
mod rack_sim;
mod sampler_ingest;
mod tcp_overhead;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use collector::server::{self, Stats, Writer};
use collector_storage::{BatchWriter, SqliteStore, Stored};
use configs_runtime::tls::{self, DevPki};
use rusqlite::params;
use wire_format::{
    AckStatus, BatchAck, BatchBuilder, BatchInfo, BatchView, PathSummary, Transport, encode_histogram,
    new_rtt_histogram,
};

/// flowmesh benchmarks.
#[derive(Parser)]
#[command(name = "flowmesh-bench")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Collector ingest: QUIC → SQLite rows/s beside a bare rusqlite loop.
    CollectorIngest {
        /// Batches to send.
        #[arg(long, default_value_t = 400)]
        batches: u32,
        /// Path summaries per batch (one row each).
        #[arg(long, default_value_t = 1_000)]
        paths: u32,
        /// Probes behind each path's RTT histogram (0: no histograms).
        #[arg(long, default_value_t = 30)]
        probes_per_path: u32,
        /// Batches committed per transaction (the collector's default).
        #[arg(long, default_value_t = 16)]
        per_transaction: usize,
        /// Streams the client keeps in flight.
        #[arg(long, default_value_t = 16)]
        streams: usize,
        /// `sqlite`, or `clickhouse` to also measure a two-shard ClickHouse
        /// cluster of private servers in the same run.
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "clickhouse"])]
        store: String,
        /// Times to repeat the whole measurement (for the spread).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// ClickHouse inserts the collector keeps in flight
        /// (`storage.clickhouse.concurrent_inserts`).
        #[arg(long, default_value_t = 1)]
        concurrent_inserts: usize,
    },
    /// Analyzer report: time and peak RSS of `flowmesh-analyzer report` over
    /// 10 M path-window rows beside a bare SQLite scan of them.
    AnalyzerReport(analyzer_report::Options),
    /// Sampler ingest: records/s through flowmesh-sampler beside a bare
    /// receive loop, and the loss at a paced rate.
    SamplerIngest(sampler_ingest::Options),
    /// Tracing overhead: loopback TCP connection rate and bulk throughput
    /// untraced, with flowmesh-agent, and with a bpftrace peer.
    TcpOverhead(tcp_overhead::Options),
    /// Whole pipeline: synthetic agents through the sampler and the
    /// collector into SQLite at rising rates; loss and load of each tier.
    Pipeline(pipeline::Options),
    /// Rack simulation: agents, samplers and a collector on racks of
    /// network namespaces; each fault injected and its detection timed.
    RackSim(rack_sim::Options),
    /// (Used by rack-sim.) TCP request/response and bulk traffic to peers,
    /// or a paced UDP stream.
    #[command(hide = true)]
    Traffic(rack_sim::TrafficOptions),
    /// (Used by sampler-ingest.) Count datagrams received on LISTEN.
    #[command(hide = true)]
    UdpSink {
        /// Address to receive on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Seconds to run.
        #[arg(long)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::CollectorIngest {
            batches,
            paths,
            probes_per_path,
            per_transaction,
            streams,
            store,
            runs,
            concurrent_inserts,
        } => collector_ingest(
            batches,
            paths,
            probes_per_path,
            (per_transaction, streams, concurrent_inserts),
            store == "clickhouse",
            runs,
        ),
        Bench::AnalyzerReport(options) => analyzer_report::run(&options),
        Bench::SamplerIngest(options) => sampler_ingest::run(&options),
        Bench::UdpSink { listen, seconds } => sampler_ingest::udp_sink(listen, seconds),
        Bench::RackSim(options) => rack_sim::run_sim(&options),
        Bench::Pipeline(options) => pipeline::run(&options),
        Bench::TcpOverhead(options) => tcp_overhead::run(&options),
        Bench::Traffic(options) => rack_sim::traffic(&options),
    }
}

const SECOND: u64 = 1_000_000_000;

/// Batches of `paths` path summaries each, in recent windows. Every path
/// carries the RTT histogram of `probes` probes, as the sampler's do (the
/// defaults, 1 probe/s per target and 30 s windows, make 30): tens of
/// microseconds with deterministic jitter, so histograms differ by path.
fn make_batches(count: u32, paths: u32, probes: u32) -> anyhow::Result<Vec<Vec<u8>>> {
    let base = (server::now_ns() / (10 * SECOND) - u64::from(count) - 10) * 10 * SECOND;
    let mut lcg = 0x2545_f491_4f6c_dd1d_u64;
    let mut jitter = move |span: u64| {
        lcg = lcg
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (lcg >> 33) % span
    };
    let mut encoded = Vec::new();
    (0..count)
        .map(|i| {
            let start = base + u64::from(i) * 10 * SECOND;
            let mut b = BatchBuilder::new(BatchInfo::window(1, 1, start, 10 * SECOND));
            for p in 0..paths {
                let mut s = PathSummary::new(p / 64 + 1, p % 64 + 1, (p % 8) as u8, Some(Transport::Udp));
                let mut histogram = new_rtt_histogram();
                let floor = 15_000 + u64::from(p % 97) * 300;
                for _ in 0..probes {
                    histogram.record(floor + jitter(floor / 3))?;
                }
                s.probes_sent = probes.into();
                s.probes_lost = (p % 3).min(probes).into();
                s.rtt_min_ns = histogram.min().into();
                s.rtt_p50_ns = histogram.value_at_quantile(0.5).into();
                s.rtt_p99_ns = histogram.value_at_quantile(0.99).into();
                s.rtt_max_ns = histogram.max().into();
                encoded.clear();
                encode_histogram(&histogram, &mut encoded)?;
                b.push_path(s, &encoded)?;
            }
            Ok(b.encode()?)
        })
        .collect()
}

/// Rows a batch writes: its `batches` row and one per path.
fn rows(batches: &[Vec<u8>]) -> u64 {
    batches
        .iter()
        .map(|b| BatchView::parse(b).map_or(0, |v| 1 + v.paths.len() as u64))
        .sum()
}

/// The ceiling: the same rows inserted by a bare prepared-statement loop.
/// It is the baseline the storage library is measured against, so it keeps
/// its own SQL (the one place outside collector-storage that names a table,
/// with the bare scan of [`analyzer_report`]) on the library's schema.
fn bare_rusqlite(db: &Path, batches: &[Vec<u8>], per_transaction: usize) -> anyhow::Result<Duration> {
    drop(SqliteStore::open(db)?); // the same schema and indexes
    let mut conn = rusqlite::Connection::open(db)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536;")?;
    let views: Vec<BatchView<'_>> = batches.iter().map(|b| BatchView::parse(b)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in views.chunks(per_transaction) {
        let tx = conn.transaction()?;
        {
            let mut batch_row = tx.prepare_cached(
                "INSERT INTO batches (batch_id, sampler_id, rack_id, window_start_ns, window_len_ns, created_ns,
                     received_ns, path_count, completeness_count, flow_sample_count, probe_sample_count,
                     malformed_datagrams, records_over_capacity, spool_dropped_batches)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, 0, 0, 0, 0)",
            )?;
            let mut path_row = tx.prepare_cached(
                "INSERT INTO path_windows (batch_id, window_start_ns, window_len_ns, rack_id, src_node, dst_node,
                     dscp, transport, probes_sent, probes_lost, probes_failed, rtt_min_ns, rtt_p50_ns, rtt_p90_ns,
                     rtt_p99_ns, rtt_p999_ns, rtt_max_ns, responder_delay_p50_ns, responder_delay_p99_ns, flows,
                     flows_with_retrans, flows_reset, bytes_sent, bytes_received, segs_out, retrans_segs,
                     rtt_histogram)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
                     ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
            )?;
            for v in chunk {
                let h = v.header;
                let id = &h.batch_id.0[..];
                let start = h.window_start_ns.get() as i64;
                let len = h.window_len_ns.get() as i64;
                batch_row.execute(params![id, 1, 1, start, len, 0, 0, v.paths.len() as i64])?;
                for p in v.paths {
                    path_row.execute(params![
                        id,
                        start,
                        len,
                        1,
                        p.src_node.get(),
                        p.dst_node.get(),
                        p.dscp,
                        "udp",
                        p.probes_sent.get(),
                        p.probes_lost.get(),
                        p.probes_failed.get(),
                        p.rtt_min_ns.get() as i64,
                        p.rtt_p50_ns.get() as i64,
                        p.rtt_p90_ns.get() as i64,
                        p.rtt_p99_ns.get() as i64,
                        p.rtt_p999_ns.get() as i64,
                        p.rtt_max_ns.get() as i64,
                        p.responder_delay_p50_ns.get() as i64,
                        p.responder_delay_p99_ns.get() as i64,
                        p.flows.get(),
                        p.flows_with_retrans.get(),
                        p.flows_reset.get(),
                        p.bytes_sent.get() as i64,
                        p.bytes_received.get() as i64,
                        p.segs_out.get() as i64,
                        p.retrans_segs.get() as i64,
                        Some(v.histogram(p)).filter(|h| !h.is_empty()),
                    ])?;
                }
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}

/// The storage library's write path alone, same transaction sizes, no
/// network.
fn store_only(db: &Path, batches: &[Vec<u8>], per_transaction: usize) -> anyhow::Result<Duration> {
    let mut store = SqliteStore::open(db)?;
    let views: Vec<BatchView<'_>> = batches.iter().map(|b| BatchView::parse(b)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in views.chunks(per_transaction) {
        let outcomes = store.store_batches(chunk, 0)?;
        anyhow::ensure!(outcomes.iter().all(|o| *o == Stored::New), "unexpected duplicate");
    }
    Ok(started.elapsed())
}

/// End to end: a QUIC client with `streams` batches in flight, through the
/// collector's server and writer, to acknowledgements after commit.
fn quic_end_to_end(
    dir: &Path,
    batches: Vec<Vec<u8>>,
    store: Box<dyn BatchWriter>,
    per_transaction: usize,
    streams: usize,
) -> anyhow::Result<Duration> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let pki = DevPki::generate(&dir.join("pki"), &["localhost".into()], &["bench".into()])?;
        let stats = Arc::new(Stats::default());
        let (writer, writer_thread) = Writer::spawn(store, 64, per_transaction, stats.clone())?;
        let mut server_config = tls::server_config(&pki.collector())?;
        server_config.transport_config(Arc::new(server::transport_config(64)));
        let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
        let addr = endpoint.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(endpoint, writer, stats.clone(), async {
            let _ = stopped.await;
        }));

        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(tls::client_config(&pki.sampler("bench"))?);
        let conn = client.connect(addr, "localhost")?.await?;
        let queue = Arc::new(tokio::sync::Mutex::new(batches.into_iter()));
        let started = Instant::now();
        let lanes: Vec<_> = (0..streams)
            .map(|_| {
                let conn = conn.clone();
                let queue = queue.clone();
                tokio::spawn(async move {
                    loop {
                        let Some(bytes) = queue.lock().await.next() else {
                            return anyhow::Ok(());
                        };
                        let (mut tx, mut rx) = conn.open_bi().await?;
                        tx.write_all(&bytes).await?;
                        tx.finish()?;
                        let reply = rx.read_to_end(64).await?;
                        let status = BatchAck::parse(&reply)?.status();
                        anyhow::ensure!(status == AckStatus::Stored, "acknowledged {status:?}");
                    }
                })
            })
            .collect();
        for lane in lanes {
            lane.await??;
        }
        let elapsed = started.elapsed();
        conn.close(0u32.into(), b"done");
        let _ = stop.send(());
        serving.await?;
        tokio::task::spawn_blocking(move || writer_thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        Ok(elapsed)
    })
}

/// Seconds to rows/s over the run's rows.
struct Rate(f64);
impl Rate {
    fn of(&self, d: Duration) -> f64 {
        self.0 / d.as_secs_f64()
    }
}

/// `(per_transaction, streams, concurrent_inserts)`: how the collector
/// groups, how many batches the client keeps in flight, how many
/// ClickHouse inserts the collector overlaps.
type Concurrency = (usize, usize, usize);

fn collector_ingest(
    count: u32,
    paths: u32,
    probes: u32,
    (per_transaction, streams, concurrent_inserts): Concurrency,
    clickhouse: bool,
    runs: u32,
) -> anyhow::Result<()> {
    let batches = make_batches(count, paths, probes)?;
    let rate = Rate(rows(&batches) as f64);
    let bytes: usize = batches.iter().map(Vec::len).sum();
    println!(
        "collector ingest: {count} batches × {paths} paths = {} rows ({:.1} MB; RTT histograms of {probes} \
         probes), {per_transaction} batches per transaction, synchronous = FULL, {streams} QUIC streams in flight",
        rate.0,
        bytes as f64 / 1e6
    );
    let cluster = clickhouse
        .then(|| {
            println!(
                "  ClickHouse: two shards, private clickhouse-server processes on this machine; \
                 {concurrent_inserts} concurrent inserts"
            );
            collector_storage_clickhouse::cluster::LocalCluster::start(2)
        })
        .transpose()
        .context("starting the ClickHouse cluster")?;
    let mut ratios: Vec<[f64; 3]> = Vec::new();
    for run in 1..=runs {
        let dir = tempfile::tempdir()?;
        let ceiling = bare_rusqlite(&dir.path().join("bare.db"), &batches, per_transaction).context("bare rusqlite")?;
        let store = store_only(&dir.path().join("store.db"), &batches, per_transaction).context("store only")?;
        let sqlite = Box::new(SqliteStore::open(&dir.path().join("quic.db"))?);
        let quic = quic_end_to_end(dir.path(), batches.clone(), sqlite, per_transaction, streams)
            .context("QUIC end to end")?;
        if runs > 1 {
            println!("run {run}");
        }
        println!(
            "  bare rusqlite loop (ceiling)    {:>10.0} rows/s  {:>8.3} s",
            rate.of(ceiling),
            ceiling.as_secs_f64()
        );
        println!(
            "  collector store API             {:>10.0} rows/s  {:>8.3} s  {:.2}× ceiling",
            rate.of(store),
            store.as_secs_f64(),
            rate.of(store) / rate.of(ceiling)
        );
        println!(
            "  QUIC → collector → SQLite       {:>10.0} rows/s  {:>8.3} s  {:.2}× ceiling",
            rate.of(quic),
            quic.as_secs_f64(),
            rate.of(quic) / rate.of(ceiling)
        );
        let Some(cluster) = &cluster else { continue };
        let db = |what: &str| format!("{what}_{run}");
        let ch_ceiling = clickhouse_ingest::bare_client(cluster, &db("bare"), &batches, per_transaction)
            .context("bare ClickHouse client")?;
        let ch_store = clickhouse_ingest::store_only(cluster, &db("store"), &batches, per_transaction)
            .context("ClickHouse store only")?;
        let ch_quic = quic_end_to_end(
            dir.path(),
            batches.clone(),
            clickhouse_ingest::store(cluster, &db("quic"), concurrent_inserts)?,
            per_transaction,
            streams,
        )
        .context("QUIC end to end into ClickHouse")?;
        println!(
            "  bare ClickHouse client (ceiling){:>10.0} rows/s  {:>8.3} s",
            rate.of(ch_ceiling),
            ch_ceiling.as_secs_f64()
        );
        println!(
            "  ClickHouse store API            {:>10.0} rows/s  {:>8.3} s  {:.2}× ceiling",
            rate.of(ch_store),
            ch_store.as_secs_f64(),
            rate.of(ch_store) / rate.of(ch_ceiling)
        );
        let r = [
            rate.of(ch_quic) / rate.of(ch_ceiling),
            rate.of(ch_quic) / rate.of(quic),
            rate.of(ch_quic),
        ];
        println!(
            "  QUIC → collector → ClickHouse   {:>10.0} rows/s  {:>8.3} s  {:.2}× ceiling, {:.2}× QUIC → SQLite",
            r[2],
            ch_quic.as_secs_f64(),
            r[0],
            r[1]
        );
        ratios.push(r);
    }
    if ratios.len() > 1 {
        let span = |i: usize| {
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r[i]), hi.max(r[i])));
            format!("{lo:.2}–{hi:.2}")
        };
        println!(
            "over {} runs: QUIC → ClickHouse {}× its ceiling, {}× QUIC → SQLite",
            ratios.len(),
            span(0),
            span(1)
        );
    }
    Ok(())
}
