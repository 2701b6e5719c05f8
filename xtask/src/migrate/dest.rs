//! The destination process: one migration in, then the workload's end and the verification.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sim::GuestDriver;
use sim::scenario::{Snapshot, host_consistent};
use vgpu::GuestMemory;
use vgpu::dest::{DestChannel, DestSession};

use super::scenario;
use super::sched::Sched;
use super::wire::{self, Ack, Hello, Join, Kind, StopVerdict, Vcpu, Verdict};

/// Listen at `addr`, take one connection, receive one migration. In child mode only the bound
/// port is printed (on stdout, for the parent); otherwise progress lines too.
pub(super) fn run(addr: &str, child: bool) -> crate::Result {
    let listener = TcpListener::bind(addr).map_err(|e| format!("listening at {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if child {
        println!("{}", local.port());
    } else {
        println!("destination: listening at {local}");
    }
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (sock, peer) = listener
        .accept()
        .map_err(|e| format!("accepting a connection: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut w = sock.try_clone().map_err(|e| e.to_string())?;
    receive(&listener, sock, child, &peer.to_string()).map_err(|e| {
        // Tell the source why, if the connection still stands; it cancels and keeps its guest.
        let _ = wire::send_msg(&mut w, Kind::Error, &e);
        format!("destination: {e}")
    })
}

/// What the channels' threads share: the main connection's writer with the bytes applied so far
/// (every channel's, for the source's acknowledgements), every connection (to end the others'
/// reads when one channel fails), and the first failure.
struct Links {
    acks: Mutex<(TcpStream, u64)>,
    socks: Vec<TcpStream>,
    failure: Mutex<Option<String>>,
    /// Every `DATA` message applied, in the order the acknowledgements counted them.
    log: Mutex<Vec<Fed>>,
    /// Each channel's thread's scheduler statistics when its stream ended.
    ended: Mutex<Vec<Sched>>,
}

/// One `DATA` message as the destination handled it (for [`StopVerdict`]).
#[derive(Debug, Clone, Copy)]
struct Fed {
    /// Its channel.
    channel: usize,
    /// Stream bytes acknowledged before it (all channels).
    fed_before: u64,
    /// When its read began.
    read_at: Instant,
    /// Time waiting for (and copying in) its bytes.
    read: Duration,
    /// Time feeding it to the session.
    apply: Duration,
    /// When it was fed.
    done_at: Instant,
    /// The channel's thread's scheduler statistics before its read began (the read of the
    /// statistics costs a few µs, while the thread waits for the next bytes anyway).
    sched: Sched,
}

/// The destination's share of the stop phase: the messages at or past stream offset `stop`,
/// and the instant the `VCPU` message was in hand.
fn stop_share(log: &[Fed], stop: u64, vcpu_at: Instant, ended: &[Sched]) -> StopVerdict {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let past: Vec<&Fed> = log.iter().filter(|f| f.fed_before >= stop).collect();
    // Each channel thread's statistics from when it began to read its first message past the
    // stop to the end of its stream, summed.
    let sched = ended
        .iter()
        .enumerate()
        .filter_map(|(c, end)| {
            let first = past.iter().find(|f| f.channel == c)?;
            Some(end.since(first.sched))
        })
        .fold(Sched::default(), Sched::add);
    let first = past.iter().map(|f| f.read_at).min();
    let last = past.iter().map(|f| f.done_at).max();
    StopVerdict {
        messages: past.len() as u64,
        read_wait_us: us(past.iter().map(|f| f.read).sum()),
        apply_us: us(past.iter().map(|f| f.apply).sum()),
        span_us: first
            .zip(last)
            .map_or(0, |(a, b)| us(b.saturating_duration_since(a))),
        vcpu_after_us: last.map_or(0, |b| us(vcpu_at.saturating_duration_since(b))),
        commit_us: 0,
        start_us: 0,
        cpu_us: sched.run_ns / 1000,
        cpu_wait_us: sched.wait_ns / 1000,
    }
}

impl Links {
    /// Channel `c`'s thread is done with its stream: keep its scheduler statistics.
    fn end_sched(&self, c: usize, now: Sched) {
        if let Ok(mut e) = self.ended.lock()
            && let Some(slot) = e.get_mut(c)
        {
            *slot = now;
        }
    }

    /// Record `e` as the migration's failure unless one came first, and wake every channel's
    /// thread (their reads end) so none waits for bytes that will not come.
    fn fail(&self, e: String) -> String {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert_with(|| e.clone());
        }
        for s in &self.socks {
            let _ = s.shutdown(Shutdown::Read);
        }
        e
    }
}

/// Read channel `h`'s connection and apply its stream on this thread, acknowledging each message
/// applied. Returns the vCPU state (the main channel's last message), or `None` for a page channel.
fn apply_channel(
    h: &mut DestChannel<'_, '_>,
    vgpu: &vgpu::Vgpu<'_>,
    mem: &mut dyn GuestMemory,
    r: &mut BufReader<TcpStream>,
    links: &Links,
) -> Result<Option<Vec<u8>>, String> {
    let c = h.channel();
    let mut buf = Vec::new();
    loop {
        let sched = Sched::this_thread();
        let read_at = Instant::now();
        match wire::recv(r, &mut buf) {
            Ok(Kind::Data) => {
                let fed_at = Instant::now();
                h.feed(vgpu, mem, &buf)
                    .map_err(|e| links.fail(format!("stream rejected: {e}")))?;
                let done_at = Instant::now();
                // Tell the source how far the stream is applied (it stops only once it is).
                let mut acks = links
                    .acks
                    .lock()
                    .map_err(|_| "acknowledgements poisoned".to_string())?;
                if let Ok(mut log) = links.log.lock() {
                    log.push(Fed {
                        channel: c,
                        fed_before: acks.1,
                        read_at,
                        sched,
                        read: fed_at - read_at,
                        apply: done_at - fed_at,
                        done_at,
                    });
                }
                acks.1 += buf.len() as u64;
                let fed = acks.1;
                wire::send_msg(&mut acks.0, Kind::Ack, &Ack { fed }).map_err(|e| links.fail(e))?;
                if c != 0 && h.is_finished() {
                    links.end_sched(c, Sched::this_thread());
                    return Ok(None);
                }
            }
            Ok(Kind::Vcpu) if c == 0 => {
                links.end_sched(c, Sched::this_thread());
                // The last message the source sends: the page channels' last bytes are at most
                // in flight, so their reads need not wait long now.
                for s in links.socks.iter().skip(1) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                }
                return Ok(Some(std::mem::take(&mut buf)));
            }
            Ok(k) => {
                return Err(
                    links.fail(format!("unexpected {k:?} on channel {c} during the stream"))
                );
            }
            // A page channel closing after its stream ended is normal.
            Err(_) if c != 0 && h.is_finished() => {
                links.end_sched(c, Sched::this_thread());
                return Ok(None);
            }
            Err(e) => return Err(links.fail(format!("channel {c}: {e}"))),
        }
    }
}

fn receive(listener: &TcpListener, sock: TcpStream, child: bool, peer: &str) -> crate::Result {
    let say = |s: &str| {
        if !child {
            println!("destination: {s}");
        }
    };
    let mut w = sock.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(1 << 20, sock);
    let mut buf = Vec::new();
    let hello = match wire::recv(&mut r, &mut buf)? {
        Kind::Hello => Hello::decode(&buf)?,
        k => return Err(format!("bad hello: {k:?} first")),
    };
    let sc = scenario(&hello)?;
    say(&format!(
        "source {peer}: workload {}, {} frames, seed {}",
        sc.profile.name, sc.frames, sc.seed
    ));
    let mut st = sc.storage();
    let mut dst = sc.machine(&mut st, true).map_err(|e| e.to_string())?;
    // The configuration's bound: with it, only a faulty stream can fail the restore.
    let staging_len = DestSession::staging_len(&dst.vgpu);
    let mut staging = vec![0u8; staging_len];
    let channels = usize::from(hello.channels);
    let mut d = DestSession::open_channels(
        &mut dst.vgpu,
        &mut staging,
        migstream::Limits::DEFAULT,
        channels,
    )
    .map_err(|e| format!("opening the destination session: {e}"))?;
    wire::send(&mut w, Kind::Ready, &[]).map_err(|e| e.to_string())?;
    let mut conns = vec![(0usize, r)];
    for _ in 1..channels {
        let (sock, _) = listener
            .accept()
            .map_err(|e| format!("accepting a channel connection: {e}"))?;
        let _ = sock.set_nodelay(true);
        let mut cr = BufReader::with_capacity(1 << 20, sock);
        let c = match wire::recv(&mut cr, &mut buf)? {
            Kind::Join => usize::from(wire::decode::<Join>("join", &buf)?.channel),
            k => return Err(format!("bad channel connection: {k:?} first")),
        };
        if !(1..channels).contains(&c) {
            return Err(format!("bad channel connection: channel {c} of {channels}"));
        }
        if conns.iter().any(|(k, _)| *k == c) {
            return Err(format!("channel {c} joined twice"));
        }
        conns.push((c, cr));
    }
    if channels > 1 {
        say(&format!("{channels} channels connected"));
    }
    // Each channel on its own thread: it reads its connection and applies its pages to its own
    // stripes of guest memory; channel 0 also stages the device state.
    conns.sort_by_key(|(c, _)| *c);
    let socks = conns
        .iter()
        .map(|(_, cr)| cr.get_ref().try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let links = Links {
        acks: Mutex::new((w.try_clone().map_err(|e| e.to_string())?, 0)),
        socks,
        failure: Mutex::new(None),
        log: Mutex::new(Vec::with_capacity(4096)),
        ended: Mutex::new(vec![Sched::default(); channels]),
    };
    let answers = {
        let (vgpu, links) = (&dst.vgpu, &links);
        let views = dst.mem.channel_views(channels);
        std::thread::scope(|s| {
            let threads: Vec<_> = d
                .channels()
                .into_iter()
                .zip(views)
                .zip(conns)
                .map(|((mut h, mut view), (_, mut cr))| {
                    s.spawn(move || apply_channel(&mut h, vgpu, &mut view, &mut cr, links))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(links.fail("a channel thread panicked".into())))
                })
                .collect::<Vec<_>>()
        })
    };
    if let Some(e) = links.failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    let mut vcpu = None;
    for a in answers {
        if let Some(v) = a? {
            vcpu = Some(v);
        }
    }
    if !d.is_finished() {
        return Err("stream rejected: a channel never ended".into());
    }
    let vcpu_at = Instant::now();
    let vcpu: Vcpu = wire::decode("vCPU state", &vcpu.unwrap_or_default())?;
    let mut stop = links
        .log
        .lock()
        .map(|log| {
            let ended = links.ended.lock().map(|e| e.clone()).unwrap_or_default();
            stop_share(&log, vcpu.stop_offset, vcpu_at, &ended)
        })
        .unwrap_or_default();
    let t_commit = Instant::now();
    d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host)
        .map_err(|e| format!("commit refused: {e}"))?;
    let t_start = Instant::now();
    let driver =
        GuestDriver::restore(&vcpu.driver).map_err(|e| format!("vCPU state rejected: {e}"))?;
    let clock = vcpu.clock_ns;
    let from_frame = driver.frames_submitted();
    dst.driver = driver;
    dst.clock_ns = clock;
    dst.vgpu
        .start()
        .map_err(|e| format!("starting the vGPU: {e}"))?;
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    stop.commit_us = us(t_start - t_commit);
    stop.start_us = us(t_start.elapsed());
    wire::send(&mut w, Kind::Resumed, &[]).map_err(|e| e.to_string())?;
    say(&format!("resumed at frame {from_frame}"));
    let t = Instant::now();
    host_consistent(&dst)
        .map_err(|i| format!("destination GGTT shadow wrong at guest index {i:#x}"))?;
    if !dst.run_to_end(u64::MAX >> 1).map_err(|e| e.to_string())? {
        return Err("the destination did not finish the workload".into());
    }
    let frames = dst.driver.frames_submitted() - from_frame;
    let got = Snapshot::of(&dst);
    drop(dst);
    let expected = sc
        .run_unmigrated()
        .map_err(|e| format!("reference run: {e}"))?;
    let verdict = expected.diff(&got);
    let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    let v = Verdict {
        pass: verdict.is_none(),
        frames,
        verify_ms: ms,
        text: verdict.clone().unwrap_or_else(|| {
            "guest memory, 2 MiB of registers, GGTT, engines, PPGTT roots, config space".into()
        }),
        kvm: None,
        stop: Some(stop),
    };
    wire::send_msg(&mut w, Kind::Verdict, &v)?;
    say(&format!(
        "verification {} ({frames} frames after resuming)",
        if verdict.is_none() {
            "PASSED"
        } else {
            "FAILED"
        }
    ));
    match verdict {
        None => Ok(()),
        Some(d) => Err(format!("verification FAILED: {d}")),
    }
}
