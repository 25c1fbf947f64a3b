//! The write path: batches looked up, then their rows inserted table by
//! table through the Distributed tables (`batches` last), names of racks and
//! nodes, and retention by dropping whole days.

use std::collections::HashSet;

use clickhouse::{Row, RowWrite};
use collector_storage::{StoreError, Stored};
use serde::Serialize;
use wire_format::{BatchView, Transport, completeness_flags};

use crate::{ClickHouseStore, schema};

/// A `batches` row, as written and as read back.
#[derive(Row, Serialize, serde::Deserialize)]
pub(crate) struct BatchFields {
    pub(crate) batch_id: [u8; 16],
    pub(crate) sampler_id: u32,
    pub(crate) rack_id: u32,
    pub(crate) window_start_ns: u64,
    pub(crate) window_len_ns: u64,
    pub(crate) created_ns: u64,
    pub(crate) received_ns: u64,
    pub(crate) path_count: u32,
    pub(crate) completeness_count: u32,
    pub(crate) flow_sample_count: u32,
    pub(crate) probe_sample_count: u32,
    pub(crate) malformed_datagrams: u32,
    pub(crate) records_over_capacity: u32,
    pub(crate) spool_dropped_batches: u32,
}

#[derive(Row, Serialize)]
struct PathInsert<'a> {
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
struct AgentInsert {
    batch_id: [u8; 16],
    row: u32,
    window_start_ns: u64,
    window_len_ns: u64,
    rack_id: u32,
    node_id: u32,
    agent_epoch: u32,
    datagrams_expected: u32,
    datagrams_received: u32,
    datagrams_duplicate: u32,
    datagrams_reordered: u32,
    records: u32,
    silent: u8,
    restarted: u8,
    last_seen_ns: u64,
}

#[derive(Row, Serialize)]
struct FlowInsert {
    batch_id: [u8; 16],
    row: u32,
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
    direction: &'static str,
    end_reason: &'static str,
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

#[derive(Row, Serialize)]
struct ProbeInsert {
    batch_id: [u8; 16],
    row: u32,
    window_start_ns: u64,
    node_id: u32,
    weight: u32,
    anomalies: u8,
    dst_node: u32,
    transport: &'static str,
    src_addr: String,
    dst_addr: String,
    src_port: u32,
    dst_port: u32,
    dscp: u8,
    seq: u64,
    outcome: &'static str,
    error_code: u16,
    requester_send_ns: u64,
    responder_receive_ns: u64,
    responder_send_ns: u64,
    requester_receive_ns: u64,
    network_rtt_ns: Option<u64>,
    responder_delay_ns: Option<u64>,
}

#[derive(Row, Serialize)]
struct RackInsert<'a> {
    rack_id: u32,
    name: &'a str,
    updated_ns: u64,
}

#[derive(Row, Serialize)]
struct NodeInsert<'a> {
    node_id: u32,
    name: &'a str,
    rack_id: u32,
    updated_ns: u64,
}

/// A batch id as a ClickHouse string literal.
pub(crate) fn id_literal(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("unhex('{hex}')")
}

#[derive(Row, serde::Deserialize)]
struct Id {
    batch_id: [u8; 16],
}

/// The ids among `batches` already stored.
fn stored_ids(store: &ClickHouseStore, batches: &[BatchView<'_>]) -> Result<HashSet<[u8; 16]>, StoreError> {
    let windows: HashSet<u64> = batches.iter().map(|b| b.header.window_start_ns.get()).collect();
    let windows: Vec<String> = windows.iter().map(u64::to_string).collect();
    let ids: Vec<String> = batches.iter().map(|b| id_literal(&b.header.batch_id.0)).collect();
    // The window bound lets the primary key skip every other window.
    let sql = format!(
        "SELECT DISTINCT batch_id FROM batches WHERE window_start_ns IN ({}) AND batch_id IN ({})",
        windows.join(","),
        ids.join(",")
    );
    let found: Vec<Id> = store.run("looking up batches", store.client.query(&sql).fetch_all())?;
    Ok(found.into_iter().map(|f| f.batch_id).collect())
}

/// Inserts `rows` into `table` (through its Distributed table) as one
/// request; nothing when there are none.
fn insert<T: RowWrite>(store: &ClickHouseStore, table: &str, rows: &[T::Value<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let context = format!("inserting into {table}");
    store.run(&context, async {
        let mut insert = store.client.insert::<T>(table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    })
}

pub(crate) fn store_batches(
    store: &ClickHouseStore,
    batches: &[BatchView<'_>],
    received_ns: u64,
) -> Result<Vec<Stored>, StoreError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = stored_ids(store, batches)?;
    let mut outcomes = Vec::with_capacity(batches.len());
    let mut new = Vec::new();
    for batch in batches {
        // `seen` also catches a batch given twice in one call.
        if seen.insert(batch.header.batch_id.0) {
            outcomes.push(Stored::New);
            new.push(batch);
        } else {
            outcomes.push(Stored::Duplicate);
        }
    }
    let (mut paths, mut agents, mut flows, mut probes, mut heads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in &new {
        rows(
            batch,
            received_ns,
            &mut paths,
            &mut agents,
            &mut flows,
            &mut probes,
            &mut heads,
        );
    }
    insert::<PathInsert<'static>>(store, "path_windows", &paths)?;
    insert::<AgentInsert>(store, "agent_windows", &agents)?;
    insert::<FlowInsert>(store, "sampled_flows", &flows)?;
    insert::<ProbeInsert>(store, "sampled_probes", &probes)?;
    // Last: a stored batch row means every row of the batch is stored.
    insert::<BatchFields>(store, "batches", &heads)?;
    Ok(outcomes)
}

/// One batch as rows of each table.
fn rows<'b>(
    batch: &BatchView<'b>,
    received_ns: u64,
    paths: &mut Vec<PathInsert<'b>>,
    agents: &mut Vec<AgentInsert>,
    flows: &mut Vec<FlowInsert>,
    probes: &mut Vec<ProbeInsert>,
    heads: &mut Vec<BatchFields>,
) {
    let h = batch.header;
    let id = h.batch_id.0;
    let window = h.window_start_ns.get();
    let window_len = h.window_len_ns.get();
    let rack = h.rack_id.get();
    heads.push(BatchFields {
        batch_id: id,
        sampler_id: h.sampler_id.get(),
        rack_id: rack,
        window_start_ns: window,
        window_len_ns: window_len,
        created_ns: h.created_ns.get(),
        received_ns,
        path_count: h.path_count.get(),
        completeness_count: h.completeness_count.get(),
        flow_sample_count: h.flow_sample_count.get(),
        probe_sample_count: h.probe_sample_count.get(),
        malformed_datagrams: h.malformed_datagrams.get(),
        records_over_capacity: h.records_over_capacity.get(),
        spool_dropped_batches: h.spool_dropped_batches.get(),
    });
    for (row, p) in (0u32..).zip(batch.paths) {
        paths.push(PathInsert {
            batch_id: id,
            row,
            window_start_ns: window,
            window_len_ns: window_len,
            rack_id: rack,
            src_node: p.src_node.get(),
            dst_node: p.dst_node.get(),
            dscp: p.dscp,
            transport: p.transport().map(Transport::as_str),
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
            rtt_histogram: batch.histogram(p),
        });
    }
    for (row, c) in (0u32..).zip(batch.completeness) {
        agents.push(AgentInsert {
            batch_id: id,
            row,
            window_start_ns: window,
            window_len_ns: window_len,
            rack_id: rack,
            node_id: c.node_id.get(),
            agent_epoch: c.agent_epoch.get(),
            datagrams_expected: c.datagrams_expected.get(),
            datagrams_received: c.datagrams_received.get(),
            datagrams_duplicate: c.datagrams_duplicate.get(),
            datagrams_reordered: c.datagrams_reordered.get(),
            records: c.records.get(),
            silent: u8::from(c.flags & completeness_flags::SILENT != 0),
            restarted: u8::from(c.flags & completeness_flags::RESTARTED != 0),
            last_seen_ns: c.last_seen_ns.get(),
        });
    }
    for (row, s) in (0u32..).zip(batch.flows) {
        let r = &s.record;
        let addr = |ip: Option<std::net::IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        flows.push(FlowInsert {
            batch_id: id,
            row,
            window_start_ns: window,
            node_id: s.meta.node_id.get(),
            weight: s.meta.weight.get(),
            anomalies: s.meta.anomalies,
            flow_id: r.flow_id.get(),
            src_addr: addr(r.src_ip()),
            dst_addr: addr(r.dst_ip()),
            src_port: r.src_port.get(),
            dst_port: r.dst_port.get(),
            dscp: r.dscp,
            direction: r.direction().as_str(),
            end_reason: r.end_reason().as_str(),
            start_ns: r.start_ns.get(),
            duration_ns: r.duration_ns.get(),
            bytes_acked: r.bytes_acked.get(),
            bytes_received: r.bytes_received.get(),
            segs_out: r.segs_out.get(),
            segs_in: r.segs_in.get(),
            retrans_segs: r.retrans_segs.get(),
            srtt_us: r.srtt_us.get(),
            min_rtt_us: r.min_rtt_us.get(),
        });
    }
    for (row, s) in (0u32..).zip(batch.probes) {
        let r = &s.record;
        probes.push(ProbeInsert {
            batch_id: id,
            row,
            window_start_ns: window,
            node_id: s.meta.node_id.get(),
            weight: s.meta.weight.get(),
            anomalies: s.meta.anomalies,
            dst_node: r.dst_node.get(),
            transport: r.transport().as_str(),
            src_addr: r.src().to_string(),
            dst_addr: r.dst().to_string(),
            src_port: r.src_port.get(),
            dst_port: r.dst_port.get(),
            dscp: r.dscp,
            seq: r.seq.get(),
            outcome: r.outcome().as_str(),
            error_code: r.error_code.get(),
            requester_send_ns: r.requester_send_ns.get(),
            responder_receive_ns: r.responder_receive_ns.get(),
            responder_send_ns: r.responder_send_ns.get(),
            requester_receive_ns: r.requester_receive_ns.get(),
            network_rtt_ns: r.network_rtt_ns(),
            responder_delay_ns: r.responder_delay_ns(),
        });
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(crate) fn upsert_rack(store: &ClickHouseStore, rack_id: u32, name: &str) -> Result<(), StoreError> {
    // A newer `updated_ns` wins when the rows are merged (and in `FINAL`).
    insert::<RackInsert<'static>>(
        store,
        "racks",
        &[RackInsert {
            rack_id,
            name,
            updated_ns: now_ns(),
        }],
    )
}

pub(crate) fn upsert_node(store: &ClickHouseStore, node_id: u32, name: &str, rack_id: u32) -> Result<(), StoreError> {
    insert::<NodeInsert<'static>>(
        store,
        "nodes",
        &[NodeInsert {
            node_id,
            name,
            rack_id,
            updated_ns: now_ns(),
        }],
    )
}

/// Retention: drops, on every shard, each day partition that ended before
/// the day of `cutoff_ns` (whole days only, so up to a day more than the
/// retention is kept). `max_batches` does not apply: dropping a partition is
/// a metadata change that holds up no insert. Returns the batches dropped.
pub(crate) fn prune(store: &ClickHouseStore, cutoff_ns: u64, _max_batches: usize) -> Result<usize, StoreError> {
    let cutoff_day = schema::day_of(cutoff_ns);
    let mut dropped = 0usize;
    for url in store.options.shards() {
        let shard = crate::client(&store.options, url);
        let days: Vec<(u32, u64)> = store.run(
            &format!("finding old partitions on {url}"),
            shard
                .query(
                    "SELECT toUInt32(toYYYYMMDD(toDateTime(intDiv(window_start_ns, 1000000000), 'UTC'))) AS day,
                            uniqExact(batch_id)
                     FROM batches_local GROUP BY day HAVING day < ? ORDER BY day",
                )
                .bind(cutoff_day)
                .fetch_all(),
        )?;
        for (day, batches) in days {
            for table in schema::partitioned_tables() {
                store.run(
                    &format!("dropping {table}_local partition {day} on {url}"),
                    shard
                        .query(&format!("ALTER TABLE {table}_local DROP PARTITION {day}"))
                        .execute(),
                )?;
            }
            dropped += usize::try_from(batches).unwrap_or(usize::MAX);
        }
    }
    Ok(dropped)
}
