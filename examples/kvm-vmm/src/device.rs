//! The vGPU as the VMM hosts it: trapped PCI config space (ECAM) and BAR0 routed into
//! [`Vgpu`]'s trap-and-emulate, and the GPU thread that runs the reference device's executor.
//!
//! Locking: one mutex guards the [`Device`] (the vGPU, the host GGTT, the executor). A vCPU holds
//! it for one trapped access; the GPU thread for one executor step (a bounded amount of work: the
//! reference executor needs the engines and the GGTT); the migration thread, through
//! [`DeviceAccess`], once per pre-copy round for the device-state size and, with the vCPU paused
//! and the vGPU quiesced, for the device state. The GPU dirty log is atomic and needs no lock
//! (marks land after the write they log). Guest RAM is never behind the lock: the migration
//! thread copies pages without it.
//!
//! Interrupts: whoever takes the vGPU's raised interrupts ([`Vgpu::take_msi`]) delivers them to
//! KVM before releasing the lock. A migration quiesces the vGPU under the lock and then takes
//! the vCPU state; an interrupt taken but delivered after the lock was released could reach
//! the local APIC after its state was saved, and the destination guest, halted waiting for it,
//! would never wake (the vGPU's interrupt line is restored high, and a restore raises no new
//! interrupt). [`Msi::deliver`] is one `KVM_SIGNAL_MSI`, microseconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gtt::{GmAddr, GmRange, HostPlacement, Partition};
use kvm_guest::abi;
use sim::{MachineStorage, RefGpu, SimHost};
use vgpu::instance::{Vgpu, VgpuConfig};
use vgpu::tracking::GpuDirtyLog;
use vgpu::traits::VgpuAccess;

use crate::memory::{GuestRam, VmMemory};

/// Guest view of the vGPU's aperture (as the reference scenarios place it).
pub const APERTURE_BASE: u64 = 0x0100_0000;
/// Guest view of the vGPU's hidden graphics memory.
pub const HIDDEN_BASE: u64 = 0x1000_0000;
/// Host graphics memory of the (modeled) host GGTT.
pub const HOST_GM: u64 = 0xC000_0000;
/// Commands per engine per GPU step (the lock is held for one step).
pub const GPU_STEP_COMMANDS: u32 = 64;
/// Pages a fill writes per GPU step: small steps keep the lock's hold times short (the GPU
/// thread takes the next step at once, so throughput hardly changes).
pub const GPU_STEP_FILL_PAGES: u32 = 16;

/// The vGPU and what executes its work.
#[derive(Debug)]
pub struct Device {
    /// The vGPU.
    pub vgpu: Vgpu<'static>,
    /// The host GGTT the vGPU's slices are shadowed into (the reference platform's model).
    pub host: SimHost,
    /// The reference device's executor.
    pub gpu: RefGpu,
    /// Guest accesses the device refused (misaligned, out of range).
    pub bad_accesses: u64,
}

/// A vGPU configuration with `aperture` + `hidden` bytes of graphics memory.
pub fn vgpu_config(aperture: u64, hidden: u64) -> Result<VgpuConfig, String> {
    let a = GmRange::new(GmAddr::new(APERTURE_BASE), aperture).map_err(|e| format!("{e:?}"))?;
    let h = GmRange::new(GmAddr::new(HIDDEN_BASE), hidden).map_err(|e| format!("{e:?}"))?;
    let p = Partition::new(a, h).map_err(|e| format!("{e:?}"))?;
    Ok(VgpuConfig::skylake(p))
}

/// Which (modeled) host a VM runs on: where the host places the vGPU's graphics memory and how
/// it numbers host frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The source host: graphics memory contiguous (aperture at 32 MiB, hidden at 1 GiB).
    Source,
    /// The destination host: the aperture elsewhere and the hidden range split in three pieces,
    /// out of address order, so a migration rebases every GGTT entry.
    Destination,
    /// A destination host placing graphics memory contiguously but at other host addresses than
    /// [`Host::Source`] (a migration rebases every GGTT entry by one offset per range).
    Elsewhere,
}

impl Host {
    /// The host placement of a vGPU with `partition`.
    pub fn placement(self, partition: &Partition) -> Result<HostPlacement, String> {
        let e = |e: gtt::GttError| format!("{e:?}");
        match self {
            Host::Source => HostPlacement::contiguous(
                partition,
                GmAddr::new(0x0200_0000),
                GmAddr::new(0x4000_0000),
            )
            .map_err(e),
            Host::Elsewhere => HostPlacement::contiguous(
                partition,
                GmAddr::new(0x0A00_0000),
                GmAddr::new(0x5000_0000),
            )
            .map_err(e),
            Host::Destination => {
                let hidden = partition.hidden.size();
                let third = (hidden / 3) & !0xFFF;
                HostPlacement::split(
                    partition,
                    &[
                        GmRange::new(GmAddr::new(0x0600_0000), partition.aperture.size())
                            .map_err(e)?,
                    ],
                    &[
                        GmRange::new(GmAddr::new(0x8000_0000), third).map_err(e)?,
                        GmRange::new(GmAddr::new(0x6000_0000), third).map_err(e)?,
                        GmRange::new(GmAddr::new(0xA000_0000), hidden - 2 * third).map_err(e)?,
                    ],
                )
                .map_err(e)
            }
        }
    }

    /// Offset from guest frames to this host's frames in its host GGTT model.
    pub fn frame_offset(self) -> u64 {
        match self {
            Host::Source => 0x55_0000,
            Host::Destination => 0x77_0000,
            Host::Elsewhere => 0x99_0000,
        }
    }
}

impl Device {
    /// A vGPU at reset over `ram`, its graphics memory placed as `host` places it. The vGPU's
    /// storage lives as long as the process (one vGPU per VM, as in a VMM).
    pub fn new(config: VgpuConfig, ram: &GuestRam, host: Host) -> Result<Self, String> {
        let storage: &'static mut MachineStorage =
            Box::leak(Box::new(MachineStorage::new(&config, ram.map())));
        let placement = host.placement(&config.partition)?;
        let host_offset = host.frame_offset();
        let vgpu = Vgpu::new(config, placement, ram.map().clone(), storage.storage())
            .map_err(|e| e.to_string())?;
        let mut gpu = RefGpu::new();
        gpu.fill_pages_per_step = GPU_STEP_FILL_PAGES;
        Ok(Self {
            vgpu,
            host: SimHost::new(HOST_GM, host_offset),
            gpu,
            bad_accesses: 0,
        })
    }

    /// Place BAR0 where the guest finds it (the firmware's job on a real machine).
    pub fn program_bar0(&mut self) -> Result<(), String> {
        let lo = u32::try_from(abi::BAR0 & 0xFFFF_FFFF).map_err(|e| e.to_string())? | 0x4;
        let hi = u32::try_from(abi::BAR0 >> 32).map_err(|e| e.to_string())?;
        self.vgpu
            .cfg_write(0x10, 4, lo)
            .map_err(|e| e.to_string())?;
        self.vgpu.cfg_write(0x14, 4, hi).map_err(|e| e.to_string())
    }

    /// Whether the vGPU has work queued or running.
    pub fn busy(&self) -> bool {
        self.gpu.busy()
            || self.vgpu.engines().in_flight() != 0
            || engines::EngineId::ALL
                .iter()
                .filter_map(|id| self.vgpu.engines().engine(*id))
                .any(|e| !e.queue.is_empty() && !self.vgpu.engines().is_quiesced())
    }

    /// A trapped read at guest-physical `gpa` (ECAM or BAR0); `None` if neither.
    pub fn mmio_read(&mut self, gpa: u64, size: usize) -> Option<u64> {
        if let Some(off) = gpa.checked_sub(abi::ECAM).filter(|o| *o < abi::ECAM_SIZE) {
            if off >> 12 != 0 {
                return Some(u64::MAX); // no device there
            }
            let r = u16::try_from(off)
                .ok()
                .and_then(|o| self.vgpu.cfg_read(o, size).ok());
            if r.is_none() {
                self.bad_accesses += 1;
            }
            return Some(r.map_or(u64::MAX, u64::from));
        }
        let off = gpa.checked_sub(abi::BAR0).filter(|o| *o < abi::BAR0_SIZE)?;
        let r = u32::try_from(off)
            .ok()
            .and_then(|o| self.vgpu.mmio_read(o, size).ok());
        if r.is_none() {
            self.bad_accesses += 1;
        }
        Some(r.unwrap_or(0))
    }

    /// A trapped write; returns false if `gpa` is neither ECAM nor BAR0.
    pub fn mmio_write(&mut self, gpa: u64, size: usize, value: u64, mem: &VmMemory) -> bool {
        if let Some(off) = gpa.checked_sub(abi::ECAM).filter(|o| *o < abi::ECAM_SIZE) {
            let ok = off >> 12 == 0
                && u16::try_from(off)
                    .ok()
                    .zip(u32::try_from(value).ok())
                    .is_some_and(|(o, v)| self.vgpu.cfg_write(o, size, v).is_ok());
            if !ok {
                self.bad_accesses += 1;
            }
            return true;
        }
        let Some(off) = gpa.checked_sub(abi::BAR0).filter(|o| *o < abi::BAR0_SIZE) else {
            return false;
        };
        let ok = u32::try_from(off).ok().is_some_and(|o| {
            self.vgpu
                .mmio_write(o, size, value, mem, &mut self.host)
                .is_ok()
        });
        if !ok {
            self.bad_accesses += 1;
        }
        true
    }
}

/// The migration thread's way to the vGPU ([`VgpuAccess`]): the GPU dirty log without the
/// lock (it is atomic and shared with the vGPU), the vGPU itself under the device lock, briefly.
#[derive(Debug, Clone)]
pub struct DeviceAccess {
    dev: Arc<Mutex<Device>>,
    log: GpuDirtyLog<'static>,
    /// How long each `with_vgpu` held the lock.
    pub hold: Arc<WaitStats>,
}

impl DeviceAccess {
    /// Access to `dev`'s vGPU.
    pub fn new(dev: Arc<Mutex<Device>>) -> Self {
        let log = lock(&dev).vgpu.gpu_dirty().clone();
        Self {
            dev,
            log,
            hold: Arc::new(WaitStats::default()),
        }
    }
}

impl VgpuAccess for DeviceAccess {
    fn gpu_dirty(&self) -> &GpuDirtyLog<'_> {
        &self.log
    }

    fn with_vgpu(&self, f: &mut dyn FnMut(&Vgpu<'_>)) {
        let d = lock(&self.dev);
        let t = Instant::now();
        f(&d.vgpu);
        drop(d);
        self.hold.record(t.elapsed());
    }
}

/// Lock the device (a poisoned lock still holds a consistent device: every critical section
/// either completes an access or does nothing).
pub fn lock(dev: &Mutex<Device>) -> MutexGuard<'_, Device> {
    dev.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long trapped MMIO accesses waited for the device lock.
#[derive(Debug, Default)]
pub struct WaitStats {
    /// Accesses measured.
    pub count: AtomicU64,
    /// Total wait, ns.
    pub total_ns: AtomicU64,
    /// Longest wait, ns.
    pub max_ns: AtomicU64,
    /// Histogram: bucket `i` counts waits in `[2^i, 2^(i+1))` µs (bucket 0: below 2 µs).
    pub buckets: [AtomicU64; 24],
}

/// A summary of [`WaitStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitSummary {
    /// Accesses measured.
    pub count: u64,
    /// Mean wait, ns.
    pub mean_ns: u64,
    /// 99th percentile (upper bucket bound), µs.
    pub p99_us: u64,
    /// Longest wait, ns.
    pub max_ns: u64,
}

impl WaitStats {
    /// Record one wait.
    pub fn record(&self, wait: Duration) {
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        let us = ns / 1000;
        let b = if us < 2 {
            0
        } else {
            (63 - us.leading_zeros()) as usize
        };
        if let Some(slot) = self.buckets.get(b.min(self.buckets.len() - 1)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forget everything recorded.
    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.total_ns.store(0, Ordering::Relaxed);
        self.max_ns.store(0, Ordering::Relaxed);
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// Count, mean, 99th percentile and maximum.
    pub fn summary(&self) -> WaitSummary {
        let count = self.count.load(Ordering::Relaxed);
        let total = self.total_ns.load(Ordering::Relaxed);
        let mut seen = 0;
        let mut p99_us = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if count > 0 && seen * 100 >= count * 99 {
                p99_us = 2u64 << i;
                break;
            }
        }
        WaitSummary {
            count,
            mean_ns: total.checked_div(count).unwrap_or(0),
            p99_us,
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

/// Wakes the GPU thread when work may have been submitted, and stops it.
#[derive(Debug, Default)]
pub struct GpuControl {
    /// How long each GPU step held the device lock.
    pub hold: WaitStats,
    /// vCPUs waiting for the device lock: the GPU thread lets them in before its next step (a
    /// mutex is not fair, and the GPU thread would otherwise take it again at once).
    waiting: AtomicU64,
    /// Fault injection: µs the GPU thread waits before delivering an interrupt raised by a step
    /// that left the vGPU idle (a completion the guest may be sleeping on).
    pub msi_delay_us: AtomicU64,
    /// Set while the GPU thread waits out [`msi_delay_us`](Self::msi_delay_us).
    pub msi_held: AtomicBool,
    stop: AtomicBool,
    kick: Mutex<bool>,
    wake: Condvar,
}

impl GpuControl {
    /// Work may be there: wake the GPU thread.
    pub fn kick(&self) {
        *self.kick.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Lock the device for a trapped access, ahead of the GPU thread's next step.
    pub fn lock_for_exit<'d>(&self, dev: &'d Mutex<Device>) -> MutexGuard<'d, Device> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let g = lock(dev);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        g
    }

    /// Ask the GPU thread to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
    }

    fn wait(&self, timeout: Duration) {
        let g = self.kick.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut g, _) = self
            .wake
            .wait_timeout_while(g, timeout, |k| !*k)
            .unwrap_or_else(PoisonError::into_inner);
        *g = false;
    }
}

/// The vGPU's interrupt: an MSI to vCPU 0's local APIC with [`abi::GPU_VECTOR`].
#[derive(Debug, Clone)]
pub struct Msi(pub Arc<kvm_ioctls::VmFd>);

impl Msi {
    /// Deliver one MSI if the vGPU raised any (`count` from [`Vgpu::take_msi`]; MSI is
    /// edge-triggered, so several collapse into one).
    pub fn deliver(&self, count: u32) {
        if count == 0 {
            return;
        }
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xFEE0_0000,
            address_hi: 0,
            data: u32::from(abi::GPU_VECTOR),
            ..Default::default()
        };
        // A failed delivery leaves the guest to find the completion on its next wake-up.
        let _ = self.0.signal_msi(msi);
    }
}

/// The GPU thread: execute submitted work one bounded step at a time (the lock is released
/// between steps, so MMIO exits interleave), writing guest RAM directly, and raise the vGPU's
/// interrupts; sleep when idle.
pub fn gpu_thread(dev: Arc<Mutex<Device>>, mut mem: VmMemory, ctl: Arc<GpuControl>, msi: Msi) {
    let mut last_busy = Instant::now();
    while !ctl.stop.load(Ordering::SeqCst) {
        let busy = {
            let mut g = lock(&dev);
            let t = Instant::now();
            let d = &mut *g;
            d.gpu.step(&mut d.vgpu, &mut mem, GPU_STEP_COMMANDS);
            let busy = d.busy();
            let raised = d.vgpu.take_msi();
            let delay = ctl.msi_delay_us.load(Ordering::SeqCst);
            if raised > 0 && delay > 0 && !busy {
                ctl.msi_held.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(delay));
                ctl.msi_held.store(false, Ordering::SeqCst);
            }
            // Delivered before the lock is released: whoever sees this step's device state
            // next (a migration that stops now and takes the vCPU state) finds its interrupt
            // in the local APIC already.
            msi.deliver(raised);
            drop(g);
            ctl.hold.record(t.elapsed());
            while ctl.waiting.load(Ordering::SeqCst) > 0 && !ctl.stop.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            busy
        };
        if busy {
            last_busy = Instant::now();
        } else if last_busy.elapsed() > Duration::from_micros(200) {
            ctl.wait(Duration::from_millis(2));
        } else {
            std::thread::yield_now();
        }
    }
}
