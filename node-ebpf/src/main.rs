//! flowmesh's kernel side: two BTF tracepoint programs. One on
//! `inet_sock_set_state` sees every TCP connection of the traced cgroup and
//! network namespace established (its identity, start and TOS into the
//! ring) and closed (its counters into the ring; the agent joins the two),
//! IPv4 and IPv6, active and passive, and counts TCP connects per process
//! at `CLOSE` → `SYN_SENT`, in the caller's context (pid and comm are its).
//! One on `tcp_retransmit_skb` puts an open flow in the ring at its first
//! retransmission of each of the agent's report epochs.
//!
//! Kernel structs are read at offsets the agent resolves from the running
//! kernel's BTF and sets in a frozen read-only array, so the verifier checks
//! every load against the kernel's own types and nothing depends on one
//! kernel build. Whatever cannot be delivered is counted in a per-CPU array
//! the agent exports.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// On the host there is nothing to run: the programs exist only for the
/// BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs;
