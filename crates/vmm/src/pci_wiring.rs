//! Wiring PCI functions to KVM and to the event loop.
//!
//! - **BARs.** [`Wiring`] is the registry's [`PciBarListener`]: when a
//!   function starts, stops or moves decoding a BAR it maps a
//!   [`PciBarWindow`] on the MMIO (or port I/O) bus, and re-registers the
//!   function's doorbells ([`PciDevice::ioevents`]) as KVM ioeventfds, so a
//!   queue notification never leaves the kernel. Each doorbell's eventfd is
//!   created once and watched by the event loop for good; only its KVM
//!   registration follows the BAR.
//! - **MSI-X.** [`DeviceMsi`] is a function's [`MsiInterrupt`]: one GSI and
//!   one irqfd per vector. The guest's message for each vector becomes an
//!   MSI entry of KVM's GSI routing table, which [`Wiring`] owns whole
//!   (KVM_SET_GSI_ROUTING replaces it all, so the default IOAPIC/PIC routes
//!   of GSIs 0-23 are part of it). Triggering a vector is an eventfd write.
//! - **Host descriptors.** Devices watch their own descriptors (disk
//!   completions, TAP devices) through [`HostEvents`], edge-triggered.
//!
//! All of it outlives reboots: KVM objects are per boot, so
//! [`Wiring::attach`] gives a new VM the routing table, the irqfds and the
//! ioeventfds of the BARs decoded at that point, and [`Wiring::detach`]
//! forgets the old one.
//!
//! The event loop polls [`Wiring::epoll`]-registered keys from
//! [`FIRST_KEY`] upwards and hands them to [`Wiring::dispatch`].

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vireo_devices::pci::{
    BarKind, BarMoved, IoEvent, MsiInterrupt, MsiMessage, MsixVectorUpdate, PciAddress,
    PciBarListener, PciBarWindow, PciRegistry, SharedPciDevice,
};
use vireo_devices::ratelimit::RateLimitedLog;
use vireo_devices::{guest_warn, Bus, HostEvents};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// GSIs 0-23 are the IOAPIC's pins (0-15 also the PICs'); MSI vectors get
/// GSIs from here on.
pub const FIRST_MSI_GSI: u32 = 24;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
const MAX_ROUTES: u32 = 4096;
/// Epoll keys below this belong to the event loop itself.
pub const FIRST_KEY: u64 = 1 << 32;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an epoll key stands for.
#[derive(Clone)]
enum Watch {
    /// A doorbell's eventfd: read it, then `ioevent(token)`.
    IoEvent {
        efd: Arc<EventFd>,
        device: SharedPciDevice,
        token: u32,
    },
    /// A device's own descriptor: `host_event(token)`.
    Host {
        fd: RawFd,
        device: SharedPciDevice,
        token: u32,
    },
}

/// One doorbell of a function: its eventfd (permanent) and where KVM has it
/// registered now (if anywhere).
struct Doorbell {
    efd: Arc<EventFd>,
    at: Option<IoEvent>,
}

#[derive(Default)]
struct State {
    /// MSI routes by GSI.
    msi: BTreeMap<u32, MsiMessage>,
    /// Every vector's irqfd, by GSI.
    irqfds: BTreeMap<u32, Arc<EventFd>>,
    next_gsi: u32,
    /// Doorbells by function and token.
    doorbells: HashMap<(PciAddress, u32), Doorbell>,
    /// Epoll keys.
    watches: HashMap<u64, Watch>,
    next_key: u64,
}

/// The link between PCI functions and KVM + the event loop. Shared as an
/// `Arc`; see the module docs.
pub struct Wiring {
    vm: RwLock<Option<Arc<VmFd>>>,
    state: Mutex<State>,
    epoll: Arc<Epoll>,
    registry: Arc<PciRegistry>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    log: RateLimitedLog,
}

impl Wiring {
    /// Wiring for the functions of `registry`, mapping BARs on `mmio` and
    /// `pio` and watching descriptors on `epoll`.
    pub fn new(
        registry: Arc<PciRegistry>,
        mmio: Arc<Bus>,
        pio: Arc<Bus>,
        epoll: Arc<Epoll>,
    ) -> Arc<Wiring> {
        Arc::new(Wiring {
            vm: RwLock::new(None),
            state: Mutex::new(State {
                next_gsi: FIRST_MSI_GSI,
                next_key: FIRST_KEY,
                ..State::default()
            }),
            epoll,
            registry,
            mmio,
            pio,
            log: RateLimitedLog::default(),
        })
    }

    fn vm(&self) -> Option<Arc<VmFd>> {
        self.vm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Gives a freshly created VM the routing table, irqfds and doorbells.
    pub fn attach(&self, vm: Arc<VmFd>) -> Result<(), kvm_ioctls::Error> {
        *self.vm.write().unwrap_or_else(|p| p.into_inner()) = Some(vm.clone());
        let mut st = lock(&self.state);
        push_routes(&vm, &st.msi)?;
        for (&gsi, efd) in &st.irqfds {
            vm.register_irqfd(efd, gsi)?;
        }
        for bell in st.doorbells.values_mut() {
            if let Some(at) = bell.at {
                if register_ioevent(&vm, &bell.efd, &at).is_err() {
                    bell.at = None;
                }
            }
        }
        Ok(())
    }

    /// Forgets the VM of the boot that ended (its registrations went with
    /// it) and the MSI messages its guest programmed.
    pub fn detach(&self) {
        *self.vm.write().unwrap_or_else(|p| p.into_inner()) = None;
        lock(&self.state).msi.clear();
    }

    /// Reserves `vectors` GSIs with an irqfd each, for one function.
    pub fn msi_for(self: &Arc<Self>, vectors: u16) -> std::io::Result<Arc<DeviceMsi>> {
        let mut st = lock(&self.state);
        let base = st.next_gsi;
        let end = base + u32::from(vectors);
        if end > MAX_ROUTES {
            return Err(std::io::Error::other("out of interrupt routes"));
        }
        let mut efds = Vec::with_capacity(usize::from(vectors));
        for v in 0..u32::from(vectors) {
            let efd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
            if let Some(vm) = self.vm() {
                vm.register_irqfd(&efd, base + v)
                    .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
            }
            st.irqfds.insert(base + v, efd.clone());
            efds.push(efd);
        }
        st.next_gsi = end;
        Ok(Arc::new(DeviceMsi {
            base,
            efds,
            wiring: Arc::downgrade(self),
        }))
    }

    fn set_route(&self, gsi: u32, message: MsiMessage) {
        let mut st = lock(&self.state);
        if st.msi.get(&gsi) == Some(&message) {
            return;
        }
        st.msi.insert(gsi, message);
        if let Some(vm) = self.vm() {
            if let Err(e) = push_routes(&vm, &st.msi) {
                guest_warn!(self.log, "cannot update interrupt routing: {e}");
            }
        }
    }

    /// Gives `device` (at `addr`) its [`HostEvents`] and remembers it for
    /// dispatching. Call once per function after adding it to the registry.
    pub fn connect_device(self: &Arc<Self>, device: &SharedPciDevice) {
        let events = Arc::new(DeviceHostEvents {
            wiring: Arc::downgrade(self),
            device: device.clone(),
            keys: Mutex::new(HashMap::new()),
        });
        vireo_devices::pci::lock_device(device).set_host_events(events);
    }

    fn add_watch(&self, fd: RawFd, watch: Watch, edge: bool) -> std::io::Result<u64> {
        let key = {
            let mut st = lock(&self.state);
            let key = st.next_key;
            st.next_key += 1;
            st.watches.insert(key, watch);
            key
        };
        let set = if edge {
            EventSet::IN | EventSet::EDGE_TRIGGERED
        } else {
            EventSet::IN
        };
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, key))
        {
            lock(&self.state).watches.remove(&key);
            return Err(e);
        }
        Ok(key)
    }

    fn remove_watch(&self, key: u64) {
        let watch = lock(&self.state).watches.remove(&key);
        let fd = match watch {
            Some(Watch::Host { fd, .. }) => fd,
            Some(Watch::IoEvent { efd, .. }) => efd.as_raw_fd(),
            None => return,
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Serves an epoll event with key `key` (at least [`FIRST_KEY`]).
    pub fn dispatch(&self, key: u64) {
        let watch = lock(&self.state).watches.get(&key).cloned();
        match watch {
            Some(Watch::IoEvent { efd, device, token }) => {
                // Reading resets the counter; several notifications coalesce.
                let _ = efd.read();
                let more = {
                    let mut d = vireo_devices::pci::lock_device(&device);
                    d.ioevent(token);
                    d.ioevent_pending(token)
                };
                if more {
                    // Served again after the events already waiting.
                    let _ = efd.write(1);
                }
            }
            Some(Watch::Host { device, token, .. }) => {
                vireo_devices::pci::lock_device(&device).host_event(token);
            }
            None => {}
        }
    }

    /// The doorbell eventfd of (`addr`, `token`), created and watched on
    /// first use.
    fn doorbell(
        &self,
        st: &mut State,
        addr: PciAddress,
        device: &SharedPciDevice,
        token: u32,
    ) -> Option<Arc<EventFd>> {
        if let Some(b) = st.doorbells.get(&(addr, token)) {
            return Some(b.efd.clone());
        }
        let efd = Arc::new(EventFd::new(EFD_NONBLOCK).ok()?);
        let key = st.next_key;
        st.next_key += 1;
        st.watches.insert(
            key,
            Watch::IoEvent {
                efd: efd.clone(),
                device: device.clone(),
                token,
            },
        );
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                efd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, key),
            )
            .is_err()
        {
            st.watches.remove(&key);
            return None;
        }
        st.doorbells.insert(
            (addr, token),
            Doorbell {
                efd: efd.clone(),
                at: None,
            },
        );
        Some(efd)
    }

    /// Re-registers the doorbells of the function at `addr` where its BARs
    /// are now.
    fn move_doorbells(&self, addr: PciAddress, device: &SharedPciDevice) {
        let wanted = vireo_devices::pci::lock_device(device).ioevents();
        let vm = self.vm();
        let mut st = lock(&self.state);
        // Unregister every doorbell of this function, then register anew.
        for ((a, _), bell) in st.doorbells.iter_mut() {
            if *a != addr {
                continue;
            }
            if let (Some(at), Some(vm)) = (bell.at.take(), vm.as_ref()) {
                let _ = unregister_ioevent(vm, &bell.efd, &at);
            }
        }
        for ev in wanted {
            let Some(efd) = self.doorbell(&mut st, addr, device, ev.token) else {
                continue;
            };
            let registered = match vm.as_ref() {
                Some(vm) => register_ioevent(vm, &efd, &ev).is_ok(),
                // Registered by `attach` when the next VM comes.
                None => true,
            };
            log::debug!(
                "PCI {addr} doorbell {} at {:#x}: {}",
                ev.token,
                ev.addr,
                if registered {
                    "ioeventfd"
                } else {
                    "MMIO exits"
                }
            );
            if let Some(bell) = st.doorbells.get_mut(&(addr, ev.token)) {
                // A doorbell KVM refused (it overlaps another) still works
                // through the BAR's MMIO exits.
                bell.at = registered.then_some(ev);
            }
        }
    }
}

impl PciBarListener for Wiring {
    fn bar_moved(&self, event: &BarMoved) {
        let Some(device) = self.registry.get(event.device) else {
            return;
        };
        let bus = if event.kind == BarKind::Io {
            &self.pio
        } else {
            &self.mmio
        };
        if let Some(old) = event.old {
            bus.remove(old);
        }
        if let Some(new) = event.new {
            let window = Arc::new(Mutex::new(PciBarWindow::new(device.clone(), event.bar)));
            if let Err(e) = bus.insert(window, new, event.size) {
                // The guest put the BAR over something else: leave it unmapped.
                guest_warn!(
                    self.log,
                    "PCI {} BAR {} at {new:#x} not mapped: {e}",
                    event.device,
                    event.bar
                );
            }
        }
        self.move_doorbells(event.device, &device);
    }
}

fn ioevent_address(ev: &IoEvent) -> IoEventAddress {
    if ev.memory {
        IoEventAddress::Mmio(ev.addr)
    } else {
        IoEventAddress::Pio(ev.addr)
    }
}

fn register_ioevent(vm: &VmFd, efd: &EventFd, ev: &IoEvent) -> Result<(), kvm_ioctls::Error> {
    // No data match: any write of any width rings the bell.
    vm.register_ioevent(efd, &ioevent_address(ev), NoDatamatch)
}

fn unregister_ioevent(vm: &VmFd, efd: &EventFd, ev: &IoEvent) -> Result<(), kvm_ioctls::Error> {
    vm.unregister_ioevent(efd, &ioevent_address(ev), NoDatamatch)
}

/// The whole routing table: the default IOAPIC and PIC routes of GSIs
/// 0-23, then the MSI routes.
fn routing_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut out = Vec::with_capacity(40 + msi.len());
    for gsi in 0..FIRST_MSI_GSI {
        out.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 8 {
            out.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            out.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        out.push(e);
    }
    out
}

fn push_routes(vm: &VmFd, msi: &BTreeMap<u32, MsiMessage>) -> Result<(), kvm_ioctls::Error> {
    let table = KvmIrqRouting::from_entries(&routing_entries(msi))
        .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
    vm.set_gsi_routing(&table)
}

/// One function's MSI-X vectors: a GSI and an irqfd each.
pub struct DeviceMsi {
    base: u32,
    efds: Vec<Arc<EventFd>>,
    wiring: std::sync::Weak<Wiring>,
}

impl MsiInterrupt for DeviceMsi {
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        match self.efds.get(usize::from(vector)) {
            Some(efd) => efd.write(1),
            None => Err(std::io::Error::other("no such MSI-X vector")),
        }
    }

    fn update(&self, update: &MsixVectorUpdate) {
        // Only the message matters to the route: a masked vector is never
        // triggered, and re-routing on every mask flip would cost a
        // KVM_SET_GSI_ROUTING each time.
        if usize::from(update.vector) < self.efds.len() {
            if let Some(w) = self.wiring.upgrade() {
                w.set_route(self.base + u32::from(update.vector), update.message);
            }
        }
    }
}

/// A function's [`HostEvents`]: its descriptors on the event loop's epoll.
struct DeviceHostEvents {
    wiring: std::sync::Weak<Wiring>,
    device: SharedPciDevice,
    /// Epoll keys by descriptor.
    keys: Mutex<HashMap<RawFd, u64>>,
}

impl HostEvents for DeviceHostEvents {
    fn watch(&self, fd: RawFd, token: u32) -> std::io::Result<()> {
        let Some(w) = self.wiring.upgrade() else {
            return Err(std::io::Error::other("the event loop is gone"));
        };
        let key = w.add_watch(
            fd,
            Watch::Host {
                fd,
                device: self.device.clone(),
                token,
            },
            true,
        )?;
        if let Some(old) = lock(&self.keys).insert(fd, key) {
            w.remove_watch(old);
        }
        Ok(())
    }

    fn unwatch(&self, fd: RawFd) {
        let key = lock(&self.keys).remove(&fd);
        if let (Some(key), Some(w)) = (key, self.wiring.upgrade()) {
            w.remove_watch(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_legacy_routes_and_adds_msi() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        let e = routing_entries(&msi);
        // 24 IOAPIC pins, 16 PIC pins, one MSI.
        assert_eq!(e.len(), 24 + 16 + 1);
        let last = e.last().expect("an MSI route");
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: reading the union member this entry was built with.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
        let pic: Vec<_> = e
            .iter()
            .filter(|e| e.gsi == 9)
            // SAFETY: irqchip entries were built with the irqchip member.
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert_eq!(pic, [(KVM_IRQCHIP_IOAPIC, 9), (KVM_IRQCHIP_PIC_SLAVE, 1)]);
    }
}
