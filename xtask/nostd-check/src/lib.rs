//! Link check: every library crate, no_std, no allocator, our own panic handler.
#![no_std]

// Reference one item from each crate so the linker really pulls them in.
#[doc(hidden)]
pub use {copycrc as _c, engines as _e, gmem as _gm, gtt as _g, migstream as _m, mmio as _r, vgpu as _v};

pub mod embed;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
