//! The end-to-end test: `flowmesh-bench rack-sim` builds 3 racks × 3 hosts
//! in network namespaces, runs agents (real eBPF), samplers and a collector
//! on them with TCP traffic, runs clean for three minutes — which must yield
//! no anomaly — then injects each fault class (host down, host NIC loss,
//! rack uplink loss, rack-pair queueing delay, TCP retransmissions,
//! one-directional loss between two hosts, a flapping host, a sampler
//! crash) and fails unless the analyzer names each one, with the right
//! element (a telemetry gap for the crash), within two aggregation windows,
//! and the flapping host is one incident. With `--prometheus`, each fault's alert
//! must also reach a webhook through a real Prometheus (the shipped rules)
//! and Alertmanager, and resolve; nothing may fire in the clean period;
//! every Grafana panel's query must return data. Afterwards nothing of it
//! remains.
//!
//! The same on a two-shard ClickHouse cluster with two collectors, the
//! first killed (SIGKILL) during the clean period: every fault still named,
//! every window stored exactly once.
//!
//! Needs root, `ip`, `nft`, `tc`, clickhouse-server, prometheus,
//! prometheus-alertmanager and the four binaries
//! (built by the same `cargo nextest run --workspace`), as CI has.
//! .config/nextest.toml runs them alone: they load the two cores on purpose.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::process::Command;

#[test]
fn rack_sim_names_every_fault_within_two_windows() {
    // With the operators' stack: the analyzer's watch, Prometheus with the
    // shipped rules, Alertmanager posting to the simulation's webhook.
    let stdout = run_and_check(&["--clean-secs", "180", "--prometheus"]);
    assert!(stdout.contains("clean period: 0 alerts fired"), "{stdout}");
    // The node pair is named with its direction when TCP shows one.
    for (alert, elements) in [
        ("FlowmeshHostDroppingPackets", &["r2n2"][..]),
        ("FlowmeshHostDroppingPackets", &["r1n3"]),
        ("FlowmeshRackUplinkDegraded", &["rack3"]),
        ("FlowmeshRackPairDegraded", &["rack1↔rack2"]),
        ("FlowmeshHostDroppingPackets", &["r3n1"]),
        ("FlowmeshNodePairDegraded", &["r1n2→r3n2", "r1n2↔r3n2"]),
        ("FlowmeshHostDroppingPackets", &["r2n3"]),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(alert)
                && elements.iter().any(|e| l.contains(e))
                && l.ends_with("windows)")
                && !l.contains("NOT RESOLVED")),
            "{alert} {elements:?} did not fire and resolve:\n{stdout}"
        );
    }
    assert!(stdout.contains("incidents of host r2n3"), "{stdout}");
    assert!(stdout.contains("Grafana dashboards: "), "{stdout}");
}

#[test]
fn rack_sim_on_clickhouse_survives_a_collector_crash() {
    let stdout = run_and_check(&["--store", "clickhouse", "--clean-secs", "30", "--collector-outage"]);
    assert!(stdout.contains("killed collector 1 (SIGKILL)"), "{stdout}");
    assert!(
        stdout.contains("every sampler's windows are in the database exactly once"),
        "{stdout}"
    );
}

/// Runs `rack-sim ARGS` (every fault class), requires a clean period without
/// anomaly, every fault named and nothing left behind; returns its output.
fn run_and_check(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flowmesh-bench"))
        .arg("rack-sim")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The detection latencies, for the CI log.
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("clean period:") && stdout.contains(", 0 anomalies"),
        "{stdout}"
    );
    for fault in [
        "HostDown",
        "NicLoss",
        "UplinkLoss",
        "RackPairDelay",
        "TcpRetrans",
        "PathLoss",
        "HostFlap",
        "SamplerCrash",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(fault) && l.contains("windows)")),
            "{fault} not detected:\n{stdout}"
        );
    }
    // Nothing left behind: the run's namespaces (named after its tag) and
    // cgroups are gone.
    let tag = stdout
        .split("network namespaces ")
        .nth(1)
        .and_then(|rest| rest.split('*').next())
        .unwrap()
        .to_string();
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&tag),
        "namespaces of {tag} remain"
    );
    let cgroups = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = cgroups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            (f.get(sep + 1) == Some(&"cgroup2")).then(|| f[4].to_string())
        })
        .unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&tag))
        .collect();
    assert!(leftovers.is_empty(), "cgroups remain: {leftovers:?}");
    stdout.into_owned()
}
