//! The per-entry kernels the fused paths share: branch-free checks (and copies) of blocks of
//! entries against the generation's allowed bits and the guest's frame spans, specialized for
//! the common span shapes.

use crate::addr::PAGE_SHIFT;
use crate::entry::ADDR_MASK;
pub(crate) use crate::frames::SpanSet;
use crate::frames::{GuestFrames, Spans};

/// Entries per block of the fused kernels ([`restore_runs`], [`validate_runs_in`]): 2 KiB
/// of payload and 2 KiB of table, so a checked block is still in L1 when it is copied.
pub(crate) const FUSED_BLOCK: usize = 256;

/// The address field of `e` for the span test. With `FULL` (the generation allows no bit
/// above the address field), `e` itself: an entry that passes the reserved-bit check has
/// nothing above bit 45 and only bits below 12 besides its address, which do not change how
/// it compares with page-aligned span bounds, and an entry that fails is rejected anyway.
#[inline(always)]
pub(crate) fn addr_of<const FULL: bool>(e: u64) -> u64 {
    if FULL { e } else { e & ADDR_MASK }
}

/// Whether `allowed` has no bit above the address field (the `FULL` kernels apply).
pub(crate) const fn full_kernel(allowed: u64) -> bool {
    allowed & !(ADDR_MASK | 0xFFF) == 0
}

/// Calls `$f::<N, LOW, FULL>(args.., &spans)` with the kernel form of `$frames` and
/// `FULL = full_kernel($allowed)`: specialized forms for one or two spans, generic ones
/// for more.
macro_rules! with_kernel {
    ($frames:expr, $allowed:expr, $f:ident($($arg:expr),*)) => {
        match ($frames.span_set(), full_kernel($allowed)) {
            (SpanSet::One(s), true) => $f::<1, false, true>($($arg,)* &s),
            (SpanSet::One(s), false) => $f::<1, false, false>($($arg,)* &s),
            (SpanSet::OneLow(s), true) => $f::<1, true, true>($($arg,)* &s),
            (SpanSet::OneLow(s), false) => $f::<1, true, false>($($arg,)* &s),
            (SpanSet::Two(s), true) => $f::<2, false, true>($($arg,)* &s),
            (SpanSet::Two(s), false) => $f::<2, false, false>($($arg,)* &s),
            (SpanSet::TwoLow(s), true) => $f::<2, true, true>($($arg,)* &s),
            (SpanSet::TwoLow(s), false) => $f::<2, true, false>($($arg,)* &s),
            (SpanSet::Four(s), _) => $f::<4, false, false>($($arg,)* &s),
            (SpanSet::All(s), _) => $f::<MAX_SPANS, false, false>($($arg,)* &s),
        }
    };
}

/// Nonzero if an entry of `entries` sets a bit outside `allowed` or is present with a frame
/// outside `spans`. Branch-free and free of bounds checks, so it vectorizes (SSE2).
#[inline(always)]
pub(crate) fn raw_bad<const N: usize, const LOW: bool, const FULL: bool>(
    entries: &[[u8; 8]],
    spans: &Spans<N, LOW>,
    allowed: u64,
) -> u64 {
    let mut bad = 0u64;
    for chunk in entries {
        let e = u64::from_le_bytes(*chunk);
        // `e << 63` is the present bit alone, at bit 63: the second term is at most bit 63,
        // set for a present entry outside the spans.
        bad |= (e & !allowed) | ((e << 63) & spans.outside(addr_of::<FULL>(e)));
    }
    bad
}

/// Copies `entries` into `dst` (as long) and returns [`raw_bad`] of them, in one pass.
#[inline(always)]
pub(crate) fn copy_checked<const N: usize, const LOW: bool, const FULL: bool>(
    entries: &[[u8; 8]],
    dst: &mut [u64],
    spans: &Spans<N, LOW>,
    allowed: u64,
) -> u64 {
    let mut bad = 0u64;
    for (chunk, d) in entries.iter().zip(dst) {
        let e = u64::from_le_bytes(*chunk);
        bad |= (e & !allowed) | ((e << 63) & spans.outside(addr_of::<FULL>(e)));
        // `e & allowed` is `e` for every entry that passes (a block with any other bit set
        // fails and is reset); storing it, not `e`, keeps the compiler from splitting the
        // loop into a memcpy call and a second pass over the entries.
        *d = e & allowed;
    }
    bad
}

/// Whether a LINEAR run with template `t` and `count` entries passes the entry checks.
pub(crate) fn linear_ok(t: u64, count: usize, frames: &GuestFrames, allowed: u64) -> bool {
    if t & !allowed != 0 {
        return false;
    }
    if t & 1 == 0 {
        return true;
    }
    let first = (t & ADDR_MASK) >> PAGE_SHIFT;
    // The parser checked that the last frame fits the address field.
    let last = first.saturating_add(u64::try_from(count.saturating_sub(1)).unwrap_or(u64::MAX));
    frames.contains_all(first, last)
}

pub(crate) use with_kernel;
