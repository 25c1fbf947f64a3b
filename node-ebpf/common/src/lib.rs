//! Types and constants shared by flowmesh's eBPF programs (node-ebpf) and
//! the agent that loads them (node-agent), defined here once: the records
//! the programs write ([`FlowEvent`], [`ProcessConnects`]), the numbers in
//! their fields ([`direction`], [`end_reason`], [`tcp_state`], the address
//! families), the drop counters' indexes ([`drops`]) and the names the agent
//! finds the maps and programs by.
//!
//! The records are `#[repr(C)]` without padding, so both sides agree byte
//! for byte. With the `user` feature (the agent's; the kernel build leaves
//! it off and compiles no zerocopy) they derive zerocopy's `FromBytes`,
//! `IntoBytes`, `Immutable` and `KnownLayout`: the compiler proves there is
//! no padding, and the agent reads them from the maps' bytes with zerocopy
//! instead of a hand-written parser.
//!
//! [`direction`] and [`end_reason`] are numbered as wire-format's
//! `Direction` and `EndReason` (the agent's tests check it), so the kernel's
//! numbers are the wire's. The agent converts a [`FlowEvent`] into a
//! wire-format flow through one function (node-agent's `tracer::flow`),
//! which refuses — counts and drops — any value not defined here.
//!
//! The map and program names below are the identifiers of the statics and
//! functions in node-ebpf (aya names a map or program after its
//! identifier); the agent looks each one up at load and refuses to start
//! without it, and its integration tests load the real object.
#![no_std]

/// Name of the ring buffer map carrying [`FlowEvent`]s: flows that were
/// established ([`kind::ESTABLISHED`]), that ended ([`kind::CLOSED`]), and
/// open flows that retransmitted ([`kind::RETRANSMITTING`]; at most one per
/// flow per [`RETRANS_EPOCH_MAP`] epoch).
pub const EVENTS_MAP: &str = "FLOW_EVENTS";
/// Name of the one-element array holding the agent's retransmission report
/// epoch (a `u64`; 0: no retransmission events). The agent advances it at
/// each of its retransmission reports; an open flow's first retransmission
/// in an epoch puts the flow in the ring.
pub const RETRANS_EPOCH_MAP: &str = "RETRANS_EPOCH";
/// Name of the LRU hash map of retransmitting flows (socket cookie →
/// [`FlowEvent`] with the counters as of its latest retransmission and, in
/// `epoch`, the epoch in which it last went into the ring). Only flows that
/// retransmit have an entry; stale ones age out, a cookie is never reused.
/// The agent reads it for flows of namespaces sock_diag cannot see.
pub const RETRANSMITTING_MAP: &str = "RETRANSMITTING";
/// Name of the per-CPU array of drop counters, indexed by [`drops`].
pub const DROPS_MAP: &str = "DROPS";
/// Name of the BTF tracepoint program on `inet_sock_set_state`: flows'
/// establishment and close, and connects (`CLOSE` → `SYN_SENT`).
pub const SET_STATE_PROGRAM: &str = "flowmesh_set_state";
/// Name of the BTF tracepoint program on `tcp_retransmit_skb`.
pub const RETRANSMIT_PROGRAM: &str = "flowmesh_retransmit";
/// The kernel function (tracepoint) each program attaches to.
pub const TRACEPOINTS: [(&str, &str); 2] = [
    (SET_STATE_PROGRAM, "inet_sock_set_state"),
    (RETRANSMIT_PROGRAM, "tcp_retransmit_skb"),
];
/// Name of the hash map of per-process TCP connect counts (tgid →
/// [`ProcessConnects`]).
pub const PROCS_MAP: &str = "PROCS";
/// Name of the programs' read-only array of kernel struct offsets, indexed
/// by [`layout`]; the agent resolves them from the running kernel's BTF and
/// sets them at load (Rust eBPF gets no CO-RE relocations).
pub const LAYOUT_GLOBAL: &str = "LAYOUT";

/// Indexes into [`LAYOUT_GLOBAL`]: the byte offset of one kernel struct
/// field each, named `STRUCT_FIELD`. The agent's table (node-agent's
/// `kernel_layout`) says which field and size each one is; the programs
/// read only through these.
pub mod layout {
    /// `sock.__sk_common.skc_family` (u16).
    pub const SKC_FAMILY: usize = 0;
    /// `sock.__sk_common.skc_num`: local port, host order (u16).
    pub const SKC_NUM: usize = 1;
    /// `sock.__sk_common.skc_dport`: remote port, network order (u16).
    pub const SKC_DPORT: usize = 2;
    /// `sock.__sk_common.skc_rcv_saddr` (IPv4 local address).
    pub const SKC_RCV_SADDR: usize = 3;
    /// `sock.__sk_common.skc_daddr` (IPv4 remote address).
    pub const SKC_DADDR: usize = 4;
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub const SKC_V6_RCV_SADDR: usize = 5;
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub const SKC_V6_DADDR: usize = 6;
    /// `sock.__sk_common.skc_net.net` (pointer).
    pub const SKC_NET: usize = 7;
    /// `net.net_cookie` (u64).
    pub const NET_COOKIE: usize = 8;
    /// `sock.sk_cgrp_data.cgroup` (pointer).
    pub const SK_CGROUP: usize = 9;
    /// `cgroup.self.parent` (pointer to a `cgroup_subsys_state`).
    pub const CGROUP_PARENT: usize = 10;
    /// `cgroup_subsys_state.cgroup` (pointer).
    pub const CSS_CGROUP: usize = 11;
    /// `cgroup.kn` (pointer).
    pub const CGROUP_KN: usize = 12;
    /// `kernfs_node.id` (u64: the cgroup directory's inode number).
    pub const KN_ID: usize = 13;
    /// `tcp_sock.inet_conn.icsk_inet.tos` (u8).
    pub const TCP_TOS: usize = 14;
    /// `tcp_sock.inet_conn.icsk_inet.pinet6` (pointer).
    pub const TCP_PINET6: usize = 15;
    /// `ipv6_pinfo.tclass` (u8).
    pub const IPV6_TCLASS: usize = 16;
    /// `tcp_sock.bytes_acked` (u64).
    pub const TCP_BYTES_ACKED: usize = 17;
    /// `tcp_sock.bytes_received` (u64).
    pub const TCP_BYTES_RECEIVED: usize = 18;
    /// `tcp_sock.segs_out` (u32).
    pub const TCP_SEGS_OUT: usize = 19;
    /// `tcp_sock.segs_in` (u32).
    pub const TCP_SEGS_IN: usize = 20;
    /// `tcp_sock.total_retrans` (u32).
    pub const TCP_TOTAL_RETRANS: usize = 21;
    /// `tcp_sock.srtt_us` (u32, scaled by 8).
    pub const TCP_SRTT_US: usize = 22;
    /// `tcp_sock.rtt_min.s[0].v` (u32: the windowed minimum RTT, µs).
    pub const TCP_RTT_MIN: usize = 23;
    /// `sock.__sk_common.skc_state` (u8, `TCP_*` numbering).
    pub const SKC_STATE: usize = 24;
    /// `sock.__sk_common.skc_cookie` (u64: the socket cookie, once
    /// generated).
    pub const SKC_COOKIE: usize = 25;
    /// `sock.sk_protocol` (u16).
    pub const SK_PROTOCOL: usize = 26;
    /// `tcp_sock.tcp_clock_cache` (u64: the socket's latest TCP clock read,
    /// `CLOCK_MONOTONIC` ns; refreshed as the handshake's last segment is
    /// processed, just before the socket becomes established).
    pub const TCP_CLOCK_CACHE: usize = 27;
    /// Number of offsets.
    pub const COUNT: usize = 28;
}

/// A process's TCP `connect()` calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct ProcessConnects {
    /// Calls counted.
    pub connects: u64,
    /// The process's command name (NUL-padded), at its first connect.
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ProcessConnects>() == 24);

impl ProcessConnects {
    /// The command name as text.
    pub fn comm_str(&self) -> &str {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(self.comm.len());
        core::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

/// Indexes of the drop counters: every event the programs could not deliver
/// is counted here, none is lost silently.
pub mod drops {
    /// The ring buffer was full: a finished flow's event was lost.
    pub const RING_FULL: u32 = 0;
    /// The agent's table of open flows was full: a new flow could not be
    /// tracked (counted by the agent, which keeps the table).
    pub const FLOWS_FULL: u32 = 1;
    /// The process table was full: a process's connects went uncounted.
    pub const PROCS_FULL: u32 = 2;
    /// The ring buffer was full when an open flow retransmitted: its
    /// prompt report waits for its next retransmission, the periodic open
    /// report or its close.
    pub const RETRANS_RING_FULL: u32 = 3;
    /// The ring buffer was full when a flow was established: the flow is
    /// not tracked (its end finds no establishment).
    pub const ESTABLISH_RING_FULL: u32 = 4;
    /// The kernel skipped a program run because the program was already
    /// running on that CPU (a state change in an interrupt that came in
    /// during a run): an establishment, end or connect went unseen.
    /// Counted by the kernel per program (`recursion_misses`); the agent
    /// reads it from the programs' fdinfo.
    pub const RECURSION_MISSES: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// What a ring-buffer [`FlowEvent`] reports.
pub mod kind {
    /// A flow was established: its identity, start and counters then.
    pub const ESTABLISHED: u32 = 1;
    /// A flow ended: its counters at the end, end reason and old state
    /// (identity and start are the agent's, from its establishment).
    pub const CLOSED: u32 = 2;
    /// An open flow retransmitted (its first in the epoch): its counters
    /// then.
    pub const RETRANSMITTING: u32 = 3;
}

/// Direction of a flow's open, numbered as wire-format's `Direction`.
pub mod direction {
    /// This host connected (active open).
    pub const OUTBOUND: u8 = 1;
    /// This host accepted (passive open).
    pub const INBOUND: u8 = 2;
}

/// How a flow ended, numbered as wire-format's `EndReason` (whose
/// `Timeout` the programs cannot tell apart from a reset, so never write).
pub mod end_reason {
    /// Still open: an establishment, a retransmission event, or a
    /// periodic report of it.
    pub const OPEN: u8 = 0;
    /// Closed by FIN exchange.
    pub const CLOSED: u8 = 1;
    /// Reset or aborted (closed straight from an open state).
    pub const RESET: u8 = 2;
}

/// One TCP flow as the programs saw it, at one of the moments [`kind`]
/// names; the agent keeps the establishment's as its table of open flows
/// and completes the other two from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct FlowEvent {
    /// The kernel's socket cookie: unique while the kernel runs, so a new
    /// connection reusing addresses and ports is a new flow.
    pub cookie: u64,
    /// `CLOCK_MONOTONIC` at establishment, ns: the kernel's TCP clock as
    /// it stamped the handshake's last segment.
    pub start_mono_ns: u64,
    /// `CLOCK_MONOTONIC` at close, or at the latest refresh of an open
    /// flow, ns.
    pub end_mono_ns: u64,
    /// Payload bytes sent and acknowledged.
    pub bytes_acked: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Local address: 4 bytes for IPv4 (rest zero), 16 for IPv6.
    pub local_addr: [u8; 16],
    /// Remote address, likewise.
    pub remote_addr: [u8; 16],
    /// Local port, host order.
    pub local_port: u16,
    /// Remote port, host order.
    pub remote_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// [`direction`].
    pub direction: u8,
    /// [`end_reason`].
    pub end_reason: u8,
    /// Segments sent.
    pub segs_out: u32,
    /// Segments received.
    pub segs_in: u32,
    /// Segments retransmitted.
    pub total_retrans: u32,
    /// Smoothed RTT, µs (already divided by the kernel's factor 8).
    pub srtt_us: u32,
    /// Minimum RTT seen, µs.
    pub rtt_min_us: u32,
    /// IPv4 TOS or IPv6 traffic class (DSCP is the top six bits).
    pub tos: u32,
    /// TCP state the socket closed from (`TCP_*` numbering), which tells
    /// whether FINs were exchanged.
    pub old_state: u32,
    /// `bytes_acked` at establishment (the SYN's sequence number).
    pub start_bytes_acked: u32,
    /// The socket's network namespace cookie (`net.net_cookie`): the agent
    /// asks sock_diag for current counters only in its own namespace.
    pub netns_cookie: u64,
    /// [`kind`].
    pub kind: u32,
    /// In a [`RETRANSMITTING_MAP`] entry, the epoch (its low 32 bits) in
    /// which the flow last went into the ring; 0 elsewhere.
    pub epoch: u32,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 128);

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod tcp_state {
    /// Established.
    pub const ESTABLISHED: u32 = 1;
    /// SYN sent.
    pub const SYN_SENT: u32 = 2;
    /// SYN received.
    pub const SYN_RECV: u32 = 3;
    /// Our FIN sent, not yet acknowledged.
    pub const FIN_WAIT1: u32 = 4;
    /// Our FIN acknowledged, waiting for the peer's.
    pub const FIN_WAIT2: u32 = 5;
    /// Both FINs done.
    pub const TIME_WAIT: u32 = 6;
    /// Closed.
    pub const CLOSE: u32 = 7;
    /// The peer's FIN received.
    pub const CLOSE_WAIT: u32 = 8;
    /// Our FIN sent after the peer's.
    pub const LAST_ACK: u32 = 9;
    /// Listening.
    pub const LISTEN: u32 = 10;
    /// Both sides sent FIN at once.
    pub const CLOSING: u32 = 11;
}

impl FlowEvent {
    /// Payload bytes sent and acknowledged: the kernel's counter advances
    /// by one sequence number for the SYN and one for an acknowledged FIN.
    pub fn payload_acked(&self) -> u64 {
        use tcp_state::*;
        let fin_acked = matches!(self.old_state, FIN_WAIT2 | TIME_WAIT | LAST_ACK | CLOSING);
        self.bytes_acked
            .saturating_sub(u64::from(self.start_bytes_acked))
            .saturating_sub(u64::from(fin_acked))
    }

    /// Payload bytes received: the counter advances by one for the peer's
    /// FIN.
    pub fn payload_received(&self) -> u64 {
        use tcp_state::*;
        let fin_received = matches!(self.old_state, FIN_WAIT2 | TIME_WAIT | LAST_ACK | CLOSING | CLOSE_WAIT);
        self.bytes_received.saturating_sub(u64::from(fin_received))
    }
}

/// Address family of an IPv4 socket (`AF_INET`, as Linux numbers it).
pub const AF_INET: u16 = 2;
/// Address family of an IPv6 socket (`AF_INET6`).
pub const AF_INET6: u16 = 10;
