//! Authenticated streams (feature `auth`, SPEC.md §10): round trips, the golden vector, and
//! every way of tampering with the MAC the brief lists.

use std::vec;
use std::vec::Vec;

use super::{
    Ev, HEADER, VECTORS, decode, decode_with, feed_all_with, hexdump, push, record, skeleton,
};
use crate::auth::{MAC_CONTEXT, StreamMac};
use crate::*;

/// The key of the golden vector `auth.bin`: bytes 0x00, 0x01, …, 0x1F.
fn golden_key_bytes() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    k
}

fn golden_key() -> AuthKey {
    AuthKey::new(golden_key_bytes())
}

const ZERO_RUN: [PageRunRepr; 1] = [PageRunRepr {
    first_frame: 0x20,
    count: 2,
    encoding: PageEncoding::ZERO,
}];

/// The header an authenticating encoder writes for `HEADER`.
const AUTH_HEADER: StreamHeaderRepr = StreamHeaderRepr {
    minor: AUTH_MINOR,
    flags: AUTHENTICATED,
    ..HEADER
};

/// Offsets in the golden stream.
const CONFIG_AT: usize = 80;
const PAGES_AT: usize = CONFIG_AT + 16 + 4;
const MAC_AT: usize = PAGES_AT + 16 + 16;
const END_AT: usize = MAC_AT + 16 + MAC_LEN;
const GOLDEN_LEN: usize = END_AT + 16 + 16;

/// The golden authenticated stream: CONFIG_SPACE `cfg!`, PAGES with one ZERO run, MAC, END,
/// encoded with output slices of `chunk` bytes.
fn auth_stream(key: &AuthKey, header: &StreamHeaderRepr, chunk: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut buf = vec![0u8; chunk];
    let mut enc = Encoder::with_key(key, mac_storage());
    assert!(enc.is_authenticated());
    let mut run = |f: &mut super::WriteFn<'_>| loop {
        let p = f(&mut enc, &mut buf).unwrap();
        stream.extend_from_slice(&buf[..p.written()]);
        if p.is_done() {
            break;
        }
        assert_eq!(p.written(), chunk, "Partial only when out is full");
    };
    let pages = PagesPayload::new(&ZERO_RUN, super::page_fill).unwrap();
    run(&mut |e, o| e.write_header(header, o));
    run(&mut |e, o| {
        e.write_record(
            RecordKind::CONFIG_SPACE,
            RecordFlags::MANDATORY,
            1,
            &b"cfg!"[..],
            o,
        )
    });
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
    assert!(enc.is_finished());
    stream
}

fn golden_stream() -> Vec<u8> {
    auth_stream(&golden_key(), &HEADER, usize::MAX >> 40)
}

fn golden_events(stream_crc: u32) -> Vec<Ev> {
    vec![
        Ev::Header(AUTH_HEADER),
        Ev::Begin(RecordKind::CONFIG_SPACE, 1, 4, 0),
        Ev::Payload(RecordKind::CONFIG_SPACE, 0, b"cfg!".to_vec()),
        Ev::End(RecordKind::CONFIG_SPACE, 0),
        Ev::Begin(RecordKind::PAGES, 1, 16, 1),
        Ev::Zero(0x20, 2),
        Ev::End(RecordKind::PAGES, 1),
        Ev::Authenticated(2),
        Ev::StreamEnd(EndRepr {
            record_count: 3,
            stream_crc,
            byte_count: END_AT as u64,
        }),
    ]
}

/// The stream CRC of END, recomputed from the stream (header and the three record headers).
fn stream_crc_of(bytes: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(&bytes[..76]);
    for at in [CONFIG_AT, PAGES_AT, MAC_AT] {
        c.update(&bytes[at..at + 16]);
    }
    c.value()
}

/// MAC storage for a test's encoder or decoder: leaked, so it lives as long as the test
/// process (a few KiB per test).
fn mac_storage() -> &'static mut crate::MacStorage {
    std::boxed::Box::leak(std::boxed::Box::default())
}

fn keyed(key: &AuthKey) -> Decoder<'static> {
    Decoder::with_key(Limits::DEFAULT, key, mac_storage())
}

fn decode_keyed(bytes: &[u8], key: &AuthKey, segs: &[usize]) -> Result<Vec<Ev>, DecodeError> {
    decode_with(&mut keyed(key), bytes, segs)
}

fn auth_err(e: &DecodeError) -> Option<AuthError> {
    match e.kind() {
        ErrorKind::Auth(a) => Some(a),
        _ => None,
    }
}

/// The tag, computed here from the SPEC's definition with `blake3` directly (not `StreamMac`).
fn spec_tag(key: &[u8; 32], stream_id: u64, covered: &[u8]) -> [u8; 32] {
    let mut material = key.to_vec();
    material.extend_from_slice(&stream_id.to_le_bytes());
    // The context string as SPEC.md §10.3 spells it (not the crate constant).
    let context = "vGPUmig 1 migstream stream MAC key 2026-11 (SPEC.md section 10)";
    assert_eq!(context, MAC_CONTEXT);
    let k = blake3::derive_key(context, &material);
    *blake3::keyed_hash(&k, covered).as_bytes()
}

/// Rewrite every checksum of a (tampered) stream the way a forger without the key can: the
/// header CRC, each record's CRC, and END's stream CRC. `None` if the record lengths no longer
/// tile the stream.
fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = bytes.to_vec();
    if s.len() < 80 {
        return None;
    }
    let c = crc32(&s[..76]);
    s[76..80].copy_from_slice(&c.to_le_bytes());
    let mut stream_crc = Crc32::new();
    stream_crc.update(&s[..76]);
    let mut at = 80;
    while at < s.len() {
        let h = RecordHeaderRepr::parse(s.get(at..)?)?;
        let end = at.checked_add(16)?.checked_add(h.payload_len as usize)?;
        if end > s.len() {
            return None;
        }
        if h.kind == RecordKind::END && h.payload_len == 16 {
            let v = stream_crc.value();
            s[at + 20..at + 24].copy_from_slice(&v.to_le_bytes());
        } else {
            stream_crc.update(&s[at..at + 16]);
        }
        let crc = h.compute_crc(&s[at + 16..end]);
        s[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    Some(s)
}

/// A stream from raw records (index assigned in order, CRCs computed) and a correct END.
fn raw_stream(header: &StreamHeaderRepr, records: &[(RecordKind, Vec<u8>)]) -> Vec<u8> {
    let mut h = [0u8; 80];
    header.emit(&mut h);
    let mut s = h.to_vec();
    let mut c = Crc32::new();
    c.update(&h[..76]);
    for (i, (kind, payload)) in records.iter().enumerate() {
        let r = record(*kind, 1, 1, i as u32, payload);
        c.update(&r[..16]);
        s.extend_from_slice(&r);
    }
    let end = EndRepr {
        record_count: records.len() as u32,
        stream_crc: c.value(),
        byte_count: s.len() as u64,
    };
    let mut p = [0u8; 16];
    end.emit(&mut p);
    s.extend_from_slice(&record(RecordKind::END, 1, 1, records.len() as u32, &p));
    s
}

/// The golden stream's records before MAC, as raw (kind, payload) pairs.
fn golden_records(g: &[u8]) -> Vec<(RecordKind, Vec<u8>)> {
    vec![
        (
            RecordKind::CONFIG_SPACE,
            g[CONFIG_AT + 16..PAGES_AT].to_vec(),
        ),
        (RecordKind::PAGES, g[PAGES_AT + 16..MAC_AT].to_vec()),
    ]
}

fn golden_tag(g: &[u8]) -> Vec<u8> {
    g[MAC_AT + 16..END_AT].to_vec()
}

#[test]
fn golden_authenticated() {
    let bytes = golden_stream();
    let bin = std::format!("{VECTORS}/auth.bin");
    let hex = std::format!("{VECTORS}/auth.hex");
    if std::env::var_os("MIGSTREAM_BLESS").is_some() {
        std::fs::write(&bin, &bytes).unwrap();
        std::fs::write(&hex, hexdump(&bytes)).unwrap();
    }
    let golden = std::fs::read(&bin).unwrap();
    assert_eq!(bytes, golden, "encoder no longer reproduces auth.bin");
    assert_eq!(std::fs::read_to_string(&hex).unwrap(), hexdump(&golden));
    assert_eq!(golden.len(), GOLDEN_LEN);
    // The layout auth.md documents.
    assert_eq!(StreamHeaderRepr::parse(&golden), Ok(AUTH_HEADER));
    let mac = RecordHeaderRepr::parse(&golden[MAC_AT..]).unwrap();
    assert_eq!(
        (mac.kind, mac.flags, mac.version, mac.payload_len, mac.index),
        (RecordKind::MAC, RecordFlags::MANDATORY, 1, 32, 2)
    );
    // The tag, recomputed from the SPEC's definition: everything before the MAC record.
    let tag = spec_tag(&golden_key_bytes(), HEADER.stream_id, &golden[..MAC_AT]);
    assert_eq!(golden_tag(&golden), tag.to_vec());
    let events = golden_events(stream_crc_of(&golden));
    for segs in [&[usize::MAX][..], &[1], &[3, 17, 5], &[MAC_AT + 7, 1]] {
        assert_eq!(
            decode_keyed(&golden, &golden_key(), segs).unwrap(),
            events,
            "{segs:?}"
        );
    }
    for seg in [1, 15, 16, 17, 64, GOLDEN_LEN] {
        let got = feed_all_with(&mut keyed(&golden_key()), &golden, seg).unwrap();
        assert_eq!(got, events, "feed_all {seg}");
    }
}

#[test]
fn encoder_output_independent_of_chunk_size() {
    let whole = golden_stream();
    for chunk in [1, 2, 15, 16, 47, 48, 49, 64, 100] {
        assert_eq!(
            auth_stream(&golden_key(), &HEADER, chunk),
            whole,
            "chunk {chunk}"
        );
    }
}

#[test]
fn mac_record_header_split_at_every_byte() {
    // The authenticated region must end exactly before the MAC record header, however the
    // header is cut between feeds.
    let g = golden_stream();
    let events = golden_events(stream_crc_of(&g));
    for cut in MAC_AT - 1..=END_AT {
        let mut dec = keyed(&golden_key());
        let mut ev = Vec::new();
        for part in [&g[..cut], &g[cut..]] {
            let mut rest = part;
            loop {
                let (used, e) = dec.feed(rest).unwrap();
                rest = &rest[used..];
                match e {
                    Some(e) => push(&mut ev, e),
                    None if used == 0 => break,
                    None => {}
                }
            }
        }
        dec.finish().unwrap();
        assert_eq!(ev, events, "cut at {cut}");
    }
}

#[test]
fn wrong_key_refused() {
    let g = golden_stream();
    let other = AuthKey::new([0xC3; 32]);
    for segs in [&[usize::MAX][..], &[1]] {
        let e = decode_keyed(&g, &other, segs).unwrap_err();
        assert_eq!(auth_err(&e), Some(AuthError::BadTag));
        assert_eq!(e.offset(), MAC_AT as u64);
        assert_eq!(e.record(), Some((2, RecordKind::MAC)));
        assert_eq!(e.fault(), Fault::Stream);
    }
    // A stream written with the other key verifies with it, and not with the golden one.
    let s = auth_stream(&other, &HEADER, 4096);
    assert!(decode_keyed(&s, &other, &[1]).is_ok());
    let e = decode_keyed(&s, &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::BadTag));
}

#[test]
fn every_single_bit_flip_refused() {
    let g = golden_stream();
    for i in 0..g.len() * 8 {
        let mut b = g.clone();
        b[i / 8] ^= 1 << (i % 8);
        assert!(
            decode_keyed(&b, &golden_key(), &[usize::MAX]).is_err(),
            "bit {i} flipped and accepted"
        );
    }
}

#[test]
fn every_forged_bit_flip_refused_by_the_mac() {
    // A forger flips one bit and repairs every CRC (they are keyless): only the MAC stands.
    let g = golden_stream();
    let mut by_tag = 0;
    for i in 0..g.len() * 8 {
        let mut b = g.clone();
        b[i / 8] ^= 1 << (i % 8);
        let Some(forged) = reseal(&b) else {
            // A length field changed: the records no longer tile the stream.
            assert!(decode_keyed(&b, &golden_key(), &[usize::MAX]).is_err());
            continue;
        };
        if forged == g {
            continue; // the flip was in a checksum field, which resealing restored
        }
        let Err(e) = decode_keyed(&forged, &golden_key(), &[usize::MAX]) else {
            panic!("bit {i} forged and accepted");
        };
        let byte = i / 8;
        // Changing opaque payload bytes or the run's frame leaves a well-formed stream: the
        // MAC tag is the only thing that catches it.
        let payload = (CONFIG_AT + 16..PAGES_AT).contains(&byte)
            || (PAGES_AT + 16..PAGES_AT + 24).contains(&byte);
        if payload || (MAC_AT + 16..END_AT).contains(&byte) {
            assert_eq!(auth_err(&e), Some(AuthError::BadTag), "byte {byte}: {e}");
        }
        if auth_err(&e) == Some(AuthError::BadTag) {
            by_tag += 1;
        }
    }
    assert!(by_tag >= (4 + 8 + 32) * 8);
}

#[test]
fn stripped_mac_refused() {
    let g = golden_stream();
    // Cut out verbatim: END's index no longer follows.
    let cut = [&g[..MAC_AT], &g[END_AT..]].concat();
    assert!(decode_keyed(&cut, &golden_key(), &[usize::MAX]).is_err());
    // Rebuilt consistently (indices, END totals and all CRCs right): the missing MAC is named.
    let s = raw_stream(&AUTH_HEADER, &golden_records(&g));
    let e = decode_keyed(&s, &golden_key(), &[1]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::MissingMac));
    assert_eq!(
        e.offset(),
        MAC_AT as u64,
        "END's offset once the MAC is gone"
    );
    // A plain encoder asked to write the flag writes such a stream; it is refused the same way.
    let mut enc = Encoder::new();
    let mut buf = vec![0u8; 4096];
    let mut at = enc.write_header(&AUTH_HEADER, &mut buf).unwrap().written();
    at += enc
        .write_record(
            RecordKind::REGISTERS,
            RecordFlags::MANDATORY,
            1,
            &[1u8; 8],
            &mut buf[at..],
        )
        .unwrap()
        .written();
    at += enc.write_end(&mut buf[at..]).unwrap().written();
    let e = decode_keyed(&buf[..at], &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::MissingMac));
}

#[test]
fn moved_mac_refused() {
    let g = golden_stream();
    let [config, pages]: [(RecordKind, Vec<u8>); 2] = golden_records(&g).try_into().unwrap();
    // The genuine tag, moved to the front (indices and CRCs repaired): it covers other bytes.
    let moved = raw_stream(
        &AUTH_HEADER,
        &[
            (RecordKind::MAC, golden_tag(&g)),
            config.clone(),
            pages.clone(),
        ],
    );
    let e = decode_keyed(&moved, &golden_key(), &[1]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::BadTag));
    // Even a tag valid at that position (only a key holder can make one) does not let records
    // follow the MAC.
    let mut h = [0u8; 80];
    AUTH_HEADER.emit(&mut h);
    let early = StreamMac::after_header(&golden_key(), &h).unwrap().tag();
    let s = raw_stream(
        &AUTH_HEADER,
        &[(RecordKind::MAC, early.to_vec()), config, pages],
    );
    let e = decode_keyed(&s, &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::RecordAfterMac));
    assert_eq!(e.offset(), 80 + 16 + 32);
}

#[test]
fn duplicated_mac_refused() {
    let g = golden_stream();
    let mut records = golden_records(&g);
    records.push((RecordKind::MAC, golden_tag(&g)));
    records.push((RecordKind::MAC, golden_tag(&g)));
    let s = raw_stream(&AUTH_HEADER, &records);
    // The first MAC record is the genuine one (same bytes, same place) and verifies.
    let mut dec = keyed(&golden_key());
    let e = decode_with(&mut dec, &s, &[7]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::RecordAfterMac));
    assert_eq!(e.offset(), END_AT as u64);
    // Verbatim duplicate (same index): refused by the record order already.
    let dup = [&g[..END_AT], &g[MAC_AT..]].concat();
    assert!(decode_keyed(&dup, &golden_key(), &[usize::MAX]).is_err());
}

#[test]
fn unauthenticated_stream_refused_by_keyed_decoder() {
    let plain = skeleton(usize::MAX >> 40);
    let mut dec = keyed(&golden_key());
    assert!(dec.requires_authentication());
    // Refused before the header is reported: the consumer never sees the stream.
    let e = dec.feed(&plain).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::NotAuthenticated));
    assert_eq!((e.offset(), e.fault()), (0, Fault::Stream));
    assert_eq!(dec.finish(), Err(e));
    // The plain decoder still reads it.
    assert!(decode(&plain, &[1]).is_ok());
}

#[test]
fn authenticated_stream_refused_by_keyless_decoder() {
    let g = golden_stream();
    let mut dec = Decoder::new(Limits::DEFAULT);
    assert!(!dec.requires_authentication());
    let e = dec.feed(&g).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::KeyRequired));
    assert_eq!((e.offset(), e.fault()), (0, Fault::Local));
    assert_eq!(decode(&g, &[1]).unwrap_err(), e);
}

#[test]
fn mac_record_in_unauthenticated_stream_refused() {
    let g = golden_stream();
    let mut records = golden_records(&g);
    records.push((RecordKind::MAC, golden_tag(&g)));
    let s = raw_stream(&HEADER, &records);
    let e = decode(&s, &[usize::MAX]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::UnexpectedMac));
    assert_eq!(e.offset(), MAC_AT as u64);
    // A MAC record of the wrong length or version is refused before its tag is looked at.
    let mut records = golden_records(&g);
    records.push((RecordKind::MAC, vec![0; 31]));
    let s = raw_stream(&AUTH_HEADER, &records);
    let e = decode_keyed(&s, &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::BadRoundOrEnd {
            expected: 32,
            len: 31
        }
    );
}

#[test]
fn tag_binds_the_stream_id() {
    let g = golden_stream();
    let other_id = StreamHeaderRepr {
        stream_id: HEADER.stream_id ^ 1,
        ..HEADER
    };
    let s = auth_stream(&golden_key(), &other_id, 4096);
    assert_ne!(golden_tag(&s), golden_tag(&g));
    // A tag computed over these very bytes but with the key of another stream id fails: the
    // stream id enters the key, not only the covered header.
    let mut mac = StreamMac::new(&golden_key(), HEADER.stream_id);
    mac.update(&s[..MAC_AT]);
    let mut forged = s.clone();
    forged[MAC_AT + 16..END_AT].copy_from_slice(&mac.tag());
    let forged = reseal(&forged).unwrap();
    let e = decode_keyed(&forged, &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::BadTag));
    // And with the right stream id it is exactly the encoder's tag.
    let mut mac = StreamMac::new(&golden_key(), other_id.stream_id);
    mac.update(&s[..MAC_AT]);
    assert!(mac.verify(&mac.tag()));
    assert_eq!(mac.tag().to_vec(), golden_tag(&s));
}

#[test]
fn encoder_auth_misuse() {
    let key = golden_key();
    let mut enc = Encoder::with_key(&key, mac_storage());
    let mut buf = vec![0u8; 8192];
    // Before the header nothing changes, and END is refused like a plain encoder does.
    assert_eq!(enc.write_end(&mut buf), Err(EncodeError::HeaderNotWritten));
    let mut at = enc.write_header(&HEADER, &mut buf).unwrap().written();
    for kind in [RecordKind::END, RecordKind::MAC] {
        assert_eq!(
            enc.write_record(kind, RecordFlags::MANDATORY, 1, &[0u8; 16], &mut buf[at..]),
            Err(EncodeError::AuthRecord)
        );
    }
    // write_end with room for exactly the MAC record: Partial, then nothing but END.
    let p = enc.write_end(&mut buf[at..at + 48]).unwrap();
    assert_eq!(p, Progress::Partial(48));
    at += 48;
    assert_eq!(
        enc.write_record(
            RecordKind::REGISTERS,
            RecordFlags::MANDATORY,
            1,
            &[0u8; 4],
            &mut buf[at..]
        ),
        Err(EncodeError::AuthRecord)
    );
    at += enc.write_end(&mut buf[at..]).unwrap().written();
    assert!(enc.is_finished());
    let ev = decode_keyed(&buf[..at], &key, &[1]).unwrap();
    assert_eq!(&ev[1..], &[Ev::Authenticated(0), ev[2].clone()]);
    // A record in progress is not interrupted by write_end.
    let mut enc = Encoder::with_key(&key, mac_storage());
    let mut at = enc.write_header(&HEADER, &mut buf).unwrap().written();
    let p = enc
        .write_record(
            RecordKind::REGISTERS,
            RecordFlags::MANDATORY,
            1,
            &[7u8; 64],
            &mut buf[at..at + 20],
        )
        .unwrap();
    at += p.written();
    assert_eq!(
        enc.write_end(&mut buf[at..]),
        Err(EncodeError::RecordMismatch)
    );
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let key = AuthKey::new([0x42; 32]);
    let dbg = std::format!(
        "{key:?} {:?} {:?}",
        Encoder::with_key(&key, mac_storage()),
        keyed(&key)
    );
    assert!(dbg.contains("AuthKey(..)"));
    assert!(!dbg.contains("66, 66"), "key bytes in {dbg}");
    let g = golden_stream();
    let mut dec = keyed(&golden_key());
    // Stop right after the MAC record header: the expected tag is held, and not shown.
    let _ = feed_all_with(&mut dec, &g[..MAC_AT + 16], usize::MAX);
    let dbg = std::format!("{dec:?}");
    assert!(dbg.contains("Sealed"), "{dbg}");
    let tag = golden_tag(&g);
    assert!(!dbg.contains(&std::format!("{}, {}, {}", tag[0], tag[1], tag[2])));
}

/// A larger stream: FULL pages across several records (each longer than the 256 KiB MAC
/// batch of `feed_all`), an unknown optional record (skipped), a DELTA run and opaque payloads.
fn big_stream(key: &AuthKey) -> Vec<u8> {
    let mut enc = Encoder::with_key(key, mac_storage());
    let mut out = vec![0u8; 2 << 20];
    let mut at = enc.write_header(&HEADER, &mut out).unwrap().written();
    let full = [PageRunRepr {
        first_frame: 100,
        count: 70,
        encoding: PageEncoding::FULL,
    }];
    let pages = PagesPayload::new(&full, super::page_fill).unwrap();
    for i in 0..3u8 {
        at += enc
            .write_record(
                RecordKind::PAGES,
                RecordFlags::MANDATORY,
                1,
                &pages,
                &mut out[at..],
            )
            .unwrap()
            .written();
        at += enc
            .write_record(
                RecordKind(0x0123),
                RecordFlags::NONE,
                1,
                &[i; 300],
                &mut out[at..],
            )
            .unwrap()
            .written();
        at += enc
            .write_record(
                RecordKind::REGISTERS,
                RecordFlags::MANDATORY,
                1,
                &[i; 5000],
                &mut out[at..],
            )
            .unwrap()
            .written();
    }
    at += enc
        .write_record(
            RecordKind::PAGES,
            RecordFlags::MANDATORY,
            1,
            &super::encodings_payload()[..],
            &mut out[at..],
        )
        .unwrap()
        .written();
    at += enc.write_end(&mut out[at..]).unwrap().written();
    out.truncate(at);
    out
}

#[test]
fn feed_all_batches_the_mac_and_agrees_with_feed() {
    let key = golden_key();
    let s = big_stream(&key);
    let want = decode_keyed(&s, &key, &[usize::MAX]).unwrap();
    assert!(matches!(want[want.len() - 2], Ev::Authenticated(_)));
    for seg in [1, 100, 4095, 4112, 70_000, 300_000, usize::MAX] {
        assert_eq!(
            feed_all_with(&mut keyed(&key), &s, seg).unwrap(),
            want,
            "{seg}"
        );
    }
    // One forged page byte (CRCs repaired) in the first or the second batch of a record is
    // caught at the MAC.
    for at in [50_000, 270_000] {
        let mut b = s.clone();
        b[80 + 16 + 16 + at] ^= 0x20;
        let forged = reseal(&b).unwrap();
        for seg in [usize::MAX, 1000] {
            let e = feed_all_with(&mut keyed(&key), &forged, seg).unwrap_err();
            assert_eq!(auth_err(&e), Some(AuthError::BadTag), "{at} {seg}");
        }
    }
}

#[test]
fn feed_all_sink_error_keeps_the_mac_in_step() {
    let key = golden_key();
    let s = big_stream(&key);
    let want = decode_keyed(&s, &key, &[usize::MAX]).unwrap();
    // A sink that refuses every 7th event: the decoder stays usable and the MAC still
    // verifies once the caller feeds the rest.
    let mut dec = keyed(&key);
    let mut events = Vec::new();
    let mut n = 0u32;
    let mut at = 0;
    while at < s.len() {
        let r = dec.feed_all(&s[at..], |ev| {
            n += 1;
            push(&mut events, ev);
            if n.is_multiple_of(7) { Err(()) } else { Ok(()) }
        });
        match r {
            Ok(k) => at += k,
            Err(FeedError::Sink(())) => at = dec.position() as usize,
            Err(FeedError::Decode(e)) => panic!("{e}"),
        }
    }
    dec.finish().unwrap();
    assert_eq!(events, want);
}

#[test]
fn fuzz_body_roundtrip_authenticated() {
    crate::fuzzing::decode_arbitrary_authenticated(&[0]);
    let mut whole = vec![0u8];
    whole.extend_from_slice(&golden_stream());
    crate::fuzzing::decode_arbitrary_authenticated(&whole);
    crate::fuzzing::roundtrip_authenticated(&[]);
    crate::fuzzing::roundtrip_authenticated(&[0]);
    let g = golden_stream();
    for step in [0u8, 6, 15, 255] {
        let mut d = vec![step];
        d.extend_from_slice(&g);
        crate::fuzzing::roundtrip_authenticated(&d);
    }
}

proptest::proptest! {
    #[test]
    fn any_segmentation_verifies(segs in proptest::collection::vec(1usize..300, 1..20)) {
        let g = golden_stream();
        let want = golden_events(stream_crc_of(&g));
        proptest::prop_assert_eq!(decode_keyed(&g, &golden_key(), &segs).unwrap(), want);
    }

    #[test]
    fn fuzz_roundtrip_authenticated_any(data in proptest::collection::vec(0u8.., 0..400)) {
        crate::fuzzing::roundtrip_authenticated(&data);
    }

    #[test]
    fn fuzz_decode_authenticated_mutated_golden(pos in 0usize..212, val: u8, step: u8, cut in 0usize..230) {
        let mut d = vec![step];
        d.extend_from_slice(&golden_stream());
        if let Some(b) = d.get_mut(pos + 1) {
            *b = val;
        }
        d.truncate(cut.max(1));
        crate::fuzzing::decode_arbitrary_authenticated(&d);
    }
}

/// SPEC.md §3.2: the key rules (§10.4 rule 1) are step 9, after the header's own checks, so an
/// unsupported page size is reported as such whatever key the reader holds.
#[test]
fn header_checks_come_before_the_key_rules() {
    for (header, keyed_reader) in [(AUTH_HEADER, false), (HEADER, true)] {
        let mut h = header;
        h.identity.page_shift = 13;
        let mut b = [0u8; 80];
        h.emit(&mut b);
        let mut dec = if keyed_reader {
            keyed(&golden_key())
        } else {
            Decoder::new(Limits::DEFAULT)
        };
        let e = dec.feed(&b).unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (ErrorKind::UnsupportedPageSize { page_shift: 13 }, 0),
            "keyed reader: {keyed_reader}"
        );
        // With page_shift 12 the same header meets the key rule.
        let mut b = [0u8; 80];
        header.emit(&mut b);
        let want = if keyed_reader {
            AuthError::NotAuthenticated
        } else {
            AuthError::KeyRequired
        };
        let mut dec = if keyed_reader {
            keyed(&golden_key())
        } else {
            Decoder::new(Limits::DEFAULT)
        };
        assert_eq!(auth_err(&dec.feed(&b).unwrap_err()), Some(want));
    }
}

/// SPEC.md §5: step 5a (the MAC-record rules) before step 6 (`UnknownMandatory`): an unknown
/// mandatory record after the MAC record is `RecordAfterMac`, a malformed stream (the stream's fault),
/// not a kind the reader lacks.
#[test]
fn mac_rules_come_before_unknown_mandatory() {
    let g = golden_stream();
    let mut records = golden_records(&g);
    let mut h = [0u8; 80];
    AUTH_HEADER.emit(&mut h);
    let mut mac = StreamMac::after_header(&golden_key(), &h).unwrap();
    for (i, (kind, payload)) in records.iter().enumerate() {
        mac.update(&record(*kind, 1, 1, i as u32, payload));
    }
    records.push((RecordKind::MAC, mac.tag().to_vec()));
    let unknown = RecordKind(0x0777);
    records.push((unknown, b"later".to_vec()));
    let s = raw_stream(&AUTH_HEADER, &records);
    let e = decode_keyed(&s, &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(auth_err(&e), Some(AuthError::RecordAfterMac));
    assert_eq!((e.offset(), e.fault()), (END_AT as u64, Fault::Stream));
    // Before the MAC record the same record is an unknown mandatory kind.
    let mut records = golden_records(&g);
    records.insert(1, (unknown, b"later".to_vec()));
    let s = raw_stream(&AUTH_HEADER, &records);
    let e = decode_keyed(&s, &golden_key(), &[usize::MAX]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownMandatory { kind: unknown });
}

/// SPEC.md §10.2 and §10.4 rule 2.4: in an authenticated stream the MAC record and END carry
/// exactly `MANDATORY` (they are outside the MAC, so no other value may pass).
#[test]
fn mac_and_end_flags_other_than_mandatory_are_refused() {
    let g = golden_stream();
    for (at, flags) in [(MAC_AT, 0x00u8), (END_AT, 0x00)] {
        let mut s = g.clone();
        s[at + 2] = flags;
        let s = reseal(&s).unwrap();
        let e = decode_keyed(&s, &golden_key(), &[usize::MAX]).unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (ErrorKind::BadFlags { flags }, at as u64),
            "record at {at}"
        );
    }
}

#[test]
fn an_unknown_optional_record_is_authenticated_through_feed_all_too() {
    // The skipped record's bytes are part of the MAC (SPEC.md §10.3: every byte before the MAC
    // record) whether the stream is decoded with `feed` or with `feed_all`.
    let key = golden_key();
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut enc = Encoder::with_key(&key, mac_storage());
    let mut run = |f: &mut super::WriteFn<'_>| loop {
        let p = f(&mut enc, &mut buf).unwrap();
        stream.extend_from_slice(&buf[..p.written()]);
        if p.is_done() {
            break;
        }
    };
    run(&mut |e, o| e.write_header(&HEADER, o));
    run(&mut |e, o| e.write_record(super::UNKNOWN, RecordFlags(0), 1, &b"optional"[..], o));
    run(&mut |e, o| {
        e.write_record(
            RecordKind::CONFIG_SPACE,
            RecordFlags::MANDATORY,
            1,
            &b"cfg!"[..],
            o,
        )
    });
    run(&mut |e, o| e.write_end(o));
    let by_feed = decode_keyed(&stream, &key, &[5]).unwrap();
    assert!(by_feed.contains(&Ev::Skipped(super::UNKNOWN, 8)));
    for seg in [1, 7, 16, 4096] {
        let got = feed_all_with(&mut keyed(&key), &stream, seg).unwrap();
        assert_eq!(got, by_feed, "feed_all {seg}");
    }
}
