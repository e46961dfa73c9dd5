//! `vireo img create`: new raw or qcow2 images (qemu-img create), and the
//! `-o` options that `convert` shares.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use vireo_disk::image::{self, CompressionType, CreateOptions, Preallocation, Qcow2, RawImage};
use vireo_disk::ImageFormat;

use super::common::{self, option, parse_format};
use super::size::{parse_size, SizeError};

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Image format: raw or qcow2.
    #[arg(short = 'f', value_name = "FMT", default_value = "raw", value_parser = parse_format)]
    format: ImageFormat,
    /// Backing file (qcow2): recorded as given, relative names from the new image's directory.
    #[arg(short = 'b', value_name = "FILE")]
    backing: Option<String>,
    /// Format of the backing file (required with -b).
    #[arg(short = 'F', value_name = "FMT", value_parser = parse_format)]
    backing_format: Option<ImageFormat>,
    /// Do not open the backing file (then a size is required).
    #[arg(short = 'u')]
    no_open: bool,
    /// Format options: cluster_size, preallocation, compat, refcount_bits,
    /// compression_type, backing_file, backing_fmt, lazy_refcounts, extended_l2, size
    /// ('-o help' lists them).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Print nothing on success.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image to create (replaced if it exists).
    file: Option<String>,
    /// Virtual size in bytes, with an optional suffix k, M, G, T, P, E (powers
    /// of 1024); by default the backing file's size.
    size: Option<String>,
}

/// Everything that decides what a new image looks like, from `-o` and the
/// flags, with the text each option was given as (for the Formatting line).
#[derive(Debug, Default)]
pub struct Spec {
    pub size: Option<u64>,
    cluster_size: Option<u64>,
    compat: Option<(u32, String)>,
    refcount_bits: Option<u32>,
    compression: Option<(CompressionType, String)>,
    preallocation: Option<(Preallocation, String)>,
    lazy_refcounts: Option<String>,
    extended_l2: Option<String>,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

const QCOW2_OPTIONS: &[(&str, &str, &str)] = &[
    ("backing_file", "<str>", "name of the backing file"),
    (
        "backing_fmt",
        "<str>",
        "format of the backing file (raw, qcow2)",
    ),
    (
        "cluster_size",
        "<size>",
        "cluster size, 512 to 2M, a power of two (default 64k)",
    ),
    (
        "compat",
        "<str>",
        "qcow2 version: 0.10 (v2) or 1.1 (v3, the default)",
    ),
    (
        "compression_type",
        "<str>",
        "compression of compressed clusters: zlib or zstd",
    ),
    (
        "extended_l2",
        "<bool (on/off)>",
        "subclusters (only off is supported)",
    ),
    (
        "lazy_refcounts",
        "<bool (on/off)>",
        "lazy refcount updates (only off is supported)",
    ),
    (
        "preallocation",
        "<str>",
        "preallocation mode: off, metadata, falloc, full",
    ),
    (
        "refcount_bits",
        "<num>",
        "width of a refcount entry, a power of two up to 64",
    ),
    ("size", "<size>", "virtual disk size"),
];

const RAW_OPTIONS: &[(&str, &str, &str)] = &[
    (
        "preallocation",
        "<str>",
        "preallocation mode: off, falloc, full",
    ),
    ("size", "<size>", "virtual disk size"),
];

/// Prints the options `format` takes (`-o help`).
pub fn print_options_help(format: ImageFormat) {
    println!("Supported {format} options:");
    let list = match format {
        ImageFormat::Qcow2 => QCOW2_OPTIONS,
        ImageFormat::Raw => RAW_OPTIONS,
    };
    for (name, kind, about) in list {
        println!("  {:<22} - {about}", format!("{name}={kind}"));
    }
}

fn option_size(key: &str, value: &str) -> anyhow::Result<u64> {
    parse_size(value).map_err(|e| match e {
        SizeError::Invalid(_) => anyhow!(
            "option {key}={value}: expected a size (a number with an optional k, M, G, T, P or E suffix)"
        ),
        SizeError::TooLarge(_) => anyhow!("option {key}={value}: the value is out of range"),
    })
}

fn parse_bool(key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => bail!("option {key}={value}: expected 'on' or 'off'"),
    }
}

impl Spec {
    /// Reads `-o` options for `format`, refusing unknown ones.
    pub fn from_options(format: ImageFormat, opts: &[(String, String)]) -> anyhow::Result<Self> {
        let known = match format {
            ImageFormat::Qcow2 => QCOW2_OPTIONS,
            ImageFormat::Raw => RAW_OPTIONS,
        };
        for (k, _) in opts {
            if !known.iter().any(|(n, _, _)| n == k) {
                let names: Vec<&str> = known.iter().map(|(n, _, _)| *n).collect();
                bail!(
                    "the {format} format has no option '{k}' (its options: {})",
                    names.join(", ")
                );
            }
        }
        let mut spec = Spec::default();
        if let Some(v) = option(opts, "size") {
            spec.size = Some(option_size("size", v)?);
        }
        if let Some(v) = option(opts, "preallocation") {
            let p: Preallocation = v
                .parse()
                .map_err(|e: String| anyhow!("option preallocation: {e}"))?;
            if format == ImageFormat::Raw && p == Preallocation::Metadata {
                bail!("preallocation=metadata is for qcow2; raw images take off, falloc or full");
            }
            spec.preallocation = Some((p, v.to_owned()));
        }
        if format == ImageFormat::Raw {
            return Ok(spec);
        }
        if let Some(v) = option(opts, "cluster_size") {
            spec.cluster_size = Some(option_size("cluster_size", v)?);
        }
        if let Some(v) = option(opts, "compat") {
            let version = match v {
                "0.10" | "v2" => 2,
                "1.1" | "v3" => 3,
                _ => bail!("option compat={v}: expected 0.10 (or v2) or 1.1 (or v3)"),
            };
            spec.compat = Some((version, v.to_owned()));
        }
        if let Some(v) = option(opts, "refcount_bits") {
            let bits: u32 = v
                .parse()
                .map_err(|_| anyhow!("option refcount_bits={v}: expected a number"))?;
            spec.refcount_bits = Some(bits);
        }
        if let Some(v) = option(opts, "compression_type") {
            let c: CompressionType = v
                .parse()
                .map_err(|e: String| anyhow!("option compression_type: {e}"))?;
            spec.compression = Some((c, v.to_owned()));
        }
        if let Some(v) = option(opts, "lazy_refcounts") {
            if parse_bool("lazy_refcounts", v)? {
                bail!("lazy_refcounts=on is not supported by vireo img (images are always written with exact refcounts)");
            }
            spec.lazy_refcounts = Some(v.to_owned());
        }
        if let Some(v) = option(opts, "extended_l2") {
            if parse_bool("extended_l2", v)? {
                bail!("extended_l2=on (subclusters) is not supported by vireo img");
            }
            spec.extended_l2 = Some(v.to_owned());
        }
        spec.backing_file = option(opts, "backing_file").map(str::to_owned);
        spec.backing_format = option(opts, "backing_fmt").map(str::to_owned);
        Ok(spec)
    }

    fn qcow2_options(&self, size: u64) -> anyhow::Result<CreateOptions> {
        let d = CreateOptions::default();
        let version = self.compat.as_ref().map_or(d.version, |c| c.0);
        let refcount_bits = self.refcount_bits.unwrap_or(d.refcount_bits);
        if version < 3 && refcount_bits != 16 {
            bail!("refcount widths other than 16 bits need compat=1.1");
        }
        let compression = self.compression.as_ref().map_or(d.compression, |c| c.0);
        if version < 3 && compression != CompressionType::Zlib {
            bail!("compression_type={} needs compat=1.1", compression.name());
        }
        Ok(CreateOptions {
            size,
            cluster_size: self.cluster_size.unwrap_or(d.cluster_size),
            version,
            refcount_bits,
            compression,
            backing_file: self.backing_file.clone(),
            backing_format: self.backing_format.clone(),
            preallocation: self.preallocation.as_ref().map_or(d.preallocation, |p| p.0),
        })
    }

    /// qemu-img's "Formatting ..." line for `file` (as given) of `size`.
    pub fn formatting_line(&self, file: &str, format: ImageFormat, size: u64) -> String {
        let mut line = format!("Formatting '{file}', fmt={format}");
        let mut add = |k: &str, v: &str| line.push_str(&format!(" {k}={v}"));
        match format {
            ImageFormat::Raw => {
                add("size", &size.to_string());
                if let Some((_, p)) = &self.preallocation {
                    add("preallocation", p);
                }
            }
            ImageFormat::Qcow2 => {
                add(
                    "cluster_size",
                    &self.cluster_size.unwrap_or(65536).to_string(),
                );
                add("extended_l2", self.extended_l2.as_deref().unwrap_or("off"));
                if let Some((_, p)) = &self.preallocation {
                    add("preallocation", p);
                }
                add(
                    "compression_type",
                    self.compression.as_ref().map_or("zlib", |c| c.1.as_str()),
                );
                add("size", &size.to_string());
                if let Some((_, c)) = &self.compat {
                    add("compat", c);
                }
                if let Some(b) = &self.backing_file {
                    add("backing_file", b);
                }
                if let Some(f) = &self.backing_format {
                    add("backing_fmt", f);
                }
                add(
                    "lazy_refcounts",
                    self.lazy_refcounts.as_deref().unwrap_or("off"),
                );
                add(
                    "refcount_bits",
                    &self.refcount_bits.unwrap_or(16).to_string(),
                );
            }
        }
        line
    }

    /// Creates the image (its size rounded up to 512 bytes, as qemu-img
    /// does).
    pub fn create(&self, path: &Path, format: ImageFormat, size: u64) -> anyhow::Result<()> {
        let size = size.next_multiple_of(512);
        match format {
            ImageFormat::Raw => {
                if self.backing_file.is_some() {
                    bail!("raw images cannot have a backing file; use -f qcow2");
                }
                let prealloc = self
                    .preallocation
                    .as_ref()
                    .map_or(Preallocation::Off, |p| p.0);
                RawImage::create(path, size, prealloc)?;
            }
            ImageFormat::Qcow2 => Qcow2::create(path, &self.qcow2_options(size)?)?,
        }
        Ok(())
    }
}

/// Checks the backing file of a new image named `file` and returns its
/// virtual size (`None` with `no_open`).
pub fn check_backing(
    file: &Path,
    backing: &str,
    backing_format: Option<&str>,
    no_open: bool,
) -> anyhow::Result<Option<u64>> {
    if backing.is_empty() {
        bail!("the backing file name is empty");
    }
    let resolved = image::resolve_backing(file, backing)?;
    if resolved == file || common::same_file(&resolved, file) {
        bail!("the backing file {backing} is the image being created");
    }
    let Some(fmt) = backing_format else {
        let hint = if no_open {
            String::new()
        } else {
            match image::probe(&resolved) {
                Ok(f) => format!("; {} looks like {f}: add -F {f}", resolved.display()),
                Err(_) => String::new(),
            }
        };
        bail!("a backing file needs its format given with -F (qemu-img 7.2 refuses to guess it too){hint}");
    };
    let fmt = parse_format(fmt).map_err(|e| anyhow!(e))?;
    if no_open {
        return Ok(None);
    }
    let b = common::open(&resolved, Some(fmt), true, true)
        .with_context(|| format!("cannot open the backing file {}", resolved.display()))?;
    Ok(Some(b.size()))
}

pub fn run(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let opts = common::parse_options(&args.options)?;
    if common::wants_help(&opts) {
        print_options_help(args.format);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(file) = args.file.as_deref() else {
        anyhow::bail!("give the name of the image to create");
    };
    let path = PathBuf::from(file);
    let in_file = |e: anyhow::Error| e.context(file.to_owned());
    let mut spec = Spec::from_options(args.format, &opts).map_err(in_file)?;
    let given_size = match &args.size {
        Some(s) => {
            if spec.size.is_some() {
                return Err(in_file(anyhow!(
                    "the size is given twice (-o size= and a SIZE argument)"
                )));
            }
            Some(parse_size(s)?)
        }
        None => spec.size,
    };
    if args.backing.is_some() {
        spec.backing_file = args.backing.clone();
    }
    if let Some(f) = args.backing_format {
        spec.backing_format = Some(f.name().to_owned());
    }
    let size = match &spec.backing_file {
        Some(b) => {
            if args.format == ImageFormat::Raw {
                return Err(in_file(anyhow!(
                    "raw images cannot have a backing file; use -f qcow2"
                )));
            }
            let backing_size =
                check_backing(&path, b, spec.backing_format.as_deref(), args.no_open)
                    .map_err(in_file)?;
            given_size.or(backing_size)
        }
        None => {
            if spec.backing_format.is_some() {
                return Err(in_file(anyhow!(
                    "a backing format (-F or backing_fmt) needs a backing file (-b)"
                )));
            }
            given_size
        }
    };
    let Some(size) = size else {
        return Err(in_file(anyhow!(
            "the size is missing: give it after the file name (for example 10G)"
        )));
    };
    if !args.quiet {
        println!("{}", spec.formatting_line(file, args.format, size));
    }
    spec.create(&path, args.format, size)?;
    Ok(ExitCode::SUCCESS)
}
