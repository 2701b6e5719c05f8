//! `cargo xtask bench`: every figure is printed beside a reference measured in the same run on the same
//! bytes (4 KiB-granular memcpy), with the ratio, and written to `target/bench.json`.
//!
//! Timing method: each kernel runs in batches until a time budget is used; the figure is the best
//! batch (least disturbed by the other core's load). The reference is measured immediately before the
//! kernel on the same buffer size, so machine drift cancels in the ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

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

/// One benchmark result with its same-run reference.
#[derive(Serialize, Clone)]
pub(crate) struct Figure {
    /// Stable identifier (B1, B3, ... from docs/performance.md where one applies).
    pub(crate) id: String,
    /// What was measured.
    pub(crate) what: String,
    /// Payload bytes processed per iteration.
    pub(crate) bytes: u64,
    /// Kernel throughput, GiB/s of payload.
    pub(crate) gib_s: f64,
    /// Reference (memcpy of the same bytes, page-granular) throughput, GiB/s.
    pub(crate) reference_gib_s: f64,
    /// gib_s / reference_gib_s.
    pub(crate) ratio: f64,
    /// The target ratio from docs/performance.md, when there is one.
    pub(crate) target_ratio: Option<f64>,
    /// Free-form extra figure (e.g. framing overhead), printed after the ratio.
    pub(crate) note: String,
}

pub(crate) struct Harness {
    pub(crate) quick: bool,
    budget: Duration,
    pub(crate) figures: Vec<Figure>,
    filter: Option<String>,
}

impl Harness {
    pub(crate) fn new(args: &Args) -> Self {
        Self {
            quick: args.quick,
            budget: if args.quick {
                Duration::from_millis(40)
            } else {
                Duration::from_millis(600)
            },
            figures: Vec::new(),
            filter: args.filter.clone(),
        }
    }

    pub(crate) fn wants(&self, id: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| id.contains(f))
    }

    /// Whether any benchmark of the group whose ids start with `prefix` is wanted (`--filter
    /// B7e` wants group `B7`).
    pub(crate) fn wants_group(&self, prefix: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| prefix.contains(f) || f.starts_with(prefix))
    }

    /// Best time of one call of `f`, over batches filling the budget.
    pub(crate) fn time(&self, mut f: impl FnMut()) -> Duration {
        f(); // warm up: page faults, caches, branch predictors
        let start = Instant::now();
        let mut best = Duration::MAX;
        let mut runs = 0;
        while runs < 3 || start.elapsed() < self.budget {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed());
            runs += 1;
            if runs > 10_000 {
                break;
            }
        }
        best
    }

    /// Page-granular memcpy of `src` into `dst`: the reference every figure is compared with.
    pub(crate) fn reference(&self, src: &[u8], dst: &mut [u8]) -> f64 {
        let bytes = src.len() as u64;
        let d = self.time(|| {
            for (s, d) in src.chunks_exact(4096).zip(dst.chunks_exact_mut(4096)) {
                d.copy_from_slice(s);
            }
            black_box(&mut *dst);
        });
        gib_s(bytes, d)
    }

    pub(crate) fn record(&mut self, mut fig: Figure) {
        fig.ratio = if fig.reference_gib_s > 0.0 {
            fig.gib_s / fig.reference_gib_s
        } else {
            0.0
        };
        let target = fig
            .target_ratio
            .map(|t| format!("(target >= {t:.2}x)"))
            .unwrap_or_default();
        println!(
            "{:<4} {:<44} {:>8.2} GiB/s  ref {:>7.2} GiB/s  ratio {:>5.2}x {:<16} {}",
            fig.id, fig.what, fig.gib_s, fig.reference_gib_s, fig.ratio, target, fig.note
        );
        self.figures.push(fig);
    }
}

pub(crate) fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-12) / (1u64 << 30) as f64
}

/// Deterministic incompressible bytes (splitmix64), so every run measures the same data.
pub(crate) fn random_pages(pages: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; pages * 4096];
    let mut s = seed;
    for chunk in v.chunks_exact_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v
}

/// Run all benchmarks.
pub(crate) fn run(args: &Args) -> crate::Result {
    let mut h = Harness::new(args);
    println!(
        "bench ({} mode): kernel GiB/s beside 4 KiB-page memcpy of the same bytes, same run",
        if h.quick { "quick" } else { "full" }
    );
    crate::benches::all(&mut h)?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let json = serde_json::to_string_pretty(&h.figures).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
