//! The hardware test plan ([`sim::testplan`]) on this VMM: [`KvmBackend`] implements
//! [`Backend`] with real KVM VMs running the bare-metal guest driver, so the plan's scenarios
//! migrate a real guest over TCP loopback and compare it with a never-migrated KVM run.
//!
//! How each dimension of the plan maps onto the VMM:
//! - *workloads*: the guest renders the profile ([`Profile::IDLE`], [`Profile::TWO_D`],
//!   [`Profile::MEDIA`], [`Profile::THREE_D`]) for the load's frames with its seed, on a
//!   [`VmConfig::small`] VM.
//! - *instants*: a step is progress, not time: `At::Steps(n)` waits until the guest has
//!   reported `n * frames / instant_range` frames (or finished), so a seeded instant is a point
//!   of the guest's progress; where exactly between two guest instructions the vCPU stops is up
//!   to the host's scheduling, which the oracle does not depend on. The exact instants (right
//!   after ELSP dword 1, 2 or 3, between the two halves of a GGTT entry write) are exact: the VMM
//!   sees every MMIO exit, so [`Vm::run_until`] stops the vCPU thread at the exit of that write
//!   (the access emulated and completed in KVM, no further guest instruction run), and the guest
//!   stays paused during pre-copy (`Hop::freeze_guest`) while the GPU thread keeps executing
//!   what was submitted.
//! - *placements*: the destination VM's host places graphics memory as [`Host::Source`] does
//!   (same), contiguous elsewhere ([`Host::Elsewhere`]) or split ([`Host::Destination`]).
//! - *faults*: this VMM's stream is its own (RAM pages, the vGPU's stream, vCPU state); the
//!   backend does not see its records, so a cut "at a record boundary" lands right after the
//!   first bytes the plan names (see [`sim::testplan::HopResult::record_ends`]). Every fault is
//!   the source's connection ending after the fault's byte (`SourceOptions::cancel_at`): a cut
//!   connection, a cancel (the source gives up) and a destination restart (its connection ends;
//!   the runner retries into a fresh destination VM) all leave the destination without a VM and
//!   make the source cancel and run on. The byte comes from the fault-free run of the same
//!   scenario; a real guest's faulted run may send a shorter stream (its dirty rounds differ),
//!   and then the fault lands at the end of the stop-and-copy, before END, the nearest point
//!   that still stops the migration.
//!
//! The oracle compares [`EndState`]s (all guest RAM, the vGPU's device state, the guest's reports)
//! and requires the guest's own checks to pass.

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use sim::Profile;
use sim::testplan::{
    At, Backend, Hop, HopResult, Inject, Load, Placement, Role, Setup, Size, Workload,
};

use crate::device::Host;
use crate::image::{ImageError, guest_image};
use crate::migration::{MigError, SourceOptions, frames_done, migrate_dest_on, migrate_source};
use crate::vm::{EndState, StopAt, VcpuEnd, Vm, VmConfig, kvm_usable};

/// How long a guest may take to finish a run.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// The KVM backend: the guest image, built once.
#[derive(Debug, Clone)]
pub struct KvmBackend {
    image: Vec<u8>,
}

impl KvmBackend {
    /// A backend, or why this host cannot run it (no usable `/dev/kvm`, no
    /// `x86_64-unknown-none` target, or a guest that does not build).
    pub fn new() -> Result<Self, String> {
        kvm_usable().map_err(|why| format!("KVM is not usable here ({why})"))?;
        match guest_image() {
            Ok(image) => Ok(Self { image }),
            Err(e @ ImageError::TargetMissing) => Err(format!("no guest image ({e})")),
            Err(e) => Err(format!("the guest image does not build: {e}")),
        }
    }
}

/// One side of a migration: a VM once booted (source) or received (destination).
#[derive(Debug)]
pub struct KvmMachine {
    host: Host,
    size: Size,
    vm: Option<Vm>,
    load: Option<Load>,
}

/// The errors of the KVM backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmError(pub String);

impl std::fmt::Display for KvmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<crate::vm::VmError> for KvmError {
    fn from(e: crate::vm::VmError) -> Self {
        Self(e.0)
    }
}

impl From<MigError> for KvmError {
    fn from(e: MigError) -> Self {
        Self(e.0)
    }
}

impl From<std::io::Error> for KvmError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

fn profile(w: Workload) -> Profile {
    match w {
        Workload::Idle => Profile::IDLE,
        Workload::TwoD => Profile::TWO_D,
        Workload::Media => Profile::MEDIA,
        Workload::ThreeD => Profile::THREE_D,
    }
}

fn no_vm() -> KvmError {
    KvmError("no VM on this machine".into())
}

impl KvmMachine {
    fn vm(&mut self) -> Result<&mut Vm, KvmError> {
        self.vm.as_mut().ok_or_else(no_vm)
    }
}

/// The byte after which the source's connection fails, if any.
fn fault_byte(inject: Inject) -> Option<u64> {
    match inject {
        Inject::None => None,
        Inject::CutAt(n) | Inject::CancelAt(n) | Inject::RestartAt(n) => Some(n),
    }
}

impl Backend for KvmBackend {
    type Storage = ();
    type Machine<'s> = KvmMachine;
    type State = Result<EndState, String>;
    type Error = KvmError;

    fn name(&self) -> &'static str {
        "kvm"
    }

    fn storage(&self, _: &Setup) -> Result<(), KvmError> {
        Ok(())
    }

    fn machine(&self, setup: &Setup, role: Role, _: &mut ()) -> Result<KvmMachine, KvmError> {
        let host = match (role, setup.placement) {
            (Role::Source, _) | (Role::Destination, Placement::Same) => Host::Source,
            (Role::Destination, Placement::Contiguous) => Host::Elsewhere,
            (Role::Destination, Placement::Split) => Host::Destination,
        };
        Ok(KvmMachine {
            host,
            size: setup.size,
            vm: None,
            load: None,
        })
    }

    fn boot(&self, m: &mut KvmMachine, load: &Load) -> Result<(), KvmError> {
        let cfg = VmConfig::small(profile(load.workload), load.frames, load.seed);
        let mut vm = Vm::new(cfg, Some(&self.image), m.host)?;
        vm.start()?;
        m.vm = Some(vm);
        m.load = Some(*load);
        Ok(())
    }

    fn switch_workload(&self, m: &mut KvmMachine, load: &Load) -> Result<(), KvmError> {
        // The guest runs one workload from boot to its end; a new workload is a new boot.
        m.vm = None;
        self.boot(m, load)
    }

    fn advance(&self, m: &mut KvmMachine, at: At) -> Result<bool, KvmError> {
        let n = match at {
            At::Steps(n) => n,
            At::ElspDword(k @ 1..=3) => {
                return Ok(m.vm()?.run_until(StopAt::ElspDword(k), RUN_BOUND)?);
            }
            At::ElspDword(_) => return Ok(false),
            At::GgttHalf => return Ok(m.vm()?.run_until(StopAt::GgttHalf, RUN_BOUND)?),
        };
        let frames = m.load.map_or(0, |l| l.frames);
        let target = (n.saturating_mul(frames) / m.size.instant_range()).min(frames);
        let vm = m.vm()?;
        let t = std::time::Instant::now();
        while vm.running() && frames_done(vm) < target {
            if t.elapsed() > RUN_BOUND {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(vm.running() || vm.finished())
    }

    fn run_to_end(&self, m: &mut KvmMachine) -> Result<bool, KvmError> {
        let vm = m.vm()?;
        let end = vm.wait_end(RUN_BOUND)?;
        if end != VcpuEnd::Finished {
            return Ok(false);
        }
        vm.wait_gpu_idle()?;
        Ok(true)
    }

    fn migrate(
        &self,
        src: &mut KvmMachine,
        dst: &mut KvmMachine,
        hop: &Hop,
    ) -> Result<HopResult, KvmError> {
        // An exact instant left the vCPU paused at its MMIO exit (`advance`); it stays paused
        // through pre-copy (`hop.freeze_guest`), which the VMM's source does for a paused vCPU.
        let frozen = src
            .vm
            .as_ref()
            .is_some_and(|vm| !vm.running() && !vm.finished());
        if hop.freeze_guest != frozen {
            return Err(KvmError(format!(
                "the guest is {} but the hop asks for it {}",
                if frozen { "paused" } else { "running" },
                if hop.freeze_guest {
                    "held still"
                } else {
                    "running"
                }
            )));
        }
        if hop.start_steps > 0 && !self.advance(src, At::Steps(hop.start_steps))? {
            return Err(KvmError("the source did not run".into()));
        }
        let host = dst.host;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let receiver = std::thread::spawn(move || -> Result<(Vm, u64), KvmError> {
            let (sock, _) = listener.accept()?;
            let mut r = std::io::BufReader::new(sock.try_clone()?);
            let mut w = std::io::BufWriter::new(sock);
            let (vm, rep) = migrate_dest_on(&mut r, &mut w, host)?;
            Ok((vm, rep.downtime_us))
        });
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let mut r = std::io::BufReader::new(sock.try_clone()?);
        let w = std::io::BufWriter::with_capacity(1 << 20, sock);
        let opts = SourceOptions {
            cancel_at: fault_byte(hop.inject),
            ..SourceOptions::default()
        };
        let vm = src.vm()?;
        let s = migrate_source(vm, &mut r, w, opts);
        // Closing our end lets a destination still reading see the connection end.
        drop(r);
        let d = receiver
            .join()
            .map_err(|_| KvmError("the destination thread panicked".into()))?;
        match (s, d) {
            (Ok(s), Ok((vm, downtime_us))) => {
                let precopy: u64 = s
                    .rounds
                    .split_last()
                    .map_or(0, |(_, pre)| pre.iter().map(|r| r.bytes).sum());
                dst.vm = Some(vm);
                dst.load = src.load;
                Ok(HopResult {
                    completed: true,
                    wire_bytes: s.total_bytes,
                    stop_copy_bytes: s.total_bytes.saturating_sub(precopy),
                    first_round_bytes: s.rounds.first().map_or(0, |r| r.bytes),
                    downtime_us,
                    frame_at_stop: s.frames_at_pause,
                    record_ends: Vec::new(),
                })
            }
            (Err(_), Err(_)) if hop.inject != Inject::None => Ok(HopResult {
                completed: false,
                wire_bytes: fault_byte(hop.inject).unwrap_or(0),
                frame_at_stop: frames_done(src.vm()?),
                ..HopResult::default()
            }),
            (s, d) => Err(KvmError(format!(
                "source: {}; destination: {}",
                s.map_or_else(|e| e.0, |_| "completed".into()),
                d.map_or_else(|e| e.0, |_| "running".into())
            ))),
        }
    }

    fn reset_destination(&self, m: &mut KvmMachine) -> Result<(), KvmError> {
        m.vm = None;
        m.load = None;
        Ok(())
    }

    fn running(&self, m: &KvmMachine) -> bool {
        m.vm.as_ref()
            .is_some_and(|vm| vm.running() || vm.finished())
    }

    fn state(&self, m: &KvmMachine) -> Result<EndState, String> {
        let vm = m.vm.as_ref().ok_or("no VM on this machine")?;
        let frames = m.load.map_or(0, |l| l.frames);
        let s = vm.end_state().map_err(|e| e.0)?;
        if !s.guest_checks_passed(frames) {
            let kinds: Vec<u32> = s.reports.iter().map(|r| r.kind).collect();
            let frames_ok = kinds
                .iter()
                .filter(|k| **k == kvm_guest::abi::REPORT_FRAME)
                .count();
            return Err(format!(
                "the guest's own checks failed: {frames_ok} of {frames} frames checked, first \
                 report kinds {:?}, last {:?}, {} reports; console: {:?}",
                kinds.get(..4),
                kinds.last(),
                kinds.len(),
                vm.console()
            ));
        }
        Ok(s)
    }

    fn diff(&self, expected: &Self::State, got: &Self::State) -> Option<String> {
        match (expected, got) {
            (Ok(a), Ok(b)) => a.diff(b),
            (Err(e), _) => Some(format!("expected state: {e}")),
            (_, Err(e)) => Some(e.clone()),
        }
    }
}
