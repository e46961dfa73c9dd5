//! ACPI tables as an OS finds them: the RSDP, the XSDT (or RSDT), every table's bounds and
//! checksum, where the tables lie in the memory map, and what an OS reads from the MADT,
//! FADT and DSDT.
//!
//! Everything is copied out of physical memory (identity mapped) before it is parsed, so a
//! corrupt table can only make the check fail, never fault. A field beyond a table's length
//! reads as zero, as ACPICA treats a short FADT.

use crate::acpi::{
    bytes_n, field, load_table as load_table_quiet, read_phys, root_table, scan_for_rsdp, Gas,
    Rsdp, Sig, Table, HEADER_LEN, MAX_TABLE_LEN, SCAN_END, SCAN_START, SPACE_IO,
};
use crate::kit::prelude::*;

/// Below this the guest's static page tables map everything.
const FOUR_GIB: u64 = 1 << 32;
/// Where the CPU says its local APIC is: IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1b;

/// FADT.Flags bits.
const FADT_RESET_REG_SUP: u64 = 1 << 10;
const FADT_HW_REDUCED_ACPI: u64 = 1 << 20;

pub fn acpi(ctx: &mut Ctx) -> Result<(), Fail> {
    let cpus = ctx.cpus()?;
    let expect = Expect::parse(ctx)?;
    let mut seen = Ranges::default();

    let rsdp = find_rsdp(ctx)?;
    seen.add(ctx, "RSDP", rsdp.addr, rsdp.len)?;

    // The root table, and the tables it lists.
    let (root, pointers) = root_table(ctx, &rsdp)?;
    print_table(&root);
    seen.add(ctx, rsdp.root_name(), root.addr, root.len())?;
    if rsdp.xsdt && rsdp.rsdt != 0 {
        check_rsdt_matches(ctx, &rsdp, &pointers, &mut seen)?;
    }

    let mut tables: Vec<Table> = Vec::new();
    for (i, &addr) in pointers.iter().enumerate() {
        ensure!(
            addr != 0,
            "{} entry {i} is a null pointer",
            rsdp.root_name()
        );
        ensure!(
            !pointers[..i].contains(&addr),
            "{} lists the table at {addr:#x} twice",
            rsdp.root_name()
        );
        let table = load_table(ctx, addr, None)?;
        let sig = table.signature();
        ensure!(
            &sig != b"DSDT" && &sig != b"FACS",
            "{} lists the {}: it is reached through the FADT only",
            rsdp.root_name(),
            Sig(sig)
        );
        if matches!(&sig, b"FACP" | b"APIC" | b"MCFG") {
            ensure!(
                !tables.iter().any(|t| t.signature() == sig),
                "two {} tables",
                Sig(sig)
            );
        }
        seen.add(ctx, &format!("{}", Sig(sig)), table.addr, table.len())?;
        tables.push(table);
    }
    let find = |sig: &[u8; 4]| tables.iter().find(|t| &t.signature() == sig);

    let Some(fadt) = find(b"FACP") else {
        fail!("no FADT (FACP) in the {}", rsdp.root_name());
    };
    let Some(madt) = find(b"APIC") else {
        fail!("no MADT (APIC) in the {}", rsdp.root_name());
    };
    let madt = check_madt(ctx, madt, cpus)?;
    check_fadt(ctx, fadt, &madt, &expect, &mut seen)?;
    if let Some(mcfg) = find(b"MCFG") {
        check_mcfg(ctx, mcfg)?;
    }
    println!(
        "acpi: {} structures (RSDP and tables) checked: none in RAM, none overlapping",
        seen.ranges.len()
    );
    Ok(())
}

/// Expectations from the command line (semantic checks, made only when given).
struct Expect {
    sci: Option<u64>,
    pm1a_evt: Option<u64>,
    pm1a_cnt: Option<u64>,
    reset: Option<u64>,
    reset_value: Option<u64>,
}

impl Expect {
    fn parse(ctx: &Ctx) -> Result<Self, Fail> {
        let get = |key: &str| -> Result<Option<u64>, Fail> {
            match ctx.arg(key) {
                Some(_) => ctx.arg_u64(key, 0).map(Some),
                None => Ok(None),
            }
        };
        Ok(Self {
            sci: get("sci")?,
            pm1a_evt: get("pm1a_evt")?,
            pm1a_cnt: get("pm1a_cnt")?,
            reset: get("reset")?,
            reset_value: get("reset_value")?,
        })
    }
}

fn find_rsdp(ctx: &Ctx) -> Result<Rsdp, Fail> {
    let rsdp = crate::acpi::find_rsdp(ctx)?;
    let (addr, scanned) = (rsdp.addr, scan_for_rsdp());
    println!(
        "acpi: RSDP at {addr:#x} len {} rev {} oem {} ({})",
        rsdp.len,
        rsdp.revision,
        Sig(rsdp.oem),
        rsdp.how
    );
    if ctx.arg_u64("scan", 0)? != 0 {
        ensure!(
            scanned == Some(addr),
            "scan=1: a scan of {SCAN_START:#x}-{:#x} finds {}, not the RSDP at {addr:#x}",
            SCAN_END - 1,
            match scanned {
                Some(found) => format!("an RSDP at {found:#x}"),
                None => String::from("no RSDP"),
            }
        );
    }
    match scanned {
        Some(found) if found != addr => println!(
            "acpi: note: a scan of {SCAN_START:#x}-{:#x} finds another RSDP at {found:#x}",
            SCAN_END - 1
        ),
        None => println!(
            "acpi: note: a scan of {SCAN_START:#x}-{:#x} finds no RSDP (only the boot \
             protocol's pointer leads to it)",
            SCAN_END - 1
        ),
        Some(_) => {}
    }
    Ok(rsdp)
}

fn print_table(table: &Table) {
    println!(
        "acpi: {} at {:#x} len {} rev {} oem {} {}",
        Sig(table.signature()),
        table.addr,
        table.len(),
        table.revision(),
        Sig(table.oem_id()),
        Sig(table.oem_table_id())
    );
}

/// Reads, checks and prints the table at `addr` (signature `expected`, if given).
fn load_table(ctx: &Ctx, addr: u64, expected: Option<&[u8; 4]>) -> Result<Table, Fail> {
    let table = load_table_quiet(ctx, addr, expected)?;
    print_table(&table);
    Ok(table)
}

/// With an XSDT, a non-zero RSDT address must lead to a valid RSDT listing the same tables
/// (an ACPI 1.0 OS reads that one).
fn check_rsdt_matches(
    ctx: &Ctx,
    rsdp: &Rsdp,
    xsdt_pointers: &[u64],
    seen: &mut Ranges,
) -> Result<(), Fail> {
    let rsdt = load_table(ctx, rsdp.rsdt, Some(b"RSDT"))?;
    seen.add(ctx, "RSDT", rsdt.addr, rsdt.len())?;
    let entries = (rsdt.bytes.len() - HEADER_LEN) / 4;
    let pointers: Vec<u64> = (0..entries)
        .map(|i| rsdt.get(HEADER_LEN + 4 * i, 4))
        .collect();
    ensure!(
        (rsdt.bytes.len() - HEADER_LEN).is_multiple_of(4) && pointers == xsdt_pointers,
        "the RSDT lists {pointers:#x?}, the XSDT {xsdt_pointers:#x?}"
    );
    Ok(())
}

/// The physical ranges the ACPI tables occupy, checked as they are added.
#[derive(Default)]
struct Ranges {
    ranges: Vec<(u64, u64)>,
}

impl Ranges {
    /// Adds `[addr, addr + len)`: it must lie outside RAM per the memory map (an OS would
    /// otherwise reuse it) and overlap no table added before.
    fn add(&mut self, ctx: &Ctx, what: &str, addr: u64, len: u64) -> Result<(), Fail> {
        let end = addr + len;
        if let Some(ram) = ctx
            .memmap()
            .iter()
            .find(|r| r.is_ram() && r.addr < end && addr < r.end())
        {
            fail!(
                "{what} at {addr:#x}-{:#x} lies in RAM per the memory map ({:#x}-{:#x}): an OS \
                 would overwrite it",
                end - 1,
                ram.addr,
                ram.end() - 1
            );
        }
        if let Some(&(s, e)) = self.ranges.iter().find(|&&(s, e)| s < end && addr < e) {
            fail!(
                "{what} at {addr:#x}-{:#x} overlaps another ACPI structure at {s:#x}-{:#x}",
                end - 1,
                e - 1
            );
        }
        self.ranges.push((addr, end));
        Ok(())
    }
}

/// What the MADT says, for the FADT checks.
struct Madt {
    ioapics: Vec<IoApic>,
    /// ISA IRQ -> (GSI, MPS INTI flags).
    overrides: Vec<(u8, u32, u16)>,
}

struct IoApic {
    id: u8,
    addr: u64,
    gsi_base: u32,
    pins: u32,
}

impl Madt {
    /// The GSI and flags of ISA IRQ `irq` (identity unless overridden).
    fn isa_irq(&self, irq: u8) -> (u32, u16) {
        self.overrides
            .iter()
            .find(|o| o.0 == irq)
            .map_or((u32::from(irq), 0), |o| (o.1, o.2))
    }

    fn covers(&self, gsi: u32) -> bool {
        self.ioapics
            .iter()
            .any(|a| (a.gsi_base..a.gsi_base + a.pins).contains(&gsi))
    }
}

/// MPS INTI flags, as words.
fn inti(flags: u16) -> String {
    let polarity = match flags & 3 {
        0 => "bus-default polarity",
        1 => "active high",
        3 => "active low",
        _ => "reserved polarity",
    };
    let trigger = match (flags >> 2) & 3 {
        0 => "bus-default trigger",
        1 => "edge",
        3 => "level",
        _ => "reserved trigger",
    };
    format!("{trigger}, {polarity}")
}

fn check_madt(ctx: &Ctx, t: &Table, cpus: usize) -> Result<Madt, Fail> {
    ensure!(
        t.len() >= 44,
        "MADT length {} is shorter than its 44-byte fixed part",
        t.len()
    );
    let mut lapic_addr = t.get(36, 4);
    let flags = t.get(40, 4);
    // (APIC ID, ACPI processor UID) of every enabled processor.
    let mut cpu_list: Vec<(u32, u32)> = Vec::new();
    let mut disabled = 0;
    let mut madt = Madt {
        ioapics: Vec::new(),
        overrides: Vec::new(),
    };
    let mut offset = 44;
    while offset < t.bytes.len() {
        let kind = t.get(offset, 1);
        let len = t.get(offset + 1, 1) as usize;
        ensure!(
            len >= 2 && offset + len <= t.bytes.len(),
            "MADT entry at offset {offset} (type {kind}) has length {len}, beyond the table's {}",
            t.len()
        );
        let want = match kind {
            0 => 8,
            1 => 12,
            2 => 10,
            4 => 6,
            5 => 12,
            9 => 16,
            0xa => 12,
            _ => len,
        };
        ensure!(
            len == want,
            "MADT entry at offset {offset}: type {kind} must be {want} bytes, not {len}"
        );
        let e = |o: usize, n: usize| t.get(offset + o, n);
        match kind {
            0 | 9 => {
                let (uid, id, flags) = if kind == 0 {
                    (e(2, 1), e(3, 1), e(4, 4))
                } else {
                    (e(12, 4), e(4, 4), e(8, 4))
                };
                if flags & 1 != 0 {
                    cpu_list.push((id as u32, uid as u32));
                } else {
                    disabled += 1;
                }
            }
            1 => {
                let addr = e(4, 4);
                madt.ioapics.push(IoApic {
                    id: e(2, 1) as u8,
                    addr,
                    gsi_base: e(8, 4) as u32,
                    pins: 0,
                });
            }
            2 => {
                let (bus, irq, gsi, flags) = (e(2, 1), e(3, 1) as u8, e(4, 4) as u32, e(8, 2));
                ensure!(
                    bus == 0 && irq < 16,
                    "MADT interrupt source override for bus {bus} irq {irq}: expected ISA (bus 0) \
                     IRQ 0-15"
                );
                ensure!(
                    !madt.overrides.iter().any(|o| o.0 == irq),
                    "MADT overrides ISA IRQ {irq} twice"
                );
                madt.overrides.push((irq, gsi, flags as u16));
            }
            5 => lapic_addr = e(4, 8),
            _ => {}
        }
        offset += len;
    }

    // The local APIC the CPU uses must be the one the MADT names.
    let apic_base = svc::rdmsr(MSR_APIC_BASE) & 0xf_ffff_f000;
    ensure!(
        lapic_addr == apic_base,
        "MADT says the local APIC is at {lapic_addr:#x}, IA32_APIC_BASE says {apic_base:#x}"
    );
    let bsp = smp::lapic::id();
    let ids: Vec<String> = cpu_list.iter().map(|c| format!("{}", c.0)).collect();
    println!(
        "acpi: MADT lapic {lapic_addr:#x} flags {flags:#x}, {} enabled cpus (apic ids {}), \
         {disabled} disabled, bsp apic id {bsp}",
        cpu_list.len(),
        ids.join(" ")
    );
    for (i, &(id, uid)) in cpu_list.iter().enumerate() {
        ensure!(
            !cpu_list[..i].iter().any(|c| c.0 == id),
            "MADT lists APIC ID {id} twice"
        );
        ensure!(
            !cpu_list[..i].iter().any(|c| c.1 == uid),
            "MADT lists ACPI processor UID {uid} twice"
        );
    }
    ensure!(
        cpu_list.len() == cpus,
        "MADT has {} enabled processors, expected {cpus} (cpus={cpus})",
        cpu_list.len()
    );
    ensure!(
        cpu_list.iter().any(|c| c.0 == bsp),
        "the boot CPU's APIC ID {bsp} is not among the MADT's processors"
    );

    ensure!(!madt.ioapics.is_empty(), "MADT lists no IO APIC");
    for i in 0..madt.ioapics.len() {
        let (id, addr) = (madt.ioapics[i].id, madt.ioapics[i].addr);
        ensure!(
            !madt.ioapics[..i].iter().any(|a| a.id == id),
            "MADT lists IO APIC ID {id} twice"
        );
        madt.ioapics[i].pins = ioapic_pins(ctx, id, addr)?;
        let a = &madt.ioapics[i];
        println!(
            "acpi: MADT ioapic id {id} at {addr:#x} gsi {}-{}",
            a.gsi_base,
            a.gsi_base + a.pins - 1
        );
    }
    for &(irq, gsi, flags) in &madt.overrides {
        println!(
            "acpi: MADT override irq {irq} -> gsi {gsi} ({})",
            inti(flags)
        );
        ensure!(
            madt.covers(gsi),
            "MADT routes ISA IRQ {irq} to GSI {gsi}, which no IO APIC has"
        );
    }
    Ok(madt)
}

/// Reads the IO APIC's version register: its number of redirection entries.
fn ioapic_pins(ctx: &Ctx, id: u8, addr: u64) -> Result<u32, Fail> {
    ensure!(
        addr != 0 && addr.is_multiple_of(16) && addr + 0x20 <= FOUR_GIB,
        "MADT IO APIC {id} at {addr:#x}: not a 16-byte aligned address below 4 GiB"
    );
    ensure!(
        !ctx.memmap()
            .iter()
            .any(|r| r.is_ram() && r.addr < addr + 0x20 && addr < r.end()),
        "MADT IO APIC {id} at {addr:#x} lies in RAM per the memory map"
    );
    // SAFETY: below 4 GiB (mapped) and not RAM per the memory map: device registers
    // (IOREGSEL at +0, IOWIN at +0x10), or nothing.
    let version = unsafe {
        io::mmio_write32(addr, 1);
        io::mmio_read32(addr + 0x10)
    };
    ensure!(
        version != 0 && version != u32::MAX,
        "no IO APIC answers at {addr:#x} (version register reads {version:#x})"
    );
    Ok(((version >> 16) & 0xff) + 1)
}

/// A PM register block: its legacy (32-bit I/O port) field and its X_ Generic Address
/// Structure, reconciled as ACPICA does (the X_ one wins; both set must agree).
fn pm_block(
    t: &Table,
    name: &str,
    legacy: usize,
    len: usize,
    x: usize,
) -> Result<Option<Gas>, Fail> {
    let port = t.get(legacy, 4);
    let bytes = t.get(len, 1) as u8;
    let xgas = t.gas(x);
    if xgas.addr == 0 {
        return Ok((port != 0).then_some(Gas {
            space: SPACE_IO,
            width: bytes * 8,
            addr: port,
        }));
    }
    ensure!(
        port == 0 || (xgas.space == SPACE_IO && port == xgas.addr),
        "FADT {name} is {port:#x} but X_{name} is {xgas}"
    );
    ensure!(
        u32::from(xgas.width) == u32::from(bytes) * 8,
        "FADT X_{name} is {} bits wide, but its length field says {bytes} bytes",
        xgas.width
    );
    Ok(Some(xgas))
}

/// The 32-bit pointer at `legacy` and the 64-bit one at `x` (0: absent): one address.
fn pointer_pair(t: &Table, name: &str, legacy: usize, x: usize) -> Result<u64, Fail> {
    let (p32, p64) = (t.get(legacy, 4), t.get(x, 8));
    ensure!(
        p32 == 0 || p64 == 0 || p32 == p64,
        "FADT {name} is {p32:#x} but X_{name} is {p64:#x}"
    );
    Ok(if p64 != 0 { p64 } else { p32 })
}

fn describe(block: Option<Gas>) -> String {
    match block {
        Some(g) => format!("{g}"),
        None => String::from("none"),
    }
}

fn check_fadt(
    ctx: &Ctx,
    t: &Table,
    madt: &Madt,
    expect: &Expect,
    seen: &mut Ranges,
) -> Result<(), Fail> {
    // ACPI 1.0's FADT is 116 bytes; later fields of a shorter table read as zero.
    ensure!(
        t.len() >= 116,
        "FADT length {} is shorter than ACPI 1.0's 116 bytes",
        t.len()
    );
    let flags = t.get(112, 4);
    let hw_reduced = flags & FADT_HW_REDUCED_ACPI != 0;
    let sci = t.get(46, 2);
    let pm1a_evt = pm_block(t, "PM1a_EVT_BLK", 56, 88, 148)?;
    let pm1a_cnt = pm_block(t, "PM1a_CNT_BLK", 64, 89, 172)?;
    let reset = if flags & FADT_RESET_REG_SUP != 0 {
        ensure!(
            t.len() >= 129,
            "FADT sets RESET_REG_SUP but is only {} bytes long (RESET_REG ends at 129)",
            t.len()
        );
        Some((t.gas(116), t.get(128, 1)))
    } else {
        None
    };
    let minor = t.get(131, 1);
    println!(
        "acpi: FADT rev {}.{minor} flags {flags:#x}{}",
        t.revision(),
        if hw_reduced {
            " (hardware-reduced)"
        } else {
            ""
        }
    );
    println!(
        "acpi: FADT sci {sci}, pm1a_evt {}, pm1a_cnt {}, reset {}",
        describe(pm1a_evt),
        describe(pm1a_cnt),
        match reset {
            Some((reg, value)) => format!("{reg} value {value:#04x}"),
            None => String::from("none (RESET_REG_SUP clear)"),
        }
    );

    if !hw_reduced {
        // Fixed hardware: an OS needs the PM1 event and control blocks and the SCI.
        let Some(evt) = pm1a_evt else {
            fail!("FADT is not hardware-reduced but has no PM1a event block");
        };
        let Some(cnt) = pm1a_cnt else {
            fail!("FADT is not hardware-reduced but has no PM1a control block");
        };
        ensure!(
            evt.width >= 32 && evt.width % 16 == 0,
            "FADT PM1a event block is {} bits, expected at least 32 (status + enable)",
            evt.width
        );
        ensure!(
            cnt.width >= 16,
            "FADT PM1a control block is {} bits, expected at least 16",
            cnt.width
        );
        // SCI_INT is an ISA IRQ (which the MADT may override), or a GSI beyond them.
        let (gsi, flags) = match u8::try_from(sci) {
            Ok(irq) if irq < 16 => madt.isa_irq(irq),
            _ => (sci as u32, 0),
        };
        println!("acpi: SCI irq {sci} -> gsi {gsi} ({})", inti(flags));
        ensure!(
            madt.covers(gsi),
            "the SCI (SCI_INT {sci}, GSI {gsi}) reaches no IO APIC pin"
        );
        ensure!(
            (flags >> 2) & 3 != 1,
            "the MADT makes the SCI (IRQ {sci}) edge-triggered; the SCI is level-triggered"
        );
    }

    // Semantic expectations, only when asked for.
    if let Some(want) = expect.sci {
        ensure!(
            sci == want,
            "FADT SCI_INT is {sci}, expected {want} (sci={want})"
        );
    }
    for (name, block, want) in [
        ("pm1a_evt", pm1a_evt, expect.pm1a_evt),
        ("pm1a_cnt", pm1a_cnt, expect.pm1a_cnt),
    ] {
        let Some(want) = want else { continue };
        ensure!(
            !hw_reduced,
            "{name}={want:#x} expected, but the FADT is hardware-reduced (no PM1 blocks)"
        );
        ensure!(
            block.is_some_and(|g| g.space == SPACE_IO && g.addr == want),
            "FADT {name} is {}, expected io {want:#x} ({name}={want:#x})",
            describe(block)
        );
    }
    if let Some(want) = expect.reset {
        let Some((reg, value)) = reset else {
            fail!("FADT has no reset register (RESET_REG_SUP clear), expected io {want:#x}");
        };
        ensure!(
            reg.space == SPACE_IO && reg.addr == want,
            "FADT RESET_REG is {reg}, expected io {want:#x} (reset={want:#x})"
        );
        if let Some(want_value) = expect.reset_value {
            ensure!(
                value == want_value,
                "FADT RESET_VALUE is {value:#x}, expected {want_value:#x}"
            );
        }
    }

    // The FACS (optional here: the guest's VMMs have no firmware waking vector to offer).
    let facs = pointer_pair(t, "FIRMWARE_CTRL", 36, 132)?;
    if facs != 0 {
        let header = read_phys(ctx, facs, 8)?;
        let len = field(&header, 4, 4);
        ensure!(
            &header[..4] == b"FACS"
                && (64..=MAX_TABLE_LEN).contains(&len)
                && facs.is_multiple_of(64),
            "FACS at {facs:#x}: signature {}, length {len} (expected FACS, at least 64 bytes, \
             64-byte aligned)",
            Sig(bytes_n::<4>(&header, 0))
        );
        println!("acpi: FACS at {facs:#x} len {len}");
        seen.add(ctx, "FACS", facs, len)?;
    } else if !hw_reduced {
        println!("acpi: note: no FACS (FIRMWARE_CTRL and X_FIRMWARE_CTRL are 0)");
    }

    // The DSDT.
    let dsdt = pointer_pair(t, "DSDT", 40, 140)?;
    ensure!(dsdt != 0, "FADT has no DSDT pointer");
    let dsdt = load_table(ctx, dsdt, Some(b"DSDT"))?;
    seen.add(ctx, "DSDT", dsdt.addr, dsdt.len())?;
    let aml = &dsdt.bytes[HEADER_LEN..];
    let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
    ensure!(
        has(b"_S5_"),
        "the DSDT defines no \\_S5 (the bytes \"_S5_\" are not in its AML)"
    );
    // Devices by _HID, as a string or as a compressed EISA ID (informational).
    let device = |hid: &[u8; 7], eisa: [u8; 4]| has(hid) || has(&eisa);
    println!(
        "acpi: DSDT has _S5_; COM1 (PNP0501) {}, RTC (PNP0B00) {}",
        if device(b"PNP0501", [0x41, 0xd0, 0x05, 0x01]) {
            "yes"
        } else {
            "no"
        },
        if device(b"PNP0B00", [0x41, 0xd0, 0x0b, 0x00]) {
            "yes"
        } else {
            "no"
        },
    );
    Ok(())
}

/// PCI Express ECAM areas: well-formed and not RAM.
fn check_mcfg(ctx: &Ctx, t: &Table) -> Result<(), Fail> {
    let body = t.bytes.len().saturating_sub(44);
    ensure!(
        t.len() >= 44 && body.is_multiple_of(16),
        "MCFG length {} is not 44 plus whole 16-byte allocations",
        t.len()
    );
    for (i, area) in crate::acpi::mcfg_areas(t).iter().enumerate() {
        let (base, segment) = (area.base, area.segment);
        let (first, last) = (u64::from(area.bus_start), u64::from(area.bus_end));
        ensure!(
            base != 0 && base.is_multiple_of(1 << 20) && base < 1 << 52 && first <= last,
            "MCFG allocation {i}: base {base:#x}, buses {first}-{last}"
        );
        let (start, end) = (base + (first << 20), base + ((last + 1) << 20));
        println!(
            "acpi: MCFG segment {segment} buses {first}-{last} ecam {start:#x}-{:#x}",
            end - 1
        );
        if let Some(ram) = ctx
            .memmap()
            .iter()
            .find(|r| r.is_ram() && r.addr < end && start < r.end())
        {
            fail!(
                "MCFG ECAM area {start:#x}-{:#x} overlaps RAM {:#x}-{:#x}",
                end - 1,
                ram.addr,
                ram.end() - 1
            );
        }
    }
    Ok(())
}
