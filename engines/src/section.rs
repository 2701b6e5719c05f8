//! The `ENGINE_STATE` record as a [`migstream::Section`] (SPEC.md Appendix A.5): the payload of
//! [`Engines::save`].

use migstream::{RecordKind, Saved, Section};

use crate::error::EngineError;
use crate::state::{Engines, MAX_SAVE_LEN, PAYLOAD_VERSION};

/// The `ENGINE_STATE` record: every present engine's ring, execlist and CSB state and its queued
/// work. Saved from quiesced [`Engines`], at most [`MAX_SAVE_LEN`] bytes; checked against the
/// receiving engines' layout ([`Engines::validate`]); applied with [`Engines::apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EngineSection;

impl Section for EngineSection {
    const KIND: RecordKind = RecordKind::ENGINE_STATE;
    const VERSION: u8 = PAYLOAD_VERSION;

    type Error = EngineError;
    type Config<'a> = ();
    type Source<'a> = &'a Engines;
    type Check<'a> = &'a Engines;
    type Checked = ();
    type Target<'a, 'b>
        = &'a mut Engines
    where
        'b: 'a;

    fn max_len(_: &()) -> usize {
        MAX_SAVE_LEN
    }

    fn save(engines: &&Engines, _from: usize, out: &mut [u8]) -> Result<Saved, EngineError> {
        engines.save(out).map(Saved::whole)
    }

    fn validate(engines: &&Engines, payload: &[u8]) -> Result<(), EngineError> {
        engines.validate(payload)
    }

    fn apply(engines: &mut Engines, payload: &[u8]) -> Result<(), EngineError> {
        engines.apply(payload)
    }
}
