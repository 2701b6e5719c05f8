//! The demo's framing around the library's migration stream (see the parent module's docs for the
//! sequence): a 5-byte header (kind, little-endian payload length) before every message. `DATA`
//! carries the library's stream as it is; every other payload is a control message encoded with
//! postcard ([`encode`], [`decode`]). Both come from [`demo_wire`], which the KVM VMM's protocol
//! can share.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use demo_wire::{Framing, HEADER_LEN};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Magic at the start of a hello.
const HELLO_MAGIC: [u8; 8] = *b"VGPUDEMO";
/// Version of this framing.
const HELLO_VERSION: u32 = 4;
/// Largest payload a peer may announce (a DATA message carries at most one poll's output).
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Source → destination: the scenario parameters.
    Hello = 1,
    /// Destination → source: the destination machine is built and the session open.
    Ready = 2,
    /// Source → destination: migration stream bytes (any segmentation).
    Data = 3,
    /// Source → destination: the guest driver's state and the guest clock (the vCPU state).
    Vcpu = 4,
    /// Destination → source: committed and resumed (the vGPU is started).
    Resumed = 5,
    /// Destination → source: the verification verdict.
    Verdict = 6,
    /// Either way: a reason, then the connection closes.
    Error = 7,
    /// Destination → source: stream bytes fed to the session so far (`u64`), after each `DATA`.
    Ack = 8,
    /// Source → destination, first message on each extra connection of a multi-channel
    /// migration: the channel it carries (`u8`, 1..channels).
    Join = 9,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Ready,
            3 => Self::Data,
            4 => Self::Vcpu,
            5 => Self::Resumed,
            6 => Self::Verdict,
            7 => Self::Error,
            8 => Self::Ack,
            9 => Self::Join,
            _ => return None,
        })
    }
}

/// This protocol's framing ([`demo_wire`], shared with the KVM VMM's).
const FRAMING: Framing = Framing::new(MAX_PAYLOAD);

/// The kind a header names, or an error for a person.
fn kind_of(v: u8) -> Result<Kind, String> {
    Kind::from_u8(v).ok_or_else(|| format!("unknown message kind {v}"))
}

/// Header bytes of a message.
pub(crate) fn header(kind: Kind, len: usize) -> io::Result<[u8; HEADER_LEN]> {
    FRAMING.header(kind as u8, len)
}

/// Write one message (blocking).
pub(crate) fn send(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    FRAMING.send(w, kind as u8, &[payload])?;
    w.flush()
}

/// Read one message (blocking) into `buf`; returns its kind. A closed connection, an unknown kind
/// or an oversized length is an error with a message for a person.
pub(crate) fn recv(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Kind, String> {
    kind_of(FRAMING.recv(r, buf).map_err(|e| e.to_string())?)
}

/// The receiving side of a connection: messages parsed from whatever has arrived, so the source
/// can read acknowledgements without blocking while it streams, then wait for replies.
pub(crate) struct Inbox {
    sock: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Inbox {
    /// Over `sock` (a clone of the connection).
    pub(crate) fn new(sock: TcpStream) -> Self {
        Self {
            sock,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The socket, e.g. to set a read timeout.
    pub(crate) fn sock(&self) -> &TcpStream {
        &self.sock
    }

    /// A complete buffered message, if any.
    fn take(&mut self, out: &mut Vec<u8>) -> Result<Option<Kind>, String> {
        let Some(h) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = FRAMING.parse_header(*h).map_err(|e| e.to_string())?;
        let kind = kind_of(kind)?;
        let Some(p) = self.buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        out.clear();
        out.extend_from_slice(p);
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(kind))
    }

    /// Read once into the buffer; `false` when the read would block or timed out.
    fn fill(&mut self) -> Result<bool, String> {
        let mut tmp = [0u8; 64 * 1024];
        match self.sock.read(&mut tmp) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(format!("reading from the peer: {e}")),
        }
    }

    /// Without waiting (the socket is non-blocking): the next message, if one has arrived.
    pub(crate) fn poll(&mut self, out: &mut Vec<u8>) -> Result<Option<Kind>, String> {
        if let Some(k) = self.take(out)? {
            return Ok(Some(k));
        }
        while !self.eof && self.fill()? {
            if let Some(k) = self.take(out)? {
                return Ok(Some(k));
            }
        }
        if self.eof {
            return Err("peer closed the connection".into());
        }
        Ok(None)
    }

    /// Wait for the next message (the socket is blocking; a read timeout ends the wait with an
    /// error).
    pub(crate) fn recv(&mut self, out: &mut Vec<u8>) -> Result<Kind, String> {
        loop {
            if let Some(k) = self.take(out)? {
                return Ok(k);
            }
            if self.eof {
                return Err("peer closed the connection".into());
            }
            if !self.fill()? && !self.eof {
                return Err("timed out waiting for the peer".into());
            }
        }
    }
}

/// Encode a control message (postcard through [`demo_wire`]: both ends are this program, and the
/// messages are irregular: strings, optional parts, byte strings). The migration stream inside
/// `DATA` keeps its own fixed little-endian layout (SPEC.md).
pub(crate) fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, String> {
    demo_wire::encode(msg).map_err(|e| format!("encoding a message: {e}"))
}

/// Decode a control message that must fill the whole payload; `what` names it in the error.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, String> {
    demo_wire::decode(b).map_err(|e| format!("bad {what}: {e}"))
}

/// Encode and write one control message (blocking).
pub(crate) fn send_msg<T: Serialize>(
    w: &mut impl Write,
    kind: Kind,
    msg: &T,
) -> Result<(), String> {
    send(w, kind, &encode(msg)?).map_err(|e| format!("sending {kind:?}: {e}"))
}

/// The text of an `ERROR` message (a peer that cannot even say why gets a placeholder).
pub(crate) fn error_text(b: &[u8]) -> String {
    decode::<String>("error message", b).unwrap_or_else(|e| e)
}

/// What opens a hello, before the version-dependent rest.
#[derive(Serialize, Deserialize)]
struct Greeting {
    magic: [u8; 8],
    version: u32,
}

/// What the destination needs to build the same machine as the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// Workload code: 0 idle, 1 2d, 2 media, 3 3d.
    pub(crate) workload: u8,
    /// The small CI vGPU (`--quick`).
    pub(crate) quick: bool,
    /// Graphics memory, MiB (ignored when `quick`).
    pub(crate) gm_mib: u64,
    /// Frames the workload renders.
    pub(crate) frames: u64,
    /// Seed.
    pub(crate) seed: u64,
    /// Channels (TCP connections) the stream is split over, 1..=8.
    pub(crate) channels: u8,
}

impl Hello {
    /// Encode: the greeting (magic, framing version), then the fields.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        let greeting = Greeting {
            magic: HELLO_MAGIC,
            version: HELLO_VERSION,
        };
        encode(&(greeting, self))
    }

    /// Decode and check.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        let (g, rest) = demo_wire::decode_prefix::<Greeting>(b)
            .ok()
            .filter(|(g, _)| g.magic == HELLO_MAGIC)
            .ok_or("bad hello: not a vGPU migration demo peer")?;
        if g.version != HELLO_VERSION {
            return Err(format!(
                "bad hello: framing version {}, this side speaks {HELLO_VERSION}",
                g.version
            ));
        }
        let h: Self = decode("hello", rest)?;
        if !(1..=vgpu::channel::MAX_CHANNELS).contains(&usize::from(h.channels)) {
            return Err(format!("bad hello: {} channels", h.channels));
        }
        if h.workload > 3 {
            return Err(format!("bad hello: workload code {}", h.workload));
        }
        if !h.quick && !(128..=4096).contains(&h.gm_mib) {
            return Err(format!("bad hello: {} MiB of graphics memory", h.gm_mib));
        }
        if h.frames == 0 || h.frames > 1_000_000 {
            return Err(format!("bad hello: {} frames", h.frames));
        }
        Ok(h)
    }
}

/// `JOIN`: the channel an extra connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Join {
    /// 1..channels.
    pub(crate) channel: u8,
}

/// `ACK`: how far the destination has applied the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ack {
    /// Stream bytes fed to the session so far, all channels.
    pub(crate) fed: u64,
}

/// `VCPU`: the guest's CPU-side state, sent after the device state as a VMM sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Vcpu {
    /// [`GuestDriver::save`](sim::GuestDriver::save)'s bytes (the driver model's own
    /// layout).
    pub(crate) driver: Vec<u8>,
    /// The guest clock, ns.
    pub(crate) clock_ns: u64,
    /// The stream offset (all channels) at which the source stopped the guest: the destination
    /// times the stop round's share of its work from there ([`StopVerdict`]).
    pub(crate) stop_offset: u64,
}

/// `VERDICT`: the destination's comparison with a never-migrated run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Verdict {
    /// The migrated run equals the never-migrated one.
    pub(crate) pass: bool,
    /// Frames the destination rendered after resuming.
    pub(crate) frames: u64,
    /// The destination's time for finishing and verifying, ms.
    pub(crate) verify_ms: u64,
    /// What was compared, or the first difference.
    pub(crate) text: String,
    /// The KVM guest's timings, measured by the destination (`--guest kvm`).
    pub(crate) kvm: Option<KvmVerdict>,
    /// The model guest's stop phase, measured by the destination (`--guest model`).
    pub(crate) stop: Option<StopVerdict>,
}

/// The destination's share of a model guest's stop phase: its work on the stream bytes past the
/// source's stop (`Vcpu::stop_offset`; with several channels the bytes counted in arrival order),
/// then the commit and the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct StopVerdict {
    /// `DATA` messages past the stop offset.
    pub(crate) messages: u64,
    /// Time the channels' threads waited to read them (the link, or the source, was the bound),
    /// summed over channels, µs.
    pub(crate) read_wait_us: u64,
    /// Time spent feeding them to the session (decode, verify, apply), summed over channels, µs.
    pub(crate) apply_us: u64,
    /// From the first of them read to the last fed, µs (wall).
    pub(crate) span_us: u64,
    /// From the last of them fed to the `VCPU` message in hand, µs.
    pub(crate) vcpu_after_us: u64,
    /// [`DestSession::commit`](vgpu::dest::DestSession::commit), µs.
    pub(crate) commit_us: u64,
    /// Restoring the guest driver and starting the vGPU, µs.
    pub(crate) start_us: u64,
    /// The channels' threads' time on a CPU from the first of those messages to the end of
    /// their streams, summed, µs (Linux `schedstat`; 0 elsewhere).
    pub(crate) cpu_us: u64,
    /// And their time runnable but waiting for a CPU, µs.
    pub(crate) cpu_wait_us: u64,
}

/// The destination's timings of a KVM VM migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KvmVerdict {
    /// Guest-visible downtime: the source's last guest exit to the destination's first guest
    /// entry, µs.
    pub(crate) downtime_us: u64,
    /// END received to the vCPU started, µs.
    pub(crate) resume_us: u64,
    /// The source's pause to END received, µs.
    pub(crate) end_after_pause_us: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let h = Hello {
            workload: 3,
            quick: false,
            gm_mib: 448,
            frames: 147,
            seed: 9,
            channels: 4,
        };
        let good = h.encode().unwrap();
        assert_eq!(Hello::decode(&good), Ok(h));
        for channels in [0, 9] {
            let bad = Hello { channels, ..h }.encode().unwrap();
            assert!(Hello::decode(&bad).is_err(), "{channels} channels");
        }
        let bad = Hello { workload: 4, ..h }.encode().unwrap();
        assert!(Hello::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(
            Hello::decode(&bad),
            Err("bad hello: not a vGPU migration demo peer".into())
        );
        // Another framing version is named as such, before the rest is read.
        let mut other = encode(&Greeting {
            magic: HELLO_MAGIC,
            version: HELLO_VERSION + 1,
        })
        .unwrap();
        other.extend_from_slice(&good[9..]);
        assert!(
            Hello::decode(&other)
                .unwrap_err()
                .contains("framing version")
        );
        // Cut short anywhere, or with bytes left over: an error, never a panic.
        for n in 0..good.len() {
            assert!(Hello::decode(&good[..n]).is_err(), "{n} bytes");
        }
        let mut long = good;
        long.push(0);
        assert!(Hello::decode(&long).unwrap_err().contains("left over"));
    }

    #[test]
    fn control_messages_round_trip() {
        let v = Verdict {
            pass: true,
            frames: 117,
            verify_ms: 2_000,
            text: "equal".into(),
            kvm: Some(KvmVerdict {
                downtime_us: 40_000,
                resume_us: 3_000,
                end_after_pause_us: 35_000,
            }),
            stop: Some(StopVerdict {
                messages: 300,
                read_wait_us: 90_000,
                apply_us: 40_000,
                span_us: 110_000,
                vcpu_after_us: 30,
                commit_us: 2_000,
                start_us: 100,
                cpu_us: 60_000,
                cpu_wait_us: 70_000,
            }),
        };
        assert_eq!(decode::<Verdict>("verdict", &encode(&v).unwrap()), Ok(v));
        let c = Vcpu {
            driver: vec![1, 2, 3],
            clock_ns: u64::MAX,
            stop_offset: 1 << 33,
        };
        assert_eq!(decode::<Vcpu>("vcpu", &encode(&c).unwrap()), Ok(c));
        let a = Ack { fed: 1 << 40 };
        assert_eq!(decode::<Ack>("ack", &encode(&a).unwrap()), Ok(a));
        assert_eq!(error_text(&encode(&"no room").unwrap()), "no room");
        // A truncated message is an error with the message's name.
        let e = encode(&Join { channel: 2 }).unwrap();
        assert!(
            decode::<Ack>("ack", &e[..0])
                .unwrap_err()
                .starts_with("bad ack")
        );
    }

    #[test]
    fn messages_round_trip_and_a_short_read_is_an_error() {
        let mut wire = Vec::new();
        send(&mut wire, Kind::Data, b"stream bytes").unwrap();
        send(&mut wire, Kind::Error, b"").unwrap();
        let mut r = &wire[..];
        let mut buf = Vec::new();
        assert_eq!(recv(&mut r, &mut buf), Ok(Kind::Data));
        assert_eq!(buf, b"stream bytes");
        assert_eq!(recv(&mut r, &mut buf), Ok(Kind::Error));
        assert!(buf.is_empty());
        assert!(recv(&mut r, &mut buf).is_err());
        let mut r = &wire[..8];
        assert!(recv(&mut r, &mut buf).is_err());
        let mut big = vec![3u8];
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(recv(&mut &big[..], &mut buf).is_err());
    }
}
