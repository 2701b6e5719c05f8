//! `cargo fuzz run migstream_decode`: the body is [`vgpu_fuzz::migstream_decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::migstream_decode(data));
