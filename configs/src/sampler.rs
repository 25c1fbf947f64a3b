//! `flowmesh-sampler`: one per rack; aggregates its agents' datagrams per
//! window and forwards batches to one of the collectors.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::component::{Checks, Component, Invalid, MetricsEndpoint, TlsFiles};
use crate::host_port::is_host_port;

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
    /// QUIC uplink to the collectors, and the spool.
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
    /// The agents' heartbeat interval (their `uplink.heartbeat_secs`, or
    /// more), seconds: a live agent sends at least one datagram this often.
    /// An agent silent for more than twice this before a window's end is
    /// missing datagrams in it; its cadence says how many.
    pub agent_heartbeat_secs: u64,
}

/// QUIC uplink and spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerUplink {
    /// The collectors' QUIC addresses, as "host:port" with an IPv4 address,
    /// an IPv6 address in brackets or a DNS name. Batches go to one at a
    /// time; when it fails the uplink moves on to the next in the list
    /// (round robin). Names are resolved at each connection attempt.
    pub collectors: Vec<String>,
    /// Name every collector's certificate must carry.
    pub server_name: String,
    /// This sampler's client certificate and the CA that signs the
    /// collector's.
    pub tls: TlsFiles,
    /// Directory of the on-disk spool of batches not yet acknowledged.
    pub spool_dir: PathBuf,
    /// Spool size limit, bytes; when full the oldest batches are dropped and
    /// counted.
    pub spool_max_bytes: u64,
    /// Give up on a collector acknowledgement, or on a connection handshake,
    /// after this long and retry (with the next collector, if there are
    /// several), ms.
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
            agent_heartbeat_secs: 5,
        }
    }
}

impl Default for SamplerUplink {
    fn default() -> Self {
        SamplerUplink {
            collectors: vec![String::from("127.0.0.1:4433")],
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
    const LIST_KEYS: &'static [&'static str] = &["ingest.listen", "uplink.collectors"];

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
        c.range(
            "aggregate.agent_heartbeat_secs",
            agg.agent_heartbeat_secs,
            1..=3_600,
            "seconds",
        );
        let up = &self.uplink;
        c.check(
            !up.collectors.is_empty(),
            "uplink.collectors",
            "[]",
            "one or more collectors as \"host:port\", such as \"collector1.example:4433\"",
        );
        for (i, entry) in up.collectors.iter().enumerate() {
            let key = format!("uplink.collectors[{i}]");
            if !is_host_port(entry) {
                c.check(false, &key, format_args!("{entry:?}"), COLLECTOR_FORM);
            } else if let Some(first) = up.collectors[..i].iter().position(|e| e == entry) {
                // A repeat would only make failover try the same collector twice.
                let expected = format!("each collector once (it is also uplink.collectors[{first}])");
                c.check(false, &key, format_args!("{entry:?}"), &expected);
            }
        }
        c.check(
            !up.server_name.is_empty(),
            "uplink.server_name",
            "\"\"",
            "the DNS name in the collectors' certificates",
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

/// What an entry of `uplink.collectors` must look like.
const COLLECTOR_FORM: &str = "\"host:port\" with a port from 1 to 65535 and an IPv4 address, an IPv6 address in \
                              brackets or a DNS name, such as \"collector1.example:4433\", \"198.18.0.1:4433\" or \
                              \"[fd00::1]:4433\"";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    /// A valid configuration but for `collectors`, loaded through the
    /// environment as a deployment would set it.
    fn load(collectors: &str) -> Result<SamplerConfig, String> {
        let env = [
            ("FLOWMESH_SAMPLER_SAMPLER_ID", "1"),
            ("FLOWMESH_SAMPLER_RACK", "rack1"),
            ("FLOWMESH_SAMPLER_UPLINK__COLLECTORS", collectors),
        ];
        SamplerConfig::load_with_env(None, env.map(|(k, v)| (k.to_string(), v.to_string()))).map_err(|e| e.to_string())
    }

    #[test]
    fn collectors_accept_addresses_and_host_names() {
        let entries = [
            "198.18.0.1:4433",
            "[fd00::1]:4433",
            "[::1]:1",
            "localhost:4433",
            "collector-1.dc1.example:65535",
            "flowmesh-collector-0.flowmesh-collector.flowmesh.svc.cluster.local.:4433",
            "_quic.collector:4433",
        ];
        for entry in entries {
            assert!(is_host_port(entry), "{entry}");
        }
        let config = load(&entries.join(",")).unwrap();
        assert_eq!(config.uplink.collectors, entries);
    }

    #[test]
    fn collector_entries_without_host_or_port_are_refused() {
        let entries = [
            "",
            "collector",
            "collector:",
            ":4433",
            "collector:0",
            "collector:65536",
            "collector:+4433",
            "collector:http",
            "198.18.0.1",
            "198.18.0.300:4433",
            "fd00::1:4433",
            "[fd00::1]",
            "[fd00::1]:0",
            "-collector:4433",
            "collector..dc:4433",
            "collector dc:4433",
            "https://collector:4433",
        ];
        for entry in entries {
            assert!(!is_host_port(entry), "{entry:?} accepted");
        }
    }

    #[test]
    fn a_bad_collector_is_named_with_its_key_on_one_line() {
        let err = load("198.18.0.1:4433,collector.dc1").unwrap_err();
        assert_eq!(
            err,
            format!("sampler configuration: uplink.collectors[1] = \"collector.dc1\": expected {COLLECTOR_FORM}")
        );
        assert_eq!(err.lines().count(), 1);

        let err = load("[fd00::1]:4433,collector:4433,[fd00::1]:4433").unwrap_err();
        assert_eq!(
            err,
            "sampler configuration: uplink.collectors[2] = \"[fd00::1]:4433\": expected each collector once \
             (it is also uplink.collectors[0])"
        );
    }

    #[test]
    fn an_empty_collector_list_is_refused() {
        let mut config = SamplerConfig {
            sampler_id: 1,
            rack: "rack1".into(),
            ..SamplerConfig::default()
        };
        assert!(config.validate().is_empty());
        config.uplink.collectors.clear();
        let problems: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "uplink.collectors = []: expected one or more collectors as \"host:port\", such as \"collector1.example:4433\""
            ]
        );
    }

    #[test]
    fn the_default_is_the_local_collector_and_the_old_key_is_refused() {
        assert_eq!(SamplerUplink::default().collectors, ["127.0.0.1:4433"]);
        let err = toml::from_str::<SamplerConfig>("[uplink]\ncollector = \"127.0.0.1:4433\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `collector`"), "{err}");
    }
}
