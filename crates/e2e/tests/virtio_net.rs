//! virtio-net on a real TAP device in a network namespace made by the test:
//! the host kernel on the TAP's side answers the guest's ARP and ping.

use vireo_e2e::{kvm_or_skip, run, vmm, MonitorExit, NetNs};

const GUEST_MAC: &str = "52:54:00:12:34:56";

/// A namespace holding a persistent TAP `vt0` (with a vnet header) at
/// 10.0.2.2/24, up; `multi_queue` makes it a multi-queue TAP.
fn tap_namespace(test: &str, multi_queue: bool) -> Option<NetNs> {
    if !kvm_or_skip(test) {
        return None;
    }
    let ns = NetNs::new(
        test,
        &format!("vireo-{}-{}", std::process::id(), test.len()),
    )?;
    let mut add = vec!["tuntap", "add", "dev", "vt0", "mode", "tap", "vnet_hdr"];
    if multi_queue {
        add.push("multi_queue");
    }
    ns.ip(&add);
    ns.ip(&["addr", "add", "10.0.2.2/24", "dev", "vt0"]);
    ns.ip(&["link", "set", "vt0", "up"]);
    Some(ns)
}

#[test]
fn guest_talks_to_the_host_through_a_tap() {
    let Some(ns) = tap_namespace("guest_talks_to_the_host_through_a_tap", false) else {
        return;
    };
    let host_mac = ns.sys_net("vt0", "address");
    for mode in ["poll", "msix"] {
        let cmdline = format!("scenario=virtio-net mode={mode}");
        let net = format!("tap=vt0,mac={GUEST_MAC}");
        let r = run(ns.wrap(&vmm(&cmdline, &["--net", &net])), b"");
        r.expect_exit(MonitorExit::Ok)
            .expect_stdout(&format!(
                "virtio-net: mac {GUEST_MAC} (from the device), link up"
            ))
            .expect_stdout(&format!("virtio-net: arp reply: 10.0.2.2 is at {host_mac}"))
            .expect_stdout("virtio-net: ping reply from 10.0.2.2");
    }
    // What the guest sent reached the host's side of the TAP.
    let rx: u64 = ns
        .sys_net("vt0", "statistics/rx_packets")
        .parse()
        .unwrap_or(0);
    assert!(rx >= 4, "the TAP received {rx} packets");
}

#[test]
fn several_queue_pairs_on_a_multi_queue_tap() {
    let Some(ns) = tap_namespace("several_queue_pairs_on_a_multi_queue_tap", true) else {
        return;
    };
    let r = run(
        ns.wrap(&vmm(
            "scenario=virtio-net mode=msix",
            &["--net", &format!("tap=vt0,mac={GUEST_MAC},queues=2")],
        )),
        b"",
    );
    r.expect_exit(MonitorExit::Ok)
        .expect_stdout("virtio-net: ping reply from 10.0.2.2");
}

#[test]
fn a_missing_tap_permission_or_bad_fd_is_a_clear_error() {
    if !kvm_or_skip("a_missing_tap_permission_or_bad_fd_is_a_clear_error") {
        return;
    }
    // Descriptor 9 is not open in the monitor.
    let r = run(vmm("scenario=hello", &["--net", "fd=9"]), b"");
    r.expect_exit(MonitorExit::Usage).expect_stderr("fd 9");
}
