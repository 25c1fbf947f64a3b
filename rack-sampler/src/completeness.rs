//! Per-agent telemetry completeness from datagram sequence numbers.
//!
//! Each agent numbers its datagrams per epoch (one run of the agent), +1 per
//! datagram, wrapping at 2³². A [`SequenceTracker`] remembers, per agent, the
//! highest number seen and which of the last [`HISTORY`] numbers arrived, so
//! it can tell a new datagram from a duplicate or a late (reordered) one, and
//! how many datagrams the numbers say were sent.
//!
//! Loss before the sampler first hears from an agent cannot be known (a
//! sampler restarting must not count an agent's whole history as lost), so
//! the first datagram of an unknown run counts only itself as expected. A
//! new epoch means the agent restarted and numbered from 0 again, so
//! datagrams `0..=seq` of it are expected.

/// How many sequence numbers behind the highest the tracker remembers; an
/// older datagram is counted as reordered without a duplicate check.
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
        /// It arrived after a datagram numbered higher.
        reordered: bool,
        /// It is the first of a new agent run (epoch).
        restarted: bool,
    },
    /// A datagram already received: its records must not count twice.
    Duplicate,
}

/// Sequence state of one agent.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    run: Option<Run>,
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
}

impl SequenceTracker {
    /// The epoch of the agent's latest run, if any datagram arrived.
    pub fn epoch(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.epoch)
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
        if epoch != run.epoch {
            // Epochs are the agent's start time: an older one is a straggler
            // from the previous run, still real telemetry, not a restart.
            if epoch < run.epoch {
                return Arrival::New {
                    expected: 0,
                    reordered: true,
                    restarted: false,
                };
            }
            *run = Run::start(epoch, seq);
            return Arrival::New {
                expected: seq.saturating_add(1),
                reordered: false,
                restarted: true,
            };
        }
        // Serial-number arithmetic: ahead when within half the space.
        let ahead = seq.wrapping_sub(run.highest);
        if ahead != 0 && ahead < 1 << 31 {
            run.advance(ahead);
            run.highest = seq;
            run.set(0);
            return Arrival::New {
                expected: ahead,
                reordered: false,
                restarted: false,
            };
        }
        let behind = run.highest.wrapping_sub(seq);
        if behind >= HISTORY {
            return Arrival::New {
                expected: 0,
                reordered: true,
                restarted: false,
            };
        }
        if run.bit(behind) {
            return Arrival::Duplicate;
        }
        run.set(behind);
        Arrival::New {
            expected: 0,
            reordered: true,
            restarted: false,
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
        // A straggler of the old run is telemetry, not a second restart.
        assert_eq!(t.observe(10, 5001), new(0, true));
        assert_eq!(t.observe(11, 3), new(1, false));
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
        // Beyond the history: accepted as late, cannot be checked.
        assert_eq!(t.observe(1, highest - HISTORY), new(0, true));
    }

    #[test]
    fn a_jump_beyond_the_history_forgets_it() {
        let mut t = SequenceTracker::default();
        t.observe(1, 0);
        assert_eq!(t.observe(1, 5000), new(5000, false));
        assert_eq!(t.observe(1, 4999), new(0, true));
        assert_eq!(t.observe(1, 4999), Arrival::Duplicate);
    }
}
