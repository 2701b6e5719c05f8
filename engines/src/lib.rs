//! Engine, ring, execlist and context-status state of a mediated vGPU.
//!
//! Models the five gen8/gen9 command streamers ([`EngineId`]): the 4-dword ELSP port
//! with its partial-write state ([`ElspPort`]), context descriptors
//! ([`ContextDescriptor`]), the context status buffer ([`Csb`], [`CsbEntry`]), ring
//! registers with wrap arithmetic ([`RingRegs`]), bounded per-engine workload queues
//! ([`WorkloadQueue`]), and **quiesce** ([`Engines::quiesce`]): dispatch stops, in-flight
//! work is reported so the caller can let it finish, queued work stays queued.
//!
//! Also: the virtual execlist slots and the emulated execlist status register
//! ([`ExeclistState`], [`Engine::execlist_status`]); logical ring context images
//! ([`LrcState::parse`] / [`LrcState::emit`]); the CSB mirror in the guest's hardware
//! status page ([`hwsp_csb_event`], [`Csb::hwsp_image`]); and a weighted time-sliced
//! scheduler across vGPUs ([`Scheduler`]), driven by time passed in.
//!
//! # Guarantees
//!
//! - `no_std`, no allocation, no `unsafe`, no clocks or randomness.
//! - [`Engines::save`] copies state and never removes queued work: if a migration is
//!   cancelled, [`Engines::resume`] continues exactly where the engines were.
//! - [`Engines::validate`] / [`Engines::apply`] never panic on arbitrary bytes, bound
//!   every length (at most [`MAX_SAVE_LEN`] bytes are meaningful) and change nothing on
//!   error.
//!
//! # Payload format (version 1, all little-endian)
//!
//! ```text
//! header (4 bytes):   version u8 = 1 | engine_count u8 | reserved [u8; 2] = 0
//! per present engine, ascending id (72 bytes):
//!   id u8 (0 RCS, 1 BCS, 2 VCS, 3 VCS2, 4 VECS) | elsp_index u8 (0..4)
//!   csb_write_ptr u8 (0..6 or 7) | csb_read_ptr u8 (0..6 or 7)
//!   elsp_dwords [u32; 4] | csb_entries [u64; 6] | queue_len u8 (<= 16)
//!   execlist u8 (bit 0 active, bit 1 current slot, bit 2 write slot, bit 3 element;
//!                bits 7:4 = 0; idle => element 0; active => write != current)
//!   reserved [u8; 2] = 0
//!   then queue_len workload records, oldest first (20 bytes each):
//!     engine u8 (= id) | flags u8 (bit 0 schedule_in) | reserved [u8; 2] = 0
//!     ring_head u32 | ring_tail u32 | context_descriptor u64
//! ```
//!
//! There is no running-workload field: saving requires quiesced engines with nothing in
//! flight. The engine set must equal the target's present engines; nothing may follow
//! the last record. Ring registers live in the MMIO register file (`mmio` crate) and
//! migrate with it; the CSB entries/pointer and execlist slots here are authoritative and
//! are mirrored into the vregs with [`Engines::mirror`]. The `execlist` byte was a
//! reserved zero byte in earlier writers; zero is the reset execlist state, so their
//! payloads read unchanged.
//!
//! # Example
//!
//! ```
//! use vgpu_mig_engines::{ContextDescriptor, EngineId, EngineMask, Engines, Workload, MAX_SAVE_LEN};
//!
//! let mut src = Engines::new(EngineMask::RCS);
//! let desc = ContextDescriptor::from_bits(0x119);
//! let w = Workload { engine: EngineId::Rcs, desc, ring_head: 0, ring_tail: 0x40, schedule_in: true };
//! src.enqueue(w).unwrap();
//! src.elsp_write(EngineId::Rcs, 0xDEAD)?; // a partial ELSP sequence
//! assert!(src.quiesce().is_idle());
//!
//! let mut buf = [0u8; MAX_SAVE_LEN];
//! let n = src.save(&mut buf)?;
//! let mut dst = Engines::new(EngineMask::RCS);
//! let _ = dst.quiesce(); // the target stays stopped until the migration commits
//! dst.apply(&buf[..n])?;
//! assert_eq!(dst, src);
//!
//! // Cancelled migration: the source resumes with its queue intact.
//! src.resume();
//! assert_eq!(src.next_to_dispatch(EngineId::Rcs), Some(w));
//! # Ok::<(), vgpu_mig_engines::EngineError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "std")]
extern crate std;

mod desc;
mod elsp;
mod error;
mod hwsp;
mod id;
mod lrc;
mod ring;
mod sched;
mod section;
mod state;
mod workload;

pub use desc::{AddressingMode, ContextDescriptor, CsbEntry, check_submission};
pub use elsp::{CSB_ENTRIES, CSB_PTR_RESET, Csb, ElspPort};
pub use error::{EngineError, Fault};
pub use hwsp::{HWSP_CSB_DWORD, HwspLayout, HwspWrite, hwsp_csb_event};
pub use id::{EngineId, EngineMask, reg};
pub use lrc::{LRC_PAGE_SIZE, LRC_STATE_DWORDS, LRC_STATE_PAGE, LrcState, lrc_dword};
pub use ring::{HEAD_OFFSET_MASK, HEAD_WRAP_SHIFT, RING_GUARD, RingRegs, TAIL_OFFSET_MASK};
pub use sched::{
    BALANCE_PERIOD_NS, BALANCE_STAGES, DEFAULT_SLICE_NS, MAX_WEIGHT, PRIORITY_NS, Pick, Scheduler,
};
pub use section::EngineSection;
pub use state::{Engine, Engines, ExeclistState, MAX_SAVE_LEN, PAYLOAD_VERSION, QuiesceStatus};
pub use workload::{QUEUE_CAPACITY, Workload, WorkloadQueue};
