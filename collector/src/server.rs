//! The QUIC server: each batch arrives on its own bidirectional stream, is
//! validated, handed to the single writer thread that owns the database, and
//! acknowledged on the same stream only after the writer's commit.
//!
//! Back-pressure: the writer's queue is bounded (`max_pending_batches`); when
//! it is full, stream handlers wait before reading on, QUIC flow control
//! slows the samplers, and memory stays bounded.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use wire_format::{AckStatus, BatchAck, BatchId, BatchView, DropReason, MAX_BATCH_BYTES};
use zerocopy::IntoBytes;

use collector_storage::{BatchWriter, Stored};

/// Counters of what the server did, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches committed.
    pub batches_stored: AtomicU64,
    /// Batches acknowledged as already stored.
    pub batches_duplicate: AtomicU64,
    /// Batches refused as invalid.
    pub batches_rejected: AtomicU64,
    /// Batches answered "retry later" because storing failed.
    pub batches_retry: AtomicU64,
    /// Rows written (all tables).
    pub rows_stored: AtomicU64,
    /// Connections refused during the handshake (unknown certificate, wrong
    /// protocol).
    pub connections_refused: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Batches deleted by retention.
    pub batches_pruned: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where the writer says what happened to one batch.
type Reply = oneshot::Sender<Result<Stored, String>>;

/// Work for the writer thread.
enum Job {
    /// Store a validated batch and say what happened.
    Store { bytes: Vec<u8>, reply: Reply },
    /// Delete batches whose window started before `cutoff_ns`.
    Prune { cutoff_ns: u64 },
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// Batches a prune step deletes in one transaction.
const PRUNE_CHUNK: usize = 100;

impl Writer {
    /// Starts the writer thread that owns `store` (any backend), and one
    /// more per writer the backend offers for concurrent commits
    /// ([`BatchWriter::concurrent`]). Each commits up to `per_transaction`
    /// queued batches at a time; all exit, after finishing their current
    /// transaction, once every [`Writer`] handle is dropped. The handle
    /// returned joins them all.
    pub fn spawn(
        store: Box<dyn BatchWriter>,
        capacity: usize,
        per_transaction: usize,
        stats: Arc<Stats>,
    ) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
        let (jobs, queue) = mpsc::channel::<Job>(capacity.max(1));
        let mut stores = vec![store];
        match stores[0].concurrent() {
            Ok(more) => stores.extend(more),
            Err(error) => warn!(message = "No concurrent writers; writing from one thread.", %error),
        }
        // Each writer takes a group of queued batches under the lock, then
        // commits it without the lock, so commits overlap.
        let queue = std::sync::Mutex::new(queue);
        let thread = std::thread::Builder::new()
            .name("collector-writer".into())
            .spawn(move || {
                std::thread::scope(|scope| {
                    for (i, mut store) in stores.into_iter().enumerate() {
                        let (queue, stats) = (&queue, &stats);
                        let spawned = std::thread::Builder::new()
                            .name(format!("collector-writer-{i}"))
                            .spawn_scoped(scope, move || write_loop(store.as_mut(), queue, per_transaction, stats));
                        if let Err(error) = spawned {
                            warn!(message = "Could not start a writer thread.", %error);
                        }
                    }
                });
                debug!(message = "Writers stopped: every sender is gone.");
            })?;
        Ok((Writer { jobs }, thread))
    }

    /// Asks the writer to delete batches older than `cutoff_ns`, a chunk at a
    /// time, yielding to queued batches between chunks.
    pub async fn prune(&self, cutoff_ns: u64) {
        let _ = self.jobs.send(Job::Prune { cutoff_ns }).await;
    }
}

/// One writer: takes a job and whatever else is queued, up to
/// `per_transaction` batches, and commits them as one unit; until the queue
/// closes.
fn write_loop(
    store: &mut dyn BatchWriter,
    queue: &std::sync::Mutex<mpsc::Receiver<Job>>,
    per_transaction: usize,
    stats: &Stats,
) {
    let mut batch = Vec::with_capacity(per_transaction);
    loop {
        let mut prunes = Vec::new();
        {
            let Ok(mut queue) = queue.lock() else { return };
            let Some(job) = queue.blocking_recv() else { return };
            let mut next = Some(job);
            // Take whatever else is already queued, up to the cap, into the
            // same transaction: one fsync for all of them.
            while let Some(job) = next.take() {
                match job {
                    Job::Store { bytes, reply } => batch.push((bytes, reply)),
                    Job::Prune { cutoff_ns } => prunes.push(cutoff_ns),
                }
                if batch.len() < per_transaction {
                    next = queue.try_recv().ok();
                }
            }
        }
        if !batch.is_empty() {
            commit(store, &mut batch, stats);
        }
        for cutoff_ns in prunes {
            let waiting = || queue.lock().map_or(true, |q| !q.is_empty());
            prune(store, cutoff_ns, &waiting, stats);
        }
    }
}

fn commit(store: &mut dyn BatchWriter, batch: &mut Vec<(Vec<u8>, Reply)>, stats: &Stats) {
    let started = std::time::Instant::now();
    // Every batch was validated before it was queued, so parsing cannot fail
    // here; a failure would be answered like a storage error.
    let views: Result<Vec<BatchView<'_>>, _> = batch.iter().map(|(bytes, _)| BatchView::parse(bytes)).collect();
    let result = match views {
        Ok(views) => {
            let rows: Vec<u64> = views
                .iter()
                .map(|v| (1 + v.paths.len() + v.completeness.len() + v.flows.len() + v.probes.len()) as u64)
                .collect();
            store
                .store_batches(&views, now_ns())
                .map(|outcomes| (outcomes, rows))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok((outcomes, rows)) => {
            let elapsed = started.elapsed();
            Stats::add(&stats.transactions, 1);
            crate::telemetry::WRITE_SECONDS.record(&[], elapsed.as_secs_f64());
            let new = outcomes.iter().filter(|o| **o == Stored::New).count() as u64;
            Stats::add(&stats.batches_stored, new);
            Stats::add(&stats.batches_duplicate, outcomes.len() as u64 - new);
            let new_rows = outcomes
                .iter()
                .zip(&rows)
                .filter(|(o, _)| **o == Stored::New)
                .map(|(_, r)| r)
                .sum();
            Stats::add(&stats.rows_stored, new_rows);
            for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            warn!(message = "Storing batches failed; senders will retry.", %error, batches = batch.len());
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Retention, a chunk at a time; stops early while batches are `waiting`.
fn prune(store: &mut dyn BatchWriter, cutoff_ns: u64, waiting: &dyn Fn() -> bool, stats: &Stats) {
    loop {
        match store.prune(cutoff_ns, PRUNE_CHUNK) {
            Ok(deleted) => {
                Stats::add(&stats.batches_pruned, deleted as u64);
                // Stop when done, or when batches are waiting: ingest first.
                if deleted < PRUNE_CHUNK || waiting() {
                    return;
                }
            }
            Err(error) => {
                warn!(message = "Retention pruning failed.", %error);
                return;
            }
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// QUIC transport settings for the collector's endpoint.
pub fn transport_config(max_streams_per_connection: u32) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(max_streams_per_connection.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport
}

/// Accepts connections on `endpoint` until `shutdown` completes, then closes
/// the endpoint and waits (bounded) for connections to finish.
pub async fn serve(endpoint: quinn::Endpoint, writer: Writer, stats: Arc<Stats>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tokio::spawn(connection(incoming, writer.clone(), stats.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    info!(message = "Shutting down: no new connections.");
    endpoint.close(0u32.into(), b"collector shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

async fn connection(incoming: quinn::Incoming, writer: Writer, stats: Arc<Stats>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            Stats::add(&stats.connections_refused, 1);
            warn!(message = "Refused a connection.", %remote, %error);
            return;
        }
    };
    debug!(message = "Sampler connected.", %remote);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(stream(send, recv, writer.clone(), stats.clone()));
            }
            Err(error) => {
                debug!(message = "Sampler connection ended.", %remote, %error);
                return;
            }
        }
    }
}

async fn stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, writer: Writer, stats: Arc<Stats>) {
    let ack = match recv.read_to_end(MAX_BATCH_BYTES).await {
        Ok(bytes) => answer(bytes, &writer, &stats).await,
        Err(quinn::ReadToEndError::TooLong) => {
            Stats::add(&stats.batches_rejected, 1);
            BatchAck::new(BatchId([0; 16]), AckStatus::Rejected, DropReason::TooLarge.code())
        }
        Err(error) => {
            debug!(message = "Batch stream failed before its end.", %error);
            return;
        }
    };
    if let Err(error) = send.write_all(ack.as_bytes()).await {
        debug!(message = "Could not send an acknowledgement.", %error);
        return;
    }
    let _ = send.finish();
    // Keep the stream until the peer has read the acknowledgement.
    let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
}

async fn answer(bytes: Vec<u8>, writer: &Writer, stats: &Stats) -> BatchAck {
    let batch_id = match BatchView::parse(&bytes) {
        Ok(view) => view.header.batch_id,
        Err(error) => {
            Stats::add(&stats.batches_rejected, 1);
            warn!(message = "Rejected an invalid batch.", %error, reason = %error.reason());
            // Echo the id when the header got that far, so the sender can match it.
            let id = bytes
                .get(8..24)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map_or(BatchId([0; 16]), BatchId);
            return BatchAck::new(id, AckStatus::Rejected, error.reason().code());
        }
    };
    let (reply, outcome) = oneshot::channel();
    if writer.jobs.send(Job::Store { bytes, reply }).await.is_err() {
        Stats::add(&stats.batches_retry, 1);
        return BatchAck::new(batch_id, AckStatus::RetryLater, 0);
    }
    match outcome.await {
        Ok(Ok(Stored::New)) => BatchAck::new(batch_id, AckStatus::Stored, 0),
        Ok(Ok(Stored::Duplicate)) => BatchAck::new(batch_id, AckStatus::Duplicate, 0),
        Ok(Err(_)) | Err(_) => {
            Stats::add(&stats.batches_retry, 1);
            BatchAck::new(batch_id, AckStatus::RetryLater, 0)
        }
    }
}
