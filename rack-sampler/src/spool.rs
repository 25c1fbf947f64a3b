//! The on-disk spool: every emitted batch is written here before it is sent,
//! and deleted only when the collector acknowledges it, so batches survive a
//! collector outage and a sampler restart.
//!
//! One file per batch, `<window_start_ns>-<part>.batch` with fixed-width
//! numbers so name order is window order; written to a temporary name,
//! synced and renamed, so a crash leaves either the whole batch or nothing.
//! Batches the collector rejects as invalid are moved to `rejected/` for
//! inspection instead of being retried forever.
//!
//! **Drops.** The spool is bounded in bytes: making room drops the oldest
//! batches, and the loss is reported upward in the header of a later batch
//! (`spool_dropped_batches`). The count must reach the collector exactly
//! once whatever becomes of the batch carrying it, so a count is never lost
//! with its carrier: a dropped batch that carried `n` passes `n + 1` on, and
//! a rejected one passes its `n` on. What no spooled batch carries yet (a
//! batch too large for the spool, a drop confirmed between pushes) waits in
//! `unreported`, kept in a file of that name so a restart does not lose it,
//! and goes into the next batch spooled.
//!
//! A batch the uplink is sending (the last one [`Spool::oldest`] handed out)
//! may be dropped before its fate is known. It leaves the queue but its file
//! stays until the send ends: acknowledged ([`Spool::remove`]), it was
//! delivered with its count and nothing was lost; rejected, it is set aside
//! as usual; otherwise (the uplink asks for a batch again: the send failed or
//! the collector asked to retry later) it is deleted and counted as dropped.
//! So the spool may hold one batch beyond its bound while that send lasts;
//! a restart ends the send, and opening the spool drops what is over the
//! bound.
//!
//! A crash between deleting a dropped batch and writing the batch that
//! reports it loses that count; everything else is on disk when a call
//! returns.

use std::collections::BTreeMap;
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;
use wire_format::{BATCH_HEADER_LEN, BatchHeader};
use zerocopy::{FromBytes as _, IntoBytes as _};

/// File in the spool directory holding drops no spooled batch carries yet.
const UNREPORTED_FILE: &str = "unreported";

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Deletes `path`; one already gone is fine.
fn remove_file(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename,
/// so a crash leaves the old content or the new, never a mix.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}

/// The drop count in a batch's header (0 for bytes too short to be one).
fn carried(batch: &[u8]) -> u32 {
    BatchHeader::ref_from_prefix(batch).map_or(0, |(header, _)| header.spool_dropped_batches.get())
}

/// The drop count in the header of the batch file at `path`.
fn carried_on_disk(path: &Path) -> std::io::Result<u32> {
    let mut header = Vec::with_capacity(BATCH_HEADER_LEN);
    std::fs::File::open(path)?
        .take(BATCH_HEADER_LEN as u64)
        .read_to_end(&mut header)?;
    Ok(carried(&header))
}

/// One spooled batch, by its place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolKey {
    /// Window start, ns since the Unix epoch.
    pub window_start_ns: u64,
    /// Part number within the window.
    pub part: u16,
}

impl SpoolKey {
    fn file_name(&self) -> String {
        format!("{:020}-{:05}.batch", self.window_start_ns, self.part)
    }

    fn parse(name: &str) -> Option<SpoolKey> {
        let stem = name.strip_suffix(".batch")?;
        let (window, part) = stem.split_once('-')?;
        Some(SpoolKey {
            window_start_ns: window.parse().ok()?,
            part: part.parse().ok()?,
        })
    }
}

/// What spooling one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Oldest batches dropped to make room (one being sent among them is
    /// counted as dropped only if its send ends unacknowledged).
    pub dropped: u32,
    /// The batch itself did not fit even in an empty spool and was dropped
    /// (it is counted in the next batch spooled).
    pub refused: bool,
}

/// Most bytes of spooled batches also held in memory: the oldest batches
/// are the next the uplink sends, and a window's batches of a large rack
/// are a few MiB, so this holds several windows in the normal case and
/// bounds memory when the collector is away and the spool grows.
pub const CACHE_BYTES: u64 = 64 << 20;

/// One spooled batch.
#[derive(Debug)]
struct Entry {
    /// Its size on disk.
    len: u64,
    /// Its bytes, if held in memory.
    cached: Option<Bytes>,
    /// The drop count in its header: passed on if it never reaches the
    /// collector.
    carried: u32,
}

/// A batch dropped while the uplink was sending it, waiting for the send's
/// outcome (its file is kept until then).
#[derive(Debug, Clone, Copy)]
struct DroppedInFlight {
    key: SpoolKey,
    carried: u32,
}

/// A bounded on-disk queue of batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: BTreeMap<SpoolKey, Entry>,
    bytes: u64,
    /// Bytes of the entries held in memory.
    cached_bytes: u64,
    /// At most this many ([`CACHE_BYTES`]; tests lower it).
    cache_bytes: u64,
    /// The batch [`Spool::oldest`] last handed out, until it is removed or
    /// rejected: the uplink may be sending it.
    sending: Option<SpoolKey>,
    /// That batch, if it was dropped meanwhile.
    dropped_in_flight: Option<DroppedInFlight>,
    /// Drops not yet written into a spooled batch.
    unreported: u64,
    /// What the unreported file holds (0: no file).
    unreported_saved: u64,
    dropped_total: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, picking up batches and
    /// unreported drops left by an earlier run.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut entries = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                // A write interrupted by a crash: never acknowledged, and its
                // window is rebuilt from nothing, so it is simply removed.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if let Some(key) = SpoolKey::parse(name) {
                let path = entry.path();
                let len = entry.metadata().map_err(io(&path))?.len();
                let carried = carried_on_disk(&path).map_err(io(&path))?;
                entries.insert(
                    key,
                    Entry {
                        len,
                        cached: None,
                        carried,
                    },
                );
                bytes += len;
            }
        }
        let path = dir.join(UNREPORTED_FILE);
        let unreported = match std::fs::read_to_string(&path) {
            // Written whole by a rename, so anything unreadable is damage
            // from outside; the drops it held are lost either way.
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(message = "unreadable count of unreported spool drops; taken as 0", path = %path.display());
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&path)(e)),
        };
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            entries,
            bytes,
            cached_bytes: 0,
            cache_bytes: CACHE_BYTES,
            sending: None,
            dropped_in_flight: None,
            unreported,
            unreported_saved: unreported,
            dropped_total: 0,
        };
        // Over the bound if the last run stopped while a batch dropped in
        // flight awaited its outcome (that send is over, unacknowledged), or
        // if the bound was lowered.
        while spool.bytes > max_bytes {
            let Some((&oldest, _)) = spool.entries.first_key_value() else {
                break;
            };
            if let Err(error) = spool.drop_batch(oldest) {
                warn!(message = "cannot trim the spool to its size limit", %error);
                break;
            }
        }
        spool.save_unreported();
        Ok(spool)
    }

    /// Spools `batch` under `key`, dropping the oldest batches if needed to
    /// stay within the size limit, and writes every drop not yet reported
    /// into the batch's header.
    pub fn push(&mut self, key: SpoolKey, batch: Vec<u8>) -> Result<Pushed, SpoolError> {
        let pushed = self.push_batch(key, batch);
        self.save_unreported();
        pushed
    }

    fn push_batch(&mut self, key: SpoolKey, mut batch: Vec<u8>) -> Result<Pushed, SpoolError> {
        let len = batch.len() as u64;
        if len > self.max_bytes {
            self.lose(carried(&batch));
            return Ok(Pushed {
                dropped: 0,
                refused: true,
            });
        }
        if let Some(replaced) = self.entries.get(&key) {
            // Overwritten below: what it carried goes into its replacement.
            self.unreported += u64::from(replaced.carried);
            self.forget(key);
        }
        let mut dropped = 0;
        while self.bytes + len > self.max_bytes {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            self.drop_batch(oldest)?;
            dropped += 1;
        }
        let (before, added) = self.report_into(&mut batch);
        let path = self.dir.join(key.file_name());
        if let Err(error) = write_atomically(&self.dir, &path, batch.as_bytes()) {
            // The batch is lost like a dropped one, and reported as such; the
            // counts it was to carry stay unreported. A file left behind
            // would be sent after a restart although counted lost.
            let _ = std::fs::remove_file(path.with_extension("tmp"));
            let _ = std::fs::remove_file(&path);
            self.lose(before);
            return Err(io(&path)(error));
        }
        self.unreported -= u64::from(added);
        let cached = (self.cached_bytes + len <= self.cache_bytes).then(|| Bytes::from(batch));
        if cached.is_some() {
            self.cached_bytes += len;
        }
        self.entries.insert(
            key,
            Entry {
                len,
                cached,
                carried: before + added,
            },
        );
        self.bytes += len;
        Ok(Pushed {
            dropped,
            refused: false,
        })
    }

    /// Adds as much of `unreported` to the header count of `batch` as the
    /// field holds (bytes too short for a header carry nothing). Returns the
    /// count it had and how much was added.
    fn report_into(&self, batch: &mut [u8]) -> (u32, u32) {
        let Ok((header, _)) = BatchHeader::mut_from_prefix(batch) else {
            return (0, 0);
        };
        let before = header.spool_dropped_batches.get();
        let added = u32::try_from(self.unreported)
            .unwrap_or(u32::MAX)
            .min(u32::MAX - before);
        header.spool_dropped_batches = (before + added).into();
        (before, added)
    }

    /// Counts one batch lost that carried `carried` drops: both are to be
    /// reported by a later batch.
    fn lose(&mut self, carried: u32) {
        self.dropped_total += 1;
        self.unreported += u64::from(carried) + 1;
    }

    /// Drops the queued batch `key` to make room.
    fn drop_batch(&mut self, key: SpoolKey) -> Result<(), SpoolError> {
        let Some(carried) = self.entries.get(&key).map(|e| e.carried) else {
            return Ok(());
        };
        if self.sending == Some(key) {
            // Out of the queue, but whether it is lost depends on the send.
            self.forget(key);
            self.dropped_in_flight = Some(DroppedInFlight { key, carried });
            return Ok(());
        }
        remove_file(&self.dir.join(key.file_name()))?;
        self.forget(key);
        self.lose(carried);
        Ok(())
    }

    /// The oldest batch: its key and bytes (shared with the spool when it
    /// holds them in memory, else read from disk). Called by the uplink for
    /// each send, so it also tells the spool that the previous send ended.
    pub fn oldest(&mut self) -> Result<Option<(SpoolKey, Bytes)>, SpoolError> {
        let settled = self.settle_dropped_in_flight();
        self.save_unreported();
        settled?;
        let Some((&key, entry)) = self.entries.first_key_value() else {
            self.sending = None;
            return Ok(None);
        };
        let bytes = match &entry.cached {
            Some(bytes) => bytes.clone(),
            None => {
                let path = self.dir.join(key.file_name());
                Bytes::from(std::fs::read(&path).map_err(io(&path))?)
            }
        };
        self.sending = Some(key);
        Ok(Some((key, bytes)))
    }

    /// The uplink asks for a batch again only once done with the last one,
    /// unacknowledged: a batch dropped while it was being sent is now lost.
    fn settle_dropped_in_flight(&mut self) -> Result<(), SpoolError> {
        let Some(dropped) = self.dropped_in_flight else {
            return Ok(());
        };
        // Deleted before it is counted: left on disk, it would be sent after
        // a restart although counted lost.
        remove_file(&self.dir.join(dropped.key.file_name()))?;
        self.dropped_in_flight = None;
        self.lose(dropped.carried);
        Ok(())
    }

    /// Takes `key` out of the queue's accounting.
    fn forget(&mut self, key: SpoolKey) {
        if let Some(entry) = self.entries.remove(&key) {
            self.bytes -= entry.len;
            if entry.cached.is_some() {
                self.cached_bytes -= entry.len;
            }
        }
    }

    /// Takes `key` out of the uplink's hands: queued, or dropped while being
    /// sent. Returns what the batch carried.
    fn settle(&mut self, key: SpoolKey) -> u32 {
        if self.sending == Some(key) {
            self.sending = None;
        }
        if let Some(dropped) = self.dropped_in_flight.filter(|d| d.key == key) {
            self.dropped_in_flight = None;
            return dropped.carried;
        }
        let carried = self.entries.get(&key).map_or(0, |e| e.carried);
        self.forget(key);
        carried
    }

    /// Deletes an acknowledged batch: delivered, with the drops it carried,
    /// even if the size limit dropped it while it was being sent.
    pub fn remove(&mut self, key: SpoolKey) -> Result<(), SpoolError> {
        remove_file(&self.dir.join(key.file_name()))?;
        self.settle(key);
        Ok(())
    }

    /// Moves a batch the collector refused to `rejected/`, out of the queue.
    /// The drops it carried never reach the collector, so they are passed on
    /// to the next batch spooled.
    pub fn reject(&mut self, key: SpoolKey) -> Result<PathBuf, SpoolError> {
        let rejected = self.dir.join("rejected");
        std::fs::create_dir_all(&rejected).map_err(io(&rejected))?;
        let from = self.dir.join(key.file_name());
        let to = rejected.join(key.file_name());
        std::fs::rename(&from, &to).map_err(io(&from))?;
        let carried = self.settle(key);
        self.unreported += u64::from(carried);
        self.save_unreported();
        Ok(to)
    }

    /// Writes `unreported` to its file (deleting the file at 0) if it
    /// changed, so a restart keeps drops no batch carries yet. A failure is
    /// logged and retried at the next change of the queue; only a restart
    /// before then can lose (or, for a stale file, repeat) the count.
    fn save_unreported(&mut self) {
        if self.unreported == self.unreported_saved {
            return;
        }
        let path = self.dir.join(UNREPORTED_FILE);
        let saved = if self.unreported == 0 {
            remove_file(&path)
        } else {
            write_atomically(&self.dir, &path, format!("{}\n", self.unreported).as_bytes()).map_err(io(&path))
        };
        match saved {
            Ok(()) => self.unreported_saved = self.unreported,
            Err(error) => warn!(message = "cannot record the spool's unreported drops", %error),
        }
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no batch is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Batches dropped since the spool was opened: by the size limit, too
    /// large for it, or lost to a failed write.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Drops (and counts of dropped or rejected batches) that no spooled
    /// batch carries yet: the next batch spooled reports them.
    pub fn unreported(&self) -> u64 {
        self.unreported
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_format::{BatchBuilder, BatchInfo, BatchView};

    fn batch(window: u64, paths: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchInfo::window(1, 1, window, 10));
        for i in 0..paths {
            b.push_path(wire_format::PathSummary::new(1, i as u32, 0, None), &[])
                .unwrap();
        }
        b.encode().unwrap()
    }

    fn key(window: u64) -> SpoolKey {
        SpoolKey {
            window_start_ns: window,
            part: 0,
        }
    }

    #[test]
    fn batches_come_back_in_window_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for w in [30, 10, 20] {
            spool.push(key(w), batch(w, 1)).unwrap();
        }
        drop(spool);
        std::fs::write(dir.path().join("00000000000000000040-00000.tmp"), b"torn").unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.len(), 3);
        let mut order = Vec::new();
        while let Some((k, bytes)) = spool.oldest().unwrap() {
            assert_eq!(
                BatchView::parse(&bytes).unwrap().header.window_start_ns.get(),
                k.window_start_ns
            );
            order.push(k.window_start_ns);
            spool.remove(k).unwrap();
        }
        assert_eq!(order, [10, 20, 30]);
        assert_eq!(spool.bytes(), 0);
        assert!(!dir.path().join("00000000000000000040-00000.tmp").exists());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_reports_it_in_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch(0, 2).len() as u64;
        let mut spool = Spool::open(dir.path(), one * 3).unwrap();
        for w in 0..3 {
            assert_eq!(spool.push(key(w), batch(w, 2)).unwrap().dropped, 0);
        }
        let pushed = spool.push(key(3), batch(3, 2)).unwrap();
        assert_eq!(pushed.dropped, 1);
        assert_eq!(spool.dropped_total(), 1);
        // Looked at on disk: `oldest` would mean the uplink is sending it.
        assert_eq!(spool.entries.keys().next(), Some(&key(1)));
        let oldest = std::fs::read(dir.path().join(key(1).file_name())).unwrap();
        assert_eq!(BatchView::parse(&oldest).unwrap().header.spool_dropped_batches.get(), 0);
        let newest = std::fs::read(dir.path().join(key(3).file_name())).unwrap();
        assert_eq!(BatchView::parse(&newest).unwrap().header.spool_dropped_batches.get(), 1);

        // A batch larger than the whole spool is refused and reported next.
        let huge = batch(4, 100);
        assert!(spool.push(key(4), huge).unwrap().refused);
        spool.push(key(5), batch(5, 2)).unwrap();
        let latest = std::fs::read(dir.path().join(key(5).file_name())).unwrap();
        assert_eq!(BatchView::parse(&latest).unwrap().header.spool_dropped_batches.get(), 2);
    }

    /// A batch spooled in this run is handed out from memory, the very
    /// buffer written (no copy), and equals the file; past the cache bound,
    /// batches come from disk; removing a batch releases its memory.
    #[test]
    fn spooled_batches_are_shared_from_memory_up_to_the_cache_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.cache_bytes = 4096;
        spool.push(key(1), batch(1, 3)).unwrap();
        let (_, first) = spool.oldest().unwrap().unwrap();
        let (_, again) = spool.oldest().unwrap().unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same buffer, not a copy");
        assert_eq!(first, std::fs::read(dir.path().join(key(1).file_name())).unwrap());
        assert_eq!(spool.cached_bytes, first.len() as u64);

        // Fill the cache: the next batch is spooled but read from disk.
        spool.push(key(2), vec![0u8; 4096]).unwrap();
        assert_eq!(spool.cached_bytes, first.len() as u64, "over the bound: not held");
        spool.remove(key(1)).unwrap();
        assert_eq!(spool.cached_bytes, 0);
        let (k, from_disk) = spool.oldest().unwrap().unwrap();
        assert_eq!((k, from_disk.len()), (key(2), 4096));
    }

    #[test]
    fn rejected_batches_leave_the_queue_but_stay_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(key(1), batch(1, 1)).unwrap();
        let moved = spool.reject(key(1)).unwrap();
        assert!(moved.exists());
        assert!(spool.is_empty());
        assert!(Spool::open(dir.path(), 1 << 20).unwrap().is_empty());
    }
}
