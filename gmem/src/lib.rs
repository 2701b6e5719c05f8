//! Graphics memory as pages: guest memory maps with a dense frame index, dirty bitmaps with
//! fast harvest, page content hashing, VFIO-style dirty reports, and pre-copy policies.
//!
//! What this crate guarantees:
//!
//! * `no_std`, no allocation, no `unsafe`; bitmaps live in caller storage.
//! * No panics: every out-of-range index or size mismatch is a [`GmemError`].
//! * Deterministic: no clocks (time is an input to [`Policy::on_round`]), no randomness.
//! * Harvest is O(words) and enumeration O(words + set bits).
//! * [`DirtyReport`] answers VFIO-DMA-logging-shaped requests (`{iova, length, page_size}`,
//!   LSB-first bitmap, read-and-clear) over guest-physical ranges, holes and memory above
//!   4 GiB included, rejecting malformed requests with a [`ReportError`].
//! * Every [`PrecopyPolicy`] switches to stop-and-copy in a bounded number of rounds for any
//!   statistics (the library [`Policy`] within `max_rounds`, default 30), except
//!   [`QemuPolicy`] without an iteration limit, which like QEMU may never converge.
//!
//! # Example
//!
//! ```
//! use vgpu_mig_gmem::{words_for, Decision, DirtyBitmap, DirtyReport, DmaRange, FrameRange, GuestMemoryMap};
//! use vgpu_mig_gmem::{Policy, PolicyConfig, PrecopyPolicy, QemuConfig, QemuPolicy, RoundStats, SwitchReason};
//! use gtt::Gfn;
//!
//! // 2 GiB of RAM below 4 GiB and 1 GiB above it, with a hole in between.
//! let map = GuestMemoryMap::new(&[
//!     FrameRange::new(Gfn::new(0), 0x8_0000)?,
//!     FrameRange::new(Gfn::new(0x10_0000), 0x4_0000)?,
//! ])?;
//! assert_eq!(map.frames(), 0xC_0000);
//!
//! let bits = usize::try_from(map.frames()).unwrap_or(0);
//! let mut live = vec_storage::<{ words_for(0xC_0000) }>();
//! let mut snap = vec_storage::<{ words_for(0xC_0000) }>();
//! let mut dirty = DirtyBitmap::new(&mut live, bits)?;
//! let mut round = DirtyBitmap::new(&mut snap, bits)?;
//!
//! let page = map.index_of(Gfn::new(0x10_0002)).ok_or(vgpu_mig_gmem::GmemError::OutOfRange)?;
//! dirty.set(page)?;
//! dirty.harvest_into(&mut round)?;
//! assert_eq!(dirty.count(), 0);
//! let frames: Vec<Gfn> = round.iter_ones().filter_map(|b| map.frame_at(b)).collect();
//! assert_eq!(frames, [Gfn::new(0x10_0002)]);
//!
//! // The same dirt as a VMM sees it: a DMA-logging report of 2 MiB pages from 4 GiB.
//! dirty.set(page)?;
//! let mut out = [0u64; 1];
//! let range = DmaRange { iova: 1 << 32, length: 64 << 21 };
//! let found = DirtyReport::new(&map, &mut dirty).map_err(|_| vgpu_mig_gmem::GmemError::SizeMismatch)?
//!     .report(range, 1 << 21, &mut out).map_err(|_| vgpu_mig_gmem::GmemError::OutOfRange)?;
//! assert_eq!((found, out), (1, [1]));
//!
//! // Policies compare on the same statistics.
//! let round0 = RoundStats { dirty_pages_left: 256, bytes_sent: 1 << 30,
//!                           elapsed_us: 1_000_000, ..RoundStats::default() };
//! let mut qemu = QemuPolicy::new(QemuConfig::default());
//! let mut ours = Policy::new(PolicyConfig { minimize_downtime: false, ..Default::default() });
//! // 1 MiB left at 1 GiB/s: 977 µs, under both policies' 300 ms limit.
//! let met = Decision::StopAndCopy(SwitchReason::DowntimeMet { predicted_us: 977 });
//! assert_eq!((qemu.on_round(round0), ours.on_round(round0)), (met, met));
//! assert_eq!(ours.status().bytes_sent, 1 << 30);
//! # fn vec_storage<const N: usize>() -> Vec<u64> { vec![0; N] }
//! # Ok::<(), vgpu_mig_gmem::GmemError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod baseline;
pub mod bitmap;
mod error;
pub mod hash;
pub mod map;
pub mod policy;
pub mod report;

pub use baseline::{QEMU_MAX_BANDWIDTH, QemuConfig, QemuPolicy, StopAndCopy};
#[cfg(target_has_atomic = "32")]
pub use bitmap::{AtomicDirtyBitmap, AtomicWord, atomic_words_for};
pub use bitmap::{DirtyBitmap, Ones, words_for};
pub use error::GmemError;
/// The guest frame number the memory map is in (from the `gtt` crate, published as
/// `vgpu-mig-gtt`), so a user of this crate alone can name it.
pub use gtt::Gfn;
pub use hash::{PAGE_BYTES, is_zero_page, page_hash};
pub use map::{FrameRange, GFN_LIMIT, GuestMemoryMap, MAX_REGIONS};
pub use policy::{
    Decision, MigrationStatus, Policy, PolicyConfig, PrecopyPolicy, RoundStats, STALL_ROUNDS,
    SwitchReason, ThrottleConfig,
};
pub use report::{DirtyReport, DmaRange, MAX_DMA_RANGES, ReportError, check_ranges};
