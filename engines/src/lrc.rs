//! The register-state page of a logical ring context (page LRCA + 1).
//!
//! The first 0x34 dwords hold two MI_LOAD_REGISTER_IMM (LRI) blocks of
//! `{register address, value}` pairs at fixed positions (gen8/gen9):
//!
//! ```text
//! dword 0x00        MI_NOOP
//! dword 0x01        LRI header: 14 registers on RCS, 11 elsewhere
//! dword 0x02/0x03   CONTEXT_CONTROL   (base + 0x244)
//! dword 0x04/0x05   RING_HEAD         (base + 0x034)
//! dword 0x06/0x07   RING_TAIL         (base + 0x030)
//! dword 0x08/0x09   RING_START        (base + 0x038)
//! dword 0x0A/0x0B   RING_CTL          (base + 0x03C)
//! dword 0x0C/0x0D   BB head UDW       (base + 0x168)
//! dword 0x0E/0x0F   BB head LDW       (base + 0x140)
//! dword 0x10/0x11   BB state          (base + 0x110)
//! dword 0x12/0x13   2nd BB head UDW   (base + 0x11C)
//! dword 0x14/0x15   2nd BB head LDW   (base + 0x114)
//! dword 0x16/0x17   2nd BB state      (base + 0x118)
//! dword 0x18/0x19   BB per-ctx ptr    (base + 0x1C0)  RCS only
//! dword 0x1A/0x1B   indirect ctx      (base + 0x1C4)  RCS only
//! dword 0x1C/0x1D   indirect ctx off. (base + 0x1C8)  RCS only
//! (MI_NOOP padding up to dword 0x20)
//! dword 0x21        LRI header: 9 registers
//! dword 0x22/0x23   CTX_TIMESTAMP     (base + 0x3A8)
//! dword 0x24..0x33  PDP3 UDW, PDP3 LDW, ..., PDP0 UDW, PDP0 LDW (base + 0x28C down to 0x270)
//! ```
//!
//! The force-posted bit (12) of the LRI headers is accepted either way. It is emitted as the
//! hardware writes the image of this layout (i915's `gen9_rcs_offsets`, `gen8_xcs_offsets`): set
//! in both headers of a render image, clear in both headers of the other engines' images.

use crate::error::EngineError;
use crate::id::EngineId;
use crate::ring::RingRegs;

/// Size of a context page.
pub const LRC_PAGE_SIZE: usize = 4096;

/// Dwords of the page covered by [`LrcState`] (0x00..=0x33).
pub const LRC_STATE_DWORDS: usize = 0x34;

/// Byte offset of the register-state page in a logical ring context: the page after the one the
/// context descriptor's LRCA points to.
pub const LRC_STATE_PAGE: u64 = 4096;

/// Dword indices, in the register-state page, of the values of the first LRI block's ring
/// registers (each value follows its register's address; see the table above), for a device or
/// a driver that reads or writes one of them in place.
pub mod lrc_dword {
    /// CONTEXT_CONTROL value.
    pub const CTX_CTRL: usize = 3;
    /// RING_HEAD value.
    pub const RING_HEAD: usize = 5;
    /// RING_TAIL value.
    pub const RING_TAIL: usize = 7;
    /// RING_START value.
    pub const RING_START: usize = 9;
    /// RING_CTL value.
    pub const RING_CTL: usize = 11;
}

/// Dword index of the first LRI header.
const LRI0: usize = 0x01;
/// Dword index of the second LRI header.
const LRI1: usize = 0x21;
/// MI_LOAD_REGISTER_IMM opcode in bits 31:23.
const MI_LRI: u32 = 0x22 << 23;
/// Force-posted flag of an LRI header.
const LRI_FORCE_POSTED: u32 = 1 << 12;

/// Register offsets (from the engine base) of the first LRI block, in image order.
const BLOCK0: [u32; 14] = [
    0x244, 0x034, 0x030, 0x038, 0x03C, 0x168, 0x140, 0x110, 0x11C, 0x114, 0x118, 0x1C0, 0x1C4,
    0x1C8,
];
/// Register offsets of the second LRI block, in image order.
const BLOCK1: [u32; 9] = [
    0x3A8, 0x28C, 0x288, 0x284, 0x280, 0x27C, 0x278, 0x274, 0x270,
];

/// The LRI header for `n` registers: `MI_LRI | (2n - 1)`, without the force-posted bit.
const fn lri_header(n: u32) -> u32 {
    MI_LRI | (2 * n - 1)
}

/// The LRI header `engine`'s image carries for `n` registers: force-posted on RCS only.
const fn lri_header_for(engine: EngineId, n: u32) -> u32 {
    match engine {
        EngineId::Rcs => lri_header(n) | LRI_FORCE_POSTED,
        _ => lri_header(n),
    }
}

/// Registers in the first block of `engine`'s image (14 on RCS, 11 elsewhere).
const fn block0_len(engine: EngineId) -> usize {
    match engine {
        EngineId::Rcs => 14,
        _ => 11,
    }
}

/// The ring-context registers of a logical ring context image.
///
/// Fields that an engine's image does not carry (the three RCS-only registers on other
/// engines) parse as 0 and are not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LrcState {
    /// CONTEXT_CONTROL (a masked register: the image holds mask and value halves).
    pub ctx_ctrl: u32,
    /// Ring head, tail, start and control.
    pub ring: RingRegs,
    /// Batch buffer head, upper dword.
    pub bb_head_udw: u32,
    /// Batch buffer head, lower dword.
    pub bb_head_ldw: u32,
    /// Batch buffer state.
    pub bb_state: u32,
    /// Second-level batch buffer head, upper dword.
    pub second_bb_head_udw: u32,
    /// Second-level batch buffer head, lower dword.
    pub second_bb_head_ldw: u32,
    /// Second-level batch buffer state.
    pub second_bb_state: u32,
    /// Per-context batch buffer pointer (RCS only).
    pub bb_per_ctx_ptr: u32,
    /// Indirect context pointer (RCS only).
    pub indirect_ctx: u32,
    /// Indirect context offset (RCS only).
    pub indirect_ctx_offset: u32,
    /// Context timestamp.
    pub ctx_timestamp: u32,
    /// Page-directory pointers PDP0..PDP3 as 64-bit values (`pdp[0]` = PDP0; for 4-level
    /// PPGTT `pdp[0]` is the PML4 address).
    pub pdp: [u64; 4],
}

fn get(page: &[u8; LRC_PAGE_SIZE], dword: usize) -> Result<u32, EngineError> {
    let at = dword
        .checked_mul(4)
        .ok_or(EngineError::BadContextImage { dword: 0 })?;
    let bytes = page
        .get(at..)
        .and_then(<[u8]>::first_chunk::<4>)
        .ok_or(EngineError::BadContextImage { dword: 0 })?;
    Ok(u32::from_le_bytes(*bytes))
}

fn put(page: &mut [u8; LRC_PAGE_SIZE], dword: usize, value: u32) {
    if let Some(b) = page
        .get_mut(dword.saturating_mul(4)..)
        .and_then(<[u8]>::first_chunk_mut::<4>)
    {
        *b = value.to_le_bytes();
    }
}

fn bad(dword: usize) -> EngineError {
    EngineError::BadContextImage {
        dword: u16::try_from(dword).unwrap_or(u16::MAX),
    }
}

impl LrcState {
    /// Parses the register-state page, finding the engine from the CONTEXT_CONTROL
    /// address at dword 2 and checking every LRI header and register address against it.
    ///
    /// `Err(BadContextImage { dword })` names the first dword that does not match.
    pub fn parse(page: &[u8; LRC_PAGE_SIZE]) -> Result<Self, EngineError> {
        Self::parse_for(Self::engine_of(page)?, page)
    }

    /// The engine whose image this is, from the CONTEXT_CONTROL address at dword 2.
    pub fn engine_of(page: &[u8; LRC_PAGE_SIZE]) -> Result<EngineId, EngineError> {
        let addr = get(page, 2)?;
        EngineId::ALL
            .into_iter()
            .find(|e| e.reg(0x244) == addr)
            .ok_or_else(|| bad(2))
    }

    /// Parses the register-state page of `engine`'s context (see [`parse`](Self::parse)).
    pub fn parse_for(engine: EngineId, page: &[u8; LRC_PAGE_SIZE]) -> Result<Self, EngineError> {
        let n0 = block0_len(engine);
        let mut v0 = [0u32; 14];
        let mut v1 = [0u32; 9];
        Self::read_block(engine, page, LRI0, BLOCK0.get(..n0).unwrap_or(&[]), &mut v0)?;
        Self::read_block(engine, page, LRI1, &BLOCK1, &mut v1)?;
        let [
            ctx_ctrl,
            head,
            tail,
            start,
            ctl,
            bb_head_udw,
            bb_head_ldw,
            bb_state,
            second_bb_head_udw,
            second_bb_head_ldw,
            second_bb_state,
            bb_per_ctx_ptr,
            indirect_ctx,
            indirect_ctx_offset,
        ] = v0;
        let [ctx_timestamp, p3h, p3l, p2h, p2l, p1h, p1l, p0h, p0l] = v1;
        let q = |hi: u32, lo: u32| (u64::from(hi) << 32) | u64::from(lo);
        Ok(Self {
            ctx_ctrl,
            ring: RingRegs {
                head,
                tail,
                start,
                ctl,
            },
            bb_head_udw,
            bb_head_ldw,
            bb_state,
            second_bb_head_udw,
            second_bb_head_ldw,
            second_bb_state,
            bb_per_ctx_ptr,
            indirect_ctx,
            indirect_ctx_offset,
            ctx_timestamp,
            pdp: [q(p0h, p0l), q(p1h, p1l), q(p2h, p2l), q(p3h, p3l)],
        })
    }

    fn read_block(
        engine: EngineId,
        page: &[u8; LRC_PAGE_SIZE],
        header_at: usize,
        regs: &[u32],
        values: &mut [u32],
    ) -> Result<(), EngineError> {
        let n = u32::try_from(regs.len()).map_err(|_| bad(header_at))?;
        if get(page, header_at)? & !LRI_FORCE_POSTED != lri_header(n) & !LRI_FORCE_POSTED {
            return Err(bad(header_at));
        }
        for (i, (rel, v)) in regs.iter().zip(values.iter_mut()).enumerate() {
            let at = header_at + 1 + 2 * i;
            if get(page, at)? != engine.reg(*rel) {
                return Err(bad(at));
            }
            *v = get(page, at + 1)?;
        }
        Ok(())
    }

    /// Writes dwords 0..=0x33 of `engine`'s register-state page: MI_NOOPs, both LRI
    /// headers, every register address and value. The rest of the page is untouched.
    /// [`parse_for`](Self::parse_for)`(engine, page)` then returns `self` (with the
    /// RCS-only fields 0 on other engines).
    pub fn emit(&self, engine: EngineId, page: &mut [u8; LRC_PAGE_SIZE]) {
        for d in 0..LRC_STATE_DWORDS {
            put(page, d, 0);
        }
        let r = &self.ring;
        let v0 = [
            self.ctx_ctrl,
            r.head,
            r.tail,
            r.start,
            r.ctl,
            self.bb_head_udw,
            self.bb_head_ldw,
            self.bb_state,
            self.second_bb_head_udw,
            self.second_bb_head_ldw,
            self.second_bb_state,
            self.bb_per_ctx_ptr,
            self.indirect_ctx,
            self.indirect_ctx_offset,
        ];
        let hi = |q: u64| u32::try_from(q >> 32).unwrap_or(0);
        let lo = |q: u64| u32::try_from(q & 0xFFFF_FFFF).unwrap_or(0);
        let [p0, p1, p2, p3] = self.pdp;
        let v1 = [
            self.ctx_timestamp,
            hi(p3),
            lo(p3),
            hi(p2),
            lo(p2),
            hi(p1),
            lo(p1),
            hi(p0),
            lo(p0),
        ];
        let n0 = block0_len(engine);
        let blocks: [(usize, &[u32], &[u32]); 2] = [
            (LRI0, BLOCK0.get(..n0).unwrap_or(&[]), &v0),
            (LRI1, &BLOCK1, &v1),
        ];
        for (header_at, regs, values) in blocks {
            let n = u32::try_from(regs.len()).unwrap_or(0);
            put(page, header_at, lri_header_for(engine, n));
            for (i, (rel, v)) in regs.iter().zip(values).enumerate() {
                put(page, header_at + 1 + 2 * i, engine.reg(*rel));
                put(page, header_at + 2 + 2 * i, *v);
            }
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

    fn dw(page: &[u8; LRC_PAGE_SIZE], d: usize) -> u32 {
        u32::from_le_bytes(page[d * 4..d * 4 + 4].try_into().unwrap())
    }

    #[test]
    fn value_dwords_are_where_emit_puts_them() {
        let s = sample();
        for engine in EngineId::ALL {
            let mut page = [0u8; LRC_PAGE_SIZE];
            s.emit(engine, &mut page);
            assert_eq!(dw(&page, lrc_dword::CTX_CTRL), s.ctx_ctrl);
            assert_eq!(dw(&page, lrc_dword::RING_HEAD), s.ring.head);
            assert_eq!(dw(&page, lrc_dword::RING_TAIL), s.ring.tail);
            assert_eq!(dw(&page, lrc_dword::RING_START), s.ring.start);
            assert_eq!(dw(&page, lrc_dword::RING_CTL), s.ring.ctl);
        }
    }

    fn sample() -> LrcState {
        LrcState {
            ctx_ctrl: 0x0009_0009,
            ring: RingRegs {
                head: 0x0020_0040,
                tail: 0x80,
                start: 0x0010_0000,
                ctl: 0x3001,
            },
            bb_head_udw: 1,
            bb_head_ldw: 0x2000,
            bb_state: 0x20,
            second_bb_head_udw: 2,
            second_bb_head_ldw: 0x3000,
            second_bb_state: 3,
            bb_per_ctx_ptr: 0x4001,
            indirect_ctx: 0x5002,
            indirect_ctx_offset: 0x600,
            ctx_timestamp: 0x1234,
            pdp: [
                0x0000_0001_0000_A000,
                0x0000_0002_0000_B000,
                0x0000_0003_0000_C000,
                0x0000_0004_0000_D000,
            ],
        }
    }

    #[test]
    fn rcs_image_positions() {
        let mut page = [0xEEu8; LRC_PAGE_SIZE];
        sample().emit(EngineId::Rcs, &mut page);
        assert_eq!(dw(&page, 0), 0);
        assert_eq!(dw(&page, 1), 0x1100_101B);
        assert_eq!((dw(&page, 2), dw(&page, 3)), (0x2244, 0x0009_0009));
        assert_eq!((dw(&page, 4), dw(&page, 5)), (0x2034, 0x0020_0040));
        assert_eq!((dw(&page, 6), dw(&page, 7)), (0x2030, 0x80));
        assert_eq!((dw(&page, 8), dw(&page, 9)), (0x2038, 0x0010_0000));
        assert_eq!((dw(&page, 10), dw(&page, 11)), (0x203C, 0x3001));
        assert_eq!((dw(&page, 0x0C), dw(&page, 0x0D)), (0x2168, 1));
        assert_eq!((dw(&page, 0x0E), dw(&page, 0x0F)), (0x2140, 0x2000));
        assert_eq!((dw(&page, 0x10), dw(&page, 0x11)), (0x2110, 0x20));
        assert_eq!((dw(&page, 0x12), dw(&page, 0x13)), (0x211C, 2));
        assert_eq!((dw(&page, 0x14), dw(&page, 0x15)), (0x2114, 0x3000));
        assert_eq!((dw(&page, 0x16), dw(&page, 0x17)), (0x2118, 3));
        assert_eq!((dw(&page, 0x18), dw(&page, 0x19)), (0x21C0, 0x4001));
        assert_eq!((dw(&page, 0x1A), dw(&page, 0x1B)), (0x21C4, 0x5002));
        assert_eq!((dw(&page, 0x1C), dw(&page, 0x1D)), (0x21C8, 0x600));
        assert_eq!(dw(&page, 0x1E), 0);
        assert_eq!(dw(&page, 0x20), 0);
        assert_eq!(dw(&page, 0x21), 0x1100_1011);
        assert_eq!((dw(&page, 0x22), dw(&page, 0x23)), (0x23A8, 0x1234));
        assert_eq!((dw(&page, 0x24), dw(&page, 0x25)), (0x228C, 4));
        assert_eq!((dw(&page, 0x26), dw(&page, 0x27)), (0x2288, 0xD000));
        assert_eq!((dw(&page, 0x30), dw(&page, 0x31)), (0x2274, 1));
        assert_eq!((dw(&page, 0x32), dw(&page, 0x33)), (0x2270, 0xA000));
        assert_eq!(
            dw(&page, 0x34),
            0xEEEE_EEEE,
            "past the ring context untouched"
        );
        assert_eq!(LrcState::parse(&page), Ok(sample()));
        assert_eq!(LrcState::engine_of(&page), Ok(EngineId::Rcs));
    }

    #[test]
    fn xcs_image_has_eleven_registers() {
        let mut page = [0u8; LRC_PAGE_SIZE];
        sample().emit(EngineId::Bcs, &mut page);
        // Both headers without the force-posted bit, as the hardware writes them.
        assert_eq!(dw(&page, 1), 0x1100_0015);
        assert_eq!((dw(&page, 2), dw(&page, 5)), (0x22244, 0x0020_0040));
        assert_eq!((dw(&page, 0x16), dw(&page, 0x17)), (0x22118, 3));
        assert_eq!(dw(&page, 0x18), 0);
        assert_eq!(dw(&page, 0x21), 0x1100_0011);
        assert_eq!(dw(&page, 0x33), 0xA000);
        let got = LrcState::parse(&page).unwrap();
        let want = LrcState {
            bb_per_ctx_ptr: 0,
            indirect_ctx: 0,
            indirect_ctx_offset: 0,
            ..sample()
        };
        assert_eq!(got, want);
        assert_eq!(
            LrcState::parse_for(EngineId::Vcs, &page),
            Err(EngineError::BadContextImage { dword: 2 })
        );
    }

    #[test]
    fn rejects_mismatched_headers_and_addresses() {
        let mut page = [0u8; LRC_PAGE_SIZE];
        sample().emit(EngineId::Vecs, &mut page);
        // Without the force-posted bit the header is still accepted.
        let mut p = page;
        p[5] &= !0x10;
        assert_eq!(LrcState::parse(&p), LrcState::parse(&page));
        let mut p = page;
        p[4] = 0x1B; // 14 registers on a non-render engine
        assert_eq!(
            LrcState::parse(&p),
            Err(EngineError::BadContextImage { dword: 1 })
        );
        let mut p = page;
        p[0x12 * 4] = 0x20; // 2nd BB UDW address wrong
        assert_eq!(
            LrcState::parse(&p),
            Err(EngineError::BadContextImage { dword: 0x12 })
        );
        let mut p = page;
        p[0x21 * 4] = 0x13;
        assert_eq!(
            LrcState::parse(&p),
            Err(EngineError::BadContextImage { dword: 0x21 })
        );
        let mut p = page;
        p[0x32 * 4] ^= 4;
        assert_eq!(
            LrcState::parse(&p),
            Err(EngineError::BadContextImage { dword: 0x32 })
        );
        assert_eq!(
            LrcState::parse(&[0u8; LRC_PAGE_SIZE]),
            Err(EngineError::BadContextImage { dword: 2 })
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..0xD0), e in 0usize..5) {
            let mut page = [0u8; LRC_PAGE_SIZE];
            sample().emit(EngineId::ALL[e], &mut page);
            page[..bytes.len()].copy_from_slice(&bytes);
            let _ = LrcState::parse(&page);
        }

        #[test]
        fn emit_parse_round_trip(v in proptest::collection::vec(proptest::prelude::any::<u32>(), 22), e in 0usize..5) {
            let engine = EngineId::ALL[e];
            let s = LrcState {
                ctx_ctrl: v[0],
                ring: RingRegs { head: v[1], tail: v[2], start: v[3], ctl: v[4] },
                bb_head_udw: v[5], bb_head_ldw: v[6], bb_state: v[7],
                second_bb_head_udw: v[8], second_bb_head_ldw: v[9], second_bb_state: v[10],
                bb_per_ctx_ptr: if e == 0 { v[11] } else { 0 },
                indirect_ctx: if e == 0 { v[12] } else { 0 },
                indirect_ctx_offset: if e == 0 { v[13] } else { 0 },
                ctx_timestamp: v[14],
                pdp: [
                    (u64::from(v[15]) << 32) | u64::from(v[16]),
                    (u64::from(v[17]) << 32) | u64::from(v[18]),
                    (u64::from(v[19]) << 32) | u64::from(v[20]),
                    u64::from(v[21]),
                ],
            };
            let mut page = [0u8; LRC_PAGE_SIZE];
            s.emit(engine, &mut page);
            proptest::prop_assert_eq!(LrcState::parse(&page), Ok(s));
        }
    }
}
