//! The sans-IO decoder: fed arbitrary slices (one byte at a time works), never panics, never
//! allocates, bounds everything it reads, and reports what it decodes as [`Event`]s.

use crate::control::{CONTROL_VERSION, END_LEN, EndRepr, ROUND_LEN, RoundRepr};
use crate::crc::Crc32;
use core::fmt;

use crate::delta;
use crate::error::{DecodeError, EndMismatch, ErrorKind, PageRunError};
use crate::header::{HEADER_CRC_OFFSET, STREAM_HEADER_LEN, StreamHeaderRepr};
use crate::pages::{
    DELTA_LEN_FIELD, DUP_ENTRY_LEN, PAGE_RUN_HEADER_LEN, PAGE_SIZE, PageEncoding, PageRunRepr,
};
use crate::record::{Limits, RECORD_HEADER_LEN, RecordHeaderRepr, RecordKind};
#[cfg(feature = "auth")]
use crate::{
    auth::{AuthKey, MacState, MacStorage},
    error::AuthError,
    header::AUTHENTICATED,
    record::MAC_LEN,
};

/// Most bytes [`Decoder::feed_all`] gathers into one MAC update: BLAKE3 hashes long inputs as
/// wide subtrees (measured: an authenticated decode of 256 KiB PAGES records ran ~1.3x faster
/// with 256 KiB batches than with 64 KiB, and 1.6x slower with 16 KiB), and 256 KiB still sits
/// in a core's L2 when the MAC reads it after the sink's copy.
#[cfg(feature = "auth")]
const MAC_BATCH: usize = 256 << 10;

/// Something the decoder decoded. Borrowed data points into the slice given to
/// [`Decoder::feed`].
///
/// Order for one record: [`Event::RecordBegin`], then its [`Event::Payload`] chunks (or, for
/// PAGES, its [`Event::PageData`] / [`Event::ZeroPages`] in stream order), then
/// [`Event::RecordEnd`]. Payload and page data are **provisional** until `RecordEnd`: the
/// record CRC is only known to match then, so a consumer must stage them (or be prepared to
/// discard the whole restore on error). ROUND and END are reported once, as [`Event::Round`] /
/// [`Event::End`], after their CRC (and for END, the stream totals) verified. Unknown records
/// without the MANDATORY flag produce only [`Event::Skipped`], after their CRC verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event<'a> {
    /// The stream header, validated (magic, version, CRC, reserved, capabilities, page size).
    /// Device compatibility is the caller's check ([`crate::DeviceIdentity::check_compatible`]).
    Header(StreamHeaderRepr),
    /// A record (not ROUND/END, not skipped) starts; its header passed the index, flag,
    /// length and version checks.
    RecordBegin {
        /// Kind.
        kind: RecordKind,
        /// Record-format version.
        version: u8,
        /// Payload length.
        len: u32,
        /// Sequence number.
        index: u32,
    },
    /// A chunk of a non-PAGES record's payload, not yet CRC-verified.
    Payload {
        /// The record's kind.
        kind: RecordKind,
        /// Offset of `data` within the payload.
        offset: u32,
        /// The bytes.
        data: &'a [u8],
    },
    /// A chunk of one page inside a PAGES record, not yet CRC-verified: write it to `frame`
    /// at `offset`. Never crosses a page boundary.
    PageData {
        /// Guest frame.
        frame: u64,
        /// Offset within the 4096-byte page.
        offset: u16,
        /// The bytes (at most `4096 - offset`).
        data: &'a [u8],
    },
    /// The page at `frame` equals the page the receiver holds at `from_frame` (sent earlier in this
    /// stream), whose xxh3-64 hash is `hash` (inside a PAGES record, not yet CRC-verified). The
    /// receiver copies it and must check the hash (SPEC.md §6.1: reject the stream on a mismatch).
    /// A frame the stream never wrote reads as a zero page.
    PageCopy {
        /// Guest frame to write.
        frame: u64,
        /// Guest frame to copy from.
        from_frame: u64,
        /// xxh3-64 of the page's content.
        hash: u64,
    },
    /// XOR `data` into the receiver's page `frame` at `offset` (a piece of a DELTA page, not yet
    /// CRC-verified). Never crosses the page end.
    PageXor {
        /// Guest frame.
        frame: u64,
        /// Offset within the page.
        offset: u16,
        /// Bytes to XOR in.
        data: &'a [u8],
    },
    /// `count` all-zero pages starting at `first_frame` (inside a PAGES record, not yet
    /// CRC-verified).
    ZeroPages {
        /// First guest frame.
        first_frame: u64,
        /// Number of pages (≥ 1).
        count: u32,
    },
    /// The record's CRC verified; everything it reported is now final.
    RecordEnd {
        /// Kind.
        kind: RecordKind,
        /// Sequence number.
        index: u32,
    },
    /// An unknown optional record was consumed and its CRC verified.
    Skipped {
        /// Its kind.
        kind: RecordKind,
        /// Its payload length.
        len: u32,
    },
    /// A verified ROUND record.
    Round(RoundRepr),
    /// A verified END record whose totals match the stream: the stream is complete.
    End(EndRepr),
    /// The MAC record of an authenticated stream verified (feature `auth`, SPEC.md §10): every
    /// byte before it came from a holder of the key. Only END can follow.
    Authenticated {
        /// The MAC record's sequence number.
        index: u32,
    },
}

/// Why [`Decoder::feed_all`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FeedError<E> {
    /// The stream is bad (see [`DecodeError`]).
    Decode(DecodeError),
    /// The sink refused an event.
    Sink(E),
}

impl<E: fmt::Display> fmt::Display for FeedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedError::Decode(e) => write!(f, "{e}"),
            FeedError::Sink(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for FeedError<E> {}

/// Where the decoder is.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum Phase {
    /// Buffering the stream header.
    StreamHeader,
    /// Buffering a record header.
    RecordHeader,
    /// Streaming an opaque payload (reported, or skipped for unknown optional kinds).
    Opaque { skip: bool },
    /// Buffering a ROUND or END payload.
    Fixed,
    /// PAGES: buffering the next run header (or done).
    RunHeader,
    /// PAGES: streaming a FULL run's page bytes.
    RunData {
        /// Frame of the current page.
        frame: u64,
        /// Bytes left in the run.
        left: u64,
        /// Offset within the current page.
        page_off: u16,
    },
    /// PAGES: buffering the next 16-byte entry of a DUP run.
    DupEntry {
        /// Frame of the next page.
        frame: u64,
        /// Pages left in the run, including this one.
        pages: u32,
    },
    /// PAGES: buffering a DELTA page's 2-byte length.
    DeltaLen {
        /// Frame of the page.
        frame: u64,
        /// Pages left in the run, including this one.
        pages: u32,
    },
    /// PAGES: buffering a DELTA segment header (or moving to the next page).
    DeltaSeg {
        /// Frame of the page.
        frame: u64,
        /// Pages left in the run, including this one.
        pages: u32,
        /// Delta bytes of this page not yet consumed.
        page_left: u16,
        /// Page offset after the previous segment.
        off: u16,
    },
    /// PAGES: streaming a DELTA segment's bytes.
    DeltaBytes {
        /// Frame of the page.
        frame: u64,
        /// Pages left in the run, including this one.
        pages: u32,
        /// Delta bytes of this page not yet consumed (after this segment's remaining bytes).
        page_left: u16,
        /// Page offset of the next byte.
        off: u16,
        /// Bytes of the segment left.
        n: u16,
    },
    /// Payload consumed; the closing event (after CRC check) is due.
    Check,
    /// END verified.
    Finished,
    /// A fatal error; repeated by every later call.
    Failed(DecodeError),
}

/// Sans-IO stream decoder. Working state is under 256 bytes (asserted < 1 KiB in tests), so it
/// can live in a `static`. With the `auth` feature it also holds the stream MAC state (≈ 2 KiB,
/// the BLAKE3 hasher).
///
/// A decoder made by `with_key` (feature `auth`) accepts only authenticated
/// streams whose MAC verifies under its key; one made by [`new`](Self::new) refuses
/// authenticated streams ([`AuthError::KeyRequired`](crate::AuthError::KeyRequired)) when
/// built with the feature, and as an unsupported capability without it.
///
/// Drive it with [`feed`](Self::feed) until the input is exhausted and `feed` returns
/// `(0, None)`, then call [`finish`](Self::finish) when the transport reports end of stream.
///
/// With the `auth` feature a keyed decoder borrows its MAC state from the caller's
/// `MacStorage` for `'m`, and the decoder is not `Clone`.
#[derive(Debug)]
#[cfg_attr(not(feature = "auth"), derive(Clone))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Decoder<'m> {
    limits: Limits,
    phase: Phase,
    /// Buffer for the stream header, record headers, run headers and ROUND/END payloads.
    buf: [u8; STREAM_HEADER_LEN],
    /// Bytes in `buf`.
    have: u8,
    /// Stream bytes consumed.
    pos: u64,
    /// Records completed (the next expected index).
    records: u64,
    /// CRC over the stream header and the record headers of every non-END record seen.
    stream_crc: Crc32,
    /// The current record's header.
    rec: RecordHeaderRepr,
    /// Stream offset of the current record's header.
    rec_start: u64,
    /// Payload bytes of the current record consumed.
    done: u32,
    /// Running CRC of the current record.
    crc: Crc32,
    /// Stream offset of the current page-run header.
    run_start: u64,
    /// In [`Decoder::feed_all`] with a key: data handed out in an event is absorbed into the
    /// MAC after the sink has seen it; this holds how many bytes of the step's input end are
    /// still owed.
    #[cfg(feature = "auth")]
    defer: Option<u32>,
    /// The stream MAC, when a key is set.
    #[cfg(feature = "auth")]
    mac: MacState<'m>,
    /// Ties `'m` to the type without `auth` too, so callers name one type in every build.
    #[cfg(not(feature = "auth"))]
    mac: core::marker::PhantomData<&'m ()>,
}

impl<'m> Decoder<'m> {
    /// A decoder expecting the stream header.
    #[must_use]
    pub const fn new(limits: Limits) -> Self {
        Self {
            limits,
            phase: Phase::StreamHeader,
            buf: [0; STREAM_HEADER_LEN],
            have: 0,
            pos: 0,
            records: 0,
            stream_crc: Crc32::new(),
            rec: RecordHeaderRepr {
                kind: RecordKind(0),
                flags: crate::RecordFlags::NONE,
                version: 0,
                payload_len: 0,
                index: 0,
                crc: 0,
            },
            rec_start: 0,
            done: 0,
            crc: Crc32::new(),
            run_start: 0,
            #[cfg(feature = "auth")]
            defer: None,
            #[cfg(feature = "auth")]
            mac: MacState::Off,
            #[cfg(not(feature = "auth"))]
            mac: core::marker::PhantomData,
        }
    }

    /// A decoder that requires an authenticated stream whose MAC verifies under `key` (SPEC.md
    /// §10): it refuses an unauthenticated stream, a wrong tag, and a missing, moved or
    /// duplicated MAC record. [`Event::End`] (the commit point) then also means authenticated.
    /// The key is not printed by `Debug`; it is not zeroized either (see [`crate::auth`]).
    /// The MAC state lives in `storage`, borrowed for the decoder's life.
    #[cfg(feature = "auth")]
    #[must_use]
    pub fn with_key(limits: Limits, key: &AuthKey, storage: &'m mut MacStorage) -> Self {
        Self {
            mac: MacState::Keyed(key.clone(), storage),
            ..Self::new(limits)
        }
    }

    /// Does this decoder require an authenticated stream (was it given a key)?
    #[must_use]
    pub const fn requires_authentication(&self) -> bool {
        #[cfg(feature = "auth")]
        {
            self.mac.is_keyed()
        }
        #[cfg(not(feature = "auth"))]
        {
            false
        }
    }

    /// Has the END record been verified?
    #[must_use]
    pub const fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Stream bytes consumed so far.
    #[must_use]
    pub const fn position(&self) -> u64 {
        self.pos
    }

    /// Call when the transport reports end of input, after draining events.
    ///
    /// # Errors
    /// The earlier fatal error if there was one, else [`ErrorKind::Truncated`] (at the number
    /// of bytes received) unless END was verified.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.phase {
            Phase::Finished => Ok(()),
            Phase::Failed(e) => Err(e),
            Phase::StreamHeader | Phase::RecordHeader => {
                Err(DecodeError::new(ErrorKind::Truncated, self.pos, None))
            }
            _ => Err(self.err_here(ErrorKind::Truncated, self.pos)),
        }
    }

    /// Consume a prefix of `input`: returns how many bytes were consumed and at most one event.
    ///
    /// Always makes progress: if `input` is non-empty or an event is pending, the result has
    /// `consumed > 0` or an event (or both). `(0, None)` means "give me more bytes". Any
    /// segmentation of the stream yields the same events (page and payload chunks may be split
    /// differently). Call again with the unconsumed rest (or an empty slice) until it returns
    /// `(0, None)`: an event can be pending after the last byte was consumed.
    ///
    /// CRCs (stream header, records, END's stream CRC) are always verified, except in builds
    /// with `--cfg fuzzing`, where mismatches are ignored so fuzzers reach deeper states.
    ///
    /// # Errors
    /// A fatal [`DecodeError`]; the decoder then returns the same error forever.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), DecodeError> {
        if let Phase::Failed(e) = self.phase {
            return Err(e);
        }
        let r = self.step(input);
        if let Err(e) = r {
            self.phase = Phase::Failed(e);
        }
        r
    }

    /// Decode all of `input`, handing every event to `sink` in stream order; returns the bytes
    /// consumed (all of them, unless an error stops it).
    ///
    /// Same events and checks as [`feed`](Self::feed), in one call. The CRC over page and
    /// payload bytes is computed as each chunk is handed out, before `sink` sees it: the CRC's
    /// reads bring the chunk into cache for a sink that copies it (measured faster than
    /// checksumming after the copy). With an authentication key, consecutive chunks are
    /// absorbed into the stream MAC in batches after the sink. The data is still provisional
    /// until its record's [`Event::RecordEnd`], exactly as with `feed`.
    ///
    /// # Errors
    /// [`FeedError::Decode`] as `feed` (the decoder then stays failed), or the sink's error as
    /// [`FeedError::Sink`] (the decoder stays usable; the event that failed has been consumed).
    pub fn feed_all<E>(
        &mut self,
        input: &[u8],
        mut sink: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<usize, FeedError<E>> {
        let mut pos = 0usize;
        // Input bytes handed out in events and checksummed, not yet absorbed into the MAC:
        // consecutive page and payload chunks are absorbed in one update of up to `MAC_BATCH`
        // bytes (BLAKE3 is fastest on long inputs), before anything else reaches the MAC.
        #[cfg(feature = "auth")]
        let mut mac_from = 0usize;
        #[cfg(feature = "auth")]
        let mut mac_to = 0usize;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            #[cfg(feature = "auth")]
            if !self.only_hands_out() {
                self.mac
                    .update(input.get(mac_from..mac_to).unwrap_or_default());
                mac_from = mac_to;
            }
            // Only a MAC has anything to batch after the sink.
            #[cfg(feature = "auth")]
            if self.mac.is_keyed() {
                self.defer = Some(0);
            }
            let r = self.feed(rest);
            #[cfg(feature = "auth")]
            let owed = self.defer.take().unwrap_or(0) as usize;
            let (n, ev) = r.map_err(FeedError::Decode)?;
            pos += n;
            let sunk = match ev {
                Some(ev) => sink(ev),
                None if n == 0 => {
                    #[cfg(feature = "auth")]
                    self.mac
                        .update(input.get(mac_from..mac_to).unwrap_or_default());
                    return Ok(pos);
                }
                None => Ok(()),
            };
            #[cfg(feature = "auth")]
            if owed > 0 {
                let start = pos.saturating_sub(owed);
                if mac_to == start && pos - mac_from <= MAC_BATCH {
                    mac_to = pos;
                } else {
                    self.mac
                        .update(input.get(mac_from..mac_to).unwrap_or_default());
                    (mac_from, mac_to) = (start, pos);
                }
            }
            #[cfg(feature = "auth")]
            if sunk.is_err() {
                self.mac
                    .update(input.get(mac_from..mac_to).unwrap_or_default());
            }
            sunk.map_err(FeedError::Sink)?;
        }
    }

    /// Will the next step only hand out payload bytes (whose MAC update `feed_all` may batch),
    /// with nothing else absorbed into the MAC before them?
    #[cfg(feature = "auth")]
    fn only_hands_out(&self) -> bool {
        match self.phase {
            Phase::RunData { left, .. } => left > 0,
            Phase::Opaque { skip: false } => self.left() > 0,
            _ => false,
        }
    }

    /// Fold payload bytes into the record CRC and, when authenticating, the stream MAC.
    #[inline]
    fn absorb(&mut self, chunk: &[u8]) {
        self.crc.update(chunk);
        #[cfg(feature = "auth")]
        self.mac.update(chunk);
    }

    fn err_at(&self, kind: ErrorKind, offset: u64) -> DecodeError {
        DecodeError::new(kind, offset, None)
    }

    /// An error inside the current record.
    fn err_here(&self, kind: ErrorKind, offset: u64) -> DecodeError {
        let index = u32::try_from(self.records).unwrap_or(u32::MAX);
        DecodeError::new(kind, offset, Some((index, self.rec.kind)))
    }

    /// Buffer up to `need` bytes total into `buf`; returns the bytes taken from `rest`.
    fn take<'a>(&mut self, rest: &'a [u8], need: usize) -> &'a [u8] {
        let have = usize::from(self.have);
        let n = need.saturating_sub(have).min(rest.len());
        let chunk = rest.get(..n).unwrap_or_default();
        if let Some(dst) = self.buf.get_mut(have..have + n) {
            dst.copy_from_slice(chunk);
        }
        self.have = u8::try_from(have + n).unwrap_or(u8::MAX);
        self.pos = self.pos.saturating_add(n as u64);
        chunk
    }

    /// Buffer up to `need` payload bytes into `buf` (counted into the record CRC); returns the
    /// bytes taken from `rest`.
    fn take_payload(&mut self, rest: &[u8], need: usize) -> usize {
        let chunk = self.take(rest, need);
        self.absorb(chunk);
        self.done = self
            .done
            .saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
        chunk.len()
    }

    /// Payload bytes of the current record not yet consumed.
    const fn left(&self) -> u32 {
        self.rec.payload_len.saturating_sub(self.done)
    }

    /// Consume `n` payload bytes into the record CRC and, when authenticating, the MAC.
    fn eat_payload<'a>(&mut self, chunk: &'a [u8], hand_out: bool) -> &'a [u8] {
        self.crc.update(chunk);
        #[cfg(feature = "auth")]
        match self.defer {
            // The bytes go out in an event: `feed_all` batches them into the MAC after the sink.
            Some(_) if hand_out => {
                self.defer = Some(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
            }
            _ => self.mac.update(chunk),
        }
        #[cfg(not(feature = "auth"))]
        let _ = hand_out;
        self.pos = self.pos.saturating_add(chunk.len() as u64);
        self.done = self
            .done
            .saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
        chunk
    }

    fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), DecodeError> {
        let mut used = 0usize;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match self.phase {
                Phase::StreamHeader => {
                    used += self.take(rest, STREAM_HEADER_LEN).len();
                    if usize::from(self.have) < STREAM_HEADER_LEN {
                        return Ok((used, None));
                    }
                    let h = StreamHeaderRepr::parse(&self.buf)?;
                    #[cfg(feature = "auth")]
                    self.start_mac(&h)?;
                    // Without `header_crc` (see the encoder): binds the header's content.
                    self.stream_crc
                        .update(self.buf.get(..HEADER_CRC_OFFSET).unwrap_or_default());
                    self.have = 0;
                    self.phase = Phase::RecordHeader;
                    return Ok((used, Some(Event::Header(h))));
                }
                Phase::RecordHeader => {
                    used += self.take(rest, RECORD_HEADER_LEN).len();
                    if usize::from(self.have) < RECORD_HEADER_LEN {
                        return Ok((used, None));
                    }
                    if let Some(ev) = self.begin_record()? {
                        return Ok((used, Some(ev)));
                    }
                }
                Phase::Opaque { skip } => {
                    let left = self.left() as usize;
                    if left == 0 {
                        self.phase = Phase::Check;
                        continue;
                    }
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let offset = self.done;
                    let data = self
                        .eat_payload(rest.get(..left.min(rest.len())).unwrap_or_default(), !skip);
                    used += data.len();
                    if !skip {
                        let kind = self.rec.kind;
                        return Ok((used, Some(Event::Payload { kind, offset, data })));
                    }
                }
                Phase::Fixed => {
                    let need = self.rec.payload_len as usize;
                    let chunk = self.take(rest, need);
                    self.absorb(chunk);
                    self.done = u32::from(self.have);
                    used += chunk.len();
                    if usize::from(self.have) < need {
                        return Ok((used, None));
                    }
                    self.phase = Phase::Check;
                }
                Phase::RunHeader => {
                    let left = self.left();
                    if left == 0 {
                        self.phase = Phase::Check;
                        continue;
                    }
                    if self.have == 0 {
                        self.run_start = self.pos;
                        if (left as usize) < PAGE_RUN_HEADER_LEN {
                            let k = ErrorKind::MalformedPageRun(PageRunError::ShortHeader);
                            return Err(self.err_here(k, self.run_start));
                        }
                    }
                    let chunk = self.take(rest, PAGE_RUN_HEADER_LEN);
                    self.absorb(chunk);
                    self.done = self
                        .done
                        .saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
                    used += chunk.len();
                    if usize::from(self.have) < PAGE_RUN_HEADER_LEN {
                        return Ok((used, None));
                    }
                    let Some(&raw) = self.buf.first_chunk::<PAGE_RUN_HEADER_LEN>() else {
                        return Ok((used, None));
                    };
                    self.have = 0;
                    let run = PageRunRepr::parse(&raw).map_err(|e| {
                        self.err_here(ErrorKind::MalformedPageRun(e), self.run_start)
                    })?;
                    if run.data_len() > u64::from(self.left()) {
                        let k = ErrorKind::MalformedPageRun(PageRunError::Overrun);
                        return Err(self.err_here(k, self.run_start));
                    }
                    if run.encoding == PageEncoding::ZERO {
                        let ev = Event::ZeroPages {
                            first_frame: run.first_frame,
                            count: run.count,
                        };
                        return Ok((used, Some(ev)));
                    }
                    if run.encoding == PageEncoding::DUP {
                        self.phase = Phase::DupEntry {
                            frame: run.first_frame,
                            pages: run.count,
                        };
                        continue;
                    }
                    if run.encoding == PageEncoding::DELTA {
                        self.phase = Phase::DeltaLen {
                            frame: run.first_frame,
                            pages: run.count,
                        };
                        continue;
                    }
                    self.phase = Phase::RunData {
                        frame: run.first_frame,
                        left: run.data_len(),
                        page_off: 0,
                    };
                }
                Phase::RunData {
                    frame,
                    left,
                    page_off,
                } => {
                    if left == 0 {
                        self.phase = Phase::RunHeader;
                        continue;
                    }
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let in_page = PAGE_SIZE - usize::from(page_off);
                    let n = rest
                        .len()
                        .min(in_page)
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = self.eat_payload(rest.get(..n).unwrap_or_default(), true);
                    used += n;
                    let next_off = usize::from(page_off) + n;
                    let (next_frame, next_off) = if next_off == PAGE_SIZE {
                        (frame.saturating_add(1), 0)
                    } else {
                        (frame, u16::try_from(next_off).unwrap_or(0))
                    };
                    let left = left.saturating_sub(n as u64);
                    self.phase = if left == 0 {
                        Phase::RunHeader
                    } else {
                        Phase::RunData {
                            frame: next_frame,
                            left,
                            page_off: next_off,
                        }
                    };
                    let ev = Event::PageData {
                        frame,
                        offset: page_off,
                        data,
                    };
                    return Ok((used, Some(ev)));
                }
                Phase::DupEntry { frame, pages } => {
                    used += self.take_payload(rest, DUP_ENTRY_LEN);
                    if usize::from(self.have) < DUP_ENTRY_LEN {
                        return Ok((used, None));
                    }
                    self.have = 0;
                    let word = |b: &[u8; STREAM_HEADER_LEN], i: usize| {
                        b.get(i..i + 8)
                            .and_then(|x| x.try_into().ok())
                            .map_or(0, u64::from_le_bytes)
                    };
                    let (from_frame, hash) = (word(&self.buf, 0), word(&self.buf, 8));
                    self.phase = match pages.checked_sub(1) {
                        Some(p) if p > 0 => Phase::DupEntry {
                            frame: frame.saturating_add(1),
                            pages: p,
                        },
                        _ => Phase::RunHeader,
                    };
                    return Ok((
                        used,
                        Some(Event::PageCopy {
                            frame,
                            from_frame,
                            hash,
                        }),
                    ));
                }
                Phase::DeltaLen { frame, pages } => {
                    used += self.take_payload(rest, DELTA_LEN_FIELD);
                    if usize::from(self.have) < DELTA_LEN_FIELD {
                        return Ok((used, None));
                    }
                    self.have = 0;
                    let len = u16::from_le_bytes([self.buf[0], self.buf[1]]);
                    // The run's later pages still need their length fields (SPEC.md §6.1):
                    // without this reserve a long `len` would read the next page's length
                    // field from past the payload's end.
                    let reserve = u64::from(pages.saturating_sub(1)) * DELTA_LEN_FIELD as u64;
                    let room = u64::from(self.left()).saturating_sub(reserve);
                    if usize::from(len) > delta::MAX_DELTA_LEN || u64::from(len) > room {
                        let k = ErrorKind::MalformedPageRun(PageRunError::BadDelta);
                        return Err(self.err_here(k, self.run_start));
                    }
                    self.phase = Phase::DeltaSeg {
                        frame,
                        pages,
                        page_left: len,
                        off: 0,
                    };
                }
                Phase::DeltaSeg {
                    frame,
                    pages,
                    page_left,
                    off,
                } => {
                    if page_left == 0 {
                        self.phase = match pages.checked_sub(1) {
                            Some(p) if p > 0 => Phase::DeltaLen {
                                frame: frame.saturating_add(1),
                                pages: p,
                            },
                            _ => Phase::RunHeader,
                        };
                        continue;
                    }
                    if self.have == 0 && usize::from(page_left) < delta::SEGMENT_HEADER {
                        let k = ErrorKind::MalformedPageRun(PageRunError::BadDelta);
                        return Err(self.err_here(k, self.run_start));
                    }
                    used += self.take_payload(rest, delta::SEGMENT_HEADER);
                    if usize::from(self.have) < delta::SEGMENT_HEADER {
                        return Ok((used, None));
                    }
                    self.have = 0;
                    let skip = u16::from_le_bytes([self.buf[0], self.buf[1]]);
                    let n = u16::from_le_bytes([self.buf[2], self.buf[3]]);
                    let after_header = page_left - 4;
                    let bad = ErrorKind::MalformedPageRun(PageRunError::BadDelta);
                    if n > after_header {
                        return Err(self.err_here(bad, self.run_start));
                    }
                    let start = usize::from(off) + usize::from(skip);
                    if delta::segment_end(usize::from(off), usize::from(skip), usize::from(n))
                        .is_err()
                    {
                        return Err(self.err_here(bad, self.run_start));
                    }
                    self.phase = Phase::DeltaBytes {
                        frame,
                        pages,
                        page_left: after_header - n,
                        off: u16::try_from(start).unwrap_or(u16::MAX),
                        n,
                    };
                }
                Phase::DeltaBytes {
                    frame,
                    pages,
                    page_left,
                    off,
                    n,
                } => {
                    if n == 0 {
                        self.phase = Phase::DeltaSeg {
                            frame,
                            pages,
                            page_left,
                            off,
                        };
                        continue;
                    }
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let take = rest.len().min(usize::from(n));
                    let data = self.eat_payload(rest.get(..take).unwrap_or_default(), true);
                    used += take;
                    let took = u16::try_from(take).unwrap_or(u16::MAX);
                    self.phase = Phase::DeltaBytes {
                        frame,
                        pages,
                        page_left,
                        off: off.saturating_add(took),
                        n: n - took,
                    };
                    return Ok((
                        used,
                        Some(Event::PageXor {
                            frame,
                            offset: off,
                            data,
                        }),
                    ));
                }
                Phase::Check => {
                    let ev = self.finish_record()?;
                    return Ok((used, Some(ev)));
                }
                Phase::Finished => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    return Err(self.err_at(ErrorKind::TrailingData, self.pos));
                }
                Phase::Failed(e) => return Err(e),
            }
        }
    }

    /// Validate a complete record header in `buf` and choose the payload phase.
    fn begin_record(&mut self) -> Result<Option<Event<'static>>, DecodeError> {
        let Some(raw) = self.buf.first_chunk::<RECORD_HEADER_LEN>() else {
            return Ok(None);
        };
        let raw = *raw;
        self.have = 0;
        self.rec = RecordHeaderRepr::from_bytes(&raw);
        self.rec_start = self.pos.saturating_sub(RECORD_HEADER_LEN as u64);
        self.done = 0;
        let at = self.rec_start;
        let rec = self.rec;
        let Ok(expected) = u32::try_from(self.records) else {
            return Err(self.err_here(ErrorKind::TooManyRecords, at));
        };
        if rec.index != expected {
            let k = ErrorKind::BadIndex {
                expected,
                got: rec.index,
            };
            return Err(self.err_here(k, at));
        }
        if !rec.flags.is_valid() {
            return Err(self.err_here(ErrorKind::BadFlags { flags: rec.flags.0 }, at));
        }
        if rec.payload_len > self.limits.max_payload {
            let k = ErrorKind::LengthTooLarge {
                len: rec.payload_len,
                max: self.limits.max_payload,
            };
            return Err(self.err_here(k, at));
        }
        let parsed_here = matches!(
            rec.kind,
            RecordKind::PAGES | RecordKind::ROUND | RecordKind::END
        ) || (cfg!(feature = "auth") && rec.kind == RecordKind::MAC);
        if parsed_here && rec.version != CONTROL_VERSION {
            let k = ErrorKind::UnsupportedRecordVersion {
                kind: rec.kind,
                version: rec.version,
            };
            return Err(self.err_here(k, at));
        }
        let fixed = match rec.kind {
            RecordKind::ROUND => Some(ROUND_LEN),
            RecordKind::END => Some(END_LEN),
            #[cfg(feature = "auth")]
            RecordKind::MAC => Some(MAC_LEN),
            _ => None,
        };
        if let Some(expected) = fixed.filter(|&e| rec.payload_len as usize != e) {
            let k = ErrorKind::BadRoundOrEnd {
                expected: u32::try_from(expected).unwrap_or(0),
                len: rec.payload_len,
            };
            return Err(self.err_here(k, at));
        }
        // SPEC.md §5 step 5a before step 6: a record after the MAC record is a malformed
        // stream (the stream's fault) whatever its kind, not a kind this reader lacks.
        #[cfg(feature = "auth")]
        self.mac_record_header(&raw)?;
        if !rec.kind.is_known() && rec.flags.is_mandatory() {
            return Err(self.err_here(ErrorKind::UnknownMandatory { kind: rec.kind }, at));
        }
        self.crc = Crc32::new();
        self.crc.update(raw.get(..12).unwrap_or_default());
        if rec.kind != RecordKind::END {
            self.stream_crc.update(&raw);
        }
        let begin = Event::RecordBegin {
            kind: rec.kind,
            version: rec.version,
            len: rec.payload_len,
            index: rec.index,
        };
        Ok(match rec.kind {
            #[cfg(feature = "auth")]
            RecordKind::MAC => {
                self.phase = Phase::Fixed;
                None
            }
            RecordKind::ROUND | RecordKind::END => {
                self.phase = Phase::Fixed;
                None
            }
            RecordKind::PAGES => {
                self.phase = Phase::RunHeader;
                Some(begin)
            }
            k if !k.is_known() => {
                self.phase = Phase::Opaque { skip: true };
                None
            }
            _ => {
                self.phase = Phase::Opaque { skip: false };
                Some(begin)
            }
        })
    }

    /// The stream header is valid: does it match this decoder's key (or lack of one)? If so and
    /// a key is set, start the MAC with the header absorbed.
    #[cfg(feature = "auth")]
    fn start_mac(&mut self, h: &crate::StreamHeaderRepr) -> Result<(), DecodeError> {
        let flagged = h.flags & AUTHENTICATED != 0;
        match (&self.mac, flagged) {
            (MacState::Off, true) => Err(self.err_at(ErrorKind::Auth(AuthError::KeyRequired), 0)),
            (MacState::Keyed(..), false) => {
                Err(self.err_at(ErrorKind::Auth(AuthError::NotAuthenticated), 0))
            }
            (MacState::Keyed(..), true) => {
                let header = self.buf;
                self.mac.start(h.stream_id, &header);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The MAC rules for a record header that passed the other checks (SPEC.md §10.4): a MAC
    /// record seals the MAC (its header is not covered), END needs the MAC verified, nothing
    /// else may follow the MAC record; every other header is absorbed.
    #[cfg(feature = "auth")]
    fn mac_record_header(&mut self, raw: &[u8; RECORD_HEADER_LEN]) -> Result<(), DecodeError> {
        let at = self.rec_start;
        let kind = self.rec.kind;
        let refuse = |d: &Self, e| Err(d.err_here(ErrorKind::Auth(e), at));
        // The MAC record and END are outside the MAC: their headers must be exactly as
        // written (MANDATORY set) so that no bit of an authenticated stream is malleable.
        let exact = |d: &Self| {
            let flags = d.rec.flags;
            if flags == crate::RecordFlags::MANDATORY {
                Ok(())
            } else {
                Err(d.err_here(ErrorKind::BadFlags { flags: flags.0 }, at))
            }
        };
        match (&self.mac, kind) {
            (MacState::Active(_), RecordKind::MAC) => {
                exact(self)?;
                self.mac.seal();
                Ok(())
            }
            (MacState::Active(_), RecordKind::END) => refuse(self, AuthError::MissingMac),
            (MacState::Closed, RecordKind::END) => exact(self),
            (MacState::Closed, _) => refuse(self, AuthError::RecordAfterMac),
            (_, RecordKind::MAC) => refuse(self, AuthError::UnexpectedMac),
            _ => {
                self.mac.update(raw);
                Ok(())
            }
        }
    }

    /// All payload consumed: verify the CRC and produce the closing event.
    fn finish_record(&mut self) -> Result<Event<'static>, DecodeError> {
        let rec = self.rec;
        let at = self.rec_start;
        let computed = self.crc.value();
        if !crate::crc_matches(rec.crc, computed) {
            let k = ErrorKind::BadRecordCrc {
                stored: rec.crc,
                computed,
            };
            return Err(self.err_here(k, at));
        }
        let payload = self.buf.get(..rec.payload_len as usize).unwrap_or_default();
        let ev = match rec.kind {
            RecordKind::ROUND => {
                Event::Round(RoundRepr::parse(payload).map_err(|k| self.err_here(k, at))?)
            }
            RecordKind::END => {
                let end = EndRepr::parse(payload).map_err(|k| self.err_here(k, at))?;
                let seen = rec.index;
                if end.record_count != seen {
                    let m = EndMismatch::RecordCount {
                        stream: end.record_count,
                        seen,
                    };
                    return Err(self.err_here(ErrorKind::EndMismatch(m), at));
                }
                if end.byte_count != at {
                    let m = EndMismatch::ByteCount {
                        stream: end.byte_count,
                        seen: at,
                    };
                    return Err(self.err_here(ErrorKind::EndMismatch(m), at));
                }
                let computed = self.stream_crc.value();
                if !crate::crc_matches(end.stream_crc, computed) {
                    let m = EndMismatch::StreamCrc {
                        stream: end.stream_crc,
                        computed,
                    };
                    return Err(self.err_here(ErrorKind::EndMismatch(m), at));
                }
                Event::End(end)
            }
            #[cfg(feature = "auth")]
            RecordKind::MAC => {
                let mut tag = [0u8; MAC_LEN];
                if let Some(src) = payload.get(..MAC_LEN) {
                    tag.copy_from_slice(src);
                }
                let MacState::Sealed(expected) = self.mac else {
                    return Err(self.err_here(ErrorKind::Auth(AuthError::UnexpectedMac), at));
                };
                if !crate::auth::tag_matches(&expected, &tag) {
                    return Err(self.err_here(ErrorKind::Auth(AuthError::BadTag), at));
                }
                self.mac = MacState::Closed;
                Event::Authenticated { index: rec.index }
            }
            k if !k.is_known() => Event::Skipped {
                kind: k,
                len: rec.payload_len,
            },
            k => Event::RecordEnd {
                kind: k,
                index: rec.index,
            },
        };
        self.records = self.records.saturating_add(1);
        self.have = 0;
        self.phase = if rec.kind == RecordKind::END {
            Phase::Finished
        } else {
            Phase::RecordHeader
        };
        Ok(ev)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::RecordFlags;

    /// SPEC.md §5 step 1: after 2^32 records the next record header is `TooManyRecords` (a
    /// stream that long cannot be fed in a test, so the count is set directly).
    #[test]
    fn the_record_after_two_to_the_32_records_is_refused() {
        let mut dec = Decoder::new(Limits::DEFAULT);
        dec.phase = Phase::RecordHeader;
        dec.records = 1 << 32;
        dec.pos = 1000;
        let mut h = RecordHeaderRepr {
            kind: RecordKind::REGISTERS,
            flags: RecordFlags::MANDATORY,
            version: 1,
            payload_len: 0,
            index: 0,
            crc: 0,
        };
        h.crc = h.compute_crc(&[]);
        let mut raw = [0u8; RECORD_HEADER_LEN];
        h.emit(&mut raw);
        let e = dec.feed(&raw).unwrap_err();
        assert_eq!((e.kind(), e.offset()), (ErrorKind::TooManyRecords, 1000));
    }
}
