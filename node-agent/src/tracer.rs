//! Loads the BTF tracepoint programs, attaches them, joins their
//! ring-buffer events into flows and turns those into wire-format flow
//! records.
//!
//! The programs put two records in the ring per flow: its establishment
//! (identity, start, TOS) and its end (counters, end reason). The agent
//! keeps the establishments as its table of open flows ([`Joiner`]) and
//! completes each end from it; an end without an establishment (a flow
//! older than the agent, or whose establishment the full ring lost) is
//! counted (`flowmesh_agent_untracked_ends_total`), never reported with a made-up start.
//!
//! Three kinds of report leave here: a flow's close (its ring-buffer
//! events joined), flows still open every `flows.report_open_secs`
//! ([`Tracer::open_flows`], from the table of open flows), and flows still open
//! whose retransmission counter grew, every `flows.retrans_report_ms`
//! ([`Tracer::retransmissions`]): the program puts an open flow in the ring
//! at its first retransmission of each report epoch, and the agent
//! reports just those flows, with their counters now, so the sampler
//! charges retransmissions to the window they happened in rather than to
//! the one of the next periodic report or of the close.
//!
//! The kernel/user boundary is crossed in one place: [`read_event`] reads a
//! [`FlowEvent`] from a ring-buffer item or map value (zerocopy, via
//! node-ebpf-common's `user` feature), and [`flow`] converts it into a
//! wire-format [`Flow`]. Either refuses what does not fit the shared
//! definition — a short item, an unknown direction, end reason or address
//! family — with an [`InvalidEvent`]; the [`Tracer`] counts those
//! ([`Tracer::invalid_events`], exported as
//! `flowmesh_agent_kernel_drops_total{reason="invalid_event"}`) and drops
//! them, rather than reporting a flow with a made-up value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Ebpf, EbpfLoader};
use node_ebpf_common::{
    AF_INET, AF_INET6, DROPS_MAP, EVENTS_MAP, FlowEvent, LAYOUT_GLOBAL, PROCS_MAP, ProcessConnects, RETRANS_EPOCH_MAP,
    RETRANSMITTING_MAP, TRACEPOINTS, direction, drops, end_reason, kind,
};
use tokio::io::unix::AsyncFd;
use tracing::warn;
use wire_format::{Direction, EndReason, Flow};
use zerocopy::FromBytes;

use crate::sockdiag::{Lookup, SocketKey, TcpCounters};

/// The compiled eBPF object, built by build.rs from ../node-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowmesh-flows"));

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The kernel refused the programs or maps.
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("attaching {program} to tracepoint {tracepoint}: {source}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The kernel tracepoint.
        tracepoint: &'static str,
        /// Why.
        source: aya::programs::ProgramError,
    },
    /// The kernel's BTF lacks a struct field the programs read, or could
    /// not be read.
    #[error(transparent)]
    Layout(#[from] crate::kernel_layout::LayoutError),
    /// aya could not read the kernel's BTF (to find the tracepoints).
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    /// A map is missing or of the wrong type.
    #[error("eBPF map {name}: {message}")]
    Map {
        /// The map.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The cgroup directory could not be read.
    #[error("cgroup {cgroup}: {source}")]
    Cgroup {
        /// The cgroup.
        cgroup: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the ring buffer failed.
    #[error("reading flow events: {0}")]
    Read(#[from] std::io::Error),
}

/// Attached programs and the handles to read them. Dropping it detaches
/// everything (the attachments are BPF links owned by this process, so even
/// a kill -9 leaves nothing attached).
pub struct Tracer {
    ebpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    /// Retransmitting flows' counters as of their latest retransmission.
    latest: HashMap<MapData, u64, [u8; FLOW_EVENT_LEN]>,
    procs: PerCpuHashMap<MapData, u32, [u8; PROCESS_CONNECTS_LEN]>,
    drops: PerCpuArray<MapData, u64>,
    /// The programs' retransmission report epoch (one element).
    epoch_map: Array<MapData, u64>,
    /// Its current value; 0 while prompt retransmission reports are off.
    epoch: u64,
    /// The open flows, and those that retransmitted.
    joiner: Joiner,
    /// Flows that ended, drained from the ring by [`Tracer::open_flows`],
    /// for the next [`Tracer::take_flows`].
    ended: Vec<Flow>,
    /// This process's network namespace cookie: where sock_diag sees
    /// sockets.
    own_netns: u64,
    clock: Clock,
    invalid: InvalidEvents,
    /// Connects of processes that have exited, by command name.
    retired: std::collections::BTreeMap<String, u64>,
}

/// What [`Tracer::retransmissions`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetransReports {
    /// Flows that ended (drained from the ring on the way), to report as
    /// [`Tracer::take_flows`] returns them.
    pub ended: Vec<Flow>,
    /// Flows still open that retransmitted since the previous call, with
    /// their counters now (end reason open).
    pub retransmitting: Vec<Flow>,
}

/// Bytes of a [`FlowEvent`] as the programs store it. (aya reads map values
/// into its own `Pod` types; a byte array is one, and zerocopy reads the
/// event from it, since the workspace forbids an `unsafe impl Pod`.)
const FLOW_EVENT_LEN: usize = std::mem::size_of::<FlowEvent>();
/// Bytes of a [`ProcessConnects`] as the programs store it.
const PROCESS_CONNECTS_LEN: usize = std::mem::size_of::<ProcessConnects>();

/// Why a kernel event did not become a flow record: it does not fit the
/// definition the programs and the agent share (node-ebpf-common). Only a
/// program and an agent built from different sources, or a bug, produce
/// one; the event is counted and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// A ring-buffer item or map value of the wrong size.
    #[error(
        "flow event of {0} bytes, not {FLOW_EVENT_LEN}: the eBPF programs and the agent disagree on FlowEvent; build both from one source"
    )]
    Length(usize),
    /// A direction node-ebpf-common does not define.
    #[error(
        "flow event with direction {0} (node-ebpf-common defines 1 and 2): the eBPF programs and the agent disagree; build both from one source"
    )]
    Direction(u8),
    /// An end reason node-ebpf-common does not define.
    #[error(
        "flow event with end reason {0} (node-ebpf-common defines 0 to 2): the eBPF programs and the agent disagree; build both from one source"
    )]
    EndReason(u8),
    /// An address family other than `AF_INET` and `AF_INET6`.
    #[error(
        "flow event with address family {0} (AF_INET 2 or AF_INET6 10 expected): the eBPF programs and the agent disagree; build both from one source"
    )]
    Family(u16),
    /// An event kind node-ebpf-common does not define.
    #[error(
        "flow event of kind {0} (node-ebpf-common defines 1 to 3): the eBPF programs and the agent disagree; build both from one source"
    )]
    Kind(u32),
}

/// Kernel events refused with an [`InvalidEvent`]: counted, and the first
/// one logged (a mismatch repeats for every event; the counter says how
/// often).
#[derive(Debug, Default)]
pub struct InvalidEvents {
    count: u64,
}

impl InvalidEvents {
    /// The flow, or `None` when the event was invalid (counted).
    pub fn keep(&mut self, converted: Result<Flow, InvalidEvent>) -> Option<Flow> {
        match converted {
            Ok(flow) => Some(flow),
            Err(error) => {
                if self.count == 0 {
                    warn!(message = "dropping an invalid flow event from the kernel; further ones are only counted", %error);
                }
                self.count += 1;
                None
            }
        }
    }

    /// Events refused so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// `CLOCK_MONOTONIC` now, ns: the clock the programs stamp with (the
/// kernel's TCP clock).
fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Converts the kernel's `CLOCK_MONOTONIC` to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock ns minus monotonic ns, measured at start.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset now.
    pub fn now() -> Clock {
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let wall = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let ns = |t: rustix::time::Timespec| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        Clock {
            offset_ns: ns(wall) - ns(mono),
        }
    }

    /// Wall-clock ns since the Unix epoch for a monotonic instant.
    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }
}

impl Tracer {
    /// Loads the programs with the given table sizes and attaches them,
    /// tracing only sockets of `cgroup`'s processes (and of its
    /// descendants). `max_flows` bounds the table of open flows,
    /// `max_processes` the per-process connect counters; a non-zero
    /// `netns_cookie` limits tracing to that network namespace's sockets.
    /// With `retrans_reports`, the programs tell the agent which open flows
    /// retransmit, for [`Tracer::retransmissions`].
    pub fn attach(
        cgroup: &Path,
        max_flows: u32,
        ring_bytes: u32,
        max_processes: u32,
        netns_cookie: u64,
        retrans_reports: bool,
    ) -> Result<Tracer, TracerError> {
        let offsets = crate::kernel_layout::resolve(&crate::kernel_layout::Btf::from_kernel()?)?;
        let cgroup_id = cgroup_scope(cgroup).map_err(|source| TracerError::Cgroup {
            cgroup: cgroup.display().to_string(),
            source,
        })?;
        // Wake the agent each time another eighth of the ring waits; it
        // drains the rest on its flush timer (Tracer::take_flows).
        let wakeup_bytes = u64::from(ring_bytes / 8);
        let mut ebpf = EbpfLoader::new()
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("NETNS_COOKIE", &netns_cookie, true)
            .override_global("CGROUP_ID", &cgroup_id, true)
            .override_global(LAYOUT_GLOBAL, &offsets, true)
            .map_max_entries(EVENTS_MAP, ring_bytes)
            .map_max_entries(PROCS_MAP, max_processes)
            .load(PROGRAMS)?;
        let btf = aya::Btf::from_sys_fs()?;
        for (name, tracepoint) in TRACEPOINTS {
            let attach_error = |source| TracerError::Attach {
                program: name,
                tracepoint,
                source,
            };
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| TracerError::Map {
                    name: "program",
                    message: format!("{name} missing from the object"),
                })?
                .try_into()
                .map_err(attach_error)?;
            program.load(tracepoint, &btf).map_err(attach_error)?;
            program.attach().map_err(attach_error)?;
        }
        let map = |name: &'static str, ebpf: &mut Ebpf| {
            ebpf.take_map(name).ok_or(TracerError::Map {
                name,
                message: "missing from the object".into(),
            })
        };
        let events = RingBuf::try_from(map(EVENTS_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: EVENTS_MAP,
            message: e.to_string(),
        })?;
        let drops = PerCpuArray::try_from(map(DROPS_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: DROPS_MAP,
            message: e.to_string(),
        })?;
        let latest = HashMap::try_from(map(RETRANSMITTING_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: RETRANSMITTING_MAP,
            message: e.to_string(),
        })?;
        let procs = PerCpuHashMap::try_from(map(PROCS_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: PROCS_MAP,
            message: e.to_string(),
        })?;
        let mut epoch_map = Array::try_from(map(RETRANS_EPOCH_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: RETRANS_EPOCH_MAP,
            message: e.to_string(),
        })?;
        // Epoch 0, the map's initial value, keeps the programs from
        // sending retransmission events at all.
        let epoch = u64::from(retrans_reports);
        if retrans_reports {
            epoch_map.set(0, epoch, 0).map_err(|e| TracerError::Map {
                name: RETRANS_EPOCH_MAP,
                message: e.to_string(),
            })?;
        }
        let own_netns = crate::netns::own_cookie()?;
        // `AsyncFd::new` is deprecated because a caller could close the fd
        // while it is registered; here the AsyncFd owns the ring buffer,
        // which owns its fd, so it lives exactly as long as the
        // registration. The safe constructor keeps `unsafe` out of the crate.
        #[allow(deprecated)]
        let events = AsyncFd::new(events)?;
        Ok(Tracer {
            ebpf,
            events,
            latest,
            procs,
            drops,
            epoch_map,
            epoch,
            joiner: Joiner::new(max_flows as usize),
            ended: Vec::new(),
            own_netns,
            clock: Clock::now(),
            invalid: InvalidEvents::default(),
            retired: std::collections::BTreeMap::new(),
        })
    }

    /// Waits until the programs wake the agent (an eighth of the ring
    /// waits) and returns the flows that ended (at least one event read;
    /// invalid ones are counted and dropped, so the result may be empty).
    pub async fn next_flows(&mut self) -> Result<Vec<Flow>, TracerError> {
        loop {
            let mut guard = self.events.readable_mut().await?;
            let (mut flows, read) = drain(guard.get_inner_mut(), self.clock, &mut self.invalid, &mut self.joiner);
            guard.clear_ready();
            if read > 0 || !self.ended.is_empty() {
                flows.append(&mut self.ended);
                return Ok(flows);
            }
        }
    }

    /// The flows that ended and wait in the ring now, without waiting for a
    /// wakeup: the programs only wake the agent for a batch, so it calls
    /// this on a timer too.
    pub fn take_flows(&mut self) -> Vec<Flow> {
        let mut flows = std::mem::take(&mut self.ended);
        flows.extend(drain(self.events.get_mut(), self.clock, &mut self.invalid, &mut self.joiner).0);
        flows
    }

    /// The open flows that retransmitted since the previous call, with
    /// their counters now — from sock_diag where this network namespace
    /// has the socket, else as the programs saw them at their latest
    /// retransmission — and the flows that ended meanwhile (a flow that
    /// ended is reported by its close alone). Call it every
    /// `flows.retrans_report_ms`; with retransmission reports off it
    /// returns nothing.
    ///
    /// It starts a new epoch before it reads the ring: a retransmission
    /// the program saw under the old epoch either put its flow in the ring
    /// (read here or at the next call) or found the flow already there
    /// from earlier in the epoch — whose report, read after this point,
    /// counts it. Every retransmission is reported at the first or second
    /// call after it, never left to the periodic report.
    pub fn retransmissions(&mut self) -> RetransReports {
        if self.epoch == 0 {
            return RetransReports::default();
        }
        self.epoch += 1;
        if let Err(error) = self.epoch_map.set(0, self.epoch, 0) {
            // The programs keep the old epoch: flows they already sent
            // wait for the periodic report until a later call gets through.
            warn!(message = "could not start a new retransmission epoch", %error);
        }
        let ended = self.take_flows();
        let events: Vec<FlowEvent> = std::mem::take(&mut self.joiner.retransmitted).into_values().collect();
        RetransReports {
            ended,
            retransmitting: self.with_current_counters(events),
        }
    }

    /// `events`, open flows, as reports now: with their current counters,
    /// leaving out those that are closing or gone (their close reports
    /// them). A socket of the agent's own namespace that sock_diag does not
    /// find has closed; another namespace's is reported as the programs
    /// last saw it (at its establishment or latest retransmission).
    fn with_current_counters(&mut self, events: Vec<FlowEvent>) -> Vec<Flow> {
        if events.is_empty() {
            return Vec::new();
        }
        let now = mono_ns();
        let keys: Vec<Option<SocketKey>> = events.iter().map(socket_key).collect();
        let known: Vec<SocketKey> = keys.iter().flatten().copied().collect();
        let mut found = match crate::sockdiag::tcp_counters_of(&known) {
            Ok(found) => Some(found.into_iter()),
            Err(error) => {
                warn!(message = "sock_diag lookup failed; reporting retransmitting flows as the programs last saw them", %error);
                None
            }
        };
        let mut flows = Vec::with_capacity(events.len());
        for (mut event, key) in events.into_iter().zip(keys) {
            let Some(found) = found.as_mut() else {
                event = self.as_last_seen(event);
                event.end_mono_ns = now;
                flows.extend(self.invalid.keep(flow(&event, self.clock)));
                continue;
            };
            let lookup = key.and_then(|_| found.next()).unwrap_or(Lookup::Absent);
            match lookup {
                Lookup::Open(counters) => with_counters(&mut event, &counters),
                Lookup::Closing => continue,
                // Closed since: its close reports everything.
                Lookup::Absent if event.netns_cookie == self.own_netns => continue,
                // Another namespace's socket: as the programs saw it at its
                // latest retransmission.
                Lookup::Absent => event = self.as_last_seen(event),
            }
            event.end_mono_ns = now;
            flows.extend(self.invalid.keep(flow(&event, self.clock)));
        }
        flows
    }

    /// The flows open now that have been open for at least `min_age_ns`
    /// (end reason open), with their current counters from sock_diag where
    /// this network namespace has the socket, else as the programs last saw
    /// them.
    ///
    /// sock_diag is asked first, the ring drained after: a flow that
    /// closed before the dump is missing from it and, in the agent's own
    /// namespace, left out (its close reports it); one that closed after
    /// the dump is reported with the dump's counters, never more than its
    /// close will carry. Flows that ended wait for [`Tracer::take_flows`].
    pub fn open_flows(&mut self, min_age_ns: u64) -> Vec<Flow> {
        let now = mono_ns();
        let dump = crate::sockdiag::tcp_counters();
        let ended = drain(self.events.get_mut(), self.clock, &mut self.invalid, &mut self.joiner).0;
        self.ended.extend(ended);
        let current = match dump {
            Ok(current) => {
                self.joiner.forget_missing(&current, self.own_netns, now);
                current
            }
            Err(error) => {
                warn!(message = "sock_diag dump failed; open flows of this namespace are not reported this time", %error);
                std::collections::HashMap::new()
            }
        };
        let old_enough: Vec<FlowEvent> = (self.joiner.open.values())
            .filter(|event| now.saturating_sub(event.start_mono_ns) >= min_age_ns)
            .copied()
            .collect();
        let mut flows = Vec::with_capacity(old_enough.len());
        for mut event in old_enough {
            match current.get(&event.cookie) {
                Some(c) => with_counters(&mut event, c),
                // Closed since the dump (or closing): its close reports it.
                None if event.netns_cookie == self.own_netns => continue,
                // Another namespace's socket, which sock_diag here cannot
                // see: as the programs last saw it.
                None => event = self.as_last_seen(event),
            }
            event.end_mono_ns = now;
            flows.extend(self.invalid.keep(flow(&event, self.clock)));
        }
        flows
    }

    /// `event` (an open flow) with the counters of its latest
    /// retransmission, if the programs saw one since the event's.
    fn as_last_seen(&mut self, event: FlowEvent) -> FlowEvent {
        let Ok(bytes) = self.latest.get(&event.cookie, 0) else {
            return event;
        };
        match read_event(&bytes) {
            Ok(latest) if latest.end_mono_ns >= event.end_mono_ns => {
                let seen = joined(&event, &latest);
                // Kept, so a report never goes back to older counters if
                // the LRU map lets the entry go.
                if let Some(open) = self.joiner.open.get_mut(&event.cookie) {
                    *open = joined(open, &latest);
                }
                seen
            }
            Ok(_) => event,
            Err(invalid) => {
                self.invalid.keep(Err(invalid));
                event
            }
        }
    }

    /// Kernel events refused since start (short items, unknown values):
    /// counted and dropped, never reported with a made-up value.
    pub fn invalid_events(&self) -> u64 {
        self.invalid.count()
    }

    /// TCP connects by command name since the agent started: the live
    /// processes' counters plus those of exited processes, whose entries are
    /// swept out here so the bounded table never fills with the dead.
    pub fn connects_by_comm(&mut self) -> std::collections::BTreeMap<String, u64> {
        // One slot per CPU: the counts add up, the name is in whichever
        // slot first saw the process.
        let entries: Vec<(u32, ProcessConnects)> = self
            .procs
            .iter()
            .filter_map(Result::ok)
            .map(|(pid, slots)| {
                let mut total = ProcessConnects::default();
                for slot in slots.iter().filter_map(|b| ProcessConnects::read_from_bytes(b).ok()) {
                    total.connects += slot.connects;
                    if total.comm[0] == 0 {
                        total.comm = slot.comm;
                    }
                }
                (pid, total)
            })
            .collect();
        let mut totals = self.retired.clone();
        for (pid, entry) in entries {
            *totals.entry(entry.comm_str().to_string()).or_default() += entry.connects;
            if !Path::new(&format!("/proc/{pid}")).exists() && self.procs.remove(&pid).is_ok() {
                *self.retired.entry(entry.comm_str().to_string()).or_default() += entry.connects;
            }
        }
        totals
    }

    /// The drop counters, indexed by node-ebpf-common's `drops`: the
    /// programs' summed over CPUs, plus the agent's own (open-flow table
    /// full, ends without an establishment).
    pub fn drops(&self) -> [u64; drops::COUNT as usize] {
        let mut out = [0; drops::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.drops.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out[drops::FLOWS_FULL as usize] += self.joiner.flows_full;
        out[drops::RECURSION_MISSES as usize] = self.recursion_misses();
        out
    }

    /// Flow ends without an establishment: flows older than the agent (or
    /// whose establishment was lost, which is counted where it was lost:
    /// `establish_ring_full`, `flows_full`, `recursion_miss`). Not reported.
    pub fn untracked_ends(&self) -> u64 {
        self.joiner.untracked_ends
    }

    /// Runs of the programs the kernel skipped because the program was
    /// already running on that CPU, from each program's fdinfo
    /// (`recursion_misses`, Linux 5.12): events lost before they were
    /// written, so counted as a drop like the rest.
    fn recursion_misses(&self) -> u64 {
        use std::os::fd::{AsFd, AsRawFd};
        TRACEPOINTS
            .iter()
            .filter_map(|(name, _)| {
                let program: &BtfTracePoint = self.ebpf.program(name)?.try_into().ok()?;
                let fd = program.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                info.lines()
                    .find_map(|line| line.strip_prefix("recursion_misses:"))
                    .and_then(|value| value.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The monotonic to wall-clock conversion.
    pub fn clock(&self) -> Clock {
        self.clock
    }
}

/// The flows that ended in the ring buffer's items, and how many items
/// were read (see [`Joiner::sort`]).
fn drain(
    ring: &mut RingBuf<MapData>,
    clock: Clock,
    invalid: &mut InvalidEvents,
    joiner: &mut Joiner,
) -> (Vec<Flow>, usize) {
    let mut flows = Vec::new();
    let mut read = 0;
    while let Some(item) = ring.next() {
        read += 1;
        flows.extend(joiner.sort(&item, clock, invalid));
    }
    (flows, read)
}

/// Joins the programs' events into flows: the table of open flows (by
/// socket cookie, from their establishment), bounded; and the open flows
/// that retransmitted since the last retransmission report.
#[derive(Debug, Default)]
pub struct Joiner {
    /// Open flows, as established (counters as of their latest
    /// retransmission event).
    open: std::collections::HashMap<u64, FlowEvent>,
    /// Open flows that retransmitted since the last
    /// [`Tracer::retransmissions`], with their counters at their first
    /// retransmission of the epoch.
    retransmitted: std::collections::HashMap<u64, FlowEvent>,
    /// Most open flows tracked.
    max_open: usize,
    /// Establishments not tracked because the table was full.
    flows_full: u64,
    /// Ends without an establishment.
    untracked_ends: u64,
    /// Open flows of the agent's namespace that the latest sock_diag dump
    /// did not have: forgotten if the next one has not either.
    missing: std::collections::HashSet<u64>,
}

impl Joiner {
    /// A table of at most `max_open` open flows.
    pub fn new(max_open: usize) -> Joiner {
        Joiner {
            max_open,
            ..Joiner::default()
        }
    }

    /// One ring-buffer item: the flow, if it ended (joined with its
    /// establishment). An establishment goes into the table of open flows
    /// (or is counted, the table full); a retransmission event updates the
    /// flow there and waits for the next retransmission report, where the
    /// flow's end, if it comes first, takes it out again. An end without
    /// an establishment is counted; invalid items are counted in `invalid`.
    pub fn sort(&mut self, item: &[u8], clock: Clock, invalid: &mut InvalidEvents) -> Option<Flow> {
        let event = match read_event(item) {
            Ok(event) => event,
            Err(error) => return invalid.keep(Err(error)),
        };
        match event.kind {
            kind::ESTABLISHED => {
                // Refused now, not at every report of it.
                invalid.keep(flow(&event, clock))?;
                if self.open.len() >= self.max_open && !self.open.contains_key(&event.cookie) {
                    self.flows_full += 1;
                } else {
                    self.open.insert(event.cookie, event);
                }
                None
            }
            kind::RETRANSMITTING => {
                let open = self.open.get_mut(&event.cookie)?;
                *open = joined(open, &event);
                self.retransmitted.insert(event.cookie, *open);
                None
            }
            kind::CLOSED => {
                self.retransmitted.remove(&event.cookie);
                let Some(start) = self.open.remove(&event.cookie) else {
                    self.untracked_ends += 1;
                    return None;
                };
                invalid.keep(flow(&joined(&start, &event), clock))
            }
            other => invalid.keep(Err(InvalidEvent::Kind(other))),
        }
    }
}

impl Joiner {
    /// Forgets open flows whose end was lost (the ring full, or the kernel
    /// skipping a run): flows of the agent's namespace (`own_netns`),
    /// established before a sock_diag dump (`current`, taken at
    /// `dumped_at`), that were missing from it and from the one before.
    /// Twice, because a socket leaves sock_diag a moment before its end is
    /// written to the ring, and one established just before the dump (its
    /// start is the handshake's clock, read before the socket is
    /// established) may not be in it yet. Without this, every lost end would hold a slot
    /// of the bounded table for good.
    pub fn forget_missing(
        &mut self,
        current: &std::collections::HashMap<u64, TcpCounters>,
        own_netns: u64,
        dumped_at: u64,
    ) {
        let missing: std::collections::HashSet<u64> = (self.open.values())
            .filter(|e| e.netns_cookie == own_netns && e.start_mono_ns < dumped_at && !current.contains_key(&e.cookie))
            .map(|e| e.cookie)
            .collect();
        for cookie in missing.intersection(&self.missing) {
            self.open.remove(cookie);
            self.retransmitted.remove(cookie);
        }
        self.missing = missing;
    }
}

/// `start` (an establishment: identity and start) with `later`'s counters,
/// time, end reason and state.
fn joined(start: &FlowEvent, later: &FlowEvent) -> FlowEvent {
    FlowEvent {
        end_mono_ns: later.end_mono_ns,
        bytes_acked: later.bytes_acked,
        bytes_received: later.bytes_received,
        segs_out: later.segs_out,
        segs_in: later.segs_in,
        total_retrans: later.total_retrans,
        srtt_us: later.srtt_us,
        rtt_min_us: later.rtt_min_us,
        end_reason: later.end_reason,
        old_state: later.old_state,
        kind: later.kind,
        ..*start
    }
}

/// The traced cgroup's id (its directory's inode number, which is the
/// kernel's `kernfs_node.id`), or 0 for the root of the whole cgroup v2
/// hierarchy, where every socket is in scope. The root of a cgroup
/// namespace or of a bind-mounted subtree (the mount's root is not `/`)
/// is traced by its id like any other cgroup.
fn cgroup_scope(cgroup: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let cgroup = cgroup.canonicalize()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if crate::checks::is_cgroup2_global_root(&mountinfo, &cgroup) {
        return Ok(0);
    }
    Ok(std::fs::metadata(&cgroup)?.ino())
}

/// Sets `event`'s counters to `c`'s (sock_diag's, current).
fn with_counters(event: &mut FlowEvent, c: &TcpCounters) {
    event.bytes_acked = c.bytes_acked;
    event.bytes_received = c.bytes_received;
    event.segs_out = c.segs_out;
    event.segs_in = c.segs_in;
    event.total_retrans = c.total_retrans;
    event.srtt_us = c.srtt_us;
    event.rtt_min_us = c.min_rtt_us;
}

/// How sock_diag finds `event`'s socket; `None` for an address family the
/// shared definition does not have (the event is refused later anyway).
fn socket_key(event: &FlowEvent) -> Option<SocketKey> {
    let local = address(event.family, &event.local_addr).ok()?;
    let remote = address(event.family, &event.remote_addr).ok()?;
    Some(SocketKey {
        local: std::net::SocketAddr::new(local, event.local_port),
        remote: std::net::SocketAddr::new(remote, event.remote_port),
        cookie: event.cookie,
    })
}

/// A [`FlowEvent`] from the bytes of a ring-buffer item or map value
/// (native byte order, node-ebpf-common's layout).
pub fn read_event(bytes: &[u8]) -> Result<FlowEvent, InvalidEvent> {
    FlowEvent::read_from_bytes(bytes).map_err(|_| InvalidEvent::Length(bytes.len()))
}

fn address(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, InvalidEvent> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        other => Err(InvalidEvent::Family(other)),
    }
}

/// The wire-format flow for a kernel event, its monotonic stamps converted
/// with `clock`: the one conversion from the kernel's numbering to the
/// wire's. A value node-ebpf-common does not define is an error, never
/// mapped to a default.
pub fn flow(event: &FlowEvent, clock: Clock) -> Result<Flow, InvalidEvent> {
    let direction = match event.direction {
        direction::OUTBOUND => Direction::Outbound,
        direction::INBOUND => Direction::Inbound,
        other => return Err(InvalidEvent::Direction(other)),
    };
    let end_reason = match event.end_reason {
        end_reason::OPEN => EndReason::Open,
        end_reason::CLOSED => EndReason::Closed,
        end_reason::RESET => EndReason::Reset,
        other => return Err(InvalidEvent::EndReason(other)),
    };
    Ok(Flow {
        flow_id: event.cookie,
        src: address(event.family, &event.local_addr)?,
        dst: address(event.family, &event.remote_addr)?,
        src_port: event.local_port,
        dst_port: event.remote_port,
        dscp: (event.tos >> 2) as u8 & 0x3f,
        direction,
        end_reason,
        start_ns: clock.wall_ns(event.start_mono_ns),
        duration_ns: event.end_mono_ns.saturating_sub(event.start_mono_ns),
        bytes_acked: event.payload_acked(),
        bytes_received: event.payload_received(),
        segs_out: event.segs_out,
        segs_in: event.segs_in,
        retrans_segs: event.total_retrans,
        srtt_us: event.srtt_us,
        min_rtt_us: event.rtt_min_us,
    })
}

/// How long from `now` (time since the Unix epoch) to the next multiple of
/// `period` on the wall clock: when retransmission reports are made. The
/// samplers' windows start at multiples of whole seconds of the same clock,
/// so with a period that divides a second (or a whole number of seconds
/// that divides the window), the interval one report covers ends at a
/// window boundary instead of straddling it, and the sampler counts its
/// retransmissions in the window they happened in. Taken afresh from the
/// wall clock at every report, so the schedule follows the clock's
/// adjustments rather than drifting from it on the monotonic clock.
pub fn until_aligned(period: Duration, now: Duration) -> Duration {
    let period_ns = period.as_nanos().max(1);
    let into = now.as_nanos() % period_ns;
    Duration::from_nanos(u64::try_from(period_ns - into).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use node_ebpf_common::tcp_state;
    use wire_format::{Record, WireEnum};
    use zerocopy::IntoBytes;

    use super::*;

    /// Monotonic time 0 is this wall-clock instant.
    const A_WALL_CLOCK_NS: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn retransmission_reports_fall_on_wall_clock_multiples_of_their_period() {
        let second = Duration::from_secs(1);
        let now = Duration::from_nanos(A_WALL_CLOCK_NS + 300_000_000);
        assert_eq!(until_aligned(second, now), Duration::from_millis(700));
        let on = Duration::from_nanos(A_WALL_CLOCK_NS);
        assert_eq!(until_aligned(second, on), second, "on a multiple: the next one");
        let quarter = Duration::from_millis(250);
        assert_eq!(until_aligned(quarter, now), Duration::from_millis(200));
        assert_eq!(until_aligned(Duration::ZERO, now), Duration::from_nanos(1));
    }

    fn clock() -> Clock {
        Clock {
            offset_ns: i128::from(A_WALL_CLOCK_NS),
        }
    }

    /// A closed IPv4 flow as the programs write it: 100 payload bytes sent
    /// (plus the SYN and the FIN), 2 000 received (plus the peer's FIN).
    fn event() -> FlowEvent {
        let mut event = FlowEvent {
            cookie: 0x1234_5678_9abc_def0,
            start_mono_ns: 5_000_000_000,
            end_mono_ns: 5_250_000_000,
            bytes_acked: 7 + 100 + 1,
            bytes_received: 2_000 + 1,
            local_port: 40_000,
            remote_port: 443,
            family: AF_INET,
            direction: direction::OUTBOUND,
            end_reason: end_reason::CLOSED,
            segs_out: 12,
            segs_in: 9,
            total_retrans: 3,
            srtt_us: 250,
            rtt_min_us: 80,
            // DSCP 46 (EF) with ECN bits set, which do not leak into it.
            tos: (46 << 2) | 0b11,
            old_state: tcp_state::TIME_WAIT,
            start_bytes_acked: 7,
            ..FlowEvent::default()
        };
        event.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        event.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        event
    }

    /// The kernel's numbers are the wire's: a program writing a wire value
    /// needs no translation table, and none can drift.
    #[test]
    fn the_shared_constants_are_the_wire_enums_numbers() {
        assert_eq!(end_reason::OPEN, u8::from(EndReason::Open));
        assert_eq!(end_reason::CLOSED, u8::from(EndReason::Closed));
        assert_eq!(end_reason::RESET, u8::from(EndReason::Reset));
        assert_eq!(direction::OUTBOUND, u8::from(Direction::Outbound));
        assert_eq!(direction::INBOUND, u8::from(Direction::Inbound));
        // Every direction the wire defines is one the kernel can write.
        assert_eq!(Direction::ALL, [Direction::Outbound, Direction::Inbound]);
    }

    #[test]
    fn every_field_of_a_flow_comes_from_its_event_exactly() {
        let flow = flow(&event(), clock()).expect("a valid event");
        assert_eq!(
            flow,
            Flow {
                flow_id: 0x1234_5678_9abc_def0,
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                src_port: 40_000,
                dst_port: 443,
                dscp: 46,
                direction: Direction::Outbound,
                end_reason: EndReason::Closed,
                start_ns: A_WALL_CLOCK_NS + 5_000_000_000,
                duration_ns: 250_000_000,
                bytes_acked: 100,
                bytes_received: 2_000,
                segs_out: 12,
                segs_in: 9,
                retrans_segs: 3,
                srtt_us: 250,
                min_rtt_us: 80,
            }
        );
        flow.to_record().validate().expect("a valid wire record");
    }

    #[test]
    fn every_known_direction_end_reason_and_family_converts() {
        let v6: std::net::Ipv6Addr = "fd00::1:2".parse().unwrap();
        for (d, want_d) in [
            (direction::OUTBOUND, Direction::Outbound),
            (direction::INBOUND, Direction::Inbound),
        ] {
            for (r, want_r) in [
                (end_reason::OPEN, EndReason::Open),
                (end_reason::CLOSED, EndReason::Closed),
                (end_reason::RESET, EndReason::Reset),
            ] {
                for family in [AF_INET, AF_INET6] {
                    let mut e = FlowEvent {
                        direction: d,
                        end_reason: r,
                        family,
                        ..event()
                    };
                    if family == AF_INET6 {
                        e.local_addr = v6.octets();
                    }
                    let flow = flow(&e, clock()).expect("a known event");
                    assert_eq!((flow.direction, flow.end_reason), (want_d, want_r));
                    let src = if family == AF_INET6 {
                        IpAddr::V6(v6)
                    } else {
                        "10.0.0.1".parse().unwrap()
                    };
                    assert_eq!(SocketAddr::new(flow.src, flow.src_port), SocketAddr::new(src, 40_000));
                    let record = flow.to_record();
                    record.validate().expect("a valid wire record");
                    assert!(record.direction().is_known() && record.end_reason().is_known());
                }
            }
        }
    }

    #[test]
    fn unknown_values_are_refused_not_mapped_to_a_default() {
        let with = |f: fn(&mut FlowEvent)| {
            let mut e = event();
            f(&mut e);
            flow(&e, clock())
        };
        assert_eq!(with(|e| e.direction = 0), Err(InvalidEvent::Direction(0)));
        assert_eq!(with(|e| e.direction = 3), Err(InvalidEvent::Direction(3)));
        // 3 is the wire's Timeout, which the programs never write: refused.
        assert_eq!(with(|e| e.end_reason = 3), Err(InvalidEvent::EndReason(3)));
        assert_eq!(with(|e| e.end_reason = 255), Err(InvalidEvent::EndReason(255)));
        assert_eq!(with(|e| e.family = 0), Err(InvalidEvent::Family(0)));
        assert_eq!(with(|e| e.family = 17), Err(InvalidEvent::Family(17)));
    }

    #[test]
    fn events_are_read_from_exactly_their_bytes() {
        let e = event();
        let bytes = e.as_bytes();
        assert_eq!(bytes.len(), FLOW_EVENT_LEN);
        assert_eq!(read_event(bytes), Ok(e));
        assert_eq!(read_event(&bytes[..111]), Err(InvalidEvent::Length(111)));
        assert_eq!(read_event(&[]), Err(InvalidEvent::Length(0)));
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(read_event(&long), Err(InvalidEvent::Length(FLOW_EVENT_LEN + 1)));
        // The layout is node-ebpf-common's: the cookie first, native order.
        assert_eq!(bytes[..8], e.cookie.to_ne_bytes());
        assert_eq!(bytes[78..80], [direction::OUTBOUND, end_reason::CLOSED]);
        let p = ProcessConnects {
            connects: 7,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let read = ProcessConnects::read_from_bytes(p.as_bytes()).unwrap();
        assert_eq!((read.connects, read.comm_str()), (7, "curl"));
    }

    /// What the ring buffer's drain does with each item: short items and
    /// unknown values are counted and dropped, the rest become flows.
    #[test]
    fn invalid_events_are_counted_and_dropped() {
        let good = event();
        let mut unknown_direction = event();
        unknown_direction.direction = 9;
        let items: [&[u8]; 4] = [
            good.as_bytes(),
            &good.as_bytes()[..64],
            unknown_direction.as_bytes(),
            good.as_bytes(),
        ];
        let mut invalid = InvalidEvents::default();
        let flows: Vec<Flow> = items
            .iter()
            .filter_map(|item| invalid.keep(read_event(item).and_then(|e| flow(&e, clock()))))
            .collect();
        assert_eq!(flows.len(), 2);
        assert_eq!(invalid.count(), 2);
    }

    /// The programs' three kinds of event, as the ring carries them.
    fn established(cookie: u64) -> FlowEvent {
        FlowEvent {
            cookie,
            kind: kind::ESTABLISHED,
            end_reason: end_reason::OPEN,
            end_mono_ns: event().start_mono_ns,
            old_state: 0,
            bytes_acked: 7,
            bytes_received: 0,
            segs_out: 2,
            segs_in: 1,
            total_retrans: 0,
            ..event()
        }
    }

    /// An end or a retransmission carries counters and times only: the
    /// identity and start come from the establishment.
    fn later(cookie: u64, kind: u32, retrans: u32) -> FlowEvent {
        let e = event();
        FlowEvent {
            cookie,
            kind,
            end_mono_ns: e.end_mono_ns,
            bytes_acked: e.bytes_acked,
            bytes_received: e.bytes_received,
            segs_out: e.segs_out,
            segs_in: e.segs_in,
            total_retrans: retrans,
            srtt_us: e.srtt_us,
            rtt_min_us: e.rtt_min_us,
            end_reason: if kind == kind::CLOSED {
                e.end_reason
            } else {
                end_reason::OPEN
            },
            old_state: if kind == kind::CLOSED { e.old_state } else { 0 },
            ..FlowEvent::default()
        }
    }

    /// An end joined with its establishment is the flow, exactly; one
    /// without is counted, not reported; retransmission events wait for
    /// the next retransmission report, one per flow however many came, and
    /// a flow's end takes its waiting event out; invalid items are counted.
    #[test]
    fn ring_items_are_joined_into_ended_flows_and_retransmitting_ones() {
        let items = [
            established(1),
            established(2),
            later(1, kind::RETRANSMITTING, 1),
            later(2, kind::RETRANSMITTING, 4),
            later(1, kind::RETRANSMITTING, 3),
            later(2, kind::CLOSED, 3),
            // Established before the agent started.
            later(3, kind::CLOSED, 3),
            FlowEvent {
                direction: 9,
                ..established(4)
            },
            later(4, kind::RETRANSMITTING, 1),
            FlowEvent {
                kind: 9,
                ..established(5)
            },
        ];
        let (mut invalid, mut joiner) = (InvalidEvents::default(), Joiner::new(100));
        let ended: Vec<Flow> = items
            .iter()
            .filter_map(|e| joiner.sort(e.as_bytes(), clock(), &mut invalid))
            .collect();
        assert_eq!(ended.len(), 1);
        let want = flow(&FlowEvent { cookie: 2, ..event() }, clock()).unwrap();
        assert_eq!(ended[0], want, "the end and its establishment make the whole flow");
        assert_eq!(joiner.untracked_ends, 1);
        // Flow 1 waits once, as its latest event, with its establishment's
        // identity; flow 4 was refused at establishment, so its
        // retransmission has no flow; the unknown kind is refused.
        let waiting: Vec<(u64, u32, u16)> = joiner
            .retransmitted
            .values()
            .map(|e| (e.cookie, e.total_retrans, e.local_port))
            .collect();
        assert_eq!(waiting, [(1, 3, 40_000)]);
        assert_eq!(invalid.count(), 2);
        assert_eq!(joiner.open.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(joiner.sort(&[0u8; 8], clock(), &mut invalid), None);
        assert_eq!(invalid.count(), 3);
    }

    /// A full table counts the establishments it cannot keep, and their
    /// ends as untracked: nothing is reported with a made-up start.
    #[test]
    fn a_full_table_counts_what_it_cannot_track() {
        let (mut invalid, mut joiner) = (InvalidEvents::default(), Joiner::new(2));
        for cookie in 1..=3 {
            assert_eq!(joiner.sort(established(cookie).as_bytes(), clock(), &mut invalid), None);
        }
        assert_eq!(joiner.flows_full, 1);
        let ends: Vec<Option<Flow>> = (1..=3)
            .map(|cookie| joiner.sort(later(cookie, kind::CLOSED, 0).as_bytes(), clock(), &mut invalid))
            .collect();
        assert!(ends[0].is_some() && ends[1].is_some() && ends[2].is_none());
        assert_eq!(joiner.untracked_ends, 1);
        // Room again: a new flow is tracked.
        joiner.sort(established(4).as_bytes(), clock(), &mut invalid);
        assert_eq!(joiner.open.len(), 1);
        assert_eq!(invalid.count(), 0);
    }

    /// An open flow whose end was lost is forgotten once two sock_diag
    /// dumps in a row miss it — not after one (its end may be on its way),
    /// not if it is another namespace's (sock_diag here cannot see it), not
    /// if it started after the dump.
    #[test]
    fn open_flows_whose_end_was_lost_are_forgotten_after_two_dumps_miss_them() {
        const OWN: u64 = 77;
        let (mut invalid, mut joiner) = (InvalidEvents::default(), Joiner::new(100));
        let start = event().start_mono_ns;
        for (cookie, netns, started) in [(1, OWN, start), (2, OWN, start), (3, 5, start), (4, OWN, start + 10)] {
            let e = FlowEvent {
                netns_cookie: netns,
                start_mono_ns: started,
                ..established(cookie)
            };
            joiner.sort(e.as_bytes(), clock(), &mut invalid);
        }
        let dump: std::collections::HashMap<u64, TcpCounters> = [(2, TcpCounters::default())].into_iter().collect();
        let open = |j: &Joiner| {
            let mut c: Vec<u64> = j.open.keys().copied().collect();
            c.sort();
            c
        };
        joiner.forget_missing(&dump, OWN, start + 5);
        assert_eq!(open(&joiner), [1, 2, 3, 4], "one miss forgets nothing");
        joiner.forget_missing(&dump, OWN, start + 5);
        assert_eq!(open(&joiner), [2, 3, 4]);
        // Its end, if it comes after all, is counted, not reported.
        assert_eq!(
            joiner.sort(later(1, kind::CLOSED, 0).as_bytes(), clock(), &mut invalid),
            None
        );
        assert_eq!(joiner.untracked_ends, 1);
    }

    #[test]
    fn payload_bytes_leave_out_the_syn_and_fins() {
        // Open: only the SYN is in bytes_acked.
        let open = FlowEvent {
            old_state: 0,
            end_reason: end_reason::OPEN,
            bytes_acked: 7 + 100,
            bytes_received: 2_000,
            ..event()
        };
        let f = flow(&open, clock()).unwrap();
        assert_eq!((f.bytes_acked, f.bytes_received), (100, 2_000));
        // Reset from ESTABLISHED: no FIN either way.
        let reset = FlowEvent {
            old_state: tcp_state::ESTABLISHED,
            end_reason: end_reason::RESET,
            bytes_acked: 7 + 100,
            bytes_received: 2_000,
            ..event()
        };
        let f = flow(&reset, clock()).unwrap();
        assert_eq!((f.bytes_acked, f.bytes_received), (100, 2_000));
        // Closed from CLOSE_WAIT's successor LAST_ACK: both FINs counted.
        let closed = FlowEvent {
            old_state: tcp_state::LAST_ACK,
            ..event()
        };
        let f = flow(&closed, clock()).unwrap();
        assert_eq!((f.bytes_acked, f.bytes_received), (100, 2_000));
    }
}
