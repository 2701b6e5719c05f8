//! Sparse save and restore of the register file: the table's migrated registers and every
//! register offset outside the table that holds a nonzero value.
//!
//! Payload format (record version 2; all little-endian), a sequence of runs, nothing else:
//!
//! ```text
//! run := start_offset: u32   // byte offset, 4-aligned
//!        count:        u32   // number of dwords, >= 1
//!        values:       count * u32   // values of start_offset, start_offset + 4, ...
//! ```
//!
//! Runs are in strictly ascending offset order and do not overlap. An offset in a run is
//! either a register of the platform table that migrates (sent when its value differs from
//! its reset value) or an offset the table does not have, outside the PVINFO page (sent when
//! its value is not 0, the value every untracked dword has after reset). The saver merges
//! consecutive offsets of both kinds into one run. An empty payload is valid (every
//! register at its reset value).
//!
//! Version 1 payloads were the same format restricted to table registers; a version 1
//! payload is therefore a valid version 2 payload with the same meaning.

use crate::desc::RegDesc;
use crate::error::MmioError;
use crate::platform::Platform;
use crate::pvinfo::in_pvinfo;
use crate::regfile::{RegFile, RegHooks};

const RUN_HEADER: usize = 8;

/// The record-format version of the payload [`RegFile::save_sparse`] writes and
/// [`RegFile::apply_sparse`] reads (it also reads version 1, a subset).
pub const SPARSE_VERSION: u8 = 2;

fn put(out: &mut [u8], at: usize, v: u32) -> Result<(), MmioError> {
    let end = at.checked_add(4).ok_or(MmioError::Capacity)?;
    let dst = out.get_mut(at..end).ok_or(MmioError::Capacity)?;
    dst.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn take_u32(buf: &[u8], at: usize) -> Result<(u32, &[u8]), MmioError> {
    let (b, rest) = buf
        .split_first_chunk::<4>()
        .ok_or(MmioError::Malformed { at })?;
    Ok((u32::from_le_bytes(*b), rest))
}

/// Walks a payload, checking every rule, and calls `f(desc, offset, value)` per value
/// (`desc` is `None` for an untracked offset).
fn walk(
    platform: &Platform,
    payload: &[u8],
    mut f: impl FnMut(Option<&RegDesc>, u32, u32),
) -> Result<(), MmioError> {
    let mut rest = payload;
    let mut min_next: u32 = 0;
    while !rest.is_empty() {
        let at = payload.len() - rest.len();
        let (start, r) = take_u32(rest, at)?;
        let (count, r) = take_u32(r, at + 4)?;
        if count == 0 || start % 4 != 0 || start < min_next {
            return Err(MmioError::Malformed { at });
        }
        let nbytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(4))
            .ok_or(MmioError::Malformed { at: at + 4 })?;
        let end_off = count
            .checked_mul(4)
            .and_then(|n| start.checked_add(n))
            .ok_or(MmioError::Malformed { at: at + 4 })?;
        let (values, r) = r.split_at_checked(nbytes).ok_or(MmioError::Malformed {
            at: at + RUN_HEADER,
        })?;
        let mut offset = start;
        for chunk in values.chunks_exact(4) {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let v = u32::from_le_bytes(b);
            match platform.find(offset) {
                Some(desc) => {
                    if !desc.is_migrated() {
                        return Err(MmioError::NotMigratable { offset });
                    }
                    if (v ^ desc.reset) & desc.effective_ro_mask() != 0 {
                        return Err(MmioError::ReadOnlyBits { offset });
                    }
                    f(Some(desc), offset, v);
                }
                None if offset >= platform.mmio_size => {
                    return Err(MmioError::UnknownRegister { offset });
                }
                // Untracked PVINFO dwords are read-only zeros: nothing to migrate.
                None if in_pvinfo(offset) => return Err(MmioError::NotMigratable { offset }),
                None => f(None, offset, v),
            }
            offset = offset.wrapping_add(4);
        }
        min_next = end_off;
        rest = r;
    }
    Ok(())
}

/// Checks a sparse payload against `platform` without applying it.
///
/// Rejects: truncated runs, `count == 0`, unaligned or descending/overlapping runs,
/// offset arithmetic overflow (`Malformed`); offsets outside the MMIO window
/// (`UnknownRegister`); table registers not of class `Migrate` and untracked offsets of the
/// PVINFO page (`NotMigratable`); values whose read-only bits (including the always-zero
/// upper half of masked registers) differ from the reset value (`ReadOnlyBits`). Untracked
/// offsets accept any value. Every run consumes at least 12 bytes, so the check is linear
/// in the payload length.
pub fn validate_sparse(platform: &Platform, payload: &[u8]) -> Result<(), MmioError> {
    walk(platform, payload, |_, _, _| {})
}

/// The value a payload gives the register at `offset`, if any: `None` when the payload
/// does not name it (the register restores to its reset value) or is malformed.
#[must_use]
pub fn sparse_value(platform: &Platform, payload: &[u8], offset: u32) -> Option<u32> {
    let mut found = None;
    walk(platform, payload, |_, o, v| {
        if o == offset {
            found = Some(v);
        }
    })
    .ok()?;
    found
}

/// The longest payload a run can take over a stretch of `len` consecutive sendable dwords:
/// `r` runs separated by at least one unsent dword carry at most `len - r + 1` values, so
/// `8r + 4(len - r + 1)` bytes, largest with `r = ceil(len / 2)`.
const fn stretch_bound(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        4 * len + 4 * len.div_ceil(2) + 4
    }
}

impl Platform {
    /// Upper bound of the sparse payload size for any register state: no buffer of this size
    /// fails with `Capacity`, and a reader can refuse a longer payload outright.
    ///
    /// Every dword of the window can be sent except the table registers that do not migrate
    /// and the untracked dwords of the PVINFO page; over each maximal stretch of `len`
    /// sendable dwords a payload takes at most `4·len + 4·⌈len/2⌉ + 4` bytes (runs of one
    /// value separated by one unsent dword). For [`SKL`](crate::SKL) that is about 3 MiB; a
    /// guest that writes a nonzero value to every offset needs only 4 bytes per sendable
    /// dword plus 8 per stretch ([`all_written_len`](Self::all_written_len)).
    #[must_use]
    pub fn max_sparse_len(&self) -> usize {
        let mut total = 0usize;
        self.for_each_stretch(|len| total = total.saturating_add(stretch_bound(len)));
        total
    }

    /// The payload size when every sendable dword holds a value to send: one run per
    /// maximal stretch of sendable dwords (see [`max_sparse_len`](Self::max_sparse_len)).
    #[must_use]
    pub fn all_written_len(&self) -> usize {
        let mut total = 0usize;
        self.for_each_stretch(|len| {
            if len != 0 {
                total = total.saturating_add(RUN_HEADER + 4 * len);
            }
        });
        total
    }

    /// Calls `f(len)` for each maximal stretch of consecutive sendable dwords (some `len`
    /// may be 0).
    fn for_each_stretch(&self, mut f: impl FnMut(usize)) {
        let dwords = self.storage_dwords();
        let mut start = 0usize;
        let mut block = |d: usize, f: &mut dyn FnMut(usize)| {
            if d >= start {
                f(d - start);
                start = d + 1;
            }
        };
        let pv_lo = crate::PVINFO_BASE / 4;
        let pv_hi = (crate::PVINFO_BASE + crate::PVINFO_SIZE) / 4;
        let idx = |o: u32| usize::try_from(o / 4).unwrap_or(usize::MAX);
        for r in self.regs.iter().filter(|r| r.offset / 4 < pv_lo) {
            if !r.is_migrated() {
                block(idx(r.offset), &mut f);
            }
        }
        for d in pv_lo..pv_hi.min(u32::try_from(dwords).unwrap_or(u32::MAX)) {
            if !self.find(d * 4).is_some_and(RegDesc::is_migrated) {
                block(idx(d * 4), &mut f);
            }
        }
        for r in self.regs.iter().filter(|r| r.offset / 4 >= pv_hi) {
            if !r.is_migrated() {
                block(idx(r.offset), &mut f);
            }
        }
        if dwords >= start {
            f(dwords - start);
        }
    }
}

impl RegFile<'_> {
    /// Calls `f(offset, value)` for every dword the sparse payload carries, in ascending
    /// offset order: migrated table registers that differ from reset, and nonzero untracked
    /// dwords outside PVINFO (found through the untracked summary, so only blocks the guest
    /// or the device model wrote outside the table are scanned).
    fn for_each_sent(
        &self,
        mut f: impl FnMut(u32, u32) -> Result<(), MmioError>,
    ) -> Result<(), MmioError> {
        let regs = self.platform().regs;
        let words = self.words();
        let mut ti = 0usize;
        for range in self.untracked_blocks() {
            let first = range.start;
            for (d, &v) in (first..).zip(words.get(range).unwrap_or_default()) {
                if v == 0 {
                    continue;
                }
                let Ok(off) = u32::try_from(d * 4) else {
                    continue;
                };
                self.table_below(u64::from(off), &mut ti, &mut f)?;
                if regs.get(ti).is_some_and(|r| r.offset == off) || in_pvinfo(off) {
                    continue; // a table register (visited in order) or read-only PVINFO
                }
                f(off, v)?;
            }
        }
        self.table_below(u64::MAX, &mut ti, &mut f)
    }

    /// Visits the table registers from index `*ti` with offsets below `limit`: `f` gets each
    /// migrated one that differs from its reset value.
    fn table_below(
        &self,
        limit: u64,
        ti: &mut usize,
        f: &mut impl FnMut(u32, u32) -> Result<(), MmioError>,
    ) -> Result<(), MmioError> {
        let regs = self.platform().regs;
        let words = self.words();
        for r in regs.get(*ti..).unwrap_or_default() {
            if u64::from(r.offset) >= limit {
                break;
            }
            *ti += 1;
            if r.is_migrated() {
                let v = usize::try_from(r.offset / 4)
                    .ok()
                    .and_then(|i| words.get(i))
                    .copied()
                    .unwrap_or(0);
                if v != r.reset {
                    f(r.offset, v)?;
                }
            }
        }
        Ok(())
    }

    /// Bytes [`save_sparse`](Self::save_sparse) will write now.
    #[must_use]
    pub fn sparse_len(&self) -> usize {
        let mut len = 0usize;
        let mut next: Option<u32> = None;
        let _ = self.for_each_sent(|off, _| {
            len = len.saturating_add(if next == Some(off) { 4 } else { 12 });
            next = off.checked_add(4);
            Ok(())
        });
        len
    }

    /// Writes the migratable state into `out`; returns the bytes written.
    ///
    /// Written: table registers of class [`Migrate`](crate::SaveClass::Migrate) whose value
    /// differs from their reset value, and every offset outside the table (and outside the
    /// PVINFO page) whose value is not 0, so nothing a guest wrote is lost. Derived and
    /// hardware-read registers and the vGPU-type PVINFO fields are never migrated.
    /// `Err(Capacity)` if `out` is shorter than [`sparse_len`](Self::sparse_len).
    pub fn save_sparse(&self, out: &mut [u8]) -> Result<usize, MmioError> {
        let mut pos = 0usize;
        // (header position, count, next contiguous offset) of the open run.
        let mut run: Option<(usize, u32, Option<u32>)> = None;
        self.for_each_sent(|off, v| {
            match run {
                Some((h, c, next)) if next == Some(off) => {
                    put(out, pos, v)?;
                    run = Some((h, c.saturating_add(1), off.checked_add(4)));
                }
                _ => {
                    if let Some((h, c, _)) = run {
                        put(out, h + 4, c)?;
                    }
                    put(out, pos, off)?;
                    put(out, pos + 4, 1)?;
                    put(out, pos + RUN_HEADER, v)?;
                    run = Some((pos, 1, off.checked_add(4)));
                    pos += RUN_HEADER;
                }
            }
            pos += 4;
            Ok(())
        })?;
        if let Some((h, c, _)) = run {
            put(out, h + 4, c)?;
        }
        Ok(pos)
    }

    /// Restores a payload produced by [`save_sparse`](Self::save_sparse).
    ///
    /// The payload is validated first ([`validate_sparse`]); on error nothing changes.
    /// Then, in this order:
    /// 1. every `Migrate` register is set to its reset value, then to its payload value;
    /// 2. for every `replay` register, in table (offset) order,
    ///    `hooks.after_write(offset, value, value)` re-runs the write side effects
    ///    (ring mode, status page address, pipe enable, PAT, interrupt masks and enables,
    ///    fences), followed by `hooks.on_event` when the register has an event
    ///    ([`RegEvent::PipeEnable`](crate::RegEvent::PipeEnable) is raised for every pipe,
    ///    enabled or not);
    /// 3. step 1 is repeated, because side-effect handlers may modify registers: the
    ///    restored values win;
    /// 4. every untracked dword is set to 0, then the payload's untracked values are stored
    ///    verbatim in ascending offset order, without hooks (they have no side effects in
    ///    this device model);
    /// 5. the guest is marked GVT-aware (a restored guest does not re-read PVINFO).
    ///
    /// Derived and hardware-read registers are left as they are.
    pub fn apply_sparse(
        &mut self,
        payload: &[u8],
        hooks: &mut impl RegHooks,
    ) -> Result<(), MmioError> {
        let platform = self.platform();
        validate_sparse(platform, payload)?;
        self.copy_migrated(payload)?;
        for r in platform.regs.iter().filter(|r| r.replay) {
            let v = self.peek(r.offset);
            hooks.after_write(r.offset, v, v);
            if let Some(ev) = self.event(r, v, v, true) {
                hooks.on_event(ev);
            }
        }
        self.reset_migrated();
        self.zero_untracked();
        // One pass: the table values again (the restored values win over what side effects
        // wrote), and the untracked values verbatim.
        walk(platform, payload, |r, off, v| match r {
            Some(_) => self.store(off, v),
            None => self.restore_untracked(usize::try_from(off / 4).unwrap_or(usize::MAX), v),
        })?;
        self.set_guest_aware(true);
        Ok(())
    }

    fn copy_migrated(&mut self, payload: &[u8]) -> Result<(), MmioError> {
        self.reset_migrated();
        walk(self.platform(), payload, |r, off, v| {
            if r.is_some() {
                self.store(off, v);
            }
        })
    }

    /// Every migrated table register to its reset value (table registers only: no untracked
    /// bookkeeping needed).
    fn reset_migrated(&mut self) {
        for r in self.platform().regs.iter().filter(|r| r.is_migrated()) {
            self.store(r.offset, r.reset);
        }
    }

    /// Every untracked dword to 0 (only the marked blocks can hold anything else), and the
    /// marks cleared.
    fn zero_untracked(&mut self) {
        let regs = self.platform().regs;
        let dword = |o: u32| usize::try_from(o / 4).unwrap_or(usize::MAX);
        let blocks: heapless::Vec<core::ops::Range<usize>, { crate::regfile::SUMMARY_BLOCKS }> =
            self.untracked_blocks().collect();
        for range in blocks {
            let mut ti = regs.partition_point(|r| dword(r.offset) < range.start);
            for d in range {
                if regs.get(ti).is_some_and(|r| dword(r.offset) == d) {
                    ti += 1;
                    continue;
                }
                self.zero_dword(d);
            }
        }
        self.clear_untracked_marks();
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
    extern crate std;
    use super::*;
    use crate::AccessSize::Dword;
    use crate::platform::{MMIO_DWORDS, SKL};
    use crate::regfile::tests::{Rec, storage};
    use crate::regfile::{NoHooks, RegEvent};
    use std::vec;
    use std::vec::Vec;

    fn payload(runs: &[(u32, &[u32])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (start, vals) in runs {
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&(vals.len() as u32).to_le_bytes());
            for x in *vals {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v
    }

    #[test]
    fn empty_state_saves_nothing() {
        let mut s = storage();
        let rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut out = [0u8; 16];
        assert_eq!(rf.save_sparse(&mut out).unwrap(), 0);
        assert_eq!(rf.sparse_len(), 0);
    }

    #[test]
    fn save_merges_consecutive_registers_exact_bytes() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.write(0x2030, Dword, 0x10, &mut NoHooks).unwrap(); // RING_TAIL
        rf.write(0x2034, Dword, 0x08, &mut NoHooks).unwrap(); // RING_HEAD
        rf.write(0x203C, Dword, 0x3001, &mut NoHooks).unwrap(); // RING_CTL (0x2038 unchanged)
        rf.write(0x2040, Dword, 0x77, &mut NoHooks).unwrap(); // untracked: joins the run
        rf.write(0x5000, Dword, 0xFFFF, &mut NoHooks).unwrap(); // untracked: saved
        rf.write(0x5004, Dword, 0, &mut NoHooks).unwrap(); // untracked, still 0: not saved
        rf.write(0x78808, Dword, 5, &mut NoHooks).unwrap(); // untracked PVINFO: read-only
        rf.write(0x78804, Dword, 1, &mut NoHooks).unwrap(); // display_ready
        rf.poke(0x2234, 0x1234); // derived: not saved
        let want = payload(&[
            (0x2030, &[0x10, 0x08]),
            (0x203C, &[0x3001, 0x77]),
            (0x5000, &[0xFFFF]),
            (0x78804, &[1]),
        ]);
        let mut out = [0u8; 64];
        let n = rf.save_sparse(&mut out).unwrap();
        assert_eq!(&out[..n], &want[..]);
        assert_eq!(rf.sparse_len(), n);
        assert_eq!(n, 16 + 16 + 12 + 12);
        let mut small = [0u8; 55];
        assert_eq!(rf.save_sparse(&mut small), Err(MmioError::Capacity));
        assert!(SKL.max_sparse_len() >= n);
    }

    #[test]
    fn untracked_registers_round_trip_and_stale_ones_are_cleared() {
        let mut s1 = storage();
        let mut src = RegFile::new(&SKL, &mut s1).unwrap();
        // A guest writing registers the table does not have, around table registers.
        for (o, v) in [
            (0x4FF0u32, 0xFu32),
            (0x9400, 1),
            (0x2228, 0x55),
            (0x6_5000, 9),
        ] {
            assert!(SKL.find(o).is_none(), "{o:#x}");
            src.write(o, Dword, u64::from(v), &mut NoHooks).unwrap();
        }
        src.write(0x1F_FFFC, Dword, 0xABCD, &mut NoHooks).unwrap(); // last dword
        src.poke(0x3_0000, 0x1234); // the device model's own untracked write also travels
        let mut buf = vec![0u8; SKL.max_sparse_len()];
        let n = src.save_sparse(&mut buf).unwrap();
        validate_sparse(&SKL, &buf[..n]).unwrap();

        let mut s2 = storage();
        let mut dst = RegFile::new(&SKL, &mut s2).unwrap();
        dst.write(0x5000, Dword, 0xDEAD, &mut NoHooks).unwrap(); // stale: must go
        dst.apply_sparse(&buf[..n], &mut NoHooks).unwrap();
        assert_eq!(dst.words(), src.words());
        // Re-attached storage (every block unknown) saves the same bytes.
        let _ = dst;
        let again = RegFile::new_const(&SKL, &mut s2).unwrap();
        let mut buf2 = vec![0u8; SKL.max_sparse_len()];
        let n2 = again.save_sparse(&mut buf2).unwrap();
        assert_eq!(&buf[..n], &buf2[..n2]);
    }

    #[test]
    fn untracked_values_are_restored_after_the_replay() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let p = payload(&[(0x5000, &[7]), (0x70008, &[1 << 31])]);
        let mut h = Rec::default();
        rf.apply_sparse(&p, &mut h).unwrap();
        assert_eq!(rf.peek(0x5000), 7);
        assert_eq!(rf.peek(0x70008), 1 << 31);
        // Untracked offsets raise no side effects on restore.
        assert!(h.0.iter().all(|e| SKL.find(e.0).is_some()));
    }

    #[test]
    fn size_bounds() {
        let max = SKL.max_sparse_len();
        let all = SKL.all_written_len();
        // The figures SPEC.md Appendix A.2 states.
        assert_eq!((max, all), (3_139_156, 2_093_104));
        assert!(all < max && max < migstream::MAX_PAYLOAD as usize);
        // Roughly 4 bytes per dword of the window when everything is written, 6 at worst.
        assert!(
            all > 4 * (MMIO_DWORDS - 2048) && all < 4 * MMIO_DWORDS + 8 * 2048,
            "{all}"
        );
        assert!(
            max > 6 * (MMIO_DWORDS - 2048) && max < 6 * MMIO_DWORDS + 12 * 2048,
            "{max}"
        );
        // Writing every sendable dword reaches `all_written_len` (less the few registers
        // whose writable bits cannot leave reset); every other dword stays within the bound.
        for stride in [1usize, 2] {
            let mut s = storage();
            let mut rf = RegFile::new(&SKL, &mut s).unwrap();
            for d in (0..MMIO_DWORDS).step_by(stride) {
                let o = (d * 4) as u32;
                match SKL.find(o) {
                    Some(r) if r.is_migrated() => {
                        let free = !r.effective_ro_mask();
                        rf.poke(o, r.reset ^ (free & free.wrapping_neg()));
                    }
                    Some(_) => {}
                    None => rf.poke(o, o | 1),
                }
            }
            let n = rf.sparse_len();
            if stride == 1 {
                assert_eq!(n, all);
            }
            assert!(n <= max, "{n} vs {max}");
        }
    }

    #[test]
    fn rejections() {
        let p = &SKL;
        // Offsets outside the table migrate as plain values, except in PVINFO and beyond
        // the window.
        assert_eq!(validate_sparse(p, &payload(&[(0x5000, &[1])])), Ok(()));
        assert_eq!(
            validate_sparse(p, &payload(&[(0x78808, &[0])])),
            Err(MmioError::NotMigratable { offset: 0x78808 })
        );
        assert_eq!(
            validate_sparse(p, &payload(&[(0x1F_FFFC, &[1, 2])])),
            Err(MmioError::UnknownRegister { offset: 0x20_0000 })
        );
        assert_eq!(
            validate_sparse(p, &payload(&[(0x2234, &[1])])),
            Err(MmioError::NotMigratable { offset: 0x2234 })
        );
        assert_eq!(
            validate_sparse(p, &payload(&[(0x2230, &[1])])),
            Err(MmioError::NotMigratable { offset: 0x2230 })
        );
        // Upper half of a masked register must be 0.
        assert_eq!(
            validate_sparse(p, &payload(&[(0x229C, &[0x0001_0001])])),
            Err(MmioError::ReadOnlyBits { offset: 0x229C })
        );
        assert_eq!(validate_sparse(p, &payload(&[(0x229C, &[0x0001])])), Ok(()));
        // Run that walks off the end of a register group into an untracked dword, then
        // into a derived one.
        assert_eq!(validate_sparse(p, &payload(&[(0x203C, &[1, 2])])), Ok(()));
        assert_eq!(
            validate_sparse(p, &payload(&[(0x222C, &[0, 0])])),
            Err(MmioError::NotMigratable { offset: 0x2230 })
        );
        // count 0, unaligned, out of order, overlap.
        assert_eq!(
            validate_sparse(p, &payload(&[(0x2030, &[])])),
            Err(MmioError::Malformed { at: 0 })
        );
        assert_eq!(
            validate_sparse(p, &payload(&[(0x2031, &[1])])),
            Err(MmioError::Malformed { at: 0 })
        );
        assert_eq!(
            validate_sparse(p, &payload(&[(0x2034, &[1]), (0x2030, &[1])])),
            Err(MmioError::Malformed { at: 12 })
        );
        assert_eq!(
            validate_sparse(p, &payload(&[(0x2030, &[1, 2]), (0x2034, &[1])])),
            Err(MmioError::Malformed { at: 16 })
        );
        // Truncations at every length.
        let good = payload(&[(0x2030, &[1, 2])]);
        assert_eq!(validate_sparse(p, &good), Ok(()));
        for cut in 1..good.len() {
            assert!(
                matches!(
                    validate_sparse(p, &good[..cut]),
                    Err(MmioError::Malformed { .. })
                ),
                "cut {cut}"
            );
        }
        // Huge count: no overflow, no allocation, just Malformed.
        let mut huge = Vec::new();
        huge.extend_from_slice(&0x2030u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            validate_sparse(p, &huge),
            Err(MmioError::Malformed { at: 4 })
        );
        let mut wrap = Vec::new();
        wrap.extend_from_slice(&0xFFFF_FFFCu32.to_le_bytes());
        wrap.extend_from_slice(&2u32.to_le_bytes());
        wrap.extend_from_slice(&[0; 8]);
        assert_eq!(
            validate_sparse(p, &wrap),
            Err(MmioError::Malformed { at: 4 })
        );
    }

    #[test]
    fn apply_is_atomic_on_error() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.poke(0x2030, 0x40);
        let bad = payload(&[(0x2034, &[8]), (0x5000, &[1]), (0x78808, &[1])]);
        let mut h = Rec::default();
        assert!(rf.apply_sparse(&bad, &mut h).is_err());
        assert_eq!(rf.peek(0x2030), 0x40);
        assert_eq!(rf.peek(0x2034), 0);
        assert!(h.0.is_empty());
        assert!(!rf.guest_aware());
    }

    #[test]
    fn replay_order_is_table_order_with_restored_values() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.poke(0x2030, 0x99); // stale target state, reset by apply
        let p = payload(&[
            (0x2080, &[0x0012_3000]),
            (0x229C, &[0x8000]),
            (0x70008, &[1 << 31]),
        ]);
        let mut h = Rec::default();
        rf.apply_sparse(&p, &mut h).unwrap();
        assert_eq!(rf.peek(0x2030), 0);
        assert!(rf.guest_aware());
        let expected: Vec<(u32, u32, u32)> = SKL
            .regs
            .iter()
            .filter(|r| r.replay)
            .map(|r| {
                let v = match r.offset {
                    0x2080 => 0x0012_3000,
                    0x229C => 0x8000,
                    0x70008 => 1 << 31,
                    _ => r.reset,
                };
                (r.offset, v, v)
            })
            .collect();
        assert_eq!(h.0, expected);
        // Spot-check the order: RCS HWS_PGA before RCS GFX_MODE before PAT before IRQ.
        let pos = |o: u32| h.0.iter().position(|e| e.0 == o).unwrap();
        assert!(pos(0x2080) < pos(0x229C));
        assert!(pos(0x229C) < pos(0x40E0));
        assert!(pos(0x40E0) < pos(0x44200));
        assert!(pos(0x44200) < pos(0x70008));
    }

    #[test]
    fn replay_raises_typed_events_with_restored_values() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let p = payload(&[
            (0x44304, &[0xFFFF_FEFF]),
            (0x70008, &[1 << 31]),
            (0x10_0000, &[0x0040_0001, 0x0080_0000]),
        ]);
        let mut h = crate::regfile::tests::Both::default();
        rf.apply_sparse(&p, &mut h).unwrap();
        let replayed = SKL.regs.iter().filter(|r| r.replay).count();
        assert_eq!(h.writes.len(), replayed);
        // 23 interrupt registers, 3 pipes, 64 fence dwords.
        assert_eq!(h.events.len(), 23 + 3 + 64);
        assert_eq!(
            h.events[..3],
            [
                RegEvent::InterruptRecompute { offset: 0x44200 },
                RegEvent::InterruptRecompute { offset: 0x44304 },
                RegEvent::InterruptRecompute { offset: 0x4430C },
            ]
        );
        let pipes: Vec<RegEvent> = h
            .events
            .iter()
            .copied()
            .filter(|e| matches!(e, RegEvent::PipeEnable { .. }))
            .collect();
        assert_eq!(
            pipes,
            [
                RegEvent::PipeEnable {
                    pipe: 0,
                    enabled: true
                },
                RegEvent::PipeEnable {
                    pipe: 1,
                    enabled: false
                },
                RegEvent::PipeEnable {
                    pipe: 2,
                    enabled: false
                },
            ]
        );
        let fence0 = RegEvent::FenceProgrammed {
            index: 0,
            value: 0x0080_0000_0040_0001,
        };
        assert_eq!(h.events[h.events.len() - 64..][..2], [fence0, fence0]);
        assert_eq!(
            h.events.last(),
            Some(&RegEvent::FenceProgrammed {
                index: 31,
                value: 0
            })
        );
    }

    #[test]
    fn malformed_names_the_offset_of_the_broken_field() {
        // Two runs (the second at byte 12): a cut inside a run's start field is reported at
        // the run, inside its count at the run + 4, inside its values at the run + 8.
        let two = payload(&[(0x2030, &[1]), (0x5000, &[1, 2])]);
        assert_eq!(validate_sparse(&SKL, &two), Ok(()));
        for cut in 1..two.len() {
            let want = match cut {
                12 => Ok(()),
                1..=3 => Err(MmioError::Malformed { at: 0 }),
                4..=7 => Err(MmioError::Malformed { at: 4 }),
                8..=11 => Err(MmioError::Malformed { at: 8 }),
                13..=15 => Err(MmioError::Malformed { at: 12 }),
                16..=19 => Err(MmioError::Malformed { at: 16 }),
                _ => Err(MmioError::Malformed { at: 20 }),
            };
            assert_eq!(validate_sparse(&SKL, &two[..cut]), want, "cut {cut}");
        }
    }

    #[test]
    fn adjacent_runs_are_accepted_and_each_value_found() {
        // Runs must ascend without overlap; one may start where the previous ended.
        let p = payload(&[(0x2030, &[0x10]), (0x2034, &[0x08]), (0x5000, &[7])]);
        assert_eq!(validate_sparse(&SKL, &p), Ok(()));
        assert_eq!(sparse_value(&SKL, &p, 0x2030), Some(0x10));
        assert_eq!(sparse_value(&SKL, &p, 0x2034), Some(0x08));
        assert_eq!(sparse_value(&SKL, &p, 0x5000), Some(7));
        assert_eq!(sparse_value(&SKL, &p, 0x2038), None);
        assert_eq!(sparse_value(&SKL, &p, 0x4FFC), None);
        // A malformed payload names nothing, not even what precedes the damage.
        let mut bad = p.clone();
        bad.push(0);
        assert_eq!(sparse_value(&SKL, &bad, 0x2030), None);
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.apply_sparse(&p, &mut NoHooks).unwrap();
        assert_eq!(
            (rf.peek(0x2030), rf.peek(0x2034), rf.peek(0x5000)),
            (0x10, 0x08, 7)
        );
        // The saver merges them into one run.
        let mut out = [0u8; 64];
        let n = rf.save_sparse(&mut out).unwrap();
        assert_eq!(
            &out[..n],
            &payload(&[(0x2030, &[0x10, 0x08]), (0x5000, &[7])])[..]
        );
    }

    #[test]
    fn restore_keeps_a_derived_register_at_the_start_of_an_untracked_block() {
        // SDEISR (0xC4000, derived) opens a 4 KiB block of the untracked summary; an
        // untracked dword written in the same block marks it. A restore clears the untracked
        // dword and leaves the derived register as it is.
        assert!(SKL.find(0xC4000).is_some_and(|r| !r.is_migrated()));
        assert!(SKL.find(0xC4F00).is_none());
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.poke(0xC4000, 0x1234);
        rf.write(0xC4F00, Dword, 5, &mut NoHooks).unwrap();
        rf.apply_sparse(&payload(&[(0x5000, &[3])]), &mut NoHooks)
            .unwrap();
        assert_eq!(rf.peek(0xC4000), 0x1234);
        assert_eq!(rf.peek(0xC4F00), 0);
        assert_eq!(rf.peek(0x5000), 3);
    }

    #[test]
    fn every_register_accepts_its_read_only_bits_as_at_reset_and_nothing_else() {
        // For each migrated register: its reset value, and any value that keeps the read-only
        // bits as they are at reset, is accepted; flipping one read-only bit is refused.
        for r in SKL.regs.iter().filter(|r| r.is_migrated()) {
            let ro = r.effective_ro_mask();
            let ok = |v: u32| validate_sparse(&SKL, &payload(&[(r.offset, &[v])]));
            assert_eq!(ok(r.reset), Ok(()), "{}", r.name);
            assert_eq!(ok(r.reset ^ !ro), Ok(()), "{}", r.name);
            if ro != 0 {
                let bit = ro & ro.wrapping_neg();
                assert_eq!(
                    ok(r.reset ^ bit),
                    Err(MmioError::ReadOnlyBits { offset: r.offset }),
                    "{}",
                    r.name
                );
            }
        }
        // SKL has no migrated register with a read-only bit set at reset; a table that has
        // one: the value must keep that bit set, not cleared.
        static REGS: [RegDesc; 1] = [RegDesc::new(0x100, "RO_SET_AT_RESET")
            .with_reset(0x8000_0001)
            .with_ro(0x8000_0000)];
        let platform = Platform {
            regs: &REGS,
            mmio_size: 0x1000,
        };
        let check = |v: u32| validate_sparse(&platform, &payload(&[(0x100, &[v])]));
        assert_eq!(check(0x8000_0001), Ok(()));
        assert_eq!(check(0x8000_0000), Ok(()));
        assert_eq!(check(0xFFFF_FFFF), Ok(()));
        let refused = Err(MmioError::ReadOnlyBits { offset: 0x100 });
        assert_eq!((check(0x1), check(0x7FFF_FFFF)), (refused, refused));
    }

    proptest::proptest! {
        #[test]
        fn round_trip_reproduces_every_migratable_register(
            writes in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u32>()), 0..64),
            junk in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u32>()), 0..16),
            untracked in proptest::collection::vec((0u32..0x8_0000, proptest::prelude::any::<u32>()), 0..32),
        ) {
            let regs = SKL.regs;
            let mut s1 = storage();
            let mut src = RegFile::new(&SKL, &mut s1).unwrap();
            for (i, v) in &writes {
                let r = &regs[i % regs.len()];
                src.write(r.offset, Dword, u64::from(*v), &mut NoHooks).unwrap();
            }
            for (d, v) in &untracked {
                src.write(d * 4, Dword, u64::from(*v), &mut NoHooks).unwrap();
            }
            let mut buf = vec![0u8; SKL.max_sparse_len()];
            let n = src.save_sparse(&mut buf).unwrap();
            proptest::prop_assert_eq!(n, src.sparse_len());
            validate_sparse(&SKL, &buf[..n]).unwrap();

            let mut s2 = storage();
            let mut dst = RegFile::new(&SKL, &mut s2).unwrap();
            for (i, v) in &junk {
                let r = &regs[i % regs.len()];
                dst.poke(r.offset, *v);
            }
            for (d, v) in &untracked {
                dst.poke((d ^ 0x100) * 4, *v);
            }
            dst.apply_sparse(&buf[..n], &mut NoHooks).unwrap();
            for r in regs.iter().filter(|r| r.is_migrated()) {
                proptest::prop_assert_eq!(dst.peek(r.offset), src.peek(r.offset), "{}", r.name);
            }
            // Every untracked dword either side wrote: the source's value (stale target
            // values cleared).
            for d in untracked.iter().flat_map(|(d, _)| [*d, d ^ 0x100]) {
                let d = d as usize;
                if SKL.find((d * 4) as u32).is_none() {
                    proptest::prop_assert_eq!(dst.words()[d], src.words()[d], "{:#x}", d * 4);
                }
            }
            let mut buf2 = vec![0u8; SKL.max_sparse_len()];
            let n2 = dst.save_sparse(&mut buf2).unwrap();
            proptest::prop_assert_eq!(&buf[..n], &buf2[..n2]);
        }

        #[test]
        fn validate_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = validate_sparse(&SKL, &bytes);
        }
    }
}
