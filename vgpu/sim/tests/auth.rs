//! Authenticated migrations through the reference device (feature `auth`): the oracle holds with a key on both ends, and a
//! destination holding the key refuses streams that a holder of the key did not produce.
#![cfg(feature = "auth")]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

use migstream::{AuthKey, Limits};
use vgpu::dest::DestSession;
use vgpu::error::VgpuError;
use vgpu_mig_sim::Profile;
use vgpu_mig_sim::campaign::DeviceState;
use vgpu_mig_sim::scenario::{Plan, Scenario, Snapshot, migrate};

const KEY: [u8; 32] = [0x42; 32];

fn keyed_plan(channels: u16) -> Plan {
    let mut plan = Plan {
        auth_key: Some(KEY),
        ..Plan::default()
    };
    plan.source.channels = channels;
    plan.source.stream_id = 0xC0FFEE;
    plan
}

#[test]
fn authenticated_migrations_equal_the_unmigrated_run() {
    for (profile, channels) in [(Profile::THREE_D, 1), (Profile::MEDIA, 3)] {
        let sc = Scenario::small(profile, 30, 21).unwrap();
        let mut st_a = sc.storage();
        let mut st_b = sc.storage();
        let mut a = sc.machine(&mut st_a, false).unwrap();
        let mut b = sc.machine(&mut st_b, true).unwrap();
        a.boot().unwrap();
        let r = migrate(&mut a, &mut b, &keyed_plan(channels)).unwrap();
        // The header says authenticated (required flag bit 8) and the format is 1.1.
        let flags = u16::from_le_bytes([r.wire[14], r.wire[15]]);
        assert_eq!(flags & migstream::AUTHENTICATED, migstream::AUTHENTICATED);
        assert_eq!(
            u16::from_le_bytes([r.wire[10], r.wire[11]]),
            migstream::MINOR_1_1
        );
        assert!(b.run_to_end(1 << 40).unwrap());
        assert_eq!(sc.run_unmigrated().unwrap().diff(&Snapshot::of(&b)), None);
    }
}

/// MAC storage for one keyed destination of a test: leaked, so it outlives any session.
fn macs() -> &'static mut [migstream::MacStorage] {
    Box::leak(Box::new([migstream::MacStorage::new()]))
}

/// A destination that requires the test key.
fn keyed_dest(mut d: DestSession<'_>) -> DestSession<'_> {
    d.attach_key(&AuthKey::new(KEY), macs()).unwrap();
    d
}

/// Feeds `wire` to a fresh destination set up by `setup` and returns the first error, checking
/// that its device state did not change.
fn refused(
    sc: &Scenario,
    wire: &[u8],
    setup: impl FnOnce(DestSession<'_>) -> DestSession<'_>,
) -> VgpuError {
    let mut st = sc.storage();
    let mut b = sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; 1 << 20];
    let d = DestSession::open(&mut b.vgpu, &mut staging, Limits::DEFAULT).unwrap();
    let mut d = setup(d);
    let before = DeviceState::of(&b);
    let e = match d.feed(&b.vgpu, &mut b.mem, wire) {
        Err(e) => e,
        Ok(_) => d.validate(&b.vgpu, &b.mem).unwrap_err(),
    };
    let after = DeviceState::of(&b);
    assert_eq!(before, after);
    e
}

#[test]
fn a_keyed_destination_refuses_what_the_key_holder_did_not_produce() {
    let sc = Scenario::small(Profile::TWO_D, 20, 5).unwrap();
    let run = |plan: &Plan| {
        let mut st_a = sc.storage();
        let mut st_b = sc.storage();
        let mut a = sc.machine(&mut st_a, false).unwrap();
        let mut b = sc.machine(&mut st_b, true).unwrap();
        a.boot().unwrap();
        migrate(&mut a, &mut b, plan).unwrap().wire
    };
    let keyed = run(&keyed_plan(1));
    let mut plain_plan = Plan::default();
    plain_plan.source.stream_id = 0xC0FFEE;
    let plain = run(&plain_plan);
    let key = AuthKey::new(KEY);
    // Accepted as produced, with the right key and id.
    {
        let mut macs = [migstream::MacStorage::new()];
        let mut st = sc.storage();
        let mut b = sc.machine(&mut st, true).unwrap();
        let mut staging = vec![0u8; 1 << 20];
        let mut d = DestSession::open(&mut b.vgpu, &mut staging, Limits::DEFAULT)
            .unwrap()
            .expect_stream_id(0xC0FFEE);
        d.attach_key(&key, &mut macs).unwrap();
        d.feed(&b.vgpu, &mut b.mem, &keyed).unwrap();
        d.validate(&b.vgpu, &b.mem).unwrap();
    }
    // Another key.
    let e = refused(&sc, &keyed, |mut d| {
        d.attach_key(&AuthKey::new([1; 32]), macs()).unwrap();
        d
    });
    assert!(matches!(e, VgpuError::Stream(_)), "{e:?}");
    // An unauthenticated stream at a destination that requires authentication.
    let e = refused(&sc, &plain, keyed_dest);
    assert!(matches!(e, VgpuError::Stream(_)), "{e:?}");
    // An authenticated stream at a destination without the key: refused (key required).
    let e = refused(&sc, &keyed, |d| d);
    assert!(matches!(e, VgpuError::Stream(_)), "{e:?}");
    // A recorded stream replayed into another migration (another expected id).
    let e = refused(&sc, &keyed, |d| keyed_dest(d).expect_stream_id(0xC0FFEF));
    assert_eq!(e, VgpuError::UnexpectedStreamId { id: 0xC0FFEE });
    // A forger without the key changes a page byte and repairs every CRC: only the tag can
    // tell, and it does. (Flip a byte late in the stream, inside a record payload.)
    let mut forged = keyed.clone();
    let at = forged.len() / 2;
    forged[at] ^= 0x10;
    let e = refused(&sc, &forged, keyed_dest);
    assert!(matches!(e, VgpuError::Stream(_)), "{e:?}");
}

/// The MAC state is caller storage: a keyed session stays within the control-state bound,
/// and too little MAC storage for its channels is refused with nothing changed (the same
/// session then accepts enough storage and migrates).
#[test]
fn mac_storage_is_the_callers_and_short_storage_is_refused() {
    const {
        assert!(size_of::<DestSession<'static>>() <= vgpu::CONTROL_STATE_MAX);
        assert!(size_of::<vgpu::SourceSession<'static>>() <= vgpu::CONTROL_STATE_MAX);
        assert!(vgpu::Layout::MAC_STORAGE_LEN > 1024);
    }
    let sc = Scenario::small(Profile::MEDIA, 30, 5).unwrap();
    let mut st = sc.storage();
    let mut b = sc.machine(&mut st, true).unwrap();
    let mut staging = vec![0u8; 1 << 20];
    let mut d = DestSession::open_channels(&mut b.vgpu, &mut staging, Limits::DEFAULT, 3).unwrap();
    let mut one = [migstream::MacStorage::new()];
    let e = d.attach_key(&AuthKey::new(KEY), &mut one).unwrap_err();
    assert_eq!(e, VgpuError::StorageSize);
    assert_eq!(d.stats().bytes, 0);
    // Declared after the session: it holds no `Drop` that would outlive the storage.
    let mut macs = [(); 3].map(|()| migstream::MacStorage::new());
    d.attach_key(&AuthKey::new(KEY), &mut macs).unwrap();
}
