//! A guest driver model: programs the vGPU the way i915 does (GGTT entries through BAR0, execlist
//! submission one ELSP dword at a time, CSB acknowledgement, display flips), and generates workloads
//! whose dirty behaviour resembles an idle desktop, 2D, media playback or 3D rendering.
//!
//! Its state is what a guest kernel would hold in guest memory and vCPU registers; a migration moves
//! it with the VM (tests clone it to the destination). Its choices depend only on its own state
//! (seed, frame number), never on how fast the GPU runs: when the GPU lags it waits, and the same
//! commands come out later. That is what makes a migrated run end bit-for-bit equal to an
//! unmigrated one.

use engines::{ContextDescriptor, EngineId, HwspLayout, LRC_STATE_PAGE, lrc_dword, reg};
use gtt::{Gfn, GgttEntry, GmAddr};

use super::memory::{SimCpuLog, SimHost, SimMemory};
use crate::Rng;
use crate::cmd;
use vgpu::error::VgpuError;
use vgpu::instance::{GGTT_WINDOW, Vgpu};

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
    /// Hidden graphics-memory pages after the render targets whose GGTT entries the driver
    /// remaps to spare frames ("new allocations"); the hot set follows them.
    pub const TAIL_PAGES: u64 = 64;
}

const CONTEXT_ID: u32 = 1;
/// Guest frames (the last of guest memory) holding the PPGTT's tables: the four levels, and a
/// page table of 64 KiB entries.
const PPGTT_TABLES: u64 = 5;
/// PPGTT address of the 64 KiB page (PDE 1 of the first page directory: 2 MiB).
const LARGE_VA: u64 = 0x20_0000;
/// `GAMW_ECO_DEV_RW_IA`: bits 3:0 all set enable 64 KiB PPGTT pages (gen9).
const GAMW_ECO_DEV_RW_IA: u32 = 0x4080;
/// Registers i915 programs at initialisation that the register table does not track (GT power
/// management and frame-buffer compression): their values must survive a migration all the same.
const UNTRACKED_INIT: [(u32, u32); 5] = [
    (0xA024, 0x0000_0592),  // GEN6_RP_CONTROL
    (0xA168, 0x7FFF_FFFF),  // GEN6_PMINTRMSK
    (0xA210, 0x0000_0003),  // GEN9_PG_ENABLE
    (0xA0B0, 0x0000_0000),  // GEN6_RC_SLEEP (written 0: stays at reset)
    (0x43208, 0x8000_4000), // ILK_DPFC_CONTROL
];
/// GEN6_RPNSWREQ: the frequency request the driver updates every frame (not tracked either).
const RPNSWREQ: u32 = 0xA008;
/// Masked registers and the masked writes i915 makes to them (upper half: the bits changed):
/// CACHE_MODE_1 (an enable, then bit 0 alone with junk in the unselected data bits), INSTPM,
/// CSFE_CHICKEN1 and the render forcewake request.
const MASKED_INIT: [(u32, u32); 5] = [
    (0x7004, 0x0040_0040),
    (0x7004, 0x0001_00FF),
    (0x20C0, 0x0080_0080),
    (0x20D4, 0x0002_0002),
    (0xA278, 0x0001_0001),
];
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

impl Profile {
    /// Hidden graphics-memory pages the driver needs for this workload: the render targets, the
    /// allocation tail ([`layout::TAIL_PAGES`]) and the hot set. [`GuestDriver::boot`] refuses a
    /// vGPU with fewer.
    pub const fn hidden_pages(&self) -> u64 {
        self.working_pages(layout::TAIL_PAGES)
    }

    const fn working_pages(&self, tail_pages: u64) -> u64 {
        self.rt_pages
            .saturating_add(tail_pages)
            .saturating_add(self.hot_pages)
    }

    /// The profile fitted to a vGPU with `hidden_pages` pages of hidden graphics memory: itself
    /// when its [`hidden_pages`](Self::hidden_pages) fit, otherwise with the render targets, the
    /// pages filled per frame and the hot set scaled down by the same factor until they do (a
    /// game on a smaller GPU renders at a lower resolution; the share of its working set
    /// rewritten per frame stays). The hot set keeps at least the pages the driver's PPGTT maps.
    /// A slice too small for even that comes back unchanged, for the boot to refuse.
    pub fn fitted(self, hidden_pages: u64) -> Profile {
        let need = self.rt_pages.saturating_add(self.hot_pages);
        let avail = hidden_pages.saturating_sub(layout::TAIL_PAGES);
        let hot_floor = self.hot_pages.min(PPGTT_PAGES);
        if self.hidden_pages() <= hidden_pages || need == 0 || avail <= hot_floor {
            return self;
        }
        // v * avail / need < v: the quotient fits a u64.
        let scale = |v: u64| {
            u64::try_from(u128::from(v) * u128::from(avail) / u128::from(need)).unwrap_or(v)
        };
        let hot_pages = scale(self.hot_pages).max(hot_floor);
        let rt_pages = max1(scale(self.rt_pages).min(avail.saturating_sub(hot_pages)));
        Profile {
            rt_pages,
            fill_pages: max1(scale(self.fill_pages)).min(rt_pages),
            hot_pages,
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
            tail_pages: layout::TAIL_PAGES,
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
    ///
    /// # Errors
    /// [`VgpuError::StorageSize`] when the vGPU is too small for the layout: less aperture than
    /// [`layout::APERTURE_NEEDED`], fewer hidden pages than the workload's
    /// [`Profile::hidden_pages`] (see [`Profile::fitted`]), or too few guest frames; whatever a
    /// register or GGTT write returns.
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
            || part.hidden.pages() < self.profile.working_pages(self.tail_pages)
        {
            return Err(VgpuError::StorageSize);
        }
        for slot in 0..usize::try_from(pages).map_err(|_| VgpuError::StorageSize)? {
            let index = part.index_at(slot).ok_or(VgpuError::StorageSize)?;
            let gfn = g.mem.map().frame_at(slot).ok_or(VgpuError::StorageSize)?;
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
        for (off, v) in UNTRACKED_INIT.iter().chain(&MASKED_INIT) {
            Self::mmio(vgpu, g, *off, 4, u64::from(*v))?;
        }
        // 64 KiB pages: read-modify-write of the IPS field, as i915 does on gen9.
        let gamw = vgpu.mmio_read(GAMW_ECO_DEV_RW_IA, 4)?;
        Self::mmio(vgpu, g, GAMW_ECO_DEV_RW_IA, 4, gamw | 0xF)?;
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
            .read_u32(
                gfn,
                usize::try_from(HwspLayout::Gen8.write_ptr_dword() * 4).unwrap_or(0),
            )
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
                        .map()
                        .frames()
                        .saturating_sub(base)
                        .saturating_sub(PPGTT_TABLES);
                    let gfn_slot = base + self.spare_next % spares.max(1);
                    self.spare_next += 1;
                    let frame = if spares == 0 {
                        None
                    } else {
                        g.mem
                            .map()
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
                // The frequency request follows the load (a register the table does not have).
                Self::mmio(vgpu, g, RPNSWREQ, 4, (10 + self.frame % 8) << 23)?;
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
        let frames = g.mem.map().frames();
        let table = |k: u64| {
            g.mem
                .map()
                .frame_at(usize::try_from(frames - PPGTT_TABLES + k).unwrap_or(usize::MAX))
        };
        let (Some(pml4), Some(pdp), Some(pd), Some(pt), Some(pt64)) =
            (table(0), table(1), table(2), table(3), table(4))
        else {
            return Err(VgpuError::StorageSize);
        };
        // The 64 KiB page: 16 consecutive guest frames, 64 KiB aligned, of the render targets.
        let rt_frame = |i: u64| {
            vgpu.translate(GmAddr::new(self.hidden + i * 4096))
                .map(|(gfn, _)| gfn.get())
        };
        let large = (0..self.profile.rt_pages.saturating_sub(15))
            .find_map(|i| {
                let first = rt_frame(i)?;
                (first % 16 == 0 && (1..16).all(|k| rt_frame(i + k) == Some(first + k)))
                    .then_some(first)
            })
            .ok_or(VgpuError::StorageSize)?;
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
        // PDE 1 selects a page table of 64 KiB entries (IPS, bit 11); its entry 0 maps the
        // 64 KiB page. Without 64 KiB pages enabled the same table would map only 4 KiB.
        g.mem
            .cpu_write(g.log, pd, 8, &(entry(pt64) | 1 << 11).to_le_bytes())
            .map_err(|_| VgpuError::GuestMemory)?;
        g.mem
            .cpu_write(g.log, pt64, 0, &((large << 12) | 0b11).to_le_bytes())
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
        // One store into the 64 KiB page, past its first 4 KiB (reachable only while 64 KiB
        // pages are enabled).
        let page = 1 + self.frame % 15;
        push(
            &mut batch,
            &cmd::store_dword_ppgtt(
                LARGE_VA + page * 4096 + (self.frame * 4) % 4096,
                u32::try_from(self.frame & 0xFFFF_FFFF).unwrap_or(0),
            ),
        )?;
        if self.frame == 0 {
            // The render engine's MOCS table in one long LRI (64 pairs, as i915 programs it).
            push(&mut batch, &[cmd::load_registers_header(64)])?;
            for i in 0..64u32 {
                push(&mut batch, &[0xC800 + 4 * i, 0x0000_0009 | (i % 4) << 4])?;
            }
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
            self.gm(layout::CONTEXT + LRC_STATE_PAGE) + lrc_dword::RING_TAIL as u64 * 4,
            &self.ring_tail.to_le_bytes(),
        )?;
        Ok(())
    }
}

/// Why a guest driver state could not be saved or restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverStateError {
    /// The output buffer is shorter than [`GuestDriver::SAVED_LEN`].
    BufferTooSmall,
    /// The input is shorter than [`GuestDriver::SAVED_LEN`].
    Truncated,
    /// The input does not start with the state's magic and version.
    BadMagic,
    /// The profile's name is not one of the four built-in workloads (saving), or its code is
    /// unknown (restoring).
    UnknownProfile,
    /// A field is out of the range the driver model can run with (named in the payload).
    OutOfRange(&'static str),
}

impl core::fmt::Display for DriverStateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BufferTooSmall => write!(f, "buffer too small for the guest driver state"),
            Self::Truncated => write!(f, "guest driver state truncated"),
            Self::BadMagic => write!(f, "not a guest driver state (bad magic or version)"),
            Self::UnknownProfile => write!(f, "unknown workload profile"),
            Self::OutOfRange(field) => write!(f, "guest driver state field {field} out of range"),
        }
    }
}

impl core::error::Error for DriverStateError {}

/// Magic and version of a saved guest driver state: `GDRV`, version 1.
const STATE_MAGIC: [u8; 4] = *b"GDRV";
const STATE_VERSION: u32 = 1;
/// Bound on every count and address in a restored state: far beyond any real run, low enough that
/// no arithmetic of the driver model can overflow.
const STATE_BOUND: u64 = 1 << 48;
/// Bound on page counts of a restored profile.
const PAGES_BOUND: u64 = 1 << 32;
/// The built-in workloads, by wire code.
const PROFILES: [Profile; 4] = [
    Profile::IDLE,
    Profile::TWO_D,
    Profile::MEDIA,
    Profile::THREE_D,
];

/// Little-endian writer over a fixed buffer (the caller checked the length).
struct Put<'b> {
    out: &'b mut [u8],
    at: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
        }
        self.at += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Little-endian reader over a buffer of at least the saved length.
struct Get<'b> {
    inp: &'b [u8],
    at: usize,
}

impl Get<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DriverStateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(
            self.inp
                .get(self.at..self.at + N)
                .ok_or(DriverStateError::Truncated)?,
        );
        self.at += N;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DriverStateError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, DriverStateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DriverStateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A u64 below `bound`, else `OutOfRange(field)`.
    fn bounded(&mut self, bound: u64, field: &'static str) -> Result<u64, DriverStateError> {
        let v = self.u64()?;
        if v < bound {
            Ok(v)
        } else {
            Err(DriverStateError::OutOfRange(field))
        }
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DriverStateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DriverStateError::OutOfRange(field)),
        }
    }
}

impl GuestDriver {
    /// Length of a saved driver state, bytes ([`save`](Self::save) always writes exactly this).
    pub const SAVED_LEN: usize = 4 + 4 // magic, version
        + 4 + 8 * 6 + 4 * 2 // profile: code, flags, six u64, two u32
        + 8 * 3 // rng, frames, frame
        + 1 + 8 * 2 // stage: tag, two operands
        + 1 + 8 * 4 + 4 + 8 * 4; // csb_seen, cursors, ring tail, bases, actions, clock

    /// Save the driver's whole state (the vCPU-side state a VMM migrates with the VM) into `out`,
    /// fixed-size little-endian: magic `GDRV`, version 1, the profile (by built-in name, with every
    /// tunable), the PRNG, frame counters, the submission stage, cursors and the guest clock.
    /// Returns the bytes written ([`SAVED_LEN`](Self::SAVED_LEN)).
    ///
    /// Fails when `out` is too short or the profile's name is not one of the four built-in
    /// workloads (a custom name could not be restored as the `&'static str` it is).
    pub fn save(&self, out: &mut [u8]) -> Result<usize, DriverStateError> {
        if out.len() < Self::SAVED_LEN {
            return Err(DriverStateError::BufferTooSmall);
        }
        let p = &self.profile;
        let code = PROFILES
            .iter()
            .position(|k| k.name == p.name)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or(DriverStateError::UnknownProfile)?;
        let mut w = Put { out, at: 0 };
        w.bytes(&STATE_MAGIC);
        w.u32(STATE_VERSION);
        w.u8(code);
        w.u8(u8::from(p.mirror));
        w.u8(u8::from(p.blits));
        w.u8(0);
        for v in [
            p.rt_pages,
            p.fill_pages,
            p.hot_pages,
            p.remap_every,
            p.repeat_every,
            p.frame_ns,
        ] {
            w.u64(v);
        }
        w.u32(p.stores);
        w.u32(p.cpu_writes);
        w.u64(self.rng.state());
        w.u64(self.frames);
        w.u64(self.frame);
        let (tag, a, b) = match self.stage {
            Stage::Build => (0, 0, 0),
            Stage::Elsp(k) => (1, u64::from(k), 0),
            Stage::RemapLo { slot, entry } => (2, slot, entry),
            Stage::RemapHi { slot, entry } => (3, slot, entry),
            Stage::Flip => (4, 0, 0),
            Stage::Cpu(n) => (5, u64::from(n), 0),
            Stage::Finished => (6, 0, 0),
        };
        w.u8(tag);
        w.u64(a);
        w.u64(b);
        w.u8(self.csb_seen);
        for v in [
            self.rt_cursor,
            self.tail_pages,
            self.tail_next,
            self.spare_next,
        ] {
            w.u64(v);
        }
        w.u32(self.ring_tail);
        for v in [self.aperture, self.hidden, self.actions, self.now_ns] {
            w.u64(v);
        }
        Ok(w.at)
    }

    /// Restore a driver saved by [`save`](Self::save). Every field is checked against what the
    /// driver model can run with (page counts non-zero and bounded, stage operands in range, ring
    /// tail inside the ring, counters far from overflow); bytes after
    /// [`SAVED_LEN`](Self::SAVED_LEN) are ignored. Never panics.
    pub fn restore(bytes: &[u8]) -> Result<Self, DriverStateError> {
        if bytes.len() < Self::SAVED_LEN {
            return Err(DriverStateError::Truncated);
        }
        let mut r = Get { inp: bytes, at: 0 };
        if r.array::<4>()? != STATE_MAGIC || r.u32()? != STATE_VERSION {
            return Err(DriverStateError::BadMagic);
        }
        let base = *PROFILES
            .get(usize::from(r.u8()?))
            .ok_or(DriverStateError::UnknownProfile)?;
        let mirror = r.flag("profile.mirror")?;
        let blits = r.flag("profile.blits")?;
        if r.u8()? != 0 {
            return Err(DriverStateError::OutOfRange("reserved"));
        }
        let nonzero = |v: u64, field| {
            if v == 0 {
                Err(DriverStateError::OutOfRange(field))
            } else {
                Ok(v)
            }
        };
        let rt_pages = nonzero(
            r.bounded(PAGES_BOUND, "profile.rt_pages")?,
            "profile.rt_pages",
        )?;
        let fill_pages = nonzero(
            r.bounded(PAGES_BOUND, "profile.fill_pages")?,
            "profile.fill_pages",
        )?;
        let hot_pages = nonzero(
            r.bounded(PAGES_BOUND, "profile.hot_pages")?,
            "profile.hot_pages",
        )?;
        let remap_every = r.bounded(STATE_BOUND, "profile.remap_every")?;
        let repeat_every = r.bounded(STATE_BOUND, "profile.repeat_every")?;
        let frame_ns = r.bounded(STATE_BOUND, "profile.frame_ns")?;
        let stores = r.u32()?;
        let cpu_writes = r.u32()?;
        let profile = Profile {
            name: base.name,
            rt_pages,
            fill_pages,
            stores,
            hot_pages,
            remap_every,
            cpu_writes,
            repeat_every,
            mirror,
            blits,
            frame_ns,
        };
        let rng = Rng::new(r.u64()?);
        let frames = r.bounded(STATE_BOUND, "frames")?;
        let frame = r.bounded(frames.saturating_add(1), "frame")?;
        let tag = r.u8()?;
        let a = r.u64()?;
        let b = r.u64()?;
        let stage = match tag {
            0 => Stage::Build,
            1 => Stage::Elsp(
                u8::try_from(a)
                    .ok()
                    .filter(|k| *k < 4)
                    .ok_or(DriverStateError::OutOfRange("stage"))?,
            ),
            2 | 3 if a < STATE_BOUND => {
                if tag == 2 {
                    Stage::RemapLo { slot: a, entry: b }
                } else {
                    Stage::RemapHi { slot: a, entry: b }
                }
            }
            4 => Stage::Flip,
            5 => Stage::Cpu(u32::try_from(a).map_err(|_| DriverStateError::OutOfRange("stage"))?),
            6 => Stage::Finished,
            _ => return Err(DriverStateError::OutOfRange("stage")),
        };
        let csb_seen = r.u8()?;
        if csb_seen >= 6 && csb_seen != 7 {
            return Err(DriverStateError::OutOfRange("csb_seen"));
        }
        let rt_cursor = r.bounded(rt_pages, "rt_cursor")?;
        let tail_pages = nonzero(r.bounded(PAGES_BOUND, "tail_pages")?, "tail_pages")?;
        let tail_next = r.bounded(STATE_BOUND, "tail_next")?;
        let spare_next = r.bounded(STATE_BOUND, "spare_next")?;
        let ring_tail = r.u32()?;
        if ring_tail >= layout::RING_PAGES * 4096 || ring_tail % 4 != 0 {
            return Err(DriverStateError::OutOfRange("ring_tail"));
        }
        let aperture = r.bounded(STATE_BOUND, "aperture")?;
        let hidden = r.bounded(STATE_BOUND, "hidden")?;
        let actions = r.bounded(STATE_BOUND, "actions")?;
        let now_ns = r.bounded(STATE_BOUND, "now_ns")?;
        Ok(Self {
            profile,
            rng,
            frames,
            frame,
            stage,
            csb_seen,
            rt_cursor,
            tail_pages,
            tail_next,
            spare_next,
            ring_tail,
            aperture,
            hidden,
            actions,
            now_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn round_trip(d: &GuestDriver) {
        let mut buf = [0u8; GuestDriver::SAVED_LEN + 8];
        let n = d.save(&mut buf).unwrap();
        assert_eq!(n, GuestDriver::SAVED_LEN);
        assert_eq!(GuestDriver::restore(&buf[..n]).unwrap(), *d);
    }

    #[test]
    fn save_restore_round_trips_at_every_stage_of_a_run() {
        // A running driver passes through every stage; each saved state restores equal.
        let sc = Scenario::small(Profile::THREE_D, 6, 3).unwrap();
        let mut st = sc.storage();
        let mut m = sc.machine(&mut st, false).unwrap();
        round_trip(&m.driver);
        m.boot().unwrap();
        // One guest action per step, so no stage is passed through unseen.
        m.actions_per_step = 1;
        let mut stages = alloc::vec::Vec::new();
        for _ in 0..20_000 {
            round_trip(&m.driver);
            let tag = core::mem::discriminant(&m.driver.stage);
            if !stages.contains(&tag) {
                stages.push(tag);
            }
            if m.idle() {
                break;
            }
            m.step().unwrap();
        }
        round_trip(&m.driver);
        assert_eq!(stages.len(), 7, "every stage seen");
        for p in PROFILES {
            round_trip(&GuestDriver::new(p.scaled_down(7).unpaced(), 9, 11));
        }
    }

    #[test]
    fn a_restored_driver_continues_the_same_run() {
        // Run half, save, restore into the clone's place: the end state equals the unmigrated one.
        let sc = Scenario::small(Profile::TWO_D, 8, 5).unwrap();
        let expected = sc.run_unmigrated().unwrap();
        let mut st = sc.storage();
        let mut m = sc.machine(&mut st, false).unwrap();
        m.boot().unwrap();
        for _ in 0..300 {
            m.step().unwrap();
        }
        let mut buf = [0u8; GuestDriver::SAVED_LEN];
        m.driver.save(&mut buf).unwrap();
        m.driver = GuestDriver::restore(&buf).unwrap();
        assert!(m.run_to_end(1 << 30).unwrap());
        assert_eq!(crate::scenario::Snapshot::of(&m), expected);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let d = GuestDriver::new(Profile::MEDIA, 4, 1);
        let mut buf = [0u8; GuestDriver::SAVED_LEN];
        assert_eq!(
            d.save(&mut buf[..GuestDriver::SAVED_LEN - 1]),
            Err(DriverStateError::BufferTooSmall)
        );
        let custom = GuestDriver::new(
            Profile {
                name: "custom",
                ..Profile::IDLE
            },
            1,
            1,
        );
        assert_eq!(custom.save(&mut buf), Err(DriverStateError::UnknownProfile));
        d.save(&mut buf).unwrap();
        for len in 0..GuestDriver::SAVED_LEN {
            assert_eq!(
                GuestDriver::restore(&buf[..len]),
                Err(DriverStateError::Truncated)
            );
        }
        // Flip every bit of every byte: each result is Ok or a typed error, never a panic, and the
        // magic, the profile code and the stage tag are checked.
        for i in 0..GuestDriver::SAVED_LEN {
            for bit in 0..8 {
                let mut bad = buf;
                bad[i] ^= 1 << bit;
                let r = GuestDriver::restore(&bad);
                if i < 8 {
                    assert_eq!(r, Err(DriverStateError::BadMagic));
                }
            }
        }
        let mut bad = buf;
        bad[8] = 9;
        assert_eq!(
            GuestDriver::restore(&bad),
            Err(DriverStateError::UnknownProfile)
        );
        // Zero render-target pages would divide by zero in the model: refused.
        let mut bad = buf;
        bad[12..20].fill(0);
        assert_eq!(
            GuestDriver::restore(&bad),
            Err(DriverStateError::OutOfRange("profile.rt_pages"))
        );
    }

    #[test]
    fn a_profile_that_fits_is_left_alone_and_one_that_does_not_is_scaled_to_fit() {
        for p in [
            Profile::IDLE,
            Profile::TWO_D,
            Profile::MEDIA,
            Profile::THREE_D,
        ] {
            assert_eq!(p.fitted(p.hidden_pages()), p, "{}", p.name);
            assert_eq!(p.fitted(u64::MAX), p, "{}", p.name);
            for hidden in [p.hidden_pages() - 1, p.hidden_pages() / 2, 512, 100] {
                let f = p.fitted(hidden);
                assert!(f.hidden_pages() <= hidden, "{} in {hidden}", p.name);
                assert!(f.rt_pages < p.rt_pages, "{} in {hidden}", p.name);
                assert!((1..=f.rt_pages).contains(&f.fill_pages), "{}", p.name);
                assert!(f.hot_pages >= p.hot_pages.min(PPGTT_PAGES), "{}", p.name);
                let (name, frame_ns, mirror) = (f.name, f.frame_ns, f.mirror);
                assert_eq!((name, frame_ns, mirror), (p.name, p.frame_ns, p.mirror));
            }
        }
        // 3D in a 64 MiB hidden slice (`--gm 128`): half the render targets, half the fill.
        let f = Profile::THREE_D.fitted(16384);
        assert_eq!(f.hidden_pages(), 16384 - 1);
        assert_eq!((f.rt_pages, f.fill_pages, f.hot_pages), (16193, 4048, 126));
        // No room past the tail and the PPGTT's pages: unchanged, for the boot to refuse.
        assert_eq!(Profile::THREE_D.fitted(64 + 16), Profile::THREE_D);
    }
}
