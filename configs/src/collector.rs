//! `flowmesh-collector`: the QUIC server that stores sampler batches in
//! SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::component::{Checks, Component, Invalid, MetricsEndpoint, TlsFiles};
use crate::storage::Storage;

/// Configuration of `flowmesh-collector`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// The collector's server certificate and the CA that signs samplers'
    /// client certificates.
    pub tls: TlsFiles,
    /// The SQLite database file (created if missing), when
    /// `storage.backend` is `sqlite`.
    pub database: PathBuf,
    /// The storage backend: SQLite (`database`) or a ClickHouse cluster.
    pub storage: Storage,
    /// Topology file whose racks and nodes are recorded in the database.
    /// Unset: racks and nodes are learned from batches only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<PathBuf>,
    /// Delete windows older than this, days.
    pub retention_days: u32,
    /// Batches received but not yet committed, at most; beyond it samplers
    /// are slowed down (QUIC flow control) rather than memory growing.
    pub max_pending_batches: usize,
    /// Batches committed together in one transaction, at most.
    pub batches_per_transaction: usize,
    /// Prometheus and health endpoint.
    pub metrics: MetricsEndpoint,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            tls: TlsFiles::under_etc("collector"),
            database: PathBuf::from("/var/lib/flowmesh/flowmesh.db"),
            storage: Storage::default(),
            topology: None,
            retention_days: 30,
            max_pending_batches: 64,
            batches_per_transaction: 16,
            metrics: MetricsEndpoint {
                listen: SocketAddr::from(([127, 0, 0, 1], 9103)),
            },
        }
    }
}

impl Component for CollectorConfig {
    const NAME: &'static str = "collector";
    const ENV_PREFIX: &'static str = "FLOWMESH_COLLECTOR";

    fn validate(&self) -> Vec<Invalid> {
        let mut c = Checks::default();
        c.path("tls.ca", &self.tls.ca);
        c.path("tls.cert", &self.tls.cert);
        c.path("tls.key", &self.tls.key);
        c.path("database", &self.database);
        self.storage.check(&mut c);
        c.range("retention_days", self.retention_days, 1..=3_650, "days");
        c.range("max_pending_batches", self.max_pending_batches, 1..=100_000, "batches");
        c.range(
            "batches_per_transaction",
            self.batches_per_transaction,
            1..=10_000,
            "batches",
        );
        c.0
    }
}
