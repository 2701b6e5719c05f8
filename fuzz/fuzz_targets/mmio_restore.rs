//! `cargo fuzz run mmio_restore`: the body is [`vgpu_fuzz::mmio_restore`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::mmio_restore(data));
