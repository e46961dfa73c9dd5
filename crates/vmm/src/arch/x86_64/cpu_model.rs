//! CPU models: which CPUID features a guest sees.
//!
//! - `host`: everything KVM supports on this host.
//! - `x86-64-v2`: the x86-64-v2 psABI level (SSE4.2, POPCNT, CX16, ...) and
//!   nothing newer: a baseline that any recent x86 host can offer, for guests
//!   that must move between hosts.
//! - `emulated`: for hosts whose KVM emulates guest kernel code (the
//!   `kvm_pvm` backend, see shared/kvm-host.md): `host` minus every feature
//!   the instruction emulator lacks (XSAVE and AVX, POPCNT, CX16, RDTSCP,
//!   RDPID, MOVBE, SMAP/SMEP, PCID/INVPCID, FSGSBASE, SSE4.2/AES/PCLMUL/SHA),
//!   presented as GenuineIntel (an AMD vendor makes Linux run x87 FNCLEX on
//!   every FPU restore, which the emulator lacks).
//!
//! `auto` picks `emulated` when /sys/module/kvm_pvm exists, else `host`.
//!
//! On `kvm_pvm` hosts KVM cannot hide every feature: bits outside what
//! KVM_GET_SUPPORTED_CPUID reports (XSAVE, POPCNT, SSE4.2, SMEP, ... there)
//! reach the guest's CPUID from the host whatever the table says (measured with
//! the test guest's `cpuid` scenario; QEMU's `-cpu host,-xsave` fares the same).
//! So for Linux guests the `emulated` model also asks the kernel itself not to
//! use them, on its command line ([`CpuModel::linux_cmdline`]).

use kvm_bindings::kvm_cpuid_entry2;

/// A named CPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuModel {
    Host,
    X86_64V2,
    Emulated,
}

/// An unknown model name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown CPU model '{0}': use host, x86-64-v2, emulated or auto")]
pub struct UnknownModel(pub String);

impl std::str::FromStr for CpuModel {
    type Err = UnknownModel;
    fn from_str(s: &str) -> Result<CpuModel, UnknownModel> {
        match s {
            "host" => Ok(CpuModel::Host),
            "x86-64-v2" | "baseline" => Ok(CpuModel::X86_64V2),
            "emulated" => Ok(CpuModel::Emulated),
            "auto" => Ok(CpuModel::auto()),
            other => Err(UnknownModel(other.to_string())),
        }
    }
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuModel::Host => "host",
            CpuModel::X86_64V2 => "x86-64-v2",
            CpuModel::Emulated => "emulated",
        })
    }
}

/// Bits of one CPUID register.
const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

// Leaf 1 ECX.
const PCLMULQDQ: u32 = 1;
const SSSE3: u32 = 9;
const FMA: u32 = 12;
const CX16: u32 = 13;
const PCID: u32 = 17;
const SSE4_1: u32 = 19;
const SSE4_2: u32 = 20;
const X2APIC: u32 = 21;
const MOVBE: u32 = 22;
const POPCNT: u32 = 23;
const TSC_DEADLINE: u32 = 24;
const AES: u32 = 25;
const XSAVE: u32 = 26;
const OSXSAVE: u32 = 27;
const AVX: u32 = 28;
const F16C: u32 = 29;
const HYPERVISOR: u32 = 31;
const SSE3: u32 = 0;
// Leaf 7.0 EBX.
const FSGSBASE: u32 = 0;
const AVX2: u32 = 5;
const SMEP: u32 = 7;
const INVPCID: u32 = 10;
const SMAP: u32 = 20;
const SHA: u32 = 29;
const AVX512_EBX: u32 = bits(&[16, 17, 21, 26, 27, 28, 30, 31]);
// Leaf 7.0 ECX.
const AVX512_ECX: u32 = bits(&[1, 6, 11, 12, 14]);
const GFNI_VAES_VPCLMUL: u32 = bits(&[8, 9, 10]);
const RDPID: u32 = 22;
// Leaf 0x8000_0001.
const LAHF_LM: u32 = 0;
const SSE4A_XOP_FMA4_TBM: u32 = bits(&[6, 11, 16, 21]);
const RDTSCP: u32 = 27;
const SYSCALL: u32 = 11;
const NX: u32 = 20;
const LM: u32 = 29;

/// "GenuineIntel" in EBX, EDX, ECX order.
const INTEL: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];

impl CpuModel {
    /// `emulated` on hosts whose KVM emulates guest kernel code, else `host`.
    pub fn auto() -> CpuModel {
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            CpuModel::Emulated
        } else {
            CpuModel::Host
        }
    }

    /// Kernel parameters a Linux guest needs with this model: for `emulated`,
    /// the features the host may show the guest although the model hides them.
    pub fn linux_cmdline(self) -> Option<&'static str> {
        match self {
            CpuModel::Emulated => Some(
                "noxsave clearcpuid=popcnt,cx16,movbe,rdtscp,rdpid,smap,smep,pcid,invpcid,\
                 fsgsbase,sse4_2,aes,pclmulqdq,sha_ni",
            ),
            CpuModel::Host | CpuModel::X86_64V2 => None,
        }
    }

    /// Restricts KVM's supported CPUID entries to this model.
    pub fn apply(self, entries: &[kvm_cpuid_entry2]) -> Vec<kvm_cpuid_entry2> {
        let mut out: Vec<kvm_cpuid_entry2> = entries.to_vec();
        match self {
            CpuModel::Host => {}
            CpuModel::Emulated => {
                out.retain(|e| e.function != 0xd); // no XSAVE state components
                for e in out.iter_mut() {
                    match (e.function, e.index) {
                        (0, _) => (e.ebx, e.edx, e.ecx) = (INTEL[0], INTEL[1], INTEL[2]),
                        (1, _) => {
                            e.ecx &= !bits(&[
                                PCLMULQDQ, FMA, CX16, PCID, SSE4_2, MOVBE, POPCNT, AES, XSAVE,
                                OSXSAVE, AVX, F16C,
                            ])
                        }
                        (7, 0) => {
                            e.ebx &=
                                !(bits(&[FSGSBASE, AVX2, SMEP, INVPCID, SMAP, SHA]) | AVX512_EBX);
                            e.ecx &= !(AVX512_ECX | GFNI_VAES_VPCLMUL | bits(&[RDPID]));
                            e.edx = 0;
                        }
                        (7, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
                        (0x8000_0001, _) => {
                            e.ecx &= !SSE4A_XOP_FMA4_TBM;
                            e.edx &= !bits(&[RDTSCP]);
                        }
                        _ => {}
                    }
                }
            }
            CpuModel::X86_64V2 => {
                out.retain(|e| e.function != 0xd);
                for e in out.iter_mut() {
                    match (e.function, e.index) {
                        (1, _) => {
                            e.ecx &= bits(&[
                                SSE3,
                                SSSE3,
                                CX16,
                                SSE4_1,
                                SSE4_2,
                                X2APIC,
                                POPCNT,
                                TSC_DEADLINE,
                                HYPERVISOR,
                            ])
                        }
                        (7, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
                        (0x8000_0001, _) => {
                            e.ecx &= bits(&[LAHF_LM]);
                            e.edx &= bits(&[SYSCALL, NX, LM]) | 0x0183_fbff;
                        }
                        _ => {}
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// An AMD host with every bit set.
    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            e(0, 0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            e(1, 0, 0x00a2_0f12, 0x0800, u32::MAX, u32::MAX),
            e(7, 0, 1, u32::MAX, u32::MAX, u32::MAX),
            e(7, 1, u32::MAX, 0, 0, 0),
            e(0xd, 0, 7, 0, 0, 0),
            e(0xd, 1, 1, 0, 0, 0),
            e(0x8000_0001, 0, 0, 0, u32::MAX, u32::MAX),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter()
            .find(|x| x.function == f && x.index == i)
            .expect("leaf")
    }

    #[test]
    fn host_is_untouched() {
        assert_eq!(CpuModel::Host.apply(&host()), host());
    }

    #[test]
    fn emulated_hides_what_the_emulator_lacks() {
        let v = CpuModel::Emulated.apply(&host());
        let l0 = find(&v, 0, 0);
        assert_eq!([l0.ebx, l0.edx, l0.ecx], INTEL, "GenuineIntel");
        let l1 = find(&v, 1, 0);
        for bit in [
            XSAVE, OSXSAVE, AVX, POPCNT, CX16, MOVBE, PCID, SSE4_2, AES, PCLMULQDQ,
        ] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        assert_ne!(l1.ecx & (1 << HYPERVISOR), 0);
        assert_ne!(l1.ecx & (1 << SSE3), 0, "SSE3 stays");
        let l7 = find(&v, 7, 0);
        for bit in [FSGSBASE, SMEP, SMAP, INVPCID, SHA, AVX2] {
            assert_eq!(l7.ebx & (1 << bit), 0, "leaf 7 ebx bit {bit}");
        }
        assert_eq!(l7.ecx & (1 << RDPID), 0);
        assert_eq!(find(&v, 0x8000_0001, 0).edx & (1 << RDTSCP), 0);
        assert!(v.iter().all(|x| x.function != 0xd), "no XSAVE leaf");
    }

    #[test]
    fn baseline_is_x86_64_v2() {
        let v = CpuModel::X86_64V2.apply(&host());
        let l1 = find(&v, 1, 0);
        assert_ne!(l1.ecx & (1 << POPCNT), 0);
        assert_ne!(l1.ecx & (1 << SSE4_2), 0);
        assert_eq!(l1.ecx & (1 << AVX), 0);
        assert_eq!(l1.ecx & (1 << XSAVE), 0);
        assert_eq!(find(&v, 7, 0).ebx, 0);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx, 1, "LAHF only");
    }

    #[test]
    fn emulated_asks_linux_to_leave_features_alone() {
        let line = CpuModel::Emulated
            .linux_cmdline()
            .expect("emulated has quirks");
        assert!(line.starts_with("noxsave clearcpuid=popcnt,"));
        let list = line.split_once("clearcpuid=").expect("list").1;
        assert!(
            list.len() < 128,
            "Linux parses clearcpuid= into a 128-byte buffer"
        );
        assert!(!list.contains(' '));
        assert_eq!(CpuModel::Host.linux_cmdline(), None);
    }

    #[test]
    fn names_parse() {
        assert_eq!("host".parse(), Ok(CpuModel::Host));
        assert_eq!("x86-64-v2".parse(), Ok(CpuModel::X86_64V2));
        assert_eq!("emulated".parse(), Ok(CpuModel::Emulated));
        assert!("auto".parse::<CpuModel>().is_ok());
        let err = "pentium".parse::<CpuModel>().expect_err("unknown");
        assert!(err.to_string().contains("unknown CPU model 'pentium'"));
        assert_eq!(CpuModel::X86_64V2.to_string(), "x86-64-v2");
    }
}
