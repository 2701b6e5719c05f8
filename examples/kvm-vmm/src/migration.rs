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
//! Destination: build the VM from the HELLO (its vGPU's graphics memory placed elsewhere on the
//! host and split, [`Host::Destination`]: the commit rebases every GGTT entry), write pages as they come (no lock: nothing runs),
//! feed the vGPU stream to a [`DestSession`], commit (validated, atomic), load the vCPU state,
//! answer ACK, then start the vCPU exactly where it stopped. A rejected stream answers NACK; the
//! source then cancels (the vGPU resumes, the vCPU restarts) and nothing is lost.
//!
//! # Wire
//!
//! Messages are framed by [`demo_wire::Framing`] (shared with `cargo xtask migrate`'s model guest):
//! kind (`u8`, this protocol's own numbering), payload length (`u32` LE, at most
//! [`MAX_PAYLOAD`]), payload.
//!
//! The control messages are irregular and both ends are this program, so they are postcard
//! encodings of Rust types ([`demo_wire::encode`]): `HELLO` (a greeting, the magic `KVMVGPU`
//! and the protocol version as an ASCII digit, then the VM configuration), `ROUND` (the round
//! number, consecutive from 0), `REPORTS` (the guest's debug-port record so far and the words of
//! a report it has begun), `END` (wall-clock ns of the source's last guest exit), and back `ACK`
//! (empty) or `NACK` (the reason), once to the HELLO (protocol and configuration accepted; the
//! destination builds its VM while the first pages arrive) and once to END (committed). A source of another protocol version is refused at the HELLO with both
//! versions named (version 1's fixed-layout hello began `KVMVGPU1`, and reads as version 1); a
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

use std::io::{self, Read, Write};
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
use crate::memory::for_each_bit;
use crate::vm::{Report, VcpuEnd, Vm, VmConfig, VmError, wall_ns};

/// Largest message payload.
pub const MAX_PAYLOAD: usize = 8 << 20;
/// Pages per PAGES message.
const PAGES_PER_MSG: usize = 256;
/// What opens a HELLO (then [`PROTOCOL_VERSION`]).
const HELLO_MAGIC: [u8; 7] = *b"KVMVGPU";
/// This protocol's version, an ASCII digit after the magic: 2 since the control messages are
/// postcard (1 laid them out by hand).
const PROTOCOL_VERSION: u8 = b'2';

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

/// The rest of a HELLO: what the destination needs to build the same VM ([`VmConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Hello {
    ram: u64,
    aperture: u64,
    hidden: u64,
    frames: u64,
    seed: u64,
    profile: WireProfile,
}

fn hello_of(c: &VmConfig) -> Result<(Greeting, Hello), MigError> {
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

fn decode_hello(b: &[u8]) -> Result<VmConfig, MigError> {
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
    let h: Hello = decode(Kind::Hello, rest)?;
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
    Ok(cfg)
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
    /// Link rate, payload bytes per second (0 = unlimited).
    pub rate: u64,
    /// Fault injection: drop the connection after this many bytes (the cancel path).
    pub cut_after: Option<u64>,
    /// Fault injection: flip a bit of the vGPU stream at this offset (the destination rejects it).
    pub corrupt_vgpu_at: Option<u64>,
    /// Fault injection: the source cancels the migration once this many bytes were sent, or,
    /// when the stream is shorter (real runs differ in their dirty rounds), at the end of the
    /// stop-and-copy, before END: either way the destination never commits.
    pub cancel_at: Option<u64>,
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
}

struct PageSender<'a, W: Write> {
    vm: &'a Vm,
    w: &'a mut W,
    page: Box<[u8; 4096]>,
    run: Vec<u8>,
    run_start: u64,
    run_len: u32,
    run_zero: bool,
    pages: u64,
    zero: u64,
}

impl<'a, W: Write> PageSender<'a, W> {
    fn new(vm: &'a Vm, w: &'a mut W) -> Self {
        Self {
            vm,
            w,
            page: Box::new([0u8; 4096]),
            run: Vec::with_capacity(PAGES_PER_MSG * 4096),
            run_start: 0,
            run_len: 0,
            run_zero: false,
            pages: 0,
            zero: 0,
        }
    }

    /// Read frame `f` once and queue exactly those bytes (zero pages as a marker).
    fn page(&mut self, f: u64) -> Result<(), MigError> {
        self.vm
            .ram
            .read_frame(f, &mut self.page)
            .map_err(|_| MigError(format!("reading frame {f:#x}")))?;
        let zero = self.page.iter().all(|b| *b == 0);
        let contiguous = self.run_len > 0
            && f == self.run_start + u64::from(self.run_len)
            && zero == self.run_zero
            && (self.run_len as usize) < PAGES_PER_MSG;
        if !contiguous {
            self.flush()?;
            self.run_start = f;
            self.run_zero = zero;
        }
        if !zero {
            self.run.extend_from_slice(&self.page[..]);
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
        send(self.w, Kind::Pages, &[h.as_bytes(), &self.run])?;
        self.run.clear();
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

fn send_round<W: Write>(vm: &Vm, w: &mut W, bits: &[u64]) -> Result<(u64, u64), MigError> {
    let mut s = PageSender::new(vm, w);
    let mut res = Ok(());
    for_each_bit(bits, |f| {
        if res.is_ok() {
            res = s.page(f);
        }
    });
    res?;
    s.flush()?;
    Ok((s.pages, s.zero))
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
        inner: Link::new(w, opts.rate),
        left: match (opts.cut_after, opts.cancel_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    };
    let mut session = Some(session);
    let out = run_source(vm, r, &mut w, &mut session, opts, on_round);
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

fn run_source<R: Read, W: Write>(
    vm: &mut Vm,
    r: &mut R,
    w: &mut Cut<Link<W>>,
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
    send_msg(w, Kind::Hello, &hello_of(&vm.cfg)?)?;
    w.flush()?;
    let mut msg = Vec::new();
    answer(r, &mut msg).map_err(|e| MigError(format!("HELLO: {e}")))?;
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
        let before = w.inner.sent();
        let (pages, zero) = send_round(vm, w, &bits)?;
        send_msg(w, Kind::Round, &round)?;
        w.flush()?;
        let info = RoundInfo {
            round,
            cpu_dirty: cpu,
            gpu_dirty: gpu,
            pages,
            zero_pages: zero,
            bytes: w.inner.sent() - before,
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
    let before = w.inner.sent();
    let (pages, zero) = send_round(vm, w, &bits)?;
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
        bytes: w.inner.sent() - before,
        elapsed_us: us(t.elapsed()),
        at_us: us(t0.elapsed()),
    });
    rep.vgpu_bytes = vgpu_bytes;
    rep.cpu_bytes = cpu_state.len() as u64;
    answer(r, &mut msg)?;
    rep.total_bytes = w.inner.sent();
    rep.total_us = us(t0.elapsed());
    Ok(rep)
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
}

/// Receive a migration on `r`/`w` and return the running destination VM. On a rejected
/// stream it answers NACK and returns the error (no VM runs).
pub fn migrate_dest<R: Read, W: Write>(r: &mut R, w: &mut W) -> Result<(Vm, DestReport), MigError> {
    migrate_dest_on(r, w, Host::Destination)
}

/// [`migrate_dest`] onto a destination `host` of the caller's choice (its placement of the
/// vGPU's graphics memory).
pub fn migrate_dest_on<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    host: Host,
) -> Result<(Vm, DestReport), MigError> {
    let mut buf = Vec::new();
    // The answer to the HELLO comes before the VM is built: the source waits only for the
    // check of the protocol and configuration, and the build overlaps its first pages.
    let cfg = match recv(r, &mut buf)? {
        Kind::Hello => decode_hello(&buf),
        k => Err(MigError(format!("expected HELLO, got {k:?}"))),
    };
    let cfg = cfg.inspect_err(|e| refuse(w, e))?;
    send_msg(w, Kind::Ack, &())?;
    w.flush()?;
    let mut vm = Vm::new(cfg, None, host)
        .map_err(MigError::from)
        .inspect_err(|e| refuse(w, e))?;
    match receive(&mut vm, r, &mut buf) {
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

fn receive<R: Read>(
    vm: &mut Vm,
    r: &mut R,
    buf: &mut Vec<u8>,
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
    let frames = vm.ram.frames();
    let zero = vec![0u8; 4096];
    // Frames written so far: a zero page for a frame never written needs no write (fresh RAM
    // is zero).
    let mut written = vec![0u64; words_for(usize::try_from(frames).unwrap_or(0))];
    let mut next_round = 0u32;
    let paused_wall_ns = loop {
        match recv(r, buf)? {
            Kind::Pages => {
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
                if first.checked_add(count).is_none_or(|e| e > frames) || data.len() as u64 != want
                {
                    return Err(MigError("PAGES message out of range".into()));
                }
                for i in 0..count {
                    let f = first + i;
                    let (w, bit) = (
                        usize::try_from(f / 64).unwrap_or(usize::MAX),
                        1u64 << (f % 64),
                    );
                    let seen = written.get(w).is_some_and(|x| x & bit != 0);
                    if is_zero && !seen {
                        rep.zero_pages_skipped += 1;
                        continue;
                    }
                    if let Some(x) = written.get_mut(w) {
                        *x |= bit;
                    }
                    let page = if is_zero {
                        &zero[..]
                    } else {
                        let at = usize::try_from(i * 4096).unwrap_or(usize::MAX);
                        data.get(at..at + 4096).unwrap_or(&[])
                    };
                    vm.ram
                        .write_at((first + i) * 4096, page)
                        .map_err(|_| MigError("writing RAM".into()))?;
                }
                rep.pages += count;
            }
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
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_the_configuration() {
        for p in PROFILES {
            let cfg = VmConfig::small(p, 12, 5);
            let b = demo_wire::encode(&hello_of(&cfg).unwrap()).unwrap();
            assert_eq!(b.get(..8), Some(&b"KVMVGPU2"[..]));
            assert_eq!(decode_hello(&b).unwrap(), cfg);
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
        let want = "the source speaks KVM VMM migration protocol version 1, this side speaks 2";
        assert_eq!(err.0, want);
        let mut msg = Vec::new();
        let e = answer(&mut &back[..], &mut msg).unwrap_err();
        assert_eq!(e.0, format!("destination refused: {want}"));
    }

    #[test]
    fn control_messages_out_of_range_are_refused() {
        let cfg = VmConfig::small(Profile::MEDIA, 4, 1);
        let (g, mut h) = hello_of(&cfg).unwrap();
        h.profile.code = 4;
        let e = decode_hello(&demo_wire::encode(&(&g, &h)).unwrap()).unwrap_err();
        assert_eq!(e.0, "unknown workload code 4");
        let (g, mut h) = hello_of(&cfg).unwrap();
        h.ram = 65 << 30;
        assert!(decode_hello(&demo_wire::encode(&(&g, &h)).unwrap()).is_err());
        let unknown = Profile {
            name: "custom",
            ..Profile::IDLE
        };
        assert!(hello_of(&VmConfig::small(unknown, 1, 1)).is_err());
        // An answer that is neither ACK nor NACK, or an ACK with a payload.
        let mut wire = Vec::new();
        send(&mut wire, Kind::Ack, &[&[0]]).unwrap();
        send(&mut wire, Kind::End, &[]).unwrap();
        let (mut r, mut msg) = (&wire[..], Vec::new());
        assert!(answer(&mut r, &mut msg).is_err());
        assert!(answer(&mut r, &mut msg).is_err());
    }
}
