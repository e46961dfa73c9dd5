//! The MADT: local APICs, the IOAPIC, interrupt overrides and NMI wiring.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::{sdt::Sdt, Aml};

use super::{sdt, IOAPIC_ADDR, LAPIC_ADDR, SCI};

/// The PIT's ISA IRQ, wired to IOAPIC pin 2.
const TIMER_IRQ: u8 = 0;
const TIMER_GSI: u32 = 2;

/// MADT flags: PCAT_COMPAT, a dual 8259 is present (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT revision of ACPI 6.3.
const MADT_REVISION: u8 = 5;
/// MPS INTI flags: polarity and trigger mode conform to the bus.
const INTI_CONFORMING: u16 = 0;
/// MPS INTI flags: active high (polarity 01), edge (trigger 01 << 2).
const INTI_HIGH_EDGE: u16 = 0b0101;
/// MPS INTI flags: active high, level-triggered (trigger 11 << 2).
const INTI_HIGH_LEVEL: u16 = 0b1101;
/// ACPI processor UID meaning "all processors" in a Local APIC NMI entry.
const ALL_PROCESSORS_UID8: u8 = 0xff;
/// ... and in a Local x2APIC NMI entry.
const ALL_PROCESSORS_UID32: u32 = u32::MAX;
/// The LAPIC input NMI is wired to.
const NMI_LINT: u8 = 1;
/// Local APIC flags: Enabled.
const LAPIC_ENABLED: u32 = 1;

pub(super) fn build_madt(apic_ids: &[u32]) -> Sdt {
    let mut body = Vec::new();
    let mut any_x2apic = false;
    for (index, &apic_id) in apic_ids.iter().enumerate() {
        // Processor Local APIC entries carry 8-bit IDs and UIDs; IDs from 255
        // on need Processor Local x2APIC entries (ACPI 6.3, 5.2.12.12), and so
        // do UIDs of 255 or more (255 means "all processors" in NMI entries).
        match (u8::try_from(apic_id), u8::try_from(index)) {
            (Ok(id), Ok(uid)) if id != 0xff && uid != 0xff => {
                ProcessorLocalApic::new(uid, id, EnabledStatus::Enabled).to_aml_bytes(&mut body);
            }
            _ => {
                any_x2apic = true;
                let uid = u32::try_from(index).expect("at most MAX_CPUS vCPUs");
                local_x2apic(&mut body, apic_id, uid);
            }
        }
    }
    IoApic::new(ioapic_id(apic_ids), IOAPIC_ADDR, 0).to_aml_bytes(&mut body);
    interrupt_source_override(&mut body, TIMER_IRQ, TIMER_GSI, INTI_CONFORMING);
    interrupt_source_override(&mut body, SCI, u32::from(SCI), INTI_HIGH_LEVEL);
    local_apic_nmi(&mut body, ALL_PROCESSORS_UID8, INTI_HIGH_EDGE, NMI_LINT);
    if any_x2apic {
        local_x2apic_nmi(&mut body, ALL_PROCESSORS_UID32, INTI_HIGH_EDGE, NMI_LINT);
    }

    let mut fixed = Vec::with_capacity(8);
    fixed.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    fixed.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    sdt(*b"APIC", MADT_REVISION, &fixed, &body)
}

/// The IOAPIC's ID: the smallest one no local APIC uses (the number of vCPUs
/// when their IDs are 0..n). With every 8-bit ID taken by a local APIC, 0:
/// OSes only need IOAPIC IDs to be unique among IOAPICs.
fn ioapic_id(apic_ids: &[u32]) -> u8 {
    (0..0xffu8)
        .find(|id| !apic_ids.contains(&u32::from(*id)))
        .unwrap_or(0)
}

/// MADT type 2, Interrupt Source Override, for an ISA IRQ.
fn interrupt_source_override(out: &mut Vec<u8>, irq: u8, gsi: u32, flags: u16) {
    const ISA_BUS: u8 = 0;
    out.extend_from_slice(&[2, 10, ISA_BUS, irq]);
    out.extend_from_slice(&gsi.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
}

/// MADT type 4, Local APIC NMI.
fn local_apic_nmi(out: &mut Vec<u8>, uid: u8, flags: u16, lint: u8) {
    out.extend_from_slice(&[4, 6, uid]);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(lint);
}

/// MADT type 9, Processor Local x2APIC.
fn local_x2apic(out: &mut Vec<u8>, apic_id: u32, uid: u32) {
    out.extend_from_slice(&[9, 16, 0, 0]);
    out.extend_from_slice(&apic_id.to_le_bytes());
    out.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    out.extend_from_slice(&uid.to_le_bytes());
}

/// MADT type 0xA, Local x2APIC NMI.
fn local_x2apic_nmi(out: &mut Vec<u8>, uid: u32, flags: u16, lint: u8) {
    out.extend_from_slice(&[0xa, 12]);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&uid.to_le_bytes());
    out.extend_from_slice(&[lint, 0, 0, 0]);
}
