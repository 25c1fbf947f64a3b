//! The traffic generator: `flowmesh-bench traffic`, a hidden subcommand
//! that rack-sim starts in each node's namespace (and cgroup, so the node's
//! agent traces it). It serves requests on the node's address and, to every
//! peer in turn, makes request/response exchanges and a bulk upload every
//! 5 s, each on its own TCP connection, so every path carries TCP flows to
//! trace. With `--blast` it sends a paced UDP stream instead: the delay
//! fault's load.
//!
//! It runs as a process of its own, not a thread of rack-sim: it must be
//! inside the node's network namespace and cgroup, which a process enters
//! for all its threads. How rack-sim starts it ([`start_generators`],
//! [`start_blast`]) sits here beside its command line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::daemons::Daemons;
use super::namespaces::{Network, Node};

/// Port of every node's traffic-generator server.
const TRAFFIC_PORT: u16 = 8000;

/// Starts a traffic generator on every node: a server on its address, and
/// exchanges with every other node.
pub(super) fn start_generators(net: &Network, daemons: &mut Daemons) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    for node in &net.nodes {
        let peers: Vec<String> = net
            .nodes
            .iter()
            .filter(|p| p.id() != node.id())
            .map(|p| SocketAddr::from((p.ip(), TRAFFIC_PORT)).to_string())
            .collect();
        daemons.spawn(
            &format!("traffic-{}", node.name()),
            &node.ns,
            &exe,
            &[
                "traffic".into(),
                "--cgroup".into(),
                node.cgroup.display().to_string(),
                "--listen".into(),
                SocketAddr::from((node.ip(), TRAFFIC_PORT)).to_string(),
                "--peers".into(),
                peers.join(","),
            ],
        )?;
    }
    Ok(())
}

/// Starts a UDP stream of `kbps` from node `from` to `to`, for as long as
/// the current fault lasts; its output goes to blast.log.
pub(super) fn start_blast(daemons: &mut Daemons, from: &Node, to: SocketAddr, kbps: u64) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let args = [
        "traffic".into(),
        "--blast".into(),
        to.to_string(),
        "--blast-kbps".into(),
        kbps.to_string(),
    ];
    daemons.spawn_transient("blast", &from.ns, &exe, &args)
}

/// Options of the traffic generator (`flowmesh-bench traffic`, started by
/// rack-sim in each node's namespace).
#[derive(clap::Args, Debug)]
pub(crate) struct TrafficOptions {
    /// Join this cgroup first, so the node's agent traces the connections.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Serve requests here.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Peers to connect to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<SocketAddr>,
    /// Request/response exchanges per second with each peer.
    #[arg(long, default_value_t = 2.0)]
    per_peer_per_sec: f64,
    /// Response size of a request, bytes.
    #[arg(long, default_value_t = 32_768)]
    response_bytes: u64,
    /// A bulk upload of this many bytes to one peer every 5 s.
    #[arg(long, default_value_t = 1_000_000)]
    bulk_bytes: u64,
    /// Instead: send a UDP stream to this address...
    #[arg(long)]
    blast: Option<SocketAddr>,
    /// ...at this rate, kbit/s.
    #[arg(long, default_value_t = 4_000)]
    blast_kbps: u64,
}

/// Runs the traffic generator until killed.
pub(crate) fn traffic(options: &TrafficOptions) -> anyhow::Result<()> {
    if let Some(cgroup) = &options.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cgroup.display()))?;
    }
    if let Some(to) = options.blast {
        return blast(to, options.blast_kbps);
    }
    if let Some(listen) = options.listen {
        let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
    }
    let stats = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let peers = options.peers.clone();
    let interval = Duration::from_secs_f64(1.0 / (options.per_peer_per_sec * peers.len().max(1) as f64));
    let mut next = Instant::now();
    let mut next_bulk = Instant::now() + Duration::from_secs(5);
    let mut turn = 0usize;
    loop {
        if peers.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let peer = peers[turn % peers.len()];
        turn += 1;
        let (upload, response) = if Instant::now() >= next_bulk {
            next_bulk += Duration::from_secs(5);
            (options.bulk_bytes, 0)
        } else {
            (1_000, options.response_bytes)
        };
        let counts = stats.clone();
        // One thread per exchange so a slow peer (a fault) never stalls
        // the others; exchanges time out.
        std::thread::spawn(move || {
            let ok = exchange(peer, upload, response).is_ok();
            let mut s = counts.lock().unwrap_or_else(|p| p.into_inner());
            if ok { s.0 += 1 } else { s.1 += 1 }
        });
        if turn.is_multiple_of(1_000) {
            let s = *stats.lock().unwrap_or_else(|p| p.into_inner());
            println!("exchanges: {} ok, {} failed", s.0, s.1);
        }
    }
}

/// One exchange: a 16-byte header (bytes to upload, bytes wanted back),
/// the upload, then the response until the server closes.
fn exchange(peer: SocketAddr, upload: u64, response: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&peer, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&upload.to_be_bytes());
    header[8..].copy_from_slice(&response.to_be_bytes());
    stream.write_all(&header)?;
    let chunk = [0x5au8; 16_384];
    let mut left = upload;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut buf = [0u8; 16_384];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != response {
        return Err(std::io::Error::other(format!("got {got} of {response} bytes")));
    }
    Ok(())
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut header = [0u8; 16];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    // Bounded: a request for more than 64 MiB either way is refused.
    let (upload, response) = (field(0), field(8));
    if upload > 64 << 20 || response > 64 << 20 {
        return;
    }
    let mut buf = [0u8; 16_384];
    let mut left = upload;
    while left > 0 {
        match stream.read(&mut buf[..left.min(16_384) as usize]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n as u64,
        }
    }
    let chunk = [0xa5u8; 16_384];
    let mut left = response;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

/// A paced UDP stream of 1 200-byte datagrams.
fn blast(to: SocketAddr, kbps: u64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0u8; 1_200];
    let per_sec = (kbps * 1_000 / 8 / payload.len() as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / per_sec as f64);
    let mut next = Instant::now();
    loop {
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        // Unreachable-port errors from earlier datagrams are expected.
        let _ = socket.send_to(&payload, to);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use super::*;

    /// A server like a node's, on loopback, for `connections` connections.
    fn server(connections: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections).flatten() {
                serve(stream);
            }
        });
        addr
    }

    #[test]
    fn an_exchange_uploads_and_reads_back_the_bytes_asked_for() {
        let peer = server(3);
        exchange(peer, 1_000, 32_768).unwrap();
        exchange(peer, 1_000_000, 0).unwrap();
        exchange(peer, 0, 100_000).unwrap();
    }

    #[test]
    fn the_server_refuses_more_than_64_mib_either_way() {
        let peer = server(2);
        let error = exchange(peer, 0, (64 << 20) + 1).unwrap_err();
        assert!(error.to_string().contains("got 0 of"), "{error}");
        assert!(exchange(peer, 0, 1).is_ok());
    }
}
