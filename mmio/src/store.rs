//! Owned, `const`-constructible vreg storage.

use crate::platform::MMIO_DWORDS;

/// Vreg storage held by value: `N` dwords, zero at construction.
///
/// [`new`](Self::new) is a `const fn`, so the storage can be the initializer of a `static`
/// (it lands in zero-initialized memory: no 2 MiB stack copy, no allocation). Because this
/// crate forbids `unsafe`, mutable access to a `static` goes through a lock the embedder
/// chooses (`std::sync::Mutex`, a `critical_section::Mutex<RefCell<_>>`, a spin lock) or
/// through a one-shot cell handing out `&'static mut` (e.g. `static_cell::ConstStaticCell`).
/// [`RegFile::new`](crate::RegFile::new) then wraps [`as_mut_slice`](Self::as_mut_slice).
///
/// ```
/// use std::sync::Mutex;
/// use vgpu_mig_mmio::{AccessSize, NoHooks, RegFile, VregStore, SKL};
///
/// // One vGPU's registers in a static: const-initialized, no allocation.
/// static VREGS: Mutex<VregStore> = Mutex::new(VregStore::new());
///
/// let mut store = VREGS.lock().expect("not poisoned");
/// let mut regs = RegFile::new(&SKL, store.as_mut_slice())?;
/// regs.write(0x2030, AccessSize::Dword, 0x40, &mut NoHooks)?;
/// drop(regs);
/// // Re-attach later without resetting: the vregs are the register state.
/// let regs = RegFile::new_const(&SKL, store.as_mut_slice())?;
/// assert_eq!(regs.peek(0x2030), 0x40);
/// # Ok::<(), vgpu_mig_mmio::MmioError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[repr(transparent)]
pub struct VregStore<const N: usize = MMIO_DWORDS>([u32; N]);

impl<const N: usize> VregStore<N> {
    /// Zeroed storage (`const`: usable as a `static` initializer).
    #[must_use]
    pub const fn new() -> Self {
        Self([0; N])
    }

    /// The dwords, for [`RegFile::new`](crate::RegFile::new).
    #[must_use]
    pub const fn as_mut_slice(&mut self) -> &mut [u32] {
        &mut self.0
    }

    /// The dwords, read-only.
    #[must_use]
    pub const fn as_slice(&self) -> &[u32] {
        &self.0
    }
}

impl<const N: usize> Default for VregStore<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for VregStore<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "VregStore<{N}>")
    }
}

#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for VregStore<N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "VregStore<{=usize}>", N);
    }
}
