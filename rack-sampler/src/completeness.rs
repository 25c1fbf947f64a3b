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
//! its run, or of a run before the previous one) may be a replay, so it is
//! refused rather than accepted as late, and counted
//! ([`SequenceTracker::too_old`]). Numbers compare by serial-number
//! arithmetic, so wrapping is seamless: up to 2³¹ ahead of the highest is
//! ahead, anything else behind. A replay from more than 2³¹ datagrams ago
//! therefore reads as a jump ahead, the one case numbers alone cannot tell.
//!
//! Loss before the sampler first hears from an agent cannot be known (a
//! sampler restarting must not count an agent's whole history as lost), so
//! the first datagram of an unknown run counts only itself as expected. A
//! new epoch means the agent restarted and numbered from 0 again, so
//! datagrams `0..=seq` of it are expected.

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
    too_old: u64,
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
        // Epochs are the agent's start time: a later one is a restart, an
        // earlier one a straggler from a previous run.
        let (seen, straggler) = if epoch == run.epoch {
            (run.observe(seq), false)
        } else if epoch > run.epoch {
            self.previous = self.run.replace(Run::start(epoch, seq));
            return Arrival::New {
                expected: seq.saturating_add(1),
                reordered: false,
                restarted: true,
            };
        } else {
            // The previous run's stragglers are still real telemetry, checked
            // against its history like any other. An older run's state is
            // gone, so its datagrams cannot be told from replays.
            match self.previous.as_mut() {
                Some(previous) if previous.epoch == epoch => (previous.observe(seq), true),
                _ => (Seen::TooOld, true),
            }
        };
        match seen {
            Seen::New { expected, late } => Arrival::New {
                expected,
                reordered: late || straggler,
                restarted: false,
            },
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
