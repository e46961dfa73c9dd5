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

/// Guest memory as devices see it (for DMA and virtqueues).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Host file descriptors a device wants the monitor's event loop to watch
/// (a disk queue's completion eventfd, a TAP device). Implemented by the
/// monitor; given to a device once, before it can go live.
///
/// Watching is edge-triggered: the monitor calls the device's
/// `host_event(token)` each time `fd` *becomes* readable. The device must
/// consume what is readable (read until `EAGAIN`), or remember that it left
/// something and come back to it on its own (for example when the guest
/// posts buffers). Calls come from the event-loop thread with the device
/// locked.
pub trait HostEvents: Send + Sync {
    /// Starts watching `fd` for readability; `token` is passed back.
    fn watch(&self, fd: std::os::fd::RawFd, token: u32) -> std::io::Result<()>;
    /// Stops watching `fd`. Call before closing it.
    fn unwatch(&self, fd: std::os::fd::RawFd);
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
