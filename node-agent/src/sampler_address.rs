//! Where a sampler is now: its configured `host:port` (`uplink.sampler`,
//! `uplink.secondary_sampler` or the rack's `sampler`) resolved to one socket
//! address, and kept resolved.
//!
//! An IP address needs no lookup. A name is looked up by a task of its own,
//! off the record path: when the agent starts sending, again after a send to
//! it fails (at most once per [`Refresh::min_interval`]) and every
//! [`Refresh::period`], so a sampler that moves behind its name (a
//! Kubernetes Service recreated at another ClusterIP) is followed within a
//! period. Each lookup is bounded by [`Refresh::timeout`]. A failed lookup
//! is counted and keeps the address the name had; the task logs when the
//! address or the reason it cannot be had changes, not at every lookup. The
//! sender only reads the latest address ([`SamplerAddress::current`], a
//! `watch` borrow) and pokes the task after a failed send
//! ([`SamplerAddress::send_failed`]): neither waits for a lookup.
//!
//! Lookups go through a [`Lookup`] function: [`system_lookup`] in the agent
//! (`tokio::net::lookup_host`, as the sampler resolves its collectors), a
//! stand-in in tests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use configs::HostPort;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// What a [`Lookup`] returns: every address of a `host:port`, in the
/// resolver's order of preference.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks up the addresses of a `host:port`.
pub type Lookup = Arc<dyn Fn(&str) -> LookupFuture + Send + Sync>;

/// The system resolver (getaddrinfo on tokio's blocking pool: /etc/hosts,
/// DNS with the search domains of /etc/resolv.conf).
pub fn system_lookup() -> Lookup {
    Arc::new(|host_port: &str| {
        let host_port = host_port.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.collect()) })
    })
}

/// When a name is looked up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// Looked up this often even when every send succeeds: UDP does not
    /// say that nobody listens at the old address any more.
    pub period: Duration,
    /// A lookup with no answer within this long has failed.
    pub timeout: Duration,
    /// Lookups asked for by failed sends come at most this often.
    pub min_interval: Duration,
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh {
            period: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            min_interval: Duration::from_secs(1),
        }
    }
}

/// One sampler's address, as configured and as last resolved. Clones share
/// the lookup task, which ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SamplerAddress {
    configured: HostPort,
    current: watch::Receiver<Option<SocketAddr>>,
    /// Wakes the lookup task early; `None` for an IP address.
    relookup: Option<Arc<Notify>>,
    lookup_failures: Arc<AtomicU64>,
}

impl SamplerAddress {
    /// The address `configured` names: at once for an IP address;
    /// otherwise looked up by a task spawned on the current tokio runtime,
    /// with `lookup`, as `refresh` says.
    pub fn new(configured: HostPort, lookup: Lookup, refresh: Refresh) -> SamplerAddress {
        let lookup_failures = Arc::new(AtomicU64::new(0));
        if let Some(addr) = configured.socket_addr() {
            let (_, current) = watch::channel(Some(addr));
            return SamplerAddress {
                configured,
                current,
                relookup: None,
                lookup_failures,
            };
        }
        let (publish, current) = watch::channel(None);
        let relookup = Arc::new(Notify::new());
        tokio::spawn(keep_resolved(
            configured.clone(),
            lookup,
            refresh,
            publish,
            relookup.clone(),
            lookup_failures.clone(),
        ));
        SamplerAddress {
            configured,
            current,
            relookup: Some(relookup),
            lookup_failures,
        }
    }

    /// As configured.
    pub fn configured(&self) -> &HostPort {
        &self.configured
    }

    /// The address to send to now; `None` until a name first resolves.
    pub fn current(&self) -> Option<SocketAddr> {
        *self.current.borrow()
    }

    /// A send to [`SamplerAddress::current`] failed (or there was none):
    /// asks for a lookup soon, without waiting for it.
    pub fn send_failed(&self) {
        if let Some(relookup) = &self.relookup {
            relookup.notify_one();
        }
    }

    /// Lookups that failed (no answer in time, an error, no address).
    pub fn lookup_failures(&self) -> u64 {
        self.lookup_failures.load(Ordering::Relaxed)
    }

    /// The address once resolved, waiting at most `within`.
    pub async fn resolved(&self, within: Duration) -> Option<SocketAddr> {
        let mut current = self.current.clone();
        match tokio::time::timeout(within, current.wait_for(Option::is_some)).await {
            Ok(Ok(addr)) => *addr,
            _ => self.current(),
        }
    }
}

/// The address to use from a lookup's `addrs`: the one in use if the name
/// still has it (no churn between equally good addresses), else the
/// resolver's first.
fn choose(in_use: Option<SocketAddr>, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    in_use
        .filter(|addr| addrs.contains(addr))
        .or_else(|| addrs.first().copied())
}

/// The lookup task: looks `configured` up, publishes the address, waits
/// for the period or a failed send, again, until every receiver is gone.
async fn keep_resolved(
    configured: HostPort,
    lookup: Lookup,
    refresh: Refresh,
    publish: watch::Sender<Option<SocketAddr>>,
    relookup: Arc<Notify>,
    failures: Arc<AtomicU64>,
) {
    // What was last logged: the address, or why there is none.
    let mut logged: Option<Result<SocketAddr, String>> = None;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(refresh.timeout, lookup(configured.as_str())).await {
            Ok(Ok(addrs)) => choose(*publish.borrow(), &addrs).ok_or_else(|| "the name has no address".to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", refresh.timeout)),
        };
        match &outcome {
            Ok(addr) => {
                publish.send_if_modified(|current| current.replace(*addr) != Some(*addr));
            }
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if logged.as_ref() != Some(&outcome) {
            match &outcome {
                Ok(addr) => info!(message = "sampler address resolved", sampler = %configured, address = %addr),
                Err(error) => {
                    let keeping = publish.borrow().map_or("none".to_string(), |a| a.to_string());
                    warn!(
                        message = "cannot resolve the sampler's name; looking it up again after a failed send and every period",
                        sampler = %configured,
                        %error,
                        sending_to = %keeping,
                        period = ?refresh.period
                    );
                }
            }
            logged = Some(outcome);
        }
        tokio::select! {
            () = publish.closed() => return,
            () = tokio::time::sleep(refresh.period) => {}
            () = relookup.notified() => {
                tokio::select! {
                    () = publish.closed() => return,
                    () = tokio::time::sleep_until(started + refresh.min_interval) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A lookup that answers from a script, one answer per call (the last
    /// one again once the script runs out), and counts its calls.
    fn scripted(answers: Vec<io::Result<Vec<SocketAddr>>>) -> (Lookup, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let lookup: Lookup = Arc::new(move |host_port: &str| {
            assert_eq!(host_port, "sampler.test:5001");
            counted.fetch_add(1, Ordering::Relaxed);
            let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner());
            let answer = if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().map(|a| match a {
                    Ok(addrs) => Ok(addrs.clone()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                })
            };
            let answer = answer.unwrap_or_else(|| Ok(Vec::new()));
            Box::pin(async move { answer })
        });
        (lookup, calls)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn name() -> HostPort {
        "sampler.test:5001".parse().expect("a host:port")
    }

    /// A refresh that happens only when asked for.
    const ON_FAILURE_ONLY: Refresh = Refresh {
        period: Duration::from_secs(3_600),
        timeout: Duration::from_secs(1),
        min_interval: Duration::ZERO,
    };

    /// Waits (at most 5 s) until `check` holds.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "not within 5 s: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_ip_address_is_used_as_it_is() {
        let (lookup, calls) = scripted(vec![]);
        let sampler = SamplerAddress::new("127.0.0.1:5001".parse().expect("host:port"), lookup, Refresh::default());
        assert_eq!(sampler.current(), Some(addr(5001)));
        sampler.send_failed();
        assert_eq!(sampler.resolved(Duration::ZERO).await, Some(addr(5001)));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    /// A failed send makes the task look the name up again; until then the
    /// address is not looked up (the period is an hour).
    #[tokio::test]
    async fn a_failed_send_looks_the_name_up_again() {
        let (lookup, calls) = scripted(vec![Ok(vec![addr(1)]), Ok(vec![addr(2), addr(3)])]);
        let sampler = SamplerAddress::new(name(), lookup, ON_FAILURE_ONLY);
        assert_eq!(sampler.resolved(Duration::from_secs(5)).await, Some(addr(1)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 1, "looked up again unasked");
        sampler.send_failed();
        eventually("the new address", || sampler.current() == Some(addr(2))).await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // The name still has the address in use: it stays, though listed second.
        let (lookup, _) = scripted(vec![Ok(vec![addr(2)]), Ok(vec![addr(3), addr(2)])]);
        let sampler = SamplerAddress::new(name(), lookup, ON_FAILURE_ONLY);
        assert_eq!(sampler.resolved(Duration::from_secs(5)).await, Some(addr(2)));
        sampler.send_failed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sampler.current(), Some(addr(2)));
    }

    /// A lookup that fails, finds no address or does not answer is counted
    /// and keeps the address the name had; a later lookup recovers.
    #[tokio::test]
    async fn failed_lookups_are_counted_and_keep_the_last_address() {
        let refresh = Refresh {
            timeout: Duration::from_millis(50),
            ..ON_FAILURE_ONLY
        };
        let (lookup, _) = scripted(vec![
            Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            Ok(vec![addr(1)]),
            Ok(vec![]),
            Err(io::Error::other("resolver down")),
            Ok(vec![addr(4)]),
        ]);
        let sampler = SamplerAddress::new(name(), lookup, refresh);
        eventually("the first failure", || sampler.lookup_failures() == 1).await;
        assert_eq!(sampler.current(), None);
        sampler.send_failed();
        eventually("the address", || sampler.current() == Some(addr(1))).await;
        for failures in [2, 3] {
            sampler.send_failed();
            eventually("another failure", || sampler.lookup_failures() == failures).await;
            assert_eq!(sampler.current(), Some(addr(1)), "the address is kept");
        }
        sampler.send_failed();
        eventually("the new address", || sampler.current() == Some(addr(4))).await;
        assert_eq!(sampler.lookup_failures(), 3);

        // A resolver that never answers costs one timeout per lookup.
        let hanging: Lookup = Arc::new(|_: &str| Box::pin(std::future::pending()));
        let sampler = SamplerAddress::new(name(), hanging, refresh);
        assert_eq!(sampler.resolved(Duration::from_millis(10)).await, None);
        eventually("a timed-out lookup", || sampler.lookup_failures() == 1).await;
    }

    /// Every period the name is looked up again, so a moved sampler is
    /// found without any send failing.
    #[tokio::test]
    async fn the_name_is_looked_up_again_every_period() {
        let refresh = Refresh {
            period: Duration::from_millis(20),
            ..ON_FAILURE_ONLY
        };
        let (lookup, calls) = scripted(vec![Ok(vec![addr(1)]), Ok(vec![addr(1)]), Ok(vec![addr(2)])]);
        let sampler = SamplerAddress::new(name(), lookup, refresh);
        eventually("the moved address", || sampler.current() == Some(addr(2))).await;
        assert!(calls.load(Ordering::Relaxed) >= 3);
    }

    /// Failed sends ask for lookups at most once per `min_interval`, however
    /// many there are.
    #[tokio::test]
    async fn failed_sends_do_not_flood_the_resolver() {
        let refresh = Refresh {
            min_interval: Duration::from_secs(3_600),
            ..ON_FAILURE_ONLY
        };
        let (lookup, calls) = scripted(vec![Ok(vec![addr(1)])]);
        let sampler = SamplerAddress::new(name(), lookup, refresh);
        sampler.resolved(Duration::from_secs(5)).await;
        for _ in 0..1_000 {
            sampler.send_failed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    /// The task ends with the last clone of the address.
    #[tokio::test]
    async fn the_lookup_task_ends_with_the_address() {
        let refresh = Refresh {
            period: Duration::from_millis(5),
            ..ON_FAILURE_ONLY
        };
        let (lookup, calls) = scripted(vec![Ok(vec![addr(1)])]);
        let sampler = SamplerAddress::new(name(), lookup, refresh);
        let clone = sampler.clone();
        drop(sampler);
        clone.resolved(Duration::from_secs(5)).await;
        drop(clone);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let after = calls.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::Relaxed), after, "still looking up");
    }
}
