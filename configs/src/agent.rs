//! `flowmesh-agent`: the per-host agent that traces TCP flows with eBPF,
//! probes its peers and sends records to its rack's sampler.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::component::{Checks, Component, Invalid, MetricsEndpoint};
use crate::host_port::HostPort;

/// Smallest datagram that holds a header and one flow record.
const MIN_DATAGRAM: usize = 24 + 104;

/// Configuration of `flowmesh-agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's node id in the topology file. Required unless
    /// `node_name` is set (0 is not an id).
    pub node_id: u32,
    /// This host's node name in the topology file, looked up when `node_id`
    /// is 0: one configuration for every host, e.g. a Kubernetes DaemonSet
    /// setting `FLOWMESH_AGENT_NODE_NAME` from the node's name.
    pub node_name: Option<String>,
    /// The topology file; SIGHUP reloads it.
    pub topology: PathBuf,
    /// Where and how records are sent.
    pub uplink: AgentUplink,
    /// TCP flow tracing with eBPF.
    pub flows: FlowTracing,
    /// Pingmesh-style probing of peers.
    pub probes: Probing,
    /// Prometheus and health endpoint.
    pub metrics: MetricsEndpoint,
}

/// How the agent batches records into UDP datagrams for its sampler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentUplink {
    /// The rack sampler's UDP address, `host:port` with an IP address or a
    /// DNS name (such as a Kubernetes Service's). A name is resolved when
    /// the agent starts sending, again after a failed send and every 30 s,
    /// so a sampler that moves behind its name is followed. Unset: the
    /// `sampler` of this node's rack in the topology file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<HostPort>,
    /// A second sampler that receives a copy of every datagram (for a
    /// redundant sampler pair), `host:port` like `sampler`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_sampler: Option<HostPort>,
    /// Largest datagram to send, bytes. 1472 fits a 1500-byte MTU over IPv4
    /// without fragmentation; use 1452 on IPv6 paths.
    pub max_datagram_bytes: usize,
    /// Send a partly filled datagram after this long, ms.
    pub flush_ms: u64,
    /// Cap on records per datagram; 0 means as many as fit.
    pub batch_size: usize,
    /// Send an empty datagram after this long without records, so the sampler
    /// can tell an idle agent from a dead one, seconds.
    pub heartbeat_secs: u64,
    /// Most datagrams sent per second: a host agent must never flood its
    /// network. Over it, datagrams are dropped and counted (their sequence
    /// numbers are used, so the sampler sees the gap as lost telemetry).
    pub max_datagrams_per_sec: u32,
}

/// eBPF flow tracing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowTracing {
    /// Report flows that stay open this often, seconds.
    pub report_open_secs: u64,
    /// Report an open flow whose retransmission counter grew within this
    /// long of the retransmission, ms, so the sampler counts it in the
    /// window it happened in (not at the next open report or the close);
    /// 0 leaves retransmissions to those.
    pub retrans_report_ms: u64,
    /// Open flows tracked at once (the agent's table, joining each flow's
    /// end with its establishment); beyond it new flows are counted as
    /// dropped.
    pub max_tracked_flows: u32,
    /// Kernel → agent ring buffer size, bytes; a power of two, at least one
    /// page.
    pub ring_buffer_bytes: u32,
    /// Processes tracked by the per-process connect counters.
    pub max_tracked_processes: u32,
    /// Trace only sockets of processes in this cgroup v2 directory (e.g. one
    /// container or simulated host). Unset: every socket on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// Trace only sockets in this network namespace (a path such as
    /// `/run/netns/NAME` or `/proc/PID/ns/net`), together with `cgroup`.
    /// Unset: every namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// Probing of peers chosen from the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Probing {
    /// Whether this agent probes (it always answers probes while running).
    pub enabled: bool,
    /// UDP port of the probe responder on every node.
    pub port: u16,
    /// Interval between probes to one target, ms.
    pub interval_ms: u64,
    /// A probe without a reply after this long is lost, ms.
    pub timeout_ms: u64,
    /// Nodes probed in each other rack at a time.
    pub inter_rack_peers: u32,
    /// How often the inter-rack peer choice rotates, seconds.
    pub rotate_secs: u64,
    /// Cap on probes sent per second by this node, all targets together.
    pub max_probes_per_sec: u32,
    /// DSCP probes are sent with, 0–63.
    pub dscp: u8,
    /// Probe peers over RDMA UD too, where this host and the peer have an
    /// RDMA NIC (needs an agent built with the `rdma` feature and the
    /// node's `rdma_gids` in the topology).
    pub rdma: bool,
    /// Q_Key of the RDMA UD probe queue pairs, the same on every node
    /// (high bit clear).
    pub rdma_qkey: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_id: 0,
            node_name: None,
            topology: PathBuf::from("/etc/flowmesh/topology.toml"),
            uplink: AgentUplink::default(),
            flows: FlowTracing::default(),
            probes: Probing::default(),
            metrics: MetricsEndpoint {
                listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            },
        }
    }
}

impl Default for AgentUplink {
    fn default() -> Self {
        AgentUplink {
            sampler: None,
            secondary_sampler: None,
            max_datagram_bytes: 1472,
            flush_ms: 200,
            batch_size: 0,
            heartbeat_secs: 5,
            max_datagrams_per_sec: 5_000,
        }
    }
}

impl Default for FlowTracing {
    fn default() -> Self {
        FlowTracing {
            report_open_secs: 30,
            retrans_report_ms: 1_000,
            max_tracked_flows: 65_536,
            ring_buffer_bytes: 1 << 20,
            max_tracked_processes: 4_096,
            cgroup: None,
            netns: None,
        }
    }
}

impl Default for Probing {
    fn default() -> Self {
        Probing {
            enabled: true,
            port: 7788,
            interval_ms: 1_000,
            timeout_ms: 1_000,
            inter_rack_peers: 4,
            rotate_secs: 60,
            max_probes_per_sec: 200,
            dscp: 0,
            rdma: true,
            // "FMPR".
            rdma_qkey: 0x464d_5052,
        }
    }
}

impl Component for AgentConfig {
    const NAME: &'static str = "agent";
    const ENV_PREFIX: &'static str = "FLOWMESH_AGENT";

    fn validate(&self) -> Vec<Invalid> {
        let mut c = Checks::default();
        c.check(
            self.node_id != 0 || self.node_name.as_deref().is_some_and(|n| !n.is_empty()),
            "node_id",
            self.node_id,
            "this host's node id from the topology file (1 or more), or node_name set to its name there",
        );
        c.path("topology", &self.topology);
        let up = &self.uplink;
        c.range(
            "uplink.max_datagram_bytes",
            up.max_datagram_bytes,
            MIN_DATAGRAM..=65_507,
            "bytes",
        );
        c.range("uplink.flush_ms", up.flush_ms, 1..=60_000, "milliseconds");
        c.range(
            "uplink.batch_size",
            up.batch_size,
            0..=65_535,
            "records (0 = as many as fit)",
        );
        c.range("uplink.heartbeat_secs", up.heartbeat_secs, 1..=3_600, "seconds");
        c.range(
            "uplink.max_datagrams_per_sec",
            up.max_datagrams_per_sec,
            1..=1_000_000,
            "datagrams per second",
        );
        if let (Some(a), Some(b)) = (&up.sampler, &up.secondary_sampler) {
            c.check(
                a != b,
                "uplink.secondary_sampler",
                format_args!("{:?}", b.as_str()),
                "an address other than uplink.sampler",
            );
        }
        let fl = &self.flows;
        c.range("flows.report_open_secs", fl.report_open_secs, 1..=86_400, "seconds");
        c.check(
            fl.retrans_report_ms == 0 || (10..=60_000).contains(&fl.retrans_report_ms),
            "flows.retrans_report_ms",
            fl.retrans_report_ms,
            "milliseconds from 10 to 60000, or 0 to report retransmissions only with the open report and the close",
        );
        c.range(
            "flows.max_tracked_flows",
            fl.max_tracked_flows,
            1..=16_777_216,
            "entries",
        );
        c.check(
            fl.ring_buffer_bytes.is_power_of_two() && (4_096..=1 << 30).contains(&fl.ring_buffer_bytes),
            "flows.ring_buffer_bytes",
            fl.ring_buffer_bytes,
            "a power of two from 4096 to 1073741824",
        );
        c.range(
            "flows.max_tracked_processes",
            fl.max_tracked_processes,
            1..=1_048_576,
            "entries",
        );
        let pr = &self.probes;
        c.range("probes.port", pr.port, 1..=65_535, "a UDP port");
        c.range("probes.interval_ms", pr.interval_ms, 10..=3_600_000, "milliseconds");
        c.range("probes.timeout_ms", pr.timeout_ms, 1..=60_000, "milliseconds");
        c.range("probes.rotate_secs", pr.rotate_secs, 1..=86_400, "seconds");
        c.range(
            "probes.max_probes_per_sec",
            pr.max_probes_per_sec,
            1..=100_000,
            "probes per second",
        );
        c.range("probes.dscp", pr.dscp, 0..=63, "a DSCP value");
        c.check(
            pr.rdma_qkey != 0 && pr.rdma_qkey < 0x8000_0000,
            "probes.rdma_qkey",
            pr.rdma_qkey,
            "a Q_Key from 1 to 2147483647 (the high bit marks privileged keys)",
        );
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retrans_report_ms(ms: u64) -> Vec<Invalid> {
        let mut config = AgentConfig {
            node_id: 1,
            ..AgentConfig::default()
        };
        config.flows.retrans_report_ms = ms;
        config.validate()
    }

    /// A valid configuration with these `uplink` lines, loaded as a file
    /// (named agent.toml in the message).
    fn with_uplink(lines: &str) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("node_id = 1\n[uplink]\n{lines}\n")).map_err(|e| e.to_string())?;
        AgentConfig::load_with_env(Some(&path), Vec::new())
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "agent.toml"))
    }

    #[test]
    fn samplers_are_addresses_or_host_names_with_a_port() {
        let config = with_uplink("sampler = \"localhost:5001\"\nsecondary_sampler = \"[::1]:5002\"").unwrap();
        assert_eq!(
            config.uplink.sampler.as_ref().map(HostPort::as_str),
            Some("localhost:5001")
        );
        assert_eq!(
            config.uplink.secondary_sampler.and_then(|s| s.socket_addr()),
            Some("[::1]:5002".parse().unwrap())
        );
        let config = with_uplink("sampler = \"flowmesh-sampler-rack1.flowmesh.svc:5001\"").unwrap();
        assert_eq!(config.uplink.sampler.and_then(|s| s.socket_addr()), None);

        // Neither IP:port nor host:port: one line naming the key, the value and the form.
        for (line, key, value) in [
            ("sampler = \"localhost\"", "uplink.sampler", "\"localhost\""),
            (
                "secondary_sampler = \"sampler:0\"",
                "uplink.secondary_sampler",
                "\"sampler:0\"",
            ),
            (
                "sampler = \"http://sampler:5001\"",
                "uplink.sampler",
                "\"http://sampler:5001\"",
            ),
        ] {
            let error = with_uplink(line).unwrap_err();
            assert_eq!(
                error,
                format!(
                    "agent configuration in agent.toml: line 3, column {}: {key} = {value}: expected {}",
                    line.find('"').unwrap() + 1,
                    crate::host_port::HOST_PORT_FORM
                )
            );
        }
        let error = with_uplink("sampler = \"s:5001\"\nsecondary_sampler = \"s:5001\"").unwrap_err();
        assert_eq!(
            error,
            "agent configuration in agent.toml: uplink.secondary_sampler = \"s:5001\": expected an address other than uplink.sampler"
        );
    }

    #[test]
    fn retrans_report_ms_is_off_or_from_10_ms_to_a_minute() {
        assert_eq!(AgentConfig::default().flows.retrans_report_ms, 1_000);
        for ok in [0, 10, 1_000, 60_000] {
            assert!(with_retrans_report_ms(ok).is_empty(), "{ok} refused");
        }
        for bad in [1, 9, 60_001] {
            let invalid = with_retrans_report_ms(bad);
            assert_eq!(invalid.len(), 1, "{bad}: {invalid:?}");
            let message = invalid[0].to_string();
            assert!(message.contains("flows.retrans_report_ms"), "{message}");
            assert!(message.contains("or 0"), "{message}");
        }
    }
}
