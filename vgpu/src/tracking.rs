//! The GPU dirty log: which guest frames the GPU wrote, marked from any thread.
//!
//! GPU page tables have no dirty bits and GPU writes do not appear in the CPU's dirty log, so the
//! device model (or a command scanner) reports them here. The log lives outside the [`Vgpu`]: a
//! GPU thread marks it through `&self` while the vCPU threads hold the vGPU for MMIO exits and the
//! migration thread harvests it, none of them waiting for another. See the crate docs for the
//! locking rules.
//!
//! [`Vgpu`]: crate::instance::Vgpu

use core::sync::atomic::Ordering;

use gmem::{AtomicDirtyBitmap, AtomicWord, DirtyBitmap, GuestMemoryMap, atomic_words_for};
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
    active: &'a AtomicWord,
    map: GuestMemoryMap,
}

impl<'a> GpuDirtyLog<'a> {
    /// Words of storage for a guest of `frames` frames: the bitmap and one word for the flag.
    #[must_use]
    pub const fn storage_words(frames: usize) -> usize {
        atomic_words_for(frames) + 1
    }

    /// A cleared log over `storage` for the guest memory `map`.
    ///
    /// # Errors
    /// [`VgpuError::StorageSize`] unless `storage` has
    /// [`storage_words`](Self::storage_words)`(frames)` words.
    pub fn new(map: &GuestMemoryMap, storage: &'a [AtomicWord]) -> Result<Self, VgpuError> {
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

#[cfg(test)]
mod tests {
    use core::sync::atomic::AtomicU64;
    use std::collections::BTreeSet;
    use std::vec;
    use std::vec::Vec;

    use gmem::{FrameRange, words_for};

    use super::*;

    fn map() -> GuestMemoryMap {
        GuestMemoryMap::new(&[
            FrameRange::new(Gfn::new(0x10), 100).unwrap(),
            FrameRange::new(Gfn::new(0x1000), 100).unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn marks_by_frame_and_harvests_into_a_send_set() {
        let map = map();
        let storage: Vec<AtomicU64> = (0..GpuDirtyLog::storage_words(200))
            .map(|_| AtomicU64::new(u64::MAX))
            .collect();
        assert_eq!(
            GpuDirtyLog::new(&map, &storage[1..]).unwrap_err(),
            VgpuError::StorageSize
        );
        let log = GpuDirtyLog::new(&map, &storage).unwrap();
        assert_eq!((log.count(), log.take_active()), (0, false));
        let gpu = log.clone();
        gpu.mark(Gfn::new(0x1001));
        gpu.mark(Gfn::new(0x5)); // outside guest memory: ignored
        assert_eq!(log.count(), 1);
        assert!(log.take_active() && !log.take_active());
        let mut words = vec![0u64; words_for(200)];
        let mut send = DirtyBitmap::new(&mut words, 200).unwrap();
        send.set(3).unwrap();
        log.absorb_into(&mut send).unwrap();
        assert_eq!(send.iter_ones().collect::<Vec<_>>(), [3, 101]);
        assert_eq!(gpu.count(), 0);
        gpu.mark_active();
        gpu.mark(Gfn::new(0x10));
        log.clear();
        assert_eq!((log.count(), log.take_active()), (0, false));
    }

    /// What a threaded VMM moves between threads can move: the vGPU (behind its lock), the
    /// session (on the migration thread) and the log (shared by all).
    #[test]
    fn the_threaded_pieces_are_send_and_sync() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<crate::instance::Vgpu<'static>>();
        send::<crate::source::SourceSession<'static>>();
        send::<GpuDirtyLog<'static>>();
        sync::<GpuDirtyLog<'static>>();
    }

    /// A GPU thread marks while the migration thread harvests: every mark ends up harvested.
    #[test]
    fn concurrent_marks_are_never_lost() {
        let map = map();
        let storage: Vec<AtomicU64> = (0..GpuDirtyLog::storage_words(200))
            .map(|_| AtomicU64::new(0))
            .collect();
        let log = GpuDirtyLog::new(&map, &storage).unwrap();
        let mut words = vec![0u64; words_for(200)];
        let mut seen = BTreeSet::new();
        std::thread::scope(|s| {
            let gpu = log.clone();
            let t = s.spawn(move || {
                for k in 0..20_000u64 {
                    let i = usize::try_from(k % 200).unwrap_or(0);
                    if let Some(gfn) = gpu.map().frame_at(i) {
                        gpu.mark(gfn);
                    }
                }
            });
            while !t.is_finished() {
                let mut send = DirtyBitmap::new(&mut words, 200).unwrap();
                log.absorb_into(&mut send).unwrap();
                seen.extend(send.iter_ones());
            }
        });
        let mut send = DirtyBitmap::new(&mut words, 200).unwrap();
        log.absorb_into(&mut send).unwrap();
        seen.extend(send.iter_ones());
        assert_eq!(seen.len(), 200);
    }
}
