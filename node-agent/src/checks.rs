//! Start-up checks: everything the agent needs from the kernel and its
//! privileges, and this host's identity in the topology file, each failure
//! with its own exit code and a message that says what to run or change.
//! All of them run before any program is loaded or socket opened, so an
//! agent that would trace under a wrong identity never starts.
//!
//! bpffs and tracefs are deliberately not required: the agent pins no
//! object (so none of it outlives the process, even after `kill -9`) and
//! attaches BTF tracepoints, which are found in the kernel's BTF, not in
//! tracefs, so it works whether or not either is mounted.

use std::path::{Path, PathBuf};

use configs::{AgentConfig, HostPort, Topology, TopologyError};

/// A start-up requirement that is not met.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Missing privileges.
    #[error(
        "missing capabilities {missing}: run as root, or grant them with `setcap cap_bpf,cap_perfmon,cap_net_admin+ep $(command -v flowmesh-agent)` (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN)"
    )]
    Capabilities {
        /// The capabilities lacking, by name.
        missing: String,
    },
    /// The kernel has no BTF.
    #[error("no BTF at /sys/kernel/btf/vmlinux: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    /// No cgroup v2 hierarchy to attach to.
    #[error(
        "no cgroup v2 hierarchy found in /proc/self/mountinfo: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`, or set flows.cgroup"
    )]
    NoCgroup2,
    /// The configured cgroup is not a cgroup v2 directory.
    #[error("flows.cgroup {}: not a cgroup v2 directory (no cgroup.procs in it)", .0.display())]
    BadCgroup(PathBuf),
    /// The kernel is older than the programs need: BTF tracepoints calling
    /// socket helpers (5.12) and a cgroup pointer in each socket (5.15).
    #[error("kernel {found} is too old: flowmesh-agent needs Linux 5.15 or newer")]
    KernelTooOld {
        /// The running kernel's release.
        found: String,
    },
    /// The topology file does not load, so this host's identity cannot be
    /// checked against it.
    #[error("{source} (the agent checks {key} = {value} against it before it starts)")]
    Topology {
        /// `node_id` or `node_name`.
        key: &'static str,
        /// Its configured value, as written in the configuration.
        value: String,
        /// Why the file does not load.
        source: TopologyError,
    },
    /// `node_id` (or `node_name`) names no node of the topology file.
    #[error("{key} = {value} is not a node of {} (nodes: {nodes})", .topology.display())]
    NotInTopology {
        /// `node_id` or `node_name`.
        key: &'static str,
        /// Its configured value, as written in the configuration.
        value: String,
        /// The topology file.
        topology: PathBuf,
        /// The nodes the file has, abridged.
        nodes: String,
    },
    /// Nowhere to send records: no `uplink.sampler`, no sampler for the
    /// node's rack in the topology, and no `--debug`.
    #[error(
        "no sampler address for node {node_id}: set uplink.sampler, or `sampler` of its rack {rack:?} in {}, or run with --debug",
        .topology.display()
    )]
    NoSampler {
        /// This host's node id.
        node_id: u32,
        /// The name of its rack.
        rack: String,
        /// The topology file.
        topology: PathBuf,
    },
}

impl CheckError {
    /// The process exit code for this failure (distinct per cause; 1 is
    /// every other error).
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckError::Capabilities { .. } => 10,
            CheckError::NoBtf => 11,
            CheckError::NoCgroup2 | CheckError::BadCgroup(_) => 12,
            CheckError::KernelTooOld { .. } => 13,
            CheckError::Topology { .. } | CheckError::NotInTopology { .. } => 14,
            CheckError::NoSampler { .. } => 15,
        }
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Which of the needed capabilities are missing from `effective`.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON on any kernel.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The cgroup v2 mounts of a mountinfo text: (root within the hierarchy,
/// mount point) each.
fn cgroup2_mounts(mountinfo: &str) -> impl Iterator<Item = (&str, PathBuf)> {
    mountinfo.lines().filter_map(|line| {
        // Fields: ... root (4th), mount point (5th) ... " - " fstype source options.
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace().skip(3);
        let (root, mount) = (fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| (root, PathBuf::from(mount)))
    })
}

/// The mount point of the cgroup v2 hierarchy, from a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    cgroup2_mounts(mountinfo).next().map(|(_, mount)| mount)
}

/// Whether `cgroup` is the root of the whole cgroup v2 hierarchy: a cgroup2
/// mount point whose root is `/` (the root of a cgroup namespace, or a
/// bind-mounted subtree, is not).
pub fn is_cgroup2_global_root(mountinfo: &str, cgroup: &Path) -> bool {
    cgroup2_mounts(mountinfo).any(|(root, mount)| root == "/" && mount == cgroup)
}

/// `major.minor` of a kernel release string such as `6.18.44-fc`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs every check; returns the cgroup to attach to.
pub fn run(cgroup: Option<&Path>) -> Result<PathBuf, CheckError> {
    let missing = missing_capabilities(effective_capabilities());
    if !missing.is_empty() {
        return Err(CheckError::Capabilities {
            missing: missing.join(", "),
        });
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match kernel_version(release.trim()) {
        Some(v) if v >= (5, 15) => {}
        _ => {
            return Err(CheckError::KernelTooOld {
                found: release.trim().to_string(),
            });
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CheckError::NoBtf);
    }
    let cgroup = match cgroup {
        Some(path) => path.to_path_buf(),
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            cgroup2_mount(&mountinfo).ok_or(CheckError::NoCgroup2)?
        }
    };
    if !cgroup.join("cgroup.procs").exists() {
        return Err(CheckError::BadCgroup(cgroup));
    }
    Ok(cgroup)
}

/// This host as the topology file knows it.
#[derive(Debug)]
pub struct Identity {
    /// This host's node id, from `node_id` or looked up by `node_name`.
    pub node_id: u32,
    /// The topology file, loaded once for the checks and the probes.
    pub topology: Topology,
}

/// Loads the topology file and finds this host in it: the node `node_id`
/// names, or (with `node_id` 0) the node called `node_name`.
pub fn identity(config: &AgentConfig) -> Result<Identity, CheckError> {
    let (key, value) = if config.node_id != 0 {
        ("node_id", config.node_id.to_string())
    } else {
        (
            "node_name",
            format!("{:?}", config.node_name.as_deref().unwrap_or_default()),
        )
    };
    let topology = Topology::load(&config.topology).map_err(|source| CheckError::Topology {
        key,
        value: value.clone(),
        source,
    })?;
    let found = if config.node_id != 0 {
        topology.node(config.node_id).map(|n| n.id)
    } else {
        let name = config.node_name.as_deref().unwrap_or_default();
        topology.nodes().iter().find(|n| n.name == name).map(|n| n.id)
    };
    match found {
        Some(node_id) => Ok(Identity { node_id, topology }),
        None => Err(CheckError::NotInTopology {
            key,
            nodes: if config.node_id != 0 {
                node_ids(&topology)
            } else {
                node_names(&topology)
            },
            value,
            topology: config.topology.clone(),
        }),
    }
}

/// The primary sampler: `uplink.sampler`, else the `sampler` of this node's
/// rack in the topology (either an address or a name, resolved later, when
/// the agent sends). `None` is allowed only with a secondary sampler to
/// send to or with `debug` (records printed, not sent).
pub fn sampler(config: &AgentConfig, identity: &Identity, debug: bool) -> Result<Option<HostPort>, CheckError> {
    let rack = identity
        .topology
        .node(identity.node_id)
        .and_then(|n| identity.topology.rack(n.rack));
    let sampler = config
        .uplink
        .sampler
        .clone()
        .or_else(|| rack.and_then(|r| r.sampler.clone()));
    if sampler.is_none() && config.uplink.secondary_sampler.is_none() && !debug {
        return Err(CheckError::NoSampler {
            node_id: identity.node_id,
            rack: rack.map(|r| r.name.clone()).unwrap_or_default(),
            topology: config.topology.clone(),
        });
    }
    Ok(sampler)
}

/// Most runs or names listed in a message; a topology of thousands of nodes
/// must still give one readable line.
const LISTED: usize = 8;

/// The topology's node ids for a message, consecutive ids as ranges:
/// `101..=104, 201..=204, 301`, abridged with the count after `LISTED` runs.
fn node_ids(topology: &Topology) -> String {
    let mut ids: Vec<u32> = topology.nodes().iter().map(|n| n.id).collect();
    ids.sort_unstable();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => runs.push((id, id)),
        }
    }
    let listed: Vec<String> = runs
        .iter()
        .take(LISTED)
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}..={last}")
            }
        })
        .collect();
    abridged(listed, runs.len(), topology.nodes().len())
}

/// The topology's node names for a message, in file order, abridged with
/// the count after `LISTED` names.
fn node_names(topology: &Topology) -> String {
    let names: Vec<String> = topology
        .nodes()
        .iter()
        .take(LISTED)
        .map(|n| format!("{:?}", n.name))
        .collect();
    abridged(names, topology.nodes().len(), topology.nodes().len())
}

/// `listed` joined, with `… N in all` when `total_items` were more than
/// listed; `none` for an empty topology.
fn abridged(listed: Vec<String>, total_items: usize, nodes: usize) -> String {
    if nodes == 0 {
        return "none".to_string();
    }
    let more = total_items > listed.len();
    let mut text = listed.join(", ");
    if more {
        text.push_str(&format!(", … {nodes} in all"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF | 1 << CAP_PERFMON), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn cgroup2_is_found_in_hybrid_and_unified_layouts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("36 25 0:31 / /x rw - ext4 /dev/sda rw\n"), None);
        assert!(is_cgroup2_global_root(unified, Path::new("/sys/fs/cgroup")));
        assert!(!is_cgroup2_global_root(unified, Path::new("/sys/fs/cgroup/x")));
        let namespaced = "30 24 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(!is_cgroup2_global_root(namespaced, Path::new("/sys/fs/cgroup")));
    }

    fn topology(nodes: &[(u32, &str)]) -> Topology {
        let mut text = String::from(
            "[[racks]]\nid = 1\nname = \"rack1\"\n[[racks]]\nid = 2\nname = \"rack2\"\nsampler = \"198.18.2.254:5001\"\n",
        );
        for (i, (id, name)) in nodes.iter().enumerate() {
            text.push_str(&format!(
                "[[nodes]]\nid = {id}\nname = \"{name}\"\nrack = \"rack{}\"\naddresses = [\"198.18.0.{i}\"]\n",
                id / 100
            ));
        }
        Topology::parse(&text, Path::new("topology.toml")).unwrap()
    }

    fn config(node_id: u32, node_name: Option<&str>) -> AgentConfig {
        AgentConfig {
            node_id,
            node_name: node_name.map(str::to_string),
            topology: PathBuf::from("/etc/flowmesh/topology.toml"),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn node_ids_are_listed_as_runs_and_abridged() {
        let t = topology(&[(201, "c"), (101, "a"), (102, "b"), (103, "d"), (105, "e")]);
        assert_eq!(node_ids(&t), "101..=103, 105, 201");
        let many: Vec<(u32, String)> = (0..20).map(|i| (100 + 2 * i, format!("n{i}"))).collect();
        let many: Vec<(u32, &str)> = many.iter().map(|(id, n)| (*id, n.as_str())).collect();
        let t = topology(&many);
        assert_eq!(node_ids(&t), "100, 102, 104, 106, 108, 110, 112, 114, … 20 in all");
        assert_eq!(
            node_names(&t),
            "\"n0\", \"n1\", \"n2\", \"n3\", \"n4\", \"n5\", \"n6\", \"n7\", … 20 in all"
        );
        assert_eq!(node_ids(&topology(&[])), "none");
    }

    #[test]
    fn the_message_names_the_key_the_value_and_the_file() {
        let error = CheckError::NotInTopology {
            key: "node_id",
            value: "999".into(),
            topology: PathBuf::from("/etc/flowmesh/topology.toml"),
            nodes: node_ids(&topology(&[(101, "a"), (102, "b")])),
        };
        assert_eq!(
            error.to_string(),
            "node_id = 999 is not a node of /etc/flowmesh/topology.toml (nodes: 101..=102)"
        );
        assert_eq!(error.exit_code(), 14);
    }

    #[test]
    fn a_missing_topology_file_names_the_file_and_the_identity() {
        let mut config = config(101, None);
        config.topology = PathBuf::from("/nonexistent/flowmesh/topology.toml");
        let error = identity(&config).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("topology /nonexistent/flowmesh/topology.toml: cannot read")
                && message.ends_with("(the agent checks node_id = 101 against it before it starts)"),
            "{message}"
        );
        assert_eq!(error.exit_code(), 14);
    }

    #[test]
    fn the_sampler_comes_from_the_config_or_the_rack_and_its_absence_is_named() {
        let with = |node_id| Identity {
            node_id,
            topology: topology(&[(101, "a"), (201, "b")]),
        };
        // Rack 1 has no sampler; rack 2 has one.
        let error = sampler(&config(101, None), &with(101), false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no sampler address for node 101: set uplink.sampler, or `sampler` of its rack \"rack1\" in /etc/flowmesh/topology.toml, or run with --debug"
        );
        assert_eq!(error.exit_code(), 15);
        assert_eq!(sampler(&config(101, None), &with(101), true).unwrap(), None);
        assert_eq!(
            sampler(&config(201, None), &with(201), false).unwrap(),
            Some("198.18.2.254:5001".parse().unwrap())
        );
        let mut set = config(201, None);
        set.uplink.sampler = Some("127.0.0.1:5001".parse().unwrap());
        assert_eq!(sampler(&set, &with(201), false).unwrap(), set.uplink.sampler);
        let mut secondary = config(101, None);
        secondary.uplink.secondary_sampler = Some("127.0.0.1:5002".parse().unwrap());
        assert_eq!(sampler(&secondary, &with(101), false).unwrap(), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
