//! Engine-layer errors.

use core::fmt;

use crate::id::EngineId;
/// Whose fault an error is: the workspace's one classification (`migstream::Fault`).
pub use migstream::Fault;

/// Errors of engine state handling and of the engine-state payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EngineError {
    /// The engine does not exist on this GPU model.
    NotPresent {
        /// The engine.
        engine: EngineId,
    },
    /// Save needs dispatch stopped ([`Engines::quiesce`](crate::Engines::quiesce)) and no
    /// workload in flight.
    NotQuiesced {
        /// Workloads still executing.
        in_flight: u32,
    },
    /// The output buffer is too small.
    Capacity,
    /// The payload is malformed (truncated, reserved bytes set, unknown flags, engines out
    /// of order, a workload naming another engine) at this byte position.
    Malformed {
        /// Byte position in the payload.
        at: usize,
    },
    /// The payload has a format version this crate does not read.
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The payload names an engine id that does not exist.
    UnknownEngine {
        /// The raw id.
        id: u8,
    },
    /// The payload's set of engines differs from the engines present here.
    EngineMismatch,
    /// ELSP partial-write index not in 0..4.
    BadElspIndex {
        /// The index found.
        index: u8,
    },
    /// CSB pointer not in 0..6 and not the reset value 7.
    BadCsbPointer {
        /// The pointer found.
        value: u8,
    },
    /// More queued workloads than [`QUEUE_CAPACITY`](crate::QUEUE_CAPACITY).
    QueueTooLong {
        /// The length found.
        len: u8,
    },
    /// Bytes left after the last engine record.
    TrailingBytes {
        /// Byte position of the first extra byte.
        at: usize,
    },
    /// The guest submitted an invalid context descriptor (element 0 not valid, a valid
    /// element without the PPGTT/privilege bit, or an unsupported addressing mode).
    InvalidDescriptor,
    /// Ring head or tail offset outside the ring buffer, or a misaligned advance.
    RingOffset,
    /// Advancing the head would pass the tail.
    RingOverrun,
    /// A logical ring context image does not have the expected LRI header or register
    /// address at this dword of its register-state page.
    BadContextImage {
        /// Dword index in the page.
        dword: u16,
    },
    /// Scheduler weight outside 1..=16.
    BadWeight {
        /// The weight given.
        weight: u8,
    },
    /// No vGPU with this scheduler slot is registered.
    UnknownVgpu {
        /// The slot given.
        slot: usize,
    },
    /// The execlist state byte of the payload is inconsistent with itself or with the
    /// engine's queue.
    BadExeclistState {
        /// The byte found.
        value: u8,
    },
}

impl EngineError {
    /// Whose fault the error is.
    #[must_use]
    pub const fn fault(&self) -> Fault {
        match self {
            Self::NotPresent { .. }
            | Self::Capacity
            | Self::BadWeight { .. }
            | Self::UnknownVgpu { .. } => Fault::Local,
            Self::NotQuiesced { .. } => Fault::State,
            Self::InvalidDescriptor
            | Self::RingOffset
            | Self::RingOverrun
            | Self::BadContextImage { .. } => Fault::Guest,
            Self::Malformed { .. }
            | Self::UnsupportedVersion { .. }
            | Self::UnknownEngine { .. }
            | Self::EngineMismatch
            | Self::BadElspIndex { .. }
            | Self::BadCsbPointer { .. }
            | Self::QueueTooLong { .. }
            | Self::TrailingBytes { .. }
            | Self::BadExeclistState { .. } => Fault::Stream,
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPresent { engine } => write!(f, "engine {engine:?} not present"),
            Self::NotQuiesced { in_flight } => {
                write!(f, "engines not quiesced ({in_flight} workloads in flight)")
            }
            Self::Capacity => f.write_str("output buffer too small"),
            Self::Malformed { at } => write!(f, "malformed engine payload at byte {at}"),
            Self::UnsupportedVersion { version } => {
                write!(f, "unsupported engine payload version {version}")
            }
            Self::UnknownEngine { id } => write!(f, "unknown engine id {id}"),
            Self::EngineMismatch => f.write_str("payload engines differ from present engines"),
            Self::BadElspIndex { index } => write!(f, "ELSP index {index} out of range"),
            Self::BadCsbPointer { value } => write!(f, "CSB pointer {value} out of range"),
            Self::QueueTooLong { len } => write!(f, "workload queue length {len} too long"),
            Self::TrailingBytes { at } => write!(f, "trailing bytes at {at}"),
            Self::InvalidDescriptor => f.write_str("invalid context descriptor"),
            Self::RingOffset => f.write_str("ring offset outside the ring buffer"),
            Self::RingOverrun => f.write_str("ring head would pass the tail"),
            Self::BadContextImage { dword } => {
                write!(f, "unexpected ring context image at dword {dword:#x}")
            }
            Self::BadWeight { weight } => write!(f, "scheduler weight {weight} not in 1..=16"),
            Self::UnknownVgpu { slot } => write!(f, "no vGPU in scheduler slot {slot}"),
            Self::BadExeclistState { value } => {
                write!(f, "inconsistent execlist state {value:#04x}")
            }
        }
    }
}

impl core::error::Error for EngineError {}
