//! Mirroring the context status buffer into the guest's hardware status page (HWSP).
//!
//! With HWSP emulation the guest driver reads CSB entries and the write pointer from
//! its status page instead of MMIO. Entry `i` occupies dwords `0x10 + 2i` (low half)
//! and `0x11 + 2i` (high half); the write pointer is one dword at 0x1F (gen8–gen10) or
//! 0x2F (gen11+). These helpers only compute the `(dword, value)` writes: the caller
//! owns the page and its translation.

use crate::desc::CsbEntry;
use crate::elsp::{CSB_ENTRIES, Csb};

/// HWSP dword of CSB entry 0.
pub const HWSP_CSB_DWORD: u32 = 0x10;

/// Where a GPU generation keeps the CSB write pointer in the HWSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HwspLayout {
    /// Gen8 to gen10: write pointer at dword 0x1F.
    Gen8,
    /// Gen11 and later: write pointer at dword 0x2F.
    Gen11,
}

impl HwspLayout {
    /// Dword index of the CSB write pointer.
    #[must_use]
    pub const fn write_ptr_dword(self) -> u32 {
        match self {
            Self::Gen8 => 0x1F,
            Self::Gen11 => 0x2F,
        }
    }
}

/// One dword store into the hardware status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HwspWrite {
    /// Dword index in the page (byte offset = `4 * dword`).
    pub dword: u32,
    /// Value to store (little-endian).
    pub value: u32,
}

impl HwspWrite {
    /// Byte offset in the page.
    #[must_use]
    pub const fn byte_offset(&self) -> usize {
        self.dword as usize * 4
    }
}

/// The writes for one CSB event: entry `index` (low then high dword), then the write
/// pointer. Apply them in this order so the guest never sees the new pointer before the
/// entry. `index` is taken modulo 6.
#[must_use]
pub fn hwsp_csb_event(
    layout: HwspLayout,
    index: u8,
    entry: CsbEntry,
    write_ptr: u8,
) -> [HwspWrite; 3] {
    let at = HWSP_CSB_DWORD + 2 * u32::from(index % 6);
    let bits = entry.into_bits();
    [
        HwspWrite {
            dword: at,
            value: u32::try_from(bits & 0xFFFF_FFFF).unwrap_or(0),
        },
        HwspWrite {
            dword: at + 1,
            value: u32::try_from(bits >> 32).unwrap_or(0),
        },
        HwspWrite {
            dword: layout.write_ptr_dword(),
            value: u32::from(write_ptr),
        },
    ]
}

impl Csb {
    /// The writes that make the HWSP mirror equal to this CSB: all six entries in index
    /// order (low, high), then the write pointer last. Used after restore.
    #[must_use]
    pub fn hwsp_image(&self, layout: HwspLayout) -> [HwspWrite; 2 * CSB_ENTRIES + 1] {
        let mut out = [HwspWrite { dword: 0, value: 0 }; 2 * CSB_ENTRIES + 1];
        let mut i = 0u8;
        for (pair, e) in out.chunks_exact_mut(2).zip(self.entries()) {
            let [lo, hi, _] = hwsp_csb_event(layout, i, *e, 0);
            if let [a, b] = pair {
                *a = lo;
                *b = hi;
            }
            i = i.saturating_add(1);
        }
        if let Some(last) = out.last_mut() {
            *last = HwspWrite {
                dword: layout.write_ptr_dword(),
                value: u32::from(self.write_ptr()),
            };
        }
        out
    }

    /// [`push`](Csb::push) plus the HWSP writes for the event (see [`hwsp_csb_event`]).
    pub fn push_mirrored(&mut self, entry: CsbEntry, layout: HwspLayout) -> [HwspWrite; 3] {
        let (index, wp) = self.push(entry);
        hwsp_csb_event(layout, index, entry, wp)
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

    fn w(dword: u32, value: u32) -> HwspWrite {
        HwspWrite { dword, value }
    }

    #[test]
    fn event_writes_exact_dwords() {
        let e = CsbEntry::from_bits(0x0000_00AB_0000_0011);
        assert_eq!(
            hwsp_csb_event(HwspLayout::Gen8, 0, e, 0),
            [w(0x10, 0x11), w(0x11, 0xAB), w(0x1F, 0)]
        );
        assert_eq!(
            hwsp_csb_event(HwspLayout::Gen11, 5, e, 5),
            [w(0x1A, 0x11), w(0x1B, 0xAB), w(0x2F, 5)]
        );
        assert_eq!(w(0x1F, 0).byte_offset(), 0x7C);
    }

    #[test]
    fn image_and_push_mirrored() {
        let mut c = Csb::new();
        let img = c.hwsp_image(HwspLayout::Gen8);
        assert_eq!(img[12], w(0x1F, 7));
        assert_eq!(img[0], w(0x10, 0));
        let got = c.push_mirrored(CsbEntry::from_bits(0x0000_0002_0000_0001), HwspLayout::Gen8);
        assert_eq!(got, [w(0x10, 1), w(0x11, 2), w(0x1F, 0)]);
        let got = c.push_mirrored(CsbEntry::from_bits(0x0000_0003_0000_0018), HwspLayout::Gen8);
        assert_eq!(got, [w(0x12, 0x18), w(0x13, 3), w(0x1F, 1)]);
        let img = c.hwsp_image(HwspLayout::Gen8);
        assert_eq!(
            &img[..4],
            &[w(0x10, 1), w(0x11, 2), w(0x12, 0x18), w(0x13, 3)]
        );
        assert_eq!(img[11], w(0x1B, 0));
        assert_eq!(img[12], w(0x1F, 1));
    }
}
