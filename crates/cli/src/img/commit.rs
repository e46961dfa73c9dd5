//! `vireo img commit`: write an overlay's data into its backing file (or a
//! deeper base) and, by default, empty the overlay.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use vireo_disk::image::{self, tools, Qcow2, RawImage};
use vireo_disk::{Image, ImageFormat};

use super::common::{self, parse_cache, parse_format};
use super::progress::Progress;

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Image format (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Keep the image's data (do not empty it afterwards).
    #[arg(short = 'd')]
    keep: bool,
    /// Commit down to this image of the backing chain (implies -d).
    #[arg(short = 'b', value_name = "BASE")]
    base: Option<String>,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Print nothing on success.
    #[arg(short = 'q')]
    quiet: bool,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't', value_name = "CACHE", value_parser = parse_cache)]
    cache: Option<String>,
    /// Rate limit (accepted for qemu-img compatibility, not applied).
    #[arg(short = 'r', value_name = "RATE")]
    rate: Option<String>,
    file: String,
}

/// Opens `path` for writing as `format`, with its own backing chain.
fn open_base(path: &Path, format: ImageFormat) -> anyhow::Result<Arc<dyn Image>> {
    common::open(path, Some(format), false, true)
}

pub fn run(args: CommitArgs) -> anyhow::Result<ExitCode> {
    let _ = (args.cache, args.rate);
    let path = PathBuf::from(&args.file);
    let format = common::format_of(&path, args.format)?;
    // Discover the chain.
    let layers: Vec<(PathBuf, ImageFormat, u64)> = {
        let top = common::open(&path, Some(format), true, true)?;
        image::chain(&top)
            .iter()
            .map(|l| (l.path().to_owned(), l.format(), l.size()))
            .collect()
    };
    if layers.len() < 2 {
        bail!(
            "{}: the image has no backing file to commit into",
            args.file
        );
    }
    let base_depth = match &args.base {
        None => 1,
        Some(b) => {
            let by_cwd = PathBuf::from(b);
            let by_image = image::resolve_backing(&path, b).ok();
            layers
                .iter()
                .enumerate()
                .skip(1)
                .find(|(_, (p, _, _))| {
                    common::same_file(p, &by_cwd)
                        || by_image.as_ref().is_some_and(|i| common::same_file(p, i))
                })
                .map(|(d, _)| d)
                .ok_or_else(|| anyhow!("'{b}' is not in the backing chain of '{}'", args.file))?
        }
    };
    let keep = args.keep || args.base.is_some();
    let (base_path, base_format, base_size) = layers[base_depth].clone();
    let top_size = layers[0].2;
    if base_size < top_size {
        // Grow the base so it can hold everything.
        match base_format {
            ImageFormat::Qcow2 => Qcow2::open(&base_path, false)?.resize(top_size, false)?,
            ImageFormat::Raw => RawImage::open(&base_path, false)?.resize(top_size)?,
        }
    }
    // Reopen: the base writable, the layers above read-only, the top
    // writable unless it is kept.
    let mut below = open_base(&base_path, base_format)
        .with_context(|| format!("cannot open the base {}", base_path.display()))?;
    for (p, f, _) in layers[1..base_depth].iter().rev() {
        if *f != ImageFormat::Qcow2 {
            bail!("{}: a {f} image cannot sit above the base", p.display());
        }
        let mut q = Qcow2::open(p, true)?;
        q.set_backing(Some(below));
        below = Arc::new(q);
    }
    if format != ImageFormat::Qcow2 {
        bail!("{}: only qcow2 images have a backing file", args.file);
    }
    let mut top = Qcow2::open(&path, keep)?;
    top.set_backing(Some(below));
    let top = Arc::new(top);
    let as_image: Arc<dyn Image> = top.clone();
    let progress = Progress::new(args.progress && !args.quiet);
    let callback = progress.callback();
    let result = tools::commit(&as_image, base_depth, &callback);
    progress.finish(result.is_ok());
    result.with_context(|| format!("cannot commit {}", args.file))?;
    if !keep {
        top.make_empty().with_context(|| {
            format!(
                "the data was committed, but {} could not be emptied",
                args.file
            )
        })?;
    }
    if !args.quiet {
        println!("Image committed.");
    }
    Ok(ExitCode::SUCCESS)
}
