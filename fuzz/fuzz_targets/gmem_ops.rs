//! `cargo fuzz run gmem_ops`: the body is [`vgpu_fuzz::gmem_ops`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::gmem_ops(data));
