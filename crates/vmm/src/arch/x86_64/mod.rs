//! x86_64 specifics: CPUID, registers, boot protocol.

pub mod acpi;
pub mod boot;
pub mod cpu_model;
pub mod cpuid;
pub mod linux;
pub mod mptable;
pub mod regs;
