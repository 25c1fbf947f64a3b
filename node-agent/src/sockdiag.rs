//! The current counters of this network namespace's TCP sockets, from the
//! kernel's sock_diag netlink interface (what `ss -ti` reads), keyed by
//! socket cookie — the key the agent's table of open flows uses.
//!
//! Flows that stay open are reported from here rather than by tracing
//! every ACK: a callback per RTT sample cost a short-connection workload 5 %
//! of its rate (docs/performance.md); one dump every
//! `flows.report_open_secs` costs nothing per packet. Sockets of other
//! network namespaces (e.g. containers whose cgroup the agent traces from
//! the host's namespace) are not in the dump; their open reports carry the
//! counters the programs last saw (at establishment or the latest
//! retransmission).
//!
//! Flows that retransmitted are reported within `flows.retrans_report_ms`,
//! and only those: [`tcp_counters_of`] asks for each of them by its
//! addresses, ports and cookie, one small request each, rather than
//! dumping every socket of the namespace every second.

use std::collections::HashMap;
use std::net::SocketAddr as IpSocketAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

/// A TCP socket's counters, as `struct tcp_info` gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Bytes acknowledged by the peer (`tcpi_bytes_acked`; counts the SYN).
    pub bytes_acked: u64,
    /// Bytes received (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Segments sent.
    pub segs_out: u32,
    /// Segments received.
    pub segs_in: u32,
    /// Segments retransmitted.
    pub total_retrans: u32,
    /// Smoothed RTT, µs.
    pub srtt_us: u32,
    /// Minimum RTT, µs.
    pub min_rtt_us: u32,
}

/// The socket cookie sock_diag reports: two 32-bit halves, low first, each
/// in host order.
fn cookie(raw: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The cookie in sock_diag's layout (the inverse of [`cookie`]).
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let mut raw = [0u8; 8];
    raw[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    raw[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    raw
}

/// `struct tcp_info`'s counters as [`TcpCounters`].
fn counters(info: &netlink_packet_sock_diag::inet::nlas::TcpInfo) -> TcpCounters {
    TcpCounters {
        bytes_acked: info.bytes_acked,
        bytes_received: info.bytes_received,
        segs_out: info.segs_out,
        segs_in: info.segs_in,
        total_retrans: info.total_retrans,
        srtt_us: info.rtt,
        min_rtt_us: info.min_rtt,
    }
}

/// One TCP socket to look up: its local and remote endpoints (both IPv4,
/// or both IPv6, IPv4-mapped included) and its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKey {
    /// The local address and port.
    pub local: IpSocketAddr,
    /// The remote address and port.
    pub remote: IpSocketAddr,
    /// The socket cookie (`SO_COOKIE`, the key of the agent's table of
    /// open flows).
    pub cookie: u64,
}

/// What sock_diag says of one socket of this network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Open, with these counters.
    Open(TcpCounters),
    /// There, without TCP counters: closed, waiting out TIME_WAIT.
    Closing,
    /// Not there under this cookie: another namespace's socket, or gone.
    Absent,
}

/// Looks up each of `keys` with a request of its own (found by addresses
/// and ports, checked by cookie): the cost is the number of sockets asked
/// for, not the number the namespace has.
pub fn tcp_counters_of(keys: &[SocketKey]) -> std::io::Result<Vec<Lookup>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 13);
    keys.iter()
        .enumerate()
        .map(|(i, key)| lookup_one(&socket, key, i as u32 + 1, &mut buf))
        .collect()
}

fn lookup_one(socket: &Socket, key: &SocketKey, sequence: u32, buf: &mut Vec<u8>) -> std::io::Result<Lookup> {
    let family = if key.local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    let id = SocketId {
        source_port: key.local.port(),
        destination_port: key.remote.port(),
        source_address: key.local.ip(),
        destination_address: key.remote.ip(),
        interface_id: 0,
        cookie: cookie_bytes(key.cookie),
    };
    send_request(socket, header, family, id)?;
    // One reply: the socket, or an error (ENOENT: no such socket here;
    // ESTALE: the addresses and ports are another socket's now). Replies to
    // earlier requests cannot be pending: each was read before the next
    // request went out; a stray one is skipped by its sequence number.
    for _ in 0..16 {
        buf.clear();
        let len = socket.recv(buf, 0)?;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..len])
            .map_err(|e| std::io::Error::other(format!("sock_diag reply: {e}")))?;
        if message.header.sequence_number != sequence {
            continue;
        }
        return Ok(match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => response
                .nlas
                .iter()
                .find_map(|nla| match nla {
                    Nla::TcpInfo(info) => Some(Lookup::Open(counters(info))),
                    _ => None,
                })
                .unwrap_or(Lookup::Closing),
            _ => Lookup::Absent,
        });
    }
    Err(std::io::Error::other("sock_diag: no reply to a socket lookup"))
}

/// Every TCP socket of this network namespace with its counters, by
/// socket cookie.
pub fn tcp_counters() -> std::io::Result<HashMap<u64, TcpCounters>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut out = HashMap::new();
    for (family, id) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
        dump(&socket, family, id, &mut out)?;
    }
    Ok(out)
}

/// Sends one request for TCP sockets of `family` matching `id` (every
/// state, with `tcp_info`): a lookup of one socket or, with `NLM_F_DUMP`
/// in `header`, a dump.
fn send_request(socket: &Socket, header: NetlinkHeader, family: u8, id: SocketId) -> std::io::Result<()> {
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id: id,
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    Ok(())
}

fn dump(socket: &Socket, family: u8, id: SocketId, out: &mut HashMap<u64, TcpCounters>) -> std::io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    send_request(socket, header, family, id)?;
    // Bounded: a dump ends with NLMSG_DONE; a kernel that never sent it
    // would still run out of sockets to report long before this.
    for _ in 0..1_000_000 {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        let len = socket.recv(&mut buf, 0)?;
        let mut at = 0;
        while at < len {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..len])
                .map_err(|e| std::io::Error::other(format!("sock_diag reply: {e}")))?;
            let step = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(std::io::Error::other(format!("sock_diag: {e:?}")));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    for nla in response.nlas.iter() {
                        if let Nla::TcpInfo(info) = nla {
                            out.insert(cookie(response.header.socket_id.cookie), counters(info));
                        }
                    }
                }
                _ => {}
            }
            if step == 0 {
                break;
            }
            at += step;
        }
    }
    Err(std::io::Error::other("sock_diag dump did not end"))
}

#[cfg(test)]
mod tests {
    use super::*;
    // getsockopt_impl! names `libc` unqualified.
    use nix::libc;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    #[test]
    fn cookies_are_read_as_the_kernel_splits_them() {
        let c: u64 = 0x0000_0012_3456_789a;
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&(c as u32).to_ne_bytes());
        raw[4..].copy_from_slice(&((c >> 32) as u32).to_ne_bytes());
        assert_eq!(cookie(raw), c);
        assert_eq!(cookie_bytes(c), raw);
    }

    /// `SO_COOKIE`: a socket's cookie, the key sock_diag reports it under
    /// (and the key of the agent's table of open flows).
    #[derive(Clone, Copy, Debug)]
    struct Cookie;

    nix::getsockopt_impl!(
        Cookie,
        libc::SOL_SOCKET,
        libc::SO_COOKIE,
        u64,
        nix::sys::socket::sockopt::GetStruct<u64>
    );

    fn cookie_of(socket: &TcpStream) -> u64 {
        nix::sys::socket::getsockopt(socket, Cookie).expect("SO_COOKIE")
    }

    /// Sockets asked for by key are found with their own counters, also
    /// over IPv6; one waiting out TIME_WAIT is closing; a key with another
    /// socket's cookie, or of a socket that is gone, is absent.
    #[test]
    fn sockets_are_looked_up_by_their_addresses_ports_and_cookie() {
        let connect = |listener: &TcpListener, bytes: usize| {
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            (&client).write_all(&vec![1u8; bytes]).expect("write");
            server.read_exact(&mut vec![0u8; bytes]).expect("read");
            (client, server)
        };
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let v6 = TcpListener::bind("[::1]:0").expect("bind ::1");
        let (a, _a_server) = connect(&v4, 1_234);
        let (b, b_server) = connect(&v6, 4_321);
        let key = |s: &TcpStream| SocketKey {
            local: s.local_addr().expect("addr"),
            remote: s.peer_addr().expect("peer"),
            cookie: cookie_of(s),
        };
        let (a_key, b_key) = (key(&a), key(&b));
        let wrong_cookie = SocketKey {
            cookie: b_key.cookie,
            ..a_key
        };
        // The last ACK may still be on its way: ask again for 5 s at most.
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let found = tcp_counters_of(&[a_key, b_key, wrong_cookie]).expect("sock_diag lookups");
            let acked = |l: &Lookup| match l {
                Lookup::Open(c) => Some(c.bytes_acked),
                _ => None,
            };
            if (acked(&found[0]), acked(&found[1])) == (Some(1_235), Some(4_322)) || Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            matches!(found[0], Lookup::Open(c) if c.bytes_acked == 1_235),
            "{found:?}"
        );
        assert!(
            matches!(found[1], Lookup::Open(c) if c.bytes_acked == 4_322),
            "{found:?}"
        );
        assert_eq!(found[2], Lookup::Absent);
        // Reset (SO_LINGER 0): no TIME_WAIT, the socket is gone.
        nix::sys::socket::setsockopt(
            &a,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .expect("SO_LINGER");
        drop(a);
        assert_eq!(tcp_counters_of(&[a_key]).expect("lookup"), [Lookup::Absent]);
        // b closes first, then its peer: b waits out TIME_WAIT.
        drop(b);
        drop(b_server);
        let deadline = Instant::now() + Duration::from_secs(5);
        let closing = loop {
            let found = tcp_counters_of(&[b_key]).expect("lookup");
            if found == [Lookup::Closing] || Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(closing, [Lookup::Closing]);
        assert_eq!(tcp_counters_of(&[]).expect("no lookups"), []);
    }

    /// Two live connections of this process are each in the dump under
    /// their own socket's cookie with the bytes that socket moved: found by
    /// cookie, a socket cannot be taken for another (of this test, of a
    /// parallel test, or of any process on the host) that moved as much.
    #[test]
    fn live_connections_are_in_the_dump_under_their_own_cookies() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let connect = |bytes: usize| {
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            (&client).write_all(&vec![1u8; bytes]).expect("write");
            server.read_exact(&mut vec![0u8; bytes]).expect("read");
            (client, server)
        };
        // Different sizes: a mix-up of the two shows as a wrong count.
        let (a, a_server) = connect(12_345);
        let (b, b_server) = connect(23_456);
        let cookies = [&a, &a_server, &b, &b_server].map(cookie_of);
        let distinct: std::collections::HashSet<u64> = cookies.into_iter().collect();
        assert_eq!(distinct.len(), 4, "cookies not distinct: {cookies:?}");
        let [a_cookie, a_server_cookie, b_cookie, b_server_cookie] = cookies;
        let pair = |s: &TcpStream| format!("{} → {}", s.local_addr().expect("addr"), s.peer_addr().expect("peer"));

        // The server has read every byte, but the ACK of the last segment
        // may not have reached the client yet: dump again until both
        // clients show all their bytes acknowledged, for 5 s at most.
        let deadline = Instant::now() + Duration::from_secs(5);
        let counters = loop {
            let counters = tcp_counters().expect("sock_diag dump");
            let acked = |cookie: u64| counters.get(&cookie).map(|c| c.bytes_acked);
            if (acked(a_cookie), acked(b_cookie)) == (Some(12_346), Some(23_457)) || Instant::now() >= deadline {
                break counters;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let get = |cookie: u64, socket: &TcpStream| {
            *counters.get(&cookie).unwrap_or_else(|| {
                panic!(
                    "socket {} (cookie {cookie}) not among the {} sockets of the dump",
                    pair(socket),
                    counters.len()
                )
            })
        };
        for (cookie, socket, bytes) in [(a_cookie, &a, 12_345u64), (b_cookie, &b, 23_456)] {
            let c = get(cookie, socket);
            // bytes_acked counts the SYN.
            assert_eq!(c.bytes_acked, bytes + 1, "client {}: {c:?}", pair(socket));
            assert_eq!(c.bytes_received, 0, "client {}: {c:?}", pair(socket));
            assert!(c.segs_out >= 2 && c.srtt_us > 0, "client {}: {c:?}", pair(socket));
        }
        for (cookie, socket, bytes) in [
            (a_server_cookie, &a_server, 12_345u64),
            (b_server_cookie, &b_server, 23_456),
        ] {
            let c = get(cookie, socket);
            assert_eq!(c.bytes_received, bytes, "server {}: {c:?}", pair(socket));
            assert!(c.segs_in >= 2, "server {}: {c:?}", pair(socket));
        }
    }
}
