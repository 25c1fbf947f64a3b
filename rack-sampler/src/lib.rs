//! flowmesh's rack sampler: receives its rack's agent datagrams over UDP,
//! aggregates them per path and time window, downsamples raw records (every
//! anomalous one kept, the rest 1 in N with their weight) and forwards one
//! batch per window to the collector over QUIC, through an on-disk spool.
//!
//! [`aggregate`] is the logic, free of I/O; [`completeness`] tracks agents'
//! sequence numbers, and [`checkpoint`] saves them with the spool across a
//! restart; [`ingest`] receives; [`spool`] and [`uplink`] deliver;
//! [`service`] puts them together with the metrics endpoint
//! ([`telemetry`]).

pub mod aggregate;
pub mod checkpoint;
pub mod completeness;
pub mod ingest;
pub mod service;
pub mod spool;
pub mod telemetry;
pub mod uplink;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
