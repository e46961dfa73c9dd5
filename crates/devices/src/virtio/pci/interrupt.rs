//! Interrupt state shared between the transport and the device it hands an
//! interrupt to: MSI-X, vector assignment, ISR, DEVICE_NEEDS_RESET.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::{lock_msix, NO_VECTOR};
use crate::pci::msix::{Msix, MsixDelivery};
use crate::virtio::{status, VirtioInterrupt, VirtioInterruptType};
use crate::Interrupt;

/// ISR bit: a queue was used.
const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
const ISR_CONFIG: u8 = 2;

pub(super) struct Shared {
    pub(super) msix: Mutex<Msix>,
    isr: AtomicU8,
    needs_reset: AtomicBool,
    config_generation: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    intx: Option<Arc<dyn Interrupt>>,
}

impl Shared {
    pub(super) fn new(msix: Msix, queues: usize, intx: Option<Arc<dyn Interrupt>>) -> Shared {
        Shared {
            msix: Mutex::new(msix),
            isr: AtomicU8::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            intx,
        }
    }

    /// Virtio reset: vectors unassigned, ISR and DEVICE_NEEDS_RESET clear.
    pub(super) fn reset(&self) {
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
    }

    pub(super) fn needs_reset_bit(&self) -> u8 {
        if self.needs_reset.load(Ordering::SeqCst) {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        }
    }

    /// Reads and clears the ISR (what a read of the ISR byte does).
    pub(super) fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    pub(super) fn config_generation(&self) -> u8 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// `vector` if it exists in the table, else NO_VECTOR (what the driver
    /// reads back after assigning it).
    fn checked_vector(&self, vector: u16) -> u16 {
        let n = lock_msix(&self.msix).vectors();
        if vector < n {
            vector
        } else {
            NO_VECTOR
        }
    }

    pub(super) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    pub(super) fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.checked_vector(vector), Ordering::SeqCst);
    }

    pub(super) fn queue_vector(&self, q: usize) -> u16 {
        self.queue_vectors
            .get(q)
            .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }

    pub(super) fn set_queue_vector(&self, q: usize, vector: u16) {
        if let Some(v) = self.queue_vectors.get(q) {
            v.store(self.checked_vector(vector), Ordering::SeqCst);
        }
    }

    /// Sends `vector` by MSI-X when enabled, else sets `isr_bit` and raises
    /// INTx.
    fn signal(&self, vector: u16, isr_bit: u8) -> io::Result<()> {
        {
            let mut msix = lock_msix(&self.msix);
            if msix.enabled() {
                if vector == NO_VECTOR {
                    return Ok(());
                }
                return match msix.trigger(vector) {
                    MsixDelivery::Failed => Err(io::Error::other("MSI-X delivery failed")),
                    _ => Ok(()),
                };
            }
        }
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        match &self.intx {
            Some(line) => line.trigger(),
            None => Ok(()),
        }
    }
}

/// The [`VirtioInterrupt`] a device gets at activation.
pub(super) struct PciInterrupt(pub(super) Arc<Shared>);

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, interrupt: VirtioInterruptType) -> io::Result<()> {
        match interrupt {
            VirtioInterruptType::Queue(q) => {
                let vector = self.0.queue_vector(usize::from(q));
                self.0.signal(vector, ISR_QUEUE)
            }
            VirtioInterruptType::Config => {
                self.0.config_generation.fetch_add(1, Ordering::SeqCst);
                self.0.signal(self.0.config_vector(), ISR_CONFIG)
            }
        }
    }

    fn set_needs_reset(&self) {
        if !self.0.needs_reset.swap(true, Ordering::SeqCst) {
            // Failing to signal leaves the bit for the driver to find.
            let _ = self.0.signal(self.0.config_vector(), ISR_CONFIG);
        }
    }
}
