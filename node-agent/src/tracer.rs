//! Loads the sock_ops program, attaches it to a cgroup v2 and turns its
//! ring-buffer events into wire-format flow records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use node_ebpf_common::{
    AF_INET6, CONNECT_PROGRAMS, DROPS_MAP, EVENTS_MAP, FLOWS_MAP, FlowEvent, PROCS_MAP, ProcessConnects,
    SOCK_OPS_PROGRAM, drops, end_reason,
};
use tokio::io::unix::AsyncFd;
use wire_format::{Direction, EndReason, Flow};

/// The compiled eBPF object, built by build.rs from ../node-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowmesh-flows"));

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The kernel refused the programs or maps.
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// The program could not be loaded or attached.
    #[error("attaching the sock_ops program to {cgroup}: {source}")]
    Attach {
        /// The cgroup.
        cgroup: String,
        /// Why.
        source: aya::programs::ProgramError,
    },
    /// A map is missing or of the wrong type.
    #[error("eBPF map {name}: {message}")]
    Map {
        /// The map.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The cgroup directory could not be opened.
    #[error("opening cgroup {cgroup}: {source}")]
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
/// everything (the attachment is a BPF link owned by this process, so even
/// a kill -9 leaves nothing attached).
pub struct Tracer {
    _ebpf: Ebpf,
    events: AsyncFd<RingBuf<MapData>>,
    flows: HashMap<MapData, u64, [u8; FLOW_EVENT_LEN]>,
    procs: PerCpuHashMap<MapData, u32, [u8; 24]>,
    drops: PerCpuArray<MapData, u64>,
    clock: Clock,
    /// Connects of processes that have exited, by command name.
    retired: std::collections::BTreeMap<String, u64>,
}

/// Bytes of a [`FlowEvent`] as the programs store it.
const FLOW_EVENT_LEN: usize = std::mem::size_of::<FlowEvent>();

/// `CLOCK_BOOTTIME` now, ns: the clock the programs stamp with.
fn boot_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Converts the kernel's `CLOCK_BOOTTIME` to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock ns minus boot-time ns, measured at start.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset now.
    pub fn now() -> Clock {
        let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let wall = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let ns = |t: rustix::time::Timespec| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
        Clock {
            offset_ns: ns(wall) - ns(boot),
        }
    }

    /// Wall-clock ns since the Unix epoch for a boot-time instant.
    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.offset_ns).unwrap_or(0)
    }
}

impl Tracer {
    /// Loads the programs with the given table sizes and attaches them to
    /// `cgroup`, so only its processes' sockets are seen.
    /// `max_processes` bounds the per-process connect counters; a non-zero
    /// `netns_cookie` limits tracing to that network namespace's sockets.
    pub fn attach(
        cgroup: &Path,
        max_flows: u32,
        ring_bytes: u32,
        max_processes: u32,
        netns_cookie: u64,
    ) -> Result<Tracer, TracerError> {
        // Wake the agent when an eighth of the ring waits; it drains the
        // rest on its flush timer (Tracer::take_events).
        let wakeup_bytes = u64::from(ring_bytes / 8);
        let mut ebpf = EbpfLoader::new()
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("NETNS_COOKIE", &netns_cookie, true)
            .map_max_entries(FLOWS_MAP, max_flows)
            .map_max_entries(EVENTS_MAP, ring_bytes)
            .map_max_entries(PROCS_MAP, max_processes)
            .load(PROGRAMS)?;
        let cgroup_name = cgroup.display().to_string();
        let dir = std::fs::File::open(cgroup).map_err(|source| TracerError::Cgroup {
            cgroup: cgroup_name.clone(),
            source,
        })?;
        let attach_error = |source| TracerError::Attach {
            cgroup: cgroup_name.clone(),
            source,
        };
        let missing = |name: &str| TracerError::Map {
            name: "program",
            message: format!("{name} missing from the object"),
        };
        let program: &mut SockOps = ebpf
            .program_mut(SOCK_OPS_PROGRAM)
            .ok_or_else(|| missing(SOCK_OPS_PROGRAM))?
            .try_into()
            .map_err(attach_error)?;
        program.load().map_err(attach_error)?;
        // Single: AllowMultiple is refused with EINVAL on the kernels
        // measured (../shared/notes/ebpf-toolchain.md).
        program.attach(&dir, CgroupAttachMode::Single).map_err(attach_error)?;
        for name in CONNECT_PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(name))?
                .try_into()
                .map_err(attach_error)?;
            program.load().map_err(attach_error)?;
            program.attach(&dir, CgroupAttachMode::Single).map_err(attach_error)?;
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
        let flows = HashMap::try_from(map(FLOWS_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: FLOWS_MAP,
            message: e.to_string(),
        })?;
        let procs = PerCpuHashMap::try_from(map(PROCS_MAP, &mut ebpf)?).map_err(|e| TracerError::Map {
            name: PROCS_MAP,
            message: e.to_string(),
        })?;
        // `AsyncFd::new` is deprecated because a caller could close the fd
        // while it is registered; here the AsyncFd owns the ring buffer,
        // which owns its fd, so it lives exactly as long as the
        // registration. The safe constructor keeps `unsafe` out of the crate.
        #[allow(deprecated)]
        let events = AsyncFd::new(events)?;
        Ok(Tracer {
            _ebpf: ebpf,
            events,
            flows,
            procs,
            drops,
            clock: Clock::now(),
            retired: std::collections::BTreeMap::new(),
        })
    }

    /// Waits until the programs wake the agent (an eighth of the ring
    /// waits) and returns the events available (at least one).
    pub async fn next_events(&mut self) -> Result<Vec<FlowEvent>, TracerError> {
        loop {
            let mut guard = self.events.readable_mut().await?;
            let out = drain(guard.get_inner_mut());
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// The events waiting now, without waiting for a wakeup: the programs
    /// only wake the agent for a batch, so it calls this on a timer too.
    pub fn take_events(&mut self) -> Vec<FlowEvent> {
        drain(self.events.get_mut())
    }

    /// The flows open now that have been open for at least `min_age_ns`
    /// (`end_reason` [`end_reason::OPEN`]), with their current counters
    /// from sock_diag where this network namespace has the socket, else as
    /// the flow table last saw them.
    pub fn open_flows(&self, min_age_ns: u64) -> Vec<FlowEvent> {
        let now = boot_ns();
        let mut open: Vec<FlowEvent> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, bytes)| FlowEvent::from_bytes(&bytes))
            .filter(|e| now.saturating_sub(e.start_boot_ns) >= min_age_ns)
            .collect();
        if open.is_empty() {
            return open;
        }
        let current = crate::sockdiag::tcp_counters().unwrap_or_default();
        for event in &mut open {
            event.end_boot_ns = now;
            if let Some(c) = current.get(&event.cookie) {
                event.bytes_acked = c.bytes_acked;
                event.bytes_received = c.bytes_received;
                event.segs_out = c.segs_out;
                event.segs_in = c.segs_in;
                event.total_retrans = c.total_retrans;
                event.srtt_us = c.srtt_us;
                event.rtt_min_us = c.min_rtt_us;
            }
        }
        open
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
                for slot in slots.iter().map(ProcessConnects::from_bytes) {
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

    /// The kernel side's drop counters summed over CPUs: ring buffer full,
    /// flow table full, flows ended untracked, process table full.
    pub fn drops(&self) -> [u64; drops::COUNT as usize] {
        let mut out = [0; drops::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.drops.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// The boot-time to wall-clock conversion.
    pub fn clock(&self) -> Clock {
        self.clock
    }
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(event) = FlowEvent::from_bytes(&item) {
            out.push(event);
        }
    }
    out
}

fn address(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// The wire-format flow for a kernel event.
pub fn flow(event: &FlowEvent, clock: Clock) -> Flow {
    Flow {
        flow_id: event.cookie,
        src: address(event.family, &event.local_addr),
        dst: address(event.family, &event.remote_addr),
        src_port: event.local_port,
        dst_port: event.remote_port,
        dscp: (event.tos >> 2) as u8 & 0x3f,
        direction: if event.direction == node_ebpf_common::direction::INBOUND {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        end_reason: match event.end_reason {
            end_reason::RESET => EndReason::Reset,
            end_reason::OPEN => EndReason::Open,
            _ => EndReason::Closed,
        },
        start_ns: clock.wall_ns(event.start_boot_ns),
        duration_ns: event.end_boot_ns.saturating_sub(event.start_boot_ns),
        bytes_acked: event.payload_acked(),
        bytes_received: event.payload_received(),
        segs_out: event.segs_out,
        segs_in: event.segs_in,
        retrans_segs: event.total_retrans,
        srtt_us: event.srtt_us,
        min_rtt_us: event.rtt_min_us,
    }
}
