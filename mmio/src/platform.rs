//! Platform register tables.

use crate::desc::{EventKind, RegDesc, RegFlags, SaveClass};
use crate::pvinfo::off;

/// Size of the gen8/gen9 MMIO BAR window that GVT emulates: 2 MiB.
pub const MMIO_SIZE: u32 = 0x20_0000;
/// Number of dwords of vreg storage a [`RegFile`](crate::RegFile) needs for a 2 MiB platform.
pub const MMIO_DWORDS: usize = 0x20_0000 / 4;

/// Master interrupt control of gen9 (`GEN8_MASTER_IRQ`): bit 31 enables delivery, the other bits
/// report which interrupt blocks have something pending ([`GEN9_IRQ_BLOCKS`]).
pub const MASTER_IRQ: u32 = 0x44200;
/// The delivery-enable bit of [`MASTER_IRQ`].
pub const MASTER_IRQ_ENABLE: u32 = 1 << 31;

/// One interrupt block: ISR, IMR, IIR and IER at `base` + 0, 4, 8 and 0xC, and the bit of
/// [`MASTER_IRQ`] that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IrqBlock {
    /// Offset of the block's ISR.
    pub base: u32,
    /// The bit of [`MASTER_IRQ`] this block reports in.
    pub master_bit: u32,
}

impl IrqBlock {
    /// The block at `base` that reports in `master_bit`.
    #[must_use]
    pub const fn new(base: u32, master_bit: u32) -> Self {
        Self { base, master_bit }
    }
}

/// The interrupt blocks of gen9 that report in [`MASTER_IRQ`]; a device model sets a master bit
/// when the block has an identity bit (IIR) that is enabled (IER).
pub const GEN9_IRQ_BLOCKS: [IrqBlock; 10] = [
    IrqBlock::new(0x44300, 1 << 0),  // GT0: render, blitter
    IrqBlock::new(0x44310, 1 << 1),  // GT1: video
    IrqBlock::new(0x44320, 1 << 2),  // GT2: power management
    IrqBlock::new(0x44330, 1 << 3),  // GT3: video enhancement
    IrqBlock::new(0x44400, 1 << 16), // display pipe A
    IrqBlock::new(0x44410, 1 << 17), // display pipe B
    IrqBlock::new(0x44420, 1 << 18), // display pipe C
    IrqBlock::new(0x44440, 1 << 20), // display port
    IrqBlock::new(0x44460, 1 << 22), // display misc
    IrqBlock::new(0x444E0, 1 << 30), // PCU
];

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
}

/// Engine MMIO bases of gen8/gen9 (RCS, BCS, VCS, VCS2, VECS).
const ENGINES: [u32; 5] = [0x02000, 0x22000, 0x12000, 0x1C000, 0x1A000];
/// Per-engine MOCS control tables of gen9 (64 dwords each), in [`ENGINES`] order.
const MOCS_BASES: [u32; 5] = [0xC800, 0xCC00, 0xC900, 0xCA00, 0xCB00];
/// Entries of a gen9 MOCS control table.
const MOCS_ENTRIES: u32 = 64;
/// Start of the gen9 L3 MOCS (LNCFCMOCS) table: 32 dwords, two 16-bit entries each.
const L3_MOCS_BASE: u32 = 0xB020;

const CAP: usize = 2048;

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
        .push(masked(base + 0x28, "EXCC", false))
        .push(RegDesc::new(base + 0x40, "RING_SYNC_0"))
        .push(RegDesc::new(base + 0x44, "RING_SYNC_1"))
        .push(from_hw(base + 0x5C, "ACTHD_UDW"))
        .push(RegDesc::new(base + 0x98, "HWSTAM").with_reset(RO_ALL))
        .push(masked(base + 0x9C, "MI_MODE", false))
        .push(if base == ENGINES[0] {
            masked(base + 0xC0, "INSTPM", true)
        } else {
            masked(base + 0xC0, "INSTPM", false)
        })
        // RESET_CTL: the guest requests a reset with bit 0; the device model answers with
        // READY_TO_RESET (bit 1) and keeps it equal to the request (replayed on restore).
        .push(
            masked(base + 0xD0, "RESET_CTL", false)
                .with_ro(0x0000_FFFC)
                .with_replay(),
        )
        .push(masked(base + 0xD4, "CSFE_CHICKEN1", false))
        .push(RegDesc::new(base + 0x140, "BB_ADDR").with_gmadr(GM_PAGE))
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
    let rcs_masked_ctx: [(u32, &str); 15] = [
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
    let masked_not_ctx: [(u32, &str); 12] = [
        (0x2088, "CS_MASKED_2088"),
        (0x2090, "3D_CHICKEN3"),
        (0x20DC, "CS_MASKED_20DC"),
        (0x20E0, "CS_MASKED_20E0"),
        (0x20E4, "FF_SLICE_CS_CHICKEN2"),
        (0x20EC, "CS_DEBUG_MODE1"),
        (0x2120, "CS_MASKED_2120"),
        (0x2124, "CS_MASKED_2124"),
        (0x2470, "CS_MASKED_2470"),
        (0x4030, "ARB_MODE"),
        (0x7018, "CHICKEN_7018"),
        (0xE4F4, "ROW_CHICKEN2"),
    ];
    let plain: [(u32, &str); 46] = [
        (0x2248, "CTX_PREEMPT"),
        (0x20A0, "FF_THREAD_MODE"),
        (0x2148, "CS_GM_2148"),
        (0x215C, "CS_215C"),
        (0x2178, "CS_2178"),
        (0x217C, "CS_217C"),
        (0x2220, "CS_2220"),
        (0x2290, "CS_2290"),
        (0x2294, "CS_2294"),
        (0x2420, "CS_2420"),
        (0x2430, "CS_2430"),
        (0x2434, "CS_2434"),
        (0x2438, "CS_2438"),
        (0x243C, "CS_243C"),
        (0x12178, "VCS_12178"),
        (0x1217C, "VCS_1217C"),
        (0x12220, "VCS_12220"),
        (0x1A178, "VECS_1A178"),
        (0x1A17C, "VECS_1A17C"),
        (0x1C178, "VCS2_1C178"),
        (0x1C17C, "VCS2_1C17C"),
        (0x22178, "BCS_22178"),
        (0x2217C, "BCS_2217C"),
        (0x22220, "BCS_22220"),
        (0x4090, "GAM_ECOCHK"),
        (0x4094, "GAM_4094"),
        (0x4AB0, "GAMT_ECO_REG_RW_IA"),
        (0x4AB8, "GAMT_CHKN_BIT"),
        (0x4DFC, "TR_4DFC"),
        (0x9030, "GT_9030"),
        (0x940C, "UCGCTL4"),
        (0x9430, "UCGCTL6"),
        (0xA090, "RC_CONTROL"),
        (0xB004, "GARBCNTL"),
        (0xB008, "GARB_B008"),
        (0xB118, "L3SQCREG4"),
        (0xB11C, "L3_B11C"),
        (0xE220, "GT_E220"),
        (0xE230, "GT_E230"),
        (0xE240, "GT_E240"),
        (0xE260, "GT_E260"),
        (0xE270, "GT_E270"),
        (0xE280, "GT_E280"),
        (0xE2A0, "GT_E2A0"),
        (0xE2B0, "GT_E2B0"),
        (0xE2C0, "GT_E2C0"),
    ];
    // TR-TT: part of the render context image.
    let trtt: [(u32, &str); 6] = [
        (0x4DE0, "TRVATTL3PTRDW0"),
        (0x4DE4, "TRVATTL3PTRDW1"),
        (0x4DE8, "TRNULLDETCT"),
        (0x4DEC, "TRINVTILEDETCT"),
        (0x4DF0, "TRVADR"),
        (0x4DF4, "TRTTE"),
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
    i = 0;
    while i < trtt.len() {
        let (o, n) = trtt[i];
        b = b.push(ctx(o, n));
        i += 1;
    }
    // Pipeline statistics counters (64-bit each, 0x2300..0x2357).
    let mut k: u32 = 0;
    while k < 22 {
        b = b.push(RegDesc::new(0x2300 + 4 * k, "PIPELINE_STAT"));
        k += 1;
    }
    // Scratch/config blocks the render engine loads through LRI.
    k = 0;
    while k < 20 {
        let o = if k < 8 {
            0x5200 + 4 * k
        } else if k < 16 {
            0x5240 + 4 * (k - 8)
        } else {
            0x5280 + 4 * (k - 16)
        };
        b = b.push(RegDesc::new(o, "CS_SCRATCH"));
        k += 1;
    }
    // Forcewake: masked requests, replayed on restore so that the acknowledgements, which
    // mirror them (device model), are rebuilt.
    b = b
        .push(masked(0xA188, "FORCEWAKE_GT", false).with_replay())
        .push(masked(0xA270, "FORCEWAKE_MEDIA", false).with_replay())
        .push(masked(0xA278, "FORCEWAKE_RENDER", false).with_replay())
        .push(derived_ro(0x0D84, "FORCEWAKE_ACK_RENDER"))
        .push(derived_ro(0x0D88, "FORCEWAKE_ACK_MEDIA"))
        .push(derived_ro(0x13_0044, "FORCEWAKE_ACK_GT"))
        .push(derived_ro(0xA094, "RC_STATE"));
    // Per-engine TLB invalidation: a write starts it, the register reads back 0.
    k = 0;
    while k < 5 {
        b = b.push(
            RegDesc::new(0x4260 + 4 * k, "TLB_INV")
                .with_flags(RegFlags::WRITE_ONLY)
                .with_save(SaveClass::Derived),
        );
        k += 1;
    }
    // GAMW_ECO_DEV_RW_IA: bits 3:0 = 0xF enable 64 KiB PPGTT pages on gen9; replayed so
    // the device model re-derives the PPGTT view on restore.
    b = b.push(RegDesc::new(0x4080, "GAMW_ECO_DEV_RW_IA").with_replay());
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
        RegDesc::new(MASTER_IRQ, "MASTER_IRQ")
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

/// The display registers a desktop guest programs beyond pipe, primary plane and cursor
/// (gen9, the GVT-g list): transcoder timings and link M/N, DDI function control, sprite
/// planes 2 and 3, plane and cursor watermarks and buffer allocation, pipe scalers, DDI
/// buffers, DisplayPort training and AUX channels, display PLLs, clocks, power wells and
/// the PCH panel-power and GMBUS blocks.
#[expect(
    clippy::indexing_slicing,
    reason = "const evaluation only; the loop bounds are the array lengths"
)]
const fn display_desktop(mut b: Builder) -> Builder {
    // Transcoders A, B, C and EDP: timings, M/N, DDI function control, MSA.
    let transcoders: [u32; 4] = [0x60000, 0x61000, 0x62000, 0x6F000];
    let timing: [(u32, &str); 18] = [
        (0x00, "HTOTAL"),
        (0x04, "HBLANK"),
        (0x08, "HSYNC"),
        (0x0C, "VTOTAL"),
        (0x10, "VBLANK"),
        (0x14, "VSYNC"),
        (0x1C, "PIPESRC"),
        (0x20, "BCLRPAT"),
        (0x28, "VSYNCSHIFT"),
        (0x2C, "PIPE_MULT"),
        (0x30, "DATA_M1"),
        (0x34, "DATA_N1"),
        (0x38, "DATA_M2"),
        (0x3C, "DATA_N2"),
        (0x40, "LINK_M1"),
        (0x44, "LINK_N1"),
        (0x48, "LINK_M2"),
        (0x4C, "LINK_N2"),
    ];
    let mut t = 0;
    while t < transcoders.len() {
        let base = transcoders[t];
        let mut i = 0;
        while i < timing.len() {
            let (o, n) = timing[i];
            b = b.push(RegDesc::new(base + o, n));
            i += 1;
        }
        b = b
            .push(RegDesc::new(base + 0x400, "TRANS_DDI_FUNC_CTL"))
            .push(RegDesc::new(base + 0x410, "TRANS_MSA_MISC"));
        t += 1;
    }
    b = b.push(RegDesc::new(0x7F008, "PIPECONF_EDP"));
    // Per pipe: misc, bottom colour, scanline; sprite planes 2 and 3 (the primary's extra
    // registers too); watermarks and DDB allocation of the planes and the cursor.
    let mut p: u32 = 0;
    while p < 3 {
        let pipe = 0x1000 * p;
        b = b
            .push(derived_ro(0x70000 + pipe, "PIPE_SCANLINE"))
            .push(RegDesc::new(0x70030 + pipe, "PIPE_MISC"))
            .push(RegDesc::new(0x70034 + pipe, "PIPE_BOTTOM_COLOR"));
        let mut l: u32 = 0;
        while l < 8 {
            b = b.push(RegDesc::new(0x70140 + pipe + 4 * l, "CUR_WM"));
            l += 1;
        }
        b = b
            .push(RegDesc::new(0x70168 + pipe, "CUR_WM_TRANS"))
            .push(RegDesc::new(0x7017C + pipe, "CUR_BUF_CFG"));
        let mut plane: u32 = 0;
        while plane < 3 {
            let base = 0x70180 + pipe + 0x100 * plane;
            if plane > 0 {
                b = b
                    .push(RegDesc::new(base, "PLANE_CTL"))
                    .push(RegDesc::new(base + 0x08, "PLANE_STRIDE"))
                    .push(RegDesc::new(base + 0x0C, "PLANE_POS"))
                    .push(RegDesc::new(base + 0x10, "PLANE_SIZE"))
                    .push(RegDesc::new(base + 0x1C, "PLANE_SURF").with_gmadr(GM_PAGE))
                    .push(RegDesc::new(base + 0x24, "PLANE_OFFSET"))
                    .push(derived_ro(base + 0x2C, "PLANE_SURFLIVE"));
            }
            b = b
                .push(RegDesc::new(base + 0x14, "PLANE_KEYVAL"))
                .push(RegDesc::new(base + 0x18, "PLANE_KEYMSK"))
                .push(RegDesc::new(base + 0x20, "PLANE_KEYMAX"))
                .push(RegDesc::new(base + 0x40, "PLANE_AUX_DIST"))
                .push(RegDesc::new(base + 0x44, "PLANE_AUX_OFFSET"));
            let mut l: u32 = 0;
            while l < 8 {
                b = b.push(RegDesc::new(base + 0xC0 + 4 * l, "PLANE_WM"));
                l += 1;
            }
            b = b
                .push(RegDesc::new(base + 0xE8, "PLANE_WM_TRANS"))
                .push(RegDesc::new(base + 0xF8, "PLANE_NV12_BUF_CFG"))
                .push(RegDesc::new(base + 0xFC, "PLANE_BUF_CFG"));
            plane += 1;
        }
        // Pipe scalers: two on pipes A and B, one on C.
        let scalers = if p == 2 { 1 } else { 2 };
        let mut k: u32 = 0;
        while k < scalers {
            let sb = 0x68180 + 0x800 * p + 0x100 * k;
            b = b
                .push(RegDesc::new(sb - 0x20, "PS_PWR_GATE"))
                .push(RegDesc::new(sb - 0x10, "PS_WIN_POS"))
                .push(RegDesc::new(sb - 0x0C, "PS_WIN_SZ"))
                .push(RegDesc::new(sb, "PS_CTRL"))
                .push(RegDesc::new(sb + 0x04, "PS_VPHASE"))
                .push(RegDesc::new(sb + 0x14, "PS_HPHASE"));
            k += 1;
        }
        p += 1;
    }
    // DDI A..E: buffer control, AUX channel (control and five data dwords), DP transport.
    let mut port: u32 = 0;
    while port < 5 {
        let base = 0x64000 + 0x100 * port;
        b = b.push(RegDesc::new(base, "DDI_BUF_CTL"));
        let mut d: u32 = 0;
        while d < 6 {
            b = b.push(RegDesc::new(
                base + 0x10 + 4 * d,
                if d == 0 {
                    "DP_AUX_CH_CTL"
                } else {
                    "DP_AUX_CH_DATA"
                },
            ));
            d += 1;
        }
        b = b
            .push(RegDesc::new(base + 0x40, "DP_TP_CTL"))
            .push(RegDesc::new(base + 0x44, "DP_TP_STATUS"));
        port += 1;
    }
    let misc: [(u32, &str); 26] = [
        (0x42000, "DISPLAY_CHICKEN1"),
        (0x42004, "DISPLAY_CHICKEN2"),
        (0x45008, "DBUF_CTL"),
        (0x45400, "PWR_WELL_CTL1"),
        (0x45404, "PWR_WELL_CTL2"),
        (0x45408, "PWR_WELL_CTL3"),
        (0x4540C, "PWR_WELL_CTL4"),
        (0x46000, "CDCLK_CTL"),
        (0x46010, "LCPLL1_CTL"),
        (0x46014, "LCPLL2_CTL"),
        (0x46040, "WRPLL_CTL1"),
        (0x46060, "WRPLL_CTL2"),
        (0x6C040, "DPLL1_CFGCR1"),
        (0x6C044, "DPLL1_CFGCR2"),
        (0x6C048, "DPLL2_CFGCR1"),
        (0x6C04C, "DPLL2_CFGCR2"),
        (0x6C050, "DPLL3_CFGCR1"),
        (0x6C054, "DPLL3_CFGCR2"),
        (0x6C058, "DPLL_CTRL1"),
        (0x6C05C, "DPLL_CTRL2"),
        (0xC2000, "SOUTH_CHICKEN1"),
        (0xC2004, "SOUTH_CHICKEN2"),
        (0xC4030, "PCH_PORT_HOTPLUG"),
        (0xC7204, "PCH_PP_CONTROL"),
        (0xC7208, "PCH_PP_ON_DELAYS"),
        (0xC720C, "PCH_PP_OFF_DELAYS"),
    ];
    let mut i = 0;
    while i < misc.len() {
        let (o, n) = misc[i];
        b = b.push(RegDesc::new(o, n));
        i += 1;
    }
    b = b
        .push(derived_ro(0x6C060, "DPLL_STATUS"))
        .push(derived_ro(0xC2014, "SFUSE_STRAP"))
        .push(derived_ro(0xC7200, "PCH_PP_STATUS"))
        .push(RegDesc::new(0xC7210, "PCH_PP_DIVISOR"));
    // GMBUS 0..5.
    let mut g: u32 = 0;
    while g < 6 {
        b = b.push(RegDesc::new(0xC5100 + 4 * g, "GMBUS"));
        g += 1;
    }
    // Panel self refresh interrupts: mask, and identity bits the guest clears by writing 1s.
    b = b
        .push(RegDesc::new(0x64834, "EDP_PSR_IMR"))
        .push(RegDesc::new(0x64838, "EDP_PSR_IIR").with_flags(RegFlags::W1C));
    // Display-engine registers beside the interrupt blocks.
    b.push(RegDesc::new(0x44030, "DIGITAL_PORT_HOTPLUG_CNTRL"))
        .push(RegDesc::new(0x44040, "ERR_INT"))
        .push(RegDesc::new(0x44050, "DERRMR"))
        .push(RegDesc::new(0x44070, "DE_44070"))
        .push(RegDesc::new(0x44484, "DE_44484"))
        .push(RegDesc::new(0x4448C, "DE_4448C"))
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
    b = display_desktop(b);
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

#[allow(
    long_running_const_eval,
    reason = "the table is assembled once, at compile time"
)]
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
    fn every_reporting_irq_block_is_in_the_register_table() {
        assert!(SKL.find(MASTER_IRQ).is_some());
        let mut bits = 0;
        for b in GEN9_IRQ_BLOCKS {
            for r in 0..4 {
                assert!(
                    SKL.find(b.base + 4 * r).is_some(),
                    "{:#x} + {}",
                    b.base,
                    4 * r
                );
            }
            assert_eq!(bits & b.master_bit, 0, "one master bit per block");
            assert_eq!(b.master_bit & MASTER_IRQ_ENABLE, 0);
            bits |= b.master_bit;
        }
    }

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
            // the device model changed them: only masked registers whose read-only bits
            // the device model keeps consistent (RESET_CTL: ready follows request) have them.
            if r.is_migrated() && r.ro_mask != 0 {
                assert!(r.flags.contains(RegFlags::MODE_MASK), "{}", r.name);
                assert_eq!(r.name, "RESET_CTL");
            }
        }
    }

    #[test]
    fn table_counts_and_event_consistency() {
        assert_eq!(SKL_REGS.len(), 1335);
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
            5 * 2 + 2 + 23 + 3 + 64 + 1 + 3 + 5
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
        for o in (0x24D0..=0x24FC).step_by(4).chain([0x2248, 0xB118]) {
            let r = SKL.find(o).unwrap();
            assert_eq!((r.flags, r.ro_mask), (RegFlags::NONE, 0), "{o:#x}");
            assert!(r.is_migrated(), "{o:#x}");
        }
        // TR-TT is part of the render context image.
        for o in (0x4DE0..=0x4DF4).step_by(4) {
            let r = SKL.find(o).unwrap();
            assert_eq!((r.flags, r.ro_mask), (RegFlags::IN_CONTEXT, 0), "{o:#x}");
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
    fn gvt_gen9_coverage_and_semantics() {
        for base in ENGINES {
            for (d, name) in [
                (0x28, "EXCC"),
                (0x9C, "MI_MODE"),
                (0xC0, "INSTPM"),
                (0xD0, "RESET_CTL"),
                (0xD4, "CSFE_CHICKEN1"),
            ] {
                let r = SKL.find(base + d).unwrap();
                assert_eq!(r.name, name);
                assert!(r.flags.contains(RegFlags::MODE_MASK), "{:#x}", base + d);
                assert!(r.is_migrated());
            }
            // A masked guest write to CSFE_CHICKEN1 changes only the selected bits.
            let csfe = SKL.find(base + 0xD4).unwrap();
            assert_eq!(csfe.apply_write(0x0003, 0x0004_0004), 0x0007);
            assert_eq!(csfe.apply_write(0x0007, 0x0001_0000), 0x0006);
            assert_eq!(SKL.find(base + 0xD0).unwrap().ro_mask, 0xFFFC);
            for d in [0x40, 0x44] {
                assert_eq!(SKL.find(base + d).unwrap().flags, RegFlags::NONE);
            }
            let bb = SKL.find(base + 0x140).unwrap();
            assert_eq!((bb.name, bb.gm_mask), ("BB_ADDR", GM_PAGE));
            assert_eq!(SKL.find(base + 0x5C).unwrap().save, SaveClass::FromHardware);
        }
        // INSTPM is in the render context image only.
        assert!(
            SKL.find(0x20C0)
                .unwrap()
                .flags
                .contains(RegFlags::IN_CONTEXT)
        );
        assert!(
            !SKL.find(0x120C0)
                .unwrap()
                .flags
                .contains(RegFlags::IN_CONTEXT)
        );
        for o in [
            0x2088, 0x2090, 0x20DC, 0x20E0, 0x2120, 0x2124, 0x2470, 0xE4F4, 0x4030,
        ] {
            assert!(
                SKL.find(o).unwrap().flags.contains(RegFlags::MODE_MASK),
                "{o:#x}"
            );
        }
        for o in (0x2300..0x2358).step_by(4).chain([0xB008, 0xB11C, 0x4DFC]) {
            assert!(SKL.find(o).unwrap().is_migrated(), "{o:#x}");
        }
        for o in [0x44030, 0x44040, 0x44050, 0x44070, 0x44484, 0x4448C] {
            assert!(SKL.find(o).unwrap().is_migrated(), "{o:#x}");
        }
        let gamw = SKL.find(0x4080).unwrap();
        assert!(gamw.replay && gamw.is_migrated());
        // Forcewake: masked requests, derived acknowledgements.
        for (req, ack) in [(0xA278, 0x0D84), (0xA270, 0x0D88), (0xA188, 0x13_0044)] {
            assert!(SKL.find(req).unwrap().flags.contains(RegFlags::MODE_MASK));
            assert_eq!(SKL.find(ack).unwrap().save, SaveClass::Derived);
        }
        // TLB invalidation ports read back 0 and never migrate.
        for o in (0x4260..=0x4270).step_by(4) {
            assert!(SKL.find(o).unwrap().flags.contains(RegFlags::WRITE_ONLY));
        }
        // Display: sprite planes, watermarks, scalers (two on A and B, one on C), DDI/AUX.
        for pipe in 0..3u32 {
            let p = 0x1000 * pipe;
            for o in [
                0x70280, 0x7029C, 0x70380, 0x7039C, 0x70240, 0x7027C, 0x70140, 0x7017C,
            ] {
                assert!(SKL.find(o + p).is_some(), "{:#x}", o + p);
            }
            assert!(SKL.find(0x60000 + p).is_some());
            assert_eq!(SKL.find(0x68180 + 0x800 * pipe).unwrap().name, "PS_CTRL");
            assert_eq!(SKL.find(0x68280 + 0x800 * pipe).is_some(), pipe < 2);
        }
        assert_eq!(SKL.find(0x7039C).unwrap().gm_mask, GM_PAGE);
        for port in 0..5u32 {
            assert_eq!(
                SKL.find(0x64010 + 0x100 * port).unwrap().name,
                "DP_AUX_CH_CTL"
            );
        }
        let psr_iir = SKL.find(0x64838).unwrap();
        assert!(psr_iir.flags.contains(RegFlags::W1C));
        assert_eq!(psr_iir.apply_write(0b111, 0b101), 0b010);
        let display = SKL_REGS
            .iter()
            .filter(|r| {
                (0x4_0000..0x8_0000).contains(&r.offset) || (0xC_0000..0xD_0000).contains(&r.offset)
            })
            .filter(|r| !(0x4_4000..0x4_4500).contains(&r.offset) && !crate::in_pvinfo(r.offset))
            .count();
        assert_eq!(display, 465);
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
