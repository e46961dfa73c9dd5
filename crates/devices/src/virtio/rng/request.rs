//! Parsing an entropy request (pure).

use crate::virtio::queue::{Chain, ChainError, GuestBuffer};

/// Most bytes served per chain: bounds the host work one guest request
/// causes. Linux asks for less (its buffers are a cache line to a page).
pub const MAX_REQUEST_BYTES: u32 = 4096;

/// Where to put the entropy for one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngRequest {
    /// The device-writable buffers, cut to [`MAX_REQUEST_BYTES`] in total.
    pub buffers: Vec<GuestBuffer>,
    /// Their total length.
    pub len: u32,
}

/// The request a chain makes. Every buffer must be device-writable.
pub fn parse(chain: &Chain) -> Result<RngRequest, ChainError> {
    if !chain.readable.is_empty() {
        return Err(ChainError::UnexpectedReadable);
    }
    let mut left = MAX_REQUEST_BYTES;
    let mut buffers = Vec::new();
    for b in &chain.writable {
        if left == 0 {
            break;
        }
        let len = b.len.min(left);
        buffers.push(GuestBuffer { addr: b.addr, len });
        left -= len;
    }
    Ok(RngRequest {
        buffers,
        len: MAX_REQUEST_BYTES - left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn buf(addr: u64, len: u32) -> GuestBuffer {
        GuestBuffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn requests_are_bounded() {
        let chain = Chain {
            head: 3,
            readable: vec![],
            writable: vec![buf(0x1000, 3000), buf(0x2000, 3000), buf(0x3000, 10)],
        };
        let r = parse(&chain).expect("valid");
        assert_eq!(r.len, MAX_REQUEST_BYTES);
        assert_eq!(r.buffers, vec![buf(0x1000, 3000), buf(0x2000, 1096)]);
        let empty = Chain::default();
        assert_eq!(parse(&empty).expect("valid").len, 0);
    }

    #[test]
    fn readable_buffers_are_refused() {
        let chain = Chain {
            head: 0,
            readable: vec![buf(0x1000, 8)],
            writable: vec![buf(0x2000, 8)],
        };
        assert_eq!(parse(&chain), Err(ChainError::UnexpectedReadable));
    }
}
