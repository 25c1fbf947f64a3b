//! Property tests: every record kind and batch round-trips through the wire,
//! any valid record re-encodes to the same bytes, and no input — arbitrary,
//! truncated, extended or bit-flipped — makes a parser panic.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use wire_format::*;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

fn ip_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| (Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into())),
        (any::<u128>(), any::<u128>()).prop_map(|(a, b)| (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())),
    ]
}

fn pick<T: Copy + std::fmt::Debug + 'static>(values: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(values)
}

prop_compose! {
    fn flow()(
        (src, dst) in ip_pair(),
        flow_id in any::<u64>(),
        ports in any::<(u16, u16)>(),
        dscp in 0u8..64,
        direction in pick(Direction::ALL),
        end_reason in pick(EndReason::ALL),
        times in any::<(u64, u64)>(),
        bytes in any::<(u64, u64)>(),
        segs in any::<(u32, u32, u32)>(),
        rtt in any::<(u32, u32)>(),
    ) -> Flow {
        Flow {
            flow_id, src, dst, src_port: ports.0, dst_port: ports.1, dscp, direction, end_reason,
            start_ns: times.0, duration_ns: times.1, bytes_acked: bytes.0, bytes_received: bytes.1,
            segs_out: segs.0, segs_in: segs.1, retrans_segs: segs.2, srtt_us: rtt.0, min_rtt_us: rtt.1,
        }
    }
}

fn probe_endpoints() -> impl Strategy<Value = (Transport, ProbeAddr, ProbeAddr, u32, u32)> {
    prop_oneof![
        (pick(&[Transport::Udp, Transport::Tcp]), ip_pair(), any::<(u16, u16)>()).prop_map(
            |(transport, (a, b), (p, q))| (transport, ProbeAddr::Ip(a), ProbeAddr::Ip(b), p.into(), q.into())
        ),
        (any::<([u8; 16], [u8; 16])>(), 0..=MAX_QPN, 0..=MAX_QPN).prop_map(|((a, b), p, q)| (
            Transport::RdmaUd,
            ProbeAddr::Gid(Gid(a)),
            ProbeAddr::Gid(Gid(b)),
            p,
            q
        )),
    ]
}

prop_compose! {
    fn probe()(
        (transport, src, dst, src_port, dst_port) in probe_endpoints(),
        dst_node in any::<u32>(),
        dscp in 0u8..64,
        seq in any::<u64>(),
        (outcome, error_code) in prop_oneof![
            Just((ProbeOutcome::Ok, 0u16)),
            Just((ProbeOutcome::Timeout, 0u16)),
            any::<u16>().prop_map(|code| (ProbeOutcome::Error, code)),
        ],
        t in any::<(u64, u64, u64, u64)>(),
    ) -> Probe {
        Probe {
            transport, src, dst, src_port, dst_port, dst_node, dscp, seq, outcome, error_code,
            timestamps: ProbeTimestamps {
                requester_send_ns: t.0, responder_receive_ns: t.1, responder_send_ns: t.2, requester_receive_ns: t.3,
            },
        }
    }
}

const ORIGIN: Origin = Origin {
    node_id: 11,
    agent_epoch: 5,
};

/// A datagram of `records`, built in a buffer pre-filled with 0xa5 so that
/// bytes the builder forgets to write show up.
fn datagram<R: Record>(records: impl IntoIterator<Item = R>, seq: u32, sent: u64) -> Vec<u8> {
    let mut buf = vec![0xa5u8; MAX_UDP_PAYLOAD];
    let mut builder = DatagramBuilder::new(&mut buf, ORIGIN).unwrap();
    for record in records {
        builder.push(&record).unwrap();
    }
    builder.finish(seq, sent).to_vec()
}

fn flow_datagram(flows: &[Flow], seq: u32, sent: u64) -> Vec<u8> {
    datagram(flows.iter().map(Flow::to_record), seq, sent)
}

fn probe_datagram(probes: &[Probe]) -> Vec<u8> {
    datagram(probes.iter().map(Probe::to_record), 0, 0)
}

prop_compose! {
    fn path()(
        key in (any::<u32>(), any::<u32>(), 0u8..64, proptest::option::of(pick(Transport::ALL))),
        counts in (0u32..1_000_000, 0u32..1_000, 0u32..1_000),
        rtts in any::<[u64; 8]>(),
        flows in (0u32..1_000_000, 0u32..1_000, 0u32..1_000),
        bytes in any::<[u64; 4]>(),
        histogram in proptest::collection::vec(any::<u8>(), 0..64),
    ) -> (PathSummary, Vec<u8>) {
        let mut p = PathSummary::new(key.0, key.1, key.2, key.3);
        if key.3.is_some() {
            p.probes_sent = (counts.0 + counts.1 + counts.2).into();
            p.probes_lost = counts.1.into();
            p.probes_failed = counts.2.into();
        }
        p.rtt_min_ns = rtts[0].into();
        p.rtt_p50_ns = rtts[1].into();
        p.rtt_p90_ns = rtts[2].into();
        p.rtt_p99_ns = rtts[3].into();
        p.rtt_p999_ns = rtts[4].into();
        p.rtt_max_ns = rtts[5].into();
        p.responder_delay_p50_ns = rtts[6].into();
        p.responder_delay_p99_ns = rtts[7].into();
        p.flows = (flows.0 + flows.1 + flows.2).into();
        p.flows_with_retrans = flows.1.into();
        p.flows_reset = flows.2.into();
        p.bytes_sent = bytes[0].into();
        p.bytes_received = bytes[1].into();
        p.segs_out = bytes[2].into();
        p.retrans_segs = bytes[3].into();
        (p, histogram)
    }
}

prop_compose! {
    fn completeness()(
        ids in any::<(u32, u32)>(),
        counts in any::<[u32; 5]>(),
        flags in 0u8..=completeness_flags::ALL,
        last_seen in any::<u64>(),
    ) -> AgentCompleteness {
        let mut c = AgentCompleteness::new_zeroed();
        c.node_id = ids.0.into();
        c.agent_epoch = ids.1.into();
        c.datagrams_expected = counts[0].into();
        c.datagrams_received = counts[1].into();
        c.datagrams_duplicate = counts[2].into();
        c.datagrams_reordered = counts[3].into();
        c.records = counts[4].into();
        c.flags = flags;
        c.last_seen_ns = last_seen.into();
        c
    }
}

fn meta() -> impl Strategy<Value = SampleMeta> {
    prop_oneof![
        (any::<u32>(), 1u32..).prop_map(|(node, weight)| SampleMeta::new(node, weight, 0)),
        (any::<u32>(), 1u8..=anomaly::ALL).prop_map(|(node, bits)| SampleMeta::new(node, 1, bits)),
    ]
}

prop_compose! {
    fn batch()(
        ids in any::<(u32, u32, u16)>(),
        window in (any::<u64>(), 1u64..),
        counters in any::<(u64, u32, u32, u32)>(),
        paths in proptest::collection::vec(path(), 0..8),
        completeness in proptest::collection::vec(completeness(), 0..8),
        flows in proptest::collection::vec((meta(), flow()), 0..8),
        probes in proptest::collection::vec((meta(), probe()), 0..8),
    ) -> BatchBuilder {
        let mut builder = BatchBuilder::new(BatchInfo {
            batch_id: BatchId::for_window(ids.0, window.0, ids.2),
            sampler_id: ids.0,
            rack_id: ids.1,
            window_start_ns: window.0,
            window_len_ns: window.1,
            created_ns: counters.0,
            malformed_datagrams: counters.1,
            records_over_capacity: counters.2,
            spool_dropped_batches: counters.3,
        });
        for (summary, histogram) in paths {
            builder.push_path(summary, &histogram).unwrap();
        }
        for c in completeness {
            builder.push_completeness(c);
        }
        for (meta, flow) in flows {
            builder.push_flow(meta, flow.to_record());
        }
        for (meta, probe) in probes {
            builder.push_probe(meta, probe.to_record());
        }
        builder
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn flows_round_trip(flows in proptest::collection::vec(flow(), 0..=13), seq in any::<u32>(), sent in any::<u64>()) {
        let bytes = flow_datagram(&flows, seq, sent);
        prop_assert_eq!(bytes.len(), DATAGRAM_HEADER_LEN + flows.len() * 104);
        let datagram = parse(&bytes).unwrap();
        prop_assert_eq!(datagram.header.sequence.get(), seq);
        prop_assert_eq!(datagram.header.sent_at_ns.get(), sent);
        let Records::Flow(records) = datagram.records else { panic!("kind") };
        let decoded: Vec<Flow> = records.iter().map(|r| Flow::from_record(r).unwrap()).collect();
        prop_assert_eq!(decoded, flows);
    }

    #[test]
    fn probes_round_trip(probes in proptest::collection::vec(probe(), 0..=15)) {
        let bytes = probe_datagram(&probes);
        let Records::Probe(records) = parse(&bytes).unwrap().records else { panic!("kind") };
        let decoded: Vec<Probe> = records.iter().map(|r| Probe::from_record(r).unwrap()).collect();
        prop_assert_eq!(decoded, probes);
    }

    #[test]
    fn batches_round_trip(builder in batch()) {
        let bytes = builder.encode().unwrap();
        prop_assert_eq!(bytes.len(), builder.encoded_len());
        let view = BatchView::parse(&bytes).unwrap();
        // Re-encoding the parsed sections must give the same bytes.
        let mut again = BatchBuilder::new(view.header.info());
        for p in view.paths {
            again.push_path(*p, view.histogram(p)).unwrap();
        }
        view.completeness.iter().for_each(|c| again.push_completeness(*c));
        view.flows.iter().for_each(|s| again.push_flow(s.meta, s.record));
        view.probes.iter().for_each(|s| again.push_probe(s.meta, s.record));
        prop_assert_eq!(again.encode().unwrap(), bytes);
    }

    /// Any record that validates is in canonical form: decoding and encoding
    /// it gives back the same bytes. Random bytes are nudged towards validity
    /// (enumerations, ranges, reserved bytes) so most cases exercise the
    /// check rather than being refused early.
    #[test]
    fn valid_records_are_canonical(
        mut bytes in any::<[u8; 104]>(),
        mut probe_bytes in any::<[u8; 96]>(),
        family in pick(&[4u8, 6]),
        enums in (1u8..=2, 0u8..=3, 1u8..=2, 0u8..=1),
    ) {
        bytes[76] = family;
        if family == 4 {
            bytes[40..52].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
            bytes[56..68].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        }
        (bytes[77], bytes[78]) = (enums.0, enums.1);
        bytes[79] &= 63;
        bytes[100..104].fill(0);
        let record = FlowRecord::read_from_bytes(&bytes).unwrap();
        let flow = Flow::from_record(&record).unwrap();
        prop_assert_eq!(flow.to_record().as_bytes().to_vec(), bytes.to_vec());

        probe_bytes[72..74].fill(0);
        probe_bytes[76..78].fill(0);
        (probe_bytes[84], probe_bytes[85]) = (enums.2, 6);
        probe_bytes[86] &= 63;
        probe_bytes[87] = enums.3;
        probe_bytes[88..96].fill(0);
        let record = ProbeRecord::read_from_bytes(&probe_bytes).unwrap();
        let probe = Probe::from_record(&record).unwrap();
        prop_assert_eq!(probe.to_record().as_bytes().to_vec(), probe_bytes.to_vec());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&bytes);
        let _ = BatchView::parse(&bytes);
        let _ = BatchAck::parse(&bytes);
        let _ = decode_histogram(&bytes);
    }

    /// Arbitrary bytes behind a valid header: exercises record validation
    /// rather than the early length checks.
    #[test]
    fn arbitrary_records_never_panic(kind in 0u8..4, count in 0u16..16, body in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut bytes = vec![0u8; DATAGRAM_HEADER_LEN];
        bytes[0..2].copy_from_slice(&count.to_be_bytes());
        bytes[2] = DATAGRAM_VERSION;
        bytes[3] = kind;
        bytes.extend_from_slice(&body);
        if let Ok(datagram) = parse(&bytes) {
            prop_assert_eq!(datagram.records.len(), usize::from(count));
        }
    }

    #[test]
    fn truncated_or_extended_datagrams_are_refused(flows in proptest::collection::vec(flow(), 1..=13), cut in any::<prop::sample::Index>(), extra in proptest::collection::vec(any::<u8>(), 1..200)) {
        let bytes = flow_datagram(&flows, 1, 1);
        let cut = cut.index(bytes.len());
        let err = parse(&bytes[..cut]).unwrap_err();
        prop_assert_eq!(err.reason(), DropReason::Truncated);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(parse(&longer).unwrap_err().reason(), DropReason::Oversized);
    }

    #[test]
    fn truncated_or_extended_batches_are_refused(builder in batch(), cut in any::<prop::sample::Index>(), extra in proptest::collection::vec(any::<u8>(), 1..200)) {
        let bytes = builder.encode().unwrap();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(BatchView::parse(&bytes[..cut]).unwrap_err().reason(), DropReason::Truncated);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(BatchView::parse(&longer).unwrap_err().reason(), DropReason::Oversized);
    }

    /// A single flipped byte either still parses (to values that validate) or
    /// is refused with a reason — never a panic.
    #[test]
    fn flipped_bytes_are_handled(builder in batch(), at in any::<prop::sample::Index>(), xor in 1u8..) {
        let mut bytes = builder.encode().unwrap();
        let at = at.index(bytes.len());
        bytes[at] ^= xor;
        if let Ok(view) = BatchView::parse(&bytes) {
            for s in view.flows {
                prop_assert!(Flow::from_record(&s.record).is_ok());
            }
        }
    }

    #[test]
    fn histograms_round_trip(values in proptest::collection::vec(1u64..RTT_HISTOGRAM_MAX_NS, 0..200)) {
        let mut histogram = new_rtt_histogram();
        for v in &values {
            histogram.record(*v).unwrap();
        }
        let mut bytes = Vec::new();
        encode_histogram(&histogram, &mut bytes).unwrap();
        let decoded = decode_histogram(&bytes).unwrap();
        prop_assert_eq!(decoded.len(), values.len() as u64);
        for q in [0.0, 0.5, 0.99, 1.0] {
            prop_assert_eq!(decoded.value_at_quantile(q), histogram.value_at_quantile(q));
        }
    }
}
