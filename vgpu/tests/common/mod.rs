//! Shared scenario for the end-to-end tests: a small vGPU on the reference device, with guest memory
//! split around a hole and partly above 4 GiB, migrated to a host that places it differently.
#![allow(dead_code, reason = "each test binary uses a different part")]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::expect_used,
    reason = "tests"
)]

use gmem::{FrameRange, GuestMemoryMap};
use gtt::{Gfn, GmAddr, GmRange, HostPlacement, Partition};
use vgpu::dest::DestSession;
use vgpu::instance::VgpuConfig;
use vgpu::sim::{GuestDriver, Machine, MachineStorage, Profile};
use vgpu::source::{SourceConfig, SourceEvent, SourceSession};

pub(crate) const HOST_GM: u64 = 1 << 30;

pub(crate) fn config() -> VgpuConfig {
    let aperture = GmRange::new(GmAddr::new(0x0100_0000), 512 * 1024).unwrap();
    let hidden = GmRange::new(GmAddr::new(0x1000_0000), 2 << 20).unwrap();
    VgpuConfig::skylake(Partition::new(aperture, hidden).unwrap())
}

/// 640 GM pages backed by 400 frames below 4 GiB and 400 above, with a hole between.
pub(crate) fn memory_map() -> GuestMemoryMap {
    GuestMemoryMap::new(&[
        FrameRange::new(Gfn::new(0x100), 400).unwrap(),
        FrameRange::new(Gfn::new(0x10_0000), 400).unwrap(),
    ])
    .unwrap()
}

pub(crate) fn source_placement(c: &VgpuConfig) -> HostPlacement {
    HostPlacement::contiguous(
        &c.partition,
        GmAddr::new(0x0200_0000),
        GmAddr::new(0x2000_0000),
    )
    .unwrap()
}

/// The destination has no contiguous room: the hidden slice is split in three.
pub(crate) fn dest_placement(c: &VgpuConfig) -> HostPlacement {
    let a = [GmRange::new(GmAddr::new(0x0300_0000), 512 * 1024).unwrap()];
    let h = [
        GmRange::new(GmAddr::new(0x3000_0000), 1 << 20).unwrap(),
        GmRange::new(GmAddr::new(0x2800_0000), 512 * 1024).unwrap(),
        GmRange::new(GmAddr::new(0x3800_0000), 512 * 1024).unwrap(),
    ];
    HostPlacement::split(&c.partition, &a, &h).unwrap()
}

pub(crate) fn profile(name: &str) -> Profile {
    let p = match name {
        "idle" => Profile::IDLE,
        "2d" => Profile::TWO_D,
        "media" => Profile::MEDIA,
        _ => Profile::THREE_D,
    };
    p.scaled_down(32)
}

pub(crate) fn machine<'a>(
    storage: &'a mut MachineStorage,
    dest: bool,
    profile: Profile,
    frames: u64,
    seed: u64,
) -> Machine<'a> {
    let c = config();
    let placement = if dest {
        dest_placement(&c)
    } else {
        source_placement(&c)
    };
    Machine::new(
        c,
        placement,
        memory_map(),
        storage,
        HOST_GM,
        if dest { 0x77_0000 } else { 0x55_0000 },
        GuestDriver::new(profile, frames, seed),
    )
    .unwrap()
}

pub(crate) fn storage() -> MachineStorage {
    MachineStorage::new(&config(), &memory_map())
}

/// Everything the oracle compares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) mem: Vec<u8>,
    pub(crate) vregs: Vec<u32>,
    pub(crate) ggtt: Vec<u64>,
    pub(crate) engines: engines::Engines,
    pub(crate) derived: vgpu::instance::Derived,
    pub(crate) config_space: Vec<u8>,
}

pub(crate) fn snapshot(m: &Machine<'_>) -> Snapshot {
    Snapshot {
        mem: m.mem.bytes().to_vec(),
        vregs: (0..mmio::MMIO_DWORDS as u32)
            .map(|i| m.vgpu.regs().peek(i * 4))
            .collect(),
        ggtt: m.vgpu.ggtt().entries().to_vec(),
        engines: m.vgpu.engines().clone(),
        derived: *m.vgpu.derived(),
        config_space: m.vgpu.config_space().to_vec(),
    }
}

/// Every present guest GGTT entry is shadowed at its g2h index with the host's frame.
pub(crate) fn assert_host_consistent(m: &Machine<'_>) {
    let part = m.vgpu.config().partition;
    for (idx, e) in m.vgpu.ggtt().iter_present() {
        let h = part.g2h_index(m.vgpu.placement(), idx).unwrap();
        let host = gtt::GgttEntry::from_bits(m.host.ggtt[h.get() as usize]);
        assert_eq!(
            host.frame().get(),
            e.frame().get() + m.host.frame_offset,
            "guest index {idx:?}"
        );
    }
}

pub(crate) fn unmigrated(profile: Profile, frames: u64, seed: u64) -> Snapshot {
    let mut st = storage();
    let mut m = machine(&mut st, false, profile, frames, seed);
    m.boot().unwrap();
    assert!(m.run_to_end(1_000_000).unwrap());
    snapshot(&m)
}

/// How a migration is driven.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Source steps before the migration starts.
    pub(crate) start_step: u64,
    /// Output buffer size per poll (small values exercise record splitting).
    pub(crate) chunk: usize,
    /// Source steps between polls (the guest keeps running during pre-copy).
    pub(crate) steps_per_poll: u32,
    /// Force stop-and-copy after this many pre-copy rounds (the policy may switch earlier).
    pub(crate) max_rounds: u32,
    /// Feed the destination in pieces of this size.
    pub(crate) feed: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            start_step: 40,
            chunk: 64 * 1024,
            steps_per_poll: 1,
            max_rounds: 4,
            feed: 4096,
        }
    }
}

/// Run the source until the plan's start, migrate it to a fresh destination while the guest keeps
/// running, and return the destination (which continues the workload) and the stream bytes.
pub(crate) fn migrate<'a>(src: &mut Machine<'_>, dst: &mut Machine<'a>, plan: Plan) -> Vec<u8> {
    for _ in 0..plan.start_step {
        src.step().unwrap();
    }
    let frames = usize::try_from(src.vgpu.memory_map().frames()).unwrap();
    let mut send = vec![0u64; gmem::words_for(frames)];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut staging = vec![0u8; 256 * 1024];
    let mut cfg = SourceConfig::default();
    cfg.policy.max_rounds = plan.max_rounds;
    cfg.stream_id = 7;
    let mut s = SourceSession::open(
        &mut src.vgpu,
        &mut src.cpu_log,
        cfg,
        &mut send,
        &mut scratch,
    )
    .unwrap();
    let mut d = DestSession::open(&mut dst.vgpu, &mut staging, migstream::Limits::DEFAULT).unwrap();
    let mut wire = Vec::new();
    let mut out = vec![0u8; plan.chunk];
    let mut stopped = false;
    let mut polls = 0u64;
    loop {
        let now = src.clock_ns / 1000;
        let n = s
            .poll_output(&mut src.vgpu, &src.mem, &mut src.cpu_log, now, &mut out)
            .unwrap();
        let bytes = &out[..n];
        for piece in bytes.chunks(plan.feed.max(1)) {
            d.feed(&dst.vgpu, &mut dst.mem, piece).unwrap();
        }
        wire.extend_from_slice(bytes);
        while let Some(ev) = s.poll_event() {
            if let SourceEvent::Switch { .. } = ev {
                assert!(src.quiesce(), "in-flight work drains");
                s.stop_and_copy(&mut src.vgpu, &mut src.cpu_log).unwrap();
                stopped = true;
            }
        }
        if s.is_finished() {
            break;
        }
        if !stopped {
            for _ in 0..plan.steps_per_poll {
                src.step().unwrap();
            }
        }
        polls += 1;
        assert!(polls < 1_000_000, "migration does not terminate");
    }
    assert!(d.is_finished());
    d.commit(&mut dst.vgpu, &dst.mem, &mut dst.host).unwrap();
    dst.vgpu.start().unwrap();
    dst.driver = src.driver.clone();
    dst.clock_ns = src.clock_ns;
    wire
}
