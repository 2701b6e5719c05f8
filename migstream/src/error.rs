//! Error types: what went wrong, where in the stream, and whose fault it is.

use core::fmt;

use crate::record::RecordKind;

/// Whose fault an error is: decides between "abort the migration", "inject a fault into the
/// guest", "retry with more resources" and "fix the caller".
///
/// One vocabulary for the workspace: the stream's errors ([`DecodeError::fault`]), the register
/// file's and the engines' (`vgpu-mig-mmio`, `vgpu-mig-engines`) and the vGPU's answer in it, each
/// from what it can know. (`vgpu-mig-gtt` keeps its own two-way split: it cannot tell a stream's
/// entry from a guest's write; the vGPU, which can, answers for it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Fault {
    /// The migration stream (the peer) is malformed, damaged or hostile (or was damaged in
    /// transit).
    Stream,
    /// The stream is well formed but uses a format version or feature this reader lacks.
    Unsupported,
    /// The stream describes a device this destination cannot host (see [`crate::Incompatible`]).
    Incompatible,
    /// The guest programmed the device in a way the device model refuses (a bad offset, size or
    /// alignment, a bad descriptor).
    Guest,
    /// A local limit, an undersized caller buffer, or the embedder's backend failed: the stream
    /// may be fine, this side cannot take it.
    Local,
    /// The operation is not allowed in the current state (for example not quiesced; a caller
    /// bug).
    State,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Stream => "stream fault",
            Fault::Unsupported => "unsupported by this reader",
            Fault::Incompatible => "incompatible device",
            Fault::Guest => "guest fault",
            Fault::Local => "local limit",
            Fault::State => "not allowed in this state",
        })
    }
}

/// Why a PAGES record payload is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PageRunError {
    /// Fewer than 16 payload bytes remain where a page-run header must start.
    ShortHeader,
    /// The run's `count` is zero.
    ZeroCount,
    /// `first_frame + count` overflows 64 bits.
    FrameOverflow,
    /// The run's page bytes extend past the end of the record payload.
    Overrun,
    /// The run's `encoding` is not defined in this format version.
    UnknownEncoding {
        /// The encoding byte found.
        encoding: u8,
    },
    /// A reserved byte of the run header is not zero.
    ReservedNotZero,
    /// A DELTA page is malformed: its length exceeds 4096 or leaves no room in the payload for
    /// the length fields of the run's later pages, or a segment has no bytes, leaves the page,
    /// or runs past the page's length.
    BadDelta,
}

impl fmt::Display for PageRunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageRunError::ShortHeader => f.write_str("page-run header cut off by the record end"),
            PageRunError::ZeroCount => f.write_str("page run with count 0"),
            PageRunError::FrameOverflow => f.write_str("page run first_frame + count overflows"),
            PageRunError::Overrun => f.write_str("page run longer than the remaining payload"),
            PageRunError::UnknownEncoding { encoding } => {
                write!(f, "unknown page-run encoding {encoding}")
            }
            PageRunError::ReservedNotZero => f.write_str("page-run reserved bytes not zero"),
            PageRunError::BadDelta => f.write_str("malformed DELTA page"),
        }
    }
}

/// Which total in the END record disagrees with what the decoder saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EndMismatch {
    /// `record_count` differs from the records decoded before END.
    RecordCount {
        /// Value in the END record.
        stream: u32,
        /// Records the decoder saw.
        seen: u32,
    },
    /// `byte_count` differs from the bytes decoded before END.
    ByteCount {
        /// Value in the END record.
        stream: u64,
        /// Bytes the decoder saw.
        seen: u64,
    },
    /// `stream_crc` differs from the CRC of the stream header and record headers.
    StreamCrc {
        /// Value in the END record.
        stream: u32,
        /// Value the decoder computed.
        computed: u32,
    },
}

/// Why an authenticated (or supposedly authenticated) stream is refused (SPEC.md §10.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AuthError {
    /// The stream is authenticated but this decoder has no key (a local configuration error:
    /// [`Fault::Local`]).
    KeyRequired,
    /// This decoder has a key, so it requires an authenticated stream, and the stream header
    /// does not set the AUTHENTICATED flag.
    NotAuthenticated,
    /// END arrived in an authenticated stream without a MAC record right before it (the MAC
    /// record was stripped or never written).
    MissingMac,
    /// A record other than END follows the MAC record (a moved or duplicated MAC record).
    RecordAfterMac,
    /// A MAC record in a stream whose header does not say it is authenticated.
    UnexpectedMac,
    /// The MAC record's tag does not match the stream bytes before it under this decoder's key:
    /// the stream was changed, or produced with another key or for another stream id.
    BadTag,
}

impl AuthError {
    /// Whose fault: [`Fault::Local`] for [`AuthError::KeyRequired`], else [`Fault::Stream`].
    #[must_use]
    pub const fn fault(&self) -> Fault {
        match self {
            AuthError::KeyRequired => Fault::Local,
            _ => Fault::Stream,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::KeyRequired => "authenticated stream, but no key is configured",
            AuthError::NotAuthenticated => {
                "a key is configured, but the stream is not authenticated"
            }
            AuthError::MissingMac => "END without a MAC record before it",
            AuthError::RecordAfterMac => "a record other than END after the MAC record",
            AuthError::UnexpectedMac => "MAC record in a stream that is not authenticated",
            AuthError::BadTag => "MAC tag mismatch (stream altered, wrong key or stream id)",
        })
    }
}

/// What went wrong while decoding (the "what" of a [`DecodeError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ErrorKind {
    /// The stream does not start with `b"vGPUmig\n"`.
    BadMagic,
    /// The stream's major version is not 1.
    UnsupportedVersion {
        /// Major version in the stream.
        major: u16,
        /// Minor version in the stream.
        minor: u16,
    },
    /// `header_len` is not 80.
    BadHeaderLen {
        /// Value found.
        len: u16,
    },
    /// The stream header CRC does not match.
    BadHeaderCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over header bytes 0..76.
        computed: u32,
    },
    /// The header sets a required-capability flag (bits 8..15) this reader does not know.
    UnsupportedCapability {
        /// The unknown required flags.
        flags: u16,
    },
    /// The header's `page_shift` is not 12.
    UnsupportedPageSize {
        /// Value found.
        page_shift: u8,
    },
    /// A reserved field of the stream header, a ROUND or an END payload is not zero.
    ReservedNotZero,
    /// A record's CRC does not match.
    BadRecordCrc {
        /// CRC stored in the record header.
        stored: u32,
        /// CRC computed over the record header's first 12 bytes and the payload.
        computed: u32,
    },
    /// A record's `payload_len` exceeds the limit (format limit: the stream's fault;
    /// [`crate::Limits`] below the format limit: local fault).
    LengthTooLarge {
        /// Length claimed.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// A record's `index` is not the number of records before it (drop, duplicate, reorder).
    BadIndex {
        /// Index the decoder expected.
        expected: u32,
        /// Index found.
        got: u32,
    },
    /// A record sets flag bits undefined in this format version.
    BadFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A record of unknown kind carries the MANDATORY flag.
    UnknownMandatory {
        /// The unknown kind.
        kind: RecordKind,
    },
    /// A PAGES, ROUND or END record has a record-format version this reader lacks.
    UnsupportedRecordVersion {
        /// The record's kind.
        kind: RecordKind,
        /// Version found.
        version: u8,
    },
    /// A PAGES payload is malformed.
    MalformedPageRun(PageRunError),
    /// A ROUND or END payload does not have its fixed length.
    BadRoundOrEnd {
        /// Required payload length.
        expected: u32,
        /// Payload length found.
        len: u32,
    },
    /// The END record's totals disagree with the stream.
    EndMismatch(EndMismatch),
    /// Bytes follow the END record.
    TrailingData,
    /// The stream ended before END was verified, or a buffer is shorter than a fixed structure.
    Truncated,
    /// More than `u32::MAX` records: the record index would overflow.
    TooManyRecords,
    /// Authentication refused the stream (SPEC.md §10).
    Auth(AuthError),
}

impl ErrorKind {
    /// Whose fault this kind of error is.
    #[must_use]
    pub const fn fault(&self) -> Fault {
        match self {
            ErrorKind::UnsupportedVersion { .. }
            | ErrorKind::UnsupportedCapability { .. }
            | ErrorKind::UnsupportedPageSize { .. }
            | ErrorKind::UnknownMandatory { .. }
            | ErrorKind::UnsupportedRecordVersion { .. } => Fault::Unsupported,
            ErrorKind::LengthTooLarge { len, .. } if *len <= crate::record::MAX_PAYLOAD => {
                Fault::Local
            }
            ErrorKind::Auth(e) => e.fault(),
            _ => Fault::Stream,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::BadMagic => f.write_str("bad magic (not a vGPU migration stream)"),
            ErrorKind::UnsupportedVersion { major, minor } => {
                write!(f, "unsupported format version {major}.{minor}")
            }
            ErrorKind::BadHeaderLen { len } => write!(f, "stream header length {len}, expected 80"),
            ErrorKind::BadHeaderCrc { stored, computed } => write!(
                f,
                "bad stream header CRC (stored {stored:#010x}, computed {computed:#010x})"
            ),
            ErrorKind::UnsupportedCapability { flags } => {
                write!(f, "unsupported required capability flags {flags:#06x}")
            }
            ErrorKind::UnsupportedPageSize { page_shift } => {
                write!(f, "unsupported page shift {page_shift}")
            }
            ErrorKind::ReservedNotZero => f.write_str("reserved field not zero"),
            ErrorKind::BadRecordCrc { stored, computed } => write!(
                f,
                "bad record CRC (stored {stored:#010x}, computed {computed:#010x})"
            ),
            ErrorKind::LengthTooLarge { len, max } => {
                write!(f, "payload length {len} exceeds limit {max}")
            }
            ErrorKind::BadIndex { expected, got } => {
                write!(f, "record index {got}, expected {expected}")
            }
            ErrorKind::BadFlags { flags } => write!(f, "undefined record flags {flags:#04x}"),
            ErrorKind::UnknownMandatory { kind } => {
                write!(f, "unknown mandatory record kind {kind}")
            }
            ErrorKind::UnsupportedRecordVersion { kind, version } => {
                write!(f, "unsupported version {version} of record kind {kind}")
            }
            ErrorKind::MalformedPageRun(e) => write!(f, "malformed PAGES payload: {e}"),
            ErrorKind::BadRoundOrEnd { expected, len } => {
                write!(
                    f,
                    "payload length {len}, this record kind requires {expected}"
                )
            }
            ErrorKind::EndMismatch(EndMismatch::RecordCount { stream, seen }) => {
                write!(f, "END says {stream} records, stream had {seen}")
            }
            ErrorKind::EndMismatch(EndMismatch::ByteCount { stream, seen }) => {
                write!(f, "END says {stream} bytes, stream had {seen}")
            }
            ErrorKind::EndMismatch(EndMismatch::StreamCrc { stream, computed }) => write!(
                f,
                "END stream CRC {stream:#010x}, computed {computed:#010x}"
            ),
            ErrorKind::TrailingData => f.write_str("data after the END record"),
            ErrorKind::Truncated => f.write_str("stream truncated"),
            ErrorKind::TooManyRecords => f.write_str("record index overflow"),
            ErrorKind::Auth(e) => write!(f, "authentication: {e}"),
        }
    }
}

/// A decoding failure: what ([`ErrorKind`]), where (stream byte offset, record index and kind)
/// and whose fault ([`DecodeError::fault`]). Small and `Copy`.
///
/// `offset` is the stream offset of the start of the structure at fault: 0 for the stream
/// header, the record header's offset for record-level errors (including CRC and END errors),
/// the page-run header's offset for [`ErrorKind::MalformedPageRun`], and for
/// [`ErrorKind::TrailingData`] / [`ErrorKind::Truncated`] the offset of the first byte after
/// the END record / the number of bytes received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DecodeError {
    kind: ErrorKind,
    offset: u64,
    record: Option<(u32, RecordKind)>,
}

impl DecodeError {
    /// Build an error (for layers above that reuse this type in tests or adapters).
    #[must_use]
    pub const fn new(kind: ErrorKind, offset: u64, record: Option<(u32, RecordKind)>) -> Self {
        Self {
            kind,
            offset,
            record,
        }
    }

    /// What went wrong.
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Stream byte offset (see the type docs for which byte).
    #[must_use]
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Index and kind of the record being decoded, if the error is inside a record.
    #[must_use]
    pub const fn record(&self) -> Option<(u32, RecordKind)> {
        self.record
    }

    /// Whose fault it is.
    #[must_use]
    pub const fn fault(&self) -> Fault {
        self.kind.fault()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "migration stream: {} at byte {}", self.kind, self.offset)?;
        if let Some((index, kind)) = self.record {
            write!(f, " (record #{index}, {kind})")?;
        }
        write!(f, " [{}]", self.fault())
    }
}

impl core::error::Error for DecodeError {}

/// An encoder call was invalid. All variants are local misuse ([`Fault::Local`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EncodeError {
    /// A record was written before the stream header was complete.
    HeaderNotWritten,
    /// `write_header` was called after the header was complete.
    HeaderAlreadyWritten,
    /// The END record is complete; nothing more may be written.
    Finished,
    /// The payload is longer than [`crate::MAX_PAYLOAD`].
    PayloadTooLarge {
        /// Payload length requested.
        len: usize,
    },
    /// Flag bits undefined in this format version were requested.
    BadFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A call continued a partially written record with a different kind, flags, version or
    /// payload length, or started a different item while one was partially written.
    RecordMismatch,
    /// The record index would overflow `u32`.
    TooManyRecords,
    /// A page run given to [`crate::PagesPayload`] is invalid (count 0, frame overflow or
    /// unknown encoding).
    BadPageRun,
    /// An authenticating encoder was asked to write a MAC or END record with `write_record`,
    /// or a record after its MAC record: in an authenticated stream both are written by
    /// [`crate::Encoder::write_end`], which puts the MAC record right before END.
    AuthRecord,
}

impl EncodeError {
    /// Always [`Fault::Local`]: the encoder only rejects its caller's mistakes.
    #[must_use]
    pub const fn fault(&self) -> Fault {
        Fault::Local
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::HeaderNotWritten => f.write_str("stream header not written yet"),
            EncodeError::HeaderAlreadyWritten => f.write_str("stream header already written"),
            EncodeError::Finished => f.write_str("stream already ended"),
            EncodeError::PayloadTooLarge { len } => write!(
                f,
                "payload of {len} bytes exceeds the format maximum {}",
                crate::record::MAX_PAYLOAD
            ),
            EncodeError::BadFlags { flags } => write!(f, "undefined record flags {flags:#04x}"),
            EncodeError::RecordMismatch => {
                f.write_str("call does not continue the partially written record")
            }
            EncodeError::TooManyRecords => f.write_str("record index overflow"),
            EncodeError::BadPageRun => f.write_str("invalid page run"),
            EncodeError::AuthRecord => {
                f.write_str("MAC and END of an authenticated stream are written by write_end")
            }
        }
    }
}

impl core::error::Error for EncodeError {}
