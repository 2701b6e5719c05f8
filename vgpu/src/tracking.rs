//! The GPU dirty log: which guest frames the GPU wrote, marked from any thread.
//!
//! GPU page tables have no dirty bits and GPU writes do not appear in the CPU's dirty log, so the
//! device model (or a command scanner) reports them here. The log lives outside the [`Vgpu`]: a
//! GPU thread marks it through `&self` while the vCPU threads hold the vGPU for MMIO exits and the
//! migration thread harvests it, none of them waiting for another. See the crate docs for the
//! locking rules.
//!
//! [`Vgpu`]: crate::instance::Vgpu

use core::sync::atomic::{AtomicU64, Ordering};

use gmem::{AtomicDirtyBitmap, DirtyBitmap, GuestMemoryMap, words_for};
use gtt::Gfn;

use crate::error::VgpuError;

/// A handle on the GPU dirty log: one bit per guest frame (dense index of the memory map) and a
/// flag that says the vGPU ran work, over caller storage of
/// [`storage_words`](Self::storage_words) atomic words. Clones share the storage: give one to
/// each thread that marks.
///
/// Mark a frame after the write to it is visible (as DMA completes), never before: the migration
/// thread clears a bit before it reads the page, so a write that lands after that read sets the
/// bit again and the page goes in a later round.
#[derive(Debug, Clone)]
pub struct GpuDirtyLog<'a> {
    bits: AtomicDirtyBitmap<'a>,
    active: &'a AtomicU64,
    map: GuestMemoryMap,
}

impl<'a> GpuDirtyLog<'a> {
    /// Words of storage for a guest of `frames` frames: the bitmap and one word for the flag.
    #[must_use]
    pub const fn storage_words(frames: usize) -> usize {
        words_for(frames) + 1
    }

    /// A cleared log over `storage` for the guest memory `map`.
    ///
    /// # Errors
    /// [`VgpuError::StorageSize`] unless `storage` has
    /// [`storage_words`](Self::storage_words)`(frames)` words.
    pub fn new(map: &GuestMemoryMap, storage: &'a [AtomicU64]) -> Result<Self, VgpuError> {
        let frames = usize::try_from(map.frames()).map_err(|_| VgpuError::StorageSize)?;
        if storage.len() != Self::storage_words(frames) {
            return Err(VgpuError::StorageSize);
        }
        let (active, words) = storage.split_last().ok_or(VgpuError::StorageSize)?;
        active.store(0, Ordering::Release);
        Ok(Self {
            bits: AtomicDirtyBitmap::new(words, frames)?,
            active,
            map: map.clone(),
        })
    }

    /// The GPU wrote guest frame `gfn` (frames outside guest memory are ignored). Also marks the
    /// vGPU active.
    pub fn mark(&self, gfn: Gfn) {
        self.mark_active();
        if let Some(i) = self.map.index_of(gfn) {
            let _ = self.bits.set(i);
        }
    }

    /// The vGPU ran work (for
    /// [`GpuDirtyPrecision::MappedIfActive`](crate::source::GpuDirtyPrecision::MappedIfActive)).
    pub fn mark_active(&self) {
        self.active.store(1, Ordering::Release);
    }

    /// Whether the vGPU ran work since the last call, and forget it.
    pub fn take_active(&self) -> bool {
        self.active.swap(0, Ordering::AcqRel) != 0
    }

    /// Frames marked and not yet harvested (a snapshot).
    #[must_use]
    pub fn count(&self) -> usize {
        self.bits.count()
    }

    /// The guest memory map the log indexes.
    #[must_use]
    pub fn map(&self) -> &GuestMemoryMap {
        &self.map
    }

    /// Forget every mark and the active flag.
    pub fn clear(&self) {
        self.bits.clear();
        self.active.store(0, Ordering::Release);
    }

    /// Move every marked frame into `send` (or-ing) and clear it here, word by word; a mark made
    /// meanwhile lands in `send` or stays here, never lost.
    pub(crate) fn absorb_into(&self, send: &mut DirtyBitmap<'_>) -> Result<(), VgpuError> {
        self.bits.absorb_into(send)?;
        Ok(())
    }
}
