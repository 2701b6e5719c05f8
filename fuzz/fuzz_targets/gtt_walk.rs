//! `cargo fuzz run gtt_walk`: the body is [`vgpu_fuzz::gtt_walk`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::gtt_walk(data));
