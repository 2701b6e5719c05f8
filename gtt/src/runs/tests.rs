//! Round trips, exact bytes, the reference encoder and the fused paths against the references.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
use super::*;
use crate::addr::GmAddr;
use crate::addr::{Gfn, GttIndex, PAGE_SHIFT};
use crate::entry::GgttEntry;
use crate::entry::{ADDR_MASK, FRAME_MAX, Generation};
use crate::frames::GuestFrames;
use crate::partition::GmRange;
use crate::slices::GgttSlices;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

/// Aperture: 8 pages at guest GM 0x100000 (indices 0x100..0x108);
/// hidden: 8 pages at guest GM 0x40000 (indices 0x40..0x48) – below the aperture.
fn part() -> Partition {
    Partition::new(
        GmRange::new(GmAddr::new(0x10_0000), 0x8000).unwrap(),
        GmRange::new(GmAddr::new(0x4_0000), 0x8000).unwrap(),
    )
    .unwrap()
}

fn all_ok(_: Gfn) -> bool {
    true
}

fn header(start: u32, count: u32, kind: u8) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&start.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.push(kind);
    v.extend_from_slice(&[0; 7]);
    v
}

fn save_all(g: &GgttSlices<'_>, chunk: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = SaveCursor::START;
    loop {
        let mut buf = vec![0u8; chunk];
        let p = g.save_runs(cur, &mut buf).unwrap();
        buf.truncate(p.written);
        out.push(buf);
        match p.next {
            Some(n) => cur = n,
            None => return out,
        }
    }
}

#[test]
fn emit_exact_bytes() {
    let mut s = [0u64; 16];
    s[1] = 0x5001;
    s[2] = 0x9001;
    s[3] = 0x7_0000_0000_0000; // non-present, other bits: kept
    s[8] = 0x1_0003;
    s[9] = 0x1_1003;
    s[10] = 0x1_2003;
    let g = GgttSlices::new(part(), &mut s).unwrap();
    let payloads = save_all(&g, 256);
    assert_eq!(payloads.len(), 1);
    let mut expect = header(0x101, 3, KIND_RAW);
    for e in [0x5001u64, 0x9001, 0x7_0000_0000_0000] {
        expect.extend_from_slice(&e.to_le_bytes());
    }
    expect.extend_from_slice(&header(0x40, 3, KIND_LINEAR));
    expect.extend_from_slice(&0x1_0003u64.to_le_bytes());
    assert_eq!(payloads[0], expect);
}

#[test]
fn empty_table_saves_nothing() {
    let mut s = [0u64; 16];
    let g = GgttSlices::new(part(), &mut s).unwrap();
    let p = g.save_runs(SaveCursor::START, &mut []).unwrap();
    assert_eq!(
        p,
        SaveProgress {
            written: 0,
            next: None
        }
    );
    assert_eq!(
        validate_runs(&[], &part(), &all_ok, Generation::Gen9),
        Ok(RunStats::default())
    );
}

#[test]
fn chunked_save_and_small_buffer() {
    let mut s = [0u64; 16];
    for (i, e) in s.iter_mut().enumerate() {
        *e = ((i as u64 * 7) << 12) | 1; // not linear
    }
    let g = GgttSlices::new(part(), &mut s).unwrap();
    let mut small = [0u8; MIN_SAVE_BUFFER - 1];
    assert_eq!(
        g.save_runs(SaveCursor::START, &mut small),
        Err(GttError::BufferTooSmall)
    );
    let payloads = save_all(&g, 40);
    // Each 40-byte buffer holds one run of 3 entries (16 + 24).
    assert_eq!(payloads.len(), 6);
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(part(), &mut d).unwrap();
    for p in &payloads {
        validate_runs(p, &part(), &all_ok, Generation::Gen9).unwrap();
        apply_runs(p, &mut dst).unwrap();
    }
    drop(dst);
    assert_eq!(d, s);
}

#[test]
fn validation_failures() {
    let p = part();
    let v = |b: &[u8]| validate_runs(b, &p, &all_ok, Generation::Gen9);
    let raw = |start, entries: &[u64]| {
        let mut b = header(start, u32::try_from(entries.len()).unwrap(), KIND_RAW);
        for e in entries {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b
    };
    assert_eq!(
        v(&raw(0x100, &[0x5001])),
        Ok(RunStats {
            entries: 1,
            runs: 1
        })
    );
    // Frame outside guest memory.
    let small_ram = |f: Gfn| f.get() < 0x5;
    assert_eq!(
        validate_runs(&raw(0x100, &[0x5001]), &p, &small_ram, Generation::Gen9),
        Err(GttError::FrameOutsideGuest)
    );
    // Non-present entries are not frame-checked.
    assert!(validate_runs(&raw(0x100, &[0x5000]), &p, &small_ram, Generation::Gen9).is_ok());
    // Reserved bit.
    assert_eq!(
        v(&raw(0x100, &[0x5001 | (1 << 50)])),
        Err(GttError::ReservedBits)
    );
    assert_eq!(
        validate_runs(&raw(0x100, &[0x5081]), &p, &all_ok, Generation::Gen12),
        Err(GttError::ReservedBits)
    );
    // Index out of range: before, after, and straddling a slice end.
    assert_eq!(v(&raw(0xFF, &[0x5001])), Err(GttError::OutOfRange));
    assert_eq!(v(&raw(0x108, &[0x5001])), Err(GttError::OutOfRange));
    assert_eq!(v(&raw(0x107, &[1, 1])), Err(GttError::OutOfRange));
    // Truncated header and body.
    let full = raw(0x100, &[0x5001, 0x6001]);
    for cut in [1, 15, 16, 20, 31] {
        assert_eq!(v(&full[..cut]), Err(GttError::Truncated), "cut {cut}");
    }
    let mut lin = header(0x100, 2, KIND_LINEAR);
    lin.extend_from_slice(&[1, 0, 0]);
    assert_eq!(v(&lin), Err(GttError::Truncated));
    // Count overflow: start + count wraps u32; huge raw count.
    assert_eq!(
        v(&header(u32::MAX, 2, KIND_RAW)),
        Err(GttError::CountOverflow)
    );
    assert_eq!(
        v(&header(0x100, u32::MAX, KIND_RAW)),
        Err(GttError::CountOverflow)
    );
    assert_eq!(
        v(&header(0x100, 0x1000_0000, KIND_RAW)),
        Err(GttError::OutOfRange)
    );
    assert_eq!(v(&header(0x100, 8, KIND_RAW)), Err(GttError::Truncated));
    // Linear run whose frames leave the address field.
    let mut lin = header(0x100, 2, KIND_LINEAR);
    lin.extend_from_slice(&((FRAME_MAX << 12) | 1).to_le_bytes());
    assert_eq!(v(&lin), Err(GttError::CountOverflow));
    // Zero count, unknown kind, reserved bytes.
    assert_eq!(v(&header(0x100, 0, KIND_RAW)), Err(GttError::EmptyRun));
    let mut bad = raw(0x100, &[1]);
    bad[8] = 2;
    assert_eq!(v(&bad), Err(GttError::UnknownRunKind));
    bad[8] = 0;
    bad[15] = 1;
    assert_eq!(v(&bad), Err(GttError::NonZeroReserved));
    // Order: hidden (slots 8..) then aperture (slots 0..) is out of storage order.
    let mut two = raw(0x40, &[1]);
    two.extend_from_slice(&raw(0x100, &[1]));
    assert_eq!(v(&two), Err(GttError::RunOrder));
    let mut overlap = raw(0x100, &[1, 1]);
    overlap.extend_from_slice(&raw(0x101, &[1]));
    assert_eq!(v(&overlap), Err(GttError::RunOrder));
    let mut ordered = raw(0x100, &[1]);
    ordered.extend_from_slice(&raw(0x40, &[1]));
    assert_eq!(
        v(&ordered),
        Ok(RunStats {
            entries: 2,
            runs: 2
        })
    );
}

#[test]
fn apply_is_all_or_nothing_structurally() {
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(part(), &mut d).unwrap();
    let mut b = header(0x100, 1, KIND_RAW);
    b.extend_from_slice(&0x5001u64.to_le_bytes());
    b.extend_from_slice(&header(0x101, 1, KIND_RAW)); // truncated second run
    assert_eq!(apply_runs(&b, &mut dst), Err(GttError::Truncated));
    assert_eq!(dst.entries(), &[0; 16]);
}

fn table() -> impl Strategy<Value = Vec<u64>> {
    // Mix of zeros, random valid entries, and linear stretches.
    let piece = prop_oneof![
        (1usize..5).prop_map(|n| vec![0u64; n]),
        proptest::collection::vec(
            (0u64..0x1_0000, any::<bool>(), 0u64..0x9C)
                .prop_map(|(f, p, flags)| { (f << 12) | (flags & 0x9A) | u64::from(p) }),
            1..6
        ),
        // Linear stretches stay below frame 0x1_0000 (the round trip's guest memory).
        (0u64..0x1_0000 - 12, 2usize..12)
            .prop_map(|(f, n)| { (0..n as u64).map(|i| ((f + i) << 12) | 0x3).collect() }),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| {
        let mut t: Vec<u64> = v.into_iter().flatten().collect();
        t.resize(16, 0);
        t
    })
}

/// Aperture: 96 pages at guest GM 0x100000; hidden: 160 pages at guest GM 0x400000.
fn big_part() -> Partition {
    Partition::new(
        GmRange::new(GmAddr::new(0x10_0000), 96 * 0x1000).unwrap(),
        GmRange::new(GmAddr::new(0x40_0000), 160 * 0x1000).unwrap(),
    )
    .unwrap()
}

/// The straightforward encoder (entry-by-entry scan): `save_runs` must match it byte for byte.
fn reference_save(t: &[u64], ap_pages: usize, p: &Partition, room: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut slot = 0;
    loop {
        while t.get(slot) == Some(&0) {
            slot += 1;
        }
        if slot >= t.len() {
            return (out, slot);
        }
        let end = if slot < ap_pages { ap_pages } else { t.len() };
        let run = &t[slot..end];
        let start = p.index_at(slot).unwrap().get();
        let left = room - out.len();
        if left < MIN_SAVE_BUFFER {
            return (out, slot);
        }
        let lin = linear_len(run, run.len());
        let n = if lin >= LINEAR_MIN_START {
            out.extend_from_slice(&header(start, u32::try_from(lin).unwrap(), KIND_LINEAR));
            out.extend_from_slice(&run[0].to_le_bytes());
            lin
        } else {
            let mut n = 1;
            while n < run.len()
                && run[n] != 0
                && linear_len(&run[n..], LINEAR_MIN_BREAK) < LINEAR_MIN_BREAK
            {
                n += 1;
            }
            let n = n.min((left - RUN_HEADER_LEN) / 8);
            out.extend_from_slice(&header(start, u32::try_from(n).unwrap(), KIND_RAW));
            for e in &run[..n] {
                out.extend_from_slice(&e.to_le_bytes());
            }
            n
        };
        slot += n;
    }
}

fn big_table() -> impl Strategy<Value = Vec<u64>> {
    // Long RAW stretches (so the block scan runs), linear stretches of every length around
    // the break threshold, near-misses (one page apart but other bits differ), zeros.
    let raw = (0u64..0x1_0000).prop_map(|f| (f << 12) | 1);
    let piece = prop_oneof![
        (1usize..4).prop_map(|n| vec![0u64; n]),
        proptest::collection::vec(raw, 1..80),
        (0u64..0x1_0000 - 10, 2usize..10)
            .prop_map(|(f, n)| (0..n as u64).map(|i| ((f + i) << 12) | 0x3).collect()),
        (0u64..0x1_0000 - 10, 2usize..10).prop_map(|(f, n)| (0..n as u64)
            .map(|i| ((f + i) << 12) | 0x3 | ((i & 1) << 4))
            .collect()),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| {
        let mut t: Vec<u64> = v.into_iter().flatten().collect();
        t.resize(256, 0);
        t
    })
}

#[test]
fn long_raw_runs_exact_bytes() {
    // 100 non-linear entries fill the aperture (96) and spill into the hidden slice; a
    // linear stretch of exactly LINEAR_MIN_BREAK breaks the hidden RAW run, one shorter
    // does not.
    let mut t = vec![0u64; 256];
    for (i, e) in t.iter_mut().enumerate().take(100) {
        *e = (((i as u64) * 3) << 12) | 1;
    }
    for (i, e) in (0u64..).zip(&mut t[150..156]) {
        *e = ((0x500 + i) << 12) | 3;
    }
    for (i, e) in (0u64..).zip(&mut t[140..145]) {
        *e = ((0x700 + i) << 12) | 3;
    }
    t[139] = 0x9001;
    let mut s = t.clone();
    let g = GgttSlices::new(big_part(), &mut s).unwrap();
    let mut buf = vec![0u8; 4096];
    let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
    assert_eq!(p.next, None);
    let mut expect = header(0x100, 96, KIND_RAW);
    for e in &t[..96] {
        expect.extend_from_slice(&e.to_le_bytes());
    }
    expect.extend_from_slice(&header(0x400, 4, KIND_RAW));
    for e in &t[96..100] {
        expect.extend_from_slice(&e.to_le_bytes());
    }
    // Slot 139 (index 0x400 + 43) starts a RAW run of 1 + 5 entries (a linear stretch of
    // 5 stays RAW), zeros, then a LINEAR run of 6.
    expect.extend_from_slice(&header(0x400 + 43, 6, KIND_RAW));
    for e in &t[139..145] {
        expect.extend_from_slice(&e.to_le_bytes());
    }
    expect.extend_from_slice(&header(0x400 + 54, 6, KIND_LINEAR));
    expect.extend_from_slice(&t[150].to_le_bytes());
    assert_eq!(&buf[..p.written], &expect[..]);
}

proptest::proptest! {
    #[test]
    fn save_validate_apply_round_trip(t in table(), chunk in MIN_SAVE_BUFFER..200usize) {
        let mut s = [0u64; 16];
        s.copy_from_slice(&t);
        let g = GgttSlices::new(part(), &mut s).unwrap();
        let payloads = save_all(&g, chunk);
        let mut d = [0u64; 16];
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        let mut total = 0;
        for p in &payloads {
            let stats = validate_runs(p, &part(), &|f: Gfn| f.get() < 0x1_0000, Generation::Gen9)
                .unwrap();
            prop_assert_eq!(apply_runs(p, &mut dst).unwrap() as u64, stats.entries);
            total += stats.entries;
        }
        drop(dst);
        prop_assert_eq!(&d[..], &t[..]);
        prop_assert!(total >= t.iter().filter(|e| **e != 0).count() as u64);
    }

    #[test]
    fn save_matches_reference_encoder(t in big_table(), room in MIN_SAVE_BUFFER..3000usize) {
        let mut s = t.clone();
        let g = GgttSlices::new(big_part(), &mut s).unwrap();
        let mut buf = vec![0u8; room];
        let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
        let (expect, next) = reference_save(&t, 96, &big_part(), room);
        prop_assert_eq!(&buf[..p.written], &expect[..]);
        prop_assert_eq!(p.next.map_or(t.len(), SaveCursor::slot), next);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = validate_runs(&bytes, &part(), &all_ok, Generation::Mtl);
        let mut d = [0u64; 16];
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        let _ = apply_runs(&bytes, &mut dst);
    }

    #[test]
    fn restore_and_validate_in_match_reference(
        t in big_table(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..3),
        cover in any::<bool>(),
        extra in proptest::collection::vec((0u64..0x1_2000, 0u64..0x9000), 0..5),
        used in proptest::collection::vec((0usize..256, any::<u64>()), 0..3),
        gen_pick in 0usize..4,
        bad_entry in proptest::option::of((any::<usize>(), 0u8..3)),
    ) {
        // A saved table, then damage: byte flips anywhere (headers and bodies), and one
        // 8-byte word (an entry, or half a header) given a reserved bit, a frame outside
        // guest memory, or a cleared present bit.
        let generation = [Generation::Gen8, Generation::Gen9, Generation::Gen12, Generation::Mtl][gen_pick];
        let mut s = t.clone();
        let g = GgttSlices::new(big_part(), &mut s).unwrap();
        let mut payload = vec![0u8; 256 * 8 + 256 * RUN_HEADER_LEN];
        let p = g.save_runs(SaveCursor::START, &mut payload).unwrap();
        payload.truncate(p.written);
        if let Some((at, what)) = bad_entry {
            let words = payload.len() / 8;
            if words != 0 {
                let i = (at % words) * 8;
                let mut e = u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
                e = match what {
                    0 => e | (1 << 50),
                    1 => (e & !ADDR_MASK) | (0x1_1800 << PAGE_SHIFT) | 1,
                    _ => e & !1,
                };
                payload[i..i + 8].copy_from_slice(&e.to_le_bytes());
            }
        }
        for (at, x) in &flips {
            if !payload.is_empty() {
                let n = payload.len();
                payload[at % n] ^= x;
            }
        }
        // Guest memory: random ranges, half the time plus one holding every saved frame
        // (the table's frames are below 0x1_0000), split in two at a random frame.
        let mut ranges = extra.clone();
        if cover {
            let cut = extra.first().map_or(0x8000, |r| r.0 % 0x1_0000);
            ranges.push((cut, 0x1_0000 - cut));
            ranges.push((0, cut));
        }
        let frames = GuestFrames::from_ranges(ranges.iter().map(|&(a, n)| (Gfn::new(a), n))).unwrap();
        let ok = |f: Gfn| ranges.iter().any(|&(a, n)| f.get() >= a && f.get() < a + n);

        let reference = validate_runs(&payload, &big_part(), &ok, generation);
        prop_assert_eq!(validate_runs_in(&payload, &big_part(), &frames, generation), reference);

        // Destination: cleared, or with a few slots in use (the slow path).
        let mut before = vec![0u64; 256];
        for &(slot, v) in &used {
            before[slot] = v;
        }
        let mut expect = before.clone();
        if reference.is_ok() {
            let mut e = GgttSlices::new(big_part(), &mut expect).unwrap();
            apply_runs(&payload, &mut e).unwrap();
        }
        let mut got = before.clone();
        let mut dst = GgttSlices::new(big_part(), &mut got).unwrap();
        prop_assert_eq!(restore_runs(&payload, &mut dst, &frames, generation), reference);
        drop(dst);
        prop_assert_eq!(got, expect);
    }
}

/// A guest write of `v` at `i`: whole (`how` 0), as two halves (1), or one held half (2).
fn guest_write(x: &mut GgttSlices<'_>, i: GttIndex, v: u64, how: u8) {
    let lo = u32::try_from(v & 0xFFFF_FFFF).unwrap();
    let hi = u32::try_from(v >> 32).unwrap();
    match how {
        0 => x.write(i, GgttEntry::from_bits(v)).unwrap(),
        1 => {
            x.write_half(i, false, lo).unwrap();
            x.write_half(i, true, hi).unwrap();
        }
        _ => {
            x.write_half(i, false, lo).unwrap();
        }
    }
}

proptest::proptest! {
    #[test]
    fn restore_after_clear_and_writes_matches_reference(
        t in big_table(),
        chunk in MIN_SAVE_BUFFER..600usize,
        writes in proptest::collection::vec((0usize..256, any::<u64>(), 0u8..3), 0..4),
        reverse in any::<bool>(),
        flip in proptest::option::of((any::<usize>(), any::<usize>(), 1u8..=255)),
    ) {
        // Several payloads restored one after the other into a cleared table that has
        // seen some guest writes (whole entries and completed halves): every payload's
        // result and the final table equal validate_runs + apply_runs on a plain copy.
        let mut s = t.clone();
        let g = GgttSlices::new(big_part(), &mut s).unwrap();
        let mut payloads = save_all(&g, chunk);
        if let Some((which, at, x)) = flip {
            let n = payloads.len();
            let p = &mut payloads[which % n];
            if !p.is_empty() {
                let n = p.len();
                p[at % n] ^= x;
            }
        }
        if reverse {
            payloads.reverse();
        }
        let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x1_0000)]).unwrap();
        let ok = |f: Gfn| f.get() < 0x1_0000;
        let mut model = vec![0x55u64; 256];
        let mut d = vec![0x55u64; 256];
        let mut dst = GgttSlices::new(big_part(), &mut d).unwrap();
        dst.clear();
        model.fill(0);
        {
            let mut m = GgttSlices::new(big_part(), &mut model).unwrap();
            for &(slot, v, how) in &writes {
                let i = big_part().index_at(slot).unwrap();
                guest_write(&mut dst, i, v, how);
                guest_write(&mut m, i, v, how);
            }
        }
        for p in &payloads {
            let reference = validate_runs(p, &big_part(), &ok, Generation::Gen9);
            if reference.is_ok() {
                let mut m = GgttSlices::new(big_part(), &mut model).unwrap();
                apply_runs(p, &mut m).unwrap();
            }
            prop_assert_eq!(restore_runs(p, &mut dst, &frames, Generation::Gen9), reference);
            prop_assert_eq!(dst.entries(), &model[..]);
        }
    }
}

proptest::proptest! {
    #[test]
    fn replace_equals_clear_then_restore(
        old in big_table(),
        t in big_table(),
        chunk in MIN_SAVE_BUFFER..600usize,
        cleared_first in any::<bool>(),
        writes in proptest::collection::vec((0usize..256, any::<u64>(), 0u8..3), 0..4),
        flip in proptest::option::of((any::<usize>(), 1u8..=255)),
    ) {
        // A destination that holds an older table (as it is, or cleared and then written
        // by the guest, with held halves), replaced by the first payload of `t` and
        // completed by the rest: the same results, entries and held halves as clear()
        // followed by restore_runs, whether the first payload is valid or damaged.
        let mut s = t.clone();
        let g = GgttSlices::new(big_part(), &mut s).unwrap();
        let mut payloads = save_all(&g, chunk);
        if let Some((at, x)) = flip
            && let Some(p) = payloads.first_mut()
            && !p.is_empty()
        {
            let n = p.len();
            p[at % n] ^= x;
        }
        let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x1_0000)]).unwrap();
        let (mut a, mut b) = (old.clone(), old);
        let mut fused = GgttSlices::new(big_part(), &mut a).unwrap();
        let mut reference = GgttSlices::new(big_part(), &mut b).unwrap();
        if cleared_first {
            fused.clear();
            reference.clear();
        }
        for &(slot, v, how) in &writes {
            let i = big_part().index_at(slot).unwrap();
            guest_write(&mut fused, i, v, how);
            guest_write(&mut reference, i, v, how);
        }
        reference.clear();
        for (k, p) in payloads.iter().enumerate() {
            let got = if k == 0 {
                replace_runs(p, &mut fused, &frames, Generation::Gen9)
            } else {
                restore_runs(p, &mut fused, &frames, Generation::Gen9)
            };
            let want = restore_runs(p, &mut reference, &frames, Generation::Gen9);
            prop_assert_eq!(got, want);
            prop_assert_eq!(fused.entries(), reference.entries());
            prop_assert_eq!(fused.pending_halves(), reference.pending_halves());
        }
        if payloads.is_empty() {
            replace_runs(&[], &mut fused, &frames, Generation::Gen9).unwrap();
            prop_assert!(fused.entries().iter().all(|&e| e == 0));
        }
    }
}

#[test]
fn restore_linear_runs_across_merged_ranges() {
    // Guest memory given as two adjacent ranges: a LINEAR run crossing the seam is inside.
    let mut payload = header(0x100, 8, KIND_LINEAR);
    payload.extend_from_slice(&((0xC_u64 << PAGE_SHIFT) | 1).to_le_bytes());
    let p = part();
    let frames = GuestFrames::from_ranges([(Gfn::new(0x10), 0x10), (Gfn::new(0), 0x10)]).unwrap();
    assert_eq!(frames.spans(), &[(0, 0x20)]);
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    let stats = restore_runs(&payload, &mut dst, &frames, Generation::Gen9).unwrap();
    assert_eq!((stats.runs, stats.entries), (1, 8));
    assert_eq!(d[7], (0x13 << PAGE_SHIFT) | 1);
    // One frame short: rejected, nothing written.
    let short = GuestFrames::from_ranges([(Gfn::new(0), 0x13)]).unwrap();
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    assert_eq!(
        restore_runs(&payload, &mut dst, &short, Generation::Gen9),
        Err(GttError::FrameOutsideGuest)
    );
    assert_eq!(d, [0; 16]);
}

#[test]
fn restore_rolls_back_earlier_runs() {
    // Two good runs, then a third with a reserved bit: the first two are undone.
    let raw = |start, entries: &[u64]| {
        let mut b = header(start, u32::try_from(entries.len()).unwrap(), KIND_RAW);
        for e in entries {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b
    };
    let mut payload = raw(0x100, &[0x5001, 0x6001]);
    payload.extend_from_slice(&raw(0x104, &[0x7001]));
    payload.extend_from_slice(&raw(0x40, &[0x8001, 0x9001 | (1 << 60)]));
    let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x100)]).unwrap();
    let mut d = [0u64; 16];
    d[6] = 0x1234;
    let before = d;
    let mut dst = GgttSlices::new(part(), &mut d).unwrap();
    assert_eq!(
        restore_runs(&payload, &mut dst, &frames, Generation::Gen9),
        Err(GttError::ReservedBits)
    );
    assert_eq!(d, before);
}

proptest! {
    /// A pre-copy of `a`, then what changed to `b` (in chunks of `room` bytes) restored on top:
    /// the destination holds `b`, and the changed runs are RAW runs inside one slice each.
    #[test]
    fn changed_runs_bring_a_copy_of_a_up_to_b(
        a in table(),
        b in table(),
        room in MIN_SAVE_BUFFER..200usize,
    ) {
        let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x1_0000)]).unwrap();
        let (mut sa, mut sb, mut sd) = (a.clone(), b.clone(), [0u64; 16]);
        let src_a = GgttSlices::new(part(), &mut sa).unwrap();
        let mut dst = GgttSlices::new(part(), &mut sd).unwrap();
        for p in save_all(&src_a, 64) {
            restore_runs(&p, &mut dst, &frames, Generation::Gen9).unwrap();
        }
        prop_assert_eq!(dst.entries(), &a[..]);
        let src_b = GgttSlices::new(part(), &mut sb).unwrap();
        let mut cur = SaveCursor::START;
        loop {
            let mut buf = vec![0u8; room];
            let p = src_b.save_changed_runs(&a, cur, &mut buf).unwrap();
            let payload = &buf[..p.written];
            let mut at = 0;
            while at < payload.len() {
                prop_assert_eq!(payload[at + 8], KIND_RAW);
                let count = u32::from_le_bytes(payload[at + 4..at + 8].try_into().unwrap()) as usize;
                at += RUN_HEADER_LEN + 8 * count;
            }
            restore_runs(payload, &mut dst, &frames, Generation::Gen9).unwrap();
            match p.next {
                Some(n) => cur = n,
                None => break,
            }
        }
        prop_assert_eq!(dst.entries(), &b[..]);
    }
}

#[test]
fn changed_runs_need_room_for_one_entry() {
    let mut s = [0u64; 16];
    s[3] = 0x5001;
    let g = GgttSlices::new(part(), &mut s).unwrap();
    let sent = [0u64; 16];
    let mut small = [0u8; MIN_SAVE_BUFFER - 1];
    assert_eq!(
        g.save_changed_runs(&sent, SaveCursor::START, &mut small),
        Err(GttError::BufferTooSmall)
    );
    // Nothing changed: nothing written, done.
    let same = *g.entries().first_chunk::<16>().unwrap();
    let p = g
        .save_changed_runs(&same, SaveCursor::START, &mut small)
        .unwrap();
    assert_eq!((p.written, p.next), (0, None));
}

fn raw_run(start: u32, entries: &[u64]) -> Vec<u8> {
    let mut b = header(start, u32::try_from(entries.len()).unwrap(), KIND_RAW);
    for e in entries {
        b.extend_from_slice(&e.to_le_bytes());
    }
    b
}

fn linear_run(start: u32, count: u32, template: u64) -> Vec<u8> {
    let mut b = header(start, count, KIND_LINEAR);
    b.extend_from_slice(&template.to_le_bytes());
    b
}

#[test]
fn runs_at_the_seam_of_adjacent_slices() {
    // Hidden directly after the aperture: aperture indices 0x100..0x108 (slots 0..8),
    // hidden 0x108..0x110 (slots 8..16). Index 0x108 is the hidden slice's first entry.
    let p = Partition::new(
        GmRange::new(GmAddr::new(0x10_0000), 0x8000).unwrap(),
        GmRange::new(GmAddr::new(0x10_8000), 0x8000).unwrap(),
    )
    .unwrap();
    let v = |b: &[u8]| validate_runs(b, &p, &all_ok, Generation::Gen9);
    let mut payload = raw_run(0x107, &[0x5001]);
    payload.extend_from_slice(&raw_run(0x108, &[0x6001, 0x9001]));
    assert_eq!(
        v(&payload),
        Ok(RunStats {
            entries: 3,
            runs: 2
        })
    );
    assert_eq!(slot_span(&payload, &p), Some(7..10));
    let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x100)]).unwrap();
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    assert_eq!(
        restore_runs(&payload, &mut dst, &frames, Generation::Gen9),
        v(&payload)
    );
    drop(dst);
    assert_eq!(d[7..10], [0x5001, 0x6001, 0x9001]);
    // The hidden slice's last entry, and one run crossing the seam (refused).
    assert!(v(&raw_run(0x10F, &[1])).is_ok());
    assert_eq!(v(&raw_run(0x107, &[1, 1])), Err(GttError::OutOfRange));
    assert_eq!(v(&raw_run(0x110, &[1])), Err(GttError::OutOfRange));
    assert_eq!(v(&linear_run(0x107, 2, 0x5001)), Err(GttError::OutOfRange));

    // A table with entries either side of the seam survives the round trip.
    let mut s = [0u64; 16];
    s[7] = 0x1_2001;
    s[8] = 0x3_4001;
    let src = GgttSlices::new(p, &mut s).unwrap();
    let payloads = save_all(&src, 256);
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    for payload in &payloads {
        replace_runs(payload, &mut dst, &frames, Generation::Gen9).unwrap();
    }
    drop(dst);
    assert_eq!(d, s);
}

#[test]
fn a_linear_run_may_end_at_the_last_frame_and_not_beyond() {
    let p = part();
    let v = |b: &[u8]| validate_runs(b, &p, &all_ok, Generation::Gen9);
    let present = |frame: u64| (frame << PAGE_SHIFT) | 1;
    // Two entries ending exactly at FRAME_MAX; one entry at FRAME_MAX.
    assert_eq!(
        v(&linear_run(0x100, 2, present(FRAME_MAX - 1))),
        Ok(RunStats {
            entries: 2,
            runs: 1
        })
    );
    assert_eq!(
        v(&linear_run(0x100, 1, present(FRAME_MAX))),
        Ok(RunStats {
            entries: 1,
            runs: 1
        })
    );
    // Eight entries from FRAME_MAX - 7 (the whole aperture), applied as eight frames.
    let lin = linear_run(0x100, 8, present(FRAME_MAX - 7));
    assert!(v(&lin).is_ok());
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    assert_eq!(apply_runs(&lin, &mut dst), Ok(8));
    drop(dst);
    assert_eq!(d[7], present(FRAME_MAX));
    // One frame further leaves the address field.
    assert_eq!(
        v(&linear_run(0x100, 3, present(FRAME_MAX - 1))),
        Err(GttError::CountOverflow)
    );
    assert_eq!(
        v(&linear_run(0x100, 2, present(FRAME_MAX))),
        Err(GttError::CountOverflow)
    );
}

#[test]
fn slot_span_covers_first_to_last_run() {
    let p = part();
    assert_eq!(slot_span(&[], &p), None);
    assert_eq!(slot_span(&raw_run(0x103, &[1, 1]), &p), Some(3..5));
    // Aperture run at slot 1, hidden run at index 0x42 = slot 8 + 2, two entries.
    let mut two = raw_run(0x101, &[1]);
    two.extend_from_slice(&linear_run(0x42, 2, 0x5001));
    assert_eq!(slot_span(&two, &p), Some(1..12));
    // A payload that does not parse has no span, wherever the damage is.
    let mut damaged = two.clone();
    damaged.truncate(two.len() - 1);
    assert_eq!(slot_span(&damaged, &p), None);
    let mut out_of_order = raw_run(0x42, &[1]);
    out_of_order.extend_from_slice(&raw_run(0x101, &[1]));
    assert_eq!(slot_span(&out_of_order, &p), None);
}

#[test]
fn restore_over_used_slots_is_all_or_nothing() {
    // The destination was not cleared: slots 0 and 1 hold the same entry (so no cancelling
    // fold can mistake them for free), slots 2..5 another. Runs over them followed by a bad
    // run must leave the table exactly as it was; without the bad run they are overwritten,
    // as validate_runs + apply_runs would.
    let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x100)]).unwrap();
    let mut before = [0u64; 16];
    before[..2].fill(0x1234);
    before[2..5].fill(0x2001);
    let bad = raw_run(0x40, &[0x8001 | (1 << 60)]);
    for good in [
        raw_run(0x100, &[0x5001, 0x6001]),
        linear_run(0x102, 3, 0x7001),
    ] {
        let mut failing = good.clone();
        failing.extend_from_slice(&bad);
        let mut d = before;
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        assert_eq!(
            restore_runs(&failing, &mut dst, &frames, Generation::Gen9),
            Err(GttError::ReservedBits)
        );
        drop(dst);
        assert_eq!(d, before);

        let mut expect = before;
        let mut e = GgttSlices::new(part(), &mut expect).unwrap();
        apply_runs(&good, &mut e).unwrap();
        drop(e);
        let mut d = before;
        let mut dst = GgttSlices::new(part(), &mut d).unwrap();
        restore_runs(&good, &mut dst, &frames, Generation::Gen9).unwrap();
        drop(dst);
        assert_eq!(d, expect);
    }
}

#[test]
fn a_raw_run_stops_at_a_pair_of_zeros_inside_a_scan_block() {
    // 40 entries three pages apart (never LINEAR), with zero gaps of two entries (an even
    // number of zeros inside one scan block) and of three: every gap ends a RAW run.
    let mut t = vec![0u64; 256];
    for (i, e) in t.iter_mut().enumerate().take(40) {
        *e = (((i as u64) * 3) << 12) | 1;
    }
    for z in [5, 6, 20, 21, 22, 30, 31] {
        t[z] = 0;
    }
    let mut s = t.clone();
    let g = GgttSlices::new(big_part(), &mut s).unwrap();
    let mut buf = vec![0u8; 4096];
    let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
    assert_eq!(p.next, None);
    let mut expect = Vec::new();
    for (from, to) in [(0usize, 5usize), (7, 20), (23, 30), (32, 40)] {
        expect.extend_from_slice(&raw_run(0x100 + u32::try_from(from).unwrap(), &t[from..to]));
    }
    assert_eq!(&buf[..p.written], &expect[..]);
    assert_eq!(reference_save(&t, 96, &big_part(), 4096).0, expect);
}

#[test]
fn changed_runs_exact_bytes() {
    // What the reader holds: zeros. What changed: slots 2..6 and 7..10, where slot 7 is the
    // aperture's last and slots 8 and 9 are the hidden slice's first (indices 0x40, 0x41).
    let sent = [0u64; 16];
    let mut s = [0u64; 16];
    for (slot, e) in s.iter_mut().enumerate() {
        if matches!(slot, 2..=5 | 7..=9) {
            *e = ((0x10 + slot as u64) << PAGE_SHIFT) | 1;
        }
    }
    let t = s;
    let g = GgttSlices::new(part(), &mut s).unwrap();
    let mut whole = raw_run(0x102, &t[2..6]);
    whole.extend_from_slice(&raw_run(0x107, &t[7..8]));
    whole.extend_from_slice(&raw_run(0x40, &t[8..10]));
    let mut buf = [0u8; 256];
    let p = g
        .save_changed_runs(&sent, SaveCursor::START, &mut buf)
        .unwrap();
    assert_eq!((&buf[..p.written], p.next), (&whole[..], None));
    // A reader's copy longer than the table: the excess is not the table's.
    let mut longer = [0u64; 20];
    longer[17] = 0x5001;
    let p = g
        .save_changed_runs(&longer, SaveCursor::START, &mut buf)
        .unwrap();
    assert_eq!((&buf[..p.written], p.next), (&whole[..], None));

    // Room for a header and two entries per call: the runs are cut where the room ends.
    let mut got = Vec::new();
    let mut cur = SaveCursor::START;
    loop {
        let mut small = [0u8; RUN_HEADER_LEN + 16];
        let p = g.save_changed_runs(&sent, cur, &mut small).unwrap();
        got.push((small[..p.written].to_vec(), p.next.map(SaveCursor::slot)));
        match p.next {
            Some(n) => cur = n,
            None => break,
        }
    }
    let want = vec![
        (raw_run(0x102, &t[2..4]), Some(4)),
        (raw_run(0x104, &t[4..6]), Some(7)),
        (raw_run(0x107, &t[7..8]), Some(8)),
        (raw_run(0x40, &t[8..10]), None),
    ];
    assert_eq!(got, want);
}

#[test]
fn frames_refused_wherever_guest_memory_lies() {
    // Frame 5 is outside each of these guests: memory only at the top of the address field
    // (where a frame computed with the address bits flipped or all set would land), or only
    // at frame 5 << 24 (where one computed with the shift reversed would). Both kernel kinds:
    // Gen9 (no allowed bit above the address field) and Mtl (PAT bits above it).
    let present = |frame: u64| (frame << PAGE_SHIFT) | 1;
    let guests = [
        GuestFrames::from_ranges([(Gfn::new(FRAME_MAX - 0x1F), 0x20)]).unwrap(),
        GuestFrames::from_ranges([(Gfn::new(5 << (2 * PAGE_SHIFT)), 0x10)]).unwrap(),
        GuestFrames::from_ranges([(Gfn::new(0x10), 0x10), (Gfn::new(FRAME_MAX - 0x1F), 0x20)])
            .unwrap(),
    ];
    let payloads = [
        raw_run(0x100, &[present(5)]),
        raw_run(0x100, &[present(0x10), present(5)]),
        linear_run(0x100, 1, present(5)),
        linear_run(0x100, 2, present(4)),
    ];
    for frames in &guests {
        for generation in [Generation::Gen9, Generation::Mtl] {
            for payload in &payloads {
                let inside = |g: Gfn| frames.contains(g);
                assert_eq!(
                    validate_runs(payload, &part(), &inside, generation),
                    Err(GttError::FrameOutsideGuest)
                );
                assert_eq!(
                    validate_runs_in(payload, &part(), frames, generation),
                    Err(GttError::FrameOutsideGuest)
                );
                let mut d = [0u64; 16];
                let mut dst = GgttSlices::new(part(), &mut d).unwrap();
                assert_eq!(
                    restore_runs(payload, &mut dst, frames, generation),
                    Err(GttError::FrameOutsideGuest)
                );
                assert_eq!(
                    replace_runs(payload, &mut dst, frames, generation),
                    Err(GttError::FrameOutsideGuest)
                );
                drop(dst);
                assert_eq!(d, [0; 16]);
            }
        }
    }
    // The same entries inside guest memory are accepted by every path.
    let low = GuestFrames::from_ranges([(Gfn::new(0), 0x20)]).unwrap();
    for generation in [Generation::Gen9, Generation::Mtl] {
        for payload in &payloads {
            let want = validate_runs(payload, &part(), &|g: Gfn| g.get() < 0x20, generation);
            assert!(want.is_ok());
            assert_eq!(validate_runs_in(payload, &part(), &low, generation), want);
            let mut d = [0u64; 16];
            let mut dst = GgttSlices::new(part(), &mut d).unwrap();
            assert_eq!(restore_runs(payload, &mut dst, &low, generation), want);
        }
    }
}

#[test]
fn linear_templates_checked_like_raw_entries() {
    // A template of reserved bits only; a present template of frame 0 outside guest memory.
    let frames = GuestFrames::from_ranges([(Gfn::new(0x10), 0x10)]).unwrap();
    for (template, want) in [
        (1u64 << 50, GttError::ReservedBits),
        (1, GttError::FrameOutsideGuest),
    ] {
        for count in [1, 3] {
            let payload = linear_run(0x100, count, template);
            assert_eq!(
                validate_runs_in(&payload, &part(), &frames, Generation::Gen9),
                Err(want)
            );
            let mut d = [0u64; 16];
            let mut dst = GgttSlices::new(part(), &mut d).unwrap();
            assert_eq!(
                restore_runs(&payload, &mut dst, &frames, Generation::Gen9),
                Err(want)
            );
            drop(dst);
            assert_eq!(d, [0; 16]);
        }
    }
}

#[test]
fn runs_section_saves_checks_and_applies() {
    use migstream::Section;
    let p = part();
    assert_eq!(GgttRunsSection::max_len(&&p), 16 * (RUN_HEADER_LEN + 8));
    let frames = GuestFrames::from_ranges([(Gfn::new(0), 0x100)]).unwrap();
    let mut a = [0u64; 16];
    a[1] = 0x5001;
    a[9..12].copy_from_slice(&[0x7001, 0x8001, 0x9001]);
    let mut b = a;
    b[1] = 0;
    b[3] = 0x6001;
    let (mut sa, mut sb) = (a, b);
    let src_a = GgttSlices::new(p, &mut sa).unwrap();
    let src_b = GgttSlices::new(p, &mut sb).unwrap();

    // The whole table, as save_runs writes it.
    let mut buf = [0u8; 256];
    let whole = RunsSource {
        slices: &src_a,
        sent: None,
    };
    let saved = GgttRunsSection::save(&whole, 0, &mut buf).unwrap();
    let mut direct = [0u8; 256];
    let progress = src_a.save_runs(SaveCursor::START, &mut direct).unwrap();
    assert_eq!((saved.written, saved.next), (progress.written, None));
    assert_eq!(buf[..saved.written], direct[..progress.written]);
    let full = buf[..saved.written].to_vec();

    // Checked against the guest view and memory.
    let check = RunsCheck {
        partition: &p,
        frames: &frames,
        generation: Generation::Gen9,
    };
    assert_eq!(
        GgttRunsSection::validate(&check, &full),
        Ok(RunStats {
            entries: 4,
            runs: 2
        })
    );
    let small = GuestFrames::from_ranges([(Gfn::new(0), 6)]).unwrap();
    let strict = RunsCheck {
        frames: &small,
        ..check
    };
    assert_eq!(
        GgttRunsSection::validate(&strict, &full),
        Err(GttError::FrameOutsideGuest)
    );

    // Replacing a table that holds something else, then what changed on top of it.
    let mut d = [0x3001u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    let mut stats = RunStats::default();
    GgttRunsSection::apply(
        RunsTarget {
            slices: &mut dst,
            frames: &frames,
            generation: Generation::Gen9,
            replace: true,
            stats: &mut stats,
        },
        &full,
    )
    .unwrap();
    assert_eq!(dst.entries(), &a[..]);
    let changed = RunsSource {
        slices: &src_b,
        sent: Some(&a),
    };
    let saved = GgttRunsSection::save(&changed, 0, &mut buf).unwrap();
    assert_eq!(saved.next, None);
    let delta = buf[..saved.written].to_vec();
    assert_eq!(
        delta[..],
        [raw_run(0x101, &[0]), raw_run(0x103, &[0x6001])].concat()
    );
    GgttRunsSection::apply(
        RunsTarget {
            slices: &mut dst,
            frames: &frames,
            generation: Generation::Gen9,
            replace: false,
            stats: &mut stats,
        },
        &delta,
    )
    .unwrap();
    assert_eq!(dst.entries(), &b[..]);
    assert_eq!(
        stats,
        RunStats {
            entries: 6,
            runs: 4
        }
    );
}

#[test]
fn pending_section_round_trip() {
    use migstream::Section;
    let p = part();
    assert_eq!(
        GgttPendingSection::max_len(&()),
        crate::slices::MAX_PENDING_LEN
    );
    let mut s = [0u64; 16];
    let mut src = GgttSlices::new(p, &mut s).unwrap();
    src.write_half(GttIndex::new(0x101), false, 0x5001).unwrap();
    src.write_half(GttIndex::new(0x42), true, 0x7).unwrap();
    let mut buf = [0u8; 256];
    let saved = GgttPendingSection::save(&&src, 0, &mut buf).unwrap();
    assert_eq!(saved.next, None);
    let payload = &buf[..saved.written];
    assert_eq!(payload.len(), src.pending_len());
    assert_eq!(GgttPendingSection::validate(&&p, payload), Ok(()));
    let mut d = [0u64; 16];
    let mut dst = GgttSlices::new(p, &mut d).unwrap();
    GgttPendingSection::apply(&mut dst, payload).unwrap();
    assert_eq!(dst.pending_halves(), src.pending_halves());
    assert_eq!(dst.pending_halves().len(), 2);
    // A half outside the partition is refused, and not applied.
    let other = Partition::new(
        GmRange::new(GmAddr::new(0x10_0000), 0x1000).unwrap(),
        GmRange::EMPTY,
    )
    .unwrap();
    assert_eq!(
        GgttPendingSection::validate(&&other, payload),
        Err(GttError::OutOfRange)
    );
    let mut e = [0u64; 16];
    let mut fresh = GgttSlices::new(p, &mut e).unwrap();
    assert!(GgttPendingSection::apply(&mut fresh, &payload[..payload.len() - 1]).is_err());
    assert!(fresh.pending_halves().is_empty());
}

#[test]
fn reference_check_edges() {
    // A LINEAR run ending on guest memory's last frame is inside; one frame more is not.
    let below = |g: Gfn| g.get() < 0x20;
    let present = |frame: u64| (frame << PAGE_SHIFT) | 1;
    let check = |payload: &[u8]| validate_runs(payload, &part(), &below, Generation::Gen9);
    assert_eq!(
        check(&linear_run(0x100, 4, present(0x1C))),
        Ok(RunStats {
            entries: 4,
            runs: 1
        })
    );
    assert_eq!(
        check(&linear_run(0x100, 5, present(0x1C))),
        Err(GttError::FrameOutsideGuest)
    );
    // An entry made of every reserved bit and nothing else (not present) is refused.
    for generation in [
        Generation::Gen8,
        Generation::Gen9,
        Generation::Gen12,
        Generation::Mtl,
    ] {
        let all_reserved = !generation.format().allowed_mask();
        assert_eq!(
            validate_runs(
                &raw_run(0x100, &[all_reserved]),
                &part(),
                &all_ok,
                generation
            ),
            Err(GttError::ReservedBits)
        );
    }
}

#[test]
fn fused_paths_refuse_reserved_bits_in_any_combination() {
    // Entries whose faults could cancel in a branch-free check: reserved bits only (not
    // present), every reserved bit, and reserved bit 63 on a present entry whose frame is
    // also outside guest memory (the reserved bit is reported, as by the reference).
    let frames = GuestFrames::from_ranges([(Gfn::new(0x10), 0x10)]).unwrap();
    for generation in [Generation::Gen9, Generation::Gen12] {
        let all_reserved = !generation.format().allowed_mask();
        let payloads = [
            raw_run(0x100, &[1 << 50]),
            raw_run(0x100, &[all_reserved]),
            raw_run(0x100, &[(1 << 63) | (5 << PAGE_SHIFT) | 1]),
            linear_run(0x100, 2, all_reserved),
        ];
        for payload in &payloads {
            let inside = |g: Gfn| frames.contains(g);
            assert_eq!(
                validate_runs(payload, &part(), &inside, generation),
                Err(GttError::ReservedBits)
            );
            assert_eq!(
                validate_runs_in(payload, &part(), &frames, generation),
                Err(GttError::ReservedBits)
            );
            let mut d = [0u64; 16];
            let mut dst = GgttSlices::new(part(), &mut d).unwrap();
            assert_eq!(
                restore_runs(payload, &mut dst, &frames, generation),
                Err(GttError::ReservedBits)
            );
            assert_eq!(
                replace_runs(payload, &mut dst, &frames, generation),
                Err(GttError::ReservedBits)
            );
            drop(dst);
            assert_eq!(d, [0; 16]);
        }
    }
}

#[test]
fn a_raw_run_stops_for_a_linear_stretch_inside_one_scan_block() {
    // Entries three pages apart, with a LINEAR stretch of 7 at slots 10..17: its six
    // one-page steps all lie in the scan block of slots 9..17, and it breaks the RAW run.
    let mut t = vec![0u64; 256];
    for (i, e) in t.iter_mut().enumerate().take(40) {
        *e = (((i as u64) * 3) << 12) | 1;
    }
    for (i, e) in (0u64..).zip(&mut t[10..17]) {
        *e = ((0x500 + i) << 12) | 3;
    }
    let mut s = t.clone();
    let g = GgttSlices::new(big_part(), &mut s).unwrap();
    let mut buf = vec![0u8; 4096];
    let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
    let mut expect = raw_run(0x100, &t[..10]);
    expect.extend_from_slice(&linear_run(0x10A, 7, t[10]));
    expect.extend_from_slice(&raw_run(0x111, &t[17..40]));
    assert_eq!((&buf[..p.written], p.next), (&expect[..], None));
    assert_eq!(reference_save(&t, 96, &big_part(), 4096).0, expect);
}

#[test]
fn a_raw_run_stops_at_a_zero_followed_by_a_one_page_step() {
    // A zero entry followed by 0x1000 (not present, address of frame 1): the pair is both a
    // zero and a one-page step, and the zero must still end the RAW run.
    let mut t = vec![0u64; 256];
    for (i, e) in t.iter_mut().enumerate().take(20) {
        *e = (((i as u64) * 3) << 12) | 1;
    }
    t[5] = 0;
    t[6] = 1 << PAGE_SHIFT;
    let mut s = t.clone();
    let g = GgttSlices::new(big_part(), &mut s).unwrap();
    let mut buf = vec![0u8; 4096];
    let p = g.save_runs(SaveCursor::START, &mut buf).unwrap();
    let mut expect = raw_run(0x100, &t[..5]);
    expect.extend_from_slice(&raw_run(0x106, &t[6..20]));
    assert_eq!((&buf[..p.written], p.next), (&expect[..], None));
    assert_eq!(reference_save(&t, 96, &big_part(), 4096).0, expect);
}
