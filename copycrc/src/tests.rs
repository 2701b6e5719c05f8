//! Every kernel this CPU has against `crc32fast` (the definition of the value), and the copy
//! against the source.

use super::*;
use proptest::prelude::*;
use std::vec::Vec;

/// `len` bytes of a fixed pseudo-random pattern starting at `seed`.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn reference(crc: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(bytes);
    h.finalize()
}

/// The kernels this machine can run (always at least the portable one).
fn kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
}

/// Copy `len` bytes from `src_off` of a buffer to `dst_off` of another with `kernel`: checks the
/// CRC against `crc32fast`, the copied bytes against the source and that the bytes of `dst`
/// around the copy are untouched.
fn check(kernel: Kernel, crc: u32, len: usize, src_off: usize, dst_off: usize) {
    check_with(
        kernel,
        |crc, dst, src| kernel.copy_crc32(crc, dst, src).unwrap(),
        crc,
        len,
        src_off,
        dst_off,
        false,
    );
}

/// [`check`] with `run` doing the copy (`kernel` names it in failure messages); with `absolute`,
/// `dst_off` is where `dst` starts relative to a 64-byte boundary rather than in its buffer.
fn check_with(
    kernel: impl core::fmt::Debug,
    run: impl Fn(u32, &mut [u8], &[u8]) -> u32,
    crc: u32,
    len: usize,
    src_off: usize,
    dst_off: usize,
    absolute: bool,
) {
    let src_buf = pattern(src_off + len, len as u32 ^ 0x9E37_79B9);
    let src = &src_buf[src_off..];
    let mut dst_buf = std::vec![0xC3u8; 64 + dst_off + len + 64];
    let dst_off = if absolute {
        (dst_off + 64 - dst_buf.as_ptr().addr() % 64) % 64
    } else {
        dst_off
    };
    let got = run(crc, &mut dst_buf[dst_off..dst_off + len], src);
    assert_eq!(
        got,
        reference(crc, src),
        "{kernel:?}: crc, len {len}, src offset {src_off}, dst offset {dst_off}, init {crc:#x}"
    );
    assert_eq!(
        &dst_buf[dst_off..dst_off + len],
        src,
        "{kernel:?}: copy, len {len}"
    );
    assert!(
        dst_buf[..dst_off].iter().all(|&b| b == 0xC3)
            && dst_buf[dst_off + len..].iter().all(|&b| b == 0xC3),
        "{kernel:?}: wrote outside the destination, len {len}"
    );
}

#[test]
fn constants_are_the_published_ones() {
    use constants::*;
    // Intel's and Linux's reflected CRC-32 folding constants (K3/K4, K1/K2, ...).
    assert_eq!(K128, (0x1_7519_97d0, 0x0_ccaa_009e));
    assert_eq!(fold(128), K128);
    assert_eq!(fold(512), (0x1_5444_2bd4, 0x1_c6e4_1596));
    assert_eq!(fold(1024), (0x1_e88e_f372, 0x1_4a7f_e880));
    assert_eq!(fold(2048), (0x1_1542_778a, 0x1_322d_1430));
    assert_eq!(MU, 0xb4e5_b025_f701_1641);
    assert_eq!(G, 0x1_db71_0641);
}

#[test]
fn check_value() {
    for k in kernels() {
        let mut out = [0u8; 9];
        assert_eq!(k.copy_crc32(0, &mut out, b"123456789"), Some(0xCBF4_3926));
        assert_eq!(&out, b"123456789");
    }
}

/// Every length up to past four AVX-512 steps, at a misaligned source and destination: each
/// kernel's short path, first step, loop, and every tail length.
#[test]
fn every_length_to_1100() {
    for k in kernels() {
        for len in 0..1100 {
            check(k, 0x1234_5678, len, 3, 61);
        }
    }
}

/// A page at every source and destination misalignment (0..64 each), and a page plus a tail.
#[test]
fn every_misalignment() {
    for k in kernels() {
        for src_off in 0..64 {
            for dst_off in 0..64 {
                check(k, 0xFFFF_FFFF, 4096, src_off, dst_off);
            }
        }
        for off in 0..64 {
            check(k, 7, 4096 + 255, off, 63 - off);
        }
    }
}

/// The AVX-512 kernel's aligned-store path for every shift it has (the destination 4, 8, ..., 60
/// bytes past a 64-byte boundary), at source misalignments, for lengths around its step and a
/// page with a tail; and asked for a shift that does not match the destination, it still copies
/// and checksums correctly (through the unaligned kernel).
#[cfg(copycrc_vpclmulqdq)]
#[test]
fn avx512_shifted_stores() {
    if !x86::has_avx512_shifted() {
        return;
    }
    for dwords in 1..=15usize {
        for len in [
            0,
            1,
            255,
            256,
            257,
            511,
            512,
            1024,
            1280,
            4096,
            4096 + 255,
            16384,
        ] {
            for src_off in [0, 1, 16, 48, 63] {
                for wrong in [false, true] {
                    let want = 64 - 4 * dwords;
                    let run = |crc: u32, dst: &mut [u8], src: &[u8]| {
                        assert_eq!(dst.as_ptr().addr() % 64, want);
                        let path = if wrong { dwords % 15 + 1 } else { dwords };
                        x86::avx512_shifted(crc, dst, src, path)
                    };
                    check_with(
                        ("avx512_shifted", dwords, wrong),
                        run,
                        0x5A5A_0F0F,
                        len,
                        src_off,
                        want,
                        true,
                    );
                }
            }
        }
    }
}

/// The selected kernel is the widest available one, and what `copy_crc32` runs.
#[test]
fn selection() {
    let widest = kernels()[0];
    assert_eq!(selected(), widest);
    assert_eq!(selected(), selected());
    assert_eq!(kernel(), widest.name());
    let src = pattern(3000, 5);
    let mut dst = std::vec![0u8; 3000];
    assert_eq!(copy_crc32(9, &mut dst, &src), reference(9, &src));
    assert_eq!(dst, src);
}

/// Unequal lengths copy the common part, CRC exactly it, and leave the rest of `dst` alone.
#[test]
fn unequal_lengths() {
    for k in kernels() {
        let src = pattern(5000, 11);
        let mut dst = std::vec![0xEEu8; 700];
        assert_eq!(
            k.copy_crc32(0, &mut dst, &src),
            Some(reference(0, &src[..700]))
        );
        assert_eq!(dst, src[..700]);
        let mut dst = std::vec![0xEEu8; 5000];
        assert_eq!(
            k.copy_crc32(3, &mut dst, &src[..1300]),
            Some(reference(3, &src[..1300]))
        );
        assert_eq!(dst[..1300], src[..1300]);
        assert!(dst[1300..].iter().all(|&b| b == 0xEE));
        assert_eq!(k.copy_crc32(42, &mut [], &src), Some(42));
    }
}

/// A kernel this machine cannot run says so and touches nothing.
#[test]
fn unavailable_kernel() {
    for k in Kernel::ALL.into_iter().filter(|k| !k.is_available()) {
        let mut dst = [1u8; 512];
        assert_eq!(k.copy_crc32(0, &mut dst, &[2u8; 512]), None);
        assert_eq!(dst, [1u8; 512]);
    }
    assert!(Kernel::Portable.is_available());
}

proptest! {
    /// Random lengths to 20000, misalignments, initial CRCs: every kernel equals `crc32fast`
    /// and copies exactly.
    #[test]
    fn matches_crc32fast(
        len in 0usize..20_000,
        src_off in 0usize..64,
        dst_off in 0usize..64,
        crc in any::<u32>(),
    ) {
        for k in kernels() {
            check(k, crc, len, src_off, dst_off);
        }
    }

    /// Chained calls over any cut equal one call over the whole.
    #[test]
    fn chains(len in 0usize..6000, cut in 0usize..6000) {
        let cut = cut.min(len);
        let src = pattern(len, 77);
        for k in kernels() {
            let mut dst = std::vec![0u8; len];
            let (d0, d1) = dst.split_at_mut(cut);
            let c = k.copy_crc32(0, d0, &src[..cut]).unwrap();
            let c = k.copy_crc32(c, d1, &src[cut..]).unwrap();
            prop_assert_eq!(c, reference(0, &src));
            prop_assert_eq!(&dst, &src);
        }
    }
}
