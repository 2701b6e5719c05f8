//! Device-state sections: how a component owns its records.
//!
//! The stream carries device state as records of kinds this crate only frames (SPEC.md §6). The
//! component whose state a record holds owns everything else about it, through [`Section`]: the
//! kind and version it writes, the versions it reads, the longest payload a valid record can
//! have under a configuration, how the record is saved into a caller buffer, checked against the
//! receiving device, and applied. The crate that orders the sections (the vGPU) names each once,
//! in one table, and the table drives both ends.
//!
//! Nothing here knows what a section holds: the state a record is saved from, checked against
//! and applied to are the implementor's own types.

use crate::record::RecordKind;

/// One record of a [`Section`] saved: the bytes written at the start of the caller's buffer, and
/// where the section continues in another record of the same kind (`None`: complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Saved {
    /// Payload bytes written.
    pub written: usize,
    /// Where the next record of the section starts (an opaque position the section gave), or
    /// `None` when nothing of the section is left.
    pub next: Option<usize>,
}

impl Saved {
    /// A section saved whole into one record of `written` bytes.
    #[must_use]
    pub const fn whole(written: usize) -> Self {
        Self {
            written,
            next: None,
        }
    }
}

/// A kind of device-state record and the component that owns it.
///
/// Implemented by the owning component on a type of its own (usually a unit marker): the wire
/// identity ([`KIND`](Self::KIND), [`VERSION`](Self::VERSION), [`reads`](Self::reads)), the
/// bound a reader checks a length against before it stores anything ([`max_len`](Self::max_len)),
/// the writer's side ([`save`](Self::save)), and the reader's two steps: [`validate`](Self::validate)
/// checks a payload against the receiving device without changing anything, and
/// [`apply`](Self::apply) writes a validated one. Each step takes the borrowed state it needs as
/// an associated type, so a section needs no allocation and no knowledge of the others.
pub trait Section {
    /// The record kind on the wire.
    const KIND: RecordKind;
    /// The record-format version a writer puts on the record.
    const VERSION: u8;
    /// Whether a reader restores a record of this kind in format `version` (by default only
    /// [`VERSION`](Self::VERSION)); anything else is refused rather than misread (SPEC.md §7).
    #[must_use]
    fn reads(version: u8) -> bool {
        version == Self::VERSION
    }

    /// Why a payload was refused or a save failed.
    type Error;
    /// What bounds a payload: the receiving device's configuration.
    type Config<'a>;
    /// What a record is saved from.
    type Source<'a>;
    /// What a payload is checked against (the receiving device, and whatever else the checks
    /// read: guest memory, the hardware generation).
    type Check<'a>;
    /// What a check found that the apply step can use (walked page-table roots, entry counts),
    /// or `()`.
    type Checked;
    /// What a validated payload is applied to: borrowed for `'a` from state that lives for `'b`.
    type Target<'a, 'b>
    where
        'b: 'a;

    /// The longest payload a valid record of this kind has under `config`: a longer one is damage
    /// or hostility, refused before it is stored.
    fn max_len(config: &Self::Config<'_>) -> usize;

    /// Write one record's payload at the start of `out`, from position `from` of the section (0
    /// for its start, otherwise a [`Saved::next`] this section returned).
    ///
    /// # Errors
    /// The section's error when `out` cannot hold the next record, or the state cannot be saved.
    fn save(source: &Self::Source<'_>, from: usize, out: &mut [u8]) -> Result<Saved, Self::Error>;

    /// Check `payload` against `check` completely, changing nothing.
    ///
    /// # Errors
    /// The first rule the payload breaks.
    fn validate(check: &Self::Check<'_>, payload: &[u8]) -> Result<Self::Checked, Self::Error>;

    /// Write a payload [`validate`](Self::validate) accepted into `target`.
    ///
    /// # Errors
    /// A failure the validation could not foresee (a local resource); structural damage is
    /// refused again, never half applied.
    fn apply(target: Self::Target<'_, '_>, payload: &[u8]) -> Result<(), Self::Error>;
}
