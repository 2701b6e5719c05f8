//! Context descriptors and context-status-buffer entries (bit layouts).

use bitfield_struct::bitfield;

use crate::error::EngineError;

/// Addressing mode of a context (descriptor bits 4:3). An open enum: every 2-bit value is
/// representable, the named constants are the ones the hardware defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AddressingMode(u8);

impl AddressingMode {
    /// Advanced context (SVM); not supported by GVT.
    pub const ADVANCED: Self = Self(0);
    /// Legacy 32-bit: 3-level PPGTT.
    pub const LEGACY_32B: Self = Self(1);
    /// Advanced 64-bit with A/D bits; not supported by GVT.
    pub const ADVANCED_AD: Self = Self(2);
    /// Legacy 64-bit: 4-level PPGTT.
    pub const LEGACY_64B: Self = Self(3);

    /// From the 2-bit field (upper bits ignored).
    #[must_use]
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & 3)
    }

    /// The 2-bit field value.
    #[must_use]
    pub const fn into_bits(self) -> u8 {
        self.0
    }

    /// PPGTT levels for the supported (legacy) modes, `None` otherwise.
    #[must_use]
    pub const fn ppgtt_levels(self) -> Option<u8> {
        match self.0 {
            1 => Some(3),
            3 => Some(4),
            _ => None,
        }
    }
}

/// 64-bit execlist context descriptor, as written through ELSP.
#[bitfield(u64, defmt = cfg(feature = "defmt"))]
#[derive(PartialEq, Eq, Hash)]
pub struct ContextDescriptor {
    /// Bit 0: the element is valid.
    pub valid: bool,
    /// Bit 1: force page-directory restore.
    pub force_pd_restore: bool,
    /// Bit 2: force context restore.
    pub force_restore: bool,
    /// Bits 4:3: addressing mode.
    #[bits(2)]
    pub addressing_mode: AddressingMode,
    /// Bit 5: LLC coherent.
    pub llc: bool,
    /// Bits 7:6: fault handling mode.
    #[bits(2)]
    pub fault: u8,
    /// Bit 8: privilege (PPGTT) bit.
    pub privilege: bool,
    #[bits(3)]
    __: u8,
    /// Bits 31:12: GGTT page number of the logical ring context (LRCA).
    #[bits(20)]
    pub lrca: u32,
    /// Bits 63:32: context id.
    pub context_id: u32,
}

impl ContextDescriptor {
    /// From the two dwords written through ELSP.
    #[must_use]
    pub const fn from_dwords(lo: u32, hi: u32) -> Self {
        Self::from_bits(((hi as u64) << 32) | lo as u64)
    }

    /// GGTT byte address of the logical ring context (`lrca << 12`).
    #[must_use]
    pub const fn lrca_address(&self) -> u32 {
        self.lrca() << 12
    }
}

/// Checks a 2-element submission the way GVT does: element 0 must be valid, and every
/// valid element must have the privilege (PPGTT) bit and a legacy addressing mode.
pub fn check_submission(elements: &[ContextDescriptor; 2]) -> Result<(), EngineError> {
    let [e0, _] = elements;
    if !e0.valid() {
        return Err(EngineError::InvalidDescriptor);
    }
    for e in elements.iter().filter(|e| e.valid()) {
        if !e.privilege() || e.addressing_mode().ppgtt_levels().is_none() {
            return Err(EngineError::InvalidDescriptor);
        }
    }
    Ok(())
}

/// One 8-byte context status buffer entry.
#[bitfield(u64, defmt = cfg(feature = "defmt"))]
#[derive(PartialEq, Eq, Hash)]
pub struct CsbEntry {
    /// Bit 0: idle to active.
    pub idle_to_active: bool,
    /// Bit 1: preempted.
    pub preempted: bool,
    /// Bit 2: element switch.
    pub element_switch: bool,
    /// Bit 3: active to idle.
    pub active_to_idle: bool,
    /// Bit 4: context complete.
    pub complete: bool,
    /// Bit 5: wait on sync flip.
    pub wait_on_sync_flip: bool,
    /// Bit 6: wait on vblank.
    pub wait_on_vblank: bool,
    /// Bit 7: wait on semaphore.
    pub wait_on_semaphore: bool,
    /// Bit 8: wait on scanline.
    pub wait_on_scanline: bool,
    #[bits(2)]
    __: u8,
    /// Bit 11: semaphore wait mode.
    pub semaphore_wait_mode: bool,
    /// Bits 14:12: display plane.
    #[bits(3)]
    pub display_plane: u8,
    /// Bit 15: lite restore.
    pub lite_restore: bool,
    #[bits(16)]
    __: u16,
    /// Bits 63:32: context id.
    pub context_id: u32,
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
    fn descriptor_bit_values() {
        let d = ContextDescriptor::new()
            .with_valid(true)
            .with_addressing_mode(AddressingMode::LEGACY_64B)
            .with_privilege(true)
            .with_lrca(0x12345)
            .with_context_id(0xCAFE);
        assert_eq!(d.into_bits(), 0x0000_CAFE_1234_5119);
        assert_eq!(d.lrca_address(), 0x1234_5000);
        assert_eq!(ContextDescriptor::from_dwords(0x1234_5119, 0xCAFE), d);
        let all = ContextDescriptor::from_bits(u64::MAX);
        assert!(all.valid() && all.force_pd_restore() && all.force_restore() && all.llc());
        assert_eq!(all.fault(), 3);
        assert_eq!(all.lrca(), 0xF_FFFF);
        assert_eq!(
            ContextDescriptor::new()
                .with_force_restore(true)
                .into_bits(),
            4
        );
        assert_eq!(ContextDescriptor::new().with_llc(true).into_bits(), 0x20);
        assert_eq!(ContextDescriptor::new().with_fault(2).into_bits(), 0x80);
        assert_eq!(AddressingMode::LEGACY_32B.ppgtt_levels(), Some(3));
        assert_eq!(AddressingMode::ADVANCED.ppgtt_levels(), None);
    }

    #[test]
    fn submission_checks() {
        let good = ContextDescriptor::from_bits(0x119);
        let none = ContextDescriptor::new();
        assert_eq!(check_submission(&[good, none]), Ok(()));
        assert_eq!(check_submission(&[good, good]), Ok(()));
        assert_eq!(
            check_submission(&[none, good]),
            Err(EngineError::InvalidDescriptor)
        );
        let ggtt = good.with_privilege(false);
        assert_eq!(
            check_submission(&[good, ggtt]),
            Err(EngineError::InvalidDescriptor)
        );
        let adv = good.with_addressing_mode(AddressingMode::ADVANCED);
        assert_eq!(
            check_submission(&[adv, none]),
            Err(EngineError::InvalidDescriptor)
        );
    }

    #[test]
    fn csb_entry_bit_values() {
        let e = CsbEntry::new()
            .with_idle_to_active(true)
            .with_complete(true)
            .with_display_plane(5)
            .with_lite_restore(true)
            .with_context_id(7);
        assert_eq!(e.into_bits(), 0x0000_0007_0000_D011);
        assert_eq!(CsbEntry::new().with_active_to_idle(true).into_bits(), 8);
        assert_eq!(
            CsbEntry::new().with_semaphore_wait_mode(true).into_bits(),
            0x800
        );
        assert_eq!(
            CsbEntry::new().with_wait_on_scanline(true).into_bits(),
            0x100
        );
    }
}
