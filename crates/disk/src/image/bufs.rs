//! Scatter-gather helpers over [`IoBuf`] lists for the image formats:
//! cutting a list into ranges, copying, zeroing, and whole-range
//! preadv/pwritev.

use std::io;
use std::os::fd::RawFd;

use crate::IoBuf;

/// Linux's IOV_MAX: the most iovecs one preadv/pwritev takes.
const IOV_MAX: usize = 1024;

/// Total length of a list.
pub(crate) fn total(bufs: &[IoBuf]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// Appends to `out` the part of `bufs` covering bytes `start..start+len` of
/// their concatenation.
pub(crate) fn sub(bufs: &[IoBuf], start: u64, len: u64, out: &mut Vec<IoBuf>) {
    let mut skip = start;
    let mut left = len;
    for buf in bufs {
        if left == 0 {
            break;
        }
        let blen = buf.len() as u64;
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let take = (blen - skip).min(left);
        // SAFETY: a sub-range of a buffer the caller vouched for, with the
        // same validity (the `IoBuf` contract carries over).
        let piece =
            unsafe { IoBuf::from_raw_parts(buf.as_ptr().add(skip as usize), take as usize) };
        out.push(piece);
        left -= take;
        skip = 0;
    }
}

/// Fills the list with zeros.
pub(crate) fn zero(bufs: &[IoBuf]) {
    for buf in bufs {
        // SAFETY: by the IoBuf contract the memory is valid for writes of
        // `len` bytes while the request runs, and nothing else accesses it.
        unsafe { std::ptr::write_bytes(buf.as_ptr(), 0, buf.len()) };
    }
}

/// Copies `src` into the start of the list.
pub(crate) fn copy_in(bufs: &[IoBuf], src: &[u8]) {
    let mut done = 0;
    for buf in bufs {
        if done == src.len() {
            break;
        }
        let n = buf.len().min(src.len() - done);
        // SAFETY: `buf` is valid for writes of `n` <= len bytes (IoBuf
        // contract) and cannot overlap `src`, which the image owns.
        unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), buf.as_ptr(), n) };
        done += n;
    }
}

/// Copies the start of the list into `dst`.
#[cfg(test)]
pub(crate) fn copy_out(bufs: &[IoBuf], dst: &mut [u8]) {
    let mut done = 0;
    for buf in bufs {
        if done == dst.len() {
            break;
        }
        let n = buf.len().min(dst.len() - done);
        // SAFETY: `buf` is valid for reads of `n` bytes (IoBuf contract) and
        // cannot overlap `dst`, which the image owns.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst[done..].as_mut_ptr(), n) };
        done += n;
    }
}

/// Whether every byte is zero.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: u8 to u64 reinterpretation of an aligned middle part; any
        // bit pattern is a valid u64.
        unsafe { data.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Which way [`transfer_all`] moves the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// preadv/pwritev of the whole list at `offset`, resuming after short
/// transfers and EINTR. Reads that reach the end of the file fill the rest
/// with zeros (as a file's unwritten tail reads); writes that make no
/// progress fail with WriteZero.
fn transfer_all(fd: RawFd, bufs: &[IoBuf], offset: u64, dir: Direction) -> io::Result<()> {
    let mut list: Vec<IoBuf> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    let mut start = 0;
    let mut pos = offset;
    while start < list.len() {
        let count = (list.len() - start).min(IOV_MAX) as libc::c_int;
        let off =
            libc::off_t::try_from(pos).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let iov = IoBuf::as_iovecs(&list[start..]);
        // SAFETY: the iovecs describe memory valid for writes (reads) or
        // reads (writes) by the IoBuf contract; `count` of them from
        // `start` exist.
        let ret = unsafe {
            match dir {
                Direction::Read => libc::preadv(fd, iov, count, off),
                Direction::Write => libc::pwritev(fd, iov, count, off),
            }
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return match dir {
                Direction::Read => {
                    zero(&list[start..]);
                    Ok(())
                }
                Direction::Write => Err(io::Error::from(io::ErrorKind::WriteZero)),
            };
        }
        pos += ret as u64;
        crate::iobuf::advance_bufs(&mut list, &mut start, ret as usize);
    }
    Ok(())
}

/// Reads the whole list from `fd` at `offset`; bytes past the end of the
/// file read as zeros (as a file's unwritten tail does).
pub(crate) fn preadv_full(fd: RawFd, bufs: &[IoBuf], offset: u64) -> io::Result<()> {
    transfer_all(fd, bufs, offset, Direction::Read)
}

/// Writes the whole list to `fd` at `offset`.
pub(crate) fn pwritev_all(fd: RawFd, bufs: &[IoBuf], offset: u64) -> io::Result<()> {
    transfer_all(fd, bufs, offset, Direction::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_cuts_across_buffers() {
        let mut a = [1u8, 2, 3];
        let mut b = [4u8, 5, 6, 7];
        // SAFETY: the arrays outlive the lists.
        let list = unsafe { [IoBuf::from_slice(&mut a), IoBuf::from_slice(&mut b)] };
        let mut out = Vec::new();
        sub(&list, 2, 3, &mut out);
        let mut got = [0u8; 3];
        copy_out(&out, &mut got);
        assert_eq!(got, [3, 4, 5]);
        assert_eq!(total(&out), 3);
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4097];
        assert!(is_zero(&v));
        v[4096] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
