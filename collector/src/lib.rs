//! flowmesh's collector: the central store of sampler batches.
//!
//! [`Store`] owns the SQLite database: schema and versioned migrations,
//! idempotent storage of validated batches (one transaction per call, the
//! batch id as the key), racks and nodes, and retention. docs/schema.md
//! describes every table, view and column.

mod schema;
mod store;

pub use schema::SCHEMA_VERSION;
pub use store::{Store, StoreError, Stored};
