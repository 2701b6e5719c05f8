//! Scenarios of the graphics-memory sizes the demo accepts (`cargo xtask migrate --gm`, 128 MiB
//! and up: 64 MiB of aperture, the rest hidden) build their machines, boot and run every
//! workload: a workload larger than the vGPU is fitted to it, not refused at boot.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use vgpu_mig_sim::Profile;
use vgpu_mig_sim::scenario::Scenario;

#[test]
fn every_profile_at_every_demo_size_builds_boots_and_runs_on_both_machines() {
    for gm_mib in [128u64, 192, 256] {
        let hidden = (gm_mib - 64) << 20;
        for profile in [
            Profile::IDLE,
            Profile::TWO_D,
            Profile::MEDIA,
            Profile::THREE_D,
        ] {
            let what = format!("{} at {gm_mib} MiB", profile.name);
            let sc = Scenario::new(64 << 20, hidden, profile.unpaced(), 2, 1).unwrap();
            assert!(sc.profile.hidden_pages() <= hidden / 4096, "{what}");
            if profile.hidden_pages() <= hidden / 4096 {
                assert_eq!(sc.profile, profile.unpaced(), "{what}: fits, unchanged");
            }
            for dest in [false, true] {
                let mut st = sc.storage();
                let mut m = sc
                    .machine(&mut st, dest)
                    .unwrap_or_else(|e| panic!("{what}, dest {dest}: {e}"));
                m.boot()
                    .unwrap_or_else(|e| panic!("{what}, dest {dest}: boot: {e}"));
                if !dest {
                    assert!(m.run_to_end(1 << 20).unwrap(), "{what}: unfinished");
                    assert_eq!(m.driver.frames_submitted(), 2, "{what}");
                }
            }
        }
    }
}
