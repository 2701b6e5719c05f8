//! Engine identities.

/// A command streamer of a gen8/gen9 GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EngineId {
    /// Render.
    Rcs,
    /// Blitter.
    Bcs,
    /// Video decode 1.
    Vcs,
    /// Video decode 2 (GT3/GT4 parts).
    Vcs2,
    /// Video enhancement.
    Vecs,
}

impl EngineId {
    /// All engines, in [`index`](Self::index) order.
    pub const ALL: [Self; 5] = [Self::Rcs, Self::Bcs, Self::Vcs, Self::Vcs2, Self::Vecs];

    /// MMIO base of the engine's registers.
    #[must_use]
    pub const fn mmio_base(self) -> u32 {
        match self {
            Self::Rcs => 0x02000,
            Self::Bcs => 0x22000,
            Self::Vcs => 0x12000,
            Self::Vcs2 => 0x1C000,
            Self::Vecs => 0x1A000,
        }
    }

    /// Dense index 0..5 (also the id used in the save payload).
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::Rcs => 0,
            Self::Bcs => 1,
            Self::Vcs => 2,
            Self::Vcs2 => 3,
            Self::Vecs => 4,
        }
    }

    /// Inverse of [`index`](Self::index).
    #[must_use]
    pub const fn from_index(i: usize) -> Option<Self> {
        match i {
            0 => Some(Self::Rcs),
            1 => Some(Self::Bcs),
            2 => Some(Self::Vcs),
            3 => Some(Self::Vcs2),
            4 => Some(Self::Vecs),
            _ => None,
        }
    }

    /// Payload id (same as [`index`](Self::index)).
    #[must_use]
    pub const fn wire_id(self) -> u8 {
        match self {
            Self::Rcs => 0,
            Self::Bcs => 1,
            Self::Vcs => 2,
            Self::Vcs2 => 3,
            Self::Vecs => 4,
        }
    }

    /// Absolute MMIO offset of a register at `rel` from the engine base.
    #[must_use]
    pub const fn reg(self, rel: u32) -> u32 {
        self.mmio_base() + rel
    }
}

/// Per-engine register offsets relative to [`EngineId::mmio_base`].
pub mod reg {
    /// Ring tail.
    pub const RING_TAIL: u32 = 0x30;
    /// Ring head.
    pub const RING_HEAD: u32 = 0x34;
    /// Ring start (GGTT address).
    pub const RING_START: u32 = 0x38;
    /// Ring control.
    pub const RING_CTL: u32 = 0x3C;
    /// Hardware status page address.
    pub const HWS_PGA: u32 = 0x80;
    /// ELSP submission port.
    pub const ELSP: u32 = 0x230;
    /// Execlist status (8 bytes).
    pub const EXECLIST_STATUS: u32 = 0x234;
    /// Ring mode (GFX_MODE).
    pub const RING_MODE: u32 = 0x29C;
    /// First CSB entry (6 entries x 8 bytes).
    pub const CSB_BUF: u32 = 0x370;
    /// CSB pointer register.
    pub const CSB_PTR: u32 = 0x3A0;
}

/// A set of engines (which exist on a GPU model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EngineMask(u8);

impl EngineMask {
    /// No engine.
    pub const EMPTY: Self = Self(0);
    /// All five engines.
    pub const ALL: Self = Self(0x1F);
    /// Only the render engine.
    pub const RCS: Self = Self(1);

    /// The set with `id` added.
    #[must_use]
    pub const fn with(self, id: EngineId) -> Self {
        Self(self.0 | (1 << id.wire_id()))
    }

    /// True if `id` is in the set.
    #[must_use]
    pub const fn contains(self, id: EngineId) -> bool {
        self.0 & (1 << id.wire_id()) != 0
    }

    /// Raw bits (bit `index` per engine).
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Number of engines in the set.
    #[must_use]
    pub const fn count(self) -> u32 {
        self.0.count_ones()
    }

    /// The engines of the set in index order.
    pub fn iter(self) -> impl Iterator<Item = EngineId> {
        EngineId::ALL.into_iter().filter(move |e| self.contains(*e))
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
    fn ids_bases_and_masks() {
        for (i, e) in EngineId::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(EngineId::from_index(i), Some(*e));
            assert_eq!(usize::from(e.wire_id()), i);
        }
        assert_eq!(EngineId::from_index(5), None);
        assert_eq!(EngineId::Vcs2.mmio_base(), 0x1C000);
        assert_eq!(EngineId::Vecs.reg(reg::CSB_PTR), 0x1A3A0);
        let m = EngineMask::RCS.with(EngineId::Vecs);
        assert_eq!(m.bits(), 0b1_0001);
        assert_eq!(m.count(), 2);
        let mut it = m.iter();
        assert_eq!(it.next(), Some(EngineId::Rcs));
        assert_eq!(it.next(), Some(EngineId::Vecs));
        assert_eq!(it.next(), None);
    }
}
