//! flowmesh's kernel side, attached to a cgroup v2: a sock_ops program that
//! sees every TCP connection of the cgroup's processes established, keeps
//! it in a flow table while it is open (updated at each retransmission,
//! and put in the ring at its first retransmission of each of the agent's
//! report epochs) and reports it closed, IPv4 and IPv6, active and
//! passive; and connect4/connect6 programs that count TCP connects per
//! process, in the caller's context (pid and comm are its).
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
