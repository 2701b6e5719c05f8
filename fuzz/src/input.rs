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

/// One random byte from the workspace's generator ([`sim::Rng`], splitmix64): the low byte of
/// the next draw.
pub(crate) trait DrawByte {
    /// The low byte of the next 64 random bits.
    fn byte(&mut self) -> u8;
}

impl DrawByte for sim::Rng {
    fn byte(&mut self) -> u8 {
        let [b, ..] = self.next_u64().to_le_bytes();
        b
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
    fn a_byte_is_the_low_byte_of_the_draw() {
        let mut a = sim::Rng::new(0);
        assert_eq!(
            a.byte(),
            0xAF,
            "splitmix64's first draw from 0 is 0xE220_A839_7B1D_CDAF"
        );
    }
}
