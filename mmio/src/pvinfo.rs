//! The PVINFO page (`struct vgt_if`): how a GVT-aware guest learns it runs on a vGPU.

/// Start of the PVINFO page in the MMIO BAR.
pub const PVINFO_BASE: u32 = 0x78000;
/// Size of the PVINFO page in bytes.
pub const PVINFO_SIZE: u32 = 0x1000;

/// PVINFO magic, "vGTvGTvG" (u64 at [`PVINFO_BASE`]).
pub const PVINFO_MAGIC: u64 = 0x4776_5447_7654_4776;
/// Absolute offsets of the PVINFO fields this crate models.
pub mod off {
    /// Magic, low dword.
    pub const MAGIC_LO: u32 = 0x78000;
    /// Magic, high dword.
    pub const MAGIC_HI: u32 = 0x78004;
    /// `version_major` (u16, low half) and `version_minor` (u16, high half).
    pub const VERSION: u32 = 0x78008;
    /// vGPU id.
    pub const VGT_ID: u32 = 0x7800C;
    /// Capability bits ([`PvInfo::CAP_FULL_PPGTT`](crate::PvInfo::CAP_FULL_PPGTT) ...).
    pub const VGT_CAPS: u32 = 0x78010;
    /// Aperture (mappable GM) base, guest view.
    pub const APERTURE_BASE: u32 = 0x78040;
    /// Aperture size.
    pub const APERTURE_SIZE: u32 = 0x78044;
    /// Hidden (non-mappable GM) base, guest view.
    pub const HIDDEN_BASE: u32 = 0x78048;
    /// Hidden size.
    pub const HIDDEN_SIZE: u32 = 0x7804C;
    /// Number of fences.
    pub const FENCE_NUM: u32 = 0x78050;
    /// Guest writes 1 after its first modeset.
    pub const DISPLAY_READY: u32 = 0x78804;
    /// Guest-to-host notification port.
    pub const G2V_NOTIFY: u32 = 0x78818;
    /// Cursor hot spot x (reset `0xFFFF_FFFF`).
    pub const CURSOR_X_HOT: u32 = 0x78830;
    /// Cursor hot spot y (reset `0xFFFF_FFFF`).
    pub const CURSOR_Y_HOT: u32 = 0x78834;
    /// `pdp[0].lo`; `pdp[i].lo` is at `PDP0_LO + 8 * i`, `.hi` at `+ 4`.
    pub const PDP0_LO: u32 = 0x78838;
    /// Execlist context descriptor, low dword.
    pub const EXECLIST_DESC_LO: u32 = 0x78858;
    /// Execlist context descriptor, high dword.
    pub const EXECLIST_DESC_HI: u32 = 0x7885C;
}

/// The values a vGPU type publishes to its guest through PVINFO.
///
/// These are not migrated: the target derives them from its own vGPU type and the caller
/// passes them to [`RegFile::reset_with`](crate::RegFile::reset_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PvInfo {
    /// vGPU id.
    pub vgt_id: u32,
    /// Capability bits (`CAP_*`).
    pub caps: u32,
    /// Aperture (low GM) base in the guest's view.
    pub aperture_base: u32,
    /// Aperture size in bytes.
    pub aperture_size: u32,
    /// Hidden (high GM) base in the guest's view.
    pub hidden_base: u32,
    /// Hidden size in bytes.
    pub hidden_size: u32,
    /// Number of fence registers.
    pub fence_num: u32,
}

impl PvInfo {
    /// Capability: full PPGTT.
    pub const CAP_FULL_PPGTT: u32 = 1 << 2;
    /// Capability: hardware status page emulation (CSB mirror in HWSP).
    pub const CAP_HWSP_EMULATION: u32 = 1 << 3;
    /// Capability: huge GTT entries.
    pub const CAP_HUGE_GTT: u32 = 1 << 4;

    /// The (offset, value) pairs this `PvInfo` places in the PVINFO page.
    #[must_use]
    pub const fn fields(&self) -> [(u32, u32); 7] {
        [
            (off::VGT_ID, self.vgt_id),
            (off::VGT_CAPS, self.caps),
            (off::APERTURE_BASE, self.aperture_base),
            (off::APERTURE_SIZE, self.aperture_size),
            (off::HIDDEN_BASE, self.hidden_base),
            (off::HIDDEN_SIZE, self.hidden_size),
            (off::FENCE_NUM, self.fence_num),
        ]
    }
}

/// True if `offset` lies in the PVINFO page.
#[must_use]
pub const fn in_pvinfo(offset: u32) -> bool {
    offset >= PVINFO_BASE && offset < PVINFO_BASE + PVINFO_SIZE
}
