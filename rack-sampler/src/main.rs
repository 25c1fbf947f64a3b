//! `flowmesh-sampler`: one per rack; aggregates its agents' datagrams per
//! window and forwards batches to one of its collectors over QUIC.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use configs::{ConfigArgs, SamplerConfig};
use configs_runtime::LogFormat;
use rack_sampler::service::Sampler;
use tracing::info;

/// flowmesh rack sampler: receives agent datagrams over UDP, aggregates them
/// per path and window, keeps every anomalous raw record and a weighted
/// sample of the rest, and sends one batch per window to a collector
/// (QUIC, mutual TLS), failing over between the collectors of
/// `uplink.collectors` and spooling to disk while none is reachable.
///
/// Development certificates: `flowmesh-collector dev-certs --out DIR
/// --sampler NAME`.
#[derive(Parser)]
#[command(name = "flowmesh-sampler", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log lines on stderr: `text`, or `json` (one object per line with
    /// timestamp, level, target, message and the event's fields).
    #[arg(long, value_name = "text|json", default_value_t = LogFormat::Text, value_parser = LogFormat::parse, global = true)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    configs_runtime::exit_code("flowmesh-sampler", run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    configs_runtime::init_logging(cli.log_format);
    let Some(config) = cli.config.load_or_print::<SamplerConfig>()? else {
        return Ok(());
    };
    // Encoding and spooling windows, the uplink and the metrics endpoint
    // run on the runtime's threads, which yield the core to the receive
    // loops' thread (rack_sampler::ingest).
    let background = rack_sampler::ingest::background_nice();
    tokio::runtime::Builder::new_multi_thread()
        .on_thread_start(move || rack_sampler::ingest::set_thread_nice(background))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(async {
            let shutdown = configs_runtime::signal::shutdown_signal().context("installing the SIGTERM handler")?;
            let collectors = config.uplink.collectors.clone();
            let sampler = Sampler::start(config, shutdown).await?;
            info!(
                message = "sampler running",
                ingest = ?sampler.ingest_addrs,
                metrics = %sampler.metrics_addr,
                collectors = ?collectors
            );
            sampler.run().await;
            info!(message = "sampler stopped");
            Ok(())
        })
}
