//! The QUIC uplink: sends spooled batches to a collector, oldest first, one
//! per stream, and deletes each from the spool only when the collector
//! acknowledges it (`stored` after its commit, or `duplicate`).
//!
//! **Several collectors.** The sampler is given a list of collectors
//! (`uplink.collectors`) that share nothing it relies on: any of them stores
//! any batch, and each acknowledges a batch id it already holds as a
//! duplicate. The uplink talks to one at a time. When connecting to it fails
//! or its connection breaks, the uplink moves straight on to the next in the
//! list (round robin), so a dead collector costs one connection timeout
//! (name resolution and handshake together), not a backoff. A batch whose
//! collector failed before acknowledging it is still in the spool and goes
//! to the next collector; the spool is told the send went unanswered, as
//! the collector may have stored it (see [`crate::spool`]).
//!
//! **Names.** A collector given by name is resolved at every connection
//! attempt, never cached across a failure, so a collector that moved behind
//! its name is found on the next try. When the name has several addresses,
//! all are tried at once and the first handshake to complete wins.
//!
//! **Backoff.** Only when every collector has failed in a row does the uplink
//! pause, for a capped, exponentially growing and jittered time
//! ([`Backoff`]) that starts over once a connection has delivered a batch or
//! stayed up for [`STABLE_AFTER`]. Batches wait in the spool meanwhile.
//!
//! A batch the collector rejects as invalid is set aside (see
//! [`crate::spool`]) rather than retried forever; `retry-later` (collector
//! busy) is retried after a short pause, but [`RETRY_LATER_LIMIT`] of them
//! in a row count as a failure of that collector: the uplink moves on to the
//! next and backs off like after any failure, rather than keep resending a
//! batch to a collector that cannot store it while others could.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use wire_format::{AckStatus, BatchAck, BatchView, DropReason};

use crate::spool::{Spool, SpoolKey, Unacknowledged};

/// First pause after every collector has failed.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A connection that stays up this long counts as a success, and the
/// backoff starts over when it ends, even if it had nothing to deliver.
pub const STABLE_AFTER: Duration = Duration::from_secs(5);

/// Retry-later answers in a row after which a collector counts as failed.
pub const RETRY_LATER_LIMIT: u32 = 3;

/// Pause before resending a batch a collector answered retry-later.
const RETRY_LATER_PAUSE: Duration = Duration::from_millis(500);

/// Capped exponential backoff with jitter: each pause is a random share,
/// from half to all, of a delay that doubles with every pause up to a cap;
/// [`Backoff::reset`] starts it over. Jitter keeps samplers that lost the
/// same collector from reconnecting in lockstep.
pub struct Backoff {
    initial: Duration,
    max: Duration,
    delay: Duration,
    /// Values in [0, 1]; passed in so tests can fix them.
    random: Box<dyn FnMut() -> f64 + Send>,
}

impl Backoff {
    /// A backoff from `initial` up to `max`, jittered by `random`, whose
    /// values are taken in [0, 1] (others are clamped).
    pub fn new(initial: Duration, max: Duration, random: impl FnMut() -> f64 + Send + 'static) -> Backoff {
        Backoff {
            initial,
            max,
            delay: initial.min(max),
            random: Box::new(random),
        }
    }

    /// The next pause: the current delay times a factor in [0.5, 1]; the
    /// delay then doubles, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let unit = (self.random)();
        let unit = if unit.is_nan() { 1.0 } else { unit.clamp(0.0, 1.0) };
        let factor = 0.5 + 0.5 * unit;
        let pause = Duration::from_nanos((self.delay.as_nanos() as f64 * factor).round() as u64);
        self.delay = self.delay.saturating_mul(2).min(self.max);
        pause
    }

    /// Starts over from the initial delay, after a connection that worked.
    pub fn reset(&mut self) {
        self.delay = self.initial.min(self.max);
    }
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("initial", &self.initial)
            .field("max", &self.max)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

/// Random values in [0, 1) for [`Backoff`]: std's randomly keyed hasher over
/// the time, the sampler's id and a counter (no random-number crate needed
/// for jitter).
pub fn jitter(sampler_id: u32) -> impl FnMut() -> f64 + Send + 'static {
    let keys = RandomState::new();
    let mut calls = 0u64;
    move || {
        calls += 1;
        let mut hasher = keys.build_hasher();
        hasher.write_u64(crate::now_ns());
        hasher.write_u32(sampler_id);
        hasher.write_u64(calls);
        // The top 53 bits: exactly representable, uniform in [0, 1).
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Uplink counters, read by the metrics endpoint.
#[derive(Debug)]
pub struct UplinkStats {
    /// The configured collectors, in order (`uplink.collectors`).
    pub collectors: Vec<String>,
    /// The connected collector's index in `collectors` plus one; 0 while
    /// not connected.
    connected: AtomicUsize,
    /// Times the uplink moved on to the next collector after a failure.
    pub failovers: AtomicU64,
    /// Batches written to a stream.
    pub batches_sent: AtomicU64,
    /// Acknowledged as stored.
    pub acked_stored: AtomicU64,
    /// Acknowledged as already stored.
    pub acked_duplicate: AtomicU64,
    /// Rejected as invalid and set aside.
    pub rejected: AtomicU64,
    /// Answered retry-later.
    pub retry_later: AtomicU64,
    /// Failures by kind, indexed like [`FAILURE_KINDS`].
    pub failures: [AtomicU64; FAILURE_KINDS.len()],
}

impl UplinkStats {
    /// Zeroed counters for an uplink to `collectors`.
    pub fn new(collectors: Vec<String>) -> UplinkStats {
        UplinkStats {
            collectors,
            connected: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            acked_stored: AtomicU64::new(0),
            acked_duplicate: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retry_later: AtomicU64::new(0),
            failures: Default::default(),
        }
    }

    /// The index in [`UplinkStats::collectors`] of the collector connected
    /// to, if any.
    pub fn connected_to(&self) -> Option<usize> {
        self.connected.load(Ordering::Relaxed).checked_sub(1)
    }

    fn set_connected(&self, index: Option<usize>) {
        self.connected.store(index.map_or(0, |i| i + 1), Ordering::Relaxed);
    }
}

/// Labels of [`UplinkStats::failures`].
pub const FAILURE_KINDS: [&str; 7] = ["connect", "tls", "timeout", "connection", "protocol", "resolve", "busy"];

/// Why sending a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The collector's name did not resolve, or resolved to no address.
    #[error("cannot resolve the collector {collector}: {source}")]
    Resolve {
        /// The collector, as configured.
        collector: String,
        /// Why.
        source: std::io::Error,
    },
    /// No UDP socket of the address's family could be opened.
    #[error("cannot open a UDP socket to reach the collector {collector} at {addr}: {source}")]
    Socket {
        /// The collector, as configured.
        collector: String,
        /// The address it resolved to.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection could not be started (bad address or name).
    #[error("cannot connect to the collector {collector} at {addr}: {source}")]
    Connect {
        /// The collector, as configured.
        collector: String,
        /// The address it resolved to.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// No address of the collector completed a handshake in time.
    #[error("no answer from the collector {collector} within {timeout:?}")]
    ConnectTimeout {
        /// The collector, as configured.
        collector: String,
        /// How long the handshake was given.
        timeout: Duration,
    },
    /// The TLS handshake failed: a certificate was refused by either side.
    #[error(
        "TLS handshake with the collector {collector} at {addr} failed: {source}; check that uplink.tls.cert is signed by the CA the collector trusts, and that uplink.tls.ca signed the collector's certificate for uplink.server_name"
    )]
    Tls {
        /// The collector, as configured.
        collector: String,
        /// The address it resolved to.
        addr: SocketAddr,
        /// The QUIC error carrying the TLS alert.
        source: quinn::ConnectionError,
    },
    /// No acknowledgement within the configured timeout.
    #[error("no acknowledgement from the collector within {0:?}")]
    AckTimeout(Duration),
    /// The connection failed or closed.
    #[error("connection to the collector lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream failed.
    #[error("batch stream failed: {0}")]
    Stream(String),
    /// The collector answered something that is not an acknowledgement of
    /// this batch.
    #[error("bad acknowledgement: {0}")]
    Protocol(String),
    /// The collector answered retry-later [`RETRY_LATER_LIMIT`] times in a
    /// row: it cannot store batches now.
    #[error("the collector {collector} answered retry-later {answers} times in a row")]
    Busy {
        /// The collector, as configured.
        collector: String,
        /// How many times.
        answers: u32,
    },
}

impl UplinkError {
    /// Index into [`FAILURE_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            UplinkError::Connect { .. } | UplinkError::Socket { .. } => 0,
            UplinkError::Tls { .. } => 1,
            UplinkError::AckTimeout(_) | UplinkError::ConnectTimeout { .. } => 2,
            UplinkError::Connection(_) | UplinkError::Stream(_) => 3,
            UplinkError::Protocol(_) => 4,
            UplinkError::Resolve { .. } => 5,
            UplinkError::Busy { .. } => 6,
        }
    }
}

/// Whether a connection error is the peer (or we) refusing the TLS
/// handshake: QUIC carries TLS alerts as transport codes 0x100–0x1ff.
fn is_tls_failure(error: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match error {
        quinn::ConnectionError::TransportError(e) => crypto(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => crypto(close.error_code),
        _ => false,
    }
}

/// Where and how to reach the collectors.
#[derive(Debug, Clone)]
pub struct Target {
    /// The collectors, "host:port", tried in this order, round robin.
    pub collectors: Vec<String>,
    /// The name every collector's certificate must carry.
    pub server_name: String,
    /// How long to wait for an acknowledgement.
    pub ack_timeout: Duration,
    /// How long resolving a collector's name and its handshake may take,
    /// together, before the next collector is tried.
    pub connect_timeout: Duration,
}

/// The uplink's QUIC client sockets, one per address family, each bound to
/// an ephemeral port when a collector first resolves to that family: names
/// may lead to IPv4 and IPv6 collectors alike, and a host may lack either.
pub struct Endpoints {
    config: quinn::ClientConfig,
    /// IPv4, IPv6.
    bound: Mutex<[Option<quinn::Endpoint>; 2]>,
}

impl Endpoints {
    /// No sockets yet; connections will use `config`.
    pub fn new(config: quinn::ClientConfig) -> Endpoints {
        let mut config = config;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        config.transport_config(Arc::new(transport));
        Endpoints {
            config,
            bound: Mutex::new([None, None]),
        }
    }

    /// The endpoint for `addr`'s family, bound now if it is the first.
    fn for_addr(&self, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut bound[usize::from(addr.is_ipv6())];
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let any: SocketAddr = if addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(any)?;
        endpoint.set_default_client_config(self.config.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Closes every connection, telling the collectors, and waits at most
    /// `within` for them to hear of it.
    pub async fn close(&self, within: Duration) {
        let bound: Vec<quinn::Endpoint> = self
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flatten()
            .cloned()
            .collect();
        for endpoint in &bound {
            endpoint.close(0u32.into(), b"sampler stopping");
        }
        let _ = tokio::time::timeout(within, async {
            for endpoint in &bound {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

/// One collector at one of its addresses.
#[derive(Debug, Clone)]
struct Peer {
    /// As configured.
    collector: String,
    /// Where it was reached.
    addr: SocketAddr,
}

/// Resolves `collector` and connects to it, to all its addresses at once;
/// the first handshake to complete wins. Both within one connect timeout.
async fn connect(
    endpoints: &Endpoints,
    target: &Target,
    collector: &str,
) -> Result<(quinn::Connection, Peer), UplinkError> {
    let timeout = target.connect_timeout;
    // One deadline for both steps, so a dead collector costs one timeout.
    let deadline = tokio::time::Instant::now() + timeout;
    let resolve_error = |source| UplinkError::Resolve {
        collector: collector.to_owned(),
        source,
    };
    // Resolved afresh at every attempt: after a failure the name may lead
    // somewhere else.
    let resolved = tokio::time::timeout_at(deadline, tokio::net::lookup_host(collector))
        .await
        .map_err(|_| {
            resolve_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        })?
        .map_err(resolve_error)?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in resolved {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(resolve_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name has no address",
        )));
    }
    // Each address in its own task, so a dead one does not hold up the
    // others; dropping the set aborts the attempts still running.
    let mut attempts = tokio::task::JoinSet::new();
    for (order, addr) in addrs.into_iter().enumerate() {
        let peer = Peer {
            collector: collector.to_owned(),
            addr,
        };
        let endpoint = endpoints.for_addr(addr);
        let server_name = target.server_name.clone();
        attempts.spawn(async move {
            let connection = match endpoint {
                Ok(endpoint) => handshake(&endpoint, &peer, &server_name).await,
                Err(source) => Err(UplinkError::Socket {
                    collector: peer.collector.clone(),
                    addr,
                    source,
                }),
            };
            (order, connection.map(|c| (c, peer)))
        });
    }
    // The failure of the address the resolver listed first, if all fail.
    let mut failure: Option<(usize, UplinkError)> = None;
    let first = tokio::time::timeout_at(deadline, async {
        while let Some(attempt) = attempts.join_next().await {
            match attempt {
                Ok((_, Ok(connected))) => return Some(connected),
                Ok((order, Err(error))) => {
                    if failure.as_ref().is_none_or(|(earlier, _)| order < *earlier) {
                        failure = Some((order, error));
                    }
                }
                Err(panicked) => warn!(message = "a connection attempt failed", error = %panicked),
            }
        }
        None
    })
    .await;
    match (first, failure) {
        (Ok(Some(connected)), _) => Ok(connected),
        (_, Some((_, error))) => Err(error),
        (_, None) => Err(UplinkError::ConnectTimeout {
            collector: collector.to_owned(),
            timeout,
        }),
    }
}

async fn handshake(
    endpoint: &quinn::Endpoint,
    peer: &Peer,
    server_name: &str,
) -> Result<quinn::Connection, UplinkError> {
    let connecting = endpoint
        .connect(peer.addr, server_name)
        .map_err(|source| UplinkError::Connect {
            collector: peer.collector.clone(),
            addr: peer.addr,
            source,
        })?;
    // With TLS 1.3 the server checks the client certificate after the client
    // considers the handshake done, so a refusal shows up later, as the
    // connection closing; `drain` waits for that before declaring the link up.
    connecting.await.map_err(|source| classify(peer, source))
}

fn classify(peer: &Peer, source: quinn::ConnectionError) -> UplinkError {
    if is_tls_failure(&source) {
        UplinkError::Tls {
            collector: peer.collector.clone(),
            addr: peer.addr,
            source,
        }
    } else {
        UplinkError::Connection(source)
    }
}

/// Sends one batch on its own stream and waits for its acknowledgement.
async fn send_batch(
    connection: &quinn::Connection,
    peer: &Peer,
    ack_timeout: Duration,
    batch: Bytes,
) -> Result<AckStatus, UplinkError> {
    let sent_id = BatchView::parse(&batch).map(|v| v.header.batch_id);
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| classify(peer, e))?;
        // The spool's buffer itself: QUIC keeps a reference, no copy.
        send.write_chunk(batch)
            .await
            .map_err(|e| stream_error(peer, e.to_string(), connection))?;
        send.finish().map_err(|e| UplinkError::Stream(e.to_string()))?;
        recv.read_to_end(64)
            .await
            .map_err(|e| stream_error(peer, e.to_string(), connection))
    };
    let answer = tokio::time::timeout(ack_timeout, exchange)
        .await
        .map_err(|_| UplinkError::AckTimeout(ack_timeout))??;
    let ack = BatchAck::parse(&answer).map_err(|e| UplinkError::Protocol(e.to_string()))?;
    if sent_id.is_ok_and(|id| id != ack.batch_id) {
        return Err(UplinkError::Protocol(format!(
            "acknowledgement names batch {}, not the one sent",
            ack.batch_id
        )));
    }
    let status = ack.status();
    if status == AckStatus::Rejected {
        let code = ack.error_code.get();
        if code == wire_format::batch::ACK_UNAUTHORIZED {
            // Not the batch's bytes: this sampler's certificate may not write
            // the rack or sampler id it claims (README, "Trust model").
            warn!(
                message = "collector refused a batch: this sampler's certificate may not write its rack or sampler id",
                collector = %peer.collector,
                batch = %ack.batch_id
            );
        } else {
            let reason = DropReason::from_code(code).map_or("unknown", |r| r.as_str());
            warn!(message = "collector rejected a batch as invalid", collector = %peer.collector, batch = %ack.batch_id, reason);
        }
    }
    Ok(status)
}

/// A stream error caused by the connection closing is reported as the
/// connection's error, so a TLS refusal reads as one.
fn stream_error(peer: &Peer, message: String, connection: &quinn::Connection) -> UplinkError {
    match connection.close_reason() {
        Some(reason) => classify(peer, reason),
        None => UplinkError::Stream(message),
    }
}

/// What one connection achieved: whether the backoff starts over after it.
#[derive(Debug, Default)]
struct Session {
    /// The collector settled a batch: stored, duplicate or rejected.
    delivered: bool,
    /// When the connection was found accepted.
    up_since: Option<Instant>,
    /// It ended because the collector kept answering retry-later: however
    /// long it lasted, it did not work.
    busy: bool,
}

impl Session {
    fn worked(&self) -> bool {
        self.delivered || (!self.busy && self.up_since.is_some_and(|since| since.elapsed() >= STABLE_AFTER))
    }
}

/// Runs the uplink until `shutdown` turns true: sends the spool's batches
/// in order to one collector of `target` at a time, failing over to the
/// next and pausing by `backoff` as the module documentation describes.
/// `wake` is notified when a batch is spooled.
pub async fn run(
    endpoints: Arc<Endpoints>,
    target: Target,
    mut backoff: Backoff,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stats: Arc<UplinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let count = target.collectors.len();
    if count == 0 {
        warn!(message = "no collectors configured (uplink.collectors); batches stay in the spool");
        return;
    }
    let mut index = 0;
    // Failures since the last connection that worked; the uplink pauses each
    // time every collector has had its turn.
    let mut failures_in_a_row = 0usize;
    // Each collector's last failure, logged once rather than at every retry.
    let mut last_errors: Vec<Option<String>> = vec![None; count];
    while !*shutdown.borrow() {
        let collector = &target.collectors[index];
        let connection = tokio::select! {
            c = connect(&endpoints, &target, collector) => c,
            _ = shutdown.changed() => break,
        };
        let mut session = Session::default();
        let outcome = match connection {
            Ok((connection, peer)) => {
                let link = Link {
                    connection: &connection,
                    peer: &peer,
                    index,
                    ack_timeout: target.ack_timeout,
                };
                let outcome = link
                    .drain(
                        &spool,
                        &wake,
                        &stats,
                        &mut shutdown,
                        &mut session,
                        &mut last_errors[index],
                    )
                    .await;
                stats.set_connected(None);
                connection.close(0u32.into(), b"sampler closing");
                outcome
            }
            Err(error) => Err(error),
        };
        let error = match outcome {
            Ok(()) => break,
            Err(error) => error,
        };
        stats.failures[error.kind()].fetch_add(1, Ordering::Relaxed);
        let next = &target.collectors[(index + 1) % count];
        let message = error.to_string();
        if last_errors[index].as_deref() != Some(&message) {
            if count > 1 {
                warn!(message = "collector failed; failing over to the next", collector = %collector, error = %message, next = %next);
            } else {
                warn!(message = "collector uplink failed; batches wait in the spool", collector = %collector, error = %message);
            }
            last_errors[index] = Some(message);
        }
        if session.worked() {
            backoff.reset();
            failures_in_a_row = 0;
        }
        failures_in_a_row += 1;
        if count > 1 {
            stats.failovers.fetch_add(1, Ordering::Relaxed);
            debug!(message = "failing over to the next collector", collector = %collector, next = %next);
            index = (index + 1) % count;
        }
        // The next collector is tried at once; only a full round of failures
        // pauses.
        if failures_in_a_row.is_multiple_of(count) {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_pause()) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
    stats.set_connected(None);
}

/// A connection to one collector.
struct Link<'a> {
    connection: &'a quinn::Connection,
    peer: &'a Peer,
    /// The collector's index in the configured list.
    index: usize,
    ack_timeout: Duration,
}

impl Link<'_> {
    /// Sends batches until the connection fails (`Err`) or shutdown (`Ok`),
    /// recording in `session` what it achieved.
    async fn drain(
        &self,
        spool: &Mutex<Spool>,
        wake: &Notify,
        stats: &UplinkStats,
        shutdown: &mut watch::Receiver<bool>,
        session: &mut Session,
        last_error: &mut Option<String>,
    ) -> Result<(), UplinkError> {
        let connection = self.connection;
        // Retry-later answers in a row on this connection.
        let mut retry_laters = 0;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let next = lock(spool).oldest();
            let next = match next {
                Ok(next) => next,
                Err(error) => {
                    warn!(message = "cannot read the spool", %error);
                    None
                }
            };
            let Some((key, batch)) = next else {
                if session.up_since.is_none() {
                    // Nothing to send: check the connection is really accepted
                    // (a refused client certificate shows up here, not at
                    // connect) by waiting briefly for it to close.
                    if let Ok(reason) = tokio::time::timeout(Duration::from_millis(200), connection.closed()).await {
                        return Err(classify(self.peer, reason));
                    }
                    self.announce(stats, session, last_error);
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    reason = connection.closed() => return Err(classify(self.peer, reason)),
                    _ = shutdown.changed() => return Ok(()),
                }
                continue;
            };
            stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            let status = match send_batch(connection, self.peer, self.ack_timeout, batch).await {
                Ok(status) => status,
                Err(error) => {
                    // The collector may have stored it before the answer was
                    // lost: the spool must not count it as dropped for now.
                    lock(spool).unacknowledged(key, Unacknowledged::NoAnswer);
                    return Err(error);
                }
            };
            if session.up_since.is_none() {
                self.announce(stats, session, last_error);
            }
            settle(spool, key, status, stats);
            if status != AckStatus::RetryLater {
                session.delivered = true;
                retry_laters = 0;
                continue;
            }
            retry_laters += 1;
            if retry_laters >= RETRY_LATER_LIMIT {
                session.busy = true;
                return Err(UplinkError::Busy {
                    collector: self.peer.collector.clone(),
                    answers: retry_laters,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_LATER_PAUSE) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    fn announce(&self, stats: &UplinkStats, session: &mut Session, last_error: &mut Option<String>) {
        stats.set_connected(Some(self.index));
        session.up_since = Some(Instant::now());
        // A failure after this one is news again.
        *last_error = None;
        info!(message = "connected to the collector", collector = %self.peer.collector, addr = %self.peer.addr);
    }
}

fn settle(spool: &Mutex<Spool>, key: SpoolKey, status: AckStatus, stats: &UplinkStats) {
    let mut spool = lock(spool);
    let result = match status {
        AckStatus::Stored => {
            stats.acked_stored.fetch_add(1, Ordering::Relaxed);
            spool.remove(key)
        }
        AckStatus::Duplicate => {
            stats.acked_duplicate.fetch_add(1, Ordering::Relaxed);
            spool.remove(key)
        }
        AckStatus::Rejected => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            spool.reject(key).map(|path| {
                warn!(message = "rejected batch set aside", path = %path.display());
            })
        }
        _ => {
            stats.retry_later.fetch_add(1, Ordering::Relaxed);
            spool.unacknowledged(key, Unacknowledged::RetryLater);
            Ok(())
        }
    };
    if let Err(error) = result {
        warn!(message = "spool update failed", %error);
    }
}

/// Locks the spool; a panic elsewhere while holding it left consistent
/// on-disk state, so the poison is ignored.
pub fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    fn fixed(unit: f64) -> Backoff {
        Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF, move || unit)
    }

    #[test]
    fn backoff_grows_to_the_cap_and_stays_there() {
        let mut b = fixed(1.0);
        let ms: Vec<u128> = (0..12).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(
            ms,
            [
                100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000, 10_000, 10_000
            ]
        );
    }

    #[test]
    fn backoff_starts_over_after_reset() {
        let mut b = fixed(1.0);
        for _ in 0..20 {
            b.next_pause();
        }
        assert_eq!(b.next_pause(), MAX_BACKOFF);
        b.reset();
        assert_eq!(b.next_pause(), INITIAL_BACKOFF);
        assert_eq!(b.next_pause(), INITIAL_BACKOFF * 2);
    }

    #[test]
    fn backoff_jitter_stays_within_half_and_whole_of_the_delay() {
        assert_eq!(fixed(0.0).next_pause(), INITIAL_BACKOFF / 2);
        assert_eq!(fixed(0.5).next_pause(), INITIAL_BACKOFF * 3 / 4);
        // Out-of-range randomness is clamped, so the bounds hold regardless.
        assert_eq!(fixed(-3.0).next_pause(), INITIAL_BACKOFF / 2);
        assert_eq!(fixed(7.0).next_pause(), INITIAL_BACKOFF);
        assert_eq!(fixed(f64::NAN).next_pause(), INITIAL_BACKOFF);

        let values = [0.0, 0.999, 0.25, 0.5, 0.75, 0.1, 0.9, 0.3, 0.6, 0.0, 0.999, 0.42];
        let mut source = values.into_iter();
        let mut b = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF, move || source.next().unwrap());
        let mut delay = INITIAL_BACKOFF;
        for unit in values {
            let pause = b.next_pause();
            assert!(
                delay / 2 <= pause && pause <= delay,
                "{pause:?} outside [{:?}, {delay:?}]",
                delay / 2
            );
            let expected = delay.as_secs_f64() * (0.5 + 0.5 * unit);
            assert!((pause.as_secs_f64() - expected).abs() < 1e-6, "{pause:?} != {expected}");
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    #[test]
    fn production_jitter_varies_within_the_unit_interval() {
        let mut random = jitter(7);
        let values: Vec<f64> = (0..1_000).map(|_| random()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{values:?}");
        let distinct: std::collections::BTreeSet<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 990, "{} distinct of 1000", distinct.len());
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }

    #[test]
    fn a_connection_counts_as_working_once_it_delivered_or_stayed_up() {
        assert!(!Session::default().worked());
        let fresh = Session {
            delivered: false,
            up_since: Some(Instant::now()),
            busy: false,
        };
        assert!(!fresh.worked());
        let lasting = Session {
            delivered: false,
            up_since: Instant::now().checked_sub(STABLE_AFTER),
            busy: false,
        };
        assert!(lasting.worked());
        let delivered = Session {
            delivered: true,
            up_since: Some(Instant::now()),
            busy: false,
        };
        assert!(delivered.worked());
        // Up for long, but only answering retry-later: no success.
        let busy = Session {
            delivered: false,
            up_since: Instant::now().checked_sub(STABLE_AFTER),
            busy: true,
        };
        assert!(!busy.worked());
    }
}
