//! Checking console chains (pure).

use crate::virtio::queue::{Chain, ChainError, GuestBuffer};

/// The buffers of a transmit chain: the device only reads them.
pub fn transmit_buffers(chain: &Chain) -> Result<&[GuestBuffer], ChainError> {
    if !chain.writable.is_empty() {
        return Err(ChainError::UnexpectedWritable);
    }
    Ok(&chain.readable)
}

/// The buffers of a receive chain: the device only writes them.
pub fn receive_buffers(chain: &Chain) -> Result<&[GuestBuffer], ChainError> {
    if !chain.readable.is_empty() {
        return Err(ChainError::UnexpectedReadable);
    }
    Ok(&chain.writable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn directions_are_enforced() {
        let b = GuestBuffer {
            addr: GuestAddress(0x1000),
            len: 4,
        };
        let tx = Chain {
            head: 0,
            readable: vec![b],
            writable: vec![],
        };
        let rx = Chain {
            head: 0,
            readable: vec![],
            writable: vec![b],
        };
        assert_eq!(transmit_buffers(&tx), Ok(&[b][..]));
        assert_eq!(receive_buffers(&rx), Ok(&[b][..]));
        assert_eq!(transmit_buffers(&rx), Err(ChainError::UnexpectedWritable));
        assert_eq!(receive_buffers(&tx), Err(ChainError::UnexpectedReadable));
    }
}
