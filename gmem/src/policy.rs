//! The pre-copy policy: decides after each round whether to keep copying while the guest
//! runs, or to stop the guest and copy the rest (stop-and-copy).
//!
//! Per round it estimates the link bandwidth from that round's `bytes_sent / elapsed_us`
//! (keeping the last estimate when a round sent nothing), predicts the downtime of stopping
//! now as `(dirty_pages_left × 4096 + device_state_bytes) / bandwidth`, and switches when:
//!
//! 1. the prediction meets `downtime_limit_ms` ([`SwitchReason::DowntimeMet`]);
//! 2. this is round `max_rounds` ([`SwitchReason::RoundCap`]; at least one round);
//! 3. the dirty set failed to shrink by `min_shrink_percent` for [`STALL_ROUNDS`]
//!    consecutive rounds ([`SwitchReason::NotShrinking`]).
//!
//! It counts rounds itself (it does not trust `RoundStats::round`), so it always switches
//! within `max_rounds` calls, whatever the statistics say. Once it has switched, every later
//! call returns the same decision. Integer arithmetic only; deterministic.

/// Bytes in a guest page.
const PAGE_BYTES: u128 = 4096;

/// Consecutive non-shrinking rounds that trigger [`SwitchReason::NotShrinking`].
pub const STALL_ROUNDS: u32 = 2;

/// Policy configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PolicyConfig {
    /// The downtime the guest may see, in milliseconds.
    pub downtime_limit_ms: u32,
    /// The most pre-copy rounds before stop-and-copy is forced (0 is treated as 1).
    pub max_rounds: u32,
    /// A round counts as shrinking if the dirty set fell by at least this percentage.
    pub min_shrink_percent: u32,
}

impl Default for PolicyConfig {
    /// 300 ms downtime, 30 rounds, 10 % minimum shrink.
    fn default() -> Self {
        Self {
            downtime_limit_ms: 300,
            max_rounds: 30,
            min_shrink_percent: 10,
        }
    }
}

/// What happened in one pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RoundStats {
    /// The round number as the caller counts it (informational).
    pub round: u32,
    /// Pages still dirty after the round (what stop-and-copy would have to send).
    pub dirty_pages_left: u64,
    /// Bytes sent during the round.
    pub bytes_sent: u64,
    /// Wall time of the round in microseconds.
    pub elapsed_us: u64,
    /// Size of the device state sent during stop-and-copy, in bytes.
    pub device_state_bytes: u64,
}

/// Why the policy switched to stop-and-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SwitchReason {
    /// The predicted downtime is within the limit.
    DowntimeMet {
        /// The predicted downtime in microseconds.
        predicted_us: u64,
    },
    /// The dirty set stopped shrinking.
    NotShrinking,
    /// The round limit was reached.
    RoundCap,
}

/// The policy's verdict after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Decision {
    /// Run another pre-copy round.
    Continue,
    /// Stop the guest and copy the rest.
    StopAndCopy(SwitchReason),
}

/// The pre-copy policy state; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Policy {
    config: PolicyConfig,
    rounds: u32,
    prev_dirty: Option<u64>,
    stalls: u32,
    /// Last bandwidth sample as (bytes, microseconds), both non-zero.
    bandwidth: Option<(u64, u64)>,
    predicted_us: Option<u64>,
    decided: Option<SwitchReason>,
}

impl Policy {
    /// A fresh policy.
    #[must_use]
    pub const fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            rounds: 0,
            prev_dirty: None,
            stalls: 0,
            bandwidth: None,
            predicted_us: None,
            decided: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Rounds seen so far.
    #[must_use]
    pub const fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The downtime predicted after the last round, in microseconds, or `None` before any
    /// bandwidth sample.
    #[must_use]
    pub const fn expected_downtime_us(&self) -> Option<u64> {
        self.predicted_us
    }

    /// The estimated bandwidth in bytes per second, or `None` before any sample.
    #[must_use]
    pub fn bandwidth_bytes_per_sec(&self) -> Option<u64> {
        let (bytes, us) = self.bandwidth?;
        let v = u128::from(bytes) * 1_000_000 / u128::from(us);
        Some(u64::try_from(v).unwrap_or(u64::MAX))
    }

    /// Feeds one round's statistics and returns the decision.
    pub fn on_round(&mut self, stats: RoundStats) -> Decision {
        if let Some(reason) = self.decided {
            return Decision::StopAndCopy(reason);
        }
        self.rounds = self.rounds.saturating_add(1);
        if stats.bytes_sent != 0 && stats.elapsed_us != 0 {
            self.bandwidth = Some((stats.bytes_sent, stats.elapsed_us));
        }
        self.predicted_us = self.bandwidth.map(|(bytes, us)| {
            let left = u128::from(stats.dirty_pages_left) * PAGE_BYTES
                + u128::from(stats.device_state_bytes);
            // `bytes < 2^64`, so a product above u128::MAX means a result above u64::MAX.
            left.checked_mul(u128::from(us))
                .and_then(|x| u64::try_from(x.div_ceil(u128::from(bytes))).ok())
                .unwrap_or(u64::MAX)
        });
        let shrink_ok = match self.prev_dirty {
            None => true,
            Some(prev) => {
                let keep = 100u128.saturating_sub(u128::from(self.config.min_shrink_percent));
                u128::from(stats.dirty_pages_left) * 100 <= u128::from(prev) * keep
            }
        };
        self.prev_dirty = Some(stats.dirty_pages_left);
        self.stalls = if shrink_ok {
            0
        } else {
            self.stalls.saturating_add(1)
        };

        let limit_us = u64::from(self.config.downtime_limit_ms) * 1000;
        let reason = match self.predicted_us {
            Some(p) if p <= limit_us => Some(SwitchReason::DowntimeMet { predicted_us: p }),
            _ if self.rounds >= self.config.max_rounds.max(1) => Some(SwitchReason::RoundCap),
            _ if self.stalls >= STALL_ROUNDS => Some(SwitchReason::NotShrinking),
            _ => None,
        };
        match reason {
            Some(r) => {
                self.decided = Some(r);
                Decision::StopAndCopy(r)
            }
            None => Decision::Continue,
        }
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
    use proptest::prelude::*;

    fn round(round: u32, dirty: u64, bytes: u64, us: u64) -> RoundStats {
        RoundStats {
            round,
            dirty_pages_left: dirty,
            bytes_sent: bytes,
            elapsed_us: us,
            device_state_bytes: 0,
        }
    }

    #[test]
    fn defaults() {
        let c = PolicyConfig::default();
        assert_eq!(
            (c.downtime_limit_ms, c.max_rounds, c.min_shrink_percent),
            (300, 30, 10)
        );
    }

    #[test]
    fn converging_trace_meets_downtime() {
        // 1 GB/s link = 1000 bytes per µs. 300 ms allows 300 MB = 73_242 pages.
        let mut p = Policy::new(PolicyConfig::default());
        assert_eq!(
            p.on_round(round(0, 200_000, 1_000_000_000, 1_000_000)),
            Decision::Continue
        );
        // 200_000 pages = 819.2 MB ⇒ 819_200 µs.
        assert_eq!(p.expected_downtime_us(), Some(819_200));
        assert_eq!(p.bandwidth_bytes_per_sec(), Some(1_000_000_000));
        assert_eq!(
            p.on_round(round(1, 100_000, 800_000_000, 800_000)),
            Decision::Continue
        );
        let d = p.on_round(round(2, 50_000, 400_000_000, 400_000));
        assert_eq!(
            d,
            Decision::StopAndCopy(SwitchReason::DowntimeMet {
                predicted_us: 204_800
            })
        );
        // Latched.
        assert_eq!(p.on_round(round(3, 1_000_000, 1, 1_000_000)), d);
        assert_eq!(p.rounds(), 3);
    }

    #[test]
    fn device_state_counts() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut s = round(0, 0, 1000, 1); // 1000 bytes/µs
        s.device_state_bytes = 400_000_000; // 400 ms
        assert_eq!(p.on_round(s), Decision::Continue);
        assert_eq!(p.expected_downtime_us(), Some(400_000));
    }

    #[test]
    fn not_shrinking_after_two_stalls() {
        let mut p = Policy::new(PolicyConfig::default());
        assert_eq!(
            p.on_round(round(0, 1_000_000, 1000, 1000)),
            Decision::Continue
        );
        assert_eq!(
            p.on_round(round(1, 950_000, 1000, 1000)),
            Decision::Continue
        ); // 5 %: stall 1
        assert_eq!(
            p.on_round(round(2, 800_000, 1000, 1000)),
            Decision::Continue
        ); // shrinks
        assert_eq!(
            p.on_round(round(3, 790_000, 1000, 1000)),
            Decision::Continue
        ); // stall 1
        assert_eq!(
            p.on_round(round(4, 800_000, 1000, 1000)),
            Decision::StopAndCopy(SwitchReason::NotShrinking)
        );
    }

    #[test]
    fn round_cap_and_no_bandwidth() {
        let cfg = PolicyConfig {
            max_rounds: 3,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(cfg);
        // Nothing sent, shrinking fast: no estimate, only the cap can stop it.
        assert_eq!(p.on_round(round(0, 1000, 0, 0)), Decision::Continue);
        assert_eq!(p.expected_downtime_us(), None);
        assert_eq!(p.on_round(round(0, 500, 0, 0)), Decision::Continue);
        assert_eq!(
            p.on_round(round(0, 100, 0, 0)),
            Decision::StopAndCopy(SwitchReason::RoundCap)
        );
        let mut zero = Policy::new(PolicyConfig {
            max_rounds: 0,
            ..cfg
        });
        assert_eq!(
            zero.on_round(round(0, 1000, 0, 0)),
            Decision::StopAndCopy(SwitchReason::RoundCap)
        );
    }

    #[test]
    fn extreme_values_saturate() {
        let mut p = Policy::new(PolicyConfig::default());
        let s = RoundStats {
            round: u32::MAX,
            dirty_pages_left: u64::MAX,
            bytes_sent: 1,
            elapsed_us: u64::MAX,
            device_state_bytes: u64::MAX,
        };
        assert_eq!(p.on_round(s), Decision::Continue);
        assert_eq!(p.expected_downtime_us(), Some(u64::MAX));
    }

    fn stats() -> impl Strategy<Value = RoundStats> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(round, dirty_pages_left, bytes_sent, elapsed_us, device_state_bytes)| {
                    RoundStats {
                        round,
                        dirty_pages_left,
                        bytes_sent,
                        elapsed_us,
                        device_state_bytes,
                    }
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn always_terminates(max_rounds in 0u32..40, limit in any::<u32>(), shrink in any::<u32>(),
                             trace in proptest::collection::vec(stats(), 40)) {
            let mut p = Policy::new(PolicyConfig {
                downtime_limit_ms: limit,
                max_rounds,
                min_shrink_percent: shrink,
            });
            let mut stopped_at = None;
            for (i, s) in trace.iter().enumerate() {
                if let Decision::StopAndCopy(_) = p.on_round(*s) {
                    stopped_at.get_or_insert(i + 1);
                }
            }
            let n = stopped_at.unwrap();
            prop_assert!(n <= max_rounds.max(1) as usize);
        }
    }
}
