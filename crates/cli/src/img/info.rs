//! `vireo img info`: what an image is (qemu-img info's output, human and
//! JSON).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use vireo_disk::image::{self, Qcow2, Qcow2Info, SnapshotInfo};
use vireo_disk::ImageFormat;

use super::common::{self, parse_format, OutputArgs, OutputFormat};
use super::json::{pretty, Json};
use super::size::human;
use super::snapshot;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Image format (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    #[command(flatten)]
    output: OutputArgs,
    /// Describe every image of the backing chain.
    #[arg(long)]
    backing_chain: bool,
    /// Accepted for qemu-img compatibility (vireo img takes no locks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: String,
}

/// The facts `info` shows about one image.
struct ImageInfo {
    filename: String,
    format: ImageFormat,
    virtual_size: u64,
    actual_size: u64,
    qcow2: Option<Qcow2Info>,
    snapshots: Vec<SnapshotInfo>,
    full_backing: Option<PathBuf>,
}

fn gather(path: &Path, name: String, format: ImageFormat) -> anyhow::Result<ImageInfo> {
    let image = common::open(path, Some(format), true, false)?;
    let (qcow2, snapshots) = if format == ImageFormat::Qcow2 {
        let q = Qcow2::open(path, true)?;
        (Some(q.qcow2_info()), q.snapshots())
    } else {
        (None, Vec::new())
    };
    // Names Vireo cannot open (json:, protocols) are still shown as stored.
    let full_backing = qcow2
        .as_ref()
        .and_then(|q| q.backing_file.as_deref())
        .and_then(|b| image::resolve_backing(path, b).ok());
    Ok(ImageInfo {
        filename: name,
        format,
        // The block layer counts in 512-byte sectors.
        virtual_size: image.size().next_multiple_of(512),
        actual_size: image.allocated_bytes(),
        qcow2,
        snapshots,
        full_backing,
    })
}

fn format_specific(q: &Qcow2Info) -> Vec<(&'static str, Json)> {
    let mut data = vec![(
        "compat",
        Json::str(if q.version >= 3 { "1.1" } else { "0.10" }),
    )];
    data.push(("compression-type", Json::str(q.compression.name())));
    if q.version >= 3 {
        data.push(("lazy-refcounts", Json::Bool(q.lazy_refcounts)));
    }
    data.push(("refcount-bits", Json::int(q.refcount_bits)));
    if q.version >= 3 {
        data.push(("corrupt", Json::Bool(q.corrupt)));
        data.push(("extended-l2", Json::Bool(q.extended_l2)));
    }
    data
}

fn to_json(info: &ImageInfo) -> Json {
    let mut m: Vec<(&'static str, Json)> = Vec::new();
    let backing = info.qcow2.as_ref().and_then(|q| q.backing_file.clone());
    let backing_format = info.qcow2.as_ref().and_then(|q| q.backing_format.clone());
    if backing.is_some() {
        if let Some(f) = &backing_format {
            m.push(("backing-filename-format", Json::str(f)));
        }
    }
    if !info.snapshots.is_empty() {
        m.push((
            "snapshots",
            Json::Array(info.snapshots.iter().map(snapshot::to_json).collect()),
        ));
    }
    m.push(("virtual-size", Json::int(info.virtual_size)));
    m.push(("filename", Json::str(&info.filename)));
    if let Some(q) = &info.qcow2 {
        m.push(("cluster-size", Json::int(q.cluster_size)));
    }
    m.push(("format", Json::str(info.format.name())));
    m.push(("actual-size", Json::int(info.actual_size)));
    if let Some(q) = &info.qcow2 {
        m.push((
            "format-specific",
            Json::Object(vec![
                ("type", Json::str("qcow2")),
                ("data", Json::Object(format_specific(q))),
            ]),
        ));
    }
    if let (Some(b), Some(full)) = (&backing, &info.full_backing) {
        m.push(("full-backing-filename", Json::str(full.to_string_lossy())));
        m.push(("backing-filename", Json::str(b)));
    }
    m.push((
        "dirty-flag",
        Json::Bool(info.qcow2.as_ref().is_some_and(|q| q.dirty)),
    ));
    Json::Object(m)
}

fn human_text(info: &ImageInfo) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("image: {}", info.filename));
    line(format!("file format: {}", info.format));
    line(format!(
        "virtual size: {} ({} bytes)",
        human(info.virtual_size),
        info.virtual_size
    ));
    line(format!("disk size: {}", human(info.actual_size)));
    if let Some(q) = &info.qcow2 {
        line(format!("cluster_size: {}", q.cluster_size));
        if q.dirty {
            line("cleanly shut down: no".into());
        }
        if let Some(b) = &q.backing_file {
            let full = info
                .full_backing
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned());
            match full {
                Some(full) if full != *b => {
                    line(format!("backing file: {b} (actual path: {full})"))
                }
                _ => line(format!("backing file: {b}")),
            }
            if let Some(f) = &q.backing_format {
                line(format!("backing file format: {f}"));
            }
        }
    }
    if !info.snapshots.is_empty() {
        line("Snapshot list:".into());
        line(snapshot::table_header());
        for s in &info.snapshots {
            line(snapshot::table_row(s));
        }
    }
    if let Some(q) = &info.qcow2 {
        line("Format specific information:".into());
        for (key, value) in format_specific(q) {
            let v = match value {
                Json::String(s) => s,
                Json::Bool(b) => b.to_string(),
                Json::Int(i) => i.to_string(),
                other => pretty(&other),
            };
            line(format!("    {}: {v}", key.replace('-', " ")));
        }
    }
    out
}

pub fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.file);
    let format = common::format_of(&path, args.format)?;
    let mut infos = vec![gather(&path, args.file.clone(), format)?];
    if args.backing_chain {
        // Open the whole chain first, so a missing layer fails the command.
        let top = common::open(&path, Some(format), true, true)?;
        for layer in image::chain(&top).iter().skip(1) {
            let name = layer.path().to_string_lossy().into_owned();
            infos.push(gather(layer.path(), name, layer.format())?);
        }
    }
    match args.output.format() {
        OutputFormat::Json => {
            let value = if args.backing_chain {
                Json::Array(infos.iter().map(to_json).collect())
            } else {
                to_json(&infos[0])
            };
            println!("{}", pretty(&value));
        }
        OutputFormat::Human => {
            let blocks: Vec<String> = infos.iter().map(human_text).collect();
            print!("{}", blocks.join("\n"));
        }
    }
    let _ = args.force_share;
    Ok(ExitCode::SUCCESS)
}
