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

/// Name of the ring buffer map carrying [`FlowEvent`]s: flows that ended,
/// and open flows that retransmitted (end reason [`end_reason::OPEN`]; at
/// most one per flow per [`RETRANS_EPOCH_MAP`] epoch).
pub const EVENTS_MAP: &str = "FLOW_EVENTS";
/// Name of the one-element array holding the agent's retransmission report
/// epoch (a `u64`; 0: no retransmission events). The agent advances it at
/// each of its retransmission reports; an open flow's first retransmission
/// in an epoch puts the flow in the ring ([`FlowEvent::retrans_epoch`]).
pub const RETRANS_EPOCH_MAP: &str = "RETRANS_EPOCH";
/// Name of the hash map of established flows (socket cookie → their latest
/// [`FlowEvent`], `end_reason` [`end_reason::OPEN`]).
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the per-CPU array of drop counters, indexed by [`drops`].
pub const DROPS_MAP: &str = "DROPS";
/// Name of the sock_ops program.
pub const SOCK_OPS_PROGRAM: &str = "flowmesh_sock_ops";
/// Name of the hash map of per-process TCP connect counts (tgid →
/// [`ProcessConnects`]).
pub const PROCS_MAP: &str = "PROCS";
/// Names of the cgroup connect programs (IPv4, IPv6), which count
/// `connect()` calls in the caller's context, where pid and comm are its.
pub const CONNECT_PROGRAMS: [&str; 2] = ["flowmesh_connect4", "flowmesh_connect6"];

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
    /// The flow table was full: a new flow could not be tracked.
    pub const FLOWS_FULL: u32 = 1;
    /// A flow ended that was established before the programs were attached
    /// (or whose start could not be tracked); it is not reported.
    pub const UNTRACKED_END: u32 = 2;
    /// The process table was full: a process's connects went uncounted.
    pub const PROCS_FULL: u32 = 3;
    /// The ring buffer was full when an open flow retransmitted: its
    /// prompt report waits for its next retransmission, the periodic open
    /// report or its close.
    pub const RETRANS_RING_FULL: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
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
    /// Still open: a map entry, a retransmission event, or a periodic
    /// report of it.
    pub const OPEN: u8 = 0;
    /// Closed by FIN exchange.
    pub const CLOSED: u8 = 1;
    /// Reset or aborted (closed straight from an open state).
    pub const RESET: u8 = 2;
}

/// One TCP flow as the sock_ops program saw it: at close (in the ring
/// buffer), as of its latest refresh while open (in the flow map), or at a
/// retransmission (in the ring buffer, end reason [`end_reason::OPEN`]).
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
    /// `CLOCK_BOOTTIME` at establishment, ns.
    pub start_boot_ns: u64,
    /// `CLOCK_BOOTTIME` at close, or at the latest refresh of an open flow, ns.
    pub end_boot_ns: u64,
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
    /// The [`RETRANS_EPOCH_MAP`] epoch in which the flow last went into the
    /// ring for retransmitting (0: never): the program's note that the
    /// agent already knows, so a burst costs one event per epoch.
    pub retrans_epoch: u64,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 120);

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
