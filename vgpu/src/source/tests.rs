//! The source's parts on their own: the page path's channel striping, the device state in table
//! order (with and without a GGTT pre-copy), the size estimate, and a whole session's rounds and
//! events read back through the decoder.

#![allow(clippy::cast_possible_truncation, reason = "tests: small constants")]

extern crate std;

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use gmem::{FrameRange, GuestMemoryMap};
use gtt::{Gfn, GgttEntry, GmAddr, GmRange, GttIndex, HostPlacement, Partition};
use migstream::{Decoder, Event, Limits, RecordKind};

use super::rounds::device_state_estimate;
use super::state::{device_record, ggtt_precopy_chunk};
use super::*;
use crate::instance::{CONFIG_SPACE_SIZE, VgpuConfig, VgpuStorage};
use crate::sections::DEVICE_STATE;
use crate::tracking::GpuDirtyLog;
use crate::traits::MemoryError;

const FRAMES: u64 = 16;

fn map() -> GuestMemoryMap {
    GuestMemoryMap::new(&[FrameRange::new(Gfn::new(0x100), FRAMES).unwrap()]).unwrap()
}

fn vgpu() -> Vgpu<'static> {
    let partition = Partition::new(
        GmRange::new(GmAddr::new(0), 1 << 20).unwrap(),
        GmRange::new(GmAddr::new(0x1000_0000), 1 << 20).unwrap(),
    )
    .unwrap();
    let placement = HostPlacement::contiguous(
        &partition,
        GmAddr::new(0x200_0000),
        GmAddr::new(0x2000_0000),
    )
    .unwrap();
    let config = VgpuConfig::skylake(partition);
    let words = GpuDirtyLog::storage_words(FRAMES as usize);
    let storage = VgpuStorage {
        config_space: Box::leak(Box::new([0; CONFIG_SPACE_SIZE])),
        vregs: Vec::leak(vec![0u32; mmio::MMIO_DWORDS]),
        ggtt: Vec::leak(vec![0u64; config.ggtt_storage_len()]),
        gpu_dirty: Vec::leak((0..words).map(|_| gmem::AtomicWord::new(0)).collect()),
    };
    Vgpu::new(config, placement, map(), storage).unwrap()
}

/// Guest RAM of [`FRAMES`] frames: frame `i` holds byte `i` at offset `i` (frame 0 is zero).
struct Ram(Vec<u8>);

impl GuestMemory for Ram {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let i = usize::try_from(gfn.get() - 0x100).map_err(|_| MemoryError)?;
        let at = i * 4096 + offset;
        out.copy_from_slice(self.0.get(at..at + out.len()).ok_or(MemoryError)?);
        Ok(())
    }
    fn write(&mut self, _: Gfn, _: usize, _: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError)
    }
}

fn ram() -> Ram {
    let mut bytes = vec![0u8; FRAMES as usize * 4096];
    for i in 1..FRAMES as usize {
        bytes[i * 4096 + i] = i as u8;
    }
    Ram(bytes)
}

/// Every device-state record of a stopped vGPU, as `device_record` produces them.
fn records(v: &Vgpu<'_>, sent: Option<&[u64]>, scratch: usize) -> Vec<(RecordKind, Vec<u8>)> {
    let mut phase = Phase::STATE;
    let mut buf = vec![0u8; scratch];
    let mut out = Vec::new();
    while let Some((kind, version, len)) = device_record(&mut phase, sent, v, &mut buf).unwrap() {
        assert_eq!(version, crate::dest::record_version(kind));
        out.push((kind, buf[..len].to_vec()));
    }
    assert_eq!(phase, Phase::End);
    out
}

fn map_some(v: &mut Vgpu<'_>, indices: core::ops::Range<u32>) {
    for i in indices {
        let e = GgttEntry::present_frame(Gfn::new(0x100 + u64::from(i % 16))).unwrap();
        v.ggtt_mut().write(GttIndex::new(i), e).unwrap();
    }
}

#[test]
fn next_bit_hands_each_channel_its_stripes_and_nothing_else() {
    let frames = 4 * crate::channel::STRIPE_FRAMES + 3;
    let mut words = vec![0u64; words_for(frames)];
    let mut send = DirtyBitmap::new(&mut words, frames).unwrap();
    // Every frame, then a sparse set: each channel finds exactly its own frames, in order.
    for step in [1usize, 7, 61] {
        send.clear();
        for i in (0..frames).step_by(step) {
            send.set(i).unwrap();
        }
        for channels in 1..=4 {
            let mut seen = vec![false; frames];
            for c in 0..channels {
                let mut from = 0;
                while let Some(bit) =
                    super::pages::next_bit(send.words(), frames, from, c, channels)
                {
                    assert_eq!(crate::channel::channel_of(bit, channels), c);
                    assert!(!seen[bit], "frame {bit} found twice");
                    assert!(bit >= from);
                    seen[bit] = true;
                    from = bit + 1;
                }
            }
            for (i, s) in seen.iter().enumerate() {
                assert_eq!(
                    *s,
                    send.test(i),
                    "frame {i}, {channels} channels, step {step}"
                );
            }
        }
    }
}

#[test]
fn device_state_follows_the_table() {
    let mut v = vgpu();
    map_some(&mut v, 3..40);
    let _ = v.quiesce();
    let recs = records(&v, None, MIN_SCRATCH);
    let kinds: Vec<RecordKind> = recs.iter().map(|(k, _)| *k).collect();
    let table: Vec<RecordKind> = DEVICE_STATE.iter().map(|p| p.kind()).collect();
    assert_eq!(kinds, table);
    // The estimate the policy uses bounds what is sent.
    let sent: usize = recs.iter().map(|(_, p)| p.len()).sum();
    assert!(device_state_estimate(None, None, &v) >= sent as u64);
}

#[test]
fn a_small_scratch_splits_the_ggtt_and_an_empty_ggtt_sends_no_runs() {
    let mut v = vgpu();
    // Every other slot mapped: one 24-byte run per entry, 6 KiB for the 256 of them.
    let slots = v.ggtt().entries().len();
    for slot in (0..slots).step_by(2) {
        let i = v.config().partition.index_at(slot).unwrap();
        let e = GgttEntry::present_frame(Gfn::new(0x100 + (slot as u64) % 16)).unwrap();
        v.ggtt_mut().write(i, e).unwrap();
    }
    let _ = v.quiesce();
    let scratch = CONFIG_SPACE_SIZE
        .max(engines::MAX_SAVE_LEN)
        .max(v.regs().sparse_len());
    let recs = records(&v, None, scratch);
    let runs: Vec<usize> = recs
        .iter()
        .filter(|(k, _)| *k == RecordKind::GGTT_RUNS)
        .map(|(_, p)| p.len())
        .collect();
    assert!(runs.len() >= (slots / 2 * 24).div_ceil(scratch), "{runs:?}");
    assert_eq!(runs.iter().sum::<usize>(), slots / 2 * 24);
    let mut empty = vgpu();
    let _ = empty.quiesce();
    assert!(
        records(&empty, None, MIN_SCRATCH)
            .iter()
            .all(|(k, _)| *k != RecordKind::GGTT_RUNS)
    );
}

#[test]
fn after_a_ggtt_precopy_only_the_changes_travel() {
    let mut v = vgpu();
    map_some(&mut v, 0..64);
    let mut sent = vec![0u64; v.ggtt().entries().len()];
    let mut scratch = vec![0u8; 256];
    let mut from = Some(0);
    while let Some(f) = from {
        let (written, next) = ggtt_precopy_chunk(&v, f, &mut scratch, Some(&mut sent)).unwrap();
        assert!(written <= scratch.len());
        from = next;
    }
    assert_eq!(sent, v.ggtt().entries());
    let _ = v.quiesce();
    // Nothing changed: no GGTT record after the stop.
    let recs = records(&v, Some(&sent), MIN_SCRATCH);
    assert!(recs.iter().all(|(k, _)| *k != RecordKind::GGTT_RUNS));
    // Two entries change, one is cleared: one record, RAW runs over exactly those.
    map_some(&mut v, 100..102);
    v.ggtt_mut()
        .write(GttIndex::new(5), GgttEntry::from_bits(0))
        .unwrap();
    let recs = records(&v, Some(&sent), MIN_SCRATCH);
    let runs: Vec<&Vec<u8>> = recs
        .iter()
        .filter(|(k, _)| *k == RecordKind::GGTT_RUNS)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(runs.len(), 1);
    // Two runs: index 5 (cleared), then 100..102.
    assert_eq!(runs[0].len(), 16 + 8 + 16 + 16);
    assert!(device_state_estimate(Some(&sent), None, &v) < device_state_estimate(None, None, &v));
}

#[test]
fn a_session_sends_round_zero_then_the_device_state_and_reports_it() {
    let mut v = vgpu();
    let mut send = vec![0u64; words_for(FRAMES as usize)];
    let mut scratch = vec![0u8; MIN_SCRATCH];
    let mut s = SourceSession::open(
        &mut v,
        &mut (),
        SourceConfig::default(),
        &mut send,
        &mut scratch,
    )
    .unwrap();
    assert_eq!(
        s.precopy_info(&v),
        PrecopyInfo {
            initial_bytes: FRAMES * 4096,
            dirty_bytes: 0
        }
    );
    let mem = ram();
    let mut stream = Vec::new();
    let mut out = [0u8; 1000];
    let mut events = Vec::new();
    let mut stopped = false;
    while !s.is_finished() {
        let n = s.poll_output(&v, &mem, &mut (), 10, &mut out).unwrap();
        stream.extend_from_slice(&out[..n]);
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
        if !stopped && !events.is_empty() {
            while !v.quiesce().is_idle() {}
            s.stop_and_copy(&mut v, &mut ()).unwrap();
            stopped = true;
        }
    }
    // Round 0: every frame, frame 0 as a zero page; the final round: nothing was dirtied.
    let rounds: Vec<(u32, u64, u64)> = events
        .iter()
        .filter_map(|e| match *e {
            SourceEvent::RoundEnd {
                round,
                pages,
                zero_pages,
                ..
            } => Some((round, pages, zero_pages)),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, [(0, FRAMES, 1), (1, 0, 0)], "{events:?}");
    let Some(SourceEvent::Finished { bytes, records }) = events.last().copied() else {
        panic!("no Finished event: {events:?}");
    };
    assert_eq!(bytes, stream.len() as u64);
    assert_eq!(s.pages_sent(), (FRAMES, 1));
    // The stream reads back: pages, two ROUNDs, then the device state in table order, END.
    let mut dec = Decoder::new(Limits::DEFAULT);
    let mut kinds = Vec::new();
    let mut rest = &stream[..];
    loop {
        let (used, ev) = dec.feed(rest).unwrap();
        rest = &rest[used..];
        match ev {
            Some(Event::RecordBegin { kind, .. }) if kind != RecordKind::PAGES => kinds.push(kind),
            Some(Event::Round(_)) => kinds.push(RecordKind::ROUND),
            Some(Event::End(_)) => kinds.push(RecordKind::END),
            Some(_) => {}
            None => break,
        }
    }
    dec.finish().unwrap();
    let mut want = vec![RecordKind::ROUND, RecordKind::ROUND];
    want.extend(
        DEVICE_STATE
            .iter()
            .map(|p| p.kind())
            .filter(|k| *k != RecordKind::GGTT_RUNS),
    );
    want.push(RecordKind::END);
    assert_eq!(kinds, want);
    assert!(records as usize >= want.len());
    s.complete(&mut v).unwrap();
    assert_eq!(v.state(), MigState::Stop);
}

#[test]
fn open_checks_its_storage_and_the_configuration() {
    let mut v = vgpu();
    let mut scratch = vec![0u8; MIN_SCRATCH];
    let layout = crate::Layout::new(v.config(), v.memory_map());
    let storage = |buffer, needed, got| {
        Some(VgpuError::Storage(crate::error::StorageError {
            buffer,
            needed,
            got,
        }))
    };
    let mut short = vec![0u64; 0];
    let cfg = SourceConfig::default();
    assert_eq!(
        SourceSession::open(&mut v, &mut (), cfg, &mut short, &mut scratch).err(),
        storage(crate::error::Buffer::Send, layout.send_words, 0)
    );
    let mut send = vec![0u64; layout.send_words];
    let mut small = vec![0u8; layout.scratch_for(2) - 1];
    let mut cfg = SourceConfig {
        channels: 2,
        ..SourceConfig::default()
    };
    assert_eq!(
        SourceSession::open(&mut v, &mut (), cfg, &mut send, &mut small).err(),
        storage(
            crate::error::Buffer::Scratch,
            layout.scratch_for(2),
            layout.scratch_for(2) - 1
        )
    );
    // Out of range: a configuration, not a size.
    cfg.channels = 0;
    assert_eq!(
        SourceSession::open(&mut v, &mut (), cfg, &mut send, &mut scratch).err(),
        Some(VgpuError::StorageSize)
    );
    assert_eq!(v.state(), MigState::Running);
}
