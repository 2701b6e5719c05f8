//! The destination process: one migration in, then the workload's end and the verification.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sim::GuestDriver;
use sim::scenario::{Snapshot, host_consistent};
use vgpu::dest::DestSession;

use super::scenario;
use super::wire::{self, Ack, Hello, Join, Kind, Vcpu, Verdict};

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

/// What a connection's reader thread hands over.
enum Incoming {
    /// A message on channel `.0`'s connection.
    Msg(usize, Kind, Vec<u8>),
    /// Channel `.0`'s connection ended or failed (normal once its stream ended).
    Closed(usize, String),
}

/// Read messages from `r` (channel `c`'s connection) into `tx` until `VCPU` (the last message the
/// source sends on the main connection), an error or the end of the connection.
fn reader(c: usize, mut r: BufReader<TcpStream>, tx: &mpsc::Sender<Incoming>) {
    let mut buf = Vec::new();
    loop {
        match wire::recv(&mut r, &mut buf) {
            Ok(Kind::Data) => {
                if tx
                    .send(Incoming::Msg(c, Kind::Data, std::mem::take(&mut buf)))
                    .is_err()
                {
                    return;
                }
            }
            Ok(k) => {
                let last = k == Kind::Vcpu;
                let _ = tx.send(Incoming::Msg(c, k, std::mem::take(&mut buf)));
                if last || c != 0 {
                    return;
                }
            }
            Err(e) => {
                // A page channel closing after its stream ended is normal; the main loop knows
                // whether the stream was complete.
                let _ = tx.send(Incoming::Closed(c, format!("channel {c}: {e}")));
                return;
            }
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
    // One reader thread per connection; this thread applies what they read, in arrival order.
    let (tx, rx) = mpsc::channel::<Incoming>();
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
    for (c, cr) in conns {
        let tx = tx.clone();
        std::thread::spawn(move || reader(c, cr, &tx));
    }
    drop(tx);
    let mut fed = 0u64;
    let mut vcpu = None;
    while !(vcpu.is_some() && d.is_finished()) {
        let msg = if vcpu.is_some() {
            // The main connection is done; the other channels' last bytes may still be queued.
            rx.recv_timeout(Duration::from_secs(10))
                .map_err(|_| "stream rejected: a channel never ended".to_string())?
        } else {
            rx.recv()
                .map_err(|_| "every connection closed before the vCPU state".to_string())?
        };
        match msg {
            Incoming::Closed(c, _) if d.channel_finished(c) => {}
            Incoming::Closed(_, e) => return Err(e),
            Incoming::Msg(c, Kind::Data, bytes) => {
                d.feed_channel(c, &dst.vgpu, &mut dst.mem, &bytes)
                    .map_err(|e| format!("stream rejected: {e}"))?;
                // Tell the source how far the stream is applied (it stops only once it is).
                fed += bytes.len() as u64;
                wire::send_msg(&mut w, Kind::Ack, &Ack { fed })?;
            }
            Incoming::Msg(0, Kind::Vcpu, bytes) => vcpu = Some(bytes),
            Incoming::Msg(c, k, _) => {
                return Err(format!("unexpected {k:?} on channel {c} during the stream"));
            }
        }
    }
    let vcpu: Vcpu = wire::decode("vCPU state", &vcpu.unwrap_or_default())?;
    d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host)
        .map_err(|e| format!("commit refused: {e}"))?;
    let driver =
        GuestDriver::restore(&vcpu.driver).map_err(|e| format!("vCPU state rejected: {e}"))?;
    let clock = vcpu.clock_ns;
    let from_frame = driver.frames_submitted();
    dst.driver = driver;
    dst.clock_ns = clock;
    dst.vgpu
        .start()
        .map_err(|e| format!("starting the vGPU: {e}"))?;
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
