//! What the analyzer reads from the collector's database: path windows and
//! agent windows over a time range, merged across batch parts, DSCP classes
//! and probe transports into one row per (window, source, destination).

use collector::{Store, StoreError};
use hdrhistogram::Histogram;
use rusqlite::OptionalExtension as _;
use wire_format::{decode_histogram, new_rtt_histogram, tail_quantile};

/// One directed path in one window, all DSCP classes and transports merged.
#[derive(Debug, Clone, PartialEq)]
pub struct PathWindow {
    /// Window start, ns since the Unix epoch.
    pub window_ns: u64,
    /// Window length, ns.
    pub window_len_ns: u64,
    /// Source node (the reporting agent).
    pub src: u32,
    /// Destination node; 0 for addresses outside the topology.
    pub dst: u32,
    /// Probes with a known outcome.
    pub probes_sent: u64,
    /// Probes that timed out.
    pub probes_lost: u64,
    /// Probes that ended in an error.
    pub probes_failed: u64,
    /// 99th percentile network RTT, ns.
    pub rtt_p99_ns: u64,
    /// 99th percentile responder delay, ns (the largest of the merged rows:
    /// responder delays carry no histogram).
    pub responder_delay_p99_ns: u64,
    /// TCP segments sent by the path's flows.
    pub segs_out: u64,
    /// Of those, retransmitted.
    pub retrans_segs: u64,
    /// Flows that retransmitted (each counted in the window of its first
    /// retransmission).
    pub flows_with_retrans: u64,
}

impl PathWindow {
    /// Probe loss rate (lost + failed over sent), if any probe was sent.
    pub fn loss_rate(&self) -> Option<f64> {
        (self.probes_sent > 0).then(|| (self.probes_lost + self.probes_failed) as f64 / self.probes_sent as f64)
    }

    /// TCP retransmission rate, if any segment was sent.
    pub fn retrans_rate(&self) -> Option<f64> {
        (self.segs_out > 0).then(|| self.retrans_segs as f64 / self.segs_out as f64)
    }

    /// Probes answered.
    pub fn probes_answered(&self) -> u64 {
        self.probes_sent.saturating_sub(self.probes_lost + self.probes_failed)
    }
}

/// One agent's telemetry completeness in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentWindow {
    /// Window start, ns.
    pub window_ns: u64,
    /// The agent's node.
    pub node: u32,
    /// Datagrams its sequence numbers say were sent.
    pub expected: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// Nothing arrived from it in the window.
    pub silent: bool,
    /// It restarted in the window.
    pub restarted: bool,
}

/// Everything read for one analysis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    /// Path windows, ordered by (window, src, dst).
    pub paths: Vec<PathWindow>,
    /// Agent windows, ordered by (window, node).
    pub agents: Vec<AgentWindow>,
}

/// The rows of one (window, src, dst) key while they are merged.
struct Merge {
    row: PathWindow,
    /// Rows with probes seen so far.
    probe_rows: u32,
    /// The first probe row's encoded histogram, decoded only if a second
    /// probe row arrives: most keys have one row, whose stored quantiles
    /// the sampler computed from every sample, and decoding millions of
    /// histograms would dominate the report's time.
    first_histogram: Option<Vec<u8>>,
    /// Whether `scratch` holds the merged histogram of the rows so far.
    merging: bool,
    /// A probe row came without a usable histogram: keep the conservative
    /// merge of quantiles.
    missing_histogram: bool,
}

impl Merge {
    fn new(row: PathWindow, histogram: Option<&[u8]>) -> Merge {
        let mut merge = Merge {
            row,
            probe_rows: 0,
            first_histogram: None,
            merging: false,
            missing_histogram: false,
        };
        if merge.row.probes_sent > 0 {
            merge.probe_rows = 1;
            match histogram.filter(|h| !h.is_empty()) {
                Some(h) => merge.first_histogram = Some(h.to_vec()),
                None => merge.missing_histogram = true,
            }
        }
        merge
    }

    fn add(&mut self, row: &PathWindow, histogram: Option<&[u8]>, scratch: &mut Histogram<u64>) {
        if row.probes_sent > 0 {
            self.probe_rows += 1;
            if !self.missing_histogram {
                if !self.merging {
                    scratch.reset();
                    self.merging = true;
                    let first = self.first_histogram.take();
                    self.missing_histogram |= !add_encoded(scratch, first.as_deref());
                }
                self.missing_histogram |= !add_encoded(scratch, histogram);
            }
        }
        let acc = &mut self.row;
        acc.probes_sent += row.probes_sent;
        acc.probes_lost += row.probes_lost;
        acc.probes_failed += row.probes_failed;
        // Without histograms the best merge of quantiles is the larger: a
        // window is as bad as its worst part.
        acc.rtt_p99_ns = acc.rtt_p99_ns.max(row.rtt_p99_ns);
        acc.responder_delay_p99_ns = acc.responder_delay_p99_ns.max(row.responder_delay_p99_ns);
        acc.segs_out += row.segs_out;
        acc.retrans_segs += row.retrans_segs;
        acc.flows_with_retrans += row.flows_with_retrans;
    }

    fn finish(mut self, scratch: &Histogram<u64>) -> PathWindow {
        if self.merging && !self.missing_histogram && !scratch.is_empty() {
            self.row.rtt_p99_ns = scratch.value_at_quantile(tail_quantile(scratch.len()));
        }
        self.row
    }
}

/// Adds an encoded histogram to `total`; false if there was none or it did
/// not decode.
fn add_encoded(total: &mut Histogram<u64>, encoded: Option<&[u8]>) -> bool {
    match encoded.filter(|h| !h.is_empty()).map(decode_histogram) {
        // Both are within the RTT bounds, so adding cannot fail.
        Some(Ok(h)) => total.add(&h).is_ok(),
        _ => false,
    }
}

/// Reads windows starting in `[from_ns, to_ns)`.
pub fn load(store: &Store, from_ns: u64, to_ns: u64) -> Result<Observations, StoreError> {
    let mut paths = Vec::new();
    for_each_window(store, from_ns, to_ns, &|_, _| {}, &mut |window| {
        paths.extend_from_slice(window)
    })?;
    Ok(Observations {
        paths,
        agents: load_agents(store, from_ns, to_ns)?,
    })
}

/// Rows one reader reads between progress reports.
const PROGRESS_EVERY: u64 = 1 << 14;

/// Fewest expected rows worth a second reader.
const PARALLEL_FROM_ROWS: u64 = 200_000;

/// Windows each reader may read ahead of the consumer.
const READ_AHEAD: usize = 2;

/// A window to read: its start, its length and the rows expected in it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    start: i64,
    len: u64,
    rows: u64,
}

/// Calls `each` with every window's merged path windows, window by window
/// in time order, for windows starting in `[from_ns, to_ns)`; calls
/// `progress(rows_read, rows_expected)` now and then, from any thread.
///
/// Windows are read by one reader per core (at most four), each on its own
/// read-only connection, taking windows in turn and reading at most
/// two windows ahead of `each`: decoding rows is most of a long report's
/// time, SQLite readers block neither each other nor the collector, and
/// memory holds a few windows, not the range. Within a window rows come in
/// (src, dst) order, which the path index gives without sorting, so rows of
/// one path are merged as they stream by.
pub fn for_each_window(
    store: &Store,
    from_ns: u64,
    to_ns: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    each: &mut dyn FnMut(&[PathWindow]),
) -> Result<(), StoreError> {
    for_each_window_with(store, from_ns, to_ns, progress, each, PARALLEL_FROM_ROWS)
}

fn for_each_window_with(
    store: &Store,
    from_ns: u64,
    to_ns: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    each: &mut dyn FnMut(&[PathWindow]),
    parallel_from_rows: u64,
) -> Result<(), StoreError> {
    let db = store.connection();
    let windows = windows(db, from_ns, to_ns)?;
    let expected: u64 = windows.iter().map(|w| w.rows).sum();
    let read = std::sync::atomic::AtomicU64::new(0);
    let count = |n: u64| {
        let so_far = read.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        progress(so_far, expected);
    };
    let file = db.path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let readers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let Some(file) = file.filter(|_| readers > 1 && expected >= parallel_from_rows) else {
        for w in &windows {
            each(&read_window(db, w, &count)?);
        }
        return Ok(());
    };
    std::thread::scope(|scope| {
        let lanes: Vec<_> = (0..readers)
            .map(|lane| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<PathWindow>, StoreError>>(READ_AHEAD);
                let (file, windows, count) = (&file, &windows, &count);
                scope.spawn(move || {
                    let reader = match Store::open_read_only(file) {
                        Ok(reader) => reader,
                        Err(e) => return drop(tx.send(Err(e))),
                    };
                    for w in windows.iter().skip(lane).step_by(readers) {
                        let result = read_window(reader.connection(), w, count);
                        let failed = result.is_err();
                        // The consumer gone (it failed) or this reader failed: stop.
                        if tx.send(result).is_err() || failed {
                            return;
                        }
                    }
                });
                rx
            })
            .collect();
        for i in 0..windows.len() {
            let paths = lanes[i % readers]
                .recv()
                .unwrap_or(Err(StoreError::Sqlite(rusqlite::Error::InvalidQuery)))?;
            each(&paths);
        }
        Ok(())
    })
}

/// The windows starting in `[from_ns, to_ns)` that batches arrived for.
fn windows(db: &rusqlite::Connection, from_ns: u64, to_ns: u64) -> Result<Vec<Window>, StoreError> {
    // SQLite integers are signed.
    let (from_ns, to_ns) = (from_ns.min(i64::MAX as u64) as i64, to_ns.min(i64::MAX as u64) as i64);
    let windows = db
        .prepare(
            "SELECT window_start_ns, MAX(window_len_ns), SUM(path_count) FROM batches
             WHERE window_start_ns >= ?1 AND window_start_ns < ?2
             GROUP BY window_start_ns ORDER BY window_start_ns",
        )?
        .query_map([from_ns, to_ns], |r| {
            Ok(Window {
                start: r.get(0)?,
                len: r.get::<_, i64>(1)?.max(0) as u64,
                rows: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(windows)
}

/// Where RTT baselines for windows from `from_ns` on must start reading:
/// `windows` windows earlier (or the oldest window there is).
pub fn history_start(store: &Store, from_ns: u64, windows: u32) -> Result<u64, StoreError> {
    if windows == 0 {
        return Ok(from_ns);
    }
    let start: Option<i64> = store
        .connection()
        .prepare(
            "SELECT DISTINCT window_start_ns FROM batches WHERE window_start_ns < ?1
             ORDER BY window_start_ns DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row([from_ns.min(i64::MAX as u64) as i64, i64::from(windows) - 1], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(start.map_or(0, |s| s.max(0) as u64))
}

/// Agent windows starting in `[from_ns, to_ns)`, one per (window, node).
pub fn load_agents(store: &Store, from_ns: u64, to_ns: u64) -> Result<Vec<AgentWindow>, StoreError> {
    let (from_ns, to_ns) = (from_ns.min(i64::MAX as u64) as i64, to_ns.min(i64::MAX as u64) as i64);
    let mut stmt = store.connection().prepare(
        "SELECT window_start_ns, node_id, SUM(datagrams_expected), SUM(datagrams_received), MIN(silent), MAX(restarted)
         FROM agent_windows WHERE window_start_ns >= ?1 AND window_start_ns < ?2
         GROUP BY window_start_ns, node_id ORDER BY window_start_ns, node_id",
    )?;
    let agents = stmt
        .query_map([from_ns, to_ns], |r| {
            Ok(AgentWindow {
                window_ns: r.get::<_, i64>(0)?.max(0) as u64,
                node: r.get::<_, i64>(1)? as u32,
                expected: r.get::<_, i64>(2)?.max(0) as u64,
                received: r.get::<_, i64>(3)?.max(0) as u64,
                silent: r.get::<_, i64>(4)? != 0,
                restarted: r.get::<_, i64>(5)? != 0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(agents)
}

/// Reads and merges one window's path windows, telling `read(n)` every so
/// many rows.
fn read_window(db: &rusqlite::Connection, window: &Window, read: &dyn Fn(u64)) -> Result<Vec<PathWindow>, StoreError> {
    let mut paths = Vec::with_capacity(usize::try_from(window.rows).unwrap_or(0));
    let mut scratch = new_rtt_histogram();
    let mut current: Option<Merge> = None;
    let mut stmt = db.prepare_cached(
        "SELECT src_node, dst_node, probes_sent, probes_lost, probes_failed, rtt_p99_ns, responder_delay_p99_ns,
                segs_out, retrans_segs, flows_with_retrans, rtt_histogram
         FROM path_windows WHERE window_start_ns = ?1
         ORDER BY src_node, dst_node",
    )?;
    let mut rows = stmt.query([window.start])?;
    let mut unreported = 0;
    while let Some(r) = rows.next()? {
        let get =
            |i: usize| -> rusqlite::Result<u64> { r.get_ref(i)?.as_i64().map(|v| v.max(0) as u64).map_err(Into::into) };
        let row = PathWindow {
            window_ns: window.start.max(0) as u64,
            window_len_ns: window.len,
            src: get(0)? as u32,
            dst: get(1)? as u32,
            probes_sent: get(2)?,
            probes_lost: get(3)?,
            probes_failed: get(4)?,
            rtt_p99_ns: get(5)?,
            responder_delay_p99_ns: get(6)?,
            segs_out: get(7)?,
            retrans_segs: get(8)?,
            flows_with_retrans: get(9)?,
        };
        // Anything but a blob counts as no histogram: the conservative merge.
        let histogram = r.get_ref(10)?.as_blob_or_null().ok().flatten();
        match &mut current {
            Some(m) if (m.row.src, m.row.dst) == (row.src, row.dst) => m.add(&row, histogram, &mut scratch),
            _ => {
                if let Some(done) = current.replace(Merge::new(row, histogram)) {
                    paths.push(done.finish(&scratch));
                }
            }
        }
        unreported += 1;
        if unreported == PROGRESS_EVERY {
            read(unreported);
            unreported = 0;
        }
    }
    if let Some(done) = current {
        paths.push(done.finish(&scratch));
    }
    read(unreported);
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_format::{BatchBuilder, BatchInfo, BatchView, PathSummary, Transport, encode_histogram};

    const SECOND: u64 = 1_000_000_000;

    /// Several readers read exactly what one reader reads, in the same order,
    /// with rows of one key merged — histogram-exact when each row has one.
    #[test]
    fn parallel_readers_match_one_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowmesh.db");
        let mut store = Store::open(&path).unwrap();
        let base = 1_700_000_000 * SECOND;
        for w in 0..12u64 {
            let start = base + w * 30 * SECOND;
            for sampler in 1..=2u32 {
                let mut b = BatchBuilder::new(BatchInfo::window(sampler, sampler, start, 30 * SECOND));
                for dst in 1..=5u32 {
                    // Two DSCP classes per path: two rows to merge.
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
        drop(store);
        let store = Store::open_read_only(&path).unwrap();
        // History for the last window's baselines: ten windows back.
        assert_eq!(
            history_start(&store, base + 11 * 30 * SECOND, 10).unwrap(),
            base + SECOND * 30
        );
        assert_eq!(history_start(&store, base + 11 * 30 * SECOND, 50).unwrap(), 0);
        assert_eq!(history_start(&store, base, 0).unwrap(), base);
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
        assert_eq!(one[0].window_len_ns, 30 * SECOND);
        let first = &one[0];
        assert_eq!(
            (first.src, first.dst, first.probes_sent, first.probes_lost),
            (100, 1, 20, 1)
        );
        // Merged histograms: half the probes at 10 µs, half at 56 µs; the
        // p99 is the higher class, within the histogram's 2 digits.
        assert!((55_000..=57_000).contains(&first.rtt_p99_ns), "{first:?}");
    }
}
