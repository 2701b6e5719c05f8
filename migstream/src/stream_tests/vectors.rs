//! Golden vectors read as a reader of SPEC.md would: the pages of `encodings.bin` and of the
//! two-channel set `channels-0.bin` / `channels-1.bin` applied to a model guest memory with the
//! consumer rules of §6.1 (frames inside the memory map, the DUP hash checked with xxh3-64, the
//! current contents of a frame never written are zero) and Appendix A.6 (dense-index striping,
//! the CHANNEL record first, identical headers).

use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use super::{Ev, HEADER, VECTORS, decode, encodings_stream, hexdump, run};
use crate::*;

type Page = [u8; PAGE_SIZE];

/// Guest memory as a reader models it: frames never written read as zero (SPEC.md §6.1).
#[derive(Default, Debug, PartialEq, Eq)]
struct Memory {
    pages: BTreeMap<u64, Page>,
}

impl Memory {
    fn get(&self, frame: u64) -> Page {
        self.pages.get(&frame).copied().unwrap_or([0; PAGE_SIZE])
    }

    fn page_mut(&mut self, frame: u64) -> &mut Page {
        self.pages.entry(frame).or_insert([0; PAGE_SIZE])
    }
}

/// A guest memory map: `(first frame, frames)` regions in ascending order (SPEC.md Appendix A.6).
type MemoryMap = [(u64, u64)];

/// The dense index of `frame` (its position among the map's frames), or `None` outside the map.
fn dense_index(map: &MemoryMap, frame: u64) -> Option<u64> {
    let mut before = 0;
    for &(start, count) in map {
        if (start..start + count).contains(&frame) {
            return Some(before + frame - start);
        }
        before += count;
    }
    None
}

/// The channel of `frame` in a migration of `channels` channels (stripes of 128 dense frames).
fn channel_of(map: &MemoryMap, frame: u64, channels: u64) -> Option<u64> {
    dense_index(map, frame).map(|i| (i / 128) % channels)
}

/// Apply one event's page effect with the §6.1 consumer rules; `Err` names the broken rule.
/// `channel`: `(this channel, channels)` for a multi-channel migration (Appendix A.6).
fn apply(
    mem: &mut Memory,
    map: &MemoryMap,
    channel: Option<(u64, u64)>,
    ev: &Ev,
) -> Result<(), String> {
    let check = |frame: u64| -> Result<(), String> {
        let Some(i) = dense_index(map, frame) else {
            return Err(format!("FrameOutsideMemory {frame:#x}"));
        };
        match channel {
            Some((c, n)) if (i / 128) % n != c => Err(format!("WrongChannel {frame:#x}")),
            _ => Ok(()),
        }
    };
    match ev {
        Ev::Page(frame, off, data) => {
            check(*frame)?;
            let off = usize::from(*off);
            mem.page_mut(*frame)[off..off + data.len()].copy_from_slice(data);
        }
        Ev::Zero(first, count) => {
            for f in *first..*first + u64::from(*count) {
                check(f)?;
                *mem.page_mut(f) = [0; PAGE_SIZE];
            }
        }
        Ev::Copy(frame, from, hash) => {
            check(*frame)?;
            check(*from)?;
            let src = mem.get(*from);
            if xxhash_rust::xxh3::xxh3_64(&src) != *hash {
                return Err(format!("DuplicateMismatch {frame:#x} <- {from:#x}"));
            }
            *mem.page_mut(*frame) = src;
        }
        Ev::Xor(frame, off, data) => {
            check(*frame)?;
            let off = usize::from(*off);
            for (p, d) in mem.page_mut(*frame)[off..off + data.len()]
                .iter_mut()
                .zip(data)
            {
                *p ^= d;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Write (under `MIGSTREAM_BLESS`) and compare a vector and its hex dump; returns the file bytes.
fn golden_file(name: &str, bytes: &[u8]) -> Vec<u8> {
    let bin = format!("{VECTORS}/{name}.bin");
    let hex = format!("{VECTORS}/{name}.hex");
    if std::env::var_os("MIGSTREAM_BLESS").is_some() {
        std::fs::write(&bin, bytes).unwrap();
        std::fs::write(&hex, hexdump(bytes)).unwrap();
    }
    let golden = std::fs::read(&bin).unwrap();
    assert!(
        bytes == golden,
        "the generator no longer reproduces {name}.bin"
    );
    assert_eq!(std::fs::read_to_string(&hex).unwrap(), hexdump(&golden));
    golden
}

/// Page 5 of `encodings.bin`: byte `k` is `k % 251`.
pub(super) fn encodings_page5() -> Page {
    core::array::from_fn(|k| (k % 251) as u8)
}

#[test]
fn golden_encodings_apply_as_the_spec_says() {
    let golden = std::fs::read(format!("{VECTORS}/encodings.bin")).unwrap();
    assert!(golden == encodings_stream(), "encodings.bin is stale");
    let map = [(0, 16)];
    let mut mem = Memory::default();
    for ev in decode(&golden, &[1]).unwrap() {
        apply(&mut mem, &map, None, &ev).unwrap();
    }
    let page5 = encodings_page5();
    // Frame 8 is a DUP of frame 5, whose hash the vector carries: the real xxh3-64.
    let hash = u64::from_le_bytes(golden[4248..4256].try_into().unwrap());
    assert_eq!(hash, xxhash_rust::xxh3::xxh3_64(&page5));
    assert_eq!(hash, ENCODINGS_DUP_HASH);
    // Frame 9 was never sent: its DELTA applies to a zero page.
    let mut page9 = [0u8; PAGE_SIZE];
    page9[16] = 0xAB;
    page9[17] = 0xCD;
    page9[4018] = 0xEF;
    let want: BTreeMap<u64, Page> = [
        (5, page5),
        (6, [0; PAGE_SIZE]),
        (7, [0; PAGE_SIZE]),
        (8, page5),
        (9, page9),
    ]
    .into_iter()
    .collect();
    // Frame 10's empty delta leaves it as it was: never written, a zero page.
    for f in 0..16 {
        let want = want.get(&f).copied().unwrap_or([0; PAGE_SIZE]);
        assert!(mem.get(f) == want, "frame {f}");
    }
    // A reader that checks the hash refuses a wrong one (the placeholder the vector once had).
    let mut mem = Memory::default();
    let wrong = Ev::Copy(8, 5, 0x1122_3344_5566_7788);
    mem.pages.insert(5, page5);
    assert_eq!(
        apply(&mut mem, &map, None, &wrong),
        Err(String::from("DuplicateMismatch 0x8 <- 0x5"))
    );
}

/// The DUP hash `encodings.bin` carries: xxh3-64 of its page 5 (also in `encodings.md`).
pub(super) const ENCODINGS_DUP_HASH: u64 = 0x7135_FFA5_04F1_BC71;

// ---- the two-channel set -------------------------------------------------------------------

/// Guest memory map of the channel vectors: 192 frames at 0, a hole, 320 frames at `0x1000`.
const CHANNEL_MAP: [(u64, u64); 2] = [(0, 0xC0), (0x1000, 0x140)];
const CHANNELS: u64 = 2;

/// The header both channels carry: `skeleton.bin`'s, minor 1 (CHANNEL is a 1.1 kind).
const CHANNEL_HEADER: StreamHeaderRepr = StreamHeaderRepr {
    minor: MINOR_1_1,
    ..HEADER
};

fn pattern(f: impl Fn(usize) -> u8) -> Page {
    core::array::from_fn(f)
}

/// Frame 0x10 (channel 0, round 0).
fn page_a() -> Page {
    pattern(|k| (k * 7 + 1) as u8)
}
/// Frame 0x10BF (channel 0, round 1).
fn page_b() -> Page {
    pattern(|k| (k % 253) as u8)
}
/// Frame 0x1000 (channel 1, round 0).
fn page_c() -> Page {
    pattern(|k| (k * 13) as u8 ^ 0x5A)
}

/// A DELTA page: `len`, then `(skip, bytes)` segments.
fn delta(segments: &[(u16, &[u8])]) -> Vec<u8> {
    let mut d = Vec::new();
    for (skip, bytes) in segments {
        d.extend(skip.to_le_bytes());
        d.extend((bytes.len() as u16).to_le_bytes());
        d.extend_from_slice(bytes);
    }
    [(d.len() as u16).to_le_bytes().to_vec(), d].concat()
}

const DELTA_A: [(u16, &[u8]); 2] = [(100, &[1, 2, 3, 4]), (3000, &[0xF0, 0x0F])];
const DELTA_C: [(u16, &[u8]); 1] = [(4092, &[0xFF; 4])];

fn dup(from: u64, page: &Page) -> Vec<u8> {
    [
        from.to_le_bytes(),
        xxhash_rust::xxh3::xxh3_64(page).to_le_bytes(),
    ]
    .concat()
}

/// The PAGES payloads of each round of `channel`.
fn channel_rounds(channel: u16) -> [Vec<u8>; 2] {
    let (a, b, c) = (page_a(), page_b(), page_c());
    if channel == 0 {
        [
            [
                run(0x10, 1, 0),
                a.to_vec(),
                run(0x1040, 2, 1),
                run(0x11, 1, 2),
                dup(0x10, &a),
            ]
            .concat(),
            [
                run(0x10, 1, 3),
                delta(&DELTA_A),
                run(0x10BF, 1, 0),
                b.to_vec(),
            ]
            .concat(),
        ]
    } else {
        [
            [run(0x1000, 1, 0), c.to_vec(), run(0x80, 0x40, 1)].concat(),
            [
                run(0x10C0, 1, 2),
                dup(0x1000, &c),
                run(0x1000, 1, 3),
                delta(&DELTA_C),
            ]
            .concat(),
        ]
    }
}

/// Pages per round on each channel (every encoding counts, SPEC.md §6.2).
const CHANNEL_ROUND_PAGES: [[u64; 2]; 2] = [[4, 2], [65, 2]];

/// Channel `channel` of the two-channel vector set: header, CHANNEL, then per round a PAGES
/// record and its ROUND (pages and bytes as §6.2 defines them), then END.
fn channel_stream(channel: u16) -> Vec<u8> {
    let mut out = vec![0u8; 1 << 16];
    let mut enc = Encoder::new();
    let mut n = enc
        .write_header(&CHANNEL_HEADER, &mut out)
        .unwrap()
        .written();
    let mut intro = [0u8; 8];
    intro[..2].copy_from_slice(&channel.to_le_bytes());
    intro[2..4].copy_from_slice(&(CHANNELS as u16).to_le_bytes());
    n += enc
        .write_record(
            RecordKind::CHANNEL,
            RecordFlags::MANDATORY,
            1,
            &intro,
            &mut out[n..],
        )
        .unwrap()
        .written();
    let mut round_start = 0u64;
    for (round, payload) in channel_rounds(channel).iter().enumerate() {
        n += enc
            .write_record(
                RecordKind::PAGES,
                RecordFlags::MANDATORY,
                CONTROL_VERSION,
                &payload[..],
                &mut out[n..],
            )
            .unwrap()
            .written();
        let r = RoundRepr {
            round: round as u32,
            pages: CHANNEL_ROUND_PAGES[usize::from(channel)][round],
            bytes: enc.bytes_written() - round_start,
        };
        n += enc.write_round(&r, &mut out[n..]).unwrap().written();
        round_start = enc.bytes_written();
    }
    n += enc.write_end(&mut out[n..]).unwrap().written();
    out.truncate(n);
    out
}

/// The events `channels.md` lists for channel `channel`, derived from the payloads.
fn channel_events(channel: u16, bytes: &[u8]) -> Vec<Ev> {
    let (a, b, c) = (page_a(), page_b(), page_c());
    let hash = |p: &Page| xxhash_rust::xxh3::xxh3_64(p);
    let rounds = channel_rounds(channel);
    let mut intro = vec![0u8; 8];
    intro[..2].copy_from_slice(&channel.to_le_bytes());
    intro[2] = CHANNELS as u8;
    let pages_at = [80 + 16 + 8, 80 + 16 + 8 + 16 + rounds[0].len() + 16 + 24];
    // Round 1 starts right after ROUND 0 and ends at ROUND 1's header: its PAGES record.
    let round1_bytes = 16 + rounds[1].len() as u64;
    let (round0_bytes, end_at) = (
        pages_at[0] as u64 + 16 + rounds[0].len() as u64,
        bytes.len() as u64 - 32,
    );
    let mut ev = vec![
        Ev::Header(CHANNEL_HEADER),
        Ev::Begin(RecordKind::CHANNEL, 1, 8, 0),
        Ev::Payload(RecordKind::CHANNEL, 0, intro),
        Ev::End(RecordKind::CHANNEL, 0),
        Ev::Begin(RecordKind::PAGES, 1, rounds[0].len() as u32, 1),
    ];
    let xor = |frame: u64, segs: &[(u16, &[u8])]| {
        let mut off = 0u16;
        segs.iter()
            .map(|(skip, bytes)| {
                off += skip;
                let e = Ev::Xor(frame, off, bytes.to_vec());
                off += bytes.len() as u16;
                e
            })
            .collect::<Vec<_>>()
    };
    if channel == 0 {
        ev.extend([
            Ev::Page(0x10, 0, a.to_vec()),
            Ev::Zero(0x1040, 2),
            Ev::Copy(0x11, 0x10, hash(&a)),
        ]);
    } else {
        ev.extend([Ev::Page(0x1000, 0, c.to_vec()), Ev::Zero(0x80, 0x40)]);
    }
    let pages = CHANNEL_ROUND_PAGES[usize::from(channel)];
    ev.extend([
        Ev::End(RecordKind::PAGES, 1),
        Ev::Round(RoundRepr {
            round: 0,
            pages: pages[0],
            bytes: round0_bytes,
        }),
        Ev::Begin(RecordKind::PAGES, 1, rounds[1].len() as u32, 3),
    ]);
    if channel == 0 {
        ev.extend(xor(0x10, &DELTA_A));
        ev.push(Ev::Page(0x10BF, 0, b.to_vec()));
    } else {
        ev.push(Ev::Copy(0x10C0, 0x1000, hash(&c)));
        ev.extend(xor(0x1000, &DELTA_C));
    }
    ev.extend([
        Ev::End(RecordKind::PAGES, 3),
        Ev::Round(RoundRepr {
            round: 1,
            pages: pages[1],
            bytes: round1_bytes,
        }),
    ]);
    let Some(Ev::StreamEnd(end)) = decode(bytes, &[usize::MAX]).unwrap().last().cloned() else {
        panic!("no END");
    };
    assert_eq!((end.record_count, end.byte_count), (5, end_at));
    ev.push(Ev::StreamEnd(end));
    ev
}

#[test]
fn golden_channels_decode_stripe_and_apply_as_the_spec_says() {
    let files: Vec<Vec<u8>> = (0..CHANNELS as u16)
        .map(|c| golden_file(&format!("channels-{c}"), &channel_stream(c)))
        .collect();
    // Deterministic: generating again gives the same bytes.
    for (c, f) in files.iter().enumerate() {
        assert!(
            &channel_stream(c as u16) == f,
            "channel {c} not deterministic"
        );
    }
    // A.6: byte-identical headers (same device, guest view and stream id), format 1.1.
    assert_eq!(files[0][..80], files[1][..80]);
    assert_eq!(StreamHeaderRepr::parse(&files[0]).unwrap().minor, 1);
    let mut per_channel = Vec::new();
    for (c, f) in files.iter().enumerate() {
        let events = decode(f, &[usize::MAX]).unwrap();
        assert_eq!(
            decode(f, &[1]).unwrap(),
            events,
            "channel {c}, byte by byte"
        );
        assert_eq!(decode(f, &[5, 4100, 3]).unwrap(), events);
        assert_eq!(events, channel_events(c as u16, f), "channel {c}");
        // The CHANNEL record is the first record and names this channel of 2.
        let Ev::Payload(RecordKind::CHANNEL, 0, intro) = &events[2] else {
            panic!("channel {c}: CHANNEL is not the first record");
        };
        assert_eq!(intro, &[c as u8, 0, 2, 0, 0, 0, 0, 0]);
        // Every page, DUP sources included, is in a stripe of this channel.
        for ev in &events {
            let frames: Vec<u64> = match ev {
                Ev::Page(f, ..) | Ev::Xor(f, ..) => vec![*f],
                Ev::Copy(f, from, _) => vec![*f, *from],
                Ev::Zero(f, n) => (*f..*f + u64::from(*n)).collect(),
                _ => vec![],
            };
            for f in frames {
                assert_eq!(
                    channel_of(&CHANNEL_MAP, f, CHANNELS),
                    Some(c as u64),
                    "{f:#x}"
                );
            }
        }
        per_channel.push(events);
    }
    // The dense index, not the frame number, decides: frame 0x1000 (dense index 192) is channel
    // 1's although 0x1000 / 128 is even.
    assert_eq!(dense_index(&CHANNEL_MAP, 0x1000), Some(192));
    assert_eq!(channel_of(&CHANNEL_MAP, 0x1000, CHANNELS), Some(1));
    // Applied in any interleaving of the channels, the pages give the same memory.
    let mut want = Memory::default();
    let mut a = page_a();
    a[100..104]
        .iter_mut()
        .zip([1, 2, 3, 4])
        .for_each(|(p, d)| *p ^= d);
    a[3104] ^= 0xF0;
    a[3105] ^= 0x0F;
    want.pages.insert(0x10, a);
    want.pages.insert(0x11, page_a());
    want.pages.insert(0x1040, [0; PAGE_SIZE]);
    want.pages.insert(0x1041, [0; PAGE_SIZE]);
    want.pages.insert(0x10BF, page_b());
    let mut c = page_c();
    c[4092..].iter_mut().for_each(|p| *p ^= 0xFF);
    want.pages.insert(0x1000, c);
    want.pages.insert(0x10C0, page_c());
    for f in 0x80..0xC0 {
        want.pages.insert(f, [0; PAGE_SIZE]);
    }
    for order in [[0usize, 1], [1, 0]] {
        let mut mem = Memory::default();
        for c in order {
            for ev in &per_channel[c] {
                apply(&mut mem, &CHANNEL_MAP, Some((c as u64, CHANNELS)), ev).unwrap();
            }
        }
        assert_eq!(mem, want, "channel order {order:?}");
    }
    // Alternating event by event.
    let mut mem = Memory::default();
    let longest = per_channel.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for (c, events) in per_channel.iter().enumerate() {
            if let Some(ev) = events.get(i) {
                apply(&mut mem, &CHANNEL_MAP, Some((c as u64, CHANNELS)), ev).unwrap();
            }
        }
    }
    assert_eq!(mem, want);
    // The same pages on the other channel break the striping rule.
    let ev = &per_channel[1][5];
    assert_eq!(
        apply(
            &mut Memory::default(),
            &CHANNEL_MAP,
            Some((0, CHANNELS)),
            ev
        ),
        Err(String::from("WrongChannel 0x1000"))
    );
}
