//! A whole reference platform: vGPU, guest memory, host GGTT, GPU and guest driver, stepped together.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use core::sync::atomic::AtomicU64;

use gmem::GuestMemoryMap;
use gtt::HostPlacement;

use super::driver::{Guest, GuestDriver};
use super::gpu::RefGpu;
use super::memory::{SimCpuLog, SimHost, SimMemory};
use crate::error::VgpuError;
use crate::instance::{CONFIG_SPACE_SIZE, Vgpu, VgpuConfig, VgpuStorage};

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
            gpu_dirty: (0..crate::tracking::GpuDirtyLog::storage_words(frames))
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
        })
    }

    /// Make this machine a fresh destination again: vGPU reset, guest memory and host GGTT cleared,
    /// nothing in flight.
    pub fn reset_for_restore(&mut self) -> Result<(), VgpuError> {
        self.vgpu.reset();
        self.mem = SimMemory::new(self.mem.map_ref().clone());
        self.cpu_log = SimCpuLog::new(self.mem.map_ref().clone());
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

    /// One modeled step: the guest acts, then the GPU runs.
    pub fn step(&mut self) -> Result<(), VgpuError> {
        let mut g = Guest {
            mem: &mut self.mem,
            log: &mut self.cpu_log,
            host: &mut self.host,
        };
        self.driver
            .step(&mut self.vgpu, &mut g, self.actions_per_step, self.clock_ns)?;
        self.gpu
            .step(&mut self.vgpu, &mut self.mem, self.commands_per_step);
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
