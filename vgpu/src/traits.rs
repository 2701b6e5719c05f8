//! The traits an embedding hypervisor implements. Each is small; each method says what it may do.

use gtt::{Gfn, GgttEntry, GttIndex};

use crate::instance::Vgpu;
use crate::tracking::GpuDirtyLog;

/// Access to the guest's physical memory.
///
/// Which frames exist is the vGPU's memory map ([`Vgpu::memory_map`], given once to
/// [`Vgpu::new`]): the vGPU and its sessions never read or write a frame outside it. Calls never
/// cross a page: `offset + len <= 4096`. The source reads each page it sends once, in
/// whole, and sends what that read returned; the guest may keep running and change the page
/// during the read (the dirty logs catch that: the page goes again later). The destination calls
/// `write` as pages arrive.
pub trait GuestMemory {
    /// Copy `out.len()` bytes at `offset` in frame `gfn` into `out`. Must succeed for mapped frames.
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError>;
    /// Write `data` at `offset` in frame `gfn`. Must not mark the page dirty in the CPU dirty log
    /// (this is device or migration traffic, not a guest CPU write).
    fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError>;
}

/// The guest memory backend refused an access (frame not mapped, or an I/O failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryError;

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("guest memory access refused (frame not mapped, or an I/O failure)")
    }
}

impl core::error::Error for MemoryError {}

/// The hypervisor's dirty log of guest CPU writes (for example KVM's dirty bitmap).
pub trait CpuDirtyLog {
    /// Report every guest frame written by a CPU since the previous call, then forget them.
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn));
}

/// No CPU dirty log: for embedders whose guest CPUs never write graphics memory during pre-copy.
impl CpuDirtyLog for () {
    fn harvest(&mut self, _sink: &mut dyn FnMut(Gfn)) {}
}

/// How a source session reaches the vGPU while pages stream: the GPU dirty log without any lock,
/// the device itself only briefly.
///
/// The session calls [`with_vgpu`](Self::with_vgpu) for short reads of device state: at the end
/// of each pre-copy round (the GGTT's mapped frames for the coarse GPU dirty precisions, the
/// device-state size for the policy), for each chunk of a GGTT pre-copy, and for each device-state
/// record after the stop. It never reads guest memory or copies a page inside it. A threaded VMM
/// implements it over its device lock (see the crate docs); [`Vgpu`] implements it for a
/// single-threaded caller.
pub trait VgpuAccess {
    /// The vGPU's GPU dirty log ([`Vgpu::gpu_dirty`]), reachable without the device lock.
    fn gpu_dirty(&self) -> &GpuDirtyLog<'_>;
    /// Call `f` once with the vGPU (under the device lock, if there is one) and return.
    fn with_vgpu(&self, f: &mut dyn FnMut(&Vgpu<'_>));
}

impl VgpuAccess for Vgpu<'_> {
    fn gpu_dirty(&self) -> &GpuDirtyLog<'_> {
        Vgpu::gpu_dirty(self)
    }

    fn with_vgpu(&self, f: &mut dyn FnMut(&Vgpu<'_>)) {
        f(self);
    }
}

/// Programming of the real (host) GGTT for this vGPU's slices.
pub trait HostGtt {
    /// Point host GGTT entry `host_index` at guest frame `gfn` with the guest entry's attribute bits
    /// (`guest_entry`'s frame field is the guest frame; the backend replaces it with the host frame or
    /// DMA address it maps `gfn` to). `None` points it at the scratch page.
    fn map(
        &mut self,
        host_index: GttIndex,
        mapping: Option<(Gfn, GgttEntry)>,
    ) -> Result<(), HostError>;

    /// Program the host fence register reserved for the vGPU's fence `index` with `value` (the
    /// guest's 64-bit fence with its graphics addresses already translated to this host), or
    /// disable it (`None`). The default does nothing, for hosts that do not give vGPUs fences.
    fn program_fence(&mut self, index: u8, value: Option<u64>) -> Result<(), HostError> {
        let _ = (index, value);
        Ok(())
    }
}

/// The host backend failed to program an entry (for example, pinning the guest page failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HostError;

impl core::fmt::Display for HostError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("host GTT backend failed to program an entry")
    }
}

impl core::error::Error for HostError {}

/// A host GTT that ignores every call: for tests and for dry runs.
impl HostGtt for () {
    fn map(
        &mut self,
        _host_index: GttIndex,
        _mapping: Option<(Gfn, GgttEntry)>,
    ) -> Result<(), HostError> {
        Ok(())
    }
}
