//! Compressed clusters: raw deflate (qcow2's "zlib") and zstd.
//!
//! QEMU inflates with a 4 KiB window, so Vireo deflates with one too
//! (window bits 12); it inflates with the largest window so images from
//! any writer decode. A compressed cluster's bytes may be followed by
//! unrelated data up to the end of its last 512-byte sector: both decoders
//! stop at the end of their stream.

use std::io::Read;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::CompressionType;

/// Decompresses one cluster from `input` into `out` (exactly one cluster).
/// Returns a description of the problem on failure.
pub(crate) fn decompress(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    match kind {
        CompressionType::Zlib => {
            let mut d = Decompress::new_with_window_bits(false, 15);
            let status = d
                .decompress(input, out, FlushDecompress::Finish)
                .map_err(|e| format!("bad deflate data: {e}"))?;
            let produced = d.total_out() as usize;
            match status {
                Status::StreamEnd | Status::Ok | Status::BufError if produced == out.len() => {
                    Ok(())
                }
                _ => Err(format!(
                    "deflate data ends after {produced} of {} bytes",
                    out.len()
                )),
            }
        }
        CompressionType::Zstd => {
            let mut source = input;
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut source)
                .map_err(|e| format!("bad zstd frame: {e}"))?;
            dec.read_exact(out)
                .map_err(|e| format!("bad zstd data: {e}"))
        }
    }
}

/// Compresses one cluster; `None` when compression does not save at least
/// one 512-byte sector (the cluster is then stored plainly).
pub(crate) fn compress(kind: CompressionType, input: &[u8]) -> Option<Vec<u8>> {
    let limit = input.len().saturating_sub(512);
    let out = match kind {
        CompressionType::Zlib => {
            let mut c = Compress::new_with_window_bits(Compression::default(), false, 12);
            let mut out = Vec::with_capacity(input.len());
            match c.compress_vec(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => out,
                _ => return None,
            }
        }
        CompressionType::Zstd => {
            ruzstd::encoding::compress_to_vec(input, ruzstd::encoding::CompressionLevel::Fastest)
        }
    };
    (out.len() <= limit).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_kinds_with_trailing_garbage() {
        let mut data = vec![0u8; 65536];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 100) as u8;
        }
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let mut packed = compress(kind, &data).expect("compressible");
            packed.extend_from_slice(&[0xaa; 300]);
            let mut out = vec![0u8; 65536];
            decompress(kind, &packed, &mut out).expect("succeeds");
            assert_eq!(out, data, "{kind:?}");
        }
    }

    #[test]
    fn incompressible_and_garbage() {
        let mut x = 1u64;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        assert!(compress(CompressionType::Zlib, &data).is_none());
        let mut out = vec![0u8; 65536];
        assert!(decompress(CompressionType::Zlib, &data[..1000], &mut out).is_err());
        assert!(decompress(CompressionType::Zstd, &data[..1000], &mut out).is_err());
    }
}
