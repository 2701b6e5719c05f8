//! Rebasing runs of entries: a linear frame shift, or a table-driven frame translation.
//! Only present entries change; all other bits of an entry are kept.

use crate::addr::{Gfn, Hfn, PAGE_SHIFT};
use crate::entry::{ADDR_MASK, FRAME_MAX, GgttEntry};
use crate::error::GttError;
use crate::frames::{FrameMap, ShiftSet, Shifts};

/// Adds `delta` frames to the address field of every present entry.
///
/// Branchless over the entries (one update pass that also flags overflow), so it vectorizes.
///
/// # Errors
/// [`GttError::FrameTooLarge`] if any present entry's frame would leave
/// `0..=`[`FRAME_MAX`]; then no entry is changed.
pub fn rebase_linear(entries: &mut [u64], delta: i64) -> Result<(), GttError> {
    // Entry `e` is `high · 2^46 + frame · 2^12 + low`. For |delta| <= FRAME_MAX, adding
    // `delta << 12` (wrapping) to a whole present entry changes bits 63:46 exactly when the
    // frame leaves 0..=FRAME_MAX: the true sum `frame · 2^12 + (delta << 12)` lies in
    // (-2^46, 2^47), so leaving 0..2^46 moves `high` by ±1 (mod 2^18), which is never zero.
    // So one pass stores `e + (shift & present)` and ORs `old ^ new` into an accumulator;
    // bits 63:46 of the accumulator flag a failure. Only and, sub, add, xor, or on 64-bit
    // lanes: SSE2 has them all, so the loop vectorizes in a baseline build. Wrapping
    // addition is invertible, so a failing block and the blocks before it are restored
    // exactly by subtracting the same shift.
    if delta.unsigned_abs() > FRAME_MAX {
        // Every present frame would leave the field; nothing changes either way.
        return if entries.iter().all(|&e| e & 1 == 0) {
            Ok(())
        } else {
            Err(GttError::FrameTooLarge)
        };
    }
    let shift = delta.cast_unsigned() << PAGE_SHIFT;
    let mut done = 0usize;
    for block in entries.chunks_mut(REBASE_BLOCK) {
        let mut changed = 0u64;
        for e in block.iter_mut() {
            let old = *e;
            let new = old.wrapping_add(shift & (old & 1).wrapping_neg());
            changed |= old ^ new;
            *e = new;
        }
        done += block.len();
        if changed & !ADDR_MASK != 0 {
            let undo = shift.wrapping_neg();
            for e in entries.iter_mut().take(done) {
                *e = e.wrapping_add(undo & (*e & 1).wrapping_neg());
            }
            return Err(GttError::FrameTooLarge);
        }
    }
    Ok(())
}

/// Entries per block of [`rebase_linear`] (4 KiB).
const REBASE_BLOCK: usize = 512;

/// Replaces the frame of every present entry by `map(frame)`, e.g. guest frame to host
/// frame when building shadow entries.
///
/// # Errors
/// [`GttError::Unmapped`] if `map` returns `None`, [`GttError::FrameTooLarge`] if it returns
/// a frame above [`FRAME_MAX`]. Entries before the failing one have been translated; the
/// failing one and all after it are unchanged.
pub fn translate_frames(
    entries: &mut [u64],
    map: &dyn Fn(Gfn) -> Option<Hfn>,
) -> Result<(), GttError> {
    for e in entries.iter_mut() {
        let entry = GgttEntry::from_bits(*e);
        if !entry.is_present() {
            continue;
        }
        let h = map(entry.frame()).ok_or(GttError::Unmapped)?;
        *e = entry.with_host_frame(h)?.into_bits();
    }
    Ok(())
}

/// Replaces the frame of every present entry by `table[frame - base]`: a dense guest frame
/// to host frame map covering guest frames `base .. base + table.len()`. A table value above
/// [`FRAME_MAX`] (for example `u64::MAX`) marks a guest frame
/// without a host mapping. This is the fast form of [`translate_frames`] (no call per entry).
///
/// # Errors
/// [`GttError::Unmapped`] if a present entry's frame is outside the table or its table value
/// marks no mapping. Entries before the failing one have been translated; the failing one and
/// all after it are unchanged.
pub fn translate_frames_table(
    entries: &mut [u64],
    base: Gfn,
    table: &[u64],
) -> Result<(), GttError> {
    let base = base.get();
    for e in entries.iter_mut() {
        let x = *e;
        if x & 1 == 0 {
            continue;
        }
        let off = ((x & ADDR_MASK) >> PAGE_SHIFT).wrapping_sub(base);
        let h = usize::try_from(off)
            .ok()
            .and_then(|i| table.get(i))
            .copied()
            .ok_or(GttError::Unmapped)?;
        if h > FRAME_MAX {
            return Err(GttError::Unmapped);
        }
        *e = (x & !ADDR_MASK) | (h << PAGE_SHIFT);
    }
    Ok(())
}

/// Entries per block of [`translate_frames_map`] (4 KiB): checked, then translated while
/// still in L1.
const TRANSLATE_BLOCK: usize = 512;

/// Replaces the frame of every present entry by its host frame under `map`: the fast form of
/// [`translate_frames`] for guest memory backed by a few contiguous host blocks. Each entry
/// costs a few subtractions and bitwise operations per map segment, with no branch and no
/// table load, so the loop vectorizes; [`translate_frames_table`] remains for fragmented
/// backings.
///
/// Same result as `translate_frames(entries, &|g| map.get(g))`, including which entries
/// have changed on error.
///
/// # Errors
/// [`GttError::Unmapped`] if a present entry's frame is in no segment of `map`. Entries
/// before the failing one have been translated; the failing one and all after it are
/// unchanged.
pub fn translate_frames_map(entries: &mut [u64], map: &FrameMap) -> Result<(), GttError> {
    match map.shift_set() {
        ShiftSet::One(s) => translate_shifts(entries, &s),
        ShiftSet::Two(s) => translate_shifts(entries, &s),
        ShiftSet::Four(s) => translate_shifts(entries, &s),
        ShiftSet::All(s) => translate_shifts(entries, &s),
    }
}

fn translate_shifts<const N: usize>(
    entries: &mut [u64],
    shifts: &Shifts<N>,
) -> Result<(), GttError> {
    let frame = |e: u64| e & ADDR_MASK;
    let mut staging = [0u64; TRANSLATE_BLOCK];
    for block in entries.chunks_mut(TRANSLATE_BLOCK) {
        // One pass: translate into the staging block (in L1) and note whether any present
        // entry is outside every segment. Every present entry inside a segment has a host
        // frame that fits the address field ([`FrameMap::new`] checked it), so adding the
        // shift cannot carry out of the field.
        let mut miss = 0u64;
        for (t, &e) in staging.iter_mut().zip(block.iter()) {
            let (add, outside) = shifts.lookup(frame(e));
            let present = (e & 1).wrapping_neg();
            miss |= present & outside;
            *t = e.wrapping_add(add & present);
        }
        if miss >> 63 == 0 {
            if let Some(t) = staging.get(..block.len()) {
                block.copy_from_slice(t);
            }
            continue;
        }
        // Translate up to the failing entry, exactly.
        for e in block.iter_mut() {
            let (add, outside) = shifts.lookup(frame(*e));
            if *e & 1 != 0 {
                if outside >> 63 != 0 {
                    return Err(GttError::Unmapped);
                }
                *e = e.wrapping_add(add);
            }
        }
        // Not reached: `miss` is set only by a present entry outside every segment.
        return Err(GttError::Unmapped);
    }
    Ok(())
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

    #[test]
    fn linear_shifts_present_only() {
        let mut t = [0x1234_5001, 0x1234_6000, 0x8000_0000_0000_109B, 0];
        rebase_linear(&mut t, 0x10).unwrap();
        assert_eq!(t, [0x1235_5001, 0x1234_6000, 0x8000_0000_0001_109B, 0]);
        rebase_linear(&mut t, -0x11).unwrap();
        assert_eq!(t, [0x1234_4001, 0x1234_6000, 0x8000_0000_0000_009B, 0]);
        assert_eq!(rebase_linear(&mut t, -1), Err(GttError::FrameTooLarge));
        assert_eq!(t[2], 0x8000_0000_0000_009B);
        let mut top = [(FRAME_MAX << 12) | 1];
        assert_eq!(rebase_linear(&mut top, 1), Err(GttError::FrameTooLarge));
        assert_eq!(
            rebase_linear(&mut top, i64::MIN),
            Err(GttError::FrameTooLarge)
        );
        assert_eq!(
            rebase_linear(&mut top, i64::MAX),
            Err(GttError::FrameTooLarge)
        );
        rebase_linear(&mut top, -(FRAME_MAX.cast_signed())).unwrap();
        assert_eq!(top, [1]);
        // A shift larger than the field: fine while nothing is present, else nothing changes.
        let mut absent = [0x1234_5000u64, 0x8000_0000_0000_0002, 0];
        for delta in [i64::MIN, i64::MAX, 1 << 34, -(1 << 34)] {
            assert_eq!(rebase_linear(&mut absent, delta), Ok(()));
            assert_eq!(absent, [0x1234_5000, 0x8000_0000_0000_0002, 0]);
        }
        let mut one = [0x1234_5000u64, 0x1_0001];
        assert_eq!(
            rebase_linear(&mut one, 1 << 34),
            Err(GttError::FrameTooLarge)
        );
        assert_eq!(one, [0x1234_5000, 0x1_0001]);
        // The largest in-range shifts reach both ends of the field exactly.
        let mut ends = [0x1001u64, (FRAME_MAX << 12) | 0x9B];
        assert_eq!(
            rebase_linear(&mut ends, FRAME_MAX.cast_signed()),
            Err(GttError::FrameTooLarge)
        );
        assert_eq!(ends, [0x1001, (FRAME_MAX << 12) | 0x9B]);
        let mut low = [0x1001u64];
        rebase_linear(&mut low, (FRAME_MAX - 1).cast_signed()).unwrap();
        assert_eq!(low, [(FRAME_MAX << 12) | 1]);
    }

    #[test]
    fn translate_table() {
        let mut t = [0x5001u64, 0x6000, 0x7003];
        translate_frames(&mut t, &|g: Gfn| Some(Hfn::new(g.get() + 0x100))).unwrap();
        assert_eq!(t, [0x10_5001, 0x6000, 0x10_7003]);
        let mut t = [0x5001u64, 0x6001];
        let r = translate_frames(&mut t, &|g: Gfn| (g.get() == 5).then_some(Hfn::new(9)));
        assert_eq!(r, Err(GttError::Unmapped));
        assert_eq!(t, [0x9001, 0x6001]);
        let mut t = [0x5001u64];
        let r = translate_frames(&mut t, &|_| Some(Hfn::new(FRAME_MAX + 1)));
        assert_eq!(r, Err(GttError::FrameTooLarge));
        assert_eq!(t, [0x5001]);
    }

    #[test]
    fn multi_block_failures() {
        // Blocks 0 and 1 are shifted, block 2 fails: all are restored exactly.
        let orig: std::vec::Vec<u64> = (0..1200u64).map(|i| (i << 12) | (i & 1) | 0x80).collect();
        let mut t = orig.clone();
        t[1100] = (FRAME_MAX << 12) | 1;
        let saved = t.clone();
        assert_eq!(rebase_linear(&mut t, 1), Err(GttError::FrameTooLarge));
        assert_eq!(t, saved);
        let mut t = orig.clone();
        rebase_linear(&mut t, 5).unwrap();
        assert_eq!(t[1199], (1204 << 12) | 1 | 0x80);
        assert_eq!(t[1198], (1198 << 12) | 0x80);
        // Table: a miss in the third block leaves blocks 0 and 1 translated, the rest not.
        let table: std::vec::Vec<u64> = (0..1200u64)
            .map(|i| if i == 1101 { u64::MAX } else { i + 7 })
            .collect();
        let mut t = orig.clone();
        assert_eq!(
            translate_frames_table(&mut t, Gfn::new(0), &table),
            Err(GttError::Unmapped)
        );
        assert_eq!(t[1099], (1106 << 12) | 1 | 0x80);
        assert_eq!(t[1101], (1101 << 12) | 1 | 0x80);
        assert_eq!(t[1199], (1199 << 12) | 1 | 0x80);
        assert_eq!(t[1023], (1030 << 12) | 1 | 0x80);
    }

    #[test]
    fn translate_dense_table() {
        // Guest frames 0x10..0x14 map to 0x900, 0x901, none, 0x3_FFFF_FFFF.
        let table = [0x900u64, 0x901, u64::MAX, FRAME_MAX];
        let mut t = [0x1_0001u64, 0x1_1083, 0x5000, 0x8000_0000_0001_3003];
        translate_frames_table(&mut t, Gfn::new(0x10), &table).unwrap();
        assert_eq!(t, [0x90_0001, 0x90_1083, 0x5000, 0x8000_3FFF_FFFF_F003]);
        let mut t = [0x1_0001u64, 0x1_2001, 0x1_0001];
        assert_eq!(
            translate_frames_table(&mut t, Gfn::new(0x10), &table),
            Err(GttError::Unmapped)
        );
        assert_eq!(t, [0x90_0001, 0x1_2001, 0x1_0001]);
        // Below the base (wraps to a huge offset) and past the end.
        for bad in [0xF001u64, 0x1_4001] {
            let mut t = [bad];
            assert_eq!(
                translate_frames_table(&mut t, Gfn::new(0x10), &table),
                Err(GttError::Unmapped)
            );
            assert_eq!(t, [bad]);
        }
    }

    proptest::proptest! {
        #[test]
        fn table_matches_closure(entries in proptest::collection::vec(any::<u64>(), 0..64),
                                 table in proptest::collection::vec(0u64..(1 << 35), 1..32),
                                 base in 0u64..8) {
            let entries: std::vec::Vec<u64> = entries
                .iter()
                .map(|e| (e & !ADDR_MASK) | ((base + (e >> 20) % 40) << PAGE_SHIFT))
                .collect();
            let mut a = entries.clone();
            let mut b = entries.clone();
            let ra = translate_frames_table(&mut a, Gfn::new(base), &table);
            let map = |g: Gfn| {
                let h = *table.get(usize::try_from(g.get().checked_sub(base)?).ok()?)?;
                (h <= FRAME_MAX).then_some(Hfn::new(h))
            };
            let rb = translate_frames(&mut b, &map);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn map_matches_closure(
            entries in proptest::collection::vec(any::<u64>(), 0..1200),
            segs in proptest::collection::vec((0u64..0x60, 1u64..0x30, 0u64..(1 << 34)), 0..6),
            bad_at in proptest::option::of(any::<usize>()),
        ) {
            // Entry frames in 0..0x80 (some in no segment); segments that do not fit are
            // dropped, like a caller building a map would.
            let mut list: std::vec::Vec<(Gfn, u64, Hfn)> = std::vec::Vec::new();
            for &(g, n, h) in &segs {
                let mut trial = list.clone();
                trial.push((Gfn::new(g), n, Hfn::new(h)));
                if FrameMap::new(&trial).is_ok() {
                    list = trial;
                }
            }
            let map = FrameMap::new(&list).unwrap();
            let mut entries: std::vec::Vec<u64> = entries
                .iter()
                .map(|e| (e & !ADDR_MASK) | (((e >> 20) % 0x80) << PAGE_SHIFT))
                .collect();
            // Mostly mapped frames, so that long stretches translate and a miss can come late.
            if let Some(&(g, _, _)) = list.first() {
                for e in entries.iter_mut().filter(|e| (**e >> 8) % 8 != 0) {
                    *e = (*e & !ADDR_MASK) | (g.get() << PAGE_SHIFT);
                }
            }
            if let (Some(at), false) = (bad_at, entries.is_empty()) {
                let n = entries.len();
                entries[at % n] = (0x7F << PAGE_SHIFT) | 1;
            }
            let mut a = entries.clone();
            let mut b = entries.clone();
            let ra = translate_frames_map(&mut a, &map);
            let rb = translate_frames(&mut b, &|g| map.get(g));
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn linear_matches_per_entry(entries in proptest::collection::vec(any::<u64>(), 0..64),
                                    delta in -(1i64 << 35)..(1i64 << 35)) {
            let mut t = entries.clone();
            let r = rebase_linear(&mut t, delta);
            let mut expect = entries.clone();
            let mut ok = true;
            for e in &mut expect {
                let x = GgttEntry::from_bits(*e);
                if x.is_present() {
                    let f = i128::from(x.addr_frame()) + i128::from(delta);
                    if f < 0 || f > i128::from(FRAME_MAX) { ok = false; continue; }
                    *e = x.with_frame(Gfn::new(u64::try_from(f).unwrap())).unwrap().into_bits();
                }
            }
            if ok {
                prop_assert_eq!(r, Ok(()));
                prop_assert_eq!(t, expect);
            } else {
                prop_assert_eq!(r, Err(GttError::FrameTooLarge));
                prop_assert_eq!(t, entries);
            }
        }
    }
}
