//! virtio-blk (virtio 1.x, 5.2): configuration, and requests as chains of a 16-byte header
//! (type, reserved, sector; device-readable), data buffers, and a 1-byte status
//! (device-writable). One request in flight per queue; data is split into page-sized
//! segments (fewer if `size_max` says so) within `seg_max`, so requests exercise
//! multi-descriptor chains, direct or indirect.

use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};

use super::{Buf, Options, Transport, Virtqueue, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::heap::PAGE_SIZE;
use crate::kit::Fail;
use crate::pci::{Function, Pci};
use crate::{ensure, fail, heap};

pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_GEOMETRY: u64 = 1 << 4;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_TOPOLOGY: u64 = 1 << 10;
pub const F_CONFIG_WCE: u64 = 1 << 11;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

/// Device feature names, for printing.
pub const FEATURE_NAMES: &[(u32, &str)] = &[
    (1, "SIZE_MAX"),
    (2, "SEG_MAX"),
    (4, "GEOMETRY"),
    (5, "RO"),
    (6, "BLK_SIZE"),
    (9, "FLUSH"),
    (10, "TOPOLOGY"),
    (11, "CONFIG_WCE"),
    (12, "MQ"),
    (13, "DISCARD"),
    (14, "WRITE_ZEROES"),
    (15, "LIFETIME"),
    (16, "SECURE_ERASE"),
];

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

/// Request status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const SECTOR: u64 = 512;
/// The device ID string's size (GET_ID).
pub const ID_LEN: u32 = 20;
/// How long one request may take.
pub const TIMEOUT_MS: u64 = 10_000;
/// What the status byte holds before the device writes it.
const STATUS_UNWRITTEN: u8 = 0xff;

/// The per-queue request page: header, status, discard segment, ID buffer (offsets public
/// for tests that build requests by hand, see [`Blk::req_page`]).
pub const HDR: u64 = 0;
pub const STATUS: u64 = 64;
pub const SEGMENT: u64 = 128;
pub const ID: u64 = 256;

pub fn status_name(status: u8) -> &'static str {
    match status {
        S_OK => "OK",
        S_IOERR => "IOERR",
        S_UNSUPP => "UNSUPP",
        STATUS_UNWRITTEN => "unwritten",
        _ => "invalid",
    }
}

/// The configuration fields the driver uses (those of features not negotiated are None
/// or 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: Option<u32>,
    pub seg_max: Option<u32>,
    pub blk_size: Option<u32>,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: bool,
}

/// A virtio-blk device, ready for requests.
#[derive(Debug)]
pub struct Blk {
    pub t: Transport,
    pub queues: Vec<Virtqueue>,
    pub cfg: Config,
    /// One request page per queue.
    req: u64,
    /// Requests completed, and the TSC ticks spent waiting for them in total.
    pub requests: u64,
    pub request_ticks: u64,
}

impl Blk {
    /// Brings the device up with up to `want_queues` queues (MQ).
    pub fn open(pci: &Pci, f: &Function, opts: &Options, want_queues: u16) -> Result<Self, Fail> {
        let mut t = Transport::open(pci, f, opts.mode)?;
        let mut wanted = F_SIZE_MAX
            | F_SEG_MAX
            | F_GEOMETRY
            | F_RO
            | F_BLK_SIZE
            | F_FLUSH
            | F_TOPOLOGY
            | F_MQ
            | F_DISCARD
            | F_WRITE_ZEROES;
        if opts.indirect {
            wanted |= F_INDIRECT_DESC;
        }
        if opts.event_idx {
            wanted |= F_EVENT_IDX;
        }
        let features = t.negotiate(wanted)?;
        let has = |bit: u64| features & bit != 0;
        let read32 = |off: u64, bit: u64| -> Result<u32, Fail> {
            Ok(if has(bit) { t.cfg(off, 4)? as u32 } else { 0 })
        };
        let cfg = Config {
            capacity: t.cfg(0, 8)?,
            size_max: has(F_SIZE_MAX)
                .then(|| t.cfg(8, 4))
                .transpose()?
                .map(|v| v as u32),
            seg_max: has(F_SEG_MAX)
                .then(|| t.cfg(12, 4))
                .transpose()?
                .map(|v| v as u32),
            blk_size: has(F_BLK_SIZE)
                .then(|| t.cfg(20, 4))
                .transpose()?
                .map(|v| v as u32),
            num_queues: if has(F_MQ) { t.cfg(34, 2)? as u16 } else { 1 },
            max_discard_sectors: read32(36, F_DISCARD)?,
            max_discard_seg: read32(40, F_DISCARD)?,
            discard_sector_alignment: read32(44, F_DISCARD)?,
            max_write_zeroes_sectors: read32(48, F_WRITE_ZEROES)?,
            max_write_zeroes_seg: read32(52, F_WRITE_ZEROES)?,
            write_zeroes_may_unmap: has(F_WRITE_ZEROES) && t.cfg(56, 1)? != 0,
        };
        let count = cfg.num_queues.clamp(1, want_queues.max(1));
        let mut queues = Vec::new();
        for index in 0..count {
            queues.push(t.setup_queue(index, opts.queue_size)?);
        }
        let req = heap::alloc_pages(u64::from(count))?;
        t.driver_ok()?;
        Ok(Self {
            t,
            queues,
            cfg,
            req,
            requests: 0,
            request_ticks: 0,
        })
    }

    pub fn has(&self, bit: u64) -> bool {
        self.t.features & bit != 0
    }

    /// Queue `q`'s request page (header at [`HDR`], status at [`STATUS`], ...).
    pub fn req_page(&self, q: usize) -> u64 {
        self.req + q as u64 * PAGE_SIZE
    }

    /// Resets the device and brings it up again (same features, same queues, fresh rings).
    pub fn reinit(&mut self) -> Result<(), Fail> {
        let mut queues: Vec<&mut Virtqueue> = self.queues.iter_mut().collect();
        self.t.reinit(&mut queues)
    }

    /// Sends one request on queue `q` and waits for it: header, `data`, status. Returns
    /// the status byte and the used length the device reported.
    pub fn request(
        &mut self,
        q: usize,
        ty: u32,
        sector: u64,
        data: &[Buf],
        indirect: bool,
    ) -> Result<(u8, u32), Fail> {
        ensure!(
            q < self.queues.len(),
            "queue {q}: the device has {}",
            self.queues.len()
        );
        let page = self.req_page(q);
        // SAFETY: the request page of queue `q` (heap, identity mapped); nothing is in
        // flight on this queue, so the device is not using it.
        unsafe {
            write_volatile((page + HDR) as *mut u32, ty);
            write_volatile((page + HDR + 4) as *mut u32, 0);
            write_volatile((page + HDR + 8) as *mut u64, sector);
            write_volatile((page + STATUS) as *mut u8, STATUS_UNWRITTEN);
        }
        let mut chain = Vec::with_capacity(data.len() + 2);
        chain.push(Buf::out(page + HDR, 16));
        chain.extend_from_slice(data);
        chain.push(Buf::inn(page + STATUS, 1));
        let started = crate::time::rdtsc();
        let queue = &mut self.queues[q];
        let head = if indirect {
            queue.submit_indirect(&chain)?
        } else {
            queue.submit(&chain)?
        };
        queue.kick();
        let used = self.t.wait_used(queue, TIMEOUT_MS)?;
        self.requests += 1;
        self.request_ticks += crate::time::rdtsc().wrapping_sub(started);
        ensure!(
            used.known && used.id == u32::from(head),
            "queue {q}: the device returned chain {} (in flight: {head})",
            used.id
        );
        // SAFETY: as above; the device is done with the request.
        let status = unsafe { read_volatile((page + STATUS) as *const u8) };
        ensure!(
            status != STATUS_UNWRITTEN,
            "queue {q}: request type {ty} completed (used len {}) without a status byte",
            used.len
        );
        Ok((status, used.len))
    }

    /// Bytes per data descriptor, and data descriptors per request.
    fn segment_limits(&self, indirect: bool) -> (u64, usize) {
        let seg_bytes = PAGE_SIZE.min(u64::from(self.cfg.size_max.unwrap_or(u32::MAX)));
        let mut segs = self.cfg.seg_max.unwrap_or(126).max(1) as usize;
        let queue_size = usize::from(self.queues.first().map_or(4, |q| q.size));
        segs = segs.min(if indirect {
            usize::from(super::INDIRECT_MAX) - 2
        } else {
            queue_size.saturating_sub(2).max(1)
        });
        (seg_bytes - seg_bytes % SECTOR, segs)
    }

    /// Reads or writes `len` bytes (a multiple of 512) at `addr` from/to `sector`, as many
    /// requests as the segment limits need. Returns the first non-OK status, else OK.
    pub fn rw(
        &mut self,
        q: usize,
        write: bool,
        sector: u64,
        addr: u64,
        len: u64,
        indirect: bool,
    ) -> Result<u8, Fail> {
        ensure!(
            len.is_multiple_of(SECTOR),
            "{len} bytes is not whole sectors"
        );
        let (seg_bytes, segs) = self.segment_limits(indirect);
        let mut done = 0;
        while done < len {
            let mut bufs = Vec::new();
            let start = done;
            while done < len && bufs.len() < segs {
                let n = (len - done).min(seg_bytes);
                bufs.push(Buf {
                    addr: addr + done,
                    len: n as u32,
                    write: !write,
                });
                done += n;
            }
            let ty = if write { T_OUT } else { T_IN };
            let (status, _) = self.request(q, ty, sector + start / SECTOR, &bufs, indirect)?;
            if status != S_OK {
                return Ok(status);
            }
        }
        Ok(S_OK)
    }

    pub fn flush(&mut self, q: usize) -> Result<u8, Fail> {
        Ok(self.request(q, T_FLUSH, 0, &[], false)?.0)
    }

    /// GET_ID: the status and the ID string (up to 20 bytes, NUL-terminated if shorter).
    pub fn get_id(&mut self, q: usize) -> Result<(u8, String), Fail> {
        let at = self.req_page(q) + ID;
        // SAFETY: the ID buffer of the request page of queue `q`.
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, ID_LEN as usize) };
        let (status, _) = self.request(q, T_GET_ID, 0, &[Buf::inn(at, ID_LEN)], false)?;
        let mut id = String::new();
        for i in 0..u64::from(ID_LEN) {
            // SAFETY: as above; the device is done.
            let b = unsafe { read_volatile((at + i) as *const u8) };
            if b == 0 {
                break;
            }
            id.push(if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            });
        }
        Ok((status, id))
    }

    /// DISCARD or WRITE_ZEROES of `count` sectors at `sector` (one segment; `unmap` sets
    /// the WRITE_ZEROES unmap flag).
    pub fn discard_or_zero(
        &mut self,
        q: usize,
        ty: u32,
        sector: u64,
        count: u32,
        unmap: bool,
    ) -> Result<u8, Fail> {
        if ty != T_DISCARD && ty != T_WRITE_ZEROES {
            fail!("request type {ty} is neither DISCARD nor WRITE_ZEROES");
        }
        let at = self.req_page(q) + SEGMENT;
        // SAFETY: the segment buffer of the request page of queue `q`.
        unsafe {
            write_volatile(at as *mut u64, sector);
            write_volatile((at + 8) as *mut u32, count);
            write_volatile((at + 12) as *mut u32, u32::from(unmap));
        }
        Ok(self.request(q, ty, 0, &[Buf::out(at, 16)], false)?.0)
    }
}
