//! The device state: records in the order of the device-state table ([`DEVICE_STATE`]), and the
//! GGTT pre-copy.

use migstream::RecordKind;

use super::Phase;
use crate::error::VgpuError;
use crate::instance::Vgpu;
use crate::sections::{Count, DEVICE_STATE};

/// One chunk of the GGTT pre-copy from `from` into `scratch`, remembering in `sent` what it
/// carried. Returns the bytes written and where the pre-copy continues (`None`: done).
pub(super) fn ggtt_precopy_chunk(
    vgpu: &Vgpu<'_>,
    from: usize,
    scratch: &mut [u8],
    sent: Option<&mut [u64]>,
) -> Result<(usize, Option<usize>), VgpuError> {
    let source = gtt::runs::RunsSource {
        slices: vgpu.ggtt(),
        sent: None,
    };
    let p = <gtt::GgttRunsSection as migstream::Section>::save(&source, from, scratch)?;
    let entries = vgpu.ggtt().entries();
    let end = p.next.unwrap_or(entries.len());
    if let Some(sent) = sent {
        let (dst, src) = (sent.get_mut(from..end), entries.get(from..end));
        if let (Some(d), Some(s)) = (dst, src) {
            d.copy_from_slice(s);
        }
    }
    Ok((p.written, p.next))
}

/// The next device-state record (after the stop) into `scratch`, in the order of
/// [`DEVICE_STATE`], advancing `phase` past it (and past sections with nothing to send); `None`
/// when the phase has no record (END is next, or pages are).
pub(super) fn device_record(
    phase: &mut Phase,
    ggtt_sent: Option<&[u64]>,
    vgpu: &Vgpu<'_>,
    scratch: &mut [u8],
) -> Result<Option<(RecordKind, u8, usize)>, VgpuError> {
    loop {
        let Phase::State { row, from } = *phase else {
            return Ok(None);
        };
        let Some(part) = DEVICE_STATE.get(row) else {
            *phase = Phase::End;
            return Ok(None);
        };
        let saved = part.save(vgpu, ggtt_sent, from, scratch)?;
        *phase = match saved.next {
            Some(from) => Phase::State { row, from },
            None => Phase::State {
                row: row + 1,
                from: 0,
            },
        };
        // A section of several records sends no empty one.
        if saved.written == 0 && part.count() == Count::Groups {
            continue;
        }
        return Ok(Some((part.kind(), part.version(), saved.written)));
    }
}
