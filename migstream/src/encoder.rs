//! The sans-IO encoder: writes the stream into caller buffers of any size, resumable at any
//! byte.

use crate::control::{CONTROL_VERSION, END_LEN, EndRepr, ROUND_LEN, RoundRepr};
use crate::crc::Crc32;
use crate::error::EncodeError;
use crate::header::{HEADER_CRC_OFFSET, STREAM_HEADER_LEN, StreamHeaderRepr};
use crate::record::{MAX_PAYLOAD, RECORD_HEADER_LEN, RecordFlags, RecordHeaderRepr, RecordKind};
#[cfg(feature = "auth")]
use crate::{
    auth::{AuthKey, MacState, MacStorage},
    header::{AUTH_MINOR, AUTHENTICATED},
};

/// A record payload that can be produced piecewise, so the encoder can copy it straight into
/// its output without an intermediate buffer.
pub trait PayloadSource {
    /// Payload length in bytes.
    fn payload_len(&self) -> usize;
    /// Copy payload bytes `[offset, offset + out.len())` into `out`. Never asked beyond
    /// [`payload_len`](Self::payload_len). Must return the same bytes every time it is asked.
    fn fill(&self, offset: usize, out: &mut [u8]);
    /// Bytes of the payload before its first page (a page run's header, for example): the
    /// default [`fill_crc`](Self::fill_crc) cuts its pieces after them, so each piece is one
    /// whole page instead of the end of one page and the start of the next. 0 by default.
    fn lead_len(&self) -> usize {
        0
    }
    /// Copy the whole payload into `out` (exactly [`payload_len`](Self::payload_len) bytes)
    /// front to back and fold exactly the bytes written into `crc`: the encoder's one pass over
    /// a record that fits its output. The CRC must be of the bytes in `out` (what the stream
    /// carries), so a source that can change while it is read (guest memory) still yields a
    /// record whose CRC matches its bytes.
    ///
    /// The default cuts after [`lead_len`](Self::lead_len) bytes and then every 4 KiB, calling
    /// [`fill`](Self::fill) for each piece and checksumming it while it is in L1. Byte slices
    /// copy and checksum in one pass ([`Crc32::update_copy`]); a source whose `fill` has to find
    /// its place for every call (a payload of many page runs, for example) overrides this with
    /// one pass of its own.
    fn fill_crc(&self, out: &mut [u8], crc: &mut Crc32) {
        let lead = self.lead_len().min(out.len());
        let (head, rest) = out.split_at_mut(lead);
        if !head.is_empty() {
            self.fill(0, head);
            crc.update(head);
        }
        for (i, chunk) in rest.chunks_mut(FUSED_CHUNK).enumerate() {
            self.fill(lead + i * FUSED_CHUNK, chunk);
            crc.update(chunk);
        }
    }
}

impl PayloadSource for [u8] {
    fn payload_len(&self) -> usize {
        self.len()
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        if let Some(src) = self.get(offset..offset.saturating_add(out.len())) {
            out.copy_from_slice(src);
        }
    }

    fn fill_crc(&self, out: &mut [u8], crc: &mut Crc32) {
        crc.update_copy(out, self);
    }
}

impl<const N: usize> PayloadSource for [u8; N] {
    fn payload_len(&self) -> usize {
        N
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        self.as_slice().fill(offset, out);
    }

    fn fill_crc(&self, out: &mut [u8], crc: &mut Crc32) {
        self.as_slice().fill_crc(out, crc);
    }
}

impl<T: PayloadSource + ?Sized> PayloadSource for &T {
    fn payload_len(&self) -> usize {
        (**self).payload_len()
    }

    fn fill(&self, offset: usize, out: &mut [u8]) {
        (**self).fill(offset, out);
    }

    fn lead_len(&self) -> usize {
        (**self).lead_len()
    }

    fn fill_crc(&self, out: &mut [u8], crc: &mut Crc32) {
        (**self).fill_crc(out, crc);
    }
}

/// Result of one encoder call: bytes written into `out` by this call, and whether the item
/// (header or record) is complete.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Progress {
    /// The item is complete; this many bytes were written by this call.
    Done(usize),
    /// `out` is full; this many bytes were written. Call again with the same arguments and a
    /// fresh buffer.
    Partial(usize),
}

impl Progress {
    /// Bytes written by this call.
    #[must_use]
    pub const fn written(self) -> usize {
        match self {
            Progress::Done(n) | Progress::Partial(n) => n,
        }
    }

    /// Is the item complete?
    #[must_use]
    pub const fn is_done(self) -> bool {
        matches!(self, Progress::Done(_))
    }
}

/// A record being written across calls.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Pending {
    /// The complete record header, CRC included.
    header: [u8; RECORD_HEADER_LEN],
    /// Header plus payload bytes (≤ 16 MiB + 16).
    total: u32,
    /// Bytes already emitted.
    written: u32,
}

#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum State {
    /// Writing the stream header; bytes done.
    Header(u8),
    /// Between records.
    Ready,
    /// Inside a record.
    Record(Pending),
    /// END complete.
    Finished,
}

/// Piece size of the fused copy-and-checksum loop of the fast path.
const FUSED_CHUNK: usize = 4096;
/// Bytes of stack the slow path uses to CRC a payload that does not fit the output.
const CRC_CHUNK: usize = 512;

/// Sans-IO stream encoder. Holds only counters, the running stream CRC and the header of a
/// record in progress (≈ 64 bytes), so it can live in a `static`. With the `auth` feature it
/// borrows the stream MAC state (≈ 2 KiB, the BLAKE3 hasher) from the caller's
/// `MacStorage` for `'m` and is neither `Clone` nor `Copy`.
///
/// Use: [`write_header`](Self::write_header) until `Done`, then any number of
/// [`write_record`](Self::write_record) (each until `Done`), then
/// [`write_end`](Self::write_end) until `Done`. Every call writes as much as fits into `out`
/// (even 1 byte) and never panics.
///
/// An encoder made by `with_key` (feature `auth`) writes an authenticated
/// stream (SPEC.md §10) with no other change for the caller: it sets the AUTHENTICATED flag
/// and minor version 1 in the header it writes, absorbs every byte it emits into the MAC, and
/// `write_end` writes the MAC record and then END.
#[derive(Debug)]
#[cfg_attr(not(feature = "auth"), derive(Clone, Copy))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Encoder<'m> {
    state: State,
    /// Bytes emitted, including partially written items.
    bytes_out: u64,
    /// Bytes of complete items (what END's `byte_count` counts).
    committed: u64,
    /// Complete records.
    records: u32,
    /// CRC over the stream header and complete non-END record headers.
    stream_crc: Crc32,
    /// The stream MAC, when authenticating.
    #[cfg(feature = "auth")]
    mac: MacState<'m>,
    /// Ties `'m` to the type without `auth` too, so callers name one type in every build.
    #[cfg(not(feature = "auth"))]
    mac: core::marker::PhantomData<&'m ()>,
}

impl Default for Encoder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> Encoder<'m> {
    /// An encoder at the start of a stream.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: State::Header(0),
            bytes_out: 0,
            committed: 0,
            records: 0,
            stream_crc: Crc32::new(),
            #[cfg(feature = "auth")]
            mac: MacState::Off,
            #[cfg(not(feature = "auth"))]
            mac: core::marker::PhantomData,
        }
    }

    /// An encoder at the start of an authenticated stream (SPEC.md §10) keyed with the
    /// embedder's `key`: the stream it writes verifies only at a destination holding the same
    /// key. The key is not printed by `Debug`; it is not zeroized either (see [`crate::auth`]).
    /// The MAC state lives in `storage`, borrowed for the encoder's life.
    #[cfg(feature = "auth")]
    #[must_use]
    pub fn with_key(key: &AuthKey, storage: &'m mut MacStorage) -> Self {
        Self {
            mac: MacState::Keyed(key.clone(), storage),
            ..Self::new()
        }
    }

    /// Does this encoder write an authenticated stream?
    #[must_use]
    pub const fn is_authenticated(&self) -> bool {
        #[cfg(feature = "auth")]
        {
            self.mac.is_keyed()
        }
        #[cfg(not(feature = "auth"))]
        {
            false
        }
    }

    /// Total bytes written into output buffers so far (partial items included).
    #[must_use]
    pub const fn bytes_written(&self) -> u64 {
        self.bytes_out
    }

    /// Complete records written (END included once complete).
    #[must_use]
    pub const fn records_written(&self) -> u32 {
        self.records
    }

    /// Is the END record complete?
    #[must_use]
    pub const fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Write (part of) the 80-byte stream header. Call with the same `h` until it returns
    /// [`Progress::Done`]. An authenticating encoder writes `h` with the AUTHENTICATED flag set
    /// and `minor` at least [`AUTH_MINOR`](crate::AUTH_MINOR); a plain encoder writes `h` as
    /// given (setting AUTHENTICATED there produces a stream readers refuse).
    ///
    /// # Errors
    /// [`EncodeError::HeaderAlreadyWritten`] once the header is complete.
    pub fn write_header(
        &mut self,
        h: &StreamHeaderRepr,
        out: &mut [u8],
    ) -> Result<Progress, EncodeError> {
        let State::Header(done) = self.state else {
            return Err(EncodeError::HeaderAlreadyWritten);
        };
        let mut bytes = [0; STREAM_HEADER_LEN];
        #[cfg(feature = "auth")]
        if self.mac.is_keyed() {
            let authenticated = StreamHeaderRepr {
                minor: h.minor.max(AUTH_MINOR),
                flags: h.flags | AUTHENTICATED,
                ..*h
            };
            authenticated.emit(&mut bytes);
        } else {
            h.emit(&mut bytes);
        }
        #[cfg(not(feature = "auth"))]
        h.emit(&mut bytes);
        let rest = bytes.get(usize::from(done)..).unwrap_or_default();
        let n = rest.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.bytes_out = self.bytes_out.saturating_add(n as u64);
        let done = usize::from(done) + n;
        if done == STREAM_HEADER_LEN {
            // The chain covers the header without its own CRC: a message followed by its CRC
            // always leaves CRC-32 in the same state, which would make the chain blind to it.
            self.stream_crc
                .update(bytes.get(..HEADER_CRC_OFFSET).unwrap_or_default());
            #[cfg(feature = "auth")]
            self.mac.start(h.stream_id, &bytes);
            self.committed = STREAM_HEADER_LEN as u64;
            self.state = State::Ready;
            Ok(Progress::Done(n))
        } else {
            self.state = State::Header(u8::try_from(done).unwrap_or(0));
            Ok(Progress::Partial(n))
        }
    }

    /// Write (part of) one record. Call repeatedly with the same `kind`, `flags`, `version` and
    /// payload until it returns [`Progress::Done`]; each call writes as much as fits into `out`.
    ///
    /// When the whole record fits, the payload is copied into `out` and checksummed there (one
    /// pass over the source). Otherwise the first call streams the payload through a 512-byte
    /// stack buffer to compute the CRC, and the calls then emit header and payload bytes.
    /// Writing an [`RecordKind::END`] record ends the stream (prefer [`write_end`](Self::write_end)).
    ///
    /// # Errors
    /// [`EncodeError::HeaderNotWritten`], [`EncodeError::Finished`], [`EncodeError::BadFlags`],
    /// [`EncodeError::PayloadTooLarge`], [`EncodeError::TooManyRecords`], and
    /// [`EncodeError::RecordMismatch`] if the call does not continue the record in progress;
    /// for an authenticating encoder, [`EncodeError::AuthRecord`] for a MAC or END record or
    /// any record once the MAC record is written. The encoder is unchanged on error.
    pub fn write_record<P: PayloadSource + ?Sized>(
        &mut self,
        kind: RecordKind,
        flags: RecordFlags,
        version: u8,
        payload: &P,
        out: &mut [u8],
    ) -> Result<Progress, EncodeError> {
        #[cfg(feature = "auth")]
        if self.mac.is_keyed()
            && (kind == RecordKind::MAC
                || kind == RecordKind::END
                || matches!(self.mac, MacState::Sealed(_) | MacState::Closed))
        {
            return Err(EncodeError::AuthRecord);
        }
        self.write_record_inner(kind, flags, version, payload, out)
    }

    /// [`write_record`](Self::write_record) without the authentication rules; every byte it
    /// writes goes into the MAC (a no-op once the MAC is sealed).
    fn write_record_inner<P: PayloadSource + ?Sized>(
        &mut self,
        kind: RecordKind,
        flags: RecordFlags,
        version: u8,
        payload: &P,
        out: &mut [u8],
    ) -> Result<Progress, EncodeError> {
        let p = self.write_record_raw(kind, flags, version, payload, out)?;
        #[cfg(feature = "auth")]
        self.mac.update(out.get(..p.written()).unwrap_or_default());
        Ok(p)
    }

    /// Emit record bytes (both paths write a prefix of `out`).
    fn write_record_raw<P: PayloadSource + ?Sized>(
        &mut self,
        kind: RecordKind,
        flags: RecordFlags,
        version: u8,
        payload: &P,
        out: &mut [u8],
    ) -> Result<Progress, EncodeError> {
        let len = payload.payload_len();
        let mut header = [0; RECORD_HEADER_LEN];
        let repr = RecordHeaderRepr {
            kind,
            flags,
            version,
            payload_len: u32::try_from(len).unwrap_or(u32::MAX),
            index: self.records,
            crc: 0,
        };
        repr.emit(&mut header);
        let pending = match self.state {
            State::Header(_) => return Err(EncodeError::HeaderNotWritten),
            State::Finished => return Err(EncodeError::Finished),
            State::Record(p) => {
                if p.header.get(..8) != header.get(..8) {
                    return Err(EncodeError::RecordMismatch);
                }
                p
            }
            State::Ready => {
                if !flags.is_valid() {
                    return Err(EncodeError::BadFlags { flags: flags.0 });
                }
                if len > MAX_PAYLOAD as usize {
                    return Err(EncodeError::PayloadTooLarge { len });
                }
                if self.records == u32::MAX {
                    return Err(EncodeError::TooManyRecords);
                }
                let total = len + RECORD_HEADER_LEN;
                if let Some(dst) = out.get_mut(..total) {
                    // Fast path: the whole record fits.
                    let (hdr, body) = dst.split_at_mut(RECORD_HEADER_LEN);
                    let mut crc = Crc32::new();
                    crc.update(header.get(..12).unwrap_or_default());
                    // One pass: the payload is copied and checksummed together (page by page,
                    // or fused in registers where the source can), not copied and read again.
                    payload.fill_crc(body, &mut crc);
                    let repr = RecordHeaderRepr {
                        crc: crc.value(),
                        ..repr
                    };
                    repr.emit(&mut header);
                    hdr.copy_from_slice(&header);
                    self.bytes_out = self.bytes_out.saturating_add(total as u64);
                    self.complete(&header, total as u64);
                    return Ok(Progress::Done(total));
                }
                // Slow path: checksum first, then emit across calls.
                let mut crc = Crc32::new();
                crc.update(header.get(..12).unwrap_or_default());
                let mut buf = [0u8; CRC_CHUNK];
                let mut off = 0;
                while off < len {
                    let n = CRC_CHUNK.min(len - off);
                    if let Some(chunk) = buf.get_mut(..n) {
                        payload.fill(off, chunk);
                        crc.update(chunk);
                    }
                    off += n;
                }
                let repr = RecordHeaderRepr {
                    crc: crc.value(),
                    ..repr
                };
                repr.emit(&mut header);
                Pending {
                    header,
                    total: u32::try_from(total).unwrap_or(u32::MAX),
                    written: 0,
                }
            }
        };
        Ok(self.continue_record(pending, payload, out))
    }

    /// Emit the next bytes of `p` into `out`.
    fn continue_record<P: PayloadSource + ?Sized>(
        &mut self,
        mut p: Pending,
        payload: &P,
        out: &mut [u8],
    ) -> Progress {
        let total = p.total as usize;
        let mut written = p.written as usize;
        let n = out.len().min(total - written);
        let mut dst = out.get_mut(..n).unwrap_or_default();
        if written < RECORD_HEADER_LEN {
            let src = p.header.get(written..).unwrap_or_default();
            let k = src.len().min(dst.len());
            let (head, tail) = dst.split_at_mut(k);
            head.copy_from_slice(src.get(..k).unwrap_or_default());
            dst = tail;
            written += k;
        }
        if !dst.is_empty() {
            payload.fill(written - RECORD_HEADER_LEN, dst);
            written += dst.len();
        }
        self.bytes_out = self.bytes_out.saturating_add(n as u64);
        if written == total {
            self.complete(&p.header, total as u64);
            Progress::Done(n)
        } else {
            p.written = u32::try_from(written).unwrap_or(p.total);
            self.state = State::Record(p);
            Progress::Partial(n)
        }
    }

    /// Book-keeping when a record's last byte is out.
    fn complete(&mut self, header: &[u8; RECORD_HEADER_LEN], total: u64) {
        let kind = RecordHeaderRepr::from_bytes(header).kind;
        self.committed = self.committed.saturating_add(total);
        self.records = self.records.saturating_add(1);
        if kind == RecordKind::END {
            self.state = State::Finished;
        } else {
            self.stream_crc.update(header);
            self.state = State::Ready;
        }
    }

    /// The END record this encoder would write now: its totals cover everything complete.
    #[must_use]
    pub const fn end_repr(&self) -> EndRepr {
        EndRepr {
            record_count: self.records,
            stream_crc: self.stream_crc.value(),
            byte_count: self.committed,
        }
    }

    /// Write (part of) the END record with the totals the encoder kept. Call until
    /// [`Progress::Done`]; afterwards the encoder accepts nothing more.
    ///
    /// An authenticating encoder first writes the MAC record (SPEC.md §10: the tag over every
    /// byte emitted so far), then END; both count as this one item, so the caller's loop is the
    /// same as for a plain stream.
    ///
    /// # Errors
    /// As [`write_record`](Self::write_record).
    pub fn write_end(&mut self, out: &mut [u8]) -> Result<Progress, EncodeError> {
        #[cfg(feature = "auth")]
        let (lead, out) = {
            let lead = match self.write_mac(out)? {
                Progress::Partial(n) => return Ok(Progress::Partial(n)),
                Progress::Done(n) => n,
            };
            (lead, out.get_mut(lead..).unwrap_or_default())
        };
        #[cfg(not(feature = "auth"))]
        let lead = 0;
        let mut payload = [0; END_LEN];
        self.end_repr().emit(&mut payload);
        Ok(
            match self.write_record_inner(
                RecordKind::END,
                RecordFlags::MANDATORY,
                CONTROL_VERSION,
                &payload,
                out,
            )? {
                Progress::Done(n) => Progress::Done(lead + n),
                Progress::Partial(n) => Progress::Partial(lead + n),
            },
        )
    }

    /// The MAC record part of [`write_end`](Self::write_end): `Done(0)` when there is none to
    /// write (not authenticating, or already written).
    #[cfg(feature = "auth")]
    fn write_mac(&mut self, out: &mut [u8]) -> Result<Progress, EncodeError> {
        match (&self.mac, self.state) {
            (MacState::Active(_), State::Ready) | (MacState::Sealed(_), _) => {}
            (MacState::Active(_), State::Header(_)) => return Err(EncodeError::HeaderNotWritten),
            (MacState::Active(_), _) => return Err(EncodeError::RecordMismatch),
            _ => return Ok(Progress::Done(0)),
        }
        let Some(tag) = self.mac.seal() else {
            return Ok(Progress::Done(0));
        };
        let p = self.write_record_inner(
            RecordKind::MAC,
            RecordFlags::MANDATORY,
            CONTROL_VERSION,
            &tag,
            out,
        )?;
        if p.is_done() {
            self.mac = MacState::Closed;
        }
        Ok(p)
    }

    /// Write (part of) a ROUND record. Call with the same `round` until [`Progress::Done`].
    ///
    /// # Errors
    /// As [`write_record`](Self::write_record).
    pub fn write_round(
        &mut self,
        round: &RoundRepr,
        out: &mut [u8],
    ) -> Result<Progress, EncodeError> {
        let mut payload = [0; ROUND_LEN];
        round.emit(&mut payload);
        self.write_record(
            RecordKind::ROUND,
            RecordFlags::MANDATORY,
            CONTROL_VERSION,
            &payload,
            out,
        )
    }
}
