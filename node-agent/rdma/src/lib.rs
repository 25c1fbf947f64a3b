//! RDMA UD probes for flowmesh's agent (R-Pingmesh style), on hosts with
//! an RDMA NIC.
//!
//! - [`exchange`]: the probe exchange as a state machine — what to post,
//!   and which probe records follow from the completions — with no device;
//!   a thin layer over the probe session the UDP prober shares
//!   (node-agent-probe), adding work-request ids and the responder's
//!   follow-up.
//! - [`clock`]: NIC completion timestamps (a narrow free-running counter
//!   at the device's core clock) to nanoseconds and to wall-clock time.
//! - [`grh`]: the sender's GID and the payload in a UD receive buffer.
//! - `verbs` (feature `verbs`, needs libibverbs): the device, a UD queue
//!   pair, sends, and completions with their timestamps.
//!
//! What is tested where: the exchange, the clock arithmetic and the buffer
//! parsing are unit-tested everywhere; the `verbs` feature is compiled in
//! CI and its "no RDMA device" path runs there, but the machines flowmesh
//! is developed and tested on have no RDMA NIC (and no soft-RoCE), so
//! posting to a real queue pair is not exercised end to end.

pub mod clock;
pub mod exchange;
pub mod grh;
#[cfg(feature = "verbs")]
#[allow(unsafe_code)]
pub mod verbs;

pub use clock::{Calibration, NicClock};
pub use exchange::{Endpoint, Exchange, ExchangeStats, Outgoing};

/// The Q_Key flowmesh's probe QPs use unless configured otherwise: "FMPR"
/// (high bit clear, so no privilege is needed to send with it).
pub const DEFAULT_QKEY: u32 = 0x464d_5052;
