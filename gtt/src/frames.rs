//! Guest memory as a short list of frame spans, for the vectorized entry kernels.
//!
//! A real guest memory map has one to four regions (RAM below the PCI hole, RAM above 4 GiB,
//! ...). Checking a frame against a few spans with only subtractions, bitwise operations and
//! shifts is branch-free and uses only SSE2 operations on 64-bit lanes, so loops over entries
//! vectorize in a baseline build; a per-frame table lookup or a binary search does not.
//!
//! [`GuestFrames`]: which guest frames are RAM (the "inside guest memory" check of
//! [`crate::restore_runs`] and [`crate::validate_runs_in`]).

use crate::addr::{Gfn, PAGE_SHIFT};
use crate::entry::FRAME_MAX;
use crate::error::GttError;

/// The most spans a [`GuestFrames`] holds (after merging).
pub const MAX_SPANS: usize = 16;

/// Span ends must not exceed this, so that `frame - start` and `frame - end` for any 34-bit
/// frame carry the comparison in their sign bit.
const SPAN_LIMIT: u64 = 1 << 63;

/// Frame spans padded to `N` with empty spans, in the form the kernels use: bounds clamped
/// to `0..=2^34` (no entry frame lies beyond) and shifted to the address field's position,
/// so an entry masked with [`ADDR_MASK`](crate::entry::ADDR_MASK) is compared directly.
///
/// With `LOW`, the first span starts at frame 0 (as the first region of a PC guest's RAM
/// does) and its lower bound is not tested.
#[derive(Clone, Copy)]
pub(crate) struct Spans<const N: usize, const LOW: bool> {
    start: [u64; N],
    end: [u64; N],
}

/// One past the largest frame an entry can hold.
const ENTRY_FRAMES: u64 = FRAME_MAX + 1;

impl<const N: usize, const LOW: bool> Spans<N, LOW> {
    /// Bit 63 is set if the address field `addr` (an entry masked with [`ADDR_MASK`](crate::entry::ADDR_MASK)) lies in
    /// no span; the other bits mean nothing. Branch-free, only SSE2 operations on 64-bit lanes.
    ///
    /// `addr` and every bound are below 2^47, so bit 63 of `addr - s` (wrapping) is set
    /// exactly when `addr < s`, and bit 63 of `addr - e` exactly when `addr < e`: bit 63 of
    /// `(addr - s) | !(addr - e)` is set exactly when `addr` is outside `s..e`. An empty
    /// padding span (`s = e = 0`) is outside for every address.
    #[inline(always)]
    pub(crate) fn outside(&self, addr: u64) -> u64 {
        let mut out = u64::MAX;
        for (i, (&s, &e)) in self.start.iter().zip(&self.end).enumerate() {
            // `addr - 0` never has bit 63 set.
            let below = if LOW && i == 0 {
                0
            } else {
                addr.wrapping_sub(s)
            };
            out &= below | !addr.wrapping_sub(e);
        }
        out
    }

    fn from_pairs(pairs: &[(u64, u64)]) -> Self {
        let mut s = Self {
            start: [0; N],
            end: [0; N],
        };
        for ((dst_s, dst_e), &(a, b)) in s.start.iter_mut().zip(s.end.iter_mut()).zip(pairs) {
            *dst_s = a.min(ENTRY_FRAMES) << PAGE_SHIFT;
            *dst_e = b.min(ENTRY_FRAMES) << PAGE_SHIFT;
        }
        s
    }
}

/// The spans of a [`GuestFrames`] in one of the padded kernel forms, chosen by span count.
#[allow(
    clippy::large_enum_variant,
    reason = "a short-lived value on the stack, built once per call"
)]
pub(crate) enum SpanSet {
    One(Spans<1, false>),
    OneLow(Spans<1, true>),
    Two(Spans<2, false>),
    TwoLow(Spans<2, true>),
    Four(Spans<4, false>),
    All(Spans<MAX_SPANS, false>),
}

/// A set of guest frames: up to [`MAX_SPANS`] disjoint, sorted, non-adjacent spans.
///
/// Built from any list of `(first frame, count)` ranges (for example the regions of the
/// guest memory map); overlapping and adjacent ranges are merged, so the span list is the
/// shortest description of the same set.
///
/// ```
/// use vgpu_mig_gtt::{Gfn, frames::GuestFrames};
///
/// // RAM below 3 GiB and 1 GiB above 4 GiB.
/// let ram = GuestFrames::from_ranges([(Gfn::new(0), 0xC_0000), (Gfn::new(0x10_0000), 0x4_0000)])?;
/// assert!(ram.contains(Gfn::new(0xB_FFFF)));
/// assert!(!ram.contains(Gfn::new(0xC_0000)));
/// assert!(ram.contains(Gfn::new(0x13_FFFF)));
/// assert_eq!(ram.spans().len(), 2);
/// # Ok::<(), vgpu_mig_gtt::GttError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GuestFrames {
    /// `(start, end)` frame pairs, sorted, disjoint, non-adjacent; `len` used.
    spans: [(u64, u64); MAX_SPANS],
    len: usize,
}

impl GuestFrames {
    /// The empty set (no guest frame is RAM).
    pub const EMPTY: Self = Self {
        spans: [(0, 0); MAX_SPANS],
        len: 0,
    };

    /// The set of frames covered by `ranges`, each `(first frame, count)`, in any order.
    /// Ranges with a count of zero add nothing.
    ///
    /// # Errors
    /// [`GttError::RangeOverflow`] if a range ends beyond frame 2^63;
    /// [`GttError::TooManySpans`] if more than [`MAX_SPANS`] spans remain after merging.
    pub fn from_ranges<I>(ranges: I) -> Result<Self, GttError>
    where
        I: IntoIterator<Item = (Gfn, u64)>,
    {
        let mut set = Self::EMPTY;
        for (start, count) in ranges {
            let end = start
                .get()
                .checked_add(count)
                .filter(|&e| e <= SPAN_LIMIT)
                .ok_or(GttError::RangeOverflow)?;
            if count != 0 {
                set.insert(start.get(), end)?;
            }
        }
        Ok(set)
    }

    /// Adds `start..end` (non-empty), merging with every span it overlaps or touches.
    fn insert(&mut self, mut start: u64, mut end: u64) -> Result<(), GttError> {
        let mut out = [(0u64, 0u64); MAX_SPANS];
        let mut n = 0usize;
        let mut placed = false;
        for &(s, e) in self.spans() {
            if e < start {
                push(&mut out, &mut n, (s, e))?;
            } else if end < s {
                if !placed {
                    push(&mut out, &mut n, (start, end))?;
                    placed = true;
                }
                push(&mut out, &mut n, (s, e))?;
            } else {
                start = start.min(s);
                end = end.max(e);
            }
        }
        if !placed {
            push(&mut out, &mut n, (start, end))?;
        }
        self.spans = out;
        self.len = n;
        Ok(())
    }

    /// The spans as `(first frame, one past the last frame)` pairs, sorted, disjoint and
    /// non-adjacent.
    #[must_use]
    pub fn spans(&self) -> &[(u64, u64)] {
        self.spans.get(..self.len).unwrap_or(&[])
    }

    /// Whether `gfn` is in the set.
    #[must_use]
    pub fn contains(&self, gfn: Gfn) -> bool {
        let g = gfn.get();
        self.spans().iter().any(|&(s, e)| s <= g && g < e)
    }

    /// Whether every frame of `first ..= last` is in the set (`first <= last`).
    #[must_use]
    pub(crate) fn contains_all(&self, first: u64, last: u64) -> bool {
        // Spans are merged, so a stretch of consecutive RAM frames lies in one span.
        self.spans().iter().any(|&(s, e)| s <= first && last < e)
    }

    /// The padded kernel form with the fewest spans that holds this set.
    pub(crate) fn span_set(&self) -> SpanSet {
        let p = self.spans();
        let low = p.first().is_some_and(|&(s, _)| s == 0);
        match (p.len(), low) {
            (0 | 1, false) => SpanSet::One(Spans::from_pairs(p)),
            (1, true) => SpanSet::OneLow(Spans::from_pairs(p)),
            (2, false) => SpanSet::Two(Spans::from_pairs(p)),
            (2, true) => SpanSet::TwoLow(Spans::from_pairs(p)),
            (3 | 4, _) => SpanSet::Four(Spans::from_pairs(p)),
            _ => SpanSet::All(Spans::from_pairs(p)),
        }
    }
}

fn push<T>(out: &mut [T; MAX_SPANS], n: &mut usize, v: T) -> Result<(), GttError> {
    let slot = out.get_mut(*n).ok_or(GttError::TooManySpans)?;
    *slot = v;
    *n += 1;
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
    fn merging_and_limits() {
        let f = GuestFrames::from_ranges([
            (Gfn::new(10), 5),
            (Gfn::new(0), 3),
            (Gfn::new(3), 2),
            (Gfn::new(12), 10),
            (Gfn::new(40), 0),
        ])
        .unwrap();
        assert_eq!(f.spans(), &[(0, 5), (10, 22)]);
        assert!(f.contains(Gfn::new(4)) && !f.contains(Gfn::new(5)) && f.contains(Gfn::new(21)));
        assert!(!f.contains(Gfn::new(40)));
        assert_eq!(
            GuestFrames::from_ranges([(Gfn::new(u64::MAX), 2)]),
            Err(GttError::RangeOverflow)
        );
        let many = (0..17u64).map(|i| (Gfn::new(i * 2), 1));
        assert_eq!(GuestFrames::from_ranges(many), Err(GttError::TooManySpans));
        // Seventeen ranges that merge into one are fine.
        let touching = (0..17u64).map(|i| (Gfn::new(i), 1));
        assert_eq!(
            GuestFrames::from_ranges(touching).unwrap().spans(),
            &[(0, 17)]
        );
    }

    proptest! {
        #[test]
        fn spans_kernel_matches_contains(
            ranges in proptest::collection::vec((0u64..(1 << 35), 0u64..(1 << 33)), 0..18),
            frames in proptest::collection::vec(0u64..=FRAME_MAX, 1..40),
            low in proptest::option::of(1u64..(1 << 35)),
        ) {
            // Sometimes a range from frame 0 (the kernels' `LOW` form).
            let mut ranges = ranges;
            if let Some(n) = low {
                ranges.push((0, n));
            }
            let naive = |f: u64| ranges.iter().any(|&(a, n)| f >= a && f < a + n);
            let Ok(set) = GuestFrames::from_ranges(ranges.iter().map(|&(a, n)| (Gfn::new(a), n))) else {
                return Ok(());
            };
            // Spans are sorted, disjoint and non-adjacent.
            for w in set.spans().windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            let kernel = |f: u64| {
                let addr = f << PAGE_SHIFT;
                let out = match set.span_set() {
                    SpanSet::One(s) => s.outside(addr),
                    SpanSet::OneLow(s) => s.outside(addr),
                    SpanSet::Two(s) => s.outside(addr),
                    SpanSet::TwoLow(s) => s.outside(addr),
                    SpanSet::Four(s) => s.outside(addr),
                    SpanSet::All(s) => s.outside(addr),
                };
                out >> 63 == 0
            };
            for f in frames.iter().copied().chain(ranges.iter().flat_map(|&(a, n)| [a, a + n, a.wrapping_sub(1)])) {
                if f <= FRAME_MAX {
                    prop_assert_eq!(set.contains(Gfn::new(f)), naive(f));
                    prop_assert_eq!(kernel(f), naive(f));
                }
            }
        }
    }
}
