//! The guest of the KVM reference embedding: a bare-metal x86-64 driver of the vGPU.
//!
//! Two parts:
//! - [`abi`]: what the VMM and the guest agree on (guest-physical layout, the boot-information
//!   page, I/O ports, report records). The VMM (`examples/kvm-vmm`) uses the same constants.
//! - [`Driver`]: the vGPU driver, written against a small [`Platform`] trait (MMIO, RAM, ports), so
//!   the same code runs in the VM (the binary of this package, built for `x86_64-unknown-none`)
//!   and can be driven on a host.
//!
//! What the driver does, the way i915 does it on a GVT-g vGPU: it finds the vGPU in PCI config
//! space (ECAM) and through PVINFO, maps the graphics memory its workload uses by writing GGTT
//! entries through BAR0 as two 32-bit halves, builds a 4-level PPGTT in its own memory and
//! announces it, writes the context image, ring and batch buffers, submits through the ELSP one
//! dword at a time, and waits for each frame (the sequence number in the status page and the
//! completion entry of the CSB) before the next. Its results depend only on its progress, never
//! on timing: a migrated run and a never-migrated run of N frames end in the same state. It checks
//! every frame the GPU rendered (sampled render-target pages against the fill pattern, the last
//! hot-set store, the fences) and reports through the debug port.
#![no_std]
#![forbid(unsafe_code)]
#![allow(
    clippy::cast_possible_truncation,
    reason = "a driver splits addresses and values into the 32-bit registers and dwords of the \
              hardware: the truncation is the encoding"
)]

use engines::{AddressingMode, ContextDescriptor, EngineId, HwspLayout, LrcState, RingRegs, reg};
use sim::{Rng, cmd};

/// The VMM/guest contract.
pub mod abi {
    /// Guest-physical address of the GDT the VMM writes.
    pub const GDT: u64 = 0x1000;
    /// Guest-physical address of the PML4 (identity map of the low 4 GiB with 2 MiB pages).
    pub const PML4: u64 = 0x2000;
    /// The PDPT.
    pub const PDPT: u64 = 0x3000;
    /// The four page directories (one per GiB).
    pub const PD: u64 = 0x4000;
    /// The boot-information page.
    pub const BOOT_INFO: u64 = 0x9000;
    /// Where the guest image is linked and loaded.
    pub const IMAGE: u64 = 0x20_0000;
    /// Lowest address of the guest's stack.
    pub const STACK_BOTTOM: u64 = 0x80_0000;
    /// Top of the guest's stack (it grows down from here).
    pub const STACK_TOP: u64 = 0x100_0000;
    /// First guest frame address the driver may use for graphics memory and page tables.
    pub const POOL: u64 = 0x100_0000;
    /// PCI ECAM window (bus 0); the vGPU is device 0, function 0.
    pub const ECAM: u64 = 0xB000_0000;
    /// Size of the ECAM window the VMM traps (bus 0).
    pub const ECAM_SIZE: u64 = 0x10_0000;
    /// Where the VMM places BAR0 (registers, then the GGTT window at 8 MiB).
    pub const BAR0: u64 = 0xC000_0000;
    /// Size of BAR0.
    pub const BAR0_SIZE: u64 = 16 << 20;

    /// Port of report records: four 32-bit writes `[kind, frame, value low, value high]`.
    pub const PORT_REPORT: u16 = 0x500;
    /// Port of the guest clock, microseconds since boot, low half (32-bit read).
    pub const PORT_CLOCK_LO: u16 = 0x510;
    /// Port of the guest clock, high half (read after the low half).
    pub const PORT_CLOCK_HI: u16 = 0x514;
    /// Port the guest writes when it has finished (the vCPU stops there).
    pub const PORT_EXIT: u16 = 0x520;
    /// Paravirtual sleep: the guest writes the guest-clock time (µs) it waits for, low half to
    /// this port, then the high half to `PORT_SLEEP + 4`; the VMM lets the vCPU sleep up to then
    /// (at most a millisecond at a time). Only timing depends on it, never state.
    pub const PORT_SLEEP: u16 = 0x530;
    /// The vector the VMM's MSIs from the vGPU carry (delivered through the local APIC).
    pub const GPU_VECTOR: u8 = 0x40;
    /// The local APIC's MMIO base (in-kernel APIC).
    pub const LAPIC: u64 = 0xFEE0_0000;
    /// Debug console: one byte per write (panic messages).
    pub const PORT_CONSOLE: u16 = 0xE9;

    /// Report: the vGPU was found and set up; value = PVINFO vGPU id.
    pub const REPORT_BOOT: u32 = 1;
    /// Report: a frame completed and checked; value = the frame's checksum.
    pub const REPORT_FRAME: u32 = 2;
    /// Report: a frame failed its check; value = what failed (a `CHECK_*` code).
    pub const REPORT_BAD: u32 = 3;
    /// Report: every frame done; frame = frames, value = checksum over all frames.
    pub const REPORT_DONE: u32 = 4;
    /// Report: the guest could not go on (a `FAIL_*` code in value).
    pub const REPORT_FAIL: u32 = 5;

    /// Check failure: a sampled render-target dword differs from the fill pattern.
    pub const CHECK_FILL: u64 = 1;
    /// Check failure: the last hot-set store of the frame is not in memory.
    pub const CHECK_STORE: u64 = 2;
    /// Check failure: a fence (PIPE_CONTROL or MI_FLUSH_DW post-sync write) is wrong.
    pub const CHECK_FENCE: u64 = 3;
    /// Check failure: the register loaded by MI_LOAD_REGISTER_IMM reads back wrong.
    pub const CHECK_LRI: u64 = 4;
    /// Check failure: the blit's colour is not on the surface.
    pub const CHECK_BLIT: u64 = 5;

    /// Failure: no vGPU in config space.
    pub const FAIL_NO_DEVICE: u64 = 1;
    /// Failure: the PVINFO magic is wrong.
    pub const FAIL_PVINFO: u64 = 2;
    /// Failure: the boot information is missing or out of range.
    pub const FAIL_BOOT_INFO: u64 = 3;
    /// Failure: the vGPU's graphics memory or the guest RAM is too small for the workload.
    pub const FAIL_TOO_SMALL: u64 = 4;

    /// Magic of the boot-information page (`KVMGUEST`).
    pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"KVMGUEST");

    /// Byte offsets of the boot-information fields (each a little-endian u64).
    pub mod boot {
        /// [`super::BOOT_MAGIC`].
        pub const MAGIC: u64 = 0;
        /// Guest RAM size in bytes (RAM is `0..ram`).
        pub const RAM: u64 = 8;
        /// Frames to render.
        pub const FRAMES: u64 = 16;
        /// Seed of the workload's choices.
        pub const SEED: u64 = 24;
        /// Profile: render-target pages.
        pub const RT_PAGES: u64 = 32;
        /// Profile: pages filled per frame.
        pub const FILL_PAGES: u64 = 40;
        /// Profile: hot-set pages.
        pub const HOT_PAGES: u64 = 48;
        /// Profile: remap a tail page every this many frames (0 = never).
        pub const REMAP_EVERY: u64 = 56;
        /// Profile: content changes every this many frames.
        pub const REPEAT_EVERY: u64 = 64;
        /// Profile: frame period in ns (0 = unpaced).
        pub const FRAME_NS: u64 = 72;
        /// Profile: scattered stores per frame.
        pub const STORES: u64 = 80;
        /// Profile: CPU upload writes per frame.
        pub const CPU_WRITES: u64 = 88;
        /// Profile flags: bit 0 mirror, bit 1 blits.
        pub const FLAGS: u64 = 96;
        /// Bytes of the page the VMM fills.
        pub const LEN: u64 = 104;
    }
}

/// What the driver needs from the machine it runs on.
pub trait Platform {
    /// A 32-bit MMIO read.
    fn mmio_read32(&mut self, gpa: u64) -> u32;
    /// A 64-bit MMIO read.
    fn mmio_read64(&mut self, gpa: u64) -> u64;
    /// A 32-bit MMIO write.
    fn mmio_write32(&mut self, gpa: u64, value: u32);
    /// Read a dword of RAM (a fresh read: the GPU writes RAM behind the CPU's back).
    fn ram_read32(&mut self, gpa: u64) -> u32;
    /// Read a qword of RAM (fresh, as `ram_read32`).
    fn ram_read64(&mut self, gpa: u64) -> u64;
    /// Write bytes of RAM.
    fn ram_write(&mut self, gpa: u64, data: &[u8]);
    /// Send a report record.
    fn report(&mut self, kind: u32, frame: u32, value: u64);
    /// Microseconds since boot (the guest clock; continues across a migration).
    fn clock_us(&mut self) -> u64;
    /// Sleep until the guest clock reaches `us` or a little while has passed.
    fn sleep_until(&mut self, us: u64);
    /// Wait for an interrupt (or return at once if one is pending).
    fn wait_interrupt(&mut self);
}

/// The workload as the boot-information page gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Frames to render.
    pub frames: u64,
    /// Seed.
    pub seed: u64,
    /// Render-target pages.
    pub rt_pages: u64,
    /// Pages filled per frame.
    pub fill_pages: u64,
    /// Hot-set pages.
    pub hot_pages: u64,
    /// Remap a tail page every this many frames (0 = never).
    pub remap_every: u64,
    /// Content changes every this many frames.
    pub repeat_every: u64,
    /// Frame period, ns (0 = unpaced).
    pub frame_ns: u64,
    /// Scattered stores per frame.
    pub stores: u64,
    /// CPU upload writes per frame.
    pub cpu_writes: u64,
    /// Each fill is also written to a mirror surface.
    pub mirror: bool,
    /// Each frame issues a colour fill and a scroll blit.
    pub blits: bool,
}

/// Offsets from the aperture base, as the model driver uses them.
mod layout {
    pub(crate) const CONTEXT: u64 = 0x0000;
    pub(crate) const HWSP: u64 = 0x2000;
    pub(crate) const RING: u64 = 0x4000;
    pub(crate) const RING_PAGES: u32 = 4;
    pub(crate) const BATCH: u64 = 0x8000;
    pub(crate) const BATCH_SLOT_PAGES: u64 = 4;
    pub(crate) const BATCH_SLOTS: u64 = 4;
    pub(crate) const UPLOAD: u64 = 0x1_8000;
    pub(crate) const UPLOAD_PAGES: u64 = 8;
    pub(crate) const APERTURE_PAGES: u64 = (UPLOAD + UPLOAD_PAGES * 4096) / 4096;
    pub(crate) const SEQNO: u64 = 0x100;
    pub(crate) const FENCE: u64 = 0x180;
}

const TAIL_PAGES: u64 = 64;
const SPARE_PAGES: u64 = 64;
const PPGTT_PAGES: u64 = 16;
const CONTEXT_ID: u32 = 1;
const PIPECONF_A: u32 = 0x70008;
const DSPSURF_A: u32 = 0x7019C;
const GT0_IMR: u32 = 0x44304;
const GT0_IIR: u32 = 0x44308;
const GT0_IER: u32 = 0x4430C;
/// The render engine's context-switch interrupt (GT0 bit 8).
const RCS_IRQ: u32 = 1 << 8;
/// The register MI_LOAD_REGISTER_IMM loads each frame (RCS + 0x98).
const LRI_REG: u32 = 0x2098;
/// HWSP byte offset of the CSB write pointer (gen9 keeps it where gen8 does).
const HWSP_CSB_WP: u64 = 4 * HwspLayout::Gen8.write_ptr_dword() as u64;
/// Batch dwords the driver can build (4 slot pages).
const BATCH_DWORDS: usize = 4096;

/// The driver's state: everything lives here (on the guest's stack) and in guest RAM.
#[derive(Debug)]
pub struct Driver {
    w: Workload,
    bar0: u64,
    aperture: u64,
    hidden: u64,
    /// Guest-physical address backing the first aperture page (the aperture pages are contiguous).
    ap_frames: u64,
    /// Guest-physical address backing the first hidden page (render targets, tail, hot set).
    hid_frames: u64,
    spare_frames: u64,
    ppgtt_tables: u64,
    rng: Rng,
    rt_cursor: u64,
    tail_next: u64,
    spare_next: u64,
    ring_tail: u32,
    csb_seen: u8,
    /// Checksum over every frame's checked samples.
    pub total: u64,
}

/// Samples a frame check remembers (fill pieces).
const MAX_PIECES: usize = 16;

/// What a frame wrote, for checking it after it completed.
struct FrameLog {
    pieces: [(u64, u64, u32); MAX_PIECES],
    n: usize,
    last_store: Option<(u64, u32)>,
    tail_fill: Option<(u64, u32)>,
    blit: Option<(u64, u32)>,
}

fn rd(p: &mut dyn Platform, info: u64, field: u64) -> u64 {
    p.ram_read64(info + field)
}

/// Fold a value into a checksum (FNV-1a over the value's bytes, as one 64-bit step per value).
fn fold(acc: u64, v: u64) -> u64 {
    (acc ^ v).wrapping_mul(0x0000_0100_0000_01B3)
}

impl Workload {
    /// Read the workload from the boot-information page.
    pub fn from_boot_info(p: &mut dyn Platform) -> Option<Workload> {
        use abi::boot;
        let b = abi::BOOT_INFO;
        if rd(p, b, boot::MAGIC) != abi::BOOT_MAGIC {
            return None;
        }
        let flags = rd(p, b, boot::FLAGS);
        let w = Workload {
            frames: rd(p, b, boot::FRAMES),
            seed: rd(p, b, boot::SEED),
            rt_pages: rd(p, b, boot::RT_PAGES),
            fill_pages: rd(p, b, boot::FILL_PAGES),
            hot_pages: rd(p, b, boot::HOT_PAGES),
            remap_every: rd(p, b, boot::REMAP_EVERY),
            repeat_every: rd(p, b, boot::REPEAT_EVERY),
            frame_ns: rd(p, b, boot::FRAME_NS),
            stores: rd(p, b, boot::STORES),
            cpu_writes: rd(p, b, boot::CPU_WRITES),
            mirror: flags & 1 != 0,
            blits: flags & 2 != 0,
        };
        let sane = (1..1 << 20).contains(&w.rt_pages)
            && (1..=w.rt_pages).contains(&w.fill_pages)
            && (1..1 << 16).contains(&w.hot_pages)
            && w.stores < 1 << 10
            && w.cpu_writes < 1 << 10
            && w.repeat_every >= 1;
        sane.then_some(w)
    }
}

impl Driver {
    fn reg_write(&self, p: &mut dyn Platform, off: u32, v: u32) {
        p.mmio_write32(self.bar0 + u64::from(off), v);
    }

    fn gm(&self, off: u64) -> u64 {
        self.aperture + off
    }

    /// Guest-physical address of an aperture offset.
    fn ap_gpa(&self, off: u64) -> u64 {
        self.ap_frames + off
    }

    fn hot_gm(&self) -> u64 {
        self.hidden + (self.w.rt_pages + TAIL_PAGES) * 4096
    }

    /// Write a GGTT entry as i915 does on 32-bit paths: low dword, then high dword.
    fn ggtt_write(&self, p: &mut dyn Platform, gm: u64, frame_gpa: u64) {
        let entry = frame_gpa | 1; // present; address bits 38:12
        let at = self.bar0 + u64::from(vgpu::instance::GGTT_WINDOW) + (gm >> 12) * 8;
        p.mmio_write32(at, (entry & 0xFFFF_FFFF) as u32);
        p.mmio_write32(at + 4, (entry >> 32) as u32);
    }

    /// Boot: find the vGPU, map the graphics memory the workload uses, set up the status page,
    /// execlists, interrupts, display, the PPGTT and the context image.
    pub fn boot(p: &mut dyn Platform) -> Result<Driver, u64> {
        let w = Workload::from_boot_info(p).ok_or(abi::FAIL_BOOT_INFO)?;
        let ram = rd(p, abi::BOOT_INFO, abi::boot::RAM);
        // PCI: vendor 0x8086 at ECAM offset 0, BAR0 (64-bit memory) at 0x10.
        let id = p.mmio_read32(abi::ECAM);
        if id & 0xFFFF != 0x8086 {
            return Err(abi::FAIL_NO_DEVICE);
        }
        let bar0 = u64::from(p.mmio_read32(abi::ECAM + 0x10) & !0xF)
            | u64::from(p.mmio_read32(abi::ECAM + 0x14)) << 32;
        let pv = u64::from(mmio::PVINFO_BASE);
        if p.mmio_read64(bar0 + pv) != mmio::PVINFO_MAGIC {
            return Err(abi::FAIL_PVINFO);
        }
        let off = |o: u32| bar0 + u64::from(o);
        let aperture = u64::from(p.mmio_read32(off(mmio::pvinfo_off::APERTURE_BASE)));
        let ap_size = u64::from(p.mmio_read32(off(mmio::pvinfo_off::APERTURE_SIZE)));
        let hidden = u64::from(p.mmio_read32(off(mmio::pvinfo_off::HIDDEN_BASE)));
        let hid_size = u64::from(p.mmio_read32(off(mmio::pvinfo_off::HIDDEN_SIZE)));
        let vgt_id = p.mmio_read32(off(mmio::pvinfo_off::VGT_ID));
        let hid_pages = w.rt_pages + TAIL_PAGES + w.hot_pages;
        // Frames: aperture pages, hidden pages, spares for remaps, four page-table pages.
        let ap_frames = abi::POOL;
        let hid_frames = ap_frames + layout::APERTURE_PAGES * 4096;
        let spare_frames = hid_frames + hid_pages * 4096;
        let ppgtt_tables = spare_frames + SPARE_PAGES * 4096;
        if ap_size < layout::APERTURE_PAGES * 4096
            || hid_size < hid_pages * 4096
            || ppgtt_tables + 4 * 4096 > ram
        {
            return Err(abi::FAIL_TOO_SMALL);
        }
        let mut d = Driver {
            w,
            bar0,
            aperture,
            hidden,
            ap_frames,
            hid_frames,
            spare_frames,
            ppgtt_tables,
            rng: Rng::new(w.seed),
            rt_cursor: 0,
            tail_next: 0,
            spare_next: 0,
            ring_tail: 0,
            csb_seen: engines::CSB_PTR_RESET,
            total: 0xCBF2_9CE4_8422_2325,
        };
        for i in 0..layout::APERTURE_PAGES {
            d.ggtt_write(p, aperture + i * 4096, ap_frames + i * 4096);
        }
        for i in 0..hid_pages {
            d.ggtt_write(p, hidden + i * 4096, hid_frames + i * 4096);
        }
        let rcs = EngineId::Rcs;
        d.reg_write(p, rcs.reg(reg::HWS_PGA), d.gm(layout::HWSP) as u32);
        d.reg_write(p, rcs.reg(reg::RING_MODE), 0x8000_8000);
        d.reg_write(p, GT0_IMR, !RCS_IRQ);
        d.reg_write(p, GT0_IER, RCS_IRQ);
        d.reg_write(p, mmio::MASTER_IRQ, mmio::MASTER_IRQ_ENABLE);
        d.reg_write(p, PIPECONF_A, 1 << 31);
        d.reg_write(p, DSPSURF_A, hidden as u32);
        let pml4 = d.create_ppgtt(p);
        let state = LrcState {
            pdp: [pml4, 0, 0, 0],
            ctx_ctrl: 0x0009_0009,
            ring: RingRegs {
                head: 0,
                tail: 0,
                start: d.gm(layout::RING) as u32,
                ctl: ((layout::RING_PAGES - 1) << 12) | 1,
            },
            ..LrcState::default()
        };
        let mut image = [0u8; engines::LRC_PAGE_SIZE];
        state.emit(rcs, &mut image);
        p.ram_write(d.ap_gpa(layout::CONTEXT + engines::LRC_STATE_PAGE), &image);
        p.report(abi::REPORT_BOOT, 0, u64::from(vgt_id));
        Ok(d)
    }

    /// A 4-level PPGTT mapping the first hot-set pages writable at PPGTT address `i * 4096`,
    /// announced through PVINFO (root in `pdp[0]`, then `g2v_notify = 4`).
    fn create_ppgtt(&mut self, p: &mut dyn Platform) -> u64 {
        let t = |k: u64| self.ppgtt_tables + k * 4096;
        let entry = |gpa: u64| gpa | 0b11; // present, writable
        p.ram_write(t(0), &entry(t(1)).to_le_bytes());
        p.ram_write(t(1), &entry(t(2)).to_le_bytes());
        p.ram_write(t(2), &entry(t(3)).to_le_bytes());
        let hot = self.hid_frames + (self.w.rt_pages + TAIL_PAGES) * 4096;
        for i in 0..PPGTT_PAGES.min(self.w.hot_pages) {
            p.ram_write(t(3) + i * 8, &entry(hot + i * 4096).to_le_bytes());
        }
        let root = t(0);
        self.reg_write(p, mmio::pvinfo_off::PDP0_LO, root as u32);
        self.reg_write(p, mmio::pvinfo_off::PDP0_LO + 4, (root >> 32) as u32);
        self.reg_write(p, mmio::pvinfo_off::G2V_NOTIFY, 4);
        root
    }

    /// Render every frame, each checked after it completed, then report the total.
    pub fn run(&mut self, p: &mut dyn Platform) {
        for frame in 0..self.w.frames {
            if self.w.frame_ns != 0 {
                let due_us = frame.saturating_mul(self.w.frame_ns) / 1000;
                while p.clock_us() < due_us {
                    p.sleep_until(due_us);
                }
            }
            let log = self.frame(p, frame);
            self.wait(p, frame);
            match self.check(p, frame, &log) {
                Ok(sum) => {
                    self.total = fold(self.total, sum);
                    p.report(abi::REPORT_FRAME, frame as u32, sum);
                }
                Err(code) => p.report(abi::REPORT_BAD, frame as u32, code),
            }
        }
        p.report(abi::REPORT_DONE, self.w.frames as u32, self.total);
    }

    /// Wait for frame `frame`: its sequence number in the status page, then the CSB's completion
    /// entry (two entries per submission: idle-to-active, then complete); acknowledge it. The
    /// vCPU sleeps until the vGPU's interrupt: each wake-up clears the interrupt (IIR is
    /// write-1-to-clear) before it looks again, so a completion after the look raises a new one;
    /// one last clear after the frame leaves the interrupt state independent of how often it
    /// woke.
    fn wait(&mut self, p: &mut dyn Platform, frame: u64) {
        let hwsp = self.ap_gpa(layout::HWSP);
        let want = (frame + 1) as u32;
        let wp = ((2 * (frame + 1) - 1) % 6) as u32;
        let done = |p: &mut dyn Platform| {
            p.ram_read32(hwsp + layout::SEQNO) == want && p.ram_read32(hwsp + HWSP_CSB_WP) == wp
        };
        while !done(p) {
            self.reg_write(p, GT0_IIR, RCS_IRQ);
            if done(p) {
                break;
            }
            p.wait_interrupt();
        }
        self.reg_write(p, GT0_IIR, RCS_IRQ);
        self.csb_seen = wp as u8;
        let v = (0x0700 << 16) | (wp << 8);
        self.reg_write(p, EngineId::Rcs.reg(reg::CSB_PTR), v);
    }

    /// Build and submit one frame, then the remap, the flip and the CPU uploads.
    fn frame(&mut self, p: &mut dyn Platform, frame: u64) -> FrameLog {
        let w = self.w;
        let mut log = FrameLog {
            pieces: [(0, 0, 0); MAX_PIECES],
            n: 0,
            last_store: None,
            tail_fill: None,
            blit: None,
        };
        let mut batch = [0u32; BATCH_DWORDS];
        let mut n = 0usize;
        let mut push = |dws: &[u32]| {
            for v in dws {
                if let Some(slot) = batch.get_mut(n) {
                    *slot = *v;
                    n += 1;
                }
            }
        };
        let mut seed = self.rng.next_u64() as u32;
        if w.repeat_every > 1 {
            seed = (frame / w.repeat_every).wrapping_mul(0x9E37_79B9) as u32;
        }
        let mut left = w.fill_pages;
        let mut piece = 0u32;
        while left > 0 {
            let start = self.rt_cursor % w.rt_pages;
            let cnt = left.min(w.rt_pages - start).min(4095);
            let s = seed ^ piece.wrapping_mul(0x9E37_79B9);
            piece += 1;
            push(&cmd::sim_fill(self.hidden + start * 4096, cnt as u16, s));
            if let Some(slot) = log.pieces.get_mut(log.n) {
                *slot = (start, cnt, s);
                log.n += 1;
            }
            let mirror = (start + w.rt_pages / 2) % w.rt_pages;
            if w.mirror && mirror + cnt <= w.rt_pages {
                push(&cmd::sim_fill(self.hidden + mirror * 4096, cnt as u16, s));
            }
            self.rt_cursor = (start + cnt) % w.rt_pages;
            left -= cnt;
        }
        if w.blits {
            let rows = w.rt_pages.min(256) as u32;
            let h = (rows / 4).max(1);
            let y = (frame % u64::from(rows - h + 1)) as u32;
            let color = seed | 0xFF00_0000;
            push(&cmd::color_blt(self.hidden, 4096, 64, y, 512, h, color));
            if rows > h {
                push(&cmd::src_copy_blt(
                    self.hidden,
                    self.hidden,
                    4096,
                    0,
                    0,
                    0,
                    1,
                    1024,
                    rows - 1,
                ));
            }
            // After the scroll, row y holds what the fill put in row y + 1 (when it was filled).
            if h >= 2 {
                log.blit = Some((self.hid_frames + u64::from(y) * 4096 + 64 * 4, color));
            }
        }
        if w.remap_every != 0 && self.tail_next > 0 {
            let t = (self.tail_next - 1) % TAIL_PAGES;
            let s = seed ^ 0x5A5A;
            push(&cmd::sim_fill(self.hidden + (w.rt_pages + t) * 4096, 1, s));
            let spare = self.spare_frames + ((self.spare_next - 1) % SPARE_PAGES) * 4096;
            log.tail_fill = Some((spare, s));
        }
        for _ in 0..w.stores {
            let page = self.rng.below(w.hot_pages);
            let dw = self.rng.below(1024);
            let v = (self.rng.next_u64() >> 32) as u32;
            let store = if page < PPGTT_PAGES && v & 1 == 1 {
                cmd::store_dword_ppgtt(page * 4096 + dw * 4, v)
            } else {
                cmd::store_dword_ggtt(self.hot_gm() + page * 4096 + dw * 4, v)
            };
            push(&store);
            let gpa = self.hid_frames + (w.rt_pages + TAIL_PAGES + page) * 4096 + dw * 4;
            log.last_store = Some((gpa, v));
        }
        let fence = self.gm(layout::HWSP) + layout::FENCE;
        push(&cmd::pipe_control_store(fence, frame));
        push(&cmd::flush_dw_store(fence + 8, frame as u32));
        push(&cmd::load_register(LRI_REG, (frame & 0xFFFF) as u32));
        push(&[cmd::MI_BATCH_BUFFER_END]);
        let slot = frame % layout::BATCH_SLOTS;
        let batch_off = layout::BATCH + slot * layout::BATCH_SLOT_PAGES * 4096;
        let mut bytes = [0u8; 4096];
        for (i, chunk) in batch.get(..n).unwrap_or(&[]).chunks(1024).enumerate() {
            for (d, v) in bytes.chunks_exact_mut(4).zip(chunk) {
                d.copy_from_slice(&v.to_le_bytes());
            }
            let len = chunk.len() * 4;
            p.ram_write(
                self.ap_gpa(batch_off + i as u64 * 4096),
                bytes.get(..len).unwrap_or(&[]),
            );
        }
        // Ring: start the batch, then this frame's sequence number into the status page.
        let seqno_gm = self.gm(layout::HWSP + layout::SEQNO);
        let start = cmd::batch_start_ggtt(self.gm(batch_off));
        let store = cmd::store_dword_ggtt(seqno_gm, (frame + 1) as u32);
        let size = layout::RING_PAGES * 4096;
        for v in start.into_iter().chain(store).chain([cmd::MI_NOOP]) {
            let at = self.ap_gpa(layout::RING) + u64::from(self.ring_tail);
            p.ram_write(at, &v.to_le_bytes());
            self.ring_tail = (self.ring_tail + 4) % size;
        }
        let ctx = self.ap_gpa(layout::CONTEXT + engines::LRC_STATE_PAGE);
        p.ram_write(
            ctx + (engines::lrc_dword::RING_TAIL * 4) as u64,
            &self.ring_tail.to_le_bytes(),
        );
        // Submit: element 1 (unused) high, low; element 0 high, low.
        let desc = ContextDescriptor::new()
            .with_valid(true)
            .with_privilege(true)
            .with_addressing_mode(AddressingMode::LEGACY_64B)
            .with_lrca((self.gm(layout::CONTEXT) >> 12) as u32)
            .with_context_id(CONTEXT_ID)
            .into_bits();
        let elsp = EngineId::Rcs.reg(reg::ELSP);
        for dw in [0, 0, (desc >> 32) as u32, desc as u32] {
            self.reg_write(p, elsp, dw);
        }
        if w.remap_every != 0 && frame.is_multiple_of(w.remap_every) {
            // A new allocation in the tail, backed by a spare frame: the entry in two halves.
            let slot = self.tail_next % TAIL_PAGES;
            self.tail_next += 1;
            let spare = self.spare_frames + (self.spare_next % SPARE_PAGES) * 4096;
            self.spare_next += 1;
            self.ggtt_write(p, self.hidden + (w.rt_pages + slot) * 4096, spare);
        }
        let surf = self.hidden + (frame % 2) * (w.rt_pages / 2) * 4096;
        self.reg_write(p, DSPSURF_A, (surf & !0xFFF) as u32);
        for _ in 0..w.cpu_writes {
            let page = self.rng.below(layout::UPLOAD_PAGES);
            let off = self.rng.below(4096 / 64) * 64;
            let mut data = [0u8; 64];
            for chunk in data.chunks_exact_mut(8) {
                chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
            }
            p.ram_write(self.ap_gpa(layout::UPLOAD + page * 4096 + off), &data);
        }
        log
    }

    /// Check what the GPU wrote for frame `frame`; returns the frame's checksum.
    fn check(&mut self, p: &mut dyn Platform, frame: u64, log: &FrameLog) -> Result<u64, u64> {
        let mut sum = fold(0, frame);
        let blit_rows = if self.w.blits {
            self.w.rt_pages.min(256)
        } else {
            0
        };
        for &(start, cnt, s) in log.pieces.get(..log.n).unwrap_or(&[]) {
            // The first and last page of each piece: first and last dword (pages under the blit
            // surface are rewritten by the blits).
            for k in [0, cnt - 1] {
                let page = start + k;
                if page < blit_rows {
                    continue;
                }
                let gpa = self.hid_frames + page * 4096;
                for i in [0u32, 1023] {
                    let got = p.ram_read32(gpa + u64::from(i) * 4);
                    if got != cmd::fill_pattern(s, k, i) {
                        return Err(abi::CHECK_FILL);
                    }
                    sum = fold(sum, u64::from(got));
                }
            }
        }
        if let Some((gpa, s)) = log.tail_fill {
            let got = p.ram_read32(gpa + 4092);
            if got != cmd::fill_pattern(s, 0, 1023) {
                return Err(abi::CHECK_FILL);
            }
            sum = fold(sum, u64::from(got));
        }
        if let Some((gpa, v)) = log.last_store {
            if p.ram_read32(gpa) != v {
                return Err(abi::CHECK_STORE);
            }
            sum = fold(sum, u64::from(v));
        }
        if let Some((gpa, color)) = log.blit {
            // Row y after the scroll is row y + 1 of the colour fill: inside the rectangle.
            if p.ram_read32(gpa) != color {
                return Err(abi::CHECK_BLIT);
            }
            sum = fold(sum, u64::from(color));
        }
        let fence = self.ap_gpa(layout::HWSP + layout::FENCE);
        if p.ram_read64(fence) != frame || p.ram_read32(fence + 8) != frame as u32 {
            return Err(abi::CHECK_FENCE);
        }
        let lri = p.mmio_read32(self.bar0 + u64::from(LRI_REG));
        if lri != (frame & 0xFFFF) as u32 {
            return Err(abi::CHECK_LRI);
        }
        Ok(fold(sum, u64::from(lri)))
    }
}

/// Boot and run the driver; failures are reported (`REPORT_FAIL`).
pub fn guest_main(p: &mut dyn Platform) {
    match Driver::boot(p) {
        Ok(mut d) => d.run(p),
        Err(code) => p.report(abi::REPORT_FAIL, 0, code),
    }
}
