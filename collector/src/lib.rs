//! flowmesh's collector: the central store of sampler batches.
//!
//! [`Store`] owns the SQLite database: schema and versioned migrations,
//! idempotent storage of validated batches (one transaction per call, the
//! batch id as the key), racks and nodes, and retention. docs/schema.md
//! describes every table, view and column.
//!
//! [`server`] is the QUIC side: mutual TLS 1.3 ([`configs::tls`]), one batch per
//! stream, a single writer thread, acknowledgements only after commit.

pub mod query;
mod schema;
pub mod server;
mod store;
pub mod telemetry;

pub use schema::SCHEMA_VERSION;
pub use store::{Store, StoreError, Stored};
