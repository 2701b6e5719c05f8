//! The one deterministic generator of the workspace.

/// A small deterministic PRNG (splitmix64): reproducible workloads, test plans, campaigns,
/// benchmark data and fuzz seeds without a dependency. The state is one `u64`:
/// [`state`](Self::state) saves it and [`new`](Self::new) resumes the same sequence from it.
///
/// ```
/// use vgpu_mig_sim::Rng;
///
/// assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
/// let mut a = Rng::new(42);
/// a.next_u64();
/// let mut b = Rng::new(a.state());
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (or from a saved [`state`](Self::state)).
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The generator's state: `Rng::new(state)` continues the sequence where this one is.
    #[must_use]
    pub const fn state(&self) -> u64 {
        self.0
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n`; `0` when `n == 0`, without advancing the sequence.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_sequence_is_splitmix64() {
        // The first outputs of splitmix64 from seed 0 (the reference sequence), and `below`'s range.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let before = r;
        assert_eq!(r.below(0), 0);
        assert_eq!(r, before, "below(0) draws nothing");
        assert!((0..100).all(|_| r.below(10) < 10));
    }
}
