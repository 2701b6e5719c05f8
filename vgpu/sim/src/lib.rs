//! The reference device of [`vgpu_mig`](vgpu): a software GPU and a guest driver model that run
//! every migration path without hardware, deterministically, and the test tooling built on them.
//!
//! - [`SimMemory`]: guest memory (with a hole and frames above 4 GiB if asked) and the CPU dirty log.
//! - [`SimHost`]: a host GGTT that records how the vGPU's slices are shadowed on this host.
//! - [`RefGpu`]: executes command streams from ring buffers and batch buffers through the vGPU's own
//!   GGTT translation, with execlist submission, CSB completion (mirrored into the hardware status
//!   page) and interrupt bits as the guest driver sees them. Commands: see [`cmd`].
//! - [`GuestDriver`]: writes commands, updates GGTT entries (in 4-byte halves) and submits work through
//!   the ELSP one dword at a time, the way i915 does, so a migration can land between any two guest
//!   accesses; its workloads are the [`Profile`]s.
//! - [`Machine`]: the four together, stepped on a modeled clock.
//! - [`scenario`]: a source and a destination machine, one live migration between them on a
//!   modeled link, and the snapshots the oracle compares.
//! - [`testplan`]: the hardware test plan as data and a runner generic over the platform
//!   ([`testplan::Backend`]); [`testplan::reference`] runs it on the reference device.
//! - [`campaign`]: the corruption campaign (every damaged stream must be rejected cleanly).
//! - [`Rng`]: the workspace's one deterministic generator (splitmix64).
//!
//! Same seed, same bytes: nothing here reads a clock or an entropy source.
//!
//! # What it needs
//!
//! The simulator is test tooling for hosts, not a migration path: it allocates (feature `alloc`,
//! on by default), and its scenarios and campaign build strings and maps. Without `alloc` the
//! crate is only [`cmd`] and [`Rng`], `no_std` and allocation-free, for guest drivers that run
//! bare metal (the KVM example's guest). Feature `std` turns on the library's `std` as well.
//!
//! ```
//! use vgpu_mig_sim::testplan::{InjectedFault, Workload, full_plan};
//! use vgpu_mig_sim::Rng;
//!
//! let plan = full_plan();
//! assert!(plan.iter().any(|s| s.workload == Workload::Media && s.fault == InjectedFault::Cancel));
//! // Same seed, same sequence.
//! assert_eq!(Rng::new(7).next_u64(), Rng::new(7).next_u64());
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

pub mod cmd;
mod rng;

#[cfg(feature = "alloc")]
pub mod campaign;
#[cfg(feature = "alloc")]
mod driver;
#[cfg(feature = "alloc")]
mod gpu;
#[cfg(feature = "alloc")]
mod machine;
#[cfg(feature = "alloc")]
mod memory;
#[cfg(feature = "alloc")]
pub mod scenario;
#[cfg(feature = "alloc")]
pub mod testplan;

#[cfg(feature = "alloc")]
pub use driver::{DriverStateError, Guest, GuestDriver, Profile, layout};
#[cfg(feature = "alloc")]
pub use gpu::{GpuStats, RefGpu};
#[cfg(feature = "alloc")]
pub use machine::{EngineTime, Machine, MachineStorage};
#[cfg(feature = "alloc")]
pub use memory::{ChannelMemory, SimCpuLog, SimHost, SimMemory};
pub use rng::Rng;
