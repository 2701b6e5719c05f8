//! The C surface called as C calls it: null pointers, short and misaligned buffers, bad
//! arguments and wrong state transitions give codes (never panics), and a vGPU migrates through
//! it in both memory modes.

use std::vec;
use std::vec::Vec;

use super::*;
use crate::codes::*;
use crate::device::*;

const FIRST_GFN: u64 = 0x100;
const FRAMES: u64 = 64;

static REGIONS: [VgpuMigRegion; 1] = [VgpuMigRegion {
    first_gfn: FIRST_GFN,
    frames: FRAMES,
}];

fn config(memory_mode: u32) -> VgpuMigConfig {
    VgpuMigConfig {
        aperture_base: 0,
        aperture_size: 1 << 20,
        hidden_base: 0x1000_0000,
        hidden_size: 1 << 20,
        host_aperture_base: 0x200_0000,
        host_hidden_base: 0x2000_0000,
        regions: REGIONS.as_ptr(),
        region_count: 1,
        caps: VGPU_MIG_CAP_STOP_COPY | VGPU_MIG_CAP_PRE_COPY,
        memory_mode,
        stream_id: 7,
    }
}

fn layout_of(cfg: &VgpuMigConfig) -> VgpuMigLayout {
    let mut l = VgpuMigLayout::default();
    assert_eq!(unsafe { vgpu_mig_layout(cfg, &mut l) }, VGPU_MIG_OK);
    l
}

/// A vGPU with its storage and guest RAM (kept alive beside the handle).
struct Vm {
    dev: *mut VgpuMigDevice,
    _storage: Vec<u64>,
    ram: Vec<u8>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        unsafe { vgpu_mig_destroy(self.dev) };
    }
}

fn create(cfg: &VgpuMigConfig) -> Vm {
    let l = layout_of(cfg);
    assert!(l.storage_align <= 8, "Vec<u64> storage is 8-byte aligned");
    let mut storage = vec![0u64; l.storage_bytes.div_ceil(8)];
    let mut ram = vec![0u8; l.guest_memory_bytes];
    let mut dev = ptr::null_mut();
    let rc = unsafe {
        vgpu_mig_create(
            cfg,
            storage.as_mut_ptr().cast(),
            l.storage_bytes,
            ram.as_mut_ptr(),
            ram.len(),
            ptr::null(),
            &mut dev,
        )
    };
    assert_eq!(rc, VGPU_MIG_OK);
    assert!(!dev.is_null());
    Vm {
        dev,
        _storage: storage,
        ram,
    }
}

fn state(vm: &Vm) -> u32 {
    let mut s = 99;
    assert_eq!(unsafe { vgpu_mig_get_state(vm.dev, &mut s) }, VGPU_MIG_OK);
    s
}

fn last_error(vm: &Vm) -> (i32, std::string::String) {
    let mut buf = [0 as c_char; 256];
    let code = unsafe { vgpu_mig_last_error(vm.dev, buf.as_mut_ptr(), buf.len()) };
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    (code, text.to_string_lossy().into_owned())
}

/// Read the whole stream: PRE_COPY until it has nothing, then STOP_COPY to the end, then STOP.
fn save(vm: &Vm) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 3000];
    let mut reached = 0;
    assert_eq!(
        unsafe { vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_PRE_COPY, &mut reached) },
        VGPU_MIG_OK
    );
    assert_eq!(reached, VGPU_MIG_STATE_PRE_COPY);
    let mut read = |stream: &mut Vec<u8>| loop {
        let mut n = 0;
        let rc = unsafe { vgpu_mig_read(vm.dev, buf.as_mut_ptr(), buf.len(), 0, &mut n) };
        assert_eq!(rc, VGPU_MIG_OK);
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    };
    read(&mut stream);
    assert_eq!(
        unsafe { vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_STOP_COPY, ptr::null_mut()) },
        VGPU_MIG_OK
    );
    read(&mut stream);
    assert_eq!(unsafe { vgpu_mig_is_saved(vm.dev) }, 1);
    assert_eq!(
        unsafe { vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_STOP, ptr::null_mut()) },
        VGPU_MIG_OK
    );
    stream
}

fn restore(vm: &Vm, stream: &[u8], chunk: usize) -> i32 {
    let rc = unsafe { vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_RESUMING, ptr::null_mut()) };
    assert_eq!(rc, VGPU_MIG_OK);
    for piece in stream.chunks(chunk) {
        let mut n = 0;
        let rc = unsafe { vgpu_mig_write(vm.dev, piece.as_ptr(), piece.len(), &mut n) };
        if rc != VGPU_MIG_OK {
            return rc;
        }
        assert_eq!(n, piece.len());
    }
    unsafe { vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_STOP, ptr::null_mut()) }
}

fn mmio(vm: &Vm, offset: u32, size: u32) -> u64 {
    let mut v = 0;
    assert_eq!(
        unsafe { vgpu_mig_mmio_read(vm.dev, offset, size, &mut v) },
        VGPU_MIG_OK
    );
    v
}

fn program(vm: &mut Vm) {
    for i in 0..16u32 {
        let entry = ((FIRST_GFN + u64::from(i) * 3) << 12) | 1;
        let rc = unsafe { vgpu_mig_mmio_write(vm.dev, VGPU_MIG_GGTT_WINDOW + 8 * i, 8, entry) };
        assert_eq!(rc, VGPU_MIG_OK);
    }
    assert_eq!(
        unsafe { vgpu_mig_mmio_write(vm.dev, 0x4080, 4, 0xF) },
        VGPU_MIG_OK
    );
    for (i, b) in vm.ram.iter_mut().enumerate() {
        *b = u8::try_from(i % 251).unwrap();
    }
}

#[test]
fn a_vgpu_migrates_through_the_c_surface() {
    let cfg = config(VGPU_MIG_MEMORY_STREAM);
    let mut src = create(&cfg);
    let dst = create(&cfg);
    program(&mut src);
    let stream = save(&src);
    assert_eq!(restore(&dst, &stream, 777), VGPU_MIG_OK);
    assert_eq!(state(&dst), VGPU_MIG_STATE_STOP);
    for i in 0..16u32 {
        let off = VGPU_MIG_GGTT_WINDOW + 8 * i;
        assert_eq!(mmio(&dst, off, 8), mmio(&src, off, 8));
        assert_ne!(mmio(&dst, off, 8), 0);
    }
    assert_eq!(mmio(&dst, 0x4080, 4), 0xF);
    assert_eq!(dst.ram, src.ram);
}

#[test]
fn a_damaged_stream_is_a_code_and_leaves_the_device_state() {
    let cfg = config(VGPU_MIG_MEMORY_STREAM);
    let mut src = create(&cfg);
    let dst = create(&cfg);
    program(&mut src);
    let mut stream = save(&src);
    let before: Vec<u64> = (0..16u32)
        .map(|i| mmio(&dst, VGPU_MIG_GGTT_WINDOW + 8 * i, 8))
        .collect();
    let at = stream.len() - 40;
    stream[at] ^= 1;
    let rc = restore(&dst, &stream, 4096);
    assert!(rc < 0, "damaged stream accepted");
    let (code, text) = last_error(&dst);
    assert_eq!(code, rc);
    assert!(!text.is_empty());
    let after: Vec<u64> = (0..16u32)
        .map(|i| mmio(&dst, VGPU_MIG_GGTT_WINDOW + 8 * i, 8))
        .collect();
    assert_eq!(before, after);
    assert_eq!(mmio(&dst, 0x4080, 4), mmio(&create(&cfg), 0x4080, 4));
}

#[test]
fn report_mode_reports_the_gpu_writes() {
    let cfg = config(VGPU_MIG_MEMORY_REPORT);
    let vm = create(&cfg);
    assert_eq!(
        unsafe { vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_PRE_COPY, ptr::null_mut()) },
        VGPU_MIG_OK
    );
    assert_eq!(
        unsafe { vgpu_mig_mark_gpu_dirty(vm.dev, FIRST_GFN + 5) },
        VGPU_MIG_OK
    );
    assert_eq!(
        unsafe { vgpu_mig_mark_gpu_dirty(vm.dev, FIRST_GFN + 9) },
        VGPU_MIG_OK
    );
    assert_eq!(
        unsafe { vgpu_mig_mark_gpu_dirty(vm.dev, FIRST_GFN + FRAMES) },
        VGPU_MIG_E_ARGUMENT
    );
    let mut bitmap = [0u64; 1];
    let mut found = 0;
    let (iova, length) = (FIRST_GFN * 4096, FRAMES * 4096);
    let rc = unsafe {
        vgpu_mig_dirty_report(
            vm.dev,
            iova,
            length,
            4096,
            bitmap.as_mut_ptr(),
            1,
            &mut found,
        )
    };
    assert_eq!(rc, VGPU_MIG_OK);
    assert_eq!(found, 2);
    assert_eq!(bitmap[0], (1 << 5) | (1 << 9));
    // Read-and-clear: nothing new since.
    bitmap[0] = 0;
    let rc = unsafe {
        vgpu_mig_dirty_report(
            vm.dev,
            iova,
            length,
            4096,
            bitmap.as_mut_ptr(),
            1,
            &mut found,
        )
    };
    assert_eq!((rc, found, bitmap[0]), (VGPU_MIG_OK, 0, 0));
    // A bitmap too small for the range, and an unaligned range: codes.
    let rc = unsafe {
        vgpu_mig_dirty_report(
            vm.dev,
            iova,
            128 * 4096,
            4096,
            bitmap.as_mut_ptr(),
            1,
            &mut found,
        )
    };
    assert_eq!(rc, VGPU_MIG_E_REPORT);
    let rc = unsafe {
        vgpu_mig_dirty_report(
            vm.dev,
            iova + 1,
            length,
            4096,
            bitmap.as_mut_ptr(),
            1,
            &mut found,
        )
    };
    assert_eq!(rc, VGPU_MIG_E_REPORT);
    let rc = unsafe {
        vgpu_mig_dirty_report(vm.dev, iova, length, 4096, ptr::null_mut(), 1, &mut found)
    };
    assert_eq!(rc, VGPU_MIG_E_NULL);
    // Device state only in the stream: it still migrates.
    let _ = unsafe { vgpu_mig_reset(vm.dev) };
    let stream = save(&vm);
    assert!(stream.len() < 64 * 1024, "report mode sends no pages");
    assert_eq!(restore(&create(&cfg), &stream, 512), VGPU_MIG_OK);
}

#[test]
fn null_pointers_are_codes() {
    let null = ptr::null_mut();
    let mut v64 = 0u64;
    let mut v32 = 0u32;
    let mut n = 0usize;
    let mut buf = [0u8; 8];
    unsafe {
        assert_eq!(
            vgpu_mig_layout(ptr::null(), &mut VgpuMigLayout::default()),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_layout(&config(0), ptr::null_mut()),
            VGPU_MIG_E_NULL
        );
        assert_eq!(vgpu_mig_mmio_read(null, 0, 4, &mut v64), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_mmio_write(null, 0, 4, 0), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_config_read(null, 0, 4, &mut v32), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_config_write(null, 0, 4, 0), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_get_state(null, &mut v32), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_set_state(null, 1, &mut v32), VGPU_MIG_E_NULL);
        assert_eq!(
            vgpu_mig_read(null, buf.as_mut_ptr(), 8, 0, &mut n),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_write(null, buf.as_ptr(), 8, &mut n),
            VGPU_MIG_E_NULL
        );
        assert_eq!(vgpu_mig_is_saved(null), VGPU_MIG_E_NULL);
        assert_eq!(
            vgpu_mig_precopy_info(null, &mut v64, &mut v64.clone()),
            VGPU_MIG_E_NULL
        );
        assert_eq!(vgpu_mig_stop_copy_size(null, &mut v64), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_mark_gpu_dirty(null, FIRST_GFN), VGPU_MIG_E_NULL);
        assert_eq!(vgpu_mig_reset(null), VGPU_MIG_E_NULL);
        let mut text = [0 as c_char; 8];
        assert_eq!(
            vgpu_mig_last_error(null, text.as_mut_ptr(), 8),
            VGPU_MIG_E_NULL
        );
        vgpu_mig_destroy(null);
    }
    let vm = create(&config(0));
    unsafe {
        assert_eq!(
            vgpu_mig_mmio_read(vm.dev, 0x4080, 4, ptr::null_mut()),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_config_read(vm.dev, 0, 4, ptr::null_mut()),
            VGPU_MIG_E_NULL
        );
        assert_eq!(vgpu_mig_get_state(vm.dev, ptr::null_mut()), VGPU_MIG_E_NULL);
        assert_eq!(
            vgpu_mig_read(vm.dev, buf.as_mut_ptr(), 8, 0, ptr::null_mut()),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_PRE_COPY, ptr::null_mut()),
            0
        );
        assert_eq!(
            vgpu_mig_read(vm.dev, ptr::null_mut(), 8, 0, &mut n),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_precopy_info(vm.dev, ptr::null_mut(), &mut v64),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_last_error(vm.dev, ptr::null_mut(), 8),
            VGPU_MIG_E_NULL
        );
    }
    // Creation: every pointer, and nothing stored in *out on failure.
    let cfg = config(0);
    let l = layout_of(&cfg);
    let mut storage = vec![0u64; l.storage_bytes / 8 + 1];
    let mut ram = vec![0u8; l.guest_memory_bytes];
    let mut dev = ptr::NonNull::<VgpuMigDevice>::dangling().as_ptr();
    let sentinel = dev;
    let (s, r) = (storage.as_mut_ptr().cast::<c_void>(), ram.as_mut_ptr());
    let (sl, rl) = (l.storage_bytes, ram.len());
    unsafe {
        assert_eq!(
            vgpu_mig_create(ptr::null(), s, sl, r, rl, ptr::null(), &mut dev),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_create(&cfg, ptr::null_mut(), sl, r, rl, ptr::null(), &mut dev),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_create(&cfg, s, sl, ptr::null_mut(), rl, ptr::null(), &mut dev),
            VGPU_MIG_E_NULL
        );
        assert_eq!(
            vgpu_mig_create(&cfg, s, sl, r, rl, ptr::null(), ptr::null_mut()),
            VGPU_MIG_E_NULL
        );
        let no_regions = VgpuMigConfig {
            regions: ptr::null(),
            ..cfg
        };
        assert_eq!(
            vgpu_mig_create(&no_regions, s, sl, r, rl, ptr::null(), &mut dev),
            VGPU_MIG_E_NULL
        );
    }
    assert_eq!(dev, sentinel);
}

#[test]
fn short_and_misaligned_buffers_are_codes() {
    let cfg = config(0);
    let l = layout_of(&cfg);
    let mut storage = vec![0u64; l.storage_bytes / 8 + 1];
    let mut ram = vec![0u8; l.guest_memory_bytes];
    let mut dev = ptr::null_mut();
    let s = storage.as_mut_ptr().cast::<c_void>();
    let r = ram.as_mut_ptr();
    unsafe {
        let short = vgpu_mig_create(
            &cfg,
            s,
            l.storage_bytes - 1,
            r,
            ram.len(),
            ptr::null(),
            &mut dev,
        );
        assert_eq!(short, VGPU_MIG_E_STORAGE_SIZE);
        let short_ram = vgpu_mig_create(
            &cfg,
            s,
            l.storage_bytes,
            r,
            ram.len() - 4096,
            ptr::null(),
            &mut dev,
        );
        assert_eq!(short_ram, VGPU_MIG_E_STORAGE_SIZE);
        let odd = s.cast::<u8>().add(4).cast::<c_void>();
        let misaligned = vgpu_mig_create(
            &cfg,
            odd,
            l.storage_bytes,
            r,
            ram.len(),
            ptr::null(),
            &mut dev,
        );
        assert_eq!(misaligned, VGPU_MIG_E_STORAGE_ALIGN);
        let huge = vgpu_mig_create(&cfg, s, usize::MAX, r, ram.len(), ptr::null(), &mut dev);
        assert_eq!(huge, VGPU_MIG_E_STORAGE_SIZE);
    }
    assert!(dev.is_null());
    // A buffer length beyond what any object can span, and a misaligned bitmap.
    let vm = create(&cfg);
    let mut n = 0;
    let mut words = [0u64; 2];
    unsafe {
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_PRE_COPY, ptr::null_mut()),
            0
        );
        let mut byte = 0u8;
        assert_eq!(
            vgpu_mig_read(vm.dev, &mut byte, usize::MAX, 0, &mut n),
            VGPU_MIG_E_ARGUMENT
        );
        let odd = words.as_mut_ptr().cast::<u8>().add(1).cast::<u64>();
        assert_eq!(
            vgpu_mig_dirty_report(vm.dev, 0x100000, 4096, 4096, odd, 1, &mut 0),
            VGPU_MIG_E_ARGUMENT
        );
    }
    // last_error truncates to the buffer, always NUL-terminated.
    unsafe {
        assert_eq!(
            vgpu_mig_mmio_read(vm.dev, 0x4080, 3, &mut 0),
            VGPU_MIG_E_ARGUMENT
        );
        let mut one = [1 as c_char; 1];
        assert_eq!(
            vgpu_mig_last_error(vm.dev, one.as_mut_ptr(), 1),
            VGPU_MIG_E_ARGUMENT
        );
        assert_eq!(one[0], 0);
        let mut five = [1 as c_char; 5];
        assert_eq!(
            vgpu_mig_last_error(vm.dev, five.as_mut_ptr(), 5),
            VGPU_MIG_E_ARGUMENT
        );
        assert_eq!(CStr::from_ptr(five.as_ptr()).to_bytes(), b"an a");
        assert_eq!(
            vgpu_mig_last_error(vm.dev, five.as_mut_ptr(), 0),
            VGPU_MIG_E_ARGUMENT
        );
    }
}

#[test]
fn bad_arguments_and_configurations_are_codes() {
    let vm = create(&config(0));
    let mut v = 0u64;
    let mut c = 0u32;
    unsafe {
        assert_eq!(
            vgpu_mig_mmio_read(vm.dev, 0x4080, 16, &mut v),
            VGPU_MIG_E_ARGUMENT
        );
        assert_eq!(
            vgpu_mig_mmio_write(vm.dev, 0x4080, 0, 0),
            VGPU_MIG_E_ARGUMENT
        );
        assert_eq!(
            vgpu_mig_mmio_read(vm.dev, 0x7FF_FFF0, 4, &mut v),
            VGPU_MIG_E_MMIO
        );
        assert_eq!(
            vgpu_mig_config_read(vm.dev, 0x1_0000, 4, &mut c),
            VGPU_MIG_E_ARGUMENT
        );
        assert_eq!(
            vgpu_mig_config_read(vm.dev, 0, 8, &mut c),
            VGPU_MIG_E_ARGUMENT
        );
        assert!(vgpu_mig_config_read(vm.dev, 4094, 4, &mut c) < 0);
        assert!(vgpu_mig_config_write(vm.dev, 4093, 4, 0) < 0);
        // Identity is read-only: a write keeps the vendor id.
        assert_eq!(vgpu_mig_config_write(vm.dev, 0, 2, 0xFFFF), VGPU_MIG_OK);
        assert_eq!(vgpu_mig_config_read(vm.dev, 0, 2, &mut c), VGPU_MIG_OK);
        assert_eq!(c, 0x8086);
    }
    let mut l = VgpuMigLayout::default();
    let bad = [
        VgpuMigConfig {
            caps: VGPU_MIG_CAP_PRE_COPY,
            ..config(0)
        },
        VgpuMigConfig {
            caps: 0x80 | VGPU_MIG_CAP_STOP_COPY,
            ..config(0)
        },
        VgpuMigConfig {
            memory_mode: 2,
            ..config(0)
        },
        VgpuMigConfig {
            region_count: 0,
            ..config(0)
        },
        VgpuMigConfig {
            region_count: VGPU_MIG_MAX_REGIONS + 1,
            ..config(0)
        },
        VgpuMigConfig {
            aperture_size: 100,
            ..config(0)
        },
        VgpuMigConfig {
            hidden_base: 0,
            ..config(0)
        },
    ];
    for cfg in bad {
        assert_eq!(
            unsafe { vgpu_mig_layout(&cfg, &mut l) },
            VGPU_MIG_E_CONFIG,
            "{cfg:?}"
        );
    }
    let overlapping = [
        VgpuMigRegion {
            first_gfn: 0x100,
            frames: 16,
        },
        VgpuMigRegion {
            first_gfn: 0x108,
            frames: 16,
        },
    ];
    let cfg = VgpuMigConfig {
        regions: overlapping.as_ptr(),
        region_count: 2,
        ..config(0)
    };
    assert_eq!(unsafe { vgpu_mig_layout(&cfg, &mut l) }, VGPU_MIG_E_CONFIG);
}

#[test]
fn wrong_state_transitions_are_codes() {
    let cfg = config(0);
    let vm = create(&cfg);
    let mut buf = [0u8; 64];
    let mut n = 0;
    let (mut a, mut b) = (0u64, 0u64);
    let mut reached = 0;
    unsafe {
        // Data outside the data states.
        assert_eq!(
            vgpu_mig_read(vm.dev, buf.as_mut_ptr(), 64, 0, &mut n),
            VGPU_MIG_E_WRONG_STATE
        );
        assert_eq!(
            vgpu_mig_write(vm.dev, buf.as_ptr(), 64, &mut n),
            VGPU_MIG_E_WRONG_STATE
        );
        assert_eq!(
            vgpu_mig_precopy_info(vm.dev, &mut a, &mut b),
            VGPU_MIG_E_WRONG_STATE
        );
        // ERROR is never a request; unknown numbers are arguments.
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_ERROR, &mut reached),
            VGPU_MIG_E_TRANSITION
        );
        assert_eq!(reached, VGPU_MIG_STATE_RUNNING);
        assert_eq!(
            vgpu_mig_set_state(vm.dev, 8, &mut reached),
            VGPU_MIG_E_ARGUMENT
        );
        // P2P states without the P2P capability.
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_RUNNING_P2P, &mut reached),
            VGPU_MIG_E_TRANSITION
        );
        assert_eq!(reached, VGPU_MIG_STATE_RUNNING);
        // RESUMING with no data: the commit fails and the device is in ERROR until reset.
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_RESUMING, &mut reached),
            VGPU_MIG_OK
        );
        assert_eq!(
            vgpu_mig_read(vm.dev, buf.as_mut_ptr(), 64, 0, &mut n),
            VGPU_MIG_E_WRONG_STATE
        );
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_STOP, &mut reached),
            VGPU_MIG_E_TRUNCATED
        );
        assert_eq!(reached, VGPU_MIG_STATE_ERROR);
        assert_eq!(last_error(&vm).0, VGPU_MIG_E_TRUNCATED);
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_RUNNING, &mut reached),
            VGPU_MIG_E_TRANSITION
        );
        assert_eq!(reached, VGPU_MIG_STATE_ERROR);
        assert_eq!(vgpu_mig_reset(vm.dev), VGPU_MIG_OK);
    }
    assert_eq!(state(&vm), VGPU_MIG_STATE_RUNNING);
    // PRE_COPY -> RUNNING cancels; the saving stream is gone.
    unsafe {
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_PRE_COPY, &mut reached),
            VGPU_MIG_OK
        );
        assert_eq!(vgpu_mig_precopy_info(vm.dev, &mut a, &mut b), VGPU_MIG_OK);
        assert_eq!(a, FRAMES * 4096);
        assert_eq!(
            vgpu_mig_set_state(vm.dev, VGPU_MIG_STATE_RUNNING, &mut reached),
            VGPU_MIG_OK
        );
        assert_eq!(vgpu_mig_is_saved(vm.dev), 0);
        assert_eq!(
            vgpu_mig_read(vm.dev, buf.as_mut_ptr(), 64, 0, &mut n),
            VGPU_MIG_E_WRONG_STATE
        );
    }
}

#[test]
fn the_layout_covers_every_buffer_and_strerror_is_static() {
    let cfg = config(0);
    let l = layout_of(&cfg);
    assert_eq!(l.guest_frames, FRAMES);
    assert_eq!(l.guest_memory_bytes as u64, FRAMES * 4096);
    let parts = l.device_bytes
        + l.config_space_bytes
        + l.vregs_bytes
        + l.ggtt_bytes
        + l.gpu_dirty_bytes
        + l.send_bytes
        + l.scratch_bytes
        + l.staging_bytes;
    assert!(parts <= l.storage_bytes && l.storage_bytes < parts + 8 * 8);
    assert_eq!(l.ggtt_bytes, 512 * 8);
    assert_eq!(l.storage_bytes % l.storage_align, 0);
    for code in [VGPU_MIG_OK, VGPU_MIG_E_NULL, VGPU_MIG_E_STREAM, -12345] {
        let p = vgpu_mig_strerror(code);
        assert!(!p.is_null());
        assert!(!unsafe { CStr::from_ptr(p) }.to_bytes().is_empty());
    }
    let v = unsafe { CStr::from_ptr(vgpu_mig_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

unsafe extern "C" fn refuse_map(_: *mut c_void, _: u64, _: c_int, _: u64, _: u64) -> c_int {
    -1
}

/// A CPU dirty log that never runs dry and reports frames inside and outside guest memory.
unsafe extern "C" fn endless_harvest(ctx: *mut c_void, gfns: *mut u64, capacity: usize) -> usize {
    let calls = unsafe { &mut *ctx.cast::<u64>() };
    *calls += 1;
    let out = unsafe { core::slice::from_raw_parts_mut(gfns, capacity) };
    for (i, g) in out.iter_mut().enumerate() {
        *g = FIRST_GFN + (i as u64 * 5) % (2 * FRAMES);
    }
    capacity
}

fn create_with(cfg: &VgpuMigConfig, ops: &VgpuMigHostOps) -> Vm {
    let l = layout_of(cfg);
    let mut storage = vec![0u64; l.storage_bytes.div_ceil(8)];
    let mut ram = vec![0u8; l.guest_memory_bytes];
    let mut dev = ptr::null_mut();
    let rc = unsafe {
        vgpu_mig_create(
            cfg,
            storage.as_mut_ptr().cast(),
            l.storage_bytes,
            ram.as_mut_ptr(),
            ram.len(),
            ops,
            &mut dev,
        )
    };
    assert_eq!(rc, VGPU_MIG_OK);
    Vm {
        dev,
        _storage: storage,
        ram,
    }
}

#[test]
fn misbehaving_host_callbacks_are_bounded_and_reported() {
    let cfg = config(VGPU_MIG_MEMORY_STREAM);
    let mut calls = 0u64;
    let ops = VgpuMigHostOps {
        ctx: (&raw mut calls).cast(),
        ggtt_map: Some(refuse_map),
        program_fence: None,
        cpu_dirty_harvest: Some(endless_harvest),
    };
    let vm = create_with(&cfg, &ops);
    // The host GTT refuses: the guest's GGTT write is a code.
    let rc = unsafe { vgpu_mig_mmio_write(vm.dev, VGPU_MIG_GGTT_WINDOW, 8, (FIRST_GFN << 12) | 1) };
    assert_eq!(rc, VGPU_MIG_E_HOST_GTT);
    // A dirty log that always fills the buffer is asked a bounded number of times per harvest,
    // and the migration still completes and restores.
    let stream = save(&vm);
    assert!(calls > 0);
    let harvests_bound = FRAMES.div_ceil(HARVEST_BATCH as u64) + 1;
    assert!(calls <= 8 * harvests_bound, "{calls} harvest calls");
    assert_eq!(restore(&create(&cfg), &stream, 4096), VGPU_MIG_OK);
}
