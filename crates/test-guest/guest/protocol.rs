//! The wire protocol between the test guest and the host (tests, benchmarks, the monitor).
//!
//! This file is compiled twice: into the guest program (as `mod protocol`) and into the host
//! crate `vireo-test-guest` (as `vireo_test_guest::protocol`, re-exported at its root), so both
//! sides read the very same values. Keep it free of `use` items and of anything that needs
//! `std` or `core` paths beyond primitive types.

/// Guest physical address the ELF image is linked and loaded at (1 MiB).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// COM1: the console. The guest writes THR directly and polls LSR for input.
pub const COM1_PORT: u16 = 0x3f8;

/// Exit device port (QEMU `isa-debug-exit,iobase=0xf4,iosize=4` compatible). The guest writes
/// its status with a 32-bit `out`; QEMU then exits with `(status << 1) | 1`.
pub const EXIT_PORT: u16 = 0xf4;

/// The scenario passed.
pub const STATUS_PASS: u32 = 0;
/// The scenario failed (a `FAIL` line says why).
pub const STATUS_FAIL: u32 = 1;
/// A CPU exception or a panic in the guest (an `EXCEPTION` or `PANIC` line says where).
pub const STATUS_EXCEPTION: u32 = 2;
/// The `unemulated` scenario's CPL0 x87 instruction ran (hardware KVM); on the project's
/// emulating host the VM ends with `KVM_EXIT_INTERNAL_ERROR` before this is written.
pub const STATUS_UNEMULATED_RAN: u32 = 3;

/// ACPI PM1a event block (Vireo's): status at +0, enable at +2 (16 bits each).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1 status/enable bit of the power button.
pub const PM1_PWRBTN: u16 = 1 << 8;
/// ACPI PM1a control register port (Vireo's). A 16-bit write of [`PM1A_SLEEP_S5`] powers off.
pub const PM1A_CNT_PORT: u16 = 0x604;
/// SLP_TYP = 5 (bits 10-12) | SLP_EN (bit 13).
pub const PM1A_SLEEP_S5: u16 = 0x3400;

/// i8042 command port; writing [`I8042_RESET`] pulses the CPU reset line.
pub const I8042_CMD_PORT: u16 = 0x64;
/// i8042 "pulse output line 0" command: system reset.
pub const I8042_RESET: u8 = 0xfe;

/// CMOS/RTC index port (bit 7 of the index is the NMI mask: the guest keeps it clear).
pub const CMOS_INDEX_PORT: u16 = 0x70;
/// CMOS/RTC data port.
pub const CMOS_DATA_PORT: u16 = 0x71;
/// CMOS NVRAM byte the `reset` scenario uses as its "I already reset" marker.
pub const CMOS_REBOOT_MARKER: u8 = 0x5f;
/// Value of [`CMOS_REBOOT_MARKER`] while a reset is in flight.
pub const CMOS_REBOOT_MAGIC: u8 = 0xa5;

/// The reset control register (the ACPI RESET_REG of Vireo's FADT).
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Value written to [`RESET_CONTROL_PORT`] to reset (RST_CPU | SYS_RST).
pub const RESET_CONTROL_RESET: u8 = 0x06;

/// Prefix of every line the guest prints about itself.
pub const LINE_PREFIX: &str = "vireo-test-guest: ";
/// Printed by the boot CPU as soon as Rust code runs at CPL3 (the boot benchmark's mark).
pub const READY_LINE: &str = "vireo-test-guest: ready";
/// Start of the final line of a passing scenario: `vireo-test-guest: PASS <scenario>`.
pub const PASS_PREFIX: &str = "vireo-test-guest: PASS ";
/// Start of the final line of a failing scenario: `vireo-test-guest: FAIL <scenario>: <reason>`.
pub const FAIL_PREFIX: &str = "vireo-test-guest: FAIL ";
/// Start of the line the CPL0 exception handler prints:
/// `vireo-test-guest: EXCEPTION vector=<decimal> error=0x<hex16> rip=0x<hex16> cr2=0x<hex16>`.
pub const EXCEPTION_PREFIX: &str = "vireo-test-guest: EXCEPTION vector=";
/// Start of the line the panic handler prints before exiting with [`STATUS_EXCEPTION`].
pub const PANIC_PREFIX: &str = "vireo-test-guest: PANIC ";

/// The scenario run when the command line names none.
pub const DEFAULT_SCENARIO: &str = "hello";
/// Most CPUs the guest supports (one TSS and one GDT slot each).
pub const MAX_CPUS: usize = 64;

/// The process exit code QEMU's `isa-debug-exit` turns a guest status into.
pub const fn qemu_exit_code(status: u32) -> i32 {
    ((status << 1) | 1) as i32
}
