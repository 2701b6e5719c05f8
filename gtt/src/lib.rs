//! GTT entry formats, the graphics-memory partition of a vGPU, and its guest-view GGTT.
//!
//! What this crate guarantees:
//!
//! * `no_std`, no allocation, no `unsafe`; every table lives in caller storage.
//! * No panics on any input: untrusted bytes (a migration stream) and guest writes are
//!   bounded and checked, and every failure is a small `Copy` [`GttError`] that says whose
//!   fault it is ([`GttError::fault`]).
//! * Deterministic: no clocks, no randomness.
//! * Addresses are typed ([`GmAddr`], [`GttIndex`], [`Gfn`], [`Hfn`], [`Gpa`]) with checked
//!   arithmetic only.
//!
//! The save format of the guest-view GGTT (runs of entries) is specified in [`runs`].
//!
//! # Example
//!
//! ```
//! use vgpu_mig_gtt::{
//!     apply_runs, validate_runs, Generation, GgttEntry, GgttSlices, GmAddr, GmRange, Gfn,
//!     GttIndex, Partition, SaveCursor,
//! };
//!
//! // 64 KiB aperture at guest GM 0, 32 KiB hidden slice at guest GM 1 GiB.
//! let partition = Partition::new(
//!     GmRange::new(GmAddr::new(0), 0x1_0000)?,
//!     GmRange::new(GmAddr::new(1 << 30), 0x8000)?,
//! )?;
//! let mut storage = [0u64; vgpu_mig_gtt::storage_len(0x1_0000, 0x8000)];
//! let mut src = GgttSlices::new(partition, &mut storage)?;
//! for i in 0..4 {
//!     src.write(GttIndex::new(i), GgttEntry::present_frame(Gfn::new(0x100 + u64::from(i)))?)?;
//! }
//! assert_eq!(src.read(GttIndex::new(0))?.into_bits(), 0x10_0001);
//!
//! let mut buf = [0u8; 256];
//! let progress = src.save_runs(SaveCursor::START, &mut buf)?;
//! assert_eq!(progress.next, None);
//! let payload = &buf[..progress.written];
//! assert_eq!(payload.len(), 24); // one LINEAR run
//!
//! let in_guest_ram = |f: Gfn| f.get() < 0x10_0000;
//! let stats = validate_runs(payload, &partition, &in_guest_ram, Generation::Gen9)?;
//! assert_eq!((stats.runs, stats.entries), (1, 4));
//!
//! let mut storage2 = [0u64; vgpu_mig_gtt::storage_len(0x1_0000, 0x8000)];
//! let mut dst = GgttSlices::new(partition, &mut storage2)?;
//! assert_eq!(apply_runs(payload, &mut dst)?, 4);
//! assert_eq!(dst.read(GttIndex::new(3))?.frame(), Gfn::new(0x103));
//! # Ok::<(), vgpu_mig_gtt::GttError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod addr;
pub mod entry;
mod error;
pub mod frames;
pub mod partition;
pub mod ppgtt;
pub mod runs;
mod slices;

pub use addr::{Gfn, GmAddr, Gpa, GttIndex, Gva, Hfn, PAGE_SHIFT, PAGE_SIZE};
pub use entry::{EntryFormat, Generation, GgttEntry};
pub use error::{Fault, GttError};
pub use frames::GuestFrames;
pub use partition::{GmRange, HostPlacement, Partition, Slice, storage_len};
pub use ppgtt::{
    Entered, Leaf, Level, PageSize, PpgttRoot, ReadGuest, RootTables, TableKind, TableMemo,
    Translation, VisitLimits, VisitSummary, WalkFault, check_tables, visit_leaves, walk,
};
pub use runs::{
    GgttPendingSection, GgttRunsSection, RunStats, SaveCursor, SaveProgress, apply_runs,
    replace_runs, restore_runs, validate_runs, validate_runs_in,
};
pub use slices::{
    GgttSlices, HalfWrite, MAX_PENDING_HALVES, MAX_PENDING_LEN, PendingHalf, validate_pending,
};
