//! The graphics-memory partition of one vGPU: its aperture and hidden slices as the guest
//! sees them (frozen at guest boot, published through PVINFO), and where the host actually
//! placed them. `g2h` / `h2g` translate between the two views.

use heapless::Vec;

use crate::addr::{GmAddr, GttIndex, PAGE_MASK, PAGE_SHIFT};
use crate::error::GttError;

/// The size of the GGTT address space this crate accepts: 2^32 entries of 4 KiB.
pub const GM_LIMIT: u64 = 1 << 44;

/// The most host extents one slice may be split into.
pub const MAX_EXTENTS: usize = 8;

/// A page-aligned range of graphics memory that lies inside [0, [`GM_LIMIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GmRange {
    base: GmAddr,
    size: u64,
}

impl GmRange {
    /// The empty range at address 0.
    pub const EMPTY: Self = Self {
        base: GmAddr::new(0),
        size: 0,
    };

    /// A range of `size` bytes starting at `base`.
    ///
    /// # Errors
    /// [`GttError::Misaligned`] if `base` or `size` is not a multiple of 4 KiB;
    /// [`GttError::RangeOverflow`] if the range does not lie inside [0, [`GM_LIMIT`]).
    pub const fn new(base: GmAddr, size: u64) -> Result<Self, GttError> {
        if base.get() & PAGE_MASK != 0 || size & PAGE_MASK != 0 {
            return Err(GttError::Misaligned);
        }
        match base.get().checked_add(size) {
            Some(end) if end <= GM_LIMIT && base.get() < GM_LIMIT => Ok(Self { base, size }),
            _ => Err(GttError::RangeOverflow),
        }
    }

    /// The first address.
    #[must_use]
    pub const fn base(&self) -> GmAddr {
        self.base
    }

    /// The size in bytes.
    #[must_use]
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The address one past the end (never overflows: at most [`GM_LIMIT`]).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base.get() + self.size
    }

    /// The number of 4 KiB pages.
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.size >> PAGE_SHIFT
    }

    /// Whether the range is empty.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The GGTT index of the first page.
    #[must_use]
    pub const fn first_index(&self) -> u64 {
        self.base.get() >> PAGE_SHIFT
    }

    /// Whether `addr` lies inside the range.
    #[must_use]
    pub const fn contains(&self, addr: GmAddr) -> bool {
        addr.get() >= self.base.get() && addr.get() < self.end()
    }

    /// Whether the page mapped by GGTT entry `index` lies inside the range.
    #[must_use]
    pub const fn contains_index(&self, index: GttIndex) -> bool {
        self.contains(index.addr())
    }

    /// Whether the two ranges share at least one byte.
    #[must_use]
    pub const fn overlaps(&self, other: &Self) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.base.get() < other.end()
            && other.base.get() < self.end()
    }
}

/// One of the two slices of a vGPU's graphics memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Slice {
    /// The CPU-mappable ("low") slice, reachable through BAR2.
    Aperture,
    /// The non-mappable ("high") slice.
    Hidden,
}

/// The guest's view of its graphics memory: what PVINFO tells the guest.
///
/// Storage order ("slots") used by [`crate::GgttSlices`] and the save format: the aperture
/// pages first, then the hidden pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Partition {
    /// The guest-view aperture slice.
    pub aperture: GmRange,
    /// The guest-view hidden slice.
    pub hidden: GmRange,
}

/// The number of GGTT entries (one `u64` each) a vGPU with these slice sizes needs; the
/// storage length for [`crate::GgttSlices`]. Saturates at `usize::MAX` (such storage cannot
/// exist, so construction then fails).
#[must_use]
pub const fn storage_len(aperture_size: u64, hidden_size: u64) -> usize {
    let pages = (aperture_size >> PAGE_SHIFT) + (hidden_size >> PAGE_SHIFT);
    if pages > usize::MAX as u64 {
        usize::MAX
    } else {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "checked against usize::MAX above"
        )]
        let n = pages as usize;
        n
    }
}

impl Partition {
    /// A partition of two disjoint slices.
    ///
    /// # Errors
    /// [`GttError::Overlap`] if the slices overlap.
    pub const fn new(aperture: GmRange, hidden: GmRange) -> Result<Self, GttError> {
        let p = Self { aperture, hidden };
        match p.check() {
            Ok(()) => Ok(p),
            Err(e) => Err(e),
        }
    }

    /// Re-checks the invariant of [`Partition::new`] (the fields are public).
    ///
    /// # Errors
    /// [`GttError::Overlap`] if the slices overlap.
    pub const fn check(&self) -> Result<(), GttError> {
        if self.aperture.overlaps(&self.hidden) {
            Err(GttError::Overlap)
        } else {
            Ok(())
        }
    }

    /// Total GGTT entries of the vGPU: `(aperture.size + hidden.size) / 4096`.
    #[must_use]
    pub const fn entries(&self) -> u64 {
        self.aperture.pages() + self.hidden.pages()
    }

    /// [`storage_len`] for this partition.
    #[must_use]
    pub const fn storage_len(&self) -> usize {
        storage_len(self.aperture.size(), self.hidden.size())
    }

    /// The range of `slice`.
    #[must_use]
    pub const fn range(&self, slice: Slice) -> &GmRange {
        match slice {
            Slice::Aperture => &self.aperture,
            Slice::Hidden => &self.hidden,
        }
    }

    /// Which slice holds `addr`, and the byte offset inside it.
    #[must_use]
    pub const fn locate(&self, addr: GmAddr) -> Option<(Slice, u64)> {
        if self.aperture.contains(addr) {
            Some((Slice::Aperture, addr.get() - self.aperture.base().get()))
        } else if self.hidden.contains(addr) {
            Some((Slice::Hidden, addr.get() - self.hidden.base().get()))
        } else {
            None
        }
    }

    /// Whether `addr` is inside the guest view.
    #[must_use]
    pub const fn contains(&self, addr: GmAddr) -> bool {
        self.locate(addr).is_some()
    }

    /// The storage slot of guest GGTT entry `index` (aperture pages first, then hidden).
    #[must_use]
    pub fn slot_of(&self, index: GttIndex) -> Option<usize> {
        let (slice, off) = self.locate(index.addr())?;
        let slot = match slice {
            Slice::Aperture => off >> PAGE_SHIFT,
            Slice::Hidden => self.aperture.pages().checked_add(off >> PAGE_SHIFT)?,
        };
        usize::try_from(slot).ok()
    }

    /// The guest GGTT index stored at `slot`; inverse of [`Partition::slot_of`].
    #[must_use]
    pub fn index_at(&self, slot: usize) -> Option<GttIndex> {
        let slot = u64::try_from(slot).ok()?;
        let page = if slot < self.aperture.pages() {
            self.aperture.first_index().checked_add(slot)?
        } else {
            let off = slot - self.aperture.pages();
            if off >= self.hidden.pages() {
                return None;
            }
            self.hidden.first_index().checked_add(off)?
        };
        u32::try_from(page).ok().map(GttIndex::new)
    }

    /// Guest to host: the host graphics address backing guest address `gma`, or `None` if
    /// `gma` is outside the guest view or `placement` does not cover it.
    #[must_use]
    pub fn g2h(&self, placement: &HostPlacement, gma: GmAddr) -> Option<GmAddr> {
        let (slice, mut off) = self.locate(gma)?;
        for ext in placement.extents(slice) {
            if off < ext.size() {
                return ext.base().checked_add(off);
            }
            off -= ext.size();
        }
        None
    }

    /// Host to guest: the guest address that `placement` maps onto host address `hma`, or
    /// `None` if no extent holds it or the result falls outside the guest view.
    #[must_use]
    pub fn h2g(&self, placement: &HostPlacement, hma: GmAddr) -> Option<GmAddr> {
        for slice in [Slice::Aperture, Slice::Hidden] {
            let mut guest_off: u64 = 0;
            for ext in placement.extents(slice) {
                if ext.contains(hma) {
                    let off = guest_off.checked_add(hma.get() - ext.base().get())?;
                    let range = self.range(slice);
                    if off >= range.size() {
                        return None;
                    }
                    return range.base().checked_add(off);
                }
                guest_off = guest_off.checked_add(ext.size())?;
            }
        }
        None
    }

    /// [`Partition::g2h`] for GGTT indices.
    #[must_use]
    pub fn g2h_index(&self, placement: &HostPlacement, index: GttIndex) -> Option<GttIndex> {
        self.g2h(placement, index.addr())?.index()
    }

    /// [`Partition::h2g`] for GGTT indices.
    #[must_use]
    pub fn h2g_index(&self, placement: &HostPlacement, index: GttIndex) -> Option<GttIndex> {
        self.h2g(placement, index.addr())?.index()
    }
}

/// Where the host placed each guest slice: an ordered list of host extents per slice, whose
/// sizes add up to the slice size. The guest's first slice page lives at the first byte of
/// the first extent, and so on in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HostPlacement {
    aperture: Vec<GmRange, MAX_EXTENTS>,
    hidden: Vec<GmRange, MAX_EXTENTS>,
}

impl HostPlacement {
    /// Guest view equals host view (upstream "ballooning" placement).
    #[must_use]
    pub fn identity(partition: &Partition) -> Self {
        let mut p = Self {
            aperture: Vec::new(),
            hidden: Vec::new(),
        };
        if !partition.aperture.is_empty() {
            let _ = p.aperture.push(partition.aperture);
        }
        if !partition.hidden.is_empty() {
            let _ = p.hidden.push(partition.hidden);
        }
        p
    }

    /// One host extent per slice, at `aperture_host` and `hidden_host`.
    ///
    /// # Errors
    /// As [`HostPlacement::split`].
    pub fn contiguous(
        partition: &Partition,
        aperture_host: GmAddr,
        hidden_host: GmAddr,
    ) -> Result<Self, GttError> {
        let a = GmRange::new(aperture_host, partition.aperture.size())?;
        let h = GmRange::new(hidden_host, partition.hidden.size())?;
        Self::split(partition, &[a], &[h])
    }

    /// A placement with each slice split over the given host extents (in guest order).
    /// Empty extents are ignored.
    ///
    /// # Errors
    /// [`GttError::BadPlacement`] if a slice has more than [`MAX_EXTENTS`] non-empty extents
    /// or its extents do not add up to the slice size; [`GttError::Overlap`] if two host
    /// extents overlap.
    pub fn split(
        partition: &Partition,
        aperture: &[GmRange],
        hidden: &[GmRange],
    ) -> Result<Self, GttError> {
        let aperture = collect(aperture, partition.aperture.size())?;
        let hidden = collect(hidden, partition.hidden.size())?;
        for (i, a) in aperture.iter().chain(hidden.iter()).enumerate() {
            for b in aperture
                .iter()
                .chain(hidden.iter())
                .skip(i.saturating_add(1))
            {
                if a.overlaps(b) {
                    return Err(GttError::Overlap);
                }
            }
        }
        Ok(Self { aperture, hidden })
    }

    /// The host extents of `slice`, in guest order.
    #[must_use]
    pub fn extents(&self, slice: Slice) -> &[GmRange] {
        match slice {
            Slice::Aperture => &self.aperture,
            Slice::Hidden => &self.hidden,
        }
    }
}

fn collect(extents: &[GmRange], size: u64) -> Result<Vec<GmRange, MAX_EXTENTS>, GttError> {
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for e in extents.iter().filter(|e| !e.is_empty()) {
        out.push(*e).map_err(|_| GttError::BadPlacement)?;
        total = total.checked_add(e.size()).ok_or(GttError::BadPlacement)?;
    }
    if total != size {
        return Err(GttError::BadPlacement);
    }
    Ok(out)
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

    const MIB: u64 = 1 << 20;

    fn r(base: u64, size: u64) -> GmRange {
        GmRange::new(GmAddr::new(base), size).unwrap()
    }

    fn guest() -> Partition {
        // Aperture at guest 0 (64 MiB), hidden at guest 1 GiB (384 MiB).
        Partition::new(r(0, 64 * MIB), r(1024 * MIB, 384 * MIB)).unwrap()
    }

    #[test]
    fn range_checks() {
        assert_eq!(
            GmRange::new(GmAddr::new(0x1001), 0x1000),
            Err(GttError::Misaligned)
        );
        assert_eq!(
            GmRange::new(GmAddr::new(0x1000), 0x1001),
            Err(GttError::Misaligned)
        );
        assert_eq!(
            GmRange::new(GmAddr::new(0xFFFF_FFFF_FFFF_F000), 0x2000),
            Err(GttError::RangeOverflow)
        );
        assert_eq!(
            GmRange::new(GmAddr::new(GM_LIMIT), 0),
            Err(GttError::RangeOverflow)
        );
        assert_eq!(
            GmRange::new(GmAddr::new(GM_LIMIT - 0x1000), 0x2000),
            Err(GttError::RangeOverflow)
        );
        let x = r(0x10_0000, 0x3000);
        assert_eq!(x.pages(), 3);
        assert_eq!(x.end(), 0x10_3000);
        assert!(x.contains(GmAddr::new(0x10_2FFF)));
        assert!(!x.contains(GmAddr::new(0x10_3000)));
        assert!(!x.contains(GmAddr::new(0xF_FFFF)));
        assert!(x.contains_index(GttIndex::new(0x100)));
        assert!(x.overlaps(&r(0x10_2000, 0x1000)));
        assert!(!x.overlaps(&r(0x10_3000, 0x1000)));
        assert!(!x.overlaps(&r(0x10_1000, 0)));
    }

    #[test]
    fn partition_entries_and_slots() {
        let p = guest();
        assert_eq!(p.entries(), (448 * MIB) >> 12);
        assert_eq!(p.storage_len(), 114_688);
        assert_eq!(storage_len(64 * MIB, 384 * MIB), 114_688);
        assert_eq!(
            Partition::new(r(0, 0x2000), r(0x1000, 0x1000)),
            Err(GttError::Overlap)
        );
        assert_eq!(p.slot_of(GttIndex::new(0)), Some(0));
        assert_eq!(p.slot_of(GttIndex::new(16383)), Some(16383));
        assert_eq!(p.slot_of(GttIndex::new(16384)), None);
        assert_eq!(p.slot_of(GttIndex::new(262_144)), Some(16384));
        assert_eq!(p.index_at(16384), Some(GttIndex::new(262_144)));
        assert_eq!(p.index_at(114_687), Some(GttIndex::new(262_144 + 98_303)));
        assert_eq!(p.index_at(114_688), None);
        for slot in [0usize, 1, 16383, 16384, 50_000, 114_687] {
            assert_eq!(p.slot_of(p.index_at(slot).unwrap()), Some(slot));
        }
    }

    #[test]
    fn g2h_identity() {
        let p = guest();
        let id = HostPlacement::identity(&p);
        for a in [0u64, 0x123, 64 * MIB - 1, 1024 * MIB, 1408 * MIB - 1] {
            assert_eq!(p.g2h(&id, GmAddr::new(a)), Some(GmAddr::new(a)));
            assert_eq!(p.h2g(&id, GmAddr::new(a)), Some(GmAddr::new(a)));
        }
        assert_eq!(p.g2h(&id, GmAddr::new(64 * MIB)), None);
        assert_eq!(p.h2g(&id, GmAddr::new(1408 * MIB)), None);
    }

    #[test]
    fn g2h_moved_and_split() {
        let p = guest();
        // Host: aperture at 128 MiB, hidden at 2 GiB.
        let h =
            HostPlacement::contiguous(&p, GmAddr::new(128 * MIB), GmAddr::new(2048 * MIB)).unwrap();
        assert_eq!(
            p.g2h(&h, GmAddr::new(0x1234)),
            Some(GmAddr::new(128 * MIB + 0x1234))
        );
        assert_eq!(
            p.g2h(&h, GmAddr::new(1024 * MIB + 0x5000)),
            Some(GmAddr::new(2048 * MIB + 0x5000))
        );
        assert_eq!(
            p.h2g(&h, GmAddr::new(128 * MIB + 0x1234)),
            Some(GmAddr::new(0x1234))
        );
        assert_eq!(p.h2g(&h, GmAddr::new(0x1234)), None);
        assert_eq!(
            p.g2h_index(&h, GttIndex::new(262_145)),
            Some(GttIndex::new(524_289))
        );
        assert_eq!(
            p.h2g_index(&h, GttIndex::new(524_289)),
            Some(GttIndex::new(262_145))
        );

        // Hidden split in two host extents: 100 MiB at 3 GiB, 284 MiB at 2 GiB.
        let s = HostPlacement::split(
            &p,
            &[r(128 * MIB, 64 * MIB)],
            &[r(3072 * MIB, 100 * MIB), r(2048 * MIB, 284 * MIB)],
        )
        .unwrap();
        assert_eq!(
            p.g2h(&s, GmAddr::new(1024 * MIB + 100 * MIB - 1)),
            Some(GmAddr::new(3172 * MIB - 1))
        );
        assert_eq!(
            p.g2h(&s, GmAddr::new(1124 * MIB)),
            Some(GmAddr::new(2048 * MIB))
        );
        assert_eq!(
            p.h2g(&s, GmAddr::new(2048 * MIB + 1)),
            Some(GmAddr::new(1124 * MIB + 1))
        );
        assert_eq!(
            p.h2g(&s, GmAddr::new(3072 * MIB)),
            Some(GmAddr::new(1024 * MIB))
        );
    }

    #[test]
    fn placement_rejections() {
        let p = guest();
        assert_eq!(
            HostPlacement::split(&p, &[r(0, 32 * MIB)], &[r(2048 * MIB, 384 * MIB)]),
            Err(GttError::BadPlacement)
        );
        assert_eq!(
            HostPlacement::contiguous(&p, GmAddr::new(0), GmAddr::new(32 * MIB)),
            Err(GttError::Overlap)
        );
        let nine = [r(0, 0x1000); 9];
        let small = Partition::new(r(0, 9 * 0x1000), GmRange::EMPTY).unwrap();
        assert_eq!(
            HostPlacement::split(&small, &nine, &[]),
            Err(GttError::BadPlacement)
        );
    }
}
