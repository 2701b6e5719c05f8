//! The 16-byte record header: byte view ([`RecordHeader`]) and semantics ([`RecordHeaderRepr`]),
//! the open [`RecordKind`], [`RecordFlags`] and decoder [`Limits`].

use core::fmt;

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 16;
/// Format maximum of a record payload: 16 MiB.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// Payload length of a MAC record (SPEC.md §10): the 32-byte tag.
pub const MAC_LEN: usize = 32;

/// Byte view of a record header (little-endian, 16 bytes, no padding).
///
/// Layout shared with non-Rust readers: SPEC.md §3 must change with it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordHeader {
    /// Record kind ([`RecordKind`]).
    pub kind: U16,
    /// Flags ([`RecordFlags`]).
    pub flags: u8,
    /// Record-format version.
    pub version: u8,
    /// Payload length in bytes.
    pub payload_len: U32,
    /// 0-based sequence number of the record in the stream.
    pub index: U32,
    /// CRC-32/ISO-HDLC over header bytes 0..12 followed by the payload.
    pub crc: U32,
}

static_assertions::const_assert_eq!(core::mem::size_of::<RecordHeader>(), RECORD_HEADER_LEN);

/// A record kind. Open: any `u16` is representable; the associated consts are the kinds
/// format 1.0 defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RecordKind(pub u16);

impl RecordKind {
    /// PCI configuration space (payload owned by `vgpu`).
    pub const CONFIG_SPACE: Self = Self(0x0001);
    /// Virtual registers (payload owned by `mmio`).
    pub const REGISTERS: Self = Self(0x0002);
    /// Runs of GGTT entries (payload owned by `gtt`).
    pub const GGTT_RUNS: Self = Self(0x0003);
    /// PPGTT root pointers (payload owned by `vgpu`).
    pub const PPGTT_ROOTS: Self = Self(0x0004);
    /// Engine state (payload owned by `engines`).
    pub const ENGINE_STATE: Self = Self(0x0005);
    /// Queued, not yet executed work (payload owned by `engines`).
    pub const QUEUED_WORK: Self = Self(0x0006);
    /// Guest view of graphics memory (payload owned by `gtt`/`vgpu`).
    pub const GUEST_VIEW: Self = Self(0x0007);
    /// OpRegion (payload owned by `vgpu`).
    pub const OPREGION: Self = Self(0x0008);
    /// GGTT entries with one 4-byte half written and the other still to come (payload owned by
    /// `gtt`).
    pub const GGTT_PENDING: Self = Self(0x0009);
    /// Which channel of a multi-channel migration this stream is (payload owned by `vgpu`; added
    /// in 1.1).
    pub const CHANNEL: Self = Self(0x000A);
    /// End of a pre-copy round; payload parsed by migstream ([`crate::RoundRepr`]).
    pub const ROUND: Self = Self(0x0010);
    /// Graphics-memory pages; payload parsed by migstream (page runs).
    pub const PAGES: Self = Self(0x0011);
    /// End of stream with totals; payload parsed by migstream ([`crate::EndRepr`]).
    pub const END: Self = Self(0x00FF);
    /// Format 1.1: the MAC of an authenticated stream, the last record before END; payload the
    /// 32-byte tag (SPEC.md §10). Known to readers built with the `auth` feature only.
    pub const MAC: Self = Self(0x00FE);

    /// Is this a kind this build knows? The 1.0 kinds, [`RecordKind::CHANNEL`] (1.1), and [`RecordKind::MAC`] with the `auth`
    /// feature (without it, a MAC record is an unknown mandatory kind).
    #[must_use]
    pub const fn is_known(self) -> bool {
        matches!(self.0, 0x0001..=0x000A | 0x0010 | 0x0011 | 0x00FF)
            || (cfg!(feature = "auth") && self.0 == Self::MAC.0)
    }

    /// The name of a kind the format defines (MAC included, whatever the build's features).
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0001 => "CONFIG_SPACE",
            0x0002 => "REGISTERS",
            0x0003 => "GGTT_RUNS",
            0x0004 => "PPGTT_ROOTS",
            0x0005 => "ENGINE_STATE",
            0x0006 => "QUEUED_WORK",
            0x0007 => "GUEST_VIEW",
            0x0008 => "OPREGION",
            0x0009 => "GGTT_PENDING",
            0x000A => "CHANNEL",
            0x0010 => "ROUND",
            0x0011 => "PAGES",
            0x00FF => "END",
            0x00FE => "MAC",
            _ => return None,
        })
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "kind {:#06x}", self.0),
        }
    }
}

/// Record flags byte. Open at the view layer; format 1.0 defines only [`RecordFlags::MANDATORY`]
/// and rejects the other bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RecordFlags(pub u8);

impl RecordFlags {
    /// No flags: a reader that does not know the kind skips the record.
    pub const NONE: Self = Self(0);
    /// A reader that does not know the kind must fail instead of skipping it.
    pub const MANDATORY: Self = Self(0x01);
    /// The bits format 1.0 defines.
    pub const DEFINED: u8 = 0x01;

    /// Is the MANDATORY bit set?
    #[must_use]
    pub const fn is_mandatory(self) -> bool {
        self.0 & Self::MANDATORY.0 != 0
    }

    /// Are only defined bits set?
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 & !Self::DEFINED == 0
    }
}

/// Semantic form of a record header. `parse` checks nothing but the length: the index, flags,
/// length and CRC rules need stream context and are checked by [`crate::Decoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RecordHeaderRepr {
    /// Kind.
    pub kind: RecordKind,
    /// Flags.
    pub flags: RecordFlags,
    /// Record-format version.
    pub version: u8,
    /// Payload length.
    pub payload_len: u32,
    /// Sequence number.
    pub index: u32,
    /// CRC over header bytes 0..12 and the payload.
    pub crc: u32,
}

impl RecordHeaderRepr {
    /// Bytes [`emit`](Self::emit) writes.
    pub const BUFFER_LEN: usize = RECORD_HEADER_LEN;

    /// Read the first 16 bytes of `bytes`; `None` if shorter. Never panics.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let raw = bytes.first_chunk::<RECORD_HEADER_LEN>()?;
        Some(Self::from_bytes(raw))
    }

    /// Read a complete header.
    #[must_use]
    pub fn from_bytes(raw: &[u8; RECORD_HEADER_LEN]) -> Self {
        let h: RecordHeader = zerocopy::transmute!(*raw);
        Self {
            kind: RecordKind(h.kind.get()),
            flags: RecordFlags(h.flags),
            version: h.version,
            payload_len: h.payload_len.get(),
            index: h.index.get(),
            crc: h.crc.get(),
        }
    }

    /// Write all 16 bytes as given (the caller computed `crc`).
    pub fn emit(&self, out: &mut [u8; RECORD_HEADER_LEN]) {
        let h = RecordHeader {
            kind: U16::new(self.kind.0),
            flags: self.flags.0,
            version: self.version,
            payload_len: U32::new(self.payload_len),
            index: U32::new(self.index),
            crc: U32::new(self.crc),
        };
        *out = zerocopy::transmute!(h);
    }

    /// The record CRC this header needs for `payload`: CRC over the first 12 emitted header
    /// bytes followed by `payload`.
    #[must_use]
    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let mut out = [0; RECORD_HEADER_LEN];
        self.emit(&mut out);
        let mut c = crate::Crc32::new();
        c.update(out.get(..12).unwrap_or_default());
        c.update(payload);
        c.value()
    }
}

/// Limits the decoder enforces on top of the format's. Lowering `max_payload` below
/// [`MAX_PAYLOAD`] makes longer records a local ([`crate::Fault::Local`]) error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Limits {
    /// Largest accepted payload length (clamped to [`MAX_PAYLOAD`]).
    pub max_payload: u32,
}

impl Limits {
    /// The format's own limits.
    pub const DEFAULT: Self = Self {
        max_payload: MAX_PAYLOAD,
    };

    /// Limits with the given payload maximum, clamped to [`MAX_PAYLOAD`].
    #[must_use]
    pub const fn with_max_payload(max_payload: u32) -> Self {
        Self {
            max_payload: if max_payload < MAX_PAYLOAD {
                max_payload
            } else {
                MAX_PAYLOAD
            },
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]
mod tests {
    use super::*;

    static BYTES: [u8; 16] = [
        0x11, 0x00, 0x01, 0x01, // kind PAGES, MANDATORY, version 1
        0x20, 0x10, 0x00, 0x00, // payload_len 0x1020
        0x05, 0x00, 0x00, 0x00, // index 5
        0x78, 0x56, 0x34, 0x12, // crc
    ];
    const REPR: RecordHeaderRepr = RecordHeaderRepr {
        kind: RecordKind::PAGES,
        flags: RecordFlags::MANDATORY,
        version: 1,
        payload_len: 0x1020,
        index: 5,
        crc: 0x1234_5678,
    };

    #[test]
    fn deconstruct() {
        let h: RecordHeader = zerocopy::transmute!(BYTES);
        assert_eq!(h.kind.get(), 0x11);
        assert_eq!(h.flags, 1);
        assert_eq!(h.payload_len.get(), 0x1020);
        assert_eq!(h.crc.get(), 0x1234_5678);
    }

    #[test]
    fn construct() {
        let mut out = [0xFF; 16];
        REPR.emit(&mut out);
        assert_eq!(out, BYTES);
    }

    #[test]
    fn parse() {
        assert_eq!(RecordHeaderRepr::parse(&BYTES), Some(REPR));
        assert_eq!(RecordHeaderRepr::parse(&BYTES[..15]), None);
    }

    #[test]
    fn crc_covers_header_and_payload() {
        let mut joined = BYTES[..12].to_vec();
        joined.extend_from_slice(b"abc");
        assert_eq!(REPR.compute_crc(b"abc"), crate::crc32(&joined));
    }

    #[test]
    fn kinds_and_flags() {
        assert!(RecordKind::END.is_known());
        assert!(RecordKind::GGTT_PENDING.is_known());
        assert!(RecordKind::CHANNEL.is_known());
        assert!(!RecordKind(0x000B).is_known());
        assert_eq!(RecordKind(0x000B).name(), None);
        assert!(RecordFlags::MANDATORY.is_mandatory());
        assert!(!RecordFlags(0x02).is_valid());
        assert_eq!(Limits::with_max_payload(u32::MAX), Limits::DEFAULT);
        assert_eq!(Limits::with_max_payload(10).max_payload, 10);
    }
}
