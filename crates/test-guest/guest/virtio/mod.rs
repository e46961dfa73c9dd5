//! A modern virtio-pci driver (virtio 1.x, 4.1): the vendor capabilities (common, notify,
//! ISR, device configuration), the status handshake (reset, ACKNOWLEDGE, DRIVER, feature
//! negotiation, FEATURES_OK, queue setup, DRIVER_OK), split virtqueues (queue.rs), MSI-X
//! or polling, and DEVICE_NEEDS_RESET detection. Device drivers: blk.rs, net.rs,
//! rng.rs, console.rs.
//!
//! Scenario arguments read by [`Options::from_ctx`]: `mode=poll|msix` (default poll),
//! `indirect=0|1`, `event_idx=0|1` (default 1: used if offered), `queue_size=` (default
//! 128, at most what the device offers), `dev=bb:dd.f` (which function, if several).

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

pub mod blk;
pub mod console;
pub mod net;
mod queue;
pub mod rng;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use queue::{
    Buf, Desc, Used, Virtqueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, INDIRECT_MAX,
};

use crate::kit::{Ctx, Fail};
use crate::pci::msix::Msix;
use crate::pci::{self, Access, Bdf, Function, Pci};
use crate::time::Deadline;
use crate::{ensure, fail, io, irq};

pub const VENDOR: u16 = 0x1af4;
/// Device types (modern PCI device ID = 0x1040 + type).
pub const TYPE_NET: u16 = 1;
pub const TYPE_BLOCK: u16 = 2;
pub const TYPE_CONSOLE: u16 = 3;
pub const TYPE_RNG: u16 = 4;

/// Device status bits.
pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;

/// Transport feature bits.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
pub const F_RING_PACKED: u64 = 1 << 34;
pub const F_IN_ORDER: u64 = 1 << 35;
pub const F_ORDER_PLATFORM: u64 = 1 << 36;
pub const F_SR_IOV: u64 = 1 << 37;
pub const F_NOTIFICATION_DATA: u64 = 1 << 38;
pub const F_RING_RESET: u64 = 1 << 40;

/// virtio_pci_cap cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// Common configuration structure offsets.
const C_DEVICE_FEATURE_SELECT: u64 = 0x00;
const C_DEVICE_FEATURE: u64 = 0x04;
const C_DRIVER_FEATURE_SELECT: u64 = 0x08;
const C_DRIVER_FEATURE: u64 = 0x0c;
const C_CONFIG_MSIX_VECTOR: u64 = 0x10;
const C_NUM_QUEUES: u64 = 0x12;
const C_DEVICE_STATUS: u64 = 0x14;
const C_CONFIG_GENERATION: u64 = 0x15;
const C_QUEUE_SELECT: u64 = 0x16;
const C_QUEUE_SIZE: u64 = 0x18;
const C_QUEUE_MSIX_VECTOR: u64 = 0x1a;
const C_QUEUE_ENABLE: u64 = 0x1c;
const C_QUEUE_NOTIFY_OFF: u64 = 0x1e;
const C_QUEUE_DESC: u64 = 0x20;
const C_QUEUE_DRIVER: u64 = 0x28;
const C_QUEUE_DEVICE: u64 = 0x30;
const COMMON_LEN: u32 = 0x38;
/// "No MSI-X vector" in config_msix_vector / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Used rings are polled; MSI-X stays off and INTx is disabled.
    Poll,
    /// MSI-X: entry 0 for configuration changes, entry 1 + n for the n-th queue set up,
    /// each to its own IDT vector on this CPU (queues share the last entry when the table
    /// is too small); waits halt until an interrupt.
    Msix,
}

/// Driver options, usually from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Negotiate INDIRECT_DESC / EVENT_IDX if offered.
    pub indirect: bool,
    pub event_idx: bool,
    /// Largest queue size to use.
    pub queue_size: u16,
}

impl Options {
    /// `mode=poll|msix`, `indirect=0|1`, `event_idx=0|1`, `queue_size=`.
    pub fn from_ctx(ctx: &Ctx) -> Result<Self, Fail> {
        let mode = match ctx.arg("mode").unwrap_or("poll") {
            "poll" => Mode::Poll,
            "msix" => Mode::Msix,
            other => fail!("mode={other}: expected poll or msix"),
        };
        let queue_size = ctx.arg_u64("queue_size", 128)?;
        ensure!(
            (1..=32768).contains(&queue_size) && queue_size.is_power_of_two(),
            "queue_size={queue_size}: expected a power of two up to 32768"
        );
        Ok(Self {
            mode,
            indirect: ctx.arg_u64("indirect", 1)? != 0,
            event_idx: ctx.arg_u64("event_idx", 1)? != 0,
            queue_size: queue_size as u16,
        })
    }
}

/// The virtio device type of a function (modern 0x1040 + type, or transitional 0x1000-0x103f
/// with the type in the subsystem ID).
pub fn device_type(f: &Function) -> Option<u16> {
    if f.vendor != VENDOR {
        return None;
    }
    match f.device {
        0x1040..=0x107f => Some(f.device - 0x1040),
        0x1000..=0x103f => Some(f.subsys_id),
        _ => None,
    }
}

pub fn type_name(ty: u16) -> &'static str {
    match ty {
        TYPE_NET => "net",
        TYPE_BLOCK => "blk",
        TYPE_CONSOLE => "console",
        TYPE_RNG => "rng",
        _ => "other",
    }
}

/// The virtio function of type `ty` (the one at `dev=` if given, else the first).
pub fn find<'a>(ctx: &Ctx, pci: &'a Pci, ty: u16) -> Result<&'a Function, Fail> {
    if let Some(text) = ctx.arg("dev") {
        let Some(bdf) = Bdf::parse(text) else {
            fail!("dev={text}: expected bb:dd.f");
        };
        let Some(f) = pci.function(bdf) else {
            fail!("dev={text}: no PCI function there");
        };
        ensure!(
            device_type(f) == Some(ty),
            "dev={text}: {:04x}:{:04x} is not a virtio-{}",
            f.vendor,
            f.device,
            type_name(ty)
        );
        return Ok(f);
    }
    match pci.functions.iter().find(|f| device_type(f) == Some(ty)) {
        Some(f) => Ok(f),
        None => fail!(
            "no virtio-{} PCI function (vendor {VENDOR:04x}, device {:04x})",
            type_name(ty),
            0x1040 + ty
        ),
    }
}

/// Names of the feature bits set in `bits` (transport bits by name, device bits by number
/// unless `device_names` knows them).
pub fn feature_names(bits: u64, device_names: &[(u32, &str)]) -> String {
    let transport = [
        (28, "INDIRECT_DESC"),
        (29, "EVENT_IDX"),
        (32, "VERSION_1"),
        (33, "ACCESS_PLATFORM"),
        (34, "RING_PACKED"),
        (35, "IN_ORDER"),
        (36, "ORDER_PLATFORM"),
        (37, "SR_IOV"),
        (38, "NOTIFICATION_DATA"),
        (40, "RING_RESET"),
    ];
    let mut names: Vec<String> = Vec::new();
    for bit in 0..64u32 {
        if bits & (1 << bit) == 0 {
            continue;
        }
        let known = transport
            .iter()
            .chain(device_names)
            .find(|(b, _)| *b == bit)
            .map(|(_, n)| String::from(*n));
        names.push(known.unwrap_or_else(|| format!("bit{bit}")));
    }
    names.join(",")
}

/// Where a capability's structure is: (address, length).
#[derive(Clone, Copy, Debug, Default)]
struct Region {
    addr: u64,
    len: u32,
}

/// A virtio-pci device, as the driver side of the transport sees it.
#[derive(Debug)]
pub struct Transport {
    access: Access,
    pub bdf: Bdf,
    pub device_type: u16,
    common: Region,
    notify: Region,
    notify_multiplier: u32,
    isr: Region,
    device: Option<Region>,
    pub msix: Option<Msix>,
    pub mode: Mode,
    /// What the device offered and what was negotiated.
    pub offered: u64,
    pub features: u64,
    /// The IDT vector of configuration-change interrupts (MSI-X mode).
    pub config_vector: Option<u8>,
    /// The IDT vector of each MSI-X entry programmed so far (kept across re-initialisation).
    entry_vectors: Vec<u8>,
    /// The next MSI-X entry for a queue (entry 0 is the configuration's).
    next_entry: u16,
    /// Whether queues had to share the last MSI-X entry (a table with fewer entries than
    /// queues + 1).
    pub shared_vectors: bool,
}

impl Transport {
    /// Finds the capabilities of a virtio function and resets the device. In MSI-X mode
    /// also enables MSI-X (all entries masked until used).
    pub fn open(pci: &Pci, f: &Function, mode: Mode) -> Result<Self, Fail> {
        let Some(ty) = device_type(f) else {
            fail!(
                "{} {:04x}:{:04x} is not a virtio device",
                f.bdf,
                f.vendor,
                f.device
            );
        };
        let mut found: [Option<(Region, u32)>; 5] = [None; 5];
        for cap in f.caps.iter().filter(|c| c.id == pci::CAP_VENDOR) {
            let at = u16::from(cap.offset);
            let cap_len = pci.read8(f.bdf, at + 2);
            let cfg_type = pci.read8(f.bdf, at + 3);
            let bar_index = pci.read8(f.bdf, at + 4);
            let offset = pci.read32(f.bdf, at + 8);
            let length = pci.read32(f.bdf, at + 12);
            if !(CAP_COMMON..=CAP_DEVICE).contains(&cfg_type) || cap_len < 16 {
                continue;
            }
            if found[usize::from(cfg_type)].is_some() {
                continue; // the first of each type is the preferred one
            }
            let Some(bar) = f.bar(bar_index).filter(|b| b.is_memory() && b.is_live()) else {
                continue; // e.g. an I/O BAR copy the driver may ignore
            };
            ensure!(
                u64::from(offset) + u64::from(length) <= bar.size,
                "{}: virtio capability type {cfg_type} at BAR {bar_index} + {offset:#x} \
                 ({length:#x} bytes) goes beyond the BAR ({:#x} bytes)",
                f.bdf,
                bar.size
            );
            let multiplier = if cfg_type == CAP_NOTIFY {
                ensure!(
                    cap_len >= 20,
                    "{}: notify capability of {cap_len} bytes",
                    f.bdf
                );
                pci.read32(f.bdf, at + 16)
            } else {
                0
            };
            found[usize::from(cfg_type)] = Some((
                Region {
                    addr: bar.va() + u64::from(offset),
                    len: length,
                },
                multiplier,
            ));
        }
        let need = |t: u8, name: &str| -> Result<(Region, u32), Fail> {
            found[usize::from(t)].ok_or_else(|| {
                Fail::new(format!(
                    "{}: no virtio {name} capability in a live memory BAR (a modern device has one)",
                    f.bdf
                ))
            })
        };
        let (common, _) = need(CAP_COMMON, "common configuration")?;
        let (notify, notify_multiplier) = need(CAP_NOTIFY, "notification")?;
        let (isr, _) = need(CAP_ISR, "ISR")?;
        ensure!(
            common.len >= COMMON_LEN,
            "{}: common configuration is {:#x} bytes, at least {COMMON_LEN:#x} expected",
            f.bdf,
            common.len
        );
        let msix = match mode {
            Mode::Msix => {
                let Some(m) = Msix::find(pci, f)? else {
                    fail!(
                        "{}: mode=msix but the function has no MSI-X capability",
                        f.bdf
                    );
                };
                Some(m)
            }
            Mode::Poll => None,
        };
        let t = Self {
            access: pci.access,
            bdf: f.bdf,
            device_type: ty,
            common,
            notify,
            notify_multiplier,
            isr,
            device: found[usize::from(CAP_DEVICE)].map(|(r, _)| r),
            msix,
            mode,
            offered: 0,
            features: 0,
            config_vector: None,
            entry_vectors: Vec::new(),
            next_entry: 1,
            shared_vectors: false,
        };
        t.reset()?;
        match &t.msix {
            Some(m) => {
                irq::init();
                m.enable();
            }
            None => pci.update_command(f.bdf, pci::CMD_INTX_DISABLE, 0),
        }
        Ok(t)
    }

    fn c_read8(&self, off: u64) -> u8 {
        // SAFETY: the common configuration lies in a live memory BAR (checked by `open`),
        // device memory that is mapped and not RAM; `off` is within COMMON_LEN.
        unsafe { io::mmio_read8(self.common.addr + off) }
    }
    fn c_read16(&self, off: u64) -> u16 {
        // SAFETY: as for `c_read8`.
        unsafe { io::mmio_read16(self.common.addr + off) }
    }
    fn c_read32(&self, off: u64) -> u32 {
        // SAFETY: as for `c_read8`.
        unsafe { io::mmio_read32(self.common.addr + off) }
    }
    fn c_write8(&self, off: u64, v: u8) {
        // SAFETY: as for `c_read8`.
        unsafe { io::mmio_write8(self.common.addr + off, v) }
    }
    fn c_write16(&self, off: u64, v: u16) {
        // SAFETY: as for `c_read8`.
        unsafe { io::mmio_write16(self.common.addr + off, v) }
    }
    fn c_write32(&self, off: u64, v: u32) {
        // SAFETY: as for `c_read8`.
        unsafe { io::mmio_write32(self.common.addr + off, v) }
    }
    /// A 64-bit field as two 32-bit writes (low first), as the spec allows.
    fn c_write64(&self, off: u64, v: u64) {
        self.c_write32(off, v as u32);
        self.c_write32(off + 4, (v >> 32) as u32);
    }

    pub fn status(&self) -> u8 {
        self.c_read8(C_DEVICE_STATUS)
    }

    pub fn add_status(&self, bits: u8) {
        self.c_write8(C_DEVICE_STATUS, self.status() | bits);
    }

    /// Marks the driver as given up on the device (FAILED).
    pub fn set_failed(&self) {
        self.add_status(S_FAILED);
    }

    pub fn needs_reset(&self) -> bool {
        self.status() & S_NEEDS_RESET != 0
    }

    /// Resets the device (status 0) and waits up to 1 s for it to read back 0.
    pub fn reset(&self) -> Result<(), Fail> {
        self.c_write8(C_DEVICE_STATUS, 0);
        let deadline = Deadline::after_ms(1000);
        loop {
            let status = self.status();
            if status == 0 {
                return Ok(());
            }
            ensure!(
                !deadline.expired(),
                "{}: device status still {status:#x} 1 s after a reset",
                self.bdf
            );
            crate::time::sleep_us(100);
        }
    }

    /// The features the device offers (all 64 bits).
    pub fn device_features(&self) -> u64 {
        self.c_write32(C_DEVICE_FEATURE_SELECT, 0);
        let low = self.c_read32(C_DEVICE_FEATURE);
        self.c_write32(C_DEVICE_FEATURE_SELECT, 1);
        let high = self.c_read32(C_DEVICE_FEATURE);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// ACKNOWLEDGE, DRIVER, then negotiates: VERSION_1 (required) plus whatever of
    /// `wanted` the device offers; sets FEATURES_OK and checks the device kept it.
    /// Returns the negotiated set. The device must be freshly reset.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, Fail> {
        self.add_status(S_ACKNOWLEDGE);
        self.add_status(S_DRIVER);
        self.offered = self.device_features();
        ensure!(
            self.offered & F_VERSION_1 != 0,
            "{}: the device does not offer VERSION_1 (offered {:#x}): not a modern device",
            self.bdf,
            self.offered
        );
        let features = self.offered & (wanted | F_VERSION_1);
        self.c_write32(C_DRIVER_FEATURE_SELECT, 0);
        self.c_write32(C_DRIVER_FEATURE, features as u32);
        self.c_write32(C_DRIVER_FEATURE_SELECT, 1);
        self.c_write32(C_DRIVER_FEATURE, (features >> 32) as u32);
        self.add_status(S_FEATURES_OK);
        let status = self.status();
        if status & S_FEATURES_OK == 0 {
            self.set_failed();
            fail!(
                "{}: the device cleared FEATURES_OK (status {status:#x}) after features {features:#x}",
                self.bdf
            );
        }
        self.features = features;
        // Configuration changes get MSI-X entry 0.
        if let Some(m) = self.msix {
            let vector = self.entry_vector(0)?;
            m.program(0, irq::apic_id(), vector);
            self.c_write16(C_CONFIG_MSIX_VECTOR, 0);
            let read = self.c_read16(C_CONFIG_MSIX_VECTOR);
            ensure!(
                read == 0,
                "{}: config_msix_vector reads {read:#x} after writing 0 (no MSI-X resources?)",
                self.bdf
            );
            self.config_vector = Some(vector);
            self.next_entry = 1;
        }
        Ok(features)
    }

    /// The IDT vector of MSI-X entry `entry` (a new one the first time).
    fn entry_vector(&mut self, entry: u16) -> Result<u8, Fail> {
        let entry = usize::from(entry);
        while self.entry_vectors.len() <= entry {
            let vector = irq::alloc_vectors(1)?;
            self.entry_vectors.push(vector);
        }
        Ok(self.entry_vectors[entry])
    }

    pub fn num_queues(&self) -> u16 {
        self.c_read16(C_NUM_QUEUES)
    }

    /// The largest size queue `index` supports (0: no such queue).
    pub fn queue_max_size(&self, index: u16) -> u16 {
        self.c_write16(C_QUEUE_SELECT, index);
        self.c_read16(C_QUEUE_SIZE)
    }

    /// Sets up queue `index` with at most `max_size` entries (the device's maximum rounded
    /// down to a power of two, if smaller): fresh rings, MSI-X entry in MSI-X mode, enabled.
    pub fn setup_queue(&mut self, index: u16, max_size: u16) -> Result<Virtqueue, Fail> {
        let offered = self.queue_max_size(index);
        ensure!(
            offered != 0,
            "{}: queue {index} is not available (queue_size 0)",
            self.bdf
        );
        let mut size = max_size.min(offered);
        if !size.is_power_of_two() {
            size = 1 << (15 - size.leading_zeros());
        }
        let indirect = self.features & F_INDIRECT_DESC != 0;
        let event_idx = self.features & F_EVENT_IDX != 0;
        let mut q = Virtqueue::new(index, size, indirect, event_idx)?;
        self.program_queue(&mut q)?;
        Ok(q)
    }

    /// Programs an existing queue's rings into the device again (after a reset), with a
    /// fresh MSI-X entry in MSI-X mode, and enables it.
    pub fn program_queue(&mut self, q: &mut Virtqueue) -> Result<(), Fail> {
        self.c_write16(C_QUEUE_SELECT, q.index);
        ensure!(
            self.c_read16(C_QUEUE_ENABLE) == 0,
            "{}: queue {} is already enabled before setup",
            self.bdf,
            q.index
        );
        self.c_write16(C_QUEUE_SIZE, q.size);
        self.c_write64(C_QUEUE_DESC, q.desc);
        self.c_write64(C_QUEUE_DRIVER, q.avail);
        self.c_write64(C_QUEUE_DEVICE, q.used);
        let notify_off = self.c_read16(C_QUEUE_NOTIFY_OFF);
        let offset = u64::from(notify_off) * u64::from(self.notify_multiplier);
        ensure!(
            offset + 2 <= u64::from(self.notify.len),
            "{}: queue {} notifies at offset {offset:#x}, beyond the {:#x}-byte notification region",
            self.bdf,
            q.index,
            self.notify.len
        );
        q.set_notify_addr(self.notify.addr + offset);
        q.vector = None;
        if let Some(m) = self.msix {
            // One entry per queue while the table lasts; then queues share the last one.
            let entry = if self.next_entry < m.entries {
                self.next_entry += 1;
                self.next_entry - 1
            } else {
                self.shared_vectors = true;
                m.entries - 1
            };
            let vector = self.entry_vector(entry)?;
            m.program(entry, irq::apic_id(), vector);
            self.c_write16(C_QUEUE_MSIX_VECTOR, entry);
            let read = self.c_read16(C_QUEUE_MSIX_VECTOR);
            ensure!(
                read == entry,
                "{}: queue {} msix_vector reads {read:#x} after writing {entry}",
                self.bdf,
                q.index
            );
            q.vector = Some(vector);
            q.irq_seen = irq::count(vector);
        }
        q.want_interrupts(q.vector.is_some());
        self.c_write16(C_QUEUE_ENABLE, 1);
        Ok(())
    }

    /// DRIVER_OK: the device is live. In MSI-X mode, interrupts start flowing now.
    pub fn driver_ok(&self) -> Result<(), Fail> {
        self.add_status(S_DRIVER_OK);
        if let Some(m) = &self.msix {
            m.unmask_function();
        }
        let status = self.status();
        ensure!(
            status & (S_NEEDS_RESET | S_FAILED) == 0 && status & S_DRIVER_OK != 0,
            "{}: status {status:#x} after DRIVER_OK",
            self.bdf
        );
        Ok(())
    }

    /// Resets the device and brings it up again with the same features and the given
    /// queues (their rings zeroed, in-flight chains forgotten): the recovery a driver does
    /// after DEVICE_NEEDS_RESET.
    pub fn reinit(&mut self, queues: &mut [&mut Virtqueue]) -> Result<(), Fail> {
        self.reset()?;
        let wanted = self.features;
        let got = self.negotiate(wanted)?;
        ensure!(
            got == wanted,
            "{}: after a reset the device offers {got:#x} of the features {wanted:#x}",
            self.bdf
        );
        self.next_entry = 1;
        for q in queues.iter_mut() {
            q.reset();
            self.program_queue(q)?;
        }
        self.driver_ok()
    }

    /// Reads the ISR status (reading clears it): bit 0 queue, bit 1 configuration change.
    pub fn isr(&self) -> u8 {
        // SAFETY: the ISR region lies in a live memory BAR (checked by `open`).
        unsafe { io::mmio_read8(self.isr.addr) }
    }

    pub fn config_generation(&self) -> u8 {
        self.c_read8(C_CONFIG_GENERATION)
    }

    fn device_addr(&self, off: u64, width: u64) -> Result<u64, Fail> {
        let Some(r) = self.device else {
            fail!("{}: no device configuration capability", self.bdf);
        };
        ensure!(
            off + width <= u64::from(r.len),
            "{}: device configuration field at {off:#x} beyond its {:#x} bytes",
            self.bdf,
            r.len
        );
        Ok(r.addr + off)
    }

    /// Reads a device configuration field of 1, 2, 4 or 8 bytes (8: two 32-bit reads,
    /// retried until config_generation is stable).
    pub fn cfg(&self, off: u64, width: u64) -> Result<u64, Fail> {
        let addr = self.device_addr(off, width)?;
        for _ in 0..100 {
            let before = self.config_generation();
            // SAFETY: inside the device configuration region of a live memory BAR.
            let value = unsafe {
                match width {
                    1 => u64::from(io::mmio_read8(addr)),
                    2 => u64::from(io::mmio_read16(addr)),
                    4 => u64::from(io::mmio_read32(addr)),
                    _ => {
                        u64::from(io::mmio_read32(addr))
                            | (u64::from(io::mmio_read32(addr + 4)) << 32)
                    }
                }
            };
            if width < 8 || self.config_generation() == before {
                return Ok(value);
            }
        }
        fail!("{}: config_generation never settles", self.bdf)
    }

    /// Waits for queue `q`'s next used entry: polling, or in MSI-X mode halting until its
    /// interrupt. In MSI-X mode every used entry must also have been signalled: an entry
    /// found in the ring before its interrupt waits for it (a pending interrupt is taken at
    /// once), so each completion proves the interrupt path. Fails early when the device
    /// sets DEVICE_NEEDS_RESET.
    pub fn wait_used(&self, q: &mut Virtqueue, timeout_ms: u64) -> Result<Used, QueueError> {
        let deadline = Deadline::after_ms(timeout_ms);
        loop {
            let ready = q.has_used();
            if let (true, Some(vector)) = (ready, q.vector) {
                if !q.next_signalled() {
                    let slice = Deadline::after_us(deadline.remaining_us().min(1000));
                    let seen = q.irq_seen;
                    irq::wait_until(&slice, || irq::count(vector) != seen);
                    if irq::count(vector) != seen {
                        q.irq_seen = irq::count(vector);
                        q.used_at_irq = q.used_idx();
                    } else if deadline.expired() {
                        return Err(QueueError::NoInterrupt(self.status()));
                    }
                }
                if q.next_signalled() {
                    if let Some(used) = q.pop_used() {
                        return Ok(used);
                    }
                }
                continue;
            }
            if ready {
                if let Some(used) = q.pop_used() {
                    return Ok(used);
                }
            }
            // Check the status about every millisecond (an MMIO read is a VM exit).
            let slice = Deadline::after_us(deadline.remaining_us().min(1000));
            if let Some(vector) = q.vector {
                let seen = q.irq_seen;
                irq::wait_until(&slice, || irq::count(vector) != seen);
                if irq::count(vector) != seen {
                    q.irq_seen = irq::count(vector);
                    q.used_at_irq = q.used_idx();
                    continue;
                }
            } else {
                while !q.has_used() && !slice.expired() {
                    core::hint::spin_loop();
                }
                if q.has_used() {
                    continue;
                }
            }
            let status = self.status();
            if status & S_NEEDS_RESET != 0 {
                return Err(QueueError::NeedsReset(status));
            }
            if deadline.expired() {
                return Err(QueueError::Timeout(status));
            }
        }
    }
}

/// Why a wait for a used entry ended without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Nothing within the timeout (the device status then).
    Timeout(u8),
    /// The device set DEVICE_NEEDS_RESET (its status).
    NeedsReset(u8),
    /// MSI-X mode: a used entry appeared but its interrupt never came.
    NoInterrupt(u8),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(s) => write!(f, "no used entry in time (device status {s:#x})"),
            Self::NeedsReset(s) => write!(f, "the device set DEVICE_NEEDS_RESET (status {s:#x})"),
            Self::NoInterrupt(s) => write!(
                f,
                "a used entry appeared but no MSI-X interrupt came (device status {s:#x})"
            ),
        }
    }
}

impl From<QueueError> for Fail {
    fn from(e: QueueError) -> Self {
        Fail::new(format!("{e}"))
    }
}
