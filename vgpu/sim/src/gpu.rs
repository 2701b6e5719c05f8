//! The software GPU: executes workloads the vGPU's execlist emulation queued.

use engines::{ContextDescriptor, CsbEntry, EngineId, HWSP_CSB_DWORD, HwspLayout, lrc_dword};
use gtt::{Gfn, GmAddr, Gva, PpgttRoot};
use mmio::{AccessSize, NoHooks};

use crate::cmd;
use vgpu::instance::Vgpu;
use vgpu::ppgtt::Walker;
use vgpu::traits::GuestMemory;

/// Counters of the reference GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Commands executed.
    pub commands: u64,
    /// Workloads completed.
    pub workloads: u64,
    /// Commands refused (unknown opcode, unmapped address, a PPGTT address without a PPGTT): the
    /// workload is ended.
    pub faults: u64,
    /// Dword writes to graphics memory (store, flush, pipe-control post-sync).
    pub stores: u64,
    /// Those of them addressed through the context's PPGTT.
    pub ppgtt_stores: u64,
    /// Pages filled by SIM_FILL.
    pub filled_pages: u64,
    /// 2D blits executed.
    pub blits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exec {
    desc: ContextDescriptor,
    state_page: Gfn,
    start: u64,
    size: u32,
    /// Ring head offset in bytes.
    head: u32,
    tail: u32,
    /// Next dword of the active batch buffer, if one runs.
    batch: Option<u64>,
    /// Whether that batch is fetched through the PPGTT.
    batch_ppgtt: bool,
    /// The context's PPGTT (from its register-state page and descriptor), if it has one.
    ppgtt: Option<PpgttRoot>,
    /// A SIM_FILL in progress: it takes GPU time in proportion to the pages it writes.
    fill: Option<Fill>,
}

/// Progress of a SIM_FILL command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fill {
    base: u64,
    next: u32,
    pages: u32,
    seed: u32,
}

/// The reference GPU. Its only state is the work in flight, which quiesce drains before a save.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefGpu {
    exec: [Option<Exec>; 5],
    /// Pages a SIM_FILL writes per step (the GPU's fill rate; 0 = unlimited).
    pub fill_pages_per_step: u32,
    /// Counters.
    pub stats: GpuStats,
}

/// The address space a command's graphics address lies in.
#[derive(Clone, Copy)]
enum Space {
    /// The global GTT.
    Ggtt,
    /// The context's PPGTT.
    Ppgtt(PpgttRoot),
    /// A PPGTT address in a context without a PPGTT: every access faults.
    NoPpgtt,
}

enum Step {
    Continue,
    Done,
    Fault,
}

/// GT interrupt register block and bit position of an engine's context-switch interrupt.
fn irq_bits(id: EngineId) -> (u32, u32) {
    match id {
        EngineId::Rcs => (0x44300, 8),
        EngineId::Bcs => (0x44300, 24),
        EngineId::Vcs => (0x44310, 8),
        EngineId::Vcs2 => (0x44310, 24),
        EngineId::Vecs => (0x44330, 8),
    }
}

/// A blit rectangle: top-left pixel, size in pixels, row pitch in bytes (32 bits per pixel).
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    pitch: u32,
}

/// Largest surface a blit may touch (the limit GVT-g's command parser applies).
const MAX_BLT_BYTES: u64 = 36 << 20;

impl Rect {
    /// From BR13 (bits 25:24 colour depth, 3 = 32 bpp; 15:0 pitch) and the corner dwords.
    fn of(br13: u32, top_left: u32, bottom_right: u32) -> Option<Rect> {
        if (br13 >> 24) & 3 != 3 {
            return None;
        }
        let (x, y) = (top_left & 0xFFFF, top_left >> 16);
        let (x2, y2) = (bottom_right & 0xFFFF, bottom_right >> 16);
        let r = Rect {
            x,
            y,
            w: x2.checked_sub(x)?,
            h: y2.checked_sub(y)?,
            pitch: br13 & 0xFFFF,
        };
        let span = u64::from(r.y + r.h) * u64::from(r.pitch);
        (r.w > 0
            && r.h > 0
            && u64::from(r.x + r.w) * 4 <= u64::from(r.pitch)
            && span <= MAX_BLT_BYTES)
            .then_some(r)
    }

    /// Byte offset of row `row` of the rectangle from the surface base.
    fn row_offset(&self, row: u32) -> u64 {
        u64::from(self.y + row) * u64::from(self.pitch) + u64::from(self.x) * 4
    }
}

impl RefGpu {
    /// Write `data` at graphics address `addr`, across pages.
    fn write_span(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        addr: u64,
        data: &[u8],
    ) -> bool {
        let mut done = 0;
        while done < data.len() {
            let a = addr + done as u64;
            let n = (4096 - (a % 4096) as usize).min(data.len() - done);
            if !self.store(
                vgpu,
                mem,
                (a, Space::Ggtt),
                data.get(done..done + n).unwrap_or(&[]),
            ) {
                return false;
            }
            done += n;
        }
        true
    }

    /// Read `out.len()` bytes at graphics address `addr`, across pages.
    fn read_span(vgpu: &Vgpu<'_>, mem: &dyn GuestMemory, addr: u64, out: &mut [u8]) -> bool {
        let mut done = 0;
        while done < out.len() {
            let a = addr + done as u64;
            let n = (4096 - (a % 4096) as usize).min(out.len() - done);
            let Some((gfn, off)) = vgpu.translate(GmAddr::new(a)) else {
                return false;
            };
            let Some(dst) = out.get_mut(done..done + n) else {
                return false;
            };
            if mem.read(gfn, off, dst).is_err() {
                return false;
            }
            done += n;
        }
        true
    }

    fn color_blt(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        r: Rect,
        base: u64,
        color: u32,
    ) -> Step {
        let mut row = [0u8; 4 * 4096];
        let Some(bytes) = row.get_mut(..r.w as usize * 4) else {
            return Step::Fault;
        };
        for px in bytes.chunks_exact_mut(4) {
            px.copy_from_slice(&color.to_le_bytes());
        }
        for y in 0..r.h {
            if !self.write_span(vgpu, mem, base + r.row_offset(y), bytes) {
                return Step::Fault;
            }
        }
        self.stats.blits += 1;
        Step::Continue
    }

    fn copy_blt(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        dst: Rect,
        dst_base: u64,
        src: Rect,
        src_base: u64,
    ) -> Step {
        let mut row = [0u8; 4 * 4096];
        let Some(bytes) = row.get_mut(..dst.w as usize * 4) else {
            return Step::Fault;
        };
        if u64::from(src.y + dst.h) * u64::from(src.pitch) > MAX_BLT_BYTES
            || u64::from(src.x + dst.w) * 4 > u64::from(src.pitch)
        {
            return Step::Fault;
        }
        for y in 0..dst.h {
            if !Self::read_span(vgpu, mem, src_base + src.row_offset(y), bytes)
                || !self.write_span(vgpu, mem, dst_base + dst.row_offset(y), bytes)
            {
                return Step::Fault;
            }
        }
        self.stats.blits += 1;
        Step::Continue
    }

    /// Write the next pages of the fill in progress, at most `budget` of them. `Some(true)` when the
    /// fill is complete, `Some(false)` when the budget ran out first, `None` on a fault.
    fn continue_fill(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        exec: &mut Exec,
        budget: &mut u32,
    ) -> Option<bool> {
        let mut f = exec.fill?;
        let mut page = [0u8; 4096];
        while f.next < f.pages {
            if *budget == 0 {
                exec.fill = Some(f);
                return Some(false);
            }
            let p = u64::from(f.next);
            for (i, chunk) in page.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(
                    &cmd::fill_pattern(f.seed, p, u32::try_from(i).unwrap_or(0)).to_le_bytes(),
                );
            }
            if !self.store(vgpu, mem, (f.base + p * 4096, Space::Ggtt), &page) {
                exec.fill = None;
                return None;
            }
            self.stats.filled_pages += 1;
            f.next += 1;
            *budget -= 1;
        }
        exec.fill = None;
        Some(true)
    }

    /// An idle GPU.
    pub fn new() -> Self {
        // 64 pages per 100 µs step: 2.4 GiB/s, so a 3D frame's 32 MiB keeps the GPU busy for
        // about 13 of its 16.7 ms.
        Self {
            fill_pages_per_step: 64,
            ..Self::default()
        }
    }

    /// Whether any engine runs a workload.
    pub fn busy(&self) -> bool {
        self.exec.iter().any(Option::is_some)
    }

    /// Execute up to `budget` commands per engine: dispatch queued workloads, run their ring and batch
    /// commands through the GGTT, complete them (CSB entry, HWSP mirror, interrupt). Returns the
    /// commands executed.
    pub fn step(&mut self, vgpu: &mut Vgpu<'_>, mem: &mut dyn GuestMemory, budget: u32) -> u32 {
        let mut done = 0;
        for id in EngineId::ALL {
            let i = id.index();
            let Some(slot) = self.exec.get(i).copied() else {
                continue;
            };
            let mut exec = match slot {
                Some(e) => e,
                None => match vgpu.engines_mut().next_to_dispatch(id) {
                    Some(w) => match Self::start(
                        vgpu,
                        mem,
                        id,
                        w.desc,
                        w.ring_head,
                        w.ring_tail,
                        w.schedule_in,
                    ) {
                        Some(e) => e,
                        None => {
                            self.stats.faults += 1;
                            Self::finish(vgpu, mem, id, w.desc, None);
                            continue;
                        }
                    },
                    None => continue,
                },
            };
            let mut n = 0;
            let mut outcome = Step::Continue;
            let mut page_budget = if self.fill_pages_per_step == 0 {
                u32::MAX
            } else {
                self.fill_pages_per_step
            };
            while n < budget {
                if exec.fill.is_some() {
                    match self.continue_fill(vgpu, mem, &mut exec, &mut page_budget) {
                        Some(true) => continue,
                        Some(false) => break, // this step's fill budget is spent
                        None => {
                            outcome = Step::Fault;
                            break;
                        }
                    }
                }
                if exec.batch.is_none() && exec.head == exec.tail {
                    outcome = Step::Done;
                    break;
                }
                n += 1;
                match self.execute(vgpu, mem, &mut exec) {
                    Step::Continue => {}
                    other => {
                        outcome = other;
                        break;
                    }
                }
            }
            if exec.batch.is_none() && exec.head == exec.tail && exec.fill.is_none() {
                outcome = Step::Done;
            }
            self.stats.commands += u64::from(n);
            done += n;
            let slot = self.exec.get_mut(i);
            match outcome {
                Step::Continue => {
                    if let Some(s) = slot {
                        *s = Some(exec);
                    }
                }
                Step::Done | Step::Fault => {
                    if matches!(outcome, Step::Fault) {
                        self.stats.faults += 1;
                        exec.head = exec.tail;
                        exec.batch = None;
                    }
                    if let Some(s) = slot {
                        *s = None;
                    }
                    self.stats.workloads += 1;
                    Self::finish(vgpu, mem, id, exec.desc, Some(&exec));
                }
            }
        }
        done
    }

    /// Run until nothing is in flight (queued work stays queued while the vGPU is quiesced).
    /// Bounded: gives up after `max_commands` and returns false.
    pub fn drain(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        max_commands: u64,
    ) -> bool {
        let mut spent = 0u64;
        while vgpu.engines().in_flight() != 0 || (self.busy() && !vgpu.engines().is_quiesced()) {
            let n = self.step(vgpu, mem, 256);
            spent += u64::from(n.max(1));
            if spent > max_commands {
                return false;
            }
        }
        true
    }

    fn start(
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        id: EngineId,
        desc: ContextDescriptor,
        head: u32,
        tail: u32,
        schedule_in: bool,
    ) -> Option<Exec> {
        let ctx = vgpu.read_ring_context(id, &desc, mem)?;
        let size = (((ctx.ctl >> 12) & 0x1FF) + 1) * 4096;
        if schedule_in {
            let e = CsbEntry::new()
                .with_idle_to_active(true)
                .with_context_id(desc.context_id());
            Self::post_csb(vgpu, mem, id, e);
        }
        // The execlist status register follows the dispatch.
        vgpu.mirror_engines();
        vgpu.mark_gpu_active();
        let generation = vgpu.config().generation;
        let pd = |a: u64| (a != 0).then(|| Gfn::new(a >> 12));
        let ppgtt = match desc.addressing_mode().ppgtt_levels() {
            Some(4) => pd(ctx.pdp[0]).map(|pml4| PpgttRoot::four_level(generation, pml4)),
            Some(3) => {
                let [a, b, c, d] = ctx.pdp;
                Some(PpgttRoot::three_level(
                    generation,
                    [pd(a), pd(b), pd(c), pd(d)],
                ))
            }
            _ => None,
        }
        .map(|r| r.with_ips(vgpu.derived().ips_64k));
        Some(Exec {
            desc,
            state_page: ctx.state_page,
            start: u64::from(ctx.start & !0xFFF),
            size,
            head: (head & engines::HEAD_OFFSET_MASK) % size,
            tail: (tail & engines::TAIL_OFFSET_MASK) % size,
            batch: None,
            batch_ppgtt: false,
            ppgtt,
            fill: None,
        })
    }

    fn finish(
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        id: EngineId,
        desc: ContextDescriptor,
        exec: Option<&Exec>,
    ) {
        if let Some(x) = exec {
            // Context save: the ring head goes back into the guest's context image. The reference
            // device does not keep the head's wrap count (bits 31:21): it would make the image depend
            // on whether the next submission arrived before this one completed.
            let head = x.head;
            if mem
                .write(x.state_page, lrc_dword::RING_HEAD * 4, &head.to_le_bytes())
                .is_ok()
            {
                vgpu.mark_gpu_dirty(x.state_page);
            }
        }
        let _ = vgpu.engines_mut().complete(id);
        let e = CsbEntry::new()
            .with_complete(true)
            .with_active_to_idle(true)
            .with_context_id(desc.context_id());
        Self::post_csb(vgpu, mem, id, e);
    }

    /// Write a CSB entry: registers, the guest's hardware status page, then the interrupt bit.
    fn post_csb(vgpu: &mut Vgpu<'_>, mem: &mut dyn GuestMemory, id: EngineId, entry: CsbEntry) {
        let (index, wp) = match vgpu.engines_mut().engine_mut(id) {
            Some(e) => e.csb.push(entry),
            None => return,
        };
        vgpu.mirror_engines();
        let hws = vgpu.derived().hws_pga.get(id.index()).copied().unwrap_or(0);
        if hws != 0
            && let Some((gfn, _)) = vgpu.translate(GmAddr::new(u64::from(hws & !0xFFF)))
        {
            {
                let off = usize::try_from((HWSP_CSB_DWORD + 2 * u32::from(index)) * 4).unwrap_or(0);
                let wp_off = usize::try_from(HwspLayout::Gen8.write_ptr_dword() * 4).unwrap_or(0);
                let ok = mem
                    .write(gfn, off, &entry.into_bits().to_le_bytes())
                    .is_ok()
                    && mem.write(gfn, wp_off, &u32::from(wp).to_le_bytes()).is_ok();
                if ok {
                    vgpu.mark_gpu_dirty(gfn);
                }
            }
        }
        let (block, bit) = irq_bits(id);
        vgpu.raise_event(block, bit);
    }

    /// The address space a command names.
    fn space(exec: &Exec, ppgtt: bool) -> Space {
        match (ppgtt, exec.ppgtt) {
            (false, _) => Space::Ggtt,
            (true, Some(root)) => Space::Ppgtt(root),
            (true, None) => Space::NoPpgtt,
        }
    }

    /// Translate `addr` in `space` (through a PPGTT, a write also needs every level writable).
    fn translate(
        vgpu: &Vgpu<'_>,
        mem: &dyn GuestMemory,
        space: Space,
        addr: u64,
        write: bool,
    ) -> Option<(Gfn, usize)> {
        let root = match space {
            Space::Ggtt => return vgpu.translate(GmAddr::new(addr)),
            Space::Ppgtt(root) => root,
            Space::NoPpgtt => return None,
        };
        // The 64 KiB enable as the guest has it now (it may change while a context runs).
        let root = root.with_ips(vgpu.derived().ips_64k);
        let t = gtt::ppgtt::walk(&root, Gva::new(addr), &Walker::new(vgpu, mem)).ok()?;
        if write && !t.writable {
            return None;
        }
        let gfn = t.gpa.gfn();
        if !vgpu.memory_map().contains(gfn) {
            return None;
        }
        Some((gfn, usize::try_from(t.gpa.get() & 0xFFF).ok()?))
    }

    fn fetch(vgpu: &Vgpu<'_>, mem: &dyn GuestMemory, exec: &mut Exec) -> Option<u32> {
        let (addr, ppgtt) = match exec.batch {
            Some(a) => {
                exec.batch = Some(a + 4);
                (a, exec.batch_ppgtt)
            }
            None => {
                let a = exec.start + u64::from(exec.head);
                exec.head += 4;
                if exec.head >= exec.size {
                    exec.head = 0;
                }
                (a, false)
            }
        };
        let space = Self::space(exec, ppgtt);
        let (gfn, off) = Self::translate(vgpu, mem, space, addr, false)?;
        let mut b = [0u8; 4];
        mem.read(gfn, off, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }

    fn store(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &mut dyn GuestMemory,
        (addr, space): (u64, Space),
        data: &[u8],
    ) -> bool {
        let Some((gfn, off)) = Self::translate(vgpu, mem, space, addr, true) else {
            return false;
        };
        if matches!(space, Space::Ppgtt(_)) {
            self.stats.ppgtt_stores += 1;
        }
        if off + data.len() > 4096 || mem.write(gfn, off, data).is_err() {
            return false;
        }
        vgpu.mark_gpu_dirty(gfn);
        self.stats.stores += 1;
        true
    }

    /// MI_LOAD_REGISTER_IMM: `pairs` (offset, value) pairs, fetched and written one after the
    /// other through the register semantics (masked registers take masked writes), so a long
    /// LRI (up to 128 pairs) runs like a short one.
    fn load_register_imm(
        &mut self,
        vgpu: &mut Vgpu<'_>,
        mem: &dyn GuestMemory,
        exec: &mut Exec,
        pairs: u32,
    ) -> Step {
        for _ in 0..pairs {
            let (Some(off), Some(val)) =
                (Self::fetch(vgpu, mem, exec), Self::fetch(vgpu, mem, exec))
            else {
                return Step::Fault;
            };
            // Bits 22:2 name the register; bits 1:0 are reserved.
            if off & !0x7F_FFFC != 0
                || vgpu
                    .regs_mut()
                    .write(off, AccessSize::Dword, u64::from(val), &mut NoHooks)
                    .is_err()
            {
                return Step::Fault;
            }
        }
        Step::Continue
    }

    fn execute(&mut self, vgpu: &mut Vgpu<'_>, mem: &mut dyn GuestMemory, exec: &mut Exec) -> Step {
        let Some(dw0) = Self::fetch(vgpu, mem, exec) else {
            return Step::Fault;
        };
        let mut operands = [0u32; 10];
        let Some(len) = cmd::command_dwords(dw0) else {
            return Step::Fault;
        };
        if (cmd::client(dw0), cmd::mi_opcode(dw0)) == (0, 0x22) {
            return self.load_register_imm(vgpu, mem, exec, (len - 1) / 2);
        }
        if len as usize > operands.len() + 1 {
            return Step::Fault;
        }
        for slot in operands.iter_mut().take(len as usize - 1) {
            match Self::fetch(vgpu, mem, exec) {
                Some(v) => *slot = v,
                None => return Step::Fault,
            }
        }
        let [o1, o2, o3, o4, o5, o6, o7, o8, o9, _] = operands;
        let addr =
            |lo: u32, hi: u32, keep: u32| (u64::from(hi & 0xFFFF) << 32) | u64::from(lo & !keep);
        match (cmd::client(dw0), cmd::mi_opcode(dw0)) {
            (0, 0x00) => Step::Continue,
            (0, 0x0A) => {
                exec.batch = None; // MI_BATCH_BUFFER_END: back to the ring
                Step::Continue
            }
            (0, 0x20) => {
                // MI_STORE_DATA_IMM: dword (len 4) or qword (len 5, bit 21), GGTT or PPGTT.
                let a = (
                    addr(o1, o2, 3),
                    Self::space(exec, dw0 & cmd::SDI_USE_GGTT == 0),
                );
                let ok = if len == 4 {
                    self.store(vgpu, mem, a, &o3.to_le_bytes())
                } else {
                    self.store(
                        vgpu,
                        mem,
                        a,
                        &(u64::from(o3) | u64::from(o4) << 32).to_le_bytes(),
                    )
                };
                if ok { Step::Continue } else { Step::Fault }
            }
            (0, 0x26) => {
                // MI_FLUSH_DW: post-sync write of an immediate (dword 1 bit 2 selects the GGTT).
                if dw0 & (3 << 14) == cmd::POST_SYNC_WRITE_IMM {
                    let a = (addr(o1, o2, 7), Self::space(exec, o1 & (1 << 2) == 0));
                    let ok = if len == 4 {
                        self.store(vgpu, mem, a, &o3.to_le_bytes())
                    } else {
                        self.store(
                            vgpu,
                            mem,
                            a,
                            &(u64::from(o3) | u64::from(o4) << 32).to_le_bytes(),
                        )
                    };
                    if !ok {
                        return Step::Fault;
                    }
                }
                Step::Continue
            }
            (0, 0x31) => {
                // MI_BATCH_BUFFER_START: jump; a start inside a batch chains. Bit 8 fetches the
                // batch through the PPGTT.
                exec.batch = Some(addr(o1, o2, 3));
                exec.batch_ppgtt = dw0 & cmd::BBS_PPGTT != 0;
                Step::Continue
            }
            (0, 0x37) => {
                // SIM_FILL: deterministic render-target or decoded-frame content, written over the
                // next steps at the GPU's fill rate.
                exec.fill = Some(Fill {
                    base: addr(o1, o2, 0xFFF),
                    next: 0,
                    pages: o1 & 0xFFF,
                    seed: o3,
                });
                Step::Continue
            }
            (2, _) => {
                // 2D blits, 32 bits per pixel: a rectangle of rows `pitch` bytes apart.
                let rect = Rect::of(o1, o2, o3);
                match (cmd::blt_opcode(dw0), len) {
                    (cmd::XY_COLOR_BLT_OP, 7) => match rect {
                        Some(r) => self.color_blt(vgpu, mem, r, addr(o4, o5, 0), o6),
                        None => Step::Fault,
                    },
                    (cmd::XY_SRC_COPY_BLT_OP, 10) => {
                        match (rect, u16::try_from(o7 & 0xFFFF).ok()) {
                            (Some(r), Some(src_pitch)) => {
                                let src = Rect {
                                    x: o6 & 0xFFFF,
                                    y: o6 >> 16,
                                    pitch: u32::from(src_pitch),
                                    ..r
                                };
                                self.copy_blt(vgpu, mem, r, addr(o4, o5, 0), src, addr(o8, o9, 0))
                            }
                            _ => Step::Fault,
                        }
                    }
                    _ => Step::Fault,
                }
            }
            (3, _) => {
                // PIPE_CONTROL: post-sync "write immediate" of a qword (GGTT or PPGTT address).
                if o1 & (3 << 14) == cmd::POST_SYNC_WRITE_IMM {
                    let v = u64::from(o4) | u64::from(o5) << 32;
                    let a = (
                        addr(o2, o3, 7),
                        Self::space(exec, o1 & cmd::PC_GLOBAL_GTT == 0),
                    );
                    if !self.store(vgpu, mem, a, &v.to_le_bytes()) {
                        return Step::Fault;
                    }
                }
                Step::Continue
            }
            _ => Step::Fault,
        }
    }
}
