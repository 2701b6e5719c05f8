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
use sim::campaign::{
    CampaignConfig, DeviceState, Part, Parts, encode_registers, header_is_unbound, parse_registers,
    restore, run, run_workload, staging_len, valid_stream,
};
use sim::scenario::{Plan, Scenario, Snapshot, migrate};
use sim::{Machine, Profile};
use vgpu::dest::DestSession;
use vgpu::error::VgpuError;
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
    let at = last_round(&p);
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
    let spans = sim::campaign::records(&b.wire);
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
        // The error names the buffer and the size it needs.
        let want = if bits != words {
            vgpu::error::StorageError {
                buffer: vgpu::error::Buffer::Send,
                needed: words,
                got: bits,
            }
        } else {
            vgpu::error::StorageError {
                buffer: vgpu::error::Buffer::Scratch,
                needed: vgpu::source::MIN_SCRATCH,
                got: scratch,
            }
        };
        assert_eq!(
            r.err(),
            Some(VgpuError::Storage(want)),
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
    // Enough for the page map (a few hundred bytes here), not for the device state.
    let mut len = 4096usize;
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

/// Where the last ROUND record is: a record inserted there belongs to the final round.
fn last_round(p: &Parts) -> usize {
    p.records
        .iter()
        .rposition(|r| r.kind == RecordKind::ROUND)
        .unwrap()
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

    /// The parts with one more record before the device state (a PAGES record: in the final
    /// round, before its ROUND record, where a source writes pages).
    fn with_record(&self, kind: RecordKind, flags: RecordFlags, payload: Vec<u8>) -> Parts {
        let mut p = self.parts.clone();
        let at = if kind == RecordKind::PAGES {
            last_round(&p)
        } else {
            p.find(RecordKind::CONFIG_SPACE).unwrap()
        };
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
fn a_dup_source_written_since_its_hash_was_checked_is_checked_again() {
    // The destination hashes a DUP's source once while the source is unchanged; any write to it
    // (FULL, DELTA, ZERO, a DUP onto it) makes the next DUP from it check its hash again.
    let b = bed();
    let (frame, page) = b.sent_frame();
    let hash = gmem::page_hash(&page.clone().try_into().unwrap());
    let dup = |to: u64, h: u64| {
        [
            page_run(to, 1, 2),
            frame.to_le_bytes().to_vec(),
            h.to_le_bytes().to_vec(),
        ]
        .concat()
    };
    // Two DUPs from the unchanged source with its hash: accepted, both copies are the page.
    let (r, _) = b.restore(
        &b.with_pages([dup(frame + 1, hash), dup(frame + 2, hash)].concat())
            .seal(),
    );
    r.unwrap();
    let writes: [(&str, Vec<u8>); 4] = [
        ("FULL", [page_run(frame, 1, 0), vec![0x5A; 4096]].concat()),
        (
            "DELTA",
            [
                page_run(frame, 1, 3),
                5u16.to_le_bytes().to_vec(),
                0u16.to_le_bytes().to_vec(),
                1u16.to_le_bytes().to_vec(),
                vec![0x80],
            ]
            .concat(),
        ),
        ("ZERO", page_run(frame - 1, 3, 1)),
        // A DUP onto the source, of a known-zero frame.
        (
            "DUP onto it",
            [
                page_run(frame + 3, 1, 1),
                page_run(frame, 1, 2),
                (frame + 3).to_le_bytes().to_vec(),
                gmem::page_hash(&[0; 4096]).to_le_bytes().to_vec(),
            ]
            .concat(),
        ),
    ];
    for (what, write) in writes {
        let stale = [dup(frame + 1, hash), write, dup(frame + 2, hash)].concat();
        assert_eq!(
            b.refuse(&b.with_pages(stale)),
            VgpuError::DuplicateMismatch {
                gfn: frame + 2,
                from: frame
            },
            "{what}"
        );
    }
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
    // A descriptor the vGPU would queue (valid, privileged, 4-level, context in the aperture).
    let desc = b.sc.config.partition.aperture.base().get() | 0x119;
    for flags in [0x01u8, 0x02, 0x80] {
        let mut e = eng[..at].to_vec();
        e[4 + 68] += 1;
        e.extend_from_slice(&[0, flags, 0, 0]);
        e.extend_from_slice(&[0; 8]);
        e.extend_from_slice(&desc.to_le_bytes());
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

// ---- issue 21: linear work, the right blame, only what a source sends -------------------------

/// Guest memory that counts the page writes reaching it.
struct Counting<'m> {
    mem: &'m mut sim::SimMemory,
    writes: u64,
}

impl vgpu::traits::GuestMemory for Counting<'_> {
    fn read(
        &self,
        gfn: gtt::Gfn,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), vgpu::traits::MemoryError> {
        self.mem.read(gfn, offset, out)
    }
    fn write(
        &mut self,
        gfn: gtt::Gfn,
        offset: usize,
        data: &[u8],
    ) -> Result<(), vgpu::traits::MemoryError> {
        self.writes += 1;
        self.mem.write(gfn, offset, data)
    }
}

/// Feed `wire` whole into a fresh destination with staging of [`DestSession::staging_len`],
/// counting guest-memory writes; then commit. Returns the result and the writes.
fn feed_counting(b: &Bed, wire: &[u8]) -> (Result<(), VgpuError>, u64) {
    let mut st = b.sc.storage();
    let mut m = b.sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; DestSession::staging_len(&m.vgpu)];
    let mut d = DestSession::open(&mut m.vgpu, &mut staging, migstream::Limits::DEFAULT).unwrap();
    let mut mem = Counting {
        mem: &mut m.mem,
        writes: 0,
    };
    let r = d.feed(&m.vgpu, &mut mem, wire).map(|_| ());
    let writes = mem.writes;
    let r = r.and_then(|()| d.commit(&mut m.vgpu, &m.mem, &mut m.host).map(|_| ()));
    (r, writes)
}

#[test]
fn a_zero_flood_writes_each_page_at_most_once_more_than_the_stream_paid_for() {
    // SPEC.md §6.1 (reader work, round budget): 65,536 ZERO runs, each over the whole first
    // memory region, are refused once the round holds more than twice the guest's frames, having
    // cost the destination no more than the pages they really changed.
    let b = bed();
    let (r, valid_writes) = feed_counting(&b, &b.wire);
    r.unwrap();
    let region = b.sc.map.regions()[0];
    let mut flood = Vec::new();
    for _ in 0..65_536 {
        flood.extend(page_run(region.start().get(), region.count() as u32, 1));
    }
    let (r, writes) = feed_counting(&b, &b.with_pages(flood).seal());
    let e = r.unwrap_err();
    assert!(
        matches!(e, VgpuError::RoundOverBudget { channel: 0, .. }),
        "{e:?}"
    );
    assert_eq!(e.fault(), vgpu::error::Fault::Stream);
    assert!(
        writes <= valid_writes + region.count(),
        "{writes} writes for the flood, {valid_writes} for the valid stream"
    );
    // A run within the budget does what it says: the region reads as zero afterwards.
    let wire = b.with_pages(page_run(region.start().get(), region.count() as u32, 1));
    let mut st = b.sc.storage();
    let mut m = b.sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; staging_len(&b.sc)];
    restore(&mut m, &mut staging, &wire.seal(), 4096)
        .unwrap()
        .0
        .unwrap();
    let mut page = [0u8; 4096];
    for f in region.start().get()..region.end() {
        vgpu::traits::GuestMemory::read(&m.mem, gtt::Gfn::new(f), 0, &mut page).unwrap();
        assert!(gmem::is_zero_page(&page), "frame {f:#x}");
    }
}

#[test]
fn a_round_that_names_frames_again_and_again_is_refused() {
    // SPEC.md §6.1 (round budget): a source sends a frame at most once a round (twice across a
    // round the stop abandoned), so a round of more pages than twice the channel's frames is the
    // stream's fault, whatever the encoding. Each flood names two frames in turn, one page a run.
    let b = bed();
    let (frame, page) = b.sent_frame();
    let other = if frame == b.sc.map.regions()[0].start().get() {
        frame + 1
    } else {
        b.sc.map.regions()[0].start().get()
    };
    let pages = 2 * b.sc.map.frames() + 2;
    let hash = gmem::page_hash(&page.clone().try_into().unwrap());
    for encoding in [0u8, 1, 2, 3] {
        let mut flood = Vec::new();
        for k in 0..pages {
            let f = if k % 2 == 0 { other } else { frame };
            flood.extend(page_run(f, 1, encoding));
            match encoding {
                0 => flood.extend_from_slice(&page),
                2 => {
                    flood.extend_from_slice(&frame.to_le_bytes());
                    flood.extend_from_slice(&hash.to_le_bytes());
                }
                3 => flood.extend_from_slice(&[5, 0, 0, 0, 1, 0, 0x5a]),
                _ => {}
            }
        }
        let e = b.refuse(&b.with_pages(flood));
        assert!(
            matches!(e, VgpuError::RoundOverBudget { channel: 0, .. }),
            "encoding {encoding}: {e:?}"
        );
        assert_eq!(e.fault(), vgpu::error::Fault::Stream);
    }
    // Every frame once more in the final round (as after a round the stop abandoned): within
    // the budget, accepted.
    let all: Vec<u8> =
        b.sc.map
            .regions()
            .iter()
            .flat_map(|r| page_run(r.start().get(), r.count() as u32, 1))
            .collect();
    b.restore(&b.with_pages(all).seal()).0.unwrap();
}

#[test]
fn a_zero_run_over_a_hole_or_another_channel_is_refused_at_its_first_bad_page() {
    let b = bed();
    let [low, high] = [b.sc.map.regions()[0], b.sc.map.regions()[1]];
    // From the last frame of the low region over the hole: the first frame past the region.
    assert_eq!(
        b.refuse(&b.with_pages(page_run(low.end() - 1, 2, 1))),
        VgpuError::FrameOutsideMemory { gfn: low.end() }
    );
    // A count running past the end of memory.
    assert_eq!(
        b.refuse(&b.with_pages(page_run(high.start().get(), u32::MAX, 1))),
        VgpuError::FrameOutsideMemory { gfn: high.end() }
    );
}

#[test]
fn device_state_repeated_or_over_its_bound_is_the_streams_fault_at_its_first_byte() {
    // With the staging the configuration calls for, no stream gets StagingFull: a second copy of a
    // once-only record is refused when it begins, and GGTT records beyond what the GGTT can hold
    // are refused at the bound, both as the stream's fault.
    let b = bed();
    for (kind, copies) in [
        (RecordKind::CONFIG_SPACE, 20),
        (RecordKind::ENGINE_STATE, 200),
        (RecordKind::REGISTERS, 3),
        (RecordKind::GGTT_PENDING, 2),
        (RecordKind::PPGTT_ROOTS, 2),
    ] {
        let mut p = b.parts.clone();
        let i = p.find(kind).unwrap();
        let rec = p.records[i].clone();
        for _ in 1..copies {
            p.records.insert(i, rec.clone());
        }
        let (r, _) = feed_counting(&b, &p.seal());
        let e = r.unwrap_err();
        assert_eq!(
            e,
            VgpuError::RecordCount {
                kind: kind.0,
                seen: 2
            },
            "{kind:?} x{copies}"
        );
        assert_eq!(e.fault(), vgpu::error::Fault::Stream);
    }
    // GGTT_RUNS records after the stop, each at its size bound (entries x 24 bytes of one-entry
    // RAW runs), until the group's bound.
    let cfg = &b.sc.config;
    let entries = cfg.partition.entries() as usize;
    let ap = cfg.partition.aperture;
    let first = (ap.base().get() >> 12) as u32;
    let mut run = Vec::new();
    let mut raw = vec![0u8; 16];
    raw[..4].copy_from_slice(&first.to_le_bytes());
    raw[4..8].copy_from_slice(&1u32.to_le_bytes());
    while run.len() + 24 <= entries * 24 {
        run.extend_from_slice(&raw);
        run.extend_from_slice(&[0u8; 8]);
    }
    let mut p = b.parts.clone();
    let at = p.records.len();
    for _ in 0..4 {
        p.records.insert(
            at,
            Part {
                kind: RecordKind::GGTT_RUNS,
                flags: RecordFlags::MANDATORY,
                version: 1,
                payload: run.clone(),
            },
        );
    }
    let (r, _) = feed_counting(&b, &p.seal());
    let e = r.unwrap_err();
    assert!(
        matches!(e, VgpuError::StateOverBound { kind: 3, .. }),
        "{e:?}"
    );
    assert_eq!(e.fault(), vgpu::error::Fault::Stream);
    // The bound is the configuration's: the valid stream fits in exactly that staging.
    let (r, _) = feed_counting(&b, &b.wire);
    r.unwrap();
}

#[test]
fn ggtt_records_of_one_group_that_overlap_are_refused() {
    // Every entry at most once per group: the same GGTT_RUNS record twice after the stop.
    let b = bed();
    let mut p = b.parts.clone();
    let i = p.find(RecordKind::GGTT_RUNS).unwrap();
    let rec = p.records[i].clone();
    p.records.insert(i, rec);
    assert_eq!(b.refuse(&p), VgpuError::Gtt(gtt::GttError::RunOrder));
}

#[test]
fn records_out_of_the_order_a_source_writes_are_refused() {
    let b = bed();
    let page = |p: &Parts| {
        p.records
            .iter()
            .find(|r| r.kind == RecordKind::PAGES)
            .unwrap()
            .clone()
    };
    // Pages after the device state began.
    let mut p = b.parts.clone();
    let pages = page(&p);
    let at = p.find(RecordKind::REGISTERS).unwrap();
    p.records.insert(at, pages.clone());
    assert_eq!(
        b.refuse(&p),
        VgpuError::RecordOrder {
            kind: RecordKind::PAGES.0
        }
    );
    // A ROUND record after the device state began.
    let mut p = b.parts.clone();
    let round = p.records.remove(last_round(&p));
    let at = p.find(RecordKind::REGISTERS).unwrap();
    p.records.insert(at, round);
    // The final round's pages now have no ROUND before the device state.
    assert_eq!(
        b.refuse(&p),
        VgpuError::RecordOrder {
            kind: RecordKind::PAGES.0
        }
    );
    // Pages at the very end of the device state (before END).
    let mut p = b.parts.clone();
    p.records.push(pages.clone());
    assert_eq!(
        b.refuse(&p),
        VgpuError::RecordOrder {
            kind: RecordKind::PAGES.0
        }
    );
    // A GGTT record in the middle of the rounds is device state: pages after it are refused.
    let mut p = b.parts.clone();
    let ggtt = p.records[p.find(RecordKind::GGTT_RUNS).unwrap()].clone();
    let first_round = p.find(RecordKind::ROUND).unwrap();
    p.records.insert(first_round, ggtt);
    let e = b.refuse(&p);
    assert!(matches!(e, VgpuError::RecordOrder { .. }), "{e:?}");
}

#[test]
fn round_numbers_that_do_not_continue_the_rounds_are_refused() {
    let b = bed();
    let rounds: Vec<usize> = b
        .parts
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == RecordKind::ROUND)
        .map(|(i, _)| i)
        .collect();
    assert!(rounds.len() >= 2, "the bed has pre-copy rounds");
    let set = |p: &mut Parts, i: usize, n: u32| {
        p.records[i].payload[..4].copy_from_slice(&n.to_le_bytes());
    };
    for (what, numbers) in [
        ("starts at 2", vec![2u32]),
        ("repeats", vec![0, 0]),
        ("goes back", vec![0, 1, 0]),
        ("skips, then goes on", vec![0, 2, 3]),
        ("skips two", vec![0, 3]),
    ] {
        let mut p = b.parts.clone();
        for (k, n) in numbers.iter().enumerate() {
            if let Some(&i) = rounds.get(k) {
                set(&mut p, i, *n);
            }
        }
        if numbers.len() > rounds.len() {
            continue;
        }
        let e = b.refuse(&p);
        assert!(
            matches!(e, VgpuError::BadRound { channel: 0, .. }),
            "{what}: {e:?}"
        );
        assert_eq!(e.fault(), vgpu::error::Fault::Stream);
    }
    // The one skip a source makes (the round the stop abandoned), on the last ROUND: accepted.
    let mut p = b.parts.clone();
    let last = *rounds.last().unwrap();
    let n = u32::from_le_bytes(p.records[last].payload[..4].try_into().unwrap());
    set(&mut p, last, n + 1);
    b.restore(&p.seal()).0.unwrap();
}

/// The engine state of the bed with one queued workload on engine 0: `(head, tail, descriptor)`.
fn with_queued(b: &Bed, head: u32, tail: u32, desc: u64) -> Parts {
    let mut eng = b.payload(RecordKind::ENGINE_STATE).to_vec();
    assert_eq!(eng[4 + 68], 0, "the bed's engine 0 has no queued work");
    eng[4 + 68] = 1;
    let mut w = vec![0u8, 1, 0, 0];
    w.extend_from_slice(&head.to_le_bytes());
    w.extend_from_slice(&tail.to_le_bytes());
    w.extend_from_slice(&desc.to_le_bytes());
    eng.splice(4 + 72..4 + 72, w);
    b.with(RecordKind::ENGINE_STATE, eng)
}

#[test]
fn queued_work_no_vgpu_would_queue_is_refused() {
    let b = bed();
    // A descriptor as the vGPU queues one: valid, privileged, 4-level PPGTT, its context state
    // page in the aperture; ring head and tail in their fields.
    let lrca = b.sc.config.partition.aperture.base().get();
    let good = lrca | 0x119;
    let (r, _) = b.restore(&with_queued(&b, 0x40, 0x80, good).seal());
    r.unwrap();
    let invalid = VgpuError::Engine(engines::EngineError::InvalidDescriptor);
    for (what, desc) in [
        ("zero", 0),
        ("all ones", u64::MAX),
        ("not valid", good & !1),
        ("not privileged", good & !0x100),
        ("state page outside the guest view", 0x9000_0000 | 0x119),
    ] {
        assert_eq!(
            b.refuse(&with_queued(&b, 0x40, 0x80, desc)),
            invalid,
            "{what}"
        );
    }
    let ring = VgpuError::Engine(engines::EngineError::RingOffset);
    for (what, head, tail) in [
        ("tail all ones", 0x40, u32::MAX),
        ("tail beyond the offset field", 0x40, 0x20_0000),
        ("tail not 8-aligned", 0x40, 0x84),
        ("head not 4-aligned", 0x42, 0x80),
    ] {
        assert_eq!(b.refuse(&with_queued(&b, head, tail, good)), ring, "{what}");
    }
    // A head with a wrap count (bits 31:21) is one a ring produces: accepted.
    let (r, _) = b.restore(&with_queued(&b, 0x0020_0040, 0x80, good).seal());
    r.unwrap();
}

#[test]
fn config_space_with_other_read_only_bytes_is_refused_and_guest_bytes_are_restored() {
    let b = bed();
    let cfg = b.payload(RecordKind::CONFIG_SPACE).to_vec();
    for (what, at) in [
        ("revision", 0x08),
        ("class", 0x0B),
        ("subsystem vendor", 0x2C),
        ("subsystem id", 0x2F),
    ] {
        let mut c = cfg.clone();
        c[at] ^= 0xFF;
        assert_eq!(
            b.refuse(&b.with(RecordKind::CONFIG_SPACE, c)),
            VgpuError::BadConfigSpace,
            "{what}"
        );
    }
    // A byte the guest writes (BAR0's low byte) is the guest's: restored as sent.
    let mut c = cfg.clone();
    c[0x10] ^= 0xF0;
    let (r, after) = b.restore(&b.with(RecordKind::CONFIG_SPACE, c.clone()).seal());
    r.unwrap();
    assert_eq!(after.config_space, c);
}

#[test]
fn ppgtt_roots_a_vgpu_never_records_are_refused() {
    let b = bed();
    let roots = b.payload(RecordKind::PPGTT_ROOTS).to_vec();
    let count = u32_at(&roots, 0) as usize;
    // A 3-level PPGTT without any page directory.
    let mut empty3 = roots.clone();
    empty3[..4].copy_from_slice(&(count as u32 + 1).to_le_bytes());
    empty3.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    empty3.extend_from_slice(&[0u8; 32]);
    assert_eq!(
        b.refuse(&b.with(RecordKind::PPGTT_ROOTS, empty3)),
        VgpuError::BadPpgtt
    );
    // The same root twice (the vGPU records an announced PPGTT once): a 3-level root over a
    // page directory the stream zeroes (nothing mapped, a valid tree), once and twice. The last
    // frames hold the guest's own tables (the last of all its 64 KiB page table): the directory
    // is the frame below them.
    let pd = b.sc.map.regions()[1].end() - 1 - GUEST_TABLES;
    b.restore(&with_zeroed_pd_roots(&b, pd, 1).seal())
        .0
        .unwrap();
    assert_eq!(
        b.refuse(&with_zeroed_pd_roots(&b, pd, 2)),
        VgpuError::BadPpgtt
    );
}

/// Frames at the end of the test guest's memory holding its PPGTT's tables (PML4, PDP, PD, PT,
/// and last a page table of 64 KiB pages).
const GUEST_TABLES: u64 = 5;

/// The bed's stream with `n` copies of a 3-level root over the page directory `pd` added to its
/// PPGTT roots, and `pd` zeroed in the final round.
fn with_zeroed_pd_roots(b: &Bed, pd: u64, n: usize) -> Parts {
    let mut r = b.payload(RecordKind::PPGTT_ROOTS).to_vec();
    let count = u32_at(&r, 0) as usize;
    r[..4].copy_from_slice(&((count + n) as u32).to_le_bytes());
    for _ in 0..n {
        r.extend_from_slice(&[3u8, 1, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(&pd.to_le_bytes());
        r.extend_from_slice(&[0u8; 24]);
    }
    let mut p = b.with(RecordKind::PPGTT_ROOTS, r);
    let at = last_round(&p);
    p.records.insert(
        at,
        Part {
            kind: RecordKind::PAGES,
            flags: RecordFlags::MANDATORY,
            version: 1,
            payload: page_run(pd, 1, 1),
        },
    );
    p
}

#[test]
fn a_page_serving_as_tables_of_two_levels_is_refused() {
    // SPEC.md A.4b: the trees of a record are walked together and a frame is a table at one
    // level only. The guest's last frame is a page table (of 64 KiB pages) in its own tree;
    // zeroed and announced as the page directory of a second PPGTT, each tree alone is clean
    // (the zeroed table maps nothing), the two together are not.
    let b = bed();
    let pt = b.sc.map.regions()[1].end() - 1;
    assert_eq!(
        b.refuse(&with_zeroed_pd_roots(&b, pt, 1)),
        VgpuError::BadPpgtt
    );
    // The frame below the guest's tables is no table of its tree: the same shape is accepted.
    b.restore(&with_zeroed_pd_roots(&b, pt - GUEST_TABLES, 1).seal())
        .0
        .unwrap();
}

#[test]
fn a_destination_whose_memory_is_not_zero_ends_with_the_sources_memory() {
    // The page map starts with every frame "may be non-zero": round 0's ZERO markers must really
    // zero a destination guest whose memory held something (a failed earlier attempt, say).
    use vgpu::traits::GuestMemory as _;
    let b = bed();
    let mut st_clean = b.sc.storage();
    let mut clean = b.sc.machine(&mut st_clean, true).unwrap();
    let mut staging = vec![0u8; staging_len(&b.sc)];
    restore(&mut clean, &mut staging, &b.wire, 4096)
        .unwrap()
        .0
        .unwrap();
    let mut st = b.sc.storage();
    let mut m = b.sc.machine(&mut st, true).unwrap();
    m.reset_for_restore().unwrap();
    let frames: Vec<gtt::Gfn> = (0..b.sc.map.frames() as usize)
        .map(|i| b.sc.map.frame_at(i).unwrap())
        .collect();
    for &f in &frames {
        m.mem.write(f, 0, &[0xAA; 4096]).unwrap();
    }
    let mut d = DestSession::open(&mut m.vgpu, &mut staging, migstream::Limits::DEFAULT).unwrap();
    d.feed(&m.vgpu, &mut m.mem, &b.wire).unwrap();
    d.commit(&mut m.vgpu, &m.mem, &mut m.host).unwrap();
    let (mut x, mut y) = ([0u8; 4096], [0u8; 4096]);
    for &f in &frames {
        m.mem.read(f, 0, &mut x).unwrap();
        clean.mem.read(f, 0, &mut y).unwrap();
        assert!(x == y, "frame {:#x} differs", f.get());
    }
}
