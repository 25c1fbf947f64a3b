//! The store on a real SQLite file: batches land in their tables exactly,
//! repeats are stored once, the documented views answer, readers see
//! committed data while the writer works, retention prunes.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::time::{SystemTime, UNIX_EPOCH};

use collector::{SCHEMA_VERSION, Store, StoreError, Stored};
use wire_format::*;

const SECOND: u64 = 1_000_000_000;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A batch of rack 1 for the window at `window_start_ns`: one lossy probe path
/// 101 → 203 with a histogram, a flows-only path 101 → 102, two agents (one
/// silent), one anomalous sampled flow and one 1-in-10 sampled probe.
fn batch(sampler: u32, window_start_ns: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchInfo {
        batch_id: BatchId::for_window(sampler, window_start_ns, 0),
        sampler_id: sampler,
        rack_id: 1,
        window_start_ns,
        window_len_ns: 10 * SECOND,
        created_ns: window_start_ns + 11 * SECOND,
        malformed_datagrams: 3,
        records_over_capacity: 0,
        spool_dropped_batches: 0,
    });
    let mut histogram = new_rtt_histogram();
    for rtt in [40_000u64, 42_000, 45_000, 900_000] {
        histogram.record(rtt).unwrap();
    }
    let mut encoded = Vec::new();
    encode_histogram(&histogram, &mut encoded).unwrap();
    let mut probes = PathSummary::new(101, 203, 0, Some(Transport::Udp));
    probes.probes_sent = 100.into();
    probes.probes_lost = 5.into();
    probes.rtt_p50_ns = 42_000.into();
    probes.rtt_p99_ns = 900_000.into();
    b.push_path(probes, &encoded).unwrap();
    let mut flows = PathSummary::new(101, 102, 46, None);
    flows.flows = 7.into();
    flows.flows_with_retrans = 1.into();
    flows.segs_out = 1_000.into();
    flows.retrans_segs = 20.into();
    flows.bytes_sent = 123_456.into();
    b.push_path(flows, &[]).unwrap();

    for (node, received, flags) in [(101u32, 48u32, 0u8), (102, 0, completeness_flags::SILENT)] {
        let mut c = <AgentCompleteness as zerocopy::FromZeros>::new_zeroed();
        c.node_id = node.into();
        c.agent_epoch = 7.into();
        c.datagrams_expected = if flags == 0 { 50 } else { 0 }.into();
        c.datagrams_received = received.into();
        c.flags = flags;
        b.push_completeness(c);
    }

    let flow = Flow {
        flow_id: u64::MAX - 1,
        src: "198.18.1.1".parse().unwrap(),
        dst: "198.18.1.2".parse().unwrap(),
        src_port: 40_000,
        dst_port: 80,
        dscp: 46,
        direction: Direction::Outbound,
        end_reason: EndReason::Reset,
        start_ns: window_start_ns + SECOND,
        duration_ns: 5 * SECOND,
        bytes_acked: 10_000,
        bytes_received: 500,
        segs_out: 20,
        segs_in: 10,
        retrans_segs: 3,
        srtt_us: 120,
        min_rtt_us: 40,
    };
    b.push_flow(
        SampleMeta::new(101, 1, anomaly::RETRANS | anomaly::RESET),
        flow.to_record(),
    );
    let probe = Probe {
        transport: Transport::RdmaUd,
        src: ProbeAddr::Gid(Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
        dst: ProbeAddr::Gid(Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])),
        src_port: 0x11,
        dst_port: 0x22,
        dst_node: 203,
        dscp: 26,
        seq: 9,
        outcome: ProbeOutcome::Ok,
        error_code: 0,
        timestamps: ProbeTimestamps {
            requester_send_ns: 1_000,
            responder_receive_ns: 500_000,
            responder_send_ns: 503_000,
            requester_receive_ns: 11_000,
        },
    };
    b.push_probe(SampleMeta::new(101, 10, 0), probe.to_record());
    b.encode().unwrap()
}

fn count(store: &Store, table: &str) -> i64 {
    store
        .connection()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_batch_lands_in_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("flowmesh.db")).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let bytes = batch(9, 1_700_000_000 * SECOND);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(store.store_batch(&view, 42).unwrap(), Stored::New);

    for (table, rows) in [
        ("batches", 1),
        ("path_windows", 2),
        ("agent_windows", 2),
        ("sampled_flows", 1),
        ("sampled_probes", 1),
    ] {
        assert_eq!(count(&store, table), rows, "{table}");
    }
    let conn = store.connection();
    let (sampler, received, malformed): (u32, i64, u32) = conn
        .query_row(
            "SELECT sampler_id, received_ns, malformed_datagrams FROM batches",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((sampler, received, malformed), (9, 42, 3));

    let (transport, lost, p99, histogram): (String, u32, i64, Vec<u8>) = conn
        .query_row(
            "SELECT transport, probes_lost, rtt_p99_ns, rtt_histogram FROM path_windows WHERE dst_node = 203",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((transport.as_str(), lost, p99), ("udp", 5, 900_000));
    assert_eq!(decode_histogram(&histogram).unwrap().len(), 4);
    let flows_only: (Option<String>, Option<Vec<u8>>, u32) = conn
        .query_row(
            "SELECT transport, rtt_histogram, flows FROM path_windows WHERE dst_node = 102",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(flows_only, (None, None, 7));

    let flow: (i64, String, String, String, u32) = conn
        .query_row(
            "SELECT flow_id, src_addr, end_reason, direction, anomalies FROM sampled_flows",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(flow.0 as u64, u64::MAX - 1, "flow ids keep all 64 bits");
    assert_eq!(&flow.1, "198.18.1.1");
    assert_eq!((flow.2.as_str(), flow.3.as_str()), ("reset", "outbound"));
    assert_eq!(flow.4, u32::from(anomaly::RETRANS | anomaly::RESET));

    let probe: (String, String, u32, i64, i64) = conn
        .query_row(
            "SELECT transport, src_addr, weight, network_rtt_ns, responder_delay_ns FROM sampled_probes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(probe, ("rdma-ud".into(), "fe80::1".into(), 10, 7_000, 3_000));
}

#[test]
fn the_same_batch_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("flowmesh.db")).unwrap();
    let first = batch(9, 1_700_000_000 * SECOND);
    let second = batch(9, 1_700_000_010 * SECOND);
    let (a, b) = (BatchView::parse(&first).unwrap(), BatchView::parse(&second).unwrap());
    assert_eq!(store.store_batch(&a, 1).unwrap(), Stored::New);
    assert_eq!(store.store_batch(&a, 2).unwrap(), Stored::Duplicate);
    // In one transaction: the repeat is skipped, the new one stored.
    assert_eq!(
        store.store_batches(&[a, b, b], 3).unwrap(),
        vec![Stored::Duplicate, Stored::New, Stored::Duplicate]
    );
    assert_eq!(count(&store, "batches"), 2);
    assert_eq!(count(&store, "path_windows"), 4);
    assert_eq!(count(&store, "sampled_flows"), 2);
    // The first delivery's receive time stands.
    let received: i64 = store
        .connection()
        .query_row("SELECT MIN(received_ns) FROM batches", [], |r| r.get(0))
        .unwrap();
    assert_eq!(received, 1);
}

#[test]
fn documented_views_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let mut store = Store::open(&path).unwrap();
    store.upsert_rack(1, "rack1").unwrap();
    store.upsert_rack(2, "rack2").unwrap();
    store.upsert_node(101, "r1n1", 1).unwrap();
    store.upsert_node(203, "r2n3", 2).unwrap();
    // A recent window, so the last-hour view includes it.
    let window = (now_ns() / (10 * SECOND) - 3) * 10 * SECOND;
    let bytes = batch(9, window);
    store.store_batch(&BatchView::parse(&bytes).unwrap(), now_ns()).unwrap();
    let conn = store.connection();

    let (src, dst, loss, p99): (String, String, f64, f64) = conn
        .query_row(
            "SELECT src_name, dst_name, loss_rate, rtt_p99_us FROM path_window_report WHERE dst_node = 203",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((src.as_str(), dst.as_str(), loss, p99), ("r1n1", "r2n3", 0.05, 900.0));

    let worst: (u32, u32, f64) = conn
        .query_row(
            "SELECT src_node, dst_node, loss_rate FROM worst_paths_last_hour",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(worst, (101, 203, 0.05));

    let (flows, bytes_sent): (i64, i64) = conn
        .query_row("SELECT est_flows, est_bytes_sent FROM flow_estimates", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((flows, bytes_sent), (1, 10_000));

    let gaps: Vec<(u32, i64, bool)> = conn
        .prepare("SELECT node_id, datagrams_missing, silent FROM agents_missing_telemetry ORDER BY node_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(gaps, vec![(101, 2, false), (102, 0, true)]);

    // What an operator types: the sqlite3 CLI, read-only, while the
    // collector's connection is still open.
    let out = std::process::Command::new("sqlite3")
        .args(["-readonly", "-csv"])
        .arg(&path)
        .arg("SELECT src_name, dst_name, loss_rate FROM worst_paths_last_hour")
        .output()
        .expect("sqlite3 CLI (scripts/setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "r1n1,r2n3,0.05");
}

#[test]
fn readers_see_commits_while_the_writer_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let mut writer = Store::open(&path).unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(count(&reader, "batches"), 0);
    let bytes = batch(9, 1_700_000_000 * SECOND);
    writer.store_batch(&BatchView::parse(&bytes).unwrap(), 1).unwrap();
    assert_eq!(count(&reader, "batches"), 1);
    let write = reader.connection().execute("DELETE FROM batches", []);
    assert!(write.is_err(), "a read-only store must refuse writes");
}

#[test]
fn prune_deletes_old_windows_and_what_they_carried() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("flowmesh.db")).unwrap();
    for i in 0..5 {
        let bytes = batch(9, (1_700_000_000 + 10 * i) * SECOND);
        store.store_batch(&BatchView::parse(&bytes).unwrap(), 1).unwrap();
    }
    let cutoff = (1_700_000_000 + 30) * SECOND; // the first three windows are older
    assert_eq!(store.prune(cutoff, 2).unwrap(), 2);
    assert_eq!(store.prune(cutoff, 2).unwrap(), 1);
    assert_eq!(store.prune(cutoff, 2).unwrap(), 0);
    assert_eq!(count(&store, "batches"), 2);
    for table in ["path_windows", "agent_windows", "sampled_flows", "sampled_probes"] {
        let orphans: i64 = store
            .connection()
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE window_start_ns < ?1"),
                [cutoff as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0, "{table} kept rows of pruned batches");
    }
    assert_eq!(count(&store, "path_windows"), 4);
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    {
        let mut store = Store::open(&path).unwrap();
        let bytes = batch(9, 1_700_000_000 * SECOND);
        store.store_batch(&BatchView::parse(&bytes).unwrap(), 1).unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(count(&store, "batches"), 1);
    let bytes = batch(9, 1_700_000_000 * SECOND);
    assert_eq!(
        store.store_batch(&BatchView::parse(&bytes).unwrap(), 2).unwrap(),
        Stored::Duplicate
    );
}

#[test]
fn bad_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db");
    std::fs::write(
        &path,
        b"this is not an sqlite database, just some text of sufficient length",
    )
    .unwrap();
    let err = Store::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("not-a-db"), "{err}");

    let newer = dir.path().join("newer.db");
    {
        let conn = rusqlite::Connection::open(&newer).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
            .unwrap();
    }
    let err = Store::open(&newer).err().unwrap();
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
    let err = Store::open_read_only(&newer).err().unwrap();
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");

    let missing = dir.path().join("missing.db");
    let err = Store::open_read_only(&missing).err().unwrap();
    assert!(err.to_string().contains("missing.db"), "{err}");
}
