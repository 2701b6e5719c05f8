//! The `REGISTERS` record as a [`migstream::Section`]: the sparse register payload of
//! [`RegFile::save_sparse`](crate::RegFile::save_sparse) (SPEC.md Appendix A.2).

use migstream::{RecordKind, Saved, Section};

use crate::error::MmioError;
use crate::platform::Platform;
use crate::regfile::{RegFile, RegHooks};
use crate::sparse::{SPARSE_VERSION, validate_sparse};

/// The `REGISTERS` record: written in format [`SPARSE_VERSION`] (2: registers outside the table
/// travel too); version 1 (table registers only, a subset with the same meaning) is read as well.
///
/// Bounded by [`Platform::max_sparse_len`]; saved from a [`RegFile`]; checked against the
/// receiving [`Platform`] ([`validate_sparse`]); applied with the register file's side-effect
/// hooks ([`RegFile::apply_sparse`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RegistersSection;

impl Section for RegistersSection {
    const KIND: RecordKind = RecordKind::REGISTERS;
    const VERSION: u8 = SPARSE_VERSION;

    fn reads(version: u8) -> bool {
        version == SPARSE_VERSION || version == 1
    }

    type Error = MmioError;
    type Config<'a> = &'a Platform;
    type Source<'a> = &'a RegFile<'a>;
    type Check<'a> = &'a Platform;
    type Checked = ();
    type Target<'a, 'b>
        = (&'a mut RegFile<'b>, &'a mut dyn RegHooks)
    where
        'b: 'a;

    fn max_len(platform: &&Platform) -> usize {
        platform.max_sparse_len()
    }

    fn save(regs: &&RegFile<'_>, _from: usize, out: &mut [u8]) -> Result<Saved, MmioError> {
        regs.save_sparse(out).map(Saved::whole)
    }

    fn validate(platform: &&Platform, payload: &[u8]) -> Result<(), MmioError> {
        validate_sparse(platform, payload)
    }

    fn apply((regs, mut hooks): Self::Target<'_, '_>, payload: &[u8]) -> Result<(), MmioError> {
        regs.apply_sparse(payload, &mut hooks)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use crate::{AccessSize, MMIO_DWORDS, NoHooks, SKL};
    extern crate std;
    use std::vec;

    #[test]
    fn round_trip_through_the_section() {
        let mut a = vec![0u32; MMIO_DWORDS];
        let mut src = RegFile::new(&SKL, &mut a).unwrap();
        src.write(0x229C, AccessSize::Dword, 0x8000_8000, &mut NoHooks)
            .unwrap();
        let mut buf = [0u8; 256];
        let saved = RegistersSection::save(&&src, 0, &mut buf).unwrap();
        assert_eq!(saved.next, None);
        assert!(saved.written <= RegistersSection::max_len(&&SKL));
        let payload = &buf[..saved.written];
        RegistersSection::validate(&&SKL, payload).unwrap();
        let mut b = vec![0u32; MMIO_DWORDS];
        let mut dst = RegFile::new(&SKL, &mut b).unwrap();
        RegistersSection::apply((&mut dst, &mut NoHooks), payload).unwrap();
        assert_eq!(dst.read(0x229C, AccessSize::Dword).unwrap(), 0x8000);
        assert!(RegistersSection::reads(1) && RegistersSection::reads(2));
        assert!(!RegistersSection::reads(3));
    }
}
