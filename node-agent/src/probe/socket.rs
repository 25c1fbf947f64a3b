//! Probe sockets: UDP sockets whose packets leave with the configured
//! DSCP, and whose received datagrams carry the kernel's receive time.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::now_ns;

/// Binds a probe socket on `addr` whose packets leave with `dscp` in their
/// TOS byte (IPv4) or traffic class (IPv6), and whose received packets the
/// kernel timestamps (read them with [`recv_stamped`]).
pub async fn bind(addr: SocketAddr, dscp: u8) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).await?;
    // DSCP is the upper six bits; the lower two (ECN) stay 0.
    let tos = i32::from(dscp & 0x3f) << 2;
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::Ipv4Tos, &tos)?;
    } else {
        setsockopt(&socket, sockopt::Ipv6TClass, &tos)?;
    }
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
    Ok(socket)
}

/// Receives one datagram into `buf`: its length, its sender and when the
/// kernel received it (ns since the Unix epoch; the current time if the
/// socket was not bound with [`bind`] and the kernel gave none).
pub async fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    let fd = socket.as_raw_fd();
    socket.async_io(Interest::READABLE, || recv_now(fd, buf)).await
}

/// Receives one datagram if one is waiting, without waiting: as
/// [`recv_stamped`], or a `WouldBlock` error when the socket is empty.
///
/// It asks the kernel even when tokio has not seen the socket become
/// readable yet: a driver that was stalled runs its timers and reads in
/// whatever order the runtime wakes it, and must find every datagram the
/// kernel already holds before it expires probes. The read through
/// `try_io` comes first so that tokio forgets a readiness the socket no
/// longer has (`readable()` would otherwise wake the driver for nothing).
pub fn try_recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    let fd = socket.as_raw_fd();
    match socket.try_io(Interest::READABLE, || recv_now(fd, buf)) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => recv_now(fd, buf),
        received => received,
    }
}

fn recv_now(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u64)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    // Non-blocking: tokio retries on EAGAIN when the socket is readable.
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let mut stamp = None;
    // A truncated control buffer only loses the stamp.
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            stamp = u64::try_from(t.tv_sec())
                .ok()
                .zip(u64::try_from(t.tv_nsec()).ok())
                .map(|(secs, nanos)| secs * 1_000_000_000 + nanos);
        }
    }
    let from = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| std::io::Error::other("datagram without an IP source address"))?;
    Ok((msg.bytes, from, stamp.unwrap_or_else(now_ns)))
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    match addr.family()? {
        nix::sys::socket::AddressFamily::Inet => addr.as_sockaddr_in().map(|a| SocketAddr::from(*a)),
        nix::sys::socket::AddressFamily::Inet6 => addr.as_sockaddr_in6().map(|a| SocketAddr::from(*a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The receive time is the kernel's, when the packet reached the
    /// socket, not when the agent read it.
    #[tokio::test]
    async fn receive_times_are_the_kernels() {
        let rx = bind("127.0.0.1:0".parse().unwrap(), 0).await.unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel turns receive timestamping on for the whole system in
        // deferred work when the first socket asks; until then a packet is
        // stamped when read. One packet through first, as an agent's
        // sockets have long been open before they carry probes.
        let mut buf = [0u8; 64];
        tx.send_to(b"warm", rx.local_addr().unwrap()).unwrap();
        recv_stamped(&rx, &mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = now_ns();
        tx.send_to(b"stamp", rx.local_addr().unwrap()).unwrap();
        // The agent busy elsewhere for 200 ms.
        std::thread::sleep(Duration::from_millis(200));
        let (len, from, stamp) = tokio::time::timeout(Duration::from_secs(5), recv_stamped(&rx, &mut buf))
            .await
            .unwrap()
            .unwrap();
        let read = now_ns();
        assert_eq!((len, from), (5, tx.local_addr().unwrap()));
        assert!(
            stamp + 1_000_000 >= sent && stamp < sent + 100_000_000,
            "stamp {stamp}, sent {sent}"
        );
        assert!(
            read - stamp >= 150_000_000,
            "read {} ms after the stamp",
            (read - stamp) / 1_000_000
        );
    }

    /// What a receiver sees in the TOS byte or traffic class of a probe
    /// socket's packets.
    fn received_tos(dscp: u8, local: &str) -> i32 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rx = std::net::UdpSocket::bind(local).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let v4 = rx.local_addr().unwrap().is_ipv4();
        if v4 {
            setsockopt(&rx, sockopt::IpRecvTos, &true).unwrap();
        } else {
            setsockopt(&rx, sockopt::Ipv6RecvTClass, &true).unwrap();
        }
        runtime.block_on(async {
            let tx = bind(local.parse().unwrap(), dscp).await.unwrap();
            tx.send_to(b"dscp", rx.local_addr().unwrap()).await.unwrap();
        });
        let mut buf = [0u8; 16];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(i32);
        let msg = recvmsg::<SockaddrStorage>(rx.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        msg.cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::Ipv4Tos(tos) => Some(i32::from(tos)),
                ControlMessageOwned::Ipv6TClass(class) => Some(class),
                _ => None,
            })
            .expect("a TOS or traffic class control message")
    }

    #[test]
    fn probe_packets_carry_the_configured_dscp() {
        // EF (46) is TOS 0xb8; CS1 (8) is 0x20; 0 stays 0.
        assert_eq!(received_tos(46, "127.0.0.1:0"), 0xb8);
        assert_eq!(received_tos(8, "127.0.0.1:0"), 0x20);
        assert_eq!(received_tos(0, "127.0.0.1:0"), 0);
        assert_eq!(received_tos(46, "[::1]:0"), 0xb8);
    }
}
