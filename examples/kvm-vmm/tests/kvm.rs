//! The KVM reference embedding, end to end. Every test needs `/dev/kvm` and the
//! `x86_64-unknown-none` target; where either is missing it prints one line and passes.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::indexing_slicing,
    clippy::std_instead_of_core,
    clippy::cast_possible_truncation,
    reason = "tests"
)]

use std::time::Duration;

use kvm_guest::abi;
use kvm_vmm::device::Host;
use kvm_vmm::image::guest_image;
use kvm_vmm::vm::{VcpuEnd, Vm, VmConfig, kvm_usable};
use sim::Profile;

/// How long a guest may take to finish before the test calls it hung: generous, because a CI
/// machine of two cores runs these tests' VMs (vCPU and GPU threads each) side by side with
/// the other tests; a hung guest still fails, after this bound.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// The guest image, or `None` (after printing why) where KVM or the target is missing.
fn setup(test: &str) -> Option<Vec<u8>> {
    if let Err(why) = kvm_usable() {
        eprintln!("{test}: skipped, KVM is not usable here ({why})");
        return None;
    }
    match guest_image() {
        Ok(img) => Some(img),
        Err(e @ kvm_vmm::image::ImageError::TargetMissing) => {
            eprintln!("{test}: skipped, no guest image ({e})");
            None
        }
        // A guest that does not build is a failure, not a reason to skip.
        Err(e) => panic!("{test}: {e}"),
    }
}

fn run_to_end(cfg: VmConfig, image: &[u8]) -> Vm {
    let mut vm = Vm::new(cfg, Some(image), Host::Source).unwrap();
    vm.start().unwrap();
    let end = vm.wait_end(HANG_GUARD).unwrap();
    assert_eq!(end, VcpuEnd::Finished, "console: {}", vm.console());
    vm.wait_gpu_idle().unwrap();
    vm
}

#[test]
fn guest_renders_and_checks_every_frame() {
    let Some(img) = setup("guest_renders_and_checks_every_frame") else {
        return;
    };
    for profile in [
        Profile::IDLE,
        Profile::TWO_D,
        Profile::MEDIA,
        Profile::THREE_D,
    ] {
        let frames = 12;
        let vm = run_to_end(VmConfig::small(profile, frames, 7), &img);
        let r = vm.reports();
        assert_eq!(
            r.first().map(|r| r.kind),
            Some(abi::REPORT_BOOT),
            "{}: {r:?}",
            profile.name
        );
        let ok = r.iter().filter(|r| r.kind == abi::REPORT_FRAME).count();
        assert_eq!(ok as u64, frames, "{}: {r:?}", profile.name);
        assert!(
            r.iter()
                .all(|r| r.kind != abi::REPORT_BAD && r.kind != abi::REPORT_FAIL)
        );
        assert_eq!(r.last().map(|r| r.kind), Some(abi::REPORT_DONE));
        assert_eq!(lock_errors(&vm), 0, "{}", profile.name);
    }
}

fn lock_errors(vm: &Vm) -> u64 {
    let d = kvm_vmm::device::lock(&vm.device);
    d.bad_accesses + u64::from(d.vgpu.guest_errors()) + d.gpu.stats.faults
}

#[test]
fn two_runs_of_the_same_guest_end_in_the_same_state() {
    let Some(img) = setup("two_runs_of_the_same_guest_end_in_the_same_state") else {
        return;
    };
    for profile in [Profile::TWO_D, Profile::THREE_D] {
        let cfg = VmConfig::small(profile, 10, 3);
        let a = run_to_end(cfg, &img).end_state().unwrap();
        let b = run_to_end(cfg, &img).end_state().unwrap();
        assert_eq!(a.diff(&b), None, "{}", profile.name);
        assert!(a.guest_checks_passed(cfg.frames), "{}", profile.name);
    }
}

type Migrated = (
    Result<kvm_vmm::migration::SourceReport, kvm_vmm::migration::MigError>,
    Result<(Vm, kvm_vmm::migration::DestReport), kvm_vmm::migration::MigError>,
);

/// Migrate `src` (running) to a destination in this process over TCP loopback.
fn migrate(src: &mut Vm, opts: kvm_vmm::migration::SourceOptions) -> Migrated {
    migrate_over(src, opts, 1)
}

/// [`migrate`] over `channels` connections (guest RAM striped over them).
fn migrate_over(
    src: &mut Vm,
    opts: kvm_vmm::migration::SourceOptions,
    channels: usize,
) -> Migrated {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let mut r = std::io::BufReader::new(sock.try_clone().unwrap());
        let mut w = std::io::BufWriter::new(sock);
        kvm_vmm::migration::migrate_dest_channels(&mut r, &mut w, Host::Destination, &mut || {
            listener.accept().map(|(s, _)| s)
        })
    });
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    // The page connections, after the main one.
    let extra: Vec<_> = (1..channels)
        .map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            std::io::BufWriter::with_capacity(1 << 20, s)
        })
        .collect();
    let mut r = std::io::BufReader::new(sock.try_clone().unwrap());
    let w = std::io::BufWriter::with_capacity(1 << 20, sock);
    let s = kvm_vmm::migration::migrate_source_channels(src, &mut r, w, extra, opts, &mut |_| {});
    // Closing our end lets a destination still reading see the connection end.
    drop(r);
    (s, dst.join().unwrap())
}

fn finish(vm: &mut Vm) {
    let end = vm.wait_end(HANG_GUARD).unwrap();
    assert_eq!(end, VcpuEnd::Finished, "console: {}", vm.console());
    vm.wait_gpu_idle().unwrap();
}

/// Run `cfg` never migrated, then again migrated over `channels` connections once the guest
/// has made 20 reports, and check that the migrated run ends in the same state. Returns what
/// both ends saw.
fn migrated_equals_never_migrated(
    cfg: VmConfig,
    img: &[u8],
    channels: usize,
) -> (
    kvm_vmm::migration::SourceReport,
    kvm_vmm::migration::DestReport,
) {
    let expected = run_to_end(cfg, img).end_state().unwrap();
    let mut src = Vm::new(cfg, Some(img), Host::Source).unwrap();
    src.start().unwrap();
    // Let the guest get going, then migrate while it renders.
    while src.reports().len() < 20 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (s, d) = migrate_over(
        &mut src,
        kvm_vmm::migration::SourceOptions::default(),
        channels,
    );
    let s = s.unwrap();
    let (mut dst, drep) = d.unwrap();
    let name = cfg.profile.name;
    eprintln!("{name} over {channels}: {s:?}\n{drep:?}");
    assert!(
        s.frames_at_pause < cfg.frames,
        "migrated before the guest ended"
    );
    finish(&mut dst);
    let got = dst.end_state().unwrap();
    assert_eq!(got.diff(&expected), None, "{name} over {channels}");
    assert!(
        got.guest_checks_passed(cfg.frames),
        "{name} over {channels}"
    );
    (s, drep)
}

#[test]
fn a_migrated_vm_ends_equal_to_a_never_migrated_one() {
    let Some(img) = setup("a_migrated_vm_ends_equal_to_a_never_migrated_one") else {
        return;
    };
    for profile in [Profile::MEDIA, Profile::THREE_D] {
        migrated_equals_never_migrated(VmConfig::small(profile, 400, 9), &img, 1);
    }
}

/// Guest RAM striped over 2 and 3 connections, each sent and received by its own thread: the
/// migrated VM ends equal to a never-migrated one, and every connection carried pages.
#[test]
fn a_vm_migrated_over_several_connections_ends_equal_to_a_never_migrated_one() {
    let Some(img) =
        setup("a_vm_migrated_over_several_connections_ends_equal_to_a_never_migrated_one")
    else {
        return;
    };
    for (profile, channels) in [(Profile::THREE_D, 2), (Profile::MEDIA, 3)] {
        let cfg = VmConfig::small(profile, 400, 13);
        let (s, drep) = migrated_equals_never_migrated(cfg, &img, channels);
        assert_eq!(s.channel_bytes.len(), channels);
        assert_eq!(s.channel_bytes.iter().sum::<u64>(), s.total_bytes);
        assert_eq!(drep.channel_pages.len(), channels);
        assert!(drep.channel_pages.iter().all(|p| *p > 0), "{drep:?}");
        let sent: u64 = s.rounds.iter().map(|r| r.pages).sum();
        assert_eq!(drep.pages, sent);
    }
}

/// An extra page connection cut in the middle of the pre-copy, one announcing an index this
/// migration does not have or another's, a corrupt device state or a cancel over two
/// connections: the destination runs no VM, the source cancels and its guest ends exactly as if
/// never migrated.
#[test]
fn a_cut_or_misannounced_page_connection_leaves_the_source_running_unchanged() {
    let Some(img) =
        setup("a_cut_or_misannounced_page_connection_leaves_the_source_running_unchanged")
    else {
        return;
    };
    let cfg = VmConfig::small(Profile::THREE_D, 300, 6);
    let expected = run_to_end(cfg, &img).end_state().unwrap();
    let faults = [
        // The second of three connections drops in round 0.
        (
            kvm_vmm::migration::SourceOptions {
                cut_channel: Some((1, 200_000)),
                ..Default::default()
            },
            3,
        ),
        // The last page connection announces index 2 of a migration of two connections.
        (
            kvm_vmm::migration::SourceOptions {
                join_index: Some(2),
                ..Default::default()
            },
            2,
        ),
        // Two page connections announce index 1.
        (
            kvm_vmm::migration::SourceOptions {
                join_index: Some(1),
                ..Default::default()
            },
            3,
        ),
        // The faults of one connection, with two: a flipped bit of the vGPU's device state,
        (
            kvm_vmm::migration::SourceOptions {
                corrupt_vgpu_at: Some(200),
                ..Default::default()
            },
            2,
        ),
        // and the source cancelling before END.
        (
            kvm_vmm::migration::SourceOptions {
                cancel_at: Some(u64::MAX),
                ..Default::default()
            },
            2,
        ),
    ];
    for (i, (opts, channels)) in faults.into_iter().enumerate() {
        let mut src = Vm::new(cfg, Some(&img), Host::Source).unwrap();
        src.start().unwrap();
        while src.reports().len() < 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (s, d) = migrate_over(&mut src, opts, channels);
        let e = s.unwrap_err();
        let de = d.as_ref().err().cloned();
        eprintln!("fault {i}: source: {e}; destination: {de:?}");
        let de = de.expect("the destination must not run");
        match i {
            // Which side of the destination saw the end first is a matter of scheduling; the
            // source knows which connection was cut.
            0 => assert!(e.0.starts_with("page connection 1: "), "{e}"),
            1 => assert_eq!(
                de.0,
                "a page connection announced index 2; this migration has connections 1 to 1"
            ),
            2 => assert_eq!(de.0, "two page connections announced index 1"),
            3 => assert!(de.0.starts_with("vGPU stream: "), "{de}"),
            _ => assert!(e.0.starts_with("cancelled by the source"), "{e}"),
        }
        assert!(src.running(), "fault {i}: the source runs again");
        finish(&mut src);
        let got = src.end_state().unwrap();
        assert_eq!(got.diff(&expected), None, "fault {i}");
        assert!(got.guest_checks_passed(cfg.frames), "fault {i}");
    }
}

#[test]
fn a_cut_connection_or_a_rejected_stream_leaves_the_source_running_unchanged() {
    let Some(img) =
        setup("a_cut_connection_or_a_rejected_stream_leaves_the_source_running_unchanged")
    else {
        return;
    };
    let cfg = VmConfig::small(Profile::THREE_D, 300, 4);
    let expected = run_to_end(cfg, &img).end_state().unwrap();
    let faults = [
        // The connection drops in the middle of the RAM pre-copy.
        kvm_vmm::migration::SourceOptions {
            cut_after: Some(300_000),
            ..Default::default()
        },
        // A flipped bit in the vGPU's device state: the destination rejects the stream.
        kvm_vmm::migration::SourceOptions {
            corrupt_vgpu_at: Some(200),
            ..Default::default()
        },
        // The source cancels at the end of the stop-and-copy, before END.
        kvm_vmm::migration::SourceOptions {
            cancel_at: Some(u64::MAX),
            ..Default::default()
        },
    ];
    for (i, opts) in faults.into_iter().enumerate() {
        let mut src = Vm::new(cfg, Some(&img), Host::Source).unwrap();
        src.start().unwrap();
        while src.reports().len() < 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (s, d) = migrate(&mut src, opts);
        let e = s.unwrap_err();
        eprintln!(
            "fault {i}: source: {e}; destination: {:?}",
            d.as_ref().err()
        );
        assert!(d.is_err(), "fault {i}: the destination must not run");
        assert!(src.running(), "fault {i}: the source runs again");
        finish(&mut src);
        let got = src.end_state().unwrap();
        assert_eq!(got.diff(&expected), None, "fault {i}");
        assert!(got.guest_checks_passed(cfg.frames), "fault {i}");
    }
}

#[test]
fn the_gpu_dirty_report_covers_every_frame_the_gpu_thread_wrote() {
    use vgpu::traits::CpuDirtyLog as _;
    let Some(img) = setup("the_gpu_dirty_report_covers_every_frame_the_gpu_thread_wrote") else {
        return;
    };
    let cfg = VmConfig::small(Profile::MEDIA, 20, 5);
    let mut vm = Vm::new(cfg, Some(&img), Host::Source).unwrap();
    // From here on, only the GPU thread writes RAM through vm-memory (the vCPU's own writes go
    // straight to the mapping KVM uses): vm-memory's bitmap is an independent record of the
    // GPU's DMA, to check the vGPU's exact GPU dirty log against.
    let mut vmm_log = kvm_vmm::memory::BitmapDirtyLog(vm.ram.clone());
    vmm_log.harvest(&mut |_| {});
    let frames = vm.ram.frames() as usize;
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut cfg_s = vgpu::source::SourceConfig::default();
    cfg_s.memory = vgpu::source::MemoryMode::Report;
    let mut session = {
        let mut d = kvm_vmm::device::lock(&vm.device);
        vgpu::source::SourceSession::open(&mut d.vgpu, &mut (), cfg_s, &mut send, &mut scratch)
            .unwrap()
    };
    vm.start().unwrap();
    finish(&mut vm);
    let access = kvm_vmm::device::DeviceAccess::new(vm.device.clone());
    let mut report = vec![0u64; gmem::words_for(frames)];
    let range = gmem::DmaRange {
        iova: 0,
        length: cfg.ram,
    };
    let n = session
        .dirty_report(&access, range, 4096, &mut report)
        .unwrap();
    let mut written = 0;
    let mut missing = Vec::new();
    vmm_log.harvest(&mut |gfn| {
        written += 1;
        let f = gfn.get() as usize;
        if report[f / 64] & (1 << (f % 64)) == 0 {
            missing.push(f);
        }
    });
    assert!(
        written > 0 && n >= written,
        "GPU wrote {written} frames, report has {n}"
    );
    assert!(
        missing.is_empty(),
        "frames the GPU wrote but the report lacks: {missing:x?}"
    );
    session.cancel(&mut kvm_vmm::device::lock(&vm.device).vgpu);
}

/// Runs of the guest [`an_interrupt_raised_before_the_stop_wakes_the_migrated_guest`] may use to
/// land its stop in the window.
const STOP_ATTEMPTS: usize = 20;

/// Pause `src`'s vCPU at a moment the GPU thread holds a completion's interrupt, the vGPU's
/// interrupt line is up (the guest has not acknowledged it) and the guest sleeps in `hlt` waiting
/// for it; otherwise (the guest saw the completion by polling and went on) let it run on and look
/// again. `false` once the guest has reported all `frames` frames without such a moment.
fn stop_in_the_window(src: &mut Vm, frames: u64) -> bool {
    let ended = |src: &Vm| src.reports().len() as u64 >= frames;
    loop {
        while !src.gpu_interrupt_held() {
            if ended(src) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        assert!(matches!(src.pause().unwrap(), VcpuEnd::Paused(_)));
        let halted = src.save_cpu().unwrap().mp_state.mp_state == kvm_bindings::KVM_MP_STATE_HALTED;
        // A device lock held now is the GPU thread's, waiting to deliver the interrupt it raised
        // (the guest cannot have acknowledged it: that needs the lock).
        let line = match src.device.try_lock() {
            Ok(d) => d.vgpu.derived().irq_line,
            Err(std::sync::TryLockError::WouldBlock) => true,
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("device lock poisoned"),
        };
        if halted && line && src.gpu_interrupt_held() {
            return true;
        }
        if ended(src) {
            return false;
        }
        src.start().unwrap();
    }
}

/// The stop placed where a loaded host once lost an interrupt: the guest halted waiting for
/// its frame's completion, the GPU thread has completed the frame and raised the vGPU's
/// interrupt but not yet delivered it (held there for a long while, as a descheduled thread
/// would be). The migration's stop falls into that window; the interrupt must reach the vCPU
/// state that travels, or the destination guest sleeps forever.
#[test]
fn an_interrupt_raised_before_the_stop_wakes_the_migrated_guest() {
    let Some(img) = setup("an_interrupt_raised_before_the_stop_wakes_the_migrated_guest") else {
        return;
    };
    let cfg = VmConfig::small(Profile::MEDIA, 60, 11);
    let expected = run_to_end(cfg, &img).end_state().unwrap();
    // The window is a matter of scheduling: on a loaded machine a guest may finish before the
    // stop lands in it. Then a fresh VM tries again; every attempt is bounded by the guest's end,
    // so the test cannot spin for ever.
    let mut placed = None;
    for _ in 0..STOP_ATTEMPTS {
        let mut src = Vm::new(cfg, Some(&img), Host::Source).unwrap();
        src.start().unwrap();
        while src.reports().len() < 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every completion the guest waits for stalls the VM this long while it is held (the GPU
        // thread keeps the device lock): ample for the vCPU to reach `hlt`, short enough that a
        // run whose stop missed the window ends in seconds.
        src.delay_gpu_interrupts(Duration::from_millis(500));
        if stop_in_the_window(&mut src, cfg.frames) {
            placed = Some(src);
            break;
        }
    }
    let mut src = placed.unwrap_or_else(|| {
        panic!("the stop did not land in the window in {STOP_ATTEMPTS} runs of the guest")
    });
    let (s, d) = migrate(&mut src, kvm_vmm::migration::SourceOptions::default());
    let s = s.unwrap();
    let (mut dst, drep) = d.unwrap();
    eprintln!("{s:?}\n{drep:?}");
    assert!(s.frames_at_pause < cfg.frames);
    finish(&mut dst);
    let got = dst.end_state().unwrap();
    assert_eq!(got.diff(&expected), None);
    assert!(got.guest_checks_passed(cfg.frames));
}
