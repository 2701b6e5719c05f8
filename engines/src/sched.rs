//! A time-sliced, weighted round-robin scheduler across vGPUs (GVT's policy).
//!
//! Sans-IO: the caller calls [`Scheduler::tick`] every slice (1 ms by default) with the
//! current time in nanoseconds and which engines of each vGPU have queued work; the
//! scheduler answers which vGPU owns the engines until the next tick. Ownership is
//! GPU-wide, as in GVT: all engines switch to the picked vGPU together (the caller
//! switches once the previous owner's in-flight work has completed).
//!
//! Policy:
//!
//! - Every [`BALANCE_PERIOD_NS`] (100 ms) a balancing stage runs; stages count 0..9.
//!   Stage 0 gives every vGPU `100 ms * weight / total weight` as its budget and drops
//!   earlier debt or credit; stages 1..9 add that allocation to what is left.
//! - The time between two ticks is charged to the vGPU picked at the earlier tick.
//! - A tick picks, in least-recently-picked order, the first vGPU with queued work and
//!   budget left (`> 0`) and moves it to the back. vGPUs without queued work are
//!   skipped; if none qualifies, nobody runs until the next balance (an idle vGPU's
//!   share is not handed to the others, as in GVT).
//! - A vGPU added with [`Scheduler::add`] has [`PRIORITY_NS`] (2 s) of priority: it is
//!   put first and picked whenever busy, without moving back, until the priority ends.
//!
//! Deterministic: the picks depend only on the calls made.

use crate::error::EngineError;
use crate::id::EngineMask;

/// Default time slice (tick period): 1 ms.
pub const DEFAULT_SLICE_NS: u64 = 1_000_000;
/// Time between balancing stages: 100 ms.
pub const BALANCE_PERIOD_NS: u64 = 100_000_000;
/// Balancing stages per cycle; stage 0 resets budgets.
pub const BALANCE_STAGES: u8 = 10;
/// Largest weight (weights are 1..=16).
pub const MAX_WEIGHT: u8 = 16;
/// Priority time of a newly added vGPU: 2 s.
pub const PRIORITY_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Slot {
    weight: u8,
    allocated: i64,
    left: i64,
    used: u64,
    priority_until: Option<u64>,
}

/// What runs until the next tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pick {
    /// The vGPU slot that owns the engines, `None` when nobody runs.
    pub vgpu: Option<usize>,
    /// Its engines with queued work (empty when `vgpu` is `None`).
    pub engines: EngineMask,
    /// When the caller should tick next (`now + slice`).
    pub next_tick: u64,
}

/// Scheduler for up to `N` vGPUs, identified by slot `0..N`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Scheduler<const N: usize> {
    slots: [Option<Slot>; N],
    /// Registered slots, least recently picked first; `order[..len]` is valid.
    order: [usize; N],
    len: usize,
    current: Option<usize>,
    last: u64,
    next_balance: u64,
    stage: u8,
    slice_ns: u64,
}

impl<const N: usize> Default for Scheduler<N> {
    fn default() -> Self {
        Self::new(DEFAULT_SLICE_NS)
    }
}

fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<const N: usize> Scheduler<N> {
    /// An empty scheduler ticking every `slice_ns` (at least 1 ns), time 0.
    #[must_use]
    pub const fn new(slice_ns: u64) -> Self {
        Self {
            slots: [None; N],
            order: [0; N],
            len: 0,
            current: None,
            last: 0,
            next_balance: 0,
            stage: 0,
            slice_ns: if slice_ns == 0 { 1 } else { slice_ns },
        }
    }

    /// Registers vGPU `slot` with `weight` (1..=16) at time `now`; it gets
    /// [`PRIORITY_NS`] of priority and its first budget at the next balance.
    ///
    /// Errors: `BadWeight`; `UnknownVgpu` if `slot >= N`; `Capacity` if the slot is
    /// taken.
    pub fn add(&mut self, slot: usize, weight: u8, now: u64) -> Result<(), EngineError> {
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(EngineError::BadWeight { weight });
        }
        let entry = self
            .slots
            .get_mut(slot)
            .ok_or(EngineError::UnknownVgpu { slot })?;
        if entry.is_some() {
            return Err(EngineError::Capacity);
        }
        *entry = Some(Slot {
            weight,
            allocated: 0,
            left: 0,
            used: 0,
            priority_until: Some(now.saturating_add(PRIORITY_NS)),
        });
        // Put first: shift the order right by one.
        let len = self.len;
        if let Some(win) = self.order.get_mut(..=len) {
            win.rotate_right(1);
            if let Some(first) = win.first_mut() {
                *first = slot;
            }
        }
        self.len = len.saturating_add(1).min(N);
        Ok(())
    }

    /// Unregisters vGPU `slot` (it stops running at once).
    pub fn remove(&mut self, slot: usize) -> Result<(), EngineError> {
        let entry = self
            .slots
            .get_mut(slot)
            .filter(|s| s.is_some())
            .ok_or(EngineError::UnknownVgpu { slot })?;
        *entry = None;
        if let Some(pos) = self.order.iter().take(self.len).position(|s| *s == slot)
            && let Some(win) = self.order.get_mut(pos..self.len)
        {
            win.rotate_left(1);
        }
        self.len = self.len.saturating_sub(1);
        if self.current == Some(slot) {
            self.current = None;
        }
        Ok(())
    }

    /// Changes the weight of `slot`; it takes effect at the next stage 0.
    pub fn set_weight(&mut self, slot: usize, weight: u8) -> Result<(), EngineError> {
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(EngineError::BadWeight { weight });
        }
        let s = self
            .slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or(EngineError::UnknownVgpu { slot })?;
        s.weight = weight;
        Ok(())
    }

    /// The vGPU picked at the last tick.
    #[must_use]
    pub const fn current(&self) -> Option<usize> {
        self.current
    }

    /// Time charged to `slot` so far, `None` if not registered.
    #[must_use]
    pub fn used_ns(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).copied().flatten().map(|s| s.used)
    }

    /// Budget `slot` has left in this balancing cycle (negative: debt).
    #[must_use]
    pub fn left_ns(&self, slot: usize) -> Option<i64> {
        self.slots.get(slot).copied().flatten().map(|s| s.left)
    }

    fn balance(&mut self) {
        if self.stage == 0 {
            let total: i64 = self
                .slots
                .iter()
                .flatten()
                .map(|s| i64::from(s.weight))
                .sum();
            for s in self.slots.iter_mut().flatten() {
                let share = ns(BALANCE_PERIOD_NS)
                    .saturating_mul(i64::from(s.weight))
                    .checked_div(total)
                    .unwrap_or(0);
                s.allocated = share;
                s.left = share;
            }
        } else {
            for s in self.slots.iter_mut().flatten() {
                s.left = s.left.saturating_add(s.allocated);
            }
        }
        self.stage = (self.stage + 1) % BALANCE_STAGES;
    }

    /// Advances to `now` (earlier times count as the last tick's time) and picks the vGPU
    /// for the next slice. `busy[i]` is the set of engines of slot `i` with queued work.
    pub fn tick(&mut self, now: u64, busy: &[EngineMask; N]) -> Pick {
        let now = now.max(self.last);
        let elapsed = now - self.last;
        if let Some(s) = self
            .current
            .and_then(|c| self.slots.get_mut(c))
            .and_then(Option::as_mut)
        {
            s.used = s.used.saturating_add(elapsed);
            s.left = s.left.saturating_sub(ns(elapsed));
        }
        self.last = now;
        if now >= self.next_balance {
            // Periods due, bounded: more than a whole cycle only matters modulo the cycle
            // (stage 0 drops all earlier budget state).
            let due = (now - self.next_balance) / BALANCE_PERIOD_NS + 1;
            let stages = u64::from(BALANCE_STAGES);
            let skipped = due.saturating_sub(stages);
            self.stage = u8::try_from((u64::from(self.stage) + skipped) % stages).unwrap_or(0);
            for _ in 0..due.min(stages) {
                self.balance();
            }
            self.next_balance = self
                .next_balance
                .saturating_add(due.saturating_mul(BALANCE_PERIOD_NS));
        }
        let picked = self.pick(now, busy);
        self.current = picked;
        Pick {
            vgpu: picked,
            engines: picked
                .and_then(|p| busy.get(p).copied())
                .unwrap_or(EngineMask::EMPTY),
            next_tick: now.saturating_add(self.slice_ns),
        }
    }

    fn pick(&mut self, now: u64, busy: &[EngineMask; N]) -> Option<usize> {
        let mut found = None;
        for (pos, slot) in self.order.iter().take(self.len).enumerate() {
            let Some(s) = self.slots.get_mut(*slot).and_then(Option::as_mut) else {
                continue;
            };
            if busy.get(*slot).is_none_or(|m| *m == EngineMask::EMPTY) {
                continue;
            }
            if let Some(until) = s.priority_until {
                if now < until {
                    return Some(*slot);
                }
                s.priority_until = None;
            }
            if s.left > 0 {
                found = Some((pos, *slot));
                break;
            }
        }
        let (pos, slot) = found?;
        if let Some(win) = self.order.get_mut(pos..self.len) {
            win.rotate_left(1);
        }
        Some(slot)
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
    use crate::id::EngineId;
    use std::vec::Vec;

    const MS: u64 = 1_000_000;
    const R: EngineMask = EngineMask::RCS;
    const NONE: EngineMask = EngineMask::EMPTY;

    /// Runs ticks every 1 ms from `from` (inclusive) to `to` (exclusive).
    fn run<const N: usize>(
        s: &mut Scheduler<N>,
        from: u64,
        to: u64,
        mut busy: impl FnMut(u64) -> [EngineMask; N],
    ) -> Vec<Option<usize>> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            let p = s.tick(t, &busy(t));
            out.push(p.vgpu);
            assert_eq!(p.next_tick, t + MS);
            t = p.next_tick;
        }
        out
    }

    #[test]
    fn priority_then_round_robin_exact() {
        let mut s = Scheduler::<3>::default();
        s.add(0, 1, 0).unwrap();
        s.add(1, 1, 0).unwrap();
        // Last added is first and keeps the engines while its priority lasts.
        let picks = run(&mut s, 0, 3 * MS, |_| [R, R, NONE]);
        assert_eq!(picks, [Some(1), Some(1), Some(1)]);
        // Idle priority vGPU: the other one runs.
        let p = s.tick(3 * MS, &[R, NONE, NONE]);
        assert_eq!(p.vgpu, Some(0));
        assert_eq!(p.engines, R);
        // After 2 s both alternate (equal weights, budget 50 ms each per stage).
        let picks = run(&mut s, 2000 * MS, 2004 * MS, |_| [R, R, NONE]);
        assert_eq!(picks, [Some(1), Some(0), Some(1), Some(0)]);
        assert_eq!(s.used_ns(2), None);
        assert_eq!(s.tick(2004 * MS, &[NONE; 3]).vgpu, None);
    }

    #[test]
    fn fairness_by_weight_over_long_runs() {
        let mut s = Scheduler::<3>::default();
        for (i, w) in [1u8, 2, 4].into_iter().enumerate() {
            s.add(i, w, 0).unwrap();
        }
        run(&mut s, 0, 3000 * MS, |_| [R; 3]);
        let before: Vec<u64> = (0..3).map(|i| s.used_ns(i).unwrap()).collect();
        run(&mut s, 3000 * MS, 13_000 * MS, |_| [R; 3]);
        let used: Vec<u64> = (0..3).map(|i| s.used_ns(i).unwrap() - before[i]).collect();
        let total: u64 = used.iter().sum();
        assert_eq!(total, 10_000 * MS, "the GPU never idles while all are busy");
        for (u, w) in used.iter().zip([1u64, 2, 4]) {
            let want = 10_000 * MS * w / 7;
            let diff = u.abs_diff(want);
            assert!(diff * 100 <= want * 2, "weight {w}: used {u} want {want}");
        }
    }

    #[test]
    fn no_starvation_and_idle_skipped() {
        let mut s = Scheduler::<3>::default();
        s.add(0, 1, 0).unwrap();
        s.add(1, 16, 0).unwrap();
        s.add(2, 8, 0).unwrap();
        run(&mut s, 0, 2000 * MS, |_| [R, R, NONE]);
        let picks = run(&mut s, 2000 * MS, 4000 * MS, |_| [R, R, NONE]);
        // Every 100 ms window gives the weight-1 vGPU some time; slot 2 (idle) never runs.
        for w in picks.chunks(100) {
            assert!(w.contains(&Some(0)));
            assert!(w.contains(&Some(1)));
        }
        assert!(!picks.contains(&Some(2)));
        assert_eq!(s.used_ns(2), Some(0));
        // Shares are weight / total weight of registered vGPUs (1/25, 16/25); as in GVT
        // the idle vGPU's share (8/25) is not handed to the others.
        let count = |v| picks.iter().filter(|p| **p == v).count();
        assert_eq!(count(Some(0)), 2000 / 25);
        assert_eq!(count(Some(1)), 2000 * 16 / 25);
        assert_eq!(count(None), 2000 * 8 / 25);
    }

    #[test]
    fn budgets_exhausted_means_nobody_runs_until_balance() {
        let mut s = Scheduler::<2>::default();
        s.add(0, 1, 0).unwrap();
        s.add(1, 1, 0).unwrap();
        run(&mut s, 0, 2000 * MS, |_| [R, NONE]);
        // t = 2000 ms: stage 0 of a cycle; only slot 0 busy: it gets 50 ms per stage.
        let picks = run(&mut s, 2000 * MS, 2100 * MS, |_| [R, NONE]);
        assert_eq!(picks.iter().filter(|p| **p == Some(0)).count(), 50);
        assert_eq!(picks[50..], [None; 50]);
        assert_eq!(s.left_ns(0), Some(0));
    }

    #[test]
    fn add_remove_weights_and_time_jumps() {
        let mut s = Scheduler::<2>::new(0);
        assert_eq!(s.add(0, 0, 0), Err(EngineError::BadWeight { weight: 0 }));
        assert_eq!(s.add(0, 17, 0), Err(EngineError::BadWeight { weight: 17 }));
        assert_eq!(s.add(2, 1, 0), Err(EngineError::UnknownVgpu { slot: 2 }));
        s.add(0, 1, 0).unwrap();
        assert_eq!(s.add(0, 1, 0), Err(EngineError::Capacity));
        s.add(1, 3, 0).unwrap();
        assert_eq!(
            s.set_weight(1, 17),
            Err(EngineError::BadWeight { weight: 17 })
        );
        s.set_weight(1, 4).unwrap();
        assert_eq!(s.tick(0, &[R, R]).next_tick, 1, "slice of 0 counts as 1 ns");
        assert_eq!(s.current(), Some(1));
        s.remove(1).unwrap();
        assert_eq!(s.current(), None);
        assert_eq!(s.remove(1), Err(EngineError::UnknownVgpu { slot: 1 }));
        // A jump of an hour runs a bounded number of stages and charges the whole gap.
        let p = s.tick(3_600_000 * MS, &[R, R]);
        assert_eq!(p.vgpu, Some(0));
        // Time going backwards is treated as no time passing.
        let p = s.tick(5, &[R, R]);
        assert_eq!(p.next_tick, 3_600_000 * MS + 1);
        assert_eq!(s.used_ns(0), Some(0));
        let _ = EngineId::Rcs;
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn seeded_run(seed: u64) -> (Vec<Option<usize>>, Vec<u64>) {
        let mut rng = seed | 1;
        let mut s = Scheduler::<4>::default();
        for i in 0..4 {
            s.add(i, (xorshift(&mut rng) % 16 + 1) as u8, 0).unwrap();
        }
        let picks = run(&mut s, 0, 4000 * MS, |_| {
            let bits = xorshift(&mut rng);
            core::array::from_fn(|i| {
                if bits >> i & 1 != 0 {
                    EngineMask::RCS.with(EngineId::Bcs)
                } else {
                    NONE
                }
            })
        });
        let used = (0..4).map(|i| s.used_ns(i).unwrap()).collect();
        (picks, used)
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = seeded_run(42);
        assert_eq!(a, seeded_run(42));
        assert_ne!(a.0, seeded_run(7).0);
        assert!(a.1.iter().sum::<u64>() <= 4000 * MS - MS);
    }

    proptest::proptest! {
        #[test]
        fn picks_only_busy_registered(seed in proptest::prelude::any::<u64>(), steps in 1usize..300) {
            let mut rng = seed | 1;
            let mut s = Scheduler::<3>::default();
            s.add(0, 2, 0).unwrap();
            s.add(2, 5, 0).unwrap();
            let mut t = 0u64;
            for _ in 0..steps {
                t += xorshift(&mut rng) % (300 * MS);
                let bits = xorshift(&mut rng);
                let busy: [EngineMask; 3] =
                    core::array::from_fn(|i| if bits >> i & 1 != 0 { R } else { NONE });
                let p = s.tick(t, &busy);
                if let Some(v) = p.vgpu {
                    proptest::prop_assert!(v != 1);
                    proptest::prop_assert_eq!(p.engines, busy[v]);
                } else {
                    proptest::prop_assert_eq!(p.engines, NONE);
                }
            }
        }
    }
}
