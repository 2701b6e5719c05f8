//! Multi-channel streams and the dirty-report memory mode, checked by the oracle (a migrated run
//! ends byte for byte equal to the same run never migrated), plus the destination's channel checks.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use gmem::DmaRange;
use gtt::Gfn;
use migstream::{
    Encoder, Limits, PageEncoding, PageRunRepr, PagesPayload, PayloadSource, RecordFlags,
    RecordKind, StreamHeaderRepr,
};
use sim::campaign::DeviceState;
use sim::scenario::{Plan, Scenario, Snapshot, migrate};
use sim::{Machine, Profile, Rng};
use vgpu::channel::{ChannelRepr, STRIPE_FRAMES, channel_of};
use vgpu::dest::DestSession;
use vgpu::error::VgpuError;
use vgpu::source::{MemoryMode, SourceConfig, SourceSession};
use vgpu::traits::{CpuDirtyLog, GuestMemory};

fn migrated(sc: &Scenario, plan: &Plan) -> (Snapshot, sim::scenario::MigrationReport) {
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    let report = migrate(&mut a, &mut b, plan).unwrap();
    assert!(b.run_to_end(1 << 40).unwrap());
    (Snapshot::of(&b), report)
}

#[test]
fn multi_channel_migrations_equal_the_unmigrated_run() {
    let mut rng = Rng::new(77);
    for (i, channels) in [2u16, 3, 4, 8, 5, 2].into_iter().enumerate() {
        let profile = [Profile::THREE_D, Profile::TWO_D, Profile::MEDIA][i % 3];
        let sc = Scenario::small(profile, 30, rng.next_u64()).unwrap();
        let mut plan = Plan::default();
        plan.source.channels = channels;
        plan.start_step = rng.below(100);
        plan.chunk = [7, 4111, 64 * 1024][i % 3];
        plan.feed = [1, 13, 4096][(i / 2) % 3];
        plan.interleave = rng.next_u64();
        plan.source.pages_per_record = [3, 64, 1024][i % 3];
        plan.content_cache_pages = if i % 2 == 0 { 1024 } else { 0 };
        let expected = sc.run_unmigrated().unwrap();
        let (got, report) = migrated(&sc, &plan);
        if let Some(d) = expected.diff(&got) {
            panic!("{channels} channels, {}: {d}", profile.name);
        }
        assert_eq!(report.channel_wires.len(), usize::from(channels) - 1);
        // Every channel that owns a stripe of guest memory carried pages (full or zero markers),
        // and only pages of its own stripes.
        let frames = usize::try_from(sc.map.frames()).unwrap();
        for (c, w) in report.channel_wires.iter().enumerate() {
            let c = c + 1;
            let mut dec = migstream::Decoder::new(Limits::DEFAULT);
            let mut carried = 0u64;
            dec.feed_all(w, |ev| {
                let (first, count) = match ev {
                    migstream::Event::ZeroPages { first_frame, count } => (first_frame, count),
                    migstream::Event::PageData {
                        frame, offset: 0, ..
                    } => (frame, 1),
                    _ => return Ok(()),
                };
                for f in first..first + u64::from(count) {
                    let i = sc.map.index_of(Gfn::new(f)).unwrap();
                    assert_eq!(channel_of(i, usize::from(channels)), c);
                    carried += 1;
                }
                Ok::<(), VgpuError>(())
            })
            .unwrap();
            if c * STRIPE_FRAMES < frames {
                assert!(carried > 0, "channel {c} of {channels} carried no page");
            }
        }
    }
}

/// A stream of one channel built by hand: header, CHANNEL, then `records`, then END.
fn channel_stream(
    header: &StreamHeaderRepr,
    channel: Option<ChannelRepr>,
    records: &[(RecordKind, Vec<u8>)],
) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = vec![0u8; 1 << 20];
    let mut n = enc.write_header(header, &mut out).unwrap().written();
    if let Some(c) = channel {
        let mut p = [0u8; ChannelRepr::LEN];
        c.emit(&mut p);
        n += enc
            .write_record(
                RecordKind::CHANNEL,
                RecordFlags::MANDATORY,
                1,
                &p[..],
                &mut out[n..],
            )
            .unwrap()
            .written();
    }
    for (kind, payload) in records {
        n += enc
            .write_record(
                *kind,
                RecordFlags::MANDATORY,
                1,
                &payload[..],
                &mut out[n..],
            )
            .unwrap()
            .written();
    }
    n += enc.write_end(&mut out[n..]).unwrap().written();
    out.truncate(n);
    out
}

/// One FULL page of frame `gfn` as a PAGES payload.
fn one_page(gfn: u64) -> Vec<u8> {
    let runs = [PageRunRepr {
        first_frame: gfn,
        count: 1,
        encoding: PageEncoding::FULL,
    }];
    let p = PagesPayload::new(&runs, |_f: u64, _o: usize, b: &mut [u8]| b.fill(0xA5)).unwrap();
    let mut v = vec![0u8; p.payload_len()];
    p.fill(0, &mut v);
    v
}

struct Dest {
    st: sim::MachineStorage,
}

impl Dest {
    fn new(sc: &Scenario) -> Self {
        Self { st: sc.storage() }
    }
}

/// Feeds `streams` (channel, bytes) to a fresh destination with `channels` channels and returns the
/// first error, checking the destination's device state did not change.
fn feed_hostile(sc: &Scenario, channels: usize, streams: &[(usize, Vec<u8>)]) -> VgpuError {
    let mut d = Dest::new(sc);
    let mut b = sc.machine(&mut d.st, true).unwrap();
    let mut staging = vec![0u8; 1 << 20];
    let mut s =
        DestSession::open_channels(&mut b.vgpu, &mut staging, Limits::DEFAULT, channels).unwrap();
    let before = DeviceState::of(&b);
    let mut err = None;
    for (c, bytes) in streams {
        if let Err(e) = s.feed_channel(*c, &b.vgpu, &mut b.mem, bytes) {
            err = Some(e);
            break;
        }
    }
    let err = err.unwrap_or_else(|| s.validate(&b.vgpu, &b.mem).unwrap_err());
    let after = DeviceState::of(&b);
    // Pages may have landed in guest memory; device state must not have changed.
    assert_eq!(before, after);
    err
}

#[test]
fn destination_refuses_channel_violations() {
    let sc = Scenario::small(Profile::TWO_D, 5, 3).unwrap();
    let header = StreamHeaderRepr {
        minor: migstream::FORMAT_MINOR,
        flags: 0,
        identity: sc.config.identity(),
        stream_id: 9,
    };
    let map = &sc.map;
    // A frame of channel 1's first stripe and one of channel 0's.
    let f1 = map.frame_at(STRIPE_FRAMES).unwrap().get();
    let f0 = map.frame_at(0).unwrap().get();
    assert_eq!(channel_of(STRIPE_FRAMES, 2), 1);
    let ch = |channel, channels| Some(ChannelRepr { channel, channels });

    // A page channel carrying a frame of another channel.
    let e = feed_hostile(
        &sc,
        2,
        &[(
            1,
            channel_stream(&header, ch(1, 2), &[(RecordKind::PAGES, one_page(f0))]),
        )],
    );
    assert!(
        matches!(e, VgpuError::WrongChannel { channel: 1, .. }),
        "{e:?}"
    );
    // The right frame on the right channel, in a round closed by its ROUND record, is accepted
    // (the stream only lacks channel 0).
    let e = feed_hostile(
        &sc,
        2,
        &[(
            1,
            channel_stream(
                &header,
                ch(1, 2),
                &[
                    (RecordKind::PAGES, one_page(f1)),
                    (RecordKind::ROUND, vec![0u8; 24]),
                ],
            ),
        )],
    );
    assert_eq!(e, VgpuError::Truncated, "channel 0 never ended");
    // No CHANNEL record on a multi-channel session.
    let e = feed_hostile(
        &sc,
        2,
        &[(
            1,
            channel_stream(&header, None, &[(RecordKind::PAGES, one_page(f1))]),
        )],
    );
    assert_eq!(e, VgpuError::BadChannel { channel: 1 });
    // A CHANNEL record that names another channel, or another channel count.
    for wrong in [ch(0, 2), ch(1, 3)] {
        let e = feed_hostile(&sc, 2, &[(1, channel_stream(&header, wrong, &[]))]);
        assert_eq!(e, VgpuError::BadChannel { channel: 1 }, "{wrong:?}");
    }
    // A CHANNEL record on a single-channel session.
    let e = feed_hostile(&sc, 1, &[(0, channel_stream(&header, ch(0, 2), &[]))]);
    assert_eq!(e, VgpuError::BadChannel { channel: 0 });
    // Device state on a page channel.
    let e = feed_hostile(
        &sc,
        2,
        &[(
            1,
            channel_stream(
                &header,
                ch(1, 2),
                &[(RecordKind::CONFIG_SPACE, vec![0; 4096])],
            ),
        )],
    );
    assert_eq!(e, VgpuError::BadChannel { channel: 1 });
    // Channels of two different migrations (stream ids differ).
    let other = StreamHeaderRepr {
        stream_id: 10,
        ..header
    };
    let e = feed_hostile(
        &sc,
        2,
        &[
            (0, channel_stream(&header, ch(0, 2), &[])),
            (1, channel_stream(&other, ch(1, 2), &[])),
        ],
    );
    assert_eq!(e, VgpuError::BadChannel { channel: 1 });
}

#[test]
fn real_channel_streams_swapped_or_missing_are_refused() {
    let sc = Scenario::small(Profile::THREE_D, 20, 5).unwrap();
    let mut plan = Plan::default();
    plan.source.channels = 3;
    let (_, report) = migrated(&sc, &plan);
    let (w0, w1, w2) = (
        report.wire.clone(),
        report.channel_wires[0].clone(),
        report.channel_wires[1].clone(),
    );
    // The page channels' records end while the main channel is in the middle of staging a
    // device-state record (its GGTT pre-copy, right after header and CHANNEL): accepted.
    {
        let mut d = Dest::new(&sc);
        let mut b = sc.machine(&mut d.st, true).unwrap();
        let mut staging = vec![0u8; 1 << 20];
        let mut s =
            DestSession::open_channels(&mut b.vgpu, &mut staging, Limits::DEFAULT, 3).unwrap();
        let mid = 80 + 24 + 16 + 8;
        assert_eq!(
            u16::from_le_bytes([w0[104], w0[105]]),
            RecordKind::GGTT_RUNS.0,
            "the main channel starts with the GGTT pre-copy"
        );
        s.feed_channel(0, &b.vgpu, &mut b.mem, &w0[..mid]).unwrap();
        s.feed_channel(1, &b.vgpu, &mut b.mem, &w1).unwrap();
        s.feed_channel(2, &b.vgpu, &mut b.mem, &w2).unwrap();
        s.feed_channel(0, &b.vgpu, &mut b.mem, &w0[mid..]).unwrap();
        assert!(s.is_finished());
        s.validate(&b.vgpu, &b.mem).unwrap();
    }
    // All three interleaved in proportional pieces: accepted and complete.
    {
        let mut d = Dest::new(&sc);
        let mut b = sc.machine(&mut d.st, true).unwrap();
        let mut staging = vec![0u8; 1 << 20];
        let mut s =
            DestSession::open_channels(&mut b.vgpu, &mut staging, Limits::DEFAULT, 3).unwrap();
        // Every channel finishes at about the same time, in pieces proportional to its length.
        let wires = [&w0, &w1, &w2];
        let steps = 4096;
        for i in 0..steps {
            for (c, w) in wires.iter().enumerate() {
                let (from, to) = (w.len() * i / steps, w.len() * (i + 1) / steps);
                s.feed_channel(c, &b.vgpu, &mut b.mem, &w[from..to])
                    .unwrap();
            }
        }
        assert!(s.is_finished());
        s.validate(&b.vgpu, &b.mem).unwrap();
    }
    // Channel 2's stream fed as channel 1: its CHANNEL record names channel 2.
    let e = feed_hostile(&sc, 3, &[(0, w0.clone()), (1, w2.clone())]);
    assert_eq!(e, VgpuError::BadChannel { channel: 1 });
    // One channel missing: never finished, nothing committed.
    let e = feed_hostile(&sc, 3, &[(0, w0.clone()), (2, w2.clone())]);
    assert_eq!(e, VgpuError::Truncated);
    // All three, in the wrong session width.
    let e = feed_hostile(&sc, 2, &[(0, w0.clone()), (1, w1.clone())]);
    assert_eq!(e, VgpuError::BadChannel { channel: 0 });
    // The main channel alone as a single-channel stream.
    let e = feed_hostile(&sc, 1, &[(0, w0)]);
    assert_eq!(e, VgpuError::BadChannel { channel: 0 });
}

/// Copies `frames` (dense indices) of guest memory from `a` to `b`, as a VMM's RAM migration does.
fn vmm_copy(a: &Machine<'_>, b: &mut Machine<'_>, frames: impl IntoIterator<Item = Gfn>) -> u64 {
    let mut page = [0u8; 4096];
    let mut n = 0;
    for gfn in frames {
        a.mem.read(gfn, 0, &mut page).unwrap();
        b.mem.write(gfn, 0, &page).unwrap();
        n += 1;
    }
    n
}

/// The frames the GPU wrote, by a DMA-logging report over every guest memory region at `page`
/// bytes per bit.
fn report_frames(s: &mut SourceSession<'_>, m: &mut Machine<'_>, page: u64) -> Vec<Gfn> {
    let regions: Vec<_> = m.vgpu.memory_map().regions().to_vec();
    let mut out = Vec::new();
    for r in regions {
        // The request covers the region, widened to whole report pages (addresses that are not
        // guest RAM are never reported dirty).
        let iova = r.start().get() * 4096 / page * page;
        let end = (r.end() * 4096).div_ceil(page) * page;
        let range = DmaRange {
            iova,
            length: end - iova,
        };
        let bits = usize::try_from(range.length / page).unwrap();
        let mut bitmap = vec![0u64; bits.div_ceil(64)];
        s.dirty_report(&m.vgpu, range, page, &mut bitmap).unwrap();
        for i in 0..bits {
            if bitmap[i / 64] >> (i % 64) & 1 == 1 {
                let first = range.iova / 4096 + (i as u64) * (page / 4096);
                let map = m.vgpu.memory_map();
                out.extend(
                    (0..page / 4096)
                        .map(|k| Gfn::new(first + k))
                        .filter(|g| map.contains(*g)),
                );
            }
        }
    }
    out
}

fn cpu_frames(m: &mut Machine<'_>) -> Vec<Gfn> {
    let mut v = Vec::new();
    m.cpu_log.harvest(&mut |g| v.push(g));
    v
}

/// A VMM that migrates guest RAM itself and asks the vGPU for the GPU's writes. `use_report`
/// false models a VMM that ignores the report (the oracle must then fail).
fn report_mode_migration(sc: &Scenario, page: u64, use_report: bool) -> Option<String> {
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    a.boot().unwrap();
    for _ in 0..30 {
        a.step().unwrap();
    }
    let frames = usize::try_from(a.vgpu.memory_map().frames()).unwrap();
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 256 * 1024];
    let mut cfg = SourceConfig::default();
    cfg.memory = MemoryMode::Report;
    let mut s =
        SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scratch).unwrap();
    assert_eq!(s.precopy_info(&a.vgpu).initial_bytes, 0);
    let mut staging = vec![0u8; 1 << 20];
    let mut d = DestSession::open(&mut b.vgpu, &mut staging, Limits::DEFAULT).unwrap();
    let mut out = vec![0u8; 4096];
    let mut wire = Vec::new();
    // The VMM's pass 0 copies all of RAM; its CPU dirty log starts now.
    let _ = cpu_frames(&mut a);
    let all: Vec<Gfn> = (0..frames)
        .map(|i| a.mem.map().frame_at(i).unwrap())
        .collect();
    vmm_copy(&a, &mut b, all);
    let mut gpu_reported = 0;
    for _pass in 0..3 {
        for _ in 0..20 {
            a.step().unwrap();
            // The device stream has nothing but its header before the stop.
            let n = s
                .poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
                .unwrap();
            wire.extend_from_slice(&out[..n]);
        }
        let mut dirty = cpu_frames(&mut a);
        let gpu = report_frames(&mut s, &mut a, page);
        gpu_reported += gpu.len();
        if use_report {
            dirty.extend(gpu);
        }
        vmm_copy(&a, &mut b, dirty);
    }
    assert!(s.awaiting_stop());
    assert!(a.quiesce());
    s.stop_and_copy(&mut a.vgpu, &mut a.cpu_log).unwrap();
    let mut dirty = cpu_frames(&mut a);
    let gpu = report_frames(&mut s, &mut a, page);
    gpu_reported += gpu.len();
    if use_report {
        dirty.extend(gpu);
    }
    vmm_copy(&a, &mut b, dirty);
    while !s.is_finished() {
        let n = s
            .poll_output(&a.vgpu, &a.mem, &mut a.cpu_log, 0, &mut out)
            .unwrap();
        wire.extend_from_slice(&out[..n]);
    }
    assert!(gpu_reported > 0, "the workload's GPU wrote guest memory");
    // The stream carries device state only: no PAGES record, far less than guest memory.
    assert!(wire.len() < 64 * 1024, "{} bytes", wire.len());
    for piece in wire.chunks(1000) {
        d.feed(&b.vgpu, &mut b.mem, piece).unwrap();
    }
    assert_eq!(d.stats().full_pages + d.stats().zero_pages, 0);
    d.commit(&mut b.vgpu, &b.mem, &mut b.host).unwrap();
    s.complete(&mut a.vgpu).unwrap();
    b.vgpu.start().unwrap();
    b.driver = a.driver.clone();
    b.clock_ns = a.clock_ns;
    assert!(b.run_to_end(1 << 40).unwrap());
    sc.run_unmigrated().unwrap().diff(&Snapshot::of(&b))
}

#[test]
fn report_mode_vmm_migrating_ram_itself_equals_the_unmigrated_run() {
    for (profile, page) in [
        (Profile::THREE_D, 4096),
        (Profile::MEDIA, 2 << 20),
        (Profile::TWO_D, 64 * 1024),
    ] {
        let sc = Scenario::small(profile, 30, 8).unwrap();
        if let Some(d) = report_mode_migration(&sc, page, true) {
            panic!("{} at {page} B per bit: {d}", profile.name);
        }
    }
}

#[test]
fn report_mode_without_the_report_loses_gpu_writes() {
    // Sensitivity: the CPU log alone misses what the GPU wrote, and the oracle notices.
    let sc = Scenario::small(Profile::THREE_D, 30, 8).unwrap();
    assert!(report_mode_migration(&sc, 4096, false).is_some());
}

#[test]
fn report_mode_refuses_malformed_requests_and_channels() {
    let sc = Scenario::small(Profile::IDLE, 5, 1).unwrap();
    let mut st = sc.storage();
    let mut a = sc.machine(&mut st, false).unwrap();
    a.boot().unwrap();
    let frames = usize::try_from(a.vgpu.memory_map().frames()).unwrap();
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 256 * 1024];
    let mut cfg = SourceConfig::default();
    cfg.memory = MemoryMode::Report;
    cfg.channels = 2;
    assert_eq!(
        SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scratch).unwrap_err(),
        VgpuError::StorageSize
    );
    cfg.channels = 1;
    let mut s =
        SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scratch).unwrap();
    let base = a.vgpu.memory_map().regions()[0].start().get() * 4096;
    let mut small = [0u64; 1];
    for (range, page) in [
        (
            DmaRange {
                iova: base + 1,
                length: 4096,
            },
            4096,
        ), // unaligned
        (
            DmaRange {
                iova: base,
                length: 0,
            },
            4096,
        ), // empty
        (
            DmaRange {
                iova: base,
                length: 4096,
            },
            3000,
        ), // page size
        (
            DmaRange {
                iova: base,
                length: 65 * 4096,
            },
            4096,
        ), // bitmap too small
    ] {
        assert!(matches!(
            s.dirty_report(&a.vgpu, range, page, &mut small),
            Err(VgpuError::Report(_))
        ));
    }
}

#[test]
fn channels_that_carried_different_rounds_are_refused() {
    // SPEC.md §6.2 and A.6: every channel carries the same ROUND numbers.
    let sc = Scenario::small(Profile::THREE_D, 20, 5).unwrap();
    let mut plan = Plan::default();
    plan.source.channels = 3;
    let (_, report) = migrated(&sc, &plan);
    let (w0, w1, w2) = (
        report.wire.clone(),
        &report.channel_wires[0],
        report.channel_wires[1].clone(),
    );
    let mut p = sim::campaign::Parts::split(w1).unwrap();
    let rounds: Vec<usize> = (0..p.records.len())
        .filter(|&i| p.records[i].kind == RecordKind::ROUND)
        .collect();
    assert!(rounds.len() >= 2, "pre-copy rounds and the final one");
    // Channel 1 without its first ROUND record: its rounds no longer match the main channel's
    // (refused at the ROUND that cannot follow, or at the commit comparing the channels).
    p.records.remove(rounds[0]);
    let e = feed_hostile(&sc, 3, &[(0, w0), (1, p.seal()), (2, w2)]);
    assert!(matches!(e, VgpuError::BadRound { channel: 1, .. }), "{e:?}");
    assert_eq!(e.fault(), vgpu::error::Fault::Stream);
    // (The untouched channels are accepted: `real_channel_streams_swapped_or_missing_are_refused`.)
}

/// What a destination holds after a restore: device state, guest memory, the session's figures.
type Restored = (DeviceState, Vec<u8>, vgpu::dest::DestStats);

/// Restores the channel streams `wires` into a fresh destination on one thread, the channels
/// interleaved in pieces proportional to their lengths.
fn restore_one_thread(sc: &Scenario, wires: &[&[u8]]) -> Restored {
    let mut d = Dest::new(sc);
    let mut b = sc.machine(&mut d.st, true).unwrap();
    let mut staging = vec![0u8; DestSession::staging_len(&b.vgpu)];
    let mut s = DestSession::open_channels(&mut b.vgpu, &mut staging, Limits::DEFAULT, wires.len())
        .unwrap();
    let steps = 257;
    for i in 0..steps {
        for (c, w) in wires.iter().enumerate() {
            let (from, to) = (w.len() * i / steps, w.len() * (i + 1) / steps);
            s.feed_channel(c, &b.vgpu, &mut b.mem, &w[from..to])
                .unwrap();
        }
    }
    assert!(s.is_finished());
    let stats = s.commit(&mut b.vgpu, &b.mem, &mut b.host).unwrap();
    (DeviceState::of(&b), b.mem.bytes().to_vec(), stats)
}

/// Feeds channel `c`'s stream through its handle in pieces of random sizes, yielding the thread
/// at random, and returns the handle's answers.
fn feed_on_thread(
    h: &mut vgpu::dest::DestChannel<'_, '_>,
    vgpu: &vgpu::Vgpu<'_>,
    mem: &mut dyn GuestMemory,
    wire: &[u8],
    seed: u64,
) -> Result<(), VgpuError> {
    let mut rng = Rng::new(seed);
    let mut at = 0;
    while at < wire.len() {
        let n = [1, 13, 4096, 70_000][usize::try_from(rng.below(4)).unwrap()];
        let to = (at + n).min(wire.len());
        assert_eq!(h.feed(vgpu, mem, &wire[at..to])?, to - at);
        at = to;
        if rng.below(4) == 0 {
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Restores `wires` into a fresh destination with each channel on its own thread, writing guest
/// memory through per-channel views. Returns every thread's answer, the session's error (if the
/// session failed) and, when it did not, what the destination holds; `before` is the device
/// state right after the session opened, checked unchanged on failure.
fn restore_threads(
    sc: &Scenario,
    wires: &[&[u8]],
    seed: u64,
) -> (Vec<Result<(), VgpuError>>, Result<Restored, VgpuError>) {
    let mut d = Dest::new(sc);
    let mut b = sc.machine(&mut d.st, true).unwrap();
    let mut staging = vec![0u8; DestSession::staging_len(&b.vgpu)];
    let mut s = DestSession::open_channels(&mut b.vgpu, &mut staging, Limits::DEFAULT, wires.len())
        .unwrap();
    let before = DeviceState::of(&b);
    let answers = {
        let vgpu = &b.vgpu;
        let views = b.mem.channel_views(wires.len());
        std::thread::scope(|scope| {
            let threads: Vec<_> = s
                .channels()
                .into_iter()
                .zip(views)
                .zip(wires)
                .map(|((mut h, mut view), wire)| {
                    let seed = seed ^ h.channel() as u64;
                    scope.spawn(move || feed_on_thread(&mut h, vgpu, &mut view, wire, seed))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let r = s.commit(&mut b.vgpu, &b.mem, &mut b.host);
    match r {
        Ok(stats) => (
            answers,
            Ok((DeviceState::of(&b), b.mem.bytes().to_vec(), stats)),
        ),
        Err(e) => {
            assert_eq!(
                before,
                DeviceState::of(&b),
                "a refused stream changed device state"
            );
            (answers, Err(e))
        }
    }
}

#[test]
fn channels_fed_on_their_own_threads_equal_one_thread() {
    let mut rng = Rng::new(1919);
    for (i, channels) in [2u16, 3, 4, 2].into_iter().enumerate() {
        let profile = [Profile::THREE_D, Profile::MEDIA, Profile::TWO_D][i % 3];
        let sc = Scenario::small(profile, 25, rng.next_u64()).unwrap();
        let mut plan = Plan::default();
        plan.source.channels = channels;
        plan.start_step = rng.below(60);
        plan.source.pages_per_record = [64, 1024, 3][i % 3];
        // Duplicates and deltas (content tracking) in half the runs.
        plan.content_cache_pages = if i % 2 == 0 { 1024 } else { 0 };
        let (_, report) = migrated(&sc, &plan);
        let mut wires: Vec<&[u8]> = vec![&report.wire];
        wires.extend(report.channel_wires.iter().map(Vec::as_slice));
        let one = restore_one_thread(&sc, &wires);
        assert!(one.2.full_pages > 0);
        for run in 0..3 {
            let (answers, threaded) = restore_threads(&sc, &wires, rng.next_u64());
            assert!(answers.iter().all(Result::is_ok), "{answers:?}");
            let threaded = threaded.unwrap();
            assert!(
                threaded.0 == one.0,
                "{channels} channels, run {run}: device state"
            );
            assert!(
                threaded.1 == one.1,
                "{channels} channels, run {run}: guest memory"
            );
            assert_eq!(threaded.2, one.2, "{channels} channels, run {run}");
        }
    }
}

#[test]
fn a_refused_channel_fails_the_threaded_session_and_changes_no_device_state() {
    let sc = Scenario::small(Profile::THREE_D, 20, 7).unwrap();
    let mut plan = Plan::default();
    plan.source.channels = 3;
    let (_, report) = migrated(&sc, &plan);
    let (w0, w2) = (report.wire.clone(), report.channel_wires[1].clone());
    // Channel 1 with one byte changed in the middle of its pages.
    let mut w1 = report.channel_wires[0].clone();
    let mid = w1.len() / 2;
    w1[mid] ^= 0x40;
    // The error one thread finds in channel 1's stream.
    let want = feed_hostile(&sc, 3, &[(1, w1.clone())]);
    for seed in 0..4 {
        let (answers, r) = restore_threads(&sc, &[&w0, &w1, &w2], seed);
        assert_eq!(r.unwrap_err(), want, "the session's error is channel 1's");
        assert_eq!(answers[1], Err(want));
        for a in [&answers[0], &answers[2]] {
            // The others either ended before the failure or stopped at it.
            assert!(
                matches!(a, Ok(()) | Err(VgpuError::ChannelFailed { channel: 1 })),
                "{a:?}"
            );
        }
    }
    // Channels of two migrations (their stream ids differ), each accepted on its own thread: the
    // join refuses them, and the session stays failed.
    let header = StreamHeaderRepr {
        minor: migstream::FORMAT_MINOR,
        flags: 0,
        identity: sc.config.identity(),
        stream_id: 9,
    };
    let other = StreamHeaderRepr {
        stream_id: 10,
        ..header
    };
    let ch = |channel| {
        Some(ChannelRepr {
            channel,
            channels: 2,
        })
    };
    let (a, b) = (
        channel_stream(&header, ch(0), &[]),
        channel_stream(&other, ch(1), &[]),
    );
    let mut d = Dest::new(&sc);
    let mut m = sc.machine(&mut d.st, true).unwrap();
    let mut staging = vec![0u8; DestSession::staging_len(&m.vgpu)];
    let mut s = DestSession::open_channels(&mut m.vgpu, &mut staging, Limits::DEFAULT, 2).unwrap();
    for (mut h, w) in s.channels().into_iter().zip([&a, &b]) {
        h.feed(&m.vgpu, &mut m.mem, w).unwrap();
    }
    let e = s.validate(&m.vgpu, &m.mem).unwrap_err();
    assert_eq!(e, VgpuError::BadChannel { channel: 1 });
    assert_eq!(s.feed_channel(0, &m.vgpu, &mut m.mem, &[0]), Err(e));
}
