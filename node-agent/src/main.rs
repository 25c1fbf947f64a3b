//! `flowmesh-agent`: traces this host's TCP flows with eBPF and sends them
//! to the rack sampler; `--debug` prints each flow as it completes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use configs::{AgentConfig, ConfigArgs, Topology};
use configs_runtime::LogFormat;
use node_agent::checks::{self, CheckError};
use node_agent::probe::{self, ProbeStats, ProberSettings, RdmaEndpoint};
use node_agent::sampler_address::{Refresh, SamplerAddress, system_lookup};
use node_agent::sender::Sender;
use node_agent::telemetry::{self, AgentStats};
use node_agent::tracer::Tracer;
use std::sync::Arc;
use tracing::{info, warn};

use wire_format::{Flow, Origin, ProbeRecord};

/// flowmesh agent: traces every TCP flow of this host (or of one cgroup)
/// in the kernel with eBPF and batches the records to the rack sampler
/// over UDP. Needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
#[derive(Parser)]
#[command(name = "flowmesh-agent", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log lines on stderr: `text`, or `json` (one object per line with
    /// timestamp, level, target, message and the event's fields).
    #[arg(long, value_name = "text|json", default_value_t = LogFormat::Text, value_parser = LogFormat::parse, global = true)]
    log_format: LogFormat,
    /// Print each flow as it completes, one JSON object per line on stdout
    /// (with or without a sampler configured).
    #[arg(long)]
    debug: bool,
    /// With --debug: `json` lines, or a `table` for people.
    #[arg(long, value_enum, default_value_t = DebugFormat::Json, requires = "debug")]
    debug_format: DebugFormat,
}

/// What `--debug` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DebugFormat {
    /// One JSON object per line.
    Json,
    /// A readable line per flow or probe.
    Table,
}

/// The debug output: off, or on in one format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DebugOutput(Option<DebugFormat>);

impl DebugOutput {
    fn flow(self, flow: &Flow) {
        match self.0 {
            Some(DebugFormat::Json) => println!("{}", debug_line(flow)),
            Some(DebugFormat::Table) => println!("{}", table_line(flow)),
            None => {}
        }
    }

    fn probe(self, record: &ProbeRecord) {
        match self.0 {
            Some(DebugFormat::Json) => println!("{}", probe_line(record)),
            Some(DebugFormat::Table) => {
                let us = |ns: Option<u64>| ns.map_or("-".to_string(), |ns| format!("{:.0} µs", ns as f64 / 1e3));
                println!(
                    "probe  → node {:<6} {:<40} seq {:<8} {:<8} network RTT {:>10}  responder {:>10}",
                    record.dst_node.get(),
                    record.dst().to_string(),
                    record.seq.get(),
                    record.outcome().as_str(),
                    us(record.network_rtt_ns()),
                    us(record.responder_delay_ns())
                );
            }
            None => {}
        }
    }
}

/// One readable line for a flow (`--debug --debug-format table`).
fn table_line(flow: &Flow) -> String {
    let endpoint = |ip: std::net::IpAddr, port: u16| match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
    };
    format!(
        "flow {:<8} {:<8} {:>24} → {:<24} sent {:>10} B  received {:>10} B  retrans {:>4}  srtt {:>6} µs  min {:>6} µs  {:>9.1} ms  dscp {}",
        flow.direction.as_str(),
        flow.end_reason.as_str(),
        endpoint(flow.src, flow.src_port),
        endpoint(flow.dst, flow.dst_port),
        flow.bytes_acked,
        flow.bytes_received,
        flow.retrans_segs,
        flow.srtt_us,
        flow.min_rtt_us,
        flow.duration_ns as f64 / 1e6,
        flow.dscp
    )
}

fn main() -> ExitCode {
    match run() {
        Err(error) => {
            if let Some(check) = error.downcast_ref::<CheckError>() {
                eprintln!("flowmesh-agent: {check}");
                return ExitCode::from(check.exit_code());
            }
            configs_runtime::exit_code("flowmesh-agent", Err(error))
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    configs_runtime::init_logging(cli.log_format);
    let Some(mut config) = cli.config.load_or_print::<AgentConfig>()? else {
        return Ok(());
    };
    let cgroup = checks::run(config.flows.cgroup.as_deref())?;
    // Before any program is attached or socket opened: an agent under a
    // node id the topology does not have would send records nobody can
    // place, and probe as nobody.
    let identity = checks::identity(&config)?;
    config.node_id = identity.node_id;
    config.uplink.sampler = checks::sampler(&config, &identity, cli.debug)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(trace(
            config,
            identity.topology,
            cgroup,
            DebugOutput(cli.debug.then_some(cli.debug_format)),
        ))
}

/// One JSON line for a flow (`--debug`).
fn debug_line(flow: &Flow) -> serde_json::Value {
    serde_json::json!({
        "flow_id": flow.flow_id,
        "src": flow.src.to_string(),
        "src_port": flow.src_port,
        "dst": flow.dst.to_string(),
        "dst_port": flow.dst_port,
        "direction": flow.direction.as_str(),
        "end_reason": flow.end_reason.as_str(),
        "dscp": flow.dscp,
        "start_ns": flow.start_ns,
        "duration_ns": flow.duration_ns,
        "bytes_acked": flow.bytes_acked,
        "bytes_received": flow.bytes_received,
        "segs_out": flow.segs_out,
        "segs_in": flow.segs_in,
        "retrans_segs": flow.retrans_segs,
        "srtt_us": flow.srtt_us,
        "min_rtt_us": flow.min_rtt_us,
    })
}

/// Time since the Unix epoch (zero if the clock is before it).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A flow (closed, or still open) to the debug output and the sampler.
async fn report_flow(flow: Flow, debug: DebugOutput, sender: Option<&mut Sender>) {
    debug.flow(&flow);
    if let Some(sender) = sender {
        sender.push_flow(flow.to_record()).await;
    }
}

/// One JSON line for a probe's outcome (`--debug`).
fn probe_line(record: &ProbeRecord) -> serde_json::Value {
    serde_json::json!({
        "probe": {
            "dst_node": record.dst_node.get(),
            "dst": record.dst().to_string(),
            "seq": record.seq.get(),
            "outcome": record.outcome().as_str(),
            "network_rtt_ns": record.network_rtt_ns(),
            "responder_delay_ns": record.responder_delay_ns(),
        }
    })
}

/// Traces, probes and sends until SIGTERM; `config` has passed the
/// start-up checks, its node id and sampler resolved against `topology`.
async fn trace(
    // Only RDMA probing changes it (the probe rate shared between transports).
    #[cfg_attr(not(feature = "rdma"), allow(unused_mut))] mut config: AgentConfig,
    topology: Topology,
    cgroup: std::path::PathBuf,
    debug: DebugOutput,
) -> anyhow::Result<()> {
    let shutdown = configs_runtime::signal::shutdown_signal().context("installing the SIGTERM handler")?;
    // Installed whatever the configuration, so a SIGHUP never kills the agent.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let netns_cookie = match &config.flows.netns {
        Some(path) => node_agent::netns::cookie_of(path).with_context(|| {
            format!(
                "flows.netns: reading the cookie of network namespace {} (a path such as /run/netns/NAME or /proc/PID/ns/net; needs Linux 5.14)",
                path.display()
            )
        })?,
        None => 0,
    };
    let mut tracer = Tracer::attach(
        &cgroup,
        config.flows.max_tracked_flows,
        config.flows.ring_buffer_bytes,
        config.flows.max_tracked_processes,
        netns_cookie,
        config.flows.retrans_report_ms > 0,
    )?;
    info!(message = "tracing TCP flows", cgroup = %cgroup.display(), netns = ?config.flows.netns);
    // Names are looked up by a task each, off the record path (see
    // node_agent::sampler_address); the first lookup is awaited, briefly,
    // so the first datagrams are not lost to a name still resolving.
    let refresh = Refresh::default();
    let samplers: Vec<SamplerAddress> = [config.uplink.sampler.clone(), config.uplink.secondary_sampler.clone()]
        .into_iter()
        .flatten()
        .map(|configured| SamplerAddress::new(configured, system_lookup(), refresh))
        .collect();
    // checks::sampler allows none only with --debug.
    let mut sender = (!samplers.is_empty()).then(|| {
        let epoch = (node_agent::now_ns() / 1_000_000_000) as u32;
        Sender::new(
            samplers,
            Origin {
                node_id: config.node_id,
                agent_epoch: epoch,
            },
            config.uplink.max_datagram_bytes,
            config.uplink.batch_size,
            config.uplink.max_datagrams_per_sec,
        )
    });
    if let Some(sender) = &sender {
        sender.wait_resolved(refresh.timeout).await;
        for sampler in sender.samplers() {
            let address = sampler.current().map_or("none yet".to_string(), |a| a.to_string());
            info!(message = "sending to sampler", sampler = %sampler.configured(), %address);
        }
    }
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::channel::<ProbeRecord>(4_096);
    let probe_stats = Arc::new(std::sync::Mutex::new(ProbeStats::default()));
    let mut probe_tasks = Vec::new();
    #[cfg(feature = "rdma")]
    let mut rdma_prober = None;
    if config.probes.enabled {
        let topology = Arc::new(topology);
        let local = topology
            .node(config.node_id)
            .and_then(|n| n.addresses.first().copied())
            .with_context(|| {
                format!(
                    "node_id {} has no address in {}",
                    config.node_id,
                    config.topology.display()
                )
            })?;
        let responder = probe::bind((local, config.probes.port).into(), config.probes.dscp)
            .await
            .with_context(|| {
                format!(
                    "binding the probe responder on {local}:{} (key `probes.port`)",
                    config.probes.port
                )
            })?;
        let prober = probe::bind((local, 0).into(), config.probes.dscp)
            .await
            .context("binding the prober")?;
        let rdma_endpoint = RdmaEndpoint::default();
        probe_tasks.push(tokio::spawn(probe::respond(
            Arc::new(responder),
            config.node_id,
            rdma_endpoint.clone(),
            probe_stats.clone(),
        )));
        let has_gid = topology.node(config.node_id).is_some_and(|n| !n.rdma_gids.is_empty());
        let (topology_tx, topology_rx) = tokio::sync::watch::channel(topology);
        if config.probes.rdma && has_gid {
            #[cfg(feature = "rdma")]
            {
                let mut shared = config.probes.clone();
                shared.max_probes_per_sec = (shared.max_probes_per_sec / 2).max(1);
                rdma_prober = node_agent::rdma::start(
                    config.node_id,
                    topology_rx.clone(),
                    &shared,
                    rdma_endpoint.clone(),
                    probe_tx.clone(),
                );
                if rdma_prober.is_some() {
                    // The cap is for the node, both transports together.
                    config.probes.max_probes_per_sec = shared.max_probes_per_sec;
                }
            }
            #[cfg(not(feature = "rdma"))]
            info!(
                message = "this node has an RDMA GID, but this agent was built without the `rdma` feature; probing over UDP only"
            );
        }
        probe_tasks.push(tokio::spawn(probe::reload_on_sighup(
            hangup,
            config.topology.clone(),
            config.node_id,
            local,
            topology_tx,
        )));
        probe_tasks.push(tokio::spawn(probe::probe(
            prober,
            topology_rx,
            ProberSettings {
                me: config.node_id,
                local,
                probing: config.probes.clone(),
            },
            probe_tx,
            probe_stats.clone(),
        )));
        info!(message = "probing peers", %local, port = config.probes.port);
    } else {
        drop(probe_tx);
        // Nothing to reload without probes; keep SIGHUP harmless.
        probe_tasks.push(tokio::spawn(async move {
            let mut hangup = hangup;
            while hangup.recv().await.is_some() {
                info!(message = "SIGHUP: probes are disabled, nothing to reload.");
            }
        }));
    }
    let stats = Arc::new(std::sync::Mutex::new(AgentStats::default()));
    let metrics = telemetry::endpoint(stats.clone(), probe_stats.clone());
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("listening on {} (key `metrics.listen`)", config.metrics.listen))?;
    info!(message = "metrics endpoint listening", local = %metrics_listener.local_addr()?);
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = tokio::spawn(metrics.clone().serve(metrics_listener, async {
        let _ = metrics_stopped.await;
    }));
    metrics.set_ready(true);
    match debug.0 {
        Some(DebugFormat::Json) => println!("{}", serde_json::json!({ "tracing": cgroup.display().to_string() })),
        Some(DebugFormat::Table) => println!("tracing TCP flows of {}", cgroup.display()),
        None => {}
    }
    let mut flush = tokio::time::interval(Duration::from_millis(config.uplink.flush_ms));
    // Flows that stay open are reported this often, so a connection that
    // never closes is still seen.
    let report_open = Duration::from_secs(config.flows.report_open_secs);
    let mut open_tick = tokio::time::interval_at(tokio::time::Instant::now() + report_open, report_open);
    // Flows that retransmitted are reported this soon after, so the
    // sampler counts the retransmissions in the window they happened in.
    let retrans_reports = config.flows.retrans_report_ms > 0;
    let report_retrans = Duration::from_millis(config.flows.retrans_report_ms.max(1));
    // At multiples of the period on the wall clock, so that a report's
    // interval ends at a sampler window's boundary (tracer::until_aligned).
    // A late report covers everything since the previous one.
    let until_retrans_report = || tokio::time::sleep(node_agent::tracer::until_aligned(report_retrans, wall_clock()));
    let retrans_tick = until_retrans_report();
    tokio::pin!(retrans_tick);
    let mut last_sweep = std::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            flows = tracer.next_flows() => {
                let flows = flows?;
                stats.lock().unwrap_or_else(|p| p.into_inner()).flows += flows.len() as u64;
                for flow in flows {
                    report_flow(flow, debug, sender.as_mut()).await;
                }
            }
            Some(record) = probe_rx.recv() => {
                debug.probe(&record);
                if let Some(sender) = sender.as_mut() {
                    sender.push_probe(record).await;
                }
            }
            _ = &mut retrans_tick, if retrans_reports => {
                retrans_tick.set(until_retrans_report());
                let reports = tracer.retransmissions();
                {
                    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    s.flows += reports.ended.len() as u64;
                    s.retrans_reports += reports.retransmitting.len() as u64;
                }
                for flow in reports.ended.into_iter().chain(reports.retransmitting) {
                    report_flow(flow, debug, sender.as_mut()).await;
                }
            }
            _ = open_tick.tick() => {
                let open = tracer.open_flows(report_open.as_nanos() as u64);
                stats.lock().unwrap_or_else(|p| p.into_inner()).open_reports += open.len() as u64;
                for flow in open {
                    report_flow(flow, debug, sender.as_mut()).await;
                }
            }
            _ = flush.tick() => {
                let flows = tracer.take_flows();
                stats.lock().unwrap_or_else(|p| p.into_inner()).flows += flows.len() as u64;
                for flow in flows {
                    report_flow(flow, debug, sender.as_mut()).await;
                }
                if let Some(sender) = sender.as_mut() {
                    sender.flush().await;
                    sender.heartbeat_if_idle(Duration::from_secs(config.uplink.heartbeat_secs)).await;
                }
                // Ready: programs attached (since start) and the sampler
                // reachable at the latest send.
                metrics.set_ready(sender.as_ref().is_none_or(Sender::reachable));
                // The process table is swept less often than the flush.
                let connects = (last_sweep.elapsed() >= Duration::from_secs(2)).then(|| {
                    last_sweep = std::time::Instant::now();
                    tracer.connects_by_comm()
                });
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                s.kernel_drops = tracer.drops();
                s.invalid_events = tracer.invalid_events();
                s.untracked_ends = tracer.untracked_ends();
                if let Some(connects) = connects {
                    s.connects = connects;
                }
                s.sender = sender.as_ref().map(Sender::stats).unwrap_or_default();
            }
            _ = &mut shutdown => break,
        }
    }
    for task in probe_tasks {
        task.abort();
    }
    // Flows that ended since the last drain still go out.
    for flow in tracer.take_flows() {
        report_flow(flow, debug, sender.as_mut()).await;
    }
    // Its thread may be waiting to hand over records: let go of them first.
    drop(probe_rx);
    #[cfg(feature = "rdma")]
    drop(rdma_prober);
    if let Some(sender) = sender.as_mut() {
        sender.flush().await;
        info!(message = "sent", stats = ?sender.stats());
    }
    if config.probes.enabled {
        let stats = *probe_stats.lock().unwrap_or_else(|p| p.into_inner());
        info!(message = "probes", ?stats);
    }
    let drops = tracer.drops();
    let invalid = tracer.invalid_events();
    if drops.iter().any(|&d| d > 0) || invalid > 0 {
        warn!(
            message = "kernel-side drops",
            ring_full = drops[0],
            flows_full = drops[1],
            procs_full = drops[2],
            retrans_ring_full = drops[3],
            establish_ring_full = drops[4],
            recursion_miss = drops[5],
            invalid_event = invalid
        );
    }
    metrics.set_ready(false);
    let _ = stop_metrics.send(());
    let _ = metrics_task.await;
    drop(tracer);
    info!(message = "detached; stopped");
    Ok(())
}
