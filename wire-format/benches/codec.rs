//! Encode and decode throughput of the wire formats, beside the cost of
//! receiving one datagram from a loopback UDP socket measured in the same run
//! (the baseline: decoding should cost well under what receiving costs).
//!
//! `cargo bench -p wire-format` prints criterion's results and then a summary
//! of records/s, GB/s and the decode/receive ratio.

use std::hint::black_box;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use wire_format::*;

const ORIGIN: Origin = Origin {
    node_id: 1,
    agent_epoch: 1,
};

fn flow(i: u64) -> FlowRecord {
    Flow {
        flow_id: i,
        src: "198.18.1.1".parse().expect("literal address"),
        dst: "198.18.2.1".parse().expect("literal address"),
        src_port: 40_000,
        dst_port: 443,
        dscp: 0,
        direction: Direction::Outbound,
        end_reason: EndReason::Closed,
        start_ns: 1_700_000_000_000_000_000 + i,
        duration_ns: 1_000_000,
        bytes_acked: 100_000 + i,
        bytes_received: 5_000,
        segs_out: 70,
        segs_in: 40,
        retrans_segs: 0,
        srtt_us: 40,
        min_rtt_us: 30,
    }
    .to_record()
}

fn probe(i: u64) -> ProbeRecord {
    Probe {
        transport: Transport::Udp,
        src: ProbeAddr::Ip("198.18.1.1".parse().expect("literal address")),
        dst: ProbeAddr::Ip("198.18.2.1".parse().expect("literal address")),
        src_port: 40_001,
        dst_port: 7788,
        dst_node: 2,
        dscp: 0,
        seq: i,
        outcome: ProbeOutcome::Ok,
        error_code: 0,
        timestamps: ProbeTimestamps {
            requester_send_ns: 1_000,
            responder_receive_ns: 2_000,
            responder_send_ns: 3_000,
            requester_receive_ns: 40_000 + i,
        },
    }
    .to_record()
}

fn full_datagram<R: Record>(make: impl Fn(u64) -> R) -> Vec<u8> {
    let mut buf = [0u8; DEFAULT_MAX_DATAGRAM];
    let mut builder = DatagramBuilder::new(&mut buf, ORIGIN).expect("1472 bytes hold a record");
    let mut i = 0;
    while builder.push(&make(i)).is_ok() {
        i += 1;
    }
    builder.finish(1, 1).to_vec()
}

fn big_batch(paths: u32) -> BatchBuilder {
    let mut builder = BatchBuilder::new(BatchInfo {
        batch_id: BatchId::for_window(1, 0, 0),
        sampler_id: 1,
        rack_id: 1,
        window_start_ns: 0,
        window_len_ns: 10_000_000_000,
        created_ns: 0,
        malformed_datagrams: 0,
        records_over_capacity: 0,
        spool_dropped_batches: 0,
    });
    let mut histogram = new_rtt_histogram();
    for v in 1..200u64 {
        histogram.record(20_000 + v * 100).expect("in range");
    }
    let mut encoded = Vec::new();
    encode_histogram(&histogram, &mut encoded).expect("encodes");
    for i in 0..paths {
        let mut path = PathSummary::new(i / 40 + 1, i % 40 + 1, 0, Some(Transport::Udp));
        path.probes_sent = 100.into();
        builder.push_path(path, &encoded).expect("fits");
        let mut completeness = <AgentCompleteness as zerocopy::FromZeros>::new_zeroed();
        completeness.node_id = i.into();
        builder.push_completeness(completeness);
        builder.push_flow(SampleMeta::new(i, 100, 0), flow(i.into()));
        builder.push_probe(SampleMeta::new(i, 100, 0), probe(i.into()));
    }
    builder
}

/// Sums a field of every record so the optimizer cannot skip the views.
fn consume(datagram: &Datagram<'_>) -> u64 {
    match datagram.records {
        Records::Flow(records) => records.iter().map(|r| r.bytes_acked.get()).sum(),
        Records::Probe(records) => records.iter().filter_map(|r| r.network_rtt_ns()).sum(),
    }
}

fn datagram_benches(c: &mut Criterion) {
    let flows = full_datagram(flow);
    let probes = full_datagram(probe);
    let flow_count = capacity::<FlowRecord>(DEFAULT_MAX_DATAGRAM) as u64;
    let probe_count = capacity::<ProbeRecord>(DEFAULT_MAX_DATAGRAM) as u64;

    let mut group = c.benchmark_group("datagram");
    group.throughput(Throughput::Elements(flow_count));
    group.bench_function("decode_flows", |b| {
        b.iter(|| consume(&parse(black_box(&flows)).expect("valid")))
    });
    group.throughput(Throughput::Elements(probe_count));
    group.bench_function("decode_probes", |b| {
        b.iter(|| consume(&parse(black_box(&probes)).expect("valid")))
    });
    group.throughput(Throughput::Elements(flow_count));
    let records: Vec<FlowRecord> = (0..flow_count).map(flow).collect();
    group.bench_function("encode_flows", |b| {
        let mut buf = [0u8; DEFAULT_MAX_DATAGRAM];
        b.iter(|| {
            let mut builder = DatagramBuilder::new(&mut buf, ORIGIN).expect("fits");
            for r in &records {
                builder.push(black_box(r)).expect("fits");
            }
            builder.finish(1, 1).len()
        })
    });
    group.bench_function("loopback_recv", |b| {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        rx.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        tx.connect(rx.local_addr().expect("bound")).expect("connect");
        let mut buf = [0u8; 2048];
        b.iter_custom(|iters| {
            // Send in chunks the default receive buffer holds, time only the
            // receives.
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(32);
                for _ in 0..n {
                    tx.send(&flows).expect("loopback send");
                }
                let start = Instant::now();
                for _ in 0..n {
                    black_box(rx.recv(&mut buf).expect("datagram within 2 s"));
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    group.finish();

    let mut group = c.benchmark_group("batch");
    let builder = big_batch(1_000);
    let batch = builder.encode().expect("under the limit");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("decode_1000_paths", |b| {
        b.iter(|| BatchView::parse(black_box(&batch)).expect("valid").paths.len())
    });
    group.bench_function("encode_1000_paths", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(batch.len()),
            |out| builder.encode_into(out).expect("under the limit"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// Mean time per iteration, ns, of a benchmark this run measured.
fn mean_ns(dir: &Path, group: &str, name: &str, since: std::time::SystemTime) -> Option<f64> {
    let path = dir.join(group).join(name).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    fresh.then(|| json["mean"]["point_estimate"].as_f64()).flatten()
}

fn main() {
    let started = std::time::SystemTime::now();
    let dir = output_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    datagram_benches(&mut c);
    c.final_summary();

    let flow_size = DATAGRAM_HEADER_LEN + capacity::<FlowRecord>(DEFAULT_MAX_DATAGRAM) * FlowRecord::SIZE;
    let probe_size = DATAGRAM_HEADER_LEN + capacity::<ProbeRecord>(DEFAULT_MAX_DATAGRAM) * ProbeRecord::SIZE;
    let Some(recv) = mean_ns(&dir, "datagram", "loopback_recv", started) else {
        return; // not measured in this run (filtered, or `--test` mode)
    };
    println!("\nsummary (means of this run; baseline = one loopback UDP recv of a full flow datagram)");
    println!("  loopback_recv        {recv:>9.1} ns/datagram");
    for (name, records, size) in [
        ("decode_flows", capacity::<FlowRecord>(DEFAULT_MAX_DATAGRAM), flow_size),
        (
            "decode_probes",
            capacity::<ProbeRecord>(DEFAULT_MAX_DATAGRAM),
            probe_size,
        ),
        ("encode_flows", capacity::<FlowRecord>(DEFAULT_MAX_DATAGRAM), flow_size),
    ] {
        if let Some(ns) = mean_ns(&dir, "datagram", name, started) {
            println!(
                "  {name:<20} {ns:>9.1} ns/datagram  {:>7.1} M records/s  {:>6.2} GB/s  {:.3}× the recv baseline",
                records as f64 / ns * 1e3,
                size as f64 / ns,
                ns / recv
            );
        }
    }
}
