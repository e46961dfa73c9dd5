//! One VM: KVM setup, boot, the vCPU threads, and the event loop that ends,
//! reboots, pauses and resumes it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vireo_api::MonitorExit;
use vireo_devices::VmRequest;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::arch::x86_64::{acpi, boot, cpuid, linux, mptable, regs};
use crate::config::{ConfigError, VmConfig};
use crate::console::{Console, ConsoleError, Input};
use crate::device_manager::DeviceManager;
use crate::events::{Event, Notifier, VcpuFailure};
use crate::memory::{host_phys_bits, MemoryLayout};
use crate::pci_wiring::FIRST_KEY;
use crate::vcpu::{self, Desired, VcpuContext, VcpuHandle, VcpuState};

/// Where KVM puts the TSS it needs on Intel hosts: three pages just below the
/// BIOS area at the top of the 32-bit space, inside the MMIO hole.
const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// How long to wait for all vCPUs to park on pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors building or running the VM (the monitor's fault or the host's, not
/// the guest's: what the guest does ends in an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm (is KVM enabled on this host, and may this user use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApi(i32),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {size} MiB of guest memory")]
    Memory {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error("building the ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    #[error("building the MP table")]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Device(#[from] crate::device_manager::DeviceError),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    /// The exit code this error maps to.
    pub fn exit(&self) -> MonitorExit {
        match self {
            VmError::Config(_) | VmError::Boot(_) | VmError::Console(_) => MonitorExit::Usage,
            VmError::Device(d) if d.is_config() => MonitorExit::Usage,
            _ => MonitorExit::MonitorError,
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The monitor's exit code.
    pub exit: MonitorExit,
    /// What happened, for people (may hold a register dump).
    pub message: String,
}

/// Requests from other threads (tests, the control socket) to a running VM.
#[derive(Debug)]
pub enum ControlRequest {
    /// Park every vCPU; replies once all are parked.
    Pause(Sender<Result<(), String>>),
    /// Let the vCPUs run again.
    Resume(Sender<Result<(), String>>),
    /// Press the ACPI power button: a request the guest may honour by shutting
    /// down. Replies whether the guest had enabled the button's event.
    PowerButton(Sender<Result<bool, String>>),
    /// Stop the VM in order (as SIGTERM does).
    Stop,
}

/// A handle to ask a running [`Machine`] to pause, resume or stop.
#[derive(Clone)]
pub struct MachineHandle {
    notifier: Arc<Notifier>,
}

impl MachineHandle {
    fn call(&self, make: fn(Sender<Result<(), String>>) -> ControlRequest) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.notifier.send(Event::Control(make(tx)));
        rx.recv_timeout(PAUSE_TIMEOUT * 2)
            .map_err(|_| "the VM did not answer".to_string())?
    }

    /// Pauses all vCPUs.
    pub fn pause(&self) -> Result<(), String> {
        self.call(ControlRequest::Pause)
    }

    /// Resumes all vCPUs.
    pub fn resume(&self) -> Result<(), String> {
        self.call(ControlRequest::Resume)
    }

    /// Presses the ACPI power button (a graceful shutdown request). Returns
    /// whether the guest was listening for it.
    pub fn power_button(&self) -> Result<bool, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.notifier
            .send(Event::Control(ControlRequest::PowerButton(tx)));
        rx.recv_timeout(PAUSE_TIMEOUT)
            .map_err(|_| "the VM did not answer".to_string())?
    }

    /// Stops the VM; `Machine::run` then returns `Terminated`.
    pub fn stop(&self) {
        self.notifier.send(Event::Control(ControlRequest::Stop));
    }
}

/// One boot of the VM: KVM objects and guest memory. Dropped on reboot.
struct Booted {
    // Field order is drop order: vCPU threads stop before the VM fd closes.
    vcpus: Vec<VcpuHandle>,
    _vm: Arc<VmFd>,
    _mem: GuestMemoryMmap,
}

/// A VM and everything that outlives its reboots (devices, console, events).
pub struct Machine {
    config: VmConfig,
    layout: MemoryLayout,
    kvm: Kvm,
    /// KVM's supported CPUID entries, restricted to the CPU model.
    supported: Vec<kvm_bindings::kvm_cpuid_entry2>,
    devices: DeviceManager,
    notifier: Arc<Notifier>,
    events: Receiver<Event>,
    /// The event loop's epoll; devices add their descriptors to it.
    epoll: Arc<Epoll>,
    input: Input,
    booted: Option<Booted>,
    boots: u32,
}

/// Blocks the signals the event loop takes through a signalfd, and returns it.
fn signal_fd() -> Result<OwnedFd, VmError> {
    // SAFETY: plain libc calls on local sigset values; results are checked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io_err("blocking signals")(std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io_err("creating a signalfd")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

impl Machine {
    /// Checks the configuration, opens KVM and the console, and builds the
    /// devices. Nothing runs until [`Machine::run`].
    pub fn new(config: VmConfig) -> Result<(Machine, MachineHandle), VmError> {
        // Check what the user gave before touching KVM, so that mistakes are
        // reported as such even on a host without /dev/kvm.
        config.validate(u32::MAX, host_phys_bits())?;
        boot::probe_kernel(&config.kernel)?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(VmError::KvmApi(api));
        }
        let max = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
        let layout = config.validate(max, host_phys_bits())?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report its supported CPUID"))?;
        let supported = config.cpu_model.apply(supported.as_slice());
        let (notifier, events) = Notifier::new().map_err(io_err("creating an eventfd"))?;
        let notifier = Arc::new(notifier);
        let console = Console::open(&config.serial)?;
        let epoll = Arc::new(Epoll::new().map_err(io_err("creating an epoll"))?);
        let mut devices =
            DeviceManager::new(&layout, notifier.clone(), console.output, epoll.clone())
                .map_err(io_err("creating devices"))?;
        devices.add_configured(&config)?;
        vcpu::install_kick_handler()
            .map_err(|e| io_err("installing the vCPU kick handler")(e.into()))?;
        let handle = MachineHandle {
            notifier: notifier.clone(),
        };
        Ok((
            Machine {
                config,
                layout,
                kvm,
                supported,
                devices,
                notifier,
                events,
                epoll,
                input: console.input,
                booted: None,
                boots: 0,
            },
            handle,
        ))
    }

    /// Creates the KVM VM, loads the kernel and starts the vCPUs.
    fn boot(&mut self) -> Result<(), VmError> {
        let vm = Arc::new(self.kvm.create_vm().map_err(kvm_err("create a VM"))?);

        let mem = self.layout.allocate().map_err(|source| VmError::Memory {
            size: self.layout.size() >> 20,
            source,
        })?;
        // Registering the first memory slot takes KVM about 5 ms on our test
        // hosts (whatever the size), so it runs on its own thread while this one
        // creates the irqchip and PIT, loads the kernel and sets up the vCPUs.
        let vcpus = std::thread::scope(|scope| {
            let slots = std::thread::Builder::new()
                .name("memslots".into())
                .spawn_scoped(scope, || register_memory(&vm, &mem))
                .map_err(io_err("starting a thread"))?;
            let work = || -> Result<_, VmError> {
                vm.set_tss_address(KVM_TSS_ADDR)
                    .map_err(kvm_err("set the TSS address"))?;
                vm.create_irq_chip()
                    .map_err(kvm_err("create the in-kernel irqchip"))?;
                let pit = kvm_pit_config {
                    flags: KVM_PIT_SPEAKER_DUMMY,
                    ..Default::default()
                };
                vm.create_pit2(pit)
                    .map_err(kvm_err("create the in-kernel PIT"))?;
                let topo = self.config.topology();
                let acpi = acpi::AcpiConfig {
                    apic_ids: (0..self.config.cpus).map(|i| topo.apic_id(i)).collect(),
                    pci: Some(pci_host_bridge()),
                };
                let tables = acpi::create_acpi_tables(&mem, &acpi)?;
                let leaf1 = self.supported.iter().find(|e| e.function == 1);
                mptable::write(
                    &mem,
                    &acpi.apic_ids,
                    leaf1.map_or(0, |e| e.eax),
                    leaf1.map_or(0, |e| e.edx),
                )?;
                let source = boot::BootSource {
                    kernel: &self.config.kernel,
                    initrd: self.config.initrd.as_deref(),
                    cmdline: &self.config.cmdline,
                    rsdp: Some(tables.rsdp.0),
                    linux_extra: self.config.cpu_model.linux_cmdline(),
                };
                let entry = boot::load(&mem, &self.layout, &source)?;
                self.devices
                    .connect(&vm, &mem)
                    .map_err(kvm_err("connect device interrupts"))?;
                let vcpus = (0..self.config.cpus)
                    .map(|index| self.create_vcpu(&vm, topo, index, entry))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(vcpus)
            };
            let result = work();
            let registered = slots
                .join()
                .map_err(|_| io_err("registering memory")(std::io::ErrorKind::Other.into()))?;
            registered?;
            result
        })?;
        let budget = self
            .config
            .exit_budget
            .map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n)));
        let mut handles = Vec::with_capacity(vcpus.len());
        for (index, fd) in vcpus.into_iter().enumerate() {
            let ctx = VcpuContext {
                index: index as u32,
                fd,
                pio: self.devices.pio.clone(),
                mmio: self.devices.mmio.clone(),
                mem: mem.clone(),
                notifier: self.notifier.clone(),
                exit_budget: budget.clone(),
            };
            handles.push(VcpuHandle::spawn(ctx).map_err(io_err("starting a vCPU thread"))?);
        }
        self.boots += 1;
        self.booted = Some(Booted {
            vcpus: handles,
            _vm: vm,
            _mem: mem,
        });
        Ok(())
    }

    /// Creates and configures vCPU `index`; the BSP (index 0) gets the PVH
    /// entry state, the APs wait for INIT/SIPI.
    fn create_vcpu(
        &self,
        vm: &VmFd,
        topo: cpuid::Topology,
        index: u32,
        entry: boot::BootEntry,
    ) -> Result<kvm_ioctls::VcpuFd, VmError> {
        let fd = vm
            .create_vcpu(u64::from(topo.apic_id(index)))
            .map_err(kvm_err("create a vCPU"))?;
        let table = cpuid::build(&self.supported, topo, index);
        if index == 0 {
            if let Some(l1) = table.iter().find(|e| e.function == 1) {
                log::debug!(
                    "CPU model {}: leaf 1 ecx={:#010x} edx={:#010x}",
                    self.config.cpu_model,
                    l1.ecx,
                    l1.edx
                );
            }
        }
        let table = CpuId::from_entries(&table)
            .map_err(|_| io_err("building CPUID")(std::io::ErrorKind::InvalidData.into()))?;
        fd.set_cpuid2(&table).map_err(kvm_err("set CPUID"))?;
        let msrs = regs::msrs_fam(&regs::boot_msrs())
            .map_err(|_| io_err("building MSRs")(std::io::ErrorKind::InvalidData.into()))?;
        let set = fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
        if set != msrs.as_slice().len() {
            log::debug!("KVM accepted {set} of {} boot MSRs", msrs.as_slice().len());
        }
        fd.set_fpu(&regs::initial_fpu())
            .map_err(kvm_err("set the FPU state"))?;
        let mut lapic = fd.get_lapic().map_err(kvm_err("read the local APIC"))?;
        regs::set_virtual_wire(&mut lapic.regs);
        fd.set_lapic(&lapic)
            .map_err(kvm_err("set the local APIC"))?;
        if index == 0 {
            let sregs = fd.get_sregs().map_err(kvm_err("read special registers"))?;
            let (sregs, regs) = match entry {
                boot::BootEntry::Pvh { entry, start_info } => {
                    (regs::pvh_sregs(sregs), regs::pvh_regs(entry, start_info))
                }
                boot::BootEntry::Linux64 { entry, boot_params } => (
                    regs::long_mode_sregs(sregs, linux::PML4_ADDR),
                    regs::linux_regs(entry, boot_params, linux::BOOT_STACK),
                ),
            };
            fd.set_sregs(&sregs)
                .map_err(kvm_err("set special registers"))?;
            fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
        }
        Ok(fd)
    }

    /// Stops all vCPUs and drops the KVM VM.
    fn shutdown(&mut self) {
        if let Some(mut b) = self.booted.take() {
            for v in &b.vcpus {
                v.control.set_desired(Desired::Stop);
            }
            for v in b.vcpus.iter_mut() {
                v.stop();
            }
        }
        self.devices.disconnect();
        // Events of the boot that just ended are moot now.
        while self.events.try_recv().is_ok() {}
    }

    fn set_all(&self, d: Desired) -> Result<(), String> {
        let Some(b) = &self.booted else {
            return Err("the VM is not running".into());
        };
        for v in &b.vcpus {
            v.request(d);
        }
        if d == Desired::Pause {
            for v in &b.vcpus {
                let s = v.control.wait_for(
                    |s| matches!(s, VcpuState::Paused | VcpuState::Exited),
                    PAUSE_TIMEOUT,
                );
                if !matches!(s, VcpuState::Paused | VcpuState::Exited) {
                    return Err(format!("vcpu{} did not pause", v.index));
                }
            }
        }
        Ok(())
    }

    /// Boots the VM and runs it until it ends; reboots happen inside.
    pub fn run(mut self) -> Result<Outcome, VmError> {
        let signals = signal_fd()?;
        let epoll = self.epoll.clone();
        const EVENTS: u64 = 0;
        const SIGNALS: u64 = 1;
        const INPUT: u64 = 2;
        const CLIENT: u64 = 3;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.notifier.eventfd().as_raw_fd(), EVENTS).map_err(io_err("polling"))?;
        add(signals.as_raw_fd(), SIGNALS).map_err(io_err("polling"))?;
        let mut pending: Vec<u8> = Vec::new();
        let mut input_open = match self.input.poll_fd() {
            Some(fd) => match add(fd, INPUT) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    // A regular file or /dev/null on stdin: read it all now.
                    if let Input::Fd { fd, .. } = &self.input {
                        read_all_bounded(fd.as_raw_fd(), &mut pending, 1 << 20);
                    }
                    false
                }
                Err(e) => return Err(io_err("polling the console input")(e)),
            },
            None => false,
        };
        let mut client_fd: Option<RawFd> = None;

        self.boot()?;
        let mut ready = vec![EpollEvent::default(); 8];
        let outcome = 'outer: loop {
            let timeout = if pending.is_empty() { -1 } else { 10 };
            let n = match epoll.wait(timeout, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(io_err("waiting for events")(e)),
            };
            for ev in &ready[..n] {
                match ev.data() {
                    SIGNALS => {
                        let mut info = [0u8; 128];
                        // SAFETY: reading one signalfd_siginfo into a large enough buffer.
                        unsafe {
                            libc::read(signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len())
                        };
                        let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                        break 'outer Outcome {
                            exit: MonitorExit::Terminated,
                            message: format!("stopped by signal {signo}"),
                        };
                    }
                    INPUT => match &self.input {
                        Input::Fd { fd, escape } => {
                            let mut buf = [0u8; 256];
                            // SAFETY: read into a local buffer from a descriptor we own.
                            let r = unsafe {
                                libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                            };
                            if r <= 0 {
                                if r == 0 || !would_block() {
                                    let _ = epoll.ctl(
                                        ControlOperation::Delete,
                                        fd.as_raw_fd(),
                                        EpollEvent::default(),
                                    );
                                    input_open = false;
                                }
                            } else {
                                let got = &buf[..r as usize];
                                if let Some(esc) = escape {
                                    if let Some(i) = got.iter().position(|b| b == esc) {
                                        pending.extend_from_slice(&got[..i]);
                                        self.feed_serial(&mut pending);
                                        break 'outer Outcome {
                                            exit: MonitorExit::Terminated,
                                            message: "stopped from the console".into(),
                                        };
                                    }
                                }
                                pending.extend_from_slice(got);
                            }
                        }
                        Input::Listener {
                            listener, client, ..
                        } => {
                            if let Ok((stream, _)) = listener.accept() {
                                if stream.set_nonblocking(true).is_ok() {
                                    if let Some(old) = client_fd.take() {
                                        let _ = epoll.ctl(
                                            ControlOperation::Delete,
                                            old,
                                            EpollEvent::default(),
                                        );
                                    }
                                    let fd = stream.as_raw_fd();
                                    *client.lock().unwrap_or_else(|p| p.into_inner()) =
                                        Some(stream);
                                    if add(fd, CLIENT).is_ok() {
                                        client_fd = Some(fd);
                                    }
                                }
                            }
                        }
                        Input::None => {}
                    },
                    CLIENT => {
                        if let (Input::Listener { client, .. }, Some(fd)) = (&self.input, client_fd)
                        {
                            let mut buf = [0u8; 256];
                            // SAFETY: read into a local buffer from the client socket,
                            // which stays open while it is registered here.
                            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                            if r > 0 {
                                pending.extend_from_slice(&buf[..r as usize]);
                            } else if r == 0 || !would_block() {
                                let _ =
                                    epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                                client_fd = None;
                                *client.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            }
                        }
                    }
                    key if key >= FIRST_KEY => self.devices.wiring.dispatch(key),
                    _ => {
                        let _ = self.notifier.eventfd().read();
                        while let Ok(event) = self.events.try_recv() {
                            if let Some(outcome) = self.handle(event)? {
                                break 'outer outcome;
                            }
                        }
                    }
                }
            }
            // Feed what the guest can take; stop reading while it is full.
            let was_empty = pending.is_empty();
            self.feed_serial(&mut pending);
            if input_open {
                if let Some(fd) = self.input_data_fd(client_fd) {
                    let op = if !pending.is_empty() && was_empty {
                        Some(ControlOperation::Delete)
                    } else if pending.is_empty() && !was_empty {
                        Some(ControlOperation::Add)
                    } else {
                        None
                    };
                    if let Some(op) = op {
                        let token = if client_fd == Some(fd) { CLIENT } else { INPUT };
                        let _ = epoll.ctl(op, fd, EpollEvent::new(EventSet::IN, token));
                    }
                }
            }
        };
        self.shutdown();
        Ok(outcome)
    }

    fn input_data_fd(&self, client_fd: Option<RawFd>) -> Option<RawFd> {
        match &self.input {
            Input::Fd { fd, .. } => Some(fd.as_raw_fd()),
            Input::Listener { .. } => client_fd,
            Input::None => None,
        }
    }

    fn feed_serial(&self, pending: &mut Vec<u8>) {
        if !pending.is_empty() {
            let n = self.devices.enqueue_console_input(pending);
            pending.drain(..n);
        }
    }

    /// Acts on one event; returns the outcome if the VM has ended.
    fn handle(&mut self, event: Event) -> Result<Option<Outcome>, VmError> {
        let end = |exit, message: String| Ok(Some(Outcome { exit, message }));
        match event {
            Event::Request(VmRequest::GuestExit(0)) => {
                end(MonitorExit::Ok, "the guest reported success".into())
            }
            Event::Request(VmRequest::GuestExit(status)) => end(
                MonitorExit::GuestFailed,
                format!("the guest reported failure status {status}"),
            ),
            Event::Request(VmRequest::PowerOff) => {
                end(MonitorExit::Ok, "the guest powered off".into())
            }
            Event::Request(VmRequest::Reset) => {
                self.reset(MonitorExit::Reset, "the guest reset the machine".into())
            }
            Event::VcpuFailed {
                failure: VcpuFailure::TripleFault { dump },
                index,
            } => self.reset(
                MonitorExit::TripleFault,
                format!("vcpu{index} triple-faulted\n{dump}"),
            ),
            Event::VcpuFailed {
                index,
                failure: VcpuFailure::Internal { what, dump },
            } => end(
                MonitorExit::InternalError,
                format!("vcpu{index}: {what}\n{dump}"),
            ),
            Event::Control(ControlRequest::Pause(reply)) => {
                let _ = reply.send(self.set_all(Desired::Pause));
                Ok(None)
            }
            Event::Control(ControlRequest::Resume(reply)) => {
                let _ = reply.send(self.set_all(Desired::Run));
                Ok(None)
            }
            Event::Control(ControlRequest::PowerButton(reply)) => {
                let _ = reply.send(Ok(self.devices.press_power_button()));
                Ok(None)
            }
            Event::Control(ControlRequest::Stop) => {
                end(MonitorExit::Terminated, "stopped on request".into())
            }
        }
    }

    fn reset(&mut self, exit: MonitorExit, message: String) -> Result<Option<Outcome>, VmError> {
        if !self.config.reboot {
            return Ok(Some(Outcome { exit, message }));
        }
        log::info!(
            "{}; rebooting (boot #{})",
            message.lines().next().unwrap_or(""),
            self.boots + 1
        );
        self.shutdown();
        self.devices.reset();
        self.boot()?;
        Ok(None)
    }
}

/// How the PCI host bridge is described to the guest (ACPI PCI0 and MCFG);
/// matches what the device manager decodes.
fn pci_host_bridge() -> acpi::PciHostBridge {
    use crate::memory::{PCI_ECAM_START, PCI_LAST_BUS};
    let w = crate::device_manager::pci_windows();
    let window = |w: vireo_devices::pci::Window| acpi::Window {
        base: w.base,
        size: w.size,
    };
    acpi::PciHostBridge {
        ecam_base: PCI_ECAM_START,
        bus_start: 0,
        bus_end: PCI_LAST_BUS,
        io: w.io.map(window),
        mmio32: window(w.mmio32),
        mmio64: w.mmio64.map(window),
    }
}

/// Gives KVM the guest RAM regions as memory slots.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        name_guest_memory(host, region.len());
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which is kept in
        // `Booted` next to the VM fd and outlives every use of the slot.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

fn would_block() -> bool {
    std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

fn read_all_bounded(fd: RawFd, out: &mut Vec<u8>, max: usize) {
    let mut buf = [0u8; 4096];
    while out.len() < max {
        // SAFETY: read into a local buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..r as usize]);
    }
}

/// Names the guest RAM mapping in /proc/PID/smaps ("[anon:vireo-guest-ram]"),
/// so tools can tell guest memory from the monitor's own. Best effort: older
/// kernels lack CONFIG_ANON_VMA_NAME.
fn name_guest_memory(addr: u64, len: u64) {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    static NAME: &[u8] = b"vireo-guest-ram\0";
    // SAFETY: prctl only labels the given mapping; NAME is a static C string.
    unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            NAME.as_ptr(),
        );
    }
}
