//! Values of the wrong type are refused, in the file and in environment
//! overrides, for every key of every component, with the key, the value and
//! the type expected on one line (for the file, with line and column);
//! environment text is still read as the key's type. Errors print once: none
//! has a source that repeats it.
//!
//! One conversion is left, the `config` crate's reading of words in the
//! environment: `true`/`on`/`yes` and `false`/`off`/`no` are 1 and 0 for an
//! integer key, and `1`/`0` are true and false for a boolean key.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::error::Error as _;
use std::path::{Path, PathBuf};

use configs::*;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The message of loading `text` as `C`'s file, which must fail, with the
/// file called c.toml.
fn refused<C: Component + std::fmt::Debug>(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", text);
    let err = C::load_with_env(Some(&path), Vec::new()).unwrap_err();
    let message = err.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    message.replace(&path.display().to_string(), "c.toml")
}

const SAMPLER: &str = "sampler_id = 1\nrack = \"rack1\"\n";

#[test]
fn the_issues_window_secs_examples_are_refused() {
    for (value, written) in [("2.7", "2.7"), ("true", "true"), ("\"2\"", "\"2\"")] {
        let text = format!("{SAMPLER}[aggregate]\nwindow_secs = {value}\n");
        assert_eq!(
            refused::<SamplerConfig>(&text),
            format!(
                "sampler configuration in c.toml: line 4, column 15: aggregate.window_secs = {written}: \
                 expected an integer, 0 or more"
            )
        );
    }
}

#[test]
fn the_issues_database_example_is_refused() {
    assert_eq!(
        refused::<AnalyzerConfig>("database = 5\n"),
        "analyzer configuration in c.toml: line 1, column 12: database = 5: expected a path (a string)"
    );
}

#[test]
fn other_wrong_types_name_key_value_and_type() {
    let cases: &[(&str, &str)] = &[
        (
            "node_id = 1\n[probes]\nport = 70000\n",
            "probes.port = 70000: expected an integer from 0 to 65535",
        ),
        (
            "node_id = 1\n[probes]\nenabled = 1\n",
            "probes.enabled = 1: expected true or false",
        ),
        (
            "node_id = -1\n",
            "node_id = -1: expected an integer from 0 to 4294967295",
        ),
        ("node_id = 1\nnode_name = 7\n", "node_name = 7: expected a string"),
        (
            "node_id = 1\n[uplink]\nsampler = \"nowhere\"\n",
            "uplink.sampler = \"nowhere\": expected \"host:port\" with a port from 1 to 65535 and an IPv4 \
             address, an IPv6 address in brackets or a DNS name, such as \"sampler1.example:5001\", \
             \"198.18.1.254:5001\" or \"[fd00::1:fe]:5001\"",
        ),
        ("node_id = 1\nuplink = 5\n", "uplink = 5: expected a table"),
        (
            "node_id = 1\n[flows]\ncgroup = [\"/sys/fs/cgroup\"]\n",
            "flows.cgroup = [\"/sys/fs/cgroup\"]: expected a path (a string)",
        ),
        (
            "node_id = 1\ntopology = 1979-05-27\n",
            "topology = 1979-05-27: expected a path (a string)",
        ),
    ];
    for (text, expected) in cases {
        let message = refused::<AgentConfig>(text);
        assert!(message.starts_with("agent configuration in c.toml: line "), "{message}");
        assert!(message.ends_with(&format!(": {expected}")), "{message}");
    }
    assert_eq!(
        refused::<AnalyzerConfig>("[detect]\nloss_rate = \"0.02\"\n"),
        "analyzer configuration in c.toml: line 2, column 13: detect.loss_rate = \"0.02\": expected a number"
    );
    assert_eq!(
        refused::<CollectorConfig>("[storage]\nbackend = \"mysql\"\n"),
        "collector configuration in c.toml: line 2, column 11: storage.backend = \"mysql\": \
         expected \"sqlite\" or \"clickhouse\""
    );
    assert_eq!(
        refused::<CollectorConfig>("[storage.clickhouse]\nshard_urls = [\"http://a:8123\", 8123]\n"),
        "collector configuration in c.toml: line 2, column 32: storage.clickhouse.shard_urls[1] = 8123: \
         expected a string"
    );
    assert_eq!(
        refused::<SamplerConfig>(&format!("{SAMPLER}[uplink]\ncollectors = \"c:4433\"\n")),
        "sampler configuration in c.toml: line 4, column 14: uplink.collectors = \"c:4433\": expected an array"
    );
    assert_eq!(
        refused::<CollectorConfig>("retention_dayz = 3\n"),
        "collector configuration in c.toml: line 1, column 1: retention_dayz = 3: expected one of the keys listen, \
         socket_buffer_bytes, tls, database, storage, topology, authorize, authorize_any_signed_sampler, retention_days, \
         max_pending_batches, batches_per_transaction, metrics"
    );
}

#[test]
fn an_integer_is_a_number() {
    // TOML tells 1 from 1.0, but a fraction written as 1 means 1.0.
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "a.toml", "[detect]\nloss_rate = 1\nmad_k = 5\n");
    let analyzer = AnalyzerConfig::load_with_env(Some(&path), Vec::new()).unwrap();
    assert_eq!(analyzer.detect.loss_rate, 1.0);
    assert_eq!(analyzer.detect.mad_k, 5.0);
}

/// A TOML value of each kind the `wrong` function below can choose from.
fn wrong_values(right: &toml::Value) -> Vec<toml::Value> {
    use toml::Value::*;
    let table = Table(toml::Table::from_iter([("a".to_string(), Integer(1))]));
    match right {
        Integer(_) => vec![Float(2.7), Boolean(true), String("2".into()), table],
        // An integer is taken for a number (see above), nothing else is.
        Float(_) => vec![Boolean(true), String("0.5".into()), table],
        Boolean(_) => vec![Integer(1), String("true".into()), table],
        String(_) => vec![Integer(5), Boolean(true), Float(2.7), Array(vec![]), table],
        Array(items) => {
            let mut wrong = vec![String("x".into()), Integer(5), table];
            // Wrong items too: each kind of item gets a value of another kind.
            let item = items.first().cloned().unwrap_or(String("x".into()));
            wrong.extend(wrong_values(&item).into_iter().map(|w| Array(vec![w])));
            wrong
        }
        Table(_) => vec![Integer(5), String("x".into())],
        Datetime(_) => unreachable!("no configuration key is a date"),
    }
}

/// Every leaf key (dotted) of `table` with its value; arrays are leaves.
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (key, value) in table {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let toml::Value::Table(inner) = value {
            leaves(inner, &full, out);
        }
        out.push((full, value.clone()));
    }
}

fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((first, rest)) => {
            let inner = table
                .entry(first)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            set(inner.as_table_mut().unwrap(), rest, value);
        }
    }
}

/// For every key of `C` (its defaults and its `optional` keys, which default
/// to unset), every value of a wrong type is refused, naming the key (or the
/// array item) and the value.
fn every_key_refuses_wrong_types<C: Component + std::fmt::Debug>(base: &str, optional: &[(&str, toml::Value)]) {
    let defaults: toml::Table = C::default_toml().parse().unwrap();
    let mut keys = Vec::new();
    leaves(&defaults, "", &mut keys);
    keys.extend(optional.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (key, right) in keys {
        for wrong in wrong_values(&right) {
            let mut table: toml::Table = base.parse().unwrap();
            set(&mut table, &key, wrong.clone());
            let path = write(&dir, "c.toml", &table.to_string());
            let err = C::load_with_env(Some(&path), Vec::new()).unwrap_err();
            let message = err.to_string();
            let ConfigError::Value { problem, origin, .. } = err else {
                panic!("{key} = {wrong}: {message}");
            };
            assert!(
                origin.starts_with(&format!("in {}: line ", path.display())),
                "{message}"
            );
            // An array with one wrong item is reported at the item.
            let (at, written) = match (&right, &wrong) {
                (toml::Value::Array(_), toml::Value::Array(items)) => (format!("{key}[0]"), items[0].to_string()),
                _ => (key.clone(), wrong.to_string()),
            };
            assert_eq!(problem.key, at, "{message}");
            assert_eq!(problem.value, written, "{message}");
            assert!(!problem.expected.is_empty(), "{message}");
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(
                message.ends_with(&format!("{at} = {written}: expected {}", problem.expected)),
                "{message}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{} checked only {checked} values", C::NAME);
}

#[test]
fn every_sampler_key_refuses_wrong_types() {
    every_key_refuses_wrong_types::<SamplerConfig>(SAMPLER, &[]);
}

#[test]
fn every_collector_key_refuses_wrong_types() {
    let optional = [("topology", toml::Value::String("/etc/flowmesh/topology.toml".into()))];
    every_key_refuses_wrong_types::<CollectorConfig>("", &optional);
}

#[test]
fn every_analyzer_key_refuses_wrong_types() {
    every_key_refuses_wrong_types::<AnalyzerConfig>("", &[]);
}

#[test]
fn every_agent_key_refuses_wrong_types() {
    let optional = [
        ("node_name", toml::Value::String("r1n1".into())),
        ("uplink.sampler", toml::Value::String("198.18.1.254:5001".into())),
        (
            "uplink.secondary_sampler",
            toml::Value::String("198.18.1.253:5001".into()),
        ),
        ("flows.cgroup", toml::Value::String("/sys/fs/cgroup/x".into())),
        ("flows.netns", toml::Value::String("/run/netns/x".into())),
    ];
    every_key_refuses_wrong_types::<AgentConfig>("node_id = 1\n", &optional);
}

#[test]
fn environment_text_is_read_as_the_keys_type() {
    let sampler = SamplerConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_SAMPLER_SAMPLER_ID", "4"),
            ("FLOWMESH_SAMPLER_RACK", "rack2"),
            ("FLOWMESH_SAMPLER_AGGREGATE__WINDOW_SECS", "5"),
            ("FLOWMESH_SAMPLER_AGGREGATE__GRACE_MS", "1000"),
            ("FLOWMESH_SAMPLER_INGEST__LISTEN", "127.0.0.1:6001, [::1]:6001"),
            ("FLOWMESH_SAMPLER_UPLINK__COLLECTORS", "c1.example:4433,198.18.0.1:4433"),
            ("FLOWMESH_SAMPLER_UPLINK__SPOOL_DIR", "/tmp/spool"),
        ]),
    )
    .unwrap();
    assert_eq!(sampler.sampler_id, 4);
    assert_eq!(sampler.rack, "rack2");
    assert_eq!(sampler.aggregate.window_secs, 5);
    assert_eq!(sampler.aggregate.grace_ms, 1_000);
    assert_eq!(
        sampler.ingest.listen,
        vec!["127.0.0.1:6001".parse().unwrap(), "[::1]:6001".parse().unwrap()]
    );
    assert_eq!(sampler.uplink.collectors, ["c1.example:4433", "198.18.0.1:4433"]);
    assert_eq!(sampler.uplink.spool_dir, Path::new("/tmp/spool"));

    // Booleans in any case, optional keys (unset by default), numbers that
    // look like other things: a name of digits stays a name.
    let agent = AgentConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_AGENT_NODE_NAME", "101"),
            ("FLOWMESH_AGENT_PROBES__ENABLED", "FALSE"),
            ("FLOWMESH_AGENT_PROBES__RDMA", "true"),
            ("FLOWMESH_AGENT_PROBES__PORT", "7789"),
            ("FLOWMESH_AGENT_UPLINK__SAMPLER", "198.18.1.254:5001"),
            ("FLOWMESH_AGENT_FLOWS__CGROUP", "/sys/fs/cgroup/x"),
        ]),
    )
    .unwrap();
    assert_eq!(agent.node_name.as_deref(), Some("101"));
    assert!(!agent.probes.enabled && agent.probes.rdma);
    assert_eq!(agent.probes.port, 7789);
    assert_eq!(agent.uplink.sampler, Some("198.18.1.254:5001".parse().unwrap()));

    assert_eq!(agent.flows.cgroup.as_deref(), Some(Path::new("/sys/fs/cgroup/x")));
    // A sampler by name, from the environment as from a file.
    let named = AgentConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_AGENT_NODE_ID", "1"),
            (
                "FLOWMESH_AGENT_UPLINK__SAMPLER",
                "flowmesh-sampler-rack1.flowmesh.svc:5001",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(
        named.uplink.sampler.as_ref().map(HostPort::as_str),
        Some("flowmesh-sampler-rack1.flowmesh.svc:5001")
    );
    let err = AgentConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_AGENT_NODE_ID", "1"),
            ("FLOWMESH_AGENT_UPLINK__SAMPLER", "sampler.svc"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "agent configuration from environment variable FLOWMESH_AGENT_UPLINK__SAMPLER: \
             uplink.sampler = \"sampler.svc\": expected \"host:port\""
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    // Fractions, enums, and a list no component used to declare as one.
    let analyzer = AnalyzerConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_ANALYZER_DETECT__LOSS_RATE", "0.05"),
            ("FLOWMESH_ANALYZER_DETECT__MAD_K", "3"),
            ("FLOWMESH_ANALYZER_DATABASE", "5"),
            ("FLOWMESH_ANALYZER_STORAGE__BACKEND", "clickhouse"),
            (
                "FLOWMESH_ANALYZER_STORAGE__CLICKHOUSE__SHARD_URLS",
                "http://ch-0:8123,http://ch-1:8123",
            ),
            ("FLOWMESH_ANALYZER_STORAGE__CLICKHOUSE__PASSWORD", "12345"),
        ]),
    )
    .unwrap();
    assert_eq!(analyzer.detect.loss_rate, 0.05);
    assert_eq!(analyzer.detect.mad_k, 3.0);
    // From the environment every value is text, so a path of digits is fine.
    assert_eq!(analyzer.database, Path::new("5"));
    assert_eq!(analyzer.storage.backend, Backend::Clickhouse);
    assert_eq!(
        analyzer.storage.clickhouse.shard_urls,
        ["http://ch-0:8123", "http://ch-1:8123"]
    );
    assert_eq!(analyzer.storage.clickhouse.password, "12345");

    // An empty list is empty (and then refused by validation, here).
    let err = SamplerConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_SAMPLER_SAMPLER_ID", "4"),
            ("FLOWMESH_SAMPLER_RACK", "rack2"),
            ("FLOWMESH_SAMPLER_UPLINK__COLLECTORS", ""),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("uplink.collectors = []"), "{err}");
}

#[test]
fn environment_overrides_the_file_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "s.toml",
        &format!("{SAMPLER}[aggregate]\nwindow_secs = 10\nmax_paths = 7\n"),
    );
    let sampler =
        SamplerConfig::load_with_env(Some(&path), env(&[("flowmesh_sampler_aggregate__window_secs", "20")])).unwrap();
    assert_eq!(sampler.aggregate.window_secs, 20);
    assert_eq!(sampler.aggregate.max_paths, 7);
}

/// The message of loading `C` with no file and `pairs`, which must fail.
fn env_refused<C: Component + std::fmt::Debug>(pairs: &[(&str, &str)]) -> String {
    let err = C::load_with_env(None, env(pairs)).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Value { origin, .. } if origin.starts_with("from environment variable ")),
        "{err}"
    );
    let message = err.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    message
}

#[test]
fn environment_text_that_is_not_the_keys_type_is_refused() {
    let base = [("FLOWMESH_SAMPLER_SAMPLER_ID", "1"), ("FLOWMESH_SAMPLER_RACK", "rack1")];
    for value in ["abc", "2.7", "-1", ""] {
        let mut pairs = base.to_vec();
        pairs.push(("FLOWMESH_SAMPLER_AGGREGATE__WINDOW_SECS", value));
        assert_eq!(
            env_refused::<SamplerConfig>(&pairs),
            format!(
                "sampler configuration from environment variable FLOWMESH_SAMPLER_AGGREGATE__WINDOW_SECS: \
                 aggregate.window_secs = \"{value}\": expected an integer, 0 or more"
            )
        );
    }
    assert_eq!(
        env_refused::<AgentConfig>(&[
            ("FLOWMESH_AGENT_NODE_ID", "1"),
            ("FLOWMESH_AGENT_PROBES__ENABLED", "maybe")
        ]),
        "agent configuration from environment variable FLOWMESH_AGENT_PROBES__ENABLED: \
         probes.enabled = \"maybe\": expected true or false"
    );
    assert_eq!(
        env_refused::<AnalyzerConfig>(&[("FLOWMESH_ANALYZER_DETECT__LOSS_RATE", "2%")]),
        "analyzer configuration from environment variable FLOWMESH_ANALYZER_DETECT__LOSS_RATE: \
         detect.loss_rate = \"2%\": expected a number"
    );
    let mut pairs = base.to_vec();
    pairs.push(("FLOWMESH_SAMPLER_INGEST__LISTEN", "127.0.0.1:6001,nowhere"));
    assert_eq!(
        env_refused::<SamplerConfig>(&pairs),
        "sampler configuration from environment variable FLOWMESH_SAMPLER_INGEST__LISTEN: \
         ingest.listen[1] = \"nowhere\": expected an address and port such as \"127.0.0.1:4433\" or \"[::1]:4433\""
    );
    assert_eq!(
        env_refused::<CollectorConfig>(&[("FLOWMESH_COLLECTOR_STORAGE", "clickhouse")]),
        "collector configuration from environment variable FLOWMESH_COLLECTOR_STORAGE: \
         storage = \"clickhouse\": expected a table"
    );
    assert_eq!(
        env_refused::<CollectorConfig>(&[("FLOWMESH_COLLECTOR_RETENTION", "3")]),
        "collector configuration from environment variable FLOWMESH_COLLECTOR_RETENTION: retention = \"3\": \
         expected one of the keys listen, socket_buffer_bytes, tls, database, storage, topology, authorize, authorize_any_signed_sampler, \
         retention_days, max_pending_batches, batches_per_transaction, metrics"
    );
    assert_eq!(
        env_refused::<AgentConfig>(&[
            ("FLOWMESH_AGENT_NODE_ID", "1"),
            ("FLOWMESH_AGENT_PROBES__PORT", "70000")
        ]),
        "agent configuration from environment variable FLOWMESH_AGENT_PROBES__PORT: \
         probes.port = \"70000\": expected an integer from 0 to 65535"
    );
    assert_eq!(
        env_refused::<CollectorConfig>(&[("FLOWMESH_COLLECTOR_STORAGE__BACKEND", "mysql")]),
        "collector configuration from environment variable FLOWMESH_COLLECTOR_STORAGE__BACKEND: \
         storage.backend = \"mysql\": expected \"sqlite\" or \"clickhouse\""
    );
    assert_eq!(
        env_refused::<CollectorConfig>(&[("FLOWMESH_COLLECTOR_STORAGE__FOO", "3")]),
        "collector configuration from environment variable FLOWMESH_COLLECTOR_STORAGE__FOO: \
         storage.foo = \"3\": expected one of the keys backend, clickhouse"
    );
    // A table only the environment made is still blamed on it.
    assert_eq!(
        env_refused::<CollectorConfig>(&[("FLOWMESH_COLLECTOR_DATABASE__PATH", "/x.db")]),
        "collector configuration from environment variable FLOWMESH_COLLECTOR_DATABASE__PATH: \
         database = { path = \"/x.db\" }: expected a path (a string)"
    );
}

/// The one conversion left: the `config` crate reads words in the
/// environment as numbers and numbers as booleans.
#[test]
fn environment_words_are_read_as_numbers_and_numbers_as_booleans() {
    let agent = AgentConfig::load_with_env(
        None,
        env(&[
            ("FLOWMESH_AGENT_NODE_ID", "yes"),
            ("FLOWMESH_AGENT_PROBES__ENABLED", "0"),
            ("FLOWMESH_AGENT_PROBES__RDMA", "on"),
        ]),
    )
    .unwrap();
    assert_eq!(agent.node_id, 1);
    assert!(!agent.probes.enabled && agent.probes.rdma);
}

#[test]
fn syntax_errors_are_one_line_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", "listen = \"0.0.0.0:4433\"\n  foo bar = 1\n");
    let err = CollectorConfig::load_with_env(Some(&path), Vec::new()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "collector configuration in {}: line 2, column 7: `foo bar = 1`: key with no value, expected `=`",
            path.display()
        )
    );
    // Nothing to quote at the end of the file.
    let path = write(&dir, "d.toml", "[metrics\n");
    let message = CollectorConfig::load_with_env(Some(&path), Vec::new())
        .unwrap_err()
        .to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("line 1, column 9"), "{message}");
}

#[test]
fn no_error_repeats_itself_through_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let errors = [
        CollectorConfig::load_with_env(Some(Path::new("/nonexistent/c.toml")), Vec::new()).unwrap_err(),
        CollectorConfig::load_with_env(Some(&write(&dir, "a.toml", "x =\n")), Vec::new()).unwrap_err(),
        CollectorConfig::load_with_env(Some(&write(&dir, "b.toml", "listen = 5\n")), Vec::new()).unwrap_err(),
        CollectorConfig::load_with_env(Some(&write(&dir, "c.toml", "retention_days = 0\n")), Vec::new()).unwrap_err(),
    ];
    for err in errors {
        let message = err.to_string();
        assert!(err.source().is_none(), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    // The topology file's read error, likewise, says its cause once.
    let err = Topology::load(Path::new("/nonexistent/topology.toml")).unwrap_err();
    assert!(err.source().is_none(), "{err}");
    let err = CollectorConfig::load_with_env(Some(Path::new("/nonexistent/c.toml")), Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "collector configuration in /nonexistent/c.toml: cannot read: No such file or directory (os error 2)"
    );
}
