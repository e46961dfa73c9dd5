//! The PVH `struct hvm_start_info` and what the guest keeps of it.
//!
//! Everything is copied into the image at start-up (command line, memory map), so later
//! allocations can never overwrite it wherever the VMM put it.

use core::fmt;

use crate::kit::Fail;
use crate::sync::Once;

const HVM_START_MAGIC: u32 = 0x336e_c578;
const MAX_CMDLINE: usize = 4096;
const MAX_MEMMAP: usize = 128;
const MAX_MODULES: usize = 16;
/// start_info, command line, memory map, module list, and each module.
const MAX_RESERVED: usize = 4 + MAX_MODULES;

/// Memory map entry type: usable RAM.
pub const E820_RAM: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    // Version 1 and later:
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmModlistEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// One memory map entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    /// E820 type: 1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS, 5 unusable.
    pub kind: u32,
}

impl MemRegion {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    pub fn is_ram(&self) -> bool {
        self.kind == E820_RAM
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "ram",
            2 => "reserved",
            3 => "acpi",
            4 => "acpi-nvs",
            5 => "unusable",
            _ => "other",
        }
    }
}

/// A physical range the VMM's boot structures occupy `[start, end)`.
pub type Range = (u64, u64);

/// What the guest learned from the VMM at boot.
pub struct BootInfo {
    /// Physical address of `struct hvm_start_info`.
    pub start_info: u64,
    pub start_info_version: u32,
    /// Physical address of the ACPI RSDP (0: none given).
    pub rsdp: u64,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    memmap: [MemRegion; MAX_MEMMAP],
    memmap_len: usize,
    /// What the VMM put in RAM for the guest: start_info, command line, memory map, module
    /// list and modules (an initrd). The guest copies the first three at start-up but keeps
    /// out of all of them (heap, AP trampoline, `mem` scenario).
    reserved: [Range; MAX_RESERVED],
    reserved_len: usize,
    /// The modules (`[start, end)`), e.g. an initrd.
    modules: [Range; MAX_MODULES],
    modules_len: usize,
}

impl fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootInfo")
            .field("start_info", &self.start_info)
            .field("cmdline", &self.cmdline())
            .field("memmap", &self.memmap())
            .field("rsdp", &self.rsdp)
            .finish()
    }
}

impl BootInfo {
    /// The whole kernel command line.
    pub fn cmdline(&self) -> &str {
        // Checked to be UTF-8 in `init`.
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The memory map as the VMM gave it.
    pub fn memmap(&self) -> &[MemRegion] {
        &self.memmap[..self.memmap_len]
    }

    /// The VMM's boot structures and modules in RAM (see the field).
    pub fn reserved(&self) -> &[Range] {
        &self.reserved[..self.reserved_len]
    }

    /// The first reserved range overlapping `[start, end)`.
    pub fn reserved_overlap(&self, start: u64, end: u64) -> Option<Range> {
        self.reserved()
            .iter()
            .copied()
            .find(|&(s, e)| s < end && start < e)
    }

    /// The modules the VMM loaded (`[start, end)`), e.g. an initrd.
    pub fn modules(&self) -> &[Range] {
        &self.modules[..self.modules_len]
    }

    fn reserve(&mut self, start: u64, end: u64) {
        if end > start {
            self.reserved[self.reserved_len] = (start, end);
            self.reserved_len += 1;
        }
    }

    /// The value of the last `key=value` word of the command line with this key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_ascii_whitespace()
            .rev()
            .filter_map(|word| word.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Reads, checks and copies the start_info the VMM passed in EBX.
pub fn init(start_info: u64) -> Result<&'static BootInfo, Fail> {
    if start_info == 0 || start_info & 3 != 0 {
        return Err(Fail::new(alloc::format!(
            "bad start_info address {start_info:#x} in EBX"
        )));
    }
    // SAFETY: the PVH boot protocol puts a struct hvm_start_info at this address, which is
    // below 4 GiB and therefore mapped; it is only read.
    let info = unsafe { core::ptr::read_volatile(start_info as *const HvmStartInfo) };
    if info.magic != HVM_START_MAGIC {
        return Err(Fail::new(alloc::format!(
            "start_info at {start_info:#x} has magic {:#x}, not {HVM_START_MAGIC:#x}",
            info.magic
        )));
    }

    let mut boot = BootInfo {
        start_info,
        start_info_version: info.version,
        rsdp: info.rsdp_paddr,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        memmap: [MemRegion::default(); MAX_MEMMAP],
        memmap_len: 0,
        reserved: [(0, 0); MAX_RESERVED],
        reserved_len: 0,
        modules: [(0, 0); MAX_MODULES],
        modules_len: 0,
    };
    let info_size = if info.version >= 1 { 56 } else { 40 };
    boot.reserve(start_info, start_info + info_size);

    if info.cmdline_paddr != 0 {
        let mut len = 0;
        while len < MAX_CMDLINE {
            // SAFETY: the command line is a NUL-terminated string the VMM placed in RAM
            // below 4 GiB (PVH passes 64-bit addresses but boots 32-bit code); only read.
            let b =
                unsafe { core::ptr::read_volatile((info.cmdline_paddr + len as u64) as *const u8) };
            if b == 0 {
                break;
            }
            boot.cmdline[len] = b;
            len += 1;
        }
        if len == MAX_CMDLINE {
            return Err(Fail::new(alloc::format!(
                "command line longer than {MAX_CMDLINE} bytes"
            )));
        }
        if core::str::from_utf8(&boot.cmdline[..len]).is_err() {
            return Err(Fail::new("command line is not UTF-8"));
        }
        boot.cmdline_len = len;
        boot.reserve(info.cmdline_paddr, info.cmdline_paddr + len as u64 + 1);
    }

    if info.version >= 1 && info.memmap_paddr != 0 {
        let entries = info.memmap_entries as usize;
        if entries > MAX_MEMMAP {
            return Err(Fail::new(alloc::format!(
                "memory map has {entries} entries, more than the {MAX_MEMMAP} supported"
            )));
        }
        for i in 0..entries {
            let addr = info.memmap_paddr + (i * size_of::<HvmMemmapEntry>()) as u64;
            // SAFETY: the VMM's memory map array, in RAM below 4 GiB; only read.
            let e = unsafe { core::ptr::read_volatile(addr as *const HvmMemmapEntry) };
            // Empty entries say nothing (QEMU's firmware passes one at the end).
            if e.size != 0 {
                boot.memmap[boot.memmap_len] = MemRegion {
                    addr: e.addr,
                    size: e.size,
                    kind: e.kind,
                };
                boot.memmap_len += 1;
            }
        }
        let bytes = (entries * size_of::<HvmMemmapEntry>()) as u64;
        boot.reserve(info.memmap_paddr, info.memmap_paddr + bytes);
    }
    if info.nr_modules != 0 && info.modlist_paddr != 0 {
        let count = info.nr_modules as usize;
        if count > MAX_MODULES {
            return Err(Fail::new(alloc::format!(
                "{count} boot modules, more than the {MAX_MODULES} supported"
            )));
        }
        let entry_size = size_of::<HvmModlistEntry>() as u64;
        boot.reserve(
            info.modlist_paddr,
            info.modlist_paddr + entry_size * count as u64,
        );
        for i in 0..count {
            let addr = info.modlist_paddr + entry_size * i as u64;
            // SAFETY: the VMM's module list, in RAM below 4 GiB; only read.
            let m = unsafe { core::ptr::read_volatile(addr as *const HvmModlistEntry) };
            let end = m.paddr.saturating_add(m.size);
            boot.modules[boot.modules_len] = (m.paddr, end);
            boot.modules_len += 1;
            boot.reserve(m.paddr, end);
        }
    }

    BOOT_INFO
        .set(boot)
        .map_err(|_| Fail::new("boot info parsed twice"))
}
