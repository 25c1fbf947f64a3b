//! The SQLite write path: batches stored idempotently (the batch id is the
//! primary key of `batches`; a batch already there is a duplicate and none
//! of its rows are written again), names of racks and nodes, and retention.

use rusqlite::{Connection, Transaction, params};
use wire_format::{BatchView, Transport, completeness_flags};

use super::int;
use crate::StoreError;
use crate::rows::Stored;

/// Stores several batches in one transaction (one commit, one fsync),
/// returning what happened to each, in order. On error nothing is stored.
pub(super) fn store_batches(
    conn: &mut Connection,
    batches: &[BatchView<'_>],
    received_ns: u64,
) -> Result<Vec<Stored>, StoreError> {
    let tx = conn.transaction()?;
    let outcomes = batches
        .iter()
        .map(|batch| insert_batch(&tx, batch, received_ns))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit()?;
    Ok(outcomes)
}

/// Records a rack's name (or renames it).
pub(super) fn upsert_rack(conn: &Connection, rack_id: u32, name: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO racks (rack_id, name) VALUES (?1, ?2)
         ON CONFLICT (rack_id) DO UPDATE SET name = excluded.name",
        params![rack_id, name],
    )?;
    Ok(())
}

/// Records a node's name and rack.
pub(super) fn upsert_node(conn: &Connection, node_id: u32, name: &str, rack_id: u32) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO nodes (node_id, name, rack_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (node_id) DO UPDATE SET name = excluded.name, rack_id = excluded.rack_id",
        params![node_id, name, rack_id],
    )?;
    Ok(())
}

/// See [`BatchWriter::prune`](crate::BatchWriter::prune): one transaction.
pub(super) fn prune(conn: &mut Connection, cutoff_ns: u64, max_batches: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let reach: Option<i64> = tx.query_row(
        "SELECT MAX(window_start_ns) FROM (
             SELECT window_start_ns FROM batches WHERE window_start_ns < ?1
             ORDER BY window_start_ns LIMIT ?2)",
        params![int(cutoff_ns), i64::try_from(max_batches).unwrap_or(i64::MAX)],
        |row| row.get(0),
    )?;
    let Some(reach) = reach else {
        return Ok(0);
    };
    for table in ["path_windows", "agent_windows", "sampled_flows", "sampled_probes"] {
        tx.execute(&format!("DELETE FROM {table} WHERE window_start_ns <= ?1"), [reach])?;
    }
    let deleted = tx.execute("DELETE FROM batches WHERE window_start_ns <= ?1", [reach])?;
    tx.commit()?;
    Ok(deleted)
}

fn insert_batch(tx: &Transaction<'_>, batch: &BatchView<'_>, received_ns: u64) -> Result<Stored, StoreError> {
    let h = batch.header;
    let id = &h.batch_id.0[..];
    let inserted = tx.execute(
        "INSERT INTO batches (batch_id, sampler_id, rack_id, window_start_ns, window_len_ns, created_ns,
             received_ns, path_count, completeness_count, flow_sample_count, probe_sample_count,
             malformed_datagrams, records_over_capacity, spool_dropped_batches)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (batch_id) DO NOTHING",
        params![
            id,
            h.sampler_id.get(),
            h.rack_id.get(),
            int(h.window_start_ns.get()),
            int(h.window_len_ns.get()),
            int(h.created_ns.get()),
            int(received_ns),
            h.path_count.get(),
            h.completeness_count.get(),
            h.flow_sample_count.get(),
            h.probe_sample_count.get(),
            h.malformed_datagrams.get(),
            h.records_over_capacity.get(),
            h.spool_dropped_batches.get(),
        ],
    )?;
    if inserted == 0 {
        return Ok(Stored::Duplicate);
    }
    let window = int(h.window_start_ns.get());
    let window_len = int(h.window_len_ns.get());
    let rack = h.rack_id.get();

    let mut paths = tx.prepare_cached(
        "INSERT INTO path_windows (batch_id, window_start_ns, window_len_ns, rack_id, src_node, dst_node, dscp,
             transport, probes_sent, probes_lost, probes_failed, rtt_min_ns, rtt_p50_ns, rtt_p90_ns, rtt_p99_ns,
             rtt_p999_ns, rtt_max_ns, responder_delay_p50_ns, responder_delay_p99_ns, flows, flows_with_retrans,
             flows_reset, bytes_sent, bytes_received, segs_out, retrans_segs, rtt_histogram)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
             ?22, ?23, ?24, ?25, ?26, ?27)",
    )?;
    for p in batch.paths {
        let histogram = batch.histogram(p);
        paths.execute(params![
            id,
            window,
            window_len,
            rack,
            p.src_node.get(),
            p.dst_node.get(),
            p.dscp,
            p.transport().map(Transport::as_str),
            p.probes_sent.get(),
            p.probes_lost.get(),
            p.probes_failed.get(),
            int(p.rtt_min_ns.get()),
            int(p.rtt_p50_ns.get()),
            int(p.rtt_p90_ns.get()),
            int(p.rtt_p99_ns.get()),
            int(p.rtt_p999_ns.get()),
            int(p.rtt_max_ns.get()),
            int(p.responder_delay_p50_ns.get()),
            int(p.responder_delay_p99_ns.get()),
            p.flows.get(),
            p.flows_with_retrans.get(),
            p.flows_reset.get(),
            int(p.bytes_sent.get()),
            int(p.bytes_received.get()),
            int(p.segs_out.get()),
            int(p.retrans_segs.get()),
            (!histogram.is_empty()).then_some(histogram),
        ])?;
    }

    let mut agents = tx.prepare_cached(
        "INSERT INTO agent_windows (batch_id, window_start_ns, window_len_ns, rack_id, node_id, agent_epoch,
             datagrams_expected, datagrams_received, datagrams_duplicate, datagrams_reordered, records, silent,
             restarted, last_seen_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for c in batch.completeness {
        agents.execute(params![
            id,
            window,
            window_len,
            rack,
            c.node_id.get(),
            c.agent_epoch.get(),
            c.datagrams_expected.get(),
            c.datagrams_received.get(),
            c.datagrams_duplicate.get(),
            c.datagrams_reordered.get(),
            c.records.get(),
            c.flags & completeness_flags::SILENT != 0,
            c.flags & completeness_flags::RESTARTED != 0,
            int(c.last_seen_ns.get()),
        ])?;
    }

    let mut flows = tx.prepare_cached(
        "INSERT INTO sampled_flows (batch_id, window_start_ns, node_id, weight, anomalies, flow_id, src_addr,
             dst_addr, src_port, dst_port, dscp, direction, end_reason, start_ns, duration_ns, bytes_acked,
             bytes_received, segs_out, segs_in, retrans_segs, srtt_us, min_rtt_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
             ?22)",
    )?;
    for s in batch.flows {
        let r = &s.record;
        let addr = |ip: Option<std::net::IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        flows.execute(params![
            id,
            window,
            s.meta.node_id.get(),
            s.meta.weight.get(),
            s.meta.anomalies,
            // Socket cookies are u64; stored bit for bit as SQLite's signed
            // integer (values past 2^63 read back negative).
            r.flow_id.get() as i64,
            addr(r.src_ip()),
            addr(r.dst_ip()),
            r.src_port.get(),
            r.dst_port.get(),
            r.dscp,
            r.direction().as_str(),
            r.end_reason().as_str(),
            int(r.start_ns.get()),
            int(r.duration_ns.get()),
            int(r.bytes_acked.get()),
            int(r.bytes_received.get()),
            r.segs_out.get(),
            r.segs_in.get(),
            r.retrans_segs.get(),
            r.srtt_us.get(),
            r.min_rtt_us.get(),
        ])?;
    }

    let mut probes = tx.prepare_cached(
        "INSERT INTO sampled_probes (batch_id, window_start_ns, node_id, weight, anomalies, dst_node, transport,
             src_addr, dst_addr, src_port, dst_port, dscp, seq, outcome, error_code, requester_send_ns,
             responder_receive_ns, responder_send_ns, requester_receive_ns, network_rtt_ns, responder_delay_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?;
    for s in batch.probes {
        let r = &s.record;
        probes.execute(params![
            id,
            window,
            s.meta.node_id.get(),
            s.meta.weight.get(),
            s.meta.anomalies,
            r.dst_node.get(),
            r.transport().as_str(),
            r.src().to_string(),
            r.dst().to_string(),
            r.src_port.get(),
            r.dst_port.get(),
            r.dscp,
            int(r.seq.get()),
            r.outcome().as_str(),
            r.error_code.get(),
            int(r.requester_send_ns.get()),
            int(r.responder_receive_ns.get()),
            int(r.responder_send_ns.get()),
            int(r.requester_receive_ns.get()),
            r.network_rtt_ns().map(int),
            r.responder_delay_ns().map(int),
        ])?;
    }
    Ok(Stored::New)
}
