//! Guest memory that changes under every read: the source's page path must still leave the
//! destination with exactly the source's final memory.
//!
//! [`Adversary`] is a `GuestMemory` whose reads, seeded and deterministic, write guest pages as a
//! busy guest CPU or GPU would while the migration thread copies them: the page being read (a torn
//! read: part of it before the write, part after) or another page, with a small change (a DELTA
//! candidate), another page's content (a DUP candidate), zeros, the same bytes again (an unchanged
//! page) or new bytes. Each write is logged after it lands, like KVM's dirty log or the GPU dirty
//! bitmap: pages the vGPU's GGTT maps are GPU pages (marked at the configured precision), the
//! others CPU pages. The writes stop when the source stops (vCPUs paused, vGPU quiesced).
//! Every GPU dirty precision runs with content tracking off, on, and deltas only, on one, two and
//! three channels.
//!
//! Before the source read each page once, this failed in every content-tracking case (the page
//! was classified from one read and sent from another): with duplicates on, the destination
//! rejected the stream (`DuplicateMismatch`); with deltas only, it committed memory that differed
//! from the source's in 2 to 21 frames, silently. Without content tracking it passed.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Mutex;

use gmem::{GuestMemoryMap, words_for};
use gtt::Gfn;
use sim::scenario::Scenario;
use sim::{Machine, MachineStorage, Profile, Rng};
use vgpu::content::ContentStorage;
use vgpu::dest::DestSession;
use vgpu::source::{GpuDirtyPrecision, SourceConfig, SourceEvent, SourceSession};
use vgpu::tracking::GpuDirtyLog;
use vgpu::traits::{CpuDirtyLog, GuestMemory, MemoryError, VgpuAccess};

/// The CPU dirty log the adversary writes into and the session harvests.
#[derive(Clone, Default)]
struct SharedLog(Rc<RefCell<BTreeSet<u64>>>);

impl CpuDirtyLog for SharedLog {
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn)) {
        for f in core::mem::take(&mut *self.0.borrow_mut()) {
            sink(Gfn::new(f));
        }
    }
}

/// Counters of what the adversary did, to check the test exercised what it claims.
#[derive(Debug, Default, Clone, Copy)]
struct Mischief {
    writes: u64,
    torn: u64,
    gpu: u64,
}

struct Adversary<'g> {
    map: GuestMemoryMap,
    bytes: RefCell<Vec<u8>>,
    rng: RefCell<Rng>,
    /// Frames the vGPU's GGTT maps: the GPU writes these, guest CPUs the others.
    gpu_frames: Vec<u64>,
    cpu_frames: Vec<u64>,
    cpu_log: SharedLog,
    /// The vGPU's GPU dirty log, marked during the session's reads (no `&mut Vgpu` needed).
    gpu_log: GpuDirtyLog<'g>,
    precision: GpuDirtyPrecision,
    running: Cell<bool>,
    stats: Cell<Mischief>,
}

impl Adversary<'_> {
    fn index(&self, gfn: u64) -> usize {
        self.map.index_of(Gfn::new(gfn)).unwrap()
    }

    fn page(&self, gfn: u64) -> Vec<u8> {
        let i = self.index(gfn);
        self.bytes.borrow()[i * 4096..(i + 1) * 4096].to_vec()
    }

    /// One write to frame `gfn`, logged after it lands.
    fn write_page(&self, gfn: u64) {
        let mut rng = self.rng.borrow_mut();
        let i = self.index(gfn);
        let kind = rng.below(10);
        let new: Vec<u8> = match kind {
            // A few bytes change: a DELTA candidate.
            0..=3 => {
                let mut p = self.page(gfn);
                for _ in 0..1 + rng.below(6) {
                    let at = rng.below(4096) as usize;
                    p[at] = p[at].wrapping_add(1 + rng.below(255) as u8);
                }
                p
            }
            // Another page's content: a DUP candidate.
            4 | 5 => {
                let all = self.map.frames();
                let other = self.map.frame_at(rng.below(all) as usize).unwrap().get();
                self.page(other)
            }
            6 => vec![0; 4096],
            // The same bytes written again: dirty but unchanged.
            7 => self.page(gfn),
            _ => (0..4096).map(|_| rng.next_u64() as u8).collect(),
        };
        drop(rng);
        self.bytes.borrow_mut()[i * 4096..(i + 1) * 4096].copy_from_slice(&new);
        let mut st = self.stats.get();
        st.writes += 1;
        if self.gpu_frames.binary_search(&gfn).is_ok() {
            st.gpu += 1;
            // The GPU marks at the precision it knows, after the write.
            match self.precision {
                GpuDirtyPrecision::Exact => self.gpu_log.mark(Gfn::new(gfn)),
                GpuDirtyPrecision::MappedIfActive => self.gpu_log.mark_active(),
                GpuDirtyPrecision::AllMapped => {}
            }
        } else {
            self.cpu_log.0.borrow_mut().insert(gfn);
        }
        self.stats.set(st);
    }

    fn writable(&self, gfn: u64) -> bool {
        self.gpu_frames.binary_search(&gfn).is_ok() || self.cpu_frames.binary_search(&gfn).is_ok()
    }

    fn pick(&self, from_gpu: bool) -> u64 {
        let set = if from_gpu && !self.gpu_frames.is_empty() {
            &self.gpu_frames
        } else {
            &self.cpu_frames
        };
        let k = self.rng.borrow_mut().below(set.len() as u64) as usize;
        set[k]
    }
}

impl GuestMemory for Adversary<'_> {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let i = self.map.index_of(gfn).ok_or(MemoryError)?;
        let base = i * 4096 + offset;
        let end = base + out.len();
        if !self.running.get() {
            out.copy_from_slice(&self.bytes.borrow()[base..end]);
            return Ok(());
        }
        let (what, cut) = {
            let mut rng = self.rng.borrow_mut();
            (rng.below(8), rng.below(out.len() as u64 + 1) as usize)
        };
        match what {
            // The page being read changes mid-read: a torn copy.
            0..=2 if self.writable(gfn.get()) => {
                out[..cut].copy_from_slice(&self.bytes.borrow()[base..base + cut]);
                self.write_page(gfn.get());
                out[cut..].copy_from_slice(&self.bytes.borrow()[base + cut..end]);
                let mut st = self.stats.get();
                st.torn += 1;
                self.stats.set(st);
            }
            // Another page changes while this one is read.
            3..=5 => {
                let victim = self.pick(what == 3);
                self.write_page(victim);
                out.copy_from_slice(&self.bytes.borrow()[base..end]);
            }
            _ => out.copy_from_slice(&self.bytes.borrow()[base..base + out.len()]),
        }
        Ok(())
    }

    fn write(&mut self, _gfn: Gfn, _offset: usize, _data: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError)
    }
}

/// Content tracking of the source session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracking {
    Off,
    /// Duplicates, deltas and unchanged pages.
    On,
    /// Deltas and unchanged pages, no duplicate table: a wrong base is not caught by the
    /// destination's DUP hash check, only by comparing memory.
    DeltaOnly,
}

/// Records the frames a page-table walk reads.
struct TableFrames<'m> {
    mem: &'m sim::SimMemory,
    seen: RefCell<BTreeSet<u64>>,
}

impl gtt::ReadGuest for TableFrames<'_> {
    fn read_u64(&self, gpa: gtt::Gpa) -> Option<u64> {
        let mut b = [0u8; 8];
        self.mem
            .read(gpa.gfn(), usize::try_from(gpa.page_offset()).ok()?, &mut b)
            .ok()?;
        self.seen.borrow_mut().insert(gpa.gfn().get());
        Some(u64::from_le_bytes(b))
    }

    fn contains(&self, gfn: Gfn) -> bool {
        self.mem.map().contains(gfn)
    }
}

/// The frames a writer may change on a booted reference machine: those the GGTT maps (the GPU's)
/// and the others (the CPUs'), both sorted, without the guest's PPGTT tables (the destination
/// checks them before it accepts the roots; a guest that scribbles over its own page tables has no
/// valid device state).
fn writable_frames(a: &sim::Machine<'_>) -> (Vec<u64>, Vec<u64>) {
    let map = a.vgpu.memory_map();
    let tables = TableFrames {
        mem: &a.mem,
        seen: RefCell::new(BTreeSet::new()),
    };
    for root in a.vgpu.ppgtts() {
        let _ = gtt::visit_leaves(root, &tables, gtt::VisitLimits::DEFAULT, |_| {
            core::ops::ControlFlow::Continue(())
        });
    }
    let tables = tables.seen.into_inner();
    let gpu: BTreeSet<u64> = a
        .vgpu
        .ggtt()
        .iter_present()
        .filter(|(_, e)| map.contains(e.frame()))
        .map(|(_, e)| e.frame().get())
        .filter(|f| !tables.contains(f))
        .collect();
    let frames = usize::try_from(map.frames()).unwrap();
    let cpu = (0..frames)
        .map(|i| map.frame_at(i).unwrap().get())
        .filter(|f| !gpu.contains(f) && !tables.contains(f))
        .collect();
    (gpu.into_iter().collect(), cpu)
}

/// A reference source machine that ran a 3D workload for a while and is quiesced (the test's
/// writers are the only ones from here on, and the stop needs nothing drained), and a destination.
fn machines<'a>(
    sc: &Scenario,
    st_a: &'a mut MachineStorage,
    st_b: &'a mut MachineStorage,
) -> (Machine<'a>, Machine<'a>) {
    let mut a = sc.machine(st_a, false).unwrap();
    let b = sc.machine(st_b, true).unwrap();
    a.boot().unwrap();
    for _ in 0..30 {
        a.step().unwrap();
    }
    assert!(a.quiesce());
    (a, b)
}

/// Content-tracking storage for `frames` frames in mode `tracking`.
struct ContentBufs {
    hashes: Vec<u64>,
    dups: Vec<u64>,
    cache: Vec<u8>,
    tags: Vec<u64>,
    tracking: Tracking,
}

impl ContentBufs {
    fn new(frames: usize, tracking: Tracking, cache_pages: usize) -> Self {
        let dups = if tracking == Tracking::On { 1024 } else { 0 };
        Self {
            hashes: vec![0; frames],
            dups: vec![0; dups],
            cache: vec![0; cache_pages * 4096],
            tags: vec![0; cache_pages],
            tracking,
        }
    }

    fn attach<'s>(&'s mut self, s: &mut SourceSession<'s>, vgpu: &vgpu::instance::Vgpu<'_>) {
        if self.tracking != Tracking::Off {
            let storage = ContentStorage {
                hashes: &mut self.hashes,
                dup_slots: &mut self.dups,
                delta_pages: &mut self.cache,
                delta_tags: &mut self.tags,
            };
            s.attach_content(vgpu, storage).unwrap();
        }
    }
}

/// Migrate a booted reference vGPU whose memory is an [`Adversary`]; returns what went wrong, if
/// anything, and what the adversary did.
fn migrate_under_fire(
    precision: GpuDirtyPrecision,
    content: Tracking,
    channels: u16,
    seed: u64,
) -> (Result<(), String>, Mischief, vgpu::content::ContentStats) {
    let sc = Scenario::small(Profile::THREE_D, 40, seed).unwrap();
    let (mut st_a, mut st_b) = (sc.storage(), sc.storage());
    let (mut a, mut b) = machines(&sc, &mut st_a, &mut st_b);
    let map = a.vgpu.memory_map().clone();
    let frames = usize::try_from(map.frames()).unwrap();
    let all: Vec<u64> = (0..frames)
        .map(|i| map.frame_at(i).unwrap().get())
        .collect();
    let (gpu_frames, cpu_frames) = writable_frames(&a);
    let cpu_log = SharedLog::default();
    let adv = Adversary {
        map: map.clone(),
        bytes: RefCell::new(a.mem.bytes().to_vec()),
        rng: RefCell::new(Rng::new(seed ^ 0xAD5E)),
        gpu_frames,
        cpu_frames,
        cpu_log: cpu_log.clone(),
        gpu_log: a.vgpu.gpu_dirty().clone(),
        precision,
        running: Cell::new(true),
        stats: Cell::new(Mischief::default()),
    };
    assert!(!adv.gpu_frames.is_empty() && !adv.cpu_frames.is_empty());
    let mut cpu = cpu_log;

    let mut cfg = SourceConfig::default();
    cfg.precision = precision;
    cfg.pages_per_record = 16;
    cfg.policy.max_rounds = 6;
    cfg.channels = channels;
    let mut send = vec![0u64; words_for(frames)];
    let mut scratch = vec![0u8; 128 * 1024 * usize::from(channels)];
    let mut staging = vec![0u8; 1 << 20];
    let mut bufs = ContentBufs::new(frames, content, 128);
    let mut s = SourceSession::open(&mut a.vgpu, &mut cpu, cfg, &mut send, &mut scratch).unwrap();
    bufs.attach(&mut s, &a.vgpu);
    let mut d = DestSession::open_channels(
        &mut b.vgpu,
        &mut staging,
        migstream::Limits::DEFAULT,
        usize::from(channels),
    )
    .unwrap();
    let mut out = vec![0u8; 8192];
    let mut polls = 0u64;
    let result = loop {
        polls += 1;
        if polls > 1_000_000 {
            break Err("the migration did not finish".to_owned());
        }
        // Output buffers of varying size: records are cut anywhere.
        let len = 1 + (polls * 7919 % 8192) as usize;
        let c = (polls % u64::from(channels)) as usize;
        let n = match s.poll_output_channel(c, &a.vgpu, &adv, &mut cpu, polls, &mut out[..len]) {
            Ok(n) => n,
            Err(e) => break Err(format!("source: {e:?}")),
        };
        if let Err(e) = d.feed_channel(c, &b.vgpu, &mut b.mem, &out[..n]) {
            break Err(format!("destination rejected the stream: {e:?}"));
        }
        let mut stop = false;
        while let Some(ev) = s.poll_event() {
            stop |= matches!(ev, SourceEvent::Switch { .. });
        }
        if stop {
            // Pause the vCPUs and the GPU: nothing writes guest memory any more.
            adv.running.set(false);
            s.stop_and_copy(&mut a.vgpu, &mut cpu).unwrap();
        }
        if s.is_finished() {
            break d
                .commit(&mut b.vgpu, &b.mem, &mut b.host)
                .map(|_| ())
                .map_err(|e| format!("commit: {e:?}"));
        }
    };
    let stats = s.content_stats();
    let result = result.and_then(|()| {
        let want = adv.bytes.borrow();
        let got = b.mem.bytes();
        let wrong: Vec<u64> = (0..frames)
            .filter(|i| want[i * 4096..(i + 1) * 4096] != got[i * 4096..(i + 1) * 4096])
            .map(|i| all[i])
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} frames differ from the source's final memory, first {:#x}",
                wrong.len(),
                wrong[0]
            ))
        }
    });
    (result, adv.stats.get(), stats)
}

#[test]
fn memory_changing_under_every_read_migrates_exactly() {
    let mut failures = Vec::new();
    let mut dup_and_delta = (0u64, 0u64, 0u64);
    for precision in [
        GpuDirtyPrecision::Exact,
        GpuDirtyPrecision::MappedIfActive,
        GpuDirtyPrecision::AllMapped,
    ] {
        for content in [Tracking::Off, Tracking::On, Tracking::DeltaOnly] {
            for (seed, channels) in [(1u64, 1), (2, 1), (3, 1), (4, 2), (5, 3)] {
                let (r, mischief, stats) = migrate_under_fire(precision, content, channels, seed);
                assert!(
                    mischief.writes > 100 && mischief.torn > 20 && mischief.gpu > 10,
                    "{precision:?} {content:?} {channels} channel(s) seed {seed}: the adversary \
                     barely acted: \
                     {mischief:?}"
                );
                dup_and_delta.0 += stats.dup;
                dup_and_delta.1 += stats.delta;
                dup_and_delta.2 += stats.unchanged;
                if let Err(e) = r {
                    failures.push(format!(
                        "{precision:?} {content:?} {channels} channel(s) seed {seed}: {e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (dup, delta, unchanged) = dup_and_delta;
    assert!(
        dup > 0 && delta > 0 && unchanged > 0,
        "the DUP, DELTA and unchanged paths ran: {dup_and_delta:?}"
    );
}

/// Guest RAM in atomic words: threads write it while the migration thread reads it, so a page
/// read can be torn at any word.
struct AtomicRam {
    map: GuestMemoryMap,
    words: Vec<AtomicU64>,
}

impl AtomicRam {
    fn word_range(&self, gfn: Gfn, offset: usize, len: usize) -> Result<usize, MemoryError> {
        let i = self.map.index_of(gfn).ok_or(MemoryError)?;
        if !offset.is_multiple_of(8) || !len.is_multiple_of(8) || offset + len > 4096 {
            return Err(MemoryError);
        }
        Ok((i * 4096 + offset) / 8)
    }

    fn bytes(&self) -> Vec<u8> {
        self.words
            .iter()
            .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
            .collect()
    }

    /// A write of `value` to word `word` of frame `gfn`, as a vCPU or the GPU does.
    fn store(&self, gfn: u64, word: usize, value: u64) {
        let i = self.map.index_of(Gfn::new(gfn)).unwrap();
        self.words[i * 512 + word % 512].store(value, Ordering::Release);
    }
}

impl GuestMemory for AtomicRam {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let at = self.word_range(gfn, offset, out.len())?;
        for (k, chunk) in out.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.words[at + k].load(Ordering::Acquire).to_le_bytes());
        }
        Ok(())
    }

    fn write(&mut self, _gfn: Gfn, _offset: usize, _data: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError)
    }
}

/// The CPU dirty log as KVM keeps it: set by the vCPU threads, harvested by the migration thread.
#[derive(Default)]
struct ThreadLog(Mutex<BTreeSet<u64>>);

impl CpuDirtyLog for &ThreadLog {
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn)) {
        let taken = core::mem::take(&mut *self.0.lock().unwrap());
        for f in taken {
            sink(Gfn::new(f));
        }
    }
}

/// The migration thread's view of the device: the lock the vCPUs take for MMIO exits, and the GPU
/// dirty log beside it.
struct Locked<'v, 'a> {
    vgpu: &'v Mutex<vgpu::instance::Vgpu<'a>>,
    gpu_log: GpuDirtyLog<'a>,
    /// How often the session took the device lock.
    visits: AtomicU64,
}

impl VgpuAccess for Locked<'_, '_> {
    fn gpu_dirty(&self) -> &GpuDirtyLog<'_> {
        &self.gpu_log
    }

    fn with_vgpu(&self, f: &mut dyn FnMut(&vgpu::instance::Vgpu<'_>)) {
        self.visits.fetch_add(1, Ordering::Relaxed);
        f(&self.vgpu.lock().unwrap());
    }
}

/// The same property with real threads: a vCPU thread takes MMIO exits under the device lock and
/// writes guest RAM (logged in a KVM-style CPU log), a GPU thread writes the pages the GGTT maps
/// and marks them in the shared GPU dirty log, both without pause while the migration thread
/// streams pages holding no lock. Whatever the interleaving, the destination ends equal to the
/// source's final memory.
#[test]
fn threads_writing_during_precopy_migrate_exactly() {
    for (precision, content, seed) in [
        (GpuDirtyPrecision::Exact, Tracking::Off, 11u64),
        (GpuDirtyPrecision::Exact, Tracking::On, 12),
        (GpuDirtyPrecision::MappedIfActive, Tracking::On, 13),
        (GpuDirtyPrecision::AllMapped, Tracking::DeltaOnly, 14),
    ] {
        let sc = Scenario::small(Profile::THREE_D, 40, seed).unwrap();
        let (mut st_a, mut st_b) = (sc.storage(), sc.storage());
        let (mut a, mut b) = machines(&sc, &mut st_a, &mut st_b);
        let map = a.vgpu.memory_map().clone();
        let frames = usize::try_from(map.frames()).unwrap();
        let (gpu_frames, cpu_frames) = writable_frames(&a);
        let ram = AtomicRam {
            map: map.clone(),
            words: a
                .mem
                .bytes()
                .chunks_exact(8)
                .map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
        };
        let log = ThreadLog::default();
        let mut cfg = SourceConfig::default();
        cfg.precision = precision;
        cfg.pages_per_record = 16;
        cfg.policy.max_rounds = 5;
        let mut send = vec![0u64; words_for(frames)];
        let mut scratch = vec![0u8; 128 * 1024];
        let mut bufs = ContentBufs::new(frames, content, 64);
        let mut s =
            SourceSession::open(&mut a.vgpu, &mut &log, cfg, &mut send, &mut scratch).unwrap();
        bufs.attach(&mut s, &a.vgpu);
        let gpu_log = a.vgpu.gpu_dirty().clone();
        let pvinfo = a.vgpu.mmio_read(0x78000, 4).unwrap();
        let device = Locked {
            vgpu: &Mutex::new(a.vgpu),
            gpu_log: gpu_log.clone(),
            visits: AtomicU64::new(0),
        };
        let paused = AtomicBool::new(false);
        // Writers that have written once: pre-copy starts only after both did, so on a loaded
        // machine the migration cannot end before a writer was ever scheduled.
        let started = AtomicU64::new(0);
        let (mut stream, mut exits, mut writes) = (Vec::new(), 0u64, [0u64; 2]);
        std::thread::scope(|t| {
            let vcpu = t.spawn(|| {
                let mut rng = Rng::new(seed);
                let mut n = 0u64;
                while !paused.load(Ordering::Acquire) {
                    // An MMIO exit: the PVINFO magic, under the device lock.
                    let magic = device.vgpu.lock().unwrap().mmio_read(0x78000, 4).unwrap();
                    assert_eq!(magic, pvinfo);
                    // A store to RAM, logged after it lands.
                    let f = cpu_frames[rng.below(cpu_frames.len() as u64) as usize];
                    ram.store(f, rng.below(512) as usize, rng.next_u64());
                    log.0.lock().unwrap().insert(f);
                    n += 1;
                    if n == 1 {
                        started.fetch_add(1, Ordering::AcqRel);
                    }
                }
                n
            });
            let gpu = t.spawn(|| {
                let mut rng = Rng::new(!seed);
                let mut n = 0u64;
                while !paused.load(Ordering::Acquire) {
                    let f = gpu_frames[rng.below(gpu_frames.len() as u64) as usize];
                    // A burst of DMA into one page, then its mark at the precision the GPU knows.
                    for _ in 0..1 + rng.below(4) {
                        ram.store(f, rng.below(512) as usize, rng.next_u64());
                    }
                    match precision {
                        GpuDirtyPrecision::Exact => gpu_log.mark(Gfn::new(f)),
                        GpuDirtyPrecision::MappedIfActive => gpu_log.mark_active(),
                        GpuDirtyPrecision::AllMapped => {}
                    }
                    n += 1;
                    if n == 1 {
                        started.fetch_add(1, Ordering::AcqRel);
                    }
                }
                n
            });
            while started.load(Ordering::Acquire) < 2 {
                std::thread::yield_now();
            }
            let mut cpu = &log;
            let mut out = vec![0u8; 16 * 1024];
            let mut threads = Some((vcpu, gpu));
            while !s.is_finished() {
                let n = s.poll_output(&device, &ram, &mut cpu, 0, &mut out).unwrap();
                stream.extend_from_slice(&out[..n]);
                let mut stop = false;
                while let Some(ev) = s.poll_event() {
                    stop |= matches!(ev, SourceEvent::Switch { .. });
                }
                if stop && let Some((vcpu, gpu)) = threads.take() {
                    // Pause the vCPUs and the GPU, then stop-and-copy under the device lock.
                    paused.store(true, Ordering::Release);
                    exits = vcpu.join().unwrap();
                    writes = [exits, gpu.join().unwrap()];
                    s.stop_and_copy(&mut device.vgpu.lock().unwrap(), &mut cpu)
                        .unwrap();
                }
            }
        });
        assert!(
            writes[0] > 0 && writes[1] > 0,
            "{precision:?}: both writers ran ({writes:?})"
        );
        assert!(device.visits.load(Ordering::Relaxed) > 0 && exits > 0);
        let mut staging = vec![0u8; 1 << 20];
        let mut d =
            DestSession::open(&mut b.vgpu, &mut staging, migstream::Limits::DEFAULT).unwrap();
        d.feed(&b.vgpu, &mut b.mem, &stream).unwrap();
        d.commit(&mut b.vgpu, &b.mem, &mut b.host).unwrap();
        let (want, got) = (ram.bytes(), b.mem.bytes().to_vec());
        let wrong = (0..frames)
            .filter(|i| want[i * 4096..(i + 1) * 4096] != got[i * 4096..(i + 1) * 4096])
            .count();
        assert_eq!(
            wrong, 0,
            "{precision:?} {content:?}: frames differ from the source's final memory"
        );
    }
}
