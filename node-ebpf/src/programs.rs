//! The BTF tracepoint programs and their maps (BPF target only).
//!
//! Why tracepoints and not sock_ops: a sock_ops program attached to a
//! cgroup runs at 14 callbacks per loopback connection, 10 of them for
//! nothing (RTO and window initialisation, ECN, every state change), and
//! keeping a flow table in a hash map cost an insert at establishment and a
//! lookup and delete at close. Here a flow costs two ring records (its
//! establishment and its end, the agent joins them) and the state changes
//! in between a compare each; the counters are read from the `tcp_sock` at
//! close, through offsets the agent resolves from the kernel's BTF.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::macros::{btf_tracepoint, map};
use aya_ebpf::maps::ring_buf::RingBufEntry;
use aya_ebpf::maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::BtfTracePointContext;
use node_ebpf_common::{
    AF_INET, AF_INET6, FlowEvent, ProcessConnects, direction, drops, end_reason, kind, layout, tcp_state,
};

// Sizes here are defaults; the agent sets them from its configuration at
// load time. Each map is named after its static (node_ebpf_common's
// EVENTS_MAP, PROCS_MAP, DROPS_MAP, RETRANS_EPOCH_MAP, RETRANSMITTING_MAP),
// as the programs are after their functions: that is how the agent finds
// them.
#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The agent is woken each time the bytes of events waiting cross a
/// multiple of this ([`submit`]; it also drains the ring on its flush
/// timer): at tens of thousands of flows a second, a wakeup per flow would
/// cost the host more than the tracing. Set by the agent at load (an
/// eighth of the ring).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 17;

/// Only sockets of the network namespace with this cookie are traced; 0
/// traces every namespace. Set by the agent at load (`flows.netns`).
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// Only sockets of processes in the cgroup v2 with this id (its directory's
/// inode number) or below it are traced; 0 traces every cgroup. Set by the
/// agent at load (`flows.cgroup`).
#[unsafe(no_mangle)]
static CGROUP_ID: u64 = 0;

/// Kernel struct offsets, indexed by `node_ebpf_common::layout`, resolved
/// by the agent from the running kernel's BTF and set at load. The map is
/// frozen and read-only to the programs, so the verifier knows each value
/// as a constant and checks every load below against the kernel's types.
#[unsafe(no_mangle)]
static LAYOUT: [u32; layout::COUNT] = [0; layout::COUNT];

/// The agent's retransmission report epoch, which it advances at each of
/// its retransmission reports (`flows.retrans_report_ms`); 0 (never
/// written: prompt reports off) sends no retransmission events. An open
/// flow goes into the ring at its first retransmission of an epoch only,
/// so a burst costs one event, and the agent reports just the flows that
/// retransmitted instead of scanning its table.
#[map]
static RETRANS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Each retransmitting flow's counters as of its latest retransmission
/// and the epoch in which it last went into the ring, by socket cookie.
/// LRU: entries of closed flows age out without a delete on every close
/// (a cookie outlives its flow only on a socket that connects again, and
/// the agent takes an entry only if it is newer than what it has).
#[map]
static RETRANSMITTING: LruHashMap<u64, FlowEvent> = LruHashMap::with_max_entries(16_384, 0);

/// TCP connects per process (tgid), per CPU so counting needs no atomics
/// (the BPF target has no 64-bit fetch-add in Rust); the agent sums the
/// CPUs and sweeps out exited processes.
#[map]
static PROCS: PerCpuHashMap<u32, ProcessConnects> = PerCpuHashMap::with_max_entries(4_096, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drops::COUNT, 0);

/// How far up the cgroup tree the scope check walks; deeper cgroups are
/// out of scope (systemd and Kubernetes nest a handful of levels).
const MAX_CGROUP_WALK: u32 = 32;

/// `inet_sock_set_state(sk, oldstate, newstate)`, for every TCP state
/// change on the host: establishment, close and connect are acted on, every
/// other change is two compares.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn flowmesh_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let (old, new) = (old as u32, new as u32);
    match new {
        tcp_state::ESTABLISHED if old == tcp_state::SYN_SENT => established(sk, direction::OUTBOUND),
        tcp_state::ESTABLISHED if old == tcp_state::SYN_RECV => established(sk, direction::INBOUND),
        // From SYN_SENT or SYN_RECV it never was a flow, nor a listener.
        tcp_state::CLOSE if old != tcp_state::SYN_SENT && old != tcp_state::SYN_RECV && old != tcp_state::LISTEN => {
            closed(sk, old)
        }
        tcp_state::SYN_SENT if old == tcp_state::CLOSE => connecting(sk),
        _ => {}
    }
    0
}

/// `tcp_retransmit_skb(sk, skb, ..)`: puts an open flow in the ring at its
/// first retransmission of the agent's current epoch.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn flowmesh_retransmit(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    retransmitting(sk);
    0
}

/// The offset at `index` of [`LAYOUT`].
#[inline(always)]
fn offset(index: usize) -> usize {
    // Volatile: a load from the frozen map the verifier resolves to a
    // constant, never folded by the compiler into the default zero.
    unsafe { core::ptr::read_volatile(&LAYOUT[index]) as usize }
}

/// The `T` at `LAYOUT[index]` bytes into the kernel object at `base`.
///
/// # Safety
/// `base` must be a BTF-typed kernel pointer of the struct the offset was
/// resolved in; the verifier checks the load against that type.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, index: usize) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset(index)).cast::<T>()) }
}

fn count(index: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(index) {
        // Per-CPU: no other writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// The socket's network namespace cookie.
fn netns_of(sk: *const u8) -> u64 {
    unsafe {
        let net: *const u8 = field(sk, layout::SKC_NET);
        field(net, layout::NET_COOKIE)
    }
}

/// Whether the socket is in the traced namespace and cgroup.
fn in_scope(sk: *const u8, netns: u64) -> bool {
    let wanted = unsafe { core::ptr::read_volatile(&NETNS_COOKIE) };
    if wanted != 0 && netns != wanted {
        return false;
    }
    let cgroup_id = unsafe { core::ptr::read_volatile(&CGROUP_ID) };
    if cgroup_id == 0 {
        return true;
    }
    unsafe {
        let mut cgroup: *const u8 = field(sk, layout::SK_CGROUP);
        // Up from the socket's cgroup: the socket is in scope if it or an
        // ancestor is the traced cgroup. Compared by id at every step, not
        // at a depth computed in userspace, which a cgroup namespace would
        // shift.
        for _ in 0..MAX_CGROUP_WALK {
            if cgroup.is_null() {
                return false;
            }
            let kn: *const u8 = field(cgroup, layout::CGROUP_KN);
            if !kn.is_null() && field::<u64>(kn, layout::KN_ID) == cgroup_id {
                return true;
            }
            let parent: *const u8 = field(cgroup, layout::CGROUP_PARENT);
            if parent.is_null() {
                return false;
            }
            cgroup = field(parent, layout::CSS_CGROUP);
        }
    }
    false
}

/// The socket as a `tcp_sock` (null for anything but a full TCP socket).
fn tcp_sock(sk: *const u8) -> *const u8 {
    unsafe { bpf_skc_to_tcp_sock(sk as *mut _) as *const u8 }
}

fn cookie(sk: *const u8) -> u64 {
    unsafe { bpf_get_socket_cookie(sk as *mut _) }
}

/// Copies the socket's counters into `event`.
fn snapshot(tp: *const u8, event: &mut FlowEvent) {
    unsafe {
        event.bytes_acked = field(tp, layout::TCP_BYTES_ACKED);
        event.bytes_received = field(tp, layout::TCP_BYTES_RECEIVED);
        event.segs_out = field(tp, layout::TCP_SEGS_OUT);
        event.segs_in = field(tp, layout::TCP_SEGS_IN);
        event.total_retrans = field(tp, layout::TCP_TOTAL_RETRANS);
        // The kernel keeps srtt scaled by 8.
        event.srtt_us = field::<u32>(tp, layout::TCP_SRTT_US) >> 3;
        event.rtt_min_us = field(tp, layout::TCP_RTT_MIN);
    }
}

/// A 16-byte address field copied to `out`, 4 bytes at a time (the
/// widest load the verifier takes from it).
fn address6(sk: *const u8, index: usize, out: *mut u32) {
    let base = unsafe { sk.add(offset(index)) };
    for i in 0..4 {
        unsafe {
            out.add(i)
                .write(core::ptr::read_volatile(base.add(i * 4).cast::<u32>()))
        };
    }
}

/// Zeroes a ring item with word stores. A zeroed struct or array written
/// the usual way (`..Default::default()`, `[0; 16]`) becomes a call to the
/// BPF target's byte-by-byte `memset` loop, five instructions a byte: it
/// was most of an establishment's or end's run time.
#[inline(always)]
fn zeroed(event: *mut FlowEvent) {
    let words = event.cast::<u64>();
    for i in 0..core::mem::size_of::<FlowEvent>() / 8 {
        // Volatile, so the compiler cannot turn the stores back into a
        // memset call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// A zeroed ring item for an event of `sk`, with the socket as a
/// `tcp_sock` and its namespace cookie; none for a socket out of scope or
/// not TCP, or when the ring is full (counted under `full`).
fn reserve_for(sk: *const u8, full: u32) -> Option<(RingBufEntry<FlowEvent>, *const u8, u64)> {
    let netns = netns_of(sk);
    if !in_scope(sk, netns) {
        return None;
    }
    let tp = tcp_sock(sk);
    if tp.is_null() {
        return None;
    }
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(full);
        return None;
    };
    // The event is written in the ring's memory, which is not zeroed.
    zeroed(entry.as_mut_ptr());
    Some((entry, tp, netns))
}

fn established(sk: *const u8, direction: u8) {
    let Some((mut entry, tp, netns)) = reserve_for(sk, drops::ESTABLISH_RING_FULL) else {
        return;
    };
    // Only bytes_acked of the counters is needed now, the rest come at
    // the end.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    let family: u16 = unsafe { field(sk, layout::SKC_FAMILY) };
    // The TCP clock the kernel read (tcp_mstamp_refresh in
    // tcp_rcv_state_process) as it began processing the segment that
    // established the socket, on either side: microseconds before a clock
    // read here would be, without the cost of one (≈ 6 % of a flow's run
    // time). A socket established without a segment — TCP repair, as
    // checkpoint/restore does — never read that clock (0): read it here.
    let cached: u64 = unsafe { field(tp, layout::TCP_CLOCK_CACHE) };
    let now = if cached != 0 {
        cached
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    // Generated here (the helper's first call for this socket); the end
    // reads it back from the socket.
    event.cookie = cookie(sk);
    event.start_mono_ns = now;
    event.end_mono_ns = now;
    event.direction = direction;
    event.family = family;
    event.end_reason = end_reason::OPEN;
    event.local_port = unsafe { field(sk, layout::SKC_NUM) };
    event.remote_port = u16::from_be(unsafe { field(sk, layout::SKC_DPORT) });
    // The kernel counts the SYN in bytes_acked.
    event.bytes_acked = unsafe { field(tp, layout::TCP_BYTES_ACKED) };
    event.start_bytes_acked = event.bytes_acked as u32;
    event.netns_cookie = netns;
    event.kind = kind::ESTABLISHED;
    let (local, remote) = (
        event.local_addr.as_mut_ptr().cast::<u32>(),
        event.remote_addr.as_mut_ptr().cast::<u32>(),
    );
    if family == AF_INET {
        // The addresses are 4-byte aligned in FlowEvent (offsets 40, 56).
        unsafe {
            local.write(field(sk, layout::SKC_RCV_SADDR));
            remote.write(field(sk, layout::SKC_DADDR));
        }
        event.tos = u32::from(unsafe { field::<u8>(tp, layout::TCP_TOS) });
    } else if family == AF_INET6 {
        address6(sk, layout::SKC_V6_RCV_SADDR, local);
        address6(sk, layout::SKC_V6_DADDR, remote);
        let np: *const u8 = unsafe { field(tp, layout::TCP_PINET6) };
        if !np.is_null() {
            event.tos = u32::from(unsafe { field::<u8>(np, layout::IPV6_TCLASS) });
        }
    }
    submit(entry);
}

fn closed(sk: *const u8, old_state: u32) {
    let Some((mut entry, tp, netns)) = reserve_for(sk, drops::RING_FULL) else {
        return;
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    // A cookie was generated at establishment (0 for a flow older than
    // the programs that nothing asked for one: untracked either way).
    event.cookie = unsafe { field(sk, layout::SKC_COOKIE) };
    event.end_mono_ns = unsafe { bpf_ktime_get_ns() };
    // Straight from an open state to closed is a reset or an abort;
    // through FIN states it is an orderly close.
    event.end_reason = match old_state {
        tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT => end_reason::RESET,
        _ => end_reason::CLOSED,
    };
    event.old_state = old_state;
    event.netns_cookie = netns;
    event.kind = kind::CLOSED;
    snapshot(tp, event);
    submit(entry);
}

/// Keeps a retransmitting flow's counters current in [`RETRANSMITTING`]
/// (what the agent reports for sockets sock_diag cannot see) and, with
/// prompt reports on, puts the flow in the ring at its first
/// retransmission of the agent's epoch.
fn retransmitting(sk: *const u8) {
    // A SYN's retransmission is no flow's yet.
    let state: u8 = unsafe { field(sk, layout::SKC_STATE) };
    if u32::from(state) == tcp_state::SYN_SENT || u32::from(state) == tcp_state::SYN_RECV {
        return;
    }
    let netns = netns_of(sk);
    if !in_scope(sk, netns) {
        return;
    }
    let tp = tcp_sock(sk);
    if tp.is_null() {
        return;
    }
    // An array lookup the verifier inlines: a load, not a helper call. 0:
    // prompt reports off.
    let epoch = match RETRANS_EPOCH.get(0) {
        Some(epoch) => unsafe { core::ptr::read_volatile(epoch) },
        None => 0,
    } as u32;
    let cookie = cookie(sk);
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = match RETRANSMITTING.get_ptr_mut(&cookie) {
        Some(entry) => {
            // The entry is this socket's alone, and the socket is locked
            // while it retransmits: no other program writes it meanwhile.
            let latest = unsafe { &mut *entry };
            latest.end_mono_ns = now;
            snapshot(tp, latest);
            if epoch == 0 || latest.epoch == epoch {
                return;
            }
            latest.epoch = epoch;
            *latest
        }
        None => {
            let mut fresh = FlowEvent {
                cookie,
                end_mono_ns: now,
                end_reason: end_reason::OPEN,
                netns_cookie: netns,
                kind: kind::RETRANSMITTING,
                epoch,
                ..FlowEvent::default()
            };
            snapshot(tp, &mut fresh);
            if RETRANSMITTING.insert(&cookie, &fresh, 0).is_err() || epoch == 0 {
                return;
            }
            fresh
        }
    };
    let Some(mut item) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        // Not marked: the flow's next retransmission tries again.
        if let Some(latest) = RETRANSMITTING.get_ptr_mut(&cookie) {
            unsafe { (*latest).epoch = 0 };
        }
        count(drops::RETRANS_RING_FULL);
        return;
    };
    item.write(entry);
    submit(item);
}

/// Bytes one [`FlowEvent`] takes in the ring: the kernel's 8-byte record
/// header and the event, rounded up to 8.
const RECORD_BYTES: u64 = ((core::mem::size_of::<FlowEvent>() + 8 + 7) & !7) as u64;

/// Submits a ring-buffer item, waking the agent when the bytes waiting
/// cross a multiple of [`WAKEUP_BYTES`] (it also drains the ring on its
/// timers), and at every submit once three quarters of the ring wait.
///
/// Only at the crossing below that: a wakeup is an inter-processor
/// interrupt, and waking at every submit past the threshold, until the
/// agent had read the batch, cost ≈ 6 % of the programs' samples in a
/// loopback connection storm. A crossing can be missed — another CPU's
/// record reserved between this one's reservation and the query hides it
/// from both — and is then made up by the next multiple; past three
/// quarters every submit wakes the agent, as all did before, so a run of
/// missed crossings cannot let the ring fill unnoticed. Every record in
/// the ring is a [`FlowEvent`], so each takes [`RECORD_BYTES`].
fn submit(entry: RingBufEntry<FlowEvent>) {
    let waiting = FLOW_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let every = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }.max(1);
    let crossed = waiting / every > waiting.saturating_sub(RECORD_BYTES) / every;
    let behind = waiting >= 6 * every;
    let wakeup = if crossed || behind {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup as u64);
}

const BPF_NOEXIST: u64 = 1;
const IPPROTO_TCP: u16 = 6;

/// A TCP socket starts connecting (`CLOSE` → `SYN_SENT`, in `connect()`,
/// so the current task is the caller): counted for its process.
fn connecting(sk: *const u8) {
    // Not MPTCP's own socket (its TCP subflow is the one counted).
    let protocol: u16 = unsafe { field(sk, layout::SK_PROTOCOL) };
    if protocol != IPPROTO_TCP || !in_scope(sk, netns_of(sk)) {
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
