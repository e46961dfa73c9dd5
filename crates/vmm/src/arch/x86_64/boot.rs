//! Loading a kernel and describing the machine to it by the PVH boot protocol.
//!
//! Boot data in low guest memory (all below the kernel at 1 MiB):
//! ```text
//! 0x0500  boot GDT (regs::BOOT_GDT)
//! 0x6000  struct hvm_start_info
//! 0x6040  memory map (hvm_memmap_table_entry[], at most MAX_MEMMAP_ENTRIES)
//! 0x6400  module list (hvm_modlist_entry[]: the initrd)
//! 0x20000 kernel command line (NUL-terminated, at most CMDLINE_MAX bytes)
//! ```
//! The initrd goes at the top of RAM below the MMIO hole, page-aligned.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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

/// What the vCPUs need to start the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// 32-bit PVH entry point.
    pub entry: u64,
    /// Value for EBX: the `hvm_start_info` address.
    pub start_info: u64,
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
    #[error(
        "'{}' is a bzImage; this version of vireo-vmm boots ELF kernels by PVH only \
         (use the uncompressed vmlinux)",
        path.display()
    )]
    BzImageUnsupported { path: PathBuf },
    #[error("'{}' is an ELF file but not an x86_64 kernel vireo-vmm can load", path.display())]
    BadElf {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error(
        "'{}' has no PVH entry point (ELF note XEN_ELFNOTE_PHYS32_ENTRY); build the kernel \
         with CONFIG_PVH=y",
        path.display()
    )]
    NoPvhEntry { path: PathBuf },
    #[error("the kernel '{}' ({size} bytes) does not fit in {mem} MiB of guest memory", path.display(), mem = mem / (1 << 20))]
    KernelTooBig { path: PathBuf, size: u64, mem: u64 },
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
    #[error("the kernel command line is {len} bytes; at most {} fit", CMDLINE_MAX - 1)]
    CmdlineTooLong { len: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing boot data to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Loads the ELF kernel at `kernel`, the optional initrd and the command line,
/// and writes the PVH boot structures.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let path = || kernel.to_path_buf();
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let (mut file, size) = open_kernel(kernel)?;
    if size > layout.low_end().saturating_sub(HIGH_MEMORY_START) {
        return Err(BootError::KernelTooBig {
            path: path(),
            size,
            mem: layout.size(),
        });
    }
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEMORY_START))).map_err(
        |source| match source {
            linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage) => {
                BootError::KernelTooBig {
                    path: path(),
                    size,
                    mem: layout.size(),
                }
            }
            source => BootError::BadElf {
                path: path(),
                source,
            },
        },
    )?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => return Err(BootError::NoPvhEntry { path: path() }),
    };
    if loaded.kernel_end > layout.low_end() {
        return Err(BootError::KernelTooBig {
            path: path(),
            size,
            mem: layout.size(),
        });
    }

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        ..Default::default()
    };

    if let Some(initrd) = initrd {
        let data = std::fs::read(initrd).map_err(|source| BootError::ReadInitrd {
            path: initrd.to_path_buf(),
            source,
        })?;
        let len = data.len() as u64;
        let limit = layout.low_end();
        let too_big = || BootError::InitrdTooBig {
            path: initrd.to_path_buf(),
            size: len,
            limit,
        };
        let addr = limit.checked_sub(len).ok_or_else(too_big)? & !0xfff;
        if addr < loaded.kernel_end {
            return Err(too_big());
        }
        mem.write_slice(&data, GuestAddress(addr))
            .map_err(BootError::GuestMemory)?;
        let module = hvm_modlist_entry {
            paddr: addr,
            size: len,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_ADDR))
            .map_err(BootError::GuestMemory)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_ADDR;
    }

    let map: Vec<hvm_memmap_table_entry> = layout
        .memory_map()
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.start,
            size: e.len,
            type_: match e.kind {
                RegionKind::Ram => XEN_HVM_MEMMAP_TYPE_RAM,
                RegionKind::Reserved => XEN_HVM_MEMMAP_TYPE_RESERVED,
            },
            reserved: 0,
        })
        .collect();
    debug_assert!(map.len() <= MAX_MEMMAP_ENTRIES);
    for (i, e) in map.iter().enumerate() {
        let at = MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(*e, GuestAddress(at))
            .map_err(BootError::GuestMemory)?;
    }
    start_info.memmap_entries = map.len() as u32;

    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::GuestMemory)?;
    mem.write_obj(start_info, GuestAddress(START_INFO_ADDR))
        .map_err(BootError::GuestMemory)?;
    for (i, d) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(BootError::GuestMemory)?;
    }
    Ok(BootEntry {
        entry,
        start_info: START_INFO_ADDR,
    })
}

/// Checks that `kernel` can be opened and looks like a kernel this monitor
/// boots, without loading it.
pub fn probe_kernel(kernel: &Path) -> Result<(), BootError> {
    open_kernel(kernel).map(drop)
}

/// Opens the kernel and checks its format; returns the file and its size.
fn open_kernel(kernel: &Path) -> Result<(File, u64), BootError> {
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
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(|source| BootError::ReadKernel {
        path: path(),
        source,
    })?;
    if n < 4 || head[..4] != *b"\x7fELF" {
        if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
            return Err(BootError::BzImageUnsupported { path: path() });
        }
        return Err(BootError::NotAKernel { path: path() });
    }
    Ok((file, meta.len()))
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

    #[test]
    fn loads_the_test_guest_and_describes_memory() {
        let layout = MemoryLayout::new(64 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let initrd = tmp("initrd", &[0x5a; 10000]);
        let e = load(
            &m,
            &layout,
            vireo_test_guest::elf_path(),
            Some(&initrd),
            "scenario=hello x=1",
        )
        .expect("loads");
        assert_eq!(e.start_info, START_INFO_ADDR);
        assert!(
            e.entry >= HIGH_MEMORY_START && e.entry < 4 * MIB,
            "{:#x}",
            e.entry
        );
        let si: hvm_start_info = m.read_obj(GuestAddress(START_INFO_ADDR)).expect("read");
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.memmap_entries, 3);
        assert_eq!(si.nr_modules, 1);
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

    #[test]
    fn refuses_what_is_not_a_kernel() {
        let layout = MemoryLayout::new(16 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let text = tmp("text", b"hello, I am not a kernel");
        let e = load(&m, &layout, &text, None, "").expect_err("not a kernel");
        assert!(e.to_string().contains("is not a kernel"), "{e}");
        let empty = tmp("empty", b"");
        assert!(matches!(
            load(&m, &layout, &empty, None, ""),
            Err(BootError::NotAKernel { .. })
        ));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = tmp("bz", &bz);
        assert!(matches!(
            load(&m, &layout, &bz, None, ""),
            Err(BootError::BzImageUnsupported { .. })
        ));
        let mut elf = vec![0u8; 0x100];
        elf[..4].copy_from_slice(b"\x7fELF");
        let elf = tmp("elf", &elf);
        assert!(matches!(
            load(&m, &layout, &elf, None, ""),
            Err(BootError::BadElf { .. })
        ));
        let missing = Path::new("/nonexistent/vmlinux");
        let e = load(&m, &layout, missing, None, "").expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/vmlinux"));
        for p in [text, empty, bz, elf] {
            std::fs::remove_file(p).ok();
        }
    }

    #[test]
    fn refuses_bad_command_lines_and_huge_initrds() {
        let layout = MemoryLayout::new(8 * MIB, 40).expect("layout");
        let m = mem(&layout);
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            load(&m, &layout, vireo_test_guest::elf_path(), None, &long),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            load(&m, &layout, vireo_test_guest::elf_path(), None, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
        let big = tmp("bigrd", &vec![1u8; 7 * MIB as usize]);
        let e =
            load(&m, &layout, vireo_test_guest::elf_path(), Some(&big), "").expect_err("too big");
        assert!(matches!(e, BootError::InitrdTooBig { .. }), "{e}");
        std::fs::remove_file(big).ok();
    }
}
