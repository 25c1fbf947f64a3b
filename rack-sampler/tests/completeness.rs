//! Sequence numbers count each datagram at most once (issue 16): a replay
//! older than the tracker's history is refused and counted, not accepted as
//! late; reordering within the history, agent restarts (to a lower epoch
//! too, after the agent's clock stepped back) and wrapping at 2³² still
//! count every datagram once.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{datagram, probe, topology};
use proptest::prelude::*;
use rack_sampler::aggregate::{Aggregator, Ingested, Refusal, Settings};
use rack_sampler::completeness::{Arrival, HISTORY, RUNS, SequenceTracker};
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

/// One probe datagram from agent 101 of run `epoch`, sent at `at`.
fn one(epoch: u32, seq: u32, at: u64) -> Vec<u8> {
    datagram(
        101,
        epoch,
        seq,
        at,
        &[probe(101, 102, u64::from(seq), ProbeOutcome::Ok, 100_000, 0)],
    )
}

/// The agent restarts after its clock stepped back: the new run's epoch (its
/// start time in seconds) is lower than the last. It is a restart, counted,
/// not a stale run refused until the agent restarts again.
#[test]
fn a_run_with_a_lower_epoch_after_the_clock_stepped_back_is_counted() {
    let mut agg = Aggregator::new(settings(), topology(), T0);
    let at = T0 + SECOND;
    for seq in 0..1_100 {
        assert_eq!(agg.ingest(&one(2_000, seq, at), at), Ingested::Accepted { records: 1 });
    }
    for seq in 0..50 {
        assert_eq!(
            agg.ingest(&one(1_990, seq, at), at),
            Ingested::Accepted { records: 1 },
            "seq {seq} of the new run"
        );
    }
    // The old run's last datagram, overtaken by the restart, still counts.
    assert_eq!(
        agg.ingest(&one(2_000, 1_100, at), at),
        Ingested::Accepted { records: 1 }
    );
    assert_eq!(agg.ingest(&one(1_990, 49, at), at), Ingested::Duplicate);

    let agent = agg.totals().agents[&101];
    assert_eq!(agent.restarts, 1);
    assert_eq!((agent.expected, agent.received), (1_151, 1_151));
    assert_eq!(agg.totals().refused[Refusal::TooOld.index()], 0);
    let windows = agg.emit_due(T0 + W + 2 * SECOND);
    let view = BatchView::parse(&windows.iter().find(|w| w.start_ns == T0).unwrap().parts[0].1).unwrap();
    let c = view.completeness.iter().find(|c| c.node_id.get() == 101).unwrap();
    assert_eq!(c.agent_epoch.get(), 1_990);
    assert_eq!(c.datagrams_received.get(), 1_151);
    assert_ne!(c.flags & 2, 0, "RESTARTED");
}

/// Runs are told apart by when they were first heard of: a datagram of a
/// run two runs back is refused, whichever way the epochs went.
#[test]
fn a_datagram_of_the_run_before_the_previous_is_refused() {
    let mut agg = Aggregator::new(settings(), topology(), T0);
    let at = T0 + SECOND;
    assert!(matches!(agg.ingest(&one(2_000, 0, at), at), Ingested::Accepted { .. }));
    assert!(matches!(agg.ingest(&one(1_990, 0, at), at), Ingested::Accepted { .. }));
    assert!(matches!(agg.ingest(&one(1_995, 0, at), at), Ingested::Accepted { .. }));
    assert_eq!(agg.ingest(&one(2_000, 1, at), at), Ingested::Refused(Refusal::TooOld));
    assert!(matches!(agg.ingest(&one(1_990, 1, at), at), Ingested::Accepted { .. }));
    assert_eq!(agg.totals().agents[&101].restarts, 2);
}

/// A refused datagram (a possible replay) says nothing about the agent
/// being alive: it does not move its last-seen time.
#[test]
fn a_refused_replay_does_not_keep_a_dead_agent_alive() {
    let mut agg = Aggregator::new(settings(), topology(), T0);
    let at = T0 + SECOND;
    for seq in 0..1_100 {
        agg.ingest(&one(1, seq, at), at);
    }
    let later = at + 5 * SECOND;
    assert_eq!(agg.ingest(&one(1, 0, at), later), Ingested::Refused(Refusal::TooOld));
    assert_eq!(agg.totals().agents[&101].last_seen_ns, at);
    let windows = agg.emit_due(T0 + W + 2 * SECOND);
    let view = BatchView::parse(&windows.iter().find(|w| w.start_ns == T0).unwrap().parts[0].1).unwrap();
    let c = view.completeness.iter().find(|c| c.node_id.get() == 101).unwrap();
    assert_eq!(c.last_seen_ns.get(), at);
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
    /// The same from one of the agent's earlier runs.
    Straggler { runs_back: usize, age: usize },
    /// The agent restarts: a new epoch, numbered from 0; `back` when its
    /// clock stepped back, so the epoch is lower than every earlier one.
    Restart { back: bool },
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
    // A case is up to 3 000 deliveries: a few restarts, runs long enough for
    // the history to fill; stragglers from runs the tracker has forgotten
    // (more than `RUNS` back) now and then.
    prop_oneof![
        600 => next,
        300 => age.clone().prop_map(|age| Delivery::Replay { age }),
        20 => (1usize..RUNS + 2, age).prop_map(|(runs_back, age)| Delivery::Straggler { runs_back, age }),
        2 => prop::bool::ANY.prop_map(|back| Delivery::Restart { back }),
    ]
}

/// One run of the agent as the test knows it.
#[derive(Debug)]
struct AgentRun {
    epoch: u32,
    /// Sequence numbers sent, in order.
    sent: Vec<u32>,
}

/// What the tracker was told of one run since it last took it as new.
#[derive(Debug, Default)]
struct Counted {
    /// Distance from the run's first number of the highest accepted.
    highest: Option<u64>,
    /// The distance, and `expected`, of the arrival that started the run.
    first: (u64, u64),
    /// Sum of `expected` of the run's arrivals.
    expected: u64,
    /// Numbers accepted.
    seqs: BTreeSet<u32>,
}

fn check(first_seq: u32, deliveries: &[Delivery]) -> Result<(), TestCaseError> {
    const FIRST_EPOCH: u32 = 1_000;
    let mut t = SequenceTracker::default();
    let mut runs = vec![AgentRun {
        epoch: FIRST_EPOCH,
        sent: Vec::new(),
    }];
    let (mut lowest, mut highest) = (FIRST_EPOCH, FIRST_EPOCH);
    let mut next = first_seq;
    let mut counted: BTreeMap<u32, Counted> = BTreeMap::new();
    // Epochs in the order the tracker took them as a new run.
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
            Delivery::Restart { back } => {
                let epoch = if back {
                    lowest -= 1;
                    lowest
                } else {
                    highest += 1;
                    highest
                };
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
        let base = if epoch == FIRST_EPOCH { first_seq } else { 0 };
        let offset = u64::from(seq.wrapping_sub(base));
        // The runs the tracker remembers, latest last.
        let known = &taken[taken.len().saturating_sub(RUNS)..];
        let is_new = !known.contains(&epoch);
        let is_older = known.len() >= 2 && known[..known.len() - 2].contains(&epoch);
        if is_new {
            counted.insert(epoch, Counted::default());
        }
        let c = counted.entry(epoch).or_default();
        let already = c.seqs.contains(&seq);
        // Accepted for sure: a run the tracker does not remember (a new one,
        // whatever its epoch), or one of the latest two runs, unseen and
        // within its history.
        let within = c.highest.is_none_or(|h| offset > h || h - offset < u64::from(HISTORY));
        let must_accept = is_new || (!is_older && !already && within);

        match t.observe(epoch, seq) {
            Arrival::New {
                expected, restarted, ..
            } => {
                prop_assert!(!already, "epoch {} seq {} counted twice", epoch, seq);
                prop_assert!(!is_older, "epoch {} of a run before the previous accepted", epoch);
                prop_assert_eq!(restarted, is_new && !taken.is_empty(), "epoch {} seq {}", epoch, seq);
                if is_new {
                    // The first run heard of counts from its first datagram
                    // (earlier loss cannot be known), a restart from 0.
                    let from_zero = if taken.is_empty() { 1 } else { seq.saturating_add(1) };
                    prop_assert_eq!(expected, from_zero, "epoch {} seq {}", epoch, seq);
                    c.first = (offset, u64::from(expected));
                    taken.push(epoch);
                }
                c.seqs.insert(seq);
                c.expected += u64::from(expected);
                c.highest = Some(c.highest.map_or(offset, |h| h.max(offset)));
            }
            Arrival::Duplicate | Arrival::TooOld => {
                prop_assert!(!must_accept, "epoch {} seq {} refused", epoch, seq);
                refused += 1;
            }
        }
    }
    prop_assert!(t.too_old() <= refused);
    prop_assert_eq!(t.epoch(), taken.last().copied());
    for (epoch, c) in &counted {
        // The numbers say how many were sent, from where the tracker counts
        // the run from to the highest heard.
        if let Some(h) = c.highest {
            prop_assert_eq!(c.expected, c.first.1 + h - c.first.0, "epoch {}", epoch);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For any deliveries, with duplicates, reordering, replays of any age,
    /// restarts (to higher or lower epochs) and stragglers of earlier runs,
    /// each (epoch, sequence) is counted at most once per time the tracker
    /// takes its run as new; what arrives within the history unseen, or of
    /// a run the tracker does not remember, is counted; what comes from a
    /// remembered run before the previous one is refused; and the expected
    /// count matches the highest number heard.
    #[test]
    fn each_datagram_counts_at_most_once(
        first_seq in prop_oneof![Just(0u32), Just(u32::MAX - 300), any::<u32>()],
        deliveries in prop::collection::vec(delivery(), 0..3_000),
    ) {
        check(first_seq, &deliveries)?;
    }
}
