//! `cargo xtask capi`: the C interface (vgpu/capi). Generates its header with cbindgen (with
//! `--check`: fails if the checked-in `include/vgpu_mig.h` differs), builds the C library
//! (`libvgpu_mig_capi.a`: a no_std staticlib with `panic = "abort"` and its own panic handler),
//! compiles `examples/migrate.c` against the header and the library with the system `cc`, and runs
//! it: the program migrates a vGPU between two instances through the C interface only and exits
//! non-zero if anything differs. Without a `cc` it says so and skips the C part.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of `cargo xtask capi`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Fail if the checked-in header differs from the generated one, instead of rewriting it.
    #[arg(long)]
    pub(crate) check: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The header as cbindgen generates it from the crate's source.
fn generate_header(krate: &Path) -> crate::Result<Vec<u8>> {
    let config = cbindgen::Config::from_file(krate.join("cbindgen.toml"))
        .map_err(|e| format!("cbindgen.toml: {e}"))?;
    let bindings = cbindgen::Builder::new()
        .with_crate(krate)
        .with_config(config)
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    Ok(out)
}

fn run_cmd(what: &str, cmd: &mut Command) -> crate::Result {
    println!("    $ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

pub(crate) fn run(args: &Args) -> crate::Result {
    let root = root();
    let krate = root.join("vgpu/capi");
    let header_path = krate.join("include/vgpu_mig.h");
    let header = generate_header(&krate)?;
    if args.check {
        let current =
            std::fs::read(&header_path).map_err(|e| format!("{}: {e}", header_path.display()))?;
        if current != header {
            return Err(format!(
                "{} is not what cbindgen generates from vgpu/capi; run `cargo xtask capi` and \
                 commit the header",
                header_path.display()
            ));
        }
        println!("capi: {} is up to date", header_path.display());
    } else {
        std::fs::write(&header_path, &header)
            .map_err(|e| format!("{}: {e}", header_path.display()))?;
        println!("capi: wrote {}", header_path.display());
    }

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        println!(
            "capi: notice: no C compiler (`{cc}`); the C library build and the C migration \
             program are skipped"
        );
        return Ok(());
    }

    // The C library: its own target directory, as every crate in it is built with
    // panic = "abort" (nothing may unwind into C) and the crate with its panic handler.
    let target_dir = root.join("target/capi");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(
        "building libvgpu_mig_capi.a",
        Command::new(&cargo)
            .current_dir(&root)
            .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
            .args([
                "rustc",
                "--package",
                "vgpu-mig-capi",
                "--lib",
                "--release",
                "--locked",
                "--crate-type",
                "staticlib",
                "--features",
                "panic-handler",
                "--target-dir",
            ])
            .arg(&target_dir),
    )?;
    let lib = target_dir.join("release/libvgpu_mig_capi.a");
    let exe = target_dir.join("migrate");
    run_cmd(
        "compiling examples/migrate.c",
        Command::new(&cc)
            .args([
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-I",
            ])
            .arg(krate.join("include"))
            .arg(krate.join("examples/migrate.c"))
            .arg(&lib)
            .arg("-o")
            .arg(&exe),
    )?;
    run_cmd(
        "examples/migrate.c (the C migration)",
        &mut Command::new(&exe),
    )?;
    println!("capi: the C program migrated a vGPU through the C interface and checked it");
    Ok(())
}
