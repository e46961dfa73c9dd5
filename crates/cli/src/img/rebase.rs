//! `vireo img rebase`: give a qcow2 image a new backing file (or none),
//! keeping its contents (safe mode) or just rewriting the header (`-u`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use vireo_disk::image::{self, tools};
use vireo_disk::{Image, ImageFormat};

use super::common::{self, parse_cache, parse_format};
use super::progress::Progress;

#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// Image format (probed by default; must be qcow2).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Unsafe: only rewrite the backing file name in the header.
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// The new backing file, as it will be recorded (relative names from the
    /// image's directory); "" for none.
    #[arg(short = 'b', value_name = "FILE")]
    backing: Option<String>,
    /// Format of the new backing file (required with a non-empty -b).
    #[arg(short = 'F', value_name = "FMT", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Print nothing.
    #[arg(short = 'q')]
    quiet: bool,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't', value_name = "CACHE", value_parser = parse_cache)]
    cache: Option<String>,
    /// Source cache mode (accepted for qemu-img compatibility).
    #[arg(short = 'T', value_name = "CACHE", value_parser = parse_cache)]
    src_cache: Option<String>,
    /// Accepted for qemu-img compatibility (vireo img takes no locks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: String,
}

pub fn run(args: RebaseArgs) -> anyhow::Result<ExitCode> {
    let _ = (args.cache, args.src_cache, args.force_share);
    let path = PathBuf::from(&args.file);
    let new_name = match args.backing.as_deref() {
        None if !args.unsafe_mode => bail!(
            "give the new backing file with -b (-b \"\" for none), or use -u to change only the header"
        ),
        None | Some("") => None,
        Some(name) => Some(name.to_owned()),
    };
    let new_format = match (&new_name, args.backing_format) {
        (Some(name), None) => {
            let hint = image::resolve_backing(&path, name)
                .ok()
                .and_then(|p| image::probe(&p).ok())
                .map(|f| format!(" (it looks like {f}: add -F {f})"))
                .unwrap_or_default();
            bail!("cannot change the backing file to '{name}': give its format with -F{hint}");
        }
        (Some(_), Some(f)) => Some(f),
        (None, _) => None,
    };
    let mut q = common::open_qcow2(&path, args.format, false, "changing the backing file")?;
    if args.unsafe_mode {
        q.set_backing_file(new_name.as_deref(), new_format.map(|f| f.name()))?;
        return Ok(ExitCode::SUCCESS);
    }
    // The old chain, to read what the image shows now.
    if let Some(old) = q.backing_file_name() {
        let old_path = image::resolve_backing(&path, &old)?;
        let old_format = match q.backing_format_name() {
            Some(f) => Some(parse_format(&f).map_err(|e| anyhow!(e))?),
            None => None,
        };
        let chain = common::open(&old_path, old_format, true, true)
            .with_context(|| format!("cannot open the current backing file '{old}'"))?;
        q.set_backing(Some(chain));
    }
    let new_backing = match (&new_name, new_format) {
        (Some(name), Some(fmt)) => {
            let p = image::resolve_backing(&path, name)?;
            Some(
                common::open(&p, Some(fmt), true, true)
                    .with_context(|| format!("cannot open the new backing file '{name}'"))?,
            )
        }
        _ => None,
    };
    if let Some(nb) = &new_backing {
        if image::chain(nb)
            .iter()
            .any(|l| common::same_file(l.path(), &path))
        {
            bail!(
                "{} cannot be its own backing file (the new chain leads back to it)",
                args.file
            );
        }
    }
    let cluster = q.cluster_size();
    let q = Arc::new(q);
    let as_image: Arc<dyn Image> = q.clone();
    let progress = Progress::new(args.progress && !args.quiet);
    let callback = progress.callback();
    let result = tools::rebase(&as_image, new_backing.as_ref(), cluster, &callback);
    progress.finish(result.is_ok());
    result.context("cannot copy the data that differs between the old and new backing files")?;
    drop(as_image);
    let mut q = Arc::try_unwrap(q).map_err(|_| anyhow!("the image is still in use"))?;
    q.set_backing_file(new_name.as_deref(), new_format.map(|f| f.name()))?;
    Ok(ExitCode::SUCCESS)
}
