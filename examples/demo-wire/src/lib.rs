//! The wire around the library's migration stream on the reference embeddings' connections
//! (`cargo xtask migrate`'s model guest, and the KVM VMM `kvm-vmm`): one framing and one
//! encoding of control messages, so both protocols say them the same way.
//!
//! - **Framing**: every message is a 5-byte header — kind (`u8`, the protocol's own numbering)
//!   and payload length (`u32`, little-endian, bounded by the protocol's
//!   [`Framing::max_payload`]) — and the payload.
//! - **Control messages** (hello, vCPU state, acknowledgements, verdicts, errors) are postcard
//!   encodings of the protocol's Rust types ([`encode`], [`decode`]): irregular messages whose
//!   both ends are ours. Bulk payloads (the library's stream, guest pages) travel as they are,
//!   with their own fixed layouts.
//!
//! A peer's bytes are untrusted: an oversized length, a truncated message or a control message
//! with bytes left over is an error, never a panic.
#![forbid(unsafe_code)]

use core::fmt;
use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of a message header.
pub const HEADER_LEN: usize = 5;

/// A protocol's framing: its largest payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The largest payload a message may carry (at most `u32::MAX`).
    pub max_payload: usize,
}

/// Why a message could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection before a message began.
    Closed,
    /// The peer closed the connection inside a message.
    ClosedMidMessage,
    /// The header announced a payload larger than the protocol allows.
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The protocol's limit.
        max: usize,
    },
    /// Reading failed.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("peer closed the connection"),
            Self::ClosedMidMessage => f.write_str("peer closed the connection mid-message"),
            Self::TooLarge { len, max } => {
                write!(f, "message of {len} bytes announced (limit {max})")
            }
            Self::Io(e) => write!(f, "reading from the peer: {e}"),
        }
    }
}

impl core::error::Error for FrameError {}

impl Framing {
    /// A framing whose payloads are at most `max_payload` bytes.
    #[must_use]
    pub const fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// The header of a message of `kind` with `len` payload bytes; an error if `len` is over the
    /// limit.
    pub fn header(&self, kind: u8, len: usize) -> io::Result<[u8; HEADER_LEN]> {
        let len = u32::try_from(len)
            .ok()
            .filter(|l| usize::try_from(*l).is_ok_and(|l| l <= self.max_payload))
            .ok_or_else(|| io::Error::other("message too large"))?;
        let [a, b, c, d] = len.to_le_bytes();
        Ok([kind, a, b, c, d])
    }

    /// The kind and payload length a received header announces.
    pub fn parse_header(&self, h: [u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
        let [kind, a, b, c, d] = h;
        let len = usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(usize::MAX);
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        Ok((kind, len))
    }

    /// Write one message whose payload is `parts` concatenated (not flushed).
    pub fn send(&self, w: &mut impl Write, kind: u8, parts: &[&[u8]]) -> io::Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        w.write_all(&self.header(kind, len)?)?;
        for p in parts {
            w.write_all(p)?;
        }
        Ok(())
    }

    /// Read one message into `buf` (resized to the payload); returns its kind.
    pub fn recv(&self, r: &mut impl Read, buf: &mut Vec<u8>) -> Result<u8, FrameError> {
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Closed,
            _ => FrameError::Io(e),
        })?;
        let (kind, len) = self.parse_header(h)?;
        buf.resize(len, 0);
        r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::ClosedMidMessage,
            _ => FrameError::Io(e),
        })?;
        Ok(kind)
    }
}

/// Why a control message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not an encoding of the expected type (truncated, or a value out of range).
    Malformed(postcard::Error),
    /// A whole message decoded with this many bytes left over.
    LeftOver(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "{e}"),
            Self::LeftOver(n) => write!(f, "{n} bytes left over"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Encode a control message.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(msg)
}

/// Decode a control message that must fill all of `b`.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes(b) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(DecodeError::LeftOver(rest.len())),
        Err(e) => Err(DecodeError::Malformed(e)),
    }
}

/// Decode the start of `b` as a `T` (a versioned preamble, say) and return the rest.
pub fn decode_prefix<T: DeserializeOwned>(b: &[u8]) -> Result<(T, &[u8]), DecodeError> {
    postcard::take_from_bytes(b).map_err(DecodeError::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Verdict {
        pass: bool,
        frames: u64,
        text: String,
        extra: Option<u32>,
    }

    #[test]
    fn messages_round_trip_and_damage_is_an_error() {
        let f = Framing::new(64);
        let mut wire = Vec::new();
        f.send(&mut wire, 3, &[b"stream ", b"bytes"]).unwrap();
        f.send(&mut wire, 7, &[]).unwrap();
        let mut r = &wire[..];
        let mut buf = Vec::new();
        assert_eq!(f.recv(&mut r, &mut buf).unwrap(), 3);
        assert_eq!(buf, b"stream bytes");
        assert_eq!(f.recv(&mut r, &mut buf).unwrap(), 7);
        assert!(buf.is_empty());
        assert!(matches!(f.recv(&mut r, &mut buf), Err(FrameError::Closed)));
        // Cut inside the first message.
        assert!(matches!(
            f.recv(&mut &wire[..8], &mut buf),
            Err(FrameError::ClosedMidMessage)
        ));
        // Over the limit, either way.
        assert!(f.send(&mut Vec::new(), 3, &[&[0; 65]]).is_err());
        let mut big = vec![3u8];
        big.extend_from_slice(&65u32.to_le_bytes());
        assert!(matches!(
            f.recv(&mut &big[..], &mut buf),
            Err(FrameError::TooLarge { len: 65, max: 64 })
        ));
    }

    #[test]
    fn control_messages_decode_whole_or_not_at_all() {
        let v = Verdict {
            pass: true,
            frames: 1 << 40,
            text: "equal".into(),
            extra: Some(7),
        };
        let b = encode(&v).unwrap();
        assert_eq!(decode::<Verdict>(&b).unwrap(), v);
        for n in 0..b.len() {
            assert!(decode::<Verdict>(&b[..n]).is_err(), "{n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode::<Verdict>(&long), Err(DecodeError::LeftOver(1)));
        let (first, rest) = decode_prefix::<bool>(&b).unwrap();
        assert!(first);
        assert_eq!(rest, &b[1..]);
    }
}
