//! Rebasing graphics-address operands of GPU commands (gen8/gen9, 48-bit addresses: the
//! address takes two dwords).
//!
//! The guest builds commands with guest-view graphics addresses; the shadow ring or batch
//! the host submits must carry host addresses. Each helper replaces only the address bits
//! of an operand and keeps every flag bit the command stores beside them.
//!
//! | Command                         | Low dword | Low address mask | Flags kept in low dword | High dword (bits 15:0) | GGTT selected by          |
//! |---------------------------------|-----------|------------------|-------------------------|------------------------|---------------------------|
//! | `MI_STORE_DATA_IMM`             | DW1       | `0xFFFF_FFFC`    | 1:0                     | DW2                    | DW0 bit 22                |
//! | `MI_LOAD_REGISTER_MEM`          | DW2       | `0xFFFF_FFFC`    | 1:0                     | DW3                    | DW0 bit 22                |
//! | `MI_STORE_REGISTER_MEM`         | DW2       | `0xFFFF_FFFC`    | 1:0                     | DW3                    | DW0 bit 22                |
//! | `MI_FLUSH_DW`                   | DW1       | `0xFFFF_FFF8`    | 2:0 (bit 2 = GTT)       | DW2                    | DW1 bit 2                 |
//! | `PIPE_CONTROL`                  | DW2       | `0xFFFF_FFFC`    | 1:0                     | DW3                    | DW1 bit 24                |
//! | `MI_BATCH_BUFFER_START`         | DW1       | `0xFFFF_FFFC`    | 1:0                     | DW2                    | DW0 bit 8 clear           |
//! | `XY_*_BLT` destination          | DW4       | `0xFFFF_FFFF`    | none                    | DW5                    | always (caller decides)   |
//! | `XY_SRC_COPY_BLT` source        | DW8       | `0xFFFF_FFFF`    | none                    | DW9                    | always (caller decides)   |
//!
//! Bits 31:16 of the high dword are kept. Dword numbers count from the command header
//! (DW0). Operands that select the PPGTT are left alone: PPGTT addresses are per-process and
//! need no rebasing.

use crate::addr::GmAddr;
use crate::error::GttError;
use crate::partition::{HostPlacement, Partition};

/// Mask of the address bits in the high dword (address bits 47:32).
pub const HIGH_ADDRESS_MASK: u32 = 0x0000_FFFF;

/// A command operand that carries a graphics address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AddressOperand {
    /// `MI_STORE_DATA_IMM` destination.
    StoreDataImm,
    /// `MI_LOAD_REGISTER_MEM` source.
    LoadRegisterMem,
    /// `MI_STORE_REGISTER_MEM` destination.
    StoreRegisterMem,
    /// `MI_FLUSH_DW` post-sync destination.
    FlushDw,
    /// `PIPE_CONTROL` post-sync destination.
    PipeControl,
    /// `MI_BATCH_BUFFER_START` batch address.
    BatchBufferStart,
    /// `XY_*_BLT` destination base address.
    BlitDestination,
    /// `XY_SRC_COPY_BLT` source base address.
    BlitSource,
}

/// Where an operand's address lives: see the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OperandLayout {
    /// The dword holding address bits 31:0 (under `low_mask`).
    pub low_dword: usize,
    /// The address bits of the low dword; the other bits are flags.
    pub low_mask: u32,
    /// The dword holding address bits 47:32 in its bits 15:0.
    pub high_dword: usize,
    /// The dword and bit that select the address space, and the bit value meaning GGTT;
    /// `None` for blits (always rebased).
    pub ggtt_select: Option<(usize, u32, bool)>,
}

impl AddressOperand {
    /// Every operand kind.
    pub const ALL: [Self; 8] = [
        Self::StoreDataImm,
        Self::LoadRegisterMem,
        Self::StoreRegisterMem,
        Self::FlushDw,
        Self::PipeControl,
        Self::BatchBufferStart,
        Self::BlitDestination,
        Self::BlitSource,
    ];

    /// The operand's layout.
    #[must_use]
    pub const fn layout(self) -> OperandLayout {
        let (low_dword, low_mask, ggtt_select) = match self {
            Self::StoreDataImm => (1, 0xFFFF_FFFC, Some((0, 22, true))),
            Self::LoadRegisterMem | Self::StoreRegisterMem => (2, 0xFFFF_FFFC, Some((0, 22, true))),
            Self::FlushDw => (1, 0xFFFF_FFF8, Some((1, 2, true))),
            Self::PipeControl => (2, 0xFFFF_FFFC, Some((1, 24, true))),
            Self::BatchBufferStart => (1, 0xFFFF_FFFC, Some((0, 8, false))),
            Self::BlitDestination => (4, 0xFFFF_FFFF, None),
            Self::BlitSource => (8, 0xFFFF_FFFF, None),
        };
        OperandLayout {
            low_dword,
            low_mask,
            high_dword: low_dword + 1,
            ggtt_select,
        }
    }

    /// Whether the command in `dwords` addresses this operand through the GGTT.
    ///
    /// # Errors
    /// [`GttError::Truncated`] if `dwords` is too short for the operand.
    pub fn uses_ggtt(self, dwords: &[u32]) -> Result<bool, GttError> {
        let layout = self.layout();
        dwords.get(layout.high_dword).ok_or(GttError::Truncated)?;
        match layout.ggtt_select {
            None => Ok(true),
            Some((dw, bit, value)) => {
                let d = dwords.get(dw).ok_or(GttError::Truncated)?;
                Ok(((d >> bit) & 1 == 1) == value)
            }
        }
    }

    /// The graphics address the operand carries.
    ///
    /// # Errors
    /// [`GttError::Truncated`] if `dwords` is too short for the operand.
    pub fn address(self, dwords: &[u32]) -> Result<GmAddr, GttError> {
        let layout = self.layout();
        let low = *dwords.get(layout.low_dword).ok_or(GttError::Truncated)?;
        let high = *dwords.get(layout.high_dword).ok_or(GttError::Truncated)?;
        Ok(GmAddr::new(
            (u64::from(high & HIGH_ADDRESS_MASK) << 32) | u64::from(low & layout.low_mask),
        ))
    }

    /// Stores `addr` in the operand's address bits, keeping every other bit.
    ///
    /// # Errors
    /// [`GttError::Truncated`] if `dwords` is too short; [`GttError::Misaligned`] if `addr`
    /// sets bits outside the operand's address mask (below it, or above bit 47).
    pub fn set_address(self, dwords: &mut [u32], addr: GmAddr) -> Result<(), GttError> {
        let layout = self.layout();
        let a = addr.get();
        let low_bits = u32::try_from(a & 0xFFFF_FFFF).map_err(|_| GttError::Misaligned)?;
        let high_bits = u32::try_from(a >> 32).map_err(|_| GttError::Misaligned)?;
        if low_bits & !layout.low_mask != 0 || high_bits & !HIGH_ADDRESS_MASK != 0 {
            return Err(GttError::Misaligned);
        }
        if dwords.len() <= layout.high_dword {
            return Err(GttError::Truncated);
        }
        if let Some(low) = dwords.get_mut(layout.low_dword) {
            *low = (*low & !layout.low_mask) | low_bits;
        }
        if let Some(high) = dwords.get_mut(layout.high_dword) {
            *high = (*high & !HIGH_ADDRESS_MASK) | high_bits;
        }
        Ok(())
    }

    /// Rewrites the operand from the guest view to the host placement (g2h) in place.
    /// Returns `false` (and changes nothing) if the command addresses the PPGTT.
    ///
    /// # Errors
    /// [`GttError::Truncated`] if `dwords` is too short; [`GttError::OutOfRange`] if the
    /// address is outside the guest view (a guest error: the command must be rejected);
    /// [`GttError::BadPlacement`] if `placement` does not cover it. On error nothing changes.
    pub fn rebase(
        self,
        dwords: &mut [u32],
        partition: &Partition,
        placement: &HostPlacement,
    ) -> Result<bool, GttError> {
        if !self.uses_ggtt(dwords)? {
            return Ok(false);
        }
        let guest = self.address(dwords)?;
        if !partition.contains(guest) {
            return Err(GttError::OutOfRange);
        }
        let host = partition
            .g2h(placement, guest)
            .ok_or(GttError::BadPlacement)?;
        self.set_address(dwords, host)?;
        Ok(true)
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
    use crate::partition::GmRange;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn setup() -> (Partition, HostPlacement) {
        let p = Partition::new(
            GmRange::new(GmAddr::new(0), 64 * MIB).unwrap(),
            GmRange::new(GmAddr::new(1024 * MIB), 384 * MIB).unwrap(),
        )
        .unwrap();
        // Aperture moves to 128 MiB; hidden to 0x1_2000_0000 (above 4 GiB: high dword used).
        let h = HostPlacement::contiguous(&p, GmAddr::new(128 * MIB), GmAddr::new(0x1_2000_0000))
            .unwrap();
        (p, h)
    }

    #[test]
    fn layouts_pinned() {
        let l = |o: AddressOperand| {
            let x = o.layout();
            (x.low_dword, x.low_mask, x.high_dword, x.ggtt_select)
        };
        use AddressOperand as A;
        assert_eq!(l(A::StoreDataImm), (1, 0xFFFF_FFFC, 2, Some((0, 22, true))));
        assert_eq!(
            l(A::LoadRegisterMem),
            (2, 0xFFFF_FFFC, 3, Some((0, 22, true)))
        );
        assert_eq!(
            l(A::StoreRegisterMem),
            (2, 0xFFFF_FFFC, 3, Some((0, 22, true)))
        );
        assert_eq!(l(A::FlushDw), (1, 0xFFFF_FFF8, 2, Some((1, 2, true))));
        assert_eq!(l(A::PipeControl), (2, 0xFFFF_FFFC, 3, Some((1, 24, true))));
        assert_eq!(
            l(A::BatchBufferStart),
            (1, 0xFFFF_FFFC, 2, Some((0, 8, false)))
        );
        assert_eq!(l(A::BlitDestination), (4, 0xFFFF_FFFF, 5, None));
        assert_eq!(l(A::BlitSource), (8, 0xFFFF_FFFF, 9, None));
    }

    #[test]
    fn store_data_imm_keeps_bits_1_0() {
        let (p, h) = setup();
        // MI_STORE_DATA_IMM | USE_GGTT, length 2 (qword form would be bit 21).
        let mut c = [0x1040_0002u32, 0x0000_1237, 0xABCD_0000, 0xDEAD_BEEF];
        assert!(AddressOperand::StoreDataImm.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(c, [0x1040_0002, 0x0800_1237, 0xABCD_0000, 0xDEAD_BEEF]);
        // Hidden address: host is above 4 GiB, high dword bits 15:0 change, 31:16 kept.
        let mut c = [0x1040_0002u32, 0x4000_5002, 0xABCD_0000, 7];
        assert!(AddressOperand::StoreDataImm.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(c, [0x1040_0002, 0x2000_5002, 0xABCD_0001, 7]);
        // PPGTT (bit 22 clear): untouched.
        let mut c = [0x1000_0002u32, 0x4000_5002, 0, 7];
        assert!(!AddressOperand::StoreDataImm.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(c, [0x1000_0002, 0x4000_5002, 0, 7]);
    }

    #[test]
    fn register_mem_commands() {
        let (p, h) = setup();
        for op in [
            AddressOperand::LoadRegisterMem,
            AddressOperand::StoreRegisterMem,
        ] {
            let mut c = [0x1440_0002u32, 0x0000_2358, 0x0000_0103, 0xFFFF_0000];
            assert!(op.rebase(&mut c, &p, &h).unwrap());
            assert_eq!(c, [0x1440_0002, 0x0000_2358, 0x0800_0103, 0xFFFF_0000]);
        }
    }

    #[test]
    fn flush_dw_keeps_bits_2_0() {
        let (p, h) = setup();
        // DW1 bit 2 = GGTT; bits 1:0 also kept.
        let mut c = [0x1300_4003u32, 0x0001_0007, 0x5555_0000, 0];
        assert!(AddressOperand::FlushDw.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(c, [0x1300_4003, 0x0801_0007, 0x5555_0000, 0]);
        assert_eq!(
            AddressOperand::FlushDw.address(&c).unwrap(),
            GmAddr::new(0x0801_0000)
        );
        // Bit 2 clear: PPGTT, untouched.
        let mut c = [0x1300_4003u32, 0x0001_0003, 0, 0];
        assert!(!AddressOperand::FlushDw.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(c[1], 0x0001_0003);
    }

    #[test]
    fn pipe_control_and_batch_start() {
        let (p, h) = setup();
        let mut c = [0x7A00_0004u32, 0x0100_4000, 0x0000_0043, 0x0000_0000, 1, 2];
        assert!(AddressOperand::PipeControl.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(c, [0x7A00_0004, 0x0100_4000, 0x0800_0043, 0, 1, 2]);
        let mut c = [0x7A00_0004u32, 0x0000_4000, 0x0000_0043, 0, 1, 2];
        assert!(!AddressOperand::PipeControl.rebase(&mut c, &p, &h).unwrap());
        // MI_BATCH_BUFFER_START gen8, bit 8 clear = GGTT.
        let mut c = [0x1880_0001u32, 0x4000_0001, 0x0000_0000];
        assert!(
            AddressOperand::BatchBufferStart
                .rebase(&mut c, &p, &h)
                .unwrap()
        );
        assert_eq!(c, [0x1880_0001, 0x2000_0001, 0x0000_0001]);
        let mut c = [0x1880_0101u32, 0x4000_0001, 0];
        assert!(
            !AddressOperand::BatchBufferStart
                .rebase(&mut c, &p, &h)
                .unwrap()
        );
        assert_eq!(c, [0x1880_0101, 0x4000_0001, 0]);
    }

    #[test]
    fn blits_rewrite_whole_low_dword() {
        let (p, h) = setup();
        let mut c = [
            0x54F0_0008u32,
            0x03CC_1000,
            0,
            0x0010_0010,
            0x0000_0123,
            0x7777_0000,
            0,
            0x1000,
            0x4000_0FFF,
            0x1111_0000,
        ];
        assert!(
            AddressOperand::BlitDestination
                .rebase(&mut c, &p, &h)
                .unwrap()
        );
        assert!(AddressOperand::BlitSource.rebase(&mut c, &p, &h).unwrap());
        assert_eq!(
            c,
            [
                0x54F0_0008,
                0x03CC_1000,
                0,
                0x0010_0010,
                0x0800_0123,
                0x7777_0000,
                0,
                0x1000,
                0x2000_0FFF,
                0x1111_0001
            ]
        );
    }

    #[test]
    fn errors_change_nothing() {
        let (p, h) = setup();
        // Outside the guest view (64 MiB is past the aperture).
        let mut c = [0x1040_0002u32, 0x0400_0000, 0, 0];
        assert_eq!(
            AddressOperand::StoreDataImm.rebase(&mut c, &p, &h),
            Err(GttError::OutOfRange)
        );
        assert_eq!(c, [0x1040_0002, 0x0400_0000, 0, 0]);
        let mut short = [0x1040_0002u32, 0];
        assert_eq!(
            AddressOperand::StoreDataImm.rebase(&mut short, &p, &h),
            Err(GttError::Truncated)
        );
        assert_eq!(
            AddressOperand::FlushDw.set_address(&mut [0; 3], GmAddr::new(4)),
            Err(GttError::Misaligned)
        );
        assert_eq!(
            AddressOperand::BlitSource.set_address(&mut [0; 10], GmAddr::new(1 << 48)),
            Err(GttError::Misaligned)
        );
        assert_eq!(
            AddressOperand::BlitSource.uses_ggtt(&[0; 9]),
            Err(GttError::Truncated)
        );
    }

    proptest::proptest! {
        #[test]
        fn rebase_only_touches_address_bits(
            op in 0usize..8, words in proptest::array::uniform10(any::<u32>()), page in 0u64..(448 * 256), off in 0u64..4096
        ) {
            let (p, h) = setup();
            let op = AddressOperand::ALL[op];
            let layout = op.layout();
            let mut c = words;
            // A guest address inside the view, aligned to the operand's mask.
            let guest = if page < 64 * 256 { page << 12 } else { 1024 * MIB + ((page - 64 * 256) << 12) };
            let guest = GmAddr::new(guest | (off & u64::from(layout.low_mask)));
            op.set_address(&mut c, guest).unwrap();
            let before = c;
            let changed = op.rebase(&mut c, &p, &h).unwrap();
            prop_assert_eq!(changed, op.uses_ggtt(&before).unwrap());
            for (i, (a, b)) in before.iter().zip(c.iter()).enumerate() {
                let allowed = if i == layout.low_dword { layout.low_mask } else if i == layout.high_dword { HIGH_ADDRESS_MASK } else { 0 };
                prop_assert_eq!(a & !allowed, b & !allowed);
            }
            if changed {
                prop_assert_eq!(Some(op.address(&c).unwrap()), p.g2h(&h, guest));
                prop_assert_eq!(p.h2g(&h, op.address(&c).unwrap()), Some(guest));
            } else {
                prop_assert_eq!(before, c);
            }
        }
    }
}
