//! Graphics memory as pages: guest memory maps with a dense frame index, dirty bitmaps with
//! fast harvest, page content hashing, and the pre-copy policy.
//!
//! What this crate guarantees:
//!
//! * `no_std`, no allocation, no `unsafe`; bitmaps live in caller storage.
//! * No panics: every out-of-range index or size mismatch is a [`GmemError`].
//! * Deterministic: no clocks (time is an input to [`Policy::on_round`]), no randomness.
//! * Harvest is O(words) and enumeration O(words + set bits).
//!
//! # Example
//!
//! ```
//! use gmem::{words_for, DirtyBitmap, FrameRange, GuestMemoryMap};
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
//! let page = map.index_of(Gfn::new(0x10_0002)).ok_or(gmem::GmemError::OutOfRange)?;
//! dirty.set(page)?;
//! dirty.harvest_into(&mut round)?;
//! assert_eq!(dirty.count(), 0);
//! let frames: Vec<Gfn> = round.iter_ones().filter_map(|b| map.frame_at(b)).collect();
//! assert_eq!(frames, [Gfn::new(0x10_0002)]);
//! # fn vec_storage<const N: usize>() -> Vec<u64> { vec![0; N] }
//! # Ok::<(), gmem::GmemError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod bitmap;
mod error;
pub mod hash;
pub mod map;
pub mod policy;

#[cfg(target_has_atomic = "64")]
pub use bitmap::AtomicDirtyBitmap;
pub use bitmap::{DirtyBitmap, Ones, words_for};
pub use error::GmemError;
pub use hash::{PAGE_BYTES, is_zero_page, page_hash};
pub use map::{FrameRange, GFN_LIMIT, GuestMemoryMap, MAX_REGIONS};
pub use policy::{Decision, Policy, PolicyConfig, RoundStats, STALL_ROUNDS, SwitchReason};
