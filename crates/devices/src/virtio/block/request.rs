//! Parsing a virtio-blk request (pure): the fuzz target.
//!
//! A request is a descriptor chain (virtio 1.2, section 5.2.6) made of
//!
//! - a 16-byte header `{ type: le32, ioprio: le32, sector: le64 }` at the
//!   start of the device-readable buffers,
//! - data: for writes, discard and write-zeroes the rest of the readable
//!   buffers; for reads and GET_ID the writable buffers but their last byte,
//! - a status byte: the last byte of the last device-writable buffer.
//!
//! The device makes no assumption about framing: the header may be split
//! over descriptors or share one with data, and the status byte may share
//! a descriptor with data.
//!
//! [`parse`] checks everything the guest controls against the disk's
//! [`DiskLimits`] and yields a [`BlockRequest`]: either a [`Command`] for
//! the disk, or a [`Refusal`] to complete at once with the status it names.
//! A chain without a status byte cannot be completed at all: that is a
//! [`ParseError`], after which the device needs a reset. Nothing here
//! allocates more than the chain already holds.

use virtio_bindings::virtio_blk as b;
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::queue::{Chain, GuestBuffer};
use crate::virtio::GuestMemoryMmap;

/// Bytes per virtio-blk sector (whatever the disk's block size).
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Bytes of the request header.
pub const HEADER_LEN: usize = 16;
/// Bytes of one discard / write-zeroes segment.
pub const SEGMENT_LEN: usize = 16;
/// Bytes of the GET_ID answer.
pub const ID_LEN: usize = b::VIRTIO_BLK_ID_BYTES as usize;

/// Request status values (the byte the device writes last).
pub mod status {
    use virtio_bindings::virtio_blk as b;

    /// Success.
    pub const OK: u8 = b::VIRTIO_BLK_S_OK as u8;
    /// The request failed (or was invalid).
    pub const IOERR: u8 = b::VIRTIO_BLK_S_IOERR as u8;
    /// The request is not supported.
    pub const UNSUPP: u8 = b::VIRTIO_BLK_S_UNSUPP as u8;
}

/// Request types.
pub mod types {
    use virtio_bindings::virtio_blk as b;

    /// Read.
    pub const IN: u32 = b::VIRTIO_BLK_T_IN;
    /// Write.
    pub const OUT: u32 = b::VIRTIO_BLK_T_OUT;
    /// Flush the write cache.
    pub const FLUSH: u32 = b::VIRTIO_BLK_T_FLUSH;
    /// Device identity (serial).
    pub const GET_ID: u32 = b::VIRTIO_BLK_T_GET_ID;
    /// Discard sectors.
    pub const DISCARD: u32 = b::VIRTIO_BLK_T_DISCARD;
    /// Zero sectors.
    pub const WRITE_ZEROES: u32 = b::VIRTIO_BLK_T_WRITE_ZEROES;
}

/// The write-zeroes segment flag allowing the device to deallocate.
pub const FLAG_UNMAP: u32 = b::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// What the device checks requests against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Writes, discards and write-zeroes are refused with IOERR.
    pub read_only: bool,
    /// Discard is offered (else UNSUPP).
    pub discard: bool,
    /// Write-zeroes is offered (else UNSUPP).
    pub write_zeroes: bool,
    /// Most sectors one discard segment may cover.
    pub max_discard_sectors: u32,
    /// Most sectors one write-zeroes segment may cover.
    pub max_write_zeroes_sectors: u32,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRequest {
    /// Head of the chain (for the used ring).
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// What to do.
    pub command: Command,
}

/// What a request asks for, checked. Offsets and lengths are in bytes and
/// lie within the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Fill `data` (`len` bytes, a multiple of 512) from the disk at
    /// `offset`.
    Read {
        offset: u64,
        len: u64,
        data: Vec<GuestBuffer>,
    },
    /// Write `data` (`len` bytes, a multiple of 512) to the disk at
    /// `offset`.
    Write {
        offset: u64,
        len: u64,
        data: Vec<GuestBuffer>,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the serial (at most [`ID_LEN`] bytes of it) to `data`.
    GetId { data: Vec<GuestBuffer> },
    /// Deallocate a range.
    Discard { offset: u64, len: u64 },
    /// Zero a range, deallocating it if `unmap`.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
    /// Complete at once with [`Refusal::status`].
    Refused(Refusal),
}

/// Why a request is refused without reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Fewer than 16 device-readable bytes.
    #[error("the request header has {len} device-readable bytes, 16 are needed")]
    HeaderTooShort { len: u64 },
    /// A type this device does not know.
    #[error("unknown request type {0}")]
    UnknownType(u32),
    /// A feature that was not offered.
    #[error("{0} is not offered")]
    NotOffered(&'static str),
    /// Data buffers in the wrong direction for the request.
    #[error("{op} request with device-{direction} data buffers")]
    WrongDirection {
        op: &'static str,
        direction: &'static str,
    },
    /// A read or write without data.
    #[error("{0} request without data")]
    NoData(&'static str),
    /// A data length that is not a whole number of sectors.
    #[error("{op} of {len} bytes is not a multiple of 512")]
    NotSectorMultiple { op: &'static str, len: u64 },
    /// Sectors past the end of the disk.
    #[error("{op} of {sectors} sectors at sector {sector} goes past the capacity of {capacity}")]
    OutOfRange {
        op: &'static str,
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    /// A change to a read-only disk.
    #[error("{0} to a read-only disk")]
    ReadOnly(&'static str),
    /// Not exactly one 16-byte discard / write-zeroes segment.
    #[error("{op} with {len} bytes of segments; exactly one 16-byte segment is supported")]
    SegmentCount { op: &'static str, len: u64 },
    /// Flags this device does not know (or unmap on a discard).
    #[error("{op} segment with unsupported flags {flags:#x}")]
    UnsupportedFlags { op: &'static str, flags: u32 },
    /// A segment larger than the configuration space allows.
    #[error("{op} of {sectors} sectors is more than the {max} allowed")]
    TooManySectors {
        op: &'static str,
        sectors: u32,
        max: u32,
    },
}

impl Refusal {
    /// The status the request completes with.
    pub fn status(&self) -> u8 {
        match self {
            Refusal::UnknownType(_) | Refusal::NotOffered(_) | Refusal::UnsupportedFlags { .. } => {
                status::UNSUPP
            }
            _ => status::IOERR,
        }
    }
}

/// A chain that cannot be completed: the device needs a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No device-writable byte to put the status in.
    #[error("request at head {head} has no device-writable status byte")]
    NoStatus { head: u16 },
    /// A buffer could not be read (parse_chain checked it: not expected).
    #[error("request at head {head}: buffer at {addr:#x} is not readable")]
    Memory { head: u16, addr: u64 },
}

/// Parses the request in `chain`; see the module docs.
pub fn parse(
    chain: &Chain,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<BlockRequest, ParseError> {
    let head = chain.head;
    let status = status_byte(chain)?;
    let done = |command| {
        Ok(BlockRequest {
            head,
            status,
            command,
        })
    };

    let readable_len = chain.readable_len();
    if readable_len < HEADER_LEN as u64 {
        return done(Command::Refused(Refusal::HeaderTooShort {
            len: readable_len,
        }));
    }
    let mut header = [0u8; HEADER_LEN];
    gather(mem, head, &chain.readable, 0, &mut header)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    // Data: readable bytes after the header, writable bytes before the
    // status byte.
    let in_len = readable_len - HEADER_LEN as u64;
    let out_len = chain.writable_len() - 1;

    let command =
        match request_type {
            types::IN => read_write(limits, "read", sector, out_len, in_len, "readable").map(
                |(offset, len)| Command::Read {
                    offset,
                    len,
                    data: writable_data(chain),
                },
            ),
            types::OUT => {
                if limits.read_only {
                    Err(Refusal::ReadOnly("write"))
                } else {
                    read_write(limits, "write", sector, in_len, out_len, "writable").map(
                        |(offset, len)| Command::Write {
                            offset,
                            len,
                            data: skip(&chain.readable, HEADER_LEN as u64),
                        },
                    )
                }
            }
            // Data buffers are ignored: a flush has none.
            types::FLUSH => Ok(Command::Flush),
            types::GET_ID => {
                if in_len > 0 {
                    Err(Refusal::WrongDirection {
                        op: "get-id",
                        direction: "readable",
                    })
                } else {
                    Ok(Command::GetId {
                        data: writable_data(chain),
                    })
                }
            }
            types::DISCARD | types::WRITE_ZEROES => {
                discard_write_zeroes(chain, mem, limits, request_type, in_len, out_len)?
            }
            other => Err(Refusal::UnknownType(other)),
        };
    done(command.unwrap_or_else(Command::Refused))
}

/// The status byte's address: the last byte of the last writable buffer.
fn status_byte(chain: &Chain) -> Result<GuestAddress, ParseError> {
    let head = chain.head;
    let last = chain
        .writable
        .last()
        .filter(|b| b.len > 0)
        .ok_or(ParseError::NoStatus { head })?;
    last.addr
        .0
        .checked_add(u64::from(last.len) - 1)
        .map(GuestAddress)
        .ok_or(ParseError::Memory {
            head,
            addr: last.addr.0,
        })
}

/// Checks a read or write of `len` bytes at `sector` whose buffers in the
/// other direction hold `wrong` bytes; returns the byte offset and length.
fn read_write(
    limits: &DiskLimits,
    op: &'static str,
    sector: u64,
    len: u64,
    wrong: u64,
    direction: &'static str,
) -> Result<(u64, u64), Refusal> {
    if wrong > 0 {
        return Err(Refusal::WrongDirection { op, direction });
    }
    if len == 0 {
        return Err(Refusal::NoData(op));
    }
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Refusal::NotSectorMultiple { op, len });
    }
    let offset = check_range(limits, op, sector, len >> SECTOR_SHIFT)?;
    Ok((offset, len))
}

/// Checks `sectors` sectors at `sector` against the capacity; returns the
/// byte offset.
fn check_range(
    limits: &DiskLimits,
    op: &'static str,
    sector: u64,
    sectors: u64,
) -> Result<u64, Refusal> {
    match sector.checked_add(sectors) {
        // capacity <= u64::MAX / 512, so the offset cannot overflow.
        Some(end) if end <= limits.capacity => Ok(sector << SECTOR_SHIFT),
        _ => Err(Refusal::OutOfRange {
            op,
            sector,
            sectors,
            capacity: limits.capacity,
        }),
    }
}

fn discard_write_zeroes(
    chain: &Chain,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
    request_type: u32,
    in_len: u64,
    out_len: u64,
) -> Result<Result<Command, Refusal>, ParseError> {
    let discard = request_type == types::DISCARD;
    let (op, offered, max) = if discard {
        ("discard", limits.discard, limits.max_discard_sectors)
    } else {
        (
            "write-zeroes",
            limits.write_zeroes,
            limits.max_write_zeroes_sectors,
        )
    };
    if out_len > 0 {
        return Ok(Err(Refusal::WrongDirection {
            op,
            direction: "writable",
        }));
    }
    if limits.read_only {
        return Ok(Err(Refusal::ReadOnly(op)));
    }
    if !offered {
        return Ok(Err(Refusal::NotOffered(op)));
    }
    // max_discard_seg = max_write_zeroes_seg = 1.
    if in_len != SEGMENT_LEN as u64 {
        return Ok(Err(Refusal::SegmentCount { op, len: in_len }));
    }
    let mut seg = [0u8; SEGMENT_LEN];
    gather(
        mem,
        chain.head,
        &chain.readable,
        HEADER_LEN as u64,
        &mut seg,
    )?;
    let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = seg;
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let sectors = u32::from_le_bytes([n0, n1, n2, n3]);
    let flags = u32::from_le_bytes([f0, f1, f2, f3]);
    // Discard takes no flag (unmap included); write-zeroes only unmap.
    let known = if discard { 0 } else { FLAG_UNMAP };
    if flags & !known != 0 {
        return Ok(Err(Refusal::UnsupportedFlags { op, flags }));
    }
    if sectors > max {
        return Ok(Err(Refusal::TooManySectors { op, sectors, max }));
    }
    let offset = match check_range(limits, op, sector, u64::from(sectors)) {
        Ok(offset) => offset,
        Err(e) => return Ok(Err(e)),
    };
    let len = u64::from(sectors) << SECTOR_SHIFT;
    Ok(Ok(if discard {
        Command::Discard { offset, len }
    } else {
        Command::WriteZeroes {
            offset,
            len,
            unmap: flags & FLAG_UNMAP != 0,
        }
    }))
}

/// The writable buffers without the status byte.
fn writable_data(chain: &Chain) -> Vec<GuestBuffer> {
    let mut data = chain.writable.clone();
    if let Some(last) = data.last_mut() {
        last.len -= 1; // status_byte() checked len > 0
        if last.len == 0 {
            data.pop();
        }
    }
    data
}

/// `bufs` without their first `n` bytes.
fn skip(bufs: &[GuestBuffer], mut n: u64) -> Vec<GuestBuffer> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        let len = u64::from(b.len);
        if n >= len {
            n -= len;
            continue;
        }
        // n < len <= u32::MAX.
        out.push(GuestBuffer {
            addr: GuestAddress(b.addr.0.wrapping_add(n)),
            len: b.len - n as u32,
        });
        n = 0;
    }
    out
}

/// Reads `out.len()` bytes from `bufs`, starting `skip` bytes in. The
/// caller checked the buffers hold that many.
fn gather(
    mem: &GuestMemoryMmap,
    head: u16,
    bufs: &[GuestBuffer],
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), ParseError> {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // skip < len, and out is at most 16 bytes.
        let n = ((len - skip) as usize).min(out.len() - done);
        let addr = b.addr.0.wrapping_add(skip);
        mem.read_slice(&mut out[done..done + n], GuestAddress(addr))
            .map_err(|_| ParseError::Memory { head, addr })?;
        done += n;
        skip = 0;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(ParseError::Memory {
            head,
            addr: bufs.last().map_or(0, |b| b.addr.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::guest_memory;

    const LIMITS: DiskLimits = DiskLimits {
        capacity: 100,
        read_only: false,
        discard: true,
        write_zeroes: true,
        max_discard_sectors: 64,
        max_write_zeroes_sectors: 64,
    };

    fn buf(addr: u64, len: u32) -> GuestBuffer {
        GuestBuffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    fn header(mem: &GuestMemoryMmap, addr: u64, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[4..8].copy_from_slice(&0xdead_u32.to_le_bytes()); // ioprio: ignored
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).expect("in memory");
    }

    fn segment(mem: &GuestMemoryMmap, addr: u64, sector: u64, n: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&s, GuestAddress(addr)).expect("in memory");
    }

    fn chain(readable: Vec<GuestBuffer>, writable: Vec<GuestBuffer>) -> Chain {
        Chain {
            head: 7,
            readable,
            writable,
        }
    }

    fn refusal(r: BlockRequest) -> Refusal {
        match r.command {
            Command::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_read_with_split_header_and_shared_status() {
        let mem = guest_memory();
        // The header split 5 + 11 over two descriptors.
        header(&mem, 0x1000, types::IN, 3);
        let mut h = [0u8; 16];
        mem.read_slice(&mut h, GuestAddress(0x1000))
            .expect("in memory");
        mem.write_slice(&h[5..], GuestAddress(0x2000))
            .expect("in memory");
        let c = chain(
            vec![buf(0x1000, 5), buf(0x2000, 11)],
            vec![buf(0x3000, 512), buf(0x4000, 513)],
        );
        let r = parse(&c, &mem, &LIMITS).expect("valid");
        assert_eq!(r.head, 7);
        assert_eq!(r.status, GuestAddress(0x4000 + 512));
        assert_eq!(
            r.command,
            Command::Read {
                offset: 3 * 512,
                len: 1024,
                data: vec![buf(0x3000, 512), buf(0x4000, 512)],
            }
        );
    }

    #[test]
    fn a_write_whose_data_shares_the_header_descriptor() {
        let mem = guest_memory();
        header(&mem, 0x1000, types::OUT, 99);
        let c = chain(
            vec![buf(0x1000, 16 + 256), buf(0x5000, 256)],
            vec![buf(0x6000, 1)],
        );
        let r = parse(&c, &mem, &LIMITS).expect("valid");
        assert_eq!(
            r.command,
            Command::Write {
                offset: 99 * 512,
                len: 512,
                data: vec![buf(0x1010, 256), buf(0x5000, 256)],
            }
        );
        assert_eq!(r.status, GuestAddress(0x6000));
    }

    #[test]
    fn reads_and_writes_are_checked() {
        let mem = guest_memory();
        let status = buf(0x9000, 1);
        // Past the end: sector 99 + 2 sectors > 100.
        header(&mem, 0x1000, types::IN, 99);
        let c = chain(vec![buf(0x1000, 16)], vec![buf(0x3000, 1024), status]);
        assert!(matches!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::OutOfRange { .. }
        ));
        // A sector number that overflows.
        header(&mem, 0x1000, types::IN, u64::MAX);
        assert!(matches!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::OutOfRange { .. }
        ));
        // Not a whole sector.
        header(&mem, 0x1000, types::IN, 0);
        let c = chain(vec![buf(0x1000, 16)], vec![buf(0x3000, 100), status]);
        let why = refusal(parse(&c, &mem, &LIMITS).expect("valid"));
        assert_eq!(why.status(), status::IOERR);
        assert!(matches!(why, Refusal::NotSectorMultiple { len: 100, .. }));
        // A read with readable data.
        let c = chain(vec![buf(0x1000, 16 + 512)], vec![status]);
        assert!(matches!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::WrongDirection { .. }
        ));
        // A write with writable data; a write to a read-only disk.
        header(&mem, 0x1000, types::OUT, 0);
        let c = chain(vec![buf(0x1000, 16)], vec![buf(0x3000, 512), status]);
        assert!(matches!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::WrongDirection { .. }
        ));
        let ro = DiskLimits {
            read_only: true,
            ..LIMITS
        };
        let c = chain(vec![buf(0x1000, 16 + 512)], vec![status]);
        assert!(matches!(
            parse(&c, &mem, &LIMITS).expect("valid").command,
            Command::Write { .. }
        ));
        assert_eq!(
            refusal(parse(&c, &mem, &ro).expect("valid")),
            Refusal::ReadOnly("write")
        );
        // The last sector is fine; a read without data is refused.
        header(&mem, 0x1000, types::IN, 99);
        let c = chain(vec![buf(0x1000, 16)], vec![buf(0x3000, 512), status]);
        assert!(matches!(
            parse(&c, &mem, &LIMITS).expect("valid").command,
            Command::Read { len: 512, .. }
        ));
        header(&mem, 0x1000, types::IN, 100);
        let c = chain(vec![buf(0x1000, 16)], vec![status]);
        assert_eq!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::NoData("read")
        );
    }

    #[test]
    fn flush_get_id_and_unknown_types() {
        let mem = guest_memory();
        header(&mem, 0x1000, types::FLUSH, 12345);
        let c = chain(vec![buf(0x1000, 16)], vec![buf(0x9000, 1)]);
        assert_eq!(
            parse(&c, &mem, &LIMITS).expect("valid").command,
            Command::Flush
        );
        header(&mem, 0x1000, types::GET_ID, 0);
        let c = chain(vec![buf(0x1000, 16)], vec![buf(0x3000, 21)]);
        assert_eq!(
            parse(&c, &mem, &LIMITS).expect("valid").command,
            Command::GetId {
                data: vec![buf(0x3000, 20)]
            }
        );
        let c = chain(vec![buf(0x1000, 20)], vec![buf(0x3000, 21)]);
        assert!(matches!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::WrongDirection { .. }
        ));
        for t in [2, 3, 9, 10, 14, 0x8000_0000, u32::MAX] {
            header(&mem, 0x1000, t, 0);
            let c = chain(vec![buf(0x1000, 16)], vec![buf(0x9000, 1)]);
            let why = refusal(parse(&c, &mem, &LIMITS).expect("valid"));
            assert_eq!(why, Refusal::UnknownType(t));
            assert_eq!(why.status(), status::UNSUPP);
        }
    }

    #[test]
    fn discard_and_write_zeroes() {
        let mem = guest_memory();
        let status = buf(0x9000, 1);
        let parse_seg = |t: u32, sector: u64, n: u32, flags: u32, limits: &DiskLimits| {
            header(&mem, 0x1000, t, 0);
            segment(&mem, 0x2000, sector, n, flags);
            let c = chain(vec![buf(0x1000, 16), buf(0x2000, 16)], vec![status]);
            parse(&c, &mem, limits).expect("valid").command
        };
        assert_eq!(
            parse_seg(types::DISCARD, 10, 4, 0, &LIMITS),
            Command::Discard {
                offset: 5120,
                len: 2048
            }
        );
        assert_eq!(
            parse_seg(types::WRITE_ZEROES, 96, 4, FLAG_UNMAP, &LIMITS),
            Command::WriteZeroes {
                offset: 96 * 512,
                len: 2048,
                unmap: true
            }
        );
        // Unmap on a discard, unknown flags: UNSUPP.
        for (t, flags) in [
            (types::DISCARD, FLAG_UNMAP),
            (types::DISCARD, 4),
            (types::WRITE_ZEROES, 2),
        ] {
            let Command::Refused(why) = parse_seg(t, 0, 1, flags, &LIMITS) else {
                panic!("refused");
            };
            assert!(matches!(why, Refusal::UnsupportedFlags { .. }));
            assert_eq!(why.status(), status::UNSUPP);
        }
        // Range and size.
        assert!(matches!(
            parse_seg(types::DISCARD, 97, 4, 0, &LIMITS),
            Command::Refused(Refusal::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_seg(types::WRITE_ZEROES, u64::MAX - 1, 4, 0, &LIMITS),
            Command::Refused(Refusal::OutOfRange { .. })
        ));
        assert!(matches!(
            parse_seg(types::DISCARD, 0, 65, 0, &LIMITS),
            Command::Refused(Refusal::TooManySectors { .. })
        ));
        // Read-only, not offered.
        let ro = DiskLimits {
            read_only: true,
            ..LIMITS
        };
        assert_eq!(
            parse_seg(types::WRITE_ZEROES, 0, 1, 0, &ro),
            Command::Refused(Refusal::ReadOnly("write-zeroes"))
        );
        let none = DiskLimits {
            discard: false,
            write_zeroes: false,
            ..LIMITS
        };
        let Command::Refused(why) = parse_seg(types::DISCARD, 0, 1, 0, &none) else {
            panic!("refused");
        };
        assert_eq!(why.status(), status::UNSUPP);
        // Two segments, half a segment, none.
        header(&mem, 0x1000, types::DISCARD, 0);
        for len in [32, 8, 0] {
            let c = chain(vec![buf(0x1000, 16 + len)], vec![status]);
            assert!(matches!(
                refusal(parse(&c, &mem, &LIMITS).expect("valid")),
                Refusal::SegmentCount { .. }
            ));
        }
        // Writable data.
        let c = chain(vec![buf(0x1000, 32)], vec![buf(0x3000, 16), status]);
        assert!(matches!(
            refusal(parse(&c, &mem, &LIMITS).expect("valid")),
            Refusal::WrongDirection { .. }
        ));
    }

    #[test]
    fn malformed_chains() {
        let mem = guest_memory();
        header(&mem, 0x1000, types::IN, 0);
        // No writable byte: no status.
        let c = chain(vec![buf(0x1000, 16 + 512)], vec![]);
        assert_eq!(
            parse(&c, &mem, &LIMITS),
            Err(ParseError::NoStatus { head: 7 })
        );
        // A short header (split 4 + 4), and a header in writable memory:
        // IOERR in the status byte.
        let c = chain(vec![buf(0x1000, 4), buf(0x1004, 4)], vec![buf(0x9000, 1)]);
        let r = parse(&c, &mem, &LIMITS).expect("completable");
        assert_eq!(r.status, GuestAddress(0x9000));
        assert_eq!(refusal(r), Refusal::HeaderTooShort { len: 8 });
        let c = chain(vec![], vec![buf(0x1000, 16), buf(0x3000, 513)]);
        let why = refusal(parse(&c, &mem, &LIMITS).expect("completable"));
        assert_eq!(why, Refusal::HeaderTooShort { len: 0 });
        assert_eq!(why.status(), status::IOERR);
        // A buffer outside memory (not from parse_chain): an error, not a
        // panic.
        let c = chain(vec![buf(u64::MAX - 3, 16)], vec![buf(0x9000, 1)]);
        assert!(matches!(
            parse(&c, &mem, &LIMITS),
            Err(ParseError::Memory { .. })
        ));
        let c = chain(vec![buf(0x1000, 16)], vec![buf(u64::MAX, 2)]);
        assert!(parse(&c, &mem, &LIMITS).is_err());
    }

    #[test]
    fn skip_and_writable_data() {
        let bufs = [buf(0x1000, 10), buf(0x2000, 10)];
        assert_eq!(skip(&bufs, 0), bufs.to_vec());
        assert_eq!(skip(&bufs, 10), vec![buf(0x2000, 10)]);
        assert_eq!(skip(&bufs, 13), vec![buf(0x2003, 7)]);
        assert!(skip(&bufs, 25).is_empty());
        let c = chain(vec![], vec![buf(0x1000, 10), buf(0x2000, 1)]);
        assert_eq!(writable_data(&c), vec![buf(0x1000, 10)]);
    }
}
