//! Register descriptors: the per-register attributes that drive trap-and-emulate semantics.

/// Attribute flags of a register (a bit set over `u16`).
///
/// The numbering is this crate's own; it is not GVT's `F_*` numbering (which changed
/// between kernel versions) and it is never put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RegFlags(u16);

impl RegFlags {
    /// No attribute.
    pub const NONE: Self = Self(0);
    /// Masked ("mode") register: the upper 16 bits of a write select which of the lower 16
    /// bits change; the stored upper 16 bits are always 0 and read back as 0.
    pub const MODE_MASK: Self = Self(1 << 0);
    /// Write-1-to-clear: each 1 written clears that bit; 0s leave bits unchanged.
    pub const W1C: Self = Self(1 << 1);
    /// The value holds a graphics memory address in the bits of `gm_mask`.
    pub const GMADR: Self = Self(1 << 2);
    /// The register is also part of the hardware logical ring context image.
    pub const IN_CONTEXT: Self = Self(1 << 3);
    /// Unaligned (and dword-straddling) accesses are allowed.
    pub const UNALIGN: Self = Self(1 << 4);
    /// Write-only port (e.g. ELSP): writes go only to the hook, nothing is stored, reads
    /// return 0.
    pub const WRITE_ONLY: Self = Self(1 << 5);

    /// Raw bits.
    #[must_use]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flag set from raw bits (unknown bits are kept).
    #[must_use]
    pub const fn from_bits(bits: u16) -> Self {
        Self(bits)
    }

    /// Union of two flag sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// True if every flag of `other` is set in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for RegFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

/// How a register's value travels in a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SaveClass {
    /// Guest-visible state: carried in the sparse payload when it differs from reset.
    Migrate,
    /// Recomputed on the target from other state (vGPU type, engine state, interrupts).
    Derived,
    /// Read from hardware on every access; the vreg content is not authoritative.
    FromHardware,
}

/// The typed side effect a register's guest writes raise through
/// [`RegHooks::on_event`](crate::RegHooks::on_event) (see [`RegEvent`](crate::RegEvent)).
///
/// It is a property of the platform table, so a new platform chooses its own hook
/// registers without changes to the register file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EventKind {
    /// An execlist submit port: each written dword is one submission dword.
    Elsp,
    /// An interrupt mask, enable, identity or master register: pending interrupts must be
    /// recomputed.
    Interrupt,
    /// The PVINFO guest-to-host notification port.
    G2vNotify,
    /// One dword of fence register `index` (`hi`: the upper dword).
    Fence {
        /// Fence number.
        index: u8,
        /// True for the upper dword of the 64-bit fence register.
        hi: bool,
    },
    /// The configuration register of display pipe `pipe` (enable is bit 31).
    PipeConf {
        /// Pipe number (0 = A).
        pipe: u8,
    },
}

/// Descriptor of one tracked 32-bit register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RegDesc {
    /// Byte offset in the MMIO BAR (dword aligned).
    pub offset: u32,
    /// Value after reset.
    pub reset: u32,
    /// Bits the guest cannot change (writes keep the old value of these bits).
    pub ro_mask: u32,
    /// Attribute flags.
    pub flags: RegFlags,
    /// For [`RegFlags::GMADR`] registers: the bits that hold the graphics address.
    pub gm_mask: u32,
    /// How the value migrates.
    pub save: SaveClass,
    /// On restore, the write side effects must be re-run (see
    /// [`RegFile::apply_sparse`](crate::RegFile::apply_sparse)).
    pub replay: bool,
    /// The typed hook event guest writes (and replay) raise, if any.
    pub event: Option<EventKind>,
    /// Register name (for diagnostics).
    pub name: &'static str,
}

impl RegDesc {
    /// A plain read/write register: reset 0, no read-only bits, no flags, migrated.
    #[must_use]
    pub const fn new(offset: u32, name: &'static str) -> Self {
        Self {
            offset,
            reset: 0,
            ro_mask: 0,
            flags: RegFlags::NONE,
            gm_mask: 0,
            save: SaveClass::Migrate,
            replay: false,
            event: None,
            name,
        }
    }

    /// Sets the reset value.
    #[must_use]
    pub const fn with_reset(mut self, reset: u32) -> Self {
        self.reset = reset;
        self
    }

    /// Sets the read-only mask.
    #[must_use]
    pub const fn with_ro(mut self, ro_mask: u32) -> Self {
        self.ro_mask = ro_mask;
        self
    }

    /// Adds flags.
    #[must_use]
    pub const fn with_flags(mut self, flags: RegFlags) -> Self {
        self.flags = self.flags.union(flags);
        self
    }

    /// Marks the register as holding a graphics address in the bits of `gm_mask`.
    #[must_use]
    pub const fn with_gmadr(mut self, gm_mask: u32) -> Self {
        self.flags = self.flags.union(RegFlags::GMADR);
        self.gm_mask = gm_mask;
        self
    }

    /// Sets the save class.
    #[must_use]
    pub const fn with_save(mut self, save: SaveClass) -> Self {
        self.save = save;
        self
    }

    /// Marks the register's write side effects for replay on restore.
    #[must_use]
    pub const fn with_replay(mut self) -> Self {
        self.replay = true;
        self
    }

    /// Sets the typed hook event of the register.
    #[must_use]
    pub const fn with_event(mut self, event: EventKind) -> Self {
        self.event = Some(event);
        self
    }

    /// Bits whose stored value the guest can never change: `ro_mask`, plus the upper 16
    /// bits of a [`RegFlags::MODE_MASK`] register (always stored as 0).
    #[must_use]
    pub const fn effective_ro_mask(&self) -> u32 {
        if self.flags.contains(RegFlags::MODE_MASK) {
            self.ro_mask | 0xFFFF_0000
        } else {
            self.ro_mask
        }
    }

    /// True if the register's value is carried in the sparse payload.
    #[must_use]
    pub const fn is_migrated(&self) -> bool {
        matches!(self.save, SaveClass::Migrate) && !self.flags.contains(RegFlags::WRITE_ONLY)
    }

    /// The value stored after a guest writes `data` over the stored value `old`.
    ///
    /// Rules, in order of precedence:
    /// 1. `ro_mask == 0xFFFF_FFFF` (fully read-only): the write is ignored, result `old`.
    /// 2. [`RegFlags::W1C`]: `old & !(data & !ro_mask)`, each written 1 clears a bit.
    /// 3. [`RegFlags::MODE_MASK`]: `mask = (data >> 16) & !ro_mask & 0xFFFF`;
    ///    result `((old & !mask) | (data & mask)) & 0xFFFF`, so the upper half is stored
    ///    as 0 and a write with an empty mask changes nothing.
    /// 4. Otherwise: `(data & !ro_mask) | (old & ro_mask)`.
    ///
    /// [`RegFlags::WRITE_ONLY`] registers are not stored at all; this function still
    /// returns what a write would mean (`data & !ro_mask`), which is what the hook sees.
    #[must_use]
    pub const fn apply_write(&self, old: u32, data: u32) -> u32 {
        let ro = self.ro_mask;
        if ro == u32::MAX {
            old
        } else if self.flags.contains(RegFlags::WRITE_ONLY) {
            data & !ro
        } else if self.flags.contains(RegFlags::W1C) {
            old & !(data & !ro)
        } else if self.flags.contains(RegFlags::MODE_MASK) {
            let mask = (data >> 16) & !ro & 0xFFFF;
            ((old & !mask) | (data & mask)) & 0xFFFF
        } else {
            (data & !ro) | (old & ro)
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
    fn plain_write_keeps_ro_bits() {
        let r = RegDesc::new(0x100, "T").with_ro(0xFF00_0000);
        assert_eq!(r.apply_write(0x1200_0000, 0xFFFF_FFFF), 0x12FF_FFFF);
        assert_eq!(r.apply_write(0xAB00_1234, 0), 0xAB00_0000);
    }

    #[test]
    fn fully_read_only_ignores_write() {
        let r = RegDesc::new(0x100, "T").with_ro(u32::MAX);
        assert_eq!(r.apply_write(0xDEAD_BEEF, 0), 0xDEAD_BEEF);
    }

    #[test]
    fn masked_write_with_and_without_mask_bits() {
        let r = RegDesc::new(0x229C, "MODE").with_flags(RegFlags::MODE_MASK);
        // Enable bits 0 and 3, set both.
        assert_eq!(r.apply_write(0, 0x0009_0009), 0x0009);
        // Mask selects bit 3 only: bit 3 cleared, bit 0 unchanged even though data bit 0 = 0.
        assert_eq!(r.apply_write(0x0009, 0x0008_0000), 0x0001);
        // No mask bits: nothing changes.
        assert_eq!(r.apply_write(0x0001, 0x0000_FFFE), 0x0001);
        // Upper half is never stored.
        assert_eq!(r.apply_write(0xFFFF_0000, 0xFFFF_1234), 0x1234);
    }

    #[test]
    fn masked_write_respects_ro_bits() {
        // CSB pointer shape: read pointer bits 10:8 writable, write pointer 2:0 read-only.
        let r = RegDesc::new(0x23A0, "CSB")
            .with_flags(RegFlags::MODE_MASK)
            .with_ro(0x0000_F8FF);
        assert_eq!(r.apply_write(0x0007, 0xFFFF_0305), 0x0307);
    }

    #[test]
    fn w1c_clears_only_written_ones() {
        let r = RegDesc::new(0x44308, "IIR").with_flags(RegFlags::W1C);
        assert_eq!(r.apply_write(0b1011, 0b0011), 0b1000);
        assert_eq!(r.apply_write(0b1011, 0), 0b1011);
        let r = r.with_ro(0b0001);
        assert_eq!(r.apply_write(0b1011, 0b1111), 0b0001);
    }

    #[test]
    fn effective_ro_mask_covers_mode_upper_half() {
        let r = RegDesc::new(0, "M")
            .with_flags(RegFlags::MODE_MASK)
            .with_ro(0x4);
        assert_eq!(r.effective_ro_mask(), 0xFFFF_0004);
        assert_eq!(RegDesc::new(0, "P").with_ro(0x4).effective_ro_mask(), 0x4);
    }
}
