//! The VFIO migration v2 device interface on a vGPU: a requested state is reached one arc at a
//! time ([`crate::fsm::next_arc`]), and each arc does what the uAPI says it does.
//!
//! [`VfioMigration`] is what a VMM-facing device model (a vfio-user server, a mediated-device
//! driver, a hypervisor's own device layer) calls when user space writes `device_state`, reads or
//! writes the migration data, or asks for `PRECOPY_INFO`. It owns the storage the sessions need
//! (lent once, at construction) and opens and closes the sessions as the arcs require:
//!
//! | arc | what happens |
//! |---|---|
//! | RUNNING → PRE_COPY (RUNNING_P2P → PRE_COPY_P2P) | a [`SourceSession`] opens; [`VfioMigration::read`] yields pre-copy data |
//! | PRE_COPY(_P2P) → STOP_COPY | dispatch stops; with nothing in flight, the rest (last dirty pages, device state, END) becomes readable |
//! | STOP → STOP_COPY | a session opens and stops at once: everything is read after the stop |
//! | STOP_COPY → STOP | the saving session ends (completed when fully read, abandoned otherwise) |
//! | PRE_COPY → RUNNING (PRE_COPY_P2P → RUNNING_P2P) | the migration is cancelled; the vGPU runs on exactly where it was |
//! | STOP → RESUMING | a [`DestSession`] opens; [`VfioMigration::write`] takes the stream |
//! | RESUMING → STOP | everything staged is validated and committed; invalid or incomplete data fails the arc and puts the device in ERROR |
//! | RUNNING(_P2P) → STOP | dispatch stops; the arc fails with [`VgpuError::NotQuiesced`] (and may be retried) while work is in flight |
//! | STOP → RUNNING(_P2P) | dispatch resumes |
//! | RUNNING ↔ RUNNING_P2P, PRE_COPY ↔ PRE_COPY_P2P | the device initiates no peer-to-peer DMA, so only the state changes |
//!
//! ERROR is reached only by a failed RESUMING → STOP and left only by [`VfioMigration::reset`].
//! A failed arc other than that one leaves the device in the state before the arc.

use migstream::Limits;

use crate::dest::{DestSession, DestStats};
use crate::error::VgpuError;
use crate::fsm::{Caps, FsmError, MigState, next_arc};
use crate::instance::Vgpu;
use crate::source::{PrecopyInfo, SourceConfig, SourceEvent, SourceSession};
use crate::traits::{CpuDirtyLog, GuestMemory, HostGtt, VgpuAccess};

/// Storage the migration driver lends to its sessions: the source's send bitmap
/// ([`gmem::words_for`]`(guest frames)` words) and scratch (at least
/// [`crate::source::MIN_SCRATCH`] per channel), and the destination's staging buffer.
#[derive(Debug)]
pub struct MigrationStorage<'s> {
    /// The source session's send bitmap.
    pub send: &'s mut [u64],
    /// The source session's scratch buffer.
    pub scratch: &'s mut [u8],
    /// The destination session's staging buffer.
    pub staging: &'s mut [u8],
}

/// The host side the arcs reach: the three traits an embedding hypervisor implements
/// ([`GuestMemory`], [`CpuDirtyLog`], [`HostGtt`]), lent for one call. [`VfioMigration`] runs
/// every arc, so it takes all three.
///
/// The sessions take only what each call uses, not this bundle. The source's page path
/// ([`SourceSession::poll_output`]) reads guest memory shared (`&dyn GuestMemory`: vCPUs and the
/// GPU keep writing it) and never the host GTT, which a threaded VMM keeps with the vGPU under
/// its device lock (see the crate docs): a bundle of three `&mut` would make each page wait for
/// that lock and borrow guest memory exclusively. [`SourceSession::stop_and_copy`] uses only the
/// CPU log, [`DestSession::feed`] only guest memory, and [`DestSession::commit`] guest memory and
/// the host GTT (a destination has no CPU log to lend).
pub struct Host<'p> {
    /// Guest memory.
    pub mem: &'p mut dyn GuestMemory,
    /// The hypervisor's log of guest CPU writes.
    pub cpu: &'p mut dyn CpuDirtyLog,
    /// Host GTT programming.
    pub gtt: &'p mut dyn HostGtt,
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "no allocator to box the sessions into; the driver lives as long as the vGPU"
)]
enum Slot<'s> {
    Idle(MigrationStorage<'s>),
    Saving {
        session: SourceSession<'s>,
        staging: &'s mut [u8],
    },
    Resuming {
        session: DestSession<'s>,
        send: &'s mut [u64],
        scratch: &'s mut [u8],
    },
    /// Only while an arc moves storage between the other variants.
    Moving,
}

/// The VFIO migration interface of one vGPU. See the module docs.
#[derive(Debug)]
pub struct VfioMigration<'s> {
    caps: Caps,
    source: SourceConfig,
    limits: Limits,
    channels: usize,
    slot: Slot<'s>,
    last_restore: Option<DestStats>,
}

impl<'s> VfioMigration<'s> {
    /// A driver for a device with the capability set `caps` (which must include STOP_COPY), opening
    /// source sessions with `source` and destination sessions with `limits` (and as many channels as
    /// `source.channels`).
    ///
    /// # Errors
    /// [`FsmError::NoStopCopy`] if `caps` lacks STOP_COPY; [`FsmError::Unsupported`] (of
    /// RESUMING) for a channel count outside `1..=MAX_CHANNELS`.
    pub fn new(
        caps: Caps,
        storage: MigrationStorage<'s>,
        source: SourceConfig,
        limits: Limits,
    ) -> Result<Self, FsmError> {
        if !MigState::Stop.supported_by(caps) {
            return Err(FsmError::NoStopCopy);
        }
        if !(1..=crate::channel::MAX_CHANNELS).contains(&usize::from(source.channels)) {
            return Err(FsmError::Unsupported(MigState::Resuming));
        }
        Ok(Self {
            caps,
            source,
            limits,
            channels: usize::from(source.channels.max(1)),
            slot: Slot::Idle(storage),
            last_restore: None,
        })
    }

    /// The capability set.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Statistics of the last committed restore.
    pub fn last_restore(&self) -> Option<DestStats> {
        self.last_restore
    }

    /// Move the device to `requested`, one arc at a time; returns the state reached (`requested`).
    ///
    /// # Errors
    /// [`VgpuError::Fsm`] for a state the device cannot reach from here (ERROR is never reachable by
    /// request; no state is reachable from ERROR); otherwise the failure of the arc that failed,
    /// with the device left in the state before that arc (arcs already performed stay performed, as
    /// in the kernel; after a failed RESUMING → STOP: ERROR).
    pub fn set_state(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        requested: MigState,
        p: &mut Host<'_>,
    ) -> Result<MigState, VgpuError> {
        // At most four arcs separate any two states; the bound only guards against a bug.
        for _ in 0..8 {
            let cur = vgpu.state();
            // Checked even when no arc is needed: ERROR is never a valid request.
            let next = next_arc(cur, requested, self.caps)?;
            if cur == requested {
                return Ok(cur);
            }
            let r = self.arc(vgpu, cur, next, p);
            #[cfg(feature = "log")]
            match &r {
                Ok(()) => ::log::debug!("vgpu vfio: {cur:?} -> {next:?}"),
                Err(e) => ::log::warn!("vgpu vfio: {cur:?} -> {next:?} failed: {e}"),
            }
            r?;
        }
        Err(VgpuError::Fsm(FsmError::NoPath {
            from: vgpu.state(),
            to: requested,
        }))
    }

    fn arc(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        cur: MigState,
        next: MigState,
        p: &mut Host<'_>,
    ) -> Result<(), VgpuError> {
        use MigState::{PreCopy, PreCopyP2p, Resuming, Running, RunningP2p, Stop, StopCopy};
        match (cur, next) {
            (Running, RunningP2p)
            | (RunningP2p, Running)
            | (PreCopy, PreCopyP2p)
            | (PreCopyP2p, PreCopy) => vgpu.set_state(next),
            (Running | RunningP2p, Stop) => {
                if !vgpu.quiesce().is_idle() {
                    return Err(VgpuError::NotQuiesced);
                }
                vgpu.set_state(Stop);
            }
            (Stop, Running | RunningP2p) => {
                vgpu.resume();
                vgpu.set_state(next);
            }
            (Running | RunningP2p, PreCopy | PreCopyP2p) | (Stop, StopCopy) => {
                if next == StopCopy
                    && (!vgpu.engines().is_quiesced() || vgpu.engines().in_flight() != 0)
                {
                    return Err(VgpuError::NotQuiesced);
                }
                let Slot::Idle(st) = &self.slot else {
                    return Err(VgpuError::WrongPhase);
                };
                let state = vgpu.state();
                // Sessions open on a running or stopped vGPU; P2P quiescence changes nothing here.
                if state == RunningP2p {
                    vgpu.set_state(Running);
                }
                // Checked before the storage moves into the session, so a refusal keeps it here.
                if let Err(e) =
                    SourceSession::check_open(vgpu, &self.source, st.send.len(), st.scratch.len())
                {
                    vgpu.set_state(state);
                    return Err(e);
                }
                let Slot::Idle(st) = core::mem::replace(&mut self.slot, Slot::Moving) else {
                    return Err(VgpuError::WrongPhase);
                };
                let MigrationStorage {
                    send,
                    scratch,
                    staging,
                } = st;
                let mut session = SourceSession::open(vgpu, p.cpu, self.source, send, scratch)?;
                if next == StopCopy {
                    session.stop_and_copy(vgpu, p.cpu)?;
                } else {
                    vgpu.set_state(next);
                }
                self.slot = Slot::Saving { session, staging };
            }
            (PreCopy | PreCopyP2p, StopCopy) => {
                let Slot::Saving { session, .. } = &mut self.slot else {
                    return Err(VgpuError::WrongPhase);
                };
                if !vgpu.quiesce().is_idle() {
                    return Err(VgpuError::NotQuiesced);
                }
                session.stop_and_copy(vgpu, p.cpu)?;
            }
            (StopCopy, Stop) | (PreCopy, Running) | (PreCopyP2p, RunningP2p) => {
                let Slot::Saving { session, staging } =
                    core::mem::replace(&mut self.slot, Slot::Moving)
                else {
                    return Err(VgpuError::WrongPhase);
                };
                let (send, scratch) = session.release();
                self.slot = Slot::Idle(MigrationStorage {
                    send,
                    scratch,
                    staging,
                });
                if next == Stop {
                    // Completed or abandoned, the source is stopped for good.
                    vgpu.set_state(Stop);
                } else {
                    // Cancelled: saving only copied, so the guest continues exactly where it was.
                    vgpu.resume();
                    vgpu.set_state(next);
                }
            }
            (Stop, Resuming) => {
                // `open_channels` refuses only work in flight (the channel count was checked by
                // `new`): checked first, so a refusal keeps the storage here.
                if vgpu.engines().in_flight() != 0 {
                    return Err(VgpuError::NotQuiesced);
                }
                let Slot::Idle(st) = core::mem::replace(&mut self.slot, Slot::Moving) else {
                    return Err(VgpuError::WrongPhase);
                };
                let MigrationStorage {
                    send,
                    scratch,
                    staging,
                } = st;
                let session =
                    DestSession::open_channels(vgpu, staging, self.limits, self.channels)?;
                self.slot = Slot::Resuming {
                    session,
                    send,
                    scratch,
                };
            }
            (Resuming, Stop) => {
                let Slot::Resuming {
                    session,
                    send,
                    scratch,
                } = core::mem::replace(&mut self.slot, Slot::Moving)
                else {
                    return Err(VgpuError::WrongPhase);
                };
                let (result, staging) = session.commit_release(vgpu, p.mem, p.gtt);
                self.slot = Slot::Idle(MigrationStorage {
                    send,
                    scratch,
                    staging,
                });
                match result {
                    Ok(stats) => self.last_restore = Some(stats),
                    Err(e) => {
                        vgpu.set_state(MigState::Error);
                        return Err(e);
                    }
                }
            }
            _ => {
                return Err(VgpuError::Fsm(FsmError::NoPath {
                    from: cur,
                    to: next,
                }));
            }
        }
        Ok(())
    }

    /// Read migration data of the main channel (PRE_COPY, PRE_COPY_P2P, STOP_COPY): returns the
    /// bytes written into `buf`; 0 when nothing is available now (waiting for the next state or
    /// for other channels) or, once [`is_saved`](Self::is_saved), at the end of the stream.
    /// `dev` is the vGPU (`&Vgpu`) or the embedder's [`VgpuAccess`] over its device lock: reading
    /// pre-copy data does not hold the device (see [`SourceSession::poll_output`]).
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] outside the saving states; local failures of the session.
    pub fn read(
        &mut self,
        dev: &dyn VgpuAccess,
        p: &mut Host<'_>,
        now_us: u64,
        buf: &mut [u8],
    ) -> Result<usize, VgpuError> {
        self.read_channel(0, dev, p, now_us, buf)
    }

    /// [`read`](Self::read) for one channel of a multi-channel migration.
    ///
    /// # Errors
    /// As `read`.
    pub fn read_channel(
        &mut self,
        channel: usize,
        dev: &dyn VgpuAccess,
        p: &mut Host<'_>,
        now_us: u64,
        buf: &mut [u8],
    ) -> Result<usize, VgpuError> {
        match &mut self.slot {
            Slot::Saving { session, .. } => {
                session.poll_output_channel(channel, dev, p.mem, p.cpu, now_us, buf)
            }
            _ => Err(VgpuError::WrongPhase),
        }
    }

    /// The next event of the saving session (round ends, the policy's switch advice, the end).
    pub fn poll_event(&mut self) -> Option<SourceEvent> {
        match &mut self.slot {
            Slot::Saving { session, .. } => session.poll_event(),
            _ => None,
        }
    }

    /// Memory mode [`MemoryMode::Report`](crate::source::MemoryMode::Report): the saving
    /// session's report of the frames the GPU wrote ([`SourceSession::dirty_report`], VFIO
    /// `DMA_LOGGING_REPORT` style: read-and-clear, one bit per `page_size` page of `range`).
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] outside the saving states; as `SourceSession::dirty_report`.
    pub fn dirty_report(
        &mut self,
        dev: &dyn VgpuAccess,
        range: gmem::DmaRange,
        page_size: u64,
        out: &mut [u64],
    ) -> Result<u64, VgpuError> {
        match &mut self.slot {
            Slot::Saving { session, .. } => session.dirty_report(dev, range, page_size, out),
            _ => Err(VgpuError::WrongPhase),
        }
    }

    /// Whether the saving session has written everything (every channel's END record).
    pub fn is_saved(&self) -> bool {
        matches!(&self.slot, Slot::Saving { session, .. } if session.is_finished())
    }

    /// Write migration data of the main channel (RESUMING); returns the bytes consumed.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] outside RESUMING; the first problem found in the stream (the
    /// device state is untouched; the RESUMING → STOP arc will fail).
    pub fn write(
        &mut self,
        vgpu: &Vgpu<'_>,
        p: &mut Host<'_>,
        data: &[u8],
    ) -> Result<usize, VgpuError> {
        self.write_channel(0, vgpu, p, data)
    }

    /// [`write`](Self::write) for one channel of a multi-channel migration.
    ///
    /// # Errors
    /// As `write`.
    pub fn write_channel(
        &mut self,
        channel: usize,
        vgpu: &Vgpu<'_>,
        p: &mut Host<'_>,
        data: &[u8],
    ) -> Result<usize, VgpuError> {
        match &mut self.slot {
            Slot::Resuming { session, .. } => session.feed_channel(channel, vgpu, p.mem, data),
            _ => Err(VgpuError::WrongPhase),
        }
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO`: valid in PRE_COPY and PRE_COPY_P2P only.
    ///
    /// # Errors
    /// [`VgpuError::WrongPhase`] in any other state.
    pub fn precopy_info(&self, vgpu: &Vgpu<'_>) -> Result<PrecopyInfo, VgpuError> {
        match &self.slot {
            Slot::Saving { session, .. }
                if matches!(vgpu.state(), MigState::PreCopy | MigState::PreCopyP2p) =>
            {
                Ok(session.precopy_info(vgpu))
            }
            _ => Err(VgpuError::WrongPhase),
        }
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: the stop-copy size estimate, in any state.
    pub fn stop_copy_size(&self, vgpu: &Vgpu<'_>) -> u64 {
        match &self.slot {
            Slot::Saving { session, .. } => session.stop_copy_estimate(vgpu),
            _ => vgpu.ggtt().iter_present().count() as u64 * 4096,
        }
    }

    /// `VFIO_DEVICE_RESET`: any session is abandoned, the vGPU is reset and RUNNING (the only way
    /// out of ERROR). The storage stays with the driver.
    pub fn reset(&mut self, vgpu: &mut Vgpu<'_>) {
        let storage = match core::mem::replace(&mut self.slot, Slot::Moving) {
            Slot::Idle(st) => Some(st),
            Slot::Saving { session, staging } => {
                let (send, scratch) = session.release();
                Some(MigrationStorage {
                    send,
                    scratch,
                    staging,
                })
            }
            Slot::Resuming {
                session,
                send,
                scratch,
            } => Some(MigrationStorage {
                send,
                scratch,
                staging: session.release(),
            }),
            Slot::Moving => None,
        };
        if let Some(st) = storage {
            self.slot = Slot::Idle(st);
        }
        vgpu.reset();
    }
}
