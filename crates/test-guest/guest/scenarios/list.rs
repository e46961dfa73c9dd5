// The one list of scenarios: (name, function, one-line description).
//
// This file is `include!`d twice: by the guest (scenarios/mod.rs turns each entry into a
// registry entry that calls the function) and by the host crate (src/lib.rs keeps name and
// description as `vireo_test_guest::SCENARIOS`). Adding a scenario: write the function in a
// module of scenarios/ and add one line here.
scenarios! {
    ("hello", basic::hello, "prints a greeting with the vCPU count it was told (cpus=, default 1)"),
    ("mem", mem::mem, "prints the RAM size and map, checks mem=<MiB>, tests the first and last page of every RAM region"),
    ("cmdline", basic::cmdline, "prints the full command line"),
    ("smp", smp::smp, "starts cpus=N CPUs, checks their APIC IDs and CPUID topology (leaves 1 and 0xB; sockets=S)"),
    ("reset", power::reset, "resets (method=i8042|cf9|triple-fault) and passes after the reboot (CMOS byte 0x5f marks it)"),
    ("powerbutton", power::powerbutton, "enables the ACPI power button event, waits for a press (timeout_ms=30000), then powers off"),
    ("idle", power::idle, "halts for good with interrupts disabled: an idle VM that uses no host CPU until the host stops it"),
    ("poweroff", power::poweroff, "powers off through the ACPI PM1a control port 0x604; FAIL if still running after 1 s"),
    ("unemulated", basic::unemulated, "runs x87 fninit + fld1 at CPL0 (KVM_EXIT_INTERNAL_ERROR on the emulating host); exits with status 3 if it ran"),
    ("exception", basic::exception, "reads a non-canonical address at CPL3: #GP, EXCEPTION line, status 2"),
    ("fail", basic::fail, "fails with reason 'requested' (status 1)"),
    ("wait", serial::wait, "waits for one byte of serial input, then passes"),
    ("echo", serial::echo, "echoes each serial input line as 'echo: <line>' until the line 'quit'"),
    ("boottime", basic::boottime, "prints the guest's own start-up time: PVH entry to Rust, and to the ready line"),
    ("cpuid", basic::cpuid, "prints CPUID leaves (leaves=0,1,7,...) as executed at CPL0 (the VMM's table) and at CPL3"),
    ("ticks", basic::ticks, "prints 'tick <i>' every interval_ms=100 ms, count=10 times"),
    ("pci", pci_enum::pci, "enumerates PCI (ECAM from MCFG or _CBA, else ports 0xcf8), sizes and assigns BARs (windows from _CRS or mmio32=/mmio64=), prints every function; expect=vvvv:dddd,... must be present"),
    ("virtio-blk", virtio_blk::virtio_blk, "writes pattern= to sectors= sectors at start=, flushes, reads back and compares; prints config and ID; readonly=1: writes must fail; discard=1: DISCARD/WRITE_ZEROES; mode=poll|msix"),
    ("virtio-rng", virtio_misc::rng, "reads bytes= (64) bytes from virtio-rng; they must not all be equal; mode=poll|msix"),
    ("virtio-console", virtio_misc::console, "prints 'virtio-console: hello' on port 0 (hvc0); echo=1: reads a line there and echoes it"),
    ("virtio-net", virtio_misc::net, "prints MAC and link, sends an ARP request for peer= (10.0.2.2) from ip= (10.0.2.15) and, with ping=1 (default), an ICMP echo; waits for the replies"),
    ("virtio-hostile", virtio_hostile::hostile, "posts malformed chains to virtio-blk (loops, bad indexes and addresses, wrong directions, zero/oversized buffers, bad indirect tables), reports what the device did per case, checks it recovers after a reset and virtio-rng still works; strict=1 fails on unexpected outcomes"),
    ("bench-blk", bench::bench_blk, "benchmark, polled: 4 KiB random read/write IOPS at queue depth 1 and 32, 1 MiB sequential read/write MB/s (seq_qd=8) on the first virtio-blk; secs= (2) per test, size= (whole disk), tests=randread1,randread32,randwrite1,randwrite32,seqread,seqwrite"),
    ("bench-net", bench::bench_net, "benchmark, polled: UDP transmit on the first virtio-net as fast as the ring allows, frames=64,1514 bytes each for secs= (2), to peer_mac= (broadcast) / peer= (10.0.2.2) from ip= (10.0.2.15); prints a begin line settle_ms= (200) before each run"),
    ("acpi", acpi::acpi, "finds the RSDP, checks every ACPI table's bounds, checksum and place in the memory map, the MADT against cpus=N and the FADT (sci=, pm1a_evt=, pm1a_cnt=, reset=, reset_value=) and DSDT; scan=1: the RSDP must also be in 0xe0000-0xfffff"),
}
