//! XOR deltas of pages: the data of a [`PageEncoding::DELTA`](crate::PageEncoding::DELTA) page.
//!
//! A delta is a sequence of segments, back to back: `skip: u16`, `n: u16` (≥ 1), then `n` bytes.
//! Starting at page offset 0, each segment skips `skip` unchanged bytes, then XORs its `n` bytes
//! into the page; the offset after a segment is `offset + skip + n` and never exceeds 4096. A delta
//! of zero segments (length 0) leaves the page unchanged. A writer sends a delta only when it is
//! shorter than the page; a reader rejects a delta longer than 4096 bytes.

use crate::error::PageRunError;
use crate::pages::PAGE_SIZE;

/// Bytes of a segment header.
pub const SEGMENT_HEADER: usize = 4;
/// Longest delta a reader accepts.
pub const MAX_DELTA_LEN: usize = PAGE_SIZE;

/// Equal bytes shorter than this inside a changed stretch are carried in the segment rather than
/// starting a new one (a new segment costs its 4-byte header).
const MERGE_GAP: usize = SEGMENT_HEADER;

/// Encode `new` as a delta against `old` into `out`. Returns the delta's length, or `None` when it
/// does not fit `out` (size `out` to the largest delta worth sending, for example 2 KiB).
pub fn encode(old: &[u8; PAGE_SIZE], new: &[u8; PAGE_SIZE], out: &mut [u8]) -> Option<usize> {
    let mut len = 0usize;
    let mut prev_end = 0usize;
    let mut i = 0usize;
    while i < PAGE_SIZE {
        // Skip equal bytes, eight at a time.
        while i + 8 <= PAGE_SIZE && word(old, i) == word(new, i) {
            i += 8;
        }
        while i < PAGE_SIZE && old.get(i) == new.get(i) {
            i += 1;
        }
        if i >= PAGE_SIZE {
            break;
        }
        let start = i;
        let mut end = i;
        // The most data this segment may carry and still fit `out`: a page that differs
        // throughout is given up on after that much rather than scanned to its end (the content
        // tracker tries deltas of pages rewritten whole, as a 3D workload's render targets are).
        let room = out.len().saturating_sub(len + SEGMENT_HEADER);
        // Extend over differing bytes and short equal gaps.
        let mut j = i;
        while j < PAGE_SIZE {
            if all_differ(old, new, j) {
                // Eight differing bytes at once (the same result as one by one).
                end = j + 8;
                if end - start > room {
                    return None;
                }
                j += 8;
                continue;
            }
            if old.get(j) != new.get(j) {
                end = j + 1;
                if end - start > room {
                    return None;
                }
                j += 1;
            } else if j - end < MERGE_GAP {
                j += 1;
            } else {
                break;
            }
        }
        // A segment's n is a u16: split very long stretches (only possible in theory: n ≤ 4096).
        let n = end - start;
        let skip = start - prev_end;
        let hdr_at = len;
        let data_at = len + SEGMENT_HEADER;
        let seg_end = data_at + n;
        let dst = out.get_mut(hdr_at..seg_end)?;
        let (hdr, data) = dst.split_at_mut(SEGMENT_HEADER);
        let skip16 = u16::try_from(skip).ok()?;
        let n16 = u16::try_from(n).ok()?;
        hdr.copy_from_slice(&[skip16.to_le_bytes(), n16.to_le_bytes()].concat_bytes());
        for (k, d) in data.iter_mut().enumerate() {
            *d =
                old.get(start + k).copied().unwrap_or(0) ^ new.get(start + k).copied().unwrap_or(0);
        }
        len = seg_end;
        prev_end = end;
        i = end;
    }
    Some(len)
}

fn word(p: &[u8; PAGE_SIZE], i: usize) -> Option<&[u8]> {
    p.get(i..i + 8)
}

/// Whether the eight bytes at `i` differ between `old` and `new`, every one of them (false past
/// the page's end).
fn all_differ(old: &[u8; PAGE_SIZE], new: &[u8; PAGE_SIZE], i: usize) -> bool {
    let le = |p| {
        word(p, i)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(a), Some(b)) = (le(old), le(new)) else {
        return false;
    };
    let x = a ^ b;
    // No zero byte in `x`: the classic test (a zero byte borrows into its top bit).
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    x.wrapping_sub(LOW) & !x & HIGH == 0
}

trait ConcatBytes {
    fn concat_bytes(&self) -> [u8; 4];
}

impl ConcatBytes for [[u8; 2]; 2] {
    fn concat_bytes(&self) -> [u8; 4] {
        let [[a, b], [c, d]] = *self;
        [a, b, c, d]
    }
}

/// Apply a whole delta to `page`. Checks every segment first; on error the page is unchanged.
///
/// # Errors
/// [`PageRunError::BadDelta`] for a delta longer than [`MAX_DELTA_LEN`], a truncated segment, a
/// segment of no bytes or one that leaves the page.
pub fn apply(page: &mut [u8; PAGE_SIZE], delta: &[u8]) -> Result<(), PageRunError> {
    check(delta)?;
    for (off, bytes) in (Segments {
        rest: delta,
        off: 0,
    }) {
        for (k, b) in bytes.iter().enumerate() {
            if let Some(p) = page.get_mut(off + k) {
                *p ^= b;
            }
        }
    }
    Ok(())
}

/// Check a whole delta without applying it.
///
/// # Errors
/// As [`apply`].
pub fn check(delta: &[u8]) -> Result<(), PageRunError> {
    if delta.len() > MAX_DELTA_LEN {
        return Err(PageRunError::BadDelta);
    }
    let mut rest = delta;
    let mut off = 0usize;
    while !rest.is_empty() {
        let (h, r) = rest
            .split_first_chunk::<SEGMENT_HEADER>()
            .ok_or(PageRunError::BadDelta)?;
        let [s0, s1, n0, n1] = *h;
        let (skip, n) = (
            usize::from(u16::from_le_bytes([s0, s1])),
            usize::from(u16::from_le_bytes([n0, n1])),
        );
        off = segment_end(off, skip, n)?;
        rest = r.get(n..).ok_or(PageRunError::BadDelta)?;
    }
    Ok(())
}

/// The page offset after a segment starting at `off` with `skip` and `n`, or an error when the
/// segment is empty or leaves the page. The decoder applies the same rule piecewise.
pub(crate) fn segment_end(off: usize, skip: usize, n: usize) -> Result<usize, PageRunError> {
    let end = off
        .checked_add(skip)
        .and_then(|x| x.checked_add(n))
        .ok_or(PageRunError::BadDelta)?;
    if n == 0 || end > PAGE_SIZE {
        return Err(PageRunError::BadDelta);
    }
    Ok(end)
}

/// Iterator over the (page offset, XOR bytes) of a checked delta.
struct Segments<'d> {
    rest: &'d [u8],
    off: usize,
}

impl<'d> Iterator for Segments<'d> {
    type Item = (usize, &'d [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (h, r) = self.rest.split_first_chunk::<SEGMENT_HEADER>()?;
        let [s0, s1, n0, n1] = *h;
        let skip = usize::from(u16::from_le_bytes([s0, s1]));
        let n = usize::from(u16::from_le_bytes([n0, n1]));
        let (bytes, rest) = r.split_at_checked(n)?;
        let at = self.off + skip;
        self.off = at + n;
        self.rest = rest;
        Some((at, bytes))
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

    #[test]
    fn exact_bytes_of_a_small_delta() {
        let old = [0u8; PAGE_SIZE];
        let mut new = old;
        new[10] = 0xAA;
        new[12] = 0xBB; // gap of 1 equal byte: merged into one segment
        new[4000] = 0x01;
        let mut out = [0u8; 64];
        let n = encode(&old, &new, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            &[10, 0, 3, 0, 0xAA, 0, 0xBB, 0x93, 0x0F, 1, 0, 0x01][..]
        );
        let mut page = old;
        apply(&mut page, &out[..n]).unwrap();
        assert_eq!(page, new);
    }

    #[test]
    fn identical_pages_give_an_empty_delta_and_large_changes_do_not_fit() {
        let a = [7u8; PAGE_SIZE];
        let mut out = [0u8; 16];
        assert_eq!(encode(&a, &a, &mut out), Some(0));
        let b = [8u8; PAGE_SIZE];
        assert_eq!(encode(&a, &b, &mut out), None);
        let mut big = [0u8; PAGE_SIZE + 8];
        let n = encode(&a, &b, &mut big).unwrap();
        assert_eq!(n, PAGE_SIZE + 4);
        assert_eq!(
            check(&big[..n]),
            Err(PageRunError::BadDelta),
            "longer than a page"
        );
    }

    #[test]
    fn malformed_deltas_are_rejected_and_leave_the_page_alone() {
        let mut page = [1u8; PAGE_SIZE];
        for bad in [
            &[0u8, 0, 0, 0][..],           // n = 0
            &[0, 0, 2, 0, 9][..],          // truncated data
            &[0, 0][..],                   // truncated header
            &[0xFF, 0x0F, 2, 0, 1, 1][..], // 4095 + 2 leaves the page
            &[0, 0x10, 1, 0, 1][..],       // skip 4096 then 1 byte
        ] {
            assert_eq!(
                apply(&mut page, bad),
                Err(PageRunError::BadDelta),
                "{bad:?}"
            );
        }
        assert_eq!(page, [1u8; PAGE_SIZE]);
    }

    proptest::proptest! {
        #[test]
        fn apply_inverts_encode(edits in proptest::collection::vec((0usize..PAGE_SIZE, proptest::num::u8::ANY), 0..300), runs in proptest::collection::vec((0usize..PAGE_SIZE, 1usize..1500), 0..6), seed in proptest::num::u8::ANY) {
            let mut old = [0u8; PAGE_SIZE];
            for (i, b) in old.iter_mut().enumerate() { *b = u8::try_from(i % 256).unwrap().wrapping_mul(seed); }
            let mut new = old;
            for (i, v) in edits { new[i] = v; }
            // Stretches rewritten whole (every byte differs: the encoder's word-at-a-time path).
            for (at, n) in runs {
                for b in new.iter_mut().skip(at).take(n) { *b = !*b; }
            }
            let mut out = [0u8; PAGE_SIZE * 2];
            let n = encode(&old, &new, &mut out).unwrap();
            let mut page = old;
            if n <= MAX_DELTA_LEN {
                apply(&mut page, &out[..n]).unwrap();
                proptest::prop_assert_eq!(page, new);
            }
            // Into a smaller buffer: the same bytes when they fit, else None (the encoder gives
            // up early on a segment that cannot fit; the result is as if it had not).
            for k in [n.saturating_sub(1), n, n + 1, 16, 2048] {
                let mut buf = [0u8; PAGE_SIZE * 2];
                let small = &mut buf[..k];
                match encode(&old, &new, small) {
                    Some(m) => {
                        proptest::prop_assert!(n <= k);
                        proptest::prop_assert_eq!(&small[..m], &out[..n]);
                    }
                    None => proptest::prop_assert!(n > k, "{n} bytes do fit {k}"),
                }
            }
        }
    }
}
