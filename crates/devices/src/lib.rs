//! Device models for Vireo's monitor.
//!
//! Devices are reached through a [`Bus`] (port I/O or MMIO) and implement the
//! minimal [`BusDevice`] trait. They never hold KVM handles: interrupts leave
//! through the [`Interrupt`] trait and machine-level requests (reset, power off,
//! guest exit status) through [`VmControl`]; the monitor wires both to KVM and to
//! its vCPU threads. Every device is therefore unit-testable without /dev/kvm.

pub mod bus;
pub mod debug_exit;
pub mod guest_output;
pub mod i8042;
pub mod pci;
pub mod pm;
pub mod ratelimit;
pub mod rtc;
pub mod serial;
pub mod virtio;

#[cfg(test)]
mod testutil;

pub use bus::{Bus, BusDevice, BusError};

/// An interrupt line or message a device can raise.
pub trait Interrupt: Send + Sync {
    /// Asserts the interrupt (edge: one event).
    fn trigger(&self) -> std::io::Result<()>;
}

/// A machine-level event a device asks the monitor to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRequest {
    /// Reset the machine (i8042 pulse, ACPI reset register).
    Reset,
    /// Power off (ACPI S5).
    PowerOff,
    /// The guest wrote `status` to the debug-exit port.
    GuestExit(u32),
}

/// Where devices send [`VmRequest`]s. Implemented by the monitor.
pub trait VmControl: Send + Sync {
    /// Asks the monitor to carry out `request`. Must not block.
    fn request(&self, request: VmRequest);
}
