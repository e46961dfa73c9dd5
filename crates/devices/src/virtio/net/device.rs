//! The virtio-net device over TAP queues.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net as vn;
use vm_memory::volatile_memory::PtrGuard;
use vm_memory::{Bytes, GuestMemory, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{
    check_tx, exceeds_mtu, parse_ctrl, prepare_rx_header, rx_fit, set_num_buffers, CtrlCommand,
    RxFit, CTRL_ERR, CTRL_OK, CTRL_READ_LEN, MAX_PACKET_LEN, NET_HDR_LEN,
};
use super::tap::{tun_offloads, Tap};
use crate::ratelimit::RateLimitedLog;
use crate::virtio::queue::{ActiveQueues, Chain, ChainError, GuestBuffer, QueueError};
use crate::virtio::{
    ActivateError, GuestMemoryMmap, Queue, VirtioDevice, VirtioInterrupt, TYPE_NET,
};
use crate::{guest_debug, guest_warn, HostEvents};

/// Default size of every queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Most queue pairs (the Linux TAP limit is 256 queues).
pub const MAX_QUEUE_PAIRS: usize = 256;
/// The [`HostEvents`] token of the device's own resume eventfd (TAP queue
/// `i` uses token `i`).
pub const RESUME_TOKEN: u32 = u32::MAX;
/// Smallest MTU a driver may be given (virtio 1.2, 5.1.4.1: 68).
pub const MIN_MTU: u16 = 68;
/// Bytes of configuration space: mac (6), status, max_virtqueue_pairs, mtu
/// (le16 each).
const CONFIG_SIZE: usize = 12;
/// Guest memory pieces a transmitted frame may have and still be written
/// straight from guest memory; more are gathered into a host buffer first.
const MAX_TX_IOVECS: usize = 64;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Index of the receive queue of pair `pair`.
pub const fn rx_queue(pair: u16) -> u16 {
    2 * pair
}

/// Index of the transmit queue of pair `pair`.
pub const fn tx_queue(pair: u16) -> u16 {
    2 * pair + 1
}

/// What the device offers on top of the per-configuration features.
const BASE_FEATURES: u64 = bit(vn::VIRTIO_NET_F_MAC)
    | bit(vn::VIRTIO_NET_F_STATUS)
    | bit(vn::VIRTIO_NET_F_MRG_RXBUF)
    | bit(vn::VIRTIO_NET_F_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_CSUM)
    | bit(vn::VIRTIO_NET_F_HOST_TSO4)
    | bit(vn::VIRTIO_NET_F_HOST_TSO6)
    | bit(vn::VIRTIO_NET_F_HOST_ECN)
    | bit(vn::VIRTIO_NET_F_HOST_UFO)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO4)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO6)
    | bit(vn::VIRTIO_NET_F_GUEST_ECN)
    | bit(vn::VIRTIO_NET_F_GUEST_UFO);
/// USO in both directions, offered when the kernel knows it.
const USO_FEATURES: u64 = bit(vn::VIRTIO_NET_F_HOST_USO)
    | bit(vn::VIRTIO_NET_F_GUEST_USO4)
    | bit(vn::VIRTIO_NET_F_GUEST_USO6);
/// Multi-queue (needs the control queue).
const MQ_FEATURES: u64 = bit(vn::VIRTIO_NET_F_CTRL_VQ) | bit(vn::VIRTIO_NET_F_MQ);

/// How to build a [`Net`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address; `None`: a random locally administered
    /// 52:54:00:xx:xx:xx.
    pub mac: Option<[u8; 6]>,
    /// Size of every queue: a power of two in 2..=32768.
    pub queue_size: u16,
    /// An MTU to give the driver (VIRTIO_NET_F_MTU), at least [`MIN_MTU`].
    /// Set the TAP interface's MTU to match.
    pub mtu: Option<u16>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mac: None,
            queue_size: NET_QUEUE_SIZE,
            mtu: None,
        }
    }
}

/// Why a [`Net`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No TAP queue, or too many.
    #[error("virtio-net needs 1 to {MAX_QUEUE_PAIRS} TAP queues, got {0}")]
    QueuePairs(usize),
    /// Several queue pairs over a single-queue TAP.
    #[error(
        "TAP '{0}' is not multi-queue (IFF_MULTI_QUEUE), but several queue pairs were asked for"
    )]
    NotMultiQueue(String),
    /// A queue size that is not a power of two in 2..=32768.
    #[error("virtio-net queue size {0} is not a power of two in 2..=32768")]
    QueueSize(u16),
    /// An MTU below [`MIN_MTU`].
    #[error("virtio-net MTU {0} is below {MIN_MTU}")]
    Mtu(u16),
    /// The resume eventfd could not be created.
    #[error("virtio-net: creating the resume eventfd")]
    EventFd(#[source] io::Error),
}

/// Packet counters since the device was built (they survive resets).
/// Bytes are frame bytes, without the virtio header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames given to the guest.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames from the TAP the guest could not take (too big for its
    /// buffers, offloads it did not accept, over its MTU, a TAP read error).
    pub rx_dropped: u64,
    /// Frames sent to the TAP.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest frames not sent (malformed or oversized chains, TAP write
    /// errors including EAGAIN).
    pub tx_dropped: u64,
}

/// Receive state of one queue pair.
#[derive(Default)]
struct RxState {
    /// Host buffer for one packet, [`MAX_PACKET_LEN`] bytes once used.
    frame: Vec<u8>,
    /// Bytes of the packet waiting in `frame` (0: none).
    len: usize,
    /// Chains taken from the receive queue and not used yet (a packet
    /// spanning several with mergeable buffers, or one too small for the
    /// last packet without them).
    held: Vec<Chain>,
    /// The TAP may have frames queued: no EAGAIN since its last event.
    readable: bool,
}

impl RxState {
    fn clear(&mut self) {
        self.len = 0;
        self.held.clear();
        self.readable = false;
    }
}

struct Pair {
    tap: Tap,
    rx: RxState,
}

/// A virtio network card over a TAP interface, one TAP queue per queue
/// pair. See the module documentation for the wiring.
pub struct Net {
    pairs: Vec<Pair>,
    mac: [u8; 6],
    mtu: Option<u16>,
    queue_sizes: Vec<u16>,
    device_features: u64,
    /// Frames read from one TAP per call before yielding.
    rx_budget: usize,
    events: Option<Arc<dyn HostEvents>>,
    watched: bool,
    /// Written when a call stopped with work left; watched as
    /// [`RESUME_TOKEN`].
    resume: EventFd,
    /// Host buffer for frames in too many pieces, allocated on first use.
    tx_bounce: Vec<u8>,
    counters: NetCounters,
    log: RateLimitedLog,
    // Live state, from activation to reset.
    active: Option<ActiveQueues>,
    /// Features the driver accepted.
    acked: u64,
    /// Pairs the driver can use: all with MQ, else 1.
    usable_pairs: usize,
    /// Pairs the driver enabled (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    active_pairs: usize,
    ctrl_queue: Option<u16>,
}

/// A random locally administered unicast address in 52:54:00:xx:xx:xx.
fn random_mac() -> [u8; 6] {
    let mut b = [0u8; 3];
    // SAFETY: `b` is valid for writes of its 3 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        // No entropy yet (early boot): pid and clock still tell VMs apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let x = t ^ std::process::id().rotate_left(13);
        b.copy_from_slice(&x.to_le_bytes()[..3]);
    }
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

impl Net {
    /// A network card over `taps` (one per queue pair; several must be
    /// queues of one multi-queue TAP). Offers USO if the TAP's kernel
    /// supports it.
    pub fn new(taps: Vec<Tap>, config: NetConfig) -> Result<Net, NetError> {
        let n = taps.len();
        if n == 0 || n > MAX_QUEUE_PAIRS {
            return Err(NetError::QueuePairs(n));
        }
        if n > 1 {
            if let Some(t) = taps.iter().find(|t| !t.is_multi_queue()) {
                return Err(NetError::NotMultiQueue(t.name().to_owned()));
            }
        }
        let qs = config.queue_size;
        if !qs.is_power_of_two() || !(2..=32768).contains(&qs) {
            return Err(NetError::QueueSize(qs));
        }
        if let Some(mtu) = config.mtu.filter(|&m| m < MIN_MTU) {
            return Err(NetError::Mtu(mtu));
        }
        let resume = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(NetError::EventFd)?;
        let mut device_features = BASE_FEATURES;
        // The probe leaves the offloads off, as they must be until a
        // driver accepts some.
        if taps[0].supports_uso() {
            device_features |= USO_FEATURES;
        }
        if config.mtu.is_some() {
            device_features |= bit(vn::VIRTIO_NET_F_MTU);
        }
        let mut queue_sizes = vec![qs; 2 * n];
        if n > 1 {
            device_features |= MQ_FEATURES;
            queue_sizes.push(qs);
        }
        Ok(Net {
            pairs: taps
                .into_iter()
                .map(|tap| Pair {
                    tap,
                    rx: RxState::default(),
                })
                .collect(),
            mac: config.mac.unwrap_or_else(random_mac),
            mtu: config.mtu,
            queue_sizes,
            device_features,
            rx_budget: 4 * usize::from(qs),
            events: None,
            watched: false,
            resume,
            tx_bounce: Vec::new(),
            counters: NetCounters::default(),
            log: RateLimitedLog::default(),
            active: None,
            acked: 0,
            usable_pairs: 1,
            active_pairs: 1,
            ctrl_queue: None,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The TAP interface's name.
    pub fn tap_name(&self) -> &str {
        self.pairs[0].tap.name()
    }

    /// Queue pairs (TAP queues).
    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Queue pairs the driver uses now (1 until it asks for more).
    pub fn active_queue_pairs(&self) -> usize {
        self.active_pairs
    }

    /// Packet counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether the device gave up on the driver (needs reset).
    pub fn is_broken(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.is_broken())
    }

    /// TAP queue `i` (tests look at its attachment).
    #[cfg(test)]
    pub(crate) fn tap(&self, i: usize) -> &Tap {
        &self.pairs[i].tap
    }

    fn has(&self, feature: u32) -> bool {
        self.acked & bit(feature) != 0
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(vn::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // pairs <= MAX_QUEUE_PAIRS.
        c[8..10].copy_from_slice(&(self.pairs.len() as u16).to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    fn watch(&mut self) {
        let Some(events) = self.events.clone() else {
            return;
        };
        if self.watched {
            return;
        }
        for (i, p) in self.pairs.iter().enumerate() {
            // i < MAX_QUEUE_PAIRS.
            if let Err(e) = events.watch(p.tap.as_raw_fd(), i as u32) {
                guest_warn!(
                    self.log,
                    "virtio-net: TAP '{}': cannot watch queue {i}: {e}; its frames will not be received",
                    p.tap.name()
                );
            }
        }
        if let Err(e) = events.watch(self.resume.as_raw_fd(), RESUME_TOKEN) {
            guest_warn!(self.log, "virtio-net: cannot watch the resume eventfd: {e}");
        }
        self.watched = true;
    }

    fn unwatch(&mut self) {
        let Some(events) = self.events.as_ref() else {
            return;
        };
        if !std::mem::take(&mut self.watched) {
            return;
        }
        for p in &self.pairs {
            events.unwatch(p.tap.as_raw_fd());
        }
        events.unwatch(self.resume.as_raw_fd());
    }

    /// Asks the event loop to call back (through [`RESUME_TOKEN`]): a call
    /// stopped at its budget with work left.
    fn schedule_resume(&self) {
        if self.watched {
            // Only fails when the counter would overflow: an event is then
            // pending anyway.
            let _ = self.resume.write(1);
        }
    }

    /// Attaches the TAP queues of the first `n` pairs, detaches the others
    /// (so the kernel does not queue frames where nobody reads).
    fn set_active_pairs(&mut self, n: usize) {
        for (i, p) in self.pairs.iter_mut().enumerate() {
            let on = i < n;
            if let Err(e) = p.tap.set_queue_enabled(on) {
                guest_warn!(self.log, "virtio-net: {e}: {}", io_cause(&e));
            }
            if on && i >= self.active_pairs {
                // Newly enabled: frames may be queued already.
                p.rx.readable = true;
            }
        }
        self.active_pairs = n;
    }

    fn process_rx(&mut self, pair: usize) {
        if pair >= self.active_pairs {
            return;
        }
        // pair < MAX_QUEUE_PAIRS.
        let q = rx_queue(pair as u16);
        let Some(active) = self.active.as_mut().filter(|a| a.usable(q)) else {
            return;
        };
        let mut ctx = RxContext {
            features: self.acked,
            mtu: self
                .mtu
                .filter(|_| self.acked & bit(vn::VIRTIO_NET_F_MTU) != 0),
            budget: self.rx_budget,
            counters: &mut self.counters,
            log: &self.log,
        };
        match receive(active, q, &mut self.pairs[pair], &mut ctx) {
            Ok(RxOutcome::Budget) => self.schedule_resume(),
            Ok(_) => {}
            Err(e) => active.fail(q, &e),
        }
    }

    fn process_tx(&mut self, pair: usize) {
        // pair < MAX_QUEUE_PAIRS.
        let q = tx_queue(pair as u16);
        let Some(active) = self.active.as_mut().filter(|a| a.usable(q)) else {
            return;
        };
        let Some(p) = self.pairs.get(pair) else {
            return;
        };
        let mut tx = TxContext {
            tap: &p.tap,
            bounce: &mut self.tx_bounce,
            counters: &mut self.counters,
            log: &self.log,
        };
        let res = active
            .drain(q, |mem, chain| {
                transmit(&mut tx, mem, chain)?;
                Ok(0)
            })
            // Chains left after draining: the budget ran out.
            .and_then(|_| active.has_available(q));
        match res {
            Ok(true) => self.schedule_resume(),
            Ok(false) => {}
            Err(e) => active.fail(q, &e),
        }
    }

    fn process_ctrl(&mut self) {
        let Some(q) = self.ctrl_queue else {
            return;
        };
        let Some(mut active) = self.active.take() else {
            return;
        };
        if !active.usable(q) {
            self.active = Some(active);
            return;
        }
        let before = self.active_pairs;
        let res = active
            .drain(q, |mem, chain| self.serve_ctrl(mem, chain))
            .and_then(|_| active.has_available(q));
        let more = match res {
            Ok(more) => more,
            Err(e) => {
                active.fail(q, &e);
                false
            }
        };
        self.active = Some(active);
        if more {
            self.schedule_resume();
        }
        for p in before..self.active_pairs {
            self.process_rx(p);
        }
    }

    /// Serves one control command; returns the bytes written (the ack).
    fn serve_ctrl(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> Result<u32, QueueError> {
        let Some(ack) = chain.writable.first() else {
            guest_debug!(
                self.log,
                "virtio-net: control command without a status buffer; ignored"
            );
            return Ok(0);
        };
        let mut data = [0u8; CTRL_READ_LEN];
        let got = read_prefix(mem, &chain.readable, &mut data)?;
        let status = match parse_ctrl(&data[..got]) {
            CtrlCommand::MqPairsSet(n)
                if self.usable_pairs > 1 && (1..=self.pairs.len()).contains(&usize::from(n)) =>
            {
                self.set_active_pairs(usize::from(n));
                CTRL_OK
            }
            // No filtering: the TAP delivers what the host sends, a superset
            // of any mode the driver asks for.
            CtrlCommand::RxMode { .. } | CtrlCommand::MacTableSet => CTRL_OK,
            cmd => {
                guest_debug!(self.log, "virtio-net: control command {cmd:?} refused");
                CTRL_ERR
            }
        };
        mem.write_obj(status, ack.addr).map_err(|_| outside(ack))?;
        Ok(1)
    }
}

fn io_cause(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

fn outside(b: &GuestBuffer) -> QueueError {
    ChainError::OutsideMemory {
        addr: b.addr.0,
        len: b.len,
    }
    .into()
}

/// Reads the first bytes of `bufs` into `out`; returns how many.
fn read_prefix(
    mem: &GuestMemoryMmap,
    bufs: &[GuestBuffer],
    out: &mut [u8],
) -> Result<usize, QueueError> {
    let mut got = 0;
    for b in bufs {
        if got == out.len() {
            break;
        }
        let n = (out.len() - got).min(b.len as usize);
        mem.read_slice(&mut out[got..got + n], b.addr)
            .map_err(|_| outside(b))?;
        got += n;
    }
    Ok(got)
}

struct TxContext<'a> {
    tap: &'a Tap,
    bounce: &'a mut Vec<u8>,
    counters: &'a mut NetCounters,
    log: &'a RateLimitedLog,
}

/// Sends one transmit chain to the TAP. A bad but well-formed chain, or a
/// failed write, drops the frame (counted); only guest memory errors are
/// errors.
fn transmit(
    tx: &mut TxContext<'_>,
    mem: &GuestMemoryMmap,
    chain: &Chain,
) -> Result<(), QueueError> {
    let len = match check_tx(chain) {
        Ok(len) => len,
        Err(why) => {
            tx.counters.tx_dropped += 1;
            guest_debug!(
                tx.log,
                "virtio-net: TAP '{}': {why}; dropped",
                tx.tap.name()
            );
            return Ok(());
        }
    };
    match send_gather(tx.tap, mem, &chain.readable, len, tx.bounce)? {
        Ok(_) => {
            tx.counters.tx_packets += 1;
            tx.counters.tx_bytes += (len - NET_HDR_LEN) as u64;
        }
        Err(e) => {
            // EAGAIN included: a TAP write only blocks when the host's
            // socket buffer is full, and dropping is what a NIC does then.
            tx.counters.tx_dropped += 1;
            guest_debug!(
                tx.log,
                "virtio-net: TAP '{}': write of {len} bytes failed: {e}; dropped",
                tx.tap.name()
            );
        }
    }
    Ok(())
}

/// Writes the `len` bytes of `bufs` to `tap` as one frame: straight from
/// guest memory when it is in at most [`MAX_TX_IOVECS`] pieces, else
/// through `bounce`.
fn send_gather(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    bufs: &[GuestBuffer],
    len: usize,
    bounce: &mut Vec<u8>,
) -> Result<io::Result<usize>, QueueError> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovecs = [empty; MAX_TX_IOVECS];
    // Keep the guards (which pin foreign mappings, where there are any)
    // until the write is done.
    let mut guards: [Option<PtrGuard>; MAX_TX_IOVECS] = [const { None }; MAX_TX_IOVECS];
    let mut n = 0;
    let mut fits = true;
    'gather: for b in bufs {
        let slices = mem
            .get_slices(b.addr, b.len as usize, Permissions::Read)
            .map_err(|_| outside(b))?;
        for s in slices {
            let s = s.map_err(|_| outside(b))?;
            if n == MAX_TX_IOVECS {
                fits = false;
                break 'gather;
            }
            let g = s.ptr_guard();
            iovecs[n] = libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            };
            guards[n] = Some(g);
            n += 1;
        }
    }
    if fits {
        // SAFETY: each iovec covers a slice of guest memory checked to be
        // mapped, and `mem` (which keeps the mappings) is borrowed, and the
        // guards held, until the call returns.
        return Ok(unsafe { tap.writev_raw(&iovecs[..n]) });
    }
    if bounce.len() < MAX_PACKET_LEN {
        bounce.resize(MAX_PACKET_LEN, 0);
    }
    // len <= MAX_PACKET_LEN (check_tx).
    let mut off = 0;
    for b in bufs {
        let k = b.len as usize;
        mem.read_slice(&mut bounce[off..off + k], b.addr)
            .map_err(|_| outside(b))?;
        off += k;
    }
    Ok(tap.write(&bounce[..len]))
}

struct RxContext<'a> {
    features: u64,
    /// The MTU, if the driver accepted VIRTIO_NET_F_MTU.
    mtu: Option<u16>,
    budget: usize,
    counters: &'a mut NetCounters,
    log: &'a RateLimitedLog,
}

/// Why [`receive`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxOutcome {
    /// The TAP is empty.
    Idle,
    /// The guest has no (more) buffers; notifications are on.
    WaitBuffers,
    /// The per-call budget ran out with the TAP still readable.
    Budget,
}

/// Moves frames from the pair's TAP to receive queue `q` until the TAP is
/// empty, the guest has no buffers, or the budget runs out; one interrupt
/// for the lot.
fn receive(
    active: &mut ActiveQueues,
    q: u16,
    pair: &mut Pair,
    ctx: &mut RxContext<'_>,
) -> Result<RxOutcome, QueueError> {
    let mergeable = ctx.features & bit(vn::VIRTIO_NET_F_MRG_RXBUF) != 0;
    let rx = &mut pair.rx;
    let mut frames = 0usize;
    let mut used = 0usize;
    let mut retried = false;
    let outcome = loop {
        if rx.len == 0 {
            if !rx.readable {
                break RxOutcome::Idle;
            }
            if frames >= ctx.budget {
                break RxOutcome::Budget;
            }
            // Leave frames in the TAP while the guest has nowhere to put
            // them.
            if rx.held.is_empty() && !active.has_available(q)? {
                // Retried once: overlapping rings (the used flags on the
                // avail index) can make this report buffers forever.
                if active.enable_notification(q)? {
                    if !retried {
                        retried = true;
                        continue;
                    }
                    // Come back later through the resume event.
                    break RxOutcome::Budget;
                }
                break RxOutcome::WaitBuffers;
            }
            if rx.frame.len() < MAX_PACKET_LEN {
                rx.frame.resize(MAX_PACKET_LEN, 0);
            }
            match pair.tap.read(&mut rx.frame) {
                Ok(n) => {
                    frames += 1;
                    let accepted = match rx.frame.get_mut(..n) {
                        Some(packet) => accept_frame(packet, ctx),
                        // The kernel reports a frame's full length even
                        // when it did not fit.
                        None => Err(format!("{n} bytes truncated to {MAX_PACKET_LEN}")),
                    };
                    if let Err(why) = accepted {
                        ctx.counters.rx_dropped += 1;
                        guest_debug!(
                            ctx.log,
                            "virtio-net: TAP '{}': received frame dropped: {why}",
                            pair.tap.name()
                        );
                        continue;
                    }
                    rx.len = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    rx.readable = false;
                    continue;
                }
                Err(e) => {
                    // Do not spin on a failing TAP: wait for its next event.
                    rx.readable = false;
                    guest_warn!(
                        ctx.log,
                        "virtio-net: TAP '{}': read failed: {e}",
                        pair.tap.name()
                    );
                    continue;
                }
            }
        }
        match rx_fit(rx.len, rx.held.iter().map(Chain::writable_len), mergeable) {
            RxFit::Fits(n) => {
                deliver(active, q, rx, n)?;
                used += n;
                ctx.counters.rx_packets += 1;
                ctx.counters.rx_bytes += (rx.len - NET_HDR_LEN) as u64;
                rx.len = 0;
            }
            RxFit::TooSmall => {
                // The chain stays for a smaller frame.
                ctx.counters.rx_dropped += 1;
                guest_debug!(
                    ctx.log,
                    "virtio-net: TAP '{}': {}-byte frame does not fit a {}-byte receive chain; dropped",
                    pair.tap.name(),
                    rx.len - NET_HDR_LEN,
                    rx.held.first().map_or(0, Chain::writable_len)
                );
                rx.len = 0;
            }
            RxFit::NeedMore => match active.pop(q)? {
                Some(chain) => {
                    if !chain.readable.is_empty() {
                        return Err(ChainError::UnexpectedReadable.into());
                    }
                    if chain.writable_len() < NET_HDR_LEN as u64 {
                        // Cannot even hold a header: hand it back empty.
                        guest_debug!(
                            ctx.log,
                            "virtio-net: receive chain of {} bytes is shorter than the header",
                            chain.writable_len()
                        );
                        active.add_used(q, chain.head, 0)?;
                        used += 1;
                        continue;
                    }
                    rx.held.push(chain);
                }
                None => {
                    // The frame waits in `rx.frame` for more buffers.
                    if active.enable_notification(q)? {
                        if !retried {
                            retried = true;
                            continue;
                        }
                        break RxOutcome::Budget;
                    }
                    break RxOutcome::WaitBuffers;
                }
            },
        }
    };
    if outcome == RxOutcome::Idle {
        // Kicks for new buffers are only useful while frames wait.
        active.disable_notification(q)?;
    }
    if used > 0 {
        active.signal_used(q)?;
    }
    Ok(outcome)
}

/// Checks and prepares the header of a frame just read from the TAP.
fn accept_frame(packet: &mut [u8], ctx: &RxContext<'_>) -> Result<(), String> {
    if packet.len() < NET_HDR_LEN {
        return Err(format!("{} bytes is shorter than the header", packet.len()));
    }
    prepare_rx_header(packet, ctx.features).map_err(|e| e.to_string())?;
    if let Some(mtu) = ctx.mtu {
        if exceeds_mtu(packet, packet.len(), mtu) {
            return Err(format!(
                "{} bytes exceeds the MTU {mtu}",
                packet.len() - NET_HDR_LEN
            ));
        }
    }
    Ok(())
}

/// Copies the waiting packet into the first `n` held chains and returns
/// them used.
fn deliver(
    active: &mut ActiveQueues,
    q: u16,
    rx: &mut RxState,
    n: usize,
) -> Result<(), QueueError> {
    let len = rx.len;
    let packet = &mut rx.frame[..len];
    // n <= u16::MAX (rx_fit).
    set_num_buffers(packet, n as u16);
    let mut off = 0;
    for chain in rx.held.drain(..n) {
        let mut written = 0usize;
        for b in &chain.writable {
            if off == len {
                break;
            }
            let k = (b.len as usize).min(len - off);
            active
                .memory()
                .write_slice(&packet[off..off + k], b.addr)
                .map_err(|_| outside(b))?;
            off += k;
            written += k;
        }
        // written <= MAX_PACKET_LEN.
        active.add_used(q, chain.head, written as u32)?;
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        self.device_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR; nothing
        // else is writable.
        guest_debug!(
            self.log,
            "virtio-net: write of {} bytes to configuration offset {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
        features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        if self.active.is_some() {
            self.reset();
        }
        self.acked = features;
        let pairs = self.pairs.len();
        let mq = pairs > 1 && self.has(vn::VIRTIO_NET_F_MQ) && self.has(vn::VIRTIO_NET_F_CTRL_VQ);
        self.usable_pairs = if mq { pairs } else { 1 };
        // virtio 1.2, 5.1.2: the control queue follows the pairs the driver
        // can use (index 2 without MQ).
        self.ctrl_queue = self
            .has(vn::VIRTIO_NET_F_CTRL_VQ)
            .then(|| 2 * self.usable_pairs as u16)
            .filter(|&q| usize::from(q) < queues.len());
        let wanted = tun_offloads(features);
        match self.pairs[0].tap.set_offloads_best(wanted) {
            Ok(set) if set != wanted => guest_debug!(
                self.log,
                "virtio-net: TAP '{}' took offloads {set:#x} of {wanted:#x}",
                self.tap_name()
            ),
            Ok(_) => {}
            Err(e) => guest_warn!(
                self.log,
                "virtio-net: {e}: {}; receive offloads stay off",
                io_cause(&e)
            ),
        }
        // Only the first pair carries traffic until the driver asks for
        // more.
        self.active_pairs = 0;
        self.set_active_pairs(1);
        for p in &mut self.pairs {
            p.rx.clear();
        }
        // Frames may have been queued before the driver came up.
        self.pairs[0].rx.readable = true;
        self.active = Some(ActiveQueues::new("virtio-net", mem, queues, interrupt));
        self.watch();
        Ok(())
    }

    fn reset(&mut self) {
        self.unwatch();
        self.active = None;
        for p in &mut self.pairs {
            p.rx.clear();
        }
        if self.acked & bit(vn::VIRTIO_NET_F_GUEST_CSUM) != 0 {
            let _ = self.pairs[0].tap.set_offload(0);
        }
        self.acked = 0;
        self.usable_pairs = 1;
        self.active_pairs = 1;
        self.ctrl_queue = None;
        // A resume asked for before the reset is void.
        let _ = self.resume.read();
    }

    fn process_queue(&mut self, index: u16) {
        if !self.active.as_ref().is_some_and(|a| a.usable(index)) {
            return;
        }
        if Some(index) == self.ctrl_queue {
            self.process_ctrl();
            return;
        }
        let pair = usize::from(index / 2);
        if pair >= self.usable_pairs {
            return;
        }
        if index.is_multiple_of(2) {
            self.process_rx(pair);
        } else {
            self.process_tx(pair);
        }
    }

    fn set_host_events(&mut self, events: Arc<dyn HostEvents>) {
        self.unwatch();
        self.events = Some(events);
        if self.active.is_some() {
            self.watch();
        }
    }

    fn host_event(&mut self, token: u32) {
        if self.active.is_none() {
            return;
        }
        if token == RESUME_TOKEN {
            let _ = self.resume.read();
            for p in 0..self.usable_pairs {
                self.process_tx(p);
                self.process_rx(p);
            }
            self.process_ctrl();
            return;
        }
        let Some(p) = self.pairs.get_mut(token as usize) else {
            return;
        };
        p.rx.readable = true;
        self.process_rx(token as usize);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.unwatch();
    }
}
