//! The `x86_64` kernels: load a register, store it, fold it.
//!
//! Each kernel keeps four accumulators, each covering every fourth register-sized piece of the
//! input; a step copies four pieces and folds each into its accumulator (multiplying the
//! accumulator's two 64-bit halves by constants that move it forward by one step and XORing the
//! new piece in). At the end the accumulators are folded onto each other, then their 128-bit
//! lanes in order, and the last 128 bits are reduced to the 32-bit CRC.

#[allow(
    clippy::wildcard_imports,
    reason = "the kernels use dozens of intrinsics by their Intel names"
)]
use core::arch::x86_64::*;

use crate::constants::{G, K128, K256, K512, MU};
#[cfg(copycrc_vpclmulqdq)]
use crate::constants::{K1024, K2048};
use crate::portable;

/// Whether the CPU (with `std`) or the target (without) has `$f`.
#[cfg(any(feature = "std", test))]
macro_rules! has {
    ($f:tt) => {
        std::is_x86_feature_detected!($f)
    };
}
#[cfg(not(any(feature = "std", test)))]
macro_rules! has {
    ($f:tt) => {
        cfg!(target_feature = $f)
    };
}

/// What [`sse`] needs.
#[cfg_attr(
    not(any(feature = "std", test)),
    allow(
        clippy::nonminimal_bool,
        clippy::eq_op,
        reason = "without std the feature checks are compile-time constants"
    )
)]
pub(crate) fn has_sse() -> bool {
    has!("pclmulqdq") && has!("sse4.1")
}

/// What [`avx2`] needs.
#[cfg(copycrc_vpclmulqdq)]
#[cfg_attr(
    not(any(feature = "std", test)),
    allow(
        clippy::nonminimal_bool,
        clippy::eq_op,
        reason = "without std the feature checks are compile-time constants"
    )
)]
pub(crate) fn has_avx2() -> bool {
    has_sse() && has!("avx2") && has!("vpclmulqdq")
}

/// What [`avx512`] needs.
#[cfg(copycrc_vpclmulqdq)]
#[cfg_attr(
    not(any(feature = "std", test)),
    allow(
        clippy::nonminimal_bool,
        clippy::eq_op,
        reason = "without std the feature checks are compile-time constants"
    )
)]
pub(crate) fn has_avx512() -> bool {
    has_sse() && has!("avx512f") && has!("vpclmulqdq")
}

/// A fold constant pair in an xmm register: low qword `k.0`, high qword `k.1`.
#[inline]
#[target_feature(enable = "sse2")]
fn pair(k: (u64, u64)) -> __m128i {
    _mm_set_epi64x(k.1.cast_signed(), k.0.cast_signed())
}

/// `x` moved forward by the distance `k` encodes, XORed with `next`.
#[inline]
#[target_feature(enable = "pclmulqdq,sse2")]
fn fold128(x: __m128i, next: __m128i, k: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128(x, k, 0x00);
    let hi = _mm_clmulepi64_si128(x, k, 0x11);
    _mm_xor_si128(_mm_xor_si128(lo, hi), next)
}

/// Fold `lanes` (consecutive 128-bit pieces of the message, first to last) into one and reduce
/// it to the CRC (finalised: the caller's initial value went in complemented).
#[inline]
#[target_feature(enable = "pclmulqdq,sse4.1")]
fn reduce(lanes: &[__m128i]) -> u32 {
    let k128 = pair(K128);
    let mut lanes = lanes.iter();
    let mut x = match lanes.next() {
        Some(&first) => first,
        None => _mm_setzero_si128(),
    };
    for &next in lanes {
        x = fold128(x, next, k128);
    }
    // 128 bits to 64: the low half times x^(128-32) onto the high half.
    let x = _mm_xor_si128(_mm_clmulepi64_si128(x, k128, 0x10), _mm_srli_si128(x, 8));
    // Barrett reduction of the 64-bit remainder.
    let b = pair((MU, G));
    let t = _mm_clmulepi64_si128(x, b, 0x00);
    let t = _mm_clmulepi64_si128(t, b, 0x10);
    !(_mm_extract_epi32(_mm_xor_si128(x, t), 2).cast_unsigned())
}

/// The common length of `dst` and `src` cut at a multiple of `step`: the body the vector loop
/// copies, `(dst body, dst rest, src body, src rest)`.
fn split<'d, 's>(
    dst: &'d mut [u8],
    src: &'s [u8],
    step: usize,
) -> (&'d mut [u8], &'d mut [u8], &'s [u8], &'s [u8]) {
    let n = dst.len().min(src.len());
    let body = n - n % step;
    let (db, dt) = dst.split_at_mut(body);
    let (sb, st) = src.split_at(body);
    (db, dt, sb, st)
}

// --- SSE: 4 xmm accumulators, 64 bytes a step --------------------------------------------------

/// Copy one 64-byte step through four xmm registers; returns them.
#[inline]
#[target_feature(enable = "sse2")]
fn copy_step128(d: &mut [[u8; 16]; 4], s: &[[u8; 16]; 4]) -> [__m128i; 4] {
    let mut v = [_mm_setzero_si128(); 4];
    for ((v, d), s) in v.iter_mut().zip(d.iter_mut()).zip(s) {
        // SAFETY: `s` is 16 readable bytes and `d` 16 writable ones (their types say so); the
        // unaligned load and store have no alignment requirement.
        unsafe {
            *v = _mm_loadu_si128(s.as_ptr().cast());
            _mm_storeu_si128(d.as_mut_ptr().cast(), *v);
        }
    }
    v
}

/// [`Kernel::Sse`](crate::Kernel::Sse).
pub(crate) fn sse(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    // SAFETY: callers reach this only for `Kernel::Sse` when it is available, which checked
    // `has_sse` (the CPU has, or the target enables, every feature the function is built for).
    unsafe { sse_kernel(crc, dst, src) }
}

#[target_feature(enable = "pclmulqdq,sse4.1")]
fn sse_kernel(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    let (db, dt, sb, st) = split(dst, src, 64);
    let mut steps = db
        .as_chunks_mut::<16>()
        .0
        .as_chunks_mut::<4>()
        .0
        .iter_mut()
        .zip(sb.as_chunks::<16>().0.as_chunks::<4>().0);
    let Some((d, s)) = steps.next() else {
        return portable(crc, dt, st);
    };
    let [mut a0, a1, a2, a3] = copy_step128(d, s);
    a0 = _mm_xor_si128(a0, _mm_cvtsi32_si128((!crc).cast_signed()));
    let mut acc = [a0, a1, a2, a3];
    let k = pair(K512);
    for (d, s) in steps {
        let b = copy_step128(d, s);
        for (a, b) in acc.iter_mut().zip(b) {
            *a = fold128(*a, b, k);
        }
    }
    let [a0, a1, a2, a3] = acc;
    let k256 = pair(K256);
    let w0 = fold128(a0, a2, k256);
    let w1 = fold128(a1, a3, k256);
    portable(reduce(&[w0, w1]), dt, st)
}

// --- AVX2: 4 ymm accumulators, 128 bytes a step ------------------------------------------------

#[cfg(copycrc_vpclmulqdq)]
#[allow(
    clippy::incompatible_msrv,
    reason = "compiled only by rustc 1.89 or later, which the build script checks"
)]
mod wide {
    use super::*;

    /// A fold constant pair in both lanes of a ymm register.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pair256(k: (u64, u64)) -> __m256i {
        _mm256_broadcastsi128_si256(pair(k))
    }

    /// [`fold128`] on both lanes.
    #[inline]
    #[target_feature(enable = "avx2,vpclmulqdq")]
    fn fold256(x: __m256i, next: __m256i, k: __m256i) -> __m256i {
        let lo = _mm256_clmulepi64_epi128(x, k, 0x00);
        let hi = _mm256_clmulepi64_epi128(x, k, 0x11);
        _mm256_xor_si256(_mm256_xor_si256(lo, hi), next)
    }

    /// Copy one 128-byte step through four ymm registers; returns them.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn copy_step256(d: &mut [[u8; 32]; 4], s: &[[u8; 32]; 4]) -> [__m256i; 4] {
        let mut v = [_mm256_setzero_si256(); 4];
        for ((v, d), s) in v.iter_mut().zip(d.iter_mut()).zip(s) {
            // SAFETY: `s` is 32 readable bytes and `d` 32 writable ones (their types say so);
            // the unaligned load and store have no alignment requirement.
            unsafe {
                *v = _mm256_loadu_si256(s.as_ptr().cast());
                _mm256_storeu_si256(d.as_mut_ptr().cast(), *v);
            }
        }
        v
    }

    /// [`Kernel::Avx2`](crate::Kernel::Avx2).
    pub(crate) fn avx2(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        // SAFETY: callers reach this only for `Kernel::Avx2` when it is available, which checked
        // `has_avx2` (every feature the function is built for).
        unsafe { avx2_kernel(crc, dst, src) }
    }

    #[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse4.1")]
    fn avx2_kernel(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        let (db, dt, sb, st) = split(dst, src, 128);
        let mut steps = db
            .as_chunks_mut::<32>()
            .0
            .as_chunks_mut::<4>()
            .0
            .iter_mut()
            .zip(sb.as_chunks::<32>().0.as_chunks::<4>().0);
        let Some((d, s)) = steps.next() else {
            return portable(crc, dt, st);
        };
        let [mut a0, a1, a2, a3] = copy_step256(d, s);
        let init = _mm256_zextsi128_si256(_mm_cvtsi32_si128((!crc).cast_signed()));
        a0 = _mm256_xor_si256(a0, init);
        let mut acc = [a0, a1, a2, a3];
        let k = pair256(K1024);
        for (d, s) in steps {
            let b = copy_step256(d, s);
            for (a, b) in acc.iter_mut().zip(b) {
                *a = fold256(*a, b, k);
            }
        }
        let [a0, a1, a2, a3] = acc;
        let k512 = pair256(K512);
        let w0 = fold256(a0, a2, k512);
        let w1 = fold256(a1, a3, k512);
        let v = fold256(w0, w1, pair256(K256));
        let lanes = [_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)];
        portable(reduce(&lanes), dt, st)
    }

    // --- AVX-512: 4 zmm accumulators, 256 bytes a step -----------------------------------------

    /// A fold constant pair in all four lanes of a zmm register.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pair512(k: (u64, u64)) -> __m512i {
        _mm512_broadcast_i32x4(pair(k))
    }

    /// [`fold128`] on all four lanes (one three-way XOR).
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn fold512(x: __m512i, next: __m512i, k: __m512i) -> __m512i {
        let lo = _mm512_clmulepi64_epi128(x, k, 0x00);
        let hi = _mm512_clmulepi64_epi128(x, k, 0x11);
        _mm512_ternarylogic_epi64(lo, hi, next, 0x96)
    }

    /// Copy one 256-byte step through four zmm registers; returns them.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn copy_step512(d: &mut [[u8; 64]; 4], s: &[[u8; 64]; 4]) -> [__m512i; 4] {
        let mut v = [_mm512_setzero_si512(); 4];
        for ((v, d), s) in v.iter_mut().zip(d.iter_mut()).zip(s) {
            // SAFETY: `s` is 64 readable bytes and `d` 64 writable ones (their types say so);
            // the unaligned load and store have no alignment requirement.
            unsafe {
                *v = _mm512_loadu_si512(s.as_ptr().cast());
                _mm512_storeu_si512(d.as_mut_ptr().cast(), *v);
            }
        }
        v
    }

    /// [`Kernel::Avx512`](crate::Kernel::Avx512).
    pub(crate) fn avx512(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        // SAFETY: callers reach this only for `Kernel::Avx512` when it is available, which
        // checked `has_avx512` (every feature the function is built for).
        unsafe { avx512_kernel(crc, dst, src) }
    }

    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    fn avx512_kernel(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        let (db, dt, sb, st) = split(dst, src, 256);
        let mut steps = db
            .as_chunks_mut::<64>()
            .0
            .as_chunks_mut::<4>()
            .0
            .iter_mut()
            .zip(sb.as_chunks::<64>().0.as_chunks::<4>().0);
        let Some((d, s)) = steps.next() else {
            return portable(crc, dt, st);
        };
        let [mut a0, a1, a2, a3] = copy_step512(d, s);
        let init = _mm512_zextsi128_si512(_mm_cvtsi32_si128((!crc).cast_signed()));
        a0 = _mm512_xor_si512(a0, init);
        let mut acc = [a0, a1, a2, a3];
        let k = pair512(K2048);
        for (d, s) in steps {
            let b = copy_step512(d, s);
            for (a, b) in acc.iter_mut().zip(b) {
                *a = fold512(*a, b, k);
            }
        }
        let [a0, a1, a2, a3] = acc;
        let k1024 = pair512(K1024);
        let w0 = fold512(a0, a2, k1024);
        let w1 = fold512(a1, a3, k1024);
        let v = fold512(w0, w1, pair512(K512));
        let lanes = [
            _mm512_castsi512_si128(v),
            _mm512_extracti32x4_epi32(v, 1),
            _mm512_extracti32x4_epi32(v, 2),
            _mm512_extracti32x4_epi32(v, 3),
        ];
        portable(reduce(&lanes), dt, st)
    }
}

#[cfg(copycrc_vpclmulqdq)]
pub(crate) use wide::{avx2, avx512};
