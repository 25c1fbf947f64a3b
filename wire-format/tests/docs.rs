//! docs/wire-format.md is checked against the code: every layout table must
//! list exactly the struct's fields at their real offsets and sizes, and every
//! golden hex block must equal, byte for byte, what the encoder produces for
//! the values the document describes.
//!
//! After an intentional format change, regenerate the blocks with
//! `cargo test -p wire-format --test docs -- --ignored --nocapture print_golden`.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::mem::offset_of;

use wire_format::*;
use zerocopy::{FromZeros, IntoBytes};

const DOC: &str = include_str!("../../docs/wire-format.md");

/// (field, offset, size) for every field of a layout, in order.
type Layout = Vec<(&'static str, usize, usize)>;

macro_rules! layout {
    ($ty:ty; $($field:ident),+ $(,)?) => {{
        let zero = <$ty>::new_zeroed();
        vec![$((stringify!($field), offset_of!($ty, $field), size_of_val(&zero.$field))),+]
    }};
}

fn layouts() -> Vec<(&'static str, usize, Layout)> {
    vec![
        (
            "DatagramHeader",
            size_of::<DatagramHeader>(),
            layout!(DatagramHeader; count, version, kind, node_id, agent_epoch, sequence, sent_at_ns),
        ),
        (
            "FlowRecord",
            size_of::<FlowRecord>(),
            layout!(FlowRecord; flow_id, start_ns, duration_ns, bytes_acked, bytes_received, src_addr, dst_addr,
                src_port, dst_port, family, direction, end_reason, dscp, segs_out, segs_in, retrans_segs, srtt_us,
                min_rtt_us, reserved),
        ),
        (
            "ProbeRecord",
            size_of::<ProbeRecord>(),
            layout!(ProbeRecord; seq, requester_send_ns, responder_receive_ns, responder_send_ns,
                requester_receive_ns, src_addr, dst_addr, src_port, dst_port, dst_node, transport, family, dscp,
                outcome, error_code, reserved),
        ),
        (
            "BatchHeader",
            size_of::<BatchHeader>(),
            layout!(BatchHeader; magic, version, reserved, batch_id, sampler_id, rack_id, window_start_ns,
                window_len_ns, created_ns, path_count, completeness_count, flow_sample_count, probe_sample_count,
                histogram_bytes, malformed_datagrams, records_over_capacity, spool_dropped_batches, reserved2),
        ),
        (
            "PathSummary",
            size_of::<PathSummary>(),
            layout!(PathSummary; src_node, dst_node, dscp, transport, reserved, probes_sent, probes_lost,
                probes_failed, rtt_min_ns, rtt_p50_ns, rtt_p90_ns, rtt_p99_ns, rtt_p999_ns, rtt_max_ns,
                responder_delay_p50_ns, responder_delay_p99_ns, flows, flows_with_retrans, flows_reset,
                histogram_len, bytes_sent, bytes_received, segs_out, retrans_segs, histogram_offset, reserved2),
        ),
        (
            "AgentCompleteness",
            size_of::<AgentCompleteness>(),
            layout!(AgentCompleteness; node_id, agent_epoch, datagrams_expected, datagrams_received,
                datagrams_duplicate, datagrams_reordered, records, flags, reserved, last_seen_ns),
        ),
        (
            "SampleMeta",
            size_of::<SampleMeta>(),
            layout!(SampleMeta; node_id, weight, anomalies, reserved),
        ),
        (
            "SampledFlow",
            size_of::<SampledFlow>(),
            layout!(SampledFlow; meta, record),
        ),
        (
            "SampledProbe",
            size_of::<SampledProbe>(),
            layout!(SampledProbe; meta, record),
        ),
        (
            "BatchAck",
            size_of::<BatchAck>(),
            layout!(BatchAck; magic, version, status, error_code, batch_id),
        ),
        (
            "ProbePacket",
            size_of::<ProbePacket>(),
            layout!(ProbePacket; magic, version, kind, reserved, requester_node, responder_node, seq,
                requester_send_ns, responder_receive_ns, responder_send_ns),
        ),
    ]
}

/// The lines of the section whose heading starts with `### \`name\``.
fn section(name: &str) -> Vec<&'static str> {
    let heading = format!("### `{name}`");
    let mut lines = DOC.lines().skip_while(|l| !l.starts_with(&heading));
    assert!(lines.next().is_some(), "docs/wire-format.md has no heading {heading}");
    lines.take_while(|l| !l.starts_with('#')).collect()
}

/// (offset, size, field) from the rows of a section's layout table.
fn table_rows(name: &str) -> Vec<(usize, usize, String)> {
    section(name)
        .into_iter()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | offset | size | field | type | meaning |
            let offset = cells.get(1)?.parse().ok()?;
            let size = cells.get(2)?.parse().ok()?;
            let field = cells.get(3)?.trim_matches('`').to_string();
            Some((offset, size, field))
        })
        .collect()
}

#[test]
fn every_layout_table_matches_the_struct() {
    for (name, size, fields) in layouts() {
        // The macro lists must cover the struct with no gaps, or this test
        // would let an undocumented field through.
        let mut end = 0;
        for &(field, offset, len) in &fields {
            assert_eq!(offset, end, "{name}.{field}: gap or overlap in the test's field list");
            end += len;
        }
        assert_eq!(end, size, "{name}: the test's field list does not cover the struct");

        let rows = table_rows(name);
        let expected: Vec<(usize, usize, String)> = fields.iter().map(|&(f, o, s)| (o, s, f.to_string())).collect();
        assert_eq!(
            rows, expected,
            "docs/wire-format.md table for {name} differs from the code"
        );
        let heading = format!("### `{name}` ({size} bytes)");
        assert!(
            DOC.lines().any(|l| l == heading),
            "docs/wire-format.md needs the heading {heading:?}"
        );
    }
}

/// The bytes of the hex block after `<!-- golden: name -->`; `#` starts a
/// comment.
fn golden(name: &str) -> Vec<u8> {
    let marker = format!("<!-- golden: {name} -->");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in docs/wire-format.md"));
    let block = DOC[start..].split("```").nth(1).expect("hex block after the marker");
    block
        .lines()
        .skip(1) // the ```hex fence line
        .flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace())
        .map(|byte| u8::from_str_radix(byte, 16).unwrap_or_else(|_| panic!("bad hex byte {byte:?} in {name}")))
        .collect()
}

// The values the document's examples describe. Keep in step with the prose.

fn doc_flow() -> Flow {
    Flow {
        flow_id: 0x0000_0000_0000_2a01,
        src: "198.18.1.1".parse().unwrap(),
        dst: "198.18.2.3".parse().unwrap(),
        src_port: 40_000,
        dst_port: 443,
        dscp: 46,
        direction: Direction::Outbound,
        end_reason: EndReason::Closed,
        start_ns: 1_700_000_000_000_000_000,
        duration_ns: 2_500_000,
        bytes_acked: 100_000,
        bytes_received: 5_000,
        segs_out: 72,
        segs_in: 40,
        retrans_segs: 1,
        srtt_us: 45,
        min_rtt_us: 30,
    }
}

fn doc_probe() -> Probe {
    Probe {
        transport: Transport::Udp,
        src: ProbeAddr::Ip("fd00::1:1".parse().unwrap()),
        dst: ProbeAddr::Ip("fd00::2:3".parse().unwrap()),
        src_port: 40_001,
        dst_port: 7_788,
        dst_node: 203,
        dscp: 0,
        seq: 17,
        outcome: ProbeOutcome::Ok,
        error_code: 0,
        timestamps: ProbeTimestamps {
            requester_send_ns: 1_700_000_000_000_000_000,
            responder_receive_ns: 1_700_000_000_000_020_000,
            responder_send_ns: 1_700_000_000_000_025_000,
            requester_receive_ns: 1_700_000_000_000_045_000,
        },
    }
}

const ORIGIN: Origin = Origin {
    node_id: 101,
    agent_epoch: 1_700_000_000,
};

fn doc_flow_datagram() -> Vec<u8> {
    let mut buf = [0u8; DEFAULT_MAX_DATAGRAM];
    let mut builder = DatagramBuilder::new(&mut buf, ORIGIN).unwrap();
    builder.push(&doc_flow().to_record()).unwrap();
    builder.finish(42, 1_700_000_000_200_000_000).to_vec()
}

fn doc_probe_datagram() -> Vec<u8> {
    let mut buf = [0u8; DEFAULT_MAX_DATAGRAM];
    let mut builder = DatagramBuilder::new(&mut buf, ORIGIN).unwrap();
    builder.push(&doc_probe().to_record()).unwrap();
    builder.finish(43, 1_700_000_000_200_000_000).to_vec()
}

fn doc_batch() -> Vec<u8> {
    let window_start_ns = 1_700_000_000_000_000_000;
    let mut builder = BatchBuilder::new(BatchInfo {
        batch_id: BatchId::for_window(9, window_start_ns, 0),
        sampler_id: 9,
        rack_id: 1,
        window_start_ns,
        window_len_ns: 10_000_000_000,
        created_ns: 1_700_000_010_050_000_000,
        malformed_datagrams: 0,
        records_over_capacity: 0,
        spool_dropped_batches: 0,
    });
    let mut histogram = new_rtt_histogram();
    histogram.record(25_000).unwrap();
    let mut encoded = Vec::new();
    encode_histogram(&histogram, &mut encoded).unwrap();
    let mut path = PathSummary::new(101, 203, 0, Some(Transport::Udp));
    path.probes_sent = 10.into();
    path.probes_lost = 1.into();
    for q in [
        &mut path.rtt_min_ns,
        &mut path.rtt_p50_ns,
        &mut path.rtt_p90_ns,
        &mut path.rtt_p99_ns,
        &mut path.rtt_p999_ns,
        &mut path.rtt_max_ns,
    ] {
        *q = 25_000.into();
    }
    path.responder_delay_p50_ns = 5_000.into();
    path.responder_delay_p99_ns = 5_000.into();
    builder.push_path(path, &encoded).unwrap();
    let mut completeness = AgentCompleteness::new_zeroed();
    completeness.node_id = 101.into();
    completeness.agent_epoch = 1_700_000_000.into();
    completeness.datagrams_expected = 50.into();
    completeness.datagrams_received = 49.into();
    completeness.records = 120.into();
    completeness.last_seen_ns = 1_700_000_009_900_000_000.into();
    builder.push_completeness(completeness);
    builder.push_flow(SampleMeta::new(101, 1, anomaly::RETRANS), doc_flow().to_record());
    builder.push_probe(SampleMeta::new(101, 10, 0), doc_probe().to_record());
    builder.encode().unwrap()
}

fn doc_ack() -> Vec<u8> {
    let id = BatchId::for_window(9, 1_700_000_000_000_000_000, 0);
    BatchAck::new(id, AckStatus::Stored, 0).as_bytes().to_vec()
}

fn examples() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("flow-datagram", doc_flow_datagram()),
        ("probe-datagram", doc_probe_datagram()),
        ("batch", doc_batch()),
        ("ack", doc_ack()),
    ]
}

#[test]
fn golden_bytes_match_the_document() {
    for (name, bytes) in examples() {
        assert_eq!(
            golden(name),
            bytes,
            "docs/wire-format.md golden block {name} differs from the encoder"
        );
    }
}

#[test]
fn golden_bytes_parse_back_to_the_documented_values() {
    let flow_bytes = golden("flow-datagram");
    let flow = parse(&flow_bytes).unwrap();
    let Records::Flow(flows) = flow.records else {
        panic!("flow datagram holds flows")
    };
    assert_eq!(Flow::from_record(&flows[0]).unwrap(), doc_flow());
    let probe_bytes = golden("probe-datagram");
    let probe = parse(&probe_bytes).unwrap();
    let Records::Probe(probes) = probe.records else {
        panic!("probe datagram holds probes")
    };
    let probe = Probe::from_record(&probes[0]).unwrap();
    assert_eq!(probe, doc_probe());
    assert_eq!(probes[0].network_rtt_ns(), Some(40_000));
    assert_eq!(probes[0].responder_delay_ns(), Some(5_000));
    let batch_bytes = golden("batch");
    let batch = BatchView::parse(&batch_bytes).unwrap();
    let histogram = decode_histogram(batch.histogram(&batch.paths[0])).unwrap();
    assert_eq!(histogram.len(), 1);
    assert_eq!(batch.flows[0].meta.anomalies, anomaly::RETRANS);
    assert_eq!(BatchAck::parse(&golden("ack")).unwrap().status(), AckStatus::Stored);
}

/// Prints the golden blocks, one line per field, for pasting into the doc.
#[test]
#[ignore = "generator: run by hand after an intentional format change"]
fn print_golden() {
    let all = layouts();
    let fields_of = |name: &str| {
        all.iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, _, f)| f.clone())
            .unwrap()
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ");
    let dump = |out: &mut String, struct_name: &str, bytes: &[u8], prefix: &str| {
        for (field, offset, size) in fields_of(struct_name) {
            for (i, chunk) in bytes[offset..offset + size].chunks(16).enumerate() {
                let label = if i == 0 {
                    format!("# {prefix}{field}")
                } else {
                    String::from("#   …")
                };
                out.push_str(&format!("{:<48} {label}\n", hex(chunk)));
            }
        }
    };
    for (name, bytes) in examples() {
        let mut out = String::new();
        match name {
            "flow-datagram" | "probe-datagram" => {
                let record = if name == "flow-datagram" {
                    "FlowRecord"
                } else {
                    "ProbeRecord"
                };
                dump(&mut out, "DatagramHeader", &bytes[..24], "header.");
                dump(&mut out, record, &bytes[24..], "record[0].");
            }
            "batch" => {
                let mut at = 0;
                for (section, len) in [
                    ("BatchHeader", 96),
                    ("PathSummary", 144),
                    ("AgentCompleteness", 40),
                    ("SampledFlow", 120),
                    ("SampledProbe", 112),
                ] {
                    match section {
                        "SampledFlow" | "SampledProbe" => {
                            let record = if section == "SampledFlow" {
                                "FlowRecord"
                            } else {
                                "ProbeRecord"
                            };
                            dump(&mut out, "SampleMeta", &bytes[at..at + 16], &format!("{section}.meta."));
                            dump(
                                &mut out,
                                record,
                                &bytes[at + 16..at + len],
                                &format!("{section}.record."),
                            );
                        }
                        _ => dump(&mut out, section, &bytes[at..at + len], &format!("{section}.")),
                    }
                    at += len;
                }
                for (i, chunk) in bytes[at..].chunks(16).enumerate() {
                    let label = if i == 0 {
                        "# histograms (HdrHistogram V2)"
                    } else {
                        "#   …"
                    };
                    out.push_str(&format!("{:<48} {label}\n", hex(chunk)));
                }
            }
            _ => dump(&mut out, "BatchAck", &bytes, ""),
        }
        println!("<!-- golden: {name} -->\n```hex\n{out}```\n");
    }
}
