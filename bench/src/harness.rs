//! What the benchmarks need to run flowmesh's daemons as child processes:
//! finding the binaries, free loopback ports, the daemons' configuration
//! files, starting a daemon and waiting for its metrics endpoint, reading
//! its counters, CPU time and memory from outside, and stopping it again.
//!
//! Every benchmark that starts a daemon (sampler-ingest, pipeline,
//! tcp-overhead, rack-sim) and every one that measures one from outside
//! uses these, so a daemon is started, watched and stopped the same way
//! everywhere, and a failed start shows the daemon's own log. Waits are
//! bounded: each takes a timeout, and a child is killed once its grace
//! period is over.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use configs::TlsFiles;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// How long a daemon may take to serve its metrics endpoint.
const DAEMON_START: Duration = Duration::from_secs(20);

/// A child process killed (SIGKILL) and reaped when dropped, so an early
/// return or a panic leaves no daemon behind.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address with a port nothing was bound to a moment ago.
pub(crate) fn free_local_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port(),
    )))
}

/// The flowmesh binary `name` built next to this one, or an error saying
/// how to build it (`build`, a cargo command).
pub(crate) fn sibling_binary(name: &str, build: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!("{} not found; build it first: {build}", path.display());
    }
    Ok(path)
}

/// `program` run pinned to CPU `cpu` (`taskset -c`, which execs it: the
/// child's PID is the program's).
pub(crate) fn pinned(cpu: u32, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string()]).arg(program);
    command
}

/// Calls `ready` every `every` until it says true (`Ok(true)`) or `timeout`
/// has passed (`Ok(false)`); an error from `ready` ends the wait with it.
pub(crate) fn wait_for(
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        std::thread::sleep(every.min(left));
    }
}

/// Starts a flowmesh daemon: `command` (program and environment set) with
/// `--config config`, its stderr in `log`; returns once its metrics
/// endpoint answers. Fails with the log's text if the daemon exits first
/// or does not answer within 20 s.
pub(crate) fn start_daemon(
    mut command: Command,
    config: &Path,
    log: &Path,
    metrics: SocketAddr,
    what: &str,
) -> anyhow::Result<ChildGuard> {
    let mut child = ChildGuard(
        command
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()
            .with_context(|| format!("starting {what}"))?,
    );
    let up = wait_for(DAEMON_START, POLL, || {
        if let Some(status) = child.0.try_wait()? {
            bail!("{what} exited ({status}): {}", std::fs::read_to_string(log)?);
        }
        Ok(scrape(metrics).is_ok())
    })?;
    if !up {
        bail!("{what} did not start: {}", std::fs::read_to_string(log)?);
    }
    Ok(child)
}

/// Stops `children` as an operator would: SIGTERM to each (by PID, with
/// kill(1): the standard library only sends SIGKILL), up to `grace` for all
/// of them to exit, then SIGKILL to whichever remain; every child is
/// reaped. Fails with the first signal that could not be sent, after
/// stopping them all.
pub(crate) fn terminate<'a>(children: impl IntoIterator<Item = &'a mut Child>, grace: Duration) -> anyhow::Result<()> {
    let mut children: Vec<&mut Child> = children.into_iter().collect();
    let mut signalled = Ok(());
    for child in &children {
        let sent = run(&["kill", "-TERM", &child.id().to_string()]);
        if signalled.is_ok() {
            signalled = sent;
        }
    }
    let deadline = Instant::now() + grace;
    for child in &mut children {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = wait_for(left, POLL, || Ok(child.try_wait()?.is_some()));
        let _ = child.kill();
        let _ = child.wait();
    }
    signalled
}

/// Runs `args[0] args[1..]` to completion, failing with its stderr.
pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (program, rest) = args.split_first().context("no command to run")?;
    let out = Command::new(program)
        .args(rest)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A daemon's Prometheus exposition, fetched from `addr`'s `/metrics`.
pub(crate) fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    Ok(page)
}

/// The value of `series` (name and labels, exactly as exposed) in a
/// scraped page; 0 when it is absent.
pub(crate) fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// CPU time (user + system) the process `pid` ("self" for this one) has
/// used, seconds.
pub(crate) fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// CPU seconds from the text of a `/proc/<pid>/stat`.
fn stat_cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    // Fields after the parenthesised command name (which may hold spaces
    // and parentheses itself); utime and stime are the 14th and 15th fields
    // overall, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("/proc stat field")?.parse::<f64>()?) };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// A live process's peak resident set (VmHWM), KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// The cgroup v2 hierarchy's mount point.
pub(crate) fn cgroup_root() -> anyhow::Result<PathBuf> {
    cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo")?).context("no cgroup v2 hierarchy mounted")
}

/// The mount point of the first cgroup2 file system in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        // Optional fields end at "-"; the file system type follows it.
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
    })
}

/// A flowmesh-collector configuration file's text.
pub(crate) struct CollectorToml<'a> {
    /// QUIC address the samplers connect to.
    pub(crate) listen: SocketAddr,
    /// Its metrics endpoint.
    pub(crate) metrics: SocketAddr,
    /// The SQLite database.
    pub(crate) database: &'a Path,
    /// The topology file.
    pub(crate) topology: &'a Path,
    /// Its server certificate, key and the CA of the samplers'.
    pub(crate) tls: &'a TlsFiles,
    /// A ClickHouse cluster to store into instead of `database`.
    pub(crate) clickhouse: Option<&'a ClickHouseToml>,
}

/// A `[storage.clickhouse]` section: where the cluster is.
#[derive(Clone)]
pub(crate) struct ClickHouseToml {
    /// The server to write to and read from.
    pub(crate) url: String,
    /// Every shard's server.
    pub(crate) shard_urls: Vec<String>,
    /// The database.
    pub(crate) database: String,
    /// The cluster's name.
    pub(crate) cluster: String,
}

impl ClickHouseToml {
    /// `[storage]` choosing ClickHouse, and where it is.
    pub(crate) fn render(&self) -> String {
        let shards: Vec<String> = self.shard_urls.iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "[storage]\nbackend = \"clickhouse\"\n[storage.clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n\
             cluster = \"{}\"\nshard_urls = [{}]\n",
            self.url,
            self.database,
            self.cluster,
            shards.join(", ")
        )
    }
}

impl CollectorToml<'_> {
    /// The TOML text.
    pub(crate) fn render(&self) -> String {
        format!(
            "listen = \"{}\"\ndatabase = \"{}\"\ntopology = \"{}\"\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[metrics]\nlisten = \"{}\"\n{}",
            self.listen,
            self.database.display(),
            self.topology.display(),
            self.tls.ca.display(),
            self.tls.cert.display(),
            self.tls.key.display(),
            self.metrics,
            self.clickhouse.map(ClickHouseToml::render).unwrap_or_default(),
        )
    }
}

/// A flowmesh-sampler configuration file's text.
pub(crate) struct SamplerToml<'a> {
    /// Its sampler id.
    pub(crate) id: u32,
    /// Its rack's name in the topology.
    pub(crate) rack: &'a str,
    /// The topology file.
    pub(crate) topology: &'a Path,
    /// UDP address the agents send to.
    pub(crate) ingest: SocketAddr,
    /// Aggregation window, seconds.
    pub(crate) window_secs: u64,
    /// How long a window waits for late datagrams, ms.
    pub(crate) grace_ms: u64,
    /// The collectors' QUIC addresses, in failover order.
    pub(crate) collectors: Vec<SocketAddr>,
    /// Its spool directory.
    pub(crate) spool: &'a Path,
    /// Its client certificate, key and the collector's CA.
    pub(crate) tls: &'a TlsFiles,
    /// Its metrics endpoint.
    pub(crate) metrics: SocketAddr,
}

impl SamplerToml<'_> {
    /// The TOML text.
    pub(crate) fn render(&self) -> String {
        format!(
            "sampler_id = {}\nrack = \"{}\"\ntopology = \"{}\"\n\n[ingest]\nlisten = [\"{}\"]\n\n\
             [aggregate]\nwindow_secs = {}\ngrace_ms = {}\n\n[uplink]\ncollectors = [{}]\n\
             server_name = \"localhost\"\nspool_dir = \"{}\"\n\
             tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n\n[metrics]\nlisten = \"{}\"\n",
            self.id,
            self.rack,
            self.topology.display(),
            self.ingest,
            self.window_secs,
            self.grace_ms,
            self.collectors
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", "),
            self.spool.display(),
            self.tls.ca.display(),
            self.tls.cert.display(),
            self.tls.key.display(),
            self.metrics,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use super::*;

    #[test]
    fn metric_reads_the_exact_series_only() {
        let page = "# TYPE x counter\n\
                    flowmesh_x_total_extra 9\n\
                    flowmesh_x_total{kind=\"probe\"} 12\n\
                    flowmesh_x_total{kind=\"flow\"} 3.0\n\
                    flowmesh_x_total 7\n";
        assert_eq!(metric(page, "flowmesh_x_total"), 7);
        assert_eq!(metric(page, "flowmesh_x_total{kind=\"probe\"}"), 12);
        assert_eq!(metric(page, "flowmesh_x_total{kind=\"flow\"}"), 3);
        assert_eq!(metric(page, "flowmesh_y_total"), 0);
    }

    #[test]
    fn cpu_seconds_skip_a_command_name_with_spaces_and_parentheses() {
        // utime 250 and stime 50 ticks: 3 s.
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 77 1000 10";
        assert!((stat_cpu_seconds(stat).unwrap() - 3.0).abs() < 1e-9);
        assert!(stat_cpu_seconds("4242 (x) S 1").is_err());
        assert!(stat_cpu_seconds("no parenthesis").is_err());
        assert!(cpu_seconds("self").unwrap() >= 0.0);
    }

    #[test]
    fn cgroup2_mount_is_found_after_optional_fields() {
        let mountinfo = "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
                         29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("22 1 0:21 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn wait_for_stops_when_ready_or_at_the_timeout() {
        let mut calls = 0;
        let ready = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            Ok(calls == 3)
        });
        assert!(ready.unwrap());
        assert_eq!(calls, 3);
        let started = Instant::now();
        assert!(!wait_for(Duration::from_millis(30), Duration::from_millis(5), || Ok(false)).unwrap());
        assert!(started.elapsed() < Duration::from_secs(2));
        let failed = wait_for(Duration::from_secs(5), Duration::from_millis(1), || bail!("broken"));
        assert_eq!(failed.unwrap_err().to_string(), "broken");
    }

    #[test]
    fn run_fails_with_the_commands_stderr() {
        run(&["true"]).unwrap();
        let error = run(&["sh", "-c", "echo no such table >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("no such table"), "{error}");
        assert!(run(&[]).is_err());
    }

    #[test]
    fn terminate_kills_what_ignores_sigterm_after_the_grace_period() {
        let mut polite = Command::new("sleep").arg("30").spawn().unwrap();
        // An ignored signal stays ignored across exec.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .unwrap();
        // Let sh set its trap before the signal comes.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        terminate([&mut polite, &mut stubborn], Duration::from_millis(300)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        // Both reaped: by SIGTERM (15) and by SIGKILL (9).
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(polite.try_wait().unwrap().and_then(|s| s.signal()), Some(15));
        assert_eq!(stubborn.try_wait().unwrap().and_then(|s| s.signal()), Some(9));
    }

    #[test]
    fn start_daemon_fails_at_once_with_the_log_of_a_daemon_that_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        // `--config FILE` become $1 and $2.
        command.args(["-c", "echo \"unknown key in $2\" >&2; exit 1", "sh"]);
        let started = Instant::now();
        let error = start_daemon(
            command,
            Path::new("bad.toml"),
            &dir.path().join("d.log"),
            free_local_addr().unwrap(),
            "the daemon",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("the daemon exited") && error.contains("unknown key in bad.toml"),
            "{error}"
        );
        assert!(started.elapsed() < DAEMON_START / 2);
    }

    #[test]
    fn configurations_parse_as_the_daemons_read_them() {
        let tls = TlsFiles {
            ca: "/p/ca.pem".into(),
            cert: "/p/rack1.pem".into(),
            key: "/p/rack1.key".into(),
        };
        let sampler = SamplerToml {
            id: 3,
            rack: "rack1",
            topology: Path::new("/t.toml"),
            ingest: "198.18.1.250:5001".parse().unwrap(),
            window_secs: 5,
            grace_ms: 1_000,
            collectors: vec!["198.18.0.1:4433".parse().unwrap(), "198.18.0.1:4434".parse().unwrap()],
            spool: Path::new("/spool"),
            tls: &tls,
            metrics: "198.18.1.250:9102".parse().unwrap(),
        };
        let parsed: configs::SamplerConfig = toml::from_str(&sampler.render()).unwrap();
        assert_eq!(parsed.sampler_id, 3);
        assert_eq!(parsed.aggregate.window_secs, 5);
        assert_eq!(
            parsed.ingest.listen,
            vec!["198.18.1.250:5001".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(parsed.uplink.tls.cert, PathBuf::from("/p/rack1.pem"));
        assert_eq!(parsed.uplink.collectors, ["198.18.0.1:4433", "198.18.0.1:4434"]);
        let collector = CollectorToml {
            listen: "198.18.0.1:4433".parse().unwrap(),
            metrics: "198.18.0.1:9103".parse().unwrap(),
            database: Path::new("/db"),
            topology: Path::new("/t.toml"),
            tls: &tls,
            clickhouse: None,
        };
        let parsed: configs::CollectorConfig = toml::from_str(&collector.render()).unwrap();
        assert_eq!(parsed.database, PathBuf::from("/db"));
        assert_eq!(parsed.storage.backend, configs::Backend::Sqlite);
        let cluster = ClickHouseToml {
            url: "http://127.0.0.1:8123".into(),
            shard_urls: vec!["http://127.0.0.1:8123".into(), "http://127.0.0.1:8124".into()],
            database: "flowmesh".into(),
            cluster: "flowmesh".into(),
        };
        let collector = CollectorToml {
            clickhouse: Some(&cluster),
            ..collector
        };
        let parsed: configs::CollectorConfig = toml::from_str(&collector.render()).unwrap();
        assert_eq!(parsed.storage.backend, configs::Backend::Clickhouse);
        assert_eq!(parsed.storage.clickhouse.shard_urls.len(), 2);
        assert_eq!(parsed.listen, "198.18.0.1:4433".parse::<SocketAddr>().unwrap());
    }
}
