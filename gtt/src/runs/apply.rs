//! Writing runs into a table: [`apply_runs`] after a separate check (the reference), and
//! [`restore_runs`] / [`replace_runs`], which check and copy in one pass, all or nothing.

use super::kernel::{FUSED_BLOCK, SpanSet, copy_checked, full_kernel, linear_ok, with_kernel};
use super::validate::validate_runs_in;
use super::{Body, RunReader, RunStats};
use crate::addr::PAGE_SHIFT;
use crate::entry::Generation;
use crate::error::GttError;
use crate::frames::{GuestFrames, MAX_SPANS, Spans};
use crate::partition::Partition;
use crate::slices::GgttSlices;

/// Writes a payload's runs into `slices`, which should have been cleared
/// ([`GgttSlices::clear`]) before the first payload. Call only after [`validate_runs`](crate::validate_runs)
/// accepted the payload: entry contents are not checked again. The payload's structure is
/// checked in a first pass, so on error nothing has been written. Returns the number of
/// entries written.
///
/// # Errors
/// Structural errors as in [`validate_runs`](crate::validate_runs).
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
/// As [`validate_runs`](crate::validate_runs): the first violation in payload order.
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
