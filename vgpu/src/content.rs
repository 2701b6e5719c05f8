//! Content tracking on the source: send fewer bytes for pages whose content the destination can
//! already reconstruct.
//!
//! With [`ContentStorage`] attached to a [`SourceSession`](crate::source::SourceSession), every
//! dirty page is hashed (xxh3-64) before it is sent and classified:
//! - *unchanged*: its hash equals the hash of what was last sent for this frame: not sent at all;
//! - *zero*: sent as a ZERO run (this needs no storage and happens without content tracking too);
//! - *duplicate*: another frame was sent with the same content and has not been sent since: a DUP
//!   entry (16 bytes) names it, and the destination copies it and checks the hash;
//! - *delta*: the page's last sent version is in the page cache and the XOR delta is shorter than
//!   [`DELTA_LIMIT`]: a DELTA page;
//! - otherwise a FULL page.
//!
//! Hash equality stands for content equality: with a 64-bit hash, a changed page is hidden only if
//! its new content collides with its old one (probability 2⁻⁶⁴ per page). The destination checks
//! DUP hashes, so a stale duplicate can not go unnoticed.
//!
//! Storage (all the caller's): `hashes` one `u64` per guest frame (8 B/page: 896 KiB for a 448 MiB
//! vGPU); `dup_slots` any number of `u64` (a direct-mapped table from content hash to frame);
//! `delta_pages` `n * 4096` bytes with `delta_tags` `n` words (a direct-mapped cache of last-sent
//! pages; zero pages cost no cache bytes).

use gmem::page_hash;

use crate::channel::{MAX_CHANNELS, STRIPE_FRAMES, channel_of};

use crate::error::{Buffer, StorageError, VgpuError};

/// Largest delta sent instead of a full page; larger deltas go as FULL pages.
pub const DELTA_LIMIT: usize = 2048;

/// Tag bit: the cached version of the frame is the zero page (no cache bytes needed).
const TAG_ZERO: u64 = 1 << 63;

/// Caller storage for content tracking.
#[derive(Debug)]
pub struct ContentStorage<'s> {
    /// One word per guest frame (dense index of the memory map): hash of what was last sent.
    pub hashes: &'s mut [u64],
    /// Direct-mapped table from content hash to the frame (index + 1) last sent with it; may be
    /// empty to disable duplicate detection.
    pub dup_slots: &'s mut [u64],
    /// Cache of last-sent page contents, `delta_tags.len()` pages; may be empty to disable deltas.
    pub delta_pages: &'s mut [u8],
    /// Which frame (index + 1, or'ed with a zero-page flag) each cache page holds.
    pub delta_tags: &'s mut [u64],
}

/// How a dirty page goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Unchanged,
    Zero,
    Full,
    Dup { from: usize },
    Delta { len: usize },
}

/// Counters of what content tracking saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct ContentStats {
    /// Dirty pages not sent because their content had not changed.
    pub unchanged: u64,
    /// Pages sent as duplicates of another frame.
    pub dup: u64,
    /// Pages sent as deltas.
    pub delta: u64,
    /// Bytes of those deltas (without length fields).
    pub delta_bytes: u64,
}

/// The attached storage. Pages are classified per channel ([`ContentPart`]): each channel owns
/// the hashes of its own frames, a part of the duplicate table and a part of the delta cache, so
/// channels can classify on separate threads and what one channel sends never depends on what
/// another sent or when.
#[derive(Debug)]
pub(crate) struct Content<'s> {
    s: ContentStorage<'s>,
    zero_hash: u64,
}

/// One channel's share of content tracking: the hashes of its frames (by channel-local index,
/// see [`local_index`]), and its parts of the duplicate table and of the delta cache.
#[derive(Debug)]
pub(crate) struct ContentPart<'a> {
    hashes: &'a mut [u64],
    dup_slots: &'a mut [u64],
    delta_pages: &'a mut [u8],
    delta_tags: &'a mut [u64],
    zero_hash: u64,
    channel: usize,
    channels: usize,
}

/// The index of frame `i` (dense) among the frames of its channel: the channels' stripes laid out
/// one after the other, so each channel's frames are one contiguous range of a per-frame array.
pub(crate) const fn local_index(i: usize, channels: usize) -> usize {
    if channels <= 1 {
        i
    } else {
        (i / STRIPE_FRAMES / channels) * STRIPE_FRAMES + i % STRIPE_FRAMES
    }
}

/// How many of `frames` frames belong to `channel` (of `channels`).
pub(crate) const fn frames_of(frames: usize, channel: usize, channels: usize) -> usize {
    if channels <= 1 {
        return frames;
    }
    let full = frames / STRIPE_FRAMES;
    let rest = frames % STRIPE_FRAMES;
    let mine = full.saturating_sub(channel).div_ceil(channels) * STRIPE_FRAMES;
    if rest > 0 && full % channels == channel {
        mine + rest
    } else {
        mine
    }
}

impl<'s> Content<'s> {
    pub(crate) fn new(s: ContentStorage<'s>, frames: usize) -> Result<Self, VgpuError> {
        if s.hashes.len() != frames {
            return Err(VgpuError::Storage(StorageError {
                buffer: Buffer::ContentHashes,
                needed: frames,
                got: s.hashes.len(),
            }));
        }
        let pages = s.delta_tags.len().saturating_mul(4096);
        if s.delta_pages.len() != pages {
            return Err(VgpuError::Storage(StorageError {
                buffer: Buffer::DeltaPages,
                needed: pages,
                got: s.delta_pages.len(),
            }));
        }
        s.hashes.fill(0);
        s.dup_slots.fill(0);
        s.delta_tags.fill(0);
        Ok(Self {
            s,
            zero_hash: page_hash(&[0u8; 4096]),
        })
    }

    /// Split into the parts of `channels` channels (entries `channels..` are `None`). The
    /// duplicate table and the delta cache are divided evenly (a remainder stays unused).
    pub(crate) fn parts(&mut self, channels: usize) -> [Option<ContentPart<'_>>; MAX_CHANNELS] {
        let n = channels.clamp(1, MAX_CHANNELS);
        let frames = self.s.hashes.len();
        let dup_share = self.s.dup_slots.len() / n;
        let delta_share = self.s.delta_tags.len() / n;
        let mut hashes = &mut *self.s.hashes;
        let mut dup = &mut *self.s.dup_slots;
        let mut pages = &mut *self.s.delta_pages;
        let mut tags = &mut *self.s.delta_tags;
        let zero_hash = self.zero_hash;
        core::array::from_fn(|c| {
            if c >= n {
                return None;
            }
            let (h, rest) = core::mem::take(&mut hashes).split_at_mut(frames_of(frames, c, n));
            hashes = rest;
            let (d, rest) = core::mem::take(&mut dup).split_at_mut(dup_share);
            dup = rest;
            let (p, rest) = core::mem::take(&mut pages).split_at_mut(delta_share * 4096);
            pages = rest;
            let (t, rest) = core::mem::take(&mut tags).split_at_mut(delta_share);
            tags = rest;
            Some(ContentPart {
                hashes: h,
                dup_slots: d,
                delta_pages: p,
                delta_tags: t,
                zero_hash,
                channel: c,
                channels: n,
            })
        })
    }
}

impl ContentPart<'_> {
    fn slot(len: usize, key: u64) -> Option<usize> {
        let n = u64::try_from(len).ok().filter(|n| *n > 0)?;
        usize::try_from(key % n).ok()
    }

    /// The hash last sent for frame `i` (dense index), if `i` is one of this channel's frames.
    fn last_hash(&self, i: usize) -> Option<u64> {
        if channel_of(i, self.channels) != self.channel {
            return None;
        }
        self.hashes.get(local_index(i, self.channels)).copied()
    }

    /// Classify page `i` (dense frame index, one of this channel's) with content `page`; `delta`
    /// receives the delta bytes for [`Class::Delta`]. Returns the class and the page's hash.
    /// Changes nothing.
    pub(crate) fn classify(
        &self,
        i: usize,
        page: &[u8; 4096],
        zero: bool,
        delta: &mut [u8; DELTA_LIMIT],
    ) -> (Class, u64) {
        let h = if zero {
            self.zero_hash
        } else {
            page_hash(page)
        };
        let last = self.last_hash(i).unwrap_or(0);
        if h != 0 && last == h {
            return (Class::Unchanged, h);
        }
        if zero {
            return (Class::Zero, h);
        }
        // A DUP may only name a frame of its own channel (see `crate::channel`): `last_hash`
        // knows no other.
        if let Some(from) = Self::slot(self.dup_slots.len(), h)
            .and_then(|k| self.dup_slots.get(k))
            .and_then(|v| v.checked_sub(1))
            .and_then(|j| usize::try_from(j).ok())
            && from != i
            && self.last_hash(from) == Some(h)
        {
            return (Class::Dup { from }, h);
        }
        let local = local_index(i, self.channels) as u64;
        if let Some(k) = Self::slot(self.delta_tags.len(), local) {
            let tag = self.delta_tags.get(k).copied().unwrap_or(0);
            if tag & !TAG_ZERO == i as u64 + 1 {
                let zero_page = [0u8; 4096];
                let old: Option<&[u8; 4096]> = if tag & TAG_ZERO != 0 {
                    Some(&zero_page)
                } else {
                    self.delta_pages
                        .get(k * 4096..(k + 1) * 4096)
                        .and_then(|p| p.try_into().ok())
                };
                if let Some(old) = old
                    && let Some(len) = migstream::delta::encode(old, page, delta)
                {
                    return (Class::Delta { len }, h);
                }
            }
        }
        (Class::Full, h)
    }

    /// Record that page `i` went out with content `page` (hash `h`).
    pub(crate) fn commit(&mut self, i: usize, h: u64, page: &[u8; 4096], zero: bool) {
        if channel_of(i, self.channels) != self.channel {
            return;
        }
        let local = local_index(i, self.channels);
        if let Some(x) = self.hashes.get_mut(local) {
            *x = h;
        }
        if !zero
            && let Some(k) = Self::slot(self.dup_slots.len(), h)
            && let Some(x) = self.dup_slots.get_mut(k)
        {
            *x = i as u64 + 1;
        }
        if let Some(k) = Self::slot(self.delta_tags.len(), local as u64) {
            if let Some(t) = self.delta_tags.get_mut(k) {
                let mine = *t & !TAG_ZERO == i as u64 + 1;
                if zero && *t != 0 && !mine {
                    // A zero page does not evict another frame's cached page: round 0 sends
                    // every frame, mostly zero, and would otherwise flush the cache.
                    return;
                }
                *t = (i as u64 + 1) | if zero { TAG_ZERO } else { 0 };
            }
            if !zero && let Some(dst) = self.delta_pages.get_mut(k * 4096..(k + 1) * 4096) {
                dst.copy_from_slice(page);
            }
        }
    }
}

impl ContentStats {
    pub(crate) fn count(&mut self, c: Class) {
        match c {
            Class::Unchanged => self.unchanged += 1,
            Class::Dup { .. } => self.dup += 1,
            Class::Delta { len } => {
                self.delta += 1;
                self.delta_bytes += len as u64;
            }
            Class::Zero | Class::Full => {}
        }
    }

    /// The sum of two sets of counters.
    pub(crate) fn add(self, o: Self) -> Self {
        Self {
            unchanged: self.unchanged + o.unchanged,
            dup: self.dup + o.dup,
            delta: self.delta + o.delta,
            delta_bytes: self.delta_bytes + o.delta_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_indices_pack_each_channels_frames() {
        for channels in 1..=MAX_CHANNELS {
            for frames in [
                0,
                1,
                127,
                128,
                129,
                1000,
                5 * STRIPE_FRAMES,
                17 * STRIPE_FRAMES + 3,
            ] {
                let mut seen = [0usize; MAX_CHANNELS];
                for i in 0..frames {
                    let c = channel_of(i, channels);
                    // Frames of a channel in order get the local indices 0, 1, 2, ...
                    assert_eq!(
                        local_index(i, channels),
                        seen[c],
                        "{i} of {frames}/{channels}"
                    );
                    seen[c] += 1;
                }
                for (c, n) in seen.iter().enumerate().take(channels) {
                    assert_eq!(
                        frames_of(frames, c, channels),
                        *n,
                        "{c} {frames} {channels}"
                    );
                }
            }
        }
    }
}
