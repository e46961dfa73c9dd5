//! `vireo img resize`: change an image's virtual size.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Args;
use vireo_disk::image::{Qcow2, RawImage};
use vireo_disk::{Image, ImageFormat};

use super::common::{self, parse_format};
use super::size::{parse_size, MAX_SIZE};

#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// Image format (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Allow making the image smaller (the data past the new end is lost).
    #[arg(long)]
    shrink: bool,
    /// Preallocation of the new space: only off is supported.
    #[arg(long, value_name = "MODE")]
    preallocation: Option<String>,
    /// Print nothing on success.
    #[arg(short = 'q')]
    quiet: bool,
    file: String,
    /// New size: SIZE, +SIZE (grow by) or -SIZE (shrink by), with an
    /// optional suffix k, M, G, T, P, E.
    #[arg(allow_hyphen_values = true)]
    size: String,
}

/// The new size from `spec` and the current size.
pub fn new_size(spec: &str, current: u64) -> anyhow::Result<u64> {
    let (sign, body) = match spec.as_bytes().first() {
        Some(b'+') => (1, &spec[1..]),
        Some(b'-') => (-1, &spec[1..]),
        _ => (0, spec),
    };
    let n = parse_size(body)?;
    let size = match sign {
        1 => current
            .checked_add(n)
            .filter(|&s| s <= MAX_SIZE)
            .ok_or_else(|| anyhow!("{current} + {n} bytes is too large"))?,
        -1 => current.checked_sub(n).filter(|&s| s > 0).ok_or_else(|| {
            anyhow!("the new size must be positive (the image has {current} bytes)")
        })?,
        _ => n,
    };
    Ok(size)
}

pub fn run(args: ResizeArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.preallocation {
        if p != "off" {
            bail!("--preallocation={p} is not supported by vireo img resize (only off)");
        }
    }
    let path = PathBuf::from(&args.file);
    let format = common::format_of(&path, args.format)?;
    let current = common::open(&path, Some(format), true, false)?.size();
    let size = new_size(&args.size, current)?;
    if size < current && !args.shrink {
        bail!(
            "shrinking from {current} to {size} bytes deletes all data past the new end; add --shrink to do it"
        );
    }
    if size == 0 {
        bail!("the new size must be positive");
    }
    if size % 512 != 0 {
        bail!("the new size must be a multiple of 512 (got {size})");
    }
    match format {
        ImageFormat::Qcow2 => {
            let mut q = Qcow2::open(&path, false)?;
            q.resize(size, args.shrink)?;
            q.flush()?;
        }
        ImageFormat::Raw => {
            let mut r = RawImage::open(&path, false)?;
            r.resize(size)?;
            r.flush()?;
        }
    }
    if !args.quiet {
        println!("Image resized.");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_sizes() {
        assert_eq!(new_size("+1G", 1 << 30).expect("grow"), 2 << 30);
        assert_eq!(new_size("-512M", 1 << 30).expect("shrink"), 512 << 20);
        assert_eq!(new_size("2G", 1 << 30).expect("set"), 2 << 30);
        assert!(new_size("-1G", 1 << 30).is_err());
        assert!(new_size("abc", 1 << 30).is_err());
    }
}
