//! Hostile and damaged streams (issue #10).
//!
//! - A small corruption campaign over every workload: every damaged stream is rejected and the
//!   destination's device state is untouched (the full campaign is `cargo xtask campaign`).
//! - Semantically hostile but well-formed streams (valid CRCs, valid framing, valid END totals:
//!   built by re-encoding records with [`Parts::seal`]), each refused by a named check.
//! - Resource exhaustion: buffers too small give clear errors, change nothing, and a retry with
//!   enough storage succeeds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use migstream::{RecordFlags, RecordKind, StreamHeaderRepr};
use vgpu::dest::DestSession;
use vgpu::error::VgpuError;
use vgpu::sim::campaign::{
    CampaignConfig, DeviceState, Part, Parts, encode_registers, header_is_unbound, parse_registers,
    restore, run, run_workload, staging_len, valid_stream,
};
use vgpu::sim::scenario::{Plan, Scenario, Snapshot, migrate};
use vgpu::sim::{Machine, Profile};
use vgpu::source::{SourceConfig, SourceEvent, SourceSession};

#[test]
fn a_small_campaign_detects_every_case_and_leaves_the_destination_untouched() {
    // CI-sized: one random case per class and region (`cargo xtask campaign` runs the full one).
    let cfg = CampaignConfig {
        cases_per_class: 1,
        ..CampaignConfig::quick(1)
    };
    let reports = run(&cfg).unwrap();
    assert_eq!(reports.len(), 4, "every workload");
    for r in &reports {
        // Nothing was accepted, and rejected cases never changed device state.
        assert!(r.findings.is_empty(), "{}: {:?}", r.workload, r.findings);
        assert_eq!(r.header_substitutions, 0);
        assert_eq!(r.detected, r.cases, "{}", r.workload);
        assert!(r.cases > 150, "{}: {} cases", r.workload, r.cases);
        // Every class ran, and every rejection is counted under its error kind.
        assert_eq!(r.by_class.len(), 9, "{}", r.workload);
        assert_eq!(r.errors.values().sum::<u64>(), r.detected);
    }
    // Same seed, same cases, same results.
    let again = run_workload("idle", Profile::IDLE, &cfg).unwrap();
    assert_eq!(again, reports[0]);
}

/// The gap the campaign found and the format fixed: END's chain now covers the stream header
/// without its own CRC, so two valid headers of different streams leave it in different states
/// (chaining all 80 bytes, they would not: CRC-32 of a message followed by its CRC is a constant).
#[test]
fn the_end_crc_chain_binds_the_stream_header() {
    let (_, a) = valid_stream(Profile::IDLE, 20, 1).unwrap();
    let (_, b) = valid_stream(Profile::TWO_D, 20, 2).unwrap();
    assert_ne!(a[..80], b[..80], "stream ids differ");
    assert!(!header_is_unbound(
        a[..80].try_into().unwrap(),
        b[..80].try_into().unwrap()
    ));
    let (mut ca, mut cb) = (migstream::Crc32::new(), migstream::Crc32::new());
    ca.update(&a[..80]);
    cb.update(&b[..80]);
    assert_eq!(
        ca.value(),
        cb.value(),
        "all 80 bytes: blind, as the campaign found"
    );
}

/// A valid stream of the idle workload and a destination to restore it into.
struct Bed {
    sc: Scenario,
    wire: Vec<u8>,
    parts: Parts,
    fresh: DeviceState,
}

fn bed() -> Bed {
    let (sc, wire) = valid_stream(Profile::IDLE, 20, 1).unwrap();
    let parts = Parts::split(&wire).unwrap();
    assert_eq!(
        parts.seal(),
        wire,
        "re-encoding an untouched stream gives it back"
    );
    let mut st = sc.storage();
    let mut staging = vec![0u8; staging_len(&sc)];
    let mut m = sc.machine(&mut st, true).unwrap();
    let _d = DestSession::open(&mut m.vgpu, &mut staging, migstream::Limits::DEFAULT).unwrap();
    let fresh = DeviceState::of(&m);
    Bed {
        sc,
        wire,
        parts,
        fresh,
    }
}

impl Bed {
    /// Restore `bytes` into a fresh destination; on rejection, check nothing of the device state
    /// changed. Returns the result and the device state after an accepted stream.
    fn restore(&self, bytes: &[u8]) -> (Result<(), VgpuError>, DeviceState) {
        let mut st = self.sc.storage();
        let mut m = self.sc.machine(&mut st, true).unwrap();
        let mut staging = vec![0u8; staging_len(&self.sc)];
        let (r, after) = restore(&mut m, &mut staging, bytes, 4096).unwrap();
        if let Some(after) = after {
            assert!(
                after == self.fresh,
                "rejected ({r:?}) but changed: {}",
                self.fresh.diff(&after)
            );
        }
        (r, DeviceState::of(&m))
    }

    /// Restore `parts` re-encoded (valid CRCs and END): the error.
    fn refuse(&self, parts: &Parts) -> VgpuError {
        self.restore(&parts.seal())
            .0
            .expect_err("hostile stream accepted")
    }

    /// The payload of the only record of `kind`.
    fn payload(&self, kind: RecordKind) -> &[u8] {
        &self.parts.records[self.parts.find(kind).unwrap()].payload
    }

    /// The parts with the payload of the only record of `kind` replaced.
    fn with(&self, kind: RecordKind, payload: Vec<u8>) -> Parts {
        let mut p = self.parts.clone();
        let i = p.find(kind).unwrap();
        p.records[i].payload = payload;
        p
    }

    /// The parts with the stream header re-encoded after `f` changed it.
    fn with_header(&self, f: impl FnOnce(&mut StreamHeaderRepr)) -> Parts {
        let mut h = StreamHeaderRepr::parse(&self.wire).unwrap();
        f(&mut h);
        let mut p = self.parts.clone();
        h.emit(&mut p.header);
        p
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

// ---- registers ----------------------------------------------------------------------------

#[test]
fn registers_outside_the_save_list_are_refused() {
    let b = bed();
    let regs = parse_registers(b.payload(RecordKind::REGISTERS));
    assert_eq!(
        encode_registers(&regs),
        b.payload(RecordKind::REGISTERS),
        "codec"
    );
    // An offset past the register window.
    let mut r = regs.clone();
    r.insert(mmio::MMIO_SIZE, 1);
    match b.refuse(&b.with(RecordKind::REGISTERS, encode_registers(&r))) {
        VgpuError::Mmio(mmio::MmioError::UnknownRegister { offset }) => {
            assert_eq!(offset, mmio::MMIO_SIZE);
        }
        e => panic!("{e:?}"),
    }
    // An offset of the PVINFO page the table does not have (read-only zeros).
    let pv = (mmio::PVINFO_BASE..)
        .step_by(4)
        .find(|&o| mmio::SKL.find(o).is_none())
        .unwrap();
    let mut r = regs.clone();
    r.insert(pv, 1);
    match b.refuse(&b.with(RecordKind::REGISTERS, encode_registers(&r))) {
        VgpuError::Mmio(mmio::MmioError::NotMigratable { offset }) => assert_eq!(offset, pv),
        e => panic!("{e:?}"),
    }
    // A register of the table that does not migrate.
    let local = mmio::SKL_REGS
        .iter()
        .find(|d| !d.is_migrated() && d.ro_mask != u32::MAX)
        .unwrap();
    let mut r = regs.clone();
    r.insert(local.offset, local.reset ^ 1);
    match b.refuse(&b.with(RecordKind::REGISTERS, encode_registers(&r))) {
        VgpuError::Mmio(mmio::MmioError::NotMigratable { offset }) => {
            assert_eq!(offset, local.offset);
        }
        e => panic!("{}: {e:?}", local.name),
    }
}

#[test]
fn registers_with_read_only_bits_changed_are_refused() {
    let b = bed();
    let regs = parse_registers(b.payload(RecordKind::REGISTERS));
    let mut tried = 0;
    // A plain read-only bit, and the upper half of a masked "mode" register.
    for d in [
        mmio::SKL_REGS
            .iter()
            .find(|d| d.is_migrated() && d.ro_mask != 0 && d.ro_mask != u32::MAX),
        mmio::SKL_REGS
            .iter()
            .find(|d| d.is_migrated() && d.flags.contains(mmio::RegFlags::MODE_MASK)),
    ]
    .into_iter()
    .flatten()
    {
        let bit = d.effective_ro_mask().trailing_zeros();
        let mut r = regs.clone();
        let cur = r.get(&d.offset).copied().unwrap_or(d.reset);
        r.insert(d.offset, cur ^ (1 << bit));
        match b.refuse(&b.with(RecordKind::REGISTERS, encode_registers(&r))) {
            VgpuError::Mmio(mmio::MmioError::ReadOnlyBits { offset, .. }) => {
                assert_eq!(offset, d.offset);
            }
            e => panic!("{}: {e:?}", d.name),
        }
        tried += 1;
    }
    assert!(
        tried >= 1,
        "the table has migrated registers with read-only bits"
    );
}

// ---- GGTT -----------------------------------------------------------------------------------

/// The GGTT_RUNS payload with the first run's first entry pointing at guest frame `gfn`.
fn ggtt_entry_at(b: &Bed, gfn: u64) -> Vec<u8> {
    let mut p = b.payload(RecordKind::GGTT_RUNS).to_vec();
    // Run header: start u32, count u32, kind u8 (0 RAW: entries follow; 1 LINEAR: a template).
    let e = u64::from_le_bytes(p[16..24].try_into().unwrap());
    assert_ne!(e & 1, 0, "the first entry is present");
    let frame_mask = ((1u64 << 46) - 1) & !0xFFF;
    let e = (e & !frame_mask) | (gfn << 12);
    p[16..24].copy_from_slice(&e.to_le_bytes());
    p
}

#[test]
fn ggtt_entries_outside_guest_memory_or_in_frames_the_guest_does_not_own_are_refused() {
    let b = bed();
    let map = &b.sc.map;
    // Below the first region, in the hole between the regions, past the end of memory.
    let last = map.frame_at(map.frames() as usize - 1).unwrap().get();
    for gfn in [0x10, 0x8_0000, last + 1, 1 << 33] {
        assert!(!map.contains(gtt::Gfn::new(gfn)));
        match b.refuse(&b.with(RecordKind::GGTT_RUNS, ggtt_entry_at(&b, gfn))) {
            VgpuError::Gtt(gtt::GttError::FrameOutsideGuest) => {}
            e => panic!("gfn {gfn:#x}: {e:?}"),
        }
    }
    // Control: a frame the guest owns is accepted.
    let owned = map.frame_at(3).unwrap().get();
    let (r, _) = b.restore(
        &b.with(RecordKind::GGTT_RUNS, ggtt_entry_at(&b, owned))
            .seal(),
    );
    r.unwrap();
}

#[test]
fn ggtt_runs_outside_the_vgpu_slices_are_refused() {
    let b = bed();
    let mut p = b.payload(RecordKind::GGTT_RUNS).to_vec();
    // Index 0 is host memory of another VM: below the aperture slice.
    p[0..4].copy_from_slice(&0u32.to_le_bytes());
    match b.refuse(&b.with(RecordKind::GGTT_RUNS, p)) {
        VgpuError::Gtt(gtt::GttError::OutOfRange) => {}
        e => panic!("{e:?}"),
    }
}

#[test]
fn pending_halves_inconsistent_or_outside_the_slices_are_refused() {
    let b = bed();
    assert_eq!(b.payload(RecordKind::GGTT_PENDING), &[0u8; 8][..]);
    let entry = |index: u32| {
        let mut e = index.to_le_bytes().to_vec();
        e.extend_from_slice(&[1, 0, 0, 0]);
        e.extend_from_slice(&0x1234u32.to_le_bytes());
        e
    };
    let aperture_index = 0x0100_0000u32 >> 12;
    for (what, count, entries, want) in [
        (
            "count says 1, no entry",
            1u32,
            vec![],
            gtt::GttError::Truncated,
        ),
        (
            "17 halves",
            17,
            (0..17).flat_map(|i| entry(aperture_index + i)).collect(),
            gtt::GttError::Truncated,
        ),
        (
            "index outside the slices",
            1,
            entry(7),
            gtt::GttError::OutOfRange,
        ),
        (
            "same entry twice",
            2,
            [entry(aperture_index), entry(aperture_index)].concat(),
            gtt::GttError::OutOfRange,
        ),
    ] {
        let mut p = count.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&entries);
        match b.refuse(&b.with(RecordKind::GGTT_PENDING, p)) {
            VgpuError::Gtt(e) if e == want => {}
            e => panic!("{what}: {e:?}"),
        }
    }
}

// ---- PPGTT ----------------------------------------------------------------------------------

/// A PPGTT_ROOTS payload: the stream's roots plus one 4-level PPGTT rooted at `pml4`.
fn roots_plus(b: &Bed, pml4: u64) -> Vec<u8> {
    let p = b.payload(RecordKind::PPGTT_ROOTS);
    let mut out = (u32_at(p, 0) + 1).to_le_bytes().to_vec();
    out.extend_from_slice(&p[4..]);
    out.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&pml4.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out
}

#[test]
fn ppgtt_roots_outside_memory_or_forming_cycles_are_refused() {
    let b = bed();
    // A root outside guest memory.
    let outside = b.refuse(&b.with(RecordKind::PPGTT_ROOTS, roots_plus(&b, 0x20_0000)));
    assert_eq!(outside, VgpuError::BadPpgtt);
    // A PML4 whose entry 0 points back at itself, written into guest memory by the stream's own
    // PAGES record (FULL run), then announced as a root.
    let frame = b.sc.map.frame_at(10).unwrap().get();
    let mut page = vec![0u8; 4096];
    page[..8].copy_from_slice(&((frame << 12) | 0b11).to_le_bytes());
    let mut pages = frame.to_le_bytes().to_vec();
    pages.extend_from_slice(&1u32.to_le_bytes());
    pages.extend_from_slice(&[0, 0, 0, 0]);
    pages.extend_from_slice(&page);
    let mut p = b.with(RecordKind::PPGTT_ROOTS, roots_plus(&b, frame));
    let at = p.find(RecordKind::CONFIG_SPACE).unwrap();
    p.records.insert(
        at,
        Part {
            kind: RecordKind::PAGES,
            flags: RecordFlags::MANDATORY,
            version: 1,
            payload: pages.clone(),
        },
    );
    assert_eq!(b.refuse(&p), VgpuError::BadPpgtt);
    // Control: the same page without the loop (an empty PML4) is a valid PPGTT.
    let last = p
        .records
        .iter()
        .rposition(|r| r.kind == RecordKind::PAGES)
        .unwrap();
    p.records[last].payload[16..24].fill(0);
    b.restore(&p.seal()).0.unwrap();
    // Counts inconsistent with the payload.
    let mut bad_count = b.payload(RecordKind::PPGTT_ROOTS).to_vec();
    bad_count[0] += 1;
    assert_eq!(
        b.refuse(&b.with(RecordKind::PPGTT_ROOTS, bad_count)),
        VgpuError::BadPpgtt
    );
}

// ---- identity -------------------------------------------------------------------------------

#[test]
fn vgpu_type_and_device_identity_mismatches_are_refused_at_the_header() {
    use migstream::Incompatible as I;
    let b = bed();
    type Case = (
        &'static str,
        fn(&mut StreamHeaderRepr),
        fn(&VgpuError) -> bool,
    );
    let cases: [Case; 8] = [
        (
            "vendor",
            |h| h.identity.pci_vendor ^= 1,
            |e| matches!(e, VgpuError::Incompatible(I::Vendor { .. })),
        ),
        (
            "device",
            |h| h.identity.pci_device ^= 1,
            |e| matches!(e, VgpuError::Incompatible(I::Device { .. })),
        ),
        (
            "generation",
            |h| h.identity.generation += 1,
            |e| matches!(e, VgpuError::Incompatible(I::Generation { .. })),
        ),
        (
            "aperture",
            |h| h.identity.aperture_size *= 2,
            |e| matches!(e, VgpuError::Incompatible(I::ApertureSize { .. })),
        ),
        (
            "hidden",
            |h| h.identity.hidden_size += 4096,
            |e| matches!(e, VgpuError::Incompatible(I::HiddenSize { .. })),
        ),
        (
            "fences",
            |h| h.identity.fence_count += 1,
            |e| matches!(e, VgpuError::Incompatible(I::FenceCount { .. })),
        ),
        (
            "guest view",
            |h| h.identity.hidden_base += 1 << 20,
            |e| *e == VgpuError::GuestViewMismatch,
        ),
        (
            "guest view: aperture base",
            |h| h.identity.aperture_base += 1 << 20,
            |e| *e == VgpuError::GuestViewMismatch,
        ),
    ];
    for (what, change, want) in cases {
        let e = b.refuse(&b.with_header(change));
        assert!(want(&e), "{what}: {e:?}");
    }
    // The config space of another device (vendor/device id bytes).
    let mut cfg = b.payload(RecordKind::CONFIG_SPACE).to_vec();
    cfg[2] ^= 1;
    assert_eq!(
        b.refuse(&b.with(RecordKind::CONFIG_SPACE, cfg)),
        VgpuError::BadConfigSpace
    );
}

// ---- versions -------------------------------------------------------------------------------

/// The parts of a minor-version-7 stream with a record of an unknown `kind` before END.
fn future(b: &Bed, kind: u16, flags: RecordFlags) -> Parts {
    let mut p = b.with_header(|h| h.minor = 7);
    p.records.push(Part {
        kind: RecordKind(kind),
        flags,
        version: 3,
        payload: b"a record of format 1.7".to_vec(),
    });
    p
}

#[test]
fn a_future_minor_version_with_an_unknown_mandatory_record_is_refused() {
    let b = bed();
    match b.refuse(&future(&b, 0x0042, RecordFlags::MANDATORY)) {
        VgpuError::Stream(d) => assert_eq!(
            d.kind(),
            migstream::ErrorKind::UnknownMandatory {
                kind: RecordKind(0x0042)
            }
        ),
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_future_minor_version_with_an_unknown_optional_record_is_skipped() {
    let b = bed();
    let (r, state) = b.restore(&b.wire);
    r.unwrap();
    // SPEC.md §5 rule 6 and §7: a 1.0 reader accepts any 1.x stream and skips an unknown kind
    // without MANDATORY; the restored state is the one of the same stream without it.
    let (r2, state2) = b.restore(&future(&b, 0x0043, RecordFlags::NONE).seal());
    r2.unwrap();
    assert!(state2 == state, "{}", state.diff(&state2));
}

#[test]
fn device_state_records_of_an_unknown_version_are_refused() {
    let b = bed();
    for kind in [
        RecordKind::CONFIG_SPACE,
        RecordKind::REGISTERS,
        RecordKind::GGTT_RUNS,
        RecordKind::GGTT_PENDING,
        RecordKind::PPGTT_ROOTS,
        RecordKind::ENGINE_STATE,
    ] {
        let mut p = b.parts.clone();
        let i = p.find(kind).unwrap();
        p.records[i].version = vgpu::dest::record_version(kind) + 1;
        let e = b.refuse(&p);
        assert_eq!(e, VgpuError::UnsupportedRecord { kind: kind.0 }, "{kind:?}");
    }
}

#[test]
fn device_state_lengths_beyond_the_format_are_blamed_on_the_stream_not_on_staging() {
    // A damaged length field (8 MiB: within the format's 16 MiB, beyond the staging storage and
    // beyond each kind's bound, the registers' 3 MiB included) on each bounded device-state
    // record: refused at the record header, as the stream's fault.
    let b = bed();
    let spans = vgpu::sim::campaign::records(&b.wire);
    for (kind, want) in [
        (RecordKind::CONFIG_SPACE, "BadConfigSpace"),
        (RecordKind::REGISTERS, "Mmio(Malformed"),
        (RecordKind::GGTT_PENDING, "Gtt(Truncated)"),
        (RecordKind::GGTT_RUNS, "Gtt(OutOfRange)"),
        (RecordKind::PPGTT_ROOTS, "BadPpgtt"),
        (RecordKind::ENGINE_STATE, "Engine(TrailingBytes"),
    ] {
        let s = spans.iter().find(|s| s.header.kind == kind).unwrap();
        let mut w = b.wire.clone();
        w[s.offset + 4..s.offset + 8].copy_from_slice(&(1u32 << 23).to_le_bytes());
        let e = b.restore(&w).0.unwrap_err();
        assert_eq!(e.fault(), vgpu::error::Fault::Stream, "{kind:?}: {e:?}");
        assert!(format!("{e:?}").starts_with(want), "{kind:?}: {e:?}");
    }
}

// ---- counts and sizes -----------------------------------------------------------------------

#[test]
fn counts_and_sizes_inconsistent_with_payloads_are_refused() {
    let b = bed();
    // Config space one byte short.
    let cfg = b.payload(RecordKind::CONFIG_SPACE);
    assert_eq!(
        b.refuse(&b.with(RecordKind::CONFIG_SPACE, cfg[..cfg.len() - 1].to_vec())),
        VgpuError::BadConfigSpace
    );
    // Register runs: the last one claiming one value more than the payload carries, the first
    // one claiming none.
    let regs = b.payload(RecordKind::REGISTERS).to_vec();
    let mut last = 0;
    while last + 8 + 4 * u32_at(&regs, last + 4) as usize != regs.len() {
        last += 8 + 4 * u32_at(&regs, last + 4) as usize;
    }
    for (at, count) in [(last, u32_at(&regs, last + 4) + 1), (0, 0)] {
        let mut r = regs.clone();
        r[at + 4..at + 8].copy_from_slice(&count.to_le_bytes());
        match b.refuse(&b.with(RecordKind::REGISTERS, r)) {
            VgpuError::Mmio(mmio::MmioError::Malformed { .. }) => {}
            e => panic!("run at {at}, count {count}: {e:?}"),
        }
    }
    // Engine state claiming one engine more than it has, and a queue over capacity.
    let eng = b.payload(RecordKind::ENGINE_STATE).to_vec();
    let mut more = eng.clone();
    more[1] += 1;
    assert!(matches!(
        b.refuse(&b.with(RecordKind::ENGINE_STATE, more)),
        VgpuError::Engine(_)
    ));
    // Engine 0's queue_len (byte 68 of its 72-byte record) set past the capacity, with that many
    // 20-byte workload records inserted after the engine record.
    let over = engines::QUEUE_CAPACITY + 1;
    let mut q = eng[..4 + 72].to_vec();
    let had = usize::from(q[4 + 68]);
    q[4 + 68] = over as u8;
    let rest = &eng[4 + 72..];
    for _ in 0..over - had {
        let mut w = vec![0u8, 0, 0, 0];
        w.extend_from_slice(&[0; 16]);
        q.extend_from_slice(&w);
    }
    q.extend_from_slice(rest);
    match b.refuse(&b.with(RecordKind::ENGINE_STATE, q)) {
        VgpuError::Engine(engines::EngineError::QueueTooLong { .. }) => {}
        e => panic!("{e:?}"),
    }
    // A FULL page run claiming one page more than the record carries: a record cut to its first
    // run, a FULL one (records may mix encodings, so the run must be the record's last).
    let i = b
        .parts
        .records
        .iter()
        .position(|r| r.kind == RecordKind::PAGES && r.payload[12] == 0)
        .unwrap();
    let mut p = b.parts.clone();
    let c = u32_at(&p.records[i].payload, 8);
    p.records[i].payload.truncate(16 + 4096 * c as usize);
    p.records[i].payload[8..12].copy_from_slice(&(c + 1).to_le_bytes());
    match b.refuse(&p) {
        VgpuError::Stream(d) => assert_eq!(
            d.kind(),
            migstream::ErrorKind::MalformedPageRun(migstream::PageRunError::Overrun)
        ),
        e => panic!("{e:?}"),
    }
}

// ---- resource exhaustion --------------------------------------------------------------------

/// Migrate the idle workload with the guest frozen (so every run saves the same state) and an
/// output buffer of `chunk` bytes per poll; the destination's state after the restore.
fn frozen_migration(chunk: usize) -> (usize, Snapshot) {
    let sc = Scenario::small(Profile::IDLE, 20, 1).unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let plan = Plan {
        start_step: 10,
        chunk,
        feed: 1 << 20,
        freeze_guest: true,
        content_cache_pages: 0,
        ..Plan::default()
    };
    let r = migrate(&mut a, &mut b, &plan).unwrap();
    (r.wire.len(), Snapshot::of(&b))
}

#[test]
fn a_one_byte_output_buffer_migrates_the_same_state() {
    // The source sizes PAGES records to what fits, so the bytes may differ; the state may not.
    let (one_len, one) = frozen_migration(1);
    let (big_len, big) = frozen_migration(64 * 1024);
    assert!(one_len > 80 && big_len > 80);
    if let Some(d) = big.diff(&one) {
        panic!("{d}");
    }
}

/// Boot the guest and let it run a little.
fn boot(a: &mut Machine<'_>) {
    a.boot().unwrap();
    for _ in 0..10 {
        a.step().unwrap();
    }
}

#[test]
fn source_storage_too_small_is_refused_and_changes_nothing_then_the_retry_works() {
    let sc = Scenario::small(Profile::IDLE, 20, 1).unwrap();
    let mut st = sc.storage();
    let mut a = sc.machine(&mut st, false).unwrap();
    boot(&mut a);
    let frames = a.vgpu.memory_map().frames() as usize;
    let before = Snapshot::of(&a);
    let words = gmem::words_for(frames);
    // Tiny scratch; a send bitmap one word short; an empty one.
    for (bits, scratch) in [
        (words, 1usize),
        (words, vgpu::source::MIN_SCRATCH - 1),
        (words - 1, vgpu::source::MIN_SCRATCH),
        (0, vgpu::source::MIN_SCRATCH),
    ] {
        let mut send = vec![0u64; bits];
        let mut scr = vec![0u8; scratch];
        let r = SourceSession::open(
            &mut a.vgpu,
            &mut a.cpu_log,
            SourceConfig::default(),
            &mut send,
            &mut scr,
        );
        assert_eq!(
            r.err(),
            Some(VgpuError::StorageSize),
            "{bits} words, {scratch} B"
        );
        assert_eq!(a.vgpu.state(), vgpu::fsm::MigState::Running);
        assert!(
            Snapshot::of(&a) == before,
            "a refused open changed the source"
        );
    }
    // The retry with enough storage migrates, and the stream restores.
    let mut send = vec![0u64; words];
    let mut scr = vec![0u8; vgpu::source::MIN_SCRATCH];
    let mut s = SourceSession::open(
        &mut a.vgpu,
        &mut a.cpu_log,
        SourceConfig::default(),
        &mut send,
        &mut scr,
    )
    .unwrap();
    let mut out = vec![0u8; 4096];
    let mut wire = Vec::new();
    while !s.is_finished() {
        let n = s
            .poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
            .unwrap();
        wire.extend_from_slice(&out[..n]);
        while let Some(ev) = s.poll_event() {
            if matches!(ev, SourceEvent::Switch { .. }) {
                assert!(a.quiesce());
                s.stop_and_copy(&mut a.vgpu, &mut a.cpu_log).unwrap();
            }
        }
    }
    let mut st_b = sc.storage();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    let mut staging = vec![0u8; staging_len(&sc)];
    restore(&mut b, &mut staging, &wire, 4096)
        .unwrap()
        .0
        .unwrap();
}

#[test]
fn destination_staging_too_small_is_a_local_error_and_the_retry_with_what_it_asked_for_works() {
    let b = bed();
    let mut st = b.sc.storage();
    let mut m = b.sc.machine(&mut st, true).unwrap();
    let mut len = 16usize;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut staging = vec![0u8; len];
        let (r, after) = restore(&mut m, &mut staging, &b.wire, 4096).unwrap();
        match r {
            Ok(()) => break,
            Err(VgpuError::StagingFull { needed }) => {
                assert_eq!(
                    VgpuError::StagingFull { needed }.fault(),
                    vgpu::error::Fault::Local
                );
                assert!(needed > len, "asks for more than it had");
                let after = after.unwrap();
                assert!(after == b.fresh, "{}", b.fresh.diff(&after));
                len = needed;
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(attempts < 16, "the retries converge");
    }
    assert!(attempts > 1);
    // The state equals a restore with ample staging.
    let (r, full) = b.restore(&b.wire);
    r.unwrap();
    assert!(DeviceState::of(&m) == full);
}

#[test]
fn a_local_payload_limit_is_a_local_error_and_the_default_limit_works() {
    let b = bed();
    let mut st = b.sc.storage();
    let mut m = b.sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; staging_len(&b.sc)];
    let mut d = DestSession::open(
        &mut m.vgpu,
        &mut staging,
        migstream::Limits::with_max_payload(1024),
    )
    .unwrap();
    let e = d.feed(&m.vgpu, &mut m.mem, &b.wire).unwrap_err();
    assert_eq!(e.fault(), vgpu::error::Fault::Local, "{e:?}");
    let after = DeviceState::of(&m);
    assert!(after == b.fresh, "{}", b.fresh.diff(&after));
    let (r, _) = restore(&mut m, &mut staging, &b.wire, 4096).unwrap();
    r.unwrap();
}

#[test]
fn a_full_event_queue_keeps_the_switch_and_the_migration_completes() {
    let sc = Scenario::small(Profile::TWO_D, 40, 3).unwrap();
    let mut st = sc.storage();
    let mut a = sc.machine(&mut st, false).unwrap();
    boot(&mut a);
    let frames = a.vgpu.memory_map().frames() as usize;
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scr = vec![0u8; 64 * 1024];
    let mut cfg = SourceConfig::default();
    cfg.policy.max_rounds = 12;
    let mut s = SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scr).unwrap();
    let mut out = vec![0u8; 64 * 1024];
    let mut wire = Vec::new();
    // Never drain events until the source waits for the stop: more round summaries than the
    // queue holds pile up.
    loop {
        let n = s
            .poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
            .unwrap();
        wire.extend_from_slice(&out[..n]);
        if n == 0 {
            break;
        }
        a.step().unwrap();
    }
    let mut events = Vec::new();
    while let Some(ev) = s.poll_event() {
        events.push(ev);
    }
    assert!(events.len() <= 8, "bounded queue");
    let rounds: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::RoundEnd { round, .. } => Some(*round),
            _ => None,
        })
        .collect();
    assert!(
        rounds.windows(2).all(|w| w[1] == w[0] + 1),
        "the newest rounds, in order: {rounds:?}"
    );
    assert!(
        matches!(events.last(), Some(SourceEvent::Switch { .. })),
        "{events:?}"
    );
    assert!(a.quiesce());
    s.stop_and_copy(&mut a.vgpu, &mut a.cpu_log).unwrap();
    while !s.is_finished() {
        let n = s
            .poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
            .unwrap();
        wire.extend_from_slice(&out[..n]);
    }
    let mut st_b = sc.storage();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    let mut staging = vec![0u8; staging_len(&sc)];
    restore(&mut b, &mut staging, &wire, 4096)
        .unwrap()
        .0
        .unwrap();
}

// ---- pages (SPEC.md §6.1 consumer rules) ----------------------------------------------------

/// A page run header (SPEC.md §6.1).
fn page_run(first_frame: u64, count: u32, encoding: u8) -> Vec<u8> {
    let mut h = [0u8; 16];
    migstream::PageRunRepr {
        first_frame,
        count,
        encoding: migstream::PageEncoding(encoding),
    }
    .emit(&mut h);
    h.to_vec()
}

impl Bed {
    /// A guest frame the stream sends in full (so it is in guest memory), and its page as sent.
    fn sent_frame(&self) -> (u64, Vec<u8>) {
        let r = self
            .parts
            .records
            .iter()
            .find(|r| {
                r.kind == RecordKind::PAGES && r.payload.len() >= 16 + 4096 && r.payload[12] == 0
            })
            .unwrap();
        let frame = u64::from_le_bytes(r.payload[..8].try_into().unwrap());
        (frame, r.payload[16..16 + 4096].to_vec())
    }

    /// The parts with one more record before the device state.
    fn with_record(&self, kind: RecordKind, flags: RecordFlags, payload: Vec<u8>) -> Parts {
        let mut p = self.parts.clone();
        let at = p.find(RecordKind::CONFIG_SPACE).unwrap();
        p.records.insert(
            at,
            Part {
                kind,
                flags,
                version: 1,
                payload,
            },
        );
        p
    }

    /// The parts with one more PAGES record, carrying `payload`, before the device state.
    fn with_pages(&self, payload: Vec<u8>) -> Parts {
        self.with_record(RecordKind::PAGES, RecordFlags::MANDATORY, payload)
    }
}

#[test]
fn dup_pages_whose_hash_does_not_match_the_copied_page_are_refused() {
    let b = bed();
    let (frame, page) = b.sent_frame();
    let page: [u8; 4096] = page.try_into().unwrap();
    let hash = gmem::page_hash(&page);
    let dup = |h: u64| {
        [
            page_run(frame + 1, 1, 2),
            frame.to_le_bytes().to_vec(),
            h.to_le_bytes().to_vec(),
        ]
        .concat()
    };
    // The real hash of the copied page: accepted, and the copy is what the stream said.
    let (r, _) = b.restore(&b.with_pages(dup(hash)).seal());
    r.unwrap();
    // Any other hash: the stream is refused before anything is committed (SPEC.md §6.1 MUST).
    assert_eq!(
        b.refuse(&b.with_pages(dup(hash ^ 1))),
        VgpuError::DuplicateMismatch {
            gfn: frame + 1,
            from: frame
        }
    );
}

#[test]
fn pages_naming_frames_outside_guest_memory_are_refused() {
    let b = bed();
    let (inside, page) = b.sent_frame();
    let outside = 1u64 << 40;
    let hash = gmem::page_hash(&page.clone().try_into().unwrap());
    let cases: [(&str, Vec<u8>, u64); 5] = [
        (
            "FULL",
            [page_run(outside, 1, 0), vec![0x5A; 4096]].concat(),
            outside,
        ),
        ("ZERO", page_run(outside - 1, 3, 1), outside - 1),
        (
            "DUP target",
            [
                page_run(outside, 1, 2),
                inside.to_le_bytes().to_vec(),
                hash.to_le_bytes().to_vec(),
            ]
            .concat(),
            outside,
        ),
        (
            "DUP source",
            [
                page_run(inside, 1, 2),
                outside.to_le_bytes().to_vec(),
                0u64.to_le_bytes().to_vec(),
            ]
            .concat(),
            outside,
        ),
        (
            "DELTA",
            [page_run(outside, 1, 3), vec![5, 0, 0, 0, 1, 0, 0xFF]].concat(),
            outside,
        ),
    ];
    for (what, payload, gfn) in cases {
        assert_eq!(
            b.refuse(&b.with_pages(payload)),
            VgpuError::FrameOutsideMemory { gfn },
            "{what}"
        );
    }
}

// ---- reserved kinds and record counts (SPEC.md §6, Appendix A) --------------------------------

#[test]
fn records_of_the_reserved_kinds_are_refused_with_or_without_mandatory() {
    let b = bed();
    for kind in [
        RecordKind::QUEUED_WORK,
        RecordKind::GUEST_VIEW,
        RecordKind::OPREGION,
    ] {
        for flags in [RecordFlags::MANDATORY, RecordFlags::NONE] {
            assert_eq!(
                b.refuse(&b.with_record(kind, flags, vec![0; 16])),
                VgpuError::UnsupportedRecord { kind: kind.0 },
                "{kind:?} {flags:?}"
            );
        }
    }
}

#[test]
fn a_stream_without_exactly_one_of_each_single_device_state_record_is_refused() {
    let b = bed();
    for kind in [
        RecordKind::CONFIG_SPACE,
        RecordKind::REGISTERS,
        RecordKind::GGTT_PENDING,
        RecordKind::PPGTT_ROOTS,
        RecordKind::ENGINE_STATE,
    ] {
        // Missing.
        let mut p = b.parts.clone();
        let i = p.find(kind).unwrap();
        let rec = p.records.remove(i);
        assert_eq!(
            b.refuse(&p),
            VgpuError::RecordCount {
                kind: kind.0,
                seen: 0
            },
            "{kind:?} missing"
        );
        // Twice.
        let mut p = b.parts.clone();
        p.records.insert(i, rec);
        assert_eq!(
            b.refuse(&p),
            VgpuError::RecordCount {
                kind: kind.0,
                seen: 2
            },
            "{kind:?} twice"
        );
    }
}

#[test]
fn device_state_in_another_order_is_accepted_and_restores_the_same_state() {
    // SPEC.md Appendix A: the reader does not depend on the order of the device-state records.
    let b = bed();
    let (r, want) = b.restore(&b.wire);
    r.unwrap();
    let mut p = b.parts.clone();
    let first = p.find(RecordKind::CONFIG_SPACE).unwrap();
    let tail = p.records.split_off(first);
    let (ggtt, mut rest): (Vec<Part>, Vec<Part>) = tail
        .into_iter()
        .partition(|r| r.kind == RecordKind::GGTT_RUNS);
    rest.reverse();
    p.records.extend(rest);
    p.records.extend(ggtt);
    let (r, got) = b.restore(&p.seal());
    r.unwrap();
    assert!(got == want, "{}", want.diff(&got));
}

// ---- engine state ranges (SPEC.md Appendix A.5) ------------------------------------------------

#[test]
fn engine_state_out_of_its_ranges_is_refused() {
    let b = bed();
    let eng = b.payload(RecordKind::ENGINE_STATE).to_vec();
    // Both CSB pointers of engine 0 (bytes 2 and 3 of its record): 0..5 or 7, each.
    for (at, value) in [(4 + 2, 6u8), (4 + 3, 6), (4 + 2, 8), (4 + 3, 0xFF)] {
        let mut e = eng.clone();
        e[at] = value;
        assert_eq!(
            b.refuse(&b.with(RecordKind::ENGINE_STATE, e)),
            VgpuError::Engine(engines::EngineError::BadCsbPointer { value }),
            "byte {at} = {value}"
        );
    }
    // The reset value 7 is accepted for both.
    let mut e = eng.clone();
    e[4 + 2] = 7;
    e[4 + 3] = 7;
    b.restore(&b.with(RecordKind::ENGINE_STATE, e).seal())
        .0
        .unwrap();
    // A queued workload on engine 0 whose flags set a bit other than bit 0 (schedule-in).
    let had = usize::from(eng[4 + 68]);
    assert!(had < engines::QUEUE_CAPACITY);
    let at = 4 + 72 + 20 * had;
    for flags in [0x01u8, 0x02, 0x80] {
        let mut e = eng[..at].to_vec();
        e[4 + 68] += 1;
        e.extend_from_slice(&[0, flags, 0, 0]);
        e.extend_from_slice(&[0; 16]);
        e.extend_from_slice(&eng[at..]);
        let r = b.restore(&b.with(RecordKind::ENGINE_STATE, e).seal()).0;
        if flags == 0x01 {
            r.unwrap();
        } else {
            assert!(
                matches!(
                    r,
                    Err(VgpuError::Engine(engines::EngineError::Malformed { .. }))
                ),
                "flags {flags:#04x}: {r:?}"
            );
        }
    }
}
