//! Start-up checks: everything the agent needs from the kernel and its
//! privileges, each failure with its own exit code and a message that says
//! what to run or change.
//!
//! bpffs and tracefs are deliberately not required: the agent pins no
//! object (so none of it outlives the process, even after `kill -9`) and
//! attaches sock_ops and cgroup connect programs, no tracepoint, so it
//! works whether or not either is mounted.

use std::path::{Path, PathBuf};

/// A start-up requirement that is not met.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Missing privileges.
    #[error(
        "missing capabilities {missing}: run as root, or grant them with `setcap cap_bpf,cap_perfmon,cap_net_admin+ep $(command -v flowmesh-agent)` (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN)"
    )]
    Capabilities {
        /// The capabilities lacking, by name.
        missing: String,
    },
    /// The kernel has no BTF.
    #[error("no BTF at /sys/kernel/btf/vmlinux: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    /// No cgroup v2 hierarchy to attach to.
    #[error(
        "no cgroup v2 hierarchy found in /proc/self/mountinfo: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`, or set flows.cgroup"
    )]
    NoCgroup2,
    /// The configured cgroup is not a cgroup v2 directory.
    #[error("flows.cgroup {}: not a cgroup v2 directory (no cgroup.procs in it)", .0.display())]
    BadCgroup(PathBuf),
    /// The kernel is older than sock_ops with the needed context fields.
    #[error("kernel {found} is too old: flowmesh-agent needs Linux 5.10 or newer")]
    KernelTooOld {
        /// The running kernel's release.
        found: String,
    },
}

impl CheckError {
    /// The process exit code for this failure (distinct per cause; 1 is
    /// every other error).
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckError::Capabilities { .. } => 10,
            CheckError::NoBtf => 11,
            CheckError::NoCgroup2 | CheckError::BadCgroup(_) => 12,
            CheckError::KernelTooOld { .. } => 13,
        }
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Which of the needed capabilities are missing from `effective`.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON on any kernel.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The mount point of the cgroup v2 hierarchy, from a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: ... mount point (5th) ... " - " fstype source options.
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// `major.minor` of a kernel release string such as `6.18.44-fc`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs every check; returns the cgroup to attach to.
pub fn run(cgroup: Option<&Path>) -> Result<PathBuf, CheckError> {
    let missing = missing_capabilities(effective_capabilities());
    if !missing.is_empty() {
        return Err(CheckError::Capabilities {
            missing: missing.join(", "),
        });
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match kernel_version(release.trim()) {
        Some(v) if v >= (5, 10) => {}
        _ => {
            return Err(CheckError::KernelTooOld {
                found: release.trim().to_string(),
            });
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CheckError::NoBtf);
    }
    let cgroup = match cgroup {
        Some(path) => path.to_path_buf(),
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            cgroup2_mount(&mountinfo).ok_or(CheckError::NoCgroup2)?
        }
    };
    if !cgroup.join("cgroup.procs").exists() {
        return Err(CheckError::BadCgroup(cgroup));
    }
    Ok(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF | 1 << CAP_PERFMON), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn cgroup2_is_found_in_hybrid_and_unified_layouts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("36 25 0:31 / /x rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
