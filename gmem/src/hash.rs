//! Page content identity: xxh3-64 hashes and zero-page detection.

/// Bytes in a guest page.
pub const PAGE_BYTES: usize = 4096;

/// The xxh3-64 hash (seed 0) of a page; equal contents give equal hashes on every platform.
#[must_use]
pub fn page_hash(page: &[u8; PAGE_BYTES]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

/// Whether every byte of the page is zero. ORs 256-byte blocks word by word (vectorizable)
/// and stops at the first non-zero block.
#[must_use]
pub fn is_zero_page(page: &[u8; PAGE_BYTES]) -> bool {
    let (blocks, _) = page.as_chunks::<256>();
    blocks.iter().all(|block| {
        let (words, _) = block.as_chunks::<8>();
        words
            .iter()
            .fold(0u64, |acc, w| acc | u64::from_ne_bytes(*w))
            == 0
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    const PINNED_ZERO: u64 = 0x93d7_6fe1_48c6_89ba;

    #[test]
    fn zero_detection() {
        let mut p = [0u8; PAGE_BYTES];
        assert!(is_zero_page(&p));
        for i in [0usize, 7, 255, 256, 2048, 4095] {
            p[i] = 1;
            assert!(!is_zero_page(&p), "byte {i}");
            p[i] = 0;
        }
    }

    #[test]
    fn hash_vectors() {
        let zero = [0u8; PAGE_BYTES];
        // Published answer for the empty input proves the hash is standard xxh3-64, seed 0.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(&[]), 0x2D06_8005_38D3_94C2);
        // Pinned value for a zero page: hashes are compared across hosts, so they must
        // never change.
        assert_eq!(page_hash(&zero), PINNED_ZERO);
        let mut p = zero;
        p[100] = 1;
        assert_ne!(page_hash(&p), page_hash(&zero));
        assert_eq!(page_hash(&p), page_hash(&p.clone()));
    }
}
