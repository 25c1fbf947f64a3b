//! `flowmesh-collector`: stores rack samplers' batches in SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use collector::query::{self, Format};
use collector::server::{self, Stats, Writer};
use collector_storage::{BatchWriter, Question, Reader, SqliteStore};
use configs::{CollectorConfig, ConfigArgs, Topology};
use configs_runtime::tls::{self, DevPki};
use tracing::info;

/// flowmesh collector: a QUIC server that stores rack samplers' batches in
/// SQLite, each once, acknowledging only after commit.
#[derive(Parser)]
#[command(name = "flowmesh-collector", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,

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
        /// The database; default: `database` from the configuration.
        #[arg(long, value_name = "FILE", global = true)]
        database: Option<PathBuf>,
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
        /// Sampler certificates to issue, by name.
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
    configs_runtime::init_logging();
    let cli = Cli::parse();
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
        }) => {
            let database = match database {
                Some(path) => path,
                None => match cli.config.load_or_print::<CollectorConfig>()? {
                    Some(config) => config.database,
                    None => return Ok(()),
                },
            };
            let store = SqliteStore::open_read_only(&database)?;
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

async fn serve(config: CollectorConfig) -> anyhow::Result<()> {
    // Handle SIGTERM from the very start, so an early stop is still clean.
    let shutdown = configs_runtime::signal::shutdown_signal().context("installing the SIGTERM handler")?;
    let mut store = SqliteStore::open(&config.database)?;
    if let Some(path) = &config.topology {
        let topology = Topology::load(path)?;
        for rack in topology.racks() {
            store.upsert_rack(rack.id, &rack.name)?;
        }
        for node in topology.nodes() {
            store.upsert_node(node.id, &node.name, node.rack)?;
        }
    }
    let mut server_config = tls::server_config(&config.tls)?;
    server_config.transport_config(Arc::new(server::transport_config(32)));
    let endpoint = quinn::Endpoint::server(server_config, config.listen)
        .with_context(|| format!("listening on {} (key `listen`)", config.listen))?;
    let local: SocketAddr = endpoint.local_addr()?;
    info!(message = "Collector listening.", %local, database = %config.database.display());

    let stats = Arc::new(Stats::default());
    let telemetry = collector::telemetry::endpoint(stats.clone(), &config.database);
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .with_context(|| format!("listening on {} (key `metrics.listen`)", config.metrics.listen))?;
    info!(message = "Metrics endpoint listening.", local = %metrics_listener.local_addr()?);
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = tokio::spawn(telemetry.clone().serve(metrics_listener, async {
        let _ = metrics_stopped.await;
    }));
    let (writer, writer_thread) = Writer::spawn(
        Box::new(store),
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
    server::serve(endpoint, writer, stats, shutdown).await;
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
