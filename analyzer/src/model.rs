//! What the analyzer reads from the collector's database: path windows and
//! agent windows over a time range, merged across batch parts, DSCP classes
//! and probe transports into one row per (window, source, destination).

use std::collections::BTreeMap;

use collector::{Store, StoreError};
use hdrhistogram::Histogram;
use wire_format::{decode_histogram, new_rtt_histogram};

/// One directed path in one window, all DSCP classes and transports merged.
#[derive(Debug, Clone, PartialEq)]
pub struct PathWindow {
    /// Window start, ns since the Unix epoch.
    pub window_ns: u64,
    /// Window length, ns.
    pub window_len_ns: u64,
    /// Source node (the reporting agent).
    pub src: u32,
    /// Destination node; 0 for addresses outside the topology.
    pub dst: u32,
    /// Probes with a known outcome.
    pub probes_sent: u64,
    /// Probes that timed out.
    pub probes_lost: u64,
    /// Probes that ended in an error.
    pub probes_failed: u64,
    /// Median network RTT, ns (from the merged histograms when present).
    pub rtt_p50_ns: u64,
    /// 99th percentile network RTT, ns.
    pub rtt_p99_ns: u64,
    /// 99th percentile responder delay, ns (the largest of the merged rows:
    /// responder delays carry no histogram).
    pub responder_delay_p99_ns: u64,
    /// TCP segments sent by the path's flows.
    pub segs_out: u64,
    /// Of those, retransmitted.
    pub retrans_segs: u64,
    /// TCP flows counted.
    pub flows: u64,
}

impl PathWindow {
    /// Probe loss rate (lost + failed over sent), if any probe was sent.
    pub fn loss_rate(&self) -> Option<f64> {
        (self.probes_sent > 0).then(|| (self.probes_lost + self.probes_failed) as f64 / self.probes_sent as f64)
    }

    /// TCP retransmission rate, if any segment was sent.
    pub fn retrans_rate(&self) -> Option<f64> {
        (self.segs_out > 0).then(|| self.retrans_segs as f64 / self.segs_out as f64)
    }

    /// Probes answered.
    pub fn probes_answered(&self) -> u64 {
        self.probes_sent.saturating_sub(self.probes_lost + self.probes_failed)
    }
}

/// One agent's telemetry completeness in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentWindow {
    /// Window start, ns.
    pub window_ns: u64,
    /// The agent's node.
    pub node: u32,
    /// Datagrams its sequence numbers say were sent.
    pub expected: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// Nothing arrived from it in the window.
    pub silent: bool,
    /// It restarted in the window.
    pub restarted: bool,
}

/// Everything read for one analysis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    /// Path windows, ordered by (window, src, dst).
    pub paths: Vec<PathWindow>,
    /// Agent windows, ordered by (window, node).
    pub agents: Vec<AgentWindow>,
}

#[derive(Default)]
struct Merge {
    row: Option<PathWindow>,
    rtt: Option<Histogram<u64>>,
    rtt_rows_without_histogram: u64,
}

/// Reads windows starting in `[from_ns, to_ns)`.
pub fn load(store: &Store, from_ns: u64, to_ns: u64) -> Result<Observations, StoreError> {
    let db = store.connection();
    // SQLite integers are signed.
    let (from_ns, to_ns) = (from_ns.min(i64::MAX as u64), to_ns.min(i64::MAX as u64));
    let mut merged: BTreeMap<(u64, u32, u32), Merge> = BTreeMap::new();
    let mut stmt = db.prepare(
        "SELECT window_start_ns, window_len_ns, src_node, dst_node, probes_sent, probes_lost, probes_failed,
                rtt_p50_ns, rtt_p99_ns, responder_delay_p99_ns, segs_out, retrans_segs, flows, rtt_histogram
         FROM path_windows WHERE window_start_ns >= ?1 AND window_start_ns < ?2",
    )?;
    let mut rows = stmt.query([from_ns as i64, to_ns as i64])?;
    while let Some(r) = rows.next()? {
        let get = |i: usize| -> rusqlite::Result<u64> { r.get::<_, i64>(i).map(|v| v.max(0) as u64) };
        let row = PathWindow {
            window_ns: get(0)?,
            window_len_ns: get(1)?,
            src: get(2)? as u32,
            dst: get(3)? as u32,
            probes_sent: get(4)?,
            probes_lost: get(5)?,
            probes_failed: get(6)?,
            rtt_p50_ns: get(7)?,
            rtt_p99_ns: get(8)?,
            responder_delay_p99_ns: get(9)?,
            segs_out: get(10)?,
            retrans_segs: get(11)?,
            flows: get(12)?,
        };
        let histogram: Option<Vec<u8>> = r.get(13)?;
        let m = merged.entry((row.window_ns, row.src, row.dst)).or_default();
        if row.probes_sent > 0 {
            match histogram.as_deref().map(decode_histogram) {
                Some(Ok(h)) => {
                    let total = m.rtt.get_or_insert_with(new_rtt_histogram);
                    // Both are within the RTT bounds, so adding cannot fail.
                    let _ = total.add(&h);
                }
                _ => m.rtt_rows_without_histogram += 1,
            }
        }
        match &mut m.row {
            None => m.row = Some(row),
            Some(acc) => {
                acc.probes_sent += row.probes_sent;
                acc.probes_lost += row.probes_lost;
                acc.probes_failed += row.probes_failed;
                // Without histograms the best merge of quantiles is the
                // larger: a window is as bad as its worst part.
                acc.rtt_p50_ns = acc.rtt_p50_ns.max(row.rtt_p50_ns);
                acc.rtt_p99_ns = acc.rtt_p99_ns.max(row.rtt_p99_ns);
                acc.responder_delay_p99_ns = acc.responder_delay_p99_ns.max(row.responder_delay_p99_ns);
                acc.segs_out += row.segs_out;
                acc.retrans_segs += row.retrans_segs;
                acc.flows += row.flows;
            }
        }
    }
    let paths = merged
        .into_values()
        .filter_map(|m| {
            let mut row = m.row?;
            if let Some(h) = m.rtt.filter(|h| !h.is_empty() && m.rtt_rows_without_histogram == 0) {
                row.rtt_p50_ns = h.value_at_quantile(0.5);
                row.rtt_p99_ns = h.value_at_quantile(0.99);
            }
            Some(row)
        })
        .collect();

    let mut stmt = db.prepare(
        "SELECT window_start_ns, node_id, SUM(datagrams_expected), SUM(datagrams_received), MIN(silent), MAX(restarted)
         FROM agent_windows WHERE window_start_ns >= ?1 AND window_start_ns < ?2
         GROUP BY window_start_ns, node_id ORDER BY window_start_ns, node_id",
    )?;
    let agents = stmt
        .query_map([from_ns as i64, to_ns as i64], |r| {
            Ok(AgentWindow {
                window_ns: r.get::<_, i64>(0)?.max(0) as u64,
                node: r.get::<_, i64>(1)? as u32,
                expected: r.get::<_, i64>(2)?.max(0) as u64,
                received: r.get::<_, i64>(3)?.max(0) as u64,
                silent: r.get::<_, i64>(4)? != 0,
                restarted: r.get::<_, i64>(5)? != 0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Observations { paths, agents })
}
