//! flowmesh's kernel side: one sock_ops program, attached to a cgroup v2,
//! that sees every TCP connection of the cgroup's processes established and
//! closed, IPv4 and IPv6, active and passive.
//!
//! Everything comes from the UAPI `bpf_sock_ops` context (bytes, segments,
//! retransmissions, RTTs, addresses) and helpers (socket cookie, TOS), so
//! nothing depends on one kernel build's struct offsets. Events go to
//! userspace through a ring buffer; whatever cannot be delivered is counted
//! in a per-CPU array the agent exports.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// On the host there is nothing to run: the programs exist only for the
/// BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs;
