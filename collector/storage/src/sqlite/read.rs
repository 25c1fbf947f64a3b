//! The SQLite readers: each query is bounded by a window range that the
//! `window_start_ns`-led indexes serve, and each row is decoded into its
//! typed row here, so nothing above sees a column name.

use rusqlite::{Connection, OptionalExtension as _, Row};
use wire_format::{
    BatchId, Direction, EndReason, Flow, Probe, ProbeOutcome, ProbeTimestamps, Transport, new_rtt_histogram,
};

use crate::StoreError;
use crate::merge::PathMerge;
use crate::rows::{AgentWindow, BatchRow, PathWindow, RowCounts, SampledFlowRow, SampledProbeRow, WindowInfo};
use crate::text::{ip, label, probe_addr};

/// Rows read between progress reports.
const PROGRESS_EVERY: u64 = 1 << 14;

/// A range bound as SQLite's signed integer.
fn bound(ns: u64) -> i64 {
    ns.min(i64::MAX as u64) as i64
}

/// Column `i` as a non-negative integer (negative values, which flowmesh
/// never writes, read as 0).
fn uint(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)?.max(0) as u64)
}

/// Column `i` as a u32 (flowmesh writes only u32 values to these columns).
fn u32_at(row: &Row<'_>, i: usize) -> rusqlite::Result<u32> {
    Ok(uint(row, i)?.min(u64::from(u32::MAX)) as u32)
}

pub(super) fn windows(db: &Connection, from_ns: u64, to_ns: u64) -> Result<Vec<WindowInfo>, StoreError> {
    let windows = db
        .prepare_cached(
            "SELECT window_start_ns, MAX(window_len_ns), SUM(path_count) FROM batches
             WHERE window_start_ns >= ?1 AND window_start_ns < ?2
             GROUP BY window_start_ns ORDER BY window_start_ns",
        )?
        .query_map([bound(from_ns), bound(to_ns)], |r| {
            Ok(WindowInfo {
                start_ns: uint(r, 0)?,
                len_ns: uint(r, 1)?,
                rows: uint(r, 2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(windows)
}

pub(super) fn history_start(db: &Connection, from_ns: u64, windows: u32) -> Result<u64, StoreError> {
    if windows == 0 {
        return Ok(from_ns);
    }
    let start: Option<i64> = db
        .prepare_cached(
            "SELECT DISTINCT window_start_ns FROM batches WHERE window_start_ns < ?1
             ORDER BY window_start_ns DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row([bound(from_ns), i64::from(windows) - 1], |r| r.get(0))
        .optional()?;
    Ok(start.map_or(0, |s| s.max(0) as u64))
}

pub(super) fn agent_windows(db: &Connection, from_ns: u64, to_ns: u64) -> Result<Vec<AgentWindow>, StoreError> {
    let agents = db
        .prepare_cached(
            "SELECT window_start_ns, node_id, SUM(datagrams_expected), SUM(datagrams_received), MIN(silent),
                    MAX(restarted)
             FROM agent_windows WHERE window_start_ns >= ?1 AND window_start_ns < ?2
             GROUP BY window_start_ns, node_id ORDER BY window_start_ns, node_id",
        )?
        .query_map([bound(from_ns), bound(to_ns)], |r| {
            Ok(AgentWindow {
                window_ns: uint(r, 0)?,
                node: u32_at(r, 1)?,
                expected: uint(r, 2)?,
                received: uint(r, 3)?,
                silent: r.get::<_, i64>(4)? != 0,
                restarted: r.get::<_, i64>(5)? != 0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(agents)
}

/// Reads and merges one window's path windows. Rows come in (src, dst)
/// order, which the path index gives without sorting, so the rows of one
/// path are merged as they stream by.
pub(super) fn path_windows(
    db: &Connection,
    window: &WindowInfo,
    progress: &dyn Fn(u64),
) -> Result<Vec<PathWindow>, StoreError> {
    let mut paths = Vec::with_capacity(usize::try_from(window.rows).unwrap_or(0));
    let mut scratch = new_rtt_histogram();
    let mut current: Option<PathMerge> = None;
    let mut stmt = db.prepare_cached(
        "SELECT src_node, dst_node, probes_sent, probes_lost, probes_failed, rtt_p99_ns, responder_delay_p99_ns,
                segs_out, retrans_segs, flows_with_retrans, rtt_histogram
         FROM path_windows WHERE window_start_ns = ?1
         ORDER BY src_node, dst_node",
    )?;
    let mut rows = stmt.query([bound(window.start_ns)])?;
    let mut unreported = 0;
    while let Some(r) = rows.next()? {
        let get =
            |i: usize| -> rusqlite::Result<u64> { r.get_ref(i)?.as_i64().map(|v| v.max(0) as u64).map_err(Into::into) };
        let row = PathWindow {
            window_ns: window.start_ns,
            window_len_ns: window.len_ns,
            src: get(0)? as u32,
            dst: get(1)? as u32,
            probes_sent: get(2)?,
            probes_lost: get(3)?,
            probes_failed: get(4)?,
            rtt_p99_ns: get(5)?,
            responder_delay_p99_ns: get(6)?,
            segs_out: get(7)?,
            retrans_segs: get(8)?,
            flows_with_retrans: get(9)?,
        };
        // Anything but a blob counts as no histogram: the conservative merge.
        let histogram = r.get_ref(10)?.as_blob_or_null().ok().flatten();
        match &mut current {
            Some(m) if m.key() == (row.src, row.dst) => m.add(&row, histogram, &mut scratch),
            _ => {
                if let Some(done) = current.replace(PathMerge::new(row, histogram)) {
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
    if let Some(done) = current {
        paths.push(done.finish(&scratch));
    }
    progress(unreported);
    Ok(paths)
}

fn batch_id(row: &Row<'_>, i: usize, table: &'static str) -> Result<BatchId, StoreError> {
    let bytes = row.get_ref(i)?.as_blob().map_err(rusqlite::Error::from)?;
    let id: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table,
        column: "batch_id",
        value: format!("{} bytes", bytes.len()),
    })?;
    Ok(BatchId(id))
}

pub(super) fn batches(db: &Connection, from_ns: u64, to_ns: u64) -> Result<Vec<BatchRow>, StoreError> {
    let mut stmt = db.prepare_cached(
        "SELECT batch_id, sampler_id, rack_id, window_start_ns, window_len_ns, created_ns, received_ns, path_count,
                completeness_count, flow_sample_count, probe_sample_count, malformed_datagrams,
                records_over_capacity, spool_dropped_batches
         FROM batches WHERE window_start_ns >= ?1 AND window_start_ns < ?2
         ORDER BY window_start_ns, sampler_id, batch_id",
    )?;
    let mut rows = stmt.query([bound(from_ns), bound(to_ns)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(BatchRow {
            batch_id: batch_id(r, 0, "batches")?,
            sampler_id: u32_at(r, 1)?,
            rack_id: u32_at(r, 2)?,
            window_start_ns: uint(r, 3)?,
            window_len_ns: uint(r, 4)?,
            created_ns: uint(r, 5)?,
            received_ns: uint(r, 6)?,
            path_count: u32_at(r, 7)?,
            completeness_count: u32_at(r, 8)?,
            flow_sample_count: u32_at(r, 9)?,
            probe_sample_count: u32_at(r, 10)?,
            malformed_datagrams: u32_at(r, 11)?,
            records_over_capacity: u32_at(r, 12)?,
            spool_dropped_batches: u32_at(r, 13)?,
        });
    }
    Ok(out)
}

pub(super) fn sampled_flows(db: &Connection, from_ns: u64, to_ns: u64) -> Result<Vec<SampledFlowRow>, StoreError> {
    const T: &str = "sampled_flows";
    let mut stmt = db.prepare_cached(
        "SELECT batch_id, window_start_ns, node_id, weight, anomalies, flow_id, src_addr, dst_addr, src_port,
                dst_port, dscp, direction, end_reason, start_ns, duration_ns, bytes_acked, bytes_received, segs_out,
                segs_in, retrans_segs, srtt_us, min_rtt_us
         FROM sampled_flows WHERE window_start_ns >= ?1 AND window_start_ns < ?2
         ORDER BY window_start_ns, node_id, rowid",
    )?;
    let mut rows = stmt.query([bound(from_ns), bound(to_ns)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        out.push(SampledFlowRow {
            batch_id: batch_id(r, 0, T)?,
            window_start_ns: uint(r, 1)?,
            node_id: u32_at(r, 2)?,
            weight: u32_at(r, 3)?,
            anomalies: u32_at(r, 4)?.min(u32::from(u8::MAX)) as u8,
            flow: Flow {
                // Stored bit for bit as SQLite's signed integer.
                flow_id: r.get::<_, i64>(5)? as u64,
                src: ip(&text(6)?, T, "src_addr")?,
                dst: ip(&text(7)?, T, "dst_addr")?,
                src_port: u32_at(r, 8)? as u16,
                dst_port: u32_at(r, 9)? as u16,
                dscp: u32_at(r, 10)? as u8,
                direction: label(Direction::ALL, Direction::as_str, &text(11)?, T, "direction")?,
                end_reason: label(EndReason::ALL, EndReason::as_str, &text(12)?, T, "end_reason")?,
                start_ns: uint(r, 13)?,
                duration_ns: uint(r, 14)?,
                bytes_acked: uint(r, 15)?,
                bytes_received: uint(r, 16)?,
                segs_out: u32_at(r, 17)?,
                segs_in: u32_at(r, 18)?,
                retrans_segs: u32_at(r, 19)?,
                srtt_us: u32_at(r, 20)?,
                min_rtt_us: u32_at(r, 21)?,
            },
        });
    }
    Ok(out)
}

pub(super) fn sampled_probes(db: &Connection, from_ns: u64, to_ns: u64) -> Result<Vec<SampledProbeRow>, StoreError> {
    const T: &str = "sampled_probes";
    let mut stmt = db.prepare_cached(
        "SELECT batch_id, window_start_ns, node_id, weight, anomalies, dst_node, transport, src_addr, dst_addr,
                src_port, dst_port, dscp, seq, outcome, error_code, requester_send_ns, responder_receive_ns,
                responder_send_ns, requester_receive_ns
         FROM sampled_probes WHERE window_start_ns >= ?1 AND window_start_ns < ?2
         ORDER BY window_start_ns, node_id, rowid",
    )?;
    let mut rows = stmt.query([bound(from_ns), bound(to_ns)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
        let transport = label(Transport::ALL, Transport::as_str, &text(6)?, T, "transport")?;
        out.push(SampledProbeRow {
            batch_id: batch_id(r, 0, T)?,
            window_start_ns: uint(r, 1)?,
            node_id: u32_at(r, 2)?,
            weight: u32_at(r, 3)?,
            anomalies: u32_at(r, 4)?.min(u32::from(u8::MAX)) as u8,
            probe: Probe {
                transport,
                src: probe_addr(transport, &text(7)?, T, "src_addr")?,
                dst: probe_addr(transport, &text(8)?, T, "dst_addr")?,
                src_port: u32_at(r, 9)?,
                dst_port: u32_at(r, 10)?,
                dst_node: u32_at(r, 5)?,
                dscp: u32_at(r, 11)? as u8,
                seq: uint(r, 12)?,
                outcome: label(ProbeOutcome::ALL, ProbeOutcome::as_str, &text(13)?, T, "outcome")?,
                error_code: u32_at(r, 14)? as u16,
                timestamps: ProbeTimestamps {
                    requester_send_ns: uint(r, 15)?,
                    responder_receive_ns: uint(r, 16)?,
                    responder_send_ns: uint(r, 17)?,
                    requester_receive_ns: uint(r, 18)?,
                },
            },
        });
    }
    Ok(out)
}

pub(super) fn row_counts(db: &Connection) -> Result<RowCounts, StoreError> {
    let count = |table: &str| -> Result<u64, StoreError> {
        let n: i64 = db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    };
    Ok(RowCounts {
        batches: count("batches")?,
        path_windows: count("path_windows")?,
        agent_windows: count("agent_windows")?,
        sampled_flows: count("sampled_flows")?,
        sampled_probes: count("sampled_probes")?,
    })
}
