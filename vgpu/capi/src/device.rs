//! The safe half of the C interface: the configuration and layout types C sees, and [`Device`],
//! one vGPU with its VFIO migration driver, generic over the three host callbacks so that it is
//! tested from Rust with ordinary Rust backends. Nothing here touches a raw pointer.

use core::fmt::Write as _;

use vgpu::vfio::Host;
use vgpu::{
    AtomicWord, CONFIG_SPACE_SIZE, Caps, CpuDirtyLog, DmaRange, FrameRange, Gfn, GmAddr, GmRange,
    GuestMemory, GuestMemoryMap, HostGtt, HostPlacement, Layout, Limits, MemoryMode, MigState,
    MigrationStorage, Partition, SourceConfig, VfioMigration, Vgpu, VgpuConfig, VgpuError,
    VgpuStorage,
};

use crate::codes::{self, VGPU_MIG_E_ARGUMENT, VGPU_MIG_E_CONFIG};

/// Guest memory travels in the migration stream (`VgpuMigConfig::memory_mode`).
pub const VGPU_MIG_MEMORY_STREAM: u32 = 0;
/// The VMM migrates guest RAM itself and asks for the GPU's writes with `vgpu_mig_dirty_report`;
/// the stream carries device state only.
pub const VGPU_MIG_MEMORY_REPORT: u32 = 1;

/// `VFIO_MIGRATION_STOP_COPY`: the capability every device has.
pub const VGPU_MIG_CAP_STOP_COPY: u32 = 1 << 0;
/// `VFIO_MIGRATION_P2P`: the RUNNING_P2P and PRE_COPY_P2P states.
pub const VGPU_MIG_CAP_P2P: u32 = 1 << 1;
/// `VFIO_MIGRATION_PRE_COPY`: the PRE_COPY states.
pub const VGPU_MIG_CAP_PRE_COPY: u32 = 1 << 2;

/// `VFIO_DEVICE_STATE_ERROR`.
pub const VGPU_MIG_STATE_ERROR: u32 = 0;
/// `VFIO_DEVICE_STATE_STOP`.
pub const VGPU_MIG_STATE_STOP: u32 = 1;
/// `VFIO_DEVICE_STATE_RUNNING`.
pub const VGPU_MIG_STATE_RUNNING: u32 = 2;
/// `VFIO_DEVICE_STATE_STOP_COPY`.
pub const VGPU_MIG_STATE_STOP_COPY: u32 = 3;
/// `VFIO_DEVICE_STATE_RESUMING`.
pub const VGPU_MIG_STATE_RESUMING: u32 = 4;
/// `VFIO_DEVICE_STATE_RUNNING_P2P`.
pub const VGPU_MIG_STATE_RUNNING_P2P: u32 = 5;
/// `VFIO_DEVICE_STATE_PRE_COPY`.
pub const VGPU_MIG_STATE_PRE_COPY: u32 = 6;
/// `VFIO_DEVICE_STATE_PRE_COPY_P2P`.
pub const VGPU_MIG_STATE_PRE_COPY_P2P: u32 = 7;

/// Most guest memory regions a configuration may list.
pub const VGPU_MIG_MAX_REGIONS: usize = 16;
/// Bytes of one guest frame (page) in the guest memory buffer.
pub const VGPU_MIG_PAGE_SIZE: usize = 4096;
/// Offset of the GGTT window in BAR0: 8-byte entry `i` of the vGPU's graphics memory is at
/// `VGPU_MIG_GGTT_WINDOW + 8 * i`.
pub const VGPU_MIG_GGTT_WINDOW: u32 = 0x80_0000;
const _: () = assert!(VGPU_MIG_GGTT_WINDOW == vgpu::instance::GGTT_WINDOW);

/// One region of guest physical memory: `frames` 4 KiB frames from frame `first_gfn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgpuMigRegion {
    /// First guest frame number (guest physical address / 4096).
    pub first_gfn: u64,
    /// Number of frames.
    pub frames: u64,
}

/// What a vGPU is: its guest view of graphics memory, where that memory sits on this host, the
/// guest's RAM, and the migration options. A Skylake GT2 (0x8086:0x1912) device model.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VgpuMigConfig {
    /// Guest graphics address of the aperture (mappable) slice.
    pub aperture_base: u64,
    /// Bytes of the aperture slice (a multiple of 4096, not zero).
    pub aperture_size: u64,
    /// Guest graphics address of the hidden (unmappable) slice.
    pub hidden_base: u64,
    /// Bytes of the hidden slice.
    pub hidden_size: u64,
    /// Host graphics address the aperture slice is placed at.
    pub host_aperture_base: u64,
    /// Host graphics address the hidden slice is placed at.
    pub host_hidden_base: u64,
    /// The guest RAM regions, in ascending order, not overlapping (at most
    /// [`VGPU_MIG_MAX_REGIONS`]). The guest memory buffer holds their frames back to back, in
    /// this order: frame `first_gfn + k` of region `r` at byte `4096 * (frames before r + k)`.
    pub regions: *const VgpuMigRegion,
    /// Entries of `regions`.
    pub region_count: usize,
    /// VFIO migration capabilities (`VGPU_MIG_CAP_*`); must include STOP_COPY.
    pub caps: u32,
    /// `VGPU_MIG_MEMORY_STREAM` or `VGPU_MIG_MEMORY_REPORT`.
    pub memory_mode: u32,
    /// The stream id the source writes (lets a destination tell retries apart).
    pub stream_id: u64,
}

/// Every size a vGPU needs, from `vgpu_mig_layout`. The caller allocates one storage block of
/// `storage_bytes`, aligned to `storage_align`, and one guest memory buffer of
/// `guest_memory_bytes`; the other fields say how the block is divided (for the curious and for
/// budgets), all in bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VgpuMigLayout {
    /// Bytes of the storage block `vgpu_mig_create` takes.
    pub storage_bytes: usize,
    /// Alignment the storage block must have.
    pub storage_align: usize,
    /// Bytes of the guest memory buffer (4096 per guest frame).
    pub guest_memory_bytes: usize,
    /// Guest frames in the configuration's regions.
    pub guest_frames: u64,
    /// The device's control state (the vGPU and its migration driver).
    pub device_bytes: usize,
    /// Virtual PCI config space.
    pub config_space_bytes: usize,
    /// Virtual registers.
    pub vregs_bytes: usize,
    /// Guest GGTT entries.
    pub ggtt_bytes: usize,
    /// The GPU dirty log.
    pub gpu_dirty_bytes: usize,
    /// The source session's send bitmap.
    pub send_bytes: usize,
    /// The source session's scratch buffer (records are built there).
    pub scratch_bytes: usize,
    /// The destination session's staging storage (device state is validated there before commit).
    pub staging_bytes: usize,
}

/// A configuration checked and turned into the library's types.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub(crate) config: VgpuConfig,
    pub(crate) placement: HostPlacement,
    pub(crate) map: GuestMemoryMap,
    pub(crate) caps: Caps,
    pub(crate) source: SourceConfig,
}

/// Element counts of the buffers, from [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) frames: usize,
    pub(crate) vregs: usize,
    pub(crate) ggtt: usize,
    pub(crate) gpu_dirty: usize,
    pub(crate) send: usize,
    pub(crate) scratch: usize,
    pub(crate) staging: usize,
}

impl Parsed {
    /// Check `cfg` with its `regions` (already read from C).
    pub(crate) fn new(cfg: &VgpuMigConfig, regions: &[VgpuMigRegion]) -> Result<Self, i32> {
        if regions.is_empty() || regions.len() > VGPU_MIG_MAX_REGIONS {
            return Err(VGPU_MIG_E_CONFIG);
        }
        let mut ranges =
            [FrameRange::new(Gfn::new(0), 1).map_err(|_| VGPU_MIG_E_CONFIG)?; VGPU_MIG_MAX_REGIONS];
        for (slot, r) in ranges.iter_mut().zip(regions) {
            *slot =
                FrameRange::new(Gfn::new(r.first_gfn), r.frames).map_err(|_| VGPU_MIG_E_CONFIG)?;
        }
        let map = GuestMemoryMap::new(ranges.get(..regions.len()).unwrap_or(&[]))
            .map_err(|_| VGPU_MIG_E_CONFIG)?;
        let range = |base, size| GmRange::new(GmAddr::new(base), size);
        let partition = Partition::new(
            range(cfg.aperture_base, cfg.aperture_size).map_err(|_| VGPU_MIG_E_CONFIG)?,
            range(cfg.hidden_base, cfg.hidden_size).map_err(|_| VGPU_MIG_E_CONFIG)?,
        )
        .map_err(|_| VGPU_MIG_E_CONFIG)?;
        let placement = HostPlacement::contiguous(
            &partition,
            GmAddr::new(cfg.host_aperture_base),
            GmAddr::new(cfg.host_hidden_base),
        )
        .map_err(|_| VGPU_MIG_E_CONFIG)?;
        let all = VGPU_MIG_CAP_STOP_COPY | VGPU_MIG_CAP_P2P | VGPU_MIG_CAP_PRE_COPY;
        if cfg.caps & !all != 0 || cfg.caps & VGPU_MIG_CAP_STOP_COPY == 0 {
            return Err(VGPU_MIG_E_CONFIG);
        }
        let mut source = SourceConfig::default();
        source.stream_id = cfg.stream_id;
        source.memory = match cfg.memory_mode {
            VGPU_MIG_MEMORY_STREAM => MemoryMode::Stream,
            VGPU_MIG_MEMORY_REPORT => MemoryMode::Report,
            _ => return Err(VGPU_MIG_E_CONFIG),
        };
        Ok(Self {
            config: VgpuConfig::skylake(partition),
            placement,
            map,
            caps: Caps(cfg.caps),
            source,
        })
    }

    /// The element count of every buffer.
    pub(crate) fn counts(&self) -> Counts {
        let l = Layout::new(&self.config, &self.map);
        Counts {
            frames: l.frames,
            vregs: l.vregs,
            ggtt: l.ggtt_entries,
            gpu_dirty: l.gpu_dirty_words,
            send: l.send_words,
            // One channel: VFIO's data_fd is one stream.
            scratch: l.scratch_for(1),
            staging: l.staging,
        }
    }
}

/// The error a call reports, and the detail kept for `vgpu_mig_last_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A library error.
    Vgpu(VgpuError),
    /// A code of the C boundary (its text is the detail).
    Code(i32),
}

impl Failure {
    pub(crate) fn code(&self) -> i32 {
        match self {
            Failure::Vgpu(e) => codes::of(e),
            Failure::Code(c) => *c,
        }
    }
}

impl From<VgpuError> for Failure {
    fn from(e: VgpuError) -> Self {
        Failure::Vgpu(e)
    }
}

/// The buffers of one vGPU, carved out of the caller's storage block.
#[derive(Debug)]
pub(crate) struct Buffers<'s> {
    pub(crate) config_space: &'s mut [u8; CONFIG_SPACE_SIZE],
    pub(crate) vregs: &'s mut [u32],
    pub(crate) ggtt: &'s mut [u64],
    pub(crate) gpu_dirty: &'s [AtomicWord],
    pub(crate) send: &'s mut [u64],
    pub(crate) scratch: &'s mut [u8],
    pub(crate) staging: &'s mut [u8],
}

/// One vGPU and its VFIO migration driver, with the host's guest memory (`M`), host GTT (`H`)
/// and CPU dirty log (`C`).
pub(crate) struct Device<'s, M, H, C> {
    vgpu: Vgpu<'s>,
    mig: VfioMigration<'s>,
    mem: M,
    host: H,
    cpu: C,
    last: Option<Failure>,
}

impl<'s, M: GuestMemory, H: HostGtt, C: CpuDirtyLog> Device<'s, M, H, C> {
    /// A vGPU at reset, RUNNING, over `buffers`.
    pub(crate) fn new(
        parsed: &Parsed,
        buffers: Buffers<'s>,
        mem: M,
        host: H,
        cpu: C,
    ) -> Result<Self, Failure> {
        let Buffers {
            config_space,
            vregs,
            ggtt,
            gpu_dirty,
            send,
            scratch,
            staging,
        } = buffers;
        let vgpu = Vgpu::new(
            parsed.config.clone(),
            parsed.placement.clone(),
            parsed.map.clone(),
            VgpuStorage {
                config_space,
                vregs,
                ggtt,
                gpu_dirty,
            },
        )?;
        let mig = VfioMigration::new(
            parsed.caps,
            MigrationStorage {
                send,
                scratch,
                staging,
            },
            parsed.source,
            Limits::DEFAULT,
        )
        .map_err(|e| Failure::Vgpu(e.into()))?;
        Ok(Self {
            vgpu,
            mig,
            mem,
            host,
            cpu,
            last: None,
        })
    }

    /// Record the outcome of a call: a failure is kept for [`last_error`](Self::last_error).
    fn note<T>(&mut self, r: Result<T, Failure>) -> Result<T, i32> {
        r.map_err(|f| {
            self.last = Some(f);
            f.code()
        })
    }

    /// A trapped BAR0 read of `size` (1, 2, 4 or 8) bytes.
    pub(crate) fn mmio_read(&mut self, offset: u32, size: u32) -> Result<u64, i32> {
        let r = access_size(size, &[1, 2, 4, 8])
            .and_then(|s| self.vgpu.mmio_read(offset, s).map_err(Failure::from));
        self.note(r)
    }

    /// A trapped BAR0 write.
    pub(crate) fn mmio_write(&mut self, offset: u32, size: u32, value: u64) -> Result<(), i32> {
        let r = access_size(size, &[1, 2, 4, 8]).and_then(|s| {
            self.vgpu
                .mmio_write(offset, s, value, &self.mem, &mut self.host)
                .map_err(Failure::from)
        });
        self.note(r)
    }

    /// A config-space read of `size` (1, 2 or 4) bytes.
    pub(crate) fn config_read(&mut self, offset: u32, size: u32) -> Result<u32, i32> {
        let r = access_size(size, &[1, 2, 4]).and_then(|s| {
            let off = u16::try_from(offset).map_err(|_| Failure::Code(VGPU_MIG_E_ARGUMENT))?;
            self.vgpu.cfg_read(off, s).map_err(Failure::from)
        });
        self.note(r)
    }

    /// A config-space write.
    pub(crate) fn config_write(&mut self, offset: u32, size: u32, value: u32) -> Result<(), i32> {
        let r = access_size(size, &[1, 2, 4]).and_then(|s| {
            let off = u16::try_from(offset).map_err(|_| Failure::Code(VGPU_MIG_E_ARGUMENT))?;
            self.vgpu.cfg_write(off, s, value).map_err(Failure::from)
        });
        self.note(r)
    }

    /// The migration state, as its VFIO number.
    pub(crate) fn state(&self) -> u32 {
        u32::from(self.vgpu.state() as u8)
    }

    /// Move to the state numbered `requested`, one arc at a time. The state reached is
    /// [`state`](Self::state) afterwards, whether or not this succeeds.
    pub(crate) fn set_state(&mut self, requested: u32) -> Result<(), i32> {
        let r = match MigState::from_raw(requested) {
            None => Err(Failure::Code(VGPU_MIG_E_ARGUMENT)),
            Some(s) => {
                let mut p = Host {
                    mem: &mut self.mem,
                    cpu: &mut self.cpu,
                    gtt: &mut self.host,
                };
                self.mig
                    .set_state(&mut self.vgpu, s, &mut p)
                    .map(|_| ())
                    .map_err(Failure::from)
            }
        };
        self.note(r)
    }

    /// Read migration data into `buf` (PRE_COPY, PRE_COPY_P2P, STOP_COPY): the bytes written;
    /// 0 when nothing is available now, or at the end of the stream ([`is_saved`](Self::is_saved)).
    pub(crate) fn read(&mut self, buf: &mut [u8], now_us: u64) -> Result<usize, i32> {
        let mut p = Host {
            mem: &mut self.mem,
            cpu: &mut self.cpu,
            gtt: &mut self.host,
        };
        let r = self
            .mig
            .read(&self.vgpu, &mut p, now_us, buf)
            .map_err(Failure::from);
        self.note(r)
    }

    /// Whether the saving stream has been read to its end.
    pub(crate) fn is_saved(&self) -> bool {
        self.mig.is_saved()
    }

    /// Write migration data (RESUMING): the bytes consumed.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<usize, i32> {
        let mut p = Host {
            mem: &mut self.mem,
            cpu: &mut self.cpu,
            gtt: &mut self.host,
        };
        let r = self
            .mig
            .write(&self.vgpu, &mut p, data)
            .map_err(Failure::from);
        self.note(r)
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO`: (initial bytes, dirty bytes).
    pub(crate) fn precopy_info(&mut self) -> Result<(u64, u64), i32> {
        let r = self
            .mig
            .precopy_info(&self.vgpu)
            .map(|i| (i.initial_bytes, i.dirty_bytes))
            .map_err(Failure::from);
        self.note(r)
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: the stop-copy size estimate.
    pub(crate) fn stop_copy_size(&self) -> u64 {
        self.mig.stop_copy_size(&self.vgpu)
    }

    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT` for memory mode REPORT: set the bit of each
    /// `page_size` page of `[iova, iova + length)` the GPU wrote since the last report.
    pub(crate) fn dirty_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<u64, i32> {
        let r = self
            .mig
            .dirty_report(&self.vgpu, DmaRange { iova, length }, page_size, bitmap)
            .map_err(Failure::from);
        self.note(r)
    }

    /// The device model's GPU wrote guest frame `gfn` (DMA that the CPU dirty log cannot see).
    pub(crate) fn mark_gpu_dirty(&mut self, gfn: u64) -> Result<(), i32> {
        let r = if self.vgpu.memory_map().contains(Gfn::new(gfn)) {
            self.vgpu.mark_gpu_dirty(Gfn::new(gfn));
            Ok(())
        } else {
            Err(Failure::Code(VGPU_MIG_E_ARGUMENT))
        };
        self.note(r)
    }

    /// `VFIO_DEVICE_RESET`: any migration is abandoned; the vGPU is at reset and RUNNING.
    pub(crate) fn reset(&mut self) {
        self.mig.reset(&mut self.vgpu);
    }

    /// Write the detail of the last failure into `out` as text (truncated to fit); returns its
    /// code (`VGPU_MIG_OK` if nothing failed yet) and the bytes written.
    pub(crate) fn last_error(&self, out: &mut [u8]) -> (i32, usize) {
        let mut w = Truncating { out, len: 0 };
        let code = match self.last {
            None => {
                let _ = w.write_str("no failure");
                codes::VGPU_MIG_OK
            }
            Some(Failure::Vgpu(e)) => {
                let _ = write!(w, "{e}");
                codes::of(&e)
            }
            Some(Failure::Code(c)) => {
                let _ = w.write_str(codes::text(c).to_str().unwrap_or(""));
                c
            }
        };
        (code, w.len)
    }
}

/// The access size in bytes, if it is one of `allowed`.
fn access_size(size: u32, allowed: &[u32]) -> Result<usize, Failure> {
    if allowed.contains(&size) {
        usize::try_from(size).map_err(|_| Failure::Code(VGPU_MIG_E_ARGUMENT))
    } else {
        Err(Failure::Code(VGPU_MIG_E_ARGUMENT))
    }
}

/// A `fmt::Write` into a byte buffer that keeps what fits and drops the rest (on a character
/// boundary).
struct Truncating<'b> {
    out: &'b mut [u8],
    len: usize,
}

impl core::fmt::Write for Truncating<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.out.len().saturating_sub(self.len);
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        if let (Some(dst), Some(src)) = (
            self.out.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

/// Where each buffer sits in the caller's storage block: byte offsets from its start, the
/// device's control state first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) counts: Counts,
    pub(crate) align: usize,
    pub(crate) config_space: usize,
    pub(crate) vregs: usize,
    pub(crate) ggtt: usize,
    pub(crate) gpu_dirty: usize,
    pub(crate) send: usize,
    pub(crate) scratch: usize,
    pub(crate) staging: usize,
    pub(crate) total: usize,
    pub(crate) guest_memory: usize,
}

impl Plan {
    /// The plan for `counts` with a control state of `device` bytes aligned to `device_align`;
    /// `None` if a size overflows the address space.
    pub(crate) fn new(counts: Counts, device: usize, device_align: usize) -> Option<Self> {
        // Every buffer starts on an 8-byte boundary (u64 and atomic words).
        let align = device_align.max(8);
        let mut at = 0usize;
        let mut place = |bytes: usize| -> Option<usize> {
            let start = at.checked_next_multiple_of(8)?;
            at = start.checked_add(bytes)?;
            Some(start)
        };
        place(device)?;
        let word = core::mem::size_of::<u64>();
        let config_space = place(CONFIG_SPACE_SIZE)?;
        let vregs = place(counts.vregs.checked_mul(core::mem::size_of::<u32>())?)?;
        let ggtt = place(counts.ggtt.checked_mul(word)?)?;
        let gpu_dirty = place(
            counts
                .gpu_dirty
                .checked_mul(core::mem::size_of::<AtomicWord>())?,
        )?;
        let send = place(counts.send.checked_mul(word)?)?;
        let scratch = place(counts.scratch)?;
        let staging = place(counts.staging)?;
        let total = at.checked_next_multiple_of(align)?;
        Some(Self {
            counts,
            align,
            config_space,
            vregs,
            ggtt,
            gpu_dirty,
            send,
            scratch,
            staging,
            total,
            guest_memory: counts.frames.checked_mul(VGPU_MIG_PAGE_SIZE)?,
        })
    }

    /// The layout C sees.
    pub(crate) fn layout(&self) -> VgpuMigLayout {
        VgpuMigLayout {
            storage_bytes: self.total,
            storage_align: self.align,
            guest_memory_bytes: self.guest_memory,
            guest_frames: self.counts.frames as u64,
            device_bytes: self.config_space,
            config_space_bytes: CONFIG_SPACE_SIZE,
            vregs_bytes: self.counts.vregs * core::mem::size_of::<u32>(),
            ggtt_bytes: self.counts.ggtt * core::mem::size_of::<u64>(),
            gpu_dirty_bytes: self.counts.gpu_dirty * core::mem::size_of::<AtomicWord>(),
            send_bytes: self.counts.send * core::mem::size_of::<u64>(),
            scratch_bytes: self.counts.scratch,
            staging_bytes: self.counts.staging,
        }
    }
}
