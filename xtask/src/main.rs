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

mod bench;
mod bench_hostile;
mod bench_mmio;
mod bench_sim;
mod benches;
mod campaign;
mod capi;
mod ci;
mod fuzz;
mod hwtest;
mod migrate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Project automation for the vGPU migration workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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

/// Errors of the xtask commands: a message for a person.
pub(crate) type Result<T = ()> = std::result::Result<T, String>;
