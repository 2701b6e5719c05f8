//! Typed addresses and frame numbers. Arithmetic is checked only: every operation that can
//! overflow returns `Option`.

/// log2 of the 4 KiB page size used by GTT entries.
pub const PAGE_SHIFT: u32 = 12;
/// The 4 KiB page size used by GTT entries.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset-within-page bits of an address.
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;

macro_rules! addr_type {
    ($(#[$m:meta])* $name:ident, $int:ty) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(transparent)]
        pub struct $name($int);

        impl $name {
            /// Wraps a raw value.
            #[must_use]
            pub const fn new(raw: $int) -> Self {
                Self(raw)
            }

            /// The raw value.
            #[must_use]
            pub const fn get(self) -> $int {
                self.0
            }

            /// `self + rhs`, or `None` on overflow.
            #[must_use]
            pub const fn checked_add(self, rhs: $int) -> Option<Self> {
                match self.0.checked_add(rhs) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - rhs`, or `None` on underflow.
            #[must_use]
            pub const fn checked_sub(self, rhs: $int) -> Option<Self> {
                match self.0.checked_sub(rhs) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// The distance `self - origin`, or `None` if `origin` is above `self`.
            #[must_use]
            pub const fn checked_offset_from(self, origin: Self) -> Option<$int> {
                self.0.checked_sub(origin.0)
            }
        }
    };
}

addr_type!(
    /// A graphics memory address (GMA) in the global GTT address space, in bytes.
    GmAddr,
    u64
);
addr_type!(
    /// The index of one 8-byte GGTT entry; entry `i` maps graphics memory page `i`
    /// (`GmAddr >> 12`).
    GttIndex,
    u32
);
addr_type!(
    /// A guest frame number: a guest-physical address shifted right by 12.
    Gfn,
    u64
);
addr_type!(
    /// A host frame number as seen by the GPU (host physical or IOVA page).
    Hfn,
    u64
);
addr_type!(
    /// A guest-physical address, in bytes.
    Gpa,
    u64
);
addr_type!(
    /// A per-process (PPGTT) graphics virtual address, in bytes.
    Gva,
    u64
);

impl GmAddr {
    /// The GGTT index of the page holding this address, or `None` if it lies beyond the
    /// 2^32-entry index space.
    #[must_use]
    pub fn index(self) -> Option<GttIndex> {
        u32::try_from(self.0 >> PAGE_SHIFT).ok().map(GttIndex)
    }

    /// The byte offset within the 4 KiB page.
    #[must_use]
    pub const fn page_offset(self) -> u64 {
        self.0 & PAGE_MASK
    }

    /// Whether the address is 4 KiB aligned.
    #[must_use]
    pub const fn is_page_aligned(self) -> bool {
        self.page_offset() == 0
    }
}

impl GttIndex {
    /// The graphics memory address of the first byte of the page this entry maps.
    #[must_use]
    pub const fn addr(self) -> GmAddr {
        GmAddr((self.0 as u64) << PAGE_SHIFT)
    }
}

impl Gfn {
    /// The guest-physical address of the frame's first byte, or `None` if it does not fit
    /// 64 bits.
    #[must_use]
    pub const fn gpa(self) -> Option<Gpa> {
        if self.0 >> (64 - PAGE_SHIFT) != 0 {
            None
        } else {
            Some(Gpa(self.0 << PAGE_SHIFT))
        }
    }
}

impl Gpa {
    /// The guest frame holding this address.
    #[must_use]
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    /// The byte offset within the 4 KiB frame.
    #[must_use]
    pub const fn page_offset(self) -> u64 {
        self.0 & PAGE_MASK
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
    fn conversions() {
        assert_eq!(
            GmAddr::new(0x1234_5678).index(),
            Some(GttIndex::new(0x12345))
        );
        assert_eq!(GmAddr::new(0x1234_5678).page_offset(), 0x678);
        assert_eq!(GmAddr::new(1 << 44).index(), None);
        assert_eq!(
            GmAddr::new((1 << 44) - 1).index(),
            Some(GttIndex::new(u32::MAX))
        );
        assert_eq!(GttIndex::new(0x12345).addr(), GmAddr::new(0x1234_5000));
        assert_eq!(GttIndex::new(u32::MAX).addr(), GmAddr::new(0xFFF_FFFF_F000));
        assert_eq!(Gfn::new(0x10).gpa(), Some(Gpa::new(0x10000)));
        assert_eq!(Gfn::new(1 << 52).gpa(), None);
        assert_eq!(
            Gfn::new((1 << 52) - 1).gpa(),
            Some(Gpa::new(0xFFFF_FFFF_FFFF_F000))
        );
        assert_eq!(Gpa::new(0x1_2345_6789).gfn(), Gfn::new(0x12_3456));
        assert_eq!(Gpa::new(0x1_2345_6789).page_offset(), 0x789);
    }

    #[test]
    fn checked_arithmetic() {
        assert_eq!(GttIndex::new(u32::MAX).checked_add(1), None);
        assert_eq!(GttIndex::new(5).checked_add(2), Some(GttIndex::new(7)));
        assert_eq!(Hfn::new(1).checked_sub(2), None);
        assert_eq!(GmAddr::new(10).checked_offset_from(GmAddr::new(4)), Some(6));
        assert_eq!(GmAddr::new(4).checked_offset_from(GmAddr::new(10)), None);
        assert!(GmAddr::new(0x2000).is_page_aligned());
        assert!(!GmAddr::new(0x2001).is_page_aligned());
    }
}
