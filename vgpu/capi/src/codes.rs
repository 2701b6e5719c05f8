//! Result codes: `0` is success, every failure a negative constant with a static text
//! ([`text`], `vgpu_mig_strerror` in C).
//!
//! Codes name what went wrong as precisely as the library reports it: one code per kind of
//! [`VgpuError`], and the codes of the C boundary itself (null pointers, bad arguments, storage of
//! the wrong size). The full detail of the last failure of a device (which record, which frame)
//! is available as text from `vgpu_mig_last_error`.

use vgpu::VgpuError;

/// Success.
pub const VGPU_MIG_OK: i32 = 0;
/// A required pointer argument was null.
pub const VGPU_MIG_E_NULL: i32 = -1;
/// An argument is out of range (access size, offset, unknown state number, zero-length buffer
/// where data is required).
pub const VGPU_MIG_E_ARGUMENT: i32 = -2;
/// The configuration is invalid (graphics-memory ranges, guest memory regions, capabilities).
pub const VGPU_MIG_E_CONFIG: i32 = -3;
/// The storage block or guest memory buffer is smaller than the layout says.
pub const VGPU_MIG_E_STORAGE_SIZE: i32 = -4;
/// The storage block is not aligned to `VgpuMigLayout::storage_align`.
pub const VGPU_MIG_E_STORAGE_ALIGN: i32 = -5;
/// The migration stream could not be decoded (damaged, truncated record, bad checksum).
pub const VGPU_MIG_E_STREAM: i32 = -10;
/// The stream is for another device model, vGPU type or format version.
pub const VGPU_MIG_E_INCOMPATIBLE: i32 = -11;
/// The stream's guest view of graphics memory differs from this vGPU's.
pub const VGPU_MIG_E_GUEST_VIEW: i32 = -12;
/// The stream encoder refused an operation (an undersized buffer or a local bug).
pub const VGPU_MIG_E_ENCODE: i32 = -13;
/// A GTT operation failed (stream content or guest programming).
pub const VGPU_MIG_E_GTT: i32 = -14;
/// A register access failed (unknown register, bad size, misaligned, read-only bits changed).
pub const VGPU_MIG_E_MMIO: i32 = -15;
/// An engine operation failed.
pub const VGPU_MIG_E_ENGINE: i32 = -16;
/// A graphics-memory tracking operation failed.
pub const VGPU_MIG_E_GMEM: i32 = -17;
/// The VFIO migration state machine refused the transition.
pub const VGPU_MIG_E_TRANSITION: i32 = -18;
/// A page in the stream names a frame outside guest memory.
pub const VGPU_MIG_E_FRAME_OUTSIDE: i32 = -19;
/// A PPGTT root in the stream is malformed or its tables leave guest memory.
pub const VGPU_MIG_E_PPGTT: i32 = -20;
/// A duplicate page's source does not hold the content the stream says.
pub const VGPU_MIG_E_DUPLICATE: i32 = -21;
/// A device-state record this version cannot restore.
pub const VGPU_MIG_E_UNSUPPORTED_RECORD: i32 = -22;
/// A required record is missing or a unique one repeated.
pub const VGPU_MIG_E_RECORD_COUNT: i32 = -23;
/// The config-space record has the wrong size or identity.
pub const VGPU_MIG_E_CONFIG_SPACE: i32 = -24;
/// The stream ended before its END record.
pub const VGPU_MIG_E_TRUNCATED: i32 = -25;
/// Staging storage is too small for the stream's device state.
pub const VGPU_MIG_E_STAGING_FULL: i32 = -26;
/// A library buffer does not fit the configuration.
pub const VGPU_MIG_E_STORAGE: i32 = -27;
/// The guest memory backend refused an access.
pub const VGPU_MIG_E_GUEST_MEMORY: i32 = -28;
/// The host GTT callback failed.
pub const VGPU_MIG_E_HOST_GTT: i32 = -29;
/// The vGPU still has work in flight where it must be quiesced; the request may be retried.
pub const VGPU_MIG_E_NOT_QUIESCED: i32 = -30;
/// The operation is not valid in the current migration state (for example data read outside
/// PRE_COPY / STOP_COPY, data write outside RESUMING).
pub const VGPU_MIG_E_WRONG_STATE: i32 = -31;
/// A dirty-report request is malformed (range, page size or bitmap size).
pub const VGPU_MIG_E_REPORT: i32 = -32;
/// A channel record is missing, malformed or inconsistent.
pub const VGPU_MIG_E_CHANNEL: i32 = -33;
/// The stream id is not the one this migration expects.
pub const VGPU_MIG_E_STREAM_ID: i32 = -34;
/// A record where a valid source never writes one, or rounds that do not continue.
pub const VGPU_MIG_E_RECORD_ORDER: i32 = -35;
/// Device state beyond what a valid source sends.
pub const VGPU_MIG_E_STATE_BOUND: i32 = -36;
/// A failure of a kind this version of the C interface does not name.
pub const VGPU_MIG_E_OTHER: i32 = -37;

/// Every code and its text, in code order (success first).
const TEXTS: &[(i32, &core::ffi::CStr)] = &[
    (VGPU_MIG_OK, c"success"),
    (VGPU_MIG_E_NULL, c"a required pointer argument is null"),
    (VGPU_MIG_E_ARGUMENT, c"an argument is out of range"),
    (VGPU_MIG_E_CONFIG, c"the vGPU configuration is invalid"),
    (
        VGPU_MIG_E_STORAGE_SIZE,
        c"storage or guest memory buffer smaller than the layout requires",
    ),
    (
        VGPU_MIG_E_STORAGE_ALIGN,
        c"storage block not aligned to the layout's storage_align",
    ),
    (VGPU_MIG_E_STREAM, c"migration stream damaged or malformed"),
    (
        VGPU_MIG_E_INCOMPATIBLE,
        c"migration stream from an incompatible device or format version",
    ),
    (
        VGPU_MIG_E_GUEST_VIEW,
        c"stream's guest graphics-memory view differs from this vGPU's",
    ),
    (VGPU_MIG_E_ENCODE, c"stream encoder refused an operation"),
    (VGPU_MIG_E_GTT, c"GTT operation failed"),
    (VGPU_MIG_E_MMIO, c"register access refused"),
    (VGPU_MIG_E_ENGINE, c"engine operation failed"),
    (VGPU_MIG_E_GMEM, c"graphics-memory tracking failed"),
    (
        VGPU_MIG_E_TRANSITION,
        c"migration state transition not allowed",
    ),
    (
        VGPU_MIG_E_FRAME_OUTSIDE,
        c"stream page outside guest memory",
    ),
    (
        VGPU_MIG_E_PPGTT,
        c"stream PPGTT roots malformed or outside guest memory",
    ),
    (
        VGPU_MIG_E_DUPLICATE,
        c"stream duplicate page does not match its source",
    ),
    (
        VGPU_MIG_E_UNSUPPORTED_RECORD,
        c"stream record kind cannot be restored by this version",
    ),
    (
        VGPU_MIG_E_RECORD_COUNT,
        c"stream record missing or repeated",
    ),
    (
        VGPU_MIG_E_CONFIG_SPACE,
        c"stream config-space record has the wrong size or identity",
    ),
    (VGPU_MIG_E_TRUNCATED, c"stream ended before its END record"),
    (VGPU_MIG_E_STAGING_FULL, c"staging storage too small"),
    (
        VGPU_MIG_E_STORAGE,
        c"a library buffer does not fit the configuration",
    ),
    (VGPU_MIG_E_GUEST_MEMORY, c"guest memory access refused"),
    (VGPU_MIG_E_HOST_GTT, c"host GTT callback failed"),
    (VGPU_MIG_E_NOT_QUIESCED, c"the vGPU is not quiesced"),
    (
        VGPU_MIG_E_WRONG_STATE,
        c"operation not valid in the current migration state",
    ),
    (VGPU_MIG_E_REPORT, c"dirty report request malformed"),
    (
        VGPU_MIG_E_CHANNEL,
        c"stream channel record missing or inconsistent",
    ),
    (
        VGPU_MIG_E_STREAM_ID,
        c"stream id is not the one this migration expects",
    ),
    (VGPU_MIG_E_RECORD_ORDER, c"stream record out of order"),
    (
        VGPU_MIG_E_STATE_BOUND,
        c"stream device state larger than a valid source sends",
    ),
    (VGPU_MIG_E_OTHER, c"unclassified failure"),
];

/// The text of `code`: a static NUL-terminated string (for an unknown code, a text saying so).
#[must_use]
pub fn text(code: i32) -> &'static core::ffi::CStr {
    TEXTS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(c"unknown vgpu-mig result code", |(_, t)| t)
}

/// The code of a library error.
#[must_use]
pub fn of(e: &VgpuError) -> i32 {
    match e {
        VgpuError::Stream(_) => VGPU_MIG_E_STREAM,
        VgpuError::Incompatible(_) => VGPU_MIG_E_INCOMPATIBLE,
        VgpuError::GuestViewMismatch => VGPU_MIG_E_GUEST_VIEW,
        VgpuError::Encode(_) => VGPU_MIG_E_ENCODE,
        VgpuError::Gtt(_) => VGPU_MIG_E_GTT,
        VgpuError::Mmio(_) => VGPU_MIG_E_MMIO,
        VgpuError::Engine(_) => VGPU_MIG_E_ENGINE,
        VgpuError::Gmem(_) => VGPU_MIG_E_GMEM,
        VgpuError::Fsm(_) => VGPU_MIG_E_TRANSITION,
        VgpuError::FrameOutsideMemory { .. } => VGPU_MIG_E_FRAME_OUTSIDE,
        VgpuError::BadPpgtt => VGPU_MIG_E_PPGTT,
        VgpuError::DuplicateMismatch { .. } => VGPU_MIG_E_DUPLICATE,
        VgpuError::UnsupportedRecord { .. } => VGPU_MIG_E_UNSUPPORTED_RECORD,
        VgpuError::RecordCount { .. } => VGPU_MIG_E_RECORD_COUNT,
        VgpuError::BadConfigSpace => VGPU_MIG_E_CONFIG_SPACE,
        VgpuError::Truncated => VGPU_MIG_E_TRUNCATED,
        VgpuError::StagingFull { .. } => VGPU_MIG_E_STAGING_FULL,
        VgpuError::StorageSize | VgpuError::Storage(_) => VGPU_MIG_E_STORAGE,
        VgpuError::GuestMemory => VGPU_MIG_E_GUEST_MEMORY,
        VgpuError::HostGtt => VGPU_MIG_E_HOST_GTT,
        VgpuError::NotQuiesced => VGPU_MIG_E_NOT_QUIESCED,
        VgpuError::WrongPhase => VGPU_MIG_E_WRONG_STATE,
        VgpuError::Report(_) => VGPU_MIG_E_REPORT,
        VgpuError::BadChannel { .. }
        | VgpuError::WrongChannel { .. }
        | VgpuError::ChannelFailed { .. } => VGPU_MIG_E_CHANNEL,
        VgpuError::UnexpectedStreamId { .. } => VGPU_MIG_E_STREAM_ID,
        VgpuError::RecordOrder { .. }
        | VgpuError::BadRound { .. }
        | VgpuError::RoundOverBudget { .. } => VGPU_MIG_E_RECORD_ORDER,
        VgpuError::StateOverBound { .. } => VGPU_MIG_E_STATE_BOUND,
        _ => VGPU_MIG_E_OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_distinct_text() {
        for (i, (c, t)) in TEXTS.iter().enumerate() {
            assert!(!t.to_bytes().is_empty());
            assert_eq!(text(*c), *t);
            assert!(
                TEXTS.iter().skip(i + 1).all(|(d, u)| d != c && u != t),
                "{c} repeated"
            );
        }
        assert_eq!(text(-9999).to_bytes(), b"unknown vgpu-mig result code");
        assert_eq!(text(1).to_bytes(), b"unknown vgpu-mig result code");
    }
}
