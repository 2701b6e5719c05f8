//! The device state of a vGPU as records: one table that both sessions read.
//!
//! Each record kind is a [`migstream::Section`] owned by the component whose state it holds
//! (config space and PPGTT roots here, registers in `mmio`, GGTT runs and half-written entries in
//! `gtt`, engines in `engines`). A row of the table says how this vGPU reaches that state; the
//! order of the rows is the order on the wire and the order of the restore, and the table gives
//! the destination its bounds (each payload's, each GGTT group's, the staging storage's) and its
//! record counts. A new record is a new row.

use gtt::{GgttPendingSection, GgttRunsSection, GuestFrames, RunStats};
use migstream::{RecordKind, Saved, Section};

use crate::error::VgpuError;
use crate::instance::{CONFIG_SPACE_SIZE, Vgpu, VgpuConfig, config_byte_read_only};
use core::cell::Cell;

use crate::ppgtt::{PpgttList, PpgttRootsSection, RootsCheck};
use crate::traits::{GuestMemory, HostGtt};

/// Bytes of bookkeeping per staged record (kind, reserved, length).
pub const STAGED_HEADER: usize = 8;

/// Staged bytes per GGTT entry a group of `GGTT_RUNS` records may take: a valid source covers each
/// entry at most once per group, with at most 24 payload bytes (a one-entry RAW run) and, in the
/// worst case, a record of its own (8 bytes of staging header).
pub const GGTT_STAGED_PER_ENTRY: usize = gtt::runs::RUN_HEADER_LEN + 8 + STAGED_HEADER;

/// The `CONFIG_SPACE` record (SPEC.md Appendix A.1): the vGPU's PCI configuration space. The
/// bytes the guest cannot write (the device's identity) must be the receiving vGPU's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConfigSpaceSection;

impl Section for ConfigSpaceSection {
    const KIND: RecordKind = RecordKind::CONFIG_SPACE;
    const VERSION: u8 = 1;

    type Error = VgpuError;
    type Config<'a> = ();
    type Source<'a> = &'a [u8; CONFIG_SPACE_SIZE];
    type Check<'a> = &'a [u8; CONFIG_SPACE_SIZE];
    type Checked = ();
    type Target<'a, 'b>
        = &'a mut [u8; CONFIG_SPACE_SIZE]
    where
        'b: 'a;

    fn max_len(_: &()) -> usize {
        CONFIG_SPACE_SIZE
    }

    fn save(
        cfg: &&[u8; CONFIG_SPACE_SIZE],
        _from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        out.get_mut(..CONFIG_SPACE_SIZE)
            .ok_or(VgpuError::StorageSize)?
            .copy_from_slice(*cfg);
        Ok(Saved::whole(CONFIG_SPACE_SIZE))
    }

    fn validate(local: &&[u8; CONFIG_SPACE_SIZE], payload: &[u8]) -> Result<(), VgpuError> {
        // Bytes the guest cannot write (identity) must be this vGPU's; the others are the
        // guest's and restored as they are.
        if payload.len() != CONFIG_SPACE_SIZE
            || payload
                .iter()
                .zip(local.iter())
                .enumerate()
                .any(|(i, (a, b))| config_byte_read_only(i) && a != b)
        {
            return Err(VgpuError::BadConfigSpace);
        }
        Ok(())
    }

    fn apply(cfg: &mut [u8; CONFIG_SPACE_SIZE], payload: &[u8]) -> Result<(), VgpuError> {
        let payload: &[u8; CONFIG_SPACE_SIZE] =
            payload.try_into().map_err(|_| VgpuError::BadConfigSpace)?;
        *cfg = *payload;
        Ok(())
    }
}

/// How many records of a kind a stream carries (SPEC.md Appendix A, "Order").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Exactly one, after the last round.
    Once,
    /// Any number, in two groups: the GGTT pre-copy (before every page and ROUND record) and the
    /// device state after the stop, each bounded on its own.
    Groups,
}

/// What the destination's checks share while they go over the staged records in stream order.
pub(crate) struct Checking<'c, 'v> {
    pub(crate) vgpu: &'c Vgpu<'v>,
    pub(crate) mem: &'c dyn GuestMemory,
    pub(crate) frames: &'c GuestFrames,
    /// Whether the staged registers enable 64 KiB PPGTT pages.
    pub(crate) ips_64k: bool,
    /// Where the previous `GGTT_RUNS` record of each group ended (storage slot).
    pub(crate) ggtt_end: [usize; 2],
    /// The PPGTT roots the check walked.
    pub(crate) ppgtts: PpgttList,
    /// The table memo the PPGTT roots are checked together with ([`crate::ppgtt::memo_len`]).
    pub(crate) memo: &'c [Cell<u8>],
}

/// What the restore steps share.
pub(crate) struct Applying<'c, 'v> {
    pub(crate) vgpu: &'c mut Vgpu<'v>,
    pub(crate) mem: &'c dyn GuestMemory,
    pub(crate) host: &'c mut dyn HostGtt,
    pub(crate) frames: &'c GuestFrames,
    /// The roots the check walked, and the 64 KiB setting it walked them with.
    pub(crate) ppgtts: Option<PpgttList>,
    pub(crate) checked_ips_64k: bool,
    /// GGTT entries restored.
    pub(crate) ggtt: RunStats,
    /// The table memo for walking the roots again ([`Checking::memo`]).
    pub(crate) memo: &'c [Cell<u8>],
}

/// One row of `DEVICE_STATE`: a section, and how this vGPU reaches its state.
pub(crate) trait Part: Sync {
    /// The record kind.
    fn kind(&self) -> RecordKind;
    /// The version a writer puts on it.
    fn version(&self) -> u8;
    /// Whether a reader restores it in `version`.
    fn reads(&self, version: u8) -> bool;
    /// How many records of the kind a stream carries.
    fn count(&self) -> Count {
        Count::Once
    }
    /// The longest valid payload under `cfg`.
    fn bound(&self, cfg: &VgpuConfig) -> usize;
    /// The error a longer payload is refused with (the stream's fault).
    fn refusal(&self, bound: usize) -> VgpuError;
    /// The most staged bytes (staging headers included) one group of the kind's records takes
    /// ([`Count::Groups`] only).
    fn group_bound(&self, cfg: &VgpuConfig) -> usize {
        self.bound(cfg).saturating_add(STAGED_HEADER)
    }
    /// Save the record at `from` of the section; `sent` is what a GGTT pre-copy sent.
    fn save(
        &self,
        vgpu: &Vgpu<'_>,
        sent: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError>;
    /// Check a staged payload (of GGTT `group`) against the receiving vGPU.
    fn validate(
        &self,
        cx: &mut Checking<'_, '_>,
        group: u8,
        payload: &[u8],
    ) -> Result<(), VgpuError>;
    /// Restore every staged payload of the kind, in stream order.
    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError>;
}

/// The wire identity of a row, from its section.
macro_rules! wire {
    ($s:ty) => {
        fn kind(&self) -> RecordKind {
            <$s as Section>::KIND
        }
        fn version(&self) -> u8 {
            <$s as Section>::VERSION
        }
        fn reads(&self, version: u8) -> bool {
            <$s as Section>::reads(version)
        }
    };
}

/// The device state, in the order it travels and is restored: config space; registers (reset,
/// then copied with their side effects replayed); the GGTT (rebased to this host's placement
/// through the host GTT); GGTT entries with one half written; PPGTT roots (their tables walked in
/// guest memory); engines (queued work, partial ELSP state, CSB).
pub(crate) static DEVICE_STATE: [&dyn Part; 6] = [
    &ConfigRow,
    &RegistersRow,
    &GgttRow,
    &PendingRow,
    &RootsRow,
    &EnginesRow,
];

/// The row of `kind` and its place in `DEVICE_STATE`, if it is device state.
pub(crate) fn row_of(kind: RecordKind) -> Option<(usize, &'static dyn Part)> {
    DEVICE_STATE
        .iter()
        .enumerate()
        .find(|(_, p)| p.kind() == kind)
        .map(|(i, p)| (i, *p))
}

/// The most device state (staged bytes, staging headers included) a valid stream for a vGPU of
/// `cfg` can carry: each once-only record at its longest, and two groups of `GGTT_RUNS` records
/// ([`GGTT_STAGED_PER_ENTRY`] per GGTT entry each).
pub fn device_state_bound(cfg: &VgpuConfig) -> usize {
    DEVICE_STATE
        .iter()
        .map(|p| match p.count() {
            Count::Once => p.bound(cfg).saturating_add(STAGED_HEADER),
            Count::Groups => p.group_bound(cfg).saturating_mul(2),
        })
        .fold(0, usize::saturating_add)
}

struct ConfigRow;

impl Part for ConfigRow {
    wire!(ConfigSpaceSection);

    fn bound(&self, _: &VgpuConfig) -> usize {
        ConfigSpaceSection::max_len(&())
    }

    fn refusal(&self, _: usize) -> VgpuError {
        VgpuError::BadConfigSpace
    }

    fn save(
        &self,
        v: &Vgpu<'_>,
        _: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        ConfigSpaceSection::save(&v.config_space(), from, out)
    }

    fn validate(&self, cx: &mut Checking<'_, '_>, _: u8, payload: &[u8]) -> Result<(), VgpuError> {
        ConfigSpaceSection::validate(&cx.vgpu.config_space(), payload)
    }

    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError> {
        for p in payloads {
            ConfigSpaceSection::apply(cx.vgpu.cfg_mut(), p)?;
        }
        Ok(())
    }
}

struct RegistersRow;

impl Part for RegistersRow {
    wire!(mmio::RegistersSection);

    fn bound(&self, cfg: &VgpuConfig) -> usize {
        mmio::RegistersSection::max_len(&cfg.platform())
    }

    fn refusal(&self, bound: usize) -> VgpuError {
        VgpuError::Mmio(mmio::MmioError::Malformed { at: bound })
    }

    fn save(
        &self,
        v: &Vgpu<'_>,
        _: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        Ok(mmio::RegistersSection::save(&v.regs(), from, out)?)
    }

    fn validate(&self, cx: &mut Checking<'_, '_>, _: u8, payload: &[u8]) -> Result<(), VgpuError> {
        Ok(mmio::RegistersSection::validate(
            &cx.vgpu.regs().platform(),
            payload,
        )?)
    }

    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError> {
        // From the reset state: a register the stream does not name restores to its reset value.
        cx.vgpu.reset_registers();
        for p in payloads {
            cx.vgpu.apply_registers(p, cx.host)?;
        }
        Ok(())
    }
}

struct GgttRow;

impl Part for GgttRow {
    wire!(GgttRunsSection);

    fn count(&self) -> Count {
        Count::Groups
    }

    fn bound(&self, cfg: &VgpuConfig) -> usize {
        GgttRunsSection::max_len(&&cfg.partition)
    }

    fn refusal(&self, _: usize) -> VgpuError {
        VgpuError::Gtt(gtt::GttError::OutOfRange)
    }

    fn group_bound(&self, cfg: &VgpuConfig) -> usize {
        usize::try_from(cfg.partition.entries())
            .unwrap_or(usize::MAX)
            .saturating_mul(GGTT_STAGED_PER_ENTRY)
    }

    fn save(
        &self,
        v: &Vgpu<'_>,
        sent: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        let source = gtt::runs::RunsSource {
            slices: v.ggtt(),
            sent,
        };
        Ok(GgttRunsSection::save(&source, from, out)?)
    }

    fn validate(
        &self,
        cx: &mut Checking<'_, '_>,
        group: u8,
        payload: &[u8],
    ) -> Result<(), VgpuError> {
        let partition = cx.vgpu.config().partition;
        let check = gtt::runs::RunsCheck {
            partition: &partition,
            frames: cx.frames,
            generation: cx.vgpu.config().generation,
        };
        GgttRunsSection::validate(&check, payload)?;
        // A group's records continue each other in storage order: every entry at most once per
        // group, so restoring them costs at most the GGTT's size.
        let end = cx
            .ggtt_end
            .get_mut(usize::from(group))
            .ok_or(VgpuError::WrongPhase)?;
        if let Some(span) = gtt::runs::slot_span(payload, &partition) {
            if span.start < *end {
                return Err(VgpuError::Gtt(gtt::GttError::RunOrder));
            }
            *end = span.end;
        }
        Ok(())
    }

    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError> {
        let generation = cx.vgpu.config().generation;
        // The first record replaces the table (clearing it in the same pass); the others restore
        // on top, in stream order. Validated before; the kernels check again as they copy (all or
        // nothing per record), at no extra cost.
        let mut replace = true;
        for p in payloads {
            let target = gtt::runs::RunsTarget {
                slices: cx.vgpu.ggtt_mut(),
                frames: cx.frames,
                generation,
                replace,
                stats: &mut cx.ggtt,
            };
            GgttRunsSection::apply(target, p)?;
            replace = false;
        }
        if replace {
            cx.vgpu.ggtt_mut().clear();
        }
        cx.vgpu.reshadow_all(cx.host)
    }
}

struct PendingRow;

impl Part for PendingRow {
    wire!(GgttPendingSection);

    fn bound(&self, _: &VgpuConfig) -> usize {
        GgttPendingSection::max_len(&())
    }

    fn refusal(&self, _: usize) -> VgpuError {
        VgpuError::Gtt(gtt::GttError::Truncated)
    }

    fn save(
        &self,
        v: &Vgpu<'_>,
        _: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        Ok(GgttPendingSection::save(&v.ggtt(), from, out)?)
    }

    fn validate(&self, cx: &mut Checking<'_, '_>, _: u8, payload: &[u8]) -> Result<(), VgpuError> {
        Ok(GgttPendingSection::validate(
            &&cx.vgpu.config().partition,
            payload,
        )?)
    }

    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError> {
        // Halves the guest wrote before the stop wait for their partners here as they did there.
        for p in payloads {
            GgttPendingSection::apply(cx.vgpu.ggtt_mut(), p)?;
        }
        Ok(())
    }
}

struct RootsRow;

impl Part for RootsRow {
    wire!(PpgttRootsSection);

    fn bound(&self, _: &VgpuConfig) -> usize {
        PpgttRootsSection::max_len(&())
    }

    fn refusal(&self, _: usize) -> VgpuError {
        VgpuError::BadPpgtt
    }

    fn save(
        &self,
        v: &Vgpu<'_>,
        _: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        PpgttRootsSection::save(&v.ppgtts(), from, out)
    }

    fn validate(&self, cx: &mut Checking<'_, '_>, _: u8, payload: &[u8]) -> Result<(), VgpuError> {
        let check = RootsCheck {
            generation: cx.vgpu.config().generation,
            ips_64k: cx.ips_64k,
            map: cx.vgpu.memory_map(),
            mem: cx.mem,
            memo: cx.memo,
        };
        cx.ppgtts = PpgttRootsSection::validate(&check, payload)?;
        Ok(())
    }

    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError> {
        // The roots are recorded; their tables came with guest memory and were walked by the
        // check with the staged registers' 64 KiB setting: walked again only if the registers as
        // applied say otherwise.
        if cx.vgpu.derived().ips_64k == cx.checked_ips_64k
            && let Some(list) = cx.ppgtts.take()
        {
            cx.vgpu.set_ppgtts(list);
            return Ok(());
        }
        // The walk reads the map while `apply` holds the vGPU: a copy of it (a few regions).
        let map = cx.vgpu.memory_map().clone();
        for p in payloads {
            let check = RootsCheck {
                generation: cx.vgpu.config().generation,
                ips_64k: cx.vgpu.derived().ips_64k,
                map: &map,
                mem: cx.mem,
                memo: cx.memo,
            };
            PpgttRootsSection::apply((&mut *cx.vgpu, check), p)?;
        }
        Ok(())
    }
}

struct EnginesRow;

impl Part for EnginesRow {
    wire!(engines::EngineSection);

    fn bound(&self, _: &VgpuConfig) -> usize {
        engines::EngineSection::max_len(&())
    }

    fn refusal(&self, bound: usize) -> VgpuError {
        VgpuError::Engine(engines::EngineError::TrailingBytes { at: bound })
    }

    fn save(
        &self,
        v: &Vgpu<'_>,
        _: Option<&[u64]>,
        from: usize,
        out: &mut [u8],
    ) -> Result<Saved, VgpuError> {
        let out = out
            .get_mut(..engines::MAX_SAVE_LEN)
            .ok_or(VgpuError::StorageSize)?;
        Ok(engines::EngineSection::save(&v.engines(), from, out)?)
    }

    fn validate(&self, cx: &mut Checking<'_, '_>, _: u8, payload: &[u8]) -> Result<(), VgpuError> {
        // Parsed by the engines' own restore, on a copy; then every queued workload must be one
        // the vGPU would have queued (SPEC.md A.5).
        let mut probe = cx.vgpu.engines().clone();
        engines::EngineSection::apply(&mut probe, payload)?;
        check_queued(&probe, &cx.vgpu.config().partition)
    }

    fn apply(
        &self,
        cx: &mut Applying<'_, '_>,
        payloads: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), VgpuError> {
        for p in payloads {
            engines::EngineSection::apply(cx.vgpu.engines_mut(), p)?;
        }
        cx.vgpu.mirror_engines();
        Ok(())
    }
}

/// Every queued workload of `engines` as the vGPU queues one at an ELSP submission: a descriptor
/// that passes the submission check (valid, privileged, a PPGTT addressing mode) and whose context
/// state page lies in the vGPU's guest view (else the submission could not have read the ring
/// registers from it).
fn check_queued(engines: &engines::Engines, partition: &gtt::Partition) -> Result<(), VgpuError> {
    let invalid = VgpuError::Engine(engines::EngineError::InvalidDescriptor);
    for id in engines::EngineId::ALL {
        let Some(e) = engines.engine(id) else {
            continue;
        };
        for w in e.queue.iter() {
            engines::check_submission(&[w.desc, engines::ContextDescriptor::from_bits(0)])
                .map_err(|_| invalid)?;
            let state = gtt::GmAddr::new(u64::from(w.desc.lrca_address()))
                .checked_add(engines::LRC_STATE_PAGE)
                .and_then(gtt::GmAddr::index)
                .and_then(|i| partition.slot_of(i));
            if state.is_none() {
                return Err(invalid);
            }
            if !crate::instance::queueable_ring(w.ring_head, w.ring_tail, None) {
                return Err(VgpuError::Engine(engines::EngineError::RingOffset));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_kind_once_and_only_gtt_runs_repeat() {
        for (i, p) in DEVICE_STATE.iter().enumerate() {
            assert_eq!(row_of(p.kind()).map(|(j, _)| j), Some(i));
            assert!(p.reads(p.version()));
            assert_eq!(
                p.count() == Count::Groups,
                p.kind() == RecordKind::GGTT_RUNS
            );
        }
        assert!(row_of(RecordKind::PAGES).is_none());
        assert!(row_of(RecordKind::CHANNEL).is_none());
    }

    #[test]
    fn the_bound_is_the_sum_of_the_rows() {
        let partition = gtt::Partition::new(
            gtt::GmRange::new(gtt::GmAddr::new(0), 1 << 20).unwrap(),
            gtt::GmRange::new(gtt::GmAddr::new(0x1000_0000), 2 << 20).unwrap(),
        )
        .unwrap();
        let cfg = VgpuConfig::skylake(partition);
        let entries = 768;
        let once = CONFIG_SPACE_SIZE
            + mmio::SKL.max_sparse_len()
            + gtt::MAX_PENDING_LEN
            + PpgttRootsSection::max_len(&())
            + engines::MAX_SAVE_LEN
            + 5 * STAGED_HEADER;
        assert_eq!(
            device_state_bound(&cfg),
            once + 2 * entries * GGTT_STAGED_PER_ENTRY
        );
        // A GGTT payload's bound: 24 bytes per entry of the guest view.
        assert_eq!(GgttRow.bound(&cfg), entries * 24);
    }
}
