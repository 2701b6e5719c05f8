//! GGTT entry format (8 bytes, little-endian in tables and on the wire).
//!
//! | Bits  | gen8 / gen9            | gen12      | MTL                |
//! |-------|------------------------|------------|--------------------|
//! | 0     | present                | present    | present            |
//! | 1     | RW (older i915)        | LM         | LM                 |
//! | 3,4,7 | PWT, PCD, PAT (PPAT)   | reserved   | reserved           |
//! | 45:12 | page frame             | page frame | page frame         |
//! | 53:52 | reserved               | reserved   | PAT index bits 1:0 |
//!
//! Every other bit is reserved; [`GgttEntry::validate`] rejects entries that set one.

use bitfield_struct::bitfield;

use crate::addr::{Gfn, Hfn, PAGE_SHIFT};
use crate::error::GttError;

/// Mask of the address field, bits 45:12.
pub const ADDR_MASK: u64 = 0x0000_3FFF_FFFF_F000;
/// The largest frame number the 34-bit address field can hold.
pub const FRAME_MAX: u64 = ADDR_MASK >> PAGE_SHIFT;

const PRESENT: u64 = 1 << 0;
const BIT1: u64 = 1 << 1;
const PPAT_BITS: u64 = (1 << 3) | (1 << 4) | (1 << 7);
const MTL_PAT_SHIFT: u32 = 52;
const MTL_PAT_BITS: u64 = 0b11 << MTL_PAT_SHIFT;

/// A GPU generation, which selects the GGTT entry format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Generation {
    /// Broadwell class.
    Gen8,
    /// Skylake / Kaby Lake / Coffee Lake class.
    Gen9,
    /// Tiger Lake class (gen12): bit 1 is the local-memory bit.
    Gen12,
    /// Meteor Lake (gen12.7): local-memory bit plus PAT index bits 53:52.
    Mtl,
}

impl Generation {
    /// The entry format of this generation.
    #[must_use]
    pub const fn format(self) -> EntryFormat {
        match self {
            Self::Gen8 | Self::Gen9 => EntryFormat {
                allowed: PRESENT | BIT1 | PPAT_BITS | ADDR_MASK,
                local_memory: false,
                ppat_bits: true,
                mtl_pat: false,
            },
            Self::Gen12 => EntryFormat {
                allowed: PRESENT | BIT1 | ADDR_MASK,
                local_memory: true,
                ppat_bits: false,
                mtl_pat: false,
            },
            Self::Mtl => EntryFormat {
                allowed: PRESENT | BIT1 | ADDR_MASK | MTL_PAT_BITS,
                local_memory: true,
                ppat_bits: false,
                mtl_pat: true,
            },
        }
    }
}

/// Which bits of a GGTT entry a generation defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EntryFormat {
    allowed: u64,
    local_memory: bool,
    ppat_bits: bool,
    mtl_pat: bool,
}

impl EntryFormat {
    /// The bits an entry may set; all others are reserved.
    #[must_use]
    pub const fn allowed_mask(self) -> u64 {
        self.allowed
    }

    /// Whether bit 1 is the local-memory (LM) bit rather than RW.
    #[must_use]
    pub const fn has_local_memory(self) -> bool {
        self.local_memory
    }

    /// Whether bits 3, 4 and 7 form a PPAT index (gen8/gen9).
    #[must_use]
    pub const fn has_ppat_bits(self) -> bool {
        self.ppat_bits
    }

    /// Whether bits 53:52 form a PAT index (MTL).
    #[must_use]
    pub const fn has_mtl_pat(self) -> bool {
        self.mtl_pat
    }
}

/// One GGTT entry, laid out as on gen8/gen9. Generation-specific meanings of bit 1 and bits
/// 53:52 are available through [`GgttEntry::local_memory`] and [`GgttEntry::pat_index`].
///
/// Padding bits are kept as they were written, so [`GgttEntry::from_bits`] followed by
/// [`GgttEntry::into_bits`] is the identity.
#[bitfield(u64, defmt = cfg(feature = "defmt"))]
#[derive(PartialEq, Eq, Hash)]
pub struct GgttEntry {
    /// Bit 0: the entry maps a page.
    pub present: bool,
    /// Bit 1: writable on gen8/gen9 (older i915 encodings); the LM bit on gen12 and later.
    pub rw: bool,
    #[bits(1)]
    __: u8,
    /// Bit 3: PWT, PPAT index bit 0 (gen8/gen9).
    pub pwt: bool,
    /// Bit 4: PCD, PPAT index bit 1 (gen8/gen9).
    pub pcd: bool,
    #[bits(2)]
    __: u8,
    /// Bit 7: PAT, PPAT index bit 2 (gen8/gen9).
    pub pat: bool,
    #[bits(4)]
    __: u8,
    /// Bits 45:12: the page frame number the entry maps.
    #[bits(34)]
    pub addr_frame: u64,
    #[bits(6)]
    __: u8,
    /// Bits 53:52: PAT index on MTL, reserved otherwise.
    #[bits(2)]
    mtl_pat: u8,
    #[bits(10)]
    __: u16,
}

const _: () = assert!(GgttEntry::ADDR_FRAME_OFFSET == 12);
const _: () = assert!(GgttEntry::ADDR_FRAME_BITS == 34);
const _: () = assert!(GgttEntry::MTL_PAT_OFFSET == 52);

impl GgttEntry {
    /// A present entry mapping `frame` with no other bits set.
    ///
    /// # Errors
    /// [`GttError::FrameTooLarge`] if `frame` does not fit the 34-bit address field.
    pub const fn present_frame(frame: Gfn) -> Result<Self, GttError> {
        match Self::new().with_present(true).with_frame(frame) {
            Ok(e) => Ok(e),
            Err(e) => Err(e),
        }
    }

    /// Whether the entry maps a page.
    #[must_use]
    pub const fn is_present(self) -> bool {
        self.present()
    }

    /// The mapped frame, read as a guest frame number (guest view entries).
    #[must_use]
    pub const fn frame(self) -> Gfn {
        Gfn::new(self.addr_frame())
    }

    /// The mapped frame, read as a host frame number (shadow entries).
    #[must_use]
    pub const fn host_frame(self) -> Hfn {
        Hfn::new(self.addr_frame())
    }

    /// The entry with its address field replaced by `frame`; all other bits kept.
    ///
    /// # Errors
    /// [`GttError::FrameTooLarge`] if `frame` does not fit the 34-bit address field.
    pub const fn with_frame(self, frame: Gfn) -> Result<Self, GttError> {
        if frame.get() > FRAME_MAX {
            return Err(GttError::FrameTooLarge);
        }
        Ok(Self::from_bits(
            (self.into_bits() & !ADDR_MASK) | (frame.get() << PAGE_SHIFT),
        ))
    }

    /// The entry with its address field replaced by the host frame `frame`.
    ///
    /// # Errors
    /// [`GttError::FrameTooLarge`] if `frame` does not fit the 34-bit address field.
    pub const fn with_host_frame(self, frame: Hfn) -> Result<Self, GttError> {
        self.with_frame(Gfn::new(frame.get()))
    }

    /// The local-memory bit on generations that have one (`None` on gen8/gen9).
    #[must_use]
    pub const fn local_memory(self, generation: Generation) -> Option<bool> {
        if generation.format().has_local_memory() {
            Some(self.rw())
        } else {
            None
        }
    }

    /// The entry with the local-memory bit set to `lm`, or `None` on gen8/gen9.
    #[must_use]
    pub const fn with_local_memory(self, generation: Generation, lm: bool) -> Option<Self> {
        if generation.format().has_local_memory() {
            Some(self.with_rw(lm))
        } else {
            None
        }
    }

    /// The cache-attribute index the entry selects: `PAT·4 + PCD·2 + PWT` on gen8/gen9, bits
    /// 53:52 on MTL, 0 on gen12.
    #[must_use]
    pub const fn pat_index(self, generation: Generation) -> u8 {
        let f = generation.format();
        if f.has_ppat_bits() {
            ((self.pat() as u8) << 2) | ((self.pcd() as u8) << 1) | (self.pwt() as u8)
        } else if f.has_mtl_pat() {
            self.mtl_pat()
        } else {
            0
        }
    }

    /// The entry with the MTL PAT index set to `index` (0..=3), or `None` if the generation
    /// is not MTL or `index` is too large.
    #[must_use]
    pub const fn with_mtl_pat_index(self, generation: Generation, index: u8) -> Option<Self> {
        if generation.format().has_mtl_pat() && index <= 3 {
            Some(self.with_mtl_pat(index))
        } else {
            None
        }
    }

    /// Checks that the entry sets no bit reserved for `generation`.
    ///
    /// # Errors
    /// [`GttError::ReservedBits`] if it does.
    pub const fn validate(self, generation: Generation) -> Result<(), GttError> {
        if self.into_bits() & !generation.format().allowed_mask() != 0 {
            Err(GttError::ReservedBits)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[test]
    fn bit_exact_vectors() {
        let e = GgttEntry::present_frame(Gfn::new(0x12345)).unwrap();
        assert_eq!(e.into_bits(), 0x1234_5001);
        assert_eq!(e.frame(), Gfn::new(0x12345));
        assert!(e.is_present());
        let e = GgttEntry::from_bits(0x0000_3FFF_FFFF_F09B);
        assert!(e.present() && e.rw() && e.pwt() && e.pcd() && e.pat());
        assert_eq!(e.addr_frame(), FRAME_MAX);
        assert_eq!(e.pat_index(Generation::Gen9), 7);
        assert_eq!(
            GgttEntry::new().with_pcd(true).with_pwt(true).into_bits(),
            0x18
        );
        assert_eq!(
            GgttEntry::present_frame(Gfn::new(FRAME_MAX + 1)),
            Err(GttError::FrameTooLarge)
        );
    }

    #[test]
    fn frame_replacement_keeps_other_bits() {
        let e = GgttEntry::from_bits(0x8000_0000_1234_5083);
        let r = e.with_frame(Gfn::new(0x777)).unwrap();
        assert_eq!(r.into_bits(), 0x8000_0000_0077_7083);
        assert_eq!(
            r.with_host_frame(Hfn::new(1)).unwrap().into_bits(),
            0x8000_0000_0000_1083
        );
        assert_eq!(r.host_frame(), Hfn::new(0x777));
    }

    #[test]
    fn generation_accessors() {
        let e = GgttEntry::from_bits(0x0030_0000_0000_1003);
        assert_eq!(e.local_memory(Generation::Gen9), None);
        assert_eq!(e.local_memory(Generation::Gen12), Some(true));
        assert_eq!(e.pat_index(Generation::Mtl), 3);
        assert_eq!(e.pat_index(Generation::Gen12), 0);
        assert_eq!(e.pat_index(Generation::Gen8), 0);
        let m = GgttEntry::new()
            .with_mtl_pat_index(Generation::Mtl, 2)
            .unwrap();
        assert_eq!(m.into_bits(), 0x0020_0000_0000_0000);
        assert_eq!(
            GgttEntry::new().with_mtl_pat_index(Generation::Gen12, 1),
            None
        );
        assert_eq!(
            GgttEntry::new().with_mtl_pat_index(Generation::Mtl, 4),
            None
        );
        let lm = GgttEntry::new()
            .with_local_memory(Generation::Gen12, true)
            .unwrap();
        assert_eq!(lm.into_bits(), 2);
        assert_eq!(
            GgttEntry::new().with_local_memory(Generation::Gen9, true),
            None
        );
    }

    #[test]
    fn validate_per_generation() {
        let ok9 = GgttEntry::from_bits(0x1234_5000 | 0x9B);
        assert_eq!(ok9.validate(Generation::Gen9), Ok(()));
        assert_eq!(ok9.validate(Generation::Gen8), Ok(()));
        assert_eq!(ok9.validate(Generation::Gen12), Err(GttError::ReservedBits));
        let mtl = GgttEntry::from_bits(0x0030_0000_1234_5003);
        assert_eq!(mtl.validate(Generation::Mtl), Ok(()));
        assert_eq!(mtl.validate(Generation::Gen12), Err(GttError::ReservedBits));
        assert_eq!(mtl.validate(Generation::Gen9), Err(GttError::ReservedBits));
        for bit in [2u32, 5, 6, 8, 11, 46, 51, 54, 62, 63] {
            let e = GgttEntry::from_bits(1 | (1u64 << bit));
            for g in [
                Generation::Gen8,
                Generation::Gen9,
                Generation::Gen12,
                Generation::Mtl,
            ] {
                assert_eq!(e.validate(g), Err(GttError::ReservedBits), "bit {bit}");
            }
        }
    }
}
