//! Channels produced on threads of their own ([`SourceSession::page_workers`] beside
//! [`SourceSession::poll_control`]): for the same guest and the same points of the run, every
//! channel's byte stream equals the one the single-thread `poll_output_channel` writes, and a
//! migration whose pages were produced on several threads ends byte for byte equal to the same
//! run never migrated.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "tests: small random choices"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use sim::scenario::{Scenario, Snapshot};
use sim::{Machine, Profile, Rng};
use vgpu::content::{ContentStats, ContentStorage};
use vgpu::dest::DestSession;
use vgpu::source::{SourceConfig, SourceEvent, SourceSession};

/// How one source run is driven.
#[derive(Debug, Clone, Copy)]
struct Drive {
    channels: u16,
    pages_per_record: u32,
    /// Output buffer per poll (small values split records).
    chunk: usize,
    /// Delta cache pages of content tracking (0: no content tracking).
    cache_pages: usize,
    /// Guest steps between two rounds.
    steps_per_round: u32,
    /// Pages produced on a thread per channel (else `poll_output_channel` on this thread).
    threaded: bool,
    /// Threaded: each worker polls once per turn (new workers every turn, mid-round), as the
    /// demo's source does; else until its share of the round is sent.
    slices: bool,
    /// Stop-and-copy at this turn, before the policy asks (mid-round, as a VMM may).
    stop_at_turn: Option<usize>,
}

/// What a source run wrote.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    wires: Vec<Vec<u8>>,
    events: Vec<SourceEvent>,
    content: ContentStats,
    pages: (u64, u64),
}

/// Migrate `a` out with `d`, the guest running `steps_per_round` steps after every round end,
/// until the policy switches; returns every channel's stream. The guest only moves at round
/// ends, so both ways of producing pages read the same memory at the same points.
fn run_source(a: &mut Machine<'_>, d: Drive) -> Run {
    let frames = usize::try_from(a.vgpu.memory_map().frames()).unwrap();
    let n = usize::from(d.channels);
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 64 * 1024 * n];
    let mut hashes = vec![0u64; frames];
    let mut dup_slots = vec![0u64; 4096];
    let mut delta_pages = vec![0u8; d.cache_pages * 4096];
    let mut delta_tags = vec![0u64; d.cache_pages];
    let mut ggtt_sent = vec![0u64; a.vgpu.config().ggtt_storage_len()];
    let mut cfg = SourceConfig::default();
    cfg.channels = d.channels;
    cfg.pages_per_record = d.pages_per_record;
    cfg.policy.max_rounds = 5;
    cfg.stream_id = 9;
    let mut s =
        SourceSession::open(&mut a.vgpu, &mut a.cpu_log, cfg, &mut send, &mut scratch).unwrap();
    if d.cache_pages > 0 {
        let storage = ContentStorage {
            hashes: &mut hashes,
            dup_slots: &mut dup_slots,
            delta_pages: &mut delta_pages,
            delta_tags: &mut delta_tags,
        };
        s.attach_content(&a.vgpu, storage).unwrap();
    }
    s.attach_ggtt_precopy(&a.vgpu, &mut ggtt_sent).unwrap();
    let mut wires = vec![Vec::new(); n];
    let mut events = Vec::new();
    let mut out = vec![0u8; d.chunk];
    let mut clock = 0u64;
    let stopped = core::cell::Cell::new(false);
    let stop = |s: &mut SourceSession<'_>, a: &mut Machine<'_>| {
        assert!(a.quiesce());
        s.stop_and_copy(&mut a.vgpu, &mut a.cpu_log).unwrap();
        stopped.set(true);
    };
    // After every poll: the events; the guest runs at a round's end, stops at a switch.
    let mut react = |s: &mut SourceSession<'_>, a: &mut Machine<'_>, clock: &mut u64| {
        while let Some(ev) = s.poll_event() {
            events.push(ev);
            match ev {
                SourceEvent::RoundEnd { .. } if !stopped.get() => {
                    *clock += 1000;
                    for _ in 0..d.steps_per_round {
                        a.step().unwrap();
                    }
                }
                SourceEvent::Switch { .. } => stop(s, a),
                _ => {}
            }
        }
    };
    for turn in 0..100_000 {
        if s.is_finished() {
            break;
        }
        if d.stop_at_turn == Some(turn) && !stopped.get() && !s.awaiting_stop() {
            stop(&mut s, a);
        }
        for (c, wire) in wires.iter_mut().enumerate() {
            loop {
                let k = if d.threaded {
                    s.poll_control(c, &a.vgpu, &mut a.cpu_log, clock, &mut out)
                } else {
                    s.poll_output_channel(c, &a.vgpu, &a.mem, &mut a.cpu_log, clock, &mut out)
                }
                .unwrap();
                wire.extend_from_slice(&out[..k]);
                react(&mut s, a, &mut clock);
                if k == 0 {
                    break;
                }
            }
        }
        if d.threaded {
            // The round's pages: one thread per channel, joined before the session goes on.
            let mem = &a.mem;
            let mut workers = s.page_workers();
            let made: Vec<(usize, Vec<u8>)> = std::thread::scope(|t| {
                let handles: Vec<_> = workers
                    .split()
                    .map(|mut w| {
                        t.spawn(move || {
                            let mut out = vec![0u8; d.chunk];
                            let mut bytes = Vec::new();
                            loop {
                                let k = w.poll(mem, &mut out).unwrap();
                                bytes.extend_from_slice(&out[..k]);
                                if k == 0 || d.slices {
                                    break;
                                }
                            }
                            (w.channel(), bytes)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            drop(workers);
            for (c, bytes) in made {
                wires[c].extend_from_slice(&bytes);
            }
        }
    }
    assert!(s.is_finished(), "{d:?}: the source never finished");
    let content = s.content_stats();
    let pages = s.pages_sent();
    s.complete(&mut a.vgpu).unwrap();
    Run {
        wires,
        events,
        content,
        pages,
    }
}

fn drives(rng: &mut Rng) -> Vec<Drive> {
    let mut v = Vec::new();
    for (i, channels) in [1u16, 2, 3, 4, 8].into_iter().enumerate() {
        for cache_pages in [0usize, 96] {
            v.push(Drive {
                channels,
                pages_per_record: [3, 64, 1024][(i + cache_pages) % 3],
                chunk: [7, 4111, 64 * 1024][rng.below(3) as usize],
                cache_pages,
                steps_per_round: 3 + rng.below(20) as u32,
                threaded: true,
                slices: rng.below(2) == 0,
                stop_at_turn: None,
            });
        }
    }
    v
}

#[test]
fn threaded_channels_write_the_single_thread_bytes() {
    let mut rng = Rng::new(4242);
    for (i, drive) in drives(&mut rng).into_iter().enumerate() {
        let profile = [Profile::THREE_D, Profile::MEDIA, Profile::TWO_D][i % 3];
        let sc = Scenario::small(profile, 30, rng.next_u64()).unwrap();
        let mut runs = Vec::new();
        for threaded in [false, true] {
            let mut st = sc.storage();
            let mut a = sc.machine(&mut st, false).unwrap();
            a.boot().unwrap();
            for _ in 0..20 {
                a.step().unwrap();
            }
            runs.push(run_source(&mut a, Drive { threaded, ..drive }));
        }
        let (single, threads) = (&runs[0], &runs[1]);
        assert!(
            single.events.len() > 3,
            "{drive:?}: several rounds ran ({:?})",
            single.events
        );
        assert!(single.pages.0 > 0);
        for (c, (x, y)) in single.wires.iter().zip(&threads.wires).enumerate() {
            assert!(x == y, "{drive:?} {}: channel {c} differs", profile.name);
        }
        assert_eq!(single, threads, "{drive:?} {}", profile.name);
    }
}

#[test]
fn a_migration_produced_on_threads_equals_the_unmigrated_run() {
    let mut rng = Rng::new(99);
    for (i, drive) in drives(&mut rng).into_iter().enumerate() {
        let profile = [Profile::THREE_D, Profile::TWO_D, Profile::MEDIA][i % 3];
        let sc = Scenario::small(profile, 30, rng.next_u64()).unwrap();
        let expected = sc.run_unmigrated().unwrap();
        let (mut st_a, mut st_b) = (sc.storage(), sc.storage());
        let mut a = sc.machine(&mut st_a, false).unwrap();
        let mut b = sc.machine(&mut st_b, true).unwrap();
        a.boot().unwrap();
        for _ in 0..rng.below(60) {
            a.step().unwrap();
        }
        // Every other migration stops early, mid-round, before the policy would.
        let stop_at_turn = (i % 2 == 1).then(|| 2 + rng.below(6) as usize);
        let run = run_source(
            &mut a,
            Drive {
                stop_at_turn,
                ..drive
            },
        );
        // The destination takes the channels in pieces, interleaved.
        let mut staging = vec![0u8; 64 * 1024 + a.vgpu.config().ggtt_storage_len() * 16];
        let mut d = DestSession::open_channels(
            &mut b.vgpu,
            &mut staging,
            migstream::Limits::DEFAULT,
            run.wires.len(),
        )
        .unwrap();
        let piece = 1 + rng.below(8192) as usize;
        let mut at = vec![0usize; run.wires.len()];
        while at.iter().zip(&run.wires).any(|(p, w)| *p < w.len()) {
            for (c, w) in run.wires.iter().enumerate() {
                let end = (at[c] + piece).min(w.len());
                d.feed_channel(c, &b.vgpu, &mut b.mem, &w[at[c]..end])
                    .unwrap();
                at[c] = end;
            }
        }
        assert!(d.is_finished(), "{drive:?}");
        d.commit(&mut b.vgpu, &b.mem, &mut b.host).unwrap();
        b.vgpu.start().unwrap();
        b.driver = a.driver.clone();
        b.clock_ns = a.clock_ns;
        assert!(b.run_to_end(1 << 40).unwrap());
        if let Some(diff) = expected.diff(&Snapshot::of(&b)) {
            panic!("{drive:?} {}: {diff}", profile.name);
        }
    }
}
