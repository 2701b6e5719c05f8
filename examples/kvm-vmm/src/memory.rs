//! Guest RAM and the adapters between the rust-vmm vocabulary and the library's traits.
//!
//! Guest RAM is a `vm-memory` [`GuestMemoryMmap`] with an [`AtomicBitmap`] per region: the same
//! mapping is registered with KVM as memory slots (so guest CPU writes land in KVM's dirty log)
//! and is what the GPU thread writes as DMA does (those writes land in the `vm-memory` bitmap,
//! never in KVM's log).
//!
//! Adapters:
//! - [`VmMemory`]: `vm-memory`'s `GuestMemory` as the library's [`vgpu::traits::GuestMemory`].
//! - [`KvmDirtyLog`]: KVM's per-slot dirty log (`KVM_GET_DIRTY_LOG`) as a
//!   [`vgpu::traits::CpuDirtyLog`].
//! - [`BitmapDirtyLog`]: `vm-memory`'s dirty bitmap (writes the VMM made through `vm-memory`) as a
//!   [`vgpu::traits::CpuDirtyLog`].

use std::sync::Arc;

use gmem::{FrameRange, GuestMemoryMap};
use gtt::Gfn;
use kvm_ioctls::VmFd;
use vgpu::traits::{CpuDirtyLog, GuestMemory, MemoryError};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap, GuestRegionMmap};

/// Guest RAM with dirty bitmaps (one bit per 4 KiB page, set by writes through `vm-memory`).
pub type RamMmap = GuestMemoryMmap<AtomicBitmap>;

/// The guest's RAM: `0..bytes`, one `vm-memory` region (one KVM slot).
#[derive(Debug)]
pub struct GuestRam {
    mem: RamMmap,
    map: GuestMemoryMap,
    bytes: u64,
}

/// Why guest RAM could not be created.
#[derive(Debug)]
pub struct RamError(pub String);

impl std::fmt::Display for RamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest RAM: {}", self.0)
    }
}

impl std::error::Error for RamError {}

impl GuestRam {
    /// Anonymous RAM of `bytes` (a multiple of 2 MiB) at guest-physical 0.
    pub fn new(bytes: u64) -> Result<Self, RamError> {
        if bytes == 0 || !bytes.is_multiple_of(2 << 20) {
            return Err(RamError(format!(
                "{bytes} bytes is not a positive multiple of 2 MiB"
            )));
        }
        let len = usize::try_from(bytes).map_err(|e| RamError(e.to_string()))?;
        let mem: RamMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)])
            .map_err(|e| RamError(e.to_string()))?;
        let frames = bytes / 4096;
        let map = FrameRange::new(Gfn::new(0), frames)
            .and_then(|r| GuestMemoryMap::new(&[r]))
            .map_err(|e| RamError(format!("{e:?}")))?;
        Ok(Self { mem, map, bytes })
    }

    /// The `vm-memory` view.
    pub fn mmap(&self) -> &RamMmap {
        &self.mem
    }

    /// The library's view of the guest memory layout.
    pub fn map(&self) -> &GuestMemoryMap {
        &self.map
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of 4 KiB frames.
    pub fn frames(&self) -> u64 {
        self.bytes / 4096
    }

    /// The single region (slot 0).
    fn region(&self) -> Option<&GuestRegionMmap<AtomicBitmap>> {
        self.mem.iter().next()
    }

    /// Host address of guest-physical 0 (for the KVM memory slot).
    pub fn host_base(&self) -> Result<u64, RamError> {
        let p = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| RamError(e.to_string()))?;
        Ok(p as u64)
    }

    /// Copy frame `frame` into `out` (4096 bytes).
    pub fn read_frame(&self, frame: u64, out: &mut [u8; 4096]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(out, GuestAddress(frame * 4096))
            .map_err(|_| MemoryError)
    }

    /// Write `data` at guest-physical `gpa` (through `vm-memory`: marks its bitmap).
    pub fn write_at(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemoryError)
    }

    /// Read bytes at guest-physical `gpa`.
    pub fn read_at(&self, gpa: u64, out: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(out, GuestAddress(gpa))
            .map_err(|_| MemoryError)
    }

    /// All of guest RAM, copied (for comparisons).
    pub fn snapshot(&self) -> Result<Vec<u8>, MemoryError> {
        let len = usize::try_from(self.bytes).map_err(|_| MemoryError)?;
        let mut v = vec![0u8; len];
        self.read_at(0, &mut v)?;
        Ok(v)
    }

    /// Take and clear the `vm-memory` dirty bitmap (one bit per frame, frame order).
    pub fn take_vmm_dirty(&self) -> Vec<u64> {
        self.region()
            .map(|r| r.get_mmap().bitmap().get_and_reset())
            .unwrap_or_default()
    }
}

/// `vm-memory` guest RAM as the library's [`GuestMemory`]: what the vGPU reads (contexts, page
/// tables) and what the GPU thread writes (render targets, status page) as DMA does. Cheap to
/// create; share the RAM with [`Arc`].
#[derive(Debug, Clone)]
pub struct VmMemory(pub Arc<GuestRam>);

impl VmMemory {
    fn gpa(&self, gfn: Gfn, offset: usize, len: usize) -> Result<u64, MemoryError> {
        if offset + len > 4096 || !self.0.map.contains(gfn) {
            return Err(MemoryError);
        }
        Ok(gfn.get() * 4096 + offset as u64)
    }
}

impl GuestMemory for VmMemory {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let at = self.gpa(gfn, offset, out.len())?;
        self.0.read_at(at, out)
    }

    fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let at = self.gpa(gfn, offset, data.len())?;
        self.0.write_at(at, data)
    }
}

/// KVM's dirty log of guest CPU writes (`KVM_GET_DIRTY_LOG` on the RAM slot, which also clears
/// it and write-protects the pages again: harvest happens before any read of them).
#[derive(Debug, Clone)]
pub struct KvmDirtyLog {
    vm: Arc<VmFd>,
    slot: u32,
    bytes: usize,
}

impl KvmDirtyLog {
    /// The log of slot `slot` covering `bytes` of RAM from guest frame 0.
    pub fn new(vm: Arc<VmFd>, slot: u32, bytes: u64) -> Self {
        Self {
            vm,
            slot,
            bytes: usize::try_from(bytes).unwrap_or(0),
        }
    }

    /// Take and clear the log as a bitmap (one bit per frame).
    pub fn take(&self) -> std::io::Result<Vec<u64>> {
        self.vm
            .get_dirty_log(self.slot, self.bytes)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Call `sink` with every set bit of `bits` as a frame number.
pub fn for_each_bit(bits: &[u64], mut sink: impl FnMut(u64)) {
    for (wi, w) in bits.iter().enumerate() {
        let mut b = *w;
        while b != 0 {
            let i = u64::from(b.trailing_zeros());
            b &= b - 1;
            sink(wi as u64 * 64 + i);
        }
    }
}

impl CpuDirtyLog for KvmDirtyLog {
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn)) {
        // A failed ioctl reports everything: sending too much is safe, too little is not.
        match self.take() {
            Ok(bits) => for_each_bit(&bits, |f| sink(Gfn::new(f))),
            Err(_) => (0..self.bytes as u64 / 4096).for_each(|f| sink(Gfn::new(f))),
        }
    }
}

/// `vm-memory`'s dirty bitmap as a [`CpuDirtyLog`]: the writes the VMM itself made through
/// `vm-memory` (the GPU thread's DMA, restores). A cross-check of the vGPU's own GPU dirty log.
#[derive(Debug, Clone)]
pub struct BitmapDirtyLog(pub Arc<GuestRam>);

impl CpuDirtyLog for BitmapDirtyLog {
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn)) {
        for_each_bit(&self.0.take_vmm_dirty(), |f| sink(Gfn::new(f)));
    }
}
