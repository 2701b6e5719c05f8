//! The round policy: what ends a round, the statistics the pre-copy policy decides on, the
//! events the driver sees, and VFIO's size estimates.

use gmem::{Decision, RoundStats};

use super::{MemoryMode, Phase, PrecopyInfo, SourceEvent, SourceSession};
use crate::error::VgpuError;
use crate::instance::{CONFIG_SPACE_SIZE, Vgpu};
use crate::traits::{CpuDirtyLog, VgpuAccess};

impl SourceSession<'_> {
    pub(super) fn begin_round(&mut self) {
        self.round_start_bytes = self.bytes_written();
        for c in self.chans.iter_mut() {
            c.cursor = 0;
            c.settled = 0;
            c.round_done = false;
            c.round_pages = 0;
            c.round_zero = 0;
            c.round_start_bytes = c.enc.bytes_written();
        }
    }

    /// Every channel has sent its share of the round.
    pub(super) fn round_end(
        &mut self,
        dev: &dyn VgpuAccess,
        cpu: &mut dyn CpuDirtyLog,
        now_us: u64,
    ) -> Result<(), VgpuError> {
        let bytes = self.bytes_written() - self.round_start_bytes;
        let (pages, zero_pages) = self
            .chans
            .iter()
            .fold((0, 0), |(p, z), c| (p + c.round_pages, z + c.round_zero));
        if self.phase == Phase::FinalRound {
            self.push_event(SourceEvent::RoundEnd {
                round: self.round,
                pages,
                zero_pages,
                bytes,
                dirty_left: 0,
            });
            self.phase = Phase::STATE;
            return Ok(());
        }
        self.harvest(dev, cpu)?;
        let dirty_left = self.send.count() as u64;
        self.push_event(SourceEvent::RoundEnd {
            round: self.round,
            pages,
            zero_pages,
            bytes,
            dirty_left,
        });
        let started = self.round_start_us.unwrap_or(now_us);
        let mut device_state_bytes = 0;
        dev.with_vgpu(&mut |vgpu| device_state_bytes = self.device_state_estimate(vgpu));
        let stats = RoundStats {
            round: self.round,
            dirty_pages_left: dirty_left,
            bytes_sent: bytes,
            // A round too short to time still took some time.
            elapsed_us: now_us.saturating_sub(started).max(1),
            device_state_bytes,
        };
        match self.policy.on_round(stats) {
            Decision::Continue => {
                self.round = self.round.saturating_add(1);
                self.begin_round();
                self.round_start_us = Some(now_us);
                self.phase = Phase::Round;
            }
            Decision::StopAndCopy(reason) => {
                self.push_event(SourceEvent::Switch {
                    reason,
                    predicted_downtime_us: self.policy.expected_downtime_us(),
                });
                self.round = self.round.saturating_add(1);
                self.phase = Phase::AwaitStop;
            }
        }
        Ok(())
    }

    pub(super) fn push_event(&mut self, e: SourceEvent) {
        #[cfg(feature = "log")]
        match e {
            SourceEvent::RoundEnd {
                round,
                pages,
                bytes,
                dirty_left,
                ..
            } => ::log::debug!(
                "vgpu source: round {round} sent {pages} pages in {bytes} bytes; {dirty_left} pages dirtied meanwhile"
            ),
            SourceEvent::Switch {
                reason,
                predicted_downtime_us,
            } => match predicted_downtime_us {
                Some(us) => ::log::info!(
                    "vgpu source: stop-and-copy advised: {reason} (predicted downtime {us} µs)"
                ),
                None => ::log::info!("vgpu source: stop-and-copy advised: {reason}"),
            },
            SourceEvent::Finished { bytes, records } => {
                ::log::info!("vgpu source: stream complete, {bytes} bytes in {records} records");
            }
        }
        if self.events.is_full() {
            // The driver did not drain events; keep the newest (the oldest are round summaries).
            let _ = self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }

    /// VFIO's pre-copy information (`VFIO_MIG_GET_PRECOPY_INFO`): bytes of the initial copy still
    /// to send, and bytes dirtied since that the next rounds will carry. Page counts are converted
    /// at 4 KiB a page (zero pages cost much less on the wire, so these are upper bounds).
    pub fn precopy_info(&self, dev: &dyn VgpuAccess) -> PrecopyInfo {
        if self.cfg.memory == MemoryMode::Report {
            // Guest memory is the VMM's to copy; the device's own data is the stop-copy state.
            return PrecopyInfo {
                initial_bytes: 0,
                dirty_bytes: 0,
            };
        }
        let pending = self.send.count() as u64 * 4096;
        let fresh = dev.gpu_dirty().count() as u64 * 4096;
        if self.round == 0 && self.phase == Phase::Round {
            PrecopyInfo {
                initial_bytes: pending,
                dirty_bytes: fresh,
            }
        } else {
            PrecopyInfo {
                initial_bytes: 0,
                dirty_bytes: pending + fresh,
            }
        }
    }

    /// VFIO's `stop_copy_length` estimate: what stop-and-copy would send if it started now (the
    /// dirty pages known so far plus the device state).
    pub fn stop_copy_estimate(&self, vgpu: &Vgpu<'_>) -> u64 {
        if self.cfg.memory == MemoryMode::Report {
            return self.device_state_estimate(vgpu);
        }
        (self.send.count() + vgpu.gpu_dirty_count()) as u64 * 4096
            + self.device_state_estimate(vgpu)
    }

    /// Upper bound of the device state sent in stop-and-copy, for the policy's downtime prediction.
    /// After a GGTT pre-copy only the changed entries count.
    pub(super) fn device_state_estimate(&self, vgpu: &Vgpu<'_>) -> u64 {
        device_state_estimate(self.ggtt_sent.as_deref(), self.pre_ggtt, vgpu)
    }
}

/// Upper bound of the device state sent in stop-and-copy, for the policy's downtime prediction.
/// After a GGTT pre-copy (`sent`, finished when `pre_ggtt` is `None`) only the changed entries
/// count.
pub(super) fn device_state_estimate(
    sent: Option<&[u64]>,
    pre_ggtt: Option<usize>,
    vgpu: &Vgpu<'_>,
) -> u64 {
    let entries = vgpu.ggtt().entries();
    let ggtt = match (sent, pre_ggtt) {
        (Some(sent), None) => entries
            .iter()
            .zip(sent.iter())
            .filter(|(a, b)| a != b)
            .count(),
        _ => vgpu.ggtt().iter_present().count(),
    } as u64
        * 8;
    (CONFIG_SPACE_SIZE + vgpu.regs().sparse_len() + vgpu.engines().save_len()) as u64 + ggtt + 256
}
