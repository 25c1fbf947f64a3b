//! Per-window aggregation and downsampling of agent datagrams: the sampler's
//! logic, free of I/O so it is tested with plain values and time passed in.
//!
//! **Windows.** A datagram belongs to the window holding its send time (the
//! agent's clock), so a flush that crosses a window boundary lands where it
//! was measured. A window is emitted `grace` after it ends, and every window
//! is emitted in turn, even one in which nothing arrived: an agent's silence
//! is reported (`SILENT`), never mistaken for a clean window. A datagram
//! whose window was already emitted, or whose send time is more than one
//! window ahead of the sampler's clock (a skewed agent clock), is counted in
//! the window open at its arrival and counted as *rewindowed*; nothing is
//! dropped for lateness. After a pause longer than [`MAX_CATCH_UP_WINDOWS`]
//! windows, older windows are skipped and what they held is merged into the
//! first window kept.
//!
//! **Bounds.** `max_paths` per window, `max_samples` raw records per window
//! (an anomalous record may displace a sampled ordinary one) and `max_flows`
//! remembered flows. What a bound turns away is counted: records for paths
//! over the bound go into the batch's `records_over_capacity`; samples and
//! untracked flows into the sampler's metrics.
//!
//! **Where things live.** This module holds the [`Aggregator`], which
//! decides the window of each datagram, keeps agents' sequence state and
//! closes windows. Each job it delegates has its module:
//! - `flows`: flow accounting — the open-flow table and each report's share
//!   of a window (differences of cumulative counters);
//! - `paths`: path summaries — counts and RTT distributions per path, and
//!   their [`PathSummary`](wire_format::PathSummary);
//! - `sampling`: downsampling — anomalies kept, the rest 1 in N with exact
//!   weights;
//! - `window`: one open window's state and the catch-up merge;
//! - `encode`: batch encoding of a closed window, in parts if it is large;
//! - `totals`: datagram outcomes and running totals for the metrics.

mod encode;
mod flows;
mod paths;
mod sampling;
mod totals;
mod window;

use std::collections::BTreeMap;
use std::sync::Arc;

use configs::{SamplerConfig, Topology};
use wire_format::{BatchInfo, FlowRecord, MAX_BATCH_BYTES, ProbeRecord, Records};

pub use self::encode::{ClosedWindow, EmittedWindow, next_part};
pub use self::flows::FLOW_IDLE_WINDOWS;
use self::flows::FlowTable;
pub use self::paths::HISTOGRAM_SIGFIGS;
use self::paths::PathKey;
pub use self::totals::{AgentTotals, Ingested, Refusal, Totals};
use self::window::Window;
use crate::completeness::{Arrival, SequenceTracker};

/// At most this many empty windows are emitted to catch up after the
/// process was stopped; older ones are skipped and counted.
pub const MAX_CATCH_UP_WINDOWS: u64 = 360;

/// Settings of an [`Aggregator`], from the sampler's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The sampler's id (part of every batch id).
    pub sampler_id: u32,
    /// The rack's topology id.
    pub rack_id: u32,
    /// Window length, ns.
    pub window_ns: u64,
    /// How long after its end a window still takes datagrams, ns.
    pub grace_ns: u64,
    /// Paths per window at most.
    pub max_paths: usize,
    /// Remembered open flows at most.
    pub max_flows: usize,
    /// Keep one in this many ordinary raw records.
    pub sample_one_in: u32,
    /// RTT above which a record is anomalous, ns.
    pub rtt_anomaly_ns: u64,
    /// Raw records kept per window at most.
    pub max_samples: usize,
    /// Largest encoded batch part, bytes: [`MAX_BATCH_BYTES`] (what the
    /// collector accepts, and the most it can be). Not configurable; tests
    /// lower it to split windows into parts cheaply.
    pub max_batch_bytes: usize,
}

impl Settings {
    /// Settings from a validated configuration, for rack `rack_id`.
    pub fn new(config: &SamplerConfig, rack_id: u32) -> Settings {
        let agg = &config.aggregate;
        Settings {
            sampler_id: config.sampler_id,
            rack_id,
            window_ns: agg.window_secs * 1_000_000_000,
            grace_ns: agg.grace_ms * 1_000_000,
            max_paths: agg.max_paths,
            max_flows: agg.max_flows,
            sample_one_in: agg.sample_one_in.max(1),
            rtt_anomaly_ns: agg.rtt_anomaly_us * 1_000,
            max_samples: agg.max_samples,
            max_batch_bytes: MAX_BATCH_BYTES,
        }
    }
}

/// What the aggregator keeps of one agent of the rack between windows.
#[derive(Debug, Default)]
struct Agent {
    sequence: SequenceTracker,
    last_seen_ns: u64,
}

/// The sampler's aggregation state: open windows, agents' sequence state and
/// remembered flows.
#[derive(Debug)]
pub struct Aggregator {
    settings: Settings,
    topology: Arc<Topology>,
    agents: BTreeMap<u32, Agent>,
    /// Start of the oldest window not yet emitted; earlier ones are closed.
    next_emit: u64,
    windows: BTreeMap<u64, Window>,
    flows: FlowTable,
    /// Part number to start from for one window (after a restart that
    /// emitted part of it).
    resume: Option<(u64, u16)>,
    totals: Totals,
}

impl Aggregator {
    /// A sampler for the rack in `settings`, starting at `now_ns`: the
    /// window holding `now_ns` is the first it emits.
    pub fn new(settings: Settings, topology: Arc<Topology>, now_ns: u64) -> Aggregator {
        let agents: BTreeMap<u32, Agent> = topology
            .nodes_in_rack(settings.rack_id)
            .map(|n| (n.id, Agent::default()))
            .collect();
        let totals = Totals {
            agents: agents.keys().map(|&id| (id, AgentTotals::default())).collect(),
            ..Totals::default()
        };
        let next_emit = now_ns - now_ns % settings.window_ns;
        Aggregator {
            flows: FlowTable::new(settings.max_flows),
            settings,
            topology,
            agents,
            next_emit,
            windows: BTreeMap::new(),
            resume: None,
            totals,
        }
    }

    /// Continue window `start_ns` from part `part` after a restart that
    /// already emitted its earlier parts, so batch ids do not collide.
    pub fn resume_window(&mut self, start_ns: u64, part: u16) {
        self.resume = Some((start_ns, part));
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Running totals.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Remembered open flows.
    pub fn tracked_flows(&self) -> usize {
        self.flows.len()
    }

    /// Validates and aggregates one datagram that arrived at `arrival_ns`.
    pub fn ingest(&mut self, bytes: &[u8], arrival_ns: u64) -> Ingested {
        let refuse = |this: &mut Aggregator, refusal: Refusal| {
            this.totals.refused[refusal.index()] += 1;
            let start = this.window_of(arrival_ns, arrival_ns);
            this.window(start).malformed += 1;
            Ingested::Refused(refusal)
        };
        let datagram = match wire_format::parse(bytes) {
            Ok(datagram) => datagram,
            Err(error) => return refuse(self, Refusal::Malformed(error.reason())),
        };
        let header = datagram.header;
        let node = header.node_id.get();
        let Some(agent) = self.agents.get_mut(&node) else {
            return refuse(self, Refusal::ForeignNode(node));
        };
        let new = match agent.sequence.observe(header.agent_epoch.get(), header.sequence.get()) {
            // Possibly a replay: refused before it can make the agent look
            // alive (last seen) when it may be long gone.
            Arrival::TooOld => return refuse(self, Refusal::TooOld),
            Arrival::Duplicate => None,
            Arrival::New {
                expected,
                reordered,
                restarted,
            } => Some((expected, reordered, restarted)),
        };
        agent.last_seen_ns = arrival_ns;
        let epoch = agent.sequence.epoch().unwrap_or(0);
        let records = datagram.records.len();
        let agent_totals = self.totals.agents.entry(node).or_default();
        agent_totals.last_seen_ns = arrival_ns;
        let Some((expected, reordered, restarted)) = new else {
            agent_totals.duplicate += 1;
            self.totals.duplicates += 1;
            let start = self.window_of(header.sent_at_ns.get(), arrival_ns);
            let w = self.window(start).agents.entry(node).or_default();
            w.epoch = epoch;
            w.duplicate += 1;
            return Ingested::Duplicate;
        };
        agent_totals.expected += u64::from(expected);
        agent_totals.received += 1;
        agent_totals.reordered += u64::from(reordered);
        agent_totals.restarts += u64::from(restarted);
        agent_totals.records += records as u64;
        self.totals.datagrams += 1;

        let start = self.window_of(header.sent_at_ns.get(), arrival_ns);
        let w = self.window(start).agents.entry(node).or_default();
        w.epoch = epoch;
        w.expected += expected;
        w.received += 1;
        w.reordered += u32::from(reordered);
        w.restarted |= restarted;
        w.records += records as u32;
        match datagram.records {
            Records::Flow(flows) => {
                self.totals.flow_records += flows.len() as u64;
                for record in flows {
                    self.flow(start, node, record);
                }
            }
            Records::Probe(probes) => {
                self.totals.probe_records += probes.len() as u64;
                for record in probes {
                    self.probe(start, node, record);
                }
            }
        }
        self.window(start).records += records as u64;
        Ingested::Accepted { records }
    }

    /// The window a datagram sent at `sent_ns` and arriving at `arrival_ns`
    /// is counted in.
    fn window_of(&mut self, sent_ns: u64, arrival_ns: u64) -> u64 {
        let len = self.settings.window_ns;
        let by_send = sent_ns - sent_ns % len;
        if by_send >= self.next_emit && sent_ns <= arrival_ns.saturating_add(len) {
            return by_send;
        }
        self.totals.rewindowed += 1;
        (arrival_ns - arrival_ns % len).max(self.next_emit)
    }

    fn window(&mut self, start: u64) -> &mut Window {
        self.windows.entry(start).or_default()
    }

    fn flow(&mut self, start: u64, node: u32, record: &FlowRecord) {
        let share = self.flows.account(node, record, start);
        self.totals.flows_untracked += u64::from(share.untracked);
        let dst = record
            .dst_ip()
            .and_then(|ip| self.topology.node_by_address(ip))
            .unwrap_or(0);
        let key = PathKey {
            src: node,
            dst,
            dscp: record.dscp,
            transport: 0,
        };
        let settings = &self.settings;
        let window = self.windows.entry(start).or_default();
        let Some(path) = window.path(key, settings.max_paths) else {
            self.totals.records_over_capacity += 1;
            return;
        };
        path.add_flow(&share);
        let anomalies = share.anomalies(record, settings.rtt_anomaly_ns);
        let over = window.flows.offer(settings, node, anomalies, *record);
        self.totals.samples_over_capacity += over;
    }

    fn probe(&mut self, start: u64, node: u32, record: &ProbeRecord) {
        let key = PathKey {
            src: node,
            dst: record.dst_node.get(),
            dscp: record.dscp,
            transport: record.transport,
        };
        let settings = &self.settings;
        let window = self.windows.entry(start).or_default();
        let Some(path) = window.path(key, settings.max_paths) else {
            self.totals.records_over_capacity += 1;
            return;
        };
        let anomalies = path.add_probe(record, settings.rtt_anomaly_ns);
        let over = window.probes.offer(settings, node, anomalies, *record);
        self.totals.samples_over_capacity += over;
    }

    /// Emits every window that ended at least `grace` before `now_ns`, in
    /// order, including windows in which nothing arrived.
    pub fn emit_due(&mut self, now_ns: u64) -> Vec<EmittedWindow> {
        self.take_due(now_ns).into_iter().map(ClosedWindow::encode).collect()
    }

    /// Emits every open window now, complete or not (at shutdown). Returns
    /// the windows and, for the last, the next part number to use if the
    /// sampler restarts within it.
    pub fn emit_all(&mut self, now_ns: u64) -> (Vec<EmittedWindow>, Option<(u64, u16)>) {
        let windows: Vec<EmittedWindow> = self.take_all(now_ns).into_iter().map(ClosedWindow::encode).collect();
        let resume = windows.last().map(next_part);
        (windows, resume)
    }

    /// Detaches window `start` with what its batch needs, cheaply, so the
    /// expensive part ([`ClosedWindow::encode`]) runs without holding up
    /// ingest.
    fn close(&mut self, start: u64, now_ns: u64) -> ClosedWindow {
        let window = self.windows.remove(&start).unwrap_or_default();
        self.totals.windows_emitted += 1;
        self.flows
            .forget_idle(start.saturating_sub(FLOW_IDLE_WINDOWS * self.settings.window_ns));

        let s = &self.settings;
        let mut info = BatchInfo::window(s.sampler_id, s.rack_id, start, s.window_ns);
        info.created_ns = now_ns;
        info.malformed_datagrams = window.malformed;
        info.records_over_capacity = window.records_over_capacity;
        let first_part = match self.resume {
            Some((resume_start, part)) if resume_start == start => part,
            _ => 0,
        };
        let completeness = self
            .agents
            .iter()
            .map(|(&node, agent)| {
                window::completeness(
                    node,
                    window.agents.get(&node),
                    agent.sequence.epoch().unwrap_or(0),
                    agent.last_seen_ns,
                )
            })
            .collect();
        ClosedWindow {
            info,
            first_part,
            window,
            completeness,
            part_limit: s.max_batch_bytes,
        }
    }

    /// Detaches every window due at `now_ns` (see [`Aggregator::emit_due`])
    /// for encoding outside the caller's lock.
    pub fn take_due(&mut self, now_ns: u64) -> Vec<ClosedWindow> {
        let len = self.settings.window_ns;
        let grace = self.settings.grace_ns;
        let due = |start: u64| start.saturating_add(len).saturating_add(grace) <= now_ns;
        if due(self.next_emit) {
            let behind = (now_ns.saturating_sub(grace) - self.next_emit) / len;
            if behind > MAX_CATCH_UP_WINDOWS {
                let skip = behind - MAX_CATCH_UP_WINDOWS;
                self.totals.windows_skipped += skip;
                let first_kept = self.next_emit + skip * len;
                self.catch_up(first_kept);
            }
        }
        let mut closed = Vec::new();
        while due(self.next_emit) {
            closed.push(self.close(self.next_emit, now_ns));
            self.next_emit += len;
        }
        closed
    }

    /// Skips the windows before `first_kept`. Data held for them is emitted
    /// with the first window kept, not lost: each is merged into it. (Flows
    /// remembered from before the pause are forgotten while the catch-up's
    /// windows close, as there are more of them than [`FLOW_IDLE_WINDOWS`].)
    fn catch_up(&mut self, first_kept: u64) {
        let stale: Vec<u64> = self.windows.range(..first_kept).map(|(&s, _)| s).collect();
        let max_paths = self.settings.max_paths;
        for start in stale {
            if let Some(w) = self.windows.remove(&start) {
                self.window(first_kept).absorb(w, max_paths);
            }
        }
        self.next_emit = first_kept;
    }

    /// Detaches every open window, complete or not (at shutdown).
    pub fn take_all(&mut self, now_ns: u64) -> Vec<ClosedWindow> {
        let mut closed = self.take_due(now_ns);
        let current = now_ns - now_ns % self.settings.window_ns;
        let last = self.windows.keys().next_back().copied().unwrap_or(current).max(current);
        while self.next_emit <= last {
            closed.push(self.close(self.next_emit, now_ns));
            self.next_emit += self.settings.window_ns;
        }
        closed
    }
}
