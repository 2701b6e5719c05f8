//! The source process: runs the guest, streams the migration over TCP through one rate-limited
//! [`Sender`], and prints the report.

use std::io::{self, BufRead, BufReader, IsTerminal};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sim::{GuestDriver, Machine};
use vgpu::content::ContentStorage;
use vgpu::error::VgpuError;
use vgpu::source::{GpuDirtyPrecision, SourceConfig, SourceEvent, SourceSession};

use super::report::{Outcome, Round, StopPhase};
use super::sched::Sched;
use super::wire::{self, Ack, Hello, Join, Kind, Vcpu, Verdict};
use super::{Args, START_FRAME, mib, profile, scenario};
use demo_wire::HEADER_LEN;

/// Output buffer per poll of the source session (one `DATA` message each).
const CHUNK: usize = 256 * 1024;
/// At most this many guest steps (100 µs of modeled time each) between two sends, so sending is
/// never starved when the guest falls behind the wall clock.
const MAX_STEPS_PER_LOOP: u32 = 16;
/// And at most this much wall time of guest steps between two sends.
const MAX_STEP_TIME_PER_LOOP: Duration = Duration::from_millis(2);
/// The migration fails when the destination accepts no byte for this long.
const STALL: Duration = Duration::from_secs(30);

/// How much of the stream may be in flight during pre-copy: produced by the session but not yet
/// applied by the destination (its acknowledgements). The destination applies more slowly than
/// the link carries when its machine is loaded; without a bound its backlog grows through
/// pre-copy, the policy's switch is followed by a long wait for it in which the guest keeps
/// dirtying, and the stop round carries what was dirtied. With the window the session is polled
/// only while the backlog is short, so each round's measured rate is the rate the destination
/// keeps up with (the policy decides on what it can really get), and at the switch at most about
/// [`WINDOW_TIME`] of the destination's work is left. The window is that much time at the
/// destination's measured apply rate, between two output buffers and 10 ms of the link rate.
/// Stream bytes are not the destination's work everywhere (a zero-page marker of 16 bytes stands
/// for 4 KiB to clear), so the window also closes while the oldest unacknowledged output is more
/// than [`MAX_AGE`] old. The stop-and-copy phase is not windowed: everything left goes as fast
/// as it can.
#[derive(Debug, Clone)]
struct Window {
    /// The ceiling, bytes (10 ms of the link rate; 8 MiB when unlimited).
    max: u64,
    /// The destination's apply rate, bytes per second (an average over recent samples), or 0
    /// before the first sample.
    rate: f64,
    /// The acknowledgement, time (seconds) and bytes in flight the current sample began with.
    since: (u64, f64, u64),
    /// Output not yet acknowledged: (stream offset of its end, time it was produced), oldest
    /// first.
    unacked: std::collections::VecDeque<(u64, f64)>,
}

/// The longest the oldest unacknowledged output may wait before the session is polled again,
/// seconds.
const MAX_AGE: f64 = 0.010;

/// What the window aims to leave in flight, in time of the destination's work.
const WINDOW_TIME: f64 = 0.005;
/// The shortest span one apply-rate sample covers, seconds.
const SAMPLE: f64 = 0.010;

impl Window {
    fn for_rate(link: u64) -> Self {
        let max = if link == 0 { 8 << 20 } else { link / 100 };
        Self {
            max: max.max(Self::MIN),
            rate: 0.0,
            since: (0, 0.0, 0),
            unacked: std::collections::VecDeque::new(),
        }
    }

    /// The floor: two output buffers, so one is applied while the next is on its way.
    const MIN: u64 = 2 * CHUNK as u64;

    /// The bound now, bytes: [`WINDOW_TIME`] at the measured apply rate (the ceiling until the
    /// first sample).
    fn limit(&self) -> u64 {
        if self.rate <= 0.0 {
            return self.max;
        }
        ((self.rate * WINDOW_TIME) as u64).clamp(Self::MIN, self.max)
    }

    /// An acknowledgement of `acked` bytes arrived at `now` (seconds on any monotonic clock),
    /// `produced` bytes having been produced. A sample counts only when the destination had
    /// work all along (at least the floor in flight when it began): an idle destination's rate
    /// says nothing about its speed.
    fn on_ack(&mut self, acked: u64, produced: u64, now: f64) {
        while self.unacked.front().is_some_and(|&(end, _)| end <= acked) {
            self.unacked.pop_front();
        }
        let (a0, t0, backlog0) = self.since;
        let dt = now - t0;
        if dt < SAMPLE {
            return;
        }
        if backlog0 >= Self::MIN && acked > a0 {
            let r = (acked - a0) as f64 / dt;
            self.rate = if self.rate <= 0.0 {
                r
            } else {
                0.5 * self.rate + 0.5 * r
            };
        }
        self.since = (acked, now, Self::in_flight(produced, acked));
    }

    /// Bytes produced minus bytes acknowledged (an acknowledgement beyond what was sent, from a
    /// faulty peer, counts as nothing in flight rather than wrapping).
    fn in_flight(produced: u64, acked: u64) -> u64 {
        produced.saturating_sub(acked)
    }

    /// Output up to stream offset `end` was produced at `now`.
    fn produced(&mut self, end: u64, now: f64) {
        self.unacked.push_back((end, now));
    }

    /// Whether the session may be polled for more output at `now`.
    fn open(&self, produced: u64, acked: u64, now: f64) -> bool {
        Self::in_flight(produced, acked) < self.limit()
            && self.unacked.front().is_none_or(|&(_, t)| now - t < MAX_AGE)
    }
}

/// A connection as its writer thread ([`Sender`]) drives it: a non-blocking socket behind a token
/// bucket that applies `--link` (unlimited when the rate is 0). Messages are queued whole and
/// written as the socket and the bucket allow.
struct Link {
    sock: TcpStream,
    pending: Vec<u8>,
    off: usize,
    rate: u64,
    tokens: f64,
    cap: f64,
    last: Instant,
    last_progress: Instant,
    /// Bytes written to the socket, framing included.
    pub(super) sent: u64,
    /// Since when, and why, the sender has been unable to write (`true`: the socket was full;
    /// `false`: the rate limit).
    blocked: Option<(Instant, bool)>,
    /// Time blocked by the rate limit, then by a full socket (the receiver not reading), ended
    /// by a write.
    pub(super) waited: (Duration, Duration),
    /// Time in the socket's write calls (the kernel's copy, and on loopback its delivery).
    writing: Duration,
}

/// What one [`Link::pump`] did.
enum Pump {
    /// Nothing queued.
    Idle,
    /// Some bytes went out.
    Wrote,
    /// The socket or the bucket is full: try again after about this long.
    Wait(Duration),
}

impl Link {
    fn new(sock: TcpStream, rate: u64) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        // Bursts of 5 ms of the rate, at least 64 KiB.
        let cap = (rate as f64 / 200.0).max(65536.0);
        Ok(Self {
            sock,
            pending: Vec::with_capacity(CHUNK + 16),
            off: 0,
            rate,
            tokens: cap,
            cap,
            last: Instant::now(),
            last_progress: Instant::now(),
            sent: 0,
            blocked: None,
            waited: (Duration::ZERO, Duration::ZERO),
            writing: Duration::ZERO,
        })
    }

    /// Whether everything queued has been written.
    fn idle(&self) -> bool {
        self.off >= self.pending.len()
    }

    /// Write what the socket and the bucket allow.
    fn pump(&mut self) -> io::Result<Pump> {
        if self.idle() {
            return Ok(Pump::Idle);
        }
        let mut want = self.pending.len() - self.off;
        if self.rate > 0 {
            let now = Instant::now();
            self.tokens = (self.tokens
                + now.duration_since(self.last).as_secs_f64() * self.rate as f64)
                .min(self.cap);
            self.last = now;
            let need = want.min(16 * 1024) as f64;
            if self.tokens < need {
                let s = (need - self.tokens) / self.rate as f64;
                self.blocked.get_or_insert((now, false));
                return Ok(Pump::Wait(Duration::from_secs_f64(s)));
            }
            want = want.min(self.tokens as usize);
        }
        let began = Instant::now();
        let wrote = io::Write::write(&mut self.sock, &self.pending[self.off..self.off + want]);
        self.writing += began.elapsed();
        match wrote {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.off += n;
                self.sent += n as u64;
                self.tokens -= n as f64;
                self.last_progress = Instant::now();
                if let Some((t, socket)) = self.blocked.take() {
                    let d = self.last_progress.saturating_duration_since(t);
                    if socket {
                        self.waited.1 += d;
                    } else {
                        self.waited.0 += d;
                    }
                }
                Ok(Pump::Wrote)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.blocked.get_or_insert((Instant::now(), true));
                if self.last_progress.elapsed() > STALL {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the destination accepted nothing for 30 s",
                    ));
                }
                Ok(Pump::Wait(Duration::from_micros(200)))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Pump::Wrote),
            Err(e) => Err(e),
        }
    }

    /// Write everything queued, waiting as needed, until written or `stop` is set.
    fn flush(&mut self, stop: &AtomicBool) -> io::Result<()> {
        loop {
            match self.pump()? {
                Pump::Idle => return Ok(()),
                Pump::Wrote => {}
                Pump::Wait(_) if stop.load(Ordering::Relaxed) => {
                    return Err(io::Error::other("the migration ended"));
                }
                // The bucket's shortfall is often a few µs: sleep a little longer (the bucket
                // holds 5 ms of the rate, so nothing is lost) rather than wake for each 16 KiB.
                Pump::Wait(d) => std::thread::sleep(d.clamp(WAKE_MIN, WAKE_MAX)),
            }
        }
    }

    /// The socket back, blocking.
    fn into_inner(self) -> io::Result<TcpStream> {
        self.sock.set_nonblocking(false)?;
        Ok(self.sock)
    }
}

/// Shortest and longest sleep of a writer thread waiting for its socket or the bucket.
const WAKE_MIN: Duration = Duration::from_micros(50);
const WAKE_MAX: Duration = Duration::from_millis(2);

/// Messages a [`Sender`] takes before it says it is busy: one being written while the next ones
/// wait, so the session encodes the next message while the thread writes this one. 32 output
/// buffers are 8 MiB, 7 ms of 10 GbE: on a loaded machine the migration loop's thread may wait
/// that long to run again after a sleep, and the socket should not run dry meanwhile. (During
/// pre-copy the window, not this, bounds what is in flight.)
const DEPTH: usize = 32;

/// The one place page traffic leaves the source: one connection, written by a thread of its own
/// through a [`Link`] (the non-blocking socket behind the `--link` token bucket). The migration
/// loop queues whole messages and goes on (running the guest, encoding the next message on its
/// own thread), so encoding and the socket writes (the kernel's copy) overlap instead of taking
/// turns; before, with content tracking on, the stop round's encoding and writing added up to
/// more than the link's time.
pub(super) struct Sender {
    /// Framed messages to the thread (`None` once closed).
    tx: Option<mpsc::Sender<Vec<u8>>>,
    /// Buffers back from the thread, for reuse.
    free: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<Link>>,
    /// A buffer a poll left empty, for the next one.
    spare: Option<Vec<u8>>,
}

/// What a [`Sender`] and its thread share.
#[derive(Default)]
struct Shared {
    /// Messages queued and not yet written whole.
    queued: AtomicUsize,
    /// Bytes written to the socket, framing included.
    sent: AtomicU64,
    /// Time blocked by the rate limit, then by a full socket, then in write calls, ns.
    waited: (AtomicU64, AtomicU64, AtomicU64),
    /// The thread is to give up waiting (the migration ended).
    stop: AtomicBool,
    /// The write that failed the connection.
    error: Mutex<Option<io::Error>>,
    /// The thread's scheduler statistics file (Linux), for [`Sched`].
    schedstat: Mutex<Option<std::path::PathBuf>>,
}

impl Sender {
    fn new(sock: TcpStream, rate: u64) -> io::Result<Self> {
        let mut link = Link::new(sock, rate)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (back, free) = mpsc::channel();
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("migrate-send".into())
            .spawn(move || {
                if let Ok(mut p) = sh.schedstat.lock() {
                    *p = Sched::this_thread_path();
                }
                for msg in rx {
                    link.pending = msg;
                    link.off = 0;
                    let r = link.flush(&sh.stop);
                    sh.sent.store(link.sent, Ordering::Relaxed);
                    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                    sh.waited.0.store(ns(link.waited.0), Ordering::Relaxed);
                    sh.waited.1.store(ns(link.waited.1), Ordering::Relaxed);
                    sh.waited.2.store(ns(link.writing), Ordering::Relaxed);
                    if let Err(e) = r {
                        if let Ok(mut slot) = sh.error.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    let _ = back.send(std::mem::take(&mut link.pending));
                    sh.queued.fetch_sub(1, Ordering::Release);
                }
                link
            })?;
        Ok(Self {
            tx: Some(tx),
            free,
            shared,
            thread: Some(thread),
            spare: None,
        })
    }

    /// The write error that ended the connection, if one did.
    fn failed(&self) -> io::Result<()> {
        match self.shared.error.lock() {
            Ok(mut e) => e.take().map_or(Ok(()), Err),
            Err(_) => Err(io::Error::other("a sender thread panicked")),
        }
    }

    /// Whether the connection takes another message now (fewer than [`DEPTH`] wait).
    fn idle(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) < DEPTH
    }

    /// Queue one message (always taken: [`Self::idle`] is the caller's bound).
    fn queue(&mut self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&wire::header(kind, payload.len())?);
        buf.extend_from_slice(payload);
        self.send(buf)
    }

    /// An output buffer for one poll of the session: [`HEADER_LEN`] bytes of room for the
    /// framing, then [`CHUNK`] bytes (one written before, when there is one), so the session
    /// encodes straight into the message the thread writes ([`Self::queue_framed`]): no copy of
    /// the stream on the migration thread.
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self
            .spare
            .take()
            .or_else(|| self.free.try_recv().ok())
            .unwrap_or_default();
        b.resize(HEADER_LEN + CHUNK, 0);
        b
    }

    /// Queue the `n` bytes after the framing room of `buf` (from [`Self::buffer`]) as one
    /// message of `kind`; with `n` 0 nothing is queued and the buffer is kept for the next poll.
    fn queue_framed(&mut self, kind: Kind, mut buf: Vec<u8>, n: usize) -> io::Result<()> {
        if n == 0 {
            self.spare = Some(buf);
            return Ok(());
        }
        buf.truncate(HEADER_LEN + n);
        if let Some(h) = buf.get_mut(..HEADER_LEN) {
            h.copy_from_slice(&wire::header(kind, n)?);
        }
        self.send(buf)
    }

    /// Hand one framed message to the thread.
    fn send(&mut self, buf: Vec<u8>) -> io::Result<()> {
        self.failed()?;
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let sent = self.tx.as_ref().map(|tx| tx.send(buf));
        if !matches!(sent, Some(Ok(()))) {
            self.failed()?;
            return Err(io::Error::other("the sender thread ended"));
        }
        Ok(())
    }

    /// Where the connection stands: [`Pump::Idle`] when everything queued is written,
    /// [`Pump::Wait`] while the thread writes (an error when a write failed).
    fn pump(&mut self) -> io::Result<Pump> {
        self.failed()?;
        Ok(if self.shared.queued.load(Ordering::Acquire) == 0 {
            Pump::Idle
        } else {
            Pump::Wait(Duration::from_micros(200))
        })
    }

    /// Wait until everything queued is written.
    fn flush(&mut self) -> io::Result<()> {
        while let Pump::Wait(d) = self.pump()? {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                self.failed()?;
                return Err(io::Error::other("the sender thread ended"));
            }
            std::thread::sleep(d.min(WAKE_MIN));
        }
        Ok(())
    }

    /// The writer thread's scheduler statistics so far.
    fn sched(&self) -> Sched {
        self.shared
            .schedstat
            .lock()
            .ok()
            .and_then(|p| p.as_deref().map(Sched::read))
            .unwrap_or_default()
    }

    /// Bytes written to the socket, framing included.
    pub(super) fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Time the thread was held by the rate limit, then by a full socket, then in write calls.
    pub(super) fn waited(&self) -> [Duration; 3] {
        let (a, b, c) = &self.shared.waited;
        [a, b, c].map(|x| Duration::from_nanos(x.load(Ordering::Relaxed)))
    }

    /// End the thread (after what is queued is written) and take the socket back, blocking.
    fn into_inner(mut self) -> io::Result<TcpStream> {
        self.tx = None;
        let link = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("no sender thread"))?
            .join()
            .map_err(|_| io::Error::other("a sender thread panicked"))?;
        self.failed()?;
        link.into_inner()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The senders' waits for the link and for a full socket and their time in write calls, summed.
fn total_waited(senders: &[Sender]) -> [Duration; 3] {
    senders
        .iter()
        .map(Sender::waited)
        .fold([Duration::ZERO; 3], |a, w| {
            [a[0] + w[0], a[1] + w[1], a[2] + w[2]]
        })
}

/// The scheduler statistics of the calling (migration) thread and of every sender thread,
/// summed.
fn source_sched(senders: &[Sender]) -> Sched {
    senders
        .iter()
        .map(Sender::sched)
        .fold(Sched::this_thread(), Sched::add)
}

/// The destination child process, killed if the source gives up before it exits.
pub(super) struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `migrate --listen 127.0.0.1:0` (with `extra` arguments) as a child and read the port it
/// bound.
pub(super) fn spawn_destination(extra: &[&str]) -> crate::Result<(ChildGuard, String)> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let mut child = Command::new(exe)
        .args(["migrate", "--listen", "127.0.0.1:0", "--child"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the destination process: {e}"))?;
    let out = child.stdout.take();
    let mut guard = ChildGuard(Some(child));
    let mut line = String::new();
    if let Some(out) = out {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("reading the destination's port: {e}"))?;
    }
    let port: u16 = line.trim().parse().map_err(|_| {
        let status = guard.0.as_mut().and_then(|c| c.wait().ok());
        format!("the destination process did not report a port (exit: {status:?})")
    })?;
    Ok((guard, format!("127.0.0.1:{port}")))
}

/// Why streaming stopped early.
enum Fail {
    /// The connection failed.
    Io(io::Error),
    /// The library refused (a local error).
    Lib(VgpuError),
    /// The destination sent an error or something unexpected.
    Peer(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<VgpuError> for Fail {
    fn from(e: VgpuError) -> Self {
        Self::Lib(e)
    }
}

/// The live display: an `indicatif` spinner line on a terminal, plain lines otherwise, nothing
/// with `--json`.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last: Instant,
    last_sent: u64,
    rate: f64,
}

impl Progress {
    pub(super) fn new(json: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        let bar = (!json && tty).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Self {
            bar,
            plain: !json && !tty,
            last: Instant::now(),
            last_sent: 0,
            rate: 0.0,
        }
    }

    /// A line above the display (or a plain line).
    pub(super) fn line(&self, s: &str) {
        if let Some(b) = &self.bar {
            b.println(s);
        } else if self.plain {
            println!("{s}");
        }
    }

    /// Refresh the display (at most ten times a second).
    fn update(&mut self, round: u32, sent: u64, dirty: u64, estimate: u64) {
        let dt = self.last.elapsed().as_secs_f64();
        if dt < 0.1 || self.bar.is_none() {
            return;
        }
        let r = (sent - self.last_sent) as f64 / dt;
        self.rate = if self.rate == 0.0 {
            r
        } else {
            0.5 * self.rate + 0.5 * r
        };
        self.last = Instant::now();
        self.last_sent = sent;
        let expected = if self.rate > 0.0 {
            format!("{:.0} ms", estimate as f64 / self.rate * 1000.0)
        } else {
            "-".into()
        };
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "round {round} | {} sent | {dirty} pages to send | {:.2} GB/s | downtime if stopped now {expected}",
                mib(sent),
                self.rate / 1e9
            ));
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Run the source (and, unless `--connect`, the destination as a child).
pub(super) fn run(args: &Args) -> crate::Result {
    let rate = args.link;
    let prof = profile(&args.workload);
    let workload = [sim::Profile::IDLE, sim::Profile::TWO_D]
        .iter()
        .chain(&[sim::Profile::MEDIA, sim::Profile::THREE_D])
        .position(|p| p.name == prof.name)
        .unwrap_or(3) as u8;
    let gm_bytes = if args.quick { 5 << 19 } else { args.gm << 20 };
    let frames = args.frames.unwrap_or_else(|| {
        let fps = 1_000_000_000u64.checked_div(prof.frame_ns).unwrap_or(60);
        let migrate_s = 2.0 * gm_bytes as f64 / rate.unwrap_or(1_000_000_000) as f64 + 1.0;
        START_FRAME + (migrate_s * fps as f64).ceil() as u64
    });
    let hello = Hello {
        workload,
        quick: args.quick,
        gm_mib: args.gm,
        frames: if args.quick { frames.min(60) } else { frames },
        seed: args.seed,
        channels: args.channels,
    };
    let sc = scenario(&hello)?;
    let t_all = Instant::now();
    let (mut child, addr) = match &args.connect {
        Some(a) => (ChildGuard(None), a.clone()),
        None => spawn_destination(&["--guest", "model"])?,
    };
    let sock = TcpStream::connect(&addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut inbox = wire::Inbox::new(sock.try_clone().map_err(|e| e.to_string())?);
    let mut sock_w = sock.try_clone().map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    wire::send(&mut sock_w, Kind::Hello, &hello.encode()?)
        .map_err(|e| format!("sending the hello: {e}"))?;
    match inbox.recv(&mut buf)? {
        Kind::Ready => {}
        Kind::Error => {
            return Err(format!(
                "the destination refused: {}",
                wire::error_text(&buf)
            ));
        }
        k => return Err(format!("unexpected {k:?} from the destination")),
    }
    // Channels 1.. each get their own connection, announced by a JOIN message.
    let mut extra = Vec::new();
    for c in 1..args.channels {
        let mut sk =
            TcpStream::connect(&addr).map_err(|e| format!("connecting channel {c}: {e}"))?;
        let _ = sk.set_nodelay(true);
        wire::send_msg(&mut sk, Kind::Join, &Join { channel: c })
            .map_err(|e| format!("joining channel {c}: {e}"))?;
        extra.push(sk);
    }
    let (aperture, hidden) = (
        sc.config.partition.aperture.size(),
        sc.config.partition.hidden.size(),
    );
    if !args.json {
        println!(
            "vGPU: {} KiB aperture + {} KiB hidden, guest memory {} KiB; destination at {addr} ({})",
            aperture >> 10,
            hidden >> 10,
            (sc.map.frames() * 4096) >> 10,
            if args.connect.is_some() {
                "remote"
            } else {
                "child process"
            }
        );
        println!(
            "workload {} ({} frames, seed {}), {} channel{}, link {}, downtime limit {} ms, GPU dirty tracking {}, content tracking {}",
            sc.profile.name,
            sc.frames,
            sc.seed,
            args.channels,
            if args.channels == 1 { "" } else { "s" },
            rate.map_or("unlimited (loopback TCP)".to_string(), |r| format!(
                "{:.3} GB/s (rate limit on the sender)",
                r as f64 / 1e9
            )),
            args.downtime_ms,
            args.precision,
            args.content
        );
        if let Some(note) = super::fitted_note(&prof, &sc.profile, hidden).filter(|_| !args.quick) {
            println!("{note}");
        }
    }

    let mut st = sc.storage();
    let mut src = sc.machine(&mut st, false).map_err(|e| e.to_string())?;
    src.boot().map_err(|e| e.to_string())?;
    // Warm-up, not paced: the workload is well under way before the migration starts.
    while src.driver.frames_submitted() < START_FRAME.min(sc.frames / 4) {
        src.step().map_err(|e| e.to_string())?;
    }
    let start_frame = src.driver.frames_submitted();
    if !args.json {
        println!("migrating at frame {start_frame} ...");
    }

    let mut cfg = SourceConfig::default();
    cfg.policy.downtime_limit_ms = args.downtime_ms;
    cfg.policy.max_rounds = 30;
    cfg.channels = u16::from(args.channels);
    cfg.precision = match args.precision.as_str() {
        "mapped" => GpuDirtyPrecision::AllMapped,
        "active" => GpuDirtyPrecision::MappedIfActive,
        _ => GpuDirtyPrecision::Exact,
    };
    let frames_n = usize::try_from(src.vgpu.memory_map().frames()).map_err(|e| e.to_string())?;
    let mut send_bits = vec![0u64; gmem::words_for(frames_n)];
    let mut scratch = vec![0u8; 256 * 1024 * usize::from(args.channels)];
    let mut s = SourceSession::open(
        &mut src.vgpu,
        &mut src.cpu_log,
        cfg,
        &mut send_bits,
        &mut scratch,
    )
    .map_err(|e| format!("opening the source session: {e}"))?;
    // A 64 MiB cache of last-sent pages for deltas (QEMU's XBZRLE cache default).
    let cache_pages = if args.content == "on" { 16384 } else { 0 };
    let mut hashes = vec![0u64; frames_n];
    let mut dup_slots = vec![0u64; frames_n];
    let mut delta_pages = vec![0u8; cache_pages * 4096];
    let mut delta_tags = vec![0u64; cache_pages];
    if cache_pages > 0 {
        let storage = ContentStorage {
            hashes: &mut hashes,
            dup_slots: &mut dup_slots,
            delta_pages: &mut delta_pages,
            delta_tags: &mut delta_tags,
        };
        s.attach_content(&src.vgpu, storage)
            .map_err(|e| format!("content tracking: {e}"))?;
    }
    // The GGTT goes first; after the stop only the entries that changed.
    let mut ggtt_sent = vec![0u64; src.vgpu.config().ggtt_storage_len()];
    s.attach_ggtt_precopy(&src.vgpu, &mut ggtt_sent)
        .map_err(|e| format!("GGTT pre-copy: {e}"))?;

    let progress = Progress::new(args.json);
    // The link rate is shared by the channels.
    let per_channel = rate.unwrap_or(0) / u64::from(args.channels);
    let mut senders = vec![Sender::new(sock_w, per_channel).map_err(|e| e.to_string())?];
    for sk in extra {
        senders.push(Sender::new(sk, per_channel).map_err(|e| e.to_string())?);
    }
    let mut o = Outcome::new(&sc, rate, args);
    o.start_frame = start_frame;
    o.fault_flip_byte = args.fault_flip_byte;
    let window = Window::for_rate(rate.unwrap_or(0));
    o.window_bytes = window.max;
    let mut live = Live {
        senders,
        inbox,
        o,
        progress,
        t0: Instant::now(),
        clock0: src.clock_ns,
        stop_at: None,
        switch_at: None,
        acked: 0,
        window,
        round: 0,
        phase: StopPhase::default(),
        waited_at_stop: [Duration::ZERO; 3],
        acked_at: None,
        sched_at_stop: Sched::default(),
    };
    let streamed = live.stream_out(&mut s, &mut src).and_then(|()| {
        // The vCPU state after the device state, as a VMM sends it.
        let mut driver = vec![0u8; GuestDriver::SAVED_LEN];
        let n = src
            .driver
            .save(&mut driver)
            .map_err(|e| Fail::Io(io::Error::other(e.to_string())))?;
        driver.truncate(n);
        let vcpu = wire::encode(&Vcpu {
            driver,
            clock_ns: src.clock_ns,
            stop_offset: live.o.stop_stream_offset,
        })
        .map_err(|e| Fail::Io(io::Error::other(e)))?;
        if let Some(main) = live.senders.first_mut() {
            main.queue(Kind::Vcpu, &vcpu)?;
        }
        for snd in &mut live.senders {
            snd.flush()?;
        }
        Ok(())
    });
    let Live {
        senders,
        mut inbox,
        mut o,
        progress,
        t0,
        stop_at,
        mut phase,
        waited_at_stop,
        acked,
        acked_at,
        sched_at_stop,
        ..
    } = live;
    if let Some(t) = stop_at {
        let sched = source_sched(&senders).since(sched_at_stop);
        phase.cpu_ms = sched.run_ns as f64 / 1e6;
        phase.cpu_wait_ms = sched.wait_ns as f64 / 1e6;
        phase.sent_ms = t.elapsed().as_secs_f64() * 1000.0;
        let waited = total_waited(&senders);
        let ms = |i: usize| {
            let at = |w: &[Duration; 3]| w.get(i).copied().unwrap_or_default();
            at(&waited)
                .saturating_sub(at(&waited_at_stop))
                .as_secs_f64()
                * 1000.0
        };
        phase.link_wait_ms = ms(0);
        phase.socket_wait_ms = ms(1);
        phase.write_ms = ms(2);
        if let Some(a) = acked_at.filter(|_| acked >= o.stream_bytes) {
            phase.applied_ms = a.saturating_duration_since(t).as_secs_f64() * 1000.0;
        }
        phase.bytes = o.stream_bytes.saturating_sub(o.stop_stream_offset);
        phase.pages = o.rounds.last().map_or(0, |r| r.pages);
        phase.link_floor_ms = rate.map_or(0.0, |r| phase.bytes as f64 / r as f64 * 1000.0);
    }
    progress.finish();
    o.socket_bytes = senders.iter().map(Sender::sent).sum();
    o.set_content(s.content_stats());
    if let Err(f) = streamed {
        let why = match f {
            Fail::Io(e) => {
                let peer = peer_error(&mut inbox);
                format!("connection to the destination lost ({e}){peer}")
            }
            Fail::Peer(e) => format!("the destination stopped the migration: {e}"),
            Fail::Lib(e) => format!("the source session failed: {e}"),
        };
        let before = src.driver.frames_submitted();
        s.cancel(&mut src.vgpu);
        // Show that the guest goes on: one more second of modeled time.
        let mut ran = true;
        for _ in 0..10_000 {
            if src.step().is_err() {
                ran = false;
                break;
            }
        }
        return Err(format!(
            "{why}; migration cancelled: the guest keeps running on the source ({}: frame {before} → {})",
            if ran {
                "resumed"
            } else {
                "resumed, then failed"
            },
            src.driver.frames_submitted()
        ));
    }
    for snd in senders {
        drop(snd.into_inner().map_err(|e| e.to_string())?);
    }
    // Acknowledgements of the last DATA messages may come first.
    let total = o.stream_bytes;
    let mut next = |buf: &mut Vec<u8>| loop {
        match inbox.recv(buf) {
            Ok(Kind::Ack) => {
                let fed = wire::decode::<Ack>("acknowledgement", buf).map_or(0, |a| a.fed);
                if let Some(t) = stop_at.filter(|_| fed >= total && phase.applied_ms == 0.0) {
                    phase.applied_ms = t.elapsed().as_secs_f64() * 1000.0;
                }
            }
            other => return other,
        }
    };
    match next(&mut buf) {
        Ok(Kind::Resumed) => {
            if let Some(t) = stop_at {
                o.downtime_ms = t.elapsed().as_secs_f64() * 1000.0;
            }
            o.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
            s.complete(&mut src.vgpu).map_err(|e| e.to_string())?;
        }
        other => {
            let why = match other {
                Ok(Kind::Error) => format!(
                    "the destination rejected the migration: {}",
                    wire::error_text(&buf)
                ),
                Ok(k) => format!("unexpected {k:?} from the destination"),
                Err(e) => e,
            };
            s.cancel(&mut src.vgpu);
            return Err(format!(
                "{why}; migration cancelled: the guest keeps running on the source"
            ));
        }
    }
    if !args.json {
        println!(
            "destination resumed; it finishes the workload and compares with a never-migrated run ..."
        );
    }
    let verdict: Verdict = match next(&mut buf)? {
        Kind::Verdict => wire::decode("verdict", &buf)?,
        Kind::Error => {
            return Err(format!(
                "the destination failed after resuming: {}",
                wire::error_text(&buf)
            ));
        }
        k => return Err(format!("unexpected {k:?} from the destination")),
    };
    if stop_at.is_some() {
        phase.dest = verdict.stop;
        o.stop_phase = Some(phase);
    }
    o.verified = verdict.pass;
    o.dest_frames = verdict.frames;
    o.dest_verify_ms = verdict.verify_ms;
    o.verdict = verdict.text;
    if let Some(mut c) = child.0.take() {
        let status = c.wait().map_err(|e| e.to_string())?;
        if !status.success() && o.verified {
            return Err(format!("the destination process exited with {status}"));
        }
    }
    super::report::conclude(&mut o, args, t_all)
}

/// After a failed write: the destination's `ERROR` message, if it sent one.
fn peer_error(inbox: &mut wire::Inbox) -> String {
    let _ = inbox.sock().set_nonblocking(false);
    let _ = inbox.sock().set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = Vec::new();
    // Acknowledgements may come first.
    for _ in 0..100_000 {
        match inbox.recv(&mut buf) {
            Ok(Kind::Error) => {
                return format!(": the destination said: {}", wire::error_text(&buf));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    String::new()
}

/// The state of a migration in progress on the source.
struct Live {
    /// One per channel; the first is the main connection.
    senders: Vec<Sender>,
    inbox: wire::Inbox,
    o: Outcome,
    progress: Progress,
    /// When the migration started.
    t0: Instant,
    /// The guest's modeled clock then.
    clock0: u64,
    /// When the source stopped (quiesce began).
    stop_at: Option<Instant>,
    /// When the policy asked for the stop (the stop waits for the destination to catch up).
    switch_at: Option<Instant>,
    /// Stream bytes the destination has fed to its session.
    acked: u64,
    /// The bound on what is in flight during pre-copy.
    window: Window,
    /// Round in progress.
    round: u32,
    /// The stop phase's source figures, filled from the stop.
    phase: StopPhase,
    /// The senders' waits (link, socket, write calls) when the stop began.
    waited_at_stop: [Duration; 3],
    /// When the last acknowledgement arrived.
    acked_at: Option<Instant>,
    /// The migration thread's and the sender threads' scheduler statistics at the stop.
    sched_at_stop: Sched,
}

/// Longest the stop waits for the destination to apply what it was sent.
const CATCH_UP: Duration = Duration::from_secs(2);

impl Live {
    /// Pump the session into the sender while the guest follows the wall clock, until the
    /// stream's END record is on the socket.
    fn stream_out(&mut self, s: &mut SourceSession<'_>, src: &mut Machine<'_>) -> Result<(), Fail> {
        // One output buffer per channel: each channel's pages are produced on its own thread.
        let mut msg = Vec::new();
        loop {
            while let Some(k) = self.inbox.poll(&mut msg).map_err(Fail::Peer)? {
                match k {
                    Kind::Ack => {
                        self.acked = wire::decode::<Ack>("acknowledgement", &msg)
                            .map_err(Fail::Peer)?
                            .fed;
                        self.acked_at = Some(Instant::now());
                        self.window.on_ack(
                            self.acked,
                            self.o.stream_bytes,
                            self.t0.elapsed().as_secs_f64(),
                        );
                    }
                    Kind::Error => return Err(Fail::Peer(wire::error_text(&msg))),
                    k => return Err(Fail::Peer(format!("unexpected {k:?} during the stream"))),
                }
            }
            if let Some(t) = self.switch_at.filter(|_| self.stop_at.is_none()) {
                // Stop once the destination has applied everything sent so far (or after a
                // bounded wait): its backlog would otherwise count as downtime.
                if self.acked >= self.o.stream_bytes || t.elapsed() > CATCH_UP {
                    self.o.catch_up_ms = t.elapsed().as_secs_f64() * 1000.0;
                    self.stop(s, src)?;
                }
            }
            let mut behind = false;
            if self.stop_at.is_none() {
                // The guest keeps running: its modeled clock follows the wall clock.
                let target =
                    self.clock0 + u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let (mut k, began) = (0, Instant::now());
                while src.clock_ns < target
                    && k < MAX_STEPS_PER_LOOP
                    && began.elapsed() < MAX_STEP_TIME_PER_LOOP
                {
                    src.step()?;
                    k += 1;
                }
                behind = src.clock_ns < target;
            }
            // Then send for about as long (or until the socket or the bucket says wait).
            let began = Instant::now();
            let mut wait = None;
            while began.elapsed() < MAX_STEP_TIME_PER_LOOP {
                let (mut wrote, mut waiting) = (false, None::<Duration>);
                for snd in &mut self.senders {
                    match snd.pump()? {
                        Pump::Wrote => wrote = true,
                        Pump::Wait(d) => waiting = Some(waiting.map_or(d, |w| w.min(d))),
                        Pump::Idle => {}
                    }
                }
                if wrote {
                    continue;
                }
                if s.is_finished() && waiting.is_none() {
                    return Ok(());
                }
                if !self.produce(s, src)? {
                    // Every channel waits for its socket or the bucket, or the session for the
                    // stop: nothing to produce now.
                    wait = Some(waiting.unwrap_or(Duration::from_micros(200)));
                    break;
                }
            }
            self.progress.update(
                self.round,
                self.senders.iter().map(Sender::sent).sum(),
                s.pending_pages() + src.vgpu.gpu_dirty_count() as u64,
                s.stop_copy_estimate(&src.vgpu),
            );
            if let Some(d) = wait.filter(|_| !behind) {
                // Nothing to send now and the guest is on time: wait a little.
                std::thread::sleep(d.min(Duration::from_micros(500)));
            }
        }
    }

    /// One poll of the session into each idle sender, and its events: the channels' control
    /// records on this thread, then their pages, each channel's on a thread of its own (see
    /// [`Self::pages`]). `false` when the session had nothing to give (it waits for the stop).
    fn produce(&mut self, s: &mut SourceSession<'_>, src: &mut Machine<'_>) -> Result<bool, Fail> {
        let now_us = u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        let now = self.t0.elapsed().as_secs_f64();
        if self.stop_at.is_none() && !self.window.open(self.o.stream_bytes, self.acked, now) {
            // Pre-copy, and the destination is a window behind: let it catch up first.
            return Ok(false);
        }
        let mut any = false;
        // Each channel whose connection has taken everything queued gets one poll.
        let threads = self.o.fault_flip_byte.is_none();
        for (c, snd) in self.senders.iter_mut().enumerate() {
            if !snd.idle() {
                continue;
            }
            let mut buf = snd.buffer();
            let out = buf.get_mut(HEADER_LEN..).unwrap_or_default();
            let t = Instant::now();
            let n = if threads {
                s.poll_control(c, &src.vgpu, &mut src.cpu_log, now_us, out)?
            } else {
                s.poll_output_channel(c, &src.vgpu, &src.mem, &mut src.cpu_log, now_us, out)?
            };
            if self.stop_at.is_some() {
                self.phase.encode_ms += t.elapsed().as_secs_f64() * 1000.0;
            }
            let o = &mut self.o;
            if let Some(at) = o.fault_flip_byte {
                // Fault injection (hidden option): one bit of the stream flipped on the way.
                if let Some(i) = at
                    .checked_sub(o.stream_bytes)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < n)
                    && let Some(b) = out.get_mut(i)
                {
                    *b ^= 0x10;
                }
            }
            snd.queue_framed(Kind::Data, buf, n)?;
            if n > 0 {
                o.stream_bytes += n as u64;
                self.window.produced(o.stream_bytes, now);
                any = true;
            }
        }
        if threads {
            let (n, encoding) = self.pages(s, src)?;
            if self.stop_at.is_some() {
                self.phase.encode_ms += encoding.as_secs_f64() * 1000.0;
            }
            if n > 0 {
                self.o.stream_bytes += n;
                self.window.produced(self.o.stream_bytes, now);
                any = true;
            }
        }
        let o = &mut self.o;
        while let Some(ev) = s.poll_event() {
            any = true;
            match ev {
                SourceEvent::RoundEnd {
                    round: r,
                    pages,
                    zero_pages,
                    bytes,
                    dirty_left,
                } => {
                    self.round = r + 1;
                    self.progress.line(&format!(
                        "{} {r}: {pages} pages ({zero_pages} zero), {}, {dirty_left} dirty after",
                        if self.stop_at.is_some() {
                            "final round"
                        } else {
                            "round"
                        },
                        mib(bytes)
                    ));
                    o.rounds.push(Round {
                        round: r,
                        pages,
                        zero_pages,
                        bytes,
                        dirty_left,
                        end_ms: self.t0.elapsed().as_secs_f64() * 1000.0,
                    });
                }
                SourceEvent::Switch {
                    reason,
                    predicted_downtime_us,
                } => {
                    o.switch_reason = reason.to_string();
                    o.predicted_downtime_us = predicted_downtime_us;
                    o.precopy_ms = self.t0.elapsed().as_secs_f64() * 1000.0;
                    self.switch_at = Some(Instant::now());
                    self.progress.line(&format!(
                        "policy: switch to stop-and-copy ({reason}); waiting for the destination to apply what it was sent"
                    ));
                }
                _ => {}
            }
        }
        Ok(any)
    }

    /// The pages of every channel whose connection is idle, each channel on a thread of its
    /// own: its [`PageWorker`](vgpu::source::PageWorker) reads, classifies and encodes up to one
    /// chunk, and the thread queues it and writes what its socket takes. The guest is held
    /// while the threads read its memory (it runs between these slices, on this thread). Returns
    /// the stream bytes produced and the time the workers took to produce them (summed over
    /// channels).
    fn pages(
        &mut self,
        s: &mut SourceSession<'_>,
        src: &Machine<'_>,
    ) -> Result<(u64, Duration), Fail> {
        let mem = &src.mem;
        let mut workers = s.page_workers();
        let jobs: Vec<_> = workers
            .split()
            .zip(self.senders.iter_mut())
            .filter(|(_, snd)| snd.idle())
            .collect();
        let slice = |(mut w, snd): (vgpu::source::PageWorker<'_, '_>, &mut Sender)|
         -> Result<(u64, Duration), Fail> {
            let mut buf = snd.buffer();
            let t = Instant::now();
            let n = w.poll(mem, buf.get_mut(HEADER_LEN..).unwrap_or_default())?;
            let encoding = t.elapsed();
            snd.queue_framed(Kind::Data, buf, n)?;
            Ok((n as u64, encoding))
        };
        let made: Vec<Result<(u64, Duration), Fail>> = if jobs.len() <= 1 {
            jobs.into_iter().map(slice).collect()
        } else {
            std::thread::scope(|t| {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|job| t.spawn(move || slice(job)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Fail::Io(io::Error::other("a channel thread panicked")))
                        })
                    })
                    .collect()
            })
        };
        drop(workers);
        let (mut total, mut encoding) = (0, Duration::ZERO);
        for r in made {
            let (n, d) = r?;
            total += n;
            encoding += d;
        }
        Ok((total, encoding))
    }

    /// The stop: quiesce (in-flight work drains), then stop-and-copy.
    fn stop(&mut self, s: &mut SourceSession<'_>, src: &mut Machine<'_>) -> Result<(), Fail> {
        let o = &mut self.o;
        o.stopped_at_frame = src.driver.frames_submitted();
        let wall = u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        o.guest_lag_ms = wall.saturating_sub(src.clock_ns - self.clock0) as f64 / 1e6;
        self.progress.line(&format!(
            "stopping the guest at frame {} (destination caught up after {:.0} ms)",
            o.stopped_at_frame, o.catch_up_ms
        ));
        let t = Instant::now();
        self.stop_at = Some(t);
        self.waited_at_stop = total_waited(&self.senders);
        self.sched_at_stop = source_sched(&self.senders);
        let before = src.clock_ns;
        if !src.quiesce() {
            return Err(Fail::Lib(VgpuError::NotQuiesced));
        }
        let quiesced = Instant::now();
        o.drain_modeled_us = (src.clock_ns - before) / 1000;
        o.stop_stream_offset = s.bytes_written();
        s.stop_and_copy(&mut src.vgpu, &mut src.cpu_log)?;
        self.phase.quiesce_ms = (quiesced - t).as_secs_f64() * 1000.0;
        self.phase.harvest_ms = quiesced.elapsed().as_secs_f64() * 1000.0;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn the_window_bounds_what_is_in_flight_by_the_destinations_apply_rate() {
        // 10 Gbit/s of goodput: the ceiling is about 10 ms of it, the bound until a sample.
        let mut w = Window::for_rate(1_175_000_000);
        assert_eq!(w.max, 11_750_000);
        assert_eq!(w.limit(), w.max);
        assert_eq!(Window::for_rate(1_000_000).max, Window::MIN);
        assert_eq!(Window::for_rate(0).max, 8 << 20);
        // A source producing one output buffer a step (0.1 ms) against a destination that
        // applies one buffer every fifth step (about 524 MB/s): the session is polled only
        // while less than the window is unacknowledged.
        let chunk = CHUNK as u64;
        let (mut produced, mut acked, mut most_late) = (0u64, 0u64, 0u64);
        let mut refused = 0;
        for step in 0..20_000u32 {
            let now = f64::from(step) * 1e-4;
            if w.open(produced, acked, now) {
                produced += chunk;
                w.produced(produced, now);
            } else {
                refused += 1;
            }
            assert!(Window::in_flight(produced, acked) <= w.limit().max(w.max) + chunk);
            if step > 10_000 {
                most_late = most_late.max(Window::in_flight(produced, acked));
            }
            if step % 5 == 0 {
                acked = (acked + chunk).min(produced);
                w.on_ack(acked, produced, now);
            }
        }
        assert!(refused > 0);
        // The measured rate converged on the destination's, and the window on 5 ms of it.
        let rate = chunk as f64 / 5e-4;
        assert!((w.rate - rate).abs() < rate * 0.01, "rate {}", w.rate);
        let want = (rate * WINDOW_TIME) as u64;
        assert!(w.limit().abs_diff(want) < chunk, "limit {}", w.limit());
        assert!(most_late <= want + 2 * chunk, "{most_late} in flight");
        // An idle destination (nothing in flight when the sample began) teaches nothing: once
        // the sample in progress is closed, the rate stays.
        w.on_ack(produced, produced, 10.0);
        let before = w.rate;
        w.on_ack(produced, produced, 20.0);
        w.on_ack(produced, produced, 30.0);
        assert!((w.rate - before).abs() < f64::EPSILON);
        // A slow destination shrinks the window to the floor, never below.
        let mut slow = Window::for_rate(1_175_000_000);
        slow.on_ack(0, 4 * chunk, 1.0);
        slow.on_ack(1000, 4 * chunk, 2.0);
        assert_eq!(slow.limit(), Window::MIN);
        // An acknowledgement beyond what was sent (a faulty peer) counts as nothing in flight.
        assert_eq!(Window::in_flight(5, 9), 0);
        w.on_ack(produced, produced, 40.0);
        assert!(w.open(produced, produced + 1, 40.0));
        // A destination busy for long with little output (zero-page markers stand for much
        // work): the window closes once the oldest unacknowledged output is MAX_AGE old, though
        // few bytes are in flight, and opens again when it is acknowledged.
        w.produced(produced + 100, 50.0);
        assert!(w.open(produced + 100, produced, 50.0 + MAX_AGE / 2.0));
        assert!(!w.open(produced + 100, produced, 50.0 + 2.0 * MAX_AGE));
        w.on_ack(produced + 100, produced + 100, 50.1);
        assert!(w.open(produced + 100, produced + 100, 50.1));
    }

    #[test]
    fn the_sender_delivers_every_message_in_order_under_a_rate_limit() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut all = Vec::new();
            c.read_to_end(&mut all).unwrap();
            all
        });
        let msgs: Vec<Vec<u8>> = (0..5u8)
            .map(|k| (0..100_000u32).map(|i| (i as u8) ^ k).collect())
            .collect();
        let mut s = Sender::new(TcpStream::connect(addr).unwrap(), 20_000_000).unwrap();
        for m in &msgs {
            // The thread writes while more is queued, up to the depth.
            while !s.idle() {
                assert!(matches!(s.pump().unwrap(), Pump::Wait(_)));
                std::thread::sleep(Duration::from_millis(1));
            }
            s.queue(Kind::Data, m).unwrap();
        }
        s.flush().unwrap();
        assert!(matches!(s.pump().unwrap(), Pump::Idle));
        assert_eq!(s.sent(), 5 * (100_000 + 5));
        // 500 kB at 20 MB/s (less the bucket's first burst): the rate limit held the thread.
        assert!(s.waited()[0] > Duration::ZERO);
        drop(s.into_inner().unwrap());
        let all = reader.join().unwrap();
        let mut r = &all[..];
        let mut buf = Vec::new();
        for m in &msgs {
            assert_eq!(wire::recv(&mut r, &mut buf), Ok(Kind::Data));
            assert_eq!(&buf, m);
        }
        assert!(r.is_empty());
    }
}
