//! Rebasing runs of entries: a linear frame shift, or a table-driven frame translation.
//! Only present entries change; all other bits of an entry are kept.

use crate::addr::{Gfn, Hfn, PAGE_SHIFT};
use crate::entry::{ADDR_MASK, GgttEntry};
use crate::error::GttError;

/// Adds `delta` frames to the address field of every present entry.
///
/// Branchless over the entries (a check pass, then an update pass), so it vectorizes.
///
/// # Errors
/// [`GttError::FrameTooLarge`] if any present entry's frame would leave
/// `0..=`[`FRAME_MAX`](crate::entry::FRAME_MAX); then no entry is changed.
pub fn rebase_linear(entries: &mut [u64], delta: i64) -> Result<(), GttError> {
    // Two's complement: adding `delta as u64` with wrap-around is exact addition, and the
    // result is in range iff it is below 2^34.
    let d = delta.cast_unsigned();
    let bad = entries.iter().fold(0u64, |acc, &e| {
        let frame = (e & ADDR_MASK) >> PAGE_SHIFT;
        acc | (u64::from(frame.wrapping_add(d) >> 34 != 0) & e)
    });
    if bad & 1 != 0 {
        return Err(GttError::FrameTooLarge);
    }
    let shift = d << PAGE_SHIFT;
    for e in entries.iter_mut() {
        let present = 0u64.wrapping_sub(*e & 1);
        let moved = (*e & !ADDR_MASK) | (e.wrapping_add(shift) & ADDR_MASK);
        *e = (moved & present) | (*e & !present);
    }
    Ok(())
}

/// Replaces the frame of every present entry by `map(frame)`, e.g. guest frame to host
/// frame when building shadow entries.
///
/// # Errors
/// [`GttError::Unmapped`] if `map` returns `None`, [`GttError::FrameTooLarge`] if it returns
/// a frame above [`FRAME_MAX`](crate::entry::FRAME_MAX). Entries before the failing one have been translated; the
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;
    use crate::entry::FRAME_MAX;
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

    proptest::proptest! {
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
