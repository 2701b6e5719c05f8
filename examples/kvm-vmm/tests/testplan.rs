//! The hardware test plan on real KVM VMs, through `sim::testplan::Backend`. Needs `/dev/kvm`
//! and the `x86_64-unknown-none` target; where either is missing it prints one line and passes.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(
    clippy::panic,
    clippy::print_stderr,
    clippy::std_instead_of_core,
    reason = "tests"
)]

use kvm_vmm::testplan::KvmBackend;
use sim::testplan::{Runner, Size, full_plan, select};

fn backend(test: &str) -> Option<KvmBackend> {
    match KvmBackend::new() {
        Ok(b) => Some(b),
        Err(why) if why.contains("does not build") => panic!("{test}: {why}"),
        Err(why) => {
            eprintln!("{test}: skipped, {why}");
            None
        }
    }
}

#[test]
fn plan_scenarios_pass_on_real_kvm_at_seeded_and_exact_instants() {
    let Some(b) = backend("plan_scenarios_pass_on_real_kvm_at_seeded_and_exact_instants") else {
        return;
    };
    let mut runner = Runner::new(&b, Size::Quick);
    let runs = select(
        &full_plan(),
        "3d.seeded-0.split.none,2d.seeded-1.same.cut-byte,media.elsp-2.contiguous.none,\
         3d.ggtt-half.split.cancel",
    );
    assert_eq!(runs.len(), 4);
    for spec in &runs {
        let o = runner.run(spec);
        eprintln!(
            "{spec}: passed {} at {}, {} B, frame {} ({})",
            o.passed, o.instant, o.wire_bytes, o.frame_at_stop, o.detail
        );
        assert!(o.supported, "{spec}");
        assert!(o.passed, "{spec}: {}", o.detail);
        assert!(o.wire_bytes > 0, "{spec}");
    }
}
