//! The harness every benchmark suite uses: it times a kernel and its reference, prints the figure
//! and keeps it for `target/bench.json`. It knows no benchmark.
//!
//! Timing method: each kernel runs repeatedly (after one untimed warm-up call) until a time budget
//! is used, at least [`MIN_RUNS`] times; the figure is the **median** run, printed with the
//! fastest and slowest run beside it (`[min-max]`), and so is the reference, which is measured
//! immediately before the kernel on the same buffer size, so machine drift mostly cancels in the
//! ratio (the ratio is of the medians). A figure whose kernel or reference spread ((max - min) /
//! median of the rates) exceeds [`NOISY_SPREAD`] is marked `NOISY`, in the printout and in
//! `target/bench.json` (`noisy`, `spread_pct`, `reference_spread_pct`).
//!
//! Hand-written rather than criterion or divan: each figure needs a reference measured in the
//! same run on the same bytes and a ratio against a target, self-checked kernels, one JSON file
//! of the project's shape and a `--quick` smoke mode inside `cargo xtask bench`; criterion's
//! bootstrap statistics answer "did this change" between saved baselines on a quiet machine, and
//! divan runs as a `cargo bench` target. A median with its min/max over a few dozen runs is what
//! the figures need, in about 60 lines.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One benchmark result with its same-run reference.
#[derive(Serialize, Clone)]
pub(crate) struct Figure {
    /// Stable identifier (B1, B3, ...: the catalogue in the README's "Benchmarks").
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
    /// The target ratio (README "Benchmarks"), when there is one.
    pub(crate) target_ratio: Option<f64>,
    /// Free-form extra figure (e.g. framing overhead), printed after the ratio.
    pub(crate) note: String,
}

/// Fewest timed runs behind a figure.
pub(crate) const MIN_RUNS: usize = 5;
/// Spread, in percent of the median, above which a figure is marked noisy.
pub(crate) const NOISY_SPREAD: f64 = 10.0;

/// The distribution of one kernel's timed runs.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    median: Duration,
    min: Duration,
    max: Duration,
    runs: usize,
}

impl Timing {
    /// Median, fastest and slowest of `samples` (sorted here); `None` when empty.
    pub(crate) fn of(samples: &mut [Duration]) -> Option<Self> {
        samples.sort_unstable();
        let n = samples.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2,
        };
        Some(Self {
            median,
            min: samples[0],
            max: samples[n - 1],
            runs: n,
        })
    }

    /// `(min, max)` of a rate whose median value is `rate` (rates scale with 1 / time).
    fn rate_range(&self, rate: f64) -> (f64, f64) {
        let m = self.median.as_secs_f64();
        let slow = self.max.as_secs_f64().max(1e-12);
        let fast = self.min.as_secs_f64().max(1e-12);
        (rate * m / slow, rate * m / fast)
    }

    /// (max - min) / median of the rate, in percent.
    fn spread_pct(&self) -> f64 {
        let (lo, hi) = self.rate_range(1.0);
        (hi - lo) * 100.0
    }
}

/// A figure as written to `target/bench.json`: the [`Figure`] (its rates are medians) and the
/// spread of the runs behind it (absent for figures that are not timed, such as simulations).
#[derive(Serialize, Clone)]
pub(crate) struct Recorded {
    #[serde(flatten)]
    pub(crate) figure: Figure,
    /// Timed runs of the kernel.
    pub(crate) runs: Option<usize>,
    /// Slowest and fastest run of the kernel, in the figure's rate unit.
    pub(crate) gib_s_min: Option<f64>,
    /// See `gib_s_min`.
    pub(crate) gib_s_max: Option<f64>,
    /// Slowest and fastest run of the reference.
    pub(crate) reference_min_gib_s: Option<f64>,
    /// See `reference_min_gib_s`.
    pub(crate) reference_max_gib_s: Option<f64>,
    /// (max - min) / median of the kernel's rate, percent.
    pub(crate) spread_pct: Option<f64>,
    /// The same for the reference.
    pub(crate) reference_spread_pct: Option<f64>,
    /// Either spread exceeds [`NOISY_SPREAD`]: the figure is not to be trusted on its own.
    pub(crate) noisy: bool,
}

/// The timings `record` attaches to the next figure.
#[derive(Default)]
struct Pending {
    kernel: Option<Timing>,
    reference: Option<Timing>,
}

pub(crate) struct Harness {
    pub(crate) quick: bool,
    budget: Duration,
    pub(crate) figures: Vec<Recorded>,
    filter: Option<String>,
    pending: RefCell<Pending>,
}

impl Harness {
    /// A harness for a `quick` (smoke) or full run of the benchmarks whose ids contain
    /// `filter`.
    pub(crate) fn new(quick: bool, filter: Option<String>) -> Self {
        Self {
            quick,
            budget: if quick {
                Duration::from_millis(40)
            } else {
                Duration::from_millis(600)
            },
            figures: Vec::new(),
            filter,
            pending: RefCell::default(),
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

    /// Median time of one call of `f`, over at least [`MIN_RUNS`] runs filling the budget; the
    /// distribution goes to the next [`record`](Self::record)ed figure.
    pub(crate) fn time(&self, mut f: impl FnMut()) -> Duration {
        self.time_with_setup(&mut (), |_| {}, |_| f())
    }

    /// Like [`time`](Self::time), but `setup` runs untimed before every timed `kernel` call (for
    /// kernels that consume their input, such as a harvest that clears the bitmap).
    pub(crate) fn time_with_setup<S>(
        &self,
        state: &mut S,
        mut setup: impl FnMut(&mut S),
        mut kernel: impl FnMut(&mut S),
    ) -> Duration {
        setup(state);
        kernel(state); // warm up: page faults, caches, branch predictors
        let start = Instant::now();
        let mut samples = Vec::new();
        while samples.len() < MIN_RUNS || start.elapsed() < self.budget {
            setup(state);
            let t = Instant::now();
            kernel(state);
            samples.push(t.elapsed());
            if samples.len() >= 10_000 {
                break;
            }
        }
        let timing = Timing::of(&mut samples);
        self.pending.borrow_mut().kernel = timing;
        timing.map_or(Duration::ZERO, |t| t.median)
    }

    /// [`time_with_setup`](Self::time_with_setup), whose distribution goes to the next recorded
    /// figure as its reference when `as_reference` (a figure that compares two kernels).
    pub(crate) fn time_with_setup_as<S>(
        &self,
        as_reference: bool,
        state: &mut S,
        setup: impl FnMut(&mut S),
        kernel: impl FnMut(&mut S),
    ) -> Duration {
        let d = self.time_with_setup(state, setup, kernel);
        if as_reference {
            let mut pending = self.pending.borrow_mut();
            pending.reference = pending.kernel.take();
        }
        d
    }

    /// Page-granular memcpy of `src` into `dst`: the reference every figure is compared with
    /// (median GiB/s; its distribution goes to the next recorded figure).
    pub(crate) fn reference(&self, src: &[u8], dst: &mut [u8]) -> f64 {
        let bytes = src.len() as u64;
        let d = self.time(|| {
            copy_pages(src, dst);
            black_box(&mut *dst);
        });
        let mut pending = self.pending.borrow_mut();
        pending.reference = pending.kernel.take();
        gib_s(bytes, d)
    }

    /// Print and keep `fig` (rates are medians), with the spread of the kernel and reference
    /// runs timed since the last figure.
    pub(crate) fn record(&mut self, mut fig: Figure) {
        fig.ratio = if fig.reference_gib_s > 0.0 {
            fig.gib_s / fig.reference_gib_s
        } else {
            0.0
        };
        let pending = self.pending.take();
        let kernel = pending.kernel.map(|t| (t, t.rate_range(fig.gib_s)));
        let reference = pending
            .reference
            .map(|t| (t, t.rate_range(fig.reference_gib_s)));
        let spread_pct = kernel.map(|(t, _)| t.spread_pct());
        let reference_spread_pct = reference.map(|(t, _)| t.spread_pct());
        let noisy = spread_pct.is_some_and(|s| s > NOISY_SPREAD)
            || reference_spread_pct.is_some_and(|s| s > NOISY_SPREAD);
        let target = fig
            .target_ratio
            .map(|t| format!("(target >= {t:.2}x)"))
            .unwrap_or_default();
        let range = |r: Option<(Timing, (f64, f64))>| {
            r.map(|(_, (lo, hi))| format!("[{lo:.2}-{hi:.2}]"))
                .unwrap_or_default()
        };
        let flag = if noisy {
            format!(
                "NOISY (spread {:.0}% / ref {:.0}%) ",
                spread_pct.unwrap_or(0.0),
                reference_spread_pct.unwrap_or(0.0)
            )
        } else {
            String::new()
        };
        println!(
            "{:<4} {:<44} {:>8.2} GiB/s {:<15} ref {:>7.2} {:<15} ratio {:>5.2}x {:<16} {}{}",
            fig.id,
            fig.what,
            fig.gib_s,
            range(kernel),
            fig.reference_gib_s,
            range(reference),
            fig.ratio,
            target,
            flag,
            fig.note
        );
        self.figures.push(Recorded {
            runs: kernel.map(|(t, _)| t.runs),
            gib_s_min: kernel.map(|(_, r)| r.0),
            gib_s_max: kernel.map(|(_, r)| r.1),
            reference_min_gib_s: reference.map(|(_, r)| r.0),
            reference_max_gib_s: reference.map(|(_, r)| r.1),
            spread_pct,
            reference_spread_pct,
            noisy,
            figure: fig,
        });
    }
}

/// The reference's copy: `src` into `dst`, 4 KiB page by page, one `memcpy` call a page, as
/// the codec copies (guest pages are scattered; it never sees two frames as one buffer).
///
/// The `black_box` on each destination page keeps that true: without it the optimiser proves
/// the pages contiguous and merges the loop into one `memcpy` of the whole buffer, which glibc
/// runs with non-temporal stores once the size passes its threshold (a fraction of the
/// last-level cache). On a 256 MiB buffer that single call ran at 9.4-10.3 GiB/s where 4 KiB
/// calls ran at 5.8-6.3 GiB/s, so every ratio measured against it was against a different copy
/// than the one named. [`copy_whole`] is that single call, printed as context (`B0`).
pub(crate) fn copy_pages(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(4096).zip(dst.chunks_exact_mut(4096)) {
        black_box(&mut *d).copy_from_slice(s);
    }
}

/// `src` into `dst` as one `memcpy` call (what [`copy_pages`] compiled to before it was kept
/// page by page): the context figure `B0`.
pub(crate) fn copy_whole(src: &[u8], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
        d.copy_from_slice(s);
    }
}

pub(crate) fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-12) / (1u64 << 30) as f64
}

/// Deterministic incompressible bytes (the workspace's generator, [`sim::Rng`]), so every run
/// measures the same data.
pub(crate) fn random_pages(pages: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; pages * 4096];
    let mut rng = sim::Rng::new(seed);
    for chunk in v.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    v
}
