//! The demo's framing around the library's migration stream (see the parent module's docs for the
//! sequence): a 5-byte header (kind, little-endian payload length) before every message.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Magic at the start of a hello.
const HELLO_MAGIC: [u8; 8] = *b"VGPUDEMO";
/// Version of this framing.
const HELLO_VERSION: u32 = 2;
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

/// Header bytes of a message.
pub(crate) fn header(kind: Kind, len: usize) -> io::Result<[u8; 5]> {
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l as usize <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::other("message too large"))?;
    let mut h = [0u8; 5];
    h[0] = kind as u8;
    h[1..].copy_from_slice(&len.to_le_bytes());
    Ok(h)
}

/// Write one message (blocking).
pub(crate) fn send(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    w.write_all(&header(kind, payload.len())?)?;
    w.write_all(payload)?;
    w.flush()
}

/// Read one message (blocking) into `buf`; returns its kind. A closed connection, an unknown kind
/// or an oversized length is an error with a message for a person.
pub(crate) fn recv(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Kind, String> {
    let mut h = [0u8; 5];
    r.read_exact(&mut h).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "peer closed the connection".to_string(),
        _ => format!("reading from the peer: {e}"),
    })?;
    let kind = Kind::from_u8(h[0]).ok_or_else(|| format!("unknown message kind {}", h[0]))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!(
            "message of {len} bytes announced (limit {MAX_PAYLOAD})"
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "peer closed the connection mid-message".to_string(),
        _ => format!("reading from the peer: {e}"),
    })?;
    Ok(kind)
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
        let Some(h) = self.buf.get(..5) else {
            return Ok(None);
        };
        let kind = Kind::from_u8(h[0]).ok_or_else(|| format!("unknown message kind {}", h[0]))?;
        let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!(
                "message of {len} bytes announced (limit {MAX_PAYLOAD})"
            ));
        }
        let Some(p) = self.buf.get(5..5 + len) else {
            return Ok(None);
        };
        out.clear();
        out.extend_from_slice(p);
        self.buf.drain(..5 + len);
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

/// What the destination needs to build the same machine as the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Encoded length.
    pub(crate) const LEN: usize = 8 + 4 + 1 + 1 + 8 * 3 + 1;

    /// Encode.
    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&HELLO_MAGIC);
        b[8..12].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        b[12] = self.workload;
        b[13] = u8::from(self.quick);
        b[14..22].copy_from_slice(&self.gm_mib.to_le_bytes());
        b[22..30].copy_from_slice(&self.frames.to_le_bytes());
        b[30..38].copy_from_slice(&self.seed.to_le_bytes());
        b[38] = self.channels;
        b
    }

    /// Decode and check.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != Self::LEN || b[..8] != HELLO_MAGIC {
            return Err("bad hello: not a vGPU migration demo peer".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != HELLO_VERSION {
            return Err(format!(
                "bad hello: framing version {version}, this side speaks {HELLO_VERSION}"
            ));
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let h = Self {
            workload: b[12],
            quick: match b[13] {
                0 => false,
                1 => true,
                v => return Err(format!("bad hello: quick flag {v}")),
            },
            gm_mib: u64_at(14),
            frames: u64_at(22),
            seed: u64_at(30),
            channels: b[38],
        };
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
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        for channels in [0, 9] {
            let mut bad = h.encode();
            bad[38] = channels;
            assert!(Hello::decode(&bad).is_err(), "{channels} channels");
        }
        let mut bad = h.encode();
        bad[0] ^= 1;
        assert!(Hello::decode(&bad).is_err());
        let mut bad = h.encode();
        bad[12] = 4;
        assert!(Hello::decode(&bad).is_err());
        assert!(Hello::decode(&h.encode()[..10]).is_err());
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
