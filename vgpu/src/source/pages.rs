//! The page path: both dirty logs into the send set (harvest before read), and PAGES records
//! built from one read per page, classified and encoded from the bytes read.

use gmem::{DirtyBitmap, is_zero_page};
use migstream::{PagesBuilder, RecordKind};

use super::{Current, GpuDirtyPrecision, SourceSession};
use crate::channel::{channel_of, next_in_channel};
use crate::content::{Class, DELTA_LIMIT};
use crate::error::VgpuError;
use crate::traits::{CpuDirtyLog, GuestMemory, VgpuAccess};

impl SourceSession<'_> {
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
    ///
    /// Each page is taken from the send set (its dirty bits were harvested before), read once into
    /// the record, classified from those bytes and encoded from them: the bytes classified are the
    /// bytes sent, and content tracking remembers exactly them (hash, delta base), so a guest that
    /// writes the page during the read can not make the destination hold something the source's
    /// record of it disagrees with. The write marks the page dirty again; it goes again later.
    pub(super) fn fill_runs(&mut self, c: usize, mem: &dyn GuestMemory) -> Result<bool, VgpuError> {
        let channels = self.chans.len();
        let Self {
            chans,
            map,
            send,
            scratch,
            content,
            cfg,
            round_pages,
            round_zero,
            total_pages,
            total_zero,
            ..
        } = self;
        let ch = chans.get_mut(c).ok_or(VgpuError::WrongPhase)?;
        let scratch = scratch
            .get_mut(ch.scratch.clone())
            .ok_or(VgpuError::StorageSize)?;
        let mut b = PagesBuilder::new(scratch);
        let mut delta = [0u8; DELTA_LIMIT];
        while b.pages() < cfg.pages_per_record {
            let Some(bit) = take_for(send, ch.cursor, c, channels) else {
                break;
            };
            let Some(gfn) = map.frame_at(bit) else {
                continue;
            };
            let frame = gfn.get();
            let Some(slot) = b.slot(frame) else {
                // This record is full: the page goes into the next one.
                let _ = send.set(bit);
                ch.cursor = bit;
                break;
            };
            mem.read(gfn, 0, slot).map_err(|_| VgpuError::GuestMemory)?;
            let page: &[u8; 4096] = slot;
            let zero = is_zero_page(page);
            let (class, hash) = match content {
                Some(t) => t.classify(bit, page, zero, &mut delta, channels),
                None if zero => (Class::Zero, 0),
                None => (Class::Full, 0),
            };
            if let Some(t) = content.as_mut() {
                t.count(class);
                if class != Class::Unchanged {
                    t.commit(bit, hash, page, zero);
                }
            }
            ch.cursor = bit + 1;
            match class {
                Class::Unchanged => continue,
                Class::Zero => b.push_zero(frame)?,
                Class::Full => b.push_slot(frame)?,
                Class::Dup { from } => {
                    let from = map.frame_at(from).ok_or(VgpuError::StorageSize)?;
                    b.push_dup(frame, from.get(), hash)?;
                }
                Class::Delta { len } => {
                    b.push_delta(frame, delta.get(..len).ok_or(VgpuError::StorageSize)?)?;
                }
            }
            ch.round_pages += 1;
            *round_pages += 1;
            *total_pages += 1;
            if class == Class::Zero {
                *round_zero += 1;
                *total_zero += 1;
            }
        }
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

    /// Pages dirty and not yet sent (VFIO's `dirty_bytes` / 4096 during pre-copy).
    pub fn pending_pages(&self) -> u64 {
        self.send.count() as u64
    }

    /// Pages sent so far, and how many of them were zero pages.
    pub fn pages_sent(&self) -> (u64, u64) {
        (self.total_pages, self.total_zero)
    }
}

/// Take the next page of channel `c` (of `channels`) at or after `from` from the send set.
pub(super) fn take_for(
    send: &mut DirtyBitmap<'_>,
    from: usize,
    c: usize,
    channels: usize,
) -> Option<usize> {
    let mut from = next_in_channel(from, c, channels);
    loop {
        let bit = send.take_next(from)?;
        if channel_of(bit, channels) == c {
            return Some(bit);
        }
        // Another channel's page: leave it and jump to this channel's next stripe.
        let _ = send.set(bit);
        from = next_in_channel(bit, c, channels);
    }
}
