//! virtio-net transmit and control chains, from the fuzz input's virtqueue
//! (layout in src/lib.rs), through the pure checks of `net::request`.
//!
//! The device itself needs a TAP (`Tap::for_test`, the socket stand-in its
//! unit tests use, is private to the crate), so this target drives the pure
//! module on chains exactly as `ActiveQueues` hands them out, the way the
//! device's `transmit` and `serve_ctrl` call it.
//!
//! Header byte 1, bit 3 (`flags` bit 0): the queue is the control queue
//! rather than a transmit queue.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::net::request::{
    check_tx, parse_ctrl, CtrlCommand, TxDrop, CTRL_READ_LEN, MAX_PACKET_LEN, NET_HDR_LEN,
};
use vireo_devices::virtio::queue::{ActiveQueues, Chain, QueueError};
use vireo_devices::virtio::GuestMemoryMmap;
use vireo_fuzz::{assert_chain_sane, FuzzQueue, MockInterrupt};
use vm_memory::Bytes;

fuzz_target!(|data: &[u8]| {
    let Some(mut fq) = FuzzQueue::new(data) else {
        return;
    };
    let ctrl = fq.flags & 1 != 0;
    let size = fq.size;
    let queue = std::mem::take(&mut fq.queue);
    let mut a = ActiveQueues::new("fuzz", fq.mem.clone(), vec![queue], MockInterrupt::new());
    for _ in 0..4 * u32::from(size) {
        match a.pop(0) {
            Ok(Some(chain)) => {
                assert_chain_sane(&fq.mem, &chain, size);
                let used = if ctrl {
                    control(&fq.mem, &chain)
                } else {
                    transmit(&chain);
                    0
                };
                a.add_used(0, chain.head, used).expect("head in range");
            }
            Ok(None) | Err(QueueError::Chain(_) | QueueError::Ring(_)) => break,
            Err(e @ QueueError::NoSuchQueue(_)) => panic!("{e}"),
        }
    }
});

/// `check_tx` accepts exactly the readable-only chains of a header to a
/// header plus the largest frame, and says why it drops the others.
fn transmit(chain: &Chain) {
    let len = chain.readable_len();
    match check_tx(chain) {
        Ok(n) => {
            assert!(chain.writable.is_empty());
            assert_eq!(n as u64, len);
            assert!((NET_HDR_LEN..=MAX_PACKET_LEN).contains(&n));
        }
        Err(TxDrop::WritableBuffers) => assert!(!chain.writable.is_empty()),
        Err(TxDrop::TooShort(n)) => {
            assert!(chain.writable.is_empty());
            assert_eq!(n, len);
            assert!(n < NET_HDR_LEN as u64);
        }
        Err(TxDrop::TooLong(n)) => {
            assert!(chain.writable.is_empty());
            assert_eq!(n, len);
            assert!(n > MAX_PACKET_LEN as u64);
        }
    }
}

/// A control command: the first `CTRL_READ_LEN` readable bytes decoded as
/// the device does, the ack going to the first writable byte.
fn control(mem: &GuestMemoryMmap, chain: &Chain) -> u32 {
    let Some(ack) = chain.writable.first() else {
        return 0;
    };
    let mut data = [0u8; CTRL_READ_LEN];
    let mut got = 0;
    for b in &chain.readable {
        if got == data.len() {
            break;
        }
        let n = (data.len() - got).min(b.len as usize);
        mem.read_slice(&mut data[got..got + n], b.addr)
            .expect("parse_chain checked the buffer");
        got += n;
    }
    let cmd = parse_ctrl(&data[..got]);
    match cmd {
        CtrlCommand::Malformed => assert!(got < 2),
        CtrlCommand::MqPairsSet(n) => {
            assert_eq!(got, 4);
            assert_eq!(n, u16::from_le_bytes([data[2], data[3]]));
        }
        CtrlCommand::RxMode { command, .. } => {
            assert!(got >= 3);
            assert_eq!(command, data[1]);
        }
        CtrlCommand::MacTableSet => assert!(got >= 2),
        CtrlCommand::Unsupported { class, command } => {
            assert!(got >= 2);
            assert_eq!((class, command), (data[0], data[1]));
        }
    }
    // The same bytes decode the same way.
    assert_eq!(parse_ctrl(&data[..got]), cmd);
    mem.write_obj(0u8, ack.addr)
        .expect("parse_chain checked the buffer");
    1
}
