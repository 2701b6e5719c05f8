//! Every buffer one vGPU and its migration need, sized from the configuration and the guest
//! memory map before anything starts.
//!
//! Storage is the caller's (a hypervisor may put it in `static`s), so the caller must know the
//! sizes up front. [`Layout::new`] gives all of them: the vGPU's own storage
//! ([`VgpuStorage`](crate::instance::VgpuStorage)), the source session's send bitmap and scratch
//! buffer, the GGTT pre-copy's copy of what was sent, content tracking's hash table, and the
//! destination's staging storage. With the staging storage it gives, a destination never asks for
//! more mid-restore ([`VgpuError::StagingFull`](crate::error::VgpuError::StagingFull) cannot
//! happen): a stream that would need more breaks a rule of the format and is refused as the
//! stream's fault.

use gmem::GuestMemoryMap;

use crate::channel::MAX_CHANNELS;
use crate::instance::{CONFIG_SPACE_SIZE, VgpuConfig};
use crate::source::MIN_SCRATCH;
use crate::tracking::GpuDirtyLog;

/// The storage sizes of one vGPU of a configuration over a guest memory map.
///
/// ```
/// use vgpu_mig::{FrameRange, Gfn, GmAddr, GmRange, GuestMemoryMap, Layout, Partition, VgpuConfig};
///
/// let map = GuestMemoryMap::new(&[FrameRange::new(Gfn::new(0x100), 256)?])?;
/// let partition = Partition::new(
///     GmRange::new(GmAddr::new(0), 1 << 20)?,
///     GmRange::new(GmAddr::new(0x1000_0000), 1 << 20)?,
/// )?;
/// let layout = Layout::new(&VgpuConfig::skylake(partition), &map);
/// assert_eq!(layout.frames, 256);
/// assert_eq!(layout.ggtt_entries, 512); // two 1 MiB slices of 4 KiB pages
/// assert_eq!(layout.send_words, 4); // one bit per frame
/// assert!(layout.staging > layout.scratch_for(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Layout {
    /// Guest frames in the memory map.
    pub frames: usize,
    /// Bytes of [`VgpuStorage::config_space`](crate::instance::VgpuStorage::config_space).
    pub config_space: usize,
    /// Dwords of [`VgpuStorage::vregs`](crate::instance::VgpuStorage::vregs).
    pub vregs: usize,
    /// Entries of [`VgpuStorage::ggtt`](crate::instance::VgpuStorage::ggtt), and of the copy a
    /// GGTT pre-copy keeps of what it sent
    /// ([`SourceSession::attach_ggtt_precopy`](crate::source::SourceSession::attach_ggtt_precopy)).
    pub ggtt_entries: usize,
    /// Words of [`VgpuStorage::gpu_dirty`](crate::instance::VgpuStorage::gpu_dirty).
    pub gpu_dirty_words: usize,
    /// Words of the source session's send bitmap (one bit per guest frame).
    pub send_words: usize,
    /// Words of content tracking's hash table
    /// ([`ContentStorage::hashes`](crate::content::ContentStorage::hashes)).
    pub content_hashes: usize,
    /// Bytes of the destination session's staging storage: the page map (for any channel
    /// count), each channel's stream header, the PPGTT check's memo and the most device state a
    /// valid stream carries.
    pub staging: usize,
}

impl Layout {
    /// The sizes for a vGPU of `config` over guest memory `map`.
    #[must_use]
    pub fn new(config: &VgpuConfig, map: &GuestMemoryMap) -> Self {
        let frames = usize::try_from(map.frames()).unwrap_or(usize::MAX);
        Self {
            frames,
            config_space: CONFIG_SPACE_SIZE,
            vregs: config.platform().storage_dwords(),
            ggtt_entries: config.ggtt_storage_len(),
            gpu_dirty_words: GpuDirtyLog::storage_words(frames),
            send_words: gmem::words_for(frames),
            content_hashes: frames,
            staging: crate::dest::staging_bound(config, map),
        }
    }

    /// The smallest scratch buffer of a source session with `channels` channels (1 to
    /// [`MAX_CHANNELS`]): [`MIN_SCRATCH`] bytes per channel. More lets a PAGES record carry more
    /// pages (up to [`SourceConfig::pages_per_record`](crate::source::SourceConfig::pages_per_record)).
    #[must_use]
    pub const fn scratch_for(&self, channels: u16) -> usize {
        let n = channels as usize;
        let n = if n == 0 {
            1
        } else if n > MAX_CHANNELS {
            MAX_CHANNELS
        } else {
            n
        };
        MIN_SCRATCH * n
    }

    /// Bytes of one [`migstream::MacStorage`], the caller storage of one channel's stream MAC
    /// (the keyed BLAKE3 hasher) in an authenticated session (feature `auth`).
    #[cfg(feature = "auth")]
    pub const MAC_STORAGE_LEN: usize = migstream::MAC_STORAGE_LEN;

    /// Entries of [`migstream::MacStorage`] an authenticated session with `channels` channels
    /// borrows in `attach_key` (feature `auth`): one per channel, each
    /// [`MAC_STORAGE_LEN`](Self::MAC_STORAGE_LEN) bytes.
    #[cfg(feature = "auth")]
    #[must_use]
    pub const fn mac_storage(&self, channels: u16) -> usize {
        channels as usize
    }
}
