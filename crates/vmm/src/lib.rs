//! Vireo's per-VM monitor as a library.
//!
//! [`vm::Machine`] builds one VM from a [`config::VmConfig`]: guest memory
//! ([`memory`]), the KVM VM with its in-kernel irqchip and PIT, the devices
//! ([`device_manager`]), the kernel ([`arch::x86_64::boot`]) and one thread per
//! vCPU ([`vcpu`]); then its event loop runs until the guest powers off, reports
//! a status, fails, or the monitor is told to stop.

pub mod arch;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod events;
pub mod memory;
pub mod pci_wiring;
pub mod vcpu;
pub mod vm;

pub use config::{SerialConfig, VmConfig};
pub use vm::{Machine, MachineHandle, Outcome, VmError};
