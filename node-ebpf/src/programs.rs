//! The sock_ops program and its maps (BPF target only).

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_STATE_CB_FLAG,
    bpf_sock_ops,
};
use aya_ebpf::helpers::generated::bpf_get_netns_cookie;
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_getsockopt, bpf_ktime_get_boot_ns,
};
use aya_ebpf::macros::{cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::ring_buf::RingBufEntry;
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::{SockAddrContext, SockOpsContext};
use node_ebpf_common::{AF_INET, AF_INET6, FlowEvent, ProcessConnects, direction, drops, end_reason, tcp_state};

// Sizes here are defaults; the agent sets them from its configuration at
// load time. Each map is named after its static (node_ebpf_common's
// EVENTS_MAP, FLOWS_MAP, PROCS_MAP, DROPS_MAP, RETRANS_EPOCH_MAP), as the
// programs are after their functions: that is how the agent finds them.
#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The agent is woken only once this many bytes of events wait (it also
/// drains the ring on its flush timer): at tens of thousands of flows a
/// second, a wakeup per flow would cost the host more than the tracing.
/// Set by the agent at load (an eighth of the ring).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 17;

/// Only sockets of the network namespace with this cookie are traced; 0
/// traces every namespace. Set by the agent at load (`flows.netns`).
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// Whether a socket in the namespace with `cookie` is in scope.
fn in_scope(cookie: u64) -> bool {
    let wanted = unsafe { core::ptr::read_volatile(&NETNS_COOKIE) };
    wanted == 0 || cookie == wanted
}

/// Every established flow's state, keyed by socket cookie: its identity
/// (addresses, ports, start, DSCP) and its counters as of establishment or
/// its latest retransmission. The agent reports flows that stay open from
/// it (with current counters from sock_diag), and the close event is built
/// from it.
#[map]
static FLOWS: HashMap<u64, FlowEvent> = HashMap::with_max_entries(65_536, 0);

/// The agent's retransmission report epoch, which it advances at each of
/// its retransmission reports (`flows.retrans_report_ms`); 0 (never
/// written: prompt reports off) sends no retransmission events. An open
/// flow goes into the ring at its first retransmission of an epoch only,
/// so a burst of retransmissions costs one event, and the agent reports
/// just the flows that retransmitted instead of scanning the table.
#[map]
static RETRANS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// TCP connects per process (tgid), per CPU so counting needs no atomics
/// (the BPF target has no 64-bit fetch-add in Rust); the agent sums the
/// CPUs and sweeps out exited processes.
#[map]
static PROCS: PerCpuHashMap<u32, ProcessConnects> = PerCpuHashMap::with_max_entries(4_096, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drops::COUNT, 0);

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RETRANS_CB: u32 = 9;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;

const SOL_IP: i32 = 0;
const IP_TOS: i32 = 1;
const SOL_IPV6: i32 = 41;
const IPV6_TCLASS: i32 = 67;

/// The sock_ops entry point: always lets the socket proceed.
#[sock_ops]
pub fn flowmesh_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(&ctx, direction::OUTBOUND),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx, direction::INBOUND),
        BPF_SOCK_OPS_RETRANS_CB => refresh(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == tcp_state::CLOSE => closed(&ctx),
        _ => {}
    }
    1
}

fn count(index: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(index) {
        // Per-CPU: no other writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) }
}

/// Copies the socket's counters (UAPI context fields) into `event`, as of
/// `now`.
fn snapshot(ctx: &SockOpsContext, event: &mut FlowEvent, now: u64) {
    let ops: *mut bpf_sock_ops = ctx.ops;
    event.end_boot_ns = now;
    unsafe {
        event.bytes_acked = (*ops).bytes_acked;
        event.bytes_received = (*ops).bytes_received;
        event.segs_out = (*ops).segs_out;
        event.segs_in = (*ops).segs_in;
        event.total_retrans = (*ops).total_retrans;
        // The kernel keeps srtt scaled by 8.
        event.srtt_us = (*ops).srtt_us >> 3;
        event.rtt_min_us = (*ops).rtt_min;
    }
}

/// An IPv6 address field of the context, read 4 bytes at a time: the
/// verifier refuses wider context loads, which the compiler may otherwise
/// merge the four words into.
fn ip6_words(field: &[u32; 4]) -> [u32; 4] {
    let base = field.as_ptr();
    let mut out = [0u32; 4];
    for (i, word) in out.iter_mut().enumerate() {
        *word = unsafe { core::ptr::read_volatile(base.add(i)) };
    }
    out
}

fn established(ctx: &SockOpsContext, direction: u8) {
    let ops: *mut bpf_sock_ops = ctx.ops;
    // Out of scope: not tracked, and no callbacks asked for, so its close
    // is never seen either.
    if !in_scope(unsafe { bpf_get_netns_cookie(ops as *mut _) }) {
        return;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let family = ctx.family() as u16;
    let mut event = FlowEvent {
        cookie: cookie(ctx),
        start_boot_ns: now,
        direction,
        family,
        end_reason: end_reason::OPEN,
        local_port: ctx.local_port() as u16,
        // Network order in the upper 16 bits on little-endian hosts.
        remote_port: u16::from_be((ctx.remote_port() >> 16) as u16),
        // The kernel counts the SYN in bytes_acked.
        start_bytes_acked: unsafe { (*ops).bytes_acked } as u32,
        ..FlowEvent::default()
    };
    if family == AF_INET {
        event.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        event.remote_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else if family == AF_INET6 {
        let (local, remote) = unsafe { (ip6_words(&(*ops).local_ip6), ip6_words(&(*ops).remote_ip6)) };
        for i in 0..4 {
            event.local_addr[i * 4..i * 4 + 4].copy_from_slice(&local[i].to_ne_bytes());
            event.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&remote[i].to_ne_bytes());
        }
    }
    let (level, name) = if family == AF_INET6 {
        (SOL_IPV6, IPV6_TCLASS)
    } else {
        (SOL_IP, IP_TOS)
    };
    let mut tos: i32 = 0;
    let got = unsafe { bpf_getsockopt(ops as *mut _, level, name, &mut tos as *mut i32 as *mut _, 4) };
    if got == 0 {
        event.tos = tos as u32;
    }
    snapshot(ctx, &mut event, now);
    if FLOWS.insert(&event.cookie, &event, 0).is_err() {
        count(drops::FLOWS_FULL);
        return;
    }
    // Ask for this socket's state changes (to see it close) and its
    // retransmissions (counted as they happen). Not RTT samples: a callback
    // per ACK cost short connections 5 % of their rate; the agent reads
    // open flows' counters with sock_diag instead.
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG;
    let _ = ctx.set_cb_flags(flags as i32);
}

/// Brings an open flow's entry up to date at each retransmission, as it
/// happens (the kernel has counted it in `total_retrans` before this
/// callback), and tells the agent at the flow's first retransmission of
/// the current epoch, so its report reaches the sampler in the window the
/// retransmissions happened in.
fn refresh(ctx: &SockOpsContext) {
    let Some(entry) = FLOWS.get_ptr_mut(&cookie(ctx)) else {
        return;
    };
    // The entry is this socket's alone, and the socket is locked while its
    // callbacks run, so no other program writes it meanwhile.
    let event = unsafe { &mut *entry };
    snapshot(ctx, event, unsafe { bpf_ktime_get_boot_ns() });
    // An array lookup the verifier inlines: a load, not a helper call.
    let epoch = match RETRANS_EPOCH.get(0) {
        Some(epoch) => unsafe { core::ptr::read_volatile(epoch) },
        None => 0,
    };
    if epoch == 0 || event.retrans_epoch == epoch {
        return;
    }
    let Some(mut item) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        // Not marked: the flow's next retransmission tries again.
        count(drops::RETRANS_RING_FULL);
        return;
    };
    event.retrans_epoch = epoch;
    // Non-overlapping, so the compiler copies in 8-byte words inline; a
    // plain `write(*event)` became a call to a byte-by-byte memmove loop
    // (120 iterations), most of this event's cost.
    unsafe { core::ptr::copy_nonoverlapping(entry.cast_const(), item.as_mut_ptr(), 1) };
    submit(item);
}

fn closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    let Some(mut event) = (unsafe { FLOWS.get(&cookie) }).copied() else {
        count(drops::UNTRACKED_END);
        return;
    };
    let _ = FLOWS.remove(&cookie);
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(drops::RING_FULL);
        return;
    };
    let old_state = ctx.arg(0);
    // Straight from an open state to closed is a reset or an abort;
    // through FIN states it is an orderly close.
    event.end_reason = match old_state {
        tcp_state::ESTABLISHED | tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::CLOSE_WAIT => end_reason::RESET,
        _ => end_reason::CLOSED,
    };
    event.old_state = old_state;
    snapshot(ctx, &mut event, unsafe { bpf_ktime_get_boot_ns() });
    entry.write(event);
    submit(entry);
}

/// Submits a ring-buffer item, waking the agent only once
/// [`WAKEUP_BYTES`] wait (it also drains the ring on its timers).
fn submit(entry: RingBufEntry<FlowEvent>) {
    let waiting = FLOW_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let wakeup = if waiting >= unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) } {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup as u64);
}

const SOCK_STREAM: u32 = 1;
const BPF_NOEXIST: u64 = 1;

/// `connect()` on an IPv4 socket of the cgroup; always allowed.
#[cgroup_sock_addr(connect4)]
pub fn flowmesh_connect4(ctx: SockAddrContext) -> i32 {
    count_connect(&ctx);
    1
}

/// `connect()` on an IPv6 socket of the cgroup; always allowed.
#[cgroup_sock_addr(connect6)]
pub fn flowmesh_connect6(ctx: SockAddrContext) -> i32 {
    count_connect(&ctx);
    1
}

fn count_connect(ctx: &SockAddrContext) {
    // UDP sockets connect too; only TCP connections are counted.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_STREAM {
        return;
    }
    if !in_scope(unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) }) {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    for _ in 0..2 {
        if let Some(entry) = PROCS.get_ptr_mut(&tgid) {
            // This CPU's slot: no other writer while the program runs.
            unsafe { (*entry).connects += 1 };
            return;
        }
        let fresh = ProcessConnects {
            connects: 1,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        match PROCS.insert(&tgid, &fresh, BPF_NOEXIST) {
            Ok(()) => return,
            // Another CPU inserted the key first: count in this CPU's
            // (zeroed) slot on the next turn.
            Err(e) if e == -17 => continue,
            Err(_) => {
                count(drops::PROCS_FULL);
                return;
            }
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
