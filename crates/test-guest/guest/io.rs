//! Port I/O (allowed at CPL3 by the TSS I/O permission bitmap) and MMIO.
//!
//! Port accessors are safe functions: the guest owns the whole machine and a port access
//! cannot break Rust's memory safety here (no device is set up to DMA into guest memory
//! behind the program's back unless a scenario does so itself). MMIO accessors are `unsafe`:
//! the address might be RAM the program uses.

// Kit API for scenarios: not every accessor has a user yet.
#![allow(dead_code)]

use core::arch::asm;

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O touches no memory of this program (see the module comment).
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 16-bit word from an I/O port.
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: port I/O touches no memory of this program (see the module comment).
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: port I/O touches no memory of this program (see the module comment).
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no memory of this program (see the module comment).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: port I/O touches no memory of this program (see the module comment).
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O touches no memory of this program (see the module comment).
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a CMOS/RTC register (NMI stays enabled: index bit 7 clear).
pub fn cmos_read(index: u8) -> u8 {
    outb(crate::protocol::CMOS_INDEX_PORT, index & 0x7f);
    inb(crate::protocol::CMOS_DATA_PORT)
}

/// Writes a CMOS/RTC register.
pub fn cmos_write(index: u8, value: u8) {
    outb(crate::protocol::CMOS_INDEX_PORT, index & 0x7f);
    outb(crate::protocol::CMOS_DATA_PORT, value);
}

/// Masks both 8259 PICs. Firmware may leave the master PIC delivering through the BSP's
/// LINT0, so a scenario that lets interrupts in on the BSP calls this first (unless it
/// uses the PIC itself).
pub fn mask_pic() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

macro_rules! mmio_accessors {
    ($($read:ident, $write:ident, $ty:ty;)*) => {$(
        /// Reads device memory (one access of exactly this width).
        ///
        /// # Safety
        /// `addr` must be mapped (all of 0-4 GiB is, plus RAM and what
        /// `Ctx::map_identity` added), aligned, and not memory Rust code is using.
        pub unsafe fn $read(addr: u64) -> $ty {
            // SAFETY: the caller guarantees `addr` is mapped, aligned and not Rust's memory.
            unsafe { core::ptr::read_volatile(addr as *const $ty) }
        }

        /// Writes device memory (one access of exactly this width).
        ///
        /// # Safety
        /// As for the read accessor.
        pub unsafe fn $write(addr: u64, value: $ty) {
            // SAFETY: the caller guarantees `addr` is mapped, aligned and not Rust's memory.
            unsafe { core::ptr::write_volatile(addr as *mut $ty, value) }
        }
    )*};
}

mmio_accessors! {
    mmio_read8, mmio_write8, u8;
    mmio_read16, mmio_write16, u16;
    mmio_read32, mmio_write32, u32;
    mmio_read64, mmio_write64, u64;
}
