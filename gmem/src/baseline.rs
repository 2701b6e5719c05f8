//! Baseline policies to compare [`crate::Policy`] with on the same trace: a QEMU-style
//! policy and plain stop-and-copy.

use crate::policy::{Decision, MigrationStatus, PrecopyPolicy, RoundStats, SwitchReason, Tracker};

/// QEMU's default `max-bandwidth` (`MAX_THROTTLE`): 128 MiB/s.
pub const QEMU_MAX_BANDWIDTH: u64 = 128 << 20;

/// Configuration of [`QemuPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QemuConfig {
    /// `downtime-limit` in milliseconds (QEMU default 300).
    pub downtime_limit_ms: u32,
    /// `max-bandwidth` in bytes per second, or `None` for "bandwidth = link" (QEMU default
    /// [`QEMU_MAX_BANDWIDTH`]).
    pub max_bandwidth: Option<u64>,
    /// Give up after this many rounds with [`SwitchReason::IterationLimit`]. QEMU has no such
    /// limit (`None`, the default) and may iterate forever; a simulation sets one so that it
    /// ends and can report "no convergence".
    pub max_iterations: Option<u32>,
}

impl Default for QemuConfig {
    /// QEMU's defaults: 300 ms, 128 MiB/s, no iteration limit.
    fn default() -> Self {
        Self {
            downtime_limit_ms: 300,
            max_bandwidth: Some(QEMU_MAX_BANDWIDTH),
            max_iterations: None,
        }
    }
}

/// QEMU's switch-over rule (`migration_iteration_run`): with `bandwidth` the measured rate
/// (bytes over time of the last sample), `threshold = bandwidth × downtime_limit`; switch
/// when the bytes still owed after a dirty sync (dirty pages plus device state) are 0 or
/// below the threshold. `expected_downtime = dirty bytes / bandwidth`. The embedder syncs the
/// dirty log once the bytes still owed from the current pass fall to the threshold
/// ([`PrecopyPolicy::early_sync_bytes`]), as QEMU does when its pending estimate does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QemuPolicy {
    config: QemuConfig,
    track: Tracker,
}

impl QemuPolicy {
    /// A fresh policy.
    #[must_use]
    pub const fn new(config: QemuConfig) -> Self {
        Self {
            config,
            track: Tracker::new(),
        }
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// `bandwidth × downtime_limit` in bytes, 0 before any bandwidth sample.
    #[must_use]
    pub fn threshold_bytes(&self) -> u64 {
        let bw = self.track.status().bandwidth_bytes_per_sec.unwrap_or(0);
        let t = u128::from(bw) * u128::from(self.config.downtime_limit_ms) / 1000;
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

impl PrecopyPolicy for QemuPolicy {
    fn name(&self) -> &'static str {
        if self.config.max_bandwidth.is_some() {
            "qemu (max-bandwidth)"
        } else {
            "qemu (bw = link)"
        }
    }

    fn on_round(&mut self, stats: RoundStats) -> Decision {
        if let Some(reason) = self.track.switched() {
            return Decision::StopAndCopy(reason);
        }
        let rounds = self.track.observe(&stats);
        let dirty = stats
            .pending_bytes()
            .saturating_sub(stats.device_state_bytes);
        self.track.set_expected(self.track.time_us(dirty));
        let pending = stats.pending_bytes();
        let threshold = self.threshold_bytes();
        let reason = if pending == 0 || pending < threshold {
            Some(SwitchReason::DowntimeMet {
                predicted_us: self.track.time_us(pending).unwrap_or(0),
            })
        } else if self.config.max_iterations.is_some_and(|m| rounds >= m) {
            Some(SwitchReason::IterationLimit)
        } else {
            None
        };
        self.track.decide(reason)
    }

    fn on_progress(&mut self, bytes_sent: u64, elapsed_us: u64) {
        self.track.sample(bytes_sent, elapsed_us);
    }

    fn early_sync_bytes(&self) -> u64 {
        self.threshold_bytes()
    }

    fn rate_limit_bytes_per_sec(&self) -> Option<u64> {
        self.config.max_bandwidth
    }

    fn status(&self) -> MigrationStatus {
        self.track.status()
    }
}

/// Plain stop-and-copy (as vMotion of vGPUs in vSphere 6.7/7.0): switches on the first call,
/// with [`SwitchReason::RoundCap`] (a cap of zero pre-copy rounds). The embedder calls it
/// before the first round with the whole memory as dirty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StopAndCopy {
    track: Tracker,
}

impl StopAndCopy {
    /// A fresh policy.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            track: Tracker::new(),
        }
    }
}

impl PrecopyPolicy for StopAndCopy {
    fn name(&self) -> &'static str {
        "stop-and-copy"
    }

    fn on_round(&mut self, stats: RoundStats) -> Decision {
        if let Some(reason) = self.track.switched() {
            return Decision::StopAndCopy(reason);
        }
        self.track.observe(&stats);
        self.track
            .set_expected(self.track.time_us(stats.pending_bytes()));
        self.track.decide(Some(SwitchReason::RoundCap))
    }

    fn status(&self) -> MigrationStatus {
        self.track.status()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;
    use crate::policy::{Policy, PolicyConfig};
    use proptest::prelude::*;
    use std::boxed::Box;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    fn round(dirty_pages: u64, bytes: u64, us: u64) -> RoundStats {
        RoundStats {
            round: 0,
            dirty_pages_left: dirty_pages,
            bytes_sent: bytes,
            elapsed_us: us,
            device_state_bytes: MIB,
        }
    }

    #[test]
    fn qemu_threshold_rule() {
        let mut q = QemuPolicy::new(QemuConfig {
            max_bandwidth: None,
            ..QemuConfig::default()
        });
        assert_eq!(q.name(), "qemu (bw = link)");
        assert_eq!(q.rate_limit_bytes_per_sec(), None);
        assert_eq!(q.early_sync_bytes(), 0);
        // No bandwidth yet: never switches (unless nothing is owed).
        assert_eq!(q.on_round(round(100, 0, 0)), Decision::Continue);
        // 1000 bytes/µs = 1e9 B/s; threshold 300e6 bytes.
        q.on_progress(100_000_000, 100_000);
        assert_eq!(q.threshold_bytes(), 300_000_000);
        assert_eq!(q.early_sync_bytes(), 300_000_000);
        // 73_000 pages + 1 MiB = 300_056_576 bytes: not below the threshold.
        assert_eq!(
            q.on_round(round(73_000, 1_000_000_000, 1_000_000)),
            Decision::Continue
        );
        assert_eq!(q.status().expected_downtime_us, Some(299_008));
        // 72_000 pages + 1 MiB = 295_960_576 bytes < 300e6: switch.
        let d = q.on_round(round(72_000, 1_000_000_000, 1_000_000));
        assert_eq!(
            d,
            Decision::StopAndCopy(SwitchReason::DowntimeMet {
                predicted_us: 295_961
            })
        );
        assert_eq!(q.on_round(round(0, 0, 0)), d);
        let st = q.status();
        assert_eq!(st.round, 3);
        assert_eq!(st.initial_bytes, 1_000_000_000);
        assert_eq!(st.bytes_sent, 2_000_000_000);
        assert_eq!(st.dirty_bytes, 295_960_576);
        assert_eq!(st.expected_downtime_us, Some(294_912));
        assert_eq!(
            st.switched,
            Some(SwitchReason::DowntimeMet {
                predicted_us: 295_961
            })
        );
    }

    #[test]
    fn qemu_default_cap_never_converges_without_limit() {
        let mut q = QemuPolicy::new(QemuConfig::default());
        assert_eq!(q.rate_limit_bytes_per_sec(), Some(128 * MIB));
        // Sending at the 128 MiB/s cap while 48 MiB stay dirty: threshold 38.4 MiB.
        for _ in 0..1000 {
            assert_eq!(
                q.on_round(round(48 * MIB / 4096, 128 * MIB / 10, 100_000)),
                Decision::Continue
            );
        }
        let mut q = QemuPolicy::new(QemuConfig {
            max_iterations: Some(3),
            ..QemuConfig::default()
        });
        let s = round(48 * MIB / 4096, 128 * MIB / 10, 100_000);
        assert_eq!(q.on_round(s), Decision::Continue);
        assert_eq!(q.on_round(s), Decision::Continue);
        assert_eq!(
            q.on_round(s),
            Decision::StopAndCopy(SwitchReason::IterationLimit)
        );
    }

    #[test]
    fn stop_and_copy_switches_first() {
        let mut p = StopAndCopy::new();
        let d = p.on_round(round(114_688, 0, 0));
        assert_eq!(d, Decision::StopAndCopy(SwitchReason::RoundCap));
        assert_eq!(p.on_round(round(1, 1, 1)), d);
        assert_eq!(p.status().round, 1);
        assert_eq!(p.status().dirty_bytes, 114_688 * 4096 + MIB);
        assert_eq!(p.name(), "stop-and-copy");
    }

    fn stats() -> impl Strategy<Value = RoundStats> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(d, b, e, dev)| {
            RoundStats {
                round: 0,
                dirty_pages_left: d,
                bytes_sent: b,
                elapsed_us: e,
                device_state_bytes: dev,
            }
        })
    }

    /// A trace of a guest dirtying `rate` bytes per µs on a link of `link` bytes per µs.
    fn dirty_trace(rate: u64, link: u64, hot: u64) -> impl Iterator<Item = RoundStats> {
        let mut pending = 1u64 << 30;
        core::iter::from_fn(move || {
            let us = pending / link + 1;
            let sent = pending;
            pending = (rate.saturating_mul(us)).min(hot).max(1);
            Some(RoundStats {
                round: 0,
                dirty_pages_left: pending / 4096,
                bytes_sent: sent,
                elapsed_us: us,
                device_state_bytes: MIB,
            })
        })
    }

    proptest::proptest! {
        /// Every policy except QEMU without an iteration limit switches within its bound, for
        /// arbitrary statistics.
        #[test]
        fn every_policy_terminates(trace in proptest::collection::vec(stats(), 31),
                                   limit in any::<u32>(), iters in 1u32..31, cap in any::<bool>()) {
            let policies: Vec<(Box<dyn PrecopyPolicy>, usize)> = std::vec![
                (Box::new(Policy::new(PolicyConfig { downtime_limit_ms: limit, ..PolicyConfig::default() })), 30),
                (Box::new(Policy::new(PolicyConfig { downtime_limit_ms: limit, minimize_downtime: false, ..PolicyConfig::default() })), 30),
                (Box::new(QemuPolicy::new(QemuConfig {
                    downtime_limit_ms: limit,
                    max_bandwidth: cap.then_some(QEMU_MAX_BANDWIDTH),
                    max_iterations: Some(iters),
                })), iters as usize),
                (Box::new(StopAndCopy::new()), 1),
            ];
            for (mut p, bound) in policies {
                let n = trace.iter().position(|s| p.on_round(*s) != Decision::Continue);
                prop_assert!(n.is_some_and(|n| n < bound), "{} ran {:?}", p.name(), n);
                prop_assert!(p.status().switched.is_some());
            }
        }

        /// Dirty rates above the link rate: the library policy still switches, within 30
        /// rounds, and says why.
        #[test]
        fn dirty_rate_above_link(link in 1u64..5000, over in 1u64..10, hot_mib in 1u64..2048) {
            let mut p = Policy::new(PolicyConfig { downtime_limit_ms: 1, ..PolicyConfig::default() });
            let n = dirty_trace(link * over, link, hot_mib * MIB)
                .take(30)
                .position(|s| p.on_round(s) != Decision::Continue);
            prop_assert!(n.is_some());
        }
    }
}
