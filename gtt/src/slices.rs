//! The guest view of one vGPU's GGTT entries over caller storage.

use heapless::Vec;

use crate::addr::GttIndex;
use crate::entry::GgttEntry;
use crate::error::GttError;
use crate::partition::Partition;

const PENDING_HEADER: usize = 8;
const PENDING_ENTRY: usize = 12;

trait ConcatArray {
    fn concat_array(&self) -> [u8; 8];
}

impl ConcatArray for [[u8; 4]; 2] {
    fn concat_array(&self) -> [u8; 8] {
        let [[a, b, c, d], [e, f, g, h]] = *self;
        [a, b, c, d, e, f, g, h]
    }
}

fn parse_pending(payload: &[u8]) -> impl Iterator<Item = PendingHalf> + '_ {
    payload
        .get(PENDING_HEADER..)
        .unwrap_or(&[])
        .chunks_exact(PENDING_ENTRY)
        .map(|c| {
            let w = |i: usize| {
                c.get(i..i + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_le_bytes)
            };
            PendingHalf {
                index: GttIndex::new(w(0)),
                high: c.get(4) == Some(&1),
                value: w(8),
            }
        })
}

/// Check a held-halves payload (see [`GgttSlices::save_pending`]): exact length for its count,
/// at most [`MAX_PENDING_HALVES`] halves, each index inside the partition and listed once, the
/// `high` flag 0 or 1, reserved bytes zero.
///
/// # Errors
/// [`GttError::Truncated`] for a length that does not match the count or a count over the
/// capacity, [`GttError::NonZeroReserved`] for a bad flag or reserved byte,
/// [`GttError::OutOfRange`] for an index outside the partition or listed twice.
pub fn validate_pending(payload: &[u8], partition: &Partition) -> Result<(), GttError> {
    let (head, body) = payload
        .split_at_checked(PENDING_HEADER)
        .ok_or(GttError::Truncated)?;
    let count = head
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    if head.get(4..8) != Some(&[0, 0, 0, 0][..]) {
        return Err(GttError::NonZeroReserved);
    }
    let count = usize::try_from(count).map_err(|_| GttError::Truncated)?;
    if count > MAX_PENDING_HALVES || body.len() != count * PENDING_ENTRY {
        return Err(GttError::Truncated);
    }
    for c in body.chunks_exact(PENDING_ENTRY) {
        if !matches!(c.get(4), Some(0 | 1)) || c.get(5..8) != Some(&[0, 0, 0][..]) {
            return Err(GttError::NonZeroReserved);
        }
    }
    let list: Vec<PendingHalf, MAX_PENDING_HALVES> = parse_pending(payload).collect();
    for (n, p) in list.iter().enumerate() {
        if partition.slot_of(p.index).is_none() || list.iter().take(n).any(|q| q.index == p.index) {
            return Err(GttError::OutOfRange);
        }
    }
    Ok(())
}

/// How many half-written entries a view tracks at once.
pub const MAX_PENDING_HALVES: usize = 16;

/// The longest payload [`GgttSlices::save_pending`] writes (SPEC.md Appendix A.4: count,
/// reserved, then 12 bytes per half).
pub const MAX_PENDING_LEN: usize = PENDING_HEADER + PENDING_ENTRY * MAX_PENDING_HALVES;

/// An entry of which only one 4-byte half has been written since its last full write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PendingHalf {
    /// The value of the half written so far.
    pub value: u32,
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
    /// pending half was merged into its entry (as if its partner had arrived unchanged) and is
    /// named in `evicted`: the caller should treat that entry as complete.
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
/// Half writes: a 4-byte write is held in [`GgttSlices::pending_halves`] until the other half
/// arrives, in either order and with any writes to other entries in between; only then does the
/// stored entry change. So the stored entries are always *committed* entries (what the GPU's
/// translation uses and what a save carries), and the held halves are separate state that a
/// save carries too ([`GgttSlices::save_pending`]). Reading a half that is held returns the held
/// value, as the guest expects. A full 8-byte write drops the entry's held half.
#[derive(Debug)]
pub struct GgttSlices<'a> {
    partition: Partition,
    storage: &'a mut [u64],
    pending: Vec<PendingHalf, MAX_PENDING_HALVES>,
    /// Every slot at or after this one is known to be zero (`storage.len()` when nothing is
    /// known): lets [`crate::restore_runs`] skip checking that the slots it fills are free.
    zero_from: usize,
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
        let zero_from = storage.len();
        Ok(Self {
            partition,
            storage,
            pending: Vec::new(),
            zero_from,
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

    /// Sets every entry to zero and forgets pending halves. Only slots that may be non-zero
    /// are written: clearing a table nothing was written to since its last clear costs
    /// nothing.
    pub fn clear(&mut self) {
        let end = self.zero_from.min(self.storage.len());
        if let Some(written) = self.storage.get_mut(..end) {
            written.fill(0);
        }
        self.pending.clear();
        self.zero_from = 0;
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
        self.zero_from = self.zero_from.max(slot + 1);
        self.pending.retain(|p| p.index != index);
        Ok(())
    }

    /// One 4-byte half of the entry at `index` (`high` selects bits 63:32).
    ///
    /// # Errors
    /// [`GttError::OutOfRange`] if `index` is outside both slices.
    pub fn read_half(&self, index: GttIndex, high: bool) -> Result<u32, GttError> {
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| p.index == index && p.high == high)
        {
            return Ok(p.value);
        }
        let v = self.read(index)?.into_bits();
        let half = if high { v >> 32 } else { v & 0xFFFF_FFFF };
        u32::try_from(half).map_err(|_| GttError::OutOfRange)
    }

    /// Writes one 4-byte half of the entry at `index` (`high` selects bits 63:32). The half is
    /// held until its partner arrives; only then does the stored entry change (see the type's
    /// docs and [`HalfWrite`]).
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
        if let Some(pos) = self.pending.iter().position(|p| p.index == index) {
            let held = self.pending.get(pos).copied().ok_or(GttError::OutOfRange)?;
            if held.high == high {
                // The same half again: the newer value replaces the held one.
                if let Some(p) = self.pending.get_mut(pos) {
                    p.value = value;
                }
                return Ok(HalfWrite::Pending { evicted: None });
            }
            self.pending.remove(pos);
            let (lo, hi) = if high {
                (held.value, value)
            } else {
                (value, held.value)
            };
            let entry = GgttEntry::from_bits(u64::from(lo) | (u64::from(hi) << 32));
            let cell = self.storage.get_mut(slot).ok_or(GttError::OutOfRange)?;
            *cell = entry.into_bits();
            self.zero_from = self.zero_from.max(slot + 1);
            return Ok(HalfWrite::Completed(entry));
        }
        let mut evicted = None;
        if self.pending.is_full() && !self.pending.is_empty() {
            let old = self.pending.remove(0);
            self.merge_half(old)?;
            evicted = Some(old.index);
        }
        // Cannot fail: an element was removed above if the list was full.
        let _ = self.pending.push(PendingHalf { value, index, high });
        Ok(HalfWrite::Pending { evicted })
    }

    /// Merge a held half into its stored entry.
    fn merge_half(&mut self, p: PendingHalf) -> Result<(), GttError> {
        let slot = self.slot(p.index)?;
        let cell = self.storage.get_mut(slot).ok_or(GttError::OutOfRange)?;
        let v = u64::from(p.value);
        *cell = if p.high {
            (*cell & 0x0000_0000_FFFF_FFFF) | (v << 32)
        } else {
            (*cell & 0xFFFF_FFFF_0000_0000) | v
        };
        self.zero_from = self.zero_from.max(slot + 1);
        Ok(())
    }

    /// Bytes [`save_pending`](Self::save_pending) writes for the current held halves.
    #[must_use]
    pub fn pending_len(&self) -> usize {
        PENDING_HEADER + self.pending.len() * PENDING_ENTRY
    }

    /// Save the held halves: `count: u32, reserved: u32 (0)`, then per half, oldest first,
    /// `index: u32, high: u8 (0 or 1), reserved: [u8; 3] (0), value: u32`, little-endian.
    ///
    /// # Errors
    /// [`GttError::BufferTooSmall`] if `out` is shorter than [`pending_len`](Self::pending_len).
    pub fn save_pending(&self, out: &mut [u8]) -> Result<usize, GttError> {
        let len = self.pending_len();
        let out = out.get_mut(..len).ok_or(GttError::BufferTooSmall)?;
        let (head, body) = out.split_at_mut(PENDING_HEADER);
        let count = u32::try_from(self.pending.len()).map_err(|_| GttError::BufferTooSmall)?;
        head.copy_from_slice(&[count.to_le_bytes(), [0; 4]].concat_array());
        for (p, chunk) in self
            .pending
            .iter()
            .zip(body.chunks_exact_mut(PENDING_ENTRY))
        {
            let i = p.index.get().to_le_bytes();
            let v = p.value.to_le_bytes();
            chunk.copy_from_slice(&[
                i[0],
                i[1],
                i[2],
                i[3],
                u8::from(p.high),
                0,
                0,
                0,
                v[0],
                v[1],
                v[2],
                v[3],
            ]);
        }
        Ok(len)
    }

    /// Restore held halves saved by [`save_pending`](Self::save_pending) (after the entries),
    /// replacing any held now. Checks everything first ([`validate_pending`]); on error nothing
    /// changes.
    ///
    /// # Errors
    /// As [`validate_pending`].
    pub fn restore_pending(&mut self, payload: &[u8]) -> Result<(), GttError> {
        validate_pending(payload, &self.partition)?;
        self.pending.clear();
        for p in parse_pending(payload) {
            self.pending.push(p).map_err(|_| GttError::Truncated)?;
        }
        Ok(())
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

    /// The storage for writing; forgets which slots are known to be zero (a caller that knows
    /// better restores it with [`GgttSlices::set_zero_from`]).
    pub(crate) fn storage_mut(&mut self) -> &mut [u64] {
        self.zero_from = self.storage.len();
        self.storage
    }

    /// The first slot from which every slot is known to be zero.
    pub(crate) const fn zero_from(&self) -> usize {
        self.zero_from
    }

    /// Forgets held halves (as [`GgttSlices::clear`] does, without touching the entries).
    pub(crate) fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// Records that every slot from `slot` on is zero; the caller guarantees it.
    pub(crate) fn set_zero_from(&mut self, slot: usize) {
        self.zero_from = slot.min(self.storage.len());
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
        // The committed entry is unchanged until the pair completes; the held half reads back.
        assert_eq!(g.read(i).unwrap().into_bits(), 0xAAAA_AAAA_BBBB_BBBB);
        assert_eq!(g.read_half(i, false), Ok(0x1234_5001));
        assert_eq!(g.read_half(i, true), Ok(0xAAAA_AAAA));
        assert_eq!(
            g.pending_halves(),
            &[PendingHalf {
                value: 0x1234_5001,
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
        assert_eq!(g.read(i).unwrap().into_bits(), 0);
        assert_eq!(g.read_half(i, true), Ok(2));
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
    fn held_halves_save_and_restore_exactly() {
        let mut s = [0u64; 6];
        let mut g = GgttSlices::new(part(), &mut s).unwrap();
        g.write(GttIndex::new(0x101), GgttEntry::from_bits(0x7001))
            .unwrap();
        g.write_half(GttIndex::new(0x101), true, 0x1).unwrap();
        g.write_half(GttIndex::new(0x40000), false, 0x9001).unwrap();
        let mut buf = [0u8; 64];
        let n = g.save_pending(&mut buf).unwrap();
        assert_eq!(n, 8 + 2 * 12);
        assert_eq!(&buf[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&buf[8..20], &[0x01, 0x01, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        let mut s2 = [0u64; 6];
        let mut h = GgttSlices::new(part(), &mut s2).unwrap();
        h.write(GttIndex::new(0x101), GgttEntry::from_bits(0x7001))
            .unwrap();
        h.restore_pending(&buf[..n]).unwrap();
        assert_eq!(h.pending_halves(), g.pending_halves());
        // The partner completes the entry on the restored side exactly as on the original.
        assert_eq!(
            h.write_half(GttIndex::new(0x101), false, 0x7001),
            Ok(HalfWrite::Completed(GgttEntry::from_bits(0x1_0000_7001)))
        );
        // Rejections: bad count, out-of-range index, duplicate, bad flag, short.
        let mut bad = buf;
        bad[0] = 3;
        assert_eq!(
            validate_pending(&bad[..n], &part()),
            Err(GttError::Truncated)
        );
        let mut bad = buf;
        bad[8..12].copy_from_slice(&0x200u32.to_le_bytes());
        assert_eq!(
            validate_pending(&bad[..n], &part()),
            Err(GttError::OutOfRange)
        );
        let mut bad = buf;
        bad[20..24].copy_from_slice(&0x101u32.to_le_bytes());
        assert_eq!(
            validate_pending(&bad[..n], &part()),
            Err(GttError::OutOfRange)
        );
        let mut bad = buf;
        bad[12] = 2;
        assert_eq!(
            validate_pending(&bad[..n], &part()),
            Err(GttError::NonZeroReserved)
        );
        assert_eq!(
            validate_pending(&buf[..5], &part()),
            Err(GttError::Truncated)
        );
        assert_eq!(h.restore_pending(&bad[..n]), Err(GttError::NonZeroReserved));
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
