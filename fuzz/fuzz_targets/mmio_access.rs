//! `cargo fuzz run mmio_access`: the body is [`vgpu_fuzz::mmio_access`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::mmio_access(data));
