//! The one checksum of the stream: CRC-32/ISO-HDLC (the "IEEE" / zlib CRC-32).
//!
//! Parameters: width 32, polynomial `0x04C11DB7` (reflected `0xEDB88320`), init `0xFFFFFFFF`,
//! reflected input and output, final XOR `0xFFFFFFFF`; check value of `b"123456789"` is
//! `0xCBF43926`. Backed by `crc32fast` (table fallback, PCLMULQDQ when the `std` feature can
//! detect it). Other crates use these two items so the workspace has a single CRC.

/// CRC-32/ISO-HDLC of `bytes`.
///
/// ```
/// assert_eq!(vgpu_mig_stream::crc32(b"123456789"), 0xCBF4_3926);
/// ```
#[must_use]
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Incremental CRC-32/ISO-HDLC: `Crc32::new()` + `update(a)` + `update(b)` equals
/// [`crc32`] of `a ++ b`.
///
/// It stores only the 4-byte running value, so it is `Copy` and `const`-constructible.
///
/// ```
/// let mut c = vgpu_mig_stream::Crc32::new();
/// c.update(b"1234");
/// c.update(b"56789");
/// assert_eq!(c.value(), vgpu_mig_stream::crc32(b"123456789"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Crc32 {
    /// CRC of the bytes seen so far (finalised form; `0` for no bytes).
    state: u32,
}

impl Crc32 {
    /// A CRC over zero bytes.
    #[must_use]
    pub const fn new() -> Self {
        Self { state: 0 }
    }

    /// Append `bytes` to the checksummed sequence.
    pub fn update(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut h = crc32fast::Hasher::new_with_initial(self.state);
        h.update(bytes);
        self.state = h.finalize();
    }

    /// CRC of everything passed to [`update`](Self::update) so far.
    #[must_use]
    pub const fn value(&self) -> u32 {
        self.state
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

    #[test]
    fn check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(Crc32::new().value(), 0);
    }

    proptest::proptest! {
        #[test]
        fn incremental_equals_oneshot(data in proptest::collection::vec(0u8.., 0..600), cut in 0usize..600) {
            let cut = cut.min(data.len());
            let mut c = Crc32::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            proptest::prop_assert_eq!(c.value(), crc32(&data));
        }
    }
}
