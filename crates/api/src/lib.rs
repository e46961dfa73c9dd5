//! Pure data shared by Vireo's binaries: no I/O, no KVM.

pub mod control;
pub mod daemon;
pub mod device_args;
pub mod domain_state;
pub mod exit;
pub mod size;

pub use domain_state::DomainState;
pub use exit::MonitorExit;
