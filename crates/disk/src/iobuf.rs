//! [`IoBuf`]: a region of memory (usually guest RAM) that a request reads
//! into or writes from, passed to the kernel without copying.

use std::fmt;

/// One contiguous buffer of a request: a pointer and a length, laid out
/// exactly like the C `struct iovec`, so a `&[IoBuf]` goes straight to
/// `preadv(2)` or io_uring.
///
/// An `IoBuf` does not borrow its memory: virtio-blk builds them from guest
/// memory, whose lifetime the borrow checker cannot see. The promise that the
/// memory stays valid is made once, by the `unsafe` constructor.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct IoBuf(libc::iovec);

// SAFETY: an IoBuf is only an address and a length; the constructor's contract
// makes the memory valid for use from any thread while requests are in flight.
unsafe impl Send for IoBuf {}
// SAFETY: as above; `&IoBuf` gives no access to the memory.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// Describes `len` bytes at `ptr`.
    ///
    /// # Safety
    /// For as long as any request naming this buffer is in flight (from
    /// [`DiskQueue::enqueue`](crate::DiskQueue::enqueue) until its completion
    /// has been reaped, or its queue has been dropped), the memory must stay
    /// mapped and valid for reads (requests that write to the disk) or for
    /// writes (requests that read from the disk), from any thread, and must
    /// not be read or written through Rust references while the disk writes
    /// into it. Guest RAM that lives as long as the queue satisfies this.
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize) -> Self {
        Self(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        })
    }

    /// Describes a mutable byte slice.
    ///
    /// # Safety
    /// The same contract as [`IoBuf::from_raw_parts`]: the slice's borrow ends
    /// here, so the caller must keep the memory alive and untouched until the
    /// requests using it have completed.
    pub unsafe fn from_slice(slice: &mut [u8]) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { Self::from_raw_parts(slice.as_mut_ptr(), slice.len()) }
    }

    /// The start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.iov_base.cast()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.iov_len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iov_len == 0
    }

    /// The buffers as the C `iovec` array they already are.
    pub fn as_iovecs(bufs: &[IoBuf]) -> *const libc::iovec {
        // `IoBuf` is `repr(transparent)` over `iovec`.
        bufs.as_ptr().cast()
    }

    /// Drops the first `n` bytes (which must not exceed the length).
    pub(crate) fn advance(&mut self, n: usize) {
        let n = n.min(self.0.iov_len);
        self.0.iov_base = self.as_ptr().wrapping_add(n).cast();
        self.0.iov_len -= n;
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoBuf({:p}, {})", self.0.iov_base, self.0.iov_len)
    }
}

/// Drops the first `n` bytes of a buffer list whose unconsumed part starts at
/// `*start`, after a short transfer: whole buffers are skipped by moving
/// `*start`, a partly used one is shortened in place.
pub(crate) fn advance_bufs(bufs: &mut [IoBuf], start: &mut usize, mut n: usize) {
    while n > 0 && *start < bufs.len() {
        let buf = &mut bufs[*start];
        if n < buf.len() {
            buf.advance(n);
            return;
        }
        n -= buf.len();
        *start += 1;
    }
    // Skip any empty buffers left at the front.
    while *start < bufs.len() && bufs[*start].is_empty() {
        *start += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_skips_whole_buffers_and_shortens_the_next() {
        let mut mem = [0u8; 64];
        let base = mem.as_mut_ptr();
        // SAFETY: `mem` outlives the buffers and is not accessed through them.
        let mut bufs = unsafe {
            [
                IoBuf::from_raw_parts(base, 8),
                IoBuf::from_raw_parts(base.add(8), 16),
                IoBuf::from_raw_parts(base.add(24), 0),
                IoBuf::from_raw_parts(base.add(24), 40),
            ]
        };
        let mut start = 0;
        advance_bufs(&mut bufs, &mut start, 12);
        assert_eq!(start, 1);
        assert_eq!(bufs[1].len(), 12);
        assert_eq!(bufs[1].as_ptr(), base.wrapping_add(12));
        advance_bufs(&mut bufs, &mut start, 12);
        assert_eq!(start, 3, "the empty buffer is skipped too");
        advance_bufs(&mut bufs, &mut start, 40);
        assert_eq!(start, 4);
    }
}
