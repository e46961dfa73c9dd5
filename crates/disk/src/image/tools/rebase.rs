//! [`rebase`]: prepares an image for a new backing file without changing
//! what it reads.
//!
//! Every range the image does not store itself is read through its backing
//! chain. Before the chain is swapped, each such range whose contents
//! differ between the old chain and the new one is copied into the image,
//! so afterwards the image reads exactly as before. Ranges that cannot
//! differ are not read: zeros on both sides, and (when the new backing file
//! is part of the old chain) whatever the layers between decide nothing
//! about.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::chain::{chain_status, read_view, Source};
use super::{Progress, CHUNK};
use crate::image::{chain, Allocation, Image, ImageError};

/// What a rebase did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebaseStats {
    /// Bytes copied into the image.
    pub copied_bytes: u64,
}

/// Why a rebase failed.
#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    #[error("error while reading block status at offset {offset}")]
    Status {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while reading the old backing file at offset {offset}")]
    ReadOld {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while reading the new backing file at offset {offset}")]
    ReadNew {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while writing at offset {offset}")]
    Write {
        offset: u64,
        #[source]
        source: ImageError,
    },
    #[error("error while flushing the image")]
    Flush(#[source] ImageError),
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// How many bytes from `pos` (at most `len`) read as zeros through
/// `layers` (a whole chain, top first; empty: no backing file), and
/// whether they are known to (`false`: they may hold data).
fn zero_run(layers: &[Arc<dyn Image>], pos: u64, len: u64) -> Result<(u64, bool), ImageError> {
    let Some(top) = layers.first() else {
        return Ok((len, true));
    };
    if pos >= top.size() {
        return Ok((len, true));
    }
    let st = chain_status(layers, pos, len.min(top.size() - pos))?;
    Ok((st.len, st.known_zero()))
}

/// Copies into `image` (writable, opened over its current backing chain)
/// every range it does not store whose contents differ between its
/// current backing chain and `new_backing` (`None`: no backing file, which
/// reads as zeros). `cluster` is the image's allocation unit: a differing
/// cluster is copied whole. Flushes the image at the end.
///
/// Afterwards the caller records the new backing file in the header.
/// Progress is reported in bytes of the virtual disk examined.
pub fn rebase(
    image: &Arc<dyn Image>,
    new_backing: Option<&Arc<dyn Image>>,
    cluster: u64,
    progress: Progress<'_>,
) -> Result<RebaseStats, RebaseError> {
    let size = image.size();
    let cluster = cluster.max(512);
    let old_chain = chain(image);
    let old_layers = &old_chain[1..];
    let new_chain = new_backing.map(chain).unwrap_or_default();
    // The new backing file may be a layer of the old chain (say, dropping an
    // intermediate image): ranges the layers above it leave alone read
    // the same through both.
    let shared = new_backing.and_then(|nb| {
        old_layers
            .iter()
            .position(|l| l.format() == nb.format() && same_file(l.path(), nb.path()))
    });
    let mut stats = RebaseStats::default();
    let mut old_buf = vec![0u8; CHUNK as usize];
    let mut new_buf = vec![0u8; CHUNK as usize];
    let status_err = |offset| move |source| RebaseError::Status { offset, source };
    progress(0, size);
    let mut pos = 0;
    while pos < size {
        let top = image
            .block_status(pos, (size - pos).min(CHUNK))
            .map_err(status_err(pos))?;
        let mut len = top.len;
        if top.allocation != Allocation::Unallocated {
            pos += len;
            progress(pos, size);
            continue;
        }
        if let Some(k) = shared {
            let st = chain_status_from(old_layers, k, pos, len).map_err(status_err(pos))?;
            len = st.0;
            if st.1 {
                pos += len;
                progress(pos, size);
                continue;
            }
        }
        let (n_old, z_old) = zero_run(old_layers, pos, len).map_err(status_err(pos))?;
        let (n_new, z_new) = zero_run(&new_chain, pos, len).map_err(status_err(pos))?;
        if z_old && z_new {
            pos += n_old.min(n_new);
            progress(pos, size);
            continue;
        }
        let n = len as usize;
        read_view(image.backing(), pos, &mut old_buf[..n]).map_err(|source| {
            RebaseError::ReadOld {
                offset: pos,
                source,
            }
        })?;
        read_view(new_backing, pos, &mut new_buf[..n]).map_err(|source| RebaseError::ReadNew {
            offset: pos,
            source,
        })?;
        let mut rel = 0usize;
        while rel < n {
            let abs = pos + rel as u64;
            let piece = ((cluster - abs % cluster) as usize).min(n - rel);
            let (old, new) = (&old_buf[rel..rel + piece], &new_buf[rel..rel + piece]);
            if old != new {
                image
                    .write_at(old, abs)
                    .map_err(|source| RebaseError::Write {
                        offset: abs,
                        source,
                    })?;
                stats.copied_bytes += piece as u64;
            }
            rel += piece;
        }
        pos += len;
        progress(pos, size);
    }
    image.flush().map_err(RebaseError::Flush)?;
    Ok(stats)
}

/// Over the layers of `old_layers` above index `k`: the length of the
/// leading run from `pos`, and whether none of them decides it (so it reads
/// through to layer `k`).
fn chain_status_from(
    old_layers: &[Arc<dyn Image>],
    k: usize,
    pos: u64,
    len: u64,
) -> Result<(u64, bool), ImageError> {
    if k == 0 {
        return Ok((len, true));
    }
    let first = &old_layers[0];
    if pos >= first.size() {
        // Zeros above the shared layer: decided here, not by it.
        return Ok((len, false));
    }
    let st = chain_status(&old_layers[..k], pos, len.min(first.size() - pos))?;
    Ok((st.len, st.source == Source::Below))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tools::testutil::{contents, qcow2_on, raw_with, TempDir};
    use crate::image::{open, BackingMode, ImageOptions, Qcow2};

    fn writable_with_chain(path: &Path) -> Arc<dyn Image> {
        open(
            path,
            &ImageOptions {
                read_only: false,
                ..ImageOptions::default()
            },
        )
        .expect("open image")
    }

    fn set_backing(path: &Path, name: Option<&Path>, fmt: &str) {
        let mut q = Qcow2::open(path, false).expect("open");
        let name = name.map(|n| n.to_string_lossy().into_owned());
        q.set_backing_file(name.as_deref(), Some(fmt))
            .expect("set backing");
    }

    fn own_bytes(path: &Path) -> u64 {
        let image = open(
            path,
            &ImageOptions {
                backing: BackingMode::Follow,
                ..ImageOptions::default()
            },
        )
        .expect("open");
        super::super::map(&image, 0, u64::MAX)
            .expect("map")
            .iter()
            .filter(|e| e.depth == 0 && e.present)
            .map(|e| e.length)
            .sum()
    }

    #[test]
    fn safe_rebase_keeps_the_contents() {
        let dir = TempDir::new("rebase-safe");
        let size = 4 << 20;
        let base = qcow2_on(
            &dir,
            "base.qcow2",
            size,
            None,
            &[(0, 1 << 20, 1), (3 << 20, 65536, 9)],
        );
        let mid = qcow2_on(
            &dir,
            "mid.qcow2",
            size,
            Some(&base),
            &[(512 << 10, 1 << 20, 2)],
        );
        let top = qcow2_on(
            &dir,
            "top.qcow2",
            size,
            Some(&mid),
            &[(2 << 20, 65536, 3), (600 << 10, 4096, 4)],
        );
        let before = contents(&top);
        // Drop mid: only mid's clusters that top does not cover are copied.
        let new = open(&base, &ImageOptions::default()).expect("open base");
        let stats = {
            let image = writable_with_chain(&top);
            rebase(&image, Some(&new), 65536, &super::super::no_progress).expect("rebase")
        };
        set_backing(&top, Some(&base), "qcow2");
        assert_eq!(contents(&top), before);
        // 1 MiB of mid minus the 64 KiB cluster top already had.
        assert_eq!(stats.copied_bytes, (1 << 20) - 65536);
        assert_eq!(own_bytes(&top), (1 << 20) + 65536);
    }

    #[test]
    fn rebase_onto_an_unrelated_file_and_onto_nothing() {
        let dir = TempDir::new("rebase-other");
        let size = 2 << 20;
        let old = raw_with(
            &dir,
            "old.raw",
            size,
            &[(0, 128 << 10, 5), (1 << 20, 4096, 6)],
        );
        // Same data as old in the first 64 KiB, different after.
        let other = raw_with(
            &dir,
            "other.raw",
            1 << 20,
            &[(0, 64 << 10, 5), (64 << 10, 4096, 7)],
        );
        let top = qcow2_on(&dir, "top.qcow2", size, Some(&old), &[]);
        let before = contents(&top);
        {
            let image = writable_with_chain(&top);
            let new = open(&other, &ImageOptions::default()).expect("open other");
            let stats =
                rebase(&image, Some(&new), 65536, &super::super::no_progress).expect("rebase");
            // Cluster 1 (differs) and the cluster at 1 MiB (past other's end).
            assert_eq!(stats.copied_bytes, 2 * 65536);
        }
        set_backing(&top, Some(&other), "raw");
        assert_eq!(contents(&top), before);
        // Now onto nothing: everything visible comes in.
        {
            let image = writable_with_chain(&top);
            rebase(&image, None, 65536, &super::super::no_progress).expect("rebase");
        }
        set_backing(&top, None, "raw");
        assert_eq!(contents(&top), before);
        assert_eq!(
            Qcow2::open(&top, true).expect("open").backing_file_name(),
            None
        );
    }

    #[test]
    fn unsafe_rebase_changes_what_is_read() {
        // The contrast that makes the safe mode matter: with the header
        // changed alone, the image shows the new backing file's data.
        let dir = TempDir::new("rebase-unsafe");
        let a = raw_with(&dir, "a.raw", 1 << 20, &[(0, 4096, 1)]);
        let b = raw_with(&dir, "b.raw", 1 << 20, &[(0, 4096, 2)]);
        let top = qcow2_on(&dir, "top.qcow2", 1 << 20, Some(&a), &[]);
        set_backing(&top, Some(&b), "raw");
        assert_eq!(contents(&top)[0], 2);
    }
}
