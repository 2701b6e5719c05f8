//! Targets over the virtual MMIO register file (`mmio`).

use core::cell::RefCell;
use core::ops::{Deref, DerefMut};
use std::vec;
use std::vec::Vec;

use mmio::{
    AccessSize, MMIO_DWORDS, MMIO_SIZE, MmioError, NoHooks, PVINFO_BASE, PVINFO_SIZE, RegFile,
    RegFlags, RegHooks, SKL, SKL_REGS, in_pvinfo, validate_sparse,
};

use crate::input::Bytes;

std::thread_local! {
    /// Reused 2 MiB vreg buffers: allocating them per run dominates a fuzz iteration.
    static POOL: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
}

/// SKL vreg storage (contents unspecified until a [`RegFile`] resets it), returned to a
/// per-thread pool on drop.
#[derive(PartialEq, Eq)]
pub(crate) struct Storage(Vec<u32>);

impl Deref for Storage {
    type Target = Vec<u32>;
    fn deref(&self) -> &Vec<u32> {
        &self.0
    }
}

impl DerefMut for Storage {
    fn deref_mut(&mut self) -> &mut Vec<u32> {
        &mut self.0
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let v = core::mem::take(&mut self.0);
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && p.len() < 4
            {
                p.push(v);
            }
        });
    }
}

/// SKL vreg storage of [`MMIO_DWORDS`] dwords.
pub(crate) fn storage() -> Storage {
    let reused = POOL
        .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten();
    Storage(reused.unwrap_or_else(|| vec![0u32; MMIO_DWORDS]))
}

/// A register file over `storage`; the storage has the right size by construction.
pub(crate) fn regfile(storage: &mut [u32]) -> RegFile<'_> {
    match RegFile::new(&SKL, storage) {
        Ok(r) => r,
        Err(e) => panic!("RegFile::new rejected MMIO_DWORDS of storage: {e}"),
    }
}

/// Hooks that record every `after_write` call.
#[derive(Debug, Default)]
struct Recorder {
    calls: Vec<(u32, u32, u32)>,
}

impl RegHooks for Recorder {
    fn after_write(&mut self, offset: u32, old: u32, new: u32) {
        self.calls.push((offset, old, new));
    }
}

const SIZES: [AccessSize; 4] = [
    AccessSize::Byte,
    AccessSize::Word,
    AccessSize::Dword,
    AccessSize::Qword,
];

/// One decoded access of [`mmio_access`].
#[derive(Clone, Copy, Debug)]
struct Access {
    write: bool,
    size: AccessSize,
    offset: u32,
    value: u64,
}

/// Reads one access: op byte (bit 0 write, bits 2:1 size, bits 4:3 addressing, bits 7:5
/// a byte delta), addressing operands, and for writes an 8-byte value.
fn next_access(input: &mut Bytes<'_>) -> Access {
    let op = input.u8();
    let write = op & 1 != 0;
    let size = SIZES
        .get(usize::from((op >> 1) & 3))
        .copied()
        .unwrap_or(AccessSize::Dword);
    let delta = u32::from(op >> 5);
    let offset = match (op >> 3) & 3 {
        // A table register (index from 2 bytes) plus delta.
        0 => {
            let i = usize::from(input.u16()) % SKL_REGS.len().max(1);
            SKL_REGS.get(i).map_or(0, |r| r.offset).wrapping_add(delta)
        }
        // The PVINFO page.
        1 => PVINFO_BASE + (u32::from(input.u16()) % PVINFO_SIZE),
        // Anywhere in a 16 MiB window (mostly out of range).
        2 => u32::from_le_bytes([input.u8(), input.u8(), input.u8(), 0]),
        // The end of the window, from either side.
        _ => (MMIO_SIZE - 16).wrapping_add(u32::from(input.u8() % 32)),
    };
    let value = if write { input.u64() } else { 0 };
    Access {
        write,
        size,
        offset,
        value,
    }
}

/// Checks one access against the register file's documented behaviour.
fn check_access(regs: &mut RegFile<'_>, a: Access) {
    let n = u32::from(a.size.bytes());
    let first = a.offset & !3;
    // Dwords the access may touch, plus one neighbour on each side.
    let lo = first.saturating_sub(4);
    let window: Vec<(u32, u32)> = (0..5u32)
        .filter_map(|k| {
            let off = lo.checked_add(4 * k)?;
            Some((off, regs.try_peek(off)?))
        })
        .collect();
    let end = u64::from(a.offset) + u64::from(n);
    let in_range = end <= u64::from(MMIO_SIZE);
    let aligned = a.offset.is_multiple_of(n);
    let touched = |off: u32| off >= first && u64::from(off) < end;

    let mut hooks = Recorder::default();
    let result = if a.write {
        regs.write(a.offset, a.size, a.value, &mut hooks)
            .map(|()| 0)
    } else {
        regs.read(a.offset, a.size)
    };
    match result {
        Err(e) => {
            assert!(
                !(in_range && aligned),
                "aligned in-range access failed: {e}"
            );
            if in_range {
                let size = a.size.bytes();
                assert_eq!(
                    e,
                    MmioError::Misaligned {
                        offset: a.offset,
                        size
                    }
                );
            } else {
                assert_eq!(e, MmioError::OutOfRange { offset: a.offset });
            }
            assert!(hooks.calls.is_empty(), "hooks ran for a failed access");
            for &(off, v) in &window {
                assert_eq!(regs.peek(off), v, "failed access changed {off:#x}");
            }
            return;
        }
        Ok(v) => {
            assert!(in_range, "out-of-range access succeeded");
            if n < 8 {
                assert!(v >> (8 * n) == 0, "read returned more than {n} bytes");
            }
        }
    }
    // Nothing outside the accessed dwords changed.
    for &(off, v) in &window {
        if !touched(off) {
            assert_eq!(
                regs.peek(off),
                v,
                "access at {:#x} changed {off:#x}",
                a.offset
            );
        }
    }
    if !a.write {
        for &(off, v) in &window {
            assert_eq!(regs.peek(off), v, "read changed {off:#x}");
        }
        return;
    }
    // One hook call per touched dword, ascending.
    let offs: Vec<u32> = hooks.calls.iter().map(|c| c.0).collect();
    let want: Vec<u32> = window.iter().map(|w| w.0).filter(|&o| touched(o)).collect();
    assert_eq!(offs, want, "hook calls for a write at {:#x}", a.offset);
    for &(off, old, new) in &hooks.calls {
        let before = window.iter().find(|w| w.0 == off).map_or(0, |w| w.1);
        match SKL.find(off) {
            Some(r) if r.flags.contains(RegFlags::WRITE_ONLY) => {
                assert_eq!(old, 0);
                assert_eq!(regs.peek(off), before, "write-only port stored a value");
            }
            Some(r) => {
                assert_eq!((old, regs.peek(off)), (before, new), "hook values");
                let ro = r.effective_ro_mask();
                if r.flags.contains(RegFlags::MODE_MASK) && r.ro_mask != u32::MAX {
                    assert_eq!(new >> 16, 0, "masked register stored its mask half");
                    assert_eq!((new ^ before) & r.ro_mask & 0xFFFF, 0, "RO bits changed");
                } else {
                    assert_eq!((new ^ before) & ro, 0, "RO bits of {off:#x} changed");
                }
            }
            None if in_pvinfo(off) => {
                assert_eq!(new, before, "untracked PVINFO dword is read-only");
            }
            None => {
                assert_eq!((old, regs.peek(off)), (before, new), "hook values");
            }
        }
    }
    // Plain storage reads back what was written.
    let plain = window
        .iter()
        .filter(|w| touched(w.0))
        .all(|w| SKL.find(w.0).is_none() && !in_pvinfo(w.0));
    if plain {
        let mask = if n == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        };
        match regs.read(a.offset, a.size) {
            Ok(v) => assert_eq!(v, a.value & mask, "plain storage read-back"),
            Err(e) => panic!("read after a successful write failed: {e}"),
        }
    }
}

/// Saves `regs`, checks that the payload validates, and restores it into a fresh register
/// file whose vregs must then equal `regs`' on every migrated register.
fn check_save_restore(regs: &RegFile<'_>) {
    let mut buf = vec![0u8; SKL.max_sparse_len()];
    let n = match regs.save_sparse(&mut buf) {
        Ok(n) => n,
        Err(e) => panic!("save_sparse into max_sparse_len bytes failed: {e}"),
    };
    assert_eq!(n, regs.sparse_len(), "sparse_len");
    let payload = buf.get(..n).unwrap_or_default();
    if let Err(e) = validate_sparse(&SKL, payload) {
        panic!("save_sparse output does not validate: {e}");
    }
    let mut st = storage();
    let mut target = regfile(&mut st);
    if let Err(e) = target.apply_sparse(payload, &mut NoHooks) {
        panic!("save_sparse output does not apply: {e}");
    }
    for r in SKL_REGS.iter().filter(|r| r.is_migrated()) {
        assert_eq!(
            target.peek(r.offset),
            regs.peek(r.offset),
            "register {} ({:#x}) not restored",
            r.name,
            r.offset
        );
    }
    assert!(target.guest_aware(), "restore did not mark the guest aware");
}

/// Guest register accesses on the SKL register file.
///
/// Input: up to 256 accesses, each an op byte (bit 0 write, bits 2:1 size 1/2/4/8, bits 4:3
/// addressing: 0 = table register `index % len` from 2 bytes, 1 = PVINFO page offset from 2
/// bytes, 2 = any 24-bit offset from 3 bytes, 3 = `MMIO_SIZE − 16 + (byte % 32)`; bits 7:5
/// are added to a table offset), then an 8-byte value for writes.
///
/// Asserts per access: aligned in-range accesses succeed, out-of-range ones fail with
/// `OutOfRange`; a failed access changes nothing and runs no hook; reads fit their size;
/// writes call the hook once per touched dword in ascending order with the stored old/new
/// values, never change read-only bits, never store the upper half of a masked register or a
/// write-only port, leave neighbouring dwords alone, and plain storage reads back. At the
/// end: the state saves, the payload validates, and restores every migrated register.
pub fn mmio_access(data: &[u8]) {
    let mut st = storage();
    let mut regs = regfile(&mut st);
    let mut input = Bytes::new(data);
    let mut count = 0;
    while !input.is_empty() && count < 256 {
        count += 1;
        let a = next_access(&mut input);
        check_access(&mut regs, a);
    }
    check_save_restore(&regs);
}

/// Sparse restore of arbitrary payloads.
///
/// Input: the whole of `data` is a sparse payload.
///
/// Asserts: `apply_sparse` succeeds exactly when `validate_sparse` does; a rejected payload
/// changes nothing; an accepted one marks the guest aware, applying it twice gives the same
/// vregs, and save → validate → apply into a fresh register file reproduces every vreg.
pub fn mmio_restore(data: &[u8]) {
    let verdict = validate_sparse(&SKL, data);
    let mut a = storage();
    let saved = {
        let mut ra = regfile(&mut a);
        let applied = ra.apply_sparse(data, &mut NoHooks);
        assert_eq!(
            applied, verdict,
            "apply_sparse and validate_sparse disagree"
        );
        assert_eq!(
            ra.guest_aware(),
            applied.is_ok(),
            "guest-aware flag after restore"
        );
        if applied.is_err() {
            None
        } else {
            if let Err(e) = ra.apply_sparse(data, &mut NoHooks) {
                panic!("second apply failed: {e}");
            }
            let mut buf = vec![0u8; SKL.max_sparse_len()];
            let n = match ra.save_sparse(&mut buf) {
                Ok(n) => n,
                Err(e) => panic!("save_sparse failed: {e}"),
            };
            assert_eq!(n, ra.sparse_len(), "sparse_len");
            buf.truncate(n);
            Some(buf)
        }
    };
    let Some(saved) = saved else {
        let mut fresh = storage();
        let _ = regfile(&mut fresh);
        assert!(*a == *fresh, "rejected restore changed the vregs");
        return;
    };
    if let Err(e) = validate_sparse(&SKL, &saved) {
        panic!("saved payload does not validate: {e}");
    }
    let mut b = storage();
    if let Err(e) = regfile(&mut b).apply_sparse(data, &mut NoHooks) {
        panic!("apply of an accepted payload failed on a fresh file: {e}");
    }
    assert!(
        a == b,
        "applying a payload twice differs from applying it once"
    );
    let mut c = storage();
    if let Err(e) = regfile(&mut c).apply_sparse(&saved, &mut NoHooks) {
        panic!("saved payload does not apply: {e}");
    }
    assert!(*a == *c, "save/apply did not reproduce the registers");
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

    #[test]
    fn masked_write_then_restore() {
        // Write dword 0x8000_8000 to GFX_MODE (0x229C) via addressing mode 2.
        let mut data = vec![0b0001_0101, 0x9C, 0x22, 0x00];
        data.extend_from_slice(&0x8000_8000u64.to_le_bytes());
        mmio_access(&data);
        let mut st = storage();
        let mut regs = regfile(&mut st);
        regs.write(0x229C, AccessSize::Dword, 0x8000_8000, &mut NoHooks)
            .unwrap();
        let mut buf = [0u8; 64];
        let n = regs.save_sparse(&mut buf).unwrap();
        assert_eq!(n, 12);
        mmio_restore(&buf[..n]);
    }

    #[test]
    fn access_decoding() {
        let mut b = Bytes::new(&[0b0001_1000, 20]);
        let a = next_access(&mut b);
        assert!(!a.write);
        assert_eq!(a.size, AccessSize::Byte);
        assert_eq!(a.offset, MMIO_SIZE + 4);
        mmio_access(&[0b0001_1000, 20, 0b0001_1110, 13]);
    }

    #[test]
    fn garbage_restore_is_rejected_cleanly() {
        mmio_restore(&[1, 2, 3]);
        mmio_restore(&[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        mmio_restore(&[]);
    }
}
