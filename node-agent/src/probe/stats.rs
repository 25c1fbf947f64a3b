//! [`ProbeStats`]: the probe counters behind the agent's metrics
//! (`flowmesh_agent_probes_total{outcome}` and friends, see
//! `telemetry`), shared by the responder and the prober tasks.

use std::sync::{Mutex, MutexGuard};

use node_agent_probe::SessionStats;

/// Counters of the probing side, for the agent's metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Requests sent.
    pub sent: u64,
    /// Replies matched in time.
    pub answered: u64,
    /// Probes that timed out.
    pub timed_out: u64,
    /// Replies that came after their probe had timed out.
    pub late: u64,
    /// Replies for a probe already answered.
    pub duplicate: u64,
    /// Packets that were not valid probe packets.
    pub malformed: u64,
    /// Requests answered by the responder.
    pub responded: u64,
    /// Probes skipped to stay under `probes.max_probes_per_sec`.
    pub rate_limited: u64,
}

impl ProbeStats {
    /// Adds what a probe session counted (since the previous call).
    pub fn add(&mut self, session: &SessionStats) {
        self.sent += session.sent;
        self.answered += session.answered;
        self.timed_out += session.timed_out;
        self.late += session.late;
        self.duplicate += session.duplicate;
        self.malformed += session.malformed;
        self.rate_limited += session.rate_limited;
    }
}

/// The shared counters, even if a task panicked holding them.
pub(crate) fn lock(stats: &Mutex<ProbeStats>) -> MutexGuard<'_, ProbeStats> {
    stats.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_counts_add_to_the_shared_ones() {
        let mut shared = ProbeStats {
            malformed: 2,
            responded: 5,
            ..ProbeStats::default()
        };
        let before = SessionStats {
            sent: 10,
            malformed: 1,
            ..SessionStats::default()
        };
        let after = SessionStats {
            sent: 13,
            answered: 2,
            timed_out: 1,
            late: 1,
            duplicate: 1,
            malformed: 4,
            rate_limited: 7,
            failed: 1,
            follow_ups_missing: 0,
        };
        shared.add(&after.since(&before));
        assert_eq!(
            shared,
            ProbeStats {
                sent: 3,
                answered: 2,
                timed_out: 1,
                late: 1,
                duplicate: 1,
                // The responder's 2 and the prober's 3 new ones.
                malformed: 5,
                responded: 5,
                rate_limited: 7,
            }
        );
    }
}
