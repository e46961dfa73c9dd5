//! From the element tree to the model: every element and attribute is either
//! understood, checked and taken, or refused by name and position.

mod devices;

use crate::error::{Loc, Result};
use crate::model::{
    BootDevice, Clock, ClockOffset, ConsoleTarget, Cpu, CpuCheck, CpuFallback, CpuMatch, CpuMode,
    CustomCpuModel, Domain, Features, Lifecycle, LifecycleAction, Memory, Os, Pm, RtcTrack,
    TickPolicy, Timer, TimerName, Topology, XmlEnum,
};
use crate::values::{check_path, parse_uuid, unit_scale, validate_name};
use crate::xml::raw;
use crate::xml::tree::{self, quote, trim_xml, Attr, Element, Node};
use crate::{Boot, IdGenerator, MAX_MEMORY_KIB, MAX_PCI_DEVICES, MAX_VCPUS, MIN_MEMORY_KIB};

/// The children of `<domain>` Vireo understands.
const DOMAIN_CHILDREN: &[&str] = &[
    "name",
    "uuid",
    "title",
    "description",
    "metadata",
    "memory",
    "currentMemory",
    "vcpu",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "pm",
    "devices",
];

/// "a, b or c".
pub(crate) fn list(values: &[&str]) -> String {
    match values {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Reads an enum value; `refused` are values libvirt knows that Vireo cannot honour.
pub(crate) fn enum_value<T: XmlEnum>(
    loc: &Loc,
    what: &str,
    value: &str,
    refused: &[&str],
) -> Result<T> {
    let value = trim_xml(value);
    if let Some(v) = T::ALL.iter().find(|v| v.as_str() == value) {
        return Ok(*v);
    }
    let choices = list(&T::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>());
    if refused.contains(&value) {
        Err(loc.error(format!(
            "{what} {} is not supported by Vireo: use {choices}",
            quote(value)
        )))
    } else {
        Err(loc.error(format!("invalid {what} {}: use {choices}", quote(value))))
    }
}

/// Reads an enum attribute (messages name the attribute).
pub(crate) fn enum_attr<T: XmlEnum>(attr: &Attr, refused: &[&str]) -> Result<T> {
    enum_value(&attr.loc, &attr.name, &attr.value, refused)
}

/// Reads an optional enum attribute.
pub(crate) fn opt_enum<T: XmlEnum>(
    el: &mut Element,
    name: &str,
    refused: &[&str],
) -> Result<Option<T>> {
    el.take_attr(name)
        .map(|a| enum_attr(&a, refused))
        .transpose()
}

/// A whole number (surrounding whitespace allowed).
pub(crate) fn number(loc: &Loc, what: &str, text: &str) -> Result<u64> {
    let t = trim_xml(text);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(loc.error(format!("{what} {} is not a whole number", quote(t))));
    }
    t.parse()
        .map_err(|_| loc.error(format!("{what} {} is too large", quote(t))))
}

/// A whole number attribute within `range`.
pub(crate) fn number_attr(attr: &Attr, range: std::ops::RangeInclusive<u64>) -> Result<u64> {
    let n = number(&attr.loc, &attr.name, &attr.value)?;
    if !range.contains(&n) {
        return Err(attr.loc.error(format!(
            "{} {n} is out of range: use {} to {}",
            attr.name,
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

/// `on`/`off` (or `yes`/`no` with `yes_no`).
pub(crate) fn switch(attr: &Attr, yes_no: bool) -> Result<bool> {
    let (on, off) = if yes_no { ("yes", "no") } else { ("on", "off") };
    match attr.value.as_str() {
        v if v == on => Ok(true),
        v if v == off => Ok(false),
        v => Err(attr.loc.error(format!(
            "invalid value {} for {}: use {on} or {off}",
            quote(v),
            attr.name
        ))),
    }
}

/// An absolute host path from an attribute.
pub(crate) fn path_attr(attr: &Attr) -> Result<String> {
    check_path(&attr.value).map_err(|m| {
        attr.loc
            .error(format!("{} {}: {m}", attr.name, quote(&attr.value)))
    })?;
    Ok(attr.value.clone())
}

/// An attribute that must be present.
pub(crate) fn required(el: &mut Element, name: &str) -> Result<Attr> {
    el.take_attr(name).ok_or_else(|| {
        el.loc
            .error(format!("<{}> needs the attribute '{name}'", el.name))
    })
}

/// A child element that must be present.
pub(crate) fn required_child(el: &mut Element, name: &str) -> Result<Element> {
    el.take_child(name)?
        .ok_or_else(|| el.loc.error(format!("<{}> needs a <{name}>", el.name)))
}

/// A text-only element's text, trimmed.
pub(crate) fn trimmed_text(el: Element) -> Result<String> {
    Ok(trim_xml(&el.into_text()?).to_string())
}

/// The message for more PCI devices than Vireo's bus has slots.
pub(crate) fn too_many_pci(count: usize) -> String {
    format!(
        "{count} PCI devices (disks, NICs, rng, virtio console): Vireo's PCI bus has room for \
         {MAX_PCI_DEVICES}"
    )
}

/// The namespace declarations written on an element.
fn ns_decls(el: &Element) -> Vec<(String, String)> {
    el.attrs
        .iter()
        .filter_map(|a| {
            a.name
                .strip_prefix("xmlns:")
                .map(|p| (p.to_string(), a.value.clone()))
        })
        .collect()
}

/// Parses, checks and completes a domain definition.
pub(crate) fn domain(input: &str, ids: &mut dyn IdGenerator) -> Result<Domain> {
    let mut root = tree::parse(input)?;
    if root.name != "domain" {
        return Err(root.loc.error(format!(
            "the root element must be <domain>, not <{}>",
            root.name
        )));
    }
    root.reject_unknown_children(DOMAIN_CHILDREN, "element")?;
    let outer_ns = ns_decls(&root);
    let ty = required(&mut root, "type")?;
    if ty.value != "kvm" {
        return Err(ty.loc.error(format!(
            "domain type {} is not supported by Vireo: use type='kvm'",
            quote(&ty.value)
        )));
    }
    // The id of a running domain means nothing in a definition (libvirt
    // ignores it too).
    root.take_attr("id");

    let name_el = required_child(&mut root, "name")?;
    let loc = name_el.loc.clone();
    let name = trimmed_text(name_el)?;
    validate_name(&name).map_err(|e| loc.error(format!("invalid name {}: {e}", quote(&name))))?;

    let uuid = match root.take_child("uuid")? {
        Some(el) => {
            let loc = el.loc.clone();
            let text = el.into_text()?;
            let uuid = parse_uuid(&text).ok_or_else(|| {
                loc.error(format!(
                    "invalid uuid {}: expected 32 hexadecimal digits, like 4dea22b3-1d52-d8f3-2516-782e98ab3fa0",
                    quote(trim_xml(&text))
                ))
            })?;
            if uuid.is_nil() {
                return Err(loc.error("the all-zero uuid cannot be used"));
            }
            uuid
        }
        None => ids.uuid(),
    };

    let title = match root.take_child("title")? {
        Some(el) => {
            let loc = el.loc.clone();
            let t = el.into_text()?;
            if t.contains(['\n', '\r']) {
                return Err(loc.error("a title is a single line; use <description> for more"));
            }
            Some(t)
        }
        None => None,
    };
    let description = root
        .take_child("description")?
        .map(Element::into_text)
        .transpose()?;
    let metadata = match root.take_child("metadata")? {
        Some(el) => metadata(el, outer_ns)?,
        None => Vec::new(),
    };

    let memory_el = required_child(&mut root, "memory")?;
    let kib = memory(memory_el, "memory")?;
    let current_kib = match root.take_child("currentMemory")? {
        Some(el) => {
            let loc = el.loc.clone();
            let current = memory(el, "currentMemory")?;
            if current > kib {
                return Err(loc.error(format!(
                    "currentMemory ({current} KiB) exceeds memory ({kib} KiB)"
                )));
            }
            if current < kib {
                return Err(loc.error(format!(
                    "currentMemory ({current} KiB) is below memory ({kib} KiB): Vireo has no \
                     memory balloon, so the guest always has all of <memory>; make them equal"
                )));
            }
            current
        }
        None => kib,
    };
    let vcpus = vcpu(root.take_child("vcpu")?)?;
    let os = os(required_child(&mut root, "os")?)?;
    let features = match root.take_child("features")? {
        Some(el) => features(el)?,
        None => Features::default(),
    };
    let cpu = match root.take_child("cpu")? {
        Some(el) => {
            let (cpu, topo_loc) = cpu(el)?;
            if let (Some(t), Some(loc)) = (cpu.topology, topo_loc) {
                let product = u64::from(t.sockets) * u64::from(t.cores) * u64::from(t.threads);
                if product != u64::from(vcpus) {
                    return Err(loc.error(format!(
                        "the topology {} sockets x {} cores x {} threads makes {product} vCPUs, \
                         but <vcpu> is {vcpus}",
                        t.sockets, t.cores, t.threads
                    )));
                }
            }
            Some(cpu)
        }
        None => None,
    };
    let clock = match root.take_child("clock")? {
        Some(el) => clock(el)?,
        None => Clock {
            offset: ClockOffset::Utc,
            timers: Vec::new(),
        },
    };
    let mut lifecycle = Lifecycle::default();
    for (name, slot) in [
        ("on_poweroff", &mut lifecycle.on_poweroff),
        ("on_reboot", &mut lifecycle.on_reboot),
        ("on_crash", &mut lifecycle.on_crash),
    ] {
        if let Some(el) = root.take_child(name)? {
            let loc = el.loc.clone();
            let text = el.into_text()?;
            *slot = enum_value::<LifecycleAction>(
                &loc,
                &format!("<{name}> action"),
                &text,
                &["rename-restart", "coredump-destroy", "coredump-restart"],
            )?;
        }
    }
    let pm = root.take_child("pm")?.map(pm).transpose()?;
    let devices = match root.take_child("devices")? {
        Some(el) => {
            let loc = el.loc.clone();
            let devices = devices::devices(el, ids)?;
            let pci = devices.disks.len()
                + devices.interfaces.len()
                + usize::from(devices.rng.is_some())
                + usize::from(
                    devices
                        .consoles
                        .iter()
                        .any(|c| c.target == ConsoleTarget::Virtio),
                );
            if pci > MAX_PCI_DEVICES {
                return Err(loc.error(too_many_pci(pci)));
            }
            devices
        }
        None => Default::default(),
    };
    root.finish()?;
    Ok(Domain {
        name,
        uuid,
        title,
        description,
        metadata,
        memory: Memory { kib, current_kib },
        vcpus,
        os,
        features,
        cpu,
        clock,
        lifecycle,
        pm,
        devices,
    })
}

/// `<metadata>`: each child kept verbatim with the namespaces it uses.
fn metadata(mut el: Element, mut scope: Vec<(String, String)>) -> Result<Vec<raw::RawElement>> {
    scope.extend(ns_decls(&el));
    el.attrs.retain(|a| !a.name.starts_with("xmlns:"));
    let mut kept = Vec::new();
    let mut rest = Vec::new();
    for node in std::mem::take(&mut el.children) {
        match node {
            Node::Element(child) => kept.push(raw::from_tree(child, &scope, true)?),
            text => rest.push(text),
        }
    }
    el.children = rest;
    el.finish()?;
    Ok(kept)
}

/// `<memory>` / `<currentMemory>` in KiB.
fn memory(mut el: Element, what: &str) -> Result<u64> {
    let loc = el.loc.clone();
    let unit = el.take_attr("unit");
    let text = el.into_text()?;
    let (scale, unit_name) = match &unit {
        None => (1024, "KiB"),
        Some(u) => match unit_scale(&u.value) {
            Some(s) => (s, u.value.as_str()),
            None => {
                return Err(u.loc.error(format!(
                    "unknown unit {} for <{what}>: use b, KiB, MiB, GiB, TiB (powers of 1024) \
                     or KB, MB, GB, TB (powers of 1000)",
                    quote(&u.value)
                )))
            }
        },
    };
    let n = number(&loc, what, &text)?;
    let too_large = || {
        loc.error(format!(
            "{what} of {n} {unit_name} is too large: Vireo allows at most {MAX_MEMORY_KIB} KiB (16 TiB)"
        ))
    };
    let bytes = n.checked_mul(scale).ok_or_else(too_large)?;
    if bytes > MAX_MEMORY_KIB * 1024 {
        return Err(too_large());
    }
    if bytes < MIN_MEMORY_KIB * 1024 {
        return Err(loc.error(format!(
            "{what} of {n} {unit_name} is too small: Vireo needs at least 8 MiB ({MIN_MEMORY_KIB} KiB)"
        )));
    }
    if !bytes.is_multiple_of(4096) {
        return Err(loc.error(format!(
            "{what} of {n} {unit_name} ({bytes} bytes) is not a whole number of 4 KiB pages"
        )));
    }
    Ok(bytes / 1024)
}

/// `<vcpu>`; 1 when absent, like libvirt.
fn vcpu(el: Option<Element>) -> Result<u32> {
    let Some(mut el) = el else {
        return Ok(1);
    };
    let loc = el.loc.clone();
    if let Some(p) = el.take_attr("placement") {
        match p.value.as_str() {
            "static" => {}
            "auto" => {
                return Err(p
                    .loc
                    .error("placement='auto' (numad) is not supported by Vireo: use static"))
            }
            v => {
                return Err(p
                    .loc
                    .error(format!("invalid placement {}: use static", quote(v))))
            }
        }
    }
    let current = el.take_attr("current");
    let text = el.into_text()?;
    let n = number(&loc, "vCPU count", &text)?;
    if n == 0 {
        return Err(loc.error("a domain needs at least one vCPU"));
    }
    if n > u64::from(MAX_VCPUS) {
        return Err(loc.error(format!("{n} vCPUs: Vireo supports 1 to {MAX_VCPUS}")));
    }
    if let Some(c) = current {
        let cur = number(&c.loc, "current", &c.value)?;
        if cur != n {
            return Err(c.loc.error(format!(
                "current='{cur}' differs from the {n} vCPUs: Vireo has no CPU hotplug yet, so \
                 all vCPUs are online; remove current or make it {n}"
            )));
        }
    }
    u32::try_from(n).map_err(|_| loc.error("too many vCPUs"))
}

/// `<os>`.
fn os(mut el: Element) -> Result<Os> {
    el.reject_unknown_children(&["type", "kernel", "initrd", "cmdline", "boot"], "element")?;
    let mut ty = required_child(&mut el, "type")?;
    if let Some(arch) = ty.take_attr("arch") {
        if arch.value != "x86_64" {
            return Err(arch.loc.error(format!(
                "architecture {} is not supported by Vireo: use x86_64",
                quote(&arch.value)
            )));
        }
    }
    let machine = match ty.take_attr("machine") {
        Some(m) if trim_xml(&m.value).is_empty() => {
            return Err(m
                .loc
                .error("an empty machine type: give one (e.g. pc) or leave machine out"))
        }
        Some(m) => m.value,
        None => "pc".to_string(),
    };
    let loc = ty.loc.clone();
    let os_type = trimmed_text(ty)?;
    if os_type != "hvm" {
        return Err(loc.error(format!(
            "OS type {} is not supported by Vireo: use hvm",
            quote(&os_type)
        )));
    }
    let path_of = |el: Element| -> Result<String> {
        let loc = el.loc.clone();
        let p = trimmed_text(el)?;
        check_path(&p).map_err(|m| loc.error(format!("{}: {m}", quote(&p))))?;
        Ok(p)
    };
    let kernel = el.take_child("kernel")?.map(path_of).transpose()?;
    let initrd_el = el.take_child("initrd")?;
    let initrd_loc = initrd_el.as_ref().map(|e| e.loc.clone());
    let initrd = initrd_el.map(path_of).transpose()?;
    let cmdline = el
        .take_child("cmdline")?
        .map(Element::into_text)
        .transpose()?;
    let boot = match (kernel, initrd, initrd_loc) {
        (Some(kernel), initrd, _) => Boot::Kernel { kernel, initrd },
        (None, Some(_), Some(loc)) => {
            return Err(loc.error(
                "an <initrd> needs a <kernel> (without a kernel the domain runs the built-in test guest)",
            ))
        }
        (None, _, _) => Boot::TestGuest,
    };
    let mut boot_devices = Vec::new();
    for mut b in el.take_children("boot") {
        let dev = required(&mut b, "dev")?;
        let device = enum_attr::<BootDevice>(&dev, &[])?;
        if boot_devices.contains(&device) {
            return Err(dev
                .loc
                .error(format!("boot device {device} is listed twice")));
        }
        boot_devices.push(device);
        b.finish()?;
    }
    el.finish()?;
    Ok(Os {
        machine,
        boot,
        cmdline,
        boot_devices,
    })
}

/// `<features>`.
fn features(mut el: Element) -> Result<Features> {
    el.reject_unknown_children(&["acpi", "apic", "pae", "vmport"], "feature")?;
    let mut flag = |name: &str| -> Result<bool> {
        match el.take_child(name)? {
            Some(f) => {
                f.finish()?;
                Ok(true)
            }
            None => Ok(false),
        }
    };
    let acpi = flag("acpi")?;
    let apic = flag("apic")?;
    let pae = flag("pae")?;
    let vmport_off = match el.take_child("vmport")? {
        Some(mut v) => {
            let state = required(&mut v, "state")?;
            if switch(&state, false)? {
                return Err(state.loc.error(
                    "vmport state='on' is not supported: Vireo has no VMware I/O port; use state='off'",
                ));
            }
            v.finish()?;
            true
        }
        None => false,
    };
    el.finish()?;
    Ok(Features {
        acpi,
        apic,
        pae,
        vmport_off,
    })
}

/// `<cpu>` and where its `<topology>` was (for the vCPU count check).
fn cpu(mut el: Element) -> Result<(Cpu, Option<Loc>)> {
    el.reject_unknown_children(&["model", "topology"], "element")?;
    let mode = el.take_attr("mode");
    let check = opt_enum::<CpuCheck>(&mut el, "check", &[])?;
    let migratable = el
        .take_attr("migratable")
        .map(|a| switch(&a, false))
        .transpose()?;
    let match_ = opt_enum::<CpuMatch>(&mut el, "match", &[])?;
    let model = el.take_child("model")?;
    let mode = match (mode.as_ref().map(|m| m.value.as_str()), model) {
        (Some("host-passthrough"), None) => CpuMode::HostPassthrough,
        (Some("host-model"), None) => CpuMode::HostModel,
        (Some("host-passthrough" | "host-model"), Some(m)) => {
            return Err(m.loc.error("a CPU <model> goes with mode='custom' only"))
        }
        (Some("custom") | None, Some(mut m)) => {
            let fallback = opt_enum::<CpuFallback>(&mut m, "fallback", &[])?;
            let loc = m.loc.clone();
            let name = trimmed_text(m)?;
            let model = enum_value::<CustomCpuModel>(&loc, "CPU model", &name, &[name.as_str()])
                .map_err(|mut e| {
                    e.message.push_str(", or mode='host-passthrough'");
                    e
                })?;
            CpuMode::Custom {
                model,
                match_,
                fallback,
            }
        }
        (Some("custom"), None) => {
            return Err(el
                .loc
                .error("mode='custom' needs a <model>, e.g. x86-64-v2"));
        }
        (None, None) => CpuMode::Default,
        (Some(other), _) => {
            let loc = mode.as_ref().map_or(&el.loc, |m| &m.loc);
            return Err(loc.error(format!(
                "CPU mode {} is not supported by Vireo: use host-passthrough, host-model or custom",
                quote(other)
            )));
        }
    };
    if match_.is_some() && !matches!(mode, CpuMode::Custom { .. }) {
        let loc = el.loc.clone();
        return Err(loc.error("match= goes with mode='custom' only"));
    }
    let (topology, topo_loc) = match el.take_child("topology")? {
        Some(mut t) => {
            let loc = t.loc.clone();
            let mut count = |name: &str| -> Result<u32> {
                let a = required(&mut t, name)?;
                Ok(number_attr(&a, 1..=u64::from(MAX_VCPUS))? as u32)
            };
            let sockets = count("sockets")?;
            let cores = count("cores")?;
            let threads = count("threads")?;
            for one in ["dies", "clusters"] {
                if let Some(a) = t.take_attr(one) {
                    if number(&a.loc, one, &a.value)? != 1 {
                        return Err(a.loc.error(format!(
                            "{one}='{}' is not supported by Vireo: use {one}='1'",
                            a.value
                        )));
                    }
                }
            }
            t.finish()?;
            (
                Some(Topology {
                    sockets,
                    cores,
                    threads,
                }),
                Some(loc),
            )
        }
        None => (None, None),
    };
    el.finish()?;
    Ok((
        Cpu {
            mode,
            check,
            migratable,
            topology,
        },
        topo_loc,
    ))
}

/// `<clock>`.
fn clock(mut el: Element) -> Result<Clock> {
    el.reject_unknown_children(&["timer"], "element")?;
    let offset = match el.take_attr("offset") {
        Some(a) => enum_attr::<ClockOffset>(&a, &["variable", "timezone", "absolute"])?,
        None => ClockOffset::Utc,
    };
    let mut timers: Vec<Timer> = Vec::new();
    for mut t in el.take_children("timer") {
        let name_attr = required(&mut t, "name")?;
        let name = enum_value::<TimerName>(
            &name_attr.loc,
            "timer",
            &name_attr.value,
            &["platform", "tsc", "hypervclock", "armvtimer"],
        )?;
        if timers.iter().any(|x| x.name == name) {
            return Err(t.loc.error(format!("a second timer named {name}")));
        }
        let present_attr = t.take_attr("present");
        let present = present_attr.as_ref().map(|a| switch(a, true)).transpose()?;
        let loc = present_attr.as_ref().map_or(&t.loc, |a| &a.loc).clone();
        match (name, present) {
            (TimerName::Rtc | TimerName::Pit | TimerName::Kvmclock, Some(false)) => {
                return Err(loc.error(format!(
                    "timer {name} present='no' is not supported: Vireo's machine always has it"
                )))
            }
            (TimerName::Hpet, None | Some(true)) => {
                return Err(loc.error(
                    "Vireo's machine has no HPET: write present='no' or leave the timer out",
                ))
            }
            _ => {}
        }
        let tickpolicy = match t.take_attr("tickpolicy") {
            Some(a) if matches!(name, TimerName::Rtc | TimerName::Pit) => {
                Some(enum_attr::<TickPolicy>(&a, &[])?)
            }
            Some(a) => {
                return Err(a.loc.error(format!(
                    "attribute not supported by Vireo (tickpolicy) on timer {name}"
                )))
            }
            None => None,
        };
        let track = match t.take_attr("track") {
            Some(a) if name == TimerName::Rtc => Some(enum_attr::<RtcTrack>(&a, &[])?),
            Some(a) => {
                return Err(a.loc.error(format!(
                    "attribute not supported by Vireo (track) on timer {name}"
                )))
            }
            None => None,
        };
        t.finish()?;
        timers.push(Timer {
            name,
            present,
            tickpolicy,
            track,
        });
    }
    el.finish()?;
    Ok(Clock { offset, timers })
}

/// `<pm>`.
fn pm(mut el: Element) -> Result<Pm> {
    el.reject_unknown_children(&["suspend-to-mem", "suspend-to-disk"], "element")?;
    let mut disabled = |name: &str| -> Result<bool> {
        let Some(mut s) = el.take_child(name)? else {
            return Ok(false);
        };
        let enabled = required(&mut s, "enabled")?;
        if switch(&enabled, true)? {
            return Err(enabled.loc.error(format!(
                "{name} enabled='yes' is not supported: Vireo has no guest suspend; use enabled='no'"
            )));
        }
        s.finish()?;
        Ok(true)
    };
    let pm = Pm {
        suspend_to_mem_disabled: disabled("suspend-to-mem")?,
        suspend_to_disk_disabled: disabled("suspend-to-disk")?,
    };
    el.finish()?;
    Ok(pm)
}
