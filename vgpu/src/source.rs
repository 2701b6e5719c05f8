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

use engines::MAX_SAVE_LEN;
use gmem::{
    Decision, DirtyBitmap, Policy, PolicyConfig, RoundStats, SwitchReason, is_zero_page, words_for,
};
use gtt::{Gfn, SaveCursor};
use migstream::{
    Encoder, PageEncoding, PageRunRepr, PagesPayload, PayloadSource, Progress, RecordFlags,
    RecordKind, RoundRepr, StreamHeaderRepr,
};

use crate::content::{Class, Content, ContentStats, ContentStorage, DELTA_LIMIT};
use crate::error::VgpuError;
use crate::fsm::MigState;
use crate::instance::{CONFIG_SPACE_SIZE, Vgpu};
use crate::traits::{CpuDirtyLog, GuestMemory};

/// Page runs one PAGES record may hold.
pub const MAX_RUNS_PER_RECORD: usize = 32;
/// The smallest scratch buffer a source session accepts: room for config space, the engine state
/// and a useful GGTT chunk.
pub const MIN_SCRATCH: usize = 16 * 1024;

const RECORD_HEADER: usize = migstream::RECORD_HEADER_LEN;
const PAGE_RUN_HEADER: usize = migstream::PAGE_RUN_HEADER_LEN;

/// Options of a source session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct SourceConfig {
    /// The pre-copy policy.
    pub policy: PolicyConfig,
    /// Stream id written into the header (lets a destination tell retries apart).
    pub stream_id: u64,
    /// Pages per PAGES record (1..=1024); larger records amortise headers, smaller ones interleave
    /// better with other channels.
    pub pages_per_record: u32,
    /// How precisely the GPU's writes are known.
    pub precision: GpuDirtyPrecision,
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
    /// ([`Vgpu::mark_gpu_active`]); an idle vGPU adds nothing.
    MappedIfActive,
    /// The exact write set the device model or a command scanner reports
    /// ([`Vgpu::mark_gpu_dirty`]).
    Exact,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            policy: PolicyConfig::default(),
            stream_id: 0,
            pages_per_record: 64,
            precision: GpuDirtyPrecision::Exact,
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
    Header,
    Round,
    AwaitStop,
    FinalRound,
    Config,
    Registers,
    Ggtt(SaveCursor),
    GgttPending,
    PpgttRoots,
    Engines,
    End,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    None,
    Header,
    Pages,
    Scratch { kind: RecordKind, len: usize },
    Round(RoundRepr),
    End,
}

/// Sans-IO source session. Storage is the caller's: `send` is one bit per guest frame
/// ([`gmem::words_for`]`(frames)` words) and `scratch` at least [`MIN_SCRATCH`] bytes.
#[derive(Debug)]
pub struct SourceSession<'s> {
    cfg: SourceConfig,
    enc: Encoder,
    header: StreamHeaderRepr,
    send: DirtyBitmap<'s>,
    scratch: &'s mut [u8],
    phase: Phase,
    current: Current,
    runs: heapless::Vec<PageRunRepr, MAX_RUNS_PER_RECORD>,
    cursor: usize,
    policy: Policy,
    round: u32,
    round_pages: u64,
    round_zero: u64,
    round_start_bytes: u64,
    round_start_us: Option<u64>,
    events: heapless::Deque<SourceEvent, 8>,
    total_pages: u64,
    total_zero: u64,
    final_after_header: bool,
    content: Option<Content<'s>>,
}

impl<'s> SourceSession<'s> {
    /// Open a session on a running vGPU (the RUNNING → PRE_COPY arc): dirty tracking restarts now and
    /// round 0 will carry every guest frame.
    pub fn open(
        vgpu: &mut Vgpu<'_>,
        cpu: &mut dyn CpuDirtyLog,
        cfg: SourceConfig,
        send: &'s mut [u64],
        scratch: &'s mut [u8],
    ) -> Result<Self, VgpuError> {
        if vgpu.state() != MigState::Running {
            return Err(VgpuError::WrongPhase);
        }
        if scratch.len() < MIN_SCRATCH || !(1..=1024).contains(&cfg.pages_per_record) {
            return Err(VgpuError::StorageSize);
        }
        let frames =
            usize::try_from(vgpu.memory_map().frames()).map_err(|_| VgpuError::StorageSize)?;
        if send.len() != words_for(frames) {
            return Err(VgpuError::StorageSize);
        }
        let mut send = DirtyBitmap::new(send, frames)?;
        // Everything goes in round 0; what was dirtied before now is covered by that.
        vgpu.gpu_dirty_mut().clear();
        cpu.harvest(&mut |_| {});
        send.set_range(0, frames)?;
        let header = StreamHeaderRepr {
            minor: migstream::FORMAT_MINOR,
            flags: 0,
            identity: vgpu.config().identity(),
            stream_id: cfg.stream_id,
        };
        vgpu.set_state(MigState::PreCopy);
        Ok(Self {
            policy: Policy::new(cfg.policy),
            cfg,
            enc: Encoder::new(),
            header,
            send,
            scratch,
            phase: Phase::Header,
            current: Current::None,
            runs: heapless::Vec::new(),
            cursor: 0,
            round: 0,
            round_pages: 0,
            round_zero: 0,
            round_start_bytes: 0,
            round_start_us: None,
            events: heapless::Deque::new(),
            total_pages: 0,
            total_zero: 0,
            final_after_header: false,
            content: None,
        })
    }

    /// Attach content tracking (see [`crate::content`]): unchanged pages are skipped, duplicates
    /// and small changes travel as DUP and DELTA pages. Call before the first `poll_output`.
    pub fn with_content(
        mut self,
        vgpu: &Vgpu<'_>,
        storage: ContentStorage<'s>,
    ) -> Result<Self, VgpuError> {
        if self.enc.bytes_written() != 0 {
            return Err(VgpuError::WrongPhase);
        }
        let frames =
            usize::try_from(vgpu.memory_map().frames()).map_err(|_| VgpuError::StorageSize)?;
        self.content = Some(Content::new(storage, frames)?);
        Ok(self)
    }

    /// What content tracking saved so far (zero when it is not attached).
    pub fn content_stats(&self) -> ContentStats {
        self.content.as_ref().map(|c| c.stats).unwrap_or_default()
    }

    /// Write as much of the stream as fits into `out`; returns the bytes written. Returns 0 while
    /// waiting for [`stop_and_copy`](Self::stop_and_copy) and after the END record.
    pub fn poll_output(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &dyn GuestMemory,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
        out: &mut [u8],
    ) -> Result<usize, VgpuError> {
        if self.round_start_us.is_none() {
            self.round_start_us = Some(now_us);
        }
        let mut pos = 0;
        while pos < out.len() {
            if self.current == Current::None {
                self.next_record(vgpu, mem, out.len() - pos)?;
                if self.current == Current::None {
                    break;
                }
            }
            let buf = out.get_mut(pos..).ok_or(VgpuError::WrongPhase)?;
            let progress = self.write_current(vgpu, mem, buf)?;
            pos += progress.written();
            if !progress.is_done() {
                break;
            }
            let round_ended = matches!(self.current, Current::Round(_));
            self.record_done(vgpu, cpu, now_us)?;
            if round_ended {
                // Return at each round boundary: the driver sees the round's events (and a switch
                // decision) before more bytes go out, and the event queue never overflows.
                break;
            }
        }
        Ok(pos)
    }

    /// The next event, if any. Call after every `poll_output`.
    pub fn poll_event(&mut self) -> Option<SourceEvent> {
        self.events.pop_front()
    }

    /// Whether the END record has been written.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done && self.current == Current::None
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
        if !matches!(self.phase, Phase::Header | Phase::Round | Phase::AwaitStop) {
            return Err(VgpuError::WrongPhase);
        }
        if !vgpu.engines().is_quiesced() || vgpu.engines().in_flight() != 0 {
            return Err(VgpuError::NotQuiesced);
        }
        self.harvest(vgpu, cpu)?;
        match self.phase {
            // Before the header went out: the header, then straight to the final round.
            Phase::Header => self.final_after_header = true,
            // Mid-round: the round is abandoned; its unsent pages are still in `send`.
            Phase::Round => {
                self.round = self.round.saturating_add(1);
                self.phase = Phase::FinalRound;
                self.begin_round();
            }
            _ => {
                self.phase = Phase::FinalRound;
                self.begin_round();
            }
        }
        vgpu.set_state(MigState::StopCopy);
        Ok(())
    }

    /// The destination accepted the stream (the STOP_COPY → STOP arc): the source vGPU stops for good.
    pub fn complete(self, vgpu: &mut Vgpu<'_>) -> Result<(), VgpuError> {
        if !self.is_finished() {
            return Err(VgpuError::WrongPhase);
        }
        vgpu.set_state(MigState::Stop);
        Ok(())
    }

    /// Abandon the migration (any saving state → RUNNING): the vGPU resumes exactly where it was.
    pub fn cancel(self, vgpu: &mut Vgpu<'_>) {
        vgpu.resume();
        vgpu.set_state(MigState::Running);
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.enc.bytes_written()
    }

    /// VFIO's pre-copy information (`VFIO_MIG_GET_PRECOPY_INFO`): bytes of the initial copy still
    /// to send, and bytes dirtied since that the next rounds will carry. Page counts are converted
    /// at 4 KiB a page (zero pages cost much less on the wire, so these are upper bounds).
    pub fn precopy_info(&self, vgpu: &Vgpu<'_>) -> PrecopyInfo {
        let pending = self.send.count() as u64 * 4096;
        let fresh = vgpu.gpu_dirty_count() as u64 * 4096;
        if self.round == 0 && matches!(self.phase, Phase::Header | Phase::Round) {
            PrecopyInfo {
                initial_bytes: pending,
                dirty_bytes: fresh,
            }
        } else {
            PrecopyInfo {
                initial_bytes: 0,
                dirty_bytes: pending + fresh,
            }
        }
    }

    /// VFIO's `stop_copy_length` estimate: what stop-and-copy would send if it started now (the
    /// dirty pages known so far plus the device state).
    pub fn stop_copy_estimate(&self, vgpu: &Vgpu<'_>) -> u64 {
        (self.send.count() + vgpu.gpu_dirty_count()) as u64 * 4096
            + Self::device_state_estimate(vgpu)
    }

    /// Pages dirty and not yet sent (VFIO's `dirty_bytes` / 4096 during pre-copy).
    pub fn pending_pages(&self) -> u64 {
        self.send.count() as u64
    }

    /// Pages sent so far, and how many of them were zero pages.
    pub fn pages_sent(&self) -> (u64, u64) {
        (self.total_pages, self.total_zero)
    }

    fn harvest(&mut self, vgpu: &mut Vgpu<'_>, cpu: &mut dyn CpuDirtyLog) -> Result<(), VgpuError> {
        // The exact write set (and GGTT remaps) always count; coarser precisions add to it.
        self.send.absorb(vgpu.gpu_dirty_mut())?;
        let active = vgpu.take_gpu_active();
        let all_mapped = match self.cfg.precision {
            GpuDirtyPrecision::AllMapped => true,
            GpuDirtyPrecision::MappedIfActive => active,
            GpuDirtyPrecision::Exact => false,
        };
        if all_mapped {
            let map = vgpu.memory_map();
            for (_, e) in vgpu.ggtt().iter_present() {
                if let Some(i) = map.index_of(e.frame()) {
                    let _ = self.send.set(i);
                }
            }
        }
        let map = vgpu.memory_map().clone();
        let send = &mut self.send;
        cpu.harvest(&mut |gfn: Gfn| {
            if let Some(i) = map.index_of(gfn) {
                let _ = send.set(i);
            }
        });
        Ok(())
    }

    fn begin_round(&mut self) {
        self.round_pages = 0;
        self.round_zero = 0;
        self.round_start_bytes = self.enc.bytes_written();
        self.cursor = 0;
    }

    fn next_record(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &dyn GuestMemory,
        room: usize,
    ) -> Result<(), VgpuError> {
        loop {
            match self.phase {
                Phase::Header => {
                    self.current = Current::Header;
                    return Ok(());
                }
                Phase::Round | Phase::FinalRound => {
                    if !self.fill_runs(vgpu, mem, room)? {
                        let bytes = self.enc.bytes_written() - self.round_start_bytes;
                        self.current = Current::Round(RoundRepr {
                            round: self.round,
                            pages: self.round_pages,
                            bytes,
                        });
                    }
                    return Ok(());
                }
                Phase::AwaitStop | Phase::Done => return Ok(()),
                Phase::Config => {
                    let dst = self
                        .scratch
                        .get_mut(..CONFIG_SPACE_SIZE)
                        .ok_or(VgpuError::StorageSize)?;
                    dst.copy_from_slice(vgpu.config_space());
                    self.current = Current::Scratch {
                        kind: RecordKind::CONFIG_SPACE,
                        len: CONFIG_SPACE_SIZE,
                    };
                    return Ok(());
                }
                Phase::Registers => {
                    let len = vgpu.regs().save_sparse(self.scratch)?;
                    self.current = Current::Scratch {
                        kind: RecordKind::REGISTERS,
                        len,
                    };
                    return Ok(());
                }
                Phase::Ggtt(cursor) => {
                    let p = vgpu.ggtt().save_runs(cursor, self.scratch)?;
                    self.phase = match p.next {
                        Some(c) => Phase::Ggtt(c),
                        None => Phase::GgttPending,
                    };
                    if p.written > 0 {
                        self.current = Current::Scratch {
                            kind: RecordKind::GGTT_RUNS,
                            len: p.written,
                        };
                        return Ok(());
                    }
                }
                Phase::PpgttRoots => {
                    let len = crate::ppgtt::save(vgpu.ppgtts(), self.scratch)?;
                    self.current = Current::Scratch {
                        kind: RecordKind::PPGTT_ROOTS,
                        len,
                    };
                    return Ok(());
                }
                Phase::GgttPending => {
                    let len = vgpu.ggtt().save_pending(self.scratch)?;
                    self.current = Current::Scratch {
                        kind: RecordKind::GGTT_PENDING,
                        len,
                    };
                    return Ok(());
                }
                Phase::Engines => {
                    let buf = self
                        .scratch
                        .get_mut(..MAX_SAVE_LEN)
                        .ok_or(VgpuError::StorageSize)?;
                    let len = vgpu.engines().save(buf)?;
                    self.current = Current::Scratch {
                        kind: RecordKind::ENGINE_STATE,
                        len,
                    };
                    return Ok(());
                }
                Phase::End => {
                    self.current = Current::End;
                    return Ok(());
                }
            }
        }
    }

    /// Collect the next record's page runs from the send set; false when the round is exhausted.
    ///
    /// A PAGES record of FULL and ZERO runs is only started when all of it fits in `room` (the rest
    /// of the caller's output buffer), so its bytes and its CRC come from one read of guest memory
    /// even though the guest keeps running between calls. When not even one page fits, the record
    /// is snapshotted into the scratch buffer and streamed from there across calls (one extra
    /// copy, small buffers only). Records of DUP and DELTA runs (content tracking) are built in the
    /// scratch buffer; a record holds one kind or the other.
    fn fill_runs(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &dyn GuestMemory,
        room: usize,
    ) -> Result<bool, VgpuError> {
        self.runs.clear();
        let mut run_at: heapless::Vec<usize, MAX_RUNS_PER_RECORD> = heapless::Vec::new();
        let snapshot = room < RECORD_HEADER + PAGE_RUN_HEADER + 4096;
        let zero_copy_budget = if snapshot {
            self.scratch.len()
        } else {
            room - RECORD_HEADER
        };
        let built_budget = self.scratch.len().min(migstream::MAX_PAYLOAD as usize);
        let map = vgpu.memory_map();
        let mut built: Option<bool> = None; // Some(true): DUP/DELTA record in scratch
        let mut pages = 0u32;
        let mut size = 0usize;
        let mut page = [0u8; 4096];
        let mut delta = [0u8; DELTA_LIMIT];
        while pages < self.cfg.pages_per_record {
            let Some(bit) = self.send.take_next(self.cursor) else {
                break;
            };
            let Some(gfn) = map.frame_at(bit) else {
                continue;
            };
            mem.read(gfn, 0, &mut page)
                .map_err(|_| VgpuError::GuestMemory)?;
            let zero = is_zero_page(&page);
            let (class, hash) = match &self.content {
                Some(c) => c.classify(bit, &page, zero, &mut delta),
                None if zero => (Class::Zero, 0),
                None => (Class::Full, 0),
            };
            if class == Class::Unchanged {
                if let Some(c) = self.content.as_mut() {
                    c.count(class);
                }
                self.cursor = bit + 1;
                continue;
            }
            let (enc, data): (PageEncoding, usize) = match class {
                Class::Zero => (PageEncoding::ZERO, 0),
                Class::Full | Class::Unchanged => (PageEncoding::FULL, 4096),
                Class::Dup { .. } => (PageEncoding::DUP, migstream::DUP_ENTRY_LEN),
                Class::Delta { len } => (PageEncoding::DELTA, migstream::DELTA_LEN_FIELD + len),
            };
            let is_built = matches!(class, Class::Dup { .. } | Class::Delta { .. });
            let extends = self.runs.last().is_some_and(|r| {
                r.encoding == enc
                    && r.first_frame.checked_add(u64::from(r.count)) == Some(gfn.get())
            });
            let cost = data + if extends { 0 } else { PAGE_RUN_HEADER };
            let budget = if is_built {
                built_budget
            } else {
                zero_copy_budget
            };
            if built.is_some_and(|b| b != is_built)
                || size + cost > budget
                || (!extends && self.runs.is_full())
            {
                // This record is full (or of the other kind): the page goes into the next one.
                let _ = self.send.set(bit);
                self.cursor = bit;
                break;
            }
            built = Some(is_built);
            if is_built {
                let mut at = size;
                if !extends {
                    let _ = run_at.push(at);
                    at += PAGE_RUN_HEADER;
                }
                let dst = self
                    .scratch
                    .get_mut(at..at + data)
                    .ok_or(VgpuError::StorageSize)?;
                match class {
                    Class::Dup { from } => {
                        let from = map.frame_at(from).ok_or(VgpuError::StorageSize)?;
                        let (a, b) = dst.split_at_mut(8);
                        a.copy_from_slice(&from.get().to_le_bytes());
                        b.copy_from_slice(&hash.to_le_bytes());
                    }
                    Class::Delta { len } => {
                        let (a, b) = dst.split_at_mut(migstream::DELTA_LEN_FIELD);
                        a.copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
                        b.copy_from_slice(delta.get(..len).ok_or(VgpuError::StorageSize)?);
                    }
                    _ => {}
                }
            }
            if extends {
                if let Some(r) = self.runs.last_mut() {
                    r.count += 1;
                }
            } else {
                let _ = self.runs.push(PageRunRepr {
                    first_frame: gfn.get(),
                    count: 1,
                    encoding: enc,
                });
            }
            if let Some(c) = self.content.as_mut() {
                c.commit(bit, hash, &page, zero);
                c.count(class);
            }
            size += cost;
            self.cursor = bit + 1;
            pages += 1;
            self.round_pages += 1;
            self.total_pages += 1;
            if enc == PageEncoding::ZERO {
                self.round_zero += 1;
                self.total_zero += 1;
            }
        }
        if self.runs.is_empty() {
            return Ok(false);
        }
        if built == Some(true) {
            // Fill in the run headers now that their counts are final.
            for (r, at) in self.runs.iter().zip(run_at.iter()) {
                let mut h = [0u8; PAGE_RUN_HEADER];
                r.emit(&mut h);
                self.scratch
                    .get_mut(*at..*at + PAGE_RUN_HEADER)
                    .ok_or(VgpuError::StorageSize)?
                    .copy_from_slice(&h);
            }
            self.current = Current::Scratch {
                kind: RecordKind::PAGES,
                len: size,
            };
        } else if snapshot {
            let payload =
                PagesPayload::new(&self.runs, |frame: u64, offset: usize, buf: &mut [u8]| {
                    if mem.read(Gfn::new(frame), offset, buf).is_err() {
                        buf.fill(0);
                    }
                })?;
            let len = payload.payload_len();
            let dst = self.scratch.get_mut(..len).ok_or(VgpuError::StorageSize)?;
            payload.fill(0, dst);
            self.current = Current::Scratch {
                kind: RecordKind::PAGES,
                len,
            };
        } else {
            self.current = Current::Pages;
        }
        Ok(true)
    }

    fn write_current(
        &mut self,
        vgpu: &Vgpu<'_>,
        mem: &dyn GuestMemory,
        out: &mut [u8],
    ) -> Result<Progress, VgpuError> {
        let p = match self.current {
            Current::None => return Err(VgpuError::WrongPhase),
            Current::Header => self.enc.write_header(&self.header, out)?,
            Current::Pages => {
                let source = |frame: u64, offset: usize, buf: &mut [u8]| {
                    // Frames were checked against the map when the run was built; a backend failure
                    // here leaves zeros, and the page stays covered by dirty tracking.
                    if mem.read(Gfn::new(frame), offset, buf).is_err() {
                        buf.fill(0);
                    }
                };
                let payload = PagesPayload::new(&self.runs, source)?;
                self.enc.write_record(
                    RecordKind::PAGES,
                    RecordFlags::MANDATORY,
                    1,
                    &payload,
                    out,
                )?
            }
            Current::Scratch { kind, len } => {
                let payload = self.scratch.get(..len).ok_or(VgpuError::StorageSize)?;
                self.enc
                    .write_record(kind, RecordFlags::MANDATORY, 1, payload, out)?
            }
            Current::Round(r) => self.enc.write_round(&r, out)?,
            Current::End => self.enc.write_end(out)?,
        };
        let _ = vgpu;
        Ok(p)
    }

    /// Upper bound of the device state sent in stop-and-copy, for the policy's downtime prediction.
    fn device_state_estimate(vgpu: &Vgpu<'_>) -> u64 {
        let ggtt = vgpu.ggtt().iter_present().count() as u64 * 8;
        (CONFIG_SPACE_SIZE + vgpu.regs().sparse_len() + vgpu.engines().save_len()) as u64
            + ggtt
            + 256
    }

    fn record_done(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
    ) -> Result<(), VgpuError> {
        match core::mem::replace(&mut self.current, Current::None) {
            Current::Header => {
                if self.final_after_header {
                    self.phase = Phase::FinalRound;
                } else {
                    self.phase = Phase::Round;
                }
                self.begin_round();
            }
            Current::Round(r) => {
                if self.phase == Phase::FinalRound {
                    self.push_event(SourceEvent::RoundEnd {
                        round: r.round,
                        pages: r.pages,
                        zero_pages: self.round_zero,
                        bytes: r.bytes,
                        dirty_left: 0,
                    });
                    self.phase = Phase::Config;
                    return Ok(());
                }
                self.harvest(vgpu, cpu)?;
                let dirty_left = self.send.count() as u64;
                self.push_event(SourceEvent::RoundEnd {
                    round: r.round,
                    pages: r.pages,
                    zero_pages: self.round_zero,
                    bytes: r.bytes,
                    dirty_left,
                });
                let started = self.round_start_us.unwrap_or(now_us);
                let stats = RoundStats {
                    round: r.round,
                    dirty_pages_left: dirty_left,
                    bytes_sent: r.bytes,
                    // A round too short to time still took some time.
                    elapsed_us: now_us.saturating_sub(started).max(1),
                    device_state_bytes: Self::device_state_estimate(vgpu),
                };
                match self.policy.on_round(stats) {
                    Decision::Continue => {
                        self.round = self.round.saturating_add(1);
                        self.begin_round();
                        self.round_start_us = Some(now_us);
                        self.phase = Phase::Round;
                    }
                    Decision::StopAndCopy(reason) => {
                        self.push_event(SourceEvent::Switch {
                            reason,
                            predicted_downtime_us: self.policy.expected_downtime_us(),
                        });
                        self.round = self.round.saturating_add(1);
                        self.phase = Phase::AwaitStop;
                    }
                }
            }
            Current::End => {
                self.phase = Phase::Done;
                self.push_event(SourceEvent::Finished {
                    bytes: self.enc.bytes_written(),
                    records: self.enc.records_written(),
                });
            }
            Current::Scratch { kind, .. } => {
                // GGTT_RUNS: `next_record` already advanced the cursor (or moved on to the engines).
                if kind == RecordKind::CONFIG_SPACE {
                    self.phase = Phase::Registers;
                } else if kind == RecordKind::REGISTERS {
                    self.phase = Phase::Ggtt(SaveCursor::START);
                } else if kind == RecordKind::GGTT_PENDING {
                    self.phase = Phase::PpgttRoots;
                } else if kind == RecordKind::PPGTT_ROOTS {
                    self.phase = Phase::Engines;
                } else if kind == RecordKind::ENGINE_STATE {
                    self.phase = Phase::End;
                }
            }
            Current::Pages | Current::None => {}
        }
        Ok(())
    }

    fn push_event(&mut self, e: SourceEvent) {
        if self.events.is_full() {
            // The driver did not drain events; keep the newest (the oldest are round summaries).
            let _ = self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }
}
