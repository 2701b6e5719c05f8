//! Targets over the migration stream format (`migstream`).

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use migstream::{
    CONTROL_VERSION, DecodeError, Decoder, DeviceIdentity, EncodeError, Encoder, EndRepr, Event,
    FORMAT_MINOR, FeedError, Limits, PageEncoding, PageRunRepr, PagesPayload, Progress,
    RecordFlags, RecordKind, RoundRepr, StreamHeaderRepr,
};

use crate::input::{Bytes, DrawByte as _};
use sim::Rng;

/// The golden stream of the `migstream` crate (`migstream/tests/vectors/skeleton.bin`):
/// header, CONFIG_SPACE, an unknown optional record, ROUND, PAGES (one FULL and one ZERO
/// run) and END.
pub const GOLDEN_STREAM: &[u8] = include_bytes!("../../migstream/tests/vectors/skeleton.bin");

/// The golden stream with all four page encodings (FULL, ZERO, DUP, DELTA).
pub const ENCODINGS_STREAM: &[u8] = include_bytes!("../../migstream/tests/vectors/encodings.bin");

/// Decoder contract on arbitrary bytes: `data[0]` is the slice size − 1, the rest is the
/// stream (body: [`migstream::fuzzing::decode_arbitrary`]).
pub fn migstream_decode(data: &[u8]) {
    migstream::fuzzing::decode_arbitrary(data);
}

/// Encoder → decoder round trip of a record script read from `data`
/// (body: [`migstream::fuzzing::roundtrip`]).
pub fn migstream_roundtrip(data: &[u8]) {
    migstream::fuzzing::roundtrip(data);
}

/// Authenticated streams (migstream feature `auth`): `data[0]` even runs the decoder contract
/// with a key-requiring decoder on `data[1..]`
/// ([`migstream::fuzzing::decode_arbitrary_authenticated`]); odd runs the keyed encoder → decoder
/// round trip of the record script in `data[1..]`
/// ([`migstream::fuzzing::roundtrip_authenticated`]).
pub fn migstream_auth(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => {
            migstream::fuzzing::decode_arbitrary_authenticated(rest);
        }
        Some((_, rest)) => migstream::fuzzing::roundtrip_authenticated(rest),
        None => {}
    }
}

/// The device identity of the streams the targets build.
const IDENTITY: DeviceIdentity = migstream::fuzzing::STREAM_IDENTITY;

/// A keyed stream (the fuzzing key) built from a record script, for seeds.
pub fn build_keyed_stream(n: u8) -> Vec<u8> {
    use migstream::{AuthKey, Encoder, RecordFlags, RecordKind, StreamHeaderRepr};
    let header = StreamHeaderRepr {
        minor: migstream::MINOR_1_1,
        flags: 0,
        identity: IDENTITY,
        stream_id: u64::from(n),
    };
    let mut out = vec![0u8; 4096];
    let mut mac = migstream::MacStorage::new();
    let mut enc = Encoder::with_key(&AuthKey::new([0x5A; 32]), &mut mac);
    let mut at = enc
        .write_header(&header, &mut out)
        .map_or(0, |p| p.written());
    for i in 0..n {
        let payload = [i; 8];
        at += out.get_mut(at..).map_or(0, |o| {
            enc.write_record(
                RecordKind::REGISTERS,
                RecordFlags::MANDATORY,
                1,
                &payload[..],
                o,
            )
            .map_or(0, |p| p.written())
        });
    }
    at += out
        .get_mut(at..)
        .map_or(0, |o| enc.write_end(o).map_or(0, |p| p.written()));
    out.truncate(at);
    out
}

/// A decoder event with owned data; consecutive chunks of one payload or one page are merged,
/// so logs from different segmentations compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Header(StreamHeaderRepr),
    Begin {
        kind: RecordKind,
        version: u8,
        len: u32,
        index: u32,
    },
    Payload {
        kind: RecordKind,
        offset: u32,
        data: Vec<u8>,
    },
    Page {
        frame: u64,
        offset: u16,
        data: Vec<u8>,
    },
    Zero {
        first_frame: u64,
        count: u32,
    },
    RecordEnd {
        kind: RecordKind,
        index: u32,
    },
    Skipped {
        kind: RecordKind,
        len: u32,
    },
    Round(RoundRepr),
    End(EndRepr),
    Copy {
        frame: u64,
        from_frame: u64,
        hash: u64,
    },
    Xor {
        frame: u64,
        offset: u16,
        data: Vec<u8>,
    },
    /// An event variant added to `migstream` after this target was written.
    Other(String),
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Ev>,
}

impl Log {
    /// A piece of a page (FULL data, or DELTA bytes when `xor`): never empty, never past the page
    /// end; pieces that the input's segmentation split merge back into one event.
    fn push_page_piece(&mut self, xor: bool, frame: u64, offset: u16, data: &[u8]) {
        assert!(!data.is_empty(), "empty page event");
        assert!(
            usize::from(offset) + data.len() <= migstream::PAGE_SIZE,
            "page event crosses its page"
        );
        let last = match self.events.last_mut() {
            Some(Ev::Page {
                frame: f,
                offset: o,
                data: d,
            }) if !xor => Some((f, o, d)),
            Some(Ev::Xor {
                frame: f,
                offset: o,
                data: d,
            }) if xor => Some((f, o, d)),
            _ => None,
        };
        if let Some((f, o, d)) = last
            && *f == frame
            && usize::from(*o) + d.len() == usize::from(offset)
        {
            d.extend_from_slice(data);
            return;
        }
        let data = data.to_vec();
        self.events.push(if xor {
            Ev::Xor {
                frame,
                offset,
                data,
            }
        } else {
            Ev::Page {
                frame,
                offset,
                data,
            }
        });
    }

    fn push(&mut self, ev: Event<'_>) {
        match ev {
            Event::Payload { kind, offset, data } => {
                assert!(!data.is_empty(), "empty Payload event");
                if let Some(Ev::Payload {
                    kind: k,
                    offset: o,
                    data: d,
                }) = self.events.last_mut()
                    && *k == kind
                    && u64::from(*o) + d.len() as u64 == u64::from(offset)
                {
                    d.extend_from_slice(data);
                    return;
                }
                self.events.push(Ev::Payload {
                    kind,
                    offset,
                    data: data.to_vec(),
                });
            }
            Event::PageData {
                frame,
                offset,
                data,
            } => self.push_page_piece(false, frame, offset, data),
            Event::PageXor {
                frame,
                offset,
                data,
            } => self.push_page_piece(true, frame, offset, data),
            Event::PageCopy {
                frame,
                from_frame,
                hash,
            } => self.events.push(Ev::Copy {
                frame,
                from_frame,
                hash,
            }),
            Event::Header(h) => self.events.push(Ev::Header(h)),
            Event::RecordBegin {
                kind,
                version,
                len,
                index,
            } => self.events.push(Ev::Begin {
                kind,
                version,
                len,
                index,
            }),
            Event::ZeroPages { first_frame, count } => {
                self.events.push(Ev::Zero { first_frame, count });
            }
            Event::RecordEnd { kind, index } => self.events.push(Ev::RecordEnd { kind, index }),
            Event::Skipped { kind, len } => self.events.push(Ev::Skipped { kind, len }),
            Event::Round(r) => self.events.push(Ev::Round(r)),
            Event::End(e) => self.events.push(Ev::End(e)),
            other => self.events.push(Ev::Other(format!("{other:?}"))),
        }
    }
}

/// What decoding a whole stream produced.
#[derive(Debug)]
struct Outcome {
    log: Log,
    result: Result<(), DecodeError>,
}

/// Decodes `stream` cut into slices whose lengths `seg` yields (clamped to what is left).
fn decode_segmented(stream: &[u8], seg: &mut dyn FnMut() -> usize) -> Outcome {
    let mut dec = Decoder::new(Limits::DEFAULT);
    let mut log = Log::default();
    let mut off = 0usize;
    loop {
        let len = seg().min(stream.len() - off);
        let chunk = stream.get(off..off + len).unwrap_or_default();
        let mut rest = chunk;
        // Each call consumes a byte or emits an event; a 16-byte header has one closing
        // event, so 4 calls per byte (+ slack for pending events) bounds a correct decoder.
        let mut budget = chunk.len().saturating_mul(4).saturating_add(8);
        loop {
            assert!(budget > 0, "decoder made no progress");
            budget -= 1;
            match dec.feed(rest) {
                Err(e) => {
                    assert_eq!(dec.feed(rest), Err(e), "errors are sticky");
                    assert_eq!(dec.finish(), Err(e), "finish repeats the error");
                    return Outcome {
                        log,
                        result: Err(e),
                    };
                }
                Ok((used, ev)) => {
                    assert!(used <= rest.len(), "consumed more than offered");
                    rest = rest.get(used..).unwrap_or_default();
                    match ev {
                        Some(ev) => log.push(ev),
                        None if used == 0 => break,
                        None => {}
                    }
                }
            }
        }
        assert!(rest.is_empty(), "decoder stopped on non-empty input");
        off += len;
        if off >= stream.len() {
            break;
        }
    }
    assert_eq!(dec.position(), stream.len() as u64, "position");
    let result = dec.finish();
    assert_eq!(result.is_ok(), dec.is_finished());
    Outcome { log, result }
}

/// Slice lengths read from fuzz bytes (a byte below 0x80 is a length, others 64 times their
/// low bits), then the rest of the stream in one slice.
fn slice_lengths(mut segs: Bytes<'_>) -> impl FnMut() -> usize + '_ {
    move || {
        if segs.is_empty() {
            return usize::MAX;
        }
        let b = segs.u8();
        if b < 0x80 {
            usize::from(b)
        } else {
            usize::from(b & 0x7F) * 64
        }
    }
}

/// [`decode_segmented`] through [`Decoder::feed_all`], one call per slice: the same events
/// and the same result are expected.
fn decode_feed_all(stream: &[u8], seg: &mut dyn FnMut() -> usize) -> Outcome {
    let mut dec = Decoder::new(Limits::DEFAULT);
    let mut log = Log::default();
    let mut off = 0usize;
    while off < stream.len() {
        let len = seg().min(stream.len() - off);
        let chunk = stream.get(off..off + len).unwrap_or_default();
        let r = dec.feed_all(chunk, |ev| {
            log.push(ev);
            Ok::<(), ()>(())
        });
        match r {
            Ok(n) => assert_eq!(n, chunk.len(), "feed_all stopped early without an error"),
            Err(FeedError::Decode(e)) => {
                return Outcome {
                    log,
                    result: Err(e),
                };
            }
            Err(FeedError::Sink(())) => panic!("the sink never fails"),
        }
        off += len;
    }
    let result = dec.finish();
    Outcome { log, result }
}

/// Deterministic page contents for built streams.
fn page_fill(frame: u64, offset: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = frame
            .wrapping_mul(0x0100_0000_01B3)
            .wrapping_add((offset + i) as u64);
        *b = (x ^ (x >> 9)).to_le_bytes()[0];
    }
}

type WriteFn<'a> = dyn FnMut(&mut Encoder, &mut [u8]) -> Result<Progress, EncodeError> + 'a;

/// Runs one resumable encoder call to completion, appending to `out`.
fn pump(enc: &mut Encoder, out: &mut Vec<u8>, write: &mut WriteFn<'_>) {
    let mut buf = [0u8; 1024];
    loop {
        let p = match write(enc, &mut buf) {
            Ok(p) => p,
            Err(e) => panic!("encoder rejected a valid record: {e}"),
        };
        out.extend_from_slice(buf.get(..p.written()).unwrap_or_default());
        if p.is_done() {
            break;
        }
    }
}

/// A small valid stream built from `seed`: header, 1..=6 records (opaque known kinds,
/// unknown optional kinds, ROUND, PAGES with FULL and ZERO runs), END.
pub(crate) fn build_stream(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let header = StreamHeaderRepr {
        minor: FORMAT_MINOR,
        flags: 0,
        identity: IDENTITY,
        stream_id: seed,
    };
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    pump(&mut enc, &mut out, &mut |e, o| e.write_header(&header, o));
    let records = 1 + rng.below(6);
    for _ in 0..records {
        match rng.below(4) {
            0 => {
                let kind = RecordKind(1 + u16::from(rng.byte() % 8));
                let len = usize::try_from(rng.below(300)).unwrap_or(0);
                let payload: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                let version = 1 + rng.byte() % 3;
                pump(&mut enc, &mut out, &mut |e, o| {
                    e.write_record(kind, RecordFlags::MANDATORY, version, &payload[..], o)
                });
            }
            1 => {
                let kind = RecordKind(0x0100 | u16::from(rng.byte()));
                let len = usize::try_from(rng.below(40)).unwrap_or(0);
                let payload: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                pump(&mut enc, &mut out, &mut |e, o| {
                    e.write_record(kind, RecordFlags::NONE, 1, &payload[..], o)
                });
            }
            2 => {
                let round = RoundRepr {
                    round: u32::from(rng.byte()),
                    pages: rng.below(1000),
                    bytes: rng.below(1 << 20),
                };
                pump(&mut enc, &mut out, &mut |e, o| e.write_round(&round, o));
            }
            _ => {
                let n = usize::try_from(1 + rng.below(3)).unwrap_or(1);
                let mut runs = vec![
                    PageRunRepr {
                        first_frame: 0,
                        count: 1,
                        encoding: PageEncoding::FULL,
                    };
                    n
                ];
                for r in &mut runs {
                    let zero = rng.below(2) == 0;
                    r.first_frame = rng.below(1 << 20);
                    r.count = u32::try_from(1 + rng.below(if zero { 8 } else { 2 })).unwrap_or(1);
                    r.encoding = if zero {
                        PageEncoding::ZERO
                    } else {
                        PageEncoding::FULL
                    };
                }
                let payload = match PagesPayload::new(&runs, page_fill) {
                    Ok(p) => p,
                    Err(e) => panic!("valid page runs rejected: {e}"),
                };
                pump(&mut enc, &mut out, &mut |e, o| {
                    e.write_record(
                        RecordKind::PAGES,
                        RecordFlags::MANDATORY,
                        CONTROL_VERSION,
                        &payload,
                        o,
                    )
                });
            }
        }
    }
    pump(&mut enc, &mut out, &mut |e, o| e.write_end(o));
    assert!(enc.is_finished());
    assert_eq!(enc.bytes_written(), out.len() as u64);
    out
}

/// Segmentation independence.
///
/// Input: `sel = data[0]`. Bit 0 clear: the stream is [`GOLDEN_STREAM`] (bit 2 clear) or
/// [`ENCODINGS_STREAM`] (bit 2 set); set: a small valid
/// stream built from the seed in the next 8 bytes. Bit 1 set: flip one bit of the stream
/// (position from the next 2 bytes, bit from the next byte) before decoding. The remaining
/// bytes are slice lengths: `b < 0x80` means `b` bytes (0 = an empty `feed`), otherwise
/// `(b & 0x7F) * 64` bytes; when they run out, the rest is one slice.
///
/// Asserts: decoding in those slices gives the same merged event sequence and the same final
/// result (`Ok` or the same [`DecodeError`]) as decoding the stream in one slice; an intact
/// stream decodes without error; no call fails to make progress.
pub fn migstream_segmented(data: &[u8]) {
    let mut input = Bytes::new(data);
    let sel = input.u8();
    let built;
    let mut stream: Vec<u8> = if sel & 1 == 0 {
        if sel & 4 == 0 {
            GOLDEN_STREAM
        } else {
            ENCODINGS_STREAM
        }
        .to_vec()
    } else {
        built = build_stream(input.u64());
        built
    };
    let corrupt = sel & 2 != 0;
    if corrupt {
        let pos = usize::from(input.u16()) % stream.len().max(1);
        let bit = input.u8() % 8;
        if let Some(b) = stream.get_mut(pos) {
            *b ^= 1 << bit;
        }
    }
    let whole = decode_segmented(&stream, &mut || usize::MAX);
    if !corrupt {
        assert_eq!(whole.result, Ok(()), "a valid stream was rejected");
    }
    let pieces = decode_segmented(&stream, &mut slice_lengths(input));
    assert_eq!(
        pieces.result, whole.result,
        "segmentation changed the result"
    );
    assert_eq!(
        pieces.log.events, whole.log.events,
        "segmentation changed the events"
    );
    // feed_all over the same slices (it checksums and hands out in its own order).
    let all = decode_feed_all(&stream, &mut slice_lengths(input));
    assert_eq!(all.result, whole.result, "feed_all changed the result");
    assert_eq!(
        all.log.events, whole.log.events,
        "feed_all changed the events"
    );
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
    fn golden_decodes_to_the_documented_events() {
        let out = decode_segmented(GOLDEN_STREAM, &mut || usize::MAX);
        assert_eq!(out.result, Ok(()));
        let ev = &out.log.events;
        assert_eq!(ev.len(), 11);
        assert_eq!(
            ev[1],
            Ev::Begin {
                kind: RecordKind::CONFIG_SPACE,
                version: 1,
                len: 4,
                index: 0
            }
        );
        assert_eq!(
            ev[2],
            Ev::Payload {
                kind: RecordKind::CONFIG_SPACE,
                offset: 0,
                data: b"cfg!".to_vec()
            }
        );
        assert_eq!(
            ev[4],
            Ev::Skipped {
                kind: RecordKind(0x0123),
                len: 3
            }
        );
        assert_eq!(
            ev[7],
            Ev::Page {
                frame: 0x10,
                offset: 0,
                data: vec![0xB5; 4096]
            }
        );
        assert_eq!(
            ev[8],
            Ev::Zero {
                first_frame: 0x20,
                count: 2
            }
        );
        assert!(matches!(ev[10], Ev::End(e) if e.record_count == 4));
    }

    #[test]
    fn one_byte_slices_give_the_same_log() {
        let whole = decode_segmented(GOLDEN_STREAM, &mut || usize::MAX);
        let bytes = decode_segmented(GOLDEN_STREAM, &mut || 1);
        assert_eq!(bytes.log.events, whole.log.events);
        assert_eq!(bytes.result, Ok(()));
    }

    #[test]
    fn built_streams_are_valid_and_deterministic() {
        for seed in 0..64 {
            let s = build_stream(seed);
            assert_eq!(s, build_stream(seed));
            let out = decode_segmented(&s, &mut || 97);
            assert_eq!(out.result, Ok(()), "seed {seed}");
            assert!(matches!(out.log.events[0], Ev::Header(h) if h.stream_id == seed));
        }
    }

    #[test]
    fn truncated_stream_reports_truncation_in_any_segmentation() {
        let s = &GOLDEN_STREAM[..GOLDEN_STREAM.len() - 1];
        let whole = decode_segmented(s, &mut || usize::MAX);
        let err = whole.result.unwrap_err();
        assert_eq!(err.kind(), migstream::ErrorKind::Truncated);
        assert_eq!(err.offset(), s.len() as u64);
        let pieces = decode_segmented(s, &mut || 5);
        assert_eq!(pieces.result, Err(err));
    }

    #[test]
    fn segmented_body_accepts_edge_inputs() {
        migstream_segmented(&[]);
        migstream_segmented(&[0, 0, 0, 0, 1, 0xFF]);
        migstream_segmented(&[1, 9, 9, 9, 9, 9, 9, 9, 9, 3]);
        // Corrupt the magic of the golden stream.
        migstream_segmented(&[2, 0, 0, 0, 1, 2, 3]);
    }
}
