//! The transport driven as Linux's virtio-pci driver drives it: through
//! ECAM, with the BAR mapped on an MMIO bus by a BarMoved listener.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::Bus;
use crate::pci::config::{BAR0, COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY};
use crate::pci::msix::tests::MockMsi;
use crate::pci::msix::{MSIX_CAPABILITY_ID, MSIX_ENABLE, MSIX_FUNCTION_MASK};
use crate::pci::{
    BarMoved, HostBridge, PciAddress, PciAllocator, PciBarListener, PciBarWindow, PciEcam,
    PciRegistry, PciWindows, Window,
};
use crate::testutil::{hammer, MockIrq};
use crate::virtio::console::Console;
use crate::virtio::rng::Rng;
use crate::virtio::testutil::{desc, guest_memory, DriverQueue, MEM_SIZE};
use crate::virtio::{status, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::BusDevice;

/// Maps BAR windows on a bus, as the monitor will.
struct Mapper {
    bus: Arc<Mutex<Bus>>,
    registry: Arc<PciRegistry>,
}

impl PciBarListener for Mapper {
    fn bar_moved(&self, e: &BarMoved) {
        let bus = self.bus.lock().expect("not poisoned");
        if let Some(old) = e.old {
            bus.remove(old);
        }
        if let Some(new) = e.new {
            let dev = self
                .registry
                .get(e.device)
                .expect("moved devices are registered");
            bus.insert(
                Arc::new(Mutex::new(PciBarWindow::new(dev, e.bar))),
                new,
                e.size,
            )
            .expect("no overlap");
        }
    }
}

/// A machine with a host bridge and one virtio device at 00:01.0.
struct Machine<D: VirtioDevice + 'static> {
    dev: Arc<Mutex<VirtioPciDevice<D>>>,
    ecam: PciEcam,
    mmio: Arc<Mutex<Bus>>,
    msi: Arc<MockMsi>,
    mem: GuestMemoryMmap,
    func: u64,
}

/// What the driver learnt from the capabilities.
#[derive(Debug, Default)]
struct Caps {
    common: u64,
    notify: u64,
    notify_mult: u32,
    notify_len: u32,
    isr: u64,
    device: Option<(u64, u32)>,
    pci_cfg: u16,
    msix: u16,
}

impl<D: VirtioDevice + 'static> Machine<D> {
    fn new(device: D, intx: Option<Arc<dyn Interrupt>>) -> Machine<D> {
        let msi = Arc::new(MockMsi::default());
        let mem = guest_memory();
        let mut vdev = VirtioPciDevice::new(device, msi.clone(), intx).expect("valid device");
        vdev.set_guest_memory(mem.clone());
        // Firmware's job: place the BAR in the 64-bit window.
        let mut alloc = PciAllocator::new(PciWindows {
            io: None,
            mmio32: Window {
                base: 0xc000_0000,
                size: 0x1000_0000,
            },
            mmio64: Some(Window {
                base: 0x40_0000_0000,
                size: 0x10_0000_0000,
            }),
        })
        .expect("valid windows");
        for spec in vdev.bars() {
            let addr = alloc.allocate(&spec).expect("room");
            vdev.place_bar(spec.index, addr).expect("aligned");
        }
        let dev = Arc::new(Mutex::new(vdev));
        let registry = Arc::new(PciRegistry::new());
        let mmio = Arc::new(Mutex::new(Bus::new()));
        let mapper = Arc::new(Mapper {
            bus: mmio.clone(),
            registry: registry.clone(),
        });
        registry.set_listener(mapper);
        let a = |d| PciAddress::new(0, d, 0).expect("valid");
        registry
            .add(a(0), Arc::new(Mutex::new(HostBridge::new())))
            .expect("free");
        registry.add(a(1), dev.clone()).expect("free");
        Machine {
            dev,
            ecam: PciEcam::new(registry, 0, 0),
            mmio,
            msi,
            mem,
            func: a(1).ecam_offset(),
        }
    }

    fn cfg_read(&mut self, off: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.ecam.read(self.func + u64::from(off), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn cfg_write(&mut self, off: u16, len: usize, v: u32) {
        self.ecam
            .write(self.func + u64::from(off), &v.to_le_bytes()[..len]);
    }

    fn bar(&mut self) -> u64 {
        let lo = u64::from(self.cfg_read(BAR0, 4) & !0xf);
        let hi = u64::from(self.cfg_read(BAR0 + 4, 4));
        (hi << 32) | lo
    }

    fn mmio_read(&self, addr: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(
            self.mmio
                .lock()
                .expect("not poisoned")
                .read(addr, &mut b[..len]),
            "nothing mapped at {addr:#x}"
        );
        u64::from_le_bytes(b)
    }

    fn mmio_write(&self, addr: u64, len: usize, v: u64) {
        assert!(
            self.mmio
                .lock()
                .expect("not poisoned")
                .write(addr, &v.to_le_bytes()[..len]),
            "nothing mapped at {addr:#x}"
        );
    }

    /// Enumeration and BAR setup, as the PCI core does it.
    fn enumerate(&mut self) -> Caps {
        assert_eq!(self.cfg_read(0, 2), 0x1af4);
        // Size the BAR with decoding off, then restore and enable.
        let (lo, hi) = (self.cfg_read(BAR0, 4), self.cfg_read(BAR0 + 4, 4));
        self.cfg_write(BAR0, 4, u32::MAX);
        self.cfg_write(BAR0 + 4, 4, u32::MAX);
        let mask = (u64::from(self.cfg_read(BAR0 + 4, 4)) << 32)
            | u64::from(self.cfg_read(BAR0, 4) & !0xf);
        assert_eq!(
            self.cfg_read(BAR0, 4) & 0xf,
            0x4,
            "64-bit, not prefetchable"
        );
        assert!((!mask + 1).is_power_of_two());
        self.cfg_write(BAR0, 4, lo);
        self.cfg_write(BAR0 + 4, 4, hi);
        self.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_BUS_MASTER));
        // Walk the capability list.
        let mut caps = Caps::default();
        let mut ptr = self.cfg_read(0x34, 1) as u16;
        while ptr != 0 {
            let id = self.cfg_read(ptr, 1) as u8;
            if id == MSIX_CAPABILITY_ID {
                caps.msix = ptr;
            } else if id == 0x09 {
                let cfg_type = self.cfg_read(ptr + 3, 1) as u8;
                let bar = self.cfg_read(ptr + 4, 1) as u8;
                let off = u64::from(self.cfg_read(ptr + 8, 4));
                let len = self.cfg_read(ptr + 12, 4);
                assert!(cfg_type == 5 || bar == VIRTIO_BAR);
                match cfg_type {
                    1 => {
                        assert!(len >= 0x38);
                        caps.common = off;
                    }
                    2 => {
                        caps.notify = off;
                        caps.notify_len = len;
                        caps.notify_mult = self.cfg_read(ptr + 16, 4);
                    }
                    3 => caps.isr = off,
                    4 => caps.device = Some((off, len)),
                    5 => caps.pci_cfg = ptr,
                    t => panic!("unknown cfg_type {t}"),
                }
            }
            ptr = self.cfg_read(ptr + 1, 1) as u16;
        }
        assert_ne!(caps.msix, 0);
        assert_ne!(caps.pci_cfg, 0);
        caps
    }

    fn common_read(&mut self, caps: &Caps, off: u64, len: usize) -> u64 {
        let base = self.bar() + caps.common;
        self.mmio_read(base + off, len)
    }

    fn common_write(&mut self, caps: &Caps, off: u64, len: usize, v: u64) {
        let base = self.bar() + caps.common;
        self.mmio_write(base + off, len, v);
    }

    fn status(&mut self, caps: &Caps) -> u8 {
        self.common_read(caps, 0x14, 1) as u8
    }

    fn set_status(&mut self, caps: &Caps, s: u8) {
        self.common_write(caps, 0x14, 1, u64::from(s));
    }

    fn device_features(&mut self, caps: &Caps) -> u64 {
        self.common_write(caps, 0x00, 4, 0);
        let lo = self.common_read(caps, 0x04, 4);
        self.common_write(caps, 0x00, 4, 1);
        let hi = self.common_read(caps, 0x04, 4);
        (hi << 32) | lo
    }

    fn write_driver_features(&mut self, caps: &Caps, f: u64) {
        self.common_write(caps, 0x08, 4, 0);
        self.common_write(caps, 0x0c, 4, f & 0xffff_ffff);
        self.common_write(caps, 0x08, 4, 1);
        self.common_write(caps, 0x0c, 4, f >> 32);
    }

    /// MSI-X setup as pci_alloc_irq_vectors does it: enable with the
    /// function masked, program entries, unmask the function; then unmask
    /// each vector (request_irq).
    fn setup_msix(&mut self, caps: &Caps) {
        let ctrl = caps.msix + 2;
        let vectors = (self.cfg_read(ctrl, 2) & 0x7ff) + 1;
        self.cfg_write(ctrl, 2, u32::from(MSIX_ENABLE | MSIX_FUNCTION_MASK));
        let table = u64::from(self.cfg_read(caps.msix + 4, 4));
        assert_eq!(table & 7, u64::from(VIRTIO_BAR));
        let table = self.bar() + (table & !7);
        for v in 0..u64::from(vectors) {
            let e = table + 16 * v;
            self.mmio_write(e, 4, 0xfee0_0000);
            self.mmio_write(e + 4, 4, 0);
            self.mmio_write(e + 8, 4, 0x40 + v);
        }
        self.cfg_write(ctrl, 2, u32::from(MSIX_ENABLE));
        for v in 0..u64::from(vectors) {
            self.mmio_write(table + 16 * v + 12, 4, 0);
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK.
    fn negotiate(&mut self, caps: &Caps, features: u64) -> bool {
        self.set_status(caps, 0);
        assert_eq!(self.status(caps), 0);
        self.set_status(caps, status::ACKNOWLEDGE);
        self.set_status(caps, status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.device_features(caps);
        self.write_driver_features(caps, features & offered);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(caps, s);
        self.status(caps) & status::FEATURES_OK != 0
    }

    /// Queue setup for queue `q` with rings at `base`; vector `q + 1`.
    fn setup_queue(&mut self, caps: &Caps, q: u16, base: u64, size: u16) -> DriverQueue {
        self.common_write(caps, 0x16, 2, u64::from(q));
        let max = self.common_read(caps, 0x18, 2) as u16;
        assert!(max >= size);
        self.common_write(caps, 0x18, 2, u64::from(size));
        let dq = DriverQueue::new(&self.mem, base, size);
        // 64-bit fields written as two dwords, low first.
        for (off, addr) in [(0x20, dq.desc), (0x28, dq.avail), (0x30, dq.used)] {
            self.common_write(caps, off, 4, addr & 0xffff_ffff);
            self.common_write(caps, off + 4, 4, addr >> 32);
        }
        self.common_write(caps, 0x1a, 2, u64::from(q + 1));
        assert_eq!(self.common_read(caps, 0x1a, 2), u64::from(q + 1));
        self.common_write(caps, 0x1c, 2, 1);
        assert_eq!(self.common_read(caps, 0x1c, 2), 1);
        dq
    }

    fn notify(&mut self, caps: &Caps, q: u16) {
        self.common_write(caps, 0x16, 2, u64::from(q));
        let off = self.common_read(caps, 0x1e, 2);
        let addr = self.bar() + caps.notify + off * u64::from(caps.notify_mult);
        assert!(off * u64::from(caps.notify_mult) + 2 <= u64::from(caps.notify_len));
        self.mmio_write(addr, 2, u64::from(q));
    }

    /// The whole Linux sequence for a one-queue device; returns its queue.
    fn bring_up_rng(&mut self) -> (Caps, DriverQueue) {
        let caps = self.enumerate();
        assert!(self.negotiate(&caps, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX));
        self.setup_msix(&caps);
        self.common_write(&caps, 0x10, 2, 0);
        assert_eq!(self.common_read(&caps, 0x10, 2), 0);
        let dq = self.setup_queue(&caps, 0, 0x10_0000, 16);
        let s = self.status(&caps) | status::DRIVER_OK;
        self.set_status(&caps, s);
        (caps, dq)
    }
}

#[test]
fn linux_init_sequence_and_a_request() {
    let mut m = Machine::new(Rng::new(), None);
    let (caps, mut dq) = m.bring_up_rng();
    assert_eq!(
        m.status(&caps),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
    );
    assert!(m.dev.lock().expect("not poisoned").is_active());
    // Identity and layout facts the driver relies on.
    assert_eq!(m.cfg_read(2, 2), 0x1040 + 4);
    assert_eq!(m.cfg_read(8, 1), 1, "revision 1: not transitional");
    assert_eq!(m.common_read(&caps, 0x12, 2), 1, "num_queues");
    assert_eq!(caps.notify_mult, NOTIFY_OFF_MULTIPLIER);
    assert!(caps.device.is_none(), "rng has no device configuration");

    // A request through the doorbell (the ioeventfd's slow path).
    let head = dq.add(&m.mem, &[(0x1000, 32, true)]);
    let _ = m.msi.take_sent();
    m.notify(&caps, 0);
    assert_eq!(dq.take_used(&m.mem), vec![(head, 32)]);
    assert_eq!(m.msi.take_sent(), vec![1], "queue 0 uses vector 1");

    // The ioeventfd addresses are the doorbells the driver uses.
    let ev = m.dev.lock().expect("not poisoned").ioevents();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].addr, m.bar() + caps.notify);
    assert_eq!((ev[0].len, ev[0].token, ev[0].memory), (2, 0, true));
    dq.add(&m.mem, &[(0x1000, 8, true)]);
    m.dev.lock().expect("not poisoned").ioevent(ev[0].token);
    assert_eq!(dq.take_used(&m.mem).len(), 1);

    // The MSI-X routes the monitor heard about.
    let routes = m.msi.take_updates();
    assert!(routes
        .iter()
        .any(|u| u.vector == 1 && !u.masked && u.message.data == 0x41));
}

#[test]
fn feature_negotiation_rules() {
    let mut m = Machine::new(Rng::new(), None);
    let caps = m.enumerate();
    let offered = m.device_features(&caps);
    assert_eq!(offered, TRANSPORT_FEATURES_FOR_TEST);
    // Without VERSION_1: FEATURES_OK does not stick.
    assert!(!m.negotiate(&caps, VIRTIO_RING_F_EVENT_IDX));
    // A feature that was not offered: refused too.
    m.set_status(&caps, 0);
    m.set_status(&caps, status::ACKNOWLEDGE | status::DRIVER);
    m.write_driver_features(&caps, VIRTIO_F_VERSION_1 | 1);
    m.set_status(
        &caps,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(m.status(&caps) & status::FEATURES_OK, 0);
    // Accepted; later feature writes are ignored.
    assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1));
    m.write_driver_features(&caps, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(
        m.dev.lock().expect("not poisoned").driver_features(),
        VIRTIO_F_VERSION_1
    );
    // Clearing bits (other than by reset) is ignored.
    m.set_status(&caps, status::ACKNOWLEDGE);
    assert_ne!(m.status(&caps) & status::FEATURES_OK, 0);
}

const TRANSPORT_FEATURES_FOR_TEST: u64 = crate::virtio::TRANSPORT_FEATURES;

#[test]
fn vectors_past_the_table_read_no_vector() {
    let mut m = Machine::new(Rng::new(), None);
    let caps = m.enumerate();
    m.common_write(&caps, 0x10, 2, 2);
    assert_eq!(m.common_read(&caps, 0x10, 2), u64::from(NO_VECTOR));
    m.common_write(&caps, 0x10, 2, 1);
    assert_eq!(m.common_read(&caps, 0x10, 2), 1);
    m.common_write(&caps, 0x1a, 2, 7);
    assert_eq!(m.common_read(&caps, 0x1a, 2), u64::from(NO_VECTOR));
    // An absent queue: size 0, NO_VECTOR; writes go nowhere.
    m.common_write(&caps, 0x16, 2, 5);
    assert_eq!(m.common_read(&caps, 0x18, 2), 0);
    assert_eq!(m.common_read(&caps, 0x1a, 2), u64::from(NO_VECTOR));
    m.common_write(&caps, 0x1c, 2, 1);
    assert_eq!(m.common_read(&caps, 0x1c, 2), 0);
}

#[test]
fn malformed_chain_sets_needs_reset_and_reset_recovers() {
    let mut m = Machine::new(Rng::new(), None);
    let (caps, mut dq) = m.bring_up_rng();
    let _ = m.msi.take_sent();
    // A device-readable buffer: wrong direction for an entropy request.
    dq.add(&m.mem, &[(0x1000, 32, false)]);
    m.notify(&caps, 0);
    assert_ne!(m.status(&caps) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(m.msi.take_sent(), vec![0], "config vector");
    assert!(dq.take_used(&m.mem).is_empty());
    // Further notifications do nothing.
    dq.add(&m.mem, &[(0x1000, 32, true)]);
    m.notify(&caps, 0);
    assert!(dq.take_used(&m.mem).is_empty());
    // Reset clears everything; the driver starts over.
    m.set_status(&caps, 0);
    assert_eq!(m.status(&caps), 0);
    assert_eq!(m.common_read(&caps, 0x10, 2), u64::from(NO_VECTOR));
    assert_eq!(m.common_read(&caps, 0x1c, 2), 0);
    assert_eq!(m.common_read(&caps, 0x18, 2), 256, "size back to max");
    assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1));
    let mut dq = m.setup_queue(&caps, 0, 0x18_0000, 8);
    let s = m.status(&caps) | status::DRIVER_OK;
    m.set_status(&caps, s);
    let head = dq.add(&m.mem, &[(0x1000, 16, true)]);
    m.notify(&caps, 0);
    assert_eq!(dq.take_used(&m.mem), vec![(head, 16)]);
}

#[test]
fn bad_queue_setup_fails_activation() {
    // Rings outside memory.
    let mut m = Machine::new(Rng::new(), None);
    let caps = m.enumerate();
    assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1));
    m.setup_queue(&caps, 0, 0x10_0000, 16);
    m.common_write(&caps, 0x30, 8, MEM_SIZE - 8);
    let s = m.status(&caps) | status::DRIVER_OK;
    m.set_status(&caps, s);
    assert_ne!(m.status(&caps) & status::DEVICE_NEEDS_RESET, 0);
    assert!(!m.dev.lock().expect("not poisoned").is_active());

    // A size that is not a power of two, and misaligned rings.
    for (off, len, v) in [(0x18u64, 2usize, 12u64), (0x20, 8, 0x10_0008)] {
        let mut m = Machine::new(Rng::new(), None);
        let caps = m.enumerate();
        assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1));
        m.setup_queue(&caps, 0, 0x10_0000, 16);
        m.common_write(&caps, off, len, v);
        let s = m.status(&caps) | status::DRIVER_OK;
        m.set_status(&caps, s);
        assert_ne!(m.status(&caps) & status::DEVICE_NEEDS_RESET, 0);
    }

    // DRIVER_OK without FEATURES_OK.
    let mut m = Machine::new(Rng::new(), None);
    let caps = m.enumerate();
    m.set_status(
        &caps,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_ne!(m.status(&caps) & status::DEVICE_NEEDS_RESET, 0);

    // Queue setup after DRIVER_OK is ignored.
    let mut m = Machine::new(Rng::new(), None);
    let (caps, _) = m.bring_up_rng();
    m.common_write(&caps, 0x18, 2, 4);
    assert_eq!(m.common_read(&caps, 0x18, 2), 16);
}

#[test]
fn activation_needs_guest_memory() {
    let msi = Arc::new(MockMsi::default());
    let mut d = VirtioPciDevice::new(Rng::new(), msi, None).expect("valid");
    d.bar_write(VIRTIO_BAR, 0x14, &[status::ACKNOWLEDGE | status::DRIVER]);
    d.bar_write(VIRTIO_BAR, 0x08, &1u32.to_le_bytes());
    d.bar_write(VIRTIO_BAR, 0x0c, &1u32.to_le_bytes());
    d.bar_write(VIRTIO_BAR, 0x14, &[0x0b]);
    assert_eq!(d.status(), 0x0b);
    d.bar_write(VIRTIO_BAR, 0x14, &[0x0f]);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn intx_and_isr_without_msix() {
    let line = Arc::new(MockIrq::default());
    let mut m = Machine::new(Rng::new(), Some(line.clone() as Arc<dyn Interrupt>));
    assert_eq!(m.cfg_read(0x3d, 1), 1, "INTA#");
    let caps = m.enumerate();
    assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1));
    let mut dq = m.setup_queue(&caps, 0, 0x10_0000, 16);
    let s = m.status(&caps) | status::DRIVER_OK;
    m.set_status(&caps, s);
    dq.add(&m.mem, &[(0x1000, 8, true)]);
    m.notify(&caps, 0);
    assert_eq!(line.count(), 1);
    let isr = m.bar() + caps.isr;
    assert_eq!(m.mmio_read(isr, 1), 1, "queue interrupt");
    assert_eq!(m.mmio_read(isr, 1), 0, "read clears");
    assert!(m.msi.take_sent().is_empty());
    // A config-change interrupt (here: needs reset) sets bit 1.
    dq.add(&m.mem, &[(0x1000, 8, false)]);
    m.notify(&caps, 0);
    assert_eq!(line.count(), 2);
    assert_eq!(m.mmio_read(isr, 1), 2);
}

#[test]
fn configuration_access_capability() {
    let mut m = Machine::new(Console::new(Box::new(std::io::sink())), None);
    let caps = m.enumerate();
    let cap = caps.pci_cfg;
    // Point the window at num_queues (2 bytes) and read it through config space.
    m.cfg_write(cap + 4, 1, u32::from(VIRTIO_BAR));
    m.cfg_write(cap + 8, 4, caps.common as u32 + 0x12);
    m.cfg_write(cap + 12, 4, 2);
    assert_eq!(m.cfg_read(cap + 16, 2), 2);
    // Write device_status through it.
    m.cfg_write(cap + 8, 4, caps.common as u32 + 0x14);
    m.cfg_write(cap + 12, 4, 1);
    m.cfg_write(cap + 16, 1, u32::from(status::ACKNOWLEDGE));
    assert_eq!(m.status(&caps), status::ACKNOWLEDGE);
    // Mismatched width, bad length, other BAR: ignored, reads 0.
    assert_eq!(m.cfg_read(cap + 16, 4), 0);
    m.cfg_write(cap + 12, 4, 3);
    assert_eq!(m.cfg_read(cap + 16, 1), 0);
    m.cfg_write(cap + 12, 4, 1);
    m.cfg_write(cap + 4, 1, 2);
    m.cfg_write(cap + 16, 1, 0);
    assert_eq!(m.status(&caps), status::ACKNOWLEDGE);
}

#[test]
fn console_over_the_transport() {
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Out::default();
    let mut m = Machine::new(Console::new(Box::new(out.clone())), None);
    let caps = m.enumerate();
    let (dev_cfg, dev_len) = caps.device.expect("console has configuration");
    assert_eq!(dev_len, 12);
    assert_eq!(
        m.cfg_read(0x0a, 2),
        0x0780,
        "simple communication controller"
    );
    assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX));
    m.setup_msix(&caps);
    let mut rx = m.setup_queue(&caps, 0, 0x10_0000, 8);
    let mut tx = m.setup_queue(&caps, 1, 0x11_0000, 8);
    let s = m.status(&caps) | status::DRIVER_OK;
    m.set_status(&caps, s);
    let cfg = m.bar() + dev_cfg;
    assert_eq!(m.mmio_read(cfg, 4), 0, "cols and rows");

    m.mem
        .write_slice(b"login: ", GuestAddress(0x1000))
        .expect("in memory");
    tx.add(&m.mem, &[(0x1000, 7, false)]);
    m.notify(&caps, 1);
    assert_eq!(&*out.0.lock().expect("not poisoned"), b"login: ");
    assert_eq!(m.msi.take_sent(), vec![2], "transmitq uses vector 2");

    rx.add(&m.mem, &[(0x2000, 16, true)]);
    m.notify(&caps, 0);
    let taken = m
        .dev
        .lock()
        .expect("not poisoned")
        .device_mut()
        .enqueue_input(b"root\n");
    assert_eq!(taken, 5);
    assert_eq!(rx.take_used(&m.mem), vec![(0, 5)]);
    assert_eq!(m.msi.take_sent(), vec![1], "receiveq uses vector 1");
    let ev = m.dev.lock().expect("not poisoned").ioevents();
    assert_eq!(ev[1].addr - ev[0].addr, u64::from(NOTIFY_OFF_MULTIPLIER));
}

#[test]
fn masked_vector_defers_the_interrupt() {
    let mut m = Machine::new(Rng::new(), None);
    let (caps, mut dq) = m.bring_up_rng();
    let table = m.bar() + MSIX_TABLE_OFFSET;
    // Mask vector 1 (queue 0).
    m.mmio_write(table + 16 + 12, 4, 1);
    dq.add(&m.mem, &[(0x1000, 8, true)]);
    let _ = m.msi.take_sent();
    m.notify(&caps, 0);
    assert!(m.msi.take_sent().is_empty());
    let pba = m.bar() + m.dev.lock().expect("not poisoned").pba_offset;
    assert_eq!(m.mmio_read(pba, 8), 0b10);
    m.mmio_write(table + 16 + 12, 4, 0);
    assert_eq!(m.msi.take_sent(), vec![1]);
    assert_eq!(m.mmio_read(pba, 8), 0);
}

#[test]
fn pci_reset_and_decode_changes() {
    let mut m = Machine::new(Rng::new(), None);
    let (caps, _) = m.bring_up_rng();
    let bar = m.bar();
    // Decoding off: the BAR disappears from the bus, no ioevents.
    m.cfg_write(COMMAND, 2, 0);
    let mut b = [0u8; 1];
    assert!(!m.mmio.lock().expect("not poisoned").read(bar, &mut b));
    assert!(m.dev.lock().expect("not poisoned").ioevents().is_empty());
    m.cfg_write(COMMAND, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(m.status(&caps) & status::DRIVER_OK, status::DRIVER_OK);
    // A PCI-level reset: virtio reset, MSI-X disabled, decoding off.
    m.dev.lock().expect("not poisoned").reset();
    assert_eq!(m.cfg_read(COMMAND, 2), 0);
    assert_eq!(m.cfg_read(caps.msix + 2, 2) & u32::from(MSIX_ENABLE), 0);
    assert!(!m.dev.lock().expect("not poisoned").is_active());
    assert_eq!(m.bar(), bar, "back at the firmware placement");
}

#[test]
fn random_accesses_never_panic() {
    struct Bar<D: VirtioDevice>(Arc<Mutex<VirtioPciDevice<D>>>);
    impl<D: VirtioDevice> BusDevice for Bar<D> {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let mut d = self.0.lock().expect("not poisoned");
            if offset & 1 == 0 {
                d.bar_read(VIRTIO_BAR, offset >> 1, data);
            } else {
                d.read_config((offset >> 1) as u16 & 0xfff, data);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            let mut d = self.0.lock().expect("not poisoned");
            if offset & 1 == 0 {
                d.bar_write(VIRTIO_BAR, offset >> 1, data);
            } else {
                d.write_config((offset >> 1) as u16 & 0xfff, data);
            }
        }
    }
    for seed in 1..6 {
        let mut m = Machine::new(Console::new(Box::new(std::io::sink())), None);
        let caps = m.enumerate();
        assert!(m.negotiate(&caps, VIRTIO_F_VERSION_1));
        let mut rx = m.setup_queue(&caps, 0, 0x10_0000, 8);
        // Garbage descriptors for the device to trip over.
        for i in 0..8 {
            rx.write_desc(
                &m.mem,
                i,
                desc(seed * 0x1234_5678, 0x7fff_ffff, 0xffff, i * 3),
            );
        }
        rx.add_head(&m.mem, 5);
        m.set_status(&caps, 0x0f);
        let mut bar = Bar(m.dev.clone());
        hammer(&mut bar, seed, 2 * 0x8000, 5000);
        let _ = m
            .dev
            .lock()
            .expect("not poisoned")
            .device_mut()
            .enqueue_input(b"x");
    }
}
