//! Pingmesh-style UDP probes: the pinglist from the topology, a responder
//! that echoes requests with its own timestamps, and the UDP prober — a
//! thin driver moving packets between a socket and the shared probe
//! session (node-agent-probe's `ProbeSession`, which decides what to send,
//! matches replies, times out the unanswered and makes the records).
//!
//! - [`mod@pinglist`]: whom to probe, from the topology, and the session's
//!   settings from `probes`;
//! - [`socket`]: probe sockets with the configured DSCP and kernel
//!   receive timestamps;
//! - [`responder`]: answers probe requests and RDMA endpoint queries;
//! - [`prober`]: the UDP driver of the probe session;
//! - [`reload`]: the topology reloaded on SIGHUP;
//! - [`stats`]: the counters behind the probe metrics.
//!
//! Receive times (t2 on the responder, t4 on the requester) are the
//! kernel's (`SO_TIMESTAMPNS`): the moment the packet reached the socket,
//! not the moment the agent got round to reading it, so the agent's own
//! scheduling delay stays out of the network RTT — on the responder it is
//! part of the responder delay, where it belongs — and out of timeouts: a
//! reply the kernel received within the timeout is answered however late
//! the prober reads it. Send times (t1, t3) are
//! taken just before the send system call. Probe packets carry the
//! configured DSCP in their TOS byte (IPv4) or traffic class (IPv6), so
//! they see the queues of the traffic class they measure.
//!
//! The responder also answers [`wire_format::EndpointPacket`] queries with
//! this host's RDMA UD probe endpoint (see [`RdmaEndpoint`] and the `rdma`
//! module), so peers can address its queue pair.

pub mod pinglist;
pub mod prober;
pub mod reload;
pub mod responder;
pub mod socket;
pub mod stats;

pub use pinglist::{Target, pinglist, session_config};
pub use prober::{ProberSettings, probe};
pub use reload::reload_on_sighup;
pub use responder::{RdmaEndpoint, respond};
pub use socket::{bind, recv_stamped, try_recv_stamped};
pub use stats::ProbeStats;
