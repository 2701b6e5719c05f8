//! Multi-channel streams: page traffic split over several independent connections.
//!
//! A migration with `n > 1` channels is `n` complete migration streams that share one stream id.
//! Channel 0, the *main* channel, carries everything a single-channel stream carries except the
//! pages of other channels: its share of the pages, the ROUND records, the device state and END.
//! Channels `1..n` carry only their share of the pages, a ROUND record per round and END. Each
//! stream's first record after the header is a `CHANNEL` record (kind `0x000A`) naming the channel
//! and the channel count; a single-channel stream has none.
//!
//! Pages are assigned to channels by guest frame, in stripes of [`STRIPE_FRAMES`] frames of the
//! guest's dense frame index: stripe `s` belongs to channel `s % n`. Every copy of a frame therefore
//! travels on the same channel, in order, so the destination can apply pages as they arrive from
//! any channel in any interleaving without ever letting an old copy overwrite a newer one. (This
//! is the property QEMU's multifd buys with a synchronisation packet per round; striping needs no
//! barrier on the destination.) Duplicate pages (DUP) only refer to frames of their own channel,
//! for the same reason. The destination checks both rules and commits only when every channel has
//! ended.
//!
//! ```
//! use vgpu_mig::channel::{channel_of, ChannelRepr, STRIPE_FRAMES};
//!
//! assert_eq!(channel_of(0, 4), 0);
//! assert_eq!(channel_of(STRIPE_FRAMES, 4), 1);
//! assert_eq!(channel_of(5 * STRIPE_FRAMES + 3, 4), 1);
//! let c = ChannelRepr { channel: 2, channels: 4 };
//! let mut buf = [0u8; ChannelRepr::LEN];
//! c.emit(&mut buf);
//! assert_eq!(ChannelRepr::parse(&buf), Some(c));
//! ```

/// Most channels a migration may use.
pub const MAX_CHANNELS: usize = 8;

/// Frames per stripe: 128 frames (512 KiB) keep runs long within each channel (one 16-byte run
/// header per 512 KiB) and still spread a small working set over every channel.
pub const STRIPE_FRAMES: usize = 128;

/// The channel that carries the dense frame index `index` when there are `channels` channels.
#[must_use]
pub const fn channel_of(index: usize, channels: usize) -> usize {
    if channels <= 1 {
        0
    } else {
        (index / STRIPE_FRAMES) % channels
    }
}

/// The first dense frame index at or after `from` that belongs to `channel` (of `channels`).
#[must_use]
pub(crate) const fn next_in_channel(from: usize, channel: usize, channels: usize) -> usize {
    if channels <= 1 {
        return from;
    }
    let stripe = from / STRIPE_FRAMES;
    let owner = stripe % channels;
    if owner == channel {
        return from;
    }
    let ahead = (channel + channels - owner) % channels;
    (stripe + ahead).saturating_mul(STRIPE_FRAMES)
}

/// Payload of the `CHANNEL` record (8 bytes): `channel: u16`, `channels: u16`, 4 reserved bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChannelRepr {
    /// This stream's channel (0 is the main channel).
    pub channel: u16,
    /// Channels of the migration (2..=[`MAX_CHANNELS`]).
    pub channels: u16,
}

impl ChannelRepr {
    /// Payload length.
    pub const LEN: usize = 8;

    /// Parse a payload; `None` unless it is exactly [`Self::LEN`] bytes with the reserved bytes zero,
    /// `2 <= channels <= MAX_CHANNELS` and `channel < channels`.
    #[must_use]
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = payload.try_into().ok()?;
        let [c0, c1, n0, n1, r0, r1, r2, r3] = *b;
        let repr = Self {
            channel: u16::from_le_bytes([c0, c1]),
            channels: u16::from_le_bytes([n0, n1]),
        };
        let ok = [r0, r1, r2, r3] == [0; 4]
            && (2..=MAX_CHANNELS).contains(&usize::from(repr.channels))
            && repr.channel < repr.channels;
        ok.then_some(repr)
    }

    /// Write the payload.
    pub fn emit(&self, out: &mut [u8; Self::LEN]) {
        let [c0, c1] = self.channel.to_le_bytes();
        let [n0, n1] = self.channels.to_le_bytes();
        *out = [c0, c1, n0, n1, 0, 0, 0, 0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_round_robin() {
        for n in 1..=MAX_CHANNELS {
            for i in (0..40 * STRIPE_FRAMES).step_by(97) {
                let c = channel_of(i, n);
                assert!(c < n);
                assert_eq!(
                    c,
                    channel_of(i - i % STRIPE_FRAMES, n),
                    "a stripe has one owner"
                );
                for ch in 0..n {
                    let j = next_in_channel(i, ch, n);
                    assert!(j >= i);
                    assert_eq!(channel_of(j, n), ch);
                    // Nothing between i and j belongs to ch.
                    if j > i {
                        assert_ne!(channel_of(j - 1, n), ch);
                        assert!(j - i <= n * STRIPE_FRAMES);
                    }
                }
            }
        }
        // Near the top of the index space the stripe arithmetic saturates instead of wrapping.
        assert!(next_in_channel(usize::MAX - 1, 0, 3) >= usize::MAX - STRIPE_FRAMES);
    }

    #[test]
    fn channel_record_checks() {
        let ok = ChannelRepr {
            channel: 3,
            channels: 4,
        };
        let mut b = [0u8; ChannelRepr::LEN];
        ok.emit(&mut b);
        assert_eq!(b, [3, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(ChannelRepr::parse(&b), Some(ok));
        assert_eq!(ChannelRepr::parse(&b[..7]), None);
        for bad in [
            [4, 0, 4, 0, 0, 0, 0, 0], // channel >= channels
            [0, 0, 1, 0, 0, 0, 0, 0], // one channel needs no record
            [0, 0, 9, 0, 0, 0, 0, 0], // too many
            [0, 0, 2, 0, 0, 1, 0, 0], // reserved
        ] {
            assert_eq!(ChannelRepr::parse(&bad), None, "{bad:?}");
        }
    }
}

/// A session's per-channel state: `len` used entries of a fixed array of [`MAX_CHANNELS`],
/// seen as a slice. Unlike `heapless::Vec` it has no `Drop`, so a session whose channels
/// borrow caller storage (an authenticated stream's MAC state) can be dropped after that
/// storage's other borrowers, as with any plain struct of references.
#[derive(Debug)]
pub(crate) struct PerChannel<T> {
    items: [T; MAX_CHANNELS],
    len: usize,
}

impl<T> PerChannel<T> {
    /// `len` channels (at most [`MAX_CHANNELS`]), entry `i` made by `make(i)`; the unused
    /// entries are made too (by `make`) and never seen.
    pub(crate) fn new(len: usize, make: impl FnMut(usize) -> T) -> Self {
        Self {
            items: core::array::from_fn(make),
            len: len.min(MAX_CHANNELS),
        }
    }
}

impl<T> core::ops::Deref for PerChannel<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

impl<T> core::ops::DerefMut for PerChannel<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.items.get_mut(..self.len).unwrap_or_default()
    }
}
