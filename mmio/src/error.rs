//! Error and fault-attribution types of the register file.

use core::fmt;

/// Whose fault an error is: the workspace's one classification (`migstream::Fault`).
pub use migstream::Fault;

/// Errors of the virtual MMIO register file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MmioError {
    /// Guest access outside the MMIO window (`offset + size > mmio_size`).
    OutOfRange {
        /// Byte offset of the access.
        offset: u32,
    },
    /// Guest access not naturally aligned to a register that does not allow it.
    Misaligned {
        /// Byte offset of the access.
        offset: u32,
        /// Access size in bytes.
        size: u8,
    },
    /// Access size is not 1, 2, 4 or 8 bytes.
    BadSize,
    /// The caller's vreg storage does not have exactly [`MMIO_DWORDS`](crate::MMIO_DWORDS)
    /// dwords for this platform.
    StorageSize,
    /// The caller's output buffer is too small.
    Capacity,
    /// The sparse payload is malformed (truncated, zero-length run, overflow, runs out of
    /// order or overlapping, unaligned offset) at this byte position.
    Malformed {
        /// Byte position inside the payload where the problem was found.
        at: usize,
    },
    /// The payload names an offset that is not a register of the platform table.
    UnknownRegister {
        /// The offending register offset.
        offset: u32,
    },
    /// The payload names a register whose save class is not `Migrate`.
    NotMigratable {
        /// The offending register offset.
        offset: u32,
    },
    /// The payload value changes bits the guest cannot change (read-only bits differ from
    /// the register's reset value).
    ReadOnlyBits {
        /// The offending register offset.
        offset: u32,
    },
}

impl MmioError {
    /// Whose fault the error is.
    #[must_use]
    pub const fn fault(&self) -> Fault {
        match self {
            Self::OutOfRange { .. } | Self::Misaligned { .. } | Self::BadSize => Fault::Guest,
            Self::StorageSize | Self::Capacity => Fault::Local,
            Self::Malformed { .. }
            | Self::UnknownRegister { .. }
            | Self::NotMigratable { .. }
            | Self::ReadOnlyBits { .. } => Fault::Stream,
        }
    }
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { offset } => write!(f, "MMIO access at {offset:#x} out of range"),
            Self::Misaligned { offset, size } => {
                write!(f, "misaligned {size}-byte MMIO access at {offset:#x}")
            }
            Self::BadSize => f.write_str("MMIO access size is not 1, 2, 4 or 8"),
            Self::StorageSize => f.write_str("vreg storage has the wrong number of dwords"),
            Self::Capacity => f.write_str("output buffer too small"),
            Self::Malformed { at } => write!(f, "malformed register payload at byte {at}"),
            Self::UnknownRegister { offset } => {
                write!(f, "payload names unknown register {offset:#x}")
            }
            Self::NotMigratable { offset } => {
                write!(f, "payload names non-migratable register {offset:#x}")
            }
            Self::ReadOnlyBits { offset } => {
                write!(f, "payload changes read-only bits of register {offset:#x}")
            }
        }
    }
}

impl core::error::Error for MmioError {}
