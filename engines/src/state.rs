//! Per-engine state, dispatch, quiesce, and the engine-state payload.

use static_assertions::const_assert_eq;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use mmio::RegFile;

use crate::desc::{ContextDescriptor, CsbEntry};
use crate::elsp::{CSB_ENTRIES, CSB_PTR_RESET, Csb, ElspPort};
use crate::error::EngineError;
use crate::id::{EngineId, EngineMask, reg};
use crate::workload::{QUEUE_CAPACITY, Workload, WorkloadQueue};

/// The virtual execlist slots of one engine, as the guest sees them through the
/// execlist status register.
///
/// Two slots alternate: a submission that schedules in takes the slot the write pointer
/// names, becomes current, and the write pointer moves to the other slot. Within the
/// current slot, element 0 runs first and element 1 after an element switch; the slot
/// closes when its last element completes. Updated by [`Engines::next_to_dispatch`]
/// (schedule-in of a workload with [`Workload::schedule_in`]) and [`Engines::complete`]
/// (element switch or schedule-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExeclistState {
    active: bool,
    current: u8,
    write: u8,
    element: u8,
}

const EL_ACTIVE: u8 = 1;
const EL_CURRENT: u8 = 1 << 1;
const EL_WRITE: u8 = 1 << 2;
const EL_ELEMENT: u8 = 1 << 3;

impl ExeclistState {
    /// Reset state: no slot active, both pointers 0.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            active: false,
            current: 0,
            write: 0,
            element: 0,
        }
    }

    /// A slot is active (a submission is being executed).
    #[must_use]
    pub const fn active(&self) -> bool {
        self.active
    }

    /// Current execlist pointer (slot 0 or 1).
    #[must_use]
    pub const fn current(&self) -> u8 {
        self.current
    }

    /// Execlist write pointer: the slot the next submission takes.
    #[must_use]
    pub const fn write(&self) -> u8 {
        self.write
    }

    /// The element of the active slot that runs (0 or 1; 0 when idle).
    #[must_use]
    pub const fn element(&self) -> u8 {
        self.element
    }

    /// Payload byte: bit 0 active, bit 1 current pointer, bit 2 write pointer, bit 3
    /// element; bits 7:4 zero.
    #[must_use]
    pub const fn to_byte(self) -> u8 {
        (self.active as u8) | (self.current << 1) | (self.write << 2) | (self.element << 3)
    }

    /// Inverse of [`to_byte`](Self::to_byte). Rejects bits 7:4 set, an idle state
    /// with element 1, and an active state whose write pointer equals its current pointer.
    pub const fn from_byte(b: u8) -> Result<Self, EngineError> {
        let s = Self {
            active: b & EL_ACTIVE != 0,
            current: (b & EL_CURRENT) >> 1,
            write: (b & EL_WRITE) >> 2,
            element: (b & EL_ELEMENT) >> 3,
        };
        if b & 0xF0 != 0 || (!s.active && s.element != 0) || (s.active && s.write == s.current) {
            return Err(EngineError::BadExeclistState { value: b });
        }
        Ok(s)
    }

    fn schedule_in(&mut self) {
        self.current = self.write;
        self.write ^= 1;
        self.active = true;
        self.element = 0;
    }

    fn schedule_out(&mut self, continues: bool) {
        if !self.active {
            return;
        }
        if continues {
            self.element = 1;
        } else {
            self.active = false;
            self.element = 0;
        }
    }
}

/// State of one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Engine {
    /// Which engine.
    pub id: EngineId,
    /// ELSP port with partial-write state.
    pub elsp: ElspPort,
    /// Queued, not yet dispatched workloads.
    pub queue: WorkloadQueue,
    /// The workload executing on the host, if any (one at a time per engine).
    pub running: Option<Workload>,
    /// Context status buffer.
    pub csb: Csb,
    /// Virtual execlist slots.
    pub execlist: ExeclistState,
}

impl Engine {
    /// Reset state of engine `id`.
    #[must_use]
    pub const fn new(id: EngineId) -> Self {
        Self {
            id,
            elsp: ElspPort::new(),
            queue: WorkloadQueue::new(),
            running: None,
            csb: Csb::new(),
            execlist: ExeclistState::new(),
        }
    }

    /// The emulated execlist status register (`base + 0x234`, 8 bytes):
    ///
    /// - bit 0 current execlist pointer, bit 1 write pointer;
    /// - bit 2 queue full: a slot is active and another submission is queued behind it;
    /// - bit 3/4 execlist 1/0 valid and bit 17/18 execlist 1/0 active: the active slot;
    /// - bits 13:5 last context switch reason: bits 8:0 of the newest CSB entry (0 after
    ///   CSB reset);
    /// - bits 15:14 active element: 0 idle, 1 element 0, 2 element 1;
    /// - bit 16 arbitration enabled: always 1 (MI_ARB_ON_OFF is not modelled);
    /// - bits 63:32 context id of the running element (the running workload, else the
    ///   queued element 1 of the active slot), 0 when idle.
    #[must_use]
    pub fn execlist_status(&self) -> u64 {
        let el = &self.execlist;
        let mut lo = u32::from(el.current & 1) | (u32::from(el.write & 1) << 1) | (1 << 16);
        let mut ctx = 0;
        if el.active {
            if self.queue.iter().any(|w| w.schedule_in) {
                lo |= 1 << 2;
            }
            lo |= if el.current == 0 {
                (1 << 4) | (1 << 18)
            } else {
                (1 << 3) | (1 << 17)
            };
            lo |= (u32::from(el.element & 1) + 1) << 14;
            ctx = self
                .running
                .as_ref()
                .or(self.queue.front())
                .map_or(0, |w| w.desc.context_id());
        }
        let wp = self.csb.write_ptr();
        if wp != CSB_PTR_RESET {
            let reason = self
                .csb
                .entries()
                .get(usize::from(wp))
                .map_or(0, |e| e.into_bits() & 0x1FF);
            lo |= u32::try_from(reason).unwrap_or(0) << 5;
        }
        (u64::from(ctx) << 32) | u64::from(lo)
    }

    /// Mirrors the CSB ([`Csb::mirror`]) and the execlist status (`base + 0x234/0x238`)
    /// into the vregs (raw, no hooks).
    pub fn mirror(&self, regs: &mut RegFile<'_>) {
        self.csb.mirror(regs, self.id);
        let st = self.execlist_status();
        let off = self.id.reg(reg::EXECLIST_STATUS);
        regs.poke(off, u32::try_from(st & 0xFFFF_FFFF).unwrap_or(0));
        regs.poke(off + 4, u32::try_from(st >> 32).unwrap_or(0));
    }
}

/// Result of [`Engines::quiesce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use]
pub struct QuiesceStatus {
    /// Workloads still executing; the caller completes them
    /// ([`Engines::complete`]) before saving.
    pub in_flight: u32,
}

impl QuiesceStatus {
    /// True when nothing is executing: state can be saved.
    #[must_use]
    pub const fn is_idle(&self) -> bool {
        self.in_flight == 0
    }
}

/// The engines of one vGPU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Engines {
    engines: [Engine; 5],
    present: EngineMask,
    quiesced: bool,
}

/// Payload format version written by [`Engines::save`].
pub const PAYLOAD_VERSION: u8 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PayloadHeader {
    version: u8,
    engine_count: u8,
    reserved: [u8; 2],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EngineRecord {
    id: u8,
    elsp_index: u8,
    csb_wp: u8,
    csb_rp: u8,
    elsp: [U32; 4],
    csb: [U64; CSB_ENTRIES],
    queue_len: u8,
    execlist: u8,
    reserved: [u8; 2],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct WorkloadRecord {
    engine: u8,
    flags: u8,
    reserved: [u8; 2],
    ring_head: U32,
    ring_tail: U32,
    desc: U64,
}

const HEADER_LEN: usize = 4;
const ENGINE_RECORD_LEN: usize = 72;
const WORKLOAD_RECORD_LEN: usize = 20;
const_assert_eq!(size_of::<PayloadHeader>(), HEADER_LEN);
const_assert_eq!(size_of::<EngineRecord>(), ENGINE_RECORD_LEN);
const_assert_eq!(size_of::<WorkloadRecord>(), WORKLOAD_RECORD_LEN);

const FLAG_SCHEDULE_IN: u8 = 1;

/// Largest payload [`Engines::save`] can produce (all five engines, full queues).
pub const MAX_SAVE_LEN: usize =
    HEADER_LEN + 5 * (ENGINE_RECORD_LEN + QUEUE_CAPACITY * WORKLOAD_RECORD_LEN);

fn emit(out: &mut [u8], pos: usize, bytes: &[u8]) -> Result<usize, EngineError> {
    let end = pos.checked_add(bytes.len()).ok_or(EngineError::Capacity)?;
    out.get_mut(pos..end)
        .ok_or(EngineError::Capacity)?
        .copy_from_slice(bytes);
    Ok(end)
}

/// Walks and checks a payload against the `present` engine set, calling
/// `f(id, elsp, csb, queued workloads)` per engine record.
fn walk(
    present: EngineMask,
    payload: &[u8],
    mut f: impl FnMut(EngineId, ElspPort, Csb, ExeclistState, &[WorkloadRecord]),
) -> Result<(), EngineError> {
    let at = |rest: &[u8]| payload.len() - rest.len();
    let (hdr, mut rest) =
        PayloadHeader::ref_from_prefix(payload).map_err(|_| EngineError::Malformed { at: 0 })?;
    if hdr.version != PAYLOAD_VERSION {
        return Err(EngineError::UnsupportedVersion {
            version: hdr.version,
        });
    }
    if hdr.reserved != [0; 2] {
        return Err(EngineError::Malformed { at: 2 });
    }
    if u32::from(hdr.engine_count) != present.count() {
        return Err(EngineError::EngineMismatch);
    }
    let mut seen = EngineMask::EMPTY;
    let mut last: Option<EngineId> = None;
    for _ in 0..hdr.engine_count {
        let rec_at = at(rest);
        let (rec, r) = EngineRecord::ref_from_prefix(rest)
            .map_err(|_| EngineError::Malformed { at: rec_at })?;
        let id = EngineId::from_index(usize::from(rec.id))
            .ok_or(EngineError::UnknownEngine { id: rec.id })?;
        if last.is_some_and(|l| l >= id) {
            return Err(EngineError::Malformed { at: rec_at });
        }
        if !present.contains(id) {
            return Err(EngineError::EngineMismatch);
        }
        if rec.reserved != [0; 2] {
            return Err(EngineError::Malformed { at: rec_at + 70 });
        }
        let execlist = ExeclistState::from_byte(rec.execlist)?;
        let elsp = ElspPort::from_parts(rec.elsp.map(U32::get), rec.elsp_index)?;
        let entries = rec.csb.map(|e| CsbEntry::from_bits(e.get()));
        let csb = Csb::from_parts(entries, rec.csb_wp, rec.csb_rp)?;
        if usize::from(rec.queue_len) > QUEUE_CAPACITY {
            return Err(EngineError::QueueTooLong { len: rec.queue_len });
        }
        let q_at = at(r);
        let (queued, r) =
            <[WorkloadRecord]>::ref_from_prefix_with_elems(r, usize::from(rec.queue_len))
                .map_err(|_| EngineError::Malformed { at: q_at })?;
        for (i, w) in queued.iter().enumerate() {
            let w_at = q_at + i * WORKLOAD_RECORD_LEN;
            if w.engine != rec.id {
                return Err(EngineError::Malformed { at: w_at });
            }
            if w.flags & !FLAG_SCHEDULE_IN != 0 || w.reserved != [0; 2] {
                return Err(EngineError::Malformed { at: w_at + 1 });
            }
        }
        f(id, elsp, csb, execlist, queued);
        seen = seen.with(id);
        last = Some(id);
        rest = r;
    }
    if !rest.is_empty() {
        return Err(EngineError::TrailingBytes { at: at(rest) });
    }
    debug_assert_eq!(seen, present);
    Ok(())
}

impl Engines {
    /// Reset state for the engines in `present` (the GPU model's engines).
    #[must_use]
    pub const fn new(present: EngineMask) -> Self {
        Self {
            engines: [
                Engine::new(EngineId::Rcs),
                Engine::new(EngineId::Bcs),
                Engine::new(EngineId::Vcs),
                Engine::new(EngineId::Vcs2),
                Engine::new(EngineId::Vecs),
            ],
            present,
            quiesced: false,
        }
    }

    /// The engines that exist.
    #[must_use]
    pub const fn present(&self) -> EngineMask {
        self.present
    }

    /// State of engine `id`, `None` if not present.
    #[must_use]
    pub fn engine(&self, id: EngineId) -> Option<&Engine> {
        if !self.present.contains(id) {
            return None;
        }
        self.engines.get(id.index())
    }

    /// Mutable state of engine `id`, `None` if not present.
    pub fn engine_mut(&mut self, id: EngineId) -> Option<&mut Engine> {
        if !self.present.contains(id) {
            return None;
        }
        self.engines.get_mut(id.index())
    }

    fn present_engines(&self) -> impl Iterator<Item = &Engine> {
        self.engines.iter().filter(|e| self.present.contains(e.id))
    }

    /// A guest dword write to engine `id`'s ELSP; on the 4th dword returns the two
    /// submitted descriptors (check them with [`check_submission`](crate::check_submission)).
    pub fn elsp_write(
        &mut self,
        id: EngineId,
        dword: u32,
    ) -> Result<Option<[ContextDescriptor; 2]>, EngineError> {
        let e = self
            .engine_mut(id)
            .ok_or(EngineError::NotPresent { engine: id })?;
        Ok(e.elsp.write(dword))
    }

    /// Queues a workload on its engine; returns it back if the queue is full or the
    /// engine is not present. Allowed while quiesced (it stays queued).
    pub fn enqueue(&mut self, w: Workload) -> Result<(), Workload> {
        match self.engine_mut(w.engine) {
            Some(e) => e.queue.push(w),
            None => Err(w),
        }
    }

    /// Takes the next workload of engine `id` for execution and marks it running.
    /// `None` while quiesced, while the engine already runs one, or if nothing is queued.
    pub fn next_to_dispatch(&mut self, id: EngineId) -> Option<Workload> {
        if self.quiesced {
            return None;
        }
        let e = self.engine_mut(id)?;
        if e.running.is_some() {
            return None;
        }
        let w = e.queue.pop()?;
        e.running = Some(w);
        if w.schedule_in {
            e.execlist.schedule_in();
        } else if e.execlist.active {
            e.execlist.element = 1;
        }
        Some(w)
    }

    /// The running workload of engine `id` finished; returns it.
    ///
    /// The execlist slot switches to element 1 when the next queued workload continues
    /// the same submission (it does not schedule in), and closes otherwise.
    pub fn complete(&mut self, id: EngineId) -> Option<Workload> {
        let e = self.engine_mut(id)?;
        let w = e.running.take()?;
        let continues = e.queue.front().is_some_and(|n| !n.schedule_in);
        e.execlist.schedule_out(continues);
        Some(w)
    }

    /// [`Engine::mirror`] for every present engine.
    pub fn mirror(&self, regs: &mut RegFile<'_>) {
        for e in self.present_engines() {
            e.mirror(regs);
        }
    }

    /// Workloads currently executing.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        let n = self
            .present_engines()
            .filter(|e| e.running.is_some())
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Stops dispatch (idempotent). Running workloads continue until
    /// [`complete`](Self::complete)d; queued ones stay queued.
    pub fn quiesce(&mut self) -> QuiesceStatus {
        self.quiesced = true;
        QuiesceStatus {
            in_flight: self.in_flight(),
        }
    }

    /// Undoes [`quiesce`](Self::quiesce): dispatch continues with the queued work.
    pub fn resume(&mut self) {
        self.quiesced = false;
    }

    /// True while dispatch is stopped.
    #[must_use]
    pub const fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Bytes [`save`](Self::save) writes now.
    #[must_use]
    pub fn save_len(&self) -> usize {
        self.present_engines().fold(HEADER_LEN, |acc, e| {
            acc + ENGINE_RECORD_LEN + e.queue.len() * WORKLOAD_RECORD_LEN
        })
    }

    /// Serialises the engine state into `out`; returns the bytes written.
    ///
    /// Requires [`quiesce`](Self::quiesce)d engines with nothing in flight
    /// (`NotQuiesced` otherwise). Copies: queued work stays queued, so a cancelled
    /// migration resumes exactly where it was.
    ///
    /// Layout (little-endian, see the crate docs): a 4-byte header, then per present
    /// engine in index order a 72-byte engine record followed by its queued workloads,
    /// 20 bytes each.
    pub fn save(&self, out: &mut [u8]) -> Result<usize, EngineError> {
        let in_flight = self.in_flight();
        if !self.quiesced || in_flight != 0 {
            return Err(EngineError::NotQuiesced { in_flight });
        }
        if out.len() < self.save_len() {
            return Err(EngineError::Capacity);
        }
        let hdr = PayloadHeader {
            version: PAYLOAD_VERSION,
            engine_count: u8::try_from(self.present.count()).map_err(|_| EngineError::Capacity)?,
            reserved: [0; 2],
        };
        let mut pos = emit(out, 0, hdr.as_bytes())?;
        for e in self.present_engines() {
            let rec = EngineRecord {
                id: e.id.wire_id(),
                elsp_index: e.elsp.index(),
                csb_wp: e.csb.write_ptr(),
                csb_rp: e.csb.read_ptr(),
                elsp: e.elsp.dwords().map(U32::new),
                csb: e.csb.entries().map(|c| U64::new(c.into_bits())),
                queue_len: u8::try_from(e.queue.len()).map_err(|_| EngineError::Capacity)?,
                execlist: e.execlist.to_byte(),
                reserved: [0; 2],
            };
            pos = emit(out, pos, rec.as_bytes())?;
            for w in e.queue.iter() {
                let rec = WorkloadRecord {
                    engine: w.engine.wire_id(),
                    flags: if w.schedule_in { FLAG_SCHEDULE_IN } else { 0 },
                    reserved: [0; 2],
                    ring_head: U32::new(w.ring_head),
                    ring_tail: U32::new(w.ring_tail),
                    desc: U64::new(w.desc.into_bits()),
                };
                pos = emit(out, pos, rec.as_bytes())?;
            }
        }
        Ok(pos)
    }

    /// Checks a payload against this instance's engine set without applying it.
    ///
    /// Rejects: truncation, reserved bytes or unknown workload flags set, engines out of
    /// order or duplicated, a workload naming another engine (`Malformed`); version other
    /// than [`PAYLOAD_VERSION`]; engine ids ≥ 5 (`UnknownEngine`); an engine set that
    /// differs from [`present`](Self::present) (`EngineMismatch`); ELSP index ≥ 4; CSB
    /// pointers not in 0..6 or 7; an inconsistent execlist byte (`BadExeclistState`, see
    /// [`ExeclistState::from_byte`]); queues longer than [`QUEUE_CAPACITY`]; trailing bytes.
    pub fn validate(&self, payload: &[u8]) -> Result<(), EngineError> {
        walk(self.present, payload, |_, _, _, _, _| {})
    }

    /// Replaces the engine state with a payload from [`save`](Self::save).
    ///
    /// Validates first; on error nothing changes. Needs nothing in flight here
    /// (`NotQuiesced`). Existing queued work is replaced by the payload's. The quiesce
    /// flag is left as it is: the caller resumes when the migration commits.
    ///
    /// # Restore order
    ///
    /// Per engine, in ascending id order, the state the guest last saw is rebuilt
    /// before anything can run:
    ///
    /// 1. execlist slots (current/write pointer, active element), so the status register
    ///    answers as it did on the source;
    /// 2. CSB entries, write and read pointers, so the guest's interrupt handler finds
    ///    exactly the unread entries it had (no spurious or lost completion);
    /// 3. the partial ELSP sequence, so the guest's next dword continues it;
    /// 4. the queued workloads, oldest first; nothing runs.
    ///
    /// Then the caller, still quiesced: mirrors the engines into the vregs with
    /// [`mirror`](Self::mirror) (CSB registers and execlist status), writes each engine's
    /// HWSP mirror with [`Csb::hwsp_image`] (entries first, write pointer last), injects
    /// no interrupt (pending interrupt bits migrate with the vregs), and calls
    /// [`resume`](Self::resume) when the migration commits.
    pub fn apply(&mut self, payload: &[u8]) -> Result<(), EngineError> {
        self.validate(payload)?;
        let in_flight = self.in_flight();
        if in_flight != 0 {
            return Err(EngineError::NotQuiesced { in_flight });
        }
        let engines = &mut self.engines;
        walk(self.present, payload, |id, elsp, csb, execlist, queued| {
            if let Some(e) = engines.get_mut(id.index()) {
                e.execlist = execlist;
                e.csb = csb;
                e.elsp = elsp;
                e.running = None;
                e.queue.clear();
                for w in queued {
                    // Capacity was checked by `walk`, so this never returns the item.
                    let _ = e.queue.push(Workload {
                        engine: id,
                        desc: ContextDescriptor::from_bits(w.desc.get()),
                        ring_head: w.ring_head.get(),
                        ring_tail: w.ring_tail.get(),
                        schedule_in: w.flags & FLAG_SCHEDULE_IN != 0,
                    });
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn wl(engine: EngineId, n: u32) -> Workload {
        Workload {
            engine,
            desc: ContextDescriptor::from_bits(0x119 | (u64::from(n) << 32)),
            ring_head: n * 0x40,
            ring_tail: n * 0x40 + 0x20,
            schedule_in: n.is_multiple_of(2),
        }
    }

    fn saved(e: &Engines) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_SAVE_LEN];
        let n = e.save(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn quiesce_reports_in_flight_and_blocks_dispatch() {
        let mut e = Engines::new(EngineMask::RCS.with(EngineId::Bcs));
        for n in 0..3 {
            e.enqueue(wl(EngineId::Rcs, n)).unwrap();
        }
        assert_eq!(
            e.next_to_dispatch(EngineId::Rcs),
            Some(wl(EngineId::Rcs, 0))
        );
        // One at a time per engine.
        assert_eq!(e.next_to_dispatch(EngineId::Rcs), None);
        let st = e.quiesce();
        assert_eq!(st, QuiesceStatus { in_flight: 1 });
        assert!(!st.is_idle());
        assert_eq!(
            e.save(&mut [0u8; MAX_SAVE_LEN]),
            Err(EngineError::NotQuiesced { in_flight: 1 })
        );
        assert_eq!(e.complete(EngineId::Rcs), Some(wl(EngineId::Rcs, 0)));
        assert_eq!(e.next_to_dispatch(EngineId::Rcs), None);
        assert!(e.quiesce().is_idle());
        // Enqueue while quiesced is allowed and stays queued.
        e.enqueue(wl(EngineId::Bcs, 9)).unwrap();
        assert_eq!(e.next_to_dispatch(EngineId::Bcs), None);
        e.resume();
        assert!(!e.is_quiesced());
        assert_eq!(
            e.next_to_dispatch(EngineId::Rcs),
            Some(wl(EngineId::Rcs, 1))
        );
        assert_eq!(
            e.next_to_dispatch(EngineId::Bcs),
            Some(wl(EngineId::Bcs, 9))
        );
    }

    #[test]
    fn save_requires_quiesce_even_when_idle() {
        let e = Engines::new(EngineMask::RCS);
        assert_eq!(
            e.save(&mut [0u8; 128]),
            Err(EngineError::NotQuiesced { in_flight: 0 })
        );
    }

    #[test]
    fn save_never_removes_queued_work() {
        let mut e = Engines::new(EngineMask::ALL);
        for n in 0..5 {
            e.enqueue(wl(EngineId::Vcs, n)).unwrap();
        }
        let _ = e.quiesce();
        let before = e.clone();
        let bytes = saved(&e);
        assert_eq!(bytes.len(), e.save_len());
        assert_eq!(e, before);
        // Migration cancelled: resume and get every queued workload in order.
        e.resume();
        for n in 0..5 {
            assert_eq!(
                e.next_to_dispatch(EngineId::Vcs),
                Some(wl(EngineId::Vcs, n))
            );
            e.complete(EngineId::Vcs);
        }
        assert_eq!(e.next_to_dispatch(EngineId::Vcs), None);
    }

    #[test]
    fn exact_layout() {
        let mut e = Engines::new(EngineMask::RCS);
        e.elsp_write(EngineId::Rcs, 0xAABB_CCDD).unwrap();
        e.engine_mut(EngineId::Rcs)
            .unwrap()
            .csb
            .push(CsbEntry::from_bits(0x0000_0005_0000_0001));
        e.enqueue(wl(EngineId::Rcs, 2)).unwrap();
        let _ = e.quiesce();
        let b = saved(&e);
        assert_eq!(b.len(), 4 + 72 + 20);
        assert_eq!(&b[..4], &[1, 1, 0, 0]);
        assert_eq!(&b[4..8], &[0, 1, 0, 0]); // id, elsp index, csb wp, csb rp
        assert_eq!(&b[8..20], &[0; 12]);
        assert_eq!(&b[20..24], &[0xDD, 0xCC, 0xBB, 0xAA]); // dwords[3]
        assert_eq!(&b[24..32], &[1, 0, 0, 0, 5, 0, 0, 0]); // csb[0]
        assert_eq!(&b[72..76], &[1, 0, 0, 0]); // queue_len, reserved
        assert_eq!(&b[76..80], &[0, 1, 0, 0]); // engine, flags (schedule_in), reserved
        assert_eq!(&b[80..84], &0x80u32.to_le_bytes());
        assert_eq!(&b[84..88], &0xA0u32.to_le_bytes());
        assert_eq!(&b[88..96], &0x0000_0002_0000_0119u64.to_le_bytes());
        assert_eq!(e.save(&mut [0u8; 95]), Err(EngineError::Capacity));
    }

    #[test]
    fn elsp_partial_write_survives_at_each_position() {
        let seq = [0x11u32, 0x10, 0x01, 0x1000_0119];
        for k in 0..4 {
            let mut src = Engines::new(EngineMask::RCS);
            for d in &seq[..k] {
                assert_eq!(src.elsp_write(EngineId::Rcs, *d).unwrap(), None);
            }
            let _ = src.quiesce();
            let bytes = saved(&src);
            let mut dst = Engines::new(EngineMask::RCS);
            dst.apply(&bytes).unwrap();
            assert_eq!(
                dst.engine(EngineId::Rcs).unwrap().elsp,
                src.engine(EngineId::Rcs).unwrap().elsp
            );
            assert_eq!(
                usize::from(dst.engine(EngineId::Rcs).unwrap().elsp.index()),
                k
            );
            let mut got = None;
            for d in &seq[k..] {
                got = dst.elsp_write(EngineId::Rcs, *d).unwrap();
            }
            let got = got.unwrap();
            assert_eq!(got[0].into_bits(), 0x0000_0001_1000_0119);
            assert_eq!(got[1].into_bits(), 0x0000_0011_0000_0010);
        }
    }

    #[test]
    fn malformed_payloads_rejected() {
        let mut e = Engines::new(EngineMask::RCS.with(EngineId::Vecs));
        e.enqueue(wl(EngineId::Vecs, 1)).unwrap();
        let _ = e.quiesce();
        let good = saved(&e);
        assert_eq!(good.len(), 4 + 72 + 72 + 20);
        assert_eq!(e.validate(&good), Ok(()));
        for cut in 0..good.len() {
            assert!(
                matches!(e.validate(&good[..cut]), Err(EngineError::Malformed { .. })),
                "cut {cut}"
            );
        }
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            e.validate(&b)
        };
        assert_eq!(
            bad(&|b| b[0] = 2),
            Err(EngineError::UnsupportedVersion { version: 2 })
        );
        assert_eq!(bad(&|b| b[3] = 1), Err(EngineError::Malformed { at: 2 }));
        assert_eq!(bad(&|b| b[1] = 3), Err(EngineError::EngineMismatch));
        assert_eq!(
            bad(&|b| b[4] = 9),
            Err(EngineError::UnknownEngine { id: 9 })
        );
        assert_eq!(bad(&|b| b[4] = 1), Err(EngineError::EngineMismatch));
        assert_eq!(bad(&|b| b[76] = 0), Err(EngineError::Malformed { at: 76 }));
        assert_eq!(
            bad(&|b| b[5] = 4),
            Err(EngineError::BadElspIndex { index: 4 })
        );
        assert_eq!(
            bad(&|b| b[6] = 6),
            Err(EngineError::BadCsbPointer { value: 6 })
        );
        assert_eq!(
            bad(&|b| b[7] = 8),
            Err(EngineError::BadCsbPointer { value: 8 })
        );
        assert_eq!(
            bad(&|b| b[72] = 17),
            Err(EngineError::QueueTooLong { len: 17 })
        );
        assert_eq!(bad(&|b| b[74] = 1), Err(EngineError::Malformed { at: 74 }));
        assert_eq!(bad(&|b| b[75] = 1), Err(EngineError::Malformed { at: 74 }));
        assert_eq!(
            bad(&|b| b[73] = 0x10),
            Err(EngineError::BadExeclistState { value: 0x10 })
        );
        assert_eq!(
            bad(&|b| b[73] = 0x08),
            Err(EngineError::BadExeclistState { value: 0x08 })
        );
        assert_eq!(
            bad(&|b| b[73] = 0x01),
            Err(EngineError::BadExeclistState { value: 0x01 })
        );
        assert_eq!(bad(&|b| b[73] = 0x0D), Ok(()));
        assert_eq!(bad(&|b| b[73] = 0x06), Ok(()));
        assert_eq!(
            bad(&|b| b[148] = 0),
            Err(EngineError::Malformed { at: 148 })
        );
        assert_eq!(
            bad(&|b| b[149] = 2),
            Err(EngineError::Malformed { at: 149 })
        );
        assert_eq!(
            bad(&|b| b[150] = 1),
            Err(EngineError::Malformed { at: 149 })
        );
        assert_eq!(
            bad(&|b| b.push(0)),
            Err(EngineError::TrailingBytes { at: 168 })
        );
        // Queue length that claims more records than present.
        assert_eq!(
            bad(&|b| b[144] = 2),
            Err(EngineError::Malformed { at: 148 })
        );
        // A rejected apply leaves state unchanged.
        let mut t = Engines::new(EngineMask::RCS.with(EngineId::Vecs));
        t.enqueue(wl(EngineId::Rcs, 7)).unwrap();
        let before = t.clone();
        let mut b = good.clone();
        b[6] = 6;
        assert!(t.apply(&b).is_err());
        assert_eq!(t, before);
        // Apply needs nothing in flight on the target.
        assert_eq!(
            t.next_to_dispatch(EngineId::Rcs),
            Some(wl(EngineId::Rcs, 7))
        );
        assert_eq!(
            t.apply(&good),
            Err(EngineError::NotQuiesced { in_flight: 1 })
        );
    }

    fn sub(ctx: u32, schedule_in: bool) -> Workload {
        Workload {
            engine: EngineId::Rcs,
            desc: ContextDescriptor::from_bits(0x119 | (u64::from(ctx) << 32)),
            ring_head: 0,
            ring_tail: 0x40,
            schedule_in,
        }
    }

    #[test]
    fn execlist_status_follows_slots() {
        let mut e = Engines::new(EngineMask::RCS);
        let st = |e: &Engines| e.engine(EngineId::Rcs).unwrap().execlist_status();
        assert_eq!(st(&e), 0x0000_0000_0001_0000);
        e.enqueue(sub(0xA, true)).unwrap();
        e.enqueue(sub(0xB, false)).unwrap();
        e.enqueue(sub(0xC, true)).unwrap();
        e.next_to_dispatch(EngineId::Rcs).unwrap();
        // Slot 0 active, element 0, write pointer 1, next submission queued (full).
        assert_eq!(st(&e), 0x0000_000A_0005_4016);
        e.engine_mut(EngineId::Rcs)
            .unwrap()
            .csb
            .push(CsbEntry::new().with_idle_to_active(true));
        assert_eq!(st(&e), 0x0000_000A_0005_4036);
        e.complete(EngineId::Rcs).unwrap();
        // Element switch: element 1 (queued) is now the running context.
        assert_eq!(st(&e), 0x0000_000B_0005_8036);
        let el = e.engine(EngineId::Rcs).unwrap().execlist;
        assert_eq!(
            (el.active(), el.current(), el.write(), el.element()),
            (true, 0, 1, 1)
        );
        assert_eq!(el.to_byte(), 0x0D);
        e.next_to_dispatch(EngineId::Rcs).unwrap();
        e.complete(EngineId::Rcs).unwrap();
        e.engine_mut(EngineId::Rcs).unwrap().csb.push(
            CsbEntry::new()
                .with_active_to_idle(true)
                .with_complete(true),
        );
        // Schedule-out: idle, pointers stay; reason = complete | active-to-idle.
        assert_eq!(st(&e), 0x0000_0000_0001_0302);
        e.next_to_dispatch(EngineId::Rcs).unwrap();
        // The next submission takes slot 1.
        assert_eq!(st(&e), 0x0000_000C_0003_4309);
        e.complete(EngineId::Rcs).unwrap();
        assert_eq!(e.engine(EngineId::Rcs).unwrap().execlist.to_byte(), 0x02);
        // Mirrored into the vregs next to the CSB.
        let mut store = vec![0u32; mmio::MMIO_DWORDS];
        let mut regs = RegFile::new(&mmio::SKL, &mut store).unwrap();
        e.mirror(&mut regs);
        assert_eq!(regs.peek(0x2234), 0x0001_0301);
        assert_eq!(regs.peek(0x2238), 0);
        assert_eq!(regs.peek(0x23A0), 0x0001);
        assert_eq!(ExeclistState::from_byte(0x02).unwrap().to_byte(), 0x02);
    }

    #[test]
    fn execlist_state_survives_save_apply() {
        let mut src = Engines::new(EngineMask::RCS);
        src.enqueue(sub(1, true)).unwrap();
        src.enqueue(sub(2, false)).unwrap();
        src.next_to_dispatch(EngineId::Rcs).unwrap();
        let _ = src.quiesce();
        src.complete(EngineId::Rcs).unwrap();
        let bytes = saved(&src);
        assert_eq!(bytes[73], 0x0D);
        let mut dst = Engines::new(EngineMask::RCS);
        let _ = dst.quiesce();
        dst.apply(&bytes).unwrap();
        assert_eq!(dst, src);
        let st = |e: &Engines| e.engine(EngineId::Rcs).unwrap().execlist_status();
        assert_eq!(st(&dst), 0x0000_0002_0005_8012);
        assert_eq!(st(&dst), st(&src));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Elsp(usize, u32),
        Enqueue(usize, u32, bool),
        Dispatch(usize),
        Complete(usize),
        CsbPush(usize, u64),
        ReadPtr(usize, u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let e = 0usize..5;
        prop_oneof![
            (e.clone(), any::<u32>()).prop_map(|(e, d)| Op::Elsp(e, d)),
            (e.clone(), any::<u32>(), any::<bool>()).prop_map(|(e, c, s)| Op::Enqueue(e, c, s)),
            e.clone().prop_map(Op::Dispatch),
            e.clone().prop_map(Op::Complete),
            (e.clone(), any::<u64>()).prop_map(|(e, c)| Op::CsbPush(e, c)),
            (e, 0u8..8).prop_map(|(e, r)| Op::ReadPtr(e, r)),
        ]
    }

    /// Runs one operation and returns everything it observably produced.
    fn step(e: &mut Engines, op: &Op) -> Vec<u64> {
        let id = |i: usize| EngineId::ALL[i];
        let out = match *op {
            Op::Elsp(i, d) => match e.elsp_write(id(i), d) {
                Ok(Some([a, b])) => vec![1, a.into_bits(), b.into_bits()],
                Ok(None) => vec![0],
                Err(_) => vec![2],
            },
            Op::Enqueue(i, ctx, si) => {
                let w = Workload {
                    engine: id(i),
                    desc: ContextDescriptor::from_bits(0x119 | (u64::from(ctx) << 32)),
                    ring_head: ctx & 0xFF0,
                    ring_tail: 0x40,
                    schedule_in: si,
                };
                vec![u64::from(e.enqueue(w).is_ok())]
            }
            Op::Dispatch(i) => vec![e.next_to_dispatch(id(i)).map_or(0, |w| w.desc.into_bits())],
            Op::Complete(i) => vec![e.complete(id(i)).map_or(0, |w| w.desc.into_bits())],
            Op::CsbPush(i, c) => match e.engine_mut(id(i)) {
                Some(eng) => {
                    let (idx, wp) = eng.csb.push(CsbEntry::from_bits(c));
                    vec![u64::from(idx), u64::from(wp)]
                }
                None => vec![9],
            },
            Op::ReadPtr(i, r) => match e.engine_mut(id(i)) {
                Some(eng) => vec![u64::from(eng.csb.set_read_ptr(r).is_ok())],
                None => vec![9],
            },
        };
        let mut out = out;
        for i in e.present().iter() {
            out.push(e.engine(i).unwrap().execlist_status());
        }
        out
    }

    #[derive(Debug, Clone)]
    struct EngineSpec {
        elsp: Vec<u32>,
        csb: Vec<u64>,
        rp: u8,
        queue: Vec<(u64, u32, u32, bool)>,
    }

    fn spec() -> impl proptest::strategy::Strategy<Value = EngineSpec> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(any::<u32>(), 0..8),
            proptest::collection::vec(any::<u64>(), 0..14),
            prop_oneof![0u8..6, Just(7u8)],
            proptest::collection::vec(
                (any::<u64>(), any::<u32>(), any::<u32>(), any::<bool>()),
                0..=QUEUE_CAPACITY,
            ),
        )
            .prop_map(|(elsp, csb, rp, queue)| EngineSpec {
                elsp,
                csb,
                rp,
                queue,
            })
    }

    proptest::proptest! {
        #[test]
        fn round_trip(mask in 1u8..32, specs in proptest::collection::vec(spec(), 5)) {
            let present = EngineId::ALL
                .iter()
                .filter(|e| mask & (1 << e.index()) != 0)
                .fold(EngineMask::EMPTY, |m, e| m.with(*e));
            let mut src = Engines::new(present);
            for id in present.iter() {
                let s = &specs[id.index()];
                for d in &s.elsp {
                    src.elsp_write(id, *d).unwrap();
                }
                let eng = src.engine_mut(id).unwrap();
                for c in &s.csb {
                    eng.csb.push(CsbEntry::from_bits(*c));
                }
                eng.csb.set_read_ptr(s.rp).unwrap();
                for (d, h, t, si) in &s.queue {
                    src.enqueue(Workload {
                        engine: id,
                        desc: ContextDescriptor::from_bits(*d),
                        ring_head: *h,
                        ring_tail: *t,
                        schedule_in: *si,
                    }).unwrap();
                }
            }
            let _ = src.quiesce();
            let bytes = saved(&src);
            proptest::prop_assert!(bytes.len() <= MAX_SAVE_LEN);
            let mut dst = Engines::new(present);
            dst.enqueue(wl(present.iter().next().unwrap(), 3)).unwrap();
            let _ = dst.quiesce();
            dst.apply(&bytes).unwrap();
            proptest::prop_assert_eq!(&dst, &src);
            proptest::prop_assert_eq!(saved(&dst), bytes);
        }

        #[test]
        fn interleavings_survive_save_apply(
            mask in 1u8..32,
            prefix in proptest::collection::vec(op(), 0..80),
            suffix in proptest::collection::vec(op(), 0..80),
        ) {
            let present = EngineId::ALL
                .iter()
                .filter(|e| mask & (1 << e.index()) != 0)
                .fold(EngineMask::EMPTY, |m, e| m.with(*e));
            let mut src = Engines::new(present);
            for o in &prefix {
                step(&mut src, o);
            }
            // Quiesce and let in-flight work complete, as the source does before saving.
            let _ = src.quiesce();
            for id in present.iter() {
                src.complete(id);
            }
            proptest::prop_assert!(src.quiesce().is_idle());
            let bytes = saved(&src);
            let mut dst = Engines::new(present);
            let _ = dst.quiesce();
            dst.apply(&bytes).unwrap();
            proptest::prop_assert_eq!(&dst, &src);
            src.resume();
            dst.resume();
            for o in &suffix {
                proptest::prop_assert_eq!(step(&mut src, o), step(&mut dst, o));
            }
            proptest::prop_assert_eq!(&dst, &src);
        }

        #[test]
        fn validate_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let e = Engines::new(EngineMask::ALL);
            let _ = e.validate(&bytes);
        }
    }
}
