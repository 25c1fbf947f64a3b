//! flowmesh's probe engine: one node's Pingmesh-style probing as a state
//! machine with time passed in and no I/O, shared by every transport.
//!
//! - [`session`]: [`ProbeSession`] — sequence numbers, probes in flight
//!   and their deadlines, timeouts, late and duplicate replies, probe
//!   records and counters;
//! - [`pace`]: [`Pacer`] — ticks, the rate cap's per-tick budget, the
//!   pinglist's rotation round and the cursor over a long pinglist.
//!
//! The transports are thin drivers around it: the agent's UDP prober
//! (node-agent, `probe::prober`) moves packets between a socket and the
//! session; the RDMA UD exchange (node-agent-rdma, `exchange`) adds only
//! what RDMA needs — work-request ids, the responder's follow-up carrying
//! its send-completion time t3 — and the agent's `rdma` module drives it
//! from the NIC's completions (clock calibration, queue-pair resolution).
//!
//! Why a crate of its own: both node-agent and node-agent-rdma use the
//! session, and neither can hold it for the other — node-agent depends on
//! node-agent-rdma (feature `rdma`), and node-agent-rdma must build and
//! test without the agent's eBPF build and tokio. Depending on wire-format
//! alone, it cannot reach a socket or a runtime, so it stays sans-IO by
//! construction, and its tests run on a virtual clock in a second.

pub mod pace;
pub mod session;

pub use pace::{Pacer, per_tick_budget};
pub use session::{
    EXPIRED_MEMORY, Local, Peer, ProbeKey, ProbeSession, Request, ResponderSendTime, SessionConfig, SessionStats,
    drain_ready,
};
