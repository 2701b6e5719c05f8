//! The checks: [`validate_runs`], entry by entry (the reference), and [`validate_runs_in`],
//! branch-free over a [`GuestFrames`] set (what the destination uses).

use super::kernel::{FUSED_BLOCK, SpanSet, full_kernel, linear_ok, raw_bad, with_kernel};
use super::{Body, RunReader, RunStats};
use crate::addr::{Gfn, PAGE_SHIFT};
use crate::entry::{ADDR_MASK, Generation, GgttEntry};
use crate::error::GttError;
use crate::frames::{GuestFrames, MAX_SPANS, Spans};
use crate::partition::Partition;

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
fn validate_runs_with<F: Fn(Gfn) -> bool>(
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
