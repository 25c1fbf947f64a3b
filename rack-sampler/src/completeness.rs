//! Per-agent telemetry completeness from datagram sequence numbers.
//!
//! Each agent numbers its datagrams per epoch (one run of the agent), +1 per
//! datagram, wrapping at 2³². A [`SequenceTracker`] remembers, per agent and
//! for its latest run and the run before it, the highest number seen and
//! which of the last [`HISTORY`] numbers arrived, so it can tell a new
//! datagram from a duplicate or a late (reordered) one, and how many
//! datagrams the numbers say were sent.
//!
//! A datagram is counted at most once: one too old for the history to say
//! whether it already arrived (more than [`HISTORY`] behind the highest of
//! its run, or of a known run before the previous one) may be a replay, so
//! it is refused rather than accepted as late, and counted
//! ([`SequenceTracker::too_old`]). Numbers compare by serial-number
//! arithmetic, so wrapping is seamless: up to 2³¹ ahead of the highest is
//! ahead, anything else behind. A replay from more than 2³¹ datagrams ago
//! therefore reads as a jump ahead, the one case numbers alone cannot tell.
//!
//! **Runs.** An epoch is the agent's wall-clock start in seconds, so its
//! value says nothing reliable about order: after the agent's clock steps
//! back, a new run's epoch is *lower* than the last. The tracker therefore
//! orders runs by when it first heard of them, not by value. It remembers
//! the epochs of the last [`RUNS`] runs: a datagram of the latest or the
//! previous run is checked against that run's history; one of an older
//! remembered run is refused as too old; one of any other epoch, higher or
//! lower, starts a new run (a restart). The limits of that rule:
//! - a replay from a run older than the last [`RUNS`] reads as a restart and
//!   is counted once per number, like a new run (and pushes the real run
//!   back to "previous", where it is still accepted);
//! - a straggler from a run the tracker never heard of, arriving after the
//!   run that followed it, reads as a restart too;
//! - a run whose epoch equals a remembered older run's (the clock stepped
//!   back onto the second of an earlier start) is refused until the agent
//!   starts again;
//! - a restart within the same second as the previous start keeps the epoch
//!   and numbers from 0 again; once the old run had passed [`HISTORY`]
//!   numbers, the new run's datagrams are exactly what a replay of the old
//!   run's looks like, so they are refused (replay safety first) until its
//!   numbers overtake the old run's highest. The header carries nothing else
//!   the tracker could tell the two apart by: the send time is the agent's
//!   clock, which is what stepped.
//!
//! Loss before the sampler first hears from an agent cannot be known from
//! the numbers alone (a sampler starting must not count an agent's whole
//! history as lost), so the first datagram of the first run heard of counts
//! only itself as expected. A new epoch means the agent restarted and
//! numbered from 0 again, so datagrams `0..=seq` of it are expected.
//!
//! **Across a restart of the sampler.** [`SequenceTracker::saved`] is what
//! the sampler keeps of a tracker in its spool directory
//! ([`crate::checkpoint`]): each remembered run's epoch and, for the latest
//! two, the highest number heard. [`SequenceTracker::restored`] takes it up
//! with every number at or below those highest taken as heard (it was
//! counted, or its window is gone), so a replay or duplicate of what the
//! previous process saw is not counted again, and the agent's next
//! datagram counts the gap since the saved number as expected: what it sent
//! while the sampler was down. When the saved state is too old to place
//! that gap in a window (*unanchored*), the next datagram of the latest run
//! counts only itself, as a first-heard agent's does; a new epoch is a
//! restart either way.

/// How many runs (epochs) of an agent the tracker remembers: the latest, the
/// previous (both with their histories) and older ones by epoch alone, whose
/// datagrams are refused as too old. A few, so that the run before a restart
/// or two is not mistaken for a new one, at the cost of a few words per agent.
pub const RUNS: usize = 4;

/// How many sequence numbers behind the highest the tracker remembers; an
/// older datagram is refused as too old.
pub const HISTORY: u32 = 1024;

const WORDS: usize = (HISTORY / 64) as usize;

/// What one datagram's header said, in the tracker's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A datagram not seen before. `expected` is how many datagrams the
    /// sequence numbers now say were sent that had not been accounted for
    /// (1 for the next in order, more after a gap, 0 for a late one).
    New {
        /// Newly expected datagrams.
        expected: u32,
        /// It arrived after a datagram numbered higher (or of a later run).
        reordered: bool,
        /// It is the first of a new agent run (epoch).
        restarted: bool,
    },
    /// A datagram already received: its records must not count twice.
    Duplicate,
    /// A datagram too far behind the newest to tell whether it was received
    /// (a replay, or so late it is outside every open window): refused,
    /// and counted by [`SequenceTracker::too_old`].
    TooOld,
}

/// Sequence state of one agent.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    run: Option<Run>,
    /// The run before `run`, whose stragglers may still arrive.
    previous: Option<Run>,
    /// Epochs of the runs before `previous`, latest first.
    older: [Option<u32>; RUNS - 2],
    too_old: u64,
    /// Restored from a state too old to count the gap up to the next
    /// datagram of the latest run: it counts only itself.
    unanchored: bool,
}

/// What a sampler keeps of an agent's [`SequenceTracker`] across its own
/// restart: the runs it remembers, latest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRuns {
    /// The latest run.
    pub latest: SavedRun,
    /// The run before it.
    pub previous: Option<SavedRun>,
    /// Epochs of the runs before `previous`, latest first (at most
    /// [`RUNS`] − 2 are taken up).
    pub older: Vec<u32>,
}

/// One run of an agent: its epoch and the highest number heard of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedRun {
    /// The run's epoch.
    pub epoch: u32,
    /// The highest sequence number heard (by serial-number order).
    pub highest: u32,
}

/// Where a number stands in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Not seen: `expected` newly sent, `late` behind the highest.
    New {
        expected: u32,
        late: bool,
    },
    Duplicate,
    /// Behind the history: it cannot be told from a duplicate.
    TooOld,
}

#[derive(Debug, Clone)]
struct Run {
    epoch: u32,
    highest: u32,
    /// Bit `i` set: `highest - i` arrived.
    seen: [u64; WORDS],
}

impl Run {
    /// A run taken up from saved state: every number of the history at or
    /// below `highest` counts as heard.
    fn restored(saved: SavedRun) -> Run {
        Run {
            epoch: saved.epoch,
            highest: saved.highest,
            seen: [u64::MAX; WORDS],
        }
    }

    fn saved(&self) -> SavedRun {
        SavedRun {
            epoch: self.epoch,
            highest: self.highest,
        }
    }

    fn start(epoch: u32, seq: u32) -> Run {
        let mut seen = [0; WORDS];
        seen[0] = 1;
        Run {
            epoch,
            highest: seq,
            seen,
        }
    }

    fn bit(&self, behind: u32) -> bool {
        self.seen[(behind / 64) as usize] & (1 << (behind % 64)) != 0
    }

    fn set(&mut self, behind: u32) {
        self.seen[(behind / 64) as usize] |= 1 << (behind % 64);
    }

    /// Moves the window forward by `by` numbers.
    fn advance(&mut self, by: u32) {
        if by >= HISTORY {
            self.seen = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        for i in (0..WORDS).rev() {
            let from = i.checked_sub(words);
            let low = from.map_or(0, |f| self.seen[f]);
            let lower = from.and_then(|f| f.checked_sub(1)).map_or(0, |f| self.seen[f]);
            self.seen[i] = if bits == 0 {
                low
            } else {
                (low << bits) | (lower >> (64 - bits))
            };
        }
    }

    /// Accounts `seq` in this run.
    fn observe(&mut self, seq: u32) -> Seen {
        // Serial-number arithmetic: ahead when within half the space.
        let ahead = seq.wrapping_sub(self.highest);
        if ahead != 0 && ahead < 1 << 31 {
            self.advance(ahead);
            self.highest = seq;
            self.set(0);
            return Seen::New {
                expected: ahead,
                late: false,
            };
        }
        let behind = self.highest.wrapping_sub(seq);
        if behind >= HISTORY {
            return Seen::TooOld;
        }
        if self.bit(behind) {
            return Seen::Duplicate;
        }
        self.set(behind);
        Seen::New {
            expected: 0,
            late: true,
        }
    }
}

impl SequenceTracker {
    /// The epoch of the agent's latest run, if any datagram arrived.
    pub fn epoch(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.epoch)
    }

    /// Datagrams refused because they were too old to tell from a
    /// duplicate (reported as [`Arrival::TooOld`]).
    pub fn too_old(&self) -> u64 {
        self.too_old
    }

    /// The runs to save across a restart of the sampler; `None` if no
    /// datagram ever arrived.
    pub fn saved(&self) -> Option<SavedRuns> {
        let latest = self.run.as_ref()?.saved();
        Some(SavedRuns {
            latest,
            previous: self.previous.as_ref().map(Run::saved),
            older: self.older.iter().flatten().copied().collect(),
        })
    }

    /// A tracker taken up from `saved` (see the module documentation). If
    /// `anchored`, the next datagram of the latest run counts as expected
    /// every number since the saved highest; otherwise only itself.
    pub fn restored(saved: &SavedRuns, anchored: bool) -> SequenceTracker {
        let mut older = [None; RUNS - 2];
        for (slot, &epoch) in older.iter_mut().zip(&saved.older) {
            *slot = Some(epoch);
        }
        SequenceTracker {
            run: Some(Run::restored(saved.latest)),
            previous: saved.previous.map(Run::restored),
            older,
            too_old: 0,
            unanchored: !anchored,
        }
    }

    /// Accounts one datagram of `epoch` numbered `seq`.
    pub fn observe(&mut self, epoch: u32, seq: u32) -> Arrival {
        let Some(run) = self.run.as_mut() else {
            self.run = Some(Run::start(epoch, seq));
            return Arrival::New {
                expected: 1,
                reordered: false,
                restarted: false,
            };
        };
        // Runs are known by their epoch, whatever its value: the agent's
        // clock may have stepped back, so a lower epoch may well be a restart.
        let (seen, straggler) = if epoch == run.epoch {
            (run.observe(seq), false)
        } else if let Some(previous) = self.previous.as_mut().filter(|p| p.epoch == epoch) {
            // The previous run's stragglers are still real telemetry, checked
            // against its history like any other.
            (previous.observe(seq), true)
        } else if self.older.contains(&Some(epoch)) {
            // An older run's history is gone, so its datagrams cannot be
            // told from replays.
            (Seen::TooOld, true)
        } else {
            let new = Run::start(epoch, seq);
            if let Some(previous) = self.previous.replace(std::mem::replace(run, new)) {
                self.older.rotate_right(1);
                self.older[0] = Some(previous.epoch);
            }
            self.unanchored = false;
            return Arrival::New {
                expected: seq.saturating_add(1),
                reordered: false,
                restarted: true,
            };
        };
        match seen {
            Seen::New { expected, late } => {
                // Unanchored, a gap up to the latest run's next number may
                // span windows nobody emitted: it is not counted.
                let expected = if !late && !straggler && std::mem::take(&mut self.unanchored) {
                    1
                } else {
                    expected
                };
                Arrival::New {
                    expected,
                    reordered: late || straggler,
                    restarted: false,
                }
            }
            Seen::Duplicate => Arrival::Duplicate,
            Seen::TooOld => {
                self.too_old += 1;
                Arrival::TooOld
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(expected: u32, reordered: bool) -> Arrival {
        Arrival::New {
            expected,
            reordered,
            restarted: false,
        }
    }

    #[test]
    fn in_order_gaps_duplicates_and_late_arrivals() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.observe(7, 100), new(1, false));
        assert_eq!(t.observe(7, 101), new(1, false));
        assert_eq!(t.observe(7, 105), new(4, false)); // 102..=104 missing so far
        assert_eq!(t.observe(7, 103), new(0, true)); // late, not lost after all
        assert_eq!(t.observe(7, 103), Arrival::Duplicate);
        assert_eq!(t.observe(7, 105), Arrival::Duplicate);
        assert_eq!(t.observe(7, 100), Arrival::Duplicate);
        assert_eq!(t.observe(7, 102), new(0, true));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.observe(1, u32::MAX - 1), new(1, false));
        assert_eq!(t.observe(1, u32::MAX), new(1, false));
        assert_eq!(t.observe(1, 0), new(1, false));
        assert_eq!(t.observe(1, 2), new(2, false));
        assert_eq!(t.observe(1, u32::MAX), Arrival::Duplicate);
        assert_eq!(t.observe(1, 1), new(0, true));
    }

    #[test]
    fn a_new_epoch_is_a_restart_counted_from_zero() {
        let mut t = SequenceTracker::default();
        t.observe(10, 5000);
        assert_eq!(
            t.observe(11, 2),
            Arrival::New {
                expected: 3,
                reordered: false,
                restarted: true
            }
        );
        assert_eq!(t.epoch(), Some(11));
        // A straggler of the old run is telemetry, not a second restart:
        // late, and one more datagram that run sent.
        assert_eq!(t.observe(10, 5001), new(1, true));
        assert_eq!(t.observe(10, 4999), new(0, true));
        assert_eq!(t.observe(11, 3), new(1, false));
        // Checked against that run's history like any other.
        assert_eq!(t.observe(10, 5001), Arrival::Duplicate);
        assert_eq!(t.observe(10, 5001 - HISTORY), Arrival::TooOld);
        assert_eq!(t.too_old(), 1);
    }

    #[test]
    fn a_run_before_the_previous_is_refused() {
        let mut t = SequenceTracker::default();
        t.observe(10, 0);
        t.observe(11, 0);
        t.observe(12, 0);
        assert_eq!(t.observe(10, 0), Arrival::TooOld);
        assert_eq!(t.observe(10, 1), Arrival::TooOld, "unseen, but cannot be told");
        assert_eq!(t.observe(11, 1), new(1, true));
        assert_eq!(t.too_old(), 2);
    }

    fn restart(expected: u32) -> Arrival {
        Arrival::New {
            expected,
            reordered: false,
            restarted: true,
        }
    }

    /// The agent's clock stepped back: its new run has a lower epoch than
    /// the last, and is a restart like any other.
    #[test]
    fn a_lower_epoch_never_seen_is_a_restart() {
        let mut t = SequenceTracker::default();
        t.observe(2_000, 5_000);
        assert_eq!(t.observe(1_990, 0), restart(1));
        assert_eq!(t.epoch(), Some(1_990));
        assert_eq!(t.observe(1_990, 1), new(1, false));
        assert_eq!(t.observe(1_990, 1), Arrival::Duplicate);
        // The run before it is still the previous one, stragglers welcome.
        assert_eq!(t.observe(2_000, 5_001), new(1, true));
        // Later restarts, in any direction, push it back; once older than
        // the previous run, its datagrams are refused.
        assert_eq!(t.observe(2_005, 3), restart(4));
        assert_eq!(t.observe(1_980, 0), restart(1));
        assert_eq!(t.observe(2_000, 5_002), Arrival::TooOld);
        assert_eq!(t.observe(1_990, 2), Arrival::TooOld);
        assert_eq!(t.observe(2_005, 4), new(1, true));
        assert_eq!(t.too_old(), 2);
        // Only the last `RUNS` epochs are remembered: one more restart
        // forgets 2 000, which then reads as a new run.
        assert_eq!(t.observe(1_970, 0), restart(1));
        assert_eq!(t.observe(1_990, 7), Arrival::TooOld);
        assert_eq!(t.observe(2_000, 0), restart(1));
    }

    /// A restart within the same second keeps the epoch: once the old run
    /// passed the history, the new one's first numbers look exactly like a
    /// replay and are refused until they overtake the old run's highest.
    #[test]
    fn a_restart_within_the_same_epoch_is_refused_until_it_overtakes() {
        let mut t = SequenceTracker::default();
        for seq in 0..HISTORY + 10 {
            t.observe(5, seq);
        }
        assert_eq!(t.observe(5, 0), Arrival::TooOld);
        assert_eq!(t.observe(5, HISTORY + 10), new(1, false));
    }

    #[test]
    fn replays_older_than_the_history_are_refused_across_the_wrap() {
        let mut t = SequenceTracker::default();
        let first = u32::MAX - 100;
        for i in 0..2_000u32 {
            assert!(matches!(t.observe(1, first.wrapping_add(i)), Arrival::New { .. }));
        }
        for i in 0..2_000u32 {
            let expected = if i < 2_000 - HISTORY {
                Arrival::TooOld
            } else {
                Arrival::Duplicate
            };
            assert_eq!(t.observe(1, first.wrapping_add(i)), expected, "{i}");
        }
        assert_eq!(t.too_old(), u64::from(2_000 - HISTORY));
    }

    #[test]
    fn history_slides_across_word_boundaries() {
        let mut t = SequenceTracker::default();
        for seq in (0..3000).step_by(3) {
            t.observe(1, seq);
        }
        let highest = 2997;
        for behind in 0..HISTORY {
            let seq = highest - behind;
            let expected = if seq % 3 == 0 { Arrival::Duplicate } else { new(0, true) };
            assert_eq!(t.observe(1, seq), expected, "seq {seq}");
        }
        // Beyond the history: it cannot be checked, so it is refused.
        assert_eq!(t.observe(1, highest - HISTORY), Arrival::TooOld);
        assert_eq!(t.too_old(), 1);
    }

    /// Taken up after a restart of the sampler, a tracker does not count
    /// again what the previous process heard, and the agent's next datagram
    /// counts what it sent meanwhile.
    #[test]
    fn a_restored_tracker_counts_the_gap_since_the_saved_number() {
        let mut t = SequenceTracker::default();
        t.observe(6, 0);
        t.observe(7, 2_000);
        for seq in 0..=40 {
            t.observe(8, seq);
        }
        let saved = t.saved().unwrap();
        assert_eq!(
            saved,
            SavedRuns {
                latest: SavedRun { epoch: 8, highest: 40 },
                previous: Some(SavedRun {
                    epoch: 7,
                    highest: 2_000
                }),
                older: vec![6],
            }
        );
        let mut r = SequenceTracker::restored(&saved, true);
        assert_eq!(r.saved(), Some(saved));
        assert_eq!(r.epoch(), Some(8));
        assert_eq!(r.observe(8, 40), Arrival::Duplicate);
        assert_eq!(r.observe(8, 0), Arrival::Duplicate);
        assert_eq!(r.observe(7, 2_000 - HISTORY), Arrival::TooOld);
        assert_eq!(r.observe(6, 1), Arrival::TooOld, "a run before the previous");
        // Sent while the sampler was down: 41..=49 missing so far.
        assert_eq!(r.observe(8, 50), new(10, false));
        assert_eq!(r.observe(8, 45), new(0, true));
        // The previous run's numbers beyond its highest are still telemetry.
        assert_eq!(r.observe(7, 2_001), new(1, true));
        assert_eq!(r.too_old(), 2);
    }

    /// Taken up from a state too old to place the gap, the latest run's next
    /// datagram counts only itself; a new epoch is a restart all the same.
    #[test]
    fn an_unanchored_tracker_counts_only_the_next_datagram() {
        let mut t = SequenceTracker::default();
        for seq in 0..=40 {
            t.observe(8, seq);
        }
        let saved = t.saved().unwrap();
        let mut r = SequenceTracker::restored(&saved, false);
        assert_eq!(r.observe(8, 30), Arrival::Duplicate, "still no replay");
        assert_eq!(r.observe(8, 5_000), new(1, false));
        assert_eq!(r.observe(8, 5_002), new(2, false));

        let mut r = SequenceTracker::restored(&saved, false);
        assert_eq!(r.observe(9, 3), restart(4));
        assert_eq!(r.observe(8, 41), new(1, true), "the old run's straggler");
        assert_eq!(r.observe(9, 5), new(2, false));
    }

    #[test]
    fn a_jump_beyond_the_history_forgets_it() {
        let mut t = SequenceTracker::default();
        t.observe(1, 0);
        assert_eq!(t.observe(1, 5000), new(5000, false));
        assert_eq!(t.observe(1, 4999), new(0, true));
        assert_eq!(t.observe(1, 4999), Arrival::Duplicate);
        assert_eq!(t.observe(1, 0), Arrival::TooOld);
        assert_eq!(t.too_old(), 1);
    }
}
