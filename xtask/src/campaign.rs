//! `cargo xtask campaign`: the corruption campaign of `sim::campaign` over valid streams of
//! every workload; prints cases tried and detected per workload with a breakdown by damage class
//! and error kind, writes `target/campaign.json`, and fails if any damaged stream was accepted
//! (other than the known header-substitution gap, which is reported) or a rejected one changed
//! the destination's device state.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use sim::campaign::{CampaignConfig, Class, WORKLOADS, WorkloadReport, run_workload};

/// Options of `cargo xtask campaign`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// A CI-sized run: a sample of records and bits instead of every record and header bit.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Seed of the workloads and of every random choice (same seed, same cases, same results).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct JsonFinding {
    class: &'static str,
    case: String,
    problem: String,
    header_substitution: bool,
}

#[derive(Serialize)]
struct JsonWorkload {
    workload: &'static str,
    stream_bytes: usize,
    records: usize,
    cases: u64,
    detected: u64,
    header_substitutions: u64,
    local_blame: u64,
    by_class: BTreeMap<&'static str, [u64; 2]>,
    errors: BTreeMap<String, u64>,
    findings: Vec<JsonFinding>,
    seconds: f64,
}

#[derive(Serialize)]
struct JsonReport {
    mode: &'static str,
    seed: u64,
    cases: u64,
    detected: u64,
    seconds: f64,
    workloads: Vec<JsonWorkload>,
}

fn to_json(r: &WorkloadReport, seconds: f64) -> JsonWorkload {
    JsonWorkload {
        workload: r.workload,
        stream_bytes: r.stream_bytes,
        records: r.records,
        cases: r.cases,
        detected: r.detected,
        header_substitutions: r.header_substitutions,
        local_blame: r.local_blame,
        by_class: r
            .by_class
            .iter()
            .map(|(c, n)| (c.name(), [n.cases, n.detected]))
            .collect(),
        errors: r.errors.clone(),
        findings: r
            .findings
            .iter()
            .map(|f| JsonFinding {
                class: f.class.name(),
                case: f.case.clone(),
                problem: f.problem.clone(),
                header_substitution: f.header_substitution,
            })
            .collect(),
        seconds,
    }
}

pub(crate) fn run(args: &Args) -> crate::Result {
    let cfg = if args.quick {
        CampaignConfig::quick(args.seed)
    } else {
        CampaignConfig::full(args.seed)
    };
    let mode = if args.quick { "quick" } else { "full" };
    let started = Instant::now();
    let mut workloads = Vec::new();
    let mut reports = Vec::new();
    for (name, profile) in WORKLOADS {
        let t = Instant::now();
        let r = run_workload(name, profile, &cfg)
            .map_err(|e| format!("campaign on {name}: could not run: {e}"))?;
        workloads.push(to_json(&r, t.elapsed().as_secs_f64()));
        reports.push(r);
    }
    let report = JsonReport {
        mode,
        seed: args.seed,
        cases: reports.iter().map(|r| r.cases).sum(),
        detected: reports.iter().map(|r| r.detected).sum(),
        seconds: started.elapsed().as_secs_f64(),
        workloads,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/campaign.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(&path, &json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    if args.json {
        println!("{json}");
    } else {
        print_table(&report, &reports);
        println!("written to {}", path.display());
    }
    let bad: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.findings.iter().map(move |f| {
                format!(
                    "{}: {} ({}): {}",
                    r.workload,
                    f.case,
                    f.class.name(),
                    f.problem
                )
            })
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{} finding(s):\n  {}", bad.len(), bad.join("\n  ")))
    }
}

fn print_table(report: &JsonReport, reports: &[WorkloadReport]) {
    println!(
        "corruption campaign ({} mode, seed {}): damaged streams of each workload fed to a fresh destination",
        report.mode, report.seed
    );
    println!();
    print!("{:<9} {:>10} {:>7}", "workload", "stream B", "records");
    for c in Class::ALL {
        print!(" {:>9}", c.name());
    }
    println!(
        " {:>8} {:>8} {:>7} {:>7}",
        "cases", "detected", "hdr-sub", "time s"
    );
    for (r, j) in reports.iter().zip(&report.workloads) {
        print!("{:<9} {:>10} {:>7}", r.workload, r.stream_bytes, r.records);
        for c in Class::ALL {
            let n = r.by_class.get(&c).copied().unwrap_or_default();
            print!(" {:>9}", format!("{}/{}", n.detected, n.cases));
        }
        println!(
            " {:>8} {:>8} {:>7} {:>7.1}",
            r.cases, r.detected, r.header_substitutions, j.seconds
        );
    }
    println!(
        "total: {} of {} damaged streams rejected in {:.1} s",
        report.detected, report.cases, report.seconds
    );
    println!();
    println!("rejections by error kind (all workloads):");
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports {
        for (k, n) in &r.errors {
            *errors.entry(k.as_str()).or_default() += n;
        }
    }
    let mut sorted: Vec<(&str, u64)> = errors.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (k, n) in sorted {
        println!("  {n:>7}  {k}");
    }
    let blame: u64 = reports.iter().map(|r| r.local_blame).sum();
    println!("rejections that blame local storage or the caller rather than the stream: {blame}");
    let mut any = false;
    for r in reports {
        for f in &r.findings {
            if !any {
                println!();
                println!("findings:");
                any = true;
            }
            let tag = if f.header_substitution {
                " [known gap: END's CRC chain cannot see the stream header]"
            } else {
                ""
            };
            println!(
                "  {}: {} ({}): {}{tag}",
                r.workload,
                f.case,
                f.class.name(),
                f.problem
            );
        }
    }
}
