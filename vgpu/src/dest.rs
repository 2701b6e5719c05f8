//! The destination side: a sans-IO session that reads a stream into a stopped vGPU.
//!
//! Pages go to guest memory as they arrive (the destination guest is not running, and a rejected
//! stream fails the whole migration). Device state is never applied while the stream is read: each
//! device-state record is staged in caller storage, and [`DestSession::commit`] validates every
//! staged record against this vGPU (identity, guest memory map, register save list and read-only
//! bits, engine layout) before it changes anything. A stream rejected at any point, by the decoder
//! or by validation, leaves the vGPU's device state exactly as it was.
//!
//! A multi-channel migration ([`crate::channel`]) is read by one session opened with
//! [`DestSession::open_channels`]: feed each channel's bytes with [`DestSession::feed_channel`], in
//! any interleaving and segmentation. Each channel must start with its CHANNEL record, carry only
//! the pages of its stripes (and, on channels other than 0, no device state), and share the main
//! channel's stream id and device; the session is finished when every channel has ended.

use gtt::Gfn;
use migstream::{Decoder, Event, FeedError, Limits, RecordKind, StreamHeaderRepr};

use crate::channel::{ChannelRepr, MAX_CHANNELS, channel_of};
use crate::error::VgpuError;
use crate::fsm::MigState;
use crate::instance::{CONFIG_SPACE_SIZE, Vgpu};
use crate::traits::{GuestMemory, HostGtt};

/// Bytes of bookkeeping per staged record (kind, reserved, length).
pub const STAGED_HEADER: usize = 8;

/// The record-format version of every device-state payload this destination restores
/// (SPEC.md Appendix A); a device-state record of another version is
/// [`VgpuError::UnsupportedRecord`].
pub const DEVICE_STATE_VERSION: u8 = 1;

/// The record-format version a writer puts on a device-state record of `kind` (SPEC.md
/// Appendix A): [`mmio::SPARSE_VERSION`] (2: registers outside the table travel too) for
/// `REGISTERS`, [`DEVICE_STATE_VERSION`] for the others.
#[must_use]
pub const fn record_version(kind: RecordKind) -> u8 {
    if kind.0 == RecordKind::REGISTERS.0 {
        mmio::SPARSE_VERSION
    } else {
        DEVICE_STATE_VERSION
    }
}

/// Whether this destination restores a device-state record of `kind` in format `version`:
/// the current version, and for `REGISTERS` also version 1 (table registers only: a subset of
/// version 2 with the same meaning).
const fn accepts_version(kind: RecordKind, version: u8) -> bool {
    version == record_version(kind) || (kind.0 == RecordKind::REGISTERS.0 && version == 1)
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

/// Sans-IO destination session over caller staging storage (device state only: tens of KiB plus
/// 8 bytes per mapped GGTT entry in the worst case).
#[derive(Debug)]
pub struct DestSession<'s> {
    chans: heapless::Vec<ChanIn, MAX_CHANNELS>,
    limits: Limits,
    /// The stream id the embedder expects (a fresh one per migration defeats replay).
    expect_id: Option<u64>,
    staging: &'s mut [u8],
    staged: usize,
    /// The record being staged: (kind, start offset of its payload in staging, length).
    open: Option<(RecordKind, usize, usize)>,
    failed: Option<VgpuError>,
    stats: DestStats,
}

/// One incoming channel.
#[derive(Debug)]
struct ChanIn {
    /// `None` only while the decoder is lent out during a feed.
    dec: Option<Decoder>,
    header: Option<StreamHeaderRepr>,
    /// The CHANNEL record (multi-channel only): its payload as it arrives, then whether it checked.
    intro: [u8; ChannelRepr::LEN],
    intro_len: Option<u32>,
    intro_ok: bool,
    ended: bool,
}

fn is_device_state(kind: RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::CONFIG_SPACE
            | RecordKind::REGISTERS
            | RecordKind::GGTT_RUNS
            | RecordKind::GGTT_PENDING
            | RecordKind::PPGTT_ROOTS
            | RecordKind::ENGINE_STATE
    )
}

/// The longest payload a valid device-state record of `kind` can have on `vgpu` (SPEC.md Appendix
/// A), and the error a longer one is refused with: a length beyond what the format allows is damage
/// or hostility, to be blamed on the stream, not a reason to ask the caller for more staging.
fn payload_bound(vgpu: &Vgpu<'_>, kind: RecordKind) -> Option<(usize, VgpuError)> {
    // A.4: count, reserved, then 12 bytes per half. A.4b: count, reserved, 40 bytes per PPGTT.
    const PENDING_MAX: usize = 8 + 12 * gtt::MAX_PENDING_HALVES;
    const ROOTS_MAX: usize = 8 + 40 * crate::ppgtt::MAX_PPGTTS;
    match kind {
        RecordKind::CONFIG_SPACE => Some((CONFIG_SPACE_SIZE, VgpuError::BadConfigSpace)),
        RecordKind::REGISTERS => {
            let max = vgpu.regs().platform().max_sparse_len();
            Some((max, VgpuError::Mmio(mmio::MmioError::Malformed { at: max })))
        }
        RecordKind::GGTT_PENDING => Some((PENDING_MAX, VgpuError::Gtt(gtt::GttError::Truncated))),
        // A.3: runs lie inside the guest view and do not overlap, and a run takes at most 24
        // bytes per entry it covers (16-byte header, then 8 bytes per RAW entry or one 8-byte
        // LINEAR template), so a longer payload must reach outside the view.
        RecordKind::GGTT_RUNS => {
            let entries = usize::try_from(vgpu.config().partition.entries()).ok()?;
            let max = entries.checked_mul(gtt::runs::RUN_HEADER_LEN + 8)?;
            Some((max, VgpuError::Gtt(gtt::GttError::OutOfRange)))
        }
        RecordKind::PPGTT_ROOTS => Some((ROOTS_MAX, VgpuError::BadPpgtt)),
        RecordKind::ENGINE_STATE => Some((
            engines::MAX_SAVE_LEN,
            VgpuError::Engine(engines::EngineError::TrailingBytes {
                at: engines::MAX_SAVE_LEN,
            }),
        )),
        _ => None,
    }
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
        let _ = vgpu.quiesce();
        vgpu.set_state(MigState::Resuming);
        #[cfg(feature = "log")]
        ::log::info!("vgpu destination: session open, {channels} channel(s)");
        let mut chans = heapless::Vec::new();
        for _ in 0..channels {
            let _ = chans.push(ChanIn {
                dec: Some(Decoder::new(limits)),
                header: None,
                intro: [0; ChannelRepr::LEN],
                intro_len: None,
                intro_ok: channels == 1,
                ended: false,
            });
        }
        Ok(Self {
            chans,
            limits,
            expect_id: None,
            staging,
            staged: 0,
            open: None,
            failed: None,
            stats: DestStats::default(),
        })
    }

    /// Require every channel's stream to be authenticated with `key` (feature `auth`; SPEC.md
    /// §10): a stream without the MAC, or with a tag that does not verify, is refused before
    /// anything is committed. Call before the first `feed`; on error nothing changed.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] after bytes were fed.
    #[cfg(feature = "auth")]
    pub fn attach_key(&mut self, key: &migstream::AuthKey) -> Result<(), VgpuError> {
        if self.stats.bytes != 0 || self.failed.is_some() {
            return Err(VgpuError::WrongPhase);
        }
        for c in self.chans.iter_mut() {
            c.dec = Some(Decoder::with_key(self.limits, key));
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
        self.expect_id = Some(id);
        self
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
        if let Some(e) = self.failed {
            return Err(e);
        }
        if channel >= self.chans.len() {
            return Err(VgpuError::WrongPhase);
        }
        let r = self.feed_inner(channel, vgpu, mem, input);
        if let Err(e) = r {
            #[cfg(feature = "log")]
            ::log::warn!("vgpu destination: stream rejected on channel {channel}: {e}");
            self.failed = Some(e);
        }
        r
    }

    fn feed_inner(
        &mut self,
        c: usize,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        input: &[u8],
    ) -> Result<usize, VgpuError> {
        let ch = self.chans.get_mut(c).ok_or(VgpuError::WrongPhase)?;
        let mut dec = ch.dec.take().ok_or(VgpuError::WrongPhase)?;
        // `feed_all` checksums each chunk of page bytes as it hands it out (then in cache for the
        // write to guest memory).
        let r = dec.feed_all(input, |ev| self.on_event(c, vgpu, mem, ev));
        if let Some(ch) = self.chans.get_mut(c) {
            ch.dec = Some(dec);
        }
        let n = match r {
            Ok(n) => n,
            Err(FeedError::Decode(e)) => return Err(e.into()),
            Err(FeedError::Sink(e)) => return Err(e),
        };
        self.stats.bytes += n as u64;
        Ok(n)
    }

    /// Checks that page `gfn` may arrive on channel `c`: inside guest memory, and in one of the
    /// channel's stripes.
    fn check_page(&self, c: usize, mem: &dyn GuestMemory, gfn: u64) -> Result<(), VgpuError> {
        let Some(index) = mem.map().index_of(Gfn::new(gfn)) else {
            return Err(VgpuError::FrameOutsideMemory { gfn });
        };
        if channel_of(index, self.chans.len()) != c {
            return Err(VgpuError::WrongChannel {
                gfn,
                channel: u16::try_from(c).unwrap_or(u16::MAX),
            });
        }
        Ok(())
    }

    fn on_event(
        &mut self,
        c: usize,
        vgpu: &Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        ev: Event<'_>,
    ) -> Result<(), VgpuError> {
        let channels = self.chans.len();
        let bad_channel = VgpuError::BadChannel {
            channel: u16::try_from(c).unwrap_or(u16::MAX),
        };
        let ch = self.chans.get(c).ok_or(VgpuError::WrongPhase)?;
        let intro_pending = !ch.intro_ok;
        let in_intro = ch.intro_len.is_some();
        match ev {
            Event::Header(h) => {
                let local = vgpu.config().identity();
                h.identity.check_compatible(&local)?;
                if h.identity.aperture_base != local.aperture_base
                    || h.identity.hidden_base != local.hidden_base
                {
                    return Err(VgpuError::GuestViewMismatch);
                }
                if self.expect_id.is_some_and(|id| id != h.stream_id) {
                    return Err(VgpuError::UnexpectedStreamId { id: h.stream_id });
                }
                // Every channel belongs to the same migration.
                if self.chans.iter().filter_map(|o| o.header).any(|o| o != h) {
                    return Err(bad_channel);
                }
                if let Some(ch) = self.chans.get_mut(c) {
                    ch.header = Some(h);
                }
            }
            Event::RecordBegin { kind, len, .. } if kind == RecordKind::CHANNEL => {
                if !intro_pending || in_intro || usize::try_from(len).ok() != Some(ChannelRepr::LEN)
                {
                    return Err(bad_channel);
                }
                if let Some(ch) = self.chans.get_mut(c) {
                    ch.intro_len = Some(0);
                }
            }
            Event::Payload { kind, offset, data } if kind == RecordKind::CHANNEL => {
                let ch = self.chans.get_mut(c).ok_or(VgpuError::WrongPhase)?;
                let off = usize::try_from(offset).map_err(|_| VgpuError::WrongPhase)?;
                ch.intro
                    .get_mut(off..off + data.len())
                    .ok_or(bad_channel)?
                    .copy_from_slice(data);
            }
            Event::RecordEnd { kind, .. } if kind == RecordKind::CHANNEL => {
                let ch = self.chans.get_mut(c).ok_or(VgpuError::WrongPhase)?;
                let want = ChannelRepr {
                    channel: u16::try_from(c).map_err(|_| VgpuError::WrongPhase)?,
                    channels: u16::try_from(channels).map_err(|_| VgpuError::WrongPhase)?,
                };
                if ChannelRepr::parse(&ch.intro) != Some(want) {
                    return Err(bad_channel);
                }
                ch.intro_ok = true;
                ch.intro_len = None;
            }
            // Nothing but the CHANNEL record may come first on a channel of a multi-channel stream.
            Event::RecordBegin { .. } | Event::Round(_) | Event::End(_) if intro_pending => {
                return Err(bad_channel);
            }
            Event::RecordBegin { kind, .. } if c != 0 && kind != RecordKind::PAGES => {
                // Device state travels on the main channel only.
                return Err(bad_channel);
            }
            Event::RecordBegin {
                kind, version, len, ..
            } => {
                if kind == RecordKind::PAGES {
                    return Ok(());
                }
                // SPEC.md §7 and Appendix A: a reader rejects versions it does not know
                // rather than misread a newer layout.
                if !is_device_state(kind) || !accepts_version(kind, version) {
                    return Err(VgpuError::UnsupportedRecord { kind: kind.0 });
                }
                let len = usize::try_from(len)
                    .map_err(|_| VgpuError::StagingFull { needed: usize::MAX })?;
                if let Some((max, refusal)) = payload_bound(vgpu, kind)
                    && len > max
                {
                    return Err(refusal);
                }
                let start = self.staged + STAGED_HEADER;
                let end = start
                    .checked_add(len)
                    .ok_or(VgpuError::StagingFull { needed: usize::MAX })?;
                if end > self.staging.len() {
                    return Err(VgpuError::StagingFull { needed: end });
                }
                self.open = Some((kind, start, len));
            }
            Event::Payload { kind, offset, data } => {
                let (open_kind, start, len) = self.open.ok_or(VgpuError::WrongPhase)?;
                let off = usize::try_from(offset).map_err(|_| VgpuError::WrongPhase)?;
                if open_kind != kind || off + data.len() > len {
                    return Err(VgpuError::WrongPhase);
                }
                let dst = self
                    .staging
                    .get_mut(start + off..start + off + data.len())
                    .ok_or(VgpuError::WrongPhase)?;
                dst.copy_from_slice(data);
            }
            // Only the main channel stages device state: another channel's record ending must not
            // close the record the main channel is staging.
            Event::RecordEnd { kind, .. } if c == 0 => {
                if let Some((open_kind, start, len)) = self.open.take() {
                    if open_kind != kind {
                        return Err(VgpuError::WrongPhase);
                    }
                    let hdr: &mut [u8; STAGED_HEADER] = self
                        .staging
                        .get_mut(start - STAGED_HEADER..start)
                        .and_then(|h| h.try_into().ok())
                        .ok_or(VgpuError::WrongPhase)?;
                    let [k0, k1] = kind.0.to_le_bytes();
                    let [l0, l1, l2, l3] = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
                    *hdr = [k0, k1, 0, 0, l0, l1, l2, l3];
                    self.staged = start + len;
                }
            }
            Event::PageData {
                frame,
                offset,
                data,
            } => {
                let gfn = Gfn::new(frame);
                self.check_page(c, mem, frame)?;
                mem.write(gfn, usize::from(offset), data)
                    .map_err(|_| VgpuError::GuestMemory)?;
                if usize::from(offset) + data.len() == 4096 {
                    self.stats.full_pages += 1;
                }
            }
            Event::PageCopy {
                frame,
                from_frame,
                hash,
            } => {
                let (gfn, from) = (Gfn::new(frame), Gfn::new(from_frame));
                for f in [frame, from_frame] {
                    self.check_page(c, mem, f)?;
                }
                let mut page = [0u8; 4096];
                mem.read(from, 0, &mut page)
                    .map_err(|_| VgpuError::GuestMemory)?;
                if gmem::page_hash(&page) != hash {
                    return Err(VgpuError::DuplicateMismatch {
                        gfn: frame,
                        from: from_frame,
                    });
                }
                mem.write(gfn, 0, &page)
                    .map_err(|_| VgpuError::GuestMemory)?;
                self.stats.dup_pages += 1;
            }
            Event::PageXor {
                frame,
                offset,
                data,
            } => {
                let gfn = Gfn::new(frame);
                self.check_page(c, mem, frame)?;
                let off = usize::from(offset);
                let mut buf = [0u8; 4096];
                let cur = buf.get_mut(..data.len()).ok_or(VgpuError::WrongPhase)?;
                mem.read(gfn, off, cur)
                    .map_err(|_| VgpuError::GuestMemory)?;
                for (c, d) in cur.iter_mut().zip(data) {
                    *c ^= d;
                }
                mem.write(gfn, off, cur)
                    .map_err(|_| VgpuError::GuestMemory)?;
                self.stats.delta_bytes += data.len() as u64;
            }
            Event::ZeroPages { first_frame, count } => {
                const ZERO: [u8; 4096] = [0; 4096];
                for i in 0..u64::from(count) {
                    let frame = first_frame
                        .checked_add(i)
                        .ok_or(VgpuError::FrameOutsideMemory { gfn: u64::MAX })?;
                    let gfn = Gfn::new(frame);
                    self.check_page(c, mem, frame)?;
                    mem.write(gfn, 0, &ZERO)
                        .map_err(|_| VgpuError::GuestMemory)?;
                }
                self.stats.zero_pages += u64::from(count);
            }
            Event::Skipped { .. } => {}
            Event::Round(_) if c == 0 => self.stats.rounds += 1,
            Event::End(_) => {
                if let Some(ch) = self.chans.get_mut(c) {
                    ch.ended = true;
                }
            }
            _ => {}
        }
        Ok(())
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
        DestStats {
            staged_bytes: self.staged,
            ..self.stats
        }
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

    fn staged_records(&self) -> StagedIter<'_> {
        StagedIter {
            buf: self.staging.get(..self.staged).unwrap_or(&[]),
        }
    }

    /// Check every staged record against `vgpu` without changing anything.
    pub fn validate(&self, vgpu: &Vgpu<'_>, mem: &dyn GuestMemory) -> Result<(), VgpuError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        for ch in self.chans.iter() {
            if !ch.ended {
                return Err(VgpuError::Truncated);
            }
            ch.dec.as_ref().ok_or(VgpuError::WrongPhase)?.finish()?;
        }
        let (mut cfg, mut regs, mut eng, mut pending, mut roots) = (0u32, 0u32, 0u32, 0u32, 0u32);
        let cfg_local = vgpu.config();
        let partition = cfg_local.partition;
        let frames = guest_frames(mem)?;
        for (kind, payload) in self.staged_records() {
            match kind {
                RecordKind::CONFIG_SPACE => {
                    cfg += 1;
                    if payload.len() != CONFIG_SPACE_SIZE
                        || payload.get(0..4) != vgpu.config_space().get(0..4)
                    {
                        return Err(VgpuError::BadConfigSpace);
                    }
                }
                RecordKind::REGISTERS => {
                    regs += 1;
                    mmio::validate_sparse(vgpu.regs().platform(), payload)?;
                }
                RecordKind::GGTT_RUNS => {
                    gtt::validate_runs_in(payload, &partition, &frames, cfg_local.generation)?;
                }
                RecordKind::PPGTT_ROOTS => {
                    roots += 1;
                    crate::ppgtt::validate(payload, cfg_local.generation, self.ips_64k(vgpu), mem)?;
                }
                RecordKind::GGTT_PENDING => {
                    pending += 1;
                    gtt::validate_pending(payload, &partition)?;
                }
                RecordKind::ENGINE_STATE => {
                    eng += 1;
                    vgpu.engines().validate(payload)?;
                }
                other => return Err(VgpuError::UnsupportedRecord { kind: other.0 }),
            }
        }
        for (kind, seen) in [
            (RecordKind::CONFIG_SPACE, cfg),
            (RecordKind::REGISTERS, regs),
            (RecordKind::ENGINE_STATE, eng),
            (RecordKind::GGTT_PENDING, pending),
            (RecordKind::PPGTT_ROOTS, roots),
        ] {
            if seen != 1 {
                return Err(VgpuError::RecordCount { kind: kind.0, seen });
            }
        }
        Ok(())
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
        self,
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
        &self,
        vgpu: &mut Vgpu<'_>,
        mem: &dyn GuestMemory,
        host: &mut dyn HostGtt,
    ) -> Result<DestStats, VgpuError> {
        self.validate(vgpu, mem)?;
        let mut stats = self.stats();
        // Every check that can fail on stream content has passed; from here on only local backend
        // failures (host GTT programming) can stop the restore.
        for (kind, payload) in self.staged_records() {
            if kind == RecordKind::CONFIG_SPACE {
                vgpu.cfg_mut().copy_from_slice(payload);
            }
        }
        vgpu.reset_registers();
        for (kind, payload) in self.staged_records() {
            if kind == RecordKind::REGISTERS {
                vgpu.apply_registers(payload, host)?;
            }
        }
        let frames = guest_frames(mem)?;
        let generation = vgpu.config().generation;
        // The first record replaces the table (clearing it in the same pass); the others
        // restore on top, in stream order.
        let mut cleared = false;
        for (kind, payload) in self.staged_records() {
            if kind == RecordKind::GGTT_RUNS {
                // Validated above; the kernels check again as they copy (all or nothing per
                // record), at no extra cost.
                let r = if cleared {
                    gtt::restore_runs(payload, vgpu.ggtt_mut(), &frames, generation)?
                } else {
                    cleared = true;
                    gtt::replace_runs(payload, vgpu.ggtt_mut(), &frames, generation)?
                };
                stats.ggtt_entries = stats
                    .ggtt_entries
                    .saturating_add(usize::try_from(r.entries).unwrap_or(usize::MAX));
            }
        }
        if !cleared {
            vgpu.ggtt_mut().clear();
        }
        vgpu.reshadow_all(host)?;
        // PPGTTs: the roots are recorded; their tables came with guest memory and were walked.
        for (kind, payload) in self.staged_records() {
            if kind == RecordKind::PPGTT_ROOTS {
                let list = crate::ppgtt::validate(
                    payload,
                    vgpu.config().generation,
                    vgpu.derived().ips_64k,
                    mem,
                )?;
                vgpu.set_ppgtts(list);
            }
        }
        // Halves the guest wrote before the stop wait for their partners here as they did there.
        for (kind, payload) in self.staged_records() {
            if kind == RecordKind::GGTT_PENDING {
                vgpu.ggtt_mut().restore_pending(payload)?;
            }
        }
        for (kind, payload) in self.staged_records() {
            if kind == RecordKind::ENGINE_STATE {
                vgpu.engines_mut().apply(payload)?;
            }
        }
        vgpu.mirror_engines();
        vgpu.regs_mut().set_guest_aware(true);
        vgpu.set_state(MigState::Stop);
        Ok(stats)
    }
}

/// Guest RAM as the span list the GGTT kernels check frames against.
fn guest_frames(mem: &dyn GuestMemory) -> Result<gtt::GuestFrames, VgpuError> {
    Ok(gtt::GuestFrames::from_ranges(
        mem.map().regions().iter().map(|r| (r.start(), r.count())),
    )?)
}

struct StagedIter<'b> {
    buf: &'b [u8],
}

impl<'b> Iterator for StagedIter<'b> {
    type Item = (RecordKind, &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (hdr, rest) = self.buf.split_first_chunk::<STAGED_HEADER>()?;
        let kind = RecordKind(u16::from_le_bytes([hdr[0], hdr[1]]));
        let len = usize::try_from(u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]])).ok()?;
        let (payload, rest) = rest.split_at_checked(len)?;
        self.buf = rest;
        Some((kind, payload))
    }
}
