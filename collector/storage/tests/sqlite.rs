//! The SQLite backend on a real file: batches land in their tables exactly
//! and read back through the typed readers as they were sent, repeats are
//! stored once, the documented views answer, readers see committed data
//! while the writer works, retention prunes, foreign files are refused
//! untouched. (SQL here checks the SQLite schema itself: this crate owns it.)

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::time::{SystemTime, UNIX_EPOCH};

use collector_storage::sqlite::SCHEMA_VERSION;
use collector_storage::{BatchWriter, Question, Reader, RowCounts, SqliteStore, StoreError, Stored, Value, WindowInfo};
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

    let flow = sample_flow(window_start_ns);
    b.push_flow(
        SampleMeta::new(101, 1, anomaly::RETRANS | anomaly::RESET),
        flow.to_record(),
    );
    let probe = sample_probe();
    b.push_probe(SampleMeta::new(101, 10, 0), probe.to_record());
    b.encode().unwrap()
}

/// The anomalous flow [`batch`] carries.
fn sample_flow(window_start_ns: u64) -> Flow {
    Flow {
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
    }
}

/// The 1-in-10 sampled RDMA probe [`batch`] carries.
fn sample_probe() -> Probe {
    Probe {
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
    }
}

/// A read-only SQL connection to the file, to check the SQLite schema itself.
fn sql(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

#[test]
fn a_batch_lands_in_every_table_and_reads_back_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let start = 1_700_000_000 * SECOND;
    let bytes = batch(9, start);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(store.store_batch(&view, 42).unwrap(), Stored::New);

    assert_eq!(
        store.row_counts().unwrap(),
        RowCounts {
            batches: 1,
            path_windows: 2,
            agent_windows: 2,
            sampled_flows: 1,
            sampled_probes: 1,
        }
    );
    let batches = store.batches(0, u64::MAX).unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.batch_id, BatchId::for_window(9, start, 0));
    assert_eq!(
        (
            b.sampler_id,
            b.rack_id,
            b.received_ns,
            b.malformed_datagrams,
            b.path_count
        ),
        (9, 1, 42, 3, 2)
    );
    assert_eq!(
        (b.window_start_ns, b.window_len_ns, b.created_ns),
        (start, 10 * SECOND, start + 11 * SECOND)
    );

    // Samples read back exactly as the sampler sent them.
    let flows = store.sampled_flows(0, u64::MAX).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].flow, sample_flow(start), "flow ids keep all 64 bits");
    assert_eq!(
        (flows[0].node_id, flows[0].weight, flows[0].anomalies),
        (101, 1, anomaly::RETRANS | anomaly::RESET)
    );
    let probes = store.sampled_probes(0, u64::MAX).unwrap();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].probe, sample_probe());
    assert_eq!(
        (probes[0].node_id, probes[0].weight, probes[0].window_start_ns),
        (101, 10, start)
    );
    assert!(
        store.sampled_probes(start + 1, u64::MAX).unwrap().is_empty(),
        "range bounds"
    );

    // Merged path windows and agent windows.
    let windows = store.windows(0, u64::MAX).unwrap();
    assert_eq!(
        windows,
        vec![WindowInfo {
            start_ns: start,
            len_ns: 10 * SECOND,
            rows: 2
        }]
    );
    let paths = store.path_windows(&windows[0], &|_| {}).unwrap();
    assert_eq!(paths.len(), 2);
    let (flows_only, lossy) = (&paths[0], &paths[1]);
    assert_eq!(
        (flows_only.dst, flows_only.segs_out, flows_only.retrans_segs),
        (102, 1_000, 20)
    );
    assert_eq!(
        (lossy.dst, lossy.probes_sent, lossy.probes_lost, lossy.rtt_p99_ns),
        (203, 100, 5, 900_000)
    );
    let agents = store.agent_windows(0, u64::MAX).unwrap();
    assert_eq!(
        agents
            .iter()
            .map(|a| (a.node, a.expected, a.received, a.silent))
            .collect::<Vec<_>>(),
        vec![(101, 50, 48, false), (102, 0, 0, true)]
    );

    // The SQLite columns themselves (docs/schema.md).
    let conn = sql(&path);
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
    let flow: (i64, String, String, String) = conn
        .query_row(
            "SELECT flow_id, src_addr, end_reason, direction FROM sampled_flows",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        flow,
        (
            (u64::MAX - 1) as i64,
            "198.18.1.1".into(),
            "reset".into(),
            "outbound".into()
        )
    );
    let probe: (String, String, i64, i64) = conn
        .query_row(
            "SELECT transport, src_addr, network_rtt_ns, responder_delay_ns FROM sampled_probes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(probe, ("rdma-ud".into(), "fe80::1".into(), 7_000, 3_000));
}

#[test]
fn the_same_batch_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("flowmesh.db")).unwrap();
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
    let counts = store.row_counts().unwrap();
    assert_eq!((counts.batches, counts.path_windows, counts.sampled_flows), (2, 4, 2));
    // The first delivery's receive time stands.
    let received: Vec<u64> = store
        .batches(0, u64::MAX)
        .unwrap()
        .iter()
        .map(|b| b.received_ns)
        .collect();
    assert_eq!(received, vec![1, 3]);
}

#[test]
fn documented_views_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store.upsert_rack(1, "rack1").unwrap();
    store.upsert_rack(2, "rack2").unwrap();
    store.upsert_node(101, "r1n1", 1).unwrap();
    store.upsert_node(203, "r2n3", 2).unwrap();
    // A recent window, so the last-hour view includes it.
    let window = (now_ns() / (10 * SECOND) - 3) * 10 * SECOND;
    let bytes = batch(9, window);
    store.store_batch(&BatchView::parse(&bytes).unwrap(), now_ns()).unwrap();
    let conn = sql(&path);

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

/// A report of the long-lived flow of
/// [`a_long_flow_counts_its_final_bytes_once`]: cumulative counters at
/// `duration_ns` into the flow.
fn long_flow_report(flow_id: u64, start_ns: u64, end: EndReason, duration_ns: u64, bytes_acked: u64) -> FlowRecord {
    Flow {
        flow_id,
        src: "198.18.1.1".parse().unwrap(),
        dst: "198.18.2.3".parse().unwrap(),
        src_port: 40_001,
        dst_port: 443,
        dscp: 0,
        direction: Direction::Outbound,
        end_reason: end,
        start_ns,
        duration_ns,
        bytes_acked,
        bytes_received: bytes_acked / 10,
        segs_out: (bytes_acked / 1_000) as u32,
        segs_in: 1,
        retrans_segs: 0,
        srtt_us: 50,
        min_rtt_us: 40,
    }
    .to_record()
}

/// Issue 16: sampled flows carry cumulative counters, and an open flow is
/// reported again and again. A flow reported open three times in one window
/// and closed in the next counts its final bytes once in top-talkers (times
/// the weight of that report), and once per window, by its latest report
/// there, in `flow_estimates` — not once per report.
#[test]
fn a_long_flow_counts_its_final_bytes_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store.upsert_node(101, "r1n1", 1).unwrap();
    let first = 1_700_000_000 * SECOND;
    let second = first + 10 * SECOND;
    let (cookie, began) = (u64::MAX - 7, first - 60 * SECOND);

    let mut a = BatchBuilder::new(BatchInfo::window(9, 1, first, 10 * SECOND));
    for (duration, bytes) in [(61, 1_000u64), (64, 2_000), (67, 3_000)] {
        let report = long_flow_report(cookie, began, EndReason::Open, duration * SECOND, bytes);
        a.push_flow(SampleMeta::new(101, 4, 0), report);
    }
    // Another flow with the same cookie after a reboot (another start) is
    // another flow; so is the same cookie and start on another node.
    let rebooted = long_flow_report(cookie, first, EndReason::Closed, SECOND, 700);
    a.push_flow(SampleMeta::new(101, 1, anomaly::RETRANS), rebooted);
    let elsewhere = long_flow_report(cookie, began, EndReason::Open, 62 * SECOND, 50);
    a.push_flow(SampleMeta::new(102, 1, anomaly::HIGH_RTT), elsewhere);
    let mut b = BatchBuilder::new(BatchInfo::window(9, 1, second, 10 * SECOND));
    let closed = long_flow_report(cookie, began, EndReason::Closed, 72 * SECOND, 5_000);
    b.push_flow(SampleMeta::new(101, 2, 0), closed);
    for batch in [a.encode().unwrap(), b.encode().unwrap()] {
        store.store_batch(&BatchView::parse(&batch).unwrap(), 1).unwrap();
    }

    let talkers = |since| {
        let answer = store.ask(&Question::TopTalkers, since, 10).unwrap();
        assert_eq!(
            answer.columns,
            [
                "node_id",
                "node_name",
                "dst_addr",
                "est_flows",
                "est_bytes_sent",
                "est_bytes_received"
            ]
        );
        answer.rows
    };
    let int = Value::Int;
    // The long flow by its closing report (2 × 5 000), plus the rebooted one.
    assert_eq!(
        talkers(0),
        [
            vec![
                int(101),
                Value::Text("r1n1".into()),
                Value::Text("198.18.2.3".into()),
                int(2 + 1),
                int(2 * 5_000 + 700),
                int(2 * 500 + 70)
            ],
            vec![
                int(102),
                Value::Null,
                Value::Text("198.18.2.3".into()),
                int(1),
                int(50),
                int(5)
            ],
        ]
    );
    // From the second window: the bytes up to its latest report there.
    assert_eq!(
        talkers(second),
        [vec![
            int(101),
            Value::Text("r1n1".into()),
            Value::Text("198.18.2.3".into()),
            int(2),
            int(2 * 5_000),
            int(2 * 500)
        ]]
    );

    // The view: each flow once per window, by its latest report there.
    let estimates: Vec<(i64, u32, i64, i64, i64)> = sql(&path)
        .prepare(
            "SELECT window_start_ns, node_id, est_flows, est_bytes_sent, anomalous_flows FROM flow_estimates
             ORDER BY window_start_ns, node_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (first, second) = (first as i64, second as i64);
    assert_eq!(
        estimates,
        [
            (first, 101, 4 + 1, 4 * 3_000 + 700, 1),
            (first, 102, 1, 50, 1),
            (second, 101, 2, 2 * 5_000, 0),
        ]
    );
    // A bound on the window reaches the index through the view.
    let conn = sql(&path);
    let bounded = "SELECT node_id, est_bytes_sent FROM flow_estimates WHERE window_start_ns >= ?1";
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {bounded}"))
        .unwrap()
        .query_map([second], |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX sampled_flows_by_node (window_start_ns>?)")),
        "{plan:?}"
    );
    let later: (u32, i64) = conn
        .query_row(bounded, [second], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(later, (101, 2 * 5_000));
}

#[test]
fn readers_see_commits_while_the_writer_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let mut writer = SqliteStore::open(&path).unwrap();
    let mut reader = SqliteStore::open_read_only(&path).unwrap();
    assert_eq!(reader.row_counts().unwrap().batches, 0);
    let bytes = batch(9, 1_700_000_000 * SECOND);
    writer.store_batch(&BatchView::parse(&bytes).unwrap(), 1).unwrap();
    assert_eq!(reader.row_counts().unwrap().batches, 1);
    let other = batch(9, 1_700_000_010 * SECOND);
    let write = reader.store_batch(&BatchView::parse(&other).unwrap(), 1);
    assert!(write.is_err(), "a read-only store must refuse writes");
    assert!(
        reader.prune(u64::MAX, 10).is_err(),
        "a read-only store must refuse to prune"
    );
    assert_eq!(writer.row_counts().unwrap().batches, 1);
}

#[test]
fn prune_deletes_old_windows_and_what_they_carried() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("flowmesh.db")).unwrap();
    for i in 0..5 {
        let bytes = batch(9, (1_700_000_000 + 10 * i) * SECOND);
        store.store_batch(&BatchView::parse(&bytes).unwrap(), 1).unwrap();
    }
    let cutoff = (1_700_000_000 + 30) * SECOND; // the first three windows are older
    assert_eq!(store.prune(cutoff, 2).unwrap(), 2);
    assert_eq!(store.prune(cutoff, 2).unwrap(), 1);
    assert_eq!(store.prune(cutoff, 2).unwrap(), 0);
    assert_eq!(
        store.row_counts().unwrap(),
        RowCounts {
            batches: 2,
            path_windows: 4,
            agent_windows: 4,
            sampled_flows: 2,
            sampled_probes: 2,
        },
        "rows of pruned batches went with them"
    );
    assert!(store.batches(0, cutoff).unwrap().is_empty());
    assert!(store.sampled_flows(0, cutoff).unwrap().is_empty());
    assert!(store.agent_windows(0, cutoff).unwrap().is_empty());
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    {
        let mut store = SqliteStore::open(&path).unwrap();
        let bytes = batch(9, 1_700_000_000 * SECOND);
        store.store_batch(&BatchView::parse(&bytes).unwrap(), 1).unwrap();
    }
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.row_counts().unwrap().batches, 1);
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
    let err = SqliteStore::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("not-a-db"), "{err}");

    let missing = dir.path().join("missing.db");
    let err = SqliteStore::open_read_only(&missing).err().unwrap();
    assert!(err.to_string().contains("missing.db"), "{err}");
}

/// A database of a newer schema is refused by writers and readers, and the
/// writer refuses it before changing a byte (not even the journal mode).
#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.db");
    {
        let conn = rusqlite::Connection::open(&newer).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE future (x INTEGER); PRAGMA user_version = {}",
            SCHEMA_VERSION + 1
        ))
        .unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    let err = SqliteStore::open(&newer).err().unwrap();
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
    assert!(err.to_string().contains("newer.db"), "{err}");
    let err = SqliteStore::open_read_only(&newer).err().unwrap();
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
    assert_eq!(std::fs::read(&newer).unwrap(), before, "the refused file was modified");
    assert!(!dir.path().join("newer.db-wal").exists(), "a refused file got a WAL");
}
