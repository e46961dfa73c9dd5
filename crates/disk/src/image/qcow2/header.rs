//! The qcow2 header: parsing and checking every field of an untrusted
//! file, and writing it back (with the header extensions Vireo does not
//! interpret kept as they were).
//!
//! Layout (big-endian), from the qcow2 specification:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic "QFI\xfb" |
//! | 4 | version (2 or 3) |
//! | 8 / 16 | backing file name offset / length |
//! | 20 | cluster_bits |
//! | 24 | virtual size |
//! | 32 | encryption method |
//! | 36 / 40 | L1 entries / L1 offset |
//! | 48 / 56 | refcount table offset / clusters |
//! | 60 / 64 | snapshot count / snapshot table offset |
//! | 72.. | v3: incompatible, compatible, autoclear features (u64 each), refcount_order (u32 @96), header length (u32 @100), compression type (u8 @104) |

use std::path::Path;

use crate::image::ImageError;

pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header (and of the part common to both versions).
pub(crate) const V2_HEADER_LEN: u32 = 72;
/// The shortest valid version 3 header.
pub(crate) const V3_MIN_HEADER_LEN: u32 = 104;
/// The version 3 header Vireo writes: with the compression type, padded to 8.
pub(crate) const V3_HEADER_LEN: u32 = 112;

pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// Bounds on table sizes, so a hostile header cannot make us allocate much
/// (the same limits QEMU applies).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
pub(crate) const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits.
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub(crate) const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature bits.
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear bits: bitmaps extension valid, raw external data.
pub(crate) const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Header extension types.
pub(crate) const EXT_END: u32 = 0;
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub(crate) const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub(crate) const EXT_BITMAPS: u32 = 0x2385_2875;
pub(crate) const EXT_CRYPTO: u32 = 0x0537_be77;
pub(crate) const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Compression of compressed clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompressionType {
    #[default]
    Zlib,
    Zstd,
}

impl CompressionType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for CompressionType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zlib" => Ok(Self::Zlib),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!(
                "unknown compression type '{other}' (known: zlib, zstd)"
            )),
        }
    }
}

/// A parsed, checked header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) cluster_bits: u32,
    pub(crate) size: u64,
    pub(crate) l1_size: u32,
    pub(crate) l1_table_offset: u64,
    pub(crate) refcount_table_offset: u64,
    pub(crate) refcount_table_clusters: u32,
    pub(crate) nb_snapshots: u32,
    pub(crate) snapshots_offset: u64,
    pub(crate) incompatible: u64,
    pub(crate) compatible: u64,
    pub(crate) autoclear: u64,
    pub(crate) refcount_order: u32,
    pub(crate) compression: CompressionType,
    pub(crate) backing_file: Option<String>,
    pub(crate) backing_format: Option<String>,
    /// Feature names from the feature name table: (type, bit, name).
    pub(crate) feature_names: Vec<(u8, u8, String)>,
    /// Extensions kept verbatim (type, data), written back unchanged.
    pub(crate) other_extensions: Vec<(u32, Vec<u8>)>,
    /// Header fields past the ones Vireo knows (v3 header_length > 112):
    /// kept so a rewrite does not lose them.
    pub(crate) extra_header: Vec<u8>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl Header {
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses and checks the header in `first` (the file's first cluster, or
    /// as much of it as the file has). `file_len` bounds every table.
    pub(crate) fn parse(path: &Path, first: &[u8], file_len: u64) -> Result<Self, ImageError> {
        let invalid = |what: String| ImageError::Invalid {
            path: path.to_owned(),
            format: "qcow2",
            what,
        };
        let unsupported = |what: String| ImageError::Unsupported {
            path: path.to_owned(),
            what,
        };
        if first.len() < V2_HEADER_LEN as usize {
            return Err(invalid(format!(
                "the file is {} bytes long, shorter than a qcow2 header",
                first.len()
            )));
        }
        if first[..4] != MAGIC {
            return Err(invalid("no qcow2 magic at the start of the file".into()));
        }
        let version = be32(first, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(first, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(invalid(format!(
                "cluster_bits is {cluster_bits}, outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if (first.len() as u64) < cluster_size.min(file_len) {
            return Err(invalid("the first cluster could not be read whole".into()));
        }
        let crypt = be32(first, 32);
        if crypt != 0 {
            return Err(unsupported(format!("encryption (method {crypt})")));
        }

        let (incompatible, compatible, autoclear, refcount_order, header_len) = if version == 2 {
            (0, 0, 0, 4, V2_HEADER_LEN)
        } else {
            if first.len() < V3_MIN_HEADER_LEN as usize {
                return Err(invalid("the version 3 header is truncated".into()));
            }
            let header_len = be32(first, 100);
            if header_len < V3_MIN_HEADER_LEN
                || u64::from(header_len) > cluster_size.min(first.len() as u64)
            {
                return Err(invalid(format!(
                    "header length {header_len} is outside {V3_MIN_HEADER_LEN}..={}",
                    cluster_size.min(first.len() as u64)
                )));
            }
            (
                be64(first, 72),
                be64(first, 80),
                be64(first, 88),
                be32(first, 96),
                header_len,
            )
        };
        if refcount_order > 6 {
            return Err(invalid(format!(
                "refcount_order is {refcount_order}, more than 6 (64-bit refcounts)"
            )));
        }
        let compression = if header_len > 104 {
            match first[104] {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                other => return Err(unsupported(format!("compression type {other}"))),
            }
        } else {
            CompressionType::Zlib
        };
        if (compression != CompressionType::Zlib) != (incompatible & INCOMPAT_COMPRESSION != 0) {
            return Err(invalid(
                "the compression type and its incompatible feature bit disagree".into(),
            ));
        }

        let mut header = Self {
            version,
            cluster_bits,
            size: be64(first, 24),
            l1_size: be32(first, 36),
            l1_table_offset: be64(first, 40),
            refcount_table_offset: be64(first, 48),
            refcount_table_clusters: be32(first, 56),
            nb_snapshots: be32(first, 60),
            snapshots_offset: be64(first, 64),
            incompatible,
            compatible,
            autoclear,
            refcount_order,
            compression,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            other_extensions: Vec::new(),
            extra_header: if header_len > V3_HEADER_LEN {
                first[V3_HEADER_LEN as usize..header_len as usize].to_vec()
            } else {
                Vec::new()
            },
        };
        header.parse_extensions(path, first, header_len as usize)?;
        header.parse_backing_name(path, first, cluster_size, be64(first, 8), be32(first, 16))?;
        header.check_features(path)?;
        header.check_tables(path, file_len)?;
        Ok(header)
    }

    fn parse_extensions(
        &mut self,
        path: &Path,
        first: &[u8],
        start: usize,
    ) -> Result<(), ImageError> {
        let invalid = |what: String| ImageError::Invalid {
            path: path.to_owned(),
            format: "qcow2",
            what,
        };
        let end = first.len().min(1 << self.cluster_bits);
        let mut at = start;
        loop {
            if at + 8 > end {
                // QEMU accepts a header that ends without an end marker when
                // the cluster is full; so do we.
                return Ok(());
            }
            let kind = be32(first, at);
            let len = be32(first, at + 4) as usize;
            at += 8;
            if kind == EXT_END {
                return Ok(());
            }
            if len > end - at {
                return Err(invalid(format!(
                    "header extension 0x{kind:08x} of {len} bytes goes past the first cluster"
                )));
            }
            let data = &first[at..at + len];
            match kind {
                EXT_BACKING_FORMAT => {
                    let name = String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_owned();
                    self.backing_format = Some(name);
                }
                EXT_FEATURE_TABLE => {
                    for entry in data.chunks_exact(48) {
                        let name = &entry[2..];
                        let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
                        self.feature_names.push((
                            entry[0],
                            entry[1],
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                }
                EXT_CRYPTO => {
                    return Err(ImageError::Unsupported {
                        path: path.to_owned(),
                        what: "encryption (LUKS header extension)".into(),
                    })
                }
                EXT_DATA_FILE => {
                    return Err(ImageError::Unsupported {
                        path: path.to_owned(),
                        what: "external data files".into(),
                    })
                }
                _ => self.other_extensions.push((kind, data.to_vec())),
            }
            at += len.next_multiple_of(8).min(end - at);
        }
    }

    fn parse_backing_name(
        &mut self,
        path: &Path,
        first: &[u8],
        cluster_size: u64,
        offset: u64,
        len: u32,
    ) -> Result<(), ImageError> {
        if offset == 0 {
            return Ok(());
        }
        if len > MAX_BACKING_NAME {
            return Err(ImageError::Invalid {
                path: path.to_owned(),
                format: "qcow2",
                what: format!(
                    "the backing file name is {len} bytes long, more than {MAX_BACKING_NAME}"
                ),
            });
        }
        let end = offset.checked_add(u64::from(len));
        if end.is_none_or(|end| end > cluster_size || end > first.len() as u64) {
            return Err(ImageError::Invalid {
                path: path.to_owned(),
                format: "qcow2",
                what: format!(
                    "the backing file name at offset {offset} ({len} bytes) lies outside the first cluster"
                ),
            });
        }
        let bytes = &first[offset as usize..(offset + u64::from(len)) as usize];
        let name = String::from_utf8(bytes.to_vec()).map_err(|_| ImageError::Invalid {
            path: path.to_owned(),
            format: "qcow2",
            what: "the backing file name is not UTF-8".into(),
        })?;
        if !name.is_empty() {
            self.backing_file = Some(name);
        }
        Ok(())
    }

    /// The name of a feature bit from the image's own feature table.
    pub(crate) fn feature_name(&self, kind: u8, bit: u8) -> Option<&str> {
        self.feature_names
            .iter()
            .find(|(k, b, _)| *k == kind && *b == bit)
            .map(|(_, _, n)| n.as_str())
    }

    fn check_features(&self, path: &Path) -> Result<(), ImageError> {
        if self.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(ImageError::Unsupported {
                path: path.to_owned(),
                what: "external data files".into(),
            });
        }
        if self.incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(ImageError::Unsupported {
                path: path.to_owned(),
                what: "extended L2 entries (subclusters)".into(),
            });
        }
        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;
        let unknown = self.incompatible & !known & !INCOMPAT_DATA_FILE & !INCOMPAT_EXTL2;
        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|bit| unknown & (1 << bit) != 0)
                .map(|bit| match self.feature_name(0, bit) {
                    Some(name) => format!("bit {bit} ({name})"),
                    None => format!("bit {bit}"),
                })
                .collect();
            return Err(ImageError::Unsupported {
                path: path.to_owned(),
                what: format!("unknown incompatible feature {}", names.join(", ")),
            });
        }
        Ok(())
    }

    /// Checks that every table lies in the file, inside the memory bounds,
    /// aligned, and without overlapping another.
    fn check_tables(&self, path: &Path, file_len: u64) -> Result<(), ImageError> {
        let invalid = |what: String| ImageError::Invalid {
            path: path.to_owned(),
            format: "qcow2",
            what,
        };
        let cs = self.cluster_size();
        // Virtual size: must be addressable by the L1 table.
        if self.size > (1u64 << 62) {
            return Err(invalid(format!("virtual size {} is too large", self.size)));
        }
        let needed_l1 = l1_entries_for(self.size, self.cluster_bits);
        if u64::from(self.l1_size) < needed_l1 {
            return Err(invalid(format!(
                "the L1 table has {} entries, too few for a virtual size of {} bytes (needs {needed_l1})",
                self.l1_size, self.size
            )));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(invalid(format!(
                "the L1 table is {l1_bytes} bytes, more than the {MAX_L1_BYTES} allowed"
            )));
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 {
            return Err(invalid("the refcount table is empty".into()));
        }
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(invalid(format!(
                "the refcount table is {reftable_bytes} bytes, more than the {MAX_REFTABLE_BYTES} allowed"
            )));
        }
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(invalid(format!(
                "{} snapshots, more than the {MAX_SNAPSHOTS} allowed",
                self.nb_snapshots
            )));
        }
        let mut regions: Vec<(&str, u64, u64)> = vec![("the header", 0, cs)];
        let mut table = |name: &'static str, offset: u64, len: u64| -> Result<(), ImageError> {
            if len == 0 {
                return Ok(());
            }
            if !offset.is_multiple_of(cs) {
                return Err(invalid(format!(
                    "{name} offset {offset:#x} is not aligned to the cluster size {cs}"
                )));
            }
            if offset.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(invalid(format!(
                    "{name} at offset {offset:#x} ({len} bytes) lies beyond the end of the file ({file_len} bytes)"
                )));
            }
            regions.push((name, offset, len));
            Ok(())
        };
        table("the L1 table", self.l1_table_offset, l1_bytes)?;
        table(
            "the refcount table",
            self.refcount_table_offset,
            reftable_bytes,
        )?;
        if self.nb_snapshots > 0 {
            // Each entry is at least 40 bytes; the exact length is known
            // only after reading it.
            table(
                "the snapshot table",
                self.snapshots_offset,
                u64::from(self.nb_snapshots) * 40,
            )?;
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                if a.1 < b.1 + b.2 && b.1 < a.1 + a.2 {
                    return Err(invalid(format!("{} overlaps {}", b.0, a.0)));
                }
            }
        }
        Ok(())
    }

    /// The header and its extensions as they are written to the first
    /// cluster (backing file name included).
    pub(crate) fn serialize(&self) -> Result<Vec<u8>, String> {
        let cs = self.cluster_size() as usize;
        let header_len = if self.version == 2 {
            V2_HEADER_LEN
        } else {
            V3_HEADER_LEN + self.extra_header.len() as u32
        };
        let mut b = vec![0u8; header_len as usize];
        b[..4].copy_from_slice(&MAGIC);
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, 4, self.version);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        if self.version >= 3 {
            put64(&mut b, 72, self.incompatible);
            put64(&mut b, 80, self.compatible);
            put64(&mut b, 88, self.autoclear);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, header_len);
            b[104] = match self.compression {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
            b[V3_HEADER_LEN as usize..].copy_from_slice(&self.extra_header);
        }
        let ext = |b: &mut Vec<u8>, kind: u32, data: &[u8]| {
            b.extend_from_slice(&kind.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(8), 0);
        };
        if let Some(format) = &self.backing_format {
            ext(&mut b, EXT_BACKING_FORMAT, format.as_bytes());
        }
        if !self.feature_names.is_empty() {
            let mut table = Vec::new();
            for (kind, bit, name) in &self.feature_names {
                let mut entry = [0u8; 48];
                entry[0] = *kind;
                entry[1] = *bit;
                let n = name.len().min(46);
                entry[2..2 + n].copy_from_slice(&name.as_bytes()[..n]);
                table.extend_from_slice(&entry);
            }
            ext(&mut b, EXT_FEATURE_TABLE, &table);
        }
        for (kind, data) in &self.other_extensions {
            // The bitmaps extension is only valid while its autoclear bit is
            // set; Vireo clears the bit (it does not keep bitmaps up to
            // date), so the extension goes too.
            if *kind == EXT_BITMAPS && self.autoclear & AUTOCLEAR_BITMAPS == 0 {
                continue;
            }
            ext(&mut b, *kind, data);
        }
        ext(&mut b, EXT_END, &[]);
        if let Some(name) = &self.backing_file {
            let offset = b.len() as u64;
            put64(&mut b, 8, offset);
            put32(&mut b, 16, name.len() as u32);
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() > cs && !self.feature_names.is_empty() {
            // The feature name table is optional: small clusters go
            // without it rather than refusing the header.
            let mut slim = self.clone();
            slim.feature_names.clear();
            return slim.serialize();
        }
        if b.len() > cs {
            return Err(format!(
                "the header with its extensions and backing file name needs {} bytes, more than one cluster ({cs})",
                b.len()
            ));
        }
        Ok(b)
    }
}

/// L1 entries needed to map `size` bytes.
pub(crate) fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
    let l2_bits = cluster_bits - 3;
    let per_l1 = 1u64 << (cluster_bits + l2_bits);
    size.div_ceil(per_l1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            compression: CompressionType::Zlib,
            backing_file: Some("base.img".into()),
            backing_format: Some("raw".into()),
            feature_names: vec![(0, 0, "dirty bit".into())],
            other_extensions: vec![(0x1234_5678, vec![1, 2, 3])],
            extra_header: Vec::new(),
        }
    }

    fn first_cluster(h: &Header) -> Vec<u8> {
        let mut b = h.serialize().expect("succeeds");
        b.resize(65536, 0);
        b
    }

    #[test]
    fn round_trips() {
        let h = sample();
        let parsed = Header::parse(Path::new("x"), &first_cluster(&h), 0x40000).expect("succeeds");
        assert_eq!(parsed, h);
    }

    #[test]
    fn refuses_unknown_incompatible_features_by_name() {
        let mut h = sample();
        h.incompatible = 1 << 9;
        h.feature_names.push((0, 9, "teleportation".into()));
        let err = Header::parse(Path::new("x"), &first_cluster(&h), 0x40000).expect_err("fails");
        assert!(err.to_string().contains("bit 9 (teleportation)"), "{err}");
    }

    #[test]
    fn refuses_tables_outside_the_file_and_overlaps() {
        let mut h = sample();
        h.l1_table_offset = 0x100000;
        let err = Header::parse(Path::new("x"), &first_cluster(&h), 0x40000).expect_err("fails");
        assert!(
            err.to_string().contains("beyond the end of the file"),
            "{err}"
        );
        let mut h = sample();
        h.l1_table_offset = 0x10000;
        let err = Header::parse(Path::new("x"), &first_cluster(&h), 0x40000).expect_err("fails");
        assert!(err.to_string().contains("overlaps"), "{err}");
        let mut h = sample();
        h.l1_size = 1;
        let err = Header::parse(Path::new("x"), &first_cluster(&h), 0x40000).expect_err("fails");
        assert!(err.to_string().contains("too few"), "{err}");
    }

    #[test]
    fn refuses_short_and_foreign_files() {
        let err = Header::parse(Path::new("x"), b"QFI", 3).expect_err("fails");
        assert!(err.to_string().contains("shorter than a qcow2 header"));
        let err = Header::parse(Path::new("x"), &[0u8; 512], 512).expect_err("fails");
        assert!(err.to_string().contains("magic"));
    }
}
