//! The guest's RAM as a sorted list of frame ranges, with a dense index that numbers every
//! guest frame consecutively (holes cost nothing).

use gtt::Gfn;
use heapless::Vec;

use crate::error::GmemError;

/// The most regions a [`GuestMemoryMap`] holds.
pub const MAX_REGIONS: usize = 16;

/// The largest valid guest frame number plus one: frames whose address fits 64 bits.
pub const GFN_LIMIT: u64 = 1 << 52;

/// A non-empty range of guest frames `[start, start + count)` inside `0..GFN_LIMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameRange {
    start: Gfn,
    count: u64,
}

impl FrameRange {
    /// The range of `count` frames starting at `start`.
    ///
    /// # Errors
    /// [`GmemError::EmptyRegion`] if `count` is 0, [`GmemError::RegionOverflow`] if the end
    /// exceeds [`GFN_LIMIT`].
    pub const fn new(start: Gfn, count: u64) -> Result<Self, GmemError> {
        if count == 0 {
            return Err(GmemError::EmptyRegion);
        }
        match start.get().checked_add(count) {
            Some(end) if end <= GFN_LIMIT => Ok(Self { start, count }),
            _ => Err(GmemError::RegionOverflow),
        }
    }

    /// The first frame.
    #[must_use]
    pub const fn start(&self) -> Gfn {
        self.start
    }

    /// The number of frames.
    #[must_use]
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// One past the last frame number (never overflows).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.start.get() + self.count
    }

    /// Whether `gfn` lies inside the range.
    #[must_use]
    pub const fn contains(&self, gfn: Gfn) -> bool {
        gfn.get() >= self.start.get() && gfn.get() < self.end()
    }
}

/// The guest's RAM: up to [`MAX_REGIONS`] sorted, disjoint frame ranges.
///
/// The dense index numbers guest frames 0, 1, 2, … in address order across regions, so a
/// bitmap indexed by it has exactly one bit per guest frame: a 3.5–4 GiB hole costs nothing
/// and frames above 4 GiB are never confused with RAM offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestMemoryMap {
    regions: Vec<FrameRange, MAX_REGIONS>,
    /// `first[i]` = dense index of `regions[i].start`.
    first: Vec<u64, MAX_REGIONS>,
    frames: u64,
}

impl GuestMemoryMap {
    /// A map of `regions`, which must be sorted by start and disjoint (adjacent is fine).
    ///
    /// # Errors
    /// [`GmemError::TooManyRegions`], or [`GmemError::Unsorted`] on unsorted or overlapping
    /// regions.
    pub fn new(regions: &[FrameRange]) -> Result<Self, GmemError> {
        let mut map = Self {
            regions: Vec::new(),
            first: Vec::new(),
            frames: 0,
        };
        let mut prev_end = 0u64;
        for r in regions {
            if r.start().get() < prev_end {
                return Err(GmemError::Unsorted);
            }
            map.regions
                .push(*r)
                .map_err(|_| GmemError::TooManyRegions)?;
            map.first
                .push(map.frames)
                .map_err(|_| GmemError::TooManyRegions)?;
            // Cannot overflow: disjoint ranges below 2^52.
            map.frames = map
                .frames
                .checked_add(r.count())
                .ok_or(GmemError::RegionOverflow)?;
            prev_end = r.end();
        }
        Ok(map)
    }

    /// The regions, sorted.
    #[must_use]
    pub fn regions(&self) -> &[FrameRange] {
        &self.regions
    }

    /// Total number of guest frames.
    #[must_use]
    pub const fn frames(&self) -> u64 {
        self.frames
    }

    fn region_of(&self, gfn: Gfn) -> Option<usize> {
        // Last region whose start is <= gfn.
        let i = self
            .regions
            .partition_point(|r| r.start().get() <= gfn.get())
            .checked_sub(1)?;
        self.regions.get(i).filter(|r| r.contains(gfn)).map(|_| i)
    }

    /// Whether `gfn` is guest RAM.
    #[must_use]
    pub fn contains(&self, gfn: Gfn) -> bool {
        self.region_of(gfn).is_some()
    }

    /// The dense index of `gfn`, or `None` if it is not guest RAM (or the index does not fit
    /// `usize`).
    #[must_use]
    pub fn index_of(&self, gfn: Gfn) -> Option<usize> {
        let i = self.region_of(gfn)?;
        let r = self.regions.get(i)?;
        let base = *self.first.get(i)?;
        usize::try_from(base.checked_add(gfn.get().checked_sub(r.start().get())?)?).ok()
    }

    /// The guest frame with dense index `index`; inverse of [`GuestMemoryMap::index_of`].
    #[must_use]
    pub fn frame_at(&self, index: usize) -> Option<Gfn> {
        let index = u64::try_from(index).ok()?;
        if index >= self.frames {
            return None;
        }
        let i = self.first.partition_point(|f| *f <= index).checked_sub(1)?;
        let r = self.regions.get(i)?;
        let off = index.checked_sub(*self.first.get(i)?)?;
        r.start().checked_add(off)
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
    use proptest::prelude::*;

    const GIB_FRAMES: u64 = 1 << 18;

    fn fr(start: u64, count: u64) -> FrameRange {
        FrameRange::new(Gfn::new(start), count).unwrap()
    }

    /// 3.5 GiB low RAM, hole to 4 GiB, 4.5 GiB high RAM above 4 GiB.
    fn pc_map() -> GuestMemoryMap {
        GuestMemoryMap::new(&[
            fr(0, 7 * GIB_FRAMES / 2),
            fr(4 * GIB_FRAMES, 9 * GIB_FRAMES / 2),
        ])
        .unwrap()
    }

    #[test]
    fn holes_and_high_memory() {
        let m = pc_map();
        assert_eq!(m.frames(), 8 * GIB_FRAMES);
        assert!(m.contains(Gfn::new(0)));
        assert!(m.contains(Gfn::new(0xD_FFFF)));
        assert!(!m.contains(Gfn::new(0xE_0000)));
        assert!(!m.contains(Gfn::new(0xF_FFFF)));
        assert!(m.contains(Gfn::new(0x10_0000)));
        assert!(m.contains(Gfn::new(0x21_FFFF)));
        assert!(!m.contains(Gfn::new(0x22_0000)));
        assert_eq!(m.index_of(Gfn::new(0xD_FFFF)), Some(0xD_FFFF));
        assert_eq!(m.index_of(Gfn::new(0xE_0000)), None);
        assert_eq!(m.index_of(Gfn::new(0x10_0000)), Some(0xE_0000));
        assert_eq!(m.frame_at(0xE_0000), Some(Gfn::new(0x10_0000)));
        assert_eq!(m.frame_at(0xD_FFFF), Some(Gfn::new(0xD_FFFF)));
        assert_eq!(m.frame_at(0x20_0000 - 1), Some(Gfn::new(0x21_FFFF)));
        assert_eq!(m.frame_at(0x20_0000), None);
    }

    #[test]
    fn constructor_checks() {
        assert_eq!(FrameRange::new(Gfn::new(1), 0), Err(GmemError::EmptyRegion));
        assert_eq!(
            FrameRange::new(Gfn::new(GFN_LIMIT - 1), 2),
            Err(GmemError::RegionOverflow)
        );
        assert_eq!(
            GuestMemoryMap::new(&[fr(10, 5), fr(0, 5)]),
            Err(GmemError::Unsorted)
        );
        assert_eq!(
            GuestMemoryMap::new(&[fr(0, 5), fr(4, 5)]),
            Err(GmemError::Unsorted)
        );
        assert!(GuestMemoryMap::new(&[fr(0, 5), fr(5, 5)]).is_ok());
        let many: std::vec::Vec<_> = (0..17).map(|i| fr(i * 10, 1)).collect();
        assert_eq!(GuestMemoryMap::new(&many), Err(GmemError::TooManyRegions));
        let empty = GuestMemoryMap::new(&[]).unwrap();
        assert_eq!(empty.frames(), 0);
        assert!(!empty.contains(Gfn::new(0)));
        assert_eq!(empty.frame_at(0), None);
    }

    proptest::proptest! {
        #[test]
        fn dense_index_round_trips(gaps in proptest::collection::vec((0u64..1000, 1u64..1000), 1..16),
                                   probe in 0u64..40_000) {
            let mut regions = std::vec::Vec::new();
            let mut at = 0;
            for (gap, len) in gaps {
                at += gap;
                regions.push(fr(at, len));
                at += len;
            }
            let m = GuestMemoryMap::new(&regions).unwrap();
            let inside = regions.iter().any(|r| r.contains(Gfn::new(probe)));
            prop_assert_eq!(m.contains(Gfn::new(probe)), inside);
            match m.index_of(Gfn::new(probe)) {
                Some(i) => prop_assert_eq!(m.frame_at(i), Some(Gfn::new(probe))),
                None => prop_assert!(!inside),
            }
            let idx = usize::try_from(probe % m.frames()).unwrap();
            let g = m.frame_at(idx).unwrap();
            prop_assert_eq!(m.index_of(g), Some(idx));
        }
    }
}
