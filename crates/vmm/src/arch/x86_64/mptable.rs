//! The Intel MultiProcessor Specification 1.4 table: the pre-ACPI description
//! of CPUs, the IOAPIC and ISA interrupt routing.
//!
//! Guests with ACPI use the MADT instead, but Linux still looks for an MP
//! floating pointer early in boot, scanning the BIOS areas when there is none;
//! where guest kernel code is emulated that scan alone costs seconds. The
//! floating pointer goes in the last KiB of base memory (the second place Linux
//! looks), the configuration table in the reserved BIOS area, both inside the
//! reserved legacy window of the memory map.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::acpi::{IOAPIC_ADDR, LAPIC_ADDR};

/// Address of the MP floating pointer structure.
pub const MPF_ADDR: u64 = 0x9_fc00;
/// Address of the MP configuration table.
pub const MPC_ADDR: u64 = 0xf_0000;
/// End of the area the configuration table may use.
const MPC_END: u64 = 0x10_0000;

const MPC_HEADER_LEN: usize = 44;
const SPEC_REV: u8 = 4;
const CPU_EN: u8 = 1 << 0;
const CPU_BP: u8 = 1 << 1;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt flags: level-triggered (bits 3:2 = 3), active high (bits 1:0 = 1).
const IRQ_LEVEL_HIGH: u16 = 0b1101;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} CPUs do not fit an MP table (APIC IDs must be below 255)")]
    ApicId(u32),
    #[error("the MP table for {0} CPUs does not fit below 1 MiB")]
    TooBig(usize),
    #[error("writing the MP table to guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the MP floating pointer and configuration table for CPUs with
/// `apic_ids` (the first is the boot CPU), `cpu_signature` and
/// `cpu_features` (CPUID leaf 1 EAX and EDX).
pub fn write(
    mem: &GuestMemoryMmap,
    apic_ids: &[u32],
    cpu_signature: u32,
    cpu_features: u32,
) -> Result<(), MpTableError> {
    let ioapic_id = u8::try_from((0..=254u32).find(|i| !apic_ids.contains(i)).unwrap_or(0))
        .map_err(|_| MpTableError::ApicId(apic_ids.len() as u32))?;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for (i, id) in apic_ids.iter().enumerate() {
        let id = u8::try_from(*id)
            .ok()
            .filter(|id| *id < 255)
            .ok_or(MpTableError::ApicId(apic_ids.len() as u32))?;
        let flags = CPU_EN | if i == 0 { CPU_BP } else { 0 };
        entries.extend([0, id, APIC_VERSION, flags]);
        entries.extend(cpu_signature.to_le_bytes());
        entries.extend(cpu_features.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend([1, 0]);
    entries.extend(*b"ISA   ");
    // The IOAPIC.
    entries.extend([2, ioapic_id, IOAPIC_VERSION, CPU_EN]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 2;
    // ISA IRQs: the 8259's ExtINT on pin 0, IRQ0 (the PIT) on pin 2, the
    // rest identity-mapped; the SCI (IRQ 9) level-triggered, active high.
    let io_int = |kind: u8, flags: u16, irq: u8, pin: u8| -> [u8; 8] {
        let f = flags.to_le_bytes();
        [3, kind, f[0], f[1], 0, irq, ioapic_id, pin]
    };
    entries.extend(io_int(INT_TYPE_EXTINT, 0, 0, 0));
    count += 1;
    for irq in 0..ISA_IRQS {
        if irq == 2 {
            continue; // the cascade; pin 2 carries IRQ0
        }
        let pin = if irq == 0 { 2 } else { irq };
        let flags = if irq == 9 { IRQ_LEVEL_HIGH } else { 0 };
        entries.extend(io_int(INT_TYPE_INT, flags, irq, pin));
        count += 1;
    }
    // Local interrupts of every CPU: LINT0 ExtINT, LINT1 NMI.
    entries.extend([4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend([4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let len = MPC_HEADER_LEN + entries.len();
    if MPC_ADDR + len as u64 > MPC_END {
        return Err(MpTableError::TooBig(apic_ids.len()));
    }
    let mut table = Vec::with_capacity(len);
    table.extend(*b"PCMP");
    table.extend((len as u16).to_le_bytes());
    table.extend([SPEC_REV, 0]); // checksum below
    table.extend(*b"VIREO   ");
    table.extend(*b"VIREOVM     ");
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDR.to_le_bytes());
    table.extend(0u16.to_le_bytes()); // extended table length
    table.extend([0, 0]); // extended checksum, reserved
    table.extend(entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend(*b"_MP_");
    mpf.extend((MPC_ADDR as u32).to_le_bytes());
    mpf.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]); // length 1 (16 bytes); no default config
    mpf[10] = checksum(&mpf);

    mem.write_slice(&table, GuestAddress(MPC_ADDR))
        .map_err(MpTableError::GuestMemory)?;
    mem.write_slice(&mpf, GuestAddress(MPF_ADDR))
        .map_err(MpTableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryLayout, MIB};

    fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).expect("read");
        v
    }

    #[test]
    fn floating_pointer_and_table_are_valid() {
        let mem = MemoryLayout::new(16 * MIB, 40)
            .expect("layout")
            .allocate()
            .expect("mmap");
        write(&mem, &[0, 1, 2, 3], 0x806f8, 0x178b_fbff).expect("written");
        let mpf = read(&mem, MPF_ADDR, 16);
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(
            mpf.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "mpf checksum"
        );
        let at = u64::from(u32::from_le_bytes([mpf[4], mpf[5], mpf[6], mpf[7]]));
        assert_eq!(at, MPC_ADDR);
        let head = read(&mem, at, MPC_HEADER_LEN);
        assert_eq!(&head[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([head[4], head[5]]));
        let table = read(&mem, at, len);
        assert_eq!(
            table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "table checksum"
        );
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 4 CPUs, bus, IOAPIC, ExtINT + 15 IRQs, 2 local.
        assert_eq!(count, 4 + 1 + 1 + 16 + 2);
        // Walk the entries by type and size.
        let (mut at, mut cpus, mut bsp) = (MPC_HEADER_LEN, 0, 0);
        for _ in 0..count {
            match table[at] {
                0 => {
                    cpus += 1;
                    if table[at + 3] & CPU_BP != 0 {
                        bsp += 1;
                        assert_eq!(table[at + 1], 0, "the BSP is APIC 0");
                    }
                    at += 20;
                }
                2 => {
                    assert_eq!(table[at + 1], 4, "IOAPIC id after the CPUs' IDs");
                    at += 8;
                }
                1 | 3 | 4 => at += 8,
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!((cpus, bsp, at), (4, 1, len));
    }

    #[test]
    fn refuses_ids_an_mp_table_cannot_hold() {
        let mem = MemoryLayout::new(16 * MIB, 40)
            .expect("layout")
            .allocate()
            .expect("mmap");
        assert!(matches!(
            write(&mem, &[0, 300], 0, 0),
            Err(MpTableError::ApicId(_))
        ));
        let many: Vec<u32> = (0..254).collect();
        write(&mem, &many, 0, 0).expect("254 CPUs fit");
    }
}
