//! Shared pieces of Vireo's fuzz targets: guest memory and a split virtqueue
//! laid out from the fuzz input, a mock transport interrupt, and a reference
//! model of the descriptor-chain walk to check `parse_chain` against.
//!
//! Every target reads the start of its input the same way ([`FuzzQueue::new`]):
//!
//! ```text
//! byte  0    queue size: 1 << (b % 9), so 1 to 256 entries
//! byte  1    bit 0: VIRTIO_RING_F_EVENT_IDX; bits 1-2: memory shape (see
//!            `guest_memory`); bits 3-7: left to the target
//! bytes 2-3  descriptor table address / 16 (little endian)
//! bytes 4-5  avail ring address / 2
//! bytes 6-7  used ring address / 4
//! byte  8    left to the target
//! bytes 9-   guest memory image, copied to guest-physical address 0 (the
//!            descriptor table, the rings, indirect tables, request headers
//!            and data all come from here; memory past it is zero)
//! ```
//!
//! `gen_seeds` (src/bin/gen_seeds.rs) writes well-formed inputs in this
//! format to corpus/.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vireo_devices::virtio::queue::{queue_in_memory, Chain, ChainError, GuestBuffer};
use vireo_devices::virtio::{GuestMemoryMmap, Queue, VirtioInterrupt, VirtioInterruptType};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes of the input header before the memory image.
pub const HEADER_LEN: usize = 9;
/// Largest queue the fuzzed device offers.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// End of guest memory (every shape ends here).
pub const MEM_END: u64 = 0x5_0000;
/// End of the first region (the image is copied into it).
pub const LOW_END: u64 = 0x4_0000;

/// VIRTQ_DESC_F_NEXT.
pub const F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE.
pub const F_WRITE: u16 = 2;
/// VIRTQ_DESC_F_INDIRECT.
pub const F_INDIRECT: u16 = 4;

/// Guest memory of shape `shape` (320 KiB at most): 0 and 3 one region
/// `[0, MEM_END)`; 1 two regions with a 32 KiB hole at `LOW_END`, as the
/// monitor lays out RAM around the MMIO hole; 2 two adjacent regions meeting
/// at `LOW_END` (separate host mappings, so a buffer across the seam is in
/// guest memory but not one host slice).
pub fn guest_memory(shape: u8) -> GuestMemoryMmap {
    let low = (GuestAddress(0), LOW_END as usize);
    let ranges: Vec<(GuestAddress, usize)> = match shape & 3 {
        1 => vec![low, (GuestAddress(LOW_END + 0x8000), 0x8000)],
        2 => vec![low, (GuestAddress(LOW_END), (MEM_END - LOW_END) as usize)],
        _ => vec![(GuestAddress(0), MEM_END as usize)],
    };
    GuestMemoryMmap::from_ranges(&ranges).expect("a few hundred KiB of anonymous memory")
}

/// A split virtqueue as a driver set it up, from the fuzz input.
pub struct FuzzQueue {
    /// Guest memory with the input's image at 0.
    pub mem: GuestMemoryMmap,
    /// Queue 0, ready, as the transport would hand it to `activate`.
    pub queue: Queue,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Byte 1 of the header, bits 3-7 (shifted down).
    pub flags: u8,
    /// Byte 8 of the header.
    pub extra: u8,
}

impl FuzzQueue {
    /// Lays out guest memory and queue 0 from `data`. `None` when the input
    /// is too short or the rings are not where activation accepts them
    /// (misaligned, outside memory, avail ring at 0): a device never sees
    /// such a queue.
    pub fn new(data: &[u8]) -> Option<FuzzQueue> {
        let (header, image) = data.split_at_checked(HEADER_LEN)?;
        let size = 1u16 << (header[0] % 9);
        let u16_at = |i: usize| u64::from(u16::from_le_bytes([header[i], header[i + 1]]));
        let (desc, avail, used) = (u16_at(2) * 16, u16_at(4) * 2, u16_at(6) * 4);
        let mem = guest_memory(header[1] >> 1);
        let image = &image[..image.len().min(LOW_END as usize)];
        mem.write_slice(image, GuestAddress(0))
            .expect("the image fits the first region");

        let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("a valid maximum size");
        queue
            .try_set_size(size)
            .expect("a power of two up to the max");
        queue
            .try_set_desc_table_address(GuestAddress(desc))
            .expect("16-byte aligned");
        queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .expect("2-byte aligned");
        queue
            .try_set_used_ring_address(GuestAddress(used))
            .expect("4-byte aligned");
        queue.set_event_idx(header[1] & 1 != 0);
        queue.set_ready(true);
        if !queue_in_memory(&queue, &mem) {
            return None;
        }
        Some(FuzzQueue {
            mem,
            queue,
            size,
            desc,
            avail,
            used,
            event_idx: header[1] & 1 != 0,
            flags: header[1] >> 3,
            extra: header[8],
        })
    }

    /// The avail index as the driver last published it.
    pub fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.avail + 2))
            .expect("the avail ring is in memory")
    }

    /// Publishes avail index `idx`.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .expect("the avail ring is in memory");
    }

    /// The head index in avail ring slot `next_avail % size`.
    pub fn avail_head(&self, next_avail: u16) -> u16 {
        let slot = self.avail + 4 + 2 * u64::from(next_avail % self.size);
        self.mem
            .read_obj(GuestAddress(slot))
            .expect("the avail ring is in memory")
    }

    /// The used index the device last published.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("the used ring is in memory")
    }
}

/// What the device's chain walk should make of the chain at `head`: a
/// reference model of `virtio-queue`'s split-ring walk (direct descriptors,
/// one level of indirect table, the 4 GiB total) followed by the checks of
/// `vireo_devices::virtio::queue::parse_chain`, written out again from the
/// virtio 1.2 spec (section 2.7.5) so that the two can be compared.
///
/// First, as the spec requires (2.7.5.3.1), a descriptor of the direct
/// part with both INDIRECT and NEXT is refused, wherever it is in the chain
/// (the device checks the direct links before it walks). Then the walk,
/// with `virtio-queue`'s rules reproduced on purpose: a descriptor with
/// INDIRECT switches to its table for good, also when it is not the head;
/// an indirect table's length must be a multiple of 16; the chain's length
/// limit is the table's size, counted in descriptors; anything unreadable
/// ends the walk.
pub fn expected_chain(
    mem: &GuestMemoryMmap,
    desc_table: u64,
    queue_size: u16,
    head: u16,
) -> Result<Chain, ChainError> {
    // The direct links, at most `queue_size` descriptors.
    let mut index = head;
    for _ in 0..queue_size {
        let Some((_, _, flags, next)) = read_desc(mem, desc_table, queue_size, index) else {
            break;
        };
        if flags & F_INDIRECT != 0 && flags & F_NEXT != 0 {
            return Err(ChainError::IndirectWithNext { head });
        }
        if flags & (F_INDIRECT | F_NEXT) != F_NEXT {
            break;
        }
        index = next;
    }

    let mut out = Chain {
        head,
        ..Chain::default()
    };
    let (mut table, mut n, mut index, mut ttl) = (desc_table, queue_size, head, queue_size);
    let mut indirect = false;
    let mut total = 0u32;
    let mut unfinished = true;
    loop {
        if ttl == 0 || index >= n {
            break;
        }
        let Some((addr, len, flags, next)) = read_desc(mem, table, n, index) else {
            break;
        };
        if flags & F_INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            table = addr;
            n = (len / 16) as u16;
            index = 0;
            ttl = n;
            indirect = true;
            continue;
        }
        let Some(t) = total.checked_add(len) else {
            break;
        };
        total = t;
        unfinished = flags & F_NEXT != 0;
        if unfinished {
            index = next;
            ttl -= 1;
        } else {
            ttl = 0;
        }
        if len == 0 {
            continue;
        }
        let writable = flags & F_WRITE != 0;
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(GuestAddress(addr), len as usize, access) {
            return Err(ChainError::OutsideMemory { addr, len });
        }
        let buf = GuestBuffer {
            addr: GuestAddress(addr),
            len,
        };
        if writable {
            out.writable.push(buf);
        } else if !out.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            out.readable.push(buf);
        }
    }
    if unfinished {
        return Err(ChainError::Broken { head });
    }
    Ok(out)
}

/// Descriptor `index` of the `n`-entry table at `table`: (addr, len, flags,
/// next), or `None` if the index is out of range or the memory unreadable.
fn read_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    n: u16,
    index: u16,
) -> Option<(u64, u32, u16, u16)> {
    if index >= n {
        return None;
    }
    let at = table.checked_add(16 * u64::from(index))?;
    let mut raw = [0u8; 16];
    mem.read_slice(&mut raw, GuestAddress(at)).ok()?;
    Some((
        u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
        u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
        u16::from_le_bytes([raw[12], raw[13]]),
        u16::from_le_bytes([raw[14], raw[15]]),
    ))
}

/// Asserts what every chain handed to a device must satisfy: each buffer is
/// non-empty and lies (whole) in guest memory, the total is below 4 GiB.
pub fn assert_chain_sane(mem: &GuestMemoryMmap, chain: &Chain, queue_size: u16) {
    assert!(chain.head < queue_size, "head {} out of range", chain.head);
    for b in chain.readable.iter().chain(&chain.writable) {
        assert!(b.len > 0, "empty buffer in {chain:?}");
        assert!(
            mem.check_range(b.addr, b.len as usize, Permissions::Read),
            "buffer {:#x}+{:#x} outside guest memory",
            b.addr.raw_value(),
            b.len
        );
    }
    assert!(chain.readable_len() + chain.writable_len() <= u64::from(u32::MAX));
}

/// A transport interrupt that counts what the device signalled.
#[derive(Default)]
pub struct MockInterrupt {
    queues: Mutex<Vec<u16>>,
    needs_reset: AtomicUsize,
}

impl MockInterrupt {
    /// A fresh one, shared.
    pub fn new() -> Arc<MockInterrupt> {
        Arc::default()
    }

    /// How often the device asked for DEVICE_NEEDS_RESET.
    pub fn needs_reset_count(&self) -> usize {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Queue interrupts so far.
    pub fn queue_interrupts(&self) -> usize {
        self.queues.lock().expect("not poisoned").len()
    }
}

impl VirtioInterrupt for MockInterrupt {
    fn trigger(&self, interrupt: VirtioInterruptType) -> io::Result<()> {
        if let VirtioInterruptType::Queue(q) = interrupt {
            self.queues.lock().expect("not poisoned").push(q);
        }
        Ok(())
    }

    fn set_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
    }
}

/// Builds seed inputs in the format of the module docs.
pub mod seed {
    /// One descriptor: (addr, len, flags, next).
    pub type Desc = (u64, u32, u16, u16);

    /// Serializes descriptors as a table.
    pub fn table(descs: &[Desc]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * descs.len());
        for &(addr, len, flags, next) in descs {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
        }
        out
    }

    /// The compact layout seeds use for a queue of `size` (at most 16):
    /// descriptor table at 0x0, avail ring at 0x100, used ring at 0x140,
    /// free space (indirect tables, request headers) from 0x200. Small
    /// inputs keep the fuzzer's mutations where they matter.
    pub const DESC: u64 = 0x0;
    /// Avail ring of the seed layout.
    pub const AVAIL: u64 = 0x100;
    /// Used ring of the seed layout.
    pub const USED: u64 = 0x140;
    /// Start of free space in the seed layout.
    pub const FREE: u64 = 0x200;

    /// An input: a queue of `size` entries in the seed layout whose table
    /// holds `descs`, with `heads` made available, `flags` in byte 1 bits
    /// 3-7, `extra` in byte 8, and `blobs` (address, bytes) written into the
    /// image (at or above [`FREE`]).
    pub fn input(
        size: u16,
        event_idx: bool,
        flags: u8,
        extra: u8,
        descs: &[Desc],
        heads: &[u16],
        blobs: &[(u64, &[u8])],
    ) -> Vec<u8> {
        assert!(size.is_power_of_two() && size <= 16 && descs.len() <= usize::from(size));
        let mut header = vec![
            size.trailing_zeros() as u8,
            u8::from(event_idx) | (flags << 3),
        ];
        header.extend_from_slice(&((DESC / 16) as u16).to_le_bytes());
        header.extend_from_slice(&((AVAIL / 2) as u16).to_le_bytes());
        header.extend_from_slice(&((USED / 4) as u16).to_le_bytes());
        header.push(extra);
        let end = blobs
            .iter()
            .map(|(a, b)| *a as usize + b.len())
            .max()
            .unwrap_or(FREE as usize)
            .max(FREE as usize);
        let mut image = vec![0u8; end];
        let t = table(descs);
        image[DESC as usize..DESC as usize + t.len()].copy_from_slice(&t);
        let avail = AVAIL as usize;
        image[avail + 2..avail + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
        for (i, h) in heads.iter().enumerate() {
            image[avail + 4 + 2 * i..avail + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
        for (addr, bytes) in blobs {
            let a = *addr as usize;
            image[a..a + bytes.len()].copy_from_slice(bytes);
        }
        header.extend_from_slice(&image);
        header
    }
}
