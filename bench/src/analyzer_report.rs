//! `flowmesh-bench analyzer-report`: the time and peak memory of
//! `flowmesh-analyzer report` over a database the size of a 1 000-node
//! deployment's hour, beside a bare rusqlite loop reading the same rows and
//! columns on one connection (the floor: reading them at all, the simple
//! way) measured in the same run. Peak RSS comes from GNU time.
//!
//! The database is written through the storage library (collector-storage), one
//! batch per rack and window as samplers send them. One host is made lossy in
//! the last windows, and the report must name it: a benchmark of a report
//! that found nothing would measure the easy case.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use collector_storage::{BatchWriter, SqliteStore};
use wire_format::{AgentCompleteness, BatchBuilder, BatchInfo, BatchView, PathSummary, Transport};
use wire_format::{encode_histogram, new_rtt_histogram};

use crate::harness::sibling_binary;

const SECOND: u64 = 1_000_000_000;

/// Options of `flowmesh-bench analyzer-report`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Racks in the topology.
    #[arg(long, default_value_t = 25)]
    racks: u32,
    /// Nodes per rack.
    #[arg(long, default_value_t = 40)]
    nodes_per_rack: u32,
    /// Paths each node reports per window: its rack peers, then nodes in
    /// other racks.
    #[arg(long, default_value_t = 100)]
    paths_per_node: u32,
    /// Windows stored, ending now.
    #[arg(long, default_value_t = 100)]
    windows: u32,
    /// Window length, seconds (the sampler's default).
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// Probes per path and window (1 probe/s over the window).
    #[arg(long, default_value_t = 30)]
    probes_per_path: u32,
    /// Keep the database here, and reuse it when it exists: generating
    /// 10 M rows takes a minute or two.
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    /// Timed report runs.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// `sqlite`, `clickhouse` (a two-shard cluster of private servers on
    /// this machine), or `both`: the same rows in each, reported in the same
    /// run, with the reports' anomalies required to be identical.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "clickhouse", "both"])]
    store: String,
}

/// The host made lossy: node 13 of rack 7.
const LOSSY_RACK: u32 = 7;
const LOSSY_INDEX: u32 = 13;
/// Windows at the end in which it is lossy.
const LOSSY_WINDOWS: u32 = 3;

fn node_id(rack: u32, index: u32) -> u32 {
    rack * 1_000 + index
}

fn node_name(rack: u32, index: u32) -> String {
    format!("r{rack}n{index}")
}

fn topology_file(o: &Options) -> String {
    let mut text = String::new();
    for rack in 1..=o.racks {
        text.push_str(&format!("[[racks]]\nid = {rack}\nname = \"rack{rack}\"\n\n"));
    }
    for rack in 1..=o.racks {
        for index in 1..=o.nodes_per_rack {
            text.push_str(&format!(
                "[[nodes]]\nid = {}\nname = \"{}\"\nrack = \"rack{rack}\"\naddresses = [\"198.18.{rack}.{index}\"]\n\n",
                node_id(rack, index),
                node_name(rack, index)
            ));
        }
    }
    text
}

/// The nodes `(rack, index)` probes: its rack peers, then nodes of other
/// racks, spread over them.
fn targets(o: &Options, rack: u32, index: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
    let peers = (1..=o.nodes_per_rack)
        .filter(move |&i| i != index)
        .map(move |i| (rack, i));
    let others = (0..).map(move |k: u32| {
        let other = (rack + k % (o.racks - 1)) % o.racks + 1;
        (other, (index + k / (o.racks - 1) * 7) % o.nodes_per_rack + 1)
    });
    peers.chain(others).take(o.paths_per_node as usize)
}

/// An encoded RTT histogram with its min, p50, p99 and max.
type Pooled = (Vec<u8>, u64, u64, u64, u64);

/// Encoded RTT histograms to draw from: tens of microseconds with jitter, so
/// paths differ without encoding 10 M of them.
fn histogram_pool(probes: u32) -> anyhow::Result<Vec<Pooled>> {
    let mut lcg = 0x2545_f491_4f6c_dd1d_u64;
    let mut jitter = move |span: u64| {
        lcg = lcg
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (lcg >> 33) % span.max(1)
    };
    (0..256u64)
        .map(|i| {
            let floor = 15_000 + i * 150;
            let mut h = new_rtt_histogram();
            for _ in 0..probes {
                h.record(floor + jitter(floor / 4))?;
            }
            let mut bytes = Vec::new();
            encode_histogram(&h, &mut bytes)?;
            Ok((
                bytes,
                h.min(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
            ))
        })
        .collect()
}

fn generate(o: &Options, store: &mut dyn BatchWriter, end_ns: u64) -> anyhow::Result<u64> {
    let pool = histogram_pool(o.probes_per_path)?;
    for rack in 1..=o.racks {
        store.upsert_rack(rack, &format!("rack{rack}"))?;
        for index in 1..=o.nodes_per_rack {
            store.upsert_node(node_id(rack, index), &node_name(rack, index), rack)?;
        }
    }
    let window_ns = o.window_secs * SECOND;
    let first = end_ns / window_ns * window_ns - u64::from(o.windows) * window_ns;
    let started = Instant::now();
    let mut rows = 0u64;
    for w in 0..o.windows {
        let start = first + u64::from(w) * window_ns;
        let lossy_window = w >= o.windows.saturating_sub(LOSSY_WINDOWS);
        let mut encoded = Vec::new();
        for rack in 1..=o.racks {
            let mut b = BatchBuilder::new(BatchInfo::window(rack, rack, start, window_ns));
            for index in 1..=o.nodes_per_rack {
                let src = node_id(rack, index);
                for (other_rack, other) in targets(o, rack, index) {
                    let dst = node_id(other_rack, other);
                    let pick = (src.wrapping_mul(31) ^ dst.wrapping_mul(17)) as usize % pool.len();
                    let (bytes, min, p50, p99, max) = &pool[pick];
                    let mut s = PathSummary::new(src, dst, 0, Some(Transport::Udp));
                    s.probes_sent = o.probes_per_path.into();
                    let lossy = lossy_window
                        && ((rack, index) == (LOSSY_RACK, LOSSY_INDEX)
                            || (other_rack, other) == (LOSSY_RACK, LOSSY_INDEX));
                    s.probes_lost = if lossy { o.probes_per_path / 5 } else { 0 }.into();
                    s.rtt_min_ns = (*min).into();
                    s.rtt_p50_ns = (*p50).into();
                    s.rtt_p99_ns = (*p99).into();
                    s.rtt_max_ns = (*max).into();
                    b.push_path(s, bytes)?;
                    rows += 1;
                }
                let mut c = AgentCompleteness::new(src);
                c.agent_epoch = 1.into();
                c.datagrams_expected = 40.into();
                c.datagrams_received = 40.into();
                c.records = (o.paths_per_node * o.probes_per_path).into();
                c.last_seen_ns = (start + window_ns - SECOND).into();
                b.push_completeness(c);
                rows += 1;
            }
            encoded.push(b.encode()?);
        }
        let views: Vec<BatchView<'_>> = encoded.iter().map(|b| BatchView::parse(b)).collect::<Result<_, _>>()?;
        store.store_batches(&views, start + window_ns)?;
        rows += views.len() as u64;
        if (w + 1) % 10 == 0 || w + 1 == o.windows {
            println!(
                "  generated {} of {} windows, {rows} rows, {:.0} s",
                w + 1,
                o.windows,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(rows)
}

/// The floor: the rows the analyzer reads, read by a bare loop that touches
/// every column (histograms included) and does nothing else. A baseline, so
/// it keeps its own SQL on the storage library's schema.
fn bare_scan(db: &Path) -> anyhow::Result<(Duration, u64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let started = Instant::now();
    let mut stmt = conn.prepare(
        "SELECT window_start_ns, src_node, dst_node, probes_sent, probes_lost, probes_failed, rtt_p99_ns,
                responder_delay_p99_ns, segs_out, retrans_segs, flows_with_retrans, rtt_histogram
         FROM path_windows WHERE window_start_ns >= 0",
    )?;
    let mut rows = stmt.query([])?;
    let (mut count, mut checksum) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        for i in 0..11 {
            checksum = checksum.wrapping_add(r.get::<_, i64>(i)? as u64);
        }
        checksum = checksum.wrapping_add(r.get_ref(11)?.as_blob_or_null()?.map_or(0, <[u8]>::len) as u64);
        count += 1;
    }
    std::hint::black_box(checksum);
    Ok((started.elapsed(), count))
}

/// Which store a report reads.
enum Source<'a> {
    /// An SQLite file.
    Sqlite(&'a Path),
    /// A ClickHouse cluster: URL and database.
    Clickhouse(String, &'a str),
}

/// One `flowmesh-analyzer report` run under GNU time: wall time, peak RSS
/// (KiB) and the JSON report.
fn report(
    analyzer: &Path,
    source: &Source<'_>,
    topology: &Path,
    dir: &Path,
) -> anyhow::Result<(Duration, u64, String)> {
    let json = dir.join("report.json");
    let rss = dir.join("rss");
    let started = Instant::now();
    let mut command = Command::new("/usr/bin/time");
    command
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(analyzer)
        .args(["report", "--since", "all", "--format", "json"]);
    match source {
        Source::Sqlite(db) => command.arg("--database").arg(db),
        Source::Clickhouse(url, database) => command
            .args(["--clickhouse", url])
            .env("FLOWMESH_ANALYZER_STORAGE__CLICKHOUSE__DATABASE", database),
    };
    let out = command
        .arg("--topology")
        .arg(topology)
        .arg("--output")
        .arg(&json)
        .output()
        .context("running /usr/bin/time (Debian package `time`; scripts/setup installs it)")?;
    let elapsed = started.elapsed();
    // Exit 2: anomalies found, which there must be.
    if out.status.code() != Some(2) {
        bail!(
            "flowmesh-analyzer exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peak_kib = std::fs::read_to_string(&rss)?
        .trim()
        .lines()
        .last()
        .unwrap_or("0")
        .parse()?;
    Ok((elapsed, peak_kib, std::fs::read_to_string(json)?))
}

/// The reports' runs over one store: the best time and the peak RSS, and
/// the anomalies of the last report (for comparing stores).
fn timed_reports(
    o: &Options,
    analyzer: &Path,
    source: &Source<'_>,
    topology: &Path,
    dir: &Path,
) -> anyhow::Result<(Duration, u64, serde_json::Value)> {
    let mut best: Option<(Duration, u64)> = None;
    let mut anomalies = serde_json::Value::Null;
    for run in 1..=o.runs {
        let (elapsed, peak_kib, json) = report(analyzer, source, topology, dir)?;
        let lossy = node_name(LOSSY_RACK, LOSSY_INDEX);
        let report: serde_json::Value = serde_json::from_str(&json)?;
        let top = &report["anomalies"][0];
        ensure!(
            top["kind"] == "host" && top["element"] == lossy.as_str(),
            "the report's top anomaly is not host {lossy}: {top}"
        );
        println!(
            "  run {run}: report {:.2} s, peak RSS {:.0} MiB; top anomaly host {lossy}",
            elapsed.as_secs_f64(),
            peak_kib as f64 / 1024.0
        );
        best = Some(best.map_or((elapsed, peak_kib), |(b, r)| (b.min(elapsed), r.max(peak_kib))));
        anomalies = report["anomalies"].clone();
    }
    let (elapsed, peak) = best.context("--runs 0")?;
    Ok((elapsed, peak, anomalies))
}

fn names(o: &Options, store: &mut dyn BatchWriter) -> anyhow::Result<()> {
    for rack in 1..=o.racks {
        store.upsert_rack(rack, &format!("rack{rack}"))?;
        for index in 1..=o.nodes_per_rack {
            store.upsert_node(node_id(rack, index), &node_name(rack, index), rack)?;
        }
    }
    Ok(())
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    ensure!(
        o.racks >= 2 && o.nodes_per_rack >= 2,
        "need at least 2 racks of 2 nodes"
    );
    ensure!(
        o.racks >= LOSSY_RACK && o.nodes_per_rack >= LOSSY_INDEX,
        "the lossy host r{LOSSY_RACK}n{LOSSY_INDEX} must exist"
    );
    let analyzer = sibling_binary("flowmesh-analyzer", "cargo build --release -p bench -p analyzer")?;
    let dir = tempfile::tempdir()?;
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, topology_file(o))?;
    let nodes = o.racks * o.nodes_per_rack;
    println!(
        "analyzer report: {nodes} nodes ({} racks × {}), {} paths per node, {} windows of {} s, {} probes per path",
        o.racks, o.nodes_per_rack, o.paths_per_node, o.windows, o.window_secs, o.probes_per_path
    );
    // One end for both stores: the same windows.
    let end = collector::server::now_ns();
    let mut sqlite_result = None;
    if o.store != "clickhouse" {
        let db = o.database.clone().unwrap_or_else(|| dir.path().join("analyzer.db"));
        if db.exists() {
            println!("  reusing {}", db.display());
        } else {
            let mut store = SqliteStore::open(&db)?;
            names(o, &mut store)?;
            let rows = generate(o, &mut store, end)?;
            println!("  wrote {rows} rows to {}", db.display());
        }
        let (scan, path_rows) = bare_scan(&db)?;
        println!(
            "  SQLite: {path_rows} path_windows rows, {:.0} bytes on disk per path window (the whole file)",
            collector_storage::sqlite::database_bytes(&db) as f64 / path_rows.max(1) as f64
        );
        let (report, peak, anomalies) = timed_reports(o, &analyzer, &Source::Sqlite(&db), &topology, dir.path())?;
        println!(
            "  bare rusqlite scan, one reader (floor)   {:>7.2} s\n  flowmesh-analyzer report (best run)       {:>7.2} s  {:.2}× floor, peak RSS {:.0} MiB",
            scan.as_secs_f64(),
            report.as_secs_f64(),
            report.as_secs_f64() / scan.as_secs_f64(),
            peak as f64 / 1024.0
        );
        sqlite_result = Some((report, anomalies));
    }
    if o.store != "sqlite" {
        println!("  ClickHouse: two shards, private clickhouse-server processes on this machine");
        let cluster = collector_storage_clickhouse::cluster::LocalCluster::start(2)?;
        let options = crate::clickhouse_ingest::options(&cluster, "analyzer");
        let mut store = collector_storage_clickhouse::ClickHouseStore::open(options.clone())?;
        names(o, &mut store)?;
        let started = Instant::now();
        let rows = generate(o, &mut store, end)?;
        println!(
            "  wrote {rows} rows to the cluster in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        // Merge the inserted parts as ClickHouse does in the background
        // over time, so the sizes and reads are those of settled data.
        for url in cluster.urls() {
            crate::clickhouse_ingest::optimize(&url, "analyzer")?;
        }
        let sizes = store.bytes_on_disk()?;
        let path_rows = collector_storage::Reader::row_counts(&store)?.path_windows;
        let total: u64 = sizes.iter().map(|(_, b)| b).sum();
        let paths = sizes.iter().find(|(t, _)| *t == "path_windows").map_or(0, |(_, b)| *b);
        println!(
            "  ClickHouse: {path_rows} path_windows rows, {:.0} bytes on disk per path window ({:.0} in path_windows itself)",
            total as f64 / path_rows.max(1) as f64,
            paths as f64 / path_rows.max(1) as f64
        );
        let (report, peak, anomalies) = timed_reports(
            o,
            &analyzer,
            &Source::Clickhouse(cluster.url(0), "analyzer"),
            &topology,
            dir.path(),
        )?;
        println!(
            "  flowmesh-analyzer report on ClickHouse (best run) {:>7.2} s, peak RSS {:.0} MiB",
            report.as_secs_f64(),
            peak as f64 / 1024.0
        );
        if let Some((sqlite, sqlite_anomalies)) = sqlite_result {
            ensure!(
                sqlite_anomalies == anomalies,
                "the reports differ between SQLite and ClickHouse"
            );
            println!(
                "  same anomalies on both; ClickHouse report {:.2}× the SQLite report's time",
                report.as_secs_f64() / sqlite.as_secs_f64()
            );
        }
    }
    Ok(())
}
