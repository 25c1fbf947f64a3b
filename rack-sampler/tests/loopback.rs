//! The sampler binary on loopback: synthetic agents send real UDP datagrams;
//! a real QUIC server in the test stands in for the collector and records
//! every batch. Covers exact delivery across a collector outage and a
//! sampler restart, a sampler killed (SIGKILL) mid-window reporting what it
//! missed in the window it restarts in, failover between several collectors
//! (one down from the start, one that never acknowledges, one that only
//! answers retry-later, one stopped mid-run), a collector given by host
//! name, the malformed-datagram corpus, the Prometheus endpoint and a
//! refused client certificate.
//!
//! Nothing here sleeps for a guessed time: every wait polls an observable
//! condition (a metric, a batch the stand-in received, the child's exit)
//! against a deadline. Window and timing logic is tested on the aggregator
//! with time passed in (tests/aggregate.rs, tests/properties.rs).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{datagram, probe};
use configs::TlsFiles;
use configs_runtime::tls::{self, DevPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire_format::{AckStatus, BatchAck, BatchId, BatchView, ProbeOutcome};
use zerocopy::IntoBytes;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the stand-in collector received: every distinct batch, and how many
/// repeats it acknowledged as duplicates (or, busy, answered retry-later).
#[derive(Default)]
struct Received {
    batches: BTreeMap<BatchId, Vec<u8>>,
    duplicates: u64,
    retry_later: u64,
}

/// How the stand-in collector answers a batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Like the collector: stored, or duplicate.
    Acknowledge,
    /// Never: it takes the batch and says nothing.
    Silent,
    /// Retry-later, always, storing nothing (a collector whose storage is
    /// down).
    RetryLater,
}

/// A QUIC server that acknowledges batches the way the collector does.
struct StandIn {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    fn start(files: &TlsFiles, addr: SocketAddr, received: Arc<Mutex<Received>>) -> StandIn {
        StandIn::serve(files, addr, received, Answer::Acknowledge)
    }

    /// A collector that takes batches (recorded in `received`) but never
    /// acknowledges one, as if it died after reading each.
    fn start_silent(files: &TlsFiles, addr: SocketAddr, received: Arc<Mutex<Received>>) -> StandIn {
        StandIn::serve(files, addr, received, Answer::Silent)
    }

    /// A collector that answers every batch retry-later (counted in
    /// `received`), storing none.
    fn start_busy(files: &TlsFiles, addr: SocketAddr, received: Arc<Mutex<Received>>) -> StandIn {
        StandIn::serve(files, addr, received, Answer::RetryLater)
    }

    /// The address it listens on.
    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    fn serve(files: &TlsFiles, addr: SocketAddr, received: Arc<Mutex<Received>>, answer: Answer) -> StandIn {
        let endpoint = quinn::Endpoint::server(tls::server_config(files).unwrap(), addr).unwrap();
        let accepting = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let received = received.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else { return };
                    // Unanswered streams stay open until the connection ends.
                    let mut unanswered = Vec::new();
                    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                        let Ok(bytes) = recv.read_to_end(64 << 20).await else {
                            return;
                        };
                        let view = BatchView::parse(&bytes).unwrap();
                        let id = view.header.batch_id;
                        if answer == Answer::Silent {
                            received.lock().unwrap().batches.insert(id, bytes);
                            unanswered.push(send);
                            continue;
                        }
                        let status = if answer == Answer::RetryLater {
                            received.lock().unwrap().retry_later += 1;
                            AckStatus::RetryLater
                        } else {
                            let mut r = received.lock().unwrap();
                            match r.batches.entry(id) {
                                std::collections::btree_map::Entry::Occupied(_) => {
                                    r.duplicates += 1;
                                    AckStatus::Duplicate
                                }
                                std::collections::btree_map::Entry::Vacant(e) => {
                                    e.insert(bytes.clone());
                                    AckStatus::Stored
                                }
                            }
                        };
                        let _ = send.write_all(BatchAck::new(id, status, 0).as_bytes()).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        StandIn { endpoint, task }
    }

    async fn stop(self) {
        self.endpoint.close(0u32.into(), b"stand-in stopping");
        self.task.abort();
        let _ = self.task.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// The sampler binary as a child process, killed if the test fails.
struct SamplerProcess {
    child: Child,
    stderr: PathBuf,
}

struct Setup {
    dir: PathBuf,
    ingest: SocketAddr,
    metrics: SocketAddr,
    /// The stand-in collector's address.
    collector: SocketAddr,
    /// `uplink.collectors` as the sampler is given it.
    collectors: Vec<String>,
    tls: TlsFiles,
    /// `aggregate.window_secs`.
    window_secs: u64,
}

impl SamplerProcess {
    fn start(s: &Setup, name: &str) -> SamplerProcess {
        let config = s.dir.join("sampler.toml");
        std::fs::write(&config, config_text(s)).unwrap();
        let stderr = s.dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_flowmesh-sampler"))
            .args(["--config".as_ref(), config.as_os_str()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        SamplerProcess { child, stderr }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sampler exited with {status}: {}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "sampler did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash: nothing is flushed, no window emitted early.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for SamplerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(s: &Setup) -> String {
    let topology = s.dir.join("topology.toml");
    std::fs::write(&topology, common::TOPOLOGY).unwrap();
    format!(
        r#"
sampler_id = 3
rack = "rack1"
topology = "{topology}"

[ingest]
listen = ["{ingest}", "[::1]:{port}"]

[aggregate]
window_secs = {window_secs}
grace_ms = 300
sample_one_in = 4

[uplink]
collectors = [{collectors}]
server_name = "localhost"
spool_dir = "{spool}"
ack_timeout_ms = 2000
tls = {{ ca = "{ca}", cert = "{cert}", key = "{key}" }}

[metrics]
listen = "{metrics}"
"#,
        topology = topology.display(),
        ingest = s.ingest,
        port = s.ingest.port(),
        collectors = s
            .collectors
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
        spool = s.dir.join("spool").display(),
        ca = s.tls.ca.display(),
        cert = s.tls.cert.display(),
        key = s.tls.key.display(),
        metrics = s.metrics,
        window_secs = s.window_secs,
    )
}

fn setup(dir: &Path, pki: &DevPki) -> Setup {
    let collector: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    Setup {
        dir: dir.to_path_buf(),
        ingest: format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
        metrics: format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap(),
        collector,
        collectors: vec![collector.to_string()],
        tls: pki.sampler("sampler-3"),
        window_secs: 1,
    }
}

fn pki(dir: &Path) -> DevPki {
    DevPki::generate(&dir.join("pki"), &["localhost".into()], &["sampler-3".into()]).unwrap()
}

async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// How long a wait for a condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Polls the metrics endpoint until `ready` holds for the exposition.
async fn wait_for_metrics(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(page) = http_get(addr, "/metrics").await
            && ready(&page)
        {
            return page;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls what the stand-in collector received until `ready` holds for it.
async fn wait_for_received(received: &Mutex<Received>, what: &str, ready: impl Fn(&Received) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if ready(&received.lock().unwrap()) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start of the 1 s window (the tests' window length) holding `ns`.
fn window_of(ns: u64) -> u64 {
    ns - ns % 1_000_000_000
}

/// The value of the sample `series` (name with labels, as exposed).
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn now_ns() -> u64 {
    rack_sampler::now_ns()
}

/// Sends `count` datagrams of one probe each from agent `node`, numbered
/// from `*seq`; returns how many probes were sent and the send time of the
/// last. They are paced 20 ms apart so that the traffic, like an agent's,
/// spans more than one window; nothing waits on the pacing.
fn send_probes(socket: &UdpSocket, to: SocketAddr, node: u32, seq: &mut u32, count: u32) -> (u64, u64) {
    let mut last_ns = 0;
    for _ in 0..count {
        let record = probe(node, 102, u64::from(*seq), ProbeOutcome::Ok, 150_000, 10_000);
        last_ns = now_ns();
        socket
            .send_to(&datagram(node, 1, *seq, last_ns, &[record]), to)
            .unwrap();
        *seq += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    (u64::from(count), last_ns)
}

/// A stand-in collector and a sampler started against it.
struct Rig {
    pki: DevPki,
    s: Setup,
    received: Arc<Mutex<Received>>,
    stand_in: StandIn,
    sampler: SamplerProcess,
}

impl Rig {
    async fn start(dir: &Path, name: &str) -> Rig {
        let pki = pki(dir);
        let s = setup(dir, &pki);
        let received = Arc::new(Mutex::new(Received::default()));
        let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
        let sampler = SamplerProcess::start(&s, name);
        wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;
        Rig {
            pki,
            s,
            received,
            stand_in,
            sampler,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_arrives_once_across_a_collector_outage_and_a_sampler_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Rig {
        pki,
        s,
        received,
        stand_in,
        sampler,
    } = Rig::start(dir.path(), "first").await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    let to = s.ingest;
    let mut sent = 0;
    // Phase 1: collector up.
    sent += tokio::task::block_in_place(|| send_probes(&agent, to, 101, &mut seq, 60)).0;
    wait_for_metrics(s.metrics, "a first acknowledged batch", |p| {
        metric(p, "flowmesh_sampler_uplink_batches_acked_total{status=\"stored\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    // Phase 2: collector down; batches spool.
    stand_in.stop().await;
    let spooled_before = received.lock().unwrap().batches.len();
    sent += tokio::task::block_in_place(|| send_probes(&agent, to, 101, &mut seq, 60)).0;
    wait_for_metrics(s.metrics, "batches waiting in the spool", |p| {
        metric(p, "flowmesh_sampler_spool_batches").unwrap_or(0.0) >= 2.0
    })
    .await;
    // Phase 3: restart the sampler mid-outage; its spool must survive.
    let stopping_ns = now_ns();
    sampler.stop();
    let spool_files = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
    assert!(spool_files >= 2, "spool is empty after a clean stop");
    let sampler = SamplerProcess::start(&s, "second");
    wait_for_metrics(s.metrics, "the restarted sampler", |_| true).await;
    // Its aggregator (and first window) started before its endpoint served.
    let restarted_ns = now_ns();
    let (probes, last_sent_ns) = tokio::task::block_in_place(|| send_probes(&agent, to, 101, &mut seq, 60));
    sent += probes;
    // Phase 4: collector back: every spooled batch is replayed.
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    let done = wait_for_metrics(s.metrics, "the spool to drain", |p| {
        metric(p, "flowmesh_sampler_spool_batches") == Some(0.0)
            && metric(p, "flowmesh_sampler_windows_emitted_total").unwrap_or(0.0) >= 3.0
    })
    .await;
    // The window of the last probe closes and is delivered too. The spool
    // sends in window order, so every earlier batch was delivered before it.
    let last_window = window_of(last_sent_ns);
    wait_for_received(&received, "the batch of the last probe's window", |r| {
        r.batches
            .values()
            .any(|b| BatchView::parse(b).unwrap().header.window_start_ns.get() >= last_window)
    })
    .await;
    sampler.stop();
    stand_in.stop().await;
    assert!(done.contains("flowmesh_sampler_uplink_connected 1"), "{done}");

    let r = received.lock().unwrap();
    assert!(r.batches.len() > spooled_before);
    // Every window from the first to the last arrived, each id once; the
    // restart's window may come in two parts.
    let mut windows: BTreeMap<u64, Vec<u16>> = BTreeMap::new();
    let mut probes = 0u64;
    let mut weights = 0u64;
    for (id, bytes) in &r.batches {
        let view = BatchView::parse(bytes).unwrap();
        let start = view.header.window_start_ns.get();
        assert_eq!(view.header.sampler_id.get(), 3);
        assert_eq!(view.header.window_len_ns.get(), 1_000_000_000);
        assert_eq!(
            *id,
            BatchId::for_window(3, start, u16::from_be_bytes([id.0[12], id.0[13]]))
        );
        windows
            .entry(start)
            .or_default()
            .push(u16::from_be_bytes([id.0[12], id.0[13]]));
        probes += view.paths.iter().map(|p| u64::from(p.probes_sent.get())).sum::<u64>();
        weights += view.probes.iter().map(|p| u64::from(p.meta.weight.get())).sum::<u64>();
        assert_eq!(view.completeness.len(), 3);
    }
    // Windows are contiguous except where no sampler ran at all: the first
    // emitted every window up to the one in which it was stopped, the second
    // every one from the one in which it started. A sampler does not claim
    // windows it did not observe.
    let (first, last) = (*windows.keys().next().unwrap(), *windows.keys().next_back().unwrap());
    let missing: Vec<u64> = (first..=last)
        .step_by(1_000_000_000)
        .filter(|w| !windows.contains_key(w))
        .collect();
    let (stopped, restarted) = (window_of(stopping_ns), window_of(restarted_ns));
    assert!(
        missing.iter().all(|&w| stopped < w && w < restarted),
        "windows missing outside the restart ({stopped}..{restarted}): {missing:?} of {:?}",
        windows.keys().collect::<Vec<_>>()
    );
    assert!(windows.values().all(|parts| parts.len() <= 2));
    assert_eq!(probes, sent, "probes lost or counted twice");
    assert_eq!(weights, sent, "sample weights do not add up to the records");
}

/// An agent on its own thread sending one probe datagram every 20 ms,
/// whatever becomes of the sampler, and recording when it sent each
/// (index: sequence number).
struct PacedAgent {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl PacedAgent {
    fn start(to: SocketAddr, node: u32) -> PacedAgent {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut sent = Vec::new();
            // Bounded: the test stops it well within this.
            while !stopped.load(Ordering::Relaxed) && sent.len() < 10_000 {
                let seq = sent.len() as u32;
                let record = probe(node, 102, u64::from(seq), ProbeOutcome::Ok, 150_000, 10_000);
                let at = now_ns();
                // Nothing listens while the sampler is down: the datagram is
                // lost, as on a real network.
                let _ = socket.send_to(&datagram(node, 1, seq, at, &[record]), to);
                sent.push(at);
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        });
        PacedAgent {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; returns the send time of each datagram.
    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for PacedAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Agent `node`'s (expected, received) datagrams in the batches of window
/// `start`.
fn agent_in_window(r: &Received, start: u64, node: u32) -> Option<(u32, u32)> {
    let mut found = None;
    for bytes in r.batches.values() {
        let view = BatchView::parse(bytes).unwrap();
        if view.header.window_start_ns.get() != start {
            continue;
        }
        let c = view.completeness.iter().find(|c| c.node_id.get() == node).unwrap();
        let (e, g) = found.unwrap_or((0, 0));
        found = Some((e + c.datagrams_expected.get(), g + c.datagrams_received.get()));
    }
    found
}

/// Issue 17: a sampler killed (SIGKILL) mid-window and restarted on the same
/// spool directory counts, in the window it restarts in, what the agent sent
/// while it was down and what the killed sampler had received of that window
/// (lost with it): its batch says expected > received, and expected is
/// exactly what the agent sent in the window. The window before, which the
/// first sampler saw whole, reads complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_killed_mid_window_reports_what_it_missed_in_the_window_it_restarts_in() {
    // Long enough for a restart to land in the window of the kill.
    const WINDOW_SECS: u64 = 4;
    let window_ns = WINDOW_SECS * 1_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    s.window_secs = WINDOW_SECS;
    let received = Arc::new(Mutex::new(Received::default()));
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    let mut sampler = SamplerProcess::start(&s, "before-kill");
    wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;
    let agent = PacedAgent::start(s.ingest, 101);
    let mut first_window = now_ns() - now_ns() % window_ns;

    // Kill early in a window R, once the window before it (one the agent
    // covered whole, with one process) was emitted and the agents' state
    // saved with the spool. A restart that comes up in a later window (a
    // loaded machine) tests nothing: the cycle is tried again, from a
    // window the restarted process sees whole, a bounded number of times.
    const CYCLES: usize = 4;
    let state = dir.path().join("spool").join(rack_sampler::checkpoint::FILE);
    let mut cycle = 0;
    let (killed_in, killed_ns, restarted_ns) = loop {
        cycle += 1;
        let deadline = Instant::now() + DEADLINE;
        let killed_in = loop {
            let now = now_ns();
            let r = now - now % window_ns;
            let saved = std::fs::read_to_string(&state).unwrap_or_default();
            if r >= first_window + 2 * window_ns
                && now - r < window_ns / 4
                && saved.lines().any(|line| line == format!("through_ns {r}"))
            {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a saved state early in a window"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        sampler.kill();
        let killed_ns = now_ns();
        sampler = SamplerProcess::start(&s, &format!("after-kill-{cycle}"));
        wait_for_metrics(s.metrics, "the restarted sampler", |_| true).await;
        // Its ingest socket was bound before its endpoint served.
        let restarted_ns = now_ns();
        let restarted_in = restarted_ns - restarted_ns % window_ns;
        if restarted_in == killed_in {
            break (killed_in, killed_ns, restarted_ns);
        }
        assert!(
            cycle < CYCLES,
            "the sampler restarted in a later window than it was killed in {CYCLES} times"
        );
        // A window started by no process whole is no window before a kill.
        first_window = restarted_in;
    };
    while now_ns() < killed_in + window_ns + 300_000_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = agent.stop();
    wait_for_received(&received, "the batch of the window the sampler restarted in", |r| {
        agent_in_window(r, killed_in, 101).is_some()
    })
    .await;
    sampler.stop();
    stand_in.stop().await;

    let sent_in = |from: u64, to: u64| sent.iter().filter(|&&t| from <= t && t < to).count() as u32;
    let r = received.lock().unwrap();
    let (expected, got) = agent_in_window(&r, killed_in, 101).unwrap();
    assert_eq!(
        expected,
        sent_in(killed_in, killed_in + window_ns),
        "expected: every datagram the agent sent in the window ({got} received)"
    );
    assert!(
        got < expected,
        "the restart's window reads complete: {got} of {expected}"
    );
    assert!(
        expected - got >= sent_in(killed_in, killed_ns),
        "what the killed sampler received of the window is lost with it: {got} of {expected}"
    );
    assert!(got >= sent_in(restarted_ns, killed_in + window_ns));
    let before = killed_in - window_ns;
    let whole = sent_in(before, killed_in);
    assert_eq!(
        agent_in_window(&r, before, 101),
        Some((whole, whole)),
        "the window before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_counted_by_reason_while_good_traffic_flows() {
    let dir = tempfile::tempdir().unwrap();
    let Rig {
        s,
        received,
        stand_in,
        sampler,
        ..
    } = Rig::start(dir.path(), "sampler").await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = |seq: u32| datagram(101, 1, seq, now_ns(), &[probe(101, 102, 0, ProbeOutcome::Ok, 1_000, 0)]);
    let mut wrong_version = good(0);
    wrong_version[2] = 2;
    let mut unknown_kind = good(0);
    unknown_kind[3] = 9;
    let mut reserved = good(0);
    let last = reserved.len() - 1;
    reserved[last] = 1;
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", Vec::new()),
        ("truncated", vec![0xff; 10]),
        ("truncated", good(0)[..40].to_vec()),
        ("oversized", [good(0), vec![0; 7]].concat()),
        ("unsupported_version", wrong_version),
        ("unknown_kind", unknown_kind),
        ("reserved_not_zero", reserved),
        (
            "foreign_node",
            datagram(201, 1, 0, now_ns(), &[probe(201, 101, 0, ProbeOutcome::Ok, 1, 0)]),
        ),
        // Text where a header belongs: its third byte is no version we know.
        (
            "unsupported_version",
            b"GET / HTTP/1.1\r\nHost: sampler\r\n\r\n".to_vec(),
        ),
    ];
    let mut seq = 0;
    for (_, bad) in &corpus {
        agent.send_to(&good(seq), s.ingest).unwrap();
        seq += 1;
        agent.send_to(bad, s.ingest).unwrap();
    }
    // The same port over IPv6: both families are served side by side.
    let agent6 = UdpSocket::bind("[::1]:0").unwrap();
    agent6.send_to(&good(seq), ("::1", s.ingest.port())).unwrap();
    let page = wait_for_metrics(s.metrics, "every datagram counted", |p| {
        metric(p, "flowmesh_sampler_datagrams_received_total") == Some(f64::from(seq + 1))
            && metric(p, "flowmesh_sampler_datagrams_dropped_total{reason=\"foreign_node\"}") == Some(1.0)
    })
    .await;
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for (reason, _) in &corpus {
        *want.entry(reason).or_default() += 1.0;
    }
    for (reason, count) in &want {
        let series = format!("flowmesh_sampler_datagrams_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&page, &series), Some(*count), "{series}\n{page}");
    }
    assert_eq!(
        metric(&page, "flowmesh_sampler_datagrams_dropped_total{reason=\"bad_magic\"}"),
        Some(0.0),
        "every reason is exposed, zero included"
    );
    assert!(page.contains("# HELP flowmesh_sampler_datagrams_dropped_total"));
    // Each ingest socket's receive buffer as the kernel granted it, and
    // whether net.core.rmem_max capped what ingest.socket_buffer_bytes asks.
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let asked = configs::SamplerConfig::default().ingest.socket_buffer_bytes;
    for listen in [s.ingest.to_string(), format!("[::1]:{}", s.ingest.port())] {
        let series = |name: &str| format!("flowmesh_sampler_ingest_receive_buffer_{name}{{listen=\"{listen}\"}}");
        assert_eq!(
            metric(&page, &series("bytes")),
            Some((2 * asked.min(rmem_max)) as f64),
            "{page}"
        );
        assert_eq!(
            metric(&page, &series("capped")),
            Some(f64::from(u8::from(asked > rmem_max))),
            "{page}"
        );
    }
    configs_runtime::promtool::promtool_check(&page).unwrap();
    let health = http_get(s.metrics, "/healthz").await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http_get(s.metrics, "/readyz").await.unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // The window's batch reports the refused datagrams upward.
    let malformed = |r: &Received| -> u32 {
        r.batches
            .values()
            .map(|b| BatchView::parse(b).unwrap().header.malformed_datagrams.get())
            .sum()
    };
    wait_for_received(&received, "the refused datagrams in a batch", |r| {
        malformed(r) >= corpus.len() as u32
    })
    .await;
    assert_eq!(malformed(&received.lock().unwrap()), corpus.len() as u32);
    sampler.stop();
    stand_in.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_certificate_is_refused_and_reported_as_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let rogue = DevPki::generate(&dir.path().join("rogue"), &["localhost".into()], &["sampler-3".into()]).unwrap();
    let mut s = setup(dir.path(), &pki);
    // Trusts the real collector, presents a certificate its CA never signed.
    s.tls = TlsFiles {
        ca: pki.collector().ca,
        ..rogue.sampler("sampler-3")
    };
    let received = Arc::new(Mutex::new(Received::default()));
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    let sampler = SamplerProcess::start(&s, "rogue");
    wait_for_metrics(s.metrics, "a TLS failure", |p| {
        metric(p, "flowmesh_sampler_uplink_failures_total{kind=\"tls\"}").unwrap_or(0.0) >= 1.0
            && metric(p, "flowmesh_sampler_windows_emitted_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    let page = http_get(s.metrics, "/metrics").await.unwrap();
    assert_eq!(metric(&page, "flowmesh_sampler_uplink_connected"), Some(0.0));
    assert!(received.lock().unwrap().batches.is_empty());
    let log = sampler.log();
    assert!(log.contains("TLS handshake with the collector"), "{log}");
    assert!(log.contains("uplink.tls.cert"), "{log}");
    sampler.stop();
    stand_in.stop().await;
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sampler.toml");
    std::fs::write(
        &config,
        "sampler_id = 1\nrack = \"rack9\"\n[aggregate]\nwindow_secs = 0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-sampler"))
        .args(["--config".as_ref(), config.as_os_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("aggregate.window_secs"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, no backtrace: {stderr}");

    // A rack the topology does not have is named, with the racks it has.
    let pki = pki(dir.path());
    let s = setup(dir.path(), &pki);
    let text = config_text(&s).replace("rack = \"rack1\"", "rack = \"rack9\"");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-sampler"))
        .args(["--config".as_ref(), config.as_os_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rack `rack9`") && stderr.contains("rack1, rack2"),
        "{stderr}"
    );
}

/// Probes the batches account for (their paths' `probes_sent`).
fn probes_in<'a>(batches: impl IntoIterator<Item = &'a Vec<u8>>) -> u64 {
    batches
        .into_iter()
        .flat_map(|b| {
            BatchView::parse(b)
                .unwrap()
                .paths
                .iter()
                .map(|p| u64::from(p.probes_sent.get()))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Whether `r` holds a batch of the window starting at `window` or later.
/// Batches go in window order, so every earlier one was delivered before.
fn reached(r: &Received, window: u64) -> bool {
    r.batches
        .values()
        .any(|b| BatchView::parse(b).unwrap().header.window_start_ns.get() >= window)
}

/// The `flowmesh_sampler_uplink_collector_connected` series of `collector`.
fn connected_to(page: &str, collector: &str) -> Option<f64> {
    metric(
        page,
        &format!("flowmesh_sampler_uplink_collector_connected{{collector=\"{collector}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_first_collector_down_every_batch_goes_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    // Bound for the whole test but never read: nothing answers, so its
    // handshake times out (ack_timeout_ms, 2 s), and no other socket can
    // take the port meanwhile.
    let dead_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = dead_socket.local_addr().unwrap().to_string();
    let live = s.collector.to_string();
    s.collectors = vec![dead.clone(), live.clone()];
    let received = Arc::new(Mutex::new(Received::default()));
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    let sampler = SamplerProcess::start(&s, "failover");
    wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    let (sent, last_ns) = tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 60));
    wait_for_received(&received, "the last probe's window at the second collector", |r| {
        reached(r, window_of(last_ns))
    })
    .await;
    let page = http_get(s.metrics, "/metrics").await.unwrap();
    let log = sampler.log();
    sampler.stop();
    stand_in.stop().await;
    drop(dead_socket);

    let r = received.lock().unwrap();
    assert_eq!(probes_in(r.batches.values()), sent, "probes lost or counted twice");
    assert_eq!(
        r.duplicates, 0,
        "the dead collector acknowledged nothing, so nothing was resent"
    );
    assert_eq!(connected_to(&page, &live), Some(1.0), "{page}");
    assert_eq!(connected_to(&page, &dead), Some(0.0), "{page}");
    assert!(
        metric(&page, "flowmesh_sampler_uplink_failovers_total").unwrap() >= 1.0,
        "{page}"
    );
    assert!(metric(&page, "flowmesh_sampler_uplink_failures_total{kind=\"timeout\"}").unwrap() >= 1.0);
    assert!(log.contains(&format!("no answer from the collector {dead}")), "{log}");
    assert!(
        log.contains(&format!("connected to the collector collector={live} addr={live}")),
        "{log}"
    );
    configs_runtime::promtool::promtool_check(&page).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_first_collector_never_acknowledged_is_resent_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    // The first accepts the connection and reads every batch but never
    // answers: the sampler must give up on it and resend to the second.
    let swallowed = Arc::new(Mutex::new(Received::default()));
    let silent = StandIn::start_silent(&pki.collector(), "127.0.0.1:0".parse().unwrap(), swallowed.clone());
    let received = Arc::new(Mutex::new(Received::default()));
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    s.collectors = vec![silent.addr().to_string(), s.collector.to_string()];
    let sampler = SamplerProcess::start(&s, "silent");
    wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    let (sent, last_ns) = tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 60));
    wait_for_received(&received, "the last probe's window at the second collector", |r| {
        reached(r, window_of(last_ns))
    })
    .await;
    let page = http_get(s.metrics, "/metrics").await.unwrap();
    sampler.stop();
    silent.stop().await;
    stand_in.stop().await;

    let lost = swallowed.lock().unwrap();
    let r = received.lock().unwrap();
    assert!(!lost.batches.is_empty(), "the first collector was never sent a batch");
    for id in lost.batches.keys() {
        assert!(
            r.batches.contains_key(id),
            "batch {id} sent to the silent collector was not resent"
        );
    }
    assert_eq!(probes_in(r.batches.values()), sent, "probes lost or counted twice");
    assert!(metric(&page, "flowmesh_sampler_uplink_failures_total{kind=\"timeout\"}").unwrap() >= 1.0);
    assert_eq!(connected_to(&page, &s.collectors[1]), Some(1.0), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_keeps_answering_retry_later_is_failed_over() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    // The first is up but cannot store anything: after a few retry-laters
    // the sampler must count it as failed and move on to the second.
    let refused = Arc::new(Mutex::new(Received::default()));
    let busy = StandIn::start_busy(&pki.collector(), "127.0.0.1:0".parse().unwrap(), refused.clone());
    let received = Arc::new(Mutex::new(Received::default()));
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    s.collectors = vec![busy.addr().to_string(), s.collector.to_string()];
    let sampler = SamplerProcess::start(&s, "busy");
    wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    let (sent, last_ns) = tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 30));
    wait_for_received(&received, "the last probe's window at the second collector", |r| {
        reached(r, window_of(last_ns))
    })
    .await;
    let page = http_get(s.metrics, "/metrics").await.unwrap();
    let log = sampler.log();
    sampler.stop();
    busy.stop().await;
    stand_in.stop().await;

    let limit = u64::from(rack_sampler::uplink::RETRY_LATER_LIMIT);
    assert!(
        refused.lock().unwrap().retry_later >= limit,
        "the busy collector was not tried"
    );
    let r = received.lock().unwrap();
    assert_eq!(probes_in(r.batches.values()), sent, "probes lost or counted twice");
    assert_eq!(r.duplicates, 0, "the busy collector stored nothing");
    assert!(metric(&page, "flowmesh_sampler_uplink_failures_total{kind=\"busy\"}").unwrap() >= 1.0);
    assert!(metric(&page, "flowmesh_sampler_uplink_failovers_total").unwrap() >= 1.0);
    assert_eq!(connected_to(&page, &s.collectors[1]), Some(1.0), "{page}");
    assert!(
        log.contains(&format!(
            "the collector {} answered retry-later {limit} times in a row",
            s.collectors[0]
        )),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_stopped_mid_run_is_replaced_by_the_next_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    let first_received = Arc::new(Mutex::new(Received::default()));
    let first = StandIn::start(&pki.collector(), "127.0.0.1:0".parse().unwrap(), first_received.clone());
    let second_received = Arc::new(Mutex::new(Received::default()));
    let second = StandIn::start(&pki.collector(), s.collector, second_received.clone());
    s.collectors = vec![first.addr().to_string(), s.collector.to_string()];
    let sampler = SamplerProcess::start(&s, "stopped");
    wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    let mut sent = tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 30)).0;
    wait_for_received(&first_received, "a batch at the first collector", |r| {
        !r.batches.is_empty()
    })
    .await;
    first.stop().await;
    let (probes, last_ns) = tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 60));
    sent += probes;
    wait_for_received(
        &second_received,
        "the last probe's window at the second collector",
        |r| reached(r, window_of(last_ns)),
    )
    .await;
    let page = http_get(s.metrics, "/metrics").await.unwrap();
    sampler.stop();
    second.stop().await;

    // A batch in flight when the first stopped may have reached both.
    let mut all = first_received.lock().unwrap().batches.clone();
    all.extend(second_received.lock().unwrap().batches.clone());
    assert!(!second_received.lock().unwrap().batches.is_empty());
    assert_eq!(probes_in(all.values()), sent, "probes lost or counted twice");
    assert_eq!(connected_to(&page, &s.collectors[0]), Some(0.0), "{page}");
    assert_eq!(connected_to(&page, &s.collectors[1]), Some(1.0), "{page}");
    assert!(
        metric(&page, "flowmesh_sampler_uplink_failovers_total").unwrap() >= 1.0,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_given_by_host_name_is_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    let by_name = format!("localhost:{}", s.collector.port());
    s.collectors = vec![by_name.clone()];
    let received = Arc::new(Mutex::new(Received::default()));
    let stand_in = StandIn::start(&pki.collector(), s.collector, received.clone());
    let sampler = SamplerProcess::start(&s, "by-name");
    wait_for_metrics(s.metrics, "the sampler's endpoint", |_| true).await;

    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 10));
    let page = wait_for_metrics(s.metrics, "a batch acknowledged through the name", |p| {
        metric(p, "flowmesh_sampler_uplink_batches_acked_total{status=\"stored\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    let log = sampler.log();
    sampler.stop();
    stand_in.stop().await;

    assert!(!received.lock().unwrap().batches.is_empty());
    assert_eq!(connected_to(&page, &by_name), Some(1.0), "{page}");
    assert!(
        log.contains(&format!(
            "connected to the collector collector={by_name} addr={}",
            s.collector
        )),
        "{log}"
    );
}

#[test]
fn a_bad_collector_entry_is_named_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut s = setup(dir.path(), &pki);
    s.collectors = vec![s.collector.to_string(), "collector.dc1".into()];
    let config = dir.path().join("sampler.toml");
    std::fs::write(&config, config_text(&s)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-sampler"))
        .args(["--config".as_ref(), config.as_os_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("uplink.collectors[1] = \"collector.dc1\": expected \"host:port\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// Name and nice value of each thread of process `pid`
/// (/proc/PID/task/TID/stat: the nice value is the 19th field, the 17th
/// after the parenthesized name).
fn threads_of(pid: u32) -> Vec<(String, i32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let nice = stat[close + 1..].split_whitespace().nth(16).unwrap().parse().unwrap();
        threads.push((stat[open + 1..close].to_string(), nice));
    }
    threads
}

/// The receive loop runs on a thread of its own at the daemon's priority,
/// and every runtime thread (emission, spooling, the uplink, metrics) ten
/// nice levels below it: on a sampler with one core, sending a window's
/// batch over QUIC used to hold up receiving until the socket overflowed
/// (docs/performance.md, "pipeline"). And it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receive_loop_runs_on_its_own_thread_ahead_of_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let Rig {
        s, stand_in, sampler, ..
    } = Rig::start(dir.path(), "sampler").await;
    let threads = threads_of(sampler.child.id());
    let own = threads
        .iter()
        .find(|(name, _)| name == "flowmesh-sample")
        .map(|&(_, nice)| nice)
        .unwrap_or_else(|| panic!("no main thread in {threads:?}"));
    let ingest: Vec<i32> = threads
        .iter()
        .filter(|(name, _)| name == "flowmesh-ingest")
        .map(|&(_, nice)| nice)
        .collect();
    assert_eq!(ingest, [own], "{threads:?}");
    let workers: Vec<i32> = threads
        .iter()
        .filter(|(name, _)| name == "tokio-rt-worker")
        .map(|&(_, nice)| nice)
        .collect();
    assert!(!workers.is_empty(), "{threads:?}");
    assert!(
        workers
            .iter()
            .all(|&nice| nice == (own + rack_sampler::ingest::BACKGROUND_NICE).min(19)),
        "{threads:?}"
    );
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0;
    let sent = tokio::task::block_in_place(|| send_probes(&agent, s.ingest, 101, &mut seq, 5)).0;
    wait_for_metrics(s.metrics, "the probes received", |p| {
        metric(p, "flowmesh_sampler_records_received_total{kind=\"probe\"}").unwrap_or(0.0) >= sent as f64
    })
    .await;
    sampler.stop();
    stand_in.stop().await;
}
