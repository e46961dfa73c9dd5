//! Linux's x86 boot protocol (Documentation/arch/x86/boot.rst): the bzImage
//! setup header, the "zero page" (`struct boot_params`) with its e820 map, and
//! the identity-mapped page tables for the 64-bit entry.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::memory::{MemoryLayout, RegionKind};

/// Address of `struct boot_params`.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry (below the page tables).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Address of the PML4; the PDPT and four page directories follow it.
pub const PML4_ADDR: u64 = 0x9000;
/// Offset of the setup header in a bzImage and in `boot_params`.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Bytes of a bzImage to read to have the whole setup header.
pub const SETUP_HEADER_END: usize = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();

/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot protocol 2.12 (Linux 3.8): the first with xloadflags and a 64-bit entry.
const MIN_VERSION: u16 = 0x020c;
/// xloadflags: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// loadflags: the protected-mode kernel loads at 1 MiB.
const LOADED_HIGH: u8 = 1 << 0;
/// type_of_loader: "undefined" boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// A bzImage's setup header.
#[derive(Clone)]
pub struct SetupHeader(setup_header);

impl SetupHeader {
    /// Reads the header from the first bytes of a file; `None` if it has no
    /// "HdrS" magic (not a bzImage).
    pub fn parse(head: &[u8]) -> Option<SetupHeader> {
        let bytes = head.get(SETUP_HEADER_OFFSET..SETUP_HEADER_END)?;
        // SAFETY: setup_header is plain old data (integers only, packed), so any
        // byte pattern is a valid value; `bytes` holds exactly its size and
        // read_unaligned copes with any alignment.
        let hdr: setup_header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        (hdr.header == HDRS_MAGIC).then_some(SetupHeader(hdr))
    }

    /// Checks what this monitor needs: a 64-bit kernel speaking boot protocol
    /// 2.12 or newer that loads high. A relocatable kernel runs where it is
    /// loaded (rounded up to `kernel_alignment`); a non-relocatable one moves
    /// itself to `pref_address`: the monitor loads both at 1 MiB and checks that
    /// memory from `pref_address` on holds `init_size`. The error says what is
    /// wrong.
    pub fn check(&self) -> Result<(), String> {
        let h = &self.0;
        let version = h.version;
        if version < MIN_VERSION {
            return Err(format!(
                "it speaks boot protocol {}.{:02}; 2.12 (Linux 3.8) or newer is needed",
                version >> 8,
                version & 0xff
            ));
        }
        if h.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(
                "it has no 64-bit entry point (XLF_KERNEL_64): not an x86_64 kernel".into(),
            );
        }
        if h.loadflags & LOADED_HIGH == 0 {
            return Err("it does not load at 1 MiB (LOADED_HIGH is clear)".into());
        }
        let align = h.kernel_alignment;
        if align < 4096 || !align.is_power_of_two() {
            return Err(format!(
                "its kernel_alignment {align:#x} is not a power of two >= 4 KiB"
            ));
        }
        if h.setup_sects > 64 {
            return Err(format!(
                "its setup is {} sectors long; at most 64 are plausible",
                h.setup_sects
            ));
        }
        Ok(())
    }

    /// Longest command line the kernel takes, without the NUL.
    pub fn cmdline_max(&self) -> usize {
        let size = self.0.cmdline_size;
        if size == 0 {
            255
        } else {
            (size as usize).min(super::boot::CMDLINE_MAX - 1)
        }
    }

    /// Where the kernel wants to run (it decompresses itself there).
    pub fn pref_address(&self) -> u64 {
        self.0.pref_address
    }

    /// Memory the kernel needs from its run address while it starts.
    pub fn init_size(&self) -> u32 {
        self.0.init_size
    }

    /// Highest address the initrd may end at.
    pub fn initrd_addr_max(&self) -> u32 {
        match self.0.initrd_addr_max {
            0 => 0x37ff_ffff,
            n => n,
        }
    }

    /// The header as handed back to the kernel in `boot_params`.
    pub fn for_boot(&self) -> setup_header {
        let mut h = self.0;
        h.type_of_loader = LOADER_UNDEFINED;
        h.code32_start = crate::memory::HIGH_MEMORY_START as u32;
        h
    }
}

/// The setup header for an uncompressed `vmlinux` entered at its 64-bit entry:
/// the fields the kernel reads from a boot loader.
pub fn vmlinux_header(cmdline_max: u32) -> setup_header {
    setup_header {
        boot_flag: 0xaa55,
        header: HDRS_MAGIC,
        version: MIN_VERSION,
        type_of_loader: LOADER_UNDEFINED,
        loadflags: LOADED_HIGH,
        kernel_alignment: 0x100_0000,
        cmdline_size: cmdline_max.saturating_sub(1),
        ..Default::default()
    }
}

/// The e820 map of `layout`.
pub fn e820_map(layout: &MemoryLayout) -> Vec<boot_e820_entry> {
    layout
        .memory_map()
        .into_iter()
        .map(|e| boot_e820_entry {
            addr: e.start,
            size: e.len,
            r#type: match e.kind {
                RegionKind::Ram => E820_RAM,
                RegionKind::Reserved => E820_RESERVED,
            },
        })
        .collect()
}

/// Writes `boot_params` (with `hdr`, the command line, the initrd, the RSDP
/// and the e820 map) and the page tables; returns the `boot_params` address.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    hdr: &setup_header,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<u64, GuestMemoryError> {
    let mut params = boot_params {
        hdr: *hdr,
        ..Default::default()
    };
    params.hdr.cmd_line_ptr = cmdline_addr as u32;
    params.ext_cmd_line_ptr = (cmdline_addr >> 32) as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    let map = e820_map(layout);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    // SAFETY: boot_params is plain old data (integers and arrays of them,
    // packed), so viewing it as bytes is sound; the slice lives no longer than
    // `params`.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&params as *const boot_params).cast::<u8>(),
            std::mem::size_of::<boot_params>(),
        )
    };
    mem.write_slice(bytes, GuestAddress(ZERO_PAGE_ADDR))?;
    write_page_tables(mem)?;
    Ok(ZERO_PAGE_ADDR)
}

/// Identity-maps the first 4 GiB with 2 MiB pages: PML4 at [`PML4_ADDR`],
/// then the PDPT, then four page directories.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let pdpt = PML4_ADDR + 0x1000;
    let pd = |i: u64| PML4_ADDR + 0x2000 + i * 0x1000;
    mem.write_obj(pdpt | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    let mut table = vec![0u8; 4 * 4096];
    for i in 0..4u64 {
        mem.write_obj(pd(i) | PRESENT_RW, GuestAddress(pdpt + 8 * i))?;
        for j in 0..512u64 {
            let entry = ((i * 512 + j) << 21) | PRESENT_RW | HUGE;
            let at = ((i * 512 + j) * 8) as usize;
            table[at..at + 8].copy_from_slice(&entry.to_le_bytes());
        }
    }
    mem.write_slice(&table, GuestAddress(pd(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIB;

    fn bz_head(edit: impl FnOnce(&mut setup_header)) -> Vec<u8> {
        let mut h = setup_header {
            setup_sects: 30,
            boot_flag: 0xaa55,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            relocatable_kernel: 1,
            kernel_alignment: 0x20_0000,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            ..Default::default()
        };
        edit(&mut h);
        let mut head = vec![0u8; SETUP_HEADER_END];
        // SAFETY: plain old data viewed as bytes, copied into a buffer of its size.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&h as *const setup_header).cast::<u8>(),
                std::mem::size_of::<setup_header>(),
            )
        };
        head[SETUP_HEADER_OFFSET..].copy_from_slice(bytes);
        head
    }

    #[test]
    fn accepts_a_modern_64_bit_bzimage() {
        let h = SetupHeader::parse(&bz_head(|_| {})).expect("has HdrS");
        h.check().expect("acceptable");
        let fixed = SetupHeader::parse(&bz_head(|h| h.relocatable_kernel = 0)).expect("HdrS");
        fixed
            .check()
            .expect("a non-relocatable kernel moves itself to pref_address");
        assert_eq!(h.cmdline_max(), 2047);
        assert_eq!(h.pref_address(), 0x100_0000);
        let b = h.for_boot();
        assert_eq!(b.type_of_loader, 0xff);
        assert_eq!({ b.code32_start }, 0x10_0000);
    }

    #[test]
    fn refuses_what_it_cannot_boot_and_says_why() {
        type Edit = fn(&mut setup_header);
        let cases: [(Edit, &str); 4] = [
            (|h| h.version = 0x020b, "boot protocol 2.11"),
            (|h| h.xloadflags = 0, "no 64-bit entry point"),
            (|h| h.kernel_alignment = 0x3000, "not a power of two"),
            (|h| h.loadflags = 0, "LOADED_HIGH"),
        ];
        for (edit, why) in cases {
            let h = SetupHeader::parse(&bz_head(edit)).expect("has HdrS");
            let e = h.check().expect_err("refused");
            assert!(e.contains(why), "{e}");
        }
        assert!(SetupHeader::parse(&bz_head(|h| h.header = 0)).is_none());
        assert!(
            SetupHeader::parse(&[0u8; 16]).is_none(),
            "short files are not bzImages"
        );
    }

    #[test]
    fn zero_page_carries_e820_cmdline_initrd_and_rsdp() {
        let layout = MemoryLayout::new(5 << 30, 40).expect("layout");
        let mem = MemoryLayout::new(64 * MIB, 40)
            .expect("small")
            .allocate()
            .expect("mmap");
        let addr = write_boot_params(
            &mem,
            &layout,
            &vmlinux_header(4096),
            0x2_0000,
            Some((0x300_0000, 0x1234)),
            Some(0xe_0000),
        )
        .expect("written");
        let mut raw = vec![0u8; std::mem::size_of::<boot_params>()];
        mem.read_slice(&mut raw, GuestAddress(addr)).expect("read");
        // SAFETY: plain old data read back from bytes of its exact size.
        let p: boot_params = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x300_0000, 0x1234)
        );
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries, 5);
        let last = p.e820_table[4];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (4 << 30, 2 << 30, E820_RAM)
        );
        assert_eq!({ p.e820_table[1].r#type }, E820_RESERVED);
        // Page tables: PML4 -> PDPT -> PD; 3 GiB + 2 MiB maps to itself.
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).expect("read");
        assert_eq!(pml4, PML4_ADDR + 0x1000 + 3);
        let pdpt3: u64 = mem
            .read_obj(GuestAddress(PML4_ADDR + 0x1000 + 24))
            .expect("read");
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 8))
            .expect("read");
        assert_eq!(pde, (3 << 30) + (2 << 20) + 0x83);
    }
}
