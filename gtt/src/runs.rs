//! Saving the guest-view GGTT as runs, and validating and applying runs on restore.
//!
//! # Payload format (normative; all integers little-endian)
//!
//! A payload is a sequence of zero or more runs and nothing else. Each run is a 16-byte
//! header followed by a body:
//!
//! | Offset | Size | Field      | Meaning                                                |
//! |--------|------|------------|--------------------------------------------------------|
//! | 0      | 4    | `start`    | guest GGTT index of the run's first entry              |
//! | 4      | 4    | `count`    | number of entries, at least 1                          |
//! | 8      | 1    | `kind`     | 0 = RAW, 1 = LINEAR; other values are rejected         |
//! | 9      | 7    | `reserved` | must be zero                                           |
//!
//! * RAW body: `count` × 8 bytes, the raw 64-bit entries in index order.
//! * LINEAR body: one 8-byte template entry. Entry `i` (0-based) is the template with its
//!   address field (bits 45:12) increased by `i`; every other bit equals the template's.
//!
//! Rules checked by [`validate_runs`]: all indices `start .. start + count` lie inside one
//! slice (aperture or hidden) of the vGPU's guest view; runs appear in ascending storage
//! order (aperture pages first, then hidden pages) without overlap; no entry sets a bit
//! reserved for the generation; a present entry's frame satisfies the caller's
//! "inside guest memory" predicate; a LINEAR run's last frame fits the address field.
//!
//! Entries not covered by any run are zero: the destination starts from an all-zero table
//! ([`GgttSlices::clear`], or [`replace_runs`], which clears in the same pass as it restores). The encoder omits zero entries and nothing else, so non-present
//! entries with other bits set survive the round trip exactly. One GGTT may be split over
//! several payloads with [`SaveCursor`]; each payload is validated and applied on its own.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::addr::{Gfn, GttIndex, PAGE_SHIFT};
use crate::entry::{ADDR_MASK, FRAME_MAX, Generation, GgttEntry};
use crate::error::GttError;
use crate::frames::{GuestFrames, MAX_SPANS, SpanSet, Spans};
use crate::partition::Partition;
use crate::slices::GgttSlices;

/// Size of a run header in bytes.
pub const RUN_HEADER_LEN: usize = 16;
/// Smallest output buffer [`GgttSlices::save_runs`] can always make progress with.
pub const MIN_SAVE_BUFFER: usize = RUN_HEADER_LEN + 8;

const KIND_RAW: u8 = 0;
const KIND_LINEAR: u8 = 1;
/// A LINEAR run is started at a run boundary when at least this many entries continue it.
const LINEAR_MIN_START: usize = 2;
/// A RAW run is cut short for a LINEAR run of at least this many entries.
const LINEAR_MIN_BREAK: usize = 6;

/// Wire layout of a run header (shared with other implementations: see the module docs).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RunHeader {
    start: U32,
    count: U32,
    kind: u8,
    reserved: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<RunHeader>() == RUN_HEADER_LEN);

/// Where [`GgttSlices::save_runs`] continues: an opaque position in storage order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SaveCursor(usize);

impl SaveCursor {
    /// The beginning of the table.
    pub const START: Self = Self(0);

    /// The storage slot the next save starts at.
    #[must_use]
    pub const fn slot(self) -> usize {
        self.0
    }
}

/// Result of one [`GgttSlices::save_runs`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SaveProgress {
    /// Bytes written at the start of the output buffer (whole runs only).
    pub written: usize,
    /// Where to continue in the next payload, or `None` if the table is complete.
    pub next: Option<SaveCursor>,
}

/// What a validated payload contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RunStats {
    /// Number of entries covered by runs.
    pub entries: u64,
    /// Number of runs.
    pub runs: u64,
}

/// Length of the LINEAR run starting at `run[0]`, looking at most at `cap` entries.
fn linear_len(run: &[u64], cap: usize) -> usize {
    let Some(&first) = run.first() else { return 0 };
    let mut prev = first;
    let mut n = 1;
    for &e in run.iter().skip(1).take(cap.saturating_sub(1)) {
        let Some(next) = prev.checked_add(1 << PAGE_SHIFT) else {
            break;
        };
        if next != e || (next & !ADDR_MASK) != (first & !ADDR_MASK) {
            break;
        }
        prev = e;
        n += 1;
    }
    n
}

/// Entries per block of the fast scan in [`raw_copy`]. Small, because the block that holds
/// a run's end is checked entry by entry: on a random GGTT (runs of ~64 entries between
/// holes) 8 saved 1.61 G entries/s on the reference machine, 4 and 16 about 1.45 and 1.54.
const SCAN_BLOCK: usize = 8;
/// A scan block and the entry after it.
const SCAN_WINDOW: usize = SCAN_BLOCK + 1;

/// Whether a RAW run stops before `run[n]`: a zero entry, or a LINEAR run of at least
/// [`LINEAR_MIN_BREAK`] entries starts there.
fn raw_stops_at(run: &[u64], n: usize) -> bool {
    let Some(rest) = run.get(n..) else {
        return true;
    };
    match rest {
        [] => true,
        [0, ..] => true,
        [e, next, ..] if *next == e.wrapping_add(1 << PAGE_SHIFT) => {
            linear_len(rest, LINEAR_MIN_BREAK) >= LINEAR_MIN_BREAK
        }
        _ => false,
    }
}

/// Length of the RAW run starting at `run[0]`, at most `body.len() / 8` (at least 1): it
/// ends before the first later entry where [`raw_stops_at`] holds. Its entries are copied
/// into `body` (little-endian) during the same scan.
///
/// A LINEAR run can only start at `i` if `run[i + 1] - run[i]` is one page, so a block where
/// no entry is zero and no neighbour difference is one page holds no stop. Such blocks are
/// recognised with one cheap pass over the block; only other blocks are checked entry by
/// entry.
fn raw_copy(run: &[u64], body: &mut [u8]) -> usize {
    let (slots, _) = body.as_chunks_mut::<8>();
    let limit = run.len().min(slots.len());
    let mut n = 1;
    'scan: while n < limit {
        let window = run.get(n..).and_then(<[u64]>::first_chunk::<SCAN_WINDOW>);
        if let Some(w) = window
            && n + SCAN_BLOCK <= limit
            && let Some((_, cur)) = w.split_last()
            && let Some((_, next)) = w.split_first()
        {
            let hit = cur.iter().zip(next).fold(0u64, |acc, (&a, &b)| {
                acc | u64::from(a == 0) | u64::from(b.wrapping_sub(a) == 1 << PAGE_SHIFT)
            });
            if hit == 0 {
                if let Some(d) = slots.get_mut(n..n + SCAN_BLOCK) {
                    for (d, e) in d.iter_mut().zip(cur) {
                        *d = e.to_le_bytes();
                    }
                }
                n += SCAN_BLOCK;
                continue;
            }
        }
        let block_end = (n + SCAN_BLOCK).min(limit);
        while n < block_end {
            if raw_stops_at(run, n) {
                break 'scan;
            }
            if let (Some(d), Some(e)) = (slots.get_mut(n), run.get(n)) {
                *d = e.to_le_bytes();
            }
            n += 1;
        }
    }
    if let (Some(d), Some(e)) = (slots.first_mut(), run.first()) {
        *d = e.to_le_bytes();
    }
    n
}

fn put(out: &mut [u8], pos: &mut usize, bytes: &[u8]) -> Result<(), GttError> {
    let end = pos
        .checked_add(bytes.len())
        .ok_or(GttError::BufferTooSmall)?;
    out.get_mut(*pos..end)
        .ok_or(GttError::BufferTooSmall)?
        .copy_from_slice(bytes);
    *pos = end;
    Ok(())
}

fn put_header(
    out: &mut [u8],
    pos: &mut usize,
    start: GttIndex,
    count: usize,
    kind: u8,
) -> Result<(), GttError> {
    let count = u32::try_from(count).map_err(|_| GttError::CountOverflow)?;
    let h = RunHeader {
        start: U32::new(start.get()),
        count: U32::new(count),
        kind,
        reserved: [0; 7],
    };
    put(out, pos, h.as_bytes())
}

impl GgttSlices<'_> {
    /// Encodes entries from `from` onwards as runs into `out` (format in the module docs),
    /// stopping when the next run does not fit. Call again with `next` and a fresh buffer
    /// until `next` is `None`.
    ///
    /// # Errors
    /// [`GttError::BufferTooSmall`] if work remains and not even one run fits (`out` shorter
    /// than [`MIN_SAVE_BUFFER`]).
    pub fn save_runs(&self, from: SaveCursor, out: &mut [u8]) -> Result<SaveProgress, GttError> {
        let entries = self.entries();
        let partition = *self.partition();
        let ap_pages =
            usize::try_from(partition.aperture.pages()).map_err(|_| GttError::StorageSize)?;
        let mut slot = from.0;
        let mut pos = 0usize;
        loop {
            while entries.get(slot) == Some(&0) {
                slot += 1;
            }
            if slot >= entries.len() {
                return Ok(SaveProgress {
                    written: pos,
                    next: None,
                });
            }
            let slice_end = if slot < ap_pages {
                ap_pages
            } else {
                entries.len()
            };
            let run = entries.get(slot..slice_end).ok_or(GttError::StorageSize)?;
            let run = run.get(..run.len().min(u32::MAX as usize)).unwrap_or(run);
            let start = partition.index_at(slot).ok_or(GttError::StorageSize)?;
            let room = out.len().saturating_sub(pos);
            let lin = linear_len(run, run.len());
            let used = if lin >= LINEAR_MIN_START {
                if room < MIN_SAVE_BUFFER {
                    break;
                }
                let template = run.first().copied().unwrap_or(0);
                put_header(out, &mut pos, start, lin, KIND_LINEAR)?;
                put(out, &mut pos, &template.to_le_bytes())?;
                lin
            } else {
                if room < MIN_SAVE_BUFFER {
                    break;
                }
                // Body first (scanned and copied in one pass), then its header.
                let body_at = pos + RUN_HEADER_LEN;
                let n = raw_copy(run, out.get_mut(body_at..).ok_or(GttError::BufferTooSmall)?);
                put_header(out, &mut pos, start, n, KIND_RAW)?;
                pos = body_at.checked_add(n * 8).ok_or(GttError::BufferTooSmall)?;
                n
            };
            slot += used;
        }
        if pos == 0 {
            return Err(GttError::BufferTooSmall);
        }
        Ok(SaveProgress {
            written: pos,
            next: Some(SaveCursor(slot)),
        })
    }
}

/// One structurally valid run.
struct Run<'p> {
    slot: usize,
    count: usize,
    body: Body<'p>,
}

enum Body<'p> {
    Raw(&'p [u8]),
    Linear(u64),
}

/// Structural parser: headers, bounds, slice containment, ordering.
struct RunReader<'p, 'q> {
    rest: &'p [u8],
    partition: &'q Partition,
    next_slot: usize,
}

impl<'p, 'q> RunReader<'p, 'q> {
    /// A reader at the start of `payload`.
    const fn new(payload: &'p [u8], partition: &'q Partition) -> Self {
        Self {
            rest: payload,
            partition,
            next_slot: 0,
        }
    }

    fn next_run(&mut self) -> Option<Result<Run<'p>, GttError>> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.parse_one();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }

    fn parse_one(&mut self) -> Result<Run<'p>, GttError> {
        let (h, rest) = RunHeader::ref_from_prefix(self.rest).map_err(|_| GttError::Truncated)?;
        if h.reserved != [0; 7] {
            return Err(GttError::NonZeroReserved);
        }
        let start = h.start.get();
        let count = h.count.get();
        if count == 0 {
            return Err(GttError::EmptyRun);
        }
        let last = start
            .checked_add(count - 1)
            .ok_or(GttError::CountOverflow)?;
        let count = usize::try_from(count).map_err(|_| GttError::CountOverflow)?;
        // The run must lie inside one slice (then it is contiguous in storage: when the hidden
        // slice's indices follow the aperture's directly, a run could otherwise straddle the
        // two). Slices are page aligned, so a slice holds index `i` exactly when
        // `i - first_index < pages`.
        let (ap, hid) = (&self.partition.aperture, &self.partition.hidden);
        let (s, l) = (u64::from(start), u64::from(last));
        let (first, pages, base_slot) = if s.wrapping_sub(ap.first_index()) < ap.pages() {
            (ap.first_index(), ap.pages(), 0)
        } else if s.wrapping_sub(hid.first_index()) < hid.pages() {
            (hid.first_index(), hid.pages(), ap.pages())
        } else {
            return Err(GttError::OutOfRange);
        };
        if l.wrapping_sub(first) >= pages {
            return Err(GttError::OutOfRange);
        }
        let slot = usize::try_from(base_slot + (s - first)).map_err(|_| GttError::OutOfRange)?;
        if slot < self.next_slot {
            return Err(GttError::RunOrder);
        }
        let (body, rest) = match h.kind {
            KIND_RAW => {
                let len = count.checked_mul(8).ok_or(GttError::CountOverflow)?;
                let (b, r) = rest.split_at_checked(len).ok_or(GttError::Truncated)?;
                (Body::Raw(b), r)
            }
            KIND_LINEAR => {
                let (t, r) = rest.split_first_chunk::<8>().ok_or(GttError::Truncated)?;
                let t = u64::from_le_bytes(*t);
                let span = u64::try_from(count - 1).map_err(|_| GttError::CountOverflow)?;
                let last = ((t & ADDR_MASK) >> PAGE_SHIFT)
                    .checked_add(span)
                    .ok_or(GttError::CountOverflow)?;
                if last > FRAME_MAX {
                    return Err(GttError::CountOverflow);
                }
                (Body::Linear(t), r)
            }
            _ => return Err(GttError::UnknownRunKind),
        };
        self.rest = rest;
        self.next_slot = slot + count;
        Ok(Run { slot, count, body })
    }
}

fn check_entry<F: Fn(Gfn) -> bool>(
    e: GgttEntry,
    frame_ok: &F,
    generation: Generation,
) -> Result<(), GttError> {
    e.validate(generation)?;
    if e.is_present() && !frame_ok(e.frame()) {
        return Err(GttError::FrameOutsideGuest);
    }
    Ok(())
}

/// Checks a payload completely against the vGPU's guest view (format and rules in the module
/// docs) without changing anything. `frame_ok` says whether a guest frame is inside guest
/// memory; it is called for the frame of every present entry (and may be called for the
/// address field of other entries, whose answer is ignored), so it must not have side effects.
///
/// [`validate_runs_with`] is the same check with a statically known predicate, which lets the
/// per-entry check vectorize.
///
/// # Errors
/// The first violation found; all are [`crate::Fault::Input`] errors.
pub fn validate_runs(
    payload: &[u8],
    partition: &Partition,
    frame_ok: &dyn Fn(Gfn) -> bool,
    generation: Generation,
) -> Result<RunStats, GttError> {
    validate_runs_with(payload, partition, frame_ok, generation)
}

/// RAW bodies are checked in blocks of this many entries: a branch-free pass over the block,
/// then an exact entry-by-entry pass only if the block holds a violation.
const CHECK_BLOCK: usize = 256;

/// [`validate_runs`] with the "inside guest memory" predicate as a generic parameter (for
/// example a closure comparing against the guest's frame count): same checks, same results,
/// same first error.
///
/// # Errors
/// As [`validate_runs`].
pub fn validate_runs_with<F: Fn(Gfn) -> bool>(
    payload: &[u8],
    partition: &Partition,
    frame_ok: F,
    generation: Generation,
) -> Result<RunStats, GttError> {
    partition.check()?;
    let allowed = generation.format().allowed_mask();
    let mut reader = RunReader::new(payload, partition);
    let mut stats = RunStats::default();
    while let Some(run) = reader.next_run() {
        let run = run?;
        match run.body {
            Body::Raw(bytes) => {
                for block in bytes.chunks(CHECK_BLOCK * 8) {
                    let (entries, _) = block.as_chunks::<8>();
                    let mut bad = 0u64;
                    for chunk in entries {
                        let e = u64::from_le_bytes(*chunk);
                        let outside = u64::from(!frame_ok(Gfn::new((e & ADDR_MASK) >> PAGE_SHIFT)));
                        bad |= (e & !allowed) | (outside & e & 1);
                    }
                    if bad != 0 {
                        for chunk in entries {
                            check_entry(
                                GgttEntry::from_bits(u64::from_le_bytes(*chunk)),
                                &frame_ok,
                                generation,
                            )?;
                        }
                    }
                }
            }
            Body::Linear(t) => {
                let template = GgttEntry::from_bits(t);
                template.validate(generation)?;
                if template.is_present() {
                    let first = template.addr_frame();
                    let span = u64::try_from(run.count - 1).map_err(|_| GttError::CountOverflow)?;
                    // The parser checked that `first + span` fits the address field.
                    for f in first..=first.saturating_add(span) {
                        if !frame_ok(Gfn::new(f)) {
                            return Err(GttError::FrameOutsideGuest);
                        }
                    }
                }
            }
        }
        stats.runs += 1;
        stats.entries += u64::try_from(run.count).map_err(|_| GttError::CountOverflow)?;
    }
    Ok(stats)
}

/// Writes a payload's runs into `slices`, which should have been cleared
/// ([`GgttSlices::clear`]) before the first payload. Call only after [`validate_runs`]
/// accepted the payload: entry contents are not checked again. The payload's structure is
/// checked in a first pass, so on error nothing has been written. Returns the number of
/// entries written.
///
/// # Errors
/// Structural errors as in [`validate_runs`].
pub fn apply_runs(payload: &[u8], slices: &mut GgttSlices<'_>) -> Result<usize, GttError> {
    let partition = *slices.partition();
    let mut check = RunReader::new(payload, &partition);
    while let Some(run) = check.next_run() {
        run?;
    }
    let storage = slices.storage_mut();
    let mut reader = RunReader::new(payload, &partition);
    let mut written: usize = 0;
    while let Some(run) = reader.next_run() {
        let run = run?;
        let end = run
            .slot
            .checked_add(run.count)
            .ok_or(GttError::CountOverflow)?;
        let dst = storage.get_mut(run.slot..end).ok_or(GttError::OutOfRange)?;
        match run.body {
            Body::Raw(bytes) => {
                for (d, chunk) in dst.iter_mut().zip(bytes.as_chunks::<8>().0) {
                    *d = u64::from_le_bytes(*chunk);
                }
            }
            Body::Linear(t) => {
                let mut v = t;
                for d in dst.iter_mut() {
                    *d = v;
                    v = v.wrapping_add(1 << PAGE_SHIFT);
                }
            }
        }
        written = written.saturating_add(run.count);
    }
    Ok(written)
}

/// Entries per block of the fused kernels ([`restore_runs`], [`validate_runs_in`]): 2 KiB
/// of payload and 2 KiB of table, so a checked block is still in L1 when it is copied.
const FUSED_BLOCK: usize = 256;

/// The address field of `e` for the span test. With `FULL` (the generation allows no bit
/// above the address field), `e` itself: an entry that passes the reserved-bit check has
/// nothing above bit 45 and only bits below 12 besides its address, which do not change how
/// it compares with page-aligned span bounds, and an entry that fails is rejected anyway.
#[inline(always)]
fn addr_of<const FULL: bool>(e: u64) -> u64 {
    if FULL { e } else { e & ADDR_MASK }
}

/// Whether `allowed` has no bit above the address field (the `FULL` kernels apply).
const fn full_kernel(allowed: u64) -> bool {
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
fn raw_bad<const N: usize, const LOW: bool, const FULL: bool>(
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
fn copy_checked<const N: usize, const LOW: bool, const FULL: bool>(
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
fn linear_ok(t: u64, count: usize, frames: &GuestFrames, allowed: u64) -> bool {
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

/// Fast path of [`validate_runs_in`]: `Some(stats)` if the payload is valid, `None` if
/// anything is wrong (the caller then finds the exact first error).
fn validate_fast<const N: usize, const LOW: bool, const FULL: bool>(
    payload: &[u8],
    partition: &Partition,
    frames: &GuestFrames,
    allowed: u64,
    spans: &Spans<N, LOW>,
) -> Option<RunStats> {
    let mut reader = RunReader::new(payload, partition);
    let mut stats = RunStats::default();
    while let Some(run) = reader.next_run() {
        let run = run.ok()?;
        let ok = match run.body {
            Body::Raw(bytes) => bytes
                .as_chunks::<8>()
                .0
                .chunks(FUSED_BLOCK)
                .all(|block| raw_bad::<N, LOW, FULL>(block, spans, allowed) == 0),
            Body::Linear(t) => linear_ok(t, run.count, frames, allowed),
        };
        if !ok {
            return None;
        }
        stats.runs += 1;
        stats.entries += u64::try_from(run.count).ok()?;
    }
    Some(stats)
}

/// [`validate_runs`] against a [`GuestFrames`] set: the same checks, results and first
/// error as `validate_runs(payload, partition, &|g| frames.contains(g), generation)`, but
/// the per-entry check is branch-free and vectorizes. Changes nothing.
///
/// # Errors
/// As [`validate_runs`].
pub fn validate_runs_in(
    payload: &[u8],
    partition: &Partition,
    frames: &GuestFrames,
    generation: Generation,
) -> Result<RunStats, GttError> {
    partition.check()?;
    let allowed = generation.format().allowed_mask();
    let fast = with_kernel!(
        frames,
        allowed,
        validate_fast(payload, partition, frames, allowed)
    );
    match fast {
        Some(stats) => Ok(stats),
        // Something is wrong: the exact first error, from the entry-by-entry check.
        None => validate_runs_with(payload, partition, |g| frames.contains(g), generation),
    }
}

/// Where the fast path of [`restore_runs`] stopped: it wrote `runs` whole runs, then
/// `partial` entries of the next one.
struct Stopped {
    runs: usize,
    partial: usize,
}

/// Fast path of [`restore_runs`]: parses, checks and copies block by block, writing a block
/// only after it passed the entry checks and its destination slots were found zero. Stops
/// at the first problem of any kind (including a non-zero destination slot).
///
/// With `clear_below` non-zero (for [`replace_runs`]), the table counts as cleared: the
/// slots below `clear_below` that no run covers are set to zero on the way, and every slot
/// counts as free.
#[allow(
    clippy::too_many_arguments,
    reason = "one private kernel behind restore_runs and replace_runs"
)]
fn restore_fast<const N: usize, const LOW: bool, const FULL: bool>(
    payload: &[u8],
    partition: &Partition,
    storage: &mut [u64],
    zero_from: usize,
    clear_below: usize,
    frames: &GuestFrames,
    allowed: u64,
    spans: &Spans<N, LOW>,
) -> Result<(RunStats, usize), Stopped> {
    let mut reader = RunReader::new(payload, partition);
    let mut stats = RunStats::default();
    let mut runs = 0usize;
    let mut end = 0usize;
    while let Some(run) = reader.next_run() {
        let stop = Stopped { runs, partial: 0 };
        let Ok(run) = run else { return Err(stop) };
        if end < clear_below {
            zero_gap(storage, end, run.slot.min(clear_below));
        }
        let Some(dst) = run
            .slot
            .checked_add(run.count)
            .and_then(|end| storage.get_mut(run.slot..end))
        else {
            return Err(stop);
        };
        match run.body {
            Body::Raw(bytes) => {
                let src = bytes.as_chunks::<8>().0;
                let mut partial = 0usize;
                // Slots from `zero_from` on are known to be zero; others are checked.
                let known_free = run.slot >= zero_from;
                for (s, d) in src.chunks(FUSED_BLOCK).zip(dst.chunks_mut(FUSED_BLOCK)) {
                    if !known_free && d.iter().fold(0u64, |acc, &x| acc | x) != 0 {
                        return Err(Stopped { runs, partial });
                    }
                    // The block was zero: written now, reset by the roll-back if it fails.
                    let bad = copy_checked::<N, LOW, FULL>(s, d, spans, allowed);
                    partial += d.len();
                    if bad != 0 {
                        return Err(Stopped { runs, partial });
                    }
                }
            }
            Body::Linear(t) => {
                let used = run.slot < zero_from && dst.iter().any(|&x| x != 0);
                if used || !linear_ok(t, run.count, frames, allowed) {
                    return Err(stop);
                }
                let mut v = t;
                for d in dst.iter_mut() {
                    *d = v;
                    v = v.wrapping_add(1 << PAGE_SHIFT);
                }
            }
        }
        end = run.slot + run.count;
        runs += 1;
        stats.runs += 1;
        stats.entries = stats.entries.saturating_add(run.count as u64);
    }
    if let Some(tail) = storage.get_mut(end..clear_below) {
        tail.fill(0);
    }
    Ok((stats, end))
}

/// Sets `storage[from..to]` to zero (a gap between runs in [`replace_runs`]).
fn zero_gap(storage: &mut [u64], from: usize, to: usize) {
    if let Some(gap) = storage.get_mut(from..to) {
        // Most gaps are a slot or two: stores, not a memset call.
        match gap {
            [] => {}
            [a] => *a = 0,
            [a, b] => (*a, *b) = (0, 0),
            _ => gap.fill(0),
        }
    }
}

/// Resets to zero what [`restore_fast`] wrote before it stopped (those slots were zero).
fn roll_back(payload: &[u8], partition: &Partition, storage: &mut [u64], stopped: &Stopped) {
    let mut reader = RunReader::new(payload, partition);
    let mut done = 0usize;
    while let Some(Ok(run)) = reader.next_run() {
        let n = if done < stopped.runs {
            run.count
        } else {
            stopped.partial
        };
        if let Some(d) = storage.get_mut(run.slot..run.slot.saturating_add(n)) {
            d.fill(0);
        }
        done += 1;
        if done > stopped.runs {
            break;
        }
    }
}

/// Validates a payload against the vGPU's guest view and guest memory `frames` and writes
/// its runs into `slices`, in one pass over the payload: the same result as
/// [`validate_runs_in`] followed (if it accepted) by [`apply_runs`], at close to the cost of
/// the copy alone.
///
/// All or nothing: on error `slices` is exactly as before the call. The single pass writes a
/// block of entries only after the block passed every check and its destination slots were
/// zero, and on a later error resets the written slots to zero. Slots are known to be zero,
/// without reading them, after [`GgttSlices::clear`] up to the first slot written since (by
/// any write, or by a run of an earlier payload); other slots are read and checked. If a destination slot is not
/// zero (the table was not cleared, or runs of an earlier payload overlap), the payload is
/// validated completely before anything is written, so the result is the same, only slower.
///
/// ```
/// use vgpu_mig_gtt::{frames::GuestFrames, restore_runs, Generation, Gfn, GgttEntry, GgttSlices,
///           GmAddr, GmRange, GttIndex, Partition, SaveCursor};
///
/// let partition = Partition::new(GmRange::new(GmAddr::new(0), 0x4000)?, GmRange::EMPTY)?;
/// let mut a = [0u64; 4];
/// let mut src = GgttSlices::new(partition, &mut a)?;
/// src.write(GttIndex::new(1), GgttEntry::present_frame(Gfn::new(0x42))?)?;
/// let mut buf = [0u8; 64];
/// let n = src.save_runs(SaveCursor::START, &mut buf)?.written;
///
/// let ram = GuestFrames::from_ranges([(Gfn::new(0), 0x100)])?;
/// let mut b = [0u64; 4];
/// let mut dst = GgttSlices::new(partition, &mut b)?;
/// let stats = restore_runs(&buf[..n], &mut dst, &ram, Generation::Gen9)?;
/// assert_eq!((stats.runs, stats.entries), (1, 1));
/// assert_eq!(dst.entries(), src.entries());
///
/// // Guest memory without frame 0x42: rejected, nothing written.
/// let small = GuestFrames::from_ranges([(Gfn::new(0), 0x40)])?;
/// let mut c = [0u64; 4];
/// let mut dst = GgttSlices::new(partition, &mut c)?;
/// assert_eq!(
///     restore_runs(&buf[..n], &mut dst, &small, Generation::Gen9),
///     Err(vgpu_mig_gtt::GttError::FrameOutsideGuest)
/// );
/// assert_eq!(dst.entries(), &[0; 4]);
/// # Ok::<(), vgpu_mig_gtt::GttError>(())
/// ```
///
/// # Errors
/// As [`validate_runs`]: the first violation in payload order.
pub fn restore_runs(
    payload: &[u8],
    slices: &mut GgttSlices<'_>,
    frames: &GuestFrames,
    generation: Generation,
) -> Result<RunStats, GttError> {
    let zero_from = slices.zero_from();
    match fast_pass(payload, slices, frames, generation, zero_from, 0)? {
        Ok((stats, end)) => {
            // Runs ascend: nothing at or after the last run's end was written.
            slices.set_zero_from(zero_from.max(end));
            Ok(stats)
        }
        Err(stopped) => {
            let partition = *slices.partition();
            roll_back(payload, &partition, slices.storage_mut(), &stopped);
            // The roll-back restored every written slot to zero.
            slices.set_zero_from(zero_from);
            let stats = validate_runs_in(payload, &partition, frames, generation)?;
            apply_runs(payload, slices)?;
            Ok(stats)
        }
    }
}

/// [`restore_fast`] over the storage of `slices`, with the kernel for `frames` and
/// `generation`. The outer error is a bad partition; the inner one says where the pass
/// stopped. Leaves the slices' zero mark unknown (the caller sets it).
fn fast_pass(
    payload: &[u8],
    slices: &mut GgttSlices<'_>,
    frames: &GuestFrames,
    generation: Generation,
    zero_from: usize,
    clear_below: usize,
) -> Result<Result<(RunStats, usize), Stopped>, GttError> {
    let partition = *slices.partition();
    partition.check()?;
    let allowed = generation.format().allowed_mask();
    let storage = slices.storage_mut();
    Ok(with_kernel!(
        frames,
        allowed,
        restore_fast(
            payload,
            &partition,
            storage,
            zero_from,
            clear_below,
            frames,
            allowed
        )
    ))
}

/// Clears the table and restores `payload` into it, in one pass: the same result as
/// [`GgttSlices::clear`] followed by [`restore_runs`], on success and on error (then the
/// table is left cleared), without writing the table twice. Slots no run covers are zeroed
/// as the pass reaches them; slots nothing was written to since the last clear are not
/// touched at all.
///
/// ```
/// use vgpu_mig_gtt::{frames::GuestFrames, replace_runs, Generation, Gfn, GgttEntry, GgttSlices,
///           GmAddr, GmRange, GttIndex, Partition, SaveCursor};
///
/// let partition = Partition::new(GmRange::new(GmAddr::new(0), 0x4000)?, GmRange::EMPTY)?;
/// let mut a = [0u64; 4];
/// let mut src = GgttSlices::new(partition, &mut a)?;
/// src.write(GttIndex::new(2), GgttEntry::present_frame(Gfn::new(0x42))?)?;
/// let mut buf = [0u8; 64];
/// let n = src.save_runs(SaveCursor::START, &mut buf)?.written;
///
/// // A destination table that still holds an older mapping at index 0.
/// let ram = GuestFrames::from_ranges([(Gfn::new(0), 0x100)])?;
/// let mut b = [0u64; 4];
/// let mut dst = GgttSlices::new(partition, &mut b)?;
/// dst.write(GttIndex::new(0), GgttEntry::present_frame(Gfn::new(0x7))?)?;
/// replace_runs(&buf[..n], &mut dst, &ram, Generation::Gen9)?;
/// assert_eq!(dst.entries(), src.entries());
/// # Ok::<(), vgpu_mig_gtt::GttError>(())
/// ```
///
/// # Errors
/// As [`restore_runs`].
pub fn replace_runs(
    payload: &[u8],
    slices: &mut GgttSlices<'_>,
    frames: &GuestFrames,
    generation: Generation,
) -> Result<RunStats, GttError> {
    // Slots from here on are zero already; below it, what no run covers is zeroed.
    let dirty_end = slices.zero_from();
    slices.clear_pending();
    match fast_pass(payload, slices, frames, generation, 0, dirty_end) {
        Ok(Ok((stats, end))) => {
            slices.set_zero_from(end);
            Ok(stats)
        }
        Ok(Err(_)) => {
            // Leave the table cleared, then let `restore_runs` find the exact first error.
            slices.clear();
            restore_runs(payload, slices, frames, generation)
        }
        Err(e) => {
            // A bad partition, found before anything was written: cleared all the same.
            slices.clear();
            Err(e)
        }
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
    use crate::entry::GgttEntry;
    use crate::partition::GmRange;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// Aperture: 8 pages at guest GM 0x100000 (indices 0x100..0x108);
    /// hidden: 8 pages at guest GM 0x40000 (indices 0x40..0x48) – below the aperture.
    fn part() -> Partition {
        Partition::new(
            GmRange::new(GmAddr::new(0x10_0000), 0x8000).unwrap(),
            GmRange::new(GmAddr::new(0x4_0000), 0x8000).unwrap(),
        )
        .unwrap()
    }

    fn all_ok(_: Gfn) -> bool {
        true
    }

    fn header(start: u32, count: u32, kind: u8) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&start.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        v.push(kind);
        v.extend_from_slice(&[0; 7]);
        v
    }

    fn save_all(g: &GgttSlices<'_>, chunk: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = SaveCursor::START;
        loop {
            let mut buf = vec![0u8; chunk];
            let p = g.save_runs(cur, &mut buf).unwrap();
            buf.truncate(p.written);
            out.push(buf);
            match p.next {
                Some(n) => cur = n,
                None => return out,
            }
        }
    }

    #[test]
    fn emit_exact_bytes() {
        let mut s = [0u64; 16];
        s[1] = 0x5001;
        s[2] = 0x9001;
        s[3] = 0x7_0000_0000_0000; // non-present, other bits: kept
        s[8] = 0x1_0003;
        s[9] = 0x1_1003;
        s[10] = 0x1_2003;
        let g = GgttSlices::new(part(), &mut s).unwrap();
        let payloads = save_all(&g, 256);
        assert_eq!(payloads.len(), 1);
        let mut expect = header(0x101, 3, KIND_RAW);
        for e in [0x5001u64, 0x9001, 0x7_0000_0000_0000] {
            expect.extend_from_slice(&e.to_le_bytes());
        }
        expect.extend_from_slice(&header(0x40, 3, KIND_LINEAR));
        expect.extend_from_slice(&0x1_0003u64.to_le_bytes());
        assert_eq!(payloads[0], expect);
    }

    #[test]
    fn empty_table_saves_nothing() {
        let mut s = [0u64; 16];
        let g = GgttSlices::new(part(), &mut s).unwrap();
        let p = g.save_runs(SaveCursor::START, &mut []).unwrap();
        assert_eq!(
            p,
            SaveProgress {
                written: 0,
                next: None
            }
        );
        assert_eq!(
            validate_runs(&[], &part(), &all_ok, Generation::Gen9),
            Ok(RunStats::default())
        );
    }

    #[test]
    fn chunked_save_and_small_buffer() {
        let mut s = [0u64; 16];
        for (i, e) in s.iter_mut().enumerate() {
            *e = ((i as u64 * 7) << 12) | 1; // not linear
        }
        let g = GgttSlices::new(part(), &mut s).unwrap();
        let mut small = [0u8; MIN_SAVE_BUFFER - 1];
        assert_eq!(
            g.save_runs(SaveCursor::START, &mut small),
            Err(GttError::BufferTooSmall)
        );
        let payloads = save_all(&g, 40);
        // Each 40-byte buffer holds one run of 3 entries (16 + 24).
        assert_eq!(payloads.len(), 6);
        let mut d = [0u64; 16];
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        for p in &payloads {
            validate_runs(p, &part(), &all_ok, Generation::Gen9).unwrap();
            apply_runs(p, &mut dst).unwrap();
        }
        drop(dst);
        assert_eq!(d, s);
    }

    #[test]
    fn validation_failures() {
        let p = part();
        let v = |b: &[u8]| validate_runs(b, &p, &all_ok, Generation::Gen9);
        let raw = |start, entries: &[u64]| {
            let mut b = header(start, u32::try_from(entries.len()).unwrap(), KIND_RAW);
            for e in entries {
                b.extend_from_slice(&e.to_le_bytes());
            }
            b
        };
        assert_eq!(
            v(&raw(0x100, &[0x5001])),
            Ok(RunStats {
                entries: 1,
                runs: 1
            })
        );
        // Frame outside guest memory.
        let small_ram = |f: Gfn| f.get() < 0x5;
        assert_eq!(
            validate_runs(&raw(0x100, &[0x5001]), &p, &small_ram, Generation::Gen9),
            Err(GttError::FrameOutsideGuest)
        );
        // Non-present entries are not frame-checked.
        assert!(validate_runs(&raw(0x100, &[0x5000]), &p, &small_ram, Generation::Gen9).is_ok());
        // Reserved bit.
        assert_eq!(
            v(&raw(0x100, &[0x5001 | (1 << 50)])),
            Err(GttError::ReservedBits)
        );
        assert_eq!(
            validate_runs(&raw(0x100, &[0x5081]), &p, &all_ok, Generation::Gen12),
            Err(GttError::ReservedBits)
        );
        // Index out of range: before, after, and straddling a slice end.
        assert_eq!(v(&raw(0xFF, &[0x5001])), Err(GttError::OutOfRange));
        assert_eq!(v(&raw(0x108, &[0x5001])), Err(GttError::OutOfRange));
        assert_eq!(v(&raw(0x107, &[1, 1])), Err(GttError::OutOfRange));
        // Truncated header and body.
        let full = raw(0x100, &[0x5001, 0x6001]);
        for cut in [1, 15, 16, 20, 31] {
            assert_eq!(v(&full[..cut]), Err(GttError::Truncated), "cut {cut}");
        }
        let mut lin = header(0x100, 2, KIND_LINEAR);
        lin.extend_from_slice(&[1, 0, 0]);
        assert_eq!(v(&lin), Err(GttError::Truncated));
        // Count overflow: start + count wraps u32; huge raw count.
        assert_eq!(
            v(&header(u32::MAX, 2, KIND_RAW)),
            Err(GttError::CountOverflow)
        );
        assert_eq!(
            v(&header(0x100, u32::MAX, KIND_RAW)),
            Err(GttError::CountOverflow)
        );
        assert_eq!(
            v(&header(0x100, 0x1000_0000, KIND_RAW)),
            Err(GttError::OutOfRange)
        );
        assert_eq!(v(&header(0x100, 8, KIND_RAW)), Err(GttError::Truncated));
        // Linear run whose frames leave the address field.
        let mut lin = header(0x100, 2, KIND_LINEAR);
        lin.extend_from_slice(&((FRAME_MAX << 12) | 1).to_le_bytes());
        assert_eq!(v(&lin), Err(GttError::CountOverflow));
        // Zero count, unknown kind, reserved bytes.
        assert_eq!(v(&header(0x100, 0, KIND_RAW)), Err(GttError::EmptyRun));
        let mut bad = raw(0x100, &[1]);
        bad[8] = 2;
        assert_eq!(v(&bad), Err(GttError::UnknownRunKind));
        bad[8] = 0;
        bad[15] = 1;
        assert_eq!(v(&bad), Err(GttError::NonZeroReserved));
        // Order: hidden (slots 8..) then aperture (slots 0..) is out of storage order.
        let mut two = raw(0x40, &[1]);
        two.extend_from_slice(&raw(0x100, &[1]));
        assert_eq!(v(&two), Err(GttError::RunOrder));
        let mut overlap = raw(0x100, &[1, 1]);
        overlap.extend_from_slice(&raw(0x101, &[1]));
        assert_eq!(v(&overlap), Err(GttError::RunOrder));
        let mut ordered = raw(0x100, &[1]);
        ordered.extend_from_slice(&raw(0x40, &[1]));
        assert_eq!(
            v(&ordered),
            Ok(RunStats {
                entries: 2,
                runs: 2
            })
        );
    }

    #[test]
    fn apply_is_all_or_nothing_structurally() {
        let mut d = [0u64; 16];
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        let mut b = header(0x100, 1, KIND_RAW);
        b.extend_from_slice(&0x5001u64.to_le_bytes());
        b.extend_from_slice(&header(0x101, 1, KIND_RAW)); // truncated second run
        assert_eq!(apply_runs(&b, &mut dst), Err(GttError::Truncated));
        assert_eq!(dst.entries(), &[0; 16]);
    }

    fn table() -> impl Strategy<Value = Vec<u64>> {
        // Mix of zeros, random valid entries, and linear stretches.
        let piece = prop_oneof![
            (1usize..5).prop_map(|n| vec![0u64; n]),
            proptest::collection::vec(
                (0u64..0x1_0000, any::<bool>(), 0u64..0x9C)
                    .prop_map(|(f, p, flags)| { (f << 12) | (flags & 0x9A) | u64::from(p) }),
                1..6
            ),
            // Linear stretches stay below frame 0x1_0000 (the round trip's guest memory).
            (0u64..0x1_0000 - 12, 2usize..12)
                .prop_map(|(f, n)| { (0..n as u64).map(|i| ((f + i) << 12) | 0x3).collect() }),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| {
            let mut t: Vec<u64> = v.into_iter().flatten().collect();
            t.resize(16, 0);
            t
        })
    }

    /// Aperture: 96 pages at guest GM 0x100000; hidden: 160 pages at guest GM 0x400000.
    fn big_part() -> Partition {
        Partition::new(
            GmRange::new(GmAddr::new(0x10_0000), 96 * 0x1000).unwrap(),
            GmRange::new(GmAddr::new(0x40_0000), 160 * 0x1000).unwrap(),
        )
        .unwrap()
    }

    /// The straightforward encoder (entry-by-entry scan): `save_runs` must match it byte for byte.
    fn reference_save(t: &[u64], ap_pages: usize, p: &Partition, room: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut slot = 0;
        loop {
            while t.get(slot) == Some(&0) {
                slot += 1;
            }
            if slot >= t.len() {
                return (out, slot);
            }
            let end = if slot < ap_pages { ap_pages } else { t.len() };
            let run = &t[slot..end];
            let start = p.index_at(slot).unwrap().get();
            let left = room - out.len();
            if left < MIN_SAVE_BUFFER {
                return (out, slot);
            }
            let lin = linear_len(run, run.len());
            let n = if lin >= LINEAR_MIN_START {
                out.extend_from_slice(&header(start, u32::try_from(lin).unwrap(), KIND_LINEAR));
                out.extend_from_slice(&run[0].to_le_bytes());
                lin
            } else {
                let mut n = 1;
                while n < run.len()
                    && run[n] != 0
                    && linear_len(&run[n..], LINEAR_MIN_BREAK) < LINEAR_MIN_BREAK
                {
                    n += 1;
                }
                let n = n.min((left - RUN_HEADER_LEN) / 8);
                out.extend_from_slice(&header(start, u32::try_from(n).unwrap(), KIND_RAW));
                for e in &run[..n] {
                    out.extend_from_slice(&e.to_le_bytes());
                }
                n
            };
            slot += n;
        }
    }

    fn big_table() -> impl Strategy<Value = Vec<u64>> {
        // Long RAW stretches (so the block scan runs), linear stretches of every length around
        // the break threshold, near-misses (one page apart but other bits differ), zeros.
        let raw = (0u64..0x1_0000).prop_map(|f| (f << 12) | 1);
        let piece = prop_oneof![
            (1usize..4).prop_map(|n| vec![0u64; n]),
            proptest::collection::vec(raw, 1..80),
            (0u64..0x1_0000 - 10, 2usize..10)
                .prop_map(|(f, n)| (0..n as u64).map(|i| ((f + i) << 12) | 0x3).collect()),
            (0u64..0x1_0000 - 10, 2usize..10).prop_map(|(f, n)| (0..n as u64)
                .map(|i| ((f + i) << 12) | 0x3 | ((i & 1) << 4))
                .collect()),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| {
            let mut t: Vec<u64> = v.into_iter().flatten().collect();
            t.resize(256, 0);
            t
        })
    }

    #[test]
    fn long_raw_runs_exact_bytes() {
        // 100 non-linear entries fill the aperture (96) and spill into the hidden slice; a
        // linear stretch of exactly LINEAR_MIN_BREAK breaks the hidden RAW run, one shorter
        // does not.
        let mut t = vec![0u64; 256];
        for (i, e) in t.iter_mut().enumerate().take(100) {
            *e = (((i as u64) * 3) << 12) | 1;
        }
        for (i, e) in (0u64..).zip(&mut t[150..156]) {
            *e = ((0x500 + i) << 12) | 3;
        }
        for (i, e) in (0u64..).zip(&mut t[140..145]) {
            *e = ((0x700 + i) << 12) | 3;
        }
        t[139] = 0x9001;
        let mut s = t.clone();
        let g = GgttSlices::new(big_part(), &mut s).unwrap();
        let mut buf = vec![0u8; 4096];
        let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
        assert_eq!(p.next, None);
        let mut expect = header(0x100, 96, KIND_RAW);
        for e in &t[..96] {
            expect.extend_from_slice(&e.to_le_bytes());
        }
        expect.extend_from_slice(&header(0x400, 4, KIND_RAW));
        for e in &t[96..100] {
            expect.extend_from_slice(&e.to_le_bytes());
        }
        // Slot 139 (index 0x400 + 43) starts a RAW run of 1 + 5 entries (a linear stretch of
        // 5 stays RAW), zeros, then a LINEAR run of 6.
        expect.extend_from_slice(&header(0x400 + 43, 6, KIND_RAW));
        for e in &t[139..145] {
            expect.extend_from_slice(&e.to_le_bytes());
        }
        expect.extend_from_slice(&header(0x400 + 54, 6, KIND_LINEAR));
        expect.extend_from_slice(&t[150].to_le_bytes());
        assert_eq!(&buf[..p.written], &expect[..]);
    }

    proptest::proptest! {
        #[test]
        fn save_validate_apply_round_trip(t in table(), chunk in MIN_SAVE_BUFFER..200usize) {
            let mut s = [0u64; 16];
            s.copy_from_slice(&t);
            let g = GgttSlices::new(part(), &mut s).unwrap();
            let payloads = save_all(&g, chunk);
            let mut d = [0u64; 16];
            let mut dst = GgttSlices::new(part(), &mut d).unwrap();
            let mut total = 0;
            for p in &payloads {
                let stats = validate_runs(p, &part(), &|f: Gfn| f.get() < 0x1_0000, Generation::Gen9)
                    .unwrap();
                prop_assert_eq!(apply_runs(p, &mut dst).unwrap() as u64, stats.entries);
                total += stats.entries;
            }
            drop(dst);
            prop_assert_eq!(&d[..], &t[..]);
            prop_assert!(total >= t.iter().filter(|e| **e != 0).count() as u64);
        }

        #[test]
        fn save_matches_reference_encoder(t in big_table(), room in MIN_SAVE_BUFFER..3000usize) {
            let mut s = t.clone();
            let g = GgttSlices::new(big_part(), &mut s).unwrap();
            let mut buf = vec![0u8; room];
            let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
            let (expect, next) = reference_save(&t, 96, &big_part(), room);
            prop_assert_eq!(&buf[..p.written], &expect[..]);
            prop_assert_eq!(p.next.map_or(t.len(), SaveCursor::slot), next);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = validate_runs(&bytes, &part(), &all_ok, Generation::Mtl);
            let mut d = [0u64; 16];
            let mut dst = GgttSlices::new(part(), &mut d).unwrap();
            let _ = apply_runs(&bytes, &mut dst);
        }

        #[test]
        fn restore_and_validate_in_match_reference(
            t in big_table(),
            flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..3),
            cover in any::<bool>(),
            extra in proptest::collection::vec((0u64..0x1_2000, 0u64..0x9000), 0..5),
            used in proptest::collection::vec((0usize..256, any::<u64>()), 0..3),
            gen_pick in 0usize..4,
            bad_entry in proptest::option::of((any::<usize>(), 0u8..3)),
        ) {
            // A saved table, then damage: byte flips anywhere (headers and bodies), and one
            // 8-byte word (an entry, or half a header) given a reserved bit, a frame outside
            // guest memory, or a cleared present bit.
            let generation = [Generation::Gen8, Generation::Gen9, Generation::Gen12, Generation::Mtl][gen_pick];
            let mut s = t.clone();
            let g = GgttSlices::new(big_part(), &mut s).unwrap();
            let mut payload = vec![0u8; 256 * 8 + 256 * RUN_HEADER_LEN];
            let p = g.save_runs(SaveCursor::START, &mut payload).unwrap();
            payload.truncate(p.written);
            if let Some((at, what)) = bad_entry {
                let words = payload.len() / 8;
                if words != 0 {
                    let i = (at % words) * 8;
                    let mut e = u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
                    e = match what {
                        0 => e | (1 << 50),
                        1 => (e & !ADDR_MASK) | (0x1_1800 << PAGE_SHIFT) | 1,
                        _ => e & !1,
                    };
                    payload[i..i + 8].copy_from_slice(&e.to_le_bytes());
                }
            }
            for (at, x) in &flips {
                if !payload.is_empty() {
                    let n = payload.len();
                    payload[at % n] ^= x;
                }
            }
            // Guest memory: random ranges, half the time plus one holding every saved frame
            // (the table's frames are below 0x1_0000), split in two at a random frame.
            let mut ranges = extra.clone();
            if cover {
                let cut = extra.first().map_or(0x8000, |r| r.0 % 0x1_0000);
                ranges.push((cut, 0x1_0000 - cut));
                ranges.push((0, cut));
            }
            let frames = GuestFrames::from_ranges(ranges.iter().map(|&(a, n)| (Gfn::new(a), n))).unwrap();
            let ok = |f: Gfn| ranges.iter().any(|&(a, n)| f.get() >= a && f.get() < a + n);

            let reference = validate_runs(&payload, &big_part(), &ok, generation);
            prop_assert_eq!(validate_runs_in(&payload, &big_part(), &frames, generation), reference);

            // Destination: cleared, or with a few slots in use (the slow path).
            let mut before = vec![0u64; 256];
            for &(slot, v) in &used {
                before[slot] = v;
            }
            let mut expect = before.clone();
            if reference.is_ok() {
                let mut e = GgttSlices::new(big_part(), &mut expect).unwrap();
                apply_runs(&payload, &mut e).unwrap();
            }
            let mut got = before.clone();
            let mut dst = GgttSlices::new(big_part(), &mut got).unwrap();
            prop_assert_eq!(restore_runs(&payload, &mut dst, &frames, generation), reference);
            drop(dst);
            prop_assert_eq!(got, expect);
        }
    }

    /// A guest write of `v` at `i`: whole (`how` 0), as two halves (1), or one held half (2).
    fn guest_write(x: &mut GgttSlices<'_>, i: GttIndex, v: u64, how: u8) {
        let lo = u32::try_from(v & 0xFFFF_FFFF).unwrap();
        let hi = u32::try_from(v >> 32).unwrap();
        match how {
            0 => x.write(i, GgttEntry::from_bits(v)).unwrap(),
            1 => {
                x.write_half(i, false, lo).unwrap();
                x.write_half(i, true, hi).unwrap();
            }
            _ => {
                x.write_half(i, false, lo).unwrap();
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn restore_after_clear_and_writes_matches_reference(
            t in big_table(),
            chunk in MIN_SAVE_BUFFER..600usize,
            writes in proptest::collection::vec((0usize..256, any::<u64>(), 0u8..3), 0..4),
            reverse in any::<bool>(),
            flip in proptest::option::of((any::<usize>(), any::<usize>(), 1u8..=255)),
        ) {
            // Several payloads restored one after the other into a cleared table that has
            // seen some guest writes (whole entries and completed halves): every payload's
            // result and the final table equal validate_runs + apply_runs on a plain copy.
            let mut s = t.clone();
            let g = GgttSlices::new(big_part(), &mut s).unwrap();
            let mut payloads = save_all(&g, chunk);
            if let Some((which, at, x)) = flip {
                let n = payloads.len();
                let p = &mut payloads[which % n];
                if !p.is_empty() {
                    let n = p.len();
                    p[at % n] ^= x;
                }
            }
            if reverse {
                payloads.reverse();
            }
            let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x1_0000)]).unwrap();
            let ok = |f: Gfn| f.get() < 0x1_0000;
            let mut model = vec![0x55u64; 256];
            let mut d = vec![0x55u64; 256];
            let mut dst = GgttSlices::new(big_part(), &mut d).unwrap();
            dst.clear();
            model.fill(0);
            {
                let mut m = GgttSlices::new(big_part(), &mut model).unwrap();
                for &(slot, v, how) in &writes {
                    let i = big_part().index_at(slot).unwrap();
                    guest_write(&mut dst, i, v, how);
                    guest_write(&mut m, i, v, how);
                }
            }
            for p in &payloads {
                let reference = validate_runs(p, &big_part(), &ok, Generation::Gen9);
                if reference.is_ok() {
                    let mut m = GgttSlices::new(big_part(), &mut model).unwrap();
                    apply_runs(p, &mut m).unwrap();
                }
                prop_assert_eq!(restore_runs(p, &mut dst, &frames, Generation::Gen9), reference);
                prop_assert_eq!(dst.entries(), &model[..]);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn replace_equals_clear_then_restore(
            old in big_table(),
            t in big_table(),
            chunk in MIN_SAVE_BUFFER..600usize,
            cleared_first in any::<bool>(),
            writes in proptest::collection::vec((0usize..256, any::<u64>(), 0u8..3), 0..4),
            flip in proptest::option::of((any::<usize>(), 1u8..=255)),
        ) {
            // A destination that holds an older table (as it is, or cleared and then written
            // by the guest, with held halves), replaced by the first payload of `t` and
            // completed by the rest: the same results, entries and held halves as clear()
            // followed by restore_runs, whether the first payload is valid or damaged.
            let mut s = t.clone();
            let g = GgttSlices::new(big_part(), &mut s).unwrap();
            let mut payloads = save_all(&g, chunk);
            if let Some((at, x)) = flip
                && let Some(p) = payloads.first_mut()
                && !p.is_empty()
            {
                let n = p.len();
                p[at % n] ^= x;
            }
            let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x1_0000)]).unwrap();
            let (mut a, mut b) = (old.clone(), old);
            let mut fused = GgttSlices::new(big_part(), &mut a).unwrap();
            let mut reference = GgttSlices::new(big_part(), &mut b).unwrap();
            if cleared_first {
                fused.clear();
                reference.clear();
            }
            for &(slot, v, how) in &writes {
                let i = big_part().index_at(slot).unwrap();
                guest_write(&mut fused, i, v, how);
                guest_write(&mut reference, i, v, how);
            }
            reference.clear();
            for (k, p) in payloads.iter().enumerate() {
                let got = if k == 0 {
                    replace_runs(p, &mut fused, &frames, Generation::Gen9)
                } else {
                    restore_runs(p, &mut fused, &frames, Generation::Gen9)
                };
                let want = restore_runs(p, &mut reference, &frames, Generation::Gen9);
                prop_assert_eq!(got, want);
                prop_assert_eq!(fused.entries(), reference.entries());
                prop_assert_eq!(fused.pending_halves(), reference.pending_halves());
            }
            if payloads.is_empty() {
                replace_runs(&[], &mut fused, &frames, Generation::Gen9).unwrap();
                prop_assert!(fused.entries().iter().all(|&e| e == 0));
            }
        }
    }

    #[test]
    fn restore_linear_runs_across_merged_ranges() {
        // Guest memory given as two adjacent ranges: a LINEAR run crossing the seam is inside.
        let mut payload = header(0x100, 8, KIND_LINEAR);
        payload.extend_from_slice(&((0xC_u64 << PAGE_SHIFT) | 1).to_le_bytes());
        let p = part();
        let frames =
            GuestFrames::from_ranges([(Gfn::new(0x10), 0x10), (Gfn::new(0), 0x10)]).unwrap();
        assert_eq!(frames.spans(), &[(0, 0x20)]);
        let mut d = [0u64; 16];
        let mut dst = GgttSlices::new(p, &mut d).unwrap();
        let stats = restore_runs(&payload, &mut dst, &frames, Generation::Gen9).unwrap();
        assert_eq!((stats.runs, stats.entries), (1, 8));
        assert_eq!(d[7], (0x13 << PAGE_SHIFT) | 1);
        // One frame short: rejected, nothing written.
        let short = GuestFrames::from_ranges([(Gfn::new(0), 0x13)]).unwrap();
        let mut d = [0u64; 16];
        let mut dst = GgttSlices::new(p, &mut d).unwrap();
        assert_eq!(
            restore_runs(&payload, &mut dst, &short, Generation::Gen9),
            Err(GttError::FrameOutsideGuest)
        );
        assert_eq!(d, [0; 16]);
    }

    #[test]
    fn restore_rolls_back_earlier_runs() {
        // Two good runs, then a third with a reserved bit: the first two are undone.
        let raw = |start, entries: &[u64]| {
            let mut b = header(start, u32::try_from(entries.len()).unwrap(), KIND_RAW);
            for e in entries {
                b.extend_from_slice(&e.to_le_bytes());
            }
            b
        };
        let mut payload = raw(0x100, &[0x5001, 0x6001]);
        payload.extend_from_slice(&raw(0x104, &[0x7001]));
        payload.extend_from_slice(&raw(0x40, &[0x8001, 0x9001 | (1 << 60)]));
        let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x100)]).unwrap();
        let mut d = [0u64; 16];
        d[6] = 0x1234;
        let before = d;
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        assert_eq!(
            restore_runs(&payload, &mut dst, &frames, Generation::Gen9),
            Err(GttError::ReservedBits)
        );
        assert_eq!(d, before);
    }
}
