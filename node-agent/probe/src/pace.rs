//! Pacing: when a probe tick is due and which targets it probes — a tick
//! every `interval`, at most the rate cap's share of probes per tick, the
//! pinglist's rotation round from the time since the start, and a cursor so
//! that a pinglist longer than one tick's budget is covered slice by slice.
//!
//! Time is passed in (`now`, a monotonic [`Instant`]), so the cap is tested
//! on a virtual clock and a wall-clock step never bursts or stalls probing.

use std::time::{Duration, Instant};

/// Probes one tick of `interval` may send under a cap of `max_per_sec`
/// (at least one, so a tiny cap still probes slowly rather than never).
/// When the pinglist is longer, each tick probes the next slice of it.
pub fn per_tick_budget(max_per_sec: u32, interval: Duration) -> usize {
    ((u128::from(max_per_sec) * interval.as_millis()) / 1_000).max(1) as usize
}

/// The shortest tick: a zero interval would make every call a tick.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Ticks, rotation rounds and the per-tick budget of one probe session.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    rotate_secs: u64,
    budget: usize,
    started: Instant,
    next_tick: Instant,
    cursor: usize,
}

impl Pacer {
    /// A pacer whose first tick is due at `now`, then one every `interval`,
    /// each probing at most [`per_tick_budget`]`(max_per_sec, interval)`
    /// targets; the rotation round advances every `rotate_secs` (at least 1).
    pub fn new(interval: Duration, rotate_secs: u64, max_per_sec: u32, now: Instant) -> Pacer {
        Pacer {
            interval: interval.max(MIN_INTERVAL),
            rotate_secs: rotate_secs.max(1),
            budget: per_tick_budget(max_per_sec, interval),
            started: now,
            next_tick: now,
            cursor: 0,
        }
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// The pinglist's rotation round at `now`: whole `rotate_secs` since the
    /// start, so inter-rack peers rotate at the same moments whatever the
    /// tick interval.
    pub fn round(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / self.rotate_secs
    }

    /// Takes the tick due at `now`, if one is, and returns its rotation
    /// round. The next tick is due one interval after this one was, or one
    /// interval after `now` when the caller fell a whole interval behind: a
    /// stalled driver skips the missed ticks rather than bursting to catch
    /// up, so any span of k intervals holds at most k + 1 ticks.
    pub fn tick(&mut self, now: Instant) -> Option<u64> {
        if now < self.next_tick {
            return None;
        }
        let following = self.next_tick + self.interval;
        self.next_tick = if now >= following {
            now + self.interval
        } else {
            following
        };
        Some(self.round(now))
    }

    /// This tick's slice of `targets` — the next [`per_tick_budget`] of them
    /// after the previous tick's, wrapping — and how many were left out to
    /// stay under the cap.
    pub fn pick<T: Copy>(&mut self, targets: &[T]) -> (Vec<T>, usize) {
        if targets.is_empty() {
            return (Vec::new(), 0);
        }
        let count = targets.len().min(self.budget);
        let picked = (0..count).map(|i| targets[(self.cursor + i) % targets.len()]).collect();
        self.cursor = (self.cursor + count) % targets.len();
        (picked, targets.len() - count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_budget_is_the_caps_share_of_a_tick_and_at_least_one() {
        assert_eq!(per_tick_budget(200, Duration::from_secs(1)), 200);
        assert_eq!(per_tick_budget(50, Duration::from_secs(1)), 50);
        assert_eq!(per_tick_budget(20, 100 * MS), 2);
        assert_eq!(per_tick_budget(1, 10 * MS), 1);
        assert_eq!(per_tick_budget(0, Duration::ZERO), 1);
    }

    #[test]
    fn ticks_come_every_interval_and_a_stalled_caller_does_not_burst() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(100 * MS, 60, 10, t0);
        assert_eq!(pacer.tick(t0), Some(0));
        assert_eq!(pacer.tick(t0), None, "one tick per interval");
        assert_eq!(pacer.tick(t0 + 99 * MS), None);
        // A little late: the next is still due on the original schedule.
        assert_eq!(pacer.tick(t0 + 130 * MS), Some(0));
        assert_eq!(pacer.next_tick(), t0 + 200 * MS);
        // Stalled for a second: one tick, and the schedule restarts from now.
        assert_eq!(pacer.tick(t0 + 1_250 * MS), Some(0));
        assert_eq!(pacer.tick(t0 + 1_250 * MS), None);
        assert_eq!(pacer.next_tick(), t0 + 1_350 * MS);
        // Called every millisecond for ten seconds: a hundred ticks.
        let mut pacer = Pacer::new(100 * MS, 60, 10, t0);
        let ticks = (0..10_000).filter(|&ms| pacer.tick(t0 + ms * MS).is_some()).count();
        assert_eq!(ticks, 100);
    }

    #[test]
    fn rounds_advance_every_rotate_secs() {
        let t0 = Instant::now();
        let pacer = Pacer::new(Duration::from_secs(1), 60, 10, t0);
        assert_eq!(pacer.round(t0 + Duration::from_secs(59)), 0);
        assert_eq!(pacer.round(t0 + Duration::from_secs(60)), 1);
        assert_eq!(pacer.round(t0 + Duration::from_secs(185)), 3);
        // A clock reading before the start is round 0, not a panic.
        assert_eq!(pacer.round(t0.checked_sub(MS).unwrap_or(t0)), 0);
        assert_eq!(Pacer::new(MS, 0, 1, t0).round(t0 + Duration::from_secs(3)), 3);
    }

    #[test]
    fn a_long_pinglist_is_covered_slice_by_slice() {
        let t0 = Instant::now();
        // 3 per tick out of 10.
        let mut pacer = Pacer::new(Duration::from_secs(1), 60, 3, t0);
        let targets: Vec<u32> = (0..10).collect();
        let slices: Vec<(Vec<u32>, usize)> = (0..4).map(|_| pacer.pick(&targets)).collect();
        assert_eq!(
            slices,
            [
                (vec![0, 1, 2], 7),
                (vec![3, 4, 5], 7),
                (vec![6, 7, 8], 7),
                (vec![9, 0, 1], 7)
            ]
        );
        // A list within the budget is probed whole.
        assert_eq!(pacer.pick(&[7, 8]), (vec![7, 8], 0));
        assert_eq!(pacer.pick::<u32>(&[]), (vec![], 0));
    }
}
