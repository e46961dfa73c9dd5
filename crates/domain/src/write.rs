//! From the model to normalised XML, in libvirt's element order.

use crate::model::{
    Boot, CharSource, Console, Cpu, CpuMode, Devices, Disk, DiskSource, Domain, Interface,
    InterfaceKind, Rng, RngBackend, Serial,
};
use crate::xml::raw;
use crate::xml::writer::XmlWriter;

type Attrs<'a> = Vec<(&'a str, String)>;

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

pub(crate) fn domain(d: &Domain) -> String {
    let mut w = XmlWriter::new();
    w.open("domain", &[("type", "kvm")]);
    w.plain("name", &d.name);
    w.plain("uuid", &d.uuid.hyphenated().to_string());
    if let Some(t) = &d.title {
        w.plain("title", t);
    }
    if let Some(t) = &d.description {
        w.plain("description", t);
    }
    if !d.metadata.is_empty() {
        w.open::<&str>("metadata", &[]);
        for m in &d.metadata {
            raw::write(&mut w, m);
        }
        w.close("metadata");
    }
    w.text("memory", &[("unit", "KiB")], &d.memory.kib.to_string());
    w.text(
        "currentMemory",
        &[("unit", "KiB")],
        &d.memory.current_kib.to_string(),
    );
    w.text("vcpu", &[("placement", "static")], &d.vcpus.to_string());

    w.open::<&str>("os", &[]);
    w.text(
        "type",
        &[("arch", "x86_64"), ("machine", d.os.machine.as_str())],
        "hvm",
    );
    if let Boot::Kernel { kernel, initrd } = &d.os.boot {
        w.plain("kernel", kernel);
        if let Some(i) = initrd {
            w.plain("initrd", i);
        }
    }
    if let Some(c) = &d.os.cmdline {
        w.plain("cmdline", c);
    }
    for b in &d.os.boot_devices {
        w.empty("boot", &[("dev", b.as_str())]);
    }
    w.close("os");

    let f = &d.features;
    if f.acpi || f.apic || f.pae || f.vmport_off {
        w.open::<&str>("features", &[]);
        for (on, name) in [(f.acpi, "acpi"), (f.apic, "apic"), (f.pae, "pae")] {
            if on {
                w.empty::<&str>(name, &[]);
            }
        }
        if f.vmport_off {
            w.empty("vmport", &[("state", "off")]);
        }
        w.close("features");
    }

    if let Some(cpu) = &d.cpu {
        write_cpu(&mut w, cpu);
    }

    let clock = [("offset", d.clock.offset.as_str())];
    if d.clock.timers.is_empty() {
        w.empty("clock", &clock);
    } else {
        w.open("clock", &clock);
        for t in &d.clock.timers {
            let mut a: Attrs<'_> = vec![("name", t.name.as_str().to_string())];
            if let Some(p) = t.tickpolicy {
                a.push(("tickpolicy", p.as_str().to_string()));
            }
            if let Some(tr) = t.track {
                a.push(("track", tr.as_str().to_string()));
            }
            if let Some(p) = t.present {
                a.push(("present", if p { "yes" } else { "no" }.to_string()));
            }
            w.empty("timer", &a);
        }
        w.close("clock");
    }

    w.plain("on_poweroff", d.lifecycle.on_poweroff.as_str());
    w.plain("on_reboot", d.lifecycle.on_reboot.as_str());
    w.plain("on_crash", d.lifecycle.on_crash.as_str());

    if let Some(pm) = &d.pm {
        if pm.suspend_to_mem_disabled || pm.suspend_to_disk_disabled {
            w.open::<&str>("pm", &[]);
            if pm.suspend_to_mem_disabled {
                w.empty("suspend-to-mem", &[("enabled", "no")]);
            }
            if pm.suspend_to_disk_disabled {
                w.empty("suspend-to-disk", &[("enabled", "no")]);
            }
            w.close("pm");
        } else {
            w.empty::<&str>("pm", &[]);
        }
    }

    write_devices(&mut w, &d.devices);
    w.close("domain");
    w.finish()
}

fn write_cpu(w: &mut XmlWriter, cpu: &Cpu) {
    let mut a: Attrs<'_> = Vec::new();
    match &cpu.mode {
        CpuMode::Default => {}
        CpuMode::HostPassthrough => a.push(("mode", "host-passthrough".into())),
        CpuMode::HostModel => a.push(("mode", "host-model".into())),
        CpuMode::Custom { match_, .. } => {
            a.push(("mode", "custom".into()));
            if let Some(m) = match_ {
                a.push(("match", m.as_str().into()));
            }
        }
    }
    if let Some(c) = cpu.check {
        a.push(("check", c.as_str().into()));
    }
    if let Some(m) = cpu.migratable {
        a.push(("migratable", on_off(m)));
    }
    let model = match &cpu.mode {
        CpuMode::Custom {
            model, fallback, ..
        } => Some((model, fallback)),
        _ => None,
    };
    if model.is_none() && cpu.topology.is_none() {
        w.empty("cpu", &a);
        return;
    }
    w.open("cpu", &a);
    if let Some((model, fallback)) = model {
        let fa: Attrs<'_> = fallback
            .iter()
            .map(|f| ("fallback", f.as_str().to_string()))
            .collect();
        w.text("model", &fa, model.as_str());
    }
    if let Some(t) = cpu.topology {
        w.empty(
            "topology",
            &[
                ("sockets", t.sockets.to_string()),
                ("dies", "1".to_string()),
                ("cores", t.cores.to_string()),
                ("threads", t.threads.to_string()),
            ],
        );
    }
    w.close("cpu");
}

fn write_devices(w: &mut XmlWriter, d: &Devices) {
    let empty = d.emulator.is_none()
        && d.disks.is_empty()
        && d.controllers.is_empty()
        && d.interfaces.is_empty()
        && d.serial.is_none()
        && d.consoles.is_empty()
        && d.inputs.is_empty()
        && d.memballoon.is_none()
        && d.rng.is_none();
    if empty {
        w.empty::<&str>("devices", &[]);
        return;
    }
    w.open::<&str>("devices", &[]);
    if let Some(e) = &d.emulator {
        w.plain("emulator", e);
    }
    for disk in &d.disks {
        write_disk(w, disk);
    }
    for c in &d.controllers {
        raw::write(w, c);
    }
    for i in &d.interfaces {
        write_interface(w, i);
    }
    if let Some(s) = &d.serial {
        write_serial(w, s);
    }
    for c in &d.consoles {
        write_console(w, c);
    }
    for i in &d.inputs {
        raw::write(w, i);
    }
    if let Some(m) = &d.memballoon {
        raw::write(w, m);
    }
    if let Some(r) = &d.rng {
        write_rng(w, r);
    }
    w.close("devices");
}

fn write_disk(w: &mut XmlWriter, d: &Disk) {
    let ty = match d.source {
        DiskSource::File(_) => "file",
        DiskSource::Block(_) => "block",
    };
    w.open("disk", &[("type", ty), ("device", "disk")]);
    let mut a: Attrs<'_> = vec![("name", "qemu".into()), ("type", d.format.as_str().into())];
    if let Some(c) = d.cache {
        a.push(("cache", c.as_str().into()));
    }
    if let Some(io) = d.io {
        a.push(("io", io.as_str().into()));
    }
    if let Some(x) = d.discard {
        a.push(("discard", x.as_str().into()));
    }
    if let Some(q) = d.queues {
        a.push(("queues", q.to_string()));
    }
    w.empty("driver", &a);
    match &d.source {
        DiskSource::File(p) => w.empty("source", &[("file", p.as_str())]),
        DiskSource::Block(p) => w.empty("source", &[("dev", p.as_str())]),
    }
    w.empty("target", &[("dev", d.target.as_str()), ("bus", "virtio")]);
    if d.read_only {
        w.empty::<&str>("readonly", &[]);
    }
    if let Some(s) = &d.serial {
        w.plain("serial", s);
    }
    w.close("disk");
}

fn write_interface(w: &mut XmlWriter, i: &Interface) {
    let ty = match i.kind {
        InterfaceKind::Ethernet => "ethernet",
        InterfaceKind::Bridge { .. } => "bridge",
    };
    w.open("interface", &[("type", ty)]);
    w.empty("mac", &[("address", i.mac.to_string())]);
    if let InterfaceKind::Bridge { bridge } = &i.kind {
        w.empty("source", &[("bridge", bridge.as_str())]);
    }
    if let Some(t) = &i.target {
        w.empty("target", &[("dev", t.as_str())]);
    }
    w.empty("model", &[("type", "virtio")]);
    if let Some(q) = i.queues {
        w.empty("driver", &[("queues", q.to_string())]);
    }
    w.close("interface");
}

fn write_source(w: &mut XmlWriter, s: &CharSource) {
    match s {
        CharSource::Pty | CharSource::Null => {}
        CharSource::File { path, append } => {
            let mut a: Attrs<'_> = vec![("path", path.clone())];
            if let Some(ap) = append {
                a.push(("append", on_off(*ap)));
            }
            w.empty("source", &a);
        }
        CharSource::Unix { path } => w.empty("source", &[("mode", "bind"), ("path", path)]),
    }
}

fn write_serial(w: &mut XmlWriter, s: &Serial) {
    w.open("serial", &[("type", s.source.type_str())]);
    write_source(w, &s.source);
    w.open("target", &[("type", "isa-serial"), ("port", "0")]);
    w.empty("model", &[("name", "isa-serial")]);
    w.close("target");
    w.close("serial");
}

fn write_console(w: &mut XmlWriter, c: &Console) {
    w.open("console", &[("type", c.source.type_str())]);
    write_source(w, &c.source);
    w.empty("target", &[("type", c.target.as_str()), ("port", "0")]);
    w.close("console");
}

fn write_rng(w: &mut XmlWriter, r: &Rng) {
    w.open("rng", &[("model", "virtio")]);
    match &r.backend {
        RngBackend::Random(p) => w.text("backend", &[("model", "random")], p),
        RngBackend::Builtin => w.empty("backend", &[("model", "builtin")]),
    }
    w.close("rng");
}
