//! Pre-copy policies: after each round they decide whether to keep copying while the guest
//! runs, or to stop the guest and copy the rest (stop-and-copy).
//!
//! [`PrecopyPolicy`] is the common interface; [`Policy`] is this crate's policy, and
//! [`crate::baseline`] holds a QEMU-style policy and plain stop-and-copy to compare it with on
//! the same trace. Every policy also keeps a [`MigrationStatus`]: what VFIO's precopy info and
//! QEMU's migration status expose, computed from the statistics it saw.
//!
//! [`Policy`] estimates the link bandwidth from each round's `bytes_sent / elapsed_us`
//! (keeping the last estimate when a round sent nothing), predicts the downtime of stopping
//! now as `(dirty_pages_left × 4096 + device_state_bytes) / bandwidth`, and switches when:
//!
//! 1. the prediction meets `downtime_limit_ms` ([`SwitchReason::DowntimeMet`]). With
//!    [`PolicyConfig::minimize_downtime`] (the default) it then keeps copying as long as each
//!    round shrinks the dirty set by at least `min_shrink_percent`, and switches (still with
//!    `DowntimeMet`) on the first round that does not: the stop set then sits near the
//!    workload's steady-state floor instead of anywhere under the limit;
//! 2. this is round `max_rounds` ([`SwitchReason::RoundCap`]; at least one round);
//! 3. the dirty set failed to shrink by `min_shrink_percent` for [`STALL_ROUNDS`]
//!    consecutive rounds ([`SwitchReason::NotShrinking`]).
//!
//! **Auto-converge** ([`PolicyConfig::throttle`], off by default): when the GPU dirties graphics
//! memory faster than the link carries it, no choice of when to stop beats the hot set over
//! the link. With a [`ThrottleConfig`], a round that does not shrink the dirty set while the
//! predicted downtime is above [`ThrottleConfig::target_downtime_ms`] raises the throttle the
//! embedder applies to the vGPU's share of the engines ([`Policy::throttle_percent`]: start
//! share, step and limit as QEMU's `cpu-throttle-initial` / `-increment` / `max-cpu-throttle`
//! for vCPUs) and continues instead of switching, until the throttle is at its limit. The
//! embedder reads the percentage after every round and gives the vGPU `100 - percent` % of
//! its time slices (in the reference device, `engines::sched`), and lifts it after the
//! migration. Two options bound what the guest pays: [`ThrottleConfig::trigger_rounds`] waits
//! for that many such rounds in a row before the first step (as QEMU waits for two syncs with
//! a high dirty rate), so one noisy round does not throttle the guest; and
//! [`ThrottleConfig::stop_at_target`] switches as soon as a throttled round's prediction
//! meets the target, instead of copying on under the throttle while rounds shrink.
//!
//! A round "shrinks" only if the dirty set strictly fell by the required percentage, so a
//! dirty set stuck at zero pages also stops. It counts rounds itself (it does not trust
//! `RoundStats::round`), so it always switches within `max_rounds` calls, whatever the
//! statistics say. Once it has switched, every later call returns the same decision. Integer
//! arithmetic only; deterministic.

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
    /// Once the limit is met, keep copying while rounds shrink (see the module docs); when
    /// `false`, switch as soon as the predicted downtime meets the limit.
    pub minimize_downtime: bool,
    /// GPU auto-converge; `None` (the default) never throttles.
    pub throttle: Option<ThrottleConfig>,
}

impl Default for PolicyConfig {
    /// 300 ms downtime, 30 rounds, 10 % minimum shrink, minimize downtime, no throttling.
    fn default() -> Self {
        Self {
            downtime_limit_ms: 300,
            max_rounds: 30,
            min_shrink_percent: 10,
            minimize_downtime: true,
            throttle: None,
        }
    }
}

/// GPU auto-converge settings (see the module docs): how much of the vGPU's engine time to
/// take away while pre-copy does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ThrottleConfig {
    /// Throttle percentage of the first step (QEMU's `cpu-throttle-initial`, 20).
    pub initial_percent: u8,
    /// Added at every further step (QEMU's `cpu-throttle-increment`, 10).
    pub increment_percent: u8,
    /// The most it takes away (QEMU's `max-cpu-throttle`, 99); values above 99 count as 99,
    /// so the guest always keeps some engine time.
    pub max_percent: u8,
    /// Throttling steps up only while the predicted downtime is above this.
    pub target_downtime_ms: u32,
    /// Non-shrinking rounds in a row, with the prediction above the target, before the first
    /// step (QEMU throttles vCPUs after two dirty syncs in a row with a high dirty rate); until
    /// then pre-copy goes on unthrottled. 0 and 1 both mean the first such round.
    pub trigger_rounds: u32,
    /// Once it has throttled, switch as soon as the predicted downtime meets
    /// `target_downtime_ms` (and the policy's limit), instead of copying on under the throttle
    /// while rounds shrink: the guest is throttled no longer than the target needs.
    pub stop_at_target: bool,
}

impl Default for ThrottleConfig {
    /// QEMU's 20 % start, 10 % step and 99 % limit; a 50 ms downtime target; the first
    /// non-shrinking round steps; pre-copy goes on under the throttle while rounds shrink.
    fn default() -> Self {
        Self {
            initial_percent: 20,
            increment_percent: 10,
            max_percent: 99,
            target_downtime_ms: 50,
            trigger_rounds: 1,
            stop_at_target: false,
        }
    }
}

impl ThrottleConfig {
    /// The percentage after `current`: the start share first, then one step, at most the limit.
    #[must_use]
    pub fn next(&self, current: u8) -> u8 {
        let max = self.max_percent.min(99);
        let next = if current == 0 {
            self.initial_percent.max(1)
        } else {
            current.saturating_add(self.increment_percent.max(1))
        };
        next.min(max)
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

impl RoundStats {
    /// What stop-and-copy would send now: dirty pages plus device state (saturating).
    #[must_use]
    pub fn pending_bytes(&self) -> u64 {
        let left =
            u128::from(self.dirty_pages_left) * PAGE_BYTES + u128::from(self.device_state_bytes);
        u64::try_from(left).unwrap_or(u64::MAX)
    }
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
    /// The round limit was reached (for [`crate::baseline::StopAndCopy`]: a limit of zero
    /// pre-copy rounds).
    RoundCap,
    /// A baseline's iteration limit was reached without meeting its switch condition. The
    /// baseline itself (QEMU) would have kept iterating: this means *no convergence*.
    IterationLimit,
}

/// The reason in words, for logs and operator reports (`Debug` is the variant and its fields).
impl core::fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::DowntimeMet { predicted_us } => write!(
                f,
                "the predicted downtime ({predicted_us} µs) is within the limit"
            ),
            Self::NotShrinking => f.write_str("the dirty set stopped shrinking"),
            Self::RoundCap => f.write_str("the round limit was reached"),
            Self::IterationLimit => f.write_str(
                "the iteration limit was reached without convergence (the baseline would keep iterating)",
            ),
        }
    }
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

/// Migration progress as VFIO (`VFIO_MIG_GET_PRECOPY_INFO`, `MIG_DATA_SIZE`) and QEMU
/// (`query-migrate`) expose it, computed by a policy from the [`RoundStats`] it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MigrationStatus {
    /// Rounds (dirty syncs) seen so far: QEMU's `dirty-sync-count`.
    pub round: u32,
    /// Size of the initial copy: the bytes of the first round that sent anything (0 before
    /// it). VFIO's `initial_bytes` counts this down while that round runs and is 0 after it.
    pub initial_bytes: u64,
    /// What stop-and-copy would send now, dirty pages plus device state, after the last round:
    /// VFIO's `dirty_bytes` / `stop_copy_length`, QEMU's `remaining`.
    pub dirty_bytes: u64,
    /// The policy's own downtime prediction in microseconds (QEMU's `expected-downtime`), or
    /// `None` before any bandwidth sample.
    pub expected_downtime_us: Option<u64>,
    /// Bytes sent over all rounds (saturating): QEMU's `transferred`.
    pub bytes_sent: u64,
    /// The bandwidth estimate in bytes per second, or `None` before any sample.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Bytes dirtied per second during the last round (its dirty set over its duration):
    /// QEMU's `dirty-pages-rate` in bytes. `None` if the round had no duration.
    pub dirty_rate_bytes_per_sec: Option<u64>,
    /// Why the policy switched, once it has.
    pub switched: Option<SwitchReason>,
}

/// `num × 1_000_000 / den` rounded up, saturating; `None` if `den` is 0.
fn per_second(num: u64, den_us: u64) -> Option<u64> {
    let v = (u128::from(num) * 1_000_000).checked_div(u128::from(den_us))?;
    Some(u64::try_from(v).unwrap_or(u64::MAX))
}

/// `bytes` at `bw = (sample_bytes, sample_us)`, in µs rounded up, saturating.
fn duration_us(bytes: u64, bw: (u64, u64)) -> u64 {
    let (b, us) = bw;
    if b == 0 {
        return u64::MAX;
    }
    // u64 × u64 always fits u128.
    let x = u128::from(bytes) * u128::from(us);
    u64::try_from(x.div_ceil(u128::from(b))).unwrap_or(u64::MAX)
}

/// Bookkeeping shared by every policy: rounds, bytes, bandwidth, status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct Tracker {
    status: MigrationStatus,
    /// Last bandwidth sample as (bytes, microseconds), both non-zero.
    bandwidth: Option<(u64, u64)>,
}

impl Tracker {
    pub(crate) const fn new() -> Self {
        Self {
            status: MigrationStatus {
                round: 0,
                initial_bytes: 0,
                dirty_bytes: 0,
                expected_downtime_us: None,
                bytes_sent: 0,
                bandwidth_bytes_per_sec: None,
                dirty_rate_bytes_per_sec: None,
                switched: None,
            },
            bandwidth: None,
        }
    }

    /// A bandwidth sample; ignored if either figure is 0.
    pub(crate) fn sample(&mut self, bytes: u64, us: u64) {
        if bytes != 0 && us != 0 {
            self.bandwidth = Some((bytes, us));
            self.status.bandwidth_bytes_per_sec = per_second(bytes, us);
        }
    }

    /// Records a round; returns the rounds seen including this one.
    pub(crate) fn observe(&mut self, s: &RoundStats) -> u32 {
        let st = &mut self.status;
        st.round = st.round.saturating_add(1);
        if st.initial_bytes == 0 {
            st.initial_bytes = s.bytes_sent;
        }
        st.bytes_sent = st.bytes_sent.saturating_add(s.bytes_sent);
        st.dirty_bytes = s.pending_bytes();
        let dirty = u64::try_from(u128::from(s.dirty_pages_left) * PAGE_BYTES).unwrap_or(u64::MAX);
        st.dirty_rate_bytes_per_sec = per_second(dirty, s.elapsed_us);
        self.sample(s.bytes_sent, s.elapsed_us);
        self.status.round
    }

    /// `bytes` at the current bandwidth estimate, in µs.
    pub(crate) fn time_us(&self, bytes: u64) -> Option<u64> {
        self.bandwidth.map(|bw| duration_us(bytes, bw))
    }

    pub(crate) const fn set_expected(&mut self, us: Option<u64>) {
        self.status.expected_downtime_us = us;
    }

    pub(crate) const fn switched(&self) -> Option<SwitchReason> {
        self.status.switched
    }

    /// Latches the decision.
    pub(crate) const fn decide(&mut self, reason: Option<SwitchReason>) -> Decision {
        match reason {
            Some(r) => {
                self.status.switched = Some(r);
                Decision::StopAndCopy(r)
            }
            None => Decision::Continue,
        }
    }

    pub(crate) const fn status(&self) -> MigrationStatus {
        self.status
    }
}

/// A pre-copy policy: fed each round's statistics, it says when to switch to stop-and-copy.
///
/// The embedder runs rounds and calls [`PrecopyPolicy::on_round`] after each dirty sync; it
/// may call [`PrecopyPolicy::on_progress`] with bandwidth samples taken inside a round, must
/// honour [`PrecopyPolicy::rate_limit_bytes_per_sec`], and may end a round early (sync the
/// dirty log) once the bytes still owed from the current pass are at most
/// [`PrecopyPolicy::early_sync_bytes`].
pub trait PrecopyPolicy {
    /// A short name for reports.
    fn name(&self) -> &'static str;

    /// Feeds one round's statistics and returns the decision. Once a policy has decided to
    /// switch, it returns that decision again on every later call.
    fn on_round(&mut self, stats: RoundStats) -> Decision;

    /// A bandwidth sample taken during a round (QEMU samples every 100 ms). Default: ignored.
    fn on_progress(&mut self, bytes_sent: u64, elapsed_us: u64) {
        let _ = (bytes_sent, elapsed_us);
    }

    /// A round may end early once at most this many bytes of the pass remain. Default 0:
    /// every round finishes its pass.
    fn early_sync_bytes(&self) -> u64 {
        0
    }

    /// The sending rate the policy allows, or `None` for the link rate. Default `None`.
    fn rate_limit_bytes_per_sec(&self) -> Option<u64> {
        None
    }

    /// Percentage of the vGPU's engine time the embedder should take away now (GPU
    /// auto-converge), 0..=99. Default 0: never throttles.
    fn throttle_percent(&self) -> u8 {
        0
    }

    /// Progress as VFIO and QEMU expose it.
    fn status(&self) -> MigrationStatus;
}

/// This crate's pre-copy policy; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Policy {
    config: PolicyConfig,
    prev_dirty: Option<u64>,
    stalls: u32,
    throttle: u8,
    track: Tracker,
}

impl Policy {
    /// A fresh policy.
    #[must_use]
    pub const fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            prev_dirty: None,
            stalls: 0,
            throttle: 0,
            track: Tracker::new(),
        }
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Percentage of the vGPU's engine time to take away now (0 without auto-converge).
    #[must_use]
    pub const fn throttle_percent(&self) -> u8 {
        self.throttle
    }

    /// Rounds seen so far.
    #[must_use]
    pub const fn rounds(&self) -> u32 {
        self.track.status.round
    }

    /// The downtime predicted after the last round, in microseconds, or `None` before any
    /// bandwidth sample.
    #[must_use]
    pub const fn expected_downtime_us(&self) -> Option<u64> {
        self.track.status.expected_downtime_us
    }

    /// The estimated bandwidth in bytes per second, or `None` before any sample.
    #[must_use]
    pub const fn bandwidth_bytes_per_sec(&self) -> Option<u64> {
        self.track.status.bandwidth_bytes_per_sec
    }

    /// Progress as VFIO and QEMU expose it.
    #[must_use]
    pub const fn status(&self) -> MigrationStatus {
        self.track.status()
    }

    /// Feeds one round's statistics and returns the decision.
    pub fn on_round(&mut self, stats: RoundStats) -> Decision {
        if let Some(reason) = self.track.switched() {
            return Decision::StopAndCopy(reason);
        }
        let rounds = self.track.observe(&stats);
        let predicted = self.track.time_us(stats.pending_bytes());
        self.track.set_expected(predicted);
        let dirty = stats.dirty_pages_left;
        let shrink_ok = match self.prev_dirty {
            None => true,
            Some(prev) => {
                let keep = 100u128.saturating_sub(u128::from(self.config.min_shrink_percent));
                dirty < prev && u128::from(dirty) * 100 <= u128::from(prev) * keep
            }
        };
        self.prev_dirty = Some(dirty);
        self.stalls = if shrink_ok {
            0
        } else {
            self.stalls.saturating_add(1)
        };

        let limit_us = u64::from(self.config.downtime_limit_ms) * 1000;
        let capped = rounds >= self.config.max_rounds.max(1);
        // Auto-converge: a round that did not shrink the set while the prediction is above the
        // throttle target steps the throttle up (and gives the new share rounds to act) instead
        // of counting toward a switch, until the throttle is at its limit.
        if let Some(t) = self.config.throttle {
            let target_us = u64::from(t.target_downtime_ms) * 1000;
            if let Some(p) = predicted
                && t.stop_at_target
                && self.throttle > 0
                && p <= target_us.min(limit_us)
            {
                return self
                    .track
                    .decide(Some(SwitchReason::DowntimeMet { predicted_us: p }));
            }
            if !shrink_ok && !capped && predicted.is_none_or(|p| p > target_us) {
                let next = t.next(self.throttle);
                if next > self.throttle {
                    // Before the first step, wait for `trigger_rounds` stalls in a row (the
                    // stall count goes on; a shrinking round resets it).
                    if self.throttle == 0 && self.stalls < t.trigger_rounds {
                        return self.track.decide(None);
                    }
                    self.throttle = next;
                    self.stalls = 0;
                    return self.track.decide(None);
                }
            }
        }
        let reason = match predicted {
            Some(p) if p <= limit_us => {
                let more = self.config.minimize_downtime && shrink_ok && dirty != 0 && !capped;
                (!more).then_some(SwitchReason::DowntimeMet { predicted_us: p })
            }
            _ if capped => Some(SwitchReason::RoundCap),
            _ if self.stalls >= STALL_ROUNDS => Some(SwitchReason::NotShrinking),
            _ => None,
        };
        self.track.decide(reason)
    }
}

impl PrecopyPolicy for Policy {
    fn name(&self) -> &'static str {
        if self.config.throttle.is_some() {
            "gmem (auto-converge)"
        } else if self.config.minimize_downtime {
            "gmem (minimize)"
        } else {
            "gmem (limit)"
        }
    }

    fn on_round(&mut self, stats: RoundStats) -> Decision {
        Self::on_round(self, stats)
    }

    fn throttle_percent(&self) -> u8 {
        self.throttle
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
    use proptest::prelude::*;

    #[test]
    fn switch_reasons_read_as_words() {
        use std::string::ToString;
        let met = SwitchReason::DowntimeMet { predicted_us: 977 };
        assert_eq!(
            met.to_string(),
            "the predicted downtime (977 µs) is within the limit"
        );
        assert_eq!(
            SwitchReason::NotShrinking.to_string(),
            "the dirty set stopped shrinking"
        );
        assert!(!SwitchReason::RoundCap.to_string().contains("RoundCap"));
        assert!(
            SwitchReason::IterationLimit
                .to_string()
                .contains("without convergence")
        );
    }

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
            (
                c.downtime_limit_ms,
                c.max_rounds,
                c.min_shrink_percent,
                c.minimize_downtime
            ),
            (300, 30, 10, true)
        );
    }

    /// A dirty set stuck above the target steps the throttle 20, 30, ... up to the limit,
    /// continuing meanwhile; at the limit the usual stall rule switches. Off by default.
    #[test]
    fn throttle_steps_while_not_converging() {
        // 1000 bytes/µs; 50_000 pages = 204.8 ms predicted, above the 50 ms target.
        let t = ThrottleConfig {
            max_percent: 50,
            ..ThrottleConfig::default()
        };
        let mut p = Policy::new(PolicyConfig {
            throttle: Some(t),
            ..PolicyConfig::default()
        });
        assert_eq!(
            p.on_round(round(0, 50_000, 1_000_000_000, 1_000_000)),
            Decision::Continue
        );
        assert_eq!(p.throttle_percent(), 0);
        for want in [20, 30, 40, 50] {
            assert_eq!(
                p.on_round(round(1, 50_000, 200_000_000, 200_000)),
                Decision::Continue
            );
            assert_eq!(p.throttle_percent(), want);
        }
        // At the limit: minimize stops on the first non-shrinking round under the 300 ms limit.
        assert!(matches!(
            p.on_round(round(1, 50_000, 200_000_000, 200_000)),
            Decision::StopAndCopy(SwitchReason::DowntimeMet { .. })
        ));
        assert_eq!(PrecopyPolicy::throttle_percent(&p), 50);
        // Without a throttle config the same trace switches at once and never throttles.
        let mut q = Policy::new(PolicyConfig::default());
        q.on_round(round(0, 50_000, 1_000_000_000, 1_000_000));
        assert!(matches!(
            q.on_round(round(1, 50_000, 200_000_000, 200_000)),
            Decision::StopAndCopy(_)
        ));
        assert_eq!(q.throttle_percent(), 0);
        // Under the target it does not throttle either.
        let mut r = Policy::new(PolicyConfig {
            throttle: Some(t),
            ..PolicyConfig::default()
        });
        r.on_round(round(0, 5_000, 1_000_000_000, 1_000_000));
        r.on_round(round(1, 5_000, 200_000_000, 200_000));
        assert_eq!(r.throttle_percent(), 0);
        assert_eq!(ThrottleConfig::default().next(95), 99);
    }

    /// `trigger_rounds: 2` waits for a second non-shrinking round before the first step (a
    /// shrinking round in between starts the count again), and `stop_at_target` switches on
    /// the first throttled round whose prediction meets the target, although it shrank.
    #[test]
    fn throttle_trigger_and_stop_at_target() {
        // 1000 bytes/µs: 50_000 pages predict 204.8 ms, above the 95 ms target.
        let t = ThrottleConfig {
            initial_percent: 70,
            increment_percent: 5,
            max_percent: 80,
            target_downtime_ms: 95,
            trigger_rounds: 2,
            stop_at_target: true,
        };
        let mut p = Policy::new(PolicyConfig {
            throttle: Some(t),
            ..PolicyConfig::default()
        });
        let full = |dirty| round(0, dirty, 200_000_000, 200_000);
        assert_eq!(p.on_round(full(50_000)), Decision::Continue);
        // First stall: the plain policy would switch here (204.8 ms is under the 300 ms
        // limit); this one copies on, unthrottled.
        assert_eq!(p.on_round(full(50_000)), Decision::Continue);
        assert_eq!(p.throttle_percent(), 0);
        // A shrinking round resets the count; the next stall is again only the first.
        assert_eq!(p.on_round(full(40_000)), Decision::Continue);
        assert_eq!(p.on_round(full(40_000)), Decision::Continue);
        assert_eq!(p.throttle_percent(), 0);
        // Second stall in a row: the first step.
        assert_eq!(p.on_round(full(40_000)), Decision::Continue);
        assert_eq!(p.throttle_percent(), 70);
        // Throttled, the set falls to 22_000 pages (90.1 ms <= 95): switch now, although it
        // shrank by 45 % (minimize alone would copy on under the throttle).
        assert_eq!(
            p.on_round(full(22_000)),
            Decision::StopAndCopy(SwitchReason::DowntimeMet {
                predicted_us: 90_112
            })
        );
        assert_eq!(p.throttle_percent(), 70);

        // Without stop_at_target the same throttled round copies on (it shrank), and the
        // throttle stays on until a round stops shrinking.
        let mut q = Policy::new(PolicyConfig {
            throttle: Some(ThrottleConfig {
                stop_at_target: false,
                ..t
            }),
            ..PolicyConfig::default()
        });
        for dirty in [50_000, 50_000, 50_000] {
            assert_eq!(q.on_round(full(dirty)), Decision::Continue);
        }
        assert_eq!(q.throttle_percent(), 70);
        assert_eq!(q.on_round(full(22_000)), Decision::Continue);
        assert!(matches!(
            q.on_round(full(21_000)),
            Decision::StopAndCopy(SwitchReason::DowntimeMet { .. })
        ));

        // stop_at_target never switches above the policy's own limit (target 95 ms, limit
        // 50 ms: 22_000 pages, 90.1 ms, is not enough) nor before any throttling.
        let mut r = Policy::new(PolicyConfig {
            downtime_limit_ms: 50,
            throttle: Some(ThrottleConfig {
                trigger_rounds: 1,
                ..t
            }),
            ..PolicyConfig::default()
        });
        assert_eq!(r.on_round(full(22_000)), Decision::Continue);
        assert_eq!(r.throttle_percent(), 0);
        assert_eq!(r.on_round(full(50_000)), Decision::Continue);
        assert_eq!(r.throttle_percent(), 70);
        assert_eq!(r.on_round(full(22_000)), Decision::Continue);
        // trigger_rounds 0 counts as 1 (the default's behaviour).
        let mut z = Policy::new(PolicyConfig {
            throttle: Some(ThrottleConfig {
                trigger_rounds: 0,
                ..t
            }),
            ..PolicyConfig::default()
        });
        z.on_round(full(50_000));
        assert_eq!(z.on_round(full(50_000)), Decision::Continue);
        assert_eq!(z.throttle_percent(), 70);
    }

    #[test]
    fn converging_trace_meets_downtime() {
        // 1 GB/s link = 1000 bytes per µs. 300 ms allows 300 MB = 73_242 pages.
        let mut p = Policy::new(PolicyConfig {
            minimize_downtime: false,
            ..PolicyConfig::default()
        });
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
    fn minimize_keeps_copying_while_shrinking() {
        // Same trace as above, default config: the limit is met at round 2 but the set keeps
        // halving, so it copies on until a round shrinks by less than 10 %.
        let mut p = Policy::new(PolicyConfig::default());
        assert_eq!(p.name(), "gmem (minimize)");
        for (dirty, bytes) in [
            (200_000, 1_000_000_000),
            (100_000, 800_000_000),
            (50_000, 400_000_000),
            (10_000, 200_000_000),
        ] {
            assert_eq!(
                p.on_round(round(0, dirty, bytes, bytes / 1000)),
                Decision::Continue
            );
        }
        // 9_500 is only 5 % fewer: switch now, predicted 9_500 × 4096 / 1000 µs.
        let d = p.on_round(round(0, 9_500, 40_960_000, 40_960));
        assert_eq!(
            d,
            Decision::StopAndCopy(SwitchReason::DowntimeMet {
                predicted_us: 38_912
            })
        );
        let st = p.status();
        assert_eq!(st.round, 5);
        assert_eq!(st.initial_bytes, 1_000_000_000);
        assert_eq!(st.bytes_sent, 2_440_960_000);
        assert_eq!(st.dirty_bytes, 38_912_000);
        assert_eq!(st.expected_downtime_us, Some(38_912));
        assert_eq!(st.bandwidth_bytes_per_sec, Some(1_000_000_000));
        // 9_500 pages dirtied during a 40.96 ms round.
        assert_eq!(st.dirty_rate_bytes_per_sec, Some(950_000_000));
        assert_eq!(st.switched, d_reason(d));
    }

    fn d_reason(d: Decision) -> Option<SwitchReason> {
        match d {
            Decision::Continue => None,
            Decision::StopAndCopy(r) => Some(r),
        }
    }

    #[test]
    fn minimize_stops_at_zero_and_at_cap() {
        let mut p = Policy::new(PolicyConfig::default());
        assert_eq!(p.on_round(round(0, 10, 1000, 1)), Decision::Continue);
        // Nothing left to shrink: switch even though the round shrank.
        assert_eq!(
            p.on_round(round(0, 0, 1000, 1)),
            Decision::StopAndCopy(SwitchReason::DowntimeMet { predicted_us: 0 })
        );
        let mut p = Policy::new(PolicyConfig {
            max_rounds: 2,
            ..PolicyConfig::default()
        });
        assert_eq!(p.on_round(round(0, 1000, 1000, 1)), Decision::Continue);
        assert_eq!(
            p.on_round(round(0, 500, 1000, 1)),
            Decision::StopAndCopy(SwitchReason::DowntimeMet { predicted_us: 2048 })
        );
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
                             minimize in any::<bool>(),
                             throttle in proptest::option::of(
                                 any::<(u8, u8, u8, u32, u32, bool)>()),
                             trace in proptest::collection::vec(stats(), 40)) {
            // Auto-converge never delays the round cap.
            let throttle = throttle.map(|(a, b, c, d, e, f)| ThrottleConfig {
                initial_percent: a,
                increment_percent: b,
                max_percent: c,
                target_downtime_ms: d,
                trigger_rounds: e,
                stop_at_target: f,
            });
            let mut p = Policy::new(PolicyConfig {
                downtime_limit_ms: limit,
                max_rounds,
                min_shrink_percent: shrink,
                minimize_downtime: minimize,
                throttle,
            });
            let mut stopped_at = None;
            for (i, s) in trace.iter().enumerate() {
                prop_assert!(p.throttle_percent() <= 99);
                if let Decision::StopAndCopy(_) = p.on_round(*s) {
                    stopped_at.get_or_insert(i + 1);
                }
            }
            let n = stopped_at.unwrap();
            prop_assert!(n <= max_rounds.max(1) as usize);
        }
    }
}
