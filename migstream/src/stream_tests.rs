//! Whole-stream tests: golden vector, encoder chunking, decoder segmentation, error cases.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::header::tests::REPR as HEADER;
use crate::*;

#[cfg(feature = "auth")]
mod auth;
mod vectors;

const UNKNOWN: RecordKind = RecordKind(0x0123);
const RUNS: [PageRunRepr; 2] = [
    PageRunRepr {
        first_frame: 0x10,
        count: 1,
        encoding: PageEncoding::FULL,
    },
    PageRunRepr {
        first_frame: 0x20,
        count: 2,
        encoding: PageEncoding::ZERO,
    },
];
const ROUND0: RoundRepr = RoundRepr {
    round: 0,
    pages: 3,
    bytes: 4096,
};

fn page_fill(frame: u64, _off: usize, out: &mut [u8]) {
    out.fill(0xA5 ^ frame as u8);
}

type WriteFn<'a> = dyn FnMut(&mut Encoder, &mut [u8]) -> Result<Progress, EncodeError> + 'a;

/// Encode the skeleton stream with output slices of `chunk` bytes.
fn skeleton(chunk: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut buf = vec![0u8; chunk];
    let mut enc = Encoder::new();
    let mut run = |f: &mut WriteFn<'_>| loop {
        let p = f(&mut enc, &mut buf).unwrap();
        stream.extend_from_slice(&buf[..p.written()]);
        if p.is_done() {
            break;
        }
        assert_eq!(p.written(), chunk, "Partial only when out is full");
    };
    let pages = PagesPayload::new(&RUNS, page_fill).unwrap();
    run(&mut |e, o| e.write_header(&HEADER, o));
    run(&mut |e, o| {
        e.write_record(
            RecordKind::CONFIG_SPACE,
            RecordFlags::MANDATORY,
            1,
            &b"cfg!"[..],
            o,
        )
    });
    run(&mut |e, o| e.write_record(UNKNOWN, RecordFlags::NONE, 1, &[1u8, 2, 3], o));
    run(&mut |e, o| e.write_round(&ROUND0, o));
    run(&mut |e, o| {
        e.write_record(
            RecordKind::PAGES,
            RecordFlags::MANDATORY,
            CONTROL_VERSION,
            &pages,
            o,
        )
    });
    run(&mut |e, o| e.write_end(o));
    stream
}

/// Events with owned data; consecutive payload / page chunks merged, so any segmentation of
/// the same stream gives the same list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Header(StreamHeaderRepr),
    Begin(RecordKind, u8, u32, u32),
    Payload(RecordKind, u32, Vec<u8>),
    Page(u64, u16, Vec<u8>),
    Zero(u64, u32),
    Copy(u64, u64, u64),
    Xor(u64, u16, Vec<u8>),
    End(RecordKind, u32),
    Skipped(RecordKind, u32),
    Round(RoundRepr),
    StreamEnd(EndRepr),
    Authenticated(u32),
}

fn push(events: &mut Vec<Ev>, ev: Event<'_>) {
    match (events.last_mut(), ev) {
        (Some(Ev::Payload(k, off, d)), Event::Payload { kind, offset, data })
            if *k == kind && *off as usize + d.len() == offset as usize =>
        {
            d.extend_from_slice(data);
        }
        (
            Some(Ev::Page(f, off, d)),
            Event::PageData {
                frame,
                offset,
                data,
            },
        ) if *f == frame && *off as usize + d.len() == usize::from(offset) => {
            d.extend_from_slice(data);
        }
        (
            Some(Ev::Xor(f, off, d)),
            Event::PageXor {
                frame,
                offset,
                data,
            },
        ) if *f == frame && *off as usize + d.len() == usize::from(offset) => {
            d.extend_from_slice(data);
        }
        (_, ev) => events.push(match ev {
            Event::Header(h) => Ev::Header(h),
            Event::RecordBegin {
                kind,
                version,
                len,
                index,
            } => Ev::Begin(kind, version, len, index),
            Event::Payload { kind, offset, data } => Ev::Payload(kind, offset, data.to_vec()),
            Event::PageData {
                frame,
                offset,
                data,
            } => Ev::Page(frame, offset, data.to_vec()),
            Event::ZeroPages { first_frame, count } => Ev::Zero(first_frame, count),
            Event::PageCopy {
                frame,
                from_frame,
                hash,
            } => Ev::Copy(frame, from_frame, hash),
            Event::PageXor {
                frame,
                offset,
                data,
            } => Ev::Xor(frame, offset, data.to_vec()),
            Event::RecordEnd { kind, index } => Ev::End(kind, index),
            Event::Skipped { kind, len } => Ev::Skipped(kind, len),
            Event::Round(r) => Ev::Round(r),
            Event::End(e) => Ev::StreamEnd(e),
            Event::Authenticated { index } => Ev::Authenticated(index),
        }),
    }
}

/// Decode `bytes` cut at the given segment lengths (cycled), then `finish()`.
fn decode_with(dec: &mut Decoder, bytes: &[u8], segs: &[usize]) -> Result<Vec<Ev>, DecodeError> {
    let mut events = Vec::new();
    let mut off = 0;
    let mut i = 0;
    loop {
        let seg = segs[i % segs.len()].max(1);
        i += 1;
        let end = (off + seg).min(bytes.len());
        let mut rest = &bytes[off..end];
        loop {
            let (used, ev) = dec.feed(rest)?;
            assert!(used > 0 || ev.is_some() || rest.is_empty());
            rest = &rest[used..];
            match ev {
                Some(ev) => push(&mut events, ev),
                None if used == 0 => break,
                None => {}
            }
        }
        off = end;
        if off == bytes.len() {
            break;
        }
    }
    dec.finish()?;
    Ok(events)
}

fn decode(bytes: &[u8], segs: &[usize]) -> Result<Vec<Ev>, DecodeError> {
    decode_with(&mut Decoder::new(Limits::DEFAULT), bytes, segs)
}

fn err(bytes: &[u8]) -> DecodeError {
    decode(bytes, &[usize::MAX]).unwrap_err()
}

fn skeleton_events() -> Vec<Ev> {
    let page = vec![0xA5 ^ 0x10; 4096];
    let body_len = skeleton(usize::MAX >> 40).len() as u64;
    vec![
        Ev::Header(HEADER),
        Ev::Begin(RecordKind::CONFIG_SPACE, 1, 4, 0),
        Ev::Payload(RecordKind::CONFIG_SPACE, 0, b"cfg!".to_vec()),
        Ev::End(RecordKind::CONFIG_SPACE, 0),
        Ev::Skipped(UNKNOWN, 3),
        Ev::Round(ROUND0),
        Ev::Begin(RecordKind::PAGES, 1, 16 + 4096 + 16, 3),
        Ev::Page(0x10, 0, page),
        Ev::Zero(0x20, 2),
        Ev::End(RecordKind::PAGES, 3),
        Ev::StreamEnd(EndRepr {
            record_count: 4,
            stream_crc: SKELETON_STREAM_CRC,
            byte_count: body_len - 32,
        }),
    ]
}

/// Stream CRC of the skeleton (header + 4 record headers), pinned.
const SKELETON_STREAM_CRC: u32 = 0xD5C6_FA89;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

/// `hexdump -C`-style dump, repeated lines collapsed to `*`.
fn hexdump(bytes: &[u8]) -> String {
    let mut s = String::new();
    let mut prev: Option<&[u8]> = None;
    let mut starred = false;
    for (i, line) in bytes.chunks(16).enumerate() {
        if prev == Some(line) && line.len() == 16 {
            if !starred {
                s.push_str("*\n");
                starred = true;
            }
            continue;
        }
        starred = false;
        prev = Some(line);
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let (a, b) = hex.split_at(hex.len().min(8));
        let ascii: String = line
            .iter()
            .map(|&c| {
                if (0x20..0x7f).contains(&c) {
                    c as char
                } else {
                    '.'
                }
            })
            .collect();
        s.push_str(&format!(
            "{:08x}  {:<23}  {:<23}  |{}|\n",
            i * 16,
            a.join(" "),
            b.join(" "),
            ascii
        ));
    }
    s.push_str(&format!("{:08x}\n", bytes.len()));
    s
}

#[test]
fn golden_skeleton() {
    let bytes = skeleton(usize::MAX >> 40);
    let bin = format!("{VECTORS}/skeleton.bin");
    let hex = format!("{VECTORS}/skeleton.hex");
    if std::env::var_os("MIGSTREAM_BLESS").is_some() {
        std::fs::write(&bin, &bytes).unwrap();
        std::fs::write(&hex, hexdump(&bytes)).unwrap();
    }
    let golden = std::fs::read(&bin).unwrap();
    assert_eq!(bytes, golden, "encoder no longer reproduces skeleton.bin");
    assert_eq!(std::fs::read_to_string(&hex).unwrap(), hexdump(&golden));
    assert_eq!(
        golden.len(),
        80 + (16 + 4) + (16 + 3) + (16 + 24) + (16 + 4128) + (16 + 16)
    );
    // The END record's stream CRC, recomputed independently of the encoder.
    let mut c = Crc32::new();
    // The header without its own CRC (SPEC §6.3), then every record header before END.
    c.update(&golden[..76]);
    for at in [80, 100, 119, 159] {
        c.update(&golden[at..at + 16]);
    }
    assert_eq!(c.value(), SKELETON_STREAM_CRC);
    assert_eq!(decode(&golden, &[usize::MAX]).unwrap(), skeleton_events());
    assert_eq!(decode(&golden, &[1]).unwrap(), skeleton_events());
}

#[test]
fn encoder_chunk_sizes_identical() {
    let whole = skeleton(usize::MAX >> 40);
    for chunk in [1, 7, 16, 100, 4096 + 16, 4096 + 32, 1 << 20] {
        assert_eq!(skeleton(chunk), whole, "chunk {chunk}");
    }
}

/// A PAGES record of many runs (FULL and ZERO, isolated and consecutive pages) is the same
/// bytes whether the encoder writes it in one piece (the page-run walk of `fill_crc`, with a
/// page source that reads then checksums and with one that copies and checksums in one pass),
/// in small pieces (`fill` per piece) or from the payload as a plain byte slice.
#[test]
fn many_run_payload_encodes_alike_every_way() {
    let mut runs = Vec::new();
    let mut frame = 3u64;
    for i in 0..70u32 {
        let encoding = if i % 5 == 3 || i % 7 == 6 {
            PageEncoding::ZERO
        } else {
            PageEncoding::FULL
        };
        runs.push(PageRunRepr {
            first_frame: frame,
            count: 1 + i % 3,
            encoding,
        });
        frame += u64::from(1 + i % 3) + u64::from(i % 4);
    }
    let pages = PagesPayload::new(&runs, page_fill).unwrap();
    let mut flat = vec![0u8; pages.payload_len()];
    pages.fill(0, &mut flat);
    let encode = |payload: &mut WriteFn<'_>, chunk: usize| {
        let mut enc = Encoder::new();
        let mut out = vec![0u8; 80];
        assert!(enc.write_header(&HEADER, &mut out).unwrap().is_done());
        let mut stream = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let p = payload(&mut enc, &mut buf).unwrap();
            stream.extend_from_slice(&buf[..p.written()]);
            if p.is_done() {
                return stream;
            }
        }
    };
    let mut from_runs = |e: &mut Encoder, o: &mut [u8]| {
        e.write_record(RecordKind::PAGES, RecordFlags::MANDATORY, 1, &pages, o)
    };
    let mut from_flat = |e: &mut Encoder, o: &mut [u8]| {
        e.write_record(RecordKind::PAGES, RecordFlags::MANDATORY, 1, &flat[..], o)
    };
    // The same frames in one slice (frame f at f * 4096).
    let mut memory = vec![0u8; frame as usize * PAGE_SIZE];
    for (f, page) in memory.chunks_exact_mut(PAGE_SIZE).enumerate() {
        page_fill(f as u64, 0, page);
    }
    let sliced = PagesPayload::new(&runs, SlicePages::new(&memory, 0)).unwrap();
    let mut from_slice = |e: &mut Encoder, o: &mut [u8]| {
        e.write_record(RecordKind::PAGES, RecordFlags::MANDATORY, 1, &sliced, o)
    };
    let whole = encode(&mut from_runs, 1 << 20);
    assert_eq!(whole.len(), 16 + flat.len());
    assert_eq!(&whole[16..], &flat[..]);
    assert_eq!(encode(&mut from_flat, 1 << 20), whole);
    assert_eq!(encode(&mut from_slice, 1 << 20), whole);
    assert_eq!(encode(&mut from_slice, 4097), whole);
    for chunk in [1, 97, 4096, 4112] {
        assert_eq!(encode(&mut from_runs, chunk), whole, "chunk {chunk}");
    }
}

#[test]
fn state_sizes() {
    // With the `auth` feature both also hold the MAC state (the BLAKE3 hasher, ~2 KiB).
    #[cfg(not(feature = "auth"))]
    let mac = 0;
    #[cfg(feature = "auth")]
    let mac = core::mem::size_of::<crate::auth::MacState>();
    assert!(mac <= 2048);
    assert!(core::mem::size_of::<Decoder>() <= 256 + mac);
    assert!(core::mem::size_of::<Encoder>() <= 64 + mac);
    assert!(core::mem::size_of::<DecodeError>() <= 48);
}

/// A raw record with a correct CRC.
fn record(kind: RecordKind, flags: u8, version: u8, index: u32, payload: &[u8]) -> Vec<u8> {
    let mut r = RecordHeaderRepr {
        kind,
        flags: RecordFlags(flags),
        version,
        payload_len: payload.len() as u32,
        index,
        crc: 0,
    };
    r.crc = r.compute_crc(payload);
    let mut h = [0; 16];
    r.emit(&mut h);
    let mut v = h.to_vec();
    v.extend_from_slice(payload);
    v
}

fn header_bytes() -> Vec<u8> {
    let mut h = [0; 80];
    HEADER.emit(&mut h);
    h.to_vec()
}

fn stream_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = header_bytes();
    for r in records {
        s.extend_from_slice(r);
    }
    s
}

fn run(first_frame: u64, count: u32, encoding: u8) -> Vec<u8> {
    let mut h = [0; 16];
    PageRunRepr {
        first_frame,
        count,
        encoding: PageEncoding(encoding),
    }
    .emit(&mut h);
    h.to_vec()
}

#[test]
fn truncated_stream() {
    let golden = skeleton(usize::MAX >> 40);
    for n in [0, 1, 79, 80, 95, 100, 200, 1000, golden.len() - 1] {
        let e = err(&golden[..n]);
        assert_eq!(e.kind(), ErrorKind::Truncated, "cut at {n}");
        assert_eq!(e.offset(), n as u64);
        assert_eq!(e.fault(), Fault::Stream);
    }
    let e = err(&golden[..90]);
    assert_eq!(e.record(), None);
    let e = err(&golden[..200]);
    assert_eq!(e.record(), Some((3, RecordKind::PAGES)));
}

#[test]
fn bad_header_crc() {
    let mut s = skeleton(usize::MAX >> 40);
    s[40] ^= 0x01;
    let computed = crc32(&s[..76]);
    let stored = u32::from_le_bytes(s[76..80].try_into().unwrap());
    assert_eq!(
        err(&s),
        DecodeError::new(ErrorKind::BadHeaderCrc { stored, computed }, 0, None)
    );
}

#[test]
fn bad_record_crc() {
    let mut s = skeleton(usize::MAX >> 40);
    s[96] = b'C'; // "cfg!" -> "Cfg!"
    let stored = u32::from_le_bytes(s[92..96].try_into().unwrap());
    let mut c = Crc32::new();
    c.update(&s[80..92]);
    c.update(b"Cfg!");
    let e = err(&s);
    assert_eq!(
        e,
        DecodeError::new(
            ErrorKind::BadRecordCrc {
                stored,
                computed: c.value()
            },
            80,
            Some((0, RecordKind::CONFIG_SPACE))
        )
    );
    assert_eq!(e.fault(), Fault::Stream);
    // The payload was reported (provisionally) before the CRC failed.
    let mut dec = Decoder::new(Limits::DEFAULT);
    let mut events = Vec::new();
    let mut rest = &s[..];
    let failure = loop {
        match dec.feed(rest) {
            Ok((used, Some(ev))) => {
                rest = &rest[used..];
                push(&mut events, ev);
            }
            Ok((used, None)) => rest = &rest[used..],
            Err(e) => break e,
        }
    };
    assert_eq!(failure, e);
    assert_eq!(
        events.last(),
        Some(&Ev::Payload(RecordKind::CONFIG_SPACE, 0, b"Cfg!".to_vec()))
    );
    // Sticky.
    assert_eq!(dec.feed(&[]), Err(e));
    assert_eq!(dec.finish(), Err(e));
}

#[test]
fn wrong_index() {
    let s = stream_of(&[
        record(RecordKind::REGISTERS, 1, 1, 0, b"a"),
        record(RecordKind::REGISTERS, 1, 1, 0, b"a"),
    ]);
    assert_eq!(
        err(&s),
        DecodeError::new(
            ErrorKind::BadIndex {
                expected: 1,
                got: 0
            },
            80 + 17,
            Some((1, RecordKind::REGISTERS))
        )
    );
    let s = stream_of(&[record(RecordKind::REGISTERS, 1, 1, 2, b"a")]);
    assert_eq!(
        err(&s).kind(),
        ErrorKind::BadIndex {
            expected: 0,
            got: 2
        }
    );
}

#[test]
fn huge_length() {
    let mut s = header_bytes();
    s.extend_from_slice(&[
        0x02, 0x00, 0x01, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    let e = err(&s);
    assert_eq!(
        e.kind(),
        ErrorKind::LengthTooLarge {
            len: u32::MAX,
            max: MAX_PAYLOAD
        }
    );
    assert_eq!(e.fault(), Fault::Stream);
    // Within the format limit, above a local limit: local fault.
    let s = stream_of(&[record(RecordKind::REGISTERS, 1, 1, 0, &[0; 100])]);
    let e = decode_with(&mut Decoder::new(Limits::with_max_payload(64)), &s, &[7]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LengthTooLarge { len: 100, max: 64 });
    assert_eq!(e.fault(), Fault::Local);
    assert_eq!(e.offset(), 80);
}

#[test]
fn trailing_garbage() {
    let mut s = skeleton(usize::MAX >> 40);
    let n = s.len() as u64;
    s.push(0);
    assert_eq!(err(&s), DecodeError::new(ErrorKind::TrailingData, n, None));
    assert_eq!(
        decode(&s, &[1]).unwrap_err().kind(),
        ErrorKind::TrailingData
    );
}

#[test]
fn unknown_kinds() {
    let kind = RecordKind(0x4242);
    let s = stream_of(&[record(kind, 1, 1, 0, b"xyz")]);
    assert_eq!(
        err(&s),
        DecodeError::new(ErrorKind::UnknownMandatory { kind }, 80, Some((0, kind)))
    );
    assert_eq!(err(&s).fault(), Fault::Unsupported);
    // Optional: skipped after its CRC is checked; a bad CRC is still an error.
    let mut r = record(kind, 0, 9, 0, b"xyz");
    let events = decode(&stream_of(&[r.clone()]), &[1]).unwrap_err();
    assert_eq!(events.kind(), ErrorKind::Truncated);
    r[17] ^= 1;
    assert!(matches!(
        err(&stream_of(&[r])).kind(),
        ErrorKind::BadRecordCrc { .. }
    ));
}

#[test]
fn bad_flags_and_versions() {
    let s = stream_of(&[record(RecordKind::REGISTERS, 0x03, 1, 0, b"")]);
    assert_eq!(err(&s).kind(), ErrorKind::BadFlags { flags: 0x03 });
    let s = stream_of(&[record(RecordKind::PAGES, 1, 2, 0, b"")]);
    assert_eq!(
        err(&s).kind(),
        ErrorKind::UnsupportedRecordVersion {
            kind: RecordKind::PAGES,
            version: 2
        }
    );
    let s = stream_of(&[record(RecordKind::ROUND, 1, 1, 0, &[0; 23])]);
    assert_eq!(
        err(&s).kind(),
        ErrorKind::BadRoundOrEnd {
            expected: 24,
            len: 23
        }
    );
    let mut round = [0u8; 24];
    round[4] = 1;
    let s = stream_of(&[record(RecordKind::ROUND, 1, 1, 0, &round)]);
    assert_eq!(err(&s).kind(), ErrorKind::ReservedNotZero);
}

fn pages_err(payload: &[u8]) -> DecodeError {
    err(&stream_of(&[record(RecordKind::PAGES, 1, 1, 0, payload)]))
}

#[test]
fn bad_page_runs() {
    // Claims 2 pages, carries 1.
    let mut p = run(5, 2, 0);
    p.extend_from_slice(&[0; 4096]);
    let e = pages_err(&p);
    assert_eq!(
        e,
        DecodeError::new(
            ErrorKind::MalformedPageRun(PageRunError::Overrun),
            96,
            Some((0, RecordKind::PAGES))
        )
    );
    // Second run header cut short by the record end.
    let mut p = run(5, 1, 1);
    p.extend_from_slice(&[0; 8]);
    assert_eq!(
        pages_err(&p),
        DecodeError::new(
            ErrorKind::MalformedPageRun(PageRunError::ShortHeader),
            112,
            Some((0, RecordKind::PAGES))
        )
    );
    assert_eq!(
        pages_err(&run(5, 0, 1)).kind(),
        ErrorKind::MalformedPageRun(PageRunError::ZeroCount)
    );
    assert_eq!(
        pages_err(&run(u64::MAX, 1, 1)).kind(),
        ErrorKind::MalformedPageRun(PageRunError::FrameOverflow)
    );
    assert_eq!(
        pages_err(&run(1, 1, 7)).kind(),
        ErrorKind::MalformedPageRun(PageRunError::UnknownEncoding { encoding: 7 })
    );
    // An empty PAGES record is fine.
    let s = stream_of(&[record(RecordKind::PAGES, 1, 1, 0, b"")]);
    assert_eq!(decode(&s, &[3]).unwrap_err().kind(), ErrorKind::Truncated);
}

fn end_payload(record_count: u32, stream_crc: u32, byte_count: u64) -> Vec<u8> {
    let mut p = [0; 16];
    EndRepr {
        record_count,
        stream_crc,
        byte_count,
    }
    .emit(&mut p);
    p.to_vec()
}

#[test]
fn end_mismatches() {
    let rec = record(RecordKind::REGISTERS, 1, 1, 0, b"ab");
    let mut c = Crc32::new();
    c.update(&header_bytes()[..76]);
    c.update(&rec[..16]);
    let crc = c.value();
    let bytes = 80 + 18;
    let ok = stream_of(&[
        rec.clone(),
        record(RecordKind::END, 1, 1, 1, &end_payload(1, crc, bytes)),
    ]);
    let events = decode(&ok, &[5]).unwrap();
    assert_eq!(
        events.last(),
        Some(&Ev::StreamEnd(EndRepr {
            record_count: 1,
            stream_crc: crc,
            byte_count: bytes
        }))
    );
    let cases = [
        (
            end_payload(2, crc, bytes),
            EndMismatch::RecordCount { stream: 2, seen: 1 },
        ),
        (
            end_payload(1, crc, 99),
            EndMismatch::ByteCount {
                stream: 99,
                seen: bytes,
            },
        ),
        (
            end_payload(1, crc ^ 1, bytes),
            EndMismatch::StreamCrc {
                stream: crc ^ 1,
                computed: crc,
            },
        ),
    ];
    for (payload, mismatch) in cases {
        let s = stream_of(&[rec.clone(), record(RecordKind::END, 1, 1, 1, &payload)]);
        assert_eq!(
            err(&s),
            DecodeError::new(
                ErrorKind::EndMismatch(mismatch),
                bytes,
                Some((1, RecordKind::END))
            )
        );
    }
}

#[test]
fn encoder_misuse() {
    let mut enc = Encoder::new();
    let mut out = [0u8; 64];
    assert_eq!(
        enc.write_record(
            RecordKind::REGISTERS,
            RecordFlags::NONE,
            1,
            &b""[..],
            &mut out
        ),
        Err(EncodeError::HeaderNotWritten)
    );
    assert_eq!(
        enc.write_header(&HEADER, &mut out[..50]),
        Ok(Progress::Partial(50))
    );
    assert_eq!(enc.write_header(&HEADER, &mut out), Ok(Progress::Done(30)));
    assert_eq!(
        enc.write_header(&HEADER, &mut out),
        Err(EncodeError::HeaderAlreadyWritten)
    );
    assert_eq!(
        enc.write_record(RecordKind::REGISTERS, RecordFlags(2), 1, &b""[..], &mut out),
        Err(EncodeError::BadFlags { flags: 2 })
    );
    let big = vec![0u8; MAX_PAYLOAD as usize + 1];
    assert_eq!(
        enc.write_record(
            RecordKind::REGISTERS,
            RecordFlags::NONE,
            1,
            &big[..],
            &mut out
        ),
        Err(EncodeError::PayloadTooLarge {
            len: MAX_PAYLOAD as usize + 1
        })
    );
    let data = [7u8; 100];
    assert_eq!(
        enc.write_record(RecordKind::REGISTERS, RecordFlags::NONE, 1, &data, &mut out),
        Ok(Progress::Partial(64))
    );
    assert_eq!(
        enc.write_record(RecordKind::GGTT_RUNS, RecordFlags::NONE, 1, &data, &mut out),
        Err(EncodeError::RecordMismatch)
    );
    assert_eq!(enc.write_end(&mut out), Err(EncodeError::RecordMismatch));
    assert_eq!(
        enc.write_record(RecordKind::REGISTERS, RecordFlags::NONE, 1, &data, &mut out),
        Ok(Progress::Done(52))
    );
    assert_eq!(enc.records_written(), 1);
    assert_eq!(enc.bytes_written(), 80 + 116);
    assert_eq!(enc.write_end(&mut out), Ok(Progress::Done(32)));
    assert!(enc.is_finished());
    assert_eq!(enc.write_end(&mut out), Err(EncodeError::Finished));
    assert_eq!(
        enc.write_record(RecordKind::REGISTERS, RecordFlags::NONE, 1, &data, &mut []),
        Err(EncodeError::Finished)
    );
}

#[test]
fn display_reads_well() {
    let e = DecodeError::new(
        ErrorKind::BadIndex {
            expected: 4,
            got: 6,
        },
        1234,
        Some((4, RecordKind::PAGES)),
    );
    assert_eq!(
        format!("{e}"),
        "migration stream: record index 6, expected 4 at byte 1234 (record #4, PAGES) [stream fault]"
    );
    let e = DecodeError::new(
        ErrorKind::UnknownMandatory {
            kind: RecordKind(0x77),
        },
        9,
        None,
    );
    assert_eq!(
        format!("{e}"),
        "migration stream: unknown mandatory record kind kind 0x0077 at byte 9 [unsupported by this reader]"
    );
}

#[test]
fn fuzz_bodies_on_golden() {
    let golden = skeleton(usize::MAX >> 40);
    for step in [0u8, 6, 255] {
        let mut d = vec![step];
        d.extend_from_slice(&golden);
        fuzzing::decode_arbitrary(&d);
    }
    fuzzing::roundtrip(&[]);
    fuzzing::roundtrip(&[0, 0, 1, 3, b'a', b'b', b'c']);
    fuzzing::roundtrip(&[
        99, 2, 0x85, 3, 1, 7, 2, 6, 0x81, 9, 0x02, 200, 3, 44, 5, 1, 2, 3,
    ]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn any_segmentation_same_events(segs in proptest::collection::vec(1usize..5000, 1..20)) {
        let golden = skeleton(usize::MAX >> 40);
        proptest::prop_assert_eq!(decode(&golden, &segs).unwrap(), skeleton_events());
    }

    #[test]
    fn any_chunking_same_bytes(chunk in 1usize..9000) {
        proptest::prop_assert_eq!(skeleton(chunk), skeleton(usize::MAX >> 40));
    }

    #[test]
    fn roundtrip_any(data in proptest::collection::vec(0u8.., 0..400)) {
        fuzzing::roundtrip(&data);
    }

    #[test]
    fn decode_arbitrary_any(data in proptest::collection::vec(0u8.., 0..300)) {
        fuzzing::decode_arbitrary(&data);
    }

    #[test]
    fn decode_mutated_golden(pos in 0usize..4400, val: u8, step: u8, cut in 0usize..4400) {
        let mut d = vec![step];
        d.extend_from_slice(&skeleton(usize::MAX >> 40));
        let n = d.len();
        d[1 + pos % (n - 1)] = val;
        d.truncate(1 + cut.min(n - 1));
        fuzzing::decode_arbitrary(&d);
    }
}

/// A PAGES payload with all four encodings: FULL frame 5, ZERO frames 6-7, DUP frame 8 from 5
/// (with the real xxh3-64 of page 5), DELTA frames 9 (two segments) and 10 (empty), both never
/// sent before, so their base is a zero page (SPEC.md §6.1).
fn encodings_payload() -> Vec<u8> {
    let page5 = vectors::encodings_page5();
    let mut p = run(5, 1, 0);
    p.extend_from_slice(&page5);
    p.extend(run(6, 2, 1));
    p.extend(run(8, 1, 2));
    p.extend(5u64.to_le_bytes());
    p.extend(xxhash_rust::xxh3::xxh3_64(&page5).to_le_bytes());
    p.extend(run(9, 2, 3));
    // Frame 9: skip 16, XOR 2 bytes; skip 4000, XOR 1 byte (ends at 4019).
    p.extend(11u16.to_le_bytes());
    p.extend([16, 0, 2, 0, 0xAB, 0xCD, 0xA0, 0x0F, 1, 0, 0xEF]);
    // Frame 10: empty delta.
    p.extend(0u16.to_le_bytes());
    p
}

/// The encodings stream: header, one PAGES record, END.
fn encodings_stream() -> Vec<u8> {
    let payload = encodings_payload();
    let mut enc = Encoder::new();
    let mut out = vec![0u8; 1 << 16];
    let mut n = enc.write_header(&HEADER, &mut out).unwrap().written();
    n += enc
        .write_record(
            RecordKind::PAGES,
            RecordFlags::MANDATORY,
            1,
            &payload[..],
            &mut out[n..],
        )
        .unwrap()
        .written();
    n += enc.write_end(&mut out[n..]).unwrap().written();
    out.truncate(n);
    out
}

#[test]
fn dup_and_delta_runs_decode_to_exact_events() {
    let s = encodings_stream();
    let want_tail = [
        Ev::Copy(8, 5, vectors::ENCODINGS_DUP_HASH),
        Ev::Xor(9, 16, vec![0xAB, 0xCD]),
        Ev::Xor(9, 4018, vec![0xEF]),
    ];
    for segs in [&[usize::MAX][..], &[1][..], &[7, 3, 4100][..]] {
        let ev = decode(&s, segs).unwrap();
        let pos = ev.iter().position(|e| matches!(e, Ev::Zero(6, 2))).unwrap();
        assert_eq!(&ev[pos + 1..pos + 4], &want_tail, "segmentation {segs:?}");
        assert!(matches!(ev[pos + 4], Ev::End(RecordKind::PAGES, 0)));
    }
}

#[test]
fn golden_encodings() {
    let bytes = encodings_stream();
    let bin = format!("{VECTORS}/encodings.bin");
    let hex = format!("{VECTORS}/encodings.hex");
    if std::env::var_os("MIGSTREAM_BLESS").is_some() {
        std::fs::write(&bin, &bytes).unwrap();
        std::fs::write(&hex, hexdump(&bytes)).unwrap();
    }
    let golden = std::fs::read(&bin).unwrap();
    assert_eq!(bytes, golden, "encoder no longer reproduces encodings.bin");
    assert_eq!(std::fs::read_to_string(&hex).unwrap(), hexdump(&golden));
    assert_eq!(golden.len(), 80 + 16 + encodings_payload().len() + 16 + 16);
    let ev = decode(&golden, &[1]).unwrap();
    assert!(matches!(ev.last(), Some(Ev::StreamEnd(_))));
}

#[test]
fn malformed_dup_and_delta_runs() {
    let bad = ErrorKind::MalformedPageRun(PageRunError::BadDelta);
    let cases: Vec<(&str, Vec<u8>, ErrorKind)> = vec![
        (
            "dup entry cut",
            [run(8, 2, 2), vec![0; 16]].concat(),
            ErrorKind::MalformedPageRun(PageRunError::Overrun),
        ),
        (
            "delta len over a page",
            [run(9, 1, 3), 4097u16.to_le_bytes().to_vec(), vec![0; 4097]].concat(),
            bad,
        ),
        (
            "delta len over payload",
            [run(9, 1, 3), 10u16.to_le_bytes().to_vec(), vec![0; 4]].concat(),
            bad,
        ),
        (
            "segment with no bytes",
            [run(9, 1, 3), 4u16.to_le_bytes().to_vec(), vec![0, 0, 0, 0]].concat(),
            bad,
        ),
        (
            "segment past the page",
            [
                run(9, 1, 3),
                6u16.to_le_bytes().to_vec(),
                vec![0xFF, 0x0F, 2, 0, 1, 1],
            ]
            .concat(),
            bad,
        ),
        (
            "segment past its page length",
            [
                run(9, 1, 3),
                5u16.to_le_bytes().to_vec(),
                vec![0, 0, 2, 0, 1, 1],
            ]
            .concat(),
            bad,
        ),
        (
            "segment header cut by page length",
            [run(9, 1, 3), 2u16.to_le_bytes().to_vec(), vec![0, 0]].concat(),
            bad,
        ),
    ];
    for (what, payload, kind) in cases {
        assert_eq!(pages_err(&payload).kind(), kind, "{what}");
    }
}

#[test]
fn delta_len_reserves_the_later_length_fields() {
    // Issue 17: the old rule (`len` ≤ bytes left) accepted this stream to its END.
    let s = fuzzing::delta_len_overrun_stream();
    let want = DecodeError::new(
        ErrorKind::MalformedPageRun(PageRunError::BadDelta),
        96,
        Some((0, RecordKind::PAGES)),
    );
    for segs in [&[usize::MAX][..], &[1][..], &[99, 2][..]] {
        assert_eq!(decode(&s, segs), Err(want), "segments {segs:?}");
    }
    assert_eq!(decode_all(&s, 1), Err(want));
    for step in [0u8, 4, 255] {
        fuzzing::decode_arbitrary(&[&[step][..], &s].concat());
    }
    // The same run with the first page one byte shorter (the later length field fits) decodes.
    let ok = [
        run(9, 2, 3),
        5u16.to_le_bytes().to_vec(),
        vec![0, 0, 1, 0, 0xAA],
        0u16.to_le_bytes().to_vec(),
    ]
    .concat();
    let rec = record(RecordKind::PAGES, 1, 1, 0, &ok);
    let mut c = Crc32::new();
    c.update(&header_bytes()[..76]);
    c.update(&rec[..16]);
    let bytes = 80 + rec.len() as u64;
    let good = stream_of(&[
        rec,
        record(RecordKind::END, 1, 1, 1, &end_payload(1, c.value(), bytes)),
    ]);
    let ev = decode(&good, &[1]).unwrap();
    assert!(ev.contains(&Ev::Xor(9, 0, vec![0xAA])));
    assert!(matches!(ev.last(), Some(Ev::StreamEnd(_))));
}

fn decode_all(bytes: &[u8], seg: usize) -> Result<Vec<Ev>, DecodeError> {
    feed_all_with(&mut Decoder::new(Limits::DEFAULT), bytes, seg)
}

/// Decode through `feed_all` in slices of `seg` bytes.
fn feed_all_with(dec: &mut Decoder, bytes: &[u8], seg: usize) -> Result<Vec<Ev>, DecodeError> {
    let mut events = Vec::new();
    for chunk in bytes.chunks(seg.max(1)) {
        let r = dec.feed_all(chunk, |ev| {
            push(&mut events, ev);
            Ok::<(), ()>(())
        });
        match r {
            Ok(n) => assert_eq!(n, chunk.len()),
            Err(FeedError::Decode(e)) => return Err(e),
            Err(FeedError::Sink(())) => unreachable!(),
        }
    }
    dec.finish()?;
    Ok(events)
}

#[test]
fn feed_all_matches_feed_and_still_verifies_every_crc() {
    for s in [skeleton(usize::MAX >> 40), encodings_stream()] {
        let want = decode(&s, &[usize::MAX]).unwrap();
        for seg in [1, 5, 4096, 4113, usize::MAX] {
            assert_eq!(decode_all(&s, seg).unwrap(), want, "segment {seg}");
        }
        // A flipped payload byte of any record is still caught by its record CRC.
        for at in [100, 200, 2000, s.len() - 40] {
            let mut bad = s.clone();
            bad[at] ^= 0x40;
            for seg in [1, 777, usize::MAX] {
                let e = decode_all(&bad, seg).unwrap_err();
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::BadRecordCrc { .. }
                            | ErrorKind::MalformedPageRun(_)
                            | ErrorKind::BadIndex { .. }
                            | ErrorKind::LengthTooLarge { .. }
                            | ErrorKind::EndMismatch(_)
                            | ErrorKind::UnknownMandatory { .. }
                            | ErrorKind::BadFlags { .. }
                            | ErrorKind::Truncated
                    ),
                    "flip at {at}, segment {seg}: {e}"
                );
            }
        }
    }
}

#[test]
fn feed_all_passes_sink_errors_through_and_stays_usable() {
    let s = skeleton(usize::MAX >> 40);
    let mut dec = Decoder::new(Limits::DEFAULT);
    let mut seen = 0;
    let r = dec.feed_all(&s, |_| {
        seen += 1;
        if seen == 2 { Err("full") } else { Ok(()) }
    });
    assert_eq!(r, Err(FeedError::Sink("full")));
    assert_eq!(seen, 2);
}

#[test]
fn authenticated_vector_refused_without_a_key() {
    // auth.bin (SPEC.md §10) to a keyless decoder: a build without the `auth` feature does not
    // implement the AUTHENTICATED capability; a build with it requires a key.
    let golden = std::fs::read(format!("{VECTORS}/auth.bin")).unwrap();
    let e = err(&golden);
    let want = if cfg!(feature = "auth") {
        ErrorKind::Auth(AuthError::KeyRequired)
    } else {
        ErrorKind::UnsupportedCapability {
            flags: AUTHENTICATED,
        }
    };
    assert_eq!((e.kind(), e.offset()), (want, 0));
    // Its MAC record (kind 0x00FE, MANDATORY) is an unknown mandatory kind without the feature.
    let mac_at = golden.len() - 32 - 48;
    let mac = RecordHeaderRepr::parse(&golden[mac_at..]).unwrap();
    assert_eq!(mac.kind, RecordKind::MAC);
    assert_eq!(RecordKind::MAC.is_known(), cfg!(feature = "auth"));
    assert_eq!(RecordKind::MAC.name(), Some("MAC"));
}

/// The header bytes with `f` applied and the header CRC recomputed.
fn header_with(f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut h = header_bytes();
    f(&mut h);
    let c = crc32(&h[..76]);
    h[76..80].copy_from_slice(&c.to_le_bytes());
    h
}

/// A stream of the (valid) header and `records`, then a correct END (indices as given).
fn sealed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = stream_of(records);
    let mut c = Crc32::new();
    c.update(&s[..76]);
    for r in records {
        c.update(&r[..16]);
    }
    let n = records.len() as u32;
    let bytes = s.len() as u64;
    s.extend(record(
        RecordKind::END,
        1,
        1,
        n,
        &end_payload(n, c.value(), bytes),
    ));
    s
}

/// One stream per MUST of SPEC.md §3 to §6 that the stream decoder enforces, with the error and
/// offset the rule names; rows marked "order" break two rules at once and expect the one the
/// spec checks first. Appendix B of SPEC.md points here for these rules.
fn spec_rule_cases() -> Vec<(&'static str, Vec<u8>, ErrorKind, u64)> {
    use ErrorKind as K;
    use PageRunError as P;
    let pages = |payload: &[u8]| sealed(&[record(RecordKind::PAGES, 1, 1, 0, payload)]);
    let run_at = 96;
    let mut bad_crc_run = stream_of(&[record(RecordKind::PAGES, 1, 1, 0, &run(5, 0, 1))]);
    bad_crc_run[92] ^= 0xFF; // the record CRC
    let mut bad_crc = stream_of(&[record(RecordKind::REGISTERS, 1, 1, 0, b"regs")]);
    bad_crc[92] ^= 0xFF;
    let stored = u32::from_le_bytes(bad_crc[92..96].try_into().unwrap());
    let computed = stored ^ 0xFF;
    let valid = sealed(&[record(RecordKind::REGISTERS, 1, 1, 0, b"regs")]);
    let end_at = valid.len() as u64 - 32;
    let with_end = |p: Vec<u8>| {
        [
            stream_of(&[record(RecordKind::REGISTERS, 1, 1, 0, b"regs")]),
            record(RecordKind::END, 1, 1, 1, &p),
        ]
        .concat()
    };
    let real_crc = u32::from_le_bytes(valid[valid.len() - 12..valid.len() - 8].try_into().unwrap());
    let mut reserved_round = [0u8; 24];
    reserved_round[5] = 1;
    vec![
        // §3.2, in order.
        (
            "§3.2.1 truncated header",
            header_bytes()[..40].to_vec(),
            K::Truncated,
            40,
        ),
        ("§3.2.2 magic", header_with(|h| h[0] = b'V'), K::BadMagic, 0),
        (
            "§3.2.3 major",
            header_with(|h| h[8] = 2),
            K::UnsupportedVersion { major: 2, minor: 0 },
            0,
        ),
        (
            "§3.2.4 header_len",
            header_with(|h| h[12] = 81),
            K::BadHeaderLen { len: 81 },
            0,
        ),
        (
            "§3.2.5 header CRC",
            {
                let mut h = header_bytes();
                h[76] ^= 1;
                h
            },
            K::BadHeaderCrc {
                stored: crc32(&header_bytes()[..76]) ^ 1,
                computed: crc32(&header_bytes()[..76]),
            },
            0,
        ),
        (
            "§3.2.6 reserved",
            header_with(|h| h[21] = 1),
            K::ReservedNotZero,
            0,
        ),
        (
            "§3.2.7 required capability",
            header_with(|h| h[15] = 0x02),
            K::UnsupportedCapability { flags: 0x0200 },
            0,
        ),
        (
            "§3.2.8 page size",
            header_with(|h| h[22] = 13),
            K::UnsupportedPageSize { page_shift: 13 },
            0,
        ),
        (
            "§3.2 order: reserved (6) before page size (8)",
            header_with(|h| {
                h[23] = 1;
                h[22] = 13;
            }),
            K::ReservedNotZero,
            0,
        ),
        (
            "§3.2 order: capability (7) before page size (8)",
            header_with(|h| {
                h[15] = 0x80;
                h[22] = 13;
            }),
            K::UnsupportedCapability { flags: 0x8000 },
            0,
        ),
        (
            "§3.2 order: header CRC (5) before reserved (6)",
            {
                let mut h = header_bytes();
                h[21] = 1;
                h
            },
            K::BadHeaderCrc {
                stored: crc32(&header_bytes()[..76]),
                computed: crc32(&header_with(|h| h[21] = 1)[..76]),
            },
            0,
        ),
        // §4, §5 record headers, in order.
        (
            "§5.1 index",
            stream_of(&[record(RecordKind::REGISTERS, 1, 1, 1, b"")]),
            K::BadIndex {
                expected: 0,
                got: 1,
            },
            80,
        ),
        (
            "§4, §5.2 flags bits 1..7",
            stream_of(&[record(RecordKind::REGISTERS, 0x81, 1, 0, b"")]),
            K::BadFlags { flags: 0x81 },
            80,
        ),
        (
            "§5.3 payload length over 16 MiB",
            {
                let mut s = header_bytes();
                let h = RecordHeaderRepr {
                    kind: RecordKind::REGISTERS,
                    flags: RecordFlags::MANDATORY,
                    version: 1,
                    payload_len: MAX_PAYLOAD + 1,
                    index: 0,
                    crc: 0,
                };
                let mut b = [0; 16];
                h.emit(&mut b);
                s.extend_from_slice(&b);
                s
            },
            K::LengthTooLarge {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD,
            },
            80,
        ),
        (
            "§5.4 PAGES version",
            stream_of(&[record(RecordKind::PAGES, 1, 2, 0, b"")]),
            K::UnsupportedRecordVersion {
                kind: RecordKind::PAGES,
                version: 2,
            },
            80,
        ),
        (
            "§5.4 ROUND version",
            stream_of(&[record(RecordKind::ROUND, 1, 0, 0, &[0; 24])]),
            K::UnsupportedRecordVersion {
                kind: RecordKind::ROUND,
                version: 0,
            },
            80,
        ),
        (
            "§5.4 END version",
            stream_of(&[record(RecordKind::END, 1, 2, 0, &end_payload(0, 0, 80))]),
            K::UnsupportedRecordVersion {
                kind: RecordKind::END,
                version: 2,
            },
            80,
        ),
        (
            "§5.5 ROUND length",
            stream_of(&[record(RecordKind::ROUND, 1, 1, 0, &[0; 25])]),
            K::BadRoundOrEnd {
                expected: 24,
                len: 25,
            },
            80,
        ),
        (
            "§5.5 END length",
            stream_of(&[record(RecordKind::END, 1, 1, 0, &[0; 15])]),
            K::BadRoundOrEnd {
                expected: 16,
                len: 15,
            },
            80,
        ),
        (
            "§5.6 unknown mandatory kind",
            stream_of(&[record(RecordKind(0x0300), 1, 1, 0, b"x")]),
            K::UnknownMandatory {
                kind: RecordKind(0x0300),
            },
            80,
        ),
        (
            "§5 order: index (1) before flags (2)",
            stream_of(&[record(RecordKind::REGISTERS, 0x02, 1, 5, b"")]),
            K::BadIndex {
                expected: 0,
                got: 5,
            },
            80,
        ),
        (
            "§5 order: flags (2) before version (4)",
            stream_of(&[record(RecordKind::PAGES, 0x02, 9, 0, b"")]),
            K::BadFlags { flags: 0x02 },
            80,
        ),
        (
            "§5 order: version (4) before length (5)",
            stream_of(&[record(RecordKind::ROUND, 1, 9, 0, &[0; 3])]),
            K::UnsupportedRecordVersion {
                kind: RecordKind::ROUND,
                version: 9,
            },
            80,
        ),
        (
            "§5 order: unknown-kind (6) after flags (2)",
            stream_of(&[record(RecordKind(0x0300), 0x03, 1, 0, b"")]),
            K::BadFlags { flags: 0x03 },
            80,
        ),
        (
            "§5 record CRC",
            bad_crc,
            K::BadRecordCrc { stored, computed },
            80,
        ),
        (
            "§5 PAGES run errors before BadRecordCrc",
            bad_crc_run,
            K::MalformedPageRun(P::ZeroCount),
            run_at,
        ),
        (
            "§5 data after END",
            [valid.clone(), vec![0]].concat(),
            K::TrailingData,
            valid.len() as u64,
        ),
        (
            "§5 input ends before END",
            valid[..valid.len() - 1].to_vec(),
            K::Truncated,
            valid.len() as u64 - 1,
        ),
        // §6.1, every check at the run header's offset.
        (
            "§6.1.1 short run header",
            pages(&[0; 15]),
            K::MalformedPageRun(P::ShortHeader),
            run_at,
        ),
        (
            "§6.1.2 run reserved",
            pages(&{
                let mut r = run(5, 1, 1);
                r[14] = 1;
                r
            }),
            K::MalformedPageRun(P::ReservedNotZero),
            run_at,
        ),
        (
            "§6.1.3 encoding",
            pages(&run(5, 1, 4)),
            K::MalformedPageRun(P::UnknownEncoding { encoding: 4 }),
            run_at,
        ),
        (
            "§6.1.4 count 0",
            pages(&run(5, 0, 1)),
            K::MalformedPageRun(P::ZeroCount),
            run_at,
        ),
        (
            "§6.1.5 frame overflow",
            pages(&run(u64::MAX - 1, 2, 1)),
            K::MalformedPageRun(P::FrameOverflow),
            run_at,
        ),
        (
            "§6.1.6 FULL overrun",
            pages(&[run(5, 1, 0), vec![0; 4095]].concat()),
            K::MalformedPageRun(P::Overrun),
            run_at,
        ),
        (
            "§6.1.6 DUP overrun",
            pages(&[run(5, 2, 2), vec![0; 31]].concat()),
            K::MalformedPageRun(P::Overrun),
            run_at,
        ),
        (
            "§6.1.6 DELTA length fields overrun",
            pages(&[run(5, 3, 3), vec![0; 5]].concat()),
            K::MalformedPageRun(P::Overrun),
            run_at,
        ),
        (
            "§6.1.7 DELTA len over 4096",
            pages(&[run(5, 1, 3), 4097u16.to_le_bytes().to_vec(), vec![0; 4097]].concat()),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1.7 DELTA len over the payload left",
            pages(
                &[
                    run(5, 1, 3),
                    9u16.to_le_bytes().to_vec(),
                    vec![0, 0, 4, 0, 1, 2, 3, 4],
                ]
                .concat(),
            ),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1.7 DELTA len leaves no room for the next length field (issue 17)",
            fuzzing::delta_len_overrun_stream().to_vec(),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1.7 segment header past len",
            pages(&[run(5, 1, 3), 3u16.to_le_bytes().to_vec(), vec![0, 0, 1]].concat()),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1.7 segment bytes past len",
            pages(
                &[
                    run(5, 1, 3),
                    6u16.to_le_bytes().to_vec(),
                    vec![0, 0, 3, 0, 1, 2],
                ]
                .concat(),
            ),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1.7 segment n = 0",
            pages(&[run(5, 1, 3), 4u16.to_le_bytes().to_vec(), vec![1, 0, 0, 0]].concat()),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1.7 segment past offset 4096",
            pages(
                &[
                    run(5, 1, 3),
                    6u16.to_le_bytes().to_vec(),
                    vec![0xFF, 0x0F, 2, 0, 1, 2],
                ]
                .concat(),
            ),
            K::MalformedPageRun(P::BadDelta),
            run_at,
        ),
        (
            "§6.1 order: reserved (2) before encoding (3)",
            pages(&{
                let mut r = run(5, 0, 9);
                r[13] = 1;
                r
            }),
            K::MalformedPageRun(P::ReservedNotZero),
            run_at,
        ),
        (
            "§6.1 order: encoding (3) before count (4)",
            pages(&run(5, 0, 9)),
            K::MalformedPageRun(P::UnknownEncoding { encoding: 9 }),
            run_at,
        ),
        (
            "§6.1 error offset: the second run's header",
            pages(&[run(5, 1, 1), run(6, 0, 1)].concat()),
            K::MalformedPageRun(P::ZeroCount),
            run_at + 16,
        ),
        // §6.2, §6.3.
        (
            "§6.2 ROUND reserved",
            stream_of(&[record(RecordKind::ROUND, 1, 1, 0, &reserved_round)]),
            K::ReservedNotZero,
            80,
        ),
        (
            "§6.3 END record_count (checked first)",
            with_end(end_payload(2, real_crc, 0)),
            K::EndMismatch(EndMismatch::RecordCount { stream: 2, seen: 1 }),
            end_at,
        ),
        (
            "§6.3 END byte_count (before stream_crc)",
            with_end(end_payload(1, real_crc ^ 1, 7)),
            K::EndMismatch(EndMismatch::ByteCount {
                stream: 7,
                seen: end_at,
            }),
            end_at,
        ),
        (
            "§6.3 END stream_crc",
            with_end(end_payload(1, real_crc ^ 1, end_at)),
            K::EndMismatch(EndMismatch::StreamCrc {
                stream: real_crc ^ 1,
                computed: real_crc,
            }),
            end_at,
        ),
    ]
}

#[test]
fn every_decoder_must_of_the_spec_refuses_its_violation() {
    let cases = spec_rule_cases();
    assert!(cases.len() >= 45);
    for (rule, bytes, kind, offset) in cases {
        for segs in [&[usize::MAX][..], &[1][..]] {
            let e = decode(&bytes, segs).unwrap_err();
            assert_eq!((e.kind(), e.offset()), (kind, offset), "{rule} ({segs:?})");
        }
        let e = decode_all(&bytes, 3).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (kind, offset), "{rule} (feed_all)");
    }
    // §7: a reader does not reject a stream for its minor version alone.
    let mut enc = Encoder::new();
    let mut out = [0u8; 256];
    let future = StreamHeaderRepr { minor: 7, ..HEADER };
    let mut n = enc.write_header(&future, &mut out).unwrap().written();
    n += enc.write_end(&mut out[n..]).unwrap().written();
    let ev = decode(&out[..n], &[1]).unwrap();
    assert_eq!(ev[0], Ev::Header(future));
}

// ---- tests the mutation run over the decoder showed missing (issue 21) ---------------------------

#[test]
fn a_payload_exactly_at_the_local_limit_is_accepted() {
    // §5 step 3: `payload_len <= limit` passes, one byte more does not.
    let at = |n: usize| {
        let s = stream_of(&[record(RecordKind::REGISTERS, 1, 1, 0, &vec![0; n])]);
        let mut s = s;
        let end = end_payload_for(&s, 1);
        s.extend_from_slice(&record(RecordKind::END, 1, 1, 1, &end));
        decode_with(&mut Decoder::new(Limits::with_max_payload(64)), &s, &[13])
    };
    let events = at(64).unwrap();
    assert!(events.contains(&Ev::Begin(RecordKind::REGISTERS, 1, 64, 0)));
    assert_eq!(
        at(65).unwrap_err().kind(),
        ErrorKind::LengthTooLarge { len: 65, max: 64 }
    );
}

#[test]
fn opaque_records_of_any_version_reach_the_consumer() {
    // §5 step 4 checks the version of PAGES, ROUND and END only: the version of an opaque record
    // is its consumer's to judge (the vgpu destination accepts REGISTERS 1 and 2, for example).
    for version in [0u8, 2, 7, 0xFF] {
        let mut s = stream_of(&[record(RecordKind::REGISTERS, 1, version, 0, b"abcd")]);
        let end = end_payload_for(&s, 1);
        s.extend_from_slice(&record(RecordKind::END, 1, 1, 1, &end));
        let events = decode(&s, &[5]).unwrap();
        assert!(
            events.contains(&Ev::Begin(RecordKind::REGISTERS, version, 4, 0)),
            "version {version}"
        );
    }
}

#[test]
fn round_and_end_lengths_are_refused_at_their_header() {
    // §5 step 5 is a record-header check: the reader refuses before any payload byte arrives.
    for (kind, len, expected) in [(RecordKind::ROUND, 25u32, 24u32), (RecordKind::END, 15, 16)] {
        let r = record(kind, 1, 1, 0, &vec![0; len as usize]);
        let s = stream_of(&[r[..16].to_vec()]);
        let e = err(&s);
        assert_eq!(
            e.kind(),
            ErrorKind::BadRoundOrEnd { expected, len },
            "{kind:?}"
        );
        assert_eq!(e.offset(), 80);
    }
}

/// END's payload for `stream` (header and records so far) with `records` records before END.
fn end_payload_for(stream: &[u8], records: u32) -> Vec<u8> {
    let mut chain = Crc32::new();
    chain.update(&stream[..76]);
    let mut at = 80;
    while at < stream.len() {
        chain.update(&stream[at..at + 16]);
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 16 + len;
    }
    end_payload(records, chain.value(), stream.len() as u64)
}

/// A complete stream of one PAGES record with `payload`, and END.
fn pages_stream(payload: &[u8]) -> Vec<u8> {
    let mut s = stream_of(&[record(RecordKind::PAGES, 1, 1, 0, payload)]);
    let end = end_payload_for(&s, 1);
    s.extend_from_slice(&record(RecordKind::END, 1, 1, 1, &end));
    s
}

#[test]
fn a_dup_run_of_several_pages_copies_each_in_turn() {
    let mut p = run(0x40, 3, 2);
    for (from, hash) in [(7u64, 0x11u64), (8, 0x22), (9, 0x33)] {
        p.extend_from_slice(&from.to_le_bytes());
        p.extend_from_slice(&hash.to_le_bytes());
    }
    let events = decode(&pages_stream(&p), &[3]).unwrap();
    let copies: Vec<&Ev> = events
        .iter()
        .filter(|e| matches!(e, Ev::Copy(..)))
        .collect();
    assert_eq!(
        copies,
        [
            &Ev::Copy(0x40, 7, 0x11),
            &Ev::Copy(0x41, 8, 0x22),
            &Ev::Copy(0x42, 9, 0x33)
        ]
    );
}

#[test]
fn a_delta_of_exactly_one_page_is_accepted_and_one_byte_more_is_not() {
    // §6.1: `len` over 4096 is BadDelta; 4096 itself (one segment covering the page) is fine.
    let delta = |len: u16, n: u16| {
        let mut p = run(0x50, 1, 3);
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(&n.to_le_bytes());
        p.extend(core::iter::repeat_n(0x5A, usize::from(n)));
        p
    };
    let events = decode(&pages_stream(&delta(4096, 4092)), &[977]).unwrap();
    assert!(events.contains(&Ev::Xor(0x50, 0, vec![0x5A; 4092])));
    let e = err(&pages_stream(&delta(4097, 4093)));
    assert_eq!(
        e.kind(),
        ErrorKind::MalformedPageRun(PageRunError::BadDelta)
    );
}
