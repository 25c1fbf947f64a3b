//! The collector over a real QUIC connection with mutual TLS: batches are
//! stored and acknowledged, repeats are duplicates, invalid batches are
//! rejected with a reason, unknown client certificates are refused, several
//! samplers can write at once, the metrics endpoint reports it all (batches
//! a certificate may not write included), SIGTERM exits cleanly after the
//! last commit, and a collector killed with SIGKILL loses no acknowledged
//! batch. Who may write what is tests/authorization.rs.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::server::{self, Stats, Writer};
use collector_storage::{Reader, RowCounts, SqliteStore};
use configs::TlsFiles;
use configs_runtime::tls::{self, DevPki};
use wire_format::*;

const SECOND: u64 = 1_000_000_000;

/// Start of window `window`: recent, so the collector's retention (30 days
/// by default) keeps it; fixed for the test run, so batch ids repeat.
fn window_start(window: u64) -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| (server::now_ns() / (10 * SECOND)) * 10 * SECOND - 3_600 * SECOND);
    base + 10 * SECOND * window
}

fn batch(sampler: u32, window: u64, paths: u32) -> Vec<u8> {
    let start = window_start(window);
    let mut b = BatchBuilder::new(BatchInfo::window(sampler, 1, start, 10 * SECOND));
    for dst in 0..paths {
        let mut p = PathSummary::new(101, 200 + dst, 0, Some(Transport::Udp));
        p.probes_sent = 10.into();
        b.push_path(p, &[]).unwrap();
    }
    b.encode().unwrap()
}

/// An in-process collector on 127.0.0.1 with a fresh database.
struct Server {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    db: std::path::PathBuf,
}

impl Server {
    async fn start(dir: &Path, pki: &DevPki) -> Server {
        let db = dir.join("flowmesh.db");
        let store = SqliteStore::open(&db).unwrap();
        let stats = Arc::new(Stats::default());
        let (writer, _thread) = Writer::spawn(Box::new(store), 8, 4, stats.clone()).unwrap();
        let endpoint = quinn::Endpoint::server(
            tls::server_config(&pki.collector()).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(endpoint, writer, stats.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stats,
            stop: Some(stop),
            task,
            db,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn client(files: &TlsFiles) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls::client_config(files).unwrap());
    endpoint
}

/// Sends one batch on its own stream and returns the acknowledgement.
async fn send(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<BatchAck> {
    let (mut tx, mut rx) = conn.open_bi().await?;
    tx.write_all(bytes).await?;
    tx.finish()?;
    let reply = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(64)).await??;
    Ok(*BatchAck::parse(&reply)?)
}

/// Samplers that batches in the database at `db` came from.
fn distinct_samplers(db: &Path) -> usize {
    let batches = SqliteStore::open_read_only(db).unwrap().batches(0, u64::MAX).unwrap();
    batches
        .iter()
        .map(|b| b.sampler_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Rows stored in the database at `db`, read as the analyzer would.
fn rows(db: &Path) -> RowCounts {
    SqliteStore::open_read_only(db).unwrap().row_counts().unwrap()
}

#[tokio::test]
async fn batches_are_stored_once_and_acknowledged_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    let server = Server::start(dir.path(), &pki).await;
    let endpoint = client(&pki.sampler("sampler-a"));
    let conn = endpoint.connect(server.addr, "localhost").unwrap().await.unwrap();

    let first = batch(1, 0, 3);
    let ack = send(&conn, &first).await.unwrap();
    assert_eq!(ack.status(), AckStatus::Stored);
    assert_eq!(ack.batch_id, BatchId::for_window(1, window_start(0), 0));
    // Acknowledged means committed: a separate reader sees it now.
    assert_eq!(rows(&server.db).path_windows, 3);

    assert_eq!(send(&conn, &first).await.unwrap().status(), AckStatus::Duplicate);
    assert_eq!(rows(&server.db).batches, 1);

    // Many batches at once on parallel streams: all stored, each once.
    let sends: Vec<_> = (1..=20)
        .map(|w| {
            let conn = conn.clone();
            tokio::spawn(async move { send(&conn, &batch(1, w, 2)).await.unwrap().status() })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), AckStatus::Stored);
    }
    assert_eq!(rows(&server.db).batches, 21);

    // An invalid batch is rejected with its reason and stores nothing.
    let mut bad = batch(1, 99, 1);
    bad[4] = 9; // version
    let ack = send(&conn, &bad).await.unwrap();
    assert_eq!(ack.status(), AckStatus::Rejected);
    assert_eq!(
        DropReason::from_code(ack.error_code.get()),
        Some(DropReason::UnsupportedVersion)
    );
    assert_eq!(rows(&server.db).batches, 21);

    assert_eq!(Stats::get(&server.stats.batches_stored), 21);
    assert_eq!(Stats::get(&server.stats.batches_duplicate), 1);
    assert_eq!(Stats::get(&server.stats.batches_rejected), 1);
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    // Same names, different CA: the collector must not trust it.
    let rogue = DevPki::generate(&dir.path().join("rogue"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    let server = Server::start(dir.path(), &pki).await;
    let rogue_files = TlsFiles {
        ca: pki.collector().ca, // trusts the real collector, presents a rogue client cert
        ..rogue.sampler("sampler-a")
    };
    let endpoint = client(&rogue_files);
    let outcome = async {
        let conn = endpoint.connect(server.addr, "localhost")?.await?;
        send(&conn, &batch(1, 0, 1)).await
    }
    .await;
    assert!(outcome.is_err(), "a rogue client got an answer: {outcome:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Stats::get(&server.stats.connections_refused) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(Stats::get(&server.stats.connections_refused), 1);
    assert_eq!(rows(&server.db).batches, 0);
    server.stop().await;
}

/// A free UDP port on 127.0.0.1 (the port is released before use; a clash
/// would show as a bind error, not a wrong result).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The collector binary as a child process that is killed if the test fails.
struct Collector(Child);

impl Collector {
    fn start(dir: &Path, pki: &DevPki, port: u16) -> Collector {
        Collector::start_with_metrics(dir, pki, port, "127.0.0.1:0", None)
    }

    /// With its topology of one rack, id 1, named like the "sampler-a"
    /// certificate: that certificate writes rack 1 as sampler 1. Its log
    /// goes to `log` when given, as JSON lines (`--log-format json`).
    fn start_with_metrics(dir: &Path, pki: &DevPki, port: u16, metrics: &str, log: Option<&Path>) -> Collector {
        let files = pki.collector();
        let topology = dir.join("topology.toml");
        std::fs::write(&topology, "[[racks]]\nid = 1\nname = \"sampler-a\"\n").unwrap();
        let stderr = log.map_or_else(Stdio::inherit, |log| std::fs::File::create(log).unwrap().into());
        let log_format = if log.is_some() { "json" } else { "text" };
        let child = Command::new(env!("CARGO_BIN_EXE_flowmesh-collector"))
            .args(["--log-format", log_format])
            .env("FLOWMESH_COLLECTOR_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWMESH_COLLECTOR_DATABASE", dir.join("flowmesh.db"))
            .env("FLOWMESH_COLLECTOR_TOPOLOGY", &topology)
            .env("FLOWMESH_COLLECTOR_TLS__CA", &files.ca)
            .env("FLOWMESH_COLLECTOR_TLS__CERT", &files.cert)
            .env("FLOWMESH_COLLECTOR_TLS__KEY", &files.key)
            .env("FLOWMESH_COLLECTOR_METRICS__LISTEN", metrics)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Collector(child)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect_with_retry(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async { anyhow::Ok(endpoint.connect(addr, "localhost")?.await?) };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(conn)) => return conn,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("collector did not come up at {addr}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let endpoint = client(&pki.sampler("sampler-a"));
    let total = 200u64;

    let mut collector = Collector::start(dir.path(), &pki, port);
    let conn = connect_with_retry(&endpoint, addr).await;
    // Stream batches from several tasks; kill the collector mid-stream.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for lane in 0..4 {
        let conn = conn.clone();
        let acked_tx = acked_tx.clone();
        senders.push(tokio::spawn(async move {
            for w in (lane..total).step_by(4) {
                match send(&conn, &batch(1, w, 20)).await {
                    Ok(ack) if ack.status() == AckStatus::Stored => acked_tx.send(w).unwrap(),
                    Ok(ack) => panic!("unexpected acknowledgement {:?}", ack.status()),
                    Err(_) => return, // the collector died
                }
            }
        }));
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while let Some(w) = acked_rx.recv().await {
        acked.push(w);
        if acked.len() == 40 {
            collector.0.kill().unwrap(); // SIGKILL
            collector.0.wait().unwrap();
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    assert!(
        acked.len() >= 40 && (acked.len() as u64) < total,
        "acked {}",
        acked.len()
    );
    drop(collector);

    // Every acknowledged batch survived.
    let db = dir.path().join("flowmesh.db");
    for w in &acked {
        let start = window_start(*w);
        // Opened for writing: recovers the WAL as the collector would.
        let found = SqliteStore::open(&db).unwrap().batches(start, start + 1).unwrap().len();
        assert_eq!(found, 1, "acknowledged window {w} is missing after SIGKILL");
    }

    // Restart and replay everything, as a sampler's spool would: the data is
    // complete and nothing is stored twice.
    let _collector = Collector::start(dir.path(), &pki, port);
    let conn = connect_with_retry(&endpoint, addr).await;
    let mut stored = 0;
    for w in 0..total {
        match send(&conn, &batch(1, w, 20)).await.unwrap().status() {
            AckStatus::Stored => stored += 1,
            AckStatus::Duplicate => {}
            other => panic!("replay of window {w}: {other:?}"),
        }
    }
    assert!(stored <= total as usize - acked.len());
    assert_eq!(rows(&db).batches, total);
    assert_eq!(rows(&db).path_windows, total * 20);
}

/// A plain HTTP/1.1 GET over TCP, as a Prometheus scrape does: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

#[tokio::test]
async fn prometheus_scrape_reports_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    let port = free_port();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let log = dir.path().join("collector.log");
    let _collector = Collector::start_with_metrics(dir.path(), &pki, port, &metrics.to_string(), Some(&log));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(metrics, "/readyz").await {
            Ok((200, body)) => {
                assert_eq!(body, "ready\n");
                break;
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("collector never became ready: {other:?}"),
        }
    }
    assert_eq!(http_get(metrics, "/healthz").await.unwrap(), (200, "ok\n".to_string()));

    let endpoint = client(&pki.sampler("sampler-a"));
    let conn = connect_with_retry(&endpoint, format!("127.0.0.1:{port}").parse().unwrap()).await;
    let bytes = batch(1, 0, 5);
    assert_eq!(send(&conn, &bytes).await.unwrap().status(), AckStatus::Stored);
    assert_eq!(send(&conn, &bytes).await.unwrap().status(), AckStatus::Duplicate);
    // The certificate writes rack 1 as sampler 1 only: sampler 3's batches
    // are refused as unauthorized, counted each, logged once.
    for w in 0..2 {
        let ack = send(&conn, &batch(3, w, 1)).await.unwrap();
        assert_eq!(ack.status(), AckStatus::Rejected);
        assert_eq!(ack.error_code.get(), wire_format::batch::ACK_UNAUTHORIZED);
    }

    let (status, body) = http_get(metrics, "/metrics").await.unwrap();
    configs_runtime::promtool::promtool_check(&body).unwrap();
    assert_eq!(status, 200);
    let value = |line_start: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{body}"))
    };
    assert_eq!(value("flowmesh_collector_batches_total{outcome=\"stored\"}"), 1.0);
    assert_eq!(value("flowmesh_collector_batches_total{outcome=\"duplicate\"}"), 1.0);
    assert_eq!(value("flowmesh_collector_batches_total{outcome=\"unauthorized\"}"), 2.0);
    assert_eq!(value("flowmesh_collector_batches_total{outcome=\"rejected\"}"), 0.0);
    assert_eq!(
        value("flowmesh_collector_batches_unauthorized_total{reason=\"sampler\"}"),
        2.0
    );
    assert_eq!(
        value("flowmesh_collector_batches_unauthorized_total{reason=\"rack\"}"),
        0.0
    );
    assert_eq!(value("flowmesh_collector_rows_stored_total"), 6.0); // the batch row + 5 paths
    assert_eq!(value("flowmesh_collector_write_seconds_count"), 2.0); // one per transaction
    assert!(value("flowmesh_collector_database_bytes") > 0.0);
    // The QUIC socket's receive buffer as the kernel granted it, and
    // whether net.core.rmem_max capped the 8 MiB asked.
    let rmem_max = rmem_max();
    let requested = configs::CollectorConfig::default().socket_buffer_bytes as u64;
    assert_eq!(
        value("flowmesh_collector_receive_buffer_bytes"),
        receive_buffer(port) as f64
    );
    assert_eq!(
        value("flowmesh_collector_receive_buffer_capped"),
        f64::from(u8::from(requested > rmem_max))
    );
    assert!(
        body.contains("# TYPE flowmesh_collector_batches_total counter"),
        "{body}"
    );
    // Every build exports its version.
    let build_info = format!(
        "flowmesh_build_info{{component=\"collector\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        body.lines().any(|l| l == build_info),
        "{build_info} missing from\n{body}"
    );
    // With --log-format json every log line is one JSON object, the event's
    // fields beside the message. One warning for the connection, naming the
    // certificate and the claim.
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
    }
    let refusals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Refused a batch the sampler's certificate may not write"))
        })
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert_eq!(refusals[0]["level"], "WARN", "{log}");
    assert_eq!(refusals[0]["identity"], "sampler-a", "{log}");
    assert_eq!(refusals[0]["sampler"], 3, "{log}");
    assert_eq!(refusals[0]["rack"], 1, "{log}");
}

#[tokio::test]
async fn many_samplers_at_once_each_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("sampler-{i}")).collect();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &names).unwrap();
    let server = Server::start(dir.path(), &pki).await;
    let samplers: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let endpoint = client(&pki.sampler(name));
            let addr = server.addr;
            tokio::spawn(async move {
                let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
                for w in 0..10 {
                    let ack = send(&conn, &batch(i as u32 + 1, w, 3)).await.unwrap();
                    assert_eq!(ack.status(), AckStatus::Stored);
                }
                conn.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
            })
        })
        .collect();
    for sampler in samplers {
        sampler.await.unwrap();
    }
    assert_eq!(distinct_samplers(&server.db), 4);
    assert_eq!(rows(&server.db).batches, 40);
    assert_eq!(rows(&server.db).path_windows, 120);
    server.stop().await;
}

#[tokio::test]
async fn sigterm_exits_cleanly_after_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    let port = free_port();
    let mut collector = Collector::start(dir.path(), &pki, port);
    let endpoint = client(&pki.sampler("sampler-a"));
    let conn = connect_with_retry(&endpoint, format!("127.0.0.1:{port}").parse().unwrap()).await;
    for w in 0..5 {
        assert_eq!(send(&conn, &batch(1, w, 10)).await.unwrap().status(), AckStatus::Stored);
    }
    let pid = collector.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = collector.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "collector did not exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // A clean exit checkpoints the log: the main file alone holds every batch.
    assert!(!dir.path().join("flowmesh.db-wal").exists(), "WAL left behind");
    assert_eq!(rows(&dir.path().join("flowmesh.db")).batches, 5);
}

/// This host's `net.core.rmem_max`: the most a socket's receive buffer
/// request is granted (twice it, for the kernel's overhead).
fn rmem_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The receive buffer of UDP socket `port` on 127.0.0.1 (`ss`'s `rb`), once
/// it is bound (bounded wait).
fn receive_buffer(port: u16) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ss")
            .args(["-H", "-u", "-a", "-n", "-m", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2)");
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(rb) = text.split(['(', ',', ')']).find_map(|f| f.strip_prefix("rb")) {
            return rb.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "nothing bound to UDP port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The QUIC socket gets the configured receive buffer (8 MiB by default):
/// every rack's sampler sends its window's batch at about the same moment,
/// and the kernel's default (≈ 208 KiB) dropped packets of one sampler's
/// batch in the pipeline benchmark. The kernel grants twice the request,
/// capped at `net.core.rmem_max`.
#[test]
fn the_quic_socket_has_the_configured_receive_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &["localhost".into()], &["sampler-a".into()]).unwrap();
    let port = free_port();
    let _collector = Collector::start(dir.path(), &pki, port);
    let rmem_max = rmem_max();
    let requested = configs::CollectorConfig::default().socket_buffer_bytes as u64;
    assert_eq!(requested, 8 << 20);
    assert_eq!(receive_buffer(port), 2 * requested.min(rmem_max));
}
