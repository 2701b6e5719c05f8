//! The vreg store and its trap-and-emulate access paths.

use crate::desc::{EventKind, RegDesc, RegFlags};
use crate::error::MmioError;
use crate::platform::Platform;
use crate::pvinfo::{PvInfo, in_pvinfo};

/// Size of one guest MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AccessSize {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Word,
    /// 4 bytes.
    Dword,
    /// 8 bytes (two dwords, low dword first).
    Qword,
}

impl AccessSize {
    /// Number of bytes.
    #[must_use]
    pub const fn bytes(self) -> u8 {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
            Self::Qword => 8,
        }
    }

    /// From a byte count; `Err(MmioError::BadSize)` unless 1, 2, 4 or 8.
    pub const fn from_bytes(n: usize) -> Result<Self, MmioError> {
        match n {
            1 => Ok(Self::Byte),
            2 => Ok(Self::Word),
            4 => Ok(Self::Dword),
            8 => Ok(Self::Qword),
            _ => Err(MmioError::BadSize),
        }
    }
}

/// A typed side effect of a guest register write (or of a restore replay), passed to
/// [`RegHooks::on_event`]. Which registers raise which event is decided by the platform
/// table ([`RegDesc::event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RegEvent {
    /// A dword was written to the execlist submit port at byte offset `port` (it is not
    /// stored; the device model assembles submissions from these).
    ElspWrite {
        /// Offset of the ELSP register written.
        port: u32,
        /// The written dword.
        dword: u32,
    },
    /// An interrupt mask, enable, identity or master register at `offset` was written (or
    /// replayed): pending interrupts must be recomputed and possibly injected.
    InterruptRecompute {
        /// Offset of the interrupt register.
        offset: u32,
    },
    /// The guest wrote `value` to the PVINFO `g2v_notify` port.
    G2vNotify {
        /// Notification code (2..=7 are PPGTT / execlist-context create and destroy).
        value: u32,
    },
    /// Fence register `index` was written (or replayed); `value` is the 64-bit fence as now
    /// stored (upper dword << 32 | lower dword).
    FenceProgrammed {
        /// Fence number.
        index: u8,
        /// The fence register value.
        value: u64,
    },
    /// The enable bit (31) of pipe `pipe`'s PIPECONF changed; on restore replay it is
    /// raised for every pipe with its current state.
    PipeEnable {
        /// Pipe number (0 = A).
        pipe: u8,
        /// New state of the enable bit.
        enabled: bool,
    },
}

/// Enable bit of a PIPECONF register.
const PIPECONF_ENABLE: u32 = 1 << 31;

/// Side effects of guest register writes, implemented by the device model (vGPU).
///
/// Two levels: [`after_write`](Self::after_write) sees every accepted dword write, and
/// [`on_event`](Self::on_event) receives the typed [`RegEvent`] of the registers the
/// platform table marks with an [`EventKind`]. Both default to doing nothing.
pub trait RegHooks {
    /// Called once per dword of every accepted guest write, in ascending offset order,
    /// after the vreg has been updated. `old` and `new` are the stored values before and
    /// after (equal when the write was ignored, e.g. a read-only PVINFO field). For
    /// [`RegFlags::WRITE_ONLY`] ports (ELSP), `old` is 0 and `new` is the written dword,
    /// which is not stored. Also called, with `old == new == value`, for every replay
    /// register by [`RegFile::apply_sparse`].
    fn after_write(&mut self, offset: u32, old: u32, new: u32) {
        let _ = (offset, old, new);
    }

    /// Called right after [`after_write`](Self::after_write) for a register with an
    /// [`EventKind`] (see [`RegEvent`] for when each event is raised), and for every
    /// replay register with an event during [`RegFile::apply_sparse`].
    fn on_event(&mut self, event: RegEvent) {
        let _ = event;
    }
}

/// Hooks that do nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NoHooks;

impl RegHooks for NoHooks {}

/// Hooks behind a reference (for example `&mut dyn RegHooks`) are hooks.
impl<H: RegHooks + ?Sized> RegHooks for &mut H {
    fn after_write(&mut self, offset: u32, old: u32, new: u32) {
        (**self).after_write(offset, old, new);
    }

    fn on_event(&mut self, event: RegEvent) {
        (**self).on_event(event);
    }
}

/// Words of the summary of blocks that may hold untracked data: 512 blocks of the window
/// (4 KiB each for a 2 MiB window).
const SUMMARY_WORDS: usize = 8;
/// Blocks the summary splits the window into.
pub(crate) const SUMMARY_BLOCKS: usize = SUMMARY_WORDS * 64;

/// The virtual register file of one vGPU over caller storage.
#[derive(Debug)]
pub struct RegFile<'a> {
    platform: &'static Platform,
    storage: &'a mut [u32],
    pvinfo: PvInfo,
    guest_aware: bool,
    /// Bit `b` set: block `b` of the window may hold a nonzero dword at an offset the table
    /// does not have (an untracked register the guest or the device model wrote). Clear bits
    /// are a promise that the block's untracked dwords are all zero; it lets the sparse save
    /// skip the untouched part of the window. Held here, not in caller storage: 64 bytes.
    untracked: [u64; SUMMARY_WORDS],
}

/// Byte mask (in a dword) and data for one dword touched by an access.
struct Lane {
    dword: u32,
    mask: u32,
    /// First covered byte lane of the dword (0..=3).
    first_byte: u32,
    /// Number of access bytes before this dword's first covered byte.
    skipped: u32,
}

impl<'a> RegFile<'a> {
    /// Wraps `storage` (exactly `platform.mmio_size / 4` dwords, [`MMIO_DWORDS`](crate::MMIO_DWORDS)
    /// for [`SKL`](crate::SKL)) and resets it with a zero [`PvInfo`].
    pub fn new(platform: &'static Platform, storage: &'a mut [u32]) -> Result<Self, MmioError> {
        if storage.len() != platform.storage_dwords() {
            return Err(MmioError::StorageSize);
        }
        let mut rf = Self {
            platform,
            storage,
            pvinfo: PvInfo::default(),
            guest_aware: false,
            untracked: [0; SUMMARY_WORDS],
        };
        rf.reset();
        Ok(rf)
    }

    /// Wraps `storage` as it is, in a `const` context: nothing is reset or written, the
    /// [`PvInfo`] is all zero and the guest is not aware.
    ///
    /// Use it to build a register file at compile time or to re-attach storage that
    /// already holds a register file's state (the vregs are the whole register state,
    /// except [`pvinfo`](Self::pvinfo) and [`guest_aware`](Self::guest_aware), which the
    /// caller restores with [`set_guest_aware`](Self::set_guest_aware)). Fresh zeroed
    /// storage must be reset with [`reset_with`](Self::reset_with) before the guest runs;
    /// [`new`](Self::new) does both steps. `Err(StorageSize)` unless `storage` has exactly
    /// `platform.mmio_size / 4` dwords.
    pub const fn new_const(
        platform: &'static Platform,
        storage: &'a mut [u32],
    ) -> Result<Self, MmioError> {
        if storage.len() != platform.storage_dwords() {
            return Err(MmioError::StorageSize);
        }
        Ok(Self {
            platform,
            storage,
            pvinfo: PvInfo {
                vgt_id: 0,
                caps: 0,
                aperture_base: 0,
                aperture_size: 0,
                hidden_base: 0,
                hidden_size: 0,
                fence_num: 0,
            },
            guest_aware: false,
            // The storage may hold anything: every block may have untracked data.
            untracked: [u64::MAX; SUMMARY_WORDS],
        })
    }

    /// The platform of this register file.
    #[must_use]
    pub fn platform(&self) -> &'static Platform {
        self.platform
    }

    /// The PVINFO values last passed to [`reset_with`](Self::reset_with).
    #[must_use]
    pub fn pvinfo(&self) -> &PvInfo {
        &self.pvinfo
    }

    /// Device-model-level reset: every dword 0, every table register its reset value, the
    /// PVINFO fields from the current [`PvInfo`]; clears [`guest_aware`](Self::guest_aware).
    pub fn reset(&mut self) {
        self.storage.fill(0);
        self.untracked = [0; SUMMARY_WORDS];
        for r in self.platform.regs {
            self.store(r.offset, r.reset);
        }
        for (o, v) in self.pvinfo.fields() {
            self.store(o, v);
        }
        self.guest_aware = false;
    }

    /// Replaces the PVINFO values and resets.
    pub fn reset_with(&mut self, pvinfo: &PvInfo) {
        self.pvinfo = *pvinfo;
        self.reset();
    }

    /// True once the guest has read any PVINFO dword (it is "GVT-aware") or after a
    /// restore ([`apply_sparse`](Self::apply_sparse)).
    #[must_use]
    pub fn guest_aware(&self) -> bool {
        self.guest_aware
    }

    /// Sets or clears the guest-aware flag (device model use).
    pub fn set_guest_aware(&mut self, aware: bool) {
        self.guest_aware = aware;
    }

    /// Raw read of the dword containing byte `offset`, bypassing all semantics
    /// (0 outside the window).
    #[must_use]
    pub fn peek(&self, offset: u32) -> u32 {
        self.try_peek(offset).unwrap_or(0)
    }

    /// Raw read of the dword containing byte `offset`; `None` outside the window.
    #[must_use]
    pub fn try_peek(&self, offset: u32) -> Option<u32> {
        self.storage.get(usize::try_from(offset / 4).ok()?).copied()
    }

    /// Raw write of the dword containing byte `offset`, bypassing all semantics and hooks
    /// (ignored outside the window; see [`try_poke`](Self::try_poke)).
    pub fn poke(&mut self, offset: u32, value: u32) {
        let _ = self.try_poke(offset, value);
    }

    /// Raw write; `Err(OutOfRange)` outside the window.
    pub fn try_poke(&mut self, offset: u32, value: u32) -> Result<(), MmioError> {
        let slot = usize::try_from(offset / 4)
            .ok()
            .and_then(|i| self.storage.get_mut(i))
            .ok_or(MmioError::OutOfRange { offset })?;
        *slot = value;
        if self.platform.find(offset & !3).is_none() {
            self.mark_untracked(offset / 4);
        }
        Ok(())
    }

    /// Dwords per block of the untracked summary (1024 for a 2 MiB window).
    fn block_dwords(&self) -> usize {
        self.storage.len().div_ceil(SUMMARY_BLOCKS).max(1)
    }

    /// Notes that the dword at index `dword` (byte offset / 4), not a table register, may be
    /// nonzero.
    fn mark_untracked(&mut self, dword: u32) {
        let block = usize::try_from(dword).unwrap_or(usize::MAX) / self.block_dwords();
        if let Some(w) = self.untracked.get_mut(block / 64) {
            *w |= 1 << (block % 64);
        }
    }

    /// Forgets every untracked mark: the caller has just made every untracked dword zero.
    pub(crate) fn clear_untracked_marks(&mut self) {
        self.untracked = [0; SUMMARY_WORDS];
    }

    /// The dword index ranges of the blocks that may hold nonzero untracked dwords, ascending.
    pub(crate) fn untracked_blocks(&self) -> impl Iterator<Item = core::ops::Range<usize>> + '_ {
        let per = self.block_dwords();
        let len = self.storage.len();
        // Set bits only, word by word (most words are 0).
        (0..SUMMARY_WORDS)
            .flat_map(move |i| {
                let mut w = self.untracked.get(i).copied().unwrap_or(0);
                core::iter::from_fn(move || {
                    if w == 0 {
                        return None;
                    }
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    Some(i * 64 + bit)
                })
            })
            .map(move |b| {
                (b.saturating_mul(per)).min(len)..(b.saturating_add(1).saturating_mul(per)).min(len)
            })
            .filter(|r| !r.is_empty())
    }

    /// The whole vreg storage, read-only (dword `i` is byte offset `4 * i`).
    #[must_use]
    pub fn words(&self) -> &[u32] {
        self.storage
    }

    /// Raw write without the untracked bookkeeping: for table registers, and for untracked
    /// dwords whose caller marks them itself.
    pub(crate) fn store(&mut self, offset: u32, value: u32) {
        if let Some(slot) = usize::try_from(offset / 4)
            .ok()
            .and_then(|i| self.storage.get_mut(i))
        {
            *slot = value;
        }
    }

    /// Writes untracked dword `dword` (index) as restored from a migration payload.
    pub(crate) fn restore_untracked(&mut self, dword: usize, value: u32) {
        if let Some(slot) = self.storage.get_mut(dword) {
            *slot = value;
            if let Ok(d) = u32::try_from(dword) {
                self.mark_untracked(d);
            }
        }
    }

    /// Sets untracked dword `dword` (index) to zero.
    pub(crate) fn zero_dword(&mut self, dword: usize) {
        if let Some(slot) = self.storage.get_mut(dword) {
            *slot = 0;
        }
    }

    fn check_access(&self, offset: u32, size: AccessSize) -> Result<(), MmioError> {
        let n = u32::from(size.bytes());
        match offset.checked_add(n) {
            Some(end) if end <= self.platform.mmio_size => {}
            _ => return Err(MmioError::OutOfRange { offset }),
        }
        if !offset.is_multiple_of(n) {
            let unalign = self
                .platform
                .find(offset & !3)
                .is_some_and(|r| r.flags.contains(RegFlags::UNALIGN));
            if !unalign {
                return Err(MmioError::Misaligned {
                    offset,
                    size: size.bytes(),
                });
            }
        }
        Ok(())
    }

    /// The dwords an access touches, with byte masks (at most 3: an unaligned 8-byte
    /// access straddles three dwords).
    fn lanes(offset: u32, size: AccessSize) -> impl Iterator<Item = Lane> {
        let n = u32::from(size.bytes());
        let first = offset & !3;
        let end = offset.saturating_add(n);
        (0..3u32).filter_map(move |k| {
            let dword = first.checked_add(k.checked_mul(4)?)?;
            if dword >= end {
                return None;
            }
            let lo = offset.max(dword);
            let hi = end.min(dword.saturating_add(4));
            let first_byte = lo - dword;
            let count = hi - lo;
            let mask = if count >= 4 {
                u32::MAX
            } else {
                ((1u32 << (8 * count)) - 1) << (8 * first_byte)
            };
            Some(Lane {
                dword,
                mask,
                first_byte,
                skipped: lo - offset,
            })
        })
    }

    fn read_dword(&mut self, dword: u32) -> u32 {
        if in_pvinfo(dword) {
            self.guest_aware = true;
        }
        match self.platform.find(dword) {
            Some(r) if r.flags.contains(RegFlags::WRITE_ONLY) => 0,
            _ => self.peek(dword),
        }
    }

    /// Guest read of `size` bytes at `offset` (little-endian, zero-extended).
    ///
    /// Takes `&mut self` because reading any PVINFO dword marks the guest GVT-aware.
    /// Write-only ports read as 0; all other offsets return the stored value.
    pub fn read(&mut self, offset: u32, size: AccessSize) -> Result<u64, MmioError> {
        self.check_access(offset, size)?;
        let mut out = 0u64;
        for lane in Self::lanes(offset, size) {
            let v = self.read_dword(lane.dword) & lane.mask;
            let bytes = u64::from(v >> (8 * lane.first_byte));
            out |= bytes << (8 * lane.skipped);
        }
        Ok(out)
    }

    /// Guest write of the low `size` bytes of `value` at `offset`.
    ///
    /// Each touched dword is processed in ascending order: partial writes are merged into
    /// the stored dword, then the register's semantics apply ([`RegDesc::apply_write`]);
    /// untracked offsets are plain storage, except inside the PVINFO page where untracked
    /// offsets are read-only. Then `hooks.after_write` runs for that dword.
    pub fn write(
        &mut self,
        offset: u32,
        size: AccessSize,
        value: u64,
        hooks: &mut impl RegHooks,
    ) -> Result<(), MmioError> {
        self.check_access(offset, size)?;
        for lane in Self::lanes(offset, size) {
            let shifted = (value >> (8 * lane.skipped)) << (8 * lane.first_byte);
            // Masked to the dword's lanes, so the conversion cannot fail.
            let data = u32::try_from(shifted & u64::from(lane.mask)).unwrap_or(0);
            self.write_dword(lane.dword, lane.mask, data, hooks);
        }
        Ok(())
    }

    fn write_dword(&mut self, dword: u32, mask: u32, data: u32, hooks: &mut impl RegHooks) {
        let desc: Option<&RegDesc> = self.platform.find(dword);
        if let Some(r) = desc.filter(|r| r.flags.contains(RegFlags::WRITE_ONLY)) {
            let new = r.apply_write(0, data & mask);
            hooks.after_write(dword, 0, new);
            if let Some(ev) = self.event(r, 0, new, false) {
                hooks.on_event(ev);
            }
            return;
        }
        let old = self.peek(dword);
        let merged = (old & !mask) | (data & mask);
        let new = match desc {
            Some(r) => r.apply_write(old, merged),
            None if in_pvinfo(dword) => old,
            None => {
                self.mark_untracked(dword / 4);
                merged
            }
        };
        self.store(dword, new);
        hooks.after_write(dword, old, new);
        if let Some(ev) = desc.and_then(|r| self.event(r, old, new, false)) {
            hooks.on_event(ev);
        }
    }

    /// The typed event of a write of `r` from `old` to `new` (`replay`: raised by a restore,
    /// where state-change filters do not apply).
    pub(crate) fn event(&self, r: &RegDesc, old: u32, new: u32, replay: bool) -> Option<RegEvent> {
        Some(match r.event? {
            EventKind::Elsp => RegEvent::ElspWrite {
                port: r.offset,
                dword: new,
            },
            EventKind::Interrupt => RegEvent::InterruptRecompute { offset: r.offset },
            EventKind::G2vNotify => RegEvent::G2vNotify { value: new },
            EventKind::Fence { index, hi } => {
                let lo = if hi {
                    r.offset.checked_sub(4)?
                } else {
                    r.offset
                };
                let value =
                    (u64::from(self.peek(lo.checked_add(4)?)) << 32) | u64::from(self.peek(lo));
                RegEvent::FenceProgrammed { index, value }
            }
            EventKind::PipeConf { pipe } => {
                if !replay && (old ^ new) & PIPECONF_ENABLE == 0 {
                    return None;
                }
                RegEvent::PipeEnable {
                    pipe,
                    enabled: new & PIPECONF_ENABLE != 0,
                }
            }
        })
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
pub(crate) mod tests {
    extern crate std;
    use super::*;
    use crate::platform::{MMIO_DWORDS, SKL};
    use crate::pvinfo::off;
    use std::vec;
    use std::vec::Vec;

    #[derive(Default)]
    pub(crate) struct Rec(pub(crate) Vec<(u32, u32, u32)>);
    impl RegHooks for Rec {
        fn after_write(&mut self, offset: u32, old: u32, new: u32) {
            self.0.push((offset, old, new));
        }
    }

    pub(crate) fn storage() -> Vec<u32> {
        vec![0u32; MMIO_DWORDS]
    }

    use AccessSize::{Byte, Dword, Qword, Word};

    /// Records both hook levels.
    #[derive(Default)]
    pub(crate) struct Both {
        pub(crate) writes: Vec<(u32, u32, u32)>,
        pub(crate) events: Vec<RegEvent>,
    }
    impl RegHooks for Both {
        fn after_write(&mut self, offset: u32, old: u32, new: u32) {
            self.writes.push((offset, old, new));
        }
        fn on_event(&mut self, event: RegEvent) {
            self.events.push(event);
        }
    }

    #[test]
    fn typed_events_on_guest_writes() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Both::default();
        rf.write(0x22230, Dword, 0xAB, &mut h).unwrap(); // BCS ELSP
        rf.write(off::G2V_NOTIFY, Dword, 4, &mut h).unwrap();
        rf.write(0x44304, Dword, 0xFFFF_FEFF, &mut h).unwrap(); // GT0 IMR
        rf.write(0x44308, Dword, 1, &mut h).unwrap(); // GT0 IIR (W1C)
        rf.write(0x44300, Dword, 1, &mut h).unwrap(); // GT0 ISR: read-only, no event
        rf.write(0x70180, Dword, 1 << 31, &mut h).unwrap(); // PLANE_CTL_A: no event
        assert_eq!(
            h.events,
            [
                RegEvent::ElspWrite {
                    port: 0x22230,
                    dword: 0xAB
                },
                RegEvent::G2vNotify { value: 4 },
                RegEvent::InterruptRecompute { offset: 0x44304 },
                RegEvent::InterruptRecompute { offset: 0x44308 },
            ]
        );
        assert_eq!(h.writes.len(), 6);
    }

    #[test]
    fn fence_event_carries_both_dwords() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Both::default();
        rf.write(0x10_0008, Qword, 0x0123_4000_0567_8001, &mut h)
            .unwrap();
        assert_eq!(
            h.events,
            [
                RegEvent::FenceProgrammed {
                    index: 1,
                    value: 0x0000_0000_0567_8001
                },
                RegEvent::FenceProgrammed {
                    index: 1,
                    value: 0x0123_4000_0567_8001
                },
            ]
        );
        let mut h = Both::default();
        rf.write(0x10_00FC, Dword, 7, &mut h).unwrap();
        assert_eq!(
            h.events,
            [RegEvent::FenceProgrammed {
                index: 31,
                value: 7 << 32
            }]
        );
    }

    #[test]
    fn pipe_enable_event_only_on_change() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Both::default();
        rf.write(0x71008, Dword, 1 << 31, &mut h).unwrap();
        rf.write(0x71008, Dword, (1 << 31) | 0x40, &mut h).unwrap();
        rf.write(0x72008, Dword, 0x40, &mut h).unwrap();
        rf.write(0x71008, Dword, 0, &mut h).unwrap();
        assert_eq!(
            h.events,
            [
                RegEvent::PipeEnable {
                    pipe: 1,
                    enabled: true
                },
                RegEvent::PipeEnable {
                    pipe: 1,
                    enabled: false
                },
            ]
        );
        assert_eq!(rf.peek(0x72008), 0x40);
        assert_eq!(h.writes.len(), 4);
    }

    #[test]
    fn new_const_wraps_without_reset() {
        let mut s = vec![0u32; 8];
        assert_eq!(
            RegFile::new_const(&SKL, &mut s).unwrap_err(),
            MmioError::StorageSize
        );
        let mut s = storage();
        s[0x2030 / 4] = 0x55;
        {
            let rf = RegFile::new_const(&SKL, &mut s).unwrap();
            assert_eq!(rf.peek(0x2030), 0x55);
            assert_eq!(rf.peek(0x23A0), 0); // reset value 7 not loaded yet
            assert_eq!(*rf.pvinfo(), PvInfo::default());
            assert!(!rf.guest_aware());
        }
        let mut rf = RegFile::new_const(&SKL, &mut s).unwrap();
        rf.reset_with(&PvInfo {
            fence_num: 4,
            ..PvInfo::default()
        });
        assert_eq!(rf.peek(0x2030), 0);
        assert_eq!(rf.peek(0x23A0), 7);
        assert_eq!(rf.peek(off::FENCE_NUM), 4);
    }

    #[test]
    fn vreg_store_in_a_static() {
        use std::sync::Mutex;
        static STORE: Mutex<crate::VregStore> = Mutex::new(crate::VregStore::new());
        let mut g = STORE.lock().unwrap();
        assert_eq!(g.as_slice().len(), MMIO_DWORDS);
        assert!(g.as_slice().iter().all(|&d| d == 0));
        {
            let mut rf = RegFile::new(&SKL, g.as_mut_slice()).unwrap();
            rf.write(0x7019C, Dword, 0x0010_0000, &mut NoHooks).unwrap();
        }
        assert_eq!(g.as_slice()[0x7019C / 4], 0x0010_0000);
        assert_eq!(g.as_slice()[0x23A0 / 4], 7);
        let small = crate::VregStore::<4>::default();
        assert_eq!(std::format!("{small:?}"), "VregStore<4>");
    }

    #[test]
    fn storage_size_checked() {
        let mut s = vec![0u32; 16];
        assert_eq!(
            RegFile::new(&SKL, &mut s).unwrap_err(),
            MmioError::StorageSize
        );
    }

    #[test]
    fn reset_values_loaded() {
        let mut s = storage();
        s[0x1234] = 99;
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        assert_eq!(rf.peek(0x1234 * 4), 0);
        assert_eq!(rf.peek(0x23A0), 7);
        assert_eq!(rf.peek(0x44304), u32::MAX);
        assert_eq!(rf.read(0x78830, Dword).unwrap(), 0xFFFF_FFFF);
    }

    #[test]
    fn plain_and_untracked_storage() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Rec::default();
        rf.write(0x2034, Dword, 0x0000_1040, &mut h).unwrap();
        assert_eq!(rf.read(0x2034, Dword).unwrap(), 0x1040);
        rf.write(0x5000, Word, 0xBEEF, &mut h).unwrap();
        rf.write(0x5002, Byte, 0x7A, &mut h).unwrap();
        assert_eq!(rf.read(0x5000, Dword).unwrap(), 0x007A_BEEF);
        assert_eq!(rf.read(0x5001, Byte).unwrap(), 0xBE);
        assert_eq!(rf.read(0x5002, Word).unwrap(), 0x007A);
        assert_eq!(
            h.0,
            [
                (0x2034, 0, 0x1040),
                (0x5000, 0, 0xBEEF),
                (0x5000, 0xBEEF, 0x7ABEEF)
            ]
        );
    }

    #[test]
    fn qword_access_is_two_dwords() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Rec::default();
        rf.write(0x10_0008, Qword, 0x1122_3344_5566_7788, &mut h)
            .unwrap();
        assert_eq!(rf.peek(0x10_0008), 0x5566_7788);
        assert_eq!(rf.peek(0x10_000C), 0x1122_3344);
        assert_eq!(rf.read(0x10_0008, Qword).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(
            h.0,
            [(0x10_0008, 0, 0x5566_7788), (0x10_000C, 0, 0x1122_3344)]
        );
    }

    #[test]
    fn masked_register_through_file() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.write(0x229C, Dword, 0x8000_8000, &mut NoHooks).unwrap();
        assert_eq!(rf.read(0x229C, Dword).unwrap(), 0x8000);
        rf.write(0x229C, Dword, 0x0000_0001, &mut NoHooks).unwrap();
        assert_eq!(rf.read(0x229C, Dword).unwrap(), 0x8000);
        rf.write(0x229C, Dword, 0x8001_0001, &mut NoHooks).unwrap();
        assert_eq!(rf.read(0x229C, Dword).unwrap(), 0x0001);
        // CSB pointer: guest moves the read pointer, the write pointer stays.
        rf.write(0x23A0, Dword, 0xFFFF_0305, &mut NoHooks).unwrap();
        assert_eq!(rf.read(0x23A0, Dword).unwrap(), 0x0307);
    }

    #[test]
    fn w1c_and_read_only_through_file() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        rf.poke(0x44308, 0b1101);
        rf.write(0x44308, Dword, 0b0101, &mut NoHooks).unwrap();
        assert_eq!(rf.read(0x44308, Dword).unwrap(), 0b1000);
        rf.poke(0x44300, 0x55);
        let mut h = Rec::default();
        rf.write(0x44300, Dword, 0xFFFF_FFFF, &mut h).unwrap();
        assert_eq!(rf.read(0x44300, Dword).unwrap(), 0x55);
        assert_eq!(h.0, [(0x44300, 0x55, 0x55)]);
    }

    #[test]
    fn elsp_is_a_write_only_port() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Rec::default();
        for d in [1u32, 2, 3, 4] {
            rf.write(0x2230, Dword, u64::from(d), &mut h).unwrap();
        }
        assert_eq!(rf.read(0x2230, Dword).unwrap(), 0);
        assert_eq!(rf.peek(0x2230), 0);
        assert_eq!(
            h.0,
            [
                (0x2230, 0, 1),
                (0x2230, 0, 2),
                (0x2230, 0, 3),
                (0x2230, 0, 4)
            ]
        );
    }

    #[test]
    fn alignment_and_range() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        assert_eq!(
            rf.read(0x2032, Dword).unwrap_err(),
            MmioError::Misaligned {
                offset: 0x2032,
                size: 4
            }
        );
        assert_eq!(
            rf.write(0x2034, Qword, 0, &mut NoHooks).unwrap_err(),
            MmioError::Misaligned {
                offset: 0x2034,
                size: 8
            }
        );
        assert_eq!(
            rf.read(0x20_0000, Byte).unwrap_err(),
            MmioError::OutOfRange { offset: 0x20_0000 }
        );
        assert_eq!(
            rf.read(0x1F_FFFC, Qword).unwrap_err(),
            MmioError::OutOfRange { offset: 0x1F_FFFC }
        );
        assert_eq!(
            rf.read(u32::MAX, Byte).unwrap_err(),
            MmioError::OutOfRange { offset: u32::MAX }
        );
        assert!(rf.read(0x1F_FFF8, Qword).is_ok());
        assert_eq!(AccessSize::from_bytes(3), Err(MmioError::BadSize));
        assert_eq!(AccessSize::from_bytes(8), Ok(Qword));
    }

    #[test]
    fn pvinfo_reads_mark_aware_and_serve_values() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let pv = PvInfo {
            vgt_id: 3,
            caps: PvInfo::CAP_FULL_PPGTT | PvInfo::CAP_HWSP_EMULATION,
            aperture_base: 0x0800_0000,
            aperture_size: 0x0400_0000,
            hidden_base: 0x8000_0000,
            hidden_size: 0x1000_0000,
            fence_num: 4,
        };
        rf.reset_with(&pv);
        assert!(!rf.guest_aware());
        // Reads outside PVINFO do not count.
        rf.read(0x2034, Dword).unwrap();
        assert!(!rf.guest_aware());
        assert_eq!(rf.read(0x78000, Qword).unwrap(), crate::PVINFO_MAGIC);
        assert!(rf.guest_aware());
        assert_eq!(rf.read(0x78008, Word).unwrap(), 1);
        assert_eq!(rf.read(0x7800A, Word).unwrap(), 0);
        assert_eq!(rf.read(off::VGT_ID, Dword).unwrap(), 3);
        assert_eq!(rf.read(off::VGT_CAPS, Dword).unwrap(), 0xC);
        assert_eq!(rf.read(off::APERTURE_BASE, Dword).unwrap(), 0x0800_0000);
        assert_eq!(rf.read(off::APERTURE_SIZE, Dword).unwrap(), 0x0400_0000);
        assert_eq!(rf.read(off::HIDDEN_BASE, Dword).unwrap(), 0x8000_0000);
        assert_eq!(rf.read(off::HIDDEN_SIZE, Dword).unwrap(), 0x1000_0000);
        assert_eq!(rf.read(off::FENCE_NUM, Dword).unwrap(), 4);
        // Packed struct: unaligned reads are allowed inside PVINFO.
        assert_eq!(rf.read(0x78001, Word).unwrap(), 0x5447);
        assert_eq!(rf.read(0x78006, Dword).unwrap(), 0x0001_4776);
        rf.reset();
        assert!(!rf.guest_aware());
        assert_eq!(rf.read(off::FENCE_NUM, Dword).unwrap(), 4);
    }

    #[test]
    fn pvinfo_guest_writes() {
        let mut s = storage();
        let mut rf = RegFile::new(&SKL, &mut s).unwrap();
        let mut h = Rec::default();
        rf.write(off::VGT_ID, Dword, 77, &mut h).unwrap();
        rf.write(0x78808, Dword, 5, &mut h).unwrap(); // rsv5: untracked, read-only
        rf.write(off::DISPLAY_READY, Dword, 1, &mut h).unwrap();
        rf.write(off::G2V_NOTIFY, Dword, 4, &mut h).unwrap();
        assert_eq!(rf.peek(off::VGT_ID), 0);
        assert_eq!(rf.peek(0x78808), 0);
        assert_eq!(rf.peek(off::DISPLAY_READY), 1);
        assert_eq!(
            h.0,
            [
                (off::VGT_ID, 0, 0),
                (0x78808, 0, 0),
                (off::DISPLAY_READY, 0, 1),
                (off::G2V_NOTIFY, 0, 4)
            ]
        );
        assert!(!rf.guest_aware());
        // Unaligned 8-byte write straddling three dwords of the (packed) pdp array.
        let mut h = Rec::default();
        rf.write(0x7883A, Qword, 0x1122_3344_5566_7788, &mut h)
            .unwrap();
        assert_eq!(
            h.0,
            [
                (0x78838, 0, 0x7788_0000),
                (0x7883C, 0, 0x3344_5566),
                (0x78840, 0, 0x1122)
            ]
        );
        assert_eq!(rf.read(0x7883A, Qword).unwrap(), 0x1122_3344_5566_7788);
        assert!(rf.guest_aware());
    }
}
