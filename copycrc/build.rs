//! Sets `copycrc_vpclmulqdq` when rustc is 1.89 or later: that release stabilised the
//! `VPCLMULQDQ` and AVX-512 intrinsics the wide kernels use. Older compilers (down to the
//! workspace MSRV) build the crate with the SSE `PCLMULQDQ` kernel and the portable one only.

use std::{env, process::Command};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(copycrc_vpclmulqdq)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
    if minor_rustc_version().is_some_and(|minor| minor >= 89) {
        println!("cargo:rustc-cfg=copycrc_vpclmulqdq");
    }
}

/// The minor version of the compiler cargo builds this crate with (`rustc 1.MINOR.PATCH ...`).
fn minor_rustc_version() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    if parts.next()? != "1" {
        return None;
    }
    parts.next()?.parse().ok()
}
