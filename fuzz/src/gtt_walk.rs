//! Target over the PPGTT entry formats, the page walk and the leaf visitor (`gtt::ppgtt`).
//!
//! Input layout (missing bytes read as zero):
//!
//! | Bytes        | Meaning                                                                  |
//! |--------------|--------------------------------------------------------------------------|
//! | 0            | bit 0: 4-level (set) or 3-level; bits 2:1 generation; bits 7:3 guest pages − 1 (1..=32 pages) |
//! | 1            | 3-level: bit `i` makes PDP root `i` present at frame `(i + 1) % (pages + 1)` |
//! | 2            | number of entry writes `W`                                               |
//! | 3 ..         | `W` × (u16 position, u64 entry): page `(pos >> 9) % pages`, index `pos & 511`; unless bit 63 is set the entry's frame is taken modulo `pages + 2`, so most entries point into guest memory and some just past it |
//! | rest         | u64 virtual addresses to walk                                            |
//!
//! The 4-level root is frame 0. Checks: the visitor stays within its entry budget, every
//! leaf it reports is translated by `walk` to the same frame, size, writability and PPAT
//! index (at the leaf's first and last byte), and walks of arbitrary addresses return.

use std::vec;
use std::vec::Vec;

use core::ops::ControlFlow;

use gtt::ppgtt::{PpgttRoot, Translation, VisitLimits, visit_leaves, walk};
use gtt::{Gfn, Gva};

use crate::gtt_target::GENERATIONS;
use crate::input::Bytes;

/// The entry budget the target gives the visitor.
pub(crate) const WALK_BUDGET: u64 = 1 << 14;

/// Mask of the GTT address field, bits 45:12.
const ADDR_MASK: u64 = 0x0000_3FFF_FFFF_F000;

/// Builds the guest memory and root described by `data` (layout in the module docs);
/// returns them with the unread rest of the input.
pub(crate) fn build(data: &[u8]) -> (Vec<u8>, PpgttRoot, Bytes<'_>) {
    let mut input = Bytes::new(data);
    let sel = input.u8();
    let pdp_mask = input.u8();
    let writes = input.u8();
    let pages = 1 + usize::from(sel >> 3);
    let generation = GENERATIONS
        .get(usize::from((sel >> 1) & 3))
        .copied()
        .unwrap_or(gtt::Generation::Gen9);
    let mut mem = vec![0u8; pages * 4096];
    let span = u64::try_from(pages).unwrap_or(1) + 2;
    for _ in 0..writes {
        let pos = usize::from(input.u16());
        let mut raw = input.u64();
        if raw >> 63 == 0 {
            raw = (raw & !ADDR_MASK) | ((((raw & ADDR_MASK) >> 12) % span) << 12);
        }
        let at = ((pos >> 9) % pages) * 4096 + (pos & 511) * 8;
        if let Some(dst) = mem.get_mut(at..at + 8) {
            dst.copy_from_slice(&raw.to_le_bytes());
        }
    }
    let root = if sel & 1 == 1 {
        PpgttRoot::four_level(generation, Gfn::new(0))
    } else {
        let p = u64::try_from(pages).unwrap_or(1) + 1;
        let pdp = |i: u8| (pdp_mask >> i & 1 == 1).then(|| Gfn::new((u64::from(i) + 1) % p));
        PpgttRoot::three_level(generation, [pdp(0), pdp(1), pdp(2), pdp(3)])
    };
    (mem, root, input)
}

/// Fuzz body: see the module docs.
pub fn gtt_walk(data: &[u8]) {
    let (mem, root, mut rest) = build(data);
    let mem = mem.as_slice();
    let limits = VisitLimits {
        max_entries: WALK_BUDGET,
    };
    let mut reported = 0u64;
    let summary = visit_leaves(&root, mem, limits, |leaf| {
        reported += 1;
        let Some(base) = leaf.frame.gpa() else {
            panic!(
                "visitor reported a leaf with frame {:?} beyond 2^64",
                leaf.frame
            );
        };
        let size = leaf.page_size.bytes();
        for off in [0, size - 1] {
            let Some(va) = leaf.va.checked_add(off) else {
                panic!("visitor reported a leaf at {:?} that wraps", leaf.va);
            };
            let expect = base.checked_add(off).map(|gpa| Translation {
                gpa,
                page_size: leaf.page_size,
                writable: leaf.writable,
                ppat: leaf.ppat,
            });
            let got = walk(&root, va, mem);
            assert_eq!(
                got.ok(),
                expect,
                "visitor leaf {leaf:?} and walk disagree at +{off:#x}"
            );
        }
        ControlFlow::Continue(())
    });
    assert!(
        summary.entries <= WALK_BUDGET,
        "visitor read {} entries over a budget of {WALK_BUDGET}",
        summary.entries
    );
    assert_eq!(summary.leaves, reported, "visitor leaf count");
    assert!(
        summary.leaves <= summary.entries,
        "more leaves than entries read"
    );
    assert!(
        !summary.truncated || summary.entries == WALK_BUDGET,
        "truncated before the budget ran out: {summary:?}"
    );
    let mut walks = 0;
    while !rest.is_empty() && walks < 256 {
        let a = rest.u64();
        let _ = walk(&root, Gva::new(a), mem);
        let _ = walk(&root, Gva::new(a & 0xFFFF_FFFF), mem);
        walks += 1;
    }
}
