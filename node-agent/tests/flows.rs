//! The agent with its real eBPF program attached to a test cgroup: TCP
//! connections made by a process in that cgroup over 127.0.0.1 and ::1
//! come out as flow records with exact payload bytes, ports, addresses,
//! direction, end reason, duration and RTT; a burst of short connections
//! yields one flow each; nothing stays attached after the agent exits.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) and a cgroup v2
//! hierarchy, as CI has.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A cgroup made for the test, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create() -> TestCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = node_agent::checks::cgroup2_mount(&mountinfo).expect("a cgroup v2 hierarchy");
        let path = root.join(format!("flowmesh-test-{}-{}", std::process::id(), rack_unique()));
        std::fs::create_dir(&path).unwrap();
        TestCgroup(path)
    }
}

fn rack_unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The clients have exited; an empty cgroup can be removed. Retry
        // briefly while the kernel finishes reaping them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The agent in --debug mode, killed on drop if still running.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Agent {
    fn start(cgroup: &TestCgroup, dir: &std::path::Path) -> Agent {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!("node_id = 101\n[flows]\ncgroup = \"{}\"\n", cgroup.0.display()),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowmesh-agent"))
            .args(["--debug", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && tx.send(value).is_err()
                {
                    return;
                }
            }
        });
        let mut agent = Agent { child, lines };
        let ready = agent.next(Duration::from_secs(30));
        assert!(ready["tracing"].is_string(), "agent did not start: {ready}");
        agent
    }

    fn next(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(value) => value,
            Err(_) => {
                let status = self.child.try_wait().unwrap();
                panic!("no line from the agent within {timeout:?} (exit status {status:?})")
            }
        }
    }

    /// The flows reported within `timeout` of the last one, until `count`.
    fn flows(&mut self, count: usize) -> Vec<Value> {
        (0..count).map(|_| self.next(Duration::from_secs(10))).collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that reads `expect` bytes, answers `answer` bytes and closes,
/// `connections` times.
fn server(addr: &str, expect: usize, answer: usize, connections: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; expect];
            stream.read_exact(&mut buf).unwrap();
            stream.write_all(&vec![b'y'; answer]).unwrap();
        }
    });
    (local, handle)
}

/// Runs a Python client inside the cgroup: `connections` connections to
/// `to`, each sending `send` bytes and reading until the server closes.
fn client_in(cgroup: &TestCgroup, to: SocketAddr, send: usize, connections: usize) {
    let script = format!(
        "import socket\n\
         for _ in range({connections}):\n\
         \x20   s = socket.create_connection(('{}', {}))\n\
         \x20   s.sendall(b'x' * {send})\n\
         \x20   while s.recv(65536):\n\
         \x20       pass\n\
         \x20   s.close()\n",
        to.ip(),
        to.port()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
            cgroup.0.display()
        ))
        .arg(script)
        .status()
        .unwrap();
    assert!(status.success(), "client failed: {status}");
}

fn check_flow(flow: &Value, server: SocketAddr) {
    assert_eq!(flow["dst"], server.ip().to_string(), "{flow}");
    assert_eq!(flow["src"], server.ip().to_string(), "{flow}");
    assert_eq!(flow["dst_port"], server.port(), "{flow}");
    assert_ne!(flow["src_port"], 0, "{flow}");
    assert_eq!(flow["direction"], "outbound", "{flow}");
    assert_eq!(flow["end_reason"], "closed", "{flow}");
    assert_eq!(flow["bytes_acked"], 100_000, "{flow}");
    assert_eq!(flow["bytes_received"], 5_000, "{flow}");
    assert_eq!(flow["retrans_segs"], 0, "{flow}");
    assert!(flow["duration_ns"].as_u64().unwrap() > 0, "{flow}");
    assert!(flow["srtt_us"].as_u64().unwrap() > 0, "{flow}");
    assert!(flow["min_rtt_us"].as_u64().unwrap() > 0, "{flow}");
    let now = node_agent::now_ns();
    let start = flow["start_ns"].as_u64().unwrap();
    assert!(
        start <= now && now - start < 60_000_000_000,
        "start_ns {start} vs now {now}"
    );
}

fn agent_programs_loaded() -> usize {
    let out = Command::new("bpftool").args(["prog", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("flowmesh_sock"))
        .count()
}

#[test]
fn real_tcp_flows_are_reported_exactly_and_nothing_stays_attached() {
    let dir = tempfile::tempdir().unwrap();
    let cgroup = TestCgroup::create();
    let mut agent = Agent::start(&cgroup, dir.path());
    assert!(agent_programs_loaded() >= 1, "the sock_ops program is not loaded");

    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let (server_addr, server) = server(addr, 100_000, 5_000, 1);
        client_in(&cgroup, server_addr, 100_000, 1);
        server.join().unwrap();
        let flow = agent.next(Duration::from_secs(10));
        check_flow(&flow, server_addr);
    }

    // Many short connections in a tight loop: the kernel may reuse ports,
    // the socket cookie still tells them apart.
    let (server_addr, server) = server("127.0.0.1:0", 100_000, 5_000, 25);
    client_in(&cgroup, server_addr, 100_000, 25);
    server.join().unwrap();
    let flows = agent.flows(25);
    let ids: std::collections::BTreeSet<u64> = flows.iter().map(|f| f["flow_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 25, "flows merged: {flows:?}");
    for flow in &flows {
        check_flow(flow, server_addr);
    }
    // The server side is outside the cgroup: not traced.
    assert!(agent.lines.recv_timeout(Duration::from_millis(500)).is_err());

    let pid = agent.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "agent exited with {status}");
    assert_eq!(
        agent_programs_loaded(),
        0,
        "a program stayed loaded after the agent exited"
    );
}

#[test]
fn without_capabilities_it_says_which_and_how_to_grant_them() {
    // setpriv (util-linux) drops every capability for the child.
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_flowmesh-agent"))
        .args(["--debug"])
        .env("FLOWMESH_AGENT_NODE_ID", "101")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(stderr.contains("CAP_BPF") && stderr.contains("setcap"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
