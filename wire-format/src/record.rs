//! The [`Record`] trait shared by the fixed-size record kinds, and the field
//! checks their validation is made of.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, FieldError};
use crate::values::{RecordKind, WireEnum};

/// A fixed-size record kind carried in agent datagrams.
///
/// Implementors are plain byte layouts: any bytes can be viewed as one, and
/// [`Record::validate`] says whether they are a valid one.
pub trait Record: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Sized {
    /// The kind byte datagrams of this record carry.
    const KIND: RecordKind;

    /// Size of one record on the wire.
    const SIZE: usize = size_of::<Self>();

    /// Checks every enumerated field holds a known value, addresses match
    /// their family, ranges hold and reserved bytes are zero.
    fn validate(&self) -> Result<(), FieldError>;
}

/// Fails unless `value` is a defined value of its enum.
#[inline]
pub(crate) fn check_known<T: WireEnum>(value: T, field: &'static str) -> Result<(), FieldError> {
    if value.is_known() {
        Ok(())
    } else {
        Err(FieldError::Invalid {
            field,
            value: value.into().into(),
        })
    }
}

/// Fails unless every byte of a reserved field is zero.
#[inline]
pub(crate) fn check_zero(bytes: &[u8], field: &'static str) -> Result<(), FieldError> {
    if bytes.iter().all(|&b| b == 0) {
        Ok(())
    } else {
        Err(FieldError::Reserved { field })
    }
}

/// Fails if `value` exceeds `max`.
#[inline]
pub(crate) fn check_max(value: u64, max: u64, field: &'static str) -> Result<(), FieldError> {
    if value <= max {
        Ok(())
    } else {
        Err(FieldError::Invalid { field, value })
    }
}

/// Views `bytes` as exactly one fixed-size message `T` and checks its magic
/// and version: the common start of parsing every standalone message.
pub(crate) fn exact_message<T: FromBytes + KnownLayout + Immutable>(
    bytes: &[u8],
    header: impl Fn(&T) -> ([u8; 4], u8),
    magic: [u8; 4],
    version: u8,
) -> Result<&T, Error> {
    let message = T::ref_from_bytes(bytes).map_err(|_| {
        if bytes.len() < size_of::<T>() {
            Error::Truncated {
                len: bytes.len(),
                need: size_of::<T>(),
            }
        } else {
            Error::Oversized {
                len: bytes.len(),
                expected: size_of::<T>(),
            }
        }
    })?;
    let (found, found_version) = header(message);
    if found != magic {
        return Err(Error::BadMagic { found, expected: magic });
    }
    if found_version != version {
        return Err(Error::UnsupportedVersion(found_version));
    }
    Ok(message)
}
