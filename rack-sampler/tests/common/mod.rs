//! Shared test fixtures: a two-rack topology, records and datagrams.
#![allow(dead_code, unreachable_pub)] // each test binary uses a subset

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use configs::Topology;
use wire_format::{
    DatagramBuilder, Direction, EndReason, Flow, FlowRecord, Origin, Probe, ProbeAddr, ProbeOutcome, ProbeRecord,
    ProbeTimestamps, Record, Transport,
};

pub const TOPOLOGY: &str = r#"
[[racks]]
id = 1
name = "rack1"

[[racks]]
id = 2
name = "rack2"

[[nodes]]
id = 101
name = "r1n1"
rack = "rack1"
addresses = ["198.18.1.1", "fd00::1:1"]

[[nodes]]
id = 102
name = "r1n2"
rack = "rack1"
addresses = ["198.18.1.2"]

[[nodes]]
id = 103
name = "r1n3"
rack = "rack1"
addresses = ["198.18.1.3"]

[[nodes]]
id = 201
name = "r2n1"
rack = "rack2"
addresses = ["198.18.2.1"]
"#;

pub fn topology() -> Arc<Topology> {
    Arc::new(Topology::parse(TOPOLOGY, Path::new("topology.toml")).unwrap())
}

pub fn ip(node: u32) -> IpAddr {
    format!("198.18.{}.{}", node / 100, node % 100).parse().unwrap()
}

/// A UDP probe from `src` to `dst` answered after `rtt_ns` of network time
/// and `delay_ns` held by the responder (t1 = 1 s into the window).
pub fn probe(src: u32, dst: u32, seq: u64, outcome: ProbeOutcome, rtt_ns: u64, delay_ns: u64) -> ProbeRecord {
    let t1 = 1_000_000_000;
    let answered = outcome == ProbeOutcome::Ok;
    Probe {
        transport: Transport::Udp,
        src: ProbeAddr::Ip(ip(src)),
        dst: ProbeAddr::Ip(ip(dst)),
        src_port: 40_000,
        dst_port: 7788,
        dst_node: dst,
        dscp: 0,
        seq,
        outcome,
        error_code: u16::from(outcome == ProbeOutcome::Error),
        timestamps: ProbeTimestamps {
            requester_send_ns: t1,
            responder_receive_ns: if answered { 5_000_000_000 } else { 0 },
            responder_send_ns: if answered { 5_000_000_000 + delay_ns } else { 0 },
            requester_receive_ns: if answered { t1 + rtt_ns + delay_ns } else { 0 },
        },
    }
    .to_record()
}

/// Cumulative counters of one flow report.
#[derive(Clone, Copy)]
pub struct Counters {
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub retrans: u32,
    pub srtt_us: u32,
}

pub fn flow(src: u32, dst: IpAddr, flow_id: u64, end: EndReason, c: Counters) -> FlowRecord {
    Flow {
        flow_id,
        src: ip(src),
        dst,
        src_port: 40_000,
        dst_port: 443,
        dscp: 10,
        direction: Direction::Outbound,
        end_reason: end,
        start_ns: 1_000,
        duration_ns: 1_000,
        bytes_acked: c.bytes_acked,
        bytes_received: c.bytes_received,
        segs_out: c.segs_out,
        segs_in: 1,
        retrans_segs: c.retrans,
        srtt_us: c.srtt_us,
        min_rtt_us: 1,
    }
    .to_record()
}

/// One datagram of `records` (all must fit 1472 bytes).
pub fn datagram<R: Record>(node: u32, epoch: u32, seq: u32, sent_ns: u64, records: &[R]) -> Vec<u8> {
    let mut buf = [0u8; 1472];
    let mut b = DatagramBuilder::<R>::new(
        &mut buf,
        Origin {
            node_id: node,
            agent_epoch: epoch,
        },
    )
    .unwrap();
    for r in records {
        b.push(r).unwrap();
    }
    b.finish(seq, sent_ns).to_vec()
}

/// Datagrams carrying `records`, numbered from `first_seq`.
pub fn datagrams<R: Record>(node: u32, epoch: u32, first_seq: u32, sent_ns: u64, records: &[R]) -> Vec<Vec<u8>> {
    let per = wire_format::capacity::<R>(1472);
    records
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| datagram(node, epoch, first_seq + i as u32, sent_ns, chunk))
        .collect()
}
