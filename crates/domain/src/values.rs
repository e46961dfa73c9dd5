//! Values with rules of their own: domain names, UUIDs, MAC addresses,
//! memory units, device names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest domain name, in characters.
pub const NAME_MAX: usize = 64;

/// Why a domain name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name has at most {NAME_MAX} characters; this one has {0}")]
    TooLong(usize),
    #[error("{0:?} is not allowed in a name: use ASCII letters, digits and - _ . + :")]
    Char(char),
    #[error("a name cannot start with {0:?}")]
    Start(char),
}

/// Checks a domain name: 1 to 64 characters, each an ASCII letter, an ASCII
/// digit or one of `-`, `_`, `.`, `+`, `:`; not starting with `.` (hidden
/// files) or `-` (it would read as an option on command lines).
///
/// libvirt itself allows more (anything but `/`); Vireo's names also become
/// file names, socket names and command-line arguments, so it keeps to a set
/// that is safe everywhere without quoting.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    let count = name.chars().count();
    if count > NAME_MAX {
        return Err(NameError::TooLong(count));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-_.+:".contains(c)))
    {
        return Err(NameError::Char(c));
    }
    if first == '.' || first == '-' {
        return Err(NameError::Start(first));
    }
    Ok(())
}

/// Parses a UUID as libvirt does: 32 hexadecimal digits (either case), with
/// single hyphens allowed between byte pairs (`4dea22b3-1d52-...`,
/// `4dea22b31d52...`), surrounding whitespace ignored.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    let mut bytes = [0u8; 16];
    let mut digits = 0usize;
    let mut last_hyphen = false;
    for c in text.trim_matches(crate::xml::tree::is_xml_space).chars() {
        if c == '-' {
            // Between two bytes only, and never two in a row.
            if digits == 0 || !digits.is_multiple_of(2) || digits == 32 || last_hyphen {
                return None;
            }
            last_hyphen = true;
            continue;
        }
        last_hyphen = false;
        let v = c.to_digit(16)?;
        let byte = bytes.get_mut(digits / 2)?;
        *byte = (*byte << 4) | v as u8;
        digits += 1;
    }
    (digits == 32 && !last_hyphen).then(|| Uuid::from_bytes(bytes))
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("not a MAC address like 52:54:00:12:34:56")]
    Syntax,
    #[error("a multicast address; a NIC needs a unicast one (first byte even)")]
    Multicast,
    #[error("the all-zero address cannot be used")]
    Zero,
}

impl MacAddr {
    /// The first three bytes of the addresses Vireo generates: the prefix
    /// QEMU and libvirt use for KVM guests, so tools recognise them.
    pub const KVM_PREFIX: [u8; 3] = [0x52, 0x54, 0x00];

    /// A random address with [`MacAddr::KVM_PREFIX`].
    pub fn random() -> MacAddr {
        let r = Uuid::new_v4().into_bytes();
        let [a, b, c] = MacAddr::KVM_PREFIX;
        MacAddr([a, b, c, r[0], r[1], r[2]])
    }

    /// Whether the group bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Six groups of one or two hexadecimal digits separated by `:` (as
    /// libvirt reads them); multicast and all-zero addresses are refused.
    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or(MacError::Syntax)?;
            if p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacError::Syntax);
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| MacError::Syntax)?;
        }
        if parts.next().is_some() {
            return Err(MacError::Syntax);
        }
        let mac = MacAddr(mac);
        if mac.is_multicast() {
            return Err(MacError::Multicast);
        }
        if mac.0 == [0; 6] {
            return Err(MacError::Zero);
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Bytes per unit for libvirt's memory units: `b`, `byte`, `bytes`; `k`,
/// `KiB` (1024) and `KB` (1000), and likewise M, G, T, P, E. Like libvirt,
/// letters match in either case.
pub fn unit_scale(unit: &str) -> Option<u64> {
    if ["b", "byte", "bytes"]
        .iter()
        .any(|u| unit.eq_ignore_ascii_case(u))
    {
        return Some(1);
    }
    let mut chars = unit.chars();
    let power = match chars.next()?.to_ascii_lowercase() {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let rest = chars.as_str();
    let base: u64 = if rest.is_empty() || rest.eq_ignore_ascii_case("ib") {
        1024
    } else if rest.eq_ignore_ascii_case("b") {
        1000
    } else {
        return None;
    };
    base.checked_pow(power)
}

/// Checks a Linux network interface name (a TAP or a bridge): 1 to 15
/// bytes, not `.` or `..`, without `/`, `:`, `,` or whitespace.
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 bytes".into());
    }
    if name == "." || name == ".." {
        return Err("an interface name cannot be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{c:?} is not allowed in an interface name"));
    }
    Ok(())
}

/// Checks a virtio disk name: `vd` and one to three lowercase letters.
pub(crate) fn check_disk_target(dev: &str) -> Result<(), String> {
    match dev.strip_prefix("vd") {
        Some(rest)
            if (1..=3).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_lowercase()) =>
        {
            Ok(())
        }
        _ => Err("a virtio disk is named vd and 1 to 3 lowercase letters, e.g. vda".into()),
    }
}

/// Checks a disk serial: 1 to 20 characters, letters, digits, `_ . + -`.
pub(crate) fn check_disk_serial(serial: &str) -> Result<(), String> {
    if serial.is_empty() || serial.len() > 20 {
        return Err("a disk serial has 1 to 20 characters".into());
    }
    if let Some(c) = serial
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "_.+-".contains(c)))
    {
        return Err(format!(
            "{c:?} is not allowed in a disk serial: use letters, digits and _ . + -"
        ));
    }
    Ok(())
}

/// Checks a host path: absolute, so it means the same to every process.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("a host path must be absolute (start with /)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rules() {
        for ok in ["vm1", "web-01.example", "a_b+c:d", "X", &"n".repeat(64)] {
            validate_name(ok).expect(ok);
        }
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"n".repeat(65)), Err(NameError::TooLong(65)));
        assert_eq!(validate_name("a/b"), Err(NameError::Char('/')));
        assert_eq!(validate_name("a b"), Err(NameError::Char(' ')));
        assert_eq!(validate_name("é"), Err(NameError::Char('é')));
        assert_eq!(validate_name(".hidden"), Err(NameError::Start('.')));
        assert_eq!(validate_name("-x"), Err(NameError::Start('-')));
    }

    #[test]
    fn uuids_parse_in_libvirts_forms() {
        let want = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0";
        for form in [
            want,
            "4DEA22B3-1D52-D8F3-2516-782E98AB3FA0",
            "4dea22b31d52d8f32516782e98ab3fa0",
            " 4dea22b3-1d52d8f3-2516782e-98ab3fa0\n",
            "4d-ea-22-b3-1d-52-d8-f3-25-16-78-2e-98-ab-3f-a0",
        ] {
            assert_eq!(
                parse_uuid(form).map(|u| u.to_string()),
                Some(want.into()),
                "{form}"
            );
        }
        for bad in [
            "",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fa",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fa00",
            "4dea22b3-1d52-d8f3-2516-782e98ab3fag",
            "-4dea22b31d52d8f32516782e98ab3fa0",
            "4dea22b31d52d8f32516782e98ab3fa0-",
            "4dea22b3--1d52d8f32516782e98ab3fa0",
            "4dea22b-31d52d8f32516782e98ab3fa0",
            "{4dea22b3-1d52-d8f3-2516-782e98ab3fa0}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn macs_parse_and_print() {
        let m: MacAddr = "52:54:0:A:bc:1".parse().expect("mac");
        assert_eq!(m.to_string(), "52:54:00:0a:bc:01");
        assert_eq!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacError::Multicast)
        );
        assert_eq!("00:00:00:00:00:00".parse::<MacAddr>(), Err(MacError::Zero));
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "152:54:00:12:34:56",
            "g2:54:00:12:34:56",
            "+2:54:00:12:34:56",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(MacError::Syntax), "{bad}");
        }
        let r = MacAddr::random();
        assert_eq!(r.0[..3], MacAddr::KVM_PREFIX);
        assert!(!r.is_multicast());
    }

    #[test]
    fn units_have_libvirts_meanings() {
        assert_eq!(unit_scale("b"), Some(1));
        assert_eq!(unit_scale("bytes"), Some(1));
        assert_eq!(unit_scale("KB"), Some(1000));
        assert_eq!(unit_scale("k"), Some(1024));
        assert_eq!(unit_scale("KiB"), Some(1024));
        assert_eq!(unit_scale("M"), Some(1 << 20));
        assert_eq!(unit_scale("MB"), Some(1_000_000));
        assert_eq!(unit_scale("GiB"), Some(1 << 30));
        assert_eq!(unit_scale("gib"), Some(1 << 30));
        assert_eq!(unit_scale("TB"), Some(1_000_000_000_000));
        assert_eq!(unit_scale("P"), Some(1 << 50));
        assert_eq!(unit_scale("EiB"), Some(1 << 60));
        assert_eq!(unit_scale("EB"), Some(1_000_000_000_000_000_000));
        for bad in ["", "x", "KiBB", "kibi", "Z", "ZiB"] {
            assert_eq!(unit_scale(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_names_are_checked() {
        check_ifname("vnet0").expect("ok");
        check_ifname("br-lan.10").expect("ok");
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a-very-long-name").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a,b").is_err());
        assert!(check_ifname("..").is_err());
        check_disk_target("vda").expect("ok");
        check_disk_target("vdaab").expect("three letters");
        check_disk_target("vdaaab").expect_err("too long");
        check_disk_target("sda").expect_err("not virtio");
        check_disk_target("vd1").expect_err("digit");
        check_disk_serial("WD-1234_x.y+z").expect("ok");
        check_disk_serial("has space").expect_err("space");
        check_disk_serial(&"s".repeat(21)).expect_err("long");
        check_path("/var/lib/x.img").expect("ok");
        check_path("x.img").expect_err("relative");
    }
}
