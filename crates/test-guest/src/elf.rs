//! A small, strict reader for the facts tests need about the guest ELF: header, loadable
//! segments and the PVH entry note. Not a general ELF parser.

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Why a file is not a PVH-bootable x86_64 executable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("file too short ({0} bytes) for an ELF header")]
    TooShort(usize),
    #[error("no ELF magic")]
    NoMagic,
    #[error("not a little-endian ELF64 file (class {class}, data {data})")]
    NotElf64Le { class: u8, data: u8 },
    #[error("ELF type {0}, expected ET_EXEC (2)")]
    NotExec(u16),
    #[error("machine {0}, expected EM_X86_64 (62)")]
    NotX86_64(u16),
    #[error("program header size {0}, expected 56")]
    BadPhentsize(u16),
    #[error("{what} at offset {offset:#x} size {size:#x} is outside the {len:#x}-byte file")]
    OutOfBounds {
        what: &'static str,
        offset: u64,
        size: u64,
        len: usize,
    },
    #[error("PT_LOAD at {paddr:#x} has file size {filesz:#x} above its memory size {memsz:#x}")]
    FileLargerThanMemory { paddr: u64, filesz: u64, memsz: u64 },
    #[error("no PT_LOAD segment")]
    NoLoad,
    #[error("no Xen PHYS32_ENTRY note (PVH entry) in any PT_NOTE")]
    NoPvhNote,
    #[error("PVH entry note has a {0}-byte descriptor, expected 4 or 8 bytes below 4 GiB")]
    BadPvhNote(usize),
}

/// One PT_LOAD program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub flags: u32,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_entry`.
    pub entry: u64,
    /// The 32-bit PVH entry point (Xen ELF note type 18).
    pub pvh_entry: u32,
    /// Lowest physical address loaded.
    pub load_start: u64,
    /// End of the highest loaded segment, memory size included.
    pub load_end: u64,
    /// The PT_LOAD segments, in file order.
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// `bytes[offset..offset + size]`, or the error saying `what` does not fit.
fn slice<'a>(
    bytes: &'a [u8],
    what: &'static str,
    offset: u64,
    size: u64,
) -> Result<&'a [u8], ElfError> {
    let oob = || ElfError::OutOfBounds {
        what,
        offset,
        size,
        len: bytes.len(),
    };
    let start = usize::try_from(offset).map_err(|_| oob())?;
    let end = start
        .checked_add(usize::try_from(size).map_err(|_| oob())?)
        .ok_or_else(oob)?;
    bytes.get(start..end).ok_or_else(oob)
}

/// Finds the PVH entry in a PT_NOTE segment's contents.
fn pvh_entry_in(notes: &[u8]) -> Result<Option<u32>, ElfError> {
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at + namesz.next_multiple_of(4);
        let next = desc_at + descsz.next_multiple_of(4);
        if next > notes.len() {
            break;
        }
        if &notes[name_at..name_at + namesz] == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            let entry = match descsz {
                4 => u64::from(u32_at(notes, desc_at)),
                8 => u64_at(notes, desc_at),
                _ => return Err(ElfError::BadPvhNote(descsz)),
            };
            return u32::try_from(entry)
                .map(Some)
                .map_err(|_| ElfError::BadPvhNote(descsz));
        }
        at = next;
    }
    Ok(None)
}

/// Checks that `bytes` is a little-endian ELF64 x86_64 executable with loadable segments
/// inside the file and a PVH entry note, and returns what a loader needs to know.
pub fn inspect(bytes: &[u8]) -> Result<ElfInfo, ElfError> {
    if bytes.len() < EHDR_SIZE {
        return Err(ElfError::TooShort(bytes.len()));
    }
    if &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NoMagic);
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::NotElf64Le {
            class: bytes[4],
            data: bytes[5],
        });
    }
    let e_type = u16_at(bytes, 16);
    if e_type != ET_EXEC {
        return Err(ElfError::NotExec(e_type));
    }
    let machine = u16_at(bytes, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::NotX86_64(machine));
    }
    let entry = u64_at(bytes, 24);
    let phoff = u64_at(bytes, 32);
    let phentsize = u16_at(bytes, 54);
    let phnum = u16_at(bytes, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::BadPhentsize(phentsize));
    }
    let phdrs = slice(
        bytes,
        "program headers",
        phoff,
        u64::from(phnum) * PHDR_SIZE as u64,
    )?;

    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for ph in phdrs.chunks_exact(PHDR_SIZE) {
        let kind = u32_at(ph, 0);
        let seg = Segment {
            flags: u32_at(ph, 4),
            offset: u64_at(ph, 8),
            vaddr: u64_at(ph, 16),
            paddr: u64_at(ph, 24),
            filesz: u64_at(ph, 32),
            memsz: u64_at(ph, 40),
        };
        match kind {
            PT_LOAD => {
                slice(bytes, "PT_LOAD contents", seg.offset, seg.filesz)?;
                if seg.filesz > seg.memsz {
                    return Err(ElfError::FileLargerThanMemory {
                        paddr: seg.paddr,
                        filesz: seg.filesz,
                        memsz: seg.memsz,
                    });
                }
                segments.push(seg);
            }
            PT_NOTE => {
                let notes = slice(bytes, "PT_NOTE contents", seg.offset, seg.filesz)?;
                if pvh_entry.is_none() {
                    pvh_entry = pvh_entry_in(notes)?;
                }
            }
            _ => {}
        }
    }
    let load_start = segments
        .iter()
        .map(|s| s.paddr)
        .min()
        .ok_or(ElfError::NoLoad)?;
    let load_end = segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .ok_or(ElfError::NoLoad)?;
    let pvh_entry = pvh_entry.ok_or(ElfError::NoPvhNote)?;
    Ok(ElfInfo {
        entry,
        pvh_entry,
        load_start,
        load_end,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF: header, one PT_LOAD and one PT_NOTE with the given note.
    fn tiny_elf(e_type: u16, note: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_SIZE + 2 * PHDR_SIZE];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let note_off = b.len() as u64;
        let load = EHDR_SIZE;
        b[load..load + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        b[load + 24..load + 32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        b[load + 40..load + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        let ph = EHDR_SIZE + PHDR_SIZE;
        b[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&note_off.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        b.extend_from_slice(note);
        b
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn finds_the_pvh_note_after_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x10_2000u32.to_le_bytes(),
        ));
        let info = inspect(&tiny_elf(ET_EXEC, &notes)).expect("valid");
        assert_eq!(info.pvh_entry, 0x10_2000);
        assert_eq!(info.load_start, 0x10_0000);
        assert_eq!(info.load_end, 0x10_1000);
    }

    #[test]
    fn rejects_what_a_pvh_loader_cannot_boot() {
        let good = note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x10_2000u32.to_le_bytes(),
        );
        assert_eq!(inspect(&tiny_elf(3, &good)), Err(ElfError::NotExec(3)));
        let other_type = note(b"Xen\0", 1, &0x10_2000u32.to_le_bytes());
        assert_eq!(
            inspect(&tiny_elf(ET_EXEC, &other_type)),
            Err(ElfError::NoPvhNote)
        );
        let high = note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &(1u64 << 32).to_le_bytes(),
        );
        assert_eq!(
            inspect(&tiny_elf(ET_EXEC, &high)),
            Err(ElfError::BadPvhNote(8))
        );
        assert_eq!(inspect(&[0u8; 10]), Err(ElfError::TooShort(10)));
        let mut truncated = tiny_elf(ET_EXEC, &good);
        truncated.truncate(EHDR_SIZE + PHDR_SIZE);
        assert!(matches!(
            inspect(&truncated),
            Err(ElfError::OutOfBounds { .. })
        ));
    }
}
