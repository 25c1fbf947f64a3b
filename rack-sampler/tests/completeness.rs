//! Sequence numbers count each datagram at most once (issue 16): a replay
//! older than the tracker's history is refused and counted, not accepted as
//! late; reordering within the history, agent restarts and wrapping at 2³²
//! still count every datagram once.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{datagram, probe, topology};
use proptest::prelude::*;
use rack_sampler::aggregate::{Aggregator, Ingested, Refusal, Settings};
use rack_sampler::completeness::{Arrival, HISTORY, SequenceTracker};
use wire_format::{BatchView, ProbeOutcome};

const SECOND: u64 = 1_000_000_000;
const W: u64 = 10 * SECOND;
/// A window start far from zero, as real clocks give.
const T0: u64 = 1_800_000_000 * SECOND;

fn settings() -> Settings {
    Settings {
        sampler_id: 7,
        rack_id: 1,
        window_ns: W,
        grace_ns: 2 * SECOND,
        max_paths: 1_000,
        max_flows: 1_000,
        sample_one_in: 10,
        rtt_anomaly_ns: 1_000_000,
        max_samples: 10_000,
        max_batch_bytes: wire_format::MAX_BATCH_BYTES,
    }
}

/// The scenario: 1 100 datagrams of one probe each from one agent,
/// then the first 20 replayed. The replays are refused and counted; the
/// window holds 1 100 datagrams' worth.
#[test]
fn a_replay_older_than_the_history_is_refused_and_counted() {
    let mut agg = Aggregator::new(settings(), topology(), T0);
    let at = T0 + SECOND;
    let sent: Vec<Vec<u8>> = (0..1_100u32)
        .map(|seq| {
            let record = probe(101, 102, u64::from(seq), ProbeOutcome::Ok, 100_000, 0);
            datagram(101, 1, seq, at, &[record])
        })
        .collect();
    for d in &sent {
        assert_eq!(agg.ingest(d, at), Ingested::Accepted { records: 1 });
    }
    for d in &sent[..20] {
        assert_eq!(agg.ingest(d, at), Ingested::Refused(Refusal::TooOld));
    }

    let totals = agg.totals();
    assert_eq!(totals.datagrams, 1_100);
    assert_eq!(totals.probe_records, 1_100);
    assert_eq!(totals.refused[Refusal::TooOld.index()], 20, "every refusal is counted");
    assert_eq!(Refusal::TooOld.label(), "sequence_too_old");
    assert_eq!(totals.duplicates, 0);
    let agent = totals.agents[&101];
    assert_eq!((agent.expected, agent.received, agent.duplicate), (1_100, 1_100, 0));
    assert_eq!(agent.records, 1_100);

    let windows = agg.emit_due(T0 + W + 2 * SECOND);
    let bytes = &windows.iter().find(|w| w.start_ns == T0).unwrap().parts[0].1;
    let view = BatchView::parse(bytes).unwrap();
    let path = view.paths.iter().find(|p| p.src_node.get() == 101).unwrap();
    assert_eq!(path.probes_sent.get(), 1_100);
    let c = view.completeness.iter().find(|c| c.node_id.get() == 101).unwrap();
    assert_eq!(c.datagrams_expected.get(), 1_100);
    assert_eq!(c.datagrams_received.get(), 1_100);
    assert_eq!(c.datagrams_duplicate.get(), 0);
    // Refused datagrams are reported with the window's malformed ones.
    assert_eq!(view.header.malformed_datagrams.get(), 20);
    assert_eq!(c.records.get(), 1_100);
}

/// The same scenario on the tracker alone, whose own counter tells a
/// refusal for age from a duplicate within the history.
#[test]
fn the_tracker_counts_replays_too_old_to_check() {
    let mut t = SequenceTracker::default();
    for seq in 0..1_100 {
        assert!(matches!(t.observe(1, seq), Arrival::New { .. }));
    }
    for seq in 0..20 {
        assert_eq!(t.observe(1, seq), Arrival::TooOld, "seq {seq}");
    }
    assert_eq!(t.observe(1, 1_099), Arrival::Duplicate);
    assert_eq!(t.too_old(), 20);
}

// ---- the property ----

#[derive(Debug, Clone)]
enum Delivery {
    /// The agent sends its next datagram, `skip` numbers on (a gap the agent
    /// never sent, e.g. dropped by its rate cap); `held` keeps it in the
    /// network for a later `Replay` to deliver late.
    Next { skip: u32, held: bool },
    /// The datagram sent `age` datagrams before the agent's latest arrives
    /// (again, or for the first time if it was held).
    Replay { age: usize },
    /// The same from the agent's previous run, or the one before.
    Straggler { runs_back: usize, age: usize },
    /// The agent restarts: a new epoch, numbered from 0.
    Restart,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    let next = (
        // A jump past the whole history now and then.
        prop_oneof![600 => Just(0u32), 100 => 1u32..5, 1 => Just(HISTORY)],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(skip, held)| Delivery::Next { skip, held });
    // Ages around the history's edge as often as anywhere.
    let age = prop_oneof![0usize..HISTORY as usize + 100, 0usize..3_000];
    // A case is up to 3 000 deliveries: a restart or two, runs long enough
    // for the history to fill.
    prop_oneof![
        600 => next,
        300 => age.clone().prop_map(|age| Delivery::Replay { age }),
        20 => (1usize..3, age).prop_map(|(runs_back, age)| Delivery::Straggler { runs_back, age }),
        1 => Just(Delivery::Restart),
    ]
}

/// One run of the agent as the test knows it.
#[derive(Debug)]
struct AgentRun {
    epoch: u32,
    /// Sequence numbers sent, in order.
    sent: Vec<u32>,
}

/// What the tracker was told of one run.
#[derive(Debug, Default)]
struct Counted {
    /// Distance from the run's first number of the highest accepted.
    highest: Option<u64>,
    /// Where the tracker counts the run from: the first number it heard if
    /// this is the first run it heard of (earlier loss cannot be known),
    /// else 0 (a restart numbers from 0).
    counted_from: u64,
    /// Sum of `expected` of the run's arrivals.
    expected: u64,
    /// Numbers accepted.
    seqs: BTreeSet<u32>,
}

fn check(first_seq: u32, deliveries: &[Delivery]) -> Result<(), TestCaseError> {
    let mut t = SequenceTracker::default();
    let mut runs = vec![AgentRun {
        epoch: 1_000,
        sent: Vec::new(),
    }];
    let mut next = first_seq;
    let mut counted: BTreeMap<u32, Counted> = BTreeMap::new();
    // Epochs in the order the tracker took them as the latest run.
    let mut taken: Vec<u32> = Vec::new();
    let mut refused = 0;
    for d in deliveries {
        let (epoch, seq) = match *d {
            Delivery::Next { skip, held } => {
                next = next.wrapping_add(skip);
                let run = runs.last_mut().unwrap();
                run.sent.push(next);
                next = next.wrapping_add(1);
                if held {
                    continue;
                }
                (run.epoch, *run.sent.last().unwrap())
            }
            Delivery::Replay { age } => {
                let run = runs.last().unwrap();
                let Some(i) = run.sent.len().checked_sub(1 + age) else {
                    continue;
                };
                (run.epoch, run.sent[i])
            }
            Delivery::Straggler { runs_back, age } => {
                let Some(r) = runs.len().checked_sub(1 + runs_back) else {
                    continue;
                };
                let run = &runs[r];
                let Some(i) = run.sent.len().checked_sub(1 + age.min(run.sent.len())) else {
                    continue;
                };
                (run.epoch, run.sent[i])
            }
            Delivery::Restart => {
                let epoch = runs.last().unwrap().epoch + 1;
                runs.push(AgentRun {
                    epoch,
                    sent: Vec::new(),
                });
                next = 0;
                continue;
            }
        };
        // Where the run's numbering starts: 0 after a restart, else the
        // first number the sampler heard.
        let base = if epoch == 1_000 { first_seq } else { 0 };
        let offset = u64::from(seq.wrapping_sub(base));
        let latest = taken.last().copied();
        let previous = taken.len().checked_sub(2).map(|i| taken[i]);
        let c = counted.entry(epoch).or_default();
        let already = c.seqs.contains(&seq);
        // Accepted for sure: not seen, and of the latest run (or of the run
        // before it, a straggler) within the history, or of a newer run.
        let within = c.highest.is_none_or(|h| offset > h || h - offset < u64::from(HISTORY));
        let of_known_run = Some(epoch) == latest || Some(epoch) == previous;
        let must_accept = !already && (latest.is_none_or(|e| epoch > e) || (of_known_run && within));

        match t.observe(epoch, seq) {
            Arrival::New { expected, .. } => {
                prop_assert!(!already, "epoch {} seq {} counted twice", epoch, seq);
                if c.highest.is_none() && taken.is_empty() {
                    c.counted_from = offset;
                }
                c.seqs.insert(seq);
                c.expected += u64::from(expected);
                c.highest = Some(c.highest.map_or(offset, |h| h.max(offset)));
                if latest.is_none_or(|e| epoch > e) {
                    taken.push(epoch);
                }
            }
            Arrival::Duplicate | Arrival::TooOld => {
                prop_assert!(!must_accept, "epoch {} seq {} refused", epoch, seq);
                refused += 1;
            }
        }
    }
    prop_assert!(t.too_old() <= refused);
    for (epoch, c) in &counted {
        // The numbers say how many were sent, from where the tracker counts
        // the run from to the highest heard.
        if let Some(h) = c.highest {
            prop_assert_eq!(c.expected, h + 1 - c.counted_from, "epoch {}", epoch);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For any deliveries, with duplicates, reordering, replays of any age,
    /// restarts and stragglers of earlier runs, each (epoch, sequence) is
    /// counted at most once; what arrives within the history unseen is
    /// counted; and the expected count matches the highest number heard.
    #[test]
    fn each_datagram_counts_at_most_once(
        first_seq in prop_oneof![Just(0u32), Just(u32::MAX - 300), any::<u32>()],
        deliveries in prop::collection::vec(delivery(), 0..3_000),
    ) {
        check(first_seq, &deliveries)?;
    }
}
