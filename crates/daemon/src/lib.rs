//! vireod, Vireo's management daemon: it keeps VM definitions, starts and
//! supervises one `vireo-vmm` per running VM, and serves the API.
//!
//! Built so far: [`store`], the persistent definition store, and
//! [`launch`], a definition's `vireo-vmm` command line.

pub mod launch;
pub mod store;
