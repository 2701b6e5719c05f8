//! `cargo fuzz run migstream_roundtrip`: the body is [`vgpu_fuzz::migstream_roundtrip`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::migstream_roundtrip(data));
