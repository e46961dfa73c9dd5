//! Running one request with blocking system calls: the thread pool's
//! workers, and io_uring's helper for what io_uring cannot express.

use std::io;

use crate::engine::{JobKind, JobSpec};
use crate::file::FileCtx;
use crate::image::Image;
use crate::iobuf::advance_bufs;
use crate::sys::{self, AlignedBuf};
use crate::{IoBuf, RequestError};

/// Size of the O_DIRECT bounce buffer: unaligned requests are copied through
/// it in chunks of this size.
const BOUNCE_SIZE: usize = 256 * 1024;
/// Size of the buffer of zeros used when write-zeroes has to write.
const ZEROS_SIZE: usize = 64 * 1024;

/// Per-worker buffers, allocated on first use and kept.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    bounce: Option<AlignedBuf>,
    zeros: Option<AlignedBuf>,
}

impl Scratch {
    fn buffer(
        slot: &mut Option<AlignedBuf>,
        size: usize,
        align: usize,
    ) -> io::Result<&mut AlignedBuf> {
        match slot {
            Some(buf) => Ok(buf),
            None => Ok(slot.insert(AlignedBuf::zeroed(size, align)?)),
        }
    }
}

/// Runs one request on a disk image format; returns the bytes transferred.
pub(crate) fn execute_image(
    image: &dyn Image,
    path: &std::sync::Arc<std::path::Path>,
    spec: &JobSpec,
    bufs: &[IoBuf],
) -> Result<u64, RequestError> {
    let result = match spec.kind {
        JobKind::Nop(_) => Ok(()),
        JobKind::Read { .. } => image.read_vectored(spec.offset, bufs),
        JobKind::Write { .. } => image.write_vectored(spec.offset, bufs),
        JobKind::Flush => image.flush(),
        JobKind::Discard => image.discard(spec.offset, spec.len),
        JobKind::WriteZeroes { unmap } => image.write_zeroes(spec.offset, spec.len, unmap),
    };
    match result {
        Ok(()) => Ok(match spec.kind {
            JobKind::Read { .. } | JobKind::Write { .. } => spec.len,
            _ => 0,
        }),
        Err(source) => Err(RequestError::Image {
            path: path.clone(),
            extent: spec.extent(),
            source: Box::new(source),
        }),
    }
}

/// Runs one request to the end; returns the bytes transferred.
pub(crate) fn execute(
    file: &FileCtx,
    spec: &JobSpec,
    bufs: &mut [IoBuf],
    scratch: &mut Scratch,
) -> Result<u64, RequestError> {
    let io_err = |source: io::Error| file.io_error(spec, source);
    let fd = file.raw_fd();
    match spec.kind {
        JobKind::Nop(_) => Ok(0),
        JobKind::Read { bounce: false } => transfer(file, spec, bufs, true),
        JobKind::Write { bounce: false } => transfer(file, spec, bufs, false),
        JobKind::Read { bounce: true } => bounce_read(file, spec, bufs, scratch),
        JobKind::Write { bounce: true } => bounce_write(file, spec, bufs, scratch),
        JobKind::Flush => sys::fdatasync(fd).map(|()| 0).map_err(io_err),
        JobKind::Discard => {
            let result = if file.block_device {
                sys::block_device_discard(fd, spec.offset, spec.len)
            } else {
                sys::fallocate(fd, PUNCH_HOLE, spec.offset, spec.len)
            };
            result.map(|()| 0).map_err(io_err)
        }
        JobKind::WriteZeroes { unmap } => {
            if file.block_device {
                sys::block_device_zeroout(fd, spec.offset, spec.len)
                    .map(|()| 0)
                    .map_err(io_err)
            } else {
                write_zeroes_file(file, spec, unmap, scratch).map(|()| 0)
            }
        }
    }
}

/// Deallocates a range of a file without changing its size.
pub(crate) const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// Zeroes a range of a file, keeping it allocated, without changing its size.
pub(crate) const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Write-zeroes on a file: FALLOC_FL_ZERO_RANGE; where the file system lacks
/// it, punching a hole (if the guest allows unmapping), else writing zeros.
fn write_zeroes_file(
    file: &FileCtx,
    spec: &JobSpec,
    unmap: bool,
    scratch: &mut Scratch,
) -> Result<(), RequestError> {
    let fd = file.raw_fd();
    if file.zero_range_supported() {
        match sys::fallocate(fd, ZERO_RANGE, spec.offset, spec.len) {
            Ok(()) => return Ok(()),
            Err(e) if crate::error::is_unsupported_errno(&e) => file.set_zero_range_unsupported(),
            Err(e) => return Err(file.io_error(spec, e)),
        }
    }
    if unmap {
        match sys::fallocate(fd, PUNCH_HOLE, spec.offset, spec.len) {
            Ok(()) => return Ok(()),
            Err(e) if crate::error::is_unsupported_errno(&e) => {}
            Err(e) => return Err(file.io_error(spec, e)),
        }
    }
    let align = file.buffer_align();
    let zeros = Scratch::buffer(&mut scratch.zeros, ZEROS_SIZE.max(align), align)
        .map_err(|e| file.io_error(spec, e))?;
    let mut done = 0u64;
    while done < spec.len {
        let n = usize::try_from(spec.len - done)
            .unwrap_or(usize::MAX)
            .min(zeros.len());
        let written = sys::pwrite(fd, &zeros.as_slice()[..n], spec.offset + done)
            .map_err(|e| file.io_error(spec, e))?;
        if written == 0 {
            return Err(file.io_error(spec, io::ErrorKind::WriteZero.into()));
        }
        done += written as u64;
    }
    Ok(())
}

/// preadv/pwritev straight into or out of the request's buffers, continuing
/// after short transfers.
fn transfer(
    file: &FileCtx,
    spec: &JobSpec,
    bufs: &mut [IoBuf],
    read: bool,
) -> Result<u64, RequestError> {
    let fd = file.raw_fd();
    let mut start = 0;
    let mut done = 0u64;
    advance_bufs(bufs, &mut start, 0);
    while done < spec.len {
        let rest = &bufs[start..];
        // SAFETY: the buffers obey the IoBuf contract, made when the request
        // was enqueued: valid for the transfer until it completes.
        let result = unsafe {
            if read {
                sys::preadv(fd, rest, spec.offset + done)
            } else {
                sys::pwritev(fd, rest, spec.offset + done)
            }
        };
        let n = result.map_err(|e| file.io_error(spec, e))?;
        if n == 0 {
            return Err(short_transfer(file, spec, done, read));
        }
        done += n as u64;
        advance_bufs(bufs, &mut start, n);
    }
    Ok(done)
}

/// The error for a transfer that made no progress: the end of the file for
/// a read, "wrote zero bytes" for a write.
pub(crate) fn short_transfer(
    file: &FileCtx,
    spec: &JobSpec,
    done: u64,
    read: bool,
) -> RequestError {
    if read {
        RequestError::UnexpectedEof {
            path: file.path.clone(),
            extent: spec.extent(),
            done,
        }
    } else {
        file.io_error(spec, io::ErrorKind::WriteZero.into())
    }
}

/// An O_DIRECT read into buffers the kernel would refuse: read aligned
/// chunks into the bounce buffer, then copy them out.
fn bounce_read(
    file: &FileCtx,
    spec: &JobSpec,
    bufs: &mut [IoBuf],
    scratch: &mut Scratch,
) -> Result<u64, RequestError> {
    let align = file.buffer_align();
    let bounce = Scratch::buffer(&mut scratch.bounce, BOUNCE_SIZE.max(align), align)
        .map_err(|e| file.io_error(spec, e))?;
    let fd = file.raw_fd();
    let mut start = 0;
    let mut done = 0u64;
    while done < spec.len {
        let n = usize::try_from(spec.len - done)
            .unwrap_or(usize::MAX)
            .min(bounce.len());
        let chunk = &mut bounce.as_mut_slice()[..n];
        let mut filled = 0;
        while filled < n {
            let got = sys::pread(fd, &mut chunk[filled..], spec.offset + done + filled as u64)
                .map_err(|e| file.io_error(spec, e))?;
            if got == 0 {
                return Err(short_transfer(file, spec, done + filled as u64, true));
            }
            filled += got;
        }
        scatter(bufs, &mut start, chunk);
        done += n as u64;
    }
    Ok(done)
}

/// An O_DIRECT write from buffers the kernel would refuse: copy aligned
/// chunks into the bounce buffer, then write them.
fn bounce_write(
    file: &FileCtx,
    spec: &JobSpec,
    bufs: &mut [IoBuf],
    scratch: &mut Scratch,
) -> Result<u64, RequestError> {
    let align = file.buffer_align();
    let bounce = Scratch::buffer(&mut scratch.bounce, BOUNCE_SIZE.max(align), align)
        .map_err(|e| file.io_error(spec, e))?;
    let fd = file.raw_fd();
    let mut start = 0;
    let mut done = 0u64;
    while done < spec.len {
        let n = usize::try_from(spec.len - done)
            .unwrap_or(usize::MAX)
            .min(bounce.len());
        let chunk = &mut bounce.as_mut_slice()[..n];
        gather(bufs, &mut start, chunk);
        let mut written = 0;
        while written < n {
            let put = sys::pwrite(fd, &chunk[written..], spec.offset + done + written as u64)
                .map_err(|e| file.io_error(spec, e))?;
            if put == 0 {
                return Err(short_transfer(file, spec, done + written as u64, false));
            }
            written += put;
        }
        done += n as u64;
    }
    Ok(done)
}

/// Copies `src` into the buffers from `*start` on, consuming them.
fn scatter(bufs: &mut [IoBuf], start: &mut usize, mut src: &[u8]) {
    while !src.is_empty() && *start < bufs.len() {
        let buf = bufs[*start];
        let n = buf.len().min(src.len());
        // SAFETY: the IoBuf contract makes `buf` writable for its length
        // while the request is in flight; `src` is our own bounce buffer, so
        // they cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.as_ptr(), n) };
        src = &src[n..];
        advance_bufs(bufs, start, n);
    }
}

/// Fills `dst` from the buffers from `*start` on, consuming them.
fn gather(bufs: &mut [IoBuf], start: &mut usize, mut dst: &mut [u8]) {
    while !dst.is_empty() && *start < bufs.len() {
        let buf = bufs[*start];
        let n = buf.len().min(dst.len());
        // SAFETY: the IoBuf contract makes `buf` readable for its length
        // while the request is in flight; `dst` is our own bounce buffer.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst.as_mut_ptr(), n) };
        dst = &mut dst[n..];
        advance_bufs(bufs, start, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn file_ctx(path: &std::path::Path, size: usize) -> FileCtx {
        std::fs::write(path, vec![0x5au8; size]).expect("write the file");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open the file");
        FileCtx {
            file,
            path: Arc::from(path),
            block_device: false,
            read_only: false,
            direct: false,
            size: size as u64,
            mem_align: 1,
            offset_align: 1,
            // As on a file system without FALLOC_FL_ZERO_RANGE.
            zero_range_unsupported: AtomicBool::new(true),
        }
    }

    fn zeroes(unmap: bool) -> JobSpec {
        JobSpec {
            id: 1,
            kind: JobKind::WriteZeroes { unmap },
            offset: 64 * 1024,
            len: 200 * 1024,
        }
    }

    #[test]
    fn write_zeroes_without_zero_range_writes_or_punches() {
        let dir = std::env::temp_dir().join(format!("vireo-disk-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the directory");
        let path = dir.join("zeroes.img");
        let size = 512 * 1024;
        let mut scratch = Scratch::default();
        for unmap in [false, true] {
            let file = file_ctx(&path, size);
            file.file.sync_all().expect("sync");
            let before = file.file.metadata().expect("stat").blocks();
            execute(&file, &zeroes(unmap), &mut [], &mut scratch).expect("write-zeroes");
            let data = std::fs::read(&path).expect("read back");
            assert_eq!(data.len(), size);
            assert!(data[..64 * 1024].iter().all(|&b| b == 0x5a));
            assert!(data[64 * 1024..264 * 1024].iter().all(|&b| b == 0));
            assert!(data[264 * 1024..].iter().all(|&b| b == 0x5a));
            let after = file.file.metadata().expect("stat").blocks();
            if unmap {
                assert!(after < before, "with unmap the range is punched out");
            } else {
                assert!(after >= before, "without unmap zeros are written");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
