//! The 80-byte stream header: byte view ([`StreamHeader`]) and semantics ([`StreamHeaderRepr`]).

use core::fmt;

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::crc::crc32;
use crate::error::{DecodeError, ErrorKind, Fault};

/// The stream magic, bytes 0..8.
pub const MAGIC: [u8; 8] = *b"vGPUmig\n";
/// Format major version written and accepted.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version written for a stream that uses no 1.1 feature. Readers of 1.0 accept
/// any 1.x (see SPEC.md §7).
pub const FORMAT_MINOR: u16 = 0;
/// Format minor version 1.1, written by a stream that uses one of its additions: the
/// [`RecordKind::CHANNEL`](crate::RecordKind::CHANNEL) record of a multi-channel migration
/// (SPEC.md Appendix A.6), the [`AUTHENTICATED`] flag and the
/// [`RecordKind::MAC`](crate::RecordKind::MAC) record (SPEC.md §10).
pub const MINOR_1_1: u16 = 1;
/// Format minor version of an authenticated stream (= [`MINOR_1_1`]).
pub const AUTH_MINOR: u16 = MINOR_1_1;
/// Length of the stream header in bytes.
pub const STREAM_HEADER_LEN: usize = 80;
/// Offset of `header_crc` in the stream header: the CRC covers the bytes before it, and so does
/// the END record's chained `stream_crc`.
pub const HEADER_CRC_OFFSET: usize = 76;
/// The only page shift of format 1 (4 KiB pages).
pub const PAGE_SHIFT: u8 = 12;
/// Stream-header capability flags a reader must understand (bits 8..15); unknown ones are an
/// error. Bits 0..7 are optional capabilities a reader may ignore. 1.1 defines [`AUTHENTICATED`].
pub const REQUIRED_CAPABILITY_MASK: u16 = 0xFF00;
/// Required capability (bit 8, format 1.1): the stream is authenticated; a MAC record precedes
/// END (SPEC.md §10). Readers built without the `auth` feature reject it as
/// [`ErrorKind::UnsupportedCapability`].
pub const AUTHENTICATED: u16 = 0x0100;
/// The required capabilities this build implements: [`AUTHENTICATED`] with the `auth` feature.
pub const IMPLEMENTED_CAPABILITIES: u16 = if cfg!(feature = "auth") {
    AUTHENTICATED
} else {
    0
};

/// Byte view of the stream header (little-endian, 80 bytes, no padding).
///
/// Layout shared with non-Rust readers: SPEC.md §2 must change with it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct StreamHeader {
    /// `b"vGPUmig\n"`.
    pub magic: [u8; 8],
    /// Format major version (1).
    pub major: U16,
    /// Format minor version (0).
    pub minor: U16,
    /// Length of this header (80).
    pub header_len: U16,
    /// Capability flags.
    pub flags: U16,
    /// PCI vendor id of the source GPU.
    pub pci_vendor: U16,
    /// PCI device id of the source GPU.
    pub pci_device: U16,
    /// GPU generation (e.g. 9 for Skylake-class).
    pub generation: u8,
    /// Zero.
    pub reserved0: u8,
    /// log2 of the page size (12).
    pub page_shift: u8,
    /// Zero.
    pub reserved1: u8,
    /// Fence registers assigned to the vGPU.
    pub fence_count: U32,
    /// Zero.
    pub reserved2: [u8; 4],
    /// Guest-view aperture (mappable) graphics-memory base, bytes.
    pub aperture_base: U64,
    /// Aperture size, bytes.
    pub aperture_size: U64,
    /// Guest-view hidden (high) graphics-memory base, bytes.
    pub hidden_base: U64,
    /// Hidden size, bytes.
    pub hidden_size: U64,
    /// Identifier chosen by the source for this stream.
    pub stream_id: U64,
    /// Zero.
    pub reserved3: [u8; 4],
    /// CRC-32/ISO-HDLC over bytes 0..76.
    pub header_crc: U32,
}

static_assertions::const_assert_eq!(core::mem::size_of::<StreamHeader>(), STREAM_HEADER_LEN);
static_assertions::const_assert_eq!(core::mem::offset_of!(StreamHeader, fence_count), 24);
static_assertions::const_assert_eq!(core::mem::offset_of!(StreamHeader, aperture_base), 32);
static_assertions::const_assert_eq!(core::mem::offset_of!(StreamHeader, stream_id), 64);
static_assertions::const_assert_eq!(
    core::mem::offset_of!(StreamHeader, header_crc),
    HEADER_CRC_OFFSET
);

/// What the stream says about the source device and the vGPU's guest view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceIdentity {
    /// PCI vendor id.
    pub pci_vendor: u16,
    /// PCI device id.
    pub pci_device: u16,
    /// GPU generation.
    pub generation: u8,
    /// Fence registers.
    pub fence_count: u32,
    /// Guest-view aperture base, bytes. Not compared by [`DeviceIdentity::check_compatible`]; the
    /// destination requires it equal to its own (SPEC.md §3.2: the guest view is not rebased).
    pub aperture_base: u64,
    /// Aperture size, bytes.
    pub aperture_size: u64,
    /// Guest-view hidden base, bytes (like `aperture_base`: the destination requires it equal).
    pub hidden_base: u64,
    /// Hidden size, bytes.
    pub hidden_size: u64,
    /// log2 of the page size.
    pub page_shift: u8,
}

/// The first field in which a stream's device differs from the local one: `stream` is the
/// value in the stream, `local` the destination's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Incompatible {
    /// PCI vendor id differs.
    Vendor {
        /// Stream value.
        stream: u16,
        /// Local value.
        local: u16,
    },
    /// PCI device id differs.
    Device {
        /// Stream value.
        stream: u16,
        /// Local value.
        local: u16,
    },
    /// Generation differs.
    Generation {
        /// Stream value.
        stream: u8,
        /// Local value.
        local: u8,
    },
    /// Aperture size differs.
    ApertureSize {
        /// Stream value.
        stream: u64,
        /// Local value.
        local: u64,
    },
    /// Hidden size differs.
    HiddenSize {
        /// Stream value.
        stream: u64,
        /// Local value.
        local: u64,
    },
    /// Fence count differs.
    FenceCount {
        /// Stream value.
        stream: u32,
        /// Local value.
        local: u32,
    },
    /// Page shift differs.
    PageSize {
        /// Stream value.
        stream: u8,
        /// Local value.
        local: u8,
    },
}

impl Incompatible {
    /// Always [`Fault::Incompatible`].
    #[must_use]
    pub const fn fault(&self) -> Fault {
        Fault::Incompatible
    }
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incompatible::Vendor { stream, local } => {
                write!(f, "PCI vendor {stream:#06x}, local {local:#06x}")
            }
            Incompatible::Device { stream, local } => {
                write!(f, "PCI device {stream:#06x}, local {local:#06x}")
            }
            Incompatible::Generation { stream, local } => {
                write!(f, "generation {stream}, local {local}")
            }
            Incompatible::ApertureSize { stream, local } => {
                write!(f, "aperture size {stream:#x}, local {local:#x}")
            }
            Incompatible::HiddenSize { stream, local } => {
                write!(f, "hidden size {stream:#x}, local {local:#x}")
            }
            Incompatible::FenceCount { stream, local } => {
                write!(f, "fence count {stream}, local {local}")
            }
            Incompatible::PageSize { stream, local } => {
                write!(f, "page shift {stream}, local {local}")
            }
        }
    }
}

impl core::error::Error for Incompatible {}

impl DeviceIdentity {
    /// Can a destination with identity `local` restore a vGPU described by `self` (from the
    /// stream)? Vendor, device, generation, aperture and hidden sizes, fence count and page
    /// size must be equal, checked in that order. The guest-view bases are not compared here:
    /// SPEC.md §3.2 requires them equal too, which the consumer checks after this (the `vgpu`
    /// destination reports `GuestViewMismatch`).
    ///
    /// # Errors
    /// The first differing field, with both values.
    pub const fn check_compatible(&self, local: &DeviceIdentity) -> Result<(), Incompatible> {
        if self.pci_vendor != local.pci_vendor {
            return Err(Incompatible::Vendor {
                stream: self.pci_vendor,
                local: local.pci_vendor,
            });
        }
        if self.pci_device != local.pci_device {
            return Err(Incompatible::Device {
                stream: self.pci_device,
                local: local.pci_device,
            });
        }
        if self.generation != local.generation {
            return Err(Incompatible::Generation {
                stream: self.generation,
                local: local.generation,
            });
        }
        if self.aperture_size != local.aperture_size {
            return Err(Incompatible::ApertureSize {
                stream: self.aperture_size,
                local: local.aperture_size,
            });
        }
        if self.hidden_size != local.hidden_size {
            return Err(Incompatible::HiddenSize {
                stream: self.hidden_size,
                local: local.hidden_size,
            });
        }
        if self.fence_count != local.fence_count {
            return Err(Incompatible::FenceCount {
                stream: self.fence_count,
                local: local.fence_count,
            });
        }
        if self.page_shift != local.page_shift {
            return Err(Incompatible::PageSize {
                stream: self.page_shift,
                local: local.page_shift,
            });
        }
        Ok(())
    }
}

/// Semantic form of the stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StreamHeaderRepr {
    /// Format minor version ([`FORMAT_MINOR`] when writing; any value is accepted on read).
    pub minor: u16,
    /// Capability flags (see [`REQUIRED_CAPABILITY_MASK`] and [`AUTHENTICATED`]).
    pub flags: u16,
    /// Source device and guest view.
    pub identity: DeviceIdentity,
    /// Identifier chosen by the source.
    pub stream_id: u64,
}

impl StreamHeaderRepr {
    /// Bytes [`emit`](Self::emit) writes.
    pub const BUFFER_LEN: usize = STREAM_HEADER_LEN;

    /// Parse and validate the first 80 bytes of `bytes` (extra bytes are ignored).
    ///
    /// Checks, in order: length (≥ 80), magic, major version, `header_len`, CRC, reserved
    /// fields, required capability flags (unknown to this build: see
    /// [`IMPLEMENTED_CAPABILITIES`]), page shift. Never panics. Whether an authenticated stream
    /// may be read (a key is needed) is the decoder's check, not this one's.
    ///
    /// # Errors
    /// A [`DecodeError`] at offset 0 naming the first failed check.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let err = |kind| DecodeError::new(kind, 0, None);
        let Some(raw) = bytes.first_chunk::<STREAM_HEADER_LEN>() else {
            return Err(err(ErrorKind::Truncated));
        };
        let h: StreamHeader = zerocopy::transmute!(*raw);
        if h.magic != MAGIC {
            return Err(err(ErrorKind::BadMagic));
        }
        if h.major.get() != FORMAT_MAJOR {
            return Err(err(ErrorKind::UnsupportedVersion {
                major: h.major.get(),
                minor: h.minor.get(),
            }));
        }
        if usize::from(h.header_len.get()) != STREAM_HEADER_LEN {
            return Err(err(ErrorKind::BadHeaderLen {
                len: h.header_len.get(),
            }));
        }
        let computed = crc32(h.as_bytes().get(..76).unwrap_or_default());
        let stored = h.header_crc.get();
        if !crate::crc_matches(stored, computed) {
            return Err(err(ErrorKind::BadHeaderCrc { stored, computed }));
        }
        if h.reserved0 != 0 || h.reserved1 != 0 || h.reserved2 != [0; 4] || h.reserved3 != [0; 4] {
            return Err(err(ErrorKind::ReservedNotZero));
        }
        let required = h.flags.get() & REQUIRED_CAPABILITY_MASK & !IMPLEMENTED_CAPABILITIES;
        if required != 0 {
            return Err(err(ErrorKind::UnsupportedCapability { flags: required }));
        }
        if h.page_shift != PAGE_SHIFT {
            return Err(err(ErrorKind::UnsupportedPageSize {
                page_shift: h.page_shift,
            }));
        }
        Ok(Self {
            minor: h.minor.get(),
            flags: h.flags.get(),
            identity: DeviceIdentity {
                pci_vendor: h.pci_vendor.get(),
                pci_device: h.pci_device.get(),
                generation: h.generation,
                fence_count: h.fence_count.get(),
                aperture_base: h.aperture_base.get(),
                aperture_size: h.aperture_size.get(),
                hidden_base: h.hidden_base.get(),
                hidden_size: h.hidden_size.get(),
                page_shift: h.page_shift,
            },
            stream_id: h.stream_id.get(),
        })
    }

    /// Write the header (major 1, `self.minor`, `header_len` 80, zero reserved fields, CRC).
    /// Never panics. Emitting a header with unknown required flags or another page shift
    /// produces bytes [`parse`](Self::parse) rejects; that is the caller's choice.
    pub fn emit(&self, out: &mut [u8; STREAM_HEADER_LEN]) {
        let id = &self.identity;
        let mut h = StreamHeader {
            magic: MAGIC,
            major: U16::new(FORMAT_MAJOR),
            minor: U16::new(self.minor),
            header_len: U16::new(80),
            flags: U16::new(self.flags),
            pci_vendor: U16::new(id.pci_vendor),
            pci_device: U16::new(id.pci_device),
            generation: id.generation,
            reserved0: 0,
            page_shift: id.page_shift,
            reserved1: 0,
            fence_count: U32::new(id.fence_count),
            reserved2: [0; 4],
            aperture_base: U64::new(id.aperture_base),
            aperture_size: U64::new(id.aperture_size),
            hidden_base: U64::new(id.hidden_base),
            hidden_size: U64::new(id.hidden_size),
            stream_id: U64::new(self.stream_id),
            reserved3: [0; 4],
            header_crc: U32::new(0),
        };
        h.header_crc = U32::new(crc32(h.as_bytes().get(..76).unwrap_or_default()));
        *out = zerocopy::transmute!(h);
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
pub(crate) mod tests {
    use super::*;

    pub(crate) const IDENTITY: DeviceIdentity = DeviceIdentity {
        pci_vendor: 0x8086,
        pci_device: 0x1912,
        generation: 9,
        fence_count: 4,
        aperture_base: 0x0800_0000,
        aperture_size: 0x0800_0000,
        hidden_base: 0x1_0000_0000,
        hidden_size: 0x1800_0000,
        page_shift: 12,
    };

    pub(crate) const REPR: StreamHeaderRepr = StreamHeaderRepr {
        minor: 0,
        flags: 0,
        identity: IDENTITY,
        stream_id: 0x0123_4567_89AB_CDEF,
    };

    /// REPR emitted; CRC computed independently in `crc_field` below.
    pub(crate) static BYTES: [u8; 80] = [
        b'v', b'G', b'P', b'U', b'm', b'i', b'g', b'\n', // magic
        0x01, 0x00, 0x00, 0x00, 0x50, 0x00, 0x00, 0x00, // major minor header_len flags
        0x86, 0x80, 0x12, 0x19, 0x09, 0x00, 0x0C, 0x00, // vendor device gen rsv shift rsv
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // fence_count reserved2
        0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, // aperture_base
        0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, // aperture_size
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // hidden_base
        0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, // hidden_size
        0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01, // stream_id
        0x00, 0x00, 0x00, 0x00, 0x44, 0x18, 0xA9, 0x11, // reserved3 header_crc
    ];

    #[test]
    fn crc_field() {
        let crc = crc32(&BYTES[..76]);
        assert_eq!(BYTES[76..].to_vec(), crc.to_le_bytes().to_vec());
    }

    #[test]
    fn deconstruct() {
        let h: StreamHeader = zerocopy::transmute!(BYTES);
        assert_eq!(h.magic, MAGIC);
        assert_eq!(h.major.get(), 1);
        assert_eq!(h.header_len.get(), 80);
        assert_eq!(h.pci_device.get(), 0x1912);
        assert_eq!(h.page_shift, 12);
        assert_eq!(h.hidden_base.get(), 0x1_0000_0000);
        assert_eq!(h.stream_id.get(), 0x0123_4567_89AB_CDEF);
    }

    #[test]
    fn construct() {
        let mut out = [0xAA; 80];
        REPR.emit(&mut out);
        assert_eq!(out, BYTES);
    }

    #[test]
    fn parse() {
        assert_eq!(StreamHeaderRepr::parse(&BYTES), Ok(REPR));
        // Extra bytes after the header are not the header's business.
        let mut longer = [0u8; 90];
        longer[..80].copy_from_slice(&BYTES);
        assert_eq!(StreamHeaderRepr::parse(&longer), Ok(REPR));
    }

    #[test]
    fn emit_parse_roundtrip_minor() {
        let r = StreamHeaderRepr {
            minor: 7,
            flags: 0x00FF,
            ..REPR
        };
        let mut out = [0; 80];
        r.emit(&mut out);
        assert_eq!(StreamHeaderRepr::parse(&out), Ok(r));
    }

    fn kind_of(bytes: &[u8]) -> ErrorKind {
        StreamHeaderRepr::parse(bytes).unwrap_err().kind()
    }

    fn with_crc(mut b: [u8; 80]) -> [u8; 80] {
        let c = crc32(&b[..76]);
        b[76..].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn truncated_header() {
        assert_eq!(kind_of(&BYTES[..79]), ErrorKind::Truncated);
        assert_eq!(kind_of(&[]), ErrorKind::Truncated);
    }

    #[test]
    fn bad_fields() {
        let mut b = BYTES;
        b[0] = b'V';
        assert_eq!(kind_of(&b), ErrorKind::BadMagic);
        let mut b = BYTES;
        b[8] = 2;
        b[10] = 3;
        assert_eq!(
            kind_of(&b),
            ErrorKind::UnsupportedVersion { major: 2, minor: 3 }
        );
        let mut b = BYTES;
        b[12] = 81;
        assert_eq!(kind_of(&b), ErrorKind::BadHeaderLen { len: 81 });
        let mut b = BYTES;
        b[30] ^= 1;
        let computed = crc32(&b[..76]);
        assert_eq!(
            kind_of(&b),
            ErrorKind::BadHeaderCrc {
                stored: 0x11A9_1844,
                computed
            }
        );
        let mut b = BYTES;
        b[21] = 1;
        assert_eq!(kind_of(&with_crc(b)), ErrorKind::ReservedNotZero);
        let mut b = BYTES;
        b[72] = 1;
        assert_eq!(kind_of(&with_crc(b)), ErrorKind::ReservedNotZero);
        let mut b = BYTES;
        b[15] = 0x81;
        // Only the required bits this build does not implement are reported.
        assert_eq!(
            kind_of(&with_crc(b)),
            ErrorKind::UnsupportedCapability {
                flags: 0x8100 & !IMPLEMENTED_CAPABILITIES
            }
        );
        // AUTHENTICATED (bit 8) is a capability of `auth` builds only.
        let mut b = BYTES;
        b[15] = 0x01;
        let parsed = StreamHeaderRepr::parse(&with_crc(b));
        if cfg!(feature = "auth") {
            assert_eq!(parsed.map(|h| h.flags), Ok(AUTHENTICATED));
        } else {
            assert_eq!(
                parsed.unwrap_err().kind(),
                ErrorKind::UnsupportedCapability { flags: 0x0100 }
            );
        }
        let mut b = BYTES;
        b[22] = 16;
        assert_eq!(
            kind_of(&with_crc(b)),
            ErrorKind::UnsupportedPageSize { page_shift: 16 }
        );
    }

    #[test]
    fn compatibility() {
        assert_eq!(IDENTITY.check_compatible(&IDENTITY), Ok(()));
        let moved = DeviceIdentity {
            aperture_base: 0,
            hidden_base: 0x2_0000_0000,
            ..IDENTITY
        };
        assert_eq!(IDENTITY.check_compatible(&moved), Ok(()));
        let other = DeviceIdentity {
            pci_device: 0x5912,
            fence_count: 8,
            ..IDENTITY
        };
        assert_eq!(
            IDENTITY.check_compatible(&other),
            Err(Incompatible::Device {
                stream: 0x1912,
                local: 0x5912
            })
        );
        let other = DeviceIdentity {
            fence_count: 8,
            ..IDENTITY
        };
        assert_eq!(
            IDENTITY.check_compatible(&other),
            Err(Incompatible::FenceCount {
                stream: 4,
                local: 8
            })
        );
        let other = DeviceIdentity {
            hidden_size: 1,
            ..IDENTITY
        };
        assert_eq!(
            IDENTITY.check_compatible(&other).unwrap_err().fault(),
            Fault::Incompatible
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(0u8.., 0..100)) {
            let _ = StreamHeaderRepr::parse(&bytes);
        }

        #[test]
        fn emit_parse_any(vendor: u16, device: u16, generation: u8, fences: u32,
                          ab: u64, asz: u64, hb: u64, hsz: u64, id: u64, minor: u16, opt in 0u16..256) {
            let r = StreamHeaderRepr {
                minor,
                flags: opt,
                identity: DeviceIdentity {
                    pci_vendor: vendor, pci_device: device, generation, fence_count: fences,
                    aperture_base: ab, aperture_size: asz, hidden_base: hb, hidden_size: hsz,
                    page_shift: 12,
                },
                stream_id: id,
            };
            let mut out = [0; 80];
            r.emit(&mut out);
            proptest::prop_assert_eq!(StreamHeaderRepr::parse(&out), Ok(r));
        }
    }
}
