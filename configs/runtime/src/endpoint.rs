//! The HTTP endpoint every daemon serves: `GET /metrics` (Prometheus text
//! exposition), `/healthz` (the process serves) and `/readyz` (the daemon
//! says it is ready). Every endpoint also exports [`BUILD_INFO`].
//!
//! Daemons keep their counters in atomics and publish them through their
//! [`Family`]s only when scraped, so counting costs an atomic add on the hot
//! path and formatting happens once per scrape.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::metric::{Family, Kind};

/// `flowmesh_build_info{component="…",version="…"} 1`, the Prometheus
/// convention for which build runs: join on it (`* on(instance)
/// group_left(version)`) to see versions beside any other series, or count
/// by `version` during a rollout. Every [`Endpoint`] exports it.
pub const BUILD_INFO: Family = Family::gauge(
    "flowmesh_build_info",
    "The flowmesh component and version this process runs; always 1.",
);

/// The workspace's version, which every flowmesh crate shares.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Installs the process-wide Prometheus recorder on first call, with the
/// buckets of the histogram `families`, and returns its handle. Later calls
/// return the first handle and ignore their arguments: a process has one
/// recorder.
fn prometheus(families: &[Family]) -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        let buckets = families.iter().filter_map(|f| match f.kind() {
            Kind::Histogram(bounds) => Some((f.name(), bounds)),
            Kind::Counter | Kind::Gauge => None,
        });
        for (name, bounds) in buckets {
            builder = match builder.set_buckets_for_metric(Matcher::Full(name.into()), bounds) {
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

/// What a scrape runs first: the daemon publishes its counters through its
/// [`Family`]s.
pub type Publish = Arc<dyn Fn() + Send + Sync>;

/// Text a scrape appends to the page after the families: a whole
/// exposition (HELP, TYPE and samples) the process renders itself, for
/// series that must vanish when what they describe does (a metrics
/// registry keeps exporting a gauge nobody sets any more).
pub type Snapshot = Arc<dyn Fn() -> String + Send + Sync>;

/// The endpoint of one daemon.
#[derive(Clone)]
pub struct Endpoint {
    publish: Publish,
    snapshot: Option<Snapshot>,
    handle: &'static PrometheusHandle,
    ready: Arc<AtomicBool>,
}

impl Endpoint {
    /// The endpoint of `component` (`agent`, `sampler`, `collector`: the
    /// `component` label of [`BUILD_INFO`]), whose `/metrics` page shows
    /// `families`, as `publish()` sets them at each scrape, and
    /// [`BUILD_INFO`]; not ready until [`Endpoint::set_ready`].
    pub fn new(component: &str, families: &[Family], publish: Publish) -> Self {
        let handle = prometheus(families);
        for family in families.iter().chain([&BUILD_INFO]) {
            family.describe();
        }
        BUILD_INFO.set(&[("component", component), ("version", VERSION)], 1.0);
        Endpoint {
            publish,
            snapshot: None,
            handle,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Appends `snapshot()` to every page; its family names must not be
    /// among the endpoint's families.
    #[must_use]
    pub fn with_snapshot(mut self, snapshot: Snapshot) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// The `/metrics` page now: publishes, then renders.
    pub fn render(&self) -> String {
        (self.publish)();
        let mut page = self.handle.render();
        if let Some(snapshot) = &self.snapshot {
            if !page.is_empty() && !page.ends_with('\n') {
                page.push('\n');
            }
            page.push_str(&snapshot());
        }
        page
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
    endpoint.render()
}

async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const REQUESTS: Family = Family::counter("flowmesh_test_requests_total", "Requests, by kind.");
    const DEPTH: Family = Family::gauge("flowmesh_test_queue_depth", "Items waiting.");
    const LATENCY: Family =
        Family::histogram("flowmesh_test_latency_seconds", "Latency.", &[0.1, 1.0]).with_unit(metrics::Unit::Seconds);

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// A scrape publishes the daemon's counters through its families, shows
    /// each family's HELP and TYPE once, and passes promtool; readiness is
    /// the daemon's to set.
    #[tokio::test]
    async fn serves_what_the_families_declare() {
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let endpoint = Endpoint::new(
            "test",
            &[REQUESTS, DEPTH, LATENCY],
            Arc::new(move || {
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                REQUESTS.absolute(&[("kind", "scrape")], n);
                DEPTH.set(&[], 3.0);
            }),
        )
        .with_snapshot(Arc::new(|| {
            "# HELP flowmesh_test_findings Findings now.\n# TYPE flowmesh_test_findings gauge\nflowmesh_test_findings{what=\"x\"} 1\n".to_string()
        }));
        LATENCY.record(&[], 0.5);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(endpoint.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        endpoint.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/healthz").await.ends_with("ok\n"));
        get(addr, "/metrics").await;
        let page = get(addr, "/metrics").await;
        assert!(
            page.contains("flowmesh_test_requests_total{kind=\"scrape\"} 2"),
            "{page}"
        );
        assert!(
            page.contains("# HELP flowmesh_test_queue_depth Items waiting."),
            "{page}"
        );
        assert!(
            page.contains("flowmesh_test_latency_seconds_bucket{le=\"1\"} 1"),
            "{page}"
        );
        let build_info = format!("flowmesh_build_info{{component=\"test\",version=\"{VERSION}\"}} 1");
        assert!(
            page.lines().any(|l| l == build_info),
            "{build_info} missing from\n{page}"
        );
        assert!(page.contains("# TYPE flowmesh_build_info gauge"), "{page}");
        assert!(page.ends_with("flowmesh_test_findings{what=\"x\"} 1\n"), "{page}");
        crate::promtool::promtool_check(&page).unwrap();
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
