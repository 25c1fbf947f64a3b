//! What flowmesh's binaries share at run time, apart from their
//! configuration (which is `configs`): how a binary exits and logs, and —
//! behind features, so a tool that only reads configuration links none of
//! it — what a long-running daemon serves and how it talks TLS.
//!
//! - [`exit`]: one line on stderr and the exit status, never a backtrace.
//! - [`logging`]: `tracing` to stderr, as text or JSON lines ([`LogFormat`]).
//! - [`promtool`]: `promtool check metrics` on an exposition (tests).
//! - feature `daemon`: [`endpoint`] (`/metrics`, `/healthz`, `/readyz`),
//!   [`metric`] (each metric family declared once, described and recorded
//!   through the same value), [`signal`] (SIGTERM and SIGINT).
//! - feature `tls`: [`tls`] (mutual TLS 1.3 for the sampler → collector QUIC
//!   link from the files a configuration names, and a development PKI).

#[cfg(feature = "daemon")]
pub mod endpoint;
pub mod exit;
pub mod logging;
#[cfg(feature = "daemon")]
pub mod metric;
pub mod promtool;
#[cfg(feature = "daemon")]
pub mod signal;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "udp")]
pub mod udp;

pub use exit::exit_code;
pub use logging::{LogFormat, init_logging};
