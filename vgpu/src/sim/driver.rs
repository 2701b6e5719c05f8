//! A guest driver model: programs the vGPU the way i915 does (GGTT entries through BAR0, execlist
//! submission one ELSP dword at a time, CSB acknowledgement, display flips), and generates workloads
//! whose dirty behaviour resembles an idle desktop, 2D, media playback or 3D rendering.
//!
//! Its state is what a guest kernel would hold in guest memory and vCPU registers; a migration moves
//! it with the VM (tests clone it to the destination). Its choices depend only on its own state
//! (seed, frame number), never on how fast the GPU runs: when the GPU lags it waits, and the same
//! commands come out later. That is what makes a migrated run end bit-for-bit equal to an
//! unmigrated one.

use engines::{ContextDescriptor, EngineId, reg};
use gtt::{Gfn, GgttEntry, GmAddr};

use super::Rng;
use super::cmd;
use super::memory::{SimCpuLog, SimHost, SimMemory};
use crate::error::VgpuError;
use crate::instance::{GGTT_WINDOW, HWSP_CSB_WP_DWORD, LRC_STATE_PAGE, Vgpu};

/// Where the driver puts things, as offsets from the guest view's aperture base.
pub mod layout {
    /// Logical ring context (per-process HWSP page, then the register-state page).
    pub const CONTEXT: u64 = 0x0000;
    /// Global hardware status page (HWS_PGA).
    pub const HWSP: u64 = 0x2000;
    /// Ring buffer.
    pub const RING: u64 = 0x4000;
    /// Ring buffer pages.
    pub const RING_PAGES: u32 = 4;
    /// Batch buffer slots.
    pub const BATCH: u64 = 0x8000;
    /// Pages per batch slot.
    pub const BATCH_SLOT_PAGES: u64 = 4;
    /// Batch slots in rotation.
    pub const BATCH_SLOTS: u64 = 4;
    /// Pages the CPU writes through the aperture (texture uploads).
    pub const UPLOAD: u64 = 0x1_8000;
    /// Pages in the upload area.
    pub const UPLOAD_PAGES: u64 = 8;
    /// Byte offset in the HWSP where each frame's sequence number is written.
    pub const SEQNO: usize = 0x100;
    /// Bytes of aperture the layout needs.
    pub const APERTURE_NEEDED: u64 = UPLOAD + UPLOAD_PAGES * 4096;
}

const CONTEXT_ID: u32 = 1;
/// Guest frames (the last of guest memory) holding the PPGTT's four levels of tables.
const PPGTT_TABLES: u64 = 4;
/// Pages the PPGTT maps (the first pages of the hot set).
const PPGTT_PAGES: u64 = 16;
const PIPECONF_A: u32 = 0x70008;
const DSPSURF_A: u32 = 0x7019C;
const GT0_IMR: u32 = 0x44304;
const GT0_IER: u32 = 0x4430C;

/// A workload's shape: how much graphics memory each frame rewrites, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Name shown in reports.
    pub name: &'static str,
    /// Render-target pages (in hidden graphics memory) the workload cycles through.
    pub rt_pages: u64,
    /// Pages rewritten per frame (SIM_FILL), taken round-robin from the render targets.
    pub fill_pages: u64,
    /// Scattered dword stores per frame into a hot set of `hot_pages` (its own pages after the
    /// render targets and the allocation tail: state buffers, constants, counters).
    pub stores: u32,
    /// Size of the hot set, pages.
    pub hot_pages: u64,
    /// Remap one "new allocation" GGTT entry every this many frames (0 = never).
    pub remap_every: u64,
    /// Guest CPU writes through the aperture per frame.
    pub cpu_writes: u32,
    /// Rendered content changes only every this many frames (redraws of an unchanged screen
    /// rewrite pages with the same bytes); 1 = new content every frame.
    pub repeat_every: u64,
    /// Each fill is also written to a second surface (a decoded frame and its display copy).
    pub mirror: bool,
    /// Each frame also issues 2D blits: a solid-colour rectangle and a scroll (a copy of part of
    /// the surface onto itself, shifted).
    pub blits: bool,
    /// Frame period in modeled nanoseconds (vsync pacing: 16.7 ms at 60 Hz); 0 renders as fast as
    /// the GPU allows.
    pub frame_ns: u64,
}

impl Profile {
    /// An idle desktop: a cursor and a clock; 0.25 MiB redrawn per frame within an 8 MiB working
    /// set, the same content for 16 frames at a time. (The per-frame floor F and working set W of
    /// each profile follow the dirty models of the project's performance notes.)
    pub const IDLE: Profile = Profile {
        name: "idle",
        rt_pages: 2048,
        fill_pages: 64,
        stores: 2,
        hot_pages: 4,
        remap_every: 0,
        cpu_writes: 1,
        repeat_every: 16,
        mirror: false,
        frame_ns: 16_666_667,
        blits: false,
    };
    /// 2D: window contents redrawn by blits: 8 MiB per frame within 48 MiB, content changing every
    /// 4 frames.
    pub const TWO_D: Profile = Profile {
        name: "2d",
        rt_pages: 12288,
        fill_pages: 2048,
        stores: 8,
        hot_pages: 32,
        remap_every: 16,
        cpu_writes: 2,
        repeat_every: 4,
        mirror: false,
        frame_ns: 16_666_667,
        blits: true,
    };
    /// Media: 30 frames/s decoded into a pool of surfaces and copied for display (4 + 4 MiB per
    /// frame within 48 MiB).
    pub const MEDIA: Profile = Profile {
        name: "media",
        rt_pages: 12288,
        fill_pages: 1024,
        stores: 8,
        hot_pages: 16,
        remap_every: 32,
        cpu_writes: 4,
        repeat_every: 1,
        mirror: true,
        frame_ns: 33_333_333,
        blits: false,
    };
    /// 3D at 60 frames/s: 32 MiB of render targets rewritten per frame within 128 MiB, a hot set of
    /// scattered stores, a growing tail of new allocations.
    pub const THREE_D: Profile = Profile {
        name: "3d",
        rt_pages: 32768,
        fill_pages: 8192,
        stores: 32,
        hot_pages: 256,
        remap_every: 4,
        cpu_writes: 4,
        repeat_every: 1,
        mirror: false,
        frame_ns: 16_666_667,
        blits: false,
    };

    /// The profile rendering as fast as the GPU allows (no vsync pacing).
    pub const fn unpaced(self) -> Profile {
        Profile {
            frame_ns: 0,
            ..self
        }
    }

    /// The profile with all page counts divided by `div` (at least 1): for small test vGPUs.
    pub const fn scaled_down(self, div: u64) -> Profile {
        let d = if div == 0 { 1 } else { div };
        Profile {
            rt_pages: max1(self.rt_pages / d),
            fill_pages: max1(self.fill_pages / d),
            hot_pages: max1(self.hot_pages / d),
            ..self
        }
    }
}

const fn max1(v: u64) -> u64 {
    if v == 0 { 1 } else { v }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting to build the next frame.
    Build,
    /// Writing ELSP dword `k` (0..4) of the current submission.
    Elsp(u8),
    /// GGTT remap of a tail page: low half then high half.
    RemapLo {
        slot: u64,
        entry: u64,
    },
    RemapHi {
        slot: u64,
        entry: u64,
    },
    /// Display flip.
    Flip,
    /// CPU uploads, `n` left.
    Cpu(u32),
    /// All frames submitted.
    Finished,
}

/// What the guest driver touches besides the vGPU: its memory, the CPU dirty log its writes land
/// in, and the host GTT its GGTT writes are shadowed into.
#[derive(Debug)]
pub struct Guest<'g> {
    /// Guest memory.
    pub mem: &'g mut SimMemory,
    /// The CPU dirty log.
    pub log: &'g mut SimCpuLog,
    /// The host GGTT.
    pub host: &'g mut SimHost,
}

/// The guest driver model. Cloning it is migrating the vCPU state that drives the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDriver {
    profile: Profile,
    rng: Rng,
    frames: u64,
    frame: u64,
    stage: Stage,
    csb_seen: u8,
    rt_cursor: u64,
    tail_pages: u64,
    tail_next: u64,
    spare_next: u64,
    ring_tail: u32,
    aperture: u64,
    hidden: u64,
    /// Guest CPU actions taken (for reports).
    pub actions: u64,
    /// Modeled time of the current step (the guest's clock).
    now_ns: u64,
}

impl GuestDriver {
    /// A driver that will render `frames` frames of `profile`, seeded by `seed`.
    pub fn new(profile: Profile, frames: u64, seed: u64) -> Self {
        Self {
            profile,
            rng: Rng::new(seed),
            frames,
            frame: 0,
            stage: Stage::Build,
            csb_seen: 7,
            rt_cursor: 0,
            tail_pages: 64,
            tail_next: 0,
            spare_next: 0,
            ring_tail: 0,
            aperture: 0,
            hidden: 0,
            actions: 0,
            now_ns: 0,
        }
    }

    /// Frames fully submitted so far.
    pub fn frames_submitted(&self) -> u64 {
        self.frame
    }

    /// Whether every frame has been submitted.
    pub fn finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    /// The workload profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn gm(&self, off: u64) -> u64 {
        self.aperture + off
    }

    fn cpu_write_gm(
        vgpu: &Vgpu<'_>,
        g: &mut Guest<'_>,
        gm: u64,
        data: &[u8],
    ) -> Result<(), VgpuError> {
        let (gfn, off) = vgpu
            .translate(GmAddr::new(gm))
            .ok_or(VgpuError::GuestMemory)?;
        g.mem
            .cpu_write(g.log, gfn, off, data)
            .map_err(|_| VgpuError::GuestMemory)
    }

    fn mmio(
        vgpu: &mut Vgpu<'_>,
        g: &mut Guest<'_>,
        off: u32,
        size: usize,
        v: u64,
    ) -> Result<(), VgpuError> {
        vgpu.mmio_write(off, size, v, g.mem, g.host)
    }

    /// Boot: discover the vGPU through PVINFO, map every graphics-memory page of the vGPU to a guest
    /// frame (in memory-map order; frames beyond those are spares for later remaps), set up the status
    /// page, execlists, the context image, the display and interrupts.
    pub fn boot(&mut self, vgpu: &mut Vgpu<'_>, g: &mut Guest<'_>) -> Result<(), VgpuError> {
        let magic = vgpu.mmio_read(mmio::PVINFO_BASE, 8)?;
        if magic != mmio::PVINFO_MAGIC {
            return Err(VgpuError::WrongPhase);
        }
        let part = vgpu.config().partition;
        self.aperture = part.aperture.base().get();
        self.hidden = part.hidden.base().get();
        let pages = part.entries();
        if part.aperture.size() < layout::APERTURE_NEEDED
            || part.hidden.pages()
                < self.profile.rt_pages + self.tail_pages + self.profile.hot_pages
        {
            return Err(VgpuError::StorageSize);
        }
        for slot in 0..usize::try_from(pages).map_err(|_| VgpuError::StorageSize)? {
            let index = part.index_at(slot).ok_or(VgpuError::StorageSize)?;
            let gfn = g
                .mem
                .map_ref()
                .frame_at(slot)
                .ok_or(VgpuError::StorageSize)?;
            let e = GgttEntry::present_frame(gfn)?;
            Self::mmio(vgpu, g, GGTT_WINDOW + index.get() * 8, 8, e.into_bits())?;
        }
        let rcs = EngineId::Rcs;
        Self::mmio(vgpu, g, rcs.reg(reg::HWS_PGA), 4, self.gm(layout::HWSP))?;
        Self::mmio(vgpu, g, rcs.reg(reg::RING_MODE), 4, 0x8000_8000)?;
        Self::mmio(vgpu, g, GT0_IMR, 4, u64::from(!(1u32 << 8)))?;
        Self::mmio(vgpu, g, GT0_IER, 4, 1 << 8)?;
        Self::mmio(vgpu, g, PIPECONF_A, 4, 1 << 31)?;
        Self::mmio(vgpu, g, DSPSURF_A, 4, self.hidden)?;
        let pml4 = self.create_ppgtt(vgpu, g)?;
        // The context's register-state page, laid out as the hardware saves it; the context runs
        // in the PPGTT just created (4-level: PDP0 holds the PML4 address).
        let state = engines::LrcState {
            pdp: [pml4, 0, 0, 0],
            ctx_ctrl: 0x0009_0009,
            ring: engines::RingRegs {
                head: 0,
                tail: 0,
                start: u32::try_from(self.gm(layout::RING)).unwrap_or(0),
                ctl: ((layout::RING_PAGES - 1) << 12) | 1,
            },
            ..engines::LrcState::default()
        };
        let mut image = [0u8; 4096];
        state.emit(rcs, &mut image);
        Self::cpu_write_gm(vgpu, g, self.gm(layout::CONTEXT + LRC_STATE_PAGE), &image)?;
        Ok(())
    }

    fn completed(&self, vgpu: &Vgpu<'_>, mem: &SimMemory) -> u64 {
        vgpu.translate(GmAddr::new(self.gm(layout::HWSP)))
            .and_then(|(gfn, _)| mem.read_u32(gfn, layout::SEQNO).ok())
            .map_or(0, u64::from)
    }

    /// Acknowledge new CSB entries (read the write pointer the GPU mirrored into the HWSP, move the
    /// read pointer register to it), as the guest's interrupt handler does.
    fn ack_csb(&mut self, vgpu: &mut Vgpu<'_>, g: &mut Guest<'_>) -> Result<(), VgpuError> {
        let Some((gfn, _)) = vgpu.translate(GmAddr::new(self.gm(layout::HWSP))) else {
            return Ok(());
        };
        let wp = g
            .mem
            .read_u32(gfn, usize::try_from(HWSP_CSB_WP_DWORD * 4).unwrap_or(0))
            .ok()
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(7);
        if wp != self.csb_seen && wp < 6 {
            self.csb_seen = wp;
            let v = (0x0700u64 << 16) | (u64::from(wp) << 8);
            Self::mmio(vgpu, g, EngineId::Rcs.reg(reg::CSB_PTR), 4, v)?;
        }
        Ok(())
    }

    /// Take up to `actions` guest actions (each one MMIO access or one batch of memory writes).
    pub fn step(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        g: &mut Guest<'_>,
        actions: u32,
        now_ns: u64,
    ) -> Result<(), VgpuError> {
        self.now_ns = now_ns;
        self.ack_csb(vgpu, g)?;
        for _ in 0..actions {
            if !self.act(vgpu, g)? {
                break;
            }
            self.actions += 1;
        }
        Ok(())
    }

    /// One action; false when the driver has to wait (GPU behind) or is finished.
    fn act(&mut self, vgpu: &mut Vgpu<'_>, g: &mut Guest<'_>) -> Result<bool, VgpuError> {
        match self.stage {
            Stage::Finished => Ok(false),
            Stage::Build => {
                if self.frame >= self.frames {
                    self.stage = Stage::Finished;
                    return Ok(false);
                }
                if self.frame >= self.completed(vgpu, g.mem) + 2 {
                    return Ok(false); // two frames in flight: wait for the GPU
                }
                if self.now_ns < self.frame.saturating_mul(self.profile.frame_ns) {
                    return Ok(false); // vsync: not yet time for this frame
                }
                self.build_frame(vgpu, g)?;
                self.stage = Stage::Elsp(0);
                Ok(true)
            }
            Stage::Elsp(k) => {
                let desc = ContextDescriptor::new()
                    .with_valid(true)
                    .with_privilege(true)
                    .with_addressing_mode(engines::AddressingMode::LEGACY_64B)
                    .with_lrca(u32::try_from(self.gm(layout::CONTEXT) >> 12).unwrap_or(0))
                    .with_context_id(CONTEXT_ID)
                    .into_bits();
                // Element 1 (unused) high, low; element 0 high, low.
                let dword = match k {
                    0 | 1 => 0,
                    2 => desc >> 32,
                    _ => desc & 0xFFFF_FFFF,
                };
                Self::mmio(vgpu, g, EngineId::Rcs.reg(reg::ELSP), 4, dword)?;
                self.stage = if k < 3 {
                    Stage::Elsp(k + 1)
                } else if self.profile.remap_every != 0
                    && self.frame.is_multiple_of(self.profile.remap_every)
                {
                    let slot = self.tail_next % self.tail_pages;
                    self.tail_next += 1;
                    // The new allocation is backed by a spare frame (beyond those mapped at boot).
                    let base = vgpu.config().partition.entries();
                    // The last PPGTT_TABLES spare frames hold the PPGTT's page tables.
                    let spares = g
                        .mem
                        .map_ref()
                        .frames()
                        .saturating_sub(base)
                        .saturating_sub(PPGTT_TABLES);
                    let gfn_slot = base + self.spare_next % spares.max(1);
                    self.spare_next += 1;
                    let frame = if spares == 0 {
                        None
                    } else {
                        g.mem
                            .map_ref()
                            .frame_at(usize::try_from(gfn_slot).unwrap_or(usize::MAX))
                    };
                    let gfn = frame.ok_or(VgpuError::StorageSize)?;
                    let entry = GgttEntry::present_frame(gfn)?.into_bits();
                    Stage::RemapLo { slot, entry }
                } else {
                    Stage::Flip
                };
                Ok(true)
            }
            Stage::RemapLo { slot, entry } => {
                let idx = self.tail_index(slot)?;
                Self::mmio(vgpu, g, GGTT_WINDOW + idx * 8, 4, entry & 0xFFFF_FFFF)?;
                self.stage = Stage::RemapHi { slot, entry };
                Ok(true)
            }
            Stage::RemapHi { slot, entry } => {
                let idx = self.tail_index(slot)?;
                Self::mmio(vgpu, g, GGTT_WINDOW + idx * 8 + 4, 4, entry >> 32)?;
                self.stage = Stage::Flip;
                Ok(true)
            }
            Stage::Flip => {
                let surf = self.hidden + (self.frame % 2) * (self.profile.rt_pages / 2) * 4096;
                Self::mmio(vgpu, g, DSPSURF_A, 4, surf & !0xFFF)?;
                self.stage = Stage::Cpu(self.profile.cpu_writes);
                Ok(true)
            }
            Stage::Cpu(0) => {
                self.frame += 1;
                self.stage = Stage::Build;
                Ok(true)
            }
            Stage::Cpu(n) => {
                let page = self.rng.below(layout::UPLOAD_PAGES);
                let off = self.rng.below(4096 / 64) * 64;
                let mut data = [0u8; 64];
                for chunk in data.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
                }
                Self::cpu_write_gm(vgpu, g, self.gm(layout::UPLOAD + page * 4096 + off), &data)?;
                self.stage = Stage::Cpu(n - 1);
                Ok(true)
            }
        }
    }

    /// Build a 4-level PPGTT in guest memory that maps the first hot-set pages writable, and
    /// announce it through PVINFO (root pointer in `pdp[0]`, then `g2v_notify = 4`), as i915 does
    /// for a new address space on a GVT-g vGPU. Returns the PML4's guest physical address. PPGTT
    /// address `i * 4096` is hot-set page `i`.
    fn create_ppgtt(&mut self, vgpu: &mut Vgpu<'_>, g: &mut Guest<'_>) -> Result<u64, VgpuError> {
        let frames = g.mem.map_ref().frames();
        let table = |k: u64| {
            g.mem
                .map_ref()
                .frame_at(usize::try_from(frames - PPGTT_TABLES + k).unwrap_or(usize::MAX))
        };
        let (Some(pml4), Some(pdp), Some(pd), Some(pt)) = (table(0), table(1), table(2), table(3))
        else {
            return Err(VgpuError::StorageSize);
        };
        let entry = |gfn: Gfn| (gfn.get() << 12) | 0b11; // present, writable
        g.mem
            .cpu_write(g.log, pml4, 0, &entry(pdp).to_le_bytes())
            .map_err(|_| VgpuError::GuestMemory)?;
        g.mem
            .cpu_write(g.log, pdp, 0, &entry(pd).to_le_bytes())
            .map_err(|_| VgpuError::GuestMemory)?;
        g.mem
            .cpu_write(g.log, pd, 0, &entry(pt).to_le_bytes())
            .map_err(|_| VgpuError::GuestMemory)?;
        for i in 0..PPGTT_PAGES {
            let (gfn, _) = vgpu
                .translate(GmAddr::new(self.hot_base() + i * 4096))
                .ok_or(VgpuError::GuestMemory)?;
            let at = usize::try_from(i * 8).unwrap_or(0);
            g.mem
                .cpu_write(g.log, pt, at, &entry(gfn).to_le_bytes())
                .map_err(|_| VgpuError::GuestMemory)?;
        }
        let root = pml4.get() << 12;
        Self::mmio(vgpu, g, mmio::pvinfo_off::PDP0_LO, 4, root & 0xFFFF_FFFF)?;
        Self::mmio(vgpu, g, mmio::pvinfo_off::PDP0_LO + 4, 4, root >> 32)?;
        Self::mmio(vgpu, g, mmio::pvinfo_off::G2V_NOTIFY, 4, 4)?;
        Ok(root)
    }

    /// Graphics address of the first hot-set page.
    fn hot_base(&self) -> u64 {
        self.hidden + (self.profile.rt_pages + self.tail_pages) * 4096
    }

    fn tail_index(&self, slot: u64) -> Result<u32, VgpuError> {
        let gm = self.hidden + (self.profile.rt_pages + slot) * 4096;
        GmAddr::new(gm)
            .index()
            .map(|i| i.get())
            .ok_or(VgpuError::StorageSize)
    }

    /// Write the frame's batch buffer and ring commands, then move the context's ring tail.
    fn build_frame(&mut self, vgpu: &Vgpu<'_>, g: &mut Guest<'_>) -> Result<(), VgpuError> {
        let slot = self.frame % layout::BATCH_SLOTS;
        let batch_gm = self.gm(layout::BATCH + slot * layout::BATCH_SLOT_PAGES * 4096);
        let mut batch: heapless::Vec<u32, 4096> = heapless::Vec::new();
        let push = |b: &mut heapless::Vec<u32, 4096>, dws: &[u32]| {
            b.extend_from_slice(dws).map_err(|_| VgpuError::StorageSize)
        };
        let mut seed = u32::try_from(self.rng.next_u64() & 0xFFFF_FFFF).unwrap_or(0);
        if self.profile.repeat_every > 1 {
            // The same content until the screen really changes.
            let epoch = self.frame / self.profile.repeat_every;
            seed = u32::try_from(epoch.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF).unwrap_or(0);
        }
        // Render-target rewrite, in runs of contiguous pages.
        let mut left = self.profile.fill_pages;
        let mut piece = 0u32;
        while left > 0 {
            let start = self.rt_cursor % self.profile.rt_pages;
            let n = left.min(self.profile.rt_pages - start).min(4095);
            // Each piece of the render target has its own content; only a mirror repeats it.
            let seed = seed ^ piece.wrapping_mul(0x9E37_79B9);
            piece += 1;
            push(
                &mut batch,
                &cmd::sim_fill(self.hidden + start * 4096, n as u16, seed),
            )?;
            let mirror = (start + self.profile.rt_pages / 2) % self.profile.rt_pages;
            if self.profile.mirror && mirror + n <= self.profile.rt_pages {
                push(
                    &mut batch,
                    &cmd::sim_fill(self.hidden + mirror * 4096, n as u16, seed),
                )?;
            }
            self.rt_cursor = (start + n) % self.profile.rt_pages;
            left -= n;
        }
        if self.profile.blits {
            // The window surface is the render-target area, one page (1024 pixels) per row.
            let rows = u32::try_from(self.profile.rt_pages.min(256)).unwrap_or(1);
            let h = (rows / 4).max(1);
            let y = u32::try_from(self.frame % u64::from(rows - h + 1)).unwrap_or(0);
            push(
                &mut batch,
                &cmd::color_blt(self.hidden, 4096, 64, y, 512, h, seed | 0xFF00_0000),
            )?;
            if rows > h {
                // Scroll: rows y+1.. move up by one row.
                push(
                    &mut batch,
                    &cmd::src_copy_blt(self.hidden, self.hidden, 4096, 0, 0, 0, 1, 1024, rows - 1),
                )?;
            }
        }
        // New allocations in the tail get content too.
        if self.profile.remap_every != 0 && self.tail_next > 0 {
            let t = (self.tail_next - 1) % self.tail_pages;
            push(
                &mut batch,
                &cmd::sim_fill(
                    self.hidden + (self.profile.rt_pages + t) * 4096,
                    1,
                    seed ^ 0x5A5A,
                ),
            )?;
        }
        for _ in 0..self.profile.stores {
            let page = self.rng.below(self.profile.hot_pages);
            let dw = self.rng.below(1024);
            let v = u32::try_from(self.rng.next_u64() >> 32).unwrap_or(0);
            // Half of the stores to the pages the PPGTT maps go through it, as a context's own
            // buffer accesses do; the rest through the GGTT.
            let store = if page < PPGTT_PAGES && v & 1 == 1 {
                cmd::store_dword_ppgtt(page * 4096 + dw * 4, v)
            } else {
                cmd::store_dword_ggtt(self.hot_base() + page * 4096 + dw * 4, v)
            };
            push(&mut batch, &store)?;
        }
        let fence = self.gm(layout::HWSP) + 0x180;
        push(&mut batch, &cmd::pipe_control_store(fence, self.frame))?;
        push(
            &mut batch,
            &cmd::flush_dw_store(
                fence + 8,
                u32::try_from(self.frame & 0xFFFF_FFFF).unwrap_or(0),
            ),
        )?;
        push(
            &mut batch,
            &cmd::load_register(
                EngineId::Rcs.reg(0x98),
                u32::try_from(self.frame & 0xFFFF).unwrap_or(0),
            ),
        )?;
        push(&mut batch, &[cmd::MI_BATCH_BUFFER_END])?;
        if batch.len() * 4 > usize::try_from(layout::BATCH_SLOT_PAGES * 4096).unwrap_or(0) {
            return Err(VgpuError::StorageSize);
        }
        for (i, chunk) in batch.chunks(1024).enumerate() {
            let mut bytes = [0u8; 4096];
            for (d, v) in bytes.chunks_exact_mut(4).zip(chunk) {
                d.copy_from_slice(&v.to_le_bytes());
            }
            let len = chunk.len() * 4;
            Self::cpu_write_gm(
                vgpu,
                g,
                batch_gm + i as u64 * 4096,
                bytes.get(..len).unwrap_or(&[]),
            )?;
        }
        // Ring: start the batch, then write this frame's sequence number into the status page.
        let mut ring: heapless::Vec<u32, 16> = heapless::Vec::new();
        ring.extend_from_slice(&cmd::batch_start_ggtt(batch_gm))
            .map_err(|_| VgpuError::StorageSize)?;
        let seqno = u32::try_from((self.frame + 1) & 0xFFFF_FFFF).unwrap_or(0);
        ring.extend_from_slice(&cmd::store_dword_ggtt(
            self.gm(layout::HWSP) + layout::SEQNO as u64,
            seqno,
        ))
        .map_err(|_| VgpuError::StorageSize)?;
        ring.push(cmd::MI_NOOP)
            .map_err(|_| VgpuError::StorageSize)?;
        let size = layout::RING_PAGES * 4096;
        for v in &ring {
            Self::cpu_write_gm(
                vgpu,
                g,
                self.gm(layout::RING) + u64::from(self.ring_tail),
                &v.to_le_bytes(),
            )?;
            self.ring_tail = (self.ring_tail + 4) % size;
        }
        Self::cpu_write_gm(
            vgpu,
            g,
            self.gm(layout::CONTEXT + LRC_STATE_PAGE) + 7 * 4,
            &self.ring_tail.to_le_bytes(),
        )?;
        Ok(())
    }
}
