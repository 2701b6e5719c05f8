//! `cargo xtask migrate`: run a workload on the reference device, live-migrate the vGPU to a
//! second, differently placed vGPU over a modeled link, let the destination finish the workload,
//! and verify that its final state equals a never-migrated run of the same seed, byte for byte.
//!
//! This first version runs both endpoints in one process and models the link's rate; the two-process
//! TCP demo is tracked separately (see the README's status table).

use std::time::Instant;

use serde::Serialize;
use vgpu::sim::Profile;
use vgpu::sim::scenario::{MigrationReport, Plan, Scenario, Snapshot, host_consistent, migrate};

/// Options of `cargo xtask migrate`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Workload running in the guest.
    #[arg(long, default_value = "3d", value_parser = ["idle", "2d", "media", "3d"])]
    pub(crate) workload: String,
    /// Graphics memory of the vGPU in MiB: 64 MiB of aperture, the rest hidden.
    #[arg(long, default_value_t = 448)]
    pub(crate) gm: u64,
    /// Modeled link rate, e.g. `10gbit`, `25gbit`, `100gbit`, `800mbit`.
    #[arg(long, default_value = "10gbit")]
    pub(crate) link: String,
    /// Downtime limit the pre-copy policy aims for, ms.
    #[arg(long, default_value_t = 300)]
    pub(crate) downtime_ms: u32,
    /// Frames the workload renders; by default enough for the migration to happen while it runs
    /// (30 frames first, then about twice the time the whole graphics memory takes on the link).
    #[arg(long)]
    pub(crate) frames: Option<u64>,
    /// How precisely GPU writes are tracked: `exact` (the write set the device reports), `active`
    /// (every mapped page when the vGPU ran work), `mapped` (every mapped page, always: the
    /// original prototype's behaviour).
    #[arg(long, default_value = "exact", value_parser = ["exact", "active", "mapped"])]
    pub(crate) precision: String,
    /// Content tracking on the source (skip unchanged pages, send duplicates and deltas): `on`
    /// with a 64 MiB delta cache, or `off`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub(crate) content: String,
    /// Seed of the guest workload.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// A small vGPU (512 KiB + 2 MiB) and a short run: the CI smoke test.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Frames rendered before the migration starts.
const START_FRAME: u64 = 30;

fn parse_link(s: &str) -> crate::Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix("gbit") {
        (n, 1_000_000_000u64)
    } else if let Some(n) = s.strip_suffix("mbit") {
        (n, 1_000_000)
    } else {
        return Err(format!(
            "--link {s}: expected a rate like 10gbit or 800mbit"
        ));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--link {s}: not a number"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("--link {s}: must be positive"));
    }
    // TCP goodput is about 94% of the line rate at MTU 1500.
    Ok((v * mult as f64 / 8.0 * 0.94) as u64)
}

#[derive(Serialize)]
struct Json<'a> {
    workload: &'a str,
    gm_mib: u64,
    link_bytes_per_s: u64,
    rounds: Vec<[u64; 5]>,
    switch_reason: String,
    wire_bytes: u64,
    stop_copy_bytes: u64,
    modeled_downtime_us: u64,
    modeled_total_us: u64,
    zero_pages: u64,
    full_pages: u64,
    dup_pages: u64,
    delta_pages: u64,
    delta_bytes: u64,
    unchanged_pages_skipped: u64,
    verified: bool,
    wall_ms: u128,
}

/// Run the demo.
pub(crate) fn run(args: &Args) -> crate::Result {
    let profile = match args.workload.as_str() {
        "idle" => Profile::IDLE,
        "2d" => Profile::TWO_D,
        "media" => Profile::MEDIA,
        _ => Profile::THREE_D,
    };
    let link = parse_link(&args.link)?;
    let gm_bytes = if args.quick { 5 << 19 } else { args.gm << 20 };
    let frames = args.frames.unwrap_or_else(|| {
        let fps = 1_000_000_000u64.checked_div(profile.frame_ns).unwrap_or(60);
        let migrate_s = 2.0 * gm_bytes as f64 / link as f64 + 0.5;
        START_FRAME + (migrate_s * fps as f64).ceil() as u64
    });
    let sc = if args.quick {
        Scenario::small(profile, frames.min(60), args.seed)
    } else {
        if args.gm < 128 {
            return Err("--gm must be at least 128 (64 MiB of aperture plus hidden memory)".into());
        }
        Scenario::new(64 << 20, (args.gm - 64) << 20, profile, frames, args.seed)
    }
    .map_err(|e| format!("building the scenario: {e}"))?;
    let t0 = Instant::now();
    let (aperture, hidden) = (
        sc.config.partition.aperture.size(),
        sc.config.partition.hidden.size(),
    );
    if !args.json {
        println!(
            "vGPU: {} KiB aperture + {} KiB hidden, guest memory {} KiB in 2 regions (one above 4 GiB)",
            aperture >> 10,
            hidden >> 10,
            (sc.map.frames() * 4096) >> 10
        );
        println!(
            "workload {} ({} frames, seed {}), link {:.2} GB/s modeled, downtime limit {} ms, \
             GPU dirty tracking {}, content tracking {}",
            profile.name,
            sc.frames,
            sc.seed,
            link as f64 / 1e9,
            args.downtime_ms,
            args.precision,
            args.content
        );
        println!("running the reference (never migrated) ...");
    }
    let expected = sc
        .run_unmigrated()
        .map_err(|e| format!("reference run: {e}"))?;

    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).map_err(|e| e.to_string())?;
    let mut b = sc.machine(&mut st_b, true).map_err(|e| e.to_string())?;
    a.boot().map_err(|e| e.to_string())?;
    let mut plan = Plan {
        link_bytes_per_s: link,
        start_step: 0,
        ..Plan::default()
    };
    plan.source.policy.downtime_limit_ms = args.downtime_ms;
    plan.source.policy.max_rounds = 30;
    plan.chunk = 256 * 1024;
    // A 64 MiB cache of last-sent pages for deltas (QEMU's XBZRLE cache default).
    plan.content_cache_pages = if args.content == "on" { 16384 } else { 0 };
    plan.source.precision = match args.precision.as_str() {
        "mapped" => vgpu::source::GpuDirtyPrecision::AllMapped,
        "active" => vgpu::source::GpuDirtyPrecision::MappedIfActive,
        _ => vgpu::source::GpuDirtyPrecision::Exact,
    };
    plan.feed = 256 * 1024;
    // Start once the workload is well under way.
    while a.driver.frames_submitted() < START_FRAME.min(sc.frames / 4) {
        a.step().map_err(|e| e.to_string())?;
    }
    if !args.json {
        println!("migrating at frame {} ...", a.driver.frames_submitted());
    }
    let report = migrate(&mut a, &mut b, &plan).map_err(|e| format!("migration failed: {e}"))?;
    host_consistent(&b)
        .map_err(|i| format!("destination GGTT shadow wrong at guest index {i:#x}"))?;
    if !b.run_to_end(u64::MAX >> 1).map_err(|e| e.to_string())? {
        return Err("destination did not finish the workload".into());
    }
    let got = Snapshot::of(&b);
    let verdict = expected.diff(&got);
    let wall = t0.elapsed();
    print_report(
        args,
        &sc,
        link,
        &report,
        verdict.as_deref(),
        wall.as_millis(),
    )?;
    match verdict {
        None => Ok(()),
        Some(d) => Err(format!("verification FAILED: {d}")),
    }
}

fn print_report(
    args: &Args,
    sc: &Scenario,
    link: u64,
    r: &MigrationReport,
    verdict: Option<&str>,
    wall_ms: u128,
) -> crate::Result {
    let zero: u64 = r.rounds.iter().map(|x| x.zero_pages).sum();
    let pages: u64 = r.rounds.iter().map(|x| x.pages).sum();
    let reason = r.switch.map_or("none".to_string(), |s| format!("{s:?}"));
    if args.json {
        let j = Json {
            workload: sc.profile.name,
            gm_mib: (sc.config.partition.aperture.size() + sc.config.partition.hidden.size()) >> 20,
            link_bytes_per_s: link,
            rounds: r
                .rounds
                .iter()
                .map(|x| {
                    [
                        u64::from(x.round),
                        x.pages,
                        x.zero_pages,
                        x.bytes,
                        x.dirty_left,
                    ]
                })
                .collect(),
            switch_reason: reason,
            wire_bytes: r.wire_bytes,
            stop_copy_bytes: r.stop_copy_bytes,
            modeled_downtime_us: r.downtime_us,
            modeled_total_us: r.total_us,
            zero_pages: zero,
            full_pages: pages - zero - r.content.dup - r.content.delta,
            dup_pages: r.content.dup,
            delta_pages: r.content.delta,
            delta_bytes: r.content.delta_bytes,
            unchanged_pages_skipped: r.content.unchanged,
            verified: verdict.is_none(),
            wall_ms,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!();
    println!("round      pages   zero pages        bytes   dirty after");
    let last = r.rounds.len().saturating_sub(1);
    for (i, x) in r.rounds.iter().enumerate() {
        let label = if i == last {
            "stop".to_string()
        } else {
            x.round.to_string()
        };
        println!(
            "{label:>5} {:>10} {:>12} {:>12} {:>13}",
            x.pages, x.zero_pages, x.bytes, x.dirty_left
        );
    }
    println!();
    println!("switched to stop-and-copy: {reason}");
    let c = r.content;
    let full = pages - zero - c.dup - c.delta;
    println!(
        "stream: {} bytes ({:.1} MiB), {} of them after the stop",
        r.wire_bytes,
        r.wire_bytes as f64 / (1 << 20) as f64,
        r.stop_copy_bytes,
    );
    println!(
        "pages: {full} full, {zero} zero (markers), {} duplicates (16 B each), {} deltas ({} B in all), {} dirty but unchanged (not sent)",
        c.dup, c.delta, c.delta_bytes, c.unchanged
    );
    let saved =
        (zero + c.dup + c.unchanged) * 4096 + (c.delta * 4096).saturating_sub(c.delta_bytes);
    println!(
        "saved by zero markers, duplicates, deltas and unchanged-page detection: {:.1} MiB",
        saved as f64 / (1 << 20) as f64
    );
    println!(
        "modeled downtime: {:.3} ms (drain + stop-and-copy over the link); modeled total: {:.1} ms",
        r.downtime_us as f64 / 1000.0,
        r.total_us as f64 / 1000.0
    );
    println!("wall time of this run (reference + migration + destination): {wall_ms} ms");
    match verdict {
        None => println!(
            "verification: PASSED: destination state equals the never-migrated run byte for byte \
             (guest memory, 2 MiB of registers, GGTT, engines, config space)"
        ),
        Some(d) => println!("verification: FAILED: {d}"),
    }
    Ok(())
}
