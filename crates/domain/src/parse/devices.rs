//! `<devices>`.

use super::{
    enum_attr, list, number_attr, opt_enum, path_attr, required, required_child, switch,
    trimmed_text,
};
use crate::error::{Loc, Result};
use crate::model::{
    CharSource, Console, ConsoleTarget, Devices, Disk, DiskCache, DiskDiscard, DiskFormat, DiskIo,
    DiskSource, Interface, InterfaceKind, Rng, RngBackend, Serial,
};
use crate::values::{check_disk_serial, check_disk_target, check_ifname, check_path, MacAddr};
use crate::xml::raw::{self, RawElement};
use crate::xml::tree::{quote, unsupported, Attr, Element, Node};
use crate::{IdGenerator, MAX_PCI_DEVICES};

/// Most request queues of a disk and queue pairs of a NIC (the monitor's limit).
const MAX_QUEUES: u64 = 16;

const DEVICES: &[&str] = &[
    "emulator",
    "disk",
    "controller",
    "interface",
    "serial",
    "console",
    "input",
    "memballoon",
    "rng",
];

/// Controller types kept (each does nothing in Vireo; see [`Devices::controllers`]).
const CONTROLLER_TYPES: &[&str] = &[
    "pci",
    "usb",
    "virtio-serial",
    "sata",
    "ide",
    "scsi",
    "fdc",
    "ccid",
    "isa",
];

pub(super) fn devices(mut el: Element, ids: &mut dyn IdGenerator) -> Result<Devices> {
    el.reject_unknown_children(DEVICES, "element")?;
    // Refuse a flood of devices before looking at each (the complete count,
    // with the rng and the virtio console, is checked by the caller).
    let pci = el
        .children
        .iter()
        .filter(|n| matches!(n, Node::Element(e) if e.name == "disk" || e.name == "interface"))
        .count();
    if pci > MAX_PCI_DEVICES {
        return Err(el.loc.error(super::too_many_pci(pci)));
    }
    let emulator = match el.take_child("emulator")? {
        Some(e) => {
            let loc = e.loc.clone();
            let p = trimmed_text(e)?;
            check_path(&p).map_err(|m| loc.error(format!("{}: {m}", quote(&p))))?;
            Some(p)
        }
        None => None,
    };

    let mut disks: Vec<Disk> = Vec::new();
    for d in el.take_children("disk") {
        let (disk, target_loc) = disk(d)?;
        if disks.iter().any(|x| x.target == disk.target) {
            return Err(target_loc.error(format!(
                "a second disk with target dev='{}': each disk needs its own",
                disk.target
            )));
        }
        disks.push(disk);
    }

    let mut controllers = Vec::new();
    for mut c in el.take_children("controller") {
        let ty = required(&mut c, "type")?;
        if !CONTROLLER_TYPES.contains(&ty.value.as_str()) {
            return Err(ty.loc.error(format!(
                "controller type {} is not supported by Vireo: use {}",
                quote(&ty.value),
                list(CONTROLLER_TYPES)
            )));
        }
        c.attrs.insert(0, ty);
        controllers.push(raw::from_tree(c, &[], false)?);
    }

    let interfaces = interfaces(el.take_children("interface"), ids)?;
    let (serial, consoles) =
        serial_and_consoles(el.take_children("serial"), el.take_children("console"))?;

    let mut inputs = Vec::new();
    for i in el.take_children("input") {
        inputs.push(input(i)?);
    }
    let memballoon = el.take_child("memballoon")?.map(memballoon).transpose()?;

    let rngs = el.take_children("rng");
    if let Some(second) = rngs.get(1) {
        return Err(second
            .loc
            .error("a second <rng>: Vireo has one virtio-rng device"));
    }
    let rng = rngs.into_iter().next().map(rng).transpose()?;
    el.finish()?;
    Ok(Devices {
        emulator,
        disks,
        controllers,
        interfaces,
        serial,
        consoles,
        inputs,
        memballoon,
        rng,
    })
}

/// A disk and where its target was (for the duplicate check).
fn disk(mut el: Element) -> Result<(Disk, Loc)> {
    el.reject_unknown_children(
        &["driver", "source", "target", "readonly", "serial"],
        "element",
    )?;
    let block = match el.take_attr("type") {
        None => false,
        Some(a) => match a.value.as_str() {
            "file" => false,
            "block" => true,
            v => {
                return Err(a.loc.error(format!(
                    "disk type {} is not supported by Vireo: use file or block",
                    quote(v)
                )))
            }
        },
    };
    if let Some(a) = el.take_attr("device") {
        if a.value != "disk" {
            return Err(a.loc.error(format!(
                "disk device {} is not supported by Vireo: only device='disk' (virtio-blk)",
                quote(&a.value)
            )));
        }
    }

    let mut format = DiskFormat::Raw;
    let mut cache = None;
    let mut cache_loc = None;
    let mut io = None;
    let mut discard = None;
    let mut queues = None;
    if let Some(mut d) = el.take_child("driver")? {
        if let Some(name) = d.take_attr("name") {
            if name.value != "qemu" {
                return Err(name.loc.error(format!(
                    "driver name {} is not supported: use qemu (libvirt's name for the KVM driver)",
                    quote(&name.value)
                )));
            }
        }
        if let Some(t) = d.take_attr("type") {
            format = super::enum_value(
                &t.loc,
                "image format",
                &t.value,
                &[
                    "vmdk", "vdi", "vpc", "vhdx", "qed", "bochs", "cloop", "dmg", "iso", "luks",
                    "fat",
                ],
            )?;
        }
        if let Some(c) = d.take_attr("cache") {
            cache = Some(enum_attr::<DiskCache>(
                &c,
                &["writethrough", "directsync", "unsafe"],
            )?);
            cache_loc = Some(c.loc);
        }
        io = opt_enum::<DiskIo>(&mut d, "io", &[])?;
        discard = opt_enum::<DiskDiscard>(&mut d, "discard", &["ignore"])?;
        queues = d
            .take_attr("queues")
            .map(|a| number_attr(&a, 1..=MAX_QUEUES).map(|n| n as u16))
            .transpose()?;
        d.finish()?;
    }
    if let (Some(DiskCache::None), DiskFormat::Qcow2, Some(loc)) = (cache, format, &cache_loc) {
        return Err(loc.error(
            "cache='none' (O_DIRECT) is for raw images only in Vireo: use cache='writeback' for qcow2",
        ));
    }

    let mut s = required_child(&mut el, "source")?;
    let key = if block { "dev" } else { "file" };
    let path_a = required(&mut s, key)?;
    let path = path_attr(&path_a)?;
    if path.contains(',') {
        return Err(path_a.loc.error(format!(
            "{key} {}: Vireo cannot pass a disk path containing ',' to its monitor yet",
            quote(&path)
        )));
    }
    s.finish()?;
    let source = if block {
        DiskSource::Block(path)
    } else {
        DiskSource::File(path)
    };

    let mut t = required_child(&mut el, "target")?;
    let target_loc = t.loc.clone();
    let dev = required(&mut t, "dev")?;
    check_disk_target(&dev.value)
        .map_err(|m| dev.loc.error(format!("dev {}: {m}", quote(&dev.value))))?;
    if let Some(bus) = t.take_attr("bus") {
        if bus.value != "virtio" {
            return Err(bus.loc.error(format!(
                "disk bus {} is not supported by Vireo: use virtio",
                quote(&bus.value)
            )));
        }
    }
    t.finish()?;

    let read_only = match el.take_child("readonly")? {
        Some(r) => {
            r.finish()?;
            true
        }
        None => false,
    };
    let serial = match el.take_child("serial")? {
        Some(s) => {
            let loc = s.loc.clone();
            let text = trimmed_text(s)?;
            check_disk_serial(&text)
                .map_err(|m| loc.error(format!("serial {}: {m}", quote(&text))))?;
            Some(text)
        }
        None => None,
    };
    el.finish()?;
    Ok((
        Disk {
            source,
            format,
            cache,
            io,
            discard,
            queues,
            target: dev.value,
            read_only,
            serial,
        },
        target_loc,
    ))
}

fn interfaces(elements: Vec<Element>, ids: &mut dyn IdGenerator) -> Result<Vec<Interface>> {
    let mut out: Vec<Interface> = Vec::new();
    let mut missing: Vec<(usize, Loc)> = Vec::new();
    for el in elements {
        let loc = el.loc.clone();
        let (iface, mac_attr, target_attr) = interface(el)?;
        // MACs not written yet are zero, which no written MAC can be.
        match &mac_attr {
            Some(a) if out.iter().any(|o| o.mac == iface.mac) => {
                return Err(a.loc.error(format!(
                    "a second NIC with MAC address {}: each NIC needs its own",
                    iface.mac
                )))
            }
            Some(_) => {}
            None => missing.push((out.len(), loc)),
        }
        if let (Some(t), Some(a)) = (&iface.target, &target_attr) {
            if out.iter().any(|o| o.target.as_ref() == Some(t)) {
                return Err(a.loc.error(format!(
                    "a second NIC with target dev='{t}': each NIC needs its own TAP"
                )));
            }
        }
        out.push(iface);
    }
    // Generated addresses avoid those written and each other.
    for (index, loc) in missing {
        let mut tries = 0;
        let mac = loop {
            let m = ids.mac();
            if !m.is_multicast() && m.0 != [0; 6] && !out.iter().any(|o| o.mac == m) {
                break m;
            }
            tries += 1;
            if tries == 64 {
                return Err(loc.error("could not generate a MAC address no other NIC uses"));
            }
        };
        if let Some(iface) = out.get_mut(index) {
            iface.mac = mac;
        }
    }
    Ok(out)
}

/// One `<interface>`, with its `mac address` and `target dev` attributes
/// (for messages); a missing MAC is left zero for the caller to generate.
fn interface(mut el: Element) -> Result<(Interface, Option<Attr>, Option<Attr>)> {
    el.reject_unknown_children(&["mac", "source", "target", "model", "driver"], "element")?;
    let ty = required(&mut el, "type")?;
    let bridge = match ty.value.as_str() {
        "ethernet" => false,
        "bridge" => true,
        v => {
            return Err(ty.loc.error(format!(
                "interface type {} is not supported by Vireo: use ethernet or bridge",
                quote(v)
            )))
        }
    };
    let mut mac = MacAddr([0; 6]);
    let mut mac_attr = None;
    if let Some(mut m) = el.take_child("mac")? {
        let a = required(&mut m, "address")?;
        mac = a
            .value
            .parse()
            .map_err(|e| a.loc.error(format!("MAC address {}: {e}", quote(&a.value))))?;
        m.finish()?;
        mac_attr = Some(a);
    }
    let kind = if bridge {
        let mut s = required_child(&mut el, "source")?;
        let b = required(&mut s, "bridge")?;
        check_ifname(&b.value)
            .map_err(|m| b.loc.error(format!("bridge {}: {m}", quote(&b.value))))?;
        s.finish()?;
        InterfaceKind::Bridge { bridge: b.value }
    } else {
        InterfaceKind::Ethernet
    };
    let mut target_attr = None;
    if let Some(mut t) = el.take_child("target")? {
        let dev = required(&mut t, "dev")?;
        check_ifname(&dev.value)
            .map_err(|m| dev.loc.error(format!("dev {}: {m}", quote(&dev.value))))?;
        t.finish()?;
        target_attr = Some(dev);
    }
    if let Some(mut m) = el.take_child("model")? {
        let t = required(&mut m, "type")?;
        if t.value != "virtio" {
            return Err(t.loc.error(format!(
                "NIC model {} is not supported by Vireo: use virtio",
                quote(&t.value)
            )));
        }
        m.finish()?;
    }
    let mut queues = None;
    if let Some(mut d) = el.take_child("driver")? {
        queues = d
            .take_attr("queues")
            .map(|a| number_attr(&a, 1..=MAX_QUEUES).map(|n| n as u16))
            .transpose()?;
        d.finish()?;
    }
    el.finish()?;
    Ok((
        Interface {
            kind,
            mac,
            target: target_attr.as_ref().map(|a| a.value.clone()),
            queues,
        },
        mac_attr,
        target_attr,
    ))
}

/// `type` and `<source>` of a serial port or console.
fn char_source(el: &mut Element) -> Result<CharSource> {
    let ty = required(el, "type")?;
    let source = match ty.value.as_str() {
        "pty" => CharSource::Pty,
        "null" => CharSource::Null,
        "file" => {
            let mut s = required_child(el, "source")?;
            let path = path_attr(&required(&mut s, "path")?)?;
            let append = s
                .take_attr("append")
                .map(|a| switch(&a, false))
                .transpose()?;
            s.finish()?;
            CharSource::File { path, append }
        }
        "unix" => {
            let mut s = required_child(el, "source")?;
            match s.take_attr("mode") {
                Some(m) if m.value == "bind" => {}
                Some(m) => {
                    return Err(m.loc.error(format!(
                        "mode {} is not supported: Vireo's monitor listens on the socket; use mode='bind'",
                        quote(&m.value)
                    )))
                }
                None => {
                    return Err(s.loc.error(
                        "Vireo's monitor listens on the socket: write mode='bind'",
                    ))
                }
            }
            let path = path_attr(&required(&mut s, "path")?)?;
            s.finish()?;
            CharSource::Unix { path }
        }
        v => {
            return Err(ty.loc.error(format!(
                "character device type {} is not supported by Vireo: use pty, file, unix or null",
                quote(v)
            )))
        }
    };
    Ok(source)
}

/// Port 0 only.
fn port_zero(t: &mut Element, what: &str) -> Result<()> {
    if let Some(p) = t.take_attr("port") {
        if super::number(&p.loc, "port", &p.value)? != 0 {
            return Err(p
                .loc
                .error(format!("port='{}': Vireo has one {what}, port 0", p.value)));
        }
    }
    Ok(())
}

fn serial(mut el: Element) -> Result<Serial> {
    el.reject_unknown_children(&["source", "target"], "element")?;
    let source = char_source(&mut el)?;
    if let Some(mut t) = el.take_child("target")? {
        t.reject_unknown_children(&["model"], "element")?;
        if let Some(ty) = t.take_attr("type") {
            if ty.value != "isa-serial" {
                return Err(ty.loc.error(format!(
                    "serial target type {} is not supported by Vireo: use isa-serial (COM1)",
                    quote(&ty.value)
                )));
            }
        }
        port_zero(&mut t, "serial port (COM1)")?;
        if let Some(mut m) = t.take_child("model")? {
            let name = required(&mut m, "name")?;
            if name.value != "isa-serial" {
                return Err(name.loc.error(format!(
                    "serial model {} is not supported by Vireo: use isa-serial (a 16550A UART)",
                    quote(&name.value)
                )));
            }
            m.finish()?;
        }
        t.finish()?;
    }
    el.finish()?;
    Ok(Serial { source })
}

fn console(mut el: Element) -> Result<Console> {
    el.reject_unknown_children(&["source", "target"], "element")?;
    let source = char_source(&mut el)?;
    let mut target = ConsoleTarget::Serial;
    if let Some(mut t) = el.take_child("target")? {
        if let Some(ty) = t.take_attr("type") {
            target = enum_attr(&ty, &["xen", "uml", "openvz", "lxc", "sclp", "sclplm"])?;
        }
        port_zero(&mut t, "console of each kind")?;
        t.finish()?;
    }
    el.finish()?;
    Ok(Console { target, source })
}

/// COM1 and the consoles: Vireo has one console sink that COM1 and a virtio
/// console share, so every console must name the same sink as `<serial>`.
/// Like libvirt, a serial port implies a console on it, and a console on
/// the serial port implies the port.
fn serial_and_consoles(
    serials: Vec<Element>,
    consoles: Vec<Element>,
) -> Result<(Option<Serial>, Vec<Console>)> {
    if let Some(second) = serials.get(1) {
        return Err(second
            .loc
            .error("a second <serial>: Vireo has one serial port (COM1)"));
    }
    let mut serial = serials.into_iter().next().map(serial).transpose()?;
    let mut on_serial: Option<Console> = None;
    let mut on_virtio: Option<Console> = None;
    let mut sink: Option<CharSource> = serial.as_ref().map(|s| s.source.clone());
    for el in consoles {
        let loc = el.loc.clone();
        let c = console(el)?;
        let slot = match c.target {
            ConsoleTarget::Serial => &mut on_serial,
            ConsoleTarget::Virtio => &mut on_virtio,
        };
        if slot.is_some() {
            return Err(loc.error(format!(
                "a second console with target type='{}': Vireo has one",
                c.target
            )));
        }
        match &sink {
            Some(s) if *s != c.source => {
                return Err(loc.error(
                    "this console's type or source differs from the serial port's: Vireo's \
                     consoles share one sink with COM1, so give them the same",
                ))
            }
            Some(_) => {}
            None => sink = Some(c.source.clone()),
        }
        *slot = Some(c);
    }
    if let (Some(s), None) = (&serial, &on_serial) {
        on_serial = Some(Console {
            target: ConsoleTarget::Serial,
            source: s.source.clone(),
        });
    }
    if let (None, Some(c)) = (&serial, &on_serial) {
        serial = Some(Serial {
            source: c.source.clone(),
        });
    }
    Ok((serial, on_serial.into_iter().chain(on_virtio).collect()))
}

/// `<input>`: PS/2 mouse and keyboard only (the i8042 is part of the machine).
fn input(el: Element) -> Result<RawElement> {
    let ty = el
        .attr("type")
        .ok_or_else(|| el.loc.error("<input> needs the attribute 'type'"))?;
    if ty.value != "mouse" && ty.value != "keyboard" {
        return Err(ty.loc.error(format!(
            "input type {} is not supported by Vireo: only the PS/2 mouse and keyboard of the PC machine",
            quote(&ty.value)
        )));
    }
    if let Some(bus) = el.attr("bus") {
        if bus.value != "ps2" {
            return Err(bus.loc.error(format!(
                "input bus {} is not supported by Vireo: use ps2",
                quote(&bus.value)
            )));
        }
    }
    only_attrs(&el, &["type", "bus"])?;
    raw::from_tree(el, &[], false)
}

/// `<memballoon model='none'/>`.
fn memballoon(el: Element) -> Result<RawElement> {
    let model = el
        .attr("model")
        .ok_or_else(|| el.loc.error("<memballoon> needs the attribute 'model'"))?;
    if model.value != "none" {
        return Err(model.loc.error(format!(
            "memballoon model {} is not supported: Vireo has no memory balloon; use model='none'",
            quote(&model.value)
        )));
    }
    only_attrs(&el, &["model"])?;
    raw::from_tree(el, &[], false)
}

/// Refuses attributes other than `allowed` and any child element.
fn only_attrs(el: &Element, allowed: &[&str]) -> Result<()> {
    if let Some(a) = el
        .attrs
        .iter()
        .find(|a| !allowed.contains(&a.name.as_str()))
    {
        return Err(a
            .loc
            .error(format!("attribute not supported by Vireo ({})", a.name)));
    }
    if let Some(Node::Element(c)) = el.children.iter().find(|n| matches!(n, Node::Element(_))) {
        return Err(unsupported(c, "element"));
    }
    Ok(())
}

fn rng(mut el: Element) -> Result<Rng> {
    el.reject_unknown_children(&["backend"], "element")?;
    let model = required(&mut el, "model")?;
    if model.value != "virtio" {
        return Err(model.loc.error(format!(
            "rng model {} is not supported by Vireo: use virtio",
            quote(&model.value)
        )));
    }
    let mut b = required_child(&mut el, "backend")?;
    let bm = required(&mut b, "model")?;
    let backend = match bm.value.as_str() {
        "random" => {
            let loc = b.loc.clone();
            let path = trimmed_text(b)?;
            match path.as_str() {
                "" => RngBackend::Random("/dev/urandom".into()),
                "/dev/urandom" | "/dev/random" => RngBackend::Random(path),
                _ => {
                    return Err(loc.error(format!(
                        "rng source {}: Vireo's virtio-rng draws from the host's getrandom; use \
                         /dev/urandom or /dev/random",
                        quote(&path)
                    )))
                }
            }
        }
        "builtin" => {
            b.finish()?;
            RngBackend::Builtin
        }
        v => {
            return Err(bm.loc.error(format!(
                "rng backend {} is not supported by Vireo: use random or builtin",
                quote(v)
            )))
        }
    };
    el.finish()?;
    Ok(Rng { backend })
}
