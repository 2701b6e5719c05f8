//! `cargo xtask migrate`: run a workload on the reference device, live-migrate the vGPU to a
//! second, differently placed vGPU in another operating-system process over TCP, let the
//! destination finish the workload, and verify that its final state equals a never-migrated run of
//! the same seed, byte for byte.
//!
//! The guest: with `--guest kvm` (the default where `/dev/kvm` and the `x86_64-unknown-none`
//! target are usable) a whole KVM virtual machine whose bare-metal guest drives the vGPU is
//! migrated with the reference embedding `kvm-vmm` ([`kvm`]: its own framing, documented there and
//! in `kvm_vmm::migration`); elsewhere, or with `--guest model`, the reference platform's guest
//! driver model, as described below. A destination started with `--listen` must be given the
//! same `--guest` as its source.
//!
//! # Processes
//!
//! - Default: this process is the *source*. It starts the destination as a child
//!   (`migrate --listen 127.0.0.1:0` plus a hidden flag that makes the child print its bound port
//!   on stdout), connects over loopback and migrates.
//! - `--listen ADDR`: run only a destination (on another machine, say), for one migration.
//! - `--connect ADDR`: run only a source, against a destination listening at `ADDR`.
//! - `--modeled`: the earlier in-process run over a modeled link ([`modeled`]), whose figures are
//!   deterministic for a seed.
//!
//! Both processes embed the library with the reference device (crate `vgpu-mig-sim`).
//!
//! # Framing
//!
//! Every message is a 5-byte header — kind (`u8`), payload length (`u32`, little-endian, at most
//! 16 MiB) — and the payload ([`wire`]). `DATA` carries the library's stream as it is (fixed
//! little-endian layouts, SPEC.md); the control messages are postcard-encoded structures
//! ([`wire::encode`]), as both ends are this program. In order:
//!
//! 1. source → destination `HELLO`: magic `VGPUDEMO` and framing version 4, then a
//!    [`wire::Hello`] (workload, quick flag, graphics memory in MiB, frames, seed, channels): what
//!    the destination needs to build the same scenario (its own, differently placed vGPU).
//! 2. destination → source `READY` once its vGPU and session exist, or `ERROR` (bad hello).
//! 3. source → destination `DATA`, many: the library's migration stream as
//!    [`SourceSession::poll_output`](vgpu::source::SourceSession::poll_output) produces it, one
//!    poll per message; the destination feeds each payload to
//!    [`DestSession::feed`](vgpu::dest::DestSession::feed) as it arrives and answers each with
//!    destination → source `ACK` ([`wire::Ack`]: the stream bytes fed so far). During pre-copy the
//!    source polls the session only while less than a window of the stream is unacknowledged
//!    (about 5 ms of the destination's measured apply rate, between two output buffers and 10 ms
//!    of the link) and while the oldest unacknowledged output is under 10 ms old (zero-page markers
//!    are few bytes for much work), so the destination's backlog stays short and the policy's
//!    round rates are the rate the destination keeps up with. When the policy switches, the source keeps the guest
//!    running until everything sent is acknowledged (at most 2 s; with the window a few ms), so
//!    the backlog does not count as downtime, and only then stops the guest.
//! 4. source → destination `VCPU` ([`wire::Vcpu`]):
//!    [`GuestDriver::save`](sim::GuestDriver::save)'s bytes and the guest clock, as a VMM
//!    sends CPU state after device state, and the stream offset at which the source stopped the
//!    guest (for the destination's share of the stop phase's timing).
//! 5. destination → source `RESUMED` after the validated commit and `vgpu.start()`; or `ERROR`
//!    (a text: stream rejected, commit refused), at any point, after which the connection closes.
//! 6. destination → source `VERDICT` ([`wire::Verdict`]) once it has finished the workload and
//!    compared its state with a never-migrated run: pass, frames the destination rendered, its
//!    wall time for finishing plus verifying, a text, and (model guest) its timing of the stop
//!    phase ([`wire::StopVerdict`]: reading and applying the stream past the stop offset, the
//!    commit, the start).
//!
//! All page traffic goes through one sender ([`source::Sender`]) per connection: a thread of its
//! own writing a non-blocking socket behind a token bucket that applies `--link` (shared equally
//! by the connections), so the session encodes the next message while the last one is written.
//!
//! # The stop phase's report line
//!
//! The report (and `stop_phase` in `--json`, [`report::StopPhase`]) says where the downtime
//! went, from the source's stop: `quiesce` (in-flight GPU work drains, run by the reference
//! device in software), `harvest` (the last dirty-log harvest), the stop round's pages and
//! stream bytes and the time spent encoding them (reading, content tracking, CRC), the time the
//! sender threads were held by the rate limit and by a full socket (the destination reading more
//! slowly than the link) and spent in write calls (the kernel's copy; on loopback also the
//! delivery), the link's own time for those bytes (the stop round's floor), and when the last
//! byte was written and its acknowledgement read, and the source threads' (migration and
//! senders) time on a CPU and time runnable but waiting for one (Linux `schedstat`). The
//! destination's line: the messages past the stop, the time it waited to read them and spent
//! applying them, its commit and start, and its channel threads' time on a CPU and waiting for
//! one. On a machine whose cores other work keeps busy the waiting for a CPU is where the
//! downtime beyond the link's time goes; on idle cores the two processes' work (about 1.5 ms of
//! CPU per MiB of stop round with content tracking, both ends together) overlaps the link.
//! The downtime minus the link's time is the transport's and the hosts' own cost: the commit
//! (about 2 ms for the 448 MiB vGPU), the `VCPU` and `RESUMED` messages' trips, and whatever the
//! two processes could not overlap with the link on the machine's cores.
//!
//! With `--channels N` (N > 1) the library splits the stream into N channels
//! ([`vgpu::channel`]); the hello says how many, channel 0 travels on the first connection as
//! above, and the source opens N − 1 more connections, each starting with a `JOIN` message naming
//! its channel ([`wire::Join`]). The destination reads every connection in its own thread and feeds each channel's
//! bytes to [`DestSession::feed_channel`](vgpu::dest::DestSession::feed_channel) in arrival order;
//! `ACK` counts the bytes of all channels, and the `VCPU` message (on the first connection) is
//! acted on once every channel's stream has ended.

mod dest;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod kvm;
mod modeled;
mod plot;
mod report;
mod sched;
mod source;
mod wire;

use sim::Profile;
use sim::scenario::Scenario;

/// Options of `cargo xtask migrate`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The guest: `kvm` (a KVM virtual machine whose bare-metal guest drives the vGPU; the
    /// default, where `/dev/kvm` and the `x86_64-unknown-none` target are usable) or `model`
    /// (the reference platform's guest driver model).
    #[arg(long, default_value = "kvm", value_parser = ["kvm", "model"])]
    pub(crate) guest: String,
    /// Guest RAM of the KVM VM in MiB (`--guest kvm`).
    #[arg(long, default_value_t = 256)]
    pub(crate) ram: u64,
    /// Workload running in the guest.
    #[arg(long, default_value = "3d", value_parser = ["idle", "2d", "media", "3d"])]
    pub(crate) workload: String,
    /// Graphics memory of the vGPU in MiB (128-4096): 64 MiB of aperture, the rest hidden.
    #[arg(long, default_value_t = 448, value_parser = clap::value_parser!(u64).range(128..=4096))]
    pub(crate) gm: u64,
    /// Link rate, e.g. `10gbit`, `25gbit`, `1gbit`, `800mbit`: a rate limit the sender applies to
    /// its socket writes (default: unlimited). With `--modeled`, the modeled link (default 10gbit).
    /// Held as TCP goodput in bytes per second.
    #[arg(long, value_name = "RATE", value_parser = parse_link)]
    pub(crate) link: Option<u64>,
    /// Downtime limit the pre-copy policy aims for, ms.
    #[arg(long, default_value_t = 300)]
    pub(crate) downtime_ms: u32,
    /// Frames the workload renders; by default enough for the migration to happen while it runs
    /// (30 frames first, then about twice the time the whole graphics memory takes on the link,
    /// counting an unlimited link as 1 GB/s, plus a second).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) frames: Option<u64>,
    /// How precisely GPU writes are tracked: `exact` (the write set the device reports), `active`
    /// (every mapped page when the vGPU ran work), `mapped` (every mapped page, always: the
    /// original prototype's behaviour).
    #[arg(long, default_value = "exact", value_parser = ["exact", "active", "mapped"])]
    pub(crate) precision: String,
    /// Content tracking on the source (skip unchanged pages, send duplicates and deltas): `on`
    /// with a 64 MiB delta cache, or `off`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub(crate) content: String,
    /// Seed of the guest workload.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Channels: the stream is split over this many TCP connections (1-8), pages striped by
    /// frame, device state on the first (like QEMU's multifd).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub(crate) channels: u8,
    /// A small vGPU (512 KiB + 2 MiB) and a short run: the CI smoke test.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run only a destination, listening at this address (e.g. `0.0.0.0:4444`), for one migration.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["connect", "modeled"])]
    pub(crate) listen: Option<String>,
    /// Run only a source, migrating to a destination listening at this address.
    #[arg(long, value_name = "ADDR", conflicts_with = "modeled")]
    pub(crate) connect: Option<String>,
    /// Both endpoints in this process over a modeled link (deterministic figures).
    #[arg(long)]
    pub(crate) modeled: bool,
    /// GPU auto-converge (with `--modeled`): throttle the vGPU's engine share through the
    /// time-sliced scheduler while pre-copy does not converge, and report what it cost the
    /// guest. `60` (the default when no value is given): at most 60 ms, QEMU's steps (20 %,
    /// +10 % a step, at most 99 %) above a 50 ms predicted downtime. `100`: at most 100 ms at
    /// half the guest's cost (after two non-shrinking rounds in a row above a 95 ms
    /// prediction, 74 % at once, at most 80 %; it stops on the first throttled round that
    /// predicts 95 ms or less).
    #[arg(
        long,
        requires = "modeled",
        value_name = "MS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "60"
    )]
    pub(crate) auto_converge: Option<crate::autoconverge::AutoConverge>,
    /// Where the timeline plot goes (`.svg`; a `.png` beside it).
    #[arg(long, default_value = "target/migrate-timeline.svg")]
    pub(crate) plot: String,
    /// Fault injection: flip one bit of the migration stream at this byte offset (the destination
    /// must reject the stream, and the source cancel and keep its guest running).
    #[arg(long, hide = true, value_name = "OFFSET")]
    pub(crate) fault_flip_byte: Option<u64>,
    /// Child mode of `--listen`: print the bound port on stdout, nothing else.
    #[arg(long, hide = true)]
    pub(crate) child: bool,
}

/// Frames rendered before the migration starts.
const START_FRAME: u64 = 30;

/// Run the demo. With `--json`, a failure that left no report prints one JSON object saying so
/// ([`report::emit_json`]), so stdout always holds exactly one object.
pub(crate) fn run(args: &Args) -> crate::Result {
    let result = run_guest(args);
    if let Err(e) = &result
        && args.json
        && !report::json_emitted()
    {
        report::emit_json::<()>(None, Some(report::JsonError::new("migration", e)));
    }
    result
}

/// A usage error under `--json` (the command line did not parse): the one JSON object.
pub(crate) fn usage_error_json(message: &str) {
    report::emit_json::<()>(None, Some(report::JsonError::new("usage", message)));
}

fn run_guest(args: &Args) -> crate::Result {
    // The KVM VMM migrates guest RAM itself (over `--channels` connections, its own striping)
    // and the library's stream carries device state only: GPU dirty precision and content
    // tracking are the model guest's.
    let model_only = args.precision != "exact" || args.content != "on";
    // Notices go to stderr under `--json`: stdout holds only the JSON object there.
    let notice = |text: &str| {
        if args.json {
            eprintln!("{text}");
        } else if !args.child {
            println!("{text}");
        }
    };
    if args.guest == "kvm" && !args.modeled && model_only {
        notice("--precision and --content shape the model guest's stream: running the model guest");
    }
    if args.guest == "kvm" && !args.modeled && !model_only {
        match kvm_image()? {
            Ok(image) => return run_kvm(args, &image),
            Err(why) => notice(&format!(
                "KVM guest not available ({why}): running the model guest"
            )),
        }
    }
    if args.modeled {
        modeled::run(args)
    } else if let Some(addr) = &args.listen {
        dest::run(addr, args.child)
    } else {
        source::run(args)
    }
}

/// The KVM guest image where KVM is usable (`Ok(Err(why))` where it is not; `Err` when the
/// guest does not build).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn kvm_image() -> crate::Result<Result<Vec<u8>, String>> {
    kvm::usable()
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn kvm_image() -> crate::Result<Result<Vec<u8>, String>> {
    Ok(Err("KVM needs Linux on x86-64".into()))
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn run_kvm(args: &Args, image: &[u8]) -> crate::Result {
    match &args.listen {
        Some(addr) => kvm::run_dest(addr, args.child, image),
        None => kvm::run_source(args, image),
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn run_kvm(_args: &Args, _image: &[u8]) -> crate::Result {
    Err("KVM needs Linux on x86-64".into())
}

/// The workload named on the command line.
fn profile(name: &str) -> Profile {
    match name {
        "idle" => Profile::IDLE,
        "2d" => Profile::TWO_D,
        "media" => Profile::MEDIA,
        _ => Profile::THREE_D,
    }
}

/// The modeled link of `--modeled` when `--link` is not given: 10 Gbit/s.
const MODELED_LINK: u64 = goodput(10_000_000_000.0);

/// TCP goodput in bytes per second of a line rate in bits per second: about 94% of the line
/// rate at MTU 1500.
const fn goodput(bits_per_s: f64) -> u64 {
    (bits_per_s / 8.0 * 0.94) as u64
}

/// A link rate (`10gbit`, `800mbit`) in payload bytes per second; clap reports an error as a
/// usage error (exit status 2).
fn parse_link(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = t.strip_suffix("mbit") {
        (n, 1e6)
    } else {
        return Err("expected a rate like 10gbit or 800mbit".into());
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{num:?} is not a number"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err("the rate must be positive".into());
    }
    match goodput(v * mult) {
        0 => Err("the rate is below one byte per second".into()),
        rate => Ok(rate),
    }
}

/// The scenario a hello describes (both processes build it the same way).
fn scenario(h: &wire::Hello) -> crate::Result<Scenario> {
    let profile = [
        Profile::IDLE,
        Profile::TWO_D,
        Profile::MEDIA,
        Profile::THREE_D,
    ]
    .get(usize::from(h.workload))
    .copied()
    .ok_or("unknown workload")?;
    if h.quick {
        Scenario::small(profile, h.frames, h.seed)
    } else {
        // At least 128 MiB: `--gm`'s range, and checked in every hello received.
        let hidden = h
            .gm_mib
            .checked_sub(64)
            .ok_or("too little graphics memory")?;
        Scenario::new(64 << 20, hidden << 20, profile, h.frames, h.seed)
    }
    .map_err(|e| format!("building the scenario: {e}"))
}

/// A line saying the guest runs `requested` as `used`, scaled down to fit `hidden` bytes of
/// hidden graphics memory ([`Profile::fitted`]), or `None` when it runs as named. Not for
/// `--quick`, whose small vGPU always runs a scaled-down workload.
fn fitted_note(requested: &Profile, used: &Profile, hidden: u64) -> Option<String> {
    (used.rt_pages != requested.rt_pages).then(|| {
        format!(
            "workload {} scaled down to fit {} of hidden graphics memory: {} of render targets, \
             {} filled per frame (as named: {}, {})",
            used.name,
            mib(hidden),
            mib(used.rt_pages * 4096),
            mib(used.fill_pages * 4096),
            mib(requested.rt_pages * 4096),
            mib(requested.fill_pages * 4096),
        )
    })
}

/// Human-readable bytes.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn link_rates_parse_to_goodput_and_bad_ones_are_refused() {
        assert_eq!(parse_link("10gbit"), Ok(1_175_000_000));
        assert_eq!(parse_link(" 800MBit "), Ok(94_000_000));
        assert_eq!(parse_link("2.5gbit"), Ok(293_750_000));
        assert_eq!(MODELED_LINK, parse_link("10gbit").unwrap());
        for bad in [
            "10gbps",
            "10",
            "gbit",
            "0gbit",
            "-1gbit",
            "nangbit",
            "infgbit",
            "1e-12mbit",
        ] {
            assert!(parse_link(bad).is_err(), "{bad}");
        }
    }
}
