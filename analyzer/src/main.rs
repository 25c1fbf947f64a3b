//! `flowmesh-analyzer`: RTT and loss anomalies from the collector's
//! database, localized to a host, a rack or a pair of racks.

use std::process::ExitCode;

use std::io::Write as _;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use collector_storage::{Reader, SqliteStore};
use configs::{AnalyzerConfig, Backend, ConfigArgs, Since, Topology};

mod serve;

/// flowmesh analyzer: reads the collector's store — its SQLite database or
/// a ClickHouse cluster — read-only (safe while the collector writes), flags RTT and loss anomalies and
/// localizes them with the topology file.
///
/// Exit status: 0 nothing found, 2 anomalies or telemetry gaps found, 1
/// the analysis could not run.
#[derive(Parser)]
#[command(name = "flowmesh-analyzer", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Report anomalies over a time range (the default: the last hour).
    Report {
        /// Windows from this long ago: e.g. 30m, 6h, 7d, or "all".
        #[arg(long, default_value = "1h", value_parser = Since::parse)]
        since: Since,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Read this SQLite database, whatever the configuration says.
        #[arg(long, value_name = "FILE", conflicts_with = "clickhouse")]
        database: Option<std::path::PathBuf>,
        /// Read the ClickHouse cluster at this HTTP URL (database, cluster
        /// and credentials from `[storage.clickhouse]`).
        #[arg(long, value_name = "URL")]
        clickhouse: Option<String>,
        /// The topology file; default: `topology` from the configuration.
        #[arg(long, value_name = "FILE")]
        topology: Option<std::path::PathBuf>,
        /// Write the report to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Re-analyze as windows arrive and print each incident when it
    /// starts, changes (flaps back, worsens) and ends, and each telemetry
    /// gap, until SIGINT or SIGTERM.
    Watch {
        /// How far back each pass looks (context for baselines and merging).
        #[arg(long, default_value = "30m", value_parser = Since::parse)]
        since: Since,
        /// Seconds between passes.
        #[arg(long, default_value_t = 5)]
        interval_secs: u64,
        /// Stop after this many passes (default: run until stopped).
        #[arg(long)]
        passes: Option<u64>,
        /// Read this SQLite database, whatever the configuration says.
        #[arg(long, value_name = "FILE", conflicts_with = "clickhouse")]
        database: Option<std::path::PathBuf>,
        /// Read the ClickHouse cluster at this HTTP URL (database, cluster
        /// and credentials from `[storage.clickhouse]`).
        #[arg(long, value_name = "URL")]
        clickhouse: Option<String>,
        /// The topology file; default: `topology` from the configuration.
        #[arg(long, value_name = "FILE")]
        topology: Option<std::path::PathBuf>,
        /// Serve the findings to Prometheus here (`/metrics`, `/healthz`,
        /// `/readyz`); default: `metrics.listen` from the configuration.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

/// Which path windows an analysis keeps after judging them.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// None: memory holds a few windows at a time.
    Nothing,
    /// Every one (the HTML report draws them).
    All,
    /// The newest two windows' (the metrics page describes the newest
    /// judged window, which may be the one before the newest stored).
    Newest,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// A table for people, most severe first.
    Table,
    /// JSON for automation (schema in docs/analyzer.md).
    Json,
    /// A self-contained HTML page: rack × rack heatmaps, anomalies with
    /// evidence, time series of flagged paths.
    Html,
}

fn main() -> ExitCode {
    match run() {
        Ok(found) if found => ExitCode::from(2),
        other => configs_runtime::exit_code("flowmesh-analyzer", other.map(|_| ())),
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Reads and analyzes the windows from `since` ago to now, window by window,
/// keeping the path windows `keep` says.
fn analyze_since(
    store: &dyn Reader,
    topology: &Topology,
    config: &AnalyzerConfig,
    since: Since,
    keep: Keep,
) -> anyhow::Result<(analyzer::report::Analysis, analyzer::model::Observations)> {
    let now = now_ns();
    let from = since.start_ns(now);
    let reading = || format!("reading {}", describe(config));
    // Earlier windows feed the RTT baselines: as many as a baseline holds.
    let history = store
        .history_start(from, config.detect.baseline_windows)
        .with_context(reading)?;
    let to = now.saturating_add(1);
    let mut analyzer = analyzer::report::Analyzer::new(from, now, topology, config);
    let mut paths = Vec::new();
    let mut before = Vec::new();
    let progress = Progress::new();
    collector_storage::for_each_window(
        store,
        history,
        to,
        &|read, expected| progress.show(read, expected),
        &mut |window| {
            analyzer.window(window);
            match keep {
                Keep::Nothing => {}
                Keep::All => paths.extend_from_slice(window),
                Keep::Newest => {
                    std::mem::swap(&mut paths, &mut before);
                    paths.clear();
                    paths.extend_from_slice(window);
                }
            }
        },
    )
    .with_context(reading)?;
    progress.done();
    if keep == Keep::Newest {
        before.append(&mut paths);
        paths = before;
    }
    let agents = store.agent_windows(history, to).with_context(reading)?;
    let analysis = analyzer.finish(&agents);
    Ok((analysis, analyzer::model::Observations { paths, agents }))
}

/// Progress of a long read on stderr, for people: only when stderr is a
/// terminal (cron jobs and pipes get none), only after the read has taken a
/// second, at most four times a second, overwritten in place.
struct Progress {
    started: std::time::Instant,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal as _;
        Progress {
            started: std::time::Instant::now(),
            last: std::sync::Mutex::new(None),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, read: u64, expected: u64) {
        let now = std::time::Instant::now();
        if !self.terminal || now.duration_since(self.started) < std::time::Duration::from_secs(1) {
            return;
        }
        let Ok(mut last) = self.last.lock() else { return };
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(250)) {
            return;
        }
        *last = Some(now);
        let share = if expected == 0 {
            100.0
        } else {
            (read as f64 / expected as f64 * 100.0).min(100.0)
        };
        eprint!(
            "\rreading and analyzing path windows: {:.1} M of {:.1} M ({share:.0} %), {:.0} s",
            read as f64 / 1e6,
            expected as f64 / 1e6,
            now.duration_since(self.started).as_secs_f64()
        );
    }

    fn done(&self) {
        if self.last.lock().is_ok_and(|last| last.is_some()) {
            eprintln!(
                "\ranalyzing ({:.1} s to read){:20}",
                self.started.elapsed().as_secs_f64(),
                ""
            );
        }
    }
}

/// `watch`: a pass every `interval_secs`, printing the incidents and
/// telemetry gaps that started, changed or ended since the previous pass
/// ([`analyzer::incident::Watch`] keeps what was open), and serving the
/// findings as metrics when `metrics.listen` is set. The first pass must succeed (a wrong path
/// or URL should stop the command at once) — except that an SQLite database not created yet, in
/// a directory that exists, is waited for (a service started beside the collector, which creates
/// it at its first start: a first boot must not fail the analyzer); a later pass that fails is
/// reported on stderr and counted, and the next pass reopens the store.
fn watch(config: &AnalyzerConfig, since: Since, interval_secs: u64, passes: Option<u64>) -> anyhow::Result<()> {
    let topology = Topology::load(&config.topology)?;
    let server = match config.metrics.listen {
        Some(addr) => Some(serve::Server::start(addr)?),
        None => None,
    };
    let mut store = match open(config) {
        Ok(store) => Some(store),
        Err(_) if not_created_yet(config) => {
            eprintln!(
                "flowmesh-analyzer: {} does not exist yet (the collector creates it); waiting for it",
                config.database.display()
            );
            None
        }
        Err(error) => return Err(error),
    };
    let mut followed = analyzer::incident::Watch::default();
    let mut pass = 0u64;
    loop {
        let started = std::time::Instant::now();
        let outcome = match &store {
            // Still not there: nothing to analyze, not a failure (not ready).
            None if not_created_yet(config) => Err(None),
            Some(store) => analyze_since(store.as_ref(), &topology, config, since, Keep::Newest).map_err(Some),
            None => open(config)
                .and_then(|opened| {
                    let store = store.insert(opened);
                    analyze_since(store.as_ref(), &topology, config, since, Keep::Newest)
                })
                .map_err(Some),
        };
        let outcome = match outcome {
            Err(None) => {
                pass += 1;
                if passes.is_some_and(|n| pass >= n) {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_secs(interval_secs.max(1)));
                continue;
            }
            Ok(found) => Ok(found),
            Err(Some(error)) => Err(error),
        };
        match outcome {
            Ok((analysis, observations)) => {
                let stamp = analyzer::report::utc(now_ns());
                let mut out = std::io::stdout().lock();
                for event in followed.pass(&analysis) {
                    writeln!(out, "{stamp} {event}")?;
                }
                out.flush()?;
                if let Some(server) = &server {
                    let limit = usize::try_from(config.metrics.max_host_series).unwrap_or(usize::MAX);
                    let page = analyzer::results::exposition(&analysis, &observations.paths, &topology, limit);
                    server.passed(page, started.elapsed());
                }
            }
            Err(error) if pass > 0 || store.is_none() => {
                eprintln!(
                    "flowmesh-analyzer: pass failed, retrying in {interval_secs} s: {}",
                    configs_runtime::exit::error_line(error.as_ref())
                );
                store = None;
                if let Some(server) = &server {
                    server.failed(started.elapsed());
                }
            }
            Err(error) => return Err(error),
        }
        pass += 1;
        if passes.is_some_and(|n| pass >= n) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(interval_secs.max(1)));
    }
}

/// Whether the store is an SQLite database that does not exist yet in a
/// directory that does: the collector has not created it yet.
fn not_created_yet(config: &AnalyzerConfig) -> bool {
    config.storage.backend == Backend::Sqlite
        && !config.database.exists()
        && config
            .database
            .parent()
            .is_some_and(|dir| dir.as_os_str().is_empty() || dir.is_dir())
}

/// Applies `--database` or `--clickhouse`: either one picks its backend.
fn choose_store(config: &mut AnalyzerConfig, database: Option<std::path::PathBuf>, clickhouse: Option<String>) {
    if let Some(path) = database {
        config.database = path;
        config.storage.backend = Backend::Sqlite;
    }
    if let Some(url) = clickhouse {
        config.storage.clickhouse.url = url;
        config.storage.backend = Backend::Clickhouse;
    }
}

/// The configured store, opened for reading.
fn open(config: &AnalyzerConfig) -> anyhow::Result<Box<dyn Reader>> {
    match config.storage.backend {
        Backend::Sqlite => Ok(Box::new(SqliteStore::open_read_only(&config.database)?)),
        #[cfg(feature = "clickhouse")]
        Backend::Clickhouse => Ok(Box::new(collector_storage_clickhouse::ClickHouseStore::open_read_only(
            collector_storage_clickhouse::Options::from_config(&config.storage.clickhouse),
        )?)),
        #[cfg(not(feature = "clickhouse"))]
        Backend::Clickhouse => {
            anyhow::bail!("this flowmesh-analyzer was built without ClickHouse support (feature `clickhouse`)")
        }
    }
}

/// The store, for messages.
fn describe(config: &AnalyzerConfig) -> String {
    match config.storage.backend {
        Backend::Sqlite => config.database.display().to_string(),
        Backend::Clickhouse => format!(
            "clickhouse {} database {}",
            config.storage.clickhouse.url, config.storage.clickhouse.database
        ),
    }
}

/// Runs the command; `Ok(true)` when anomalies were found.
fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let Some(mut config) = cli.config.load_or_print::<AnalyzerConfig>()? else {
        return Ok(false);
    };
    let command = cli.command.unwrap_or(Command::Report {
        since: Since(Some(std::time::Duration::from_secs(3_600))),
        format: Format::Table,
        database: None,
        clickhouse: None,
        topology: None,
        output: None,
    });
    let (since, format, database, clickhouse, topology, output) = match command {
        Command::Report {
            since,
            format,
            database,
            clickhouse,
            topology,
            output,
        } => (since, format, database, clickhouse, topology, output),
        Command::Watch {
            since,
            interval_secs,
            passes,
            database,
            clickhouse,
            topology,
            metrics_listen,
        } => {
            choose_store(&mut config, database, clickhouse);
            config.metrics.listen = metrics_listen.or(config.metrics.listen);
            config.topology = topology.unwrap_or(config.topology);
            watch(&config, since, interval_secs, passes)?;
            return Ok(false);
        }
    };
    choose_store(&mut config, database, clickhouse);
    config.topology = topology.unwrap_or(config.topology);
    let topology = Topology::load(&config.topology)?;
    let store = open(&config)?;
    let (analysis, observations) = analyze_since(
        store.as_ref(),
        &topology,
        &config,
        since,
        if matches!(format, Format::Html) {
            Keep::All
        } else {
            Keep::Nothing
        },
    )?;
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        Format::Table => analysis.write_table(&mut out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &analysis)?;
            out.write_all(b"\n")?;
        }
        Format::Html => out.write_all(analyzer::html::render(&analysis, &observations, &topology).as_bytes())?,
    }
    out.flush()?;
    if let Some(path) = output {
        eprintln!("wrote {}", path.display());
    }
    Ok(analysis.found_anything())
}
