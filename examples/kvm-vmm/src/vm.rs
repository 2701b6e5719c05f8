//! The KVM virtual machine: RAM in a dirty-logged memory slot, one vCPU thread in 64-bit mode,
//! the vGPU's ECAM and BAR0 as unbacked ranges whose MMIO exits go to the [`Device`], the GPU
//! thread, the debug and clock ports, and pausing/resuming with the vCPU's state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, kvm_segment, kvm_userspace_memory_region,
};
use kvm_guest::abi;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sim::Profile;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::cpu::CpuState;
use crate::device::{self, Device, GpuControl, Host, Msi, WaitStats, lock};
use crate::memory::{GuestRam, KvmDirtyLog, VmMemory};

/// The RAM slot.
pub const RAM_SLOT: u32 = 0;

/// What a VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM, bytes (multiple of 2 MiB).
    pub ram: u64,
    /// vGPU aperture, bytes.
    pub aperture: u64,
    /// vGPU hidden graphics memory, bytes.
    pub hidden: u64,
    /// The workload the guest renders.
    pub profile: Profile,
    /// Frames.
    pub frames: u64,
    /// Seed.
    pub seed: u64,
}

impl VmConfig {
    /// A small VM for tests: 64 MiB of RAM, a 1 + 8 MiB vGPU, `profile` scaled down 64 times
    /// and unpaced.
    pub fn small(profile: Profile, frames: u64, seed: u64) -> Self {
        Self {
            ram: 64 << 20,
            aperture: 1 << 20,
            hidden: 8 << 20,
            profile: profile.scaled_down(64).unpaced(),
            frames,
            seed,
        }
    }
}

/// One report record of the guest (debug port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// `abi::REPORT_*`.
    pub kind: u32,
    /// Frame number.
    pub frame: u32,
    /// Value.
    pub value: u64,
}

/// The state a migrated run must end in: equal to a never-migrated run's.
///
/// Nothing is excluded: the guest zeroes the stack it used before it ends (the only place
/// clock values it compared could remain), the guest clock is not in RAM, and the vGPU's state
/// depends only on the guest's accesses, which depend only on its progress. vCPU registers are
/// not compared (they hold clock reads and loop counts by nature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndState {
    /// All of guest RAM.
    pub ram: Vec<u8>,
    /// The vGPU's device state.
    pub device: sim::scenario::DeviceState,
    /// The guest's reports (per-frame checksums and the total).
    pub reports: Vec<Report>,
}

impl EndState {
    /// What differs from `other`, or `None` when equal.
    pub fn diff(&self, other: &EndState) -> Option<String> {
        let mut d = Vec::new();
        if let Some(at) = self.ram.iter().zip(&other.ram).position(|(a, b)| a != b) {
            d.push(format!("RAM (first at {at:#x})"));
        } else if self.ram.len() != other.ram.len() {
            d.push("RAM size".into());
        }
        let dev = self.device.diff(&other.device);
        if !dev.is_empty() {
            d.push(format!("vGPU {}", dev.trim()));
        }
        if self.reports != other.reports {
            d.push("guest reports".into());
        }
        (!d.is_empty()).then(|| d.join(", "))
    }

    /// Whether the guest checked every frame and finished: a BOOT report, `frames` FRAME reports,
    /// no BAD or FAIL report, DONE last.
    pub fn guest_checks_passed(&self, frames: u64) -> bool {
        use kvm_guest::abi;
        let ok = self
            .reports
            .iter()
            .filter(|r| r.kind == abi::REPORT_FRAME)
            .count() as u64;
        self.reports.first().map(|r| r.kind) == Some(abi::REPORT_BOOT)
            && ok == frames
            && self
                .reports
                .iter()
                .all(|r| r.kind != abi::REPORT_BAD && r.kind != abi::REPORT_FAIL)
            && self.reports.last().map(|r| r.kind) == Some(abi::REPORT_DONE)
    }
}

/// Why the vCPU thread returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// Paused on request; the instant the vCPU left guest mode for the last time.
    Paused(Instant),
    /// The guest wrote the exit port.
    Finished,
    /// The guest or KVM failed.
    Crashed(String),
}

/// A guest access right after which the vCPU thread stops on its own ([`Vm::run_until`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// The guest's write of ELSP dword 1, 2 or 3 of a submission (to any engine).
    ElspDword(u8),
    /// The guest's write of the first 4-byte half of a GGTT entry.
    GgttHalf,
}

impl StopAt {
    fn reached(self, d: &Device) -> bool {
        match self {
            StopAt::ElspDword(k) => engines::EngineId::ALL
                .iter()
                .filter_map(|id| d.vgpu.engines().engine(*id))
                .any(|e| e.elsp.index() == k),
            StopAt::GgttHalf => !d.vgpu.ggtt().pending_halves().is_empty(),
        }
    }
}

/// State shared by the vCPU thread, the GPU thread and the controller.
#[derive(Debug)]
pub struct Shared {
    pause: AtomicBool,
    reports: Mutex<Vec<Report>>,
    /// The words of a report the guest has begun (it writes a report as four port writes; a
    /// pause or a migration may fall between them).
    partial: Mutex<Vec<u32>>,
    console: Mutex<String>,
    /// (instant the clock was last started, guest µs at that instant, running).
    clock: Mutex<(Instant, u64, bool)>,
    /// Waits of trapped MMIO accesses for the device lock.
    pub mmio_wait: WaitStats,
    /// Set when the vCPU first enters the guest after a resume: (instant, wall-clock ns).
    first_entry: Mutex<Option<(Instant, u64)>>,
    /// Stop the vCPU thread right after this guest access (then cleared).
    stop_at: Mutex<Option<StopAt>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            pause: AtomicBool::new(false),
            reports: Mutex::new(Vec::new()),
            partial: Mutex::new(Vec::with_capacity(4)),
            console: Mutex::new(String::new()),
            clock: Mutex::new((Instant::now(), 0, false)),
            mmio_wait: WaitStats::default(),
            first_entry: Mutex::new(None),
            stop_at: Mutex::new(None),
        }
    }

    /// The guest clock, µs.
    pub fn clock_us(&self) -> u64 {
        let c = self.clock.lock().unwrap_or_else(PoisonError::into_inner);
        if c.2 {
            c.1 + u64::try_from(c.0.elapsed().as_micros()).unwrap_or(u64::MAX)
        } else {
            c.1
        }
    }

    fn set_clock(&self, us: u64, running: bool) {
        *self.clock.lock().unwrap_or_else(PoisonError::into_inner) = (Instant::now(), us, running);
    }
}

/// Wall-clock time in ns (comparable between two processes on one host).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A KVM VM with the vGPU.
#[derive(Debug)]
pub struct Vm {
    /// Configuration.
    pub cfg: VmConfig,
    _kvm: Kvm,
    vm: Arc<VmFd>,
    /// Guest RAM.
    pub ram: Arc<GuestRam>,
    /// The vGPU.
    pub device: Arc<Mutex<Device>>,
    /// Shared state (reports, clock, MMIO wait statistics).
    pub shared: Arc<Shared>,
    gpu_ctl: Arc<GpuControl>,
    vcpu: Option<VcpuFd>,
    runner: Option<JoinHandle<(VcpuFd, VcpuEnd)>>,
    gpu: Option<JoinHandle<()>>,
    end: Option<VcpuEnd>,
}

/// A VM-level failure.
#[derive(Debug)]
pub struct VmError(pub String);

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VmError {}

fn err(what: &str, e: impl std::fmt::Display) -> VmError {
    VmError(format!("{what}: {e}"))
}

/// Whether `/dev/kvm` can be opened and a VM created; `Err` says why not.
pub fn kvm_usable() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    Ok(())
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), VmError> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| register_signal_handler(SIGRTMIN(), on_kick).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| err("signal handler", e))
}

impl Vm {
    /// Create the VM: RAM slot with dirty logging, in-kernel interrupt controller, one vCPU, the
    /// vGPU at reset, placed as `host` places it. With an `image`, the guest is loaded and the
    /// vCPU set up to enter it; without, the VM waits for a migrated state.
    pub fn new(cfg: VmConfig, image: Option<&[u8]>, host: Host) -> Result<Self, VmError> {
        install_kick_handler()?;
        let kvm = Kvm::new().map_err(|e| err("/dev/kvm", e))?;
        let vm = kvm.create_vm().map_err(|e| err("KVM_CREATE_VM", e))?;
        vm.set_tss_address(0xFFFB_D000)
            .map_err(|e| err("KVM_SET_TSS_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| err("KVM_CREATE_IRQCHIP", e))?;
        let ram = Arc::new(GuestRam::new(cfg.ram).map_err(|e| err("RAM", e))?);
        let region = kvm_userspace_memory_region {
            slot: RAM_SLOT,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: cfg.ram,
            userspace_addr: ram.host_base().map_err(|e| err("RAM", e))?,
        };
        // SAFETY: the region is the mapping `ram` owns; `ram` lives in an Arc the VM holds for as
        // long as the VM fd exists (dropped after it, field order), so KVM never sees it unmapped.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| err("KVM_SET_USER_MEMORY_REGION", e))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| err("KVM_CREATE_VCPU", e))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| err("KVM_GET_SUPPORTED_CPUID", e))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| err("KVM_SET_CPUID2", e))?;
        let config = device::vgpu_config(cfg.aperture, cfg.hidden).map_err(|e| err("vGPU", e))?;
        let dev = Device::new(config, &ram, host).map_err(|e| err("vGPU", e))?;
        let vm = Arc::new(vm);
        let mut me = Self {
            cfg,
            _kvm: kvm,
            vm,
            ram,
            device: Arc::new(Mutex::new(dev)),
            shared: Arc::new(Shared::new()),
            gpu_ctl: Arc::new(GpuControl::default()),
            vcpu: Some(vcpu),
            runner: None,
            gpu: None,
            end: None,
        };
        if let Some(image) = image {
            lock(&me.device)
                .program_bar0()
                .map_err(|e| err("BAR0", e))?;
            me.boot(image)?;
        }
        Ok(me)
    }

    /// How long the GPU thread's steps held the device lock.
    pub fn gpu_hold(&self) -> &WaitStats {
        &self.gpu_ctl.hold
    }

    /// KVM's dirty log of the RAM slot.
    pub fn dirty_log(&self) -> KvmDirtyLog {
        KvmDirtyLog::new(self.vm.clone(), RAM_SLOT, self.cfg.ram)
    }

    /// The RAM as the library's guest memory.
    pub fn memory(&self) -> VmMemory {
        VmMemory(self.ram.clone())
    }

    fn boot(&mut self, image: &[u8]) -> Result<(), VmError> {
        crate::image::load_elf(&self.ram, image).map_err(|e| err("guest image", e))?;
        let ram = &self.ram;
        let w = |gpa: u64, v: u64| ram.write_at(gpa, &v.to_le_bytes());
        let mut ok = true;
        // GDT: null, 64-bit code, data.
        ok &= w(abi::GDT, 0).is_ok();
        ok &= w(abi::GDT + 8, 0x00AF_9B00_0000_FFFF).is_ok();
        ok &= w(abi::GDT + 16, 0x00CF_9300_0000_FFFF).is_ok();
        // Identity map of the low 4 GiB with 2 MiB pages (RAM, then ECAM and BAR0 above it).
        ok &= w(abi::PML4, abi::PDPT | 3).is_ok();
        for g in 0..4u64 {
            ok &= w(abi::PDPT + g * 8, (abi::PD + g * 4096) | 3).is_ok();
            for i in 0..512u64 {
                let addr = (g << 30) | (i << 21);
                ok &= w(abi::PD + g * 4096 + i * 8, addr | 0x83).is_ok();
            }
        }
        let p = self.cfg.profile;
        use abi::boot as b;
        let info = abi::BOOT_INFO;
        for (off, v) in [
            (b::MAGIC, abi::BOOT_MAGIC),
            (b::RAM, self.cfg.ram),
            (b::FRAMES, self.cfg.frames),
            (b::SEED, self.cfg.seed),
            (b::RT_PAGES, p.rt_pages),
            (b::FILL_PAGES, p.fill_pages),
            (b::HOT_PAGES, p.hot_pages),
            (b::REMAP_EVERY, p.remap_every),
            (b::REPEAT_EVERY, p.repeat_every),
            (b::FRAME_NS, p.frame_ns),
            (b::STORES, u64::from(p.stores)),
            (b::CPU_WRITES, u64::from(p.cpu_writes)),
            (b::FLAGS, u64::from(p.mirror) | u64::from(p.blits) << 1),
        ] {
            ok &= w(info + off, v).is_ok();
        }
        if !ok {
            return Err(VmError("writing the boot tables".into()));
        }
        let vcpu = self
            .vcpu
            .as_ref()
            .ok_or_else(|| VmError("no vCPU".into()))?;
        let mut sregs = vcpu.get_sregs().map_err(|e| err("KVM_GET_SREGS", e))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: 0x8,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 3,
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = abi::GDT;
        sregs.gdt.limit = 23;
        sregs.cr3 = abi::PML4;
        sregs.cr4 = 1 << 5; // PAE
        sregs.cr0 = 0x8000_0031; // PG, NE, ET, PE
        sregs.efer = 0x500; // LME, LMA
        vcpu.set_sregs(&sregs)
            .map_err(|e| err("KVM_SET_SREGS", e))?;
        let regs = kvm_bindings::kvm_regs {
            rip: abi::IMAGE,
            rsp: abi::STACK_TOP - 8,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(|e| err("KVM_SET_REGS", e))?;
        Ok(())
    }

    /// Start (or resume) the vCPU and the GPU thread.
    pub fn start(&mut self) -> Result<(), VmError> {
        if self.gpu.is_none() {
            let (dev, mem, ctl) = (self.device.clone(), self.memory(), self.gpu_ctl.clone());
            let msi = Msi(self.vm.clone());
            self.gpu = Some(
                std::thread::Builder::new()
                    .name("gpu".into())
                    .spawn(move || device::gpu_thread(dev, mem, ctl, msi))
                    .map_err(|e| err("GPU thread", e))?,
            );
        }
        let vcpu = self
            .vcpu
            .take()
            .ok_or_else(|| VmError("vCPU already running".into()))?;
        self.shared.pause.store(false, Ordering::SeqCst);
        let us = self.shared.clock_us();
        self.shared.set_clock(us, true);
        *self
            .shared
            .first_entry
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let (sh, dev, mem, ctl) = (
            self.shared.clone(),
            self.device.clone(),
            self.memory(),
            self.gpu_ctl.clone(),
        );
        let msi = Msi(self.vm.clone());
        self.runner = Some(
            std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn(move || vcpu_thread(vcpu, &sh, &dev, &mem, &ctl, &msi))
                .map_err(|e| err("vCPU thread", e))?,
        );
        Ok(())
    }

    /// Whether the vCPU thread exists (started and not yet paused).
    pub fn running(&self) -> bool {
        self.runner.is_some()
    }

    /// Whether the guest has written its exit port.
    pub fn finished(&self) -> bool {
        self.end == Some(VcpuEnd::Finished)
    }

    /// The instant and wall-clock time of the first guest entry since the last start.
    pub fn first_entry(&self) -> Option<(Instant, u64)> {
        *self
            .shared
            .first_entry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Pause the vCPU (kick it out of KVM_RUN) and take it back. Returns how the thread ended
    /// (`Paused(instant of the last guest exit)`, or `Finished` if the guest had ended first).
    pub fn pause(&mut self) -> Result<VcpuEnd, VmError> {
        let Some(h) = self.runner.take() else {
            return self
                .end
                .clone()
                .ok_or_else(|| VmError("vCPU not running".into()));
        };
        self.shared.pause.store(true, Ordering::SeqCst);
        while !h.is_finished() {
            // A signal that arrives outside KVM_RUN is harmless; repeat until the thread sees
            // the flag (it checks it before every entry).
            let _ = h.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_micros(50));
        }
        let (vcpu, end) = h
            .join()
            .map_err(|_| VmError("vCPU thread panicked".into()))?;
        let us = self.shared.clock_us();
        self.shared.set_clock(us, false);
        self.vcpu = Some(vcpu);
        self.end = Some(end.clone());
        Ok(end)
    }

    /// Run the guest until right after the access `at` (the vCPU thread stops itself at that
    /// MMIO exit, with the access emulated and complete), at most `timeout`. `Ok(true)`: the vCPU
    /// is paused there (resume with [`Vm::start`], or migrate it as it is); `Ok(false)`: the guest
    /// ended first.
    pub fn run_until(&mut self, at: StopAt, timeout: Duration) -> Result<bool, VmError> {
        if self.runner.is_none() {
            return Err(VmError("vCPU not running".into()));
        }
        *self
            .shared
            .stop_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(at);
        let t = Instant::now();
        let timed_out = loop {
            match &self.runner {
                Some(h) if !h.is_finished() => {}
                _ => break false,
            }
            if t.elapsed() > timeout {
                break true;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let pending = self
            .shared
            .stop_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let end = self.pause()?;
        if timed_out {
            return Err(VmError(format!("the guest did not reach {at:?} in time")));
        }
        Ok(pending.is_none() && matches!(end, VcpuEnd::Paused(_)))
    }

    /// Wait until the guest has finished (or failed), at most `timeout`.
    pub fn wait_end(&mut self, timeout: Duration) -> Result<VcpuEnd, VmError> {
        let t = Instant::now();
        while let Some(h) = &self.runner {
            if h.is_finished() {
                break;
            }
            if t.elapsed() > timeout {
                // Stop it where it waits and say what it waits for.
                self.pause()?;
                return Err(VmError(format!(
                    "guest did not finish in time; {}",
                    self.diagnose()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.pause()
    }

    /// What a paused guest is doing and what it could be waiting for, in one line: its
    /// instruction pointer, whether interrupts are enabled and whether it is halted, the GPU
    /// vector in the local APIC's request and service registers, the vGPU's interrupt state
    /// (master register, the render block's identity/mask/enable registers, the interrupt line)
    /// and its work, and the guest's own progress (frames reported). For a hang guard's message.
    pub fn diagnose(&self) -> String {
        let cpu = match self.save_cpu() {
            Ok(c) => {
                let v = usize::from(abi::GPU_VECTOR);
                let apic_bit = |base: usize| {
                    let at = base + (v / 32) * 0x10;
                    let reg = lapic_word(&c.lapic, at).map_or(0, |w| (w >> (v % 32)) & 1);
                    reg == 1
                };
                format!(
                    "vCPU rip {:#x} IF {} mp_state {} (3 = halted) pending irq {}/{} nmi {}, \
                     LAPIC vector {:#x}: IRR {} ISR {}, ",
                    c.regs.rip,
                    (c.regs.rflags >> 9) & 1,
                    c.mp_state.mp_state,
                    c.events.interrupt.injected,
                    c.events.interrupt.nr,
                    c.events.nmi.pending,
                    abi::GPU_VECTOR,
                    apic_bit(0x200),
                    apic_bit(0x100),
                )
            }
            Err(e) => format!("vCPU state: {e}, "),
        };
        let d = lock(&self.device);
        let r = d.vgpu.regs();
        let rcs = d.vgpu.engines().engine(engines::EngineId::Rcs);
        format!(
            "{cpu}vGPU master {:#x} GT0 IIR {:#x} IMR {:#x} IER {:#x} line {}, in flight {}, \
             RCS queue {}, busy {}, frames reported {} of {}",
            r.peek(0x44200),
            r.peek(0x44308),
            r.peek(0x44304),
            r.peek(0x4430C),
            d.vgpu.derived().irq_line,
            d.vgpu.engines().in_flight(),
            rcs.map_or(0, |e| e.queue.len()),
            d.busy(),
            self.reports()
                .iter()
                .filter(|r| r.kind == abi::REPORT_FRAME)
                .count(),
            self.cfg.frames,
        )
    }

    /// Fault injection for tests: the GPU thread waits `delay` before delivering an interrupt
    /// raised by a step that left the vGPU idle, such as the completion of the guest's frame (a
    /// GPU thread descheduled at that point on a loaded host). It waits holding the device
    /// lock, where it delivers interrupts.
    pub fn delay_gpu_interrupts(&self, delay: Duration) {
        self.gpu_ctl.msi_delay_us.store(
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Whether the GPU thread is waiting out [`delay_gpu_interrupts`](Self::delay_gpu_interrupts)
    /// with an interrupt it raised and has not delivered.
    pub fn gpu_interrupt_held(&self) -> bool {
        self.gpu_ctl.msi_held.load(Ordering::SeqCst)
    }

    /// Stop dispatching vGPU work and wait until nothing is in flight. When it returns, every
    /// interrupt the vGPU raised has been delivered to the local APIC (the GPU thread delivers
    /// before it releases the device lock; one the vGPU holds still is delivered here), so a
    /// vCPU state taken afterwards carries it.
    pub fn quiesce_gpu(&self) -> Result<(), VmError> {
        let _ = lock(&self.device).vgpu.quiesce();
        let t = Instant::now();
        loop {
            {
                let mut d = lock(&self.device);
                if d.vgpu.engines().in_flight() == 0 && !d.gpu.busy() {
                    Msi(self.vm.clone()).deliver(d.vgpu.take_msi());
                    return Ok(());
                }
            }
            self.gpu_ctl.kick();
            if t.elapsed() > Duration::from_secs(30) {
                return Err(VmError("vGPU did not drain".into()));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Wait until the GPU has nothing queued or running (after the guest finished).
    pub fn wait_gpu_idle(&self) -> Result<(), VmError> {
        let t = Instant::now();
        while lock(&self.device).busy() {
            self.gpu_ctl.kick();
            if t.elapsed() > Duration::from_secs(30) {
                return Err(VmError("vGPU did not go idle".into()));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// Stop the GPU thread (the vGPU keeps its state).
    pub fn stop_gpu(&mut self) {
        self.gpu_ctl.stop();
        if let Some(h) = self.gpu.take() {
            let _ = h.join();
        }
        self.gpu_ctl = Arc::new(GpuControl::default());
    }

    /// The guest's reports so far.
    pub fn reports(&self) -> Vec<Report> {
        self.shared
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the guest printed on the debug console.
    pub fn console(&self) -> String {
        self.shared
            .console
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The vCPU state (the vCPU must be paused).
    pub fn save_cpu(&self) -> Result<CpuState, VmError> {
        let vcpu = self
            .vcpu
            .as_ref()
            .ok_or_else(|| VmError("vCPU running".into()))?;
        CpuState::save(vcpu, self.shared.clock_us()).map_err(|e| err("vCPU state", e))
    }

    /// Load a vCPU state (the vCPU must be paused) and the guest clock with it.
    pub fn load_cpu(&mut self, s: &CpuState) -> Result<(), VmError> {
        let vcpu = self
            .vcpu
            .as_ref()
            .ok_or_else(|| VmError("vCPU running".into()))?;
        s.load(vcpu).map_err(|e| err("vCPU state", e))?;
        self.shared.set_clock(s.clock_us, false);
        Ok(())
    }

    /// The words of the report the guest has begun and not finished (part of the VM's state:
    /// a destination continues it).
    pub fn partial_report(&self) -> Vec<u32> {
        self.shared
            .partial
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Set the words of a begun report (a destination continues the source's).
    pub fn set_partial_report(&self, words: Vec<u32>) {
        *self
            .shared
            .partial
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = words;
    }

    /// Add reports (a destination continues the source's record).
    pub fn set_reports(&self, r: Vec<Report>) {
        *self
            .shared
            .reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = r;
    }

    /// What the oracle compares: all of guest RAM, the vGPU's device state, the guest's reports.
    pub fn end_state(&self) -> Result<EndState, VmError> {
        let ram = self
            .ram
            .snapshot()
            .map_err(|_| VmError("reading RAM".into()))?;
        let device = sim::scenario::DeviceState::capture(&lock(&self.device).vgpu);
        Ok(EndState {
            ram,
            device,
            reports: self.reports(),
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.pause();
        self.stop_gpu();
    }
}

fn data_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    if let (Some(dst), Some(src)) = (b.get_mut(..n), data.get(..n)) {
        dst.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

/// The vCPU thread: run the guest until paused, finished or failed; serve its exits.
fn vcpu_thread(
    mut vcpu: VcpuFd,
    sh: &Shared,
    dev: &Mutex<Device>,
    mem: &VmMemory,
    gpu: &GpuControl,
    msi: &Msi,
) -> (VcpuFd, VcpuEnd) {
    let mut sleep_lo = 0u64;
    let mut first = true;
    loop {
        if sh.pause.load(Ordering::SeqCst) {
            let at = Instant::now();
            complete_exit(&mut vcpu);
            return (vcpu, VcpuEnd::Paused(at));
        }
        if first {
            first = false;
            *sh.first_entry
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), wall_ns()));
        }
        let exit = vcpu.run();
        let end = match exit {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let t = Instant::now();
                let mut d = gpu.lock_for_exit(dev);
                sh.mmio_wait.record(t.elapsed());
                match d.mmio_read(addr, data.len()) {
                    Some(v) => {
                        let bytes = v.to_le_bytes();
                        let n = data.len().min(8);
                        if let (Some(dst), Some(src)) = (data.get_mut(..n), bytes.get(..n)) {
                            dst.copy_from_slice(src);
                        }
                        None
                    }
                    None => Some(VcpuEnd::Crashed(format!("read of unmapped {addr:#x}"))),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let t = Instant::now();
                let mut d = gpu.lock_for_exit(dev);
                sh.mmio_wait.record(t.elapsed());
                let ok = d.mmio_write(addr, data.len(), data_u64(data), mem);
                let raised = d.vgpu.take_msi();
                let mut stop = sh.stop_at.lock().unwrap_or_else(PoisonError::into_inner);
                let hit = stop.is_some_and(|at| at.reached(&d));
                if hit {
                    *stop = None;
                }
                drop(stop);
                // Under the lock, like the GPU thread (see `device`'s interrupt rule).
                msi.deliver(raised);
                drop(d);
                gpu.kick();
                if !ok {
                    Some(VcpuEnd::Crashed(format!("write of unmapped {addr:#x}")))
                } else if hit {
                    Some(VcpuEnd::Paused(Instant::now()))
                } else {
                    None
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => match port {
                abi::PORT_REPORT => {
                    let mut report = sh.partial.lock().unwrap_or_else(PoisonError::into_inner);
                    report.push(u32::try_from(data_u64(data) & 0xFFFF_FFFF).unwrap_or(0));
                    if let [kind, frame, lo, hi] = report[..] {
                        sh.reports
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Report {
                                kind,
                                frame,
                                value: u64::from(hi) << 32 | u64::from(lo),
                            });
                        report.clear();
                    }
                    None
                }
                abi::PORT_CONSOLE => {
                    if let Some(b) = data.first() {
                        sh.console
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(char::from(*b));
                    }
                    None
                }
                abi::PORT_EXIT => Some(VcpuEnd::Finished),
                abi::PORT_SLEEP => {
                    sleep_lo = data_u64(data) & 0xFFFF_FFFF;
                    None
                }
                p if p == abi::PORT_SLEEP + 4 => {
                    let due = (data_u64(data) & 0xFFFF_FFFF) << 32 | sleep_lo;
                    let wait = due.saturating_sub(sh.clock_us()).min(1000);
                    if wait > 0 && !sh.pause.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_micros(wait));
                    }
                    None
                }
                _ => None,
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                let us = sh.clock_us();
                let v = match port {
                    abi::PORT_CLOCK_LO => us & 0xFFFF_FFFF,
                    abi::PORT_CLOCK_HI => us >> 32,
                    _ => u64::MAX,
                };
                let bytes = v.to_le_bytes();
                let n = data.len().min(8);
                if let (Some(dst), Some(src)) = (data.get_mut(..n), bytes.get(..n)) {
                    dst.copy_from_slice(src);
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(VcpuEnd::Crashed("unexpected HLT exit".into())),
            Ok(other) => Some(VcpuEnd::Crashed(format!("vCPU exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VcpuEnd::Crashed(format!("KVM_RUN: {e}"))),
        };
        if let Some(end) = end {
            if matches!(end, VcpuEnd::Paused(_)) {
                complete_exit(&mut vcpu);
            }
            return (vcpu, end);
        }
    }
}

/// Complete the exit just served without running guest code (KVM finishes an MMIO or port
/// access only on the next `KVM_RUN`; until then the vCPU's state is not the state after the
/// access, so it must not be saved or migrated before this).
fn complete_exit(vcpu: &mut VcpuFd) {
    vcpu.set_kvm_immediate_exit(1);
    // EINTR is the expected answer: the pending access completed and no instruction ran.
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
}

/// The 32-bit register at byte `at` of a local APIC state.
fn lapic_word(lapic: &kvm_bindings::kvm_lapic_state, at: usize) -> Option<u32> {
    let b = lapic.regs.get(at..at + 4)?;
    let mut w = [0u8; 4];
    for (d, s) in w.iter_mut().zip(b) {
        *d = s.to_ne_bytes()[0];
    }
    Some(u32::from_le_bytes(w))
}
