//! Fixed-size payloads migstream parses itself: ROUND ([`RoundRepr`]) and END ([`EndRepr`]).

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::ErrorKind;

/// Record-format version of ROUND, END and PAGES records in format 1.0.
pub const CONTROL_VERSION: u8 = 1;
/// ROUND payload length.
pub const ROUND_LEN: usize = 24;
/// END payload length.
pub const END_LEN: usize = 16;

/// Byte view of a ROUND payload (24 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RoundPayload {
    /// Round number.
    pub round: U32,
    /// Zero.
    pub reserved: U32,
    /// Pages sent in the round.
    pub pages: U64,
    /// Stream bytes of the round.
    pub bytes: U64,
}
static_assertions::const_assert_eq!(core::mem::size_of::<RoundPayload>(), ROUND_LEN);

/// Byte view of an END payload (16 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EndPayload {
    /// Records before END.
    pub record_count: U32,
    /// CRC over the stream header and all record headers before END.
    pub stream_crc: U32,
    /// Stream bytes before the END record (stream header included).
    pub byte_count: U64,
}
static_assertions::const_assert_eq!(core::mem::size_of::<EndPayload>(), END_LEN);

/// A ROUND record: marks the end of a pre-copy round. The totals are the sender's, advisory;
/// the decoder does not check them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RoundRepr {
    /// Round number (the sender counts from 0).
    pub round: u32,
    /// Pages sent in this round on this stream, of every encoding (FULL, ZERO, DUP, DELTA).
    pub pages: u64,
    /// Stream bytes written in this round on this stream: from the round's start (offset 0 for
    /// the first round, else after the previous ROUND record or where the source stopped) up to
    /// this ROUND record's header (SPEC.md §6.2).
    pub bytes: u64,
}

impl RoundRepr {
    /// Payload bytes.
    pub const BUFFER_LEN: usize = ROUND_LEN;

    /// Parse a ROUND payload; `bytes` must be exactly 24 bytes.
    ///
    /// # Errors
    /// [`ErrorKind::BadRoundOrEnd`] for another length, [`ErrorKind::ReservedNotZero`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ErrorKind> {
        let p = RoundPayload::read_from_bytes(bytes).map_err(|_| ErrorKind::BadRoundOrEnd {
            expected: 24,
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        })?;
        if p.reserved.get() != 0 {
            return Err(ErrorKind::ReservedNotZero);
        }
        Ok(Self {
            round: p.round.get(),
            pages: p.pages.get(),
            bytes: p.bytes.get(),
        })
    }

    /// Write the 24-byte payload.
    pub fn emit(&self, out: &mut [u8; ROUND_LEN]) {
        let p = RoundPayload {
            round: U32::new(self.round),
            reserved: U32::new(0),
            pages: U64::new(self.pages),
            bytes: U64::new(self.bytes),
        };
        *out = zerocopy::transmute!(p);
    }
}

/// The END record: totals that bind the whole stream. The decoder verifies all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EndRepr {
    /// Records before END (= END's own index).
    pub record_count: u32,
    /// CRC-32 over the 80-byte stream header followed by every earlier record's 16-byte header.
    pub stream_crc: u32,
    /// Stream bytes before the END record, the stream header included.
    pub byte_count: u64,
}

impl EndRepr {
    /// Payload bytes.
    pub const BUFFER_LEN: usize = END_LEN;

    /// Parse an END payload; `bytes` must be exactly 16 bytes.
    ///
    /// # Errors
    /// [`ErrorKind::BadRoundOrEnd`] for another length.
    pub fn parse(bytes: &[u8]) -> Result<Self, ErrorKind> {
        let p = EndPayload::read_from_bytes(bytes).map_err(|_| ErrorKind::BadRoundOrEnd {
            expected: 16,
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        })?;
        Ok(Self {
            record_count: p.record_count.get(),
            stream_crc: p.stream_crc.get(),
            byte_count: p.byte_count.get(),
        })
    }

    /// Write the 16-byte payload.
    pub fn emit(&self, out: &mut [u8; END_LEN]) {
        let p = EndPayload {
            record_count: U32::new(self.record_count),
            stream_crc: U32::new(self.stream_crc),
            byte_count: U64::new(self.byte_count),
        };
        *out = zerocopy::transmute!(p);
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

    static ROUND: [u8; 24] = [
        3, 0, 0, 0, 0, 0, 0, 0, // round, reserved
        0x10, 0, 0, 0, 0, 0, 0, 0, // pages
        0x00, 0x10, 0x01, 0, 0, 0, 0, 0, // bytes
    ];
    const ROUND_REPR: RoundRepr = RoundRepr {
        round: 3,
        pages: 16,
        bytes: 0x1_1000,
    };
    static END: [u8; 16] = [
        7, 0, 0, 0, 0xDD, 0xCC, 0xBB, 0xAA, // record_count, stream_crc
        0x50, 0x01, 0, 0, 0, 0, 0, 0, // byte_count
    ];
    const END_REPR: EndRepr = EndRepr {
        record_count: 7,
        stream_crc: 0xAABB_CCDD,
        byte_count: 0x150,
    };

    #[test]
    fn deconstruct() {
        let p: RoundPayload = zerocopy::transmute!(ROUND);
        assert_eq!(p.round.get(), 3);
        assert_eq!(p.bytes.get(), 0x1_1000);
        let e: EndPayload = zerocopy::transmute!(END);
        assert_eq!(e.stream_crc.get(), 0xAABB_CCDD);
    }

    #[test]
    fn construct() {
        let mut r = [0xFF; 24];
        ROUND_REPR.emit(&mut r);
        assert_eq!(r, ROUND);
        let mut e = [0xFF; 16];
        END_REPR.emit(&mut e);
        assert_eq!(e, END);
    }

    #[test]
    fn parse() {
        assert_eq!(RoundRepr::parse(&ROUND), Ok(ROUND_REPR));
        assert_eq!(EndRepr::parse(&END), Ok(END_REPR));
    }

    #[test]
    fn bad_lengths_and_reserved() {
        assert_eq!(
            RoundRepr::parse(&ROUND[..23]),
            Err(ErrorKind::BadRoundOrEnd {
                expected: 24,
                len: 23
            })
        );
        assert_eq!(
            EndRepr::parse(&ROUND),
            Err(ErrorKind::BadRoundOrEnd {
                expected: 16,
                len: 24
            })
        );
        let mut r = ROUND;
        r[5] = 1;
        assert_eq!(RoundRepr::parse(&r), Err(ErrorKind::ReservedNotZero));
    }
}
