//! Authenticated streams (feature `auth`, SPEC.md §10): a keyed BLAKE3 MAC over every stream
//! byte before the MAC record, so that a destination refuses bytes not produced by a holder of
//! the embedder's key.
//!
//! What it gives: integrity and origin of the stream bytes against anyone without the key. What
//! it does not: confidentiality (nothing is encrypted), protection against the replay of a whole
//! earlier stream unless every migration uses a fresh `stream_id` that the destination checks,
//! protection against denial of service, or key management (the key is the embedder's).
//!
//! The [`Encoder`](crate::Encoder) and [`Decoder`](crate::Decoder) use this module when built
//! with [`Encoder::with_key`](crate::Encoder::with_key) /
//! [`Decoder::with_key`](crate::Decoder::with_key); [`StreamMac`] is public so that other code
//! (a second implementation, a test, a benchmark) can compute the same tag.
//!
//! # Example
//!
//! ```
//! use vgpu_mig_stream::*;
//!
//! let key = AuthKey::new([7; 32]); // the embedder's secret, shared with the destination
//! let header = StreamHeaderRepr {
//!     minor: FORMAT_MINOR,
//!     flags: 0,
//!     identity: DeviceIdentity {
//!         pci_vendor: 0x8086, pci_device: 0x1912, generation: 9, fence_count: 4,
//!         aperture_base: 0, aperture_size: 1 << 27, hidden_base: 1 << 32,
//!         hidden_size: 1 << 28, page_shift: PAGE_SHIFT,
//!     },
//!     stream_id: 0x5EED, // fresh for every migration, and checked by the destination
//! };
//! let mut buf = [0u8; 512];
//! // The MAC state (the BLAKE3 hasher, MAC_STORAGE_LEN bytes) is caller storage.
//! let (mut enc_mac, mut dec_mac, mut other_mac) =
//!     (MacStorage::new(), MacStorage::new(), MacStorage::new());
//! let mut enc = Encoder::with_key(&key, &mut enc_mac);
//! let mut at = enc.write_header(&header, &mut buf)?.written();
//! at += enc.write_record(RecordKind::REGISTERS, RecordFlags::MANDATORY, 1, &b"regs"[..], &mut buf[at..])?.written();
//! at += enc.write_end(&mut buf[at..])?.written(); // the MAC record, then END
//!
//! let mut dec = Decoder::with_key(Limits::DEFAULT, &key, &mut dec_mac);
//! let mut rest = &buf[..at];
//! let mut authenticated = false;
//! loop {
//!     let (used, event) = dec.feed(rest)?;
//!     rest = &rest[used..];
//!     match event {
//!         Some(Event::Header(h)) => assert_eq!(h.flags & AUTHENTICATED, AUTHENTICATED),
//!         Some(Event::Authenticated { .. }) => authenticated = true,
//!         Some(_) => {}
//!         None => break,
//!     }
//! }
//! dec.finish()?;
//! assert!(authenticated);
//!
//! // Another key, or any changed byte, is refused.
//! let mut other = Decoder::with_key(Limits::DEFAULT, &AuthKey::new([8; 32]), &mut other_mac);
//! let mut rest = &buf[..at];
//! let err = loop {
//!     match other.feed(rest) {
//!         Ok((used, _)) => rest = &rest[used..],
//!         Err(e) => break e,
//!     }
//! };
//! assert_eq!(err.kind(), ErrorKind::Auth(AuthError::BadTag));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Key hygiene: [`AuthKey`] never prints its bytes (`Debug` shows `AuthKey(..)`), but it is a
//! plain array: it is not zeroized when dropped and copies of it (and of the derived per-stream
//! key inside the hasher) may stay in memory. An embedder that needs zeroization keeps the key
//! in its own zeroizing storage and drops encoders and decoders promptly.

use core::fmt;

use crate::header::{STREAM_HEADER_LEN, StreamHeaderRepr};
use crate::record::MAC_LEN;

/// The BLAKE3 `derive_key` context of the per-stream MAC key (SPEC.md §10.2). Names the format,
/// its major version and the purpose, so the embedder's key used here yields keys unrelated to
/// any other use of it.
pub const MAC_CONTEXT: &str = "vGPUmig 1 migstream stream MAC key 2026-11 (SPEC.md section 10)";

/// The embedder's 32-byte secret shared by source and destination. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey([u8; 32]);

impl AuthKey {
    /// Wrap 32 secret bytes (uniformly random; how they are shared is the embedder's business).
    #[must_use]
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for AuthKey {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "AuthKey(..)");
    }
}

/// The per-stream MAC key: BLAKE3 `derive_key(MAC_CONTEXT, key ‖ stream_id as u64 LE)`.
#[must_use]
pub fn stream_key(key: &AuthKey, stream_id: u64) -> [u8; 32] {
    let mut material = [0u8; 40];
    let (k, id) = material.split_at_mut(32);
    k.copy_from_slice(&key.0);
    id.copy_from_slice(&stream_id.to_le_bytes());
    blake3::derive_key(MAC_CONTEXT, &material)
}

/// Incremental MAC over stream bytes: BLAKE3 in keyed mode with the [`stream_key`]. Any
/// segmentation of the same bytes gives the same tag. About 1.9 KiB (the BLAKE3 hasher).
#[derive(Clone)]
pub struct StreamMac {
    hasher: blake3::Hasher,
}

impl StreamMac {
    /// A MAC for the stream with this `stream_id`, with no bytes absorbed yet.
    #[must_use]
    pub fn new(key: &AuthKey, stream_id: u64) -> Self {
        Self {
            hasher: blake3::Hasher::new_keyed(&stream_key(key, stream_id)),
        }
    }

    /// A MAC for the stream whose 80-byte header is `header`, that header already absorbed.
    /// `None` if `header` is not a valid stream header.
    #[must_use]
    pub fn after_header(key: &AuthKey, header: &[u8; STREAM_HEADER_LEN]) -> Option<Self> {
        let h = StreamHeaderRepr::parse(header).ok()?;
        let mut mac = Self::new(key, h.stream_id);
        mac.update(header);
        Some(mac)
    }

    /// Absorb the next stream bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The tag over everything absorbed so far (the hasher is unchanged).
    #[must_use]
    pub fn tag(&self) -> [u8; MAC_LEN] {
        *self.hasher.finalize().as_bytes()
    }

    /// Does `tag` equal [`tag`](Self::tag)? Constant-time comparison.
    #[must_use]
    pub fn verify(&self, tag: &[u8; MAC_LEN]) -> bool {
        self.hasher.finalize() == blake3::Hash::from_bytes(*tag)
    }
}

/// Is the received `tag` the `expected` one? Constant-time; always true under `cfg(fuzzing)`,
/// where checksums are bypassed too so fuzzers reach the states behind them.
pub(crate) fn tag_matches(expected: &[u8; MAC_LEN], tag: &[u8; MAC_LEN]) -> bool {
    cfg!(fuzzing) || blake3::Hash::from_bytes(*expected) == blake3::Hash::from_bytes(*tag)
}

impl fmt::Debug for StreamMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamMac { .. }")
    }
}

/// Caller storage for one encoder's or decoder's stream MAC (the BLAKE3 hasher,
/// [`MAC_STORAGE_LEN`] bytes): an authenticating [`Encoder`](crate::Encoder) or
/// [`Decoder`](crate::Decoder) borrows one for its whole stream, so the encoder or decoder
/// itself stays small and nothing large is returned by value. Reusable for the next stream.
#[derive(Default)]
pub struct MacStorage {
    mac: Option<StreamMac>,
}

impl MacStorage {
    /// Empty storage, ready to lend to `with_key`.
    #[must_use]
    pub const fn new() -> Self {
        Self { mac: None }
    }
}

impl fmt::Debug for MacStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacStorage { .. }")
    }
}

/// Bytes of one [`MacStorage`]: the caller storage an authenticating encoder or decoder
/// borrows (one per channel).
pub const MAC_STORAGE_LEN: usize = core::mem::size_of::<MacStorage>();

/// Where an encoder's or decoder's MAC is; the hasher itself is in the caller's
/// [`MacStorage`].
pub(crate) enum MacState<'m> {
    /// No key: the stream is not authenticated.
    Off,
    /// Keyed, stream header not yet complete; the storage the hasher will live in.
    Keyed(AuthKey, &'m mut MacStorage),
    /// Absorbing stream bytes.
    Active(&'m mut StreamMac),
    /// The MAC record has started: the tag it carries (encoder) or must carry (decoder).
    Sealed([u8; MAC_LEN]),
    /// The MAC record is complete (written, or verified): only END may follow.
    Closed,
}

impl<'m> MacState<'m> {
    /// Is a key set (whatever the progress)?
    pub(crate) const fn is_keyed(&self) -> bool {
        !matches!(self, MacState::Off)
    }

    /// Absorb stream bytes if active.
    #[inline]
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if let MacState::Active(m) = self {
            m.update(bytes);
        }
    }

    /// Keyed → Active with the complete header absorbed; other states are unchanged.
    pub(crate) fn start(&mut self, stream_id: u64, header: &[u8; STREAM_HEADER_LEN]) {
        if matches!(self, MacState::Keyed(..))
            && let MacState::Keyed(key, storage) = core::mem::replace(self, MacState::Off)
        {
            let m = storage.mac.insert(StreamMac::new(&key, stream_id));
            m.update(header);
            *self = MacState::Active(m);
        }
    }

    /// Active → Sealed with the tag over everything absorbed; returns the sealed tag (also when
    /// already sealed), `None` in other states.
    pub(crate) fn seal(&mut self) -> Option<[u8; MAC_LEN]> {
        match self {
            MacState::Active(m) => {
                let tag = m.tag();
                *self = MacState::Sealed(tag);
                Some(tag)
            }
            MacState::Sealed(tag) => Some(*tag),
            _ => None,
        }
    }
}

impl fmt::Debug for MacState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the key nor a tag: a logged expected tag would authenticate the logged stream.
        f.write_str(match self {
            MacState::Off => "Off",
            MacState::Keyed(..) => "Keyed",
            MacState::Active(_) => "Active",
            MacState::Sealed(_) => "Sealed",
            MacState::Closed => "Closed",
        })
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for MacState<'_> {
    fn format(&self, f: defmt::Formatter<'_>) {
        let s = match self {
            MacState::Off => "Off",
            MacState::Keyed(..) => "Keyed",
            MacState::Active(_) => "Active",
            MacState::Sealed(_) => "Sealed",
            MacState::Closed => "Closed",
        };
        defmt::write!(f, "{=str}", s);
    }
}
