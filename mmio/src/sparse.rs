//! Sparse save and restore of the migratable registers.
//!
//! Payload format (all little-endian), a sequence of runs, nothing else:
//!
//! ```text
//! run := start_offset: u32   // byte offset, 4-aligned
//!        count:        u32   // number of dwords, >= 1
//!        values:       count * u32   // values of start_offset, start_offset + 4, ...
//! ```
//!
//! Runs are in strictly ascending offset order and do not overlap. The saver merges
//! registers at consecutive dword offsets into one run. An empty payload is valid (every
//! register at its reset value).

use crate::desc::RegDesc;
use crate::error::MmioError;
use crate::platform::Platform;
use crate::regfile::{RegFile, RegHooks};

const RUN_HEADER: usize = 8;

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

/// Walks a payload, checking every rule, and calls `f(desc, value)` per value.
fn walk(
    platform: &Platform,
    payload: &[u8],
    mut f: impl FnMut(&RegDesc, u32),
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
            let desc = platform
                .find(offset)
                .ok_or(MmioError::UnknownRegister { offset })?;
            if !desc.is_migrated() {
                return Err(MmioError::NotMigratable { offset });
            }
            if (v ^ desc.reset) & desc.effective_ro_mask() != 0 {
                return Err(MmioError::ReadOnlyBits { offset });
            }
            f(desc, v);
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
/// offset arithmetic overflow (`Malformed`); offsets not in the table
/// (`UnknownRegister`); registers not of class `Migrate` (`NotMigratable`); values whose
/// read-only bits (including the always-zero upper half of masked registers) differ from
/// the reset value (`ReadOnlyBits`). Every run consumes at least 12 bytes, so the check is
/// linear in the payload length.
pub fn validate_sparse(platform: &Platform, payload: &[u8]) -> Result<(), MmioError> {
    walk(platform, payload, |_, _| {})
}

impl RegFile<'_> {
    /// Bytes [`save_sparse`](Self::save_sparse) will write now.
    #[must_use]
    pub fn sparse_len(&self) -> usize {
        let mut len = 0usize;
        let mut next: Option<u32> = None;
        for r in self.platform().regs.iter().filter(|r| r.is_migrated()) {
            if self.peek(r.offset) == r.reset {
                continue;
            }
            len = len.saturating_add(if next == Some(r.offset) { 4 } else { 12 });
            next = r.offset.checked_add(4);
        }
        len
    }

    /// Writes the migratable state into `out`; returns the bytes written.
    ///
    /// Only table registers of class [`Migrate`](crate::SaveClass::Migrate) whose value
    /// differs from their reset value are written; untracked offsets, derived and
    /// hardware-read registers, and the vGPU-type PVINFO fields are never migrated.
    /// `Err(Capacity)` if `out` is shorter than [`sparse_len`](Self::sparse_len).
    pub fn save_sparse(&self, out: &mut [u8]) -> Result<usize, MmioError> {
        let mut pos = 0usize;
        // (header position, count, next contiguous offset) of the open run.
        let mut run: Option<(usize, u32, Option<u32>)> = None;
        for r in self.platform().regs.iter().filter(|r| r.is_migrated()) {
            let v = self.peek(r.offset);
            if v == r.reset {
                continue;
            }
            match run {
                Some((h, c, next)) if next == Some(r.offset) => {
                    put(out, pos, v)?;
                    run = Some((h, c.saturating_add(1), r.offset.checked_add(4)));
                }
                _ => {
                    if let Some((h, c, _)) = run {
                        put(out, h + 4, c)?;
                    }
                    put(out, pos, r.offset)?;
                    put(out, pos + 4, 1)?;
                    put(out, pos + RUN_HEADER, v)?;
                    run = Some((pos, 1, r.offset.checked_add(4)));
                    pos += RUN_HEADER;
                }
            }
            pos += 4;
        }
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
    /// 4. the guest is marked GVT-aware (a restored guest does not re-read PVINFO).
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
        self.copy_migrated(payload)?;
        self.set_guest_aware(true);
        Ok(())
    }

    fn copy_migrated(&mut self, payload: &[u8]) -> Result<(), MmioError> {
        let platform = self.platform();
        for r in platform.regs.iter().filter(|r| r.is_migrated()) {
            self.poke(r.offset, r.reset);
        }
        walk(platform, payload, |r, v| self.poke(r.offset, v))
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
    use crate::platform::SKL;
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
        rf.write(0x5000, Dword, 0xFFFF, &mut NoHooks).unwrap(); // untracked: not saved
        rf.write(0x78804, Dword, 1, &mut NoHooks).unwrap(); // display_ready
        rf.poke(0x2234, 0x1234); // derived: not saved
        let want = payload(&[
            (0x2030, &[0x10, 0x08]),
            (0x203C, &[0x3001]),
            (0x78804, &[1]),
        ]);
        let mut out = [0u8; 64];
        let n = rf.save_sparse(&mut out).unwrap();
        assert_eq!(&out[..n], &want[..]);
        assert_eq!(rf.sparse_len(), n);
        assert_eq!(n, 16 + 12 + 12);
        let mut small = [0u8; 39];
        assert_eq!(rf.save_sparse(&mut small), Err(MmioError::Capacity));
        assert!(SKL.max_sparse_len() >= n);
    }

    #[test]
    fn rejections() {
        let p = &SKL;
        assert_eq!(
            validate_sparse(p, &payload(&[(0x5000, &[1])])),
            Err(MmioError::UnknownRegister { offset: 0x5000 })
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
        // Run that walks off the end of a register group into an untracked dword.
        assert_eq!(
            validate_sparse(p, &payload(&[(0x203C, &[1, 2])])),
            Err(MmioError::UnknownRegister { offset: 0x2040 })
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
        let bad = payload(&[(0x2034, &[8]), (0x5000, &[1])]);
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

    proptest::proptest! {
        #[test]
        fn round_trip_reproduces_every_migratable_register(
            writes in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u32>()), 0..64),
            junk in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u32>()), 0..16),
        ) {
            let regs = SKL.regs;
            let mut s1 = storage();
            let mut src = RegFile::new(&SKL, &mut s1).unwrap();
            for (i, v) in &writes {
                let r = &regs[i % regs.len()];
                src.write(r.offset, Dword, u64::from(*v), &mut NoHooks).unwrap();
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
            dst.apply_sparse(&buf[..n], &mut NoHooks).unwrap();
            for r in regs.iter().filter(|r| r.is_migrated()) {
                proptest::prop_assert_eq!(dst.peek(r.offset), src.peek(r.offset), "{}", r.name);
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
