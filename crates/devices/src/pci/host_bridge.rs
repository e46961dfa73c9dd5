//! The host bridge at 00:00.0.
//!
//! Identity: vendor 0x1b36 device 0x0008 (Red Hat's ID for a generic PCIe
//! host bridge, as QEMU's `gpex` presents it), subsystem 0x1af4:0x1100,
//! class 06/00/00 (host bridge). Chosen over Intel chipset IDs because
//! Linux binds chipset-specific code to those (EDAC, AGP/GTT and quirks
//! that poke chipset registers we do not have), and over vendor 0x1af4
//! because Linux's virtio-pci driver matches every function of that vendor
//! and would try to probe the bridge. The bridge only
//! identifies the root complex (Linux's type 1 sanity check looks for a
//! host bridge or VGA class at bus 0): no BARs, no registers beyond the
//! header.

use super::config::{ConfigSpace, PciIds};
use super::{BarSpec, DecodedBar, PciDevice, PciError};

/// Vendor ID of the host bridge.
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;

/// The root complex's host bridge function.
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge::new()
    }
}

impl HostBridge {
    /// The bridge, in its power-on state.
    pub fn new() -> HostBridge {
        HostBridge {
            config: ConfigSpace::new(PciIds {
                vendor: HOST_BRIDGE_VENDOR,
                device: HOST_BRIDGE_DEVICE,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
                revision: 0,
                class: 0x06_00_00,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bars(&self) -> Vec<BarSpec> {
        Vec::new()
    }

    fn place_bar(&mut self, index: u8, _addr: u64) -> Result<(), PciError> {
        Err(PciError::NoSuchBar(index))
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        Vec::new()
    }

    fn bar_read(&mut self, _index: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _index: u8, _offset: u64, _data: &[u8]) {}

    fn reset(&mut self) {
        self.config.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_a_host_bridge() {
        let mut h = HostBridge::new();
        let mut b = [0u8; 4];
        h.read_config(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0008_1b36);
        h.read_config(8, &mut b);
        assert_eq!(u32::from_le_bytes(b) >> 8, 0x06_00_00);
        // No BARs: all sizing writes read back 0.
        h.write_config(0x10, &[0xff; 4]);
        h.read_config(0x10, &mut b);
        assert_eq!(b, [0; 4]);
        assert!(h.bars().is_empty());
        assert_eq!(h.place_bar(0, 0x1000), Err(PciError::NoSuchBar(0)));
    }
}
