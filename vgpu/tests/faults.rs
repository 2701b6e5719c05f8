//! Damaged streams and interrupted migrations.
//!
//! - A damaged stream is rejected with an error, and the destination vGPU's device state (registers,
//!   GGTT, engines, config space) is exactly what it was before the stream arrived.
//! - A cancelled migration, or one whose connection drops, leaves the source running with nothing
//!   lost: its final state equals the never-migrated run, and a retried migration succeeds.
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

use sim::scenario::{Plan, Scenario, Snapshot, migrate};
use sim::{Machine, Profile, Rng};
use vgpu::dest::DestSession;
use vgpu::error::VgpuError;
use vgpu::source::{SourceEvent, SourceSession};

/// A valid stream of a 3D run, and the scenario that made it.
fn valid_stream() -> (Scenario, Vec<u8>) {
    let sc = Scenario::small(Profile::THREE_D, 30, 4).unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let r = migrate(&mut a, &mut b, &Plan::default()).unwrap();
    (sc, r.wire)
}

/// Device state of a vGPU, without guest memory (which a rejected stream may have written: the
/// destination guest never ran, and the migration as a whole fails).
fn device_state(
    m: &Machine<'_>,
) -> (
    Vec<u32>,
    Vec<u64>,
    engines::Engines,
    Vec<u8>,
    vgpu::instance::Derived,
) {
    let s = Snapshot::of(m);
    (s.vregs, s.ggtt, s.engines, s.config_space, s.derived)
}

/// Feed `bytes` into a fresh destination and commit; returns the error, and checks that a rejection
/// left the device state untouched.
fn restore(sc: &Scenario, bytes: &[u8]) -> Result<(), VgpuError> {
    let mut st = sc.storage();
    let mut b = sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; 1 << 20];
    let mut d = DestSession::open(&mut b.vgpu, &mut staging, migstream::Limits::DEFAULT).unwrap();
    // Opening the session is the STOP -> RESUMING arc (dispatch is held); compare from there.
    let before = device_state(&b);
    let mut result = Ok(());
    for piece in bytes.chunks(4096) {
        if let Err(e) = d.feed(&b.vgpu, &mut b.mem, piece) {
            result = Err(e);
            break;
        }
    }
    let result = result.and_then(|()| d.commit(&mut b.vgpu, &b.mem, &mut b.host).map(|_| ()));
    if result.is_err() {
        assert!(
            device_state(&b) == before,
            "a rejected stream changed device state: {result:?}"
        );
    }
    result
}

#[test]
fn the_valid_stream_restores() {
    let (sc, wire) = valid_stream();
    restore(&sc, &wire).unwrap();
}

#[test]
fn every_single_bit_flip_in_headers_and_a_sample_of_payload_bits_is_rejected() {
    let (sc, wire) = valid_stream();
    let mut rng = Rng::new(8);
    // All bits of the stream header and of the first records' headers, then random bits anywhere.
    let mut positions: Vec<usize> = (0..(96 * 8)).step_by(3).collect();
    positions.extend((0..150).map(|_| rng.below(wire.len() as u64 * 8) as usize));
    let mut rejected = 0;
    for bit in positions {
        let mut w = wire.clone();
        w[bit / 8] ^= 1 << (bit % 8);
        let e = restore(&sc, &w).expect_err("damaged stream accepted");
        rejected += 1;
        let _ = e.fault();
    }
    assert!(rejected > 400);
}

#[test]
fn truncation_anywhere_is_rejected() {
    let (sc, wire) = valid_stream();
    let mut rng = Rng::new(9);
    let mut cuts: Vec<usize> = vec![
        0,
        1,
        79,
        80,
        81,
        96,
        wire.len() - 17,
        wire.len() - 16,
        wire.len() - 1,
    ];
    cuts.extend((0..200).map(|_| rng.below(wire.len() as u64) as usize));
    for cut in cuts {
        let e = restore(&sc, &wire[..cut]).expect_err("truncated stream accepted");
        assert!(
            matches!(e, VgpuError::Truncated | VgpuError::Stream(_)),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn trailing_garbage_spliced_and_reordered_streams_are_rejected() {
    let (sc, wire) = valid_stream();
    let mut w = wire.clone();
    w.push(0);
    assert!(matches!(restore(&sc, &w), Err(VgpuError::Stream(_))));
    // A second stream of another run spliced in after the first one's header.
    let sc2 = Scenario::small(Profile::MEDIA, 30, 5).unwrap();
    let mut st_a = sc2.storage();
    let mut st_b = sc2.storage();
    let mut a = sc2.machine(&mut st_a, false).unwrap();
    let mut b = sc2.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let other = migrate(&mut a, &mut b, &Plan::default()).unwrap().wire;
    let mut spliced = wire[..wire.len() / 2].to_vec();
    spliced.extend_from_slice(&other[other.len() / 2..]);
    assert!(restore(&sc, &spliced).is_err());
    // Two halves swapped at a page boundary.
    let mid = wire.len() / 2;
    let mut swapped = wire[..80].to_vec();
    swapped.extend_from_slice(&wire[mid..]);
    swapped.extend_from_slice(&wire[80..mid]);
    assert!(restore(&sc, &swapped).is_err());
}

#[test]
fn a_stream_for_another_vgpu_type_is_refused_at_the_header() {
    let (_, wire) = valid_stream();
    let other = Scenario::new(1 << 20, 2 << 20, Profile::IDLE.scaled_down(32), 10, 1).unwrap();
    match restore(&other, &wire) {
        Err(VgpuError::Incompatible(migstream::Incompatible::ApertureSize { .. })) => {}
        r => panic!("{r:?}"),
    }
}

/// Run a migration and cancel it when `cancel_at` polls have happened (or at stop-and-copy), then
/// let the source run on. The end state must equal the never-migrated run.
fn cancel_after(sc: &Scenario, cancel_at: u64, after_stop: bool) -> Snapshot {
    let mut st_a = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    a.boot().unwrap();
    for _ in 0..30 {
        a.step().unwrap();
    }
    let frames = a.vgpu.memory_map().frames() as usize;
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut cfg = vgpu::source::SourceConfig::default();
    cfg.policy.max_rounds = 3;
    let mut s =
        SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scratch).unwrap();
    let mut out = vec![0u8; 8192];
    let mut polls = 0;
    let mut stopped = false;
    while !s.is_finished() && polls < cancel_at {
        s.poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
            .unwrap();
        while let Some(ev) = s.poll_event() {
            if matches!(ev, SourceEvent::Switch { .. }) && after_stop {
                assert!(a.quiesce());
                s.stop_and_copy(&mut a.vgpu, &mut a.cpu_log).unwrap();
                stopped = true;
            }
        }
        if !stopped {
            a.step().unwrap();
        }
        polls += 1;
    }
    // Cancel: even after the END record went out, until the destination accepted.
    s.cancel(&mut a.vgpu);
    assert_eq!(a.vgpu.state(), vgpu::fsm::MigState::Running);
    assert!(a.run_to_end(1 << 40).unwrap());
    Snapshot::of(&a)
}

#[test]
fn cancel_at_any_point_loses_nothing() {
    let sc = Scenario::small(Profile::THREE_D, 40, 6).unwrap();
    let expected = sc.run_unmigrated().unwrap();
    for (at, after_stop) in [
        (0, false),
        (1, false),
        (3, false),
        (10, false),
        (40, false),
        (5, true),
        (60, true),
        (100_000, true),
    ] {
        let got = cancel_after(&sc, at, after_stop);
        if let Some(d) = expected.diff(&got) {
            panic!("cancel at poll {at} (stop-and-copy: {after_stop}): {d}");
        }
    }
}

#[test]
fn dropped_connection_then_retry_succeeds() {
    let sc = Scenario::small(Profile::TWO_D, 40, 12).unwrap();
    let expected = sc.run_unmigrated().unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    // Inside the header, inside round 0, in a later round (round 0 alone is over 100 KB here).
    for cut in [1, 80, 97, 5_000, 40_000, 80_000] {
        let plan = Plan {
            cut_at: Some(cut),
            start_step: 5,
            ..Plan::default()
        };
        b.reset_for_restore().unwrap();
        assert_eq!(
            migrate(&mut a, &mut b, &plan).unwrap_err(),
            VgpuError::Truncated,
            "cut at {cut}"
        );
        assert_eq!(a.vgpu.state(), vgpu::fsm::MigState::Running);
    }
    // The retry goes through and the destination finishes the run as if nothing happened.
    b.reset_for_restore().unwrap();
    migrate(
        &mut a,
        &mut b,
        &Plan {
            start_step: 5,
            ..Plan::default()
        },
    )
    .unwrap();
    assert!(b.run_to_end(1 << 40).unwrap());
    if let Some(d) = expected.diff(&Snapshot::of(&b)) {
        panic!("after retries: {d}");
    }
}

/// A guest can announce any PPGTT; the destination walks every announced tree and refuses one that
/// loops back on itself or points outside guest memory — with its device state untouched.
#[test]
fn hostile_ppgtt_roots_are_refused() {
    use vgpu::instance::GGTT_WINDOW;
    let _ = GGTT_WINDOW;
    for hostile in ["cycle", "outside"] {
        let sc = Scenario::small(Profile::IDLE, 12, 8).unwrap();
        let mut st_a = sc.storage();
        let mut a = sc.machine(&mut st_a, false).unwrap();
        a.boot().unwrap();
        assert_eq!(
            a.vgpu.ppgtts().len(),
            1,
            "the guest driver announced its PPGTT"
        );
        // The PML4 of the booted PPGTT is the fourth-last guest frame.
        let frames = a.vgpu.memory_map().frames() as usize;
        let pml4 = a.vgpu.memory_map().frame_at(frames - 4).unwrap();
        let root = match hostile {
            "cycle" => {
                // PML4 entry 1 points back at the PML4 itself.
                let e = (pml4.get() << 12) | 0b11;
                let log = &mut a.cpu_log;
                a.mem.cpu_write(log, pml4, 8, &e.to_le_bytes()).unwrap();
                pml4.get() << 12
            }
            _ => 0x7_0000_0000, // a root far outside guest memory
        };
        if hostile == "outside" {
            let (mem, host) = (&a.mem, &mut a.host);
            a.vgpu
                .mmio_write(mmio::pvinfo_off::PDP0_LO, 4, root & 0xFFFF_FFFF, mem, host)
                .unwrap();
            a.vgpu
                .mmio_write(mmio::pvinfo_off::PDP0_LO + 4, 4, root >> 32, mem, host)
                .unwrap();
            a.vgpu
                .mmio_write(mmio::pvinfo_off::G2V_NOTIFY, 4, 4, mem, host)
                .unwrap();
            assert_eq!(a.vgpu.ppgtts().len(), 2);
        }
        let mut st_b = sc.storage();
        let mut b = sc.machine(&mut st_b, true).unwrap();
        let plan = Plan {
            start_step: 2,
            ..Plan::default()
        };
        let err = migrate(&mut a, &mut b, &plan).unwrap_err();
        assert_eq!(err, VgpuError::BadPpgtt, "{hostile}");
        assert!(b.vgpu.ppgtts().is_empty(), "{hostile}: nothing applied");
        assert!(
            b.vgpu.ggtt().iter_present().next().is_none(),
            "{hostile}: GGTT untouched"
        );
    }
}

/// A VMM may take the PRE_COPY → STOP_COPY arc at any time, also in the middle of a round: the
/// round is abandoned and the final round sends every page dirty since, so a frame can go twice
/// between two ROUND records. The destination's round budget (SPEC.md §6.1) must accept exactly
/// that, and the migrated run must end as the never-migrated one does: here with every frame of
/// guest memory written by the guest's CPU after the first half of round 0 went out, on one
/// channel and on several.
#[test]
fn a_stop_in_the_middle_of_a_round_is_accepted() {
    let sc = Scenario::small(Profile::THREE_D, 40, 6).unwrap();
    for channels in [1usize, 3] {
        let mut st_a = sc.storage();
        let mut st_b = sc.storage();
        let mut a = sc.machine(&mut st_a, false).unwrap();
        let mut b = sc.machine(&mut st_b, true).unwrap();
        a.boot().unwrap();
        for _ in 0..30 {
            a.step().unwrap();
        }
        let frames = a.vgpu.memory_map().frames() as usize;
        let mut send = vec![0u64; gmem::words_for(frames)];
        let mut scratch = vec![0u8; 64 * 1024 * channels];
        let mut cfg = vgpu::source::SourceConfig::default();
        cfg.channels = channels as u16;
        let mut s =
            SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scratch).unwrap();
        let mut staging = vec![0u8; DestSession::staging_len(&b.vgpu)];
        let mut d = DestSession::open_channels(
            &mut b.vgpu,
            &mut staging,
            migstream::Limits::DEFAULT,
            channels,
        )
        .unwrap();
        let mut out = vec![0u8; 4096];
        let mut sent = 0usize;
        let mut pump = |s: &mut SourceSession<'_>, a: &mut Machine<'_>, b: &mut Machine<'_>| {
            let mut n = 0;
            for c in 0..channels {
                let k = s
                    .poll_output_channel(c, &a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
                    .unwrap();
                d.feed_channel(c, &b.vgpu, &mut b.mem, &out[..k]).unwrap();
                n += k;
            }
            n
        };
        // Half of round 0's pages, with the guest running.
        while sent < frames * 4096 / 2 {
            sent += pump(&mut s, &mut a, &mut b);
            a.step().unwrap();
        }
        assert!(!s.awaiting_stop(), "the stop must come mid-round");
        // The guest's CPU writes every frame again: all of them go in the final round.
        let fill = [0x5Au8; 8];
        for i in 0..frames {
            let gfn = a.vgpu.memory_map().frame_at(i).unwrap();
            a.mem.cpu_write(&mut a.cpu_log, gfn, 0, &fill).unwrap();
        }
        assert!(a.quiesce());
        s.stop_and_copy(&mut a.vgpu, &mut a.cpu_log).unwrap();
        while !s.is_finished() {
            pump(&mut s, &mut a, &mut b);
        }
        d.commit(&mut b.vgpu, &b.mem, &mut b.host).unwrap();
        assert_eq!(Snapshot::of(&b), Snapshot::of(&a), "channels {channels}");
    }
}
