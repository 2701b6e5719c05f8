//! The correctness oracle: a run migrated midway ends with exactly the state of the same run never
//! migrated (graphics memory, every register, the GGTT, engines, derived state, config space), byte
//! for byte, on a destination whose host placement differs from the source's and is split.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use sim::scenario::{MigrationReport, Plan, Scenario, Snapshot, host_consistent, migrate};
use sim::{Profile, Rng};

fn run(sc: &Scenario, plan: &Plan) -> (Snapshot, MigrationReport) {
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let report = migrate(&mut a, &mut b, plan).unwrap();
    assert_eq!(
        host_consistent(&b),
        Ok(()),
        "destination shadows after restore"
    );
    assert!(
        b.run_to_end(1 << 40).unwrap(),
        "destination finishes the workload"
    );
    assert_eq!(
        host_consistent(&b),
        Ok(()),
        "destination shadows at the end"
    );
    (Snapshot::of(&b), report)
}

fn oracle(sc: &Scenario, plan: &Plan) -> MigrationReport {
    let expected = sc.run_unmigrated().unwrap();
    let (got, report) = run(sc, plan);
    if let Some(d) = expected.diff(&got) {
        panic!("{} seed {} plan {plan:?}: {d}", sc.profile.name, sc.seed);
    }
    report
}

#[test]
fn migrated_run_equals_unmigrated_run_for_every_workload() {
    for p in [
        Profile::IDLE,
        Profile::TWO_D,
        Profile::MEDIA,
        Profile::THREE_D,
    ] {
        let sc = Scenario::small(p, 40, 11).unwrap();
        let r = oracle(&sc, &Plan::default());
        assert!(r.rounds.len() >= 2, "{}: {:?}", p.name, r.rounds);
    }
}

#[test]
fn migrations_at_many_seeded_instants_and_segmentations() {
    let mut rng = Rng::new(2026);
    for i in 0..12 {
        let profile = [Profile::TWO_D, Profile::MEDIA, Profile::THREE_D][i % 3];
        let sc = Scenario::small(profile, 30, rng.next_u64()).unwrap();
        let mut plan = Plan::default();
        // Any instant: between any two guest actions (mid-ELSP, mid-PTE) as steps take 4 actions and
        // the start step is random.
        plan.start_step = rng.below(120);
        plan.chunk = [7, 100, 4111, 64 * 1024][i % 4];
        plan.feed = [1, 13, 4096, 1 << 20][(i / 4) % 4].max(if plan.chunk < 100 { 1 } else { 13 });
        plan.source.pages_per_record = [1, 3, 64, 1024][i % 4];
        plan.source.policy.max_rounds = 1 + u32::try_from(i % 5).unwrap();
        oracle(&sc, &plan);
    }
}

#[test]
fn migration_with_a_modeled_link_reports_plausible_figures() {
    let sc = Scenario::small(Profile::THREE_D, 60, 5).unwrap();
    let plan = Plan {
        link_bytes_per_s: 1_250_000_000,
        ..Plan::default()
    };
    let r = oracle(&sc, &plan);
    assert!(r.switch.is_some());
    assert!(r.downtime_us > 0 && r.downtime_us < r.total_us, "{r:?}");
    assert!(r.stop_copy_bytes < r.wire_bytes);
    let first = r.rounds[0];
    assert_eq!(first.round, 0);
    assert_eq!(
        first.pages,
        sc.map.frames(),
        "round 0 carries every guest frame"
    );
    assert!(first.zero_pages > 0, "untouched frames go as zero markers");
}

/// The oracle is not vacuous: the same migration with the GPU's dirty log thrown away during
/// pre-copy (the original prototype's blind spot) must produce a different final state.
#[test]
fn the_oracle_detects_lost_gpu_writes() {
    let sc = Scenario::small(Profile::THREE_D, 40, 3).unwrap();
    let expected = sc.run_unmigrated().unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    for _ in 0..40 {
        a.step().unwrap();
    }
    // Let pre-copy begin, then lose every GPU dirty bit from here to the stop.
    let mut plan = Plan {
        start_step: 0,
        ..Plan::default()
    };
    plan.source.pages_per_record = 8;
    let mut lossy = LossyRun { inner: &mut a };
    let rounds = lossy.migrate(&mut b, &plan);
    assert!(b.run_to_end(1 << 40).unwrap());
    let got = Snapshot::of(&b);
    assert!(rounds.len() >= 2);
    assert!(
        expected.diff(&got).is_some(),
        "a migration that loses GPU writes must not pass the oracle"
    );
}

struct LossyRun<'x, 'm> {
    inner: &'x mut sim::Machine<'m>,
}

impl LossyRun<'_, '_> {
    fn migrate(
        &mut self,
        dst: &mut sim::Machine<'_>,
        plan: &Plan,
    ) -> Vec<sim::scenario::RoundReport> {
        // Run the GPU ahead with its dirty log cleared after every step, then migrate with nothing
        // left to report: the pages it wrote since round 0 started are never re-sent.
        let src = &mut *self.inner;
        let frames = usize::try_from(src.vgpu.memory_map().frames()).unwrap();
        let mut send = vec![0u64; gmem::words_for(frames)];
        let mut scratch = vec![0u8; 256 * 1024];
        let mut staging = vec![0u8; 1 << 20];
        let mut s = vgpu::source::SourceSession::open(
            &mut src.vgpu,
            &mut src.cpu_log,
            plan.source,
            &mut send,
            &mut scratch,
        )
        .unwrap();
        let mut d =
            vgpu::dest::DestSession::open(&mut dst.vgpu, &mut staging, migstream::Limits::DEFAULT)
                .unwrap();
        let mut out = vec![0u8; 4096];
        let mut rounds = Vec::new();
        loop {
            let n = s
                .poll_output(&src.vgpu, &src.mem, &mut src.cpu_log, 0, &mut out)
                .unwrap();
            d.feed(&dst.vgpu, &mut dst.mem, &out[..n]).unwrap();
            while let Some(ev) = s.poll_event() {
                if let vgpu::source::SourceEvent::RoundEnd {
                    round,
                    pages,
                    zero_pages,
                    bytes,
                    dirty_left,
                } = ev
                {
                    rounds.push(sim::scenario::RoundReport {
                        round,
                        pages,
                        zero_pages,
                        bytes,
                        dirty_left,
                    });
                }
                if let vgpu::source::SourceEvent::Switch { .. } = ev {
                    assert!(src.quiesce());
                    src.vgpu.gpu_dirty().clear();
                    s.stop_and_copy(&mut src.vgpu, &mut src.cpu_log).unwrap();
                }
            }
            if s.is_finished() {
                break;
            }
            if !src.vgpu.engines().is_quiesced() {
                src.step().unwrap();
                src.vgpu.gpu_dirty().clear();
            }
        }
        d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host).unwrap();
        dst.vgpu.start().unwrap();
        dst.driver = src.driver.clone();
        rounds
    }
}

/// Ping-pong: A → B → A → … under load, 20 hops, each to a differently placed host; the end state
/// still equals the never-migrated run.
#[test]
fn ping_pong_twenty_hops_under_load() {
    let sc = Scenario::small(Profile::MEDIA, 200, 99).unwrap();
    let expected = sc.run_unmigrated().unwrap();
    let mut st = [sc.storage(), sc.storage()];
    let [s0, s1] = &mut st;
    let mut m = [
        sc.machine(s0, false).unwrap(),
        sc.machine(s1, true).unwrap(),
    ];
    m[0].boot().unwrap();
    let mut plan = Plan {
        start_step: 3,
        ..Plan::default()
    };
    for hop in 0..20 {
        let (a, b) = if hop % 2 == 0 {
            let (x, y) = m.split_at_mut(1);
            (&mut x[0], &mut y[0])
        } else {
            let (x, y) = m.split_at_mut(1);
            (&mut y[0], &mut x[0])
        };
        // The next hop's destination is a fresh vGPU on its host.
        b.reset_for_restore().unwrap();
        plan.source.stream_id = hop;
        migrate(a, b, &plan).unwrap();
        assert_eq!(host_consistent(b), Ok(()), "hop {hop}");
    }
    let last = &mut m[0];
    assert!(last.run_to_end(1 << 40).unwrap());
    let got = Snapshot::of(last);
    if let Some(d) = expected.diff(&got) {
        panic!("after 20 hops: {d}");
    }
}

/// Migrate at exact instants: between each of the four ELSP dword writes, and between the two
/// halves of a GGTT entry update. The destination completes the guest's half-done accesses exactly
/// as the source would have.
#[test]
fn migration_between_elsp_dwords_and_between_ggtt_halves() {
    use engines::EngineId;
    type Probe = fn(&sim::Machine<'_>) -> bool;
    let elsp_at = |k: u8| -> Probe {
        match k {
            1 => |m| m.vgpu.engines().engine(EngineId::Rcs).unwrap().elsp.index() == 1,
            2 => |m| m.vgpu.engines().engine(EngineId::Rcs).unwrap().elsp.index() == 2,
            _ => |m| m.vgpu.engines().engine(EngineId::Rcs).unwrap().elsp.index() == 3,
        }
    };
    let probes: [(&str, Probe); 5] = [
        ("ELSP after dword 1", elsp_at(1)),
        ("ELSP after dword 2", elsp_at(2)),
        ("ELSP after dword 3", elsp_at(3)),
        ("ELSP idle, work queued", |m| {
            let e = m.vgpu.engines().engine(EngineId::Rcs).unwrap();
            e.elsp.index() == 0 && !e.queue.is_empty()
        }),
        ("GGTT entry half written", |m| {
            !m.vgpu.ggtt().pending_halves().is_empty()
        }),
    ];
    for (what, probe) in probes {
        let sc = Scenario::small(Profile::THREE_D, 24, 17).unwrap();
        let expected = sc.run_unmigrated().unwrap();
        let mut st_a = sc.storage();
        let mut st_b = sc.storage();
        let mut a = sc.machine(&mut st_a, false).unwrap();
        let mut b = sc.machine(&mut st_b, true).unwrap();
        a.boot().unwrap();
        a.actions_per_step = 1;
        a.commands_per_step = 3;
        let mut steps = 0;
        while !probe(&a) {
            a.step().unwrap();
            steps += 1;
            assert!(steps < 100_000, "{what}: never reached");
        }
        let plan = Plan {
            start_step: 0,
            freeze_guest: true,
            ..Plan::default()
        };
        migrate(&mut a, &mut b, &plan).unwrap();
        assert!(
            probe(&b) || what.starts_with("ELSP idle"),
            "{what}: the destination holds the same half-done state"
        );
        assert!(b.run_to_end(1 << 40).unwrap());
        if let Some(d) = expected.diff(&Snapshot::of(&b)) {
            panic!("{what}: {d}");
        }
    }
}

/// Content tracking (unchanged pages skipped, DUP and DELTA pages) sends fewer bytes and stays
/// exact; each mechanism is exercised by the workload that produces its opportunity.
#[test]
fn content_tracking_sends_less_and_stays_exact() {
    for p in [
        Profile::IDLE,
        Profile::TWO_D,
        Profile::MEDIA,
        Profile::THREE_D,
    ] {
        let sc = Scenario::small(p, 40, 21).unwrap();
        // Several rounds while the guest runs: no downtime target is ever met, small output slices.
        let mut base = Plan {
            chunk: 8192,
            ..Plan::default()
        };
        base.source.policy.downtime_limit_ms = 0;
        base.source.policy.max_rounds = 6;
        let plain = Plan {
            content_cache_pages: 0,
            ..base
        };
        let off = oracle(&sc, &plain);
        let on = oracle(&sc, &base);
        let later = |r: &MigrationReport| r.rounds.iter().skip(1).map(|x| x.bytes).sum::<u64>();
        assert_eq!(off.content, vgpu::content::ContentStats::default());
        assert!(
            later(&on) < later(&off),
            "{}: rounds after the first: {} bytes with content tracking, {} without",
            p.name,
            later(&on),
            later(&off)
        );
        let c = on.content;
        match p.name {
            "idle" | "2d" => assert!(c.unchanged > 0, "{}: {c:?}", p.name),
            "media" => assert!(c.dup > 0, "{}: {c:?}", p.name),
            _ => assert!(
                c.delta > 0 && c.delta_bytes < c.delta * 2048,
                "{}: {c:?}",
                p.name
            ),
        }
    }
}

/// The three precisions of GPU dirty tracking are all exact in outcome; the coarse ones send more
/// (the prototype's "every mapped page is dirty"), and hashing wins most of that back.
#[test]
fn every_dirty_precision_is_exact_and_coarser_ones_send_more() {
    use vgpu::source::GpuDirtyPrecision as P;
    let sc = Scenario::small(Profile::THREE_D, 40, 33).unwrap();
    let run_with = |precision: P, cache: usize| {
        let mut plan = Plan {
            content_cache_pages: cache,
            chunk: 8192,
            ..Plan::default()
        };
        plan.source.precision = precision;
        plan.source.policy.downtime_limit_ms = 0;
        plan.source.policy.max_rounds = 4;
        let r = oracle(&sc, &plan);
        r.rounds.iter().skip(1).map(|x| x.bytes).sum::<u64>()
    };
    let exact = run_with(P::Exact, 0);
    let active = run_with(P::MappedIfActive, 0);
    let mapped = run_with(P::AllMapped, 0);
    let mapped_hashed = run_with(P::AllMapped, 1024);
    assert!(
        exact < active && active <= mapped,
        "exact {exact}, active {active}, mapped {mapped}"
    );
    assert!(
        mapped_hashed < mapped / 2,
        "hashing: {mapped_hashed} vs {mapped}"
    );
}

/// The guest's PPGTT (announced through PVINFO at boot) travels as root pointers and is the same
/// on the destination.
#[test]
fn ppgtt_roots_migrate() {
    let sc = Scenario::small(Profile::TWO_D, 20, 4).unwrap();
    let (got, _) = run(&sc, &Plan::default());
    assert_eq!(got.ppgtts.len(), 1);
}

/// The 2D workload's colour fills and scrolls run as real XY blits, without faults, on both sides
/// of a migration.
#[test]
fn blits_run_on_both_sides_of_a_migration() {
    let sc = Scenario::small(Profile::TWO_D, 30, 6).unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    migrate(&mut a, &mut b, &Plan::default()).unwrap();
    assert!(b.run_to_end(1 << 40).unwrap());
    for m in [&a, &b] {
        assert!(m.gpu.stats.blits > 0, "{:?}", m.gpu.stats);
        assert_eq!(m.gpu.stats.faults, 0, "{:?}", m.gpu.stats);
    }
    assert_eq!(Snapshot::of(&b), sc.run_unmigrated().unwrap());
}

/// The 3D workload's context runs in the PPGTT the guest built: stores addressed through it are
/// translated by walking the guest's tables on both sides of a migration, without faults, and the
/// migrated run still equals the unmigrated one.
#[test]
fn ppgtt_addressed_commands_run_on_both_sides_of_a_migration() {
    let sc = Scenario::small(Profile::THREE_D, 200, 12).unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let plan = Plan {
        start_step: 30,
        ..Plan::default()
    };
    migrate(&mut a, &mut b, &plan).unwrap();
    assert!(b.run_to_end(1 << 40).unwrap());
    for m in [&a, &b] {
        assert!(m.gpu.stats.ppgtt_stores > 0, "{:?}", m.gpu.stats);
        assert!(m.gpu.stats.ppgtt_stores < m.gpu.stats.stores);
        assert_eq!(m.gpu.stats.faults, 0, "{:?}", m.gpu.stats);
    }
    assert_eq!(Snapshot::of(&b), sc.run_unmigrated().unwrap());
}

/// VFIO-style pre-copy information counts down during the initial copy and reports dirt after.
#[test]
fn precopy_info_counts_down_then_reports_dirt() {
    let sc = Scenario::small(Profile::THREE_D, 40, 2).unwrap();
    let mut st = sc.storage();
    let mut a = sc.machine(&mut st, false).unwrap();
    a.boot().unwrap();
    for _ in 0..20 {
        a.step().unwrap();
    }
    let frames = usize::try_from(a.vgpu.memory_map().frames()).unwrap();
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut s = vgpu::source::SourceSession::open(
        &mut a.vgpu,
        &mut a.cpu_log,
        vgpu::source::SourceConfig::default(),
        &mut send,
        &mut scratch,
    )
    .unwrap();
    let first = s.precopy_info(&a.vgpu);
    assert_eq!(first.initial_bytes, frames as u64 * 4096);
    assert!(s.stop_copy_estimate(&a.vgpu) >= first.initial_bytes);
    let mut out = vec![0u8; 16 * 1024];
    let n = s
        .poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
        .unwrap();
    assert!(n > 0);
    let later = s.precopy_info(&a.vgpu);
    assert!(later.initial_bytes < first.initial_bytes, "{later:?}");
    a.step().unwrap();
    a.step().unwrap();
    assert!(
        s.precopy_info(&a.vgpu).dirty_bytes > 0,
        "the running GPU dirtied pages"
    );
}

/// GGTT_RUNS records after the stream's last ROUND record (the stop-and-copy's device state).
fn ggtt_records_after_stop(wire: &[u8]) -> (usize, usize) {
    let mut dec = migstream::Decoder::new(migstream::Limits::DEFAULT);
    let mut kinds = Vec::new();
    dec.feed_all(wire, |ev| {
        match ev {
            migstream::Event::RecordBegin { kind, .. } => kinds.push(kind),
            migstream::Event::Round(_) => kinds.push(migstream::RecordKind::ROUND),
            _ => {}
        }
        Ok::<(), vgpu::error::VgpuError>(())
    })
    .unwrap();
    let last_round = kinds
        .iter()
        .rposition(|k| *k == migstream::RecordKind::ROUND)
        .unwrap();
    let count = |ks: &[migstream::RecordKind]| {
        ks.iter()
            .filter(|k| **k == migstream::RecordKind::GGTT_RUNS)
            .count()
    };
    (count(&kinds[..last_round]), count(&kinds[last_round..]))
}

/// With the GGTT pre-copied, a GGTT the guest does not touch after the pre-copy costs nothing
/// after the stop, one it remaps travels as changed entries only, and both equal the unmigrated
/// run; without pre-copy the whole GGTT travels after the stop.
#[test]
fn ggtt_precopy_sends_only_changed_entries_after_the_stop() {
    for (profile, remaps) in [(Profile::IDLE, false), (Profile::THREE_D, true)] {
        let sc = Scenario::small(profile, 40, 3).unwrap();
        assert_eq!(profile.remap_every != 0, remaps);
        let on = oracle(&sc, &Plan::default());
        let (before, after) = ggtt_records_after_stop(&on.wire);
        assert!(
            before >= 1,
            "{}: the GGTT went before the stop",
            profile.name
        );
        if !remaps {
            assert_eq!(
                after, 0,
                "{}: nothing changed after the pre-copy",
                profile.name
            );
        }
        let off = oracle(
            &sc,
            &Plan {
                ggtt_precopy: false,
                ..Plan::default()
            },
        );
        let (before_off, after_off) = ggtt_records_after_stop(&off.wire);
        assert_eq!(before_off, 0);
        assert!(after_off >= 1);
        assert!(
            on.stop_copy_bytes < off.stop_copy_bytes,
            "{}: {} vs {}",
            profile.name,
            on.stop_copy_bytes,
            off.stop_copy_bytes
        );
    }
}

/// A refused attachment (content storage of the wrong size) leaves the session usable: it can
/// still be cancelled, and the vGPU runs on.
#[test]
fn a_refused_attachment_leaves_the_session_usable() {
    let sc = Scenario::small(Profile::TWO_D, 10, 3).unwrap();
    let mut st = sc.storage();
    let mut a = sc.machine(&mut st, false).unwrap();
    a.boot().unwrap();
    let frames = usize::try_from(a.vgpu.memory_map().frames()).unwrap();
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut s = vgpu::source::SourceSession::open(
        &mut a.vgpu,
        &mut a.cpu_log,
        vgpu::source::SourceConfig::default(),
        &mut send,
        &mut scratch,
    )
    .unwrap();
    let (mut hashes, mut dup, mut pages, mut tags) =
        (vec![0u64; 3], vec![0u64; 3], vec![0u8; 4096], vec![0u64; 1]);
    let storage = vgpu::content::ContentStorage {
        hashes: &mut hashes,
        dup_slots: &mut dup,
        delta_pages: &mut pages,
        delta_tags: &mut tags,
    };
    assert!(matches!(
        s.attach_content(&a.vgpu, storage),
        Err(vgpu::error::VgpuError::Storage(e)) if e.buffer == vgpu::error::Buffer::ContentHashes && e.got == 3
    ));
    let mut small = vec![0u64; 5];
    assert!(matches!(
        s.attach_ggtt_precopy(&a.vgpu, &mut small),
        Err(vgpu::error::VgpuError::Storage(e)) if e.buffer == vgpu::error::Buffer::GgttSent
            && e.needed == a.vgpu.ggtt().entries().len()
    ));
    assert_eq!(a.vgpu.state(), vgpu::fsm::MigState::PreCopy);
    s.cancel(&mut a.vgpu);
    assert_eq!(a.vgpu.state(), vgpu::fsm::MigState::Running);
    assert!(a.run_to_end(1 << 40).unwrap());
    assert_eq!(Snapshot::of(&a), sc.run_unmigrated().unwrap());
}
