//! Platform register tables.

use crate::desc::{EventKind, RegDesc, RegFlags, SaveClass};
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
/// Per-engine MOCS control tables of gen9 (64 dwords each), in [`ENGINES`] order.
const MOCS_BASES: [u32; 5] = [0xC800, 0xCC00, 0xC900, 0xCA00, 0xCB00];
/// Entries of a gen9 MOCS control table.
const MOCS_ENTRIES: u32 = 64;
/// Start of the gen9 L3 MOCS (LNCFCMOCS) table: 32 dwords, two 16-bit entries each.
const L3_MOCS_BASE: u32 = 0xB020;

const CAP: usize = 1024;

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

/// A plain migrated register that is part of the engine's logical context image.
const fn ctx(offset: u32, name: &'static str) -> RegDesc {
    RegDesc::new(offset, name).with_flags(RegFlags::IN_CONTEXT)
}

/// A masked ("mode") register of the engine MMIO context list.
const fn masked(offset: u32, name: &'static str, in_context: bool) -> RegDesc {
    let r = RegDesc::new(offset, name).with_flags(RegFlags::MODE_MASK);
    if in_context {
        r.with_flags(RegFlags::IN_CONTEXT)
    } else {
        r
    }
}

/// A counter or status register the device model reads from hardware: its vreg content is
/// not authoritative and never migrated.
const fn from_hw(offset: u32, name: &'static str) -> RegDesc {
    RegDesc::new(offset, name)
        .with_ro(RO_ALL)
        .with_save(SaveClass::FromHardware)
}

/// A read-only register recomputed by the device model on the target.
const fn derived_ro(offset: u32, name: &'static str) -> RegDesc {
    RegDesc::new(offset, name)
        .with_ro(RO_ALL)
        .with_save(SaveClass::Derived)
}

/// Names are per register kind; the engine is recoverable from the offset.
const fn engine_block(mut b: Builder, base: u32) -> Builder {
    let ctx_flag = RegFlags::IN_CONTEXT;
    b = b
        .push(ctx(base + 0x30, "RING_TAIL"))
        .push(ctx(base + 0x34, "RING_HEAD"))
        .push(ctx(base + 0x38, "RING_START").with_gmadr(GM_PAGE))
        .push(ctx(base + 0x3C, "RING_CTL"))
        .push(from_hw(base + 0x6C, "INSTDONE"))
        .push(from_hw(base + 0x74, "ACTHD"))
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
                .with_save(SaveClass::Derived)
                .with_event(EventKind::Elsp),
        )
        .push(derived_ro(base + 0x234, "EXECLIST_STATUS_LO"))
        .push(derived_ro(base + 0x238, "EXECLIST_STATUS_HI"))
        .push(
            RegDesc::new(base + 0x244, "CTX_CTRL").with_flags(RegFlags::MODE_MASK.union(ctx_flag)),
        )
        .push(ctx(base + 0x270, "PDP0_LDW"))
        .push(ctx(base + 0x274, "PDP0_UDW"))
        .push(ctx(base + 0x278, "PDP1_LDW"))
        .push(ctx(base + 0x27C, "PDP1_UDW"))
        .push(ctx(base + 0x280, "PDP2_LDW"))
        .push(ctx(base + 0x284, "PDP2_UDW"))
        .push(ctx(base + 0x288, "PDP3_LDW"))
        .push(ctx(base + 0x28C, "PDP3_UDW"))
        .push(
            RegDesc::new(base + 0x29C, "GFX_MODE")
                .with_flags(RegFlags::MODE_MASK)
                .with_replay(),
        )
        .push(from_hw(base + 0x358, "RING_TIMESTAMP_LO"))
        .push(from_hw(base + 0x35C, "RING_TIMESTAMP_HI"));
    let mut i = 0;
    while i < 12 {
        b = b.push(derived_ro(base + 0x370 + 4 * i, "CSB_BUF"));
        i += 1;
    }
    b.push(
        RegDesc::new(base + 0x3A0, "CSB_PTR")
            .with_reset(0x0000_0007)
            .with_ro(0x0000_F8FF)
            .with_flags(RegFlags::MODE_MASK)
            .with_save(SaveClass::Derived),
    )
    .push(from_hw(base + 0x3A8, "CTX_TIMESTAMP"))
}

/// The gen9 engine MMIO context list (switched per vGPU; the vreg is the source of truth).
/// `IN_CONTEXT` marks the registers the hardware also keeps in the logical context image.
/// GFX_MODE, HWSTAM and the private PAT of the list are declared elsewhere.
#[expect(
    clippy::indexing_slicing,
    reason = "const evaluation only; the loop bounds are the array lengths"
)]
const fn engine_mmio_context(mut b: Builder) -> Builder {
    let rcs_masked_ctx: [(u32, &str); 16] = [
        (0x20C0, "INSTPM"),
        (0x2580, "CS_CHICKEN1"),
        (0x7000, "CACHE_MODE_0"),
        (0x7004, "CACHE_MODE_1"),
        (0x7008, "GT_MODE"),
        (0x7010, "COMMON_SLICE_CHICKEN1"),
        (0x7014, "COMMON_SLICE_CHICKEN2"),
        (0x7300, "HDC_CHICKEN0"),
        (0x7304, "HDC_CHICKEN1"),
        (0x83A4, "VF_GUARDBAND"),
        (0xE100, "HALF_SLICE_CHICKEN1"),
        (0xE180, "HALF_SLICE_CHICKEN2"),
        (0xE184, "HALF_SLICE_CHICKEN3"),
        (0xE188, "HALF_SLICE_CHICKEN5"),
        (0xE194, "HALF_SLICE_CHICKEN7"),
        (0xE4F0, "ROW_CHICKEN"),
    ];
    let masked_not_ctx: [(u32, &str); 7] = [
        (0x20E4, "FF_SLICE_CS_CHICKEN2"),
        (0x20EC, "CS_DEBUG_MODE1"),
        (0x2209C, "MI_MODE"),
        (0x220C0, "INSTPM"),
        (0x1C028, "EXCC"),
        (0x1A028, "EXCC"),
        (0x22028, "EXCC"),
    ];
    let plain: [(u32, &str); 14] = [
        (0x2248, "CTX_PREEMPT"),
        (0x20A0, "FF_THREAD_MODE"),
        (0x20D4, "CSFE_CHICKEN1"),
        (0x4AB0, "GAMT_ECO_REG_RW_IA"),
        (0x4AB8, "GAMT_CHKN_BIT"),
        (0x4DE0, "TRVATTL3PTRDW0"),
        (0x4DE4, "TRVATTL3PTRDW1"),
        (0x4DE8, "TRNULLDETCT"),
        (0x4DEC, "TRINVTILEDETCT"),
        (0x4DF0, "TRVADR"),
        (0x4DF4, "TRTTE"),
        (0x940C, "UCGCTL4"),
        (0xB004, "GARBCNTL"),
        (0xB118, "L3SQCREG4"),
    ];
    let mut i = 0;
    while i < rcs_masked_ctx.len() {
        let (o, n) = rcs_masked_ctx[i];
        b = b.push(masked(o, n, true));
        i += 1;
    }
    i = 0;
    while i < masked_not_ctx.len() {
        let (o, n) = masked_not_ctx[i];
        b = b.push(masked(o, n, false));
        i += 1;
    }
    i = 0;
    while i < plain.len() {
        let (o, n) = plain[i];
        b = b.push(RegDesc::new(o, n));
        i += 1;
    }
    let mut k: u32 = 0;
    while k < 12 {
        b = b.push(RegDesc::new(0x24D0 + 4 * k, "FORCE_TO_NONPRIV"));
        k += 1;
    }
    // MOCS: per-engine control tables; only the render engine's (and the L3 table) are
    // restored with the render context.
    let mut e = 0;
    while e < MOCS_BASES.len() {
        let mut m: u32 = 0;
        while m < MOCS_ENTRIES {
            let r = RegDesc::new(MOCS_BASES[e] + 4 * m, "MOCS");
            b = b.push(if e == 0 {
                r.with_flags(RegFlags::IN_CONTEXT)
            } else {
                r
            });
            m += 1;
        }
        e += 1;
    }
    let mut m: u32 = 0;
    while m < MOCS_ENTRIES / 2 {
        b = b.push(ctx(L3_MOCS_BASE + 4 * m, "L3_MOCS"));
        m += 1;
    }
    b
}

/// One interrupt block: ISR (read-only, derived), IMR (reset all masked), IIR (W1C), IER.
/// IMR and IER are replayed on restore; writes to IMR, IIR and IER raise
/// [`EventKind::Interrupt`].
const fn irq_block(b: Builder, base: u32, names: [&'static str; 4]) -> Builder {
    let [isr, imr, iir, ier] = names;
    b.push(derived_ro(base, isr))
        .push(
            RegDesc::new(base + 4, imr)
                .with_reset(RO_ALL)
                .with_replay()
                .with_event(EventKind::Interrupt),
        )
        .push(
            RegDesc::new(base + 8, iir)
                .with_flags(RegFlags::W1C)
                .with_event(EventKind::Interrupt),
        )
        .push(
            RegDesc::new(base + 0xC, ier)
                .with_replay()
                .with_event(EventKind::Interrupt),
        )
}

const fn interrupts(mut b: Builder) -> Builder {
    b = b.push(
        RegDesc::new(0x44200, "MASTER_IRQ")
            .with_replay()
            .with_event(EventKind::Interrupt),
    );
    let mut n: u32 = 0;
    while n < 4 {
        b = irq_block(
            b,
            0x44300 + 0x10 * n,
            ["GT_ISR", "GT_IMR", "GT_IIR", "GT_IER"],
        );
        n += 1;
    }
    let mut p: u32 = 0;
    while p < 3 {
        b = irq_block(
            b,
            0x44400 + 0x10 * p,
            ["DE_PIPE_ISR", "DE_PIPE_IMR", "DE_PIPE_IIR", "DE_PIPE_IER"],
        );
        p += 1;
    }
    b = irq_block(
        b,
        0x44440,
        ["DE_PORT_ISR", "DE_PORT_IMR", "DE_PORT_IIR", "DE_PORT_IER"],
    );
    b = irq_block(
        b,
        0x44460,
        ["DE_MISC_ISR", "DE_MISC_IMR", "DE_MISC_IIR", "DE_MISC_IER"],
    );
    b = irq_block(b, 0x444E0, ["PCU_ISR", "PCU_IMR", "PCU_IIR", "PCU_IER"]);
    irq_block(b, 0xC4000, ["SDEISR", "SDEIMR", "SDEIIR", "SDEIER"])
}

/// Pipe, primary plane and cursor registers of display pipes A, B and C (pipe stride
/// 0x1000). Surface and cursor base hold graphics addresses (bits 31:12).
#[expect(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "const evaluation only; the loop bound is the array length (3)"
)]
const fn display(mut b: Builder) -> Builder {
    const PIPECONF: [&str; 3] = ["PIPECONF_A", "PIPECONF_B", "PIPECONF_C"];
    const SURF: [&str; 3] = ["DSPSURF_A", "DSPSURF_B", "DSPSURF_C"];
    let mut p = 0;
    while p < PIPECONF.len() {
        let base = 0x1000 * p as u32;
        b = b
            .push(derived_ro(0x70040 + base, "PIPE_FRMCOUNT"))
            .push(derived_ro(0x70044 + base, "PIPE_FLIPCOUNT"))
            .push(
                RegDesc::new(0x70008 + base, PIPECONF[p])
                    .with_replay()
                    .with_event(EventKind::PipeConf { pipe: p as u8 }),
            )
            .push(RegDesc::new(0x70080 + base, "CURCNTR"))
            .push(RegDesc::new(0x70084 + base, "CURBASE").with_gmadr(GM_PAGE))
            .push(RegDesc::new(0x70088 + base, "CURPOS"))
            .push(derived_ro(0x700AC + base, "CURSURFLIVE"))
            .push(RegDesc::new(0x70180 + base, "PLANE_CTL"))
            .push(RegDesc::new(0x70188 + base, "PLANE_STRIDE"))
            .push(RegDesc::new(0x7018C + base, "PLANE_POS"))
            .push(RegDesc::new(0x70190 + base, "PLANE_SIZE"))
            .push(RegDesc::new(0x7019C + base, SURF[p]).with_gmadr(GM_PAGE))
            .push(RegDesc::new(0x701A4 + base, "PLANE_OFFSET"))
            .push(derived_ro(0x701AC + base, "PLANE_SURFLIVE"));
        p += 1;
    }
    b
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
    clippy::cast_possible_truncation,
    reason = "const evaluation only; the loop bounds are literals (fence index < 32)"
)]
const fn build_skl() -> Builder {
    let mut b = Builder::new();
    let mut e = 0;
    while e < ENGINES.len() {
        b = engine_block(b, ENGINES[e]);
        e += 1;
    }
    b = engine_mmio_context(b);
    b = b
        .push(RegDesc::new(0x40E0, "PAT_LO").with_replay())
        .push(RegDesc::new(0x40E4, "PAT_HI").with_replay());
    b = interrupts(b);
    b = display(b);
    b = b
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
        .push(
            // Migrated as the guest left it; the notification itself is not replayed (the
            // PPGTT roots it announced travel in their own record).
            pvinfo_rw(off::G2V_NOTIFY, 0, "PV_G2V_NOTIFY").with_event(EventKind::G2vNotify),
        )
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
    let mut f: u32 = 0;
    while f < 32 {
        let index = f as u8;
        b = b
            .push(
                RegDesc::new(0x10_0000 + 8 * f, "FENCE_LO")
                    .with_gmadr(GM_PAGE)
                    .with_replay()
                    .with_event(EventKind::Fence { index, hi: false }),
            )
            .push(
                RegDesc::new(0x10_0004 + 8 * f, "FENCE_HI")
                    .with_gmadr(GM_PAGE)
                    .with_replay()
                    .with_event(EventKind::Fence { index, hi: true }),
            );
        f += 1;
    }
    b.sorted()
}

const SKL_BUILT: Builder = build_skl();
const SKL_LEN: usize = SKL_BUILT.len;
static SKL_TABLE: [RegDesc; SKL_LEN] = SKL_BUILT.take::<SKL_LEN>();

/// Gen9 (Skylake-class) register table, sorted by offset.
///
/// Covers:
/// - for every engine (RCS 0x2000, BCS 0x22000, VCS 0x12000, VCS2 0x1C000, VECS 0x1A000):
///   ring TAIL/HEAD/START/CTL, HWS_PGA, HWSTAM, IMR, the ELSP port, EXECLIST_STATUS,
///   CONTEXT_CONTROL, GFX_MODE, the six CSB entries and the CSB pointer, and the
///   hardware-read INSTDONE, ACTHD, RING_TIMESTAMP and CTX_TIMESTAMP;
/// - the gen9 engine MMIO context list (INSTPM, CTX_PREEMPT, FORCE_TO_NONPRIV 0..11,
///   CACHE_MODE, GT_MODE, slice/half-slice/HDC/row chickens, VF_GUARDBAND, L3SQCREG4,
///   TR-TT, the BCS/VCS2/VECS mode registers, private PAT) and MOCS (64 control entries
///   per engine at 0xC800/0xCC00/0xC900/0xCA00/0xCB00, 32 L3 entries at 0xB020);
/// - interrupts: master 0x44200, GT 0..3, DE pipe A..C, DE port, DE misc, PCU and south
///   (SDE) ISR/IMR/IIR/IER blocks;
/// - display pipes A..C: PIPECONF, frame/flip counters, cursor control/base/position/live
///   base, primary plane control/stride/position/size/surface/offset/live surface;
/// - the modelled PVINFO fields and the 32 fence register pairs.
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
    fn table_counts_and_event_consistency() {
        assert_eq!(SKL_REGS.len(), 768);
        let count = |name: &str| SKL_REGS.iter().filter(|r| r.name == name).count();
        // Four PPGTT root pointers per engine, low and high dwords, at base + 0x270.
        assert_eq!(count("PDP0_LDW") + count("PDP3_UDW"), 10);
        let pdp = SKL.find(0x2270).unwrap();
        assert_eq!(
            (pdp.name, pdp.save, pdp.flags.contains(RegFlags::IN_CONTEXT)),
            ("PDP0_LDW", SaveClass::Migrate, true)
        );
        assert_eq!(SKL.find(0x1C28C).unwrap().name, "PDP3_UDW");
        assert_eq!(count("MOCS"), 320);
        assert_eq!(count("L3_MOCS"), 32);
        assert_eq!(count("FORCE_TO_NONPRIV"), 12);
        assert_eq!(count("FENCE_LO") + count("FENCE_HI"), 64);
        assert_eq!(
            SKL_REGS.iter().filter(|r| r.replay).count(),
            5 * 2 + 2 + 23 + 3 + 64
        );
        for r in SKL_REGS {
            match r.event {
                Some(EventKind::Fence { index, hi }) => {
                    let lo = 0x10_0000 + 8 * u32::from(index);
                    assert_eq!(r.offset, if hi { lo + 4 } else { lo }, "{}", r.name);
                }
                Some(EventKind::PipeConf { pipe }) => {
                    assert_eq!(r.offset, 0x70008 + 0x1000 * u32::from(pipe));
                }
                Some(EventKind::Elsp) => {
                    assert!(r.flags.contains(RegFlags::WRITE_ONLY), "{}", r.name);
                }
                Some(EventKind::Interrupt) => assert!(r.offset >= 0x44200, "{}", r.name),
                Some(EventKind::G2vNotify) => assert_eq!(r.offset, off::G2V_NOTIFY),
                None => {}
            }
            // Hardware-read registers are never guest-writable nor migrated.
            if r.save == SaveClass::FromHardware {
                assert_eq!(r.ro_mask, u32::MAX, "{}", r.name);
                assert!(!r.is_migrated());
            }
        }
    }

    #[test]
    fn display_registers_per_pipe() {
        for (pipe, name) in [(0u8, "PIPECONF_A"), (1, "PIPECONF_B"), (2, "PIPECONF_C")] {
            let base = 0x1000 * u32::from(pipe);
            let pc = SKL.find(0x70008 + base).unwrap();
            assert_eq!(pc.name, name);
            assert!(pc.replay && pc.is_migrated());
            assert_eq!(pc.event, Some(EventKind::PipeConf { pipe }));
            for (o, n) in [(0x7019C, "DSPSURF"), (0x70084, "CURBASE")] {
                let r = SKL.find(o + base).unwrap();
                assert!(r.name.starts_with(n), "{}", r.name);
                assert!(r.flags.contains(RegFlags::GMADR));
                assert_eq!(r.gm_mask, 0xFFFF_F000);
                assert!(r.is_migrated());
            }
            for o in [
                0x70080, 0x70088, 0x70180, 0x70188, 0x7018C, 0x70190, 0x701A4,
            ] {
                let r = SKL.find(o + base).unwrap();
                assert_eq!(
                    (r.flags, r.ro_mask, r.reset),
                    (RegFlags::NONE, 0, 0),
                    "{o:#x}"
                );
                assert!(r.is_migrated() && !r.replay, "{o:#x}");
            }
            for o in [0x70040, 0x70044, 0x700AC, 0x701AC] {
                let r = SKL.find(o + base).unwrap();
                assert_eq!(
                    (r.save, r.ro_mask),
                    (SaveClass::Derived, u32::MAX),
                    "{o:#x}"
                );
            }
        }
        assert!(SKL.find(0x73008).is_none());
    }

    #[test]
    fn interrupt_blocks() {
        let blocks = [
            0x44300, 0x44310, 0x44320, 0x44330, 0x44400, 0x44410, 0x44420, 0x44440, 0x44460,
            0x444E0, 0xC4000,
        ];
        for b in blocks {
            let isr = SKL.find(b).unwrap();
            assert_eq!(
                (isr.save, isr.ro_mask, isr.event),
                (SaveClass::Derived, u32::MAX, None)
            );
            let imr = SKL.find(b + 4).unwrap();
            assert_eq!((imr.reset, imr.replay), (u32::MAX, true), "{b:#x}");
            let iir = SKL.find(b + 8).unwrap();
            assert!(iir.flags.contains(RegFlags::W1C) && !iir.replay, "{b:#x}");
            let ier = SKL.find(b + 0xC).unwrap();
            assert_eq!((ier.reset, ier.replay), (0, true), "{b:#x}");
            for r in [imr, iir, ier] {
                assert_eq!(r.event, Some(EventKind::Interrupt), "{b:#x}");
            }
        }
        assert_eq!(SKL.find(0xC4000).unwrap().name, "SDEISR");
        assert_eq!(SKL.find(0x444EC).unwrap().name, "PCU_IER");
        assert_eq!(SKL.find(0x44200).unwrap().event, Some(EventKind::Interrupt));
    }

    #[test]
    fn engine_mmio_context_list() {
        let ctx_masked = [
            0x20C0, 0x2580, 0x7000, 0x7004, 0x7008, 0x7010, 0x7014, 0x7300, 0x7304, 0x83A4, 0xE100,
            0xE180, 0xE184, 0xE188, 0xE194, 0xE4F0,
        ];
        for o in ctx_masked {
            let r = SKL.find(o).unwrap();
            assert!(
                r.flags
                    .contains(RegFlags::MODE_MASK.union(RegFlags::IN_CONTEXT)),
                "{o:#x}"
            );
            assert!(r.is_migrated(), "{o:#x}");
        }
        for o in [0x20E4, 0x20EC, 0x2209C, 0x220C0, 0x22028, 0x1C028, 0x1A028] {
            let r = SKL.find(o).unwrap();
            assert!(r.flags.contains(RegFlags::MODE_MASK), "{o:#x}");
            assert!(!r.flags.contains(RegFlags::IN_CONTEXT), "{o:#x}");
        }
        for o in (0x24D0..=0x24FC)
            .step_by(4)
            .chain([0x2248, 0xB118, 0x4DE0, 0x4DF4])
        {
            let r = SKL.find(o).unwrap();
            assert_eq!((r.flags, r.ro_mask), (RegFlags::NONE, 0), "{o:#x}");
            assert!(r.is_migrated(), "{o:#x}");
        }
        // MOCS: RCS table and the L3 table are in the render context, the others are not.
        for (base, in_ctx) in [
            (0xC800, true),
            (0xC900, false),
            (0xCA00, false),
            (0xCB00, false),
            (0xCC00, false),
        ] {
            for i in [0, 63] {
                let r = SKL.find(base + 4 * i).unwrap();
                assert_eq!(r.name, "MOCS");
                assert_eq!(r.flags.contains(RegFlags::IN_CONTEXT), in_ctx, "{base:#x}");
            }
        }
        assert!(SKL.find(0xCD00).is_none());
        assert_eq!(SKL.find(0xB020).unwrap().name, "L3_MOCS");
        assert_eq!(SKL.find(0xB09C).unwrap().name, "L3_MOCS");
        assert!(SKL.find(0xB0A0).is_none());
        // Counters read from hardware: not authoritative, not migrated.
        for base in ENGINES {
            for d in [0x6C, 0x74, 0x358, 0x35C, 0x3A8] {
                assert_eq!(SKL.find(base + d).unwrap().save, SaveClass::FromHardware);
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
