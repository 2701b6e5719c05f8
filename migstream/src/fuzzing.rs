//! Fuzz-target bodies, always compiled (they are small) so the `fuzz` crate's targets and its
//! stable corpus-replay tests call the same code.
//!
//! Both functions panic (via `assert!`) only when they find a bug in this crate: that panic is
//! what a fuzzer reports.
#![allow(
    clippy::panic,
    reason = "fuzz bodies report bugs in this crate by panicking"
)]

use crate::control::{CONTROL_VERSION, RoundRepr};
use crate::decoder::{Decoder, Event};
use crate::encoder::{Encoder, PayloadSource, Progress};
use crate::error::EncodeError;
use crate::header::{DeviceIdentity, PAGE_SHIFT, StreamHeaderRepr};
use crate::pages::{PAGE_SIZE, PageEncoding, PageRunRepr, PagesPayload};
use crate::record::{Limits, RecordFlags, RecordKind};

/// The device identity in the headers of the streams the fuzz bodies and seeds build.
pub const STREAM_IDENTITY: DeviceIdentity = DeviceIdentity {
    pci_vendor: 0x8086,
    pci_device: 0x1912,
    generation: 9,
    fence_count: 4,
    aperture_base: 0,
    aperture_size: 1 << 27,
    hidden_base: 1 << 32,
    hidden_size: 1 << 28,
    page_shift: PAGE_SHIFT,
};

/// Feed `data[1..]` to a [`Decoder`] in slices of `data[0] + 1` bytes and check the decoder's
/// contract: no panic, progress on every call, consumed ≤ offered, page chunks inside their
/// page, a bounded number of calls, and `finish()` agreeing with `is_finished()`.
pub fn decode_arbitrary(data: &[u8]) {
    decode_arbitrary_with(Decoder::new(Limits::DEFAULT), data);
}

/// [`decode_arbitrary`] with a decoder that requires authentication (feature `auth`): the same
/// contract through the MAC rules. Under `cfg(fuzzing)` the tag compare is bypassed like the
/// CRCs, so the fuzzer reaches the states after the MAC record.
#[cfg(feature = "auth")]
pub fn decode_arbitrary_authenticated(data: &[u8]) {
    let key = crate::auth::AuthKey::new([0x5A; 32]);
    let mut storage = crate::auth::MacStorage::new();
    decode_arbitrary_with(Decoder::with_key(Limits::DEFAULT, &key, &mut storage), data);
}

fn decode_arbitrary_with(mut dec: Decoder, data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let mut off = 0usize;
    // Each call consumes a byte or emits an event; events need ≥ 1 byte each except one
    // closing event per 16-byte record header, so 4 calls per byte is a generous bound.
    let mut budget = stream.len().saturating_mul(4).saturating_add(8);
    // (payload start, payload_len) of the record whose RecordBegin was seen: its RecordEnd
    // must come exactly `payload_len` bytes later (the decoder never reads past a payload).
    let mut open: Option<(u64, u64)> = None;
    loop {
        assert!(budget > 0, "decoder made no progress");
        budget -= 1;
        let chunk = stream
            .get(off..off.saturating_add(step).min(stream.len()))
            .unwrap_or_default();
        match dec.feed(chunk) {
            Err(e) => {
                assert_eq!(dec.feed(chunk), Err(e), "errors are sticky");
                assert_eq!(dec.finish(), Err(e));
                return;
            }
            Ok((used, event)) => {
                assert!(used <= chunk.len());
                match event {
                    Some(Event::PageData { offset, data, .. }) => {
                        assert!(!data.is_empty());
                        assert!(usize::from(offset) + data.len() <= PAGE_SIZE);
                    }
                    Some(Event::RecordBegin { len, .. }) => {
                        open = Some((dec.position(), u64::from(len)));
                    }
                    Some(Event::RecordEnd { .. }) => {
                        let Some((start, len)) = open.take() else {
                            panic!("RecordEnd without RecordBegin");
                        };
                        assert_eq!(dec.position() - start, len, "record read past its payload");
                    }
                    _ => {}
                }
                if used == 0 && event.is_none() {
                    assert!(chunk.is_empty(), "no progress on non-empty input");
                    break;
                }
                off += used;
            }
        }
    }
    assert_eq!(dec.finish().is_ok(), dec.is_finished());
}

/// One record of a [`roundtrip`] script.
#[derive(Clone, Copy, Debug)]
enum Op<'a> {
    Opaque { kind: RecordKind, payload: &'a [u8] },
    Round(RoundRepr),
    Pages { runs: [PageRunRepr; 3], n: usize },
}

/// Interprets fuzz bytes as at most 32 records; each record consumes at least one byte.
#[derive(Clone, Copy, Debug)]
struct Script<'a> {
    data: &'a [u8],
    count: usize,
}

impl<'a> Script<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }
}

impl<'a> Iterator for Script<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        if self.count >= 32 || self.data.is_empty() {
            return None;
        }
        self.count += 1;
        let op = self.byte();
        Some(match op % 4 {
            0 | 3 => {
                let k = self.byte();
                let kind = if op.is_multiple_of(4) {
                    RecordKind(u16::from(k % 8) + 1)
                } else {
                    RecordKind(0x0100 | u16::from(k))
                };
                let len = usize::from(self.byte()) * usize::from(op / 4 % 8 + 1);
                Op::Opaque {
                    kind,
                    payload: self.bytes(len),
                }
            }
            1 => Op::Round(RoundRepr {
                round: u32::from(self.byte()),
                pages: u64::from(self.byte()),
                bytes: u64::from(op),
            }),
            _ => {
                let n = usize::from(op / 4 % 3) + 1;
                let mut runs = [PageRunRepr {
                    first_frame: 0,
                    count: 1,
                    encoding: PageEncoding::FULL,
                }; 3];
                for r in runs.iter_mut().take(n) {
                    let b = self.byte();
                    r.first_frame = u64::from(self.byte()) << (b % 48);
                    r.count = u32::from(b % 3) + 1;
                    r.encoding = PageEncoding(b >> 7);
                }
                Op::Pages { runs, n }
            }
        })
    }
}

/// Deterministic page contents for [`roundtrip`].
fn page_byte(frame: u64, offset: usize) -> u8 {
    let x = frame.wrapping_mul(0x9E37_79B9).wrapping_add(offset as u64);
    u8::try_from((x ^ (x >> 13)) & 0xFF).unwrap_or(0)
}

fn page_fill(frame: u64, offset: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = page_byte(frame, offset + i);
    }
}

/// Checks decoder events against the script, record by record.
struct Checker<'a> {
    script: Script<'a>,
    cur: Option<Op<'a>>,
    index: u32,
    /// Opaque: next payload offset. Pages: bytes of page data seen in the current run.
    progress: u64,
    run: usize,
    events: u32,
}

impl Checker<'_> {
    fn expect_run(&mut self) -> PageRunRepr {
        let Some(Op::Pages { runs, n }) = self.cur else {
            panic!("page event outside a PAGES record");
        };
        assert!(self.run < n, "more runs than encoded");
        match runs.get(self.run) {
            Some(r) => *r,
            None => panic!("run index out of range"),
        }
    }

    fn next_record(&mut self) {
        self.cur = self.script.next();
        self.index += 1;
        self.progress = 0;
        self.run = 0;
    }

    fn event(&mut self, ev: Event<'_>) {
        self.events += 1;
        match ev {
            Event::Header(_) => assert_eq!(self.events, 1),
            Event::RecordBegin { kind, index, .. } => {
                assert_eq!(index, self.index);
                match self.cur {
                    Some(Op::Opaque { kind: k, .. }) => assert_eq!(kind, k),
                    Some(Op::Pages { .. }) => assert_eq!(kind, RecordKind::PAGES),
                    _ => panic!("unexpected RecordBegin"),
                }
            }
            Event::Payload { kind, offset, data } => {
                let Some(Op::Opaque { kind: k, payload }) = self.cur else {
                    panic!("unexpected Payload");
                };
                assert_eq!(kind, k);
                assert_eq!(u64::from(offset), self.progress);
                let at = offset as usize;
                assert_eq!(payload.get(at..at + data.len()), Some(data));
                self.progress += data.len() as u64;
            }
            Event::PageData {
                frame,
                offset,
                data,
            } => {
                let run = self.expect_run();
                assert_eq!(run.encoding, PageEncoding::FULL);
                let page = self.progress / PAGE_SIZE as u64;
                assert_eq!(frame, run.first_frame + page);
                assert_eq!(u64::from(offset), self.progress % PAGE_SIZE as u64);
                for (i, &b) in data.iter().enumerate() {
                    assert_eq!(b, page_byte(frame, usize::from(offset) + i));
                }
                self.progress += data.len() as u64;
                if self.progress == run.data_len() {
                    self.run += 1;
                    self.progress = 0;
                }
            }
            Event::PageCopy { .. } | Event::PageXor { .. } => {
                panic!("the script writes no DUP or DELTA runs")
            }
            Event::ZeroPages { first_frame, count } => {
                let run = self.expect_run();
                assert_eq!(run.encoding, PageEncoding::ZERO);
                assert_eq!((first_frame, count), (run.first_frame, run.count));
                self.run += 1;
            }
            Event::RecordEnd { kind, index } => {
                assert_eq!(index, self.index);
                match self.cur {
                    Some(Op::Opaque { kind: k, payload }) => {
                        assert_eq!(kind, k);
                        assert_eq!(self.progress, payload.len() as u64);
                    }
                    Some(Op::Pages { n, .. }) => {
                        assert_eq!(kind, RecordKind::PAGES);
                        assert_eq!(self.run, n);
                    }
                    _ => panic!("unexpected RecordEnd"),
                }
                self.next_record();
            }
            Event::Skipped { kind, len } => {
                let Some(Op::Opaque { kind: k, payload }) = self.cur else {
                    panic!("unexpected Skipped");
                };
                assert!(!k.is_known());
                assert_eq!((kind, len as usize), (k, payload.len()));
                self.next_record();
            }
            Event::Round(r) => {
                let Some(Op::Round(want)) = self.cur else {
                    panic!("unexpected Round");
                };
                assert_eq!(r, want);
                self.next_record();
            }
            Event::End(end) => {
                assert!(self.cur.is_none(), "END before the last record");
                assert_eq!(end.record_count, self.index);
            }
            Event::Authenticated { index } => {
                assert!(self.cur.is_none(), "MAC before the last record");
                assert_eq!(index, self.index);
                self.index += 1;
            }
        }
    }
}

/// One resumable encoder call.
type WriteFn<'a> = dyn FnMut(&mut Encoder, &mut [u8]) -> Result<Progress, EncodeError> + 'a;

/// Feed `bytes` completely to `dec`, checking every event.
fn drain(dec: &mut Decoder, checker: &mut Checker<'_>, bytes: &[u8]) {
    let mut rest = bytes;
    loop {
        match dec.feed(rest) {
            Ok((used, ev)) => {
                rest = rest.get(used..).unwrap_or_default();
                match ev {
                    Some(ev) => checker.event(ev),
                    None if used == 0 => break,
                    None => {}
                }
            }
            Err(e) => panic!("decoder rejected encoder output: {e}"),
        }
    }
    assert!(rest.is_empty());
}

/// Interpret `data` as a stream description (`data[0]`: output slice size − 1, then up to 32
/// records: opaque known-kind, unknown optional, ROUND or PAGES), encode it through output
/// buffers of that size, decode each slice as it is produced, and assert the decoded events
/// equal the records (payload bytes, page frames and contents, zero runs, indices, END totals).
pub fn roundtrip(data: &[u8]) {
    roundtrip_with(data, None);
}

/// [`roundtrip`] of an authenticated stream (feature `auth`): the encoder and decoder share a
/// fixed key, and the decoder must report the verified MAC record right before END.
#[cfg(feature = "auth")]
pub fn roundtrip_authenticated(data: &[u8]) {
    roundtrip_with(data, Some(&crate::auth::AuthKey::new([0x5A; 32])));
}

#[cfg(not(feature = "auth"))]
type Key = ();
#[cfg(feature = "auth")]
type Key = crate::auth::AuthKey;

fn roundtrip_with(data: &[u8], key: Option<&Key>) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let header = StreamHeaderRepr {
        minor: 0,
        flags: 0,
        identity: STREAM_IDENTITY,
        stream_id: step as u64,
    };
    let script = Script {
        data: rest,
        count: 0,
    };
    let mut checker = Checker {
        script,
        cur: None,
        index: 0,
        progress: 0,
        run: 0,
        events: 0,
    };
    checker.cur = checker.script.next();
    #[cfg(feature = "auth")]
    let (mut enc_mac, mut dec_mac) = (
        crate::auth::MacStorage::new(),
        crate::auth::MacStorage::new(),
    );
    let (mut enc, mut dec) = match key {
        #[cfg(feature = "auth")]
        Some(k) => (
            Encoder::with_key(k, &mut enc_mac),
            Decoder::with_key(Limits::DEFAULT, k, &mut dec_mac),
        ),
        _ => (Encoder::new(), Decoder::new(Limits::DEFAULT)),
    };
    let mut buf = [0u8; 256];
    let out = buf.get_mut(..step).unwrap_or_default();

    let mut pump = |enc: &mut Encoder, checker: &mut Checker<'_>, write: &mut WriteFn<'_>| {
        loop {
            let p = match write(enc, out) {
                Ok(p) => p,
                Err(e) => panic!("encoder rejected a valid script: {e}"),
            };
            drain(
                &mut dec,
                checker,
                out.get(..p.written()).unwrap_or_default(),
            );
            if p.is_done() {
                break;
            }
        }
    };

    pump(&mut enc, &mut checker, &mut |e, o| {
        e.write_header(&header, o)
    });
    for op in script {
        match op {
            Op::Opaque { kind, payload } => pump(&mut enc, &mut checker, &mut |e, o| {
                e.write_record(kind, RecordFlags::NONE, 3, payload, o)
            }),
            Op::Round(r) => pump(&mut enc, &mut checker, &mut |e, o| e.write_round(&r, o)),
            Op::Pages { runs, n } => {
                let runs = runs.get(..n).unwrap_or_default();
                let Ok(payload) = PagesPayload::new(runs, page_fill) else {
                    panic!("script built an invalid run");
                };
                assert!(payload.payload_len() > 0);
                pump(&mut enc, &mut checker, &mut |e, o| {
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
    pump(&mut enc, &mut checker, &mut |e, o| e.write_end(o));
    assert!(enc.is_finished());
    assert!(checker.cur.is_none());
    assert_eq!(enc.is_authenticated(), key.is_some());
    assert_eq!(dec.finish(), Ok(()));
    assert_eq!(dec.position(), enc.bytes_written());
}

/// Length of [`delta_len_overrun_stream`].
pub const DELTA_LEN_OVERRUN_LEN: usize = 80 + 16 + 25 + 2 + 32;

/// A crafted stream (issue 17, SPEC.md §6.1): one PAGES record of 25 payload bytes holding a
/// DELTA run of two pages (frame 9) whose first `len` (7) takes every payload byte after it, so
/// the second page's 2-byte length field lies just past `payload_len`. The record CRC covers
/// those 2 extra bytes and END counts them, as a decoder that read them would see the stream; a
/// decoder that follows the length rule (`len` ≤ bytes left − 2 × pages after this one) refuses
/// it with `BadDelta` at the run header (offset 96).
#[must_use]
pub fn delta_len_overrun_stream() -> [u8; DELTA_LEN_OVERRUN_LEN] {
    use crate::control::{END_LEN, EndRepr};
    use crate::crc::Crc32;
    use crate::header::STREAM_HEADER_LEN;
    use crate::record::{RECORD_HEADER_LEN, RecordHeaderRepr};

    let header = StreamHeaderRepr {
        minor: 0,
        flags: 0,
        identity: STREAM_IDENTITY,
        stream_id: 17,
    };
    let mut out = [0u8; DELTA_LEN_OVERRUN_LEN];
    let (hdr, rest) = out.split_at_mut(STREAM_HEADER_LEN);
    let (pages_hdr, rest) = rest.split_at_mut(RECORD_HEADER_LEN);
    // 25 payload bytes, then the 2 bytes of the second length field (`len` 0) beyond them.
    let (body, end) = rest.split_at_mut(25 + 2);
    let mut h = [0u8; STREAM_HEADER_LEN];
    header.emit(&mut h);
    hdr.copy_from_slice(&h);
    let mut run = [0u8; 16];
    PageRunRepr {
        first_frame: 9,
        count: 2,
        encoding: PageEncoding::DELTA,
    }
    .emit(&mut run);
    if let Some(d) = body.get_mut(..16) {
        d.copy_from_slice(&run);
    }
    // Page 9: `len` 7 = one segment (skip 0, n 3) and its 3 bytes.
    if let Some(d) = body.get_mut(16..25) {
        d.copy_from_slice(&[7, 0, 0, 0, 3, 0, 0xAA, 0xBB, 0xCC]);
    }
    let mut rec = RecordHeaderRepr {
        kind: RecordKind::PAGES,
        flags: RecordFlags::MANDATORY,
        version: CONTROL_VERSION,
        payload_len: 25,
        index: 0,
        crc: 0,
    };
    rec.crc = rec.compute_crc(body);
    let mut rh = [0u8; RECORD_HEADER_LEN];
    rec.emit(&mut rh);
    pages_hdr.copy_from_slice(&rh);
    let mut chain = Crc32::new();
    chain.update(h.get(..76).unwrap_or_default());
    chain.update(&rh);
    let mut end_payload = [0u8; END_LEN];
    EndRepr {
        record_count: 1,
        stream_crc: chain.value(),
        byte_count: (STREAM_HEADER_LEN + RECORD_HEADER_LEN + 25 + 2) as u64,
    }
    .emit(&mut end_payload);
    let mut end_rec = RecordHeaderRepr {
        kind: RecordKind::END,
        flags: RecordFlags::MANDATORY,
        version: CONTROL_VERSION,
        payload_len: u32::try_from(END_LEN).unwrap_or(0),
        index: 1,
        crc: 0,
    };
    end_rec.crc = end_rec.compute_crc(&end_payload);
    end_rec.emit(&mut rh);
    let (eh, ep) = end.split_at_mut(RECORD_HEADER_LEN);
    eh.copy_from_slice(&rh);
    ep.copy_from_slice(&end_payload);
    out
}
