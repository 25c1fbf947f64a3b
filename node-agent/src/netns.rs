//! A network namespace's cookie: what the eBPF programs compare sockets'
//! namespaces against when `flows.netns` scopes tracing to one namespace.
//!
//! The cookie is the kernel's 64-bit id of a namespace
//! (`SO_NETNS_COOKIE`, Linux 5.14), the `net.net_cookie` the programs read
//! from each socket's namespace. It is read from a socket made inside the
//! namespace, by a thread that enters it (setns affects only the calling
//! thread).

use std::os::fd::AsFd;
use std::path::Path;

use nix::libc;
use nix::sched::CloneFlags;

/// `SO_NETNS_COOKIE` (asm-generic/socket.h); not in libc yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Clone, Copy, Debug)]
struct NetnsCookie;

nix::getsockopt_impl!(
    NetnsCookie,
    libc::SOL_SOCKET,
    SO_NETNS_COOKIE,
    u64,
    nix::sys::socket::sockopt::GetStruct<u64>
);

/// The cookie of the network namespace at `path` (`/run/netns/NAME`,
/// `/proc/PID/ns/net`).
pub fn cookie_of(path: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> std::io::Result<u64> {
                nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                Ok(nix::sys::socket::getsockopt(&socket, NetnsCookie)?)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// The cookie of this process's own network namespace.
pub fn own_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    Ok(nix::sys::socket::getsockopt(&socket, NetnsCookie)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_by_path_has_the_own_cookie() {
        let own = own_cookie().expect("SO_NETNS_COOKIE");
        assert_ne!(own, 0);
        assert_eq!(cookie_of(Path::new("/proc/self/ns/net")).expect("cookie"), own);
    }
}
