//! `cargo xtask fuzz`: list the fuzz targets, or run one with cargo-fuzz (libFuzzer, nightly).
//!
//! New inputs go to `target/fuzz-corpus/<target>` (the checked-in corpus under `fuzz/corpus` is
//! read, never written), crashes to `fuzz/artifacts/<target>`. Each target's body is a library
//! function in `fuzz/src`, so a finding reproduces on stable with `cargo test -p vgpu-fuzz`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The target to run; without one, the targets are listed.
    pub(crate) target: Option<String>,
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    pub(crate) time: u64,
    /// Parallel fuzzing jobs (libFuzzer -jobs).
    #[arg(long, default_value_t = 1)]
    pub(crate) jobs: u32,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn targets() -> crate::Result<Vec<String>> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    Ok(v)
}

fn have_nightly() -> bool {
    Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// List or run.
pub(crate) fn run(args: &Args) -> crate::Result {
    let all = targets()?;
    let Some(target) = &args.target else {
        println!("fuzz targets (run one with `cargo xtask fuzz <target> --time <seconds>`):");
        for t in &all {
            let n = std::fs::read_dir(root().join("fuzz/corpus").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            println!("  {t:<22} {n:>3} corpus files");
        }
        return Ok(());
    };
    if !all.contains(target) {
        return Err(format!(
            "unknown fuzz target '{target}'; known: {}",
            all.join(", ")
        ));
    }
    if !have_nightly() {
        return Err(
            "cargo-fuzz needs a nightly toolchain (`rustup toolchain install nightly`); \
                    the corpus replay runs on stable in `cargo xtask ci`"
                .into(),
        );
    }
    if !have_cargo_fuzz() {
        println!("installing cargo-fuzz from crates.io ...");
        let ok = Command::new("cargo")
            .args(["+nightly", "install", "cargo-fuzz", "--locked"])
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            return Err("could not install cargo-fuzz".into());
        }
    }
    let scratch = root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let seeds = root().join("fuzz/corpus").join(target);
    let log = root().join(format!("target/fuzz-{target}.log"));
    println!(
        "running {target} for {} s ({} job(s)); libFuzzer output in {}",
        args.time,
        args.jobs,
        log.display()
    );
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("fuzz"))
        .args([
            "+nightly",
            "fuzz",
            "run",
            target,
            "--features",
            "libfuzzer",
            "--target-dir",
        ])
        .arg(root().join("target/fuzz-build"))
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", args.time))
        .arg("-print_final_stats=1");
    if args.jobs > 1 {
        // libFuzzer then runs the jobs as child processes, each logging to fuzz-<n>.log in the
        // working directory; the figures below cover the parent's log only.
        cmd.arg(format!("-jobs={}", args.jobs))
            .arg(format!("-workers={}", args.jobs));
    }
    let status = cmd
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("starting cargo fuzz: {e}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let execs: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    let cov = text
        .lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "cov:")
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into());
    let crashed = text.contains("SUMMARY: libFuzzer") || text.contains("panicked at");
    println!(
        "{target}: {execs} executions, coverage {cov}, findings: {}",
        if crashed {
            "YES (see log and fuzz/artifacts)"
        } else {
            "none"
        }
    );
    if crashed || !status.success() {
        return Err(format!(
            "{target}: fuzzing stopped with a finding or an error; see {}",
            log.display()
        ));
    }
    Ok(())
}
