//! The ELSP submission port and the context status buffer.

use mmio::RegFile;

use crate::desc::{ContextDescriptor, CsbEntry};
use crate::error::EngineError;
use crate::id::{EngineId, reg};

/// The 4-dword ELSP port of one engine with its partial-write state.
///
/// The guest writes element 1 high, element 1 low, element 0 high, element 0 low; dword
/// number `index` lands in `dwords[3 - index]`, so `dwords[0..2]` is element 0 (lo, hi)
/// and `dwords[2..4]` is element 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ElspPort {
    dwords: [u32; 4],
    index: u8,
}

impl ElspPort {
    /// Empty port (index 0).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            dwords: [0; 4],
            index: 0,
        }
    }

    /// Restores a saved port; `Err(BadElspIndex)` unless `index < 4`.
    pub const fn from_parts(dwords: [u32; 4], index: u8) -> Result<Self, EngineError> {
        if index < 4 {
            Ok(Self { dwords, index })
        } else {
            Err(EngineError::BadElspIndex { index })
        }
    }

    /// The stored dwords.
    #[must_use]
    pub const fn dwords(&self) -> [u32; 4] {
        self.dwords
    }

    /// Dwords written so far in the current sequence (0..4).
    #[must_use]
    pub const fn index(&self) -> u8 {
        self.index
    }

    /// One guest dword write. On the 4th write returns `[element0, element1]` and the
    /// index returns to 0; otherwise `None`.
    pub fn write(&mut self, dword: u32) -> Option<[ContextDescriptor; 2]> {
        let slot = 3usize.saturating_sub(usize::from(self.index));
        if let Some(d) = self.dwords.get_mut(slot) {
            *d = dword;
        }
        self.index = self.index.saturating_add(1);
        if self.index < 4 {
            return None;
        }
        self.index = 0;
        let [a, b, c, d] = self.dwords;
        Some([
            ContextDescriptor::from_dwords(a, b),
            ContextDescriptor::from_dwords(c, d),
        ])
    }
}

/// Number of CSB entries on gen8/gen9.
pub const CSB_ENTRIES: usize = 6;
/// CSB pointer value meaning "reset: next entry is 0".
pub const CSB_PTR_RESET: u8 = 7;

/// Context status buffer of one engine: six entries, write pointer, read pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Csb {
    entries: [CsbEntry; CSB_ENTRIES],
    write_ptr: u8,
    read_ptr: u8,
}

impl Default for Csb {
    fn default() -> Self {
        Self::new()
    }
}

const fn ptr_ok(p: u8) -> bool {
    (p as usize) < CSB_ENTRIES || p == CSB_PTR_RESET
}

impl Csb {
    /// After reset: entries 0, write pointer 7 ("reset"), read pointer 0 (as GVT).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            entries: [CsbEntry::new(); CSB_ENTRIES],
            write_ptr: CSB_PTR_RESET,
            read_ptr: 0,
        }
    }

    /// Restores saved state; pointers must be `< 6` or the reset value 7.
    pub const fn from_parts(
        entries: [CsbEntry; CSB_ENTRIES],
        write_ptr: u8,
        read_ptr: u8,
    ) -> Result<Self, EngineError> {
        if !ptr_ok(write_ptr) {
            return Err(EngineError::BadCsbPointer { value: write_ptr });
        }
        if !ptr_ok(read_ptr) {
            return Err(EngineError::BadCsbPointer { value: read_ptr });
        }
        Ok(Self {
            entries,
            write_ptr,
            read_ptr,
        })
    }

    /// The entries.
    #[must_use]
    pub const fn entries(&self) -> &[CsbEntry; CSB_ENTRIES] {
        &self.entries
    }

    /// Write pointer (index of the last written entry, or 7 after reset).
    #[must_use]
    pub const fn write_ptr(&self) -> u8 {
        self.write_ptr
    }

    /// Read pointer (guest-owned).
    #[must_use]
    pub const fn read_ptr(&self) -> u8 {
        self.read_ptr
    }

    /// Index the next [`push`](Self::push) writes: 0 after reset, else `(wp + 1) % 6`.
    #[must_use]
    pub const fn next_index(&self) -> u8 {
        if self.write_ptr == CSB_PTR_RESET {
            0
        } else {
            (self.write_ptr + 1) % 6
        }
    }

    /// Writes `entry` at [`next_index`](Self::next_index) and advances the write pointer;
    /// returns `(index written, new write pointer)` (equal by construction).
    pub fn push(&mut self, entry: CsbEntry) -> (u8, u8) {
        let idx = self.next_index();
        if let Some(e) = self.entries.get_mut(usize::from(idx)) {
            *e = entry;
        }
        self.write_ptr = idx;
        (idx, idx)
    }

    /// Sets the read pointer (guest write of the CSB pointer register).
    pub fn set_read_ptr(&mut self, rp: u8) -> Result<(), EngineError> {
        if !ptr_ok(rp) {
            return Err(EngineError::BadCsbPointer { value: rp });
        }
        self.read_ptr = rp;
        Ok(())
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The CSB pointer register value: read pointer in bits 10:8, write pointer in 2:0.
    #[must_use]
    pub const fn pointer_register(&self) -> u32 {
        ((self.read_ptr as u32) << 8) | self.write_ptr as u32
    }

    /// Mirrors the entries (`base + 0x370 + 8 * i`) and the pointer register
    /// (`base + 0x3A0`) into the vregs (raw, no hooks).
    pub fn mirror(&self, regs: &mut RegFile<'_>, engine: EngineId) {
        let mut off = engine.reg(reg::CSB_BUF);
        for e in &self.entries {
            let [a, b, c, d, e0, e1, e2, e3] = e.into_bits().to_le_bytes();
            regs.poke(off, u32::from_le_bytes([a, b, c, d]));
            regs.poke(off + 4, u32::from_le_bytes([e0, e1, e2, e3]));
            off += 8;
        }
        regs.poke(engine.reg(reg::CSB_PTR), self.pointer_register());
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
    extern crate std;
    use super::*;

    #[test]
    fn elsp_gvt_order() {
        let mut p = ElspPort::new();
        assert_eq!(p.write(0x11), None); // element 1 hi
        assert_eq!(p.index(), 1);
        assert_eq!(p.dwords(), [0, 0, 0, 0x11]);
        assert_eq!(p.write(0x10), None); // element 1 lo
        assert_eq!(p.write(0x01), None); // element 0 hi
        assert_eq!(p.dwords(), [0, 0x01, 0x10, 0x11]);
        let got = p.write(0x1000_0119).unwrap(); // element 0 lo
        assert_eq!(p.index(), 0);
        assert_eq!(got[0].into_bits(), 0x0000_0001_1000_0119);
        assert_eq!(got[1].into_bits(), 0x0000_0011_0000_0010);
        assert_eq!(
            ElspPort::from_parts([0; 4], 4),
            Err(EngineError::BadElspIndex { index: 4 })
        );
    }

    #[test]
    fn csb_pointer_wrap_including_reset() {
        let mut c = Csb::new();
        assert_eq!(c.write_ptr(), 7);
        assert_eq!(c.pointer_register(), 0x0007);
        let e = |id| CsbEntry::new().with_context_id(id);
        assert_eq!(c.push(e(1)), (0, 0));
        for i in 1..6u8 {
            assert_eq!(c.push(e(u32::from(i) + 1)), (i, i));
        }
        assert_eq!(c.push(e(7)), (0, 0)); // wraps after 5
        assert_eq!(c.entries()[0].context_id(), 7);
        assert_eq!(c.entries()[5].context_id(), 6);
        c.set_read_ptr(5).unwrap();
        assert_eq!(c.pointer_register(), 0x0500);
        assert_eq!(
            c.set_read_ptr(6),
            Err(EngineError::BadCsbPointer { value: 6 })
        );
        c.reset();
        assert_eq!(c.push(e(9)), (0, 0));
        assert!(Csb::from_parts([CsbEntry::new(); 6], 7, 7).is_ok());
        assert_eq!(
            Csb::from_parts([CsbEntry::new(); 6], 6, 0),
            Err(EngineError::BadCsbPointer { value: 6 })
        );
    }

    #[test]
    fn csb_mirror_into_vregs() {
        let mut s = std::vec![0u32; mmio::MMIO_DWORDS];
        let mut regs = RegFile::new(&mmio::SKL, &mut s).unwrap();
        let mut c = Csb::new();
        c.push(CsbEntry::new().with_complete(true).with_context_id(0xAB));
        c.push(
            CsbEntry::new()
                .with_idle_to_active(true)
                .with_context_id(0xCD),
        );
        c.mirror(&mut regs, EngineId::Bcs);
        assert_eq!(regs.peek(0x22370), 0x10);
        assert_eq!(regs.peek(0x22374), 0xAB);
        assert_eq!(regs.peek(0x22378), 0x01);
        assert_eq!(regs.peek(0x2237C), 0xCD);
        assert_eq!(regs.peek(0x223A0), 0x0001);
    }
}
