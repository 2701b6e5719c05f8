//! B15: the destination's page throughput with its channels on their own threads (issue 19,
//! "Two cores").
//!
//! The same guest pages, pre-encoded in memory as a 1-channel stream and as a 2-channel stream
//! (striped as SPEC.md Appendix A.6 says), are fed to a destination session: 1 channel on 1
//! thread, then 2 channels on 2 threads ([`vgpu::dest::DestSession::channels`], each writing
//! its own stripes of guest memory through [`sim::SimMemory::channel_views`]). Only the
//! destination's work is timed (open, decode, CRC verify, apply); the source's and the
//! transport's are not, since both ends on one 2-core machine share the cores and could not show
//! a per-end speedup. B15a and B15b are beside memcpy of the same bytes on one thread; B15c is
//! the 2-channel rate beside the 1-channel rate measured in the same run (the goal: >= 1.8x).
//! Two figures say what a run on a busy machine can show: B15d, memcpy on two threads beside one
//! (the ceiling the machine allows in this run), and B15e, the same comparison as B15c by each
//! thread's own CPU time (Linux schedstat) instead of the wall clock: the projection for two idle
//! cores, with the CPU the split costs in all.

use std::hint::black_box;
use std::time::Duration;

use gtt::Gfn;
use migstream::{
    Encoder, Limits, PageEncoding, PageRunRepr, PagesPayload, RecordFlags, RecordKind, RoundRepr,
    StreamHeaderRepr,
};
use sim::scenario::Scenario;
use sim::{Machine, Profile};
use vgpu::channel::{ChannelRepr, STRIPE_FRAMES, channel_of};
use vgpu::dest::DestSession;

use super::harness::{Figure, Harness, copy_pages, gib_s, random_pages};

/// The streams of a migration of `channels` channels carrying every frame of `sc`'s guest
/// memory once (FULL, contents from `pages`, dense order), in one round.
fn streams(sc: &Scenario, pages: &[u8], channels: usize) -> crate::Result<Vec<Vec<u8>>> {
    let err = |e: migstream::EncodeError| format!("encoding the B15 streams: {e:?}");
    let map = &sc.map;
    let frames = usize::try_from(map.frames()).map_err(|e| e.to_string())?;
    let header = StreamHeaderRepr {
        minor: migstream::FORMAT_MINOR,
        flags: 0,
        identity: sc.config.identity(),
        stream_id: 0xB15,
    };
    let mut out = Vec::new();
    for c in 0..channels {
        let mut enc = Encoder::new();
        let mut wire = vec![0u8; frames * 4096 / channels + (64 << 20)];
        let mut n = enc.write_header(&header, &mut wire).map_err(err)?.written();
        if channels > 1 {
            let mut p = [0u8; ChannelRepr::LEN];
            ChannelRepr {
                channel: u16::try_from(c).map_err(|e| e.to_string())?,
                channels: u16::try_from(channels).map_err(|e| e.to_string())?,
            }
            .emit(&mut p);
            n += enc
                .write_record(
                    RecordKind::CHANNEL,
                    RecordFlags::MANDATORY,
                    1,
                    &p[..],
                    &mut wire[n..],
                )
                .map_err(err)?
                .written();
        }
        // One PAGES record per stripe of this channel, a run per stretch of consecutive frames.
        let mut sent = 0u64;
        for stripe in (0..frames).step_by(STRIPE_FRAMES) {
            if channel_of(stripe, channels) != c {
                continue;
            }
            let mut runs: Vec<PageRunRepr> = Vec::new();
            for i in stripe..(stripe + STRIPE_FRAMES).min(frames) {
                let gfn = map.frame_at(i).ok_or("frame index outside the map")?.get();
                match runs.last_mut() {
                    Some(r) if r.first_frame + u64::from(r.count) == gfn => r.count += 1,
                    _ => runs.push(PageRunRepr {
                        first_frame: gfn,
                        count: 1,
                        encoding: PageEncoding::FULL,
                    }),
                }
                sent += 1;
            }
            let payload = PagesPayload::new(&runs, |gfn: u64, off: usize, b: &mut [u8]| {
                let i = map.index_of(Gfn::new(gfn)).unwrap_or(0);
                let at = i * 4096 + off;
                b.copy_from_slice(&pages[at..at + b.len()]);
            })
            .map_err(err)?;
            n += enc
                .write_record(
                    RecordKind::PAGES,
                    RecordFlags::MANDATORY,
                    1,
                    &payload,
                    &mut wire[n..],
                )
                .map_err(err)?
                .written();
        }
        let mut round = [0u8; RoundRepr::BUFFER_LEN];
        RoundRepr {
            round: 0,
            pages: sent,
            bytes: n as u64,
        }
        .emit(&mut round);
        n += enc
            .write_record(
                RecordKind::ROUND,
                RecordFlags::MANDATORY,
                1,
                &round[..],
                &mut wire[n..],
            )
            .map_err(err)?
            .written();
        n += enc.write_end(&mut wire[n..]).map_err(err)?.written();
        wire.truncate(n);
        out.push(wire);
    }
    Ok(out)
}

/// CPU time this thread has run, ns (Linux `/proc/thread-self/schedstat`), if the kernel keeps it.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Feed `wires` (one per channel) into `m`'s vGPU, each channel on its own thread. Returns the
/// CPU time each channel's thread ran for its feed, ns (empty where it cannot be read).
fn restore(m: &mut Machine<'_>, staging: &mut [u8], wires: &[Vec<u8>]) -> crate::Result<Vec<u64>> {
    let mut d = DestSession::open_channels(&mut m.vgpu, staging, Limits::DEFAULT, wires.len())
        .map_err(|e| e.to_string())?;
    let vgpu = &m.vgpu;
    let views = m.mem.channel_views(wires.len());
    let answers = std::thread::scope(|s| {
        let threads: Vec<_> = d
            .channels()
            .into_iter()
            .zip(views)
            .zip(wires)
            .map(|((mut h, mut view), w)| {
                s.spawn(move || {
                    let start = thread_cpu_ns();
                    let r = h.feed(vgpu, &mut view, w);
                    let cpu = thread_cpu_ns().zip(start).map(|(b, a)| b.saturating_sub(a));
                    (r, cpu)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| "a channel thread panicked".to_string())
            })
            .collect::<Vec<_>>()
    });
    let mut cpu = Vec::new();
    for a in answers {
        let (r, ns) = a?;
        r.map_err(|e| format!("B15 stream refused: {e}"))?;
        cpu.extend(ns);
    }
    if !d.is_finished() {
        return Err("B15 streams did not end".into());
    }
    Ok(cpu)
}

/// Median over the timed restores of the most and of the total CPU time of their threads, ns,
/// with the fastest and slowest restore's most.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    max: u64,
    sum: u64,
    max_range: (u64, u64),
    runs: usize,
}

impl CpuTimes {
    fn of(runs: &[Vec<u64>]) -> Option<Self> {
        let median = |mut v: Vec<u64>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        let full = runs.iter().filter(|r| !r.is_empty());
        let maxes: Vec<u64> = full
            .clone()
            .filter_map(|r| r.iter().max().copied())
            .collect();
        Some(Self {
            max_range: (*maxes.iter().min()?, *maxes.iter().max()?),
            runs: maxes.len(),
            max: median(maxes)?,
            sum: median(full.map(|r| r.iter().sum()).collect())?,
        })
    }
}

/// Median time of a whole restore of `wires` into `m` (the vGPU reset untimed before each), as
/// the kernel or (`as_reference`) as the reference of the next figure.
fn time_restore(
    h: &Harness,
    m: &mut Machine<'_>,
    staging: &mut [u8],
    wires: &[Vec<u8>],
    as_reference: bool,
) -> crate::Result<(Duration, Option<CpuTimes>)> {
    let mut failure = None;
    let mut cpu = Vec::new();
    let d = h.time_with_setup_as(
        as_reference,
        m,
        |m| m.vgpu.reset(),
        |m| {
            match restore(m, staging, wires) {
                Ok(ns) => cpu.push(ns),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
            black_box(&mut *m);
        },
    );
    match failure {
        Some(e) => Err(e),
        None => Ok((d, CpuTimes::of(&cpu))),
    }
}

/// B15a (1 channel, 1 thread), B15b (2 channels, 2 threads), both beside memcpy, and B15c (the
/// two beside each other).
pub(crate) fn dest_channels(h: &mut Harness) -> crate::Result {
    if !h.wants_group("B15") {
        return Ok(());
    }
    let err = |e: vgpu::error::VgpuError| e.to_string();
    let sc = if h.quick {
        Scenario::small(Profile::THREE_D, 20, 15).map_err(err)?
    } else {
        // 64 MiB of graphics memory, 80 MiB of guest memory: far beyond the caches.
        Scenario::new(
            16 << 20,
            48 << 20,
            Profile::THREE_D.scaled_down(128).unpaced(),
            20,
            15,
        )
        .map_err(err)?
    };
    let frames = usize::try_from(sc.map.frames()).map_err(|e| e.to_string())?;
    let pages = random_pages(frames, 15);
    let one = streams(&sc, &pages, 1)?;
    let two = streams(&sc, &pages, 2)?;
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, true).map_err(err)?;
    let mut staging = vec![0u8; DestSession::staging_len(&m.vgpu)];
    let mut copy = vec![0u8; pages.len()];
    let bytes = pages.len() as u64;
    println!(
        "B15: {} MiB of guest pages, pre-encoded (1 channel: {} MiB of stream; 2 channels: {} + {} \
         MiB); the destination's work only (open, decode, verify, apply), each channel on its own \
         thread; both ends on this 2-core machine could not show a per-end speedup",
        bytes >> 20,
        one[0].len() >> 20,
        two[0].len() >> 20,
        two[1].len() >> 20
    );
    let mut rates = [0.0; 2];
    for (i, (id, what, wires)) in [
        ("B15a", "dest_channels: 1 channel on 1 thread", &one),
        ("B15b", "dest_channels: 2 channels on 2 threads", &two),
    ]
    .into_iter()
    .enumerate()
    {
        if !h.wants(id) {
            continue;
        }
        let reference = h.reference(&pages, &mut copy);
        let (d, _) = time_restore(h, &mut m, &mut staging, wires, false)?;
        // Self-check: the destination holds exactly the pages.
        if m.mem.bytes() != pages.as_slice() {
            return Err(format!("{id}: destination memory differs from the pages"));
        }
        rates[i] = gib_s(bytes, d);
        let note = if i == 1 && rates[0] > 0.0 {
            format!("{:.2}x the 1-channel rate", rates[1] / rates[0])
        } else {
            String::new()
        };
        h.record(Figure {
            id: id.to_owned(),
            what: what.to_owned(),
            bytes,
            gib_s: rates[i],
            reference_gib_s: reference,
            ratio: 0.0,
            target_ratio: None,
            note,
        });
    }
    if h.wants("B15c") {
        // Both measured again, one right after the other.
        let (d1, cpu1) = time_restore(h, &mut m, &mut staging, &one, true)?;
        let (d2, cpu2) = time_restore(h, &mut m, &mut staging, &two, false)?;
        h.record(Figure {
            id: "B15c".to_owned(),
            what: "dest_channels: 2 channels vs 1 (ref = 1 ch)".to_owned(),
            bytes,
            gib_s: gib_s(bytes, d2),
            reference_gib_s: gib_s(bytes, d1),
            ratio: 0.0,
            target_ratio: Some(1.8),
            note: format!(
                "{} cores available",
                std::thread::available_parallelism().map_or(0, usize::from)
            ),
        });
        // What the threads' own CPU time says, whatever else runs on the machine: the 1-channel
        // thread's, beside the busier of the two 2-channel threads (the wall time two idle cores
        // would take, if nothing else limits them), and what the split costs in all.
        if let (Some(c1), Some(c2)) = (cpu1, cpu2) {
            let ns = |n: u64| Duration::from_nanos(n.max(1));
            h.record(Figure {
                id: "B15e".to_owned(),
                what: "dest_channels CPU: 2 ch busier thread vs 1".to_owned(),
                bytes,
                gib_s: gib_s(bytes, ns(c2.max)),
                reference_gib_s: gib_s(bytes, ns(c1.max)),
                ratio: 0.0,
                target_ratio: Some(1.8),
                note: format!(
                    "per-thread CPU time (schedstat), not wall: the projection for 2 idle cores \
                     (medians of {}/{} runs; 2 ch [{:.2}-{:.2}], 1 ch [{:.2}-{:.2}] GiB/s); \
                     2 threads' CPU in all {:.2}x of 1",
                    c2.runs,
                    c1.runs,
                    gib_s(bytes, ns(c2.max_range.1)),
                    gib_s(bytes, ns(c2.max_range.0)),
                    gib_s(bytes, ns(c1.max_range.1)),
                    gib_s(bytes, ns(c1.max_range.0)),
                    c2.sum as f64 / c1.sum.max(1) as f64
                ),
            });
        } else {
            println!("B15e skipped: no per-thread CPU time (/proc/thread-self/schedstat)");
        }
    }
    if h.wants("B15d") {
        // The ceiling this machine allows in this run: the reference memcpy split over two threads,
        // beside itself on one. Below 1.8x here, no destination can show 1.8x either.
        let reference = h.reference(&pages, &mut copy);
        let half = pages.len() / 2 / 4096 * 4096;
        let d = h.time(|| {
            let (a, b) = pages.split_at(half);
            let (ca, cb) = copy.split_at_mut(half);
            std::thread::scope(|s| {
                s.spawn(|| copy_pages(a, ca));
                s.spawn(|| copy_pages(b, cb));
            });
            black_box(&mut copy);
        });
        h.record(Figure {
            id: "B15d".to_owned(),
            what: "memcpy on 2 threads vs 1 (this run's ceiling)".to_owned(),
            bytes,
            gib_s: gib_s(bytes, d),
            reference_gib_s: reference,
            ratio: 0.0,
            target_ratio: None,
            note: String::new(),
        });
    }
    Ok(())
}
