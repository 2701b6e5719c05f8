//! Platform register tables.

use crate::desc::{RegDesc, RegFlags, SaveClass};
use crate::pvinfo::off;

/// Size of the gen8/gen9 MMIO BAR window that GVT emulates: 2 MiB.
pub const MMIO_SIZE: u32 = 0x20_0000;
/// Number of dwords of vreg storage a [`RegFile`](crate::RegFile) needs for a 2 MiB platform.
pub const MMIO_DWORDS: usize = 0x20_0000 / 4;

/// A GPU model: its register table and MMIO window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Platform {
    /// Tracked registers, sorted by strictly ascending offset, one dword each.
    pub regs: &'static [RegDesc],
    /// Size of the MMIO window in bytes.
    pub mmio_size: u32,
}

impl Platform {
    /// The descriptor of the register at dword-aligned byte `offset`, if tracked.
    /// Binary search over the sorted table.
    #[must_use]
    pub fn find(&self, offset: u32) -> Option<&'static RegDesc> {
        let regs: &'static [RegDesc] = self.regs;
        regs.binary_search_by_key(&offset, |r| r.offset)
            .ok()
            .and_then(|i| regs.get(i))
    }

    /// Dwords of vreg storage this platform needs (`mmio_size / 4`).
    #[must_use]
    pub const fn storage_dwords(&self) -> usize {
        (self.mmio_size / 4) as usize
    }

    /// Upper bound of the sparse payload size: every migrated register in its own run
    /// (12 bytes each). Buffers of this size never fail with `Capacity`.
    #[must_use]
    pub fn max_sparse_len(&self) -> usize {
        self.regs
            .iter()
            .filter(|r| r.is_migrated())
            .count()
            .saturating_mul(12)
    }
}

/// Engine MMIO bases of gen8/gen9 (RCS, BCS, VCS, VCS2, VECS).
const ENGINES: [u32; 5] = [0x02000, 0x22000, 0x12000, 0x1C000, 0x1A000];

const CAP: usize = 512;

/// Compile-time table assembly. Out-of-bounds indexing here is a compile error (the table
/// is built in a `const`), never a runtime panic.
struct Builder {
    regs: [RegDesc; CAP],
    len: usize,
}

#[expect(
    clippy::indexing_slicing,
    reason = "const evaluation only: an out-of-bounds index fails the build"
)]
impl Builder {
    const fn new() -> Self {
        Self {
            regs: [RegDesc::new(0, ""); CAP],
            len: 0,
        }
    }

    const fn push(mut self, r: RegDesc) -> Self {
        self.regs[self.len] = r;
        self.len += 1;
        self
    }

    /// Insertion sort by offset (the table is written in logical groups).
    const fn sorted(mut self) -> Self {
        let mut i = 1;
        while i < self.len {
            let mut j = i;
            while j > 0 && self.regs[j - 1].offset > self.regs[j].offset {
                self.regs.swap(j - 1, j);
                j -= 1;
            }
            i += 1;
        }
        self
    }

    const fn take<const N: usize>(self) -> [RegDesc; N] {
        assert!(self.len == N, "table length mismatch");
        let mut out = [RegDesc::new(0, ""); N];
        let mut i = 0;
        while i < N {
            out[i] = self.regs[i];
            i += 1;
        }
        out
    }
}

const GM_PAGE: u32 = 0xFFFF_F000;
const RO_ALL: u32 = u32::MAX;

/// Names are per register kind; the engine is recoverable from the offset.
const fn engine_block(mut b: Builder, base: u32) -> Builder {
    let ctx = RegFlags::IN_CONTEXT;
    b = b
        .push(RegDesc::new(base + 0x30, "RING_TAIL").with_flags(ctx))
        .push(RegDesc::new(base + 0x34, "RING_HEAD").with_flags(ctx))
        .push(
            RegDesc::new(base + 0x38, "RING_START")
                .with_gmadr(GM_PAGE)
                .with_flags(ctx),
        )
        .push(RegDesc::new(base + 0x3C, "RING_CTL").with_flags(ctx))
        .push(RegDesc::new(base + 0x74, "ACTHD").with_save(SaveClass::FromHardware))
        .push(
            RegDesc::new(base + 0x80, "HWS_PGA")
                .with_gmadr(GM_PAGE)
                .with_replay(),
        )
        .push(RegDesc::new(base + 0x98, "HWSTAM").with_reset(RO_ALL))
        .push(RegDesc::new(base + 0xA8, "RING_IMR").with_reset(RO_ALL))
        .push(
            RegDesc::new(base + 0x230, "ELSP")
                .with_flags(RegFlags::WRITE_ONLY)
                .with_save(SaveClass::Derived),
        )
        .push(
            RegDesc::new(base + 0x234, "EXECLIST_STATUS_LO")
                .with_ro(RO_ALL)
                .with_save(SaveClass::Derived),
        )
        .push(
            RegDesc::new(base + 0x238, "EXECLIST_STATUS_HI")
                .with_ro(RO_ALL)
                .with_save(SaveClass::Derived),
        )
        .push(RegDesc::new(base + 0x244, "CTX_CTRL").with_flags(RegFlags::MODE_MASK.union(ctx)))
        .push(
            RegDesc::new(base + 0x29C, "GFX_MODE")
                .with_flags(RegFlags::MODE_MASK)
                .with_replay(),
        );
    let mut i = 0;
    while i < 12 {
        b = b.push(
            RegDesc::new(base + 0x370 + 4 * i, "CSB_BUF")
                .with_ro(RO_ALL)
                .with_save(SaveClass::Derived),
        );
        i += 1;
    }
    b.push(
        RegDesc::new(base + 0x3A0, "CSB_PTR")
            .with_reset(0x0000_0007)
            .with_ro(0x0000_F8FF)
            .with_flags(RegFlags::MODE_MASK)
            .with_save(SaveClass::Derived),
    )
}

const fn pvinfo_ro(offset: u32, reset: u32, name: &'static str) -> RegDesc {
    RegDesc::new(offset, name)
        .with_reset(reset)
        .with_ro(RO_ALL)
        .with_flags(RegFlags::UNALIGN)
        .with_save(SaveClass::Derived)
}

const fn pvinfo_rw(offset: u32, reset: u32, name: &'static str) -> RegDesc {
    RegDesc::new(offset, name)
        .with_reset(reset)
        .with_flags(RegFlags::UNALIGN)
}

#[expect(
    clippy::indexing_slicing,
    reason = "const evaluation only; the loop bounds are literals"
)]
const fn build_skl() -> Builder {
    let mut b = Builder::new();
    let mut e = 0;
    while e < ENGINES.len() {
        b = engine_block(b, ENGINES[e]);
        e += 1;
    }
    b = b
        .push(RegDesc::new(0x40E0, "PAT_LO").with_replay())
        .push(RegDesc::new(0x40E4, "PAT_HI").with_replay())
        .push(RegDesc::new(0x44200, "MASTER_IRQ").with_replay());
    let mut n: u32 = 0;
    while n < 4 {
        let blk = 0x44300 + 0x10 * n;
        b = b
            .push(
                RegDesc::new(blk, "GT_ISR")
                    .with_ro(RO_ALL)
                    .with_save(SaveClass::Derived),
            )
            .push(
                RegDesc::new(blk + 4, "GT_IMR")
                    .with_reset(RO_ALL)
                    .with_replay(),
            )
            .push(RegDesc::new(blk + 8, "GT_IIR").with_flags(RegFlags::W1C))
            .push(RegDesc::new(blk + 0xC, "GT_IER").with_replay());
        n += 1;
    }
    b = b
        .push(RegDesc::new(0x70008, "PIPECONF_A").with_replay())
        .push(RegDesc::new(0x7019C, "DSPSURF_A").with_gmadr(GM_PAGE))
        .push(pvinfo_ro(off::MAGIC_LO, 0x7654_4776, "PV_MAGIC_LO"))
        .push(pvinfo_ro(off::MAGIC_HI, 0x4776_5447, "PV_MAGIC_HI"))
        .push(pvinfo_ro(off::VERSION, 0x0000_0001, "PV_VERSION"))
        .push(pvinfo_ro(off::VGT_ID, 0, "PV_VGT_ID"))
        .push(pvinfo_ro(off::VGT_CAPS, 0, "PV_VGT_CAPS"))
        .push(pvinfo_ro(off::APERTURE_BASE, 0, "PV_APERTURE_BASE"))
        .push(pvinfo_ro(off::APERTURE_SIZE, 0, "PV_APERTURE_SIZE"))
        .push(pvinfo_ro(off::HIDDEN_BASE, 0, "PV_HIDDEN_BASE"))
        .push(pvinfo_ro(off::HIDDEN_SIZE, 0, "PV_HIDDEN_SIZE"))
        .push(pvinfo_ro(off::FENCE_NUM, 0, "PV_FENCE_NUM"))
        .push(pvinfo_rw(off::DISPLAY_READY, 0, "PV_DISPLAY_READY"))
        .push(pvinfo_rw(off::G2V_NOTIFY, 0, "PV_G2V_NOTIFY").with_save(SaveClass::Derived))
        .push(pvinfo_rw(off::CURSOR_X_HOT, RO_ALL, "PV_CURSOR_X_HOT"))
        .push(pvinfo_rw(off::CURSOR_Y_HOT, RO_ALL, "PV_CURSOR_Y_HOT"));
    let mut p = 0;
    while p < 8 {
        b = b.push(pvinfo_rw(off::PDP0_LO + 4 * p, 0, "PV_PDP"));
        p += 1;
    }
    b = b
        .push(pvinfo_rw(off::EXECLIST_DESC_LO, 0, "PV_EXECLIST_DESC_LO"))
        .push(pvinfo_rw(off::EXECLIST_DESC_HI, 0, "PV_EXECLIST_DESC_HI"));
    let mut f = 0;
    while f < 32 {
        b = b
            .push(RegDesc::new(0x10_0000 + 8 * f, "FENCE_LO").with_gmadr(GM_PAGE))
            .push(RegDesc::new(0x10_0004 + 8 * f, "FENCE_HI").with_gmadr(GM_PAGE));
        f += 1;
    }
    b.sorted()
}

const SKL_BUILT: Builder = build_skl();
const SKL_LEN: usize = SKL_BUILT.len;
static SKL_TABLE: [RegDesc; SKL_LEN] = SKL_BUILT.take::<SKL_LEN>();

/// Gen9 (Skylake-class) register table, sorted by offset.
///
/// Covers, for every engine (RCS 0x2000, BCS 0x22000, VCS 0x12000, VCS2 0x1C000,
/// VECS 0x1A000): ring TAIL/HEAD/START/CTL, ACTHD, HWS_PGA, HWSTAM, IMR, the ELSP port,
/// EXECLIST_STATUS, CONTEXT_CONTROL, GFX_MODE, the six CSB entries and the CSB pointer;
/// private PAT, master IRQ, the four GT ISR/IMR/IIR/IER blocks, PIPECONF_A, DSPSURF_A,
/// the modelled PVINFO fields and the 32 fence register pairs.
pub static SKL_REGS: &[RegDesc] = &SKL_TABLE;

/// The gen9 (Skylake-class) platform: [`SKL_REGS`] over a 2 MiB window.
pub static SKL: Platform = Platform {
    regs: SKL_REGS,
    mmio_size: MMIO_SIZE,
};

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
    fn table_is_sorted_aligned_and_sane() {
        assert!(SKL_REGS.len() > 200);
        for w in SKL_REGS.windows(2) {
            // Strictly ascending dword offsets: sorted and non-overlapping.
            assert!(w[0].offset < w[1].offset, "{} / {}", w[0].name, w[1].name);
        }
        for r in SKL_REGS {
            assert_eq!(r.offset % 4, 0, "{}", r.name);
            assert!(r.offset < SKL.mmio_size, "{}", r.name);
            assert!(!r.name.is_empty());
            if r.flags.contains(RegFlags::GMADR) {
                assert_ne!(r.gm_mask, 0, "{}", r.name);
            } else {
                assert_eq!(r.gm_mask, 0, "{}", r.name);
            }
            if r.flags.contains(RegFlags::MODE_MASK) {
                assert_eq!(r.ro_mask & 0xFFFF_0000, 0, "{}", r.name);
                assert_eq!(r.reset & 0xFFFF_0000, 0, "{}", r.name);
                assert!(!r.flags.contains(RegFlags::W1C), "{}", r.name);
            }
            if r.replay {
                assert_eq!(r.save, SaveClass::Migrate, "{}", r.name);
            }
            if r.flags.contains(RegFlags::WRITE_ONLY) {
                assert_ne!(r.save, SaveClass::Migrate, "{}", r.name);
            }
            // A migrated register with read-only bits would be rejected by validation if
            // the device model changed them: only fully read/write ones are migrated.
            if r.is_migrated() {
                assert_eq!(r.ro_mask, 0, "{}", r.name);
            }
        }
    }

    #[test]
    fn find_hits_exact_offsets_only() {
        let r = SKL.find(0x2038).unwrap();
        assert_eq!(r.name, "RING_START");
        assert_eq!(r.gm_mask, 0xFFFF_F000);
        assert!(SKL.find(0x2039).is_none());
        assert!(SKL.find(0x2000).is_none());
        assert_eq!(SKL.find(0x229C).unwrap().name, "GFX_MODE");
        assert_eq!(SKL.find(0x2229C).unwrap().name, "GFX_MODE");
        assert_eq!(SKL.find(0x1000F8).unwrap().name, "FENCE_LO");
        assert_eq!(SKL.find(0x1000FC).unwrap().name, "FENCE_HI");
        assert!(SKL.find(0x100100).is_none());
        assert_eq!(SKL.find(0x23A0).unwrap().reset, 7);
        assert_eq!(SKL.storage_dwords(), MMIO_DWORDS);
    }

    #[test]
    fn required_registers_present_with_attributes() {
        let want: [(u32, RegFlags, bool); 8] = [
            (0x2080, RegFlags::GMADR, true),
            (0x2244, RegFlags::MODE_MASK, false),
            (0x229C, RegFlags::MODE_MASK, true),
            (0x4430C, RegFlags::NONE, true),
            (0x44308, RegFlags::W1C, false),
            (0x70008, RegFlags::NONE, true),
            (0x7019C, RegFlags::GMADR, false),
            (0x2230, RegFlags::WRITE_ONLY, false),
        ];
        for (o, f, replay) in want {
            let r = SKL.find(o).unwrap();
            assert!(r.flags.contains(f), "{o:#x}");
            assert_eq!(r.replay, replay, "{o:#x}");
        }
        assert_eq!(SKL.find(0x44300).unwrap().ro_mask, u32::MAX);
        assert_eq!(SKL.find(0x2234).unwrap().save, SaveClass::Derived);
    }
}
