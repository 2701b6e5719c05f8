//! `cargo xtask fuzz`: list the fuzz targets, or run one with cargo-fuzz (libFuzzer, nightly).
//!
//! New inputs go to `target/fuzz-corpus/<target>` (the checked-in corpus under `fuzz/corpus` is
//! read, never written), crashes to `fuzz/artifacts/<target>`. Each target's body is a library
//! function in `fuzz/src`, so a finding reproduces on stable with `cargo test -p vgpu-fuzz`.
//!
//! Every run appends one line to the ledger `fuzz/LEDGER.tsv` (date, commit, target, seconds,
//! jobs, executions, coverage, findings), so the cumulative effort per target is auditable and
//! committed with the code; the listing shows each target's totals from it.

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
    /// The sanitizer cargo-fuzz builds with: `address` (the default: catches memory errors in
    /// the `unsafe` of dependencies) or `none` (about 8x the executions per second on the
    /// decoder; the project's own crates forbid `unsafe`, and a panic or a hang is still found).
    #[arg(long, default_value = "address", value_parser = ["address", "none"])]
    pub(crate) sanitizer: String,
    /// Instead of fuzzing, measure the line coverage the target's corpus (the checked-in seeds
    /// and the inputs found so far) reaches in the workspace's library sources (cargo fuzz
    /// coverage + llvm-cov; needs nightly's `llvm-tools-preview`). The report goes to
    /// `target/fuzz-coverage-<target>.txt`.
    #[arg(long)]
    pub(crate) coverage: bool,
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

/// The ledger of fuzzing runs, one tab-separated line per run.
fn ledger_path() -> PathBuf {
    root().join("fuzz/LEDGER.tsv")
}

/// The ledger's header line.
/// Lines written before the `sanitizer` column existed were runs with `address`.
const LEDGER_HEADER: &str =
    "date_utc\tcommit\ttarget\tseconds\tjobs\texecutions\tcoverage\tfindings\tsanitizer";

/// One run for the ledger.
struct LedgerRun<'a> {
    /// The commit fuzzed, taken before the build.
    commit: &'a str,
    target: &'a str,
    seconds: u64,
    jobs: u32,
    executions: u64,
    coverage: &'a str,
    findings: &'a str,
    sanitizer: &'a str,
}

/// `YYYY-MM-DDTHH:MM:SSZ` of now (days to civil date: H. Hinnant's algorithm).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The commit fuzzed: `git rev-parse --short HEAD`, with `-dirty` when the tree has changes
/// (other than the ledger's own new lines).
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!fuzz/LEDGER.tsv",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

/// Append `run` to the ledger (creating it with its header).
fn append_ledger(run: &LedgerRun<'_>) -> crate::Result {
    use std::io::Write as _;
    let path = ledger_path();
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut line = String::new();
    if new {
        line.push_str(LEDGER_HEADER);
        line.push('\n');
    }
    line.push_str(&format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        utc_now(),
        run.commit,
        run.target,
        run.seconds,
        run.jobs,
        run.executions,
        run.coverage,
        run.findings,
        run.sanitizer
    ));
    f.write_all(line.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Per target: runs, executions and seconds summed over the ledger.
fn ledger_totals() -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    let mut totals = std::collections::BTreeMap::new();
    let text = std::fs::read_to_string(ledger_path()).unwrap_or_default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if let [_, _, target, secs, _, execs, ..] = f[..] {
            let e: &mut (u64, u64, u64) = totals.entry(target.to_owned()).or_default();
            e.0 += 1;
            e.1 += execs.parse::<u64>().unwrap_or(0);
            e.2 += secs.parse::<u64>().unwrap_or(0);
        }
    }
    totals
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
        println!(
            "  {:<22} {:>6}  {:>5} {:>15} {:>9}   (totals from {})",
            "target",
            "corpus",
            "runs",
            "executions",
            "seconds",
            ledger_path().display()
        );
        let totals = ledger_totals();
        for t in &all {
            let n = std::fs::read_dir(root().join("fuzz/corpus").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            let (runs, execs, secs) = totals.get(t).copied().unwrap_or_default();
            println!("  {t:<22} {n:>6}  {runs:>5} {execs:>15} {secs:>9}");
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
    if args.coverage {
        return coverage(target);
    }
    let fuzzed = commit();
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
            "--sanitizer",
            &args.sanitizer,
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
    let findings = if crashed {
        "crash (see log and fuzz/artifacts)"
    } else if status.success() {
        "none"
    } else {
        "error (run did not finish)"
    };
    append_ledger(&LedgerRun {
        commit: &fuzzed,
        target,
        seconds: args.time,
        jobs: args.jobs,
        executions: execs,
        coverage: &cov,
        findings,
        sanitizer: &args.sanitizer,
    })?;
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

/// The nightly toolchain's `llvm-cov` and `llvm-profdata` directory (component
/// `llvm-tools-preview`).
fn llvm_tools_dir() -> crate::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("asking nightly rustc for its sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let host = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .map_err(|e| format!("asking nightly rustc for its host: {e}"))?;
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or("nightly rustc did not name its host")?;
    let dir = sysroot.join("lib/rustlib").join(host).join("bin");
    if dir.join("llvm-cov").exists() {
        Ok(dir)
    } else {
        Err(
            "llvm-cov not found: `rustup component add llvm-tools-preview --toolchain nightly`"
                .into(),
        )
    }
}

/// `--coverage`: run the target's corpus (the checked-in seeds and what fuzzing found in
/// `target/fuzz-corpus/<target>`) under coverage instrumentation and report the lines reached in
/// the workspace's library crates (not the simulator, the fuzz crate or dependencies).
fn coverage(target: &str) -> crate::Result {
    let tools = llvm_tools_dir()?;
    let build = root().join("target/fuzz-cov");
    let seeds = root().join("fuzz/corpus").join(target);
    let found = root().join("target/fuzz-corpus").join(target);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("fuzz"))
        .args([
            "+nightly",
            "fuzz",
            "coverage",
            target,
            "--features",
            "libfuzzer",
        ])
        .arg("--target-dir")
        .arg(&build)
        .arg(&seeds);
    if found.is_dir() {
        cmd.arg(&found);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("starting cargo fuzz coverage: {e}"))?;
    if !status.success() {
        return Err(format!("cargo fuzz coverage {target} failed"));
    }
    let profdata = root()
        .join("fuzz/coverage")
        .join(target)
        .join("coverage.profdata");
    let triple = tools
        .parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bin = build.join(&triple).join("release").join(target);
    let out = Command::new(tools.join("llvm-cov"))
        .arg("report")
        .arg(&bin)
        .arg(format!("-instr-profile={}", profdata.display()))
        .arg("-ignore-filename-regex=(/\\.cargo/|/rustc/|/fuzz/|/sim/|/rustlib/)")
        .output()
        .map_err(|e| format!("running llvm-cov: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "llvm-cov report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = root().join(format!("target/fuzz-coverage-{target}.txt"));
    std::fs::write(&report, &text).map_err(|e| format!("writing {}: {e}", report.display()))?;
    print!("{text}");
    println!("{target}: coverage report in {}", report.display());
    Ok(())
}
