//! PAGES record payloads: page-run headers and a zero-copy payload builder.
//!
//! A PAGES payload is a sequence of runs, each a 16-byte [`PageRunHeader`] followed by data that
//! depends on the encoding (page `i` of a run is frame `first_frame + i`):
//! - [`PageEncoding::FULL`]: `count * 4096` page bytes;
//! - [`PageEncoding::ZERO`]: nothing, the pages are all zero;
//! - [`PageEncoding::DUP`]: `count` 16-byte entries `{from_frame: u64, hash: u64}`: the page equals
//!   the receiver's current contents of `from_frame` (the last version this stream wrote there, or
//!   a zero page if none), whose xxh3-64 content hash is `hash` (the receiver must check it);
//! - [`PageEncoding::DELTA`]: per page, `len: u16` (≤ 4096) then `len` bytes of XOR segments against
//!   the receiver's current content of the same frame (see [`crate::delta`]).
//!
//! [`PagesPayload`] builds FULL and ZERO runs straight from guest memory; DUP and DELTA data is
//! computed by the writer (it needs its own record of what was sent).

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::encoder::PayloadSource;
use crate::error::{EncodeError, PageRunError};
use crate::record::MAX_PAYLOAD;

/// Page size of format 1.
pub const PAGE_SIZE: usize = 4096;
/// Length of a page-run header.
pub const PAGE_RUN_HEADER_LEN: usize = 16;

/// Byte view of a page-run header (16 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PageRunHeader {
    /// Guest frame number of the first page.
    pub first_frame: U64,
    /// Pages in the run (≥ 1).
    pub count: U32,
    /// [`PageEncoding`].
    pub encoding: u8,
    /// Zero.
    pub reserved: [u8; 3],
}
static_assertions::const_assert_eq!(core::mem::size_of::<PageRunHeader>(), PAGE_RUN_HEADER_LEN);

/// How a run's pages are carried. Open at the view layer; format 1.0 defines four values and
/// [`PageRunRepr::parse`] rejects the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageEncoding(pub u8);

impl PageEncoding {
    /// Page bytes follow the header.
    pub const FULL: Self = Self(0);
    /// The pages are all zero; no bytes follow.
    pub const ZERO: Self = Self(1);
    /// Each page duplicates a page the receiver holds: `{from_frame: u64, hash: u64}` per page.
    pub const DUP: Self = Self(2);
    /// Each page is an XOR delta against the receiver's current page: `len: u16` + segments.
    pub const DELTA: Self = Self(3);
}

/// Bytes of one DUP entry.
pub const DUP_ENTRY_LEN: usize = 16;
/// Bytes of the length field before each DELTA page.
pub const DELTA_LEN_FIELD: usize = 2;

/// Semantic form of a page-run header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PageRunRepr {
    /// First guest frame.
    pub first_frame: u64,
    /// Pages in the run.
    pub count: u32,
    /// Encoding (FULL or ZERO).
    pub encoding: PageEncoding,
}

impl PageRunRepr {
    /// Header bytes [`emit`](Self::emit) writes.
    pub const BUFFER_LEN: usize = PAGE_RUN_HEADER_LEN;

    /// Parse a run header. Checks reserved bytes, encoding, `count ≥ 1` and that
    /// `first_frame + count` does not overflow. Whether the run fits its record is the
    /// decoder's check ([`PageRunError::Overrun`]).
    ///
    /// # Errors
    /// The first failed check.
    pub fn parse(raw: &[u8; PAGE_RUN_HEADER_LEN]) -> Result<Self, PageRunError> {
        let h: PageRunHeader = zerocopy::transmute!(*raw);
        if h.reserved != [0; 3] {
            return Err(PageRunError::ReservedNotZero);
        }
        let r = Self {
            first_frame: h.first_frame.get(),
            count: h.count.get(),
            encoding: PageEncoding(h.encoding),
        };
        r.check()?;
        Ok(r)
    }

    /// The semantic checks of [`parse`](Self::parse), for runs built locally.
    ///
    /// # Errors
    /// Unknown encoding, zero count, frame overflow.
    pub const fn check(&self) -> Result<(), PageRunError> {
        if self.encoding.0 > PageEncoding::DELTA.0 {
            return Err(PageRunError::UnknownEncoding {
                encoding: self.encoding.0,
            });
        }
        if self.count == 0 {
            return Err(PageRunError::ZeroCount);
        }
        if self.first_frame.checked_add(self.count as u64).is_none() {
            return Err(PageRunError::FrameOverflow);
        }
        Ok(())
    }

    /// Bytes following the header: `count * 4096` for FULL, 0 for ZERO, `count * 16` for DUP;
    /// for DELTA the minimum, `count * 2` (each page's data follows its length field).
    #[must_use]
    pub const fn data_len(&self) -> u64 {
        let per_page = match self.encoding.0 {
            0 => PAGE_SIZE,
            2 => DUP_ENTRY_LEN,
            3 => DELTA_LEN_FIELD,
            _ => 0,
        };
        (self.count as u64) * (per_page as u64)
    }

    /// Header plus data bytes (for DELTA, the minimum).
    #[must_use]
    pub const fn wire_len(&self) -> u64 {
        self.data_len() + PAGE_RUN_HEADER_LEN as u64
    }

    /// Write the header.
    pub fn emit(&self, out: &mut [u8; PAGE_RUN_HEADER_LEN]) {
        let h = PageRunHeader {
            first_frame: U64::new(self.first_frame),
            count: U32::new(self.count),
            encoding: self.encoding.0,
            reserved: [0; 3],
        };
        *out = zerocopy::transmute!(h);
    }
}

/// Where a PAGES payload's page bytes come from: typically guest graphics memory.
///
/// Implemented for closures `Fn(frame, offset, out)`.
pub trait PageSource {
    /// Copy bytes `[offset, offset + out.len())` of frame `frame` into `out`.
    /// Never asked for `offset + out.len() > 4096`.
    fn read(&self, frame: u64, offset: usize, out: &mut [u8]);
}

impl<F: Fn(u64, usize, &mut [u8])> PageSource for F {
    fn read(&self, frame: u64, offset: usize, out: &mut [u8]) {
        self(frame, offset, out);
    }
}

/// A PAGES payload produced on the fly from run descriptions and a [`PageSource`]: the
/// encoder copies page bytes straight from the source into its output, no intermediate buffer.
///
/// ```
/// use migstream::{PageEncoding, PageRunRepr, PagesPayload, PayloadSource};
/// let runs = [
///     PageRunRepr { first_frame: 10, count: 2, encoding: PageEncoding::FULL },
///     PageRunRepr { first_frame: 40, count: 100, encoding: PageEncoding::ZERO },
/// ];
/// let p = PagesPayload::new(&runs, |frame: u64, _off: usize, out: &mut [u8]| out.fill(frame as u8))?;
/// assert_eq!(p.payload_len(), 16 + 2 * 4096 + 16);
/// # Ok::<(), migstream::EncodeError>(())
/// ```
#[derive(Clone, Copy)]
pub struct PagesPayload<'a, S> {
    runs: &'a [PageRunRepr],
    source: S,
    len: usize,
}

impl<'a, S: PageSource> PagesPayload<'a, S> {
    /// Validate `runs` (FULL and ZERO only) and compute the payload length.
    ///
    /// # Errors
    /// [`EncodeError::BadPageRun`] for an invalid run or a DUP/DELTA run (their data is not page
    /// bytes); [`EncodeError::PayloadTooLarge`] if the payload would exceed [`MAX_PAYLOAD`].
    pub fn new(runs: &'a [PageRunRepr], source: S) -> Result<Self, EncodeError> {
        let mut total: u64 = 0;
        for r in runs {
            r.check().map_err(|_| EncodeError::BadPageRun)?;
            if r.encoding != PageEncoding::FULL && r.encoding != PageEncoding::ZERO {
                return Err(EncodeError::BadPageRun);
            }
            total = total.saturating_add(r.wire_len());
        }
        if total > u64::from(MAX_PAYLOAD) {
            return Err(EncodeError::PayloadTooLarge {
                len: usize::try_from(total).unwrap_or(usize::MAX),
            });
        }
        let len =
            usize::try_from(total).map_err(|_| EncodeError::PayloadTooLarge { len: usize::MAX })?;
        Ok(Self { runs, source, len })
    }

    /// The runs.
    #[must_use]
    pub const fn runs(&self) -> &'a [PageRunRepr] {
        self.runs
    }
}

impl<S> core::fmt::Debug for PagesPayload<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PagesPayload")
            .field("runs", &self.runs)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Copy the part of `src` (which sits at payload offset `src_at`) that overlaps
/// `[offset, offset + out.len())` into `out`.
fn copy_overlap(src_at: usize, src: &[u8], offset: usize, out: &mut [u8]) {
    let start = src_at.max(offset);
    let end = src_at
        .saturating_add(src.len())
        .min(offset.saturating_add(out.len()));
    if start >= end {
        return;
    }
    let (Some(s), Some(d)) = (
        src.get(start - src_at..end - src_at),
        out.get_mut(start - offset..end - offset),
    ) else {
        return;
    };
    d.copy_from_slice(s);
}

impl<S: PageSource> PayloadSource for PagesPayload<'_, S> {
    fn payload_len(&self) -> usize {
        self.len
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        let end = offset.saturating_add(out.len());
        let mut pos = 0usize;
        for run in self.runs {
            if pos >= end {
                break;
            }
            let data_at = pos + PAGE_RUN_HEADER_LEN;
            // Bounded by MAX_PAYLOAD (checked in `new`), so it fits usize.
            let data_len = usize::try_from(run.data_len()).unwrap_or(0);
            let run_end = data_at + data_len;
            if run_end <= offset {
                pos = run_end;
                continue;
            }
            if data_at > offset {
                let mut hdr = [0; PAGE_RUN_HEADER_LEN];
                run.emit(&mut hdr);
                copy_overlap(pos, &hdr, offset, out);
            }
            let mut cur = data_at.max(offset);
            let stop = run_end.min(end);
            while cur < stop {
                let rel = cur - data_at;
                let in_page = rel % PAGE_SIZE;
                let n = (PAGE_SIZE - in_page).min(stop - cur);
                let frame = run.first_frame.saturating_add((rel / PAGE_SIZE) as u64);
                if let Some(dst) = out.get_mut(cur - offset..cur - offset + n) {
                    self.source.read(frame, in_page, dst);
                }
                cur += n;
            }
            pos = run_end;
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]
mod tests {
    use super::*;
    use std::{vec, vec::Vec};

    static RUN: [u8; 16] = [
        0x00, 0x10, 0, 0, 0, 0, 0, 0, // first_frame 0x1000
        3, 0, 0, 0, // count
        1, 0, 0, 0, // ZERO, reserved
    ];
    const RUN_REPR: PageRunRepr = PageRunRepr {
        first_frame: 0x1000,
        count: 3,
        encoding: PageEncoding::ZERO,
    };

    #[test]
    fn deconstruct() {
        let h: PageRunHeader = zerocopy::transmute!(RUN);
        assert_eq!(h.first_frame.get(), 0x1000);
        assert_eq!(h.count.get(), 3);
        assert_eq!(h.encoding, 1);
    }

    #[test]
    fn construct() {
        let mut out = [0xEE; 16];
        RUN_REPR.emit(&mut out);
        assert_eq!(out, RUN);
    }

    #[test]
    fn parse() {
        assert_eq!(PageRunRepr::parse(&RUN), Ok(RUN_REPR));
        assert_eq!(RUN_REPR.data_len(), 0);
        let full = PageRunRepr {
            encoding: PageEncoding::FULL,
            ..RUN_REPR
        };
        assert_eq!(full.data_len(), 3 * 4096);
    }

    #[test]
    fn bad_runs() {
        let mut b = RUN;
        b[12] = 4;
        assert_eq!(
            PageRunRepr::parse(&b),
            Err(PageRunError::UnknownEncoding { encoding: 4 })
        );
        b[12] = 2;
        assert_eq!(PageRunRepr::parse(&b).unwrap().data_len(), 3 * 16);
        b[12] = 3;
        assert_eq!(PageRunRepr::parse(&b).unwrap().data_len(), 3 * 2);
        let mut b = RUN;
        b[8] = 0;
        assert_eq!(PageRunRepr::parse(&b), Err(PageRunError::ZeroCount));
        let mut b = RUN;
        b[..8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert_eq!(PageRunRepr::parse(&b), Err(PageRunError::FrameOverflow));
        b[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(PageRunRepr::parse(&b).is_ok());
        let mut b = RUN;
        b[15] = 1;
        assert_eq!(PageRunRepr::parse(&b), Err(PageRunError::ReservedNotZero));
    }

    fn pattern(frame: u64, off: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = (frame as u8).wrapping_mul(31) ^ ((off + i) as u8);
        }
    }

    fn expected(runs: &[PageRunRepr]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in runs {
            let mut h = [0; 16];
            r.emit(&mut h);
            v.extend_from_slice(&h);
            if r.encoding == PageEncoding::FULL {
                for i in 0..u64::from(r.count) {
                    let mut page = [0u8; 4096];
                    pattern(r.first_frame + i, 0, &mut page);
                    v.extend_from_slice(&page);
                }
            }
        }
        v
    }

    const RUNS: [PageRunRepr; 3] = [
        PageRunRepr {
            first_frame: 5,
            count: 2,
            encoding: PageEncoding::FULL,
        },
        PageRunRepr {
            first_frame: 100,
            count: 7,
            encoding: PageEncoding::ZERO,
        },
        PageRunRepr {
            first_frame: 9,
            count: 1,
            encoding: PageEncoding::FULL,
        },
    ];

    #[test]
    fn payload_whole() {
        let p = PagesPayload::new(&RUNS, pattern).unwrap();
        let want = expected(&RUNS);
        assert_eq!(p.payload_len(), want.len());
        assert_eq!(p.payload_len(), 16 * 3 + 3 * 4096);
        let mut got = vec![0; want.len()];
        p.fill(0, &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn payload_rejects() {
        let bad = [PageRunRepr {
            count: 0,
            ..RUN_REPR
        }];
        assert_eq!(
            PagesPayload::new(&bad, pattern).unwrap_err(),
            EncodeError::BadPageRun
        );
        let big = [PageRunRepr {
            first_frame: 0,
            count: 4096,
            encoding: PageEncoding::FULL,
        }];
        assert!(matches!(
            PagesPayload::new(&big, pattern),
            Err(EncodeError::PayloadTooLarge { len: 16_777_232 })
        ));
    }

    proptest::proptest! {
        #[test]
        fn payload_any_window(off in 0usize..(16 * 3 + 3 * 4096), len in 0usize..5000) {
            let p = PagesPayload::new(&RUNS, pattern).unwrap();
            let want = expected(&RUNS);
            let len = len.min(want.len() - off);
            let mut got = vec![0xAB; len];
            p.fill(off, &mut got);
            proptest::prop_assert_eq!(&got[..], &want[off..off + len]);
        }
    }
}
