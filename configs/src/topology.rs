//! The topology file: racks and their nodes.
//!
//! ```toml
//! [[racks]]
//! id = 1
//! name = "rack1"
//! sampler = "198.18.1.254:5001"   # optional: where this rack's agents send
//!                                  # ("host:port"; a DNS name is resolved by the agent)
//!
//! [[nodes]]
//! id = 101
//! name = "r1n1"
//! rack = "rack1"
//! addresses = ["198.18.1.1", "fd00::1:1"]
//! rdma_gids = ["fe80::1"]          # optional
//! ```
//!
//! Loading checks everything and reports every problem at once, each naming
//! the file, the key (`nodes[2].addresses[0]`) and the form expected.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::host_port::{HOST_PORT_FORM, HostPort};

/// A rack: the unit a rack switch (ToR) and one sampler serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rack {
    /// Rack id, 1 or more, unique.
    pub id: u32,
    /// Rack name, unique.
    pub name: String,
    /// UDP address of the rack's sampler, if the file names one:
    /// `host:port` with an IP address or a DNS name (such as the sampler's
    /// Kubernetes Service), which each agent resolves.
    pub sampler: Option<HostPort>,
}

/// A node: one server with an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node id, 1 or more, unique. (0 means "outside the topology" on the
    /// wire.)
    pub id: u32,
    /// Node name, unique.
    pub name: String,
    /// Id of the node's rack.
    pub rack: u32,
    /// The node's IP addresses, at least one; unique across nodes.
    pub addresses: Vec<IpAddr>,
    /// RDMA GIDs of the node's RDMA NICs, if any; unique across nodes.
    pub rdma_gids: Vec<[u8; 16]>,
}

/// A validated topology with lookups by id and address.
#[derive(Debug, Clone)]
pub struct Topology {
    racks: Vec<Rack>,
    nodes: Vec<Node>,
    node_index: HashMap<u32, usize>,
    rack_index: HashMap<u32, usize>,
    address_index: HashMap<IpAddr, u32>,
}

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `nodes[2].addresses[0]`, with the node's or rack's name when
    /// known.
    pub key: String,
    /// What is wrong and the form expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a topology file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("topology {}: cannot read: {error}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, so not returned as the source).
        error: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("topology {}: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// Parsed, but inconsistent.
    #[error("topology {}: {}", .path.display(), .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    racks: Vec<RawRack>,
    #[serde(default)]
    nodes: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRack {
    id: u32,
    name: String,
    sampler: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: u32,
    name: String,
    rack: String,
    addresses: Vec<String>,
    #[serde(default)]
    rdma_gids: Vec<String>,
}

const ADDRESS_FORM: &str = "an IPv4 address such as \"198.18.1.1\" or an IPv6 address such as \"fd00::1:1\"";

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|error| TopologyError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Topology::parse(&text, path)
    }

    /// Validates topology text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Topology, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::Syntax {
            path: path.to_path_buf(),
            message: crate::component::syntax_message(text, &e),
        })?;
        build(raw).map_err(|problems| TopologyError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Every rack, in file order.
    pub fn racks(&self) -> &[Rack] {
        &self.racks
    }

    /// Every node, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with id `id`.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.node_index.get(&id).map(|&i| &self.nodes[i])
    }

    /// The rack with id `id`.
    pub fn rack(&self, id: u32) -> Option<&Rack> {
        self.rack_index.get(&id).map(|&i| &self.racks[i])
    }

    /// The rack named `name`.
    pub fn rack_by_name(&self, name: &str) -> Option<&Rack> {
        self.racks.iter().find(|r| r.name == name)
    }

    /// The id of the node that owns `address`. IPv4-mapped IPv6 addresses
    /// match their IPv4 form.
    pub fn node_by_address(&self, address: IpAddr) -> Option<u32> {
        self.address_index.get(&address.to_canonical()).copied()
    }

    /// The nodes of rack `rack`, in file order.
    pub fn nodes_in_rack(&self, rack: u32) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.rack == rack)
    }
}

fn build(raw: RawTopology) -> Result<Topology, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(Problem { key, message });

    let mut racks = Vec::with_capacity(raw.racks.len());
    let mut rack_index = HashMap::new();
    let mut rack_names: HashMap<&str, u32> = HashMap::new();
    for (i, r) in raw.racks.iter().enumerate() {
        let key = format!("racks[{i}] ({:?})", r.name);
        if r.id == 0 {
            problem(format!("{key}.id"), "is 0; expected a rack id of 1 or more".into());
        } else if rack_index.insert(r.id, i).is_some() {
            problem(
                format!("{key}.id"),
                format!("{} is used by an earlier rack; expected a unique id", r.id),
            );
        }
        if r.name.trim().is_empty() {
            problem(format!("{key}.name"), "is empty; expected a unique rack name".into());
        } else if rack_names.insert(&r.name, r.id).is_some() {
            problem(
                format!("{key}.name"),
                "is used by an earlier rack; expected a unique name".into(),
            );
        }
        let sampler = r.sampler.as_deref().and_then(|s| match s.parse::<HostPort>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    format!("{key}.sampler"),
                    format!("{s:?} is not an address and port; expected {HOST_PORT_FORM}"),
                );
                None
            }
        });
        racks.push(Rack {
            id: r.id,
            name: r.name.clone(),
            sampler,
        });
    }

    let mut nodes = Vec::with_capacity(raw.nodes.len());
    let mut node_index = HashMap::new();
    let mut node_names: HashMap<&str, ()> = HashMap::new();
    let mut address_index: HashMap<IpAddr, u32> = HashMap::new();
    let mut gid_owner: HashMap<[u8; 16], u32> = HashMap::new();
    for (i, n) in raw.nodes.iter().enumerate() {
        let key = format!("nodes[{i}] ({:?})", n.name);
        if n.id == 0 {
            problem(format!("{key}.id"), "is 0; expected a node id of 1 or more".into());
        } else if node_index.insert(n.id, i).is_some() {
            problem(
                format!("{key}.id"),
                format!("{} is used by an earlier node; expected a unique id", n.id),
            );
        }
        if n.name.trim().is_empty() {
            problem(format!("{key}.name"), "is empty; expected a unique node name".into());
        } else if node_names.insert(&n.name, ()).is_some() {
            problem(
                format!("{key}.name"),
                "is used by an earlier node; expected a unique name".into(),
            );
        }
        let rack = rack_names.get(n.rack.as_str()).copied().unwrap_or_else(|| {
            problem(
                format!("{key}.rack"),
                format!("{:?} is not a rack; expected the name of a rack in [[racks]]", n.rack),
            );
            0
        });
        if n.addresses.is_empty() {
            problem(
                format!("{key}.addresses"),
                format!("is empty; expected one or more of {ADDRESS_FORM}"),
            );
        }
        let mut addresses = Vec::with_capacity(n.addresses.len());
        for (j, text) in n.addresses.iter().enumerate() {
            let key = format!("{key}.addresses[{j}]");
            match text.parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = ip.to_canonical();
                    match address_index.insert(ip, n.id) {
                        Some(owner) if owner != n.id => problem(
                            key,
                            format!("{ip} is also an address of node {owner}; expected unique addresses"),
                        ),
                        Some(_) => problem(key, format!("{ip} is listed twice")),
                        None => {}
                    }
                    addresses.push(ip);
                }
                Err(_) => problem(key, format!("{text:?} is not an IP address; expected {ADDRESS_FORM}")),
            }
        }
        let mut rdma_gids = Vec::with_capacity(n.rdma_gids.len());
        for (j, text) in n.rdma_gids.iter().enumerate() {
            let key = format!("{key}.rdma_gids[{j}]");
            match text.parse::<Ipv6Addr>() {
                Ok(gid) => {
                    if let Some(owner) = gid_owner.insert(gid.octets(), n.id) {
                        problem(
                            key,
                            format!("{gid} is also a GID of node {owner}; expected unique GIDs"),
                        );
                    }
                    rdma_gids.push(gid.octets());
                }
                Err(_) => problem(
                    key,
                    format!("{text:?} is not a GID; expected IPv6 notation such as \"fe80::a288:b4ff:fe5c:1\""),
                ),
            }
        }
        nodes.push(Node {
            id: n.id,
            name: n.name.clone(),
            rack,
            addresses,
            rdma_gids,
        });
    }

    if problems.is_empty() {
        Ok(Topology {
            racks,
            nodes,
            node_index,
            rack_index,
            address_index,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[racks]]
        id = 1
        name = "rack1"
        sampler = "198.18.1.254:5001"
        [[racks]]
        id = 2
        name = "rack2"

        [[nodes]]
        id = 101
        name = "r1n1"
        rack = "rack1"
        addresses = ["198.18.1.1", "fd00::1:1"]
        rdma_gids = ["fe80::1"]
        [[nodes]]
        id = 201
        name = "r2n1"
        rack = "rack2"
        addresses = ["198.18.2.1"]
    "#;

    fn parse(text: &str) -> Result<Topology, TopologyError> {
        Topology::parse(text, Path::new("topology.toml"))
    }

    #[test]
    fn lookups() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.racks().len(), 2);
        assert_eq!(t.node(101).unwrap().rack, 1);
        assert_eq!(t.rack(1).unwrap().sampler, Some("198.18.1.254:5001".parse().unwrap()));
        assert_eq!(t.rack_by_name("rack2").unwrap().id, 2);
        assert_eq!(t.node_by_address("fd00::1:1".parse().unwrap()), Some(101));
        assert_eq!(t.node_by_address("::ffff:198.18.2.1".parse().unwrap()), Some(201));
        assert_eq!(t.node_by_address("198.18.9.9".parse().unwrap()), None);
        assert_eq!(t.nodes_in_rack(2).map(|n| n.id).collect::<Vec<_>>(), vec![201]);
        assert_eq!(t.node(101).unwrap().rdma_gids.len(), 1);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = parse("[[racks]]\nid = 1\nname = \"a\"\nswitch = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("topology.toml") && msg.contains("switch"), "{msg}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = parse(
            r#"
            [[racks]]
            id = 0
            name = "a"
            sampler = "nowhere"
            [[nodes]]
            id = 1
            name = "n"
            rack = "b"
            addresses = []
            "#,
        )
        .unwrap_err();
        let TopologyError::Invalid { problems, .. } = &err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "racks[0] (\"a\").id",
                "racks[0] (\"a\").sampler",
                "nodes[0] (\"n\").rack",
                "nodes[0] (\"n\").addresses"
            ]
        );
        assert_eq!(
            problems[1].message,
            format!("\"nowhere\" is not an address and port; expected {HOST_PORT_FORM}")
        );
    }

    #[test]
    fn a_racks_sampler_may_be_a_host_name() {
        let t = parse(&GOOD.replace("198.18.1.254:5001", "flowmesh-sampler-rack1.flowmesh.svc:5001")).unwrap();
        let sampler = t.rack(1).unwrap().sampler.as_ref().unwrap();
        assert_eq!(sampler.as_str(), "flowmesh-sampler-rack1.flowmesh.svc:5001");
        assert_eq!(sampler.socket_addr(), None);
        for bad in ["flowmesh-sampler-rack1.flowmesh.svc", "sampler:0", "198.18.1.300:5001"] {
            let err = parse(&GOOD.replace("198.18.1.254:5001", bad)).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("racks[0] (\"rack1\").sampler: {bad:?}")),
                "{err}"
            );
        }
    }
}
