//! The page path: both dirty logs into the send set (harvest before read), and PAGES records
//! built from one read per page, classified and encoded from the bytes read, by one
//! [`PageWorker`] per channel (on the caller's thread, or on a thread of its own).

use gmem::{GuestMemoryMap, is_zero_page};
use migstream::{PagesBuilder, RecordFlags, RecordKind};

use super::{Chan, Current, GpuDirtyPrecision, Phase, SourceSession};
use crate::channel::{MAX_CHANNELS, STRIPE_FRAMES, next_in_channel};
use crate::content::{Class, ContentPart, DELTA_LIMIT};
use crate::error::VgpuError;
use crate::traits::{CpuDirtyLog, GuestMemory, VgpuAccess};

impl<'s> SourceSession<'s> {
    /// Both dirty logs into the send set. Every bit is cleared in its log here, before the pages
    /// it names are read, so a write that lands after a page's read marks it again.
    pub(super) fn harvest(
        &mut self,
        dev: &dyn VgpuAccess,
        cpu: &mut dyn CpuDirtyLog,
    ) -> Result<(), VgpuError> {
        self.harvest_gpu(dev)?;
        let Self { map, send, .. } = self;
        cpu.harvest(&mut |gfn| {
            if let Some(i) = map.index_of(gfn) {
                let _ = send.set(i);
            }
        });
        Ok(())
    }

    /// The GPU's side of the dirty log: what the device wrote, at the configured precision. The
    /// exact marks need no lock; the coarse precisions read the GGTT's mapped frames briefly.
    pub(super) fn harvest_gpu(&mut self, dev: &dyn VgpuAccess) -> Result<(), VgpuError> {
        // What the workers took leaves the send set before anything new comes in.
        self.settle()?;
        // The exact write set (and GGTT remaps) always count; coarser precisions add to it.
        let log = dev.gpu_dirty();
        let active = log.take_active();
        log.absorb_into(&mut self.send)?;
        let all_mapped = match self.cfg.precision {
            GpuDirtyPrecision::AllMapped => true,
            GpuDirtyPrecision::MappedIfActive => active,
            GpuDirtyPrecision::Exact => false,
        };
        if all_mapped {
            let Self { map, send, .. } = self;
            dev.with_vgpu(&mut |vgpu| {
                for (_, e) in vgpu.ggtt().iter_present() {
                    if let Some(i) = map.index_of(e.frame()) {
                        let _ = send.set(i);
                    }
                }
            });
        }
        Ok(())
    }

    /// Build the next PAGES record of channel `c` in its scratch share; false when the round is
    /// exhausted.
    pub(super) fn fill_runs(&mut self, c: usize, mem: &dyn GuestMemory) -> Result<bool, VgpuError> {
        let filled = match self.split().get_mut(c).and_then(Option::as_mut) {
            Some(w) => w.fill(mem)?,
            None => return Err(VgpuError::WrongPhase),
        };
        self.settle()?;
        Ok(filled)
    }

    /// Whether channel `c` has pages left in the current round (dirty frames at or after its
    /// cursor; some may turn out unchanged).
    pub(super) fn has_pages(&self, c: usize) -> bool {
        let from = self.chans.get(c).map_or(usize::MAX, |ch| ch.cursor);
        next_bit(
            self.send.words(),
            self.send.len(),
            from,
            c,
            self.chans.len(),
        )
        .is_some()
    }

    /// Take out of the send set what the workers read: every channel's dirty bits below its
    /// cursor. Runs before every harvest, so a bit set again by a write after the read stays.
    pub(super) fn settle(&mut self) -> Result<(), VgpuError> {
        let n = self.chans.len();
        for (c, ch) in self.chans.iter_mut().enumerate() {
            let mut i = next_in_channel(ch.settled, c, n);
            while i < ch.cursor {
                let end = if n > 1 {
                    (i / STRIPE_FRAMES + 1) * STRIPE_FRAMES
                } else {
                    ch.cursor
                };
                let end = end.min(ch.cursor).min(self.send.len());
                if end <= i {
                    break;
                }
                self.send.clear_range(i, end - i)?;
                i = next_in_channel(end, c, n);
            }
            ch.settled = ch.cursor;
        }
        Ok(())
    }

    /// One page worker per channel over disjoint parts of the session (its channel's encoder and
    /// scratch share, its content-tracking part), all reading the send set; entries past the
    /// channel count are `None`.
    pub(super) fn split(&mut self) -> [Option<PageWorker<'_, 's>>; MAX_CHANNELS] {
        let n = self.chans.len();
        let phase = self.phase;
        let pre_ggtt = self.pre_ggtt.is_some();
        let pages_per_record = self.cfg.pages_per_record;
        let Self {
            chans,
            map,
            send,
            scratch,
            content,
            ..
        } = self;
        let map: &GuestMemoryMap = map;
        let (words, bits) = (send.words(), send.len());
        let mut parts = content.as_mut().map(|t| t.parts(n));
        let mut chans = chans.iter_mut();
        let mut rest: &mut [u8] = scratch;
        let mut taken = 0;
        core::array::from_fn(|c| {
            let ch = chans.next()?;
            // The shares are consecutive ranges of the scratch buffer.
            let skip = ch.scratch.start.checked_sub(taken)?;
            let (_, tail) = core::mem::take(&mut rest).split_at_mut_checked(skip)?;
            let (share, tail) = tail.split_at_mut_checked(ch.scratch.len())?;
            rest = tail;
            taken = ch.scratch.end;
            let pages = matches!(phase, Phase::Round | Phase::FinalRound)
                && ch.intro == 2
                && !ch.round_done
                && !ch.ended
                && !(c == 0 && pre_ggtt && phase == Phase::Round);
            Some(PageWorker {
                content: parts
                    .as_mut()
                    .and_then(|p| p.get_mut(c))
                    .and_then(Option::take),
                ch,
                channel: c,
                channels: n,
                scratch: share,
                map,
                words,
                bits,
                pages_per_record,
                pages,
            })
        })
    }

    /// Pages dirty and not yet sent (VFIO's `dirty_bytes` / 4096 during pre-copy).
    pub fn pending_pages(&self) -> u64 {
        self.send.count() as u64
    }

    /// Pages sent so far, and how many of them were zero pages.
    pub fn pages_sent(&self) -> (u64, u64) {
        self.chans
            .iter()
            .fold((0, 0), |(p, z), c| (p + c.total_pages, z + c.total_zero))
    }
}

/// One channel's page producer for the current round: it reads its channel's dirty pages, once
/// each, classifies them and encodes PAGES records into its channel's stream. Workers of
/// different channels share nothing they write, so each may run on a thread of its own
/// ([`SourceSession::page_workers`]); for the same session state a worker writes exactly the
/// bytes [`SourceSession::poll_output_channel`] would write for those records.
#[derive(Debug)]
pub struct PageWorker<'a, 's> {
    ch: &'a mut Chan<'s>,
    channel: usize,
    channels: usize,
    scratch: &'a mut [u8],
    map: &'a GuestMemoryMap,
    /// The send set, read only: a worker advances its channel's cursor, and the session clears
    /// the bits below it when the workers are done.
    words: &'a [u64],
    bits: usize,
    content: Option<ContentPart<'a>>,
    pages_per_record: u32,
    /// Whether the session's phase lets this channel send pages now.
    pages: bool,
}

impl PageWorker<'_, '_> {
    /// The channel this worker writes.
    pub fn channel(&self) -> usize {
        self.channel
    }

    /// Write as much of this channel's PAGES records of the current round as fits into `out`;
    /// returns the bytes written, 0 when the channel's share of the round is sent (or the
    /// session is in a phase without pages). Everything else of the stream (header, ROUND
    /// records, device state, END) is [`SourceSession::poll_control`]'s.
    ///
    /// # Errors
    /// Local failures only (guest-memory backend, undersized scratch); the session is then
    /// unusable and the migration should be cancelled.
    pub fn poll(&mut self, mem: &dyn GuestMemory, out: &mut [u8]) -> Result<usize, VgpuError> {
        let mut pos = 0;
        while pos < out.len() {
            if self.ch.current == Current::None && !(self.pages && self.fill(mem)?) {
                break;
            }
            let Current::Scratch {
                kind: RecordKind::PAGES,
                version,
                len,
            } = self.ch.current
            else {
                // Another record is under way: the session's to finish.
                break;
            };
            let payload = self.scratch.get(..len).ok_or(VgpuError::StorageSize)?;
            let buf = out.get_mut(pos..).ok_or(VgpuError::WrongPhase)?;
            let p = self.ch.enc.write_record(
                RecordKind::PAGES,
                RecordFlags::MANDATORY,
                version,
                payload,
                buf,
            )?;
            pos += p.written();
            if !p.is_done() {
                break;
            }
            self.ch.current = Current::None;
        }
        Ok(pos)
    }

    /// Build the next PAGES record in the scratch share; false when the round is exhausted.
    ///
    /// Each page is taken from the send set (its dirty bits were harvested before), read once into
    /// the record, classified from those bytes and encoded from them: the bytes classified are the
    /// bytes sent, and content tracking remembers exactly them (hash, delta base), so a guest that
    /// writes the page during the read can not make the destination hold something the source's
    /// record of it disagrees with. The write marks the page dirty again; it goes again later.
    pub(super) fn fill(&mut self, mem: &dyn GuestMemory) -> Result<bool, VgpuError> {
        let (c, n) = (self.channel, self.channels);
        // The channel's cursor and counters are kept here while the record fills and written
        // back once: channels' states sit side by side, and a write per page to a cache line
        // that another channel's thread writes too would cost each page a line transfer.
        let mut cursor = self.ch.cursor;
        let (mut pages, mut zeros) = (0u64, 0u64);
        let mut stats = self.ch.stats;
        let mut b = PagesBuilder::new(self.scratch);
        let mut delta = [0u8; DELTA_LIMIT];
        while b.pages() < self.pages_per_record {
            let Some(bit) = next_bit(self.words, self.bits, cursor, c, n) else {
                cursor = cursor.max(self.bits);
                break;
            };
            let Some(gfn) = self.map.frame_at(bit) else {
                cursor = bit + 1;
                continue;
            };
            let frame = gfn.get();
            let Some(slot) = b.slot(frame) else {
                // This record is full: the page goes into the next one.
                cursor = bit;
                break;
            };
            cursor = bit + 1;
            mem.read(gfn, 0, slot).map_err(|_| VgpuError::GuestMemory)?;
            let page: &[u8; 4096] = slot;
            let zero = is_zero_page(page);
            let (class, hash) = match &self.content {
                Some(t) => t.classify(bit, page, zero, &mut delta),
                None if zero => (Class::Zero, 0),
                None => (Class::Full, 0),
            };
            if let Some(t) = self.content.as_mut() {
                stats.count(class);
                if class != Class::Unchanged {
                    t.commit(bit, hash, page, zero);
                }
            }
            match class {
                Class::Unchanged => continue,
                Class::Zero => b.push_zero(frame)?,
                Class::Full => b.push_slot(frame)?,
                Class::Dup { from } => {
                    let from = self.map.frame_at(from).ok_or(VgpuError::StorageSize)?;
                    b.push_dup(frame, from.get(), hash)?;
                }
                Class::Delta { len } => {
                    b.push_delta(frame, delta.get(..len).ok_or(VgpuError::StorageSize)?)?;
                }
            }
            pages += 1;
            if class == Class::Zero {
                zeros += 1;
            }
        }
        let ch = &mut *self.ch;
        ch.cursor = cursor;
        ch.stats = stats;
        ch.round_pages += pages;
        ch.total_pages += pages;
        ch.round_zero += zeros;
        ch.total_zero += zeros;
        if b.is_empty() {
            return Ok(false);
        }
        ch.current = Current::Scratch {
            kind: RecordKind::PAGES,
            version: crate::dest::DEVICE_STATE_VERSION,
            len: b.len(),
        };
        Ok(true)
    }
}

/// The first set bit of channel `c` (of `channels`) at or after `from` in the `bits`-bit bitmap
/// `words`, stripe by stripe of the channel (stripes are whole words).
pub(super) fn next_bit(
    words: &[u64],
    bits: usize,
    from: usize,
    c: usize,
    channels: usize,
) -> Option<usize> {
    let mut i = next_in_channel(from, c, channels);
    while i < bits {
        let end = if channels > 1 {
            ((i / STRIPE_FRAMES + 1) * STRIPE_FRAMES).min(bits)
        } else {
            bits
        };
        let mut w = i / 64;
        let mut mask = !0u64 << (i % 64);
        while w * 64 < end {
            let hit = words.get(w).copied().unwrap_or(0) & mask;
            if hit != 0 {
                let bit = w * 64 + hit.trailing_zeros() as usize;
                return (bit < end).then_some(bit);
            }
            w += 1;
            mask = !0;
        }
        i = next_in_channel(end, c, channels);
    }
    None
}

// A worker moves to a thread of its own: it must stay `Send` (with and without `auth`).
const _: () = {
    const fn must_be_send<T: Send>() {}
    must_be_send::<PageWorker<'static, 'static>>();
};
