//! Tests: the tables are built into guest memory and read back as a guest
//! would find them; `iasl` (acpica-tools) disassembles and recompiles them
//! when it is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::memory::MemoryLayout;

fn guest_memory() -> GuestMemoryMmap {
    MemoryLayout::new(64 << 20, 40)
        .expect("layout")
        .allocate()
        .expect("guest memory")
}

fn config(cpus: u32) -> AcpiConfig {
    AcpiConfig {
        apic_ids: (0..cpus).collect(),
        pci: None,
    }
}

fn pci() -> PciHostBridge {
    PciHostBridge {
        ecam_base: 0xe000_0000,
        bus_start: 0,
        bus_end: 0x3f,
        io: Some(Window {
            base: 0x1000,
            size: 0xf000,
        }),
        mmio32: Window {
            base: 0xc000_0000,
            size: 0x2000_0000,
        },
        mmio64: Some(Window {
            base: 0x80_0000_0000,
            size: 0x40_0000_0000,
        }),
    }
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr))
        .expect("readable guest memory");
    buf
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

/// The tables as a guest finds them: from the RSDP through the XSDT, and
/// the DSDT and FACS through the FADT, keyed by signature.
struct Found {
    tables: BTreeMap<String, (u64, Vec<u8>)>,
    xsdt_entries: Vec<String>,
}

impl Found {
    fn get(&self, sig: &str) -> &[u8] {
        &self
            .tables
            .get(sig)
            .unwrap_or_else(|| panic!("no {sig} table"))
            .1
    }
}

/// Reads a table with a standard header at `addr`, checking what every
/// table must satisfy.
fn read_table(mem: &GuestMemoryMmap, addr: u64, range: &Range<u64>) -> Vec<u8> {
    assert!(
        addr.is_multiple_of(TABLE_ALIGN),
        "table at {addr:#x} aligned"
    );
    let header = read(mem, addr, 36);
    let len = u32_at(&header, 4) as usize;
    let sig = String::from_utf8_lossy(&header[0..4]).into_owned();
    assert!(len >= 36, "{sig}: length {len}");
    assert!(
        range.contains(&addr) && addr + len as u64 <= range.end,
        "{sig} at {addr:#x}+{len:#x} inside {range:x?}"
    );
    let table = read(mem, addr, len);
    assert_eq!(sum(&table), 0, "{sig}: checksum");
    assert_eq!(&table[10..16], &OEM_ID, "{sig}: OEM ID");
    assert_eq!(&table[16..24], &OEM_TABLE_ID, "{sig}: OEM table ID");
    table
}

fn find_tables(mem: &GuestMemoryMmap, placed: &AcpiTables) -> Found {
    assert_eq!(placed.rsdp, GuestAddress(0xe_0000));
    assert_eq!(placed.range.start, 0xe_0000);
    assert!(placed.range.end <= 0x10_0000);

    let rsdp = read(mem, placed.rsdp.0, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], &OEM_ID);
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");

    let mut tables = BTreeMap::new();
    let xsdt_addr = u64_at(&rsdp, 24);
    let xsdt = read_table(mem, xsdt_addr, &placed.range);
    assert_eq!(&xsdt[0..4], b"XSDT");
    assert_eq!((xsdt.len() - 36) % 8, 0);
    let mut xsdt_entries = Vec::new();
    for off in (36..xsdt.len()).step_by(8) {
        let addr = u64_at(&xsdt, off);
        let table = read_table(mem, addr, &placed.range);
        let sig = String::from_utf8_lossy(&table[0..4]).into_owned();
        xsdt_entries.push(sig.clone());
        assert!(tables.insert(sig, (addr, table)).is_none(), "duplicate");
    }
    tables.insert("XSDT".into(), (xsdt_addr, xsdt));

    let fadt = &tables.get("FACP").expect("an FADT in the XSDT").1;
    let dsdt_addr = u64_at(fadt, 140);
    assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr, "DSDT == X_DSDT");
    let facs_addr = u64::from(u32_at(fadt, 36));
    assert_eq!(u64_at(fadt, 132), 0, "X_FIRMWARE_CTRL unused");
    let dsdt = read_table(mem, dsdt_addr, &placed.range);
    assert_eq!(&dsdt[0..4], b"DSDT");
    assert_eq!(dsdt[8], 2, "DSDT revision 2 (64-bit integers)");
    tables.insert("DSDT".into(), (dsdt_addr, dsdt));

    assert!(facs_addr.is_multiple_of(64), "FACS 64-byte aligned");
    let facs = read(mem, facs_addr, 64);
    assert_eq!(&facs[0..4], b"FACS");
    assert_eq!(u32_at(&facs, 4), 64);
    assert!(placed.range.contains(&facs_addr) && facs_addr + 64 <= placed.range.end);
    tables.insert("FACS".into(), (facs_addr, facs));

    // No two tables overlap.
    let mut spans: Vec<(u64, u64)> = tables
        .values()
        .map(|(a, t)| (*a, *a + t.len() as u64))
        .chain([(placed.rsdp.0, placed.rsdp.0 + 36)])
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {w:x?}");
    }
    assert_eq!(spans.iter().map(|s| s.1).max(), Some(placed.range.end));
    Found {
        tables,
        xsdt_entries,
    }
}

#[derive(Debug, Default)]
struct Madt {
    lapic_addr: u32,
    flags: u32,
    /// (ACPI processor UID, APIC ID, enabled, x2APIC entry)
    cpus: Vec<(u32, u32, bool, bool)>,
    /// (id, address, GSI base)
    ioapics: Vec<(u8, u32, u32)>,
    /// (bus, ISA IRQ, GSI, flags)
    overrides: Vec<(u8, u8, u32, u16)>,
    /// (processor UID, flags, LINT), Local APIC and x2APIC NMI entries
    nmis: Vec<(u32, u16, u8)>,
    x2apic_nmis: Vec<(u32, u16, u8)>,
}

fn parse_madt(t: &[u8]) -> Madt {
    assert_eq!(&t[0..4], b"APIC");
    let mut m = Madt {
        lapic_addr: u32_at(t, 36),
        flags: u32_at(t, 40),
        ..Madt::default()
    };
    let mut off = 44;
    while off < t.len() {
        let (kind, len) = (t[off], usize::from(t[off + 1]));
        let e = &t[off..off + len];
        match (kind, len) {
            (0, 8) => m
                .cpus
                .push((e[2].into(), e[3].into(), u32_at(e, 4) & 1 != 0, false)),
            (1, 12) => m.ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8))),
            (2, 10) => m.overrides.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8))),
            (4, 6) => m.nmis.push((e[2].into(), u16_at(e, 3), e[5])),
            (9, 16) => m
                .cpus
                .push((u32_at(e, 12), u32_at(e, 4), u32_at(e, 8) & 1 != 0, true)),
            (0xa, 12) => m.x2apic_nmis.push((u32_at(e, 4), u16_at(e, 2), e[8])),
            _ => panic!("unexpected MADT entry type {kind} length {len}"),
        }
        off += len;
    }
    assert_eq!(off, t.len(), "entries fill the MADT exactly");
    m
}

fn build(mem: &GuestMemoryMmap, config: &AcpiConfig) -> (AcpiTables, Found) {
    let placed = create_acpi_tables(mem, config).expect("tables built");
    let found = find_tables(mem, &placed);
    (placed, found)
}

#[test]
fn tables_are_found_and_checksummed_for_1_4_and_254_cpus() {
    for cpus in [1, 4, 254] {
        let mem = guest_memory();
        let (placed, found) = build(&mem, &config(cpus));
        assert_eq!(found.xsdt_entries, ["FACP", "APIC"], "{cpus} vCPUs");
        eprintln!(
            "{cpus} vCPUs: tables at {:#x}..{:#x} ({} bytes); {}",
            placed.range.start,
            placed.range.end,
            placed.range.end - placed.range.start,
            found
                .tables
                .iter()
                .map(|(sig, (addr, t))| format!("{sig} {addr:#x}+{}", t.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let madt = parse_madt(found.get("APIC"));
        assert_eq!(madt.cpus.len(), cpus as usize);
    }
}

#[test]
fn fadt_describes_the_pm1_block_reset_register_and_platform() {
    let mem = guest_memory();
    let (_, found) = build(&mem, &config(4));
    let f = found.get("FACP");
    assert_eq!(f.len(), 276, "ACPI 6.x FADT");
    assert_eq!((f[8], f[131]), (6, 5), "FADT revision 6.5");
    assert_eq!(u16_at(f, 46), 9, "SCI_INT");
    assert_eq!(u32_at(f, 48), 0, "SMI_CMD: always in ACPI mode");
    assert_eq!((f[52], f[53]), (0, 0), "ACPI_ENABLE/DISABLE");
    assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
    assert_eq!(u32_at(f, 60), 0, "PM1b_EVT_BLK");
    assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
    assert_eq!(u32_at(f, 68), 0, "PM1b_CNT_BLK");
    assert_eq!(u32_at(f, 72), 0, "PM2_CNT_BLK");
    assert_eq!(u32_at(f, 76), 0, "PM_TMR_BLK");
    assert_eq!((u32_at(f, 80), u32_at(f, 84)), (0, 0), "GPE0/1_BLK");
    assert_eq!(&f[88..96], &[4, 2, 0, 0, 0, 0, 0, 0], "block lengths");
    assert!(u16_at(f, 96) > 100 && u16_at(f, 98) > 1000, "no C2/C3");
    assert_eq!(f[108], 0x32, "CENTURY");
    let boot_arch = u16_at(f, 109);
    assert_eq!(boot_arch & 0b11, 0b11, "legacy devices, 8042");
    assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
    assert_eq!(boot_arch & (1 << 3), 0, "MSI allowed");
    assert_eq!(boot_arch & (1 << 5), 0, "CMOS RTC present");
    let flags = u32_at(f, 112);
    for (bit, name) in [
        (0, "WBINVD"),
        (2, "PROC_C1"),
        (5, "SLP_BUTTON"),
        (10, "RESET_REG_SUP"),
    ] {
        assert_ne!(flags & (1 << bit), 0, "{name} set");
    }
    for (bit, name) in [
        (4, "PWR_BUTTON"),
        (8, "TMR_VAL_EXT"),
        (20, "HW_REDUCED_ACPI"),
    ] {
        assert_eq!(flags & (1 << bit), 0, "{name} clear");
    }
    // RESET_REG: system I/O, 8 bits at offset 0, byte access, port 0xcf9.
    assert_eq!(&f[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(f, 120), 0xcf9);
    assert_eq!(f[128], 0x06, "RESET_VALUE");
    // X_PM1a_EVT_BLK and X_PM1a_CNT_BLK match the legacy fields.
    assert_eq!(&f[148..152], &[1, 32, 0, 2]);
    assert_eq!(u64_at(f, 152), 0x600);
    assert_eq!(&f[172..176], &[1, 16, 0, 2]);
    assert_eq!(u64_at(f, 176), 0x604);
    for off in [160, 184, 196, 208, 220, 232] {
        assert_eq!(&f[off..off + 12], &[0; 12], "unused X_ block at {off}");
    }
}

#[test]
fn madt_lists_every_cpu_the_ioapic_overrides_and_nmi() {
    let mem = guest_memory();
    for cpus in [1u32, 4, 254] {
        let (_, found) = build(&mem, &config(cpus));
        let m = parse_madt(found.get("APIC"));
        assert_eq!(m.lapic_addr, 0xfee0_0000);
        assert_eq!(m.flags, 1, "PCAT_COMPAT");
        let expected: Vec<_> = (0..cpus).map(|i| (i, i, true, false)).collect();
        assert_eq!(m.cpus, expected);
        assert_eq!(m.ioapics.len(), 1);
        let (id, addr, gsi_base) = m.ioapics[0];
        assert_eq!((addr, gsi_base), (0xfec0_0000, 0));
        assert_eq!(u32::from(id), cpus, "first free ID");
        assert_eq!(
            m.overrides,
            [(0, 0, 2, 0), (0, 9, 9, 0b1101)],
            "IRQ0 -> GSI2 conforming; SCI level, active high"
        );
        assert_eq!(m.nmis, [(0xff, 0b0101, 1)], "NMI on LINT1 of all CPUs");
        assert!(m.x2apic_nmis.is_empty());
    }
}

#[test]
fn apic_ids_above_254_get_x2apic_entries() {
    let mem = guest_memory();
    // Sparse IDs, as a topology with padding bits produces.
    let ids: Vec<u32> = (0..254).map(|i| (i / 2) * 4 + i % 2).collect();
    let cfg = AcpiConfig {
        apic_ids: ids.clone(),
        pci: None,
    };
    let (_, found) = build(&mem, &cfg);
    let m = parse_madt(found.get("APIC"));
    assert_eq!(m.cpus.len(), 254);
    for (i, &(uid, id, enabled, x2)) in m.cpus.iter().enumerate() {
        assert_eq!((uid, id, enabled), (i as u32, ids[i], true));
        assert_eq!(x2, id > 254, "entry type for APIC ID {id}");
    }
    assert!(m.cpus.iter().any(|c| c.3), "some x2APIC entries");
    assert_eq!(m.x2apic_nmis, [(u32::MAX, 0b0101, 1)]);
    assert_eq!(m.ioapics[0].0, 2, "lowest ID no LAPIC uses");

    let scratch = Scratch::new("x2apic");
    let Some(madt) = iasl_disassemble(&scratch.0, "apic", found.get("APIC")) else {
        return skipped();
    };
    let x2apics = m.cpus.iter().filter(|c| c.3).count();
    assert_eq!(madt.matches("[Processor Local x2APIC]").count(), x2apics);
    assert_eq!(
        madt.matches("[Processor Local APIC]").count(),
        254 - x2apics
    );
    assert_eq!(madt.matches("[Local x2APIC NMI]").count(), 1);
}

#[test]
fn dsdt_aml_has_s5_and_the_isa_devices() {
    let mem = guest_memory();
    let (_, found) = build(&mem, &config(2));
    let aml = &found.get("DSDT")[36..];
    let contains = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
    // Name (_S5, Package (4) { 5, 5, 0, 0 }).
    assert!(contains(&[
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00
    ]));
    // COM1's _CRS: IO (Decode16, 0x3f8, 0x3f8, 1, 8), IRQNoFlags () {4}, EndTag.
    assert!(contains(&[
        0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00
    ]));
    // RTC: IO (Decode16, 0x70, 0x70, 1, 2), IRQNoFlags () {8}.
    assert!(contains(&[
        0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x22, 0x00, 0x01
    ]));
    // EISAID ("PNP0501") and ("PNP0B00") as DWord constants.
    assert!(contains(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
    assert!(contains(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]));
    assert!(contains(b"C001"), "processor device of vCPU 1");
    assert!(!contains(b"PCI0"));
}

/// A scratch directory for iasl, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vireo-acpi-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Disassembles `table` with `iasl -d`; None if iasl is not installed.
/// Fails on a failed run or on any line reporting an error or warning.
fn iasl_disassemble(dir: &Path, name: &str, table: &[u8]) -> Option<String> {
    let input = dir.join(format!("{name}.dat"));
    std::fs::write(&input, table).expect("write table");
    let out = match Command::new("iasl")
        .arg("-d")
        .arg(&input)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running iasl: {e}"),
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl -d {name}:\n{log}");
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).expect("iasl output");
    for line in log.lines().chain(dsl.lines()) {
        let l = line.to_ascii_lowercase();
        assert!(
            !(l.contains("error")
                || l.contains("warning")
                || l.contains("invalid")
                || l.contains("incorrect")),
            "iasl -d {name}: {line}\n{log}\n{dsl}"
        );
    }
    // Compiling the result back runs iasl's semantic checks (reserved
    // names, resource descriptors, data table fields).
    let out = Command::new("iasl")
        .arg(format!("{name}.dsl"))
        .current_dir(dir)
        .output()
        .expect("iasl ran a moment ago");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && log.contains("0 Errors, 0 Warnings, 0 Remarks"),
        "iasl {name}.dsl:\n{log}\n{dsl}"
    );
    Some(dsl)
}

fn skipped() {
    eprintln!("SKIPPED: iasl (Debian package acpica-tools) is not installed");
}

#[test]
fn iasl_disassembles_every_table() {
    for cpus in [1, 4, 254] {
        let mem = guest_memory();
        let (_, found) = build(&mem, &config(cpus));
        let scratch = Scratch::new(&format!("plain-{cpus}"));
        let Some(dsdt) = iasl_disassemble(&scratch.0, "dsdt", found.get("DSDT")) else {
            return skipped();
        };
        for needle in [
            "Name (_S5, Package",
            "_S5_",
            "\"PNP0501\"",
            "\"PNP0B00\"",
            "\"PNP0303\"",
            "IO (Decode16,",
            "0x03F8,             // Range Minimum",
            "IRQNoFlags ()",
            "{4}",
            "{8}",
            "\"ACPI0007\"",
        ] {
            assert!(dsdt.contains(needle), "{cpus} vCPUs: no {needle}:\n{dsdt}");
        }
        let devices = dsdt.matches("Name (_HID, \"ACPI0007\"").count();
        assert_eq!(devices, cpus as usize, "processor devices");

        let fadt = iasl_disassemble(&scratch.0, "facp", found.get("FACP")).expect("iasl");
        for needle in [
            "SCI Interrupt : 0009",
            "PM1A Event Block Address : 00000600",
            "PM1A Control Block Address : 00000604",
            "Value to cause reset : 06",
            "Address : 0000000000000CF9",
        ] {
            let squeezed: String = fadt.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(squeezed.contains(needle), "FADT: no {needle}:\n{fadt}");
        }
        let madt = iasl_disassemble(&scratch.0, "apic", found.get("APIC")).expect("iasl");
        let lapics = madt.matches("[Processor Local APIC]").count();
        assert_eq!(lapics, cpus as usize, "MADT:\n{madt}");
        assert!(madt.contains("[I/O APIC]") && madt.contains("[Interrupt Source Override]"));
        assert!(madt.contains("[Local APIC NMI]"));
        iasl_disassemble(&scratch.0, "xsdt", found.get("XSDT")).expect("iasl");
        iasl_disassemble(&scratch.0, "facs", found.get("FACS")).expect("iasl");
    }
}

#[test]
fn pci_host_bridge_adds_mcfg_and_pci0() {
    let mem = guest_memory();
    let cfg = AcpiConfig {
        apic_ids: vec![0, 1],
        pci: Some(pci()),
    };
    let (_, found) = build(&mem, &cfg);
    assert_eq!(found.xsdt_entries, ["FACP", "APIC", "MCFG"]);
    let mcfg = found.get("MCFG");
    assert_eq!(mcfg.len(), 36 + 8 + 16, "one allocation");
    assert_eq!(u64_at(mcfg, 44), 0xe000_0000, "ECAM base");
    assert_eq!(u16_at(mcfg, 52), 0, "segment");
    assert_eq!((mcfg[54], mcfg[55]), (0, 0x3f), "buses");
    assert_eq!(
        pci().ecam_window(),
        Window {
            base: 0xe000_0000,
            size: 64 * MIB
        }
    );

    let scratch = Scratch::new("pci");
    let Some(dsdt) = iasl_disassemble(&scratch.0, "dsdt", found.get("DSDT")) else {
        return skipped();
    };
    for needle in [
        "Device (PCI0)",
        "\"PNP0A08\"",
        "\"PNP0A03\"",
        "Name (_SEG, Zero)",
        "Name (_BBN, Zero)",
        "WordBusNumber (ResourceProducer",
        "0x003F,             // Range Maximum",
        "WordIO (ResourceProducer",
        "0x1000,             // Range Minimum",
        "0xFFFF,             // Range Maximum",
        "DWordMemory (ResourceProducer",
        "0xDFFFFFFF,         // Range Maximum",
        "QWordMemory (ResourceProducer",
        "0x000000BFFFFFFFFF, // Range Maximum",
        "\"PNP0C02\"",
        "Memory32Fixed (ReadWrite,",
        "0xE0000000,         // Address Base",
        "0x04000000,         // Address Length",
        "Name (_S5, Package",
    ] {
        assert!(dsdt.contains(needle), "no {needle}:\n{dsdt}");
    }
    iasl_disassemble(&scratch.0, "mcfg", mcfg).expect("iasl");
}

#[test]
fn ecam_above_4g_is_reserved_with_a_qword_descriptor() {
    let mem = guest_memory();
    let pci = PciHostBridge {
        ecam_base: 0x100_0000_0000,
        bus_start: 0x10,
        bus_end: 0x1f,
        io: None,
        mmio64: None,
        ..pci()
    };
    let cfg = AcpiConfig {
        apic_ids: vec![0],
        pci: Some(pci.clone()),
    };
    let (_, found) = build(&mem, &cfg);
    let mcfg = found.get("MCFG");
    assert_eq!(u64_at(mcfg, 44), 0x100_0000_0000);
    assert_eq!((mcfg[54], mcfg[55]), (0x10, 0x1f));
    let scratch = Scratch::new("pci-high");
    let Some(dsdt) = iasl_disassemble(&scratch.0, "dsdt", found.get("DSDT")) else {
        return skipped();
    };
    assert!(dsdt.contains("Name (_BBN, 0x10)"), "{dsdt}");
    assert!(!dsdt.contains("WordIO"), "{dsdt}");
    // The ECAM of buses 0x10..=0x1f: 16 MiB from base + 16 MiB.
    assert!(
        dsdt.contains("0x0000010001000000, // Range Minimum"),
        "{dsdt}"
    );
    assert!(
        dsdt.contains("0x0000010001FFFFFF, // Range Maximum"),
        "{dsdt}"
    );
}

#[test]
fn bad_configurations_are_refused() {
    let mem = guest_memory();
    let err = |cfg: &AcpiConfig| create_acpi_tables(&mem, cfg).expect_err("refused");
    assert!(matches!(err(&config(0)), AcpiError::NoCpus));
    let e = err(&AcpiConfig {
        apic_ids: vec![0, 1, 2, 1],
        pci: None,
    });
    assert!(
        matches!(
            e,
            AcpiError::DuplicateApicId {
                apic_id: 1,
                first: 1,
                second: 3
            }
        ),
        "{e}"
    );
    let e = err(&AcpiConfig {
        apic_ids: vec![0, u32::MAX],
        pci: None,
    });
    assert!(
        matches!(e, AcpiError::BroadcastApicId { cpu: 1, .. }),
        "{e}"
    );

    let with_pci = |pci: PciHostBridge| AcpiConfig {
        apic_ids: vec![0],
        pci: Some(pci),
    };
    let e = err(&with_pci(PciHostBridge {
        bus_start: 2,
        bus_end: 1,
        ..pci()
    }));
    assert!(matches!(e, AcpiError::PciBusRange { .. }), "{e}");
    for (bad, what) in [
        (
            PciHostBridge {
                ecam_base: 0xe008_0000,
                ..pci()
            },
            "ECAM",
        ),
        (
            PciHostBridge {
                io: Some(Window {
                    base: 0x1000,
                    size: 0x10000,
                }),
                ..pci()
            },
            "I/O",
        ),
        (
            PciHostBridge {
                mmio32: Window {
                    base: 0xc000_0000,
                    size: 0x4000_0001,
                },
                ..pci()
            },
            "32-bit MMIO",
        ),
        (
            PciHostBridge {
                mmio64: Some(Window {
                    base: 1 << 40,
                    size: 0,
                }),
                ..pci()
            },
            "64-bit MMIO",
        ),
    ] {
        let e = err(&with_pci(bad));
        assert!(
            matches!(e, AcpiError::PciWindow { window, .. } if window == what),
            "{what}: {e}"
        );
    }
    // Nothing was written by any of these.
    assert_eq!(read(&mem, RSDP_ADDR, 8), [0; 8]);
}

#[test]
fn too_many_cpus_for_the_window_is_an_error_and_writes_nothing() {
    let mem = guest_memory();
    // x2APIC IDs make the largest entries: 16 bytes in the MADT, plus a
    // processor device in the DSDT.
    let cfg = AcpiConfig {
        apic_ids: (0..3500).map(|i| 0x1000 + i).collect(),
        pci: None,
    };
    let e = create_acpi_tables(&mem, &cfg).expect_err("too big");
    assert!(
        matches!(
            e,
            AcpiError::TooBig {
                cpus: 3500,
                available: 0x20000,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("3500 vCPUs") && msg.contains("0x100000"),
        "{msg}"
    );
    assert_eq!(read(&mem, RSDP_ADDR, 8), [0; 8]);
    let e = create_acpi_tables(
        &mem,
        &AcpiConfig {
            apic_ids: (0..5000).collect(),
            pci: None,
        },
    )
    .expect_err("too many");
    assert!(matches!(e, AcpiError::TooManyCpus { cpus: 5000 }), "{e}");
}

#[test]
fn guest_memory_without_the_window_is_an_error() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xe_0000)]).expect("guest memory");
    let e = create_acpi_tables(&mem, &config(1)).expect_err("no room");
    assert!(matches!(e, AcpiError::GuestMemory(_)), "{e}");
}
