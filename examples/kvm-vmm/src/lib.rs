//! A small KVM VMM that embeds the vGPU crates as a microhypervisor would: the reference
//! embedding (std, Linux, x86-64).
//!
//! - [`vm::Vm`]: a KVM VM with guest RAM in a dirty-logged memory slot ([`memory`]), one vCPU
//!   thread in 64-bit mode running the bare-metal guest driver (`examples/kvm-guest`), the vGPU's
//!   PCI config space (ECAM) and BAR0 (registers and the GGTT window) as unbacked guest-physical
//!   ranges whose MMIO exits go to [`vgpu::instance::Vgpu`]'s trap-and-emulate ([`device`]), and
//!   a GPU thread running the reference device's executor concurrently, writing guest RAM as DMA
//!   does and marking the vGPU's GPU dirty log.
//! - [`migration`]: live migration of the whole VM over any byte stream (TCP): guest RAM
//!   pre-copied with KVM's dirty log merged with the vGPU's GPU dirty report (the library's
//!   VMM-RAM mode, [`vgpu::source::MemoryMode::Report`]), the vGPU's device state through the
//!   library's sessions, then the vCPU state ([`cpu`]).
//!
//! The rust-vmm crates: `kvm-ioctls`/`kvm-bindings` for the VM, vCPU and dirty log;
//! `vm-memory` for guest RAM (the mapping KVM uses, and its dirty bitmap for the VMM's own
//! writes); `vmm-sys-util` for kicking the vCPU thread out of `KVM_RUN` with a signal.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(
    clippy::std_instead_of_core,
    reason = "a std program on Linux; core paths would only obscure it"
)]

pub mod cpu;
pub mod device;
pub mod image;
pub mod memory;
pub mod migration;
pub mod testplan;
pub mod vm;
