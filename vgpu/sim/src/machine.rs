//! A whole reference platform: vGPU, guest memory, host GGTT, GPU and guest driver, stepped together.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use core::sync::atomic::AtomicU64;

use engines::{EngineMask, MAX_WEIGHT, PRIORITY_NS, Scheduler};
use gmem::GuestMemoryMap;
use gtt::HostPlacement;

use super::driver::{Guest, GuestDriver};
use super::gpu::RefGpu;
use super::memory::{SimCpuLog, SimHost, SimMemory};
use vgpu::error::VgpuError;
use vgpu::instance::{CONFIG_SPACE_SIZE, Vgpu, VgpuConfig, VgpuStorage};

/// Heap storage for one vGPU of the reference platform (embedders without an allocator use statics).
#[derive(Debug)]
pub struct MachineStorage {
    config_space: Box<[u8; CONFIG_SPACE_SIZE]>,
    vregs: Vec<u32>,
    ggtt: Vec<u64>,
    gpu_dirty: Vec<AtomicU64>,
}

impl MachineStorage {
    /// Storage sized for `config` over `map`.
    pub fn new(config: &VgpuConfig, map: &GuestMemoryMap) -> Self {
        let frames = usize::try_from(map.frames()).unwrap_or(0);
        Self {
            config_space: Box::new([0; CONFIG_SPACE_SIZE]),
            vregs: vec![0; mmio::MMIO_DWORDS],
            ggtt: vec![0; config.ggtt_storage_len()],
            gpu_dirty: (0..vgpu::tracking::GpuDirtyLog::storage_words(frames))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Borrow it as vGPU storage.
    pub fn storage(&mut self) -> VgpuStorage<'_> {
        VgpuStorage {
            config_space: &mut self.config_space,
            vregs: &mut self.vregs,
            ggtt: &mut self.ggtt,
            gpu_dirty: &self.gpu_dirty,
        }
    }
}

/// The reference platform: everything a migration test or demo needs on one side.
#[derive(Debug)]
pub struct Machine<'a> {
    /// The vGPU.
    pub vgpu: Vgpu<'a>,
    /// Guest memory.
    pub mem: SimMemory,
    /// The log of guest CPU writes.
    pub cpu_log: SimCpuLog,
    /// The host GGTT.
    pub host: SimHost,
    /// The software GPU.
    pub gpu: RefGpu,
    /// The guest's driver.
    pub driver: GuestDriver,
    /// Modeled time, nanoseconds.
    pub clock_ns: u64,
    /// Guest actions per step.
    pub actions_per_step: u32,
    /// GPU commands per engine per step.
    pub commands_per_step: u32,
    /// GPU auto-converge's lever, while a throttle is set ([`Machine::set_engine_throttle`]).
    throttle: Option<EngineThrottle>,
    /// Modeled time the GPU ran, and time it was held back by a throttle, ns.
    engine_time: EngineTime,
}

/// How the GPU's time was spent (see [`Machine::engine_time`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineTime {
    /// Steps in which the engines ran, in ns of modeled time.
    pub ran_ns: u64,
    /// Steps in which a throttle gave the engines' slice to the host instead, ns.
    pub throttled_ns: u64,
}

/// The time-sliced scheduler of `engines` as the throttle: slot 0 is this vGPU, slot 1 the
/// host's reserve (always busy), with weights whose ratio is the vGPU's share.
#[derive(Debug, Clone)]
struct EngineThrottle {
    sched: Scheduler<2>,
    percent: u8,
    /// The vGPU's share the weights give, in per mille.
    share_permille: u32,
    /// The machine's clock when this setting began (the scheduler's clock is `PRIORITY_NS`
    /// then).
    origin: u64,
    next_tick: u64,
    vgpu_runs: bool,
}

/// Weights `(vgpu, host)` in `1..=MAX_WEIGHT` whose share `vgpu / (vgpu + host)` is closest to
/// `100 - percent` %.
fn throttle_weights(percent: u8) -> (u8, u8) {
    let want = 100 - u32::from(percent.min(99));
    let mut best = (MAX_WEIGHT, 1u8);
    let mut best_err = u32::MAX;
    for v in 1..=MAX_WEIGHT {
        for h in 1..=MAX_WEIGHT {
            let share = u32::from(v) * 10_000 / (u32::from(v) + u32::from(h));
            let err = share.abs_diff(want * 100);
            if err < best_err {
                best = (v, h);
                best_err = err;
            }
        }
    }
    best
}

/// Modeled time one step takes.
pub(crate) const STEP_NS: u64 = 100_000;

impl<'a> Machine<'a> {
    /// A machine with a fresh vGPU placed at `placement` (host frames offset by `host_frame_offset`).
    pub fn new(
        config: VgpuConfig,
        placement: HostPlacement,
        map: GuestMemoryMap,
        storage: &'a mut MachineStorage,
        host_gm_bytes: u64,
        host_frame_offset: u64,
        driver: GuestDriver,
    ) -> Result<Self, VgpuError> {
        let vgpu = Vgpu::new(config, placement, map.clone(), storage.storage())?;
        Ok(Self {
            vgpu,
            cpu_log: SimCpuLog::new(map.clone()),
            mem: SimMemory::new(map),
            host: SimHost::new(host_gm_bytes, host_frame_offset),
            gpu: RefGpu::new(),
            driver,
            clock_ns: 0,
            actions_per_step: 4,
            commands_per_step: 64,
            throttle: None,
            engine_time: EngineTime::default(),
        })
    }

    /// Make this machine a fresh destination again: vGPU reset, guest memory and host GGTT cleared,
    /// nothing in flight.
    pub fn reset_for_restore(&mut self) -> Result<(), VgpuError> {
        self.vgpu.reset();
        self.mem = SimMemory::new(self.mem.map().clone());
        self.cpu_log = SimCpuLog::new(self.mem.map().clone());
        self.host.ggtt.fill(0);
        self.gpu = RefGpu::new();
        Ok(())
    }

    /// Boot the guest driver.
    pub fn boot(&mut self) -> Result<(), VgpuError> {
        let mut g = Guest {
            mem: &mut self.mem,
            log: &mut self.cpu_log,
            host: &mut self.host,
        };
        self.driver.boot(&mut self.vgpu, &mut g)
    }

    /// Throttle the vGPU's share of the engines to `100 - percent` % (GPU auto-converge; 0
    /// lifts it), through the time-sliced scheduler of `engines`: slot 0 is this vGPU, slot 1
    /// the host's reserve, weighted so the vGPU gets the share (the nearest weights allow: at
    /// most 16:1, so at least about 6 %). The scheduler starts past the slots' priority time:
    /// a vGPU throttled during migration is not a new one.
    ///
    /// # Errors
    /// Never in practice: the scheduler refuses only slot or weight values this code does not
    /// pass ([`VgpuError::WrongPhase`] if it did).
    pub fn set_engine_throttle(&mut self, percent: u8) -> Result<(), VgpuError> {
        let percent = percent.min(99);
        if percent == 0 {
            self.throttle = None;
            return Ok(());
        }
        if self.throttle.as_ref().is_some_and(|t| t.percent == percent) {
            return Ok(());
        }
        let (v, h) = throttle_weights(percent);
        // A fresh scheduler per setting, on its own clock: both slots added at 0 and the first
        // tick at PRIORITY_NS, when their priority has just ended and the catch-up balancing
        // ends on a stage 0, which leaves each slot exactly one period's budget (a weight
        // change on a running scheduler would wait for its next budget reset instead).
        let mut sched = Scheduler::new(engines::DEFAULT_SLICE_NS);
        sched.add(0, v, 0).map_err(|_| VgpuError::WrongPhase)?;
        sched.add(1, h, 0).map_err(|_| VgpuError::WrongPhase)?;
        self.throttle = Some(EngineThrottle {
            sched,
            percent,
            share_permille: u32::from(v) * 1000 / (u32::from(v) + u32::from(h)),
            origin: self.clock_ns,
            next_tick: PRIORITY_NS,
            vgpu_runs: true,
        });
        Ok(())
    }

    /// The throttle set now (0: none).
    pub fn engine_throttle(&self) -> u8 {
        self.throttle.as_ref().map_or(0, |t| t.percent)
    }

    /// The vGPU's share of the engines the current throttle's weights give, per mille (1000
    /// without a throttle).
    pub fn engine_share_permille(&self) -> u32 {
        self.throttle.as_ref().map_or(1000, |t| t.share_permille)
    }

    /// How the GPU's modeled time was spent so far.
    pub fn engine_time(&self) -> EngineTime {
        self.engine_time
    }

    /// One modeled step: the guest acts, then the GPU runs (unless a throttle gave this slice
    /// to the host).
    pub fn step(&mut self) -> Result<(), VgpuError> {
        let mut g = Guest {
            mem: &mut self.mem,
            log: &mut self.cpu_log,
            host: &mut self.host,
        };
        self.driver
            .step(&mut self.vgpu, &mut g, self.actions_per_step, self.clock_ns)?;
        let runs = match self.throttle.as_mut() {
            None => true,
            Some(t) => {
                let now = self.clock_ns.saturating_sub(t.origin) + PRIORITY_NS;
                if now >= t.next_tick {
                    let busy = [EngineMask::ALL, EngineMask::ALL];
                    let pick = t.sched.tick(now, &busy);
                    t.next_tick = pick.next_tick;
                    t.vgpu_runs = pick.vgpu == Some(0);
                }
                t.vgpu_runs
            }
        };
        if runs {
            self.gpu
                .step(&mut self.vgpu, &mut self.mem, self.commands_per_step);
            self.engine_time.ran_ns += STEP_NS;
        } else {
            self.engine_time.throttled_ns += STEP_NS;
        }
        self.clock_ns += STEP_NS;
        Ok(())
    }

    /// Whether the driver has submitted everything and the GPU has executed it.
    pub fn idle(&self) -> bool {
        self.driver.finished()
            && !self.gpu.busy()
            && self.vgpu.engines().in_flight() == 0
            && self.queued() == 0
    }

    fn queued(&self) -> usize {
        engines::EngineId::ALL
            .iter()
            .filter_map(|id| self.vgpu.engines().engine(*id))
            .map(|e| e.queue.len())
            .sum()
    }

    /// Step until the workload is finished and the GPU idle, then let the driver acknowledge the last
    /// completions. Bounded by `max_steps`.
    pub fn run_to_end(&mut self, max_steps: u64) -> Result<bool, VgpuError> {
        for _ in 0..max_steps {
            if self.idle() {
                let mut g = Guest {
                    mem: &mut self.mem,
                    log: &mut self.cpu_log,
                    host: &mut self.host,
                };
                self.driver.step(&mut self.vgpu, &mut g, 0, self.clock_ns)?;
                return Ok(true);
            }
            self.step()?;
        }
        Ok(false)
    }

    /// Stop dispatch and let in-flight work finish (the quiesce before stop-and-copy).
    pub fn quiesce(&mut self) -> bool {
        let _ = self.vgpu.quiesce();
        // In-flight work finishes at the GPU's normal pace: modeled time passes while it drains.
        let mut steps = 0u64;
        while self.vgpu.engines().in_flight() != 0 {
            self.gpu
                .step(&mut self.vgpu, &mut self.mem, self.commands_per_step);
            self.clock_ns += STEP_NS;
            steps += 1;
            if steps > 1 << 24 {
                return false;
            }
        }
        true
    }
}
