//! Copy bytes and compute their CRC-32 in one pass: each 64-byte (or 32-, 16-byte) piece is
//! loaded into a vector register once, stored to the destination from that register and folded
//! into the checksum from the same register.
//!
//! The CRC is CRC-32/ISO-HDLC (the "IEEE" / zlib CRC-32; reflected polynomial `0xEDB88320`), the
//! value [`crc32fast`] computes: `copy_crc32(crc, dst, src)` returns what
//! `crc32fast::Hasher::new_with_initial(crc)` returns after `update(src)`.
//!
//! # Why one pass
//!
//! Copying and then checksumming the copy reads every byte twice; folding while copying reads it
//! once, so the checksum costs little beyond the copy. It is also what makes the checksum
//! trustworthy when the source may change under the copy (guest memory a vCPU writes while it is
//! being migrated): the CRC covers exactly the bytes stored into `dst`, because they are the
//! same register contents. A copy followed by a second read of the *source* could checksum bytes
//! that were never stored; this crate never reads the source twice.
//!
//! # Kernels
//!
//! | [`Kernel`] | needs | per step |
//! |---|---|---|
//! | [`Kernel::Avx512`] | AVX-512F, VPCLMULQDQ, PCLMULQDQ, SSE4.1 | 256 B in 4 zmm accumulators |
//! | [`Kernel::Avx2`] | AVX2, VPCLMULQDQ, PCLMULQDQ, SSE4.1 | 128 B in 4 ymm accumulators |
//! | [`Kernel::Sse`] | PCLMULQDQ, SSE4.1 | 64 B in 4 xmm accumulators |
//! | [`Kernel::Portable`] | nothing | `copy_from_slice`, then `crc32fast` |
//!
//! When the destination starts 4, 8, ..., 60 bytes past a 64-byte boundary (a page in the
//! migration stream starts 16, 32 or 48 past one) and the CPU also has AVX-512BW, the AVX-512
//! kernel stores 64-byte-aligned blocks, each built from two consecutive loads with one `valignd`,
//! and the partial first and last blocks with masked byte stores, so that no store splits a cache
//! line; the loads and the folding are unchanged.
//!
//! The accumulators fold forward by the step with carry-less multiplies; at the end they are
//! folded into one 128-bit value and reduced to 32 bits (Barrett reduction). Inputs shorter than
//! one step, and the tail after the last whole step, are copied and then checksummed with
//! `crc32fast`.
//!
//! With the `std` feature the kernel is chosen at run time from the CPU's features (detected
//! once and cached); without it, at compile time from the target features (build with
//! `-C target-cpu=x86-64-v4`, or `-C target-feature=+avx512f,+vpclmulqdq,...`, to get the wide
//! kernel in a `no_std` embedding). [`kernel`] names the kernel in use. The wide kernels need
//! rustc 1.89 or later (it stabilised their intrinsics; the build script checks); an older
//! compiler builds the SSE and portable kernels only. The vector kernels exist on `x86_64` with
//! SSE2 (not on soft-float targets such as `x86_64-unknown-none`); elsewhere the portable kernel
//! runs.
//!
//! # Safety
//!
//! This is the one crate of the workspace that contains `unsafe`: the vector loads and stores
//! (through pointers into slices whose length the types fix) and the calls of functions compiled
//! for CPU features that were detected. Every `unsafe` block states why it is sound. The API is
//! safe.
//!
//! ```
//! let src = [0x5Au8; 5000];
//! let mut dst = [0u8; 5000];
//! let crc = vgpu_mig_copycrc::copy_crc32(0, &mut dst, &src);
//! assert_eq!(dst, src);
//! assert_eq!(crc, crc32fast::hash(&src));
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod x86;

/// A copy-and-CRC kernel. Non-exhaustive: kernels for other architectures may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// `VPCLMULQDQ` on 512-bit registers: 4 zmm accumulators, 256 bytes a step.
    Avx512,
    /// `VPCLMULQDQ` on 256-bit registers: 4 ymm accumulators, 128 bytes a step.
    Avx2,
    /// `PCLMULQDQ` on 128-bit registers: 4 xmm accumulators, 64 bytes a step.
    Sse,
    /// `copy_from_slice`, then `crc32fast` over the copy (which picks its own kernel).
    Portable,
}

impl Kernel {
    /// Every kernel, widest first (the order [`selected`] tries them in).
    pub const ALL: [Self; 4] = [Self::Avx512, Self::Avx2, Self::Sse, Self::Portable];

    /// A short description for benchmark and log output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "x86 VPCLMULQDQ AVX-512 copy+fold (4 zmm, 256 B a step)",
            Self::Avx2 => "x86 VPCLMULQDQ AVX2 copy+fold (4 ymm, 128 B a step)",
            Self::Sse => "x86 PCLMULQDQ SSE copy+fold (4 xmm, 64 B a step)",
            Self::Portable => "portable (copy, then crc32fast)",
        }
    }

    /// Whether this kernel can run here: compiled in (architecture, compiler version) and, with
    /// the `std` feature, supported by this CPU; without `std`, enabled in the target features.
    /// [`Kernel::Portable`] always can.
    #[must_use]
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            Self::Sse => x86::has_sse(),
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2", copycrc_vpclmulqdq))]
            Self::Avx2 => x86::has_avx2(),
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2", copycrc_vpclmulqdq))]
            Self::Avx512 => x86::has_avx512(),
            #[allow(
                unreachable_patterns,
                reason = "which kernels are compiled in depends on the target and the compiler"
            )]
            _ => false,
        }
    }

    /// Run this kernel: [`copy_crc32`] with a kernel of the caller's choice (to test or compare
    /// the kernels). `None`, with `dst` untouched, if the kernel is not
    /// [available](Self::is_available) here.
    #[must_use]
    pub fn copy_crc32(self, crc: u32, dst: &mut [u8], src: &[u8]) -> Option<u32> {
        if !self.is_available() {
            return None;
        }
        Some(run(self, crc, dst, src))
    }
}

impl core::fmt::Display for Kernel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dispatch to `kernel`, which the caller checked is available.
fn run(kernel: Kernel, crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    match kernel {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        Kernel::Sse => x86::sse(crc, dst, src),
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2", copycrc_vpclmulqdq))]
        Kernel::Avx2 => x86::avx2(crc, dst, src),
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2", copycrc_vpclmulqdq))]
        Kernel::Avx512 => x86::avx512(crc, dst, src),
        _ => portable(crc, dst, src),
    }
}

/// The kernel [`copy_crc32`] uses here: the widest [available](Kernel::is_available) one.
/// With `std` the CPU is asked once; later calls read the cached answer.
#[must_use]
pub fn selected() -> Kernel {
    #[cfg(any(feature = "std", test))]
    {
        use core::sync::atomic::{AtomicU8, Ordering};
        /// Index into [`Kernel::ALL`] plus one; 0 before the first call.
        static CHOSEN: AtomicU8 = AtomicU8::new(0);
        let cached = CHOSEN.load(Ordering::Relaxed);
        if let Some(k) = usize::from(cached)
            .checked_sub(1)
            .and_then(|i| Kernel::ALL.get(i))
        {
            return *k;
        }
        let (i, k) = choose();
        // Every thread that races here computes the same answer.
        CHOSEN.store(i.saturating_add(1), Ordering::Relaxed);
        k
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        choose().1
    }
}

/// The widest available kernel and its index in [`Kernel::ALL`].
fn choose() -> (u8, Kernel) {
    let mut i = 0u8;
    for k in Kernel::ALL {
        if k.is_available() {
            return (i, k);
        }
        i = i.saturating_add(1);
    }
    (3, Kernel::Portable)
}

/// The name of the kernel [`copy_crc32`] uses here ([`selected`]), for benchmark and log output.
///
/// ```
/// assert!(!vgpu_mig_copycrc::kernel().is_empty());
/// ```
#[must_use]
pub fn kernel() -> &'static str {
    selected().name()
}

/// Copy `src` into `dst` and return the CRC-32 of the bytes copied, continuing from `crc`.
///
/// `crc` is the CRC-32 of whatever precedes (0 for nothing), as [`crc32fast::Hasher::new_with_initial`]
/// takes it; the result is the CRC-32 of that data followed by the copied bytes, so calls chain.
///
/// When the lengths differ, the first `min(dst.len(), src.len())` bytes are copied, the rest of
/// `dst` is left as it was, and the CRC covers exactly the bytes copied. It never panics.
///
/// The CRC is computed from the bytes stored into `dst` (the same registers), never from a second
/// read of `src`, so it is consistent with `dst` even if `src` changes during the call.
///
/// ```
/// use vgpu_mig_copycrc::copy_crc32;
/// let data = b"123456789";
/// let mut out = [0u8; 9];
/// let first = copy_crc32(0, &mut out[..4], &data[..4]);
/// assert_eq!(copy_crc32(first, &mut out[4..], &data[4..]), 0xCBF4_3926);
/// assert_eq!(&out, data);
/// ```
#[must_use]
pub fn copy_crc32(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    run(selected(), crc, dst, src)
}

/// The portable kernel, also the short-input and tail path of the vector kernels: copy the common
/// length, then CRC the copy.
fn portable(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    let n = dst.len().min(src.len());
    let (Some(dst), Some(src)) = (dst.get_mut(..n), src.get(..n)) else {
        return crc;
    };
    dst.copy_from_slice(src);
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(dst);
    h.finalize()
}

/// The folding constants, derived here from the polynomial (unit tests compare them with the
/// published values).
#[cfg_attr(
    not(all(target_arch = "x86_64", target_feature = "sse2")),
    allow(dead_code, reason = "only the vector kernels fold")
)]
mod constants {
    /// The CRC-32 polynomial with its `x^32` term, unreflected.
    const P: u64 = 0x1_04C1_1DB7;

    /// `x^n mod P`, unreflected.
    const fn xpow_mod(n: u32) -> u64 {
        let mut r: u64 = 1;
        let mut i = 0;
        while i < n {
            r <<= 1;
            if r & (1 << 32) != 0 {
                r ^= P;
            }
            i += 1;
        }
        r
    }

    /// The 33-bit constant the reflected fold multiplies by: `x^n mod P`, bit-reflected in 32
    /// bits and shifted left by one.
    const fn reflected(n: u32) -> u64 {
        let v = xpow_mod(n);
        let mut out: u64 = 0;
        let mut i = 0;
        while i < 32 {
            if v & (1 << i) != 0 {
                out |= 1 << (31 - i);
            }
            i += 1;
        }
        out << 1
    }

    /// The pair `(low, high)` that moves a 128-bit accumulator forward by `bits` bits: the low
    /// 64 bits are multiplied by `x^(bits + 32)`, the high ones by `x^(bits - 32)` (mod P).
    pub(crate) const fn fold(bits: u32) -> (u64, u64) {
        (reflected(bits + 32), reflected(bits - 32))
    }

    /// Fold by 128 bits (one xmm lane onto the next): `(K3, K4)`; the kernels compute the
    /// other distances they fold by from their register width.
    pub(crate) const K128: (u64, u64) = fold(128);
    /// The Barrett constant of the final reduction: the quotient `floor(x^95 / P)` (64 bits),
    /// bit-reflected.
    pub(crate) const MU: u64 = {
        let mut rem: u128 = 1 << 95;
        let mut q: u64 = 0;
        let mut bit = 95 - 32;
        loop {
            if rem & (1 << (bit + 32)) != 0 {
                rem ^= (P as u128) << bit;
                q |= 1 << bit;
            }
            if bit == 0 {
                break;
            }
            bit -= 1;
        }
        q.reverse_bits()
    };
    /// The polynomial, reflected, with its `x^32` term (33 bits).
    pub(crate) const G: u64 = 0x1_DB71_0641;
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]
mod tests;
