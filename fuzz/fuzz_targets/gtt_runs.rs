//! `cargo fuzz run gtt_runs`: the body is [`vgpu_fuzz::gtt_runs`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::gtt_runs(data));
