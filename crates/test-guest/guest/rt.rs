//! Runtime support: exit, fatal errors, the panic handler, and the C memory functions the
//! compiler calls (there is no libc).

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::io;
use crate::protocol::{EXIT_PORT, FAIL_PREFIX, PANIC_PREFIX, STATUS_EXCEPTION, STATUS_FAIL};
use crate::svc;
use crate::sync::Once;

static SCENARIO_NAME: Once<&'static str> = Once::new();

/// Records the scenario name for lines printed on fatal paths.
pub fn set_scenario_name(name: &'static str) {
    let _ = SCENARIO_NAME.set(name);
}

fn scenario_name() -> &'static str {
    SCENARIO_NAME.get().copied().unwrap_or("boot")
}

/// Ends the run: writes `status` to the exit device, then halts (if there is no such device).
pub fn exit(status: u32) -> ! {
    io::outl(EXIT_PORT, status);
    loop {
        svc::halt();
    }
}

/// Prints a FAIL line for the current scenario and exits with STATUS_FAIL; for failures
/// that cannot unwind to the scenario (e.g. another CPU still holds borrowed data).
pub fn fatal(reason: fmt::Arguments<'_>) -> ! {
    println!("{}{}: {}", FAIL_PREFIX, scenario_name(), reason);
    exit(STATUS_FAIL)
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::AcqRel) {
        // A panic while reporting one (or on a second CPU): just stop.
        exit(STATUS_EXCEPTION);
    }
    // Unlocked: the panicking code may hold the console lock.
    let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
    crate::console::print_unlocked(format_args!(
        "\n{}at {}:{}: {}\n{}{}: panic: {}\n",
        PANIC_PREFIX,
        file,
        line,
        info.message(),
        FAIL_PREFIX,
        scenario_name(),
        info.message()
    ));
    exit(STATUS_EXCEPTION)
}

// The prebuilt `alloc` crate was compiled for unwinding and names these two symbols; with
// panic=abort nothing unwinds, so they are never called.

/// Never called (see above).
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    exit(STATUS_EXCEPTION)
}

/// Never called (see above).
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

// The memory functions are written with string instructions so that LLVM cannot turn
// their bodies back into calls to themselves.

/// # Safety
/// As C `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid, non-overlapping ranges of `n` bytes; DF is clear
    // (System V ABI).
    unsafe {
        asm!("rep movsb",
            inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src or past its end: a forward copy never reads what it wrote.
        // SAFETY: the caller passes valid ranges of `n` bytes.
        unsafe {
            asm!("rep movsb",
                inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
                options(nostack, preserves_flags));
        }
    } else {
        // Overlap with dest above src: copy backwards.
        // SAFETY: as above; DF is set for the copy only and cleared again.
        unsafe {
            asm!("std", "rep movsb", "cld",
                inout("rcx") n => _,
                inout("rdi") dest.wrapping_add(n).wrapping_sub(1) => _,
                inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _,
                options(nostack));
        }
    }
    dest
}

/// # Safety
/// As C `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid range of `n` bytes; DF is clear.
    unsafe {
        asm!("rep stosb",
            inout("rcx") n => _, inout("rdi") dest => _, in("al") value as u8,
            options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller passes valid ranges of `n` bytes. Volatile reads keep LLVM from
        // recognising this loop as a memcmp/bcmp idiom (which would call itself).
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
