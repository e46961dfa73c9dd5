//! vCPU threads: each runs KVM_RUN in a loop and is an explicit state machine
//! (Running / Paused / Exited) driven by the VM through [`VcpuControl`] plus a
//! kick signal that makes KVM_RUN return.
//!
//! The kick uses the canonical race-free scheme: the signal handler sets
//! `kvm_run.immediate_exit`, so a kick that lands just before KVM_RUN is entered
//! still makes it return at once.

use std::cell::Cell;
use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vireo_devices::ratelimit::RateLimitedLog;
use vireo_devices::{guest_debug, Bus};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::events::{Event, Notifier, VcpuFailure};

/// What the VM wants a vCPU to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Run,
    Pause,
    Stop,
}

/// What a vCPU is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// Created, not yet in its loop.
    Starting,
    /// In (or about to enter) KVM_RUN.
    Running,
    /// Parked until resumed.
    Paused,
    /// Left its loop: stopped, or the guest cannot go on.
    Exited,
}

#[derive(Debug)]
struct Shared {
    desired: Desired,
    state: VcpuState,
}

/// The VM's side of one vCPU's state machine.
#[derive(Debug)]
pub struct VcpuControl {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl VcpuControl {
    fn new() -> VcpuControl {
        VcpuControl {
            shared: Mutex::new(Shared {
                desired: Desired::Run,
                state: VcpuState::Starting,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a state; the caller kicks the thread afterwards.
    pub fn set_desired(&self, d: Desired) {
        let mut s = self.lock();
        // Stop is final.
        if s.desired != Desired::Stop {
            s.desired = d;
        }
        self.changed.notify_all();
    }

    /// The current state.
    pub fn state(&self) -> VcpuState {
        self.lock().state
    }

    /// Waits until `pred(state)` holds or `timeout` passes; returns the state.
    pub fn wait_for(
        &self,
        pred: impl Fn(VcpuState) -> bool,
        timeout: std::time::Duration,
    ) -> VcpuState {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |s| !pred(s.state))
            .unwrap_or_else(|p| p.into_inner());
        g.state
    }

    fn set_state(&self, state: VcpuState) {
        self.lock().state = state;
        self.changed.notify_all();
    }

    /// Blocks while paused; returns what to do next.
    fn next(&self) -> Desired {
        let mut s = self.lock();
        loop {
            match s.desired {
                Desired::Run => {
                    // The common path (every exit): no wake-up unless the state changes.
                    if s.state != VcpuState::Running {
                        s.state = VcpuState::Running;
                        self.changed.notify_all();
                    }
                    return Desired::Run;
                }
                Desired::Stop => return Desired::Stop,
                Desired::Pause => {
                    if s.state != VcpuState::Paused {
                        s.state = VcpuState::Paused;
                        self.changed.notify_all();
                    }
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

/// Accesses to addresses no device claims: Linux probes many legacy ports, so
/// these are debug-level, and a guest cannot flood the log with them.
static UNCLAIMED: RateLimitedLog = RateLimitedLog::new(10, std::time::Duration::from_secs(60));

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal: a real-time signal reserved for vCPU threads.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped kvm_run, valid while the
        // thread lives (it is cleared before the VcpuFd is dropped); a volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal handler (process-wide, once).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
}

/// Everything a vCPU thread needs.
pub struct VcpuContext {
    pub index: u32,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub notifier: Arc<Notifier>,
    /// Exits left before the VM is stopped (shared by all vCPUs), if limited.
    pub exit_budget: Option<Arc<AtomicU64>>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub index: u32,
    pub control: Arc<VcpuControl>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Starts the thread. It runs until asked to stop or the guest fails.
    pub fn spawn(ctx: VcpuContext) -> std::io::Result<VcpuHandle> {
        let control = Arc::new(VcpuControl::new());
        let c = control.clone();
        let index = ctx.index;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || run_loop(ctx, &c))?;
        Ok(VcpuHandle {
            index,
            control,
            thread: Some(thread),
        })
    }

    /// Asks for `d` and kicks the thread out of KVM_RUN.
    pub fn request(&self, d: Desired) {
        self.control.set_desired(d);
        self.kick();
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            // SAFETY: the pthread is alive until joined (we hold its JoinHandle);
            // the kick signal's handler is installed before any vCPU starts.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.request(Desired::Stop);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("vcpu{} thread panicked", self.index);
            }
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_loop(mut ctx: VcpuContext, control: &VcpuControl) {
    // Keep the kick signal deliverable here even if the spawner blocked it.
    unblock_kick();
    let run: *mut kvm_run = ctx.fd.get_kvm_run();
    KVM_RUN.with(|r| r.set(run));
    loop {
        if control.next() == Desired::Stop {
            break;
        }
        match run_once(&mut ctx, run) {
            Ok(()) => {}
            Err(failure) => {
                ctx.notifier.send(Event::VcpuFailed {
                    index: ctx.index,
                    failure,
                });
                break;
            }
        }
    }
    KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    control.set_state(VcpuState::Exited);
}

fn unblock_kick() {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// One KVM_RUN and the handling of its exit.
fn run_once(ctx: &mut VcpuContext, run: *mut kvm_run) -> Result<(), VcpuFailure> {
    let index = ctx.index;
    if let Some(budget) = &ctx.exit_budget {
        if budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(VcpuFailure::Internal {
                what: "the exit budget is used up".into(),
                dump: dump(ctx, None),
            });
        }
    }
    let exit = ctx.fd.run();
    match exit {
        Ok(VcpuExit::IoOut(port, data)) => {
            // SAFETY: `run` is this vCPU's kvm_run; exit_reason is KVM_EXIT_IO.
            let size = usize::from(unsafe { (*run).__bindgen_anon_1.io.size }).max(1);
            for chunk in data.chunks(size) {
                if !ctx.pio.write(u64::from(port), chunk) {
                    guest_debug!(
                        UNCLAIMED,
                        "vcpu{index}: write {chunk:02x?} to unclaimed port {port:#x}"
                    );
                }
            }
            Ok(())
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            // SAFETY: as above.
            let size = usize::from(unsafe { (*run).__bindgen_anon_1.io.size }).max(1);
            for chunk in data.chunks_mut(size) {
                if !ctx.pio.read(u64::from(port), chunk) {
                    guest_debug!(UNCLAIMED, "vcpu{index}: read from unclaimed port {port:#x}");
                }
            }
            Ok(())
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !ctx.mmio.read(addr, data) {
                guest_debug!(UNCLAIMED, "vcpu{index}: read from unclaimed MMIO {addr:#x}");
            }
            Ok(())
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            if !ctx.mmio.write(addr, data) {
                guest_debug!(UNCLAIMED, "vcpu{index}: write to unclaimed MMIO {addr:#x}");
            }
            Ok(())
        }
        Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => Ok(()),
        Ok(VcpuExit::Shutdown) => Err(VcpuFailure::TripleFault {
            dump: dump(ctx, None),
        }),
        Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                ctx.notifier
                    .send(Event::Request(vireo_devices::VmRequest::PowerOff));
                Ok(())
            }
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                ctx.notifier
                    .send(Event::Request(vireo_devices::VmRequest::Reset));
                Ok(())
            }
            other => Err(VcpuFailure::Internal {
                what: format!("unexpected system event {other}"),
                dump: dump(ctx, None),
            }),
        },
        Ok(VcpuExit::InternalError) => {
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live member.
            let info = unsafe { (*run).__bindgen_anon_1.internal };
            if info.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && deliver_int3(ctx) {
                return Ok(());
            }
            let n = (info.ndata as usize).min(info.data.len());
            let what = format!(
                "KVM internal error, suberror {} ({}), data {:x?}",
                info.suberror,
                match info.suberror {
                    1 => "instruction emulation failed",
                    2 => "simultaneous exceptions",
                    3 => "delivery event",
                    _ => "other",
                },
                &info.data[..n]
            );
            Err(VcpuFailure::Internal {
                what,
                dump: dump(ctx, Some(run)),
            })
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => Err(VcpuFailure::Internal {
            what: format!(
                "KVM failed to enter the guest: hardware reason {reason:#x} on host cpu {cpu}"
            ),
            dump: dump(ctx, None),
        }),
        Ok(other) => {
            let what = format!("unexpected exit {other:?}");
            Err(VcpuFailure::Internal {
                what,
                dump: dump(ctx, None),
            })
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // Kicked: clear the request and let the state machine look.
            // SAFETY: this thread's kvm_run; the kick handler only ever sets it to 1.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
            Ok(())
        }
        Err(e) => Err(VcpuFailure::Internal {
            what: format!("KVM_RUN failed on vcpu{index}: {e}"),
            dump: String::new(),
        }),
    }
}

/// Kernel-mode `int3` the host's instruction emulator could not run.
static INT3: RateLimitedLog = RateLimitedLog::new(5, std::time::Duration::from_secs(60));

/// On hosts whose KVM emulates guest kernel code, `int3` at CPL0 fails to
/// emulate (shared/kvm-host.md), yet kernels use it (Linux's boot-time
/// self-test, kprobes, static-call patching). When the failed instruction is
/// an `int3` at CPL0, deliver the #BP the guest expects: step past it (int3 is
/// a trap) and inject vector 3. Returns false if it was anything else.
fn deliver_int3(ctx: &VcpuContext) -> bool {
    const BP_VECTOR: u8 = 3;
    let (Ok(mut regs), Ok(sregs)) = (ctx.fd.get_regs(), ctx.fd.get_sregs()) else {
        return false;
    };
    if sregs.cs.selector & 3 != 0 || sregs.cs.l != 1 {
        return false;
    }
    let Some(pa) = ctx
        .fd
        .translate_gva(regs.rip)
        .ok()
        .filter(|t| t.valid != 0)
        .map(|t| t.physical_address)
    else {
        return false;
    };
    let mut byte = [0u8; 1];
    if ctx.mem.read_slice(&mut byte, GuestAddress(pa)).is_err() || byte[0] != 0xcc {
        return false;
    }
    let Ok(mut events) = ctx.fd.get_vcpu_events() else {
        return false;
    };
    if events.exception.injected != 0 || events.exception.pending != 0 {
        return false;
    }
    regs.rip += 1;
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    if ctx.fd.set_regs(&regs).is_err() || ctx.fd.set_vcpu_events(&events).is_err() {
        return false;
    }
    guest_debug!(
        INT3,
        "vcpu{}: delivered #BP for kernel int3 at {:#x}",
        ctx.index,
        regs.rip - 1
    );
    true
}

/// A register dump for post-mortems.
fn dump(ctx: &VcpuContext, _run: Option<*mut kvm_run>) -> String {
    let mut s = String::new();
    let _ = write!(s, "vcpu{}:", ctx.index);
    match ctx.fd.get_regs() {
        Ok(r) => {
            let _ = write!(
                s,
                "\n  rip={:016x} rsp={:016x} rflags={:08x}\n  rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}\n  rsi={:016x} rdi={:016x} rbp={:016x}\n  r8 ={:016x} r9 ={:016x} r10={:016x} r11={:016x}\n  r12={:016x} r13={:016x} r14={:016x} r15={:016x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9,
                r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
            );
            if let Ok(sr) = ctx.fd.get_sregs() {
                let _ = write!(
                    s,
                    "\n  cs={:04x} (dpl {}, {}-bit) ss={:04x} cr0={:08x} cr2={:016x} cr3={:016x} cr4={:08x} efer={:x}",
                    sr.cs.selector,
                    sr.cs.dpl,
                    if sr.cs.l == 1 { 64 } else if sr.cs.db == 1 { 32 } else { 16 },
                    sr.ss.selector,
                    sr.cr0,
                    sr.cr2,
                    sr.cr3,
                    sr.cr4,
                    sr.efer
                );
                let linear = if sr.cs.l == 1 {
                    r.rip
                } else {
                    sr.cs.base.wrapping_add(r.rip)
                };
                let phys = if sr.cr0 & (1 << 31) != 0 {
                    ctx.fd
                        .translate_gva(linear)
                        .ok()
                        .filter(|t| t.valid != 0)
                        .map(|t| t.physical_address)
                } else {
                    Some(linear)
                };
                if let Some(pa) = phys {
                    let mut code = [0u8; 16];
                    if ctx.mem.read_slice(&mut code, GuestAddress(pa)).is_ok() {
                        let _ = write!(s, "\n  code at {pa:#x}: {code:02x?}");
                    }
                }
            }
        }
        Err(e) => {
            let _ = write!(s, " registers unavailable: {e}");
        }
    }
    s
}
