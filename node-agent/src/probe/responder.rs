//! The probe responder: answers probe requests with its receive time (the
//! kernel's) and send time, and RDMA endpoint queries with this host's UD
//! queue pair, if it has one.

use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use wire_format::{ENDPOINT_MAGIC, ENDPOINT_QUERY, EndpointPacket, PROBE_REQUEST, ProbePacket};
use zerocopy::IntoBytes;

use super::socket::recv_stamped;
use super::stats::{ProbeStats, lock};
use crate::now_ns;

/// This host's RDMA UD probe endpoint — (QPN, Q_Key, GID) — once its queue
/// pair is open; empty on hosts without RDMA. The responder hands it to
/// peers that ask.
#[derive(Debug, Clone, Default)]
pub struct RdmaEndpoint(Arc<std::sync::OnceLock<(u32, u32, [u8; 16])>>);

impl RdmaEndpoint {
    /// Publishes the endpoint (once; later calls are ignored).
    pub fn set(&self, qpn: u32, qkey: u32, gid: [u8; 16]) {
        let _ = self.0.set((qpn, qkey, gid));
    }

    /// The endpoint, if published.
    pub fn get(&self) -> Option<(u32, u32, [u8; 16])> {
        self.0.get().copied()
    }
}

/// Answers probe requests and RDMA endpoint queries on `socket` for node
/// `me` until the task is dropped.
pub async fn respond(socket: Arc<UdpSocket>, me: u32, rdma: RdmaEndpoint, stats: Arc<Mutex<ProbeStats>>) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((len, from, received)) = recv_stamped(&socket, &mut buf).await else {
            continue;
        };
        if buf[..len].starts_with(&ENDPOINT_MAGIC) {
            match EndpointPacket::parse(&buf[..len]) {
                Ok(q) if q.kind == ENDPOINT_QUERY && q.node.get() == me => {
                    let reply = EndpointPacket::reply(me, rdma.get());
                    let _ = socket.send_to(reply.as_bytes(), from).await;
                }
                _ => lock(&stats).malformed += 1,
            }
            continue;
        }
        let reply = match ProbePacket::parse(&buf[..len]) {
            Ok(p) if p.kind == PROBE_REQUEST && p.responder_node.get() == me => p.reply(received, now_ns()),
            _ => {
                lock(&stats).malformed += 1;
                continue;
            }
        };
        if socket.send_to(reply.as_bytes(), from).await.is_ok() {
            lock(&stats).responded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::socket::bind;

    /// Peers learn this host's RDMA UD queue pair from the UDP responder;
    /// a host without one answers that it has none.
    #[tokio::test]
    async fn the_responder_answers_rdma_endpoint_queries() {
        let responder = Arc::new(bind("127.0.0.1:0".parse().unwrap(), 0).await.unwrap());
        let at = responder.local_addr().unwrap();
        let rdma = RdmaEndpoint::default();
        let stats = Arc::new(std::sync::Mutex::new(ProbeStats::default()));
        let task = tokio::spawn(respond(responder, 7, rdma.clone(), stats.clone()));
        let asker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |node: u32| {
            let asker = &asker;
            async move {
                asker.send_to(EndpointPacket::query(node).as_bytes(), at).await.unwrap();
                let mut buf = [0u8; 64];
                let got = tokio::time::timeout(Duration::from_secs(2), asker.recv(&mut buf)).await;
                got.ok()
                    .map(|len| EndpointPacket::parse(&buf[..len.unwrap()]).copied().unwrap())
            }
        };
        let reply = ask(7).await.expect("a reply");
        assert_eq!((reply.node.get(), reply.endpoint()), (7, None));
        let gid = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        rdma.set(0x1234, 0x464d_5052, gid);
        assert_eq!(
            ask(7).await.expect("a reply").endpoint(),
            Some((0x1234, 0x464d_5052, gid))
        );
        // A query meant for another node is not answered, and counted.
        let before = lock(&stats).malformed;
        asker.send_to(EndpointPacket::query(8).as_bytes(), at).await.unwrap();
        assert_eq!(ask(7).await.expect("a reply").node.get(), 7);
        assert_eq!(lock(&stats).malformed, before + 1);
        task.abort();
    }
}
