//! Reading a time range window by window, in parallel where it pays.
//!
//! Decoding rows is most of a long report's time, so [`for_each_window`]
//! reads windows with one reader per core (at most four), each from its own
//! [`Reader::another`], taking windows in turn and reading at most
//! [`READ_AHEAD`] windows ahead of the consumer: readers of SQLite block
//! neither each other nor the collector, and memory holds a few windows, not
//! the range. Windows still reach the consumer one at a time, in time order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::rows::PathWindow;
use crate::{Reader, StoreError};

/// Fewest expected rows worth a second reader.
pub const PARALLEL_FROM_ROWS: u64 = 200_000;

/// Windows each reader may read ahead of the consumer.
pub const READ_AHEAD: usize = 2;

/// Most readers at once.
const MAX_READERS: usize = 4;

/// Calls `each` with every window's merged path windows, window by window in
/// time order, for windows starting in `[from_ns, to_ns)`; calls
/// `progress(rows_read, rows_expected)` now and then, from any thread.
pub fn for_each_window(
    reader: &dyn Reader,
    from_ns: u64,
    to_ns: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    each: &mut dyn FnMut(&[PathWindow]),
) -> Result<(), StoreError> {
    for_each_window_with(reader, from_ns, to_ns, progress, each, PARALLEL_FROM_ROWS)
}

/// Every merged path window starting in `[from_ns, to_ns)`, ordered by
/// (window, source, destination).
pub fn load_paths(reader: &dyn Reader, from_ns: u64, to_ns: u64) -> Result<Vec<PathWindow>, StoreError> {
    let mut paths = Vec::new();
    for_each_window(reader, from_ns, to_ns, &|_, _| {}, &mut |window| {
        paths.extend_from_slice(window)
    })?;
    Ok(paths)
}

/// [`for_each_window`] reading in parallel from `parallel_from_rows`
/// expected rows on (tests force either way).
pub fn for_each_window_with(
    reader: &dyn Reader,
    from_ns: u64,
    to_ns: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    each: &mut dyn FnMut(&[PathWindow]),
    parallel_from_rows: u64,
) -> Result<(), StoreError> {
    let windows = reader.windows(from_ns, to_ns)?;
    let expected: u64 = windows.iter().map(|w| w.rows).sum();
    let read = AtomicU64::new(0);
    let count = |n: u64| {
        let so_far = read.fetch_add(n, Ordering::Relaxed) + n;
        progress(so_far, expected);
    };
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_READERS);
    let lanes = if cores > 1 && expected >= parallel_from_rows {
        (0..cores)
            .map(|_| reader.another())
            .collect::<Result<Option<Vec<_>>, _>>()?
    } else {
        None
    };
    let Some(lanes) = lanes else {
        for w in &windows {
            each(&reader.path_windows(w, &count)?);
        }
        return Ok(());
    };
    let readers = lanes.len();
    std::thread::scope(|scope| {
        let receivers: Vec<_> = lanes
            .into_iter()
            .enumerate()
            .map(|(lane, lane_reader)| {
                let (tx, rx) = mpsc::sync_channel::<Result<Vec<PathWindow>, StoreError>>(READ_AHEAD);
                let (windows, count) = (&windows, &count);
                scope.spawn(move || {
                    for w in windows.iter().skip(lane).step_by(readers) {
                        let result = lane_reader.path_windows(w, count);
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
            let paths = receivers[i % readers].recv().unwrap_or(Err(StoreError::ReaderLost))?;
            each(&paths);
        }
        Ok(())
    })
}
