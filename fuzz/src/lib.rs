//! Fuzz-target bodies for the vGPU migration crates, as ordinary library functions.
//!
//! Every target is one `pub fn <target>(data: &[u8])`. The `fuzz_targets/<target>.rs`
//! binaries (built by `cargo fuzz` with the `libfuzzer` feature, nightly) only forward to
//! these functions, and `tests/corpus_replay.rs` replays the checked-in corpus
//! (`corpus/<target>/`) plus deterministic mutations of it through the same functions on
//! stable, so the targets cannot rot.
//!
//! # Contract
//!
//! A body returns normally for every input. It panics (through `assert!`/`panic!`) only when
//! a library under test broke one of its documented guarantees: a panic inside the library,
//! a lack of progress, a round trip that does not return what went in, or a validator and
//! an applier that disagree. The panic message says which invariant failed.
//!
//! Targets: [`migstream_decode`], [`migstream_roundtrip`], [`migstream_segmented`],
//! [`migstream_auth`],
//! [`gtt_runs`], [`gtt_walk`], [`mmio_access`], [`mmio_restore`], [`engines_restore`],
//! [`vgpu_restore`], [`gmem_ops`]; [`TARGETS`] lists
//! them by name. [`seeds`] builds the meaningful part of the corpus.
//!
//! # Example
//!
//! ```
//! // Any bytes are fine: a body returns unless a library broke its contract.
//! for target in vgpu_fuzz::TARGETS {
//!     (target.body)(b"\x00\x01\x02 arbitrary bytes");
//! }
//! // The golden stream, fed 7 bytes at a time, decodes cleanly.
//! vgpu_fuzz::migstream_segmented(&[0, 6]);
//! ```
#![forbid(unsafe_code)]
#![allow(
    clippy::panic,
    reason = "fuzz bodies report contract violations of the libraries by panicking"
)]

mod engines_targets;
mod gmem_ops;
mod gtt_target;
mod gtt_walk;
mod input;
mod migstream_targets;
mod mmio_targets;
pub mod seeds;
mod vgpu_target;

pub use engines_targets::engines_restore;
pub use gmem_ops::gmem_ops;
pub use gtt_target::gtt_runs;
pub use gtt_walk::gtt_walk;
pub use migstream_targets::{
    ENCODINGS_STREAM, GOLDEN_STREAM, build_keyed_stream, migstream_auth, migstream_decode,
    migstream_roundtrip, migstream_segmented,
};
pub use mmio_targets::{mmio_access, mmio_restore};
pub use vgpu_target::{valid_stream as vgpu_valid_stream, vgpu_restore};

/// One fuzz target: its name (the `fuzz_targets/<name>.rs` binary and `corpus/<name>/`
/// directory) and its body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Target name.
    pub name: &'static str,
    /// Target body.
    pub body: fn(&[u8]),
}

/// Every fuzz target of this crate.
pub const TARGETS: [Target; 11] = [
    Target {
        name: "migstream_decode",
        body: migstream_decode,
    },
    Target {
        name: "migstream_roundtrip",
        body: migstream_roundtrip,
    },
    Target {
        name: "migstream_segmented",
        body: migstream_segmented,
    },
    Target {
        name: "migstream_auth",
        body: migstream_auth,
    },
    Target {
        name: "gtt_runs",
        body: gtt_runs,
    },
    Target {
        name: "mmio_access",
        body: mmio_access,
    },
    Target {
        name: "mmio_restore",
        body: mmio_restore,
    },
    Target {
        name: "engines_restore",
        body: engines_restore,
    },
    Target {
        name: "vgpu_restore",
        body: vgpu_restore,
    },
    Target {
        name: "gtt_walk",
        body: gtt_walk,
    },
    Target {
        name: "gmem_ops",
        body: gmem_ops,
    },
];
