//! One mediated vGPU and its live migration.
//!
//! This is the crate a hypervisor author imports. It composes the component crates into a vGPU
//! instance ([`instance::Vgpu`]: config space, trapped BAR0 with the register file and the GGTT
//! window, engines, GPU-side dirty log), follows the Linux VFIO migration v2 state machine
//! ([`fsm`]), and moves a running vGPU with two sans-IO sessions: [`source::SourceSession`] turns
//! it into a stream (pre-copy rounds of graphics memory under the `gmem` policy, then the
//! stop-and-copy), [`dest::DestSession`] reads a stream into a stopped vGPU, staging and
//! validating device state and committing it only when all of it is valid. [`vfio::VfioMigration`]
//! drives both through VFIO `device_state` requests, one arc at a time. Page traffic can be split
//! over several channels ([`channel`]), and a VMM that migrates guest RAM itself can take the
//! GPU's writes as a dirty report instead ([`source::MemoryMode::Report`]).
//!
//! Guarantees:
//! - `no_std`, no allocator in any migration path: storage is the caller's ([`instance::VgpuStorage`],
//!   the sessions' bitmaps, scratch and staging buffers), so a vGPU can live in `static`s.
//! - Sans-IO and deterministic: no clocks, no threads, no I/O; time is an argument.
//! - The destination treats the stream as hostile: every length is bounded, every GTT entry must
//!   point into the guest's memory, registers must be on the save list with their read-only bits
//!   intact. A rejected stream leaves the vGPU's device state untouched.
//! - The source never loses guest work: saving copies, and cancelling resumes exactly.
//!
//! The embedder implements three traits ([`traits::GuestMemory`], [`traits::HostGtt`],
//! [`traits::CpuDirtyLog`]). Feature `sim` adds the reference device (module `sim`): a software GPU and a
//! guest driver model that run every path without hardware, deterministically.
//!
//! MSRV: the workspace `rust-version` (1.88).
//!
//! # Example: the next VFIO arc
//!
//! ```
//! use vgpu::fsm::{Caps, MigState, next_arc};
//!
//! // A device with PRE_COPY but no P2P, asked to go from RUNNING to STOP_COPY, steps through STOP.
//! let caps = Caps::STOP_COPY.with(Caps::PRE_COPY);
//! assert_eq!(next_arc(MigState::Running, MigState::StopCopy, caps), Ok(MigState::Stop));
//! assert_eq!(next_arc(MigState::Stop, MigState::StopCopy, caps), Ok(MigState::StopCopy));
//! // From PRE_COPY the saving stream continues straight into STOP_COPY.
//! assert_eq!(next_arc(MigState::PreCopy, MigState::StopCopy, caps), Ok(MigState::StopCopy));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        reason = "tests"
    )
)]
#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod channel;
pub mod cmd;
pub mod content;
pub mod dest;
pub mod error;
pub mod fsm;
pub mod instance;
pub mod ppgtt;
#[cfg(feature = "sim")]
pub mod sim;
pub mod source;
#[cfg(feature = "alloc")]
pub mod testplan;
pub mod traits;
pub mod vfio;
