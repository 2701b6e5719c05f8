//! `cargo xtask`: the project's one entry point for people and CI.
//!
//! - `cargo xtask ci`: everything CI checks, failing on the first failure.
//! - `cargo xtask migrate`: live-migrate a vGPU running a workload on the reference device.
//! - `cargo xtask bench`: micro-benchmarks, each beside a same-run memcpy reference.
//! - `cargo xtask fuzz`: list or run the cargo-fuzz targets (nightly).
//! - `cargo xtask campaign`: the corruption campaign over damaged streams of every workload.
//! - `cargo xtask capi`: the C interface's header, C library and C migration program.
//! - `cargo xtask hw-test`: the hardware test plan against the reference device or real KVM VMs
//!   (`--backend kvm`).
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask is a command-line program: printing is its output"
)]
#![allow(
    clippy::std_instead_of_core,
    reason = "xtask is a std program; core paths would only obscure it"
)]
#![allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "host-side tooling on trusted, self-produced data"
)]

mod autoconverge;
mod bench;
mod campaign;
mod capi;
mod ci;
mod fuzz;
mod hwtest;
mod migrate;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Project automation for the vGPU migration workspace.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version = VERSION.as_str(),
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every check CI runs (fmt, clippy, tests, docs, no_std link, bare-metal, defmt, fuzz corpus).
    Ci(ci::Args),
    /// Live-migrate a vGPU running a workload on the reference device and verify the result.
    Migrate(migrate::Args),
    /// Run the benchmarks; each figure beside a same-run memcpy reference.
    Bench(bench::Args),
    /// List the fuzz targets, or run one with cargo-fuzz (nightly).
    Fuzz(fuzz::Args),
    /// Run the hardware test plan (scenarios, oracle, faults; --soak for ping-pong) on a backend.
    HwTest(hwtest::Args),
    /// Damage valid streams of every workload in every way; each must be rejected, cleanly.
    Campaign(campaign::Args),
    /// The C interface: regenerate (or --check) its header, build the C library, compile and run
    /// the C migration program.
    Capi(capi::Args),
}

/// `--version`: this program's version, the library crates' (released together) and the stream
/// format they write and read.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let (major, minor, channels) = (
        migstream::FORMAT_MAJOR,
        migstream::FORMAT_MINOR,
        migstream::MINOR_1_1,
    );
    format!(
        "{} (library crates {}; migration stream: writes {major}.{minor}, or {major}.{channels} with \
         channels or a MAC; reads {major}.x)",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION"),
    )
});

/// Exit status of a usage error (the command line did not parse), as clap and the BSD
/// `sysexits` convention have it; other failures exit with 1.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = match cli.cmd {
        Cmd::Ci(a) => ci::run(&a),
        Cmd::Migrate(a) => migrate::run(&a),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Fuzz(a) => fuzz::run(&a),
        Cmd::HwTest(a) => hwtest::run(&a),
        Cmd::Campaign(a) => campaign::run(&a),
        Cmd::Capi(a) => capi::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command line that did not parse: `--help` and `--version` print and succeed; anything else
/// prints clap's message with its one-line usage hint and exits with [`USAGE`] (`migrate --json`
/// also prints its one JSON object, saying so).
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "migrate") && args.iter().any(|a| a == "--json") {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        migrate::usage_error_json(first.strip_prefix("error: ").unwrap_or(first));
    }
    let _ = e.print();
    // clap names the usage only for some errors (a bad value gets just the `--help` hint).
    if !e.render().to_string().contains("Usage:") {
        let mut cmd = Cli::command();
        cmd.build();
        let sub = args
            .iter()
            .skip(1)
            .find_map(|a| cmd.find_subcommand(a).map(|c| c.get_name().to_owned()));
        let usage = match sub.and_then(|name| cmd.find_subcommand_mut(name)) {
            Some(sub) => sub.render_usage(),
            None => cmd.render_usage(),
        };
        eprintln!("{usage}");
    }
    ExitCode::from(USAGE)
}

/// Errors of the xtask commands: a message for a person.
pub(crate) type Result<T = ()> = std::result::Result<T, String>;

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_are_clap_errors_and_version_is_everywhere() {
        let kind = |args: &[&str]| {
            let argv = ["cargo xtask"].iter().chain(args);
            Cli::try_parse_from(argv).err().map(|e| e.kind())
        };
        assert_eq!(
            kind(&["migrate", "--link", "10gbps"]),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(
            kind(&["migrate", "--gm", "64"]),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(
            kind(&["migrate", "--frames", "0"]),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(kind(&["migrate", "--link", "25gbit", "--gm", "128"]), None);
        assert_eq!(kind(&["--version"]), Some(ErrorKind::DisplayVersion));
        assert_eq!(
            kind(&["migrate", "--version"]),
            Some(ErrorKind::DisplayVersion)
        );
        assert!(VERSION.contains(env!("CARGO_PKG_VERSION")));
    }
}
