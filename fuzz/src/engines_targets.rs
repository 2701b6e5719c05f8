//! Target over engine state and its payload (`engines`).

use std::collections::VecDeque;
use std::vec;

use engines::{
    CSB_PTR_RESET, ContextDescriptor, CsbEntry, EngineError, EngineId, EngineMask, Engines,
    MAX_SAVE_LEN, QUEUE_CAPACITY, Workload,
};

use crate::input::Bytes;

/// The engine set `bits & 0x1F` (bit `i` = engine index `i`).
pub(crate) fn mask(bits: u8) -> EngineMask {
    EngineId::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 != 0)
        .fold(EngineMask::EMPTY, |m, (_, id)| m.with(id))
}

fn engine(b: u8) -> EngineId {
    EngineId::ALL
        .get(usize::from(b % 5))
        .copied()
        .unwrap_or(EngineId::Rcs)
}

/// Fresh, quiesced engines of `present`.
fn quiesced(present: EngineMask) -> Engines {
    let mut e = Engines::new(present);
    assert!(e.quiesce().is_idle(), "fresh engines have work in flight");
    e
}

/// Saves `e` (which must be saveable), checks the size, and returns the payload.
fn save(e: &Engines) -> vec::Vec<u8> {
    let mut buf = vec![0u8; MAX_SAVE_LEN];
    let n = match e.save(&mut buf) {
        Ok(n) => n,
        Err(err) => panic!("save of quiesced idle engines failed: {err}"),
    };
    assert_eq!(n, e.save_len(), "save_len");
    buf.truncate(n);
    buf
}

/// Payload half of [`engines_restore`].
fn restore(present: EngineMask, payload: &[u8]) {
    let mut dst = quiesced(present);
    let verdict = dst.validate(payload);
    let before = dst.clone();
    let applied = dst.apply(payload);
    assert_eq!(applied, verdict, "apply and validate disagree");
    if applied.is_err() {
        assert_eq!(dst, before, "rejected apply changed the state");
        return;
    }
    // save(apply(p)) == p: every payload field is stored verbatim.
    let saved = save(&dst);
    assert_eq!(saved, payload, "save after apply is not the payload");
    let mut again = quiesced(present);
    if let Err(e) = again.apply(&saved) {
        panic!("saved payload does not apply: {e}");
    }
    assert_eq!(again, dst, "save/apply is not the identity");

    // Restore is refused while a workload runs, and changes nothing.
    let mut busy = Engines::new(present);
    if let Some(id) = present.iter().next() {
        let w = Workload {
            engine: id,
            desc: ContextDescriptor::from_bits(0x119),
            ring_head: 0,
            ring_tail: 0x40,
            schedule_in: true,
        };
        if busy.enqueue(w).is_ok() && busy.next_to_dispatch(id) == Some(w) {
            let _ = busy.quiesce();
            let snapshot = busy.clone();
            assert_eq!(
                busy.apply(payload),
                Err(EngineError::NotQuiesced { in_flight: 1 }),
                "apply with work in flight"
            );
            assert_eq!(busy, snapshot, "refused apply changed the state");
        }
    }
}

/// A reference model of the dispatch bookkeeping of one engine.
#[derive(Clone, Debug, Default)]
struct Model {
    queue: VecDeque<Workload>,
    running: Option<Workload>,
    elsp_writes: u64,
    csb_wp: Option<u8>,
}

/// Operation-sequence half of [`engines_restore`].
fn operations(present: EngineMask, input: &mut Bytes<'_>) {
    let mut e = Engines::new(present);
    let mut model: [Model; 5] = Default::default();
    let mut quiesced_flag = false;
    let mut count = 0;
    while !input.is_empty() && count < 512 {
        count += 1;
        let op = input.u8();
        let id = engine(op >> 3);
        let here = present.contains(id);
        let m = model.get_mut(id.index());
        match op % 8 {
            0 => {
                let dword = input.u32();
                let r = e.elsp_write(id, dword);
                match m.filter(|_| here) {
                    None => assert_eq!(r, Err(EngineError::NotPresent { engine: id })),
                    Some(m) => {
                        m.elsp_writes += 1;
                        let done = m.elsp_writes.is_multiple_of(4);
                        match r {
                            Ok(Some(d)) => {
                                assert!(done, "ELSP submitted early");
                                // The last dword written is element 0's low dword.
                                assert_eq!(d[0].into_bits() & 0xFFFF_FFFF, u64::from(dword));
                            }
                            Ok(None) => assert!(!done, "ELSP did not submit on the 4th dword"),
                            Err(err) => panic!("ELSP write failed: {err}"),
                        }
                    }
                }
            }
            1 => {
                let w = Workload {
                    engine: id,
                    desc: ContextDescriptor::from_bits(input.u64()),
                    ring_head: input.u32(),
                    ring_tail: input.u32(),
                    schedule_in: op & 0x80 != 0,
                };
                let r = e.enqueue(w);
                match m.filter(|_| here) {
                    Some(m) if m.queue.len() < QUEUE_CAPACITY => {
                        assert_eq!(r, Ok(()), "enqueue refused");
                        m.queue.push_back(w);
                    }
                    _ => assert_eq!(r, Err(w), "enqueue accepted"),
                }
            }
            2 => {
                let status = e.quiesce();
                quiesced_flag = true;
                let running = model.iter().filter(|m| m.running.is_some()).count();
                assert_eq!(status.in_flight as usize, running, "in_flight");
            }
            3 => {
                e.resume();
                quiesced_flag = false;
            }
            4 => {
                let got = e.next_to_dispatch(id);
                let want = match m.filter(|_| here) {
                    Some(m) if !quiesced_flag && m.running.is_none() => {
                        let w = m.queue.pop_front();
                        m.running = w;
                        w
                    }
                    _ => None,
                };
                assert_eq!(got, want, "next_to_dispatch");
            }
            5 => {
                let got = e.complete(id);
                let want = m.filter(|_| here).and_then(|m| m.running.take());
                assert_eq!(got, want, "complete");
            }
            6 => {
                let entry = CsbEntry::from_bits(input.u64());
                let rp = input.u8() % 8;
                if let (Some(eng), Some(m)) = (e.engine_mut(id), m.filter(|_| here)) {
                    let (idx, wp) = eng.csb.push(entry);
                    let want = m.csb_wp.map_or(0, |p| (p + 1) % 6);
                    assert_eq!((idx, wp), (want, want), "CSB write pointer");
                    m.csb_wp = Some(want);
                    let r = eng.csb.set_read_ptr(rp);
                    assert_eq!(r.is_ok(), rp < 6 || rp == CSB_PTR_RESET, "CSB read pointer");
                } else {
                    assert!(!here, "engine_mut of a present engine");
                }
            }
            _ => {
                let in_flight = model.iter().filter(|m| m.running.is_some()).count();
                let mut buf = vec![0u8; MAX_SAVE_LEN];
                let before = e.clone();
                match e.save(&mut buf) {
                    Ok(n) => {
                        assert!(quiesced_flag && in_flight == 0, "save of a live state");
                        assert_eq!(e, before, "save changed the state");
                        let payload = buf.get(..n).unwrap_or_default();
                        let mut dst = quiesced(present);
                        if let Err(err) = dst.apply(payload) {
                            panic!("saved state does not apply: {err}");
                        }
                        assert_eq!(dst, e, "restored state differs");
                    }
                    Err(err) => {
                        assert!(!quiesced_flag || in_flight != 0, "save refused: {err}");
                        let n = u32::try_from(in_flight).unwrap_or(u32::MAX);
                        assert_eq!(err, EngineError::NotQuiesced { in_flight: n });
                    }
                }
            }
        }
        assert_eq!(e.is_quiesced(), quiesced_flag, "quiesce flag");
    }
    // Model and engines agree on every queue at the end.
    for id in present.iter() {
        let (Some(eng), Some(m)) = (e.engine(id), model.get(id.index())) else {
            panic!("present engine {id:?} missing");
        };
        assert!(eng.queue.iter().eq(m.queue.iter()), "queue of {id:?}");
        assert_eq!(eng.running, m.running, "running on {id:?}");
    }
}

/// Engine state: arbitrary payloads and operation sequences.
///
/// Input: `data[0]` bits 4:0 are the present engines (bit `i` = engine index `i`), bit 7
/// selects the mode. Bit 7 clear: `data[1..]` is an engine-state payload. Bit 7 set:
/// `data[1..]` is up to 512 operations, each an op byte (`op % 8`: 0 ELSP write of a u32,
/// 1 enqueue of a workload (descriptor u64, head u32, tail u32; bit 7 schedule-in),
/// 2 quiesce, 3 resume, 4 dispatch, 5 complete, 6 CSB push of a u64 and read-pointer write of
/// a byte, 7 save; `(op >> 3) % 5` is the engine).
///
/// Asserts (payloads): `apply` succeeds exactly when `validate` does; a rejected payload
/// changes nothing; an accepted one saves back to the same bytes and applies to an equal
/// state; restore is refused, without change, while work is in flight.
/// Asserts (operations): ELSP submits on every 4th dword; queues, dispatch, completion,
/// quiesce and CSB pointers follow a reference model; save succeeds exactly when quiesced
/// with nothing in flight, does not change the state, and its payload restores an equal one.
pub fn engines_restore(data: &[u8]) {
    let mut input = Bytes::new(data);
    let sel = input.u8();
    let present = mask(sel);
    if sel & 0x80 == 0 {
        restore(present, input.rest());
    } else {
        operations(present, &mut input);
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits() {
        assert_eq!(mask(0x1F), EngineMask::ALL);
        assert_eq!(mask(0x01), EngineMask::RCS);
        assert_eq!(mask(0xE0), EngineMask::EMPTY);
        assert_eq!(mask(0x12).count(), 2);
    }

    #[test]
    fn saved_state_restores() {
        let mut e = quiesced(EngineMask::ALL);
        e.elsp_write(EngineId::Vcs, 7).unwrap();
        let p = save(&e);
        let mut data = vec![0x1F];
        data.extend_from_slice(&p);
        engines_restore(&data);
        // Wrong engine set: rejected, no panic.
        data[0] = 0x01;
        engines_restore(&data);
    }

    #[test]
    fn operation_script() {
        // RCS only: enqueue, dispatch, quiesce, save (refused), complete, save (ok).
        let mut data = vec![0x81, 1];
        data.extend_from_slice(&[0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0]);
        data.extend_from_slice(&[4, 2, 7, 5, 7, 3, 4, 0, 1, 2, 3, 4]);
        engines_restore(&data);
    }
}
