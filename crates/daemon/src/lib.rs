//! vireod, Vireo's management daemon: it keeps VM definitions, starts and
//! supervises one `vireo-vmm` per running VM, and serves the API.
//!
//! Built so far: [`store`], the persistent definition store; [`launch`],
//! a definition's `vireo-vmm` command line; [`monitor`], starting monitors
//! that outlive the daemon and finding them again.

pub mod core;
pub mod launch;
pub mod monitor;
pub mod net;
pub mod server;
pub mod store;
