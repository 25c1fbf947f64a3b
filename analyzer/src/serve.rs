//! `watch`'s endpoint: `/metrics` (the analyzer's own counters, its build
//! and the newest pass's findings from [`analyzer::results`]), `/healthz`
//! and `/readyz` (ready once a pass has succeeded, while the latest did).
//! Served from a thread of its own so that a slow pass never delays a
//! scrape: a scrape returns the page of the last pass that succeeded.

use std::net::SocketAddr;
use std::time::Duration;

/// The running endpoint.
#[cfg(feature = "serve")]
pub(crate) struct Server {
    page: std::sync::Arc<std::sync::Mutex<String>>,
    stats: std::sync::Arc<Stats>,
    endpoint: configs_runtime::endpoint::Endpoint,
}

#[cfg(feature = "serve")]
mod families {
    use configs_runtime::metric::Family;

    /// Passes by result.
    pub(super) const PASSES: Family = Family::counter(
        "flowmesh_analyzer_passes_total",
        "Analysis passes, by result (ok, error).",
    );
    /// The last pass's duration.
    pub(super) const PASS_SECONDS: Family = Family::gauge(
        "flowmesh_analyzer_pass_duration_seconds",
        "How long the latest pass took to read and analyze.",
    );
    /// When the last successful pass finished.
    pub(super) const LAST_PASS: Family = Family::gauge(
        "flowmesh_analyzer_last_pass_timestamp_seconds",
        "When the latest successful pass finished, Unix time; 0 before the first.",
    );
    /// Every family the analyzer records itself.
    pub(super) const FAMILIES: &[Family] = &[PASSES, PASS_SECONDS, LAST_PASS];
}

/// Pass counters, read at each scrape.
#[cfg(feature = "serve")]
#[derive(Default)]
struct Stats {
    ok: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
    /// f64 bits.
    duration: std::sync::atomic::AtomicU64,
    /// f64 bits.
    last_ok: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "serve")]
impl Server {
    /// Binds `addr` (an error names it) and serves from a thread of its own.
    pub(crate) fn start(addr: SocketAddr) -> anyhow::Result<Server> {
        use std::sync::atomic::Ordering::Relaxed;
        use std::sync::{Arc, Mutex};

        use anyhow::Context as _;
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        // The bound address (port 0 picks one): for people and for tests.
        eprintln!(
            "flowmesh-analyzer: serving /metrics, /healthz, /readyz on {}",
            listener.local_addr()?
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let page = Arc::new(Mutex::new(String::new()));
        let stats = Arc::new(Stats::default());
        let counters = stats.clone();
        let shown = page.clone();
        let endpoint = configs_runtime::endpoint::Endpoint::new(
            "analyzer",
            families::FAMILIES,
            Arc::new(move || {
                families::PASSES.absolute(&[("result", "ok")], counters.ok.load(Relaxed));
                families::PASSES.absolute(&[("result", "error")], counters.errors.load(Relaxed));
                families::PASS_SECONDS.set(&[], f64::from_bits(counters.duration.load(Relaxed)));
                families::LAST_PASS.set(&[], f64::from_bits(counters.last_ok.load(Relaxed)));
            }),
        )
        .with_snapshot(Arc::new(move || shown.lock().map(|p| p.clone()).unwrap_or_default()));
        let serving = endpoint.clone();
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serving.serve(listener, std::future::pending()).await
            });
            if let Err(e) = served {
                eprintln!("flowmesh-analyzer: the metrics endpoint stopped: {e}");
            }
        })?;
        Ok(Server { page, stats, endpoint })
    }

    /// A pass succeeded: its page replaces the previous one.
    pub(crate) fn passed(&self, page: String, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Ok(mut shown) = self.page.lock() {
            *shown = page;
        }
        self.stats.ok.fetch_add(1, Relaxed);
        self.stats.duration.store(took.as_secs_f64().to_bits(), Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.stats.last_ok.store(now.to_bits(), Relaxed);
        self.endpoint.set_ready(true);
    }

    /// A pass failed: the page of the last good pass stays (its freshness
    /// series says how old it is), readiness goes until one succeeds.
    pub(crate) fn failed(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats.duration.store(took.as_secs_f64().to_bits(), Relaxed);
        self.endpoint.set_ready(false);
    }
}

/// Without the `serve` feature, asking to serve is an error.
#[cfg(not(feature = "serve"))]
pub(crate) struct Server;

#[cfg(not(feature = "serve"))]
impl Server {
    /// Refuses: this build cannot serve.
    pub(crate) fn start(addr: SocketAddr) -> anyhow::Result<Server> {
        anyhow::bail!("cannot serve metrics on {addr}: this flowmesh-analyzer was built without the `serve` feature")
    }

    /// Never called: no server starts.
    pub(crate) fn passed(&self, _page: String, _took: Duration) {}

    /// Never called: no server starts.
    pub(crate) fn failed(&self, _took: Duration) {}
}
