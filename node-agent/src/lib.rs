//! flowmesh's host agent: eBPF BTF tracepoint programs (node-ebpf) see
//! every TCP flow of a cgroup established and closed; the agent joins the
//! two, turns them into wire-format flow records and batches them to the
//! rack sampler over UDP.
//!
//! [`checks`] verifies privileges and kernel features before anything is
//! loaded; [`kernel_layout`] resolves the kernel struct offsets the
//! programs read from the kernel's BTF; [`tracer`] loads, attaches and
//! reads the programs; [`sender`]
//! batches records into datagrams (its logic, [`sender::Batcher`], takes
//! the time as an argument) for the samplers at the addresses
//! [`sampler_address`] keeps resolved; [`probe`] measures the network to the node's
//! peers with UDP probes, and `rdma` (feature `rdma`) over RDMA UD where
//! the host has an RDMA NIC — both thin drivers of one probe session with
//! time passed in (the node-agent-probe crate).
//!
//! Flows still open are reported every `flows.report_open_secs` from the
//! agent's table of open flows with their current counters from
//! [`sockdiag`]; a flow that retransmitted is reported again within
//! `flows.retrans_report_ms` (the program names it in the ring once per
//! interval; [`tracer`] looks up just those flows), so the sampler counts
//! retransmissions in the window they happened in; TCP connects are
//! counted per process as they start. Tracing is scoped to a cgroup
//! (`flows.cgroup`) and optionally to one network namespace (`flows.netns`,
//! compared by [`netns`] cookie in the programs).

pub mod checks;
pub mod kernel_layout;
pub mod netns;
pub mod probe;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod sampler_address;
pub mod sender;
pub mod sockdiag;
pub mod telemetry;
pub mod tracer;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
