//! `cargo xtask hw-test`: the hardware test plan (`sim::testplan`) against a backend, with a
//! pass/fail table on the terminal and a JSON report in `target/hw-test.json`; `--soak N` adds N
//! ping-pong migrations under changing workloads.
//!
//! Columns: the scenario's name and its four dimensions (the instant as run: seeded instants show
//! the step, exact ones the step after which the next such point was taken), the result, the
//! stream bytes of the successful migration (the retry, for fault scenarios), its modeled downtime
//! over a 10 GbE link, the frame the guest had submitted when the source stopped, and wall time.
//!
//! Backends: the reference device (`--backend reference`, the default) and the KVM reference
//! embedding (`--backend kvm`: real KVM VMs running the bare-metal guest driver, migrated over TCP
//! loopback, `kvm_vmm::testplan`; Linux x86-64 with a usable `/dev/kvm` and the
//! `x86_64-unknown-none` target, otherwise it says why in one line and fails). A scenario a backend
//! cannot produce exactly shows `n/s` (not supported) with the reason, never `pass`. A real GVT-g or
//! SR-IOV backend implements `sim::testplan::Backend` out of tree; naming any other backend here
//! is an error.

use std::time::Instant;

use serde::Serialize;
use sim::testplan::{
    Backend, Runner, Size, SoakReport, Spec, Workload, full_plan, quick_plan,
    reference::ReferenceBackend, select, soak,
};

/// Options of `cargo xtask hw-test`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The platform: `reference` (the reference device) or `kvm` (real KVM VMs running the
    /// bare-metal guest driver; Linux x86-64 with a usable /dev/kvm).
    #[arg(long, default_value = "reference")]
    pub(crate) backend: String,
    /// Print the scenarios' names (after `--filter`) and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// Run only the scenarios whose name contains this (comma-separated alternatives), e.g.
    /// `3d.elsp`, `cut-record,cancel`, `media.seeded-0.split.none`.
    #[arg(long, default_value = "")]
    pub(crate) filter: String,
    /// The CI-sized subset (every workload against every fault) on small vGPUs.
    #[arg(long)]
    pub(crate) quick: bool,
    /// After the plan, ping-pong a guest this many times (A -> B -> A ...) while its workload
    /// changes between hops, checking the oracle after every hop.
    #[arg(long)]
    pub(crate) soak: Option<u32>,
    /// Seed of the soak's workload schedule and migration instants.
    #[arg(long, default_value_t = 1)]
    pub(crate) soak_seed: u64,
    /// Skip the plan (run only the soak).
    #[arg(long)]
    pub(crate) no_plan: bool,
}

#[derive(Serialize)]
struct Row {
    scenario: String,
    workload: &'static str,
    instant: String,
    placement: &'static str,
    fault: &'static str,
    passed: bool,
    supported: bool,
    wire_bytes: u64,
    modeled_downtime_us: u64,
    frame_at_stop: u64,
    wall_ms: u128,
    detail: String,
}

#[derive(Serialize)]
struct SoakJson {
    hops_requested: u32,
    hops: u32,
    wire_bytes: u64,
    max_modeled_downtime_us: u64,
    hops_stopped_mid_workload: u32,
    hops_per_workload: Vec<(&'static str, u32)>,
    failures: Vec<String>,
    wall_ms: u128,
}

#[derive(Serialize)]
struct Report {
    backend: &'static str,
    size: &'static str,
    filter: String,
    scenarios: usize,
    passed: usize,
    failed: usize,
    not_supported: usize,
    wall_ms: u128,
    results: Vec<Row>,
    soak: Option<SoakJson>,
}

fn header() {
    println!(
        "{:<38} {:<6} {:<21} {:<11} {:<13} {:<6} {:>10} {:>8} {:>6} {:>8}",
        "scenario",
        "load",
        "instant",
        "placement",
        "fault",
        "result",
        "wire B",
        "down µs",
        "frame",
        "wall ms"
    );
}

/// Run the plan (and the soak) on the backend `--backend` names.
pub(crate) fn run(args: &Args) -> crate::Result {
    match args.backend.as_str() {
        "reference" => run_on(&ReferenceBackend, args),
        "kvm" => run_kvm(args),
        other => Err(format!(
            "no backend named '{other}' is built in: they are 'reference' (the reference \
             device) and 'kvm' (the KVM reference embedding). A real GVT-g or SR-IOV backend \
             implements sim::testplan::Backend out of tree; see the trait's documentation."
        )),
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn run_kvm(args: &Args) -> crate::Result {
    match kvm_vmm::testplan::KvmBackend::new() {
        Ok(b) => run_on(&b, args),
        Err(why) => Err(format!("hw-test --backend kvm: unavailable: {why}")),
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn run_kvm(_: &Args) -> crate::Result {
    Err("hw-test --backend kvm: unavailable: the KVM backend needs Linux on x86-64".into())
}

fn run_on<B: Backend>(backend: &B, args: &Args) -> crate::Result {
    let size = if args.quick { Size::Quick } else { Size::Full };
    let plan = if args.no_plan {
        Vec::new()
    } else {
        let all = if args.quick {
            quick_plan()
        } else {
            full_plan()
        };
        select(&all, &args.filter)
    };
    if args.list {
        for s in &plan {
            match backend.supports(s) {
                Ok(()) => println!("{s}"),
                Err(why) => println!("{s}  (not supported: {why})"),
            }
        }
        println!(
            "{} scenarios ({} plan)",
            plan.len(),
            if args.quick { "quick" } else { "full" }
        );
        return Ok(());
    }
    if plan.is_empty() && args.soak.is_none() {
        return Err(format!(
            "--filter '{}' selects no scenario (see --list)",
            args.filter
        ));
    }
    let started = Instant::now();
    let mut report = Report {
        backend: backend.name(),
        size: if args.quick { "quick" } else { "full" },
        filter: args.filter.clone(),
        scenarios: plan.len(),
        passed: 0,
        failed: 0,
        not_supported: 0,
        wall_ms: 0,
        results: Vec::new(),
        soak: None,
    };
    if !plan.is_empty() {
        println!(
            "hw-test: {} scenarios on the {} backend ({} size)",
            plan.len(),
            backend.name(),
            report.size
        );
        header();
    }
    let mut runner = Runner::new(backend, size);
    for spec in &plan {
        let t = Instant::now();
        let o = runner.run(spec);
        let row = row(spec, &o, t.elapsed().as_millis());
        println!(
            "{:<38} {:<6} {:<21} {:<11} {:<13} {:<6} {:>10} {:>8} {:>6} {:>8}",
            row.scenario,
            row.workload,
            row.instant,
            row.placement,
            row.fault,
            match (row.supported, row.passed) {
                (false, _) => "n/s",
                (true, true) => "pass",
                (true, false) => "FAIL",
            },
            row.wire_bytes,
            row.modeled_downtime_us,
            row.frame_at_stop,
            row.wall_ms
        );
        if !row.passed {
            println!("    {}", row.detail);
        }
        match (row.supported, row.passed) {
            (false, _) => report.not_supported += 1,
            (true, true) => report.passed += 1,
            (true, false) => report.failed += 1,
        }
        report.results.push(row);
    }
    if !plan.is_empty() {
        println!(
            "plan: {} passed, {} failed, {} not supported by the {} backend, {:.1} s",
            report.passed,
            report.failed,
            report.not_supported,
            backend.name(),
            started.elapsed().as_secs_f64()
        );
    }
    let mut soak_failed = false;
    if let Some(hops) = args.soak {
        let t = Instant::now();
        println!("soak: {hops} ping-pong hops, workload changing between hops");
        let r = soak(backend, size, hops, args.soak_seed, &mut |h| {
            if let Some(f) = &h.failure {
                println!("    hop {:>4} {:<6} FAIL {f}", h.hop, h.workload.name());
            } else if (h.hop + 1) % 10 == 0 {
                println!(
                    "    hop {:>4} {:<6} ok ({} B, {} µs modeled downtime)",
                    h.hop,
                    h.workload.name(),
                    h.wire_bytes,
                    h.downtime_us
                );
            }
        });
        let wall_ms = t.elapsed().as_millis();
        let r = match r {
            Ok(r) => r,
            Err(e) => SoakReport {
                failures: vec![e],
                ..SoakReport::default()
            },
        };
        println!(
            "soak: {} of {hops} hops ({} stopped mid-workload), {} wire bytes ({:.1} MiB), max \
             modeled downtime {} µs, {} failures, {:.1} s",
            r.hops,
            r.mid_workload,
            r.wire_bytes,
            r.wire_bytes as f64 / f64::from(1u32 << 20),
            r.max_downtime_us,
            r.failures.len(),
            wall_ms as f64 / 1000.0
        );
        for f in &r.failures {
            println!("    {f}");
        }
        soak_failed = !r.failures.is_empty() || r.hops != hops;
        report.soak = Some(SoakJson {
            hops_requested: hops,
            hops: r.hops,
            wire_bytes: r.wire_bytes,
            max_modeled_downtime_us: r.max_downtime_us,
            hops_stopped_mid_workload: r.mid_workload,
            hops_per_workload: Workload::ALL
                .iter()
                .zip(r.per_workload)
                .map(|(w, n)| (w.name(), n))
                .collect(),
            failures: r.failures,
            wall_ms,
        });
    }
    report.wall_ms = started.elapsed().as_millis();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hw-test.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    match (report.failed, soak_failed) {
        (0, false) => Ok(()),
        (n, s) => Err(format!(
            "hw-test: {n} of {} scenarios failed{}",
            report.scenarios,
            if s { "; the soak failed" } else { "" }
        )),
    }
}

fn row(spec: &Spec, o: &sim::testplan::Outcome, wall_ms: u128) -> Row {
    Row {
        scenario: spec.name(),
        workload: spec.workload.name(),
        instant: o.instant.clone(),
        placement: spec.placement.name(),
        fault: spec.fault.name(),
        passed: o.passed,
        supported: o.supported,
        wire_bytes: o.wire_bytes,
        modeled_downtime_us: o.downtime_us,
        frame_at_stop: o.frame_at_stop,
        wall_ms,
        detail: o.detail.clone(),
    }
}
