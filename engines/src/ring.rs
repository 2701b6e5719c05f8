//! Ring buffer registers and their wrap arithmetic.

use mmio::RegFile;

use crate::error::EngineError;
use crate::id::{EngineId, reg};

/// Mask of the head offset field (bits 20:2).
pub const HEAD_OFFSET_MASK: u32 = 0x001F_FFFC;
/// Shift of the head wrap count (bits 31:21).
pub const HEAD_WRAP_SHIFT: u32 = 21;
/// Mask of the tail offset field (bits 20:3).
pub const TAIL_OFFSET_MASK: u32 = 0x001F_FFF8;
/// Bytes kept free between tail and head so that `head == tail` always means empty.
pub const RING_GUARD: u32 = 8;

/// The four ring registers of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RingRegs {
    /// RING_HEAD: offset in bits 20:2, wrap count in bits 31:21.
    pub head: u32,
    /// RING_TAIL: offset in bits 20:3.
    pub tail: u32,
    /// RING_START: GGTT address of the buffer (bits 31:12).
    pub start: u32,
    /// RING_CTL: buffer length in pages minus one in bits 20:12, enable in bit 0.
    pub ctl: u32,
}

impl RingRegs {
    /// Reads the ring registers of `engine` from the vregs.
    #[must_use]
    pub fn load(regs: &RegFile<'_>, engine: EngineId) -> Self {
        Self {
            head: regs.peek(engine.reg(reg::RING_HEAD)),
            tail: regs.peek(engine.reg(reg::RING_TAIL)),
            start: regs.peek(engine.reg(reg::RING_START)),
            ctl: regs.peek(engine.reg(reg::RING_CTL)),
        }
    }

    /// Writes the ring registers of `engine` into the vregs (raw, no hooks).
    pub fn store(&self, regs: &mut RegFile<'_>, engine: EngineId) {
        regs.poke(engine.reg(reg::RING_HEAD), self.head);
        regs.poke(engine.reg(reg::RING_TAIL), self.tail);
        regs.poke(engine.reg(reg::RING_START), self.start);
        regs.poke(engine.reg(reg::RING_CTL), self.ctl);
    }

    /// Head byte offset in the buffer.
    #[must_use]
    pub const fn head_offset(&self) -> u32 {
        self.head & HEAD_OFFSET_MASK
    }

    /// Head wrap count (11 bits).
    #[must_use]
    pub const fn head_wrap(&self) -> u32 {
        self.head >> HEAD_WRAP_SHIFT
    }

    /// Tail byte offset in the buffer.
    #[must_use]
    pub const fn tail_offset(&self) -> u32 {
        self.tail & TAIL_OFFSET_MASK
    }

    /// GGTT address of the buffer.
    #[must_use]
    pub const fn start_address(&self) -> u32 {
        self.start & 0xFFFF_F000
    }

    /// Buffer length in bytes: `(((ctl >> 12) & 0x1FF) + 1) * 4096`.
    #[must_use]
    pub const fn buffer_len(&self) -> u32 {
        (((self.ctl >> 12) & 0x1FF) + 1) * 4096
    }

    /// Ring enabled (CTL bit 0).
    #[must_use]
    pub const fn enabled(&self) -> bool {
        self.ctl & 1 != 0
    }

    fn offsets(&self) -> Result<(u32, u32, u32), EngineError> {
        let len = self.buffer_len();
        let (h, t) = (self.head_offset(), self.tail_offset());
        if h >= len || t >= len {
            return Err(EngineError::RingOffset);
        }
        Ok((h, t, len))
    }

    /// Bytes between head and tail (submitted, not yet consumed), modulo the length.
    pub fn used(&self) -> Result<u32, EngineError> {
        let (h, t, len) = self.offsets()?;
        Ok(if t >= h { t - h } else { len - h + t })
    }

    /// Bytes that can be added at the tail, keeping [`RING_GUARD`] bytes free.
    pub fn space(&self) -> Result<u32, EngineError> {
        let used = self.used()?;
        let len = self.buffer_len();
        Ok(len.saturating_sub(used).saturating_sub(RING_GUARD))
    }

    /// Moves the head forward by `bytes` (a multiple of 4, at most [`used`](Self::used)),
    /// wrapping at the buffer end and incrementing the wrap count (mod 2^11) on wrap.
    /// On error nothing changes.
    pub fn advance_head(&mut self, bytes: u32) -> Result<(), EngineError> {
        if !bytes.is_multiple_of(4) {
            return Err(EngineError::RingOffset);
        }
        let (h, _, len) = self.offsets()?;
        if bytes > self.used()? {
            return Err(EngineError::RingOverrun);
        }
        // h < len <= 2 MiB and bytes < len: no overflow.
        let mut new = h + bytes;
        let mut wrap = self.head_wrap();
        if new >= len {
            new -= len;
            wrap = (wrap + 1) & 0x7FF;
        }
        self.head = (wrap << HEAD_WRAP_SHIFT) | new | (self.head & 3);
        Ok(())
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

    fn ring(head: u32, tail: u32, pages: u32) -> RingRegs {
        RingRegs {
            head,
            tail,
            start: 0x0010_0000,
            ctl: ((pages - 1) << 12) | 1,
        }
    }

    #[test]
    fn fields() {
        let r = ring((5 << 21) | 0x1F_FFFC | 3, 0x1F_FFFF, 512);
        assert_eq!(r.head_offset(), 0x1F_FFFC);
        assert_eq!(r.head_wrap(), 5);
        assert_eq!(r.tail_offset(), 0x1F_FFF8);
        assert_eq!(r.buffer_len(), 0x20_0000);
        assert!(r.enabled());
        assert_eq!(ring(0, 0, 1).buffer_len(), 4096);
        assert_eq!(r.start_address(), 0x0010_0000);
    }

    #[test]
    fn used_and_space_without_and_with_wrap() {
        let r = ring(0x100, 0x300, 1);
        assert_eq!(r.used().unwrap(), 0x200);
        assert_eq!(r.space().unwrap(), 4096 - 0x200 - 8);
        let r = ring(0xF00, 0x100, 1);
        assert_eq!(r.used().unwrap(), 0x200);
        let empty = ring(0x400, 0x400, 1);
        assert_eq!(empty.used().unwrap(), 0);
        assert_eq!(empty.space().unwrap(), 4088);
        assert_eq!(ring(0x1000, 0, 1).used(), Err(EngineError::RingOffset));
        assert_eq!(ring(0, 0x1000, 1).space(), Err(EngineError::RingOffset));
    }

    #[test]
    fn advance_head_wraps_and_counts() {
        let mut r = ring(0xF00, 0x100, 1);
        r.advance_head(0x100).unwrap();
        assert_eq!(r.head_offset(), 0);
        assert_eq!(r.head_wrap(), 1);
        r.advance_head(0x100).unwrap();
        assert_eq!(r.head_offset(), 0x100);
        assert_eq!(r.used().unwrap(), 0);
        assert_eq!(r.advance_head(4), Err(EngineError::RingOverrun));
        // Wrap counter rolls over at 11 bits.
        let mut r = ring((0x7FF << 21) | 0xFF8, 0x8, 1);
        r.advance_head(0x10).unwrap();
        assert_eq!(r.head, 0x8);
        assert_eq!(r.advance_head(2), Err(EngineError::RingOffset));
        let before = r;
        assert!(r.advance_head(0x1000).is_err());
        assert_eq!(r, before);
    }
}
