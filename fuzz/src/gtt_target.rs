//! Target over the GGTT run payload and entry formats (`gtt`).

use std::vec;
use std::vec::Vec;

use gtt::frames::GuestFrames;
use gtt::runs::MIN_SAVE_BUFFER;
use gtt::{
    Generation, Gfn, GgttEntry, GgttSlices, GmAddr, GmRange, Partition, SaveCursor, apply_runs,
    replace_runs, restore_runs, validate_runs,
};

use crate::input::Bytes;

/// The generations, indexed by selector bits.
pub(crate) const GENERATIONS: [Generation; 4] = [
    Generation::Gen8,
    Generation::Gen9,
    Generation::Gen12,
    Generation::Mtl,
];

/// A small partition, chosen by `sel % 4`:
/// 0. aperture 16 pages at GM 0, hidden 8 pages at GM 1 GiB;
/// 1. aperture 16 pages at GM 0, hidden 8 pages right after it (indices 16..24);
/// 2. no aperture, hidden 4 pages at GM 64 KiB;
/// 3. hidden 4 pages at GM 0 *below* an aperture of 4 pages at GM 1 MiB.
pub(crate) fn partition(sel: u8) -> Partition {
    let (ap_base, ap_pages, hid_base, hid_pages) = match sel % 4 {
        0 => (0, 16, 1 << 30, 8),
        1 => (0, 16, 16 << 12, 8),
        2 => (0, 0, 0x1_0000, 4),
        _ => (1 << 20, 4, 0, 4),
    };
    let range = |base: u64, pages: u64| match GmRange::new(GmAddr::new(base), pages << 12) {
        Ok(r) => r,
        Err(e) => panic!("fixed range rejected: {e}"),
    };
    match Partition::new(range(ap_base, ap_pages), range(hid_base, hid_pages)) {
        Ok(p) => p,
        Err(e) => panic!("fixed partition rejected: {e}"),
    }
}

/// Guest memory for the frame predicate: `sel >> 6` picks 0, 16 Ki, 1 Mi or all frames.
pub(crate) fn guest_frames(sel: u8) -> u64 {
    match sel >> 6 {
        0 => 0,
        1 => 1 << 14,
        2 => 1 << 20,
        _ => u64::MAX,
    }
}

/// Checks the entry accessors against the format table of every generation.
fn check_entry(bits: u64) {
    let e = GgttEntry::from_bits(bits);
    assert_eq!(
        e.into_bits(),
        bits,
        "from_bits/into_bits is not the identity"
    );
    let frame = (bits >> 12) & gtt::entry::FRAME_MAX;
    assert_eq!(e.frame(), Gfn::new(frame));
    assert_eq!(e.is_present(), bits & 1 != 0);
    for g in GENERATIONS {
        let f = g.format();
        let ok = bits & !f.allowed_mask() == 0;
        assert_eq!(
            e.validate(g).is_ok(),
            ok,
            "validate disagrees with the mask"
        );
        assert_eq!(e.local_memory(g).is_some(), f.has_local_memory());
        let pat = e.pat_index(g);
        assert!(pat < 8, "PAT index out of range");
        if !f.has_ppat_bits() && !f.has_mtl_pat() {
            assert_eq!(pat, 0);
        }
        // Rewriting the frame keeps every other bit and the validity.
        let other = frame ^ 0x5_5555;
        match e.with_frame(Gfn::new(other)) {
            Ok(e2) => {
                assert_eq!(e2.frame(), Gfn::new(other));
                assert_eq!(
                    e2.into_bits() & !gtt::entry::ADDR_MASK,
                    bits & !gtt::entry::ADDR_MASK
                );
                assert_eq!(e2.validate(g).is_ok(), ok);
            }
            Err(err) => panic!("with_frame rejected an in-range frame: {err}"),
        }
    }
    assert!(e.with_frame(Gfn::new(gtt::entry::FRAME_MAX + 1)).is_err());
    match GgttEntry::present_frame(Gfn::new(frame)) {
        Ok(p) => {
            assert_eq!(p.into_bits(), (frame << 12) | 1);
            for g in GENERATIONS {
                assert!(p.validate(g).is_ok(), "a plain present entry is invalid");
            }
        }
        Err(err) => panic!("present_frame rejected an in-range frame: {err}"),
    }
}

/// One run header as the module docs of `gtt::runs` define it (independent re-reading).
struct RefRun {
    start: u32,
    count: u32,
}

/// Re-reads the run headers of a payload that `validate_runs` accepted.
fn reference_runs(payload: &[u8]) -> Vec<RefRun> {
    let mut out = Vec::new();
    let mut r = Bytes::new(payload);
    while !r.is_empty() {
        let start = r.u32();
        let count = r.u32();
        let kind = r.u8();
        let reserved = r.take(7);
        assert!(reserved.iter().all(|&b| b == 0), "accepted reserved bytes");
        let body = match kind {
            0 => usize::try_from(count)
                .unwrap_or(usize::MAX)
                .saturating_mul(8),
            1 => 8,
            _ => panic!("accepted run kind {kind}"),
        };
        assert!(r.take(body).len() == body, "accepted a truncated run");
        out.push(RefRun { start, count });
    }
    out
}

/// GGTT run payloads and entries.
///
/// Input: `sel = data[0]` picks the partition (bits 1:0: 0 = aperture of 16 pages at GM 0
/// and hidden of 8 pages at GM 1 GiB; 1 = the same aperture with the hidden slice right after
/// it; 2 = hidden only, 4 pages; 3 = hidden of 4 pages at GM 0 below an aperture of 4 pages),
/// the generation (bits 3:2: gen8, gen9, gen12, MTL) and how much guest memory the frame
/// predicate accepts (bits 7:6: no frame, 16 Ki, 1 Mi or all frames); `data[1]`
/// sizes the save buffer (`MIN_SAVE_BUFFER + data[1]` bytes); the rest is the payload, and
/// also, 8 bytes at a time, a list of raw entries for the entry checks.
///
/// Asserts: no panic; the entry accessors agree with each generation's format table;
/// if `validate_runs` accepts the payload, every run lies inside one slice and covers
/// `stats.entries` entries, `apply_runs` on a cleared table succeeds and writes that many
/// entries, saving the table (in buffers of the chosen size) yields payloads that validate
/// and that rebuild exactly the same table; if `apply_runs` fails, the table is unchanged.
pub fn gtt_runs(data: &[u8]) {
    let mut input = Bytes::new(data);
    let sel = input.u8();
    let buf_len = MIN_SAVE_BUFFER + usize::from(input.u8());
    let payload = input.rest();
    for chunk in payload.chunks(8).take(64) {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(chunk) {
            *d = *s;
        }
        check_entry(u64::from_le_bytes(b));
    }

    let part = partition(sel);
    let generation = GENERATIONS
        .get(usize::from((sel >> 2) & 3))
        .copied()
        .unwrap_or(Generation::Gen9);
    let limit = guest_frames(sel);
    let frame_ok = |f: Gfn| f.get() < limit;

    let mut storage = vec![0u64; part.storage_len()];
    let mut slices = match GgttSlices::new(part, &mut storage) {
        Ok(s) => s,
        Err(e) => panic!("storage of storage_len rejected: {e}"),
    };
    let verdict = validate_runs(payload, &part, &frame_ok, generation);
    let applied = apply_runs(payload, &mut slices);
    fused_kernels_agree(
        payload,
        &part,
        limit,
        generation,
        sel,
        verdict,
        slices.entries(),
    );
    let Ok(stats) = verdict else {
        if applied.is_err() {
            assert!(
                slices.entries().iter().all(|&e| e == 0),
                "failed apply_runs changed the table"
            );
        }
        return;
    };

    // Accepted: check the documented structure independently.
    let runs = reference_runs(payload);
    assert_eq!(runs.len() as u64, stats.runs, "run count");
    let covered: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
    assert_eq!(covered, stats.entries, "entry count");
    for r in &runs {
        let first = u64::from(r.start) << 12;
        let last = (u64::from(r.start) + u64::from(r.count) - 1) << 12;
        let inside = |range: &GmRange| {
            range.contains(GmAddr::new(first)) && range.contains(GmAddr::new(last))
        };
        assert!(
            inside(&part.aperture) || inside(&part.hidden),
            "accepted a run of {} entries at index {:#x} that leaves its slice",
            r.count,
            r.start
        );
    }

    let written = match applied {
        Ok(n) => n,
        Err(e) => panic!("apply_runs rejected a validated payload: {e}"),
    };
    assert_eq!(written as u64, stats.entries, "apply_runs entry count");

    // Save in buffers of `buf_len` bytes; each piece validates and rebuilds the table.
    let mut storage2 = vec![0u64; part.storage_len()];
    let mut rebuilt = match GgttSlices::new(part, &mut storage2) {
        Ok(s) => s,
        Err(e) => panic!("storage of storage_len rejected: {e}"),
    };
    let mut buf = vec![0u8; buf_len];
    let mut cursor = Some(SaveCursor::START);
    let mut pieces = 0usize;
    while let Some(from) = cursor {
        pieces += 1;
        assert!(
            pieces <= part.storage_len() + 1,
            "save_runs made no progress"
        );
        let p = match slices.save_runs(from, &mut buf) {
            Ok(p) => p,
            Err(e) => panic!("save_runs failed with a {buf_len}-byte buffer: {e}"),
        };
        if let Some(next) = p.next {
            assert!(next > from, "save cursor did not advance");
        }
        let piece = buf.get(..p.written).unwrap_or_default();
        if let Err(e) = validate_runs(piece, &part, &frame_ok, generation) {
            panic!("saved runs do not validate: {e}");
        }
        if let Err(e) = apply_runs(piece, &mut rebuilt) {
            panic!("saved runs do not apply: {e}");
        }
        cursor = p.next;
    }
    assert_eq!(
        rebuilt.entries(),
        slices.entries(),
        "save/apply did not rebuild the table"
    );
}

/// The fused kernels against the reference (`validate_runs`, then `apply_runs` on a cleared
/// table, whose result is `expected` when `verdict` accepts): `restore_runs` into a cleared
/// table and `replace_runs` over a table holding other entries give the same verdict (the
/// same first error), and the same table, or a cleared one on error.
fn fused_kernels_agree(
    payload: &[u8],
    part: &Partition,
    limit: u64,
    generation: Generation,
    sel: u8,
    verdict: Result<gtt::RunStats, gtt::GttError>,
    expected: &[u64],
) {
    // "Every frame" (`u64::MAX`) as a set: no entry's frame reaches 2^40.
    let frames = match GuestFrames::from_ranges([(Gfn::new(0), limit.min(1 << 40))]) {
        Ok(f) => f,
        Err(e) => panic!("guest frames rejected: {e}"),
    };
    let old: Vec<u64> = (0..part.storage_len() as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) << 12) | u64::from(sel) | 1)
        .collect();
    for replace in [false, true] {
        let mut storage = if replace {
            old.clone()
        } else {
            vec![0u64; part.storage_len()]
        };
        let mut table = match GgttSlices::new(*part, &mut storage) {
            Ok(s) => s,
            Err(e) => panic!("storage of storage_len rejected: {e}"),
        };
        let got = if replace {
            replace_runs(payload, &mut table, &frames, generation)
        } else {
            table.clear();
            restore_runs(payload, &mut table, &frames, generation)
        };
        assert_eq!(got, verdict, "fused kernel (replace: {replace}) verdict");
        if verdict.is_ok() {
            assert_eq!(
                table.entries(),
                expected,
                "fused kernel (replace: {replace}) table"
            );
        } else {
            assert!(
                table.entries().iter().all(|&e| e == 0),
                "rejected payload left entries (replace: {replace})"
            );
        }
    }
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
    fn partitions_have_the_documented_sizes() {
        assert_eq!(partition(0).entries(), 24);
        assert_eq!(partition(1).entries(), 24);
        assert_eq!(partition(2).entries(), 4);
        assert_eq!(partition(3).entries(), 8);
    }

    fn linear_payload(start: u32, count: u32, template: u64) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
        p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&template.to_le_bytes());
        p
    }

    #[test]
    fn valid_linear_run_round_trips() {
        // sel 0b0100_0100: partition 0, Gen9, 16 Ki guest frames; 24-byte buffers.
        let mut data = vec![0b0100_0100, 0];
        data.extend(linear_payload(2, 5, 0x100_0001));
        gtt_runs(&data);
        let part = partition(0);
        let ok = |f: Gfn| f.get() < guest_frames(0b0100_0000);
        let stats = validate_runs(&data[2..], &part, &ok, Generation::Gen9).unwrap();
        assert_eq!((stats.runs, stats.entries), (1, 5));
    }

    #[test]
    fn entry_checks_accept_any_bits() {
        for bits in [0, 1, u64::MAX, 0x0000_3FFF_FFFF_F09B, 0x0030_0000_0000_0003] {
            check_entry(bits);
        }
    }
}
