//! The GGTT's records as [`migstream::Section`]s: `GGTT_RUNS` (this module's run format) and
//! `GGTT_PENDING` (the half-written entries of [`GgttSlices::save_pending`]).

use migstream::{RecordKind, Saved, Section};

use super::{RUN_HEADER_LEN, RunStats, SaveCursor, SaveProgress};
use crate::entry::Generation;
use crate::error::GttError;
use crate::frames::GuestFrames;
use crate::partition::Partition;
use crate::slices::{GgttSlices, MAX_PENDING_LEN, validate_pending};

/// The `GGTT_RUNS` record (SPEC.md Appendix A.3): runs of guest-view GGTT entries in the format
/// of [`crate::runs`]. A GGTT takes as many records as it needs; a reader checks each against the
/// guest view and guest memory ([`crate::validate_runs_in`]) and restores it in one pass
/// ([`crate::replace_runs`] for the first record of a restore, [`crate::restore_runs`] on top).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GgttRunsSection;

/// What a `GGTT_RUNS` record is saved from: the table, and what a reader already holds of it
/// (after a pre-copy: only the entries that differ travel, as RAW runs,
/// [`GgttSlices::save_changed_runs`]).
#[derive(Debug, Clone, Copy)]
pub struct RunsSource<'a> {
    /// The table.
    pub slices: &'a GgttSlices<'a>,
    /// What the reader holds, one entry per storage slot; `None` for the whole table.
    pub sent: Option<&'a [u64]>,
}

/// What a `GGTT_RUNS` payload is checked against: the receiving guest view, guest memory and
/// the hardware generation (whose reserved bits no entry may set).
#[derive(Debug, Clone, Copy)]
pub struct RunsCheck<'a> {
    /// The guest view of graphics memory.
    pub partition: &'a Partition,
    /// Guest memory, as the frames a present entry may point at.
    pub frames: &'a GuestFrames,
    /// The entry format.
    pub generation: Generation,
}

/// Where a validated `GGTT_RUNS` payload goes.
#[derive(Debug)]
pub struct RunsTarget<'a, 'b> {
    /// The table.
    pub slices: &'a mut GgttSlices<'b>,
    /// Guest memory (the restore checks every entry again as it copies, at no extra cost).
    pub frames: &'a GuestFrames,
    /// The entry format.
    pub generation: Generation,
    /// Whether this record replaces the table (the first record of a restore: what no run
    /// covers is cleared in the same pass) or restores on top of the records before it.
    pub replace: bool,
    /// Counts what the record restored.
    pub stats: &'a mut RunStats,
}

impl Section for GgttRunsSection {
    const KIND: RecordKind = RecordKind::GGTT_RUNS;
    const VERSION: u8 = 1;

    type Error = GttError;
    type Config<'a> = &'a Partition;
    type Source<'a> = RunsSource<'a>;
    type Check<'a> = RunsCheck<'a>;
    type Checked = RunStats;
    type Target<'a, 'b>
        = RunsTarget<'a, 'b>
    where
        'b: 'a;

    /// Runs lie inside the guest view and do not overlap, and a run takes at most 24 bytes per
    /// entry it covers (the 16-byte header, then 8 bytes per RAW entry or one 8-byte LINEAR
    /// template): a longer payload must reach outside the view.
    fn max_len(partition: &&Partition) -> usize {
        usize::try_from(partition.entries())
            .unwrap_or(usize::MAX)
            .saturating_mul(RUN_HEADER_LEN + 8)
    }

    fn save(source: &RunsSource<'_>, from: usize, out: &mut [u8]) -> Result<Saved, GttError> {
        let from = SaveCursor(from);
        let p: SaveProgress = match source.sent {
            Some(sent) => source.slices.save_changed_runs(sent, from, out)?,
            None => source.slices.save_runs(from, out)?,
        };
        Ok(Saved {
            written: p.written,
            next: p.next.map(SaveCursor::slot),
        })
    }

    fn validate(check: &RunsCheck<'_>, payload: &[u8]) -> Result<RunStats, GttError> {
        super::validate_runs_in(payload, check.partition, check.frames, check.generation)
    }

    fn apply(t: RunsTarget<'_, '_>, payload: &[u8]) -> Result<(), GttError> {
        let r = if t.replace {
            super::replace_runs(payload, t.slices, t.frames, t.generation)?
        } else {
            super::restore_runs(payload, t.slices, t.frames, t.generation)?
        };
        t.stats.entries = t.stats.entries.saturating_add(r.entries);
        t.stats.runs = t.stats.runs.saturating_add(r.runs);
        Ok(())
    }
}

/// The `GGTT_PENDING` record (SPEC.md Appendix A.4): GGTT entries of which the guest wrote one
/// 4-byte half before the stop, held until their partner arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GgttPendingSection;

impl Section for GgttPendingSection {
    const KIND: RecordKind = RecordKind::GGTT_PENDING;
    const VERSION: u8 = 1;

    type Error = GttError;
    type Config<'a> = ();
    type Source<'a> = &'a GgttSlices<'a>;
    type Check<'a> = &'a Partition;
    type Checked = ();
    type Target<'a, 'b>
        = &'a mut GgttSlices<'b>
    where
        'b: 'a;

    fn max_len(_: &()) -> usize {
        MAX_PENDING_LEN
    }

    fn save(slices: &&GgttSlices<'_>, _from: usize, out: &mut [u8]) -> Result<Saved, GttError> {
        slices.save_pending(out).map(Saved::whole)
    }

    fn validate(partition: &&Partition, payload: &[u8]) -> Result<(), GttError> {
        validate_pending(payload, partition)
    }

    fn apply(slices: &mut GgttSlices<'_>, payload: &[u8]) -> Result<(), GttError> {
        slices.restore_pending(payload)
    }
}
