//! Events reaching the VM's event loop from devices and vCPU threads.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;

use vireo_devices::{VmControl, VmRequest};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a vCPU cannot go on.
#[derive(Debug, Clone)]
pub enum VcpuFailure {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault { dump: String },
    /// KVM could not run the guest, or an exit the monitor does not handle.
    Internal { what: String, dump: String },
}

/// Something the event loop must act on.
#[derive(Debug)]
pub enum Event {
    /// A device asked for a machine-level action.
    Request(VmRequest),
    /// A vCPU thread stopped because the guest cannot go on.
    VcpuFailed { index: u32, failure: VcpuFailure },
    /// A request from a [`crate::vm::MachineHandle`].
    Control(crate::vm::ControlRequest),
}

/// A channel plus an eventfd, so the epoll loop wakes for each event.
#[derive(Debug)]
pub struct Notifier {
    tx: Mutex<Sender<Event>>,
    efd: EventFd,
}

impl Notifier {
    /// A notifier and the receiving end of its channel.
    pub fn new() -> std::io::Result<(Notifier, Receiver<Event>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        Ok((
            Notifier {
                tx: Mutex::new(tx),
                efd: EventFd::new(EFD_NONBLOCK)?,
            },
            rx,
        ))
    }

    /// Queues `e` and wakes the loop. Never blocks.
    pub fn send(&self, e: Event) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        // The receiver lives as long as the VM; a send after it is gone is moot.
        let _ = tx.send(e);
        let _ = self.efd.write(1);
    }

    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.efd
    }
}

impl VmControl for Notifier {
    fn request(&self, request: VmRequest) {
        self.send(Event::Request(request));
    }
}
