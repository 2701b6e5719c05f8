//! Guest memory and host GGTT of the reference platform.

use alloc::vec;
use alloc::vec::Vec;

use gmem::{GuestMemoryMap, words_for};
use gtt::{Gfn, GgttEntry, GttIndex};

use vgpu::traits::{CpuDirtyLog, GuestMemory, HostError, HostGtt, MemoryError};

/// Guest physical memory: the frames of a [`GuestMemoryMap`], stored densely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMemory {
    map: GuestMemoryMap,
    bytes: Vec<u8>,
}

/// The hypervisor's log of guest CPU writes to guest memory (KVM's dirty bitmap, in effect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCpuLog {
    map: GuestMemoryMap,
    bits: Vec<u64>,
}

impl SimCpuLog {
    /// An empty log over `map`.
    pub fn new(map: GuestMemoryMap) -> Self {
        let frames = usize::try_from(map.frames()).unwrap_or(0);
        Self {
            map,
            bits: vec![0; words_for(frames)],
        }
    }

    /// Record a CPU write to `gfn`.
    pub fn mark(&mut self, gfn: Gfn) {
        if let Some(i) = self.map.index_of(gfn)
            && let Some(w) = self.bits.get_mut(i / 64)
        {
            *w |= 1 << (i % 64);
        }
    }
}

impl SimMemory {
    /// Zeroed memory for `map`.
    pub fn new(map: GuestMemoryMap) -> Self {
        let frames = usize::try_from(map.frames()).unwrap_or(0);
        Self {
            map,
            bytes: vec![0; frames * 4096],
        }
    }

    /// The memory map this storage is laid out by (the one the machine gives its vGPU).
    pub fn map(&self) -> &GuestMemoryMap {
        &self.map
    }

    /// All guest memory, densely (frame index order of the map).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Split guest memory into one view per channel of a migration of `channels` channels
    /// (1..=[`vgpu::channel::MAX_CHANNELS`]): view `c` reaches exactly the frames of channel
    /// `c`'s stripes ([`vgpu::channel::channel_of`]), so each channel's destination handle
    /// ([`vgpu::dest::DestChannel`]) can write its pages from its own thread without a lock.
    pub fn channel_views(&mut self, channels: usize) -> Vec<ChannelMemory<'_>> {
        let channels = channels.clamp(1, vgpu::channel::MAX_CHANNELS);
        let mut views: Vec<ChannelMemory<'_>> = (0..channels)
            .map(|channel| ChannelMemory {
                map: &self.map,
                channel,
                channels,
                stripes: Vec::new(),
            })
            .collect();
        let stripe = vgpu::channel::STRIPE_FRAMES * 4096;
        for (s, bytes) in self.bytes.chunks_mut(stripe).enumerate() {
            if let Some(v) = views.get_mut(s % channels) {
                v.stripes.push(bytes);
            }
        }
        views
    }

    fn range(
        &self,
        gfn: Gfn,
        offset: usize,
        len: usize,
    ) -> Result<core::ops::Range<usize>, MemoryError> {
        let i = self.map.index_of(gfn).ok_or(MemoryError)?;
        if offset + len > 4096 {
            return Err(MemoryError);
        }
        let start = i * 4096 + offset;
        Ok(start..start + len)
    }

    /// A guest CPU write: changes memory and marks the frame in the CPU dirty log.
    pub fn cpu_write(
        &mut self,
        log: &mut SimCpuLog,
        gfn: Gfn,
        offset: usize,
        data: &[u8],
    ) -> Result<(), MemoryError> {
        let r = self.range(gfn, offset, data.len())?;
        self.bytes
            .get_mut(r)
            .ok_or(MemoryError)?
            .copy_from_slice(data);
        log.mark(gfn);
        Ok(())
    }

    /// Read a little-endian dword.
    pub fn read_u32(&self, gfn: Gfn, offset: usize) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gfn, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

impl GuestMemory for SimMemory {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(gfn, offset, out.len())?;
        out.copy_from_slice(self.bytes.get(r).ok_or(MemoryError)?);
        Ok(())
    }

    fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(gfn, offset, data.len())?;
        self.bytes
            .get_mut(r)
            .ok_or(MemoryError)?
            .copy_from_slice(data);
        Ok(())
    }
}

/// The frames of one channel's stripes of a [`SimMemory`] ([`SimMemory::channel_views`]);
/// any other frame is refused.
#[derive(Debug)]
pub struct ChannelMemory<'m> {
    map: &'m GuestMemoryMap,
    channel: usize,
    channels: usize,
    /// The channel's stripes, in order: stripe `s` of guest memory is `stripes[s / channels]`.
    stripes: Vec<&'m mut [u8]>,
}

impl ChannelMemory<'_> {
    /// Stripe and byte range of `len` bytes at `offset` in frame `gfn`.
    fn at(
        &self,
        gfn: Gfn,
        offset: usize,
        len: usize,
    ) -> Result<(usize, core::ops::Range<usize>), MemoryError> {
        let i = self.map.index_of(gfn).ok_or(MemoryError)?;
        if offset + len > 4096 || vgpu::channel::channel_of(i, self.channels) != self.channel {
            return Err(MemoryError);
        }
        let stripe = i / vgpu::channel::STRIPE_FRAMES;
        let start = (i % vgpu::channel::STRIPE_FRAMES) * 4096 + offset;
        Ok((stripe / self.channels, start..start + len))
    }
}

impl GuestMemory for ChannelMemory<'_> {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let (s, r) = self.at(gfn, offset, out.len())?;
        let stripe = self.stripes.get(s).ok_or(MemoryError)?;
        out.copy_from_slice(stripe.get(r).ok_or(MemoryError)?);
        Ok(())
    }

    fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let (s, r) = self.at(gfn, offset, data.len())?;
        let stripe = self.stripes.get_mut(s).ok_or(MemoryError)?;
        stripe.get_mut(r).ok_or(MemoryError)?.copy_from_slice(data);
        Ok(())
    }
}

impl CpuDirtyLog for SimCpuLog {
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn)) {
        for (wi, w) in self.bits.iter_mut().enumerate() {
            let mut bits = core::mem::take(w);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(gfn) = self.map.frame_at(wi * 64 + b) {
                    sink(gfn);
                }
            }
        }
    }
}

/// The host GGTT of the reference platform: host frame = guest frame + `frame_offset` (a stand-in
/// for the DMA address a real backend gets when it pins the guest page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimHost {
    /// Host GGTT entries, indexed by host GTT index.
    pub ggtt: Vec<u64>,
    /// Offset added to guest frames to make host frames.
    pub frame_offset: u64,
    /// Frame of the scratch page.
    pub scratch_frame: u64,
    /// Entries programmed so far.
    pub writes: u64,
    /// The host fence registers reserved for the vGPU's 32 fences, as last programmed
    /// (`None`: disabled or never programmed).
    pub fences: [Option<u64>; 32],
}

impl SimHost {
    /// A host GGTT covering `gm_bytes` of host graphics memory.
    pub fn new(gm_bytes: u64, frame_offset: u64) -> Self {
        Self {
            ggtt: vec![0; usize::try_from(gm_bytes / 4096).unwrap_or(0)],
            frame_offset,
            scratch_frame: 0xF_FFFF,
            writes: 0,
            fences: [None; 32],
        }
    }
}

impl HostGtt for SimHost {
    fn map(
        &mut self,
        host_index: GttIndex,
        mapping: Option<(Gfn, GgttEntry)>,
    ) -> Result<(), HostError> {
        let slot = self
            .ggtt
            .get_mut(usize::try_from(host_index.get()).map_err(|_| HostError)?)
            .ok_or(HostError)?;
        *slot = match mapping {
            Some((gfn, e)) => e
                .with_frame(Gfn::new(gfn.get() + self.frame_offset))
                .map_err(|_| HostError)?
                .into_bits(),
            None => GgttEntry::from_bits(0)
                .with_frame(Gfn::new(self.scratch_frame))
                .map_err(|_| HostError)?
                .into_bits(),
        };
        self.writes += 1;
        Ok(())
    }

    fn program_fence(&mut self, index: u8, value: Option<u64>) -> Result<(), HostError> {
        *self.fences.get_mut(usize::from(index)).ok_or(HostError)? = value;
        Ok(())
    }
}
