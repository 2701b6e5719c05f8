//! `cargo xtask bench`: every figure is printed beside a reference measured in the same run on the
//! same bytes (4 KiB-granular memcpy), with the ratio, and written to `target/bench.json`.
//!
//! The imports run one way: this module (the command) runs the suites in catalogue order and writes
//! the file; each suite ([`kernels`]: B1-B11 and B13, [`mmio`]: B12, [`hostile`]: B14,
//! [`dest_channels`]: B15, [`source_channels`]: B16, [`precopy`]: the pre-copy simulation)
//! measures through the [`harness`], which times, prints and
//! keeps the figures and knows no suite.

mod dest_channels;
mod harness;
mod hostile;
mod kernels;
mod mmio;
mod precopy;
mod source_channels;

use harness::{Harness, MIN_RUNS, NOISY_SPREAD};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Small buffers and short budgets: a smoke run for CI (figures are printed, never asserted).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Only run benchmarks whose id contains this string.
    #[arg(long)]
    pub(crate) filter: Option<String>,
}

/// Run all benchmarks.
pub(crate) fn run(args: &Args) -> crate::Result {
    let mut h = Harness::new(args.quick, args.filter.clone());
    println!(
        "bench ({} mode): kernel GiB/s beside 4 KiB-page memcpy of the same bytes, same run; \
         median of >= {MIN_RUNS} runs, [slowest-fastest] beside it, NOISY past {NOISY_SPREAD}% spread",
        if h.quick { "quick" } else { "full" }
    );
    println!("CRC-32 kernel: {}", migstream::crc32_kernel());
    println!(
        "copy+CRC-32 kernel (the encoder's page copy): {}",
        migstream::crc32_copy_kernel()
    );
    // The suites, in catalogue order.
    kernels::all(&mut h)?;
    mmio::mmio_sparse(&mut h)?;
    hostile::hostile_streams(&mut h)?;
    dest_channels::dest_channels(&mut h)?;
    source_channels::source_channels(&mut h)?;
    precopy::simulate_all(&mut h)?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let json = serde_json::to_string_pretty(&h.figures).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
