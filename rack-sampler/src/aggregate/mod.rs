//! Per-window aggregation and downsampling of agent datagrams: the sampler's
//! logic, free of I/O so it is tested with plain values and time passed in.
//!
//! **Windows.** A datagram belongs to the window holding its send time (the
//! agent's clock): its completeness is counted there. Each of its records
//! is counted in the window of the record's own time when that window is
//! still open — a probe in the window it was sent in (t1), however late its
//! answer or timeout was flushed; a flow report's difference in the window
//! holding the middle of the interval it covers (`flows`) — so what was
//! measured before a window boundary (a fault being cleared) is not charged
//! to the window after it. A record whose own window was already emitted
//! (its answer came later than `grace` allows: keep `grace` above the
//! agents' probe timeout plus their flush interval) or lies ahead of the
//! sampler's clock goes with its datagram and is counted as *late*. A
//! window is emitted `grace` after it ends, and every window
//! is emitted in turn, even one in which nothing arrived: an agent's silence
//! is reported (`SILENT`), never mistaken for a clean window. A datagram
//! whose window was already emitted, or whose send time is more than one
//! window ahead of the sampler's clock (a skewed agent clock), is counted in
//! the window open at its arrival and counted as *rewindowed*; nothing is
//! dropped for lateness. After a pause longer than [`MAX_CATCH_UP_WINDOWS`]
//! windows, older windows are skipped and what they held is merged into the
//! first window kept.
//!
//! **Completeness.** Each agent's datagrams are counted per window from
//! their sequence numbers ([`crate::completeness`]). What the numbers cannot
//! show yet — an agent silent for the window's tail, or what an agent sent
//! in the part of the window before the sampler started when nothing tells
//! the sampler — is imputed at the agent's cadence (`cadence`). The agents'
//! sequence state is saved with the spool at each emission
//! ([`Aggregator::checkpoint`], [`crate::checkpoint`]) and taken up at start
//! ([`Aggregator::restore`]), so a restarted sampler counts, in the window
//! it restarts in, what its agents sent while it was down.
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
//! - `cadence`: agents' datagram cadence and what it imputes to stretches of
//!   a window the sequence numbers cannot account for (yet);
//! - `flows`: flow accounting — the open-flow table and each report's share
//!   of a window (differences of cumulative counters);
//! - `paths`: path summaries — counts and RTT distributions per path, and
//!   their [`PathSummary`](wire_format::PathSummary);
//! - `sampling`: downsampling — anomalies kept, the rest 1 in N with exact
//!   weights;
//! - `window`: one open window's state and the catch-up merge;
//! - `encode`: batch encoding of a closed window, in parts if it is large;
//! - `totals`: datagram outcomes and running totals for the metrics.

mod cadence;
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

use self::cadence::Span;
pub use self::cadence::{Cadence, SILENCE_FLOOR_NS, SILENCE_INTERVALS};
pub use self::encode::{ClosedWindow, EmittedWindow, next_part};
pub use self::flows::FLOW_IDLE_WINDOWS;
use self::flows::FlowTable;
pub use self::paths::HISTOGRAM_SIGFIGS;
use self::paths::PathKey;
pub use self::totals::{AgentTotals, Ingested, Refusal, Totals};
use self::window::{AgentWindow, Window};
use crate::checkpoint::{AgentCheckpoint, Checkpoint};
use crate::completeness::{Arrival, SequenceTracker};

/// At most this many empty windows are emitted to catch up after the
/// process was stopped; older ones are skipped and counted.
pub const MAX_CATCH_UP_WINDOWS: u64 = 360;

const SECOND: u64 = 1_000_000_000;

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
    /// The agents' heartbeat interval, ns: a live agent sends at least one
    /// datagram this often (`aggregate.agent_heartbeat_secs`). An agent
    /// silent for more than twice this before a window's end is missing
    /// datagrams in it.
    pub heartbeat_ns: u64,
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
            heartbeat_ns: agg.agent_heartbeat_secs * 1_000_000_000,
        }
    }
}

/// Where one datagram's records are counted (see "Windows" above): each in
/// the window of its own time if that window is still open and not ahead of
/// the sampler's clock, else in the datagram's window.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Window length, ns.
    len: u64,
    /// Start of the oldest window not yet emitted.
    open_from: u64,
    /// The latest record time believed: one window past the arrival (a
    /// later one is a skewed clock's).
    until_ns: u64,
    /// The datagram's window: for records with no open window of their own.
    fallback: u64,
}

impl Placement {
    /// The open window holding time `t_ns`, if there is one.
    fn window(&self, t_ns: u64) -> Option<u64> {
        let start = t_ns - t_ns % self.len;
        (start >= self.open_from && t_ns <= self.until_ns).then_some(start)
    }
}

/// What the aggregator keeps of one agent of the rack between windows.
#[derive(Debug, Default)]
struct Agent {
    sequence: SequenceTracker,
    last_seen_ns: u64,
    /// Its latest measured cadence.
    cadence: Option<Cadence>,
    /// Its in-order datagrams since the last measurement (across windows).
    span: Option<Span>,
    /// Datagrams imputed to its silence that its sequence numbers have not
    /// accounted for yet: taken off the next gap they show.
    imputed: u64,
    /// No current saved state ties it to what it sent before the sampler
    /// started: what it sent in the first window before then is imputed.
    unanchored: bool,
}

/// The window being closed, as [`Agent::impute`] needs it.
struct Closing {
    start: u64,
    /// Where its part not closed before begins: its start, or later if a
    /// shutdown emitted it early and this process restarted within it.
    from: u64,
    /// The window's end, or the close if earlier (at shutdown).
    until: u64,
    heartbeat_ns: u64,
    /// When the sampler started, if in this window.
    started_ns: Option<u64>,
}

impl Agent {
    /// What a window counts as expected for a new datagram whose numbers
    /// say `expected` more were sent: silence imputed to earlier windows
    /// that the numbers now account for is not expected twice, and the rest
    /// of that estimate is dropped (the agent is heard again). A restart
    /// leaves the old run's lost tail unknown: nothing is taken off.
    fn account(&mut self, expected: u32, reordered: bool, restarted: bool) -> u32 {
        if reordered {
            return expected;
        }
        let imputed = std::mem::take(&mut self.imputed);
        if restarted {
            return expected;
        }
        // At most the numbers missing before this one: never itself.
        let absorbed = imputed.min(u64::from(expected.saturating_sub(1)));
        expected - u32::try_from(absorbed).unwrap_or(0)
    }

    /// What the agent's cadence says it sent, unseen, in the window closing
    /// (`w`: what arrived of it): the part before the sampler started if it
    /// is unanchored, and a silent tail (see [`cadence`]). Carries the
    /// silence imputed.
    fn impute(&mut self, w: Option<&AgentWindow>, c: &Closing) -> u32 {
        if self.sequence.epoch().is_none() {
            // Never heard: nothing is known of it.
            return 0;
        }
        let cadence = self.cadence.unwrap_or(Cadence::heartbeat(c.heartbeat_ns));
        let head_ns = match (c.started_ns, w) {
            // A run begun after the sampler started was seen whole.
            (Some(started), Some(w))
                if self.unanchored && w.received > 0 && !w.restarted && u64::from(w.epoch) * SECOND < started =>
            {
                started.min(c.until).saturating_sub(c.start)
            }
            _ => 0,
        };
        let after_ns = cadence::silence_after_ns(self.cadence, c.heartbeat_ns);
        let silent = cadence.over(cadence::silent_ns(self.last_seen_ns, c.from, c.until, after_ns));
        self.imputed = self.imputed.saturating_add(silent);
        u32::try_from(cadence.over(head_ns).saturating_add(silent)).unwrap_or(u32::MAX)
    }
}

/// What [`Aggregator::restore`] took up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Agents of the rack whose state was taken up.
    pub agents: usize,
    /// The state was current: saved when the previous process emitted the
    /// window before the one this one starts in (or a later one), so every
    /// gap it leads to belongs to this window.
    pub current: bool,
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
    /// When the sampler started.
    started_ns: u64,
    /// How far in time the windows emitted cover (by this process, or by
    /// the previous one if its saved state is current): the end of the
    /// last, or its close if earlier.
    closed_ns: u64,
    totals: Totals,
}

impl Aggregator {
    /// A sampler for the rack in `settings`, starting at `now_ns`: the
    /// window holding `now_ns` is the first it emits.
    pub fn new(settings: Settings, topology: Arc<Topology>, now_ns: u64) -> Aggregator {
        let agents: BTreeMap<u32, Agent> = topology
            .nodes_in_rack(settings.rack_id)
            .map(|n| {
                let agent = Agent {
                    unanchored: true,
                    ..Agent::default()
                };
                (n.id, agent)
            })
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
            started_ns: now_ns,
            closed_ns: 0,
            totals,
        }
    }

    /// Takes up the agents' sequence state a previous process saved
    /// ([`Aggregator::checkpoint`]), before any datagram arrives.
    ///
    /// *Current* state — saved when that process emitted the window before
    /// the one this one starts in, or a later one (a shutdown emits its open
    /// window early), with the same window length — left nothing unemitted
    /// in between: each agent's next datagram counts as expected, in this
    /// window, every number it sent since the saved one, and the datagrams
    /// the previous process had counted into windows it never emitted (its
    /// `pending`) are expected in this window too. State too old (a window
    /// went unemitted, the clock stepped back, the window length changed)
    /// cannot place that gap in a window: the runs are taken up all the same
    /// (a replay of what was heard, or a restart, is recognized), but the
    /// next datagram of an agent counts only itself, and what it sent in
    /// this window before the sampler started is imputed at its cadence, as
    /// with no state at all. State saved before a shutdown emitted a window
    /// early ([`Aggregator::resume_window`] names a window at or after its
    /// `through_ns`: the shutdown died before saving the state after it) is
    /// too old too, as that part counted its gaps already; so call
    /// [`Aggregator::resume_window`] first. Agents no longer in the rack are
    /// ignored.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Restored {
        let len = self.settings.window_ns;
        // A shutdown that emitted window `start` early and died (or failed
        // to save) before saving the state after it left the state before
        // it: it names a window not after `start`, and what it leads to is
        // in that early part already.
        let emitted_early = self.resume.is_some_and(|(start, _)| start >= checkpoint.through_ns);
        let current = checkpoint.window_ns == len
            && !emitted_early
            && (self.next_emit..=self.next_emit.saturating_add(len)).contains(&checkpoint.through_ns);
        let first = self.next_emit;
        if current {
            self.closed_ns = checkpoint.closed_ns;
        }
        let mut restored = Restored { agents: 0, current };
        for (&node, saved) in &checkpoint.agents {
            let Some(agent) = self.agents.get_mut(&node) else {
                continue;
            };
            *agent = Agent {
                sequence: SequenceTracker::restored(&saved.runs, current),
                last_seen_ns: saved.last_seen_ns,
                cadence: saved.cadence,
                span: None,
                imputed: if current { saved.imputed } else { 0 },
                unanchored: !current,
            };
            restored.agents += 1;
            if let Some(totals) = self.totals.agents.get_mut(&node) {
                totals.last_seen_ns = saved.last_seen_ns;
            }
            if current && saved.pending > 0 {
                let w = self.windows.entry(first).or_default().agents.entry(node).or_default();
                w.epoch = saved.runs.latest.epoch;
                w.expected = w
                    .expected
                    .saturating_add(u32::try_from(saved.pending).unwrap_or(u32::MAX));
            }
        }
        restored
    }

    /// The agents' sequence state to save with the spool, for a restart
    /// to take up ([`Aggregator::restore`]): taken right after emitting
    /// (and under the same lock), so that it names the first window not
    /// emitted, and what the sequence numbers counted into windows still
    /// open (lost if the process dies) is `pending`.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
        for w in self.windows.values() {
            for (&node, a) in &w.agents {
                *pending.entry(node).or_default() += u64::from(a.expected);
            }
        }
        let agents = self
            .agents
            .iter()
            .filter_map(|(&node, a)| {
                let saved = AgentCheckpoint {
                    runs: a.sequence.saved()?,
                    last_seen_ns: a.last_seen_ns,
                    cadence: a.cadence,
                    imputed: a.imputed,
                    pending: pending.get(&node).copied().unwrap_or(0),
                };
                Some((node, saved))
            })
            .collect();
        Checkpoint {
            window_ns: self.settings.window_ns,
            through_ns: self.next_emit,
            closed_ns: self.closed_ns,
            agents,
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
        let (epoch, seq) = (header.agent_epoch.get(), header.sequence.get());
        let new = match agent.sequence.observe(epoch, seq) {
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
        let counted = new.map(|(expected, reordered, restarted)| agent.account(expected, reordered, restarted));
        if let Some((_, false, _)) = new
            && let Some(measured) = Span::measure(&mut agent.span, epoch, seq, arrival_ns, self.settings.heartbeat_ns)
        {
            agent.cadence = Some(measured);
        }
        let latest = agent.sequence.epoch().unwrap_or(0);
        let records = datagram.records.len();
        let agent_totals = self.totals.agents.entry(node).or_default();
        agent_totals.last_seen_ns = arrival_ns;
        let Some((expected, reordered, restarted)) = new else {
            agent_totals.duplicate += 1;
            self.totals.duplicates += 1;
            let start = self.window_of(header.sent_at_ns.get(), arrival_ns);
            let w = self.window(start).agents.entry(node).or_default();
            w.epoch = latest;
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
        w.epoch = latest;
        w.expected += counted.unwrap_or_default();
        w.received += 1;
        w.reordered += u32::from(reordered);
        w.restarted |= restarted;
        w.records += records as u32;
        let place = Placement {
            len: self.settings.window_ns,
            open_from: self.next_emit,
            until_ns: arrival_ns.saturating_add(self.settings.window_ns),
            fallback: start,
        };
        match datagram.records {
            Records::Flow(flows) => {
                self.totals.flow_records += flows.len() as u64;
                for record in flows {
                    self.flow(&place, node, record);
                }
            }
            Records::Probe(probes) => {
                self.totals.probe_records += probes.len() as u64;
                for record in probes {
                    self.probe(&place, node, record);
                }
            }
        }
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

    fn flow(&mut self, place: &Placement, node: u32, record: &FlowRecord) {
        let share = self.flows.account(node, record, place);
        self.totals.flows_untracked += u64::from(share.untracked);
        self.totals.records_late += u64::from(share.late);
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
        let window = self.windows.entry(share.window).or_default();
        window.records += 1;
        let Some(path) = window.path(key, settings.max_paths) else {
            self.totals.records_over_capacity += 1;
            return;
        };
        path.add_flow(&share);
        let anomalies = share.anomalies(record, settings.rtt_anomaly_ns);
        let over = window.flows.offer(settings, node, anomalies, *record);
        self.totals.samples_over_capacity += over;
    }

    fn probe(&mut self, place: &Placement, node: u32, record: &ProbeRecord) {
        let start = place.window(record.requester_send_ns.get()).unwrap_or_else(|| {
            self.totals.records_late += 1;
            place.fallback
        });
        let key = PathKey {
            src: node,
            dst: record.dst_node.get(),
            dscp: record.dscp,
            transport: record.transport,
        };
        let settings = &self.settings;
        let window = self.windows.entry(start).or_default();
        window.records += 1;
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
        let until = start.saturating_add(s.window_ns).min(now_ns);
        let closing = Closing {
            start,
            from: start.max(self.closed_ns),
            until,
            heartbeat_ns: s.heartbeat_ns,
            started_ns: (self.started_ns - self.started_ns % s.window_ns == start).then_some(self.started_ns),
        };
        let completeness = self
            .agents
            .iter_mut()
            .map(|(&node, agent)| {
                let w = window.agents.get(&node);
                let imputed = agent.impute(w, &closing);
                window::completeness(
                    node,
                    w,
                    agent.sequence.epoch().unwrap_or(0),
                    agent.last_seen_ns,
                    imputed,
                )
            })
            .collect();
        self.closed_ns = self.closed_ns.max(until);
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
