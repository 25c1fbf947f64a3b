//! Configuration of every flowmesh daemon and CLI, and the topology file.
//!
//! Each component has one serde struct ([`AgentConfig`], [`SamplerConfig`],
//! [`CollectorConfig`], [`AnalyzerConfig`]) with its defaults in its
//! `Default` impl. [`Component::load`] reads an optional TOML file, applies
//! `FLOWMESH_<COMPONENT>_…` environment overrides on top, refuses unknown keys
//! and then validates ranges, so every mistake is reported with the key, the
//! value and the form expected. `configs/examples/` holds a commented example
//! of each file; a test keeps them in step with the structs.
//!
//! The [`Topology`] file lists racks and nodes; it is the one source of truth
//! for probe peers, a sampler's rack and fault localization.
//!
//! Where an agent sends (`uplink.sampler`, a rack's `sampler`) is a
//! [`HostPort`]: `host:port` with an IP address or a DNS name, checked for
//! its form here and resolved by the agent when it sends.
//!
//! What the binaries share at run time — exit codes, logging, the metrics
//! endpoint, signals, TLS and the development PKI — is `configs-runtime`
//! (configs/runtime), so a tool that needs only configuration links none of
//! it.

mod agent;
mod analyzer;
mod collector;
mod component;
mod host_port;
mod sampler;
mod storage;
mod topology;

pub use agent::{AgentConfig, AgentUplink, FlowTracing, Probing};
pub use analyzer::{AnalyzerConfig, Detection, Incidents, Localization, ResultsEndpoint};
pub use collector::{Authorize, CollectorConfig};
pub use component::{Component, ConfigArgs, ConfigError, Invalid, MetricsEndpoint, Since, TlsFiles};
pub use host_port::{HostPort, NotHostPort};
pub use sampler::{Aggregation, Ingest, SamplerConfig, SamplerUplink};
pub use storage::{Backend, ClickHouseStorage, Storage};
pub use topology::{Node, Problem, Rack, Topology, TopologyError};
