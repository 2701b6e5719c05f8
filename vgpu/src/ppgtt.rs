//! PPGTTs the guest announced through PVINFO, and their migration.
//!
//! Only the guest's root pointers and their level travel (record `PPGTT_ROOTS`); the page tables
//! live in guest memory and arrive with it, and shadows are rebuilt from them on the destination.
//! The destination walks every announced table tree before it accepts the roots: a tree that
//! loops back on itself, or whose tables or pages lie outside the guest's memory, is refused.
//!
//! Payload (little-endian): `count: u32` (≤ [`MAX_PPGTTS`]), `reserved: u32` (0), then per PPGTT
//! 40 bytes: `level: u8` (3 or 4), `present: u8` (4-level: 1; 3-level: which of the four root
//! pointers are present, bits 0..3), 6 reserved bytes (0), then four `u64` guest frame numbers
//! of the root tables (4-level: the PML4 in the first, zeros after; 3-level: the four page
//! directories, zero where not present).

use core::cell::Cell;
use core::ops::ControlFlow;

use gmem::GuestMemoryMap;
use gtt::{
    Entered, Generation, Gfn, Gpa, PpgttRoot, ReadGuest, RootTables, TableKind, TableMemo,
    VisitLimits, check_tables, visit_leaves,
};

use migstream::{RecordKind, Saved, Section};

use crate::error::VgpuError;
use crate::instance::Vgpu;
use crate::traits::GuestMemory;

/// PPGTTs a vGPU tracks.
pub const MAX_PPGTTS: usize = 16;
const HEADER: usize = 8;
const ENTRY: usize = 40;

/// The PPGTTs of a vGPU.
pub type PpgttList = heapless::Vec<PpgttRoot, MAX_PPGTTS>;

/// Guest memory as gtt's page-table walks read it ([`ReadGuest`]): each 8-byte entry read
/// straight from [`GuestMemory`], no cache. A device model that translates PPGTT addresses at
/// run time walks with it, for example the reference device (crate `vgpu-mig-sim`):
/// `gtt::ppgtt::walk(&root, gva, &Walker::new(&vgpu, &memory))`. A frame outside the vGPU's
/// memory map ([`Vgpu::memory_map`]) is absent, so a walk that reaches one fails instead of
/// reading anything else. (The
/// destination's checks of migrated roots use a caching walker of their own: a stream's roots
/// are checked while guest memory does not change.)
#[derive(Clone, Copy)]
pub struct Walker<'m> {
    map: &'m GuestMemoryMap,
    mem: &'m dyn GuestMemory,
}

impl<'m> Walker<'m> {
    /// A walker over `mem`, bounded by `vgpu`'s memory map.
    #[must_use]
    pub fn new(vgpu: &'m Vgpu<'_>, mem: &'m dyn GuestMemory) -> Self {
        Self {
            map: vgpu.memory_map(),
            mem,
        }
    }
}

impl core::fmt::Debug for Walker<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Walker").finish_non_exhaustive()
    }
}

impl ReadGuest for Walker<'_> {
    fn read_u64(&self, gpa: Gpa) -> Option<u64> {
        let gfn = gpa.gfn();
        if !self.map.contains(gfn) {
            return None;
        }
        let mut b = [0u8; 8];
        self.mem
            .read(gfn, usize::try_from(gpa.page_offset()).ok()?, &mut b)
            .ok()?;
        Some(u64::from_le_bytes(b))
    }

    fn contains(&self, gfn: Gfn) -> bool {
        self.map.contains(gfn)
    }
}

/// [`Walker`] that keeps the four table pages it used last (the depth of a walk's path; the
/// least recently used one is replaced): a walk reads a table's entries one after
/// another, so it reads guest memory about once per table instead of once per entry. Guest memory
/// does not change while a stream's roots are checked.
struct PageWalker<'m> {
    map: &'m GuestMemoryMap,
    mem: &'m dyn GuestMemory,
    pages: core::cell::RefCell<PageCache>,
}

struct PageCache {
    frames: [Option<Gfn>; 4],
    data: [[u8; 4096]; 4],
    /// When each slot was last used (a counter of reads).
    used: [u64; 4],
    clock: u64,
}

impl PageWalker<'_> {
    fn new<'m>(map: &'m GuestMemoryMap, mem: &'m dyn GuestMemory) -> PageWalker<'m> {
        PageWalker {
            map,
            mem,
            pages: core::cell::RefCell::new(PageCache {
                frames: [None; 4],
                data: [[0; 4096]; 4],
                used: [0; 4],
                clock: 0,
            }),
        }
    }
}

impl ReadGuest for PageWalker<'_> {
    fn read_u64(&self, gpa: Gpa) -> Option<u64> {
        let gfn = gpa.gfn();
        let at = usize::try_from(gpa.page_offset()).ok()?;
        let mut c = self.pages.try_borrow_mut().ok()?;
        let slot = match c.frames.iter().position(|f| *f == Some(gfn)) {
            Some(slot) => slot,
            None => {
                if !self.map.contains(gfn) {
                    return None;
                }
                let slot = (0..4).min_by_key(|&i| c.used.get(i).copied())?;
                *c.frames.get_mut(slot)? = None;
                self.mem.read(gfn, 0, c.data.get_mut(slot)?).ok()?;
                *c.frames.get_mut(slot)? = Some(gfn);
                slot
            }
        };
        c.clock += 1;
        let now = c.clock;
        *c.used.get_mut(slot)? = now;
        let b = c.data.get(slot)?.get(at..at + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn contains(&self, gfn: Gfn) -> bool {
        self.map.contains(gfn)
    }
}

/// The longest payload: [`MAX_PPGTTS`] entries.
pub const PAYLOAD_MAX: usize = HEADER + MAX_PPGTTS * ENTRY;

/// Bytes of the payload for `list`.
pub fn payload_len(list: &PpgttList) -> usize {
    HEADER + list.len() * ENTRY
}

/// Write the payload.
pub fn save(list: &PpgttList, out: &mut [u8]) -> Result<usize, VgpuError> {
    let len = payload_len(list);
    let out = out.get_mut(..len).ok_or(VgpuError::StorageSize)?;
    out.fill(0);
    let count = u32::try_from(list.len()).map_err(|_| VgpuError::StorageSize)?;
    out.get_mut(..4)
        .ok_or(VgpuError::StorageSize)?
        .copy_from_slice(&count.to_le_bytes());
    for (root, e) in list.iter().zip(
        out.get_mut(HEADER..)
            .unwrap_or_default()
            .chunks_exact_mut(ENTRY),
    ) {
        let (level, present, frames) = match root.tables {
            RootTables::FourLevel(pml4) => (4u8, 1u8, [pml4.get(), 0, 0, 0]),
            RootTables::ThreeLevel(pds) => {
                let mut mask = 0u8;
                let mut f = [0u64; 4];
                for (i, pd) in pds.iter().enumerate() {
                    if let (Some(pd), Some(slot)) = (pd, f.get_mut(i)) {
                        mask |= 1 << i;
                        *slot = pd.get();
                    }
                }
                (3, mask, f)
            }
        };
        if let Some(h) = e.get_mut(..2) {
            h.copy_from_slice(&[level, present]);
        }
        for (i, f) in frames.iter().enumerate() {
            if let Some(d) = e.get_mut(8 + 8 * i..16 + 8 * i) {
                d.copy_from_slice(&f.to_le_bytes());
            }
        }
    }
    Ok(len)
}

/// Bytes of the table memo [`validate`] needs for a guest of `frames` frames: one per frame.
pub fn memo_len(frames: u64) -> usize {
    usize::try_from(frames).unwrap_or(usize::MAX)
}

/// The tables a [`validate`] has entered: one byte per guest frame (by dense index), a bit per
/// [`TableKind`].
struct Memo<'a> {
    map: &'a GuestMemoryMap,
    buf: &'a [Cell<u8>],
}

const fn kind_bit(kind: TableKind) -> u8 {
    match kind {
        TableKind::Pml4 => 1,
        TableKind::Pdp => 2,
        TableKind::Pd => 4,
        TableKind::Pt => 8,
        TableKind::Pt64K => 16,
    }
}

impl TableMemo for Memo<'_> {
    fn enter(&mut self, table: Gfn, kind: TableKind) -> Entered {
        // A frame outside guest memory is never marked: its table cannot be read (a fault).
        let Some(b) = self.map.index_of(table).and_then(|i| self.buf.get(i)) else {
            return Entered::New;
        };
        let had = b.get();
        let bit = kind_bit(kind);
        let same_level = if kind.level() == gtt::Level::Pt {
            kind_bit(TableKind::Pt) | kind_bit(TableKind::Pt64K)
        } else {
            bit
        };
        if had & !same_level != 0 {
            Entered::OtherLevel
        } else if had & bit != 0 {
            Entered::Again
        } else {
            b.set(had | bit);
            Entered::New
        }
    }
}

/// Parse and check a payload: its layout, and that every announced tree lies in guest memory
/// (`map`, read through `mem`),
/// has no loop and no entry with reserved bits, walked with 64 KiB pages enabled or not as
/// `ips_64k` says (the migrated `GAMW_ECO_DEV_RW_IA`). The trees are checked together
/// ([`gtt::check_tables`] over `memo`, at least [`memo_len`] bytes of caller storage): a table
/// page shared by several roots or entries is read once per kind, so the whole check reads at
/// most about two table pages' entries per guest frame, whatever the payload says; a page that
/// serves as a table at two levels is refused (SPEC.md A.4).
///
/// # Errors
/// [`VgpuError::BadPpgtt`] for a payload or tree no source sends;
/// [`VgpuError::StagingFull`] if `memo` is shorter than [`memo_len`].
pub fn validate(
    payload: &[u8],
    generation: Generation,
    ips_64k: bool,
    map: &GuestMemoryMap,
    mem: &dyn GuestMemory,
    memo: &[Cell<u8>],
) -> Result<PpgttList, VgpuError> {
    let bad = VgpuError::BadPpgtt;
    let needed = memo_len(map.frames());
    let memo = memo
        .get(..needed)
        .ok_or(VgpuError::StagingFull { needed })?;
    memo.iter().for_each(|b| b.set(0));
    let mut memo = Memo { map, buf: memo };
    let (head, body) = payload.split_at_checked(HEADER).ok_or(bad)?;
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|x| x.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let count = head
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let count = usize::try_from(count).map_err(|_| bad)?;
    if head.get(4..8) != Some(&[0, 0, 0, 0][..])
        || count > MAX_PPGTTS
        || body.len() != count * ENTRY
    {
        return Err(bad);
    }
    let mut list = PpgttList::new();
    for e in body.chunks_exact(ENTRY) {
        let (level, present) = (
            e.first().copied().unwrap_or(0),
            e.get(1).copied().unwrap_or(0),
        );
        if e.get(2..8) != Some(&[0u8; 6][..]) {
            return Err(bad);
        }
        let frames = [word(e, 8), word(e, 16), word(e, 24), word(e, 32)];
        let root = match (level, present) {
            (4, 1) if frames.get(1..) == Some(&[0, 0, 0][..]) => {
                PpgttRoot::four_level(generation, Gfn::new(frames[0]))
            }
            // A 3-level PPGTT has at least one page directory (the guest announces none without).
            (3, m) if m & !0xF == 0 && m != 0 => {
                let mut pds = [None; 4];
                for (i, (pd, f)) in pds.iter_mut().zip(frames).enumerate() {
                    if m & (1 << i) != 0 {
                        *pd = Some(Gfn::new(f));
                    } else if f != 0 {
                        return Err(bad);
                    }
                }
                PpgttRoot::three_level(generation, pds)
            }
            _ => return Err(bad),
        }
        .with_ips(ips_64k);
        // The vGPU records each announced PPGTT once: a second copy is not a source's.
        if list.contains(&root) {
            return Err(bad);
        }
        check_tree_in(&root, map, mem, Some(&mut memo))?;
        list.push(root).map_err(|_| bad)?;
    }
    Ok(list)
}

/// Walk a tree: no loop, no fault (tables and pages inside guest memory, no reserved bits), within
/// the walker's budget.
pub(crate) fn check_tree(
    root: &PpgttRoot,
    map: &GuestMemoryMap,
    mem: &dyn GuestMemory,
) -> Result<(), VgpuError> {
    check_tree_in(root, map, mem, None)
}

/// [`check_tree`], or with `memo` for one root of a set checked together ([`validate`]).
fn check_tree_in(
    root: &PpgttRoot,
    map: &GuestMemoryMap,
    mem: &dyn GuestMemory,
    memo: Option<&mut Memo<'_>>,
) -> Result<(), VgpuError> {
    let roots_ok = match root.tables {
        RootTables::FourLevel(pml4) => map.contains(pml4),
        RootTables::ThreeLevel(pds) => pds.iter().flatten().all(|pd| map.contains(*pd)),
    };
    if !roots_ok {
        return Err(VgpuError::BadPpgtt);
    }
    let walker = PageWalker::new(map, mem);
    let summary = match memo {
        Some(memo) => check_tables(root, &walker, VisitLimits::DEFAULT, memo),
        None => visit_leaves(root, &walker, VisitLimits::DEFAULT, |_| {
            ControlFlow::Continue(())
        }),
    };
    if summary.cycles != 0 || summary.faults != 0 || summary.truncated {
        return Err(VgpuError::BadPpgtt);
    }
    Ok(())
}

/// The `PPGTT_ROOTS` record (SPEC.md Appendix A.4b): the roots of the guest's PPGTTs. Their
/// tables travel with guest memory; a reader walks every announced tree ([`validate`]) before it
/// takes the roots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PpgttRootsSection;

/// What a `PPGTT_ROOTS` payload is checked against: the receiving generation, whether 64 KiB
/// pages are enabled (from the migrated registers), and guest memory, where the trees are walked
/// (the vGPU's memory map and the backend that reads it).
#[derive(Clone, Copy)]
pub struct RootsCheck<'a> {
    /// The PPGTT format.
    pub generation: Generation,
    /// Whether the guest's device walks with 64 KiB pages enabled.
    pub ips_64k: bool,
    /// The guest's memory map ([`Vgpu::memory_map`]).
    pub map: &'a GuestMemoryMap,
    /// Guest memory.
    pub mem: &'a dyn GuestMemory,
    /// The table memo the trees are checked together with: at least [`memo_len`] bytes of caller
    /// storage, as cells (`Cell::from_mut(buf).as_slice_of_cells()`).
    pub memo: &'a [Cell<u8>],
}

impl core::fmt::Debug for RootsCheck<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RootsCheck")
            .field("generation", &self.generation)
            .field("ips_64k", &self.ips_64k)
            .finish_non_exhaustive()
    }
}

impl Section for PpgttRootsSection {
    const KIND: RecordKind = RecordKind::PPGTT_ROOTS;
    const VERSION: u8 = 1;

    type Error = VgpuError;
    type Config<'a> = ();
    type Source<'a> = &'a PpgttList;
    type Check<'a> = RootsCheck<'a>;
    type Checked = PpgttList;
    type Target<'a, 'b>
        = (&'a mut Vgpu<'b>, RootsCheck<'a>)
    where
        'b: 'a;

    fn max_len(_: &()) -> usize {
        HEADER + ENTRY * MAX_PPGTTS
    }

    fn save(list: &&PpgttList, _from: usize, out: &mut [u8]) -> Result<Saved, VgpuError> {
        save(list, out).map(Saved::whole)
    }

    fn validate(check: &RootsCheck<'_>, payload: &[u8]) -> Result<PpgttList, VgpuError> {
        validate(
            payload,
            check.generation,
            check.ips_64k,
            check.map,
            check.mem,
            check.memo,
        )
    }

    fn apply((vgpu, check): Self::Target<'_, '_>, payload: &[u8]) -> Result<(), VgpuError> {
        let list = Self::validate(&check, payload)?;
        vgpu.set_ppgtts(list);
        Ok(())
    }
}
