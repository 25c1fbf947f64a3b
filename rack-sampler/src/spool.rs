//! The on-disk spool: every emitted batch is written here before it is sent,
//! and deleted only when the collector acknowledges it, so batches survive a
//! collector outage and a sampler restart.
//!
//! One file per batch, `<window_start_ns>-<part>.batch` with fixed-width
//! numbers so name order is window order; written to a temporary name,
//! synced and renamed, and the directory synced, so a crash leaves either
//! the whole batch or nothing. Batches the collector rejects as invalid are
//! moved to `rejected/` for inspection instead of being retried forever.
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
//! **Batches whose fate is unknown.** A batch the uplink sent (the one
//! [`Spool::oldest`] handed out) may be stored by a collector whose
//! acknowledgement never came. The uplink reports how each send ended:
//! acknowledged ([`Spool::remove`]), rejected ([`Spool::reject`]), or not
//! ([`Spool::unacknowledged`]): without an answer the collector may hold
//! it; answered retry-later, that collector does not. Until its fate is
//! known the batch is *outstanding* and handed out again first. If the size
//! limit drops it meanwhile, it is *set aside*, neither deleted nor counted:
//! counting it would report as lost a batch the collector may have, deleting
//! it uncounted could lose one without a trace. It is counted as dropped
//! (and deleted) only once the collector answers retry-later, no earlier
//! send of it went unanswered, and the spool still needs its room; otherwise
//! it is resent until acknowledged (as a duplicate, if stored before) or
//! rejected. So the spool may hold one batch beyond its bound. A restart
//! cannot know how the last send ended, so opening the spool takes the
//! oldest batch as outstanding and possibly stored.
//!
//! **Unreadable batches.** A batch file that vanished, that no longer holds
//! a batch of the size spooled, or that cannot be read [`READ_ATTEMPTS`]
//! times in a row is given up rather than retried forever at the head of the
//! queue: counted as dropped (its own count carried on like any dropped
//! batch's), logged, and moved to `rejected/` for inspection if it is there.
//!
//! **Renumbering.** A batch pushed under a key already spooled (a window's
//! part emitted again, e.g. after the file recording a shutdown's last part
//! was lost) is spooled under the window's next free part number, with its
//! id rewritten to match, so neither batch overwrites the other and both
//! reach the collector. A batch of that window already delivered and deleted
//! cannot be seen here: the new one, under the same id, is acknowledged as a
//! duplicate and lost.
//!
//! **Crashes.** A change that touches several files and the unreported count
//! (dropping batches to make room and writing the batch that absorbs the
//! count; passing a rejected batch's count on; deleting a batch counted as
//! dropped; giving a batch up) is first written as an intent into the
//! `unreported` file, atomically: the count once every step is done, and the
//! steps (files to delete, files to move to `rejected/`, the batch being
//! written and how much of the count it absorbs). Opening the spool
//! completes the steps a crash left undone and takes the absorbed count back
//! if that batch was never written; a dropped batch whose file cannot be
//! deleted stays listed until it is, so it is never sent. Deletions are
//! followed by a directory sync. So a crash at any point neither loses nor
//! repeats a count; it loses only what was never spooled (windows still open
//! in memory), and a batch acknowledged just before it may be sent again (a
//! duplicate, which the collector acknowledges as such). What remains: if
//! writing the intent itself fails (logged), the change goes ahead without
//! it, and a crash before the next successful write of the file can lose or
//! repeat that change's count; a step that still fails when the spool is
//! opened (a move to `rejected/`) is logged and left as it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;
use wire_format::{BATCH_HEADER_LEN, BATCH_MAGIC, BatchHeader};
use zerocopy::{FromBytes as _, IntoBytes as _};

/// File in the spool directory holding drops no spooled batch carries yet,
/// and the intent of a change in progress.
const UNREPORTED_FILE: &str = "unreported";

/// Directory in the spool directory for rejected and unreadable batches.
const REJECTED_DIR: &str = "rejected";

/// Times in a row the batch at the head of the queue may fail to read (for
/// a reason other than being gone or damaged) before it is given up.
pub const READ_ATTEMPTS: u32 = 3;

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
    /// A batch was pushed under a key whose window has every part number
    /// taken in the spool; it is counted as dropped.
    #[error("spool: every part number of the window starting at {window_start_ns} ns is taken")]
    PartsExhausted {
        /// The window.
        window_start_ns: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Deletes `path`; one already gone is fine. The caller syncs the directory.
fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes the directory's entries (renames, deletions) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` through a synced temporary file and a rename,
/// so a crash leaves the old content or the new, never a mix.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is synced.
    sync_dir(dir)
}

/// Moves batch `key` to `rejected/`, durably.
fn move_to_rejected(dir: &Path, key: SpoolKey) -> std::io::Result<PathBuf> {
    let rejected = dir.join(REJECTED_DIR);
    std::fs::create_dir_all(&rejected)?;
    let to = rejected.join(key.file_name());
    std::fs::rename(dir.join(key.file_name()), &to)?;
    sync_dir(&rejected)?;
    sync_dir(dir)?;
    Ok(to)
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

/// Sets the part number in the id of `batch` (bytes 12–13 of the id, as
/// [`wire_format::BatchId::for_window`] builds it).
fn renumber(batch: &mut [u8], part: u16) {
    if let Ok((header, _)) = BatchHeader::mut_from_prefix(batch) {
        header.batch_id.0[12..14].copy_from_slice(&part.to_be_bytes());
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
    /// Oldest batches dropped to make room (an outstanding one among them
    /// is only set aside, and counted as dropped only if it turns out to be
    /// lost).
    pub dropped: u32,
    /// The batch itself did not fit even in an empty spool and was dropped
    /// (it is counted in the next batch spooled).
    pub refused: bool,
    /// Where the batch was spooled: the key asked for, or the window's next
    /// free part if that one was taken (its id renumbered to match).
    pub key: SpoolKey,
}

/// How a send of the batch [`Spool::oldest`] handed out ended without an
/// acknowledgement or a rejection: the batch stays in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unacknowledged {
    /// No answer (the connection failed, or the acknowledgement did not come
    /// in time): the collector may have stored the batch.
    NoAnswer,
    /// The collector answered retry-later: it did not store the batch.
    RetryLater,
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

/// The batch [`Spool::oldest`] handed out, until its fate is known.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    key: SpoolKey,
    /// Handed out and no outcome reported yet.
    in_flight: bool,
    /// A send of it ended without an answer (or a restart ended one): a
    /// collector may hold it, so only an acknowledgement or a rejection
    /// settles it.
    maybe_stored: bool,
    /// Dropped from the queue to make room meanwhile: still on disk,
    /// outside the bound, with its size and count.
    set_aside: Option<(u64, u32)>,
}

/// Steps of one change to the spool, written to the ledger (the unreported
/// file) before they are taken, so that a crash part-way is completed at
/// the next open.
#[derive(Debug, Default)]
struct Intent {
    /// Batch files to delete.
    delete: Vec<SpoolKey>,
    /// Batch files to move to `rejected/`.
    reject: Vec<SpoolKey>,
    /// The batch being written, and how much of the unreported count it
    /// absorbs (taken back if it never was written).
    create: Option<(SpoolKey, u32)>,
}

impl Intent {
    fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.reject.is_empty() && self.create.is_none()
    }
}

/// Reads the ledger left in `dir`, completes the steps of an interrupted
/// change, and returns the unreported count and the dropped batches whose
/// file still cannot be deleted.
fn recover(dir: &Path) -> Result<(u64, Vec<SpoolKey>), SpoolError> {
    let path = dir.join(UNREPORTED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut lines = text.lines();
    // Written whole by a rename, so anything unreadable is damage from
    // outside; the drops it held are lost either way.
    let mut count = lines.next().unwrap_or("").trim().parse().unwrap_or_else(|_| {
        warn!(message = "unreadable count of unreported spool drops; taken as 0", path = %path.display());
        0
    });
    let mut undeleted = Vec::new();
    for line in lines {
        let mut words = line.split_whitespace();
        let (Some(step), Some(key)) = (words.next(), words.next().and_then(SpoolKey::parse)) else {
            warn!(message = "unreadable step in the spool's ledger; skipped", path = %path.display(), line);
            continue;
        };
        let file = dir.join(key.file_name());
        match step {
            "delete" => {
                if let Err(error) = remove_file(&file) {
                    warn!(message = "cannot delete a dropped spool batch", path = %file.display(), %error);
                    undeleted.push(key);
                }
            }
            "reject" if file.exists() => {
                if let Err(error) = move_to_rejected(dir, key) {
                    warn!(message = "cannot move a spool batch to rejected/", path = %file.display(), %error);
                }
            }
            "reject" => {}
            // Never written: the count it was to absorb is still unreported.
            "create" if !file.exists() => count += words.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0),
            "create" => {}
            _ => warn!(message = "unknown step in the spool's ledger; skipped", path = %path.display(), line),
        }
    }
    sync_dir(dir).map_err(io(dir))?;
    Ok((count, undeleted))
}

/// A bounded on-disk queue of batches.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// The queue, within the bound.
    entries: BTreeMap<SpoolKey, Entry>,
    /// Bytes of `entries`.
    bytes: u64,
    /// Bytes of the entries held in memory.
    cached_bytes: u64,
    /// At most this many ([`CACHE_BYTES`]; tests lower it).
    cache_bytes: u64,
    /// The batch handed out last, until its fate is known.
    outstanding: Option<Outstanding>,
    /// A batch that failed to read, and how many times in a row.
    read_failures: Option<(SpoolKey, u32)>,
    /// Dropped batches whose file could not be deleted: listed in the
    /// ledger so that a restart deletes them rather than sends them.
    undeleted: Vec<SpoolKey>,
    /// Drops not yet written into a spooled batch.
    unreported: u64,
    /// What the ledger holds (0: no file).
    unreported_saved: u64,
    /// The ledger holds an intent, or its last write failed: it is
    /// rewritten at the next save even if the count did not change.
    ledger_dirty: bool,
    dropped_total: u64,
    /// Tests: durable steps left before a simulated crash (a panic).
    #[cfg(test)]
    crash_after: Option<u32>,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, picking up batches and
    /// unreported drops left by an earlier run, and completing a change a
    /// crash interrupted.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (unreported, undeleted) = recover(dir)?;
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
            let Some(key) = SpoolKey::parse(name) else { continue };
            if undeleted.contains(&key) {
                continue;
            }
            let path = entry.path();
            // A file that cannot be read is queued all the same, and given
            // up when its turn to be sent comes; it must not stop the start.
            let len = entry.metadata().map_or(0, |m| m.len());
            let carried = carried_on_disk(&path).unwrap_or_else(|error| {
                warn!(message = "cannot read a spooled batch's header", path = %path.display(), %error);
                0
            });
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
        // The last run may have ended while the oldest batch's send was
        // outstanding, and a collector may have stored it.
        let outstanding = entries.keys().next().map(|&key| Outstanding {
            key,
            in_flight: false,
            maybe_stored: true,
            set_aside: None,
        });
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            entries,
            bytes,
            cached_bytes: 0,
            cache_bytes: CACHE_BYTES,
            outstanding,
            read_failures: None,
            undeleted,
            unreported,
            unreported_saved: unreported,
            // Rewritten clean, without the steps just completed.
            ledger_dirty: true,
            dropped_total: 0,
            #[cfg(test)]
            crash_after: None,
        };
        // Over the bound if the last run held a batch set aside, or if the
        // bound was lowered.
        let (_, intent) = spool.make_room(0);
        spool.commit(&intent);
        Ok(spool)
    }

    /// Spools `batch` under `key` (or the window's next free part, if that
    /// key is taken), dropping the oldest batches if needed to stay within
    /// the size limit, and writes every drop not yet reported into the
    /// batch's header.
    pub fn push(&mut self, key: SpoolKey, batch: Vec<u8>) -> Result<Pushed, SpoolError> {
        let pushed = self.push_batch(key, batch);
        self.save_ledger();
        pushed
    }

    fn push_batch(&mut self, asked: SpoolKey, mut batch: Vec<u8>) -> Result<Pushed, SpoolError> {
        let len = batch.len() as u64;
        if len > self.max_bytes {
            self.lose(carried(&batch));
            return Ok(Pushed {
                dropped: 0,
                refused: true,
                key: asked,
            });
        }
        let Some(key) = self.free_key(asked) else {
            self.lose(carried(&batch));
            return Err(SpoolError::PartsExhausted {
                window_start_ns: asked.window_start_ns,
            });
        };
        if key != asked {
            warn!(
                message = "a batch of this window part is already spooled; spooled under the next free part",
                window = asked.window_start_ns,
                part = asked.part,
                spooled_as = key.part
            );
            renumber(&mut batch, key.part);
        }
        let (dropped, mut intent) = self.make_room(len);
        let (before, added) = self.report_into(&mut batch);
        if !intent.delete.is_empty() || added > 0 {
            intent.create = Some((key, added));
            self.write_ledger(self.unreported - u64::from(added), &intent);
        }
        self.take_steps(&intent);
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
        self.stepped();
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
            key,
        })
    }

    /// Whether a file of the spool has `key`: queued, set aside or waiting
    /// to be deleted.
    fn taken(&self, key: SpoolKey) -> bool {
        self.entries.contains_key(&key)
            || self.outstanding.is_some_and(|o| o.key == key)
            || self.undeleted.contains(&key)
    }

    /// `key`, or the first part of its window after it that is free.
    fn free_key(&self, key: SpoolKey) -> Option<SpoolKey> {
        (key.part..=u16::MAX)
            .map(|part| SpoolKey { part, ..key })
            .find(|&k| !self.taken(k))
    }

    /// Drops the oldest batches until `len` more bytes fit in the bound:
    /// counted as lost, their files to be deleted by the returned intent;
    /// the outstanding batch is set aside instead. Returns how many left
    /// the queue.
    fn make_room(&mut self, len: u64) -> (u32, Intent) {
        let mut intent = Intent::default();
        let mut dropped = 0;
        while self.bytes + len > self.max_bytes {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            let Some(entry) = self.forget(oldest) else { break };
            dropped += 1;
            if let Some(outstanding) = self.outstanding.as_mut().filter(|o| o.key == oldest) {
                // Out of the queue, but whether it is lost depends on the
                // collector: kept on disk, over the bound, until then.
                outstanding.set_aside = Some((entry.len, entry.carried));
                continue;
            }
            self.lose(entry.carried);
            intent.delete.push(oldest);
        }
        (dropped, intent)
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

    /// A durable step was taken: where tests simulate a crash.
    fn stepped(&mut self) {
        #[cfg(test)]
        if let Some(left) = self.crash_after.as_mut() {
            assert!(*left > 0, "simulated crash");
            *left -= 1;
        }
    }

    /// Counts one batch lost that carried `carried` drops: both are to be
    /// reported by a later batch.
    fn lose(&mut self, carried: u32) {
        self.dropped_total += 1;
        self.unreported += u64::from(carried) + 1;
    }

    /// The oldest batch: its key and bytes (shared with the spool when it
    /// holds them in memory, else read from disk). An outstanding batch
    /// comes first: its fate must be learnt. The uplink calls this for each
    /// send, and reports how the send ended ([`Spool::remove`],
    /// [`Spool::reject`], [`Spool::unacknowledged`]); a send it did not
    /// report is taken as unanswered.
    ///
    /// A batch that vanished or is unreadable is given up (see the module
    /// documentation) and the next one handed out; an error is returned
    /// only for a read that may succeed when tried again.
    pub fn oldest(&mut self) -> Result<Option<(SpoolKey, Bytes)>, SpoolError> {
        loop {
            let key = match self.outstanding.as_mut() {
                Some(outstanding) => {
                    if outstanding.in_flight {
                        outstanding.in_flight = false;
                        outstanding.maybe_stored = true;
                    }
                    outstanding.key
                }
                None => match self.entries.first_key_value() {
                    Some((&key, _)) => key,
                    None => return Ok(None),
                },
            };
            match self.read(key) {
                Ok(bytes) => {
                    self.read_failures = None;
                    let outstanding = self.outstanding.get_or_insert(Outstanding {
                        key,
                        in_flight: false,
                        maybe_stored: false,
                        set_aside: None,
                    });
                    outstanding.in_flight = true;
                    return Ok(Some((key, bytes)));
                }
                Err(error) => self.unreadable(key, error)?,
            }
        }
    }

    /// The bytes of batch `key`, checked against what was spooled.
    fn read(&self, key: SpoolKey) -> std::io::Result<Bytes> {
        let set_aside = self.outstanding.filter(|o| o.key == key).and_then(|o| o.set_aside);
        let len = match (set_aside, self.entries.get(&key)) {
            (Some((len, _)), _) => len,
            (
                None,
                Some(Entry {
                    cached: Some(bytes), ..
                }),
            ) => return Ok(bytes.clone()),
            (None, Some(entry)) => entry.len,
            (None, None) => return Err(std::io::ErrorKind::NotFound.into()),
        };
        let bytes = std::fs::read(self.dir.join(key.file_name()))?;
        let is_batch = BatchHeader::ref_from_prefix(&bytes).is_ok_and(|(header, _)| header.magic == BATCH_MAGIC);
        if bytes.len() as u64 != len || !is_batch {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not the batch spooled ({} bytes, {len} spooled)", bytes.len()),
            ));
        }
        Ok(Bytes::from(bytes))
    }

    /// Handles a failure to read batch `key`: gives it up if it is gone,
    /// damaged or failed too often (`Ok`), else returns the error.
    fn unreadable(&mut self, key: SpoolKey, error: std::io::Error) -> Result<(), SpoolError> {
        let path = self.dir.join(key.file_name());
        let gone = error.kind() == std::io::ErrorKind::NotFound;
        if !gone && error.kind() != std::io::ErrorKind::InvalidData {
            let failures = match self.read_failures {
                Some((k, n)) if k == key => n + 1,
                _ => 1,
            };
            self.read_failures = Some((key, failures));
            if failures < READ_ATTEMPTS {
                return Err(io(&path)(error));
            }
        }
        self.read_failures = None;
        warn!(message = "spooled batch unreadable; counted as dropped", path = %path.display(), %error);
        let carried = self.take_out(key);
        self.lose(carried);
        let mut intent = Intent::default();
        if !gone {
            // Kept for inspection, out of the queue.
            intent.reject.push(key);
        }
        self.commit(&intent);
        Ok(())
    }

    /// Takes `key` out of the queue's accounting.
    fn forget(&mut self, key: SpoolKey) -> Option<Entry> {
        let entry = self.entries.remove(&key)?;
        self.bytes -= entry.len;
        if entry.cached.is_some() {
            self.cached_bytes -= entry.len;
        }
        Some(entry)
    }

    /// The count batch `key` carries.
    fn carried_by(&self, key: SpoolKey) -> u32 {
        match self.outstanding.filter(|o| o.key == key).and_then(|o| o.set_aside) {
            Some((_, carried)) => carried,
            None => self.entries.get(&key).map_or(0, |e| e.carried),
        }
    }

    /// Takes `key` out of the spool's hands: queued, or set aside. Returns
    /// what the batch carried.
    fn take_out(&mut self, key: SpoolKey) -> u32 {
        let carried = self.carried_by(key);
        if self.outstanding.is_some_and(|o| o.key == key) {
            self.outstanding = None;
        }
        self.forget(key);
        carried
    }

    /// Deletes an acknowledged batch: delivered, with the drops it carried,
    /// even if the size limit set it aside while it was outstanding.
    pub fn remove(&mut self, key: SpoolKey) -> Result<(), SpoolError> {
        let path = self.dir.join(key.file_name());
        remove_file(&path).map_err(io(&path))?;
        if let Err(error) = sync_dir(&self.dir) {
            // Only a power loss brings it back, to be sent as a duplicate.
            warn!(message = "cannot sync the spool directory", %error);
        }
        self.stepped();
        self.take_out(key);
        Ok(())
    }

    /// Moves a batch the collector refused to `rejected/`, out of the queue.
    /// The drops it carried never reach the collector, so they are passed on
    /// to the next batch spooled.
    pub fn reject(&mut self, key: SpoolKey) -> Result<PathBuf, SpoolError> {
        let carried = self.carried_by(key);
        if carried > 0 {
            let intent = Intent {
                reject: vec![key],
                ..Intent::default()
            };
            self.write_ledger(self.unreported + u64::from(carried), &intent);
        }
        let moved = move_to_rejected(&self.dir, key);
        let to = match moved {
            Ok(to) => to,
            Err(error) => {
                // Still queued: the ledger goes back to the count as it is.
                self.save_ledger();
                return Err(io(&self.dir.join(key.file_name()))(error));
            }
        };
        self.stepped();
        self.take_out(key);
        self.unreported += u64::from(carried);
        self.save_ledger();
        Ok(to)
    }

    /// Records how the send of `key` ended when the collector neither
    /// acknowledged nor rejected it. Without an answer, a collector may hold
    /// the batch: it stays outstanding, and is handed out again first. On
    /// retry-later, if no send of it went unanswered, no collector holds it:
    /// queued, it stays in the queue; set aside, it goes back into the
    /// queue if there is room now, else it is deleted and counted as
    /// dropped.
    pub fn unacknowledged(&mut self, key: SpoolKey, how: Unacknowledged) {
        let Some(outstanding) = self.outstanding.as_mut().filter(|o| o.key == key) else {
            return;
        };
        outstanding.in_flight = false;
        if how == Unacknowledged::NoAnswer {
            outstanding.maybe_stored = true;
        }
        if outstanding.maybe_stored {
            return;
        }
        let set_aside = outstanding.set_aside;
        self.outstanding = None;
        let Some((len, carried)) = set_aside else {
            return;
        };
        if self.bytes + len <= self.max_bytes {
            self.entries.insert(
                key,
                Entry {
                    len,
                    cached: None,
                    carried,
                },
            );
            self.bytes += len;
            return;
        }
        self.lose(carried);
        self.commit(&Intent {
            delete: vec![key],
            ..Intent::default()
        });
    }

    /// Takes the steps of `intent`, recording them first with the count
    /// they lead to, then records the count alone.
    fn commit(&mut self, intent: &Intent) {
        if !intent.is_empty() {
            self.write_ledger(self.unreported, intent);
        }
        self.take_steps(intent);
        self.save_ledger();
    }

    /// Deletes and moves the files `intent` lists (its batch to create is
    /// the caller's). A file that cannot be deleted is remembered, and
    /// listed in the ledger until it is.
    fn take_steps(&mut self, intent: &Intent) {
        for &key in &intent.reject {
            if let Err(error) = move_to_rejected(&self.dir, key) {
                warn!(message = "cannot move a spool batch to rejected/; deleting it", batch = key.file_name(), %error);
                self.delete(key);
            }
            self.stepped();
        }
        for &key in &intent.delete {
            self.delete(key);
        }
        if !intent.delete.is_empty()
            && let Err(error) = sync_dir(&self.dir)
        {
            warn!(message = "cannot sync the spool directory", %error);
        }
    }

    /// Deletes the file of dropped batch `key`, or remembers it.
    fn delete(&mut self, key: SpoolKey) {
        let path = self.dir.join(key.file_name());
        if let Err(error) = remove_file(&path) {
            warn!(message = "cannot delete a dropped spool batch; retried later", path = %path.display(), %error);
            if !self.undeleted.contains(&key) {
                self.undeleted.push(key);
            }
            self.ledger_dirty = true;
        }
        self.stepped();
    }

    /// Writes the ledger: `count` once `intent` is done, and its steps.
    fn write_ledger(&mut self, count: u64, intent: &Intent) {
        let mut text = format!("{count}\n");
        for key in intent.delete.iter().chain(&self.undeleted) {
            let _ = writeln!(text, "delete {}", key.file_name());
        }
        for key in &intent.reject {
            let _ = writeln!(text, "reject {}", key.file_name());
        }
        if let Some((key, added)) = intent.create {
            let _ = writeln!(text, "create {} {added}", key.file_name());
        }
        let path = self.dir.join(UNREPORTED_FILE);
        // Rewritten clean once the change is done, whatever happens here.
        self.ledger_dirty = true;
        if let Err(error) = write_atomically(&self.dir, &path, text.as_bytes()) {
            // The change goes ahead: only a crash before the next save
            // can then lose or repeat its count.
            warn!(message = "cannot record a change of the spool before making it", path = %path.display(), %error);
        }
        self.stepped();
    }

    /// Writes `unreported` to the ledger (deleting it when there is nothing
    /// to keep) if it changed, so a restart keeps drops no batch carries
    /// yet. Deletions that failed are retried first. A failure is logged and
    /// retried at the next change of the queue; only a restart before then
    /// can lose (or, for a stale file, repeat) the count.
    fn save_ledger(&mut self) {
        let undeleted = std::mem::take(&mut self.undeleted);
        for key in undeleted {
            self.delete(key);
        }
        if self.unreported == self.unreported_saved && !self.ledger_dirty {
            return;
        }
        let path = self.dir.join(UNREPORTED_FILE);
        let saved = if self.unreported == 0 && self.undeleted.is_empty() {
            remove_file(&path).and_then(|()| sync_dir(&self.dir))
        } else {
            let mut text = format!("{}\n", self.unreported);
            for key in &self.undeleted {
                let _ = writeln!(text, "delete {}", key.file_name());
            }
            write_atomically(&self.dir, &path, text.as_bytes())
        };
        match saved {
            Ok(()) => {
                self.unreported_saved = self.unreported;
                self.ledger_dirty = !self.undeleted.is_empty();
                self.stepped();
            }
            Err(error) => {
                self.ledger_dirty = true;
                warn!(message = "cannot record the spool's unreported drops", path = %path.display(), %error);
            }
        }
    }

    /// Batches waiting, a batch set aside included.
    pub fn len(&self) -> usize {
        self.entries.len() + usize::from(self.set_aside().is_some())
    }

    /// Whether no batch is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting: within the size limit, plus the size of a batch set
    /// aside while its fate is unknown.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.set_aside().map_or(0, |(len, _)| len)
    }

    /// The most bytes the spool holds (`uplink.spool_max_bytes`): alerts
    /// compare [`Spool::bytes`] with it.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn set_aside(&self) -> Option<(u64, u32)> {
        self.outstanding.and_then(|o| o.set_aside)
    }

    /// Batches dropped since the spool was opened: by the size limit, too
    /// large for it, lost to a failed write, or unreadable.
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
        let big = batch(2, 100);
        let big_len = big.len();
        assert!(first.len() + big_len > 4096);
        spool.push(key(2), big).unwrap();
        assert_eq!(spool.cached_bytes, first.len() as u64, "over the bound: not held");
        spool.remove(key(1)).unwrap();
        assert_eq!(spool.cached_bytes, 0);
        let (k, from_disk) = spool.oldest().unwrap().unwrap();
        assert_eq!((k, from_disk.len()), (key(2), big_len));
    }

    /// Drop counts carried by the batch files in `dir`, and how many.
    fn files(dir: &Path) -> (u64, u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return (0, 0);
        };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "batch"))
            .fold((0, 0), |(n, counts), p| {
                (n + 1, counts + u64::from(carried(&std::fs::read(p).unwrap())))
            })
    }

    /// What the scenario did before it crashed.
    #[derive(Debug, Default)]
    struct Done {
        /// Pushes that returned.
        pushed: u64,
        /// The push under way.
        pushing: Option<SpoolKey>,
        /// Batches the collector stored, and the counts they carried.
        delivered: u64,
        reported: u64,
    }

    /// Drops, a batch set aside then lost to retry-later, an
    /// acknowledgement, a rejection passing a count on, and a batch
    /// absorbing the unreported count, in a spool of two batches; a crash
    /// after `crash_after` durable steps.
    fn scenario(dir: &Path, one: u64, crash_after: u32, done: &mut Done) {
        let mut spool = Spool::open(dir, 2 * one).unwrap();
        spool.crash_after = Some(crash_after);
        let push = |spool: &mut Spool, w: u64, done: &mut Done| {
            done.pushing = Some(key(w));
            spool.push(key(w), batch(w, 2)).unwrap();
            done.pushing = None;
            done.pushed += 1;
        };
        push(&mut spool, 0, done);
        push(&mut spool, 1, done);
        push(&mut spool, 2, done); // drops 0
        let (sent, _) = spool.oldest().unwrap().unwrap();
        assert_eq!(sent, key(1));
        push(&mut spool, 3, done); // sets 1 aside
        spool.unacknowledged(sent, Unacknowledged::RetryLater); // 1 lost
        push(&mut spool, 4, done); // drops 2, which carried 1
        let (sent, bytes) = spool.oldest().unwrap().unwrap();
        assert_eq!(sent, key(3));
        done.delivered += 1;
        done.reported += u64::from(carried(&bytes));
        spool.remove(sent).unwrap();
        let (sent, bytes) = spool.oldest().unwrap().unwrap();
        assert_eq!((sent, carried(&bytes)), (key(4), 3));
        spool.reject(sent).unwrap(); // its 3 pass on
        push(&mut spool, 5, done); // carries them
    }

    /// A crash after any durable step of the spool's changes neither loses
    /// nor repeats a count: once reopened, every batch written is on disk,
    /// delivered, rejected, or counted as dropped exactly once.
    #[test]
    fn a_crash_at_any_step_neither_loses_nor_repeats_a_count() {
        let one = batch(0, 2).len() as u64;
        for crash_after in 0.. {
            assert!(crash_after < 100, "the scenario never ends");
            let dir = tempfile::tempdir().unwrap();
            let mut done = Done::default();
            let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                scenario(dir.path(), one, crash_after, &mut done)
            }))
            .is_err();
            let spool = Spool::open(dir.path(), 2 * one).unwrap();
            // A push that crashed wrote its batch if its file is there (it
            // cannot have been dropped yet).
            let pushing_written = done.pushing.is_some_and(|k| dir.path().join(k.file_name()).exists());
            let written = done.pushed + u64::from(pushing_written);
            let (queued, pending) = files(dir.path());
            let (rejected, _) = files(&dir.path().join(REJECTED_DIR));
            let dropped = written - queued - done.delivered - rejected;
            assert_eq!(
                done.reported + pending + spool.unreported(),
                dropped,
                "crash after {crash_after} steps: {done:?}, {queued} queued, {rejected} rejected"
            );
            if !crashed {
                assert_eq!(dropped, 3, "windows 0, 1 and 2");
                break;
            }
        }
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
