//! Sequence numbers count each datagram at most once (issue 16): a replay
//! older than the tracker's history is refused and counted, not accepted as
//! late; reordering within the history, agent restarts (to a lower epoch
//! too, after the agent's clock stepped back) and wrapping at 2³² still
//! count every datagram once.
//!
//! Windows the sampler did not see whole do not read complete (issue 17):
//! an agent silent for a window's tail (its link went down) expects what
//! its cadence says it sent, a silent window its own share and the window
//! the agent comes back in only its own, while an idle agent sending only
//! heartbeats reads complete; a sampler restarted on its saved state counts
//! what it missed while down, and one without (or with too old a) state
//! imputes what came before it started. Time is passed in throughout.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{datagram, probe, topology};
use proptest::prelude::*;
use rack_sampler::aggregate::{Aggregator, EmittedWindow, Ingested, Refusal, Restored, Settings};
use rack_sampler::checkpoint::Checkpoint;
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
        heartbeat_ns: 5_000_000_000,
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

// ---- issue 17: windows the sampler did not see whole ----

const W30: u64 = 30 * SECOND;
const MS: u64 = 1_000_000;

/// Windows of 30 s, as deployed: an agent probing 2.5 times a second sends
/// 75 datagrams per window.
fn settings_30s() -> Settings {
    Settings {
        window_ns: W30,
        ..settings()
    }
}

/// Agent 101 sending one datagram every 400 ms, numbered from `seq`; each
/// arrives 1 ms after it was sent, unless the agent's link is down.
struct Agent {
    seq: u32,
    epoch: u32,
}

impl Agent {
    /// Sends its datagram `i` (at `start + i × 400 ms`); if `delivered`, it
    /// arrives and the aggregator takes it, after emitting what is due (as
    /// the service does). Returns the windows emitted.
    fn send(&mut self, agg: &mut Aggregator, start: u64, i: u64, delivered: bool) -> Vec<EmittedWindow> {
        let at = start + i * 400 * MS;
        let seq = self.seq;
        self.seq += 1;
        if !delivered {
            return Vec::new();
        }
        let emitted = agg.emit_due(at + MS);
        assert!(matches!(
            agg.ingest(&one(self.epoch, seq, at), at + MS),
            Ingested::Accepted { .. }
        ));
        emitted
    }
}

/// Agent 101's completeness (expected, received, flags) in `window`.
fn agent_101(window: &EmittedWindow) -> (u32, u32, u8) {
    let view = BatchView::parse(&window.parts[0].1).unwrap();
    let c = view.completeness.iter().find(|c| c.node_id.get() == 101).unwrap();
    (c.datagrams_expected.get(), c.datagrams_received.get(), c.flags)
}

fn find(windows: &[EmittedWindow], start: u64) -> &EmittedWindow {
    windows.iter().find(|w| w.start_ns == start).unwrap()
}

/// The host whose link went down 15 s into a window and came back
/// 5 s into the window after next. The window it went down in is not
/// complete: the 37 datagrams its cadence (2.5/s, measured from its own
/// sequence numbers) says it sent in the silent 15 s are expected. The
/// silent window is SILENT and expects its 75; the window it came back in
/// expects only its own 75, not the whole outage's. Summed, the windows
/// expect exactly what the sequence numbers say was sent.
#[test]
fn a_link_down_mid_window_leaves_that_window_incomplete_and_each_window_its_own_share() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let mut agent = Agent { seq: 0, epoch: 1 };
    let mut emitted = Vec::new();
    // Up for 15 s (38 datagrams), down for 50 s, up again until past the
    // third window's close.
    for i in 0..233 {
        let delivered = !(38..163).contains(&i);
        emitted.extend(agent.send(&mut agg, T0, i, delivered));
    }
    emitted.extend(agg.emit_due(T0 + 3 * W30 + 2 * SECOND + 900 * MS));
    let down = agent_101(find(&emitted, T0));
    let silent = agent_101(find(&emitted, T0 + W30));
    let back = agent_101(find(&emitted, T0 + 2 * W30));
    assert_eq!(down, (75, 38, 0), "the window the link went down in");
    assert_eq!(silent, (75, 0, wire_format::completeness_flags::SILENT));
    assert_eq!(back, (75, 62, 0), "the window it came back in: its own share only");
    assert_eq!(
        down.0 + silent.0 + back.0,
        225,
        "datagrams 0..=224 were sent in the three"
    );
}

/// An idle agent (heartbeats only: every 5 s plus up to one 200 ms flush
/// tick, arriving up to 30 ms late) reads complete in every window, and one
/// lost heartbeat is one datagram missing, not a silence.
#[test]
fn an_idle_agent_sending_only_heartbeats_reads_complete() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let mut emitted = Vec::new();
    let mut sent = T0 + 300 * MS;
    let mut lost = 0;
    for seq in 0..70u32 {
        // A lost heartbeat near the end of the third window.
        let delivered = seq != 17;
        lost += u32::from(!delivered);
        if delivered {
            let arrival = sent + u64::from(seq % 4) * 10 * MS;
            emitted.extend(agg.emit_due(arrival));
            agg.ingest(&one(1, seq, sent), arrival);
        }
        sent += 5 * SECOND + u64::from(seq % 3) * 100 * MS;
    }
    emitted.extend(agg.emit_due(sent));
    assert!(emitted.len() >= 11, "{} windows", emitted.len());
    let (mut expected, mut received) = (0, 0);
    for w in &emitted {
        let (e, r, flags) = agent_101(w);
        assert_eq!(flags, 0, "window {}", (w.start_ns - T0) / W30);
        assert!(e - r <= lost, "window {}: {r} of {e}", (w.start_ns - T0) / W30);
        expected += e;
        received += r;
    }
    assert_eq!(expected - received, lost, "only the lost heartbeat is missing");
}

/// The silence rule's edge: an agent heard last exactly two heartbeat
/// intervals before the window's end is not silent; a nanosecond earlier it
/// is, and the window expects what one datagram per heartbeat interval (its
/// cadence, never measured) comes to.
#[test]
fn silence_starts_after_two_heartbeat_intervals() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let at = T0 + 20 * SECOND;
    agg.ingest(&one(1, 0, at), at);
    let early = at - 1;
    agg.ingest(
        &datagram(103, 1, 0, early, &[probe(103, 102, 0, ProbeOutcome::Ok, 1_000, 0)]),
        early,
    );
    let windows = agg.emit_due(T0 + W30 + 2 * SECOND);
    let view = BatchView::parse(&windows[0].parts[0].1).unwrap();
    let c = |node: u32| {
        let c = view.completeness.iter().find(|c| c.node_id.get() == node).unwrap();
        (c.datagrams_expected.get(), c.datagrams_received.get())
    };
    assert_eq!(c(101), (1, 1));
    assert_eq!(
        c(103),
        (1 + 2, 1),
        "10 s and 1 ns silent: two heartbeats' worth missing"
    );
}

/// The restarted sampler, without any saved state: it started 20.5 s
/// into the window, and heard 23 of the agent's datagrams. The window does
/// not read complete: the 21 s it did not see are expected at the agent's
/// cadence, measured from the sequence numbers it did see.
#[test]
fn a_sampler_started_mid_window_without_saved_state_reads_its_first_window_incomplete() {
    let started = T0 + 20_500 * MS;
    let mut agg = Aggregator::new(settings_30s(), topology(), started);
    // The agent has been running for a while: its numbers are far from 0.
    let mut agent = Agent { seq: 5_000, epoch: 1 };
    let mut emitted = Vec::new();
    for i in 52..83 {
        emitted.extend(agent.send(&mut agg, T0, i, true));
    }
    emitted.extend(agg.emit_due(T0 + W30 + 2 * SECOND));
    let (expected, received, flags) = agent_101(find(&emitted, T0));
    assert_eq!(received, 23, "datagrams 52..=74, sent 20.8 s to 29.6 s in");
    assert_eq!(flags, 0);
    assert!(
        (70..=76).contains(&expected),
        "75 sent in the window, 23 of them seen: {expected} expected"
    );
    assert!(f64::from(received) / f64::from(expected) < 0.9);
}

/// Agent 101 sending every 400 ms from `T0`, delivered to `agg` from
/// datagram `from` to `to` (exclusive), emitting what is due before each
/// arrival; returns the windows emitted and the checkpoint taken at the
/// last emission, as the service takes it.
fn deliver(
    agg: &mut Aggregator,
    epoch: u32,
    seqs: impl Iterator<Item = (u64, u32)>,
) -> (Vec<EmittedWindow>, Option<Checkpoint>) {
    let mut emitted = Vec::new();
    let mut checkpoint = None;
    for (i, seq) in seqs {
        let at = T0 + i * 400 * MS;
        let due = agg.emit_due(at + MS);
        if !due.is_empty() {
            checkpoint = Some(agg.checkpoint());
        }
        emitted.extend(due);
        assert!(matches!(
            agg.ingest(&one(epoch, seq, at), at + MS),
            Ingested::Accepted { .. }
        ));
    }
    (emitted, checkpoint)
}

/// Datagram `i` of one run numbered from 0, sent at `T0 + i × 400 ms`.
fn numbered(range: std::ops::Range<u64>) -> impl Iterator<Item = (u64, u32)> {
    range.map(|i| (i, i as u32))
}

/// The checkpoint as a restart finds it: saved in the spool directory and
/// loaded back.
fn through_the_spool(checkpoint: &Checkpoint) -> Checkpoint {
    let dir = tempfile::tempdir().unwrap();
    checkpoint.save(dir.path()).unwrap();
    Checkpoint::load(dir.path()).unwrap().unwrap()
}

/// Issue 17, the crash: the sampler emitted the first window at 32 s and
/// saved the agents' state, took 5 datagrams of the second window before
/// that and 20 after, and died at 40 s; restarted at 42 s on the same spool,
/// it counts in the second window all 75 datagrams the agent sent in it:
/// the 25 the dead process had (lost with it), the 5 sent while it was
/// down, and the 45 it received itself.
#[test]
fn a_sampler_restarted_on_its_saved_state_counts_what_it_missed() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let (first, checkpoint) = deliver(&mut agg, 1, numbered(0..100));
    assert_eq!(agent_101(find(&first, T0)), (75, 75, 0));
    let checkpoint = checkpoint.unwrap();
    assert_eq!(checkpoint.through_ns, T0 + W30);
    assert_eq!(
        checkpoint.agents[&101].pending, 5,
        "datagrams 75..=79, taken before the emission"
    );
    drop(agg); // killed at 40 s

    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    let restored = agg.restore(&through_the_spool(&checkpoint));
    assert_eq!(
        restored,
        Restored {
            agents: 1,
            current: true
        }
    );
    // A replay of what the dead process heard is not counted again.
    assert_eq!(
        agg.ingest(&one(1, 60, T0 + 24 * SECOND), T0 + W30 + 12 * SECOND),
        Ingested::Duplicate
    );
    let (second, _) = deliver(&mut agg, 1, numbered(105..160));
    assert_eq!(agent_101(find(&second, T0 + W30)), (75, 45, 0));
}

/// Issue 17, restarted too late for the saved state: the sampler came back
/// in the window after the one it died in, which no process emitted. The gap
/// since the saved number cannot be placed, so the first datagram counts
/// only itself; the 2 s of the window before the start are imputed at the
/// agent's cadence, and the window does not read complete. Replays are
/// still refused.
#[test]
fn a_sampler_restarted_on_state_too_old_imputes_what_came_before_it() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let (_, checkpoint) = deliver(&mut agg, 1, numbered(0..100));
    drop(agg);

    let started = T0 + 2 * W30 + 2 * SECOND;
    let mut agg = Aggregator::new(settings_30s(), topology(), started);
    let restored = agg.restore(&through_the_spool(&checkpoint.unwrap()));
    assert_eq!(
        restored,
        Restored {
            agents: 1,
            current: false
        }
    );
    assert_eq!(agg.ingest(&one(1, 79, T0 + 31 * SECOND), started), Ingested::Duplicate);
    let (emitted, _) = deliver(&mut agg, 1, numbered(156..233));
    let (expected, received, flags) = agent_101(find(&emitted, T0 + 2 * W30));
    assert_eq!((received, flags), (69, 0), "datagrams 156..=224");
    assert_eq!(expected, 69 + 5, "2 s before the start at 2.5 datagrams/s");
}

/// The agent restarted while the sampler was down: the new run counts from
/// 0 as a restart (not as loss of the old run's numbers), and what the dead
/// sampler had received into the window is still expected there.
#[test]
fn an_agent_restarted_while_the_sampler_was_down_is_a_restart_not_loss() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let (_, checkpoint) = deliver(&mut agg, 1, numbered(0..100));
    drop(agg);

    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    assert!(agg.restore(&checkpoint.unwrap()).current);
    // The agent's new run began at 40.4 s: datagram i is its number i − 101.
    let (emitted, _) = deliver(&mut agg, 2, (105..160).map(|i| (i, i as u32 - 101)));
    let (expected, received, flags) = agent_101(find(&emitted, T0 + W30));
    assert_eq!(flags, wire_format::completeness_flags::RESTARTED);
    assert_eq!(received, 45);
    assert_eq!(expected, 5 + 49, "the dead sampler's 5, and the new run's 0..=48");
    assert_eq!(agg.totals().agents[&101].restarts, 1);
}

/// A clean shutdown emits the open window early and saves the state; a
/// restart within that window counts the gap in its next part, so the two
/// parts together expect all 75.
#[test]
fn a_restart_after_a_clean_shutdown_counts_the_gap_in_the_next_part() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    deliver(&mut agg, 1, numbered(0..100));
    let (windows, resume) = agg.emit_all(T0 + 40 * SECOND);
    let early = windows.iter().find(|w| w.start_ns == T0 + W30).unwrap();
    assert_eq!(agent_101(early), (25, 25, 0), "datagrams 75..=99");
    let checkpoint = agg.checkpoint();
    assert_eq!(checkpoint.agents[&101].pending, 0);
    drop(agg);

    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    let (start, part) = resume.unwrap();
    agg.resume_window(start, part);
    assert!(agg.restore(&checkpoint).current);
    let (emitted, _) = deliver(&mut agg, 1, numbered(105..160));
    let rest = find(&emitted, T0 + W30);
    assert_eq!(rest.parts[0].0, 1);
    assert_eq!(agent_101(rest), (50, 45, 0), "100..=104 lost, 105..=149 received");
}

/// A host whose link went down 10 s into the first window, and a clean
/// restart of the sampler at 40 s, in the second: the first window expects
/// its 75, and the second's two parts (the one the shutdown emitted early,
/// the restarted sampler's) share its silence without counting any of it
/// twice: 75 in all.
#[test]
fn a_restart_within_a_silent_window_imputes_each_stretch_once() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let (_, _) = deliver(&mut agg, 1, numbered(0..25));
    let first = agg.emit_due(T0 + W30 + 2 * SECOND);
    assert_eq!(agent_101(find(&first, T0)), (75, 25, 0));
    let (windows, resume) = agg.emit_all(T0 + 40 * SECOND);
    let early = agent_101(find(&windows, T0 + W30));
    assert_eq!(early, (25, 0, wire_format::completeness_flags::SILENT), "30 s to 40 s");
    let checkpoint = through_the_spool(&agg.checkpoint());
    drop(agg);

    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    let (start, part) = resume.unwrap();
    agg.resume_window(start, part);
    assert!(agg.restore(&checkpoint).current);
    let rest = agent_101(find(&agg.emit_due(T0 + 2 * W30 + 2 * SECOND), T0 + W30));
    assert_eq!(rest, (50, 0, wire_format::completeness_flags::SILENT), "40 s to 60 s");
}

/// Windows of 5 s, as in the rack simulation.
fn settings_5s() -> Settings {
    Settings {
        window_ns: 5 * SECOND,
        ..settings()
    }
}

/// Agent 101 sending every 200 ms (datagram `i` at `T0 + i × 200 ms`,
/// number `i`), delivered unless `down` holds `i`; emits what is due before
/// each arrival, and up to `end`.
fn every_200ms(
    agg: &mut Aggregator,
    sent: std::ops::Range<u64>,
    down: std::ops::Range<u64>,
    end: u64,
) -> Vec<EmittedWindow> {
    let mut emitted = Vec::new();
    for i in sent {
        if down.contains(&i) {
            continue;
        }
        let at = T0 + i * 200 * MS;
        emitted.extend(agg.emit_due(at + MS));
        assert!(matches!(
            agg.ingest(&one(1, i as u32, at), at + MS),
            Ingested::Accepted { .. }
        ));
    }
    emitted.extend(agg.emit_due(end));
    emitted
}

/// The simulation's case: 5 s windows, an agent sending every 200 ms (its
/// cadence measured over spans crossing windows), its link down 2 s into
/// the third window and back 2.2 s into the fifth (after the fourth closed). The third window reads
/// incomplete: the 3 s of silence at its tail, 15 datagrams, are expected;
/// the fourth is SILENT with its 25; the fifth expects only its own 25.
#[test]
fn at_5s_windows_a_link_down_2s_into_a_window_reads_that_window_incomplete() {
    let w = 5 * SECOND;
    let mut agg = Aggregator::new(settings_5s(), topology(), T0);
    let emitted = every_200ms(&mut agg, 0..150, 60..111, T0 + 6 * w + 2 * SECOND);
    let at = |n: u64| agent_101(find(&emitted, T0 + n * w));
    assert_eq!(at(0), (25, 25, 0));
    assert_eq!(at(1), (25, 25, 0));
    let down = at(2);
    assert_eq!(down, (25, 10, 0), "the window the link went down in");
    assert!(down.0 > down.1);
    assert_eq!(at(3), (25, 0, wire_format::completeness_flags::SILENT));
    assert_eq!(at(4), (25, 14, 0), "the window it came back in: its own share only");
    assert_eq!(at(5), (25, 25, 0));
}

/// Without a measurement (the agent's first 5 s) the heartbeat rule stands:
/// 3 s of silence is not taken for it.
#[test]
fn at_5s_windows_silence_needs_a_measurement_or_two_heartbeats() {
    let mut agg = Aggregator::new(settings_5s(), topology(), T0);
    let emitted = every_200ms(&mut agg, 0..10, 0..0, T0 + 5 * SECOND + 2 * SECOND);
    assert_eq!(agent_101(find(&emitted, T0)), (10, 10, 0));
}

/// A shutdown emitted the open window early (part 0, datagrams 75..=99) and
/// was killed before it saved the agents' state after it: the state left is
/// the one saved when the window before was emitted. A restart within the
/// window finds the early part named in the resume file: the state is too
/// old, so the part it emits does not count again the pending datagrams and
/// the gap that part 0 counted; it imputes the 12 s before it started.
#[test]
fn a_restart_after_a_shutdown_killed_before_saving_does_not_count_twice() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let (_, old) = deliver(&mut agg, 1, numbered(0..100));
    let old = through_the_spool(&old.unwrap());
    assert_eq!((old.through_ns, old.agents[&101].pending), (T0 + W30, 5));
    let (windows, resume) = agg.emit_all(T0 + 40 * SECOND);
    assert_eq!(agent_101(find(&windows, T0 + W30)), (25, 25, 0));
    drop(agg); // killed before the new state was saved

    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    let (start, part) = resume.unwrap();
    assert_eq!((start, part), (T0 + W30, 1));
    agg.resume_window(start, part);
    assert_eq!(
        agg.restore(&old),
        Restored {
            agents: 1,
            current: false
        }
    );
    let (emitted, _) = deliver(&mut agg, 1, numbered(105..160));
    let rest = find(&emitted, T0 + W30);
    assert_eq!(rest.parts[0].0, 1);
    assert_eq!(
        agent_101(rest),
        (45 + 30, 45, 0),
        "received 105..=149, and 12 s at 2.5/s imputed: not the 5 pending nor the gap since 79 again"
    );

    // The same state after a clean shutdown that saved it: current.
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    deliver(&mut agg, 1, numbered(0..100));
    let (_, resume) = agg.emit_all(T0 + 40 * SECOND);
    let saved = agg.checkpoint();
    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    let (start, part) = resume.unwrap();
    agg.resume_window(start, part);
    assert!(agg.restore(&saved).current);
}

/// A restart on current state whose agent then sends nothing: the window
/// expects the dead process's pending datagrams and received none, so it is
/// SILENT, not a window that arrived 0 % complete.
#[test]
fn a_restored_agent_that_sends_nothing_reads_silent() {
    let mut agg = Aggregator::new(settings_30s(), topology(), T0);
    let (_, checkpoint) = deliver(&mut agg, 1, numbered(0..100));
    drop(agg);
    let mut agg = Aggregator::new(settings_30s(), topology(), T0 + W30 + 12 * SECOND);
    assert!(agg.restore(&checkpoint.unwrap()).current);
    let emitted = agg.emit_due(T0 + 2 * W30 + 2 * SECOND);
    let (expected, received, flags) = agent_101(find(&emitted, T0 + W30));
    assert_eq!(received, 0);
    assert!(expected >= 5, "the 5 pending, and the silence: {expected}");
    assert_eq!(flags, wire_format::completeness_flags::SILENT);
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

/// An agent sending with gaps between `base_ms` and twice that (any
/// cadence from 10 ms to heartbeats only, 5.2 s at most), over a network
/// that delays every datagram alike by `delay_ms`, through windows of
/// `settings`: every window reads complete.
fn live_agent(settings: Settings, base_ms: u64, jitter: &[u64], delay_ms: u64) -> Result<(), TestCaseError> {
    let window = settings.window_ns;
    let mut agg = Aggregator::new(settings, topology(), T0);
    let mut emitted = Vec::new();
    let mut sent = T0 + 100 * MS;
    for (seq, j) in jitter.iter().enumerate() {
        let arrival = sent + delay_ms * MS;
        emitted.extend(agg.emit_due(arrival));
        let ingested = agg.ingest(&one(1, seq as u32, sent), arrival);
        prop_assert!(matches!(ingested, Ingested::Accepted { .. }), "{:?}", ingested);
        sent += (base_ms + j % (base_ms + 1)) * MS;
    }
    emitted.extend(agg.emit_due(sent));
    for w in &emitted {
        let (expected, received, flags) = agent_101(w);
        prop_assert_eq!(
            (expected, flags),
            (received, 0),
            "window {}",
            (w.start_ns - T0) / window
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No false gaps: an agent that keeps to its cadence — gaps between one
    /// and two times a base from 10 ms to 2.6 s, so heartbeats only too
    /// (5.2 s at most, the heartbeat interval and a flush tick) — over a
    /// network that delays every datagram alike by up to most of the grace
    /// period, reads complete in every window, at 30 s windows as deployed
    /// and 5 s windows as simulated.
    #[test]
    fn a_live_agent_never_reads_incomplete(
        base_ms in prop_oneof![10u64..=1_000, 1_000u64..=2_600],
        jitter in prop::collection::vec(0u64..10_000, 50..400),
        delay_ms in 0u64..1_900,
    ) {
        live_agent(settings_30s(), base_ms, &jitter, delay_ms)?;
        // A gap of up to twice the base must fit in a window for every
        // window to hold a datagram: an agent silent for a whole 5 s window
        // (gaps up to 5.2 s with a base of 2.6 s) sent nothing in it, and
        // the window truthfully reads SILENT. (Agents probing every second,
        // as deployed and simulated, are never that quiet.)
        if 2 * base_ms < 5_000 {
            live_agent(settings_5s(), base_ms, &jitter, delay_ms)?;
        }
    }
}
