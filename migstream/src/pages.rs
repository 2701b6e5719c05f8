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
//! Two ways to produce a payload:
//! - [`PagesBuilder`] assembles a payload of any encodings in a caller buffer from page bytes the
//!   writer already holds: the writer decides each page's encoding (it keeps its own record of
//!   what the receiver holds), the builder writes run headers and bodies. A writer whose memory
//!   can change under it reads each page once, into [`PagesBuilder::slot`], and classifies and
//!   sends that one copy.
//! - [`PagesPayload`] streams FULL and ZERO runs from a [`PageSource`] while the encoder writes
//!   them, with no intermediate buffer; the source must return the same bytes every time it is
//!   asked (memory that does not change while the record is written).

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::crc::Crc32;
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

/// A PAGES payload assembled page by page in a caller buffer. Pages whose frame follows the
/// previous page's with the same encoding extend its run; anything else starts a new run.
///
/// One read per page: [`slot`](Self::slot) lends the place where the next page's bytes go if it
/// is sent FULL. Read the page into it, classify those bytes, then either
/// [`push_slot`](Self::push_slot) (FULL: the bytes stay where they are) or push another body
/// ([`push_zero`](Self::push_zero), [`push_dup`](Self::push_dup), [`push_delta`](Self::push_delta);
/// the slot's bytes are dropped), or push nothing (the page is not sent). Once a slot was lent,
/// any one push of that frame fits.
///
/// ```
/// use vgpu_mig_stream::{PageEncoding, PageRunRepr, PagesBuilder};
/// let mut buf = [0u8; 3 * 4096];
/// let mut b = PagesBuilder::new(&mut buf);
/// for frame in 10..12 {
///     let slot = b.slot(frame).ok_or(vgpu_mig_stream::EncodeError::BadPageRun)?;
///     slot.fill(frame as u8); // the one read of the page
///     b.push_slot(frame)?;
/// }
/// b.push_zero(12)?;
/// b.push_dup(40, 10, 0x1234)?;
/// let len = b.len();
/// assert_eq!(len, 16 + 2 * 4096 + 16 + 16 + 16);
/// let first = PageRunRepr::parse(buf[..16].try_into().unwrap_or(&[0; 16]))
///     .map_err(|_| vgpu_mig_stream::EncodeError::BadPageRun)?;
/// assert_eq!(first, PageRunRepr { first_frame: 10, count: 2, encoding: PageEncoding::FULL });
/// # Ok::<(), vgpu_mig_stream::EncodeError>(())
/// ```
#[derive(Debug)]
pub struct PagesBuilder<'b> {
    buf: &'b mut [u8],
    /// Usable bytes: the buffer, at most [`MAX_PAYLOAD`].
    cap: usize,
    len: usize,
    /// The open run and the offset of its header.
    run: Option<(usize, PageRunRepr)>,
    /// The lent slot: its frame and offset.
    slot: Option<(u64, usize)>,
    pages: u32,
}

impl<'b> PagesBuilder<'b> {
    /// An empty payload in `buf` (of which at most [`MAX_PAYLOAD`] bytes are used).
    pub fn new(buf: &'b mut [u8]) -> Self {
        let cap = buf.len().min(MAX_PAYLOAD as usize);
        Self {
            buf,
            cap,
            len: 0,
            run: None,
            slot: None,
            pages: 0,
        }
    }

    /// Payload bytes so far.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no page was pushed.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages pushed.
    #[must_use]
    pub const fn pages(&self) -> u32 {
        self.pages
    }

    /// The payload so far.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Whether a page of `frame` with `encoding` continues the open run.
    fn extends(&self, frame: u64, encoding: PageEncoding) -> bool {
        self.run.is_some_and(|(_, r)| {
            r.encoding == encoding
                && r.count < u32::MAX
                && r.first_frame.checked_add(u64::from(r.count)) == Some(frame)
        })
    }

    /// Offset where the data of a page of `frame` with `encoding` would start.
    fn data_at(&self, frame: u64, encoding: PageEncoding) -> usize {
        if self.extends(frame, encoding) {
            self.len
        } else {
            self.len + PAGE_RUN_HEADER_LEN
        }
    }

    /// Lend the place where page `frame`'s bytes go if it is sent FULL, or `None` when the
    /// payload has no room for one more page (header included): the record is full.
    pub fn slot(&mut self, frame: u64) -> Option<&mut [u8; PAGE_SIZE]> {
        let at = self.data_at(frame, PageEncoding::FULL);
        if at + PAGE_SIZE > self.cap {
            self.slot = None;
            return None;
        }
        self.slot = Some((frame, at));
        self.buf.get_mut(at..at + PAGE_SIZE)?.try_into().ok()
    }

    /// Append page `frame` with `encoding` and `data` bytes of body; returns where its body goes.
    fn append(
        &mut self,
        frame: u64,
        encoding: PageEncoding,
        data: usize,
    ) -> Result<usize, EncodeError> {
        self.slot = None;
        let extends = self.extends(frame, encoding);
        let at = self.data_at(frame, encoding);
        let end = at + data;
        if end > self.cap {
            return Err(EncodeError::PayloadTooLarge { len: end });
        }
        let (hdr_at, run) = match self.run {
            Some((hdr_at, mut r)) if extends => {
                r.count += 1;
                (hdr_at, r)
            }
            _ => {
                let r = PageRunRepr {
                    first_frame: frame,
                    count: 1,
                    encoding,
                };
                r.check().map_err(|_| EncodeError::BadPageRun)?;
                (self.len, r)
            }
        };
        let hdr: &mut [u8; PAGE_RUN_HEADER_LEN] = self
            .buf
            .get_mut(hdr_at..hdr_at + PAGE_RUN_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(EncodeError::BadPageRun)?;
        run.emit(hdr);
        self.run = Some((hdr_at, run));
        self.len = end;
        self.pages = self.pages.saturating_add(1);
        Ok(at)
    }

    /// Append page `frame` as FULL with the bytes read into its [`slot`](Self::slot), which
    /// stay where they are.
    ///
    /// # Errors
    /// [`EncodeError::BadPageRun`] unless the last call lent the slot of `frame`.
    pub fn push_slot(&mut self, frame: u64) -> Result<(), EncodeError> {
        match self.slot {
            Some((f, at)) if f == frame && at == self.data_at(frame, PageEncoding::FULL) => self
                .append(frame, PageEncoding::FULL, PAGE_SIZE)
                .map(|_| ()),
            _ => {
                self.slot = None;
                Err(EncodeError::BadPageRun)
            }
        }
    }

    /// Append page `frame` as FULL with the bytes `page` (a copy; see [`slot`](Self::slot) to
    /// read straight into the payload).
    ///
    /// # Errors
    /// [`EncodeError::PayloadTooLarge`] when it does not fit (nothing changes then).
    pub fn push_full(&mut self, frame: u64, page: &[u8; PAGE_SIZE]) -> Result<(), EncodeError> {
        let at = self.append(frame, PageEncoding::FULL, PAGE_SIZE)?;
        self.body(at, page)
    }

    /// Append page `frame` as a ZERO page.
    ///
    /// # Errors
    /// [`EncodeError::PayloadTooLarge`] when it does not fit (nothing changes then).
    pub fn push_zero(&mut self, frame: u64) -> Result<(), EncodeError> {
        self.append(frame, PageEncoding::ZERO, 0).map(|_| ())
    }

    /// Append page `frame` as a DUP of the receiver's frame `from_frame`, whose content (as
    /// the writer sent it last) has xxh3-64 `hash`.
    ///
    /// # Errors
    /// [`EncodeError::PayloadTooLarge`] when it does not fit (nothing changes then).
    pub fn push_dup(&mut self, frame: u64, from_frame: u64, hash: u64) -> Result<(), EncodeError> {
        let at = self.append(frame, PageEncoding::DUP, DUP_ENTRY_LEN)?;
        let mut entry = [0u8; DUP_ENTRY_LEN];
        let (a, b) = entry.split_at_mut(8);
        a.copy_from_slice(&from_frame.to_le_bytes());
        b.copy_from_slice(&hash.to_le_bytes());
        self.body(at, &entry)
    }

    /// Append page `frame` as a DELTA (see [`crate::delta`]) against the receiver's current
    /// content of the frame (what the writer sent last).
    ///
    /// # Errors
    /// [`EncodeError::BadPageRun`] for a delta longer than a page;
    /// [`EncodeError::PayloadTooLarge`] when it does not fit (nothing changes then).
    pub fn push_delta(&mut self, frame: u64, delta: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(delta.len())
            .ok()
            .filter(|l| usize::from(*l) <= crate::delta::MAX_DELTA_LEN)
            .ok_or(EncodeError::BadPageRun)?;
        let at = self.append(frame, PageEncoding::DELTA, DELTA_LEN_FIELD + delta.len())?;
        self.body(at, &len.to_le_bytes())?;
        self.body(at + DELTA_LEN_FIELD, delta)
    }

    fn body(&mut self, at: usize, bytes: &[u8]) -> Result<(), EncodeError> {
        self.buf
            .get_mut(at..at + bytes.len())
            .ok_or(EncodeError::BadPageRun)?
            .copy_from_slice(bytes);
        Ok(())
    }
}

/// Where a PAGES payload's page bytes come from: typically guest graphics memory.
///
/// Implemented for closures `Fn(frame, offset, out)` and for frames in one slice
/// ([`SlicePages`]).
pub trait PageSource {
    /// Copy bytes `[offset, offset + out.len())` of frame `frame` into `out`.
    /// Never asked for `offset + out.len() > 4096`.
    fn read(&self, frame: u64, offset: usize, out: &mut [u8]);

    /// [`read`](Self::read), and fold the bytes written into `out` into `crc`: the encoder
    /// reads every page of a record that fits its output this way. The CRC must be of the bytes
    /// in `out`, not of a second read of the source (which may have changed meanwhile).
    ///
    /// The default reads, then checksums `out` (while it is in L1). A source whose bytes are a
    /// slice in memory overrides it with [`Crc32::update_copy`], one pass that stores each
    /// register and folds the same register, as [`SlicePages`] does.
    fn read_crc(&self, frame: u64, offset: usize, out: &mut [u8], crc: &mut Crc32) {
        self.read(frame, offset, out);
        crc.update(out);
    }
}

impl<F: Fn(u64, usize, &mut [u8])> PageSource for F {
    fn read(&self, frame: u64, offset: usize, out: &mut [u8]) {
        self(frame, offset, out);
    }
}

/// A [`PageSource`] over frames that lie one after another in one slice: frame
/// `first_frame + i` is `bytes[i * 4096..(i + 1) * 4096]` (a VMM's mapping of guest memory, a
/// snapshot buffer). Its [`read_crc`](PageSource::read_crc) copies and checksums in one pass
/// ([`Crc32::update_copy`]).
///
/// A read of a frame that is not wholly inside the slice writes zeros (a source cannot fail;
/// build the runs from frames of the slice).
///
/// ```
/// use vgpu_mig_stream::{PageEncoding, PageRunRepr, PagesPayload, PayloadSource, SlicePages};
/// let memory = [0x11u8; 3 * 4096];
/// let runs = [PageRunRepr { first_frame: 0x100, count: 3, encoding: PageEncoding::FULL }];
/// let p = PagesPayload::new(&runs, SlicePages::new(&memory, 0x100))?;
/// let mut out = [0u8; 16 + 3 * 4096];
/// p.fill(0, &mut out);
/// assert_eq!(out[16..], memory);
/// # Ok::<(), vgpu_mig_stream::EncodeError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SlicePages<'a> {
    bytes: &'a [u8],
    first_frame: u64,
}

impl<'a> SlicePages<'a> {
    /// Frames `first_frame..` in `bytes`, 4 KiB each.
    #[must_use]
    pub const fn new(bytes: &'a [u8], first_frame: u64) -> Self {
        Self { bytes, first_frame }
    }

    /// Bytes `[offset, offset + len)` of `frame`, if the slice holds all of the frame.
    fn get(&self, frame: u64, offset: usize, len: usize) -> Option<&'a [u8]> {
        let index = usize::try_from(frame.checked_sub(self.first_frame)?).ok()?;
        let start = index.checked_mul(PAGE_SIZE)?;
        let page = self.bytes.get(start..start.checked_add(PAGE_SIZE)?)?;
        page.get(offset..offset.checked_add(len)?)
    }
}

impl PageSource for SlicePages<'_> {
    fn read(&self, frame: u64, offset: usize, out: &mut [u8]) {
        match self.get(frame, offset, out.len()) {
            Some(src) => out.copy_from_slice(src),
            None => out.fill(0),
        }
    }

    fn read_crc(&self, frame: u64, offset: usize, out: &mut [u8], crc: &mut Crc32) {
        match self.get(frame, offset, out.len()) {
            Some(src) => crc.update_copy(out, src),
            None => {
                out.fill(0);
                crc.update(out);
            }
        }
    }
}

/// A PAGES payload produced on the fly from run descriptions and a [`PageSource`]: the
/// encoder copies page bytes straight from the source into its output, no intermediate buffer.
///
/// ```
/// use vgpu_mig_stream::{PageEncoding, PageRunRepr, PagesPayload, PayloadSource};
/// let runs = [
///     PageRunRepr { first_frame: 10, count: 2, encoding: PageEncoding::FULL },
///     PageRunRepr { first_frame: 40, count: 100, encoding: PageEncoding::ZERO },
/// ];
/// let p = PagesPayload::new(&runs, |frame: u64, _off: usize, out: &mut [u8]| out.fill(frame as u8))?;
/// assert_eq!(p.payload_len(), 16 + 2 * 4096 + 16);
/// # Ok::<(), vgpu_mig_stream::EncodeError>(())
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

    fn lead_len(&self) -> usize {
        if self.runs.is_empty() {
            0
        } else {
            PAGE_RUN_HEADER_LEN
        }
    }

    /// One pass over the runs: each run's header is written and checksummed, then each of its
    /// pages is read and checksummed in one go ([`PageSource::read_crc`]), every page whole.
    /// The default would look each piece's place up in the run list again.
    fn fill_crc(&self, out: &mut [u8], crc: &mut Crc32) {
        let Some(out) = out.get_mut(..self.len) else {
            // Not the whole payload: the generic way (which copes with any length).
            self.fill(0, out);
            crc.update(out);
            return;
        };
        let mut at = 0usize;
        for run in self.runs {
            if let Some(hdr) = out
                .get_mut(at..at + PAGE_RUN_HEADER_LEN)
                .and_then(|h| <&mut [u8; PAGE_RUN_HEADER_LEN]>::try_from(h).ok())
            {
                run.emit(hdr);
                crc.update(hdr);
            }
            at += PAGE_RUN_HEADER_LEN;
            if run.encoding != PageEncoding::FULL {
                continue;
            }
            for frame in run.first_frame..run.first_frame.saturating_add(u64::from(run.count)) {
                if let Some(page) = out.get_mut(at..at + PAGE_SIZE) {
                    self.source.read_crc(frame, 0, page, crc);
                }
                at += PAGE_SIZE;
            }
        }
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

    /// What a builder should produce for `pages` (frame, encoding, body), computed the slow way:
    /// group consecutive frames of one encoding into runs.
    fn model(pages: &[(u64, PageEncoding, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < pages.len() {
            let (first, enc, _) = &pages[i];
            let mut n = 1;
            while i + n < pages.len()
                && pages[i + n].1 == *enc
                && pages[i + n].0 == first + n as u64
            {
                n += 1;
            }
            let mut h = [0; 16];
            PageRunRepr {
                first_frame: *first,
                count: n as u32,
                encoding: *enc,
            }
            .emit(&mut h);
            out.extend_from_slice(&h);
            for (_, _, body) in &pages[i..i + n] {
                out.extend_from_slice(body);
            }
            i += n;
        }
        out
    }

    #[test]
    fn builder_mixed_runs() {
        let mut buf = vec![0xEE; 4 * 4096];
        let mut b = PagesBuilder::new(&mut buf);
        let mut want = Vec::new();
        let mut page = [0u8; 4096];
        pattern(5, 0, &mut page);
        b.slot(5).unwrap().copy_from_slice(&page);
        b.push_slot(5).unwrap();
        want.push((5, PageEncoding::FULL, page.to_vec()));
        // A slot lent and then not used: the page was unchanged; nothing is appended.
        b.slot(6).unwrap().as_mut_slice().fill(0x77);
        pattern(6, 0, &mut page);
        b.push_full(6, &page).unwrap();
        want.push((6, PageEncoding::FULL, page.to_vec()));
        b.push_zero(7).unwrap();
        b.push_zero(8).unwrap();
        want.push((7, PageEncoding::ZERO, vec![]));
        want.push((8, PageEncoding::ZERO, vec![]));
        b.slot(9).unwrap().as_mut_slice().fill(1);
        b.push_dup(9, 5, 0xABCD).unwrap();
        let mut dup = 5u64.to_le_bytes().to_vec();
        dup.extend_from_slice(&0xABCDu64.to_le_bytes());
        want.push((9, PageEncoding::DUP, dup));
        b.push_delta(10, &[0, 0, 1, 0, 0x5A]).unwrap();
        want.push((10, PageEncoding::DELTA, vec![5, 0, 0, 0, 1, 0, 0x5A]));
        b.push_delta(11, &[]).unwrap();
        want.push((11, PageEncoding::DELTA, vec![0, 0]));
        assert_eq!(b.pages(), 7);
        let want = model(&want);
        assert_eq!(b.payload(), &want[..]);
        assert_eq!(b.len(), want.len());
        // A slot of another frame, or none at all, can not be pushed.
        assert_eq!(b.push_slot(12), Err(EncodeError::BadPageRun));
        b.slot(12).unwrap();
        assert_eq!(b.push_slot(13), Err(EncodeError::BadPageRun));
        assert_eq!(b.push_slot(12), Err(EncodeError::BadPageRun));
        assert_eq!(b.payload(), &want[..]);
        assert_eq!(b.push_delta(12, &[0; 4097]), Err(EncodeError::BadPageRun));
    }

    #[test]
    fn builder_full_when_no_page_fits() {
        let mut buf = vec![0; 16 + 4096 + 20];
        let mut b = PagesBuilder::new(&mut buf);
        b.slot(1).unwrap();
        b.push_slot(1).unwrap();
        // Frame 2 would extend the FULL run but 4096 more bytes do not fit.
        assert!(b.slot(2).is_none());
        assert!(matches!(
            b.push_full(2, &[0; 4096]),
            Err(EncodeError::PayloadTooLarge { .. })
        ));
        b.push_zero(2).unwrap();
        assert!(matches!(
            b.push_dup(3, 1, 0),
            Err(EncodeError::PayloadTooLarge { .. })
        ));
        assert_eq!(b.len(), 16 + 4096 + 16);
        assert_eq!(b.pages(), 2);
    }

    proptest::proptest! {
        /// Any sequence of pushes gives the runs the slow model gives, and every lent slot
        /// admits its page in any encoding.
        #[test]
        fn builder_matches_model(ops in proptest::collection::vec((0u64..4, 0u8..4, 0usize..40), 0..60)) {
            let mut buf = vec![0; 24 * 4096];
            let mut b = PagesBuilder::new(&mut buf);
            let mut want = Vec::new();
            let mut frame = 100u64;
            for (step, enc, len) in ops {
                frame += step;
                if b.slot(frame).is_none() {
                    break;
                }
                let body = match enc {
                    0 => {
                        let slot = b.slot(frame).unwrap();
                        pattern(frame, 0, slot);
                        b.push_slot(frame).unwrap();
                        let mut p = vec![0; 4096];
                        pattern(frame, 0, &mut p);
                        p
                    }
                    1 => {
                        b.push_zero(frame).unwrap();
                        vec![]
                    }
                    2 => {
                        b.push_dup(frame, frame / 2, frame * 3).unwrap();
                        let mut d = (frame / 2).to_le_bytes().to_vec();
                        d.extend_from_slice(&(frame * 3).to_le_bytes());
                        d
                    }
                    _ => {
                        let delta = vec![frame as u8; len];
                        b.push_delta(frame, &delta).unwrap();
                        let mut d = (len as u16).to_le_bytes().to_vec();
                        d.extend_from_slice(&delta);
                        d
                    }
                };
                want.push((frame, PageEncoding(enc), body));
            }
            let want = model(&want);
            proptest::prop_assert_eq!(b.payload(), &want[..]);
        }

        /// `fill_crc` writes the payload `fill` describes and folds exactly it into the CRC,
        /// after whatever the CRC held: with a source that reads and then checksums (a closure,
        /// the default `read_crc`) and one that copies and checksums in one pass
        /// (`SlicePages`), and into an output shorter than the payload.
        #[test]
        fn payload_fill_crc(
            shape in proptest::collection::vec((1u64..5, 1u32..4, proptest::bool::ANY), 0..40),
            prefix in proptest::collection::vec(0u8.., 0..20),
            short in 0usize..5000,
        ) {
            let mut runs = Vec::new();
            let mut frame = 7u64;
            for (gap, count, full) in shape {
                frame += gap;
                let encoding = if full { PageEncoding::FULL } else { PageEncoding::ZERO };
                runs.push(PageRunRepr { first_frame: frame, count, encoding });
                frame += u64::from(count);
            }
            let want = expected(&runs);
            let mut start = Crc32::new();
            start.update(&prefix);
            let mut joined = prefix.clone();
            joined.extend_from_slice(&want);
            let mut memory = vec![0u8; (frame - 7) as usize * PAGE_SIZE];
            for (i, page) in memory.chunks_exact_mut(PAGE_SIZE).enumerate() {
                pattern(7 + i as u64, 0, page);
            }
            let check = |p: &dyn PayloadSource| {
                let mut got = vec![0xAB; want.len()];
                let mut crc = start;
                p.fill_crc(&mut got, &mut crc);
                assert_eq!(got, want);
                assert_eq!(crc.value(), crate::crc32(&joined));
                // Shorter than the payload: what `fill` writes, and exactly it checksummed.
                let n = short.min(want.len().saturating_sub(1));
                let mut got = vec![0xAB; n];
                let mut crc = start;
                p.fill_crc(&mut got, &mut crc);
                assert_eq!(got, want[..n]);
                assert_eq!(crc.value(), crate::crc32(&joined[..prefix.len() + n]));
            };
            check(&PagesPayload::new(&runs, pattern).unwrap());
            check(&PagesPayload::new(&runs, SlicePages::new(&memory, 7)).unwrap());
        }

        /// `SlicePages` reads what the slice holds at any offset, and zeros for frames it
        /// does not hold wholly; `read_crc` folds what it wrote.
        #[test]
        fn slice_pages_reads(
            frame in 0u64..12,
            off in 0usize..PAGE_SIZE,
            len in 0usize..PAGE_SIZE,
        ) {
            let len = len.min(PAGE_SIZE - off);
            // Frames 4..9 and half of frame 9.
            let memory: Vec<u8> = (0..5 * PAGE_SIZE + PAGE_SIZE / 2).map(|i| (i % 251) as u8).collect();
            let src = SlicePages::new(&memory, 4);
            let mut got = vec![0xAB; len];
            src.read(frame, off, &mut got);
            let want = if (4..9).contains(&frame) {
                let at = (frame - 4) as usize * PAGE_SIZE + off;
                memory[at..at + len].to_vec()
            } else {
                vec![0; len]
            };
            proptest::prop_assert_eq!(&got, &want);
            let mut fused = vec![0xAB; len];
            let mut crc = Crc32::new();
            src.read_crc(frame, off, &mut fused, &mut crc);
            proptest::prop_assert_eq!(&fused, &want);
            proptest::prop_assert_eq!(crc.value(), crate::crc32(&want));
        }

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

    /// A builder's edges: empty until a page is pushed, a page that fills the buffer exactly is
    /// lent a slot and accepted, and the next page is refused (for mutants of `is_empty`, `slot`
    /// and `append`'s room checks that the vgpu crate's tests catch but these did not).
    #[test]
    fn builder_room_is_exact() {
        let mut buf = [0u8; PAGE_RUN_HEADER_LEN + PAGE_SIZE];
        let mut b = PagesBuilder::new(&mut buf);
        assert!(b.is_empty());
        let slot = b.slot(7).unwrap(); // a header and one page fit exactly
        slot.iter_mut().for_each(|b| *b = 0x5A);
        b.push_slot(7).unwrap();
        assert!(!b.is_empty());
        assert_eq!(b.len(), PAGE_RUN_HEADER_LEN + PAGE_SIZE);
        assert_eq!(b.pages(), 1);
        assert!(b.slot(8).is_none(), "no room for a second page");

        // A DUP entry that ends exactly at the buffer's end is accepted; one more is not.
        let mut buf = [0u8; PAGE_RUN_HEADER_LEN + 16];
        let mut b = PagesBuilder::new(&mut buf);
        b.push_dup(3, 9, 0xABC).unwrap();
        assert_eq!(b.len(), PAGE_RUN_HEADER_LEN + 16);
        assert_eq!(
            b.push_dup(4, 9, 0xABC),
            Err(EncodeError::PayloadTooLarge {
                len: PAGE_RUN_HEADER_LEN + 32
            })
        );
        let run = PageRunRepr::parse(b.payload()[..16].try_into().unwrap()).unwrap();
        assert_eq!(
            run,
            PageRunRepr {
                first_frame: 3,
                count: 1,
                encoding: PageEncoding::DUP
            }
        );
    }

    /// `lead_len` is the bytes before the first whole page (a run header), or none; `Debug`
    /// names the runs.
    #[test]
    fn payload_lead_and_debug() {
        let p = PagesPayload::new(&RUNS, pattern).unwrap();
        assert_eq!(p.lead_len(), PAGE_RUN_HEADER_LEN);
        let shown = std::format!("{p:?}");
        assert!(
            shown.contains("PagesPayload") && shown.contains("runs"),
            "{shown}"
        );
        let none: [PageRunRepr; 0] = [];
        assert_eq!(PagesPayload::new(&none, pattern).unwrap().lead_len(), 0);
    }
}
