//! The test plan's [`Backend`] for the reference device (this crate): machines are
//! [`Machine`]s built from a [`Scenario`], migrations are [`scenario::migrate`], the oracle state is
//! a full [`Snapshot`].
//!
//! How the faults map onto the reference device: a cut, a cancel and a destination restart all
//! stop the stream after a given byte count through [`Plan::cut_at`], whose source side is
//! [`vgpu::source::SourceSession::cancel`] (the device goes back to running, unquiesced if it was
//! stopped). They differ in where the runner places them (a record boundary, any byte, the
//! stop-and-copy, after round 0) and in what happens to the destination before the retry (reset, or
//! rebuilt from new storage). A cancel that the source initiates while the destination is still
//! consuming would need a cancel hook in [`scenario::migrate`]; the source-side effect is the same
//! call.
//!
//! ```
//! use vgpu_mig_sim::testplan::{Runner, Size, quick_plan, reference::ReferenceBackend};
//!
//! let backend = ReferenceBackend;
//! let mut runner = Runner::new(&backend, Size::Quick);
//! let spec = quick_plan()[0];
//! let outcome = runner.run(&spec);
//! assert!(outcome.passed, "{}: {}", spec, outcome.detail);
//! ```

use alloc::string::String;
use core::fmt;

use gtt::{GmAddr, GmRange, HostPlacement};

use super::{At, Backend, Hop, HopResult, Inject, Load, Placement, Role, Setup, Size, Workload};
use crate::scenario::{self, Plan, Scenario, Snapshot, host_consistent};
use crate::{GuestDriver, Machine, MachineStorage, Profile};
use vgpu::error::VgpuError;
use vgpu::fsm::MigState;

/// The reference device as a test-plan backend (`--backend reference`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceBackend;

/// Storage of one reference machine: its scenario (vGPU type, memory map, placements) and the
/// vGPU's storage.
#[derive(Debug)]
pub struct ReferenceStorage {
    scenario: Scenario,
    storage: MachineStorage,
}

/// A reference machine and the size its workloads are scaled to.
#[derive(Debug)]
pub struct ReferenceMachine<'s> {
    /// The machine.
    pub machine: Machine<'s>,
    size: Size,
}

/// Errors of the reference backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceError {
    /// The vGPU or the reference device failed.
    Vgpu(VgpuError),
    /// After a migration, a present guest GGTT entry is not shadowed at its host index (the guest
    /// index).
    HostShadow(u32),
}

impl From<VgpuError> for ReferenceError {
    fn from(e: VgpuError) -> Self {
        Self::Vgpu(e)
    }
}

impl From<gtt::GttError> for ReferenceError {
    fn from(e: gtt::GttError) -> Self {
        Self::Vgpu(VgpuError::from(e))
    }
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vgpu(e) => write!(f, "{e}"),
            Self::HostShadow(i) => write!(f, "guest GGTT entry {i} not shadowed on the host"),
        }
    }
}

/// The workload profile at a run size: scaled to the vGPU, unpaced.
pub fn profile(size: Size, w: Workload) -> Profile {
    let p = match w {
        Workload::Idle => Profile::IDLE,
        Workload::TwoD => Profile::TWO_D,
        Workload::Media => Profile::MEDIA,
        Workload::ThreeD => Profile::THREE_D,
    };
    match size {
        Size::Quick => p.scaled_down(128).unpaced(),
        Size::Full => p.scaled_down(8).unpaced(),
    }
}

/// The scenario (vGPU type, memory map, both placements) of a setup.
pub fn scenario(setup: &Setup) -> Result<Scenario, ReferenceError> {
    let p = profile(setup.size, Workload::Idle);
    let mut sc = match setup.size {
        Size::Quick => Scenario::small(Profile::IDLE, 1, 0)?,
        Size::Full => Scenario::new(4 << 20, 28 << 20, p, 1, 0)?,
    };
    let part = sc.config.partition;
    sc.dst_placement = match setup.placement {
        Placement::Same => sc.src_placement.clone(),
        Placement::Contiguous => {
            HostPlacement::contiguous(&part, GmAddr::new(0x0400_0000), GmAddr::new(0x7000_0000))?
        }
        Placement::Split => {
            let a = part.aperture.size();
            let h = part.hidden.size();
            let half = (a / 2) & !0xFFF;
            let third = (h / 3) & !0xFFF;
            HostPlacement::split(
                &part,
                &[
                    GmRange::new(GmAddr::new(0x0900_0000), a - half)?,
                    GmRange::new(GmAddr::new(0x0700_0000), half)?,
                ],
                &[
                    GmRange::new(GmAddr::new(0x9000_0000), third)?,
                    GmRange::new(GmAddr::new(0x5000_0000), third)?,
                    GmRange::new(GmAddr::new(0xB000_0000), h - 2 * third)?,
                ],
            )?
        }
    };
    Ok(sc)
}

/// Steps after which an exact instant counts as never reached.
const MAX_STEPS: u64 = 1 << 22;

impl ReferenceBackend {
    fn start(m: &mut ReferenceMachine<'_>, load: &Load) -> Result<(), ReferenceError> {
        // Booting a new driver is a driver reload in the guest: it remaps the GGTT, rewrites the
        // context image and the ring registers, and starts the workload from its frame 0.
        m.machine.driver = GuestDriver::new(profile(m.size, load.workload), load.frames, load.seed);
        m.machine.boot()?;
        Ok(())
    }
}

impl Backend for ReferenceBackend {
    type Storage = ReferenceStorage;
    type Machine<'s> = ReferenceMachine<'s>;
    type State = Snapshot;
    type Error = ReferenceError;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn storage(&self, setup: &Setup) -> Result<ReferenceStorage, ReferenceError> {
        let scenario = scenario(setup)?;
        let storage = scenario.storage();
        Ok(ReferenceStorage { scenario, storage })
    }

    fn machine<'s>(
        &self,
        setup: &Setup,
        role: Role,
        storage: &'s mut ReferenceStorage,
    ) -> Result<ReferenceMachine<'s>, ReferenceError> {
        let ReferenceStorage { scenario, storage } = storage;
        let machine = scenario.machine(storage, role == Role::Destination)?;
        Ok(ReferenceMachine {
            machine,
            size: setup.size,
        })
    }

    fn boot(&self, m: &mut ReferenceMachine<'_>, load: &Load) -> Result<(), ReferenceError> {
        Self::start(m, load)
    }

    fn switch_workload(
        &self,
        m: &mut ReferenceMachine<'_>,
        load: &Load,
    ) -> Result<(), ReferenceError> {
        Self::start(m, load)
    }

    fn advance(&self, m: &mut ReferenceMachine<'_>, at: At) -> Result<bool, ReferenceError> {
        let m = &mut m.machine;
        let probe: fn(&Machine<'_>) -> bool = match at {
            At::Steps(n) => {
                for _ in 0..n {
                    m.step()?;
                }
                return Ok(true);
            }
            At::ElspDword(1) => |m| elsp_index(m) == Some(1),
            At::ElspDword(2) => |m| elsp_index(m) == Some(2),
            At::ElspDword(3) => |m| elsp_index(m) == Some(3),
            At::ElspDword(_) => return Ok(false),
            At::GgttHalf => |m| !m.vgpu.ggtt().pending_halves().is_empty(),
        };
        // One guest access per step, so the run stops right after the access of interest.
        m.actions_per_step = 1;
        m.commands_per_step = 3;
        for _ in 0..MAX_STEPS {
            if probe(m) {
                return Ok(true);
            }
            if m.idle() {
                return Ok(false);
            }
            m.step()?;
        }
        Ok(false)
    }

    fn run_to_end(&self, m: &mut ReferenceMachine<'_>) -> Result<bool, ReferenceError> {
        Ok(m.machine.run_to_end(MAX_STEPS)?)
    }

    fn migrate(
        &self,
        src: &mut ReferenceMachine<'_>,
        dst: &mut ReferenceMachine<'_>,
        hop: &Hop,
    ) -> Result<HopResult, ReferenceError> {
        let mut plan = Plan {
            start_step: hop.start_steps,
            freeze_guest: hop.freeze_guest,
            link_bytes_per_s: hop.link_bytes_per_s,
            ..Plan::default()
        };
        plan.source.stream_id = u64::from(hop.stream_id);
        plan.cut_at = match hop.inject {
            Inject::None => None,
            Inject::CutAt(n) | Inject::CancelAt(n) | Inject::RestartAt(n) => Some(n),
        };
        match scenario::migrate(&mut src.machine, &mut dst.machine, &plan) {
            Ok(r) => {
                host_consistent(&dst.machine).map_err(ReferenceError::HostShadow)?;
                let first = r.rounds.first().map_or(0, |x| x.bytes);
                Ok(HopResult {
                    completed: true,
                    wire_bytes: r.wire_bytes,
                    stop_copy_bytes: r.stop_copy_bytes,
                    first_round_bytes: first + migstream::STREAM_HEADER_LEN as u64,
                    downtime_us: r.downtime_us,
                    frame_at_stop: r.stopped_at_frame,
                    record_ends: super::record_ends(&r.wire),
                })
            }
            Err(VgpuError::Truncated) if plan.cut_at.is_some() => Ok(HopResult {
                completed: false,
                wire_bytes: plan.cut_at.unwrap_or(0),
                ..HopResult::default()
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn reset_destination(&self, m: &mut ReferenceMachine<'_>) -> Result<(), ReferenceError> {
        Ok(m.machine.reset_for_restore()?)
    }

    fn running(&self, m: &ReferenceMachine<'_>) -> bool {
        m.machine.vgpu.state() == MigState::Running
    }

    fn state(&self, m: &ReferenceMachine<'_>) -> Snapshot {
        Snapshot::of(&m.machine)
    }

    fn diff(&self, expected: &Snapshot, got: &Snapshot) -> Option<String> {
        expected.diff(got)
    }
}

fn elsp_index(m: &Machine<'_>) -> Option<u8> {
    m.vgpu
        .engines()
        .engine(engines::EngineId::Rcs)
        .map(|e| e.elsp.index())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testplan::{InjectedFault, Instant, Runner, Spec, soak};

    /// A few scenarios through the whole runner: a clean one, one of each fault, exact instants.
    #[test]
    fn the_runner_passes_scenarios_of_every_fault_on_the_reference_device() {
        let b = ReferenceBackend;
        let mut r = Runner::new(&b, Size::Quick);
        let specs = [
            (
                Workload::ThreeD,
                Instant::Seeded(0),
                Placement::Split,
                InjectedFault::None,
            ),
            (
                Workload::TwoD,
                Instant::GgttHalf,
                Placement::Same,
                InjectedFault::CutAtRecord,
            ),
            (
                Workload::Media,
                Instant::Seeded(1),
                Placement::Contiguous,
                InjectedFault::CutAtByte,
            ),
            (
                Workload::Idle,
                Instant::ElspDword(2),
                Placement::Split,
                InjectedFault::Cancel,
            ),
            (
                Workload::ThreeD,
                Instant::ElspDword(3),
                Placement::Same,
                InjectedFault::DestRestart,
            ),
        ];
        for (workload, instant, placement, fault) in specs {
            let spec = Spec {
                workload,
                instant,
                placement,
                fault,
            };
            let o = r.run(&spec);
            assert!(o.passed, "{spec}: {}", o.detail);
            assert!(o.wire_bytes > 0, "{spec}");
        }
    }

    /// Record boundaries of a real stream tile it exactly, and a cut at a record boundary lands on
    /// one of them, inside the stream.
    #[test]
    fn record_cuts_land_on_boundaries_of_the_real_stream() {
        let b = ReferenceBackend;
        let mut r = Runner::new(&b, Size::Quick);
        let spec = Spec {
            workload: Workload::ThreeD,
            instant: Instant::Seeded(1),
            placement: Placement::Split,
            fault: InjectedFault::CutAtRecord,
        };
        let clean = r.stream(&spec).unwrap();
        let ends = &clean.record_ends;
        assert!(ends.len() > 10, "{}", ends.len());
        assert!(ends.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ends.last(), Some(&clean.wire_bytes));
        assert!(clean.stop_copy_bytes > 0 && clean.first_round_bytes < clean.wire_bytes);
        match Runner::<ReferenceBackend>::inject(&spec, &clean) {
            super::super::Inject::CutAt(n) => {
                assert!(ends.contains(&n) && n < clean.wire_bytes, "{n}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The oracle is not vacuous through the runner: a reference that differs fails the scenario.
    #[test]
    fn a_wrong_reference_fails_the_scenario() {
        struct Skewed(ReferenceBackend);
        impl Backend for Skewed {
            type Storage = ReferenceStorage;
            type Machine<'s> = ReferenceMachine<'s>;
            type State = Snapshot;
            type Error = ReferenceError;
            fn name(&self) -> &'static str {
                "skewed"
            }
            fn storage(&self, s: &Setup) -> Result<ReferenceStorage, ReferenceError> {
                self.0.storage(s)
            }
            fn machine<'s>(
                &self,
                s: &Setup,
                r: Role,
                st: &'s mut ReferenceStorage,
            ) -> Result<ReferenceMachine<'s>, ReferenceError> {
                self.0.machine(s, r, st)
            }
            fn boot(&self, m: &mut ReferenceMachine<'_>, l: &Load) -> Result<(), ReferenceError> {
                self.0.boot(m, l)
            }
            fn switch_workload(
                &self,
                m: &mut ReferenceMachine<'_>,
                l: &Load,
            ) -> Result<(), ReferenceError> {
                self.0.switch_workload(m, l)
            }
            fn advance(
                &self,
                m: &mut ReferenceMachine<'_>,
                at: At,
            ) -> Result<bool, ReferenceError> {
                self.0.advance(m, at)
            }
            fn run_to_end(&self, m: &mut ReferenceMachine<'_>) -> Result<bool, ReferenceError> {
                self.0.run_to_end(m)
            }
            fn migrate(
                &self,
                s: &mut ReferenceMachine<'_>,
                d: &mut ReferenceMachine<'_>,
                h: &Hop,
            ) -> Result<HopResult, ReferenceError> {
                let r = self.0.migrate(s, d, h)?;
                // A lost guest byte on the destination.
                if r.completed {
                    let log = &mut d.machine.cpu_log;
                    let gfn = d.machine.mem.map().frame_at(3).unwrap();
                    d.machine.mem.cpu_write(log, gfn, 100, &[0x5A]).unwrap();
                }
                Ok(r)
            }
            fn reset_destination(
                &self,
                m: &mut ReferenceMachine<'_>,
            ) -> Result<(), ReferenceError> {
                self.0.reset_destination(m)
            }
            fn running(&self, m: &ReferenceMachine<'_>) -> bool {
                self.0.running(m)
            }
            fn state(&self, m: &ReferenceMachine<'_>) -> Snapshot {
                self.0.state(m)
            }
            fn diff(&self, e: &Snapshot, g: &Snapshot) -> Option<String> {
                self.0.diff(e, g)
            }
        }
        let b = Skewed(ReferenceBackend);
        let mut r = Runner::new(&b, Size::Quick);
        let spec = Spec {
            workload: Workload::Media,
            instant: Instant::Seeded(0),
            placement: Placement::Contiguous,
            fault: InjectedFault::None,
        };
        let o = r.run(&spec);
        assert!(!o.passed);
        assert!(o.detail.contains("guest pages differ"), "{}", o.detail);
        let mut hops = 0;
        let s = soak(&b, Size::Quick, 5, 1, &mut |_| hops += 1).unwrap();
        assert_eq!((s.hops, hops, s.failures.len()), (1, 1, 1), "{s:?}");
    }

    /// A short soak: every hop's oracle holds while the workload changes between hops.
    #[test]
    fn a_short_soak_passes_with_changing_workloads() {
        let mut seen = alloc::vec::Vec::new();
        let r = soak(&ReferenceBackend, Size::Quick, 10, 3, &mut |h| {
            seen.push(h.workload);
        })
        .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!(r.hops, 10);
        assert_eq!(seen.len(), 10);
        assert!(
            seen.windows(2).any(|w| w[0] != w[1]),
            "the workload changes between hops: {seen:?}"
        );
        assert!(r.wire_bytes > 0);
        assert!(r.mid_workload > 0, "{r:?}");
    }

    /// A workload switch (a driver reload in the guest) renders the new workload's frames on the
    /// GPU without faults or guest errors, after any previous workload.
    #[test]
    fn switching_workloads_renders_every_segment() {
        let b = ReferenceBackend;
        let setup = Setup {
            size: Size::Quick,
            placement: Placement::Same,
        };
        let mut st = b.storage(&setup).unwrap();
        let mut m = b.machine(&setup, Role::Source, &mut st).unwrap();
        let mut workloads_before = 0;
        for (k, w) in [
            Workload::ThreeD,
            Workload::Idle,
            Workload::TwoD,
            Workload::Media,
        ]
        .into_iter()
        .enumerate()
        {
            let load = Load {
                workload: w,
                frames: 6,
                seed: 40 + k as u64,
            };
            if k == 0 {
                b.boot(&mut m, &load).unwrap();
            } else {
                b.switch_workload(&mut m, &load).unwrap();
            }
            assert!(b.run_to_end(&mut m).unwrap(), "{w:?}");
            let stats = m.machine.gpu.stats;
            assert_eq!(m.machine.driver.frames_submitted(), 6, "{w:?}");
            assert!(stats.workloads >= workloads_before + 6, "{w:?}: {stats:?}");
            assert_eq!(stats.faults, 0, "{w:?}: {stats:?}");
            assert_eq!(m.machine.vgpu.guest_errors(), 0, "{w:?}");
            workloads_before = stats.workloads;
        }
    }

    #[test]
    fn placements_build_for_both_sizes() {
        for size in [Size::Quick, Size::Full] {
            for placement in Placement::ALL {
                let sc = scenario(&Setup { size, placement }).unwrap();
                assert_eq!(
                    sc.dst_placement == sc.src_placement,
                    placement == Placement::Same
                );
            }
        }
    }
}
