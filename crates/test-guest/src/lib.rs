//! Vireo's in-repo test guest, as seen from the host.
//!
//! `build.rs` compiles the bare-metal guest program in `guest/` into a PVH-bootable ELF;
//! this crate hands it to tests and benchmarks ([`ELF`], [`elf_path`]) together with the
//! protocol they speak with it ([`protocol`], re-exported here) and the list of scenarios
//! it can run ([`SCENARIOS`]). See the crate's README.md.
//!
//! ```no_run
//! use vireo_test_guest as guest;
//! let cmdline = guest::cmdline("smp", &[("cpus", "2")]);
//! assert_eq!(cmdline, "scenario=smp cpus=2");
//! // Boot guest::elf_path() with that command line, wait for guest::READY_LINE, then for
//! // a line starting with guest::PASS_PREFIX and exit status guest::STATUS_PASS.
//! ```

use std::path::Path;

#[path = "../guest/protocol.rs"]
pub mod protocol;

pub mod elf;

pub use protocol::*;

/// The guest program: a static x86_64 ELF (ET_EXEC) loaded at 1 MiB, with a Xen
/// PHYS32_ENTRY note for PVH boot.
pub const ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vireo-test-guest.elf"));

/// The built guest ELF on disk (for VMMs that take a file name, such as QEMU's `-kernel`).
pub fn elf_path() -> &'static Path {
    Path::new(concat!(env!("OUT_DIR"), "/vireo-test-guest.elf"))
}

macro_rules! scenarios {
    ($(($name:literal, $run:path, $about:literal)),* $(,)?) => {
        /// Every scenario the guest knows: (name, one-line description), from the same
        /// list the guest is built from (guest/scenarios/list.rs).
        pub const SCENARIOS: &[(&str, &str)] = &[$(($name, $about)),*];
    };
}

include!("../guest/scenarios/list.rs");

/// The one-line description of scenario `name`, if the guest has it.
pub fn scenario_about(name: &str) -> Option<&'static str> {
    SCENARIOS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, about)| *about)
}

/// The kernel command line that runs `scenario` with `key=value` arguments.
pub fn cmdline(scenario: &str, args: &[(&str, &str)]) -> String {
    let mut line = format!("scenario={scenario}");
    for (key, value) in args {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(value);
    }
    line
}

/// The final PASS line of `scenario`.
pub fn pass_line(scenario: &str) -> String {
    format!("{PASS_PREFIX}{scenario}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_on_disk_is_the_embedded_one() {
        let on_disk = std::fs::read(elf_path()).expect("the build script wrote the ELF");
        assert_eq!(on_disk, ELF);
    }

    #[test]
    fn elf_is_a_pvh_bootable_x86_64_executable() {
        let info = elf::inspect(ELF).expect("the guest ELF parses");
        assert!(
            info.load_start >= LOAD_ADDR,
            "loads at {:#x}, below 1 MiB",
            info.load_start
        );
        assert_eq!(info.load_start, LOAD_ADDR);
        let entry = u64::from(info.pvh_entry);
        assert!(
            info.segments
                .iter()
                .any(|s| s.paddr <= entry && entry < s.paddr + s.filesz),
            "PVH entry {entry:#x} is not inside the loaded file contents"
        );
        assert_eq!(
            u64::from(info.pvh_entry),
            info.entry,
            "ELF entry and PVH entry differ"
        );
    }

    #[test]
    fn scenario_list_has_unique_names_and_the_default() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "duplicate scenario names");
        assert!(scenario_about(DEFAULT_SCENARIO).is_some());
        for (name, about) in SCENARIOS {
            assert!(
                !name.is_empty() && !name.contains(char::is_whitespace),
                "bad name {name:?}"
            );
            assert!(!about.is_empty(), "{name} has no description");
        }
    }

    #[test]
    fn scenario_names_are_in_the_guest_binary() {
        // The guest looks scenarios up by these strings: they must be in its image.
        for (name, _) in SCENARIOS {
            assert!(
                ELF.windows(name.len()).any(|w| w == name.as_bytes()),
                "scenario {name} is not in the guest ELF"
            );
        }
        assert!(ELF
            .windows(READY_LINE.len())
            .any(|w| w == READY_LINE.as_bytes()));
    }

    #[test]
    fn cmdline_and_exit_codes() {
        assert_eq!(cmdline("hello", &[]), "scenario=hello");
        assert_eq!(
            cmdline("mem", &[("mem", "128"), ("x", "y")]),
            "scenario=mem mem=128 x=y"
        );
        assert_eq!(pass_line("hello"), "vireo-test-guest: PASS hello");
        assert_eq!(qemu_exit_code(STATUS_PASS), 1);
        assert_eq!(qemu_exit_code(STATUS_FAIL), 3);
        assert_eq!(qemu_exit_code(STATUS_EXCEPTION), 5);
        assert_eq!(qemu_exit_code(STATUS_UNEMULATED_RAN), 7);
        assert!(READY_LINE.starts_with(LINE_PREFIX));
        assert!(PASS_PREFIX.starts_with(LINE_PREFIX) && FAIL_PREFIX.starts_with(LINE_PREFIX));
        assert!(EXCEPTION_PREFIX.starts_with(LINE_PREFIX));
    }
}
