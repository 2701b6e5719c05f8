//! Target over `gmem`'s public API: guest memory maps, dirty bitmaps (plain and atomic),
//! DMA-logging dirty reports and the pre-copy policies, checked against simple models.
//!
//! Input layout (missing bytes read as zero):
//!
//! | Bytes   | Meaning                                                                          |
//! |---------|----------------------------------------------------------------------------------|
//! | 0       | bit 7 clear: *built* map of `1 + (b & 15)` regions; set: *raw* map of `b & 31` regions |
//! | regions | built: per region u16 gap, u8 count − 1 (see [`build_spec`]); raw: per region u64 start, u16 count `% 1025` |
//! | rest    | operations, one opcode byte each (low nibble: operation, high nibble: variant) plus operands |
//!
//! A built map is sorted and disjoint by construction (gaps of 0 make adjacent regions, large
//! gaps jump above 4 GiB) and must be accepted. A raw map may hold empty, overflowing,
//! unsorted, overlapping or too many regions and must be rejected with the matching error
//! exactly when it is invalid. Operations then run on two [`DirtyBitmap`]s and one
//! [`AtomicDirtyBitmap`] over the map's dense index, each mirrored by a `Vec<bool>` model,
//! plus a bitmap one bit longer for size-mismatch errors:
//!
//! | Op | Operation |
//! |----|-----------|
//! | 0  | `set` (plain or atomic) |
//! | 1  | `set_range` (plain or atomic) |
//! | 2  | `harvest_into` (plain, atomic, or into the longer bitmap: `SizeMismatch`) |
//! | 3  | `harvest_each` (plain or atomic) |
//! | 4  | `absorb` (both directions, or the longer bitmap) |
//! | 5  | `take_next`, once or until empty |
//! | 6  | full check: `iter_ones`, `count`, `test`, `len` of every bitmap |
//! | 7  | `clear` |
//! | 8  | `range_each` / `take_range_each` |
//! | 9  | `DirtyReport::report` / `peek` with arbitrary `iova`, `length`, `page_size` |
//! | 10 | a policy fed arbitrary `RoundStats` until past its switch bound |
//! | 11+| a batch of `set`s |
//!
//! Checks: every call either succeeds exactly as the model predicts or fails with a typed
//! error and changes nothing; enumeration is ascending and equals the model; reports set
//! exactly the model's aggregation of dirty frames into report pages (holes and addresses
//! beyond guest RAM never dirty) on top of what the caller's bitmap held, and `report`
//! clears what it reported; every policy switches within its documented bound
//! ([`Policy`] by `max_rounds`, [`QemuPolicy`] by its iteration limit, [`StopAndCopy`] on the
//! first round), for the documented reason, and latches its decision and status.

use std::vec;
use std::vec::Vec;

use core::sync::atomic::AtomicU64;

use gmem::{
    AtomicDirtyBitmap, Decision, DirtyBitmap, DirtyReport, DmaRange, FrameRange, GFN_LIMIT,
    GmemError, GuestMemoryMap, MAX_REGIONS, MigrationStatus, Policy, PolicyConfig, PrecopyPolicy,
    QemuConfig, QemuPolicy, ReportError, RoundStats, STALL_ROUNDS, StopAndCopy, SwitchReason,
    words_for,
};
use gtt::Gfn;

use crate::input::Bytes;

/// Operations per input.
const MAX_OPS: usize = 256;
/// Largest caller bitmap (in words) the target allocates for a report.
const MAX_REPORT_WORDS: usize = 1 << 12;
/// The first frame above 4 GiB.
const FOUR_GIB_FRAME: u64 = 1 << 20;
/// Bytes in a guest frame.
const FRAME: u64 = 4096;
/// Rounds fed to a policy without a switch bound.
const UNBOUNDED_ROUNDS: u32 = 16;

/// The regions described by the map part of the input, as `(start, count)` pairs, and whether
/// the map is raw (may be invalid).
pub(crate) fn build_spec(input: &mut Bytes<'_>) -> (bool, Vec<(u64, u64)>) {
    let head = input.u8();
    let raw = head & 0x80 != 0;
    let n = if raw {
        usize::from(head & 0x1F)
    } else {
        1 + usize::from(head & 0x0F)
    };
    let mut spec = Vec::with_capacity(n);
    let mut prev_end = 0u64;
    for _ in 0..n {
        if raw {
            let s = input.u64();
            let count = u64::from(input.u16()) % 1025;
            // Bits 63:62 pick low RAM, above 4 GiB, near the frame limit, or anything.
            let start = match s >> 62 {
                0 => s & 0xF_FFFF,
                1 => FOUR_GIB_FRAME + (s & 0xFF_FFFF),
                2 => GFN_LIMIT - (s & 0xFFF),
                _ => s,
            };
            spec.push((start, count));
        } else {
            // Gap: bits 15:14 scale bits 13:0 by 1, 2^8 or 2^20 frames, or jump above 4 GiB.
            let gap = input.u16();
            let count = 1 + u64::from(input.u8());
            let low = u64::from(gap & 0x3FFF);
            let start = match gap >> 14 {
                0 => prev_end + low,
                1 => prev_end + (low << 8),
                2 => prev_end + (low << 20),
                _ => prev_end.max(FOUR_GIB_FRAME) + low,
            };
            prev_end = start + count;
            spec.push((start, count));
        }
    }
    (raw, spec)
}

/// Builds the map of `spec`, checking every rejection against the documented conditions.
/// Returns `None` if the map is (correctly) rejected.
fn build_map(raw: bool, spec: &[(u64, u64)]) -> Option<GuestMemoryMap> {
    let mut ranges = Vec::with_capacity(spec.len());
    for &(start, count) in spec {
        let got = FrameRange::new(Gfn::new(start), count);
        let expect = if count == 0 {
            Err(GmemError::EmptyRegion)
        } else if start.checked_add(count).is_none_or(|e| e > GFN_LIMIT) {
            Err(GmemError::RegionOverflow)
        } else {
            Ok(())
        };
        assert_eq!(
            got.map(|_| ()),
            expect,
            "FrameRange::new({start:#x}, {count})"
        );
        let Ok(r) = got else {
            assert!(raw, "built map produced an invalid region");
            return None;
        };
        assert_eq!(
            (r.start(), r.count(), r.end()),
            (Gfn::new(start), count, start + count)
        );
        assert!(r.contains(Gfn::new(start)) && r.contains(Gfn::new(start + count - 1)));
        assert!(!r.contains(Gfn::new(start + count)));
        assert!(start == 0 || !r.contains(Gfn::new(start - 1)));
        ranges.push(r);
    }
    let unsorted = spec
        .windows(2)
        .any(|w| matches!(w, [(s0, c0), (s1, _)] if *s1 < s0 + c0));
    let too_many = spec.len() > MAX_REGIONS;
    let got = GuestMemoryMap::new(&ranges);
    match (&got, unsorted, too_many) {
        (Ok(_), false, false)
        | (Err(GmemError::Unsorted), true, _)
        | (Err(GmemError::TooManyRegions), _, true) => {}
        _ => panic!(
            "GuestMemoryMap::new: {:?} for unsorted={unsorted} too_many={too_many}",
            got.as_ref().err()
        ),
    }
    assert!(got.is_ok() || raw, "built map rejected");
    let map = got.ok()?;
    assert_eq!(map.regions(), ranges.as_slice(), "regions");
    Some(map)
}

/// Whether `gfn` lies in a region of `spec` (the reference for `contains`).
fn spec_contains(spec: &[(u64, u64)], gfn: u64) -> bool {
    spec.iter().any(|&(s, c)| gfn >= s && gfn - s < c)
}

/// Checks the dense index of `map` against `spec`; returns the frame of every dense index.
fn check_map(map: &GuestMemoryMap, spec: &[(u64, u64)]) -> Vec<u64> {
    let gfn_of: Vec<u64> = spec.iter().flat_map(|&(s, c)| s..s + c).collect();
    let frames = u64::try_from(gfn_of.len()).unwrap_or(u64::MAX);
    assert_eq!(map.frames(), frames, "frames");
    for (i, &g) in gfn_of.iter().enumerate() {
        assert_eq!(map.frame_at(i), Some(Gfn::new(g)), "frame_at({i})");
        assert_eq!(map.index_of(Gfn::new(g)), Some(i), "index_of({g:#x})");
        assert!(map.contains(Gfn::new(g)));
    }
    let mut probes = vec![u64::MAX, GFN_LIMIT, 0];
    for &(s, c) in spec {
        probes.extend([s.wrapping_sub(1), s + c]);
    }
    for g in probes {
        if !spec_contains(spec, g) {
            assert!(!map.contains(Gfn::new(g)), "hole {g:#x} is RAM");
            assert_eq!(map.index_of(Gfn::new(g)), None, "index_of(hole {g:#x})");
        }
    }
    assert_eq!(map.frame_at(gfn_of.len()), None);
    assert_eq!(map.frame_at(usize::MAX), None);
    gfn_of
}

/// A bit index: mostly in range (or exactly one past), sometimes far out.
fn pick(v: u16, bits: usize) -> usize {
    match v >> 14 {
        3 if v & 0x2000 != 0 => usize::MAX - usize::from(v & 0xFF),
        3 => bits + usize::from(v & 0xFF),
        _ => usize::from(v & 0x3FFF) % (bits + 1),
    }
}

/// A bit count: mostly short, sometimes the whole bitmap or overflowing.
fn pick_count(v: u16, bits: usize) -> usize {
    match v >> 14 {
        0 => usize::from(v & 0x7F),
        1 => usize::from(v & 0x3FFF) % (bits + 1),
        2 => bits,
        _ => usize::MAX - usize::from(v & 0xFF),
    }
}

/// Whether `start..start + count` lies inside `bits` bits.
fn in_range(start: usize, count: usize, bits: usize) -> bool {
    start.checked_add(count).is_some_and(|e| e <= bits)
}

/// The set positions of a model.
fn ones(m: &[bool]) -> Vec<usize> {
    m.iter()
        .enumerate()
        .filter_map(|(i, &b)| b.then_some(i))
        .collect()
}

/// Sets `start..start + count` of a model (the range is in range).
fn model_set(m: &mut [bool], start: usize, count: usize) {
    for x in m.iter_mut().skip(start).take(count) {
        *x = true;
    }
}

/// The bitmaps under test and their models.
struct State<'s> {
    a: DirtyBitmap<'s>,
    b: DirtyBitmap<'s>,
    c: AtomicDirtyBitmap<'s>,
    /// One bit longer than the others, always empty.
    long: DirtyBitmap<'s>,
    ma: Vec<bool>,
    mb: Vec<bool>,
    mc: Vec<bool>,
    bits: usize,
}

impl State<'_> {
    fn check_all(&self) {
        for (name, bm, m) in [("a", &self.a, &self.ma), ("b", &self.b, &self.mb)] {
            let want = ones(m);
            assert_eq!(
                bm.iter_ones().collect::<Vec<_>>(),
                want,
                "iter_ones({name})"
            );
            assert_eq!(bm.count(), want.len(), "count({name})");
            assert_eq!((bm.len(), bm.is_empty()), (self.bits, self.bits == 0));
            assert_eq!(bm.words().len(), words_for(self.bits));
        }
        let want = ones(&self.mc);
        assert_eq!(self.c.count(), want.len(), "count(c)");
        assert_eq!(
            (self.c.len(), self.c.is_empty()),
            (self.bits, self.bits == 0)
        );
        for (i, &x) in self.mc.iter().enumerate() {
            assert_eq!(self.c.test(i), x, "test(c, {i})");
        }
        assert!(!self.c.test(self.bits) && !self.a.test(self.bits) && !self.b.test(usize::MAX));
        assert_eq!(self.long.count(), 0, "the longer bitmap gained bits");
    }

    fn set(&mut self, atomic: bool, start: usize, count: usize) {
        let ok = in_range(start, count, self.bits);
        let (got, m) = if atomic {
            (self.c.set_range(start, count), &mut self.mc)
        } else {
            (self.a.set_range(start, count), &mut self.ma)
        };
        assert_eq!(
            got,
            if ok {
                Ok(())
            } else {
                Err(GmemError::OutOfRange)
            }
        );
        if ok {
            model_set(m, start, count);
        }
    }

    fn set_one(&mut self, atomic: bool, bit: usize) {
        let ok = bit < self.bits;
        let (got, m) = if atomic {
            (self.c.set(bit), &mut self.mc)
        } else {
            (self.a.set(bit), &mut self.ma)
        };
        assert_eq!(
            got,
            if ok {
                Ok(())
            } else {
                Err(GmemError::OutOfRange)
            }
        );
        if let Some(x) = m.get_mut(bit) {
            *x = true;
        }
    }

    fn harvest_into(&mut self, var: u8) {
        match var % 4 {
            0 => {
                assert_eq!(self.a.harvest_into(&mut self.b), Ok(()));
                self.mb = core::mem::replace(&mut self.ma, vec![false; self.bits]);
            }
            1 => {
                assert_eq!(self.c.harvest_into(&mut self.b), Ok(()));
                self.mb = core::mem::replace(&mut self.mc, vec![false; self.bits]);
            }
            2 => {
                assert_eq!(self.b.harvest_into(&mut self.a), Ok(()));
                self.ma = core::mem::replace(&mut self.mb, vec![false; self.bits]);
            }
            _ => {
                let before = self.a.words().to_vec();
                let got = self.a.harvest_into(&mut self.long);
                assert_eq!(got, Err(GmemError::SizeMismatch));
                assert_eq!(
                    self.a.words(),
                    before.as_slice(),
                    "failed harvest changed a"
                );
                let got = self.c.harvest_into(&mut self.long);
                assert_eq!(got, Err(GmemError::SizeMismatch));
            }
        }
        assert_eq!(self.a.count(), ones(&self.ma).len());
        assert_eq!(self.b.count(), ones(&self.mb).len());
        assert_eq!(self.c.count(), ones(&self.mc).len());
    }

    fn harvest_each(&mut self, atomic: bool) {
        let mut got = Vec::new();
        let m = if atomic {
            self.c.harvest_each(|b| got.push(b));
            assert_eq!(self.c.count(), 0, "harvest_each left bits in c");
            &mut self.mc
        } else {
            self.a.harvest_each(|b| got.push(b));
            assert_eq!(self.a.count(), 0, "harvest_each left bits in a");
            &mut self.ma
        };
        assert_eq!(got, ones(m), "harvest_each (atomic: {atomic})");
        m.fill(false);
    }

    fn absorb(&mut self, var: u8) {
        match var % 3 {
            0 => {
                assert_eq!(self.a.absorb(&mut self.b), Ok(()));
                or_into(&mut self.ma, &mut self.mb);
            }
            1 => {
                assert_eq!(self.b.absorb(&mut self.a), Ok(()));
                or_into(&mut self.mb, &mut self.ma);
            }
            _ => {
                let before = self.a.words().to_vec();
                assert_eq!(self.a.absorb(&mut self.long), Err(GmemError::SizeMismatch));
                assert_eq!(self.long.absorb(&mut self.a), Err(GmemError::SizeMismatch));
                assert_eq!(self.a.words(), before.as_slice(), "failed absorb changed a");
            }
        }
        assert_eq!(self.a.count(), ones(&self.ma).len());
        assert_eq!(self.b.count(), ones(&self.mb).len());
    }

    fn take_next(&mut self, var: u8, from: usize) {
        let (bm, m) = if var & 1 == 0 {
            (&mut self.a, &mut self.ma)
        } else {
            (&mut self.b, &mut self.mb)
        };
        if var & 2 == 0 {
            let want = m.iter().skip(from).position(|&x| x).map(|p| p + from);
            assert_eq!(bm.take_next(from), want, "take_next({from})");
            if let Some(x) = want.and_then(|w| m.get_mut(w)) {
                *x = false;
            }
        } else {
            // Drain from 0: ascending, every set bit once, then `None`.
            let want = ones(m);
            let mut got = Vec::new();
            let mut next = 0;
            while let Some(b) = bm.take_next(next) {
                assert!(
                    got.len() < want.len(),
                    "take_next returned more bits than set"
                );
                got.push(b);
                next = b + 1;
            }
            assert_eq!(got, want, "take_next drain");
            assert_eq!(bm.count(), 0);
            m.fill(false);
        }
    }

    fn range_each(&mut self, take: bool, start: usize, count: usize) {
        let ok = in_range(start, count, self.bits);
        let mut got = Vec::new();
        let r = if take {
            self.a.take_range_each(start, count, |b| got.push(b))
        } else {
            self.a.range_each(start, count, |b| got.push(b))
        };
        assert_eq!(
            r,
            if ok {
                Ok(())
            } else {
                Err(GmemError::OutOfRange)
            }
        );
        let want: Vec<usize> = if ok {
            ones(&self.ma)
                .into_iter()
                .filter(|&b| b >= start && b - start < count)
                .collect()
        } else {
            Vec::new()
        };
        assert_eq!(got, want, "range_each({start}, {count}, take: {take})");
        if take {
            for b in want {
                if let Some(x) = self.ma.get_mut(b) {
                    *x = false;
                }
            }
        }
        assert_eq!(self.a.count(), ones(&self.ma).len());
    }
}

/// `dst |= src; src = 0` on models.
fn or_into(dst: &mut [bool], src: &mut [bool]) {
    for (d, s) in dst.iter_mut().zip(src.iter_mut()) {
        *d |= core::mem::take(s);
    }
}

/// The errors a report request must fail with (any of them), empty if it must succeed; and
/// the number of report pages when the range itself is well formed.
fn report_faults(range: DmaRange, page_size: u64, out_words: usize) -> (Vec<ReportError>, u64) {
    let mut faults = Vec::new();
    if !page_size.is_power_of_two() || page_size < FRAME {
        faults.push(ReportError::PageSize);
    }
    if range.length == 0 {
        faults.push(ReportError::EmptyRange);
    }
    if page_size != 0
        && (!range.iova.is_multiple_of(page_size) || !range.length.is_multiple_of(page_size))
    {
        faults.push(ReportError::Unaligned);
    }
    if range.iova.checked_add(range.length).is_none() {
        faults.push(ReportError::RangeOverflow);
    }
    let pages = range.length.checked_div(page_size).unwrap_or(0);
    if faults.is_empty() {
        let need = usize::try_from(pages).map_or(usize::MAX, words_for);
        if out_words < need {
            faults.push(ReportError::BitmapTooSmall);
        }
    }
    (faults, pages)
}

/// Report or peek over bitmap `a` with a request read from the input.
fn report_op(
    st: &mut State<'_>,
    map: &GuestMemoryMap,
    gfn_of: &[u64],
    input: &mut Bytes<'_>,
    var: u8,
) {
    let ps_code = input.u8();
    let page_size = if ps_code & 0x80 == 0 {
        1u64 << (ps_code % 64)
    } else {
        input.u64()
    };
    let align = |addr: u64| {
        if page_size.is_power_of_two() {
            addr & !(page_size - 1)
        } else {
            addr
        }
    };
    let im = input.u8();
    let iova = match im >> 6 {
        0 => {
            let i = usize::from(im & 0x3F) % map.regions().len().max(1);
            align(map.regions().get(i).map_or(0, |r| r.start().get() * FRAME))
        }
        1 => {
            let i = pick(input.u16(), st.bits);
            align(gfn_of.get(i).map_or(0, |g| g * FRAME))
        }
        2 => 0,
        _ => input.u64(),
    };
    let lm = input.u16();
    let length = if lm & 0x8000 == 0 {
        u64::from(lm).saturating_mul(page_size)
    } else {
        input.u64()
    };
    let range = DmaRange { iova, length };
    let fill = input.u8();

    let (faults, pages) = report_faults(range, page_size, usize::MAX);
    let need = usize::try_from(pages).map_or(usize::MAX, words_for);
    let out_words = if faults.is_empty() && need <= MAX_REPORT_WORDS {
        need - usize::from(var & 8 != 0)
    } else {
        4
    };
    let (faults, _) = report_faults(range, page_size, out_words);
    let init = if fill & 1 == 0 {
        0
    } else {
        u64::from(fill).wrapping_mul(0x0101_0101_0101_0101)
    };
    let mut out = vec![init; out_words];
    let mut want_out = out.clone();
    let clear = var & 1 == 0;

    // The model's aggregation.
    let mut want_found = 0u64;
    let mut reported = Vec::new();
    if faults.is_empty() {
        let end = u128::from(iova) + u128::from(length);
        for i in ones(&st.ma) {
            let Some(addr) = gfn_of.get(i).map(|g| g * FRAME) else {
                continue;
            };
            if addr >= iova && u128::from(addr) < end {
                let bit = (addr - iova) / page_size;
                let w = usize::try_from(bit / 64).unwrap_or(usize::MAX);
                if let Some(x) = want_out.get_mut(w) {
                    *x |= 1 << (bit % 64);
                }
                want_found += 1;
                reported.push(i);
            }
        }
    }

    assert_eq!(
        DirtyReport::new(map, &mut st.long).err(),
        Some(ReportError::MapMismatch)
    );
    let mut rep = match DirtyReport::new(map, &mut st.a) {
        Ok(r) => r,
        Err(e) => panic!("DirtyReport::new over a matching bitmap: {e}"),
    };
    assert_eq!(rep.frame_at(0), gfn_of.first().map(|g| Gfn::new(*g)));
    let got = if clear {
        rep.report(range, page_size, &mut out)
    } else {
        rep.peek(range, page_size, &mut out)
    };
    match got {
        Ok(found) => {
            assert!(
                faults.is_empty(),
                "{range:?} / {page_size:#x} accepted, want one of {faults:?}"
            );
            assert_eq!(
                found, want_found,
                "dirty frames found in {range:?} / {page_size:#x}"
            );
            assert!(
                out == want_out,
                "report bitmap of {range:?} / {page_size:#x}"
            );
            if clear {
                for i in reported {
                    if let Some(x) = st.ma.get_mut(i) {
                        *x = false;
                    }
                }
            }
        }
        Err(e) => {
            assert!(
                faults.contains(&e),
                "{range:?} / {page_size:#x}: {e:?}, want one of {faults:?}"
            );
            assert!(
                out.iter().all(|w| *w == init),
                "a failed report wrote the bitmap"
            );
        }
    }
    assert_eq!(
        st.a.count(),
        ones(&st.ma).len(),
        "dirty bitmap after report"
    );
}

/// Arbitrary round statistics, spread over the interesting magnitudes.
fn read_stats(input: &mut Bytes<'_>) -> RoundStats {
    let f = input.u8();
    let d = u64::from(input.u32());
    let dirty_pages_left = match f & 3 {
        0 => d & 0xFFFF,
        1 => d,
        2 => d << 20,
        _ => u64::MAX - (d & 0xFF),
    };
    let bytes_sent = if f & 0x80 != 0 {
        u64::MAX
    } else {
        u64::from(input.u32()) << (u32::from((f >> 2) & 3) * 10)
    };
    let elapsed_us = match (f >> 4) & 3 {
        0 => 0,
        1 => u64::from(input.u16()),
        2 => u64::from(input.u32()),
        _ => u64::MAX,
    };
    let device_state_bytes = if f & 0x40 != 0 {
        u64::from(input.u16()) << 12
    } else {
        0
    };
    RoundStats {
        round: u32::from(f).wrapping_mul(0x0101_0101),
        dirty_pages_left,
        bytes_sent,
        elapsed_us,
        device_state_bytes,
    }
}

/// The policy under test.
enum AnyPolicy {
    Ours(Policy),
    Qemu(QemuPolicy),
    Stop(StopAndCopy),
}

impl AnyPolicy {
    fn as_dyn(&mut self) -> &mut dyn PrecopyPolicy {
        match self {
            Self::Ours(p) => p,
            Self::Qemu(p) => p,
            Self::Stop(p) => p,
        }
    }
}

/// Feeds a policy chosen by `var` arbitrary rounds until two rounds past its switch bound.
fn policy_op(input: &mut Bytes<'_>, var: u8) {
    let limit_ms = u32::from(input.u16());
    let rounds_cfg = input.u8();
    let knob = input.u8();
    let (mut policy, bound) = match var % 4 {
        k @ (0 | 1) => {
            let config = PolicyConfig {
                downtime_limit_ms: limit_ms,
                max_rounds: u32::from(rounds_cfg),
                min_shrink_percent: u32::from(knob),
                minimize_downtime: k == 1,
                throttle: None,
            };
            (
                AnyPolicy::Ours(Policy::new(config)),
                Some(u32::from(rounds_cfg).max(1)),
            )
        }
        2 => {
            let iterations = (var & 4 == 0).then_some(u32::from(rounds_cfg));
            let config = QemuConfig {
                downtime_limit_ms: limit_ms,
                max_bandwidth: (knob & 1 == 0).then_some(u64::from(knob) << 20),
                max_iterations: iterations,
            };
            (
                AnyPolicy::Qemu(QemuPolicy::new(config)),
                iterations.map(|m| m.max(1)),
            )
        }
        _ => (AnyPolicy::Stop(StopAndCopy::new()), Some(1)),
    };
    assert!(!policy.as_dyn().name().is_empty());
    let total = bound.unwrap_or(UNBOUNDED_ROUNDS) + 2;
    let mut decided: Option<(Decision, MigrationStatus)> = None;
    let mut bytes_sent = 0u64;
    for round in 1..=total {
        if let (AnyPolicy::Qemu(q), true, None) = (&mut policy, var & 8 != 0, decided) {
            q.on_progress(u64::from(input.u32()), u64::from(input.u16()));
        }
        let stats = read_stats(input);
        let decision = policy.as_dyn().on_round(stats);
        let status = policy.as_dyn().status();
        if let Some((d, s)) = decided {
            assert_eq!(
                (decision, status),
                (d, s),
                "decision not latched in round {round}"
            );
            continue;
        }
        bytes_sent = bytes_sent.saturating_add(stats.bytes_sent);
        let pending = u128::from(stats.dirty_pages_left) * u128::from(FRAME)
            + u128::from(stats.device_state_bytes);
        let pending = u64::try_from(pending).unwrap_or(u64::MAX);
        assert_eq!(status.round, round, "status round");
        assert_eq!(status.bytes_sent, bytes_sent, "status bytes_sent");
        assert_eq!(status.dirty_bytes, pending, "status dirty_bytes");
        let reason = match decision {
            Decision::Continue => None,
            Decision::StopAndCopy(r) => Some(r),
        };
        assert_eq!(status.switched, reason, "status switched");
        if let Some(b) = bound {
            assert!(round < b || reason.is_some(), "no switch by round {b}");
        }
        check_reason(&policy, round, stats, pending, reason, &status);
        if reason.is_some() {
            decided = Some((decision, status));
        }
    }
}

/// The policy-specific conditions of a decision.
fn check_reason(
    policy: &AnyPolicy,
    round: u32,
    stats: RoundStats,
    pending: u64,
    reason: Option<SwitchReason>,
    status: &MigrationStatus,
) {
    match policy {
        AnyPolicy::Ours(p) => {
            let c = p.config();
            let limit_us = u64::from(c.downtime_limit_ms) * 1000;
            let cap = c.max_rounds.max(1);
            let predicted = p.expected_downtime_us();
            assert_eq!(p.rounds(), round);
            assert_eq!(predicted, status.expected_downtime_us);
            let met = predicted.is_some_and(|t| t <= limit_us);
            match reason {
                None => {
                    assert!(round < cap, "ours continued at its round cap");
                    assert!(
                        !met || (c.minimize_downtime && stats.dirty_pages_left != 0),
                        "ours continued with the limit met"
                    );
                }
                Some(SwitchReason::DowntimeMet { predicted_us }) => {
                    assert_eq!(Some(predicted_us), predicted);
                    assert!(predicted_us <= limit_us, "DowntimeMet above the limit");
                }
                Some(SwitchReason::RoundCap) => {
                    assert_eq!(round, cap, "RoundCap off the cap");
                    assert!(!met, "RoundCap with the limit met");
                }
                Some(SwitchReason::NotShrinking) => {
                    assert!(round > STALL_ROUNDS, "NotShrinking too early");
                    assert!(!met, "NotShrinking with the limit met");
                }
                Some(r) => panic!("ours switched for {r:?}"),
            }
        }
        AnyPolicy::Qemu(q) => {
            let threshold = q.threshold_bytes();
            let converged = pending == 0 || pending < threshold;
            let cap = q.config().max_iterations.map(|m| m.max(1));
            match reason {
                None => {
                    assert!(!converged, "qemu continued below its threshold");
                    assert!(cap.is_none_or(|m| round < m), "qemu continued at its limit");
                }
                Some(SwitchReason::DowntimeMet { .. }) => {
                    assert!(converged, "qemu DowntimeMet above its threshold");
                }
                Some(SwitchReason::IterationLimit) => {
                    assert!(!converged && cap == Some(round), "qemu IterationLimit");
                }
                Some(r) => panic!("qemu switched for {r:?}"),
            }
        }
        AnyPolicy::Stop(_) => {
            assert_eq!((round, reason), (1, Some(SwitchReason::RoundCap)));
        }
    }
}

/// Fuzz body: see the module docs.
pub fn gmem_ops(data: &[u8]) {
    let mut input = Bytes::new(data);
    let (raw, spec) = build_spec(&mut input);
    let Some(map) = build_map(raw, &spec) else {
        return;
    };
    let gfn_of = check_map(&map, &spec);
    let bits = gfn_of.len();
    let words = words_for(bits);

    let mut wrong = vec![0u64; words + 1];
    assert_eq!(
        DirtyBitmap::new(&mut wrong, bits).err(),
        Some(GmemError::StorageSize)
    );
    if let Some(short) = wrong
        .get_mut(..words.saturating_sub(1))
        .filter(|_| words > 0)
    {
        assert_eq!(
            DirtyBitmap::new(short, bits).err(),
            Some(GmemError::StorageSize)
        );
    }
    // Dirty storage: `new` must clear it.
    let mut sa = vec![u64::MAX; words];
    let mut sb = vec![u64::MAX; words];
    let mut sl = vec![0u64; words_for(bits + 1)];
    let sc: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(u64::MAX)).collect();
    let made = (
        DirtyBitmap::new(&mut sa, bits),
        DirtyBitmap::new(&mut sb, bits),
        AtomicDirtyBitmap::new(&sc, bits),
        DirtyBitmap::new(&mut sl, bits + 1),
    );
    let (Ok(a), Ok(b), Ok(c), Ok(long)) = made else {
        panic!("bitmaps of {bits} bits over exact storage rejected");
    };
    let mut st = State {
        a,
        b,
        c,
        long,
        ma: vec![false; bits],
        mb: vec![false; bits],
        mc: vec![false; bits],
        bits,
    };
    st.check_all();

    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        let code = input.u8();
        let var = code >> 4;
        match code & 0x0F {
            0 => {
                let bit = pick(input.u16(), bits);
                st.set_one(var & 1 != 0, bit);
            }
            1 => {
                let start = pick(input.u16(), bits);
                let count = pick_count(input.u16(), bits);
                st.set(var & 1 != 0, start, count);
            }
            2 => st.harvest_into(var),
            3 => st.harvest_each(var & 1 != 0),
            4 => st.absorb(var),
            5 => {
                let from = pick(input.u16(), bits);
                st.take_next(var, from);
            }
            6 => st.check_all(),
            7 => {
                if var & 1 == 0 {
                    st.a.clear();
                    st.ma.fill(false);
                } else {
                    st.b.clear();
                    st.mb.fill(false);
                }
                assert_eq!(
                    (st.a.count(), st.b.count()),
                    (ones(&st.ma).len(), ones(&st.mb).len())
                );
            }
            8 => {
                let start = pick(input.u16(), bits);
                let count = pick_count(input.u16(), bits);
                st.range_each(var & 1 != 0, start, count);
            }
            9 => report_op(&mut st, &map, &gfn_of, &mut input, var),
            10 => policy_op(&mut input, var),
            _ => {
                for _ in 0..input.u8() {
                    let bit = pick(input.u16(), bits);
                    st.set_one(var & 1 != 0, bit);
                }
            }
        }
    }
    st.check_all();
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
    fn built_maps_are_sorted_with_holes_and_high_memory() {
        // Two regions: 16 frames at 0, then 256 frames from 4 GiB + 2.
        let data = [0x01, 0, 0, 15, 0x02, 0xC0, 255];
        let mut input = Bytes::new(&data);
        let (raw, spec) = build_spec(&mut input);
        assert!(!raw);
        assert_eq!(spec, [(0, 16), (FOUR_GIB_FRAME + 2, 256)]);
        let map = build_map(raw, &spec).unwrap();
        let gfn_of = check_map(&map, &spec);
        assert_eq!(gfn_of.len(), 272);
        assert_eq!(gfn_of[16], FOUR_GIB_FRAME + 2);
    }

    #[test]
    fn raw_maps_are_rejected_with_the_matching_error() {
        // Two overlapping regions.
        let mut data = vec![0x82];
        data.extend_from_slice(&10u64.to_le_bytes());
        data.extend_from_slice(&5u16.to_le_bytes());
        data.extend_from_slice(&12u64.to_le_bytes());
        data.extend_from_slice(&5u16.to_le_bytes());
        let (raw, spec) = build_spec(&mut Bytes::new(&data));
        assert_eq!(spec, [(10, 5), (12, 5)]);
        assert!(build_map(raw, &spec).is_none());
        // A region ending past the frame limit, and an empty one.
        assert!(build_map(true, &[(GFN_LIMIT - 2, 3)]).is_none());
        assert!(build_map(true, &[(0, 0)]).is_none());
        // Seventeen sorted regions.
        let many: Vec<(u64, u64)> = (0..17).map(|i| (i * 10, 1)).collect();
        assert!(build_map(true, &many).is_none());
        // A map with no regions is valid and empty.
        assert_eq!(build_map(true, &[]).unwrap().frames(), 0);
    }

    #[test]
    fn report_faults_follow_the_request_rules() {
        let r = |iova, length| DmaRange { iova, length };
        assert_eq!(report_faults(r(0, 8192), 4096, 1), (vec![], 2));
        assert_eq!(
            report_faults(r(0, 4096), 2048, 1).0,
            [ReportError::PageSize]
        );
        assert_eq!(
            report_faults(r(4096, 0), 4096, 1).0,
            [ReportError::EmptyRange]
        );
        assert_eq!(
            report_faults(r(1, 4096), 4096, 1).0,
            [ReportError::Unaligned]
        );
        assert_eq!(
            report_faults(r(1 << 63, 1 << 63), 4096, 1 << 20).0,
            [ReportError::RangeOverflow]
        );
        assert_eq!(
            report_faults(r(0, 65 * 4096), 4096, 1).0,
            [ReportError::BitmapTooSmall]
        );
    }

    #[test]
    fn pick_covers_in_and_out_of_range() {
        assert_eq!(pick(5, 10), 5);
        assert_eq!(pick(10, 10), 10);
        assert_eq!(pick(0xC003, 10), 13);
        assert_eq!(pick(0xE001, 10), usize::MAX - 1);
        assert_eq!(pick_count(0x8000, 10), 10);
        assert!(!in_range(usize::MAX, 2, 10));
        assert!(in_range(10, 0, 10));
    }

    #[test]
    fn every_operation_runs_on_a_small_map() {
        // One region of 100 frames, then each operation once, then a policy of each kind.
        let mut data = vec![0x00, 0, 0, 99];
        data.extend_from_slice(&[0x00, 3, 0]); // set 3
        data.extend_from_slice(&[0x11, 60, 0, 10, 0]); // atomic set_range 60..70
        data.extend_from_slice(&[0x02, 0x12, 0x32, 0x03, 0x13, 0x04, 0x24, 0x05, 0, 0, 0x06]);
        data.extend_from_slice(&[0x08, 0, 0, 100, 0x40, 0x07]);
        data.extend_from_slice(&[0x09, 12, 0, 20, 0, 0x0A, 0, 1, 3, 0]);
        for var in [0x00, 0x10, 0x20, 0x30, 0x60] {
            data.extend_from_slice(&[var | 0x0A, 0x2C, 1, 5, 10]);
        }
        gmem_ops(&data);
        gmem_ops(&[]);
        gmem_ops(&[0xFF; 64]);
    }
}
