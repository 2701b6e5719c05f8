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

use crate::constants::{G, K128, MU, fold};
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

/// Whether every check in `checks` passed. A slice rather than `&&`: without `std` the checks
/// are compile-time constants, and a chain of constant `&&` is what clippy flags.
fn all(checks: &[bool]) -> bool {
    checks.iter().all(|&c| c)
}

/// What [`sse`] needs.
pub(crate) fn has_sse() -> bool {
    all(&[has!("pclmulqdq"), has!("sse4.1")])
}

/// What [`avx2`] needs.
#[cfg(copycrc_vpclmulqdq)]
pub(crate) fn has_avx2() -> bool {
    all(&[has_sse(), has!("avx2"), has!("vpclmulqdq")])
}

/// What [`avx512`] needs.
#[cfg(copycrc_vpclmulqdq)]
pub(crate) fn has_avx512() -> bool {
    all(&[has_sse(), has!("avx512f"), has!("vpclmulqdq")])
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

/// One kernel of `$width`-byte registers (`$reg`): 4 accumulators, `4 * $width` bytes a step.
///
/// `$load`/`$store`/`$zero` are the register's unaligned load and store and its zero; `$fold`
/// folds one register onto the next by the distance its constant pair (`$pair`, broadcast to
/// every lane) encodes; `$init` XORs the complemented initial CRC into the first 32 bits;
/// `$lanes` splits a register into its 128-bit lanes, first to last. Generates `$entry` (safe,
/// for callers that checked the features) and `$kernel` (built for `$features`).
macro_rules! fold_kernel {
    (
        $(#[$doc:meta])*
        $entry:ident, $kernel:ident, $features:literal, $width:literal, $reg:ty,
        $load:ident, $store:ident, $zero:ident,
        $fold:ident, $pair:ident, $init:ident, $lanes:ident
    ) => {
        $(#[$doc])*
        pub(crate) fn $entry(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
            // SAFETY: callers reach this only for the kernel when it is available, which checked
            // that the CPU has (or, without `std`, the target enables) every feature `$kernel`
            // is built for.
            unsafe { $kernel(crc, dst, src) }
        }

        #[target_feature(enable = $features)]
        fn $kernel(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
            /// The accumulators move forward by one step (4 registers) a step.
            const STEP: (u64, u64) = fold(32 * $width);
            /// Accumulator 0 onto 2 and 1 onto 3 at the end: two registers apart.
            const TWO: (u64, u64) = fold(16 * $width);
            /// Then the first result onto the second: one register apart.
            const ONE: (u64, u64) = fold(8 * $width);

            /// Copy one step through four registers; returns them.
            #[inline]
            #[target_feature(enable = $features)]
            fn copy_step(d: &mut [[u8; $width]; 4], s: &[[u8; $width]; 4]) -> [$reg; 4] {
                let mut v = [$zero(); 4];
                for ((v, d), s) in v.iter_mut().zip(d.iter_mut()).zip(s) {
                    // SAFETY: `s` is `$width` readable bytes and `d` as many writable ones
                    // (their types say so); the unaligned load and store have no alignment
                    // requirement.
                    unsafe {
                        *v = $load(s.as_ptr().cast());
                        $store(d.as_mut_ptr().cast(), *v);
                    }
                }
                v
            }

            let (db, dt, sb, st) = split(dst, src, 4 * $width);
            let mut steps = db
                .as_chunks_mut::<$width>()
                .0
                .as_chunks_mut::<4>()
                .0
                .iter_mut()
                .zip(sb.as_chunks::<$width>().0.as_chunks::<4>().0);
            let Some((d, s)) = steps.next() else {
                return portable(crc, dt, st);
            };
            let [a0, a1, a2, a3] = copy_step(d, s);
            let mut acc = [$init(a0, crc), a1, a2, a3];
            let k = $pair(STEP);
            for (d, s) in steps {
                let b = copy_step(d, s);
                for (a, b) in acc.iter_mut().zip(b) {
                    *a = $fold(*a, b, k);
                }
            }
            let [a0, a1, a2, a3] = acc;
            let two = $pair(TWO);
            let v = $fold($fold(a0, a2, two), $fold(a1, a3, two), $pair(ONE));
            portable(reduce(&$lanes(v)), dt, st)
        }
    };
}

// --- SSE: 4 xmm accumulators, 64 bytes a step --------------------------------------------------

/// The complemented initial CRC XORed into the first 32 bits of `a`.
#[inline]
#[target_feature(enable = "sse2")]
fn init128(a: __m128i, crc: u32) -> __m128i {
    _mm_xor_si128(a, _mm_cvtsi32_si128((!crc).cast_signed()))
}

/// An xmm register is one lane.
#[inline]
#[target_feature(enable = "sse2")]
fn lanes128(v: __m128i) -> [__m128i; 1] {
    [v]
}

fold_kernel!(
    /// [`Kernel::Sse`](crate::Kernel::Sse).
    sse, sse_kernel, "pclmulqdq,sse4.1", 16, __m128i,
    _mm_loadu_si128, _mm_storeu_si128, _mm_setzero_si128,
    fold128, pair, init128, lanes128
);

#[cfg(copycrc_vpclmulqdq)]
#[allow(
    clippy::incompatible_msrv,
    reason = "compiled only by rustc 1.89 or later, which the build script checks"
)]
mod wide {
    use super::*;

    // --- AVX2: 4 ymm accumulators, 128 bytes a step --------------------------------------------

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

    /// [`init128`] on the first lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn init256(a: __m256i, crc: u32) -> __m256i {
        let init = _mm256_zextsi128_si256(_mm_cvtsi32_si128((!crc).cast_signed()));
        _mm256_xor_si256(a, init)
    }

    /// The two lanes of a ymm register.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes256(v: __m256i) -> [__m128i; 2] {
        [_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)]
    }

    fold_kernel!(
        /// [`Kernel::Avx2`](crate::Kernel::Avx2).
        avx2, avx2_kernel, "avx2,vpclmulqdq,pclmulqdq,sse4.1", 32, __m256i,
        _mm256_loadu_si256, _mm256_storeu_si256, _mm256_setzero_si256,
        fold256, pair256, init256, lanes256
    );

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

    /// [`init128`] on the first lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn init512(a: __m512i, crc: u32) -> __m512i {
        let init = _mm512_zextsi128_si512(_mm_cvtsi32_si128((!crc).cast_signed()));
        _mm512_xor_si512(a, init)
    }

    /// The four lanes of a zmm register.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes512(v: __m512i) -> [__m128i; 4] {
        [
            _mm512_castsi512_si128(v),
            _mm512_extracti32x4_epi32(v, 1),
            _mm512_extracti32x4_epi32(v, 2),
            _mm512_extracti32x4_epi32(v, 3),
        ]
    }

    fold_kernel!(
        /// [`Kernel::Avx512`](crate::Kernel::Avx512) storing each register where it was loaded
        /// from: the stores are as (mis)aligned as `dst`.
        avx512_unaligned, avx512_kernel, "avx512f,vpclmulqdq,pclmulqdq,sse4.1", 64, __m512i,
        _mm512_loadu_si512, _mm512_storeu_si512, _mm512_setzero_si512,
        fold512, pair512, init512, lanes512
    );

    /// What [`avx512_shifted`] needs beyond [`has_avx512`]: the masked byte stores.
    pub(crate) fn has_avx512_shifted() -> bool {
        all(&[has_avx512(), has!("avx512bw")])
    }

    /// [`Kernel::Avx512`](crate::Kernel::Avx512): when `dst` sits 4, 8, ..., 60 bytes past a
    /// 64-byte boundary (a page in the migration stream sits 16, 32 or 48 past one) and the CPU
    /// has AVX-512BW, [`avx512_shifted`]; otherwise [`avx512_unaligned`].
    pub(crate) fn avx512(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        let m = dst.as_ptr().addr() % 64;
        if m != 0 && m.is_multiple_of(4) && has_avx512_shifted() {
            // `m` is a non-zero multiple of 4 below 64: the shift is 1..=15 dwords.
            avx512_shifted(crc, dst, src, (64 - m) / 4)
        } else {
            avx512_unaligned(crc, dst, src)
        }
    }

    /// The AVX-512 kernel with 64-byte-aligned stores into a `dst` that is `64 - 4 * dwords`
    /// bytes past a 64-byte boundary (`dwords` in 1..=15; any other value, or any other
    /// position of `dst`, still copies and checksums correctly, through the unaligned kernel).
    ///
    /// The loads and the folding are those of [`avx512_unaligned`]; each aligned 64-byte store is
    /// built from two consecutive loads with one `valignd`, and the first and last partial
    /// blocks go out with masked byte stores, so no store splits a cache line.
    pub(crate) fn avx512_shifted(crc: u32, dst: &mut [u8], src: &[u8], dwords: usize) -> u32 {
        /// `valignd`'s shift is an immediate: one instance of the kernel for each.
        macro_rules! by_shift {
            ($($n:literal)*) => {
                match dwords {
                    $(
                        // SAFETY: [`avx512`] and the tests call this only when
                        // [`has_avx512_shifted`] said the CPU has (or, without `std`, the target
                        // enables) every feature the kernel is built for.
                        $n => unsafe { avx512_shifted_kernel::<$n>(crc, dst, src) },
                    )*
                    _ => avx512_unaligned(crc, dst, src),
                }
            };
        }
        if !dst
            .as_ptr()
            .addr()
            .wrapping_add(4 * dwords)
            .is_multiple_of(64)
        {
            return avx512_unaligned(crc, dst, src);
        }
        by_shift!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    }

    /// [`avx512_shifted`] for a shift of `D` dwords (`S = 4 * D` bytes): `dst + S` is 64-byte
    /// aligned. With the body's registers `L0, L1, ...` (as loaded from `src`), `dst[..S]` is
    /// the low `S` bytes of `L0`, the aligned block `j` at `dst[S + 64 j..]` is the high
    /// `64 - S` bytes of `L[j]` followed by the low `S` bytes of `L[j + 1]`, and the last
    /// `64 - S` bytes of the body are the high bytes of the last register.
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq,sse4.1")]
    fn avx512_shifted_kernel<const D: i32>(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        /// The shift in bytes.
        const fn bytes(d: i32) -> usize {
            d.unsigned_abs() as usize * 4
        }
        /// The accumulators move forward by one step (4 registers) a step.
        const STEP: (u64, u64) = fold(32 * 64);
        /// Accumulator 0 onto 2 and 1 onto 3 at the end: two registers apart.
        const TWO: (u64, u64) = fold(16 * 64);
        /// Then the first result onto the second: one register apart.
        const ONE: (u64, u64) = fold(8 * 64);

        let s = bytes(D);
        let (db, dt, sb, st) = split(dst, src, 256);
        let mut loads = sb.as_chunks::<64>().0.as_chunks::<4>().0.iter();
        let Some(first) = loads.next() else {
            return portable(crc, dt, st);
        };
        // `db` is at least 256 bytes and `s` below 64, so both cuts are in range; the middle
        // is 64 bytes shorter than `db`, a whole number (4 n - 1) of aligned blocks.
        let (head, rest) = db.split_at_mut(s);
        let (mid, tail) = rest.split_at_mut(rest.len() - (64 - s));
        let mut stores = mid.as_chunks_mut::<64>().0.iter_mut();

        /// Four registers from `s`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn load4(s: &[[u8; 64]; 4]) -> [__m512i; 4] {
            // SAFETY: each `s[i]` is 64 readable bytes (its type says so); the load has no
            // alignment requirement.
            s.map(|b| unsafe { _mm512_loadu_si512(b.as_ptr().cast()) })
        }
        /// Store `v` to the 64 bytes `d`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn store(d: &mut [u8; 64], v: __m512i) {
            // SAFETY: `d` is 64 writable bytes (its type says so).
            unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), v) }
        }

        let [l0, l1, l2, l3] = load4(first);
        // SAFETY: the mask enables the low `s` bytes, exactly `head`'s (`s` < 64); masked-off
        // bytes are not accessed.
        unsafe { _mm512_mask_storeu_epi8(head.as_mut_ptr().cast(), (1u64 << s) - 1, l0) };
        // The pairs first: `zip` asks its first iterator first, so no block is skipped.
        for ((hi, lo), d) in [(l1, l0), (l2, l1), (l3, l2)]
            .into_iter()
            .zip(stores.by_ref())
        {
            store(d, _mm512_alignr_epi32::<D>(hi, lo));
        }
        let mut acc = [init512(l0, crc), l1, l2, l3];
        let mut last = l3;
        let k = pair512(STEP);
        let groups = stores.into_slice().as_chunks_mut::<4>().0.iter_mut();
        for (d, s) in groups.zip(loads) {
            let b = load4(s);
            let mut prev = last;
            for (d, &v) in d.iter_mut().zip(&b) {
                store(d, _mm512_alignr_epi32::<D>(v, prev));
                prev = v;
            }
            last = prev;
            for (a, b) in acc.iter_mut().zip(b) {
                *a = fold512(*a, b, k);
            }
        }
        // The high `64 - s` bytes of the last register, moved down to the start of `tail`.
        let high = _mm512_alignr_epi32::<D>(_mm512_setzero_si512(), last);
        // SAFETY: the mask enables the low `64 - s` bytes, exactly `tail`'s; masked-off bytes
        // are not accessed.
        unsafe { _mm512_mask_storeu_epi8(tail.as_mut_ptr().cast(), u64::MAX >> s, high) };
        let [a0, a1, a2, a3] = acc;
        let two = pair512(TWO);
        let v = fold512(fold512(a0, a2, two), fold512(a1, a3, two), pair512(ONE));
        portable(reduce(&lanes512(v)), dt, st)
    }
}

#[cfg(copycrc_vpclmulqdq)]
pub(crate) use wide::{avx2, avx512};
#[cfg(all(copycrc_vpclmulqdq, test))]
pub(crate) use wide::{avx512_shifted, has_avx512_shifted};
