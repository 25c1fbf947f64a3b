//! Reading a range window by window: several readers read exactly what one
//! reader reads, in the same order, with the rows of one path merged.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use collector_storage::read::for_each_window_with;
use collector_storage::{BatchWriter, PathWindow, Reader, SqliteStore, load_paths};
use wire_format::{BatchBuilder, BatchInfo, BatchView, PathSummary, Transport, encode_histogram, new_rtt_histogram};

const SECOND: u64 = 1_000_000_000;

/// Twelve 30 s windows of two samplers, five destinations each, every path
/// in two DSCP classes (two rows to merge), each with its histogram.
fn database(path: &std::path::Path) -> u64 {
    let mut store = SqliteStore::open(path).unwrap();
    let base = 1_700_000_000 * SECOND;
    for w in 0..12u64 {
        let start = base + w * 30 * SECOND;
        for sampler in 1..=2u32 {
            let mut b = BatchBuilder::new(BatchInfo::window(sampler, sampler, start, 30 * SECOND));
            for dst in 1..=5u32 {
                for dscp in [0u8, 46] {
                    let mut h = new_rtt_histogram();
                    let rtt = 10_000 * u64::from(dst) + u64::from(dscp) * 1_000 + w;
                    for _ in 0..10 {
                        h.record(rtt).unwrap();
                    }
                    let mut bytes = Vec::new();
                    encode_histogram(&h, &mut bytes).unwrap();
                    let mut s = PathSummary::new(sampler * 100, dst, dscp, Some(Transport::Udp));
                    s.probes_sent = 10.into();
                    s.probes_lost = u32::from(dscp == 46).into();
                    s.rtt_p50_ns = rtt.into();
                    s.rtt_p99_ns = rtt.into();
                    b.push_path(s, &bytes).unwrap();
                }
            }
            let bytes = b.encode().unwrap();
            store.store_batch(&BatchView::parse(&bytes).unwrap(), start).unwrap();
        }
    }
    base
}

#[test]
fn parallel_readers_match_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowmesh.db");
    let base = database(&path);
    let store = SqliteStore::open_read_only(&path).unwrap();
    // History for the last window's baselines: ten windows back.
    assert_eq!(
        store.history_start(base + 11 * 30 * SECOND, 10).unwrap(),
        base + SECOND * 30
    );
    assert_eq!(store.history_start(base + 11 * 30 * SECOND, 50).unwrap(), 0);
    assert_eq!(store.history_start(base, 0).unwrap(), base);
    let read_all = |parallel_from_rows| {
        let (mut paths, mut windows) = (Vec::new(), Vec::new());
        let read = std::sync::atomic::AtomicU64::new(0);
        let progress = |n, _| {
            read.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        };
        for_each_window_with(
            &store,
            0,
            u64::MAX,
            &progress,
            &mut |w: &[PathWindow]| {
                windows.push(w[0].window_ns);
                paths.extend_from_slice(w);
            },
            parallel_from_rows,
        )
        .unwrap();
        (paths, windows, read.into_inner())
    };
    let (one, one_windows, one_read) = read_all(u64::MAX);
    let (many, many_windows, many_read) = read_all(0);
    assert_eq!(one, many);
    assert_eq!(one_windows, many_windows);
    assert_eq!(one_windows.len(), 12);
    assert!(one_windows.is_sorted());
    assert_eq!((one_read, many_read), (240, 240), "progress counts every row read");
    assert_eq!(one.len(), 12 * 2 * 5);
    assert_eq!(one, load_paths(&store, 0, u64::MAX).unwrap());
    assert_eq!(one[0].window_len_ns, 30 * SECOND);
    let first = &one[0];
    assert_eq!(
        (first.src, first.dst, first.probes_sent, first.probes_lost),
        (100, 1, 20, 1)
    );
    // Merged histograms: half the probes at 10 µs, half at 56 µs; the p99 is
    // the higher class, within the histogram's 2 digits.
    assert!((55_000..=57_000).contains(&first.rtt_p99_ns), "{first:?}");
    // A range selects whole windows.
    let last_two = load_paths(&store, base + 10 * 30 * SECOND, u64::MAX).unwrap();
    assert_eq!(last_two.len(), 2 * 2 * 5);
}
