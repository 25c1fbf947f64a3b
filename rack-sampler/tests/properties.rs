//! Property tests of the aggregation on generated traffic, time passed in:
//! - in every emitted window, the weights of the flow samples and of the
//!   probe samples sum to the records of that kind counted in that window;
//! - per-window sums equal the input: probes sent, lost and failed per path,
//!   the count and extremes of its RTT histogram, flows' byte and segment
//!   deltas per path, datagrams, duplicates and records per agent, and
//!   malformed datagrams;
//! - windows are emitted once each, in order, skipping only after a pause
//!   longer than the catch-up limit, and what the skipped windows held is
//!   in the first window kept;
//! - a window too large for one batch part is split into parts whose union
//!   decodes to what one batch of the same window holds.
//!
//! Two aggregators take the same datagrams at the same times: a reference
//! with the real batch limit (every window in one part) and one whose part
//! limit is a few KiB, so most windows are split.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::BTreeMap;

use common::{Counters, datagram, flow, ip, probe, topology};
use proptest::prelude::*;
use rack_sampler::aggregate::{Aggregator, EmittedWindow, Ingested, MAX_CATCH_UP_WINDOWS, Settings};
use wire_format::{
    AgentCompleteness, BatchId, BatchView, EndReason, FlowRecord, MAX_BATCH_BYTES, PathSummary, ProbeOutcome,
    ProbeRecord, SampledFlow, SampledProbe, decode_histogram,
};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;
const W: u64 = 10 * SECOND;
const GRACE: u64 = 2 * SECOND;
/// A window start far from zero, as real clocks give.
const T0: u64 = 1_800_000_000 * SECOND;
const AGENTS: [u32; 3] = [101, 102, 103];
const SAMPLER_ID: u32 = 7;

fn settings(sample_one_in: u32, max_batch_bytes: usize) -> Settings {
    // Bounds far above what a case sends: a bound reached is the one way
    // sums and weights may legitimately fall short (and is tested apart).
    Settings {
        sampler_id: SAMPLER_ID,
        rack_id: 1,
        window_ns: W,
        grace_ns: GRACE,
        max_paths: 10_000,
        max_flows: 10_000,
        sample_one_in,
        rtt_anomaly_ns: MS,
        max_samples: 100_000,
        max_batch_bytes,
        heartbeat_ns: 5_000_000_000,
    }
}

// ---- generated input ----

#[derive(Debug, Clone)]
struct ProbeSpec {
    dst: u32,
    outcome: ProbeOutcome,
    rtt_us: u64,
}

/// One report of flow `flow` of the sending agent: its counters grow by
/// the `add_*` amounts since its previous report.
#[derive(Debug, Clone)]
struct FlowSpec {
    flow: u64,
    end: EndReason,
    add_bytes: u64,
    add_received: u64,
    add_segs: u32,
    add_retrans: u32,
    srtt_us: u32,
}

#[derive(Debug, Clone)]
enum Payload {
    Probes(Vec<ProbeSpec>),
    Flows(Vec<FlowSpec>),
}

/// One datagram: sent `gap_ms` after the previous one, arriving `delay_ms`
/// later (within the grace period), received twice if `duplicate`, and
/// followed by a truncated copy if `truncated`.
#[derive(Debug, Clone)]
struct Send {
    agent: u32,
    gap_ms: u64,
    delay_ms: u64,
    duplicate: bool,
    truncated: bool,
    payload: Payload,
}

/// The sampler stopped for `windows` windows; `backlog` was sent just before
/// and is read from the socket when it resumes, before its windows close.
#[derive(Debug, Clone)]
struct Pause {
    windows: u64,
    backlog: Vec<Send>,
}

#[derive(Debug, Clone)]
struct Case {
    sample_one_in: u32,
    part_limit: usize,
    before: Vec<Send>,
    pause: Option<Pause>,
    after: Vec<Send>,
}

fn probe_spec() -> impl Strategy<Value = ProbeSpec> {
    let outcome = prop_oneof![
        6 => Just(ProbeOutcome::Ok),
        1 => Just(ProbeOutcome::Timeout),
        1 => Just(ProbeOutcome::Error),
    ];
    (prop::sample::select(vec![101u32, 102, 103, 201]), outcome, 1u64..3_000)
        .prop_map(|(dst, outcome, rtt_us)| ProbeSpec { dst, outcome, rtt_us })
}

fn flow_spec() -> impl Strategy<Value = FlowSpec> {
    let end = prop_oneof![
        6 => Just(EndReason::Open),
        1 => Just(EndReason::Closed),
        1 => Just(EndReason::Reset),
        1 => Just(EndReason::Timeout),
    ];
    let retrans = prop_oneof![4 => Just(0u32), 1 => 1u32..4];
    (
        0u64..6,
        end,
        0u64..100_000,
        0u64..100_000,
        0u32..50,
        retrans,
        10u32..2_000,
    )
        .prop_map(
            |(flow, end, add_bytes, add_received, add_segs, add_retrans, srtt_us)| FlowSpec {
                flow,
                end,
                add_bytes,
                add_received,
                add_segs,
                add_retrans,
                srtt_us,
            },
        )
}

fn send() -> impl Strategy<Value = Send> {
    let payload = prop_oneof![
        prop::collection::vec(probe_spec(), 1..=10).prop_map(Payload::Probes),
        prop::collection::vec(flow_spec(), 1..=10).prop_map(Payload::Flows),
    ];
    (
        prop::sample::select(AGENTS.to_vec()),
        0u64..4_000,
        0u64..2_000, // below the grace period: never rewindowed
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        payload,
    )
        .prop_map(|(agent, gap_ms, delay_ms, duplicate, truncated, payload)| Send {
            agent,
            gap_ms,
            delay_ms,
            duplicate,
            truncated,
            payload,
        })
}

fn case(with_pause: bool) -> impl Strategy<Value = Case> {
    let pause = (
        // At least one window beyond the limit even with the grace period.
        MAX_CATCH_UP_WINDOWS + 2..MAX_CATCH_UP_WINDOWS + 6,
        prop::collection::vec(send(), 1..4),
    )
        .prop_map(|(windows, backlog)| Pause { windows, backlog });
    let pause = if with_pause {
        pause.prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    (
        1u32..=6,
        512usize..4_096,
        prop::collection::vec(send(), 0..30),
        pause,
        prop::collection::vec(send(), 0..10),
    )
        .prop_map(|(sample_one_in, part_limit, before, pause, after)| Case {
            sample_one_in,
            part_limit,
            before,
            pause,
            after,
        })
}

// ---- what a window should hold, and what it holds ----

/// (src, dst, dscp, transport)
type PathKey = (u32, u32, u8, u8);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PathSums {
    probes_sent: u64,
    probes_lost: u64,
    probes_failed: u64,
    /// Network RTTs in the path's histogram, and their extremes (0: none).
    rtts: u64,
    rtt_min_ns: u64,
    rtt_max_ns: u64,
    bytes_sent: u64,
    bytes_received: u64,
    segs_out: u64,
    retrans_segs: u64,
}

impl PathSums {
    fn rtt(&mut self, rtt_ns: u64) {
        if self.rtts == 0 || rtt_ns < self.rtt_min_ns {
            self.rtt_min_ns = rtt_ns;
        }
        self.rtt_max_ns = self.rtt_max_ns.max(rtt_ns);
        self.rtts += 1;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AgentSums {
    datagrams: u64,
    duplicates: u64,
    records: u64,
}

/// Per-window sums. From the input, `flow_records` and `probe_records`
/// count records; from a batch, they are the sums of the sample weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WindowSums {
    paths: BTreeMap<PathKey, PathSums>,
    agents: BTreeMap<u32, AgentSums>,
    flow_records: u64,
    probe_records: u64,
    /// Datagrams refused (counted in the window of their arrival).
    malformed: u64,
}

impl WindowSums {
    fn add(&mut self, other: &WindowSums) {
        for (key, p) in &other.paths {
            let t = self.paths.entry(*key).or_default();
            t.probes_sent += p.probes_sent;
            t.probes_lost += p.probes_lost;
            t.probes_failed += p.probes_failed;
            if p.rtts > 0 {
                if t.rtts == 0 || p.rtt_min_ns < t.rtt_min_ns {
                    t.rtt_min_ns = p.rtt_min_ns;
                }
                t.rtt_max_ns = t.rtt_max_ns.max(p.rtt_max_ns);
                t.rtts += p.rtts;
            }
            t.bytes_sent += p.bytes_sent;
            t.bytes_received += p.bytes_received;
            t.segs_out += p.segs_out;
            t.retrans_segs += p.retrans_segs;
        }
        for (node, a) in &other.agents {
            let t = self.agents.entry(*node).or_default();
            t.datagrams += a.datagrams;
            t.duplicates += a.duplicates;
            t.records += a.records;
        }
        self.flow_records += other.flow_records;
        self.probe_records += other.probe_records;
        self.malformed += other.malformed;
    }

    fn from_batch(content: &Content) -> WindowSums {
        let mut sums = WindowSums::default();
        for (p, histogram) in &content.paths {
            let key = (p.src_node.get(), p.dst_node.get(), p.dscp, p.transport);
            let rtts = if histogram.is_empty() {
                0
            } else {
                decode_histogram(histogram).unwrap().len()
            };
            sums.paths.insert(
                key,
                PathSums {
                    probes_sent: p.probes_sent.get().into(),
                    probes_lost: p.probes_lost.get().into(),
                    probes_failed: p.probes_failed.get().into(),
                    rtts,
                    rtt_min_ns: p.rtt_min_ns.get(),
                    rtt_max_ns: p.rtt_max_ns.get(),
                    bytes_sent: p.bytes_sent.get(),
                    bytes_received: p.bytes_received.get(),
                    segs_out: p.segs_out.get(),
                    retrans_segs: p.retrans_segs.get(),
                },
            );
        }
        for c in &content.completeness {
            sums.agents.insert(
                c.node_id.get(),
                AgentSums {
                    datagrams: c.datagrams_received.get().into(),
                    duplicates: c.datagrams_duplicate.get().into(),
                    records: c.records.get().into(),
                },
            );
        }
        sums.flow_records = content.flows.iter().map(|s| u64::from(s.meta.weight.get())).sum();
        sums.probe_records = content.probes.iter().map(|s| u64::from(s.meta.weight.get())).sum();
        sums.malformed = content.malformed.into();
        sums
    }
}

/// A window's batch content, from one batch or the union of its parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Content {
    /// Summaries (histogram offset zeroed: it depends on the part) and their
    /// histogram bytes.
    paths: Vec<(PathSummary, Vec<u8>)>,
    completeness: Vec<AgentCompleteness>,
    flows: Vec<SampledFlow>,
    probes: Vec<SampledProbe>,
    malformed: u32,
    records_over_capacity: u32,
    /// (sampler, rack, window start, window length, created)
    header: (u32, u32, u64, u64, u64),
}

impl Content {
    fn add(&mut self, view: &BatchView<'_>) {
        for p in view.paths {
            let mut summary = *p;
            summary.histogram_offset = 0.into();
            self.paths.push((summary, view.histogram(p).to_vec()));
        }
        self.completeness.extend_from_slice(view.completeness);
        self.flows.extend_from_slice(view.flows);
        self.probes.extend_from_slice(view.probes);
        self.malformed += view.header.malformed_datagrams.get();
        self.records_over_capacity += view.header.records_over_capacity.get();
        let h = view.header;
        self.header = (
            h.sampler_id.get(),
            h.rack_id.get(),
            h.window_start_ns.get(),
            h.window_len_ns.get(),
            h.created_ns.get(),
        );
    }
}

/// Decodes every part of `window`, checking their numbering, ids and sizes
/// (at most `limit` bytes unless a part holds a single item), and returns
/// their union.
fn decode(window: &EmittedWindow, limit: usize) -> Result<Content, TestCaseError> {
    let mut content = Content::default();
    for (i, (part, bytes)) in window.parts.iter().enumerate() {
        prop_assert_eq!(usize::from(*part), i, "parts are numbered from 0 in order");
        let view = BatchView::parse(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            view.header.batch_id,
            BatchId::for_window(SAMPLER_ID, window.start_ns, *part)
        );
        prop_assert_eq!(view.header.window_start_ns.get(), window.start_ns);
        let items = view.paths.len() + view.completeness.len() + view.flows.len() + view.probes.len();
        prop_assert!(
            bytes.len() <= limit || items == 1,
            "part {} of {} bytes over the {} limit",
            part,
            bytes.len(),
            limit
        );
        prop_assert!(items > 0 || window.parts.len() == 1, "an empty part");
        if i > 0 {
            prop_assert_eq!(view.header.malformed_datagrams.get(), 0, "window counts once");
            prop_assert_eq!(view.header.records_over_capacity.get(), 0, "window counts once");
        }
        content.add(&view);
    }
    Ok(content)
}

// ---- running a case ----

/// The two aggregators, the agents' state and the expected sums.
struct Run {
    reference: Aggregator,
    split: Aggregator,
    part_limit: usize,
    now: u64,
    seqs: BTreeMap<u32, u32>,
    /// Cumulative counters of each open flow (agent, flow id).
    flows: BTreeMap<(u32, u64), Counters>,
    /// Expected sums by the window holding the send time.
    expected: BTreeMap<u64, WindowSums>,
    emitted: Vec<(EmittedWindow, EmittedWindow)>,
}

impl Run {
    fn new(case: &Case) -> Run {
        let start = T0 + 3 * SECOND;
        Run {
            reference: Aggregator::new(settings(case.sample_one_in, MAX_BATCH_BYTES), topology(), start),
            split: Aggregator::new(settings(case.sample_one_in, case.part_limit), topology(), start),
            part_limit: case.part_limit,
            now: start,
            seqs: BTreeMap::new(),
            flows: BTreeMap::new(),
            expected: BTreeMap::new(),
            emitted: Vec::new(),
        }
    }

    /// Emits what is due at `now` from both aggregators.
    fn emit_due(&mut self, now: u64) {
        let a = self.reference.emit_due(now);
        let b = self.split.emit_due(now);
        assert_eq!(a.len(), b.len());
        self.emitted.extend(a.into_iter().zip(b));
    }

    fn flow_record(&mut self, agent: u32, f: &FlowSpec, sums: &mut WindowSums) -> FlowRecord {
        let (dst_ip, dst) = match f.flow % 4 {
            0 => (ip(102), 102),
            1 => (ip(103), 103),
            2 => (ip(201), 201),
            _ => ("203.0.113.9".parse().unwrap(), 0),
        };
        let c = self.flows.entry((agent, f.flow)).or_insert(Counters {
            bytes_acked: 0,
            bytes_received: 0,
            segs_out: 0,
            retrans: 0,
            srtt_us: 0,
        });
        c.bytes_acked += f.add_bytes;
        c.bytes_received += f.add_received;
        c.segs_out += f.add_segs;
        c.retrans += f.add_retrans;
        c.srtt_us = f.srtt_us;
        let record = flow(agent, dst_ip, f.flow, f.end, *c);
        if f.end != EndReason::Open {
            // Ended: the same id next time is a new flow, from zero.
            self.flows.remove(&(agent, f.flow));
        }
        let p = sums.paths.entry((agent, dst, record.dscp, 0)).or_default();
        p.bytes_sent += f.add_bytes;
        p.bytes_received += f.add_received;
        p.segs_out += u64::from(f.add_segs);
        p.retrans_segs += u64::from(f.add_retrans);
        sums.flow_records += 1;
        record
    }

    fn probe_record(agent: u32, seq: u32, p: &ProbeSpec, sums: &mut WindowSums) -> ProbeRecord {
        let record = probe(agent, p.dst, u64::from(seq), p.outcome, p.rtt_us * 1_000, 5_000);
        let path = sums
            .paths
            .entry((agent, p.dst, record.dscp, record.transport))
            .or_default();
        path.probes_sent += 1;
        path.probes_lost += u64::from(p.outcome == ProbeOutcome::Timeout);
        path.probes_failed += u64::from(p.outcome == ProbeOutcome::Error);
        if p.outcome == ProbeOutcome::Ok {
            path.rtt(p.rtt_us * 1_000);
        }
        sums.probe_records += 1;
        record
    }

    /// Gives `s`, sent at `sent` and arriving at `arrival`, to both
    /// aggregators and to the expected sums of the window holding `sent`.
    fn ingest(&mut self, s: &Send, sent: u64, arrival: u64) {
        let window = sent - sent % W;
        let mut sums = std::mem::take(self.expected.entry(window).or_default());
        let seq = *self.seqs.entry(s.agent).and_modify(|q| *q += 1).or_insert(0);
        let (bytes, records) = match &s.payload {
            Payload::Probes(probes) => {
                let records: Vec<ProbeRecord> = probes
                    .iter()
                    .map(|p| Self::probe_record(s.agent, seq, p, &mut sums))
                    .collect();
                (datagram(s.agent, 1, seq, sent, &records), records.len())
            }
            Payload::Flows(flows) => {
                let records: Vec<FlowRecord> = flows.iter().map(|f| self.flow_record(s.agent, f, &mut sums)).collect();
                (datagram(s.agent, 1, seq, sent, &records), records.len())
            }
        };
        let agent = sums.agents.entry(s.agent).or_default();
        agent.datagrams += 1;
        agent.records += records as u64;
        agent.duplicates += u64::from(s.duplicate);
        self.expected.insert(window, sums);
        if s.truncated {
            self.expected.entry(arrival - arrival % W).or_default().malformed += 1;
        }
        for aggregator in [&mut self.reference, &mut self.split] {
            assert_eq!(aggregator.ingest(&bytes, arrival), Ingested::Accepted { records });
            if s.duplicate {
                assert_eq!(aggregator.ingest(&bytes, arrival), Ingested::Duplicate);
            }
            if s.truncated {
                let refused = aggregator.ingest(&bytes[..bytes.len() - 1], arrival);
                assert!(matches!(refused, Ingested::Refused(_)), "{refused:?}");
            }
        }
    }

    /// Sends `s` after its gap, as the service would: due windows are
    /// emitted before each arrival.
    fn send(&mut self, s: &Send) {
        self.now += s.gap_ms * MS;
        let arrival = self.now + s.delay_ms * MS;
        self.emit_due(arrival);
        self.ingest(s, self.now, arrival);
    }

    fn pause(&mut self, p: &Pause) {
        let resumed = self.now + p.windows * W;
        let mut sent = self.now;
        for s in &p.backlog {
            sent += s.gap_ms * MS / 10;
            self.ingest(s, sent, resumed);
        }
        self.now = resumed;
        self.emit_due(resumed);
        // Catching up emits MAX_CATCH_UP_WINDOWS windows, more than
        // FLOW_IDLE_WINDOWS: every flow reported before the pause is
        // forgotten, and its next report taken whole.
        self.flows.clear();
    }

    fn finish(&mut self) {
        let end = self.now + GRACE;
        let (a, _) = self.reference.emit_all(end);
        let (b, _) = self.split.emit_all(end);
        assert_eq!(a.len(), b.len());
        self.emitted.extend(a.into_iter().zip(b));
    }
}

/// Runs `case` and checks every property; returns the run for more checks.
fn check(case: &Case) -> Result<Run, TestCaseError> {
    let mut run = Run::new(case);
    for s in &case.before {
        run.send(s);
    }
    if let Some(p) = &case.pause {
        run.pause(p);
    }
    for s in &case.after {
        run.send(s);
    }
    run.finish();

    // Windows: each once, in order, contiguous but for the skipped ones.
    let starts: Vec<u64> = run.emitted.iter().map(|(a, _)| a.start_ns).collect();
    let mut skipped = 0;
    let mut previous = T0 - W; // the first window is T0's
    for (a, b) in &run.emitted {
        prop_assert_eq!(a.start_ns, b.start_ns);
        let gap = a.start_ns.saturating_sub(previous);
        prop_assert!(gap >= W && gap % W == 0, "window {} after {}", a.start_ns, previous);
        skipped += gap / W - 1;
        previous = a.start_ns;
    }
    prop_assert_eq!(skipped, run.reference.totals().windows_skipped);
    prop_assert_eq!(skipped, run.split.totals().windows_skipped);
    prop_assert_eq!(
        skipped > 0,
        case.pause.is_some(),
        "a pause skips windows, and only a pause"
    );

    // What a skipped window held is in the first window kept after it.
    let mut expected: BTreeMap<u64, WindowSums> = BTreeMap::new();
    for (window, sums) in &run.expected {
        let kept = starts.iter().copied().find(|&s| s >= *window);
        prop_assert!(kept.is_some(), "window {} never emitted", window);
        if let Some(kept) = kept {
            expected.entry(kept).or_default().add(sums);
        }
    }

    for (one, parts) in &run.emitted {
        prop_assert_eq!(one.parts.len(), 1, "the reference holds every window in one batch");
        let whole = decode(one, MAX_BATCH_BYTES)?;
        let union = decode(parts, run.part_limit)?;
        prop_assert_eq!(&union, &whole, "window {}: parts differ from one batch", one.start_ns);

        let got = WindowSums::from_batch(&whole);
        let mut want = expected.remove(&one.start_ns).unwrap_or_default();
        for node in AGENTS {
            want.agents.entry(node).or_default();
        }
        prop_assert_eq!(
            got.flow_records,
            want.flow_records,
            "window {}: flow sample weights",
            one.start_ns
        );
        prop_assert_eq!(
            got.probe_records,
            want.probe_records,
            "window {}: probe sample weights",
            one.start_ns
        );
        prop_assert_eq!(&got, &want, "window {}", one.start_ns);
    }
    Ok(run)
}

proptest! {
    // A case costs about 15 ms unoptimized (two aggregators, a dozen
    // windows of histograms): 128 cases keep the suite quick.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Ordinary traffic, no pause.
    #[test]
    fn windows_sum_to_their_input_and_parts_to_the_whole(case in case(false)) {
        check(&case)?;
    }
}

proptest! {
    // Each case emits the catch-up's 360 windows twice: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A pause past the catch-up limit, with datagrams of the skipped
    /// windows read when the sampler resumes.
    #[test]
    fn a_catch_up_merge_keeps_sums_and_weights_exact(case in case(true)) {
        check(&case)?;
    }
}

/// A window of a few hundred samples with a part limit of 2 KiB: split
/// into many parts, whose union is what one batch holds.
#[test]
fn a_large_window_is_split_into_parts_that_add_up() {
    let case = Case {
        sample_one_in: 1,
        part_limit: 2_048,
        before: (0..40)
            .map(|i| Send {
                agent: AGENTS[i % 3],
                gap_ms: 100,
                delay_ms: 10,
                duplicate: false,
                truncated: false,
                payload: Payload::Probes(
                    (0..10)
                        .map(|j| ProbeSpec {
                            dst: [101, 102, 103, 201][(i + j) % 4],
                            outcome: ProbeOutcome::Ok,
                            rtt_us: 100 + j as u64,
                        })
                        .collect(),
                ),
            })
            .collect(),
        pause: None,
        after: Vec::new(),
    };
    let run = check(&case).unwrap();
    // 400 samples of 112 bytes, 12 paths, 3 agents: over 45 KiB.
    let parts = run.emitted[0].1.parts.len();
    assert!(parts > 20, "{parts} parts");
}
