//! Unit tests of the parser and writer, element by element.

use super::*;

/// UUIDs and MACs from a counter, so tests see stable values.
#[derive(Default)]
struct Counter {
    uuids: u8,
    macs: u8,
}

impl IdGenerator for Counter {
    fn uuid(&mut self) -> Uuid {
        self.uuids += 1;
        Uuid::from_u128(0x4000_8000_0000_0000_0000 | u128::from(self.uuids))
    }

    fn mac(&mut self) -> MacAddr {
        self.macs += 1;
        MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, self.macs])
    }
}

const OS: &str = "<os><type>hvm</type></os>";

/// A domain with `body` after a name and 64 MiB of memory.
fn doc(body: &str) -> String {
    format!("<domain type='kvm'><name>t</name><memory unit='MiB'>64</memory>{body}</domain>")
}

/// A domain with an `<os>` and `devices`.
fn with_devices(devices: &str) -> String {
    doc(&format!("{OS}<devices>{devices}</devices>"))
}

fn parse(xml: &str) -> Domain {
    let d = Domain::from_xml_with(xml, &mut Counter::default())
        .unwrap_or_else(|e| panic!("refused: {e}\n{xml}"));
    // Every accepted domain round-trips.
    let out = d.to_xml();
    let again = Domain::from_xml(&out).unwrap_or_else(|e| panic!("output refused: {e}\n{out}"));
    assert_eq!(again, d, "{out}");
    assert_eq!(again.to_xml(), out);
    d
}

fn refuse(xml: &str) -> DomainError {
    match Domain::from_xml_with(xml, &mut Counter::default()) {
        Ok(d) => panic!("accepted:\n{}", d.to_xml()),
        Err(e) => e,
    }
}

fn refuse_with(xml: &str, want: &str) {
    let e = refuse(xml);
    assert!(e.to_string().contains(want), "wanted {want:?}, got: {e}");
}

#[test]
fn a_minimal_domain_gets_libvirts_defaults() {
    let d = parse(&doc(OS));
    assert_eq!(d.name, "t");
    assert_eq!(d.uuid.to_string(), "00000000-0000-4000-8000-000000000001");
    assert_eq!(
        d.memory,
        Memory {
            kib: 65536,
            current_kib: 65536
        }
    );
    assert_eq!(d.memory.bytes(), 64 << 20);
    assert_eq!(d.vcpus, 1);
    assert_eq!(d.os.machine, "pc");
    assert_eq!(d.os.boot, Boot::TestGuest);
    assert!(d.is_test_guest());
    assert_eq!(d.cpu, None);
    assert_eq!(d.cpu_model(), None);
    assert_eq!(d.clock.offset, ClockOffset::Utc);
    assert_eq!(d.lifecycle, Lifecycle::default());
    assert_eq!(d.lifecycle.on_reboot, LifecycleAction::Restart);
    assert_eq!(d.devices, Devices::default());
    assert_eq!(d.console_device(), ConsoleTarget::Serial);
    assert_eq!(d.console_sink(), None);
}

#[test]
fn a_random_v4_uuid_is_generated_when_absent() {
    let a = Domain::from_xml(&doc(OS)).expect("accepted");
    let b = Domain::from_xml(&doc(OS)).expect("accepted");
    assert_eq!(a.uuid.get_version_num(), 4);
    assert_ne!(a.uuid, b.uuid);
}

#[test]
fn errors_name_line_column_and_path() {
    let e = refuse(&with_devices("\n  <graphics type='vnc'/>"));
    assert_eq!(e.line, 2);
    assert_eq!(e.column, 3);
    assert_eq!(e.path, "/domain/devices/graphics");
    assert_eq!(
        e.to_string(),
        "line 2: /domain/devices/graphics: element not supported by Vireo (graphics): \
         Vireo has no display; use a serial or virtio console"
    );
}

#[test]
fn the_running_id_is_ignored_and_unused_namespace_declarations_pass() {
    let d = parse(
        "<domain type='kvm' id='12' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
         <name>t</name><memory>65536</memory><os><type>hvm</type></os></domain>",
    );
    assert!(!d.to_xml().contains("id="));
    assert!(!d.to_xml().contains("qemu"));
}

#[test]
fn uuids_are_written_lowercase_hyphenated() {
    let d = parse(&doc(&format!(
        "<uuid>C7A5FDBDEDAF9455926AD65C16DB1809</uuid>{OS}"
    )));
    assert!(d
        .to_xml()
        .contains("<uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>"));
}

#[test]
fn names_are_trimmed_and_checked() {
    let d = parse(&doc(OS).replace("<name>t</name>", "<name>\n  web-1\n</name>"));
    assert_eq!(d.name, "web-1");
    refuse_with(
        &doc(OS).replace("<name>t</name>", "<name>a b</name>"),
        "' ' is not allowed",
    );
    refuse_with(
        &doc(OS).replace("<name>t</name>", "<name>-x</name>"),
        "cannot start with '-'",
    );
}

#[test]
fn title_description_and_metadata() {
    let d = parse(&doc(&format!(
        "<title>T &amp; t</title><description>a\n b</description>\
         <metadata><m:x xmlns:m='urn:m' a='1'>v</m:x></metadata>{OS}"
    )));
    assert_eq!(d.title.as_deref(), Some("T & t"));
    assert_eq!(d.description.as_deref(), Some("a\n b"));
    assert_eq!(d.metadata.len(), 1);
    assert_eq!(d.metadata[0].namespace(), Some("urn:m"));
    assert_eq!(d.metadata[0].attribute("a"), Some("1"));
    refuse_with(&doc("<metadata>text</metadata>"), "unexpected text 'text'");
    refuse_with(
        &doc("<metadata foo='1'/>"),
        "attribute not supported by Vireo (foo)",
    );
}

#[test]
fn memory_units_have_libvirts_meanings_and_are_stored_in_kib() {
    let cases: &[(&str, &str, u64)] = &[
        ("", "65536", 65536),
        ("KiB", "65536", 65536),
        ("k", "65536", 65536),
        ("KB", "4096000", 4_000_000),
        ("b", "67108864", 65536),
        ("bytes", "67108864", 65536),
        ("M", "64", 65536),
        ("MiB", "64", 65536),
        ("MB", "4096", 4_000_000),
        ("G", "2", 2 << 20),
        ("GiB", "2", 2 << 20),
        ("GB", "8", 7_812_500),
        ("T", "1", 1 << 30),
        ("TiB", "16", 16 << 30),
    ];
    for (unit, value, kib) in cases {
        let attr = if unit.is_empty() {
            String::new()
        } else {
            format!(" unit='{unit}'")
        };
        let d = parse(&format!(
            "<domain type='kvm'><name>t</name><memory{attr}>{value}</memory>{OS}</domain>"
        ));
        assert_eq!(d.memory.kib, *kib, "{value} {unit}");
        assert!(d
            .to_xml()
            .contains(&format!("<memory unit='KiB'>{kib}</memory>")));
    }
}

#[test]
fn memory_bounds_and_overflow() {
    let mem = |m: &str| format!("<domain type='kvm'><name>t</name>{m}{OS}</domain>");
    parse(&mem("<memory>8192</memory>"));
    refuse_with(&mem("<memory>8188</memory>"), "too small");
    parse(&mem("<memory unit='KiB'>17179869184</memory>"));
    refuse_with(&mem("<memory unit='KiB'>17179869188</memory>"), "too large");
    refuse_with(&mem("<memory unit='EiB'>15</memory>"), "too large");
    refuse_with(&mem("<memory unit='PB'>18446</memory>"), "too large");
    refuse_with(
        &mem("<memory unit='b'>18446744073709551615</memory>"),
        "too large",
    );
    refuse_with(
        &mem("<memory unit='b'>18446744073709551616</memory>"),
        "'18446744073709551616' is too large",
    );
    refuse_with(
        &mem("<memory unit='b'>8388609</memory>"),
        "not a whole number of 4 KiB pages",
    );
    refuse_with(&mem("<memory>+65536</memory>"), "not a whole number");
    refuse_with(&mem("<memory> </memory>"), "not a whole number");
    refuse_with(
        &mem("<memory><x/></memory>"),
        "element not supported by Vireo (x)",
    );
    parse(&mem("<memory>\n  65536\n</memory>"));
}

#[test]
fn current_memory_must_equal_memory() {
    let d = parse(&doc(&format!(
        "<currentMemory unit='KiB'>65536</currentMemory>{OS}"
    )));
    assert_eq!(d.memory.current_kib, 65536);
    refuse_with(
        &doc(&format!("<currentMemory>65540</currentMemory>{OS}")),
        "exceeds memory",
    );
    refuse_with(
        &doc(&format!("<currentMemory>32768</currentMemory>{OS}")),
        "no memory balloon",
    );
}

#[test]
fn vcpus() {
    assert_eq!(parse(&doc(&format!("<vcpu>254</vcpu>{OS}"))).vcpus, 254);
    assert_eq!(
        parse(&doc(&format!(
            "<vcpu placement='static' current='3'>3</vcpu>{OS}"
        )))
        .vcpus,
        3
    );
    refuse_with(
        &doc(&format!("<vcpu>255</vcpu>{OS}")),
        "255 vCPUs: Vireo supports 1 to 254",
    );
    refuse_with(&doc(&format!("<vcpu>0</vcpu>{OS}")), "at least one vCPU");
    refuse_with(
        &doc(&format!("<vcpu>99999999999999999999</vcpu>{OS}")),
        "too large",
    );
    refuse_with(&doc(&format!("<vcpu>two</vcpu>{OS}")), "not a whole number");
    refuse_with(
        &doc(&format!("<vcpu current='1'>2</vcpu>{OS}")),
        "no CPU hotplug",
    );
    refuse_with(
        &doc(&format!("<vcpu placement='dynamic'>2</vcpu>{OS}")),
        "invalid placement",
    );
}

#[test]
fn cpu_modes_map_to_vireo_models() {
    let cpu = |c: &str| parse(&doc(&format!("<vcpu>4</vcpu>{OS}{c}")));
    assert_eq!(
        cpu("<cpu mode='host-passthrough'/>").cpu_model(),
        Some(CpuModel::Host)
    );
    assert_eq!(
        cpu("<cpu mode='host-model'/>").cpu_model(),
        Some(CpuModel::Host)
    );
    let d = cpu("<cpu mode='custom'><model>x86-64-v2</model></cpu>");
    assert_eq!(d.cpu_model(), Some(CpuModel::X86_64V2));
    assert_eq!(CpuModel::X86_64V2.as_str(), "x86-64-v2");
    // No mode but a model means custom, as in libvirt.
    let d = cpu("<cpu><model>x86-64-v2</model></cpu>");
    assert!(d.to_xml().contains("<cpu mode='custom'>"), "{}", d.to_xml());
    let d = cpu("<cpu><topology sockets='2' cores='1' threads='2'/></cpu>");
    assert_eq!(d.cpu_model(), None);
    assert_eq!(
        d.topology(),
        Some(Topology {
            sockets: 2,
            cores: 1,
            threads: 2
        })
    );
    let d = cpu("<cpu mode='host-passthrough' check='partial' migratable='off'/>");
    let c = d.cpu.as_ref().expect("cpu");
    assert_eq!(c.check, Some(CpuCheck::Partial));
    assert_eq!(c.migratable, Some(false));

    let bad = |c: &str, want: &str| refuse_with(&doc(&format!("<vcpu>4</vcpu>{OS}{c}")), want);
    bad("<cpu mode='custom'/>", "needs a <model>");
    bad(
        "<cpu mode='host-model'><model>x86-64-v2</model></cpu>",
        "mode='custom' only",
    );
    bad(
        "<cpu mode='host-passthrough' match='exact'/>",
        "match= goes with mode='custom'",
    );
    bad(
        "<cpu mode='custom'><model>qemu64</model></cpu>",
        "CPU model 'qemu64' is not supported",
    );
    bad(
        "<cpu mode='custom'><model vendor_id='x'>x86-64-v2</model></cpu>",
        "(vendor_id)",
    );
    bad("<cpu check='loose'/>", "invalid check 'loose'");
    bad("<cpu migratable='yes'/>", "use on or off");
    bad(
        "<cpu><topology sockets='1' cores='4' threads='1' clusters='2'/></cpu>",
        "clusters='1'",
    );
    bad(
        "<cpu><topology sockets='0' cores='4' threads='1'/></cpu>",
        "sockets 0 is out of range",
    );
    bad(
        "<cpu><topology sockets='1' cores='2' threads='1'/></cpu>",
        "makes 2 vCPUs, but <vcpu> is 4",
    );
    bad("<cpu><cache mode='passthrough'/></cpu>", "(cache)");
    bad("<cpu><numa/></cpu>", "(numa)");
}

#[test]
fn os_boot_kinds() {
    let d = parse(&doc(
        "<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>\
         <kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0</cmdline>\
         <boot dev='network'/><boot dev='hd'/></os>",
    ));
    assert_eq!(d.os.machine, "pc-i440fx-7.2");
    assert_eq!(
        d.os.boot,
        Boot::Kernel {
            kernel: "/k".into(),
            initrd: Some("/i".into())
        }
    );
    assert_eq!(d.os.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!(d.os.boot_devices, vec![BootDevice::Network, BootDevice::Hd]);
    assert!(!d.is_test_guest());
    // The test guest takes a command line (its scenario).
    let d = parse(&doc(
        "<os><type>hvm</type><cmdline>scenario=smp</cmdline></os>",
    ));
    assert!(d.is_test_guest());
    assert_eq!(d.os.cmdline.as_deref(), Some("scenario=smp"));

    refuse_with(&doc(""), "<domain> needs a <os>");
    refuse_with(&doc("<os/>"), "<os> needs a <type>");
    refuse_with(
        &doc("<os><type machine=''>hvm</type></os>"),
        "empty machine type",
    );
    refuse_with(
        &doc("<os><type>hvm</type><boot dev='usb'/></os>"),
        "invalid dev 'usb'",
    );
    refuse_with(
        &doc("<os><type>hvm</type><boot/></os>"),
        "<boot> needs the attribute 'dev'",
    );
    refuse_with(
        &doc("<os><type>hvm</type><kernel>/a</kernel><kernel>/b</kernel></os>"),
        "duplicate element <kernel>",
    );
    refuse_with(&doc("<os><type>hvm</type><dtb>/x</dtb></os>"), "(dtb)");
    refuse_with(
        &doc("<os><type>hvm</type><boot dev='hd'/><boot dev='hd'/></os>"),
        "listed twice",
    );
}

#[test]
fn features() {
    let d = parse(&doc(&format!(
        "{OS}<features><acpi/><apic/><pae/><vmport state='off'/></features>"
    )));
    assert_eq!(
        d.features,
        Features {
            acpi: true,
            apic: true,
            pae: true,
            vmport_off: true
        }
    );
    // An empty <features/> means no flags.
    assert_eq!(
        parse(&doc(&format!("{OS}<features/>"))).features,
        Features::default()
    );
    refuse_with(
        &doc(&format!("{OS}<features><apic eoi='on'/></features>")),
        "(eoi)",
    );
    refuse_with(
        &doc(&format!("{OS}<features><smm state='on'/></features>")),
        "feature not supported by Vireo (smm)",
    );
    refuse_with(
        &doc(&format!("{OS}<features><acpi/><acpi/></features>")),
        "duplicate element <acpi>",
    );
}

#[test]
fn clock_and_timers() {
    let d = parse(&doc(&format!(
        "{OS}<clock offset='localtime'><timer name='pit' tickpolicy='discard'/>\
         <timer name='hpet' present='no'/><timer name='kvmclock'/></clock>"
    )));
    assert_eq!(d.clock.offset, ClockOffset::Localtime);
    assert_eq!(d.clock.timers.len(), 3);
    assert_eq!(d.clock.timers[0].tickpolicy, Some(TickPolicy::Discard));
    let bad = |c: &str, want: &str| refuse_with(&doc(&format!("{OS}<clock>{c}</clock>")), want);
    bad("<timer name='rtc' present='no'/>", "always has it");
    bad("<timer name='kvmclock' present='no'/>", "always has it");
    bad("<timer name='hpet' present='yes'/>", "no HPET");
    bad(
        "<timer name='hpet' present='no' tickpolicy='delay'/>",
        "(tickpolicy) on timer hpet",
    );
    bad("<timer name='pit' track='guest'/>", "(track) on timer pit");
    bad(
        "<timer name='pit'/><timer name='pit'/>",
        "a second timer named pit",
    );
    bad(
        "<timer name='rtc' tickpolicy='fast'/>",
        "invalid tickpolicy 'fast'",
    );
    bad(
        "<timer name='rtc'><catchup threshold='1'/></timer>",
        "(catchup)",
    );
    refuse_with(
        &doc(&format!("{OS}<clock offset='utc' adjustment='reset'/>")),
        "(adjustment)",
    );
}

#[test]
fn lifecycle_actions() {
    let d = parse(&doc(&format!(
        "{OS}<on_poweroff>preserve</on_poweroff><on_reboot>destroy</on_reboot><on_crash>restart</on_crash>"
    )));
    assert_eq!(
        d.lifecycle,
        Lifecycle {
            on_poweroff: LifecycleAction::Preserve,
            on_reboot: LifecycleAction::Destroy,
            on_crash: LifecycleAction::Restart,
        }
    );
    for refused in ["rename-restart", "coredump-destroy", "coredump-restart"] {
        refuse_with(
            &doc(&format!("{OS}<on_crash>{refused}</on_crash>")),
            &format!("'{refused}' is not supported by Vireo"),
        );
    }
    refuse_with(
        &doc(&format!("{OS}<on_lockfailure>poweroff</on_lockfailure>")),
        "(on_lockfailure)",
    );
}

#[test]
fn power_management_may_only_disable_suspend() {
    let d = parse(&doc(&format!(
        "{OS}<pm><suspend-to-disk enabled='no'/></pm>"
    )));
    assert_eq!(
        d.pm,
        Some(Pm {
            suspend_to_mem_disabled: false,
            suspend_to_disk_disabled: true
        })
    );
    refuse_with(
        &doc(&format!("{OS}<pm><suspend-to-disk enabled='yes'/></pm>")),
        "no guest suspend",
    );
}

#[test]
fn disks() {
    let d = parse(&with_devices(
        "<disk type='file' device='disk'><source file='/a.img'/><target dev='vda'/></disk>\
         <disk type='block'><driver name='qemu' type='raw' cache='none' discard='unmap' queues='16'/>\
         <source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/><readonly/><serial>S-1</serial></disk>\
         <disk type='file'><driver type='qcow2' cache='writeback' io='threads'/>\
         <source file='/c.qcow2'/><target dev='vdc'/></disk>",
    ));
    let [a, b, c] = d.devices.disks.as_slice() else {
        panic!("three disks");
    };
    assert_eq!(a.source, DiskSource::File("/a.img".into()));
    assert_eq!(a.format, DiskFormat::Raw);
    assert!(!a.direct() && !a.read_only);
    assert_eq!(b.path(), "/dev/sdb");
    assert!(b.direct() && b.read_only);
    assert_eq!(b.queues, Some(16));
    assert_eq!(b.discard, Some(DiskDiscard::Unmap));
    assert_eq!(b.serial.as_deref(), Some("S-1"));
    assert_eq!(c.format, DiskFormat::Qcow2);
    assert_eq!(c.io, Some(DiskIo::Threads));
    assert!(!c.direct());

    let disk = |inner: &str| format!("<disk type='file'>{inner}</disk>");
    let src = "<source file='/a.img'/>";
    let tgt = "<target dev='vda'/>";
    let bad = |xml: String, want: &str| refuse_with(&with_devices(&xml), want);
    bad(
        disk(&format!("<driver name='xen'/>{src}{tgt}")),
        "driver name 'xen'",
    );
    bad(
        disk(&format!("<driver cache='unsafe'/>{src}{tgt}")),
        "cache 'unsafe' is not supported",
    );
    bad(
        disk(&format!("<driver cache='fast'/>{src}{tgt}")),
        "invalid cache 'fast'",
    );
    bad(
        disk(&format!("<driver io='async'/>{src}{tgt}")),
        "invalid io 'async'",
    );
    bad(
        disk(&format!("<driver queues='17'/>{src}{tgt}")),
        "queues 17 is out of range",
    );
    bad(
        disk(&format!("<driver error_policy='stop'/>{src}{tgt}")),
        "(error_policy)",
    );
    bad(
        disk(&format!("<source file='/a,b.img'/>{tgt}")),
        "containing ','",
    );
    bad(
        disk(&format!("<source dev='/dev/sdb'/>{tgt}")),
        "<source> needs the attribute 'file'",
    );
    bad(
        disk(&format!(
            "<source file='/a.img' startupPolicy='optional'/>{tgt}"
        )),
        "(startupPolicy)",
    );
    bad(
        disk(&format!("{src}<target dev='vda' bus='scsi'/>")),
        "disk bus 'scsi'",
    );
    bad(
        disk(&format!("{src}<target dev='vda' removable='on'/>")),
        "(removable)",
    );
    bad(disk(src), "<disk> needs a <target>");
    bad(
        disk(&format!("{src}{tgt}<serial>a b</serial>")),
        "' ' is not allowed in a disk serial",
    );
    bad(disk(&format!("{src}{tgt}<readonly x='1'/>")), "(x)");
    bad(disk(&format!("{src}{tgt}<boot order='1'/>")), "(boot)");
    bad(
        disk(&format!("{src}{tgt}<backingStore/>")),
        "(backingStore)",
    );
    bad(
        format!("<disk type='file' device='lun'>{src}{tgt}</disk>"),
        "disk device 'lun'",
    );
    bad(
        format!("<disk type='file' snapshot='no'>{src}{tgt}</disk>"),
        "(snapshot)",
    );
}

#[test]
fn interfaces_get_generated_macs_that_do_not_collide() {
    let d = parse(&with_devices(
        "<interface type='ethernet'/>\
         <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/>\
         <target dev='vnet7'/><model type='virtio'/><driver queues='2'/></interface>\
         <interface type='ethernet'/>",
    ));
    let [a, b, c] = d.devices.interfaces.as_slice() else {
        panic!("three NICs");
    };
    assert_eq!(a.kind, InterfaceKind::Ethernet);
    // The counter's first MAC is taken by the second NIC.
    assert_eq!(a.mac.to_string(), "52:54:00:00:00:02");
    assert_eq!(b.mac.to_string(), "52:54:00:00:00:01");
    assert_eq!(c.mac.to_string(), "52:54:00:00:00:03");
    assert_eq!(
        b.kind,
        InterfaceKind::Bridge {
            bridge: "br0".into()
        }
    );
    assert_eq!(b.target.as_deref(), Some("vnet7"));
    assert_eq!(b.queues, Some(2));

    // Random MACs carry the KVM prefix.
    let d = Domain::from_xml(&with_devices("<interface type='ethernet'/>")).expect("accepted");
    assert_eq!(d.devices.interfaces[0].mac.0[..3], MacAddr::KVM_PREFIX);

    // A generator that keeps colliding gives up with an error, not a loop.
    struct Stuck;
    impl IdGenerator for Stuck {
        fn uuid(&mut self) -> Uuid {
            Uuid::from_u128(1)
        }
        fn mac(&mut self) -> MacAddr {
            MacAddr([0x52, 0x54, 0, 0, 0, 1])
        }
    }
    let e = Domain::from_xml_with(
        &with_devices("<interface type='ethernet'><mac address='52:54:00:00:00:01'/></interface><interface type='ethernet'/>"),
        &mut Stuck,
    )
    .expect_err("no free MAC");
    assert!(e.message.contains("could not generate"), "{e}");

    let bad = |xml: &str, want: &str| refuse_with(&with_devices(xml), want);
    bad("<interface/>", "<interface> needs the attribute 'type'");
    bad(
        "<interface type='ethernet'><source bridge='br0'/></interface>",
        "(source)",
    );
    bad(
        "<interface type='bridge'><source bridge='br/0'/></interface>",
        "'/' is not allowed in an interface name",
    );
    bad(
        "<interface type='bridge'><source bridge='br0' network='x'/></interface>",
        "(network)",
    );
    bad(
        "<interface type='ethernet'><target dev='a-name-too-long-for-linux'/></interface>",
        "1 to 15 bytes",
    );
    bad(
        "<interface type='ethernet'><target dev='t0' managed='no'/></interface>",
        "(managed)",
    );
    bad(
        "<interface type='ethernet'><mac address='00:00:00:00:00:00'/></interface>",
        "all-zero",
    );
    bad(
        "<interface type='ethernet'><model type='virtio-transitional'/></interface>",
        "NIC model 'virtio-transitional'",
    );
    bad(
        "<interface type='ethernet'><driver queues='32'/></interface>",
        "queues 32 is out of range",
    );
    bad(
        "<interface type='ethernet'><mtu size='9000'/></interface>",
        "(mtu)",
    );
    bad("<interface type='direct'/>", "interface type 'direct'");
}

#[test]
fn serial_ports_and_consoles_share_one_sink() {
    // A serial port implies a console on it.
    let d = parse(&with_devices("<serial type='pty'/>"));
    assert_eq!(
        d.devices.serial,
        Some(Serial {
            source: CharSource::Pty
        })
    );
    assert_eq!(
        d.devices.consoles,
        vec![Console {
            target: ConsoleTarget::Serial,
            source: CharSource::Pty
        }]
    );
    assert_eq!(d.console_device(), ConsoleTarget::Serial);
    assert_eq!(d.console_sink(), Some(&CharSource::Pty));
    // A console on the serial port implies the port.
    let d = parse(&with_devices(
        "<console type='unix'><source mode='bind' path='/run/c.sock'/></console>",
    ));
    let unix = CharSource::Unix {
        path: "/run/c.sock".into(),
    };
    assert_eq!(
        d.devices.serial,
        Some(Serial {
            source: unix.clone()
        })
    );
    // A virtio console alone: no COM1 element, the console takes input.
    let d = parse(&with_devices(
        "<console type='null'><target type='virtio'/></console>",
    ));
    assert_eq!(d.devices.serial, None);
    assert_eq!(d.console_device(), ConsoleTarget::Virtio);
    assert_eq!(d.console_sink(), Some(&CharSource::Null));
    // Both, in any order: the serial console comes first.
    let d = parse(&with_devices(
        "<console type='pty'><target type='virtio' port='0'/></console><serial type='pty'/>",
    ));
    assert_eq!(d.devices.consoles[0].target, ConsoleTarget::Serial);
    assert_eq!(d.devices.consoles[1].target, ConsoleTarget::Virtio);
    assert_eq!(d.console_device(), ConsoleTarget::Virtio);
    let d = parse(&with_devices(
        "<serial type='file'><source path='/l' append='off'/></serial>",
    ));
    assert_eq!(
        d.devices.serial,
        Some(Serial {
            source: CharSource::File {
                path: "/l".into(),
                append: Some(false)
            }
        })
    );

    let bad = |xml: &str, want: &str| refuse_with(&with_devices(xml), want);
    bad("<serial/>", "<serial> needs the attribute 'type'");
    bad(
        "<serial type='pty'><source path='/dev/pts/3'/></serial>",
        "(source)",
    );
    bad("<serial type='file'/>", "<serial> needs a <source>");
    bad(
        "<serial type='file'><source path='rel.log'/></serial>",
        "must be absolute",
    );
    bad(
        "<serial type='unix'><source path='/s'/></serial>",
        "write mode='bind'",
    );
    bad(
        "<serial type='pty'><target type='usb-serial'/></serial>",
        "serial target type 'usb-serial'",
    );
    bad(
        "<serial type='pty'><target><model name='16550a'/></target></serial>",
        "serial model '16550a'",
    );
    bad(
        "<serial type='pty'><log file='/var/log/x'/></serial>",
        "(log)",
    );
    bad(
        "<console type='pty'/><console type='pty'/>",
        "a second console with target type='serial'",
    );
    bad(
        "<console type='pty'><target type='virtio'/></console><console type='null'/>",
        "differs from the serial port's",
    );
    bad(
        "<console type='pty'><target type='sclp'/></console>",
        "type 'sclp' is not supported",
    );
    bad(
        "<console type='pty'><target type='virtio' port='1'/></console>",
        "port 0",
    );
}

#[test]
fn rng() {
    let d = parse(&with_devices(
        "<rng model='virtio'><backend model='random'>/dev/random</backend></rng>",
    ));
    assert_eq!(
        d.devices.rng,
        Some(Rng {
            backend: RngBackend::Random("/dev/random".into())
        })
    );
    let d = parse(&with_devices(
        "<rng model='virtio'><backend model='random'/></rng>",
    ));
    assert_eq!(
        d.devices.rng,
        Some(Rng {
            backend: RngBackend::Random("/dev/urandom".into())
        })
    );
    let bad = |xml: &str, want: &str| refuse_with(&with_devices(xml), want);
    bad("<rng model='virtio'/>", "<rng> needs a <backend>");
    bad(
        "<rng model='virtio-non-transitional'><backend model='builtin'/></rng>",
        "rng model",
    );
    bad(
        "<rng model='virtio'><backend model='random'>/dev/hwrng</backend></rng>",
        "/dev/urandom or /dev/random",
    );
    bad(
        "<rng model='virtio'><backend model='builtin'>/dev/urandom</backend></rng>",
        "unexpected text",
    );
}

#[test]
fn harmless_elements_are_kept_verbatim() {
    let d = parse(&with_devices(
        "<controller type='scsi' index='0' model='virtio-scsi'><driver queues='4'/></controller>\
         <input type='keyboard' bus='ps2'/><input type='mouse'/><memballoon model='none'/>",
    ));
    assert_eq!(d.devices.controllers.len(), 1);
    assert_eq!(
        d.devices.controllers[0].to_xml(),
        "<controller type='scsi' index='0' model='virtio-scsi'>\n  <driver queues='4'/>\n</controller>\n"
    );
    assert_eq!(d.devices.inputs.len(), 2);
    assert_eq!(d.devices.inputs[1].to_xml(), "<input type='mouse'/>\n");
    assert!(d.devices.memballoon.is_some());

    let bad = |xml: &str, want: &str| refuse_with(&with_devices(xml), want);
    bad(
        "<controller index='0'/>",
        "<controller> needs the attribute 'type'",
    );
    bad("<controller type='xenbus'/>", "controller type 'xenbus'");
    bad(
        "<controller type='pci'><q:x xmlns:q='urn:q'/></controller>",
        "namespaces belong in <metadata>",
    );
    bad(
        "<input type='keyboard' bus='virtio'/>",
        "input bus 'virtio'",
    );
    bad(
        "<input type='mouse' bus='ps2'><address type='isa'/></input>",
        "(address)",
    );
    bad("<input type='mouse' model='x'/>", "(model)");
    bad(
        "<memballoon model='none' autodeflate='on'/>",
        "(autodeflate)",
    );
    bad(
        "<memballoon model='none'/><memballoon model='none'/>",
        "duplicate element <memballoon>",
    );
}

#[test]
fn emulator_is_kept() {
    let d = parse(&with_devices("<emulator>/usr/bin/vireo-vmm</emulator>"));
    assert_eq!(d.devices.emulator.as_deref(), Some("/usr/bin/vireo-vmm"));
    refuse_with(
        &with_devices("<emulator>qemu</emulator>"),
        "must be absolute",
    );
}

/// Every combination of a set of choices per element is accepted, writes
/// the same XML twice and reads back to the same domain.
#[test]
fn combinations_round_trip() {
    let memories = [
        "<memory>65536</memory>",
        "<memory unit='GiB'>1</memory><currentMemory unit='MiB'>1024</currentMemory>",
    ];
    let heads = ["", "<uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid><title>t</title>", "<description>d &lt;\r\n</description><metadata><a:b xmlns:a='urn:a'>x<a:c/>y</a:b></metadata>"];
    let cpus = [
        "<vcpu>2</vcpu>",
        "<vcpu>4</vcpu><cpu mode='host-model' check='full'><topology sockets='2' cores='1' threads='2'/></cpu>",
        "<vcpu>2</vcpu><cpu mode='custom' match='minimum'><model fallback='allow'>x86-64-v2</model></cpu>",
    ];
    let oses = [
        "<os><type>hvm</type></os>",
        "<os><type machine='q35'>hvm</type><kernel>/k</kernel><cmdline></cmdline><boot dev='cdrom'/></os>",
    ];
    let tails = [
        "",
        "<features><pae/></features><clock offset='localtime'><timer name='rtc' track='wall'/></clock><pm/>",
        "<on_poweroff>restart</on_poweroff><on_crash>preserve</on_crash>",
    ];
    let devices = [
        "",
        "<devices/>",
        "<devices><disk type='block'><source dev='/dev/x'/><target dev='vdz'/></disk><serial type='null'/></devices>",
        "<devices><interface type='ethernet'/><console type='pty'><target type='virtio'/></console><rng model='virtio'><backend model='builtin'/></rng></devices>",
        "<devices><controller type='usb' model='none'/><input type='keyboard'/><memballoon model='none'/></devices>",
    ];
    let mut count = 0;
    for m in memories {
        for h in heads {
            for c in cpus {
                for o in oses {
                    for t in tails {
                        for d in devices {
                            let xml = format!(
                                "<domain type='kvm'><name>c</name>{h}{m}{c}{o}{t}{d}</domain>"
                            );
                            parse(&xml);
                            count += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(count, 2 * 3 * 3 * 2 * 3 * 5);
}

#[test]
fn the_model_serialises_with_serde() {
    fn assert_serde<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    assert_serde::<Domain>();
}
