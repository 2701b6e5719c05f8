//! The crate's error type and its fault classification.

use core::fmt;

/// Whose fault an error is: decides between "abort the migration" and "fix the caller".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Fault {
    /// Untrusted input (a migration stream or a guest write) is malformed or hostile.
    Input,
    /// The local caller: configuration, sizes, capacity or a missing host mapping.
    Local,
}

/// Errors returned by every fallible operation of this crate.
///
/// Small and `Copy`; [`GttError::fault`] tells whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum GttError {
    /// A GTT index or graphics address lies outside the vGPU's guest view.
    OutOfRange,
    /// An entry sets bits that are reserved for the GPU generation.
    ReservedBits,
    /// A present entry points at a frame outside guest memory.
    FrameOutsideGuest,
    /// The payload ends inside a run header or a run body.
    Truncated,
    /// A run header names an unknown run kind.
    UnknownRunKind,
    /// A run header's reserved bytes are not zero.
    NonZeroReserved,
    /// A run header has a count of zero.
    EmptyRun,
    /// `start + count` overflows, or a linear run's frames overflow the address field.
    CountOverflow,
    /// Runs in one payload are not in ascending storage order or overlap each other.
    RunOrder,
    /// A range base or size is not a multiple of 4 KiB.
    Misaligned,
    /// A range end overflows or lies beyond the 2^44-byte GGTT address space.
    RangeOverflow,
    /// Two ranges that must be disjoint overlap.
    Overlap,
    /// Caller storage does not have exactly the required length.
    StorageSize,
    /// A host placement does not match the partition or has too many extents.
    BadPlacement,
    /// The output buffer is too small for even one run.
    BufferTooSmall,
    /// A frame number does not fit the entry's 34-bit address field.
    FrameTooLarge,
    /// More frame spans than [`crate::frames::MAX_SPANS`] after merging.
    TooManySpans,
}

impl GttError {
    /// Whose fault this error is.
    #[must_use]
    pub const fn fault(self) -> Fault {
        match self {
            Self::OutOfRange
            | Self::ReservedBits
            | Self::FrameOutsideGuest
            | Self::Truncated
            | Self::UnknownRunKind
            | Self::NonZeroReserved
            | Self::EmptyRun
            | Self::CountOverflow
            | Self::RunOrder => Fault::Input,
            Self::Misaligned
            | Self::RangeOverflow
            | Self::Overlap
            | Self::StorageSize
            | Self::BadPlacement
            | Self::BufferTooSmall
            | Self::FrameTooLarge
            | Self::TooManySpans => Fault::Local,
        }
    }
}

impl fmt::Display for GttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::OutOfRange => "GTT index or address outside the vGPU's guest view",
            Self::ReservedBits => "GTT entry sets reserved bits for this generation",
            Self::FrameOutsideGuest => "GTT entry points outside guest memory",
            Self::Truncated => "GTT run payload truncated",
            Self::UnknownRunKind => "unknown GTT run kind",
            Self::NonZeroReserved => "GTT run header reserved bytes not zero",
            Self::EmptyRun => "GTT run with zero entries",
            Self::CountOverflow => "GTT run count overflows",
            Self::RunOrder => "GTT runs out of order or overlapping",
            Self::Misaligned => "graphics memory range not page aligned",
            Self::RangeOverflow => "graphics memory range overflows the GGTT space",
            Self::Overlap => "graphics memory ranges overlap",
            Self::StorageSize => "GGTT storage has the wrong length",
            Self::BadPlacement => "host placement does not match the partition",
            Self::BufferTooSmall => "output buffer too small for one GTT run",
            Self::FrameTooLarge => "frame number does not fit a GTT entry",
            Self::TooManySpans => "too many frame spans",
        };
        f.write_str(s)
    }
}

impl core::error::Error for GttError {}
