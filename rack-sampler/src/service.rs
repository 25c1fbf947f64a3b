//! The sampler daemon put together: ingest sockets, the window closer, the
//! spool, the QUIC uplink and the metrics endpoint, stopped cleanly by a
//! shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use configs::{SamplerConfig, Topology, TopologyError};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::aggregate::{self, Aggregator, ClosedWindow, EmittedWindow, Settings};
use crate::checkpoint::Checkpoint;
use crate::spool::{Spool, SpoolError, SpoolKey};
use crate::uplink::{self, Backoff, INITIAL_BACKOFF, MAX_BACKOFF, Target, UplinkStats};
use crate::{ingest, now_ns, telemetry};

/// How often due windows are emitted.
const TICK: Duration = Duration::from_millis(100);

/// File in the spool directory naming the window a shutdown emitted early
/// and the next part number, so a restart within that window does not reuse
/// its batch id.
const RESUME_FILE: &str = "resume";

/// Why the sampler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The topology file is unusable.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The configured rack is not in the topology.
    #[error("rack `{rack}` is not in the topology file {}; its racks are: {known}", .topology.display())]
    UnknownRack {
        /// The configured name.
        rack: String,
        /// The topology file.
        topology: PathBuf,
        /// The racks it has.
        known: String,
    },
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] configs_runtime::tls::TlsError),
    /// The spool directory is unusable.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The receive loops' runtime or thread could not be started.
    #[error("cannot start receiving agent datagrams: {0}")]
    Ingest(std::io::Error),
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A started sampler.
pub struct Sampler {
    /// Addresses the ingest sockets are bound to (ports resolved).
    pub ingest_addrs: Vec<SocketAddr>,
    /// Address of the metrics endpoint.
    pub metrics_addr: SocketAddr,
    run: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Sampler {
    /// Binds everything and prepares the tasks; [`Sampler::run`] runs them
    /// until `shutdown` completes.
    pub async fn start(
        config: SamplerConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Sampler, StartError> {
        let topology = Arc::new(Topology::load(&config.topology)?);
        let rack = topology
            .rack_by_name(&config.rack)
            .ok_or_else(|| StartError::UnknownRack {
                rack: config.rack.clone(),
                topology: config.topology.clone(),
                known: topology
                    .racks()
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
            .id;
        let client_config = configs_runtime::tls::client_config(&config.uplink.tls)?;
        let spool = Spool::open(&config.uplink.spool_dir, config.uplink.spool_max_bytes)?;
        let mut aggregator = Aggregator::new(Settings::new(&config, rack), topology.clone(), now_ns());
        if let Some((start, part)) = take_resume(&config.uplink.spool_dir) {
            aggregator.resume_window(start, part);
        }
        restore_agents(&mut aggregator, &config.uplink.spool_dir);
        let aggregator = Arc::new(Mutex::new(aggregator));
        let spool = Arc::new(Mutex::new(spool));

        let mut sockets = Vec::new();
        let mut buffers = Vec::new();
        for &addr in &config.ingest.listen {
            let bound = ingest::bind(addr, config.ingest.socket_buffer_bytes).map_err(|source| StartError::Bind {
                what: "ingest socket",
                addr,
                source,
            })?;
            info!(message = "receiving agent datagrams", %addr, receive_buffer = bound.buffer_bytes);
            let listen = bound.socket.local_addr().unwrap_or(addr).to_string();
            buffers.push(telemetry::ReceiveBuffer {
                listen,
                bytes: bound.buffer_bytes,
                capped: bound.capped,
            });
            sockets.push(bound.socket);
        }
        let ingest_addrs = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        let metrics_listener = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "metrics endpoint",
                addr: config.metrics.listen,
                source,
            })?;
        let metrics_addr = metrics_listener.local_addr().unwrap_or(config.metrics.listen);
        let ack_timeout = Duration::from_millis(config.uplink.ack_timeout_ms);
        let target = Target {
            collectors: config.uplink.collectors.clone(),
            server_name: config.uplink.server_name.clone(),
            ack_timeout,
            // A collector that does not answer a handshake in the time it
            // would have to acknowledge a batch is given up on for the next.
            connect_timeout: ack_timeout,
        };
        // Sockets are bound per address family as the collectors' names
        // resolve, so nothing is bound here.
        let endpoints = Arc::new(uplink::Endpoints::new(client_config));
        let backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF, uplink::jitter(config.sampler_id));
        let stats = Arc::new(UplinkStats::new(config.uplink.collectors.clone()));
        let metrics = telemetry::endpoint(aggregator.clone(), spool.clone(), stats.clone(), topology, buffers);

        let spool_dir = config.uplink.spool_dir.clone();
        let per_lock = config.ingest.recv_batch;
        let (stop, stopped) = watch::channel(false);
        // On a thread of its own, at this thread's priority (see `ingest`'s
        // module documentation): receiving starts now.
        let ingest_thread = ingest::Receivers::new(sockets)
            .and_then(|receivers| receivers.spawn(aggregator.clone(), per_lock, stopped.clone()))
            .map_err(StartError::Ingest)?;
        let run = async move {
            let wake = Arc::new(Notify::new());
            let uplink_task = tokio::spawn(uplink::run(
                endpoints.clone(),
                target,
                backoff,
                spool.clone(),
                wake.clone(),
                stats,
                stopped.clone(),
            ));
            let mut metrics_stopped = stopped.clone();
            let metrics_task = tokio::spawn(metrics.clone().serve(metrics_listener, async move {
                let _ = metrics_stopped.wait_for(|s| *s).await;
            }));
            metrics.set_ready(true);

            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let (closed, checkpoint) = {
                            let mut aggregator = ingest::lock(&aggregator);
                            let closed = aggregator.take_due(now_ns());
                            // Taken with the windows, so the two agree.
                            let checkpoint = (!closed.is_empty()).then(|| aggregator.checkpoint());
                            (closed, checkpoint)
                        };
                        if let Some(checkpoint) = checkpoint {
                            // Summarizing, encoding and the synced spool
                            // write run on the blocking pool, below the
                            // receive thread's priority, so receiving
                            // never waits for them.
                            let (spool, wake, spool_dir) = (spool.clone(), wake.clone(), spool_dir.clone());
                            let done = tokio::task::spawn_blocking(move || {
                                let started = std::time::Instant::now();
                                let windows: Vec<EmittedWindow> = closed.into_iter().map(ClosedWindow::encode).collect();
                                let encoded = started.elapsed();
                                let bytes: usize = windows.iter().flat_map(|w| &w.parts).map(|(_, b)| b.len()).sum();
                                spool_windows(&spool, windows, &wake);
                                // After the windows it follows are spooled:
                                // a crash in between leaves the previous
                                // one, too old to count anything twice.
                                save_checkpoint(&checkpoint, &spool_dir);
                                debug!(
                                    message = "windows emitted",
                                    encode_ms = encoded.as_secs_f64() * 1e3,
                                    spool_ms = (started.elapsed() - encoded).as_secs_f64() * 1e3,
                                    bytes
                                );
                            });
                            if let Err(error) = done.await {
                                warn!(message = "emitting a window failed; it is lost", %error);
                            }
                        }
                    }
                    _ = &mut shutdown => break,
                }
            }
            info!(message = "shutting down: emitting open windows to the spool");
            metrics.set_ready(false);
            let _ = stop.send(true);
            if !matches!(
                tokio::task::spawn_blocking(move || ingest_thread.join()).await,
                Ok(Ok(()))
            ) {
                warn!(message = "the ingest thread failed; what it had counted is emitted");
            }
            let (closed, checkpoint) = {
                let mut aggregator = ingest::lock(&aggregator);
                let closed = aggregator.take_all(now_ns());
                (closed, aggregator.checkpoint())
            };
            let windows: Vec<EmittedWindow> = closed.into_iter().map(ClosedWindow::encode).collect();
            let resume = windows.last().map(aggregate::next_part);
            // Before the early part is spooled: a restart that finds it
            // takes the state saved before it as too old, should this
            // process die before saving the state after it (the early part
            // counted what that state leads to).
            if let Some((start, part)) = resume {
                write_resume(&spool_dir, start, part);
            }
            let spooled = spool_windows(&spool, windows, &wake);
            // After the part the spool last used, should it have renumbered.
            if let (Some((start, part)), Some(used)) = (resume, spooled)
                && used.window_start_ns == start
                && used.part >= part
            {
                write_resume(&spool_dir, start, used.part.saturating_add(1));
            }
            save_checkpoint(&checkpoint, &spool_dir);
            // The uplink finishes the batch in flight; the rest wait in the
            // spool for the next start.
            let _ = tokio::time::timeout(Duration::from_secs(5), uplink_task).await;
            endpoints.close(Duration::from_secs(2)).await;
            let _ = metrics_task.await;
        };
        Ok(Sampler {
            ingest_addrs,
            metrics_addr,
            run: Box::pin(run),
        })
    }

    /// Runs until the shutdown future given to [`Sampler::start`] completes.
    pub async fn run(self) {
        self.run.await;
    }
}

/// Spools the windows' batches; returns the key the last one was spooled
/// under (the spool renumbers a part already taken).
fn spool_windows(spool: &Mutex<Spool>, windows: Vec<EmittedWindow>, wake: &Notify) -> Option<SpoolKey> {
    if windows.is_empty() {
        return None;
    }
    let mut last = None;
    let mut spool = uplink::lock(spool);
    for window in windows {
        for (part, bytes) in window.parts {
            let key = SpoolKey {
                window_start_ns: window.start_ns,
                part,
            };
            let pushed = spool.push(key, bytes);
            if let Ok(pushed) = &pushed
                && !pushed.refused
            {
                last = Some(pushed.key);
            }
            match pushed {
                Ok(pushed) if pushed.refused => {
                    warn!(
                        message = "batch larger than the whole spool was dropped; raise uplink.spool_max_bytes",
                        window = window.start_ns
                    )
                }
                Ok(pushed) if pushed.dropped > 0 => {
                    warn!(
                        message = "spool full: dropped the oldest batches",
                        dropped = pushed.dropped
                    )
                }
                Ok(_) => {}
                Err(error) => warn!(message = "cannot spool a batch; its window is lost", %error),
            }
        }
    }
    wake.notify_one();
    last
}

/// Takes up the agents' sequence state the previous process saved in the
/// spool directory, if any (see [`crate::checkpoint`]).
fn restore_agents(aggregator: &mut Aggregator, dir: &Path) {
    match Checkpoint::load(dir) {
        Ok(Some(checkpoint)) => {
            let restored = aggregator.restore(&checkpoint);
            if restored.current {
                info!(
                    message = "took up the agents' sequence state: what they sent while the sampler was down counts as expected in this window",
                    agents = restored.agents
                );
            } else {
                warn!(
                    message = "the agents' sequence state saved with the spool is too old for this window (a window went unemitted, or the window length changed); this window imputes what they sent before the sampler started at their cadence",
                    agents = restored.agents,
                    saved_through = checkpoint.through_ns
                );
            }
        }
        Ok(None) => info!(
            message = "no saved agent sequence state; this window imputes what agents sent before the sampler started at their cadence"
        ),
        Err(error) => warn!(
            message = "cannot read the agents' sequence state; this window imputes what agents sent before the sampler started at their cadence",
            %error
        ),
    }
}

/// Saves the agents' sequence state; a failure is logged, and a restart
/// before the next success finds the previous state too old, never wrong.
fn save_checkpoint(checkpoint: &Checkpoint, dir: &Path) {
    if let Err(error) = checkpoint.save(dir) {
        warn!(message = "cannot save the agents' sequence state; a restart before the next window emitted will impute what agents sent while it was down", %error);
    }
}

fn take_resume(dir: &Path) -> Option<(u64, u16)> {
    let path = dir.join(RESUME_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let (start, part) = text.trim().split_once(' ')?;
    Some((start.parse().ok()?, part.parse().ok()?))
}

/// Records the window a shutdown emits early, durably. If it cannot, the
/// saved agent state is removed: a restart within that window must not take
/// up state the early part already counted from.
fn write_resume(dir: &Path, start: u64, part: u16) {
    let path = dir.join(RESUME_FILE);
    if let Err(error) = crate::spool::write_atomically(dir, &path, format!("{start} {part}\n").as_bytes()) {
        warn!(message = "cannot record the window emitted early; a restart within it may be stored as a duplicate, and will impute what agents sent before it started", %error);
        let state = dir.join(crate::checkpoint::FILE);
        let removed = match std::fs::remove_file(&state) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(dir).and_then(|d| d.sync_all()),
        };
        if let Err(error) = removed {
            warn!(message = "cannot remove the agents' sequence state either; a restart within the window emitted early may count its gaps twice", %error);
        }
    }
}
