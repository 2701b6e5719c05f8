//! Corruption campaigns: damage valid streams of every workload in every way a lossy link, a buggy
//! peer or a hostile one can, feed each damaged stream into a fresh destination, and check that
//! it is rejected with a typed error and that the destination's device state (registers, GGTT,
//! engines, derived state, config space, PPGTT roots) is exactly what it was before the stream
//! arrived. Guest memory is not compared: PAGES records write it as they arrive, by design (the
//! destination guest never ran, and a rejected stream fails the migration as a whole).
//!
//! Damage comes in classes ([`Class`]): bit flips (single and multiple, in the stream header, in
//! each record kind's header and payload), truncation (at every record boundary and at random
//! offsets), duplicated, dropped, reordered and spliced records (from a stream of another workload
//! and seed), length fields set to huge or off-by-one values, and *resealed* damage: payloads cut,
//! extended or with count fields made inconsistent, device-state records dropped or repeated, END
//! totals altered, all re-encoded with valid record CRCs and END totals so that only the semantic
//! checks can catch them.
//!
//! Same seed, same cases, same results: [`run`] is deterministic.
//!
//! ```no_run
//! use vgpu_mig_sim::campaign::{CampaignConfig, run_workload};
//! use vgpu_mig_sim::Profile;
//!
//! let cfg = CampaignConfig { cases_per_class: 2, ..CampaignConfig::quick(3) };
//! let report = run_workload("idle", Profile::IDLE, &cfg).unwrap();
//! assert_eq!(report.detected, report.cases);
//! assert!(report.findings.is_empty());
//! ```

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use migstream::{
    Crc32, EndRepr, HEADER_CRC_OFFSET, Limits, MAX_PAYLOAD, RECORD_HEADER_LEN, RecordFlags,
    RecordHeaderRepr, RecordKind, STREAM_HEADER_LEN,
};

use super::driver::Profile;
use super::machine::Machine;
pub use super::scenario::DeviceState;
use super::scenario::{Plan, Scenario, migrate};
use crate::Rng;
use vgpu::dest::DestSession;
use vgpu::error::{Fault, VgpuError};

/// The four workloads of the reference device, by name.
pub const WORKLOADS: [(&str, Profile); 4] = [
    ("idle", Profile::IDLE),
    ("2d", Profile::TWO_D),
    ("media", Profile::MEDIA),
    ("3d", Profile::THREE_D),
];

/// One record of a stream: where it starts and its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of the record header in the stream.
    pub offset: usize,
    /// The record header as found.
    pub header: RecordHeaderRepr,
}

impl Span {
    /// Bytes of the record header.
    pub fn header_range(&self) -> Range<usize> {
        self.offset..self.offset + RECORD_HEADER_LEN
    }

    /// Bytes of the payload.
    pub fn payload_range(&self) -> Range<usize> {
        let start = self.offset + RECORD_HEADER_LEN;
        start..start + usize::try_from(self.header.payload_len).unwrap_or(0)
    }

    /// Bytes of the whole record.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.payload_range().end
    }
}

/// The records of `wire` after its 80-byte stream header, found by walking the record headers'
/// lengths; stops at the first header that does not fit (checks nothing else).
pub fn records(wire: &[u8]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut at = STREAM_HEADER_LEN;
    while let Some(header) = wire.get(at..).and_then(RecordHeaderRepr::parse) {
        let span = Span { offset: at, header };
        if span.range().end > wire.len() {
            break;
        }
        at = span.range().end;
        out.push(span);
    }
    out
}

/// One record of a [`Parts`] stream: everything of its header but the index and CRC, which
/// [`Parts::seal`] computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Kind.
    pub kind: RecordKind,
    /// Flags.
    pub flags: RecordFlags,
    /// Record-format version.
    pub version: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A stream taken apart: its header and its records before END. [`Parts::seal`] puts it back
/// together with correct indices, record CRCs and END totals, so any change made to the parts
/// yields a *well-formed* stream that only semantic checks can refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The 80-byte stream header (kept verbatim: it carries its own CRC).
    pub header: [u8; STREAM_HEADER_LEN],
    /// The records before END.
    pub records: Vec<Part>,
}

impl Parts {
    /// Take a stream apart (its END record is dropped; `seal` writes a new one).
    pub fn split(wire: &[u8]) -> Option<Self> {
        let header = *wire.first_chunk::<STREAM_HEADER_LEN>()?;
        let records = records(wire)
            .iter()
            .filter(|s| s.header.kind != RecordKind::END)
            .map(|s| Part {
                kind: s.header.kind,
                flags: s.header.flags,
                version: s.header.version,
                payload: wire.get(s.payload_range()).unwrap_or_default().to_vec(),
            })
            .collect();
        Some(Self { header, records })
    }

    /// The stream: header, the records indexed in order with their CRCs, and an END record whose
    /// totals (record count, byte count, chained CRC) match.
    pub fn seal(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        let mut chain = Crc32::new();
        chain.update(self.header.get(..HEADER_CRC_OFFSET).unwrap_or_default());
        let mut index = 0u32;
        for r in &self.records {
            let mut h = RecordHeaderRepr {
                kind: r.kind,
                flags: r.flags,
                version: r.version,
                payload_len: u32::try_from(r.payload.len()).unwrap_or(u32::MAX),
                index,
                crc: 0,
            };
            h.crc = h.compute_crc(&r.payload);
            let mut raw = [0u8; RECORD_HEADER_LEN];
            h.emit(&mut raw);
            chain.update(&raw);
            out.extend_from_slice(&raw);
            out.extend_from_slice(&r.payload);
            index = index.wrapping_add(1);
        }
        let end = EndRepr {
            record_count: index,
            stream_crc: chain.value(),
            byte_count: out.len() as u64,
        };
        let mut payload = [0u8; EndRepr::BUFFER_LEN];
        end.emit(&mut payload);
        push_record(&mut out, RecordKind::END, index, &payload);
        out
    }

    /// The first record of `kind`, if any.
    pub fn find(&self, kind: RecordKind) -> Option<usize> {
        self.records.iter().position(|r| r.kind == kind)
    }
}

/// A REGISTERS payload (SPEC.md A.2: runs of `start`, `count`, values) as offset → value; a
/// truncated run ends the map.
pub fn parse_registers(payload: &[u8]) -> BTreeMap<u32, u32> {
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let mut out = BTreeMap::new();
    let mut at = 0usize;
    while let (Some(start), Some(count)) = (word(at), word(at + 4)) {
        for i in 0..count {
            let Some(v) = word(at + 8 + 4 * i as usize) else {
                return out;
            };
            out.insert(start.wrapping_add(4 * i), v);
        }
        at += 8 + 4 * count as usize;
    }
    out
}

/// Offset → value as a REGISTERS payload, consecutive offsets in one run (the writer's form).
pub fn encode_registers(regs: &BTreeMap<u32, u32>) -> Vec<u8> {
    let mut runs: Vec<(u32, Vec<u32>)> = Vec::new();
    for (&o, &v) in regs {
        match runs.last_mut() {
            Some((start, vals)) if u64::from(*start) + 4 * vals.len() as u64 == u64::from(o) => {
                vals.push(v);
            }
            _ => runs.push((o, alloc::vec![v])),
        }
    }
    let mut out = Vec::new();
    for (start, vals) in runs {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&u32::try_from(vals.len()).unwrap_or(u32::MAX).to_le_bytes());
        for v in vals {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Append a record (MANDATORY, version 1) with its CRC.
pub fn push_record(out: &mut Vec<u8>, kind: RecordKind, index: u32, payload: &[u8]) {
    let mut h = RecordHeaderRepr {
        kind,
        flags: RecordFlags::MANDATORY,
        version: 1,
        payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        index,
        crc: 0,
    };
    h.crc = h.compute_crc(payload);
    let mut raw = [0u8; RECORD_HEADER_LEN];
    h.emit(&mut raw);
    out.extend_from_slice(&raw);
    out.extend_from_slice(payload);
}

/// Staging storage a destination of `sc` needs (device state; generous for the GGTT).
pub fn staging_len(sc: &Scenario) -> usize {
    64 * 1024 + sc.config.ggtt_storage_len() * 16
}

/// Feed `bytes` into `dst` (reset first) in pieces of `feed` bytes, then commit. Returns the
/// result and, when the stream was rejected, the device state afterwards.
pub fn restore(
    dst: &mut Machine<'_>,
    staging: &mut [u8],
    bytes: &[u8],
    feed: usize,
) -> Result<(Result<(), VgpuError>, Option<DeviceState>), VgpuError> {
    dst.reset_for_restore()?;
    let mut d = DestSession::open(&mut dst.vgpu, staging, Limits::DEFAULT)?;
    let mut result = Ok(());
    for piece in bytes.chunks(feed.max(1)) {
        if let Err(e) = d.feed(&dst.vgpu, &mut dst.mem, piece) {
            result = Err(e);
            break;
        }
    }
    let result = result.and_then(|()| d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host).map(|_| ()));
    let after = result.is_err().then(|| DeviceState::of(dst));
    Ok((result, after))
}

/// A valid stream of `profile` on the small test vGPU: `(scenario, stream)`.
pub fn valid_stream(
    profile: Profile,
    frames: u64,
    seed: u64,
) -> Result<(Scenario, Vec<u8>), VgpuError> {
    let sc = Scenario::small(profile, frames, seed)?;
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false)?;
    let mut b = sc.machine(&mut st_b, true)?;
    a.boot()?;
    let mut plan = Plan {
        start_step: 10,
        ..Plan::default()
    };
    // Streams of different seeds differ from their header on.
    plan.source.stream_id = seed;
    let r = migrate(&mut a, &mut b, &plan)?;
    Ok((sc, r.wire))
}

/// A class of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Class {
    /// One bit flipped.
    Flip1,
    /// 2 to 16 bits flipped in one region.
    FlipN,
    /// The stream cut short.
    Truncate,
    /// A record repeated as is.
    Duplicate,
    /// A record removed as is.
    Drop,
    /// Records swapped or moved.
    Reorder,
    /// Records or a tail taken from a stream of another workload and seed.
    Splice,
    /// A record's length field set to a huge or off-by-one value.
    Length,
    /// Well-formed damage: re-encoded with valid CRCs and END totals.
    Resealed,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 9] = [
        Class::Flip1,
        Class::FlipN,
        Class::Truncate,
        Class::Duplicate,
        Class::Drop,
        Class::Reorder,
        Class::Splice,
        Class::Length,
        Class::Resealed,
    ];

    /// Short name.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Flip1 => "flip1",
            Class::FlipN => "flipN",
            Class::Truncate => "truncate",
            Class::Duplicate => "duplicate",
            Class::Drop => "drop",
            Class::Reorder => "reorder",
            Class::Splice => "splice",
            Class::Length => "length",
            Class::Resealed => "resealed",
        }
    }
}

/// Campaign parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignConfig {
    /// Seed of every random choice (and of the workloads).
    pub seed: u64,
    /// Frames each workload renders (the migration starts early in the run).
    pub frames: u64,
    /// Random cases per class and region (bit flips per region, random truncations, ...).
    pub cases_per_class: usize,
    /// Flip every bit of the stream header and of the first record header of each kind.
    pub exhaustive_headers: bool,
    /// Cut at every record boundary and damage every record structurally (duplicate, drop,
    /// reorder, splice, length fields); otherwise the first record of each kind and
    /// `cases_per_class` random ones.
    pub every_record: bool,
}

impl CampaignConfig {
    /// The full campaign.
    pub const fn full(seed: u64) -> Self {
        Self {
            seed,
            frames: 30,
            cases_per_class: 48,
            exhaustive_headers: true,
            every_record: true,
        }
    }

    /// A CI-sized campaign.
    pub const fn quick(seed: u64) -> Self {
        Self {
            seed,
            frames: 20,
            cases_per_class: 6,
            exhaustive_headers: false,
            every_record: false,
        }
    }
}

/// A damaged stream the destination accepted, or rejected after changing device state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Class of the damage.
    pub class: Class,
    /// What was done to the stream.
    pub case: String,
    /// What went wrong: `accepted`, or the error and the device state that changed.
    pub problem: String,
    /// An accepted stream that is another stream's valid header followed by valid records (a gap
    /// the format had before END's chain excluded `header_crc`; see [`header_is_unbound`]).
    pub header_substitution: bool,
}

/// Per-class counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCount {
    /// Cases tried.
    pub cases: u64,
    /// Cases rejected.
    pub detected: u64,
}

/// What a campaign found on one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Workload name.
    pub workload: &'static str,
    /// Size of the valid stream.
    pub stream_bytes: usize,
    /// Records in it (END included).
    pub records: usize,
    /// Damaged streams tried.
    pub cases: u64,
    /// Damaged streams rejected.
    pub detected: u64,
    /// Accepted streams that are a valid stream with another valid stream header in front
    /// ([`Finding::header_substitution`]); also listed in `findings`.
    pub header_substitutions: u64,
    /// Rejections whose error blames the local side or the caller ([`Fault::Local`],
    /// [`Fault::State`]) rather than the stream.
    pub local_blame: u64,
    /// Cases and detections per class.
    pub by_class: BTreeMap<Class, ClassCount>,
    /// Rejections per error kind (see [`error_label`]).
    pub errors: BTreeMap<String, u64>,
    /// Accepted damaged streams and rejections that changed device state.
    pub findings: Vec<Finding>,
}

/// A stable label of an error's kind, without its values: `Stream/BadRecordCrc`,
/// `Stream/MalformedPageRun/Overrun`, `Gtt/FrameNotInGuest`, `RecordCount`, ...
pub fn error_label(e: &VgpuError) -> String {
    match e {
        VgpuError::Stream(d) => {
            let mut s = String::from("Stream/");
            s.push_str(&variant_path(&format!("{:?}", d.kind())));
            s
        }
        other => variant_path(&format!("{other:?}")),
    }
}

/// `A(B(C { .. }))` → `A/B/C`; stops at the first field list.
fn variant_path(debug: &str) -> String {
    let mut out = String::new();
    let mut rest = debug;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (ident, tail) = rest.split_at(end);
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(ident);
        match tail.strip_prefix('(') {
            Some(t) if t.starts_with(|c: char| c.is_ascii_uppercase()) => rest = t,
            _ => return out,
        }
    }
}

/// One damaged stream and how it was made.
struct Case {
    class: Class,
    what: String,
    bytes: Vec<u8>,
}

/// Kinds in first-occurrence order, with the index of that first record.
fn kinds(spans: &[Span]) -> Vec<(RecordKind, usize)> {
    let mut out: Vec<(RecordKind, usize)> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        if !out.iter().any(|(k, _)| *k == s.header.kind) {
            out.push((s.header.kind, i));
        }
    }
    out
}

fn kind_name(k: RecordKind) -> String {
    k.name()
        .map_or_else(|| format!("kind {:#06x}", k.0), String::from)
}

fn pick(rng: &mut Rng, r: &Range<usize>) -> usize {
    r.start + usize::try_from(rng.below((r.end - r.start) as u64)).unwrap_or(0)
}

fn flip(bytes: &mut [u8], bit: usize) {
    if let Some(b) = bytes.get_mut(bit / 8) {
        *b ^= 1 << (bit % 8);
    }
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    if let Some(d) = bytes.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The device-state kinds a valid stream carries exactly once.
const EXACTLY_ONE: [RecordKind; 5] = [
    RecordKind::CONFIG_SPACE,
    RecordKind::REGISTERS,
    RecordKind::GGTT_PENDING,
    RecordKind::PPGTT_ROOTS,
    RecordKind::ENGINE_STATE,
];

/// Build every damaged stream of a campaign over `wire` (`other`: a stream of another workload).
fn cases(wire: &[u8], other: &[u8], cfg: &CampaignConfig, rng: &mut Rng) -> Vec<Case> {
    let spans = records(wire);
    let n = cfg.cases_per_class;
    let mut out = Vec::new();
    let mut push = |class, what: String, bytes: Vec<u8>| out.push(Case { class, what, bytes });
    // Regions: the stream header, and per kind (first record of it) its header and its payload.
    let mut regions: Vec<(String, Range<usize>)> = Vec::new();
    regions.push((String::from("stream header"), 0..STREAM_HEADER_LEN));
    for (k, i) in kinds(&spans) {
        if let Some(s) = spans.get(i) {
            regions.push((format!("{} header", kind_name(k)), s.header_range()));
            if !s.payload_range().is_empty() {
                regions.push((format!("{} payload", kind_name(k)), s.payload_range()));
            }
        }
    }
    // Single bit flips: every bit of each header region when exhaustive, random ones otherwise.
    for (name, r) in &regions {
        let is_header = !name.ends_with("payload");
        let bits: Vec<usize> = if is_header && cfg.exhaustive_headers {
            (r.start * 8..r.end * 8).collect()
        } else {
            let bits = r.start * 8..r.end * 8;
            (0..n).map(|_| pick(rng, &bits)).collect()
        };
        for bit in bits {
            let mut w = wire.to_vec();
            flip(&mut w, bit);
            push(
                Class::Flip1,
                format!("{name}: bit {} of byte {}", bit % 8, bit / 8),
                w,
            );
        }
    }
    // Random single flips anywhere (page data dominates the stream).
    for _ in 0..n {
        let bit = pick(rng, &(0..wire.len() * 8));
        let mut w = wire.to_vec();
        flip(&mut w, bit);
        push(Class::Flip1, format!("anywhere: bit {bit}"), w);
    }
    // Multiple flips, within one region and across the stream.
    for (name, r) in regions.iter().chain(core::iter::once(&(
        String::from("whole stream"),
        0..wire.len(),
    ))) {
        for _ in 0..n.div_ceil(2) {
            let mut w = wire.to_vec();
            let k = 2 + usize::try_from(rng.below(15)).unwrap_or(0);
            let mut flipped = Vec::new();
            for _ in 0..k {
                let bit = pick(rng, &(r.start * 8..r.end * 8));
                flip(&mut w, bit);
                flipped.push(bit);
            }
            if w != wire {
                push(Class::FlipN, format!("{name}: bits {flipped:?}"), w);
            }
        }
    }
    // The records damaged structurally and cut at: all, or the first of each kind and a sample.
    let targets: Vec<usize> = if cfg.every_record {
        (0..spans.len()).collect()
    } else {
        let mut t: Vec<usize> = (0..n).map(|_| pick(rng, &(0..spans.len()))).collect();
        t.extend(kinds(&spans).iter().map(|(_, i)| *i));
        t.sort_unstable();
        t.dedup();
        t
    };
    // Truncation at record boundaries (and one byte either side), and at random offsets.
    let mut cuts: Vec<usize> = alloc::vec![0, 1, STREAM_HEADER_LEN - 1];
    for s in targets.iter().filter_map(|&i| spans.get(i)) {
        cuts.extend([
            s.offset,
            s.offset + 1,
            s.offset + RECORD_HEADER_LEN,
            s.range().end - 1,
        ]);
    }
    cuts.extend((0..n).map(|_| pick(rng, &(0..wire.len()))));
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|&c| c < wire.len()) {
        push(
            Class::Truncate,
            format!("cut at {cut}"),
            wire.get(..cut).unwrap_or_default().to_vec(),
        );
    }
    let record = |i: usize| {
        spans
            .get(i)
            .map(|s| wire.get(s.range()).unwrap_or_default())
    };
    for &i in &targets {
        let (Some(s), Some(rec)) = (spans.get(i), record(i)) else {
            continue;
        };
        let kn = kind_name(s.header.kind);
        let (before, after) = wire.split_at(s.range().end);
        let mut w = before.to_vec();
        w.extend_from_slice(rec);
        w.extend_from_slice(after);
        push(Class::Duplicate, format!("record {i} ({kn}) repeated"), w);
        let mut w = wire.get(..s.offset).unwrap_or_default().to_vec();
        w.extend_from_slice(after);
        push(Class::Drop, format!("record {i} ({kn}) removed"), w);
        if let Some(next) = spans.get(i + 1) {
            let mut w = wire.get(..s.offset).unwrap_or_default().to_vec();
            w.extend_from_slice(wire.get(next.range()).unwrap_or_default());
            w.extend_from_slice(rec);
            w.extend_from_slice(wire.get(next.range().end..).unwrap_or_default());
            push(
                Class::Reorder,
                format!("records {i} and {} swapped", i + 1),
                w,
            );
        }
        if i + 2 < spans.len() {
            // Moved to just before END.
            let last = spans.len() - 1;
            let end_at = spans.get(last).map_or(wire.len(), |e| e.offset);
            let mut w = wire.get(..s.offset).unwrap_or_default().to_vec();
            w.extend_from_slice(wire.get(s.range().end..end_at).unwrap_or_default());
            w.extend_from_slice(rec);
            w.extend_from_slice(wire.get(end_at..).unwrap_or_default());
            push(
                Class::Reorder,
                format!("record {i} ({kn}) moved before END"),
                w,
            );
        }
        // Length fields.
        let len = s.header.payload_len;
        for (name, v) in [
            ("u32::MAX", u32::MAX),
            ("16 MiB + 1", MAX_PAYLOAD + 1),
            ("16 MiB", MAX_PAYLOAD),
            ("len + 1", len.wrapping_add(1)),
            ("len - 1", len.wrapping_sub(1)),
        ] {
            let mut w = wire.to_vec();
            set_u32(&mut w, s.offset + 4, v);
            push(
                Class::Length,
                format!("record {i} ({kn}) payload_len = {name}"),
                w,
            );
        }
    }
    // Splices from the other stream: a record of the same index put in place of this one, and
    // this stream's prefix followed by the other's tail from the record of the same index.
    let other_spans = records(other);
    for &i in &targets {
        let (Some(s), Some(o)) = (spans.get(i), other_spans.get(i)) else {
            continue;
        };
        let orec = other.get(o.range()).unwrap_or_default();
        if orec == wire.get(s.range()).unwrap_or_default() {
            continue;
        }
        let mut w = wire.get(..s.offset).unwrap_or_default().to_vec();
        w.extend_from_slice(orec);
        w.extend_from_slice(wire.get(s.range().end..).unwrap_or_default());
        push(
            Class::Splice,
            format!("record {i} taken from the other stream"),
            w,
        );
        let mut w = wire.get(..s.offset).unwrap_or_default().to_vec();
        w.extend_from_slice(other.get(o.offset..).unwrap_or_default());
        push(
            Class::Splice,
            format!("tail from the other stream's record {i}"),
            w,
        );
    }
    // A stream header of another stream (another stream_id) before this stream's records.
    if let Some(h) = other.get(..STREAM_HEADER_LEN) {
        let mut w = h.to_vec();
        w.extend_from_slice(wire.get(STREAM_HEADER_LEN..).unwrap_or_default());
        if w != wire {
            push(
                Class::Splice,
                String::from("stream header of the other stream"),
                w,
            );
        }
    }
    resealed(wire, &mut push);
    out
}

/// Well-formed damage: every case is re-encoded with valid record CRCs and END totals.
fn resealed(wire: &[u8], push: &mut impl FnMut(Class, String, Vec<u8>)) {
    let Some(parts) = Parts::split(wire) else {
        return;
    };
    let mut each = |what: String, f: &mut dyn FnMut(&mut Parts) -> bool| {
        let mut p = parts.clone();
        if f(&mut p) {
            push(Class::Resealed, what, p.seal());
        }
    };
    // Payloads one byte short or one byte long, first record of each kind.
    let mut seen: Vec<RecordKind> = Vec::new();
    for (i, r) in parts.records.iter().enumerate() {
        if seen.contains(&r.kind) {
            continue;
        }
        seen.push(r.kind);
        let kn = kind_name(r.kind);
        each(format!("{kn} payload one byte short"), &mut |p| {
            p.records.get_mut(i).and_then(|r| r.payload.pop()).is_some()
        });
        each(format!("{kn} payload one zero byte long"), &mut |p| {
            p.records.get_mut(i).map(|r| r.payload.push(0)).is_some()
        });
        // Leading count fields made inconsistent with the payload.
        let count_at = match r.kind {
            RecordKind::PAGES => Some(8),
            RecordKind::REGISTERS | RecordKind::GGTT_RUNS => Some(4),
            RecordKind::GGTT_PENDING | RecordKind::PPGTT_ROOTS => Some(0),
            _ => None,
        };
        if let Some(at) = count_at {
            let cur = get_u32(&r.payload, at);
            // count + 1 on a ZERO run is a valid stream (one more zero page), not damage.
            let zero_run = r.kind == RecordKind::PAGES && r.payload.get(12) == Some(&1);
            let bumps: &[(&str, u32)] = if zero_run {
                &[("u32::MAX", u32::MAX)]
            } else {
                &[("u32::MAX", u32::MAX), ("count + 1", cur.wrapping_add(1))]
            };
            for &(name, v) in bumps {
                each(format!("{kn} first count field = {name}"), &mut |p| {
                    p.records
                        .get_mut(i)
                        .map(|r| set_u32(&mut r.payload, at, v))
                        .is_some()
                });
            }
        }
        if r.kind == RecordKind::ENGINE_STATE {
            each(String::from("ENGINE_STATE engine_count + 1"), &mut |p| {
                p.records
                    .get_mut(i)
                    .and_then(|r| r.payload.get_mut(1))
                    .map(|c| *c = c.wrapping_add(1))
                    .is_some()
            });
        }
        if r.kind == RecordKind::PAGES {
            // The first run's frames moved outside guest memory.
            each(String::from("PAGES first run at frame 2^40"), &mut |p| {
                p.records
                    .get_mut(i)
                    .and_then(|r| r.payload.get_mut(..8))
                    .map(|f| f.copy_from_slice(&(1u64 << 40).to_le_bytes()))
                    .is_some()
            });
        }
    }
    // Device-state records of a record-format version this reader does not know.
    for kind in EXACTLY_ONE.into_iter().chain([RecordKind::GGTT_RUNS]) {
        let next = vgpu::dest::record_version(kind) + 1;
        each(
            format!("{} version {next}", kind_name(kind)),
            &mut |p| match p.find(kind) {
                Some(i) => p.records.get_mut(i).map(|r| r.version = next).is_some(),
                None => false,
            },
        );
    }
    // Exactly-one device-state records dropped or repeated.
    for kind in EXACTLY_ONE {
        let kn = kind_name(kind);
        each(format!("{kn} removed"), &mut |p| match p.find(kind) {
            Some(i) => {
                p.records.remove(i);
                true
            }
            None => false,
        });
        each(format!("{kn} repeated"), &mut |p| match p.find(kind) {
            Some(i) => match p.records.get(i).cloned() {
                Some(r) => {
                    p.records.insert(i + 1, r);
                    true
                }
                None => false,
            },
            None => false,
        });
    }
    // END totals altered, END's own CRC recomputed.
    let sealed = parts.seal();
    if let Some(end) = records(&sealed).last().copied() {
        for (name, at) in [
            ("record_count", 0usize),
            ("stream_crc", 4),
            ("byte_count", 8),
        ] {
            let mut w = sealed.clone();
            let p = end.payload_range().start + at;
            if let Some(b) = w.get_mut(p) {
                *b ^= 1;
            }
            let mut h = end.header;
            h.crc = h.compute_crc(w.get(end.payload_range()).unwrap_or_default());
            let mut raw = [0u8; RECORD_HEADER_LEN];
            h.emit(&mut raw);
            if let Some(d) = w.get_mut(end.header_range()) {
                d.copy_from_slice(&raw);
            }
            push(
                Class::Resealed,
                format!("END {name} off by one bit, CRC valid"),
                w,
            );
        }
    }
}

/// Whether END's chained CRC is blind to the difference between two stream headers: true when
/// two different headers leave the chain (SPEC.md §6.3: the header without `header_crc`) in the
/// same state. A draft of the format chained all 80 bytes; since CRC-32 of any message followed by
/// its own CRC is a constant, every valid header then left the same state and a valid header of
/// another stream in front of this stream's records was accepted. The campaign found it, the format
/// was fixed, and it now reports such an acceptance as a [`Finding::header_substitution`] (none is
/// expected).
pub fn header_is_unbound(a: &[u8; STREAM_HEADER_LEN], b: &[u8; STREAM_HEADER_LEN]) -> bool {
    let (mut ca, mut cb) = (Crc32::new(), Crc32::new());
    ca.update(a.get(..HEADER_CRC_OFFSET).unwrap_or_default());
    cb.update(b.get(..HEADER_CRC_OFFSET).unwrap_or_default());
    a != b && ca.value() == cb.value()
}

/// Run the campaign on one workload.
pub fn run_workload(
    name: &'static str,
    profile: Profile,
    cfg: &CampaignConfig,
) -> Result<WorkloadReport, VgpuError> {
    let (sc, wire) = valid_stream(profile, cfg.frames, cfg.seed)?;
    // The other stream: the next workload, another seed, same vGPU type.
    let pos = WORKLOADS.iter().position(|(n, _)| *n == name).unwrap_or(0);
    let (_, other_profile) = WORKLOADS
        .get((pos + 1) % WORKLOADS.len())
        .copied()
        .unwrap_or(("idle", Profile::IDLE));
    let (_, other) = valid_stream(other_profile, cfg.frames, cfg.seed.wrapping_add(1))?;
    let mut rng = Rng::new(cfg.seed ^ 0xC0FF_EE00);
    let all = cases(&wire, &other, cfg, &mut rng);
    // The reference: a destination that never saw a byte.
    let mut st_fresh = sc.storage();
    let mut staging = alloc::vec![0u8; staging_len(&sc)];
    let fresh = {
        let mut f = sc.machine(&mut st_fresh, true)?;
        let _session = DestSession::open(&mut f.vgpu, &mut staging, Limits::DEFAULT)?;
        DeviceState::of(&f)
    };
    let mut st = sc.storage();
    let mut dst = sc.machine(&mut st, true)?;
    // The valid stream restores (else the campaign would measure nothing).
    let (ok, _) = restore(&mut dst, &mut staging, &wire, 4096)?;
    ok?;
    let mut report = WorkloadReport {
        workload: name,
        stream_bytes: wire.len(),
        records: records(&wire).len(),
        cases: 0,
        detected: 0,
        header_substitutions: 0,
        local_blame: 0,
        by_class: BTreeMap::new(),
        errors: BTreeMap::new(),
        findings: Vec::new(),
    };
    const FEEDS: [usize; 4] = [97, 4096, 65_536, usize::MAX];
    for case in all {
        let feed = FEEDS
            .get(usize::try_from(rng.below(FEEDS.len() as u64)).unwrap_or(0))
            .copied()
            .unwrap_or(4096);
        let (result, after) = restore(&mut dst, &mut staging, &case.bytes, feed)?;
        report.cases += 1;
        let c = report.by_class.entry(case.class).or_default();
        c.cases += 1;
        match result {
            Ok(()) => {
                let (head, tail) = (
                    case.bytes.get(..STREAM_HEADER_LEN),
                    case.bytes.get(STREAM_HEADER_LEN..),
                );
                let header_substitution = [&wire, &other].iter().any(|w| {
                    head != w.get(..STREAM_HEADER_LEN) && tail == w.get(STREAM_HEADER_LEN..)
                });
                report.header_substitutions += u64::from(header_substitution);
                report.findings.push(Finding {
                    class: case.class,
                    case: case.what,
                    problem: String::from("accepted"),
                    header_substitution,
                });
            }
            Err(e) => {
                c.detected += 1;
                report.detected += 1;
                if matches!(e.fault(), Fault::Local | Fault::State) {
                    report.local_blame += 1;
                }
                *report.errors.entry(error_label(&e)).or_default() += 1;
                let changed = after.map(|a| fresh.diff(&a)).unwrap_or_default();
                if !changed.is_empty() {
                    report.findings.push(Finding {
                        class: case.class,
                        case: case.what,
                        problem: format!("rejected ({e}) but changed: {changed}"),
                        header_substitution: false,
                    });
                }
            }
        }
    }
    Ok(report)
}

/// Run the campaign on every workload ([`WORKLOADS`]).
pub fn run(cfg: &CampaignConfig) -> Result<Vec<WorkloadReport>, VgpuError> {
    WORKLOADS
        .iter()
        .map(|(name, profile)| run_workload(name, *profile, cfg))
        .collect()
}
