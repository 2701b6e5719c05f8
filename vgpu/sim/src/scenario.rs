//! End-to-end scenarios on the reference platform: build a source and a destination, run a
//! workload, live-migrate it over a modeled link, and compare against a never-migrated run.
//! Tests, `cargo xtask migrate` and `cargo xtask bench` share this code.

use alloc::vec;
use alloc::vec::Vec;

use gmem::{FrameRange, GuestMemoryMap, SwitchReason};
use gtt::{Gfn, GgttEntry, GmAddr, GmRange, HostPlacement, Partition};

use super::driver::{GuestDriver, Profile};
use super::machine::{Machine, MachineStorage};
use vgpu::dest::DestSession;
use vgpu::error::VgpuError;
use vgpu::instance::{Derived, VgpuConfig};
use vgpu::source::{SourceConfig, SourceEvent, SourceSession};

/// Everything that defines a run: the vGPU, guest memory, both hosts' placements, the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The vGPU (guest view of graphics memory included).
    pub config: VgpuConfig,
    /// Guest memory layout.
    pub map: GuestMemoryMap,
    /// Where the source host placed the vGPU's graphics memory.
    pub src_placement: HostPlacement,
    /// Where the destination host places it (may differ, may be split).
    pub dst_placement: HostPlacement,
    /// Host graphics memory size (both hosts).
    pub host_gm: u64,
    /// The workload.
    pub profile: Profile,
    /// Frames the workload renders.
    pub frames: u64,
    /// Seed of the guest driver.
    pub seed: u64,
}

/// Build a guest-view partition, panicking never: errors come back.
fn partition(aperture: u64, hidden: u64) -> Result<Partition, VgpuError> {
    let a = GmRange::new(GmAddr::new(0x0100_0000), aperture)?;
    let h = GmRange::new(GmAddr::new(0x1000_0000), hidden)?;
    Ok(Partition::new(a, h)?)
}

impl Scenario {
    /// A vGPU with `aperture` + `hidden` bytes of graphics memory. Guest memory backs it with as many
    /// frames plus 25% spares, split in two regions around a hole, the second above 4 GiB. The
    /// destination places the hidden slice in three pieces at other host addresses. The workload
    /// is [`Profile::fitted`] to the hidden slice: a profile whose working set is larger than
    /// `hidden` runs scaled down (`profile` in the result says how), rather than a guest that
    /// cannot boot.
    pub fn new(
        aperture: u64,
        hidden: u64,
        profile: Profile,
        frames: u64,
        seed: u64,
    ) -> Result<Self, VgpuError> {
        let config = VgpuConfig::skylake(partition(aperture, hidden)?);
        let pages = config.partition.entries();
        let total = pages + pages / 4;
        let low = total / 2;
        let map = GuestMemoryMap::new(&[
            FrameRange::new(Gfn::new(0x100), low)?,
            FrameRange::new(Gfn::new(0x10_0000), total - low)?,
        ])?;
        let p = &config.partition;
        let src_placement =
            HostPlacement::contiguous(p, GmAddr::new(0x0200_0000), GmAddr::new(0x4000_0000))?;
        let third = (hidden / 3) & !0xFFF;
        let dst_placement = HostPlacement::split(
            p,
            &[GmRange::new(GmAddr::new(0x0600_0000), aperture)?],
            &[
                GmRange::new(GmAddr::new(0x8000_0000), third)?,
                GmRange::new(GmAddr::new(0x6000_0000), third)?,
                GmRange::new(GmAddr::new(0xA000_0000), hidden - 2 * third)?,
            ],
        )?;
        Ok(Self {
            config,
            map,
            src_placement,
            dst_placement,
            host_gm: 0xC000_0000,
            profile: profile.fitted(hidden / 4096),
            frames,
            seed,
        })
    }

    /// The small vGPU the tests use: 512 KiB aperture + 2 MiB hidden, the workload scaled down 128
    /// times to fit and unpaced (frames as fast as the GPU goes).
    pub fn small(profile: Profile, frames: u64, seed: u64) -> Result<Self, VgpuError> {
        Self::new(
            512 * 1024,
            2 << 20,
            profile.scaled_down(128).unpaced(),
            frames,
            seed,
        )
    }

    /// Storage for one machine of this scenario.
    pub fn storage(&self) -> MachineStorage {
        MachineStorage::new(&self.config, &self.map)
    }

    /// The source (or destination) machine over `storage`.
    pub fn machine<'a>(
        &self,
        storage: &'a mut MachineStorage,
        dest: bool,
    ) -> Result<Machine<'a>, VgpuError> {
        let (placement, offset) = if dest {
            (self.dst_placement.clone(), 0x77_0000)
        } else {
            (self.src_placement.clone(), 0x55_0000)
        };
        Machine::new(
            self.config.clone(),
            placement,
            self.map.clone(),
            storage,
            self.host_gm,
            offset,
            GuestDriver::new(self.profile, self.frames, self.seed),
        )
    }

    /// Run the workload to its end without migrating: the oracle's reference.
    pub fn run_unmigrated(&self) -> Result<Snapshot, VgpuError> {
        let mut st = self.storage();
        let mut m = self.machine(&mut st, false)?;
        m.boot()?;
        if !m.run_to_end(u64::MAX >> 1)? {
            return Err(VgpuError::WrongPhase);
        }
        Ok(Snapshot::of(&m))
    }
}

/// Device state of a vGPU, without guest memory: what a rejected stream must leave unchanged
/// (and, with guest memory, what a [`Snapshot`] holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// All 2 MiB of virtual registers.
    pub vregs: Vec<u32>,
    /// Guest GGTT entries.
    pub ggtt: Vec<u64>,
    /// Engines.
    pub engines: engines::Engines,
    /// State derived from side-effect registers.
    pub derived: Derived,
    /// Config space.
    pub config_space: Vec<u8>,
    /// PPGTT roots.
    pub ppgtts: vgpu::ppgtt::PpgttList,
}

impl DeviceState {
    /// Capture a machine's vGPU.
    pub fn of(m: &Machine<'_>) -> Self {
        Self::capture(&m.vgpu)
    }

    /// Capture a vGPU (for embedders whose vGPU is not part of a [`Machine`], such as a VMM).
    pub fn capture(vgpu: &vgpu::instance::Vgpu<'_>) -> Self {
        let dwords = u32::try_from(mmio::MMIO_DWORDS).unwrap_or(0);
        Self {
            vregs: (0..dwords).map(|i| vgpu.regs().peek(i * 4)).collect(),
            ggtt: vgpu.ggtt().entries().to_vec(),
            engines: vgpu.engines().clone(),
            derived: *vgpu.derived(),
            config_space: vgpu.config_space().to_vec(),
            ppgtts: vgpu.ppgtts().clone(),
        }
    }

    /// Which parts differ from `other` (empty when equal).
    pub fn diff(&self, other: &Self) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        for (differs, what) in [
            (self.vregs != other.vregs, "registers "),
            (self.ggtt != other.ggtt, "GGTT "),
            (self.engines != other.engines, "engines "),
            (self.derived != other.derived, "derived "),
            (self.config_space != other.config_space, "config-space "),
            (self.ppgtts != other.ppgtts, "PPGTT-roots "),
        ] {
            if differs {
                s.push_str(what);
            }
        }
        s
    }
}

/// Everything the oracle compares: guest memory, every register, the guest GGTT, engine state,
/// state derived from side-effect registers, config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Guest memory, dense.
    pub mem: Vec<u8>,
    /// All 2 MiB of virtual registers.
    pub vregs: Vec<u32>,
    /// Guest GGTT entries of the vGPU's slices.
    pub ggtt: Vec<u64>,
    /// Engines.
    pub engines: engines::Engines,
    /// Derived state.
    pub derived: Derived,
    /// Config space.
    pub config_space: Vec<u8>,
    /// The PPGTTs the guest announced.
    pub ppgtts: vgpu::ppgtt::PpgttList,
}

impl Snapshot {
    /// Capture a machine.
    pub fn of(m: &Machine<'_>) -> Self {
        let DeviceState {
            vregs,
            ggtt,
            engines,
            derived,
            config_space,
            ppgtts,
        } = DeviceState::of(m);
        Self {
            mem: m.mem.bytes().to_vec(),
            vregs,
            ggtt,
            engines,
            derived,
            config_space,
            ppgtts,
        }
    }

    /// A human-readable description of the first differences, or `None` when equal.
    pub fn diff(&self, other: &Snapshot) -> Option<alloc::string::String> {
        use core::fmt::Write;
        if self == other {
            return None;
        }
        let mut s = alloc::string::String::new();
        let pages: Vec<usize> = (0..self.mem.len() / 4096)
            .filter(|&i| {
                self.mem.get(i * 4096..(i + 1) * 4096) != other.mem.get(i * 4096..(i + 1) * 4096)
            })
            .collect();
        if !pages.is_empty() {
            let _ = write!(
                s,
                "{} guest pages differ (first dense indices {:?}); ",
                pages.len(),
                pages.get(..pages.len().min(8))
            );
        }
        let regs: Vec<usize> = (0..self.vregs.len())
            .filter(|&i| self.vregs.get(i) != other.vregs.get(i))
            .map(|i| i * 4)
            .collect();
        if !regs.is_empty() {
            let _ = write!(
                s,
                "{} registers differ (first offsets {:x?}); ",
                regs.len(),
                regs.get(..regs.len().min(8))
            );
        }
        if self.ggtt != other.ggtt {
            let _ = write!(s, "GGTT differs; ");
        }
        if self.engines != other.engines {
            let _ = write!(s, "engine state differs; ");
        }
        if self.derived != other.derived {
            let _ = write!(s, "derived state differs; ");
        }
        if self.ppgtts != other.ppgtts {
            let _ = write!(s, "PPGTT roots differ; ");
        }
        if self.config_space != other.config_space {
            let _ = write!(s, "config space differs; ");
        }
        Some(s)
    }
}

/// Check that every present guest GGTT entry of `m` is shadowed at its host index with the host's
/// frame for it. Returns the first inconsistent guest index.
pub fn host_consistent(m: &Machine<'_>) -> Result<(), u32> {
    let part = m.vgpu.config().partition;
    for (idx, e) in m.vgpu.ggtt().iter_present() {
        let ok = part
            .g2h_index(m.vgpu.placement(), idx)
            .and_then(|h| m.host.ggtt.get(usize::try_from(h.get()).ok()?))
            .is_some_and(|raw| {
                GgttEntry::from_bits(*raw).frame().get() == e.frame().get() + m.host.frame_offset
            });
        if !ok {
            return Err(idx.get());
        }
    }
    Ok(())
}

/// How a migration is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Source steps (100 µs of modeled time each) before the migration starts.
    pub start_step: u64,
    /// Output buffer size per poll (small values exercise record splitting).
    pub chunk: usize,
    /// Feed the destination in pieces of this size.
    pub feed: usize,
    /// Modeled link rate in bytes per second (0: the guest runs one step per poll).
    pub link_bytes_per_s: u64,
    /// Source configuration (policy, stream id, record size).
    pub source: SourceConfig,
    /// Fault injection: cut the connection after this many stream bytes (`None`: never).
    pub cut_at: Option<u64>,
    /// Hold the guest still during pre-copy, so the state saved is exactly the state at the start
    /// (for tests that migrate at a precise instant, such as between two ELSP dword writes).
    pub freeze_guest: bool,
    /// Content tracking on the source (unchanged pages skipped, DUP and DELTA pages), with a delta
    /// cache of this many pages (0: off).
    pub content_cache_pages: usize,
    /// Pre-copy the GGTT (sent before round 0's pages; only changed entries after the stop).
    pub ggtt_precopy: bool,
    /// Authenticate the streams with this key on both ends (needs feature `auth`), and have the
    /// destination expect the plan's stream id.
    pub auth_key: Option<[u8; 32]>,
    /// With several channels (`source.channels`): the stride that rotates which channel is polled
    /// and fed first on each turn (any value; the destination must accept every interleaving).
    pub interleave: u64,
}

impl Default for Plan {
    fn default() -> Self {
        let mut source = SourceConfig::default();
        source.policy.max_rounds = 4;
        source.stream_id = 7;
        Self {
            start_step: 40,
            chunk: 64 * 1024,
            feed: 4096,
            link_bytes_per_s: 0,
            source,
            cut_at: None,
            freeze_guest: false,
            content_cache_pages: 1024,
            ggtt_precopy: true,
            auth_key: None,
            interleave: 1,
        }
    }
}

/// One pre-copy round as the source saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// Round number.
    pub round: u32,
    /// Pages sent.
    pub pages: u64,
    /// Zero pages among them.
    pub zero_pages: u64,
    /// Stream bytes.
    pub bytes: u64,
    /// Pages dirty when the round ended.
    pub dirty_left: u64,
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Rounds, the last one being the stop-and-copy's.
    pub rounds: Vec<RoundReport>,
    /// Why pre-copy ended.
    pub switch: Option<SwitchReason>,
    /// Stream bytes in total.
    pub wire_bytes: u64,
    /// Stream bytes after the source stopped (the stop-and-copy).
    pub stop_copy_bytes: u64,
    /// Modeled time from the source stopping to the destination resuming, µs: draining in-flight
    /// work plus the stop-and-copy bytes over the link (0 when no link is modeled).
    pub downtime_us: u64,
    /// Modeled total migration time, µs.
    pub total_us: u64,
    /// Frames the guest had submitted when the source stopped.
    pub stopped_at_frame: u64,
    /// What content tracking saved (all zero when it was off).
    pub content: vgpu::content::ContentStats,
    /// The stream (the main channel's, when there are several).
    pub wire: Vec<u8>,
    /// The streams of channels 1.. of a multi-channel migration (empty with one channel).
    pub channel_wires: Vec<Vec<u8>>,
    /// Frames the guest submitted during pre-copy (from the start to the stop).
    pub precopy_frames: u64,
    /// Modeled pre-copy time, µs.
    pub precopy_us: u64,
    /// The highest GPU auto-converge throttle the policy set, percent (0: never throttled).
    pub max_throttle: u8,
    /// How the source GPU's time was spent during pre-copy (throttled slices given to the host).
    pub precopy_engine: super::machine::EngineTime,
}

/// Live-migrate `src` (booted, running) to `dst` (fresh) while the guest keeps running: pre-copy
/// rounds under the policy, quiesce, stop-and-copy, validated commit, resume on the destination with
/// the guest's driver state (the vCPU state a VMM migrates).
pub fn migrate(
    src: &mut Machine<'_>,
    dst: &mut Machine<'_>,
    plan: &Plan,
) -> Result<MigrationReport, VgpuError> {
    for _ in 0..plan.start_step {
        src.step()?;
    }
    let frames =
        usize::try_from(src.vgpu.memory_map().frames()).map_err(|_| VgpuError::StorageSize)?;
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 256 * 1024 * usize::from(plan.source.channels.max(1))];
    let staging_len = 64 * 1024 + src.vgpu.config().ggtt_storage_len() * 8 * 2;
    let mut staging = vec![0u8; staging_len];
    // Caller storage of each channel's stream MAC (one per channel at each end).
    #[cfg(feature = "auth")]
    let (mut src_macs, mut dst_macs): (Vec<migstream::MacStorage>, Vec<migstream::MacStorage>) = (
        (0..vgpu::channel::MAX_CHANNELS)
            .map(|_| migstream::MacStorage::new())
            .collect(),
        (0..vgpu::channel::MAX_CHANNELS)
            .map(|_| migstream::MacStorage::new())
            .collect(),
    );
    let mut s = SourceSession::open(
        &mut src.vgpu,
        &mut src.cpu_log,
        plan.source,
        &mut send,
        &mut scratch,
    )?;
    let mut hashes = vec![0u64; frames];
    let mut dup_slots = vec![0u64; frames];
    let mut delta_pages = vec![0u8; plan.content_cache_pages * 4096];
    let mut delta_tags = vec![0u64; plan.content_cache_pages];
    if plan.content_cache_pages > 0 {
        let storage = vgpu::content::ContentStorage {
            hashes: &mut hashes,
            dup_slots: &mut dup_slots,
            delta_pages: &mut delta_pages,
            delta_tags: &mut delta_tags,
        };
        s.attach_content(&src.vgpu, storage)?;
    }
    let mut ggtt_sent = vec![0u64; src.vgpu.config().ggtt_storage_len()];
    if plan.ggtt_precopy {
        s.attach_ggtt_precopy(&src.vgpu, &mut ggtt_sent)?;
    }
    let channels = s.channels();
    let mut d = DestSession::open_channels(
        &mut dst.vgpu,
        &mut staging,
        migstream::Limits::DEFAULT,
        channels,
    )?;
    if let Some(key) = plan.auth_key {
        #[cfg(feature = "auth")]
        {
            let key = migstream::AuthKey::new(key);
            s.attach_key(&key, &mut src_macs)?;
            d.attach_key(&key, &mut dst_macs)?;
            d = d.expect_stream_id(plan.source.stream_id);
        }
        #[cfg(not(feature = "auth"))]
        {
            let _ = key;
            return Err(VgpuError::WrongPhase);
        }
    }
    let mut out = vec![0u8; plan.chunk.max(1)];
    let mut report = MigrationReport {
        rounds: Vec::new(),
        switch: None,
        wire_bytes: 0,
        stop_copy_bytes: 0,
        downtime_us: 0,
        total_us: 0,
        stopped_at_frame: 0,
        content: vgpu::content::ContentStats::default(),
        wire: Vec::new(),
        channel_wires: vec![Vec::new(); channels.saturating_sub(1)],
        precopy_frames: 0,
        precopy_us: 0,
        max_throttle: 0,
        precopy_engine: super::machine::EngineTime::default(),
    };
    let start_ns = src.clock_ns;
    let start_frames = src.driver.frames_submitted();
    let start_engine = src.engine_time();
    let mut link_ns = src.clock_ns;
    let mut stop_ns = None;
    let mut stop_bytes = 0;
    let mut polls = 0u64;
    let mut sent = 0u64;
    loop {
        // Channels are polled, and fed to the destination, in a rotating order: the destination
        // must accept any interleaving.
        let first =
            usize::try_from(polls.wrapping_mul(plan.interleave | 1) % channels as u64).unwrap_or(0);
        let mut polled = 0u64;
        for k in 0..channels {
            let c = (first + k) % channels;
            let n = s.poll_output_channel(
                c,
                &src.vgpu,
                &src.mem,
                &mut src.cpu_log,
                link_ns / 1000,
                &mut out,
            )?;
            let mut bytes = out.get(..n).unwrap_or(&[]);
            let wire = if c == 0 {
                &mut report.wire
            } else {
                report
                    .channel_wires
                    .get_mut(c - 1)
                    .ok_or(VgpuError::WrongPhase)?
            };
            if let Some(cut) = plan.cut_at {
                let room = usize::try_from(cut.saturating_sub(sent)).unwrap_or(usize::MAX);
                if bytes.len() >= room {
                    bytes = bytes.get(..room).unwrap_or(&[]);
                    wire.extend_from_slice(bytes);
                    for piece in bytes.chunks(plan.feed.max(1)) {
                        d.feed_channel(c, &dst.vgpu, &mut dst.mem, piece)?;
                    }
                    // The connection is gone: the destination never finishes; the source cancels.
                    s.cancel(&mut src.vgpu);
                    return Err(VgpuError::Truncated);
                }
            }
            for piece in bytes.chunks(plan.feed.max(1)) {
                d.feed_channel(c, &dst.vgpu, &mut dst.mem, piece)?;
            }
            wire.extend_from_slice(bytes);
            sent += n as u64;
            polled += n as u64;
            while let Some(ev) = s.poll_event() {
                match ev {
                    SourceEvent::RoundEnd {
                        round,
                        pages,
                        zero_pages,
                        bytes,
                        dirty_left,
                    } => {
                        report.rounds.push(RoundReport {
                            round,
                            pages,
                            zero_pages,
                            bytes,
                            dirty_left,
                        });
                    }
                    SourceEvent::Switch { reason, .. } => {
                        report.switch = Some(reason);
                        report.stopped_at_frame = src.driver.frames_submitted();
                        report.precopy_frames = report.stopped_at_frame - start_frames;
                        report.precopy_us = src.clock_ns.saturating_sub(start_ns) / 1000;
                        let (now, then) = (src.engine_time(), start_engine);
                        report.precopy_engine = super::machine::EngineTime {
                            ran_ns: now.ran_ns - then.ran_ns,
                            throttled_ns: now.throttled_ns - then.throttled_ns,
                        };
                        // The guest is stopping: lift the throttle so draining runs at full speed.
                        src.set_engine_throttle(0)?;
                        let before = src.clock_ns;
                        if !src.quiesce() {
                            return Err(VgpuError::NotQuiesced);
                        }
                        stop_ns = Some(link_ns.max(before));
                        // Draining in-flight work is part of the downtime.
                        link_ns = link_ns.max(before) + (src.clock_ns - before);
                        stop_bytes = s.bytes_written();
                        s.stop_and_copy(&mut src.vgpu, &mut src.cpu_log)?;
                    }
                    _ => {}
                }
            }
        }
        if let Some(ns) = polled
            .saturating_mul(1_000_000_000)
            .checked_div(plan.link_bytes_per_s)
        {
            link_ns += ns;
        }
        if s.is_finished() {
            break;
        }
        if stop_ns.is_none() && !plan.freeze_guest {
            // GPU auto-converge: the policy's throttle, through the source's scheduler.
            let throttle = s.throttle_percent();
            report.max_throttle = report.max_throttle.max(throttle);
            src.set_engine_throttle(throttle)?;
            // The guest keeps running while the link carries the bytes.
            if plan.link_bytes_per_s == 0 {
                src.step()?;
            } else {
                while src.clock_ns < link_ns {
                    src.step()?;
                }
            }
        }
        polls += 1;
        if polls > 100_000_000 {
            return Err(VgpuError::WrongPhase);
        }
    }
    if !d.is_finished() {
        return Err(VgpuError::Truncated);
    }
    report.content = s.content_stats();
    d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host)?;
    s.complete(&mut src.vgpu)?;
    dst.vgpu.start()?;
    dst.driver = src.driver.clone();
    dst.clock_ns = src.clock_ns;
    report.wire_bytes = sent;
    report.stop_copy_bytes = report.wire_bytes - stop_bytes;
    if let Some(t) = stop_ns {
        report.downtime_us = link_ns.saturating_sub(t) / 1000;
    }
    report.total_us = link_ns.saturating_sub(start_ns) / 1000;
    Ok(report)
}
