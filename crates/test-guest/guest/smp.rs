//! Application processors: INIT-SIPI-SIPI from CPL3 through the xAPIC, per-CPU stacks and
//! TSSs, and running a function on other CPUs.
//!
//! CPU indices: the BSP is 0, APs take 1, 2, ... in the order they reach boot.s
//! `ap_entry64`. An idle AP waits at CPL0 in `sti; hlt` (svc::wait_irq), so it costs the
//! host nothing; the BSP wakes it with a fixed IPI on [`WAKE_VECTOR`] after posting a job.

// Kit API for scenarios: not every helper has a user yet.
#![allow(dead_code)]

use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::boot;
use crate::bootinfo::BootInfo;
use crate::heap::{self, PAGE_SIZE};
use crate::kit::Fail;
use crate::protocol::MAX_CPUS;
use crate::svc;
use crate::time::{self, Deadline};

/// The local APIC, xAPIC mode (MMIO). boot.s's interrupt stubs EOI at this address too.
pub mod lapic {
    use crate::io;

    pub const BASE: u64 = 0xfee0_0000;
    pub const REG_ID: u64 = 0x20;
    pub const REG_EOI: u64 = 0xb0;
    pub const REG_SVR: u64 = 0xf0;
    pub const REG_ICR_LOW: u64 = 0x300;
    pub const REG_ICR_HIGH: u64 = 0x310;
    /// Spurious-interrupt vector (also has an IDT stub).
    pub const SPURIOUS_VECTOR: u32 = 0xff;
    const SVR_ENABLE: u32 = 1 << 8;
    const ICR_PENDING: u32 = 1 << 12;
    const ICR_ASSERT: u32 = 1 << 14;
    const ICR_ALL_BUT_SELF: u32 = 3 << 18;
    const ICR_INIT: u32 = 5 << 8;
    const ICR_STARTUP: u32 = 6 << 8;

    pub fn read(reg: u64) -> u32 {
        // SAFETY: the xAPIC page is mapped (0-4 GiB static map) and is not RAM.
        unsafe { io::mmio_read32(BASE + reg) }
    }

    pub fn write(reg: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { io::mmio_write32(BASE + reg, value) }
    }

    /// This CPU's APIC ID (xAPIC: 8 bits).
    pub fn id() -> u32 {
        read(REG_ID) >> 24
    }

    /// Software-enables this CPU's local APIC (needed to receive fixed interrupts).
    pub fn enable() {
        write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
    }

    fn wait_idle() {
        let mut polls = 0;
        while read(REG_ICR_LOW) & ICR_PENDING != 0 && polls < 100_000 {
            polls += 1;
        }
    }

    fn send(dest: u32, low: u32) {
        wait_idle();
        write(REG_ICR_HIGH, dest << 24);
        write(REG_ICR_LOW, low);
    }

    /// Sends a fixed interrupt on `vector` to the CPU with APIC ID `dest`.
    pub fn send_fixed(dest: u32, vector: u8) {
        send(dest, ICR_ASSERT | u32::from(vector));
    }

    /// INIT to all other CPUs.
    pub fn send_init_all_but_self() {
        send(0, ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
    }

    /// Start-up IPI to all other CPUs: they start in real mode at `page` (4 KiB aligned,
    /// below 1 MiB).
    pub fn send_startup_all_but_self(page: u64) {
        send(
            0,
            ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (page >> 12) as u32,
        );
    }
}

/// The vector the BSP sends to wake an idle AP.
pub const WAKE_VECTOR: u8 = 0xf0;
/// How long `start_aps` waits for APs to report in.
pub const START_TIMEOUT_MS: u64 = 10_000;
const KSTACK_PAGES: u64 = 2;
const USTACK_PAGES: u64 = 16;
const IA32_APIC_BASE: u32 = 0x1b;

/// A function posted to CPUs, type-erased (it lives on the poster's stack).
struct Job {
    call: unsafe fn(*const (), usize),
    data: *const (),
    remaining: AtomicUsize,
}

struct CpuSlot {
    online: AtomicBool,
    apic_id: AtomicU32,
    job: AtomicPtr<Job>,
}

impl CpuSlot {
    const fn new() -> Self {
        Self {
            online: AtomicBool::new(false),
            apic_id: AtomicU32::new(0),
            job: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

static CPUS: [CpuSlot; MAX_CPUS] = [const { CpuSlot::new() }; MAX_CPUS];
static APS_ONLINE: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

/// CPUs running Rust code (the BSP plus every AP that reported in).
pub fn online_cpus() -> usize {
    1 + APS_ONLINE.load(Ordering::Acquire)
}

/// APs that reached the 64-bit entry, including any the BSP had not prepared for (those
/// stay parked at CPL0).
pub fn arrived_aps() -> usize {
    // SAFETY: an atomic defined in boot.s.
    unsafe {
        boot::vireo_ap_next
            .load(Ordering::Acquire)
            .saturating_sub(1) as usize
    }
}

/// The APIC ID CPU `cpu` read from its local APIC when it came up.
pub fn apic_id(cpu: usize) -> Option<u32> {
    let slot = CPUS.get(cpu)?;
    slot.online
        .load(Ordering::Acquire)
        .then(|| slot.apic_id.load(Ordering::Relaxed))
}

/// Picks the page for the real-mode AP trampoline: below 1 MiB, RAM in the memory map, clear
/// of the VMM's boot structures; 0x8000 if possible.
fn trampoline_page(boot: &BootInfo) -> Result<u64, Fail> {
    let candidates = core::iter::once(0x8000u64).chain((1..0x9f).map(|p| p * PAGE_SIZE));
    for page in candidates {
        let end = page + PAGE_SIZE;
        let is_ram = boot
            .memmap()
            .iter()
            .any(|r| r.is_ram() && r.addr <= page && end <= r.end());
        let clear = boot.reserved_overlap(page, end).is_none();
        if is_ram && clear {
            return Ok(page);
        }
    }
    Err(Fail::new(
        "no free RAM page below 1 MiB for the AP trampoline",
    ))
}

/// Starts the APs so that `cpus` CPUs run (INIT, SIPI, SIPI to all but self) and waits up to
/// [`START_TIMEOUT_MS`] for `cpus - 1` of them to report in. Only once per boot, BSP only.
pub fn start_aps(boot: &BootInfo, cpus: usize) -> Result<(), Fail> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Fail::new(alloc::format!(
            "cpus={cpus} is outside 1..={MAX_CPUS}, the CPUs this guest supports"
        )));
    }
    if STARTED.swap(true, Ordering::AcqRel) {
        return Err(Fail::new("APs were already started"));
    }
    let apic_base = svc::rdmsr(IA32_APIC_BASE);
    if apic_base & (1 << 11) == 0 {
        return Err(Fail::new(
            "the local APIC is disabled (IA32_APIC_BASE bit 11)",
        ));
    }
    if apic_base & (1 << 10) != 0 {
        return Err(Fail::new(
            "the local APIC is in x2APIC mode; the guest drives the xAPIC",
        ));
    }
    if apic_base & 0x000f_ffff_ffff_f000 != lapic::BASE {
        return Err(Fail::new(alloc::format!(
            "the local APIC is at {:#x}, not {:#x}",
            apic_base & 0x000f_ffff_ffff_f000,
            lapic::BASE
        )));
    }
    lapic::enable();
    CPUS[0].apic_id.store(lapic::id(), Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
    if cpus == 1 {
        return Ok(());
    }

    let page = trampoline_page(boot)?;
    // SAFETY: the trampoline is a byte range of the image (boot.s); `page` is a free RAM page
    // below 1 MiB (checked above), mapped, and the trampoline is shorter than a page (checked).
    unsafe {
        let start = core::ptr::addr_of!(boot::vireo_ap_trampoline);
        let len = core::ptr::addr_of!(boot::vireo_ap_trampoline_end) as usize - start as usize;
        if len > PAGE_SIZE as usize {
            return Err(Fail::new("the AP trampoline is larger than a page"));
        }
        core::ptr::copy_nonoverlapping(start, page as *mut u8, len);
    }

    for cpu in 1..cpus {
        let kstack_top = heap::alloc_pages(KSTACK_PAGES)? + KSTACK_PAGES * PAGE_SIZE;
        let ustack_top = heap::alloc_pages(USTACK_PAGES)? + USTACK_PAGES * PAGE_SIZE;
        // SAFETY: boot.s's per-CPU tables, user-writable; no AP runs yet, and `cpu` is below
        // MAX_CPUS, so every access stays inside the arrays.
        unsafe {
            let percpu = core::ptr::addr_of_mut!(boot::vireo_percpu).cast::<[u64; 2]>();
            percpu.add(cpu).write_volatile([kstack_top, ustack_top]);
            let tss = core::ptr::addr_of_mut!(boot::vireo_tss_area).cast::<u8>();
            tss.add(cpu * boot::TSS_STRIDE + boot::TSS_RSP0)
                .cast::<u64>()
                .write_unaligned(kstack_top);
            let desc = core::ptr::addr_of_mut!(boot::vireo_gdt_tss).cast::<[u8; 16]>();
            desc.add(cpu)
                .cast::<u8>()
                .add(boot::DESC_ACCESS)
                .write_volatile(boot::TSS_AVAILABLE);
        }
    }
    // SAFETY: atomics defined in boot.s.
    unsafe {
        boot::vireo_ap_next.store(1, Ordering::Relaxed);
        boot::vireo_ap_limit.store(cpus as u32, Ordering::Relaxed);
    }
    fence(Ordering::SeqCst);

    lapic::send_init_all_but_self();
    time::sleep_ms(10);
    lapic::send_startup_all_but_self(page);
    time::sleep_us(200);
    if APS_ONLINE.load(Ordering::Acquire) < cpus - 1 {
        lapic::send_startup_all_but_self(page);
    }

    let deadline = Deadline::after_ms(START_TIMEOUT_MS);
    while APS_ONLINE.load(Ordering::Acquire) < cpus - 1 {
        if deadline.expired() {
            return Err(Fail::new(alloc::format!(
                "only {} of {} APs reported in within {} s ({} reached long mode)",
                APS_ONLINE.load(Ordering::Acquire),
                cpus - 1,
                START_TIMEOUT_MS / 1000,
                arrived_aps()
            )));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// An AP's first Rust code, at CPL3 on its own stacks (boot.s `ap_user_entry`).
pub extern "C" fn ap_main(index: u64) -> ! {
    let cpu = index as usize;
    let slot = &CPUS[cpu];
    lapic::enable();
    slot.apic_id.store(lapic::id(), Ordering::Relaxed);
    slot.online.store(true, Ordering::Release);
    APS_ONLINE.fetch_add(1, Ordering::AcqRel);
    loop {
        let job = slot.job.load(Ordering::Acquire);
        if job.is_null() {
            // A wake-up IPI that arrives before this call stays pending (IF is 0 at CPL3)
            // and ends the wait at once.
            svc::wait_irq();
            continue;
        }
        // SAFETY: the poster keeps the job (and the function it points to) alive until
        // `remaining` reaches zero, which happens only after this CPU's decrement below.
        unsafe {
            let job = &*job;
            (job.call)(job.data, cpu);
            slot.job.store(core::ptr::null_mut(), Ordering::Release);
            job.remaining.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// # Safety
/// `data` must point to an `F`.
unsafe fn call_job<F: Fn(usize) + Sync>(data: *const (), cpu: usize) {
    // SAFETY: guaranteed by the caller (`run_mask` pairs `data` with this very `F`).
    let f = unsafe { &*data.cast::<F>() };
    f(cpu);
}

/// Runs `f(cpu)` on every CPU whose bit is set in `mask` (bit 0: the BSP, which runs its
/// part itself) and returns when all are done. BSP only. A CPU still busy after
/// `timeout_ms` ends the scenario with FAIL (the job's memory cannot be released while a
/// CPU may still use it).
pub fn run_mask<F: Fn(usize) + Sync>(mask: u64, timeout_ms: u64, f: &F) -> Result<(), Fail> {
    for cpu in (1..MAX_CPUS).filter(|&c| mask & (1 << c) != 0) {
        if !CPUS[cpu].online.load(Ordering::Acquire) {
            return Err(Fail::new(alloc::format!("cpu {cpu} is not online")));
        }
    }
    let aps = (mask & !1).count_ones() as usize;
    let job = Job {
        call: call_job::<F>,
        data: (f as *const F).cast(),
        remaining: AtomicUsize::new(aps),
    };
    let job_ptr = (&job as *const Job).cast_mut();
    for cpu in (1..MAX_CPUS).filter(|&c| mask & (1 << c) != 0) {
        let slot = &CPUS[cpu];
        if slot
            .job
            .compare_exchange(
                core::ptr::null_mut(),
                job_ptr,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            crate::rt::fatal(format_args!("cpu {cpu} still runs an earlier job"));
        }
        lapic::send_fixed(slot.apic_id.load(Ordering::Relaxed), WAKE_VECTOR);
    }
    if mask & 1 != 0 {
        f(0);
    }
    let deadline = Deadline::after_ms(timeout_ms);
    while job.remaining.load(Ordering::Acquire) != 0 {
        if deadline.expired() {
            crate::rt::fatal(format_args!(
                "{} cpu(s) did not finish a job within {} ms",
                job.remaining.load(Ordering::Acquire),
                timeout_ms
            ));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Runs `f(cpu)` on every online CPU (BSP included) with a 60 s limit.
pub fn run_on_all<F: Fn(usize) + Sync>(f: &F) -> Result<(), Fail> {
    let mut mask = 0u64;
    for cpu in 0..online_cpus().min(MAX_CPUS) {
        mask |= 1 << cpu;
    }
    run_mask(mask, 60_000, f)
}

/// Runs `f(cpu)` on CPU `cpu` only, with a 60 s limit.
pub fn run_on<F: Fn(usize) + Sync>(cpu: usize, f: &F) -> Result<(), Fail> {
    if cpu >= MAX_CPUS {
        return Err(Fail::new(alloc::format!("no cpu {cpu}")));
    }
    run_mask(1 << cpu, 60_000, f)
}
