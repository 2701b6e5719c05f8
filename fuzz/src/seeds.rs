//! The generated part of the checked-in corpus: meaningful inputs per target, built with
//! the libraries' own encoders and save functions, plus a few deterministic random files.
//!
//! `tests/corpus_replay.rs` checks that `corpus/<target>/<name>` holds exactly these bytes
//! (and rewrites them when `VGPU_FUZZ_BLESS=1` is set). Other files in a corpus directory,
//! such as inputs a fuzzer found, are replayed too but not checked.

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use engines::{ContextDescriptor, CsbEntry, EngineMask, Engines, MAX_SAVE_LEN, Workload};
use gtt::{Gfn, GgttEntry, GgttSlices, SaveCursor};
use mmio::{AccessSize, NoHooks, SKL, SKL_REGS};

use crate::input::DrawByte as _;
use crate::migstream_targets::{GOLDEN_STREAM, build_stream};
use sim::Rng;

/// One corpus file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// Target name (the corpus directory).
    pub target: &'static str,
    /// File name inside the directory.
    pub name: String,
    /// Contents.
    pub data: Vec<u8>,
}

fn seed(target: &'static str, name: &str, data: Vec<u8>) -> Seed {
    Seed {
        target,
        name: String::from(name),
        data,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn random(target: &'static str, mix: &mut Rng, n: usize, max_len: u64) -> Vec<Seed> {
    (0..n)
        .map(|i| {
            let len = usize::try_from(1 + mix.below(max_len)).unwrap_or(1);
            let data = (0..len).map(|_| mix.byte()).collect();
            seed(target, &format!("random-{i}"), data)
        })
        .collect()
}

fn migstream_seeds(mix: &mut Rng) -> Vec<Seed> {
    const D: &str = "migstream_decode";
    const R: &str = "migstream_roundtrip";
    const S: &str = "migstream_segmented";
    let g = GOLDEN_STREAM;
    let part = |n: usize| g.get(..n).unwrap_or(g);
    let mut out = vec![
        seed(D, "golden-step1", cat(&[&[0], g])),
        seed(D, "golden-step7", cat(&[&[6], g])),
        seed(D, "golden-step256", cat(&[&[255], g])),
        seed(D, "golden-trunc-header", cat(&[&[15], part(40)])),
        seed(D, "golden-trunc-record-header", cat(&[&[255], part(90)])),
        seed(D, "golden-trunc-pages", cat(&[&[63], part(2000)])),
        seed(D, "golden-no-end", cat(&[&[255], part(4303)])),
        seed(D, "golden-trailing", cat(&[&[255], g, &[0]])),
        seed(
            D,
            "encodings-step1",
            cat(&[&[0], crate::migstream_targets::ENCODINGS_STREAM]),
        ),
        seed(
            D,
            "encodings-step97",
            cat(&[&[96], crate::migstream_targets::ENCODINGS_STREAM]),
        ),
        // Issue 17: a DELTA length that leaves no room for the run's next length field.
        seed(
            D,
            "delta-len-overrun",
            cat(&[&[255], &migstream::fuzzing::delta_len_overrun_stream()]),
        ),
        seed(
            D,
            "delta-len-overrun-step1",
            cat(&[&[0], &migstream::fuzzing::delta_len_overrun_stream()]),
        ),
        seed(D, "built-1", cat(&[&[31], &build_stream(1)])),
        seed(D, "built-2", cat(&[&[2], &build_stream(2)])),
        seed(D, "built-3", cat(&[&[200], &build_stream(3)])),
    ];
    out.extend(random(D, mix, 3, 300));

    // roundtrip scripts: data[0] = slice size − 1, then records (see migstream::fuzzing).
    out.extend([
        seed(R, "empty-stream", vec![255]),
        seed(R, "opaque-known", cat(&[&[15, 0, 1, 4], b"regs"])),
        seed(R, "opaque-unknown", cat(&[&[0, 3, 0x23, 3, 1, 2, 3]])),
        seed(R, "round", vec![7, 1, 5, 9]),
        seed(R, "pages-full", vec![63, 2, 0, 0x10]),
        seed(
            R,
            "pages-mixed",
            vec![255, 10, 0x80, 0x20, 1, 0x30, 0x82, 0x40],
        ),
        seed(
            R,
            "all-kinds",
            cat(&[
                &[100, 0, 2, 8],
                b"cfgspace",
                &[1, 3, 4, 3, 9, 1, 2, 0x81, 7, 2, 0x11],
            ]),
        ),
    ]);
    out.extend(random(R, mix, 3, 120));

    // segmented: data[0] selector, then slice lengths.
    let ones = vec![1u8; 300];
    out.extend([
        seed(S, "golden-whole", vec![0]),
        seed(S, "encodings-whole", vec![4]),
        seed(S, "encodings-bytes", cat(&[&[4], &ones])),
        seed(S, "encodings-corrupt", vec![6, 0x10, 0x10, 5, 9, 0x81]),
        seed(S, "golden-bytes", cat(&[&[0], &ones])),
        seed(
            S,
            "golden-mixed",
            vec![0, 0, 3, 0x81, 17, 0, 0xC0, 5, 80, 0x7F],
        ),
        seed(S, "golden-corrupt-crc", vec![2, 0x12, 0x01, 3, 7, 0x90]),
        seed(S, "golden-corrupt-magic", vec![2, 0, 0, 0, 1]),
        seed(S, "built", vec![1, 5, 0, 0, 0, 0, 0, 0, 0, 9, 0x85, 1, 2]),
        seed(
            S,
            "built-corrupt",
            vec![3, 7, 0, 0, 0, 0, 0, 0, 0, 0x50, 0, 2, 16, 16],
        ),
    ]);
    out.extend(random(S, mix, 2, 64));

    // authenticated: data[0] even = keyed decoder contract, odd = keyed round trip.
    const A: &str = "migstream_auth";
    let keyed = |n| crate::migstream_targets::build_keyed_stream(n);
    out.extend([
        seed(A, "decode-keyed-0", cat(&[&[0, 255], &keyed(0)])),
        seed(A, "decode-keyed-3-step1", cat(&[&[0, 0], &keyed(3)])),
        seed(A, "decode-keyed-5-step7", cat(&[&[2, 6], &keyed(5)])),
        seed(A, "decode-unkeyed-golden", cat(&[&[0, 255], g])),
        seed(
            A,
            "roundtrip-all-kinds",
            cat(&[
                &[1, 100, 0, 2, 8],
                b"cfgspace",
                &[1, 3, 4, 3, 9, 1, 2, 0x81, 7, 2, 0x11],
            ]),
        ),
        seed(
            A,
            "roundtrip-pages",
            vec![1, 255, 10, 0x80, 0x20, 1, 0x30, 0x82, 0x40],
        ),
        seed(A, "roundtrip-empty", vec![3, 255]),
    ]);
    out.extend(random(A, mix, 2, 120));
    out
}

fn gtt_seeds(mix: &mut Rng) -> Vec<Seed> {
    const T: &str = "gtt_runs";
    let mut out = Vec::new();
    // (selector, buffer byte, table builder): selector bits 1:0 partition, 3:2 generation,
    // 7:6 guest memory size (see gtt_target).
    let cases: [(u8, u8, &str); 6] = [
        (0b0100_0100, 255, "gen9-linear-and-raw"),
        (0b0100_0101, 0, "adjacent-small-buffer"),
        (0b1100_1000, 40, "gen12-lm-bit"),
        (0b1100_1110, 255, "mtl-hidden-only"),
        (0b0100_0111, 8, "hidden-below-aperture"),
        (0b1000_0000, 255, "gen8-nonpresent-bits"),
    ];
    for (k, (sel, buf_byte, name)) in cases.into_iter().enumerate() {
        let part = crate::gtt_target::partition(sel);
        let mut storage = vec![0u64; part.storage_len()];
        let Ok(mut slices) = GgttSlices::new(part, &mut storage) else {
            continue;
        };
        let slots = part.storage_len();
        for slot in 0..slots {
            let Some(index) = part.index_at(slot) else {
                continue;
            };
            let frame = 0x100 + u64::try_from(slot).unwrap_or(0);
            let entry = match (k + slot) % 5 {
                // Linear stretch.
                0..=2 => GgttEntry::present_frame(Gfn::new(frame)).ok(),
                // Scattered frame with cache bits (gen8/9) or LM bit.
                3 => Some(GgttEntry::from_bits(0x2 | 0x1 | (mix.below(0x3000) << 12))),
                // Hole.
                _ => None,
            };
            let entry = if k == 5 {
                // Non-present entries that keep other bits.
                Some(GgttEntry::from_bits((frame << 12) | 0x18))
            } else {
                entry
            };
            if let Some(e) = entry {
                let _ = slices.write(index, e);
            }
        }
        let mut buf = vec![0u8; 2048];
        let Ok(p) = slices.save_runs(SaveCursor::START, &mut buf) else {
            continue;
        };
        buf.truncate(p.written);
        out.push(seed(T, name, cat(&[&[sel, buf_byte], &buf])));
    }
    // Hand-made invalid payloads.
    let header = |start: u32, count: u32, kind: u8| {
        cat(&[
            &start.to_le_bytes(),
            &count.to_le_bytes(),
            &[kind, 0, 0, 0, 0, 0, 0, 0],
        ])
    };
    out.extend([
        seed(T, "empty", vec![0b0100_0100, 0]),
        seed(
            T,
            "unknown-kind",
            cat(&[&[0b0100_0100, 0], &header(0, 1, 2), &[0; 8]]),
        ),
        seed(
            T,
            "reserved-set",
            cat(&[&[0b0100_0100, 0], &header(0, 1, 0), &[1; 8]]),
        ),
        seed(
            T,
            "out-of-order",
            cat(&[
                &[0b0100_0100, 0],
                &header(4, 1, 1),
                &0x1001u64.to_le_bytes(),
                &header(2, 1, 1),
                &0x1001u64.to_le_bytes(),
            ]),
        ),
        seed(
            T,
            "linear-overflow",
            cat(&[
                &[0b1100_0100, 0],
                &header(0, 4, 1),
                &0x3FFF_FFFF_F001u64.to_le_bytes(),
            ]),
        ),
        seed(
            T,
            "truncated",
            cat(&[&[0b0100_0100, 0], &header(0, 3, 0), &[1; 12]]),
        ),
    ]);
    out.extend(random(T, mix, 3, 200));
    out
}

fn access(op: u8, operands: &[u8], value: Option<u64>) -> Vec<u8> {
    let mut v = vec![op];
    v.extend_from_slice(operands);
    if let Some(x) = value {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Op byte for `mmio_access`: write flag, size index, addressing mode, delta.
const fn op(write: bool, size: u8, mode: u8, delta: u8) -> u8 {
    (write as u8) | (size << 1) | (mode << 3) | (delta << 5)
}

fn mmio_seeds(mix: &mut Rng) -> Vec<Seed> {
    const A: &str = "mmio_access";
    const R: &str = "mmio_restore";
    let raw = |off: u32| {
        let [a, b, c, _] = off.to_le_bytes();
        [a, b, c]
    };
    let mut out = vec![
        seed(
            A,
            "gfx-mode-masked",
            cat(&[
                &access(op(true, 2, 2, 0), &raw(0x229C), Some(0x8000_8000)),
                &access(op(false, 2, 2, 0), &raw(0x229C), None),
                &access(op(true, 2, 2, 0), &raw(0x229C), Some(0x0000_FFFF)),
            ]),
        ),
        seed(
            A,
            "pvinfo-reads",
            cat(&[
                &access(op(false, 3, 1, 0), &[0, 0], None),
                &access(op(false, 2, 1, 0), &[0x40, 0], None),
                &access(op(true, 2, 1, 0), &[0x04, 0x08], Some(1)),
            ]),
        ),
        seed(
            A,
            "untracked-bytes",
            cat(&[
                &access(op(true, 0, 2, 0), &raw(0x40001), Some(0xAB)),
                &access(op(true, 1, 2, 0), &raw(0x40002), Some(0xCDEF)),
                &access(
                    op(true, 3, 2, 0),
                    &raw(0x40008),
                    Some(0x0123_4567_89AB_CDEF),
                ),
                &access(op(false, 3, 2, 0), &raw(0x40000), None),
            ]),
        ),
        seed(
            A,
            "misaligned-and-end",
            cat(&[
                &access(op(true, 3, 2, 0), &raw(0x40004), Some(u64::MAX)),
                &access(op(true, 2, 2, 0), &raw(0x40002), Some(1)),
                &access(op(false, 3, 3, 0), &[8], None),
                &access(op(true, 3, 3, 0), &[12], Some(7)),
                &access(op(false, 0, 2, 0), &raw(0xFF_FFFF), None),
            ]),
        ),
    ];
    // Every table register written with all ones, then read back.
    let mut table = Vec::new();
    for i in 0..u16::try_from(SKL_REGS.len()).unwrap_or(0).min(200) {
        let [lo, hi] = i.to_le_bytes();
        table.extend(access(op(true, 2, 0, 0), &[lo, hi], Some(u64::MAX)));
        table.extend(access(op(false, 2, 0, 0), &[lo, hi], None));
    }
    out.push(seed(A, "table-all-ones", table));
    out.extend(random(A, mix, 3, 200));

    // Restore payloads from save_sparse of states with guest-written registers.
    out.push(seed(R, "empty", Vec::new()));
    for (k, stride) in [1usize, 2, 7].into_iter().enumerate() {
        let mut st = crate::mmio_targets::storage();
        let mut regs = crate::mmio_targets::regfile(&mut st);
        for r in SKL_REGS.iter().filter(|r| r.is_migrated()).step_by(stride) {
            let v = mix.next_u64();
            let _ = regs.write(r.offset, AccessSize::Dword, v, &mut NoHooks);
        }
        let mut buf = vec![0u8; SKL.max_sparse_len()];
        if let Ok(n) = regs.save_sparse(&mut buf) {
            buf.truncate(n);
            out.push(seed(R, &format!("saved-{k}"), buf));
        }
    }
    out.push(seed(
        R,
        "unknown-register",
        cat(&[
            &0x4_0000u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &[1, 0, 0, 0],
        ]),
    ));
    out.push(seed(
        R,
        "zero-count",
        cat(&[&0x229Cu32.to_le_bytes(), &0u32.to_le_bytes()]),
    ));
    out.extend(random(R, mix, 2, 100));
    out
}

fn engines_seeds(mix: &mut Rng) -> Vec<Seed> {
    const T: &str = "engines_restore";
    let mut out = Vec::new();
    for (name, bits) in [("rcs", 0x01u8), ("all", 0x1F), ("bcs-vecs", 0x12)] {
        let present = crate::engines_targets::mask(bits);
        let mut e = Engines::new(present);
        for (j, id) in present.iter().enumerate() {
            for q in 0..(3 * j + 1) {
                let w = Workload {
                    engine: id,
                    desc: ContextDescriptor::from_bits(mix.next_u64()),
                    ring_head: u32::try_from(q * 0x40).unwrap_or(0),
                    ring_tail: u32::try_from(q * 0x40 + 0x20).unwrap_or(0),
                    schedule_in: q % 2 == 0,
                };
                let _ = e.enqueue(w);
            }
            let _ = e.elsp_write(id, 0xDEAD_0000 | u32::try_from(j).unwrap_or(0));
            if let Some(eng) = e.engine_mut(id) {
                eng.csb.push(CsbEntry::from_bits(0x8001));
                let _ = eng.csb.set_read_ptr(0);
            }
        }
        let _ = e.quiesce();
        let mut buf = vec![0u8; MAX_SAVE_LEN];
        if let Ok(n) = e.save(&mut buf) {
            buf.truncate(n);
            out.push(seed(T, &format!("saved-{name}"), cat(&[&[bits], &buf])));
        }
    }
    let mut q = Engines::new(EngineMask::ALL);
    let _ = q.quiesce();
    let mut buf = vec![0u8; MAX_SAVE_LEN];
    if let Ok(n) = q.save(&mut buf) {
        buf.truncate(n);
        out.push(seed(T, "saved-fresh-all", cat(&[&[0x1F], &buf])));
    }
    out.extend([
        seed(T, "bad-version", vec![0x01, 2, 1, 0, 0]),
        seed(T, "no-engines", vec![0x00, 1, 0, 0, 0]),
        seed(
            T,
            "ops-dispatch-save",
            cat(&[
                &[0x81, 1],
                &[0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0],
                &[4, 2, 7, 5, 7, 3, 4, 0, 1, 2, 3, 4],
            ]),
        ),
        seed(
            T,
            "ops-elsp-csb",
            vec![
                0x9F, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4, 0, 0, 0, 6, 1, 0, 0, 0, 0,
                0, 0, 0, 3, 14, 2, 0, 0, 0, 0, 0, 0, 0, 7, 2, 7,
            ],
        ),
    ]);
    out.extend(random(T, mix, 3, 300));
    out
}

/// Every generated seed, deterministic across runs and platforms.
#[must_use]
pub fn all() -> Vec<Seed> {
    let mut mix = Rng::new(0x005E_ED0F_F022);
    let mut out = migstream_seeds(&mut mix);
    out.extend(gtt_seeds(&mut mix));
    out.extend(mmio_seeds(&mut mix));
    out.extend(engines_seeds(&mut mix));
    out.extend(vgpu_seeds());
    out.extend(gtt_walk_seeds(&mut mix));
    out.extend(gmem_seeds(&mut mix));
    out
}

fn vgpu_seeds() -> Vec<Seed> {
    const T: &str = "vgpu_restore";
    let wire = crate::vgpu_valid_stream();
    let with = |step: u8, bytes: &[u8]| {
        let mut v = vec![step];
        v.extend_from_slice(bytes);
        v
    };
    let mut flipped = wire.clone();
    if let Some(b) = flipped.get_mut(wire.len() / 2) {
        *b ^= 0x10;
    }
    vec![
        seed(T, "valid-feed-97", with(1, &wire)),
        seed(T, "valid-feed-24k", with(255, &wire)),
        seed(
            T,
            "half",
            with(7, wire.get(..wire.len() / 2).unwrap_or(&[])),
        ),
        seed(T, "header-only", with(3, wire.get(..80).unwrap_or(&[]))),
        seed(T, "flipped-middle", with(9, &flipped)),
    ]
}

/// One `gtt_walk` input: selector, PDP mask, entry writes `(page, index, raw)` and addresses.
fn walk_input(sel: u8, pdps: u8, writes: &[(u16, u16, u64)], addrs: &[u64]) -> Vec<u8> {
    let mut out = vec![sel, pdps, u8::try_from(writes.len()).unwrap_or(u8::MAX)];
    for &(page, index, raw) in writes {
        out.extend_from_slice(&(page << 9 | index).to_le_bytes());
        out.extend_from_slice(&raw.to_le_bytes());
    }
    for a in addrs {
        out.extend_from_slice(&a.to_le_bytes());
    }
    out
}

fn gtt_walk_seeds(mix: &mut Rng) -> Vec<Seed> {
    const T: &str = "gtt_walk";
    const P: u64 = 1;
    const RW: u64 = 2;
    // Selector: bit 0 four-level, bits 2:1 generation (0 gen8, 1 gen9, 2 gen12, 3 MTL),
    // bits 7:3 pages - 1.
    let sel =
        |four: bool, generation: u8, pages: u8| u8::from(four) | generation << 1 | (pages - 1) << 3;
    // 4-level: PML4 0 -> PDP 1 -> PD 2 -> PT 3 (4 KiB), PT 4 (64 KiB), and a 2 MiB page.
    let tree = [
        (0, 0, 0x1000 | P | RW),
        (1, 0, 0x2000 | P | RW),
        (2, 0, 0x3000 | P | RW),
        (2, 1, 0x4000 | P | RW | 1 << 11),
        (2, 2, P | 1 << 7 | 1 << 12 | 0x18),
        (3, 0, 0x5000 | P | RW | 0x18),
        (3, 1, 0x6000 | P | 0x80),
        (4, 0, 0x7000 | P | RW),
        (4, 16, P | RW),
    ];
    let addrs = [
        0x1234u64,
        0x20_0000,
        0x21_0FFF,
        0x40_0000,
        1 << 47,
        u64::MAX,
    ];
    let mut out = vec![
        seed(
            T,
            "four-level-all-sizes",
            walk_input(sel(true, 1, 8), 0, &tree, &addrs),
        ),
        seed(
            T,
            "gen12-64k-bit6",
            walk_input(
                sel(true, 2, 8),
                0,
                &[
                    (0, 0, 0x1000 | P | RW),
                    (1, 0, 0x2000 | P | RW),
                    (2, 0, 0x3000 | P | RW | 1 << 6),
                    (3, 0, 0x4000 | P | RW | 1 << 11),
                    (3, 16, 0x5000 | P | 1 << 62),
                ],
                &[0x1_0000, 0],
            ),
        ),
        seed(
            T,
            "three-level",
            walk_input(
                sel(false, 0, 4),
                0b0101,
                &[
                    (1, 0, 0x2000 | P | RW),
                    (2, 3, 0x3000 | P | RW),
                    (1, 1, P | 1 << 7),
                ],
                &[0x3000, 0x8000_3000, 0x20_0000],
            ),
        ),
        seed(
            T,
            "cycles-and-shared",
            walk_input(
                sel(true, 1, 4),
                0,
                &[
                    (0, 0, P | RW),
                    (0, 1, 0x1000 | P | RW),
                    (1, 0, P | RW),
                    (1, 1, 0x2000 | P | RW),
                    (2, 0, 0x3000 | P | RW),
                    (2, 1, 0x3000 | P | RW),
                    (3, 0, 0x2000 | P | RW),
                ],
                &[1 << 39 | 1 << 30, 0],
            ),
        ),
        seed(
            T,
            "faults",
            walk_input(
                sel(true, 3, 4),
                0,
                &[
                    (0, 0, 0x1000 | P | RW),
                    (1, 0, P | RW | 1 << 7),
                    (1, 1, 0x2000 | P | RW),
                    (2, 0, 0x3000 | P | RW | 1 << 11),
                    (3, 0, 0x5000 | P | RW),
                    (3, 16, 0x3000 | P | 1 << 47),
                    (2, 1, 0x1000 | P | 1 << 7 | 1 << 14),
                ],
                &[1 << 30, 0, 1 << 30 | 0x1000],
            ),
        ),
    ];
    // Every entry of every page points at the next page: the budget bounds the visit.
    let mut dense = Vec::new();
    for page in 0..4u16 {
        for index in (0..512u16).step_by(8) {
            dense.push((page, index, (u64::from(page + 1) % 4) << 12 | P | RW));
        }
    }
    dense.truncate(255);
    out.push(seed(
        T,
        "dense-shared",
        walk_input(sel(true, 1, 4), 0, &dense, &[]),
    ));
    out.extend(random(T, mix, 3, 400));
    out
}

/// A `gmem_ops` map of built regions `(gap, count - 1)`.
fn gmem_built(regions: &[(u16, u8)]) -> Vec<u8> {
    let n = u8::try_from(regions.len().saturating_sub(1)).unwrap_or(0);
    let mut out = vec![n & 0x0F];
    for &(gap, count) in regions {
        out.extend_from_slice(&gap.to_le_bytes());
        out.push(count);
    }
    out
}

/// A `gmem_ops` raw map of regions `(start selector, count)`.
fn gmem_raw(regions: &[(u64, u16)]) -> Vec<u8> {
    let n = u8::try_from(regions.len()).unwrap_or(0);
    let mut out = vec![0x80 | (n & 0x1F)];
    for &(start, count) in regions {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

/// A `gmem_ops` policy operation: opcode, config and `rounds` rounds of 1 GiB sent per second
/// with the dirty set following `dirty` (its last value repeated).
fn gmem_policy(
    code: u8,
    limit_ms: u16,
    max_rounds: u8,
    knob: u8,
    rounds: usize,
    dirty: &[u32],
) -> Vec<u8> {
    let mut out = vec![code];
    out.extend_from_slice(&limit_ms.to_le_bytes());
    out.extend_from_slice(&[max_rounds, knob]);
    for i in 0..rounds {
        let d = dirty.get(i).or(dirty.last()).copied().unwrap_or(0);
        // Flags 0x21: dirty pages as a u32, bytes unshifted, elapsed as a u32.
        out.push(0x21);
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&(1u32 << 30).to_le_bytes());
        out.extend_from_slice(&1_000_000u32.to_le_bytes());
    }
    out
}

fn gmem_seeds(mix: &mut Rng) -> Vec<Seed> {
    const T: &str = "gmem_ops";
    // Raw start selectors: bits 63:62 = 0 low RAM, 1 above 4 GiB, 2 below the frame limit.
    const LOW: u64 = 0;
    const HIGH: u64 = 1 << 62;
    const TOP: u64 = 2 << 62;
    // 16 frames at 0 and 256 frames from 4 GiB + 8 KiB.
    let two = gmem_built(&[(0, 15), (0xC002, 255)]);
    let ops: &[u8] = &[
        0x01, 10, 0, 20, 0x40, // set_range(a, 10, 20): across the hole
        0x10, 5, 0, // set(c, 5)
        0x0B, 4, 3, 0, 100, 0, 200, 0, 15, 1, // set(a) at 3, 100, 200, 271
        0x00, 16, 1,    // set(a, 272): out of range
        0x06, // check
        0x19, 21, 0x01, 2, 0, 0, // peek: 2 MiB pages at 4 GiB
        0x19, 30, 0x80, 8, 0, 0x03, // peek: 1 GiB pages over 8 GiB, bitmap pre-filled
        0x19, 12, 0x80, 0, 0x80, 0, 0, 0, 0, 2, 0, 0, 0, 0, // peek: 8 GiB of 4 KiB pages
        0x09, 21, 0x01, 2, 0, 0, // report: 2 MiB pages at 4 GiB, read-and-clear
        0x89, 12, 0x00, 16, 0, 0, // report with a bitmap one word short
        0x02, 0x13, 0x14, 0x05, 0, 0, 0x35, // harvests, absorb, take_next, drain
        0x01, 0, 0, 0, 0x80, // set_range(a, whole)
        0x08, 7, 0, 100, 0, // range_each
        0x18, 0, 0, 0, 0x80, // take_range_each, whole
        0x32, 0x24, 0x17, 0x07, 0x06, // size mismatches, clears, check
    ];
    // 512 frames at 0 and 1024 frames ending at the frame limit.
    let top = gmem_raw(&[(LOW, 512), (TOP | 1024, 1024)]);
    let top_ops: &[u8] = &[
        0x01, 0, 0, 0, 0x80, // set_range(a, whole)
        0x09, 12, 0x01, 16, 0, 0, // report the first 16 frames below the limit
        0x09, 22, 0x01, 1, 0, 0, // 4 MiB at the top: iova + length overflows
        0x09, 63, 0x01, 1, 0, 0, // 2^63-byte pages: overflows
        0x09, 12, 0x01, 0, 0, 0, // empty range
        0x09, 11, 0x00, 1, 0, 0, // 2 KiB pages
        0x09, 0x80, 0x00, 0x30, 0, 0, 0, 0, 0, 0, 0x00, 1, 0, 0, // page size 12 KiB
        0x03, 0x06,
    ];
    // 16 adjacent regions of 256 frames: 64 full words.
    let dense = gmem_built(&[(0, 255); 16]);
    let dense_ops: &[u8] = &[
        0x01, 0, 0, 0, 0x80, 0x11, 0, 0, 0, 0x80, 0x06, 0x03, 0x13, 0x06, // set all, harvest
        0x11, 1, 0, 0xFF, 0x7F, 0x12, 0x35, 0x06, // atomic -> b, drain b
    ];
    let small = gmem_built(&[(0, 63)]);
    let dirty = [100_000, 50_000, 45_000, 44_000, 43_000];
    let mut policies = small.clone();
    // Ours (limit), ours (minimize), QEMU with 3 iterations, stop-and-copy, ours capped at 1.
    policies.extend(gmem_policy(0x0A, 300, 30, 10, 32, &dirty));
    policies.extend(gmem_policy(0x1A, 300, 30, 10, 32, &dirty));
    policies.extend(gmem_policy(0x2A, 300, 3, 0, 5, &dirty));
    policies.extend(gmem_policy(0x3A, 300, 3, 0, 3, &dirty));
    policies.extend(gmem_policy(0x1A, 1, 0, 200, 3, &[u32::MAX]));
    policies.extend(gmem_policy(0x6A, 300, 0, 1, 18, &[0x4000_0000, 0]));
    let mut out = vec![
        seed(T, "hole-and-high-memory", cat(&[&two, ops])),
        seed(T, "raw-up-to-the-frame-limit", cat(&[&top, top_ops])),
        seed(T, "dense-full-words", cat(&[&dense, dense_ops])),
        seed(T, "policies", policies),
        seed(T, "raw-overlap", gmem_raw(&[(LOW | 10, 5), (LOW | 12, 5)])),
        seed(T, "raw-unsorted", gmem_raw(&[(HIGH, 5), (LOW, 5)])),
        seed(T, "raw-empty-region", gmem_raw(&[(LOW, 4), (HIGH, 0)])),
        seed(T, "raw-overflow", gmem_raw(&[(TOP | 2, 3)])),
        seed(
            T,
            "raw-seventeen",
            gmem_raw(&(0..17).map(|i| (LOW | (i * 8), 4)).collect::<Vec<_>>()),
        ),
        seed(
            T,
            "raw-empty-map",
            cat(&[&gmem_raw(&[]), &[0x06, 0x03, 0x09, 12]]),
        ),
    ];
    // Random operations on a built (valid) map: the raw-map bit cleared.
    for mut r in random(T, mix, 3, 300) {
        if let Some(head) = r.data.first_mut() {
            *head &= 0x7F;
        }
        out.push(r);
    }
    out
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
    fn seeds_are_deterministic_and_named_uniquely() {
        let a = all();
        assert_eq!(a, all());
        let mut names: Vec<(&str, &str)> = a.iter().map(|s| (s.target, s.name.as_str())).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
        for t in crate::TARGETS {
            assert!(
                a.iter().filter(|s| s.target == t.name).count() >= 5,
                "{} has few seeds",
                t.name
            );
        }
    }

    #[test]
    fn saved_seeds_are_valid_payloads() {
        let a = all();
        let engines: Vec<_> = a
            .iter()
            .filter(|s| s.target == "engines_restore" && s.name.starts_with("saved"))
            .collect();
        assert_eq!(engines.len(), 4);
        for s in engines {
            let e = Engines::new(crate::engines_targets::mask(s.data[0]));
            assert_eq!(e.validate(&s.data[1..]), Ok(()), "{}", s.name);
        }
        let gtt: Vec<_> = a
            .iter()
            .filter(|s| s.target == "gtt_runs" && !s.name.starts_with("random"))
            .collect();
        assert!(gtt.len() >= 10);
        for s in a
            .iter()
            .filter(|s| s.target == "mmio_restore" && s.name.starts_with("saved"))
        {
            assert!(!s.data.is_empty());
            assert_eq!(mmio::validate_sparse(&SKL, &s.data), Ok(()), "{}", s.name);
        }
    }
}
