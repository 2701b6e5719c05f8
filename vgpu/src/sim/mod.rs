//! The reference device: a software GPU and a guest driver model, for running every migration path
//! without hardware, deterministically.
//!
//! - [`SimMemory`]: guest memory (with a hole and frames above 4 GiB if asked) and the CPU dirty log.
//! - [`SimHost`]: a host GGTT that records how the vGPU's slices are shadowed on this host.
//! - [`RefGpu`]: executes command streams from ring buffers and batch buffers through the vGPU's own
//!   GGTT translation, with execlist submission, CSB completion (mirrored into the hardware status
//!   page) and interrupt bits as the guest driver sees them. Commands: see [`cmd`].
//! - [`GuestDriver`]: writes commands, updates GGTT entries (in 4-byte halves) and submits work through
//!   the ELSP one dword at a time, the way i915 does, so a migration can land between any two guest
//!   accesses.
//! - [`Machine`]: the four together, stepped on a modeled clock.
//!
//! Same seed, same bytes: nothing here reads a clock or an entropy source.

pub mod campaign;
mod driver;
mod gpu;
mod machine;
mod memory;
pub mod scenario;

pub use driver::{DriverStateError, Guest, GuestDriver, Profile, layout};
pub use gpu::{GpuStats, RefGpu};
pub use machine::{Machine, MachineStorage};
pub use memory::{SimCpuLog, SimHost, SimMemory};

/// The command encodings the reference device executes (also available without `sim`, for guest
/// drivers built `no_std`).
pub use crate::cmd;
pub use crate::cmd::Rng;
