//! The ClickHouse backend against a real two-shard cluster of private
//! `clickhouse-server`s (started here on free ports, killed on drop): every
//! reader answers exactly as the SQLite store given the same batches, a
//! batch replayed or stored twice by two collectors counts once, a shard
//! that is down fails the write (nothing acknowledged) and loses nothing once
//! back, and a schema newer than this build is refused.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use collector_storage::{BatchWriter, Question, Reader, SqliteStore, StoreError, Stored, Value};
use collector_storage_clickhouse::cluster::{CLUSTER, LocalCluster};
use collector_storage_clickhouse::{ClickHouseStore, Options};
use wire_format::*;

const SECOND: u64 = 1_000_000_000;
/// 30 s before 2026-12-01T00:00:00Z: `fleet()`'s six windows fall on two UTC
/// days, three on each.
const T0: u64 = 1_796_083_200 * SECOND - 30 * SECOND;

fn options(cluster: &LocalCluster, database: &str) -> Options {
    Options {
        database: database.to_string(),
        cluster: CLUSTER.to_string(),
        shard_urls: cluster.urls(),
        ..Options::new(cluster.url(0))
    }
}

/// A deterministic pseudo-random sequence (xorshift), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

fn histogram(rng: &mut Rng, n: u64, base: u64) -> Vec<u8> {
    let mut h = new_rtt_histogram();
    for _ in 0..n {
        h.record(base + rng.next(base)).unwrap();
    }
    let mut out = Vec::new();
    encode_histogram(&h, &mut out).unwrap();
    out
}

/// Rack `rack`'s batch (part `part`) of the window at `window`: paths from
/// the rack's nodes with probe rows of two DSCP classes (so a path has
/// several probe rows to merge by histogram), flows-only rows, one probe row
/// without a histogram, agent completeness, sampled flows (with reports of
/// every node's long flow, [`long_flow`]) and probes.
fn batch(rack: u32, window: u64, part: u16, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let sampler = 100 + rack;
    let mut b = BatchBuilder::new(BatchInfo {
        batch_id: BatchId::for_window(sampler, window, part),
        sampler_id: sampler,
        rack_id: rack,
        window_start_ns: window,
        window_len_ns: 10 * SECOND,
        created_ns: window + 11 * SECOND,
        malformed_datagrams: rng.next(3) as u32,
        records_over_capacity: 0,
        spool_dropped_batches: rng.next(2) as u32,
    });
    for src in (rack * 10 + 1)..=(rack * 10 + 4) {
        for dst in [11u32, 12, 21, 22, 31, 99] {
            if src == dst {
                continue;
            }
            // Half the paths store their flows-only row first: the merge
            // must not let it spoil merging the probe rows' histograms.
            let mut f = PathSummary::new(src, dst, 0, None);
            f.flows = (1 + rng.next(5) as u32).into();
            f.flows_with_retrans = (rng.next(2) as u32).into();
            f.segs_out = rng.next(10_000).into();
            f.retrans_segs = rng.next(100).into();
            f.bytes_sent = rng.next(1 << 30).into();
            if dst % 2 == 0 {
                b.push_path(f, &[]).unwrap();
            }
            for dscp in [0u8, 46] {
                let sent = 20 + rng.next(80) as u32;
                let mut p = PathSummary::new(src, dst, dscp, Some(Transport::Udp));
                p.probes_sent = sent.into();
                let lost = rng.next(u64::from(sent) / 4) as u32;
                p.probes_lost = if dst == 99 { sent / 2 } else { lost }.into();
                p.rtt_p99_ns = (50_000 + rng.next(500_000)).into();
                p.responder_delay_p99_ns = rng.next(20_000).into();
                // One path's DSCP 46 row lacks a histogram: the merge falls
                // back to the larger p99.
                let h = if src == rack * 10 + 1 && dst == 12 && dscp == 46 {
                    Vec::new()
                } else {
                    histogram(&mut rng, u64::from(sent), 40_000)
                };
                b.push_path(p, &h).unwrap();
            }
            if dst % 2 == 1 {
                b.push_path(f, &[]).unwrap();
            }
        }
        let mut c = <AgentCompleteness as zerocopy::FromZeros>::new_zeroed();
        c.node_id = src.into();
        c.agent_epoch = 7.into();
        c.datagrams_expected = 50.into();
        c.datagrams_received = (40 + rng.next(11) as u32).into();
        c.flags = if rng.next(10) == 0 {
            completeness_flags::RESTARTED
        } else {
            0
        };
        b.push_completeness(c);
        let flow = Flow {
            flow_id: u64::MAX - rng.next(1000),
            src: "198.18.1.1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            src_port: 40_000,
            dst_port: 443,
            dscp: 46,
            direction: Direction::Outbound,
            end_reason: EndReason::Open,
            start_ns: window,
            duration_ns: 5 * SECOND,
            bytes_acked: rng.next(1 << 40),
            bytes_received: 500,
            segs_out: 20,
            segs_in: 10,
            retrans_segs: 3,
            srtt_us: 120,
            min_rtt_us: 40,
        };
        b.push_flow(SampleMeta::new(src, 1, anomaly::RETRANS), flow.to_record());
        for k in 0..2 {
            let (meta, report) = long_flow(rack, src, window, part, k);
            b.push_flow(meta, report.to_record());
        }
        let probe = Probe {
            transport: Transport::RdmaUd,
            src: ProbeAddr::Gid(Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
            dst: ProbeAddr::Gid(Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])),
            src_port: 0x11,
            dst_port: 0x22,
            dst_node: 22,
            dscp: 26,
            seq: rng.next(1 << 40),
            outcome: ProbeOutcome::Ok,
            error_code: 0,
            timestamps: ProbeTimestamps {
                requester_send_ns: 1_000,
                responder_receive_ns: 500_000,
                responder_send_ns: 503_000,
                requester_receive_ns: 11_000,
            },
        };
        b.push_probe(SampleMeta::new(src, 10, 0), probe.to_record());
    }
    b.encode().unwrap()
}

/// Where every node's long flow goes: no other sampled flow does.
const LONG_FLOW_DST: &str = "198.18.9.9";

/// Report `k` (0 or 1) of node `src`'s long flow in its rack's batch `part`
/// of the window at `window`. The flow is open from before `fleet()`'s
/// first window past its last, reported twice in every batch (rack 2's
/// windows come in two parts: four times a window), with growing
/// cumulative counters and varying weights; its last report, in the last
/// window's last part, is a reset. Every reader must count it once, by that
/// report ([`long_flow_final_bytes`]).
fn long_flow(rack: u32, src: u32, window: u64, part: u16, k: u64) -> (SampleMeta, Flow) {
    let w = (window - T0) / (10 * SECOND);
    let seq = w * 4 + u64::from(part) * 2 + k;
    let last_part = if rack == 2 { 1 } else { 0 };
    let last = w == 5 && part == last_part && k == 1;
    let bytes = (seq + 1) * 1_000_000 + u64::from(src);
    let flow = Flow {
        // The high bit set: SQLite stores it negative.
        flow_id: (1 << 63) + u64::from(src),
        src: "198.18.1.1".parse().unwrap(),
        dst: LONG_FLOW_DST.parse().unwrap(),
        src_port: 40_001,
        dst_port: 8080,
        dscp: 0,
        direction: Direction::Outbound,
        end_reason: if last { EndReason::Reset } else { EndReason::Open },
        start_ns: T0 - 100 * SECOND,
        duration_ns: (100 + seq) * SECOND,
        bytes_acked: bytes,
        bytes_received: bytes / 10,
        segs_out: seq as u32 * 100,
        segs_in: seq as u32 * 10,
        retrans_segs: 0,
        srtt_us: 100,
        min_rtt_us: 40,
    };
    let meta = if last {
        SampleMeta::new(src, 1, anomaly::RESET)
    } else {
        SampleMeta::new(src, 1 + (seq % 3) as u32, 0)
    };
    (meta, flow)
}

/// The bytes sent of node `src`'s long flow at its last report (weight 1).
fn long_flow_final_bytes(src: u32) -> u64 {
    let seq = if src / 10 == 2 { 5 * 4 + 2 + 1 } else { 5 * 4 + 1 };
    (seq + 1) * 1_000_000 + u64::from(src)
}

/// The top-talkers rows of the long flows: one flow per node, counted once
/// by its last report.
fn check_long_flows(reader: &dyn Reader) {
    let answer = reader.ask(&Question::TopTalkers, 0, 1000).unwrap();
    let dst = answer.columns.iter().position(|c| c == "dst_addr").unwrap();
    let rows: Vec<&Vec<Value>> = answer
        .rows
        .iter()
        .filter(|r| r[dst] == Value::Text(LONG_FLOW_DST.into()))
        .collect();
    assert_eq!(rows.len(), 12, "{answer:?}");
    for row in rows {
        let Value::Int(node) = row[0] else { panic!("{row:?}") };
        let bytes = long_flow_final_bytes(node as u32) as i64;
        assert_eq!(
            row[3..],
            [Value::Int(1), Value::Int(bytes), Value::Int(bytes / 10)],
            "node {node}"
        );
    }
}

/// Three racks over six windows across a UTC midnight; rack 2 sends its
/// windows in two parts, so paths also merge across batches.
fn fleet() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for w in 0..6u64 {
        let window = T0 + w * 10 * SECOND;
        for rack in 1..=3u32 {
            out.push(batch(rack, window, 0, w * 7 + u64::from(rack)));
            if rack == 2 {
                out.push(batch(rack, window, 1, w * 13 + 99));
            }
        }
    }
    out
}

fn views(encoded: &[Vec<u8>]) -> Vec<BatchView<'_>> {
    encoded.iter().map(|b| BatchView::parse(b).unwrap()).collect()
}

/// Everything a reader answers over `fleet()`'s range, for comparing.
fn everything(reader: &dyn Reader) -> String {
    let (from, to) = (0, u64::MAX);
    let mut out = String::new();
    let windows = reader.windows(from, to).unwrap();
    out += &format!("windows {windows:?}\n");
    for w in &windows {
        out += &format!("paths {:?}\n", reader.path_windows(w, &|_| {}).unwrap());
    }
    out += &format!("agents {:?}\n", reader.agent_windows(from, to).unwrap());
    out += &format!("history {:?}\n", reader.history_start(T0 + 50 * SECOND, 3).unwrap());
    out += &format!(
        "history-all {:?}\n",
        reader.history_start(T0 + 50 * SECOND, 100).unwrap()
    );
    out += &format!("batches {:?}\n", reader.batches(from, to).unwrap());
    out += &format!("flows {:?}\n", reader.sampled_flows(from, to).unwrap());
    out += &format!("probes {:?}\n", reader.sampled_probes(from, to).unwrap());
    out += &format!("counts {:?}\n", reader.row_counts().unwrap());
    for q in [
        Question::WorstPaths,
        Question::TopTalkers,
        Question::Node("node-11".into()),
        Question::Node("21".into()),
        Question::Node("nobody".into()),
        Question::Completeness,
    ] {
        // Reals to 12 significant digits: ClickHouse prints doubles as text
        // in JSON, not always round-trip exact in the last digit.
        let answer = reader.ask(&q, 0, 1000).unwrap();
        let mut rows: Vec<Vec<String>> = answer
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| match v {
                        Value::Real(x) => format!("{x:.11e}"),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .collect();
        // A path's rows of one window from two batch parts tie in every
        // ordered column: their order is unspecified.
        if matches!(q, Question::Node(_)) {
            rows.sort();
        }
        out += &format!("{q:?} {:?} {rows:?}\n", answer.columns);
    }
    // From the fourth window on: the long flows by their latest report in
    // the range, the earlier windows' flows left out.
    let later = reader.ask(&Question::TopTalkers, T0 + 30 * SECOND, 1000).unwrap();
    out += &format!("TopTalkers since the fourth window {later:?}\n");
    out
}

fn names(writer: &mut dyn BatchWriter) {
    for rack in 1..=3u32 {
        writer.upsert_rack(rack, &format!("rack-{rack}")).unwrap();
        for node in (rack * 10 + 1)..=(rack * 10 + 4) {
            writer.upsert_node(node, &format!("node-{node}"), rack).unwrap();
        }
    }
}

/// Copies every row of `batch_id` once more, as a second collector storing
/// the same batch during a failover would (equal rows, same shard).
fn store_again_behind_the_lookup(cluster: &LocalCluster, database: &str, id: &BatchId) {
    let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
    for table in [
        "path_windows",
        "agent_windows",
        "sampled_flows",
        "sampled_probes",
        "batches",
    ] {
        let sql =
            format!("INSERT INTO {database}.{table} SELECT * FROM {database}.{table} WHERE batch_id = unhex('{hex}')");
        http(cluster, &sql);
    }
}

/// Runs one statement over HTTP on the first shard, with a synchronous
/// Distributed insert (the collector's setting).
fn http(cluster: &LocalCluster, sql: &str) -> String {
    use std::io::{Read, Write};
    let url = cluster.url(0);
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /?insert_distributed_sync=1 HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{sql}: {answer}"
    );
    answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

#[test]
fn clickhouse_backend_on_two_shards() {
    let mut cluster = LocalCluster::start(2).unwrap();
    let encoded = fleet();
    let batches = views(&encoded);
    let received = T0 + 3_600 * SECOND;

    // The SQLite store is the reference.
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = SqliteStore::open(&dir.path().join("flowmesh.db")).unwrap();
    names(&mut sqlite);
    assert!(
        sqlite
            .store_batches(&batches, received)
            .unwrap()
            .iter()
            .all(|s| *s == Stored::New)
    );
    let reference = everything(&sqlite);
    check_long_flows(&sqlite);

    // 1. Same batches, same answers — from either shard's server.
    let mut store = ClickHouseStore::open(options(&cluster, "same")).unwrap();
    names(&mut store);
    // In several calls, as the collector's writer groups them.
    for chunk in batches.chunks(5) {
        assert!(
            store
                .store_batches(chunk, received)
                .unwrap()
                .iter()
                .all(|s| *s == Stored::New)
        );
    }
    check_long_flows(&store);
    for line in reference.lines().zip(everything(&store).lines()) {
        assert_eq!(line.0, line.1);
    }
    let other = ClickHouseStore::open_read_only(Options {
        url: cluster.url(1),
        ..options(&cluster, "same")
    })
    .unwrap();
    assert_eq!(everything(&other), reference);
    // Both shards hold rows: the Distributed tables spread them.
    for shard in 0..2 {
        let rows: u64 = other_shard_count(&cluster, shard, "same.path_windows_local");
        assert!(rows > 0, "shard {shard} holds no path windows");
    }

    // 2. A replay (a sampler restarting with its spool) is a duplicate.
    let again = store.store_batches(&batches[..4], received + SECOND).unwrap();
    assert_eq!(again, vec![Stored::Duplicate; 4]);
    assert_eq!(store.store_batch(&batches[0], received).unwrap(), Stored::Duplicate);
    assert_eq!(everything(&store), reference);
    // A batch given twice in one call is stored once.
    let mut twice = ClickHouseStore::open(options(&cluster, "twice")).unwrap();
    let outcomes = twice.store_batches(&[batches[0], batches[0]], received).unwrap();
    assert_eq!(outcomes, vec![Stored::New, Stored::Duplicate]);
    assert_eq!(twice.row_counts().unwrap().batches, 1);

    // 3. Two collectors storing the same batch at once both write it; every
    // reader still counts it once, and merges remove the copy for good.
    for b in batches.iter().step_by(3) {
        store_again_behind_the_lookup(&cluster, "same", &b.header.batch_id);
    }
    assert!(
        other_shard_count(&cluster, 0, "same.path_windows_local")
            + other_shard_count(&cluster, 1, "same.path_windows_local")
            > reference_rows(&sqlite)
    );
    assert_eq!(everything(&store), reference);
    for shard in 0..2 {
        for table in ["path_windows", "batches"] {
            http_on(&cluster, shard, &format!("OPTIMIZE TABLE same.{table}_local FINAL"));
        }
    }
    assert_eq!(
        other_shard_count(&cluster, 0, "same.path_windows_local")
            + other_shard_count(&cluster, 1, "same.path_windows_local"),
        reference_rows(&sqlite)
    );
    assert_eq!(everything(&store), reference);

    // 4. Two collectors racing on the same batches, for real.
    let racers: Vec<_> = (0..2)
        .map(|_| ClickHouseStore::open(options(&cluster, "race")).unwrap())
        .collect();
    std::thread::scope(|scope| {
        for mut racer in racers {
            let batches = &batches;
            scope.spawn(move || {
                for b in batches {
                    racer.store_batch(b, received).unwrap();
                }
            });
        }
    });
    let race = ClickHouseStore::open(options(&cluster, "race")).unwrap();
    let mut race_names = ClickHouseStore::open(options(&cluster, "race")).unwrap();
    names(&mut race_names);
    assert_eq!(everything(&race), reference);

    // 5. A shard down: the write fails, so nothing is acknowledged; once the
    // shard is back the same batches store and read exactly once.
    let mut down = ClickHouseStore::open(options(&cluster, "down")).unwrap();
    names(&mut down);
    cluster.stop_shard(1).unwrap();
    let failed = down.store_batches(&batches, received);
    assert!(failed.is_err(), "a write to a down shard succeeded: {failed:?}");
    let message = failed.unwrap_err().to_string();
    // The lookup already fails: reading `batches` needs every shard.
    assert!(
        message.starts_with("clickhouse: looking up batches: ") && !message.contains('\n'),
        "{message}"
    );
    cluster.start_shard(1).unwrap();
    let retried = down.store_batches(&batches, received).unwrap();
    assert!(retried.iter().all(|s| *s == Stored::New), "{retried:?}");
    assert_eq!(everything(&down), reference);
}

fn reference_rows(sqlite: &SqliteStore) -> u64 {
    sqlite.row_counts().unwrap().path_windows
}

fn http_on(cluster: &LocalCluster, shard: usize, sql: &str) -> String {
    use std::io::{Read, Write};
    let url = cluster.url(shard);
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(s, "POST / HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}", sql.len()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.contains(" 200 "), "{sql}: {answer}");
    answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn other_shard_count(cluster: &LocalCluster, shard: usize, table: &str) -> u64 {
    http_on(cluster, shard, &format!("SELECT count() FROM {table}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn schema_versions_and_retention() {
    let cluster = LocalCluster::start(2).unwrap();
    // Reading a database the collector never created says what to do.
    let missing = ClickHouseStore::open_read_only(options(&cluster, "default")).unwrap_err();
    assert!(
        missing.to_string().contains("no flowmesh schema") && missing.to_string().contains("storage.backend"),
        "{missing}"
    );

    let mut store = ClickHouseStore::open(options(&cluster, "flowmesh")).unwrap();
    // Opening again (a restart, a second collector) changes nothing.
    ClickHouseStore::open(options(&cluster, "flowmesh")).unwrap();
    let encoded = fleet();
    store.store_batches(&views(&encoded), T0).unwrap();
    let before = store.row_counts().unwrap();

    // Retention drops whole UTC days: the cutoff at the second day's start
    // drops the first day's windows (before midnight) and keeps the rest.
    let midnight = T0 + 30 * SECOND;
    let dropped = store.prune(midnight + 5 * SECOND, 1).unwrap();
    let first_day = views(&encoded)
        .iter()
        .filter(|b| b.header.window_start_ns.get() < midnight)
        .count();
    assert_eq!(dropped, first_day);
    let after = store.row_counts().unwrap();
    assert_eq!(after.batches, before.batches - first_day as u64);
    assert!(store.windows(0, midnight).unwrap().is_empty());
    assert_eq!(store.windows(midnight, u64::MAX).unwrap().len(), 3);
    assert_eq!(store.prune(midnight + 5 * SECOND, 1).unwrap(), 0);

    // docs/schema.md lists every local table's columns and types as the
    // server has them.
    let doc = include_str!("../../../../docs/schema.md");
    for table in collector_storage_clickhouse::schema::TABLES {
        let heading = format!("#### `{table}_local`");
        let documented: Vec<String> = doc
            .lines()
            .skip_while(|l| *l != heading)
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let column = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some(format!("{column}\t{}", cells.get(2)?))
            })
            .collect();
        let actual = http(
            &cluster,
            &format!(
                "SELECT name, type FROM system.columns WHERE database = 'flowmesh' AND table = '{table}_local' \
                 FORMAT TabSeparated"
            ),
        );
        let actual: Vec<&str> = actual.lines().collect();
        assert_eq!(documented, actual, "docs/schema.md on {table}_local");
    }

    // A schema newer than this build's is refused, for reading and writing.
    http(&cluster, "INSERT INTO flowmesh.flowmesh_schema VALUES (99)");
    for refused in [
        ClickHouseStore::open(options(&cluster, "flowmesh")).unwrap_err(),
        ClickHouseStore::open_read_only(options(&cluster, "flowmesh")).unwrap_err(),
    ] {
        assert!(matches!(refused, StoreError::Backend { .. }));
        assert!(refused.to_string().contains("newer than this build's"), "{refused}");
    }
}

/// Run by [`servers_die_with_a_killed_parent`] in a child process: starts a
/// cluster, prints its first shard's directory and waits to be killed.
#[test]
#[ignore = "run by servers_die_with_a_killed_parent"]
fn child_holding_a_cluster() {
    if std::env::var_os("FLOWMESH_CLUSTER_CHILD").is_none() {
        return;
    }
    let cluster = LocalCluster::start(2).unwrap();
    println!("CLUSTER {} {}", cluster.url(0), cluster.dir().display());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(120));
}

/// A process killed with SIGKILL runs no destructor; its servers must still
/// stop (their pipe closes), not live on holding ports and files.
#[test]
fn servers_die_with_a_killed_parent() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holding_a_cluster", "--ignored", "--nocapture"])
        .env("FLOWMESH_CLUSTER_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("CLUSTER ").map(str::to_string))
        .expect("the child started no cluster");
    let (url, dir) = line.split_once(' ').unwrap();
    let port = url.rsplit(':').next().unwrap().to_string();
    let answers = || std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok();
    assert!(answers(), "the child's server is not up");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while answers() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server at {url} outlived the process that started it"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // What the killed process could not remove.
    std::fs::remove_dir_all(dir).unwrap();
}
