//! The command subset the reference device executes, with their real Gen9 encodings.
//!
//! A command's first dword carries its client in bits 31:29 (0 = MI, 2 = 2D blitter, 3 = render:
//! 3D and media pipelines) and, for MI commands, its opcode in bits 28:23 and a length field
//! (dwords - 2) in its low bits, as wide as the hardware defines it for that command: 10 bits for
//! MI_STORE_DATA_IMM, 8 for MI_LOAD_REGISTER_IMM and MI_BATCH_BUFFER_START, 6 for MI_FLUSH_DW. The
//! device decodes every command it executes through [`command_dwords`]: a length the command cannot
//! have, or a reserved (must-be-zero) bit set, or a feature it does not model (LRI byte-write
//! disables, second-level batches) is a fault, never a silently different command. Graphics
//! addresses in commands are bits 47:2 split over two dwords; each command keeps its own low flag
//! bits, which address rebasing must preserve.
//!
//! | command | dword 0 | dwords | executed as |
//! |---|---|---|---|
//! | MI_NOOP | `0x0000_0000` | 1 | nothing |
//! | MI_BATCH_BUFFER_END | `0x0500_0000` | 1 | return from the batch to the ring |
//! | MI_STORE_DATA_IMM | `0x1000_0000 \| ggtt<<22 \| qword<<21 \| (n-2)` | 4 (one dword, bit 21 clear) or 5 (qword, bit 21 set) | write data at address bits 47:2 (GGTT when bit 22 is set, else through the context's PPGTT) |
//! | MI_LOAD_REGISTER_IMM | `0x1100_0000 \| posted<<12 \| (2k-1)` | 1 + 2k, k ≤ 128 | write k (offset, value) pairs to registers, in order |
//! | MI_FLUSH_DW | `0x1300_0000 \| post-sync<<14 \| (n-2)` | 4 or 5 | post-sync op 1: write the immediate dword (n = 4) or qword (n = 5) at address bits 47:3 (GGTT when dword 1 bit 2 is set, else PPGTT) |
//! | MI_BATCH_BUFFER_START | `0x1880_0000 \| ppgtt<<8 \| 1` | 3 | jump to a batch at bits 47:2 (GGTT when bit 8 is 0, else fetched through the PPGTT) |
//! | PIPE_CONTROL | `0x7A00_0004` | 6 | post-sync op (dword 1 bits 15:14) 1 = write the qword in dwords 4-5 to the address in dwords 2-3 (bits 47:3; GGTT when dword 1 bit 24 is set, else PPGTT) |
//! | XY_COLOR_BLT | `0x5430_0005` | 7 | fill a rectangle (32 bpp) with a colour: BR13 (depth, pitch), corners, destination, colour |
//! | XY_SRC_COPY_BLT | `0x54F0_0008` | 10 | copy a rectangle (32 bpp): BR13, destination corners and address, source corner, pitch and address |
//! | SIM_FILL (synthetic) | `0x1B80_0002` | 4 | fill `count` pages from a GGTT address with a deterministic pattern of (dword 3, page index in the command) |
//!
//! PPGTT addresses are translated through the running context's page tables: the PML4 (or the four
//! page directories) in its register-state page, walked in guest memory with the same walker the
//! destination uses to check migrated roots. The ring itself is always fetched through the GGTT.
//!
//! SIM_FILL stands in for the 3D and media pipelines (render-target rewrite, frame decode) that a
//! software device cannot execute faithfully: MI opcode 0x37 is unused on Gen9, so a stream that
//! carries it is recognisably synthetic.

#![allow(
    clippy::cast_possible_truncation,
    reason = "commands split 64-bit addresses into dwords: the truncation is the encoding"
)]

/// MI_NOOP.
pub const MI_NOOP: u32 = 0;
/// MI_BATCH_BUFFER_END.
pub const MI_BATCH_BUFFER_END: u32 = 0x0A << 23;
/// MI_STORE_DATA_IMM opcode (length and flags to be or-ed in).
pub const MI_STORE_DATA_IMM: u32 = 0x20 << 23;
/// MI_LOAD_REGISTER_IMM opcode.
pub const MI_LOAD_REGISTER_IMM: u32 = 0x22 << 23;
/// MI_FLUSH_DW opcode.
pub const MI_FLUSH_DW: u32 = 0x26 << 23;
/// MI_BATCH_BUFFER_START opcode.
pub const MI_BATCH_BUFFER_START: u32 = 0x31 << 23;
/// Synthetic page-fill command (unused MI opcode 0x37).
pub const SIM_FILL: u32 = 0x37 << 23;
/// The "use global GTT" bit of MI_STORE_DATA_IMM.
pub const SDI_USE_GGTT: u32 = 1 << 22;
/// The "PPGTT address space" bit of MI_BATCH_BUFFER_START (clear = GGTT).
pub const BBS_PPGTT: u32 = 1 << 8;

/// MI_STORE_DATA_IMM bit 21: the immediate data is a qword (the command is 5 dwords).
pub const SDI_STORE_QWORD: u32 = 1 << 21;
/// MI_LOAD_REGISTER_IMM bit 12: force posted writes (no effect on the result).
pub const LRI_FORCE_POSTED: u32 = 1 << 12;
/// The most (offset, value) pairs one MI_LOAD_REGISTER_IMM carries (8-bit length 2k - 1).
pub const LRI_MAX_PAIRS: u32 = 128;

/// The number of dwords of the command whose first dword is `dw0`, decoded as the hardware
/// decodes it, or `None` for a command the reference device does not execute: an opcode outside
/// the table above, a length the command cannot have, a reserved bit set, or a feature it does not
/// model (LRI byte-write disables, bits 11:8; second-level batches, MI_BATCH_BUFFER_START bit 22).
pub const fn command_dwords(dw0: u32) -> Option<u32> {
    match (client(dw0), mi_opcode(dw0)) {
        // MI_NOOP: bits 21:0 are a free identification number; bit 22 would write it to a
        // register, which is not modelled.
        (0, 0x00) if dw0 & (1 << 22) == 0 => Some(1),
        // MI_BATCH_BUFFER_END: bits 22:0 are reserved.
        (0, 0x0A) if dw0 & 0x007F_FFFF == 0 => Some(1),
        (0, 0x20) => {
            // MI_STORE_DATA_IMM: 10-bit length; bits 20:10 reserved; bit 21 selects a qword.
            if dw0 & 0x001F_FC00 != 0 {
                return None;
            }
            match (dw0 & 0x3FF, dw0 & SDI_STORE_QWORD != 0) {
                (2, false) => Some(4),
                (3, true) => Some(5),
                _ => None,
            }
        }
        (0, 0x22) => {
            // MI_LOAD_REGISTER_IMM: 8-bit length 2k - 1; bit 12 posted; bits 11:8 byte-write
            // disables (not modelled); bits 22:13 reserved.
            let len = dw0 & 0xFF;
            if dw0 & 0x007F_EF00 != 0 || len.is_multiple_of(2) {
                None
            } else {
                Some(len + 2)
            }
        }
        (0, 0x26) => match dw0 & 0x3F {
            // MI_FLUSH_DW: 6-bit length; 4 dwords, or 5 with a qword immediate.
            2 => Some(4),
            3 => Some(5),
            _ => None,
        },
        // MI_BATCH_BUFFER_START: 8-bit length, always 1 (3 dwords) on gen8+; of the flags only
        // the address-space indicator (bit 8) is modelled.
        (0, 0x31) if dw0 & 0x007F_FEFF == 1 => Some(3),
        (0, 0x37) if dw0 & 0x007F_FFFF == 2 => Some(4),
        // 2D: 8-bit length; the opcode and exact length are checked when executed.
        (2, _) => Some((dw0 & 0xFF) + 2),
        (3, _) if dw0 == PIPE_CONTROL => Some(6),
        _ => None,
    }
}

/// Bits of a command's first dword that name the client.
pub const fn client(dw0: u32) -> u32 {
    dw0 >> 29
}

/// MI opcode (bits 28:23) of an MI command.
pub const fn mi_opcode(dw0: u32) -> u32 {
    (dw0 >> 23) & 0x3F
}

/// Store one dword at a GGTT address: the 4 dwords of MI_STORE_DATA_IMM.
pub const fn store_dword_ggtt(gm_addr: u64, value: u32) -> [u32; 4] {
    [
        MI_STORE_DATA_IMM | SDI_USE_GGTT | 2,
        (gm_addr as u32) & !3,
        ((gm_addr >> 32) as u32) & 0xFFFF,
        value,
    ]
}

/// Store one dword at an address of the context's PPGTT (MI_STORE_DATA_IMM without the GGTT bit).
pub const fn store_dword_ppgtt(va: u64, value: u32) -> [u32; 4] {
    [
        MI_STORE_DATA_IMM | 2,
        (va as u32) & !3,
        ((va >> 32) as u32) & 0xFFFF,
        value,
    ]
}

/// Jump to a batch buffer at a GGTT address.
pub const fn batch_start_ggtt(gm_addr: u64) -> [u32; 3] {
    [
        MI_BATCH_BUFFER_START | 1,
        (gm_addr as u32) & !3,
        ((gm_addr >> 32) as u32) & 0xFFFF,
    ]
}

/// Fill `pages` pages from a GGTT address with the pattern of `seed`.
pub const fn sim_fill(gm_addr: u64, pages: u16, seed: u32) -> [u32; 4] {
    [
        SIM_FILL | 2,
        ((gm_addr as u32) & !0xFFF) | pages as u32 & 0xFFF,
        ((gm_addr >> 32) as u32) & 0xFFFF,
        seed,
    ]
}

/// The deterministic SIM_FILL pattern: dword `i` of page `page` (counted from the command's first
/// page). It does not depend on where the pages are, so the same fill at two places makes
/// identical pages (a decoded frame and its display copy).
pub const fn fill_pattern(seed: u32, page: u64, i: u32) -> u32 {
    let mut x = (seed as u64) << 32
        ^ page.wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x as u32
}

/// PIPE_CONTROL with its length (6 dwords).
pub const PIPE_CONTROL: u32 = 0x7A00_0004;
/// Post-sync operation "write immediate data" (bits 15:14 = 1) of PIPE_CONTROL dword 1 and MI_FLUSH_DW.
pub const POST_SYNC_WRITE_IMM: u32 = 1 << 14;
/// PIPE_CONTROL dword 1 bit 24: destination address is in the GGTT.
pub const PC_GLOBAL_GTT: u32 = 1 << 24;

/// Load `value` into the register at `offset` (MI_LOAD_REGISTER_IMM with one pair).
pub const fn load_register(offset: u32, value: u32) -> [u32; 3] {
    [MI_LOAD_REGISTER_IMM | 1, offset & 0x7F_FFFC, value]
}

/// The first dword of an MI_LOAD_REGISTER_IMM carrying `pairs` (offset, value) pairs
/// (1..=[`LRI_MAX_PAIRS`]); the pairs follow it.
pub const fn load_registers_header(pairs: u32) -> u32 {
    MI_LOAD_REGISTER_IMM | ((2 * pairs).saturating_sub(1) & 0xFF)
}

/// MI_FLUSH_DW with a post-sync write of `value` to a GGTT address (bit 2 of dword 1 selects GGTT).
pub const fn flush_dw_store(gm_addr: u64, value: u32) -> [u32; 4] {
    [
        MI_FLUSH_DW | POST_SYNC_WRITE_IMM | 2,
        ((gm_addr as u32) & !7) | 1 << 2,
        ((gm_addr >> 32) as u32) & 0xFFFF,
        value,
    ]
}

/// PIPE_CONTROL with a post-sync qword write to a GGTT address.
pub const fn pipe_control_store(gm_addr: u64, value: u64) -> [u32; 6] {
    [
        PIPE_CONTROL,
        POST_SYNC_WRITE_IMM | PC_GLOBAL_GTT,
        (gm_addr as u32) & !7,
        ((gm_addr >> 32) as u32) & 0xFFFF,
        value as u32,
        (value >> 32) as u32,
    ]
}

/// XY_COLOR_BLT opcode (2D client, bits 28:22).
pub const XY_COLOR_BLT_OP: u32 = 0x50;
/// XY_SRC_COPY_BLT opcode.
pub const XY_SRC_COPY_BLT_OP: u32 = 0x53;
/// 2D opcode of a command's first dword.
pub const fn blt_opcode(dw0: u32) -> u32 {
    (dw0 >> 22) & 0x7F
}
/// Write both colour and alpha channels (32 bpp), bits 21:20 of a blit's first dword.
const BLT_WRITE_RGBA: u32 = 3 << 20;
/// BR13 for 32 bits per pixel with raster operation `rop` and pitch `pitch` bytes.
const fn br13(rop: u32, pitch: u32) -> u32 {
    (3 << 24) | (rop << 16) | (pitch & 0xFFFF)
}

/// Fill `w` × `h` pixels at (`x`, `y`) of the surface at `base` (pitch bytes per row) with `color`.
pub const fn color_blt(
    base: u64,
    pitch: u32,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    color: u32,
) -> [u32; 7] {
    [
        (2 << 29) | (XY_COLOR_BLT_OP << 22) | BLT_WRITE_RGBA | 5,
        br13(0xF0, pitch),
        (y << 16) | x,
        ((y + h) << 16) | (x + w),
        base as u32,
        ((base >> 32) as u32) & 0xFFFF,
        color,
    ]
}

/// Copy `w` × `h` pixels from (`sx`, `sy`) of `src` to (`x`, `y`) of `dst` (both `pitch` bytes per row).
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per field of the command, in command order"
)]
pub const fn src_copy_blt(
    dst: u64,
    src: u64,
    pitch: u32,
    x: u32,
    y: u32,
    sx: u32,
    sy: u32,
    w: u32,
    h: u32,
) -> [u32; 10] {
    [
        (2 << 29) | (XY_SRC_COPY_BLT_OP << 22) | BLT_WRITE_RGBA | 8,
        br13(0xCC, pitch),
        (y << 16) | x,
        ((y + h) << 16) | (x + w),
        dst as u32,
        ((dst >> 32) as u32) & 0xFFFF,
        (sy << 16) | sx,
        pitch & 0xFFFF,
        src as u32,
        ((src >> 32) as u32) & 0xFFFF,
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_decoded_with_the_hardware_field_widths() {
        // MI_LOAD_REGISTER_IMM: 8-bit length; 33 and 128 pairs are one command each.
        assert_eq!(command_dwords(load_registers_header(1)), Some(3));
        assert_eq!(command_dwords(load_registers_header(33)), Some(67));
        assert_eq!(command_dwords(load_registers_header(128)), Some(257));
        assert_eq!(
            command_dwords(load_registers_header(33) | LRI_FORCE_POSTED),
            Some(67)
        );
        // An even length is not 2k - 1; byte-write disables and reserved bits are refused.
        assert_eq!(command_dwords(MI_LOAD_REGISTER_IMM | 2), None);
        assert_eq!(command_dwords(MI_LOAD_REGISTER_IMM | 1 << 8 | 1), None);
        assert_eq!(command_dwords(MI_LOAD_REGISTER_IMM | 1 << 20 | 1), None);
        // MI_STORE_DATA_IMM: 10-bit length; 5 dwords only with the qword bit, 4 only without.
        assert_eq!(command_dwords(store_dword_ggtt(0x1000, 1)[0]), Some(4));
        assert_eq!(
            command_dwords(MI_STORE_DATA_IMM | SDI_STORE_QWORD | 3),
            Some(5)
        );
        assert_eq!(command_dwords(MI_STORE_DATA_IMM | 3), None);
        assert_eq!(
            command_dwords(MI_STORE_DATA_IMM | SDI_STORE_QWORD | 2),
            None
        );
        assert_eq!(
            command_dwords(MI_STORE_DATA_IMM | 0x102),
            None,
            "bit 8 is length, not 2"
        );
        assert_eq!(command_dwords(MI_STORE_DATA_IMM | 1 << 12 | 2), None);
        // MI_BATCH_BUFFER_START: 8-bit length, always 1; only the PPGTT bit is modelled.
        assert_eq!(command_dwords(batch_start_ggtt(0x1000)[0]), Some(3));
        assert_eq!(
            command_dwords(MI_BATCH_BUFFER_START | BBS_PPGTT | 1),
            Some(3)
        );
        assert_eq!(command_dwords(MI_BATCH_BUFFER_START | 0x41), None);
        assert_eq!(command_dwords(MI_BATCH_BUFFER_START | 1 << 22 | 1), None);
        // The rest of the table.
        assert_eq!(command_dwords(MI_NOOP), Some(1));
        assert_eq!(command_dwords(MI_BATCH_BUFFER_END), Some(1));
        assert_eq!(command_dwords(MI_BATCH_BUFFER_END | 1), None);
        assert_eq!(command_dwords(flush_dw_store(0x1000, 1)[0]), Some(4));
        assert_eq!(command_dwords(PIPE_CONTROL), Some(6));
        assert_eq!(command_dwords(sim_fill(0x1000, 1, 0)[0]), Some(4));
        assert_eq!(sim_fill(0x1000, 1, 0)[0], 0x1B80_0002);
        assert_eq!(
            command_dwords(color_blt(0, 4096, 0, 0, 1, 1, 0)[0]),
            Some(7)
        );
        assert_eq!(client(color_blt(0, 4096, 0, 0, 1, 1, 0)[0]), 2);
        assert_eq!(command_dwords(0xE000_0000), None);
    }
}
