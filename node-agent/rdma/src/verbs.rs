//! libibverbs: the device holding this host's GID, a UD queue pair on it,
//! sends, and completions with their NIC timestamps.
//!
//! The verbs calls themselves are in src/shim.c (most of the API is static
//! inline in C headers); this module is the only place flowmesh holds a
//! raw pointer, and every call through it is documented below.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::time::Duration;

use crate::clock::NicClock;
use crate::exchange::Outgoing;
use zerocopy::IntoBytes;

/// Bytes of one receive (GRH + payload) the shim copies out.
pub const SLOT_BYTES: usize = 128;

#[repr(C)]
struct RawCompletion {
    wr_id: u64,
    timestamp: u64,
    status: u32,
    src_qp: u32,
    byte_len: u32,
    is_recv: u8,
    has_timestamp: u8,
    pad: [u8; 2],
    data: [u8; SLOT_BYTES],
}

// SAFETY: these match the definitions in src/shim.c, compiled and linked
// by build.rs; `fm_ud` is only ever handled as an opaque pointer.
unsafe extern "C" {
    fn fm_device_count() -> c_int;
    fn fm_ud_open(gid: *const u8, qkey: u32, stage: *mut *const c_char, err: *mut c_int) -> *mut c_void;
    fn fm_ud_close(ud: *mut c_void);
    fn fm_ud_qpn(ud: *const c_void) -> u32;
    fn fm_ud_clock_khz(ud: *const c_void) -> u64;
    fn fm_ud_timestamp_mask(ud: *const c_void) -> u64;
    fn fm_ud_read_clock(ud: *mut c_void, cycles: *mut u64) -> c_int;
    fn fm_ud_send(
        ud: *mut c_void,
        gid: *const u8,
        qpn: u32,
        qkey: u32,
        traffic_class: u8,
        payload: *const u8,
        len: u32,
        wr_id: u64,
    ) -> c_int;
    fn fm_ud_wait(ud: *mut c_void, timeout_ms: c_int, out: *mut RawCompletion, max: c_int) -> c_int;
}

/// Why the UD queue pair could not be opened or used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerbsError {
    /// libibverbs found no RDMA device on this host.
    #[error("no RDMA device on this host (ibv_get_device_list found none)")]
    NoDevice,
    /// The kernel offers no RDMA verbs at all (no `ib_uverbs`).
    #[error("this kernel offers no RDMA verbs (ibv_get_device_list: ENOSYS; is the ib_uverbs module loaded?)")]
    NoKernelSupport,
    /// No device port holds the GID the topology gives this node.
    #[error("no RDMA port holds GID {0}; check this node's rdma_gids in the topology (`ibv_devinfo -v` lists them)")]
    NoSuchGid(wire_format::Gid),
    /// A verbs call failed.
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Call {
        /// The call.
        call: String,
        /// Its errno.
        errno: i32,
    },
}

impl VerbsError {
    /// Whether it means this host simply has no RDMA (so UDP probes are
    /// all there is), rather than a fault to report.
    pub fn is_absent(&self) -> bool {
        matches!(self, VerbsError::NoDevice | VerbsError::NoKernelSupport)
    }
}

/// Number of RDMA devices libibverbs sees.
pub fn device_count() -> Result<usize, VerbsError> {
    // SAFETY: no arguments; the shim frees the list it gets.
    let n = unsafe { fm_device_count() };
    usize::try_from(n).map_err(|_| match -n {
        libc_errno::ENOSYS => VerbsError::NoKernelSupport,
        errno => VerbsError::Call {
            call: "ibv_get_device_list".into(),
            errno,
        },
    })
}

/// One completion, as the NIC reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// A send finished.
    Sent {
        /// The work request's id.
        wr_id: u64,
        /// `ibv_wc_status` (0 = success).
        status: u32,
        /// NIC clock at completion, when the device stamps completions.
        timestamp: Option<u64>,
    },
    /// A packet arrived.
    Received {
        /// `ibv_wc_status` (0 = success).
        status: u32,
        /// Sender's QP number.
        src_qp: u32,
        /// NIC clock at completion, when the device stamps completions.
        timestamp: Option<u64>,
        /// GRH and payload ([`crate::grh::split`] them).
        bytes: Vec<u8>,
    },
}

/// A UD queue pair on the port holding this node's GID.
#[derive(Debug)]
pub struct UdQueuePair {
    raw: *mut c_void,
    gid: [u8; 16],
    qkey: u32,
}

// SAFETY: the shim's state is only touched through `&mut self` (or, for
// reads of fields fixed at open, `&self`); moving it to another thread is
// fine, libibverbs objects are not tied to the thread that created them.
unsafe impl Send for UdQueuePair {}

impl UdQueuePair {
    /// Opens a UD QP accepting `qkey` on whichever device port holds `gid`.
    pub fn open(gid: [u8; 16], qkey: u32) -> Result<UdQueuePair, VerbsError> {
        let mut stage: *const c_char = std::ptr::null();
        let mut errno: c_int = 0;
        // SAFETY: `gid` is 16 readable bytes; `stage` and `errno` are
        // valid out-pointers for the call's duration.
        let raw = unsafe { fm_ud_open(gid.as_ptr(), qkey, &mut stage, &mut errno) };
        if raw.is_null() {
            return Err(match errno {
                libc_errno::ENODEV => VerbsError::NoDevice,
                libc_errno::ENOSYS => VerbsError::NoKernelSupport,
                libc_errno::ENOENT => VerbsError::NoSuchGid(wire_format::Gid(gid)),
                _ => VerbsError::Call {
                    call: if stage.is_null() {
                        "ibv".into()
                    } else {
                        // SAFETY: the shim sets `stage` to a string literal.
                        unsafe { CStr::from_ptr(stage) }.to_string_lossy().into_owned()
                    },
                    errno,
                },
            });
        }
        Ok(UdQueuePair { raw, gid, qkey })
    }

    /// The queue-pair number peers send to.
    pub fn qpn(&self) -> u32 {
        // SAFETY: `raw` is a live handle from `fm_ud_open`.
        unsafe { fm_ud_qpn(self.raw) }
    }

    /// The GID it was opened on.
    pub fn gid(&self) -> [u8; 16] {
        self.gid
    }

    /// Its Q_Key.
    pub fn qkey(&self) -> u32 {
        self.qkey
    }

    /// The NIC's clock, when the device stamps completions.
    pub fn clock(&self) -> Option<NicClock> {
        // SAFETY: `raw` is a live handle from `fm_ud_open`.
        let (khz, mask) = unsafe { (fm_ud_clock_khz(self.raw), fm_ud_timestamp_mask(self.raw)) };
        NicClock::new(khz, mask)
    }

    /// Reads the NIC's clock now (for a [`crate::Calibration`]).
    pub fn read_clock(&mut self) -> Result<u64, VerbsError> {
        let mut cycles = 0u64;
        // SAFETY: `raw` is live; `cycles` is a valid out-pointer.
        let rc = unsafe { fm_ud_read_clock(self.raw, &mut cycles) };
        if rc != 0 {
            return Err(VerbsError::Call {
                call: "ibv_query_rt_values_ex".into(),
                errno: rc,
            });
        }
        Ok(cycles)
    }

    /// Posts `out` as a signalled send with DSCP `dscp`.
    pub fn send(&mut self, out: &Outgoing, dscp: u8) -> Result<(), VerbsError> {
        let bytes = out.packet.as_bytes();
        // SAFETY: `raw` is live; the GID and payload pointers are valid for
        // their lengths during the call, which copies the payload.
        let rc = unsafe {
            fm_ud_send(
                self.raw,
                out.to.gid.as_ptr(),
                out.to.qpn,
                out.to.qkey,
                dscp << 2,
                bytes.as_ptr(),
                bytes.len() as u32,
                out.wr_id,
            )
        };
        if rc != 0 {
            return Err(VerbsError::Call {
                call: "ibv_post_send".into(),
                errno: rc,
            });
        }
        Ok(())
    }

    /// Completions, waiting up to `timeout` for the first.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Completion>, VerbsError> {
        const MAX: usize = 32;
        let mut raw: Vec<RawCompletion> = (0..MAX)
            .map(|_| RawCompletion {
                wr_id: 0,
                timestamp: 0,
                status: 0,
                src_qp: 0,
                byte_len: 0,
                is_recv: 0,
                has_timestamp: 0,
                pad: [0; 2],
                data: [0; SLOT_BYTES],
            })
            .collect();
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `raw` is live; `raw` holds MAX writable completions.
        let n = unsafe { fm_ud_wait(self.raw, ms, raw.as_mut_ptr(), MAX as c_int) };
        let n = usize::try_from(n).map_err(|_| VerbsError::Call {
            call: "ibv_poll_cq".into(),
            errno: -n,
        })?;
        Ok(raw
            .into_iter()
            .take(n.min(MAX))
            .map(|c| {
                let timestamp = (c.has_timestamp != 0).then_some(c.timestamp);
                if c.is_recv != 0 {
                    let len = (c.byte_len as usize).min(SLOT_BYTES);
                    Completion::Received {
                        status: c.status,
                        src_qp: c.src_qp,
                        timestamp,
                        bytes: c.data[..len].to_vec(),
                    }
                } else {
                    Completion::Sent {
                        wr_id: c.wr_id,
                        status: c.status,
                        timestamp,
                    }
                }
            })
            .collect())
    }
}

impl Drop for UdQueuePair {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `fm_ud_open` and is closed once, here.
        unsafe { fm_ud_close(self.raw) };
    }
}

/// The errno values that tell "no RDMA here" from a failure (Linux).
mod libc_errno {
    pub(super) const ENOENT: i32 = 2;
    pub(super) const ENODEV: i32 = 19;
    pub(super) const ENOSYS: i32 = 38;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs wherever the crate is built with `verbs` (CI included): the
    /// library loads and answers. On a host without RDMA, opening a QP says
    /// so (and why) rather than failing obscurely.
    #[test]
    fn without_a_device_opening_says_there_is_none() {
        let count = match device_count() {
            Ok(count) => count,
            Err(e) => {
                assert_eq!(e, VerbsError::NoKernelSupport);
                let open = UdQueuePair::open([0xfd; 16], crate::DEFAULT_QKEY).unwrap_err();
                assert_eq!(open, VerbsError::NoKernelSupport);
                assert!(open.is_absent() && open.to_string().contains("ib_uverbs"), "{open}");
                return;
            }
        };
        if count == 0 {
            let open = UdQueuePair::open([0xfd; 16], crate::DEFAULT_QKEY).unwrap_err();
            assert_eq!(open, VerbsError::NoDevice);
            assert!(open.is_absent());
        } else {
            // A device exists but no port holds this made-up GID.
            assert!(matches!(
                UdQueuePair::open([0xfd; 16], crate::DEFAULT_QKEY),
                Err(VerbsError::NoSuchGid(_))
            ));
        }
    }
}
