//! `flowmesh-bench sampler-ingest`: agent datagrams blasted on loopback into
//! the real `flowmesh-sampler` binary, beside a bare receive loop that only
//! counts datagrams on the same kind of socket and traffic (the ceiling).
//!
//! Both receivers run as child processes pinned to one core (`taskset -c
//! 1`); the sender runs here on the other core. Each receiver gets the same
//! socket set-up (`rack_sampler::ingest::bind`) and quinn-udp's recvmmsg, so
//! the difference between them is the sampler's parsing, aggregation,
//! downsampling and window emission. A third run paces the sender at a
//! fraction of the sampler's measured throughput and reports the loss there;
//! the bare loop then runs again at that pace, so CPU per record is also
//! compared at equal load (one sending core saturates neither receiver, and
//! a receiver that wakes more often takes fewer datagrams per system call).
//! `--runs` repeats it all and prints the spread; `--aggregation-only` runs
//! only the in-process aggregation phase.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use configs_runtime::tls::DevPki;
use wire_format::{
    DatagramBuilder, Direction, EndReason, Flow, FlowRecord, Origin, Probe, ProbeAddr, ProbeOutcome, ProbeRecord,
    ProbeTimestamps, Record, Transport,
};
use zerocopy::FromBytes;

use crate::harness::{
    ChildGuard, SamplerToml, cpu_seconds, free_local_addr, metric, peak_rss_kib, pinned, scrape, sibling_binary,
    start_daemon,
};

/// The CPU the receivers (the sampler, the bare loop) are pinned to; the
/// sender runs on the other.
pub(crate) const RECEIVER_CPU: u32 = 1;
/// How to build what this benchmark runs.
const BUILD: &str = "cargo build --release -p rack-sampler -p bench";

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// Probe records, 15 per datagram.
    Probe,
    /// Flow records, 13 per datagram.
    Flow,
}

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Seconds each phase sends for (long enough to emit windows).
    #[arg(long, default_value_t = 12)]
    pub(crate) seconds: u64,
    /// The sampler's aggregation window, seconds (its default is 10).
    #[arg(long, default_value_t = 10)]
    pub(crate) window_secs: u64,
    /// Agents (source nodes) in the sampler's rack.
    #[arg(long, default_value_t = 40)]
    pub(crate) agents: u32,
    /// Probe targets (or flow peers) per agent.
    #[arg(long, default_value_t = 60)]
    pub(crate) targets: u32,
    /// Record kind.
    #[arg(long, value_enum, default_value_t = Kind::Probe)]
    pub(crate) kind: Kind,
    /// Pace of the loss run, as a fraction of the sampler's saturated rate.
    #[arg(long, default_value_t = 0.6)]
    pub(crate) paced: f64,
    /// Runs of every phase; with more than one, a summary of the spread.
    #[arg(long, default_value_t = 1)]
    pub(crate) runs: u32,
    /// Only the in-process aggregation phase (no sockets, no daemons): the
    /// sampler's own cost per record, quickly.
    #[arg(long)]
    pub(crate) aggregation_only: bool,
}

/// Hidden child mode: a bare receive loop that counts datagrams.
pub(crate) fn udp_sink(listen: SocketAddr, seconds: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let bound = rack_sampler::ingest::bind(listen, 8 << 20)?;
        let socket = tokio::net::UdpSocket::from_std(bound.socket)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let mut buffers = vec![vec![0u8; 1 << 16]; rack_sampler::ingest::RECV_BATCH];
        let mut meta = vec![quinn_udp::RecvMeta::default(); rack_sampler::ingest::RECV_BATCH];
        println!("ready");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let mut datagrams = 0u64;
        loop {
            tokio::select! {
                ready = socket.readable() => ready?,
                _ = tokio::time::sleep_until(deadline) => break,
            }
            loop {
                let mut slices: Vec<IoSliceMut<'_>> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                match socket.try_io(tokio::io::Interest::READABLE, || {
                    state.recv((&socket).into(), &mut slices, &mut meta)
                }) {
                    Ok(n) => {
                        for m in &meta[..n] {
                            datagrams += (m.len / m.stride.max(1)).max(1) as u64;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        println!("{datagrams} {}", cpu_seconds("self")?);
        anyhow::Ok(())
    })
}

/// Pre-built datagrams, one set per agent, whose sequence number and send
/// time the sender patches in place.
pub(crate) struct Traffic {
    datagrams: Vec<(usize, Vec<u8>)>,
    pub(crate) records_per_datagram: f64,
    agents: usize,
    /// Each agent's next sequence number, kept across sends: a sampler
    /// that saw numbers before drops repeats of them as duplicates.
    seqs: Vec<u32>,
    kind: Kind,
    /// How far the latest paced [`blast`] fell behind its schedule at
    /// worst: a sender that falls behind catches up in a burst, which is
    /// not the load of independent agents.
    pub(crate) max_lag: Duration,
}

pub(crate) fn build_traffic(opts: &Options) -> anyhow::Result<Traffic> {
    let mut datagrams = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for agent in 0..opts.agents {
        let src = node_ip(1, agent);
        let origin = Origin {
            node_id: 1_000 + agent,
            agent_epoch: 1,
        };
        // Three rounds over the targets, so consecutive sends vary.
        for round in 0..3u64 {
            let built = match opts.kind {
                Kind::Probe => {
                    let records: Vec<_> = (0..opts.targets)
                        .map(|target| {
                            let random = next();
                            let outcome = if random % 1_000 == 0 {
                                ProbeOutcome::Timeout
                            } else {
                                ProbeOutcome::Ok
                            };
                            let answered = outcome == ProbeOutcome::Ok;
                            let rtt = 50_000 + random % 450_000;
                            Probe {
                                transport: Transport::Udp,
                                src: ProbeAddr::Ip(src),
                                dst: ProbeAddr::Ip(node_ip(2, target)),
                                src_port: 40_000,
                                dst_port: 7788,
                                dst_node: 5_000 + target,
                                dscp: 0,
                                seq: round,
                                outcome,
                                error_code: 0,
                                timestamps: ProbeTimestamps {
                                    requester_send_ns: 1_000,
                                    responder_receive_ns: if answered { 9_000 } else { 0 },
                                    responder_send_ns: if answered { 19_000 } else { 0 },
                                    requester_receive_ns: if answered { 11_000 + rtt } else { 0 },
                                },
                            }
                            .to_record()
                        })
                        .collect();
                    pack(origin, &records)?
                }
                Kind::Flow => {
                    let records: Vec<_> = (0..opts.targets)
                        .map(|target| {
                            let random = next();
                            Flow {
                                flow_id: u64::from(target) << 8 | round,
                                src,
                                dst: node_ip(2, target),
                                src_port: 40_000,
                                dst_port: 443,
                                dscp: 0,
                                direction: Direction::Outbound,
                                end_reason: EndReason::Closed,
                                start_ns: 1_000,
                                duration_ns: 5_000_000,
                                bytes_acked: random % 1_000_000,
                                bytes_received: random % 10_000,
                                segs_out: 100,
                                segs_in: 50,
                                retrans_segs: u32::from(random % 100 == 0),
                                srtt_us: 80,
                                min_rtt_us: 40,
                            }
                            .to_record()
                        })
                        .collect();
                    pack(origin, &records)?
                }
            };
            datagrams.extend(built.into_iter().map(|d| (agent as usize, d)));
        }
    }
    // Each round's last datagram may be short: use the real average.
    let records = u64::from(opts.agents) * 3 * u64::from(opts.targets);
    let records_per_datagram = records as f64 / datagrams.len().max(1) as f64;
    Ok(Traffic {
        datagrams,
        records_per_datagram,
        agents: opts.agents as usize,
        seqs: vec![0; opts.agents as usize],
        kind: opts.kind,
        max_lag: Duration::ZERO,
    })
}

/// Gives a datagram about to be sent its agent's next sequence number and
/// the time `now_ns`, as send time and as its records' own times (a probe's
/// t1, t4 moved with it; a flow's start, its duration before): the sampler
/// counts each record in the window of its own time, and a record stamped
/// long ago would take its path for late records every time.
fn restamp(datagram: &mut [u8], kind: Kind, seq: &mut u32, now_ns: u64) {
    datagram[12..16].copy_from_slice(&seq.to_be_bytes());
    datagram[16..24].copy_from_slice(&now_ns.to_be_bytes());
    *seq = seq.wrapping_add(1);
    let records = &mut datagram[wire_format::DATAGRAM_HEADER_LEN..];
    match kind {
        Kind::Probe => {
            for record in <[ProbeRecord]>::mut_from_bytes(records).expect("pack builds whole records") {
                let t1 = record.requester_send_ns.get();
                let t4 = record.requester_receive_ns.get();
                record.requester_send_ns.set(now_ns);
                if t4 != 0 {
                    record.requester_receive_ns.set(now_ns + (t4 - t1));
                }
            }
        }
        Kind::Flow => {
            for record in <[FlowRecord]>::mut_from_bytes(records).expect("pack builds whole records") {
                let duration = record.duration_ns.get();
                record.start_ns.set(now_ns.saturating_sub(duration));
            }
        }
    }
}

/// Full default-size datagrams of `records` (the last may be short).
fn pack<R: Record>(origin: Origin, records: &[R]) -> anyhow::Result<Vec<Vec<u8>>> {
    let per = wire_format::capacity::<R>(wire_format::DEFAULT_MAX_DATAGRAM);
    let mut out = Vec::new();
    for chunk in records.chunks(per) {
        let mut buf = [0u8; wire_format::DEFAULT_MAX_DATAGRAM];
        let mut builder = DatagramBuilder::<R>::new(&mut buf, origin).context("datagram buffer")?;
        for record in chunk {
            builder.push(record)?;
        }
        out.push(builder.finish(0, 0).to_vec());
    }
    Ok(out)
}

fn node_ip(rack: u32, index: u32) -> std::net::IpAddr {
    std::net::IpAddr::from([10, rack as u8, (index / 250) as u8, (index % 250 + 1) as u8])
}

/// Sends the traffic to `to` for `seconds`, at most `rate` datagrams/s if
/// given; returns datagrams sent.
pub(crate) fn blast(traffic: &mut Traffic, to: SocketAddr, seconds: u64, rate: Option<f64>) -> anyhow::Result<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let seqs = &mut traffic.seqs;
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut sent = 0u64;
    let mut attempts = 0u64;
    let mut now_ns = rack_sampler::now_ns();
    'outer: loop {
        for (agent, datagram) in traffic.datagrams.iter_mut() {
            attempts += 1;
            // Attempts, not successes, so failing sends still reach the deadline.
            if attempts.is_multiple_of(256) {
                if Instant::now() >= end {
                    break 'outer;
                }
                now_ns = rack_sampler::now_ns();
                if let Some(rate) = rate {
                    // Pace in bursts of 256: sleep until this burst is due.
                    let due = start + Duration::from_secs_f64(sent as f64 / rate);
                    let now = Instant::now();
                    max_lag = max_lag.max(now.saturating_duration_since(due));
                    let wait = due.saturating_duration_since(now);
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
            }
            restamp(datagram, traffic.kind, &mut seqs[*agent], now_ns);
            match socket.send_to(datagram, to) {
                Ok(_) => sent += 1,
                // The loopback queue is full: the receiver is behind. Count
                // only what was handed to the kernel.
                Err(e) if e.raw_os_error() == Some(105) || e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    traffic.max_lag = max_lag;
    Ok(sent)
}

/// The baseline: datagrams sent (at most `rate` per second if given) and
/// received by a bare loop, and the CPU seconds it used.
fn baseline(traffic: &mut Traffic, seconds: u64, rate: Option<f64>) -> anyhow::Result<(u64, u64, f64)> {
    let addr = free_local_addr()?;
    let exe = std::env::current_exe()?;
    let mut child = ChildGuard(
        pinned(RECEIVER_CPU, &exe)
            .args(["udp-sink", "--listen", &addr.to_string(), "--seconds"])
            .arg((seconds + 2).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("running the sink under taskset (util-linux)")?,
    );
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().context("sink stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    if line.trim() != "ready" {
        bail!("sink did not start: {line:?}");
    }
    let sent = blast(traffic, addr, seconds, rate)?;
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    let (received, cpu) = line
        .trim()
        .split_once(' ')
        .with_context(|| format!("sink output {line:?}"))?;
    Ok((sent, received.parse()?, cpu.parse()?))
}

struct SamplerRun {
    sent: u64,
    datagrams: u64,
    records: u64,
    peak_rss_kib: u64,
    cpu_seconds: f64,
}

/// Writes the topology, a development PKI and the sampler's configuration
/// into `dir`; the sampler uplinks to `collector`, or to an unreachable
/// address (its batches spool) when `None`.
pub(crate) fn write_setup(
    dir: &Path,
    opts: &Options,
    ingest: SocketAddr,
    metrics: SocketAddr,
    collector: Option<SocketAddr>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut topology = String::from("[[racks]]\nid = 1\nname = \"bench\"\n\n[[racks]]\nid = 2\nname = \"far\"\n");
    for agent in 0..opts.agents {
        topology += &format!(
            "\n[[nodes]]\nid = {}\nname = \"a{agent}\"\nrack = \"bench\"\naddresses = [\"{}\"]\n",
            1_000 + agent,
            node_ip(1, agent)
        );
    }
    for target in 0..opts.targets {
        topology += &format!(
            "\n[[nodes]]\nid = {}\nname = \"t{target}\"\nrack = \"far\"\naddresses = [\"{}\"]\n",
            5_000 + target,
            node_ip(2, target)
        );
    }
    std::fs::write(dir.join("topology.toml"), topology)?;
    let pki = DevPki::generate(&dir.join("pki"), &["localhost".into()], &["bench".into()])?;
    let config = SamplerToml {
        id: 1,
        rack: "bench",
        topology: &dir.join("topology.toml"),
        ingest,
        window_secs: opts.window_secs,
        grace_ms: 200,
        // Without a collector, an unreachable address: batches spool.
        collectors: vec![match collector {
            Some(addr) => addr,
            None => free_local_addr()?,
        }],
        spool: &dir.join("spool"),
        tls: &pki.sampler("bench"),
        metrics,
    };
    let path = dir.join("sampler.toml");
    std::fs::write(&path, config.render())?;
    Ok(path)
}

fn run_sampler(dir: &Path, opts: &Options, traffic: &mut Traffic, rate: Option<f64>) -> anyhow::Result<SamplerRun> {
    let ingest = free_local_addr()?;
    let metrics = free_local_addr()?;
    let config = write_setup(dir, opts, ingest, metrics, None)?;
    let mut sampler = pinned(RECEIVER_CPU, &sibling_binary("flowmesh-sampler", BUILD)?);
    sampler.env(
        "RUST_LOG",
        std::env::var("FLOWMESH_BENCH_SAMPLER_LOG").unwrap_or_else(|_| "error".into()),
    );
    let child = start_daemon(sampler, &config, &dir.join("sampler.log"), metrics, "flowmesh-sampler")?;
    let sent = blast(traffic, ingest, opts.seconds, rate)?;
    // Let the receiver drain its socket buffer.
    std::thread::sleep(Duration::from_millis(500));
    let page = scrape(metrics)?;
    let datagrams = metric(&page, "flowmesh_sampler_datagrams_received_total");
    let records = metric(&page, "flowmesh_sampler_records_received_total{kind=\"probe\"}")
        + metric(&page, "flowmesh_sampler_records_received_total{kind=\"flow\"}");
    // taskset execs the sampler, so the child's pid is the sampler's.
    let peak_rss_kib = peak_rss_kib(child.0.id())?;
    let cpu_seconds = cpu_seconds(&child.0.id().to_string())?;
    drop(child);
    if std::env::var_os("FLOWMESH_BENCH_SAMPLER_LOG").is_some() {
        print!("{}", std::fs::read_to_string(dir.join("sampler.log"))?);
    }
    Ok(SamplerRun {
        sent,
        datagrams,
        records,
        peak_rss_kib,
        cpu_seconds,
    })
}

/// The sampler's per-record CPU cost without the kernel: the same traffic
/// fed straight into an `Aggregator`, windows emitted and encoded as they
/// close. Returns records aggregated, seconds taken and CPU seconds used
/// (this process's, which does nothing else meanwhile).
fn aggregate_only(dir: &Path, opts: &Options, traffic: &mut Traffic) -> anyhow::Result<(u64, f64, f64)> {
    use rack_sampler::aggregate::{Aggregator, ClosedWindow, Settings};
    let config_path = write_setup(
        &dir.join("in-process"),
        opts,
        "127.0.0.1:9".parse()?,
        "127.0.0.1:9".parse()?,
        None,
    )?;
    let text = std::fs::read_to_string(&config_path)?;
    let config: configs::SamplerConfig = toml::from_str(&text)?;
    let topology = std::sync::Arc::new(configs::Topology::load(&config.topology)?);
    let mut aggregator = Aggregator::new(Settings::new(&config, 1), topology, rack_sampler::now_ns());
    let mut seqs = vec![0u32; traffic.agents];
    let cpu_before = cpu_seconds("self")?;
    let start = Instant::now();
    let mut records = 0u64;
    let mut now_ns = rack_sampler::now_ns();
    while start.elapsed() < Duration::from_secs(opts.seconds.min(5)) {
        for (agent, datagram) in traffic.datagrams.iter_mut() {
            restamp(datagram, traffic.kind, &mut seqs[*agent], now_ns);
            if let rack_sampler::aggregate::Ingested::Accepted { records: n } = aggregator.ingest(datagram, now_ns) {
                records += n as u64;
            }
        }
        now_ns = rack_sampler::now_ns();
        for window in aggregator.take_due(now_ns) {
            std::hint::black_box(ClosedWindow::encode(window));
        }
    }
    Ok((
        records,
        start.elapsed().as_secs_f64(),
        cpu_seconds("self")? - cpu_before,
    ))
}

/// What one run measured, for the summary over runs.
struct RunFigures {
    /// The sampler's records per CPU-second ÷ the bare loop's, flat out.
    per_cpu_ratio: f64,
    /// The same at the same paced load.
    paced_per_cpu_ratio: f64,
    /// CPU ns per record at that load: the sampler's, the bare loop's.
    paced_ns: (f64, f64),
    /// Aggregation alone, CPU ns per record.
    aggregation_ns: f64,
    /// Paced run: datagrams lost, and sent.
    paced_lost: u64,
    paced_sent: u64,
}

/// Runs the benchmark and prints its report.
pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    let mut traffic = build_traffic(opts)?;
    println!(
        "sampler-ingest: {:?} records, {:.1} per datagram on average, {} agents × {} targets = {} paths, {} s windows, {} s per phase; receivers pinned to CPU 1",
        opts.kind,
        traffic.records_per_datagram,
        opts.agents,
        opts.targets,
        u64::from(opts.agents) * u64::from(opts.targets),
        opts.window_secs,
        opts.seconds
    );
    let dir = tempfile::tempdir()?;
    let mut figures = Vec::new();
    for run in 1..=opts.runs.max(1) {
        if opts.runs > 1 {
            println!(" run {run} of {}:", opts.runs);
        }
        let run_dir = dir.path().join(format!("run{run}"));
        if opts.aggregation_only {
            let aggregation_ns = aggregation_phase(&run_dir, opts, &mut traffic)?;
            figures.push(RunFigures {
                per_cpu_ratio: f64::NAN,
                paced_per_cpu_ratio: f64::NAN,
                paced_ns: (f64::NAN, f64::NAN),
                aggregation_ns,
                paced_lost: 0,
                paced_sent: 0,
            });
        } else {
            figures.push(run_once(&run_dir, opts, &mut traffic)?);
        }
    }
    if figures.len() > 1 {
        let spread = |f: &dyn Fn(&RunFigures) -> f64, digits: usize| {
            let values: Vec<String> = figures.iter().map(|r| format!("{:.digits$}", f(r))).collect();
            values.join(", ")
        };
        println!(" over {} runs:", figures.len());
        if !opts.aggregation_only {
            println!(
                "  records per CPU-second, flowmesh-sampler ÷ bare loop: flat out {}; at the same paced load {}",
                spread(&|r| r.per_cpu_ratio, 2),
                spread(&|r| r.paced_per_cpu_ratio, 2)
            );
            println!(
                "  CPU ns per record at the paced load: flowmesh-sampler {}; bare loop {}",
                spread(&|r| r.paced_ns.0, 0),
                spread(&|r| r.paced_ns.1, 0)
            );
        }
        println!(
            "  aggregation alone, CPU ns per record: {}",
            spread(&|r| r.aggregation_ns, 0)
        );
        if !opts.aggregation_only {
            println!(
                "  paced at {:.0} %, datagrams lost: {}",
                opts.paced * 100.0,
                figures
                    .iter()
                    .map(|r| format!("{} of {}", r.paced_lost, r.paced_sent))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// The in-process aggregation phase: prints it and returns CPU ns per
/// record.
fn aggregation_phase(dir: &Path, opts: &Options, traffic: &mut Traffic) -> anyhow::Result<f64> {
    let (records, wall, cpu) = aggregate_only(dir, opts, traffic)?;
    let ns = cpu.max(0.01) * 1e9 / records.max(1) as f64;
    println!(
        "  aggregation alone (in process, no sockets, one thread): {:>6.2} M records per CPU-second = {:.0} ns per record ({:.2} M records/s, {:.1} s of wall time)",
        records as f64 / cpu.max(0.01) / 1e6,
        ns,
        records as f64 / wall / 1e6,
        wall
    );
    Ok(ns)
}

/// One run of every phase.
fn run_once(dir: &Path, opts: &Options, traffic: &mut Traffic) -> anyhow::Result<RunFigures> {
    let per = traffic.records_per_datagram;
    let secs = opts.seconds as f64;
    let (sent, received, sink_cpu) = baseline(traffic, opts.seconds, None)?;
    let sink_rate = received as f64 / secs;
    // Records per CPU-second: what one core sustains, whether or not the
    // sender could saturate the receiver.
    let sink_capacity = received as f64 * per / sink_cpu.max(0.01);
    println!(
        "  bare receive loop (ceiling): {:>8.0} datagrams/s = {:>5.2} M records/s received ({:.2} % of sent lost), {:.2} CPU-s → {:>6.2} M records per CPU-second",
        sink_rate,
        sink_rate * per / 1e6,
        100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64,
        sink_cpu,
        sink_capacity / 1e6
    );
    let saturated = run_sampler(&dir.join("saturated"), opts, traffic, None)?;
    let rate = saturated.datagrams as f64 / secs;
    let capacity = saturated.records as f64 / saturated.cpu_seconds.max(0.01);
    println!(
        "  flowmesh-sampler, flat out:   {:>8.0} datagrams/s = {:>5.2} M records/s received ({:.2} % of sent lost), {:.2} CPU-s → {:>6.2} M records per CPU-second, peak RSS {} MiB",
        rate,
        saturated.records as f64 / secs / 1e6,
        100.0 * (saturated.sent.saturating_sub(saturated.datagrams)) as f64 / saturated.sent.max(1) as f64,
        saturated.cpu_seconds,
        capacity / 1e6,
        saturated.peak_rss_kib / 1024
    );
    // The headline: one sending core saturates neither receiver, so the
    // records received say little; the records per CPU-second do.
    let per_cpu_ratio = capacity / sink_capacity.max(1.0);
    println!(
        "  records per CPU-second, flowmesh-sampler ÷ bare loop: {per_cpu_ratio:.2}  (received: {:.2}, which only says the sender kept up)",
        rate / sink_rate.max(1.0),
    );
    let aggregation_ns = aggregation_phase(dir, opts, traffic)?;
    let target = rate * opts.paced;
    let paced = run_sampler(&dir.join("paced"), opts, traffic, Some(target))?;
    let lost = paced.sent.saturating_sub(paced.datagrams);
    println!(
        "  flowmesh-sampler, paced at {:.0} % ({:.0} datagrams/s = {:.2} M records/s): {} of {} datagrams lost ({:.3} %), peak RSS {} MiB",
        opts.paced * 100.0,
        paced.sent as f64 / secs,
        paced.records as f64 / secs / 1e6,
        lost,
        paced.sent,
        100.0 * lost as f64 / paced.sent.max(1) as f64,
        paced.peak_rss_kib / 1024
    );
    // The bare loop at the same offered load: with one sending core neither
    // receiver is saturated, and a receiver that wakes more often takes
    // fewer datagrams per system call, so CPU per record is compared at
    // equal load too.
    let (bare_sent, bare_received, bare_cpu) = baseline(traffic, opts.seconds, Some(target))?;
    let sampler_ns = paced.cpu_seconds * 1e9 / paced.records.max(1) as f64;
    let bare_ns = bare_cpu * 1e9 / (bare_received as f64 * per).max(1.0);
    println!(
        "  bare receive loop, same pace: {} of {} datagrams lost, {:.2} CPU-s; CPU per record at this load: flowmesh-sampler {:.0} ns, bare loop {:.0} ns → records per CPU-second, flowmesh-sampler ÷ bare loop: {:.2}",
        bare_sent.saturating_sub(bare_received),
        bare_sent,
        bare_cpu,
        sampler_ns,
        bare_ns,
        bare_ns / sampler_ns.max(1e-9)
    );
    Ok(RunFigures {
        per_cpu_ratio,
        paced_per_cpu_ratio: bare_ns / sampler_ns.max(1e-9),
        paced_ns: (sampler_ns, bare_ns),
        aggregation_ns,
        paced_lost: lost,
        paced_sent: paced.sent,
    })
}
