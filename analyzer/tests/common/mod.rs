//! What the analyzer's tests share: a 3 × 3 topology and databases built
//! through the storage library from what each path shows in each window.
#![allow(dead_code)] // each test file uses its own part
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use analyzer::model::load;
use analyzer::report::{Analysis, analyze};
use collector_storage::{BatchWriter, SqliteStore};
use configs::{AnalyzerConfig, Topology};
use wire_format::{AgentCompleteness, BatchBuilder, BatchInfo, BatchView, PathSummary, Transport, completeness_flags};

pub(crate) const SECOND: u64 = 1_000_000_000;
pub(crate) const W: u64 = 10 * SECOND;
/// A window start in the recent past (2026-09-21), so "--since all" covers it.
pub(crate) const T0: u64 = 1_790_000_000 * SECOND;

pub(crate) fn topology() -> Topology {
    Topology::parse(&topology_racks().concat(), Path::new("topology.toml")).unwrap()
}

pub(crate) fn nodes() -> Vec<u32> {
    (1..=3).flat_map(|r| (1..=3).map(move |n| r * 100 + n)).collect()
}

/// What one path shows in one window.
#[derive(Clone, Copy)]
pub(crate) struct Shows {
    pub(crate) probes: u32,
    pub(crate) lost: u32,
    pub(crate) p99_us: u64,
    pub(crate) responder_p99_us: u64,
    /// TCP segments sent, retransmitted, and flows that retransmitted.
    pub(crate) segs: (u64, u64, u32),
}

pub(crate) const HEALTHY: Shows = Shows {
    probes: 100,
    lost: 0,
    p99_us: 80,
    responder_p99_us: 10,
    segs: (0, 0, 0),
};

/// Builds a database of `windows` windows; `shows(window, src, dst)` says
/// what each path shows (`None`: no data, as from a silent agent), `silent`
/// which agents sent nothing in a window.
pub(crate) fn database(
    dir: &Path,
    windows: u64,
    shows: impl Fn(u64, u32, u32) -> Option<Shows>,
    silent: impl Fn(u64, u32) -> bool,
) -> SqliteStore {
    let path = dir.join("flowmesh.db");
    let mut store = SqliteStore::open(&path).unwrap();
    fill(&mut store, 0..windows, shows, silent);
    drop(store);
    SqliteStore::open_read_only(&path).unwrap()
}

/// Stores windows `windows` (by index from T0) as the samplers would;
/// `silent(window, node)` agents sent nothing.
pub(crate) fn fill(
    store: &mut dyn BatchWriter,
    windows: std::ops::Range<u64>,
    shows: impl Fn(u64, u32, u32) -> Option<Shows>,
    silent: impl Fn(u64, u32) -> bool,
) {
    fill_telemetry(store, windows, shows, |w, n| {
        if silent(w, n) {
            Telemetry::Silent
        } else {
            Telemetry::Complete
        }
    });
}

/// The summary of the path `src` → `dst` showing `s`.
fn path_summary(src: u32, dst: u32, s: Shows) -> PathSummary {
    let mut p = PathSummary::new(src, dst, 0, Some(Transport::Udp));
    p.probes_sent = s.probes.into();
    p.probes_lost = s.lost.into();
    p.rtt_p50_ns = (s.p99_us * 600).into();
    p.rtt_p99_ns = (s.p99_us * 1_000).into();
    p.responder_delay_p99_ns = (s.responder_p99_us * 1_000).into();
    let (segs, retrans, flows) = s.segs;
    p.flows = 20.into();
    p.segs_out = segs.into();
    p.retrans_segs = retrans.into();
    p.flows_with_retrans = flows.into();
    p
}

pub(crate) fn analysis(store: &SqliteStore, windows: u64, judge_from: u64) -> Analysis {
    let obs = load(store, 0, u64::MAX).unwrap();
    analyze(
        &obs,
        T0 + judge_from * W,
        T0 + windows * W,
        &topology(),
        &AnalyzerConfig::default(),
    )
}

pub(crate) fn verdicts(a: &Analysis) -> Vec<(String, String)> {
    a.anomalies
        .iter()
        .map(|x| (x.kind.to_string(), x.element.clone()))
        .collect()
}

pub(crate) fn healthy(_: u64, _: u32, _: u32) -> Option<Shows> {
    Some(HEALTHY)
}

pub(crate) fn never(_: u64, _: u32) -> bool {
    false
}

pub(crate) fn lossy_r3n3(dir: &Path) -> SqliteStore {
    database(
        dir,
        3,
        |_, s, d| {
            Some(if s == 303 || d == 303 {
                Shows { lost: 50, ..HEALTHY }
            } else {
                HEALTHY
            })
        },
        never,
    )
}

/// Three racks of three nodes: rack r's nodes are rRn1..rRn3 (ids r·100+n).
pub(crate) fn topology_racks() -> Vec<String> {
    (1..=3)
        .map(|r| {
            let mut text = format!("[[racks]]\nid = {r}\nname = \"rack{r}\"\n\n");
            for n in 1..=3 {
                text += &format!(
                    "[[nodes]]\nid = {}\nname = \"r{r}n{n}\"\nrack = \"rack{r}\"\naddresses = [\"198.18.{r}.{n}\"]\n\n",
                    r * 100 + n
                );
            }
            text
        })
        .collect()
}

/// What an agent's telemetry shows in one window, for [`fill_telemetry`].
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Telemetry {
    /// Every datagram arrived.
    Complete,
    /// Nothing arrived (its sampler marks it `SILENT`).
    Silent,
    /// This many of 100 datagrams arrived.
    Received(u32),
    /// Its rack's sampler sent no batch for the window: no row at all.
    NoBatch,
}

/// Like [`fill`], with each agent's telemetry said by `telemetry(window,
/// node)`. A rack whose agents all show [`Telemetry::NoBatch`] in a window
/// stores nothing for it, as when its sampler is down.
pub(crate) fn fill_telemetry(
    store: &mut dyn BatchWriter,
    windows: std::ops::Range<u64>,
    shows: impl Fn(u64, u32, u32) -> Option<Shows>,
    telemetry: impl Fn(u64, u32) -> Telemetry,
) {
    for w in windows {
        let start = T0 + w * W;
        for rack in 1..=3u32 {
            let agents: Vec<u32> = nodes().into_iter().filter(|n| n / 100 == rack).collect();
            if agents.iter().all(|&n| telemetry(w, n) == Telemetry::NoBatch) {
                continue;
            }
            let mut b = BatchBuilder::new(BatchInfo::window(rack, rack, start, W));
            for &src in &agents {
                let mut c = AgentCompleteness::new(src);
                match telemetry(w, src) {
                    Telemetry::Complete | Telemetry::NoBatch => {
                        c.datagrams_expected = 100.into();
                        c.datagrams_received = 100.into();
                    }
                    Telemetry::Silent => c.flags = completeness_flags::SILENT,
                    Telemetry::Received(n) => {
                        c.datagrams_expected = 100.into();
                        c.datagrams_received = n.into();
                    }
                }
                b.push_completeness(c);
                for dst in nodes().into_iter().filter(|&d| d != src) {
                    let Some(s) = shows(w, src, dst) else { continue };
                    b.push_path(path_summary(src, dst, s), &[]).unwrap();
                }
            }
            let bytes = b.encode().unwrap();
            store.store_batch(&BatchView::parse(&bytes).unwrap(), start).unwrap();
        }
    }
}

/// A database of `windows` windows built with [`fill_telemetry`].
pub(crate) fn database_telemetry(
    dir: &Path,
    windows: u64,
    shows: impl Fn(u64, u32, u32) -> Option<Shows>,
    telemetry: impl Fn(u64, u32) -> Telemetry,
) -> SqliteStore {
    let path = dir.join("flowmesh.db");
    let mut store = SqliteStore::open(&path).unwrap();
    fill_telemetry(&mut store, 0..windows, shows, telemetry);
    drop(store);
    SqliteStore::open_read_only(&path).unwrap()
}

/// [`analysis`] with a configuration of the test's own.
pub(crate) fn analysis_with(store: &SqliteStore, windows: u64, judge_from: u64, cfg: &AnalyzerConfig) -> Analysis {
    let obs = load(store, 0, u64::MAX).unwrap();
    analyze(&obs, T0 + judge_from * W, T0 + windows * W, &topology(), cfg)
}

/// What the paths show with `host` down in the windows `down` says: its
/// agent sends nothing, its peers' probes to it are all lost.
pub(crate) fn down_host(host: u32, down: impl Fn(u64) -> bool) -> impl Fn(u64, u32, u32) -> Option<Shows> {
    move |w: u64, s: u32, d: u32| {
        if down(w) && s == host {
            None
        } else if down(w) && d == host {
            Some(Shows { lost: 100, ..HEALTHY })
        } else {
            Some(HEALTHY)
        }
    }
}

/// Which agents are silent with `host` down in the windows `down` says.
pub(crate) fn down_agent(host: u32, down: impl Fn(u64) -> bool) -> impl Fn(u64, u32) -> bool {
    move |w: u64, n: u32| down(w) && n == host
}

/// `racks` racks of `per_rack` nodes: rack r's nodes are rRn1.. (ids
/// r·100+n), as [`topology_racks`] has for three of three.
pub(crate) fn topology_sized(racks: u32, per_rack: u32) -> Topology {
    let mut text = String::new();
    for r in 1..=racks {
        text += &format!("[[racks]]\nid = {r}\nname = \"rack{r}\"\n\n");
        for n in 1..=per_rack {
            text += &format!(
                "[[nodes]]\nid = {}\nname = \"r{r}n{n}\"\nrack = \"rack{r}\"\naddresses = [\"198.18.{r}.{n}\"]\n\n",
                r * 100 + n
            );
        }
    }
    Topology::parse(&text, Path::new("topology.toml")).unwrap()
}

/// Like [`database`] on a [`topology_sized`] topology, every agent complete.
pub(crate) fn database_sized(
    dir: &Path,
    (racks, per_rack): (u32, u32),
    windows: u64,
    shows: impl Fn(u64, u32, u32) -> Option<Shows>,
) -> SqliteStore {
    let path = dir.join("flowmesh.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let nodes: Vec<u32> = (1..=racks)
        .flat_map(|r| (1..=per_rack).map(move |n| r * 100 + n))
        .collect();
    for w in 0..windows {
        let start = T0 + w * W;
        for rack in 1..=racks {
            let mut b = BatchBuilder::new(BatchInfo::window(rack, rack, start, W));
            for &src in nodes.iter().filter(|n| *n / 100 == rack) {
                let mut c = AgentCompleteness::new(src);
                c.datagrams_expected = 10.into();
                c.datagrams_received = 10.into();
                b.push_completeness(c);
                for &dst in nodes.iter().filter(|&&d| d != src) {
                    let Some(s) = shows(w, src, dst) else { continue };
                    b.push_path(path_summary(src, dst, s), &[]).unwrap();
                }
            }
            let bytes = b.encode().unwrap();
            store.store_batch(&BatchView::parse(&bytes).unwrap(), start).unwrap();
        }
    }
    drop(store);
    SqliteStore::open_read_only(&path).unwrap()
}

/// [`analysis_with`] on a [`topology_sized`] topology.
pub(crate) fn analysis_sized(
    store: &SqliteStore,
    (racks, per_rack): (u32, u32),
    windows: u64,
    cfg: &AnalyzerConfig,
) -> Analysis {
    let obs = load(store, 0, u64::MAX).unwrap();
    analyze(&obs, T0, T0 + windows * W, &topology_sized(racks, per_rack), cfg)
}

/// A small seeded generator (xorshift64*) for probe outcomes: the same seed
/// gives the same run.
pub(crate) struct Xorshift(pub(crate) u64);

impl Xorshift {
    /// A uniform number in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How many of `n` probes are lost when each is lost with probability `p`.
    pub(crate) fn lost(&mut self, n: u32, p: f64) -> u32 {
        (0..n).map(|_| u32::from(self.uniform() < p)).sum()
    }
}

/// A generator seeded from a run's seed and one path window, so outcomes
/// do not depend on the order paths are asked for.
pub(crate) fn outcomes(seed: u64, w: u64, src: u32, dst: u32) -> Xorshift {
    let mut x = (seed << 40 ^ w << 20 ^ u64::from(src) << 10 ^ u64::from(dst)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    Xorshift((x ^ (x >> 32)) | 1)
}

/// `flowmesh-analyzer watch` over the database in `dir` (3 racks × 3
/// nodes), a pass every 3 s, `passes` passes: the child and its stdout's
/// lines.
pub(crate) fn spawn_watch(
    dir: &Path,
    passes: u32,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let topology = dir.join("topology.toml");
    std::fs::write(&topology, topology_racks().concat()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowmesh-analyzer"))
        .args(["watch", "--since", "all", "--interval-secs", "3", "--passes"])
        .arg(passes.to_string())
        .arg("--database")
        .arg(dir.join("flowmesh.db"))
        .arg("--topology")
        .arg(&topology)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, std::io::BufRead::lines(std::io::BufReader::new(stdout)))
}
