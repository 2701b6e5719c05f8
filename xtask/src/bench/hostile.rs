//! B14: the destination's work per stream byte under the worst hostile shapes (issue 21).
//!
//! A valid 3D stream of the reference vGPU is restored, then the same stream with one 1 MiB PAGES
//! record added in its final round (before the last ROUND record; valid CRCs, indices and END
//! totals) of the shape that costs the destination most per byte:
//!
//! - **ZERO**: 65,536 runs each zeroing the whole first guest memory region;
//! - **DUP**: runs of DUP pages copying one non-zero frame (with its correct hash) over the region;
//! - **DELTA**: runs of DELTA pages of one 1-byte segment each (7 bytes per page);
//! - **PPGTT**: 16 distinct PPGTT roots (the most a record may carry) over shared tables in guest
//!   memory, each walk reading just under the walk budget's entries (so the roots are accepted).
//!
//! Each figure is the whole restore (open, feed, commit) in ms per MiB of stream, beside the valid
//! stream's; the goal is a ratio within 10x. Guests: the small test vGPU (2.5 MiB of graphics
//! memory, 3.1 MiB of guest memory) and a 320 MiB guest (256 MiB of graphics memory).

use std::time::{Duration, Instant};

use migstream::{Limits, RecordFlags, RecordKind};
use sim::campaign::{Part, Parts};
use sim::scenario::{Plan, Scenario, migrate};
use sim::{Machine, Profile};
use vgpu::dest::DestSession;
use vgpu::traits::GuestMemory;

use super::harness::{Figure, Harness, gib_s};

const MIB: f64 = 1_048_576.0;
/// Payload of the hostile PAGES record.
const FLOOD: usize = 1 << 20;

/// The hostile shapes.
#[derive(Clone, Copy)]
enum Shape {
    Zero,
    Dup,
    Delta,
    Ppgtt,
}

impl Shape {
    const ALL: [Shape; 4] = [Shape::Zero, Shape::Dup, Shape::Delta, Shape::Ppgtt];

    fn name(self) -> &'static str {
        match self {
            Shape::Zero => "ZERO flood",
            Shape::Dup => "DUP flood",
            Shape::Delta => "DELTA flood",
            Shape::Ppgtt => "PPGTT walks",
        }
    }
}

fn run_header(out: &mut Vec<u8>, first: u64, count: u32, encoding: u8) {
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[encoding, 0, 0, 0]);
}

fn pages_part(payload: Vec<u8>) -> Part {
    Part {
        kind: RecordKind::PAGES,
        flags: RecordFlags::MANDATORY,
        version: 1,
        payload,
    }
}

/// Restore `wire` into `dst` (reset first): open, feed whole, commit. Errors are results here: a
/// hostile stream may be refused, and the time to refuse it is what is measured.
fn restore(dst: &mut Machine<'_>, staging: &mut [u8], wire: &[u8]) -> Result<(), String> {
    dst.reset_for_restore().map_err(|e| e.to_string())?;
    let mut d =
        DestSession::open(&mut dst.vgpu, staging, Limits::DEFAULT).map_err(|e| e.to_string())?;
    d.feed(&dst.vgpu, &mut dst.mem, wire)
        .map_err(|e| e.to_string())?;
    d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Best time of a restore of `wire` (the guest memory reset is not timed).
fn time_restore(
    h: &Harness,
    dst: &mut Machine<'_>,
    staging: &mut [u8],
    wire: &[u8],
) -> (Duration, Result<(), String>) {
    let budget = Duration::from_millis(if h.quick { 40 } else { 600 });
    let mut outcome = restore(dst, staging, wire); // warm up
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let _ = dst.reset_for_restore();
        let t = Instant::now();
        let mut d = match DestSession::open(&mut dst.vgpu, staging, Limits::DEFAULT) {
            Ok(d) => d,
            Err(e) => return (t.elapsed(), Err(e.to_string())),
        };
        let r = d
            .feed(&dst.vgpu, &mut dst.mem, wire)
            .and_then(|_| d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host).map(|_| ()));
        best = best.min(t.elapsed());
        outcome = r.map_err(|e| e.to_string());
        runs += 1;
        if runs > 1000 {
            break;
        }
    }
    (best, outcome)
}

/// The hostile record of `shape` for the guest restored in `dst` (whose memory holds the valid
/// stream's final contents).
fn hostile(shape: Shape, dst: &Machine<'_>) -> crate::Result<Vec<Part>> {
    let map = dst.mem.map().clone();
    let region = *map.regions().first().ok_or("no guest memory")?;
    let (first, count) = (region.start().get(), region.count());
    let count32 = u32::try_from(count).map_err(|_| "region too large")?;
    let mut p = Vec::with_capacity(FLOOD + 4096);
    match shape {
        Shape::Zero => {
            while p.len() + 16 <= FLOOD {
                run_header(&mut p, first, count32, 1);
            }
            Ok(vec![pages_part(p)])
        }
        Shape::Dup => {
            // Copy a non-zero frame over every other frame of the region, region after region.
            let mut page = [0u8; 4096];
            let mut from = None;
            for f in first..first + count {
                dst.mem
                    .read(gtt::Gfn::new(f), 0, &mut page)
                    .map_err(|_| "read")?;
                if !gmem::is_zero_page(&page) {
                    from = Some(f);
                    break;
                }
            }
            let from = from.ok_or("no non-zero frame to copy")?;
            let hash = gmem::page_hash(&page);
            let targets: Vec<u64> = (first..first + count).filter(|&f| f != from).collect();
            'fill: loop {
                for chunk in targets.chunks(4095) {
                    if p.len() + 16 + 16 * chunk.len() > FLOOD {
                        break 'fill;
                    }
                    // Consecutive targets: one run per gap around `from`.
                    let mut i = 0;
                    while i < chunk.len() {
                        let mut j = i + 1;
                        while j < chunk.len() && chunk[j] == chunk[j - 1] + 1 {
                            j += 1;
                        }
                        run_header(&mut p, chunk[i], (j - i) as u32, 2);
                        for _ in i..j {
                            p.extend_from_slice(&from.to_le_bytes());
                            p.extend_from_slice(&hash.to_le_bytes());
                        }
                        i = j;
                    }
                }
            }
            Ok(vec![pages_part(p)])
        }
        Shape::Delta => {
            let per_run = 16 + 7 * count as usize;
            let mut k = 0u8;
            while p.len() + per_run <= FLOOD {
                run_header(&mut p, first, count32, 3);
                for _ in 0..count {
                    k = k.wrapping_add(1) | 1;
                    p.extend_from_slice(&5u16.to_le_bytes());
                    p.extend_from_slice(&0u16.to_le_bytes());
                    p.extend_from_slice(&1u16.to_le_bytes());
                    p.push(k);
                }
            }
            Ok(vec![pages_part(p)])
        }
        Shape::Ppgtt => {
            // Sixteen distinct PML4 pages (the most roots a record carries) over one shared PDP,
            // PD and PT at the end of the region: each PML4 maps one PDP entry, the PDP four, the
            // PD and the PT all 512, so each walk reads 1 + 4 + 4 * 512 + 4 * 512 * 512 entries,
            // just within the walk budget: accepted, at the most work a root may cost.
            let last = first + count - 1;
            let (pdp, pd, pt, leaf) = (last - 3, last - 2, last - 1, last);
            let pml4_first = last - 3 - 16;
            let entry = |next: u64| (next << 12) | 0b11; // present, writable
            let mut pages = Vec::new();
            run_header(&mut pages, pml4_first, 16 + 4, 0);
            for _ in 0..16 {
                pages.extend_from_slice(&entry(pdp).to_le_bytes());
                pages.extend_from_slice(&[0u8; 4096 - 8]);
            }
            for i in 0..512 {
                let e = if i < 4 { entry(pd) } else { 0 };
                pages.extend_from_slice(&e.to_le_bytes());
            }
            for next in [pt, leaf] {
                for _ in 0..512 {
                    pages.extend_from_slice(&entry(next).to_le_bytes());
                }
            }
            pages.extend_from_slice(&[0u8; 4096]);
            let mut roots = Vec::new();
            roots.extend_from_slice(&16u32.to_le_bytes());
            roots.extend_from_slice(&0u32.to_le_bytes());
            for k in 0..16 {
                roots.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0]);
                roots.extend_from_slice(&(pml4_first + k).to_le_bytes());
                roots.extend_from_slice(&[0u8; 24]);
            }
            Ok(vec![
                pages_part(pages),
                Part {
                    kind: RecordKind::PPGTT_ROOTS,
                    flags: RecordFlags::MANDATORY,
                    version: 1,
                    payload: roots,
                },
            ])
        }
    }
}

/// B14 on one guest.
fn guest(h: &mut Harness, id: &str, label: &str, sc: &Scenario) -> crate::Result {
    let err = |e: vgpu::error::VgpuError| e.to_string();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).map_err(err)?;
    let mut b = sc.machine(&mut st_b, true).map_err(err)?;
    a.boot().map_err(err)?;
    let mut plan = Plan {
        start_step: 10,
        ..Plan::default()
    };
    plan.source.stream_id = 14;
    let wire = migrate(&mut a, &mut b, &plan).map_err(err)?.wire;
    let frames = b.mem.map().frames();
    // Device state, generously, plus the destination's page map.
    let mut staging = vec![0u8; (1 << 20) + sc.config.ggtt_storage_len() * 64 + frames as usize];
    let (valid_d, valid_r) = time_restore(h, &mut b, &mut staging, &wire);
    valid_r.map_err(|e| format!("{id}: the valid stream was refused: {e}"))?;
    let valid_ms = valid_d.as_secs_f64() * 1e3 / (wire.len() as f64 / MIB);
    let parts = Parts::split(&wire).ok_or("split")?;
    let last_round = parts
        .records
        .iter()
        .rposition(|r| r.kind == RecordKind::ROUND)
        .ok_or("no ROUND")?;
    h.record(Figure {
        id: format!("{id}v"),
        what: format!("restore, valid 3D stream, {label}"),
        bytes: wire.len() as u64,
        gib_s: gib_s(wire.len() as u64, valid_d),
        reference_gib_s: gib_s(wire.len() as u64, valid_d),
        ratio: 0.0,
        target_ratio: None,
        note: format!(
            "{valid_ms:.2} ms/MiB ({:.2} MiB in {:.2} ms)",
            wire.len() as f64 / MIB,
            valid_d.as_secs_f64() * 1e3
        ),
    });
    // Built against the valid stream's final guest memory (before any hostile restore changes it).
    let shapes = Shape::ALL
        .into_iter()
        .map(|s| hostile(s, &b).map(|extra| (s, extra)))
        .collect::<crate::Result<Vec<_>>>()?;
    for ((shape, extra), suffix) in shapes.into_iter().zip(["z", "d", "x", "p"]) {
        let mut p = parts.clone();
        for (k, part) in extra.into_iter().enumerate() {
            if part.kind == RecordKind::PPGTT_ROOTS {
                let at = p.find(RecordKind::PPGTT_ROOTS).ok_or("no PPGTT_ROOTS")?;
                p.records[at] = part;
            } else {
                p.records.insert(last_round + k, part);
            }
        }
        let hostile_wire = p.seal();
        let (d, r) = time_restore(h, &mut b, &mut staging, &hostile_wire);
        let ms = d.as_secs_f64() * 1e3 / (hostile_wire.len() as f64 / MIB);
        let outcome = match r {
            Ok(()) => "accepted".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        let ratio = ms / valid_ms;
        h.record(Figure {
            id: format!("{id}{suffix}"),
            what: format!("restore, {}, {label}", shape.name()),
            bytes: hostile_wire.len() as u64,
            gib_s: gib_s(hostile_wire.len() as u64, d),
            reference_gib_s: gib_s(wire.len() as u64, valid_d),
            ratio: 0.0,
            target_ratio: Some(0.1),
            note: format!(
                "{ms:.2} ms/MiB = {ratio:.1}x the valid stream's ({:.2} ms in all; the added \
                 {:.2} MiB cost {:.2} ms); {outcome}",
                d.as_secs_f64() * 1e3,
                (hostile_wire.len() - wire.len()) as f64 / MIB,
                (d.as_secs_f64() - valid_d.as_secs_f64()) * 1e3,
            ),
        });
    }
    Ok(())
}

/// B14a (small test guest) and B14b (320 MiB guest; not in quick mode).
pub(crate) fn hostile_streams(h: &mut Harness) -> crate::Result {
    let err = |e: vgpu::error::VgpuError| e.to_string();
    if h.wants_group("B14a") {
        let sc = Scenario::small(Profile::THREE_D, 20, 14).map_err(err)?;
        guest(h, "B14a", "3.1 MiB guest", &sc)?;
    }
    if !h.quick && h.wants_group("B14b") {
        let sc = Scenario::new(
            64 << 20,
            192 << 20,
            Profile::THREE_D.scaled_down(128).unpaced(),
            20,
            14,
        )
        .map_err(err)?;
        guest(h, "B14b", "320 MiB guest", &sc)?;
    }
    Ok(())
}
