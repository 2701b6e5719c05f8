//! Whole-state restore from arbitrary bytes: a destination vGPU fed a stream (valid, damaged or
//! random) must reject it with an error and keep its device state, or accept it and end up with a
//! consistent vGPU (every present GGTT entry shadowed at its rebased host index).

use sim::Profile;
use sim::scenario::{Plan, Scenario, Snapshot, host_consistent, migrate};
use vgpu::dest::DestSession;

/// The small scenario every input is restored into.
fn scenario() -> Scenario {
    match Scenario::small(Profile::IDLE, 8, 1) {
        Ok(s) => s,
        Err(e) => panic!("scenario: {e}"),
    }
}

/// A valid stream of the small idle scenario, migrated at frame 4 with the guest held still (the seed).
#[must_use]
pub fn valid_stream() -> Vec<u8> {
    let sc = scenario();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let (Ok(mut a), Ok(mut b)) = (sc.machine(&mut st_a, false), sc.machine(&mut st_b, true)) else {
        panic!("machines");
    };
    if a.boot().is_err() {
        panic!("boot");
    }
    while a.driver.frames_submitted() < 4 {
        if a.step().is_err() {
            panic!("step");
        }
    }
    let plan = Plan {
        start_step: 0,
        freeze_guest: true,
        ..Plan::default()
    };
    match migrate(&mut a, &mut b, &plan) {
        Ok(r) => r.wire,
        Err(e) => panic!("migrate: {e}"),
    }
}

/// The body of `vgpu_restore`: the first byte picks the feed granularity, the rest is the stream.
pub fn vgpu_restore(data: &[u8]) {
    let (step, stream) = match data.split_first() {
        Some((b, rest)) => (usize::from(*b).max(1) * 97, rest),
        None => return,
    };
    let sc = scenario();
    let mut st = sc.storage();
    let Ok(mut m) = sc.machine(&mut st, true) else {
        panic!("machine")
    };
    let mut staging = vec![0u8; 256 * 1024];
    let Ok(mut d) = DestSession::open(&mut m.vgpu, &mut staging, migstream::Limits::DEFAULT) else {
        panic!("open");
    };
    let before = Snapshot::of(&m);
    let mut result = Ok(());
    for piece in stream.chunks(step) {
        if let Err(e) = d.feed(&m.vgpu, &mut m.mem, piece) {
            result = Err(e);
            break;
        }
    }
    let result = result.and_then(|()| d.commit(&mut m.vgpu, &m.mem, &mut m.host).map(|_| ()));
    match result {
        Err(e) => {
            let _ = e.fault();
            let after = Snapshot::of(&m);
            // Guest memory may hold pages of a rejected stream; device state may not change.
            if after.vregs != before.vregs
                || after.ggtt != before.ggtt
                || after.engines != before.engines
                || after.config_space != before.config_space
                || after.derived != before.derived
            {
                panic!("a rejected stream ({e}) changed device state");
            }
        }
        Ok(()) => {
            if let Err(i) = host_consistent(&m) {
                panic!("accepted stream left guest GGTT index {i:#x} unshadowed");
            }
            if m.vgpu.start().is_err() {
                panic!("a restored vGPU must start");
            }
        }
    }
}
