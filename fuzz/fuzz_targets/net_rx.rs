//! virtio-net receive: a packet as the TAP hands it over (virtio header
//! included) and the guest's receive chains, through the pure logic of
//! `net::request`: header checks against the negotiated features, the MTU
//! check, and `rx_fit` planning over the chains `ActiveQueues` hands out,
//! with the packet then copied into them as the device's `deliver` does.
//!
//! The device itself needs a TAP (see net_tx.rs), hence this pure target.
//!
//! Input: 16 bytes of receive parameters, then the virtqueue input of
//! src/lib.rs:
//!
//! ```text
//! bytes 0-7    negotiated features (le64; bit 15 MRG_RXBUF, 1 GUEST_CSUM, ...)
//! bytes 8-9    MTU (le16; 0: VIRTIO_NET_F_MTU not negotiated)
//! bytes 10-11  packet offset in the memory image (le16)
//! bytes 12-13  packet length (le16, cut to the image)
//! bytes 14-15  unused
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::net::request::{
    check_rx_header, exceeds_mtu, prepare_rx_header, rx_fit, set_num_buffers, RxFit, RxHeaderError,
    MAX_PACKET_LEN, NET_HDR_LEN,
};
use vireo_devices::virtio::queue::{ActiveQueues, Chain, QueueError};
use vireo_fuzz::{assert_chain_sane, FuzzQueue, MockInterrupt, HEADER_LEN};
use vm_memory::Bytes;

const PREFIX_LEN: usize = 16;
const GUEST_CSUM: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM;
const MRG_RXBUF: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
const NEEDS_CSUM: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_DATA_VALID as u8;

fuzz_target!(|data: &[u8]| {
    let Some((prefix, rest)) = data.split_at_checked(PREFIX_LEN) else {
        return;
    };
    let le16 = |i: usize| u16::from_le_bytes([prefix[i], prefix[i + 1]]);
    let features = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    let mtu = Some(le16(8)).filter(|&m| m != 0);
    let image = rest.get(HEADER_LEN..).unwrap_or_default();
    let start = usize::from(le16(10)).min(image.len());
    let end = (start + usize::from(le16(12))).min(image.len());
    let original = &image[start..end];
    assert!(original.len() <= MAX_PACKET_LEN);

    // The header checks: prepare = check + masking, and nothing else moves.
    let mut packet = original.to_vec();
    let checked = check_rx_header(original, features);
    let prepared = prepare_rx_header(&mut packet, features);
    assert_eq!(checked, prepared);
    match prepared {
        Err(RxHeaderError::Short) => {
            assert!(original.len() < NET_HDR_LEN);
            return;
        }
        Err(_) => {
            assert_eq!(packet, original, "a refused header is left alone");
            return;
        }
        Ok(()) => {
            let allowed = if features & GUEST_CSUM != 0 {
                NEEDS_CSUM | DATA_VALID
            } else {
                0
            };
            assert_eq!(packet[0], original[0] & allowed);
            assert_eq!(packet[1..], original[1..]);
        }
    }
    if let Some(mtu) = mtu {
        let over = exceeds_mtu(&packet, packet.len(), mtu);
        // Longer never fits where shorter does not.
        assert!(!over || exceeds_mtu(&packet, packet.len() + 1, mtu));
        if over {
            return;
        }
    }

    let Some(mut fq) = FuzzQueue::new(rest) else {
        return;
    };
    let mergeable = features & MRG_RXBUF != 0;
    let size = fq.size;
    let queue = std::mem::take(&mut fq.queue);
    let mut a = ActiveQueues::new("fuzz", fq.mem.clone(), vec![queue], MockInterrupt::new());
    let len = packet.len();
    let mut held: Vec<Chain> = Vec::new();
    for _ in 0..4 * u32::from(size) {
        let caps: Vec<u64> = held.iter().map(Chain::writable_len).collect();
        match rx_fit(len, caps.iter().copied(), mergeable) {
            RxFit::Fits(n) => {
                assert!(n >= 1 && n <= held.len() && n <= usize::from(u16::MAX));
                if !mergeable {
                    assert_eq!(n, 1);
                }
                let before: u64 = caps[..n - 1].iter().sum();
                assert!(before < len as u64, "more chains than needed");
                assert!(before + caps[n - 1] >= len as u64, "too few chains");
                deliver(&mut a, &fq, &mut packet, held.drain(..n), n);
                return;
            }
            RxFit::TooSmall => {
                assert!(!held.is_empty());
                assert!(!mergeable && caps[0] < len as u64 || held.len() > 0xffff);
                return;
            }
            RxFit::NeedMore => {
                if !mergeable {
                    assert!(held.is_empty());
                } else {
                    assert!(caps.iter().sum::<u64>() < len as u64);
                }
                match a.pop(0) {
                    Ok(Some(chain)) => {
                        assert_chain_sane(&fq.mem, &chain, size);
                        if !chain.readable.is_empty() {
                            // The device breaks here.
                            return;
                        }
                        if chain.writable_len() < NET_HDR_LEN as u64 {
                            a.add_used(0, chain.head, 0).expect("head in range");
                            continue;
                        }
                        held.push(chain);
                    }
                    Ok(None) | Err(QueueError::Chain(_) | QueueError::Ring(_)) => return,
                    Err(e @ QueueError::NoSuchQueue(_)) => panic!("{e}"),
                }
            }
        }
    }
});

/// Copies the packet into `chains` with `num_buffers` = `n`, as the
/// device's `deliver` does, and reads it back.
fn deliver(
    a: &mut ActiveQueues,
    fq: &FuzzQueue,
    packet: &mut [u8],
    chains: impl Iterator<Item = Chain>,
    n: usize,
) {
    set_num_buffers(packet, n as u16);
    assert_eq!(packet[10..12], (n as u16).to_le_bytes());
    let chains: Vec<Chain> = chains.collect();
    let mut off = 0;
    for chain in &chains {
        let mut written = 0usize;
        for b in &chain.writable {
            if off == packet.len() {
                break;
            }
            let k = (b.len as usize).min(packet.len() - off);
            fq.mem
                .write_slice(&packet[off..off + k], b.addr)
                .expect("parse_chain checked the buffer");
            off += k;
            written += k;
        }
        a.add_used(0, chain.head, written as u32)
            .expect("head in range");
    }
    assert_eq!(off, packet.len(), "the planned chains hold the packet");
}
