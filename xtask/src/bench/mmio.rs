//! B12: sparse save and restore of the virtual MMIO register file (issue 5).
//!
//! The register file is fully populated: every migratable register of the gen9 table holds a
//! non-reset value, the worst case for the sparse format. The kernels are `save_sparse`
//! (B12a) and `validate_sparse` + `apply_sparse` into a second register file (B12b); both
//! are compared with a page-granular memcpy of the whole 2 MiB register file, which is what
//! a dense save would cost. The note column gives the wire size.

use std::hint::black_box;
use std::time::Duration;

use mmio::{MMIO_DWORDS, MMIO_SIZE, NoHooks, RegFile, SKL, validate_sparse};

use super::harness::{Figure, Harness, gib_s};

/// A non-reset value for the `i`-th migratable register (writable bits only).
fn populated_value(r: &mmio::RegDesc, i: u32) -> u32 {
    let writable = !r.effective_ro_mask();
    let flip = (i.wrapping_mul(0x9E37_79B9) | 1) & writable;
    r.reset
        ^ if flip == 0 {
            writable & writable.wrapping_neg()
        } else {
            flip
        }
}

fn figure(id: &str, what: &str, d: Duration, reference: f64, note: String) -> Figure {
    Figure {
        id: id.to_owned(),
        what: what.to_owned(),
        bytes: u64::from(MMIO_SIZE),
        gib_s: gib_s(u64::from(MMIO_SIZE), d),
        reference_gib_s: reference,
        ratio: 0.0,
        target_ratio: None,
        note,
    }
}

/// B12a and B12b.
pub(crate) fn mmio_sparse(h: &mut Harness) -> crate::Result {
    if !h.wants("B12a") && !h.wants("B12b") {
        return Ok(());
    }
    let err = |what: &'static str| move |e: mmio::MmioError| format!("B12 {what}: {e}");
    let mut src_store = vec![0u32; MMIO_DWORDS];
    let mut src = RegFile::new(&SKL, &mut src_store).map_err(err("source"))?;
    let mut migrated = 0usize;
    for (i, r) in SKL.regs.iter().filter(|r| r.is_migrated()).enumerate() {
        let v = populated_value(r, u32::try_from(i).unwrap_or(0));
        if v == r.reset {
            return Err(format!("B12 could not populate {}", r.name));
        }
        src.poke(r.offset, v);
        migrated += 1;
    }
    let mut wire = vec![0u8; SKL.max_sparse_len()];
    let len = src.sparse_len();

    // Reference: memcpy of the 2 MiB register file.
    let ref_src = vec![0x5Au8; MMIO_SIZE as usize];
    let mut ref_dst = vec![0u8; MMIO_SIZE as usize];
    let reference = h.reference(&ref_src, &mut ref_dst);
    let note = format!(
        "{migrated} registers, wire {len} B ({:.2}% of 2 MiB)",
        len as f64 * 100.0 / f64::from(MMIO_SIZE)
    );

    let mut failed = None;
    let d = h.time(|| match src.save_sparse(&mut wire) {
        Ok(n) => {
            black_box(n);
        }
        Err(e) => {
            failed.get_or_insert(e);
        }
    });
    if let Some(e) = failed {
        return Err(format!("B12a save_sparse: {e}"));
    }
    let n = src.save_sparse(&mut wire).map_err(err("save"))?;
    if n != len {
        return Err(format!("B12a wrote {n} bytes, sparse_len said {len}"));
    }
    if h.wants("B12a") {
        h.record(figure(
            "B12a",
            "mmio save_sparse, all registers set",
            d,
            reference,
            note.clone(),
        ));
    }

    let payload = wire.get(..n).unwrap_or_default();
    let mut dst_store = vec![0u32; MMIO_DWORDS];
    let mut dst = RegFile::new(&SKL, &mut dst_store).map_err(err("target"))?;
    let mut failed = None;
    let d = h.time(|| {
        let r =
            validate_sparse(&SKL, payload).and_then(|()| dst.apply_sparse(payload, &mut NoHooks));
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
        black_box(&dst);
    });
    if let Some(e) = failed {
        return Err(format!("B12b validate+apply_sparse: {e}"));
    }
    let wrong = SKL
        .regs
        .iter()
        .filter(|r| r.is_migrated() && dst.peek(r.offset) != src.peek(r.offset))
        .count();
    if wrong != 0 {
        return Err(format!("B12b restored {wrong} registers wrongly"));
    }
    if h.wants("B12b") {
        h.record(figure(
            "B12b",
            "mmio validate+apply_sparse, all set",
            d,
            reference,
            note,
        ));
    }
    Ok(())
}
