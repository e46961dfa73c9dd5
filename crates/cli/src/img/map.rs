//! `vireo img map`: where each range of the virtual disk is stored.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use vireo_disk::image::tools::{self, MapEntry};
use vireo_disk::ImageFormat;

use super::common::{self, parse_format, OutputArgs, OutputFormat};
use super::size::parse_size;

#[derive(Args, Debug)]
pub struct MapArgs {
    /// Image format (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    #[command(flatten)]
    output: OutputArgs,
    /// Start at this guest offset.
    #[arg(short = 's', long, value_name = "OFFSET", value_parser = parse_size)]
    start_offset: Option<u64>,
    /// Map at most this many bytes.
    #[arg(short = 'l', long, value_name = "LEN", value_parser = parse_size)]
    max_length: Option<u64>,
    /// Accepted for qemu-img compatibility (vireo img takes no locks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: String,
}

/// `%#x`: hexadecimal with 0x, but plain 0.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// One entry of the JSON list, on one line.
pub fn json_entry(e: &MapEntry) -> String {
    let mut s = format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
        e.start, e.length, e.depth, e.present, e.zero, e.data
    );
    if let Some(o) = e.offset {
        s.push_str(&format!(", \"offset\": {o}"));
    }
    s.push('}');
    s
}

pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let _ = args.force_share;
    let path = PathBuf::from(&args.file);
    let image = common::open(&path, args.format, true, true)?;
    let size = image.size();
    let start = args.start_offset.unwrap_or(0).min(size);
    let len = args.max_length.unwrap_or(u64::MAX).min(size - start);
    let entries = tools::map(&image, start, len)?;
    match args.output.format() {
        OutputFormat::Json => {
            let lines: Vec<String> = if entries.is_empty() {
                vec![json_entry(&MapEntry {
                    start,
                    length: 0,
                    depth: 0,
                    present: false,
                    zero: false,
                    data: false,
                    offset: None,
                    compressed: false,
                    file: path.clone(),
                })]
            } else {
                entries.iter().map(json_entry).collect()
            };
            println!("[{}]", lines.join(",\n"));
        }
        OutputFormat::Human => {
            println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
            for e in entries.iter().filter(|e| e.data && !e.zero) {
                let Some(offset) = e.offset else {
                    bail!(
                        "{}: compressed clusters have no place in a file to show (use --output=json)",
                        args.file
                    );
                };
                println!(
                    "{:<16}{:<16}{:<16}{}",
                    hex(e.start),
                    hex(e.length),
                    hex(offset),
                    e.file.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
