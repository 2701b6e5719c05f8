//! Dirty reports over guest-physical ranges in the shape of VFIO DMA logging, for VMMs that
//! migrate guest RAM themselves.
//!
//! A report request is `{iova, length, page_size}` plus a caller bitmap with one bit per
//! `page_size` page of the range, LSB-first in `u64` words (bit `i` of the report is bit
//! `i % 64` of word `i / 64`). The page size is a power of two of at least 4 KiB; `iova` and
//! `length` are multiples of it. A report page larger than 4 KiB is dirty if any 4 KiB guest
//! frame inside it is dirty. Reports only *set* bits in the caller bitmap, never clear them,
//! and [`DirtyReport::report`] clears what it reported from the dirty bitmap (read-and-clear),
//! so two reports never return the same write twice. Addresses that are not guest RAM (holes,
//! addresses beyond the last region) are never reported dirty.
//!
//! Work per report is O(bitmap words covering the range + dirty frames + regions), whatever
//! the page size: a huge page size or length costs nothing extra.

use core::fmt;

use gtt::Gfn;

use crate::bitmap::{DirtyBitmap, words_for};
use crate::map::GuestMemoryMap;

/// Log2 of the guest frame size.
const FRAME_SHIFT: u32 = 12;

/// The most ranges [`check_ranges`] accepts: what fits one 4 KiB kernel page of
/// `{iova, length}` pairs, the minimum the VFIO core supports.
pub const MAX_DMA_RANGES: usize = 256;

/// Errors of a dirty-report request. Every variant is the requester's fault (the VMM asked
/// for something malformed or gave too little storage); nothing here parses a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReportError {
    /// The page size is not a power of two of at least 4 KiB.
    PageSize,
    /// `iova` or `length` is not a multiple of the page size.
    Unaligned,
    /// The range is empty.
    EmptyRange,
    /// `iova + length` does not fit 64 bits.
    RangeOverflow,
    /// The caller bitmap has fewer words than the range needs.
    BitmapTooSmall,
    /// The dirty bitmap's length differs from the number of frames in the memory map.
    MapMismatch,
    /// Two ranges of a logging request overlap.
    Overlap,
    /// More ranges than [`MAX_DMA_RANGES`].
    TooManyRanges,
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PageSize => "report page size is not a power of two >= 4 KiB",
            Self::Unaligned => "report range is not aligned to the page size",
            Self::EmptyRange => "report range is empty",
            Self::RangeOverflow => "report range overflows the address space",
            Self::BitmapTooSmall => "report bitmap is too small for the range",
            Self::MapMismatch => "dirty bitmap does not match the guest memory map",
            Self::Overlap => "logging ranges overlap",
            Self::TooManyRanges => "too many logging ranges",
        })
    }
}

impl core::error::Error for ReportError {}

/// A guest-physical range `{iova, length}` as in VFIO DMA logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DmaRange {
    /// First byte address.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
}

impl DmaRange {
    /// One past the last byte, or [`ReportError::RangeOverflow`].
    const fn end(&self) -> Result<u64, ReportError> {
        match self.iova.checked_add(self.length) {
            Some(e) => Ok(e),
            None => Err(ReportError::RangeOverflow),
        }
    }

    /// Checks the range against `page_size` and returns the number of report pages in it.
    ///
    /// # Errors
    /// [`ReportError::PageSize`], [`ReportError::EmptyRange`], [`ReportError::Unaligned`] or
    /// [`ReportError::RangeOverflow`].
    pub const fn pages(&self, page_size: u64) -> Result<u64, ReportError> {
        if !page_size.is_power_of_two() || page_size < (1 << FRAME_SHIFT) {
            return Err(ReportError::PageSize);
        }
        if self.length == 0 {
            return Err(ReportError::EmptyRange);
        }
        if !self.iova.is_multiple_of(page_size) || !self.length.is_multiple_of(page_size) {
            return Err(ReportError::Unaligned);
        }
        match self.end() {
            Ok(_) => Ok(self.length / page_size),
            Err(e) => Err(e),
        }
    }
}

/// Checks a DMA-logging start request: at most [`MAX_DMA_RANGES`] ranges, each non-empty and
/// aligned to `page_size`, no two overlapping (in any order). O(n²) over at most 256 ranges.
///
/// # Errors
/// The first problem found, as a [`ReportError`].
pub fn check_ranges(ranges: &[DmaRange], page_size: u64) -> Result<(), ReportError> {
    if ranges.len() > MAX_DMA_RANGES {
        return Err(ReportError::TooManyRanges);
    }
    for r in ranges {
        r.pages(page_size)?;
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in ranges.iter().skip(i.saturating_add(1)) {
            if a.iova < b.end()? && b.iova < a.end()? {
                return Err(ReportError::Overlap);
            }
        }
    }
    Ok(())
}

/// A dirty bitmap over the dense frame index of a [`GuestMemoryMap`], read out by
/// guest-physical range; see the module docs.
#[derive(Debug)]
pub struct DirtyReport<'m, 'b, 'w> {
    map: &'m GuestMemoryMap,
    dirty: &'b mut DirtyBitmap<'w>,
}

impl<'m, 'b, 'w> DirtyReport<'m, 'b, 'w> {
    /// Reports over `dirty`, whose bit `i` is the frame with dense index `i` of `map`.
    ///
    /// # Errors
    /// [`ReportError::MapMismatch`] if `dirty` does not have exactly `map.frames()` bits.
    pub fn new(
        map: &'m GuestMemoryMap,
        dirty: &'b mut DirtyBitmap<'w>,
    ) -> Result<Self, ReportError> {
        if u64::try_from(dirty.len()).ok() != Some(map.frames()) {
            return Err(ReportError::MapMismatch);
        }
        Ok(Self { map, dirty })
    }

    /// Sets, in `out`, the bit of every report page of `range` that holds a dirty frame, clears
    /// those frames in the dirty bitmap, and returns how many dirty frames it found. Bits of
    /// `out` are only ever set. On error nothing changes.
    ///
    /// # Errors
    /// A malformed range or page size, or [`ReportError::BitmapTooSmall`] if `out` has fewer
    /// than `ceil(length / page_size / 64)` words.
    pub fn report(
        &mut self,
        range: DmaRange,
        page_size: u64,
        out: &mut [u64],
    ) -> Result<u64, ReportError> {
        self.walk(range, page_size, out, true)
    }

    /// Like [`DirtyReport::report`] but leaves the dirty bitmap unchanged.
    ///
    /// # Errors
    /// As [`DirtyReport::report`].
    pub fn peek(
        &mut self,
        range: DmaRange,
        page_size: u64,
        out: &mut [u64],
    ) -> Result<u64, ReportError> {
        self.walk(range, page_size, out, false)
    }

    fn walk(
        &mut self,
        range: DmaRange,
        page_size: u64,
        out: &mut [u64],
        clear: bool,
    ) -> Result<u64, ReportError> {
        let pages = range.pages(page_size)?;
        let need = usize::try_from(pages)
            .map(words_for)
            .map_err(|_| ReportError::BitmapTooSmall)?;
        if out.len() < need {
            return Err(ReportError::BitmapTooSmall);
        }
        // Aligned to >= 4 KiB, so both are whole frames.
        let first = range.iova >> FRAME_SHIFT;
        let end = range.end()? >> FRAME_SHIFT;
        let shift = page_size.trailing_zeros().saturating_sub(FRAME_SHIFT);
        let mut found = 0u64;
        let mut base = 0u64;
        for r in self.map.regions() {
            let region_base = base;
            base = base.saturating_add(r.count());
            let lo = r.start().get().max(first);
            let hi = r.end().min(end);
            if lo >= hi {
                continue;
            }
            let dense = lo
                .checked_sub(r.start().get())
                .and_then(|o| o.checked_add(region_base))
                .and_then(|d| usize::try_from(d).ok())
                .ok_or(ReportError::MapMismatch)?;
            let count =
                usize::try_from(hi.saturating_sub(lo)).map_err(|_| ReportError::MapMismatch)?;
            let mut mark = |d: usize| {
                // d in dense..dense + count, so the offset is below count.
                let off = u64::try_from(d.saturating_sub(dense)).unwrap_or(u64::MAX);
                let bit = lo.saturating_add(off).saturating_sub(first) >> shift;
                let word = usize::try_from(bit / 64).unwrap_or(usize::MAX);
                if let Some(w) = out.get_mut(word) {
                    *w |= 1 << (bit % 64);
                }
                found = found.saturating_add(1);
            };
            let done = if clear {
                self.dirty.take_range_each(dense, count, &mut mark)
            } else {
                self.dirty.range_each(dense, count, &mut mark)
            };
            done.map_err(|_| ReportError::MapMismatch)?;
        }
        Ok(found)
    }

    /// The frame with dense index `index` (for callers mixing both views).
    #[must_use]
    pub fn frame_at(&self, index: usize) -> Option<Gfn> {
        self.map.frame_at(index)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;
    use crate::map::FrameRange;
    use proptest::prelude::*;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    fn fr(start: u64, count: u64) -> FrameRange {
        FrameRange::new(Gfn::new(start), count).unwrap()
    }

    /// 16 frames at 0, a hole, 16 frames at 4 GiB (frame 0x10_0000).
    fn small_map() -> GuestMemoryMap {
        GuestMemoryMap::new(&[fr(0, 16), fr(0x10_0000, 16)]).unwrap()
    }

    const HIGH: u64 = 0x1_0000_0000;

    #[test]
    fn exact_bitmap_4k_with_hole_and_high_memory() {
        let map = small_map();
        let mut st = vec![0u64; 1];
        let mut dirty = DirtyBitmap::new(&mut st, 32).unwrap();
        for gfn in [0u64, 3, 15, 0x10_0000, 0x10_0005] {
            dirty.set(map.index_of(Gfn::new(gfn)).unwrap()).unwrap();
        }
        let mut rep = DirtyReport::new(&map, &mut dirty).unwrap();
        // Low range: 32 pages from 0, covering RAM 0..16 and a hole 16..32.
        let mut out = [0u64; 1];
        let n = rep
            .report(
                DmaRange {
                    iova: 0,
                    length: 32 * 4096,
                },
                4096,
                &mut out,
            )
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(out, [(1 << 0) | (1 << 3) | (1 << 15)]);
        // High range at 4 GiB: bits relative to iova, not to the RAM offset.
        let mut out = [0u64; 1];
        let n = rep
            .report(
                DmaRange {
                    iova: HIGH,
                    length: 64 * 4096,
                },
                4096,
                &mut out,
            )
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(out, [(1 << 0) | (1 << 5)]);
        // Read-and-clear: a second report finds nothing and leaves `out` as it was.
        let mut out = [0xF0u64; 1];
        assert_eq!(
            rep.report(
                DmaRange {
                    iova: 0,
                    length: 32 * 4096
                },
                4096,
                &mut out
            ),
            Ok(0)
        );
        assert_eq!(out, [0xF0]);
        assert_eq!(dirty.count(), 0);
    }

    #[test]
    fn large_pages_aggregate_and_peek_keeps_bits() {
        let map = small_map();
        let mut st = vec![0u64; 1];
        let mut dirty = DirtyBitmap::new(&mut st, 32).unwrap();
        for gfn in [1u64, 2, 9, 0x10_000F] {
            dirty.set(map.index_of(Gfn::new(gfn)).unwrap()).unwrap();
        }
        let mut rep = DirtyReport::new(&map, &mut dirty).unwrap();
        // 16 KiB pages (4 frames): frames 1, 2 -> page 0; frame 9 -> page 2.
        let mut out = [0u64; 1];
        assert_eq!(
            rep.peek(
                DmaRange {
                    iova: 0,
                    length: 64 * 1024
                },
                16384,
                &mut out
            ),
            Ok(3)
        );
        assert_eq!(out, [0b101]);
        // 2 MiB pages over 8 GiB from 0: the low frames are page 0, the 4 GiB frame page 2048.
        let mut out = [0u64; 64];
        let n = rep
            .report(
                DmaRange {
                    iova: 0,
                    length: 2 * HIGH,
                },
                1 << 21,
                &mut out,
            )
            .unwrap();
        assert_eq!(n, 4);
        let mut want = [0u64; 64];
        want[0] = 1;
        want[2048 / 64] = 1;
        assert_eq!(out, want);
        assert_eq!(dirty.count(), 0);
    }

    #[test]
    fn partial_range_clears_only_inside() {
        let map = small_map();
        let mut st = vec![0u64; 1];
        let mut dirty = DirtyBitmap::new(&mut st, 32).unwrap();
        dirty.set_range(0, 32).unwrap();
        let mut rep = DirtyReport::new(&map, &mut dirty).unwrap();
        let mut out = [0u64; 1];
        // Frames 4..8 only.
        assert_eq!(
            rep.report(
                DmaRange {
                    iova: 4 * 4096,
                    length: 4 * 4096
                },
                4096,
                &mut out
            ),
            Ok(4)
        );
        assert_eq!(out, [0b1111]);
        assert_eq!(dirty.count(), 28);
        assert!(!dirty.test(4) && !dirty.test(7) && dirty.test(3) && dirty.test(8));
    }

    #[test]
    fn rejects_bad_requests() {
        let map = small_map();
        let mut st = vec![0u64; 1];
        let mut dirty = DirtyBitmap::new(&mut st, 32).unwrap();
        dirty.set(0).unwrap();
        let mut rep = DirtyReport::new(&map, &mut dirty).unwrap();
        let mut out = [0u64; 1];
        let r = |iova, length| DmaRange { iova, length };
        assert_eq!(
            rep.report(r(0, 4096), 2048, &mut out),
            Err(ReportError::PageSize)
        );
        assert_eq!(
            rep.report(r(0, 12288), 12288, &mut out),
            Err(ReportError::PageSize)
        );
        assert_eq!(
            rep.report(r(0, 0), 4096, &mut out),
            Err(ReportError::EmptyRange)
        );
        assert_eq!(
            rep.report(r(4096, 8192), 8192, &mut out),
            Err(ReportError::Unaligned)
        );
        assert_eq!(
            rep.report(r(0, 4096 * 3), 8192, &mut out),
            Err(ReportError::Unaligned)
        );
        assert_eq!(
            rep.report(r(u64::MAX - 4095, 8192), 4096, &mut out),
            Err(ReportError::RangeOverflow)
        );
        assert_eq!(
            rep.report(r(0, 65 * 4096), 4096, &mut out),
            Err(ReportError::BitmapTooSmall)
        );
        // Nothing was cleared by the failed requests.
        assert_eq!(out, [0]);
        assert_eq!(rep.report(r(0, 4096), 4096, &mut out), Ok(1));
        // Like the kernel's overflow check, a range ending exactly at 2^64 is rejected.
        assert_eq!(
            rep.report(r(u64::MAX - 4095, 4096), 4096, &mut out),
            Err(ReportError::RangeOverflow)
        );
        assert_eq!(rep.report(r(u64::MAX - 8191, 4096), 4096, &mut out), Ok(0));

        let mut st2 = vec![0u64; 1];
        let mut wrong = DirtyBitmap::new(&mut st2, 31).unwrap();
        assert_eq!(
            DirtyReport::new(&map, &mut wrong).err(),
            Some(ReportError::MapMismatch)
        );
    }

    #[test]
    fn logging_ranges() {
        let r = |iova, length| DmaRange { iova, length };
        assert_eq!(check_ranges(&[r(0, 8192), r(8192, 4096)], 4096), Ok(()));
        assert_eq!(
            check_ranges(&[r(8192, 4096), r(0, 12288)], 4096),
            Err(ReportError::Overlap)
        );
        assert_eq!(
            check_ranges(&[r(0, 4096)], 8192),
            Err(ReportError::Unaligned)
        );
        let many = vec![r(0, 4096); MAX_DMA_RANGES + 1];
        assert_eq!(check_ranges(&many, 4096), Err(ReportError::TooManyRanges));
        assert_eq!(ReportError::Overlap.to_string(), "logging ranges overlap");
    }

    proptest::proptest! {
        /// The report equals a naive per-frame computation, and clears exactly what it reported.
        #[test]
        fn matches_naive(dirty_idx in proptest::collection::vec(0usize..48, 0..40),
                         start_page in 0u64..80, pages in 1u64..80, shift in 0u32..4) {
            // 16 frames at 8, 16 at 40, 16 at 100 (holes between).
            let map = GuestMemoryMap::new(&[fr(8, 16), fr(40, 16), fr(100, 16)]).unwrap();
            let mut st = vec![0u64; 1];
            let mut dirty = DirtyBitmap::new(&mut st, 48).unwrap();
            for &d in &dirty_idx {
                dirty.set(d).unwrap();
            }
            let before: Vec<usize> = dirty.iter_ones().collect();
            let page = 4096u64 << shift;
            let range = DmaRange { iova: start_page * page, length: pages * page };
            let mut out = vec![0u64; 2];
            let n = DirtyReport::new(&map, &mut dirty).unwrap().report(range, page, &mut out).unwrap();
            let mut want = vec![0u64; 2];
            let mut want_n = 0;
            let mut left = Vec::new();
            for &d in &before {
                let gfn = map.frame_at(d).unwrap().get();
                let addr = gfn * 4096;
                if addr >= range.iova && addr < range.iova + range.length {
                    let bit = (addr - range.iova) / page;
                    want[(bit / 64) as usize] |= 1 << (bit % 64);
                    want_n += 1;
                } else {
                    left.push(d);
                }
            }
            prop_assert_eq!(out, want);
            prop_assert_eq!(n, want_n);
            prop_assert_eq!(dirty.iter_ones().collect::<Vec<_>>(), left);
        }
    }
}
