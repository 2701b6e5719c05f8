//! Dirty bitmaps over caller storage: one bit per page, LSB-first within each `u64` word.
//!
//! Harvesting is swap-and-clear in O(words); enumerating set bits is O(words + set bits)
//! (zero words are skipped, bits found with `trailing_zeros`).

use crate::error::GmemError;

/// Number of `u64` words needed for `bits` bits.
#[must_use]
pub const fn words_for(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// Mask of bits `lo..hi` (0 <= lo < hi <= 64) of one word.
const fn span_mask(lo: usize, hi: usize) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

/// Calls `f(word_index, mask)` for every word touched by bits `start..start + count`.
fn for_each_span(
    start: usize,
    count: usize,
    bits: usize,
    mut f: impl FnMut(usize, u64),
) -> Result<(), GmemError> {
    let end = start.checked_add(count).ok_or(GmemError::OutOfRange)?;
    if end > bits {
        return Err(GmemError::OutOfRange);
    }
    let mut bit = start;
    while bit < end {
        let word = bit / 64;
        let lo = bit % 64;
        let hi = (end - word * 64).min(64);
        f(word, span_mask(lo, hi));
        bit = (word + 1) * 64;
    }
    Ok(())
}

/// A dirty bitmap over caller storage.
#[derive(Debug)]
pub struct DirtyBitmap<'a> {
    words: &'a mut [u64],
    bits: usize,
}

impl<'a> DirtyBitmap<'a> {
    /// A bitmap of `bits` bits over `storage`, which must have exactly
    /// [`words_for`]`(bits)` words. The storage is cleared.
    ///
    /// # Errors
    /// [`GmemError::StorageSize`] on a length mismatch.
    pub fn new(storage: &'a mut [u64], bits: usize) -> Result<Self, GmemError> {
        if storage.len() != words_for(bits) {
            return Err(GmemError::StorageSize);
        }
        storage.fill(0);
        Ok(Self {
            words: storage,
            bits,
        })
    }

    /// The number of bits.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.bits
    }

    /// Give the storage back (its contents are the bitmap's words).
    #[must_use]
    pub fn into_words(self) -> &'a mut [u64] {
        self.words
    }

    /// Whether the bitmap has no bits at all.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The underlying words.
    #[must_use]
    pub fn words(&self) -> &[u64] {
        self.words
    }

    /// Sets bit `bit`.
    ///
    /// # Errors
    /// [`GmemError::OutOfRange`] if `bit >= len()`.
    pub fn set(&mut self, bit: usize) -> Result<(), GmemError> {
        self.set_range(bit, 1)
    }

    /// Sets bits `start..start + count`, a word at a time.
    ///
    /// # Errors
    /// [`GmemError::OutOfRange`] if the range exceeds the bitmap; nothing is set then.
    pub fn set_range(&mut self, start: usize, count: usize) -> Result<(), GmemError> {
        let words = &mut *self.words;
        for_each_span(start, count, self.bits, |w, m| {
            if let Some(x) = words.get_mut(w) {
                *x |= m;
            }
        })
    }

    /// Clears `count` bits from `start`.
    ///
    /// # Errors
    /// [`GmemError::OutOfRange`] if the range exceeds the bitmap; nothing is cleared then.
    pub fn clear_range(&mut self, start: usize, count: usize) -> Result<(), GmemError> {
        let words = &mut *self.words;
        for_each_span(start, count, self.bits, |w, m| {
            if let Some(x) = words.get_mut(w) {
                *x &= !m;
            }
        })
    }

    /// Whether bit `bit` is set (`false` if out of range).
    #[must_use]
    pub fn test(&self, bit: usize) -> bool {
        bit < self.bits
            && self
                .words
                .get(bit / 64)
                .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    /// The number of set bits.
    #[must_use]
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Moves all bits into `other` (whose previous contents are replaced) and clears `self`,
    /// in O(words).
    ///
    /// # Errors
    /// [`GmemError::SizeMismatch`] if the bitmaps differ in length; nothing changes then.
    pub fn harvest_into(&mut self, other: &mut DirtyBitmap<'_>) -> Result<(), GmemError> {
        if self.bits != other.bits {
            return Err(GmemError::SizeMismatch);
        }
        for (src, dst) in self.words.iter_mut().zip(other.words.iter_mut()) {
            *dst = core::mem::take(src);
        }
        Ok(())
    }

    /// Moves all bits of `other` into `self` (or-ing them with what `self` holds) and clears
    /// `other`, in O(words): merging a dirty source into a send set.
    ///
    /// # Errors
    /// [`GmemError::SizeMismatch`] if the bitmaps differ in length; nothing changes then.
    pub fn absorb(&mut self, other: &mut DirtyBitmap<'_>) -> Result<(), GmemError> {
        if self.bits != other.bits {
            return Err(GmemError::SizeMismatch);
        }
        for (dst, src) in self.words.iter_mut().zip(other.words.iter_mut()) {
            *dst |= core::mem::take(src);
        }
        Ok(())
    }

    /// Finds the first set bit at or after `from`, clears it and returns it; `None` when no bit at or
    /// after `from` is set. Skips zero words, so a scan of the whole bitmap by repeated calls costs
    /// O(words + set bits).
    pub fn take_next(&mut self, from: usize) -> Option<usize> {
        if from >= self.bits {
            return None;
        }
        let mut w = from / 64;
        let mut mask = !0u64 << (from % 64);
        while let Some(word) = self.words.get_mut(w) {
            let hit = *word & mask;
            if hit != 0 {
                let bit = hit.trailing_zeros() as usize;
                *word &= !(1u64 << bit);
                return Some(w * 64 + bit);
            }
            w += 1;
            mask = !0;
        }
        None
    }

    /// Calls `f` with every set bit in `start..start + count`, ascending, without clearing.
    /// Costs O(words in the range + set bits).
    ///
    /// # Errors
    /// [`GmemError::OutOfRange`] if the range exceeds the bitmap; `f` is not called then.
    pub fn range_each(
        &self,
        start: usize,
        count: usize,
        mut f: impl FnMut(usize),
    ) -> Result<(), GmemError> {
        let words = &*self.words;
        for_each_span(start, count, self.bits, |w, m| {
            if let Some(x) = words.get(w) {
                each_bit(w, *x & m, &mut f);
            }
        })
    }

    /// Calls `f` with every set bit in `start..start + count`, ascending, and clears those bits
    /// (read-and-clear of one range; bits outside it are untouched). Costs O(words in the range +
    /// set bits).
    ///
    /// # Errors
    /// [`GmemError::OutOfRange`] if the range exceeds the bitmap; nothing changes then.
    pub fn take_range_each(
        &mut self,
        start: usize,
        count: usize,
        mut f: impl FnMut(usize),
    ) -> Result<(), GmemError> {
        let words = &mut *self.words;
        for_each_span(start, count, self.bits, |w, m| {
            if let Some(x) = words.get_mut(w) {
                let hit = *x & m;
                *x &= !m;
                each_bit(w, hit, &mut f);
            }
        })
    }

    /// Calls `f` with every set bit in ascending order, clearing the bitmap as it goes.
    ///
    /// Zero words are skipped eight at a time (one cache line) and a full word is reported
    /// with a plain counting loop, so a sparse bitmap costs about one vector compare per 512
    /// bits and a dense one about one call of `f` per bit.
    pub fn harvest_each(&mut self, mut f: impl FnMut(usize)) {
        let mut base = 0usize;
        let mut chunks = self.words.chunks_exact_mut(SKIP_WORDS);
        for chunk in &mut chunks {
            if chunk.iter().fold(0, |acc, w| acc | *w) != 0 {
                for w in chunk.iter_mut() {
                    harvest_word(base, core::mem::take(w), &mut f);
                    base = base.saturating_add(64);
                }
            } else {
                base = base.saturating_add(64 * SKIP_WORDS);
            }
        }
        for w in chunks.into_remainder() {
            harvest_word(base, core::mem::take(w), &mut f);
            base = base.saturating_add(64);
        }
    }

    /// Iterates the set bits in ascending order.
    #[must_use]
    pub fn iter_ones(&self) -> Ones<'_> {
        Ones {
            words: self.words,
            next_word: 0,
            base: 0,
            current: 0,
        }
    }
}

/// Words [`DirtyBitmap::harvest_each`] tests for zero at once: 512 bits, one cache line.
const SKIP_WORDS: usize = 8;

/// Calls `f` with the set bits of word `w`, whose bit 0 is bit `base` of the bitmap; a full
/// word takes a counting loop without per-bit bit scans.
#[inline(always)]
fn harvest_word(base: usize, w: u64, f: &mut impl FnMut(usize)) {
    if w == u64::MAX {
        for bit in base..base.saturating_add(64) {
            f(bit);
        }
    } else {
        let mut w = w;
        while w != 0 {
            f(base + w.trailing_zeros() as usize);
            w &= w - 1;
        }
    }
}

fn each_bit(word_index: usize, mut w: u64, f: &mut impl FnMut(usize)) {
    let base = word_index.saturating_mul(64);
    while w != 0 {
        f(base + w.trailing_zeros() as usize);
        w &= w - 1;
    }
}

/// Iterator over the set bits of a [`DirtyBitmap`], see [`DirtyBitmap::iter_ones`].
#[derive(Debug, Clone)]
pub struct Ones<'b> {
    words: &'b [u64],
    next_word: usize,
    base: usize,
    current: u64,
}

impl Iterator for Ones<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.current == 0 {
            let w = *self.words.get(self.next_word)?;
            self.base = self.next_word.saturating_mul(64);
            self.next_word += 1;
            self.current = w;
        }
        let bit = self.base + self.current.trailing_zeros() as usize;
        self.current &= self.current - 1;
        Some(bit)
    }
}

#[cfg(target_has_atomic = "32")]
pub use atomic::{AtomicDirtyBitmap, AtomicWord, atomic_words_for};

#[cfg(target_has_atomic = "32")]
mod atomic {
    use core::sync::atomic::Ordering;

    use super::{DirtyBitmap, for_each_span, harvest_word, words_for};
    use crate::error::GmemError;

    /// The atomic word of an [`AtomicDirtyBitmap`]'s storage: `AtomicU64` where the target has
    /// 64-bit atomics, `AtomicU32` where it has only 32-bit ones (for example Cortex-M).
    #[cfg(target_has_atomic = "64")]
    pub type AtomicWord = core::sync::atomic::AtomicU64;
    /// The atomic word of an [`AtomicDirtyBitmap`]'s storage: `AtomicU64` where the target has
    /// 64-bit atomics, `AtomicU32` where it has only 32-bit ones (for example Cortex-M).
    #[cfg(not(target_has_atomic = "64"))]
    pub type AtomicWord = core::sync::atomic::AtomicU32;

    /// The integer an [`AtomicWord`] holds, widened to and narrowed from the bitmap's `u64`
    /// words.
    #[cfg(target_has_atomic = "64")]
    mod raw {
        pub(super) const fn widen(x: u64) -> u64 {
            x
        }
        pub(super) const fn narrow(x: u64) -> u64 {
            x
        }
    }
    #[cfg(not(target_has_atomic = "64"))]
    mod raw {
        pub(super) fn widen(x: u32) -> u64 {
            u64::from(x)
        }
        #[allow(
            clippy::cast_possible_truncation,
            reason = "callers shift the wanted half down"
        )]
        pub(super) const fn narrow(x: u64) -> u32 {
            x as u32
        }
    }
    use raw::{narrow, widen};

    /// Bits per [`AtomicWord`].
    const WORD_BITS: usize = core::mem::size_of::<AtomicWord>() * 8;
    /// [`AtomicWord`]s per 64-bit word of a [`DirtyBitmap`] (1 or 2).
    const PER_U64: usize = 64 / WORD_BITS;

    /// [`AtomicWord`]s of storage for an [`AtomicDirtyBitmap`] of `bits` bits (equal to
    /// [`words_for`] on targets with 64-bit atomics).
    #[must_use]
    pub const fn atomic_words_for(bits: usize) -> usize {
        bits.div_ceil(WORD_BITS)
    }

    /// The atomic words holding 64-bit word `i` of the bitmap, low half first (one word on
    /// targets with 64-bit atomics; the second is absent past the end of an odd-length storage).
    fn parts(words: &[AtomicWord], i: usize) -> impl Iterator<Item = (u32, &AtomicWord)> {
        let first = i.saturating_mul(PER_U64);
        (0..PER_U64).filter_map(move |k| {
            let shift = u32::try_from(k * WORD_BITS).unwrap_or(0);
            words.get(first.saturating_add(k)).map(|w| (shift, w))
        })
    }

    /// Loads 64-bit word `i`.
    fn load64(words: &[AtomicWord], i: usize, order: Ordering) -> u64 {
        parts(words, i).fold(0, |acc, (shift, w)| acc | (widen(w.load(order)) << shift))
    }

    /// Swaps 64-bit word `i` with zero (each part that holds a bit), returning what it held.
    fn take64(words: &[AtomicWord], i: usize) -> u64 {
        parts(words, i).fold(0, |acc, (shift, w)| {
            if w.load(Ordering::Relaxed) == 0 {
                acc
            } else {
                acc | (widen(w.swap(0, Ordering::AcqRel)) << shift)
            }
        })
    }

    /// Sets the bits of `mask` in 64-bit word `i`.
    fn or64(words: &[AtomicWord], i: usize, mask: u64) {
        for (shift, w) in parts(words, i) {
            let m = narrow(mask >> shift);
            if m != 0 {
                w.fetch_or(m, Ordering::Release);
            }
        }
    }

    /// A dirty bitmap that many threads can set concurrently while one harvests.
    ///
    /// Setting uses `fetch_or` with `Release` ordering and harvesting `swap(0)` with
    /// `AcqRel`, so page contents written before a bit was set are visible to whoever
    /// harvests that bit. Storage is [`atomic_words_for`]`(bits)` [`AtomicWord`]s.
    ///
    /// Cloning makes another handle on the same storage (for example one per writer thread).
    #[derive(Debug, Clone)]
    pub struct AtomicDirtyBitmap<'a> {
        words: &'a [AtomicWord],
        bits: usize,
    }

    impl<'a> AtomicDirtyBitmap<'a> {
        /// A bitmap of `bits` bits over `storage` ([`atomic_words_for`]`(bits)` words); the
        /// storage is cleared.
        ///
        /// # Errors
        /// [`GmemError::StorageSize`] on a length mismatch.
        pub fn new(storage: &'a [AtomicWord], bits: usize) -> Result<Self, GmemError> {
            if storage.len() != atomic_words_for(bits) {
                return Err(GmemError::StorageSize);
            }
            for w in storage {
                w.store(0, Ordering::Relaxed);
            }
            Ok(Self {
                words: storage,
                bits,
            })
        }

        /// The number of bits.
        #[must_use]
        pub const fn len(&self) -> usize {
            self.bits
        }

        /// Whether the bitmap has no bits at all.
        #[must_use]
        pub const fn is_empty(&self) -> bool {
            self.bits == 0
        }

        /// Sets bit `bit`.
        ///
        /// # Errors
        /// [`GmemError::OutOfRange`] if `bit >= len()`.
        pub fn set(&self, bit: usize) -> Result<(), GmemError> {
            self.set_range(bit, 1)
        }

        /// Sets bits `start..start + count`, one `fetch_or` per word.
        ///
        /// # Errors
        /// [`GmemError::OutOfRange`] if the range exceeds the bitmap; nothing is set then.
        pub fn set_range(&self, start: usize, count: usize) -> Result<(), GmemError> {
            let words = self.words;
            for_each_span(start, count, self.bits, |w, m| or64(words, w, m))
        }

        /// Whether bit `bit` is set (`false` if out of range).
        #[must_use]
        pub fn test(&self, bit: usize) -> bool {
            bit < self.bits
                && load64(self.words, bit / 64, Ordering::Acquire) & (1 << (bit % 64)) != 0
        }

        /// The number of set bits (a snapshot).
        #[must_use]
        pub fn count(&self) -> usize {
            self.words
                .iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
                .sum()
        }

        /// Moves all bits into `other` (previous contents replaced), clearing `self` word by
        /// word with `swap(0)`; bits set concurrently land either in `other` or stay in
        /// `self`, never lost.
        ///
        /// # Errors
        /// [`GmemError::SizeMismatch`] if the bitmaps differ in length.
        pub fn harvest_into(&self, other: &mut DirtyBitmap<'_>) -> Result<(), GmemError> {
            if self.bits != other.len() {
                return Err(GmemError::SizeMismatch);
            }
            for (i, dst) in other.words.iter_mut().enumerate() {
                *dst = take64(self.words, i);
            }
            Ok(())
        }

        /// Moves all bits into `other`, or-ing them with what `other` holds, and clears `self`
        /// word by word with `swap(0)`: merging a concurrently written dirty log into a send
        /// set. A bit set concurrently lands either in `other` or stays in `self`, never lost;
        /// page contents written before a moved bit was set are visible after this returns.
        ///
        /// # Errors
        /// [`GmemError::SizeMismatch`] if the bitmaps differ in length; nothing changes then.
        pub fn absorb_into(&self, other: &mut DirtyBitmap<'_>) -> Result<(), GmemError> {
            if self.bits != other.len() {
                return Err(GmemError::SizeMismatch);
            }
            for (i, dst) in other.words.iter_mut().enumerate() {
                *dst |= take64(self.words, i);
            }
            Ok(())
        }

        /// Clears every bit.
        pub fn clear(&self) {
            for w in self.words {
                w.store(0, Ordering::Release);
            }
        }

        /// Calls `f` with every set bit in ascending order, clearing as it goes.
        pub fn harvest_each(&self, mut f: impl FnMut(usize)) {
            for i in 0..words_for(self.bits) {
                let w = take64(self.words, i);
                if w != 0 {
                    harvest_word(i.saturating_mul(64), w, &mut f);
                }
            }
        }
    }
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
    use core::sync::atomic::AtomicU64;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn take_next_and_absorb() {
        let mut a_s = [0u64; 3];
        let mut b_s = [0u64; 3];
        let mut a = DirtyBitmap::new(&mut a_s, 150).unwrap();
        let mut b = DirtyBitmap::new(&mut b_s, 150).unwrap();
        a.set(3).unwrap();
        a.set(64).unwrap();
        b.set(3).unwrap();
        b.set(149).unwrap();
        a.absorb(&mut b).unwrap();
        assert_eq!(b.count(), 0);
        assert_eq!(a.count(), 3);
        assert_eq!(a.take_next(4), Some(64));
        assert_eq!(a.take_next(0), Some(3));
        assert_eq!(a.take_next(0), Some(149));
        assert_eq!(a.take_next(0), None);
        assert_eq!(a.take_next(150), None);
        let mut c_s = [0u64; 1];
        let mut c = DirtyBitmap::new(&mut c_s, 10).unwrap();
        assert_eq!(a.absorb(&mut c), Err(GmemError::SizeMismatch));
    }

    #[test]
    fn words_for_values() {
        assert_eq!(words_for(0), 0);
        assert_eq!(words_for(1), 1);
        assert_eq!(words_for(64), 1);
        assert_eq!(words_for(65), 2);
        assert_eq!(words_for(262_144), 4096);
    }

    #[test]
    fn set_range_word_boundaries() {
        let mut s = [0u64; 3];
        let mut b = DirtyBitmap::new(&mut s, 190).unwrap();
        b.set_range(60, 8).unwrap();
        assert_eq!(b.words(), &[0xF000_0000_0000_0000, 0xF, 0]);
        b.clear();
        b.set_range(64, 64).unwrap();
        assert_eq!(b.words(), &[0, u64::MAX, 0]);
        b.clear();
        b.set_range(0, 190).unwrap();
        assert_eq!(b.words(), &[u64::MAX, u64::MAX, (1 << 62) - 1]);
        assert_eq!(b.count(), 190);
        b.clear();
        b.set_range(63, 1).unwrap();
        b.set_range(128, 0).unwrap();
        assert_eq!(b.words(), &[1 << 63, 0, 0]);
        assert_eq!(b.set_range(180, 11), Err(GmemError::OutOfRange));
        assert_eq!(b.set_range(usize::MAX, 2), Err(GmemError::OutOfRange));
        assert_eq!(b.set(190), Err(GmemError::OutOfRange));
        assert_eq!(b.words(), &[1 << 63, 0, 0]);
        assert!(b.test(63));
        assert!(!b.test(62));
        assert!(!b.test(1000));
    }

    #[test]
    fn storage_checks() {
        let mut s = [7u64; 2];
        assert_eq!(
            DirtyBitmap::new(&mut s, 200).err(),
            Some(GmemError::StorageSize)
        );
        let b = DirtyBitmap::new(&mut s, 100).unwrap();
        assert_eq!(b.count(), 0);
        let mut o = [0u64; 1];
        let mut other = DirtyBitmap::new(&mut o, 64).unwrap();
        let mut s2 = [0u64; 2];
        let mut b2 = DirtyBitmap::new(&mut s2, 100).unwrap();
        assert_eq!(b2.harvest_into(&mut other), Err(GmemError::SizeMismatch));
    }

    #[test]
    fn iter_ones_sparse_and_dense() {
        let mut s = [0u64; 16];
        let mut b = DirtyBitmap::new(&mut s, 1024).unwrap();
        for bit in [0, 63, 64, 511, 1023] {
            b.set(bit).unwrap();
        }
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), [0, 63, 64, 511, 1023]);
        b.set_range(0, 1024).unwrap();
        assert_eq!(
            b.iter_ones().collect::<Vec<_>>(),
            (0..1024).collect::<Vec<_>>()
        );
    }

    #[test]
    fn atomic_variant() {
        let storage: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(u64::MAX)).collect();
        let a = AtomicDirtyBitmap::new(&storage, 150).unwrap();
        assert_eq!(a.count(), 0);
        a.set(5).unwrap();
        a.set_range(62, 70).unwrap();
        assert_eq!(a.set(150), Err(GmemError::OutOfRange));
        assert!(a.test(5) && a.test(131) && !a.test(132));
        assert_eq!(a.count(), 71);
        let mut o = [0u64; 3];
        let mut out = DirtyBitmap::new(&mut o, 150).unwrap();
        a.harvest_into(&mut out).unwrap();
        assert_eq!(a.count(), 0);
        assert_eq!(out.words(), &[(1 << 5) | (3 << 62), u64::MAX, 0xF]);
        a.set(149).unwrap();
        let mut seen = Vec::new();
        a.harvest_each(|b| seen.push(b));
        assert_eq!(seen, [149]);
        assert_eq!(a.count(), 0);
    }

    #[test]
    fn atomic_absorb_ors_and_clears() {
        let storage: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let a = AtomicDirtyBitmap::new(&storage, 150).unwrap();
        let writer = a.clone();
        writer.set(3).unwrap();
        writer.set(140).unwrap();
        let mut o = [0u64; 3];
        let mut out = DirtyBitmap::new(&mut o, 150).unwrap();
        out.set(7).unwrap();
        out.set(3).unwrap();
        a.absorb_into(&mut out).unwrap();
        assert_eq!(out.iter_ones().collect::<Vec<_>>(), [3, 7, 140]);
        assert_eq!(a.count(), 0);
        let mut small = [0u64; 1];
        let mut wrong = DirtyBitmap::new(&mut small, 64).unwrap();
        writer.set(1).unwrap();
        assert_eq!(a.absorb_into(&mut wrong), Err(GmemError::SizeMismatch));
        assert!(a.test(1));
        a.clear();
        assert_eq!(writer.count(), 0);
    }

    #[test]
    fn atomic_concurrent_sets_are_not_lost() {
        let storage: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
        let a = AtomicDirtyBitmap::new(&storage, 4096).unwrap();
        let mut harvested = BTreeSet::new();
        std::thread::scope(|s| {
            for t in 0..2usize {
                let a = &a;
                s.spawn(move || {
                    for i in (t..4096).step_by(2) {
                        a.set(i).unwrap();
                    }
                });
            }
            for _ in 0..50 {
                a.harvest_each(|b| {
                    harvested.insert(b);
                });
            }
        });
        a.harvest_each(|b| {
            harvested.insert(b);
        });
        assert_eq!(harvested.len(), 4096);
    }

    #[test]
    fn harvest_each_full_partial_and_skipped_words() {
        // 2 chunks of 8 words plus a 2-word remainder whose last word is partial (70 bits).
        let bits = 64 * 16 + 70;
        let mut s = vec![0u64; words_for(bits)];
        let mut b = DirtyBitmap::new(&mut s, bits).unwrap();
        // Chunk 0: word 1 full, word 2 all but bit 0, word 7 bit 63. Chunk 1: empty.
        // Remainder: word 16 full, word 17 bits 0..6 (the whole tail).
        b.set_range(64, 64).unwrap();
        b.set_range(129, 63).unwrap();
        b.set(7 * 64 + 63).unwrap();
        b.set_range(16 * 64, 70).unwrap();
        let want: Vec<usize> = (64..128)
            .chain(129..192)
            .chain([511])
            .chain(1024..1094)
            .collect();
        let mut got = Vec::new();
        b.harvest_each(|x| got.push(x));
        assert_eq!(got, want);
        assert_eq!(b.count(), 0);
        b.harvest_each(|_| panic!("an empty bitmap reported a bit"));

        let a_s: Vec<AtomicU64> = (0..words_for(bits)).map(|_| AtomicU64::new(0)).collect();
        let a = AtomicDirtyBitmap::new(&a_s, bits).unwrap();
        a.set_range(64, 64).unwrap();
        a.set_range(129, 63).unwrap();
        a.set(511).unwrap();
        a.set_range(1024, 70).unwrap();
        let mut got = Vec::new();
        a.harvest_each(|x| got.push(x));
        assert_eq!(got, want);
        assert_eq!(a.count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn harvest_returns_exactly_what_was_set(
            bits in 1usize..700,
            ops in proptest::collection::vec((0usize..700, 0usize..130), 0..40),
        ) {
            let mut s = vec![0u64; words_for(bits)];
            let mut b = DirtyBitmap::new(&mut s, bits).unwrap();
            let mut model = BTreeSet::new();
            for (start, count) in ops {
                let r = b.set_range(start, count);
                if start + count <= bits {
                    prop_assert_eq!(r, Ok(()));
                    model.extend(start..start + count);
                } else {
                    prop_assert_eq!(r, Err(GmemError::OutOfRange));
                }
            }
            prop_assert_eq!(b.count(), model.len());
            let ones: Vec<usize> = b.iter_ones().collect();
            prop_assert_eq!(&ones, &model.iter().copied().collect::<Vec<_>>());
            let mut o = vec![0xFFu64; words_for(bits)];
            let mut other = DirtyBitmap::new(&mut o, bits).unwrap();
            b.harvest_into(&mut other).unwrap();
            prop_assert_eq!(b.count(), 0);
            prop_assert_eq!(other.iter_ones().collect::<Vec<_>>(), ones.clone());
            let mut each = Vec::new();
            other.harvest_each(|x| each.push(x));
            prop_assert_eq!(each, ones);
            prop_assert_eq!(other.count(), 0);
        }
    }
}
