//! [`map`]: where each range of the virtual disk comes from, merged into
//! runs (what `vireo img map` prints, with qemu-img map's fields).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use super::chain::{chain_status, Source};
use crate::image::{chain, Allocation, Image, ImageError, ImageFormat};

/// One run of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset of the run.
    pub start: u64,
    pub length: u64,
    /// The layer that decides the run (0: the image itself); for runs no
    /// layer stores, the bottom layer (or the layer whose backing file
    /// ends before the run).
    pub depth: usize,
    /// Stored in layer `depth` (as data or as zeros).
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Stored as data (maybe compressed).
    pub data: bool,
    /// Where the run starts in layer `depth`'s file, when it has a plain
    /// offset there.
    pub offset: Option<u64>,
    pub compressed: bool,
    /// The file of layer `depth`.
    pub file: PathBuf,
}

impl MapEntry {
    /// Whether `next` continues this run with the same properties.
    fn continued_by(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// The map of `start..start+len` of `image`'s virtual disk (clipped to its
/// size), over its whole backing chain, as maximal runs.
///
/// A data range whose bytes lie in a hole of the layer's file (or past its
/// end) is reported as data reading zeros, as qemu-img does.
pub fn map(image: &Arc<dyn Image>, start: u64, len: u64) -> Result<Vec<MapEntry>, ImageError> {
    let layers = chain(image);
    let end = start.saturating_add(len).min(image.size());
    let mut files: Vec<Option<File>> = (0..layers.len()).map(|_| None).collect();
    let mut out: Vec<MapEntry> = Vec::new();
    let mut push = |entry: MapEntry| match out.last_mut() {
        Some(last) if last.continued_by(&entry) => last.length += entry.length,
        _ => out.push(entry),
    };
    let mut pos = start;
    while pos < end {
        let st = chain_status(&layers, pos, end - pos)?;
        let base = |depth: usize| MapEntry {
            start: pos,
            length: st.len,
            depth,
            present: false,
            zero: true,
            data: false,
            offset: None,
            compressed: false,
            file: layers[depth].path().to_owned(),
        };
        match st.source {
            Source::Below => push(base(layers.len() - 1)),
            Source::PastEnd { depth } => push(base(depth)),
            Source::Layer { depth, allocation } => {
                let layer = &layers[depth];
                let raw = layer.format() == ImageFormat::Raw;
                match allocation {
                    Allocation::Zero => push(MapEntry {
                        present: true,
                        offset: raw.then_some(pos),
                        ..base(depth)
                    }),
                    Allocation::Data {
                        offset: None,
                        compressed,
                    } => push(MapEntry {
                        present: true,
                        zero: false,
                        data: true,
                        compressed,
                        ..base(depth)
                    }),
                    Allocation::Data {
                        offset: Some(host),
                        compressed,
                    } => {
                        let data = MapEntry {
                            present: true,
                            zero: false,
                            data: true,
                            offset: Some(host),
                            compressed,
                            ..base(depth)
                        };
                        if raw {
                            push(data);
                        } else {
                            // Split by the holes of the layer's file.
                            let file = match &mut files[depth] {
                                Some(f) => f,
                                slot => slot.insert(File::open(layer.path()).map_err(|e| {
                                    ImageError::io(layer.path(), "opening to map holes", e)
                                })?),
                            };
                            let mut done = 0;
                            while done < st.len {
                                let (n, zero) = host_extent(file, host + done, st.len - done)
                                    .map_err(|e| {
                                        ImageError::io(layer.path(), "looking for holes", e)
                                    })?;
                                push(MapEntry {
                                    start: pos + done,
                                    length: n,
                                    zero,
                                    offset: Some(host + done),
                                    ..data.clone()
                                });
                                done += n;
                            }
                        }
                    }
                    // chain_status never reports a layer for these.
                    Allocation::Unallocated => push(base(depth)),
                }
            }
        }
        pos += st.len;
    }
    Ok(out)
}

/// The length (> 0, at most `len`) of the part of `file` at `offset` that is
/// all hole-or-past-the-end (`true`) or all data (`false`).
fn host_extent(file: &File, offset: u64, len: u64) -> std::io::Result<(u64, bool)> {
    let file_len = file.metadata()?.len();
    if offset >= file_len {
        return Ok((len, true));
    }
    let fd = file.as_raw_fd();
    let seek = |whence| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own; no memory is involved.
        let ret = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if ret >= 0 {
            return Ok(Some(ret as u64));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        Err(err)
    };
    match seek(libc::SEEK_DATA)? {
        // A hole up to the end of the file, then past the end: zeros.
        None => Ok((len, true)),
        Some(data) if data > offset => Ok(((data - offset).min(len), true)),
        Some(_) => {
            let hole = seek(libc::SEEK_HOLE)?.unwrap_or(file_len);
            Ok(((hole.max(offset + 1) - offset).min(len), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tools::testutil::{qcow2_on, raw_with, TempDir};
    use crate::image::{open, ImageOptions};

    fn brief(entries: &[MapEntry]) -> Vec<(u64, u64, usize, bool, bool, bool)> {
        entries
            .iter()
            .map(|e| (e.start, e.length, e.depth, e.present, e.zero, e.data))
            .collect()
    }

    #[test]
    fn runs_merge_and_name_layers() {
        let dir = TempDir::new("map");
        let base = qcow2_on(
            &dir,
            "base.qcow2",
            8 << 20,
            None,
            &[(0, 128 << 10, 1), (4 << 20, 64 << 10, 2)],
        );
        let top = qcow2_on(
            &dir,
            "top.qcow2",
            8 << 20,
            Some(&base),
            &[(64 << 10, 64 << 10, 3), (1 << 20, 64 << 10, 4)],
        );
        {
            let image = open(
                &top,
                &ImageOptions {
                    read_only: false,
                    ..Default::default()
                },
            )
            .expect("open");
            image.write_zeroes(2 << 20, 128 << 10, false).expect("zero");
        }
        let image = open(&top, &ImageOptions::default()).expect("open");
        let entries = map(&image, 0, u64::MAX).expect("map");
        assert_eq!(
            brief(&entries),
            vec![
                (0, 64 << 10, 1, true, false, true),
                (64 << 10, 64 << 10, 0, true, false, true),
                (128 << 10, (1 << 20) - (128 << 10), 1, false, true, false),
                (1 << 20, 64 << 10, 0, true, false, true),
                (
                    (1 << 20) + (64 << 10),
                    (1 << 20) - (64 << 10),
                    1,
                    false,
                    true,
                    false
                ),
                (2 << 20, 128 << 10, 0, true, true, false),
                (
                    (2 << 20) + (128 << 10),
                    (2 << 20) - (128 << 10),
                    1,
                    false,
                    true,
                    false
                ),
                (4 << 20, 64 << 10, 1, true, false, true),
                (
                    (4 << 20) + (64 << 10),
                    (4 << 20) - (64 << 10),
                    1,
                    false,
                    true,
                    false
                ),
            ]
        );
        assert_eq!(entries[0].file, base);
        assert_eq!(entries[1].file, top);
        assert!(entries[0].offset.is_some() && entries[2].offset.is_none());
        // Two runs next to each other in the base's file stay one entry.
        let whole = map(&image, 0, 64 << 10).expect("map");
        assert_eq!(whole.len(), 1);
        // A window.
        let window = map(&image, 1024, 1024).expect("map");
        assert_eq!(brief(&window), vec![(1024, 1024, 1, true, false, true)]);
        assert_eq!(
            window[0].offset,
            Some(entries[0].offset.expect("offset") + 1024)
        );
    }

    #[test]
    fn raw_holes_carry_offsets_and_short_backing_ends() {
        let dir = TempDir::new("map-raw");
        let base = raw_with(&dir, "b.raw", 1 << 20, &[(512 << 10, 4096, 7)]);
        let top = qcow2_on(&dir, "t.qcow2", 2 << 20, Some(&base), &[]);
        let image = open(&top, &ImageOptions::default()).expect("open");
        let entries = map(&image, 0, u64::MAX).expect("map");
        let last = entries.last().expect("entries");
        assert_eq!(
            (last.start, last.length, last.depth, last.present, last.zero),
            (1 << 20, 1 << 20, 0, false, true)
        );
        let data = entries.iter().find(|e| e.data).expect("a data run");
        assert_eq!(
            (data.start, data.offset, data.depth),
            (512 << 10, Some(512 << 10), 1)
        );
        let hole = &entries[0];
        assert!(hole.zero && hole.present && !hole.data);
        assert_eq!(hole.offset, Some(0));
    }
}
