//! The command-line syntax of devices, shared by `vireo run` and `vireo-vmm`:
//!
//! - `--disk PATH[,readonly][,direct][,serial=TEXT][,queues=N]`
//! - `--net tap=NAME|fd=N[,mac=52:54:00:12:34:56][,queues=N]`
//!
//! Each parses from one argument ([`std::str::FromStr`]) with an error that
//! names the offending part, and prints back in the same syntax
//! ([`std::fmt::Display`]), so a front end can check an argument and pass it
//! on unchanged in meaning.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Most request queues of a disk, and queue pairs of a NIC.
pub const MAX_QUEUES: u16 = 16;

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// Image file or block device.
    pub path: PathBuf,
    /// The guest may not write.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// The GET_ID serial (at most 20 bytes).
    pub serial: Option<String>,
    /// Request queues (1..=16).
    pub queues: u16,
    /// Image format, "raw" or "qcow2" (probed from the file when absent).
    pub format: Option<String>,
}

/// Where a NIC's packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapArg {
    /// A TAP interface by name (created if absent, which needs CAP_NET_ADMIN).
    Name(String),
    /// An open TAP descriptor inherited from the caller.
    Fd(i32),
}

/// A virtio-net NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    /// The TAP backend.
    pub tap: TapArg,
    /// MAC address (default: a random locally administered one).
    pub mac: Option<[u8; 6]>,
    /// Queue pairs (1..=16; more than one needs a multi-queue TAP).
    pub queues: u16,
}

fn queues(part: &str, value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(n) if (1..=MAX_QUEUES).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{part}': queues must be a number from 1 to {MAX_QUEUES}"
        )),
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`; multicast addresses are refused.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("'{s}' is not a MAC address like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "'{s}' is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FromStr for DiskArg {
    type Err = String;

    fn from_str(s: &str) -> Result<DiskArg, String> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or("");
        if path.is_empty() {
            return Err(format!(
                "'{s}': a disk needs a path first, like disk.img,readonly"
            ));
        }
        let mut disk = DiskArg {
            path: PathBuf::from(path),
            read_only: false,
            direct: false,
            serial: None,
            queues: 1,
            format: None,
        };
        for part in parts {
            match part.split_once('=') {
                None if part == "readonly" || part == "ro" => disk.read_only = true,
                None if part == "direct" => disk.direct = true,
                Some(("serial", v)) => {
                    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(format!(
                            "'{part}': a serial is 1 to 20 printable ASCII characters"
                        ));
                    }
                    disk.serial = Some(v.to_owned());
                }
                Some(("queues", v)) => disk.queues = queues(part, v)?,
                Some(("format", v)) if v == "raw" || v == "qcow2" => disk.format = Some(v.to_owned()),
                Some(("format", v)) => {
                    return Err(format!("'{part}': unknown image format '{v}' (raw or qcow2)"))
                }
                _ => {
                    return Err(format!(
                    "'{part}' is not a disk option: use readonly, direct, serial=TEXT, queues=N or format=raw|qcow2"
                ))
                }
            }
        }
        Ok(disk)
    }
}

impl fmt::Display for DiskArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.read_only {
            f.write_str(",readonly")?;
        }
        if self.direct {
            f.write_str(",direct")?;
        }
        if let Some(s) = &self.serial {
            write!(f, ",serial={s}")?;
        }
        if self.queues != 1 {
            write!(f, ",queues={}", self.queues)?;
        }
        if let Some(format) = &self.format {
            write!(f, ",format={format}")?;
        }
        Ok(())
    }
}

impl FromStr for NetArg {
    type Err = String;

    fn from_str(s: &str) -> Result<NetArg, String> {
        let mut tap = None;
        let mut mac = None;
        let mut nq = 1;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) => {
                    // Linux interface names: 1 to 15 bytes, no '/', ':' or spaces.
                    let ok = !name.is_empty()
                        && name.len() < 16
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
                    if !ok {
                        return Err(format!(
                            "'{part}': an interface name is 1 to 15 characters without '/', ':' or spaces"
                        ));
                    }
                    tap = Some(TapArg::Name(name.to_owned()));
                }
                Some(("fd", n)) => match n.parse::<i32>() {
                    Ok(fd) if fd >= 3 => tap = Some(TapArg::Fd(fd)),
                    _ => {
                        return Err(format!(
                            "'{part}': fd must be an open descriptor number (3 or more)"
                        ))
                    }
                },
                Some(("mac", m)) => mac = Some(parse_mac(m)?),
                Some(("queues", v)) => nq = queues(part, v)?,
                _ => {
                    return Err(format!(
                        "'{part}' is not a NIC option: use tap=NAME or fd=N, mac=ADDR, queues=N"
                    ))
                }
            }
        }
        let tap = tap.ok_or_else(|| format!("'{s}': a NIC needs tap=NAME or fd=N"))?;
        Ok(NetArg {
            tap,
            mac,
            queues: nq,
        })
    }
}

impl fmt::Display for NetArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tap {
            TapArg::Name(n) => write!(f, "tap={n}")?,
            TapArg::Fd(fd) => write!(f, "fd={fd}")?,
        }
        if let Some(m) = &self.mac {
            write!(f, ",mac={}", mac_text(m))?;
        }
        if self.queues != 1 {
            write!(f, ",queues={}", self.queues)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_and_print_back() {
        let d: DiskArg = "/tmp/a.img,readonly,serial=abc,queues=4"
            .parse()
            .expect("valid");
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert!(d.read_only && !d.direct);
        assert_eq!((d.serial.as_deref(), d.queues), (Some("abc"), 4));
        assert_eq!(d.to_string().parse::<DiskArg>().expect("round trip"), d);
        let plain: DiskArg = "disk.img".parse().expect("valid");
        assert_eq!(plain.to_string(), "disk.img");
    }

    #[test]
    fn bad_disks_say_what_is_wrong() {
        for (arg, needle) in [
            ("", "needs a path"),
            (",readonly", "needs a path"),
            ("a.img,fast", "'fast' is not a disk option"),
            ("a.img,queues=0", "1 to 16"),
            ("a.img,queues=x", "1 to 16"),
            ("a.img,serial=", "1 to 20"),
            ("a.img,serial=012345678901234567890", "1 to 20"),
        ] {
            let e = arg.parse::<DiskArg>().expect_err(arg);
            assert!(e.contains(needle), "{arg}: {e}");
        }
    }

    #[test]
    fn nics_parse_and_print_back() {
        let n: NetArg = "tap=vtap0,mac=52:54:00:AB:cd:01,queues=2"
            .parse()
            .expect("valid");
        assert_eq!(n.tap, TapArg::Name("vtap0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 1]));
        assert_eq!(n.to_string(), "tap=vtap0,mac=52:54:00:ab:cd:01,queues=2");
        assert_eq!(n.to_string().parse::<NetArg>().expect("round trip"), n);
        let f: NetArg = "fd=5".parse().expect("valid");
        assert_eq!(f.tap, TapArg::Fd(5));
    }

    #[test]
    fn bad_nics_say_what_is_wrong() {
        for (arg, needle) in [
            ("mac=52:54:00:00:00:01", "needs tap=NAME or fd=N"),
            ("tap=", "1 to 15"),
            ("tap=a/b", "without '/'"),
            ("tap=abcdefghijklmnop", "1 to 15"),
            ("fd=1", "3 or more"),
            ("tap=t,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t,mac=52:54:00:00:01", "not a MAC"),
            ("tap=t,mac=52:54:00:00:00:0g", "not a MAC"),
            ("tap=t,speed=10", "'speed=10' is not a NIC option"),
        ] {
            let e = arg.parse::<NetArg>().expect_err(arg);
            assert!(e.contains(needle), "{arg}: {e}");
        }
    }
}
