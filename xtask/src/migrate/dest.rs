//! The destination process: one migration in, then the workload's end and the verification.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use vgpu::dest::DestSession;
use vgpu::sim::GuestDriver;
use vgpu::sim::scenario::{Snapshot, host_consistent};

use super::scenario;
use super::wire::{self, Hello, Kind};

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
    receive(sock, child, &peer.to_string()).map_err(|e| {
        // Tell the source why, if the connection still stands; it cancels and keeps its guest.
        let _ = wire::send(&mut w, Kind::Error, e.as_bytes());
        format!("destination: {e}")
    })
}

fn receive(sock: TcpStream, child: bool, peer: &str) -> crate::Result {
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
    let staging_len = 64 * 1024 + dst.vgpu.config().ggtt_storage_len() * 8 * 2;
    let mut staging = vec![0u8; staging_len];
    let mut d = DestSession::open(&mut dst.vgpu, &mut staging, migstream::Limits::DEFAULT)
        .map_err(|e| format!("opening the destination session: {e}"))?;
    wire::send(&mut w, Kind::Ready, &[]).map_err(|e| e.to_string())?;
    let mut fed = 0u64;
    let vcpu = loop {
        match wire::recv(&mut r, &mut buf)? {
            Kind::Data => {
                d.feed(&dst.vgpu, &mut dst.mem, &buf)
                    .map_err(|e| format!("stream rejected: {e}"))?;
                // Tell the source how far the stream is applied (it stops only once it is).
                fed += buf.len() as u64;
                wire::send(&mut w, Kind::Ack, &fed.to_le_bytes()).map_err(|e| e.to_string())?;
            }
            Kind::Vcpu => break buf.clone(),
            k => return Err(format!("unexpected {k:?} during the stream")),
        }
    };
    if !d.is_finished() {
        return Err("stream rejected: vCPU state before the stream's END record".into());
    }
    d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host)
        .map_err(|e| format!("commit refused: {e}"))?;
    let driver = GuestDriver::restore(&vcpu).map_err(|e| format!("vCPU state rejected: {e}"))?;
    let clock = vcpu
        .get(GuestDriver::SAVED_LEN..GuestDriver::SAVED_LEN + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or("vCPU state rejected: no guest clock")?;
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
    let mut v = vec![u8::from(verdict.is_none())];
    v.extend_from_slice(&frames.to_le_bytes());
    v.extend_from_slice(&ms.to_le_bytes());
    v.extend_from_slice(
        verdict
            .as_deref()
            .unwrap_or("guest memory, 2 MiB of registers, GGTT, engines, PPGTT roots, config space")
            .as_bytes(),
    );
    wire::send(&mut w, Kind::Verdict, &v).map_err(|e| e.to_string())?;
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
