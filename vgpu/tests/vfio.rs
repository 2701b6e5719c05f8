//! The VFIO migration interface driven the way a VMM drives it: `device_state` writes reach the
//! requested state arc by arc, each arc does its work, and the oracle checks the result.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

// The package is published as `vgpu-mig`; the tests call it by its workspace name.
extern crate vgpu_mig as vgpu;

use migstream::Limits;
use sim::campaign::DeviceState;
use sim::scenario::{Scenario, Snapshot};
use sim::{Machine, MachineStorage, Profile};
use vgpu::error::VgpuError;
use vgpu::fsm::{Caps, FsmError, MigState};
use vgpu::source::{SourceConfig, SourceEvent};
use vgpu::vfio::{Host, MigrationStorage, VfioMigration};

struct Bufs {
    send: Vec<u64>,
    scratch: Vec<u8>,
    staging: Vec<u8>,
}

impl Bufs {
    fn new(sc: &Scenario, channels: u16) -> Self {
        let frames = usize::try_from(sc.map.frames()).unwrap();
        Self {
            send: vec![0; gmem::words_for(frames)],
            scratch: vec![0; 256 * 1024 * usize::from(channels)],
            staging: vec![0; 1 << 20],
        }
    }

    fn storage(&mut self) -> MigrationStorage<'_> {
        MigrationStorage {
            send: &mut self.send,
            scratch: &mut self.scratch,
            staging: &mut self.staging,
        }
    }
}

fn set(d: &mut VfioMigration<'_>, m: &mut Machine<'_>, s: MigState) -> Result<MigState, VgpuError> {
    let mut p = Host {
        mem: &mut m.mem,
        cpu: &mut m.cpu_log,
        gtt: &mut m.host,
    };
    d.set_state(&mut m.vgpu, s, &mut p)
}

fn config(channels: u16) -> SourceConfig {
    let mut c = SourceConfig::default();
    c.policy.max_rounds = 4;
    c.channels = channels;
    c
}

/// A whole migration through the VFIO interface on both sides, the guest running during pre-copy;
/// `cancel_first` cancels one attempt midway (PRE_COPY → RUNNING) before the real one.
fn vfio_migration(sc: &Scenario, caps: Caps, channels: u16, cancel_first: bool) -> Snapshot {
    let mut st_a = sc.storage();
    let mut st_b = sc.storage();
    let mut a = sc.machine(&mut st_a, false).unwrap();
    let mut b = sc.machine(&mut st_b, true).unwrap();
    let mut bufs_a = Bufs::new(sc, channels);
    let mut bufs_b = Bufs::new(sc, channels);
    let mut src =
        VfioMigration::new(caps, bufs_a.storage(), config(channels), Limits::DEFAULT).unwrap();
    let mut dst =
        VfioMigration::new(caps, bufs_b.storage(), config(channels), Limits::DEFAULT).unwrap();
    a.boot().unwrap();
    for _ in 0..30 {
        a.step().unwrap();
    }
    let pre_copy = caps.0 & Caps::PRE_COPY.0 != 0;
    // The destination: RUNNING → (RUNNING_P2P) → STOP → RESUMING.
    assert_eq!(
        set(&mut dst, &mut b, MigState::Resuming),
        Ok(MigState::Resuming)
    );
    assert_eq!(b.vgpu.state(), MigState::Resuming);
    let mut buf = vec![0u8; 16 * 1024];
    let n = usize::from(channels);
    let mut attempts = if cancel_first { 2 } else { 1 };
    loop {
        attempts -= 1;
        if pre_copy {
            assert_eq!(
                set(&mut src, &mut a, MigState::PreCopy),
                Ok(MigState::PreCopy)
            );
            let info = src.precopy_info(&a.vgpu).unwrap();
            assert!(info.initial_bytes > 0);
            let mut switch = false;
            let mut polls = 0;
            while !switch {
                for c in 0..n {
                    let mut p = Host {
                        mem: &mut a.mem,
                        cpu: &mut a.cpu_log,
                        gtt: &mut a.host,
                    };
                    let k = src
                        .read_channel(c, &a.vgpu, &mut p, a.clock_ns / 1000, &mut buf)
                        .unwrap();
                    if attempts == 0 {
                        let mut p = Host {
                            mem: &mut b.mem,
                            cpu: &mut b.cpu_log,
                            gtt: &mut b.host,
                        };
                        dst.write_channel(c, &b.vgpu, &mut p, &buf[..k]).unwrap();
                    }
                }
                while let Some(ev) = src.poll_event() {
                    switch |= matches!(ev, SourceEvent::Switch { .. });
                }
                a.step().unwrap();
                polls += 1;
                if attempts > 0 && polls == 2 {
                    assert!(!switch, "cancelled midway, before the switch");
                    // Cancel: the guest continues exactly where it was; nothing went to `dst`.
                    assert_eq!(
                        set(&mut src, &mut a, MigState::Running),
                        Ok(MigState::Running)
                    );
                    assert!(src.precopy_info(&a.vgpu).is_err());
                    for _ in 0..10 {
                        a.step().unwrap();
                    }
                    break;
                }
            }
            if !switch {
                continue;
            }
        }
        // Stop: the in-flight work drains first (the device model completes it), then the arc.
        assert!(a.quiesce());
        assert_eq!(
            set(&mut src, &mut a, MigState::StopCopy),
            Ok(MigState::StopCopy)
        );
        assert!(
            src.precopy_info(&a.vgpu).is_err(),
            "PRECOPY_INFO only in PRE_COPY"
        );
        while !src.is_saved() {
            for c in 0..n {
                let mut p = Host {
                    mem: &mut a.mem,
                    cpu: &mut a.cpu_log,
                    gtt: &mut a.host,
                };
                let k = src
                    .read_channel(c, &a.vgpu, &mut p, a.clock_ns / 1000, &mut buf)
                    .unwrap();
                let mut p = Host {
                    mem: &mut b.mem,
                    cpu: &mut b.cpu_log,
                    gtt: &mut b.host,
                };
                dst.write_channel(c, &b.vgpu, &mut p, &buf[..k]).unwrap();
            }
        }
        if attempts == 0 {
            break;
        }
    }
    assert_eq!(set(&mut src, &mut a, MigState::Stop), Ok(MigState::Stop));
    // RESUMING → STOP commits, STOP → RUNNING starts.
    assert_eq!(
        set(&mut dst, &mut b, MigState::Running),
        Ok(MigState::Running)
    );
    assert!(dst.last_restore().is_some());
    b.driver = a.driver.clone();
    b.clock_ns = a.clock_ns;
    assert!(b.run_to_end(1 << 40).unwrap());
    Snapshot::of(&b)
}

#[test]
fn migrations_through_the_vfio_interface_equal_the_unmigrated_run() {
    let cases = [
        (Profile::THREE_D, Caps::ALL, 1, false),
        (
            Profile::MEDIA,
            Caps::STOP_COPY.with(Caps::PRE_COPY),
            3,
            false,
        ),
        (Profile::TWO_D, Caps::STOP_COPY, 1, false),
        (Profile::THREE_D, Caps::STOP_COPY.with(Caps::P2P), 2, false),
        (Profile::THREE_D, Caps::ALL, 2, true),
    ];
    for (profile, caps, channels, cancel) in cases {
        let sc = Scenario::small(profile, 30, 4).unwrap();
        let got = vfio_migration(&sc, caps, channels, cancel);
        if let Some(d) = sc.run_unmigrated().unwrap().diff(&got) {
            panic!(
                "{} caps {caps:?} channels {channels} cancel {cancel}: {d}",
                profile.name
            );
        }
    }
}

fn idle_machine<'a>(sc: &Scenario, st: &'a mut MachineStorage) -> Machine<'a> {
    let mut m = sc.machine(st, false).unwrap();
    m.boot().unwrap();
    assert!(m.run_to_end(1 << 30).unwrap());
    m
}

#[test]
fn every_request_from_every_state_ends_in_the_requested_state_or_a_clear_refusal() {
    let sc = Scenario::small(Profile::IDLE, 2, 1).unwrap();
    for caps in [
        Caps::STOP_COPY,
        Caps::STOP_COPY.with(Caps::P2P),
        Caps::STOP_COPY.with(Caps::PRE_COPY),
        Caps::ALL,
    ] {
        for start in MigState::ALL {
            for requested in MigState::ALL {
                let mut st = sc.storage();
                let mut m = idle_machine(&sc, &mut st);
                let mut bufs = Bufs::new(&sc, 1);
                let mut d =
                    VfioMigration::new(caps, bufs.storage(), config(1), Limits::DEFAULT).unwrap();
                // Reach `start` (if the device supports it) through the interface itself.
                if start == MigState::Error || !start.supported_by(caps) {
                    assert!(set(&mut d, &mut m, start).is_err());
                    continue;
                }
                assert_eq!(
                    set(&mut d, &mut m, start),
                    Ok(start),
                    "{caps:?} to {start:?}"
                );
                let r = set(&mut d, &mut m, requested);
                let ctx = format!("{caps:?}: {start:?} -> {requested:?}: {r:?}");
                match requested {
                    _ if requested == start => assert_eq!(r, Ok(start), "{ctx}"),
                    MigState::Error => {
                        assert!(matches!(r, Err(VgpuError::Fsm(_))), "{ctx}");
                        assert_eq!(m.vgpu.state(), start, "{ctx}");
                    }
                    _ if !requested.supported_by(caps) => {
                        assert_eq!(
                            r,
                            Err(VgpuError::Fsm(FsmError::Unsupported(requested))),
                            "{ctx}"
                        );
                    }
                    // Leaving RESUMING without a stream: the commit fails and the device is in
                    // ERROR, left only by reset.
                    _ if start == MigState::Resuming => {
                        assert_eq!(r, Err(VgpuError::Truncated), "{ctx}");
                        assert_eq!(m.vgpu.state(), MigState::Error, "{ctx}");
                        assert!(set(&mut d, &mut m, MigState::Running).is_err());
                        d.reset(&mut m.vgpu);
                        assert_eq!(m.vgpu.state(), MigState::Running);
                        assert_eq!(set(&mut d, &mut m, MigState::Stop), Ok(MigState::Stop));
                    }
                    // The saving states cannot be entered from STOP_COPY (the kernel's table).
                    _ if start == MigState::StopCopy
                        && matches!(requested, MigState::PreCopy | MigState::PreCopyP2p) =>
                    {
                        assert!(matches!(r, Err(VgpuError::Fsm(_))), "{ctx}");
                        assert_eq!(m.vgpu.state(), MigState::StopCopy, "{ctx}");
                    }
                    _ => {
                        assert_eq!(r, Ok(requested), "{ctx}");
                        assert_eq!(m.vgpu.state(), requested, "{ctx}");
                    }
                }
            }
        }
    }
}

#[test]
fn invalid_data_fails_resuming_to_stop_and_only_reset_leaves_error() {
    let sc = Scenario::small(Profile::TWO_D, 5, 2).unwrap();
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, true).unwrap();
    let mut bufs = Bufs::new(&sc, 1);
    let mut d = VfioMigration::new(Caps::ALL, bufs.storage(), config(1), Limits::DEFAULT).unwrap();
    assert_eq!(
        set(&mut d, &mut m, MigState::Resuming),
        Ok(MigState::Resuming)
    );
    // Taken once RESUMING has stopped dispatch (the arc quiesces the engines).
    let before = DeviceState::of(&m);
    let mut p = Host {
        mem: &mut m.mem,
        cpu: &mut m.cpu_log,
        gtt: &mut m.host,
    };
    assert!(
        d.write(
            &m.vgpu,
            &mut p,
            b"definitely not a migration stream................................................."
        )
        .is_err()
    );
    assert!(matches!(
        set(&mut d, &mut m, MigState::Running),
        Err(VgpuError::Stream(_))
    ));
    assert_eq!(m.vgpu.state(), MigState::Error);
    assert_eq!(before, DeviceState::of(&m));
    for s in MigState::ALL {
        assert!(set(&mut d, &mut m, s).is_err(), "{s:?} from ERROR");
    }
    d.reset(&mut m.vgpu);
    assert_eq!(m.vgpu.state(), MigState::Running);
    // The storage came back: a new RESUMING session opens.
    assert_eq!(
        set(&mut d, &mut m, MigState::Resuming),
        Ok(MigState::Resuming)
    );
}

#[test]
fn stop_refuses_while_work_is_in_flight_and_succeeds_once_drained() {
    let sc = Scenario::small(Profile::THREE_D, 20, 9).unwrap();
    let mut st = sc.storage();
    let mut m = sc.machine(&mut st, false).unwrap();
    m.boot().unwrap();
    let mut bufs = Bufs::new(&sc, 1);
    let mut d = VfioMigration::new(Caps::ALL, bufs.storage(), config(1), Limits::DEFAULT).unwrap();
    // Step until the GPU has work in flight.
    let mut steps = 0;
    while m.vgpu.engines().in_flight() == 0 {
        m.step().unwrap();
        steps += 1;
        assert!(steps < 10_000, "the 3D workload submits work");
    }
    assert_eq!(
        set(&mut d, &mut m, MigState::Stop),
        Err(VgpuError::NotQuiesced)
    );
    // RUNNING → RUNNING_P2P was performed; RUNNING_P2P → STOP is the arc that failed.
    assert_eq!(m.vgpu.state(), MigState::RunningP2p);
    assert!(m.quiesce());
    assert_eq!(set(&mut d, &mut m, MigState::Stop), Ok(MigState::Stop));
    assert_eq!(
        set(&mut d, &mut m, MigState::Running),
        Ok(MigState::Running)
    );
}
