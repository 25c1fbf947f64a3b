//! flowmesh's collector daemon: the QUIC server that takes sampler batches
//! and hands them to storage.
//!
//! [`server`] is the QUIC side: mutual TLS 1.3 ([`configs_runtime::tls`]), one batch
//! per stream, a single writer thread that owns a
//! [`BatchWriter`](collector_storage::BatchWriter), acknowledgements only
//! after the write is durable. Storage itself — schema, migrations,
//! idempotent writes, readers, retention — is the `collector-storage` crate
//! (collector/storage), which the analyzer and the benchmarks use too.
//! [`query`] prints the canned questions' answers for the `query` command;
//! [`telemetry`] is the Prometheus endpoint.

pub mod query;
pub mod server;
pub mod telemetry;
