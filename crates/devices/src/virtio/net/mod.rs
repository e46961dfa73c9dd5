//! virtio-net over a TAP interface (virtio 1.2, section 5.1).
//!
//! Queues: `rx0, tx0, rx1, tx1, ...` (one pair per TAP queue), then a
//! control queue when there is more than one pair (VIRTIO_NET_F_CTRL_VQ and
//! VIRTIO_NET_F_MQ). Every frame carries the 12-byte `virtio_net_hdr_v1` in
//! front, which is also the TAP's header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12),
//! so frames pass between guest and TAP unchanged.
//!
//! # Features
//! MAC, STATUS (link always up), MRG_RXBUF, CSUM and GUEST_CSUM,
//! HOST_TSO4/TSO6/ECN/UFO, GUEST_TSO4/TSO6/ECN/UFO, HOST_USO and
//! GUEST_USO4/USO6 when the kernel's TAP knows USO (probed with
//! TUNSETOFFLOAD), MTU when configured, CTRL_VQ and MQ with several pairs.
//! At activation the TAP's offloads (TUNSETOFFLOAD) are set from the
//! GUEST_* features the driver accepted, dropping USO and then everything
//! if the kernel refuses; received frames with an offload the driver did not
//! accept are dropped rather than passed on.
//!
//! # Transmit (guest to host)
//! Each chain (header, then frame; device-readable only) is written to the
//! pair's TAP with one `writev` straight from guest memory (through a host
//! buffer when it is in more than 64 pieces). Chains with device-writable
//! buffers, shorter than the header or longer than header plus
//! [`MAX_FRAME_LEN`] are dropped. A write that fails, EAGAIN included, drops
//! the frame: TAP writes do not block in practice, and a full host queue is
//! where a NIC drops too. Dropped chains are returned with length 0 and
//! counted ([`NetCounters`]).
//!
//! # Receive (host to guest)
//! On a TAP event, or when the driver adds receive buffers, the device
//! reads frames until the TAP is empty (EAGAIN) or the guest has no
//! buffers. With MRG_RXBUF a frame spans as many chains as it needs
//! (`num_buffers` set accordingly); without, it must fit the first chain or
//! is dropped (the chain stays for the next frame). A frame read while the
//! guest's buffers ran short waits in a per-pair host buffer, and the TAP is
//! not read again until it is delivered; the device then goes on reading,
//! since an edge-triggered watch will not report the frames still queued.
//! One interrupt per batch ([`ActiveQueues::signal_used`]
//! honours EVENT_IDX).
//!
//! # Bounded work
//! A call serves at most `4 * queue size` transmit chains (as
//! [`ActiveQueues::drain`]) or reads that many frames. When it stops with
//! work left, it writes the device's resume eventfd, watched with
//! [`RESUME_TOKEN`], so the event loop calls back after serving others.
//!
//! # Control queue
//! VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (1 to the number of pairs) enables pairs:
//! the TAP queues of disabled pairs are detached (TUNSETQUEUE) so the kernel
//! does not queue frames there; only pair 0 is attached after activation.
//! RX mode and MAC table commands are acknowledged (nothing is filtered);
//! anything else gets VIRTIO_NET_ERR.
//!
//! # A broken driver
//! A malformed chain (see [`queue`](crate::virtio::queue)) or a receive chain
//! with device-readable buffers stops the whole device until reset
//! (DEVICE_NEEDS_RESET), like every virtio device here; packets that are
//! merely unacceptable are dropped and counted. Guest-triggered log lines
//! are rate limited.
//!
//! # Wiring (the monitor)
//! 1. Open the TAP: [`Tap::open_named`] (needs CAP_NET_ADMIN, or a TAP
//!    created beforehand for the monitor's user; `n` queue pairs need a
//!    multi-queue TAP) or [`Tap::from_fd`] for descriptors a privileged
//!    parent opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (one per pair).
//!    Bringing the interface up, its MTU and its bridge are the host
//!    networking's job.
//! 2. [`Net::new`] with a [`NetConfig`], wrap it in the PCI transport, and
//!    hand it the event loop's [`HostEvents`](crate::HostEvents) before the
//!    guest runs. The device registers, at activation, token `i` for TAP
//!    queue `i` and [`RESUME_TOKEN`] for its resume eventfd, and
//!    unregisters them on reset and drop; forward every event to
//!    `host_event(token)`.
//!
//! [`ActiveQueues::signal_used`]: crate::virtio::queue::ActiveQueues::signal_used
//! [`ActiveQueues::drain`]: crate::virtio::queue::ActiveQueues::drain

mod device;
pub mod request;
pub mod tap;

#[cfg(test)]
mod tests;

pub use device::{
    rx_queue, tx_queue, Net, NetConfig, NetCounters, NetError, MAX_QUEUE_PAIRS, MIN_MTU,
    NET_QUEUE_SIZE, RESUME_TOKEN,
};
pub use request::{MAX_FRAME_LEN, NET_HDR_LEN};
pub use tap::{Tap, TapError};
