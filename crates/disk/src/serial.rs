//! [`DiskSerial`]: the 20-byte identity virtio-blk reports for
//! `VIRTIO_BLK_T_GET_ID` (what Linux shows as `/sys/block/vda/serial` and
//! uses for `/dev/disk/by-id`).

use std::fmt;

use crate::SerialError;

/// The length of virtio-blk's ID string.
pub const SERIAL_LEN: usize = 20;

/// A disk serial: up to 20 printable ASCII bytes, NUL-padded as virtio-blk
/// sends it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskSerial([u8; SERIAL_LEN]);

impl DiskSerial {
    /// A serial given by the user.
    pub fn new(serial: &str) -> Result<Self, SerialError> {
        if serial.len() > SERIAL_LEN {
            return Err(SerialError::TooLong {
                serial: serial.to_owned(),
                len: serial.len(),
            });
        }
        if !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(SerialError::NotPrintable {
                serial: serial.to_owned(),
            });
        }
        let mut bytes = [0; SERIAL_LEN];
        bytes[..serial.len()].copy_from_slice(serial.as_bytes());
        Ok(Self(bytes))
    }

    /// A serial derived from a stable identity of the backing file, such as
    /// its device and inode numbers: the same file gets the same serial on
    /// every run, different files (almost surely) different ones. The result
    /// is "VR" followed by 18 hexadecimal digits of an FNV-1a hash.
    pub fn from_identity(parts: &[u64]) -> Self {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0100_0000_01b3;
        let mut lo = FNV_OFFSET;
        let mut hi = FNV_OFFSET ^ 0x5652; // a second, differently seeded hash
        for part in parts {
            for byte in part.to_le_bytes() {
                lo = (lo ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
                hi = (hi ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
            }
        }
        // 72 bits: all of `lo` and 8 bits of `hi`.
        let text = format!("VR{:02X}{lo:016X}", hi & 0xff);
        let mut bytes = [0; SERIAL_LEN];
        bytes.copy_from_slice(text.as_bytes());
        Self(bytes)
    }

    /// The 20 bytes virtio-blk returns for GET_ID.
    pub fn as_bytes(&self) -> &[u8; SERIAL_LEN] {
        &self.0
    }

    /// The serial without its NUL padding.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(SERIAL_LEN);
        // Only printable ASCII is ever stored.
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl fmt::Display for DiskSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DiskSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskSerial({:?})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_serials_are_padded_and_checked() {
        let s = DiskSerial::new("disk-01").expect("valid serial");
        assert_eq!(&s.as_bytes()[..7], b"disk-01");
        assert!(s.as_bytes()[7..].iter().all(|&b| b == 0));
        assert_eq!(s.to_string(), "disk-01");
        assert!(DiskSerial::new("12345678901234567890").is_ok());
        assert!(matches!(
            DiskSerial::new("123456789012345678901"),
            Err(SerialError::TooLong { len: 21, .. })
        ));
        assert!(matches!(
            DiskSerial::new("bad\nserial"),
            Err(SerialError::NotPrintable { .. })
        ));
    }

    #[test]
    fn derived_serials_are_stable_full_length_and_distinct() {
        let a = DiskSerial::from_identity(&[0x803, 1234]);
        assert_eq!(a, DiskSerial::from_identity(&[0x803, 1234]));
        assert_ne!(a, DiskSerial::from_identity(&[0x803, 1235]));
        assert_ne!(a, DiskSerial::from_identity(&[0x804, 1234]));
        assert_eq!(a.as_str().len(), SERIAL_LEN);
        assert!(a.as_str().starts_with("VR"));
    }
}
