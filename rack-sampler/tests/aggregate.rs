//! The aggregation logic on constructed datagrams: exact window summaries,
//! completeness, sampling weights, bounds and refusals.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{Counters, datagram, datagrams, flow, ip, probe, topology};
use rack_sampler::aggregate::{Aggregator, Ingested, Refusal, Settings};
use wire_format::{
    AgentCompleteness, BatchView, DropReason, EndReason, FlowRecord, ProbeOutcome, anomaly, completeness_flags,
    decode_histogram, tail_quantile,
};

const SECOND: u64 = 1_000_000_000;
const W: u64 = 10 * SECOND;
/// A window start far from zero, as real clocks give.
const T0: u64 = 1_800_000_000 * SECOND;

fn settings() -> Settings {
    Settings {
        sampler_id: 7,
        rack_id: 1,
        window_ns: W,
        grace_ns: 2 * SECOND,
        max_paths: 1_000,
        max_flows: 1_000,
        sample_one_in: 10,
        rtt_anomaly_ns: 1_000_000,
        max_samples: 1_000,
        max_batch_bytes: wire_format::MAX_BATCH_BYTES,
        heartbeat_ns: 5_000_000_000,
    }
}

fn aggregator(settings: Settings) -> Aggregator {
    Aggregator::new(settings, topology(), T0)
}

/// Emits window `start` (and any before it) and returns its batch bytes.
fn emit(agg: &mut Aggregator, start: u64) -> Vec<u8> {
    let windows = agg.emit_due(start + W + 2 * SECOND);
    let window = windows.into_iter().find(|w| w.start_ns == start).unwrap();
    assert_eq!(window.parts.len(), 1);
    window.parts.into_iter().next().unwrap().1
}

fn completeness<'a>(view: &'a BatchView<'_>, node: u32) -> &'a AgentCompleteness {
    view.completeness.iter().find(|c| c.node_id.get() == node).unwrap()
}

/// One slow probe of 50 (a responder descheduled for 10 ms) is the
/// window's maximum, not its tail: the p99 of so few probes is the
/// second-highest, and so for responder delay.
#[test]
fn one_slow_probe_is_the_maximum_not_the_tail() {
    let mut agg = aggregator(settings());
    let records: Vec<_> = (0..50u64)
        .map(|i| {
            let slow = if i == 17 { 10_000_000 } else { 0 };
            probe(101, 102, i, ProbeOutcome::Ok, 100_000 + i * 100 + slow, 20_000 + slow)
        })
        .collect();
    for d in datagrams(101, 1, 0, T0 + SECOND, &records) {
        assert!(matches!(agg.ingest(&d, T0 + SECOND), Ingested::Accepted { .. }));
    }
    let bytes = emit(&mut agg, T0);
    let p = &BatchView::parse(&bytes).unwrap().paths[0];
    assert!(p.rtt_max_ns.get() >= 10_000_000);
    // The second-highest RTT is 104.9 µs (the histogram holds 2 digits).
    assert!(p.rtt_p99_ns.get().abs_diff(104_900) <= 1_050, "{}", p.rtt_p99_ns.get());
    assert!(
        p.responder_delay_p99_ns.get() <= 20_200,
        "{}",
        p.responder_delay_p99_ns.get()
    );
}

#[test]
fn probe_paths_are_summarized_exactly() {
    let mut agg = aggregator(settings());
    // 100 probes 101 → 102: RTT 100 µs + i µs for 97 answered, 2 timeouts,
    // 1 error; responder delay 20 µs; plus 10 probes 101 → 201.
    let mut records = Vec::new();
    for i in 0..100u64 {
        let outcome = match i {
            10 | 20 => ProbeOutcome::Timeout,
            30 => ProbeOutcome::Error,
            _ => ProbeOutcome::Ok,
        };
        records.push(probe(101, 102, i, outcome, 100_000 + i * 1_000, 20_000));
    }
    for i in 0..10u64 {
        records.push(probe(101, 201, i, ProbeOutcome::Ok, 2_000_000, 5_000));
    }
    for d in datagrams(101, 1, 0, T0 + SECOND, &records) {
        assert!(matches!(agg.ingest(&d, T0 + SECOND), Ingested::Accepted { .. }));
    }
    let bytes = emit(&mut agg, T0);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.header.window_start_ns.get(), T0);
    assert_eq!(view.header.window_len_ns.get(), W);
    assert_eq!(view.header.rack_id.get(), 1);
    assert_eq!(view.paths.len(), 2);

    let p = &view.paths[0];
    assert_eq!((p.src_node.get(), p.dst_node.get()), (101, 102));
    assert_eq!(p.probes_sent.get(), 100);
    assert_eq!(p.probes_lost.get(), 2);
    assert_eq!(p.probes_failed.get(), 1);
    assert_eq!(p.rtt_min_ns.get(), 100_000);
    assert_eq!(p.rtt_max_ns.get(), 199_000);
    // 97 answered RTTs 100..=199 µs without 110, 120, 130: exact quantiles
    // are the 49th and 97th values; the histogram holds 2 digits (1 %).
    let answered: Vec<u64> = (0..100u64)
        .filter(|i| ![10, 20, 30].contains(i))
        .map(|i| 100_000 + i * 1_000)
        .collect();
    let exact = |q: f64| answered[((q * answered.len() as f64).ceil() as usize).max(1) - 1];
    for (got, q) in [
        (p.rtt_p50_ns.get(), 0.5),
        (p.rtt_p90_ns.get(), 0.9),
        (p.rtt_p99_ns.get(), tail_quantile(97)),
    ] {
        let want = exact(q);
        assert!(got.abs_diff(want) <= want / 100 + 1, "q{q}: {got} vs {want}");
    }
    assert!(p.responder_delay_p50_ns.get().abs_diff(20_000) <= 200);
    let histogram = decode_histogram(view.histogram(p)).unwrap();
    assert_eq!(histogram.len(), 97);

    let inter = &view.paths[1];
    assert_eq!((inter.dst_node.get(), inter.probes_sent.get()), (201, 10));
    assert!(inter.rtt_p99_ns.get().abs_diff(2_000_000) <= 20_000);

    // Kept: every anomaly (2 timeouts, 1 error, 10 RTTs above 1 ms) with
    // weight 1, and ordinary records 1 in 10; weights sum to 110.
    let probes = view.probes;
    let anomalous: Vec<_> = probes.iter().filter(|s| s.meta.anomalies != 0).collect();
    assert_eq!(anomalous.len(), 13);
    assert!(anomalous.iter().all(|s| s.meta.weight.get() == 1));
    assert_eq!(
        anomalous
            .iter()
            .filter(|s| s.meta.anomalies == anomaly::PROBE_TIMEOUT)
            .count(),
        2
    );
    assert_eq!(
        anomalous
            .iter()
            .filter(|s| s.meta.anomalies == anomaly::HIGH_RTT)
            .count(),
        10
    );
    let total: u32 = probes.iter().map(|s| s.meta.weight.get()).sum();
    assert_eq!(total, 110);
    let ordinary: Vec<u32> = probes
        .iter()
        .filter(|s| s.meta.anomalies == 0)
        .map(|s| s.meta.weight.get())
        .collect();
    // 97 ordinary: nine full groups of 10 and a final group of 7.
    assert_eq!(ordinary, [10, 10, 10, 10, 10, 10, 10, 10, 10, 7]);
    assert!(probes.iter().all(|s| s.meta.node_id.get() == 101));
}

fn counters(bytes_acked: u64, segs_out: u32, retrans: u32) -> Counters {
    Counters {
        bytes_acked,
        bytes_received: bytes_acked / 2,
        segs_out,
        retrans,
        srtt_us: 50,
    }
}

#[test]
fn flows_count_once_per_window_and_only_their_share_of_bytes() {
    let mut agg = aggregator(settings());
    let to_102 = ip(102);
    let outside: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    let send = |agg: &mut Aggregator, seq: u32, at: u64, records: &[FlowRecord]| {
        let d = datagram(101, 1, seq, at, records);
        assert!(matches!(agg.ingest(&d, at), Ingested::Accepted { .. }));
    };
    // Window 0: flow 1 open with 1000 bytes; flow 2 to an outside address.
    send(
        &mut agg,
        0,
        T0 + SECOND,
        &[
            flow(101, to_102, 1, EndReason::Open, counters(1_000, 10, 0)),
            flow(101, outside, 2, EndReason::Closed, counters(50, 1, 0)),
        ],
    );
    // Window 1: flow 1 reported open again, then closed, retransmitting.
    send(
        &mut agg,
        1,
        T0 + W + SECOND,
        &[flow(101, to_102, 1, EndReason::Open, counters(3_000, 30, 2))],
    );
    send(
        &mut agg,
        2,
        T0 + W + 2 * SECOND,
        &[flow(101, to_102, 1, EndReason::Reset, counters(5_000, 50, 3))],
    );
    assert_eq!(agg.tracked_flows(), 0, "a finished flow is forgotten");

    let first = emit(&mut agg, T0);
    let view = BatchView::parse(&first).unwrap();
    let path = |view: &BatchView<'_>, dst: u32| *view.paths.iter().find(|p| p.dst_node.get() == dst).unwrap();
    let p = path(&view, 102);
    assert_eq!(
        (p.flows.get(), p.bytes_sent.get(), p.bytes_received.get()),
        (1, 1_000, 500)
    );
    assert_eq!(
        (p.segs_out.get(), p.retrans_segs.get(), p.flows_with_retrans.get()),
        (10, 0, 0)
    );
    assert_eq!((p.dscp, p.transport, p.probes_sent.get()), (10, 0, 0));
    let o = path(&view, 0);
    assert_eq!((o.flows.get(), o.bytes_sent.get()), (1, 50));

    let second = emit(&mut agg, T0 + W);
    let view = BatchView::parse(&second).unwrap();
    let p = path(&view, 102);
    assert_eq!(p.flows.get(), 1, "two reports of one flow in a window count once");
    assert_eq!(
        (p.bytes_sent.get(), p.segs_out.get(), p.retrans_segs.get()),
        (4_000, 40, 3)
    );
    assert_eq!((p.flows_with_retrans.get(), p.flows_reset.get()), (1, 1));
    // Both reports retransmitted: both kept, as anomalies.
    let kinds: Vec<u8> = view.flows.iter().map(|s| s.meta.anomalies).collect();
    assert_eq!(kinds, [anomaly::RETRANS, anomaly::RETRANS | anomaly::RESET]);
}

#[test]
fn completeness_counts_gaps_duplicates_reordering_restarts_and_silence() {
    let mut agg = aggregator(settings());
    let at = T0 + SECOND;
    let one = [probe(101, 102, 0, ProbeOutcome::Ok, 1_000, 0)];
    // Agent 101: 0 1 2 4 6 5 5 9 — 3, 7, 8 missing; 5 duplicated; 5 late.
    for seq in [0, 1, 2, 4, 6, 5, 5, 9] {
        agg.ingest(&datagram(101, 1, seq, at, &one), at);
    }
    // Agent 103 restarts: epoch 1 then epoch 2 from 0.
    agg.ingest(&datagram(103, 1, 500, at, &one), at);
    agg.ingest(&datagram(103, 2, 0, at, &one), at);
    agg.ingest(&datagram(103, 2, 1, at, &one), at);
    // Agent 102 sends nothing.

    let bytes = emit(&mut agg, T0);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.completeness.len(), 3, "every agent of the rack, and only those");
    let a = completeness(&view, 101);
    assert_eq!(a.datagrams_expected.get(), 10);
    assert_eq!(a.datagrams_received.get(), 7);
    assert_eq!(a.datagrams_duplicate.get(), 1);
    assert_eq!(a.datagrams_reordered.get(), 1);
    assert_eq!(a.records.get(), 7);
    assert_eq!(a.flags, 0);
    assert_eq!(a.last_seen_ns.get(), at);

    let silent = completeness(&view, 102);
    assert_eq!(silent.flags, completeness_flags::SILENT);
    assert_eq!(silent.last_seen_ns.get(), 0);

    let restarted = completeness(&view, 103);
    assert_eq!(restarted.flags, completeness_flags::RESTARTED);
    assert_eq!(restarted.agent_epoch.get(), 2);
    assert_eq!(restarted.datagrams_expected.get(), 3);
    assert_eq!(restarted.datagrams_received.get(), 3);

    // The next window, with no datagram at all, still reports all three.
    let bytes = emit(&mut agg, T0 + W);
    let view = BatchView::parse(&bytes).unwrap();
    assert!(view.paths.is_empty());
    for c in view.completeness {
        assert_eq!(c.flags, completeness_flags::SILENT);
    }
    assert_eq!(completeness(&view, 101).last_seen_ns.get(), at);
}

#[test]
fn malformed_and_foreign_datagrams_are_counted_by_reason() {
    let mut agg = aggregator(settings());
    let at = T0 + SECOND;
    let good = datagram(101, 1, 0, at, &[probe(101, 102, 0, ProbeOutcome::Ok, 1_000, 0)]);
    let mut bad_version = good.clone();
    bad_version[2] = 9;
    let mut bad_kind = good.clone();
    bad_kind[3] = 77;
    let mut bad_dscp = good.clone();
    bad_dscp[24 + 86] = 64; // record 0's dscp
    let cases: Vec<(Vec<u8>, Refusal)> = vec![
        (Vec::new(), Refusal::Malformed(DropReason::Truncated)),
        (good[..30].to_vec(), Refusal::Malformed(DropReason::Truncated)),
        (
            [good.clone(), vec![0]].concat(),
            Refusal::Malformed(DropReason::Oversized),
        ),
        (bad_version, Refusal::Malformed(DropReason::UnsupportedVersion)),
        (bad_kind, Refusal::Malformed(DropReason::UnknownKind)),
        (bad_dscp, Refusal::Malformed(DropReason::InvalidField)),
        (
            datagram(201, 1, 0, at, &[probe(201, 101, 0, ProbeOutcome::Ok, 1, 0)]),
            Refusal::ForeignNode(201),
        ),
    ];
    for (bytes, refusal) in &cases {
        assert_eq!(agg.ingest(bytes, at), Ingested::Refused(*refusal), "{refusal:?}");
    }
    assert!(matches!(agg.ingest(&good, at), Ingested::Accepted { records: 1 }));
    let totals = agg.totals().clone();
    assert_eq!(totals.refused.iter().sum::<u64>(), cases.len() as u64);
    assert_eq!(totals.refused[Refusal::Malformed(DropReason::Truncated).index()], 2);
    assert_eq!(totals.refused[Refusal::ForeignNode(0).index()], 1);
    assert_eq!(Refusal::ForeignNode(0).label(), "foreign_node");
    assert_eq!(
        Refusal::Malformed(DropReason::ReservedNotZero).label(),
        "reserved_not_zero"
    );

    let bytes = emit(&mut agg, T0);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.header.malformed_datagrams.get(), cases.len() as u32);
    assert_eq!(view.paths.len(), 1);
}

#[test]
fn bounds_are_counted_not_silent() {
    let mut s = settings();
    s.max_paths = 2;
    s.max_samples = 3;
    s.sample_one_in = 1;
    let mut agg = aggregator(s);
    let at = T0 + SECOND;
    // Three destinations: the third path is over the bound.
    let records: Vec<_> = [102, 103, 201]
        .iter()
        .flat_map(|&dst| (0..2).map(move |i| probe(101, dst, i, ProbeOutcome::Ok, 1_000, 0)))
        .collect();
    agg.ingest(&datagram(101, 1, 0, at, &records), at);
    // An anomaly when samples are full displaces an ordinary one.
    agg.ingest(
        &datagram(101, 1, 1, at, &[probe(101, 102, 9, ProbeOutcome::Timeout, 0, 0)]),
        at,
    );
    let totals = agg.totals().clone();
    assert_eq!(totals.records_over_capacity, 2);
    assert_eq!(totals.samples_over_capacity, 2);
    let bytes = emit(&mut agg, T0);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.paths.len(), 2);
    assert_eq!(view.header.records_over_capacity.get(), 2);
    assert_eq!(view.probes.len(), 3);
    assert_eq!(
        view.probes
            .iter()
            .filter(|s| s.meta.anomalies == anomaly::PROBE_TIMEOUT)
            .count(),
        1
    );
}

#[test]
fn late_and_skewed_datagrams_are_rewindowed_not_dropped() {
    let mut agg = aggregator(settings());
    let one = [probe(101, 102, 0, ProbeOutcome::Ok, 1_000, 0)];
    let first = emit(&mut agg, T0);
    assert!(BatchView::parse(&first).unwrap().paths.is_empty());
    // Sent in the emitted window, arriving now: counted in the current one.
    let now = T0 + W + 3 * SECOND;
    agg.ingest(&datagram(101, 1, 0, T0 + SECOND, &one), now);
    // Sent an hour in the future by a skewed clock: current window too.
    agg.ingest(&datagram(101, 1, 1, now + 3_600 * SECOND, &one), now);
    assert_eq!(agg.totals().rewindowed, 2);
    let bytes = emit(&mut agg, T0 + W);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.paths[0].probes_sent.get(), 2);
}

#[test]
fn shutdown_emits_open_windows_and_a_restart_continues_with_the_next_part() {
    let mut agg = aggregator(settings());
    let at = T0 + SECOND;
    agg.ingest(
        &datagram(101, 1, 0, at, &[probe(101, 102, 0, ProbeOutcome::Ok, 1_000, 0)]),
        at,
    );
    let (windows, resume) = agg.emit_all(at);
    assert_eq!(windows.len(), 1);
    assert_eq!(resume, Some((T0, 1)));
    let first_id = BatchView::parse(&windows[0].parts[0].1).unwrap().header.batch_id;

    let mut again = aggregator(settings());
    again.resume_window(T0, 1);
    let bytes = emit(&mut again, T0);
    let second_id = BatchView::parse(&bytes).unwrap().header.batch_id;
    assert_ne!(
        first_id, second_id,
        "the rest of the window is a new batch, not a duplicate"
    );
    assert_eq!(second_id, wire_format::BatchId::for_window(7, T0, 1));
}

#[test]
fn a_long_pause_catches_up_with_a_bounded_number_of_windows() {
    let mut agg = aggregator(settings());
    let later = T0 + 1_000 * W;
    let windows = agg.emit_due(later);
    assert_eq!(windows.len() as u64, rack_sampler::aggregate::MAX_CATCH_UP_WINDOWS);
    assert!(agg.totals().windows_skipped > 0);
    assert_eq!(
        agg.totals().windows_skipped + windows.len() as u64,
        (later - 2 * SECOND - T0) / W
    );
}

/// Two windows held when a long pause ends are skipped and merged into the
/// first window kept: their histograms are added (each holds more values
/// than a path keeps raw) and their unfinished sampling groups are kept, so
/// the weights still sum to the records.
#[test]
fn a_catch_up_merge_adds_histograms_and_keeps_sample_weights_exact() {
    let mut agg = aggregator(settings());
    let mut seq = 0;
    let mut rtts = Vec::new();
    for (window, count) in [(T0, 605u64), (T0 + W, 613)] {
        let records: Vec<_> = (0..count)
            .map(|i| {
                let rtt = 50_000 + (window - T0) / W * 7 + i * 311;
                rtts.push(rtt);
                probe(101, 102, i, ProbeOutcome::Ok, rtt, 1_000)
            })
            .collect();
        for d in datagrams(101, 1, seq, window + SECOND, &records) {
            assert!(matches!(agg.ingest(&d, window + SECOND), Ingested::Accepted { .. }));
            seq += 1;
        }
    }
    let windows = agg.emit_due(T0 + 1_000 * W);
    let first = &windows[0];
    assert!(first.start_ns > T0 + W, "both windows were skipped");
    assert_eq!(first.records, 605 + 613);
    let view = BatchView::parse(&first.parts[0].1).unwrap();
    let p = &view.paths[0];
    assert_eq!(p.probes_sent.get(), 605 + 613);
    assert_eq!(decode_histogram(view.histogram(p)).unwrap().len(), 605 + 613);
    rtts.sort_unstable();
    assert_eq!(
        (p.rtt_min_ns.get(), p.rtt_max_ns.get()),
        (rtts[0], rtts[rtts.len() - 1])
    );
    let median = rtts[rtts.len() / 2 - 1];
    assert!(
        p.rtt_p50_ns.get().abs_diff(median) <= median / 100,
        "{} vs {median}",
        p.rtt_p50_ns.get()
    );
    // 1 in 10: groups of 10, and each window's final group (5 and 3).
    let weights: Vec<u32> = view.probes.iter().map(|s| s.meta.weight.get()).collect();
    assert_eq!(weights.iter().sum::<u32>(), 605 + 613);
    assert_eq!(weights.iter().filter(|&&w| w != 10).count(), 2, "{weights:?}");
    assert_eq!(completeness(&view, 101).datagrams_received.get(), seq);
}

/// Item 1 of issue 17: what was measured before a window boundary (a fault
/// being cleared) is counted before it, though it is flushed after it. A
/// probe sent 0.4 s before the boundary that times out 0.6 s after it, and a
/// retransmission reported at the first tick after the boundary for the
/// second before it, both belong to the first window; the second window
/// holds only what happened in it.
#[test]
fn records_count_in_the_window_they_were_measured_in_not_the_one_they_were_flushed_in() {
    let mut agg = aggregator(settings());
    let boundary = T0 + W;
    let mut timed_out = probe(101, 102, 1, ProbeOutcome::Timeout, 0, 0);
    timed_out.requester_send_ns.set(boundary - 400_000_000);
    let mut answered = probe(101, 102, 2, ProbeOutcome::Ok, 100_000, 0);
    answered.requester_send_ns.set(boundary + 100_000_000);
    answered.requester_receive_ns.set(boundary + 100_100_000);
    let report = |at: u64, c: Counters| {
        let mut r = flow(101, ip(102), 9, EndReason::Open, c);
        r.start_ns.set(T0 + SECOND);
        r.duration_ns.set(at - (T0 + SECOND));
        r
    };
    // Reports at the ticks 8 s, 9 s (0 retransmissions) and 10 s (4
    // retransmissions in 9..10 s), the last flushed 0.2 s after the boundary.
    let flushed = boundary + 200_000_000;
    let ticks = [
        (8, counters(8_000, 80, 0)),
        (9, counters(9_000, 90, 0)),
        (10, counters(10_000, 100, 4)),
    ];
    for (seq, (tick, c)) in (0u32..).zip(ticks) {
        let at = T0 + tick * SECOND + 1_000_000;
        let sent = if tick == 10 { flushed } else { at };
        agg.ingest(&datagram(101, 1, seq, sent, &[report(at, c)]), sent);
    }
    // Then 11 s: a clean second after the boundary.
    let later = boundary + SECOND + 1_000_000;
    agg.ingest(
        &datagram(101, 1, 3, later, &[report(later, counters(11_000, 110, 4))]),
        later,
    );
    let probes_flushed = boundary + 600_000_000;
    agg.ingest(
        &datagram(101, 1, 4, probes_flushed, &[timed_out, answered]),
        probes_flushed,
    );
    assert_eq!(agg.totals().records_late, 0);

    let before = emit(&mut agg, T0);
    let view = BatchView::parse(&before).unwrap();
    let p = view.paths.iter().find(|p| p.transport == 0).unwrap();
    assert_eq!((p.retrans_segs.get(), p.flows_with_retrans.get()), (4, 1));
    let probed = view.paths.iter().find(|p| p.probes_sent.get() > 0).unwrap();
    assert_eq!((probed.probes_sent.get(), probed.probes_lost.get()), (1, 1));

    let after = emit(&mut agg, boundary);
    let view = BatchView::parse(&after).unwrap();
    let p = view.paths.iter().find(|p| p.transport == 0).unwrap();
    assert_eq!(
        (p.retrans_segs.get(), p.flows_with_retrans.get()),
        (0, 0),
        "the clean window is clean"
    );
    assert_eq!((p.bytes_sent.get(), p.flows.get()), (1_000, 1));
    let probed = view.paths.iter().find(|p| p.probes_sent.get() > 0).unwrap();
    assert_eq!((probed.probes_sent.get(), probed.probes_lost.get()), (1, 0));
    // The datagrams themselves are counted where they were sent.
    assert_eq!(completeness(&view, 101).datagrams_received.get(), 3);
}

/// A probe answered later than the grace period allows is not lost: it is
/// counted with its datagram, as late.
#[test]
fn a_record_whose_window_was_emitted_goes_with_its_datagram_and_is_counted_late() {
    let mut agg = aggregator(settings());
    emit(&mut agg, T0);
    let mut old = probe(101, 102, 1, ProbeOutcome::Timeout, 0, 0);
    old.requester_send_ns.set(T0 + W - SECOND);
    let at = T0 + W + 3 * SECOND;
    agg.ingest(&datagram(101, 1, 0, at, &[old]), at);
    assert_eq!(agg.totals().records_late, 1);
    let view_bytes = emit(&mut agg, T0 + W);
    let view = BatchView::parse(&view_bytes).unwrap();
    assert_eq!(view.paths[0].probes_lost.get(), 1);
}
