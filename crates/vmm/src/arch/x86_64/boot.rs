//! Loading a kernel and describing the machine to it.
//!
//! Three ways in, chosen by what the kernel file is:
//! - an ELF with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY): the PVH boot protocol,
//!   32-bit entry with `hvm_start_info` (the test guest, `vmlinux` with CONFIG_PVH);
//! - another x86_64 ELF (`vmlinux`): Linux's 64-bit boot protocol at `e_entry`;
//! - a bzImage: its setup header is checked (see [`super::linux`]) and the
//!   protected-mode kernel is entered by the 64-bit boot protocol.
//!
//! Boot data in low guest memory (all below the kernel at 1 MiB):
//! ```text
//! 0x0500  boot GDT (regs::BOOT_GDT)
//! 0x6000  struct hvm_start_info (PVH)
//! 0x6040  memory map (hvm_memmap_table_entry[], at most MAX_MEMMAP_ENTRIES) (PVH)
//! 0x6400  module list (hvm_modlist_entry[]: the initrd) (PVH)
//! 0x7000  struct boot_params, the "zero page" (64-bit Linux)
//! 0x9000  identity-mapped page tables for the first 4 GiB (64-bit Linux)
//! 0x20000 kernel command line (NUL-terminated, at most CMDLINE_MAX bytes)
//! 0xe0000 ACPI tables (arch::x86_64::acpi), in the reserved legacy window
//! ```
//! The initrd goes at the top of RAM below the MMIO hole (and below the
//! kernel's `initrd_addr_max`), page-aligned.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::linux::{self, SetupHeader};
use super::regs::{BOOT_GDT, BOOT_GDT_ADDR};
use crate::memory::{MemoryLayout, RegionKind, HIGH_MEMORY_START};

/// Address of `hvm_start_info`.
pub const START_INFO_ADDR: u64 = 0x6000;
/// Address of the memory map.
pub const MEMMAP_ADDR: u64 = 0x6040;
/// Room for memory-map entries.
pub const MAX_MEMMAP_ENTRIES: usize = 32;
/// Address of the module list.
pub const MODLIST_ADDR: u64 = 0x6400;
/// Address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line accepted, including its terminating NUL.
pub const CMDLINE_MAX: usize = 4096;

/// How the vCPUs enter the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode at `entry`, EBX = `start_info`.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: long mode at `entry`, RSI = `boot_params`.
    Linux64 { entry: u64, boot_params: u64 },
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSource<'a> {
    /// Kernel image: ELF (PVH or 64-bit) or bzImage.
    pub kernel: &'a Path,
    /// Optional initial ramdisk.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Address of the ACPI RSDP, if the machine has ACPI tables.
    pub rsdp: Option<u64>,
    /// Parameters appended to the command line when the kernel is Linux (a
    /// bzImage, or an ELF with a "Linux" note): the CPU model's quirks.
    pub linux_extra: Option<&'a str>,
}

/// Errors loading the kernel, initrd or boot data.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open the kernel '{}'", path.display())]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the kernel '{}'", path.display())]
    ReadKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{}' is not a kernel: it is neither an ELF file nor a bzImage", path.display())]
    NotAKernel { path: PathBuf },
    #[error("the bzImage '{}' cannot be booted: {reason}", path.display())]
    BadBzImage { path: PathBuf, reason: String },
    #[error("'{}' is an ELF file but not an x86_64 kernel vireo-vmm can load", path.display())]
    BadElf {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error(
        "the kernel '{}' needs {} MiB of memory from 1 MiB up, but the guest has {} MiB below the MMIO hole",
        path.display(), need.div_ceil(1 << 20), have >> 20
    )]
    KernelTooBig { path: PathBuf, need: u64, have: u64 },
    #[error("cannot read the initrd '{}'", path.display())]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the initrd '{}' ({size} bytes) does not fit in guest memory between the kernel \
         and {limit:#x}",
        path.display()
    )]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// The kinds of kernel image.
enum Image {
    Elf,
    BzImage(Box<SetupHeader>),
}

/// Loads the kernel, the optional initrd and the command line, and writes the
/// boot structures of the protocol the kernel asks for.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    src: &BootSource<'_>,
) -> Result<BootEntry, BootError> {
    let path = || src.kernel.to_path_buf();
    if src.cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let (mut file, size, image) = open_kernel(src.kernel)?;
    let is_linux = match &image {
        Image::BzImage(_) => true,
        Image::Elf => elf_has_note(&mut file, b"Linux").unwrap_or(false),
    };
    let cmdline = match (src.linux_extra, is_linux) {
        (Some(extra), true) if src.cmdline.is_empty() => extra.to_string(),
        (Some(extra), true) => format!("{} {extra}", src.cmdline),
        _ => src.cmdline.to_string(),
    };
    let src = &BootSource {
        cmdline: &cmdline,
        ..*src
    };
    if src.cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: src.cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    let room = layout.low_end().saturating_sub(HIGH_MEMORY_START);
    if size > room {
        return Err(BootError::KernelTooBig {
            path: path(),
            need: size,
            have: layout.low_end(),
        });
    }
    let too_big = |need| BootError::KernelTooBig {
        path: path(),
        need,
        have: layout.low_end(),
    };
    match image {
        Image::Elf => {
            let highmem = Some(GuestAddress(HIGH_MEMORY_START));
            let loaded =
                Elf::load(mem, None, &mut file, highmem).map_err(|source| match source {
                    linux_loader::loader::Error::Elf(
                        linux_loader::loader::elf::Error::ReadKernelImage,
                    ) => too_big(size),
                    source => BootError::BadElf {
                        path: path(),
                        source,
                    },
                })?;
            if loaded.kernel_end > layout.low_end() {
                return Err(too_big(loaded.kernel_end - HIGH_MEMORY_START));
            }
            let initrd = load_initrd(mem, src.initrd, loaded.kernel_end, layout.low_end())?;
            write_cmdline(mem, src.cmdline)?;
            write_gdt(mem)?;
            match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => {
                    write_pvh(mem, layout, initrd, src.rsdp)?;
                    Ok(BootEntry::Pvh {
                        entry: entry.0,
                        start_info: START_INFO_ADDR,
                    })
                }
                _ => {
                    let hdr = linux::vmlinux_header(CMDLINE_MAX as u32);
                    let params =
                        linux::write_boot_params(mem, layout, &hdr, CMDLINE_ADDR, initrd, src.rsdp)
                            .map_err(BootError::GuestMemory)?;
                    Ok(BootEntry::Linux64 {
                        entry: loaded.kernel_load.0,
                        boot_params: params,
                    })
                }
            }
        }
        Image::BzImage(hdr) => {
            let bad = |reason: String| BootError::BadBzImage {
                path: path(),
                reason,
            };
            let max = hdr.cmdline_max();
            if src.cmdline.len() > max {
                return Err(BootError::CmdlineTooLong {
                    len: src.cmdline.len(),
                    max,
                });
            }
            // The kernel decompresses itself to its preferred address (or the
            // load address, if higher) and needs init_size bytes from there.
            let need_end = hdr.pref_address().max(HIGH_MEMORY_START) + u64::from(hdr.init_size());
            if need_end > layout.low_end() {
                return Err(too_big(need_end - HIGH_MEMORY_START));
            }
            let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEMORY_START)))
                .map_err(|e| bad(format!("loading it failed: {e}")))?;
            let kernel_end = loaded.kernel_end.max(need_end);
            let limit = layout.low_end().min(u64::from(hdr.initrd_addr_max()) + 1);
            let initrd = load_initrd(mem, src.initrd, kernel_end, limit)?;
            write_cmdline(mem, src.cmdline)?;
            write_gdt(mem)?;
            let params = linux::write_boot_params(
                mem,
                layout,
                &hdr.for_boot(),
                CMDLINE_ADDR,
                initrd,
                src.rsdp,
            )
            .map_err(BootError::GuestMemory)?;
            Ok(BootEntry::Linux64 {
                // The 64-bit entry point is 0x200 past the protected-mode kernel's start.
                entry: loaded.kernel_load.0 + 0x200,
                boot_params: params,
            })
        }
    }
}

/// Places the initrd at the top of `[bottom, limit)`, page-aligned.
/// Returns its (address, size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: Option<&Path>,
    bottom: u64,
    limit: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    let Some(initrd) = initrd else {
        return Ok(None);
    };
    let data = std::fs::read(initrd).map_err(|source| BootError::ReadInitrd {
        path: initrd.to_path_buf(),
        source,
    })?;
    let len = data.len() as u64;
    let too_big = || BootError::InitrdTooBig {
        path: initrd.to_path_buf(),
        size: len,
        limit,
    };
    let addr = limit.checked_sub(len).ok_or_else(too_big)? & !0xfff;
    if addr < bottom {
        return Err(too_big());
    }
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(BootError::GuestMemory)?;
    Ok(Some((addr, len)))
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::GuestMemory)
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, d) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(BootError::GuestMemory)?;
    }
    Ok(())
}

/// Writes `hvm_start_info`, the memory map and the module list.
fn write_pvh(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_ADDR))
            .map_err(BootError::GuestMemory)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_ADDR;
    }
    let map = layout.memory_map();
    debug_assert!(map.len() <= MAX_MEMMAP_ENTRIES);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.start,
            size: e.len,
            type_: match e.kind {
                RegionKind::Ram => XEN_HVM_MEMMAP_TYPE_RAM,
                RegionKind::Reserved => XEN_HVM_MEMMAP_TYPE_RESERVED,
            },
            reserved: 0,
        };
        let at = MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(BootError::GuestMemory)?;
    }
    start_info.memmap_entries = map.len() as u32;
    mem.write_obj(start_info, GuestAddress(START_INFO_ADDR))
        .map_err(BootError::GuestMemory)
}

/// Checks that `kernel` can be opened and looks like a kernel this monitor
/// boots, without loading it.
pub fn probe_kernel(kernel: &Path) -> Result<(), BootError> {
    open_kernel(kernel).map(drop)
}

/// Opens the kernel and checks its format; returns the file, its size and kind.
fn open_kernel(kernel: &Path) -> Result<(File, u64, Image), BootError> {
    let path = || kernel.to_path_buf();
    let mut file = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: path(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| BootError::ReadKernel {
        path: path(),
        source,
    })?;
    if meta.is_dir() {
        return Err(BootError::NotAKernel { path: path() });
    }
    let mut head = vec![0u8; linux::SETUP_HEADER_END];
    let n = read_up_to(&mut file, &mut head).map_err(|source| BootError::ReadKernel {
        path: path(),
        source,
    })?;
    head.truncate(n);
    if head.starts_with(b"\x7fELF") {
        return Ok((file, meta.len(), Image::Elf));
    }
    match SetupHeader::parse(&head) {
        None => Err(BootError::NotAKernel { path: path() }),
        Some(hdr) => {
            hdr.check().map_err(|reason| BootError::BadBzImage {
                path: path(),
                reason,
            })?;
            Ok((file, meta.len(), Image::BzImage(Box::new(hdr))))
        }
    }
}

/// Whether an ELF file carries a note whose owner is `owner` (Linux's vmlinux
/// has "Linux" notes). Reads only the program headers and note segments, each
/// bounded, so a hostile file cannot make it read much.
fn elf_has_note(f: &mut File, owner: &[u8]) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    const PT_NOTE: u32 = 4;
    const MAX_NOTES: u64 = 64 << 10;
    let mut ehdr = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    if read_up_to(f, &mut ehdr)? < 64 || ehdr[4] != 2 {
        return Ok(false);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56)).min(64);
    if phentsize < 56 {
        return Ok(false);
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff.saturating_add(i * phentsize)))?;
        if read_up_to(f, &mut ph)? < 56 || u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(MAX_NOTES));
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset))?;
        let n = read_up_to(f, &mut notes)?;
        let notes = &notes[..n];
        let mut at = 0usize;
        while at + 12 <= notes.len() {
            let namesz = u32_at(notes, at) as usize;
            let descsz = u32_at(notes, at + 4) as usize;
            let name = notes.get(at + 12..at + 12 + namesz).unwrap_or(&[]);
            if name.strip_suffix(b"\0").unwrap_or(name) == owner {
                return Ok(true);
            }
            at = at
                .saturating_add(12)
                .saturating_add(namesz.next_multiple_of(4))
                .saturating_add(descsz.next_multiple_of(4));
        }
    }
    Ok(false)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIB;

    fn mem(layout: &MemoryLayout) -> GuestMemoryMmap {
        layout.allocate().expect("mmap")
    }

    fn tmp(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vireo-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, data).expect("write temp");
        p
    }

    fn src<'a>(kernel: &'a Path, initrd: Option<&'a Path>, cmdline: &'a str) -> BootSource<'a> {
        BootSource {
            kernel,
            initrd,
            cmdline,
            rsdp: Some(0xe_0000),
            // Not Linux kernels: nothing may be appended.
            linux_extra: Some("noxsave"),
        }
    }

    #[test]
    fn loads_the_test_guest_by_pvh_and_describes_memory() {
        let layout = MemoryLayout::new(64 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let initrd = tmp("initrd", &[0x5a; 10000]);
        let guest = vireo_test_guest::elf_path();
        let e = load(
            &m,
            &layout,
            &src(guest, Some(&initrd), "scenario=hello x=1"),
        )
        .expect("loads");
        let BootEntry::Pvh { entry, start_info } = e else {
            panic!("PVH expected, got {e:?}")
        };
        assert_eq!(start_info, START_INFO_ADDR);
        assert!((HIGH_MEMORY_START..4 * MIB).contains(&entry), "{entry:#x}");
        let si: hvm_start_info = m.read_obj(GuestAddress(START_INFO_ADDR)).expect("read");
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.memmap_entries, 4, "RAM, legacy window, RAM, ECAM");
        assert_eq!(si.nr_modules, 1);
        assert_eq!(si.rsdp_paddr, 0xe_0000);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).expect("read");
        assert_eq!(module.size, 10000);
        assert_eq!(module.paddr % 4096, 0);
        assert!(module.paddr + module.size <= 64 * MIB);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(module.paddr))
            .expect("read");
        assert_eq!(b, [0x5a; 4]);
        let mut line = [0u8; 19];
        m.read_slice(&mut line, GuestAddress(CMDLINE_ADDR))
            .expect("read");
        assert_eq!(&line, b"scenario=hello x=1\0");
        let last: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(MEMMAP_ADDR + 2 * 24))
            .expect("read");
        assert_eq!((last.addr, last.addr + last.size), (MIB, 64 * MIB));
        std::fs::remove_file(initrd).ok();
    }

    /// A minimal x86_64 ELF with one PT_LOAD at 1 MiB and no notes.
    fn plain_elf() -> Vec<u8> {
        let mut f = vec![0u8; 0x1000 + 16];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86_64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        f[ph + 16..ph + 24].copy_from_slice(&0x100_0000u64.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&16u64.to_le_bytes());
        f
    }

    #[test]
    fn elf_without_pvh_note_boots_by_the_64_bit_protocol() {
        let layout = MemoryLayout::new(64 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let k = tmp("vmlinux", &plain_elf());
        let e = load(&m, &layout, &src(&k, None, "console=ttyS0")).expect("loads");
        assert_eq!(
            e,
            BootEntry::Linux64 {
                entry: 0x100_0000,
                boot_params: linux::ZERO_PAGE_ADDR
            }
        );
        let magic: u32 = m
            .read_obj(GuestAddress(linux::ZERO_PAGE_ADDR + 0x202))
            .expect("read");
        assert_eq!(magic, 0x5372_6448, "HdrS in the zero page");
        let cmd_line_ptr: u32 = m
            .read_obj(GuestAddress(linux::ZERO_PAGE_ADDR + 0x228))
            .expect("read");
        assert_eq!(u64::from(cmd_line_ptr), CMDLINE_ADDR);
        std::fs::remove_file(k).ok();
    }

    #[test]
    fn refuses_what_is_not_a_kernel() {
        let layout = MemoryLayout::new(16 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let text = tmp("text", b"hello, I am not a kernel");
        let e = load(&m, &layout, &src(&text, None, "")).expect_err("not a kernel");
        assert!(e.to_string().contains("is not a kernel"), "{e}");
        let empty = tmp("empty", b"");
        assert!(matches!(
            load(&m, &layout, &src(&empty, None, "")),
            Err(BootError::NotAKernel { .. })
        ));
        // "HdrS" but an ancient, 32-bit setup header.
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        let bz = tmp("bz", &bz);
        let e = load(&m, &layout, &src(&bz, None, "")).expect_err("too old");
        assert!(e.to_string().contains("boot protocol 2.04"), "{e}");
        let mut elf = vec![0u8; 0x100];
        elf[..4].copy_from_slice(b"\x7fELF");
        let elf = tmp("elf", &elf);
        assert!(matches!(
            load(&m, &layout, &src(&elf, None, "")),
            Err(BootError::BadElf { .. })
        ));
        let missing = Path::new("/nonexistent/vmlinux");
        let e = load(&m, &layout, &src(missing, None, "")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/vmlinux"));
        for p in [text, empty, bz, elf] {
            std::fs::remove_file(p).ok();
        }
    }

    #[test]
    fn refuses_bad_command_lines_and_huge_initrds() {
        let layout = MemoryLayout::new(8 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let guest = vireo_test_guest::elf_path();
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            load(&m, &layout, &src(guest, None, &long)),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            load(&m, &layout, &src(guest, None, "a\0b")),
            Err(BootError::CmdlineNul)
        ));
        let big = tmp("bigrd", &vec![1u8; 7 * MIB as usize]);
        let e = load(&m, &layout, &src(guest, Some(&big), "")).expect_err("too big");
        assert!(matches!(e, BootError::InitrdTooBig { .. }), "{e}");
        std::fs::remove_file(big).ok();
    }
}
