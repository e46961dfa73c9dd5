//! `vireo img check`: consistency check (and repair) of a qcow2 image,
//! with qemu-img check's report and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use vireo_disk::image::qcow2::{CheckReport, RepairMode};
use vireo_disk::image::Qcow2;
use vireo_disk::ImageFormat;

use super::common::{self, parse_cache, parse_format, OutputArgs, OutputFormat};
use super::json::{pretty, Json};

/// Exit codes, as qemu-img check's.
pub const EXIT_CORRUPT: u8 = 2;
pub const EXIT_LEAKS: u8 = 3;
pub const EXIT_UNSUPPORTED: u8 = 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Repair {
    /// Free leaked clusters.
    Leaks,
    /// Leaks and corruptions.
    All,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Image format (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    #[command(flatten)]
    output: OutputArgs,
    /// Repair: leaks, or all.
    #[arg(short = 'r', value_enum, value_name = "WHAT")]
    repair: Option<Repair>,
    /// Print nothing on stdout.
    #[arg(short = 'q')]
    quiet: bool,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 'T', value_name = "CACHE", value_parser = parse_cache)]
    src_cache: Option<String>,
    /// Accepted for qemu-img compatibility (vireo img takes no locks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: String,
}

fn human_report(r: &CheckReport) -> String {
    let mut out = String::new();
    if r.corruptions_fixed + r.leaks_fixed > 0 {
        out.push_str("The following inconsistencies were found and repaired:\n\n");
        out.push_str(&format!("    {} leaked clusters\n", r.leaks_fixed));
        out.push_str(&format!("    {} corruptions\n\n", r.corruptions_fixed));
        out.push_str("Double checking the fixed image now...\n");
    }
    if r.corruptions > 0 {
        out.push_str(&format!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
            r.corruptions
        ));
    }
    if r.leaks > 0 {
        out.push_str(&format!(
            "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
            r.leaks
        ));
    }
    if r.corruptions == 0 && r.leaks == 0 {
        out.push_str("No errors were found on the image.\n");
    }
    if r.total_clusters > 0 && r.allocated_clusters > 0 {
        let a = r.allocated_clusters as f64;
        out.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            a * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / a,
            r.compressed_clusters as f64 * 100.0 / a,
        ));
    }
    out.push_str(&format!("Image end offset: {}\n", r.image_end_offset));
    out
}

fn json_report(r: &CheckReport, file: &str) -> Json {
    let mut m = vec![("image-end-offset", Json::int(r.image_end_offset))];
    let opt = |m: &mut Vec<(&'static str, Json)>, k: &'static str, v: u64| {
        if v != 0 {
            m.push((k, Json::int(v)));
        }
    };
    opt(&mut m, "compressed-clusters", r.compressed_clusters);
    m.push(("total-clusters", Json::int(r.total_clusters)));
    opt(&mut m, "corruptions", r.corruptions);
    opt(&mut m, "corruptions-fixed", r.corruptions_fixed);
    m.push(("check-errors", Json::int(0)));
    opt(&mut m, "leaks", r.leaks);
    opt(&mut m, "leaks-fixed", r.leaks_fixed);
    opt(&mut m, "allocated-clusters", r.allocated_clusters);
    m.push(("filename", Json::str(file)));
    m.push(("format", Json::str("qcow2")));
    opt(&mut m, "fragmented-clusters", r.fragmented_clusters);
    Json::Object(m)
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let _ = (args.src_cache, args.force_share);
    let path = PathBuf::from(&args.file);
    let format = common::format_of(&path, args.format)?;
    if format != ImageFormat::Qcow2 {
        common::open(&path, Some(format), true, false)?;
        eprintln!(
            "vireo img: {}: {format} images have no metadata to check",
            args.file
        );
        return Ok(ExitCode::from(EXIT_UNSUPPORTED));
    }
    let mode = match args.repair {
        None => RepairMode::None,
        Some(Repair::Leaks) => RepairMode::Leaks,
        Some(Repair::All) => RepairMode::All,
    };
    let mut q = if mode == RepairMode::None {
        Qcow2::open(&path, true)?
    } else {
        Qcow2::open_for_repair(&path)?
    };
    let report = q.check(mode).context("check failed")?;
    for m in &report.messages {
        eprintln!("{m}");
    }
    if !args.quiet {
        match args.output.format() {
            OutputFormat::Human => print!("{}", human_report(&report)),
            OutputFormat::Json => println!("{}", pretty(&json_report(&report, &args.file))),
        }
    }
    Ok(if report.corruptions > 0 {
        ExitCode::from(EXIT_CORRUPT)
    } else if report.leaks > 0 {
        ExitCode::from(EXIT_LEAKS)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_text() {
        let r = CheckReport {
            leaks: 1,
            allocated_clusters: 23,
            total_clusters: 1024,
            fragmented_clusters: 1,
            image_end_offset: 1_900_544,
            ..CheckReport::default()
        };
        assert_eq!(
            human_report(&r),
            "\n1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n23/1024 = 2.25% allocated, 4.35% fragmented, 0.00% compressed clusters\nImage end offset: 1900544\n"
        );
        assert_eq!(
            pretty(&json_report(&r, "leak.qcow2")),
            "{\n    \"image-end-offset\": 1900544,\n    \"total-clusters\": 1024,\n    \"check-errors\": 0,\n    \"leaks\": 1,\n    \"allocated-clusters\": 23,\n    \"filename\": \"leak.qcow2\",\n    \"format\": \"qcow2\",\n    \"fragmented-clusters\": 1\n}"
        );
    }
}
