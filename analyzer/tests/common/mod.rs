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

/// Stores windows `windows` (by index from T0) as the samplers would.
pub(crate) fn fill(
    store: &mut dyn BatchWriter,
    windows: std::ops::Range<u64>,
    shows: impl Fn(u64, u32, u32) -> Option<Shows>,
    silent: impl Fn(u64, u32) -> bool,
) {
    for w in windows {
        let start = T0 + w * W;
        for rack in 1..=3u32 {
            let mut b = BatchBuilder::new(BatchInfo::window(rack, rack, start, W));
            for src in nodes().into_iter().filter(|n| n / 100 == rack) {
                let mut c = AgentCompleteness::new(src);
                if silent(w, src) {
                    c.flags = completeness_flags::SILENT;
                } else {
                    c.datagrams_expected = 10.into();
                    c.datagrams_received = 10.into();
                }
                b.push_completeness(c);
                for dst in nodes().into_iter().filter(|&d| d != src) {
                    let Some(s) = shows(w, src, dst) else { continue };
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
                    b.push_path(p, &[]).unwrap();
                }
            }
            let bytes = b.encode().unwrap();
            store.store_batch(&BatchView::parse(&bytes).unwrap(), start).unwrap();
        }
    }
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
