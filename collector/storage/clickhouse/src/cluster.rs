//! [`LocalCluster`]: private `clickhouse-server` processes on this machine,
//! one per shard, forming one named cluster without ZooKeeper — what the
//! tests and benchmarks run against (../shared/notes/clickhouse.md has the
//! measured facts behind it).
//!
//! Each server gets its own directory under a temporary directory, free
//! loopback ports and a configuration written here (not the packaged one,
//! which points at `/var/lib/clickhouse`), so nothing touches a system
//! instance. Dropping the cluster kills every server it started and removes
//! the directory — also when a test fails.
//!
//! A server must not outlive the process that started it even when that
//! process is killed (a test timing out, Ctrl-C on a benchmark), when no
//! destructor runs. So each server runs under a small `sh` that holds the
//! read end of a pipe whose write end only this process has: when the pipe
//! closes — the cluster dropped or the process gone, however it ended — the
//! shell kills the server. (`PR_SET_PDEATHSIG` would follow the thread that
//! started the server, not the process, and needs `unsafe`.)

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cluster name the servers' `remote_servers` section defines.
pub const CLUSTER: &str = "flowmesh";

/// How long a server may take to answer `/ping` after it starts (it takes
/// about 3 s on a 2-core machine; a loaded CI machine more).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `clickhouse-server ARGS…` and kills it (SIGKILL, as a crash would)
/// once its standard input reaches end of file; exits when the server does.
/// (A background job's standard input is /dev/null in `sh`, so the pipe is
/// handed to the watcher as descriptor 3.)
const WATCH: &str = r#"exec 3<&0
clickhouse-server "$@" </dev/null 3<&- & server=$!
(read -r _ <&3; kill -9 "$server" 2>/dev/null) &
exec 3<&-
wait "$server""#;

/// One shard's server.
#[derive(Debug)]
struct Server {
    dir: PathBuf,
    http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
    child: Option<Child>,
}

/// Private ClickHouse servers, one per shard, of the cluster [`CLUSTER`].
#[derive(Debug)]
pub struct LocalCluster {
    servers: Vec<Server>,
    // Dropped after the servers are killed (field order).
    _dir: tempfile::TempDir,
}

/// A free loopback TCP port (free when asked; servers bind it moments later).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalCluster {
    /// Starts `shards` servers and waits until each answers; fails with the
    /// server's own error log if one does not.
    pub fn start(shards: usize) -> std::io::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("flowmesh-clickhouse-").tempdir()?;
        let mut servers = Vec::with_capacity(shards);
        for shard in 0..shards {
            servers.push(Server {
                dir: dir.path().join(format!("shard{}", shard + 1)),
                http_port: free_port()?,
                tcp_port: free_port()?,
                interserver_port: free_port()?,
                child: None,
            });
        }
        let tcp_ports: Vec<u16> = servers.iter().map(|s| s.tcp_port).collect();
        let mut cluster = LocalCluster { servers, _dir: dir };
        for server in &cluster.servers {
            write_config(server, &tcp_ports)?;
        }
        for shard in 0..shards {
            cluster.start_shard(shard)?;
        }
        Ok(cluster)
    }

    /// The HTTP URL of shard `shard` (0-based).
    pub fn url(&self, shard: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[shard].http_port)
    }

    /// The directory holding every server's configuration, data and logs.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Every shard's HTTP URL, in shard order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Kills shard `shard`'s server (SIGKILL, as a crash would) and waits
    /// for it to exit; its data stays for [`LocalCluster::start_shard`].
    pub fn stop_shard(&mut self, shard: usize) -> std::io::Result<()> {
        if let Some(child) = self.servers[shard].child.take() {
            stop(child)?;
        }
        Ok(())
    }

    /// (Re)starts shard `shard`'s server on its ports and data, and waits
    /// until it answers.
    pub fn start_shard(&mut self, shard: usize) -> std::io::Result<()> {
        let server = &mut self.servers[shard];
        if server.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(server.dir.join("log/stdout"))?;
        let child = Command::new("sh")
            .args(["-c", WATCH, "sh"])
            .arg(format!("--config-file={}", server.dir.join("config.xml").display()))
            .current_dir(&server.dir)
            // The pipe whose end stops the server (see the module docs).
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("starting sh for clickhouse-server: {e}")))?;
        server.child = Some(child);
        wait_ready(server)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(child) = server.child.take() {
                let _ = stop(child);
            }
        }
    }
}

/// Closes the server's pipe, so its shell kills it, and waits for both.
fn stop(mut child: Child) -> std::io::Result<()> {
    drop(child.stdin.take());
    child.wait().map(|_| ())
}

/// Polls `/ping` until the server answers `Ok.`, it exits, or the timeout.
fn wait_ready(server: &mut Server) -> std::io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ping(server.http_port) {
            return Ok(());
        }
        let exited = match server.child.as_mut() {
            Some(child) => child.try_wait()?.is_some(),
            None => true,
        };
        if exited || Instant::now() > deadline {
            let why = if exited {
                "exited (scripts/setup installs clickhouse-server)"
            } else {
                "did not answer in time"
            };
            return Err(std::io::Error::other(format!(
                "clickhouse-server in {} {why}: {}",
                server.dir.display(),
                last_error(&server.dir)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).is_ok() && answer.ends_with("Ok.\n")
}

/// The last line of the server's error log, for a start failure.
fn last_error(dir: &Path) -> String {
    ["log/err.log", "log/stdout"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|text| text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string))
        .next()
        .unwrap_or_else(|| "no log".to_string())
}

/// Writes the server's config.xml and users.xml: its own paths and ports,
/// warnings-only logging, and the cluster of every shard.
fn write_config(server: &Server, tcp_ports: &[u16]) -> std::io::Result<()> {
    for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
        std::fs::create_dir_all(server.dir.join(sub))?;
    }
    let d = server.dir.display();
    let shards: String = tcp_ports
        .iter()
        .map(|p| format!("<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>"))
        .collect();
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/err.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <interserver_http_port>{inter}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>
</yandex>
"#,
        http = server.http_port,
        tcp = server.tcp_port,
        inter = server.interserver_port,
    );
    std::fs::write(server.dir.join("config.xml"), config)?;
    std::fs::write(
        server.dir.join("users.xml"),
        r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#,
    )
}
