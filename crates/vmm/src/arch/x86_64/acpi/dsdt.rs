//! The DSDT: `\_S5`, processor devices, the ISA devices and the PCI host
//! bridge, in AML built with the crate's AML builder.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::{sdt::Sdt, Aml, AmlSink};
use vireo_devices::i8042::I8042_BASE;
use vireo_devices::pm::SLP_TYP_S5;
use vireo_devices::rtc::{RTC_BASE, RTC_LEN};
use vireo_devices::serial::{COM1_BASE, SERIAL_LEN};

use super::{io_port, isa_irq, sdt, serialize, AcpiConfig, PciHostBridge};
use crate::device_manager::COM1_IRQ;

const COM1_IRQ_ISA: u8 = isa_irq(COM1_IRQ);
const RTC_IRQ: u8 = 8;
const KBD_IRQ: u8 = 1;

const COM1_PORT: u16 = io_port(COM1_BASE);
const COM1_LEN: u8 = io_len(SERIAL_LEN);
const RTC_PORT: u16 = io_port(RTC_BASE);
const RTC_PORT_LEN: u8 = io_len(RTC_LEN);
/// i8042 data port (0x60); the command/status port is 4 above.
const KBD_DATA_PORT: u16 = io_port(I8042_BASE);
const KBD_CMD_PORT: u16 = io_port(I8042_BASE + 4);

const fn io_len(len: u64) -> u8 {
    assert!(len <= 0xff, "I/O range too long for an IO descriptor");
    len as u8
}

/// DSDT revision 2: 64-bit integers.
const DSDT_REVISION: u8 = 2;

pub(super) fn build_dsdt(config: &AcpiConfig) -> Sdt {
    let mut aml = Vec::new();

    // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let slp_typ = u8::try_from(SLP_TYP_S5).expect("SLP_TYP is a 3-bit field");
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&slp_typ, &slp_typ, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut aml);

    let mut sb = Vec::new();
    for index in 0..config.apic_ids.len() {
        sb.extend_from_slice(&processor_device(index));
    }
    isa_device(
        "COM1",
        "PNP0501",
        0,
        &[(COM1_PORT, COM1_LEN)],
        COM1_IRQ_ISA,
        &mut sb,
    );
    isa_device(
        "RTC_",
        "PNP0B00",
        0,
        &[(RTC_PORT, RTC_PORT_LEN)],
        RTC_IRQ,
        &mut sb,
    );
    isa_device(
        "PS2K",
        "PNP0303",
        0,
        &[(KBD_DATA_PORT, 1), (KBD_CMD_PORT, 1)],
        KBD_IRQ,
        &mut sb,
    );
    if let Some(pci) = &config.pci {
        pci_host_bridge(pci, &mut sb);
        ecam_reservation(pci, &mut sb);
    }
    aml.extend_from_slice(&aml::Scope::raw("\\_SB_".into(), sb));

    sdt(*b"DSDT", DSDT_REVISION, &[], &aml)
}

/// `Device (Cnnn) { Name (_HID, "ACPI0007") Name (_UID, index) }`, the
/// processor device whose `_UID` matches the MADT's ACPI processor UID.
fn processor_device(index: usize) -> Vec<u8> {
    let name = format!("C{index:03X}");
    let uid = u32::try_from(index).expect("at most MAX_CPUS vCPUs");
    let hid = aml::Name::new("_HID".into(), &"ACPI0007");
    let uid = aml::Name::new("_UID".into(), &uid);
    serialize(&aml::Device::new(name.as_str().into(), vec![&hid, &uid]))
}

/// An ISA device with fixed I/O ports and one edge-triggered IRQ.
fn isa_device(name: &str, hid: &str, uid: u8, ports: &[(u16, u8)], irq: u8, out: &mut Vec<u8>) {
    let ios: Vec<aml::IO> = ports
        .iter()
        .map(|&(port, len)| aml::IO::new(port, port, 1, len))
        .collect();
    let irq = IrqNoFlags(irq);
    let mut resources: Vec<&dyn Aml> = ios.iter().map(|io| io as &dyn Aml).collect();
    resources.push(&irq);
    let crs = aml::ResourceTemplate::new(resources);
    aml::Device::new(
        name.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(hid)),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(out);
}

/// The IRQ resource descriptor of ISA devices, ASL `IRQNoFlags () {irq}`:
/// edge-triggered, active-high, exclusive (ACPI 6.3, 6.4.2.1). The crate has
/// only the extended interrupt descriptor.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Small resource item 0x04 (IRQ), 2 bytes: the IRQ mask.
        sink.byte((0x04 << 3) | 2);
        sink.word(1 << self.0);
    }
}

/// `\_SB.PCI0`: a PCIe host bridge on segment 0 with its bus range and
/// windows. No `_OSC` (the OS then leaves native PCIe hotplug, AER and PME
/// alone) and no `_PRT` (no INTx routing: devices must use MSI/MSI-X).
fn pci_host_bridge(pci: &PciHostBridge, out: &mut Vec<u8>) {
    let buses = AddressSpace::<u16>::new_bus_number(pci.bus_start.into(), pci.bus_end.into());
    let io = pci.io.map(|w| {
        // Validated: within 0..=0xffff.
        let (base, last) = (w.base as u16, (w.base + w.size - 1) as u16);
        AddressSpace::<u16>::new_io(base, last, None)
    });
    let (base, last) = (pci.mmio32.base, pci.mmio32.base + pci.mmio32.size - 1);
    // Validated: below 4 GiB.
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        base as u32,
        last as u32,
        None,
    );
    // Not marked prefetchable: Linux then places any BAR in it, prefetchable
    // or not.
    let mmio64 = pci.mmio64.map(|w| {
        AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            w.base,
            w.base + w.size - 1,
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&buses];
    if let Some(io) = &io {
        resources.push(io);
    }
    resources.push(&mmio32);
    if let Some(mmio64) = &mmio64 {
        resources.push(mmio64);
    }
    let crs = aml::ResourceTemplate::new(resources);
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_SEG".into(), &0u8),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_BBN".into(), &pci.bus_start),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(out);
}

/// `\_SB.ECAM`: a motherboard resource (PNP0C02) reserving the ECAM area, as
/// the PCI Firmware specification asks and Linux checks before using it.
fn ecam_reservation(pci: &PciHostBridge, out: &mut Vec<u8>) {
    let ecam = pci.ecam_window();
    let fixed32 = match (u32::try_from(ecam.base), u32::try_from(ecam.size)) {
        (Ok(base), Ok(size)) if ecam.base + ecam.size <= 1 << 32 => {
            Some(aml::Memory32Fixed::new(true, base, size))
        }
        _ => None,
    };
    let qword = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        ecam.base,
        ecam.base + ecam.size - 1,
        None,
    );
    let resource: &dyn Aml = match &fixed32 {
        Some(fixed32) => fixed32,
        None => &qword,
    };
    let crs = aml::ResourceTemplate::new(vec![resource]);
    aml::Device::new(
        "ECAM".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(out);
}
