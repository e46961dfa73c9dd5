//! Runs a seeded random workload (writes, write-zeroes, discards, flushes)
//! on an image, for the crash test `tests/qcow2_crash.rs`, which kills it
//! with SIGKILL at random moments and then checks the image.
//!
//! Usage: `qcow2_writer IMAGE SEED OPS FLUSH_EVERY MAX_WRITE [SNAPSHOT_EVERY]`
//!
//! The workload is `workload::generate(SEED, ..)` with the image's cluster
//! size, so the test can regenerate it. After each flush the writer prints
//! `flushed N`: the first N operations are durable. With SNAPSHOT_EVERY, it
//! also takes an internal snapshot at the points `workload::snapshot_points`
//! names (closing and reopening the image around it) and deletes the one
//! two before. At the end it prints `done`.

// The tests use parts of the shared workload module this writer does not.
#[allow(dead_code)]
#[path = "../tests/common/workload.rs"]
mod workload;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vireo_disk::image::{self, BackingMode, Image, ImageError, ImageOptions, Qcow2};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {i} ({what})"))?
        .parse()
        .map_err(|_| format!("argument {i} ({what}) is not a number: {:?}", args[i]))
}

fn open(path: &Path) -> Result<Arc<dyn Image>, ImageError> {
    image::open(
        path,
        &ImageOptions {
            read_only: false,
            format: None,
            backing: BackingMode::Follow,
        },
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        return Err(
            "usage: qcow2_writer IMAGE SEED OPS FLUSH_EVERY MAX_WRITE [SNAPSHOT_EVERY]".into(),
        );
    }
    let path = PathBuf::from(&args[1]);
    let seed: u64 = arg(&args, 2, "seed")?;
    let ops: usize = arg(&args, 3, "operation count")?;
    let flush_every: usize = arg(&args, 4, "flush interval")?;
    let max_write: u64 = arg(&args, 5, "longest write")?;
    let snapshot_every: usize = if args.len() == 7 {
        arg(&args, 6, "snapshot interval")?
    } else {
        0
    };

    let cluster_size = Qcow2::open(&path, true)?.cluster_size();
    let mut image = open(&path)?;
    let mut params = workload::Params::new(image.size(), cluster_size, ops);
    params.flush_every = flush_every;
    params.max_write = max_write;
    let ops = workload::generate(seed, &params);
    let snapshots = workload::snapshot_points(&ops, snapshot_every);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (i, op) in ops.iter().enumerate() {
        workload::run(&*image, op).map_err(|e| format!("operation {i} {op:?}: {e}"))?;
        if *op != workload::Op::Flush {
            continue;
        }
        if let Some(k) = snapshots.iter().position(|&n| n == i + 1) {
            drop(image);
            let mut q = Qcow2::open(&path, false)?;
            q.snapshot_create(&format!("s{k}"))
                .map_err(|e| format!("snapshot s{k}: {e}"))?;
            if k >= 2 {
                q.snapshot_delete(&format!("s{}", k - 2))
                    .map_err(|e| format!("deleting snapshot s{}: {e}", k - 2))?;
            }
            drop(q);
            image = open(&path)?;
        }
        writeln!(out, "flushed {}", i + 1)?;
        out.flush()?;
    }
    image.flush()?;
    writeln!(out, "flushed {}", ops.len())?;
    drop(image);
    writeln!(out, "done")?;
    out.flush()?;
    Ok(())
}
