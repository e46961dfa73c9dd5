//! The virtqueue as a device sees it: `ActiveQueues` over a split ring whose
//! descriptor table, avail ring and indirect tables come from the input
//! (layout in src/lib.rs).
//!
//! Round 1 pops chain after chain with `ActiveQueues::pop` and compares each
//! result with the reference model `expected_chain` (so a buffer outside
//! memory, a readable buffer after a writable one or a broken chain must be
//! reported exactly as the spec says), returning each good chain to the used
//! ring. Round 2 makes `extra` more chains available (wrapping the ring, or
//! jumping past it) and serves them with `ActiveQueues::drain`, the batching
//! loop devices use. Both must end, and a failure must break the device once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_devices::virtio::queue::{ActiveQueues, QueueError};
use vireo_fuzz::{assert_chain_sane, expected_chain, FuzzQueue, MockInterrupt};

fuzz_target!(|data: &[u8]| {
    let Some(mut fq) = FuzzQueue::new(data) else {
        return;
    };
    let size = fq.size;
    let irq = MockInterrupt::new();
    let queue = std::mem::take(&mut fq.queue);
    let mut a = ActiveQueues::new("fuzz", fq.mem.clone(), vec![queue], irq.clone());

    // Round 1: pop until the ring is empty or the driver broke the device.
    let mut next_avail = 0u16;
    let mut popped = 0u32;
    loop {
        // The used ring may overlap the avail ring or the table: the device's
        // own writes can change what comes next, so look right before popping.
        let pending = fq.avail_idx().wrapping_sub(next_avail);
        let got = a.pop(0);
        if pending > size {
            assert!(
                matches!(got, Err(QueueError::Ring(_))),
                "avail index {pending} ahead of a {size}-entry ring, got {got:?}"
            );
            a.fail(0, &got.expect_err("checked"));
            break;
        }
        if pending == 0 {
            assert!(matches!(got, Ok(None)), "empty ring, got {got:?}");
            break;
        }
        let head = fq.avail_head(next_avail);
        let want = expected_chain(&fq.mem, fq.desc, size, head);
        next_avail = next_avail.wrapping_add(1);
        match (got, want) {
            (Ok(Some(chain)), Ok(want)) => {
                assert_eq!(chain, want, "head {head}");
                assert_chain_sane(&fq.mem, &chain, size);
                let len = u32::try_from(chain.writable_len()).expect("below 4 GiB");
                a.add_used(0, chain.head, len)
                    .expect("a parsed chain's head is in range and the used ring in memory");
            }
            (Err(QueueError::Chain(e)), Err(want)) => {
                assert_eq!(e, want, "head {head}");
                a.fail(0, &QueueError::Chain(e));
                break;
            }
            (got, want) => panic!("head {head}: got {got:?}, the model says {want:?}"),
        }
        popped += 1;
        // With the used ring over the avail index, the device's own writes
        // can keep publishing chains; a device bounds that with drain's
        // budget, and so does this loop.
        if popped >= 4 * u32::from(size) {
            break;
        }
    }
    if popped > 0 {
        // One used entry per good chain (nothing else writes the used index).
        assert_eq!(fq.used_idx(), popped as u16);
    }

    // Round 2: more chains, served by drain.
    if !a.is_broken() && fq.extra != 0 {
        fq.set_avail_idx(next_avail.wrapping_add(u16::from(fq.extra)));
        let mut served = 0usize;
        let res = a.drain(0, |m, chain| {
            assert_chain_sane(m, chain, size);
            served += 1;
            Ok(u32::try_from(chain.writable_len()).expect("below 4 GiB"))
        });
        match res {
            Ok(n) => {
                assert_eq!(n, served);
                assert!(n <= 4 * usize::from(size), "drain is bounded");
            }
            Err(e) => a.fail(0, &e),
        }
    }

    // A failure breaks the device exactly once, and then nothing is usable.
    if a.is_broken() {
        assert_eq!(irq.needs_reset_count(), 1);
        assert!(!a.usable(0));
    } else {
        assert_eq!(irq.needs_reset_count(), 0);
    }
});
