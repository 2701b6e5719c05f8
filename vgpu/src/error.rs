//! Errors of the vGPU layer. Each says whose fault it is, so an embedder can tell "abort this
//! migration, the peer sent garbage" from "retry with more storage" from "the guest misbehaved".

use core::fmt;

/// Whose fault an error is: the workspace's one classification, shared with the stream and
/// the component crates (`migstream::Fault`).
pub use migstream::Fault;

/// Which caller buffer a [`StorageError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Buffer {
    /// The source session's send bitmap ([`Layout::send_words`](crate::Layout::send_words)).
    Send,
    /// The source session's scratch buffer ([`Layout::scratch_for`](crate::Layout::scratch_for)).
    Scratch,
    /// What a GGTT pre-copy keeps of what it sent
    /// ([`Layout::ggtt_entries`](crate::Layout::ggtt_entries)).
    GgttSent,
    /// Content tracking's hash table ([`Layout::content_hashes`](crate::Layout::content_hashes)).
    ContentHashes,
    /// Content tracking's delta cache: 4096 bytes per tag.
    DeltaPages,
}

/// A caller buffer whose size does not fit the configuration, and the size it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StorageError {
    /// The buffer.
    pub buffer: Buffer,
    /// The length it needs (exactly, or at least: see the buffer's documentation), in its
    /// element type (bitmap words, GGTT entries, bytes).
    pub needed: usize,
    /// The length given.
    pub got: usize,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.buffer {
            Buffer::Send => "send bitmap (words)",
            Buffer::Scratch => "scratch buffer (bytes)",
            Buffer::GgttSent => "GGTT pre-copy copy (entries)",
            Buffer::ContentHashes => "content hash table (words)",
            Buffer::DeltaPages => "delta cache (bytes)",
        };
        write!(f, "{what}: {} given, {} needed", self.got, self.needed)
    }
}

/// An error of a vGPU operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum VgpuError {
    /// The stream could not be decoded.
    Stream(migstream::DecodeError),
    /// The stream is for another device model or vGPU type.
    Incompatible(migstream::Incompatible),
    /// The stream's guest view of graphics memory differs from this vGPU's.
    GuestViewMismatch,
    /// The encoder refused an operation (a local bug or an undersized buffer).
    Encode(migstream::EncodeError),
    /// A GTT operation failed (stream content or guest programming).
    Gtt(gtt::GttError),
    /// A register operation failed.
    Mmio(mmio::MmioError),
    /// An engine operation failed.
    Engine(engines::EngineError),
    /// A graphics-memory tracking operation failed.
    Gmem(gmem::GmemError),
    /// The migration state machine refused a transition.
    Fsm(crate::fsm::FsmError),
    /// A page record names a frame outside the destination's guest memory.
    FrameOutsideMemory {
        /// The guest frame number.
        gfn: u64,
    },
    /// A PPGTT root record is malformed, or its page tables loop, fault or leave guest memory.
    BadPpgtt,
    /// A DUP page's source frame does not hold the content the stream says it does.
    DuplicateMismatch {
        /// The frame being written.
        gfn: u64,
        /// The frame copied from.
        from: u64,
    },
    /// A device-state record of a kind this version cannot restore.
    UnsupportedRecord {
        /// The record kind.
        kind: u16,
    },
    /// A required device-state record is missing, or one that must be unique was repeated.
    RecordCount {
        /// The record kind.
        kind: u16,
        /// How many were seen.
        seen: u32,
    },
    /// The config-space record has the wrong length or identity.
    BadConfigSpace,
    /// The stream ended before its END record.
    Truncated,
    /// The caller's staging storage is too small for the device state in the stream. Only
    /// possible with less staging than [`crate::dest::DestSession::staging_len`]: beyond that
    /// bound the stream breaks a rule and gets a stream error instead.
    StagingFull {
        /// Bytes needed so far.
        needed: usize,
    },
    /// The caller's storage does not match the sizes the configuration needs, or a session
    /// option is out of range.
    StorageSize,
    /// A caller buffer of the wrong size, and the size it needs (see [`crate::Layout`]).
    Storage(StorageError),
    /// The embedder's guest-memory backend failed.
    GuestMemory,
    /// The embedder's host GTT backend failed.
    HostGtt,
    /// The vGPU is not quiesced (or still has work in flight) where it must be.
    NotQuiesced,
    /// The operation is not valid in the session's or vGPU's current phase.
    WrongPhase,
    /// A dirty-report request is malformed (range, page size or bitmap size).
    Report(gmem::ReportError),
    /// A channel's CHANNEL record is missing, malformed, repeated, or disagrees with the session
    /// (channel number or count, stream id, device identity).
    BadChannel {
        /// The channel the bytes were fed on.
        channel: u16,
    },
    /// Another channel of this migration was refused, which failed the session (its error is
    /// the session's, [`crate::dest::DestSession::feed_channel`] returns it); a channel fed on
    /// its own thread ([`crate::dest::DestChannel`]) applies nothing more.
    ChannelFailed {
        /// The channel whose stream was refused first.
        channel: u16,
    },
    /// The stream's id is not the one this migration expects (a replayed or misrouted stream).
    UnexpectedStreamId {
        /// The id in the stream header.
        id: u64,
    },
    /// A page arrived on a channel that does not carry its frame (see [`crate::channel`]).
    WrongChannel {
        /// The guest frame number.
        gfn: u64,
        /// The channel it arrived on.
        channel: u16,
    },
    /// A record where a valid source never writes one (SPEC.md Appendix A, "Order"): pages or a
    /// ROUND record after the device state began, a GGTT pre-copy record after the rounds began,
    /// device state (or END) while the last round's pages have no ROUND record yet.
    RecordOrder {
        /// The kind of the record out of place (PAGES, `0x0011`, for a round left open).
        kind: u16,
    },
    /// A ROUND record whose number does not continue the channel's rounds (SPEC.md §6.2), or
    /// channels that carried different rounds.
    BadRound {
        /// The channel.
        channel: u16,
        /// The round number (for channels that differ: the last one's, `u32::MAX` for none).
        round: u32,
    },
    /// More pages between two ROUND records of a channel than twice the frames the channel
    /// carries (SPEC.md §6.1, "Round budget"): a valid source sends each frame at most once a
    /// round, so a stream that names frames again and again within a round is refused.
    RoundOverBudget {
        /// The channel.
        channel: u16,
        /// The round the pages were counted in (the last ROUND's number plus 1, or 0).
        round: u32,
    },
    /// Device state beyond what a valid source sends for this vGPU (see
    /// [`crate::dest::device_state_bound`]): the stream's fault, not a reason for more storage.
    StateOverBound {
        /// The record kind.
        kind: u16,
        /// The bound, in staged bytes.
        bound: usize,
    },
}

impl VgpuError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            VgpuError::Stream(e) => e.fault(),
            VgpuError::Incompatible(_) | VgpuError::GuestViewMismatch => Fault::Incompatible,
            VgpuError::UnsupportedRecord { .. } => Fault::Unsupported,
            VgpuError::Encode(_)
            | VgpuError::StagingFull { .. }
            | VgpuError::StorageSize
            | VgpuError::Storage(_) => Fault::Local,
            VgpuError::GuestMemory | VgpuError::HostGtt => Fault::Local,
            // The component crates know whose fault each of their errors is.
            VgpuError::Gtt(e) => match e.fault() {
                gtt::Fault::Input => Fault::Stream,
                gtt::Fault::Local => Fault::Local,
            },
            VgpuError::Mmio(e) => e.fault(),
            // A workload the engines would refuse from the guest (a bad descriptor or ring
            // offset) reaches the vGPU as an error only from a restored stream.
            VgpuError::Engine(e) => match e.fault() {
                Fault::Guest => Fault::Stream,
                f => f,
            },
            VgpuError::Gmem(_) => Fault::Local,
            VgpuError::Fsm(_)
            | VgpuError::NotQuiesced
            | VgpuError::WrongPhase
            | VgpuError::ChannelFailed { .. }
            | VgpuError::Report(_) => Fault::State,
            VgpuError::BadChannel { .. }
            | VgpuError::WrongChannel { .. }
            | VgpuError::RecordOrder { .. }
            | VgpuError::BadRound { .. }
            | VgpuError::RoundOverBudget { .. }
            | VgpuError::StateOverBound { .. }
            | VgpuError::UnexpectedStreamId { .. } => Fault::Stream,
            VgpuError::FrameOutsideMemory { .. }
            | VgpuError::DuplicateMismatch { .. }
            | VgpuError::BadPpgtt
            | VgpuError::RecordCount { .. }
            | VgpuError::BadConfigSpace
            | VgpuError::Truncated => Fault::Stream,
        }
    }
}

impl fmt::Display for VgpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VgpuError::Stream(e) => write!(f, "stream: {e}"),
            VgpuError::Incompatible(e) => write!(f, "incompatible device: {e}"),
            VgpuError::GuestViewMismatch => {
                f.write_str("the stream's guest graphics-memory view differs from this vGPU's")
            }
            VgpuError::Encode(e) => write!(f, "encoder: {e}"),
            VgpuError::Gtt(e) => write!(f, "GTT: {e}"),
            VgpuError::Mmio(e) => write!(f, "registers: {e}"),
            VgpuError::Engine(e) => write!(f, "engines: {e}"),
            VgpuError::Gmem(e) => write!(f, "graphics memory: {e}"),
            VgpuError::Fsm(e) => write!(f, "migration state: {e}"),
            VgpuError::FrameOutsideMemory { gfn } => {
                write!(f, "page for guest frame {gfn:#x} outside guest memory")
            }
            VgpuError::BadPpgtt => f.write_str(
                "PPGTT roots malformed, or their tables loop, fault or point outside guest memory",
            ),
            VgpuError::DuplicateMismatch { gfn, from } => write!(
                f,
                "page {gfn:#x} claims to duplicate {from:#x}, whose content does not match its hash"
            ),
            VgpuError::UnsupportedRecord { kind } => write!(
                f,
                "device-state record kind {kind:#06x} cannot be restored by this version"
            ),
            VgpuError::RecordCount { kind, seen } => {
                write!(f, "record kind {kind:#06x} seen {seen} times")
            }
            VgpuError::BadConfigSpace => {
                f.write_str("config-space record has the wrong size or device identity")
            }
            VgpuError::Truncated => f.write_str("stream ended before its END record"),
            VgpuError::StagingFull { needed } => {
                write!(f, "staging storage too small: {needed} bytes needed")
            }
            VgpuError::StorageSize => {
                f.write_str("caller storage does not match the vGPU configuration")
            }
            VgpuError::Storage(e) => write!(f, "caller storage: {e}"),
            VgpuError::GuestMemory => f.write_str("guest memory backend failed"),
            VgpuError::HostGtt => f.write_str("host GTT backend failed"),
            VgpuError::NotQuiesced => f.write_str("the vGPU is not quiesced"),
            VgpuError::WrongPhase => f.write_str("operation not valid in the current phase"),
            VgpuError::Report(e) => write!(f, "dirty report: {e}"),
            VgpuError::BadChannel { channel } => write!(
                f,
                "channel {channel}: CHANNEL record missing, malformed or inconsistent with the migration"
            ),
            VgpuError::ChannelFailed { channel } => write!(
                f,
                "the stream of channel {channel} was refused: the migration failed"
            ),
            VgpuError::UnexpectedStreamId { id } => {
                write!(f, "stream id {id:#x} is not the one this migration expects")
            }
            VgpuError::RecordOrder { kind } => write!(
                f,
                "record kind {kind:#06x} where a valid source never writes one"
            ),
            VgpuError::BadRound { channel, round } => write!(
                f,
                "channel {channel}: ROUND {round} does not continue the rounds of the migration"
            ),
            VgpuError::RoundOverBudget { channel, round } => write!(
                f,
                "channel {channel}: round {round} names more pages than twice the frames the channel carries"
            ),
            VgpuError::StateOverBound { kind, bound } => write!(
                f,
                "record kind {kind:#06x} takes the device state past {bound} bytes, more than a valid source sends"
            ),
            VgpuError::WrongChannel { gfn, channel } => {
                write!(
                    f,
                    "page {gfn:#x} arrived on channel {channel}, which does not carry it"
                )
            }
        }
    }
}

impl core::error::Error for VgpuError {}

macro_rules! from_err {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for VgpuError {
            fn from(e: $t) -> Self { VgpuError::$v(e) }
        }
    )*};
}
from_err! {
    migstream::DecodeError => Stream,
    migstream::Incompatible => Incompatible,
    migstream::EncodeError => Encode,
    gtt::GttError => Gtt,
    mmio::MmioError => Mmio,
    engines::EngineError => Engine,
    gmem::GmemError => Gmem,
    crate::fsm::FsmError => Fsm,
}
