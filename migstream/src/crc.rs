//! The one checksum of the stream: CRC-32/ISO-HDLC (the "IEEE" / zlib CRC-32).
//!
//! Parameters: width 32, polynomial `0x04C11DB7` (reflected `0xEDB88320`), init `0xFFFFFFFF`,
//! reflected input and output, final XOR `0xFFFFFFFF`; check value of `b"123456789"` is
//! `0xCBF43926`. Backed by `crc32fast`, which folds the input with carry-less multiplies:
//! 16 streams of `VPCLMULQDQ` over AVX-512 registers, 8 over AVX2, 4 over SSE `PCLMULQDQ`, or
//! a slice-by-16 table when the CPU has none of these. With the `std` feature the kernel is
//! chosen at run time (the CPU's features, detected once and cached); without it, at compile
//! time from the target features (build with `-C target-feature=+avx512f,+vpclmulqdq` or a
//! `target-cpu` that has them, such as `x86-64-v4` on these CPUs, to get the wide kernel in a
//! `no_std` embedding). [`crc32_kernel`] names the kernel. The wire value is the same whichever
//! runs. Other crates use these items so the workspace has a single CRC.
//!
//! The encoder copies page bytes into the stream with [`Crc32::update_copy`]: copy and CRC in
//! one pass (`vgpu-mig-copycrc`: AVX-512 / AVX2 `VPCLMULQDQ` or SSE `PCLMULQDQ` folding, chosen
//! the same way; [`crc32_copy_kernel`] names it), the same value as copying and then `update`.

/// CRC-32/ISO-HDLC of `bytes`.
///
/// ```
/// assert_eq!(vgpu_mig_stream::crc32(b"123456789"), 0xCBF4_3926);
/// ```
#[must_use]
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The CRC-32 kernel [`crc32`] and [`Crc32`] use on this CPU, as `crc32fast` chooses it
/// (the same feature checks, in the same order), for benchmark and log output.
///
/// The wide kernels need `crc32fast` built by rustc 1.89 or later (it stabilised the
/// `VPCLMULQDQ` intrinsics); an older compiler gets the SSE kernel where this says AVX.
///
/// ```
/// let k = vgpu_mig_stream::crc32_kernel();
/// assert!(!k.is_empty());
/// ```
#[must_use]
#[cfg_attr(
    not(feature = "std"),
    allow(
        clippy::nonminimal_bool,
        clippy::eq_op,
        reason = "without std the feature checks are compile-time constants"
    )
)]
pub fn crc32_kernel() -> &'static str {
    #[cfg(all(
        any(target_arch = "x86", target_arch = "x86_64"),
        target_feature = "sse2"
    ))]
    {
        #[cfg(feature = "std")]
        macro_rules! has {
            ($f:tt) => {
                std::is_x86_feature_detected!($f)
            };
        }
        #[cfg(not(feature = "std"))]
        macro_rules! has {
            ($f:tt) => {
                cfg!(target_feature = $f)
            };
        }
        if has!("pclmulqdq") && has!("sse2") && has!("sse4.1") && has!("ssse3") {
            if has!("avx512f") && has!("vpclmulqdq") {
                return "x86 VPCLMULQDQ AVX-512 (16-stream fold)";
            }
            if has!("avx2") && has!("vpclmulqdq") {
                return "x86 VPCLMULQDQ AVX2 (8-stream fold)";
            }
            return "x86 PCLMULQDQ SSE (4-stream fold)";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        #[cfg(feature = "std")]
        let (crc, pmull) = (
            std::arch::is_aarch64_feature_detected!("crc"),
            std::arch::is_aarch64_feature_detected!("aes"),
        );
        #[cfg(not(feature = "std"))]
        let (crc, pmull) = (cfg!(target_feature = "crc"), cfg!(target_feature = "aes"));
        if crc && pmull && cfg!(target_feature = "neon") {
            return "aarch64 PMULL fold + CRC32 instructions";
        }
        if crc {
            return "aarch64 CRC32 instructions";
        }
    }
    "portable slice-by-16 table"
}

/// The copy-and-checksum kernel [`Crc32::update_copy`] uses on this CPU (chosen the way
/// [`crc32_kernel`] is: at run time with `std`, from the target features without), for
/// benchmark and log output.
///
/// ```
/// assert!(!vgpu_mig_stream::crc32_copy_kernel().is_empty());
/// ```
#[must_use]
pub fn crc32_copy_kernel() -> &'static str {
    copycrc::kernel()
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

    /// Copy `src` into `dst` and append the copied bytes to the checksummed sequence, in one
    /// pass: each piece is loaded once, stored into `dst` and folded from the same register
    /// ([`crc32_copy_kernel`] names the kernel). The CRC is of the bytes stored into `dst`, never
    /// of a second read of `src`, so it matches `dst` even if `src` changes meanwhile (guest
    /// memory a vCPU writes during the copy).
    ///
    /// Copies `min(dst.len(), src.len())` bytes; the rest of `dst` is left as it was and is not
    /// checksummed.
    ///
    /// ```
    /// let mut c = vgpu_mig_stream::Crc32::new();
    /// let mut out = [0u8; 9];
    /// c.update_copy(&mut out, b"123456789");
    /// assert_eq!(&out, b"123456789");
    /// assert_eq!(c.value(), 0xCBF4_3926);
    /// ```
    pub fn update_copy(&mut self, dst: &mut [u8], src: &[u8]) {
        self.state = copycrc::copy_crc32(self.state, dst, src);
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

    /// Every kernel crc32fast may pick agrees with a bitwise reference on lengths around each
    /// kernel's crossover (16, 128, 256, 2048 bytes) and at odd alignments.
    #[test]
    fn kernel_matches_bitwise_reference() {
        fn bitwise(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 == 1 {
                        (c >> 1) ^ 0xEDB8_8320
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let data: std::vec::Vec<u8> = (0u32..9000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 15, 16, 17, 127, 128, 255, 256, 257, 2047, 2048, 2049, 4096, 4112, 8191,
        ] {
            for skew in [0, 1, 7] {
                let bytes = &data[skew..skew + len];
                assert_eq!(crc32(bytes), bitwise(bytes), "len {len} skew {skew}");
            }
        }
        assert!(!crc32_kernel().is_empty());
    }

    proptest::proptest! {
        /// `update_copy` copies exactly and checksums like `update` of the copied bytes, after
        /// any prefix, whatever the lengths.
        #[test]
        fn update_copy_equals_update(
            data in proptest::collection::vec(0u8.., 0..9000),
            prefix in proptest::collection::vec(0u8.., 0..40),
            dst_len in 0usize..9000,
        ) {
            let mut fused = Crc32::new();
            fused.update(&prefix);
            let mut plain = fused;
            let mut out = std::vec![0x5Au8; dst_len];
            fused.update_copy(&mut out, &data);
            let n = dst_len.min(data.len());
            plain.update(&data[..n]);
            proptest::prop_assert_eq!(fused, plain);
            proptest::prop_assert_eq!(&out[..n], &data[..n]);
            proptest::prop_assert!(out[n..].iter().all(|&b| b == 0x5A));
        }

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
