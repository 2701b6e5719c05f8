//! The guest image: building `kvm-guest` for `x86_64-unknown-none` and loading its ELF segments.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kvm_guest::abi;

use crate::memory::GuestRam;

/// Why there is no guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// The bare-metal target's standard library is not installed (`rustup target add
    /// x86_64-unknown-none`).
    TargetMissing,
    /// The build failed.
    Build(String),
    /// The file is not a loadable guest image.
    Elf(String),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TargetMissing => {
                write!(
                    f,
                    "the x86_64-unknown-none target is not installed (rustup target add x86_64-unknown-none)"
                )
            }
            Self::Build(s) => write!(f, "building the guest: {s}"),
            Self::Elf(s) => write!(f, "guest image: {s}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// The workspace root (two levels above this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether the `x86_64-unknown-none` standard library is installed in the toolchain that builds
/// the guest.
pub fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|s| {
            Path::new(s.trim())
                .join("lib/rustlib/x86_64-unknown-none")
                .is_dir()
        })
}

/// Build the guest (once per process) with `cargo build -p kvm-guest --release --target
/// x86_64-unknown-none` into `target/kvm-guest` (a target directory of its own, so a build from
/// inside `cargo test` never waits for the outer build's lock), and return the ELF bytes.
pub fn guest_image() -> Result<Vec<u8>, ImageError> {
    static IMAGE: OnceLock<Result<Vec<u8>, ImageError>> = OnceLock::new();
    IMAGE.get_or_init(build).clone()
}

fn build() -> Result<Vec<u8>, ImageError> {
    if !target_installed() {
        return Err(ImageError::TargetMissing);
    }
    let root = workspace_root();
    let target_dir = root.join("target/kvm-guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--locked",
            "--release",
            "-p",
            "kvm-guest",
            "--target",
            "x86_64-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir)
        .output()
        .map_err(|e| ImageError::Build(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("can't find crate for `core`") {
            return Err(ImageError::TargetMissing);
        }
        return Err(ImageError::Build(
            err.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        ));
    }
    let path = target_dir.join("x86_64-unknown-none/release/kvm-guest");
    std::fs::read(&path).map_err(|e| ImageError::Build(format!("{}: {e}", path.display())))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ImageError> {
    let s = b
        .get(at..at + 2)
        .ok_or_else(|| ImageError::Elf("truncated".into()))?;
    let mut a = [0u8; 2];
    a.copy_from_slice(s);
    Ok(u16::from_le_bytes(a))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ImageError> {
    let s = b
        .get(at..at + 8)
        .ok_or_else(|| ImageError::Elf("truncated".into()))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ImageError> {
    let s = b
        .get(at..at + 4)
        .ok_or_else(|| ImageError::Elf("truncated".into()))?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Ok(u32::from_le_bytes(a))
}

/// Load the PT_LOAD segments of an ELF64 x86-64 executable linked at [`abi::IMAGE`] into RAM
/// (file bytes, then zeros up to the memory size). Every segment must lie between the image
/// base and the stack.
pub fn load_elf(ram: &GuestRam, elf: &[u8]) -> Result<(), ImageError> {
    let bad = |s: &str| ImageError::Elf(s.into());
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF64 file"));
    }
    if u16_at(elf, 18)? != 62 {
        return Err(bad("not x86-64"));
    }
    if u64_at(elf, 24)? != abi::IMAGE {
        return Err(bad("entry point is not the image base"));
    }
    let phoff = usize::try_from(u64_at(elf, 32)?).map_err(|_| bad("phoff"))?;
    let phentsize = usize::from(u16_at(elf, 54)?);
    let phnum = usize::from(u16_at(elf, 56)?);
    let mut loaded = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? != 1 {
            continue; // not PT_LOAD
        }
        let off = usize::try_from(u64_at(elf, ph + 8)?).map_err(|_| bad("offset"))?;
        let paddr = u64_at(elf, ph + 24)?;
        let filesz = usize::try_from(u64_at(elf, ph + 32)?).map_err(|_| bad("size"))?;
        let memsz = u64_at(elf, ph + 40)?;
        let end = paddr
            .checked_add(memsz)
            .ok_or_else(|| bad("segment overflows"))?;
        if paddr < abi::IMAGE || end > abi::STACK_BOTTOM || (filesz as u64) > memsz {
            return Err(bad("segment outside the image area"));
        }
        let data = elf
            .get(off..off + filesz)
            .ok_or_else(|| bad("segment beyond the file"))?;
        ram.write_at(paddr, data).map_err(|_| bad("RAM"))?;
        let zeros = vec![0u8; usize::try_from(memsz - filesz as u64).map_err(|_| bad("size"))?];
        ram.write_at(paddr + filesz as u64, &zeros)
            .map_err(|_| bad("RAM"))?;
        loaded += 1;
    }
    if loaded == 0 {
        return Err(bad("no loadable segment"));
    }
    Ok(())
}
