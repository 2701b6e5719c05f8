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
//! ([`GgttSlices::clear`](crate::GgttSlices::clear), or [`replace_runs`], which clears in the same pass as it restores). The encoder omits zero entries and nothing else, so non-present
//! entries with other bits set survive the round trip exactly. One GGTT may be split over
//! several payloads with [`SaveCursor`]; each payload is validated and applied on its own.
//!
//! # Where each duty lives
//!
//! - this module: the format (run header, kinds, the structural reader every check and apply
//!   step shares) and the types of the public entry points;
//! - `encode`: the encoder ([`GgttSlices::save_runs`](crate::GgttSlices::save_runs), and [`GgttSlices::save_changed_runs`](crate::GgttSlices::save_changed_runs)
//!   for what changed since a pre-copy);
//! - `validate`: [`validate_runs`] (the reference, entry by entry) and [`validate_runs_in`]
//!   (the vectorized check the destination uses);
//! - `apply`: [`apply_runs`] (the reference), [`restore_runs`] and [`replace_runs`] (checking
//!   and copying in one pass);
//! - `kernel`: the branch-free per-entry kernels the fused paths share;
//! - `section`: the `GGTT_RUNS` and `GGTT_PENDING` records as [`migstream::Section`]s.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::addr::PAGE_SHIFT;
use crate::entry::{ADDR_MASK, FRAME_MAX};
use crate::error::GttError;
use crate::partition::Partition;

mod apply;
mod encode;
mod kernel;
mod section;
#[cfg(test)]
mod tests;
mod validate;

pub use apply::{apply_runs, replace_runs, restore_runs};
#[cfg(test)]
use encode::linear_len;
pub use section::{GgttPendingSection, GgttRunsSection, RunsCheck, RunsSource, RunsTarget};
pub use validate::{validate_runs, validate_runs_in};

/// Size of a run header in bytes.
pub const RUN_HEADER_LEN: usize = 16;
/// Smallest output buffer [`GgttSlices::save_runs`](crate::GgttSlices::save_runs) can always make progress with.
pub const MIN_SAVE_BUFFER: usize = RUN_HEADER_LEN + 8;

pub(crate) const KIND_RAW: u8 = 0;
pub(crate) const KIND_LINEAR: u8 = 1;
/// A LINEAR run is started at a run boundary when at least this many entries continue it.
pub(crate) const LINEAR_MIN_START: usize = 2;
/// A RAW run is cut short for a LINEAR run of at least this many entries.
pub(crate) const LINEAR_MIN_BREAK: usize = 6;

/// Wire layout of a run header (shared with other implementations: see the module docs).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RunHeader {
    pub(crate) start: U32,
    pub(crate) count: U32,
    pub(crate) kind: u8,
    pub(crate) reserved: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<RunHeader>() == RUN_HEADER_LEN);

/// Where [`GgttSlices::save_runs`](crate::GgttSlices::save_runs) continues: an opaque position in storage order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SaveCursor(pub(crate) usize);

impl SaveCursor {
    /// The beginning of the table.
    pub const START: Self = Self(0);

    /// The storage slot the next save starts at.
    #[must_use]
    pub const fn slot(self) -> usize {
        self.0
    }
}

/// Result of one [`GgttSlices::save_runs`](crate::GgttSlices::save_runs) call.
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

/// One structurally valid run.
pub(crate) struct Run<'p> {
    pub(crate) slot: usize,
    pub(crate) count: usize,
    pub(crate) body: Body<'p>,
}

pub(crate) enum Body<'p> {
    Raw(&'p [u8]),
    Linear(u64),
}

/// Structural parser: headers, bounds, slice containment, ordering.
pub(crate) struct RunReader<'p, 'q> {
    rest: &'p [u8],
    partition: &'q Partition,
    next_slot: usize,
}

impl<'p, 'q> RunReader<'p, 'q> {
    /// A reader at the start of `payload`.
    pub(crate) const fn new(payload: &'p [u8], partition: &'q Partition) -> Self {
        Self {
            rest: payload,
            partition,
            next_slot: 0,
        }
    }

    pub(crate) fn next_run(&mut self) -> Option<Result<Run<'p>, GttError>> {
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

/// The storage slots a payload's runs cover: from its first run's first slot to its last run's
/// end (runs ascend in storage order within a payload). `None` for an empty payload or one that
/// does not parse (check it first: [`validate_runs_in`]).
#[must_use]
pub fn slot_span(payload: &[u8], partition: &Partition) -> Option<core::ops::Range<usize>> {
    let mut reader = RunReader::new(payload, partition);
    let mut span: Option<core::ops::Range<usize>> = None;
    while let Some(run) = reader.next_run() {
        let run = run.ok()?;
        let end = run.slot.checked_add(run.count)?;
        span = Some(span.map_or(run.slot, |s| s.start)..end);
    }
    span
}
