//! What a run does once the simulation is up, and how it is judged: a
//! clean period (with the collector stopped for two windows when asked),
//! which must yield no anomaly; then each fault in turn, injected, polled
//! for in the analyzer's JSON report until it is named — the right kind of
//! element and the right host, rack or rack pair — within two aggregation
//! windows, and cleared; then the end checks: every sampler's windows in
//! the database exactly once, Prometheus's and promtool's verdicts, the
//! analyzer's report when asked, and the table of detection latencies.
//!
//! The lines printed here are read by bench/tests/rack_sim.rs (", 0
//! anomalies" in the clean-period line; a table row per fault starting
//! with its name and ending in "windows)" when detected) and by people
//! running scripts/demo: change them together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use collector_storage::{Reader, SqliteStore};
use collector_storage_clickhouse::{ClickHouseStore, Options as ClickHouseOptions};
use rack_sampler::now_ns;

use super::alerting::{Alerting, EVALUATION_INTERVAL, run_dashboards};
use super::daemons::{Daemons, metrics_targets};
use super::faults::{Expected, FaultKind};
use super::namespaces::{in_netns, nsenter};
use super::{Options, Simulation, pause, say};
use crate::harness::ClickHouseToml;

/// An anomaly of the analyzer's report: kind, element, and its symptoms
/// ("loss×3 rtt×1").
type Named = (String, String, String);

/// One fault's outcome.
struct Outcome {
    fault: FaultKind,
    expected: Expected,
    /// Time from injection to the analyzer naming it, if it did.
    latency: Option<Duration>,
    /// What the analyzer named at the last look.
    named: Vec<Named>,
    /// With `--prometheus`: the alert that fired for it, if one did.
    alert: Option<FiredAlert>,
    /// Anomalies in the windows after the one it was cleared in.
    after_clear: Vec<Named>,
    /// For a flapping fault: its incidents' (bad windows, flaps).
    incident: Option<Vec<(u64, u64)>>,
    /// For a sampler crash: (sampler, window) it was killed in.
    crashed: Option<(u32, u64)>,
}

/// An alert Alertmanager delivered for a fault.
struct FiredAlert {
    /// Its name (`FlowmeshHostDroppingPackets`, …).
    name: String,
    /// The element it named.
    element: String,
    /// From injection to the webhook receiving it.
    fired: Duration,
    /// From clearing the fault to the webhook receiving its resolution.
    resolved: Option<Duration>,
}

/// The alerts (deploy/prometheus/flowmesh-rules.yml) that name an element
/// of `kind`.
fn alert_names(kind: &str) -> &'static [&'static str] {
    match kind {
        "host" => &["FlowmeshHostDroppingPackets", "FlowmeshHostDelayingPackets"],
        "rack" => &["FlowmeshRackUplinkDegraded"],
        "rack_pair" => &["FlowmeshRackPairDegraded"],
        "node_pair" => &["FlowmeshNodePairDegraded"],
        "slow_host" => &["FlowmeshHostRespondingSlowly"],
        // A telemetry gap alerts after minutes (FlowmeshAgentIncomplete's
        // `for:`), longer than a simulated fault lasts.
        _ => &[],
    }
}

/// `flowmesh-analyzer` on the simulation's store.
struct Analyzer {
    program: PathBuf,
    config: PathBuf,
    /// The namespace it runs in: the spine's, where the ClickHouse cluster
    /// listens; none for SQLite.
    netns: Option<String>,
}

impl Analyzer {
    /// Writes the analyzer's configuration into the working directory.
    fn configure(daemons: &Daemons, clickhouse: Option<&ClickHouseToml>, spine: String) -> anyhow::Result<Analyzer> {
        // A shared 2-core machine schedules nine agents, traffic and the
        // pipeline: its RTTs jitter by milliseconds, which is no fault. The
        // faults' symptoms are loss, retransmissions and tens of ms of
        // queueing.
        let config = daemons.write(
            "analyzer.toml",
            &format!(
                "database = \"{}\"\ntopology = \"{}\"\n[detect]\np99_rtt_us = 5000\nrtt_baseline_min_increase_us = 5000\n\
                 p99_responder_delay_us = 50000\n{}",
                daemons.dir.join("flowmesh.db").display(),
                daemons.dir.join("topology.toml").display(),
                clickhouse.map(ClickHouseToml::render).unwrap_or_default(),
            ),
        )?;
        Ok(Analyzer {
            program: daemons.bin.join("flowmesh-analyzer"),
            config,
            netns: clickhouse.map(|_| spine),
        })
    }

    fn command(&self) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = nsenter(ns);
                c.arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        command.arg("--config").arg(&self.config);
        command
    }

    /// The JSON report over the last `since`.
    fn json(&self, since: Duration) -> anyhow::Result<serde_json::Value> {
        let out = self
            .command()
            .args([
                "report",
                "--format",
                "json",
                "--since",
                &format!("{}s", since.as_secs().max(1)),
            ])
            .output()
            .context("running flowmesh-analyzer")?;
        // Exit 2 means "anomalies found": a normal outcome here.
        if !matches!(out.status.code(), Some(0 | 2)) {
            bail!("flowmesh-analyzer: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).context("reading the analyzer's JSON report")
    }

    /// Writes report.json and report.html over `since` into `dir`, then
    /// prints the terminal report.
    fn write_and_print(&self, since: &str, dir: &Path) -> anyhow::Result<()> {
        for (format, file) in [("json", "report.json"), ("html", "report.html")] {
            self.command()
                .args(["report", "--since", since, "--format", format, "--output"])
                .arg(dir.join(file))
                .stderr(Stdio::null())
                .status()?;
        }
        println!();
        self.command()
            .args(["report", "--since", since])
            .stderr(Stdio::null())
            .status()?;
        Ok(())
    }
}

/// Runs the scenario on a started simulation: clean period, each of
/// `faults`, end checks. Fails if any check does.
pub(super) fn run(sim: &mut Simulation, options: &Options, faults: &[FaultKind]) -> anyhow::Result<()> {
    let window = Duration::from_secs(options.window_secs);
    let window_ns = options.window_secs * 1_000_000_000;
    let clickhouse = sim.clickhouse.as_ref().map(|c| c.toml.clone());
    let analyzer = Analyzer::configure(&sim.daemons, clickhouse.as_ref(), sim.net.spine())?;
    let dir = sim.daemons.dir.clone();
    let alerting = match options.prometheus {
        true => Some(Alerting::start(sim, &analyzer.config)?),
        false => None,
    };
    // Warm-up: agents' first probes meet responders not yet started.
    pause(window * 2)?;
    let clean_from = now_ns().div_ceil(window_ns) * window_ns;
    let clean_started = Instant::now();
    let clean = clean_period(sim, options, &analyzer, clean_from)?;
    // Whatever fired while the network was clean (a resolution of something
    // from the warm-up is not a firing).
    let clean_alerts: Vec<String> = alerting
        .iter()
        .flat_map(Alerting::notices)
        .filter(|n| n.received >= clean_started && n.status == "firing")
        .map(|n| n.describe())
        .collect();
    if alerting.is_some() {
        say(format!(
            "clean period: {} alerts fired {clean_alerts:?}",
            clean_alerts.len()
        ));
    }
    let mut outcomes = Vec::new();
    for &fault in faults {
        outcomes.push(detect(sim, fault, options, &analyzer, alerting.as_ref())?);
    }
    // The last windows reach the database.
    pause(window + Duration::from_secs(4))?;
    let mut failures = Vec::new();
    // A crashed sampler loses the windows it had not emitted: the one open
    // at the kill and, killed within the grace after a boundary, the one
    // before it too.
    let crashed: Vec<(u32, u64)> = outcomes
        .iter()
        .filter_map(|o| o.crashed)
        .flat_map(|(sampler, window)| [(sampler, window), (sampler, window.saturating_sub(window_ns))])
        .collect();
    let missing = match &clickhouse {
        Some(toml) => in_netns(&sim.net.spine(), || {
            let store = ClickHouseStore::open_read_only(clickhouse_options(toml))?;
            windows_not_once(&store, window_ns, &crashed)
        })?,
        None => windows_not_once(
            &SqliteStore::open_read_only(&dir.join("flowmesh.db"))?,
            window_ns,
            &crashed,
        )?,
    };
    if missing.is_empty() {
        say("every sampler's windows are in the database exactly once");
    } else {
        failures.push(format!(
            "windows missing or repeated (sampler: present of expected): {missing:?}"
        ));
    }
    if let Some(alerting) = &alerting {
        let (up, rejected) = sim.daemons.check_prometheus(&sim.net)?;
        // The daemons and the analyzer's watch.
        let all = metrics_targets(&sim.net, sim.daemons.collectors).len() + 1;
        if up == all && rejected.is_empty() {
            say(format!(
                "Prometheus scraped all {all} daemons (up = 1); promtool accepts every exposition"
            ));
        } else {
            failures.push(format!(
                "Prometheus sees {up} of {all} daemons up; promtool rejects {rejected:?}"
            ));
        }
        failures.extend(check_alerts(alerting, &outcomes, &clean_alerts, window));
        // Every notification, for people reading a run afterwards; and
        // whether an element's alert fired more than once (a flap).
        let notices = alerting.notices();
        let log: String = notices
            .iter()
            .map(|n| {
                let at = n.received.duration_since(alerting.started_at).as_secs_f64();
                format!("{at:>7.1} s  {}\n", n.describe())
            })
            .collect();
        std::fs::write(dir.join("alerts.log"), log)?;
        let mut fired: BTreeMap<String, usize> = BTreeMap::new();
        for n in notices.iter().filter(|n| n.status == "firing") {
            *fired.entry(n.describe()).or_default() += 1;
        }
        say(format!(
            "Alertmanager delivered {} notifications ({} firing); fired more than once: {:?}",
            notices.len(),
            fired.values().sum::<usize>(),
            fired.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
        ));
        let every_fault = FaultKind::ALL.iter().all(|f| faults.contains(f));
        failures.extend(check_dashboards(sim, alerting, &outcomes, every_fault)?);
    }
    if options.report {
        let since = format!("{}s", (now_ns() - clean_from) / 1_000_000_000 + options.window_secs);
        analyzer.write_and_print(&since, &dir)?;
    }
    println!("\nfault              expected               detection latency");
    for o in &outcomes {
        println!("{}", outcome_row(o, window));
    }
    if alerting.is_some() {
        println!(
            "\nalert (Alertmanager → webhook)          element        fired after            resolved after clearing"
        );
        for o in &outcomes {
            println!("{}", alert_row(o, window));
        }
    }
    let missed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.latency.is_none())
        .map(|o| format!("{:?} (named {:?})", o.fault, o.named))
        .collect();
    if !clean.is_empty() {
        failures.push(format!("clean-period anomalies {clean:?}"));
    }
    if !missed.is_empty() {
        failures.push(format!("faults not named within two windows: {missed:?}"));
    }
    for o in &outcomes {
        if let Some(incidents) = &o.incident
            && !matches!(incidents.as_slice(), [(_, flaps)] if *flaps >= 1)
        {
            failures.push(format!(
                "{:?}: expected one incident with its flaps, found (bad windows, flaps) {incidents:?}",
                o.fault
            ));
        }
    }
    // No blame once a fault is gone: records are counted in the window they
    // were measured in, and clean probes outvote TCP's recovery tail.
    let blamed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.after_clear.is_empty())
        .map(|o| format!("{:?}: {:?}", o.fault, o.after_clear))
        .collect();
    say(format!(
        "anomalies in the windows after a fault was cleared: {} of {} faults {blamed:?}",
        blamed.len(),
        outcomes.len()
    ));
    if !blamed.is_empty() {
        failures.push(format!("anomalies after a fault was cleared: {blamed:?}"));
    }
    if options.dir.is_some() {
        println!("database:    {}", dir.join("flowmesh.db").display());
        if options.report {
            println!("HTML report: {}", dir.join("report.html").display());
        }
        println!("logs and configurations: {}", dir.display());
    }
    if !failures.is_empty() {
        bail!("rack-sim failed: {}", failures.join("; "));
    }
    println!("rack-sim: the clean period had no anomaly and every fault was named within two windows");
    Ok(())
}

/// The clean period from window `clean_from` on, with the collector outage
/// when asked; returns the anomalies the analyzer found in it.
fn clean_period(
    sim: &mut Simulation,
    options: &Options,
    analyzer: &Analyzer,
    clean_from: u64,
) -> anyhow::Result<Vec<Named>> {
    let window = Duration::from_secs(options.window_secs);
    say(format!("clean running for {} s", options.clean_secs));
    let clean_started = Instant::now();
    if options.collector_outage {
        // With two collectors the first crashes and the samplers fail over;
        // with one it stops as an operator would and the samplers spool.
        let crash = sim.daemons.collectors > 1;
        let (stopped, restarted) = if crash {
            ("killed collector 1 (SIGKILL)", "the samplers fail over to collector 2")
        } else {
            ("stopped the collector", "the samplers spool their windows")
        };
        pause(Duration::from_secs(5))?;
        sim.daemons.stop_collector(0, crash)?;
        say(format!("{stopped} for {} s: {restarted}", 2 * options.window_secs));
        pause(window * 2)?;
        sim.daemons.start_collector(&sim.net, 0)?;
        say(if crash {
            "restarted collector 1"
        } else {
            "restarted the collector: the samplers replay their spools"
        });
    }
    let clean_until = Duration::from_secs(options.clean_secs) + window + Duration::from_secs(3);
    while let Some(left) = clean_until
        .checked_sub(clean_started.elapsed())
        .filter(|d| !d.is_zero())
    {
        say(format!("running clean: {} s left", left.as_secs()));
        pause(left.min(Duration::from_secs(15)))?;
    }
    sim.daemons.check_alive()?;
    let since = Duration::from_nanos(now_ns() - clean_from) + window;
    let report = analyzer.json(since)?;
    let clean = anomalies_after(&report, clean_from);
    let clean_windows = report["windows"].as_u64().unwrap_or(0);
    say(format!(
        "clean period: {clean_windows} windows, {} judged path windows, {} anomalies{}",
        report["judged_paths"],
        clean.len(),
        if clean.is_empty() {
            String::new()
        } else {
            format!(": {clean:?}")
        }
    ));
    Ok(clean)
}

/// Injects `fault`, polls the analyzer until it names the fault or two
/// windows (and 4 s) have passed, keeps it for `--hold-secs`, clears it and
/// lets two clean windows pass.
fn detect(
    sim: &mut Simulation,
    fault: FaultKind,
    options: &Options,
    analyzer: &Analyzer,
    alerting: Option<&Alerting>,
) -> anyhow::Result<Outcome> {
    let window = Duration::from_secs(options.window_secs);
    let window_ns = options.window_secs * 1_000_000_000;
    let injected = now_ns();
    let started = Instant::now();
    let expected = fault.inject(&sim.net, &mut sim.daemons)?;
    say(format!("injected {fault:?}; expecting {expected}"));
    let deadline = window * 2 + Duration::from_secs(4);
    let from_window = injected / window_ns * window_ns;
    let mut outcome = Outcome {
        fault,
        expected: expected.clone(),
        latency: None,
        named: Vec::new(),
        alert: None,
        after_clear: Vec::new(),
        incident: None,
        crashed: (fault == FaultKind::SamplerCrash).then_some((FaultKind::CRASHED_RACK, from_window)),
    };
    let names = alert_names(expected.kind);
    // The alert may follow the report by a watch pass, a scrape, a rule
    // evaluation and Alertmanager's group wait.
    let alert_deadline = deadline + EVALUATION_INTERVAL;
    let mut alert_pending = alerting.is_some() && !names.is_empty();
    while started.elapsed() < deadline || (alert_pending && started.elapsed() < alert_deadline) {
        pause(Duration::from_millis(500))?;
        let notice = alerting.and_then(|a| {
            std::iter::once(&expected.element)
                .chain(&expected.also)
                .find_map(|element| a.find(started, "firing", names, element))
        });
        if let Some(notice) = notice {
            alert_pending = false;
            outcome.alert = Some(FiredAlert {
                name: notice.labels.get("alertname").cloned().unwrap_or_default(),
                element: notice.labels.get("element").cloned().unwrap_or_default(),
                fired: notice.received.duration_since(started),
                resolved: None,
            });
        }
        if outcome.latency.is_none() {
            let report = analyzer.json(started.elapsed() + window * 2)?;
            outcome.named = anomalies_after(&report, from_window);
            outcome.named.extend(gaps_after(&report, from_window));
            if outcome
                .named
                .iter()
                .any(|(kind, element, _)| expected.is(kind, element))
            {
                outcome.latency = Some(started.elapsed());
            }
        }
        if outcome.latency.is_some() && !alert_pending {
            break;
        }
    }
    match outcome.latency {
        Some(latency) => say(format!(
            "  named {expected} after {:.1} s ({:.1} windows): {:?}",
            latency.as_secs_f64(),
            latency.as_secs_f64() / window.as_secs_f64(),
            outcome.named
        )),
        None => say(format!(
            "  NOT named within {:.0} s; the analyzer said {:?}",
            deadline.as_secs_f64(),
            outcome.named
        )),
    }
    if let Some(alert) = &outcome.alert {
        say(format!(
            "  alert {} element={} fired after {:.1} s",
            alert.name,
            alert.element,
            alert.fired.as_secs_f64()
        ));
    } else if alerting.is_some() && !names.is_empty() {
        say(format!(
            "  NO alert among {names:?} for {} within {:.0} s",
            expected.element,
            alert_deadline.as_secs_f64()
        ));
    }
    let hold = Duration::from_secs(options.hold_secs).max(fault.min_hold());
    pause(hold.saturating_sub(started.elapsed()))?;
    fault.clear(&sim.net, &mut sim.daemons)?;
    let cleared = Instant::now();
    let cleared_ns = now_ns();
    say(format!("cleared {fault:?}"));
    sim.daemons.check_alive()?;
    // Recovery: the next fault starts from clean windows; the alert
    // resolves once a clean window is analyzed (bounded: three windows).
    match (alerting, &mut outcome.alert) {
        (Some(alerting), Some(alert)) => {
            let resolve_deadline = window * 3 + EVALUATION_INTERVAL * 4;
            // Where the alert stands, not a resolution after the clear: a
            // flapping fault's last up phase may resolve it before the
            // clear (then 0 s).
            while cleared.elapsed() < resolve_deadline {
                pause(Duration::from_millis(500))?;
                let now = alerting.latest(started, &[alert.name.as_str()], &alert.element);
                if let Some(n) = now.filter(|n| n.status == "resolved") {
                    alert.resolved = Some(n.received.saturating_duration_since(cleared));
                    break;
                }
            }
            pause((window * 2).saturating_sub(cleared.elapsed()))?;
        }
        _ => pause(window * 2)?,
    }
    // A fault that comes and goes is one incident with its flaps, not an
    // incident per blip.
    if fault == FaultKind::HostFlap {
        let report = analyzer.json(started.elapsed() + window * 2)?;
        let incidents: Vec<(u64, u64)> = report["incidents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["kind"] == expected.kind && i["element"] == expected.element.as_str())
            .filter(|i| i["last_window_ns"].as_u64().unwrap_or(0) >= from_window)
            .map(|i| (i["windows"].as_u64().unwrap_or(0), i["flaps"].as_u64().unwrap_or(0)))
            .collect();
        say(format!("  incidents of {expected} (bad windows, flaps): {incidents:?}"));
        outcome.incident = Some(incidents);
    }
    // No blame once the fault is gone: the windows after the one it was
    // cleared in must be clean (a flow's retransmissions belong to the
    // windows they happened in, not to the one the flow reported them in).
    let first_clean = cleared_ns / window_ns * window_ns + window_ns;
    pause(Duration::from_nanos((first_clean + window_ns).saturating_sub(now_ns())) + Duration::from_secs(4))?;
    let report = analyzer.json(Duration::from_nanos(now_ns() - first_clean) + window)?;
    outcome.after_clear = anomalies_after(&report, first_clean);
    if !outcome.after_clear.is_empty() {
        say(format!("  after clearing: {:?}", outcome.after_clear));
    }
    Ok(outcome)
}

/// A row of the final table: fault, expected element, detection latency
/// (or NOT DETECTED).
fn outcome_row(o: &Outcome, window: Duration) -> String {
    let latency = o.latency.map_or("NOT DETECTED".to_string(), |l| {
        format!(
            "{:.1} s ({:.1} windows)",
            l.as_secs_f64(),
            l.as_secs_f64() / window.as_secs_f64()
        )
    });
    format!(
        "{:<18} {:<22} {latency}",
        format!("{:?}", o.fault),
        o.expected.to_string()
    )
}

/// A row of the alert table: the alert, its element, when it fired and
/// when it resolved (or what is missing).
fn alert_row(o: &Outcome, window: Duration) -> String {
    let windows = |d: Duration| {
        format!(
            "{:.1} s ({:.1} windows)",
            d.as_secs_f64(),
            d.as_secs_f64() / window.as_secs_f64()
        )
    };
    match &o.alert {
        Some(a) => format!(
            "{:<39} {:<14} {:<22} {}",
            a.name,
            a.element,
            windows(a.fired),
            a.resolved.map_or("NOT RESOLVED".to_string(), windows)
        ),
        // A telemetry gap alerts after minutes (its rules' `for:`).
        None if alert_names(o.expected.kind).is_empty() => {
            format!("{:<39} {:<14} (none expected)", "-", o.expected.element)
        }
        None => format!(
            "{:<39} {:<14} NO ALERT",
            alert_names(o.expected.kind).join("|"),
            o.expected.element
        ),
    }
}

/// The alerting verdicts: each fault's alert fired within two windows plus
/// the evaluation interval (and the same slack the report gets) and
/// resolved; nothing fired while the network was clean; every
/// notification was readable.
fn check_alerts(alerting: &Alerting, outcomes: &[Outcome], clean_alerts: &[String], window: Duration) -> Vec<String> {
    let mut failures = Vec::new();
    let limit = window * 2 + EVALUATION_INTERVAL + Duration::from_secs(4);
    for o in outcomes.iter().filter(|o| !alert_names(o.expected.kind).is_empty()) {
        match &o.alert {
            None => failures.push(format!("no alert named {} for {:?}", o.expected.element, o.fault)),
            Some(a) if a.fired > limit => failures.push(format!(
                "{} for {} fired after {:.1} s (limit {:.0} s)",
                a.name,
                o.expected.element,
                a.fired.as_secs_f64(),
                limit.as_secs_f64()
            )),
            Some(a) if a.resolved.is_none() => {
                failures.push(format!("{} for {} never resolved", a.name, o.expected.element));
            }
            Some(_) => {}
        }
    }
    if !clean_alerts.is_empty() {
        failures.push(format!("alerts fired in the clean period: {clean_alerts:?}"));
    }
    let malformed = alerting.malformed();
    if !malformed.is_empty() {
        failures.push(format!("unreadable notifications: {malformed:?}"));
    }
    failures
}

/// Runs every dashboard panel's query over the run, with `rack` and `host`
/// set to elements a fault named. With every fault class run, a panel with
/// no data is a failure; with some, panels of what did not happen (no host
/// went silent: no telemetry gap) are only listed.
fn check_dashboards(
    sim: &Simulation,
    alerting: &Alerting,
    outcomes: &[Outcome],
    every_fault: bool,
) -> anyhow::Result<Vec<String>> {
    let named = |kind: &str| {
        outcomes
            .iter()
            .find(|o| o.expected.kind == kind)
            .map(|o| o.expected.element.clone())
    };
    let host = named("host").unwrap_or_else(|| sim.net.node(1, 1).name());
    let rack = named("rack").unwrap_or_else(|| "rack1".to_string());
    let queries = run_dashboards(&sim.net, alerting.started, &rack, &host)?;
    let empty: Vec<String> = queries
        .iter()
        .filter(|q| q.series == 0)
        .map(|q| format!("{}: {}", q.panel, q.expr))
        .collect();
    say(format!(
        "Grafana dashboards: {} of {} panel queries return data (rack={rack}, host={host})",
        queries.len() - empty.len(),
        queries.len()
    ));
    Ok(match (empty.is_empty(), every_fault) {
        (true, _) => Vec::new(),
        (false, true) => vec![format!("dashboard queries without data: {empty:?}")],
        (false, false) => {
            say(format!("  without data in this subset of faults: {empty:?}"));
            Vec::new()
        }
    })
}

/// Anomalies of a report whose last window ends after `after_ns`, as
/// "kind element (symptoms)".
fn anomalies_after(report: &serde_json::Value, after_ns: u64) -> Vec<Named> {
    report["anomalies"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|a| a["last_window_ns"].as_u64().unwrap_or(0) >= after_ns)
                .map(|a| {
                    let symptoms = a["symptoms"]
                        .as_object()
                        .map(|s| s.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default();
                    (
                        a["kind"].as_str().unwrap_or("?").to_string(),
                        a["element"].as_str().unwrap_or("?").to_string(),
                        symptoms,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Telemetry gaps of a report whose last window ends after `after_ns`, as
/// ("telemetry_gap", node, its state: silent, no_telemetry, or incomplete
/// with the lowest completeness).
fn gaps_after(report: &serde_json::Value, after_ns: u64) -> Vec<Named> {
    report["telemetry_gaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["last_window_ns"].as_u64().unwrap_or(0) >= after_ns)
        .map(|g| {
            let what = match g["state"].as_str() {
                Some("incomplete") => {
                    format!("incomplete {:.2}", g["min_completeness"].as_f64().unwrap_or(0.0))
                }
                Some(state) => state.to_string(),
                None => "?".to_string(),
            };
            (
                "telemetry_gap".to_string(),
                g["node"].as_str().unwrap_or("?").to_string(),
                what,
            )
        })
        .collect()
}

/// The store options the simulation's collectors use.
fn clickhouse_options(toml: &ClickHouseToml) -> ClickHouseOptions {
    ClickHouseOptions {
        database: toml.database.clone(),
        cluster: toml.cluster.clone(),
        shard_urls: toml.shard_urls.clone(),
        ..ClickHouseOptions::new(toml.url.clone())
    }
}

/// Samplers whose windows, from their first to their last, are not each
/// in the database exactly once ("sampler: present of expected"). Batch ids
/// are per sampler, window and part, so a replayed batch is never stored
/// twice; a missing one is a gap — unless it is in `crashed`: (sampler,
/// window) a killed sampler had not emitted yet, which died with it (the
/// analyzer reports its agents' telemetry gap instead).
fn windows_not_once(store: &dyn Reader, window_ns: u64, crashed: &[(u32, u64)]) -> anyhow::Result<Vec<String>> {
    let batches = store.batches(0, u64::MAX)?;
    // Per sampler: its distinct windows, and its first and last.
    let mut samplers: BTreeMap<u32, (BTreeSet<u64>, u64, u64)> = BTreeMap::new();
    for b in &batches {
        let (windows, first, last) = samplers.entry(b.sampler_id).or_insert((BTreeSet::new(), u64::MAX, 0));
        windows.insert(b.window_start_ns);
        *first = (*first).min(b.window_start_ns);
        *last = (*last).max(b.window_start_ns);
    }
    for &(sampler, window) in crashed {
        if let Some((windows, first, last)) = samplers.get_mut(&sampler)
            && (*first..=*last).contains(&window)
        {
            windows.insert(window);
        }
    }
    Ok(samplers
        .into_iter()
        .filter_map(|(sampler, (windows, first, last))| {
            let expected = (last - first) / window_ns.max(1) + 1;
            (windows.len() as u64 != expected).then(|| format!("{sampler}: {} of {expected}", windows.len()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use collector_storage::BatchWriter;
    use wire_format::{BatchBuilder, BatchInfo, BatchView};

    use super::*;

    #[test]
    fn anomalies_after_keep_recent_ones_with_their_symptoms() {
        let report = serde_json::json!({
            "anomalies": [
                {"kind": "host", "element": "r1n3", "last_window_ns": 20, "symptoms": {"loss": 3, "rtt": 1}},
                {"kind": "rack", "element": "rack3", "last_window_ns": 9},
                {"kind": "rack_pair", "element": "rack1↔rack2", "last_window_ns": 10, "symptoms": {}},
            ]
        });
        assert_eq!(
            anomalies_after(&report, 10),
            vec![
                ("host".into(), "r1n3".into(), "loss×3 rtt×1".into()),
                ("rack_pair".into(), "rack1↔rack2".into(), String::new()),
            ]
        );
        assert!(anomalies_after(&serde_json::json!({"windows": 4}), 0).is_empty());
    }

    /// The test of the whole simulation reads these rows: a detected
    /// fault's starts with its name and ends in "windows)".
    #[test]
    fn outcome_rows_read_as_the_end_to_end_test_expects() {
        let mut outcome = Outcome {
            fault: FaultKind::NicLoss,
            expected: Expected {
                kind: "host",
                element: "r1n3".into(),
                also: None,
            },
            latency: Some(Duration::from_millis(4_300)),
            named: Vec::new(),
            alert: None,
            after_clear: Vec::new(),
            incident: None,
            crashed: None,
        };
        let window = Duration::from_secs(5);
        assert_eq!(
            outcome_row(&outcome, window),
            "NicLoss            host r1n3              4.3 s (0.9 windows)"
        );
        outcome.latency = None;
        assert_eq!(
            outcome_row(&outcome, window),
            "NicLoss            host r1n3              NOT DETECTED"
        );
    }

    #[test]
    fn a_gap_or_nothing_missing_per_sampler() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("flowmesh.db");
        let window_ns = 5_000_000_000;
        let mut store = SqliteStore::open(&db).unwrap();
        // Sampler 1: windows 0, 1, 2; sampler 2: windows 0 and 2, not 1.
        let encoded: Vec<Vec<u8>> = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 2)]
            .into_iter()
            .map(|(sampler, w)| {
                BatchBuilder::new(BatchInfo::window(sampler, sampler, (100 + w) * window_ns, window_ns))
                    .encode()
                    .unwrap()
            })
            .collect();
        let views: Vec<BatchView<'_>> = encoded.iter().map(|b| BatchView::parse(b).unwrap()).collect();
        store.store_batches(&views, 0).unwrap();
        // A replay is stored once.
        store.store_batches(&views[..1], 0).unwrap();
        drop(store);
        let store = SqliteStore::open_read_only(&db).unwrap();
        assert_eq!(
            windows_not_once(&store, window_ns, &[]).unwrap(),
            vec!["2: 2 of 3".to_string()]
        );
        // Unless sampler 2 was killed in window 1: that window died with it.
        let crashed = [(2, 101 * window_ns)];
        assert!(windows_not_once(&store, window_ns, &crashed).unwrap().is_empty());
    }
}
