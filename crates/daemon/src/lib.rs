//! vireod, Vireo's management daemon: it keeps VM definitions, starts and
//! supervises one `vireo-vmm` per running VM, and serves the API.
//!
//! Built so far: [`store`], the persistent definition store.

pub mod store;
