//! Guest memory as a short list of frame spans, for the vectorized entry kernels.
//!
//! A real guest memory map has one to four regions (RAM below the PCI hole, RAM above 4 GiB,
//! ...). Checking a frame against a few spans with only subtractions, bitwise operations and
//! shifts is branch-free and uses only SSE2 operations on 64-bit lanes, so loops over entries
//! vectorize in a baseline build; a per-frame table lookup or a binary search does not.
//!
//! * [`GuestFrames`]: which guest frames are RAM (the "inside guest memory" check of
//!   [`crate::restore_runs`] and [`crate::validate_runs_in`]).
//! * [`FrameMap`]: guest frames to host frames, linear inside each span
//!   ([`crate::translate_frames_map`]).

use crate::addr::{Gfn, Hfn, PAGE_SHIFT};
use crate::entry::FRAME_MAX;
use crate::error::GttError;

/// The most spans a [`GuestFrames`] or [`FrameMap`] holds (after merging).
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

/// A guest frame to host frame map that is linear inside each of up to [`MAX_SPANS`]
/// guest spans: guest frame `g` in span `i` maps to `host[i] + (g - guest_start[i])`.
///
/// The fast form of the translation when guest RAM is backed by a few contiguous host
/// blocks; [`crate::translate_frames_table`] remains for fragmented backings.
///
/// ```
/// use vgpu_mig_gtt::{Gfn, Hfn, frames::FrameMap, translate_frames_map};
///
/// // Guest frames 0..0x100 at host 0x5000, guest 0x1000..0x1100 at host 0x100.
/// let map = FrameMap::new(&[
///     (Gfn::new(0), 0x100, Hfn::new(0x5000)),
///     (Gfn::new(0x1000), 0x100, Hfn::new(0x100)),
/// ])?;
/// let mut entries = [0x1_0001u64, 0x100_1003, 0x2000];
/// translate_frames_map(&mut entries, &map)?;
/// assert_eq!(entries, [0x501_0001, 0x10_1003, 0x2000]);
/// # Ok::<(), vgpu_mig_gtt::GttError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameMap {
    /// `(guest start, guest end, host start)`, sorted by guest start, disjoint; `len` used.
    segs: [(u64, u64, u64); MAX_SPANS],
    len: usize,
}

impl FrameMap {
    /// A map of `segments`, each `(first guest frame, count, first host frame)`, in any
    /// order. Segments with a count of zero add nothing.
    ///
    /// # Errors
    /// [`GttError::RangeOverflow`] if a guest range ends beyond frame 2^63;
    /// [`GttError::FrameTooLarge`] if a host range ends beyond [`FRAME_MAX`];
    /// [`GttError::Overlap`] if two guest ranges overlap; [`GttError::TooManySpans`] if there
    /// are more than [`MAX_SPANS`] non-empty segments.
    pub fn new(segments: &[(Gfn, u64, Hfn)]) -> Result<Self, GttError> {
        let mut map = Self {
            segs: [(0, 0, 0); MAX_SPANS],
            len: 0,
        };
        for &(g, count, h) in segments {
            if count == 0 {
                continue;
            }
            let end = g
                .get()
                .checked_add(count)
                .filter(|&e| e <= SPAN_LIMIT)
                .ok_or(GttError::RangeOverflow)?;
            if h.get().checked_add(count - 1).is_none_or(|l| l > FRAME_MAX) {
                return Err(GttError::FrameTooLarge);
            }
            let at = map.segs().partition_point(|&(s, _, _)| s < g.get());
            let before = at.checked_sub(1).and_then(|i| map.segs().get(i));
            let after = map.segs().get(at);
            if before.is_some_and(|&(_, e, _)| e > g.get())
                || after.is_some_and(|&(s, _, _)| s < end)
            {
                return Err(GttError::Overlap);
            }
            if map.len >= MAX_SPANS {
                return Err(GttError::TooManySpans);
            }
            let tail = map
                .segs
                .get_mut(at..=map.len)
                .ok_or(GttError::TooManySpans)?;
            tail.rotate_right(1);
            if let Some(first) = tail.first_mut() {
                *first = (g.get(), end, h.get());
            }
            map.len += 1;
        }
        Ok(map)
    }

    /// The segments as `(first guest frame, one past the last guest frame, first host frame)`,
    /// sorted by guest frame.
    #[must_use]
    pub fn segments(&self) -> &[(u64, u64, u64)] {
        self.segs.get(..self.len).unwrap_or(&[])
    }

    fn segs(&self) -> &[(u64, u64, u64)] {
        self.segments()
    }

    /// The host frame of `gfn`, or `None` if no segment holds it.
    #[must_use]
    pub fn get(&self, gfn: Gfn) -> Option<Hfn> {
        let g = gfn.get();
        self.segments()
            .iter()
            .find(|&&(s, e, _)| s <= g && g < e)
            .map(|&(s, _, h)| Hfn::new(h + (g - s)))
    }

    /// The padded kernel form with the fewest segments that holds this map.
    pub(crate) fn shift_set(&self) -> ShiftSet {
        let p = self.segments();
        match p.len() {
            0 | 1 => ShiftSet::One(Shifts::from_segs(p)),
            2 => ShiftSet::Two(Shifts::from_segs(p)),
            3 | 4 => ShiftSet::Four(Shifts::from_segs(p)),
            _ => ShiftSet::All(Shifts::from_segs(p)),
        }
    }
}

/// Frame spans with the entry-value shift of each, padded to `N` with empty spans.
#[derive(Clone, Copy)]
pub(crate) struct Shifts<const N: usize> {
    start: [u64; N],
    end: [u64; N],
    /// `(host - guest) << PAGE_SHIFT`, wrapping.
    shift: [u64; N],
}

impl<const N: usize> Shifts<N> {
    fn from_segs(segs: &[(u64, u64, u64)]) -> Self {
        let mut s = Self {
            start: [0; N],
            end: [0; N],
            shift: [0; N],
        };
        for (i, &(g, e, h)) in segs.iter().enumerate().take(N) {
            if let (Some(a), Some(b), Some(c)) =
                (s.start.get_mut(i), s.end.get_mut(i), s.shift.get_mut(i))
            {
                // A segment clamped to entry frames maps the same entries: its host frames
                // stay consecutive from `h`.
                *a = g.min(ENTRY_FRAMES) << PAGE_SHIFT;
                *b = e.min(ENTRY_FRAMES) << PAGE_SHIFT;
                *c = h.wrapping_sub(g) << PAGE_SHIFT;
            }
        }
        s
    }

    /// `(shift, outside)` for the address field `addr` (an entry masked with
    /// [`ADDR_MASK`](crate::entry::ADDR_MASK)): the value to add to the entry, and bit 63 set if `addr` lies in no
    /// span (then the shift is zero). Branch-free; see [`Spans::outside`] for the sign-bit
    /// test.
    #[inline(always)]
    pub(crate) fn lookup(&self, addr: u64) -> (u64, u64) {
        let mut out = u64::MAX;
        let mut add = 0u64;
        for ((&s, &e), &d) in self.start.iter().zip(&self.end).zip(&self.shift) {
            let o = addr.wrapping_sub(s) | !addr.wrapping_sub(e);
            out &= o;
            add |= d & !((o.cast_signed() >> 63).cast_unsigned());
        }
        (add, out)
    }
}

/// The segments of a [`FrameMap`] in one of the padded kernel forms.
#[allow(
    clippy::large_enum_variant,
    reason = "a short-lived value on the stack, built once per call"
)]
pub(crate) enum ShiftSet {
    One(Shifts<1>),
    Two(Shifts<2>),
    Four(Shifts<4>),
    All(Shifts<MAX_SPANS>),
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
    use std::vec::Vec;

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

    #[test]
    fn frame_map_rules() {
        let m = FrameMap::new(&[
            (Gfn::new(0x100), 0x10, Hfn::new(0)),
            (Gfn::new(0), 0x100, Hfn::new(0x1000)),
            (Gfn::new(0x200), 0, Hfn::new(0)),
        ])
        .unwrap();
        assert_eq!(m.segments(), &[(0, 0x100, 0x1000), (0x100, 0x110, 0)]);
        assert_eq!(m.get(Gfn::new(0xFF)), Some(Hfn::new(0x10FF)));
        assert_eq!(m.get(Gfn::new(0x10F)), Some(Hfn::new(0xF)));
        assert_eq!(m.get(Gfn::new(0x110)), None);
        assert_eq!(
            FrameMap::new(&[(Gfn::new(0), 4, Hfn::new(0)), (Gfn::new(3), 4, Hfn::new(9))]),
            Err(GttError::Overlap)
        );
        assert_eq!(
            FrameMap::new(&[(Gfn::new(0), 2, Hfn::new(FRAME_MAX))]),
            Err(GttError::FrameTooLarge)
        );
        assert!(FrameMap::new(&[(Gfn::new(0), 1, Hfn::new(FRAME_MAX))]).is_ok());
        let many: Vec<_> = (0..17u64).map(|i| (Gfn::new(i), 1, Hfn::new(0))).collect();
        assert_eq!(FrameMap::new(&many), Err(GttError::TooManySpans));
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
