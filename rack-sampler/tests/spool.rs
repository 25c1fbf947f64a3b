//! The spool's drop accounting (issue 16): every batch the size limit
//! drops is reported upward exactly once, whatever happens to the batches
//! that carry the counts (dropped in turn, dropped while being sent and
//! stored by a collector whose acknowledgement was lost, rejected, vanished
//! or damaged on disk, or left on disk across a restart).
//!
//! The uplink is played by hand: `oldest` is a send, `remove` an
//! acknowledgement, `reject` a rejection, `unacknowledged` a send that
//! ended without either.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;

use rack_sampler::spool::{Spool, SpoolKey, Unacknowledged};
use wire_format::{BatchBuilder, BatchId, BatchInfo, BatchView, PathSummary};

fn batch(window: u64, paths: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchInfo::window(1, 1, window, 10));
    for i in 0..paths {
        b.push_path(PathSummary::new(1, i as u32, 0, None), &[]).unwrap();
    }
    b.encode().unwrap()
}

fn key(window: u64) -> SpoolKey {
    SpoolKey {
        window_start_ns: window,
        part: 0,
    }
}

/// The drop count a batch carries.
fn carried(bytes: &[u8]) -> u64 {
    BatchView::parse(bytes)
        .unwrap()
        .header
        .spool_dropped_batches
        .get()
        .into()
}

/// Sends and acknowledges every spooled batch, oldest first; returns how
/// many and the drop counts they carried.
fn drain(spool: &mut Spool) -> (u64, u64) {
    let (mut batches, mut counts) = (0, 0);
    while let Some((k, bytes)) = spool.oldest().unwrap() {
        spool.remove(k).unwrap();
        batches += 1;
        counts += carried(&bytes);
    }
    (batches, counts)
}

/// The scenario: a spool of two batches and the collector down
/// while 15 windows are emitted drops 13; once the collector is back, the
/// batches it receives must say 13, not just the counts of the two
/// survivors.
#[test]
fn counts_carried_by_dropped_batches_are_carried_forward() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(0, 2).len() as u64;
    let mut spool = Spool::open(dir.path(), one * 2).unwrap();
    for w in 0..15 {
        spool.push(key(w), batch(w, 2)).unwrap();
    }
    assert_eq!(spool.dropped_total(), 13);
    let (delivered, reported) = drain(&mut spool);
    assert_eq!(delivered, 2);
    assert_eq!(reported, 13);
}

/// A batch dropped while the uplink is sending it counts as dropped only if
/// the collector turns out not to have it; acknowledged, it was delivered,
/// and so was the count it carried.
#[test]
fn a_batch_dropped_while_being_sent_is_settled_by_its_acknowledgement() {
    let one = batch(0, 2).len() as u64;

    // Acknowledged after all: nothing was lost.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), one).unwrap();
    spool.push(key(0), batch(0, 2)).unwrap();
    let (sent, bytes) = spool.oldest().unwrap().unwrap();
    spool.push(key(1), batch(1, 2)).unwrap(); // drops window 0, in flight
    assert!(spool.bytes() <= 2 * one, "one batch over the bound at most");
    spool.remove(sent).unwrap();
    assert_eq!(carried(&bytes), 0);
    let (delivered, reported) = drain(&mut spool);
    assert_eq!((delivered, reported), (1, 0));
    assert_eq!(spool.dropped_total(), 0);

    // The collector answers retry-later, so it does not have it, and the
    // spool still needs the room: the uplink sends the next batch, which
    // was spooled before the loss was known, so the loss goes with the one
    // after.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), one).unwrap();
    spool.push(key(0), batch(0, 2)).unwrap();
    let (sent, _) = spool.oldest().unwrap().unwrap();
    spool.push(key(1), batch(1, 2)).unwrap();
    spool.unacknowledged(sent, Unacknowledged::RetryLater);
    assert_eq!(spool.dropped_total(), 1);
    let (k, bytes) = spool.oldest().unwrap().unwrap();
    assert_eq!(k, key(1), "the dropped batch is not sent again");
    spool.remove(k).unwrap();
    assert_eq!(carried(&bytes), 0);
    assert_eq!(spool.unreported(), 1);
    spool.push(key(2), batch(2, 2)).unwrap();
    let (delivered, reported) = drain(&mut spool);
    assert_eq!((delivered, reported), (1, 1));
    assert_eq!(spool.unreported(), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file left");
}

/// The collector stored the batch being sent, but its acknowledgement was
/// lost (the connection broke): the spool cannot know, so the batch it
/// dropped meanwhile is kept (one batch over the bound) and sent again,
/// acknowledged as a duplicate, and never reported as dropped. A restart
/// meanwhile keeps it too.
#[test]
fn a_batch_whose_acknowledgement_was_lost_is_sent_again_not_counted_as_dropped() {
    let one = batch(0, 2).len() as u64;
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), one).unwrap();
        spool.push(key(0), batch(0, 2)).unwrap();
        let (sent, first) = spool.oldest().unwrap().unwrap();
        spool.push(key(1), batch(1, 2)).unwrap(); // drops window 0, in flight
        // Stored by the collector; the answer never came.
        spool.unacknowledged(sent, Unacknowledged::NoAnswer);
        if restart {
            drop(spool);
            spool = Spool::open(dir.path(), one).unwrap();
        }
        // Even a retry-later from another collector does not tell it is
        // not stored.
        let (again, _) = spool.oldest().unwrap().unwrap();
        assert_eq!(again, key(0), "sent again");
        spool.unacknowledged(again, Unacknowledged::RetryLater);
        assert_eq!(spool.dropped_total(), 0);
        let (again, bytes) = spool.oldest().unwrap().unwrap();
        assert_eq!((again, &bytes), (key(0), &first));
        spool.remove(again).unwrap(); // a duplicate
        assert_eq!(drain(&mut spool), (1, 0), "restart {restart}: window 1, and no loss");
        assert_eq!((spool.dropped_total(), spool.unreported()), (0, 0));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file left");
    }
}

/// A batch file that vanished or was damaged is counted as dropped and
/// skipped; it does not stop the queue.
#[test]
fn a_vanished_or_damaged_batch_is_counted_as_dropped_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    for w in 0..4 {
        spool.push(key(w), batch(w, 2)).unwrap();
    }
    // Reopened, so the batches are read from disk.
    drop(spool);
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let file = |w: u64| dir.path().join(format!("{w:020}-00000.batch"));
    std::fs::remove_file(file(0)).unwrap();
    std::fs::write(file(1), b"not a batch").unwrap();
    let (k, _) = spool.oldest().unwrap().unwrap();
    assert_eq!(k, key(2));
    assert_eq!(spool.dropped_total(), 2);
    assert_eq!(spool.unreported(), 2);
    assert!(
        dir.path().join("rejected").join(file(1).file_name().unwrap()).exists(),
        "kept for inspection"
    );
    spool.remove(k).unwrap();
    spool.push(key(4), batch(4, 2)).unwrap();
    assert_eq!(drain(&mut spool), (2, 2));
}

/// A file that cannot be read (here a directory where a batch should be)
/// neither stops the spool from opening nor holds up the queue: after a few
/// attempts it is given up.
#[test]
fn an_unreadable_batch_is_given_up_after_a_few_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.push(key(1), batch(1, 2)).unwrap();
    drop(spool);
    let unreadable = dir.path().join(format!("{:020}-00000.batch", 0));
    std::fs::create_dir(&unreadable).unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    for _ in 1..rack_sampler::spool::READ_ATTEMPTS {
        assert!(spool.oldest().is_err(), "perhaps passing: tried again");
    }
    let (k, _) = spool.oldest().unwrap().unwrap();
    assert_eq!(k, key(1));
    assert_eq!(spool.dropped_total(), 1);
    assert!(!unreadable.exists());
}

/// The same key pushed twice (a window part emitted again after the record
/// of the last part was lost) overwrites nothing: the second batch goes
/// under the next free part, with its id to match, and both are delivered,
/// also when the first is being sent at the time.
#[test]
fn a_key_pushed_twice_is_spooled_under_the_next_free_part() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.push(key(5), batch(5, 1)).unwrap();
    let (sent, _) = spool.oldest().unwrap().unwrap();
    let pushed = spool.push(key(5), batch(5, 2)).unwrap();
    assert_eq!(pushed.key.part, 1);
    spool.push(key(5), batch(5, 3)).unwrap();
    spool.remove(sent).unwrap();
    let mut ids = vec![BatchId::for_window(1, 5, 0)];
    let mut paths = vec![1];
    while let Some((k, bytes)) = spool.oldest().unwrap() {
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!(view.header.batch_id, BatchId::for_window(1, 5, k.part));
        ids.push(view.header.batch_id);
        paths.push(view.paths.len());
        spool.remove(k).unwrap();
    }
    assert_eq!(ids.len(), 3, "no batch overwritten: {ids:?}");
    assert_eq!(paths, [1, 2, 3]);
    assert_eq!(spool.dropped_total(), 0);
}

/// A batch too large for the spool, and the count a rejected batch carried,
/// are reported by the next batch spooled, even across a restart.
#[test]
fn refused_and_rejected_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(0, 2).len() as u64;
    let mut spool = Spool::open(dir.path(), one).unwrap();
    spool.push(key(0), batch(0, 2)).unwrap();
    spool.push(key(1), batch(1, 2)).unwrap(); // drops window 0
    assert!(spool.push(key(2), batch(2, 50)).unwrap().refused);
    let (k, bytes) = spool.oldest().unwrap().unwrap();
    assert_eq!(carried(&bytes), 1);
    spool.reject(k).unwrap(); // its count of 1 never reaches the collector
    drop(spool);

    let mut spool = Spool::open(dir.path(), one).unwrap();
    spool.push(key(3), batch(3, 1)).unwrap();
    let (delivered, reported) = drain(&mut spool);
    assert_eq!(delivered, 1);
    assert_eq!(reported, 2, "window 0 dropped, window 2 refused");
}

// ---- the property ----

#[derive(Debug, Clone)]
enum Op {
    /// Spool the next window's batch, of this many paths.
    Push(usize),
    /// The uplink sends the oldest batch (again, if the last send failed);
    /// a send in flight ends unreported.
    Send,
    /// The collector stores (or already has) the batch in flight and
    /// acknowledges it.
    Ack,
    /// The collector stores the batch in flight, but its acknowledgement is
    /// lost.
    AckLost,
    /// The collector rejects the batch in flight as invalid (a batch it
    /// stored before is acknowledged as a duplicate instead).
    Reject,
    /// A collector answers retry-later (one that stored it before may be
    /// another).
    RetryLater,
    /// The send in flight fails without reaching the collector.
    Fail,
    /// The sampler restarts.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..12).prop_map(Op::Push),
        3 => Just(Op::Send),
        2 => Just(Op::Ack),
        1 => Just(Op::AckLost),
        1 => Just(Op::Reject),
        1 => Just(Op::RetryLater),
        1 => Just(Op::Fail),
        1 => Just(Op::Reopen),
    ]
}

/// The batches on disk, queued or set aside: their ids and drop counts.
fn on_disk(dir: &Path) -> Vec<(BatchId, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "batch"))
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            (BatchView::parse(&bytes).unwrap().header.batch_id, carried(&bytes))
        })
        .collect()
}

/// What the test saw: the batches it pushed, those the collector stored
/// (each once, by id, with the count it carried) or rejected.
#[derive(Debug, Default)]
struct Seen {
    pushed: u64,
    stored: BTreeMap<BatchId, u64>,
    rejected: u64,
    /// `dropped_total` of the spools closed by restarts.
    dropped_before: u64,
    /// The largest batch pushed.
    largest: u64,
}

impl Seen {
    /// The collector stores `bytes` unless it has it (a duplicate).
    fn store(&mut self, bytes: &[u8]) {
        let id = BatchView::parse(bytes).unwrap().header.batch_id;
        self.stored.entry(id).or_insert_with(|| carried(bytes));
    }

    fn has(&self, bytes: &[u8]) -> bool {
        self.stored
            .contains_key(&BatchView::parse(bytes).unwrap().header.batch_id)
    }

    /// Drop counts the collector received.
    fn reported(&self) -> u64 {
        self.stored.values().sum()
    }
}

fn run(ops: &[Op], max_bytes: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), max_bytes).unwrap();
    let mut seen = Seen::default();
    let mut window = 0;
    let mut in_flight: Option<(SpoolKey, Bytes)> = None;
    for op in ops {
        match op {
            Op::Push(paths) => {
                let b = batch(window, *paths);
                seen.largest = seen.largest.max(b.len() as u64);
                spool.push(key(window), b).unwrap();
                window += 1;
                seen.pushed += 1;
            }
            Op::Send => in_flight = spool.oldest().unwrap(),
            Op::Ack => {
                if let Some((k, bytes)) = in_flight.take() {
                    seen.store(&bytes);
                    spool.remove(k).unwrap();
                }
            }
            Op::AckLost => {
                if let Some((k, bytes)) = in_flight.take() {
                    seen.store(&bytes);
                    spool.unacknowledged(k, Unacknowledged::NoAnswer);
                }
            }
            Op::Reject => {
                if let Some((k, bytes)) = in_flight.take() {
                    if seen.has(&bytes) {
                        spool.remove(k).unwrap();
                    } else {
                        spool.reject(k).unwrap();
                        seen.rejected += 1;
                    }
                }
            }
            Op::RetryLater => {
                if let Some((k, _)) = in_flight.take() {
                    spool.unacknowledged(k, Unacknowledged::RetryLater);
                }
            }
            Op::Fail => {
                if let Some((k, _)) = in_flight.take() {
                    spool.unacknowledged(k, Unacknowledged::NoAnswer);
                }
            }
            Op::Reopen => {
                seen.dropped_before += spool.dropped_total();
                drop(spool);
                spool = Spool::open(dir.path(), max_bytes).unwrap();
                in_flight = None;
            }
        }
        // Within the bound but for one batch set aside.
        prop_assert!(
            spool.bytes() <= max_bytes + seen.largest,
            "{} bytes spooled after {:?}",
            spool.bytes(),
            op
        );
        // Every drop so far is reported, or carried by a batch on disk the
        // collector does not have, or waiting for the next batch spooled.
        let pending: u64 = on_disk(dir.path())
            .into_iter()
            .filter(|(id, _)| !seen.stored.contains_key(id))
            .map(|(_, n)| n)
            .sum();
        prop_assert_eq!(
            seen.reported() + pending + spool.unreported(),
            seen.dropped_before + spool.dropped_total(),
            "after {:?}",
            op
        );
    }

    // The collector comes back for good: everything is sent, then one more
    // window (small enough to fit) carries what is still unreported.
    let mut finish = |spool: &mut Spool| {
        while let Some((k, bytes)) = spool.oldest().unwrap() {
            seen.store(&bytes);
            spool.remove(k).unwrap();
        }
    };
    finish(&mut spool);
    spool.push(key(window), batch(window, 0)).unwrap();
    finish(&mut spool);
    seen.pushed += 1;
    prop_assert!(spool.is_empty());
    prop_assert_eq!(spool.unreported(), 0);

    // The windows truly lost: never stored, nor rejected.
    let lost = seen.pushed - seen.stored.len() as u64 - seen.rejected;
    prop_assert_eq!(seen.reported(), lost, "{:?}", seen);
    prop_assert_eq!(seen.dropped_before + spool.dropped_total(), lost, "{:?}", seen);
    Ok(())
}

proptest! {
    // Every push and restart syncs files: a few dozen operations a case.
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Sum of the drop counts the collector stores, plus what is still
    /// pending, equals the batches truly lost (never stored), for any
    /// interleaving of pushes, sends, acknowledgements (lost ones too),
    /// rejections, retry-laters, failures and restarts.
    #[test]
    fn every_dropped_batch_is_reported_exactly_once(
        ops in prop::collection::vec(op(), 0..60),
        batches in 1u64..4,
        slack in 0u64..200,
    ) {
        let max_bytes = batch(0, 2).len() as u64 * batches + slack;
        run(&ops, max_bytes)?;
    }
}
