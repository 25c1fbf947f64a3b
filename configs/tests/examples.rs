//! The example files load, document every key, and bad input is refused with
//! the key and the expected form.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use configs::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Dotted keys of every leaf value in a TOML table.
fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => keys(inner, &full, out),
            _ => {
                out.insert(full);
            }
        }
    }
}

fn key_set(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    keys(&text.parse::<toml::Table>().unwrap(), "", &mut out);
    out
}

/// Loads the example, checks it documents every default key (commented-out
/// optional keys aside), and that the defaults print and parse back.
fn check_example<C: Component + PartialEq + std::fmt::Debug>(file: &str) -> C {
    let path = example(file);
    let loaded = C::load_with_env(Some(&path), no_env()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let documented = key_set(&std::fs::read_to_string(&path).unwrap());
    let defaults = key_set(&C::default_toml());
    let missing: Vec<_> = defaults.difference(&documented).collect();
    assert!(missing.is_empty(), "{file} does not document {missing:?}");
    let reparsed: C = toml::from_str(&C::default_toml()).unwrap();
    assert_eq!(
        reparsed,
        C::default(),
        "{}: default config does not round-trip",
        C::NAME
    );
    loaded
}

#[test]
fn agent_example() {
    let agent: AgentConfig = check_example("agent.toml");
    assert_eq!(agent.node_id, 101);
    assert_eq!(agent.uplink, AgentUplink::default());
}

#[test]
fn sampler_example() {
    let sampler: SamplerConfig = check_example("sampler.toml");
    assert_eq!(sampler.rack, "rack1");
    assert_eq!(sampler.aggregate, Aggregation::default());
}

#[test]
fn collector_example() {
    let collector: CollectorConfig = check_example("collector.toml");
    assert_eq!(collector, CollectorConfig::default());
}

#[test]
fn analyzer_example() {
    let analyzer: AnalyzerConfig = check_example("analyzer.toml");
    assert_eq!(analyzer, AnalyzerConfig::default());
}

#[test]
fn topology_example() {
    let topology = Topology::load(&example("topology.toml")).unwrap();
    assert_eq!(topology.racks().len(), 2);
    assert_eq!(topology.nodes().len(), 6);
    assert_eq!(topology.nodes_in_rack(1).count(), 3);
    // The example agent and sampler refer to things the example topology has.
    let agent: AgentConfig = AgentConfig::load_with_env(Some(&example("agent.toml")), no_env()).unwrap();
    assert!(topology.node(agent.node_id).is_some());
    let sampler: SamplerConfig = SamplerConfig::load_with_env(Some(&example("sampler.toml")), no_env()).unwrap();
    assert!(topology.rack_by_name(&sampler.rack).is_some());
}

#[test]
fn environment_overrides_the_file() {
    let env = vec![
        ("FLOWMESH_AGENT_UPLINK__FLUSH_MS".to_string(), "50".to_string()),
        ("FLOWMESH_AGENT_PROBES__ENABLED".to_string(), "false".to_string()),
        // Another component's variables are not the agent's business.
        ("FLOWMESH_SAMPLER_RACK".to_string(), "rack9".to_string()),
    ];
    let agent = AgentConfig::load_with_env(Some(&example("agent.toml")), env).unwrap();
    assert_eq!(agent.uplink.flush_ms, 50);
    assert!(!agent.probes.enabled);

    let env = vec![
        ("FLOWMESH_SAMPLER_SAMPLER_ID".to_string(), "4".to_string()),
        ("FLOWMESH_SAMPLER_RACK".to_string(), "rack2".to_string()),
        (
            "FLOWMESH_SAMPLER_INGEST__LISTEN".to_string(),
            "127.0.0.1:6001,[::1]:6001".to_string(),
        ),
    ];
    let sampler = SamplerConfig::load_with_env(None, env).unwrap();
    assert_eq!(sampler.sampler_id, 4);
    assert_eq!(
        sampler.ingest.listen,
        vec!["127.0.0.1:6001".parse().unwrap(), "[::1]:6001".parse().unwrap()]
    );
}

#[test]
fn missing_required_keys_are_named() {
    let err = AgentConfig::load_with_env(None, no_env()).unwrap_err().to_string();
    assert_eq!(
        err,
        "agent configuration: node_id = 0: expected this host's node id from the topology file (1 or more), \
         or node_name set to its name there"
    );
    let err = SamplerConfig::load_with_env(None, no_env()).unwrap_err().to_string();
    assert!(err.contains("sampler_id = 0") && err.contains("rack = \"\""), "{err}");
}

#[test]
fn out_of_range_values_name_key_and_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "agent.toml",
        "node_id = 1\n[uplink]\nflush_ms = 0\n[flows]\nring_buffer_bytes = 1000\n",
    );
    let err = AgentConfig::load_with_env(Some(&path), no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("uplink.flush_ms = 0: expected milliseconds from 1 to 60000"),
        "{err}"
    );
    assert!(
        err.contains("flows.ring_buffer_bytes = 1000: expected a power of two from 4096 to 1073741824"),
        "{err}"
    );
}

#[test]
fn wrong_types_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "agent.toml", "node_id = 1\n[uplink]\nflush_ms = \"fast\"\n");
    let err = AgentConfig::load_with_env(Some(&path), no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("flush_ms"), "{err}");

    let path = write(&dir, "agent2.toml", "node_id = 1\n[uplink]\nflush_msec = 10\n");
    let err = AgentConfig::load_with_env(Some(&path), no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("flush_msec"), "{err}");

    let path = write(
        &dir,
        "sampler.toml",
        "sampler_id = 1\nrack = \"r\"\n[uplink]\ncollectors = \"nowhere\"\n",
    );
    let err = SamplerConfig::load_with_env(Some(&path), no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("collector"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let err = CollectorConfig::load_with_env(Some(Path::new("/nonexistent/collector.toml")), no_env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/collector.toml"), "{err}");
}

/// The topology file with one line replaced.
fn topology_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(example("topology.toml")).unwrap();
    assert!(text.contains(from), "example topology has no {from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn duplicate_node_id_names_the_key() {
    let text = topology_with("id = 102\n", "id = 101\n");
    let err = Topology::parse(&text, Path::new("topo.toml")).unwrap_err().to_string();
    assert_eq!(
        err,
        "topology topo.toml: nodes[1] (\"r1n2\").id: 101 is used by an earlier node; expected a unique id"
    );
}

#[test]
fn malformed_address_names_the_key_and_the_form() {
    let text = topology_with("\"198.18.1.2\"", "\"198.18.1.300\"");
    let err = Topology::parse(&text, Path::new("topo.toml")).unwrap_err().to_string();
    assert_eq!(
        err,
        "topology topo.toml: nodes[1] (\"r1n2\").addresses[0]: \"198.18.1.300\" is not an IP address; \
         expected an IPv4 address such as \"198.18.1.1\" or an IPv6 address such as \"fd00::1:1\""
    );
}

#[test]
fn duplicate_address_and_unknown_rack_are_named() {
    let text = topology_with("\"198.18.1.2\"", "\"198.18.1.1\"");
    let err = Topology::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
    assert!(
        err.contains("nodes[1] (\"r1n2\").addresses[0]: 198.18.1.1 is also an address of node 101"),
        "{err}"
    );
    let text = topology_with("rack = \"rack2\"", "rack = \"rack7\"");
    let err = Topology::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
    assert!(
        err.contains("nodes[3] (\"r2n1\").rack: \"rack7\" is not a rack; expected the name of a rack in [[racks]]"),
        "{err}"
    );
}

#[test]
fn syntax_errors_carry_file_and_position() {
    let err = Topology::parse("[[nodes]]\nid = \"one\"\n", Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "topology t.toml: line 2, column 6: `id = \"one\"`: invalid type: string \"one\", expected u32"
    );
    let err = Topology::load(Path::new("/nonexistent/topology.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/topology.toml: cannot read"), "{err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[test]
fn shared_flags_parse() {
    let cli = Cli::try_parse_from(["bin", "--print-default-config"]).unwrap();
    assert!(cli.config.print_default_config);
    // Printing returns None so the binary exits without loading.
    assert!(cli.config.load_or_print::<CollectorConfig>().unwrap().is_none());
    let path = example("collector.toml");
    let cli = Cli::try_parse_from(["bin", "-c", path.to_str().unwrap()]).unwrap();
    assert_eq!(cli.config.config.as_deref(), Some(path.as_path()));
    assert_eq!(
        cli.config.load_or_print::<CollectorConfig>().unwrap(),
        Some(CollectorConfig::default())
    );
}
