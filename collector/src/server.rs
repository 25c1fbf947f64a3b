//! The QUIC server: each batch arrives on its own bidirectional stream, is
//! validated, handed to the single writer thread that owns the database, and
//! acknowledged on the same stream only after the writer's commit.
//!
//! Back-pressure: the writer's queue is bounded (`max_pending_batches`); when
//! it is full, stream handlers wait before reading on, QUIC flow control
//! slows the samplers, and memory stays bounded.
//!
//! Authorization: the CA decides who may connect; [`Authorization`] decides
//! what each connected sampler may write. A sampler's identity is the name
//! its client certificate carries, and a [`Grant`] for that name says which
//! rack's batches it may write and as which sampler ids. A batch for another
//! rack, from a sampler id not granted, or whose batch id is not the one
//! [`BatchId::for_window`] gives for its sampler id and window, is refused
//! before storage ([`Unauthorized`]): acknowledged `rejected` with
//! [`ACK_UNAUTHORIZED`], counted, logged once per connection. Since batch
//! ids begin with the sampler id and each sampler id belongs to one
//! certificate, no sampler can store a batch under another's id and so turn
//! the real one into a "duplicate".

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use configs::{CollectorConfig, Topology};
use configs_runtime::tls::{PeerCertificate, is_certificate_name};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use wire_format::batch::ACK_UNAUTHORIZED;
use wire_format::{AckStatus, BatchAck, BatchHeader, BatchId, BatchView, DropReason, MAX_BATCH_BYTES};
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
    /// Batches refused because the sampler's certificate may not write
    /// them, by [`Unauthorized`] reason (indexed like [`Unauthorized::ALL`]).
    pub batches_unauthorized: [AtomicU64; Unauthorized::ALL.len()],
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

    /// Batches refused as unauthorized for `reason`.
    pub fn unauthorized(&self, reason: Unauthorized) -> u64 {
        Stats::get(&self.batches_unauthorized[reason as usize])
    }

    /// Batches refused as unauthorized, all reasons.
    pub fn unauthorized_total(&self) -> u64 {
        self.batches_unauthorized.iter().map(Stats::get).sum()
    }
}

/// Why a batch was refused as unauthorized: the `reason` label of
/// `flowmesh_collector_batches_unauthorized_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// The sampler's certificate carries none of the names granted anything,
    /// or several of them.
    Certificate = 0,
    /// The batch is another rack's (its `rack_id`).
    Rack = 1,
    /// Its `sampler_id` is not one the certificate may write as.
    Sampler = 2,
    /// Its `batch_id` is not the one [`BatchId::for_window`] gives for its
    /// `sampler_id` and `window_start_ns`: another sampler's id.
    BatchId = 3,
}

impl Unauthorized {
    /// Every reason, in label order.
    pub const ALL: [Unauthorized; 4] = [
        Unauthorized::Certificate,
        Unauthorized::Rack,
        Unauthorized::Sampler,
        Unauthorized::BatchId,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unauthorized::Certificate => "certificate",
            Unauthorized::Rack => "rack",
            Unauthorized::Sampler => "sampler",
            Unauthorized::BatchId => "batch_id",
        }
    }
}

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sampler certificate named `certificate` may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The name the certificate carries (a DNS subject alternative name; see
    /// [`PeerCertificate`]).
    pub certificate: String,
    /// The topology id of the rack whose batches it may write.
    pub rack_id: u32,
    /// The sampler ids it may write as; empty: none.
    pub sampler_ids: Vec<u32>,
}

/// Why no [`Authorization`] could be made of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    /// Nothing says who may write.
    #[error(
        "no sampler may write: set `topology` (a sampler whose certificate is named after a rack writes that \
         rack's batches as the sampler id equal to the rack's id), add `[[authorize]]` entries (certificate, \
         rack, sampler_ids), or, for development only, set `authorize_any_signed_sampler = true`"
    )]
    Unconfigured,
    /// `[[authorize]]` entries without a topology to find their racks in.
    #[error("`authorize` names racks: set `topology` to the topology file that has them")]
    NeedsTopology,
    /// An `[[authorize]]` entry names a rack the topology does not have.
    #[error("authorize[{index}].rack = {rack:?}: not a rack in the topology file; expected the name of one")]
    UnknownRack {
        /// The entry's index.
        index: usize,
        /// The rack it names.
        rack: String,
    },
    /// A name no certificate can be valid for.
    #[error("{0:?} cannot be a certificate's name; expected a DNS name such as \"sampler-a.dc1\"")]
    BadName(String),
    /// Two grants for one certificate name.
    #[error("certificate {0:?} is granted twice; expected one entry per certificate")]
    DuplicateCertificate(String),
    /// One sampler id granted to two certificates.
    #[error(
        "sampler id {sampler_id} is granted to both {first:?} and {second:?}; a sampler id belongs to one certificate"
    )]
    DuplicateSampler {
        /// The sampler id.
        sampler_id: u32,
        /// One certificate.
        first: String,
        /// The other.
        second: String,
    },
}

/// Who may write what. Built once at start-up; each connection looks its
/// certificate up once ([`Authorization::any_signed_sampler`] aside).
#[derive(Debug, Clone)]
pub struct Authorization {
    /// `None`: every certificate the CA signed may write anything.
    grants: Option<Vec<Grant>>,
}

impl Authorization {
    /// Every client certificate the CA signed may write any rack's batches
    /// as any sampler id (batch ids must still match their sampler id and
    /// window). For development, and for tests and benchmarks in one process.
    pub fn any_signed_sampler() -> Authorization {
        Authorization { grants: None }
    }

    /// Exactly `grants`: each certificate name once (ignoring ASCII case)
    /// and a DNS name, each sampler id granted to one certificate.
    pub fn grants(grants: Vec<Grant>) -> Result<Authorization, AuthorizationError> {
        let mut names = std::collections::HashMap::new();
        let mut owners = std::collections::HashMap::new();
        for grant in &grants {
            if !is_certificate_name(&grant.certificate) {
                return Err(AuthorizationError::BadName(grant.certificate.clone()));
            }
            if names.insert(grant.certificate.to_ascii_lowercase(), ()).is_some() {
                return Err(AuthorizationError::DuplicateCertificate(grant.certificate.clone()));
            }
            for &sampler_id in &grant.sampler_ids {
                if let Some(first) = owners.insert(sampler_id, &grant.certificate)
                    && first != &grant.certificate
                {
                    return Err(AuthorizationError::DuplicateSampler {
                        sampler_id,
                        first: first.clone(),
                        second: grant.certificate.clone(),
                    });
                }
            }
        }
        Ok(Authorization { grants: Some(grants) })
    }

    /// The collector's rules: with `authorize_any_signed_sampler`, anyone
    /// signed; otherwise a grant per `[[authorize]]` entry, and for every
    /// rack of `topology` whose name no entry lists, a grant to the
    /// certificate named after it for its rack, as the sampler id equal to
    /// the rack's id unless an entry grants that id. Fails when that grants
    /// nothing.
    pub fn from_config(
        config: &CollectorConfig,
        topology: Option<&Topology>,
    ) -> Result<Authorization, AuthorizationError> {
        if config.authorize_any_signed_sampler {
            return Ok(Authorization::any_signed_sampler());
        }
        let mut explicit = Vec::with_capacity(config.authorize.len());
        for (index, entry) in config.authorize.iter().enumerate() {
            let topology = topology.ok_or(AuthorizationError::NeedsTopology)?;
            let rack = topology
                .rack_by_name(&entry.rack)
                .ok_or_else(|| AuthorizationError::UnknownRack {
                    index,
                    rack: entry.rack.clone(),
                })?;
            explicit.push(Grant {
                certificate: entry.certificate.trim().to_owned(),
                rack_id: rack.id,
                sampler_ids: entry.sampler_ids.clone(),
            });
        }
        let listed: HashSet<String> = explicit.iter().map(|g| g.certificate.to_ascii_lowercase()).collect();
        let granted: HashSet<u32> = explicit.iter().flat_map(|g| g.sampler_ids.iter().copied()).collect();
        let mut grants: Vec<Grant> = topology
            .map(Topology::racks)
            .unwrap_or_default()
            .iter()
            // A rack name that cannot be a certificate's is nobody's.
            .filter(|rack| is_certificate_name(&rack.name) && !listed.contains(&rack.name.to_ascii_lowercase()))
            .map(|rack| Grant {
                certificate: rack.name.clone(),
                rack_id: rack.id,
                sampler_ids: if granted.contains(&rack.id) {
                    Vec::new()
                } else {
                    vec![rack.id]
                },
            })
            .collect();
        grants.extend(explicit);
        if grants.is_empty() {
            return Err(AuthorizationError::Unconfigured);
        }
        Authorization::grants(grants)
    }

    /// Whether any signed certificate may write anything.
    pub fn is_any_signed_sampler(&self) -> bool {
        self.grants.is_none()
    }

    /// The grants (none for [`Authorization::any_signed_sampler`]).
    pub fn grant_list(&self) -> &[Grant] {
        self.grants.as_deref().unwrap_or_default()
    }

    /// Who the peer presenting `certificate` is.
    fn identify(&self, certificate: Option<&PeerCertificate>) -> Identity {
        let Some(grants) = &self.grants else {
            return Identity::Anyone;
        };
        let names = certificate.map_or_else(Vec::new, |c| {
            c.names_among(grants.iter().map(|g| g.certificate.as_str()))
        });
        match names.as_slice() {
            [] => Identity::Unknown,
            [name] => grants
                .iter()
                .find(|g| g.certificate == *name)
                .map_or(Identity::Unknown, |g| Identity::Granted(g.clone())),
            several => Identity::Ambiguous(several.iter().map(|n| n.to_string()).collect()),
        }
    }
}

/// A connected sampler, as far as authorization goes.
#[derive(Debug)]
enum Identity {
    /// Anyone signed may write anything.
    Anyone,
    /// Its certificate's one granted name.
    Granted(Grant),
    /// Its certificate carries no granted name.
    Unknown,
    /// Its certificate carries several granted names: which one it is
    /// cannot be told, so it writes nothing.
    Ambiguous(Vec<String>),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anyone => f.write_str("any signed certificate"),
            Identity::Granted(grant) => f.write_str(&grant.certificate),
            Identity::Unknown => f.write_str("no granted name"),
            Identity::Ambiguous(names) => write!(f, "several granted names: {}", names.join(", ")),
        }
    }
}

impl Identity {
    /// Whether this identity may write the batch with `header`.
    fn authorize(&self, header: &BatchHeader) -> Result<(), Unauthorized> {
        match self {
            Identity::Anyone => {}
            Identity::Unknown | Identity::Ambiguous(_) => return Err(Unauthorized::Certificate),
            Identity::Granted(grant) => {
                if header.rack_id.get() != grant.rack_id {
                    return Err(Unauthorized::Rack);
                }
                if !grant.sampler_ids.contains(&header.sampler_id.get()) {
                    return Err(Unauthorized::Sampler);
                }
            }
        }
        // The id's namespace is its sampler's: bytes 0–11 are the sampler id
        // and the window, 14–15 zero; only the part (12–13) is free.
        let id = header.batch_id.0;
        let part = u16::from_be_bytes([id[12], id[13]]);
        if header.batch_id != BatchId::for_window(header.sampler_id.get(), header.window_start_ns.get(), part) {
            return Err(Unauthorized::BatchId);
        }
        Ok(())
    }

    /// The rack and sampler ids it may write, for logs.
    fn allowed(&self) -> String {
        match self {
            Identity::Anyone => "any rack, any sampler id".into(),
            Identity::Granted(grant) => format!("rack {} as sampler ids {:?}", grant.rack_id, grant.sampler_ids),
            Identity::Unknown | Identity::Ambiguous(_) => "nothing".into(),
        }
    }
}

/// One sampler connection: who it is, and whether a refusal has been logged.
#[derive(Debug)]
struct Peer {
    remote: SocketAddr,
    identity: Identity,
    /// A refusal on this connection was logged at warn level; later ones go
    /// to debug, so a misconfigured sampler logs one line per connection.
    warned: AtomicBool,
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

/// [`serve_authorized`] with [`Authorization::any_signed_sampler`]: every
/// certificate the CA signed may write anything. For tests and benchmarks
/// in one process; the daemon authorizes samplers by their certificates.
pub async fn serve(endpoint: quinn::Endpoint, writer: Writer, stats: Arc<Stats>, shutdown: impl Future<Output = ()>) {
    serve_authorized(endpoint, writer, stats, Authorization::any_signed_sampler(), shutdown).await;
}

/// Accepts connections on `endpoint` until `shutdown` completes, then closes
/// the endpoint and waits (bounded) for connections to finish. Each
/// connection's batches are stored only as far as `authorization` lets its
/// certificate write them.
pub async fn serve_authorized(
    endpoint: quinn::Endpoint,
    writer: Writer,
    stats: Arc<Stats>,
    authorization: Authorization,
    shutdown: impl Future<Output = ()>,
) {
    let authorization = Arc::new(authorization);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tokio::spawn(connection(incoming, writer.clone(), stats.clone(), authorization.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    info!(message = "Shutting down: no new connections.");
    endpoint.close(0u32.into(), b"collector shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

async fn connection(incoming: quinn::Incoming, writer: Writer, stats: Arc<Stats>, authorization: Arc<Authorization>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            Stats::add(&stats.connections_refused, 1);
            warn!(message = "Refused a connection.", %remote, %error);
            return;
        }
    };
    let identity = authorization.identify(PeerCertificate::of(&conn).as_ref());
    debug!(message = "Sampler connected.", %remote, %identity, may_write = %identity.allowed());
    let peer = Arc::new(Peer {
        remote,
        identity,
        warned: AtomicBool::new(false),
    });
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(stream(send, recv, writer.clone(), stats.clone(), peer.clone()));
            }
            Err(error) => {
                debug!(message = "Sampler connection ended.", %remote, %error);
                return;
            }
        }
    }
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    writer: Writer,
    stats: Arc<Stats>,
    peer: Arc<Peer>,
) {
    let ack = match recv.read_to_end(MAX_BATCH_BYTES).await {
        Ok(bytes) => answer(bytes, &writer, &stats, &peer).await,
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

async fn answer(bytes: Vec<u8>, writer: &Writer, stats: &Stats, peer: &Peer) -> BatchAck {
    let batch_id = match BatchView::parse(&bytes) {
        Ok(view) => {
            if let Err(reason) = peer.identity.authorize(view.header) {
                refuse(peer, view.header, reason, stats);
                return BatchAck::new(view.header.batch_id, AckStatus::Rejected, ACK_UNAUTHORIZED);
            }
            view.header.batch_id
        }
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

/// Counts and logs a batch refused as unauthorized: at warn level the first
/// time on a connection, at debug level after that.
fn refuse(peer: &Peer, header: &BatchHeader, reason: Unauthorized, stats: &Stats) {
    Stats::add(&stats.batches_unauthorized[reason as usize], 1);
    let (remote, identity, may_write) = (peer.remote, &peer.identity, peer.identity.allowed());
    let (rack, sampler, batch) = (header.rack_id.get(), header.sampler_id.get(), header.batch_id);
    if peer.warned.swap(true, Ordering::Relaxed) {
        debug!(message = "Refused a batch the sampler's certificate may not write.", %remote, %identity, %reason, rack, sampler, %batch, %may_write);
    } else {
        warn!(
            message = "Refused a batch the sampler's certificate may not write; further ones on this connection are logged at debug level.",
            %remote, %identity, %reason, rack, sampler, %batch, %may_write
        );
    }
}
