//! The scenario kit: what a scenario gets to work with.
//!
//! A scenario is `fn(&mut Ctx) -> Result<(), Fail>`, listed in scenarios/list.rs. `Ok`
//! prints `PASS <name>` and exits with status 0; `Err` prints `FAIL <name>: <reason>` and
//! exits with status 1. Scenarios `use crate::kit::prelude::*;` and find there:
//! - [`Ctx`]: command-line arguments, boot info (memory map, RSDP), SMP, memory;
//! - `print!`/`println!` (COM1; whole calls never interleave between CPUs), and
//!   `console::{read_byte, read_line}` for input;
//! - `io::{inb, outb, ..., mmio_read32, ...}`, `svc::{cpuid, rdmsr, ...}` (CPL0 services);
//! - `time::{sleep_ms, Deadline, Instant}`;
//! - `pci` (enumeration, BARs, capabilities, MSI-X), `virtio` (modern virtio-pci and the
//!   blk, net, rng and console drivers), `irq` (vectors, waiting for interrupts);
//! - `fail!`/`ensure!` to return a formatted [`Fail`].

use alloc::string::String;
use core::fmt;

use crate::bootinfo::{BootInfo, MemRegion};
use crate::protocol::MAX_CPUS;
use crate::{heap, paging, smp};

/// Everything a scenario uses, in one import.
pub mod prelude {
    #[allow(unused_imports)] // the prelude offers more than any one scenario needs
    pub(crate) use crate::{
        bootinfo::MemRegion,
        console, ensure, fail, io, irq,
        kit::{Ctx, Fail},
        pci, protocol, rt, smp, svc,
        time::{self, Deadline, Instant},
        virtio,
    };
    #[allow(unused_imports)] // as above
    pub(crate) use alloc::{format, string::String, vec, vec::Vec};
}

/// Why a scenario failed (the text after `FAIL <scenario>: `).
#[derive(Debug)]
pub struct Fail {
    reason: String,
}

impl Fail {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Returns `Err(Fail)` with a formatted reason from the enclosing function.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::kit::Fail::new(alloc::format!($($arg)*)))
    };
}

/// Fails (like [`fail!`]) unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}

/// A registered scenario.
#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&mut Ctx) -> Result<(), Fail>,
}

/// The scenario's view of the machine. Lives on the BSP; scenarios run there.
#[derive(Debug)]
#[allow(dead_code)] // `scenario` is read through a kit method no scenario uses yet
pub struct Ctx {
    boot: &'static BootInfo,
    scenario: &'static str,
}

// Kit API for scenarios: not every method has a user yet.
#[allow(dead_code)]
impl Ctx {
    pub(crate) fn new(boot: &'static BootInfo, scenario: &'static str) -> Self {
        Self { boot, scenario }
    }

    /// The running scenario's name.
    pub fn scenario(&self) -> &'static str {
        self.scenario
    }

    /// Boot information from the VMM (start_info address and version, RSDP, ...).
    pub fn boot(&self) -> &'static BootInfo {
        self.boot
    }

    /// The whole command line.
    pub fn cmdline(&self) -> &'static str {
        self.boot.cmdline()
    }

    /// The value of `key=value` on the command line (the last one if repeated).
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        self.boot.arg(key)
    }

    /// A numeric argument (decimal, or hex with 0x), `default` if absent.
    pub fn arg_u64(&self, key: &str, default: u64) -> Result<u64, Fail> {
        let Some(text) = self.arg(key) else {
            return Ok(default);
        };
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed.map_err(|_| Fail::new(alloc::format!("{key}={text} is not a number")))
    }

    /// The vCPU count the host says the VM has (`cpus=`, default 1), checked against the
    /// guest's limit.
    pub fn cpus(&self) -> Result<usize, Fail> {
        let cpus = self.arg_u64("cpus", 1)?;
        if cpus == 0 || cpus > MAX_CPUS as u64 {
            fail!("cpus={cpus}: the test guest supports 1 to {MAX_CPUS} CPUs");
        }
        Ok(cpus as usize)
    }

    /// The memory map as the VMM gave it.
    pub fn memmap(&self) -> &'static [MemRegion] {
        self.boot.memmap()
    }

    /// Physical address of the ACPI RSDP (0 if the VMM gave none).
    pub fn rsdp(&self) -> u64 {
        self.boot.rsdp
    }

    /// Starts APs so that `cpus` CPUs run Rust code (waits up to 10 s for them).
    pub fn start_aps(&mut self, cpus: usize) -> Result<(), Fail> {
        smp::start_aps(self.boot, cpus)
    }

    /// CPUs running Rust code now.
    pub fn online_cpus(&self) -> usize {
        smp::online_cpus()
    }

    /// Runs `f(cpu)` on every online CPU, this one (cpu 0) included; returns when all finished.
    pub fn run_on_all<F: Fn(usize) + Sync>(&self, f: F) -> Result<(), Fail> {
        smp::run_on_all(&f)
    }

    /// Runs `f(cpu)` on CPU `cpu`; returns when it finished.
    pub fn run_on<F: Fn(usize) + Sync>(&self, cpu: usize, f: F) -> Result<(), Fail> {
        smp::run_on(cpu, &f)
    }

    /// Allocates zeroed 4 KiB pages (identity mapped: the address is also physical).
    pub fn alloc_pages(&self, count: u64) -> Result<u64, Fail> {
        heap::alloc_pages(count)
    }

    /// Identity-maps `[start, start + len)` (2 MiB granularity) if beyond the static 0-4 GiB
    /// map, e.g. a 64-bit PCI BAR. RAM is mapped at boot. From 128 TiB to 256 TiB (within
    /// the CPU's physical address width) the range is mapped at its sign-extended
    /// upper-half address instead: `paging::virt(start)`.
    pub fn map_identity(&self, start: u64, len: u64) -> Result<(), Fail> {
        paging::map_identity(start, len)
    }

    /// First byte of RAM not used by the image or the heap so far.
    pub fn heap_top(&self) -> u64 {
        heap::top()
    }
}
