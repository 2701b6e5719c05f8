//! The hardware test plan, as data, and a runner generic over the platform it runs on.
//!
//! A *scenario* is one point of the product
//! [`Workload`] × [`Instant`] × [`Placement`] × [`InjectedFault`]: boot a guest running the workload on a
//! source machine, bring it to the migration instant, live-migrate it to a destination whose host
//! placement of graphics memory is the given one, with the fault injected, and check the oracle.
//! Every scenario has a stable name (`3d.elsp-2.split.cut-record`), so a plan can be listed and
//! filtered, and a failure reproduced by name. [`full_plan`] is the whole product (less the
//! combinations that cannot happen, see [`Instant::applies_to`]); [`quick_plan`] is a subset of it
//! in which every workload meets every fault and every instant and placement occurs.
//!
//! The platform is a [`Backend`]: what the runner needs to build machines, run a guest, migrate it
//! with a fault injected and capture the state the oracle compares. The crate implements it for the
//! reference device ([`reference::ReferenceBackend`]); a real GVT-g or SR-IOV
//! backend lives out of tree and implements the same trait (its documentation says, method by
//! method, what such a backend does).
//!
//! The oracle of a scenario:
//! - no fault: the migrated run ends with graphics memory, every register, the GGTT and engine
//!   state equal, byte for byte, to the same run never migrated;
//! - a fault: the injected fault stops the migration, the source keeps running and ends equal to
//!   the never-migrated run, and a retried migration (after the source ran on) succeeds and ends
//!   equal to it too.
//!
//! [`soak`] runs hundreds of consecutive ping-pong migrations (A → B → A → …) while the guest
//! switches workloads between hops, against a never-migrated reference machine that follows the
//! same schedule of workload segments; the oracle is checked after every hop.
//!
//! This module needs an allocator (feature `alloc`): it is test tooling for hosts, not a migration
//! path.
//!
//! ```
//! use vgpu_mig_sim::testplan::{InjectedFault, Workload, full_plan, quick_plan, select};
//!
//! let plan = full_plan();
//! assert!(plan.iter().any(|s| s.workload == Workload::Media && s.fault == InjectedFault::Cancel));
//! // Names are stable and filters are substrings of them (comma-separated alternatives).
//! let cuts = select(&plan, "3d.elsp-1.split.cut");
//! assert_eq!(cuts.len(), 2);
//! assert!(quick_plan().len() < plan.len());
//! ```

pub mod reference;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::Rng;

/// The guest workload of a scenario (the four dirty-behaviour profiles of the performance notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// An idle desktop: a small redraw per frame, content repeating.
    Idle,
    /// 2D: blits and fills, content changing every few frames.
    TwoD,
    /// Media playback: decoded frames and their display copies.
    Media,
    /// 3D rendering: large render targets rewritten every frame, GGTT remaps.
    ThreeD,
}

impl Workload {
    /// Every workload, in plan order.
    pub const ALL: [Workload; 4] = [
        Workload::Idle,
        Workload::TwoD,
        Workload::Media,
        Workload::ThreeD,
    ];

    /// The short name used in scenario names and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::TwoD => "2d",
            Workload::Media => "media",
            Workload::ThreeD => "3d",
        }
    }

    /// Whether the workload remaps GGTT entries while it runs (the idle desktop does not).
    pub const fn remaps_ggtt(self) -> bool {
        !matches!(self, Workload::Idle)
    }
}

/// When the migration starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instant {
    /// After a seeded random number of steps (the seed is the index): anywhere, including between
    /// any two guest accesses.
    Seeded(u8),
    /// Exactly after the guest wrote dword 1, 2 or 3 of the four ELSP dwords of a submission.
    ElspDword(u8),
    /// Exactly between the two 4-byte halves of a guest GGTT entry write.
    GgttHalf,
}

impl Instant {
    /// Every instant, in plan order.
    pub const ALL: [Instant; 6] = [
        Instant::Seeded(0),
        Instant::Seeded(1),
        Instant::ElspDword(1),
        Instant::ElspDword(2),
        Instant::ElspDword(3),
        Instant::GgttHalf,
    ];

    /// Whether the instant is an exact guest-access boundary (the guest is then held still during
    /// pre-copy so the saved state is the state at that boundary).
    pub const fn is_exact(self) -> bool {
        !matches!(self, Instant::Seeded(_))
    }

    /// Whether a run of `w` ever reaches this instant: a GGTT half-write needs a workload that
    /// remaps GGTT entries.
    pub const fn applies_to(self, w: Workload) -> bool {
        match self {
            Instant::GgttHalf => w.remaps_ggtt(),
            _ => true,
        }
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instant::Seeded(k) => write!(f, "seeded-{k}"),
            Instant::ElspDword(k) => write!(f, "elsp-{k}"),
            Instant::GgttHalf => f.write_str("ggtt-half"),
        }
    }
}

/// Where the destination host places the vGPU's graphics memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// At the same host graphics addresses as on the source.
    Same,
    /// Contiguous, at other host addresses.
    Contiguous,
    /// Split: the aperture in two pieces and the hidden range in three, out of address order.
    Split,
}

impl Placement {
    /// Every placement, in plan order.
    pub const ALL: [Placement; 3] = [Placement::Same, Placement::Contiguous, Placement::Split];

    /// The short name used in scenario names and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Placement::Same => "same",
            Placement::Contiguous => "contiguous",
            Placement::Split => "split",
        }
    }
}

/// The fault injected into the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectedFault {
    /// None: the migration completes.
    None,
    /// The connection is cut exactly at a record boundary; then retry.
    CutAtRecord,
    /// The connection is cut at a random byte offset (usually inside a record); then retry.
    CutAtByte,
    /// The migration is cancelled after the source stopped (during the stop-and-copy); then retry.
    Cancel,
    /// The destination is restarted (a new process, a fresh vGPU) after pre-copy round 0; then
    /// retry into the restarted destination.
    DestRestart,
}

impl InjectedFault {
    /// Every fault, in plan order.
    pub const ALL: [InjectedFault; 5] = [
        InjectedFault::None,
        InjectedFault::CutAtRecord,
        InjectedFault::CutAtByte,
        InjectedFault::Cancel,
        InjectedFault::DestRestart,
    ];

    /// The short name used in scenario names and reports.
    pub const fn name(self) -> &'static str {
        match self {
            InjectedFault::None => "none",
            InjectedFault::CutAtRecord => "cut-record",
            InjectedFault::CutAtByte => "cut-byte",
            InjectedFault::Cancel => "cancel",
            InjectedFault::DestRestart => "dest-restart",
        }
    }
}

/// Run sizes: the vGPU, the workload's scale and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// CI-sized: the small test vGPU (512 KiB aperture + 2 MiB hidden), workloads scaled down 128
    /// times, 60 frames.
    Quick,
    /// The full plan: 2 MiB aperture + 14 MiB hidden, workloads scaled down 16 times, 100 frames.
    Full,
}

impl Size {
    /// Frames each scenario's workload renders.
    pub const fn frames(self) -> u64 {
        match self {
            Size::Quick => 60,
            Size::Full => 100,
        }
    }

    /// Frames of one soak segment (the workload changes between segments).
    pub const fn soak_frames(self) -> u64 {
        match self {
            Size::Quick => 24,
            Size::Full => 48,
        }
    }

    /// The range of steps a soak hop's migration start is drawn from (within a segment).
    pub const fn soak_start_range(self) -> u64 {
        match self {
            Size::Quick => 40,
            Size::Full => 80,
        }
    }

    /// The range of steps a seeded instant is drawn from (about the length of a run).
    pub const fn instant_range(self) -> u64 {
        match self {
            Size::Quick => 80,
            Size::Full => 400,
        }
    }
}

/// One scenario of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec {
    /// The guest workload.
    pub workload: Workload,
    /// When the migration starts.
    pub instant: Instant,
    /// Where the destination places graphics memory.
    pub placement: Placement,
    /// The fault injected.
    pub fault: InjectedFault,
}

impl Spec {
    /// The stable name: `workload.instant.placement.fault`.
    pub fn name(&self) -> String {
        format!("{self}")
    }

    /// A seed derived from the name (FNV-1a), so a scenario's random choices do not depend on
    /// which other scenarios run.
    pub fn seed(&self) -> u64 {
        self.name().bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        })
    }

    /// Whether `filter` selects this scenario: empty, or one of its comma-separated alternatives
    /// is a substring of the name.
    pub fn matches(&self, filter: &str) -> bool {
        let name = self.name();
        filter.trim().is_empty()
            || filter
                .split(',')
                .map(str::trim)
                .any(|f| !f.is_empty() && name.contains(f))
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.workload.name(),
            self.instant,
            self.placement.name(),
            self.fault.name()
        )
    }
}

/// The full plan: every workload × instant × placement × fault, less the instants a workload never
/// reaches. The order is stable (faults innermost, then placements, instants, workloads).
pub fn full_plan() -> Vec<Spec> {
    let mut v = Vec::new();
    for workload in Workload::ALL {
        for instant in Instant::ALL {
            if !instant.applies_to(workload) {
                continue;
            }
            for placement in Placement::ALL {
                for fault in InjectedFault::ALL {
                    v.push(Spec {
                        workload,
                        instant,
                        placement,
                        fault,
                    });
                }
            }
        }
    }
    v
}

/// The quick plan (CI): one scenario per workload × fault pair, the instants and placements
/// rotating so that each of them occurs. A subset of [`full_plan`], in its order.
pub fn quick_plan() -> Vec<Spec> {
    let mut v = Vec::new();
    for (a, workload) in Workload::ALL.into_iter().enumerate() {
        for (b, fault) in InjectedFault::ALL.into_iter().enumerate() {
            let instant = (0..Instant::ALL.len())
                .filter_map(|k| Instant::ALL.get((a + b + k) % Instant::ALL.len()))
                .copied()
                .find(|i| i.applies_to(workload));
            let placement = Placement::ALL
                .get((a + 2 * b) % Placement::ALL.len())
                .copied();
            if let (Some(instant), Some(placement)) = (instant, placement) {
                v.push(Spec {
                    workload,
                    instant,
                    placement,
                    fault,
                });
            }
        }
    }
    let full = full_plan();
    v.sort_by_key(|s| full.iter().position(|f| f == s));
    v
}

/// The scenarios of `plan` that `filter` selects (see [`Spec::matches`]).
pub fn select(plan: &[Spec], filter: &str) -> Vec<Spec> {
    plan.iter().filter(|s| s.matches(filter)).copied().collect()
}

/// Which side of a migration a machine is on (it decides the host placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The source host: its own fixed placement.
    Source,
    /// The destination host: the scenario's [`Placement`] relative to the source's.
    Destination,
}

/// What a machine is built for: the run size and the destination's placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// The run size.
    pub size: Size,
    /// The destination's placement.
    pub placement: Placement,
}

/// A workload run: which one, how many frames, which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// The workload.
    pub workload: Workload,
    /// Frames it renders.
    pub frames: u64,
    /// The guest's seed.
    pub seed: u64,
}

/// A point of a guest's run to advance to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// This many steps (100 µs of guest time each on the reference device).
    Steps(u64),
    /// Right after the guest wrote ELSP dword 1, 2 or 3 of a submission.
    ElspDword(u8),
    /// Right after the guest wrote the first half of a GGTT entry.
    GgttHalf,
}

/// Where a fault lands, as a position in the migration stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    /// No fault.
    None,
    /// The connection drops after this many stream bytes reached the destination.
    CutAt(u64),
    /// The source cancels once this many stream bytes were sent.
    CancelAt(u64),
    /// The destination process dies after this many stream bytes (the runner then builds a new
    /// destination machine for the retry).
    RestartAt(u64),
}

/// How one migration is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Guest steps on the source after the migration is opened and before pre-copy starts.
    pub start_steps: u64,
    /// Hold the guest still during pre-copy (exact instants).
    pub freeze_guest: bool,
    /// The fault.
    pub inject: Inject,
    /// The stream id (distinct per hop of a soak).
    pub stream_id: u32,
    /// Modeled link rate, bytes per second, for backends that model time (a real backend uses
    /// its link and ignores this).
    pub link_bytes_per_s: u64,
}

impl Hop {
    /// A fault-free migration starting now over a modeled 10 GbE link.
    pub const fn now() -> Self {
        Self {
            start_steps: 0,
            freeze_guest: false,
            inject: Inject::None,
            stream_id: 1,
            link_bytes_per_s: 1_175_000_000,
        }
    }
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HopResult {
    /// The destination committed and runs (false: the injected fault stopped the migration).
    pub completed: bool,
    /// Stream bytes sent (up to the fault, if one stopped it).
    pub wire_bytes: u64,
    /// Stream bytes after the source stopped (stop-and-copy).
    pub stop_copy_bytes: u64,
    /// Stream bytes of pre-copy round 0 (with the stream header).
    pub first_round_bytes: u64,
    /// Modeled (or measured) downtime, µs.
    pub downtime_us: u64,
    /// Frames the guest had submitted when the source stopped (shows the migration happened
    /// while the workload ran).
    pub frame_at_stop: u64,
    /// Offsets just after each record of the stream (record boundaries), ascending. Empty when
    /// the backend does not see records (a VMM's own stream); a cut at a record boundary then
    /// lands right after the stream header.
    pub record_ends: Vec<u64>,
}

/// Record boundaries of a stream in this crate's wire format (`migstream`): the offset after each
/// record, given the 80-byte stream header and 16-byte record headers whose bytes 4..8 are the
/// payload length. Stops at the first incomplete record.
pub fn record_ends(wire: &[u8]) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut pos = migstream::STREAM_HEADER_LEN;
    while let Some(len) = pos
        .checked_add(4)
        .and_then(|p| wire.get(p..p.checked_add(4)?))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
    {
        let Some(next) = usize::try_from(len)
            .ok()
            .and_then(|l| {
                pos.checked_add(migstream::RECORD_HEADER_LEN)?
                    .checked_add(l)
            })
            .filter(|&n| n <= wire.len())
        else {
            break;
        };
        ends.push(next as u64);
        pos = next;
    }
    ends
}

/// A platform the test plan runs on.
///
/// The runner builds two machines per migration (and a third, never migrated, for the oracle's
/// reference run), boots a guest workload on the source, brings it to an instant, migrates with a
/// fault injected, lets the destination finish and compares [`Backend::State`]s. Everything is
/// driven from one thread; a backend with real devices blocks in its methods as long as it needs.
///
/// This crate implements it for the reference device ([`reference::ReferenceBackend`]); the
/// workspace's KVM reference embedding implements it with real KVM VMs
/// (`kvm_vmm::testplan::KvmBackend`, `cargo xtask hw-test --backend kvm`). A backend on real Intel
/// GPUs is an out-of-tree crate implementing this trait on hosts with one. Each method's documentation says what two kinds of real backend would do:
/// - *GVT-g* (mediated: i915 `gvt` with KVMGT, a vGPU created as an mdev of a GVT type and given
///   to a VM through VFIO). Upstream GVT-g has no migration region; such a backend embeds this
///   crate's sessions in the mediator (or runs a GVT tree carrying the migration patches) and
///   drives the VMM's migration;
/// - *SR-IOV* (a virtual function given to a VM; the VF's device state saved and restored by the
///   PF driver's VFIO migration v2 support, as `xe-vfio-pci` provides for Xe VFs), driven through
///   the VMM's VFIO migration.
///
/// A backend reports what it cannot do as a failed scenario (an `Err`, or `Ok(false)` from
/// [`Backend::advance`]), never by skipping silently.
pub trait Backend {
    /// Per-machine storage (reference device: the vGPU's register file, GGTT and bitmaps).
    type Storage;
    /// One side: a VM with a vGPU on a host.
    type Machine<'s>;
    /// What the oracle compares. The reference device compares everything, byte for byte (guest
    /// memory, all 2 MiB of virtual registers, the guest GGTT, engine and derived state, config
    /// space, PPGTT roots). Real hardware is not deterministic in that sense (timestamps, GPU
    /// scheduling, caches), so a real backend compares what a deterministic workload makes
    /// reproducible: checksums of the workload's output (render targets, decoded frames) and of
    /// its guest memory, computed by an agent in the guest once the workload ended; the guest
    /// GGTT as read through the GGTT window (GVT-g; an SR-IOV VF's GGTT is the PF's), and the
    /// registers the guest driver programs (ring, execlist, interrupt masks), read through BAR0
    /// while the engines are idle.
    type State: PartialEq;
    /// The backend's errors.
    type Error: fmt::Display;

    /// The backend's name, as given to `--backend`.
    fn name(&self) -> &'static str;

    /// Whether the backend can run `spec` as the plan defines it: `Err(why)` when it cannot
    /// produce the scenario's instant, placement or fault exactly (for example an exact instant
    /// on a platform that does not trap the guest's writes). The runner then reports the scenario
    /// as not supported (neither passed nor failed) and runs nothing. The default supports all.
    fn supports(&self, spec: &Spec) -> Result<(), String> {
        let _ = spec;
        Ok(())
    }

    /// Storage for one machine. GVT-g: nothing much (the kernel owns the vGPU); the host's mdev
    /// type and its aperture/hidden sizes are chosen from `setup.size`. SR-IOV: the VF profile.
    fn storage(&self, setup: &Setup) -> Result<Self::Storage, Self::Error>;

    /// Build one machine: a VM with a fresh vGPU. GVT-g: create an mdev of the type for
    /// `setup.size` on the source host or on the destination host, where the destination's host
    /// graphics-memory placement is forced to `setup.placement` (same range, another range, or
    /// split: this needs the host's balloon/allocation hook, or a pre-fragmented host); start a VM
    /// with it. SR-IOV: provision a VF with the profile; the placement is the PF's (LMEM or GGTT
    /// range of the VF).
    fn machine<'s>(
        &self,
        setup: &Setup,
        role: Role,
        storage: &'s mut Self::Storage,
    ) -> Result<Self::Machine<'s>, Self::Error>;

    /// Boot the guest and start `load`. Real backends: boot the guest image, start the workload
    /// binary (idle desktop, 2D blits, media decode, 3D render loop) with the frame count and
    /// seed, so that its output is a deterministic function of them.
    fn boot(&self, m: &mut Self::Machine<'_>, load: &Load) -> Result<(), Self::Error>;

    /// Replace the running workload by `load` (soak): called when the previous one finished.
    /// Real backends: stop the workload binary, start the next one.
    fn switch_workload(&self, m: &mut Self::Machine<'_>, load: &Load) -> Result<(), Self::Error>;

    /// Run the guest to `at`. `Ok(false)`: the instant was never reached. Real backends: steps
    /// are wall-clock slices (sleep); exact instants need the VMM to stop the vCPU on the trapped
    /// MMIO write (GVT-g traps every ELSP and GGTT write, so the mediator can pause the vCPU after
    /// the chosen one; SR-IOV does not trap them, so these instants are not reachable and such a
    /// backend returns `Ok(false)`, which the runner reports as a failure of that scenario).
    fn advance(&self, m: &mut Self::Machine<'_>, at: At) -> Result<bool, Self::Error>;

    /// Run until the workload finished and the GPU is idle. `Ok(false)`: it did not finish in the
    /// backend's bound.
    fn run_to_end(&self, m: &mut Self::Machine<'_>) -> Result<bool, Self::Error>;

    /// Live-migrate `src` (running) into `dst` (fresh) under `hop`, injecting its fault. A fault
    /// that took effect is `Ok` with `completed == false`; the source must then be running again.
    /// Real backends: drive the VFIO migration v2 state machine of both devices (PRE_COPY,
    /// STOP_COPY, RESUMING, RUNNING) over a real connection, through QEMU's migration or this
    /// crate's sessions; a cut closes the socket at the offset, a cancel is QEMU's
    /// `migrate_cancel` (source back to RUNNING), a restart kills the destination VMM.
    fn migrate(
        &self,
        src: &mut Self::Machine<'_>,
        dst: &mut Self::Machine<'_>,
        hop: &Hop,
    ) -> Result<HopResult, Self::Error>;

    /// Make a machine a fresh destination again (after a failed migration into it, or for the next
    /// hop of a soak). Real backends: reset the device (VFIO reset), restart the VM's incoming side.
    fn reset_destination(&self, m: &mut Self::Machine<'_>) -> Result<(), Self::Error>;

    /// Whether the guest on `m` runs (after a failed migration, the source must). Real backends:
    /// the device's VFIO state is RUNNING and the guest's workload makes progress.
    fn running(&self, m: &Self::Machine<'_>) -> bool;

    /// Capture what the oracle compares (see [`Backend::State`]).
    fn state(&self, m: &Self::Machine<'_>) -> Self::State;

    /// Describe the first differences between an expected and an actual state (`None`: equal).
    fn diff(&self, expected: &Self::State, got: &Self::State) -> Option<String>;
}

/// The result of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The scenario.
    pub spec: Spec,
    /// Whether every oracle check held (false when the scenario is not supported).
    pub passed: bool,
    /// Whether the backend supports the scenario ([`Backend::supports`]); when not, nothing ran
    /// and `detail` says why.
    pub supported: bool,
    /// The instant as run (for seeded instants, the step).
    pub instant: String,
    /// What happened (the first failure, or a summary of the checks).
    pub detail: String,
    /// Stream bytes of the successful migration (the retry, for fault scenarios).
    pub wire_bytes: u64,
    /// Its modeled downtime, µs.
    pub downtime_us: u64,
    /// Frames the guest had submitted when that migration's source stopped.
    pub frame_at_stop: u64,
}

/// Runs scenarios of a plan on one backend, caching the never-migrated reference runs (one per
/// workload) and the fault-free stream of each workload and instant (where faults are placed).
pub struct Runner<'b, B: Backend> {
    backend: &'b B,
    size: Size,
    references: Vec<(Workload, B::State)>,
    streams: Vec<((Workload, Instant), HopResult)>,
}

impl<B: Backend> fmt::Debug for Runner<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("backend", &self.backend.name())
            .field("size", &self.size)
            .field("references", &self.references.len())
            .finish()
    }
}

/// A scenario's failure, as text.
type Fail = String;

fn err<E: fmt::Display>(what: &str) -> impl Fn(E) -> Fail + '_ {
    move |e| format!("{what}: {e}")
}

fn check(ok: bool, what: &str) -> Result<(), Fail> {
    if ok { Ok(()) } else { Err(String::from(what)) }
}

impl<'b, B: Backend> Runner<'b, B> {
    /// A runner of `size` scenarios on `backend`.
    pub fn new(backend: &'b B, size: Size) -> Self {
        Self {
            backend,
            size,
            references: Vec::new(),
            streams: Vec::new(),
        }
    }

    /// The load of a scenario: the workload, the size's frame count, a seed per workload.
    pub fn load(&self, w: Workload) -> Load {
        Load {
            workload: w,
            frames: self.size.frames(),
            seed: 11 + w as u64,
        }
    }

    /// Where a scenario's instant is, as the backend is asked to advance: a number of steps, then
    /// (for exact instants) the next exact point. The steps are drawn from the workload and the
    /// instant, so every placement and fault of a workload and instant migrates at the same point.
    pub fn at(&self, spec: &Spec) -> (u64, Option<At>) {
        let k = match spec.instant {
            Instant::Seeded(k) => u64::from(k),
            Instant::ElspDword(k) => 16 + u64::from(k),
            Instant::GgttHalf => 32,
        };
        let mut rng = Rng::new(spec.workload as u64 * 1000 + k + 0x5EED);
        let range = self.size.instant_range();
        match spec.instant {
            Instant::Seeded(_) => (rng.below(range), None),
            Instant::ElspDword(k) => (rng.below(range / 2), Some(At::ElspDword(k))),
            Instant::GgttHalf => (rng.below(range / 2), Some(At::GgttHalf)),
        }
    }

    fn setup(&self, spec: &Spec) -> Setup {
        Setup {
            size: self.size,
            placement: spec.placement,
        }
    }

    /// The never-migrated run's final state for workload `w` (computed once).
    fn reference(&mut self, w: Workload) -> Result<usize, Fail> {
        if let Some(i) = self.references.iter().position(|(x, _)| *x == w) {
            return Ok(i);
        }
        let b = self.backend;
        let setup = Setup {
            size: self.size,
            placement: Placement::Same,
        };
        let mut st = b.storage(&setup).map_err(err("reference storage"))?;
        let mut m = b
            .machine(&setup, Role::Source, &mut st)
            .map_err(err("reference machine"))?;
        b.boot(&mut m, &self.load(w))
            .map_err(err("reference boot"))?;
        let done = b.run_to_end(&mut m).map_err(err("reference run"))?;
        check(done, "the reference run did not finish")?;
        self.references.push((w, b.state(&m)));
        Ok(self.references.len() - 1)
    }

    /// Compare a machine's state with the reference of `w`.
    fn oracle(&mut self, w: Workload, m: &B::Machine<'_>, what: &str) -> Result<(), Fail> {
        let i = self.reference(w)?;
        let got = self.backend.state(m);
        match self.references.get(i) {
            Some((_, expected)) => match self.backend.diff(expected, &got) {
                None => Ok(()),
                Some(d) => Err(format!("{what}: {d}")),
            },
            None => Err(String::from("reference run missing")),
        }
    }

    /// Boot a source, bring it to the scenario's instant and migrate it into a destination with
    /// `inject`; the destination finishes the run when the migration completed. Returns the
    /// result; `finish` runs on both machines afterwards.
    #[allow(
        clippy::type_complexity,
        reason = "a callback over both machines of a migration; an alias would hide the higher-ranked lifetimes"
    )]
    fn migrated_run(
        &mut self,
        spec: &Spec,
        inject: Inject,
        finish: &mut dyn FnMut(
            &mut Self,
            &HopResult,
            &mut B::Machine<'_>,
            &mut B::Machine<'_>,
        ) -> Result<(), Fail>,
    ) -> Result<HopResult, Fail> {
        let b = self.backend;
        let setup = self.setup(spec);
        let mut st_a = b.storage(&setup).map_err(err("storage"))?;
        let mut st_b = b.storage(&setup).map_err(err("storage"))?;
        let mut src = b
            .machine(&setup, Role::Source, &mut st_a)
            .map_err(err("source machine"))?;
        let mut dst = b
            .machine(&setup, Role::Destination, &mut st_b)
            .map_err(err("destination machine"))?;
        b.boot(&mut src, &self.load(spec.workload))
            .map_err(err("boot"))?;
        let (steps, exact) = self.at(spec);
        let reached = b
            .advance(&mut src, At::Steps(steps))
            .map_err(err("advance"))?;
        check(reached, "the guest did not run")?;
        if let Some(at) = exact {
            let reached = b.advance(&mut src, at).map_err(err("advance"))?;
            check(reached, "the instant was never reached")?;
        }
        let hop = Hop {
            freeze_guest: spec.instant.is_exact(),
            inject,
            ..Hop::now()
        };
        let r = b
            .migrate(&mut src, &mut dst, &hop)
            .map_err(err("migrate"))?;
        finish(self, &r, &mut src, &mut dst)?;
        Ok(r)
    }

    /// The fault-free stream of a scenario's workload and instant (where faults are placed).
    fn stream(&mut self, spec: &Spec) -> Result<HopResult, Fail> {
        let key = (spec.workload, spec.instant);
        if let Some((_, r)) = self.streams.iter().find(|(k, _)| *k == key) {
            return Ok(r.clone());
        }
        let free = Spec {
            fault: InjectedFault::None,
            ..*spec
        };
        let r = self.migrated_run(&free, Inject::None, &mut |_, _, _, _| Ok(()))?;
        check(r.completed, "the fault-free migration did not complete")?;
        self.streams.push((key, r.clone()));
        Ok(r)
    }

    /// Where the scenario's fault lands in the stream of `clean` (its fault-free run).
    fn inject(spec: &Spec, clean: &HopResult) -> Inject {
        let mut rng = Rng::new(spec.seed());
        let total = clean.wire_bytes;
        let pick = |rng: &mut Rng, lo: u64, hi: u64| lo + rng.below(hi.saturating_sub(lo).max(1));
        match spec.fault {
            InjectedFault::None => Inject::None,
            InjectedFault::CutAtRecord => {
                // Any boundary but the last (after END the stream is complete).
                let n = clean.record_ends.len().saturating_sub(1) as u64;
                let at = usize::try_from(rng.below(n))
                    .ok()
                    .and_then(|i| clean.record_ends.get(i))
                    .copied()
                    .unwrap_or(migstream::STREAM_HEADER_LEN as u64);
                Inject::CutAt(at)
            }
            InjectedFault::CutAtByte => Inject::CutAt(pick(&mut rng, 1, total)),
            InjectedFault::Cancel => {
                let stop = total - clean.stop_copy_bytes.min(total);
                Inject::CancelAt(pick(&mut rng, stop, total))
            }
            InjectedFault::DestRestart => {
                let from = clean.first_round_bytes.min(total.saturating_sub(1));
                Inject::RestartAt(pick(&mut rng, from, total))
            }
        }
    }

    /// Run one scenario and check its oracle. Backend errors and oracle failures make a failed
    /// outcome, never a panic.
    pub fn run(&mut self, spec: &Spec) -> Outcome {
        let instant = match self.at(spec) {
            (n, None) => format!("step {n}"),
            (n, Some(_)) => format!("{} after step {n}", spec.instant),
        };
        let mut out = Outcome {
            spec: *spec,
            passed: false,
            supported: true,
            instant,
            detail: String::new(),
            wire_bytes: 0,
            downtime_us: 0,
            frame_at_stop: 0,
        };
        if let Err(why) = self.backend.supports(spec) {
            out.supported = false;
            out.detail = format!(
                "not supported by the {} backend: {why}",
                self.backend.name()
            );
            return out;
        }
        let result = if spec.fault == InjectedFault::None {
            self.run_clean(spec)
        } else {
            self.run_fault(spec)
        };
        match result {
            Ok((r, detail)) => {
                out.passed = true;
                out.wire_bytes = r.wire_bytes;
                out.downtime_us = r.downtime_us;
                out.frame_at_stop = r.frame_at_stop;
                out.detail = detail;
            }
            Err(e) => out.detail = e,
        }
        out
    }

    fn run_clean(&mut self, spec: &Spec) -> Result<(HopResult, String), Fail> {
        let w = spec.workload;
        let r = self.migrated_run(spec, Inject::None, &mut |me, r, _, dst| {
            check(r.completed, "the migration did not complete")?;
            let b = me.backend;
            let done = b.run_to_end(dst).map_err(err("destination run"))?;
            check(done, "the destination did not finish the workload")?;
            me.oracle(w, dst, "destination vs never migrated")
        })?;
        self.streams
            .retain(|(k, _)| *k != (spec.workload, spec.instant));
        self.streams
            .push(((spec.workload, spec.instant), r.clone()));
        Ok((r, String::from("destination equals the never-migrated run")))
    }

    fn run_fault(&mut self, spec: &Spec) -> Result<(HopResult, String), Fail> {
        let w = spec.workload;
        let clean = self.stream(spec)?;
        let inject = Self::inject(spec, &clean);
        // The source keeps running after the fault and ends equal to the never-migrated run.
        self.migrated_run(spec, inject, &mut |me, r, src, _| {
            check(!r.completed, "the fault did not stop the migration")?;
            let b = me.backend;
            check(b.running(src), "the source is not running after the fault")?;
            let done = b.run_to_end(src).map_err(err("source run"))?;
            check(done, "the source did not finish after the fault")?;
            me.oracle(w, src, "source after the fault vs never migrated")
        })?;
        // The source runs on, a retry succeeds, and the destination ends equal too.
        let mut retried = HopResult::default();
        let setup = self.setup(spec);
        self.migrated_run(spec, inject, &mut |me, _, src, dst| {
            let b = me.backend;
            let on = b.advance(src, At::Steps(7)).map_err(err("source run"))?;
            check(on, "the source did not run on after the fault")?;
            let hop = Hop {
                start_steps: 3,
                stream_id: 2,
                ..Hop::now()
            };
            let r = if let Inject::RestartAt(_) = inject {
                // A new destination process: new storage, a fresh machine.
                let mut st = b.storage(&setup).map_err(err("storage"))?;
                let mut fresh = b
                    .machine(&setup, Role::Destination, &mut st)
                    .map_err(err("restarted destination"))?;
                let r = b.migrate(src, &mut fresh, &hop).map_err(err("retry"))?;
                check(r.completed, "the retry did not complete")?;
                let done = b.run_to_end(&mut fresh).map_err(err("destination run"))?;
                check(done, "the destination did not finish")?;
                me.oracle(w, &fresh, "destination after the retry vs never migrated")?;
                r
            } else {
                b.reset_destination(dst).map_err(err("reset"))?;
                let r = b.migrate(src, dst, &hop).map_err(err("retry"))?;
                check(r.completed, "the retry did not complete")?;
                let done = b.run_to_end(dst).map_err(err("destination run"))?;
                check(done, "the destination did not finish")?;
                me.oracle(w, dst, "destination after the retry vs never migrated")?;
                r
            };
            retried = r;
            Ok(())
        })?;
        let at = match inject {
            Inject::CutAt(n) | Inject::CancelAt(n) | Inject::RestartAt(n) => n,
            Inject::None => 0,
        };
        Ok((
            retried,
            format!(
                "fault at byte {at} of {}: source ran on to the reference state; retry equals it",
                clean.wire_bytes
            ),
        ))
    }
}

/// One hop of a soak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakHop {
    /// Hop number (0-based).
    pub hop: u32,
    /// The workload of this hop's segment.
    pub workload: Workload,
    /// Stream bytes.
    pub wire_bytes: u64,
    /// Modeled downtime, µs.
    pub downtime_us: u64,
    /// Frames of the segment the guest had submitted when the source stopped.
    pub frame_at_stop: u64,
    /// `None` if the oracle held, else what differed.
    pub failure: Option<String>,
}

/// What a soak did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SoakReport {
    /// Hops migrated and checked.
    pub hops: u32,
    /// Stream bytes in all.
    pub wire_bytes: u64,
    /// The largest modeled downtime of a hop, µs.
    pub max_downtime_us: u64,
    /// Hops per workload, in [`Workload::ALL`] order.
    pub per_workload: [u32; 4],
    /// Hops whose source stopped before its segment's workload had submitted every frame.
    pub mid_workload: u32,
    /// Failures (the soak stops at the first one: states diverge after it).
    pub failures: Vec<String>,
}

/// Ping-pong a guest between two machines `hops` times (A → B → A → …) while it changes workload
/// between hops, checking the oracle after every hop.
///
/// The schedule is a sequence of segments, one per hop: segment `k` runs a workload drawn from
/// `seed` for [`Size::soak_frames`] frames. On the migrating pair, the guest starts segment `k`
/// (the workload switches), runs a seeded number of steps, migrates to the other machine, and
/// finishes the segment there. A third machine, never migrated, follows the same schedule in lock
/// step; when both finished segment `k` their states must be equal. `on_hop` sees each hop.
pub fn soak<B: Backend>(
    backend: &B,
    size: Size,
    hops: u32,
    seed: u64,
    on_hop: &mut dyn FnMut(&SoakHop),
) -> Result<SoakReport, Fail> {
    let b = backend;
    let mut rng = Rng::new(seed);
    let setup_src = Setup {
        size,
        placement: Placement::Same,
    };
    let setup_dst = Setup {
        size,
        placement: Placement::Split,
    };
    let mut st = [
        b.storage(&setup_src).map_err(err("storage"))?,
        b.storage(&setup_dst).map_err(err("storage"))?,
    ];
    let mut st_ref = b.storage(&setup_src).map_err(err("storage"))?;
    let [s0, s1] = &mut st;
    let mut pair = [
        b.machine(&setup_src, Role::Source, s0)
            .map_err(err("machine A"))?,
        b.machine(&setup_dst, Role::Destination, s1)
            .map_err(err("machine B"))?,
    ];
    let mut reference = b
        .machine(&setup_src, Role::Source, &mut st_ref)
        .map_err(err("reference machine"))?;
    let mut report = SoakReport::default();
    for hop in 0..hops {
        let workload = Workload::ALL
            .get(usize::try_from(rng.below(4)).unwrap_or(0))
            .copied()
            .unwrap_or(Workload::Idle);
        let load = Load {
            workload,
            frames: size.soak_frames(),
            seed: rng.next_u64(),
        };
        let (here, there) = match &mut pair {
            [x, y] if hop % 2 == 0 => (x, y),
            [x, y] => (y, x),
        };
        if hop == 0 {
            b.boot(here, &load).map_err(err("boot"))?;
            b.boot(&mut reference, &load)
                .map_err(err("boot reference"))?;
        } else {
            b.switch_workload(here, &load)
                .map_err(err("switch workload"))?;
            b.switch_workload(&mut reference, &load)
                .map_err(err("switch reference workload"))?;
        }
        b.reset_destination(there)
            .map_err(err("reset destination"))?;
        let h = Hop {
            start_steps: rng.below(size.soak_start_range()),
            stream_id: hop,
            ..Hop::now()
        };
        let r = b.migrate(here, there, &h).map_err(err("migrate"))?;
        check(r.completed, "a soak hop did not complete")?;
        let done = b.run_to_end(there).map_err(err("destination run"))?;
        check(done, "the destination did not finish the segment")?;
        let done = b.run_to_end(&mut reference).map_err(err("reference run"))?;
        check(done, "the reference did not finish the segment")?;
        let failure = b
            .diff(&b.state(&reference), &b.state(there))
            .map(|d| format!("hop {hop} ({}): {d}", workload.name()));
        report.hops += 1;
        report.wire_bytes += r.wire_bytes;
        report.max_downtime_us = report.max_downtime_us.max(r.downtime_us);
        if let Some(n) = report.per_workload.get_mut(workload as usize) {
            *n += 1;
        }
        if r.frame_at_stop < load.frames {
            report.mid_workload += 1;
        }
        on_hop(&SoakHop {
            hop,
            workload,
            wire_bytes: r.wire_bytes,
            downtime_us: r.downtime_us,
            frame_at_stop: r.frame_at_stop,
            failure: failure.clone(),
        });
        if let Some(f) = failure {
            report.failures.push(f);
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stable() {
        let plan = full_plan();
        let mut names: Vec<String> = plan.iter().map(Spec::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), plan.len());
        // 4 workloads x 6 instants x 3 placements x 5 faults, less idle x ggtt-half.
        assert_eq!(plan.len(), 4 * 6 * 3 * 5 - 3 * 5);
        assert_eq!(
            plan.first().map(Spec::name).as_deref(),
            Some("idle.seeded-0.same.none")
        );
        assert_eq!(
            plan.last().map(Spec::name).as_deref(),
            Some("3d.ggtt-half.split.dest-restart")
        );
    }

    #[test]
    fn every_dimension_value_is_covered_by_both_plans() {
        for plan in [full_plan(), quick_plan()] {
            for w in Workload::ALL {
                for f in InjectedFault::ALL {
                    assert!(
                        plan.iter().any(|s| s.workload == w && s.fault == f),
                        "{w:?} x {f:?}"
                    );
                }
            }
            for i in Instant::ALL {
                assert!(plan.iter().any(|s| s.instant == i), "{i:?}");
            }
            for p in Placement::ALL {
                assert!(plan.iter().any(|s| s.placement == p), "{p:?}");
            }
            assert!(
                plan.iter()
                    .all(|s| s.instant.applies_to(s.workload) && s.seed() != 0)
            );
        }
    }

    #[test]
    fn the_quick_plan_is_a_subset_of_the_full_plan() {
        let full = full_plan();
        let quick = quick_plan();
        assert_eq!(quick.len(), Workload::ALL.len() * InjectedFault::ALL.len());
        let mut last = None;
        for s in &quick {
            let at = full.iter().position(|f| f == s);
            assert!(at.is_some(), "{s}");
            assert!(at > last, "quick plan in full-plan order");
            last = at;
        }
    }

    #[test]
    fn filters_select_by_substring_with_alternatives() {
        let plan = full_plan();
        assert_eq!(select(&plan, "").len(), plan.len());
        assert_eq!(select(&plan, "  ").len(), plan.len());
        let media = select(&plan, "media.");
        assert_eq!(media.len(), 6 * 3 * 5);
        assert!(media.iter().all(|s| s.workload == Workload::Media));
        let both = select(&plan, "idle.seeded-0.same.none, 3d.elsp-3.split.cancel");
        assert_eq!(
            both.iter().map(Spec::name).collect::<Vec<_>>(),
            ["idle.seeded-0.same.none", "3d.elsp-3.split.cancel"]
        );
        assert!(select(&plan, "no-such-scenario").is_empty());
        assert_eq!(select(&plan, "ggtt-half").len(), 3 * 3 * 5);
    }

    #[test]
    fn record_ends_walk_headers_and_stop_at_a_torn_record() {
        let mut wire = alloc::vec![0u8; migstream::STREAM_HEADER_LEN];
        for len in [0u32, 5, 24] {
            let mut h = [0u8; migstream::RECORD_HEADER_LEN];
            h[4..8].copy_from_slice(&len.to_le_bytes());
            wire.extend_from_slice(&h);
            wire.extend(core::iter::repeat_n(0xAA, len as usize));
        }
        assert_eq!(record_ends(&wire), [96, 117, 157]);
        assert_eq!(record_ends(&wire[..150]), [96, 117]);
        assert!(record_ends(&wire[..20]).is_empty());
    }

    #[test]
    fn faults_land_where_their_kind_says() {
        let clean = HopResult {
            completed: true,
            wire_bytes: 10_000,
            stop_copy_bytes: 3_000,
            first_round_bytes: 4_000,
            downtime_us: 0,
            frame_at_stop: 0,
            record_ends: alloc::vec![96, 500, 4_000, 7_000, 9_000, 10_000],
        };
        for spec in full_plan() {
            match Runner::<reference_free::Nothing>::inject(&spec, &clean) {
                Inject::None => assert_eq!(spec.fault, InjectedFault::None),
                Inject::CutAt(n) if spec.fault == InjectedFault::CutAtRecord => {
                    assert!(clean.record_ends[..5].contains(&n), "{spec}: {n}");
                }
                Inject::CutAt(n) => {
                    assert_eq!(spec.fault, InjectedFault::CutAtByte);
                    assert!((1..10_000).contains(&n));
                }
                Inject::CancelAt(n) => {
                    assert_eq!(spec.fault, InjectedFault::Cancel);
                    assert!((7_000..10_000).contains(&n), "{spec}: {n}");
                }
                Inject::RestartAt(n) => {
                    assert_eq!(spec.fault, InjectedFault::DestRestart);
                    assert!((4_000..10_000).contains(&n), "{spec}: {n}");
                }
            }
        }
    }

    /// A backend type for calling the runner's associated functions in tests without a device.
    mod reference_free {
        pub(super) struct Nothing;
        impl super::Backend for Nothing {
            type Storage = ();
            type Machine<'s> = ();
            type State = ();
            type Error = &'static str;
            fn name(&self) -> &'static str {
                "nothing"
            }
            fn storage(&self, _: &super::Setup) -> Result<(), &'static str> {
                Err("no device")
            }
            fn machine(
                &self,
                _: &super::Setup,
                _: super::Role,
                _: &mut (),
            ) -> Result<(), &'static str> {
                Err("no device")
            }
            fn boot(&self, _: &mut (), _: &super::Load) -> Result<(), &'static str> {
                Err("no device")
            }
            fn switch_workload(&self, _: &mut (), _: &super::Load) -> Result<(), &'static str> {
                Err("no device")
            }
            fn advance(&self, _: &mut (), _: super::At) -> Result<bool, &'static str> {
                Err("no device")
            }
            fn run_to_end(&self, _: &mut ()) -> Result<bool, &'static str> {
                Err("no device")
            }
            fn migrate(
                &self,
                _: &mut (),
                _: &mut (),
                _: &super::Hop,
            ) -> Result<super::HopResult, &'static str> {
                Err("no device")
            }
            fn reset_destination(&self, _: &mut ()) -> Result<(), &'static str> {
                Err("no device")
            }
            fn running(&self, _: &()) -> bool {
                false
            }
            fn state(&self, _: &()) {}
            fn diff(&self, _: &(), _: &()) -> Option<super::String> {
                None
            }
        }
    }

    /// A backend that supports nothing (and would fail everything it ran).
    struct Unsupported;
    impl Backend for Unsupported {
        type Storage = ();
        type Machine<'s> = ();
        type State = ();
        type Error = &'static str;
        fn name(&self) -> &'static str {
            "unsupported"
        }
        fn supports(&self, spec: &Spec) -> Result<(), String> {
            Err(format!("{} cannot be produced here", spec.instant))
        }
        fn storage(&self, s: &Setup) -> Result<(), &'static str> {
            reference_free::Nothing.storage(s)
        }
        fn machine(&self, s: &Setup, r: Role, st: &mut ()) -> Result<(), &'static str> {
            reference_free::Nothing.machine(s, r, st)
        }
        fn boot(&self, m: &mut (), l: &Load) -> Result<(), &'static str> {
            reference_free::Nothing.boot(m, l)
        }
        fn switch_workload(&self, m: &mut (), l: &Load) -> Result<(), &'static str> {
            reference_free::Nothing.switch_workload(m, l)
        }
        fn advance(&self, m: &mut (), a: At) -> Result<bool, &'static str> {
            reference_free::Nothing.advance(m, a)
        }
        fn run_to_end(&self, m: &mut ()) -> Result<bool, &'static str> {
            reference_free::Nothing.run_to_end(m)
        }
        fn migrate(&self, s: &mut (), d: &mut (), h: &Hop) -> Result<HopResult, &'static str> {
            reference_free::Nothing.migrate(s, d, h)
        }
        fn reset_destination(&self, m: &mut ()) -> Result<(), &'static str> {
            reference_free::Nothing.reset_destination(m)
        }
        fn running(&self, _: &()) -> bool {
            false
        }
        fn state(&self, _: &()) {}
        fn diff(&self, _: &(), _: &()) -> Option<String> {
            None
        }
    }

    #[test]
    fn an_unsupported_scenario_is_neither_passed_nor_run() {
        let b = Unsupported;
        let mut r = Runner::new(&b, Size::Quick);
        for spec in quick_plan() {
            let o = r.run(&spec);
            assert!(!o.supported && !o.passed, "{spec}");
            assert_eq!(
                o.detail,
                format!(
                    "not supported by the unsupported backend: {} cannot be produced here",
                    spec.instant
                )
            );
        }
        // The default supports everything: the same plan on a backend without the method runs
        // (and fails, having no device).
        let b = reference_free::Nothing;
        let mut r = Runner::new(&b, Size::Quick);
        for spec in quick_plan() {
            let o = r.run(&spec);
            assert!(
                o.supported && !o.passed && o.detail.contains("no device"),
                "{spec}"
            );
        }
    }

    #[test]
    fn a_backend_error_is_a_failed_outcome_not_a_panic() {
        let b = reference_free::Nothing;
        let mut r = Runner::new(&b, Size::Quick);
        for spec in quick_plan() {
            let o = r.run(&spec);
            assert!(!o.passed);
            assert!(o.detail.contains("no device"), "{}", o.detail);
        }
    }
}
