//! The collector's Prometheus and health endpoint: `GET /metrics` (text
//! exposition), `/healthz` (the process serves) and `/readyz` (the database
//! is open and the QUIC endpoint listens).
//!
//! The server keeps its counters in [`Stats`]; a scrape publishes them
//! through the `metrics` facade and renders the Prometheus recorder, so
//! counting costs an atomic add on the hot path and formatting happens only
//! when scraped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::server::Stats;

/// Name of the write-latency histogram.
pub const WRITE_SECONDS: &str = "flowmesh_collector_write_seconds";

/// The process-wide Prometheus recorder, installed on first use.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(WRITE_SECONDS.into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Only fails if another recorder is installed; then this handle
        // renders nothing but the process still serves.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    describe_counter!("flowmesh_collector_batches_total", "Batches answered, by outcome.");
    describe_counter!(
        "flowmesh_collector_rows_stored_total",
        "Rows written to the database, all tables."
    );
    describe_counter!(
        "flowmesh_collector_connections_refused_total",
        "Connections refused during the handshake (unknown certificate, wrong protocol)."
    );
    describe_counter!(
        "flowmesh_collector_transactions_total",
        "Database transactions committed."
    );
    describe_counter!(
        "flowmesh_collector_batches_pruned_total",
        "Batches deleted by retention."
    );
    describe_histogram!(
        WRITE_SECONDS,
        Unit::Seconds,
        "Time to store and commit one transaction of batches."
    );
    describe_gauge!(
        "flowmesh_collector_database_bytes",
        Unit::Bytes,
        "Size of the database file and its write-ahead log."
    );
}

/// What a scrape reports.
#[derive(Clone)]
pub struct Telemetry {
    stats: Arc<Stats>,
    database: PathBuf,
    ready: Arc<AtomicBool>,
}

impl Telemetry {
    /// Telemetry for a collector with these counters and database file.
    pub fn new(stats: Arc<Stats>, database: &Path) -> Self {
        recorder();
        Telemetry {
            stats,
            database: database.to_path_buf(),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the collector ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, current as of this call.
    pub fn render(&self) -> String {
        let s = &self.stats;
        for (outcome, counter) in [
            ("stored", &s.batches_stored),
            ("duplicate", &s.batches_duplicate),
            ("rejected", &s.batches_rejected),
            ("retry_later", &s.batches_retry),
        ] {
            counter!("flowmesh_collector_batches_total", "outcome" => outcome).absolute(Stats::get(counter));
        }
        counter!("flowmesh_collector_rows_stored_total").absolute(Stats::get(&s.rows_stored));
        counter!("flowmesh_collector_connections_refused_total").absolute(Stats::get(&s.connections_refused));
        counter!("flowmesh_collector_transactions_total").absolute(Stats::get(&s.transactions));
        counter!("flowmesh_collector_batches_pruned_total").absolute(Stats::get(&s.batches_pruned));
        let size = |suffix: &str| {
            let mut name = self.database.clone().into_os_string();
            name.push(suffix);
            std::fs::metadata(name).map_or(0, |m| m.len())
        };
        gauge!("flowmesh_collector_database_bytes").set((size("") + size("-wal")) as f64);
        recorder().render()
    }

    /// Serves the endpoint on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self);
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }
}

async fn metrics_page(State(telemetry): State<Telemetry>) -> String {
    telemetry.render()
}

async fn readyz(State(telemetry): State<Telemetry>) -> (StatusCode, &'static str) {
    if telemetry.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
