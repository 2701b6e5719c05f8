//! GPU auto-converge's lever in the reference device: the time-sliced scheduler's share slows
//! the guest's rendering, and lifting it restores the rate.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use sim::Profile;
use sim::scenario::Scenario;

/// Frames the guest submits in `steps` modeled steps with the engine throttle at `percent`.
fn frames_with(percent: u8, steps: u64) -> (u64, sim::EngineTime) {
    let sc = Scenario::small(Profile::THREE_D, 10_000, 3).unwrap();
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, false).unwrap();
    m.boot().unwrap();
    for _ in 0..200 {
        m.step().unwrap();
    }
    m.set_engine_throttle(percent).unwrap();
    assert_eq!(m.engine_throttle(), percent.min(99));
    let (f0, t0) = (m.driver.frames_submitted(), m.engine_time());
    for _ in 0..steps {
        m.step().unwrap();
    }
    let t = m.engine_time();
    (
        m.driver.frames_submitted() - f0,
        sim::EngineTime {
            ran_ns: t.ran_ns - t0.ran_ns,
            throttled_ns: t.throttled_ns - t0.throttled_ns,
        },
    )
}

#[test]
fn throttle_slows_rendering_by_its_share() {
    let (free, t_free) = frames_with(0, 5_000);
    let (half, t_half) = frames_with(50, 5_000);
    let (most, t_most) = frames_with(90, 5_000);
    assert_eq!(t_free.throttled_ns, 0);
    // The engines ran about the share the weights give (50 %: 8:8; 90 %: 1:9 or nearest).
    let share = |t: sim::EngineTime| t.ran_ns as f64 / (t.ran_ns + t.throttled_ns) as f64;
    assert!((share(t_half) - 0.5).abs() < 0.05, "{}", share(t_half));
    assert!((share(t_most) - 0.1).abs() < 0.05, "{}", share(t_most));
    assert!(
        free > 0 && half < free && most < half,
        "{free} {half} {most}"
    );
}
