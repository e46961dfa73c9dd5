//! A TAP interface as a virtio-net backend: one non-blocking, close-on-exec
//! file descriptor per queue pair, opened with IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR (| IFF_MULTI_QUEUE), every frame preceded by the 12-byte
//! `virtio_net_hdr_v1` in both directions.
//!
//! Creating a TAP, or attaching to one the caller does not own, needs
//! CAP_NET_ADMIN; a TAP created beforehand with an owner (`ip tuntap add
//! ... user U`) can be opened by that user. Alternatively a privileged
//! parent opens it and passes the fd ([`Tap::from_fd`]).

use std::fs::OpenOptions;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net as vn;

use super::request::NET_HDR_LEN;

/// Where TAP queues are opened.
const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// A failed TAP operation. Displays as `TAP 'name': STEP`, the cause
/// (usually the errno) following in the error chain.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains NUL or '/'.
    #[error("TAP {0:?}: not a valid interface name (1 to {MAX_NAME_LEN} bytes, no NUL, '/' or whitespace)")]
    InvalidName(String),
    /// A system call failed.
    #[error("TAP '{name}': {step}")]
    Sys {
        name: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// A descriptor passed in is not a TAP queue with a virtio-net header.
    #[error(
        "TAP '{name}': not a TAP queue with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (flags {flags:#x})"
    )]
    NotVnetTap { name: String, flags: u16 },
    /// No queue was asked for.
    #[error("TAP '{0}': at least one queue pair is needed")]
    NoQueues(String),
}

impl TapError {
    fn sys(name: &str, step: &'static str, source: io::Error) -> TapError {
        TapError::Sys {
            name: name.to_owned(),
            step,
            source,
        }
    }

    /// The errno of a failed system call, if that is what this is.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            TapError::Sys { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One queue of a TAP interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    multi_queue: bool,
    /// Whether this queue takes part in the interface's traffic
    /// (TUNSETQUEUE); only meaningful for multi-queue interfaces.
    attached: bool,
}

/// An `ifreq` with `name` (already validated to fit) and zeroed data.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of integers,
    // sockaddrs and a pointer); all zeroes is a valid value of each.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(MAX_NAME_LEN)) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The name in an `ifreq` the kernel filled.
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
}

/// `ioctl(fd, req, &mut ifreq)`.
fn ioctl_ifreq(fd: BorrowedFd<'_>, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `ifr` is a valid, writable ifreq for the duration of the call,
    // which is what the TUN and SIOC ioctls used here read and write.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr as *mut libc::ifreq) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, req, &value)` for ioctls taking a pointer to an int.
fn ioctl_int_ptr(fd: BorrowedFd<'_>, req: libc::Ioctl, value: libc::c_int) -> io::Result<()> {
    let v = value;
    // SAFETY: the ioctl reads one c_int through the pointer, which is valid
    // for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets O_NONBLOCK and FD_CLOEXEC on `fd`.
fn set_nonblocking_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we borrow, with integer arguments only.
    let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let fdfl = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if fdfl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, fdfl | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Retries `f` while it fails with EINTR.
fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Converts a read/write return value.
fn ret(n: isize) -> io::Result<usize> {
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // n >= 0.
    Ok(n as usize)
}

impl Tap {
    /// Opens (creating it if needed) the TAP interface `name` with one
    /// queue per queue pair: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, plus
    /// IFF_MULTI_QUEUE when `queue_pairs > 1` (an existing interface must
    /// have been created the same way). The header size is set to 12
    /// bytes; offloads start off.
    pub fn open_named(name: &str, queue_pairs: usize) -> Result<Vec<Tap>, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        if queue_pairs == 0 {
            return Err(TapError::NoQueues(name.to_owned()));
        }
        let multi_queue = queue_pairs > 1;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut taps = Vec::with_capacity(queue_pairs);
        for _ in 0..queue_pairs {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(TUN_PATH)
                .map_err(|e| TapError::sys(name, "open /dev/net/tun", e))?;
            // std opens with O_CLOEXEC.
            let fd = OwnedFd::from(file);
            let mut ifr = ifreq(name);
            ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
            ioctl_ifreq(fd.as_fd(), libc::TUNSETIFF, &mut ifr)
                .map_err(|e| TapError::sys(name, "TUNSETIFF", e))?;
            let tap = Tap {
                fd,
                name: ifreq_name(&ifr),
                multi_queue,
                attached: true,
            };
            tap.set_vnet_hdr_size()?;
            taps.push(tap);
        }
        Ok(taps)
    }

    /// Takes an already open TAP queue (from a privileged parent, or a
    /// daemon that created the interface). It must have been opened with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (checked with TUNGETIFF). The
    /// descriptor is made non-blocking and close-on-exec and its header size
    /// set to 12 bytes.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let fd_name = format!("fd {}", fd.as_raw_fd());
        let mut ifr = ifreq("");
        ioctl_ifreq(fd.as_fd(), libc::TUNGETIFF, &mut ifr)
            .map_err(|e| TapError::sys(&fd_name, "TUNGETIFF", e))?;
        let name = ifreq_name(&ifr);
        // SAFETY: TUNGETIFF filled ifr_flags (a c_short in the union).
        let flags = unsafe { ifr.ifr_ifru.ifru_flags } as u16;
        let needed = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u16;
        if flags & needed != needed {
            return Err(TapError::NotVnetTap { name, flags });
        }
        set_nonblocking_cloexec(fd.as_fd()).map_err(|e| TapError::sys(&name, "fcntl", e))?;
        let tap = Tap {
            fd,
            name,
            multi_queue: flags & libc::IFF_MULTI_QUEUE as u16 != 0,
            attached: true,
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// A test stand-in: any packet-preserving descriptor (a SOCK_SEQPACKET
    /// socket) with the TAP's read/write semantics; its ioctls fail.
    #[cfg(test)]
    pub(crate) fn for_test(fd: OwnedFd, name: &str, multi_queue: bool) -> Tap {
        Tap {
            fd,
            name: name.to_owned(),
            multi_queue,
            attached: true,
        }
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        ioctl_int_ptr(
            self.fd.as_fd(),
            libc::TUNSETVNETHDRSZ,
            NET_HDR_LEN as libc::c_int,
        )
        .map_err(|e| TapError::sys(&self.name, "TUNSETVNETHDRSZ", e))?;
        // virtio 1.x headers are little-endian; the TAP uses host order
        // unless told otherwise.
        #[cfg(target_endian = "big")]
        ioctl_int_ptr(self.fd.as_fd(), libc::TUNSETVNETLE, 1)
            .map_err(|e| TapError::sys(&self.name, "TUNSETVNETLE", e))?;
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the interface has several queues (IFF_MULTI_QUEUE).
    pub fn is_multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// Sets the offloads the TAP may use on frames it hands over
    /// (TUN_F_*: TUNSETOFFLOAD), exactly.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(TapError::sys(
                &self.name,
                "TUNSETOFFLOAD",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Sets as many of `wanted` offloads as the kernel knows: when it
    /// refuses the set (EINVAL: too old for USO), retries without
    /// TUN_F_USO4/6, then with none. Returns the flags set.
    pub fn set_offloads_best(&self, wanted: u32) -> Result<u32, TapError> {
        let mut last = None;
        for flags in offload_fallbacks(wanted) {
            match self.set_offload(flags) {
                Ok(()) => return Ok(flags),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        // offload_fallbacks ends with 0, which only fails for reasons
        // other than EINVAL, returned above; keep the last error anyway.
        Err(last.unwrap_or_else(|| {
            TapError::sys(
                &self.name,
                "TUNSETOFFLOAD",
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        }))
    }

    /// Whether the kernel can pass UDP segmentation offload (USO) frames
    /// through this TAP: probed by setting TUN_F_CSUM | TUN_F_USO4 |
    /// TUN_F_USO6 (Linux 6.2 and later). Leaves the offloads off.
    pub fn supports_uso(&self) -> bool {
        let ok = self
            .set_offload(libc::TUN_F_CSUM | libc::TUN_F_USO4 | libc::TUN_F_USO6)
            .is_ok();
        let _ = self.set_offload(0);
        ok
    }

    /// Attaches this queue to the interface's traffic or detaches it
    /// (TUNSETQUEUE; multi-queue interfaces only, a no-op otherwise or when
    /// already in that state). A detached queue gets no frames and accepts
    /// none.
    pub fn set_queue_enabled(&mut self, enabled: bool) -> Result<(), TapError> {
        if !self.multi_queue || self.attached == enabled {
            return Ok(());
        }
        let mut ifr = ifreq("");
        ifr.ifr_ifru.ifru_flags = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        } as libc::c_short;
        ioctl_ifreq(self.fd.as_fd(), libc::TUNSETQUEUE, &mut ifr)
            .map_err(|e| TapError::sys(&self.name, "TUNSETQUEUE", e))?;
        self.attached = enabled;
        Ok(())
    }

    /// Whether this queue is attached (see [`Tap::set_queue_enabled`]).
    pub fn is_queue_enabled(&self) -> bool {
        self.attached
    }

    /// Reads one frame (header first) into `buf`. `WouldBlock` when none is
    /// queued. Returns the frame's length, which the kernel reports in full
    /// even when the frame was cut to fit `buf` (then more than
    /// `buf.len()`).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry_eintr(|| {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            ret(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
        })
    }

    /// Reads one frame (header first) into `bufs`, in order; the length is
    /// as for [`Tap::read`].
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let n = bufs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        retry_eintr(|| {
            // SAFETY: IoSliceMut is ABI-compatible with iovec and each one
            // describes a buffer valid for writes; `n` is at most their
            // number.
            ret(unsafe { libc::readv(self.fd.as_raw_fd(), bufs.as_ptr().cast(), n) })
        })
    }

    /// Writes one frame (header first) gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        retry_eintr(|| {
            // SAFETY: IoSlice is ABI-compatible with iovec and each one
            // describes a buffer valid for reads; `n` is at most their
            // number.
            ret(unsafe { libc::writev(self.fd.as_raw_fd(), bufs.as_ptr().cast(), n) })
        })
    }

    /// Writes one frame gathered from raw `iovecs` (guest memory).
    ///
    /// # Safety
    /// Every iovec must describe memory that stays mapped and readable for
    /// the duration of the call. (Its contents may change concurrently: only
    /// the kernel reads it.)
    pub unsafe fn writev_raw(&self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let n = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        retry_eintr(|| {
            // SAFETY: the caller guarantees the iovecs are readable; `n` is
            // at most their number.
            ret(unsafe { libc::writev(self.fd.as_raw_fd(), iovecs.as_ptr(), n) })
        })
    }

    /// Writes one frame (header first).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.writev(&[IoSlice::new(buf)])
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The TAP offloads (TUN_F_*) matching the receive offloads a driver
/// accepted: the TAP may then hand over frames with partial checksums
/// (GUEST_CSUM) and TSO (GUEST_TSO4/6, GUEST_ECN) or USO (GUEST_USO4 and
/// USO6 together, as the kernel requires) segments. Everything needs
/// checksum offload; UFO is accepted by the kernel but never produced.
pub fn tun_offloads(features: u64) -> u32 {
    let has = |f: u32| features & bit(f) != 0;
    if !has(vn::VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(vn::VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(vn::VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(vn::VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if has(vn::VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    if has(vn::VIRTIO_NET_F_GUEST_USO4) && has(vn::VIRTIO_NET_F_GUEST_USO6) {
        flags |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
    }
    flags
}

/// What [`Tap::set_offloads_best`] tries, in order: `wanted`, without USO,
/// none. Every step only removes offloads, so the TAP never produces one
/// the driver did not accept.
pub fn offload_fallbacks(wanted: u32) -> impl Iterator<Item = u32> {
    let no_uso = wanted & !(libc::TUN_F_USO4 | libc::TUN_F_USO6);
    let mut steps = vec![wanted];
    if no_uso != wanted {
        steps.push(no_uso);
    }
    if no_uso != 0 {
        steps.push(0);
    }
    steps.into_iter()
}

/// Host-side helpers for tests: bringing an interface up, AF_PACKET
/// sockets on it, and a SOCK_SEQPACKET stand-in for a TAP queue.
#[cfg(test)]
pub(crate) mod host {
    use super::*;
    use std::os::fd::FromRawFd;

    fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
        // SAFETY: socket() with integer arguments; a non-negative result is
        // a new descriptor we own.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket() and is owned by nobody
        // else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Brings interface `name` up (SIOCSIFFLAGS | IFF_UP).
    pub fn link_up(name: &str) -> io::Result<()> {
        let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        let mut ifr = ifreq(name);
        ioctl_ifreq(s.as_fd(), libc::SIOCGIFFLAGS, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS filled ifr_flags.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ioctl_ifreq(s.as_fd(), libc::SIOCSIFFLAGS, &mut ifr)
    }

    /// The index of interface `name`.
    pub fn ifindex(name: &str) -> io::Result<i32> {
        let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        let mut ifr = ifreq(name);
        ioctl_ifreq(s.as_fd(), libc::SIOCGIFINDEX, &mut ifr)?;
        // SAFETY: SIOCGIFINDEX filled ifr_ifindex.
        Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
    }

    /// A non-blocking AF_PACKET raw socket bound to interface `ifindex`,
    /// seeing every protocol.
    pub fn packet_socket(ifindex: i32) -> io::Result<OwnedFd> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let s = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::c_int::from(proto),
        )?;
        let sll = sockaddr_ll(ifindex, proto);
        // SAFETY: `sll` is a valid sockaddr_ll of the given length.
        let r = unsafe {
            libc::bind(
                s.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    fn sockaddr_ll(ifindex: i32, proto_be: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto_be;
        sll.sll_ifindex = ifindex;
        sll
    }

    /// Sends `frame` out of interface `ifindex` through packet socket `s`.
    pub fn send_frame(s: &OwnedFd, ifindex: i32, frame: &[u8]) -> io::Result<usize> {
        let mut sll = sockaddr_ll(ifindex, (libc::ETH_P_ALL as u16).to_be());
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` is readable for its length and `sll` is a valid
        // sockaddr_ll of the given length.
        ret(unsafe {
            libc::sendto(
                s.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })
    }

    /// Waits up to `ms` milliseconds for `fd` to become readable.
    pub fn wait_readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }

    /// Receives one packet from `fd` (non-blocking).
    pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is writable for its length.
        ret(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
    }

    /// A connected, non-blocking SOCK_SEQPACKET pair: a stand-in for a TAP
    /// queue (one packet per read and write) and its far side.
    pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is valid for two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned by
        // nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Whether an error means "no TAP support or no privilege here".
    pub fn unavailable(e: &TapError) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EACCES | libc::ENOENT | libc::ENODEV | libc::ENXIO)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSUM: u64 = 1 << vn::VIRTIO_NET_F_GUEST_CSUM;
    const TSO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO4;
    const TSO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO6;
    const ECN: u64 = 1 << vn::VIRTIO_NET_F_GUEST_ECN;
    const UFO: u64 = 1 << vn::VIRTIO_NET_F_GUEST_UFO;
    const USO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_USO4;
    const USO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_USO6;

    #[test]
    fn offloads_follow_the_guest_features() {
        use libc::{
            TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, TUN_F_USO4, TUN_F_USO6,
        };
        assert_eq!(tun_offloads(0), 0);
        // Nothing without checksum offload.
        assert_eq!(tun_offloads(TSO4 | TSO6 | ECN | UFO | USO4 | USO6), 0);
        assert_eq!(tun_offloads(CSUM), TUN_F_CSUM);
        assert_eq!(
            tun_offloads(CSUM | TSO4 | ECN),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN
        );
        // ECN alone means nothing to the kernel (and is refused by it).
        assert_eq!(tun_offloads(CSUM | ECN), TUN_F_CSUM);
        assert_eq!(
            tun_offloads(CSUM | TSO6 | UFO),
            TUN_F_CSUM | TUN_F_TSO6 | TUN_F_UFO
        );
        // USO only as a pair.
        assert_eq!(tun_offloads(CSUM | USO4), TUN_F_CSUM);
        assert_eq!(
            tun_offloads(CSUM | USO4 | USO6),
            TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6
        );
        let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_USO4 | TUN_F_USO6;
        assert_eq!(
            offload_fallbacks(all).collect::<Vec<_>>(),
            vec![all, TUN_F_CSUM | TUN_F_TSO4, 0]
        );
        assert_eq!(
            offload_fallbacks(TUN_F_CSUM).collect::<Vec<_>>(),
            vec![TUN_F_CSUM, 0]
        );
        assert_eq!(offload_fallbacks(0).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn names_are_checked_and_errors_say_where() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "nul\0"] {
            assert!(matches!(
                Tap::open_named(bad, 1),
                Err(TapError::InvalidName(_))
            ));
        }
        assert!(matches!(
            Tap::open_named("vtt-none", 0),
            Err(TapError::NoQueues(_))
        ));
        let e = TapError::sys(
            "vtap0",
            "TUNSETIFF",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(e.to_string(), "TAP 'vtap0': TUNSETIFF");
        let cause = std::error::Error::source(&e).expect("a cause").to_string();
        assert!(cause.starts_with("Operation not permitted"), "{cause}");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn from_fd_refuses_what_is_not_a_tap() {
        let (a, _b) = host::seqpacket_pair();
        let e = Tap::from_fd(a).expect_err("a socket is no TAP");
        assert!(e.to_string().contains("TUNGETIFF"), "{e}");
    }

    #[test]
    fn real_tap_queues() {
        let name = format!("vtt{}q", std::process::id() % 10000);
        let taps = match Tap::open_named(&name, 2) {
            Ok(t) => t,
            Err(e) if host::unavailable(&e) => {
                let cause = std::error::Error::source(&e).map(|c| c.to_string());
                eprintln!(
                    "SKIPPED: cannot create TAP {name}: {e}: {}",
                    cause.unwrap_or_default()
                );
                return;
            }
            Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
        };
        assert_eq!(taps.len(), 2);
        assert!(taps.iter().all(|t| t.name() == name && t.is_multi_queue()));
        // Non-blocking: nothing queued yet.
        let mut buf = [0u8; 64];
        let e = taps[0].read(&mut buf).expect_err("nothing queued");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // The same interface again, from a descriptor: a dup of queue 1.
        let dup = taps[1].fd.try_clone().expect("dup");
        let again = Tap::from_fd(dup).expect("a vnet TAP");
        assert_eq!(again.name(), name);
        assert!(again.is_multi_queue());
        drop(again);
        // Offloads: the basic set is always known; USO maybe.
        let mut taps = taps;
        let want = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_USO4 | libc::TUN_F_USO6;
        let set = taps[0].set_offloads_best(want).expect("offloads");
        assert_eq!(
            set & !(libc::TUN_F_USO4 | libc::TUN_F_USO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        assert_eq!(set == want, taps[0].supports_uso());
        taps[0].set_offload(0).expect("off");
        // Queue 1 can leave and rejoin; asking twice is a no-op.
        taps[1].set_queue_enabled(false).expect("detach");
        taps[1].set_queue_enabled(false).expect("no-op");
        assert!(!taps[1].is_queue_enabled());
        taps[1].set_queue_enabled(true).expect("attach");
        // Opening it single-queue now fails with a clear message.
        let e = Tap::open_named(&name, 1).expect_err("flags differ");
        assert!(
            e.to_string()
                .starts_with(&format!("TAP '{name}': TUNSETIFF")),
            "{e}"
        );
    }
}
