//! `cargo fuzz run migstream_segmented`: the body is [`vgpu_fuzz::migstream_segmented`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::migstream_segmented(data));
