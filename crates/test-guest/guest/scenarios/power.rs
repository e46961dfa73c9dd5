//! Reset and power-off.

use crate::kit::prelude::*;
use protocol::{CMOS_REBOOT_MAGIC, CMOS_REBOOT_MARKER};

pub fn reset(ctx: &mut Ctx) -> Result<(), Fail> {
    if io::cmos_read(CMOS_REBOOT_MARKER) == CMOS_REBOOT_MAGIC {
        io::cmos_write(CMOS_REBOOT_MARKER, 0);
        println!("reset: rebooted");
        return Ok(());
    }
    io::cmos_write(CMOS_REBOOT_MARKER, CMOS_REBOOT_MAGIC);
    let stored = io::cmos_read(CMOS_REBOOT_MARKER);
    ensure!(
        stored == CMOS_REBOOT_MAGIC,
        "CMOS byte {CMOS_REBOOT_MARKER:#x} reads {stored:#x} after writing {CMOS_REBOOT_MAGIC:#x}: no CMOS RAM?"
    );
    let method = ctx.arg("method").unwrap_or("i8042");
    println!("reset: resetting");
    match method {
        "i8042" => io::outb(protocol::I8042_CMD_PORT, protocol::I8042_RESET),
        "triple-fault" => svc::triple_fault(),
        "cf9" => io::outb(protocol::RESET_CONTROL_PORT, protocol::RESET_CONTROL_RESET),
        _ => {
            io::cmos_write(CMOS_REBOOT_MARKER, 0);
            fail!("method={method}: expected i8042, cf9 or triple-fault");
        }
    }
    time::sleep_ms(1000);
    io::cmos_write(CMOS_REBOOT_MARKER, 0);
    fail!("still running 1 s after the {method} reset")
}

pub fn poweroff(_ctx: &mut Ctx) -> Result<(), Fail> {
    println!("poweroff: powering off");
    io::outw(protocol::PM1A_CNT_PORT, protocol::PM1A_SLEEP_S5);
    time::sleep_ms(1000);
    fail!(
        "still running 1 s after writing {:#x} to the PM1a control port {:#x}",
        protocol::PM1A_SLEEP_S5,
        protocol::PM1A_CNT_PORT
    )
}

/// Acts like an OS honouring the ACPI power button: enables its event, waits
/// for it (polling PM1 status), acknowledges it and powers off.
pub fn powerbutton(ctx: &mut Ctx) -> Result<(), Fail> {
    let timeout_ms = ctx.arg_u64("timeout_ms", 30_000)?;
    io::outw(protocol::PM1A_EVT_PORT + 2, protocol::PM1_PWRBTN);
    println!("powerbutton: waiting for the power button");
    let deadline = Deadline::after_ms(timeout_ms);
    while io::inw(protocol::PM1A_EVT_PORT) & protocol::PM1_PWRBTN == 0 {
        ensure!(!deadline.expired(), "no power button press within {timeout_ms} ms");
        time::sleep_ms(5);
    }
    // Write-1-to-clear, then shut down as asked.
    io::outw(protocol::PM1A_EVT_PORT, protocol::PM1_PWRBTN);
    ensure!(
        io::inw(protocol::PM1A_EVT_PORT) & protocol::PM1_PWRBTN == 0,
        "PWRBTN_STS did not clear on write-1-to-clear"
    );
    println!("powerbutton: pressed; powering off");
    io::outw(protocol::PM1A_CNT_PORT, protocol::PM1A_SLEEP_S5);
    time::sleep_ms(1000);
    fail!("still running 1 s after powering off")
}

/// Sleeps for good: halts with interrupts disabled, so the vCPU uses no
/// host CPU (for counting idle VMs; the host stops it).
pub fn idle(_ctx: &mut Ctx) -> Result<(), Fail> {
    println!("idle: halting until the host stops the VM");
    loop {
        svc::halt();
    }
}
