//! The scenario registry. The list itself is list.rs (shared with the host crate).

mod acpi;
mod basic;
mod bench;
mod mem;
mod pci_enum;
mod power;
mod serial;
mod smp;
mod virtio_blk;
mod virtio_hostile;
mod virtio_misc;

use crate::kit::Scenario;

macro_rules! scenarios {
    ($(($name:literal, $run:path, $about:literal)),* $(,)?) => {
        /// Every scenario, in list.rs order.
        pub static SCENARIOS: &[Scenario] = &[$(Scenario { name: $name, about: $about, run: $run }),*];
    };
}

include!("list.rs");

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
