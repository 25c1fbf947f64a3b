//! Why bytes were refused, and the drop reasons receivers count them under.

/// A record or batch item field that failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The field holds a value the format does not allow.
    #[error("field `{field}` has invalid value {value}")]
    Invalid {
        /// Name of the field, as in docs/wire-format.md.
        field: &'static str,
        /// The offending value, widened.
        value: u64,
    },
    /// A reserved field is not zero.
    #[error("reserved field `{field}` is not zero")]
    Reserved {
        /// Name of the reserved field.
        field: &'static str,
    },
}

/// Why a datagram, batch or acknowledgement was refused.
///
/// Parsers return the first failure they find. Every variant maps to a
/// [`DropReason`], the label receivers count drops under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the fixed header, or than the header's counts require.
    #[error("truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header (and its counts) require.
        need: usize,
    },
    /// More bytes than the header's counts account for.
    #[error("oversized: {len} bytes, header accounts for {expected}")]
    Oversized {
        /// Bytes received.
        len: usize,
        /// Bytes the header and its counts account for.
        expected: usize,
    },
    /// A batch or acknowledgement does not start with its magic bytes.
    #[error("bad magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
        /// The magic of the expected message.
        expected: [u8; 4],
    },
    /// The version byte names a version this reader does not implement.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The datagram's record kind is not defined in its version.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// A header field, or a field of item `index`, failed validation.
    #[error("{}: {source}", Location(*.index))]
    Field {
        /// Index of the record or item within its section; `None` for a
        /// header field.
        index: Option<usize>,
        /// What was wrong with the field.
        source: FieldError,
    },
    /// A batch would exceed [`MAX_BATCH_BYTES`](crate::MAX_BATCH_BYTES) or one of its
    /// counts would not fit its header field.
    #[error("batch too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// Size the batch has or would have.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

struct Location(Option<usize>);

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(index) => write!(f, "item {index}"),
            None => f.write_str("header"),
        }
    }
}

impl Error {
    /// A field error in the header.
    pub(crate) fn header(source: FieldError) -> Self {
        Error::Field { index: None, source }
    }

    /// A field error in item `index` of a section.
    pub(crate) fn item(index: usize, source: FieldError) -> Self {
        Error::Field {
            index: Some(index),
            source,
        }
    }

    /// The reason a receiver counts this failure under.
    pub fn reason(&self) -> DropReason {
        match self {
            Error::Truncated { .. } => DropReason::Truncated,
            Error::Oversized { .. } => DropReason::Oversized,
            Error::BadMagic { .. } => DropReason::BadMagic,
            Error::UnsupportedVersion(_) => DropReason::UnsupportedVersion,
            Error::UnknownKind(_) => DropReason::UnknownKind,
            Error::Field {
                source: FieldError::Invalid { .. },
                ..
            } => DropReason::InvalidField,
            Error::Field {
                source: FieldError::Reserved { .. },
                ..
            } => DropReason::ReservedNotZero,
            Error::TooLarge { .. } => DropReason::TooLarge,
        }
    }
}

/// The reasons a receiver counts refused input under: a closed set, so each
/// can be a metric label and a stable numeric code (used in
/// [`BatchAck::error_code`](crate::BatchAck)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum DropReason {
    /// See [`Error::Truncated`].
    Truncated = 1,
    /// See [`Error::Oversized`].
    Oversized = 2,
    /// See [`Error::BadMagic`].
    BadMagic = 3,
    /// See [`Error::UnsupportedVersion`].
    UnsupportedVersion = 4,
    /// See [`Error::UnknownKind`].
    UnknownKind = 5,
    /// See [`Error::Field`] with [`FieldError::Invalid`].
    InvalidField = 6,
    /// See [`Error::Field`] with [`FieldError::Reserved`].
    ReservedNotZero = 7,
    /// See [`Error::TooLarge`].
    TooLarge = 8,
}

impl DropReason {
    /// Every reason, in code order.
    pub const ALL: [DropReason; 8] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::BadMagic,
        DropReason::UnsupportedVersion,
        DropReason::UnknownKind,
        DropReason::InvalidField,
        DropReason::ReservedNotZero,
        DropReason::TooLarge,
    ];

    /// The snake_case label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::BadMagic => "bad_magic",
            DropReason::UnsupportedVersion => "unsupported_version",
            DropReason::UnknownKind => "unknown_kind",
            DropReason::InvalidField => "invalid_field",
            DropReason::ReservedNotZero => "reserved_not_zero",
            DropReason::TooLarge => "too_large",
        }
    }

    /// The numeric code carried on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reason with numeric code `code`, if any.
    pub fn from_code(code: u16) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_labels_are_distinct() {
        let mut labels = std::collections::BTreeSet::new();
        for reason in DropReason::ALL {
            assert_eq!(DropReason::from_code(reason.code()), Some(reason));
            assert!(labels.insert(reason.as_str()));
        }
        assert_eq!(DropReason::from_code(0), None);
    }

    #[test]
    fn messages_name_the_item() {
        let err = Error::item(
            3,
            FieldError::Invalid {
                field: "dscp",
                value: 99,
            },
        );
        assert_eq!(err.to_string(), "item 3: field `dscp` has invalid value 99");
        assert_eq!(err.reason(), DropReason::InvalidField);
        let err = Error::header(FieldError::Reserved { field: "reserved" });
        assert_eq!(err.to_string(), "header: reserved field `reserved` is not zero");
    }
}
