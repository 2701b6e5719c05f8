//! `cargo fuzz run vgpu_restore`: the body is [`vgpu_fuzz::vgpu_restore`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::vgpu_restore(data));
