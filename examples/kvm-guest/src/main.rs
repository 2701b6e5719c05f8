//! The guest image: entered by the VMM in 64-bit mode at `_start` with the low 4 GiB identity
//! mapped, it runs the vGPU driver ([`kvm_guest::guest_main`]), clears its stack (so that what is
//! left in RAM depends only on the driver's progress, never on clock values it compared) and
//! tells the VMM it has finished.
//!
//! Built for `x86_64-unknown-none` (the VMM's tests and `cargo xtask` do it); on any other target
//! this binary only says so.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod bare {
    use core::arch::{asm, global_asm};

    use kvm_guest::{Platform, abi};

    // Entry: a fresh stack, the driver, then zero the stack the driver used and report the end.
    // The interrupt handlers: the vGPU's MSI (end of interrupt to the local APIC) and the APIC's
    // spurious vector (no EOI); both only wake the vCPU from `hlt`.
    global_asm!(
        ".section .text._start, \"ax\"",
        ".global _start",
        "_start:",
        "mov rsp, {top}",
        "call {main}",
        "jmp 3f",
        ".global kvm_guest_irq",
        "kvm_guest_irq:",
        "push rax",
        "mov rax, {eoi}",
        "mov dword ptr [rax], 0",
        "pop rax",
        "iretq",
        ".global kvm_guest_spurious",
        "kvm_guest_spurious:",
        "iretq",
        "3:",
        "mov rdi, {bottom}",
        "mov rcx, rsp",
        "sub rcx, rdi",
        "xor eax, eax",
        "cld",
        "rep stosb",
        "mov dx, {exit}",
        "out dx, al",
        "2:",
        "hlt",
        "jmp 2b",
        top = const abi::STACK_TOP,
        eoi = const abi::LAPIC + 0xB0,
        bottom = const abi::STACK_BOTTOM,
        exit = const abi::PORT_EXIT,
        main = sym rust_main,
    );

    struct Metal;

    unsafe extern "C" {
        fn kvm_guest_irq();
        fn kvm_guest_spurious();
    }

    /// The interrupt descriptor table: 256 gates, two of them present.
    #[repr(C, align(16))]
    struct Idt([u64; 512]);

    static mut IDT: Idt = Idt([0; 512]);

    /// A 64-bit interrupt gate to `handler` (code selector 8, present, DPL 0).
    fn gate(handler: u64) -> [u64; 2] {
        let lo =
            (handler & 0xFFFF) | (0x8 << 16) | (0x8E00 << 32) | ((handler >> 16) & 0xFFFF) << 48;
        [lo, handler >> 32]
    }

    /// Load the IDT and enable the local APIC (spurious vector 0xFF); interrupts stay masked
    /// (IF = 0) except inside `wait_interrupt`.
    fn init_interrupts() {
        let irq = gate(kvm_guest_irq as *const () as u64);
        let spurious = gate(kvm_guest_spurious as *const () as u64);
        let idt = &raw mut IDT;
        for (vector, g) in [(usize::from(abi::GPU_VECTOR), irq), (0xFF, spurious)] {
            // SAFETY: single-threaded setup of the guest's own IDT before interrupts are enabled.
            if let Some(slot) = unsafe { (*idt).0.get_mut(2 * vector..2 * vector + 2) } {
                slot.copy_from_slice(&g);
            }
        }
        let mut ptr = [0u8; 10];
        ptr[..2].copy_from_slice(&(512u16 * 8 - 1).to_le_bytes());
        ptr[2..].copy_from_slice(&(idt as u64).to_le_bytes());
        // SAFETY: `ptr` describes the static IDT above; the APIC register is identity-mapped.
        unsafe {
            asm!("lidt [{}]", in(reg) ptr.as_ptr(), options(nostack));
            core::ptr::write_volatile((abi::LAPIC + 0xF0) as *mut u32, 0x1FF);
        }
    }

    fn outl(port: u16, v: u32) {
        // SAFETY: port I/O to the VMM's ports; no memory is touched.
        unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
    }

    fn inl(port: u16) -> u32 {
        let v: u32;
        // SAFETY: port I/O to the VMM's ports; no memory is touched.
        unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) };
        v
    }

    impl Platform for Metal {
        fn mmio_read32(&mut self, gpa: u64) -> u32 {
            // SAFETY: identity-mapped device memory (ECAM or BAR0), trapped by the VMM.
            unsafe { core::ptr::read_volatile(gpa as *const u32) }
        }
        fn mmio_read64(&mut self, gpa: u64) -> u64 {
            // SAFETY: as `mmio_read32`; an aligned 8-byte access.
            unsafe { core::ptr::read_volatile(gpa as *const u64) }
        }
        fn mmio_write32(&mut self, gpa: u64, value: u32) {
            // SAFETY: as `mmio_read32`.
            unsafe { core::ptr::write_volatile(gpa as *mut u32, value) }
        }
        fn ram_read32(&mut self, gpa: u64) -> u32 {
            // SAFETY: identity-mapped guest RAM above the image, owned by the driver (the GPU
            // writes some of it: a volatile read sees those writes).
            unsafe { core::ptr::read_volatile(gpa as *const u32) }
        }
        fn ram_read64(&mut self, gpa: u64) -> u64 {
            // SAFETY: as `ram_read32`.
            unsafe { core::ptr::read_volatile(gpa as *const u64) }
        }
        fn ram_write(&mut self, gpa: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                // SAFETY: identity-mapped guest RAM in the driver's pool.
                unsafe { core::ptr::write_volatile((gpa + i as u64) as *mut u8, *b) }
            }
        }
        fn report(&mut self, kind: u32, frame: u32, value: u64) {
            outl(abi::PORT_REPORT, kind);
            outl(abi::PORT_REPORT, frame);
            outl(abi::PORT_REPORT, (value & 0xFFFF_FFFF) as u32);
            outl(abi::PORT_REPORT, (value >> 32) as u32);
        }
        fn clock_us(&mut self) -> u64 {
            let lo = u64::from(inl(abi::PORT_CLOCK_LO));
            let hi = u64::from(inl(abi::PORT_CLOCK_HI));
            hi << 32 | lo
        }
        fn sleep_until(&mut self, us: u64) {
            outl(abi::PORT_SLEEP, (us & 0xFFFF_FFFF) as u32);
            outl(abi::PORT_SLEEP + 4, (us >> 32) as u32);
        }
        fn wait_interrupt(&mut self) {
            // `sti` takes effect after the next instruction: an interrupt already pending wakes
            // the `hlt` at once, none is lost between the caller's last look and the sleep.
            // SAFETY: the IDT and the handlers are set up; they preserve every register.
            unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        }
    }

    extern "C" fn rust_main() {
        init_interrupts();
        kvm_guest::guest_main(&mut Metal);
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        use core::fmt::Write;
        struct Console;
        impl Write for Console {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                for b in s.bytes() {
                    // SAFETY: a byte to the debug console port.
                    unsafe {
                        asm!("out dx, al", in("dx") abi::PORT_CONSOLE, in("al") b, options(nomem, nostack))
                    };
                }
                Ok(())
            }
        }
        let _ = writeln!(Console, "guest panic: {info}");
        Metal.report(abi::REPORT_FAIL, 0, u64::MAX);
        loop {
            // SAFETY: stop here; the VMM sees the failure report.
            unsafe { asm!("hlt", options(nomem, nostack)) };
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    #[allow(
        clippy::print_stdout,
        reason = "the host build of the guest only says what it is"
    )]
    {
        println!("kvm-guest is a bare-metal image: build it with --target x86_64-unknown-none");
    }
}
