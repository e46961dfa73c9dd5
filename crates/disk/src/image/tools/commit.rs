//! [`commit`]: writes what the upper layers of a chain store into a lower
//! layer (the base), so that the base reads as the top image does.
//!
//! Emptying the top image afterwards (qemu-img commit's default) is the
//! caller's step: it needs the format (`Qcow2::make_empty`).

use std::sync::Arc;

use super::chain::{chain_status, Source};
use super::{Progress, CHUNK};
use crate::image::{chain, Allocation, Image, ImageError};

/// What a commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Bytes of data written into the base.
    pub data_bytes: u64,
    /// Bytes made to read as zeros in the base.
    pub zero_bytes: u64,
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("layer {depth} is not in the backing chain ({layers} layers)")]
    NoSuchLayer { depth: usize, layers: usize },
    #[error("the base ({base} bytes) is smaller than the image ({top} bytes); grow it first")]
    BaseTooSmall { base: u64, top: u64 },
    #[error("error while reading block status at offset {offset}")]
    Status {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while reading at offset {offset}")]
    Read {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while writing into the base at offset {offset}")]
    Write {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while flushing the base")]
    Flush(#[source] ImageError),
}

/// Copies into layer `base_depth` of `top`'s chain (opened writable) every
/// range that a layer above it stores, data or zeros, as `top` reads it.
/// Flushes the base at the end. Progress is in bytes to commit.
pub fn commit(
    top: &Arc<dyn Image>,
    base_depth: usize,
    progress: Progress<'_>,
) -> Result<CommitStats, CommitError> {
    let layers = chain(top);
    if base_depth == 0 || base_depth >= layers.len() {
        return Err(CommitError::NoSuchLayer {
            depth: base_depth,
            layers: layers.len(),
        });
    }
    let base = &layers[base_depth];
    let above = &layers[..base_depth];
    let size = top.size();
    if base.size() < size {
        return Err(CommitError::BaseTooSmall {
            base: base.size(),
            top: size,
        });
    }
    // Plan first, for the progress total: (start, len, data?).
    let mut plan: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let st = chain_status(above, pos, size - pos).map_err(|source| CommitError::Status {
            offset: pos,
            source,
        })?;
        let data = match st.source {
            Source::Below => None,
            Source::Layer {
                allocation: Allocation::Data { .. },
                ..
            } => Some(true),
            Source::Layer { .. } | Source::PastEnd { .. } => Some(false),
        };
        if let Some(data) = data {
            match plan.last_mut() {
                Some(last) if last.2 == data && last.0 + last.1 == pos => last.1 += st.len,
                _ => plan.push((pos, st.len, data)),
            }
        }
        pos += st.len;
    }
    let total: u64 = plan.iter().map(|p| p.1).sum();
    let mut stats = CommitStats::default();
    let mut done = 0;
    progress(0, total);
    let mut buf = vec![0u8; CHUNK as usize];
    for (start, len, data) in plan {
        if !data {
            base.write_zeroes(start, len, true)
                .map_err(|source| CommitError::Write {
                    offset: start,
                    source,
                })?;
            stats.zero_bytes += len;
            done += len;
            progress(done, total);
            continue;
        }
        let mut pos = start;
        while pos < start + len {
            let n = (start + len - pos).min(CHUNK - pos % CHUNK) as usize;
            top.read_at(&mut buf[..n], pos)
                .map_err(|source| CommitError::Read {
                    offset: pos,
                    source,
                })?;
            base.write_at(&buf[..n], pos)
                .map_err(|source| CommitError::Write {
                    offset: pos,
                    source,
                })?;
            pos += n as u64;
            stats.data_bytes += n as u64;
            done += n as u64;
            progress(done, total);
        }
    }
    base.flush().map_err(CommitError::Flush)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tools::testutil::{contents, qcow2_on, raw_with, TempDir};
    use crate::image::{open, ImageOptions, Qcow2, RawImage};
    use std::path::Path;

    /// Opens `top`'s chain with layer `base_depth` writable.
    fn chain_with_writable_base(paths: &[&Path], base_depth: usize) -> Arc<dyn Image> {
        let mut below: Option<Arc<dyn Image>> = None;
        for (depth, path) in paths.iter().enumerate().rev() {
            let writable = depth == base_depth;
            let layer: Arc<dyn Image> = if path.extension().is_some_and(|e| e == "raw") {
                Arc::new(RawImage::open(path, !writable).expect("open raw"))
            } else {
                let mut q = Qcow2::open(path, !writable).expect("open qcow2");
                q.set_backing(below.take());
                Arc::new(q)
            };
            below = Some(layer);
        }
        below.expect("layers")
    }

    #[test]
    fn commit_into_the_immediate_backing_file() {
        let dir = TempDir::new("commit");
        let size = 4 << 20;
        let base = raw_with(&dir, "base.raw", size, &[(0, 1 << 20, 1)]);
        let top = qcow2_on(
            &dir,
            "top.qcow2",
            size,
            Some(&base),
            &[(512 << 10, 100 << 10, 2)],
        );
        {
            let img = open(
                &top,
                &ImageOptions {
                    read_only: false,
                    ..Default::default()
                },
            )
            .expect("open");
            img.write_zeroes(0, 65536, false).expect("zero");
        }
        let expect = contents(&top);
        let image = chain_with_writable_base(&[&top, &base], 1);
        let stats = commit(&image, 1, &super::super::no_progress).expect("commit");
        drop(image);
        assert_eq!(std::fs::read(&base).expect("read base"), expect);
        assert_eq!(stats.zero_bytes, 65536);
        assert_eq!(stats.data_bytes, 128 << 10);
    }

    #[test]
    fn commit_through_an_intermediate_layer() {
        let dir = TempDir::new("commit-deep");
        let size = 2 << 20;
        let base = qcow2_on(&dir, "base.qcow2", size, None, &[(0, size, 1)]);
        let mid = qcow2_on(&dir, "mid.qcow2", size, Some(&base), &[(0, 65536, 2)]);
        let top = qcow2_on(&dir, "top.qcow2", size, Some(&mid), &[(1 << 20, 4096, 3)]);
        let expect = contents(&top);
        let image = chain_with_writable_base(&[&top, &mid, &base], 2);
        commit(&image, 2, &super::super::no_progress).expect("commit");
        drop(image);
        assert_eq!(contents(&base), expect);
        let image = open(&top, &ImageOptions::default()).expect("open");
        assert!(matches!(
            commit(&image, 3, &super::super::no_progress),
            Err(CommitError::NoSuchLayer { .. })
        ));
    }
}
