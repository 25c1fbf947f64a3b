//! Per-window aggregation and downsampling of agent datagrams: the sampler's
//! logic, free of I/O so it is tested with plain values.
//!
//! **Windows.** A datagram belongs to the window holding its send time (the
//! agent's clock), so a flush that crosses a window boundary lands where it
//! was measured. A window is emitted `grace` after it ends, and every window
//! is emitted in turn, even one in which nothing arrived: an agent's silence
//! is reported (`SILENT`), never mistaken for a clean window. A datagram
//! whose window was already emitted, or whose send time is more than one
//! window ahead of the sampler's clock (a skewed agent clock), is counted in
//! the window open at its arrival and counted as *rewindowed*; nothing is
//! dropped for lateness.
//!
//! **Paths.** Probes are summarized per (source node, destination node, DSCP,
//! transport); flows per (reporting node, the node owning the remote address
//! or 0 outside the topology, DSCP). Flow records carry counters cumulative
//! since the flow began; the sampler remembers each open flow's last report
//! and adds only the difference to the window, so windows sum to totals and
//! a flow reported twice in one window counts once.
//!
//! **Downsampling.** Every anomalous raw record is kept with weight 1 and
//! its reasons. Of the rest, the sampler keeps every N-th with weight N, and
//! at the window's end the last record of an incomplete group with weight
//! equal to that group's size, so the weights of a window's samples sum to
//! exactly the number of records they stand for.
//!
//! **Bounds.** `max_paths` per window, `max_samples` raw records per window
//! (an anomalous record may displace a sampled ordinary one) and `max_flows`
//! remembered flows. What a bound turns away is counted: records for paths
//! over the bound go into the batch's `records_over_capacity`; samples and
//! untracked flows into the sampler's metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use configs::{SamplerConfig, Topology};
use hdrhistogram::Histogram;
use wire_format::{
    AgentCompleteness, BatchBuilder, BatchId, BatchInfo, DropReason, EndReason, FlowRecord, MAX_BATCH_BYTES,
    PathSummary, ProbeOutcome, ProbeRecord, RTT_HISTOGRAM_MAX_NS, Records, SampleMeta, Transport, anomaly,
    completeness_flags, encode_histogram, new_rtt_histogram, tail_quantile,
};

use crate::completeness::{Arrival, SequenceTracker};

/// A remembered flow not reported for this many windows is forgotten (its
/// closing report was lost, or its agent went away).
pub const FLOW_IDLE_WINDOWS: u64 = 60;

/// At most this many empty windows are emitted to catch up after the
/// process was stopped; older ones are skipped and counted.
pub const MAX_CATCH_UP_WINDOWS: u64 = 360;

/// Values held per path as raw values before switching to a histogram: a
/// few probes per path and window is the common case, at 8 bytes each.
const FEW_SAMPLES: usize = 256;

/// Significant digits of the sampler's RTT histograms: values within 1 %.
/// Three digits would cost 2 048 counters per power of two, 80 KiB for a
/// path with sub-millisecond RTTs — over a gigabyte for a busy rack's few
/// thousand paths; two digits cost 12 KiB and resolve 1 µs at 100 µs, well
/// inside what the SLA thresholds (hundreds of µs) need.
pub const HISTOGRAM_SIGFIGS: u8 = 2;

/// Values are clamped below this so a histogram that grows to hold them
/// stays within the range readers accept.
const HISTOGRAM_CLAMP_NS: u64 = RTT_HISTOGRAM_MAX_NS / 2;

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
        }
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It failed wire-format validation.
    Malformed(DropReason),
    /// Its node id is not a node of this sampler's rack.
    ForeignNode(u32),
}

impl Refusal {
    /// Every metric label a refusal is counted under.
    pub const LABELS: [&'static str; DropReason::ALL.len() + 1] = {
        let mut labels = [""; DropReason::ALL.len() + 1];
        let mut i = 0;
        while i < DropReason::ALL.len() {
            labels[i] = DropReason::ALL[i].as_str();
            i += 1;
        }
        labels[i] = "foreign_node";
        labels
    };

    /// Index of this refusal's label in [`Refusal::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Refusal::Malformed(reason) => usize::from(reason.code()) - 1,
            Refusal::ForeignNode(_) => DropReason::ALL.len(),
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// What became of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Its records were aggregated.
    Accepted {
        /// Records in it.
        records: usize,
    },
    /// Already received: dropped so its records do not count twice.
    Duplicate,
    /// Refused, and counted under the reason.
    Refused(Refusal),
}

/// Running totals since the sampler started, for its metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Datagrams accepted.
    pub datagrams: u64,
    /// Flow records accepted.
    pub flow_records: u64,
    /// Probe records accepted.
    pub probe_records: u64,
    /// Datagrams refused, by [`Refusal::index`].
    pub refused: [u64; Refusal::LABELS.len()],
    /// Duplicate datagrams dropped.
    pub duplicates: u64,
    /// Datagrams counted in the window of their arrival, not of their send
    /// time.
    pub rewindowed: u64,
    /// Records not aggregated because a window held `max_paths` paths.
    pub records_over_capacity: u64,
    /// Raw records not kept (or displaced) because a window held
    /// `max_samples`.
    pub samples_over_capacity: u64,
    /// Flow reports whose flow could not be remembered (`max_flows`): their
    /// counters were taken as the window's share.
    pub flows_untracked: u64,
    /// Windows emitted.
    pub windows_emitted: u64,
    /// Windows skipped after the process was stopped for too long.
    pub windows_skipped: u64,
    /// Per agent of the rack.
    pub agents: BTreeMap<u32, AgentTotals>,
}

/// Per-agent running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentTotals {
    /// Datagrams the sequence numbers say were sent.
    pub expected: u64,
    /// Distinct datagrams received.
    pub received: u64,
    /// Duplicates dropped.
    pub duplicate: u64,
    /// Datagrams that arrived after a later one.
    pub reordered: u64,
    /// Records received.
    pub records: u64,
    /// Restarts seen (epoch changes).
    pub restarts: u64,
    /// Last arrival, ns since the Unix epoch; 0 if never.
    pub last_seen_ns: u64,
}

/// One emitted window: its batch (or parts, when it would exceed the batch
/// size limit), ready to spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedWindow {
    /// Window start, ns since the Unix epoch.
    pub start_ns: u64,
    /// Encoded batches with their part numbers.
    pub parts: Vec<(u16, Vec<u8>)>,
    /// Paths summarized.
    pub paths: usize,
    /// Records aggregated.
    pub records: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PathKey {
    src: u32,
    dst: u32,
    dscp: u8,
    transport: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    node: u32,
    flow_id: u64,
    start_ns: u64,
}

/// What the sampler remembers of an open flow between its reports.
#[derive(Debug, Clone, Copy, Default)]
struct FlowState {
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    retrans_segs: u32,
    /// Window in which the flow was last counted (`u64::MAX`: never).
    counted_in: u64,
    retrans_counted_in: u64,
    reset_counted_in: u64,
}

impl FlowState {
    fn new() -> FlowState {
        FlowState {
            counted_in: u64::MAX,
            retrans_counted_in: u64::MAX,
            reset_counted_in: u64::MAX,
            ..FlowState::default()
        }
    }
}

/// A distribution of values: raw while small, a histogram when large.
#[derive(Debug, Clone)]
enum Dist {
    Few(Vec<u64>),
    Many(Box<Histogram<u64>>),
}

impl Default for Dist {
    fn default() -> Self {
        Dist::Few(Vec::new())
    }
}

impl Dist {
    /// Records `value`; beyond `spill_at` raw values the distribution turns
    /// into a histogram.
    fn record(&mut self, value: u64, spill_at: usize) {
        let value = value.min(HISTOGRAM_CLAMP_NS);
        match self {
            Dist::Few(values) if values.len() < spill_at => values.push(value),
            Dist::Few(values) => {
                values.push(value);
                let histogram = sized_histogram(values);
                *self = Dist::Many(Box::new(histogram));
            }
            Dist::Many(histogram) => {
                // Auto-resizing, and values are clamped: cannot fail.
                let _ = histogram.record(value);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Dist::Few(values) => values.is_empty(),
            Dist::Many(histogram) => histogram.is_empty(),
        }
    }

    fn into_histogram(self) -> Histogram<u64> {
        match self {
            Dist::Many(histogram) => *histogram,
            Dist::Few(values) => sized_histogram(&values),
        }
    }
}

/// A histogram of `values` covering just their range (it grows if more are
/// recorded), so small RTTs cost a small allocation.
fn sized_histogram(values: &[u64]) -> Histogram<u64> {
    let highest = values.iter().copied().max().unwrap_or(0).max(2);
    let mut histogram =
        Histogram::new_with_bounds(1, highest, HISTOGRAM_SIGFIGS).unwrap_or_else(|_| new_rtt_histogram());
    histogram.auto(true);
    for &v in values {
        let _ = histogram.record(v);
    }
    histogram
}

#[derive(Debug, Clone, Default)]
struct PathAgg {
    /// Raw values this path holds before switching to a histogram. It
    /// differs between paths so that a busy window's paths, all filling at
    /// the same pace, do not all convert in the same millisecond and stall
    /// ingest.
    spill_at: usize,
    probes_sent: u32,
    probes_lost: u32,
    probes_failed: u32,
    rtt_min_ns: u64,
    rtt_max_ns: u64,
    rtts: Dist,
    delays: Dist,
    flows: u32,
    flows_with_retrans: u32,
    flows_reset: u32,
    bytes_sent: u64,
    bytes_received: u64,
    segs_out: u64,
    retrans_segs: u64,
}

impl PathAgg {
    fn record_rtt(&mut self, rtt: u64) {
        if self.rtts.is_empty() || rtt < self.rtt_min_ns {
            self.rtt_min_ns = rtt;
        }
        self.rtt_max_ns = self.rtt_max_ns.max(rtt);
        self.rtts.record(rtt, self.spill_at);
    }

    fn new(key: &PathKey) -> PathAgg {
        // A cheap mix of the key spreads thresholds over [FEW, 2·FEW).
        let mix =
            (u64::from(key.src) << 32 | u64::from(key.dst)) ^ (u64::from(key.dscp) << 8 | u64::from(key.transport));
        let spread = (mix.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % FEW_SAMPLES;
        PathAgg {
            spill_at: FEW_SAMPLES + spread,
            ..PathAgg::default()
        }
    }
}

/// One kind's sampling state in a window.
#[derive(Debug, Clone)]
struct Sampler<R> {
    kept: Vec<(SampleMeta, R)>,
    /// Indexes into `kept` of ordinary (not anomalous) samples, which an
    /// anomalous record may displace when the window is full.
    ordinary: Vec<usize>,
    /// Ordinary records seen since the last one kept, and the latest of them.
    since_kept: u32,
    pending: Option<(u32, R)>,
}

impl<R> Default for Sampler<R> {
    fn default() -> Self {
        Sampler {
            kept: Vec::new(),
            ordinary: Vec::new(),
            since_kept: 0,
            pending: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct AgentWindow {
    epoch: u32,
    expected: u32,
    received: u32,
    duplicate: u32,
    reordered: u32,
    records: u32,
    restarted: bool,
}

#[derive(Debug, Default)]
struct Window {
    paths: HashMap<PathKey, PathAgg>,
    agents: BTreeMap<u32, AgentWindow>,
    flows: Sampler<FlowRecord>,
    probes: Sampler<ProbeRecord>,
    malformed: u32,
    records_over_capacity: u32,
    records: u64,
}

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
    flows: HashMap<FlowKey, FlowState>,
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
            settings,
            topology,
            agents,
            next_emit,
            windows: BTreeMap::new(),
            flows: HashMap::new(),
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
        let arrival = agent.sequence.observe(header.agent_epoch.get(), header.sequence.get());
        agent.last_seen_ns = arrival_ns;
        let epoch = agent.sequence.epoch().unwrap_or(0);
        let records = datagram.records.len();
        let agent_totals = self.totals.agents.entry(node).or_default();
        agent_totals.last_seen_ns = arrival_ns;
        let (expected, reordered, restarted) = match arrival {
            Arrival::Duplicate => {
                agent_totals.duplicate += 1;
                self.totals.duplicates += 1;
                let start = self.window_of(header.sent_at_ns.get(), arrival_ns);
                let w = self.window(start).agents.entry(node).or_default();
                w.epoch = epoch;
                w.duplicate += 1;
                return Ingested::Duplicate;
            }
            Arrival::New {
                expected,
                reordered,
                restarted,
            } => (expected, reordered, restarted),
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

    fn path<'w>(settings: &Settings, window: &'w mut Window, key: PathKey) -> Option<&'w mut PathAgg> {
        let full = window.paths.len() >= settings.max_paths;
        match window.paths.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                window.records_over_capacity += 1;
                None
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = PathAgg::new(e.key());
                Some(e.insert(path))
            }
        }
    }

    fn flow(&mut self, start: u64, node: u32, record: &FlowRecord) {
        let key = FlowKey {
            node,
            flow_id: record.flow_id.get(),
            start_ns: record.start_ns.get(),
        };
        let end = record.end_reason();
        let tracked = self.flows.len() < self.settings.max_flows || self.flows.contains_key(&key);
        let mut state = self.flows.get(&key).copied().unwrap_or_else(FlowState::new);
        if !tracked {
            self.totals.flows_untracked += 1;
        }
        // Counters only grow; if a report goes backwards it is taken whole.
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        let bytes_sent = delta(record.bytes_acked.get(), state.bytes_acked);
        let bytes_received = delta(record.bytes_received.get(), state.bytes_received);
        let segs_out = delta(record.segs_out.get().into(), state.segs_out.into());
        let retrans = delta(record.retrans_segs.get().into(), state.retrans_segs.into());
        let first_in_window = state.counted_in != start;
        let retrans_first = retrans > 0 && state.retrans_counted_in != start;
        let reset_first = end == EndReason::Reset && state.reset_counted_in != start;
        state.bytes_acked = record.bytes_acked.get();
        state.bytes_received = record.bytes_received.get();
        state.segs_out = record.segs_out.get();
        state.retrans_segs = record.retrans_segs.get();
        state.counted_in = start;
        if retrans_first {
            state.retrans_counted_in = start;
        }
        if reset_first {
            state.reset_counted_in = start;
        }
        if end == EndReason::Open {
            if tracked {
                self.flows.insert(key, state);
            }
        } else {
            self.flows.remove(&key);
        }

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
        let Some(path) = Self::path(settings, window, key) else {
            self.totals.records_over_capacity += 1;
            return;
        };
        path.flows += u32::from(first_in_window);
        path.flows_with_retrans += u32::from(retrans_first);
        path.flows_reset += u32::from(reset_first);
        path.bytes_sent += bytes_sent;
        path.bytes_received += bytes_received;
        path.segs_out += segs_out;
        path.retrans_segs += retrans;

        let mut anomalies = 0;
        if retrans > 0 {
            anomalies |= anomaly::RETRANS;
        }
        match end {
            EndReason::Reset => anomalies |= anomaly::RESET,
            EndReason::Timeout => anomalies |= anomaly::FLOW_TIMEOUT,
            _ => {}
        }
        if u64::from(record.srtt_us.get()) * 1_000 > settings.rtt_anomaly_ns {
            anomalies |= anomaly::HIGH_RTT;
        }
        let over = sample(&mut window.flows, settings, node, anomalies, *record);
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
        let Some(path) = Self::path(settings, window, key) else {
            self.totals.records_over_capacity += 1;
            return;
        };
        path.probes_sent += 1;
        let mut anomalies = 0;
        match record.outcome() {
            ProbeOutcome::Ok => {
                if let Some(rtt) = record.network_rtt_ns() {
                    path.record_rtt(rtt);
                    if rtt > settings.rtt_anomaly_ns {
                        anomalies |= anomaly::HIGH_RTT;
                    }
                }
                if let Some(delay) = record.responder_delay_ns() {
                    path.delays.record(delay, path.spill_at);
                }
            }
            ProbeOutcome::Timeout => {
                path.probes_lost += 1;
                anomalies |= anomaly::PROBE_TIMEOUT;
            }
            // Validation refuses unknown outcomes; count anything else as an error.
            _ => {
                path.probes_failed += 1;
                anomalies |= anomaly::PROBE_ERROR;
            }
        }
        let over = sample(&mut window.probes, settings, node, anomalies, *record);
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

    fn merge_into(&mut self, start: u64, other: Window) {
        // Only the counts that fit a later window move; paths of skipped
        // windows are summed into the same keys.
        let settings = self.settings.clone();
        let target = self.window(start);
        target.malformed += other.malformed;
        target.records_over_capacity += other.records_over_capacity;
        target.records += other.records;
        for (key, p) in other.paths {
            let Some(t) = Self::path(&settings, target, key) else {
                continue;
            };
            t.probes_sent += p.probes_sent;
            t.probes_lost += p.probes_lost;
            t.probes_failed += p.probes_failed;
            t.flows += p.flows;
            t.flows_with_retrans += p.flows_with_retrans;
            t.flows_reset += p.flows_reset;
            t.bytes_sent += p.bytes_sent;
            t.bytes_received += p.bytes_received;
            t.segs_out += p.segs_out;
            t.retrans_segs += p.retrans_segs;
            for rtt in dist_values(&p.rtts) {
                t.record_rtt(rtt);
            }
            for delay in dist_values(&p.delays) {
                t.delays.record(delay, t.spill_at);
            }
        }
        for (node, a) in other.agents {
            let t = target.agents.entry(node).or_default();
            t.epoch = t.epoch.max(a.epoch);
            t.expected += a.expected;
            t.received += a.received;
            t.duplicate += a.duplicate;
            t.reordered += a.reordered;
            t.records += a.records;
            t.restarted |= a.restarted;
        }
        target.flows.kept.extend(other.flows.kept);
        target.probes.kept.extend(other.probes.kept);
    }

    /// Detaches window `start` with what its batch needs, cheaply, so the
    /// expensive part ([`ClosedWindow::encode`]) runs without holding up
    /// ingest.
    fn close(&mut self, start: u64, now_ns: u64) -> ClosedWindow {
        let window = self.windows.remove(&start).unwrap_or_default();
        self.totals.windows_emitted += 1;
        let stale_before = start.saturating_sub(FLOW_IDLE_WINDOWS * self.settings.window_ns);
        self.flows
            .retain(|_, f| f.counted_in != u64::MAX && f.counted_in >= stale_before);

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
                let mut c = AgentCompleteness::new(node);
                c.last_seen_ns = agent.last_seen_ns.into();
                match window.agents.get(&node) {
                    Some(w) => {
                        c.agent_epoch = w.epoch.into();
                        c.datagrams_expected = w.expected.into();
                        c.datagrams_received = w.received.into();
                        c.datagrams_duplicate = w.duplicate.into();
                        c.datagrams_reordered = w.reordered.into();
                        c.records = w.records.into();
                        if w.restarted {
                            c.flags |= completeness_flags::RESTARTED;
                        }
                        if w.received == 0 {
                            c.flags |= completeness_flags::SILENT;
                        }
                    }
                    None => {
                        c.agent_epoch = agent.sequence.epoch().unwrap_or(0).into();
                        c.flags |= completeness_flags::SILENT;
                    }
                }
                c
            })
            .collect();
        ClosedWindow {
            info,
            first_part,
            window,
            completeness,
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
                // Data held for skipped windows is emitted with the first
                // one kept, not lost: re-key it.
                let first_kept = self.next_emit + skip * len;
                let stale: Vec<u64> = self.windows.range(..first_kept).map(|(&s, _)| s).collect();
                for start in stale {
                    if let Some(w) = self.windows.remove(&start) {
                        self.merge_into(first_kept, w);
                    }
                }
                self.next_emit = first_kept;
            }
        }
        let mut closed = Vec::new();
        while due(self.next_emit) {
            closed.push(self.close(self.next_emit, now_ns));
            self.next_emit += len;
        }
        closed
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

/// A window detached from the [`Aggregator`], not yet encoded.
#[derive(Debug)]
pub struct ClosedWindow {
    info: BatchInfo,
    first_part: u16,
    window: Window,
    completeness: Vec<AgentCompleteness>,
}

impl ClosedWindow {
    /// Window start, ns since the Unix epoch.
    pub fn start_ns(&self) -> u64 {
        self.info.window_start_ns
    }

    /// Summarizes the paths (quantiles, histograms), finishes sampling and
    /// encodes the batch, in parts if it would exceed the size limit.
    pub fn encode(self) -> EmittedWindow {
        let ClosedWindow {
            info,
            first_part,
            mut window,
            completeness,
        } = self;
        let mut parts = Parts::new(info, first_part);
        let mut paths: Vec<(PathKey, PathAgg)> = std::mem::take(&mut window.paths).into_iter().collect();
        paths.sort_unstable_by_key(|(k, _)| (k.src, k.dst, k.dscp, k.transport));
        let path_count = paths.len();
        let mut histogram_bytes = Vec::new();
        for (key, path) in paths {
            let (summary, histogram) = summarize(&key, path, &mut histogram_bytes);
            parts.path(summary, histogram);
        }
        for c in completeness {
            parts.completeness(c);
        }
        finish_sampling(&mut window.flows);
        finish_sampling(&mut window.probes);
        for (meta, record) in window.flows.kept {
            parts.flow(meta, record);
        }
        for (meta, record) in window.probes.kept {
            parts.probe(meta, record);
        }
        EmittedWindow {
            start_ns: info.window_start_ns,
            parts: parts.finish(),
            paths: path_count,
            records: window.records,
        }
    }
}

/// The part number a restart within `window`'s window continues from.
pub fn next_part(window: &EmittedWindow) -> (u64, u16) {
    (window.start_ns, window.parts.last().map_or(0, |(p, _)| p + 1))
}

fn dist_values(dist: &Dist) -> Vec<u64> {
    match dist {
        Dist::Few(values) => values.clone(),
        Dist::Many(h) => h
            .iter_recorded()
            .flat_map(|v| std::iter::repeat_n(v.value_iterated_to(), v.count_at_value() as usize))
            .collect(),
    }
}

/// Keeps `record` if it is anomalous or its turn in the 1-in-N sample;
/// returns how many samples the window's bound turned away (0 or 1).
fn sample<R: Copy>(sampler: &mut Sampler<R>, settings: &Settings, node: u32, anomalies: u8, record: R) -> u64 {
    if anomalies != 0 {
        let meta = SampleMeta::new(node, 1, anomalies);
        if sampler.kept.len() < settings.max_samples {
            sampler.kept.push((meta, record));
            return 0;
        }
        // Anomalies first: displace an ordinary sample if there is one.
        if let Some(index) = sampler.ordinary.pop() {
            sampler.kept[index] = (meta, record);
        }
        return 1;
    }
    sampler.since_kept += 1;
    if sampler.since_kept < settings.sample_one_in {
        sampler.pending = Some((node, record));
        return 0;
    }
    let weight = std::mem::take(&mut sampler.since_kept);
    sampler.pending = None;
    keep_ordinary(sampler, settings.max_samples, SampleMeta::new(node, weight, 0), record)
}

fn keep_ordinary<R>(sampler: &mut Sampler<R>, max_samples: usize, meta: SampleMeta, record: R) -> u64 {
    if sampler.kept.len() >= max_samples {
        return 1;
    }
    sampler.ordinary.push(sampler.kept.len());
    sampler.kept.push((meta, record));
    0
}

/// Keeps the last record of an incomplete sampling group, standing for the
/// whole group, so weights sum to the records seen.
fn finish_sampling<R>(sampler: &mut Sampler<R>) {
    if let Some((node, record)) = sampler.pending.take() {
        let weight = std::mem::take(&mut sampler.since_kept);
        // The bound was checked when the window filled; a final group beyond
        // it is still kept, as the weights would otherwise under-count.
        sampler.kept.push((SampleMeta::new(node, weight, 0), record));
    }
}

fn summarize(key: &PathKey, p: PathAgg, scratch: &mut Vec<u8>) -> (PathSummary, Vec<u8>) {
    let transport = (key.transport != 0).then(|| Transport::from(key.transport));
    let mut s = PathSummary::new(key.src, key.dst, key.dscp, transport);
    s.probes_sent = p.probes_sent.into();
    s.probes_lost = p.probes_lost.into();
    s.probes_failed = p.probes_failed.into();
    s.flows = p.flows.into();
    s.flows_with_retrans = p.flows_with_retrans.into();
    s.flows_reset = p.flows_reset.into();
    s.bytes_sent = p.bytes_sent.into();
    s.bytes_received = p.bytes_received.into();
    s.segs_out = p.segs_out.into();
    s.retrans_segs = p.retrans_segs.into();
    scratch.clear();
    if !p.rtts.is_empty() {
        let h = p.rtts.into_histogram();
        s.rtt_min_ns = p.rtt_min_ns.into();
        s.rtt_max_ns = p.rtt_max_ns.into();
        // Quantiles report the highest value equivalent to the bucket, which
        // may exceed the exact maximum by the histogram's precision.
        let q = |q: f64| h.value_at_quantile(q).min(p.rtt_max_ns);
        s.rtt_p50_ns = q(0.5).into();
        s.rtt_p90_ns = q(0.9).into();
        s.rtt_p99_ns = q(tail_quantile(h.len())).into();
        s.rtt_p999_ns = q(0.999).into();
        // Encoding a valid histogram into a Vec cannot fail; a path without
        // a histogram still carries its quantiles.
        let _ = encode_histogram(&h, scratch);
    }
    if !p.delays.is_empty() {
        let h = p.delays.into_histogram();
        s.responder_delay_p50_ns = h.value_at_quantile(0.5).into();
        s.responder_delay_p99_ns = h.value_at_quantile(tail_quantile(h.len())).into();
    }
    (s, scratch.clone())
}

/// Splits one window's items into batches under [`MAX_BATCH_BYTES`].
struct Parts {
    info: BatchInfo,
    next_part: u16,
    current: BatchBuilder,
    done: Vec<(u16, Vec<u8>)>,
    limit: usize,
}

impl Parts {
    fn new(info: BatchInfo, first_part: u16) -> Parts {
        Parts::with_limit(info, first_part, MAX_BATCH_BYTES)
    }

    fn with_limit(mut info: BatchInfo, first_part: u16, limit: usize) -> Parts {
        info.batch_id = BatchId::for_window(info.sampler_id, info.window_start_ns, first_part);
        Parts {
            current: BatchBuilder::new(info),
            info,
            next_part: first_part,
            done: Vec::new(),
            limit,
        }
    }

    fn make_room(&mut self, bytes: usize) {
        if self.current.encoded_len() + bytes <= self.limit || self.current.is_empty() {
            return;
        }
        self.next_part += 1;
        let mut info = self.info;
        info.batch_id = BatchId::for_window(info.sampler_id, info.window_start_ns, self.next_part);
        // Window-level counts are reported once, in the first part.
        info.malformed_datagrams = 0;
        info.records_over_capacity = 0;
        let full = std::mem::replace(&mut self.current, BatchBuilder::new(info));
        self.push_done(self.next_part - 1, &full);
    }

    fn push_done(&mut self, part: u16, builder: &BatchBuilder) {
        // Items were sized against the limit, which is within the format's.
        if let Ok(bytes) = builder.encode() {
            self.done.push((part, bytes));
        }
    }

    fn path(&mut self, summary: PathSummary, histogram: Vec<u8>) {
        self.make_room(size_of::<PathSummary>() + histogram.len());
        if self.current.push_path(summary, &histogram).is_err() {
            let _ = self.current.push_path(summary, &[]);
        }
    }

    fn completeness(&mut self, c: AgentCompleteness) {
        self.make_room(size_of::<AgentCompleteness>());
        self.current.push_completeness(c);
    }

    fn flow(&mut self, meta: SampleMeta, record: FlowRecord) {
        self.make_room(size_of::<wire_format::SampledFlow>());
        self.current.push_flow(meta, record);
    }

    fn probe(&mut self, meta: SampleMeta, record: ProbeRecord) {
        self.make_room(size_of::<wire_format::SampledProbe>());
        self.current.push_probe(meta, record);
    }

    fn finish(mut self) -> Vec<(u16, Vec<u8>)> {
        let last = std::mem::replace(&mut self.current, BatchBuilder::new(self.info));
        self.push_done(self.next_part, &last);
        self.done
    }
}
