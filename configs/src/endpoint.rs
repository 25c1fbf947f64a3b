//! The HTTP endpoint every daemon serves: `GET /metrics` (Prometheus text
//! exposition), `/healthz` (the process serves) and `/readyz` (the daemon
//! says it is ready).
//!
//! Daemons keep their counters in atomics and publish them through the
//! `metrics` facade only when scraped, so counting costs an atomic add on the
//! hot path and formatting happens once per scrape.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder on first call, with the
/// given histogram buckets (metric name, bucket upper bounds), and returns
/// its handle. Later calls return the first handle and ignore their
/// arguments: a process has one recorder.
pub fn prometheus(buckets: &[(&str, &[f64])]) -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for (name, bounds) in buckets {
            builder = match builder.set_buckets_for_metric(Matcher::Full((*name).into()), bounds) {
                Ok(builder) => builder,
                // Only empty bounds are refused; such a histogram renders as a summary.
                Err(_) => PrometheusBuilder::new(),
            };
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; this handle then
        // renders nothing, and the process still serves.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// What `/metrics` renders: the daemon publishes its counters, then renders
/// the recorder.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The endpoint of one daemon.
#[derive(Clone)]
pub struct Endpoint {
    render: Render,
    ready: Arc<AtomicBool>,
}

impl Endpoint {
    /// An endpoint whose `/metrics` page is `render()`; not ready until
    /// [`Endpoint::set_ready`].
    pub fn new(render: Render) -> Self {
        Endpoint {
            render,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the daemon ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Serves on `listener` until `shutdown` completes.
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

async fn metrics_page(State(endpoint): State<Endpoint>) -> String {
    (endpoint.render)()
}

async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Logs to stderr at the level `RUST_LOG` names (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for people: journald, log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The exit status of a daemon's `main`: success, or the whole cause chain
/// of the error on one line of stderr, prefixed with `program` — never a
/// backtrace.
pub fn exit_code<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A future that completes on SIGTERM or SIGINT, logging which arrived; the
/// handlers are installed before this returns, so a stop that comes early
/// in start-up is still clean.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("{name}: shutting down cleanly");
    })
}

/// Runs `promtool check metrics` (from Prometheus; Debian's `prometheus`
/// package) on an exposition, or on an HTTP response carrying one: the
/// syntax, HELP and TYPE of every family, and Prometheus' naming rules.
/// The daemons' tests hold every endpoint to it; operators can run it on a
/// scrape too. Errors carry promtool's report.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let body = exposition.split_once("\r\n\r\n").map_or(exposition, |(_, body)| body);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool (install Debian's prometheus package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}\n{body}", report.trim()))
    }
}
