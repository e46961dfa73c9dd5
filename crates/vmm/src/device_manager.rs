//! The machine's devices, their bus addresses and interrupt wiring.
//!
//! Devices live as long as the [`crate::vm::Machine`]: a guest reboot resets
//! them but keeps their host-side connections (the console) and the CMOS
//! NVRAM, as on a real PC.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vireo_devices::debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use vireo_devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use vireo_devices::pci::{HostBridge, PciAddress, PciConfigIo, PciEcam, PciRegistry};
use vireo_devices::pm::{Pm1, ResetControl, PM1_BASE, PM1_LEN, RESET_PORT};
use vireo_devices::rtc::{RamSize, Rtc, SystemClock, RTC_BASE, RTC_LEN};
use vireo_devices::serial::{Serial, COM1_BASE, SERIAL_LEN};
use vireo_devices::{Bus, Interrupt, VmControl};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::{MemoryLayout, PCI_ECAM_START, PCI_LAST_BUS};

/// The legacy PCI configuration ports (address at 0xcf8, data at 0xcfc); the
/// reset control register 0xcf9 sits inside and is passed through.
const PCI_CONFIG_IO: u64 = 0xcf8;
const PCI_CONFIG_IO_LEN: u64 = 8;

/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// IRQ of the ACPI SCI (PM1 events: the power button).
pub const SCI_IRQ: u32 = 9;

/// An interrupt line backed by an eventfd that KVM listens on (irqfd).
#[derive(Debug)]
pub struct IrqLine {
    gsi: u32,
    efd: EventFd,
}

impl IrqLine {
    fn new(gsi: u32) -> std::io::Result<Arc<IrqLine>> {
        Ok(Arc::new(IrqLine {
            gsi,
            efd: EventFd::new(EFD_NONBLOCK)?,
        }))
    }
}

impl Interrupt for IrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.efd.write(1)
    }
}

/// All devices of the machine.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    i8042: Arc<Mutex<I8042>>,
    pm: Arc<Mutex<Pm1>>,
    /// PCI functions by bus/device/function (the host bridge for now).
    pub pci: Arc<PciRegistry>,
    irqs: Vec<Arc<IrqLine>>,
}

impl DeviceManager {
    /// Builds the legacy PC devices and places them on the buses.
    pub fn new(
        layout: &MemoryLayout,
        control: Arc<dyn VmControl>,
        console: Box<dyn Write + Send>,
    ) -> std::io::Result<DeviceManager> {
        let com1_irq = IrqLine::new(COM1_IRQ)?;
        let sci = IrqLine::new(SCI_IRQ)?;
        let serial = Arc::new(Mutex::new(Serial::new(com1_irq.clone(), console)));
        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
        let ram = RamSize {
            below_4g: layout.low_end(),
            above_4g: layout.size() - layout.low_end(),
        };
        let rtc = Arc::new(Mutex::new(Rtc::with_ram_size(Box::new(SystemClock), ram)));
        let pm = Arc::new(Mutex::new(Pm1::new(sci.clone(), control.clone())));
        let reset = Arc::new(Mutex::new(ResetControl::new(control.clone())));
        let exit = Arc::new(Mutex::new(DebugExit::new(control)));

        let pci = Arc::new(PciRegistry::new());
        let host_bridge =
            PciAddress::new(0, 0, 0).ok_or_else(|| std::io::Error::other("PCI address 00:00.0"))?;
        pci.add(host_bridge, Arc::new(Mutex::new(HostBridge::new())))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let config_io =
            PciConfigIo::new(pci.clone()).with_passthrough(RESET_PORT - PCI_CONFIG_IO, 1, reset);
        let ecam = PciEcam::new(pci.clone(), 0, PCI_LAST_BUS);
        let mut mmio = Bus::new();

        let mut pio = Bus::new();
        let place = |bus: &mut Bus, dev, base, len| {
            bus.insert(dev, base, len)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        place(&mut pio, serial.clone(), COM1_BASE, SERIAL_LEN)?;
        place(&mut pio, i8042.clone(), I8042_BASE, I8042_LEN)?;
        place(&mut pio, rtc, RTC_BASE, RTC_LEN)?;
        place(&mut pio, pm.clone(), PM1_BASE, PM1_LEN)?;
        place(
            &mut pio,
            Arc::new(Mutex::new(config_io)),
            PCI_CONFIG_IO,
            PCI_CONFIG_IO_LEN,
        )?;
        let ecam_len = (u64::from(PCI_LAST_BUS) + 1) << 20;
        place(
            &mut mmio,
            Arc::new(Mutex::new(ecam)),
            PCI_ECAM_START,
            ecam_len,
        )?;
        place(&mut pio, exit, DEBUG_EXIT_PORT, DEBUG_EXIT_LEN)?;
        Ok(DeviceManager {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            serial,
            i8042,
            pm,
            pci,
            irqs: vec![com1_irq, sci],
        })
    }

    /// Registers the interrupt lines with a freshly created KVM VM.
    pub fn connect(&self, vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
        for irq in &self.irqs {
            vm.register_irqfd(&irq.efd, irq.gsi)?;
        }
        Ok(())
    }

    /// Resets device state for a reboot (the console and CMOS NVRAM persist).
    pub fn reset(&self) {
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
        self.i8042.lock().unwrap_or_else(|p| p.into_inner()).reset();
        self.pm.lock().unwrap_or_else(|p| p.into_inner()).reset();
        self.pci.reset();
    }

    /// Offers console input to COM1; returns how many bytes it took.
    pub fn enqueue_serial_input(&self, data: &[u8]) -> usize {
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(data)
    }

    /// Presses the ACPI power button (a graceful shutdown request).
    pub fn press_power_button(&self) -> bool {
        self.pm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button()
    }
}
