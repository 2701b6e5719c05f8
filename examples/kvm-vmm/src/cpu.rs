//! The vCPU state a migration carries: general and special registers, the XSAVE area (FPU, SSE),
//! XCRs, debug registers, pending events, MP state, the local APIC and the MSRs a 64-bit guest
//! needs, plus the guest clock. Serialized in the VMM's own framing (a tagged list of the KVM
//! structures' bytes), after the vGPU's stream.

use kvm_bindings::{
    Msrs, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use zerocopy::{FromBytes, IntoBytes};

/// MSRs saved and restored, in an order where the ones every CPU has come first (KVM stops at
/// the first MSR it cannot read).
pub const MSRS: [u32; 12] = [
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x277,       // PAT
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0xC000_0102, // KERNEL_GS_BASE
    0x10,        // TSC
    0x1A0,       // MISC_ENABLE
    0xC000_0103, // TSC_AUX
];

/// One vCPU's migratable state.
pub struct CpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, descriptor tables.
    pub sregs: kvm_sregs,
    /// The XSAVE area (x87, SSE and the extended states; it carries what `KVM_GET_FPU` would).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Pending exceptions, interrupts, NMI state.
    pub events: kvm_vcpu_events,
    /// Running / halted.
    pub mp_state: kvm_mp_state,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// (index, value) of the MSRs in [`MSRS`] that this host could read.
    pub msrs: Vec<(u32, u64)>,
    /// The guest clock, µs.
    pub clock_us: u64,
}

impl std::fmt::Debug for CpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuState")
            .field("rip", &self.regs.rip)
            .field("rsp", &self.regs.rsp)
            .field("msrs", &self.msrs.len())
            .field("clock_us", &self.clock_us)
            .finish_non_exhaustive()
    }
}

/// Why a vCPU state could not be taken, set or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuError(pub String);

impl std::fmt::Display for CpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU state: {}", self.0)
    }
}

impl std::error::Error for CpuError {}

fn e(what: &str) -> impl Fn(kvm_ioctls::Error) -> CpuError + '_ {
    move |err| CpuError(format!("{what}: {err}"))
}

const MAGIC: u32 = u32::from_le_bytes(*b"VCPU");

impl CpuState {
    /// Take the state of a paused vCPU.
    pub fn save(vcpu: &VcpuFd, clock_us: u64) -> Result<Self, CpuError> {
        let entries: Vec<kvm_msr_entry> = MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|x| CpuError(format!("{x:?}")))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(e("KVM_GET_MSRS"))?;
        Ok(Self {
            regs: vcpu.get_regs().map_err(e("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?,
            xsave: vcpu.get_xsave().map_err(e("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(e("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(e("KVM_GET_DEBUGREGS"))?,
            events: vcpu.get_vcpu_events().map_err(e("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(e("KVM_GET_MP_STATE"))?,
            lapic: vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?,
            msrs: msrs
                .as_slice()
                .iter()
                .take(n)
                .map(|m| (m.index, m.data))
                .collect(),
            clock_us,
        })
    }

    /// Load the state into a paused vCPU (special registers first: they set the mode the rest
    /// is interpreted in; the LAPIC before pending events).
    pub fn load(&self, vcpu: &VcpuFd) -> Result<(), CpuError> {
        vcpu.set_sregs(&self.sregs).map_err(e("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(e("KVM_SET_REGS"))?;
        // SAFETY: `xsave` is a whole `kvm_xsave` taken from a vCPU of this VMM's configuration
        // (or decoded from exactly its size); KVM checks its content.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(e("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(e("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(e("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(e("KVM_SET_LAPIC"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(e("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(e("KVM_SET_MP_STATE"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|x| CpuError(format!("{x:?}")))?;
        let n = vcpu.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
        if n != entries.len() {
            return Err(CpuError(format!(
                "KVM_SET_MSRS set {n} of {}",
                entries.len()
            )));
        }
        Ok(())
    }

    /// Serialize: magic, then each structure as (length u32, bytes), the MSRs, the clock.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        for part in [
            self.regs.as_bytes(),
            self.sregs.as_bytes(),
            self.xsave.as_bytes(),
            self.xcrs.as_bytes(),
            self.debugregs.as_bytes(),
            self.events.as_bytes(),
            self.mp_state.as_bytes(),
            self.lapic.as_bytes(),
        ] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&u32::try_from(self.msrs.len()).unwrap_or(0).to_le_bytes());
        for (i, v) in &self.msrs {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.clock_us.to_le_bytes());
        out
    }

    /// Decode what [`encode`](Self::encode) wrote; every length is checked.
    pub fn decode(b: &[u8]) -> Result<Self, CpuError> {
        let mut r = Reader { b, at: 0 };
        if r.u32()? != MAGIC {
            return Err(CpuError("bad magic".into()));
        }
        let regs = r.part()?;
        let sregs = r.part()?;
        let xsave = r.part()?;
        let xcrs = r.part()?;
        let debugregs = r.part()?;
        let events = r.part()?;
        let mp_state = r.part()?;
        let lapic = r.part()?;
        let n = r.u32()?;
        if n as usize > MSRS.len() {
            return Err(CpuError("too many MSRs".into()));
        }
        let mut msrs = Vec::new();
        for _ in 0..n {
            let i = r.u32()?;
            if !MSRS.contains(&i) {
                return Err(CpuError(format!("MSR {i:#x} is not migrated")));
            }
            msrs.push((i, r.u64()?));
        }
        let clock_us = r.u64()?;
        if r.at != b.len() {
            return Err(CpuError("trailing bytes".into()));
        }
        Ok(Self {
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            events,
            mp_state,
            lapic,
            msrs,
            clock_us,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CpuError> {
        let s = self
            .b
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| CpuError("truncated".into()))?;
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, CpuError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, CpuError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn part<T: FromBytes>(&mut self) -> Result<T, CpuError> {
        let n = self.u32()? as usize;
        if n != size_of::<T>() {
            return Err(CpuError(format!(
                "structure of {n} bytes, expected {}",
                size_of::<T>()
            )));
        }
        T::read_from_bytes(self.take(n)?).map_err(|_| CpuError("bad structure".into()))
    }
}
