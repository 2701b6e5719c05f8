//! The encoder: the guest-view GGTT as runs (LINEAR where entries continue each other, RAW
//! otherwise), all of it or what changed since a pre-copy.

use zerocopy::IntoBytes;
use zerocopy::little_endian::U32;

use super::{
    KIND_LINEAR, KIND_RAW, LINEAR_MIN_BREAK, LINEAR_MIN_START, MIN_SAVE_BUFFER, RUN_HEADER_LEN,
    RunHeader, SaveCursor, SaveProgress,
};
use crate::addr::{GttIndex, PAGE_SHIFT};
use crate::entry::ADDR_MASK;
use crate::error::GttError;
use crate::slices::GgttSlices;

/// Length of the LINEAR run starting at `run[0]`, looking at most at `cap` entries.
pub(crate) fn linear_len(run: &[u64], cap: usize) -> usize {
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

impl GgttSlices<'_> {
    /// Encodes, as RAW runs, every entry from storage slot `from.slot()` on that differs from
    /// `sent` (what a reader already holds, one entry per storage slot: for example what a
    /// pre-copy of [`save_runs`](Self::save_runs) carried), cleared entries included, as many
    /// as fit in `out`. A run never crosses from the aperture slice into the hidden one, and
    /// entries beyond `sent` count as changed. Call again with `next` until it is `None`.
    ///
    /// Restored on top of what was sent ([`crate::restore_runs`] with the table not cleared
    /// between), the runs give this table.
    ///
    /// # Errors
    /// [`GttError::BufferTooSmall`] if work remains and not even one run fits (`out` shorter
    /// than [`MIN_SAVE_BUFFER`]).
    pub fn save_changed_runs(
        &self,
        sent: &[u64],
        from: SaveCursor,
        out: &mut [u8],
    ) -> Result<SaveProgress, GttError> {
        let entries = self.entries();
        let partition = *self.partition();
        let ap = usize::try_from(partition.aperture.pages()).map_err(|_| GttError::StorageSize)?;
        let differs = |i: usize| entries.get(i) != sent.get(i);
        let mut slot = from.0;
        let mut pos = 0;
        while slot < entries.len() {
            if !differs(slot) {
                slot += 1;
                continue;
            }
            let slice_end = if slot < ap { ap } else { entries.len() };
            let room = out.len().saturating_sub(pos);
            if room < MIN_SAVE_BUFFER {
                if pos == 0 {
                    return Err(GttError::BufferTooSmall);
                }
                return Ok(SaveProgress {
                    written: pos,
                    next: Some(SaveCursor(slot)),
                });
            }
            let mut n = 1;
            while slot + n < slice_end && differs(slot + n) && RUN_HEADER_LEN + (n + 1) * 8 <= room
            {
                n += 1;
            }
            let start = partition.index_at(slot).ok_or(GttError::StorageSize)?;
            put_header(out, &mut pos, start, n, KIND_RAW)?;
            let src = entries.get(slot..slot + n).ok_or(GttError::StorageSize)?;
            for e in src {
                put(out, &mut pos, &e.to_le_bytes())?;
            }
            slot += n;
        }
        Ok(SaveProgress {
            written: pos,
            next: None,
        })
    }
}
