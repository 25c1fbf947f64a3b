//! The spool's drop accounting (issue 16): every batch the size limit
//! drops is reported upward exactly once, whatever happens to the batches
//! that carry the counts (dropped in turn, dropped while being sent,
//! rejected, or left on disk across a restart).
//!
//! The uplink is played by hand: `oldest` is a send, `remove` an
//! acknowledgement, `reject` a rejection, and a send that fails is simply
//! followed by another `oldest`.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use rack_sampler::spool::{Spool, SpoolKey};
use wire_format::{BatchBuilder, BatchInfo, BatchView, PathSummary};

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
/// the send ends unacknowledged; acknowledged, it was delivered, and so was
/// the count it carried.
#[test]
fn a_batch_dropped_while_being_sent_is_settled_by_its_acknowledgement() {
    let one = batch(0, 2).len() as u64;

    // Acknowledged after all: nothing was lost.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), one).unwrap();
    spool.push(key(0), batch(0, 2)).unwrap();
    let (sent, bytes) = spool.oldest().unwrap().unwrap();
    spool.push(key(1), batch(1, 2)).unwrap(); // drops window 0, in flight
    assert!(spool.bytes() <= one);
    spool.remove(sent).unwrap();
    assert_eq!(carried(&bytes), 0);
    let (delivered, reported) = drain(&mut spool);
    assert_eq!((delivered, reported), (1, 0));
    assert_eq!(spool.dropped_total(), 0);

    // The send fails: the uplink sends the next batch, which was spooled
    // before the loss was known, so the loss goes with the one after.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), one).unwrap();
    spool.push(key(0), batch(0, 2)).unwrap();
    spool.oldest().unwrap().unwrap();
    spool.push(key(1), batch(1, 2)).unwrap();
    let (k, bytes) = spool.oldest().unwrap().unwrap();
    assert_eq!(k, key(1), "the dropped batch is not sent again");
    assert_eq!(spool.dropped_total(), 1);
    spool.remove(k).unwrap();
    assert_eq!(carried(&bytes), 0);
    assert_eq!(spool.unreported(), 1);
    spool.push(key(2), batch(2, 2)).unwrap();
    let (delivered, reported) = drain(&mut spool);
    assert_eq!((delivered, reported), (1, 1));
    assert_eq!(spool.unreported(), 0);
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
    /// The uplink sends the oldest batch (again, if the last send failed).
    Send,
    /// The collector acknowledges the batch in flight.
    Ack,
    /// The collector rejects the batch in flight as invalid.
    Reject,
    /// The send in flight fails (the uplink will send again).
    Fail,
    /// The sampler restarts.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..12).prop_map(Op::Push),
        3 => Just(Op::Send),
        2 => Just(Op::Ack),
        1 => Just(Op::Reject),
        1 => Just(Op::Fail),
        1 => Just(Op::Reopen),
    ]
}

/// Drop counts carried by the batches on disk, queued or in flight.
fn on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "batch"))
        .map(|p| carried(&std::fs::read(p).unwrap()))
        .sum()
}

/// What the test saw: the batches it pushed, and those the collector stored
/// or rejected.
#[derive(Debug, Default)]
struct Seen {
    pushed: u64,
    delivered: u64,
    rejected: u64,
    /// Drop counts carried by the delivered batches.
    reported: u64,
    /// `dropped_total` of the spools closed by restarts.
    dropped_before: u64,
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
                spool.push(key(window), batch(window, *paths)).unwrap();
                window += 1;
                seen.pushed += 1;
                prop_assert!(spool.bytes() <= max_bytes, "{} bytes spooled", spool.bytes());
            }
            Op::Send => in_flight = spool.oldest().unwrap(),
            Op::Ack => {
                if let Some((k, bytes)) = in_flight.take() {
                    spool.remove(k).unwrap();
                    seen.delivered += 1;
                    seen.reported += carried(&bytes);
                }
            }
            Op::Reject => {
                if let Some((k, _)) = in_flight.take() {
                    spool.reject(k).unwrap();
                    seen.rejected += 1;
                }
            }
            Op::Fail => in_flight = None,
            Op::Reopen => {
                seen.dropped_before += spool.dropped_total();
                drop(spool);
                spool = Spool::open(dir.path(), max_bytes).unwrap();
                in_flight = None;
            }
        }
        // Every drop so far is reported, or carried by a batch on disk, or
        // waiting for the next batch spooled.
        prop_assert_eq!(
            seen.reported + on_disk(dir.path()) + spool.unreported(),
            seen.dropped_before + spool.dropped_total(),
            "after {:?}",
            op
        );
    }

    // The collector comes back for good: everything is sent, then one more
    // window (small enough to fit) carries what is still unreported.
    let (batches, counts) = drain(&mut spool);
    spool.push(key(window), batch(window, 0)).unwrap();
    let (last, last_counts) = drain(&mut spool);
    prop_assert_eq!(last, 1);
    seen.pushed += 1;
    seen.delivered += batches + last;
    seen.reported += counts + last_counts;
    prop_assert!(spool.is_empty());
    prop_assert_eq!(spool.unreported(), 0);

    let lost = seen.pushed - seen.delivered - seen.rejected;
    prop_assert_eq!(seen.reported, lost, "{:?}", seen);
    prop_assert_eq!(seen.dropped_before + spool.dropped_total(), lost, "{:?}", seen);
    Ok(())
}

proptest! {
    // Every push and restart syncs files: a few dozen operations a case.
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Sum of the drop counts the collector receives, plus what is still
    /// unreported, equals the batches dropped, for any interleaving of
    /// pushes, sends, acknowledgements, rejections, failures and restarts.
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
