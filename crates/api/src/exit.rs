//! The exit codes of `vireo-vmm`: how one VM ended.
//!
//! The monitor's process exit status is its only report when nothing else is
//! listening, so every way a VM can end has its own stable code. Scripts and the
//! daemon rely on these numbers: never renumber them.

use serde::{Deserialize, Serialize};

/// How a VM ended, as the monitor's process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum MonitorExit {
    /// The guest powered off, or reported status 0 on the debug-exit port.
    Ok = 0,
    /// The guest reported a non-zero status on the debug-exit port.
    GuestFailed = 1,
    /// Bad command line or configuration: the VM never started.
    Usage = 2,
    /// The guest asked for a reset while rebooting was disabled (`--no-reboot`).
    Reset = 3,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN) while rebooting was disabled.
    TripleFault = 4,
    /// KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR, failed entry, or an
    /// exit the monitor does not handle); a register dump was logged.
    InternalError = 5,
    /// The monitor itself failed (KVM unavailable, out of memory, I/O error).
    MonitorError = 6,
    /// The monitor was asked to stop (SIGTERM/SIGINT) and stopped the VM in order.
    Terminated = 7,
}

impl MonitorExit {
    /// Every code, for documentation and round-trip tests.
    pub const ALL: [MonitorExit; 8] = [
        MonitorExit::Ok,
        MonitorExit::GuestFailed,
        MonitorExit::Usage,
        MonitorExit::Reset,
        MonitorExit::TripleFault,
        MonitorExit::InternalError,
        MonitorExit::MonitorError,
        MonitorExit::Terminated,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Decodes a process exit code.
    pub fn from_code(code: i32) -> Option<MonitorExit> {
        Self::ALL.into_iter().find(|e| i32::from(e.code()) == code)
    }

    /// One line for people.
    pub fn describe(self) -> &'static str {
        match self {
            MonitorExit::Ok => "the guest powered off",
            MonitorExit::GuestFailed => "the guest reported failure",
            MonitorExit::Usage => "invalid configuration",
            MonitorExit::Reset => "the guest reset the machine (rebooting disabled)",
            MonitorExit::TripleFault => "the guest triple-faulted (rebooting disabled)",
            MonitorExit::InternalError => "KVM could not run the guest",
            MonitorExit::MonitorError => "the monitor failed",
            MonitorExit::Terminated => "the monitor was asked to stop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for (i, e) in MonitorExit::ALL.iter().enumerate() {
            assert_eq!(MonitorExit::from_code(i32::from(e.code())), Some(*e));
            assert_eq!(usize::from(e.code()), i, "codes are dense and stable");
        }
        assert_eq!(MonitorExit::from_code(200), None);
    }
}
