//! `vireo img snapshot`: list, create, apply and delete internal
//! snapshots of a qcow2 image; and the snapshot table `info` prints too.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args};
use vireo_disk::image::{Qcow2, SnapshotInfo};
use vireo_disk::{Image, ImageFormat};

use super::common::{self, parse_format};
use super::json::Json;
use super::size::human;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").args(["list", "create", "apply", "delete"])))]
pub struct SnapshotArgs {
    /// List the snapshots.
    #[arg(short = 'l')]
    list: bool,
    /// Take a snapshot named NAME.
    #[arg(short = 'c', value_name = "NAME")]
    create: Option<String>,
    /// Revert the disk to snapshot ID or NAME.
    #[arg(short = 'a', value_name = "SNAPSHOT")]
    apply: Option<String>,
    /// Delete snapshot ID or NAME.
    #[arg(short = 'd', value_name = "SNAPSHOT")]
    delete: Option<String>,
    /// Image format (probed by default).
    #[arg(short = 'f', value_name = "FMT", value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Print nothing on success (the list is still printed).
    #[arg(short = 'q')]
    quiet: bool,
    /// Accepted for qemu-img compatibility (vireo img takes no locks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: String,
}

/// The table header, columns as qemu-img prints them.
pub fn table_header() -> String {
    format!(
        "{:<9} {:<17} {:>7}{:>20}{:>13}{:>11}",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    )
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
fn local_date(secs: u32) -> String {
    let t = libc::time_t::from(secs);
    // SAFETY: an all-zero `tm` is a valid value for localtime_r to fill.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals for the duration of the call.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `HH:MM:SS.mmm` of a VM clock in nanoseconds.
fn vm_clock(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        ms
    )
}

/// One row of the table.
pub fn table_row(s: &SnapshotInfo) -> String {
    format!(
        "{:<9} {:<17} {:>7}{:>20}{:>13}{:>11}",
        s.id,
        s.name,
        human(s.vm_state_size),
        local_date(s.date_sec),
        vm_clock(s.vm_clock_nsec),
        s.icount.map(|i| i.to_string()).unwrap_or_default()
    )
}

/// A snapshot in `info --output=json` (qemu-img's key order).
pub fn to_json(s: &SnapshotInfo) -> Json {
    let mut m = Vec::new();
    if let Some(i) = s.icount {
        m.push(("icount", Json::int(i)));
    }
    m.push(("vm-clock-nsec", Json::int(s.vm_clock_nsec % 1_000_000_000)));
    m.push(("name", Json::str(&s.name)));
    m.push(("date-sec", Json::int(s.date_sec)));
    m.push(("date-nsec", Json::int(s.date_nsec)));
    m.push(("vm-clock-sec", Json::int(s.vm_clock_nsec / 1_000_000_000)));
    m.push(("id", Json::str(&s.id)));
    m.push(("vm-state-size", Json::int(s.vm_state_size)));
    Json::Object(m)
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.file);
    let _ = (args.quiet, args.force_share);
    let format = common::format_of(&path, args.format)?;
    if args.create.is_none() && args.apply.is_none() && args.delete.is_none() {
        if !args.list {
            return Ok(ExitCode::SUCCESS);
        }
        if format != ImageFormat::Qcow2 {
            // Raw images have no snapshots: nothing to list.
            common::open(&path, Some(format), true, false)?;
            return Ok(ExitCode::SUCCESS);
        }
        let q = Qcow2::open(&path, true)?;
        let list = q.snapshots();
        if !list.is_empty() {
            println!("Snapshot list:");
            println!("{}", table_header());
            for s in &list {
                println!("{}", table_row(s));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut q = common::open_qcow2(&path, Some(format), false, "an internal snapshot")?;
    if let Some(name) = &args.create {
        q.snapshot_create(name)
            .with_context(|| format!("cannot create snapshot '{name}'"))?;
    } else if let Some(key) = &args.apply {
        q.snapshot_apply(key)
            .with_context(|| format!("cannot apply snapshot '{key}'"))?;
    } else if let Some(key) = &args.delete {
        q.snapshot_delete(key)
            .with_context(|| format!("cannot delete snapshot '{key}'"))?;
    }
    q.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns() {
        assert_eq!(
            table_header(),
            "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT"
        );
        assert_eq!(vm_clock(3_723_456_789_012), "01:02:03.456");
        assert_eq!(vm_clock(360_000_000_000_000), "100:00:00.000");
        let s = SnapshotInfo {
            id: "1".into(),
            name: "first".into(),
            date_sec: 0,
            date_nsec: 0,
            vm_clock_nsec: 0,
            vm_state_size: 123_456_789,
            disk_size: None,
            icount: None,
        };
        let row = table_row(&s);
        assert!(
            row.starts_with("1         first             118 MiB "),
            "{row}"
        );
        assert!(row.ends_with("00:00:00.000           "), "{row}");
        assert_eq!(row.len(), 79);
    }
}
