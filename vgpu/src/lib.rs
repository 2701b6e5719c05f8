//! One mediated vGPU and its live migration.
//!
//! This is the crate a hypervisor author imports. It composes the component crates into a vGPU
//! instance ([`instance::Vgpu`]: config space, trapped BAR0 with the register file and the GGTT
//! window, engines, GPU-side dirty log), follows the Linux VFIO migration v2 state machine
//! ([`fsm`]), and moves a running vGPU with two sans-IO sessions: [`source::SourceSession`] turns
//! it into a stream (pre-copy rounds of graphics memory under the `gmem` policy, then the
//! stop-and-copy), [`dest::DestSession`] reads a stream into a stopped vGPU, staging and
//! validating device state and committing it only when all of it is valid. [`vfio::VfioMigration`]
//! drives both through VFIO `device_state` requests, one arc at a time. Page traffic can be split
//! over several channels ([`channel`]), and a VMM that migrates guest RAM itself can take the
//! GPU's writes as a dirty report instead ([`source::MemoryMode::Report`]).
//!
//! Guarantees:
//! - `no_std`, no allocator in any migration path: storage is the caller's ([`instance::VgpuStorage`],
//!   the sessions' bitmaps, scratch and staging buffers), so a vGPU can live in `static`s.
//! - Sans-IO and deterministic: no clocks, no threads, no I/O; time is an argument.
//! - The destination treats the stream as hostile: every length is bounded, every GTT entry must
//!   point into the guest's memory, registers must be on the save list with their read-only bits
//!   intact. A rejected stream leaves the vGPU's device state untouched.
//! - The source never loses guest work: saving copies, and cancelling resumes exactly.
//!
//! The embedder implements three traits ([`GuestMemory`], [`HostGtt`], [`CpuDirtyLog`]) and
//! sizes every buffer with [`Layout`] before anything starts; the names it uses are re-exported
//! at the crate root. The device state travels as records in the order of one table
//! ([`sections`]): each record kind is a [`Section`] owned by the crate whose state it holds. The
//! reference device (a software GPU and a guest driver model that run every path without
//! hardware, deterministically) is the crate `vgpu-mig-sim`.
//!
//! MSRV: the workspace `rust-version` (1.88). The GPU dirty log is a bitmap of atomic words
//! ([`gmem::AtomicWord`]: `AtomicU64`, or `AtomicU32` on targets with only 32-bit atomics such as
//! Cortex-M), so the crate needs a target with at least 32-bit atomics.
//!
//! # Locking rules for a threaded hypervisor
//!
//! In a real host, vCPUs and the GPU write guest memory while the migration thread copies it,
//! and MMIO exits keep arriving while pages stream. The source is correct under that because:
//!
//! - **Harvest before read.** The session clears a page's bits in both dirty logs (the
//!   [`traits::CpuDirtyLog`] and the [`tracking::GpuDirtyLog`]) before it reads the page, so a
//!   write after the read marks it again and it goes in a later round or the stop-and-copy. The
//!   writer's side of that contract: log a write *after* it lands (KVM does; the GPU thread calls
//!   [`tracking::GpuDirtyLog::mark`] after its DMA write is visible).
//! - **One read per send.** Each page is read once, into the record being built, and the bytes
//!   classified (zero, duplicate, unchanged, delta) are the bytes sent; what content tracking
//!   keeps for later duplicates and deltas is exactly what the destination received. A page may
//!   change during its read; the copy sent is then torn, and the write's dirty bit sends it again.
//! - **No device lock while pages stream.** Copying pages needs guest memory and the dirty logs,
//!   not the [`instance::Vgpu`]. The session reaches the vGPU through [`traits::VgpuAccess`]:
//!   the GPU dirty log without a lock, the device itself briefly (round ends, GGTT pre-copy
//!   chunks, device-state records after the stop), never while it reads a page.
//!
//! Who holds what:
//!
//! | thread | holds the `Vgpu` lock for | without the lock |
//! |---|---|---|
//! | vCPU | each MMIO exit ([`instance::Vgpu::mmio_read`], `mmio_write`) | guest code; KVM logs its RAM writes |
//! | GPU | reading or changing device state (engines, GGTT translation) | writing guest memory, then [`tracking::GpuDirtyLog::mark`] |
//! | migration | [`source::SourceSession::open`], `stop_and_copy`, `complete`, `cancel` (short) | [`source::SourceSession::poll_output`]; the session locks briefly through `with_vgpu` |
//! | channel page threads (optional) | never | [`source::PageWorker::poll`]: reads guest memory only (see [`source`], "Channels on threads of their own") |
//!
//! The stop: pause the vCPUs, quiesce the vGPU until nothing is in flight, then
//! `stop_and_copy` (locked) and keep polling: the last dirty pages, then the device state, read
//! while everything is stopped.
//!
//! The destination needs no lock at all while the stream is read: the vGPU is stopped, the
//! session only reads it (`&Vgpu`), and [`dest::DestSession::channels`] splits a multi-channel
//! session into one `Send` handle per channel, each owning its channel's decoder, counters and
//! slice of the page map (channel 0's also the device-state staging), so each channel can be
//! received and applied on its own thread:
//!
//! | thread | holds | writes |
//! |---|---|---|
//! | channel `c` | its [`dest::DestChannel`], `&Vgpu`, a [`GuestMemory`] reaching channel `c`'s stripes | the frames of channel `c`'s stripes only (SPEC.md Appendix A.6) |
//! | after every channel ended | the [`dest::DestSession`] and the whole guest memory | [`dest::DestSession::commit`]: device state, once validated |
//!
//! A refused channel fails the session for every channel (the others get
//! [`VgpuError::ChannelFailed`] and stop); the rules are in [`dest`]'s docs.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
//! use std::sync::Mutex;
//!
//! use vgpu_mig::{
//!     CONFIG_SPACE_SIZE, DestSession, FrameRange, Gfn, GmAddr, GmRange, GpuDirtyLog, GuestMemory,
//!     GuestMemoryMap, HostPlacement, Layout, Limits, MemoryError, Partition, SourceConfig,
//!     SourceEvent, SourceSession, Vgpu, VgpuAccess, VgpuConfig, VgpuError, VgpuStorage,
//! };
//!
//! /// Guest RAM, shared by the vCPUs, the GPU and the migration thread.
//! struct Ram {
//!     map: GuestMemoryMap,
//!     bytes: Mutex<Vec<u8>>,
//! }
//!
//! impl Ram {
//!     fn at(&self, gfn: Gfn, offset: usize, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
//!         let i = self.map.index_of(gfn).ok_or(MemoryError)?;
//!         Ok(i * 4096 + offset..i * 4096 + offset + len)
//!     }
//! }
//!
//! impl GuestMemory for Ram {
//!     fn read(&self, gfn: Gfn, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
//!         let r = self.at(gfn, offset, out.len())?;
//!         out.copy_from_slice(self.bytes.lock().map_err(|_| MemoryError)?.get(r).ok_or(MemoryError)?);
//!         Ok(())
//!     }
//!     fn write(&mut self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
//!         let r = self.at(gfn, offset, data.len())?;
//!         let bytes = self.bytes.get_mut().map_err(|_| MemoryError)?;
//!         bytes.get_mut(r).ok_or(MemoryError)?.copy_from_slice(data);
//!         Ok(())
//!     }
//! }
//!
//! /// What the migration thread hands the session: the device lock and the GPU dirty log.
//! struct Device<'v, 'a> {
//!     vgpu: &'v Mutex<Vgpu<'a>>,
//!     gpu_log: GpuDirtyLog<'a>,
//! }
//!
//! impl VgpuAccess for Device<'_, '_> {
//!     fn gpu_dirty(&self) -> &GpuDirtyLog<'_> {
//!         &self.gpu_log
//!     }
//!     fn with_vgpu(&self, f: &mut dyn FnMut(&Vgpu<'_>)) {
//!         let vgpu = self.vgpu.lock().unwrap_or_else(|e| e.into_inner());
//!         f(&vgpu);
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const FRAMES: usize = 64;
//! let map = GuestMemoryMap::new(&[FrameRange::new(Gfn::new(0x100), FRAMES as u64)?])?;
//! let partition = Partition::new(
//!     GmRange::new(GmAddr::new(0), 1 << 20)?,
//!     GmRange::new(GmAddr::new(0x1000_0000), 1 << 20)?,
//! )?;
//! let placement = HostPlacement::contiguous(&partition, GmAddr::new(0x200_0000), GmAddr::new(0x2000_0000))?;
//! let config = VgpuConfig::skylake(partition);
//! // Every buffer size, known before anything starts.
//! let layout = Layout::new(&config, &map);
//! // One vGPU's storage (a hypervisor would use statics); the GPU dirty log is atomic.
//! let new_vgpu = |cs: &'static mut [u8; CONFIG_SPACE_SIZE], log: &'static [AtomicU64]| {
//!     let storage = VgpuStorage {
//!         config_space: cs,
//!         vregs: Vec::leak(vec![0u32; layout.vregs]),
//!         ggtt: Vec::leak(vec![0u64; layout.ggtt_entries]),
//!         gpu_dirty: log,
//!     };
//!     Vgpu::new(config.clone(), placement.clone(), map.clone(), storage)
//! };
//! let words = layout.gpu_dirty_words;
//! let log_a: &'static [AtomicU64] = Vec::leak((0..words).map(|_| AtomicU64::new(0)).collect());
//! let log_b: &'static [AtomicU64] = Vec::leak((0..words).map(|_| AtomicU64::new(0)).collect());
//! let mut source = new_vgpu(Box::leak(Box::new([0; CONFIG_SPACE_SIZE])), log_a)?;
//! let mut dest = new_vgpu(Box::leak(Box::new([0; CONFIG_SPACE_SIZE])), log_b)?;
//! let ram = Ram { map: map.clone(), bytes: Mutex::new(vec![0; FRAMES * 4096]) };
//!
//! // Storage of the migration, and the session, opened under the device lock (here: before the
//! // lock exists).
//! let mut send = vec![0u64; layout.send_words];
//! let mut scratch = vec![0u8; layout.scratch_for(1).max(64 * 1024)];
//! let mut session = SourceSession::open(&mut source, &mut (), SourceConfig::default(), &mut send, &mut scratch)?;
//! let gpu_log = source.gpu_dirty().clone();
//! let vgpu = Mutex::new(source);
//! let paused = AtomicBool::new(false);
//! let mut stream = Vec::new();
//!
//! std::thread::scope(|s| -> Result<(), VgpuError> {
//!     // A vCPU: MMIO exits take the device lock, briefly, while pages stream.
//!     let vcpu = s.spawn(|| {
//!         while !paused.load(Ordering::Acquire) {
//!             let mut v = vgpu.lock().unwrap_or_else(|e| e.into_inner());
//!             let _ = v.mmio_read(0x78000, 4); // PVINFO magic
//!         }
//!     });
//!     // The GPU: writes guest memory as DMA does, then marks the frame; no device lock.
//!     let gpu = s.spawn(|| {
//!         let mut n = 0u8;
//!         while !paused.load(Ordering::Acquire) {
//!             n = n.wrapping_add(1);
//!             let gfn = Gfn::new(0x100 + u64::from(n) % FRAMES as u64);
//!             let i = map.index_of(gfn).unwrap_or(0);
//!             if let Ok(mut bytes) = ram.bytes.lock() {
//!                 if let Some(b) = bytes.get_mut(i * 4096 + usize::from(n)) {
//!                     *b = n;
//!                 }
//!             }
//!             gpu_log.mark(gfn);
//!         }
//!     });
//!     // The migration thread: no lock held while polling.
//!     let dev = Device { vgpu: &vgpu, gpu_log: gpu_log.clone() };
//!     let mut out = [0u8; 16 * 1024];
//!     let mut rounds = 0;
//!     while !session.is_finished() {
//!         let n = session.poll_output(&dev, &ram, &mut (), 0, &mut out)?;
//!         stream.extend_from_slice(out.get(..n).unwrap_or(&[]));
//!         while let Some(ev) = session.poll_event() {
//!             let round_end = matches!(ev, SourceEvent::RoundEnd { .. });
//!             rounds += usize::from(round_end);
//!             if matches!(ev, SourceEvent::Switch { .. }) || (round_end && rounds == 2 && !session.awaiting_stop()) {
//!                 if paused.swap(true, Ordering::AcqRel) {
//!                     continue;
//!                 }
//!                 // Stop: pause the vCPUs and the GPU, quiesce, then stop-and-copy under the lock.
//!                 while !(vcpu.is_finished() && gpu.is_finished()) {
//!                     std::thread::yield_now();
//!                 }
//!                 let mut v = vgpu.lock().unwrap_or_else(|e| e.into_inner());
//!                 while !v.quiesce().is_idle() {}
//!                 session.stop_and_copy(&mut v, &mut ())?;
//!             }
//!         }
//!     }
//!     Ok(())
//! })?;
//! let mut source = vgpu.into_inner().unwrap_or_else(|e| e.into_inner());
//! session.complete(&mut source)?;
//!
//! // The destination holds exactly the source's final memory.
//! let mut ram_b = Ram { map: map.clone(), bytes: Mutex::new(vec![0; FRAMES * 4096]) };
//! let mut staging = vec![0u8; layout.staging];
//! let mut d = DestSession::open(&mut dest, &mut staging, Limits::DEFAULT)?;
//! d.feed(&dest, &mut ram_b, &stream)?;
//! d.commit(&mut dest, &ram_b, &mut ())?;
//! assert!(*ram_b.bytes.lock().map_err(|_| "poisoned")? == *ram.bytes.lock().map_err(|_| "poisoned")?);
//! # Ok(())
//! # }
//! ```
//!
//! # Example: the next VFIO arc
//!
//! ```
//! use vgpu_mig::fsm::{Caps, MigState, next_arc};
//!
//! // A device with PRE_COPY but no P2P, asked to go from RUNNING to STOP_COPY, steps through STOP.
//! let caps = Caps::STOP_COPY.with(Caps::PRE_COPY);
//! assert_eq!(next_arc(MigState::Running, MigState::StopCopy, caps), Ok(MigState::Stop));
//! assert_eq!(next_arc(MigState::Stop, MigState::StopCopy, caps), Ok(MigState::StopCopy));
//! // From PRE_COPY the saving stream continues straight into STOP_COPY.
//! assert_eq!(next_arc(MigState::PreCopy, MigState::StopCopy, caps), Ok(MigState::StopCopy));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        reason = "tests"
    )
)]
/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod channel;
pub mod content;
pub mod dest;
pub mod error;
pub mod fsm;
pub mod instance;
mod layout;
pub mod ppgtt;
pub mod sections;
pub mod source;
pub mod tracking;
pub mod traits;
pub mod vfio;

// What an embedder names, at the crate root: the instance and its storage, the sessions, the
// VFIO driver, the traits it implements, the errors, and the component types those take.
pub use content::{ContentStats, ContentStorage};
pub use dest::{DestSession, DestStats};
pub use error::{Fault, StorageError, VgpuError};
pub use fsm::{Caps, MigState};
pub use gmem::{AtomicWord, DmaRange, FrameRange, GuestMemoryMap, PolicyConfig, SwitchReason};
pub use gtt::{Generation, Gfn, GgttEntry, GmAddr, GmRange, GttIndex, HostPlacement, Partition};
pub use instance::{CONFIG_SPACE_SIZE, Vgpu, VgpuConfig, VgpuStorage};
pub use layout::Layout;
#[cfg(feature = "auth")]
pub use migstream::AuthKey;
pub use migstream::{Limits, Section};
pub use source::{
    GpuDirtyPrecision, MemoryMode, PrecopyInfo, SourceConfig, SourceEvent, SourceSession,
};
pub use tracking::GpuDirtyLog;
pub use traits::{CpuDirtyLog, GuestMemory, HostError, HostGtt, MemoryError, VgpuAccess};
pub use vfio::{MigrationStorage, VfioMigration};

/// Largest size, in bytes, of the per-vGPU control state the library keeps by value
/// ([`SourceSession`], [`DestSession`], [`VfioMigration`]), with or without authenticated
/// streams, so that creating and returning them is safe on small firmware stacks. Checked at
/// compile time; bulk storage (bitmaps, scratch, staging, and with migstream's `auth` feature
/// each channel's MAC state, `migstream::MacStorage`) is always the caller's.
pub const CONTROL_STATE_MAX: usize = 4096;

/// The control-state bound checked at compile time in this build: [`CONTROL_STATE_MAX`] in
/// every configuration (kept as its own name for embedders that used it).
pub const CONTROL_STATE_LIMIT: usize = CONTROL_STATE_MAX;

static_assertions::const_assert!(
    core::mem::size_of::<source::SourceSession<'static>>() <= CONTROL_STATE_LIMIT
);
static_assertions::const_assert!(
    core::mem::size_of::<dest::DestSession<'static>>() <= CONTROL_STATE_LIMIT
);
static_assertions::const_assert!(
    core::mem::size_of::<vfio::VfioMigration<'static>>() <= CONTROL_STATE_LIMIT
);
