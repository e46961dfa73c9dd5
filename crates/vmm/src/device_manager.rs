//! The machine's devices, their bus addresses and interrupt wiring.
//!
//! Devices live as long as the [`crate::vm::Machine`]: a guest reboot resets
//! them but keeps their host-side connections (the console) and the CMOS
//! NVRAM, as on a real PC.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vireo_devices::debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use vireo_devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use vireo_devices::pci::{HostBridge, PciAddress, PciConfigIo, PciEcam, PciRegistry};
use vireo_devices::pci::{PciAllocator, PciWindows, SharedPciDevice, Window};
use vireo_devices::pm::{Pm1, ResetControl, PM1_BASE, PM1_LEN, RESET_PORT};
use vireo_devices::rtc::{RamSize, Rtc, SystemClock, RTC_BASE, RTC_LEN};
use vireo_devices::serial::{Serial, COM1_BASE, SERIAL_LEN};
use vireo_devices::virtio::block::{Block, BlockConfig, BlockError};
use vireo_devices::virtio::console::Console as VirtioConsole;
use vireo_devices::virtio::net::tap::{Tap, TapError};
use vireo_devices::virtio::net::{Net, NetConfig as NetDeviceConfig, NetError};
use vireo_devices::virtio::pci::VirtioPciDevice;
use vireo_devices::virtio::rng::Rng;
use vireo_devices::virtio::VirtioDevice;
use vireo_devices::GuestMemoryMmap;
use vireo_devices::{Bus, Interrupt, VmControl};
use vireo_disk::image::{self, BackingMode, ImageOptions};
use vireo_disk::{Disk, ImageDisk, ImageError, ImageFormat, QueueConfig, RawDisk, RawOptions};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{ConsoleDevice, DiskConfig, NetConfig, TapSource, VmConfig};
use crate::console::SharedSink;
use crate::memory::{
    MemoryLayout, PCI_ECAM_START, PCI_IO_SIZE, PCI_IO_START, PCI_LAST_BUS, PCI_MMIO32_SIZE,
    PCI_MMIO32_START,
};
use crate::pci_wiring::Wiring;

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

/// Opens a disk image and builds its virtio-blk device.
fn open_disk(index: usize, disk: &DiskConfig) -> Result<Block, DeviceError> {
    let image_error = |source| DeviceError::Image { index, source };
    let format = match disk.format {
        Some(format) => format,
        None => image::probe(&disk.path).map_err(image_error)?,
    };
    let backend: Arc<dyn Disk> = match format {
        // Raw files and block devices take the io_uring path.
        ImageFormat::Raw => {
            let options = RawOptions {
                read_only: disk.read_only,
                direct: disk.direct,
                serial: disk.serial.clone(),
            };
            Arc::new(
                RawDisk::open(&disk.path, &options)
                    .map_err(|source| DeviceError::Disk { index, source })?,
            )
        }
        ImageFormat::Qcow2 => {
            if disk.direct {
                return Err(image_error(ImageError::Unsupported {
                    path: disk.path.clone(),
                    what: "direct I/O on qcow2 images".into(),
                }));
            }
            let options = ImageOptions {
                read_only: disk.read_only,
                format: Some(format),
                backing: BackingMode::Follow,
            };
            let image = image::open(&disk.path, &options).map_err(image_error)?;
            Arc::new(
                ImageDisk::new(image, disk.serial.as_deref())
                    .map_err(|source| DeviceError::Disk { index, source })?,
            )
        }
    };
    let config = BlockConfig {
        num_queues: disk.queues,
        io: QueueConfig {
            name: format!("vd{}", (b'a' + (index % 26) as u8) as char),
            ..QueueConfig::default()
        },
        serial: disk.serial.clone(),
        ..BlockConfig::default()
    };
    Block::new(backend, config).map_err(|source| DeviceError::Block {
        index,
        path: disk.path.display().to_string(),
        source,
    })
}

/// Opens a NIC's TAP and builds its device.
fn open_nic(index: usize, nic: &NetConfig) -> Result<Net, DeviceError> {
    let taps = match &nic.tap {
        TapSource::Name(name) => Tap::open_named(name, usize::from(nic.queues))
            .map_err(|source| DeviceError::Tap { index, source })?,
        TapSource::Fd(fd) => {
            // SAFETY: F_GETFD only inspects the descriptor table.
            if *fd < 0 || unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                return Err(DeviceError::TapFd { index, fd: *fd });
            }
            // SAFETY: the descriptor is open and was handed to this process
            // for the NIC (the --net fd=N contract); nothing else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            vec![Tap::from_fd(owned).map_err(|source| DeviceError::Tap { index, source })?]
        }
    };
    let config = NetDeviceConfig {
        mac: nic.mac,
        ..NetDeviceConfig::default()
    };
    Net::new(taps, config).map_err(|source| DeviceError::Net { index, source })
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
    /// PCI functions by bus/device/function.
    pub pci: Arc<PciRegistry>,
    /// PCI functions' links to KVM and the event loop.
    pub wiring: Arc<Wiring>,
    allocator: PciAllocator,
    /// Bus-mastering functions (they get guest memory at every boot).
    dma: Vec<SharedPciDevice>,
    virtio_console: Option<Arc<Mutex<VirtioPciDevice<VirtioConsole>>>>,
    irqs: Vec<Arc<IrqLine>>,
    /// The console sink COM1 (and a virtio-console) write to.
    sink: SharedSink,
}

/// Why a configured device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The NIC's TAP could not be opened or set up.
    #[error("network device {index}")]
    Tap {
        index: usize,
        #[source]
        source: TapError,
    },
    /// An inherited TAP descriptor is not open.
    #[error("network device {index}: fd {fd} is not an open descriptor")]
    TapFd { index: usize, fd: i32 },
    /// The NIC's parameters do not fit its TAP.
    #[error("network device {index}")]
    Net {
        index: usize,
        #[source]
        source: NetError,
    },
    /// The disk image's format layer refused it.
    #[error("disk {index}")]
    Image {
        index: usize,
        #[source]
        source: ImageError,
    },
    /// The disk image could not be opened.
    #[error("disk {index}")]
    Disk {
        index: usize,
        #[source]
        source: vireo_disk::OpenError,
    },
    /// The disk's parameters do not fit, or its queues cannot start.
    #[error("disk {index} ({path})")]
    Block {
        index: usize,
        path: String,
        #[source]
        source: BlockError,
    },
    /// The monitor could not wire a device (resources, host limits).
    #[error("setting up PCI devices")]
    Io(#[from] std::io::Error),
}

impl DeviceError {
    /// Whether the user's configuration (rather than the host) is at fault.
    pub fn is_config(&self) -> bool {
        !matches!(self, DeviceError::Io(_))
    }
}

/// The windows the host bridge forwards (and ACPI describes).
pub fn pci_windows() -> PciWindows {
    PciWindows {
        io: Some(Window {
            base: PCI_IO_START,
            size: PCI_IO_SIZE,
        }),
        mmio32: Window {
            base: PCI_MMIO32_START,
            size: PCI_MMIO32_SIZE,
        },
        mmio64: None,
    }
}

impl DeviceManager {
    /// Builds the legacy PC devices and places them on the buses.
    pub fn new(
        layout: &MemoryLayout,
        control: Arc<dyn VmControl>,
        console: Box<dyn Write + Send>,
        epoll: Arc<Epoll>,
    ) -> std::io::Result<DeviceManager> {
        let console = SharedSink::new(console);
        let com1_irq = IrqLine::new(COM1_IRQ)?;
        let sci = IrqLine::new(SCI_IRQ)?;
        let serial = Arc::new(Mutex::new(Serial::new(
            com1_irq.clone(),
            Box::new(console.clone()),
        )));
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
        let mmio = Bus::new();

        let pio = Bus::new();
        let place = |bus: &Bus, dev, base, len| {
            bus.insert(dev, base, len)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        place(&pio, serial.clone(), COM1_BASE, SERIAL_LEN)?;
        place(&pio, i8042.clone(), I8042_BASE, I8042_LEN)?;
        place(&pio, rtc, RTC_BASE, RTC_LEN)?;
        place(&pio, pm.clone(), PM1_BASE, PM1_LEN)?;
        place(
            &pio,
            Arc::new(Mutex::new(config_io)),
            PCI_CONFIG_IO,
            PCI_CONFIG_IO_LEN,
        )?;
        let ecam_len = (u64::from(PCI_LAST_BUS) + 1) << 20;
        place(&mmio, Arc::new(Mutex::new(ecam)), PCI_ECAM_START, ecam_len)?;
        place(&pio, exit, DEBUG_EXIT_PORT, DEBUG_EXIT_LEN)?;
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let wiring = Wiring::new(pci.clone(), mmio.clone(), pio.clone(), epoll);
        pci.set_listener(wiring.clone());
        let allocator =
            PciAllocator::new(pci_windows()).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(DeviceManager {
            pio,
            mmio,
            serial,
            i8042,
            pm,
            pci,
            wiring,
            allocator,
            dma: Vec::new(),
            virtio_console: None,
            irqs: vec![com1_irq, sci],
            sink: console,
        })
    }

    /// Adds the PCI devices `config` asks for, in a fixed slot order: the
    /// console, the entropy source, the disks, then the NICs.
    pub fn add_configured(&mut self, config: &VmConfig) -> Result<(), DeviceError> {
        if config.console == ConsoleDevice::Virtio {
            let console = VirtioConsole::new(Box::new(self.sink.clone()));
            let dev = Arc::new(Mutex::new(self.wrap_virtio(console)?));
            self.add_pci(dev.clone())?;
            self.virtio_console = Some(dev);
        }
        if config.rng {
            let rng = self.wrap_virtio(Rng::new())?;
            self.add_pci(Arc::new(Mutex::new(rng)))?;
        }
        for (index, disk) in config.disks.iter().enumerate() {
            let blk = open_disk(index, disk)?;
            let blk = self.wrap_virtio(blk)?;
            self.add_pci(Arc::new(Mutex::new(blk)))?;
        }
        for (index, nic) in config.nets.iter().enumerate() {
            let net = open_nic(index, nic)?;
            let net = self.wrap_virtio(net)?;
            self.add_pci(Arc::new(Mutex::new(net)))?;
        }
        Ok(())
    }

    /// Puts `device` on the virtio-pci transport with MSI-X vectors of its own.
    fn wrap_virtio<D: VirtioDevice>(&self, device: D) -> std::io::Result<VirtioPciDevice<D>> {
        let vectors = device.queue_max_sizes().len() as u16 + 1;
        let msi = self.wiring.msi_for(vectors)?;
        VirtioPciDevice::new(device, msi, None).map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Places a function's BARs (the firmware's job), puts it in the first
    /// free slot of bus 0 and wires it to KVM and the event loop.
    fn add_pci(&mut self, device: SharedPciDevice) -> std::io::Result<()> {
        let err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        {
            let mut d = vireo_devices::pci::lock_device(&device);
            for spec in d.bars() {
                let addr = self.allocator.allocate(&spec).map_err(|e| err(&e))?;
                d.place_bar(spec.index, addr).map_err(|e| err(&e))?;
            }
        }
        let slot = self
            .pci
            .free_slot(0)
            .ok_or_else(|| std::io::Error::other("no free PCI slot on bus 0"))?;
        self.pci.add(slot, device.clone()).map_err(|e| err(&e))?;
        self.wiring.connect_device(&device);
        self.dma.push(device);
        Ok(())
    }

    /// Connects the devices to a freshly created KVM VM (interrupt lines,
    /// MSI routes, doorbells) and gives DMA-capable functions its memory.
    pub fn connect(&self, vm: &Arc<VmFd>, mem: &GuestMemoryMmap) -> Result<(), kvm_ioctls::Error> {
        for irq in &self.irqs {
            vm.register_irqfd(&irq.efd, irq.gsi)?;
        }
        self.wiring.attach(vm.clone())?;
        for d in &self.dma {
            vireo_devices::pci::lock_device(d).set_dma_memory(mem.clone());
        }
        Ok(())
    }

    /// The VM of the boot that ended is gone.
    pub fn disconnect(&self) {
        self.wiring.detach();
    }

    /// Whether console input goes to a virtio-console.
    pub fn has_virtio_console(&self) -> bool {
        self.virtio_console.is_some()
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

    /// Offers console input to the console device (COM1, or the
    /// virtio-console); returns how many bytes it took.
    pub fn enqueue_console_input(&self, data: &[u8]) -> usize {
        if let Some(c) = &self.virtio_console {
            return c
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .device_mut()
                .enqueue_input(data);
        }
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
