//! `cargo xtask ci`: the one test command. Each step runs in order; the first failure stops the run
//! with the step's name, the command line and its exit status.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Library crates (package names, as `-p` takes them; the workspace calls them by the short
/// names `migstream`, `gtt`, ...): no_std, checked on the host link check, bare metal and with defmt.
pub(crate) const LIB_CRATES: [&str; 6] = [
    "vgpu-mig-stream",
    "vgpu-mig-gtt",
    "vgpu-mig-mmio",
    "vgpu-mig-gmem",
    "vgpu-mig-engines",
    "vgpu-mig",
];

/// The reference device (package name): published with the library crates, but a host tool that
/// allocates; without its `alloc` feature it is `no_std` (the command encodings and the generator a
/// bare-metal guest uses), and that part is built for bare metal too.
pub(crate) const SIM_CRATE: &str = "vgpu-mig-sim";

/// The fused copy+CRC kernels (package name): a no_std library crate like [`LIB_CRATES`], and the
/// only one with `unsafe`; it has no `defmt` feature (no types to log), so it is checked beside
/// them rather than among them.
pub(crate) const COPYCRC_CRATE: &str = "vgpu-mig-copycrc";

/// Bare-metal targets tried in order; the first installed one is used.
const BARE_METAL: [&str; 2] = ["x86_64-unknown-none", "thumbv7em-none-eabihf"];
/// The seed of the property tests in CI (decimal, as proptest reads it).
const CI_PROPTEST_SEED: &str = "20261126";

/// Options of `cargo xtask ci`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Skip the steps that need a toolchain component (fmt, clippy) when it is missing.
    #[arg(long)]
    pub(crate) lenient: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

struct Runner {
    step: usize,
    started: Instant,
}

impl Runner {
    fn run(&mut self, name: &str, mut cmd: Command) -> crate::Result {
        self.step += 1;
        let t = Instant::now();
        println!("\n=== ci step {}: {name}", self.step);
        println!("    $ {}", render(&cmd));
        let status = cmd
            .status()
            .map_err(|e| format!("step '{name}': could not start: {e}"))?;
        if !status.success() {
            return Err(format!(
                "step '{name}' failed ({status}); reproduce with: {}",
                render(&cmd)
            ));
        }
        println!("    ok in {:.1} s", t.elapsed().as_secs_f64());
        Ok(())
    }
}

fn render(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The `rust-version` the workspace declares (`[workspace.package]` of the root manifest).
fn declared_msrv() -> Result<String, String> {
    let path = root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("rust-version"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| format!("{}: no rust-version", path.display()))
}

/// Check the library crates, all features, on the declared minimum toolchain. The toolchain is
/// installed with the minimal profile; when that fails (offline, no rustup) the step is skipped
/// with a notice, as the bare-metal builds are.
fn msrv(r: &mut Runner) -> crate::Result {
    let version = declared_msrv()?;
    let installed = Command::new("rustup")
        .args(["toolchain", "install", &version, "--profile", "minimal"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        println!(
            "\n=== notice: could not install Rust {version} (the declared rust-version); \
             the MSRV check is skipped. Install it with \
             `rustup toolchain install {version} --profile minimal`."
        );
        return Ok(());
    }
    // `rustup run` rather than `cargo +VERSION`: the `cargo` this process runs may be the
    // toolchain's own binary, which does not read `+` arguments. A separate target directory
    // keeps the current toolchain's build cache intact.
    let check = |features: &[&str], crates: &[&str]| {
        let mut c = Command::new("rustup");
        c.current_dir(root());
        c.env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC");
        c.args(["run", &version, "cargo", "check", "--locked"]);
        c.args(features);
        c.args(["--target-dir", "target/msrv"]);
        for krate in crates {
            c.args(["-p", krate]);
        }
        c
    };
    let mut crates: Vec<&str> = LIB_CRATES.to_vec();
    crates.push(SIM_CRATE);
    crates.push(COPYCRC_CRATE);
    r.run(
        &format!("MSRV: library crates and the simulator, all features, on Rust {version}"),
        check(&["--all-features"], &crates),
    )?;
    // The C interface on its own: its `panic-handler` feature is for the no_std staticlib and
    // cannot meet the simulator's `std` in one build (two panic handlers).
    r.run(
        &format!("MSRV: the C interface, on Rust {version}"),
        check(&[], &["vgpu-mig-capi"]),
    )
}

/// rustc's `unused_crate_dependencies`, denied, over every library and program: a dependency
/// declared and never used fails CI.
///
/// Not a workspace lint, because the lint judges each compilation unit alone: an integration test
/// (or a library's unit-test build) is its own crate that sees all of its package's dependencies
/// and dev-dependencies and uses a few, so the lint would fire in every test target for every
/// dependency that test does not name. Run over the `--lib` and `--bins` targets only, it sees
/// exactly `[dependencies]`. Passed through clippy (`cargo clippy -- -D ...`), the flag reaches the
/// workspace's own crates and not the registry crates, so nothing is rebuilt but them.
///
/// Twice: with the features the workspace build unifies, and for the library crates without
/// default features as a bare-metal embedder builds them (a dependency only a feature uses must be
/// optional and enabled by that feature). `kvm-guest`'s binary is left out: on the host it is a
/// one-line stub, and its dependencies are its library's (a package has one dependency list).
/// Dev-dependencies are not covered by the lint (each test target uses some of them).
fn unused_dependencies(r: &mut Runner) -> crate::Result {
    let lint = ["--", "-D", "unused-crate-dependencies"];
    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--exclude",
        "kvm-guest",
        "--lib",
        "--bins",
        "--locked",
    ]);
    c.args(lint);
    r.run("unused dependencies (libraries and programs)", c)?;
    let mut c = cargo();
    c.args(["clippy", "-p", "kvm-guest", "--lib", "--locked"]);
    c.args(lint);
    r.run("unused dependencies (the KVM guest's library)", c)?;
    let mut c = cargo();
    c.args(["clippy", "--lib", "--no-default-features", "--locked"]);
    for krate in LIB_CRATES.iter().chain([&SIM_CRATE, &COPYCRC_CRATE]) {
        c.args(["-p", krate]);
    }
    c.args(lint);
    r.run(
        "unused dependencies (library crates, no default features)",
        c,
    )
}

fn installed_targets() -> Vec<String> {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Run every check, in order, stopping at the first failure.
pub(crate) fn run(_args: &Args) -> crate::Result {
    let mut r = Runner {
        step: 0,
        started: Instant::now(),
    };

    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    r.run("rustfmt", c)?;

    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    r.run("clippy (all targets, warnings denied)", c)?;

    unused_dependencies(&mut r)?;

    let mut c = cargo();
    c.args(["test", "--workspace", "--locked"]);
    // Property tests draw their cases from a fixed seed here, so a CI run can be repeated case
    // for case (set PROPTEST_RNG_SEED to draw others; local `cargo test` runs draw new ones).
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.env("PROPTEST_RNG_SEED", CI_PROPTEST_SEED);
    }
    r.run(
        "tests (unit, property, integration, doc, fuzz corpus replay)",
        c,
    )?;

    // The workspace run unifies features (xtask enables `auth`); the format crate must also pass
    // as most embedders build it, without the feature.
    let mut c = cargo();
    c.args(["test", "-p", "vgpu-mig-stream", "--locked"]);
    r.run("migstream tests without the auth feature", c)?;

    let mut c = cargo();
    c.env("RUSTDOCFLAGS", "-D warnings");
    c.args(["doc", "--workspace", "--no-deps", "--locked"]);
    r.run("rustdoc (warnings denied)", c)?;

    // The library crates as they would be uploaded: each `.crate` (under target/package) with its
    // rewritten manifest (registry dependencies with versions, the readme) and its own lock file.
    // Packaged together, cargo resolves their dependencies on each other through a local overlay
    // of the ones packaged first, so none needs to be on the registry. Not built again here
    // (`--no-verify`): the steps above and below build the same sources. `--allow-dirty` so a local
    // run with uncommitted changes packages them; .ci/run checks the tree is clean at the end.
    let mut c = cargo();
    c.args(["package", "--locked", "--no-verify", "--allow-dirty"]);
    for krate in [&COPYCRC_CRATE]
        .into_iter()
        .chain(&LIB_CRATES)
        .chain([&SIM_CRATE])
    {
        c.args(["-p", krate]);
    }
    r.run("package the library crates (publishable, not published)", c)?;

    let mut c = cargo();
    c.args([
        "build",
        "--manifest-path",
        "xtask/nostd-check/Cargo.toml",
        "--target-dir",
        "target/nostd-check",
        "--locked",
    ]);
    r.run(
        "no_std link check (staticlib with its own panic handler, host)",
        c,
    )?;

    // The C interface as a C program uses it: the checked-in header must be what cbindgen makes
    // of the crate, the no_std staticlib must link into a C program, and that program must
    // migrate a vGPU between two instances and check the result (skipped, with a notice,
    // without a C compiler).
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--locked",
        "--package",
        "xtask",
        "--",
        "capi",
        "--check",
    ]);
    r.run(
        "C interface: header up to date, C library links, examples/migrate.c migrates a vGPU",
        c,
    )?;

    let installed = installed_targets();
    match BARE_METAL
        .iter()
        .find(|t| installed.iter().any(|i| i == *t))
    {
        Some(target) => {
            for krate in [COPYCRC_CRATE].into_iter().chain(LIB_CRATES) {
                let mut c = cargo();
                c.args([
                    "build",
                    "-p",
                    krate,
                    "--no-default-features",
                    "--target",
                    target,
                    "--locked",
                ]);
                r.run(&format!("bare metal: {krate} for {target}"), c)?;
            }
            let mut c = cargo();
            c.args([
                "build",
                "-p",
                "vgpu-mig",
                "--no-default-features",
                "--features",
                "auth,log",
                "--target",
                target,
                "--locked",
            ]);
            r.run(
                &format!("bare metal: vgpu + migstream with auth, and log, for {target}"),
                c,
            )?;
            let mut c = cargo();
            c.args([
                "build",
                "-p",
                SIM_CRATE,
                "--no-default-features",
                "--target",
                target,
                "--locked",
            ]);
            r.run(
                &format!("bare metal: {SIM_CRATE} without alloc (cmd, Rng) for {target}"),
                c,
            )?;
            // The C interface with its panic handler, as a bare-metal hypervisor links it.
            let mut c = cargo();
            c.args([
                "build",
                "-p",
                "vgpu-mig-capi",
                "--features",
                "panic-handler",
                "--target",
                target,
                "--locked",
            ]);
            r.run(&format!("bare metal: the C interface for {target}"), c)?;
        }
        None => println!(
            "\n=== notice: no bare-metal target installed ({}); bare-metal builds skipped. \
             Install one with `rustup target add x86_64-unknown-none`.",
            BARE_METAL.join(", ")
        ),
    }

    for krate in LIB_CRATES {
        let mut c = cargo();
        c.args([
            "check",
            "-p",
            krate,
            "--no-default-features",
            "--features",
            "defmt",
            "--locked",
        ]);
        r.run(&format!("defmt: {krate}"), c)?;
    }

    msrv(&mut r)?;

    // The tools themselves, in release as `cargo xtask` runs them; each verifies what it does.
    let smoke_runs: [(&str, &[&str]); 7] = [
        (
            "migrate smoke run: two processes over loopback TCP, model guest (verified end to end)",
            &["migrate", "--quick", "--guest", "model"],
        ),
        (
            "migrate smoke run: a KVM VM between two processes (verified end to end; where /dev/kvm \
             or the x86_64-unknown-none target is unusable it says so and runs the model guest)",
            &["migrate", "--quick", "--guest", "kvm"],
        ),
        (
            "migrate smoke run: in-process, modeled link (verified end to end)",
            &["migrate", "--quick", "--modeled"],
        ),
        (
            "migrate smoke run: three channels over three TCP connections (verified end to end)",
            &["migrate", "--quick", "--guest", "model", "--channels", "3"],
        ),
        (
            "hardware test plan, quick (reference device) and a 200-hop soak",
            &["hw-test", "--quick", "--soak", "200"],
        ),
        (
            "corruption campaign, quick (every damaged stream rejected)",
            &["campaign", "--quick"],
        ),
        (
            "bench smoke run (figures not asserted)",
            &["bench", "--quick"],
        ),
    ];
    for (name, args) in smoke_runs {
        let mut c = cargo();
        c.args(["run", "--release", "--locked", "--package", "xtask", "--"]);
        c.args(args);
        r.run(name, c)?;
    }

    println!(
        "\nci: all {} steps passed in {:.0} s",
        r.step,
        r.started.elapsed().as_secs_f64()
    );
    Ok(())
}
