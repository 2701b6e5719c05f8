//! Workloads and the bounded per-engine queue.

use heapless::Deque;

use crate::desc::ContextDescriptor;
use crate::id::EngineId;

/// Maximum queued (not yet dispatched) workloads per engine.
pub const QUEUE_CAPACITY: usize = 16;

/// One submitted context: what the scheduler dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Workload {
    /// Engine it runs on.
    pub engine: EngineId,
    /// Context descriptor as submitted.
    pub desc: ContextDescriptor,
    /// Ring head at submission (from the guest ring context).
    pub ring_head: u32,
    /// Ring tail at submission.
    pub ring_tail: u32,
    /// Emulate a schedule-in CSB event when it starts (true for element 0).
    pub schedule_in: bool,
}

/// Bounded FIFO of queued workloads of one engine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadQueue {
    q: Deque<Workload, QUEUE_CAPACITY>,
}

#[cfg(feature = "defmt")]
impl defmt::Format for WorkloadQueue {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "WorkloadQueue {{ len: {} }}", self.q.len());
    }
}

impl WorkloadQueue {
    /// Empty queue.
    #[must_use]
    pub const fn new() -> Self {
        Self { q: Deque::new() }
    }

    /// Appends; returns the workload back when full.
    pub fn push(&mut self, w: Workload) -> Result<(), Workload> {
        self.q.push_back(w)
    }

    /// Removes the oldest workload.
    pub fn pop(&mut self) -> Option<Workload> {
        self.q.pop_front()
    }

    /// The oldest workload, not removed.
    #[must_use]
    pub fn front(&self) -> Option<&Workload> {
        self.q.front()
    }

    /// Number queued.
    #[must_use]
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// True if nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// True if no more workloads fit.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.q.is_full()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Workload> {
        self.q.iter()
    }

    /// Drops every queued workload.
    pub fn clear(&mut self) {
        self.q.clear();
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
    fn bounded_fifo() {
        let w = |n: u32| Workload {
            engine: EngineId::Rcs,
            desc: ContextDescriptor::from_bits(0x119),
            ring_head: n,
            ring_tail: n + 8,
            schedule_in: true,
        };
        let mut q = WorkloadQueue::new();
        for n in 0..16 {
            q.push(w(n)).unwrap();
        }
        assert!(q.is_full());
        assert_eq!(q.push(w(99)), Err(w(99)));
        assert_eq!(q.pop(), Some(w(0)));
        assert_eq!(q.front(), Some(&w(1)));
        assert_eq!(q.len(), 15);
        q.clear();
        assert!(q.is_empty());
    }
}
