//! Scratch images for the tools' unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::image::{open, probe, CreateOptions, ImageOptions, Qcow2, RawImage};

/// A directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vireo-tools-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `(offset, len, byte)` patterns into the image at `path`.
pub(crate) fn fill(path: &Path, writes: &[(u64, u64, u8)]) {
    let image = open(
        path,
        &ImageOptions {
            read_only: false,
            ..ImageOptions::default()
        },
    )
    .expect("open for writing");
    for &(offset, len, byte) in writes {
        image
            .write_at(&vec![byte; len as usize], offset)
            .expect("write pattern");
    }
    image.flush().expect("flush");
}

/// A raw image of `size` bytes holding `writes`.
pub(crate) fn raw_with(dir: &TempDir, name: &str, size: u64, writes: &[(u64, u64, u8)]) -> PathBuf {
    let path = dir.path(name);
    RawImage::create(&path, size, Default::default()).expect("create raw");
    fill(&path, writes);
    path
}

/// A qcow2 image (64 KiB clusters) over `backing`, holding `writes`.
pub(crate) fn qcow2_on(
    dir: &TempDir,
    name: &str,
    size: u64,
    backing: Option<&Path>,
    writes: &[(u64, u64, u8)],
) -> PathBuf {
    let path = dir.path(name);
    let opts = CreateOptions {
        size,
        backing_file: backing.map(|b| b.to_string_lossy().into_owned()),
        backing_format: backing.map(|b| probe(b).expect("probe backing").name().to_owned()),
        ..CreateOptions::default()
    };
    Qcow2::create(&path, &opts).expect("create qcow2");
    fill(&path, writes);
    path
}

/// The whole virtual disk of the image (chain) at `path`.
pub(crate) fn contents(path: &Path) -> Vec<u8> {
    let image = open(path, &ImageOptions::default()).expect("open for reading");
    let mut out = vec![0u8; image.size() as usize];
    image.read_at(&mut out, 0).expect("read all");
    out
}

/// What `writes` produce on a zeroed disk of `size` bytes.
pub(crate) fn pattern(size: u64, writes: &[(u64, u64, u8)]) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    for &(offset, len, byte) in writes {
        out[offset as usize..(offset + len) as usize].fill(byte);
    }
    out
}
