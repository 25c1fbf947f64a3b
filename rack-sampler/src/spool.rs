//! The on-disk spool: every emitted batch is written here before it is sent,
//! and deleted only when the collector acknowledges it, so batches survive a
//! collector outage and a sampler restart.
//!
//! One file per batch, `<window_start_ns>-<part>.batch` with fixed-width
//! numbers so name order is window order; written to a temporary name,
//! synced and renamed, so a crash leaves either the whole batch or nothing.
//! The spool is bounded in bytes: making room drops the oldest batches, and
//! the count of batches dropped is written into the batch being spooled
//! (`spool_dropped_batches`), so the loss is reported upward with the very
//! next window that reaches the collector. Batches the collector rejects as
//! invalid are moved to `rejected/` for inspection instead of being retried
//! forever.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use wire_format::BatchHeader;
use zerocopy::{FromBytes as _, IntoBytes as _};

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
    /// Oldest batches dropped to make room.
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
    /// Drops not yet written into a spooled batch.
    unreported: u32,
    dropped_total: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, picking up batches left by an
    /// earlier run.
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
                let len = entry.metadata().map_err(io(&entry.path()))?.len();
                entries.insert(key, Entry { len, cached: None });
                bytes += len;
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            entries,
            bytes,
            cached_bytes: 0,
            cache_bytes: CACHE_BYTES,
            unreported: 0,
            dropped_total: 0,
        })
    }

    /// Spools `batch` under `key`, dropping the oldest batches if needed to
    /// stay within the size limit, and writes the number dropped into the
    /// batch's header.
    pub fn push(&mut self, key: SpoolKey, mut batch: Vec<u8>) -> Result<Pushed, SpoolError> {
        let len = batch.len() as u64;
        if len > self.max_bytes {
            self.unreported += 1;
            self.dropped_total += 1;
            return Ok(Pushed {
                dropped: 0,
                refused: true,
            });
        }
        let mut dropped = 0;
        while self.bytes + len > self.max_bytes {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            self.remove(oldest)?;
            dropped += 1;
        }
        self.dropped_total += u64::from(dropped);
        let report = self.unreported + dropped;
        if let Ok((header, _)) = BatchHeader::mut_from_prefix(&mut batch) {
            header.spool_dropped_batches = header.spool_dropped_batches.get().saturating_add(report).into();
        }
        let path = self.dir.join(key.file_name());
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(batch.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename is durable only once the directory is synced.
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(io(&path))?;
        self.unreported = 0;
        self.forget(key);
        let cached = (self.cached_bytes + len <= self.cache_bytes).then(|| Bytes::from(batch));
        if cached.is_some() {
            self.cached_bytes += len;
        }
        self.entries.insert(key, Entry { len, cached });
        self.bytes += len;
        Ok(Pushed {
            dropped,
            refused: false,
        })
    }

    /// The oldest batch: its key and bytes (shared with the spool when it
    /// holds them in memory, else read from disk).
    pub fn oldest(&self) -> Result<Option<(SpoolKey, Bytes)>, SpoolError> {
        let Some((&key, entry)) = self.entries.first_key_value() else {
            return Ok(None);
        };
        if let Some(bytes) = &entry.cached {
            return Ok(Some((key, bytes.clone())));
        }
        let path = self.dir.join(key.file_name());
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        Ok(Some((key, Bytes::from(bytes))))
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

    /// Deletes an acknowledged batch.
    pub fn remove(&mut self, key: SpoolKey) -> Result<(), SpoolError> {
        let path = self.dir.join(key.file_name());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        self.forget(key);
        Ok(())
    }

    /// Moves a batch the collector refused to `rejected/`, out of the queue.
    pub fn reject(&mut self, key: SpoolKey) -> Result<PathBuf, SpoolError> {
        let rejected = self.dir.join("rejected");
        std::fs::create_dir_all(&rejected).map_err(io(&rejected))?;
        let from = self.dir.join(key.file_name());
        let to = rejected.join(key.file_name());
        std::fs::rename(&from, &to).map_err(io(&from))?;
        self.forget(key);
        Ok(to)
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

    /// Batches dropped by the size limit since the spool was opened.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
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
        let (k, bytes) = spool.oldest().unwrap().unwrap();
        assert_eq!(k.window_start_ns, 1);
        assert_eq!(BatchView::parse(&bytes).unwrap().header.spool_dropped_batches.get(), 0);
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
