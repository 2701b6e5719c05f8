//! `cargo fuzz run engines_restore`: the body is [`vgpu_fuzz::engines_restore`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::engines_restore(data));
