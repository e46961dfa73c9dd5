//! The CPUID table each vCPU sees, built from KVM_GET_SUPPORTED_CPUID.
//!
//! Everything here is a pure function of the supported entries and the
//! topology, so it is unit-tested without /dev/kvm. The topology is encoded
//! consistently in every place a guest looks for it: the initial APIC ID in leaf
//! 0x1, the cache-sharing fields of leaf 0x4, the extended topology leaves 0xB
//! and 0x1F, AMD's 0x8000_0008 and 0x8000_001E, and the APIC ID KVM uses (the
//! vCPU id, see [`Topology::apic_id`]).

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// CPUID leaf 0x1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 0x1 EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// KVM's signature leaf and its "KVMKVMKVM\0\0\0" signature.
const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// How the vCPUs are arranged into sockets, cores and threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Sockets (packages).
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
}

impl Topology {
    /// The default for `n` vCPUs: one socket of `n` single-threaded cores, as
    /// QEMU and Cloud Hypervisor present it.
    pub fn flat(n: u32) -> Topology {
        Topology {
            sockets: 1,
            cores: n,
            threads: 1,
        }
    }

    /// Total logical processors.
    pub fn cpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }

    /// Bits of the APIC ID that number threads within a core.
    pub fn thread_bits(&self) -> u32 {
        bits_for(self.threads)
    }

    /// Bits of the APIC ID that number cores within a socket.
    pub fn core_bits(&self) -> u32 {
        bits_for(self.cores)
    }

    /// The APIC ID of logical CPU `index` (0-based, socket-major).
    pub fn apic_id(&self, index: u32) -> u32 {
        let thread = index % self.threads;
        let core = (index / self.threads) % self.cores;
        let socket = index / (self.threads * self.cores);
        (socket << (self.core_bits() + self.thread_bits())) | (core << self.thread_bits()) | thread
    }
}

/// Number of bits needed to number `n` items (0 for 1).
fn bits_for(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

fn set_regs(e: &mut kvm_cpuid_entry2, eax: u32, ebx: u32, ecx: u32, edx: u32) {
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = ecx;
    e.edx = edx;
}

fn indexed(function: u32, index: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        ..Default::default()
    }
}

/// Whether the vendor string of leaf 0 is AMD's (or Hygon's, which follows AMD).
fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().find(|e| e.function == 0).is_some_and(|e| {
        (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) // "AuthenticAMD"
            || (e.ebx, e.edx, e.ecx) == (0x6f67_7948, 0x6e65_476e, 0x656e_6975) // "HygonGenuine"
    })
}

/// Builds the CPUID table of logical CPU `index` from the supported entries.
pub fn build(supported: &[kvm_cpuid_entry2], topo: Topology, index: u32) -> Vec<kvm_cpuid_entry2> {
    let apic_id = topo.apic_id(index);
    let per_package_bits = topo.core_bits() + topo.thread_bits();
    let amd = is_amd(supported);
    // Topology leaves are rewritten below; drop KVM's copies of them.
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| !matches!(e.function, 0xb | 0x1f))
        .copied()
        .collect();
    let has_1f = supported.iter().any(|e| e.function == 0x1f);

    for e in out.iter_mut() {
        match e.function {
            0 => e.eax = e.eax.max(0xb),
            1 => {
                // EBX[31:24] initial APIC ID, [23:16] addressable logical IDs.
                let addressable = (1u32 << per_package_bits).min(255);
                e.ebx = (e.ebx & 0xffff) | (addressable << 16) | ((apic_id & 0xff) << 24);
                e.ecx |= ECX_HYPERVISOR;
                if per_package_bits > 0 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 if e.eax & 0x1f != 0 => {
                // Deterministic cache parameters: who shares each cache.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    1 << per_package_bits
                } else {
                    1 << topo.thread_bits()
                };
                let cores = (1u32 << topo.core_bits()).min(64);
                e.eax = (e.eax & 0x3fff) | ((sharing - 1) & 0xfff) << 14 | (cores - 1) << 26;
            }
            KVM_SIGNATURE_LEAF => set_regs(
                e,
                KVM_FEATURES_LEAF,
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2],
            ),
            0x8000_0001 if amd => {
                // CmpLegacy: the HTT bit means cores, not threads.
                if per_package_bits > 0 {
                    e.ecx |= 1 << 1;
                } else {
                    e.ecx &= !(1 << 1);
                }
            }
            0x8000_0008 if amd => {
                // ECX[7:0] cores per package - 1, [15:12] APIC ID core-ID width.
                let nc = (topo.cores * topo.threads).saturating_sub(1) & 0xff;
                e.ecx = (e.ecx & !0xf0ff) | nc | (per_package_bits << 12);
            }
            0x8000_001e if amd => {
                let core_id = (index / topo.threads) % topo.cores;
                let socket = index / (topo.threads * topo.cores);
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | ((topo.threads - 1) << 8) | (core_id & 0xff);
                e.ecx = (e.ecx & !0x7ff) | (socket & 0xff);
            }
            _ => {}
        }
    }
    if !out.iter().any(|e| e.function == KVM_SIGNATURE_LEAF) {
        let mut e = kvm_cpuid_entry2 {
            function: KVM_SIGNATURE_LEAF,
            ..Default::default()
        };
        set_regs(
            &mut e,
            KVM_FEATURES_LEAF,
            KVM_SIGNATURE[0],
            KVM_SIGNATURE[1],
            KVM_SIGNATURE[2],
        );
        out.push(e);
    }

    // Extended topology: subleaf 0 = SMT level, 1 = core level, 2 = end.
    for leaf in std::iter::once(0xb).chain(has_1f.then_some(0x1f)) {
        let mut smt = indexed(leaf, 0);
        set_regs(&mut smt, topo.thread_bits(), topo.threads, 1 << 8, apic_id);
        let mut core = indexed(leaf, 1);
        set_regs(
            &mut core,
            per_package_bits,
            topo.cores * topo.threads,
            1 | 2 << 8,
            apic_id,
        );
        let mut end = indexed(leaf, 2);
        set_regs(&mut end, 0, 0, 2, apic_id);
        out.extend([smt, core, end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn intel_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0x806f8, 0x0000_0800, 0, 0),
            entry(4, 0x121, 0, 0, 0), // L1d
            entry(4, 0x163, 0, 0, 0), // L3
            entry(0xb, 9, 9, 9, 9),   // replaced
            entry(KVM_SIGNATURE_LEAF, 0x4000_0001, 0, 0, 0),
            entry(KVM_FEATURES_LEAF, 0x1234, 0, 0, 0),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter()
            .find(|e| e.function == f && e.index == i)
            .expect("leaf present")
    }

    #[test]
    fn flat_topology_for_four_cpus() {
        let t = Topology::flat(4);
        for i in 0..4 {
            let v = build(&intel_like(), t, i);
            let l1 = find(&v, 1, 0);
            assert_eq!(l1.ebx >> 24, i, "initial APIC ID");
            assert_eq!((l1.ebx >> 16) & 0xff, 4, "addressable IDs");
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.edx & EDX_HTT, 0);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            let smt = find(&v, 0xb, 0);
            let core = find(&v, 0xb, 1);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, i));
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, i));
            assert_eq!(find(&v, 0xb, 2).ecx, 2);
            assert_eq!(
                v.iter().filter(|e| e.function == 0xb).count(),
                3,
                "KVM's copy dropped"
            );
            assert_ne!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
            let l3 = v
                .iter()
                .find(|e| e.function == 4 && e.eax & 0xff == 0x63)
                .expect("l3");
            assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by 4");
            assert_eq!(l3.eax >> 26, 3, "4 cores");
            let kvm = find(&v, KVM_SIGNATURE_LEAF, 0);
            assert_eq!(
                (kvm.ebx, kvm.ecx, kvm.edx),
                (KVM_SIGNATURE[0], KVM_SIGNATURE[1], KVM_SIGNATURE[2])
            );
            assert_eq!(
                find(&v, KVM_FEATURES_LEAF, 0).eax,
                0x1234,
                "KVM features passed through"
            );
        }
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let v = build(&intel_like(), Topology::flat(1), 0);
        assert_eq!(find(&v, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&v, 0xb, 1).ebx, 1);
        assert_eq!(find(&v, 0xb, 1).eax, 0);
    }

    #[test]
    fn three_cpus_round_up_id_space() {
        let t = Topology::flat(3);
        assert_eq!(t.core_bits(), 2);
        let v = build(&intel_like(), t, 2);
        assert_eq!(
            find(&v, 0xb, 1).ebx,
            3,
            "logical processors, not the id space"
        );
        assert_eq!(find(&v, 0xb, 1).eax, 2);
        assert_eq!((find(&v, 1, 0).ebx >> 16) & 0xff, 4);
    }

    #[test]
    fn apic_ids_follow_sockets_cores_threads() {
        let t = Topology {
            sockets: 2,
            cores: 3,
            threads: 2,
        };
        assert_eq!(t.cpus(), 12);
        let ids: Vec<u32> = (0..12).map(|i| t.apic_id(i)).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        let v = build(&intel_like(), t, 7);
        assert_eq!(find(&v, 0xb, 0).ebx, 2);
        assert_eq!(find(&v, 0xb, 1).ebx, 6);
        assert_eq!(find(&v, 0xb, 1).eax, 3);
        assert_eq!(find(&v, 0xb, 1).edx, 9);
    }

    #[test]
    fn amd_leaves_describe_cores() {
        let mut s = vec![
            entry(0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            entry(1, 0, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0),
            entry(0x8000_0008, 0x3030, 0, 0xffff, 0),
            entry(0x8000_001e, 0, 0xffff_ffff, 0, 0),
        ];
        s[0].ebx = 0x6874_7541;
        s[0].edx = 0x6974_6e65;
        s[0].ecx = 0x444d_4163;
        let v = build(&s, Topology::flat(4), 3);
        assert_eq!(find(&v, 0x8000_0008, 0).ecx & 0xf0ff, 3 | 2 << 12);
        assert_ne!(find(&v, 0x8000_0001, 0).ecx & 2, 0);
        let e = find(&v, 0x8000_001e, 0);
        assert_eq!(e.eax, 3);
        assert_eq!(e.ebx & 0xffff, 3);
        assert!(
            v.iter().any(|e| e.function == KVM_SIGNATURE_LEAF),
            "signature added"
        );
    }
}
