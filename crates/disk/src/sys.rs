//! Thin wrappers over the Linux system calls and ioctls the crate needs.
//!
//! Everything here returns `io::Result` with the raw OS error; the callers add
//! the file name and the operation.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::IoBuf;

// Block device ioctls missing from the libc crate, encoded as `<linux/fs.h>`
// does for the architectures with the generic ioctl layout (x86_64, aarch64,
// riscv64): `_IOR(0x12, 114, size_t)`, `_IO(0x12, 119)`, `_IO(0x12, 127)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Converts the return value of a system call into an `io::Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Converts the return value of a system call returning a size.
fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// A non-blocking, close-on-exec eventfd used as a completion notifier.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, waking whoever polls the descriptor.
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our own descriptor.
        let ret = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        // The only possible failure is EAGAIN when the counter is about to
        // overflow, and then the descriptor is readable anyway.
        if ret < 0 {
            log::debug!("eventfd write failed: {}", io::Error::last_os_error());
        }
    }

    /// Resets the counter; returns whether it was signalled.
    pub(crate) fn clear(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live local from our own descriptor.
        let ret = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        ret > 0
    }

    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1: forever).
/// Returns whether it is readable.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on the stack.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match check(ret) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Direct I/O alignment from `statx(STATX_DIOALIGN)` (Linux 6.1 for files,
/// 6.11 for block devices): `(memory alignment, offset and length alignment)`,
/// or `None` when the kernel or the file system does not report it.
pub(crate) fn dio_alignment(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    // SAFETY: an all-zero `statx` is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, used with
    // AT_EMPTY_PATH on our descriptor, and `stx` is a writable statx buffer.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret < 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align.max(1), stx.stx_dio_offset_align))
}

/// Size in bytes of a block device (`BLKGETSIZE64`).
pub(crate) fn block_device_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into the live local.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) })?;
    Ok(size)
}

/// Logical (`BLKSSZGET`) or physical (`BLKPBSZGET`) sector size.
fn block_device_int(fd: BorrowedFd<'_>, request: libc::Ioctl) -> io::Result<u32> {
    let mut value: libc::c_uint = 0;
    // SAFETY: both ioctls write one int into the live local.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut value as *mut libc::c_uint) })?;
    Ok(value)
}

pub(crate) fn block_device_logical_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    block_device_int(fd, libc::BLKSSZGET)
}

pub(crate) fn block_device_physical_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    block_device_int(fd, libc::BLKPBSZGET)
}

/// `BLKDISCARD` or `BLKZEROOUT` over `[offset, offset + len)`.
fn block_device_range(fd: RawFd, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: both ioctls read two u64s from the live local array.
    check(unsafe { libc::ioctl(fd, request as _, range.as_ptr()) })?;
    Ok(())
}

pub(crate) fn block_device_discard(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    block_device_range(fd, BLKDISCARD, offset, len)
}

pub(crate) fn block_device_zeroout(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    block_device_range(fd, BLKZEROOUT, offset, len)
}

fn to_off(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// `fallocate(2)`, retried on EINTR.
pub(crate) fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    loop {
        // SAFETY: fallocate takes no pointers.
        match check(unsafe { libc::fallocate(fd, mode, offset, len) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

/// `fdatasync(2)`, retried on EINTR.
pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: fdatasync takes no pointers.
        match check(unsafe { libc::fdatasync(fd) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

/// `preadv(2)` into the buffers, retried on EINTR.
///
/// # Safety
/// Every buffer must be valid for writes of its length (the [`IoBuf`] contract).
pub(crate) unsafe fn preadv(fd: RawFd, bufs: &[IoBuf], offset: u64) -> io::Result<usize> {
    let offset = to_off(offset)?;
    let count = libc::c_int::try_from(bufs.len()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `IoBuf` is a transparent `iovec`; the caller guarantees the
        // memory they describe is writable.
        let ret = unsafe { libc::preadv(fd, IoBuf::as_iovecs(bufs), count, offset) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `pwritev(2)` from the buffers, retried on EINTR.
///
/// # Safety
/// Every buffer must be valid for reads of its length (the [`IoBuf`] contract).
pub(crate) unsafe fn pwritev(fd: RawFd, bufs: &[IoBuf], offset: u64) -> io::Result<usize> {
    let offset = to_off(offset)?;
    let count = libc::c_int::try_from(bufs.len()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `IoBuf` is a transparent `iovec`; the caller guarantees the
        // memory they describe is readable.
        let ret = unsafe { libc::pwritev(fd, IoBuf::as_iovecs(bufs), count, offset) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A zero-initialised heap buffer with a chosen alignment, for O_DIRECT bounce
/// buffers and zero writes.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain owned memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two).
    pub(crate) fn zeroed(len: usize, align: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(1), align)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self { ptr, layout })
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised bytes owned uniquely by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// `pread(2)` into a slice, retried on EINTR.
pub(crate) fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = to_off(offset)?;
    loop {
        // SAFETY: `buf` is a valid writable slice of the given length.
        let ret = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `pwrite(2)` from a slice, retried on EINTR.
pub(crate) fn pwrite(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    let offset = to_off(offset)?;
    loop {
        // SAFETY: `buf` is a valid readable slice of the given length.
        let ret = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset) };
        match check_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
