//! [`chain_status`]: which layer of a backing chain decides a range.

use std::sync::Arc;

use crate::image::{Allocation, Image, ImageError};

/// Where the contents of a range come from, looking down a chain (or a
/// slice of one) from the top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Layer `depth` stores it: data ([`Allocation::Data`]) or zeros
    /// ([`Allocation::Zero`]).
    Layer {
        depth: usize,
        allocation: Allocation,
    },
    /// Zeros: layer `depth` leaves the range to its backing file, which ends
    /// before the range starts.
    PastEnd { depth: usize },
    /// No layer of the slice stores it: it comes from below the slice, and
    /// reads as zeros when the last layer has no backing file.
    Below,
}

/// One answer of [`chain_status`]: the first `len` bytes of the asked range
/// share `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainStatus {
    pub len: u64,
    pub source: Source,
}

impl ChainStatus {
    /// Whether the range reads as zeros without reading it, assuming nothing
    /// lies below the slice.
    pub fn known_zero(&self) -> bool {
        match self.source {
            Source::Layer { allocation, .. } => allocation == Allocation::Zero,
            Source::PastEnd { .. } | Source::Below => true,
        }
    }
}

/// How the range `offset..offset+len` (non-empty, within `chain[0]`) is
/// decided by the layers of `chain`, top first: the status of the longest
/// leading part that one answer covers.
pub fn chain_status(
    chain: &[Arc<dyn Image>],
    offset: u64,
    len: u64,
) -> Result<ChainStatus, ImageError> {
    let mut len = len;
    for (depth, layer) in chain.iter().enumerate() {
        let size = layer.size();
        if depth > 0 && offset >= size {
            return Ok(ChainStatus {
                len,
                source: Source::PastEnd { depth: depth - 1 },
            });
        }
        if depth > 0 {
            len = len.min(size - offset);
        }
        let status = layer.block_status(offset, len)?;
        if status.len == 0 {
            return Err(ImageError::Corrupt {
                path: layer.path().to_owned(),
                what: format!("block status at offset {offset} describes no bytes"),
            });
        }
        len = len.min(status.len);
        if status.allocation != Allocation::Unallocated {
            return Ok(ChainStatus {
                len,
                source: Source::Layer {
                    depth,
                    allocation: status.allocation,
                },
            });
        }
    }
    Ok(ChainStatus {
        len,
        source: Source::Below,
    })
}

/// Reads `buf.len()` bytes of `image`'s virtual disk at `offset`, zeros past
/// its end (how a layer reads a shorter backing file); `None` reads zeros.
pub(crate) fn read_view(
    image: Option<&Arc<dyn Image>>,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ImageError> {
    let Some(image) = image else {
        buf.fill(0);
        return Ok(());
    };
    let avail = image.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    if avail > 0 {
        image.read_at(&mut buf[..avail], offset)?;
    }
    buf[avail..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tools::testutil::{qcow2_on, raw_with, TempDir};
    use crate::image::{chain, open, ImageOptions};

    #[test]
    fn statuses_name_the_deciding_layer() {
        let dir = TempDir::new("chain-status");
        // base: raw 1 MiB with data in the first 64 KiB.
        let base = raw_with(&dir, "base.raw", 1 << 20, &[(0, 65536, 0xaa)]);
        // top: 4 MiB qcow2 over it, data at 2 MiB.
        let top = qcow2_on(
            &dir,
            "top.qcow2",
            4 << 20,
            Some(&base),
            &[(2 << 20, 65536, 0xbb)],
        );
        let image = open(&top, &ImageOptions::default()).expect("open chain");
        let layers = chain(&image);
        let st = chain_status(&layers, 0, 4 << 20).expect("status");
        assert_eq!(st.len, 65536);
        assert!(matches!(
            st.source,
            Source::Layer {
                depth: 1,
                allocation: Allocation::Data { .. }
            }
        ));
        // The raw hole after the data: zeros decided by the raw layer.
        let st = chain_status(&layers, 65536, (4 << 20) - 65536).expect("status");
        assert_eq!(st.len, (1 << 20) - 65536);
        assert!(st.known_zero());
        // Past the raw file's end: zeros because of the top layer.
        let st = chain_status(&layers, 1 << 20, 1 << 20).expect("status");
        assert_eq!(
            st,
            ChainStatus {
                len: 1 << 20,
                source: Source::PastEnd { depth: 0 }
            }
        );
        let st = chain_status(&layers, 2 << 20, 1 << 20).expect("status");
        assert_eq!(st.len, 65536);
        assert!(matches!(st.source, Source::Layer { depth: 0, .. }));
        // Only the top: the base's data is "below".
        let st = chain_status(&layers[..1], 0, 1 << 20).expect("status");
        assert_eq!(
            st,
            ChainStatus {
                len: 1 << 20,
                source: Source::Below
            }
        );
    }
}
