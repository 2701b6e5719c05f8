//! The hardware test plan on real KVM VMs, through `vgpu::testplan::Backend`. Needs `/dev/kvm`
//! and the `x86_64-unknown-none` target; where either is missing it prints one line and passes.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(
    clippy::panic,
    clippy::print_stderr,
    clippy::std_instead_of_core,
    reason = "tests"
)]

use kvm_vmm::testplan::KvmBackend;
use vgpu::testplan::{Runner, Size, full_plan, select};

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
fn plan_scenarios_pass_on_real_kvm_and_exact_instants_are_not_supported() {
    let Some(b) = backend("plan_scenarios_pass_on_real_kvm_and_exact_instants_are_not_supported")
    else {
        return;
    };
    let mut runner = Runner::new(&b, Size::Quick);
    let runs = select(
        &full_plan(),
        "3d.seeded-0.split.none,media.seeded-1.contiguous.none,2d.seeded-0.same.cut-byte,\
         3d.seeded-1.split.cancel",
    );
    assert_eq!(runs.len(), 4);
    for spec in &runs {
        let o = runner.run(spec);
        eprintln!("{spec}: {} ({})", o.passed, o.detail);
        assert!(o.supported, "{spec}");
        assert!(o.passed, "{spec}: {}", o.detail);
        assert!(o.wire_bytes > 0, "{spec}");
    }
    for name in ["3d.elsp-2.split.none", "2d.ggtt-half.same.cut-record"] {
        for spec in select(&full_plan(), name) {
            let o = runner.run(&spec);
            assert!(!o.supported && !o.passed, "{spec}");
            assert!(o.detail.contains("not supported"), "{spec}: {}", o.detail);
        }
    }
}
