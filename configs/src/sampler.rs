//! `flowmesh-sampler`: one per rack; aggregates its agents' datagrams per
//! window and forwards batches to the collector.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::component::{Checks, Component, Invalid, MetricsEndpoint, TlsFiles};

/// Configuration of `flowmesh-sampler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// This sampler's id, unique in the fleet (part of every batch id).
    /// Required (0 is not an id).
    pub sampler_id: u32,
    /// Name of the rack this sampler serves, as in the topology file.
    /// Required.
    pub rack: String,
    /// The topology file.
    pub topology: PathBuf,
    /// UDP ingest of agent datagrams.
    pub ingest: Ingest,
    /// Windows, bounds and downsampling.
    pub aggregate: Aggregation,
    /// QUIC uplink to the collector, and the spool.
    pub uplink: SamplerUplink,
    /// Prometheus and health endpoint.
    pub metrics: MetricsEndpoint,
}

/// UDP ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    /// Addresses to receive datagrams on (IPv4 and IPv6).
    pub listen: Vec<SocketAddr>,
    /// Datagrams aggregated per hold of the aggregation lock (received up
    /// to 32 per system call).
    pub recv_batch: usize,
    /// Socket receive buffer to request, bytes (the kernel caps it at
    /// `net.core.rmem_max`).
    pub socket_buffer_bytes: usize,
}

/// Windows, memory bounds and downsampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aggregation {
    /// Length of an aggregation window, seconds. Windows are aligned to
    /// multiples of it since the Unix epoch. The default, 30 s (rpingmesh's
    /// window), holds 30 probes per path at the agent's default 1 probe/s —
    /// above the analyzer's default `min_probes` of 20, so every in-rack path
    /// is judged at default settings.
    pub window_secs: u64,
    /// How long after a window ends late datagrams are still counted in it, ms.
    pub grace_ms: u64,
    /// Paths held per window at most; records for further paths are counted
    /// as over capacity.
    pub max_paths: usize,
    /// Keep one in this many non-anomalous raw records (its weight). 1 keeps
    /// all.
    pub sample_one_in: u32,
    /// A flow or probe with an RTT above this is anomalous (always kept), µs.
    pub rtt_anomaly_us: u64,
    /// Raw records kept per window at most (anomalous first); beyond it they
    /// are counted as over capacity.
    pub max_samples: usize,
    /// Open flows remembered between their periodic reports at most, so each
    /// window counts only the bytes and segments of its own share; a flow
    /// beyond it is counted whole and as untracked.
    pub max_flows: usize,
}

/// QUIC uplink and spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerUplink {
    /// The collector's QUIC address.
    pub collector: SocketAddr,
    /// Name the collector's certificate must carry.
    pub server_name: String,
    /// This sampler's client certificate and the CA that signs the
    /// collector's.
    pub tls: TlsFiles,
    /// Directory of the on-disk spool of batches not yet acknowledged.
    pub spool_dir: PathBuf,
    /// Spool size limit, bytes; when full the oldest batches are dropped and
    /// counted.
    pub spool_max_bytes: u64,
    /// Give up on a collector acknowledgement after this long and retry, ms.
    pub ack_timeout_ms: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            sampler_id: 0,
            rack: String::new(),
            topology: PathBuf::from("/etc/flowmesh/topology.toml"),
            ingest: Ingest::default(),
            aggregate: Aggregation::default(),
            uplink: SamplerUplink::default(),
            metrics: MetricsEndpoint {
                listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            },
        }
    }
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 5001)),
                SocketAddr::from(([0u16; 8], 5001)),
            ],
            recv_batch: 64,
            socket_buffer_bytes: 8 << 20,
        }
    }
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation {
            window_secs: 30,
            grace_ms: 2_000,
            max_paths: 100_000,
            sample_one_in: 100,
            rtt_anomaly_us: 1_000,
            max_samples: 100_000,
            max_flows: 1_000_000,
        }
    }
}

impl Default for SamplerUplink {
    fn default() -> Self {
        SamplerUplink {
            collector: SocketAddr::from(([127, 0, 0, 1], 4433)),
            server_name: String::from("flowmesh-collector"),
            tls: TlsFiles::under_etc("sampler"),
            spool_dir: PathBuf::from("/var/lib/flowmesh/spool"),
            spool_max_bytes: 1 << 30,
            ack_timeout_ms: 10_000,
        }
    }
}

impl Component for SamplerConfig {
    const NAME: &'static str = "sampler";
    const ENV_PREFIX: &'static str = "FLOWMESH_SAMPLER";
    const LIST_KEYS: &'static [&'static str] = &["ingest.listen"];

    fn validate(&self) -> Vec<Invalid> {
        let mut c = Checks::default();
        c.check(
            self.sampler_id != 0,
            "sampler_id",
            self.sampler_id,
            "a sampler id of 1 or more",
        );
        c.check(
            !self.rack.trim().is_empty(),
            "rack",
            "\"\"",
            "the name of a rack in the topology file",
        );
        c.path("topology", &self.topology);
        let ing = &self.ingest;
        c.check(
            !ing.listen.is_empty(),
            "ingest.listen",
            "[]",
            "one or more addresses such as \"0.0.0.0:5001\"",
        );
        c.range("ingest.recv_batch", ing.recv_batch, 1..=1_024, "datagrams");
        c.range(
            "ingest.socket_buffer_bytes",
            ing.socket_buffer_bytes,
            65_536..=1 << 30,
            "bytes",
        );
        let agg = &self.aggregate;
        c.range("aggregate.window_secs", agg.window_secs, 1..=3_600, "seconds");
        c.check(
            agg.grace_ms < agg.window_secs.saturating_mul(1_000),
            "aggregate.grace_ms",
            agg.grace_ms,
            "milliseconds, less than aggregate.window_secs",
        );
        c.range("aggregate.max_paths", agg.max_paths, 1..=100_000_000, "paths");
        c.range(
            "aggregate.sample_one_in",
            agg.sample_one_in,
            1..=1_000_000,
            "a sampling ratio",
        );
        c.range(
            "aggregate.rtt_anomaly_us",
            agg.rtt_anomaly_us,
            1..=60_000_000,
            "microseconds",
        );
        c.range("aggregate.max_samples", agg.max_samples, 0..=100_000_000, "records");
        c.range("aggregate.max_flows", agg.max_flows, 0..=100_000_000, "flows");
        let up = &self.uplink;
        c.check(
            !up.server_name.is_empty(),
            "uplink.server_name",
            "\"\"",
            "the DNS name in the collector's certificate",
        );
        c.path("uplink.tls.ca", &up.tls.ca);
        c.path("uplink.tls.cert", &up.tls.cert);
        c.path("uplink.tls.key", &up.tls.key);
        c.path("uplink.spool_dir", &up.spool_dir);
        c.range("uplink.spool_max_bytes", up.spool_max_bytes, 1 << 20..=1 << 40, "bytes");
        c.range(
            "uplink.ack_timeout_ms",
            up.ack_timeout_ms,
            100..=600_000,
            "milliseconds",
        );
        c.0
    }
}
