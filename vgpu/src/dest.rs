//! The destination side: a sans-IO session that reads a stream into a stopped vGPU.
//!
//! Pages go to guest memory as they arrive (the destination guest is not running, and a rejected
//! stream fails the whole migration). Device state is never applied while the stream is read: each
//! device-state record is staged in caller storage, and [`DestSession::commit`] validates every
//! staged record against this vGPU (identity, guest memory map, register save list and read-only
//! bits, engine layout) before it changes anything. A stream rejected at any point, by the decoder
//! or by validation, leaves the vGPU's device state exactly as it was.
//!
//! The record order and counts are checked as each record begins (SPEC.md Appendix A, "Order"):
//! a second copy of a once-only record, pages or a ROUND after the device state, a round left
//! without its ROUND record, ROUND numbers that do not continue, and GGTT records beyond their
//! group's bound are refused at once, as the stream's fault. Page work is linear in the stream's
//! bytes: a page map in the staging storage (one bit per guest frame) lets a ZERO run skip frames
//! already zero, whatever its count.
//!
//! A multi-channel migration ([`crate::channel`]) is read by one session opened with
//! [`DestSession::open_channels`]: feed each channel's bytes with [`DestSession::feed_channel`], in
//! any interleaving and segmentation. Each channel must start with its CHANNEL record, carry only
//! the pages of its stripes (and, on channels other than 0, no device state), and share the main
//! channel's stream id and device; the session is finished when every channel has ended.
//!
//! # Channels on their own threads
//!
//! [`DestSession::channels`] splits the session into one [`DestChannel`] per channel: each is
//! `Send` and owns (for the borrow) exactly what its channel changes, so each channel can be read
//! and applied on its own thread with no lock. This is sound because of the format's striping
//! (SPEC.md Appendix A.6): a frame's every copy travels on one channel, and a DUP names only frames
//! of its own channel, so no two channels ever write or read the same guest frame. What each
//! handle holds:
//!
//! | state | where | who changes it |
//! |---|---|---|
//! | decoder, CHANNEL record, ROUND numbers, round budget, END | per channel | the channel's handle |
//! | page map (one bit per frame, summary levels) | a disjoint slice of the staging per channel, indexed by the frame's place in its channel's stripes | the channel's handle |
//! | stream header | per channel; compared across channels when the channels are joined (at [`DestSession::validate`] or `commit`) | the channel's handle |
//! | device-state staging, record order, END totals | main channel only | channel 0's handle |
//! | first failure | one atomic word in the session | whichever handle fails first |
//!
//! The rules for the embedder:
//!
//! - Each thread gets its handle and a [`GuestMemory`] of its own that reaches at least the frames
//!   of its channel's stripes: views of one guest memory, or handles over memory that takes
//!   writes through a shared reference (a VMM's mapped guest RAM). No two channels touch the same
//!   frame, so the views need no lock between them.
//! - Every acceptance rule holds per channel as in [`DestSession::feed_channel`], with the same
//!   error values. A handle whose channel is refused fails the whole session: the other handles
//!   answer their next feed with [`VgpuError::ChannelFailed`] and apply nothing more, and the
//!   session's error (returned by every later call on it) is the first failure's.
//! - Only the comparison of the channels' stream headers waits for the join: a channel whose header
//!   differs from the main channel's is refused by [`DestSession::validate`] and `commit` (as
//!   [`VgpuError::BadChannel`]), before any device state changes.
//! - Drop the handles (end the threads' borrows) before [`DestSession::commit`]; the commit runs on
//!   one thread with the whole guest memory.
//!
//! The result is the same as feeding the same bytes on one thread, for any interleaving.

use core::sync::atomic::{AtomicUsize, Ordering};

use gmem::GuestMemoryMap;
use gtt::Gfn;
use migstream::{Decoder, Event, FeedError, Limits, RecordKind, STREAM_HEADER_LEN};

use crate::channel::{ChannelRepr, MAX_CHANNELS, PerChannel, STRIPE_FRAMES, channel_of};
use core::cell::Cell;

use crate::error::VgpuError;
use crate::fsm::MigState;
use crate::instance::Vgpu;
use crate::sections::{Applying, Checking, Count, DEVICE_STATE, row_of};
pub use crate::sections::{GGTT_STAGED_PER_ENTRY, STAGED_HEADER, device_state_bound};
use crate::traits::{GuestMemory, HostGtt};

/// The record-format version of every device-state payload this destination restores
/// (SPEC.md Appendix A); a device-state record of another version is
/// [`VgpuError::UnsupportedRecord`].
pub const DEVICE_STATE_VERSION: u8 = 1;

/// The record-format version a writer puts on a record of `kind` (SPEC.md Appendix A): the
/// version of its section in the device-state table ([`mmio::SPARSE_VERSION`] for `REGISTERS`),
/// [`DEVICE_STATE_VERSION`] for the others.
#[must_use]
pub fn record_version(kind: RecordKind) -> u8 {
    row_of(kind).map_or(DEVICE_STATE_VERSION, |(_, p)| p.version())
}

/// What a completed restore carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct DestStats {
    /// Full pages written to guest memory.
    pub full_pages: u64,
    /// Zero pages written.
    pub zero_pages: u64,
    /// Pages copied from another frame (DUP).
    pub dup_pages: u64,
    /// Bytes XOR-ed into pages (DELTA).
    pub delta_bytes: u64,
    /// Pre-copy rounds seen (ROUND records).
    pub rounds: u32,
    /// Stream bytes consumed.
    pub bytes: u64,
    /// Device-state bytes staged.
    pub staged_bytes: usize,
    /// GGTT entries restored.
    pub ggtt_entries: usize,
}

/// No frame (a frame number never inside guest memory, whose last frame is below it).
const NO_FRAME: u64 = u64::MAX;

/// No channel has failed (the value of [`Shared::first_failed`]).
const NO_FAILURE: usize = usize::MAX;

/// Sans-IO destination session over caller staging storage: the staged device state and the page
/// map. [`DestSession::staging_len`] is what a configuration needs: with that much, a stream can
/// only fail as the stream's fault, never with [`VgpuError::StagingFull`].
#[derive(Debug)]
pub struct DestSession<'s> {
    chans: PerChannel<ChanIn<'s>>,
    limits: Limits,
    staging: &'s mut [u8],
    /// Where the page maps start in `staging` (channel 0's first, one after another).
    map_at: usize,
    /// Where each channel's stream header is kept, as its bytes ([`STREAM_HEADER_LEN`] a channel,
    /// zero until the header is read), up to `map_at`; the PPGTT check's table memo ends here.
    hdr_at: usize,
    /// Where the PPGTT check's table memo starts: device state is staged before it.
    memo_at: usize,
    main: Main,
    shared: Shared,
}

/// What every channel reads and none changes during a feed, and the first failure.
#[derive(Debug)]
struct Shared {
    channels: usize,
    /// The stream id the embedder expects (a fresh one per migration defeats replay).
    expect_id: Option<u64>,
    /// xxh3-64 of the zero page (a DUP of a frame known to be zero is checked against it).
    zero_hash: u64,
    /// Staging bytes after the device-state area (the memo and the page maps): what a
    /// [`VgpuError::StagingFull`] adds to the device state it needed.
    tail: usize,
    /// The channel whose failure failed the session ([`NO_FAILURE`] while none has).
    first_failed: AtomicUsize,
}

/// The main channel's device-state staging and its place in the record order.
#[derive(Debug)]
struct Main {
    /// Bytes of staged records (with their staging headers) at the start of the staging.
    staged: usize,
    /// The record being staged: (kind, start offset of its payload in staging, length).
    open: Option<(RecordKind, usize, usize)>,
    /// Where the main channel is in the record order of SPEC.md Appendix A.
    stage: Stage,
    /// How many records of each row of the device-state table began.
    once: [u32; DEVICE_STATE.len()],
    /// Staged bytes (with their staging headers) of the GGTT pre-copy and of the GGTT after the
    /// stop ([`GgttGroup`]).
    ggtt_bytes: [usize; 2],
    /// ROUND records of the main channel.
    rounds: u32,
}

/// What one channel's pages did (summed into [`DestStats`]).
#[derive(Debug, Clone, Copy, Default)]
struct PageStats {
    full_pages: u64,
    zero_pages: u64,
    dup_pages: u64,
    delta_bytes: u64,
    bytes: u64,
}

/// One incoming channel.
#[derive(Debug)]
struct ChanIn<'s> {
    /// `None` only while the decoder is lent out during a feed.
    dec: Option<Decoder<'s>>,
    /// The CHANNEL record (multi-channel only): its payload as it arrives, then whether it checked.
    intro: [u8; ChannelRepr::LEN],
    in_intro: bool,
    intro_ok: bool,
    ended: bool,
    /// A PAGES record began since the last ROUND record (its round is not closed yet).
    pages_open: bool,
    /// ROUND records verified, and the last one's number.
    rounds: u32,
    last_round: Option<u32>,
    /// The last ROUND skipped a number: it closed the final round, and no ROUND may follow.
    round_final: bool,
    /// Pages written since the last ROUND record, and the most the round may hold: twice the
    /// frames this channel carries (SPEC.md §6.1, "Round budget").
    round_pages: u64,
    round_budget: u64,
    /// The frame of the last page counted (the pieces of one page count once), or [`NO_FRAME`].
    last_page: u64,
    /// The page map of this channel's frames (by [`local_index`]) and its bytes in staging.
    zmap: zeromap::ZeroMap,
    /// The DUP source frame whose contents were last checked against a DUP's hash, and that
    /// hash, while the frame has not been written since (only this channel writes its frames);
    /// [`NO_FRAME`] for none.
    dup_verified: (u64, u64),
    stats: PageStats,
    /// The error that refused this channel's stream.
    failed: Option<VgpuError>,
}

/// The main channel's place in the record order (SPEC.md Appendix A, "Order").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before any page, ROUND or device-state record: only the GGTT pre-copy so far.
    Start,
    /// In the rounds (a PAGES or ROUND record arrived).
    Rounds,
    /// In the device state after the last round.
    State,
}

/// The place of dense frame index `index` among the frames of its channel (of `channels`): the
/// channel's stripes laid end to end, so each channel's page map covers only its own frames.
fn local_index(index: usize, channels: usize) -> usize {
    if channels <= 1 {
        return index;
    }
    (index / STRIPE_FRAMES / channels) * STRIPE_FRAMES + index % STRIPE_FRAMES
}

/// Bytes of the page maps of a migration of `channels` channels over `frames` frames.
fn maps_len(frames: u64, channels: usize) -> usize {
    (0..channels)
        .map(|c| zeromap::len(channel_frames(frames, c, channels)))
        .fold(0, usize::saturating_add)
}

/// Bytes of the page maps for any channel count (the staging bound covers every one).
fn maps_bound(frames: u64) -> usize {
    (1..=MAX_CHANNELS)
        .map(|n| maps_len(frames, n))
        .max()
        .unwrap_or(0)
}

impl<'s> DestSession<'s> {
    /// Open a session on a stopped vGPU (the STOP → RESUMING arc) for a single-channel stream.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] unless the vGPU is stopped (or running with nothing in flight).
    pub fn open(
        vgpu: &mut Vgpu<'_>,
        staging: &'s mut [u8],
        limits: Limits,
    ) -> Result<Self, VgpuError> {
        Self::open_channels(vgpu, staging, limits, 1)
    }

    /// Open a session that reads a migration of `channels` streams (1..=[`MAX_CHANNELS`]).
    ///
    /// # Errors
    /// As [`open`](Self::open); [`VgpuError::StorageSize`] for a channel count out of range.
    pub fn open_channels(
        vgpu: &mut Vgpu<'_>,
        staging: &'s mut [u8],
        limits: Limits,
        channels: usize,
    ) -> Result<Self, VgpuError> {
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(VgpuError::StorageSize);
        }
        if !matches!(vgpu.state(), MigState::Stop | MigState::Running)
            || vgpu.engines().in_flight() != 0
        {
            return Err(VgpuError::WrongPhase);
        }
        let frames = vgpu.memory_map().frames();
        let too_small = VgpuError::StagingFull {
            needed: staging_bound(vgpu.config(), vgpu.memory_map()),
        };
        let map_at = staging
            .len()
            .checked_sub(maps_len(frames, channels))
            .ok_or(too_small)?;
        let hdr_at = map_at
            .checked_sub(STREAM_HEADER_LEN * channels)
            .ok_or(too_small)?;
        let memo_at = hdr_at
            .checked_sub(crate::ppgtt::memo_len(frames))
            .ok_or(too_small)?;
        staging
            .get_mut(hdr_at..map_at)
            .ok_or(VgpuError::StorageSize)?
            .fill(0);
        // Each channel's page map over its own frames, one after another.
        let mut maps = [None; MAX_CHANNELS];
        let mut rest = staging.get_mut(map_at..).unwrap_or_default();
        for (c, slot) in maps.iter_mut().enumerate().take(channels) {
            let len = zeromap::len(channel_frames(frames, c, channels));
            let (buf, after) = rest
                .split_at_mut_checked(len)
                .ok_or(VgpuError::StorageSize)?;
            let m = zeromap::ZeroMap::init(channel_frames(frames, c, channels), buf)
                .ok_or(VgpuError::StorageSize)?;
            *slot = Some(m);
            rest = after;
        }
        let _ = vgpu.quiesce();
        vgpu.set_state(MigState::Resuming);
        #[cfg(feature = "log")]
        ::log::info!("vgpu destination: session open, {channels} channel(s)");
        let chans = PerChannel::new(channels, |c| {
            let zmap = maps
                .get(c)
                .copied()
                .flatten()
                .unwrap_or(zeromap::ZeroMap::EMPTY);
            ChanIn {
                dec: Some(Decoder::new(limits)),
                intro: [0; ChannelRepr::LEN],
                in_intro: false,
                intro_ok: channels == 1,
                ended: false,
                pages_open: false,
                rounds: 0,
                last_round: None,
                round_final: false,
                round_pages: 0,
                round_budget: 2 * channel_frames(frames, c, channels),
                last_page: NO_FRAME,
                zmap,
                dup_verified: (NO_FRAME, 0),
                stats: PageStats::default(),
                failed: None,
            }
        });
        let tail = staging.len() - memo_at;
        Ok(Self {
            chans,
            limits,
            staging,
            map_at,
            hdr_at,
            memo_at,
            main: Main {
                staged: 0,
                open: None,
                stage: Stage::Start,
                once: [0; DEVICE_STATE.len()],
                ggtt_bytes: [0; 2],
                rounds: 0,
            },
            shared: Shared {
                channels,
                expect_id: None,
                zero_hash: gmem::page_hash(&[0; 4096]),
                tail,
                first_failed: AtomicUsize::new(NO_FAILURE),
            },
        })
    }

    /// Require every channel's stream to be authenticated with `key` (feature `auth`; SPEC.md
    /// §10): a stream without the MAC, or with a tag that does not verify, is refused before
    /// anything is committed. Call before the first `feed`; on error nothing changed.
    ///
    /// Each channel's MAC state lives in the caller's `macs`, one [`migstream::MacStorage`]
    /// per channel ([`crate::Layout::mac_storage`] of them), borrowed for the session's life.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] after bytes were fed; [`VgpuError::StorageSize`] if `macs`
    /// has fewer entries than the session has channels.
    #[cfg(feature = "auth")]
    pub fn attach_key(
        &mut self,
        key: &migstream::AuthKey,
        macs: &'s mut [migstream::MacStorage],
    ) -> Result<(), VgpuError> {
        if self.stats().bytes != 0 || self.failure().is_some() {
            return Err(VgpuError::WrongPhase);
        }
        if macs.len() < self.chans.len() {
            return Err(VgpuError::StorageSize);
        }
        for (c, mac) in self.chans.iter_mut().zip(macs.iter_mut()) {
            c.dec = Some(Decoder::with_key(self.limits, key, mac));
        }
        Ok(())
    }

    /// The decoder limits the session was opened with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Refuse a stream whose header carries another stream id: an embedder that gives every
    /// migration a fresh id (chosen by the destination, say) refuses a replayed recording.
    #[must_use]
    pub fn expect_stream_id(mut self, id: u64) -> Self {
        self.shared.expect_id = Some(id);
        self
    }

    /// The error that failed the session: the first channel's to fail.
    fn failure(&self) -> Option<VgpuError> {
        let c = self.shared.first_failed.load(Ordering::Acquire);
        self.chans.get(c).and_then(|ch| ch.failed)
    }

    /// Feed stream bytes (any segmentation) of the main (or only) channel. Returns the bytes
    /// consumed (all of them unless an error is returned). After an error the session is failed:
    /// every later call returns the same error.
    ///
    /// # Errors
    /// The first problem found in the stream ([`VgpuError::fault`] tells whose fault it is).
    pub fn feed(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        input: &[u8],
    ) -> Result<usize, VgpuError> {
        self.feed_channel(0, vgpu, mem, input)
    }

    /// [`feed`](Self::feed) for channel `channel`.
    ///
    /// # Errors
    /// As `feed`; [`VgpuError::WrongPhase`] for a channel the session does not have.
    pub fn feed_channel(
        &mut self,
        channel: usize,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        input: &[u8],
    ) -> Result<usize, VgpuError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let mut ch = self
            .split(Some(channel))
            .next()
            .ok_or(VgpuError::WrongPhase)?;
        ch.feed(vgpu, mem, input)
    }

    /// One [`DestChannel`] per channel, each `Send`, to feed the channels concurrently (see the
    /// [module docs](self#channels-on-their-own-threads)). While they live the session is
    /// borrowed; drop them before [`commit`](Self::commit).
    pub fn channels(&mut self) -> DestChannels<'_, 's> {
        let mut items = [const { None }; MAX_CHANNELS];
        for (slot, ch) in items.iter_mut().zip(self.split(None)) {
            *slot = Some(ch);
        }
        DestChannels { items }
    }

    /// Handles over the channels' disjoint state: channel `only`'s (able to compare its header
    /// with every other channel's at once), or every channel's (each seeing its own header only).
    fn split(&mut self, only: Option<usize>) -> impl Iterator<Item = DestChannel<'_, 's>> {
        // The staging's parts, laid out at open: `memo_at <= hdr_at <= map_at <= len`.
        let (records, rest) = self
            .staging
            .split_at_mut_checked(self.memo_at)
            .unwrap_or_default();
        let (headers, mut maps) = rest
            .get_mut(self.hdr_at - self.memo_at..)
            .unwrap_or_default()
            .split_at_mut_checked(self.map_at - self.hdr_at)
            .unwrap_or_default();
        let mut main = Some((&mut self.main, records));
        let shared = &self.shared;
        let mut headers = Some(headers);
        let mut header_slots = None;
        if only.is_none() {
            header_slots = headers
                .take()
                .map(|h| h.chunks_exact_mut(STREAM_HEADER_LEN));
        }
        self.chans
            .iter_mut()
            .enumerate()
            .filter_map(move |(c, ch)| {
                let (map, after) =
                    core::mem::take(&mut maps).split_at_mut_checked(ch.zmap.byte_len())?;
                maps = after;
                let main = if c == 0 { main.take() } else { None };
                if only.is_some_and(|o| o != c) {
                    return None;
                }
                let headers = match (headers.take(), header_slots.as_mut()) {
                    (Some(all), _) => Headers::All(all),
                    (None, Some(slots)) => Headers::Own(slots.nth(0)?),
                    (None, None) => return None,
                };
                Some(DestChannel {
                    c,
                    ch,
                    map,
                    headers,
                    main,
                    shared,
                })
            })
    }
}

/// The handles of [`DestSession::channels`]: one [`DestChannel`] per channel of the session.
#[derive(Debug)]
pub struct DestChannels<'a, 's> {
    items: [Option<DestChannel<'a, 's>>; MAX_CHANNELS],
}

impl<'a, 's> DestChannels<'a, 's> {
    /// Channel `channel`'s handle.
    pub fn get_mut(&mut self, channel: usize) -> Option<&mut DestChannel<'a, 's>> {
        self.items.get_mut(channel)?.as_mut()
    }

    /// Every handle, channel 0 first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut DestChannel<'a, 's>> {
        self.items.iter_mut().flatten()
    }
}

impl<'a, 's> IntoIterator for DestChannels<'a, 's> {
    type Item = DestChannel<'a, 's>;
    type IntoIter =
        core::iter::Flatten<core::array::IntoIter<Option<DestChannel<'a, 's>>, MAX_CHANNELS>>;

    /// The handles by value, channel 0 first (to move each to its own thread).
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().flatten()
    }
}

// The threading contract, checked at compile time: a channel's handle moves to its own thread,
// and every channel's thread reads the stopped vGPU.
static_assertions::assert_impl_all!(DestChannel<'static, 'static>: Send);
static_assertions::assert_impl_all!(Vgpu<'static>: Sync);

/// Where a channel's handle keeps its stream header (as the bytes it emits to; all zero until
/// it is read).
#[derive(Debug)]
enum Headers<'a> {
    /// Every channel's, compared as each header arrives (one thread).
    All(&'a mut [u8]),
    /// Its own (the channels are compared when they are joined).
    Own(&'a mut [u8]),
}

/// One channel of a destination session, to be fed on a thread of its own
/// ([`DestSession::channels`]). It borrows only what its channel changes: its decoder and
/// counters, its slice of the page map, and (channel 0) the device-state staging.
#[derive(Debug)]
pub struct DestChannel<'a, 's> {
    c: usize,
    ch: &'a mut ChanIn<'s>,
    map: &'a mut [u8],
    headers: Headers<'a>,
    main: Option<(&'a mut Main, &'a mut [u8])>,
    shared: &'a Shared,
}

impl DestChannel<'_, '_> {
    /// The channel this handle feeds.
    pub fn channel(&self) -> usize {
        self.c
    }

    /// Whether this channel's END record has been verified.
    pub fn is_finished(&self) -> bool {
        self.ch.ended
    }

    /// Feed this channel's stream bytes (any segmentation), applying its pages to `mem`, which
    /// must reach at least this channel's frames. Returns the bytes consumed (all of them unless
    /// an error is returned).
    ///
    /// # Errors
    /// As [`DestSession::feed_channel`]; [`VgpuError::ChannelFailed`] once another channel has
    /// failed the session (this channel's bytes are then not read).
    pub fn feed(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        input: &[u8],
    ) -> Result<usize, VgpuError> {
        if let Some(e) = self.ch.failed {
            return Err(e);
        }
        let first = self.shared.first_failed.load(Ordering::Acquire);
        if first != NO_FAILURE {
            return Err(VgpuError::ChannelFailed {
                channel: u16::try_from(first).unwrap_or(u16::MAX),
            });
        }
        let r = self.feed_inner(vgpu, mem, input);
        if let Err(e) = r {
            #[cfg(feature = "log")]
            ::log::warn!(
                "vgpu destination: stream rejected on channel {}: {e}",
                self.c
            );
            self.ch.failed = Some(e);
            let _ = self.shared.first_failed.compare_exchange(
                NO_FAILURE,
                self.c,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        r
    }

    fn feed_inner(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        input: &[u8],
    ) -> Result<usize, VgpuError> {
        let mut dec = self.ch.dec.take().ok_or(VgpuError::WrongPhase)?;
        // `feed_all` checksums each chunk of page bytes as it hands it out (then in cache for the
        // write to guest memory).
        let r = dec.feed_all(input, |ev| self.on_event(vgpu, mem, ev));
        self.ch.dec = Some(dec);
        let n = match r {
            Ok(n) => n,
            Err(FeedError::Decode(e)) => return Err(e.into()),
            Err(FeedError::Sink(e)) => return Err(e),
        };
        self.ch.stats.bytes += n as u64;
        Ok(n)
    }

    fn channel_u16(&self) -> u16 {
        u16::try_from(self.c).unwrap_or(u16::MAX)
    }

    /// Checks that page `gfn` may arrive on this channel: inside guest memory, and in one of the
    /// channel's stripes. Returns its dense index.
    fn check_page(&self, map: &GuestMemoryMap, gfn: u64) -> Result<usize, VgpuError> {
        let Some(index) = map.index_of(Gfn::new(gfn)) else {
            return Err(VgpuError::FrameOutsideMemory { gfn });
        };
        self.check_stripe(gfn, index)?;
        Ok(index)
    }

    fn check_stripe(&self, gfn: u64, index: usize) -> Result<(), VgpuError> {
        if channel_of(index, self.shared.channels) != self.c {
            return Err(VgpuError::WrongChannel {
                gfn,
                channel: self.channel_u16(),
            });
        }
        Ok(())
    }

    /// Checks a ZERO run as [`check_page`](Self::check_page) checks each of its pages, reporting
    /// the first page that fails, in `O(regions)` whatever its `count`. Returns the dense index of
    /// `first`: the run's frames are consecutive dense indices (within one stripe when there are
    /// several channels).
    fn check_zero_run(
        &self,
        map: &GuestMemoryMap,
        first: u64,
        count: u32,
    ) -> Result<usize, VgpuError> {
        let start = self.check_page(map, first)?;
        // The frames from `first` on that are guest memory without a hole: up to the end of
        // `first`'s region and of every region that follows it without a gap.
        let mut inside_end = first;
        for r in map.regions() {
            if r.start().get() <= inside_end && inside_end < r.end() {
                inside_end = r.end();
            }
        }
        let end = first.saturating_add(u64::from(count));
        // Pages on another channel's stripe (the first such page comes before any page outside
        // memory when it lies before `inside_end`).
        if self.shared.channels > 1 {
            let in_stripe = (STRIPE_FRAMES - start % STRIPE_FRAMES) as u64;
            let next = first.saturating_add(in_stripe);
            if next < end.min(inside_end) {
                let index = start + STRIPE_FRAMES - start % STRIPE_FRAMES;
                self.check_stripe(next, index)?;
            }
        }
        if inside_end < end {
            return Err(VgpuError::FrameOutsideMemory { gfn: inside_end });
        }
        Ok(start)
    }

    fn on_event(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        ev: Event<'_>,
    ) -> Result<(), VgpuError> {
        let c = self.c;
        let channels = self.shared.channels;
        let bad_channel = VgpuError::BadChannel {
            channel: self.channel_u16(),
        };
        let intro_pending = !self.ch.intro_ok;
        let in_intro = self.ch.in_intro;
        match ev {
            Event::Header(h) => {
                let local = vgpu.config().identity();
                h.identity.check_compatible(&local)?;
                if h.identity.aperture_base != local.aperture_base
                    || h.identity.hidden_base != local.hidden_base
                {
                    return Err(VgpuError::GuestViewMismatch);
                }
                if self.shared.expect_id.is_some_and(|id| id != h.stream_id) {
                    return Err(VgpuError::UnexpectedStreamId { id: h.stream_id });
                }
                let mut bytes = [0u8; STREAM_HEADER_LEN];
                h.emit(&mut bytes);
                let slot = match &mut self.headers {
                    Headers::All(all) => {
                        // Every channel belongs to the same migration.
                        let read = |s: &&[u8]| s.iter().any(|&b| b != 0);
                        if all
                            .chunks_exact(STREAM_HEADER_LEN)
                            .filter(read)
                            .any(|o| *o != bytes)
                        {
                            return Err(bad_channel);
                        }
                        all.chunks_exact_mut(STREAM_HEADER_LEN).nth(c)
                    }
                    Headers::Own(slot) => Some(&mut **slot),
                };
                slot.ok_or(VgpuError::WrongPhase)?.copy_from_slice(&bytes);
            }
            Event::RecordBegin { kind, len, .. } if kind == RecordKind::CHANNEL => {
                if !intro_pending || in_intro || usize::try_from(len).ok() != Some(ChannelRepr::LEN)
                {
                    return Err(bad_channel);
                }
                self.ch.in_intro = true;
            }
            Event::Payload { kind, offset, data } if kind == RecordKind::CHANNEL => {
                let off = usize::try_from(offset).map_err(|_| VgpuError::WrongPhase)?;
                self.ch
                    .intro
                    .get_mut(off..off + data.len())
                    .ok_or(bad_channel)?
                    .copy_from_slice(data);
            }
            Event::RecordEnd { kind, .. } if kind == RecordKind::CHANNEL => {
                let want = ChannelRepr {
                    channel: u16::try_from(c).map_err(|_| VgpuError::WrongPhase)?,
                    channels: u16::try_from(channels).map_err(|_| VgpuError::WrongPhase)?,
                };
                if ChannelRepr::parse(&self.ch.intro) != Some(want) {
                    return Err(bad_channel);
                }
                self.ch.intro_ok = true;
                self.ch.in_intro = false;
            }
            // Nothing but the CHANNEL record may come first on a channel of a multi-channel stream.
            Event::RecordBegin { .. } | Event::Round(_) | Event::End(_) if intro_pending => {
                return Err(bad_channel);
            }
            Event::RecordBegin { kind, .. } if c != 0 && kind != RecordKind::PAGES => {
                // Device state travels on the main channel only.
                return Err(bad_channel);
            }
            Event::RecordBegin { kind, .. } if kind == RecordKind::PAGES => {
                // Pages belong to a round: never after the device state began.
                if let Some((main, _)) = self.main.as_mut() {
                    if main.stage == Stage::State {
                        return Err(VgpuError::RecordOrder { kind: kind.0 });
                    }
                    main.stage = Stage::Rounds;
                }
                self.ch.pages_open = true;
            }
            Event::RecordBegin {
                kind, version, len, ..
            } => self.begin_record(vgpu, kind, version, len)?,
            Event::Payload { kind, offset, data } => {
                let (main, records) = self.main.as_mut().ok_or(VgpuError::WrongPhase)?;
                let (open_kind, start, len) = main.open.ok_or(VgpuError::WrongPhase)?;
                let off = usize::try_from(offset).map_err(|_| VgpuError::WrongPhase)?;
                if open_kind != kind || off + data.len() > len {
                    return Err(VgpuError::WrongPhase);
                }
                let dst = records
                    .get_mut(start + off..start + off + data.len())
                    .ok_or(VgpuError::WrongPhase)?;
                dst.copy_from_slice(data);
            }
            // Only the main channel stages device state: another channel's record ending must not
            // close the record the main channel is staging.
            Event::RecordEnd { kind, .. } if c == 0 => {
                let (main, records) = self.main.as_mut().ok_or(VgpuError::WrongPhase)?;
                if let Some((open_kind, start, len)) = main.open.take() {
                    if open_kind != kind {
                        return Err(VgpuError::WrongPhase);
                    }
                    let hdr: &mut [u8; STAGED_HEADER] = records
                        .get_mut(start - STAGED_HEADER..start)
                        .and_then(|h| h.try_into().ok())
                        .ok_or(VgpuError::WrongPhase)?;
                    let [k0, k1] = kind.0.to_le_bytes();
                    let [l0, l1, l2, l3] = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
                    // Byte 2: the GGTT group of a GGTT_RUNS record (0 for every other kind).
                    let group =
                        u8::from(kind == RecordKind::GGTT_RUNS && main.stage == Stage::State);
                    *hdr = [k0, k1, group, 0, l0, l1, l2, l3];
                    main.staged = start + len;
                }
            }
            Event::PageData {
                frame,
                offset,
                data,
            } => {
                let gfn = Gfn::new(frame);
                let index = self.check_page(vgpu.memory_map(), frame)?;
                self.count_pages(Some(frame), 1)?;
                self.written(frame, 1);
                mem.write(gfn, usize::from(offset), data)
                    .map_err(|_| VgpuError::GuestMemory)?;
                self.mark(index);
                if usize::from(offset) + data.len() == 4096 {
                    self.ch.stats.full_pages += 1;
                }
            }
            Event::PageCopy {
                frame,
                from_frame,
                hash,
            } => {
                let (gfn, from) = (Gfn::new(frame), Gfn::new(from_frame));
                let to_index = self.check_page(vgpu.memory_map(), frame)?;
                let from_index = self.check_page(vgpu.memory_map(), from_frame)?;
                // Whole pages, each paid for by 16 bytes: every one counts.
                self.count_pages(None, 1)?;
                let mismatch = VgpuError::DuplicateMismatch {
                    gfn: frame,
                    from: from_frame,
                };
                self.written(frame, 1);
                if self.maybe_nonzero(from_index) {
                    let mut page = [0u8; 4096];
                    mem.read(from, 0, &mut page)
                        .map_err(|_| VgpuError::GuestMemory)?;
                    // A source frame unchanged since its hash was checked is not hashed again.
                    if self.ch.dup_verified != (from_frame, hash) {
                        if gmem::page_hash(&page) != hash {
                            return Err(mismatch);
                        }
                        self.ch.dup_verified = (from_frame, hash);
                    }
                    mem.write(gfn, 0, &page)
                        .map_err(|_| VgpuError::GuestMemory)?;
                    self.mark(to_index);
                } else {
                    // A copy of a zero page: no read, no hash of 4 KiB.
                    if hash != self.shared.zero_hash {
                        return Err(mismatch);
                    }
                    self.zero(mem, gfn, to_index)?;
                }
                self.ch.stats.dup_pages += 1;
            }
            Event::PageXor {
                frame,
                offset,
                data,
            } => {
                let gfn = Gfn::new(frame);
                let index = self.check_page(vgpu.memory_map(), frame)?;
                self.count_pages(Some(frame), 1)?;
                self.written(frame, 1);
                // In pieces through a small buffer: a short segment (the common case, and a
                // flood's) costs its own length, not a page.
                let mut off = usize::from(offset);
                for piece in data.chunks(XOR_PIECE) {
                    let mut buf = [0u8; XOR_PIECE];
                    let cur = buf.get_mut(..piece.len()).ok_or(VgpuError::WrongPhase)?;
                    mem.read(gfn, off, cur)
                        .map_err(|_| VgpuError::GuestMemory)?;
                    for (c, d) in cur.iter_mut().zip(piece) {
                        *c ^= d;
                    }
                    mem.write(gfn, off, cur)
                        .map_err(|_| VgpuError::GuestMemory)?;
                    off += piece.len();
                }
                self.mark(index);
                self.ch.stats.delta_bytes += data.len() as u64;
            }
            Event::ZeroPages { first_frame, count } => {
                // Only frames that may hold something are written: the run costs its length in
                // map words at most, and each page written was paid for by the write that made it
                // non-zero (or is written once, the first time the stream names it).
                let start = self.check_zero_run(vgpu.memory_map(), first_frame, count)?;
                self.count_pages(None, count)?;
                self.written(first_frame, count);
                // The run lies in one stripe (or there is one channel): its local indices are
                // consecutive too.
                let local = local_index(start, channels);
                let end = local.saturating_add(usize::try_from(count).unwrap_or(usize::MAX));
                let mut at = local;
                while let Some(i) = self.ch.zmap.next_set(self.map, at, end) {
                    let gfn = Gfn::new(first_frame + (i - local) as u64);
                    self.zero_local(mem, gfn, i)?;
                    at = i + 1;
                }
                self.ch.stats.zero_pages += u64::from(count);
            }
            Event::Skipped { .. } => {}
            Event::Round(r) => {
                if let Some((main, _)) = self.main.as_mut() {
                    if main.stage == Stage::State {
                        return Err(VgpuError::RecordOrder {
                            kind: RecordKind::ROUND.0,
                        });
                    }
                    main.stage = Stage::Rounds;
                    main.rounds += 1;
                }
                let ch = &mut *self.ch;
                // Rounds count from 0, one by one; only the final round may skip a number (the
                // round the stop abandoned has no ROUND record), and nothing follows it.
                let (ok, skipped) = match ch.last_round {
                    None => (r.round <= 1, r.round == 1),
                    Some(p) => (
                        !ch.round_final
                            && (Some(r.round) == p.checked_add(1)
                                || Some(r.round) == p.checked_add(2)),
                        Some(r.round) == p.checked_add(2),
                    ),
                };
                if !ok {
                    return Err(VgpuError::BadRound {
                        channel: u16::try_from(c).unwrap_or(u16::MAX),
                        round: r.round,
                    });
                }
                ch.round_final = skipped;
                ch.last_round = Some(r.round);
                ch.rounds += 1;
                ch.pages_open = false;
                ch.round_pages = 0;
                ch.last_page = NO_FRAME;
            }
            Event::End(_) => {
                if self.ch.pages_open {
                    // Pages after the channel's last ROUND record.
                    return Err(VgpuError::RecordOrder {
                        kind: RecordKind::PAGES.0,
                    });
                }
                self.ch.ended = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// A device-state record begins on the main channel: its version, length, order and count are
    /// checked, and room is made for it in the staging.
    fn begin_record(
        &mut self,
        vgpu: &Vgpu<'_>,
        kind: RecordKind,
        version: u8,
        len: u32,
    ) -> Result<(), VgpuError> {
        // SPEC.md §7 and Appendix A: a reader rejects versions it does not know rather than
        // misread a newer layout.
        let Some((row, part)) = row_of(kind).filter(|(_, p)| p.reads(version)) else {
            return Err(VgpuError::UnsupportedRecord { kind: kind.0 });
        };
        // A length no valid record of the kind has is the stream's fault (it cannot be
        // stored, so it is checked before anything else of the record).
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let max = part.bound(vgpu.config());
        if len > max {
            return Err(part.refusal(max));
        }
        let pages_open = self.ch.pages_open;
        let tail = self.shared.tail;
        let (main, records) = self.main.as_mut().ok_or(VgpuError::WrongPhase)?;
        let group = main.begin_device_state(vgpu, pages_open, row, len)?;
        let start = main.staged + STAGED_HEADER;
        let end = start
            .checked_add(len)
            .ok_or(VgpuError::StagingFull { needed: usize::MAX })?;
        if end > records.len() {
            let needed = end.saturating_add(tail);
            return Err(VgpuError::StagingFull { needed });
        }
        main.open = Some((kind, start, len));
        if let Some(g) = group
            && let Some(b) = main.ggtt_bytes.get_mut(usize::from(g))
        {
            *b += STAGED_HEADER + len;
        }
        Ok(())
    }

    /// Count `pages` written on this channel against its round's budget (SPEC.md §6.1, "Round
    /// budget"). `frame` names a single page, whose later pieces (FULL data chunks, DELTA
    /// segments) arriving next count no more; `None` counts `pages` whole pages (a DUP page, a ZERO
    /// run).
    fn count_pages(&mut self, frame: Option<u64>, pages: u32) -> Result<(), VgpuError> {
        let ch = &mut *self.ch;
        if frame.is_some_and(|f| f == ch.last_page && f != NO_FRAME) {
            return Ok(());
        }
        ch.last_page = frame.unwrap_or(NO_FRAME);
        ch.round_pages = ch.round_pages.saturating_add(u64::from(pages));
        if ch.round_pages > ch.round_budget {
            return Err(VgpuError::RoundOverBudget {
                channel: self.channel_u16(),
                round: self.ch.last_round.map_or(0, |r| r.saturating_add(1)),
            });
        }
        Ok(())
    }

    /// Frames `first..first + count` are being written: a DUP hash checked on one of them no
    /// longer holds.
    fn written(&mut self, first: u64, count: u32) {
        let (f, _) = self.ch.dup_verified;
        if f != NO_FRAME && f.wrapping_sub(first) < u64::from(count) {
            self.ch.dup_verified = (NO_FRAME, 0);
        }
    }

    /// Frame of dense index `index` (one of this channel's) may now be non-zero.
    fn mark(&mut self, index: usize) {
        let i = local_index(index, self.shared.channels);
        self.ch.zmap.mark(self.map, i);
    }

    fn maybe_nonzero(&self, index: usize) -> bool {
        let i = local_index(index, self.shared.channels);
        self.ch.zmap.get(self.map, i)
    }

    /// Zero frame `gfn` (dense index `index`) unless it is known to be zero.
    fn zero(&mut self, mem: &mut dyn GuestMemory, gfn: Gfn, index: usize) -> Result<(), VgpuError> {
        let i = local_index(index, self.shared.channels);
        self.zero_local(mem, gfn, i)
    }

    /// [`zero`](Self::zero) by the frame's index in this channel's page map.
    fn zero_local(
        &mut self,
        mem: &mut dyn GuestMemory,
        gfn: Gfn,
        local: usize,
    ) -> Result<(), VgpuError> {
        const ZERO: [u8; 4096] = [0; 4096];
        if self.ch.zmap.get(self.map, local) {
            mem.write(gfn, 0, &ZERO)
                .map_err(|_| VgpuError::GuestMemory)?;
            self.ch.zmap.clear(self.map, local);
        }
        Ok(())
    }
}

impl Main {
    /// The order and count rules of a device-state record beginning on the main channel (SPEC.md
    /// Appendix A), checked before anything of it is staged. `pages_open`: the channel's last
    /// round has pages but no ROUND record yet. Returns the GGTT group of a `GGTT_RUNS` record.
    fn begin_device_state(
        &mut self,
        vgpu: &Vgpu<'_>,
        pages_open: bool,
        row: usize,
        len: usize,
    ) -> Result<Option<u8>, VgpuError> {
        let part = DEVICE_STATE.get(row).ok_or(VgpuError::WrongPhase)?;
        let kind = part.kind();
        let mut group = None;
        if part.count() == Count::Groups {
            // Before every page and ROUND record: the pre-copy; after them: the device state.
            let g = u8::from(self.stage != Stage::Start);
            let bound = part.group_bound(vgpu.config());
            let used = self.ggtt_bytes.get(usize::from(g)).copied().unwrap_or(0);
            if used.saturating_add(STAGED_HEADER).saturating_add(len) > bound {
                return Err(VgpuError::StateOverBound {
                    kind: kind.0,
                    bound,
                });
            }
            if self.stage == Stage::Start {
                return Ok(Some(g));
            }
            group = Some(g);
        }
        if part.count() == Count::Once
            && let Some(seen) = self.once.get_mut(row)
        {
            *seen += 1;
            if *seen > 1 {
                return Err(VgpuError::RecordCount {
                    kind: kind.0,
                    seen: *seen,
                });
            }
        }
        if pages_open {
            // The last round's pages without its ROUND record.
            return Err(VgpuError::RecordOrder {
                kind: RecordKind::PAGES.0,
            });
        }
        self.stage = Stage::State;
        Ok(group)
    }
}

impl<'s> DestSession<'s> {
    /// The staging storage a session on `vgpu` needs: the page map (one bit per guest frame and
    /// its summary levels, for any channel count), each channel's stream header, the PPGTT check's table memo (one byte per
    /// guest frame, [`crate::ppgtt::memo_len`]) plus [`device_state_bound`]. With at least this
    /// much, [`VgpuError::StagingFull`] cannot happen: a stream that would need more breaks a rule
    /// of the format and is refused as the stream's fault.
    pub fn staging_len(vgpu: &Vgpu<'_>) -> usize {
        staging_bound(vgpu.config(), vgpu.memory_map())
    }

    /// The staged records and the PPGTT check's table memo (the staging between `memo_at` and
    /// the page map, [`crate::ppgtt::memo_len`] bytes, which [`staging_len`](Self::staging_len)
    /// counts) as cells, split so both can be used at once.
    fn staged_and_memo(&mut self) -> (StagedIter<'_>, &[Cell<u8>]) {
        let (records, rest) = self.staging.split_at_mut(self.memo_at);
        let memo = rest
            .get_mut(..self.hdr_at - self.memo_at)
            .unwrap_or_default();
        (
            StagedIter {
                buf: records.get(..self.main.staged).unwrap_or_default(),
            },
            Cell::from_mut(memo).as_slice_of_cells(),
        )
    }

    /// Whether the END record of every channel has been verified.
    pub fn is_finished(&self) -> bool {
        self.chans.iter().all(|c| c.ended)
    }

    /// Whether channel `channel`'s END record has been verified.
    pub fn channel_finished(&self, channel: usize) -> bool {
        self.chans.get(channel).is_some_and(|c| c.ended)
    }

    /// Statistics so far.
    pub fn stats(&self) -> DestStats {
        let mut s = DestStats {
            rounds: self.main.rounds,
            staged_bytes: self.main.staged,
            ..DestStats::default()
        };
        for p in self.chans.iter().map(|ch| ch.stats) {
            s.full_pages += p.full_pages;
            s.zero_pages += p.zero_pages;
            s.dup_pages += p.dup_pages;
            s.delta_bytes += p.delta_bytes;
            s.bytes += p.bytes;
        }
        s
    }

    /// Whether the staged registers enable 64 KiB PPGTT pages (`GAMW_ECO_DEV_RW_IA` bits 3:0
    /// all set; reset value 0): the migrated PPGTT trees are checked as the guest's device
    /// will walk them.
    fn ips_64k(&self, vgpu: &Vgpu<'_>) -> bool {
        self.staged_records()
            .filter(|(kind, _)| *kind == RecordKind::REGISTERS)
            .find_map(|(_, p)| {
                mmio::sparse_value(vgpu.regs().platform(), p, gtt::ppgtt::GAMW_ECO_DEV_RW_IA)
            })
            .is_some_and(gtt::ppgtt::ips_enabled)
    }

    fn staged_records(&self) -> impl Iterator<Item = (RecordKind, &[u8])> {
        self.staged_grouped()
            .map(|(kind, _, payload)| (kind, payload))
    }

    fn staged_grouped(&self) -> StagedIter<'_> {
        StagedIter {
            buf: self.staging.get(..self.main.staged).unwrap_or(&[]),
        }
    }

    /// Check every staged record against `vgpu` without changing anything (but the scratch part of
    /// the staging storage).
    pub fn validate(&mut self, vgpu: &Vgpu<'_>, mem: &dyn GuestMemory) -> Result<(), VgpuError> {
        self.check(vgpu, mem).map(|_| ())
    }

    /// [`validate`](Self::validate), returning the PPGTT roots it walked (so a commit walks the
    /// guest's page tables once).
    fn check(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &dyn GuestMemory,
    ) -> Result<crate::ppgtt::PpgttList, VgpuError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        for ch in self.chans.iter() {
            if !ch.ended {
                return Err(VgpuError::Truncated);
            }
            ch.dec.as_ref().ok_or(VgpuError::WrongPhase)?.finish()?;
        }
        // Every channel belongs to the same migration (channels fed on their own threads are
        // compared here; on one thread each header was compared as it came). A channel that
        // differs fails the session.
        let headers = self
            .staging
            .get(self.hdr_at..self.map_at)
            .unwrap_or_default();
        let mut slots = headers.chunks_exact(STREAM_HEADER_LEN);
        let main_header = slots.next();
        let differs = slots.position(|h| Some(h) != main_header).map(|i| i + 1);
        if let Some(c) = differs {
            let e = VgpuError::BadChannel {
                channel: u16::try_from(c).unwrap_or(u16::MAX),
            };
            if let Some(ch) = self.chans.get_mut(c) {
                ch.failed = Some(e);
            }
            let _ = self.shared.first_failed.compare_exchange(
                NO_FAILURE,
                c,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return Err(e);
        }
        // Every channel ended with the same round (SPEC.md §6.2, Appendix A.6). Their counts may
        // differ by the round a stop abandoned: some channels may have closed their share of it
        // before the stop and others not; each channel's numbers were checked as they came.
        let main = self.chans.first().map(|ch| ch.last_round);
        for (c, ch) in self.chans.iter().enumerate() {
            if Some(ch.last_round) != main {
                return Err(VgpuError::BadRound {
                    channel: u16::try_from(c).unwrap_or(u16::MAX),
                    round: ch.last_round.unwrap_or(u32::MAX),
                });
            }
        }
        let frames = guest_frames(vgpu.memory_map())?;
        let ips_64k = self.ips_64k(vgpu);
        let (staged, memo) = self.staged_and_memo();
        let mut cx = Checking {
            vgpu,
            mem,
            frames: &frames,
            ips_64k,
            ggtt_end: [0; 2],
            ppgtts: crate::ppgtt::PpgttList::new(),
            memo,
        };
        let mut seen = [0u32; DEVICE_STATE.len()];
        for (kind, group, payload) in staged {
            let (row, part) = row_of(kind).ok_or(VgpuError::UnsupportedRecord { kind: kind.0 })?;
            if let Some(n) = seen.get_mut(row) {
                *n += 1;
            }
            part.validate(&mut cx, group, payload)?;
        }
        for (part, seen) in DEVICE_STATE.iter().zip(seen) {
            if part.count() == Count::Once && seen != 1 {
                return Err(VgpuError::RecordCount {
                    kind: part.kind().0,
                    seen,
                });
            }
        }
        Ok(cx.ppgtts)
    }

    /// The RESUMING → STOP arc: validate everything, then restore in the known-good order: config
    /// space; registers (copy, replay side effects, copy again); GGTT, rebased to this host's
    /// placement through `host`; engines (queued work, partial ELSP state, CSB); the guest is marked
    /// aware of PVINFO. On error nothing of the vGPU's device state has changed.
    ///
    /// # Errors
    /// The first validation failure (stream content), or a local backend failure.
    pub fn commit(
        self,
        vgpu: &mut Vgpu<'_>,
        mem: &dyn GuestMemory,
        host: &mut dyn HostGtt,
    ) -> Result<DestStats, VgpuError> {
        self.commit_release(vgpu, mem, host).0
    }

    /// [`commit`](Self::commit), handing the staging storage back whatever the outcome.
    pub fn commit_release(
        mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &dyn GuestMemory,
        host: &mut dyn HostGtt,
    ) -> (Result<DestStats, VgpuError>, &'s mut [u8]) {
        let r = self.apply(vgpu, mem, host);
        #[cfg(feature = "log")]
        match &r {
            Ok(s) => ::log::info!("vgpu destination: committed, {} stream bytes", s.bytes),
            Err(e) => ::log::warn!("vgpu destination: commit refused, device state unchanged: {e}"),
        }
        (r, self.staging)
    }

    /// Abandon the session without touching the vGPU and hand the staging storage back.
    pub fn release(self) -> &'s mut [u8] {
        self.staging
    }

    fn apply(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &dyn GuestMemory,
        host: &mut dyn HostGtt,
    ) -> Result<DestStats, VgpuError> {
        let ppgtts = self.check(vgpu, mem)?;
        let mut stats = self.stats();
        let frames = guest_frames(vgpu.memory_map())?;
        let checked_ips_64k = self.ips_64k(vgpu);
        let (staged, memo) = self.staged_and_memo();
        let mut cx = Applying {
            checked_ips_64k,
            vgpu,
            mem,
            host,
            frames: &frames,
            ppgtts: Some(ppgtts),
            ggtt: gtt::RunStats::default(),
            memo,
        };
        // Every check that can fail on stream content has passed; from here on only local backend
        // failures (host GTT programming) can stop the restore. Section by section, in the
        // table's order; each section's records in stream order.
        for part in DEVICE_STATE.iter() {
            let kind = part.kind();
            let mut payloads = staged
                .clone()
                .filter(|(k, _, _)| *k == kind)
                .map(|(_, _, p)| p);
            part.apply(&mut cx, &mut payloads)?;
        }
        stats.ggtt_entries = usize::try_from(cx.ggtt.entries).unwrap_or(usize::MAX);
        let vgpu = cx.vgpu;
        vgpu.regs_mut().set_guest_aware(true);
        vgpu.set_state(MigState::Stop);
        Ok(stats)
    }
}

/// The staging storage a destination session for a vGPU of `config` over guest memory `map` needs
/// ([`DestSession::staging_len`] before the vGPU exists; [`crate::Layout::staging`]).
pub(crate) fn staging_bound(
    config: &crate::instance::VgpuConfig,
    map: &gmem::GuestMemoryMap,
) -> usize {
    maps_bound(map.frames())
        .saturating_add(STREAM_HEADER_LEN * MAX_CHANNELS)
        .saturating_add(crate::ppgtt::memo_len(map.frames()))
        .saturating_add(device_state_bound(config))
}

/// Guest RAM as the span list the GGTT kernels check frames against.
/// The frames of a guest of `frames` frames that channel `c` of `channels` carries (SPEC.md
/// Appendix A.6: stripes of [`STRIPE_FRAMES`] dense indices, dealt round the channels).
fn channel_frames(frames: u64, c: usize, channels: usize) -> u64 {
    if channels <= 1 {
        return frames;
    }
    let (stripe, n) = (STRIPE_FRAMES as u64, channels as u64);
    let stripes = frames / stripe;
    let (whole, extra) = (stripes / n, stripes % n);
    let c = c as u64;
    let mut carried = whole * stripe;
    if c < extra {
        carried += stripe;
    } else if c == extra {
        carried += frames % stripe;
    }
    carried
}

fn guest_frames(map: &GuestMemoryMap) -> Result<gtt::GuestFrames, VgpuError> {
    Ok(gtt::GuestFrames::from_ranges(
        map.regions().iter().map(|r| (r.start(), r.count())),
    )?)
}

#[derive(Clone)]
struct StagedIter<'b> {
    buf: &'b [u8],
}

impl<'b> Iterator for StagedIter<'b> {
    /// Kind, GGTT group (0 for every kind but a `GGTT_RUNS` record after the stop), payload.
    type Item = (RecordKind, u8, &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (hdr, rest) = self.buf.split_first_chunk::<STAGED_HEADER>()?;
        let kind = RecordKind(u16::from_le_bytes([hdr[0], hdr[1]]));
        let len = usize::try_from(u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]])).ok()?;
        let (payload, rest) = rest.split_at_checked(len)?;
        self.buf = rest;
        Some((kind, hdr[2], payload))
    }
}

/// Bytes a DELTA segment is read, XOR-ed and written back in at a time.
const XOR_PIECE: usize = 256;

/// The destination's page map: one bit per guest frame (by dense index, [`gmem::GuestMemoryMap`]),
/// set while the frame's current contents may be non-zero, with summary levels above it (a bit per
/// word of the level below, set while that word is not zero), all in caller storage.
///
/// It makes the work of a ZERO run independent of its `count`: the run visits only the frames whose
/// bit is set, and each set bit was set by a page write (FULL, DUP or DELTA) that the stream paid
/// for in bytes, or at the start (every frame, once: the guest memory the destination starts from
/// need not be zero). A DUP of a frame known to be zero needs no read and no hash.
mod zeromap {
    const WORD: usize = 8;

    /// Words of each level for `frames` bits: level 0 first, up to the level of one word.
    fn levels(frames: usize) -> impl Iterator<Item = usize> {
        let mut words = Some(frames.div_ceil(64).max(1));
        core::iter::from_fn(move || {
            let w = words?;
            words = (w > 1).then(|| w.div_ceil(64));
            Some(w)
        })
    }

    /// Bytes of the map for a guest of `frames` frames.
    pub(super) fn len(frames: u64) -> usize {
        let frames = usize::try_from(frames).unwrap_or(usize::MAX / 2);
        levels(frames).map(|w| w * WORD).sum()
    }

    /// The map over `buf` (at least [`len`] bytes).
    #[derive(Debug, Clone, Copy)]
    pub(super) struct ZeroMap {
        frames: usize,
        /// Byte offset of each level in the buffer (at most 6 levels: a map of more than 2^32
        /// frames, or of 4 GiB, is refused).
        at: [u32; 6],
        depth: usize,
    }

    impl ZeroMap {
        /// A map of no frames (for the channels a session does not have).
        pub(super) const EMPTY: Self = Self {
            frames: 0,
            at: [0; 6],
            depth: 0,
        };

        /// Bytes of this map ([`len`] of its frames).
        pub(super) fn byte_len(&self) -> usize {
            len(self.frames as u64)
        }

        /// Lay the map out for `frames` frames and mark every frame as possibly non-zero.
        pub(super) fn init(frames: u64, buf: &mut [u8]) -> Option<Self> {
            let frames = usize::try_from(frames).ok()?;
            let mut m = Self {
                frames,
                at: [0; 6],
                depth: 0,
            };
            let mut off = 0;
            let mut bits = frames;
            for words in levels(frames) {
                *m.at.get_mut(m.depth)? = u32::try_from(off).ok()?;
                let level = buf.get_mut(off..off + words * WORD)?;
                level.fill(0);
                // `bits` bits set at this level: the frames, or one per non-empty word below.
                let (full, rest) = (bits / 64, bits % 64);
                level.get_mut(..full * WORD)?.fill(0xFF);
                if rest != 0 {
                    let w = (1u64 << rest) - 1;
                    level
                        .get_mut(full * WORD..full * WORD + WORD)?
                        .copy_from_slice(&w.to_le_bytes());
                }
                bits = words;
                off += words * WORD;
                m.depth += 1;
            }
            Some(m)
        }

        fn word(&self, buf: &[u8], level: usize, w: usize) -> u64 {
            let at = self.at.get(level).map_or(0, |&a| a as usize) + w * WORD;
            buf.get(at..at + WORD)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        }

        fn set_word(&self, buf: &mut [u8], level: usize, w: usize, v: u64) {
            let at = self.at.get(level).map_or(0, |&a| a as usize) + w * WORD;
            if let Some(b) = buf.get_mut(at..at + WORD) {
                b.copy_from_slice(&v.to_le_bytes());
            }
        }

        /// Whether frame `i` may be non-zero (frames beyond the map always may).
        pub(super) fn get(&self, buf: &[u8], i: usize) -> bool {
            i >= self.frames || self.word(buf, 0, i / 64) & (1 << (i % 64)) != 0
        }

        /// Frame `i` may now be non-zero.
        pub(super) fn mark(&self, buf: &mut [u8], mut i: usize) {
            if i >= self.frames {
                return;
            }
            for level in 0..self.depth {
                let w = self.word(buf, level, i / 64);
                self.set_word(buf, level, i / 64, w | 1 << (i % 64));
                if w != 0 {
                    return; // the levels above already know this word is not empty
                }
                i /= 64;
            }
        }

        /// Frame `i` is now zero.
        pub(super) fn clear(&self, buf: &mut [u8], mut i: usize) {
            if i >= self.frames {
                return;
            }
            for level in 0..self.depth {
                let w = self.word(buf, level, i / 64) & !(1 << (i % 64));
                self.set_word(buf, level, i / 64, w);
                if w != 0 {
                    return;
                }
                i /= 64;
            }
        }

        /// The first frame at or after `from` and before `end` whose bit is set (frames beyond the
        /// map count as set): `O(depth)` word reads, whatever the distance.
        pub(super) fn next_set(&self, buf: &[u8], from: usize, end: usize) -> Option<usize> {
            let beyond = (self.frames.max(from) < end).then_some(self.frames.max(from));
            self.next_set_in(buf, from, end.min(self.frames)).or(beyond)
        }

        fn next_set_in(&self, buf: &[u8], from: usize, end: usize) -> Option<usize> {
            if from >= end {
                return None;
            }
            // Climb while the rest of the current word is empty, then descend to the first bit.
            let mut level = 0;
            let mut pos = from;
            loop {
                let w = pos / 64;
                let words = self.frames_at(level).div_ceil(64);
                if w < words {
                    let bits = self.word(buf, level, w) & (!0u64 << (pos % 64));
                    if bits != 0 {
                        pos = w * 64 + bits.trailing_zeros() as usize;
                        break;
                    }
                }
                if level + 1 >= self.depth || w + 1 >= words {
                    return None;
                }
                level += 1;
                pos = w + 1;
            }
            while level > 0 {
                level -= 1;
                let bits = self.word(buf, level, pos);
                pos = pos * 64 + bits.trailing_zeros() as usize;
            }
            (pos < end).then_some(pos)
        }

        /// Bits at `level`: the frames at level 0, then one per word of the level below.
        fn frames_at(&self, level: usize) -> usize {
            let mut bits = self.frames;
            for _ in 0..level {
                bits = bits.div_ceil(64);
            }
            bits
        }
    }

    #[cfg(test)]
    #[allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation,
        reason = "tests"
    )]
    mod tests {
        extern crate std;
        use super::*;
        use std::vec;
        use std::vec::Vec;

        #[test]
        fn next_set_finds_every_marked_frame_and_nothing_else() {
            for frames in [1u64, 63, 64, 65, 4095, 4096, 4097, 300_001] {
                let n = frames as usize;
                let mut buf = vec![0u8; len(frames)];
                let m = ZeroMap::init(frames, &mut buf).unwrap();
                // All set at the start.
                assert_eq!(m.next_set(&buf, 0, n), Some(0));
                assert_eq!(m.next_set(&buf, n - 1, n), Some(n - 1));
                for i in 0..n {
                    m.clear(&mut buf, i);
                }
                assert_eq!(m.next_set(&buf, 0, n), None, "{frames}");
                let marks: Vec<usize> = [0, 1, 63, 64, 4095, 4096, 70_000, 299_999, n - 1]
                    .into_iter()
                    .filter(|&i| i < n)
                    .collect();
                for &i in &marks {
                    m.mark(&mut buf, i);
                    assert!(m.get(&buf, i));
                }
                let mut found = Vec::new();
                let mut at = 0;
                while let Some(i) = m.next_set(&buf, at, n) {
                    found.push(i);
                    at = i + 1;
                }
                let mut want = marks.clone();
                want.dedup();
                assert_eq!(found, want, "{frames}");
                // A bounded search stops at `end`.
                if let Some(&last) = want.last() {
                    assert_eq!(m.next_set(&buf, last, last), None);
                }
                for &i in &want {
                    m.clear(&mut buf, i);
                }
                assert_eq!(m.next_set(&buf, 0, n), None);
            }
        }
    }
}
