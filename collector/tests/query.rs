//! The query CLI's questions on a database built through the storage
//! library, in each output format, and the `query` command of the binary end
//! to end.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::process::Command;

use collector::query::{Format, write};
use collector::server::now_ns;
use collector_storage::{Answer, BatchWriter, Question, Reader, SqliteStore, Value};
use wire_format::*;

const SECOND: u64 = 1_000_000_000;

/// A database with two recent windows of rack 1 and one old window.
fn database(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("flowmesh.db");
    fill(&mut SqliteStore::open(&path).unwrap());
    path
}

/// Stores two recent windows of rack 1 and one old window.
fn fill(store: &mut dyn BatchWriter) {
    store.upsert_rack(1, "rack1").unwrap();
    for (id, name) in [(101, "r1n1"), (102, "r1n2"), (201, "r2n1")] {
        store.upsert_node(id, name, if id < 200 { 1 } else { 2 }).unwrap();
    }
    let recent = (now_ns() / (10 * SECOND) - 6) * 10 * SECOND;
    for (start, lost_to_201) in [
        (recent, 10u32),
        (recent + 10 * SECOND, 30),
        (recent - 86_400 * SECOND, 90),
    ] {
        let mut b = BatchBuilder::new(BatchInfo::window(1, 1, start, 10 * SECOND));
        for (dst, lost) in [(201u32, lost_to_201), (102, 0)] {
            let mut p = PathSummary::new(101, dst, 0, Some(Transport::Udp));
            p.probes_sent = 100.into();
            p.probes_lost = lost.into();
            p.rtt_p99_ns = 250_000.into();
            b.push_path(p, &[]).unwrap();
        }
        let mut c = <AgentCompleteness as zerocopy::FromZeros>::new_zeroed();
        c.node_id = 102.into();
        c.datagrams_expected = 10.into();
        c.datagrams_received = 7.into();
        b.push_completeness(c);
        let flow = Flow {
            flow_id: 1,
            src: "198.18.1.1".parse().unwrap(),
            dst: "198.18.2.1".parse().unwrap(),
            src_port: 1000,
            dst_port: 443,
            dscp: 0,
            direction: Direction::Outbound,
            end_reason: EndReason::Closed,
            start_ns: start,
            duration_ns: SECOND,
            bytes_acked: 1_000,
            bytes_received: 10,
            segs_out: 5,
            segs_in: 5,
            retrans_segs: 0,
            srtt_us: 50,
            min_rtt_us: 40,
        };
        b.push_flow(SampleMeta::new(101, 100, 0), flow.to_record());
        let bytes = b.encode().unwrap();
        store.store_batch(&BatchView::parse(&bytes).unwrap(), start).unwrap();
    }
}

fn since_an_hour_ago() -> u64 {
    now_ns() - 3_600 * SECOND
}

fn column<'a>(answer: &'a Answer, name: &str) -> Vec<&'a Value> {
    let i = answer.columns.iter().position(|c| c == name).unwrap();
    answer.rows.iter().map(|r| &r[i]).collect()
}

#[test]
fn worst_paths_are_ranked_by_loss_over_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_read_only(&database(dir.path())).unwrap();
    let answer = store.ask(&Question::WorstPaths, since_an_hour_ago(), 10).unwrap();
    assert_eq!(
        column(&answer, "dst_name"),
        [&Value::Text("r2n1".into()), &Value::Text("r1n2".into())]
    );
    // Two recent windows: (10 + 30) lost of 200; the day-old window is out of range.
    assert_eq!(column(&answer, "loss_rate")[0], &Value::Real(0.2));
    assert_eq!(column(&answer, "windows")[0], &Value::Int(2));
    let all = store.ask(&Question::WorstPaths, 0, 10).unwrap();
    assert_eq!(column(&all, "loss_rate")[0], &Value::Real(130.0 / 300.0));
    let one = store.ask(&Question::WorstPaths, 0, 1).unwrap();
    assert_eq!(one.rows.len(), 1);
}

#[test]
fn top_talkers_expand_sampled_flows_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_read_only(&database(dir.path())).unwrap();
    let answer = store.ask(&Question::TopTalkers, since_an_hour_ago(), 10).unwrap();
    assert_eq!(answer.rows.len(), 1);
    assert_eq!(column(&answer, "node_name"), [&Value::Text("r1n1".into())]);
    assert_eq!(column(&answer, "est_flows"), [&Value::Int(200)]);
    assert_eq!(column(&answer, "est_bytes_sent"), [&Value::Int(200_000)]);
}

#[test]
fn node_history_and_completeness() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_read_only(&database(dir.path())).unwrap();
    let by_name = store
        .ask(&Question::Node("r2n1".into()), since_an_hour_ago(), 10)
        .unwrap();
    let by_id = store
        .ask(&Question::Node("201".into()), since_an_hour_ago(), 10)
        .unwrap();
    assert_eq!(by_name, by_id);
    assert_eq!(
        column(&by_name, "loss_rate"),
        [&Value::Real(0.3), &Value::Real(0.1)],
        "newest first"
    );
    let gaps = store.ask(&Question::Completeness, since_an_hour_ago(), 10).unwrap();
    assert_eq!(
        column(&gaps, "node_name"),
        [&Value::Text("r1n2".into()), &Value::Text("r1n2".into())]
    );
    assert_eq!(column(&gaps, "datagrams_missing"), [&Value::Int(3), &Value::Int(3)]);
}

#[test]
fn every_format_renders_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_read_only(&database(dir.path())).unwrap();
    let answer = store.ask(&Question::WorstPaths, since_an_hour_ago(), 10).unwrap();
    let render = |format| {
        let mut out = Vec::new();
        write(&answer, format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let table = render(Format::Table);
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap().starts_with("src_name  src_node  dst_name"),
        "{table}"
    );
    assert!(lines.next().unwrap().starts_with("--------  --------"), "{table}");
    assert!(lines.next().unwrap().starts_with("r1n1      101       r2n1"), "{table}");

    let json: serde_json::Value = serde_json::from_str(&render(Format::Json)).unwrap();
    assert_eq!(json[0]["dst_node"], 201);
    assert_eq!(json[0]["loss_rate"], 0.2);

    let csv = render(Format::Csv);
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap().split(',').count(), answer.columns.len());
    assert!(
        lines.next().unwrap().starts_with("r1n1,101,r2n1,201,200,40,0.2,"),
        "{csv}"
    );
}

#[test]
fn the_query_command_reads_a_live_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let _writer = SqliteStore::open(&db).unwrap(); // a collector holding the file open
    let output = Command::new(env!("CARGO_BIN_EXE_flowmesh-collector"))
        .args([
            "query",
            "worst-paths",
            "--format",
            "json",
            "--since",
            "2h",
            "--database",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let output = Command::new(env!("CARGO_BIN_EXE_flowmesh-collector"))
        .args(["query", "node", "r1n1", "--since", "yesterday", "--database"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected a number with s, m, h or d"), "{stderr}");
}

#[test]
fn the_query_command_answers_the_same_from_clickhouse() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let cluster = collector_storage_clickhouse::cluster::LocalCluster::start(2).unwrap();
    let mut store = collector_storage_clickhouse::ClickHouseStore::open(collector_storage_clickhouse::Options {
        database: "query".into(),
        cluster: collector_storage_clickhouse::cluster::CLUSTER.into(),
        shard_urls: cluster.urls(),
        ..collector_storage_clickhouse::Options::new(cluster.url(0))
    })
    .unwrap();
    fill(&mut store);
    let query = |question: &[&str], backend: &[&str]| -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_flowmesh-collector"))
            .arg("query")
            .args(question)
            .args(["--since", "2h"])
            .args(backend)
            .env("FLOWMESH_COLLECTOR_STORAGE__CLICKHOUSE__DATABASE", "query")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    for question in [
        &["worst-paths"][..],
        &["top-talkers"],
        &["node", "r1n1"],
        &["completeness"],
    ] {
        let sqlite = query(question, &["--database", db.to_str().unwrap()]);
        let clickhouse = query(question, &["--clickhouse", &cluster.url(1)]);
        assert!(sqlite.lines().count() > 1, "{question:?}: {sqlite}");
        assert_eq!(clickhouse, sqlite, "{question:?}");
    }
}
