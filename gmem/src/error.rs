//! The crate's error type.

use core::fmt;

/// Errors returned by this crate. Every variant is a local (caller or configuration) fault:
/// nothing in this crate parses a migration stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum GmemError {
    /// A memory region has zero frames.
    EmptyRegion,
    /// A memory region's end does not fit the guest-physical address space.
    RegionOverflow,
    /// Memory regions are not sorted by start or overlap.
    Unsorted,
    /// More memory regions than [`crate::MAX_REGIONS`].
    TooManyRegions,
    /// Storage does not have the required number of words.
    StorageSize,
    /// A bit index or range lies outside the bitmap.
    OutOfRange,
    /// Two bitmaps that must be the same size are not.
    SizeMismatch,
}

impl fmt::Display for GmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EmptyRegion => "guest memory region is empty",
            Self::RegionOverflow => "guest memory region overflows the address space",
            Self::Unsorted => "guest memory regions unsorted or overlapping",
            Self::TooManyRegions => "too many guest memory regions",
            Self::StorageSize => "bitmap storage has the wrong length",
            Self::OutOfRange => "bit index outside the bitmap",
            Self::SizeMismatch => "bitmaps differ in size",
        })
    }
}

impl core::error::Error for GmemError {}
