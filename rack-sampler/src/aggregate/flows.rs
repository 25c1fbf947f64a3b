//! Flow accounting: the table of open flows and each report's share of a
//! window.
//!
//! Flow records carry counters cumulative since the flow began (an open
//! flow is reported every `flows.report_open_secs`, then once more when it
//! ends). The sampler remembers each open flow's last report and adds only
//! the difference to the window, so windows sum to the flow's totals and a
//! flow reported twice in one window counts once. A flow is forgotten when
//! it ends, or when it has not been reported for [`FLOW_IDLE_WINDOWS`]
//! (its closing report was lost, or its agent went away). This lives apart
//! from the path summaries because it is state that spans windows, while a
//! path summary belongs to one.
//!
//! **Which window.** A report's difference happened between the flow's
//! previous report (or its start) and this one, so it is counted in the
//! window holding the middle of that interval, not the window the report
//! was sent or received in. Agents report a retransmitting flow at ticks
//! aligned to the wall clock (`flows.retrans_report_ms`), so the interval of
//! such a report lies within one window and its retransmissions are counted
//! in the window they happened in — not in the first window after a fault
//! cleared, which is where the report itself arrives.

use std::collections::HashMap;

use wire_format::{EndReason, FlowRecord, anomaly};

use super::Placement;

/// A remembered flow not reported for this many windows is forgotten (its
/// closing report was lost, or its agent went away).
pub const FLOW_IDLE_WINDOWS: u64 = 60;

/// Marks a window field of [`FlowState`] as "never counted".
const NEVER: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    node: u32,
    flow_id: u64,
    start_ns: u64,
}

/// What the sampler remembers of an open flow between its reports.
#[derive(Debug, Clone, Copy)]
struct FlowState {
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    retrans_segs: u32,
    /// When the flow was last reported (the agent's clock): where the next
    /// report's interval begins.
    reported_ns: u64,
    /// Window (start) in which the flow was last counted ([`NEVER`]: never).
    counted_in: u64,
    /// Window in which its retransmissions were last counted.
    retrans_counted_in: u64,
    /// Window in which its reset was counted.
    reset_counted_in: u64,
}

impl FlowState {
    fn new() -> FlowState {
        FlowState {
            bytes_acked: 0,
            bytes_received: 0,
            segs_out: 0,
            retrans_segs: 0,
            reported_ns: 0,
            counted_in: NEVER,
            retrans_counted_in: NEVER,
            reset_counted_in: NEVER,
        }
    }
}

/// One flow report's share of a window: what it adds to its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FlowDelta {
    /// The window (start) it is counted in.
    pub(super) window: u64,
    /// Neither the middle of its interval nor its own time is in a window
    /// still open: it is counted in the window its datagram was placed in.
    pub(super) late: bool,
    /// Payload bytes acknowledged since the last report.
    pub(super) bytes_sent: u64,
    /// Payload bytes received since the last report.
    pub(super) bytes_received: u64,
    /// Segments sent since the last report.
    pub(super) segs_out: u64,
    /// Segments retransmitted since the last report.
    pub(super) retrans_segs: u64,
    /// The flow was not yet counted in this window.
    pub(super) first_in_window: bool,
    /// It retransmitted, and that was not yet counted in this window.
    pub(super) retrans_first: bool,
    /// It was reset, and that was not yet counted in this window.
    pub(super) reset_first: bool,
    /// The table was full: the flow is not remembered, and this report's
    /// counters were taken whole.
    pub(super) untracked: bool,
}

impl FlowDelta {
    /// Why the report is anomalous ([`anomaly`] bits; 0 if it is not).
    pub(super) fn anomalies(&self, record: &FlowRecord, rtt_anomaly_ns: u64) -> u8 {
        let mut anomalies = 0;
        if self.retrans_segs > 0 {
            anomalies |= anomaly::RETRANS;
        }
        match record.end_reason() {
            EndReason::Reset => anomalies |= anomaly::RESET,
            EndReason::Timeout => anomalies |= anomaly::FLOW_TIMEOUT,
            _ => {}
        }
        if u64::from(record.srtt_us.get()) * 1_000 > rtt_anomaly_ns {
            anomalies |= anomaly::HIGH_RTT;
        }
        anomalies
    }
}

/// The open flows the sampler remembers, at most `max_flows`.
#[derive(Debug)]
pub(super) struct FlowTable {
    flows: HashMap<FlowKey, FlowState>,
    max_flows: usize,
}

impl FlowTable {
    /// An empty table remembering at most `max_flows` flows.
    pub(super) fn new(max_flows: usize) -> FlowTable {
        FlowTable {
            flows: HashMap::new(),
            max_flows,
        }
    }

    /// Remembered flows.
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    /// Accounts a report by agent `node`, placing it in a window with
    /// `place` (see the module's "Which window"): returns its share, and
    /// remembers the flow while it is open.
    pub(super) fn account(&mut self, node: u32, record: &FlowRecord, place: &Placement) -> FlowDelta {
        let start_ns = record.start_ns.get();
        let key = FlowKey {
            node,
            flow_id: record.flow_id.get(),
            start_ns,
        };
        let end = record.end_reason();
        let known = self.flows.get(&key).copied();
        let tracked = known.is_some() || self.flows.len() < self.max_flows;
        let mut state = known.unwrap_or_else(FlowState::new);
        let at = start_ns.saturating_add(record.duration_ns.get());
        let since = if known.is_some() { state.reported_ns } else { start_ns }.min(at);
        let middle = since + (at - since) / 2;
        let (window, late) = match place.window(middle).or_else(|| place.window(at)) {
            Some(window) => (window, false),
            None => (place.fallback, true),
        };
        // Counters only grow; if a report goes backwards it is taken whole.
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        let retrans_segs = delta(record.retrans_segs.get().into(), state.retrans_segs.into());
        let share = FlowDelta {
            window,
            late,
            bytes_sent: delta(record.bytes_acked.get(), state.bytes_acked),
            bytes_received: delta(record.bytes_received.get(), state.bytes_received),
            segs_out: delta(record.segs_out.get().into(), state.segs_out.into()),
            retrans_segs,
            first_in_window: state.counted_in != window,
            retrans_first: retrans_segs > 0 && state.retrans_counted_in != window,
            reset_first: end == EndReason::Reset && state.reset_counted_in != window,
            untracked: !tracked,
        };
        state.bytes_acked = record.bytes_acked.get();
        state.bytes_received = record.bytes_received.get();
        state.segs_out = record.segs_out.get();
        state.retrans_segs = record.retrans_segs.get();
        state.reported_ns = state.reported_ns.max(at);
        state.counted_in = window;
        if share.retrans_first {
            state.retrans_counted_in = window;
        }
        if share.reset_first {
            state.reset_counted_in = window;
        }
        if end == EndReason::Open {
            if tracked {
                self.flows.insert(key, state);
            }
        } else {
            self.flows.remove(&key);
        }
        share
    }

    /// Forgets flows last counted before the window starting at `before`.
    pub(super) fn forget_idle(&mut self, before: u64) {
        self.flows
            .retain(|_, f| f.counted_in != NEVER && f.counted_in >= before);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use wire_format::{Direction, Flow};

    use super::*;

    const W: u64 = 10;

    /// Every report counted in window `start` (their times, 2 000 ns, are
    /// taken as ahead of the clock).
    fn at(start: u64) -> Placement {
        Placement {
            len: W,
            open_from: start,
            until_ns: 0,
            fallback: start,
        }
    }

    fn report(flow_id: u64, end: EndReason, bytes: u64, retrans: u32) -> FlowRecord {
        Flow {
            flow_id,
            src: "198.18.1.1".parse().unwrap(),
            dst: "198.18.1.2".parse().unwrap(),
            src_port: 40_000,
            dst_port: 443,
            dscp: 0,
            direction: Direction::Outbound,
            end_reason: end,
            start_ns: 1_000,
            duration_ns: 1_000,
            bytes_acked: bytes,
            bytes_received: 0,
            segs_out: 1,
            segs_in: 1,
            retrans_segs: retrans,
            srtt_us: 10,
            min_rtt_us: 1,
        }
        .to_record()
    }

    #[test]
    fn reports_add_their_difference_and_an_ended_flow_is_forgotten() {
        let mut table = FlowTable::new(10);
        let d = table.account(1, &report(7, EndReason::Open, 100, 0), &at(0));
        assert_eq!((d.bytes_sent, d.first_in_window, d.untracked), (100, true, false));
        let d = table.account(1, &report(7, EndReason::Open, 250, 1), &at(0));
        assert_eq!((d.bytes_sent, d.first_in_window, d.retrans_first), (150, false, true));
        assert_eq!(table.len(), 1);
        let d = table.account(1, &report(7, EndReason::Reset, 300, 1), &at(W));
        assert_eq!((d.bytes_sent, d.retrans_segs, d.first_in_window), (50, 0, true));
        assert!(d.reset_first);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_report_is_counted_in_the_window_of_the_middle_of_its_interval() {
        // Windows 0 and W open. A flow starts at 2; reports at 8, 11 and 19.
        let place = Placement {
            len: W,
            open_from: 0,
            until_ns: u64::MAX,
            fallback: W,
        };
        let at = |duration: u64, retrans: u32| {
            let mut r = report(7, EndReason::Open, 100 * duration, retrans);
            r.start_ns.set(2);
            r.duration_ns.set(duration - 2);
            r
        };
        let d = table_account(&mut FlowTable::new(10), &[at(8, 0)], &place);
        assert_eq!(d, [(0, false)], "2..8, middle 5");
        let mut table = FlowTable::new(10);
        let d = table_account(&mut table, &[at(8, 0), at(11, 2), at(19, 3)], &place);
        // 8..11 (middle 9) happened in window 0, though reported in W.
        assert_eq!(d, [(0, false), (0, false), (W, false)]);
        // Nothing open holds a report's time: its datagram's window, late.
        let closed = Placement {
            open_from: 3 * W,
            fallback: 3 * W,
            ..place
        };
        let d = table_account(&mut table, &[at(25, 4)], &closed);
        assert_eq!(d, [(3 * W, true)]);
    }

    /// The window and lateness of each report, in turn.
    fn table_account(table: &mut FlowTable, reports: &[FlowRecord], place: &Placement) -> Vec<(u64, bool)> {
        reports
            .iter()
            .map(|r| table.account(1, r, place))
            .map(|d| (d.window, d.late))
            .collect()
    }

    #[test]
    fn a_full_table_takes_reports_whole() {
        let mut table = FlowTable::new(1);
        table.account(1, &report(1, EndReason::Open, 100, 0), &at(0));
        let d = table.account(1, &report(2, EndReason::Open, 100, 0), &at(0));
        assert!(d.untracked);
        let again = table.account(1, &report(2, EndReason::Open, 150, 0), &at(0));
        assert_eq!(again.bytes_sent, 150, "not remembered: counted whole again");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn idle_flows_are_forgotten() {
        let mut table = FlowTable::new(10);
        table.account(1, &report(1, EndReason::Open, 100, 0), &at(W));
        table.account(1, &report(2, EndReason::Open, 100, 0), &at(0));
        table.forget_idle(W);
        assert_eq!(table.len(), 1, "flow 2, last counted in window 0, is forgotten");
        let d = table.account(1, &report(2, EndReason::Open, 150, 0), &at(2 * W));
        assert_eq!(d.bytes_sent, 150, "a forgotten flow's next report is taken whole");
    }
}
