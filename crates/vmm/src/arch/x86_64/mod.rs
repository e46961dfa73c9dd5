//! x86_64 specifics: CPUID, registers, boot protocol.

pub mod boot;
pub mod cpuid;
pub mod regs;
