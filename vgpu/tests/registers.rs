//! Every register a guest writes survives a migration (issue 16), and the oracle can tell when one
//! does not.
//!
//! - The guest driver model writes registers the table does not have, masked registers with
//!   masked writes, enables 64 KiB PPGTT pages through 0x4080 and stores through such a page, and
//!   programs MOCS with a 64-pair LRI; a migrated run equals the unmigrated one.
//! - Sensitivity: the same stream with the registers outside the table removed from its REGISTERS
//!   record (or with 0x4080 removed) restores without complaint, but the run it continues ends in a
//!   different state, and the oracle says so.
//! - All 32 fences a guest may use are reprogrammed on the destination.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use std::collections::BTreeMap;

use migstream::RecordKind;
use sim::campaign::{Parts, encode_registers, parse_registers, restore, staging_len};
use sim::scenario::{Plan, Scenario, Snapshot, migrate};
use sim::{Machine, Profile};

/// Restore `wire` into a fresh destination, hand it the guest as the migration did (`driver_from`,
/// at `clock_ns`), run the workload to its end (at most `max_steps`) and return whether it
/// finished, and the final state.
fn continue_from(
    sc: &Scenario,
    wire: &[u8],
    driver_from: &Machine<'_>,
    max_steps: u64,
) -> (bool, Snapshot) {
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; staging_len(sc)];
    let (r, _) = restore(&mut m, &mut staging, wire, 4096).unwrap();
    r.unwrap();
    m.vgpu.start().unwrap();
    m.driver = driver_from.driver.clone();
    m.clock_ns = driver_from.clock_ns;
    let done = m.run_to_end(max_steps).unwrap();
    (done, Snapshot::of(&m))
}

/// Enough steps for the small workloads to finish many times over.
const STEPS: u64 = 200_000;

#[test]
fn untracked_registers_migrate_and_dropping_them_is_seen_by_the_oracle() {
    let sc = Scenario::small(Profile::TWO_D, 30, 16).unwrap();
    let expected = sc.run_unmigrated().unwrap();
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let plan = Plan {
        start_step: 40,
        ..Plan::default()
    };
    let report = migrate(&mut a, &mut b, &plan).unwrap();
    let wire = report.wire;

    // What the REGISTERS record carries: registers outside the table, the 64 KiB enable, the
    // masked registers as the masked writes left them, the forcewake request.
    let parts = Parts::split(&wire).unwrap();
    let i = parts.find(RecordKind::REGISTERS).unwrap();
    assert_eq!(parts.records[i].version, mmio::SPARSE_VERSION);
    let regs = parse_registers(&parts.records[i].payload);
    let untracked: Vec<u32> = regs
        .keys()
        .copied()
        .filter(|&o| mmio::SKL.find(o).is_none())
        .collect();
    for o in [0xA008, 0xA024, 0xA168, 0xA210, 0x43208] {
        assert!(untracked.contains(&o), "{o:#x} travels");
    }
    assert!(!regs.contains_key(&0xA0B0), "written 0: at reset, not sent");
    assert_eq!(regs.get(&0x4080), Some(&0xF));
    assert_eq!(
        regs.get(&0x7004),
        Some(&0x41),
        "CACHE_MODE_1 after two masked writes"
    );
    assert_eq!(regs.get(&0x20C0), Some(&0x80));
    assert_eq!(regs.get(&0x20D4), Some(&0x2));
    assert_eq!(regs.get(&0xA278), Some(&0x1));
    // The 64-pair LRI programmed the whole render MOCS table.
    assert_eq!(regs.get(&0xC8FC), Some(&(0x9 | 3 << 4)));
    assert_eq!(
        b.vgpu.regs().peek(0x0D84),
        1,
        "forcewake ack rebuilt on restore"
    );
    assert!(b.vgpu.derived().ips_64k);
    assert!(b.vgpu.ppgtts().iter().all(|r| r.ips));

    // The migrated run equals the unmigrated one.
    let (done, full) = continue_from(&sc, &wire, &b, STEPS);
    assert!(done);
    assert_eq!(expected.diff(&full), None);
    assert!(b.run_to_end(1 << 40).unwrap());
    assert_eq!(expected.diff(&Snapshot::of(&b)), None);

    // Sensitivity: without the registers outside the table the restore succeeds, and the run
    // ends in another state.
    let mut dropped = parts.clone();
    let kept: BTreeMap<u32, u32> = regs
        .iter()
        .filter(|(o, _)| mmio::SKL.find(**o).is_some())
        .map(|(o, v)| (*o, *v))
        .collect();
    dropped.records[i].payload = encode_registers(&kept);
    let (done, lost) = continue_from(&sc, &dropped.seal(), &a, STEPS);
    assert!(done, "nothing else changes: the workload still finishes");
    let d = expected
        .diff(&lost)
        .expect("the oracle sees the lost registers");
    assert!(d.contains("registers"), "{d}");

    // Sensitivity: without 0x4080 the destination walks the PPGTT with 4 KiB pages only, and the
    // stores into the 64 KiB page fault.
    let mut no_ips = parts.clone();
    let mut r = regs.clone();
    r.remove(&0x4080);
    no_ips.records[i].payload = encode_registers(&r);
    // The faulting batches never signal completion, so the run does not finish either.
    let (done, lost) = continue_from(&sc, &no_ips.seal(), &a, STEPS);
    assert!(!done || expected.diff(&lost).is_some());
    assert!(expected.diff(&lost).is_some());
}

#[test]
fn every_fence_the_guest_may_use_is_reprogrammed_on_the_destination() {
    let mut sc = Scenario::small(Profile::IDLE, 4, 3).unwrap();
    sc.config.fence_count = 32;
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    // Fence i covers 2 pages of the aperture from page 2·i (valid bit 0, pitch in bits 11:2).
    let base = sc.config.partition.aperture.base().get();
    let fence = |i: u64| {
        let start = base + 2 * 4096 * i;
        (start | 0x40 | 1) | ((start + 4096) << 32)
    };
    for i in [0u64, 4, 17, 31] {
        a.vgpu
            .mmio_write(0x10_0000 + 8 * i as u32, 8, fence(i), &a.mem, &mut a.host)
            .unwrap();
    }
    assert!(a.host.fences[31].is_some());
    let errors = a.vgpu.guest_errors();
    migrate(&mut a, &mut b, &Plan::default()).unwrap();
    for i in 0..32usize {
        let set = [0, 4, 17, 31].contains(&i);
        assert_eq!(b.host.fences[i].is_some(), set, "fence {i}");
        if set {
            // Same pitch and valid bits; addresses translated to the destination's placement.
            let v = b.host.fences[i].unwrap();
            assert_eq!(v & 0xFFF, fence(i as u64) & 0xFFF, "fence {i}");
            assert_eq!((v >> 32) - (v & !0xFFF & 0xFFFF_FFFF), 4096, "fence {i}");
        }
    }
    assert_eq!(
        b.vgpu.guest_errors(),
        errors,
        "replaying unused fences is no guest error"
    );
}

#[test]
fn a_change_of_gamw_eco_dev_rw_ia_re_walks_every_announced_ppgtt() {
    let sc = Scenario::small(Profile::IDLE, 4, 5).unwrap();
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, false).unwrap();
    m.boot().unwrap();
    assert!(m.vgpu.derived().ips_64k);
    assert!(!m.vgpu.ppgtts().is_empty() && m.vgpu.ppgtts().iter().all(|r| r.ips));
    let errors = m.vgpu.guest_errors();
    // The driver's 64 KiB page table is the last guest frame. Point its entry 0 at a frame that
    // is not 64 KiB aligned: a valid 4 KiB entry, an invalid 64 KiB one.
    let frames = m.mem.map().frames();
    let pt64 = m.mem.map().frame_at(frames as usize - 1).unwrap();
    let odd = m.mem.map().frame_at(1).unwrap();
    let entry = (odd.get() << 12) | 0b11;
    m.mem
        .cpu_write(&mut m.cpu_log, pt64, 0, &entry.to_le_bytes())
        .unwrap();
    // 64 KiB pages off: every root follows, the tree walks cleanly with 4 KiB pages.
    m.vgpu
        .mmio_write(0x4080, 4, 0, &m.mem, &mut m.host)
        .unwrap();
    assert!(!m.vgpu.derived().ips_64k);
    assert!(m.vgpu.ppgtts().iter().all(|r| !r.ips));
    assert_eq!(m.vgpu.guest_errors(), errors);
    // On again: the re-walk finds the misaligned 64 KiB entry.
    m.vgpu
        .mmio_write(0x4080, 4, 0xF, &m.mem, &mut m.host)
        .unwrap();
    assert!(m.vgpu.ppgtts().iter().all(|r| r.ips));
    assert_eq!(m.vgpu.guest_errors(), errors + 1);
    // Writing the same setting again changes nothing and re-walks nothing.
    m.vgpu
        .mmio_write(0x4080, 4, 0x1F, &m.mem, &mut m.host)
        .unwrap();
    assert_eq!(m.vgpu.guest_errors(), errors + 1);
    // Some engines only: refused as GVT-g does (64 KiB pages off, a guest error).
    m.vgpu
        .mmio_write(0x4080, 4, 0x3, &m.mem, &mut m.host)
        .unwrap();
    assert!(!m.vgpu.derived().ips_64k);
    assert_eq!(m.vgpu.guest_errors(), errors + 2);
}
