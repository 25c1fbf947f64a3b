//! The ClickHouse half of `flowmesh-bench collector-ingest --store
//! clickhouse`: the same batches into a two-shard cluster of private
//! servers on this machine, three ways — a bare client inserting the same
//! rows into the same Distributed tables (the ceiling), the storage
//! library's write path, and QUIC through the collector.
//!
//! The bare client is the yardstick the library is measured against, so it
//! writes its rows itself, with its own row type (the library's are
//! private): the `path_windows` and `batches` rows the batches carry, one
//! insert per table per group of `per_transaction` batches, with the
//! collector's `insert_distributed_sync = 1` — everything the library does
//! except looking batches up first.

use std::time::{Duration, Instant};

use clickhouse::Row;
use collector_storage::{BatchWriter, Stored};
use collector_storage_clickhouse::cluster::{CLUSTER, LocalCluster};
use collector_storage_clickhouse::{ClickHouseStore, Options};
use serde::Serialize;
use wire_format::BatchView;

/// A fresh database on the cluster, with flowmesh's schema.
pub(crate) fn options(cluster: &LocalCluster, database: &str) -> Options {
    Options {
        database: database.to_string(),
        cluster: CLUSTER.to_string(),
        shard_urls: cluster.urls(),
        ..Options::new(cluster.url(0))
    }
}

#[derive(Row, Serialize)]
struct BarePath<'a> {
    batch_id: [u8; 16],
    row: u32,
    window_start_ns: u64,
    window_len_ns: u64,
    rack_id: u32,
    src_node: u32,
    dst_node: u32,
    dscp: u8,
    transport: Option<&'static str>,
    probes_sent: u32,
    probes_lost: u32,
    probes_failed: u32,
    rtt_min_ns: u64,
    rtt_p50_ns: u64,
    rtt_p90_ns: u64,
    rtt_p99_ns: u64,
    rtt_p999_ns: u64,
    rtt_max_ns: u64,
    responder_delay_p50_ns: u64,
    responder_delay_p99_ns: u64,
    flows: u32,
    flows_with_retrans: u32,
    flows_reset: u32,
    bytes_sent: u64,
    bytes_received: u64,
    segs_out: u64,
    retrans_segs: u64,
    #[serde(with = "serde_bytes")]
    rtt_histogram: &'a [u8],
}

#[derive(Row, Serialize)]
struct BareBatch {
    batch_id: [u8; 16],
    sampler_id: u32,
    rack_id: u32,
    window_start_ns: u64,
    window_len_ns: u64,
    created_ns: u64,
    received_ns: u64,
    path_count: u32,
    completeness_count: u32,
    flow_sample_count: u32,
    probe_sample_count: u32,
    malformed_datagrams: u32,
    records_over_capacity: u32,
    spool_dropped_batches: u32,
}

/// The ceiling: a bare client inserting the batches' rows.
pub(crate) fn bare_client(
    cluster: &LocalCluster,
    database: &str,
    batches: &[Vec<u8>],
    per_transaction: usize,
) -> anyhow::Result<Duration> {
    let options = options(cluster, database);
    drop(ClickHouseStore::open(options.clone())?); // the same schema
    let client = clickhouse::Client::default()
        .with_url(&options.url)
        .with_database(&options.database)
        .with_validation(false)
        .with_setting("insert_distributed_sync", "1");
    let views: Vec<BatchView<'_>> = batches.iter().map(|b| BatchView::parse(b)).collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    runtime.block_on(async {
        for chunk in views.chunks(per_transaction) {
            let mut paths = client.insert::<BarePath<'static>>("path_windows").await?;
            for v in chunk {
                let h = v.header;
                for (row, p) in (0u32..).zip(v.paths) {
                    paths
                        .write(&BarePath {
                            batch_id: h.batch_id.0,
                            row,
                            window_start_ns: h.window_start_ns.get(),
                            window_len_ns: h.window_len_ns.get(),
                            rack_id: h.rack_id.get(),
                            src_node: p.src_node.get(),
                            dst_node: p.dst_node.get(),
                            dscp: p.dscp,
                            transport: Some("udp"),
                            probes_sent: p.probes_sent.get(),
                            probes_lost: p.probes_lost.get(),
                            probes_failed: p.probes_failed.get(),
                            rtt_min_ns: p.rtt_min_ns.get(),
                            rtt_p50_ns: p.rtt_p50_ns.get(),
                            rtt_p90_ns: p.rtt_p90_ns.get(),
                            rtt_p99_ns: p.rtt_p99_ns.get(),
                            rtt_p999_ns: p.rtt_p999_ns.get(),
                            rtt_max_ns: p.rtt_max_ns.get(),
                            responder_delay_p50_ns: p.responder_delay_p50_ns.get(),
                            responder_delay_p99_ns: p.responder_delay_p99_ns.get(),
                            flows: p.flows.get(),
                            flows_with_retrans: p.flows_with_retrans.get(),
                            flows_reset: p.flows_reset.get(),
                            bytes_sent: p.bytes_sent.get(),
                            bytes_received: p.bytes_received.get(),
                            segs_out: p.segs_out.get(),
                            retrans_segs: p.retrans_segs.get(),
                            rtt_histogram: v.histogram(p),
                        })
                        .await?;
                }
            }
            paths.end().await?;
            let mut heads = client.insert::<BareBatch>("batches").await?;
            for v in chunk {
                let h = v.header;
                heads
                    .write(&BareBatch {
                        batch_id: h.batch_id.0,
                        sampler_id: h.sampler_id.get(),
                        rack_id: h.rack_id.get(),
                        window_start_ns: h.window_start_ns.get(),
                        window_len_ns: h.window_len_ns.get(),
                        created_ns: h.created_ns.get(),
                        received_ns: 0,
                        path_count: h.path_count.get(),
                        completeness_count: 0,
                        flow_sample_count: 0,
                        probe_sample_count: 0,
                        malformed_datagrams: 0,
                        records_over_capacity: 0,
                        spool_dropped_batches: 0,
                    })
                    .await?;
            }
            heads.end().await?;
        }
        anyhow::Ok(())
    })?;
    Ok(started.elapsed())
}

/// The storage library's write path alone, into database `database`.
pub(crate) fn store_only(
    cluster: &LocalCluster,
    database: &str,
    batches: &[Vec<u8>],
    per_transaction: usize,
) -> anyhow::Result<Duration> {
    let mut store = ClickHouseStore::open(options(cluster, database))?;
    let views: Vec<BatchView<'_>> = batches.iter().map(|b| BatchView::parse(b)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in views.chunks(per_transaction) {
        let outcomes = store.store_batches(chunk, 0)?;
        anyhow::ensure!(outcomes.iter().all(|o| *o == Stored::New), "unexpected duplicate");
    }
    Ok(started.elapsed())
}

/// A store for the QUIC run, in database `database`, with
/// `concurrent_inserts` writers in the collector.
pub(crate) fn store(
    cluster: &LocalCluster,
    database: &str,
    concurrent_inserts: usize,
) -> anyhow::Result<Box<dyn BatchWriter>> {
    Ok(Box::new(ClickHouseStore::open(Options {
        concurrent_inserts,
        ..options(cluster, database)
    })?))
}

/// Merges every part of `database`'s local tables on the server at `url`
/// (`OPTIMIZE … FINAL`), as background merges would in time.
pub(crate) fn optimize(url: &str, database: &str) -> anyhow::Result<()> {
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_database(database)
        .with_validation(false);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        for table in collector_storage_clickhouse::schema::TABLES {
            client
                .query(&format!("OPTIMIZE TABLE {table}_local FINAL"))
                .execute()
                .await?;
        }
        anyhow::Ok(())
    })
}
