//! virtio-blk on qcow2 images: the guest's writes land in the overlay,
//! copy-on-write keeps the backing file's data around them, and the real
//! qemu-img finds the image clean afterwards.

use std::process::Command;

use vireo_disk::image::{self, CreateOptions, ImageOptions, Qcow2};
use vireo_e2e::{boot, kvm_or_skip, sector_pattern, MonitorExit, Scratch, SECTOR};

/// Matches the virtio-blk scenario's expectations (16384 sectors).
const DISK_BYTES: u64 = 8 << 20;

#[test]
fn guest_writes_to_a_qcow2_overlay_over_a_raw_backing_file() {
    if !kvm_or_skip("guest_writes_to_a_qcow2_overlay_over_a_raw_backing_file") {
        return;
    }
    let scratch = Scratch::new("virtio-qcow2");
    let base = scratch.path("base.raw");
    std::fs::write(&base, vec![0x11u8; DISK_BYTES as usize]).expect("writing the base image");
    let overlay = scratch.path("overlay.qcow2");
    Qcow2::create(
        &overlay,
        &CreateOptions {
            size: DISK_BYTES,
            cluster_size: 4096,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            ..Default::default()
        },
    )
    .expect("creating the overlay");
    let (pattern, start, count) = ("e2e-qcow2", 3u64, 20u64);
    let disk = format!("{},serial=vireo-qcow2", overlay.display());
    boot(
        &format!("scenario=virtio-blk mode=msix pattern={pattern} start={start} sectors={count}"),
        &["--disk", &disk],
    )
    .expect_exit(MonitorExit::Ok)
    .expect_stdout("virtio-blk: id 'vireo-qcow2'")
    .expect_stdout(&format!(
        "flushed and read back (direct chains) {count} sectors at {start}: match"
    ));

    // Read through the chain from the host: the pattern where the guest
    // wrote, the backing file's bytes around it, the base untouched.
    let chain = image::open(
        &overlay,
        &ImageOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("opening the overlay");
    let mut disk = vec![0u8; DISK_BYTES as usize];
    chain.read_at(&mut disk, 0).expect("reading the overlay");
    for lba in start..start + count {
        let at = lba as usize * SECTOR;
        assert_eq!(
            disk[at..at + SECTOR],
            sector_pattern(pattern, lba)[..],
            "sector {lba}"
        );
    }
    let before = (start as usize - 1) * SECTOR;
    assert!(
        disk[..before + SECTOR].iter().all(|&b| b == 0x11),
        "backing data before the write was lost"
    );
    let after = (start + count) as usize * SECTOR;
    assert!(
        disk[after..after + 4096].iter().all(|&b| b == 0x11),
        "backing data after the write was lost"
    );
    assert!(
        std::fs::read(&base)
            .expect("reading the base")
            .iter()
            .all(|&b| b == 0x11),
        "the backing file was written"
    );
    drop(chain);

    match Command::new("qemu-img").arg("check").arg(&overlay).output() {
        Ok(out) => assert!(
            out.status.success(),
            "qemu-img check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("qemu-img not installed: image check skipped"),
    }
}

#[test]
fn qcow2_direct_io_is_refused_clearly() {
    if !kvm_or_skip("qcow2_direct_io_is_refused_clearly") {
        return;
    }
    let scratch = Scratch::new("virtio-qcow2-direct");
    let path = scratch.path("d.qcow2");
    Qcow2::create(
        &path,
        &CreateOptions {
            size: DISK_BYTES,
            ..Default::default()
        },
    )
    .expect("creating the image");
    let disk = format!("{},direct", path.display());
    boot("scenario=virtio-blk", &["--disk", &disk])
        .expect_exit(MonitorExit::Usage)
        .expect_stderr("direct I/O on qcow2 images is not supported");
}
