//! The benchmarks still run: tiny sizes, so CI catches a benchmark that no
//! longer builds its data or talks to the tier it measures. The numbers are
//! not checked — timing on a shared CI box proves nothing.

use std::process::Command;

#[test]
fn collector_ingest_runs_all_three_paths() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-bench"))
        .args([
            "collector-ingest",
            "--batches",
            "6",
            "--paths",
            "40",
            "--per-transaction",
            "4",
            // And a private two-shard ClickHouse cluster, the same three ways.
            "--store",
            "clickhouse",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("246 rows"), "{stdout}");
    for line in [
        "bare rusqlite loop (ceiling)",
        "collector store API",
        "QUIC → collector → SQLite",
        "bare ClickHouse client (ceiling)",
        "ClickHouse store API",
        "QUIC → collector → ClickHouse",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    assert_eq!(stdout.matches("× ceiling").count(), 4, "{stdout}");
}

#[test]
fn analyzer_report_names_the_lossy_host() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-bench"))
        .args([
            "analyzer-report",
            "--racks",
            "7",
            "--nodes-per-rack",
            "13",
            "--paths-per-node",
            "20",
        ])
        // Both stores: a private two-shard ClickHouse cluster too.
        .args(["--windows", "12", "--runs", "1", "--store", "both"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SQLite: 21840 path_windows rows"), "{stdout}");
    assert!(stdout.contains("ClickHouse: 21840 path_windows rows"), "{stdout}");
    assert_eq!(stdout.matches("top anomaly host r7n13").count(), 2, "{stdout}");
    assert!(stdout.contains("× floor"), "{stdout}");
    assert!(stdout.contains("same anomalies on both"), "{stdout}");
}

#[test]
fn pipeline_runs_through_sampler_and_collector() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-bench"))
        .args(["pipeline", "--agents", "4", "--targets", "5", "--window-secs", "1"])
        .args(["--seconds", "2", "--rates", "0.01"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // At 10 000 records/s nothing may be lost anywhere.
    assert!(
        stdout.contains("highest rate with zero loss end to end: 0.01"),
        "{stdout}"
    );
    // The socket buffer as the sampler reports it, read from its metrics.
    let buffer_mib = stdout
        .split("the sampler's ingest socket buffer: ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse::<f64>().ok());
    assert!(buffer_mib.is_some_and(|mib| mib > 0.0), "{stdout}");
}

/// Needs root, bpftrace and the agent binary (all there in CI).
#[test]
fn tcp_overhead_runs_every_tracer_and_reads_their_bpf_run_time() {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-bench"))
        .args(["tcp-overhead", "--seconds", "1", "--bulk-seconds", "1", "--rounds", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "untraced",
        "flowmesh-agent",
        "bpftrace peer, printf",
        "bpftrace peer, in-kernel hist",
        "CPU-s per 100 000 flows",
        "events dropped)",
        "ns of BPF per flow",
        "agent BPF ns/flow ÷ the in-kernel bpftrace peer's",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    // The kernel's accounting was read for the agent and both peers: a
    // number of ns per flow on each of their median lines.
    let with_bpf = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("flowmesh-agent ") || l.trim_start().starts_with("bpftrace peer"))
        .filter(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|ns| ns.parse::<f64>().is_ok_and(|ns| ns > 0.0))
        })
        .count();
    assert_eq!(with_bpf, 3, "{stdout}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap()
            .trim(),
        "0",
        "bpf_stats left as found"
    );
}
