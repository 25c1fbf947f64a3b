//! The readers. Every row table is read with `FINAL`, which collapses the
//! copies of a batch stored twice (see the crate docs), and every query is
//! bounded by a window range that the tables' sorting keys (led by
//! `window_start_ns`) serve. Aggregation runs on the shards.

use clickhouse::Row;
use collector_storage::merge::{PathMerge, merged_tail};
use collector_storage::text::{ip, label, probe_addr};
use collector_storage::{
    AgentWindow, BatchRow, PathWindow, RowCounts, SampledFlowRow, SampledProbeRow, StoreError, WindowInfo,
};
use serde::Deserialize;
use serde_bytes::ByteBuf;
use wire_format::{
    BatchId, Direction, EndReason, Flow, Probe, ProbeOutcome, ProbeTimestamps, Transport, new_rtt_histogram,
};

use crate::ClickHouseStore;
use crate::write::BatchFields;

#[derive(Row, Deserialize)]
struct WindowRow {
    start_ns: u64,
    len_ns: u64,
    rows: u64,
}

pub(crate) fn windows(store: &ClickHouseStore, from_ns: u64, to_ns: u64) -> Result<Vec<WindowInfo>, StoreError> {
    let rows: Vec<WindowRow> = store.run(
        "reading windows",
        store
            .client
            .query(
                "SELECT window_start_ns, max(window_len_ns), sum(path_count) FROM batches FINAL
                 WHERE window_start_ns >= ? AND window_start_ns < ?
                 GROUP BY window_start_ns ORDER BY window_start_ns",
            )
            .bind(from_ns)
            .bind(to_ns)
            .fetch_all(),
    )?;
    Ok(rows
        .into_iter()
        .map(|r| WindowInfo {
            start_ns: r.start_ns,
            len_ns: r.len_ns,
            rows: r.rows,
        })
        .collect())
}

pub(crate) fn history_start(store: &ClickHouseStore, from_ns: u64, windows: u32) -> Result<u64, StoreError> {
    if windows == 0 {
        return Ok(from_ns);
    }
    let start: Option<u64> = store.run(
        "reading the history's start",
        store
            .client
            .query(&format!(
                "SELECT DISTINCT window_start_ns FROM batches WHERE window_start_ns < ?
                 ORDER BY window_start_ns DESC LIMIT {}, 1",
                windows - 1
            ))
            .bind(from_ns)
            .fetch_optional(),
    )?;
    Ok(start.unwrap_or(0))
}

#[derive(Row, Deserialize)]
struct AgentRow {
    window_ns: u64,
    node: u32,
    expected: u64,
    received: u64,
    silent: u8,
    restarted: u8,
}

pub(crate) fn agent_windows(store: &ClickHouseStore, from_ns: u64, to_ns: u64) -> Result<Vec<AgentWindow>, StoreError> {
    let rows: Vec<AgentRow> = store.run(
        "reading agent windows",
        store
            .client
            .query(
                "SELECT window_start_ns, node_id, sum(datagrams_expected), sum(datagrams_received), min(silent),
                        max(restarted)
                 FROM agent_windows FINAL WHERE window_start_ns >= ? AND window_start_ns < ?
                 GROUP BY window_start_ns, node_id ORDER BY window_start_ns, node_id",
            )
            .bind(from_ns)
            .bind(to_ns)
            .fetch_all(),
    )?;
    Ok(rows
        .into_iter()
        .map(|r| AgentWindow {
            window_ns: r.window_ns,
            node: r.node,
            expected: r.expected,
            received: r.received,
            silent: r.silent != 0,
            restarted: r.restarted != 0,
        })
        .collect())
}

/// One stored row of a path in one window (a DSCP class, a probe transport
/// or a batch part), without its histogram.
#[derive(Row, Deserialize)]
struct PathRow {
    src: u32,
    dst: u32,
    probes_sent: u32,
    probes_lost: u32,
    probes_failed: u32,
    rtt_p99_ns: u64,
    responder_delay_p99_ns: u64,
    segs_out: u64,
    retrans_segs: u64,
    flows_with_retrans: u32,
}

/// The probe rows' histograms of one path with several.
#[derive(Row, Deserialize)]
struct PathHistograms {
    src: u32,
    dst: u32,
    histograms: Vec<ByteBuf>,
}

/// Paths whose histograms one query asks for, at most.
const HISTOGRAM_KEYS_PER_QUERY: usize = 4_096;

/// Paths read between progress reports.
const PROGRESS_EVERY: u64 = 1 << 14;

/// One window's paths: the stored rows, collapsed (`FINAL`) and ordered by
/// path on the cluster, merged here by `collector_storage::PathMerge` as
/// SQLite's are. Histograms are not read with the rows: most paths have one
/// probe row, whose quantile the sampler already computed, and only a path
/// with several needs its rows' histograms, which a second query brings for
/// those paths alone.
///
/// Why not `GROUP BY` on the shards: on ClickHouse 18.16 aggregating a
/// window's 100 000 paths took 130 ms against 55 ms for reading its rows
/// sorted, and collecting every path's histograms in the aggregation doubled
/// a whole report's time (measured with `flowmesh-bench analyzer-report
/// --store clickhouse`).
pub(crate) fn path_windows(
    store: &ClickHouseStore,
    window: &WindowInfo,
    progress: &dyn Fn(u64),
) -> Result<Vec<PathWindow>, StoreError> {
    let mut paths = Vec::with_capacity(usize::try_from(window.rows).unwrap_or(0));
    // Paths with several probe rows, whose p99 comes from their histograms.
    let mut several = Vec::new();
    let mut scratch = new_rtt_histogram();
    store.run("reading path windows", async {
        let mut cursor = store
            .client
            .query(
                "SELECT src_node, dst_node, probes_sent, probes_lost, probes_failed, rtt_p99_ns,
                        responder_delay_p99_ns, segs_out, retrans_segs, flows_with_retrans
                 FROM path_windows FINAL WHERE window_start_ns = ?
                 ORDER BY src_node, dst_node",
            )
            .bind(window.start_ns)
            .fetch::<PathRow>()?;
        let mut current: Option<(PathMerge, u32)> = None;
        let mut unreported = 0;
        while let Some(r) = cursor.next().await? {
            let row = PathWindow {
                window_ns: window.start_ns,
                window_len_ns: window.len_ns,
                src: r.src,
                dst: r.dst,
                probes_sent: u64::from(r.probes_sent),
                probes_lost: u64::from(r.probes_lost),
                probes_failed: u64::from(r.probes_failed),
                rtt_p99_ns: r.rtt_p99_ns,
                responder_delay_p99_ns: r.responder_delay_p99_ns,
                segs_out: r.segs_out,
                retrans_segs: r.retrans_segs,
                flows_with_retrans: u64::from(r.flows_with_retrans),
            };
            let probe_row = u32::from(row.probes_sent > 0);
            match &mut current {
                Some((merge, probe_rows)) if merge.key() == (row.src, row.dst) => {
                    // Without histograms the merge keeps the larger p99; the
                    // second query replaces it where histograms merge.
                    merge.add(&row, None, &mut scratch);
                    *probe_rows += probe_row;
                }
                _ => {
                    let next = (PathMerge::new(row, None), probe_row);
                    if let Some((done, probe_rows)) = current.replace(next) {
                        if probe_rows > 1 {
                            several.push(done.key());
                        }
                        paths.push(done.finish(&scratch));
                    }
                }
            }
            unreported += 1;
            if unreported == PROGRESS_EVERY {
                progress(unreported);
                unreported = 0;
            }
        }
        if let Some((done, probe_rows)) = current {
            if probe_rows > 1 {
                several.push(done.key());
            }
            paths.push(done.finish(&scratch));
        }
        progress(unreported);
        Ok::<_, clickhouse::error::Error>(())
    })?;
    for keys in several.chunks(HISTOGRAM_KEYS_PER_QUERY) {
        let list: Vec<String> = keys.iter().map(|(s, d)| format!("({s},{d})")).collect();
        let found: Vec<PathHistograms> = store.run(
            "reading path histograms",
            store
                .client
                .query(&format!(
                    "SELECT src_node, dst_node, groupArray(rtt_histogram) FROM path_windows FINAL
                     WHERE window_start_ns = ? AND probes_sent > 0 AND (src_node, dst_node) IN ({})
                     GROUP BY src_node, dst_node",
                    list.join(",")
                ))
                .bind(window.start_ns)
                .fetch_all(),
        )?;
        for h in found {
            let merged = merged_tail(h.histograms.iter().map(|b| b.as_slice()), &mut scratch);
            let at = paths.binary_search_by_key(&(h.src, h.dst), |p| (p.src, p.dst));
            if let (Some(p99), Ok(at)) = (merged, at) {
                paths[at].rtt_p99_ns = p99;
            }
        }
    }
    Ok(paths)
}

pub(crate) fn batches(store: &ClickHouseStore, from_ns: u64, to_ns: u64) -> Result<Vec<BatchRow>, StoreError> {
    // One row per batch id: the first received, as SQLite keeps it.
    let rows: Vec<BatchFields> = store.run(
        "reading batches",
        store
            .client
            .query(
                "SELECT batch_id, sampler_id, rack_id, window_start_ns, window_len_ns, created_ns, received_ns,
                        path_count, completeness_count, flow_sample_count, probe_sample_count,
                        malformed_datagrams, records_over_capacity, spool_dropped_batches
                 FROM batches WHERE window_start_ns >= ? AND window_start_ns < ?
                 ORDER BY window_start_ns, sampler_id, batch_id, received_ns
                 LIMIT 1 BY batch_id",
            )
            .bind(from_ns)
            .bind(to_ns)
            .fetch_all(),
    )?;
    Ok(rows
        .into_iter()
        .map(|r| BatchRow {
            batch_id: BatchId(r.batch_id),
            sampler_id: r.sampler_id,
            rack_id: r.rack_id,
            window_start_ns: r.window_start_ns,
            window_len_ns: r.window_len_ns,
            created_ns: r.created_ns,
            received_ns: r.received_ns,
            path_count: r.path_count,
            completeness_count: r.completeness_count,
            flow_sample_count: r.flow_sample_count,
            probe_sample_count: r.probe_sample_count,
            malformed_datagrams: r.malformed_datagrams,
            records_over_capacity: r.records_over_capacity,
            spool_dropped_batches: r.spool_dropped_batches,
        })
        .collect())
}

#[derive(Row, Deserialize)]
struct FlowRecord {
    batch_id: [u8; 16],
    window_start_ns: u64,
    node_id: u32,
    weight: u32,
    anomalies: u8,
    flow_id: u64,
    src_addr: String,
    dst_addr: String,
    src_port: u16,
    dst_port: u16,
    dscp: u8,
    direction: String,
    end_reason: String,
    start_ns: u64,
    duration_ns: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    retrans_segs: u32,
    srtt_us: u32,
    min_rtt_us: u32,
}

pub(crate) fn sampled_flows(
    store: &ClickHouseStore,
    from_ns: u64,
    to_ns: u64,
) -> Result<Vec<SampledFlowRow>, StoreError> {
    const T: &str = "sampled_flows";
    let rows: Vec<FlowRecord> = store.run(
        "reading sampled flows",
        store
            .client
            .query(
                "SELECT batch_id, window_start_ns, node_id, weight, anomalies, flow_id, src_addr, dst_addr, src_port,
                        dst_port, dscp, direction, end_reason, start_ns, duration_ns, bytes_acked, bytes_received,
                        segs_out, segs_in, retrans_segs, srtt_us, min_rtt_us
                 FROM sampled_flows FINAL WHERE window_start_ns >= ? AND window_start_ns < ?
                 ORDER BY window_start_ns, node_id, batch_id, row",
            )
            .bind(from_ns)
            .bind(to_ns)
            .fetch_all(),
    )?;
    rows.into_iter()
        .map(|r| {
            Ok(SampledFlowRow {
                batch_id: BatchId(r.batch_id),
                window_start_ns: r.window_start_ns,
                node_id: r.node_id,
                weight: r.weight,
                anomalies: r.anomalies,
                flow: Flow {
                    flow_id: r.flow_id,
                    src: ip(&r.src_addr, T, "src_addr")?,
                    dst: ip(&r.dst_addr, T, "dst_addr")?,
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    dscp: r.dscp,
                    direction: label(Direction::ALL, Direction::as_str, &r.direction, T, "direction")?,
                    end_reason: label(EndReason::ALL, EndReason::as_str, &r.end_reason, T, "end_reason")?,
                    start_ns: r.start_ns,
                    duration_ns: r.duration_ns,
                    bytes_acked: r.bytes_acked,
                    bytes_received: r.bytes_received,
                    segs_out: r.segs_out,
                    segs_in: r.segs_in,
                    retrans_segs: r.retrans_segs,
                    srtt_us: r.srtt_us,
                    min_rtt_us: r.min_rtt_us,
                },
            })
        })
        .collect()
}

#[derive(Row, Deserialize)]
struct ProbeRecord {
    batch_id: [u8; 16],
    window_start_ns: u64,
    node_id: u32,
    weight: u32,
    anomalies: u8,
    dst_node: u32,
    transport: String,
    src_addr: String,
    dst_addr: String,
    src_port: u32,
    dst_port: u32,
    dscp: u8,
    seq: u64,
    outcome: String,
    error_code: u16,
    requester_send_ns: u64,
    responder_receive_ns: u64,
    responder_send_ns: u64,
    requester_receive_ns: u64,
}

pub(crate) fn sampled_probes(
    store: &ClickHouseStore,
    from_ns: u64,
    to_ns: u64,
) -> Result<Vec<SampledProbeRow>, StoreError> {
    const T: &str = "sampled_probes";
    let rows: Vec<ProbeRecord> = store.run(
        "reading sampled probes",
        store
            .client
            .query(
                "SELECT batch_id, window_start_ns, node_id, weight, anomalies, dst_node, transport, src_addr,
                        dst_addr, src_port, dst_port, dscp, seq, outcome, error_code, requester_send_ns,
                        responder_receive_ns, responder_send_ns, requester_receive_ns
                 FROM sampled_probes FINAL WHERE window_start_ns >= ? AND window_start_ns < ?
                 ORDER BY window_start_ns, node_id, batch_id, row",
            )
            .bind(from_ns)
            .bind(to_ns)
            .fetch_all(),
    )?;
    rows.into_iter()
        .map(|r| {
            let transport = label(Transport::ALL, Transport::as_str, &r.transport, T, "transport")?;
            Ok(SampledProbeRow {
                batch_id: BatchId(r.batch_id),
                window_start_ns: r.window_start_ns,
                node_id: r.node_id,
                weight: r.weight,
                anomalies: r.anomalies,
                probe: Probe {
                    transport,
                    src: probe_addr(transport, &r.src_addr, T, "src_addr")?,
                    dst: probe_addr(transport, &r.dst_addr, T, "dst_addr")?,
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    dst_node: r.dst_node,
                    dscp: r.dscp,
                    seq: r.seq,
                    outcome: label(ProbeOutcome::ALL, ProbeOutcome::as_str, &r.outcome, T, "outcome")?,
                    error_code: r.error_code,
                    timestamps: ProbeTimestamps {
                        requester_send_ns: r.requester_send_ns,
                        responder_receive_ns: r.responder_receive_ns,
                        responder_send_ns: r.responder_send_ns,
                        requester_receive_ns: r.requester_receive_ns,
                    },
                },
            })
        })
        .collect()
}

pub(crate) fn row_counts(store: &ClickHouseStore) -> Result<RowCounts, StoreError> {
    let count = |table: &str| -> Result<u64, StoreError> {
        store.run(
            &format!("counting {table}"),
            store
                .client
                .query(&format!("SELECT count() FROM {table} FINAL"))
                .fetch_one::<u64>(),
        )
    };
    Ok(RowCounts {
        batches: count("batches")?,
        path_windows: count("path_windows")?,
        agent_windows: count("agent_windows")?,
        sampled_flows: count("sampled_flows")?,
        sampled_probes: count("sampled_probes")?,
    })
}
