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

use std::collections::HashMap;

use wire_format::{EndReason, FlowRecord, anomaly};

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
            counted_in: NEVER,
            retrans_counted_in: NEVER,
            reset_counted_in: NEVER,
        }
    }
}

/// One flow report's share of a window: what it adds to its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FlowDelta {
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

    /// Accounts a report by agent `node` counted in the window starting at
    /// `window`: returns its share, and remembers the flow while it is open.
    pub(super) fn account(&mut self, node: u32, record: &FlowRecord, window: u64) -> FlowDelta {
        let key = FlowKey {
            node,
            flow_id: record.flow_id.get(),
            start_ns: record.start_ns.get(),
        };
        let end = record.end_reason();
        let known = self.flows.get(&key).copied();
        let tracked = known.is_some() || self.flows.len() < self.max_flows;
        let mut state = known.unwrap_or_else(FlowState::new);
        // Counters only grow; if a report goes backwards it is taken whole.
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        let retrans_segs = delta(record.retrans_segs.get().into(), state.retrans_segs.into());
        let share = FlowDelta {
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
        let d = table.account(1, &report(7, EndReason::Open, 100, 0), 0);
        assert_eq!((d.bytes_sent, d.first_in_window, d.untracked), (100, true, false));
        let d = table.account(1, &report(7, EndReason::Open, 250, 1), 0);
        assert_eq!((d.bytes_sent, d.first_in_window, d.retrans_first), (150, false, true));
        assert_eq!(table.len(), 1);
        let d = table.account(1, &report(7, EndReason::Reset, 300, 1), W);
        assert_eq!((d.bytes_sent, d.retrans_segs, d.first_in_window), (50, 0, true));
        assert!(d.reset_first);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_full_table_takes_reports_whole() {
        let mut table = FlowTable::new(1);
        table.account(1, &report(1, EndReason::Open, 100, 0), 0);
        let d = table.account(1, &report(2, EndReason::Open, 100, 0), 0);
        assert!(d.untracked);
        let again = table.account(1, &report(2, EndReason::Open, 150, 0), 0);
        assert_eq!(again.bytes_sent, 150, "not remembered: counted whole again");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn idle_flows_are_forgotten() {
        let mut table = FlowTable::new(10);
        table.account(1, &report(1, EndReason::Open, 100, 0), W);
        table.account(1, &report(2, EndReason::Open, 100, 0), 0);
        table.forget_idle(W);
        assert_eq!(table.len(), 1, "flow 2, last counted in window 0, is forgotten");
        let d = table.account(1, &report(2, EndReason::Open, 150, 0), 2 * W);
        assert_eq!(d.bytes_sent, 150, "a forgotten flow's next report is taken whole");
    }
}
