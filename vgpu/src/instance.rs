//! One vGPU instance: config space, register file, GGTT slices, engines, GPU dirty log.

use engines::{
    ContextDescriptor, EngineId, EngineMask, Engines, QuiesceStatus, Workload, check_submission,
    reg,
};

use gmem::GuestMemoryMap;
use gtt::{Generation, Gfn, GgttEntry, GmAddr, GttIndex, HalfWrite, HostPlacement, Partition};
use migstream::DeviceIdentity;
use mmio::{AccessSize, PvInfo, RegEvent, RegFile, RegHooks};

use crate::error::VgpuError;
use crate::fsm::MigState;
use crate::tracking::GpuDirtyLog;
use crate::traits::{GuestMemory, HostGtt};

/// Size of the virtual PCI configuration space (PCIe extended).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Offset of the GGTT window in BAR0 (after 2 MiB of registers and 6 MiB reserved).
pub const GGTT_WINDOW: u32 = 8 << 20;
/// Size of the GGTT window in BAR0: 1 Mi entries of 8 bytes, covering 4 GiB of graphics memory.
pub const GGTT_WINDOW_SIZE: u32 = 8 << 20;

/// Whether a ring head and tail can be queued: the tail in its offset field (bits 20:3), the head
/// 4-byte aligned (its bits 31:21 are the wrap count), and, with the ring's RING_CTL, both offsets
/// inside the ring buffer. The vGPU queues no workload that fails it (a guest error), and a
/// destination refuses a stream that carries one (SPEC.md Appendix A.5; the destination has no
/// RING_CTL, so it checks the fields).
#[must_use]
pub fn queueable_ring(head: u32, tail: u32, ctl: Option<u32>) -> bool {
    let regs = engines::RingRegs {
        head,
        tail,
        start: 0,
        ctl: ctl.unwrap_or(0),
    };
    let fields = tail & !engines::TAIL_OFFSET_MASK == 0 && head & 0b11 == 0;
    let inside = ctl.is_none_or(|_| {
        regs.head_offset() < regs.buffer_len() && regs.tail_offset() < regs.buffer_len()
    });
    fields && inside
}

/// Whether configuration-space byte `offset` is read-only to the guest: the vendor and device id
/// (0x00..0x04), revision and class code (0x08..0x0C) and subsystem ids (0x2C..0x30). A guest write
/// leaves them as they are, so a migrated config space must carry the destination's values there
/// (SPEC.md Appendix A.1).
#[must_use]
pub const fn config_byte_read_only(offset: usize) -> bool {
    offset < 0x04 || (offset >= 0x08 && offset < 0x0C) || (offset >= 0x2C && offset < 0x30)
}

/// What a vGPU is: device identity and the guest's view of its graphics memory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct VgpuConfig {
    /// PCI vendor id (0x8086).
    pub pci_vendor: u16,
    /// PCI device id.
    pub pci_device: u16,
    /// GPU generation (selects the GTT entry format).
    pub generation: Generation,
    /// The guest's view of its aperture and hidden graphics memory (frozen at guest boot; PVINFO).
    pub partition: Partition,
    /// Fence registers given to the vGPU.
    pub fence_count: u32,
    /// Engines the GPU model has.
    pub engines: EngineMask,
    /// vGPU id reported in PVINFO.
    pub vgt_id: u32,
}

impl VgpuConfig {
    /// The register platform of the vGPU's device model (its register table and save list).
    #[must_use]
    pub const fn platform(&self) -> &'static mmio::Platform {
        &mmio::SKL
    }

    /// A gen9 (Skylake GT2, device 0x1912) vGPU with all five engines and the given guest view.
    pub const fn skylake(partition: Partition) -> Self {
        Self {
            pci_vendor: 0x8086,
            pci_device: 0x1912,
            generation: Generation::Gen9,
            partition,
            fence_count: 4,
            engines: EngineMask::ALL,
            vgt_id: 1,
        }
    }

    /// The identity written into (and checked against) a stream header.
    pub const fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            pci_vendor: self.pci_vendor,
            pci_device: self.pci_device,
            generation: generation_code(self.generation),
            fence_count: self.fence_count,
            aperture_base: self.partition.aperture.base().get(),
            aperture_size: self.partition.aperture.size(),
            hidden_base: self.partition.hidden.base().get(),
            hidden_size: self.partition.hidden.size(),
            page_shift: 12,
        }
    }

    /// GGTT entries of storage this configuration needs.
    pub const fn ggtt_storage_len(&self) -> usize {
        self.partition.storage_len()
    }

    fn pvinfo(&self) -> PvInfo {
        PvInfo {
            vgt_id: self.vgt_id,
            caps: PvInfo::CAP_FULL_PPGTT | PvInfo::CAP_HWSP_EMULATION,
            aperture_base: low32(self.partition.aperture.base().get()),
            aperture_size: low32(self.partition.aperture.size()),
            hidden_base: low32(self.partition.hidden.base().get()),
            hidden_size: low32(self.partition.hidden.size()),
            fence_num: self.fence_count,
        }
    }
}

/// The generation number carried in stream headers.
pub const fn generation_code(g: Generation) -> u8 {
    match g {
        Generation::Gen8 => 8,
        Generation::Gen9 => 9,
        Generation::Gen12 => 12,
        Generation::Mtl => 13,
    }
}

fn low32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Storage for one vGPU, provided by the caller (it can live in `static`s).
///
/// Sizes: `config_space` 4 KiB; `vregs` [`mmio::MMIO_DWORDS`] dwords (2 MiB);
/// `ggtt` [`VgpuConfig::ggtt_storage_len`] entries; `gpu_dirty`
/// [`GpuDirtyLog::storage_words`]`(frames)` words where `frames` is the number of guest frames in
/// the memory map.
#[derive(Debug)]
pub struct VgpuStorage<'a> {
    /// Virtual PCI config space.
    pub config_space: &'a mut [u8; CONFIG_SPACE_SIZE],
    /// Virtual registers.
    pub vregs: &'a mut [u32],
    /// Guest GGTT entries of the vGPU's two slices.
    pub ggtt: &'a mut [u64],
    /// GPU-side dirty log ([`GpuDirtyLog`]): one bit per guest frame and an activity flag,
    /// shared (a GPU thread marks it while others hold the vGPU).
    pub gpu_dirty: &'a [gmem::AtomicWord],
}

/// Derived state, rebuilt on restore by replaying side-effect registers; never migrated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Derived {
    /// Hardware status page address of each engine (from HWS_PGA).
    pub hws_pga: [u32; 5],
    /// Execlist submission enabled per engine (from RING_MODE).
    pub execlists: [bool; 5],
    /// Pipe A enabled (from PIPECONF).
    pub pipe_a: bool,
    /// Pipes A, B, C enabled (from the pipe-enable events).
    pub pipes: [bool; 3],
    /// The interrupt line as the guest sees it: delivery enabled and something pending.
    pub irq_line: bool,
    /// 64 KiB PPGTT pages enabled (gen9: `GAMW_ECO_DEV_RW_IA` bits 3:0 all set; see
    /// [`gtt::PpgttRoot::honours_64k`] for the other generations).
    pub ips_64k: bool,
}

/// A mediated vGPU: the state the hypervisor traps and emulates.
#[derive(Debug)]
pub struct Vgpu<'a> {
    config: VgpuConfig,
    placement: HostPlacement,
    mem_map: GuestMemoryMap,
    cfg: &'a mut [u8; CONFIG_SPACE_SIZE],
    regs: RegFile<'a>,
    ggtt: gtt::GgttSlices<'a>,
    engines: Engines,
    gpu_dirty: GpuDirtyLog<'a>,
    derived: Derived,
    state: MigState,
    guest_errors: u32,
    msi: u32,
    ppgtts: crate::ppgtt::PpgttList,
}

const PIPECONF_A: u32 = 0x70008;
const PIPECONF_ENABLE: u32 = 1 << 31;

/// Side effects of register writes, collected during a register-file write and applied after it.
#[derive(Default)]
struct Effects {
    elsp: heapless::Vec<(EngineId, u32), 4>,
    csb_read: heapless::Vec<(EngineId, u32), 4>,
    /// Every fence register a write or a restore touched (a restore replays all 32).
    fences: heapless::Vec<(u8, u64), 32>,
    g2v: heapless::Vec<u32, 2>,
    /// Forcewake requests written: (acknowledgement register, new request value).
    forcewake: heapless::Vec<(u32, u32), 3>,
    /// RESET_CTL registers written: (offset, new value).
    reset_ctl: heapless::Vec<(u32, u32), 5>,
    irq: bool,
    derived: Derived,
}

/// Per-engine RESET_CTL (masked): bit 0 requests a reset, bit 1 (READY_TO_RESET) answers it.
const RESET_CTL: u32 = 0xD0;

/// The RESET_CTL value the device model keeps: READY_TO_RESET follows the request (there is
/// nothing in flight to wait for once the guest asks).
const fn reset_ctl_answer(v: u32) -> u32 {
    (v & !2) | ((v & 1) << 1)
}

/// Gen9 forcewake request registers (masked) and the acknowledgement registers that mirror
/// their low 16 bits.
const FORCEWAKE: [(u32, u32); 3] = [(0xA278, 0x0D84), (0xA270, 0x0D88), (0xA188, 0x13_0044)];

impl RegHooks for Effects {
    fn after_write(&mut self, offset: u32, _old: u32, new: u32) {
        for id in EngineId::ALL {
            let base = id.mmio_base();
            let i = id.index();
            if offset == base + reg::ELSP {
                let _ = self.elsp.push((id, new));
            } else if offset == base + reg::CSB_PTR {
                let _ = self.csb_read.push((id, new));
            } else if offset == base + reg::HWS_PGA {
                if let Some(slot) = self.derived.hws_pga.get_mut(i) {
                    *slot = new;
                }
            } else if offset == base + RESET_CTL {
                let _ = self.reset_ctl.push((offset, new));
            } else if offset == base + reg::RING_MODE {
                // GFX_MODE bit 15: execlist enable (stored after the masked-write merge).
                if let Some(slot) = self.derived.execlists.get_mut(i) {
                    *slot = new & (1 << 15) != 0;
                }
            }
        }
        if offset == PIPECONF_A {
            self.derived.pipe_a = new & PIPECONF_ENABLE != 0;
        }
        if offset == gtt::ppgtt::GAMW_ECO_DEV_RW_IA {
            self.derived.ips_64k = gtt::ppgtt::ips_enabled(new);
        }
        if let Some(&(_, ack)) = FORCEWAKE.iter().find(|(req, _)| *req == offset) {
            let _ = self.forcewake.push((ack, new & 0xFFFF));
        }
    }

    fn on_event(&mut self, event: RegEvent) {
        match event {
            RegEvent::InterruptRecompute { .. } => self.irq = true,
            RegEvent::FenceProgrammed { index, value } => {
                // Several events for one fence in one access: keep the last value.
                if let Some(f) = self.fences.iter_mut().find(|(i, _)| *i == index) {
                    f.1 = value;
                } else {
                    let _ = self.fences.push((index, value));
                }
            }
            RegEvent::G2vNotify { value } => {
                let _ = self.g2v.push(value);
            }
            RegEvent::PipeEnable { pipe, enabled } => {
                if let Some(p) = self.derived.pipes.get_mut(usize::from(pipe)) {
                    *p = enabled;
                }
            }
            _ => {}
        }
    }
}

impl<'a> Vgpu<'a> {
    /// A vGPU at reset, with its graphics memory placed at `placement` on this host.
    pub fn new(
        config: VgpuConfig,
        placement: HostPlacement,
        mem_map: GuestMemoryMap,
        storage: VgpuStorage<'a>,
    ) -> Result<Self, VgpuError> {
        let gpu_dirty = GpuDirtyLog::new(&mem_map, storage.gpu_dirty)?;
        let mut regs = RegFile::new(config.platform(), storage.vregs)?;
        regs.reset_with(&config.pvinfo());
        let mut ggtt = gtt::GgttSlices::new(config.partition, storage.ggtt)?;
        ggtt.clear();
        let mut v = Self {
            engines: Engines::new(config.engines),
            config,
            placement,
            mem_map,
            cfg: storage.config_space,
            regs,
            ggtt,
            gpu_dirty,
            derived: Derived::default(),
            state: MigState::Running,
            guest_errors: 0,
            msi: 0,
            ppgtts: crate::ppgtt::PpgttList::new(),
        };
        v.reset_config_space();
        Ok(v)
    }

    /// Device reset: registers, GGTT, engines, config space and tracking back to their state at
    /// creation; the migration state returns to RUNNING (this is also how ERROR is left).
    pub fn reset(&mut self) {
        self.regs.reset_with(&self.config.pvinfo());
        self.ggtt.clear();
        self.engines = Engines::new(self.config.engines);
        self.ppgtts.clear();
        self.msi = 0;
        self.gpu_dirty.clear();
        self.derived = Derived::default();
        self.state = MigState::Running;
        self.guest_errors = 0;
        self.reset_config_space();
    }

    fn reset_config_space(&mut self) {
        self.cfg.fill(0);
        let mut put = |off: usize, bytes: &[u8]| {
            if let Some(dst) = self.cfg.get_mut(off..off + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(0x00, &self.config.pci_vendor.to_le_bytes());
        put(0x02, &self.config.pci_device.to_le_bytes());
        put(0x08, &[0x07, 0x00, 0x00, 0x03]); // revision 7, VGA-compatible display controller
        put(0x10, &0x0000_0004u32.to_le_bytes()); // BAR0: 64-bit memory (GTTMMADR)
        put(0x18, &0x0000_000Cu32.to_le_bytes()); // BAR2: 64-bit prefetchable memory (aperture)
        put(0x2C, &self.config.pci_vendor.to_le_bytes()); // subsystem vendor
        put(0x2E, &self.config.pci_device.to_le_bytes());
    }

    /// The configuration this vGPU was created with.
    pub fn config(&self) -> &VgpuConfig {
        &self.config
    }

    /// Where this vGPU's graphics memory sits in the host GGTT.
    pub fn placement(&self) -> &HostPlacement {
        &self.placement
    }

    /// The guest memory layout the vGPU tracks.
    pub fn memory_map(&self) -> &GuestMemoryMap {
        &self.mem_map
    }

    /// The register file.
    pub fn regs(&self) -> &RegFile<'a> {
        &self.regs
    }

    /// The register file, for the device model (writes bypass trap semantics with `poke`).
    pub fn regs_mut(&mut self) -> &mut RegFile<'a> {
        &mut self.regs
    }

    /// The guest GGTT of the vGPU's slices.
    pub fn ggtt(&self) -> &gtt::GgttSlices<'a> {
        &self.ggtt
    }

    /// Engine state.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// Engine state, for the device model.
    pub fn engines_mut(&mut self) -> &mut Engines {
        &mut self.engines
    }

    /// Raw config space.
    pub fn config_space(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        self.cfg
    }

    /// State rebuilt from side-effect registers.
    pub fn derived(&self) -> &Derived {
        &self.derived
    }

    /// The migration state.
    pub fn state(&self) -> MigState {
        self.state
    }

    pub(crate) fn set_state(&mut self, s: MigState) {
        self.state = s;
    }

    /// Guest accesses the device model refused since creation (bad descriptors, reserved GTT bits).
    pub fn guest_errors(&self) -> u32 {
        self.guest_errors
    }

    /// The GPU-side dirty log. Clone it for a thread that marks GPU writes without holding the
    /// vGPU (see the crate docs' locking rules).
    pub fn gpu_dirty(&self) -> &GpuDirtyLog<'a> {
        &self.gpu_dirty
    }

    /// Guest frames in the GPU dirty log (written since the last harvest).
    pub fn gpu_dirty_count(&self) -> usize {
        self.gpu_dirty.count()
    }

    /// Record that the vGPU ran work (the device model or backend calls this when it schedules the
    /// vGPU); used by [`GpuDirtyPrecision::MappedIfActive`](crate::source::GpuDirtyPrecision).
    pub fn mark_gpu_active(&self) {
        self.gpu_dirty.mark_active();
    }

    /// Whether the vGPU ran work since the last call (and forget it).
    pub fn take_gpu_active(&self) -> bool {
        self.gpu_dirty.take_active()
    }

    /// Record that the GPU wrote guest frame `gfn` (the device model or a command scanner calls
    /// this after the write): [`GpuDirtyLog::mark`].
    pub fn mark_gpu_dirty(&self, gfn: Gfn) {
        self.gpu_dirty.mark(gfn);
    }

    /// Translate a guest graphics memory address through the guest GGTT to (frame, offset in page).
    pub fn translate(&self, gma: GmAddr) -> Option<(Gfn, usize)> {
        let e = self.ggtt.read(gma.index()?).ok()?;
        if !e.is_present() || !self.mem_map.contains(e.frame()) {
            return None;
        }
        Some((e.frame(), usize::try_from(gma.page_offset()).ok()?))
    }

    /// Read configuration space (1, 2 or 4 bytes).
    pub fn cfg_read(&self, offset: u16, size: usize) -> Result<u32, VgpuError> {
        let off = usize::from(offset);
        let bytes =
            self.cfg
                .get(off..off + size)
                .ok_or(VgpuError::Mmio(mmio::MmioError::OutOfRange {
                    offset: u32::from(offset),
                }))?;
        let mut v = [0u8; 4];
        v.get_mut(..size)
            .ok_or(VgpuError::Mmio(mmio::MmioError::BadSize))?
            .copy_from_slice(bytes);
        Ok(u32::from_le_bytes(v))
    }

    /// Write configuration space. Identity (vendor, device, revision, class) is read-only.
    pub fn cfg_write(&mut self, offset: u16, size: usize, value: u32) -> Result<(), VgpuError> {
        let off = usize::from(offset);
        if !matches!(size, 1 | 2 | 4) || off % size != 0 || off + size > CONFIG_SPACE_SIZE {
            return Err(VgpuError::Mmio(mmio::MmioError::Misaligned {
                offset: u32::from(offset),
                size: 4,
            }));
        }
        let bytes = value.to_le_bytes();
        for i in 0..size {
            let o = off + i;
            if config_byte_read_only(o) {
                continue;
            }
            if let (Some(dst), Some(src)) = (self.cfg.get_mut(o), bytes.get(i)) {
                *dst = *src;
            }
        }
        Ok(())
    }

    /// A trapped guest read of BAR0: registers in the first 2 MiB, the GGTT window at 8 MiB.
    pub fn mmio_read(&mut self, offset: u32, size: usize) -> Result<u64, VgpuError> {
        if let Some(off) = offset
            .checked_sub(GGTT_WINDOW)
            .filter(|o| *o < GGTT_WINDOW_SIZE)
        {
            return self.ggtt_read(off, size);
        }
        Ok(self.regs.read(offset, AccessSize::from_bytes(size)?)?)
    }

    /// A trapped guest write of BAR0. Side effects (ELSP submission, CSB read pointer, GGTT shadowing)
    /// run before it returns; `mem` is read for the submitted contexts, `host` programs shadows.
    pub fn mmio_write(
        &mut self,
        offset: u32,
        size: usize,
        value: u64,
        mem: &dyn GuestMemory,
        host: &mut dyn HostGtt,
    ) -> Result<(), VgpuError> {
        if let Some(off) = offset
            .checked_sub(GGTT_WINDOW)
            .filter(|o| *o < GGTT_WINDOW_SIZE)
        {
            return self.ggtt_write(off, size, value, host);
        }
        let mut fx = Effects {
            derived: self.derived,
            ..Effects::default()
        };
        self.regs
            .write(offset, AccessSize::from_bytes(size)?, value, &mut fx)?;
        let ips_changed = fx.derived.ips_64k != self.derived.ips_64k;
        if offset == gtt::ppgtt::GAMW_ECO_DEV_RW_IA
            && !matches!(
                self.regs.peek(offset) & gtt::ppgtt::GAMW_IPS_FIELD,
                0 | gtt::ppgtt::GAMW_IPS_FIELD
            )
        {
            // 64 KiB pages for some engines only: GVT-g refuses the setting (a PPGTT may run on
            // any engine); it is stored, 64 KiB pages stay off, and the guest error is counted.
            self.guest_errors = self.guest_errors.saturating_add(1);
        }
        self.derived = fx.derived;
        for (ack, v) in fx.forcewake {
            self.regs.poke(ack, v);
        }
        for (off, v) in fx.reset_ctl {
            self.regs.poke(off, reset_ctl_answer(v));
        }
        if ips_changed {
            self.revalidate_ppgtts(mem);
        }
        for (index, value) in fx.fences {
            self.program_fence(index, value, host)?;
        }
        for value in fx.g2v {
            self.g2v_notify(value);
        }
        if fx.irq {
            self.update_irq();
        }
        for (id, v) in fx.csb_read {
            if let Some(e) = self.engines.engine_mut(id) {
                // The guest acknowledges CSB entries by moving the read pointer (bits 10:8).
                let _ = e.csb.set_read_ptr(((v >> 8) & 7) as u8);
            }
        }
        for (id, dword) in fx.elsp {
            if let Some(descs) = self.engines.elsp_write(id, dword)? {
                self.submit(id, descs, mem)?;
            }
        }
        Ok(())
    }

    fn submit(
        &mut self,
        id: EngineId,
        descs: [ContextDescriptor; 2],
        mem: &dyn GuestMemory,
    ) -> Result<(), VgpuError> {
        if check_submission(&descs).is_err() {
            self.guest_errors = self.guest_errors.saturating_add(1);
            return Ok(());
        }
        for (i, d) in descs.iter().enumerate().filter(|(_, d)| d.valid()) {
            let Some(ctx) = self.read_ring_context(id, d, mem) else {
                self.guest_errors = self.guest_errors.saturating_add(1);
                continue;
            };
            if !queueable_ring(ctx.head, ctx.tail, Some(ctx.ctl)) {
                // Head or tail outside the ring, or not aligned as the registers store them.
                self.guest_errors = self.guest_errors.saturating_add(1);
                continue;
            }
            // A context resubmitted while earlier work on it is pending continues where that work ends
            // (the context image in memory still holds the old head until the GPU saves it).
            let head = self
                .engines
                .engine(id)
                .and_then(|e| {
                    e.running
                        .iter()
                        .chain(e.queue.iter())
                        .filter(|w| w.desc.lrca() == d.lrca())
                        .last()
                        .map(|w| w.ring_tail)
                })
                .unwrap_or(ctx.head);
            let w = Workload {
                engine: id,
                desc: *d,
                ring_head: head,
                ring_tail: ctx.tail,
                schedule_in: i == 0,
            };
            if self.engines.enqueue(w).is_err() {
                self.guest_errors = self.guest_errors.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Read the ring registers of a logical ring context from guest memory.
    pub fn read_ring_context(
        &self,
        engine: EngineId,
        d: &ContextDescriptor,
        mem: &dyn GuestMemory,
    ) -> Option<RingContext> {
        let page = GmAddr::new(u64::from(d.lrca_address())).checked_add(engines::LRC_STATE_PAGE)?;
        let (gfn, _) = self.translate(page)?;
        let mut image = [0u8; 4096];
        mem.read(gfn, 0, &mut image).ok()?;
        // The register-state page as the hardware lays it out; a malformed image is a guest error.
        let state = engines::LrcState::parse_for(engine, &image).ok()?;
        Some(RingContext {
            head: state.ring.head,
            tail: state.ring.tail,
            start: state.ring.start,
            ctl: state.ring.ctl,
            state_page: gfn,
            pdp: state.pdp,
        })
    }

    /// Write every present engine's CSB and execlist status into the registers.
    pub fn mirror_engines(&mut self) {
        self.engines.mirror(&mut self.regs);
    }

    fn ggtt_read(&self, off: u32, size: usize) -> Result<u64, VgpuError> {
        let index = GttIndex::new(off / 8);
        let Ok(entry) = self.ggtt.read(index) else {
            return Ok(0); // outside the vGPU: reads 0
        };
        match (size, off % 8) {
            (8, 0) => Ok(entry.into_bits()),
            // A half the guest wrote and whose partner has not come yet reads back as written.
            (4, 0) | (4, 4) => Ok(u64::from(self.ggtt.read_half(index, off % 8 == 4)?)),
            _ => Err(VgpuError::Mmio(mmio::MmioError::Misaligned {
                offset: off + GGTT_WINDOW,
                size: u8::try_from(size).unwrap_or(u8::MAX),
            })),
        }
    }

    fn ggtt_write(
        &mut self,
        off: u32,
        size: usize,
        value: u64,
        host: &mut dyn HostGtt,
    ) -> Result<(), VgpuError> {
        let index = GttIndex::new(off / 8);
        if self.ggtt.read(index).is_err() {
            return Ok(()); // outside the vGPU's slices: dropped, as a ballooned guest expects
        }
        let complete = match (size, off % 8) {
            (8, 0) => {
                let e = GgttEntry::from_bits(value);
                if e.validate(self.config.generation).is_err() {
                    self.guest_errors = self.guest_errors.saturating_add(1);
                    return Ok(());
                }
                self.ggtt.write(index, e)?;
                Some(e)
            }
            (4, 0) | (4, 4) => {
                let half = u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0);
                match self.ggtt.write_half(index, off % 8 == 4, half)? {
                    HalfWrite::Completed(e) => Some(e),
                    HalfWrite::Pending { evicted } => {
                        if let Some(ev) = evicted {
                            let e = self.ggtt.read(ev)?;
                            self.shadow(ev, e, host)?;
                        }
                        None
                    }
                }
            }
            _ => {
                return Err(VgpuError::Mmio(mmio::MmioError::Misaligned {
                    offset: off + GGTT_WINDOW,
                    size: u8::try_from(size).unwrap_or(u8::MAX),
                }));
            }
        };
        if let Some(e) = complete {
            if e.validate(self.config.generation).is_err() {
                // A half-assembled entry with reserved bits: keep the guest copy, shadow scratch.
                self.guest_errors = self.guest_errors.saturating_add(1);
                let _ = self.ggtt.write(index, GgttEntry::from_bits(0));
                self.shadow(index, GgttEntry::from_bits(0), host)?;
                return Ok(());
            }
            self.shadow(index, e, host)?;
        }
        Ok(())
    }

    /// Program the host entry for guest index `index`, and mark a newly mapped frame dirty: a page
    /// remapped into graphics memory must be (re)sent.
    fn shadow(
        &mut self,
        index: GttIndex,
        e: GgttEntry,
        host: &mut dyn HostGtt,
    ) -> Result<(), VgpuError> {
        if let Some(gfn) = self.program_host_entry(index, e, host)? {
            self.mark_gpu_dirty(gfn);
        }
        Ok(())
    }

    /// Program the host entry of guest index `index` from guest entry `e` (the scratch page unless
    /// it maps a frame of guest memory); returns the frame it maps.
    fn program_host_entry(
        &self,
        index: GttIndex,
        e: GgttEntry,
        host: &mut dyn HostGtt,
    ) -> Result<Option<Gfn>, VgpuError> {
        let host_index = self
            .config
            .partition
            .g2h_index(&self.placement, index)
            .ok_or(VgpuError::Gtt(gtt::GttError::OutOfRange))?;
        let mapping =
            (e.is_present() && self.mem_map.contains(e.frame())).then_some((e.frame(), e));
        host.map(host_index, mapping)
            .map_err(|_| VgpuError::HostGtt)?;
        Ok(mapping.map(|(gfn, _)| gfn))
    }

    /// Program the host fence for guest fence `index` from the guest's 64-bit fence value: the start
    /// and end graphics addresses (bits 31:12 of each dword) are translated to this host's
    /// placement. A valid fence whose range does not map to one contiguous host range (a split
    /// placement cut through it) is programmed disabled and counted as a guest error.
    fn program_fence(
        &mut self,
        index: u8,
        value: u64,
        host: &mut dyn HostGtt,
    ) -> Result<(), VgpuError> {
        if u32::from(index) >= self.config.fence_count {
            self.guest_errors = self.guest_errors.saturating_add(1);
            return Ok(());
        }
        let lo = value & 0xFFFF_FFFF;
        let hi = value >> 32;
        let mapped = if lo & 1 == 0 {
            None
        } else {
            let (start, end) = (lo & !0xFFF, hi & !0xFFF);
            let part = &self.config.partition;
            let g2h = |a: u64| part.g2h(&self.placement, GmAddr::new(a)).map(GmAddr::get);
            match (g2h(start), g2h(end)) {
                (Some(hs), Some(he)) if he.checked_sub(hs) == end.checked_sub(start) => {
                    Some((hs | (lo & 0xFFF)) | ((he | (hi & 0xFFF)) << 32))
                }
                _ => {
                    self.guest_errors = self.guest_errors.saturating_add(1);
                    None
                }
            }
        };
        host.program_fence(index, mapped)
            .map_err(|_| VgpuError::HostGtt)
    }

    /// A guest notification through PVINFO `g2v_notify`: PPGTT create (2: 3-level, 4: 4-level)
    /// and destroy (3, 5) with the root pointers in the PVINFO `pdp` fields. Other values are
    /// ignored (execlist context notifications need no action here).
    fn g2v_notify(&mut self, value: u32) {
        let pdp = |i: u32| {
            let lo = u64::from(self.regs.peek(mmio::pvinfo_off::PDP0_LO + 8 * i));
            let hi = u64::from(self.regs.peek(mmio::pvinfo_off::PDP0_LO + 8 * i + 4));
            (hi << 32 | lo) >> 12
        };
        let generation = self.config.generation;
        let root = match value {
            2 | 3 => {
                let pd = |i| Some(pdp(i)).filter(|f| *f != 0).map(Gfn::new);
                let pds = [pd(0), pd(1), pd(2), pd(3)];
                if pds.iter().all(Option::is_none) {
                    // A 3-level PPGTT without a page directory maps nothing: creating one is a
                    // guest error (and there is none to destroy).
                    if value == 2 {
                        self.guest_errors = self.guest_errors.saturating_add(1);
                    }
                    return;
                }
                gtt::PpgttRoot::three_level(generation, pds)
            }
            4 | 5 => gtt::PpgttRoot::four_level(generation, Gfn::new(pdp(0))),
            _ => return,
        }
        .with_ips(self.derived.ips_64k);
        let known = self.ppgtts.iter().position(|r| *r == root);
        match (value, known) {
            (2 | 4, None) if self.ppgtts.push(root).is_err() => {
                self.guest_errors = self.guest_errors.saturating_add(1);
            }
            (3 | 5, Some(i)) => {
                self.ppgtts.remove(i);
            }
            _ => {}
        }
    }
    /// The guest changed whether 64 KiB pages are enabled: every announced PPGTT now
    /// translates differently, so each one takes the new setting and its tree is walked again
    /// (as GVT-g re-shadows them). A tree that no longer walks cleanly under the new setting
    /// (a 64 KiB entry not 64 KiB aligned, say) is a guest error; the root stays announced.
    fn revalidate_ppgtts(&mut self, mem: &dyn GuestMemory) {
        let ips = self.derived.ips_64k;
        for root in self.ppgtts.iter_mut() {
            *root = root.with_ips(ips);
        }
        let bad = self
            .ppgtts
            .iter()
            .filter(|r| crate::ppgtt::check_tree(r, &self.mem_map, mem).is_err())
            .count();
        self.guest_errors = self
            .guest_errors
            .saturating_add(u32::try_from(bad).unwrap_or(u32::MAX));
    }

    /// The PPGTTs the guest announced.
    pub fn ppgtts(&self) -> &crate::ppgtt::PpgttList {
        &self.ppgtts
    }

    pub(crate) fn set_ppgtts(&mut self, list: crate::ppgtt::PpgttList) {
        self.ppgtts = list;
    }

    /// Recompute the interrupt state from the registers: the master register reports which blocks
    /// have an identity bit that is enabled, and a rising interrupt line (delivery enabled and
    /// something pending) is one MSI for the embedder to inject ([`take_msi`](Self::take_msi)).
    pub fn update_irq(&mut self) {
        let mut pending = 0u32;
        for b in mmio::GEN9_IRQ_BLOCKS {
            if self.regs.peek(b.base + 8) & self.regs.peek(b.base + 0xC) != 0 {
                pending |= b.master_bit;
            }
        }
        let master = self.regs.peek(mmio::MASTER_IRQ);
        let reported = mmio::GEN9_IRQ_BLOCKS
            .iter()
            .fold(0, |m, b| m | b.master_bit);
        self.regs
            .poke(mmio::MASTER_IRQ, (master & !reported) | pending);
        let line = master & mmio::MASTER_IRQ_ENABLE != 0 && pending != 0;
        if line && !self.derived.irq_line {
            self.msi = self.msi.saturating_add(1);
        }
        self.derived.irq_line = line;
    }

    /// An event of the device (engine completion, vblank, ...): bit `bit` of interrupt block `block`
    /// (its ISR/IMR/IIR/IER base). If it is not masked in IMR it is latched in IIR, and the
    /// interrupt state is recomputed.
    pub fn raise_event(&mut self, block: u32, bit: u32) {
        let mask = 1u32.checked_shl(bit).unwrap_or(0);
        if self.regs.peek(block + 4) & mask == 0 {
            let iir = self.regs.peek(block + 8);
            self.regs.poke(block + 8, iir | mask);
        }
        self.update_irq();
    }

    /// MSIs raised since the last call: the embedder injects one interrupt per count (or one in
    /// all, as MSI is edge-triggered and the guest reads the identity registers).
    pub fn take_msi(&mut self) -> u32 {
        core::mem::take(&mut self.msi)
    }

    /// Re-program every host entry from the guest GGTT (after restore, or after a host placement
    /// change).
    pub fn reshadow_all(&mut self, host: &mut dyn HostGtt) -> Result<(), VgpuError> {
        let n = self.ggtt.entries().len();
        for slot in 0..n {
            let Some(index) = self.config.partition.index_at(slot) else {
                continue;
            };
            let e = self.ggtt.read(index)?;
            self.program_host_entry(index, e, host)?;
        }
        Ok(())
    }

    /// Stop dispatching new work (queued work stays queued). Returns what is still in flight: the
    /// device model must let it complete before the state is saved.
    pub fn quiesce(&mut self) -> QuiesceStatus {
        self.engines.quiesce()
    }

    /// Undo [`quiesce`](Self::quiesce) exactly.
    pub fn resume(&mut self) {
        self.engines.resume();
    }

    /// The STOP → RUNNING arc (for example after a committed restore): dispatch resumes.
    pub fn start(&mut self) -> Result<(), VgpuError> {
        if self.state != MigState::Stop {
            return Err(VgpuError::WrongPhase);
        }
        self.engines.resume();
        self.state = MigState::Running;
        Ok(())
    }

    pub(crate) fn cfg_mut(&mut self) -> &mut [u8; CONFIG_SPACE_SIZE] {
        self.cfg
    }

    pub(crate) fn ggtt_mut(&mut self) -> &mut gtt::GgttSlices<'a> {
        &mut self.ggtt
    }

    /// Apply staged registers with the known-good order (copy, replay side effects, copy again),
    /// rebuilding derived state through the same hooks the guest's writes use.
    pub(crate) fn apply_registers(
        &mut self,
        payload: &[u8],
        host: &mut dyn HostGtt,
    ) -> Result<(), VgpuError> {
        let mut fx = Effects {
            derived: self.derived,
            ..Effects::default()
        };
        <mmio::RegistersSection as migstream::Section>::apply((&mut self.regs, &mut fx), payload)?;
        self.derived = fx.derived;
        for (ack, v) in fx.forcewake {
            self.regs.poke(ack, v);
        }
        for (off, v) in fx.reset_ctl {
            self.regs.poke(off, reset_ctl_answer(v));
        }
        // Fences are reprogrammed for this host's placement (every fence the vGPU has: the
        // replay raises all 32, those beyond `fence_count` are not the guest's and stay
        // unprogrammed); the interrupt state is derived.
        for (index, value) in fx.fences {
            if u32::from(index) < self.config.fence_count {
                self.program_fence(index, value, host)?;
            }
        }
        self.update_irq();
        // A restore is not an interrupt: the guest saw the pending state before the migration.
        self.msi = 0;
        Ok(())
    }

    pub(crate) fn reset_registers(&mut self) {
        self.regs.reset_with(&self.config.pvinfo());
        self.derived = Derived::default();
    }
}

/// The ring registers of a logical ring context, as read from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RingContext {
    /// RING_HEAD value.
    pub head: u32,
    /// RING_TAIL value.
    pub tail: u32,
    /// RING_START value (graphics address of the ring buffer).
    pub start: u32,
    /// RING_CTL value (buffer length, enable).
    pub ctl: u32,
    /// Guest frame of the context's register-state page.
    pub state_page: Gfn,
    /// The context's page-directory pointers (`pdp[0]` is the PML4 address of a 4-level PPGTT).
    pub pdp: [u64; 4],
}
