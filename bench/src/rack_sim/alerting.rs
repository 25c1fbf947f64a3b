//! The operators' stack in the simulation (`--prometheus`): the analyzer's
//! `watch` serving its findings as metrics, Prometheus scraping every
//! daemon and evaluating the shipped rules (deploy/prometheus/), a real
//! Alertmanager (Debian's prometheus-alertmanager) routing what fires to a
//! webhook receiver in this process, which records every notification;
//! and, at the end, every Grafana panel's query (deploy/grafana/) run over
//! the simulation's time range.
//!
//! The receiver is a plain HTTP/1.1 listener on the spine (bound from a
//! thread inside the spine's namespace, so Alertmanager reaches it at the
//! spine's address); Alertmanager posts one JSON document per notification.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Simulation;
use super::daemons::{Daemons, get, metrics_targets};
use super::namespaces::{Network, SPINE_IP, in_netns};

/// The analyzer's `watch` metrics port, on the spine.
pub(super) const ANALYZER_METRICS_PORT: u16 = 9104;
/// Alertmanager's port, on the spine.
const ALERTMANAGER_PORT: u16 = 9093;
/// The webhook receiver's port, on the spine.
const WEBHOOK_PORT: u16 = 9095;
/// Prometheus's port, on the spine.
pub(super) const PROMETHEUS_PORT: u16 = 9090;
/// How often Prometheus scrapes and evaluates the rules; also how often
/// `watch` analyzes. An alert can lag the analyzer's report by one of each
/// (and Alertmanager's group wait).
pub(super) const EVALUATION_INTERVAL: Duration = Duration::from_secs(1);

/// The repository's deploy/ directory: the shipped rules and dashboards
/// are what the simulation runs, not copies.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// One alert of one notification.
#[derive(Debug, Clone)]
pub(super) struct Notice {
    /// When the notification arrived.
    pub(super) received: Instant,
    /// `firing` or `resolved`.
    pub(super) status: String,
    /// The alert's labels (`alertname`, `element`, …).
    pub(super) labels: BTreeMap<String, String>,
}

impl Notice {
    /// `alertname element` (or `alertname` alone).
    pub(super) fn describe(&self) -> String {
        let name = self.labels.get("alertname").map_or("?", String::as_str);
        match self.labels.get("element").or_else(|| self.labels.get("host")) {
            Some(element) => format!("{name} {element} ({})", self.status),
            None => format!("{name} ({})", self.status),
        }
    }
}

/// The webhook receiver: records every alert Alertmanager posts.
pub(super) struct Alerting {
    notices: Arc<Mutex<Vec<Notice>>>,
    /// Unparsable requests, for the end checks.
    malformed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// When the simulation's Prometheus started (the dashboards' range).
    pub(super) started: std::time::SystemTime,
    /// The same instant, for notices' times.
    pub(super) started_at: Instant,
}

impl Drop for Alerting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Alerting {
    /// Starts the receiver, Alertmanager, `flowmesh-analyzer watch` (with
    /// `analyzer_config`) and Prometheus with the shipped rules.
    pub(super) fn start(sim: &mut Simulation, analyzer_config: &Path) -> anyhow::Result<Alerting> {
        let listener = in_netns(&sim.net.spine(), || {
            TcpListener::bind((SPINE_IP, WEBHOOK_PORT)).context("binding the webhook receiver")
        })?;
        listener.set_nonblocking(true)?;
        let notices = Arc::new(Mutex::new(Vec::new()));
        let malformed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (notices, malformed, stop) = (notices.clone(), malformed.clone(), stop.clone());
            std::thread::Builder::new()
                .name("webhook".into())
                .spawn(move || receive(&listener, &notices, &malformed, &stop))?
        };
        let alerting = Alerting {
            notices,
            malformed,
            stop,
            thread: Some(thread),
            started: std::time::SystemTime::now(),
            started_at: Instant::now(),
        };
        let daemons = &mut sim.daemons;
        start_alertmanager(daemons, &sim.net)?;
        let listen = SocketAddr::from((SPINE_IP, ANALYZER_METRICS_PORT)).to_string();
        let watch = [
            "--config",
            &analyzer_config.display().to_string(),
            "watch",
            "--since",
            "2m",
            "--interval-secs",
            &EVALUATION_INTERVAL.as_secs().to_string(),
            "--metrics-listen",
            &listen,
        ]
        .map(String::from);
        let program = daemons.bin.join("flowmesh-analyzer");
        daemons.spawn("analyzer-watch", &sim.net.spine(), &program, &watch)?;
        start_prometheus(daemons, &sim.net)?;
        Ok(alerting)
    }

    /// Every alert received so far.
    pub(super) fn notices(&self) -> Vec<Notice> {
        self.notices.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Requests the receiver could not read.
    pub(super) fn malformed(&self) -> Vec<String> {
        self.malformed.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The first notice at or after `since` with `status` for an alert
    /// named one of `names` whose `element` label is `element`.
    pub(super) fn find(&self, since: Instant, status: &str, names: &[&str], element: &str) -> Option<Notice> {
        self.notices().into_iter().find(|n| {
            n.received >= since
                && n.status == status
                && n.labels.get("element").is_some_and(|e| e == element)
                && n.labels.get("alertname").is_some_and(|a| names.contains(&a.as_str()))
        })
    }

    /// The latest notification received since `since` about one of `names`
    /// for `element`, firing or resolved: where that alert stands now.
    pub(super) fn latest(&self, since: Instant, names: &[&str], element: &str) -> Option<Notice> {
        self.notices().into_iter().rev().find(|n| {
            n.received >= since
                && n.labels.get("element").is_some_and(|e| e == element)
                && n.labels.get("alertname").is_some_and(|a| names.contains(&a.as_str()))
        })
    }
}

/// Accepts until `stop`; each request's alerts are appended to `notices`.
fn receive(listener: &TcpListener, notices: &Mutex<Vec<Notice>>, malformed: &Mutex<Vec<String>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => match read_notification(stream) {
                Ok(alerts) => {
                    if let Ok(mut all) = notices.lock() {
                        all.extend(alerts);
                    }
                }
                Err(e) => {
                    if let Ok(mut bad) = malformed.lock() {
                        bad.push(format!("{e:#}"));
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads one POST, answers 200, and returns its alerts.
fn read_notification(mut stream: TcpStream) -> anyhow::Result<Vec<Notice>> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let received = Instant::now();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    // Bounded: headers within 64 KiB, then exactly Content-Length bytes.
    let (head_len, length) = loop {
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed before the headers ended");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("no Content-Length")?
                .trim()
                .parse::<usize>()?;
            anyhow::ensure!(length <= 16 << 20, "a body of {length} bytes");
            break (end + 4, length);
        }
        anyhow::ensure!(buffer.len() < 64 << 10, "headers over 64 KiB");
    };
    while buffer.len() < head_len + length {
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed in the body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let body: serde_json::Value = serde_json::from_slice(&buffer[head_len..head_len + length])?;
    let alerts = body["alerts"].as_array().context("no alerts[] in the notification")?;
    Ok(alerts
        .iter()
        .map(|a| Notice {
            received,
            status: a["status"].as_str().unwrap_or("?").to_string(),
            labels: a["labels"]
                .as_object()
                .map(|l| {
                    l.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// Alertmanager on the spine: every alert to the receiver, each element
/// its own group, sent at once and again when resolved.
fn start_alertmanager(daemons: &mut Daemons, net: &Network) -> anyhow::Result<()> {
    let webhook = SocketAddr::from((SPINE_IP, WEBHOOK_PORT));
    let config = daemons.write(
        "alertmanager.yml",
        &format!(
            "route:\n  receiver: simulation\n  group_by: [alertname, element]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: simulation\n    webhook_configs:\n      \
             - url: http://{webhook}/alerts\n        send_resolved: true\n"
        ),
    )?;
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", daemons.dir.join("alertmanager").display()),
        format!(
            "--web.listen-address={}",
            SocketAddr::from((SPINE_IP, ALERTMANAGER_PORT))
        ),
        // One instance: no gossip port to bind.
        "--cluster.listen-address=".to_string(),
    ];
    daemons.spawn(
        "alertmanager",
        &net.spine(),
        Path::new("prometheus-alertmanager"),
        &args,
    )
}

/// Prometheus on the spine, which routes to every daemon: scrapes them and
/// the analyzer, evaluates deploy/prometheus/flowmesh-rules.yml, sends to
/// Alertmanager. Job names start with `flowmesh`, as the rules expect.
fn start_prometheus(daemons: &mut Daemons, net: &Network) -> anyhow::Result<()> {
    let quoted = |targets: Vec<SocketAddr>| {
        targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules = deploy_dir().join("prometheus/flowmesh-rules.yml");
    let rules = rules
        .canonicalize()
        .with_context(|| format!("the shipped rules, {}", rules.display()))?;
    let interval = EVALUATION_INTERVAL.as_secs();
    let config = daemons.write(
        "prometheus.yml",
        &format!(
            "global: {{ scrape_interval: {interval}s, scrape_timeout: {interval}s, evaluation_interval: {interval}s }}\n\
             rule_files: [\"{}\"]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{}\"]\n\
             scrape_configs:\n  - job_name: flowmesh\n    static_configs:\n      - targets: [{}]\n  \
             - job_name: flowmesh-analyzer\n    static_configs:\n      - targets: [\"{}\"]\n",
            rules.display(),
            SocketAddr::from((SPINE_IP, ALERTMANAGER_PORT)),
            quoted(metrics_targets(net, daemons.collectors)),
            SocketAddr::from((SPINE_IP, ANALYZER_METRICS_PORT)),
        ),
    )?;
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", daemons.dir.join("prometheus").display()),
        format!("--web.listen-address={}", SocketAddr::from((SPINE_IP, PROMETHEUS_PORT))),
    ];
    daemons.spawn("prometheus", &net.spine(), Path::new("prometheus"), &args)
}

/// One dashboard panel's query and what it returned.
pub(super) struct PanelQuery {
    /// `dashboard uid / panel title`.
    pub(super) panel: String,
    /// The query with its variables substituted.
    pub(super) expr: String,
    /// Series returned over the range (0: the panel would be empty).
    pub(super) series: usize,
}

/// Runs every Grafana panel's query of deploy/grafana/dashboards as a range
/// query over `[from, now]` against the simulation's Prometheus, with the
/// dashboards' variables resolved: `rack` and `host` to `rack` and `host`
/// (a rack and a host a fault named), any other query variable to the
/// first value its `label_values(…)` query finds, Grafana's built-in
/// intervals to the simulation's.
pub(super) fn run_dashboards(
    net: &Network,
    from: std::time::SystemTime,
    rack: &str,
    host: &str,
) -> anyhow::Result<Vec<PanelQuery>> {
    let prometheus = SocketAddr::from((SPINE_IP, PROMETHEUS_PORT));
    let dir = deploy_dir().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no dashboards in {}", dir.display());
    let start = from.duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let range = (end - start).max(1);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let uid = dashboard["uid"].as_str().unwrap_or("?").to_string();
        let mut values: BTreeMap<String, String> = BTreeMap::from([
            ("rack".to_string(), rack.to_string()),
            ("host".to_string(), host.to_string()),
            (
                "__rate_interval".to_string(),
                format!("{}s", 4 * EVALUATION_INTERVAL.as_secs().max(2)),
            ),
            ("__interval".to_string(), format!("{}s", EVALUATION_INTERVAL.as_secs())),
            ("__range".to_string(), format!("{range}s")),
            ("__range_s".to_string(), range.to_string()),
        ]);
        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap_or_default().to_string();
            if values.contains_key(&name) || variable["type"] != "query" {
                continue;
            }
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .or_else(|| variable["definition"].as_str())
                .unwrap_or_default();
            let value = label_value(net, prometheus, query)
                .with_context(|| format!("{uid}: resolving variable {name} ({query})"))?;
            values.insert(name, value);
        }
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else { continue };
                let expr = substitute(expr, &values);
                let url = format!(
                    "http://{prometheus}/api/v1/query_range?query={}&start={start}&end={end}&step={}",
                    encode(&expr),
                    EVALUATION_INTERVAL.as_secs().max(1) * 2
                );
                let body: serde_json::Value = serde_json::from_str(&get(net, &url)?)?;
                let series = body["data"]["result"].as_array().map_or(0, Vec::len);
                out.push(PanelQuery {
                    panel: format!("{uid} / {title}"),
                    expr,
                    series,
                });
            }
        }
    }
    Ok(out)
}

/// Every panel of a dashboard, those inside rows included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// `$name` and `${name}` (longest names first, so `$host` does not eat
/// `$hostname`) replaced by their values.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &values[name]);
        out = out.replace(&format!("${name}"), &values[name]);
    }
    out
}

/// The first value of a `label_values(metric, label)` (or
/// `label_values(label)`) variable query.
fn label_value(net: &Network, prometheus: SocketAddr, query: &str) -> anyhow::Result<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .context("only label_values(…) variables are resolved")?;
    let (selector, label) = match inner.rsplit_once(',') {
        Some((selector, label)) => (Some(selector.trim()), label.trim()),
        None => (None, inner.trim()),
    };
    let mut url = format!("http://{prometheus}/api/v1/label/{label}/values");
    if let Some(selector) = selector {
        url += &format!("?match[]={}", encode(selector));
    }
    let body: serde_json::Value = serde_json::from_str(&get(net, &url)?)?;
    body["data"]
        .as_array()
        .and_then(|v| v.first())
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .context("no value")
}

/// Percent-encoding for a query-string value.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out += &format!("%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use super::*;

    #[test]
    fn variables_are_substituted_longest_name_first() {
        let values = BTreeMap::from([
            ("host".to_string(), "r1n3".to_string()),
            ("hostname".to_string(), "x".to_string()),
            ("__rate_interval".to_string(), "8s".to_string()),
        ]);
        assert_eq!(
            substitute(
                "rate(a{h=\"$host\",n=\"${hostname}\"}[$__rate_interval]) $hostname",
                &values
            ),
            "rate(a{h=\"r1n3\",n=\"x\"}[8s]) x"
        );
    }

    #[test]
    fn query_text_is_percent_encoded() {
        assert_eq!(encode("up{job=\"a b\"}"), "up%7Bjob%3D%22a%20b%22%7D");
        assert_eq!(encode("r1↔r2"), "r1%E2%86%94r2");
    }

    /// A notification as Alertmanager posts it is read, answered, and its
    /// alerts recorded; garbage is refused, not recorded.
    #[test]
    fn the_receiver_reads_an_alertmanager_notification() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"FlowmeshHostDroppingPackets","element":"r1n3"}},{"status":"resolved","labels":{"alertname":"FlowmeshRackUplinkDegraded","element":"rack3"}}]}"#;
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(
                s,
                "POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        });
        let (stream, _) = listener.accept().unwrap();
        let alerts = read_notification(stream).unwrap();
        assert!(client.join().unwrap().starts_with("HTTP/1.1 200"));
        let seen: Vec<String> = alerts.iter().map(Notice::describe).collect();
        assert_eq!(
            seen,
            [
                "FlowmeshHostDroppingPackets r1n3 (firing)",
                "FlowmeshRackUplinkDegraded rack3 (resolved)"
            ]
        );
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        });
        let (stream, _) = listener.accept().unwrap();
        assert!(read_notification(stream).is_err());
        client.join().unwrap();
    }
}
