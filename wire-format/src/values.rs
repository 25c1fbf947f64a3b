//! The enumerated one-byte fields of the wire layouts.
//!
//! Each enum keeps an `Unknown(u8)` variant so that reading a field never fails
//! (any byte converts); the checked parsers reject `Unknown` values, so code
//! holding a parsed view sees only known ones.

/// A one-byte enumerated wire field.
pub trait WireEnum: Copy + From<u8> + Into<u8> {
    /// Whether this is a value the format defines (not `Unknown`).
    fn is_known(self) -> bool;
}

/// Declares a `u8`-backed enum with an `Unknown(u8)` catch-all and the
/// conversions both ways.
macro_rules! wire_enum {
    (
        $(#[$attr:meta])*
        pub enum $name:ident {
            $( $(#[$vattr:meta])* $variant:ident = $value:expr => $label:literal, )+
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vattr])* $variant, )+
            /// A value this version of the format does not define.
            Unknown(u8),
        }

        impl $name {
            /// Every defined value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The lower-case name used in reports, metrics and the database;
            /// `"unknown"` for an undefined value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                    $name::Unknown(_) => "unknown",
                }
            }
        }

        impl WireEnum for $name {
            #[inline]
            fn is_known(self) -> bool {
                !matches!(self, $name::Unknown(_))
            }
        }

        impl From<u8> for $name {
            #[inline]
            fn from(value: u8) -> Self {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            #[inline]
            fn from(value: $name) -> u8 {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

wire_enum! {
    /// What the records of a datagram are.
    pub enum RecordKind {
        /// [`FlowRecord`](crate::FlowRecord)s.
        Flow = 1 => "flow",
        /// [`ProbeRecord`](crate::ProbeRecord)s.
        Probe = 2 => "probe",
    }
}

wire_enum! {
    /// How the 16-byte address fields of a record are to be read.
    ///
    /// The values are chosen to read well in a hex dump, not to match any
    /// operating system's `AF_*` constants.
    pub enum AddressFamily {
        /// IPv4, stored as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
        Ipv4 = 4 => "ipv4",
        /// IPv6.
        Ipv6 = 6 => "ipv6",
        /// An RDMA global identifier (GID), 16 raw bytes.
        Gid = 27 => "gid",
    }
}

wire_enum! {
    /// Which side opened a TCP flow, as seen from the reporting host.
    pub enum Direction {
        /// The reporting host connected (active open).
        Outbound = 1 => "outbound",
        /// The reporting host accepted (passive open).
        Inbound = 2 => "inbound",
    }
}

wire_enum! {
    /// Why a flow record was emitted.
    pub enum EndReason {
        /// The flow was still open; this is a periodic report with cumulative
        /// counters. Later reports of the same flow supersede it.
        Open = 0 => "open",
        /// Orderly close (FIN handshake).
        Closed = 1 => "closed",
        /// Reset by either side.
        Reset = 2 => "reset",
        /// The kernel gave up on the connection (retransmission or keepalive
        /// timeout).
        Timeout = 3 => "timeout",
    }
}

wire_enum! {
    /// The transport a probe used.
    pub enum Transport {
        /// UDP echo probe.
        Udp = 1 => "udp",
        /// TCP connect probe.
        Tcp = 2 => "tcp",
        /// RDMA unreliable-datagram probe; addresses are GIDs and ports are
        /// queue-pair numbers.
        RdmaUd = 3 => "rdma-ud",
    }
}

wire_enum! {
    /// How a probe ended.
    pub enum ProbeOutcome {
        /// A reply arrived before the timeout.
        Ok = 0 => "ok",
        /// No reply before the timeout: the probe counts as lost.
        Timeout = 1 => "timeout",
        /// The probe could not be sent or the reply reported an error; the
        /// record's `error_code` says which.
        Error = 2 => "error",
    }
}

wire_enum! {
    /// The status in a [`BatchAck`](crate::BatchAck).
    pub enum AckStatus {
        /// The batch was committed to storage by this delivery.
        Stored = 1 => "stored",
        /// A batch with this id was already committed; nothing was written.
        Duplicate = 2 => "duplicate",
        /// The batch failed validation and will never be stored; the sender
        /// must not retry it. `error_code` holds a [`DropReason`](crate::DropReason) code.
        Rejected = 3 => "rejected",
        /// The receiver is overloaded or shutting down; retry later.
        RetryLater = 4 => "retry-later",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for byte in 0..=u8::MAX {
            assert_eq!(u8::from(RecordKind::from(byte)), byte);
            assert_eq!(u8::from(AddressFamily::from(byte)), byte);
            assert_eq!(u8::from(Direction::from(byte)), byte);
            assert_eq!(u8::from(EndReason::from(byte)), byte);
            assert_eq!(u8::from(Transport::from(byte)), byte);
            assert_eq!(u8::from(ProbeOutcome::from(byte)), byte);
            assert_eq!(u8::from(AckStatus::from(byte)), byte);
        }
    }

    #[test]
    fn labels() {
        assert_eq!(Transport::RdmaUd.as_str(), "rdma-ud");
        assert_eq!(EndReason::Unknown(7).as_str(), "unknown");
        assert_eq!(ProbeOutcome::Timeout.as_str(), "timeout");
    }

    #[test]
    fn known_values_are_not_unknown() {
        assert!(EndReason::ALL.iter().all(|v| v.is_known()));
        assert_eq!(EndReason::from(0), EndReason::Open);
        assert_eq!(EndReason::from(9), EndReason::Unknown(9));
        assert!(!EndReason::Unknown(9).is_known());
    }
}
