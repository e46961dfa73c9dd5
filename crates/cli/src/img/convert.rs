//! `vireo img convert`: copy one or more images (joined) into a new or
//! existing image of any format, sparse, optionally compressed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use vireo_disk::image::tools::{self, ConvertOptions, Target};
use vireo_disk::image::Qcow2;
use vireo_disk::{Image, ImageFormat};

use super::common::{self, parse_cache, parse_format};
use super::create::{self, Spec};
use super::progress::Progress;
use super::size::{parse_size, SizeError};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Format of the sources (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Format of the target: raw (the default) or qcow2.
    #[arg(short = 'O', value_name = "FMT", value_parser = parse_format)]
    output_format: Option<ImageFormat>,
    /// Target format options, as for create ('-o help' lists them).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Compress the target's clusters (qcow2).
    #[arg(short = 'c')]
    compress: bool,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Print nothing.
    #[arg(short = 'q')]
    quiet: bool,
    /// Write into an existing target instead of creating it.
    #[arg(short = 'n')]
    no_create: bool,
    /// With -n: the target already reads as zeros, so zeros are not written.
    #[arg(long)]
    target_is_zero: bool,
    /// Zero detection granularity: blocks of this many zero bytes in the data
    /// are left unallocated; 0 allocates the whole target. Default 4k.
    #[arg(short = 'S', value_name = "SIZE")]
    sparse_size: Option<String>,
    /// Make the target an overlay on this backing file: only what the
    /// sources' top images store is copied.
    #[arg(short = 'B', value_name = "FILE")]
    backing: Option<String>,
    /// Format of the -B backing file.
    #[arg(short = 'F', value_name = "FMT", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// Target cache mode; 'unsafe' skips the final flush.
    #[arg(short = 't', value_name = "CACHE", value_parser = parse_cache)]
    cache: Option<String>,
    /// Source cache mode (accepted for qemu-img compatibility).
    #[arg(short = 'T', value_name = "CACHE", value_parser = parse_cache)]
    src_cache: Option<String>,
    /// Parallel readers, 1 to 16 (default 4).
    #[arg(short = 'm', value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    parallel: Option<u8>,
    /// Accepted for qemu-img compatibility (writes stay in order).
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Accepted for qemu-img compatibility (vireo img takes no locks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Source images, then the target.
    #[arg(value_name = "FILE")]
    files: Vec<String>,
}

fn sparse_size(s: &str) -> anyhow::Result<u64> {
    let v = parse_size(s).map_err(|e| match e {
        SizeError::Invalid(_) | SizeError::TooLarge(_) => anyhow!("-S: {e}"),
    })?;
    if v % 512 != 0 || v > 16 << 20 {
        bail!("-S {s}: the sparse detection size must be a multiple of 512 up to 16M, or 0 to allocate the whole target");
    }
    Ok(v)
}

pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let _ = (args.src_cache, args.out_of_order, args.force_share);
    let opts = common::parse_options(&args.options)?;
    let out_format = args.output_format.unwrap_or(ImageFormat::Raw);
    if common::wants_help(&opts) {
        create::print_options_help(out_format);
        return Ok(ExitCode::SUCCESS);
    }
    let Some((target_name, sources)) = args.files.split_last() else {
        bail!("no files given");
    };
    if sources.is_empty() {
        bail!("give the source image(s) and then the target");
    }
    let min_sparse = match &args.sparse_size {
        Some(s) => sparse_size(s)?,
        None => 4096,
    };
    if args.target_is_zero && !args.no_create {
        bail!("--target-is-zero needs -n");
    }
    if args.no_create && !opts.is_empty() {
        bail!("-o has no effect with -n (the target is not created)");
    }
    let target_path = PathBuf::from(target_name);
    let sources: Vec<Arc<dyn Image>> = sources
        .iter()
        .map(|s| common::open(std::path::Path::new(s), args.format, true, true))
        .collect::<anyhow::Result<_>>()?;
    let total: u64 = sources.iter().map(|s| s.size()).sum();
    for s in &sources {
        for layer in vireo_disk::image::chain(s) {
            if common::same_file(layer.path(), &target_path) {
                bail!(
                    "the target {target_name} is {} itself, which the copy reads",
                    layer.path().display()
                );
            }
        }
    }

    let mut spec =
        Spec::from_options(out_format, &opts).map_err(|e| e.context(target_name.clone()))?;
    if let Some(b) = &args.backing {
        spec.backing_file = Some(b.clone());
    }
    if let Some(f) = args.backing_format {
        spec.backing_format = Some(f.name().to_owned());
    }
    if args.compress && out_format != ImageFormat::Qcow2 && !args.no_create {
        bail!("compression (-c) needs a qcow2 target (-O qcow2)");
    }
    let has_backing = spec.backing_file.is_some();
    if has_backing && args.no_create {
        bail!("-B has no effect with -n (the target is not created)");
    }
    if !args.no_create {
        if let Some(b) = &spec.backing_file {
            if out_format == ImageFormat::Raw {
                bail!("raw images cannot have a backing file; use -O qcow2");
            }
            if spec.backing_format.is_none() {
                bail!("a backing file (-B) needs its format given with -F");
            }
            create::check_backing(&target_path, b, spec.backing_format.as_deref(), false)
                .map_err(|e| e.context(target_name.clone()))?;
        }
        spec.create(&target_path, out_format, total)?;
    }
    let target_format = if args.no_create {
        common::format_of(&target_path, args.output_format)?
    } else {
        out_format
    };
    let target_cluster = match target_format {
        ImageFormat::Qcow2 => Qcow2::open(&target_path, true)?.cluster_size(),
        ImageFormat::Raw => 0,
    };
    let options = ConvertOptions {
        min_sparse,
        target_cluster,
        target_is_zero: if args.no_create {
            args.target_is_zero
        } else {
            !has_backing
        },
        top_only: has_backing,
        workers: args.parallel.map_or(4, usize::from),
        flush: args.cache.as_deref() != Some("unsafe"),
        ..ConvertOptions::default()
    };
    let progress = Progress::new(args.progress && !args.quiet);
    let callback = progress.callback();
    let result = if args.compress {
        if target_format != ImageFormat::Qcow2 {
            bail!("compression (-c) needs a qcow2 target");
        }
        let mut q = Qcow2::open(&target_path, false)?;
        if has_backing {
            // Whole-cluster writes need no backing data, but zero writes on a
            // version 2 image may.
            let chain = common::open(&target_path, Some(ImageFormat::Qcow2), true, true)?;
            q.set_backing(chain.backing().cloned());
        }
        tools::convert(&sources, Target::Compressed(&q), &options, &callback)
    } else {
        let target = common::open(&target_path, Some(target_format), false, true)?;
        tools::convert(&sources, Target::Plain(&*target), &options, &callback)
    };
    progress.finish(result.is_ok());
    result.with_context(|| format!("cannot convert into {target_name}"))?;
    Ok(ExitCode::SUCCESS)
}
