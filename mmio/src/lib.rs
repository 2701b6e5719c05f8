//! Virtual MMIO register file of a mediated (GVT-g style) vGPU.
//!
//! The crate models the 2 MiB MMIO BAR a guest driver sees: a table of register
//! descriptors per platform ([`SKL`] for gen9), a vreg store in caller storage
//! ([`RegFile`] over `&mut [u32]` of [`MMIO_DWORDS`] dwords), trap-and-emulate reads and
//! writes with per-register semantics (read-only bits, masked "mode" registers,
//! write-1-to-clear, write-only ports) and a [`RegHooks`] seam for side effects, the
//! PVINFO page ([`PvInfo`]), and a sparse save/restore of the migratable registers.
//!
//! # Guarantees
//!
//! - `no_std`, no allocation, no `unsafe`, no clocks or randomness.
//! - No guest access and no payload byte sequence can make this crate panic: accesses
//!   are range/alignment checked and return [`MmioError`]; [`validate_sparse`] bounds
//!   every length and makes progress of at least 12 bytes per run.
//! - [`RegFile::apply_sparse`] validates the whole payload before changing anything.
//! - Nothing a guest writes is lost in a migration: table registers of class
//!   [`SaveClass::Migrate`] travel when they differ from reset, and every offset outside the
//!   table (outside the PVINFO page) travels as a plain value when it is not 0; the restore
//!   writes the latter verbatim after the table registers ([`RegFile::apply_sparse`]).
//!   [`Platform::max_sparse_len`] bounds the payload.
//! - Storage: the caller provides [`Platform::storage_dwords`] dwords ([`MMIO_DWORDS`] for
//!   [`SKL`]); the register file adds 64 bytes of its own (a summary of the 4 KiB blocks
//!   that hold untracked values, so a save scans only those).
//!
//! # Example
//!
//! ```
//! use vgpu_mig_mmio::{AccessSize, NoHooks, RegFile, SKL, MMIO_DWORDS, validate_sparse};
//!
//! let mut vregs = [0u32; MMIO_DWORDS];
//! let mut regs = RegFile::new(&SKL, &mut vregs)?;
//! // GFX_MODE of the render engine is a masked register: enable bit 15.
//! regs.write(0x229C, AccessSize::Dword, 0x8000_8000, &mut NoHooks)?;
//! assert_eq!(regs.read(0x229C, AccessSize::Dword)?, 0x8000);
//!
//! let mut buf = [0u8; 64];
//! let n = regs.save_sparse(&mut buf)?;
//! assert_eq!(n, 12); // one run: offset, count = 1, value
//! validate_sparse(&SKL, &buf[..n])?;
//!
//! let mut target_vregs = [0u32; MMIO_DWORDS];
//! let mut target = RegFile::new(&SKL, &mut target_vregs)?;
//! target.apply_sparse(&buf[..n], &mut NoHooks)?;
//! assert_eq!(target.peek(0x229C), 0x8000);
//! # Ok::<(), vgpu_mig_mmio::MmioError>(())
//! ```
//!
//! # Masked registers
//!
//! For a [`RegFlags::MODE_MASK`] register, a written dword's upper 16 bits select which
//! of the lower 16 bits take the written value; the vreg stores only the lower 16 bits,
//! so the upper half always reads back as 0 (see [`RegDesc::apply_write`]).
#![no_std]
#![forbid(unsafe_code)]

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "std")]
extern crate std;

mod desc;
mod error;
mod platform;
mod pvinfo;
mod regfile;
mod section;
mod sparse;
mod store;

pub use desc::{EventKind, RegDesc, RegFlags, SaveClass};
pub use error::{Fault, MmioError};
pub use platform::{
    GEN9_IRQ_BLOCKS, IrqBlock, MASTER_IRQ, MASTER_IRQ_ENABLE, MMIO_DWORDS, MMIO_SIZE, Platform,
    SKL, SKL_REGS,
};
pub use pvinfo::{PVINFO_BASE, PVINFO_MAGIC, PVINFO_SIZE, PvInfo, in_pvinfo, off as pvinfo_off};
pub use regfile::{AccessSize, NoHooks, RegEvent, RegFile, RegHooks};
pub use section::RegistersSection;
pub use sparse::{SPARSE_VERSION, sparse_value, validate_sparse};
pub use store::VregStore;
