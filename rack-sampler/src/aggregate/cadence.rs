//! Agents' datagram cadence, and what a window is missing that sequence
//! numbers cannot show (yet).
//!
//! Sequence numbers show a loss once a later datagram arrives. Two stretches
//! of a window hide it from them:
//! - **Silence.** An agent's datagrams stop (its host's link went down, the
//!   agent died): the gap shows only when it is heard again, in a later
//!   window, or never. An agent that is alive sends at least one datagram
//!   per heartbeat interval (`aggregate.agent_heartbeat_secs`, which must be
//!   at least the agents' `uplink.heartbeat_secs`; they check it on each
//!   flush tick, so a little later). When a window closes, an agent whose
//!   last datagram arrived, before the window's end, longer ago than
//!   [`SILENCE_INTERVALS`] of its measured mean intervals (at least
//!   [`SILENCE_FLOOR_NS`]; at most, and without a measurement, **two
//!   heartbeat intervals**) is silent from that arrival to the end. Arrivals
//!   count until the close (`grace` after the end), so a datagram late by up
//!   to the grace period is not taken for silence.
//! - **Before the sampler started**, when nothing tells it what the agent
//!   sent then (no saved state, or state too old to place the gap: see
//!   [`crate::checkpoint`]): the part of the window the sampler starts in
//!   that came before it started, for an agent heard in that window whose
//!   run (epoch) began before the sampler did.
//!
//! Either stretch is *imputed*: the datagrams the agent's cadence says it
//! sent in it are added to the window's expected count, and none to its
//! received count, so the window reads incomplete by about what it misses.
//! The cadence is measured from the agent's own sequence numbers: over a
//! span of its in-order datagrams of one run, carried across windows, from
//! the first to the latest, (highest − first) numbers over the time between
//! their arrivals, once that is at least one heartbeat interval; the next
//! span starts there. The latest measurement stands until the next; with
//! none, one datagram per heartbeat interval, what any live agent sends.
//! Numbers, not arrivals, so a lossy agent's cadence is what it sent (and
//! its datagrams lost at a window's tail read as silence, about as many as
//! were lost).
//!
//! Imputed silence is carried: when the agent is heard again, its sequence
//! gap, now known exactly, counts as expected only what was not imputed
//! already, so summed over windows the expected count is what the numbers
//! say. An estimate that was high (the agent was stopped and sent nothing,
//! or restarted) leaves the excess with the silent windows: telemetry they
//! should have had and did not.
//!
//! No false gap for a healthy agent that keeps to its cadence (gaps up to
//! twice its mean, well under four, or under the floor; heartbeats only,
//! under two heartbeat intervals): at the close its last arrival is less
//! than one of its gaps before the window's end. An agent whose cadence
//! drops abruptly (busy, then heartbeats only) can have its first quiet
//! stretch at a window's end taken for silence. Two consecutive heartbeats
//! lost at a window's end do read as silence, and then about as many
//! datagrams as were lost are imputed.

/// Datagrams an agent sends over a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Datagrams sent…
    pub datagrams: u64,
    /// …over this long, ns (never 0).
    pub over_ns: u64,
}

impl Cadence {
    /// What any live agent sends: one datagram per heartbeat interval.
    pub fn heartbeat(heartbeat_ns: u64) -> Cadence {
        Cadence {
            datagrams: 1,
            over_ns: heartbeat_ns.max(1),
        }
    }

    /// Whole datagrams sent over `stretch_ns` at this cadence.
    pub fn over(&self, stretch_ns: u64) -> u64 {
        let sent = u128::from(self.datagrams) * u128::from(stretch_ns) / u128::from(self.over_ns.max(1));
        u64::try_from(sent).unwrap_or(u64::MAX)
    }
}

/// An agent's datagrams of one run that arrived in order (across windows):
/// the first and the latest, by number and arrival (sampler's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    epoch: u32,
    first: (u32, u64),
    latest: (u32, u64),
}

impl Span {
    /// Takes datagram `seq` of run `epoch`, arrived at `arrival_ns` in order
    /// (the highest of its run so far), into `span`; one of another run
    /// starts the span again.
    pub(super) fn extend(span: &mut Option<Span>, epoch: u32, seq: u32, arrival_ns: u64) {
        match span {
            Some(s) if s.epoch == epoch => s.latest = (seq, arrival_ns),
            _ => {
                *span = Some(Span {
                    epoch,
                    first: (seq, arrival_ns),
                    latest: (seq, arrival_ns),
                })
            }
        }
    }

    /// Takes datagram `seq` of run `epoch`, arrived in order at
    /// `arrival_ns`, into the agent's span (carried across windows); once
    /// the span lasts at least `min_ns`, returns the cadence it shows and
    /// starts the next span at that datagram.
    pub(super) fn measure(
        span: &mut Option<Span>,
        epoch: u32,
        seq: u32,
        arrival_ns: u64,
        min_ns: u64,
    ) -> Option<Cadence> {
        Span::extend(span, epoch, seq, arrival_ns);
        let s = (*span)?;
        let measured = s.cadence(min_ns)?;
        *span = Some(Span {
            epoch,
            first: s.latest,
            latest: s.latest,
        });
        Some(measured)
    }

    /// The cadence the span shows, if it lasts at least `min_ns`.
    pub(super) fn cadence(&self, min_ns: u64) -> Option<Cadence> {
        let over_ns = self.latest.1.saturating_sub(self.first.1);
        (over_ns >= min_ns.max(1)).then(|| Cadence {
            datagrams: u64::from(self.latest.0.wrapping_sub(self.first.0)),
            over_ns,
        })
    }
}

/// An agent whose measured cadence says it sends a datagram every `m` ns
/// is silent once nothing arrived from it for more than
/// `SILENCE_INTERVALS × m`…
pub const SILENCE_INTERVALS: u64 = 4;

/// …or for more than this (ns), whichever is longer…
pub const SILENCE_FLOOR_NS: u64 = 1_000_000_000;

/// How long after an agent's last arrival it counts as silent: with a
/// measured `cadence`, [`SILENCE_INTERVALS`] mean intervals between its
/// datagrams, at least [`SILENCE_FLOOR_NS`]; never more than two heartbeat
/// intervals, what it is without a measurement (any live agent sends at
/// least once per heartbeat interval).
pub(super) fn silence_after_ns(cadence: Option<Cadence>, heartbeat_ns: u64) -> u64 {
    let heartbeats = heartbeat_ns.saturating_mul(2);
    match cadence {
        Some(c) => {
            let interval = c.over_ns / c.datagrams.max(1);
            interval
                .saturating_mul(SILENCE_INTERVALS)
                .max(SILENCE_FLOOR_NS)
                .min(heartbeats)
        }
        None => heartbeats,
    }
}

/// How long an agent last heard at `last_seen_ns` was silent in the part
/// `[from, until)` of a window not closed before (`until`: its end, or the
/// close if earlier): from that arrival (or `from`) to `until`, if it is
/// more than `after_ns` ([`silence_after_ns`]) before `until`; otherwise 0.
pub(super) fn silent_ns(last_seen_ns: u64, from: u64, until: u64, after_ns: u64) -> u64 {
    if until.saturating_sub(last_seen_ns) <= after_ns {
        return 0;
    }
    until.saturating_sub(last_seen_ns.max(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn cadence_counts_whole_datagrams_exactly() {
        let c = Cadence {
            datagrams: 37,
            over_ns: 14_800_000_000,
        };
        assert_eq!(c.over(30 * S), 75);
        assert_eq!(c.over(15_199_000_000), 37);
        assert_eq!(c.over(0), 0);
        assert_eq!(Cadence::heartbeat(5 * S).over(10 * S + 1), 2);
        assert_eq!(Cadence::heartbeat(5 * S).over(10 * S - 1), 1);
        let huge = Cadence {
            datagrams: u64::MAX,
            over_ns: 1,
        };
        assert_eq!(huge.over(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_span_measures_one_run_over_at_least_the_minimum() {
        let mut span = None;
        Span::extend(&mut span, 1, 100, 10 * S);
        assert_eq!(span.unwrap().cadence(1), None, "one datagram shows no cadence");
        Span::extend(&mut span, 1, 110, 14 * S);
        assert_eq!(span.unwrap().cadence(5 * S), None, "4 s is too short");
        Span::extend(&mut span, 1, 125, 20 * S);
        assert_eq!(
            span.unwrap().cadence(5 * S),
            Some(Cadence {
                datagrams: 25,
                over_ns: 10 * S
            })
        );
        // A restart starts over; numbers wrap.
        Span::extend(&mut span, 2, u32::MAX, 21 * S);
        Span::extend(&mut span, 2, 9, 31 * S);
        assert_eq!(
            span.unwrap().cadence(5 * S),
            Some(Cadence {
                datagrams: 10,
                over_ns: 10 * S
            })
        );
    }

    #[test]
    fn silence_is_more_than_two_heartbeat_intervals_without_a_measurement() {
        let (start, until, h) = (100 * S, 130 * S, silence_after_ns(None, 5 * S));
        assert_eq!(h, 10 * S);
        assert_eq!(silent_ns(120 * S, start, until, h), 0);
        assert_eq!(silent_ns(120 * S - 1, start, until, h), 10 * S + 1);
        assert_eq!(silent_ns(50 * S, start, until, h), 30 * S, "silent all window");
        assert_eq!(silent_ns(0, start, until, h), 30 * S);
        assert_eq!(silent_ns(131 * S, start, until, h), 0, "heard after the end");
        assert_eq!(silent_ns(50 * S, start, 90 * S, h), 0, "a window not begun");
    }

    #[test]
    fn silence_follows_the_measured_cadence_within_bounds() {
        let every = |ms: u64| {
            Some(Cadence {
                datagrams: 25,
                over_ns: 25 * ms * 1_000_000,
            })
        };
        let h = 5 * S;
        assert_eq!(silence_after_ns(every(500), h), 2 * S, "four intervals");
        assert_eq!(silence_after_ns(every(100), h), S, "the floor");
        assert_eq!(silence_after_ns(every(5_000), h), 10 * S, "two heartbeats at most");
        let none = Some(Cadence {
            datagrams: 0,
            over_ns: 7 * S,
        });
        assert_eq!(silence_after_ns(none, h), 10 * S);
        // A 200 ms agent whose link went down 2 s into a 5 s window.
        let after = silence_after_ns(every(200), h);
        assert_eq!(silent_ns(102 * S, 100 * S, 105 * S, after), 3 * S);
        assert_eq!(silent_ns(104_100_000_000, 100 * S, 105 * S, after), 0);
    }

    #[test]
    fn a_measurement_spans_windows_and_starts_over_when_taken() {
        let mut span = None;
        let mut measured = Vec::new();
        // Every 200 ms for 12 s, across two 5 s window boundaries.
        for i in 0..60u32 {
            let at = 3 * S + u64::from(i) * 200_000_000;
            measured.extend(Span::measure(&mut span, 1, 500 + i, at, 5 * S));
        }
        assert_eq!(
            measured,
            vec![
                Cadence {
                    datagrams: 25,
                    over_ns: 5 * S
                };
                2
            ]
        );
        // A restart starts over.
        assert_eq!(Span::measure(&mut span, 2, 0, 20 * S, 5 * S), None);
        assert_eq!(
            Span::measure(&mut span, 2, 1, 25 * S, 5 * S),
            Some(Cadence {
                datagrams: 1,
                over_ns: 5 * S
            })
        );
    }
}
