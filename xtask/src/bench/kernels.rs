//! The kernel benchmarks (B1-B11, B13): each function measures one kernel of the real crates
//! beside its same-run reference (4 KiB-granular memcpy of the same number of bytes); the targets
//! are listed in the README's "Benchmarks".
//!
//! Every benchmark checks its own output once (decoded bytes equal the source, harvests
//! count the bits that were set, ...) and fails the run on a mismatch: a figure for a broken
//! kernel is worse than none.
//!
//! Data: random (incompressible) pages, 256 MiB in full mode (DRAM-bound: larger than any
//! last-level cache of the build machines) and 8 MiB with `--quick` (cache-resident: a smoke
//! run, not a measurement). The dirty bitmap (B5) and the GGTT (B7) have fixed sizes.

use std::hint::black_box;
use std::time::Duration;

use gmem::{DirtyBitmap, is_zero_page, page_hash, words_for};
use gtt::{
    Generation, Gfn, GgttSlices, GmAddr, GmRange, GuestFrames, Partition, SaveCursor, apply_runs,
    replace_runs, validate_runs_in,
};
use migstream::{
    CONTROL_VERSION, Crc32, DeviceIdentity, EncodeError, Encoder, Event, FORMAT_MINOR, Limits,
    PAGE_SHIFT, PageEncoding, PageRunRepr, PagesPayload, Progress, RecordFlags, RecordKind,
    SlicePages, StreamHeaderRepr,
};

use sim::Rng;

use super::harness::{Figure, Harness, copy_whole, gib_s, random_pages};

/// Bytes in a page.
const PAGE: usize = 4096;
/// Pages of the main buffer in full mode: 256 MiB.
const FULL_PAGES: usize = 65_536;
/// Pages of the main buffer in quick mode: 8 MiB.
const QUICK_PAGES: usize = 2_048;
/// Seed of the random page contents.
const SEED: u64 = 0x5EED_0001;
/// Pages per PAGES record for contiguous data (B1, B3): a 256 KiB payload, so the encoder's
/// CRC pass over a record it has just written reads it back from L2, not DRAM.
const RECORD_PAGES: usize = 64;
/// Largest payload the benchmarks put into one PAGES record: `RECORD_PAGES` pages, each with
/// a run header in the worst case (isolated dirty pages).
const RECORD_BUDGET: u64 = (RECORD_PAGES * (PAGE + migstream::PAGE_RUN_HEADER_LEN)) as u64;
/// Bytes written between two B2 iterations to push the source pages out of the caches.
const EVICT_FULL: usize = 64 << 20;
/// Same, quick mode.
const EVICT_QUICK: usize = 8 << 20;
/// Bits of the B5 dirty bitmap: 1 GiB of 4 KiB frames.
const HARVEST_BITS: usize = 262_144;
/// GGTT entries of B7: a 4 GiB graphics-memory space.
const GGTT_ENTRIES: usize = 1 << 20;
/// GGTT entries in the aperture slice (256 MiB); the rest are in the hidden slice.
const GGTT_APERTURE_ENTRIES: usize = 1 << 16;
/// Guest RAM frames the GGTT entries point into (4 GiB).
const GUEST_FRAMES: u64 = 1 << 20;

/// `true` with probability `per_million / 1e6`, from the workspace's generator (every run
/// measures the same data).
fn chance(rng: &mut Rng, per_million: u64) -> bool {
    rng.next_u64() % 1_000_000 < per_million
}

/// Run every kernel benchmark the filter selects, in catalogue order.
pub(crate) fn all(h: &mut Harness) -> crate::Result {
    let pages = if h.quick { QUICK_PAGES } else { FULL_PAGES };
    println!(
        "buffers: {} MiB of random pages (B1-B3, B6, B11), {} MiB of zero pages (B4); \
         bitmap {HARVEST_BITS} bits (B5); GGTT {GGTT_ENTRIES} entries (B7)",
        (pages * PAGE) >> 20,
        (pages * PAGE) >> 20,
    );
    println!(
        "{:<4} {:<44} {:>14}  {:>17}  {:>12} {:<16} note",
        "id", "benchmark", "kernel", "reference", "ratio", "target"
    );

    // The random source pages (B1-B3, B6) and a resident destination of the same size.
    let wants_pages = ["B0", "B1", "B2", "B3", "B6", "B11"]
        .iter()
        .any(|id| h.wants(id));
    let mut data = wants_pages.then(|| {
        let src = random_pages(pages, SEED);
        // Filled (not calloc'd) so every destination page is resident before timing.
        let dst = vec![0xA5u8; src.len()];
        (src, dst)
    });
    if let Some((src, dst)) = &mut data {
        if h.wants("B0") {
            whole_copy(h, src, dst);
        }
        // B1's stream is B3's input.
        let mut stream = Vec::new();
        let mut len = 0;
        if h.wants("B1") || h.wants("B3") {
            stream = vec![0u8; stream_capacity(pages)];
            len = encode_seq(h, src, dst, &mut stream)?;
        }
        if h.wants("B2") {
            encode_scattered(h, src, dst)?;
        }
        if h.wants("B3") {
            decode_apply(h, src, dst, stream.get(..len).unwrap_or_default())?;
        }
    }
    if h.wants("B4") {
        zero_page(h, pages)?;
    }
    dirty_harvest(h)?;
    if let Some((src, dst)) = &mut data
        && h.wants("B6")
    {
        hash_detect(h, src, dst)?;
    }
    if h.wants_group("B7") {
        pte_codec(h)?;
    }
    if let Some((src, dst)) = &mut data
        && h.wants("B11")
    {
        checksum(h, src, dst)?;
    }
    if h.wants_group("B13") {
        // The same random pages as B1-B11 (made here when only B13 runs).
        match &mut data {
            Some((src, dst)) => stream_mac(h, src, dst)?,
            None => {
                let src = random_pages(pages, SEED);
                let mut dst = vec![0xA5u8; src.len()];
                stream_mac(h, &src, &mut dst)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Run `f` under [`Harness::time`]; the first error any call returns fails the benchmark.
fn time_fallible<T>(
    h: &Harness,
    mut f: impl FnMut() -> crate::Result<T>,
) -> crate::Result<(Duration, T)> {
    let mut failure = None;
    let mut last = None;
    let d = h.time(|| match f() {
        Ok(v) => last = Some(black_box(v)),
        Err(e) => {
            failure.get_or_insert(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let v = last.ok_or("kernel never ran")?;
    Ok((d, v))
}

/// [`Harness::time_with_setup`]: `setup` runs untimed before every timed `kernel` call.
fn time_with_setup<S>(
    h: &Harness,
    state: &mut S,
    setup: impl FnMut(&mut S),
    kernel: impl FnMut(&mut S),
) -> Duration {
    h.time_with_setup(state, setup, kernel)
}

/// A figure from a measured kernel time; `record` fills in the ratio.
fn figure(
    id: &str,
    what: &str,
    bytes: u64,
    d: Duration,
    reference: f64,
    target: Option<f64>,
    note: String,
) -> Figure {
    Figure {
        id: id.to_owned(),
        what: what.to_owned(),
        bytes,
        gib_s: gib_s(bytes, d),
        reference_gib_s: reference,
        ratio: 0.0,
        target_ratio: target,
        note,
    }
}

/// Operations per second, in billions.
fn giga_per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-12) / 1e9
}

/// Upper bound of the stream produced for `pages` pages by any benchmark here: every page in
/// its own run and record in the worst case, plus stream header and END.
fn stream_capacity(pages: usize) -> usize {
    pages * (PAGE + 2 * 16) + 4096
}

/// The stream header of every benchmark stream.
fn stream_header() -> StreamHeaderRepr {
    StreamHeaderRepr {
        minor: FORMAT_MINOR,
        flags: 0,
        identity: DeviceIdentity {
            pci_vendor: 0x8086,
            pci_device: 0x1912,
            generation: 9,
            fence_count: 32,
            aperture_base: 0,
            aperture_size: 1 << 28,
            hidden_base: 1 << 32,
            hidden_size: 1 << 30,
            page_shift: PAGE_SHIFT,
        },
        stream_id: 0xBE4C,
    }
}

/// Bytes written by an encoder call that must complete in one go (the output is large enough).
fn done(p: Result<Progress, EncodeError>) -> crate::Result<usize> {
    match p {
        Ok(Progress::Done(n)) => Ok(n),
        Ok(Progress::Partial(_)) => Err("benchmark stream buffer too small".to_owned()),
        Err(e) => Err(format!("encode: {e}")),
    }
}

/// Encode a whole stream: header, `runs` as PAGES records of at most [`RECORD_BUDGET`]
/// payload bytes (runs in order, each run whole), END. Page bytes come from `src`
/// (frame `f` is `src[f * 4096..]`, read through [`SlicePages`], whose pages the encoder copies
/// and checksums in one pass). Returns the stream length.
fn encode_runs(src: &[u8], runs: &[PageRunRepr], out: &mut [u8]) -> crate::Result<usize> {
    let source = SlicePages::new(src, 0);
    let mut enc = Encoder::new();
    let mut at = done(enc.write_header(&stream_header(), out))?;
    let mut rest = runs;
    while !rest.is_empty() {
        let mut take = 0;
        let mut len = 0u64;
        for r in rest {
            if take > 0 && len + r.wire_len() > RECORD_BUDGET {
                break;
            }
            len += r.wire_len();
            take += 1;
        }
        let (record, tail) = rest.split_at(take);
        let payload =
            PagesPayload::new(record, source).map_err(|e| format!("pages payload: {e}"))?;
        at += done(enc.write_record(
            RecordKind::PAGES,
            RecordFlags::MANDATORY,
            CONTROL_VERSION,
            &payload,
            &mut out[at..],
        ))?;
        rest = tail;
    }
    at += done(enc.write_end(&mut out[at..]))?;
    Ok(at)
}

/// What [`decode_into`] applied.
#[derive(Default, Clone, Copy)]
struct Applied {
    /// FULL page bytes copied.
    page_bytes: u64,
    /// Pages zeroed by ZERO runs.
    zero_pages: u64,
    /// PAGES records verified.
    records: u64,
}

/// Decode a whole stream (every CRC and the END totals verified) and apply its pages to
/// `dst` (frame `f` at `dst[f * 4096..]`): FULL data copied, ZERO runs filled with zeros.
fn decode_into(stream: &[u8], dst: &mut [u8]) -> crate::Result<Applied> {
    let mut dec = migstream::Decoder::new(Limits::DEFAULT);
    let mut applied = Applied::default();
    let outside = || "decoded page outside the destination buffer".to_owned();
    // `feed_all` folds each page into the record CRC as it hands it out (then in cache for the copy).
    dec.feed_all(stream, |event| {
        match event {
            Event::PageData {
                frame,
                offset,
                data,
            } => {
                let at = usize::try_from(frame)
                    .ok()
                    .and_then(|f| f.checked_mul(PAGE)?.checked_add(usize::from(offset)))
                    .ok_or_else(outside)?;
                let end = at.checked_add(data.len()).ok_or_else(outside)?;
                dst.get_mut(at..end)
                    .ok_or_else(outside)?
                    .copy_from_slice(data);
                applied.page_bytes += data.len() as u64;
            }
            Event::ZeroPages { first_frame, count } => {
                let at = usize::try_from(first_frame)
                    .ok()
                    .and_then(|f| f.checked_mul(PAGE))
                    .ok_or_else(outside)?;
                let end = (count as usize)
                    .checked_mul(PAGE)
                    .and_then(|n| at.checked_add(n))
                    .ok_or_else(outside)?;
                dst.get_mut(at..end).ok_or_else(outside)?.fill(0);
                applied.zero_pages += u64::from(count);
            }
            Event::RecordEnd {
                kind: RecordKind::PAGES,
                ..
            } => applied.records += 1,
            _ => {}
        }
        Ok::<(), String>(())
    })
    .map_err(|e| format!("decode: {e}"))?;
    dec.finish().map_err(|e| format!("decode: {e}"))?;
    Ok(applied)
}

/// The contiguous runs of pages `0..pages`, [`RECORD_PAGES`] pages each.
fn contiguous_runs(pages: usize) -> Vec<PageRunRepr> {
    (0..pages)
        .step_by(RECORD_PAGES)
        .map(|first| PageRunRepr {
            first_frame: first as u64,
            count: RECORD_PAGES.min(pages - first) as u32,
            encoding: PageEncoding::FULL,
        })
        .collect()
}

fn check(ok: bool, what: &str) -> crate::Result {
    if ok {
        Ok(())
    } else {
        Err(format!("self-check failed: {what}"))
    }
}

// ---------------------------------------------------------------------------------------------
// B0: the reference itself, beside one memcpy call of the whole buffer
// ---------------------------------------------------------------------------------------------

/// B0: context, not a kernel. The reference of every figure is a page-by-page memcpy (one call
/// a 4 KiB page, as the codec copies); this prints what one `memcpy` call of the same buffer
/// achieves, which glibc runs with non-temporal stores past a size threshold. The codec cannot
/// make that call (its pages are scattered frames), so it is context only.
fn whole_copy(h: &mut Harness, src: &[u8], dst: &mut [u8]) {
    let reference = h.reference(src, dst);
    let d = h.time(|| {
        copy_whole(src, dst);
        black_box(&mut *dst);
    });
    h.record(figure(
        "B0",
        "memcpy, whole buffer in one call (context)",
        src.len() as u64,
        d,
        reference,
        None,
        "the reference of every other figure is memcpy 4 KiB a call".to_owned(),
    ));
}

// ---------------------------------------------------------------------------------------------
// B1, B3: sequential pages through the stream
// ---------------------------------------------------------------------------------------------

/// B1 `encode_pages_seq`; leaves the encoded stream in `stream` and returns its length.
fn encode_seq(
    h: &mut Harness,
    src: &[u8],
    dst: &mut [u8],
    stream: &mut [u8],
) -> crate::Result<usize> {
    let pages = src.len() / PAGE;
    let runs = contiguous_runs(pages);
    let measured = if h.wants("B1") {
        let reference = h.reference(src, dst);
        let (d, len) = time_fallible(h, || encode_runs(src, &runs, stream))?;
        Some((reference, d, len))
    } else {
        None
    };
    let len = match measured {
        Some((_, _, len)) => len,
        None => encode_runs(src, &runs, stream)?,
    };
    // Self-check: the stream decodes (CRCs, END totals) back to exactly the source pages.
    dst.fill(0);
    let applied = decode_into(&stream[..len], dst)?;
    check(dst == src, "B1 stream does not decode to the source pages")?;
    check(applied.records == runs.len() as u64, "B1 record count")?;
    if let Some((reference, d, _)) = measured {
        let payload = src.len() as u64;
        let overhead = (len as f64 / payload as f64 - 1.0) * 100.0;
        h.record(figure(
            "B1",
            "encode_pages_seq (PAGES records, CRC32)",
            payload,
            d,
            reference,
            Some(0.90),
            format!(
                "framing +{overhead:.4}% ({} records of {RECORD_PAGES} pages)",
                runs.len()
            ),
        ));
    }
    Ok(len)
}

/// B3 `decode_apply` of the stream B1 produced.
fn decode_apply(h: &mut Harness, src: &[u8], dst: &mut [u8], stream: &[u8]) -> crate::Result {
    let reference = h.reference(src, dst);
    dst.fill(0);
    let (d, applied) = time_fallible(h, || decode_into(stream, dst))?;
    check(
        applied.page_bytes == src.len() as u64,
        "B3 decoded byte count",
    )?;
    check(dst == src, "B3 destination differs from the source pages")?;
    h.record(figure(
        "B3",
        "decode_apply (CRC verify + copy to frames)",
        src.len() as u64,
        d,
        reference,
        Some(0.80),
        format!(
            "{} records, {} MiB of wire",
            applied.records,
            stream.len() >> 20
        ),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B2: scattered dirty pages
// ---------------------------------------------------------------------------------------------

/// Harvest `bitmap` into runs of consecutive dirty frames (each at most [`RECORD_PAGES`]).
fn harvest_runs(bitmap: &mut DirtyBitmap<'_>, runs: &mut Vec<PageRunRepr>) {
    runs.clear();
    bitmap.harvest_each(|bit| {
        let frame = bit as u64;
        if let Some(last) = runs.last_mut()
            && last.first_frame + u64::from(last.count) == frame
            && (last.count as usize) < RECORD_PAGES
        {
            last.count += 1;
        } else {
            runs.push(PageRunRepr {
                first_frame: frame,
                count: 1,
                encoding: PageEncoding::FULL,
            });
        }
    });
}

/// State of one B2 iteration.
struct Scattered<'b> {
    bitmap: DirtyBitmap<'b>,
    runs: Vec<PageRunRepr>,
    evict: Vec<u8>,
    round: u8,
    len: crate::Result<usize>,
}

/// B2 `encode_pages_scattered`: harvest a 10%-dirty bitmap, encode the dirty pages, with the
/// caches flushed before every iteration.
fn encode_scattered(h: &mut Harness, src: &[u8], dst: &mut [u8]) -> crate::Result {
    let pages = src.len() / PAGE;
    let mut rng = Rng::new(SEED ^ 0xB2);
    let dirty: Vec<usize> = (0..pages).filter(|_| chance(&mut rng, 100_000)).collect();
    let dirty_bytes = dirty.len() * PAGE;
    let stream = &mut vec![0u8; stream_capacity(dirty.len())][..];

    let mut storage = vec![0u64; words_for(pages)];
    let mut st = Scattered {
        bitmap: DirtyBitmap::new(&mut storage, pages).map_err(|e| format!("bitmap: {e}"))?,
        runs: Vec::with_capacity(pages),
        evict: vec![0u8; if h.quick { EVICT_QUICK } else { EVICT_FULL }],
        round: 0,
        len: Ok(0),
    };
    // The reference is memcpy of the same bytes under the same conditions: the same scattered
    // dirty pages, gathered page by page into a contiguous buffer, with the caches flushed by
    // the same eviction pass before every iteration. (A contiguous copy of as many bytes, warm,
    // ran at twice the gather's rate here: it measured the cache, not the encoder.)
    let gather = &mut dst[..dirty_bytes];
    let reference = gib_s(
        dirty_bytes as u64,
        h.time_with_setup_as(
            true,
            &mut st,
            |st| {
                st.round = st.round.wrapping_add(1);
                st.evict.fill(st.round);
                black_box(&mut st.evict);
            },
            |_| {
                for (&page, d) in dirty.iter().zip(gather.chunks_exact_mut(PAGE)) {
                    if let Some(s) = src.get(page * PAGE..(page + 1) * PAGE) {
                        black_box(&mut *d).copy_from_slice(s);
                    }
                }
                black_box(&mut *gather);
            },
        ),
    );
    let d = time_with_setup(
        h,
        &mut st,
        |st| {
            for &bit in &dirty {
                if st.bitmap.set(bit).is_err() {
                    st.len = Err("B2 bitmap set out of range".to_owned());
                }
            }
            st.round = st.round.wrapping_add(1);
            st.evict.fill(st.round);
            black_box(&mut st.evict);
        },
        |st| {
            harvest_runs(&mut st.bitmap, &mut st.runs);
            if st.len.is_ok() {
                st.len = encode_runs(src, &st.runs, stream);
            }
        },
    );
    let len = st.len.clone()?;
    let runs = st.runs.len();

    // Self-check: decoding yields exactly the dirty pages (byte-equal), nothing else.
    dst.fill(0);
    let applied = decode_into(&stream[..len], dst)?;
    check(
        applied.page_bytes == dirty_bytes as u64,
        "B2 decoded byte count",
    )?;
    check(st.bitmap.count() == 0, "B2 harvest left bits set")?;
    let mut next = dirty.iter().peekable();
    for (i, (d_page, s_page)) in dst
        .chunks_exact(PAGE)
        .zip(src.chunks_exact(PAGE))
        .enumerate()
    {
        if next.peek() == Some(&&i) {
            next.next();
            check(d_page == s_page, "B2 dirty page decoded wrongly")?;
        } else {
            check(d_page.iter().all(|&b| b == 0), "B2 clean page was sent")?;
        }
    }

    let overhead = (len as f64 / dirty_bytes as f64 - 1.0) * 100.0;
    h.record(figure(
        "B2",
        "encode_pages_scattered (10% dirty, cold cache)",
        dirty_bytes as u64,
        d,
        reference,
        Some(0.40),
        format!(
            "{} dirty pages in {runs} runs, framing +{overhead:.2}%",
            dirty.len()
        ),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B4: zero pages
// ---------------------------------------------------------------------------------------------

/// Scan `buf` page by page and collect its zero pages as ZERO runs; returns the number of
/// non-zero pages (which a real sender would encode as FULL runs).
fn zero_runs(buf: &[u8], runs: &mut Vec<PageRunRepr>) -> usize {
    runs.clear();
    let (pages, _) = buf.as_chunks::<PAGE>();
    let mut nonzero = 0;
    for (i, page) in pages.iter().enumerate() {
        if !is_zero_page(page) {
            nonzero += 1;
            continue;
        }
        let frame = i as u64;
        if let Some(last) = runs.last_mut()
            && last.first_frame + u64::from(last.count) == frame
            && last.count < u32::MAX
        {
            last.count += 1;
        } else {
            runs.push(PageRunRepr {
                first_frame: frame,
                count: 1,
                encoding: PageEncoding::ZERO,
            });
        }
    }
    nonzero
}

/// B4 `zero_page`: detect zero pages and emit them as ZERO runs.
fn zero_page(h: &mut Harness, pages: usize) -> crate::Result {
    // Written, not calloc'd: untouched calloc memory reads the shared zero page from cache.
    let mut zero = vec![0xFFu8; pages * PAGE];
    zero.fill(0);
    let mut copy = vec![0xA5u8; pages * PAGE];
    // ZERO runs carry no page bytes: at worst one run header and one record header per page.
    let mut out = vec![0u8; pages * 32 + 4096];
    let mut runs = Vec::with_capacity(pages);

    // Self-check of the scan: one non-zero byte (at the end of a page) splits the run.
    let k = pages / 2;
    zero[k * PAGE + PAGE - 1] = 1;
    let nonzero = zero_runs(&zero, &mut runs);
    let want = [(0, k as u32), (k as u64 + 1, (pages - k - 1) as u32)];
    let got: Vec<(u64, u32)> = runs.iter().map(|r| (r.first_frame, r.count)).collect();
    check(
        nonzero == 1 && got == want,
        "B4 zero-run scan around a non-zero page",
    )?;
    zero[k * PAGE + PAGE - 1] = 0;

    let reference = h.reference(&zero, &mut copy);
    let (d, len) = time_fallible(h, || {
        let nonzero = zero_runs(&zero, &mut runs);
        if nonzero != 0 {
            return Err("B4 found a non-zero page".to_owned());
        }
        encode_runs(&zero, &runs, &mut out)
    })?;
    // Self-check: the stream zeroes exactly the pages of the buffer.
    copy.fill(0xA5);
    let applied = decode_into(&out[..len], &mut copy)?;
    check(
        applied.zero_pages == pages as u64 && applied.page_bytes == 0,
        "B4 zero page count",
    )?;
    check(
        copy.iter().all(|&b| b == 0),
        "B4 decoded pages not all zero",
    )?;

    h.record(figure(
        "B4",
        "zero_page (detect + ZERO runs)",
        (pages * PAGE) as u64,
        d,
        reference,
        Some(1.5),
        format!(
            "{:.4} B/zero page on wire ({len} B stream); isolated zero page: {} B",
            len as f64 / pages as f64,
            migstream::PAGE_RUN_HEADER_LEN
        ),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B5: dirty-bitmap harvest
// ---------------------------------------------------------------------------------------------

/// State of one B5 measurement.
struct Harvest<'b> {
    bitmap: DirtyBitmap<'b>,
    all: bool,
    setup_failed: bool,
    count: usize,
    sum: u64,
}

/// B5 `dirty_harvest` over 1 GiB of frames at 0.1%, 1% and 100% dirty. GiB/s columns are of
/// tracked memory; the reference is a memcpy of the bitmap's bytes, scaled the same way.
fn dirty_harvest(h: &mut Harness) -> crate::Result {
    let cases = [
        ("B5a", "dirty_harvest 1 GiB, 0.1% dirty", 1_000u64, 2.0),
        ("B5b", "dirty_harvest 1 GiB, 1% dirty", 10_000, 12.0),
        ("B5c", "dirty_harvest 1 GiB, 100% dirty", 1_000_000, 150.0),
    ];
    let tracked = (HARVEST_BITS * PAGE) as u64;
    let bitmap_bytes = words_for(HARVEST_BITS) * 8;
    let scale = tracked as f64 / bitmap_bytes as f64;
    for (id, what, per_million, target_us) in cases {
        if !h.wants(id) {
            continue;
        }
        let mut rng = Rng::new(SEED ^ per_million);
        let all = per_million >= 1_000_000;
        let dirty: Vec<usize> = (0..HARVEST_BITS)
            .filter(|_| all || chance(&mut rng, per_million))
            .collect();
        let want_sum: u64 = dirty.iter().map(|&b| b as u64).sum();

        let bytes_src = vec![0x5Au8; bitmap_bytes];
        let mut bytes_dst = vec![0u8; bitmap_bytes];
        let reference = h.reference(&bytes_src, &mut bytes_dst) * scale;

        let mut storage = vec![0u64; words_for(HARVEST_BITS)];
        let mut st = Harvest {
            bitmap: DirtyBitmap::new(&mut storage, HARVEST_BITS)
                .map_err(|e| format!("bitmap: {e}"))?,
            all,
            setup_failed: false,
            count: 0,
            sum: 0,
        };
        let d = time_with_setup(
            h,
            &mut st,
            |st| {
                let r = if st.all {
                    st.bitmap.set_range(0, HARVEST_BITS)
                } else {
                    dirty.iter().try_for_each(|&b| st.bitmap.set(b))
                };
                st.setup_failed |= r.is_err();
            },
            |st| {
                let (mut count, mut sum) = (0usize, 0u64);
                st.bitmap.harvest_each(|bit| {
                    count += 1;
                    sum += bit as u64;
                });
                st.count = black_box(count);
                st.sum = black_box(sum);
            },
        );
        check(!st.setup_failed, "B5 bitmap setup")?;
        check(
            st.count == dirty.len() && st.sum == want_sum,
            "B5 harvest reported the wrong bits",
        )?;
        check(st.bitmap.count() == 0, "B5 harvest left bits set")?;

        let us = d.as_secs_f64() * 1e6;
        h.record(figure(
            id,
            what,
            tracked,
            d,
            reference,
            None,
            format!(
                "{us:.2} µs (target <= {target_us} µs), {} bits, {:.2} G bits/s",
                dirty.len(),
                giga_per_s(dirty.len() as u64, d)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B6: page hashing
// ---------------------------------------------------------------------------------------------

/// Hash every page and compare with (and update) the previous hashes; returns the number of
/// changed pages and the first changed page.
fn detect_changes(src: &[u8], hashes: &mut [u64]) -> (usize, Option<usize>) {
    let (pages, _) = src.as_chunks::<PAGE>();
    let mut changed = 0;
    let mut first = None;
    for (i, (page, old)) in pages.iter().zip(hashes.iter_mut()).enumerate() {
        let h = page_hash(page);
        if h != *old {
            *old = h;
            changed += 1;
            first.get_or_insert(i);
        }
    }
    (changed, first)
}

/// B6 `hash_detect`: per-page xxh3-64 change detection over the buffer.
fn hash_detect(h: &mut Harness, src: &[u8], dst: &mut [u8]) -> crate::Result {
    let pages = src.len() / PAGE;
    let mut hashes = vec![0u64; pages];
    let (changed, _) = detect_changes(src, &mut hashes);
    check(changed == pages, "B6 first pass must see every page as new")?;
    let mut distinct = hashes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    check(distinct.len() == pages, "B6 random pages collided")?;

    // Self-check: one flipped byte is found, in the right page, and nothing else.
    let mut work = src.to_vec();
    let k = pages / 3;
    work[k * PAGE + 1234] ^= 0x10;
    check(
        detect_changes(&work, &mut hashes) == (1, Some(k)),
        "B6 missed a changed page",
    )?;
    work[k * PAGE + 1234] ^= 0x10;
    check(
        detect_changes(&work, &mut hashes) == (1, Some(k)),
        "B6 missed a restored page",
    )?;
    drop(work);

    let reference = h.reference(src, dst);
    let (d, (changed, _)) = time_fallible(h, || Ok(detect_changes(src, &mut hashes)))?;
    check(changed == 0, "B6 reported changes in an unchanged buffer")?;
    h.record(figure(
        "B6",
        "hash_detect (xxh3-64 per page, compare)",
        src.len() as u64,
        d,
        reference,
        None,
        "target >= 17 GiB/s (xxh3 stream ref: not a dep of xtask)".to_owned(),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B7: GGTT entries
// ---------------------------------------------------------------------------------------------

/// Random GGTT entries: ~98.4% present, mapping random guest frames (so no LINEAR runs),
/// the rest zero (holes that split runs).
fn random_ggtt(seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    (0..GGTT_ENTRIES)
        .map(|_| {
            let r = rng.next_u64();
            if r.is_multiple_of(64) {
                0
            } else {
                (((r >> 8) % GUEST_FRAMES) << 12) | 1
            }
        })
        .collect()
}

/// The B7 guest view: 256 MiB aperture at GM 0, the rest hidden right above it.
fn ggtt_partition() -> crate::Result<Partition> {
    let ap = (GGTT_APERTURE_ENTRIES * PAGE) as u64;
    let hidden = ((GGTT_ENTRIES - GGTT_APERTURE_ENTRIES) * PAGE) as u64;
    let e = |e: gtt::GttError| format!("partition: {e}");
    Partition::new(
        GmRange::new(GmAddr::new(0), ap).map_err(e)?,
        GmRange::new(GmAddr::new(ap), hidden).map_err(e)?,
    )
    .map_err(e)
}

/// B7 `pte_codec`: save the GGTT as runs; validate and apply them into a cleared GGTT.
fn pte_codec(h: &mut Harness) -> crate::Result {
    let partition = ggtt_partition()?;
    let mut src_storage = random_ggtt(SEED ^ 0xB7);
    let present = src_storage.iter().filter(|&&e| e != 0).count() as u64;
    let src = GgttSlices::new(partition, &mut src_storage).map_err(|e| format!("ggtt: {e}"))?;
    let mut dst_storage = vec![0u64; GGTT_ENTRIES];
    let mut dst = GgttSlices::new(partition, &mut dst_storage).map_err(|e| format!("ggtt: {e}"))?;
    let mut payload = vec![0u8; GGTT_ENTRIES * (8 + 16) + 64];
    let entry_bytes = (GGTT_ENTRIES * 8) as u64;
    let table_bytes: Vec<u8> = src.entries().iter().flat_map(|e| e.to_le_bytes()).collect();
    let mut copy = vec![0u8; table_bytes.len()];

    if h.wants("B7e") {
        let reference = h.reference(&table_bytes, &mut copy);
        let (d, _) = time_fallible(h, || {
            let p = src
                .save_runs(SaveCursor::START, &mut payload)
                .map_err(|e| format!("save_runs: {e}"))?;
            if p.next.is_some() {
                return Err("B7 payload buffer too small".to_owned());
            }
            Ok(p.written)
        })?;
        h.record(figure(
            "B7e",
            "pte_codec save_runs (random GGTT, RAW runs)",
            entry_bytes,
            d,
            reference,
            None,
            format!(
                "{:.2} G PTE/s (target >= 2)",
                giga_per_s(GGTT_ENTRIES as u64, d)
            ),
        ));
    }
    let saved = src
        .save_runs(SaveCursor::START, &mut payload)
        .map_err(|e| format!("save_runs: {e}"))?;
    check(saved.next.is_none(), "B7 payload buffer too small")?;
    let payload = &payload[..saved.written];

    // The destination's guest memory: one RAM span holding every frame the entries use.
    let ram = GuestFrames::from_ranges([(Gfn::new(0), GUEST_FRAMES)])
        .map_err(|e| format!("guest frames: {e}"))?;
    if h.wants("B7d") {
        // The destination's restore over a table in use: clear it, validate and apply, all in
        // one pass (each timed call replaces the table the previous one wrote).
        let reference = h.reference(&table_bytes, &mut copy);
        let (d, stats) = time_fallible(h, || {
            replace_runs(payload, &mut dst, &ram, Generation::Gen9)
                .map_err(|e| format!("replace_runs: {e}"))
        })?;
        check(stats.entries == present, "B7 entry counts")?;
        check(dst.entries() == src.entries(), "B7 restored GGTT differs")?;
        h.record(figure(
            "B7d",
            "pte_codec replace_runs (clear+check+copy fused)",
            entry_bytes,
            d,
            reference,
            None,
            format!(
                "{:.2} G PTE/s (target >= 1.5), {} runs, {:.2}x table bytes",
                giga_per_s(GGTT_ENTRIES as u64, d),
                stats.runs,
                payload.len() as f64 / entry_bytes as f64
            ),
        ));
    }
    if h.wants("B7s") {
        // The destination's two phases: validate every record first (nothing changes), then
        // commit (clear and restore, which checks again in the same pass).
        let reference = h.reference(&table_bytes, &mut copy);
        let (d, stats) = time_fallible(h, || {
            validate_runs_in(payload, &partition, &ram, Generation::Gen9)
                .map_err(|e| format!("validate_runs_in: {e}"))?;
            replace_runs(payload, &mut dst, &ram, Generation::Gen9)
                .map_err(|e| format!("replace_runs: {e}"))
        })?;
        check(stats.entries == present, "B7 entry counts")?;
        check(dst.entries() == src.entries(), "B7 restored GGTT differs")?;
        h.record(figure(
            "B7s",
            "pte_codec validate_runs_in + replace_runs",
            entry_bytes,
            d,
            reference,
            None,
            format!(
                "{:.2} G PTE/s (destination validate, then commit)",
                giga_per_s(GGTT_ENTRIES as u64, d)
            ),
        ));
    }
    if h.wants("B7v") {
        // The two-pass alternative: validate the whole payload, then apply it.
        let reference = h.reference(&table_bytes, &mut copy);
        let (d, (stats, applied)) = time_fallible(h, || {
            let stats = validate_runs_in(payload, &partition, &ram, Generation::Gen9)
                .map_err(|e| format!("validate_runs_in: {e}"))?;
            dst.clear();
            let applied = apply_runs(payload, &mut dst).map_err(|e| format!("apply_runs: {e}"))?;
            Ok((stats, applied))
        })?;
        check(
            stats.entries == present && applied as u64 == present,
            "B7 entry counts",
        )?;
        check(dst.entries() == src.entries(), "B7 restored GGTT differs")?;
        h.record(figure(
            "B7v",
            "pte_codec validate_runs_in + clear + apply_runs",
            entry_bytes,
            d,
            reference,
            None,
            format!(
                "{:.2} G PTE/s (two passes; B7d fuses them)",
                giga_per_s(GGTT_ENTRIES as u64, d)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B11: the stream checksum
// ---------------------------------------------------------------------------------------------

/// B11 `checksum_choice`: the stream's CRC (`migstream::Crc32`, CRC-32/ISO-HDLC) page by page
/// over the buffer, which is the rate B1 and B3 pay on top of their copy.
fn checksum(h: &mut Harness, src: &[u8], dst: &mut [u8]) -> crate::Result {
    check(
        migstream::crc32(b"123456789") == 0xCBF4_3926,
        "B11 CRC check value",
    )?;
    let whole = migstream::crc32(src);
    let reference = h.reference(src, dst);
    let (d, value) = time_fallible(h, || {
        let mut crc = Crc32::new();
        for page in src.chunks_exact(PAGE) {
            crc.update(page);
        }
        Ok(crc.value())
    })?;
    check(
        value == whole,
        "B11 page-wise CRC differs from the one-shot CRC",
    )?;
    h.record(figure(
        "B11",
        "checksum: migstream CRC-32 per page",
        src.len() as u64,
        d,
        reference,
        None,
        format!(
            "target >= 12 GiB/s from DRAM; kernel: {}; copy+CRC kernel: {}",
            migstream::crc32_kernel(),
            migstream::crc32_copy_kernel()
        ),
    ));
    // What the encoder does with each page: copy it and fold it into the CRC in one pass
    // (`Crc32::update_copy`, the register stored is the register folded), beside the page
    // memcpy alone.
    let reference = h.reference(src, dst);
    dst.fill(0);
    let (d, value) = time_fallible(h, || {
        let mut crc = Crc32::new();
        for (s, d) in src.chunks_exact(PAGE).zip(dst.chunks_exact_mut(PAGE)) {
            crc.update_copy(black_box(d), s);
        }
        Ok(crc.value())
    })?;
    check(
        value == whole && dst == src,
        "B11f fused copy+CRC differs from the copy or the one-shot CRC",
    )?;
    h.record(figure(
        "B11f",
        "copy+CRC fused, 4 KiB pages",
        src.len() as u64,
        d,
        reference,
        None,
        format!("kernel: {}", migstream::crc32_copy_kernel()),
    ));
    // The rate B1 and B3 pay on top of their copy: the fused encoder and decoder checksum each
    // page right after copying it, so it is in L1/L2, not DRAM. 1 MiB stays in L2.
    let hot = src.get(..HOT_BYTES.min(src.len())).unwrap_or_default();
    let hot_dst = dst.get_mut(..hot.len()).unwrap_or_default();
    let reference = h.reference(hot, hot_dst);
    let (d, _) = time_fallible(h, || {
        let mut crc = Crc32::new();
        for _ in 0..HOT_REPEAT {
            for page in hot.chunks_exact(PAGE) {
                crc.update(black_box(page));
            }
        }
        Ok(crc.value())
    })?;
    h.record(figure(
        "B11h",
        "checksum: CRC-32 per page, L2-resident 1 MiB",
        (hot.len() * HOT_REPEAT) as u64,
        d,
        reference,
        None,
        format!("kernel: {}", migstream::crc32_kernel()),
    ));
    Ok(())
}

/// Bytes of the cache-resident buffer of B11h.
const HOT_BYTES: usize = 1 << 20;
/// Passes over it per timed call of B11h (so one call lasts long enough to time).
const HOT_REPEAT: usize = 16;

// ---------------------------------------------------------------------------------------------
// B13: the stream MAC of authenticated streams
// ---------------------------------------------------------------------------------------------

/// Bytes per MAC update in B13: the batch `Decoder::feed_all` gathers at most (256 KiB).
const MAC_UPDATE: usize = 256 << 10;

/// B13 `stream_mac`: the keyed BLAKE3 MAC of authenticated streams (migstream feature `auth`,
/// SPEC.md §10) over the buffer in 256 KiB updates, which is the rate an authenticated stream
/// pays on top of B1/B3.
fn stream_mac(h: &mut Harness, src: &[u8], dst: &mut [u8]) -> crate::Result {
    let key = migstream::AuthKey::new([0x13; 32]);
    let mac_of = |data: &[u8], piece: usize| {
        let mut mac = migstream::StreamMac::new(&key, 0xBE4C);
        for p in data.chunks(piece) {
            mac.update(p);
        }
        mac.tag()
    };
    let whole = mac_of(src, src.len());
    check(
        mac_of(src, MAC_UPDATE) == whole && mac_of(src, 4096) == whole,
        "B13 MAC depends on the update size",
    )?;
    let mut work = src.to_vec();
    work[src.len() / 2] ^= 1;
    check(
        mac_of(&work, MAC_UPDATE) != whole,
        "B13 MAC missed a flipped bit",
    )?;
    drop(work);
    if h.wants("B13") {
        let reference = h.reference(src, dst);
        let (d, tag) = time_fallible(h, || Ok(mac_of(src, MAC_UPDATE)))?;
        check(tag == whole, "B13 timed MAC differs")?;
        h.record(figure(
            "B13",
            "stream_mac: keyed BLAKE3, 256 KiB updates",
            src.len() as u64,
            d,
            reference,
            None,
            "authenticated streams only (SPEC §10)".to_owned(),
        ));
    }
    if h.wants("B13b") {
        decode_authenticated(h, &key, src, dst)?;
    }
    Ok(())
}

/// Encode `src` as an authenticated stream: contiguous FULL runs of [`RECORD_PAGES`] pages, one
/// per PAGES record (as B1), then the MAC record and END.
fn encode_authenticated(
    key: &migstream::AuthKey,
    src: &[u8],
    out: &mut [u8],
) -> crate::Result<usize> {
    let source = |frame: u64, off: usize, dst: &mut [u8]| {
        let at = frame as usize * PAGE + off;
        dst.copy_from_slice(&src[at..at + dst.len()]);
    };
    let mut mac = migstream::MacStorage::new();
    let mut enc = Encoder::with_key(key, &mut mac);
    let mut at = done(enc.write_header(&stream_header(), out))?;
    let pages = src.len() / PAGE;
    for first in (0..pages).step_by(RECORD_PAGES) {
        let run = [PageRunRepr {
            first_frame: first as u64,
            count: RECORD_PAGES.min(pages - first) as u32,
            encoding: PageEncoding::FULL,
        }];
        let payload = PagesPayload::new(&run, source).map_err(|e| format!("pages payload: {e}"))?;
        at += done(enc.write_record(
            RecordKind::PAGES,
            RecordFlags::MANDATORY,
            CONTROL_VERSION,
            &payload,
            &mut out[at..],
        ))?;
    }
    at += done(enc.write_end(&mut out[at..]))?;
    Ok(at)
}

/// Decode an authenticated stream with `feed_all` (every CRC, the MAC and END verified), copying
/// page data to `dst`; returns the page bytes copied.
fn apply_authenticated(
    key: &migstream::AuthKey,
    stream: &[u8],
    dst: &mut [u8],
) -> crate::Result<u64> {
    let mut mac = migstream::MacStorage::new();
    let mut dec = migstream::Decoder::with_key(Limits::DEFAULT, key, &mut mac);
    let mut bytes = 0u64;
    let mut authenticated = false;
    dec.feed_all(stream, |event| {
        match event {
            Event::PageData {
                frame,
                offset,
                data,
            } => {
                let at = frame as usize * PAGE + usize::from(offset);
                dst.get_mut(at..at + data.len())
                    .ok_or("decoded page outside the destination buffer")?
                    .copy_from_slice(data);
                bytes += data.len() as u64;
            }
            Event::Authenticated { .. } => authenticated = true,
            _ => {}
        }
        Ok::<(), &str>(())
    })
    .map_err(|e| format!("decode: {e}"))?;
    dec.finish().map_err(|e| format!("decode: {e}"))?;
    check(authenticated, "B13b stream not authenticated")?;
    Ok(bytes)
}

/// B13b `decode_apply_authenticated`: B3 for an authenticated stream (feed_all, page copy, CRCs
/// and the MAC), to set beside B3.
fn decode_authenticated(
    h: &mut Harness,
    key: &migstream::AuthKey,
    src: &[u8],
    dst: &mut [u8],
) -> crate::Result {
    let mut stream = vec![0u8; stream_capacity(src.len() / PAGE)];
    let len = encode_authenticated(key, src, &mut stream)?;
    stream.truncate(len);
    dst.fill(0xA5);
    check(
        apply_authenticated(key, &stream, dst)? == src.len() as u64 && dst == src,
        "B13b destination differs from the source pages",
    )?;
    let wrong = migstream::AuthKey::new([0x31; 32]);
    check(
        apply_authenticated(&wrong, &stream, dst).is_err(),
        "B13b wrong key accepted",
    )?;
    let reference = h.reference(src, dst);
    let (d, _) = time_fallible(h, || apply_authenticated(key, &stream, dst))?;
    h.record(figure(
        "B13b",
        "decode_apply authenticated (feed_all, MAC)",
        src.len() as u64,
        d,
        reference,
        None,
        "compare B3 (same stream without MAC)".to_owned(),
    ));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn bitmap_runs(bits: &[usize], len: usize) -> Vec<(u64, u32)> {
        let mut storage = vec![0u64; words_for(len)];
        let mut bm = DirtyBitmap::new(&mut storage, len).unwrap();
        for &b in bits {
            bm.set(b).unwrap();
        }
        let mut runs = Vec::new();
        harvest_runs(&mut bm, &mut runs);
        assert_eq!(bm.count(), 0);
        assert!(runs.iter().all(|r| r.encoding == PageEncoding::FULL));
        runs.iter().map(|r| (r.first_frame, r.count)).collect()
    }

    /// Dirty pages of the round-trip tests: runs of 3, 1, 2, 70 (split at 64) pages.
    fn dirty_set() -> Vec<usize> {
        let mut bits = vec![3, 4, 5, 10, 64, 65];
        bits.extend(130..200);
        bits
    }

    #[test]
    fn harvest_merges_consecutive_frames_and_caps_runs() {
        assert_eq!(
            bitmap_runs(&dirty_set(), 200),
            [(3, 3), (10, 1), (64, 2), (130, 64), (194, 6)]
        );
        assert_eq!(bitmap_runs(&[], 200), []);
    }

    #[test]
    fn contiguous_runs_cover_the_buffer() {
        let runs: Vec<(u64, u32)> = contiguous_runs(130)
            .iter()
            .map(|r| (r.first_frame, r.count))
            .collect();
        assert_eq!(runs, [(0, 64), (64, 64), (128, 2)]);
    }

    #[test]
    fn scattered_runs_round_trip() {
        let src = random_pages(200, 7);
        let mut storage = vec![0u64; words_for(200)];
        let mut bm = DirtyBitmap::new(&mut storage, 200).unwrap();
        let dirty = dirty_set();
        for &b in &dirty {
            bm.set(b).unwrap();
        }
        let mut runs = Vec::new();
        harvest_runs(&mut bm, &mut runs);
        let mut stream = vec![0u8; stream_capacity(200)];
        let len = encode_runs(&src, &runs, &mut stream).unwrap();
        // 80 header + 3 records (runs grouped up to RECORD_BUDGET) + END (16 + 16).
        let payload: u64 = runs.iter().map(PageRunRepr::wire_len).sum();
        assert_eq!(len as u64, 80 + 3 * 16 + payload + 32);
        let mut dst = vec![0u8; src.len()];
        let applied = decode_into(&stream[..len], &mut dst).unwrap();
        assert_eq!(applied.records, 3);
        assert_eq!(applied.page_bytes, (dirty.len() * PAGE) as u64);
        assert_eq!(applied.zero_pages, 0);
        for (i, (d, s)) in dst
            .chunks_exact(PAGE)
            .zip(src.chunks_exact(PAGE))
            .enumerate()
        {
            if dirty.contains(&i) {
                assert_eq!(d, s, "page {i}");
            } else {
                assert!(d.iter().all(|&b| b == 0), "page {i}");
            }
        }
        // A flipped payload byte fails the record CRC.
        stream[80 + 16 + 16 + 100] ^= 1;
        assert!(decode_into(&stream[..len], &mut dst).is_err());
    }

    #[test]
    fn zero_runs_skip_non_zero_pages_and_round_trip() {
        let mut buf = vec![0u8; 8 * PAGE];
        buf[2 * PAGE] = 1;
        buf[6 * PAGE - 1] = 0x80;
        let mut runs = Vec::new();
        assert_eq!(zero_runs(&buf, &mut runs), 2);
        let got: Vec<(u64, u32)> = runs.iter().map(|r| (r.first_frame, r.count)).collect();
        assert_eq!(got, [(0, 2), (3, 2), (6, 2)]);
        let mut stream = vec![0u8; stream_capacity(8)];
        let len = encode_runs(&buf, &runs, &mut stream).unwrap();
        assert_eq!(len, 80 + 16 + 3 * 16 + 32);
        let mut dst = vec![0xEEu8; buf.len()];
        let applied = decode_into(&stream[..len], &mut dst).unwrap();
        assert_eq!((applied.zero_pages, applied.page_bytes), (6, 0));
        for (i, page) in dst.chunks_exact(PAGE).enumerate() {
            let want = if i == 2 || i == 5 { 0xEE } else { 0 };
            assert!(page.iter().all(|&b| b == want), "page {i}");
        }
    }

    #[test]
    fn random_ggtt_is_valid_gen9_and_mostly_present() {
        let e = random_ggtt(3);
        assert_eq!(e.len(), GGTT_ENTRIES);
        let present = e.iter().filter(|&&x| x & 1 == 1).count();
        assert_eq!(e.iter().filter(|&&x| x != 0).count(), present);
        assert!(present > GGTT_ENTRIES * 60 / 64 && present < GGTT_ENTRIES);
        for &x in &e {
            let entry = gtt::GgttEntry::from_bits(x);
            assert!(entry.validate(Generation::Gen9).is_ok());
            assert!(!entry.is_present() || entry.frame().get() < GUEST_FRAMES);
        }
    }
}
