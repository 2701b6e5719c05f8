//! The guest view of one vGPU's GGTT entries over caller storage.

use heapless::Vec;

use crate::addr::GttIndex;
use crate::entry::GgttEntry;
use crate::error::GttError;
use crate::partition::Partition;

/// How many half-written entries a view tracks at once.
pub const MAX_PENDING_HALVES: usize = 16;

/// An entry of which only one 4-byte half has been written since its last full write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PendingHalf {
    /// The guest GGTT index.
    pub index: GttIndex,
    /// Which half was written: `true` for bits 63:32, `false` for bits 31:0.
    pub high: bool,
}

/// The outcome of [`GgttSlices::write_half`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HalfWrite {
    /// The entry now waits for its other half. If the pending list was full, the oldest
    /// pending entry was dropped from it and is named in `evicted` (its stored value stays as
    /// it is; the caller should treat it as complete).
    Pending {
        /// The entry dropped from the full pending list, if any.
        evicted: Option<GttIndex>,
    },
    /// Both halves have now been written; the entry holds this value.
    Completed(GgttEntry),
}

/// The vGPU's guest-view GGTT: one entry per page of the partition, aperture pages first,
/// then hidden pages, in caller storage. Indexed by *guest* GGTT index.
///
/// Half writes: each 4-byte write updates the stored entry immediately (like GVT updates its
/// guest copy), and the entry is listed in [`GgttSlices::pending_halves`] until the other
/// half arrives, in either order and with any writes to other entries in between. A full
/// 8-byte write clears the entry's pending state.
#[derive(Debug)]
pub struct GgttSlices<'a> {
    partition: Partition,
    storage: &'a mut [u64],
    pending: Vec<PendingHalf, MAX_PENDING_HALVES>,
}

impl<'a> GgttSlices<'a> {
    /// A view of `partition` over `storage`, which must have exactly
    /// [`Partition::storage_len`] entries. The storage is used as it is (not cleared).
    ///
    /// # Errors
    /// [`GttError::StorageSize`] on a length mismatch, [`GttError::Overlap`] if the
    /// partition's slices overlap.
    pub fn new(partition: Partition, storage: &'a mut [u64]) -> Result<Self, GttError> {
        partition.check()?;
        if u64::try_from(storage.len()).ok() != Some(partition.entries()) {
            return Err(GttError::StorageSize);
        }
        Ok(Self {
            partition,
            storage,
            pending: Vec::new(),
        })
    }

    /// The partition this view covers.
    #[must_use]
    pub const fn partition(&self) -> &Partition {
        &self.partition
    }

    /// All entries in storage order (aperture pages, then hidden pages).
    #[must_use]
    pub fn entries(&self) -> &[u64] {
        self.storage
    }

    /// Sets every entry to zero and forgets pending halves.
    pub fn clear(&mut self) {
        self.storage.fill(0);
        self.pending.clear();
    }

    fn slot(&self, index: GttIndex) -> Result<usize, GttError> {
        self.partition.slot_of(index).ok_or(GttError::OutOfRange)
    }

    /// The entry at guest index `index`.
    ///
    /// # Errors
    /// [`GttError::OutOfRange`] if `index` is outside both slices.
    pub fn read(&self, index: GttIndex) -> Result<GgttEntry, GttError> {
        let slot = self.slot(index)?;
        self.storage
            .get(slot)
            .map(|v| GgttEntry::from_bits(*v))
            .ok_or(GttError::OutOfRange)
    }

    /// Writes a whole entry at guest index `index`; clears its pending-half state.
    ///
    /// # Errors
    /// [`GttError::OutOfRange`] if `index` is outside both slices.
    pub fn write(&mut self, index: GttIndex, entry: GgttEntry) -> Result<(), GttError> {
        let slot = self.slot(index)?;
        let cell = self.storage.get_mut(slot).ok_or(GttError::OutOfRange)?;
        *cell = entry.into_bits();
        self.pending.retain(|p| p.index != index);
        Ok(())
    }

    /// One 4-byte half of the entry at `index` (`high` selects bits 63:32).
    ///
    /// # Errors
    /// [`GttError::OutOfRange`] if `index` is outside both slices.
    pub fn read_half(&self, index: GttIndex, high: bool) -> Result<u32, GttError> {
        let v = self.read(index)?.into_bits();
        let half = if high { v >> 32 } else { v & 0xFFFF_FFFF };
        u32::try_from(half).map_err(|_| GttError::OutOfRange)
    }

    /// Writes one 4-byte half of the entry at `index` (`high` selects bits 63:32). The
    /// stored entry is updated at once; see [`HalfWrite`] for the pending state.
    ///
    /// # Errors
    /// [`GttError::OutOfRange`] if `index` is outside both slices.
    pub fn write_half(
        &mut self,
        index: GttIndex,
        high: bool,
        value: u32,
    ) -> Result<HalfWrite, GttError> {
        let slot = self.slot(index)?;
        let cell = self.storage.get_mut(slot).ok_or(GttError::OutOfRange)?;
        let v = u64::from(value);
        *cell = if high {
            (*cell & 0x0000_0000_FFFF_FFFF) | (v << 32)
        } else {
            (*cell & 0xFFFF_FFFF_0000_0000) | v
        };
        let stored = GgttEntry::from_bits(*cell);
        if let Some(pos) = self.pending.iter().position(|p| p.index == index) {
            let same_half = self.pending.get(pos).is_some_and(|p| p.high == high);
            if same_half {
                return Ok(HalfWrite::Pending { evicted: None });
            }
            self.pending.remove(pos);
            return Ok(HalfWrite::Completed(stored));
        }
        let mut evicted = None;
        if self.pending.is_full() && !self.pending.is_empty() {
            evicted = Some(self.pending.remove(0).index);
        }
        // Cannot fail: an element was removed above if the list was full.
        let _ = self.pending.push(PendingHalf { index, high });
        Ok(HalfWrite::Pending { evicted })
    }

    /// Entries with only one half written, oldest first.
    #[must_use]
    pub fn pending_halves(&self) -> &[PendingHalf] {
        &self.pending
    }

    /// Every present entry with its guest index, in storage order.
    pub fn iter_present(&self) -> impl Iterator<Item = (GttIndex, GgttEntry)> + '_ {
        self.storage
            .iter()
            .enumerate()
            .filter(|(_, v)| **v & 1 != 0)
            .filter_map(|(slot, v)| {
                self.partition
                    .index_at(slot)
                    .map(|i| (i, GgttEntry::from_bits(*v)))
            })
    }

    pub(crate) fn storage_mut(&mut self) -> &mut [u64] {
        self.storage
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
    use crate::addr::GmAddr;
    use crate::partition::GmRange;

    fn part() -> Partition {
        Partition::new(
            GmRange::new(GmAddr::new(0x10_0000), 0x4000).unwrap(),
            GmRange::new(GmAddr::new(0x4000_0000), 0x2000).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn storage_size_checked() {
        let mut s = [0u64; 5];
        assert_eq!(
            GgttSlices::new(part(), &mut s).err(),
            Some(GttError::StorageSize)
        );
        let mut s = [0u64; 7];
        assert_eq!(
            GgttSlices::new(part(), &mut s).err(),
            Some(GttError::StorageSize)
        );
    }

    #[test]
    fn read_write_and_range() {
        let mut s = [0u64; 6];
        let mut g = GgttSlices::new(part(), &mut s).unwrap();
        let e = GgttEntry::from_bits(0x1234_5001);
        g.write(GttIndex::new(0x101), e).unwrap();
        g.write(GttIndex::new(0x40001), GgttEntry::from_bits(0x9001))
            .unwrap();
        assert_eq!(g.read(GttIndex::new(0x101)), Ok(e));
        assert_eq!(g.read(GttIndex::new(0x104)), Err(GttError::OutOfRange));
        assert_eq!(g.read(GttIndex::new(0xFF)), Err(GttError::OutOfRange));
        assert_eq!(
            g.write(GttIndex::new(0x40002), e),
            Err(GttError::OutOfRange)
        );
        assert_eq!(g.entries(), &[0, 0x1234_5001, 0, 0, 0, 0x9001]);
        let present: std::vec::Vec<_> = g.iter_present().collect();
        assert_eq!(
            present,
            [
                (GttIndex::new(0x101), e),
                (GttIndex::new(0x40001), GgttEntry::from_bits(0x9001))
            ]
        );
        g.clear();
        assert_eq!(g.entries(), &[0; 6]);
    }

    #[test]
    fn half_writes_low_then_high() {
        let mut s = [0xAAAA_AAAA_BBBB_BBBBu64; 6];
        let mut g = GgttSlices::new(part(), &mut s).unwrap();
        let i = GttIndex::new(0x100);
        assert_eq!(
            g.write_half(i, false, 0x1234_5001),
            Ok(HalfWrite::Pending { evicted: None })
        );
        assert_eq!(g.read(i).unwrap().into_bits(), 0xAAAA_AAAA_1234_5001);
        assert_eq!(
            g.pending_halves(),
            &[PendingHalf {
                index: i,
                high: false
            }]
        );
        // Unrelated write in between.
        g.write(GttIndex::new(0x101), GgttEntry::new()).unwrap();
        assert_eq!(
            g.write_half(i, true, 0),
            Ok(HalfWrite::Completed(GgttEntry::from_bits(0x1234_5001)))
        );
        assert!(g.pending_halves().is_empty());
        assert_eq!(g.read_half(i, false), Ok(0x1234_5001));
        assert_eq!(g.read_half(i, true), Ok(0));
    }

    #[test]
    fn half_writes_high_then_low_and_repeats() {
        let mut s = [0u64; 6];
        let mut g = GgttSlices::new(part(), &mut s).unwrap();
        let i = GttIndex::new(0x40000);
        assert_eq!(
            g.write_half(i, true, 0x1),
            Ok(HalfWrite::Pending { evicted: None })
        );
        assert_eq!(
            g.write_half(i, true, 0x2),
            Ok(HalfWrite::Pending { evicted: None })
        );
        assert_eq!(g.pending_halves().len(), 1);
        assert_eq!(g.read(i).unwrap().into_bits(), 0x2_0000_0000);
        assert_eq!(
            g.write_half(i, false, 0x5001),
            Ok(HalfWrite::Completed(GgttEntry::from_bits(0x2_0000_5001)))
        );
        // A full write clears the pending state.
        g.write_half(i, false, 7).unwrap();
        g.write(i, GgttEntry::new()).unwrap();
        assert!(g.pending_halves().is_empty());
        assert_eq!(
            g.write_half(GttIndex::new(0), true, 1),
            Err(GttError::OutOfRange)
        );
    }

    #[test]
    fn pending_list_evicts_oldest() {
        let p = Partition::new(
            GmRange::new(GmAddr::new(0), 0x20_000).unwrap(),
            GmRange::EMPTY,
        )
        .unwrap();
        let mut s = [0u64; 32];
        let mut g = GgttSlices::new(p, &mut s).unwrap();
        for i in 0..16 {
            assert_eq!(
                g.write_half(GttIndex::new(i), false, 1),
                Ok(HalfWrite::Pending { evicted: None })
            );
        }
        assert_eq!(
            g.write_half(GttIndex::new(16), false, 1),
            Ok(HalfWrite::Pending {
                evicted: Some(GttIndex::new(0))
            })
        );
        assert_eq!(g.pending_halves().len(), 16);
        assert_eq!(g.pending_halves()[0].index, GttIndex::new(1));
        assert_eq!(g.pending_halves()[15].index, GttIndex::new(16));
    }
}
