//! `--guest kvm` (the default where `/dev/kvm` is usable): migrate a whole KVM virtual machine,
//! whose bare-metal guest drives the vGPU, between two processes over TCP, with the reference
//! embedding `kvm-vmm` (see `examples/kvm-vmm`).
//!
//! The source process runs the VM until the guest has rendered the first frames, then migrates
//! it ([`kvm_vmm::migration`]: guest RAM pre-copied with KVM's dirty log and the vGPU's GPU dirty
//! report, the vGPU's device state through the library's sessions, the vCPU state; with
//! `--channels N`, guest RAM striped over N connections, each sent and received by its own
//! thread). The
//! destination process (this program with `--listen`, started as a child unless `--connect`)
//! resumes the VM, lets the guest finish its frames, then runs the same guest never migrated and
//! compares guest RAM, the vGPU's device state and the guest's per-frame checksums byte for byte.
//! Its verdict comes back on the same connection: `VERDICT` in the demo's framing ([`wire`]), a
//! [`Verdict`] with the KVM timings ([`KvmVerdict`]: guest-visible downtime from the source's last
//! guest exit to the destination's first guest entry, the destination's resume time from END
//! received to vCPU started).

use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use kvm_vmm::device::Host;
use kvm_vmm::migration::{SourceOptions, migrate_dest_channels, migrate_source_channels};
use kvm_vmm::vm::{VcpuEnd, Vm, VmConfig};

use super::report::{KvmFigures, Outcome, Round};
use super::source::{Progress, spawn_destination};
use super::wire::{self, Kind, KvmVerdict, Verdict};
use super::{Args, START_FRAME, mib, profile};

/// The guest image if KVM and the bare-metal target are usable here: `Ok(Err(why))` where they
/// are not (the model guest runs instead), `Err` when the guest does not build (a failure).
pub(super) fn usable() -> crate::Result<Result<Vec<u8>, String>> {
    if let Err(why) = kvm_vmm::vm::kvm_usable() {
        return Ok(Err(why));
    }
    if !kvm_vmm::image::target_installed() {
        // The set-up a fresh machine needs: the guest's bare-metal target (a rustup component).
        // Where rustup cannot install it, the model guest runs and says why.
        eprintln!("installing the guest's target: rustup target add x86_64-unknown-none");
        let _ = std::process::Command::new("rustup")
            .args(["target", "add", "x86_64-unknown-none"])
            .status();
    }
    match kvm_vmm::image::guest_image() {
        Ok(image) => Ok(Ok(image)),
        Err(e @ kvm_vmm::image::ImageError::TargetMissing) => Ok(Err(e.to_string())),
        Err(e) => Err(e.to_string()),
    }
}

/// The VM the options describe: `--gm` MiB of vGPU (64 MiB aperture, the rest hidden), `--ram`
/// MiB of guest RAM, the workload paced as the model guest's is; `--quick`: the small test VM.
fn config(args: &Args, rate: Option<u64>) -> crate::Result<VmConfig> {
    let prof = profile(&args.workload);
    if args.quick {
        return Ok(VmConfig::small(prof, args.frames.unwrap_or(300), args.seed));
    }
    let frames = args.frames.unwrap_or_else(|| {
        let fps = 1_000_000_000u64.checked_div(prof.frame_ns).unwrap_or(60);
        let bytes = (args.ram << 20) as f64;
        let migrate_s = 2.0 * bytes / rate.unwrap_or(1_000_000_000) as f64 + 1.0;
        START_FRAME + (migrate_s * fps as f64).ceil() as u64
    });
    Ok(VmConfig {
        ram: args.ram << 20,
        aperture: 64 << 20,
        hidden: (args.gm - 64) << 20,
        // The guest needs the same hidden pages as the model's driver: fitted the same way.
        profile: prof.fitted(((args.gm - 64) << 20) / 4096),
        frames,
        seed: args.seed,
    })
}

/// Run the source (and, unless `--connect`, the destination as a child).
pub(super) fn run_source(args: &Args, image: &[u8]) -> crate::Result {
    let t_all = Instant::now();
    let rate = args.link;
    let cfg = config(args, rate)?;
    let (_child, addr) = match &args.connect {
        Some(a) => (None, a.clone()),
        None => {
            let (c, a) = spawn_destination(&["--guest", "kvm"])?;
            (Some(c), a)
        }
    };
    let mut vm = Vm::new(cfg, Some(image), Host::Source).map_err(|e| e.to_string())?;
    if !args.json {
        println!(
            "KVM VM: {} of RAM, vGPU {} + {} ({}), workload {} ({} frames, seed {}); destination at {addr}, {} connection{}",
            mib(cfg.ram),
            mib(cfg.aperture),
            mib(cfg.hidden),
            if args.quick {
                "quick"
            } else {
                "paced as the model guest"
            },
            cfg.profile.name,
            cfg.frames,
            cfg.seed,
            args.channels,
            if args.channels == 1 { "" } else { "s" }
        );
        let named = profile(&args.workload);
        if let Some(note) =
            super::fitted_note(&named, &cfg.profile, cfg.hidden).filter(|_| !args.quick)
        {
            println!("{note}");
        }
    }
    vm.start().map_err(|e| e.to_string())?;
    let start_frame = if args.quick { 20 } else { START_FRAME };
    let t = Instant::now();
    while frames_done(&vm) < start_frame {
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the guest did not reach frame {start_frame}: {}",
                vm.console()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let sock = TcpStream::connect(&addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = sock.set_nodelay(true);
    // `--channels`: the page connections, opened after the main one.
    let extra = (1..args.channels)
        .map(|c| {
            let s = TcpStream::connect(&addr)
                .map_err(|e| format!("connecting page connection {c} to {addr}: {e}"))?;
            let _ = s.set_nodelay(true);
            Ok(BufWriter::with_capacity(1 << 20, s))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    let mut r = BufReader::new(sock.try_clone().map_err(|e| e.to_string())?);
    let w = BufWriter::with_capacity(1 << 20, sock.try_clone().map_err(|e| e.to_string())?);
    let policy = gmem::PolicyConfig {
        downtime_limit_ms: args.downtime_ms,
        ..gmem::PolicyConfig::default()
    };
    let opts = SourceOptions {
        policy,
        rate: rate.unwrap_or(0),
        corrupt_vgpu_at: args.fault_flip_byte,
        ..SourceOptions::default()
    };
    let progress = Progress::new(args.json);
    let res = migrate_source_channels(&mut vm, &mut r, w, extra, opts, &mut |x| {
        progress.line(&format!(
            "round {}: {} pages ({} zero; {} CPU-dirty + {} GPU-dirty frames) in {:.1} ms, {}",
            x.round,
            x.pages,
            x.zero_pages,
            x.cpu_dirty,
            x.gpu_dirty,
            x.elapsed_us as f64 / 1000.0,
            mib(x.bytes)
        ));
    });
    progress.finish();
    let mut o = Outcome::blank(
        cfg.profile.name,
        cfg.aperture + cfg.hidden,
        rate,
        cfg.frames,
        cfg.seed,
    );
    o.guest = "kvm".into();
    o.start_frame = start_frame;
    o.fault_flip_byte = args.fault_flip_byte;
    let rep = match res {
        Ok(rep) => rep,
        Err(e) => {
            // Cancelled: the source VM runs on; it must end exactly as if never migrated.
            drop(sock);
            let end = vm
                .wait_end(Duration::from_secs(600))
                .map_err(|e| e.to_string())?;
            if end != VcpuEnd::Finished {
                return Err(format!(
                    "migration failed ({e}) and the source guest did not finish: {end:?}"
                ));
            }
            vm.wait_gpu_idle().map_err(|e| e.to_string())?;
            let got = vm.end_state().map_err(|e| e.to_string())?;
            let expected = reference(cfg, image)?;
            let verdict = match got.diff(&expected) {
                None if got.guest_checks_passed(cfg.frames) => {
                    "the source continued and its state equals the never-migrated run".to_string()
                }
                None => "the source continued, but the guest's own checks failed".to_string(),
                Some(d) => {
                    format!("the source continued but differs from the never-migrated run: {d}")
                }
            };
            o.verified = verdict.starts_with("the source continued and");
            o.verdict = format!("migration cancelled ({e}); {verdict}");
            o.wall_ms = t_all.elapsed().as_secs_f64() * 1000.0;
            // With fault injection, a cancelled migration whose guest went on unharmed is the
            // expected outcome.
            let result = if o.verified && args.fault_flip_byte.is_some() {
                Ok(())
            } else {
                Err(o.verdict.clone())
            };
            let error = result
                .as_ref()
                .err()
                .map(|e| super::report::JsonError::new("migration", e));
            super::report::print(&o, args.json, &Err("cancelled".into()), error);
            return result;
        }
    };
    let mut buf = Vec::new();
    let verdict = match wire::recv(&mut r, &mut buf)? {
        Kind::Verdict => wire::decode::<Verdict>("verdict", &buf)?,
        Kind::Error => return Err(format!("destination: {}", wire::error_text(&buf))),
        k => return Err(format!("unexpected {k:?} from the destination")),
    };
    let n = rep.rounds.len();
    for (i, x) in rep.rounds.iter().enumerate() {
        let next = rep.rounds.get(i + 1).map_or(0, |y| y.pages);
        o.rounds.push(Round {
            round: x.round,
            pages: x.pages,
            zero_pages: x.zero_pages,
            bytes: x.bytes,
            dirty_left: if i + 1 < n { next } else { 0 },
            end_ms: x.at_us as f64 / 1000.0,
        });
    }
    o.switch_reason = rep.switch.clone().unwrap_or_else(|| "none".into());
    o.predicted_downtime_us = rep.predicted_downtime_us;
    o.stopped_at_frame = rep.frames_at_pause;
    o.precopy_ms = rep
        .rounds
        .iter()
        .rev()
        .nth(1)
        .map_or(0.0, |x| x.at_us as f64 / 1000.0);
    o.stream_bytes = rep.total_bytes;
    o.stop_stream_offset = rep.total_bytes - rep.rounds.last().map_or(0, |x| x.bytes);
    o.socket_bytes = rep.total_bytes;
    o.zero_pages = rep.rounds.iter().map(|x| x.zero_pages).sum();
    o.full_pages = rep.rounds.iter().map(|x| x.pages).sum::<u64>() - o.zero_pages;
    o.saved_bytes = o.zero_pages * 4096;
    let k = verdict
        .kvm
        .ok_or("the destination's verdict has no KVM timings")?;
    o.downtime_ms = k.downtime_us as f64 / 1000.0;
    o.total_ms = rep.total_us as f64 / 1000.0;
    o.verified = verdict.pass;
    o.verdict = verdict.text.clone();
    o.dest_frames = verdict.frames;
    o.dest_verify_ms = verdict.verify_ms;
    o.kvm = Some(KvmFigures {
        ram_mib: cfg.ram >> 20,
        vgpu_state_bytes: rep.vgpu_bytes,
        cpu_state_bytes: rep.cpu_bytes,
        source_stop_copy_ms: rep.stop_copy_us as f64 / 1000.0,
        dest_resume_ms: k.resume_us as f64 / 1000.0,
        end_after_pause_ms: k.end_after_pause_us as f64 / 1000.0,
        mmio_exits_during_precopy: rep.mmio_wait.count,
        mmio_wait_mean_us: rep.mmio_wait.mean_ns as f64 / 1000.0,
        mmio_wait_p99_us: rep.mmio_wait.p99_us,
        mmio_wait_max_us: rep.mmio_wait.max_ns as f64 / 1000.0,
        lock_hold_max_us: rep.max_lock_hold_us,
        gpu_step_hold_max_us: rep.gpu_hold.max_ns as f64 / 1000.0,
        gpu_step_hold_p99_us: rep.gpu_hold.p99_us,
        longest_round_ms: rep.rounds.iter().map(|x| x.elapsed_us).max().unwrap_or(0) as f64
            / 1000.0,
        channel_bytes: rep.channel_bytes.clone(),
    });
    super::report::conclude(&mut o, args, t_all)
}

fn frames_done(vm: &Vm) -> u64 {
    vm.reports()
        .iter()
        .filter(|r| r.kind == kvm_guest::abi::REPORT_FRAME)
        .count() as u64
}

/// The never-migrated run of the same VM.
fn reference(cfg: VmConfig, image: &[u8]) -> crate::Result<kvm_vmm::vm::EndState> {
    let mut vm = Vm::new(cfg, Some(image), Host::Source).map_err(|e| e.to_string())?;
    vm.start().map_err(|e| e.to_string())?;
    let end = vm
        .wait_end(Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    if end != VcpuEnd::Finished {
        return Err(format!(
            "the never-migrated guest did not finish: {end:?} {}",
            vm.console()
        ));
    }
    vm.wait_gpu_idle().map_err(|e| e.to_string())?;
    vm.end_state().map_err(|e| e.to_string())
}

/// Accept one connection on `listener`, or fail with `TimedOut` after `limit`.
fn accept_within(listener: &TcpListener, limit: Duration) -> std::io::Result<TcpStream> {
    let t = Instant::now();
    listener.set_nonblocking(true)?;
    let got = loop {
        match listener.accept() {
            Ok((s, _)) => break Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the source did not open the page connection it announced",
                ));
            }
            Err(e) => break Err(e),
        }
    };
    listener.set_nonblocking(false)?;
    let s = got?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// The destination process: one migrated VM in, run to its end, verified.
pub(super) fn run_dest(addr: &str, child: bool, image: &[u8]) -> crate::Result {
    let listener = TcpListener::bind(addr).map_err(|e| format!("listening at {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if child {
        println!("{}", local.port());
    } else {
        println!("destination (KVM): listening at {local}");
    }
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (sock, _) = listener
        .accept()
        .map_err(|e| format!("accepting a connection: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut r = BufReader::with_capacity(1 << 20, sock.try_clone().map_err(|e| e.to_string())?);
    let mut w = BufWriter::new(sock.try_clone().map_err(|e| e.to_string())?);
    // The source's page connections (as many as its HELLO says) come to the same listener; a
    // source that announces more than it opens is refused after 30 s, not waited for for ever.
    let (mut vm, rep) = migrate_dest_channels(&mut r, &mut w, Host::Destination, &mut || {
        accept_within(&listener, Duration::from_secs(30))
    })
    .map_err(|e| format!("destination: {e}"))?;
    let resumed_at = frames_done(&vm);
    let t = Instant::now();
    let cfg = vm.cfg;
    let end = vm
        .wait_end(Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    let kvm = Some(KvmVerdict {
        downtime_us: rep.downtime_us,
        resume_us: rep.resume_us,
        end_after_pause_us: rep.end_after_pause_us,
    });
    let verdict = if end == VcpuEnd::Finished {
        vm.wait_gpu_idle().map_err(|e| e.to_string())?;
        let got = vm.end_state().map_err(|e| e.to_string())?;
        drop(vm);
        let expected = reference(cfg, image)?;
        let (pass, text) = match got.diff(&expected) {
            None if got.guest_checks_passed(cfg.frames) => (
                true,
                "guest RAM, vGPU device state and the guest's per-frame checksums equal; every frame passed the guest's own check".into(),
            ),
            other => (
                false,
                other.unwrap_or_else(|| "the guest's own checks failed".into()),
            ),
        };
        Verdict {
            pass,
            frames: cfg.frames - resumed_at,
            verify_ms: t.elapsed().as_millis() as u64,
            text,
            kvm,
            stop: None,
        }
    } else {
        Verdict {
            pass: false,
            frames: 0,
            verify_ms: 0,
            text: format!("the migrated guest did not finish: {end:?}"),
            kvm,
            stop: None,
        }
    };
    wire::send_msg(&mut w, Kind::Verdict, &verdict)?;
    w.flush().map_err(|e| e.to_string())
}
