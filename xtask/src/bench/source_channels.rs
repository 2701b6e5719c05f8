//! B16 `source_channels`: the source end's page throughput with its channels on threads of their
//! own. The same dirty pages (a whole round 0 of random guest pages, so every page is read,
//! classified and encoded FULL with its CRC) go into an in-memory sink per channel: once as one
//! channel produced by one [`PageWorker`] on one thread, once as two
//! channels on two threads. The figure is GiB/s of guest pages beside memcpy of the same bytes;
//! B16c is the ratio of the two, against the goal of 1.8x.
//!
//! Only the source end is timed here: on a 2-core machine both ends of a migration running at once
//! share the two cores, so neither could show its own speedup; the destination's is measured on
//! its own the same way.

use std::time::Duration;

use sim::scenario::Scenario;
use sim::{Machine, Profile, Rng};
use vgpu::source::{PageWorker, SourceConfig, SourceSession};
use vgpu::traits::GuestMemory;

use super::harness::{Figure, Harness, gib_s};

/// Scratch per channel: room for a record of 64 pages and its headers.
const SCRATCH_PER_CHANNEL: usize = 512 * 1024;

type Err = vgpu::error::VgpuError;

/// One round 0 of `m`'s guest over `channels` channels, each channel's pages produced on a
/// thread of its own (`threads`) or one after another on this thread, written into `sinks`
/// (one per channel, each large enough for its stream). Returns each channel's stream length.
fn produce(
    m: &mut Machine<'_>,
    channels: u16,
    threads: bool,
    sinks: &mut [Vec<u8>],
) -> Result<Vec<usize>, Err> {
    let frames = usize::try_from(m.vgpu.memory_map().frames()).map_err(|_| Err::StorageSize)?;
    let n = usize::from(channels);
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; SCRATCH_PER_CHANNEL * n];
    let mut cfg = SourceConfig::default();
    cfg.channels = channels;
    let mut s = SourceSession::open(&mut m.vgpu, &mut m.cpu_log, cfg, &mut send, &mut scratch)?;
    let mut lens = vec![0usize; n];
    // The header and the CHANNEL record: what precedes the pages.
    for (c, (sink, len)) in sinks.iter_mut().zip(lens.iter_mut()).enumerate() {
        loop {
            let out = sink.get_mut(*len..).ok_or(Err::StorageSize)?;
            let k = s.poll_control(c, &m.vgpu, &mut m.cpu_log, 0, out)?;
            if k == 0 {
                break;
            }
            *len += k;
        }
    }
    let mem: &dyn GuestMemorySync = &m.mem;
    let mut workers = s.page_workers();
    // A channel's share of the round, from its worker into its sink after `at` bytes.
    let drain = |(mut w, (sink, &at)): (PageWorker<'_, '_>, (&mut Vec<u8>, &usize))| {
        let out = sink.get_mut(at..).ok_or(Err::StorageSize)?;
        let mut len = 0;
        while let Some(rest) = out.get_mut(len..)
            && !rest.is_empty()
        {
            let k = w.poll(mem, rest)?;
            if k == 0 {
                break;
            }
            len += k;
        }
        Ok(len)
    };
    let jobs = workers.split().zip(sinks.iter_mut().zip(&lens));
    let made: Vec<Result<usize, Err>> = if threads {
        std::thread::scope(|t| {
            let handles: Vec<_> = jobs.map(|job| t.spawn(move || drain(job))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(Err::WrongPhase)))
                .collect()
        })
    } else {
        jobs.map(drain).collect()
    };
    drop(workers);
    for (len, got) in lens.iter_mut().zip(made) {
        *len += got?;
    }
    // Every guest page went out, and only once.
    let (pages, _) = s.pages_sent();
    let pending = s.pending_pages();
    s.cancel(&mut m.vgpu);
    if pages != frames as u64 || pending != 0 {
        return Err(Err::WrongPhase);
    }
    Ok(lens)
}

/// Guest memory that page workers on several threads may read at once.
trait GuestMemorySync: GuestMemory + Sync {}
impl<T: GuestMemory + Sync> GuestMemorySync for T {}

/// The median time of producing the round over `channels` channels on as many threads, with the
/// sinks sized from one untimed run; checks that the threads wrote the same bytes as the same
/// workers one after another on one thread.
fn timed(h: &Harness, m: &mut Machine<'_>, channels: u16) -> Result<Duration, String> {
    let frames = usize::try_from(m.vgpu.memory_map().frames()).map_err(|e| e.to_string())?;
    let n = usize::from(channels);
    // Each channel carries at most every page, with its headers.
    let mut sinks = vec![vec![0u8; frames * 4096 + (1 << 20)]; n];
    let lens = produce(m, channels, false, &mut sinks).map_err(|e| e.to_string())?;
    let single: Vec<Vec<u8>> = sinks
        .iter()
        .zip(&lens)
        .map(|(s, &l)| s.get(..l).unwrap_or_default().to_vec())
        .collect();
    let mut failed = None;
    let d = h.time(|| match produce(m, channels, true, &mut sinks) {
        Ok(l) if l == lens => {}
        Ok(_) => failed = Some("B16 threads wrote streams of other lengths".to_owned()),
        Err(e) => failed = Some(format!("B16 production failed: {e}")),
    });
    if let Some(e) = failed {
        return Err(e);
    }
    for (c, (sink, want)) in sinks.iter().zip(&single).enumerate() {
        if sink.get(..want.len()) != Some(&want[..]) {
            return Err(format!(
                "B16: channel {c} of {channels} on threads differs from one thread"
            ));
        }
    }
    Ok(d)
}

/// B16a (1 channel, 1 thread), B16b (2 channels, 2 threads), B16c (their ratio).
pub(crate) fn source_channels(h: &mut Harness) -> crate::Result {
    if !h.wants_group("B16") {
        return Ok(());
    }
    let err = |e: Err| e.to_string();
    // 48 MiB of graphics memory: 60 MiB of guest pages (the small test guest in quick mode).
    let sc = if h.quick {
        Scenario::small(Profile::THREE_D, 20, 16).map_err(err)?
    } else {
        Scenario::new(
            16 << 20,
            32 << 20,
            Profile::THREE_D.scaled_down(128).unpaced(),
            20,
            16,
        )
        .map_err(err)?
    };
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, false).map_err(err)?;
    m.boot().map_err(err)?;
    // Incompressible pages in every frame: each is read, hashed for zero, copied and checksummed.
    let mut rng = Rng::new(16);
    let mut page = [0u8; 4096];
    for i in 0..m.vgpu.memory_map().frames() {
        let gfn = m
            .vgpu
            .memory_map()
            .frame_at(usize::try_from(i).unwrap_or(0));
        for chunk in page.chunks_exact_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        if let Some(gfn) = gfn {
            m.mem.write(gfn, 0, &page).map_err(|_| "B16 guest memory")?;
        }
    }
    let bytes = m.vgpu.memory_map().frames() * 4096;
    let src = m.mem.bytes().to_vec();
    let mut dst = vec![0u8; src.len()];
    let what = format!("{} MiB of guest pages", bytes >> 20);
    let mut rates = [0.0f64; 2];
    for (k, (id, channels)) in [("B16a", 1u16), ("B16b", 2)].into_iter().enumerate() {
        let reference = h.reference(&src, &mut dst);
        let d = timed(h, &mut m, channels)?;
        let rate = gib_s(bytes, d);
        if let Some(r) = rates.get_mut(k) {
            *r = rate;
        }
        h.record(Figure {
            id: id.into(),
            what: format!(
                "source_channels {channels} ch / {channels} thread{}",
                if channels == 1 { "" } else { "s" }
            ),
            bytes,
            gib_s: rate,
            reference_gib_s: reference,
            ratio: 0.0,
            target_ratio: None,
            note: format!("{what}: read+classify+encode+CRC into a memory sink"),
        });
    }
    let [one, two] = rates;
    // What two threads gain on this machine at all, on the same bytes: memcpy split in halves.
    let copy = |threads: usize, dst: &mut [u8]| {
        let half = src.len().div_ceil(threads * 4096) * 4096;
        let start = std::time::Instant::now();
        std::thread::scope(|t| {
            for (s, d) in src.chunks(half).zip(dst.chunks_mut(half)) {
                t.spawn(move || {
                    for (s, d) in s.chunks_exact(4096).zip(d.chunks_exact_mut(4096)) {
                        d.copy_from_slice(s);
                    }
                });
            }
        });
        start.elapsed()
    };
    let mut scaling = Vec::new();
    for _ in 0..9 {
        let a = copy(1, &mut dst);
        let b = copy(2, &mut dst);
        scaling.push(a.as_secs_f64() / b.as_secs_f64().max(1e-12));
    }
    scaling.sort_by(f64::total_cmp);
    let memcpy_scaling = scaling.get(scaling.len() / 2).copied().unwrap_or(0.0);
    h.record(Figure {
        id: "B16c".into(),
        what: "source_channels 2 ch/2 thr vs 1/1 (ref = B16a)".into(),
        bytes,
        gib_s: two,
        reference_gib_s: one,
        ratio: 0.0,
        target_ratio: Some(1.8),
        note: format!(
            "page throughput of 2 channels over 1 (goal 1.8x); source end alone, {} cores; \
             memcpy of the same bytes on 2 threads over 1: {memcpy_scaling:.2}x (median of 9)",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        ),
    });
    Ok(())
}
