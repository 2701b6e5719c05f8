//! `cargo xtask migrate --modeled`: both endpoints in one process over a modeled link
//! ([`sim::scenario::migrate`]): the guest advances by the link's modeled time, so the figures
//! (rounds, modeled downtime) are deterministic for a seed, unlike the two-process run's.

use std::time::Instant;

use super::{Args, START_FRAME};

use serde::Serialize;
use sim::scenario::{MigrationReport, Plan, Scenario, Snapshot, host_consistent, migrate};

#[derive(Serialize)]
struct Json<'a> {
    workload: &'a str,
    /// The vGPU's graphics memory, bytes, and the same in MiB (exact, not rounded).
    gm_bytes: u64,
    gm_mib: f64,
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
    /// GPU auto-converge: the configuration's downtime goal, ms (`null`: off).
    auto_converge_goal_ms: Option<u32>,
    /// GPU auto-converge: the highest throttle set, percent (0: off or never needed).
    max_throttle_percent: u8,
    /// Guest frames per modeled second before the migration (unthrottled) and during pre-copy.
    fps_before: f64,
    fps_precopy: f64,
    /// Share of the source GPU's time the vGPU's engines ran during pre-copy, percent.
    engine_share_precopy_percent: f64,
    /// Engine time auto-converge took from the vGPU during pre-copy, ms.
    engine_throttled_ms: f64,
}

/// What auto-converge cost the guest: frame rates before and during pre-copy, engine share.
struct Cost {
    fps_before: f64,
    fps_precopy: f64,
    share_percent: f64,
    throttled_ms: f64,
}

impl Cost {
    fn of(r: &MigrationReport, frames_before: u64, before_ns: u64) -> Self {
        let per_s = |frames: u64, ns: f64| {
            if ns > 0.0 {
                frames as f64 / ns * 1e9
            } else {
                0.0
            }
        };
        let e = r.precopy_engine;
        let all = (e.ran_ns + e.throttled_ns) as f64;
        Self {
            fps_before: per_s(frames_before, before_ns as f64),
            fps_precopy: per_s(r.precopy_frames, r.precopy_us as f64 * 1000.0),
            share_percent: if all > 0.0 {
                e.ran_ns as f64 / all * 100.0
            } else {
                100.0
            },
            throttled_ms: e.throttled_ns as f64 / 1e6,
        }
    }
}

/// Run the demo.
pub(super) fn run(args: &Args) -> crate::Result {
    let profile = super::profile(&args.workload);
    let link = args.link.unwrap_or(super::MODELED_LINK);
    let gm_bytes = if args.quick { 5 << 19 } else { args.gm << 20 };
    let frames = args.frames.unwrap_or_else(|| {
        let fps = 1_000_000_000u64.checked_div(profile.frame_ns).unwrap_or(60);
        let migrate_s = 2.0 * gm_bytes as f64 / link as f64 + 0.5;
        START_FRAME + (migrate_s * fps as f64).ceil() as u64
    });
    let sc = if args.quick {
        Scenario::small(profile, frames.min(60), args.seed)
    } else {
        // `--gm` is at least 128 (its range).
        Scenario::new(
            64 << 20,
            args.gm.saturating_sub(64) << 20,
            profile,
            frames,
            args.seed,
        )
    }
    .map_err(|e| format!("building the scenario: {e}"))?;
    let t0 = Instant::now();
    let (aperture, hidden) = (
        sc.config.partition.aperture.size(),
        sc.config.partition.hidden.size(),
    );
    // The policy: the requested downtime limit, or what the auto-converge configuration sets.
    let base = gmem::PolicyConfig {
        downtime_limit_ms: args.downtime_ms,
        max_rounds: 30,
        ..Plan::default().source.policy
    };
    let policy = args.auto_converge.map_or(base, |ac| ac.apply(base));
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
            policy.downtime_limit_ms,
            args.precision,
            args.content
        );
        if let Some(note) =
            super::fitted_note(&profile, &sc.profile, hidden).filter(|_| !args.quick)
        {
            println!("{note}");
        }
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
    plan.source.policy = policy;
    plan.source.channels = u16::from(args.channels);
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
    let (frames_before, before_ns) = (a.driver.frames_submitted(), a.clock_ns);
    let report = migrate(&mut a, &mut b, &plan).map_err(|e| format!("migration failed: {e}"))?;
    let cost = Cost::of(&report, frames_before, before_ns);
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
        &cost,
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
    cost: &Cost,
    verdict: Option<&str>,
    wall_ms: u128,
) -> crate::Result {
    let zero: u64 = r.rounds.iter().map(|x| x.zero_pages).sum();
    let pages: u64 = r.rounds.iter().map(|x| x.pages).sum();
    let reason = r.switch.map_or("none".to_string(), |s| s.to_string());
    if args.json {
        let j = Json {
            workload: sc.profile.name,
            gm_bytes: super::report::gm_bytes(sc),
            gm_mib: super::report::exact_mib(super::report::gm_bytes(sc)),
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
            auto_converge_goal_ms: args.auto_converge.map(|ac| ac.goal_ms()),
            max_throttle_percent: r.max_throttle,
            fps_before: cost.fps_before,
            fps_precopy: cost.fps_precopy,
            engine_share_precopy_percent: cost.share_percent,
            engine_throttled_ms: cost.throttled_ms,
        };
        let error = verdict.map(|v| super::report::JsonError::new("verification", v));
        super::report::emit_json(Some(&j), error);
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
    println!(
        "guest rendering: {:.1} frames/s before the migration, {:.1} frames/s during pre-copy \
         ({:.1} ms, engines ran {:.0}% of it, {:.0} ms of engine time throttled away); \
         auto-converge {}",
        cost.fps_before,
        cost.fps_precopy,
        r.precopy_us as f64 / 1000.0,
        cost.share_percent,
        cost.throttled_ms,
        match args.auto_converge {
            Some(ac) => format!(
                "on ({} ms configuration), throttle up to {}%",
                ac.goal_ms(),
                r.max_throttle
            ),
            None => "off".to_owned(),
        }
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
