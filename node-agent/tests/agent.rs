//! The agent with its real eBPF program attached to a test cgroup: TCP
//! connections made by a process in that cgroup over 127.0.0.1 and ::1
//! come out as flow records with exact payload bytes, ports, addresses,
//! direction, end reason, duration and RTT; a burst of short connections
//! yields one flow each; nothing stays attached after the agent exits.
//! Two agents probe each other over loopback addresses and send probe
//! records to a test sampler socket; a stopped responder shows as timeouts.
//! An agent whose node is not in the topology, or that has no sampler to
//! send to, exits with one line before it attaches anything.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) and a cgroup v2
//! hierarchy, as CI has.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{TestCgroup, python_in, spawn_debug_agent};

/// The agent in --debug mode, killed on drop if still running.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Agent {
    /// Starts an agent whose config is `config` plus the test cgroup.
    fn start(cgroup: &TestCgroup, dir: &std::path::Path, name: &str, config: &str) -> Agent {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            config.replace("[flows]", &format!("[flows]\ncgroup = \"{}\"", cgroup.0.display())),
        )
        .unwrap();
        let config = path;
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowmesh-agent"));
        command.args(["--debug", "--config"]).arg(&config);
        let (child, lines) = spawn_debug_agent(command);
        Agent { child, lines }
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
/// Runs a Python client inside the cgroup: `connections` connections to
/// `to`, each marked with `tos` (IPv4 TOS or IPv6 traffic class), sending
/// `send` bytes and reading until the server closes.
fn client_in(cgroup: &TestCgroup, to: SocketAddr, send: usize, connections: usize, tos: u8) {
    let script = format!(
        "import socket\n\
         v6 = {v6}\n\
         for _ in range({connections}):\n\
         \x20   s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)\n\
         \x20   if v6:\n\
         \x20       s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, {tos})\n\
         \x20   else:\n\
         \x20       s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, {tos})\n\
         \x20   s.connect(('{}', {}))\n\
         \x20   s.sendall(b'x' * {send})\n\
         \x20   while s.recv(65536):\n\
         \x20       pass\n\
         \x20   s.close()\n",
        to.ip(),
        to.port(),
        v6 = if to.is_ipv6() { "True" } else { "False" },
    );
    let status = python_in(cgroup, None, &script);
    assert!(status.success(), "client failed: {status}");
}

fn check_flow(flow: &Value, server: SocketAddr, dscp: u8) {
    assert_eq!(flow["dscp"], dscp, "{flow}");
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

/// Ids of the BPF programs and links process `pid` holds open, from
/// /proc/PID/fdinfo (("prog_id" | "link_id", id)); none once it has exited.
fn bpf_objects_of(pid: u32) -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    // Empty for a process that has exited (or is exiting) meanwhile.
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for entry in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            for key in ["prog_id", "link_id"] {
                if let Some(id) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
                    out.push((key, id.trim().parse().unwrap()));
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the kernel lets go of the program or link within 5 s: a
/// tracing link's program is freed after an RCU grace period, not at once
/// when its last file descriptor closes.
fn bpf_object_released(kind: &str, id: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while bpf_object_exists(kind, id) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether the kernel still has the program or link.
fn bpf_object_exists(kind: &str, id: u32) -> bool {
    let what = if kind == "prog_id" { "prog" } else { "link" };
    Command::new("bpftool")
        .args([what, "show", "id", &id.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

/// An agent tracing flows of a fresh test cgroup (probes off), with its
/// directory and the cgroup.
fn tracing_agent() -> (tempfile::TempDir, TestCgroup, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let topology = write_topology(dir.path(), &[(101, "127.0.0.1")], no_extra);
    let cgroup = TestCgroup::create();
    let agent = Agent::start(
        &cgroup,
        dir.path(),
        "agent",
        &format!(
            "node_id = 101\ntopology = \"{}\"\n[flows]\n[probes]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            topology.display()
        ),
    );
    (dir, cgroup, agent)
}

#[test]
fn real_tcp_flows_are_reported_exactly_and_nothing_stays_attached() {
    let (_dir, cgroup, mut agent) = tracing_agent();
    let held = bpf_objects_of(agent.child.id());
    assert!(
        held.iter().any(|(k, _)| *k == "prog_id"),
        "the agent holds no program: {held:?}"
    );
    assert!(
        held.iter().any(|(k, _)| *k == "link_id"),
        "the agent holds no link: {held:?}"
    );
    assert!(held.iter().all(|(k, id)| bpf_object_exists(k, *id)));

    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let (server_addr, server) = server(addr, 100_000, 5_000, 1);
        // DSCP 46 (expedited forwarding) = TOS 0xb8.
        client_in(&cgroup, server_addr, 100_000, 1, 0xb8);
        server.join().unwrap();
        let flow = agent.next(Duration::from_secs(10));
        check_flow(&flow, server_addr, 46);
    }

    // Many short connections in a tight loop: the kernel may reuse ports,
    // the socket cookie still tells them apart.
    let (server_addr, server) = server("127.0.0.1:0", 100_000, 5_000, 25);
    client_in(&cgroup, server_addr, 100_000, 25, 0);
    server.join().unwrap();
    let flows = agent.flows(25);
    let ids: std::collections::BTreeSet<u64> = flows.iter().map(|f| f["flow_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 25, "flows merged: {flows:?}");
    for flow in &flows {
        check_flow(flow, server_addr, 0);
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
    for (kind, id) in held {
        assert!(
            bpf_object_released(kind, id),
            "{kind} {id} stayed after the agent exited"
        );
    }
}

/// The start and end of both ends of a connection (both in the traced
/// cgroup) fall between the wall-clock reads around the connect/accept and
/// around the close: a flow's start is the kernel's TCP clock as it
/// processed the handshake's last segment (a stale clock there — the
/// listener's, say, for the accepted socket — would put it far outside).
#[test]
fn a_flows_start_and_end_are_when_it_was_established_and_closed_on_both_sides() {
    let (dir, cgroup, mut agent) = tracing_agent();
    let times = dir.path().join("times");
    // Sleeps keep the instants apart by far more than any clock error.
    let script = format!(
        "import socket, time\n\
         listener = socket.socket()\n\
         listener.bind(('127.0.0.1', 0))\n\
         listener.listen(1)\n\
         time.sleep(0.2)\n\
         t0 = time.time_ns()\n\
         client = socket.create_connection(listener.getsockname())\n\
         server, _ = listener.accept()\n\
         t1 = time.time_ns()\n\
         time.sleep(0.3)\n\
         client.sendall(b'x' * 1000)\n\
         server.recv(4096)\n\
         t2 = time.time_ns()\n\
         client.close()\n\
         server.close()\n\
         time.sleep(0.2)\n\
         t3 = time.time_ns()\n\
         open('{}', 'w').write(f'{{t0}} {{t1}} {{t2}} {{t3}}')\n",
        times.display()
    );
    assert!(python_in(&cgroup, None, &script).success());
    let t: Vec<u64> = std::fs::read_to_string(&times)
        .unwrap()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (connect, connected, closing, closed) = (t[0], t[1], t[2], t[3]);
    let mut directions = Vec::new();
    for flow in agent.flows(2) {
        let start = flow["start_ns"].as_u64().unwrap();
        let end = start + flow["duration_ns"].as_u64().unwrap();
        // The agent converts the kernel's clock to wall-clock time with an
        // offset measured at its start: allow a millisecond of drift.
        let slack = 1_000_000;
        assert!(
            connect - slack <= start && start <= connected + slack,
            "start {start} not within [{connect}, {connected}]: {flow}"
        );
        assert!(
            closing - slack <= end && end <= closed + slack,
            "end {end} not within [{closing}, {closed}]: {flow}"
        );
        directions.push(flow["direction"].as_str().unwrap().to_owned());
    }
    directions.sort();
    assert_eq!(directions, ["inbound", "outbound"]);
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

/// Writes `topology.toml` into `dir`: each node `(id, address)` is named
/// `n{id}` in rack `id / 100` (racks named `rack{n}`), with `extra(id)`'s
/// lines added to it.
fn write_topology(dir: &std::path::Path, nodes: &[(u32, &str)], extra: impl Fn(u32) -> String) -> std::path::PathBuf {
    let mut racks: Vec<u32> = nodes.iter().map(|(id, _)| id / 100).collect();
    racks.dedup();
    let mut text = String::new();
    for rack in racks {
        text.push_str(&format!("[[racks]]\nid = {rack}\nname = \"rack{rack}\"\n"));
    }
    for (id, addr) in nodes {
        text.push_str(&format!(
            "[[nodes]]\nid = {id}\nname = \"n{id}\"\nrack = \"rack{}\"\naddresses = [\"{addr}\"]\n{}",
            id / 100,
            extra(*id)
        ));
    }
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn no_extra(_: u32) -> String {
    String::new()
}

/// A UDP port free on 127.0.0.1 a moment ago, for the agents' responders.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads probe records from datagrams arriving at `sampler` for `within`.
fn probe_records(sampler: &std::net::UdpSocket, within: Duration) -> Vec<wire_format::Probe> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        sampler.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let Ok(len) = sampler.recv(&mut buf) else { continue };
        let datagram = wire_format::parse(&buf[..len]).unwrap();
        assert_eq!(datagram.header.node_id.get(), 101);
        if let wire_format::Records::Probe(records) = datagram.records {
            out.extend(records.iter().map(|r| wire_format::Probe::from_record(r).unwrap()));
        }
    }
    out
}

#[test]
fn agents_probe_each_other_and_a_stopped_responder_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let topology = write_topology(
        dir.path(),
        &[(101, "127.0.0.1"), (102, "127.0.0.2"), (201, "127.0.0.3")],
        no_extra,
    );
    let sampler = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let metrics_a = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = |node: u32| {
        let metrics = if node == 101 {
            metrics_a.to_string()
        } else {
            "127.0.0.1:0".to_string()
        };
        format!(
            "node_id = {node}\ntopology = \"{}\"\n[uplink]\nsampler = \"{}\"\nflush_ms = 50\n[flows]\n\
             [probes]\nport = {port}\ninterval_ms = 100\ntimeout_ms = 300\n[metrics]\nlisten = \"{metrics}\"\n",
            topology.display(),
            sampler.local_addr().unwrap()
        )
    };
    let (cg_a, cg_b) = (TestCgroup::create(), TestCgroup::create());
    let a = Agent::start(&cg_a, dir.path(), "a", &config(101));
    let mut b = Agent::start(
        &cg_b,
        dir.path(),
        "b",
        &config(102).replace(&sampler.local_addr().unwrap().to_string(), "127.0.0.1:9"),
    );

    // b's responder is up once its agent has loaded its programs, which
    // takes a while on a busy host: count from its first answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe_records(&sampler, Duration::from_millis(200))
        .iter()
        .any(|p| p.dst_node == 102 && p.outcome == wire_format::ProbeOutcome::Ok)
    {
        assert!(Instant::now() < deadline, "b never answered");
    }
    let records = probe_records(&sampler, Duration::from_secs(3));
    let to_b: Vec<_> = records.iter().filter(|p| p.dst_node == 102).collect();
    let to_c: Vec<_> = records.iter().filter(|p| p.dst_node == 201).collect();
    assert!(to_b.len() >= 10, "too few probes to b: {records:?}");
    let answered: Vec<_> = to_b
        .iter()
        .filter(|p| p.outcome == wire_format::ProbeOutcome::Ok)
        .collect();
    assert!(answered.len() * 10 >= to_b.len() * 9, "b did not answer: {to_b:?}");
    for p in &answered {
        let record = p.to_record();
        let rtt = record.network_rtt_ns().unwrap();
        assert!(rtt > 0 && rtt < 50_000_000, "implausible loopback RTT {rtt} ns");
        assert!(record.responder_delay_ns().unwrap() < 50_000_000);
        assert_eq!(p.dst, wire_format::ProbeAddr::Ip("127.0.0.2".parse().unwrap()));
        assert_eq!(p.src, wire_format::ProbeAddr::Ip("127.0.0.1".parse().unwrap()));
    }
    // Nobody answers for c (no agent there): every probe to it times out.
    assert!(!to_c.is_empty());
    assert!(
        to_c.iter().all(|p| p.outcome == wire_format::ProbeOutcome::Timeout),
        "{to_c:?}"
    );

    // Stop b: a's probes to b time out from then on.
    let _ = b.child.kill();
    let _ = b.child.wait();
    let _ = probe_records(&sampler, Duration::from_millis(500));
    let after = probe_records(&sampler, Duration::from_secs(2));
    let to_b: Vec<_> = after.iter().filter(|p| p.dst_node == 102).collect();
    assert!(!to_b.is_empty());
    assert!(
        to_b.iter().all(|p| p.outcome == wire_format::ProbeOutcome::Timeout),
        "{to_b:?}"
    );

    // The agent's Prometheus endpoint counts what happened, in a form
    // promtool accepts.
    let page = scrape(metrics_a);
    let value = |series: &str| -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{page}"))
    };
    assert!(value("flowmesh_agent_probes_total{outcome=\"answered\"}") >= 10.0);
    assert!(value("flowmesh_agent_probes_total{outcome=\"timed_out\"}") >= 1.0);
    assert!(value("flowmesh_agent_datagrams_sent_total") >= 1.0);
    assert_eq!(value("flowmesh_agent_kernel_drops_total{reason=\"ring_full\"}"), 0.0);
    configs_runtime::promtool::promtool_check(&page).unwrap();
    drop(a);
}

/// The agent's /metrics, as an HTTP response.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

/// SIGHUP reloads the topology: a node added to the file is probed from the
/// next tick; a file that no longer loads is reported and the previous
/// topology kept, probes going on. The agent is configured by names: its
/// node's, and its sampler's (`localhost:PORT`, looked up when it starts
/// sending; the test sampler listens at the address the name has first,
/// 127.0.0.1 on CI).
#[test]
fn sighup_reloads_the_topology_and_keeps_the_old_one_when_the_new_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let topology = write_topology(dir.path(), &[(101, "127.0.0.1"), (102, "127.0.0.2")], no_extra);
    let localhost = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0))
        .unwrap()
        .next()
        .unwrap();
    let sampler = std::net::UdpSocket::bind(localhost).unwrap();
    let sampler_port = sampler.local_addr().unwrap().port();
    let cg = TestCgroup::create();
    let mut a = Agent::start(
        &cg,
        dir.path(),
        "a",
        &format!(
            // By name: the agent looks its id (101) up in the topology.
            "node_name = \"n101\"\ntopology = \"{}\"\n[uplink]\nsampler = \"localhost:{sampler_port}\"\n\
             flush_ms = 50\n[flows]\n\
             [probes]\nport = {port}\ninterval_ms = 100\ntimeout_ms = 200\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            topology.display(),
        ),
    );
    let hup = |a: &Agent| {
        let pid = a.child.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    };
    let targets = |records: &[wire_format::Probe]| {
        let mut t: Vec<u32> = records.iter().map(|p| p.dst_node).collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    assert_eq!(targets(&probe_records(&sampler, Duration::from_secs(1))), [102]);

    write_topology(
        dir.path(),
        &[(101, "127.0.0.1"), (102, "127.0.0.2"), (103, "127.0.0.3")],
        no_extra,
    );
    hup(&a);
    // Let in-flight probes to the old list time out, then look.
    let _ = probe_records(&sampler, Duration::from_millis(500));
    assert_eq!(targets(&probe_records(&sampler, Duration::from_secs(1))), [102, 103]);

    std::fs::write(&topology, "[[nodes]]\nid = \"not a number\"\n").unwrap();
    hup(&a);
    let _ = probe_records(&sampler, Duration::from_millis(500));
    assert_eq!(
        targets(&probe_records(&sampler, Duration::from_secs(1))),
        [102, 103],
        "the previous topology stays after a failed reload"
    );
    assert!(a.child.try_wait().unwrap().is_none(), "SIGHUP must not stop the agent");
}

/// A responder host that stalls (its agent stopped for 300 ms, as a host
/// stalls under load) delays its replies. The kernel stamps the requests
/// when they arrive, so the stall shows as responder delay, and the
/// network RTT of the same probes stays a loopback RTT. (With the receive
/// time taken when the agent reads the packet, the stall would read as
/// network delay.)
#[test]
fn a_stalled_responder_shows_as_responder_delay_not_network_rtt() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let topology = write_topology(dir.path(), &[(101, "127.0.0.1"), (102, "127.0.0.2")], no_extra);
    let sampler = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = |node: u32, uplink: String| {
        format!(
            "node_id = {node}\ntopology = \"{}\"\n[uplink]\nsampler = \"{uplink}\"\nflush_ms = 50\n[flows]\n\
             [probes]\nport = {port}\ninterval_ms = 50\ntimeout_ms = 2000\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            topology.display()
        )
    };
    let (cg_a, cg_b) = (TestCgroup::create(), TestCgroup::create());
    let _a = Agent::start(
        &cg_a,
        dir.path(),
        "a",
        &config(101, sampler.local_addr().unwrap().to_string()),
    );
    let b = Agent::start(&cg_b, dir.path(), "b", &config(102, "127.0.0.1:9".into()));
    let _ = probe_records(&sampler, Duration::from_millis(500));

    let pid = b.child.id().to_string();
    let signal = move |sig: &str| assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    let stall = std::thread::spawn(move || {
        for _ in 0..3 {
            signal("-STOP");
            std::thread::sleep(Duration::from_millis(300));
            signal("-CONT");
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    let records = probe_records(&sampler, Duration::from_secs(4));
    stall.join().unwrap();
    let answered: Vec<_> = records
        .iter()
        .filter(|p| p.dst_node == 102 && p.outcome == wire_format::ProbeOutcome::Ok)
        .map(wire_format::Probe::to_record)
        .collect();
    let stalled: Vec<_> = answered
        .iter()
        .filter(|r| r.responder_delay_ns().unwrap() >= 100_000_000)
        .collect();
    assert!(
        stalled.len() >= 3,
        "expected probes held through the stalls, got {} of {}",
        stalled.len(),
        answered.len()
    );
    for r in &answered {
        let rtt = r.network_rtt_ns().unwrap();
        assert!(
            rtt < 50_000_000,
            "network RTT {} ms with responder delay {} ms: the stall leaked into the network RTT",
            rtt / 1_000_000,
            r.responder_delay_ns().unwrap() / 1_000_000
        );
    }
}

/// Built with `--features rdma` on a host without RDMA (this one, and CI):
/// the agent says once that there is none, answers peers' endpoint queries
/// with "no endpoint", and probes over UDP as before.
#[cfg(feature = "rdma")]
#[test]
fn without_rdma_the_agent_says_so_once_and_probes_over_udp() {
    use zerocopy::IntoBytes;
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let topology = write_topology(dir.path(), &[(101, "127.0.0.1"), (102, "127.0.0.2")], |id| {
        format!("rdma_gids = [\"fd00::{id}\"]\n")
    });
    let cgroup = TestCgroup::create();
    let config = dir.path().join("a.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 101\ntopology = \"{}\"\n[flows]\ncgroup = \"{}\"\n[probes]\nport = {port}\n\
             interval_ms = 100\ntimeout_ms = 200\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            topology.display(),
            cgroup.0.display()
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("a.stderr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowmesh-agent"));
    command
        .args(["--debug", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let (child, lines) = spawn_debug_agent(command);
    let mut agent = Agent { child, lines };
    let probes: Vec<Value> = (0..5).map(|_| agent.next(Duration::from_secs(5))).collect();
    assert!(probes.iter().all(|p| p["probe"]["dst_node"] == 102), "{probes:?}");

    let asker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    asker.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    asker
        .send_to(wire_format::EndpointPacket::query(101).as_bytes(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 64];
    let len = asker.recv(&mut buf).expect("an endpoint reply");
    let reply = wire_format::EndpointPacket::parse(&buf[..len]).unwrap();
    assert_eq!((reply.node.get(), reply.endpoint()), (101, None));

    drop(agent);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(stderr.matches("no RDMA on this host").count(), 1, "{stderr}");
}

/// A connection that stays open is reported while open (every
/// `flows.report_open_secs`), with the bytes it has moved so far and the
/// flow id its close will carry; the connect is counted for its process;
/// and after a kill -9 none of the agent's programs or links remain.
#[test]
fn a_flow_that_stays_open_is_reported_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let topology = write_topology(dir.path(), &[(101, "127.0.0.1")], no_extra);
    let cgroup = TestCgroup::create();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut agent = Agent::start(
        &cgroup,
        dir.path(),
        "agent",
        &format!(
            "node_id = 101\ntopology = \"{}\"\n[flows]\nreport_open_secs = 1\n[probes]\nenabled = false\n\
             [metrics]\nlisten = \"{metrics}\"\n",
            topology.display()
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('{}', {}))\n\
         s.sendall(b'x' * 10000)\n\
         time.sleep(3.5)\n\
         s.close()\n",
        server_addr.ip(),
        server_addr.port()
    );
    assert!(python_in(&cgroup, None, &script).success());
    assert_eq!(server.join().unwrap(), 10_000);
    let mut open = Vec::new();
    let closed = loop {
        let line = agent.next(Duration::from_secs(10));
        if line["end_reason"] == "open" {
            open.push(line);
        } else {
            break line;
        }
    };
    assert!(!open.is_empty(), "no open report before the close: {closed}");
    for report in &open {
        assert_eq!(report["flow_id"], closed["flow_id"], "{report}");
        assert_eq!(report["bytes_acked"], 10_000, "{report}");
        assert_eq!(report["dst_port"], server_addr.port(), "{report}");
        assert!(report["duration_ns"].as_u64().unwrap() > 0, "{report}");
    }
    assert_eq!(closed["end_reason"], "closed", "{closed}");
    assert_eq!(closed["bytes_acked"], 10_000, "{closed}");
    assert!(closed["duration_ns"].as_u64().unwrap() >= 3_000_000_000, "{closed}");

    // The connect was counted for its process (python3, which has exited:
    // its entry is swept from the kernel table, its count kept).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(metrics);
        let connects = page
            .lines()
            .find_map(|l| l.strip_prefix("flowmesh_agent_connects_total{comm=\"python3\"} "))
            .map(str::to_string);
        if connects.as_deref() == Some("1") {
            assert!(page.contains("flowmesh_agent_open_flow_reports_total"), "{page}");
            // Every event the real programs wrote (open and closed) fit
            // the shared definition.
            assert!(
                page.lines()
                    .any(|l| l == "flowmesh_agent_kernel_drops_total{reason=\"invalid_event\"} 0"),
                "{page}"
            );
            configs_runtime::promtool::promtool_check(&page).unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "python3's connect not counted: {connects:?}\n{page}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // kill -9: the programs' links belong to the process, so nothing of
    // the agent stays attached even when it cannot clean up.
    let held = bpf_objects_of(agent.child.id());
    assert!(held.iter().any(|(k, _)| *k == "link_id"), "{held:?}");
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    for (kind, id) in held {
        assert!(bpf_object_released(kind, id), "{kind} {id} stayed after kill -9");
    }
}

/// How a refused start-up went: exit status, stderr, and any BPF program
/// or link seen attached while the agent ran.
struct Refused {
    code: Option<i32>,
    stderr: String,
    attached: Vec<String>,
}

/// Runs the agent with `config` (plus `args`), expecting it to refuse to
/// start: waits at most 20 s for it to exit, watching meanwhile for BPF
/// objects in its file descriptors and programs attached to `cgroup`
/// (only this agent attaches there, so other tests' agents cannot be
/// mistaken for it). An agent that attaches or keeps running is killed and
/// the test fails at once, so it never runs on after a failure.
fn run_refused(cgroup: &TestCgroup, dir: &std::path::Path, name: &str, config: &str, args: &[&str]) -> Refused {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let stderr_path = dir.join(format!("{name}.stderr"));
    // Killed on drop, so a failed assertion leaves no agent behind.
    struct Guard(Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut agent = Guard(
        Command::new(env!("CARGO_BIN_EXE_flowmesh-agent"))
            .args(args)
            .arg("--config")
            .arg(&path)
            // info: the agent's own "tracing TCP flows" line would show an
            // attach in stderr.
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attached = Vec::new();
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break Some(status);
        }
        attached.extend(
            bpf_objects_of(agent.0.id())
                .into_iter()
                .map(|(kind, id)| format!("agent holds {kind} {id}")),
        );
        attached.extend(programs_attached_to(cgroup));
        if !attached.is_empty() || Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(agent);
    // Anything attached while it ran is gone with the process (links are
    // owned by it); look once more in case it exited between two looks.
    attached.extend(programs_attached_to(cgroup));
    Refused {
        code: status.and_then(|s| s.code()),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
        attached,
    }
}

/// The programs attached to `cgroup`, as `bpftool cgroup show` lists them.
fn programs_attached_to(cgroup: &TestCgroup) -> Vec<String> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(&cgroup.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // The header line (`ID AttachType ...`) names no program.
        .filter(|l| l.split_whitespace().next().is_some_and(|id| id.parse::<u32>().is_ok()))
        .map(|l| format!("attached to the test cgroup: {}", l.trim()))
        .collect()
}

/// A node_id that is not in the topology is refused before any program is
/// loaded or any socket opened, whatever else is configured: with probes
/// off and uplink.sampler set (the agent used to trace and send), without
/// a sampler (it used to blame the sampler), with probes on and --debug;
/// a node_name that is not there likewise. One line, naming the key, the
/// value and the topology file, exit status 14.
#[test]
fn a_node_id_not_in_the_topology_is_refused_before_anything_is_attached() {
    let dir = tempfile::tempdir().unwrap();
    let topology = write_topology(
        dir.path(),
        &[(101, "127.0.0.1"), (102, "127.0.0.2"), (201, "127.0.0.3")],
        no_extra,
    );
    let cgroup = TestCgroup::create();
    let sampler = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let base = |identity: &str| {
        format!(
            "{identity}\ntopology = \"{}\"\n[flows]\ncgroup = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            topology.display(),
            cgroup.0.display()
        )
    };
    let with_sampler = |config: String| {
        config.replace(
            "[flows]",
            &format!("[uplink]\nsampler = \"{}\"\n[flows]", sampler.local_addr().unwrap()),
        )
    };
    let probes_off = |config: String| config.replace("[metrics]", "[probes]\nenabled = false\n[metrics]");
    let node_id_message = format!(
        "flowmesh-agent: node_id = 999 is not a node of {} (nodes: 101..=102, 201)",
        topology.display()
    );
    let node_name_message = format!(
        "flowmesh-agent: node_name = \"n999\" is not a node of {} (nodes: \"n101\", \"n102\", \"n201\")",
        topology.display()
    );
    let cases: [(&str, String, &[&str], &String); 4] = [
        (
            "probes off, uplink.sampler set",
            with_sampler(probes_off(base("node_id = 999"))),
            &[],
            &node_id_message,
        ),
        (
            "probes off, no sampler anywhere",
            probes_off(base("node_id = 999")),
            &[],
            &node_id_message,
        ),
        (
            "probes on, --debug",
            base("node_id = 999"),
            &["--debug"],
            &node_id_message,
        ),
        (
            "node_name, probes off, uplink.sampler set",
            with_sampler(probes_off(base("node_name = \"n999\""))),
            &[],
            &node_name_message,
        ),
    ];
    for (i, (case, config, args, message)) in cases.iter().enumerate() {
        let refused = run_refused(&cgroup, dir.path(), &format!("case{i}"), config, args);
        assert!(
            refused.attached.is_empty(),
            "{case}: BPF programs attached before the identity check: {:?}\nstderr: {}",
            refused.attached,
            refused.stderr
        );
        assert_eq!(refused.code, Some(14), "{case}: {}", refused.stderr);
        assert_eq!(refused.stderr.trim_end(), message.as_str(), "{case}");
        assert!(!refused.stderr.contains("sampler"), "{case}: {}", refused.stderr);
    }
    // Nothing was sent to the configured sampler.
    sampler.set_nonblocking(true).unwrap();
    assert!(sampler.recv(&mut [0u8; 2048]).is_err(), "the agent sent a datagram");
}

/// A node of the topology with no sampler address anywhere (no
/// uplink.sampler, none for its rack, no --debug) is refused before
/// anything is attached, with a message that says the sampler address is
/// what is missing and where to set it; exit status 15.
#[test]
fn no_sampler_address_is_refused_before_anything_is_attached() {
    let dir = tempfile::tempdir().unwrap();
    let topology = write_topology(dir.path(), &[(101, "127.0.0.1")], no_extra);
    let cgroup = TestCgroup::create();
    let config = format!(
        "node_id = 101\ntopology = \"{}\"\n[flows]\ncgroup = \"{}\"\n[probes]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        topology.display(),
        cgroup.0.display()
    );
    let refused = run_refused(&cgroup, dir.path(), "agent", &config, &[]);
    assert!(refused.attached.is_empty(), "{:?}", refused.attached);
    assert_eq!(refused.code, Some(15), "{}", refused.stderr);
    assert_eq!(
        refused.stderr.trim_end(),
        format!(
            "flowmesh-agent: no sampler address for node 101: set uplink.sampler, or `sampler` of its rack \"rack1\" in {}, or run with --debug",
            topology.display()
        )
    );
}
