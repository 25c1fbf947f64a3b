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
    /// Receive buffer of the QUIC socket to request, bytes (the kernel caps
    /// it at `net.core.rmem_max`). Every rack's sampler sends its window's
    /// batch at about the same moment; what the buffer cannot hold QUIC
    /// sends again, at the cost of both ends' CPU and its congestion window.
    pub socket_buffer_bytes: usize,
    /// The collector's server certificate and the CA that signs samplers'
    /// client certificates.
    pub tls: TlsFiles,
    /// The SQLite database file (created if missing), when
    /// `storage.backend` is `sqlite`.
    pub database: PathBuf,
    /// The storage backend: SQLite (`database`) or a ClickHouse cluster.
    pub storage: Storage,
    /// Topology file whose racks and nodes are recorded in the database,
    /// and whose rack names authorize samplers: a client certificate named
    /// after a rack may write that rack's batches as the sampler whose id
    /// is the rack's id. Unset: racks and nodes are learned from batches
    /// only, and samplers need `authorize` entries (which need the topology
    /// too) or `authorize_any_signed_sampler`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<PathBuf>,
    /// Sampler certificates whose name is not a rack's, or that write as
    /// other sampler ids (a rack's secondary sampler): each entry lets the
    /// certificate named `certificate` write rack `rack`'s batches as the
    /// sampler ids `sampler_ids`, and replaces the topology's rule for that
    /// name. A sampler id belongs to one certificate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorize: Vec<Authorize>,
    /// Development only: let every client certificate the CA signed write
    /// any rack's batches as any sampler id. Without it, the collector
    /// refuses to start unless `topology` or `authorize` says who may write.
    pub authorize_any_signed_sampler: bool,
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

/// One `[[authorize]]` entry: what one sampler certificate may write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorize {
    /// The name the sampler's client certificate carries, as a DNS subject
    /// alternative name (`flowmesh-collector dev-certs --sampler NAME`
    /// writes one).
    pub certificate: String,
    /// The rack it may write, by name in the topology file.
    pub rack: String,
    /// The sampler ids it may write as (the `sampler_id` of the samplers
    /// using the certificate), 1 or more of them.
    pub sampler_ids: Vec<u32>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            tls: TlsFiles::under_etc("collector"),
            database: PathBuf::from("/var/lib/flowmesh/flowmesh.db"),
            storage: Storage::default(),
            topology: None,
            authorize: Vec::new(),
            authorize_any_signed_sampler: false,
            retention_days: 30,
            max_pending_batches: 64,
            socket_buffer_bytes: 8 << 20,
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
        self.check_authorize(&mut c);
        c.range("retention_days", self.retention_days, 1..=3_650, "days");
        c.range("max_pending_batches", self.max_pending_batches, 1..=100_000, "batches");
        c.range(
            "socket_buffer_bytes",
            self.socket_buffer_bytes,
            65_536..=1 << 30,
            "bytes",
        );
        c.range(
            "batches_per_transaction",
            self.batches_per_transaction,
            1..=10_000,
            "batches",
        );
        c.0
    }
}

impl CollectorConfig {
    /// Each `[[authorize]]` entry is complete, names its certificate once
    /// and grants sampler ids no other entry grants; racks are named in the
    /// topology, so one must be set. (Whether each rack exists is checked
    /// when the collector loads the topology.)
    fn check_authorize(&self, c: &mut Checks) {
        let mut certificates = std::collections::HashSet::new();
        let mut sampler_ids = std::collections::HashMap::new();
        for (i, entry) in self.authorize.iter().enumerate() {
            let key = |field: &str| format!("authorize[{i}].{field}");
            let name = entry.certificate.trim();
            c.check(
                !name.is_empty() && !name.contains(char::is_whitespace),
                &key("certificate"),
                format!("{:?}", entry.certificate),
                "the DNS name the sampler's certificate carries, such as \"sampler-a.dc1\"",
            );
            c.check(
                name.is_empty() || certificates.insert(name.to_ascii_lowercase()),
                &key("certificate"),
                format!("{:?}", entry.certificate),
                "a certificate name no earlier entry lists (one entry per certificate)",
            );
            c.check(
                !entry.rack.trim().is_empty(),
                &key("rack"),
                "\"\"",
                "the name of a rack in the topology file",
            );
            c.check(
                !entry.sampler_ids.is_empty(),
                &key("sampler_ids"),
                "[]",
                "the sampler ids the certificate may write as, such as [1, 2]",
            );
            for (j, &id) in entry.sampler_ids.iter().enumerate() {
                let id_key = format!("authorize[{i}].sampler_ids[{j}]");
                c.check(id != 0, &id_key, id, "a sampler id of 1 or more");
                if id != 0 {
                    let earlier = *sampler_ids.entry(id).or_insert(i);
                    c.check(
                        earlier == i,
                        &id_key,
                        id,
                        &format!(
                            "a sampler id no other entry grants (authorize[{earlier}] does; a sampler id belongs to one certificate)"
                        ),
                    );
                }
            }
        }
        c.check(
            self.authorize.is_empty() || self.topology.is_some(),
            "topology",
            "unset",
            "a topology file, to find the racks `authorize` names",
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    #[test]
    fn authorize_entries_are_checked_together() {
        let entry = |certificate: &str, rack: &str, sampler_ids: Vec<u32>| Authorize {
            certificate: certificate.into(),
            rack: rack.into(),
            sampler_ids,
        };
        let config = CollectorConfig {
            authorize: vec![
                entry("sampler-a.dc1", "rack1", vec![1, 2]),
                entry("SAMPLER-A.dc1", "", vec![]),
                entry("sampler b", "rack2", vec![0, 2]),
            ],
            ..CollectorConfig::default()
        };
        let problems: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "authorize[1].certificate = \"SAMPLER-A.dc1\": expected a certificate name no earlier entry lists \
                 (one entry per certificate)",
                "authorize[1].rack = \"\": expected the name of a rack in the topology file",
                "authorize[1].sampler_ids = []: expected the sampler ids the certificate may write as, such as [1, 2]",
                "authorize[2].certificate = \"sampler b\": expected the DNS name the sampler's certificate carries, \
                 such as \"sampler-a.dc1\"",
                "authorize[2].sampler_ids[0] = 0: expected a sampler id of 1 or more",
                "authorize[2].sampler_ids[1] = 2: expected a sampler id no other entry grants (authorize[0] does; \
                 a sampler id belongs to one certificate)",
                "topology = unset: expected a topology file, to find the racks `authorize` names",
            ]
        );
        let fine = CollectorConfig {
            topology: Some(PathBuf::from("/etc/flowmesh/topology.toml")),
            authorize: vec![entry("sampler-a.dc1", "rack1", vec![1, 2])],
            ..CollectorConfig::default()
        };
        assert!(fine.validate().is_empty());
    }

    #[test]
    fn authorize_entries_load_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(
            &path,
            "topology = \"/etc/flowmesh/topology.toml\"\n\
             [[authorize]]\ncertificate = \"sampler-a.dc1\"\nrack = \"rack1\"\nsampler_ids = [1, 2]\n\
             [[authorize]]\ncertificate = \"sampler-b.dc1\"\nrack = \"rack2\"\nsampler_ids = [3]\n",
        )
        .unwrap();
        let env = vec![(
            "FLOWMESH_COLLECTOR_AUTHORIZE_ANY_SIGNED_SAMPLER".to_string(),
            "true".to_string(),
        )];
        let config = CollectorConfig::load_with_env(Some(&path), env).unwrap();
        assert_eq!(config.authorize.len(), 2);
        assert_eq!(config.authorize[1].certificate, "sampler-b.dc1");
        assert_eq!(config.authorize[0].sampler_ids, [1, 2]);
        assert!(config.authorize_any_signed_sampler);
    }
}
