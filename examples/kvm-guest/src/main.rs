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
    global_asm!(
        ".section .text._start, \"ax\"",
        ".global _start",
        "_start:",
        "mov rsp, {top}",
        "call {main}",
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
        bottom = const abi::STACK_BOTTOM,
        exit = const abi::PORT_EXIT,
        main = sym rust_main,
    );

    struct Metal;

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
        fn relax(&mut self) {
            core::hint::spin_loop();
        }
    }

    extern "C" fn rust_main() {
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
