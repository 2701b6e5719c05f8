//! Live migration of the whole VM over a byte stream (TCP).
//!
//! **Guest RAM is the VMM's; the vGPU travels as device state.** The vGPU's graphics memory is
//! guest RAM (its GGTT and PPGTT point at guest frames), and the VMM copies all of guest RAM
//! anyway; so the library runs in its VMM-RAM mode ([`MemoryMode::Report`]): each RAM pass takes
//! KVM's dirty log of guest CPU writes and the library's report of the frames the GPU wrote
//! ([`SourceSession::dirty_report`], VFIO DMA-logging style) and sends their union, and the
//! library's stream carries only the device state. Carrying graphics memory in the library's
//! stream as well would send the same pages twice, through two dirty logs that must then agree.
//!
//! Source: open the session (RUNNING → PRE_COPY); round 0 sends every RAM page (zero pages as
//! markers); each later round harvests both logs first, then reads and sends the pages (a write
//! after the harvest dirties the page again, so it goes in a later round: pages may change under
//! any read). The library's pre-copy policy ([`gmem::Policy`]) decides when to stop. Stop: pause
//! the vCPU (kicked out of `KVM_RUN`), quiesce the vGPU (no new dispatch, in-flight work drained,
//! every interrupt it raised delivered to the local APIC, so the vCPU state taken next carries it),
//! `stop_and_copy`, the last RAM pass, the vGPU's device state, the vCPU state, END. The device
//! lock is taken during pre-copy only for one look at the vGPU per round (the device-state size the
//! policy needs), never while pages are read or sent: the GPU dirty report reads the vGPU's atomic
//! GPU dirty log ([`DeviceAccess`]), and MMIO exits keep being served.
//!
//! **Connections.** Guest RAM may travel over several connections
//! ([`migrate_source_channels`], [`migrate_dest_channels`]; at most [`MAX_CHANNELS`]): a round's
//! pages are split by frame in stripes of [`STRIPE_FRAMES`], stripe `s` on connection
//! `s % connections`, so every copy of a frame takes one connection, in order, and the
//! destination can write each connection's pages as they come, on its own thread, without
//! ordering them against the others'. The harvest and the policy's decision stay on the
//! migration thread at the round boundary; within a round each connection's pages are read and
//! sent by its own thread (connection 0's by the migration thread), and the round ends when all
//! have. Everything else (ROUND, VGPU, CPU, REPORTS, END, the answers) stays on the main
//! connection. The link rate is shared: each connection gets an equal part.
//!
//! Destination: build the VM from the HELLO (its vGPU's graphics memory placed elsewhere on the
//! host and split, [`Host::Destination`]: the commit rebases every GGTT entry), write pages as they come (no lock: nothing runs),
//! feed the vGPU stream to a [`DestSession`], commit (validated, atomic), load the vCPU state,
//! answer ACK, then start the vCPU exactly where it stopped. A rejected stream answers NACK; the
//! source then cancels (the vGPU resumes, the vCPU restarts) and nothing is lost. With several
//! connections, each extra one is received and written by its own thread (guest RAM is written
//! through `&self`; each keeps its own record of the frames written, for zero pages); the vGPU
//! stream is fed only once every page connection has ended with the page count that arrived
//! (the source ends them before it sends anything after the stop round on the main one), and any
//! connection's failure is the migration's: it shuts every connection down and answers NACK.
//!
//! # Wire
//!
//! Messages are framed by [`demo_wire::Framing`] (shared with `cargo xtask migrate`'s model guest):
//! kind (`u8`, this protocol's own numbering), payload length (`u32` LE, at most
//! [`MAX_PAYLOAD`]), payload.
//!
//! The control messages are irregular and both ends are this program, so they are postcard
//! encodings of Rust types ([`demo_wire::encode`]): `HELLO` (a greeting, the magic `KVMVGPU`
//! and the protocol version as an ASCII digit, then the number of connections, a session number
//! and the VM configuration), `JOIN` (the first message of each extra page connection: the
//! greeting, the HELLO's session and the connection's index, 1 up, each once),
//! `CHANNEL_END` (the last message of each extra page connection: the pages it carried, which the
//! destination checks against what arrived), `ROUND` (the round
//! number, consecutive from 0), `REPORTS` (the guest's debug-port record so far and the words of
//! a report it has begun), `END` (wall-clock ns of the source's last guest exit), and back `ACK`
//! (empty) or `NACK` (the reason), once to the HELLO (protocol and configuration accepted; the
//! destination builds its VM while the first pages arrive) and once to END (committed). A source
//! of another protocol version is refused at the HELLO with both versions named (version 3 has
//! the connections; version 2 had one; version 1's fixed-layout hello began `KVMVGPU1`, and
//! reads as version 1); a version-2 destination refuses a version-3 source the same way, and a
//! version-1 destination closes the connection without an answer, which the source reports as
//! no answer to its HELLO.
//!
//! Three payloads keep fixed layouts:
//! - `PAGES` (first frame `u64`, count `u32`, zero flag `u32`, then `count` pages unless zero):
//!   bulk data: a fixed 16-byte header the destination checks against the payload's length
//!   before it writes a page, then the pages' bytes as they are, with nothing to encode.
//! - `VGPU`: the library's migration stream as it is; its layout is normative (SPEC.md) and the
//!   library's destination session reads it.
//! - `CPU` ([`CpuState::encode`]): KVM's own structures byte for byte, each with its length, so
//!   a host whose structures differ in size is refused rather than misread; their layout is the
//!   kernel's ABI, not ours to describe field by field.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use demo_wire::Framing;
use gmem::{Decision, DmaRange, Policy, PolicyConfig, RoundStats, words_for};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sim::Profile;
use vgpu::dest::DestSession;
use vgpu::source::{MemoryMode, SourceConfig, SourceSession};
use vgpu::traits::VgpuAccess as _;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::cpu::CpuState;
use crate::device::{DeviceAccess, Host, WaitSummary, lock};
use crate::memory::{GuestRam, for_each_bit};
use crate::vm::{Report, VcpuEnd, Vm, VmConfig, VmError, wall_ns};

/// Largest message payload.
pub const MAX_PAYLOAD: usize = 8 << 20;
/// Pages per PAGES message.
const PAGES_PER_MSG: usize = 256;
/// What opens a HELLO (then [`PROTOCOL_VERSION`]).
const HELLO_MAGIC: [u8; 7] = *b"KVMVGPU";
/// This protocol's version, an ASCII digit after the magic: 3 since guest RAM may travel over
/// several connections (2 had one; its control messages were postcard, 1 laid them out by hand).
const PROTOCOL_VERSION: u8 = b'3';
/// Most connections a migration may use (the main one and the extra page connections): a
/// destination refuses a HELLO asking for more.
pub const MAX_CHANNELS: usize = 8;
/// Frames per stripe: frame `f` travels on connection `(f / STRIPE_FRAMES) % channels`, so every
/// copy of a frame takes the same connection, in order (as the library's channels stripe pages).
pub const STRIPE_FRAMES: u64 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Hello = 1,
    Pages = 2,
    Round = 3,
    Vgpu = 4,
    Cpu = 5,
    Reports = 6,
    End = 7,
    Ack = 8,
    Nack = 9,
    Join = 10,
    ChannelEnd = 11,
}

impl Kind {
    fn of(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Pages,
            3 => Self::Round,
            4 => Self::Vgpu,
            5 => Self::Cpu,
            6 => Self::Reports,
            7 => Self::End,
            8 => Self::Ack,
            9 => Self::Nack,
            10 => Self::Join,
            11 => Self::ChannelEnd,
            _ => return None,
        })
    }
}

/// A migration failure (whose side, and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigError(pub String);

impl std::fmt::Display for MigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MigError {}

impl From<io::Error> for MigError {
    fn from(e: io::Error) -> Self {
        MigError(format!("connection: {e}"))
    }
}

impl From<VmError> for MigError {
    fn from(e: VmError) -> Self {
        MigError(e.0)
    }
}

fn verr(what: &str) -> impl Fn(vgpu::error::VgpuError) -> MigError + '_ {
    move |e| MigError(format!("{what}: {e}"))
}

/// A writer with an optional rate limit (a token bucket of 5 ms), for `--link`.
#[derive(Debug)]
pub struct Link<W> {
    inner: W,
    rate: u64,
    start: Instant,
    sent: u64,
}

impl<W: Write> Link<W> {
    /// `rate` payload bytes per second; 0 = unlimited.
    pub fn new(inner: W, rate: u64) -> Self {
        Self {
            inner,
            rate,
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Bytes written so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

impl<W: Write> Write for Link<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.rate > 0 {
            let burst = Duration::from_millis(5);
            let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
            let now = self.start.elapsed();
            if due > now + burst {
                std::thread::sleep(due - now);
            } else if now > due + burst {
                // Idle time earns at most one burst of credit: move the schedule's origin so
                // that the link is never faster than its rate for longer than that.
                self.start += now - due - burst;
            }
        }
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A duration in µs (saturating).
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// This protocol's framing.
const FRAMING: Framing = Framing::new(MAX_PAYLOAD);

fn send(w: &mut impl Write, kind: Kind, parts: &[&[u8]]) -> io::Result<()> {
    FRAMING.send(w, kind as u8, parts)
}

/// Encode and write one control message.
fn send_msg<T: Serialize + ?Sized>(
    w: &mut impl Write,
    kind: Kind,
    msg: &T,
) -> Result<(), MigError> {
    let b = demo_wire::encode(msg).map_err(|e| MigError(format!("encoding {kind:?}: {e}")))?;
    Ok(send(w, kind, &[&b])?)
}

fn recv(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Kind, MigError> {
    let k = FRAMING
        .recv(r, buf)
        .map_err(|e| MigError(format!("connection: {e}")))?;
    Kind::of(k).ok_or_else(|| MigError(format!("unknown message kind {k}")))
}

/// Decode a control message of `kind` that must fill the whole payload.
fn decode<T: DeserializeOwned>(kind: Kind, b: &[u8]) -> Result<T, MigError> {
    demo_wire::decode(b).map_err(|e| MigError(format!("bad {kind:?} message: {e}")))
}

/// What opens a HELLO, whatever the protocol version: the magic, then the version as an ASCII
/// digit (version 1's hello began `KVMVGPU1`, and so reads as version 1 here).
#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    magic: [u8; 7],
    version: u8,
}

/// The workloads a HELLO can name, by their code.
const PROFILES: [Profile; 4] = [
    Profile::IDLE,
    Profile::TWO_D,
    Profile::MEDIA,
    Profile::THREE_D,
];

/// A [`Profile`] on the wire: the workload's code in [`PROFILES`] (for its name) and every
/// parameter (a test VM scales and unpaces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WireProfile {
    code: u8,
    rt_pages: u64,
    fill_pages: u64,
    stores: u32,
    hot_pages: u64,
    remap_every: u64,
    cpu_writes: u32,
    repeat_every: u64,
    mirror: bool,
    blits: bool,
    frame_ns: u64,
}

/// The rest of a HELLO: what the destination needs to build the same VM ([`VmConfig`]), and the
/// connections guest RAM travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Hello {
    /// Connections: this one and `channels - 1` page connections, each opened by a JOIN.
    channels: u8,
    /// Repeated by every JOIN: a connection of another migration is refused.
    session: u64,
    ram: u64,
    aperture: u64,
    hidden: u64,
    frames: u64,
    seed: u64,
    profile: WireProfile,
}

fn hello_of(c: &VmConfig, channels: u8, session: u64) -> Result<(Greeting, Hello), MigError> {
    let p = &c.profile;
    let code = PROFILES
        .iter()
        .position(|k| k.name == p.name)
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| MigError(format!("workload {} has no HELLO code", p.name)))?;
    let greeting = Greeting {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
    };
    let hello = Hello {
        channels,
        session,
        ram: c.ram,
        aperture: c.aperture,
        hidden: c.hidden,
        frames: c.frames,
        seed: c.seed,
        profile: WireProfile {
            code,
            rt_pages: p.rt_pages,
            fill_pages: p.fill_pages,
            stores: p.stores,
            hot_pages: p.hot_pages,
            remap_every: p.remap_every,
            cpu_writes: p.cpu_writes,
            repeat_every: p.repeat_every,
            mirror: p.mirror,
            blits: p.blits,
            frame_ns: p.frame_ns,
        },
    };
    Ok((greeting, hello))
}

/// The greeting that opens `b` (a HELLO or a JOIN), checked: the rest of the payload.
fn check_greeting(b: &[u8]) -> Result<&[u8], MigError> {
    let (g, rest) = demo_wire::decode_prefix::<Greeting>(b)
        .ok()
        .filter(|(g, _)| g.magic == HELLO_MAGIC)
        .ok_or_else(|| MigError("not a KVM VMM hello".into()))?;
    if g.version != PROTOCOL_VERSION {
        return Err(MigError(format!(
            "the source speaks KVM VMM migration protocol version {}, this side speaks {}",
            char::from(g.version).escape_default(),
            char::from(PROTOCOL_VERSION)
        )));
    }
    Ok(rest)
}

/// What a HELLO asks of the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incoming {
    cfg: VmConfig,
    /// Connections in all (1..=[`MAX_CHANNELS`]).
    channels: usize,
    session: u64,
}

fn decode_hello(b: &[u8]) -> Result<Incoming, MigError> {
    let h: Hello = decode(Kind::Hello, check_greeting(b)?)?;
    let channels = usize::from(h.channels);
    if !(1..=MAX_CHANNELS).contains(&channels) {
        return Err(MigError(format!(
            "the source asks for {channels} connections; this destination takes 1 to {MAX_CHANNELS}"
        )));
    }
    let w = h.profile;
    let base = PROFILES
        .get(usize::from(w.code))
        .ok_or_else(|| MigError(format!("unknown workload code {}", w.code)))?;
    let cfg = VmConfig {
        ram: h.ram,
        aperture: h.aperture,
        hidden: h.hidden,
        frames: h.frames,
        seed: h.seed,
        profile: Profile {
            name: base.name,
            rt_pages: w.rt_pages,
            fill_pages: w.fill_pages,
            stores: w.stores,
            hot_pages: w.hot_pages,
            remap_every: w.remap_every,
            cpu_writes: w.cpu_writes,
            repeat_every: w.repeat_every,
            mirror: w.mirror,
            blits: w.blits,
            frame_ns: w.frame_ns,
        },
    };
    if cfg.ram > 64 << 30 || cfg.aperture > 4 << 30 || cfg.hidden > 4 << 30 {
        return Err(MigError("VM configuration out of range".into()));
    }
    Ok(Incoming {
        cfg,
        channels,
        session: h.session,
    })
}

/// `JOIN` (after the greeting): the first message of every extra page connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Join {
    /// The HELLO's session.
    session: u64,
    /// This connection's index (1..channels; the main connection is 0).
    index: u8,
}

/// `CHANNEL_END`: the last message of an extra page connection, after its stop round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelEnd {
    /// Pages this connection carried, every round (zero-page markers included).
    pages: u64,
}

/// `REPORTS`: the guest's debug-port record so far, then the words of a report it has begun.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Reports {
    whole: Vec<Report>,
    /// Fewer than four words.
    partial: Vec<u32>,
}

/// The fixed header of a `PAGES` message (then `count` pages, none when `zero` is 1).
#[derive(FromBytes, IntoBytes, Immutable)]
#[repr(C)]
struct PagesHeader {
    /// The first frame.
    first: U64,
    /// Pages (consecutive frames).
    count: U32,
    /// 1: all of them are zero pages (no page bytes follow); 0: their bytes follow.
    zero: U32,
}

/// `END`: the source has sent everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct End {
    /// Wall-clock ns of the source's last guest exit.
    paused_wall_ns: u64,
}

/// Options of a source (default: the library's default policy, unlimited rate, no fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceOptions {
    /// The pre-copy policy (downtime limit, round cap).
    pub policy: PolicyConfig,
    /// Link rate, payload bytes per second (0 = unlimited), shared equally by the connections.
    pub rate: u64,
    /// Fault injection: drop the main connection after this many bytes (the cancel path).
    pub cut_after: Option<u64>,
    /// Fault injection: flip a bit of the vGPU stream at this offset (the destination rejects it).
    pub corrupt_vgpu_at: Option<u64>,
    /// Fault injection: the source cancels the migration once this many bytes were sent on the
    /// main connection, or,
    /// when the stream is shorter (real runs differ in their dirty rounds), at the end of the
    /// stop-and-copy, before END: either way the destination never commits.
    pub cancel_at: Option<u64>,
    /// Fault injection: extra page connection `.0` (1..) drops after `.1` bytes.
    pub cut_channel: Option<(usize, u64)>,
    /// Fault injection: the last extra page connection announces this index in its JOIN.
    pub join_index: Option<u8>,
}

/// One RAM pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundInfo {
    /// Round number (0 = all of RAM).
    pub round: u32,
    /// Frames KVM's log reported dirty (guest CPU writes).
    pub cpu_dirty: u64,
    /// Frames the vGPU's report added (GPU writes).
    pub gpu_dirty: u64,
    /// Pages sent (union of both), zero pages included.
    pub pages: u64,
    /// Zero pages among them.
    pub zero_pages: u64,
    /// Bytes on the wire.
    pub bytes: u64,
    /// Wall time, µs.
    pub elapsed_us: u64,
    /// Time from the migration start to the end of the round, µs.
    pub at_us: u64,
}

/// What a source saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceReport {
    /// Pre-copy rounds, then the stop round (last).
    pub rounds: Vec<RoundInfo>,
    /// Why pre-copy ended.
    pub switch: Option<String>,
    /// The policy's downtime prediction when it switched, µs.
    pub predicted_downtime_us: Option<u64>,
    /// Bytes of the vGPU's device-state stream.
    pub vgpu_bytes: u64,
    /// Bytes of the vCPU state.
    pub cpu_bytes: u64,
    /// Total bytes sent.
    pub total_bytes: u64,
    /// Wall-clock ns of the last guest exit on the source.
    pub paused_wall_ns: u64,
    /// From the pause to END sent, µs (the source's share of the downtime).
    pub stop_copy_us: u64,
    /// Whole migration, µs.
    pub total_us: u64,
    /// MMIO exits while pages streamed: waits for the device lock.
    pub mmio_wait: WaitSummary,
    /// The GPU thread's steps while pages streamed: how long each held the device lock.
    pub gpu_hold: WaitSummary,
    /// Longest the migration thread held the device lock during pre-copy (one look at the vGPU
    /// per round for the device-state size; the GPU dirty report needs no lock), µs.
    pub max_lock_hold_us: u64,
    /// Frames the guest had completed when it was paused.
    pub frames_at_pause: u64,
    /// Bytes sent on each connection: the main one (control messages and its stripes of RAM),
    /// then each extra page connection.
    pub channel_bytes: Vec<u64>,
}

/// Queues pages into `PAGES` messages: runs of consecutive frames, all zero (a marker) or all
/// with their bytes. A page is read straight into its place in the run, once: the bytes
/// classified are the bytes sent.
struct PageSender<'a, W: Write> {
    ram: &'a GuestRam,
    w: &'a mut W,
    /// Room for a whole run's bytes.
    run: Box<[u8]>,
    /// Bytes of the run so far (0 for a zero run).
    run_bytes: usize,
    run_start: u64,
    run_len: u32,
    run_zero: bool,
    pages: u64,
    zero: u64,
}

impl<'a, W: Write> PageSender<'a, W> {
    fn new(ram: &'a GuestRam, w: &'a mut W) -> Self {
        Self {
            ram,
            w,
            run: vec![0u8; PAGES_PER_MSG * 4096].into_boxed_slice(),
            run_bytes: 0,
            run_start: 0,
            run_len: 0,
            run_zero: false,
            pages: 0,
            zero: 0,
        }
    }

    /// Read frame `f` once and queue exactly those bytes (zero pages as a marker).
    fn page(&mut self, f: u64) -> Result<(), MigError> {
        let follows = self.run_len > 0
            && f == self.run_start + u64::from(self.run_len)
            && (self.run_len as usize) < PAGES_PER_MSG;
        if !follows {
            self.flush()?;
        }
        // The page's place: after the run's bytes (a zero run has none). A page that turns out
        // not to fit the run (zero after bytes, or bytes after zeros) ends it where it stands:
        // the run's bytes before it are untouched, and after a zero run the page is already
        // where the next run begins.
        let at = self.run_bytes;
        let slot = self
            .run
            .get_mut(at..at + 4096)
            .ok_or_else(|| MigError("a PAGES run overflowed".into()))?;
        self.ram
            .read_at(f * 4096, slot)
            .map_err(|_| MigError(format!("reading frame {f:#x}")))?;
        let zero = slot.iter().all(|b| *b == 0);
        if self.run_len > 0 && zero != self.run_zero {
            self.flush()?;
        }
        if self.run_len == 0 {
            self.run_start = f;
            self.run_zero = zero;
        }
        if !zero {
            self.run_bytes += 4096;
        }
        self.run_len += 1;
        self.pages += 1;
        self.zero += u64::from(zero);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MigError> {
        if self.run_len == 0 {
            return Ok(());
        }
        let h = PagesHeader {
            first: U64::new(self.run_start),
            count: U32::new(self.run_len),
            zero: U32::new(u32::from(self.run_zero)),
        };
        let bytes = self.run.get(..self.run_bytes).unwrap_or(&[]);
        send(self.w, Kind::Pages, &[h.as_bytes(), bytes])?;
        self.run_bytes = 0;
        self.run_len = 0;
        Ok(())
    }
}

/// Everything one pre-copy or stop round must send: KVM's log and the library's report of the
/// GPU's writes, each harvested (read and cleared) before any page is read. The report reads the
/// vGPU's atomic GPU dirty log: no device lock. Returns (bitmap, CPU count, GPU count).
fn harvest(
    vm: &Vm,
    session: &mut SourceSession<'_>,
    access: &DeviceAccess,
    gpu_bits: &mut [u64],
) -> Result<(Vec<u64>, u64, u64), MigError> {
    let mut bits = vm.dirty_log().take()?;
    let cpu = bits.iter().map(|w| u64::from(w.count_ones())).sum();
    gpu_bits.fill(0);
    let gpu = session
        .dirty_report(
            access,
            DmaRange {
                iova: 0,
                length: vm.cfg.ram,
            },
            4096,
            gpu_bits,
        )
        .map_err(verr("GPU dirty report"))?;
    for (b, g) in bits.iter_mut().zip(gpu_bits.iter()) {
        *b |= *g;
    }
    Ok((bits, cpu, gpu))
}

/// Words of a frame bitmap per stripe.
const STRIPE_WORDS: usize = (STRIPE_FRAMES / 64) as usize;

/// The connection frame `f` travels on, of `channels`.
fn channel_of(f: u64, channels: usize) -> usize {
    usize::try_from((f / STRIPE_FRAMES) % channels.max(1) as u64).unwrap_or(0)
}

/// Read and send the pages of `bits` whose stripes are connection `index`'s of `channels`, in
/// frame order. Returns (pages, zero pages).
fn send_stripes<W: Write>(
    ram: &GuestRam,
    w: &mut W,
    bits: &[u64],
    index: usize,
    channels: usize,
) -> Result<(u64, u64), MigError> {
    let mut s = PageSender::new(ram, w);
    let mut res = Ok(());
    for (stripe, words) in bits
        .chunks(STRIPE_WORDS)
        .enumerate()
        .skip(index)
        .step_by(channels.max(1))
    {
        let base = (stripe as u64) * STRIPE_FRAMES;
        for_each_bit(words, |f| {
            if res.is_ok() {
                res = s.page(base + f);
            }
        });
        if res.is_err() {
            break;
        }
    }
    res?;
    s.flush()?;
    Ok((s.pages, s.zero))
}

/// An extra page connection of the source.
struct Channel<C: Write> {
    w: Cut<Link<C>>,
    /// Its index (1..): the main connection is 0.
    index: usize,
    /// Pages sent on it so far, every round.
    pages: u64,
}

/// One RAM pass over every connection: connection 0's stripes on `main` by this thread, each
/// extra connection's by its own thread, reading and sending at once. After the stop round
/// (`last`) each extra connection ends with its page count. Returns (pages, zero pages).
fn send_round<W: Write, C: Write + Send>(
    ram: &GuestRam,
    main: &mut W,
    extra: &mut [Channel<C>],
    bits: &[u64],
    last: bool,
) -> Result<(u64, u64), MigError> {
    let n = extra.len() + 1;
    std::thread::scope(|sc| {
        let handles: Vec<_> = extra
            .iter_mut()
            .map(|ch| {
                sc.spawn(move || {
                    let run = |ch: &mut Channel<C>| {
                        let (pages, zero) = send_stripes(ram, &mut ch.w, bits, ch.index, n)?;
                        ch.pages += pages;
                        if last {
                            send_msg(&mut ch.w, Kind::ChannelEnd, &ChannelEnd { pages: ch.pages })?;
                        }
                        ch.w.flush()?;
                        Ok::<_, MigError>((pages, zero))
                    };
                    run(ch).map_err(|e| MigError(format!("page connection {}: {e}", ch.index)))
                })
            })
            .collect();
        let mut total = send_stripes(ram, main, bits, 0, n);
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(MigError("a page connection's thread panicked".into())));
            total = match (total, r) {
                (Ok((p, z)), Ok((q, y))) => Ok((p + q, z + y)),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
        }
        total
    })
}

/// Migrate a running VM to the destination at the other end of `r`/`w`. On success the source
/// VM is stopped for good (its vGPU in STOP); on any failure before the destination's ACK the
/// migration is cancelled: the vGPU resumes, the vCPU runs again, and the error is returned.
pub fn migrate_source<R: Read, W: Write>(
    vm: &mut Vm,
    r: &mut R,
    w: W,
    opts: SourceOptions,
) -> Result<SourceReport, MigError> {
    migrate_source_with(vm, r, w, opts, &mut |_| {})
}

/// [`migrate_source`], calling `on_round` after each RAM pass (progress display).
pub fn migrate_source_with<R: Read, W: Write>(
    vm: &mut Vm,
    r: &mut R,
    w: W,
    opts: SourceOptions,
    on_round: &mut dyn FnMut(&RoundInfo),
) -> Result<SourceReport, MigError> {
    migrate_source_channels(vm, r, w, Vec::<io::Sink>::new(), opts, on_round)
}

/// [`migrate_source_with`] over `1 + extra.len()` connections (at most [`MAX_CHANNELS`]): guest
/// RAM is striped by frame over the main connection `r`/`w` and the `extra` page connections
/// (each opened by the caller after the main one, to the same destination), each connection's
/// pages read and sent by its own thread; the control messages, the vGPU's device state and the
/// vCPU state stay on the main connection. The link rate is shared: each connection gets
/// `opts.rate / connections`. Any connection's failure cancels the migration as
/// [`migrate_source`] does.
pub fn migrate_source_channels<R: Read, W: Write, C: Write + Send>(
    vm: &mut Vm,
    r: &mut R,
    w: W,
    extra: Vec<C>,
    opts: SourceOptions,
    on_round: &mut dyn FnMut(&RoundInfo),
) -> Result<SourceReport, MigError> {
    let n = extra.len() + 1;
    if n > MAX_CHANNELS {
        return Err(MigError(format!(
            "{n} connections asked for; at most {MAX_CHANNELS}"
        )));
    }
    let rate = opts.rate / n as u64;
    let mut extra: Vec<Channel<C>> = extra
        .into_iter()
        .enumerate()
        .map(|(i, c)| Channel {
            w: Cut {
                inner: Link::new(c, rate),
                left: opts.cut_channel.filter(|x| x.0 == i + 1).map(|x| x.1),
            },
            index: i + 1,
            pages: 0,
        })
        .collect();
    let frames = usize::try_from(vm.ram.frames()).map_err(|_| MigError("RAM size".into()))?;
    let mut send_bits = vec![0u64; words_for(frames)];
    let mut scratch = vec![0u8; 256 * 1024];
    let mut cfg = SourceConfig::default();
    cfg.memory = MemoryMode::Report;
    cfg.policy = opts.policy;
    let session = {
        let mut d = lock(&vm.device);
        SourceSession::open(&mut d.vgpu, &mut (), cfg, &mut send_bits, &mut scratch)
            .map_err(verr("opening the source session"))?
    };
    let mut w = Cut {
        inner: Link::new(w, rate),
        left: match (opts.cut_after, opts.cancel_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    };
    let mut session = Some(session);
    let out = run_source(vm, r, &mut w, &mut extra, &mut session, opts, on_round);
    match out {
        Ok(rep) => {
            if let Some(s) = session.take() {
                let mut d = lock(&vm.device);
                s.complete(&mut d.vgpu).map_err(verr("completing"))?;
            }
            vm.stop_gpu();
            Ok(rep)
        }
        Err(e) => {
            // Cancel: the vGPU resumes exactly where it was, the vCPU runs again.
            if let Some(s) = session.take() {
                s.cancel(&mut lock(&vm.device).vgpu);
            }
            if !vm.running() && !vm.finished() {
                vm.start()?;
            }
            Err(e)
        }
    }
}

/// A writer that fails after `left` bytes (fault injection: a cut connection).
struct Cut<W> {
    inner: W,
    left: Option<u64>,
}

impl<W: Write> Write for Cut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.left.as_mut() {
            if *left == 0 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection cut"));
            }
            let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            let n = self.inner.write(buf.get(..n).unwrap_or(&[]))?;
            *left -= n as u64;
            return Ok(n);
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Frames the guest has rendered and checked so far (its FRAME reports).
pub fn frames_done(vm: &Vm) -> u64 {
    vm.reports()
        .iter()
        .filter(|r| r.kind == kvm_guest::abi::REPORT_FRAME)
        .count() as u64
}

fn run_source<R: Read, W: Write, C: Write + Send>(
    vm: &mut Vm,
    r: &mut R,
    w: &mut Cut<Link<W>>,
    extra: &mut [Channel<C>],
    session: &mut Option<SourceSession<'_>>,
    opts: SourceOptions,
    on_round: &mut dyn FnMut(&RoundInfo),
) -> Result<SourceReport, MigError> {
    let t0 = Instant::now();
    let s = session
        .as_mut()
        .ok_or_else(|| MigError("no session".into()))?;
    let mut rep = SourceReport::default();
    vm.shared.mmio_wait.reset();
    vm.gpu_hold().reset();
    let channels = u8::try_from(extra.len() + 1).map_err(|_| MigError("connections".into()))?;
    // Ties the page connections to this migration.
    let session = wall_ns() ^ u64::from(std::process::id()).rotate_left(32);
    send_msg(w, Kind::Hello, &hello_of(&vm.cfg, channels, session)?)?;
    w.flush()?;
    let mut msg = Vec::new();
    answer(r, &mut msg).map_err(|e| MigError(format!("HELLO: {e}")))?;
    let last = extra.len();
    for ch in extra.iter_mut() {
        let index = match opts.join_index {
            Some(i) if ch.index == last => i,
            _ => u8::try_from(ch.index).map_err(|_| MigError("connections".into()))?,
        };
        let greeting = Greeting {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        };
        send_msg(&mut ch.w, Kind::Join, &(greeting, Join { session, index }))
            .and_then(|()| Ok(ch.w.flush()?))
            .map_err(|e| MigError(format!("page connection {}: {e}", ch.index)))?;
    }
    let ram = vm.ram.clone();
    let sent = |w: &Cut<Link<W>>, extra: &[Channel<C>]| {
        w.inner.sent() + extra.iter().map(|c| c.w.inner.sent()).sum::<u64>()
    };
    let mut gpu_bits = vec![0u64; words_for(usize::try_from(vm.ram.frames()).unwrap_or(0))];
    let mut policy = Policy::new(opts.policy);
    let access = DeviceAccess::new(vm.device.clone());
    // Round 0: clear KVM's log (everything goes now), then every frame.
    let _ = vm.dirty_log().take()?;
    let mut all = vec![u64::MAX; gpu_bits.len()];
    if let Some(last) = all.last_mut() {
        let rem = vm.ram.frames() % 64;
        if rem != 0 {
            *last = (1u64 << rem) - 1;
        }
    }
    let mut round = 0u32;
    let mut bits = all;
    let mut cpu = vm.ram.frames();
    let mut gpu = 0;
    loop {
        let t = Instant::now();
        let before = sent(w, extra);
        let (pages, zero) = send_round(&ram, w, extra, &bits, false)?;
        send_msg(w, Kind::Round, &round)?;
        w.flush()?;
        let info = RoundInfo {
            round,
            cpu_dirty: cpu,
            gpu_dirty: gpu,
            pages,
            zero_pages: zero,
            bytes: sent(w, extra) - before,
            elapsed_us: us(t.elapsed()),
            at_us: us(t0.elapsed()),
        };
        rep.rounds.push(info);
        on_round(&info);
        // Harvest before the next read; the policy sees what this round left dirty.
        let (next, c, g) = harvest(vm, s, &access, &mut gpu_bits)?;
        let left = next.iter().map(|x| u64::from(x.count_ones())).sum();
        // The device-state size for the policy: the one look at the vGPU a round needs.
        let mut device_state = 0;
        access.with_vgpu(&mut |v| device_state = s.stop_copy_estimate(v));
        rep.max_lock_hold_us = access.hold.summary().max_ns / 1000;
        let decision = policy.on_round(RoundStats {
            round,
            dirty_pages_left: left,
            bytes_sent: info.bytes,
            elapsed_us: info.elapsed_us.max(1),
            device_state_bytes: device_state,
        });
        round += 1;
        bits = next;
        cpu = c;
        gpu = g;
        if let Decision::StopAndCopy(reason) = decision {
            rep.predicted_downtime_us = policy.expected_downtime_us();
            rep.switch = Some(reason.to_string());
            break;
        }
    }
    // Stop: pause the vCPU, quiesce the vGPU, last harvest of both logs, stop-and-copy.
    let end = vm.pause()?;
    let t_stop = Instant::now();
    rep.mmio_wait = vm.shared.mmio_wait.summary();
    rep.gpu_hold = vm.gpu_hold().summary();
    rep.paused_wall_ns = match end {
        VcpuEnd::Paused(at) => {
            wall_ns().saturating_sub(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX))
        }
        VcpuEnd::Finished => wall_ns(),
        VcpuEnd::Crashed(why) => return Err(MigError(format!("guest failed: {why}"))),
    };
    rep.frames_at_pause = frames_done(vm);
    vm.quiesce_gpu()?;
    {
        let mut d = lock(&vm.device);
        s.stop_and_copy(&mut d.vgpu, &mut ())
            .map_err(verr("stop-and-copy"))?;
    }
    let (last, c, g) = harvest(vm, s, &access, &mut gpu_bits)?;
    for (b, l) in bits.iter_mut().zip(&last) {
        *b |= *l;
    }
    let t = Instant::now();
    let before = sent(w, extra);
    let (pages, zero) = send_round(&ram, w, extra, &bits, true)?;
    send_msg(w, Kind::Round, &round)?;
    // The vGPU's device state, through the library's stream (the vCPU is paused and the vGPU
    // quiesced: holding the lock costs nothing now).
    let mut buf = vec![0u8; 64 * 1024];
    let mut vgpu_bytes = 0u64;
    {
        let d = lock(&vm.device);
        let mem = vm.memory();
        loop {
            let now = us(t0.elapsed());
            let n = s
                .poll_output(&d.vgpu, &mem, &mut (), now, &mut buf)
                .map_err(verr("device state"))?;
            while s.poll_event().is_some() {}
            if n == 0 {
                if s.is_finished() {
                    break;
                }
                continue;
            }
            let chunk = buf.get_mut(..n).unwrap_or(&mut []);
            if let Some(at) = opts.corrupt_vgpu_at
                && (vgpu_bytes..vgpu_bytes + n as u64).contains(&at)
                && let Some(b) = chunk.get_mut(usize::try_from(at - vgpu_bytes).unwrap_or(0))
            {
                *b ^= 0x10;
            }
            vgpu_bytes += n as u64;
            send(w, Kind::Vgpu, &[chunk])?;
        }
    }
    let cpu_state = vm.save_cpu()?.encode();
    send(w, Kind::Cpu, &[&cpu_state])?;
    let reports = Reports {
        whole: vm.reports(),
        partial: vm.partial_report(),
    };
    send_msg(w, Kind::Reports, &reports)?;
    if let Some(at) = opts.cancel_at {
        return Err(MigError(format!(
            "cancelled by the source before END (the stream ended before byte {at})"
        )));
    }
    send_msg(
        w,
        Kind::End,
        &End {
            paused_wall_ns: rep.paused_wall_ns,
        },
    )?;
    w.flush()?;
    rep.stop_copy_us = us(t_stop.elapsed());
    rep.rounds.push(RoundInfo {
        round,
        cpu_dirty: c,
        gpu_dirty: g,
        pages,
        zero_pages: zero,
        bytes: sent(w, extra) - before,
        elapsed_us: us(t.elapsed()),
        at_us: us(t0.elapsed()),
    });
    rep.vgpu_bytes = vgpu_bytes;
    rep.cpu_bytes = cpu_state.len() as u64;
    answer(r, &mut msg)?;
    rep.total_bytes = sent(w, extra);
    rep.channel_bytes = std::iter::once(w.inner.sent())
        .chain(extra.iter().map(|c| c.w.inner.sent()))
        .collect();
    rep.total_us = us(t0.elapsed());
    Ok(rep)
}

/// A RAM pre-copy's first round on its own: what [`ram_round_over_loopback`] measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamRound {
    /// Pages sent (zero pages as markers).
    pub pages: u64,
    /// Bytes on the connections, framing included.
    pub bytes: u64,
    /// From the first page read to the last page written at the other end, ns.
    pub elapsed_ns: u64,
    /// Pages each connection carried.
    pub channel_pages: Vec<u64>,
}

/// Send every frame of `src` into `dst` (of the same size) as a migration's round 0 does, over
/// `channels` TCP connections on the loopback interface, unlimited: the source's page threads
/// (the same code as [`migrate_source_channels`]'s) and the destination's (as
/// [`migrate_dest_channels`]'s) in this process, no VM running. For measuring the transport's
/// page throughput; the caller checks `dst` equals `src`.
pub fn ram_round_over_loopback(
    src: &GuestRam,
    dst: &GuestRam,
    channels: usize,
) -> Result<RamRound, MigError> {
    if !(1..=MAX_CHANNELS).contains(&channels) || src.frames() != dst.frames() {
        return Err(MigError(format!(
            "{channels} connections, {} and {} frames",
            src.frames(),
            dst.frames()
        )));
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut out = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..channels {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        out.push(io::BufWriter::with_capacity(1 << 20, s));
        let (a, _) = listener.accept()?;
        conns.push(BufReader::with_capacity(1 << 20, a));
    }
    let frames = usize::try_from(src.frames()).map_err(|_| MigError("RAM size".into()))?;
    let mut bits = vec![u64::MAX; words_for(frames)];
    if let Some(last) = bits.last_mut()
        && frames % 64 != 0
    {
        *last = (1u64 << (frames % 64)) - 1;
    }
    let mut iter = out.into_iter();
    let mut main = Cut {
        inner: Link::new(
            iter.next()
                .ok_or_else(|| MigError("no connection".into()))?,
            0,
        ),
        left: None,
    };
    let mut extra: Vec<Channel<_>> = iter
        .enumerate()
        .map(|(i, c)| Channel {
            w: Cut {
                inner: Link::new(c, 0),
                left: None,
            },
            index: i + 1,
            pages: 0,
        })
        .collect();
    let shut: Vec<TcpStream> = conns
        .iter()
        .map(|c| c.get_ref().try_clone())
        .collect::<io::Result<_>>()?;
    let t = Instant::now();
    let (received, sent) = std::thread::scope(|sc| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                sc.spawn(move || receive_channel(&mut PageSink::new(dst, i, channels), conn))
            })
            .collect();
        let sent = send_round(src, &mut main, &mut extra, &bits, true).and_then(|(p, _)| {
            // The main connection's stripes end as the others do.
            let mine = p - extra.iter().map(|c| c.pages).sum::<u64>();
            send_msg(&mut main, Kind::ChannelEnd, &ChannelEnd { pages: mine })?;
            main.flush()?;
            Ok(p)
        });
        if sent.is_err() {
            // The receivers wait for nothing more.
            for s in &shut {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let received: Result<Vec<PageStats>, MigError> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(MigError("a receiving thread panicked".into())))
            })
            .collect();
        (received, sent)
    });
    let elapsed_ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let pages = sent?;
    let received = received?;
    Ok(RamRound {
        pages,
        bytes: main.inner.sent() + extra.iter().map(|c| c.w.inner.sent()).sum::<u64>(),
        elapsed_ns,
        channel_pages: received.iter().map(|s| s.pages).collect(),
    })
}

/// What a destination saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestReport {
    /// Pages written.
    pub pages: u64,
    /// vGPU stream bytes fed.
    pub vgpu_bytes: u64,
    /// Guest-visible downtime: the source's last guest exit to the destination's first guest
    /// entry (wall clock, same host), µs.
    pub downtime_us: u64,
    /// From END received to the vCPU started, µs (commit, vCPU state, ACK).
    pub resume_us: u64,
    /// From the source's last guest exit to END received here, µs (the stop-and-copy and what
    /// was still in flight on the connection).
    pub end_after_pause_us: u64,
    /// Zero pages skipped because this frame was never written (fresh RAM is zero).
    pub zero_pages_skipped: u64,
    /// Pages received on each connection (the main one first).
    pub channel_pages: Vec<u64>,
}

/// Receive a migration on `r`/`w` and return the running destination VM. On a rejected
/// stream it answers NACK and returns the error (no VM runs).
pub fn migrate_dest<R: Read, W: Write>(r: &mut R, w: &mut W) -> Result<(Vm, DestReport), MigError> {
    migrate_dest_on(r, w, Host::Destination)
}

/// [`migrate_dest`] onto a destination `host` of the caller's choice (its placement of the
/// vGPU's graphics memory). A source asking for more than one connection is refused.
pub fn migrate_dest_on<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    host: Host,
) -> Result<(Vm, DestReport), MigError> {
    migrate_dest_channels(r, w, host, &mut || {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this destination takes one connection",
        ))
    })
}

/// [`migrate_dest_on`] for a source of any number of connections (the HELLO says how many, at
/// most [`MAX_CHANNELS`]): after the HELLO, `accept` is called once for each extra page
/// connection, whose JOIN names its index. Each connection's pages are received and written by
/// its own thread; the vGPU is committed and the vCPU started only after every connection ended
/// with the page count it received. Any connection's failure answers NACK and no VM runs.
pub fn migrate_dest_channels<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    host: Host,
    accept: &mut dyn FnMut() -> io::Result<TcpStream>,
) -> Result<(Vm, DestReport), MigError> {
    let mut buf = Vec::new();
    // The answer to the HELLO comes before the VM is built: the source waits only for the
    // check of the protocol and configuration, and the build overlaps its first pages.
    let hello = match recv(r, &mut buf)? {
        Kind::Hello => decode_hello(&buf),
        k => Err(MigError(format!("expected HELLO, got {k:?}"))),
    };
    let hello = hello.inspect_err(|e| refuse(w, e))?;
    send_msg(w, Kind::Ack, &())?;
    w.flush()?;
    let conns = join_channels(&hello, accept).inspect_err(|e| refuse(w, e))?;
    let mut vm = Vm::new(hello.cfg, None, host)
        .map_err(MigError::from)
        .inspect_err(|e| refuse(w, e))?;
    match receive(&mut vm, r, &mut buf, conns) {
        Ok((mut rep, paused_wall_ns, t_end, end_wall)) => {
            send_msg(w, Kind::Ack, &())?;
            w.flush()?;
            vm.start()?;
            let (_, first_wall) = wait_first_entry(&vm);
            rep.resume_us = us(t_end.elapsed());
            rep.end_after_pause_us = end_wall.saturating_sub(paused_wall_ns) / 1000;
            rep.downtime_us = first_wall.saturating_sub(paused_wall_ns) / 1000;
            Ok((vm, rep))
        }
        Err(e) => {
            refuse(w, &e);
            Err(e)
        }
    }
}

/// Answer NACK with the reason (best effort: the connection may be gone already).
fn refuse(w: &mut impl Write, e: &MigError) {
    let _ = send_msg(w, Kind::Nack, &e.0);
    let _ = w.flush();
}

/// Wait for the destination's answer (to the HELLO, or to END): `ACK`, or `NACK` as an error
/// with its reason.
fn answer(r: &mut impl Read, msg: &mut Vec<u8>) -> Result<(), MigError> {
    match recv(r, msg)? {
        Kind::Ack => decode::<()>(Kind::Ack, msg),
        Kind::Nack => {
            let why = decode::<String>(Kind::Nack, msg).unwrap_or_else(|e| e.0);
            Err(MigError(format!("destination refused: {why}")))
        }
        k => Err(MigError(format!("unexpected {k:?} from the destination"))),
    }
}

fn wait_first_entry(vm: &Vm) -> (Instant, u64) {
    loop {
        if let Some(x) = vm.first_entry() {
            return x;
        }
        std::thread::yield_now();
    }
}

/// An extra page connection at the destination, in the order of its index.
type PageConn = BufReader<TcpStream>;

/// How long a new page connection may take to send its JOIN.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept the HELLO's extra page connections and read each one's JOIN: the same session, an
/// index in 1..channels, each index once. Returns them in index order.
fn join_channels(
    hello: &Incoming,
    accept: &mut dyn FnMut() -> io::Result<TcpStream>,
) -> Result<Vec<PageConn>, MigError> {
    let mut slots: Vec<Option<PageConn>> = (1..hello.channels).map(|_| None).collect();
    let mut buf = Vec::new();
    for n in 1..hello.channels {
        let sock = accept().map_err(|e| MigError(format!("accepting page connection {n}: {e}")))?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(JOIN_TIMEOUT))?;
        let mut conn = BufReader::with_capacity(1 << 20, sock);
        let join = match recv(&mut conn, &mut buf)? {
            Kind::Join => check_greeting(&buf).and_then(|b| decode::<Join>(Kind::Join, b)),
            k => Err(MigError(format!(
                "a page connection began with {k:?}, not JOIN"
            ))),
        }?;
        conn.get_ref().set_read_timeout(None)?;
        if join.session != hello.session {
            return Err(MigError("a page connection of another migration".into()));
        }
        let index = usize::from(join.index);
        match index.checked_sub(1).and_then(|i| slots.get_mut(i)) {
            Some(slot @ None) => *slot = Some(conn),
            Some(Some(_)) => {
                return Err(MigError(format!(
                    "two page connections announced index {index}"
                )));
            }
            None => {
                return Err(MigError(format!(
                    "a page connection announced index {index}; this migration has connections 1 to {}",
                    hello.channels - 1
                )));
            }
        }
    }
    // Every index was announced once: all slots are filled.
    Ok(slots.into_iter().flatten().collect())
}

/// Pages one connection received.
#[derive(Debug, Clone, Copy, Default)]
struct PageStats {
    pages: u64,
    zero_skipped: u64,
}

/// The pages of one connection: its frames written so far (a zero page for a frame never
/// written needs no write: fresh RAM is zero) and its counts. Frames of other connections'
/// stripes are refused: every copy of a frame must come the same way, in order.
struct PageSink<'a> {
    ram: &'a GuestRam,
    index: usize,
    channels: usize,
    written: Vec<u64>,
    stats: PageStats,
}

impl<'a> PageSink<'a> {
    fn new(ram: &'a GuestRam, index: usize, channels: usize) -> Self {
        Self {
            ram,
            index,
            channels,
            written: vec![0u64; words_for(usize::try_from(ram.frames()).unwrap_or(0))],
            stats: PageStats::default(),
        }
    }

    /// Check and write one `PAGES` payload.
    fn pages(&mut self, buf: &[u8]) -> Result<(), MigError> {
        const ZERO: [u8; 4096] = [0; 4096];
        let frames = self.ram.frames();
        let (h, data) = PagesHeader::read_from_prefix(buf)
            .map_err(|_| MigError("PAGES message shorter than its header".into()))?;
        let first = h.first.get();
        let count = u64::from(h.count.get());
        let is_zero = match h.zero.get() {
            0 => false,
            1 => true,
            z => return Err(MigError(format!("PAGES message with zero flag {z}"))),
        };
        let want = if is_zero { 0 } else { count * 4096 };
        if first.checked_add(count).is_none_or(|e| e > frames) || data.len() as u64 != want {
            return Err(MigError("PAGES message out of range".into()));
        }
        for f in first..first + count {
            if channel_of(f, self.channels) != self.index {
                return Err(MigError(format!(
                    "frame {f:#x} on connection {}, not its stripe's",
                    self.index
                )));
            }
        }
        for (i, f) in (first..first + count).enumerate() {
            let (w, bit) = (
                usize::try_from(f / 64).unwrap_or(usize::MAX),
                1u64 << (f % 64),
            );
            let seen = self.written.get(w).is_some_and(|x| x & bit != 0);
            if is_zero && !seen {
                self.stats.zero_skipped += 1;
                continue;
            }
            if let Some(x) = self.written.get_mut(w) {
                *x |= bit;
            }
            let page = if is_zero {
                &ZERO[..]
            } else {
                data.get(i * 4096..(i + 1) * 4096).unwrap_or(&[])
            };
            self.ram
                .write_at(f * 4096, page)
                .map_err(|_| MigError("writing RAM".into()))?;
        }
        self.stats.pages += count;
        Ok(())
    }
}

/// Receive one extra page connection to its end (`CHANNEL_END` with the page count it
/// received).
fn receive_channel(sink: &mut PageSink<'_>, conn: &mut PageConn) -> Result<PageStats, MigError> {
    let mut buf = Vec::new();
    loop {
        match recv(conn, &mut buf)? {
            Kind::Pages => sink.pages(&buf)?,
            Kind::ChannelEnd => {
                let end: ChannelEnd = decode(Kind::ChannelEnd, &buf)?;
                if end.pages != sink.stats.pages {
                    return Err(MigError(format!(
                        "the source sent {} pages, {} arrived",
                        end.pages, sink.stats.pages
                    )));
                }
                return Ok(sink.stats);
            }
            k => return Err(MigError(format!("unexpected {k:?}"))),
        }
    }
}

/// Receive the migration: the main connection on this thread, each extra page connection on
/// its own. A connection's failure is the migration's first error; it shuts every connection
/// down, so no side waits for the other for ever.
fn receive<R: Read>(
    vm: &mut Vm,
    r: &mut R,
    buf: &mut Vec<u8>,
    mut conns: Vec<PageConn>,
) -> Result<(DestReport, u64, Instant, u64), MigError> {
    let channels = conns.len() + 1;
    let ram = vm.ram.clone();
    let first_error: OnceLock<MigError> = OnceLock::new();
    let shut: Vec<TcpStream> = conns
        .iter()
        .map(|c| c.get_ref().try_clone())
        .collect::<io::Result<_>>()?;
    let shut_all = || {
        for s in &shut {
            let _ = s.shutdown(Shutdown::Both);
        }
    };
    std::thread::scope(|sc| {
        let mut handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                let (ram, first_error) = (&*ram, &first_error);
                sc.spawn(move || {
                    let mut sink = PageSink::new(ram, i + 1, channels);
                    receive_channel(&mut sink, conn).map_err(|e| {
                        let e = MigError(format!("page connection {}: {e}", i + 1));
                        let _ = first_error.set(e.clone());
                        // The source's writes on it fail now, and it cancels.
                        let _ = conn.get_ref().shutdown(Shutdown::Both);
                        e
                    })
                })
            })
            .collect();
        let mut joined = Vec::new();
        let mut join_all = || -> Result<Vec<PageStats>, MigError> {
            for h in handles.drain(..) {
                let s = h.join().unwrap_or_else(|_| {
                    Err(MigError("a page connection's thread panicked".into()))
                })?;
                joined.push(s);
            }
            Ok(std::mem::take(&mut joined))
        };
        let out = receive_main(vm, &ram, r, buf, channels, &mut join_all);
        match out {
            Ok(x) => Ok(x),
            Err(e) => {
                let e = first_error.get_or_init(|| e).clone();
                shut_all();
                let _ = join_all();
                Err(e)
            }
        }
    })
}

fn receive_main<R: Read>(
    vm: &mut Vm,
    ram: &GuestRam,
    r: &mut R,
    buf: &mut Vec<u8>,
    channels: usize,
    join_all: &mut dyn FnMut() -> Result<Vec<PageStats>, MigError>,
) -> Result<(DestReport, u64, Instant, u64), MigError> {
    let mut rep = DestReport::default();
    // The configuration's bound: with it, only a faulty stream can fail the restore.
    let staging_len = DestSession::staging_len(&lock(&vm.device).vgpu);
    let mut staging = vec![0u8; staging_len];
    let mut ds = {
        let mut d = lock(&vm.device);
        DestSession::open(&mut d.vgpu, &mut staging, migstream::Limits::DEFAULT)
            .map_err(verr("opening the destination session"))?
    };
    let mut mem = vm.memory();
    let mut cpu = None;
    let mut reports = Vec::new();
    let mut sink = PageSink::new(ram, 0, channels);
    let mut next_round = 0u32;
    // The page connections, once every one has ended (it carried the stop round's pages before
    // the source sent anything after them on this connection).
    let mut others: Option<Vec<PageStats>> = None;
    let paused_wall_ns = loop {
        let kind = recv(r, buf)?;
        if !matches!(kind, Kind::Pages | Kind::Round) && others.is_none() {
            others = Some(join_all()?);
        }
        match kind {
            Kind::Pages => sink.pages(buf)?,
            Kind::Round => {
                let round: u32 = decode(Kind::Round, buf)?;
                if round != next_round {
                    return Err(MigError(format!(
                        "ROUND {round} where round {next_round} was due"
                    )));
                }
                next_round = round.saturating_add(1);
            }
            Kind::Vgpu => {
                let d = lock(&vm.device);
                ds.feed(&d.vgpu, &mut mem, buf)
                    .map_err(verr("vGPU stream"))?;
                rep.vgpu_bytes += buf.len() as u64;
            }
            Kind::Cpu => cpu = Some(CpuState::decode(buf).map_err(|e| MigError(e.to_string()))?),
            Kind::Reports => {
                let r: Reports = decode(Kind::Reports, buf)?;
                // A begun report has fewer than four words (the fourth completes it).
                if r.partial.len() >= 4 {
                    return Err(MigError(format!(
                        "REPORTS message with a begun report of {} words",
                        r.partial.len()
                    )));
                }
                reports.extend(r.whole);
                vm.set_partial_report(r.partial);
            }
            Kind::End => break decode::<End>(Kind::End, buf)?.paused_wall_ns,
            k => return Err(MigError(format!("unexpected {k:?} from the source"))),
        }
    };
    let t_end = Instant::now();
    let end_wall = wall_ns();
    let others = match others {
        Some(o) => o,
        None => join_all()?,
    };
    rep.channel_pages = std::iter::once(sink.stats)
        .chain(others)
        .map(|s| {
            rep.pages += s.pages;
            rep.zero_pages_skipped += s.zero_skipped;
            s.pages
        })
        .collect();
    if !ds.is_finished() {
        return Err(MigError("the vGPU stream did not end".into()));
    }
    let cpu = cpu.ok_or_else(|| MigError("no vCPU state".into()))?;
    {
        let mut guard = lock(&vm.device);
        let d = &mut *guard;
        ds.commit(&mut d.vgpu, &mem, &mut d.host)
            .map_err(verr("committing the vGPU"))?;
        d.vgpu.start().map_err(verr("starting the vGPU"))?;
    }
    vm.load_cpu(&cpu)?;
    vm.set_reports(reports);
    Ok((rep, paused_wall_ns, t_end, end_wall))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_the_configuration() {
        for p in PROFILES {
            let cfg = VmConfig::small(p, 12, 5);
            let b = demo_wire::encode(&hello_of(&cfg, 3, 77).unwrap()).unwrap();
            assert_eq!(b.get(..8), Some(&b"KVMVGPU3"[..]));
            let want = Incoming {
                cfg,
                channels: 3,
                session: 77,
            };
            assert_eq!(decode_hello(&b).unwrap(), want);
            // Cut anywhere, or with a byte more: refused.
            for n in 0..b.len() {
                assert!(decode_hello(b.get(..n).unwrap()).is_err(), "{n} bytes");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(decode_hello(&long).is_err());
        }
    }

    /// A version-1 source (its fixed-layout hello) is answered NACK with both versions named,
    /// before any VM is built.
    #[test]
    fn a_source_of_the_previous_protocol_is_refused_at_hello() {
        let mut hello = b"KVMVGPU1".to_vec();
        for v in [64u64 << 20, 1 << 20, 8 << 20, 10, 3, 1] {
            hello.extend_from_slice(&v.to_le_bytes());
        }
        hello.resize(8 + 15 * 8, 0);
        let mut wire = Vec::new();
        send(&mut wire, Kind::Hello, &[&hello]).unwrap();
        let mut back = Vec::new();
        let err = migrate_dest(&mut &wire[..], &mut back).unwrap_err();
        let want = "the source speaks KVM VMM migration protocol version 1, this side speaks 3";
        assert_eq!(err.0, want);
        let mut msg = Vec::new();
        let e = answer(&mut &back[..], &mut msg).unwrap_err();
        assert_eq!(e.0, format!("destination refused: {want}"));
    }

    /// A version-2 source (one connection; its HELLO had no connection count) is answered NACK
    /// with both versions named, before any VM is built.
    #[test]
    fn a_source_of_the_single_connection_protocol_is_refused_at_hello() {
        #[derive(Serialize)]
        struct HelloV2 {
            ram: u64,
            aperture: u64,
            hidden: u64,
            frames: u64,
            seed: u64,
            profile: WireProfile,
        }
        let cfg = VmConfig::small(Profile::MEDIA, 4, 1);
        let (mut g, h) = hello_of(&cfg, 1, 0).unwrap();
        g.version = b'2';
        let old = HelloV2 {
            ram: h.ram,
            aperture: h.aperture,
            hidden: h.hidden,
            frames: h.frames,
            seed: h.seed,
            profile: h.profile,
        };
        let mut wire = Vec::new();
        send_msg(&mut wire, Kind::Hello, &(&g, &old)).unwrap();
        let mut back = Vec::new();
        let err = migrate_dest(&mut &wire[..], &mut back).unwrap_err();
        let want = "the source speaks KVM VMM migration protocol version 2, this side speaks 3";
        assert_eq!(err.0, want);
        let e = answer(&mut &back[..], &mut Vec::new()).unwrap_err();
        assert_eq!(e.0, format!("destination refused: {want}"));
    }

    /// A HELLO asking for no connection or for more than [`MAX_CHANNELS`] is refused; a
    /// destination that takes one connection refuses a source of two before any VM is built.
    #[test]
    fn connection_counts_out_of_range_are_refused() {
        let cfg = VmConfig::small(Profile::IDLE, 4, 1);
        for n in [0u8, 9, 255] {
            let b = demo_wire::encode(&hello_of(&cfg, n, 1).unwrap()).unwrap();
            let e = decode_hello(&b).unwrap_err();
            assert_eq!(
                e.0,
                format!("the source asks for {n} connections; this destination takes 1 to 8")
            );
        }
        let mut wire = Vec::new();
        send_msg(&mut wire, Kind::Hello, &hello_of(&cfg, 2, 1).unwrap()).unwrap();
        let mut back = Vec::new();
        let err = migrate_dest(&mut &wire[..], &mut back).unwrap_err();
        assert_eq!(
            err.0,
            "accepting page connection 1: this destination takes one connection"
        );
        let mut r = &back[..];
        answer(&mut r, &mut Vec::new()).unwrap();
        let e = answer(&mut r, &mut Vec::new()).unwrap_err();
        assert_eq!(e.0, format!("destination refused: {}", err.0));
    }

    /// A whole round over 1, 2 and 3 loopback connections: the destination's RAM equals the
    /// source's, each connection carried its stripes' pages, and the counts add up.
    #[test]
    fn a_round_over_several_connections_copies_every_frame() {
        let src = GuestRam::new(4 << 20).unwrap();
        // Distinct pages, with zero pages among them (every fifth frame, and a run of them).
        for f in 0..src.frames() {
            if f % 5 != 0 && !(500..540).contains(&f) {
                let page: Vec<u8> = (0..4096u64)
                    .map(|i| u8::try_from((f * 31 + i * 7) % 251).unwrap())
                    .collect();
                src.write_at(f * 4096, &page).unwrap();
            }
        }
        let want = src.snapshot().unwrap();
        for n in 1..=3 {
            let dst = GuestRam::new(4 << 20).unwrap();
            let r = ram_round_over_loopback(&src, &dst, n).unwrap();
            assert_eq!(r.pages, src.frames());
            assert_eq!(r.channel_pages.len(), n);
            assert_eq!(r.channel_pages.iter().sum::<u64>(), src.frames());
            // 1024 frames in stripes of 128: 8 stripes round the connections.
            let stripes = 1024 / 128;
            for (i, p) in r.channel_pages.iter().enumerate() {
                let mine = (0..stripes).filter(|s| s % n == i).count() as u64;
                assert_eq!(*p, mine * 128, "connection {i} of {n}");
            }
            assert!(dst.snapshot().unwrap() == want, "{n} connections");
        }
        assert!(ram_round_over_loopback(&src, &src, 9).is_err());
    }

    /// Stripes of 128 frames go round the connections; every frame has exactly one, and each
    /// connection's share of a full bitmap is its stripes, nothing else.
    #[test]
    fn stripes_split_a_round_by_frame() {
        assert_eq!(channel_of(0, 3), 0);
        assert_eq!(channel_of(127, 3), 0);
        assert_eq!(channel_of(128, 3), 1);
        assert_eq!(channel_of(3 * 128, 3), 0);
        assert_eq!(channel_of(1000, 1), 0);
        let ram = GuestRam::new(2 << 20).unwrap();
        ram.write_at(200 * 4096, &[7; 4096]).unwrap();
        // A frame in every stripe, and frames at the stripes' edges.
        let mut bits = vec![0u64; words_for(512)];
        for f in [0u64, 5, 127, 128, 200, 255, 256, 300, 383, 384, 511] {
            bits[usize::try_from(f / 64).unwrap()] |= 1 << (f % 64);
        }
        for n in 1..=4usize {
            let (mut total, mut zeros) = (0, 0);
            for i in 0..n {
                let mut wire = Vec::new();
                let (pages, zero) = send_stripes(&ram, &mut wire, &bits, i, n).unwrap();
                total += pages;
                zeros += zero;
                let mut sink = PageSink::new(&ram, i, n);
                let mut r = &wire[..];
                let mut buf = Vec::new();
                while !r.is_empty() {
                    assert_eq!(recv(&mut r, &mut buf).unwrap(), Kind::Pages);
                    sink.pages(&buf).unwrap();
                }
                assert_eq!(sink.stats.pages, pages);
                // Another connection's sink refuses these frames.
                if n > 1 && !wire.is_empty() {
                    let mut other = PageSink::new(&ram, (i + 1) % n, n);
                    let mut r = &wire[..];
                    recv(&mut r, &mut buf).unwrap();
                    assert!(other.pages(&buf).is_err());
                }
            }
            assert_eq!((total, zeros), (11, 10), "{n} connections");
        }
    }

    #[test]
    fn control_messages_out_of_range_are_refused() {
        let cfg = VmConfig::small(Profile::MEDIA, 4, 1);
        let (g, mut h) = hello_of(&cfg, 1, 0).unwrap();
        h.profile.code = 4;
        let e = decode_hello(&demo_wire::encode(&(&g, &h)).unwrap()).unwrap_err();
        assert_eq!(e.0, "unknown workload code 4");
        let (g, mut h) = hello_of(&cfg, 1, 0).unwrap();
        h.ram = 65 << 30;
        assert!(decode_hello(&demo_wire::encode(&(&g, &h)).unwrap()).is_err());
        let unknown = Profile {
            name: "custom",
            ..Profile::IDLE
        };
        assert!(hello_of(&VmConfig::small(unknown, 1, 1), 1, 0).is_err());
        // An answer that is neither ACK nor NACK, or an ACK with a payload.
        let mut wire = Vec::new();
        send(&mut wire, Kind::Ack, &[&[0]]).unwrap();
        send(&mut wire, Kind::End, &[]).unwrap();
        let (mut r, mut msg) = (&wire[..], Vec::new());
        assert!(answer(&mut r, &mut msg).is_err());
        assert!(answer(&mut r, &mut msg).is_err());
    }
}
