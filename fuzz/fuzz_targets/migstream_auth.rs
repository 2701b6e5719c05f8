//! `cargo fuzz run migstream_auth`: the body is [`vgpu_fuzz::migstream_auth`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_fuzz::migstream_auth(data));
