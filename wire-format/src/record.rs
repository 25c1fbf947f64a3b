//! The [`Record`] trait shared by the fixed-size record kinds, and the field
//! checks their validation is made of.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::FieldError;
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
