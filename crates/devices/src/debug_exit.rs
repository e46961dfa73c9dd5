//! A guest-exit port compatible with QEMU's `isa-debug-exit` device.
//!
//! Bus placement: port I/O base [`DEBUG_EXIT_PORT`] (0xf4), length
//! [`DEBUG_EXIT_LEN`] (4).
//!
//! A write of 1, 2 or 4 bytes anywhere in the range asks the monitor to stop
//! the VM with [`VmRequest::GuestExit`] carrying the written value
//! (little-endian, zero-extended). The value is passed through unchanged: QEMU
//! turns it into the process exit status `(value << 1) | 1`; whether the
//! monitor does the same is its decision. Reads return all-ones, as QEMU's.

use std::sync::Arc;

use crate::ratelimit::RateLimitedLog;
use crate::{guest_debug, BusDevice, VmControl, VmRequest};

/// The conventional port of the exit device.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// The length of its port range.
pub const DEBUG_EXIT_LEN: u64 = 4;

/// The exit port.
pub struct DebugExit {
    control: Arc<dyn VmControl>,
    log: RateLimitedLog,
}

impl DebugExit {
    /// An exit port sending its requests to `control`.
    pub fn new(control: Arc<dyn VmControl>) -> DebugExit {
        DebugExit {
            control,
            log: RateLimitedLog::default(),
        }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let in_range = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= DEBUG_EXIT_LEN);
        if !in_range || !matches!(data.len(), 1 | 2 | 4) {
            guest_debug!(
                self.log,
                "debug-exit: ignoring {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        self.control
            .request(VmRequest::GuestExit(u32::from_le_bytes(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hammer, MockControl};

    fn dev() -> (DebugExit, Arc<MockControl>) {
        let ctl = Arc::new(MockControl::default());
        (DebugExit::new(ctl.clone()), ctl)
    }

    #[test]
    fn writes_of_1_2_4_bytes_request_exit_with_value() {
        let (mut d, ctl) = dev();
        d.write(0, &[0x31]);
        d.write(0, &0xbeefu16.to_le_bytes());
        d.write(0, &0x1234_5678u32.to_le_bytes());
        d.write(3, &[0]);
        assert_eq!(
            ctl.take(),
            vec![
                VmRequest::GuestExit(0x31),
                VmRequest::GuestExit(0xbeef),
                VmRequest::GuestExit(0x1234_5678),
                VmRequest::GuestExit(0),
            ]
        );
    }

    #[test]
    fn odd_widths_and_out_of_range_writes_are_ignored() {
        let (mut d, ctl) = dev();
        d.write(0, &[]);
        d.write(0, &[1, 2, 3]);
        d.write(0, &[1; 8]);
        d.write(2, &[1; 4]);
        d.write(4, &[1]);
        d.write(u64::MAX, &[1]);
        assert!(ctl.take().is_empty());
    }

    #[test]
    fn reads_are_all_ones() {
        let (mut d, ctl) = dev();
        for width in 0..=8 {
            let mut b = vec![0u8; width];
            d.read(0, &mut b);
            assert!(b.iter().all(|&x| x == 0xff));
        }
        assert!(ctl.take().is_empty());
    }

    #[test]
    fn hammering_never_panics() {
        let (mut d, ctl) = dev();
        hammer(&mut d, 0xdeb9, 8, 20_000);
        // Every request is a guest exit; nothing else can come out of it.
        assert!(ctl
            .take()
            .iter()
            .all(|r| matches!(r, VmRequest::GuestExit(_))));
    }
}
