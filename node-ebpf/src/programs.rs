//! The sock_ops program and its maps (BPF target only).

use aya_ebpf::bindings::{BPF_SOCK_OPS_STATE_CB_FLAG, bpf_sock_ops};
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_getsockopt, bpf_ktime_get_boot_ns};
use aya_ebpf::macros::{map, sock_ops};
use aya_ebpf::maps::{HashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::SockOpsContext;
use node_ebpf_common::{AF_INET, AF_INET6, FlowEvent, FlowStart, direction, drops, end_reason};

// Sizes here are defaults; the agent sets them from its configuration at
// load time.
#[map(name = "FLOW_EVENTS")]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map(name = "FLOWS")]
static FLOWS: HashMap<u64, FlowStart> = HashMap::with_max_entries(65_536, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drops::COUNT, 0);

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;

const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;

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
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => closed(&ctx),
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

fn established(ctx: &SockOpsContext, direction: u8) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    let start = FlowStart {
        start_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        direction,
        pad: [0; 3],
        bytes_acked: unsafe { (*ctx.ops).bytes_acked } as u32,
    };
    if FLOWS.insert(&cookie, &start, 0).is_err() {
        count(drops::FLOWS_FULL);
        return;
    }
    // Ask for state changes of this socket, to see it close.
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    let _ = ctx.set_cb_flags(flags as i32);
}

fn closed(ctx: &SockOpsContext) {
    let ops: *mut bpf_sock_ops = ctx.ops;
    let cookie = unsafe { bpf_get_socket_cookie(ops as *mut _) };
    let Some(start) = (unsafe { FLOWS.get(&cookie) }).copied() else {
        count(drops::UNTRACKED_END);
        return;
    };
    let _ = FLOWS.remove(&cookie);
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(drops::RING_FULL);
        return;
    };
    let family = ctx.family() as u16;
    let old_state = ctx.arg(0);
    let mut event = FlowEvent {
        cookie,
        start_boot_ns: start.start_boot_ns,
        end_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        direction: start.direction,
        family,
        // Straight from an open state to closed is a reset or an abort;
        // through FIN states it is an orderly close.
        end_reason: match old_state {
            TCP_ESTABLISHED | TCP_SYN_SENT | TCP_SYN_RECV | TCP_CLOSE_WAIT => end_reason::RESET,
            _ => end_reason::CLOSED,
        },
        local_port: ctx.local_port() as u16,
        // Network order in the upper 16 bits on little-endian hosts.
        remote_port: u16::from_be((ctx.remote_port() >> 16) as u16),
        old_state,
        start_bytes_acked: start.bytes_acked,
        ..FlowEvent::default()
    };
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
    if family == AF_INET {
        event.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        event.remote_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else if family == AF_INET6 {
        let (local, remote) = (ctx.local_ip6(), ctx.remote_ip6());
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
    entry.write(event);
    entry.submit(0);
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
