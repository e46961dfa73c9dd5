//! What several `vireo img` commands share: formats, `--output`, `-o`
//! option lists, opening images.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};
use vireo_disk::image::{self, BackingMode, ImageOptions};
use vireo_disk::{Image, ImageFormat};

/// `-f FMT`, `-O FMT`, `-F FMT`.
pub fn parse_format(s: &str) -> Result<ImageFormat, String> {
    s.parse::<ImageFormat>()
        .map_err(|_| format!("unknown image format '{s}' (vireo img knows raw and qcow2)"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

/// `--output=human|json` (and `--json` for short).
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, value_name = "FMT")]
    output: Option<OutputFormat>,
    /// Same as --output=json.
    #[arg(long, conflicts_with = "output")]
    json: bool,
}

impl OutputArgs {
    pub fn format(&self) -> OutputFormat {
        if self.json {
            OutputFormat::Json
        } else {
            self.output.unwrap_or(OutputFormat::Human)
        }
    }
}

/// `-o a=1,b=2 -o c=3`: the options in order (later ones win when looked
/// up with [`option`]). `,,` is a literal comma. A bare word (`help`, `?`)
/// comes back with an empty value.
pub fn parse_options(lists: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for list in lists {
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = list.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for item in items {
            if item.is_empty() {
                bail!("invalid option list '{list}': an empty option");
            }
            match item.split_once('=') {
                Some((k, v)) => out.push((k.to_owned(), v.to_owned())),
                None => out.push((item, String::new())),
            }
        }
    }
    Ok(out)
}

/// The last value given for `key`.
pub fn option<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Whether the list asks for help (`-o help`, `-o ?`).
pub fn wants_help(opts: &[(String, String)]) -> bool {
    opts.iter()
        .any(|(k, v)| v.is_empty() && (k == "help" || k == "?"))
}

/// Opens an image read-only or read-write, with or without its backing
/// chain.
pub fn open(
    path: &Path,
    format: Option<ImageFormat>,
    read_only: bool,
    follow: bool,
) -> anyhow::Result<Arc<dyn Image>> {
    image::open(
        path,
        &ImageOptions {
            read_only,
            format,
            backing: if follow {
                BackingMode::Follow
            } else {
                BackingMode::Ignore
            },
        },
    )
    .map_err(|e| anyhow!(e))
}

/// The format of `path`: `given`, else probed.
pub fn format_of(path: &Path, given: Option<ImageFormat>) -> anyhow::Result<ImageFormat> {
    match given {
        Some(f) => Ok(f),
        None => image::probe(path).map_err(|e| anyhow!(e)),
    }
}

/// Opens a qcow2 image for a qcow2-only operation, with a clear refusal for
/// other formats.
pub fn open_qcow2(
    path: &Path,
    given: Option<ImageFormat>,
    read_only: bool,
    what: &str,
) -> anyhow::Result<vireo_disk::image::Qcow2> {
    let format = format_of(path, given)?;
    if format != ImageFormat::Qcow2 {
        bail!(
            "{}: {what} needs a qcow2 image; this is a {format} image",
            path.display()
        );
    }
    vireo_disk::image::Qcow2::open(path, read_only).map_err(|e| anyhow!(e))
}

/// Whether two paths name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A qemu-img-style `-t`/`-T` cache mode; only whether to flush matters
/// here.
pub fn parse_cache(s: &str) -> Result<String, String> {
    match s {
        "none" | "writeback" | "writethrough" | "directsync" | "unsafe" => Ok(s.to_owned()),
        other => Err(format!(
            "unknown cache mode '{other}' (known: none, writeback, writethrough, directsync, unsafe)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lists() {
        let opts = parse_options(&[
            "cluster_size=4k,compat=0.10".into(),
            "backing_file=a,,b".into(),
            "compat=1.1,help".into(),
        ])
        .expect("parse");
        assert_eq!(option(&opts, "compat"), Some("1.1"));
        assert_eq!(option(&opts, "backing_file"), Some("a,b"));
        assert_eq!(option(&opts, "cluster_size"), Some("4k"));
        assert!(wants_help(&opts));
        assert!(parse_options(&["a=1,".into()]).is_err());
        assert!(parse_options(&[String::new()]).is_err());
    }
}
