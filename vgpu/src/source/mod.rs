//! The source side of a live migration: a sans-IO session that turns a running vGPU into a stream.
//!
//! Order on the wire: stream header; pre-copy rounds of graphics-memory pages, each closed by a ROUND
//! record (round 0 carries every guest frame, zero pages as markers; later rounds carry what was
//! dirtied since, by the GPU, by guest CPUs or by GGTT remaps); after [`SourceSession::stop_and_copy`]
//! the last dirty pages, then the device state (config space, registers, GGTT runs, engines); END.
//!
//! The driver loop: call [`SourceSession::poll_output`] with an output buffer and the current time
//! whenever the transport can take bytes; drain [`SourceSession::poll_event`] after each call; when the
//! policy asks to switch (a [`SourceEvent::Switch`]) or the VMM decides to, quiesce the vGPU, let
//! in-flight work finish, then call [`SourceSession::stop_and_copy`] and keep polling until
//! [`SourceEvent::Finished`]. Cancelling is dropping the session and calling [`Vgpu::resume`]: saving
//! only copies, so nothing the guest submitted is lost.
//!
//! **Threads.** Polling needs guest memory, the CPU dirty log and a [`VgpuAccess`]: the GPU dirty
//! log without a lock and the vGPU only briefly, so vCPUs keep taking MMIO exits and the GPU keeps
//! writing while pages stream (the crate docs give the locking rules). Each page is read once, into
//! the PAGES record being built in the scratch buffer, after its dirty bits were harvested; the
//! bytes classified are the bytes sent.
//!
//! **Channels.** With [`SourceConfig::channels`] `= n > 1` the session writes `n` streams (see
//! [`crate::channel`]): poll each with [`SourceSession::poll_output_channel`]. Channel 0 carries the
//! device state; pages are striped over all channels by frame. A round ends when every channel has
//! sent its share, so a channel that is done returns 0 until the others catch up: poll them all.
//!
//! **Channels on threads of their own.** A channel's pages can be read, classified and encoded on
//! a thread of its own, concurrently with the other channels'. Pages are striped over channels
//! by frame, and each channel owns its part of everything the page path writes: its encoder and
//! its record, its share of the scratch buffer, its cursor in the send set, and its part of
//! content tracking (the hashes of its frames, a part of the duplicate table and of the delta
//! cache). So a channel's bytes never depend on another channel or on timing: for the same guest
//! memory at the same points, the threads write exactly the bytes `poll_output_channel` writes.
//! The embedder owns the threads and the per-round barrier:
//!
//! 1. On one thread, poll every channel with [`SourceSession::poll_control`] until it returns 0
//!    (headers, GGTT pre-copy, ROUND records, device state, END: everything but pages), and
//!    drain [`SourceSession::poll_event`] (a switch: quiesce, then `stop_and_copy`).
//! 2. If [`SourceSession::is_finished`], done. Otherwise take [`SourceSession::page_workers`],
//!    move each [`PageWorker`] to its channel's thread (`std::thread::scope`) and poll it until
//!    it returns 0: that channel's share of the round is sent. Join them all, drop the
//!    [`PageWorkers`] (the barrier), and go back to 1, which ends the round.
//!
//! The rules of the crate docs hold unchanged: the dirty logs are harvested only in step 1, at
//! a round's end, before the next round's pages are read (harvest before read); each worker
//! reads each of its pages once, into the record, and classifies and encodes those bytes (one
//! read per send); workers need guest memory only (`GuestMemory + Sync`), never the device, so
//! no device lock is held while pages stream. The single-thread [`SourceSession::poll_output`]
//! and `poll_output_channel` run the same workers on the caller's thread.
//!
//! **Memory modes.** With [`MemoryMode::Stream`] (the default) guest memory travels in the stream.
//! With [`MemoryMode::Report`] it does not: the VMM migrates guest RAM itself and asks the session,
//! VFIO DMA-logging style, which frames the GPU wrote ([`SourceSession::dirty_report`]), as QEMU
//! does for devices with dirty tracking. The stream then carries only the device state, and the
//! VMM decides when to stop (there are no rounds and no policy events).
//!
//! **Where each duty lives.** This module drives the session: opening, the channels, the record
//! being written and what comes next. `pages` is the page path (harvesting both dirty logs into
//! the send set, and building PAGES records from one read per page); `rounds` is the round policy
//! (a round's end, its statistics for the pre-copy policy, the events, VFIO's size estimates);
//! `state` is the device state, read through the device-state table (`crate::sections`), and the
//! GGTT pre-copy.

use gmem::{DirtyBitmap, GuestMemoryMap, Policy, PolicyConfig, SwitchReason, words_for};
use migstream::{Encoder, Progress, RecordFlags, RecordKind, RoundRepr, StreamHeaderRepr};

use crate::channel::{ChannelRepr, MAX_CHANNELS, PerChannel};
use crate::content::{Content, ContentStats, ContentStorage};
use crate::error::{Buffer, StorageError, VgpuError};
use crate::fsm::MigState;
use crate::instance::Vgpu;
use crate::traits::{CpuDirtyLog, GuestMemory, VgpuAccess};

mod pages;
mod rounds;
mod state;
#[cfg(test)]
mod tests;

pub use pages::PageWorker;
use state::{device_record, ggtt_precopy_chunk};

/// The smallest scratch buffer a source session accepts: room for config space, the engine state
/// and a useful GGTT chunk. PAGES records are built in the scratch buffer too, so its share per
/// channel bounds a record's pages (about 64 for 256 KiB).
pub const MIN_SCRATCH: usize = 16 * 1024;

/// Options of a source session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct SourceConfig {
    /// The pre-copy policy.
    pub policy: PolicyConfig,
    /// Stream id written into the header (lets a destination tell retries apart).
    pub stream_id: u64,
    /// Pages per PAGES record (1..=1024; fewer when the channel's share of the scratch buffer is
    /// full first, as records are built there); larger records amortise headers, smaller ones
    /// interleave better with other channels.
    pub pages_per_record: u32,
    /// How precisely the GPU's writes are known.
    pub precision: GpuDirtyPrecision,
    /// Streams the page traffic is split over (1..=[`MAX_CHANNELS`]); see [`crate::channel`].
    pub channels: u16,
    /// Whether guest memory travels in the stream or is reported to the VMM.
    pub memory: MemoryMode,
}

/// Where guest memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemoryMode {
    /// Pages travel in the stream, in pre-copy rounds and the stop-and-copy.
    Stream,
    /// The VMM migrates guest RAM itself; the session reports the frames the GPU wrote
    /// ([`SourceSession::dirty_report`]) and the stream carries device state only.
    Report,
}

/// How precisely the GPU's writes to guest memory are known (GPU page tables have no dirty bits,
/// and GPU writes do not appear in the CPU dirty log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GpuDirtyPrecision {
    /// Every frame mapped through the vGPU's GGTT counts as dirty at every harvest: what the
    /// original prototype did (pinned means dirty). Content tracking then finds the truly changed
    /// pages by hashing.
    AllMapped,
    /// Mapped frames count as dirty when the vGPU ran work since the last harvest
    /// ([`GpuDirtyLog::mark_active`](crate::tracking::GpuDirtyLog::mark_active)); an idle vGPU
    /// adds nothing.
    MappedIfActive,
    /// The exact write set the device model or a command scanner reports
    /// ([`GpuDirtyLog::mark`](crate::tracking::GpuDirtyLog::mark)).
    Exact,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            policy: PolicyConfig::default(),
            stream_id: 0,
            pages_per_record: 64,
            precision: GpuDirtyPrecision::Exact,
            channels: 1,
            memory: MemoryMode::Stream,
        }
    }
}

/// What VFIO's `VFIO_MIG_GET_PRECOPY_INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PrecopyInfo {
    /// Bytes of the initial copy (round 0) not yet sent.
    pub initial_bytes: u64,
    /// Bytes dirtied since they were sent, still to send.
    pub dirty_bytes: u64,
}

/// Something the driver of a source session should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SourceEvent {
    /// A pre-copy round (or the final round) was fully written.
    RoundEnd {
        /// Round number (0 = the full copy).
        round: u32,
        /// Pages sent in the round.
        pages: u64,
        /// Zero pages among them (sent as markers).
        zero_pages: u64,
        /// Stream bytes of the round.
        bytes: u64,
        /// Pages dirtied while the round was sent (what the next round must carry).
        dirty_left: u64,
    },
    /// The policy decided it is time for stop-and-copy: quiesce and call `stop_and_copy`.
    Switch {
        /// Why.
        reason: SwitchReason,
        /// Predicted downtime in µs, when the policy has a bandwidth estimate.
        predicted_downtime_us: Option<u64>,
    },
    /// The END record was written: the stream is complete.
    Finished {
        /// Total stream bytes.
        bytes: u64,
        /// Total records.
        records: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Round,
    AwaitStop,
    FinalRound,
    /// The device state after the stop: row `row` of [`DEVICE_STATE`], from position `from` of
    /// its section (a GGTT takes several records; after a GGTT pre-copy only what changed since).
    State {
        row: usize,
        from: usize,
    },
    End,
    Done,
}

impl Phase {
    /// The first device-state record.
    const STATE: Self = Self::State { row: 0, from: 0 };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    None,
    Header,
    Scratch {
        kind: RecordKind,
        version: u8,
        len: usize,
    },
    Round(RoundRepr),
    End,
}

/// One channel's stream: its encoder, the record it is writing, and its place in the round.
#[derive(Debug)]
struct Chan<'s> {
    enc: Encoder<'s>,
    /// This channel's part of the session's scratch buffer.
    scratch: core::ops::Range<usize>,
    current: Current,
    cursor: usize,
    /// Written: 0 nothing, 1 the header, 2 the header and (multi-channel) the CHANNEL record.
    intro: u8,
    /// The send set's bits of this channel below this index are taken (see `pages`).
    settled: usize,
    round_done: bool,
    round_pages: u64,
    round_zero: u64,
    round_start_bytes: u64,
    total_pages: u64,
    total_zero: u64,
    /// What content tracking saved on this channel.
    stats: ContentStats,
    ended: bool,
}

/// Sans-IO source session. Storage is the caller's: `send` is one bit per guest frame
/// ([`gmem::words_for`]`(frames)` words) and `scratch` at least [`MIN_SCRATCH`] bytes per channel.
#[derive(Debug)]
pub struct SourceSession<'s> {
    cfg: SourceConfig,
    /// The guest memory map (the vGPU's), for frame numbers of send-set bits.
    map: GuestMemoryMap,
    header: StreamHeaderRepr,
    send: DirtyBitmap<'s>,
    scratch: &'s mut [u8],
    chans: PerChannel<Chan<'s>>,
    phase: Phase,
    policy: Policy,
    round: u32,
    round_start_bytes: u64,
    round_start_us: Option<u64>,
    events: heapless::Deque<SourceEvent, 8>,
    content: Option<Content<'s>>,
    /// GGTT pre-copy: what the destination holds of the GGTT (entry by storage slot), and where
    /// the pre-copy save continues while it is still going.
    ggtt_sent: Option<&'s mut [u64]>,
    pre_ggtt: Option<usize>,
}

impl<'s> SourceSession<'s> {
    /// Open a session on a running vGPU (the RUNNING → PRE_COPY arc): dirty tracking restarts now and
    /// round 0 will carry every guest frame (in [`MemoryMode::Report`]: the GPU's writes are
    /// tracked from now on for [`dirty_report`](Self::dirty_report)).
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] unless the vGPU is running (or stopped); [`VgpuError::Storage`]
    /// (with the size needed, as [`crate::Layout`] gives it) for a `send` bitmap of the wrong
    /// size or less than [`MIN_SCRATCH`] bytes of scratch per channel; [`VgpuError::StorageSize`]
    /// for a configuration out of range (pages per record, channels; several channels in report
    /// mode).
    pub fn open(
        vgpu: &mut Vgpu<'_>,
        cpu: &mut dyn CpuDirtyLog,
        cfg: SourceConfig,
        send: &'s mut [u64],
        scratch: &'s mut [u8],
    ) -> Result<Self, VgpuError> {
        Self::check_open(vgpu, &cfg, send.len(), scratch.len())?;
        let n = usize::from(cfg.channels);
        let frames =
            usize::try_from(vgpu.memory_map().frames()).map_err(|_| VgpuError::StorageSize)?;
        #[cfg(feature = "log")]
        ::log::info!(
            "vgpu source: session open, {frames} guest pages, {n} channel(s), memory {:?}",
            cfg.memory
        );
        let mut send = DirtyBitmap::new(send, frames)?;
        vgpu.gpu_dirty().clear();
        if cfg.memory == MemoryMode::Stream {
            // Everything goes in round 0; what was dirtied before now is covered by that.
            cpu.harvest(&mut |_| {});
            send.set_range(0, frames)?;
        }
        let share = scratch.len() / n;
        let chans = PerChannel::new(n, |i| Chan {
            enc: Encoder::new(),
            scratch: i * share..(i + 1) * share,
            current: Current::None,
            cursor: 0,
            intro: 0,
            settled: 0,
            round_done: false,
            round_pages: 0,
            round_zero: 0,
            round_start_bytes: 0,
            total_pages: 0,
            total_zero: 0,
            stats: ContentStats::default(),
            ended: false,
        });
        let header = StreamHeaderRepr {
            // The CHANNEL record is a 1.1 addition; a single-channel stream is plain 1.0.
            minor: if n > 1 {
                migstream::MINOR_1_1
            } else {
                migstream::FORMAT_MINOR
            },
            flags: 0,
            identity: vgpu.config().identity(),
            stream_id: cfg.stream_id,
        };
        vgpu.set_state(MigState::PreCopy);
        Ok(Self {
            policy: Policy::new(cfg.policy),
            cfg,
            map: vgpu.memory_map().clone(),
            header,
            send,
            scratch,
            chans,
            phase: match cfg.memory {
                MemoryMode::Stream => Phase::Round,
                MemoryMode::Report => Phase::AwaitStop,
            },
            round: 0,
            round_start_bytes: 0,
            round_start_us: None,
            events: heapless::Deque::new(),
            content: None,
            ggtt_sent: None,
            pre_ggtt: None,
        })
    }

    /// Every check [`open`](Self::open) makes before it takes the storage.
    pub(crate) fn check_open(
        vgpu: &Vgpu<'_>,
        cfg: &SourceConfig,
        send_words: usize,
        scratch_len: usize,
    ) -> Result<(), VgpuError> {
        // From STOP: the STOP → STOP_COPY arc opens a session and stops at once.
        if !matches!(vgpu.state(), MigState::Running | MigState::Stop) {
            return Err(VgpuError::WrongPhase);
        }
        let n = usize::from(cfg.channels);
        let frames =
            usize::try_from(vgpu.memory_map().frames()).map_err(|_| VgpuError::StorageSize)?;
        if !(1..=MAX_CHANNELS).contains(&n)
            || (n > 1 && cfg.memory == MemoryMode::Report)
            || !(1..=1024).contains(&cfg.pages_per_record)
        {
            return Err(VgpuError::StorageSize);
        }
        if send_words != words_for(frames) {
            return Err(VgpuError::Storage(StorageError {
                buffer: Buffer::Send,
                needed: words_for(frames),
                got: send_words,
            }));
        }
        if scratch_len / n < MIN_SCRATCH {
            return Err(VgpuError::Storage(StorageError {
                buffer: Buffer::Scratch,
                needed: MIN_SCRATCH * n,
                got: scratch_len,
            }));
        }
        Ok(())
    }

    /// Attach content tracking (see [`crate::content`]): unchanged pages are skipped, duplicates
    /// and small changes travel as DUP and DELTA pages. Call before the first `poll_output`; on error nothing changed.
    pub fn attach_content(
        &mut self,
        vgpu: &Vgpu<'_>,
        storage: ContentStorage<'s>,
    ) -> Result<(), VgpuError> {
        if self.bytes_written() != 0 || self.cfg.memory == MemoryMode::Report {
            return Err(VgpuError::WrongPhase);
        }
        let frames =
            usize::try_from(vgpu.memory_map().frames()).map_err(|_| VgpuError::StorageSize)?;
        self.content = Some(Content::new(storage, frames)?);
        Ok(())
    }

    /// Authenticate every channel's stream with the embedder's `key` (feature `auth`; SPEC.md §10):
    /// each stream's header says so and a MAC record over all its bytes precedes its END. Use a
    /// fresh [`SourceConfig::stream_id`] per migration (one the destination expects), or a
    /// recorded stream could be replayed. Call before the first `poll_output`; on error nothing changed.
    ///
    /// Each channel's MAC state lives in the caller's `macs`, one [`migstream::MacStorage`]
    /// per channel ([`crate::Layout::mac_storage`] of them, [`migstream::MAC_STORAGE_LEN`]
    /// bytes each), borrowed for the session's life: the session itself stays small.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] after output started; [`VgpuError::StorageSize`] if `macs`
    /// has fewer entries than the session has channels.
    #[cfg(feature = "auth")]
    pub fn attach_key(
        &mut self,
        key: &migstream::AuthKey,
        macs: &'s mut [migstream::MacStorage],
    ) -> Result<(), VgpuError> {
        if self.bytes_written() != 0 {
            return Err(VgpuError::WrongPhase);
        }
        if macs.len() < self.chans.len() {
            return Err(VgpuError::StorageSize);
        }
        for (c, mac) in self.chans.iter_mut().zip(macs.iter_mut()) {
            c.enc = Encoder::with_key(key, mac);
        }
        Ok(())
    }

    /// Pre-copy the GGTT (stream mode): the main channel sends the whole GGTT before its first pages,
    /// and the stop-and-copy sends only the entries that changed since (as RAW runs, cleared entries
    /// included), so a GGTT that does not change costs nothing after the stop. `sent` holds what
    /// the destination has: [`crate::instance::VgpuConfig::ggtt_storage_len`] entries. Without it
    /// the whole GGTT travels after the stop. Call before the first `poll_output`; on error nothing changed.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] after output started or in report mode;
    /// [`VgpuError::Storage`] for `sent` of the wrong length.
    pub fn attach_ggtt_precopy(
        &mut self,
        vgpu: &Vgpu<'_>,
        sent: &'s mut [u64],
    ) -> Result<(), VgpuError> {
        if self.bytes_written() != 0 || self.cfg.memory == MemoryMode::Report {
            return Err(VgpuError::WrongPhase);
        }
        if sent.len() != vgpu.ggtt().entries().len() {
            return Err(VgpuError::Storage(StorageError {
                buffer: Buffer::GgttSent,
                needed: vgpu.ggtt().entries().len(),
                got: sent.len(),
            }));
        }
        sent.fill(0);
        self.ggtt_sent = Some(sent);
        self.pre_ggtt = Some(0);
        Ok(())
    }

    /// What content tracking saved so far (zero when it is not attached).
    pub fn content_stats(&self) -> ContentStats {
        self.chans
            .iter()
            .fold(ContentStats::default(), |a, c| a.add(c.stats))
    }

    /// Write as much of the (main channel's) stream as fits into `out`; returns the bytes written.
    /// Returns 0 while waiting for [`stop_and_copy`](Self::stop_and_copy), while other channels
    /// finish the round, and after the END record.
    ///
    /// `dev` reaches the vGPU: a `&Vgpu` for a single-threaded caller, or the embedder's
    /// [`VgpuAccess`] over its device lock, which the session takes only briefly (never while it
    /// reads or copies a page). Guest memory may change under every read (see the crate docs).
    ///
    /// # Errors
    /// Local failures only (guest-memory backend, undersized scratch); the session is then unusable
    /// and the migration should be cancelled.
    pub fn poll_output(
        &mut self,
        dev: &dyn VgpuAccess,
        mem: &dyn GuestMemory,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<usize, VgpuError> {
        self.poll_output_channel(0, dev, mem, cpu, now_us, out)
    }

    /// [`poll_output`](Self::poll_output) for channel `channel` (`0..channels`).
    ///
    /// # Errors
    /// As `poll_output`; [`VgpuError::WrongPhase`] for a channel the session does not have.
    pub fn poll_output_channel(
        &mut self,
        channel: usize,
        dev: &dyn VgpuAccess,
        mem: &dyn GuestMemory,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<usize, VgpuError> {
        self.poll_inner(channel, dev, Some(mem), cpu, now_us, out)
    }

    /// Threaded page production, the coordinating part: write as much of channel `channel`'s
    /// stream as fits into `out` without its pages (the header, the CHANNEL record, the GGTT
    /// pre-copy, ROUND records, the device state, END): it stops where the channel's next record
    /// would be a PAGES record, which the channel's [`PageWorker`] writes. Returns the bytes
    /// written; 0 when the channel has nothing but pages to write now, while other channels
    /// finish the round, while waiting for [`stop_and_copy`](Self::stop_and_copy), and after END.
    /// It ends rounds (harvest, the policy's decision, events) as `poll_output_channel` does;
    /// see the crate docs' threading contract for the loop.
    ///
    /// # Errors
    /// As [`poll_output_channel`](Self::poll_output_channel).
    pub fn poll_control(
        &mut self,
        channel: usize,
        dev: &dyn VgpuAccess,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<usize, VgpuError> {
        self.poll_inner(channel, dev, None, cpu, now_us, out)
    }

    /// One [`PageWorker`] per channel for the current round's pages, each `Send`, to run on
    /// threads of their own (or one after another on one). Every worker writes only its own
    /// channel's PAGES records; the session takes the pages they read out of the send set when
    /// the returned [`PageWorkers`] is dropped. Workers made while the session has no pages to
    /// send (before a channel's header, during the GGTT pre-copy, while waiting for the stop,
    /// after the final round) write nothing.
    pub fn page_workers(&mut self) -> PageWorkers<'_, 's> {
        PageWorkers { session: self }
    }

    fn poll_inner(
        &mut self,
        channel: usize,
        dev: &dyn VgpuAccess,
        mem: Option<&dyn GuestMemory>,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<usize, VgpuError> {
        if channel >= self.chans.len() {
            return Err(VgpuError::WrongPhase);
        }
        if self.round_start_us.is_none() {
            self.round_start_us = Some(now_us);
        }
        let mut pos = 0;
        while pos < out.len() {
            if self.chan(channel)?.current == Current::None {
                self.next_record(channel, dev, mem)?;
                if self.chan(channel)?.current == Current::None {
                    break;
                }
            }
            let buf = out.get_mut(pos..).ok_or(VgpuError::WrongPhase)?;
            let progress = self.write_current(channel, buf)?;
            pos += progress.written();
            if !progress.is_done() {
                break;
            }
            let round_ended = matches!(self.chan(channel)?.current, Current::Round(_));
            self.record_done(channel, dev, cpu, now_us)?;
            if round_ended {
                // Return at each round boundary: the driver sees the round's events (and a switch
                // decision) before more bytes go out, and the event queue never overflows.
                break;
            }
        }
        Ok(pos)
    }

    /// Channels of this session.
    pub fn channels(&self) -> usize {
        self.chans.len()
    }

    /// Whether channel `channel` has written its END record.
    pub fn channel_finished(&self, channel: usize) -> bool {
        self.chans.get(channel).is_some_and(|c| c.ended)
    }

    /// Bytes channel `channel` has written so far.
    pub fn channel_bytes(&self, channel: usize) -> u64 {
        self.chans.get(channel).map_or(0, |c| c.enc.bytes_written())
    }

    fn chan(&self, c: usize) -> Result<&Chan<'s>, VgpuError> {
        self.chans.get(c).ok_or(VgpuError::WrongPhase)
    }

    fn chan_mut(&mut self, c: usize) -> Result<&mut Chan<'s>, VgpuError> {
        self.chans.get_mut(c).ok_or(VgpuError::WrongPhase)
    }

    /// Report mode: set in `out` the bit of every `page_size` page of the guest-physical `range`
    /// that holds a frame the GPU wrote since the last report, and forget those frames
    /// (read-and-clear, as VFIO's `DMA_LOGGING_REPORT`); returns how many frames it found. Call it
    /// in every RAM pass of the VMM and once more after [`stop_and_copy`](Self::stop_and_copy),
    /// before the VMM's last RAM copy. In stream mode it reports nothing and returns 0 (the pages
    /// travel in the stream).
    ///
    /// # Errors
    /// [`VgpuError::Report`] for a malformed range, page size or a bitmap too small; nothing is
    /// forgotten then.
    pub fn dirty_report(
        &mut self,
        dev: &dyn VgpuAccess,
        range: gmem::DmaRange,
        page_size: u64,
        out: &mut [u64],
    ) -> Result<u64, VgpuError> {
        range.pages(page_size).map_err(VgpuError::Report)?;
        if self.cfg.memory != MemoryMode::Report {
            return Ok(0);
        }
        self.harvest_gpu(dev)?;
        gmem::DirtyReport::new(&self.map, &mut self.send)
            .and_then(|mut r| r.report(range, page_size, out))
            .map_err(VgpuError::Report)
    }

    /// The next event, if any. Call after every `poll_output`.
    pub fn poll_event(&mut self) -> Option<SourceEvent> {
        self.events.pop_front()
    }

    /// GPU auto-converge: the percentage of the vGPU's engine time the embedder should take
    /// away now, as the policy decided after the last round (0 unless
    /// [`PolicyConfig::throttle`](gmem::PolicyConfig::throttle) is set). Apply it to the
    /// vGPU's scheduler share while pre-copy runs, and lift it when the migration ends.
    pub fn throttle_percent(&self) -> u8 {
        self.policy.throttle_percent()
    }

    /// Whether every channel has written its END record.
    pub fn is_finished(&self) -> bool {
        self.chans.iter().all(|c| c.ended)
    }

    /// Whether the session waits for `stop_and_copy`.
    pub fn awaiting_stop(&self) -> bool {
        self.phase == Phase::AwaitStop
    }

    /// The PRE_COPY → STOP_COPY arc: the vGPU must be quiesced with nothing in flight. Everything
    /// still dirty is sent, then the device state. May be called at any time during pre-copy (the
    /// VMM may decide to switch before the policy does).
    pub fn stop_and_copy(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        cpu: &mut dyn CpuDirtyLog,
    ) -> Result<(), VgpuError> {
        if !matches!(self.phase, Phase::Round | Phase::AwaitStop) {
            return Err(VgpuError::WrongPhase);
        }
        if !vgpu.engines().is_quiesced() || vgpu.engines().in_flight() != 0 {
            return Err(VgpuError::NotQuiesced);
        }
        if self.cfg.memory == MemoryMode::Report {
            // No pages in the stream: the device state follows at once. The GPU's last writes stay
            // in the report for the VMM's final RAM pass.
            self.harvest_gpu(&*vgpu)?;
            self.phase = Phase::STATE;
            vgpu.set_state(MigState::StopCopy);
            return Ok(());
        }
        self.harvest(&*vgpu, cpu)?;
        // A GGTT pre-copy still going stops here: what it did not send counts as changed.
        self.pre_ggtt = None;
        // Mid-round, the round is abandoned (its unsent pages are still in `send`) and the final
        // round gets the next number; before anything of the round went out it keeps this one.
        if self.phase == Phase::Round
            && self.chans.iter().any(|c| c.round_pages > 0 || c.round_done)
        {
            self.round = self.round.saturating_add(1);
        }
        self.phase = Phase::FinalRound;
        self.begin_round();
        vgpu.set_state(MigState::StopCopy);
        #[cfg(feature = "log")]
        ::log::info!(
            "vgpu source: stopped; final round {} and the device state follow",
            self.round
        );
        Ok(())
    }

    /// The destination accepted the stream (the STOP_COPY → STOP arc): the source vGPU stops for good.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] unless every channel has written its END record.
    pub fn complete(self, vgpu: &mut Vgpu<'_>) -> Result<(), VgpuError> {
        if !self.is_finished() {
            return Err(VgpuError::WrongPhase);
        }
        vgpu.set_state(MigState::Stop);
        #[cfg(feature = "log")]
        ::log::info!("vgpu source: migration complete, the source vGPU stays stopped");
        Ok(())
    }

    /// Abandon the migration (any saving state → RUNNING): the vGPU resumes exactly where it was.
    pub fn cancel(self, vgpu: &mut Vgpu<'_>) {
        #[cfg(feature = "log")]
        ::log::warn!("vgpu source: migration cancelled, the vGPU resumes");
        vgpu.resume();
        vgpu.set_state(MigState::Running);
    }

    /// End the session without touching the vGPU and hand the caller's storage back (the `send`
    /// bitmap and the scratch buffer), for example to open the next session with it.
    pub fn release(self) -> (&'s mut [u64], &'s mut [u8]) {
        (self.send.into_words(), self.scratch)
    }

    /// Bytes written so far, all channels together.
    pub fn bytes_written(&self) -> u64 {
        self.chans.iter().map(|c| c.enc.bytes_written()).sum()
    }

    fn next_record(
        &mut self,
        c: usize,
        dev: &dyn VgpuAccess,
        mem: Option<&dyn GuestMemory>,
    ) -> Result<(), VgpuError> {
        let channels = self.chans.len();
        let phase = self.phase;
        let round = self.round;
        let pre_ggtt = self.pre_ggtt.is_some();
        let ch = self.chan_mut(c)?;
        if ch.ended {
            return Ok(());
        }
        match ch.intro {
            0 => {
                ch.current = Current::Header;
                return Ok(());
            }
            1 => {
                let repr = ChannelRepr {
                    channel: u16::try_from(c).map_err(|_| VgpuError::StorageSize)?,
                    channels: u16::try_from(channels).map_err(|_| VgpuError::StorageSize)?,
                };
                let at = ch.scratch.start;
                let dst: &mut [u8; ChannelRepr::LEN] = self
                    .scratch
                    .get_mut(at..at + ChannelRepr::LEN)
                    .and_then(|d| d.try_into().ok())
                    .ok_or(VgpuError::StorageSize)?;
                repr.emit(dst);
                let ch = self.chan_mut(c)?;
                ch.current = Current::Scratch {
                    kind: RecordKind::CHANNEL,
                    version: crate::dest::DEVICE_STATE_VERSION,
                    len: ChannelRepr::LEN,
                };
                return Ok(());
            }
            _ => {}
        }
        match phase {
            Phase::Round if c == 0 && pre_ggtt => {
                // GGTT pre-copy first, chunk by chunk, remembering what each chunk carried.
                let ch = self.chans.get(c).ok_or(VgpuError::WrongPhase)?;
                let scratch = self
                    .scratch
                    .get_mut(ch.scratch.clone())
                    .ok_or(VgpuError::StorageSize)?;
                let from = self.pre_ggtt.unwrap_or(0);
                let mut sent = self.ggtt_sent.as_deref_mut();
                let mut chunk = Err(VgpuError::WrongPhase);
                dev.with_vgpu(&mut |vgpu| {
                    chunk = ggtt_precopy_chunk(vgpu, from, scratch, sent.as_deref_mut());
                });
                let (written, next) = chunk?;
                self.pre_ggtt = next;
                if written > 0 {
                    let ch = self.chan_mut(c)?;
                    ch.current = Current::Scratch {
                        kind: RecordKind::GGTT_RUNS,
                        version: <gtt::GgttRunsSection as migstream::Section>::VERSION,
                        len: written,
                    };
                }
                return Ok(());
            }
            Phase::Round | Phase::FinalRound => {
                if ch.round_done {
                    // Waiting for the other channels to finish the round.
                    return Ok(());
                }
                let more = match mem {
                    Some(mem) => self.fill_runs(c, mem)?,
                    // Pages are the workers': stop before them.
                    None if self.has_pages(c) => return Ok(()),
                    None => false,
                };
                if !more {
                    let ch = self.chan_mut(c)?;
                    let bytes = ch.enc.bytes_written() - ch.round_start_bytes;
                    ch.current = Current::Round(RoundRepr {
                        round,
                        pages: ch.round_pages,
                        bytes,
                    });
                }
                return Ok(());
            }
            Phase::AwaitStop => return Ok(()),
            _ if c != 0 => {
                // A page channel has nothing after the final round.
                ch.current = Current::End;
                return Ok(());
            }
            Phase::Done => return Ok(()),
            Phase::End => {
                ch.current = Current::End;
                return Ok(());
            }
            _ => {}
        }
        // Device state (after the stop): one brief visit to the vGPU per record.
        let ch = self.chans.get_mut(c).ok_or(VgpuError::WrongPhase)?;
        let scratch = self
            .scratch
            .get_mut(ch.scratch.clone())
            .ok_or(VgpuError::StorageSize)?;
        let sent = self.ggtt_sent.as_deref();
        let phase = &mut self.phase;
        let mut record = Err(VgpuError::WrongPhase);
        dev.with_vgpu(&mut |vgpu| record = device_record(phase, sent, vgpu, scratch));
        match record? {
            Some((kind, version, len)) => ch.current = Current::Scratch { kind, version, len },
            None if self.phase == Phase::End => ch.current = Current::End,
            None => {}
        }
        Ok(())
    }

    fn write_current(&mut self, c: usize, out: &mut [u8]) -> Result<Progress, VgpuError> {
        let header = self.header;
        let ch = self.chans.get_mut(c).ok_or(VgpuError::WrongPhase)?;
        let p = match ch.current {
            Current::None => return Err(VgpuError::WrongPhase),
            Current::Header => ch.enc.write_header(&header, out)?,
            Current::Scratch { kind, version, len } => {
                let at = ch.scratch.start;
                let payload = self
                    .scratch
                    .get(at..at + len)
                    .ok_or(VgpuError::StorageSize)?;
                // PAGES records are written the same way by a worker (`PageWorker::poll`).
                ch.enc
                    .write_record(kind, RecordFlags::MANDATORY, version, payload, out)?
            }
            Current::Round(r) => ch.enc.write_round(&r, out)?,
            Current::End => ch.enc.write_end(out)?,
        };
        Ok(p)
    }

    fn record_done(
        &mut self,
        c: usize,
        dev: &dyn VgpuAccess,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
    ) -> Result<(), VgpuError> {
        let channels = self.chans.len();
        let ch = self.chan_mut(c)?;
        match core::mem::replace(&mut ch.current, Current::None) {
            Current::Header => ch.intro = if channels > 1 { 1 } else { 2 },
            Current::Round(_) => {
                ch.round_done = true;
                if self.chans.iter().all(|c| c.round_done) {
                    self.round_end(dev, cpu, now_us)?;
                }
            }
            Current::End => {
                ch.ended = true;
                if c == 0 {
                    self.phase = Phase::Done;
                }
                if self.is_finished() {
                    let records = self.chans.iter().map(|c| c.enc.records_written()).sum();
                    self.push_event(SourceEvent::Finished {
                        bytes: self.bytes_written(),
                        records,
                    });
                }
            }
            Current::Scratch { kind, .. } => {
                // Device state: `next_record` already moved the phase past the record.
                if kind == RecordKind::CHANNEL {
                    ch.intro = 2;
                }
            }
            Current::None => {}
        }
        Ok(())
    }
}

/// The current round's page workers of a session ([`SourceSession::page_workers`]). Dropping it
/// takes the pages the workers read out of the send set (before any harvest can add to it).
#[derive(Debug)]
pub struct PageWorkers<'a, 's> {
    session: &'a mut SourceSession<'s>,
}

impl<'s> PageWorkers<'_, 's> {
    /// The workers, one per channel in channel order; each borrows its own part of the session
    /// and may move to a thread of its own (`std::thread::scope`).
    pub fn split(&mut self) -> impl Iterator<Item = PageWorker<'_, 's>> {
        self.session.split().into_iter().flatten()
    }
}

impl Drop for PageWorkers<'_, '_> {
    fn drop(&mut self) {
        // Only a range past the bitmap can fail, and the cursors never go past it.
        let _ = self.session.settle();
    }
}
