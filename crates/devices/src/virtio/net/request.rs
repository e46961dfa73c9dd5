//! Pure virtio-net logic (virtio 1.2, section 5.1.6): transmit chain checks,
//! receive buffer planning, the `virtio_net_hdr_v1` fields the device
//! touches, and control commands. No I/O: this is the fuzz target.

use virtio_bindings::virtio_net as vn;

use crate::virtio::queue::Chain;

/// Bytes of `struct virtio_net_hdr_v1`: the header in front of every frame
/// in both directions (virtio 1.x always includes `num_buffers`), and the
/// size the TAP is told to use (TUNSETVNETHDRSZ).
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame (without the virtio header) carried either way:
/// 64 KiB, the largest GSO packet the host kernel builds or accepts, plus an
/// Ethernet header with one VLAN tag.
pub const MAX_FRAME_LEN: usize = 0x1_0000 + ETH_VLAN_HLEN;
/// Largest header plus frame: the size of the host-side frame buffers.
pub const MAX_PACKET_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;
/// Ethernet header plus one VLAN tag (what Linux adds to the MTU when it
/// sizes receive buffers).
pub const ETH_VLAN_HLEN: usize = 14 + 4;

/// Offset of `flags` in the header.
const HDR_FLAGS: usize = 0;
/// Offset of `gso_type` in the header.
const HDR_GSO_TYPE: usize = 1;
/// Offset of `num_buffers` (le16) in the header.
const HDR_NUM_BUFFERS: usize = 10;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Why a transmit chain is dropped (the chain is still returned, with
/// nothing written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxDrop {
    /// Transmit chains carry no device-writable buffers.
    #[error("transmit chain has device-writable buffers")]
    WritableBuffers,
    /// Shorter than the header.
    #[error("transmit chain of {0} bytes is shorter than the {NET_HDR_LEN}-byte header")]
    TooShort(u64),
    /// Longer than the header plus [`MAX_FRAME_LEN`].
    #[error("transmit chain of {0} bytes is longer than {MAX_PACKET_LEN}")]
    TooLong(u64),
}

/// Checks a transmit chain: header plus frame, device-readable only.
/// Returns the packet length (header included).
pub fn check_tx(chain: &Chain) -> Result<usize, TxDrop> {
    if !chain.writable.is_empty() {
        return Err(TxDrop::WritableBuffers);
    }
    let len = chain.readable_len();
    if len < NET_HDR_LEN as u64 {
        return Err(TxDrop::TooShort(len));
    }
    if len > MAX_PACKET_LEN as u64 {
        return Err(TxDrop::TooLong(len));
    }
    // len <= MAX_PACKET_LEN, which fits usize.
    Ok(len as usize)
}

/// How a received packet fits the receive chains taken so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFit {
    /// The first `n` chains hold it.
    Fits(usize),
    /// More chains are needed.
    NeedMore,
    /// It can never fit: without mergeable buffers one chain must hold the
    /// whole packet, and the first one does not. Drop the packet.
    TooSmall,
}

/// Where a packet of `len` bytes (header included) goes, given the
/// capacities of the chains taken so far, in order. Without mergeable
/// buffers only the first chain counts; with them a packet spans as many
/// chains as it needs (at most `u16::MAX`, the range of `num_buffers`).
pub fn rx_fit(len: usize, capacities: impl IntoIterator<Item = u64>, mergeable: bool) -> RxFit {
    let len = len as u64;
    let mut caps = capacities.into_iter();
    if !mergeable {
        return match caps.next() {
            None => RxFit::NeedMore,
            Some(c) if c >= len => RxFit::Fits(1),
            Some(_) => RxFit::TooSmall,
        };
    }
    let mut total = 0u64;
    for (i, c) in caps.enumerate() {
        if i >= usize::from(u16::MAX) {
            return RxFit::TooSmall;
        }
        total = total.saturating_add(c);
        if total >= len {
            return RxFit::Fits(i + 1);
        }
    }
    RxFit::NeedMore
}

/// Why a received packet cannot be given to this driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxHeaderError {
    /// The packet needs its checksum completed, and the driver did not
    /// accept VIRTIO_NET_F_GUEST_CSUM.
    #[error("partial checksum, but the driver did not accept GUEST_CSUM")]
    ChecksumNotNegotiated,
    /// A GSO type the driver did not accept (or an unknown one).
    #[error("GSO type {0:#x} the driver did not accept")]
    GsoNotNegotiated(u8),
    /// Shorter than a header.
    #[error("packet shorter than the header")]
    Short,
}

/// Prepares the header of a received packet (as the TAP wrote it) for a
/// driver that accepted `features`: refuses offloads it did not accept
/// (possible for packets queued before the offloads were narrowed) and
/// masks the flags it may see (none without GUEST_CSUM).
/// `num_buffers` is set at delivery ([`set_num_buffers`]).
pub fn prepare_rx_header(hdr: &mut [u8], features: u64) -> Result<(), RxHeaderError> {
    check_rx_header(hdr, features)?;
    let flags = hdr[HDR_FLAGS];
    hdr[HDR_FLAGS] = if features & bit(vn::VIRTIO_NET_F_GUEST_CSUM) == 0 {
        0
    } else {
        flags & (vn::VIRTIO_NET_HDR_F_NEEDS_CSUM | vn::VIRTIO_NET_HDR_F_DATA_VALID) as u8
    };
    Ok(())
}

/// Sets `num_buffers`: how many chains a received packet spans (1 without
/// mergeable buffers). Headers shorter than [`NET_HDR_LEN`] are left alone.
pub fn set_num_buffers(hdr: &mut [u8], num_buffers: u16) {
    if let Some(field) = hdr.get_mut(HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2) {
        field.copy_from_slice(&num_buffers.to_le_bytes());
    }
}

/// The checks of [`prepare_rx_header`], without changing anything.
pub fn check_rx_header(hdr: &[u8], features: u64) -> Result<(), RxHeaderError> {
    if hdr.len() < NET_HDR_LEN {
        return Err(RxHeaderError::Short);
    }
    let has = |f: u32| features & bit(f) != 0;
    let flags = u32::from(hdr[HDR_FLAGS]);
    if flags & vn::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(vn::VIRTIO_NET_F_GUEST_CSUM) {
        return Err(RxHeaderError::ChecksumNotNegotiated);
    }
    let gso = hdr[HDR_GSO_TYPE];
    let ecn = u32::from(gso) & vn::VIRTIO_NET_HDR_GSO_ECN != 0;
    let accepted = match u32::from(gso) & !vn::VIRTIO_NET_HDR_GSO_ECN {
        vn::VIRTIO_NET_HDR_GSO_NONE => true,
        vn::VIRTIO_NET_HDR_GSO_TCPV4 => has(vn::VIRTIO_NET_F_GUEST_TSO4),
        vn::VIRTIO_NET_HDR_GSO_TCPV6 => has(vn::VIRTIO_NET_F_GUEST_TSO6),
        vn::VIRTIO_NET_HDR_GSO_UDP => has(vn::VIRTIO_NET_F_GUEST_UFO),
        vn::VIRTIO_NET_HDR_GSO_UDP_L4 => {
            has(vn::VIRTIO_NET_F_GUEST_USO4) || has(vn::VIRTIO_NET_F_GUEST_USO6)
        }
        _ => false,
    };
    if !accepted || (ecn && !has(vn::VIRTIO_NET_F_GUEST_ECN)) {
        return Err(RxHeaderError::GsoNotNegotiated(gso));
    }
    Ok(())
}

/// Whether a received packet (header included, `len` bytes) is too long for
/// a driver that accepted VIRTIO_NET_F_MTU with `mtu`: packets without GSO
/// may not exceed the MTU plus an Ethernet header (with a VLAN tag).
pub fn exceeds_mtu(hdr: &[u8], len: usize, mtu: u16) -> bool {
    let gso = hdr.get(HDR_GSO_TYPE).copied().unwrap_or(0);
    let no_gso = u32::from(gso) & !vn::VIRTIO_NET_HDR_GSO_ECN == vn::VIRTIO_NET_HDR_GSO_NONE;
    no_gso && len.saturating_sub(NET_HDR_LEN) > usize::from(mtu) + ETH_VLAN_HLEN
}

/// Bytes of a control command the device reads: class, command and the
/// longest payload it interprets.
pub const CTRL_READ_LEN: usize = 4;

/// Control queue acknowledgements.
pub const CTRL_OK: u8 = vn::VIRTIO_NET_OK as u8;
/// The command failed or is not supported.
pub const CTRL_ERR: u8 = vn::VIRTIO_NET_ERR as u8;

/// A control queue command (virtio 1.2, section 5.1.6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlCommand {
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: use this many queue pairs.
    MqPairsSet(u16),
    /// A VIRTIO_NET_CTRL_RX mode command (promiscuous, all-multicast, ...)
    /// with its on/off byte.
    RxMode { command: u8, on: bool },
    /// VIRTIO_NET_CTRL_MAC_TABLE_SET (the filter tables; not read).
    MacTableSet,
    /// Anything else, or a command without its payload.
    Unsupported { class: u8, command: u8 },
    /// Shorter than the two-byte class and command.
    Malformed,
}

/// Decodes the first bytes of a control command's device-readable part.
/// `data` holds at most [`CTRL_READ_LEN`] bytes; longer payloads are not
/// looked at.
pub fn parse_ctrl(data: &[u8]) -> CtrlCommand {
    let (&[class, command], payload) = data.split_at(data.len().min(2)) else {
        return CtrlCommand::Malformed;
    };
    let unsupported = CtrlCommand::Unsupported { class, command };
    match (u32::from(class), u32::from(command)) {
        (vn::VIRTIO_NET_CTRL_MQ, vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => match payload {
            [a, b, ..] => CtrlCommand::MqPairsSet(u16::from_le_bytes([*a, *b])),
            _ => unsupported,
        },
        (vn::VIRTIO_NET_CTRL_RX, c) if c <= vn::VIRTIO_NET_CTRL_RX_NOBCAST => match payload {
            [on, ..] => CtrlCommand::RxMode {
                command,
                on: *on != 0,
            },
            _ => unsupported,
        },
        (vn::VIRTIO_NET_CTRL_MAC, vn::VIRTIO_NET_CTRL_MAC_TABLE_SET) => CtrlCommand::MacTableSet,
        _ => unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::queue::GuestBuffer;
    use vm_memory::GuestAddress;

    fn buf(len: u32) -> GuestBuffer {
        GuestBuffer {
            addr: GuestAddress(0x1000),
            len,
        }
    }

    fn chain(readable: &[u32], writable: &[u32]) -> Chain {
        Chain {
            head: 0,
            readable: readable.iter().map(|&l| buf(l)).collect(),
            writable: writable.iter().map(|&l| buf(l)).collect(),
        }
    }

    #[test]
    fn transmit_chains_are_checked() {
        assert_eq!(check_tx(&chain(&[12, 60], &[])), Ok(72));
        assert_eq!(check_tx(&chain(&[4, 8], &[])), Ok(12));
        assert_eq!(check_tx(&chain(&[11], &[])), Err(TxDrop::TooShort(11)));
        assert_eq!(check_tx(&chain(&[], &[])), Err(TxDrop::TooShort(0)));
        assert_eq!(
            check_tx(&chain(&[12, 60], &[4])),
            Err(TxDrop::WritableBuffers)
        );
        let max = MAX_PACKET_LEN as u32;
        assert_eq!(check_tx(&chain(&[12, max - 12], &[])), Ok(MAX_PACKET_LEN));
        assert_eq!(
            check_tx(&chain(&[12, max - 11], &[])),
            Err(TxDrop::TooLong(u64::from(max) + 1))
        );
        // Lengths that would overflow 32 bits are still just too long.
        assert!(matches!(
            check_tx(&chain(&[u32::MAX, u32::MAX], &[])),
            Err(TxDrop::TooLong(_))
        ));
    }

    #[test]
    fn receive_planning() {
        // Without mergeable buffers: the first chain holds it all, or never.
        assert_eq!(rx_fit(100, [], false), RxFit::NeedMore);
        assert_eq!(rx_fit(100, [100, 1], false), RxFit::Fits(1));
        assert_eq!(rx_fit(100, [99, 1000], false), RxFit::TooSmall);
        // With them: as many chains as it takes.
        assert_eq!(rx_fit(100, [40, 40], true), RxFit::NeedMore);
        assert_eq!(rx_fit(100, [40, 40, 20], true), RxFit::Fits(3));
        assert_eq!(rx_fit(100, [40, 40, 30, 50], true), RxFit::Fits(3));
        assert_eq!(rx_fit(12, [4096], true), RxFit::Fits(1));
        assert_eq!(rx_fit(100, [u64::MAX, u64::MAX], true), RxFit::Fits(1));
        // num_buffers is 16 bits.
        let many = std::iter::repeat_n(1u64, 70_000);
        assert_eq!(rx_fit(69_000, many, true), RxFit::TooSmall);
    }

    const CSUM: u64 = 1 << vn::VIRTIO_NET_F_GUEST_CSUM;
    const TSO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO4;
    const ECN: u64 = 1 << vn::VIRTIO_NET_F_GUEST_ECN;
    const USO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_USO6;

    fn hdr(flags: u8, gso: u8) -> [u8; NET_HDR_LEN] {
        let mut h = [0xeeu8; NET_HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h
    }

    #[test]
    fn receive_headers_follow_the_features() {
        let needs = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        let valid = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
        let tcp4 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        let ecn = vn::VIRTIO_NET_HDR_GSO_ECN as u8;
        // Plain packet, no offloads: flags cleared, num_buffers set, the
        // rest left alone.
        let mut h = hdr(valid, 0);
        prepare_rx_header(&mut h, 0).expect("plain");
        set_num_buffers(&mut h, 0x103);
        assert_eq!(h[0], 0);
        assert_eq!(&h[10..], &[3, 1]);
        assert_eq!(h[2], 0xee);
        set_num_buffers(&mut h[..11], 7);
        assert_eq!(&h[10..], &[3, 1]);
        // DATA_VALID survives with GUEST_CSUM; unknown flag bits do not.
        let mut h = hdr(valid | 0x80, 0);
        prepare_rx_header(&mut h, CSUM).expect("csum");
        assert_eq!(h[0], valid);
        // A partial checksum needs GUEST_CSUM.
        let mut h = hdr(needs, 0);
        assert_eq!(
            prepare_rx_header(&mut h, 0),
            Err(RxHeaderError::ChecksumNotNegotiated)
        );
        assert!(prepare_rx_header(&mut h, CSUM).is_ok());
        // GSO types need their feature; ECN needs its own.
        assert_eq!(
            check_rx_header(&hdr(needs, tcp4), CSUM),
            Err(RxHeaderError::GsoNotNegotiated(tcp4))
        );
        assert!(check_rx_header(&hdr(needs, tcp4), CSUM | TSO4).is_ok());
        assert!(check_rx_header(&hdr(needs, tcp4 | ecn), CSUM | TSO4).is_err());
        assert!(check_rx_header(&hdr(needs, tcp4 | ecn), CSUM | TSO4 | ECN).is_ok());
        let uso = vn::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
        assert!(check_rx_header(&hdr(needs, uso), CSUM).is_err());
        assert!(check_rx_header(&hdr(needs, uso), CSUM | USO6).is_ok());
        assert!(check_rx_header(&hdr(needs, 0x42), u64::MAX).is_err());
        assert_eq!(
            check_rx_header(&[0; 4], u64::MAX),
            Err(RxHeaderError::Short)
        );
        assert_eq!(
            prepare_rx_header(&mut [0; 4], u64::MAX),
            Err(RxHeaderError::Short)
        );
    }

    #[test]
    fn mtu_limits_plain_packets_only() {
        let plain = hdr(0, 0);
        let limit = NET_HDR_LEN + 1500 + ETH_VLAN_HLEN;
        assert!(!exceeds_mtu(&plain, limit, 1500));
        assert!(exceeds_mtu(&plain, limit + 1, 1500));
        let gso = hdr(1, vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8);
        assert!(!exceeds_mtu(&gso, 60_000, 1500));
        let ecn_only = hdr(0, vn::VIRTIO_NET_HDR_GSO_ECN as u8);
        assert!(exceeds_mtu(&ecn_only, 60_000, 1500));
        assert!(!exceeds_mtu(&[], 0, 68));
    }

    #[test]
    fn control_commands() {
        let mq = vn::VIRTIO_NET_CTRL_MQ as u8;
        let rx = vn::VIRTIO_NET_CTRL_RX as u8;
        let mac = vn::VIRTIO_NET_CTRL_MAC as u8;
        assert_eq!(parse_ctrl(&[mq, 0, 4, 0]), CtrlCommand::MqPairsSet(4));
        assert_eq!(parse_ctrl(&[mq, 0, 0, 1]), CtrlCommand::MqPairsSet(256));
        assert_eq!(
            parse_ctrl(&[mq, 0, 4]),
            CtrlCommand::Unsupported {
                class: mq,
                command: 0
            }
        );
        assert_eq!(
            parse_ctrl(&[mq, 1, 4, 0]),
            CtrlCommand::Unsupported {
                class: mq,
                command: 1
            }
        );
        assert_eq!(
            parse_ctrl(&[rx, 0, 1]),
            CtrlCommand::RxMode {
                command: 0,
                on: true
            }
        );
        assert_eq!(
            parse_ctrl(&[rx, 5, 0]),
            CtrlCommand::RxMode {
                command: 5,
                on: false
            }
        );
        assert!(matches!(
            parse_ctrl(&[rx, 6, 0]),
            CtrlCommand::Unsupported { .. }
        ));
        assert!(matches!(
            parse_ctrl(&[rx, 0]),
            CtrlCommand::Unsupported { .. }
        ));
        assert_eq!(parse_ctrl(&[mac, 0]), CtrlCommand::MacTableSet);
        assert!(matches!(
            parse_ctrl(&[mac, 1, 0, 0]),
            CtrlCommand::Unsupported { .. }
        ));
        assert_eq!(parse_ctrl(&[mq]), CtrlCommand::Malformed);
        assert_eq!(parse_ctrl(&[]), CtrlCommand::Malformed);
    }
}
