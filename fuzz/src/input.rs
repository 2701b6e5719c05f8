//! Reading structured values out of fuzz bytes: never fails, pads with zeros at the end.

/// A cursor over fuzz input. Reads past the end yield zeros, so every interpretation of the
/// input is total.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bytes<'a> {
    rest: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub(crate) const fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub(crate) const fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The unread bytes (not consumed).
    pub(crate) const fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Up to `n` bytes (fewer at the end).
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self.take(N);
        for (o, s) in out.iter_mut().zip(src) {
            *o = *s;
        }
        out
    }

    pub(crate) fn u8(&mut self) -> u8 {
        let [b] = self.array::<1>();
        b
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// splitmix64: a tiny deterministic generator for building structured values from a seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mix(pub(crate) u64);

impl Mix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`; 0 when `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next().checked_rem(n).unwrap_or(0)
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
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

    #[test]
    fn reads_pad_with_zeros() {
        let mut b = Bytes::new(&[1, 2, 3]);
        assert_eq!(b.u16(), 0x0201);
        assert_eq!(b.u32(), 3);
        assert!(b.is_empty());
        assert_eq!(b.u64(), 0);
        assert_eq!(b.take(5), &[] as &[u8]);
    }

    #[test]
    fn mix_is_deterministic() {
        let mut a = Mix(1);
        let mut b = Mix(1);
        assert_eq!(a.next(), b.next());
        assert_eq!(Mix(0).next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(a.below(0), 0);
        assert!(a.below(10) < 10);
    }
}
