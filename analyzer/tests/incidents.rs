//! Incidents: the anomalies of one element grouped across the few clean
//! windows between them — in the report, the metrics page and `watch` — and
//! telemetry gaps that keep what happened visible.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use analyzer::model::load;
use analyzer::report::Analysis;
use collector_storage::SqliteStore;
use common::*;
use configs::{AnalyzerConfig, Component};
use serde_json::Value;

fn json(a: &Analysis) -> Value {
    serde_json::to_value(a).unwrap()
}

/// The report's incidents, as JSON.
fn incidents(a: &Analysis) -> Vec<Value> {
    let j = json(a);
    j["incidents"]
        .as_array()
        .unwrap_or_else(|| panic!("no incidents in {j:#}"))
        .clone()
}

/// The window starts of a JSON array of objects' `field`, as window indexes.
fn window_indexes(items: &Value, field: &str) -> Vec<u64> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x[field].as_u64().unwrap() - T0) / W)
        .collect()
}

/// The default configuration with `incidents.quiet_windows` set.
fn quiet_windows(n: u32) -> AnalyzerConfig {
    AnalyzerConfig::load_with_env(
        None,
        [("FLOWMESH_ANALYZER_INCIDENTS__QUIET_WINDOWS".to_string(), n.to_string())],
    )
    .unwrap()
}

/// r2n2 down 10 s, up 10 s, three times: windows 2, 4 and 6 of 10.
fn flapping(w: u64) -> bool {
    matches!(w, 2 | 4 | 6)
}

/// What the issue saw: three unrelated anomalies for one flapping host.
/// They are one incident, with its three runs and two flaps.
#[test]
fn a_flapping_host_is_one_incident_with_its_flaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path(), 10, down_host(202, flapping), down_agent(202, flapping));
    let a = analysis(&store, 10, 0);
    // The anomalies stay as they were, for compatibility: one per run.
    assert_eq!(a.anomalies.len(), 3, "{:#?}", a.anomalies);

    let all = incidents(&a);
    assert_eq!(all.len(), 1, "{all:#?}");
    let i = &all[0];
    assert_eq!(
        (i["kind"].as_str(), i["element"].as_str()),
        (Some("host"), Some("r2n2"))
    );
    assert_eq!(i["start_ns"], T0 + 2 * W);
    assert_eq!(i["last_window_ns"], T0 + 6 * W);
    // Windows 7, 8 and 9 are clean: the incident ended with window 6.
    assert_eq!(i["end_ns"], T0 + 7 * W);
    assert_eq!(i["open"], false);
    assert_eq!((i["windows"].as_u64(), i["flaps"].as_u64()), (Some(3), Some(2)));
    assert_eq!(i["clean_windows"], 2);
    assert_eq!(i["windows_since"], 3);
    assert_eq!((i["bad_paths"].as_u64(), i["paths"].as_u64()), (Some(8), Some(8)));
    assert_eq!(i["share"], 1.0);
    assert_eq!(i["bad_path_windows"], 24);
    assert_eq!(i["symptoms"]["loss"], 24);
    assert_eq!(window_indexes(&i["runs"], "first_window_ns"), [2, 4, 6]);
    assert_eq!(window_indexes(&i["runs"], "last_window_ns"), [2, 4, 6]);
    let before: Vec<u64> = i["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["clean_windows_before"].as_u64().unwrap())
        .collect();
    assert_eq!(before, [0, 1, 1]);
    assert!(
        i["worst"].as_array().unwrap().iter().all(|w| w["dst"] == "r2n2"),
        "{i:#}"
    );

    // The terminal report lists the incident once, with its flaps and runs.
    let mut table = Vec::new();
    a.write_table(&mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("Incidents, most severe first:"), "{table}");
    assert!(
        table.contains("1. HOST r2n2 — 8 of 8 paths through it bad (100 %) at worst; 3 window(s)"),
        "{table}"
    );
    assert!(!table.contains("\n2. "), "{table}");
    assert!(table.contains("flapped 2 time(s)"), "{table}");
    assert_eq!(table.matches("     run ").count(), 3, "{table}");

    // So does the HTML report, its flaps visible.
    let obs = load(&store, 0, u64::MAX).unwrap();
    let html = analyzer::html::render(&a, &obs, &topology());
    assert_eq!(html.matches("<section class=\"incident\"").count(), 1, "{html}");
    assert!(
        html.contains("data-kind=\"host\" data-element=\"r2n2\" data-flaps=\"2\" data-open=\"false\""),
        "{html}"
    );
    assert_eq!(html.matches("<tr class=\"run\"").count(), 3, "{html}");
    assert!(html.contains("flapped 2 time(s)"), "{html}");
}

/// `quiet_windows` is what separates incidents: with 1, any clean window
/// ends one, and the flapping host is three incidents again.
#[test]
fn quiet_windows_decides_when_an_incident_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path(), 10, down_host(202, flapping), down_agent(202, flapping));
    let a = analysis_with(&store, 10, 0, &quiet_windows(1));
    let all = incidents(&a);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all.iter().all(|i| i["flaps"] == 0 && i["open"] == false), "{all:#?}");

    // Bad in window 1 and in window 5, clean in the three between: with the
    // default of 3, two incidents, the second still open at the end.
    let dir = tempfile::tempdir().unwrap();
    let down = |w| w == 1 || w == 5;
    let store = database(dir.path(), 6, down_host(202, down), down_agent(202, down));
    let all = incidents(&analysis(&store, 6, 0));
    assert_eq!(all.len(), 2, "{all:#?}");
    let mut starts: Vec<u64> = all.iter().map(|i| (i["start_ns"].as_u64().unwrap() - T0) / W).collect();
    starts.sort_unstable();
    assert_eq!(starts, [1, 5]);
    // Two clean windows between: one incident that flapped once.
    let dir = tempfile::tempdir().unwrap();
    let down = |w| w == 1 || w == 4;
    let store = database(dir.path(), 6, down_host(202, down), down_agent(202, down));
    let all = incidents(&analysis(&store, 6, 0));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["flaps"], 1);
    assert_eq!(all[0]["clean_windows"], 2);
}

/// An incident is open while it is bad in the newest window and through
/// its quiet windows; its end is not known yet.
#[test]
fn an_incident_is_open_until_its_quiet_windows_have_passed() {
    let lossy = |from: u64, to: u64| {
        move |w: u64, s: u32, d: u32| {
            Some(if (from..to).contains(&w) && (s == 303 || d == 303) {
                Shows { lost: 50, ..HEALTHY }
            } else {
                HEALTHY
            })
        }
    };
    // Still bad in the newest window.
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path(), 6, lossy(3, 6), never);
    let all = incidents(&analysis(&store, 6, 0));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["open"], true);
    assert_eq!(all[0]["end_ns"], Value::Null);
    assert_eq!(all[0]["windows_since"], 0);
    assert_eq!(all[0]["last_window_ns"], T0 + 5 * W);

    // Clean for two windows: still open (it may come back).
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path(), 6, lossy(2, 4), never);
    let a = analysis(&store, 6, 0);
    let all = incidents(&a);
    assert_eq!(
        (all[0]["open"].as_bool(), all[0]["windows_since"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(all[0]["end_ns"], Value::Null);
    let mut table = Vec::new();
    a.write_table(&mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("open: clean for 2 of 3 window(s)"), "{table}");

    // Clean for three: ended, at the end of its last bad window.
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path(), 7, lossy(2, 4), never);
    let all = incidents(&analysis(&store, 7, 0));
    assert_eq!(all[0]["open"], false);
    assert_eq!(all[0]["end_ns"], T0 + 4 * W);
}

/// Incidents are ordered as anomalies are, most severe first: the most bad
/// path windows, summed over their runs.
#[test]
fn incidents_are_ordered_most_severe_first_over_all_their_runs() {
    // r2n2 down in windows 1, 3 and 5 (three runs of 8 bad paths); rack1 ↔
    // rack3 slow in window 2 only (18 bad paths, one run).
    let down = down_host(202, |w| matches!(w, 1 | 3 | 5));
    let dir = tempfile::tempdir().unwrap();
    let store = database(
        dir.path(),
        7,
        |w, s, d| {
            let pair = [s / 100, d / 100];
            if w == 2 && (pair == [1, 3] || pair == [3, 1]) {
                Some(Shows {
                    p99_us: 2_000,
                    ..HEALTHY
                })
            } else {
                down(w, s, d)
            }
        },
        |w, n| matches!(w, 1 | 3 | 5) && n == 202,
    );
    let a = analysis(&store, 7, 0);
    // One run of the pair outweighs each run of the host...
    assert_eq!(a.anomalies[0].kind, "rack_pair", "{:#?}", a.anomalies);
    // ...but not the host's incident.
    let all = incidents(&a);
    let order: Vec<&str> = all.iter().map(|i| i["element"].as_str().unwrap()).collect();
    assert_eq!(order, ["r2n2", "rack1↔rack3"], "{all:#?}");
}

/// Issue 17: a silent window merged with the next, incomplete one read as a
/// non-silent 41 %. Silent and incomplete runs are separate gaps now, each
/// with its state.
#[test]
fn a_silent_window_is_not_merged_into_an_incomplete_one() {
    let dir = tempfile::tempdir().unwrap();
    let host = 102;
    let store = database_telemetry(dir.path(), 6, healthy, |w, n| match (w, n == host) {
        (2, true) => Telemetry::Received(41),
        (3, true) => Telemetry::Silent,
        (4, true) => Telemetry::Received(60),
        _ => Telemetry::Complete,
    });
    let j = json(&analysis(&store, 6, 0));
    let gaps = j["telemetry_gaps"].as_array().unwrap();
    let seen: Vec<(&str, u64, u64, bool)> = gaps
        .iter()
        .map(|g| {
            (
                g["state"].as_str().unwrap_or("?"),
                (g["first_window_ns"].as_u64().unwrap() - T0) / W,
                g["windows"].as_u64().unwrap(),
                g["silent"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("incomplete", 2, 1, false),
            ("silent", 3, 1, true),
            ("incomplete", 4, 1, false)
        ],
        "{j:#}"
    );
    assert_eq!(gaps[0]["min_completeness"], 0.41);
    assert!(gaps.iter().all(|g| g["node"] == "r1n2"));
}

/// Two silent windows far apart are two gaps, not one spanning the healthy
/// windows between them.
#[test]
fn gaps_apart_are_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path(), 8, healthy, |w, n| n == 203 && (w == 1 || w == 5));
    let j = json(&analysis(&store, 8, 0));
    let gaps = &j["telemetry_gaps"];
    assert_eq!(window_indexes(gaps, "first_window_ns"), [1, 5], "{j:#}");
    assert_eq!(window_indexes(gaps, "last_window_ns"), [1, 5], "{j:#}");
}

/// Issue 17: a rack whose sampler is down stores no row for its agents,
/// and nothing was reported. Every node without a row in a window that
/// other racks have rows for is a gap, `no_telemetry` — except in the
/// newest window, whose other batches may still be on their way.
#[test]
fn a_rack_without_telemetry_is_a_gap_for_each_of_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    // rack3's sampler is down in windows 2 and 3; rack2's in the newest.
    let store = database_telemetry(
        dir.path(),
        6,
        // A rack without its sampler stores no path either.
        healthy,
        |w, n| {
            if (w == 2 || w == 3) && n / 100 == 3 || w == 5 && n / 100 == 2 {
                Telemetry::NoBatch
            } else {
                Telemetry::Complete
            }
        },
    );
    let a = analysis(&store, 6, 0);
    assert!(a.anomalies.is_empty(), "{:#?}", a.anomalies);
    assert!(a.found_anything());
    let j = json(&a);
    let gaps = j["telemetry_gaps"].as_array().unwrap();
    let seen: Vec<(&str, &str, u64, u64)> = gaps
        .iter()
        .map(|g| {
            (
                g["node"].as_str().unwrap(),
                g["state"].as_str().unwrap_or("?"),
                (g["first_window_ns"].as_u64().unwrap() - T0) / W,
                g["windows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("r3n1", "no_telemetry", 2, 2),
            ("r3n2", "no_telemetry", 2, 2),
            ("r3n3", "no_telemetry", 2, 2)
        ],
        "{j:#}"
    );
    assert!(
        gaps.iter()
            .all(|g| g["silent"] == false && g["min_completeness"] == 0.0)
    );
    // They ended two windows ago: not open.
    assert!(gaps.iter().all(|g| g["open"] == false), "{j:#}");
    let mut table = Vec::new();
    a.write_table(&mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("r3n1: no telemetry (no row from its rack's sampler) for 2 window(s)"),
        "{table}"
    );
}

/// The sample lines of `family` on a metrics page.
fn samples<'p>(page: &'p str, family: &str) -> Vec<&'p str> {
    page.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .collect()
}

/// The metrics page: `flowmesh_anomaly_active` describes the newest window
/// as before; the incident stays open through its quiet windows, with its
/// flaps.
#[test]
fn the_metrics_page_keeps_an_incident_open_through_its_quiet_windows() {
    use analyzer::results::exposition;
    let dir = tempfile::tempdir().unwrap();
    // r3n3 lossy in windows 1 and 3, clean in 4 and 5 (the newest).
    let store = database(
        dir.path(),
        6,
        |w, s, d| {
            Some(if (w == 1 || w == 3) && (s == 303 || d == 303) {
                Shows { lost: 50, ..HEALTHY }
            } else {
                HEALTHY
            })
        },
        never,
    );
    let a = analysis(&store, 6, 0);
    let newest: Vec<_> = load(&store, 0, u64::MAX)
        .unwrap()
        .paths
        .into_iter()
        .filter(|p| p.window_ns == a.last_window_ns)
        .collect();
    let page = exposition(&a, &newest, &topology(), 100);
    configs_runtime::promtool::promtool_check(&page).unwrap();
    assert!(samples(&page, "flowmesh_anomaly_active").is_empty(), "{page}");
    assert_eq!(
        samples(&page, "flowmesh_active_anomalies"),
        ["flowmesh_active_anomalies 0"]
    );
    assert_eq!(
        samples(&page, "flowmesh_incident_open"),
        ["flowmesh_incident_open{element_type=\"host\",element=\"r3n3\"} 1"],
        "{page}"
    );
    assert_eq!(
        samples(&page, "flowmesh_incident_flaps"),
        ["flowmesh_incident_flaps{element_type=\"host\",element=\"r3n3\"} 1"],
        "{page}"
    );

    // A third clean window ends it: its series are gone.
    drop(store);
    let mut writer = SqliteStore::open(&dir.path().join("flowmesh.db")).unwrap();
    fill(&mut writer, 6..7, healthy, never);
    drop(writer);
    let store = SqliteStore::open_read_only(&dir.path().join("flowmesh.db")).unwrap();
    let a = analysis(&store, 7, 0);
    let page = exposition(&a, &[], &topology(), 100);
    configs_runtime::promtool::promtool_check(&page).unwrap();
    assert!(page.contains("# TYPE flowmesh_incident_open gauge"), "{page}");
    assert!(samples(&page, "flowmesh_incident_open").is_empty(), "{page}");
    assert!(samples(&page, "flowmesh_incident_flaps").is_empty(), "{page}");
}

/// The metrics page names a rack whose sampler sent nothing, node by node.
#[test]
fn the_metrics_page_reports_nodes_without_telemetry() {
    use analyzer::results::exposition;
    let dir = tempfile::tempdir().unwrap();
    // rack3's sampler down from window 3; the newest window (5) is not
    // checked, so the gap reaches window 4: open.
    let store = database_telemetry(dir.path(), 6, healthy, |w, n| {
        if w >= 3 && n / 100 == 3 {
            Telemetry::NoBatch
        } else {
            Telemetry::Complete
        }
    });
    let a = analysis(&store, 6, 0);
    let page = exposition(&a, &[], &topology(), 100);
    configs_runtime::promtool::promtool_check(&page).unwrap();
    assert_eq!(
        samples(&page, "flowmesh_agent_telemetry_gap"),
        [
            "flowmesh_agent_telemetry_gap{host=\"r3n1\",rack=\"rack3\",state=\"no_telemetry\"} 1",
            "flowmesh_agent_telemetry_gap{host=\"r3n2\",rack=\"rack3\",state=\"no_telemetry\"} 1",
            "flowmesh_agent_telemetry_gap{host=\"r3n3\",rack=\"rack3\",state=\"no_telemetry\"} 1"
        ],
        "{page}"
    );
    assert_eq!(
        samples(&page, "flowmesh_active_telemetry_gaps"),
        ["flowmesh_active_telemetry_gaps 3"]
    );
}

/// `watch` on a flapping host: one START, a CHANGE when it comes back after
/// a clean window (not an end and a new start), one END once it has been
/// clean for `quiet_windows` windows.
#[test]
fn watch_follows_a_flapping_host_as_one_incident() {
    let lossy = |bad: &'static [u64]| {
        move |w: u64, s: u32, d: u32| {
            Some(if bad.contains(&w) && (s == 303 || d == 303) {
                Shows { lost: 50, ..HEALTHY }
            } else {
                HEALTHY
            })
        }
    };
    let bad: &[u64] = &[2, 4];
    let dir = tempfile::tempdir().unwrap();
    drop(database(dir.path(), 3, lossy(bad), never));
    let (mut child, mut lines) = spawn_watch(dir.path(), 3);
    let mut next = || lines.next().unwrap_or_else(|| panic!("watch ended early")).unwrap();
    let first = next();
    assert!(
        first.contains(" START   host r3n3: 16 of 16 paths bad (100 %) since "),
        "{first}"
    );
    // A clean window, then bad again: it flapped.
    let mut store = SqliteStore::open(&dir.path().join("flowmesh.db")).unwrap();
    fill(&mut store, 3..5, lossy(bad), never);
    drop(store);
    let second = next();
    assert!(second.contains(" CHANGE  host r3n3: flapped back (flap 1)"), "{second}");
    // Three clean windows: it is over.
    let mut store = SqliteStore::open(&dir.path().join("flowmesh.db")).unwrap();
    fill(&mut store, 5..8, healthy, never);
    drop(store);
    let third = next();
    assert!(third.contains(" END     host r3n3: "), "{third}");
    assert!(third.contains("2 bad window(s), 1 flap(s)"), "{third}");
    assert!(lines.next().is_none());
    assert!(child.wait().unwrap().success());
}
