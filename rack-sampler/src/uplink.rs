//! The QUIC uplink: sends spooled batches to the collector, oldest first,
//! one per stream, and deletes each from the spool only when the collector
//! acknowledges it (`stored` after its commit, or `duplicate`).
//!
//! While the collector is unreachable the uplink reconnects with capped
//! exponential backoff and batches wait in the spool. A batch the collector
//! rejects as invalid is set aside (see [`crate::spool`]) rather than
//! retried forever; `retry-later` (collector busy) is retried after a pause.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};
use wire_format::{AckStatus, BatchAck, BatchView, DropReason};

use crate::spool::{Spool, SpoolKey};

/// Longest pause between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Uplink counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct UplinkStats {
    /// 1 while a connection to the collector is established.
    pub connected: AtomicBool,
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

/// Labels of [`UplinkStats::failures`].
pub const FAILURE_KINDS: [&str; 5] = ["connect", "tls", "timeout", "connection", "protocol"];

/// Why sending a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The connection could not be started (bad address or name).
    #[error("cannot connect to the collector at {addr}: {source}")]
    Connect {
        /// The collector's address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The TLS handshake failed: a certificate was refused by either side.
    #[error(
        "TLS handshake with the collector at {addr} failed: {source}; check that uplink.tls.cert is signed by the CA the collector trusts, and that uplink.tls.ca signed the collector's certificate for uplink.server_name"
    )]
    Tls {
        /// The collector's address.
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
}

impl UplinkError {
    /// Index into [`FAILURE_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            UplinkError::Connect { .. } => 0,
            UplinkError::Tls { .. } => 1,
            UplinkError::AckTimeout(_) => 2,
            UplinkError::Connection(_) | UplinkError::Stream(_) => 3,
            UplinkError::Protocol(_) => 4,
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

/// Where and how to reach the collector.
#[derive(Debug, Clone)]
pub struct Target {
    /// The collector's address.
    pub addr: SocketAddr,
    /// The name its certificate must carry.
    pub server_name: String,
    /// How long to wait for an acknowledgement.
    pub ack_timeout: Duration,
}

/// A QUIC client endpoint for the uplink, bound to an ephemeral port of the
/// collector's address family.
pub fn client_endpoint(target: &Target, config: quinn::ClientConfig) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if target.addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    let mut config = config;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

async fn connect(endpoint: &quinn::Endpoint, target: &Target) -> Result<quinn::Connection, UplinkError> {
    let connecting = endpoint
        .connect(target.addr, &target.server_name)
        .map_err(|source| UplinkError::Connect {
            addr: target.addr,
            source,
        })?;
    // With TLS 1.3 the server checks the client certificate after the client
    // considers the handshake done, so a refusal shows up later, as the
    // connection closing; `drain` waits for that before declaring the link up.
    connecting.await.map_err(|source| classify(target, source))
}

fn classify(target: &Target, source: quinn::ConnectionError) -> UplinkError {
    if is_tls_failure(&source) {
        UplinkError::Tls {
            addr: target.addr,
            source,
        }
    } else {
        UplinkError::Connection(source)
    }
}

/// Sends one batch on its own stream and waits for its acknowledgement.
pub async fn send_batch(
    connection: &quinn::Connection,
    target: &Target,
    batch: Bytes,
) -> Result<AckStatus, UplinkError> {
    let sent_id = BatchView::parse(&batch).map(|v| v.header.batch_id);
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| classify(target, e))?;
        // The spool's buffer itself: QUIC keeps a reference, no copy.
        send.write_chunk(batch)
            .await
            .map_err(|e| stream_error(target, e.to_string(), connection))?;
        send.finish().map_err(|e| UplinkError::Stream(e.to_string()))?;
        recv.read_to_end(64)
            .await
            .map_err(|e| stream_error(target, e.to_string(), connection))
    };
    let answer = tokio::time::timeout(target.ack_timeout, exchange)
        .await
        .map_err(|_| UplinkError::AckTimeout(target.ack_timeout))??;
    let ack = BatchAck::parse(&answer).map_err(|e| UplinkError::Protocol(e.to_string()))?;
    if sent_id.is_ok_and(|id| id != ack.batch_id) {
        return Err(UplinkError::Protocol(format!(
            "acknowledgement names batch {}, not the one sent",
            ack.batch_id
        )));
    }
    let status = ack.status();
    if status == AckStatus::Rejected {
        let reason = DropReason::from_code(ack.error_code.get()).map_or("unknown", |r| r.as_str());
        warn!(message = "collector rejected a batch as invalid", batch = %ack.batch_id, reason);
    }
    Ok(status)
}

/// A stream error caused by the connection closing is reported as the
/// connection's error, so a TLS refusal reads as one.
fn stream_error(target: &Target, message: String, connection: &quinn::Connection) -> UplinkError {
    match connection.close_reason() {
        Some(reason) => classify(target, reason),
        None => UplinkError::Stream(message),
    }
}

/// Runs the uplink until `shutdown` turns true: sends the spool's batches
/// in order, reconnecting as needed. `wake` is notified when a batch is
/// spooled.
pub async fn run(
    endpoint: quinn::Endpoint,
    target: Target,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stats: Arc<UplinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut last_error: Option<String> = None;
    while !*shutdown.borrow() {
        let connection = tokio::select! {
            c = connect(&endpoint, &target) => c,
            _ = shutdown.changed() => break,
        };
        let outcome = match connection {
            Ok(connection) => {
                let outcome = drain(&connection, &target, &spool, &wake, &stats, &mut shutdown).await;
                stats.connected.store(false, Ordering::Relaxed);
                connection.close(0u32.into(), b"sampler closing");
                outcome
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => break,
            Err(error) => {
                stats.failures[error.kind()].fetch_add(1, Ordering::Relaxed);
                let message = error.to_string();
                // Log each distinct failure once, not every retry.
                if last_error.as_deref() != Some(&message) {
                    warn!(message = "collector uplink failed; batches wait in the spool", error = %message);
                    last_error = Some(message);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sends batches on one connection until it fails (`Err`) or shutdown
/// (`Ok`).
async fn drain(
    connection: &quinn::Connection,
    target: &Target,
    spool: &Mutex<Spool>,
    wake: &Notify,
    stats: &UplinkStats,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), UplinkError> {
    let mut announced = false;
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
            if !announced {
                // Nothing to send: check the connection is really accepted
                // (a refused client certificate shows up here, not at
                // connect) by waiting briefly for it to close.
                if let Ok(reason) = tokio::time::timeout(Duration::from_millis(200), connection.closed()).await {
                    return Err(classify(target, reason));
                }
                stats.connected.store(true, Ordering::Relaxed);
                info!(message = "connected to the collector", addr = %target.addr);
                announced = true;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                reason = connection.closed() => return Err(classify(target, reason)),
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        };
        stats.batches_sent.fetch_add(1, Ordering::Relaxed);
        let status = send_batch(connection, target, batch).await?;
        if !announced {
            stats.connected.store(true, Ordering::Relaxed);
            info!(message = "connected to the collector", addr = %target.addr);
            announced = true;
        }
        settle(spool, key, status, stats);
        if status == AckStatus::RetryLater {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
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
