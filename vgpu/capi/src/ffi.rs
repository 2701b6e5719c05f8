//! The `extern "C"` functions and the only `unsafe` code of the crate: turning C pointers into
//! Rust references (each checked for null, alignment and a bounded length first), carving the
//! caller's storage block, copying guest memory, and calling the host's callbacks.
//!
//! Every function returns a code ([`crate::codes`]); none panics (the crate's lints forbid
//! unwrap, expect, indexing and unchecked casts, and the staticlib is built with `panic = abort`
//! and an aborting panic handler, so even a bug cannot unwind into C).

use core::ffi::{CStr, c_char, c_int, c_void};
use core::mem::{align_of, size_of};
use core::ptr;

use vgpu::{
    AtomicWord, CONFIG_SPACE_SIZE, CpuDirtyLog, Gfn, GgttEntry, GttIndex, GuestMemory,
    GuestMemoryMap, HostError, HostGtt, MemoryError,
};

use crate::codes::{
    self, VGPU_MIG_E_ARGUMENT, VGPU_MIG_E_CONFIG, VGPU_MIG_E_NULL, VGPU_MIG_E_STORAGE_ALIGN,
    VGPU_MIG_E_STORAGE_SIZE, VGPU_MIG_OK,
};
use crate::device::{
    Buffers, Device, Parsed, Plan, VGPU_MIG_MAX_REGIONS, VGPU_MIG_PAGE_SIZE, VgpuMigConfig,
    VgpuMigLayout, VgpuMigRegion,
};

/// One vGPU, living at the start of the caller's storage block. Opaque to C.
pub struct VgpuMigDevice {
    inner: Device<'static, FlatMemory, HostGttOps, CpuLogOps>,
}

type VgpuMigGgttMapFn = unsafe extern "C" fn(*mut c_void, u64, c_int, u64, u64) -> c_int;
type VgpuMigFenceFn = unsafe extern "C" fn(*mut c_void, u8, c_int, u64) -> c_int;
type VgpuMigHarvestFn = unsafe extern "C" fn(*mut c_void, *mut u64, usize) -> usize;

/// The host's callbacks, each optional (null: the host GTT is not programmed, no fences, no CPU
/// dirty log). `ctx` is passed back unchanged. Copied at `vgpu_mig_create`; the callbacks and
/// `ctx` must stay valid for the device's lifetime.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VgpuMigHostOps {
    /// Passed to every callback.
    pub ctx: *mut c_void,
    /// Map (`present` = 1) or unmap host GGTT entry `host_index`: `gfn` is the guest frame,
    /// `guest_entry` the guest's entry (its attribute bits). Returns 0 on success.
    pub ggtt_map: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            host_index: u64,
            present: c_int,
            gfn: u64,
            guest_entry: u64,
        ) -> c_int,
    >,
    /// Program (`enabled` = 1) or disable the host fence register reserved for the vGPU's fence
    /// `index` with `value`. Returns 0 on success.
    pub program_fence: Option<
        unsafe extern "C" fn(ctx: *mut c_void, index: u8, enabled: c_int, value: u64) -> c_int,
    >,
    /// The CPU dirty log of guest RAM (for example KVM's dirty bitmap): write up to `capacity`
    /// frame numbers the guest CPUs wrote since the last call into `gfns`, forget them, and
    /// return how many were written (called again while it fills the buffer).
    pub cpu_dirty_harvest:
        Option<unsafe extern "C" fn(ctx: *mut c_void, gfns: *mut u64, capacity: usize) -> usize>,
}

/// Guest RAM: the caller's flat buffer, frames of the memory map back to back.
struct FlatMemory {
    map: GuestMemoryMap,
    base: *mut u8,
    len: usize,
}

impl FlatMemory {
    /// The buffer offset of `len` bytes at `offset` in frame `gfn`, bounds checked.
    fn at(&self, gfn: Gfn, offset: usize, len: usize) -> Result<usize, MemoryError> {
        let frame = self.map.index_of(gfn).ok_or(MemoryError)?;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > VGPU_MIG_PAGE_SIZE)
        {
            return Err(MemoryError);
        }
        let start = frame
            .checked_mul(VGPU_MIG_PAGE_SIZE)
            .and_then(|b| b.checked_add(offset))
            .ok_or(MemoryError)?;
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(start),
            _ => Err(MemoryError),
        }
    }
}

impl GuestMemory for FlatMemory {
    fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        let start = self.at(gfn, offset, out.len())?;
        // SAFETY: `base..base + len` is the caller's guest memory buffer, valid for the device's
        // lifetime (vgpu_mig_create's contract) and checked to be at least the map's size;
        // `start + out.len() <= len` was just checked. `out` is Rust memory, so the two do not
        // overlap. Bytes are plain data: any value is valid.
        unsafe { ptr::copy_nonoverlapping(self.base.add(start), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        let start = self.at(gfn, offset, data.len())?;
        // SAFETY: as in `read`, with the bytes going the other way; `data` comes from the
        // library's own buffers (the stream being written lies in C memory distinct from guest
        // memory by vgpu_mig_write's contract).
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(start), data.len()) };
        Ok(())
    }
}

/// The host GTT callbacks.
struct HostGttOps {
    ctx: *mut c_void,
    map: Option<VgpuMigGgttMapFn>,
    fence: Option<VgpuMigFenceFn>,
}

impl HostGtt for HostGttOps {
    fn map(
        &mut self,
        host_index: GttIndex,
        mapping: Option<(Gfn, GgttEntry)>,
    ) -> Result<(), HostError> {
        let Some(f) = self.map else { return Ok(()) };
        let (present, gfn, entry) = match mapping {
            Some((gfn, e)) => (1, gfn.get(), e.into_bits()),
            None => (0, 0, 0),
        };
        // SAFETY: a callback the caller registered with its context, valid for the device's
        // lifetime (vgpu_mig_create's contract); it takes plain integers.
        let rc = unsafe { f(self.ctx, u64::from(host_index.get()), present, gfn, entry) };
        if rc == 0 { Ok(()) } else { Err(HostError) }
    }

    fn program_fence(&mut self, index: u8, value: Option<u64>) -> Result<(), HostError> {
        let Some(f) = self.fence else { return Ok(()) };
        // SAFETY: as in `map`.
        let rc = unsafe {
            f(
                self.ctx,
                index,
                c_int::from(value.is_some()),
                value.unwrap_or(0),
            )
        };
        if rc == 0 { Ok(()) } else { Err(HostError) }
    }
}

/// The CPU dirty log callback.
struct CpuLogOps {
    ctx: *mut c_void,
    harvest: Option<VgpuMigHarvestFn>,
    /// Guest frames: a harvest reports each at most once, so this bounds the calls.
    frames: usize,
}

/// Frame numbers taken from the callback per call.
const HARVEST_BATCH: usize = 64;

impl CpuDirtyLog for CpuLogOps {
    fn harvest(&mut self, sink: &mut dyn FnMut(Gfn)) {
        let Some(f) = self.harvest else { return };
        let mut buf = [0u64; HARVEST_BATCH];
        // A callback that keeps filling the buffer stops being asked after every frame could
        // have been reported once.
        for _ in 0..=self.frames.div_ceil(HARVEST_BATCH) {
            // SAFETY: the registered callback (valid per vgpu_mig_create's contract) gets a
            // buffer of exactly HARVEST_BATCH u64s that lives across the call.
            let n = unsafe { f(self.ctx, buf.as_mut_ptr(), HARVEST_BATCH) }.min(HARVEST_BATCH);
            for gfn in buf.iter().take(n) {
                sink(Gfn::new(*gfn));
            }
            if n < HARVEST_BATCH {
                break;
            }
        }
    }
}

type CDevice = Device<'static, FlatMemory, HostGttOps, CpuLogOps>;

/// The largest object a Rust slice may span.
const MAX_SLICE_BYTES: usize = isize::MAX as usize;

/// Whether `len` elements of `T` at `p` can be a slice: not null (when `len > 0`), aligned, and
/// at most `isize::MAX` bytes.
fn check_slice<T>(p: *const T, len: usize) -> Result<(), i32> {
    if len == 0 {
        return Ok(());
    }
    if p.is_null() {
        return Err(VGPU_MIG_E_NULL);
    }
    if !(p as usize).is_multiple_of(align_of::<T>())
        || len
            .checked_mul(size_of::<T>())
            .is_none_or(|b| b > MAX_SLICE_BYTES)
    {
        return Err(VGPU_MIG_E_ARGUMENT);
    }
    Ok(())
}

/// `len` elements of `T` at `p`, writable, after [`check_slice`].
///
/// # Safety
/// If the checks pass, `p` must point to `len` initialised `T`s, valid for writes and not
/// otherwise accessed for `'a`.
unsafe fn slice_mut<'a, T>(p: *mut T, len: usize) -> Result<&'a mut [T], i32> {
    check_slice(p, len)?;
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: non-null, aligned, size within isize::MAX (checked above); validity and
    // exclusivity are the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts_mut(p, len) })
}

/// `len` elements of `T` at `p`, read-only, after [`check_slice`].
///
/// # Safety
/// If the checks pass, `p` must point to `len` initialised `T`s, valid for reads and not written
/// for `'a`.
unsafe fn slice_ref<'a, T>(p: *const T, len: usize) -> Result<&'a [T], i32> {
    check_slice(p, len)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-null, aligned, size within isize::MAX (checked above); validity is the
    // caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(p, len) })
}

/// The device behind a handle.
///
/// # Safety
/// `dev` is null or a handle from `vgpu_mig_create` not yet destroyed, used by one thread at a
/// time.
unsafe fn device<'a>(dev: *mut VgpuMigDevice) -> Result<&'a mut CDevice, i32> {
    // SAFETY: the caller's contract; null is checked by `as_mut`.
    unsafe { dev.as_mut() }
        .map(|d| &mut d.inner)
        .ok_or(VGPU_MIG_E_NULL)
}

/// Store `v` at `out` if `out` is not null.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, v: T) {
    // SAFETY: the caller's contract; null is checked by `as_mut`.
    if let Some(o) = unsafe { out.as_mut() } {
        *o = v;
    }
}

/// Read and check a configuration.
///
/// # Safety
/// `config` is null or points to a `VgpuMigConfig` whose `regions` is null or points to
/// `region_count` regions.
unsafe fn parse(config: *const VgpuMigConfig) -> Result<Parsed, i32> {
    // SAFETY: the caller's contract; null is checked by `as_ref`.
    let cfg = unsafe { config.as_ref() }.ok_or(VGPU_MIG_E_NULL)?;
    if cfg.region_count == 0 || cfg.region_count > VGPU_MIG_MAX_REGIONS {
        return Err(VGPU_MIG_E_CONFIG);
    }
    if cfg.regions.is_null() {
        return Err(VGPU_MIG_E_NULL);
    }
    if !(cfg.regions as usize).is_multiple_of(align_of::<VgpuMigRegion>()) {
        return Err(VGPU_MIG_E_ARGUMENT);
    }
    // SAFETY: non-null, aligned, at most VGPU_MIG_MAX_REGIONS entries (checked above); the
    // caller's contract makes them readable. Only read here, then copied.
    let regions = unsafe { core::slice::from_raw_parts(cfg.regions, cfg.region_count) };
    Parsed::new(cfg, regions)
}

/// The storage plan of a configuration.
fn plan(parsed: &Parsed) -> Result<Plan, i32> {
    Plan::new(
        parsed.counts(),
        size_of::<VgpuMigDevice>(),
        align_of::<VgpuMigDevice>(),
    )
    .ok_or(VGPU_MIG_E_CONFIG)
}

/// Fill `*out` with every size a vGPU of `config` needs: call this first, allocate, then
/// `vgpu_mig_create`.
///
/// # Safety
/// `config` is null or a valid configuration (its `regions` pointing to `region_count`
/// entries); `out` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_layout(
    config: *const VgpuMigConfig,
    out: *mut VgpuMigLayout,
) -> c_int {
    if out.is_null() {
        return VGPU_MIG_E_NULL;
    }
    // SAFETY: forwarded contract.
    match unsafe { parse(config) }.and_then(|p| plan(&p)) {
        Ok(plan) => {
            // SAFETY: `out` is non-null and valid for a write (contract).
            unsafe { put(out, plan.layout()) };
            VGPU_MIG_OK
        }
        Err(c) => c,
    }
}

/// Create a vGPU (at reset, RUNNING) in the caller's `storage` block (`storage_len` bytes,
/// aligned to `storage_align`, from `vgpu_mig_layout`) over the guest RAM buffer `guest_memory`
/// (`guest_memory_len` bytes, at least `guest_memory_bytes`), and store its handle in `*out`.
/// `host` may be null (no callbacks). On failure nothing is stored in `*out`.
///
/// # Safety
/// `config` as for `vgpu_mig_layout`. `storage` is valid for reads and writes of `storage_len`
/// bytes, and belongs to the device (the caller does not touch it) until `vgpu_mig_destroy`.
/// `guest_memory` is valid for reads and writes of `guest_memory_len` bytes until
/// `vgpu_mig_destroy`, and does not overlap `storage`; the caller may change guest memory
/// between calls, not during one. `host` is null or valid to read, and its callbacks and `ctx`
/// stay valid until `vgpu_mig_destroy`. `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_create(
    config: *const VgpuMigConfig,
    storage: *mut c_void,
    storage_len: usize,
    guest_memory: *mut u8,
    guest_memory_len: usize,
    host: *const VgpuMigHostOps,
    out: *mut *mut VgpuMigDevice,
) -> c_int {
    if out.is_null() || storage.is_null() || guest_memory.is_null() {
        return VGPU_MIG_E_NULL;
    }
    // SAFETY: forwarded contract.
    let parsed = match unsafe { parse(config) } {
        Ok(p) => p,
        Err(c) => return c,
    };
    let plan = match plan(&parsed) {
        Ok(p) => p,
        Err(c) => return c,
    };
    if storage_len < plan.total
        || guest_memory_len < plan.guest_memory
        || storage_len > MAX_SLICE_BYTES
        || guest_memory_len > MAX_SLICE_BYTES
    {
        return VGPU_MIG_E_STORAGE_SIZE;
    }
    if !(storage as usize).is_multiple_of(plan.align) {
        return VGPU_MIG_E_STORAGE_ALIGN;
    }
    // SAFETY: `host` is null or readable (contract).
    let ops = unsafe { host.as_ref() }.copied().unwrap_or(VgpuMigHostOps {
        ctx: ptr::null_mut(),
        ggtt_map: None,
        program_fence: None,
        cpu_dirty_harvest: None,
    });
    let base = storage.cast::<u8>();
    let c = plan.counts;
    // SAFETY: the block is `storage_len >= plan.total` writable bytes (contract, checked);
    // zeroing it makes every buffer initialised (zero is a valid u8, u32, u64 and atomic word).
    // The plan places each buffer inside `0..plan.total`, 8-byte aligned from a block aligned to
    // `plan.align >= 8`, without overlap, after the device's own bytes; each is handed out once,
    // for as long as the device lives (the block is the device's until vgpu_mig_destroy).
    let buffers = unsafe {
        ptr::write_bytes(base, 0, plan.total);
        Buffers {
            config_space: &mut *base
                .add(plan.config_space)
                .cast::<[u8; CONFIG_SPACE_SIZE]>(),
            vregs: core::slice::from_raw_parts_mut(base.add(plan.vregs).cast::<u32>(), c.vregs),
            ggtt: core::slice::from_raw_parts_mut(base.add(plan.ggtt).cast::<u64>(), c.ggtt),
            gpu_dirty: core::slice::from_raw_parts(
                base.add(plan.gpu_dirty).cast::<AtomicWord>(),
                c.gpu_dirty,
            ),
            send: core::slice::from_raw_parts_mut(base.add(plan.send).cast::<u64>(), c.send),
            scratch: core::slice::from_raw_parts_mut(base.add(plan.scratch), c.scratch),
            staging: core::slice::from_raw_parts_mut(base.add(plan.staging), c.staging),
        }
    };
    let mem = FlatMemory {
        map: parsed.map.clone(),
        base: guest_memory,
        len: guest_memory_len,
    };
    let host = HostGttOps {
        ctx: ops.ctx,
        map: ops.ggtt_map,
        fence: ops.program_fence,
    };
    let cpu = CpuLogOps {
        ctx: ops.ctx,
        harvest: ops.cpu_dirty_harvest,
        frames: c.frames,
    };
    match Device::new(&parsed, buffers, mem, host, cpu) {
        Ok(inner) => {
            let dev = base.cast::<VgpuMigDevice>();
            // SAFETY: the block starts with `size_of::<VgpuMigDevice>()` bytes reserved by the
            // plan, aligned to `align_of::<VgpuMigDevice>()` (checked); `out` is writable.
            unsafe {
                ptr::write(dev, VgpuMigDevice { inner });
                *out = dev;
            }
            VGPU_MIG_OK
        }
        Err(f) => f.code(),
    }
}

/// Destroy a vGPU; its storage block and guest memory are the caller's again. Null is ignored.
///
/// # Safety
/// `dev` is null or a live handle, not used again afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_destroy(dev: *mut VgpuMigDevice) {
    if !dev.is_null() {
        // SAFETY: a live handle (contract), dropped once.
        unsafe { ptr::drop_in_place(dev) };
    }
}

/// Run `f` on the device behind `dev`, returning its code.
///
/// # Safety
/// As [`device`].
unsafe fn with(dev: *mut VgpuMigDevice, f: impl FnOnce(&mut CDevice) -> Result<(), i32>) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { device(dev) }.and_then(f) {
        Ok(()) => VGPU_MIG_OK,
        Err(c) => c,
    }
}

/// Run `f` on the device behind `dev` and store its value at `out`, returning its code.
///
/// # Safety
/// As [`device`]; `out` is null (a code) or valid for a write of `T`.
unsafe fn get<T>(
    dev: *mut VgpuMigDevice,
    out: *mut T,
    f: impl FnOnce(&mut CDevice) -> Result<T, i32>,
) -> c_int {
    if out.is_null() {
        return VGPU_MIG_E_NULL;
    }
    // SAFETY: forwarded contract; `out` is non-null and writable.
    unsafe { with(dev, |d| f(d).map(|v| put(out, v))) }
}

/// A trapped guest read of BAR0 (`size` 1, 2, 4 or 8 bytes): registers in the first 2 MiB, the
/// GGTT window at `VGPU_MIG_GGTT_WINDOW`. The value goes to `*value`.
///
/// # Safety
/// `dev` is a live handle (or null); `value` is valid for a write (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_mmio_read(
    dev: *mut VgpuMigDevice,
    offset: u32,
    size: u32,
    value: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { get(dev, value, |d| d.mmio_read(offset, size)) }
}

/// A trapped guest write of BAR0; side effects (GGTT shadowing through the host callbacks,
/// engine submission) run before it returns.
///
/// # Safety
/// `dev` is a live handle (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_mmio_write(
    dev: *mut VgpuMigDevice,
    offset: u32,
    size: u32,
    value: u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with(dev, |d| d.mmio_write(offset, size, value)) }
}

/// A PCI config-space read (`size` 1, 2 or 4 bytes).
///
/// # Safety
/// `dev` is a live handle (or null); `value` is valid for a write (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_config_read(
    dev: *mut VgpuMigDevice,
    offset: u32,
    size: u32,
    value: *mut u32,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { get(dev, value, |d| d.config_read(offset, size)) }
}

/// A PCI config-space write (identity bytes are read-only and keep their value).
///
/// # Safety
/// `dev` is a live handle (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_config_write(
    dev: *mut VgpuMigDevice,
    offset: u32,
    size: u32,
    value: u32,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with(dev, |d| d.config_write(offset, size, value)) }
}

/// The migration state (`VGPU_MIG_STATE_*`, numbered as VFIO's `device_state`) into `*state`.
///
/// # Safety
/// `dev` is a live handle (or null); `state` is valid for a write (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_get_state(dev: *mut VgpuMigDevice, state: *mut u32) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { get(dev, state, |d| Ok(d.state())) }
}

/// Write VFIO `device_state`: move to `requested`, one arc at a time (as the kernel does). The
/// state reached is stored in `*reached` (may be null) on success and on failure: a failed arc
/// leaves the device in the state before it, except RESUMING → STOP with invalid data, which
/// leaves it in ERROR (left only by `vgpu_mig_reset`).
///
/// # Safety
/// `dev` is a live handle (or null); `reached` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_set_state(
    dev: *mut VgpuMigDevice,
    requested: u32,
    reached: *mut u32,
) -> c_int {
    // SAFETY: forwarded contract; `reached` is null or writable.
    unsafe {
        with(dev, |d| {
            let r = d.set_state(requested);
            put(reached, d.state());
            r
        })
    }
}

/// Read migration data (VFIO `data_fd` `read()`, in PRE_COPY, PRE_COPY_P2P and STOP_COPY) into
/// `buf` (`len` bytes); the count goes to `*n`. 0 bytes: nothing more now (in PRE_COPY: the
/// pre-copy data is drained until the guest dirties more), or the end of the stream when
/// `vgpu_mig_is_saved` says so. `now_us` is the caller's clock (pre-copy pacing).
///
/// # Safety
/// `dev` is a live handle (or null); `buf` is null or valid for writes of `len` bytes and does
/// not overlap the device's storage or guest memory; `n` is valid for a write (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_read(
    dev: *mut VgpuMigDevice,
    buf: *mut u8,
    len: usize,
    now_us: u64,
    n: *mut usize,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { get(dev, n, |d| d.read(slice_mut(buf, len)?, now_us)) }
}

/// Write migration data (VFIO `data_fd` `write()`, in RESUMING) from `buf` (`len` bytes); the
/// count consumed goes to `*n` (all of it unless an error is returned). A stream error leaves
/// the device state untouched; the RESUMING → STOP transition then fails.
///
/// # Safety
/// `dev` is a live handle (or null); `buf` is null or valid for reads of `len` bytes and does not
/// overlap the device's storage or guest memory; `n` is valid for a write (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_write(
    dev: *mut VgpuMigDevice,
    buf: *const u8,
    len: usize,
    n: *mut usize,
) -> c_int {
    // SAFETY: forwarded contract (the slice is only read).
    unsafe { get(dev, n, |d| d.write(slice_ref(buf, len)?)) }
}

/// Whether the saving stream has been read to its end (1) or not (0); negative for a null handle.
///
/// # Safety
/// `dev` is a live handle (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_is_saved(dev: *mut VgpuMigDevice) -> c_int {
    // SAFETY: forwarded contract.
    match unsafe { device(dev) } {
        Ok(d) => c_int::from(d.is_saved()),
        Err(c) => c,
    }
}

/// `VFIO_MIG_GET_PRECOPY_INFO` (PRE_COPY and PRE_COPY_P2P only): the bytes of the initial copy
/// still to read, and the bytes dirtied since they were read.
///
/// # Safety
/// `dev` is a live handle (or null); `initial` and `dirty` are valid for writes (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_precopy_info(
    dev: *mut VgpuMigDevice,
    initial_bytes: *mut u64,
    dirty_bytes: *mut u64,
) -> c_int {
    if initial_bytes.is_null() || dirty_bytes.is_null() {
        return VGPU_MIG_E_NULL;
    }
    // SAFETY: forwarded contract; both outputs non-null and writable.
    unsafe {
        with(dev, |d| {
            d.precopy_info().map(|(i, k)| {
                put(initial_bytes, i);
                put(dirty_bytes, k);
            })
        })
    }
}

/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`: the estimated bytes of the stop-copy phase.
///
/// # Safety
/// `dev` is a live handle (or null); `bytes` is valid for a write (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_stop_copy_size(
    dev: *mut VgpuMigDevice,
    bytes: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { get(dev, bytes, |d| Ok(d.stop_copy_size())) }
}

/// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT` for `VGPU_MIG_MEMORY_REPORT` devices in a saving
/// state: set in `bitmap` (`bitmap_words` 64-bit words, bit `k` = page `k` of the range) the bit
/// of every `page_size` page of guest-physical `[iova, iova + length)` holding a frame the GPU
/// wrote since the last report, and forget them; the number of frames goes to `*found` (may be
/// null). In stream mode it reports nothing (the pages travel in the stream).
///
/// # Safety
/// `dev` is a live handle (or null); `bitmap` is null or valid for writes of `bitmap_words`
/// words; `found` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_dirty_report(
    dev: *mut VgpuMigDevice,
    iova: u64,
    length: u64,
    page_size: u64,
    bitmap: *mut u64,
    bitmap_words: usize,
    found: *mut u64,
) -> c_int {
    // SAFETY: forwarded contract; `found` is null or writable.
    unsafe {
        with(dev, |d| {
            if bitmap.is_null() {
                return Err(VGPU_MIG_E_NULL);
            }
            let bits = slice_mut(bitmap, bitmap_words)?;
            d.dirty_report(iova, length, page_size, bits)
                .map(|k| put(found, k))
        })
    }
}

/// The device model's GPU wrote guest frame `gfn` (DMA the CPU dirty log does not see); call it
/// after the write is visible.
///
/// # Safety
/// `dev` is a live handle (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_mark_gpu_dirty(dev: *mut VgpuMigDevice, gfn: u64) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with(dev, |d| d.mark_gpu_dirty(gfn)) }
}

/// `VFIO_DEVICE_RESET`: any migration is abandoned; the vGPU is at reset and RUNNING (the only
/// way out of ERROR).
///
/// # Safety
/// `dev` is a live handle (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_reset(dev: *mut VgpuMigDevice) -> c_int {
    // SAFETY: forwarded contract.
    unsafe {
        with(dev, |d| {
            d.reset();
            Ok(())
        })
    }
}

/// The text of a result code: a static NUL-terminated string, never null.
#[unsafe(no_mangle)]
pub extern "C" fn vgpu_mig_strerror(code: c_int) -> *const c_char {
    codes::text(code).as_ptr()
}

/// The detail of the device's last failure (which record, which frame, which register), as
/// NUL-terminated text in `buf` (`len` bytes, truncated to fit); returns that failure's code
/// (`VGPU_MIG_OK` if none yet), or a negative code for a null pointer or `len` 0.
///
/// # Safety
/// `dev` is a live handle (or null); `buf` is null or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgpu_mig_last_error(
    dev: *mut VgpuMigDevice,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    if buf.is_null() {
        return VGPU_MIG_E_NULL;
    }
    if len == 0 {
        return VGPU_MIG_E_ARGUMENT;
    }
    // SAFETY: forwarded contract; `buf` is non-null and writable for `len` bytes.
    match unsafe { device(dev).and_then(|d| Ok((d, slice_mut(buf.cast::<u8>(), len)?))) } {
        Ok((d, out)) => {
            let room = out.len().saturating_sub(1);
            let (code, n) = d.last_error(out.get_mut(..room).unwrap_or(&mut []));
            if let Some(nul) = out.get_mut(n) {
                *nul = 0;
            }
            code
        }
        Err(c) => c,
    }
}

/// The library's version, as static NUL-terminated text.
#[unsafe(no_mangle)]
pub extern "C" fn vgpu_mig_version() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    V.as_ptr()
}

/// The staticlib's panic handler: abort the process through the C library. Panics are bugs
/// here (the code is written not to panic); they must never unwind into C.
#[cfg(all(feature = "panic-handler", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    unsafe extern "C" {
        fn abort() -> !;
    }
    // SAFETY: the C library's abort() takes nothing and does not return.
    unsafe { abort() }
}

/// The unwinding personality routine that the precompiled `core` of hosted targets refers to
/// from its unwind tables. Nothing unwinds here (the staticlib is built with `panic = "abort"`
/// and [`panic`] aborts), so it is never called; without it a C program does not link.
#[cfg(all(feature = "panic-handler", not(test)))]
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[cfg(test)]
mod tests;
