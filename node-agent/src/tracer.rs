//! Loads the sock_ops program, attaches it to a cgroup v2 and turns its
//! ring-buffer events into wire-format flow records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, SockOps};
use aya::{Ebpf, EbpfLoader};
use node_ebpf_common::{AF_INET6, DROPS_MAP, EVENTS_MAP, FLOWS_MAP, FlowEvent, SOCK_OPS_PROGRAM, drops};
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
    drops: PerCpuArray<MapData, u64>,
    clock: Clock,
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
    pub fn attach(cgroup: &Path, max_flows: u32, ring_bytes: u32) -> Result<Tracer, TracerError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, max_flows)
            .map_max_entries(EVENTS_MAP, ring_bytes)
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
        let program: &mut SockOps = ebpf
            .program_mut(SOCK_OPS_PROGRAM)
            .ok_or_else(|| TracerError::Map {
                name: "program",
                message: format!("{SOCK_OPS_PROGRAM} missing from the object"),
            })?
            .try_into()
            .map_err(attach_error)?;
        program.load().map_err(attach_error)?;
        // Single: AllowMultiple is refused with EINVAL on the kernels
        // measured (../shared/notes/ebpf-toolchain.md).
        program.attach(&dir, CgroupAttachMode::Single).map_err(attach_error)?;
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
        // `AsyncFd::new` is deprecated because a caller could close the fd
        // while it is registered; here the AsyncFd owns the ring buffer,
        // which owns its fd, so it lives exactly as long as the
        // registration. The safe constructor keeps `unsafe` out of the crate.
        #[allow(deprecated)]
        let events = AsyncFd::new(events)?;
        Ok(Tracer {
            _ebpf: ebpf,
            events,
            drops,
            clock: Clock::now(),
        })
    }

    /// Waits for flow events and returns those available (at least one).
    pub async fn next_events(&mut self) -> Result<Vec<FlowEvent>, TracerError> {
        loop {
            let mut guard = self.events.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(event) = FlowEvent::from_bytes(&item) {
                    out.push(event);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// The kernel side's drop counters summed over CPUs: ring buffer full,
    /// flow table full, flows ended untracked.
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
        end_reason: if event.end_reason == node_ebpf_common::end_reason::RESET {
            EndReason::Reset
        } else {
            EndReason::Closed
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
