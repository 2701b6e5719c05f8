//! The wire format of a vGPU live-migration stream: framing and checking, nothing about GPUs.
//!
//! A stream is an 80-byte [`StreamHeader`] (magic, format version, device identity, CRC)
//! followed by records, each a 16-byte [`RecordHeader`] (open [`RecordKind`], flags, record
//! version, payload length, sequence index, CRC over header and payload) and its payload, and
//! ends with an END record whose totals bind the whole stream. PAGES, ROUND and END payloads
//! are defined here; other payloads are opaque and belong to the component crates, each of
//! which owns its records through the [`Section`] trait (kind, version, a bound on the payload,
//! save, validate, apply). `SPEC.md` in this crate is the normative description.
//!
//! # Guarantees
//!
//! - `no_std`, no allocation, no `unsafe` (`#![forbid(unsafe_code)]`), deterministic. The
//!   vector kernels that copy a page and fold it into the CRC in one pass
//!   ([`Crc32::update_copy`]) are the `vgpu-mig-copycrc` crate's, behind its safe API.
//! - Sans-IO: the [`Encoder`] writes into caller buffers of any size and resumes at any byte;
//!   the [`Decoder`] takes any segmentation of the input (one byte at a time works).
//! - The decoder never panics on any input, always makes progress, bounds every length
//!   ([`Limits`]), keeps under 1 KiB of state, and verifies every CRC, the record order and the
//!   END totals. Errors are small `Copy` values that say what, where and whose fault
//!   ([`DecodeError`], [`Fault`]).
//! - `parse` functions never panic; `emit` functions never panic on their fixed-size buffers.
//! - MSRV: the workspace `rust-version` (1.88).
//! - Crate versions follow the format: a patch release never changes the bytes written or the
//!   streams accepted; a new [`FORMAT_MINOR`] or optional record is a minor release (before 1.0:
//!   a new `0.x`); a new [`FORMAT_MAJOR`] is a major release (before 1.0: a new `0.x`). The
//!   workspace README ("Versions and the wire format") and the CHANGELOG state which format each
//!   release writes and reads.
//! - Optional authenticated streams (cargo feature `auth`, SPEC.md §10): an encoder and a
//!   decoder made with `with_key` and the embedder's 32-byte key add and check a keyed BLAKE3
//!   MAC record before END (integrity and origin, not encryption; see the `auth` module).
//!   Without the feature nothing changes in size or speed.
//!
//! # Example
//!
//! ```
//! use vgpu_mig_stream::*;
//!
//! let header = StreamHeaderRepr {
//!     minor: FORMAT_MINOR,
//!     flags: 0,
//!     identity: DeviceIdentity {
//!         pci_vendor: 0x8086, pci_device: 0x1912, generation: 9, fence_count: 4,
//!         aperture_base: 0, aperture_size: 1 << 27, hidden_base: 1 << 32,
//!         hidden_size: 1 << 28, page_shift: PAGE_SHIFT,
//!     },
//!     stream_id: 42,
//! };
//! let runs = [PageRunRepr { first_frame: 7, count: 1, encoding: PageEncoding::FULL }];
//! let pages = PagesPayload::new(&runs, |_frame: u64, _off: usize, out: &mut [u8]| out.fill(0xAB))?;
//!
//! // Encode into one buffer (any size works: call again with the rest on Partial).
//! let mut buf = [0u8; 8192];
//! let mut enc = Encoder::new();
//! let mut at = 0;
//! at += enc.write_header(&header, &mut buf[at..])?.written();
//! at += enc.write_record(RecordKind::REGISTERS, RecordFlags::MANDATORY, 1, &b"regs"[..], &mut buf[at..])?.written();
//! at += enc.write_record(RecordKind::PAGES, RecordFlags::MANDATORY, CONTROL_VERSION, &pages, &mut buf[at..])?.written();
//! at += enc.write_end(&mut buf[at..])?.written();
//! assert_eq!(at, 80 + (16 + 4) + (16 + 16 + 4096) + (16 + 16));
//!
//! // Decode, here in 1000-byte slices.
//! let mut dec = Decoder::new(Limits::DEFAULT);
//! let mut page_bytes = 0;
//! for chunk in buf[..at].chunks(1000) {
//!     let mut rest = chunk;
//!     loop {
//!         let (used, event) = dec.feed(rest)?;
//!         rest = &rest[used..];
//!         match event {
//!             Some(Event::Header(h)) => h.identity.check_compatible(&header.identity).unwrap(),
//!             Some(Event::PageData { frame: 7, data, .. }) => page_bytes += data.len(),
//!             Some(_) => {}
//!             None => break,
//!         }
//!     }
//! }
//! dec.finish()?;
//! assert_eq!(page_bytes, 4096);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(feature = "auth")]
pub mod auth;
mod control;
mod crc;
mod decoder;
pub mod delta;
mod encoder;
mod error;
pub mod fuzzing;
mod header;
mod pages;
mod record;
mod section;
#[cfg(test)]
mod stream_tests;

#[cfg(feature = "auth")]
pub use auth::{AuthKey, MAC_STORAGE_LEN, MacStorage, StreamMac};

/// Bytes of keyed-MAC bookkeeping (feature `auth`) every [`Encoder`] and [`Decoder`] carries
/// inline (the key and a reference to its [`MacStorage`]; the hasher itself,
/// [`MAC_STORAGE_LEN`] bytes, is caller storage), 0 without the feature.
#[cfg(feature = "auth")]
pub const MAC_STATE_LEN: usize = core::mem::size_of::<auth::MacState<'static>>();
/// Bytes of keyed-MAC bookkeeping (feature `auth`) every [`Encoder`] and [`Decoder`] carries
/// inline, 0 without the feature.
#[cfg(not(feature = "auth"))]
pub const MAC_STATE_LEN: usize = 0;
pub use control::{
    CONTROL_VERSION, END_LEN, EndPayload, EndRepr, ROUND_LEN, RoundPayload, RoundRepr,
};
pub use crc::{Crc32, crc32, crc32_copy_kernel, crc32_kernel};
pub use decoder::{Decoder, Event, FeedError};
pub use encoder::{Encoder, PayloadSource, Progress};
pub use error::{AuthError, DecodeError, EncodeError, EndMismatch, ErrorKind, Fault, PageRunError};
pub use header::{
    AUTH_MINOR, AUTHENTICATED, DeviceIdentity, FORMAT_MAJOR, FORMAT_MINOR, HEADER_CRC_OFFSET,
    IMPLEMENTED_CAPABILITIES, Incompatible, MAGIC, MINOR_1_1, PAGE_SHIFT, REQUIRED_CAPABILITY_MASK,
    STREAM_HEADER_LEN, StreamHeader, StreamHeaderRepr,
};
pub use pages::{
    DELTA_LEN_FIELD, DUP_ENTRY_LEN, PAGE_RUN_HEADER_LEN, PAGE_SIZE, PageEncoding, PageRunHeader,
    PageRunRepr, PageSource, PagesBuilder, PagesPayload, SlicePages,
};
pub use record::{
    Limits, MAC_LEN, MAX_PAYLOAD, RECORD_HEADER_LEN, RecordFlags, RecordHeader, RecordHeaderRepr,
    RecordKind,
};
pub use section::{Saved, Section};

/// Does a stored CRC match the computed one? Always compares, except under `cfg(fuzzing)`
/// where checksums are bypassed so fuzzers can reach the states behind them.
#[inline]
const fn crc_matches(stored: u32, computed: u32) -> bool {
    cfg!(fuzzing) || stored == computed
}
