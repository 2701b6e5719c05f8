//! The VFIO migration v2 device state machine.
//!
//! States, capability sets and the next-arc rule follow Linux's `vfio_mig_get_next_state`: the device
//! performs one arc at a time; a request for a distant state is reached over the shortest path, arcs
//! through states the device does not support are skipped, and a path never enters the saving
//! states (PRE_COPY, PRE_COPY_P2P, STOP_COPY) midway: it only moves within them when it starts
//! there (PRE_COPY → PRE_COPY_P2P → STOP_COPY shares one data stream). [`next_arc`] always terminates: every
//! cell of the table moves strictly closer to the requested state or reports an error.

use core::fmt;

/// A migration state of the device, numbered as in `enum vfio_device_mig_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum MigState {
    /// The device failed; leave only by reset (which returns to RUNNING).
    Error = 0,
    /// Stopped: no state change, no DMA, no interrupts; config space still answers.
    Stop = 1,
    /// Fully operational.
    Running = 2,
    /// Stopped, and the final state is being streamed out.
    StopCopy = 3,
    /// Stopped, and state is being loaded from a stream.
    Resuming = 4,
    /// Running, but initiates no new peer-to-peer DMA.
    RunningP2p = 5,
    /// Running, with state changes tracked and pre-copy data streamed out.
    PreCopy = 6,
    /// PRE_COPY with peer-to-peer quiescence.
    PreCopyP2p = 7,
}

impl MigState {
    /// All states in numeric order.
    pub const ALL: [MigState; 8] = [
        MigState::Error,
        MigState::Stop,
        MigState::Running,
        MigState::StopCopy,
        MigState::Resuming,
        MigState::RunningP2p,
        MigState::PreCopy,
        MigState::PreCopyP2p,
    ];

    /// The state with this uAPI number, if any (numbers come from user space: never trusted).
    pub const fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => MigState::Error,
            1 => MigState::Stop,
            2 => MigState::Running,
            3 => MigState::StopCopy,
            4 => MigState::Resuming,
            5 => MigState::RunningP2p,
            6 => MigState::PreCopy,
            7 => MigState::PreCopyP2p,
            _ => return None,
        })
    }

    /// True for the states that share one saving data stream.
    pub const fn is_saving(self) -> bool {
        matches!(
            self,
            MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy
        )
    }

    /// True where the device may run guest work.
    pub const fn is_running(self) -> bool {
        matches!(
            self,
            MigState::Running | MigState::RunningP2p | MigState::PreCopy | MigState::PreCopyP2p
        )
    }

    /// The capabilities a device needs to support this state.
    const fn required(self) -> Caps {
        match self {
            MigState::Stop | MigState::Running | MigState::StopCopy | MigState::Resuming => {
                Caps::STOP_COPY
            }
            MigState::RunningP2p => Caps(Caps::STOP_COPY.0 | Caps::P2P.0),
            MigState::PreCopy => Caps(Caps::STOP_COPY.0 | Caps::PRE_COPY.0),
            MigState::PreCopyP2p => Caps(Caps::STOP_COPY.0 | Caps::P2P.0 | Caps::PRE_COPY.0),
            // ERROR can never be requested.
            MigState::Error => Caps(u32::MAX),
        }
    }

    /// Whether a device with `caps` has this state.
    pub const fn supported_by(self, caps: Caps) -> bool {
        let req = self.required().0;
        req & caps.0 == req
    }
}

impl fmt::Display for MigState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigState::Error => "ERROR",
            MigState::Stop => "STOP",
            MigState::Running => "RUNNING",
            MigState::StopCopy => "STOP_COPY",
            MigState::Resuming => "RESUMING",
            MigState::RunningP2p => "RUNNING_P2P",
            MigState::PreCopy => "PRE_COPY",
            MigState::PreCopyP2p => "PRE_COPY_P2P",
        })
    }
}

/// Migration capability flags, as in `struct vfio_device_feature_migration.flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Caps(pub u32);

impl Caps {
    /// `VFIO_MIGRATION_STOP_COPY`: mandatory; gives STOP, STOP_COPY and RESUMING.
    pub const STOP_COPY: Caps = Caps(1 << 0);
    /// `VFIO_MIGRATION_P2P`: adds RUNNING_P2P.
    pub const P2P: Caps = Caps(1 << 1);
    /// `VFIO_MIGRATION_PRE_COPY`: adds PRE_COPY (and PRE_COPY_P2P with P2P).
    pub const PRE_COPY: Caps = Caps(1 << 2);
    /// Every capability this crate implements.
    pub const ALL: Caps = Caps(Self::STOP_COPY.0 | Self::P2P.0 | Self::PRE_COPY.0);

    /// Union of two capability sets.
    #[must_use]
    pub const fn with(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }
}

/// Why a transition request cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FsmError {
    /// The capability set lacks `STOP_COPY`, which every migratable device must have.
    NoStopCopy,
    /// The requested state is not supported with these capabilities (or is ERROR).
    Unsupported(MigState),
    /// The current state is not supported with these capabilities: a caller bug.
    BadCurrent(MigState),
    /// No path: the device is in ERROR (reset it), or the arc is forbidden (STOP_COPY → PRE_COPY).
    NoPath {
        /// Current state.
        from: MigState,
        /// Requested state.
        to: MigState,
    },
}

impl fmt::Display for FsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsmError::NoStopCopy => f.write_str("capabilities lack STOP_COPY"),
            FsmError::Unsupported(s) => write!(f, "state {s} is not supported by this device"),
            FsmError::BadCurrent(s) => {
                write!(f, "current state {s} is not supported by this device")
            }
            FsmError::NoPath { from, to } => write!(f, "no transition from {from} to {to}"),
        }
    }
}

impl core::error::Error for FsmError {}

/// `vfio_from_fsm_table`: row = current state, column = requested state, cell = next single arc.
const TABLE: [[MigState; 8]; 8] = {
    use MigState::{
        Error as E, PreCopy as PC, PreCopyP2p as PCP, Resuming as RS, Running as R,
        RunningP2p as RP, Stop as S, StopCopy as SC,
    };
    [
        //  ERROR STOP RUN  S_COPY RESUM R_P2P PC   PC_P2P   (requested)
        [E, E, E, E, E, E, E, E],         // from ERROR
        [E, S, RP, SC, RS, RP, RP, RP],   // from STOP
        [E, RP, R, RP, RP, RP, PC, RP],   // from RUNNING
        [E, S, S, SC, S, S, E, E],        // from STOP_COPY
        [E, S, S, S, RS, S, S, S],        // from RESUMING
        [E, S, R, S, S, RP, R, PCP],      // from RUNNING_P2P
        [E, R, R, PCP, R, R, PC, PCP],    // from PRE_COPY
        [E, RP, RP, SC, RP, RP, PC, PCP], // from PRE_COPY_P2P
    ]
};

fn cell(from: MigState, to: MigState) -> MigState {
    TABLE
        .get(from as usize)
        .and_then(|row| row.get(to as usize))
        .copied()
        .unwrap_or(MigState::Error)
}

/// The next single arc from `cur` toward `new` for a device with `caps`.
///
/// Returns `Ok(cur)` when `cur == new`. The caller performs the returned arc and asks again until it
/// reaches `new`; at most four arcs separate any two states.
pub fn next_arc(cur: MigState, new: MigState, caps: Caps) -> Result<MigState, FsmError> {
    if !MigState::Stop.supported_by(caps) {
        return Err(FsmError::NoStopCopy);
    }
    if !cur.supported_by(caps) {
        return Err(FsmError::BadCurrent(cur));
    }
    if !new.supported_by(caps) {
        return Err(FsmError::Unsupported(new));
    }
    let mut next = cell(cur, new);
    // Skip arcs touching unsupported states. Bounded: each unsupported hop is followed by a supported
    // state within the table's 8 states.
    let mut hops = 0;
    while !next.supported_by(caps) && next != MigState::Error && hops < 8 {
        next = cell(next, new);
        hops += 1;
    }
    if next == MigState::Error || !next.supported_by(caps) {
        return Err(FsmError::NoPath { from: cur, to: new });
    }
    Ok(next)
}

/// Whole path from `cur` to `new` (excluding `cur`), into `out`; returns the number of arcs.
pub fn path(
    cur: MigState,
    new: MigState,
    caps: Caps,
    out: &mut [MigState; 8],
) -> Result<usize, FsmError> {
    // Validates the states and capabilities even when no arc is needed.
    next_arc(cur, new, caps)?;
    let mut s = cur;
    let mut n = 0;
    while s != new {
        let next = next_arc(s, new, caps)?;
        let slot = out
            .get_mut(n)
            .ok_or(FsmError::NoPath { from: cur, to: new })?;
        *slot = next;
        n += 1;
        s = next;
    }
    Ok(n)
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
    use MigState::*;

    const CAP_SETS: [Caps; 4] = [
        Caps::STOP_COPY,
        Caps(Caps::STOP_COPY.0 | Caps::P2P.0),
        Caps(Caps::STOP_COPY.0 | Caps::PRE_COPY.0),
        Caps::ALL,
    ];

    fn walk(
        cur: MigState,
        new: MigState,
        caps: Caps,
    ) -> Result<heapless::Vec<MigState, 8>, FsmError> {
        let mut out = [Stop; 8];
        let n = path(cur, new, caps, &mut out)?;
        Ok(out[..n].iter().copied().collect())
    }

    #[test]
    fn every_combination_terminates_and_never_passes_through_a_saving_state() {
        for caps in CAP_SETS {
            for cur in MigState::ALL {
                for new in MigState::ALL {
                    let r = walk(cur, new, caps);
                    if !cur.supported_by(caps) {
                        assert_eq!(r, Err(FsmError::BadCurrent(cur)));
                        continue;
                    }
                    if !new.supported_by(caps) {
                        assert_eq!(r, Err(FsmError::Unsupported(new)));
                        continue;
                    }
                    match r {
                        Ok(p) => {
                            assert!(p.len() <= 4, "{cur}->{new}: {p:?}");
                            if cur != new {
                                assert_eq!(*p.last().unwrap(), new);
                            }
                            for s in &p[..p.len().saturating_sub(1)] {
                                // A path may stay inside the saving group it starts in (one data
                                // stream across the moves), but never enters it midway.
                                assert!(
                                    !s.is_saving() || cur.is_saving(),
                                    "{cur}->{new} passes through {s}"
                                );
                                assert!(s.supported_by(caps));
                            }
                        }
                        Err(FsmError::NoPath { .. }) => {
                            assert!(
                                cur == Error
                                    || (cur == StopCopy && matches!(new, PreCopy | PreCopyP2p)),
                                "{cur}->{new} with {caps:?} has no path"
                            );
                        }
                        Err(e) => panic!("{cur}->{new}: {e}"),
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_paths_with_all_features() {
        let c = Caps::ALL;
        assert_eq!(
            walk(Stop, Running, c).unwrap().as_slice(),
            &[RunningP2p, Running]
        );
        assert_eq!(
            walk(Running, StopCopy, c).unwrap().as_slice(),
            &[RunningP2p, Stop, StopCopy]
        );
        assert_eq!(
            walk(PreCopy, StopCopy, c).unwrap().as_slice(),
            &[PreCopyP2p, StopCopy]
        );
        assert_eq!(
            walk(PreCopy, Stop, c).unwrap().as_slice(),
            &[Running, RunningP2p, Stop]
        );
        assert_eq!(
            walk(Resuming, PreCopy, c).unwrap().as_slice(),
            &[Stop, RunningP2p, Running, PreCopy]
        );
        assert_eq!(
            walk(StopCopy, PreCopy, c),
            Err(FsmError::NoPath {
                from: StopCopy,
                to: PreCopy
            })
        );
    }

    #[test]
    fn kernel_paths_stop_copy_only_and_pre_copy_without_p2p() {
        let c = Caps::STOP_COPY;
        assert_eq!(
            walk(Running, StopCopy, c).unwrap().as_slice(),
            &[Stop, StopCopy]
        );
        assert_eq!(
            walk(StopCopy, Running, c).unwrap().as_slice(),
            &[Stop, Running]
        );
        assert_eq!(
            walk(Resuming, Running, c).unwrap().as_slice(),
            &[Stop, Running]
        );
        assert_eq!(
            walk(Running, PreCopy, c),
            Err(FsmError::Unsupported(PreCopy))
        );
        let c = Caps(Caps::STOP_COPY.0 | Caps::PRE_COPY.0);
        assert_eq!(walk(PreCopy, StopCopy, c).unwrap().as_slice(), &[StopCopy]);
        assert_eq!(walk(Running, PreCopy, c).unwrap().as_slice(), &[PreCopy]);
        assert_eq!(walk(PreCopy, Stop, c).unwrap().as_slice(), &[Running, Stop]);
    }

    #[test]
    fn error_is_never_requestable_and_only_left_by_reset() {
        for caps in CAP_SETS {
            for s in MigState::ALL {
                assert_eq!(
                    next_arc(s, Error, caps).unwrap_err(),
                    if s.supported_by(caps) {
                        FsmError::Unsupported(Error)
                    } else {
                        FsmError::BadCurrent(s)
                    }
                );
            }
        }
        assert_eq!(
            next_arc(Error, Running, Caps::ALL),
            Err(FsmError::BadCurrent(Error))
        );
        assert_eq!(next_arc(Stop, Running, Caps(0)), Err(FsmError::NoStopCopy));
        assert_eq!(MigState::from_raw(8), None);
        assert_eq!(MigState::from_raw(6), Some(PreCopy));
    }
}
