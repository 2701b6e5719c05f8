//! How a microhypervisor embeds a vGPU: every byte of state in statics, no allocator, trapped
//! MMIO accesses routed into the vGPU, migration driven from the hypervisor's own loop.
//!
//! This module is built by `cargo xtask ci` as part of the `no_std` link check, so it stays true to
//! the API. The guest RAM here is a static array standing in for memory the hypervisor maps; the
//! host GGTT writes go nowhere. Everything else is what a real embedding does.

use core::sync::atomic::AtomicU64;

use gmem::{FrameRange, GuestMemoryMap, words_for};
use gtt::{Gfn, GgttEntry, GmAddr, GmRange, GttIndex, HostPlacement, Partition};
use mmio::{MMIO_DWORDS, VregStore};
use static_cell::ConstStaticCell;
use vgpu::error::VgpuError;
use vgpu::instance::{CONFIG_SPACE_SIZE, Vgpu, VgpuConfig, VgpuStorage};
use vgpu::source::{SourceConfig, SourceEvent, SourceSession};
use vgpu::tracking::GpuDirtyLog;
use vgpu::traits::{GuestMemory, HostError, HostGtt, MemoryError};

/// A small vGPU: 1 MiB of aperture and 1 MiB of hidden graphics memory.
const APERTURE: u64 = 1 << 20;
const HIDDEN: u64 = 1 << 20;
const GGTT_ENTRIES: usize = gtt::storage_len(APERTURE, HIDDEN);
/// Guest RAM the example maps: 1024 frames (4 MiB) from frame 0x100.
const RAM_FRAMES: usize = 1024;
const DIRTY_WORDS: usize = words_for(RAM_FRAMES);

// Zero-initialised statics (in .bss), each handed out once as `&'static mut`: nothing large is ever
// built on the stack.
static CONFIG_SPACE: ConstStaticCell<[u8; CONFIG_SPACE_SIZE]> =
    ConstStaticCell::new([0; CONFIG_SPACE_SIZE]);
static VREGS: ConstStaticCell<VregStore<MMIO_DWORDS>> = ConstStaticCell::new(VregStore::new());
static GGTT: ConstStaticCell<[u64; GGTT_ENTRIES]> = ConstStaticCell::new([0; GGTT_ENTRIES]);
/// The GPU dirty log is shared (a GPU thread marks it through `&`), so it is a plain static.
static GPU_DIRTY: [AtomicU64; GpuDirtyLog::storage_words(RAM_FRAMES)] =
    [const { AtomicU64::new(0) }; GpuDirtyLog::storage_words(RAM_FRAMES)];
static RAM: ConstStaticCell<[u8; RAM_FRAMES * 4096]> = ConstStaticCell::new([0; RAM_FRAMES * 4096]);
static SEND: ConstStaticCell<[u64; DIRTY_WORDS]> = ConstStaticCell::new([0; DIRTY_WORDS]);
static SCRATCH: ConstStaticCell<[u8; 64 * 1024]> = ConstStaticCell::new([0; 64 * 1024]);

/// Guest RAM as the hypervisor sees it.
pub struct Ram {
    map: GuestMemoryMap,
    bytes: &'static mut [u8; RAM_FRAMES * 4096],
}

impl Ram {
    fn range(
        &self,
        gfn: Gfn,
        offset: usize,
        len: usize,
    ) -> Result<core::ops::Range<usize>, MemoryError> {
        let i = self.map.index_of(gfn).ok_or(MemoryError)?;
        if offset + len > 4096 {
            return Err(MemoryError);
        }
        Ok(i * 4096 + offset..i * 4096 + offset + len)
    }
}

impl GuestMemory for Ram {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(gfn, offset, out.len())?;
        out.copy_from_slice(self.bytes.get(r).ok_or(MemoryError)?);
        Ok(())
    }

    fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(gfn, offset, data.len())?;
        self.bytes
            .get_mut(r)
            .ok_or(MemoryError)?
            .copy_from_slice(data);
        Ok(())
    }
}

/// The host GGTT: a real hypervisor writes the entry into the GPU's GGTT here (after pinning or
/// DMA-mapping the guest frame).
pub struct HostGgtt;

impl HostGtt for HostGgtt {
    fn map(
        &mut self,
        _host_index: GttIndex,
        _mapping: Option<(Gfn, GgttEntry)>,
    ) -> Result<(), HostError> {
        Ok(())
    }
}

/// The hypervisor's view of one guest with a vGPU.
pub struct Guest {
    /// The vGPU.
    pub vgpu: Vgpu<'static>,
    /// Guest RAM.
    pub ram: Ram,
    /// The host GGTT.
    pub host: HostGgtt,
}

/// Create the guest's vGPU from static storage. Call once: the statics are handed out once (a
/// second call panics in `take`).
pub fn init() -> Result<Guest, VgpuError> {
    let map = GuestMemoryMap::new(&[FrameRange::new(Gfn::new(0x100), RAM_FRAMES as u64)?])?;
    let partition = Partition::new(
        GmRange::new(GmAddr::new(0), APERTURE)?,
        GmRange::new(GmAddr::new(0x1000_0000), HIDDEN)?,
    )?;
    let placement = HostPlacement::contiguous(
        &partition,
        GmAddr::new(0x0200_0000),
        GmAddr::new(0x2000_0000),
    )?;
    let storage = VgpuStorage {
        config_space: CONFIG_SPACE.take(),
        vregs: VREGS.take().as_mut_slice(),
        ggtt: GGTT.take(),
        gpu_dirty: &GPU_DIRTY,
    };
    let vgpu = Vgpu::new(
        VgpuConfig::skylake(partition),
        placement,
        map.clone(),
        storage,
    )?;
    Ok(Guest {
        vgpu,
        ram: Ram {
            map,
            bytes: RAM.take(),
        },
        host: HostGgtt,
    })
}

impl Guest {
    /// A trapped guest access to BAR0 (the hypervisor's MMIO exit handler calls this). Returns the
    /// value for reads.
    pub fn mmio_exit(
        &mut self,
        offset: u32,
        size: usize,
        write: Option<u64>,
    ) -> Result<u64, VgpuError> {
        match write {
            Some(v) => self
                .vgpu
                .mmio_write(offset, size, v, &self.ram, &mut self.host)
                .map(|()| 0),
            None => self.vgpu.mmio_read(offset, size),
        }
    }

    /// Live-migrate out (once: its buffers are statics too): pump the stream into `send` (the
    /// hypervisor's transport) until it is complete. `now_us` is the hypervisor's clock. The guest keeps running between calls in a
    /// real hypervisor; here it is idle.
    pub fn migrate_out(
        &mut self,
        mut now_us: impl FnMut() -> u64,
        mut send: impl FnMut(&[u8]),
    ) -> Result<(), VgpuError> {
        let mut out = [0u8; 8192];
        let mut no_cpu_log = ();
        let mut s = SourceSession::open(
            &mut self.vgpu,
            &mut no_cpu_log,
            SourceConfig::default(),
            SEND.take(),
            SCRATCH.take(),
        )?;
        while !s.is_finished() {
            let n = s.poll_output(
                &self.vgpu,
                &self.ram,
                &mut no_cpu_log,
                now_us(),
                &mut out,
            )?;
            send(out.get(..n).unwrap_or(&[]));
            while let Some(ev) = s.poll_event() {
                if let SourceEvent::Switch { .. } = ev {
                    // Quiesce: no work is in flight in this idle example.
                    let _ = self.vgpu.quiesce();
                    s.stop_and_copy(&mut self.vgpu, &mut no_cpu_log)?;
                }
            }
        }
        s.complete(&mut self.vgpu)
    }
}
