//! `flowmesh-collector`: stores rack samplers' batches in SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use collector::query::{self, Format};
use collector::server::{self, Authorization, Stats, Writer};
use collector_storage::{BatchWriter, Question, Reader, SqliteStore};
use collector_storage_clickhouse::{ClickHouseStore, Options};
use configs::{Backend, CollectorConfig, ConfigArgs, Topology};
use configs_runtime::LogFormat;
use configs_runtime::tls::{self, DevPki};
use tracing::{info, warn};

/// flowmesh collector: a QUIC server that stores rack samplers' batches in
/// SQLite, each once, acknowledging only after commit.
#[derive(Parser)]
#[command(name = "flowmesh-collector", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log lines on stderr: `text`, or `json` (one object per line with
    /// timestamp, level, target, message and the event's fields).
    #[arg(long, value_name = "text|json", default_value_t = LogFormat::Text, value_parser = LogFormat::parse, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Answer a common question from the database (read-only; safe while the
    /// collector runs). For anything else use sqlite3 with docs/schema.md.
    Query {
        #[command(subcommand)]
        question: QueryCommand,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
        format: Format,
        /// Only windows from this long ago: e.g. 30m, 6h, 7d, or "all".
        #[arg(long, default_value = "1h", value_parser = configs::Since::parse, global = true)]
        since: configs::Since,
        /// Rows at most.
        #[arg(long, default_value_t = 20, global = true)]
        limit: usize,
        /// Read this SQLite database, whatever the configuration says.
        #[arg(long, value_name = "FILE", global = true, conflicts_with = "clickhouse")]
        database: Option<PathBuf>,
        /// Read the ClickHouse cluster at this HTTP URL (database, cluster
        /// and credentials from `[storage.clickhouse]`), whatever the
        /// configuration's backend.
        #[arg(long, value_name = "URL", global = true)]
        clickhouse: Option<String>,
    },
    /// Generate a development CA and certificates for a collector and samplers
    /// (for demos and tests; use your own PKI in production).
    DevCerts {
        /// Directory to write `ca.pem`, `collector.pem`/`.key` and `<sampler>.pem`/`.key` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Names the collector's certificate is valid for.
        #[arg(long = "server-name", value_name = "NAME", default_values_t = [String::from("flowmesh-collector"), String::from("localhost")])]
        server_names: Vec<String>,
        /// Sampler certificates to issue, by name (the certificate's DNS name). A
        /// certificate named after a topology rack may write that rack's batches
        /// as the sampler id equal to the rack's id; other names need an
        /// `[[authorize]]` entry in the collector's configuration.
        #[arg(long = "sampler", value_name = "NAME", default_values_t = [String::from("sampler")])]
        samplers: Vec<String>,
    },
}

#[derive(Subcommand)]
enum QueryCommand {
    /// Paths by probe loss, worst first.
    WorstPaths,
    /// Estimated bytes sent per node and remote address (sampled flows × weight).
    TopTalkers,
    /// One node's path windows, as source or destination, newest first.
    Node {
        /// Node name or id.
        node: String,
    },
    /// Agents whose telemetry went missing or that were silent.
    Completeness,
}

fn main() -> ExitCode {
    configs_runtime::exit_code("flowmesh-collector", run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    configs_runtime::init_logging(cli.log_format);
    match cli.command {
        Some(Command::DevCerts {
            out,
            server_names,
            samplers,
        }) => {
            DevPki::generate(&out, &server_names, &samplers)?;
            println!("wrote development certificates to {}", out.display());
            Ok(())
        }
        Some(Command::Query {
            question,
            format,
            since,
            limit,
            database,
            clickhouse,
        }) => {
            let config = match (&database, cli.config.load_or_print::<CollectorConfig>()?) {
                (_, Some(config)) => config,
                // --print-default-config: printed, nothing to answer.
                (None, None) => return Ok(()),
                (Some(_), None) => CollectorConfig::default(),
            };
            let store = open_reader(&config, database, clickhouse)?;
            let since_ns = since.start_ns(server::now_ns());
            let question = match question {
                QueryCommand::WorstPaths => Question::WorstPaths,
                QueryCommand::TopTalkers => Question::TopTalkers,
                QueryCommand::Node { node } => Question::Node(node),
                QueryCommand::Completeness => Question::Completeness,
            };
            let answer = store.ask(&question, since_ns, limit)?;
            query::write(&answer, format, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Some(Command::Serve) | None => {
            let Some(config) = cli.config.load_or_print::<CollectorConfig>()? else {
                return Ok(());
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(serve(config))
        }
    }
}

/// Opens the configured store for writing and records the topology's racks
/// and nodes in it.
fn open_writer(config: &CollectorConfig, topology: Option<&Topology>) -> anyhow::Result<Box<dyn BatchWriter>> {
    let mut store: Box<dyn BatchWriter> = match config.storage.backend {
        Backend::Sqlite => Box::new(SqliteStore::open(&config.database)?),
        Backend::Clickhouse => Box::new(ClickHouseStore::open(Options::from_config(&config.storage.clickhouse))?),
    };
    if let Some(topology) = topology {
        for rack in topology.racks() {
            store.upsert_rack(rack.id, &rack.name)?;
        }
        for node in topology.nodes() {
            store.upsert_node(node.id, &node.name, node.rack)?;
        }
    }
    Ok(store)
}

/// The store `query` reads: `--database` or `--clickhouse` when given, else
/// the configuration's backend.
fn open_reader(
    config: &CollectorConfig,
    database: Option<PathBuf>,
    clickhouse: Option<String>,
) -> anyhow::Result<Box<dyn Reader>> {
    let backend = match (&database, &clickhouse) {
        (Some(_), _) => Backend::Sqlite,
        (None, Some(_)) => Backend::Clickhouse,
        (None, None) => config.storage.backend,
    };
    Ok(match backend {
        Backend::Sqlite => Box::new(SqliteStore::open_read_only(
            &database.unwrap_or_else(|| config.database.clone()),
        )?),
        Backend::Clickhouse => {
            let mut options = Options::from_config(&config.storage.clickhouse);
            options.url = clickhouse.unwrap_or(options.url);
            Box::new(ClickHouseStore::open_read_only(options)?)
        }
    })
}

async fn serve(config: CollectorConfig) -> anyhow::Result<()> {
    // Handle SIGTERM from the very start, so an early stop is still clean.
    let shutdown = configs_runtime::signal::shutdown_signal().context("installing the SIGTERM handler")?;
    let topology = config.topology.as_deref().map(Topology::load).transpose()?;
    // Who may write what, before anything is opened: without it, refuse to start.
    let authorization = Authorization::from_config(&config, topology.as_ref())?;
    if authorization.is_any_signed_sampler() {
        warn!(
            message = "authorize_any_signed_sampler is set: any certificate the CA signed may write any rack's batches as any sampler. For development only."
        );
    } else {
        info!(
            message = "Samplers are authorized by certificate name.",
            certificates = authorization.grant_list().len()
        );
    }
    // On a thread of its own: a backend with its own async client (ClickHouse)
    // blocks on its own runtime, which cannot run inside this one.
    let store = std::thread::scope(|scope| scope.spawn(|| open_writer(&config, topology.as_ref())).join())
        .map_err(|_| anyhow::anyhow!("opening the store panicked"))??;
    let mut server_config = tls::server_config(&config.tls)?;
    server_config.transport_config(Arc::new(server::transport_config(32)));
    // Bound here rather than by quinn, for the receive buffer the samplers'
    // window-end bursts need; dual-stack when `listen` is `[::]`, as
    // quinn's own binding is.
    let bound = configs_runtime::udp::bind(config.listen, config.socket_buffer_bytes, false, "socket_buffer_bytes")
        .with_context(|| format!("listening on {} (key `listen`)", config.listen))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        bound.socket,
        runtime,
    )
    .with_context(|| format!("listening on {} (key `listen`)", config.listen))?;
    let local: SocketAddr = endpoint.local_addr()?;
    let storage = match config.storage.backend {
        Backend::Sqlite => config.database.display().to_string(),
        Backend::Clickhouse => format!(
            "clickhouse {} database {} cluster {}",
            config.storage.clickhouse.url, config.storage.clickhouse.database, config.storage.clickhouse.cluster
        ),
    };
    info!(message = "Collector listening.", %local, %storage, receive_buffer = bound.buffer_bytes);

    let stats = Arc::new(Stats::default());
    let sqlite_file = (config.storage.backend == Backend::Sqlite).then_some(config.database.as_path());
    let telemetry = collector::telemetry::endpoint(stats.clone(), sqlite_file, (bound.buffer_bytes, bound.capped));
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("listening on {} (key `metrics.listen`)", config.metrics.listen))?;
    info!(message = "Metrics endpoint listening.", local = %metrics_listener.local_addr()?);
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = tokio::spawn(telemetry.clone().serve(metrics_listener, async {
        let _ = metrics_stopped.await;
    }));
    let (writer, writer_thread) = Writer::spawn(
        store,
        config.max_pending_batches,
        config.batches_per_transaction,
        stats.clone(),
    )?;

    let retention = Duration::from_secs(u64::from(config.retention_days) * 86_400);
    let pruner = writer.clone();
    let retention_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let cutoff = server::now_ns().saturating_sub(retention.as_nanos() as u64);
            pruner.prune(cutoff).await;
        }
    });

    telemetry.set_ready(true);
    server::serve_authorized(endpoint, writer, stats, authorization, shutdown).await;
    telemetry.set_ready(false);
    retention_task.abort();
    let _ = retention_task.await;
    // The last Writer handle is gone: the writer finishes its transaction and exits.
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    let _ = stop_metrics.send(());
    metrics_task.await??;
    info!(message = "Collector stopped.");
    Ok(())
}
