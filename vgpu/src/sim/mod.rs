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
pub mod cmd;
mod driver;
mod gpu;
mod machine;
mod memory;
pub mod scenario;

pub use driver::{DriverStateError, Guest, GuestDriver, Profile, layout};
pub use gpu::{GpuStats, RefGpu};
pub use machine::{EngineTime, Machine, MachineStorage};
pub use memory::{SimCpuLog, SimHost, SimMemory};

/// A small deterministic PRNG (splitmix64): reproducible workloads without a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}
