//! The RAM pre-copy's page throughput over 1..N loopback connections: round 0 of a migration
//! (every frame read, framed, sent, received and written) on its own, no VM running, both ends
//! in this process. Each figure is the median of the repeats with the min and max beside it:
//! the wall-clock rate, and the rate per CPU-second the process used meanwhile (user + system,
//! all threads, from `/proc/self/stat`, 10 ms ticks), which says what the work costs whatever
//! share of the machine the scheduler gave.
//!
//! `cargo run --release -p kvm-vmm --example ram_throughput -- [MiB] [repeats] [connections...]`
//! (default: 256 MiB, 7 repeats, 1 and 2 connections). Every page is distinct and non-zero, so
//! every page travels whole; the destination's RAM is compared with the source's after each run.
#![allow(
    clippy::print_stdout,
    clippy::std_instead_of_core,
    reason = "a measuring program that prints its figures"
)]

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() -> Result<(), String> {
    use kvm_vmm::memory::GuestRam;
    use kvm_vmm::migration::ram_round_over_loopback;

    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().map_err(|e| format!("{a}: {e}")))
        .collect::<Result<_, _>>()?;
    let mib = args.first().copied().unwrap_or(256);
    let repeats = args.get(1).copied().unwrap_or(7).max(1);
    let channels: Vec<u64> = match args.get(2..) {
        Some(c) if !c.is_empty() => c.to_vec(),
        _ => vec![1, 2],
    };
    let bytes = mib << 20;
    let src = GuestRam::new(bytes).map_err(|e| e.to_string())?;
    let mut page = vec![0u8; 4096];
    for f in 0..src.frames() {
        for (i, b) in page.iter_mut().enumerate() {
            *b = u8::try_from((f.wrapping_mul(2_654_435_761) ^ (i as u64 * 131)) % 255 + 1)
                .unwrap_or(1);
        }
        src.write_at(f * 4096, &page).map_err(|_| "writing RAM")?;
    }
    let want = src.snapshot().map_err(|_| "reading RAM")?;
    println!(
        "RAM round 0 over loopback: {mib} MiB, every page non-zero, {repeats} repeats, median [min, max]"
    );
    let mut medians = Vec::new();
    for &n in &channels {
        let n = usize::try_from(n).map_err(|e| e.to_string())?;
        let mut rates = Vec::new();
        let mut per_cpu = Vec::new();
        for _ in 0..repeats {
            let dst = GuestRam::new(bytes).map_err(|e| e.to_string())?;
            let c0 = cpu_ticks()?;
            let r = ram_round_over_loopback(&src, &dst, n).map_err(|e| e.to_string())?;
            let cpu_s = (cpu_ticks()? - c0) as f64 / 100.0;
            per_cpu.push(r.bytes as f64 / cpu_s.max(0.01) / f64::from(1 << 20));
            if dst.snapshot().map_err(|_| "reading RAM")? != want {
                return Err(format!("{n} connections: the destination's RAM differs"));
            }
            rates.push(r.bytes as f64 / (r.elapsed_ns.max(1) as f64 / 1e9) / f64::from(1 << 20));
        }
        let (med, wall) = summary(&mut rates);
        let (_, cpu) = summary(&mut per_cpu);
        println!(
            "{n} connection{}: {wall} wall; {cpu} per CPU-second",
            if n == 1 { "" } else { "s" },
        );
        medians.push((n, med));
    }
    if let (Some(&(1, one)), true) = (medians.first(), medians.len() > 1) {
        for (n, m) in medians.iter().skip(1) {
            println!(
                "{n} connections / 1: {:.2}x",
                m / one.max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(())
}

/// The median of `v` and its printout with the spread.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn summary(v: &mut [f64]) -> (f64, String) {
    v.sort_by(f64::total_cmp);
    let med = v.get(v.len() / 2).copied().unwrap_or(0.0);
    let (lo, hi) = (
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    );
    let spread = if med > 0.0 { (hi - lo) / med } else { 0.0 };
    let noisy = if spread > 0.10 {
        format!(" (spread {:.0}% of the median: noisy)", spread * 100.0)
    } else {
        String::new()
    };
    (med, format!("{med:.0} MiB/s [{lo:.0}, {hi:.0}]{noisy}"))
}

/// CPU time this process has used (user + system, every thread), in clock ticks (100 a second
/// on Linux).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn cpu_ticks() -> Result<u64, String> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    // After the command name (in parentheses, which may hold spaces): fields 3 onwards; utime
    // and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or("unreadable /proc/self/stat")?;
    let f: Vec<&str> = rest.split(' ').collect();
    let tick = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|x| x.parse::<u64>().ok())
            .ok_or_else(|| "unreadable /proc/self/stat".to_string())
    };
    Ok(tick(11)? + tick(12)?)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {}
