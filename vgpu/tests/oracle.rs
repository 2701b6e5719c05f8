//! The correctness oracle: a run migrated midway ends with exactly the state of the same run never
//! migrated — graphics memory, every register, the GGTT, engines — byte for byte.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]

mod common;
use common::*;

fn oracle(profile: &str, frames: u64, seed: u64, plan: Plan) {
    let p = profile_of(profile);
    let expected = unmigrated(p, frames, seed);
    let mut st_a = storage();
    let mut st_b = storage();
    let mut a = machine(&mut st_a, false, p, frames, seed);
    let mut b = machine(&mut st_b, true, p, frames, seed);
    a.boot().unwrap();
    let wire = migrate(&mut a, &mut b, plan);
    assert!(!wire.is_empty());
    assert_host_consistent(&b);
    assert!(
        b.run_to_end(1_000_000).unwrap(),
        "destination finishes the workload"
    );
    let got = snapshot(&b);
    assert_eq!(got.ggtt, expected.ggtt, "GGTT");
    assert_eq!(got.engines, expected.engines, "engines");
    assert_eq!(got.derived, expected.derived, "derived state");
    assert_eq!(got.config_space, expected.config_space, "config space");
    let diff: Vec<usize> = (0..got.vregs.len())
        .filter(|&i| got.vregs[i] != expected.vregs[i])
        .take(8)
        .collect();
    assert!(
        diff.is_empty(),
        "registers differ at dword offsets {:x?}",
        diff.iter().map(|i| i * 4).collect::<Vec<_>>()
    );
    let pages: Vec<usize> = (0..got.mem.len() / 4096)
        .filter(|&i| got.mem[i * 4096..][..4096] != expected.mem[i * 4096..][..4096])
        .take(8)
        .collect();
    assert!(
        pages.is_empty(),
        "guest memory differs in frames (dense index) {pages:?}"
    );
    assert_eq!(got, expected);
    assert_host_consistent(&b);
}

fn profile_of(name: &str) -> vgpu::sim::Profile {
    profile(name)
}

#[test]
fn migrated_3d_run_equals_unmigrated_run() {
    oracle("3d", 60, 1, Plan::default());
}

/// Guards against a vacuous oracle: the scenario must really run work on both sides of the
/// migration, dirty pages during pre-copy and carry them in more than one round.
#[test]
fn the_scenario_does_real_work_on_both_sides() {
    let p = profile("3d");
    let mut st_a = storage();
    let mut st_b = storage();
    let mut a = machine(&mut st_a, false, p, 60, 1);
    let mut b = machine(&mut st_b, true, p, 60, 1);
    a.boot().unwrap();
    let wire = migrate(&mut a, &mut b, Plan::default());
    let before = a.driver.frames_submitted();
    assert!(
        a.gpu.stats.workloads >= 3,
        "source executed work: {:?}",
        a.gpu.stats
    );
    assert!(
        before > 3 && before < 60,
        "migrated midway, at frame {before}"
    );
    assert!(b.run_to_end(1_000_000).unwrap());
    assert!(
        b.gpu.stats.workloads >= 60 - before - 2,
        "destination executed the rest: {:?}",
        b.gpu.stats
    );
    assert!(b.gpu.stats.filled_pages > 0 && b.gpu.stats.stores > 0);
    let mut dec = migstream::Decoder::new(migstream::Limits::DEFAULT);
    let mut rounds = 0;
    let mut rest = &wire[..];
    loop {
        let (n, ev) = dec.feed(rest).unwrap();
        rest = &rest[n..];
        match ev {
            Some(migstream::Event::Round(r)) => {
                rounds += 1;
                if r.round > 0 {
                    assert!(r.pages > 0, "round {} carried dirtied pages", r.round);
                }
            }
            None if n == 0 => break,
            _ => {}
        }
    }
    assert!(rounds >= 2, "{rounds} rounds");
    assert!(b.vgpu.guest_errors() == 0 && a.vgpu.guest_errors() == 0);
}
