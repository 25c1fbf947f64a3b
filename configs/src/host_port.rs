//! `host:port` values: where a daemon sends, as an IP address or a DNS name
//! and a port. A name is kept as written and resolved by the daemon when it
//! sends (and again later: a name may lead elsewhere over time, as a
//! Kubernetes Service's does when the Service is recreated).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a [`HostPort`] must look like, for messages.
pub(crate) const HOST_PORT_FORM: &str = "\"host:port\" with a port from 1 to 65535 and an IPv4 address, an IPv6 \
                                         address in brackets or a DNS name, such as \"sampler1.example:5001\", \
                                         \"198.18.1.254:5001\" or \"[fd00::1:fe]:5001\"";

/// A peer's address as configured: `host:port`, the host an IPv4 address,
/// an IPv6 address in brackets or a DNS name, the port from 1 to 65535.
/// Parsing checks the form only; a name is resolved by whoever sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort(String);

/// Why a text is not a [`HostPort`]: it names the text and the form
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: expected {}", HOST_PORT_FORM)]
pub struct NotHostPort {
    /// The text refused.
    pub text: String,
}

impl HostPort {
    /// The text, as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The socket address, if the host is an IP address: nothing to
    /// resolve.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl FromStr for HostPort {
    type Err = NotHostPort;

    fn from_str(text: &str) -> Result<HostPort, NotHostPort> {
        if is_host_port(text) {
            Ok(HostPort(text.to_owned()))
        } else {
            Err(NotHostPort { text: text.to_owned() })
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> HostPort {
        HostPort(addr.to_string())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    /// A string of the form; anything else is refused with the form
    /// expected, which the configuration's message then names with its key.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HostPort, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| D::Error::invalid_value(Unexpected::Str(&text), &HOST_PORT_FORM))
    }
}

/// Whether `entry` is "host:port" with a non-zero port and an IPv4 address,
/// a bracketed IPv6 address or a DNS name: the forms the daemons resolve.
pub(crate) fn is_host_port(entry: &str) -> bool {
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = entry.rsplit_once(':') else {
        return false;
    };
    let port_ok =
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
    port_ok && is_dns_name(host)
}

/// Whether `host` is a DNS name (RFC 1123 labels; `_` allowed, as resolvers
/// accept it), optionally fully qualified with a final dot.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // An all-numeric last label is a malformed IPv4 address ("198.18.0.300"),
    // not a name, and would otherwise be looked up in DNS.
    let numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    host.split('.').all(label_ok) && !numeric
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    #[test]
    fn addresses_and_names_parse_and_only_addresses_need_no_lookup() {
        let addr: HostPort = "198.18.1.254:5001".parse().unwrap();
        assert_eq!(addr.socket_addr(), Some(SocketAddr::from(([198, 18, 1, 254], 5001))));
        let v6: HostPort = "[fd00::1:fe]:5001".parse().unwrap();
        assert!(v6.socket_addr().is_some_and(|a| a.is_ipv6()));
        let name: HostPort = "flowmesh-sampler-rack1.flowmesh.svc:5001".parse().unwrap();
        assert_eq!(name.socket_addr(), None);
        assert_eq!(name.as_str(), "flowmesh-sampler-rack1.flowmesh.svc:5001");
        assert_eq!(
            HostPort::from(SocketAddr::from(([127, 0, 0, 1], 9))).to_string(),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn other_text_is_refused_naming_it_and_the_form() {
        for bad in [
            "",
            "nowhere",
            "sampler:0",
            "sampler:65536",
            "198.18.1.300:5001",
            "fd00::1:5001",
            "a b:1",
        ] {
            let error = bad.parse::<HostPort>().unwrap_err();
            assert_eq!(error.to_string(), format!("{bad:?}: expected {HOST_PORT_FORM}"));
        }
    }

    #[test]
    fn toml_reads_and_writes_it_as_a_string() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Config {
            sampler: HostPort,
        }
        let config: Config = toml::from_str("sampler = \"localhost:5001\"").unwrap();
        assert_eq!(config.sampler.as_str(), "localhost:5001");
        assert_eq!(toml::to_string(&config).unwrap(), "sampler = \"localhost:5001\"\n");
        let error = toml::from_str::<Config>("sampler = \"localhost\"").unwrap_err();
        assert!(
            error.message().ends_with(&format!("expected {HOST_PORT_FORM}")),
            "{error}"
        );
        let error = toml::from_str::<Config>("sampler = 5001").unwrap_err();
        assert!(error.message().contains("expected a string"), "{error}");
    }
}
