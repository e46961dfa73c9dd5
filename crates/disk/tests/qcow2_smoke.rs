//! Quick qcow2 checks against the real qemu-img (skipped without it).

use std::path::Path;
use std::process::Command;

use vireo_disk::image::{self, CreateOptions, Image, ImageOptions, Qcow2};

fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(path: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(path)
        .output()
        .expect("qemu-io runs");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("error"),
        "qemu-io {cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reads_what_qemu_wrote_and_qemu_reads_what_we_wrote() {
    if !have_qemu_img() {
        eprintln!("SKIPPED: qemu-img not installed");
        return;
    }
    let dir = tempdir();
    let img = dir.join("a.qcow2");
    let p = img.to_str().expect("succeeds");
    qemu_img(&["create", "-q", "-f", "qcow2", p, "64M"]);
    qemu_io(&img, "write -P 0x11 0 100k");
    qemu_io(&img, "write -P 0x22 1M 4k");
    qemu_io(&img, "write -c -P 0x33 2M 64k");
    qemu_io(&img, "write -z 1M 64k");
    let raw = dir.join("a.raw");
    qemu_img(&["convert", "-O", "raw", p, raw.to_str().expect("succeeds")]);
    let expect = std::fs::read(&raw).expect("succeeds");
    {
        let image = image::open(
            &img,
            &ImageOptions {
                read_only: false,
                ..Default::default()
            },
        )
        .expect("succeeds");
        let mut got = vec![0u8; expect.len()];
        image.read_at(&mut got, 0).expect("succeeds");
        assert!(got == expect, "contents differ");
        image.write_at(&[0x44; 3000], 5000).expect("succeeds");
        image
            .write_at(&[0x55; 70000], 2 * 1024 * 1024 + 100)
            .expect("succeeds");
        image
            .write_at(&[0x66; 8192], 40 * 1024 * 1024)
            .expect("succeeds");
        image.discard(1 << 20, 1 << 20).expect("succeeds");
        image.flush().expect("succeeds");
    }
    let check = qemu_img(&["check", p]);
    assert!(check.contains("No errors were found"), "{check}");
    qemu_io(&img, "read -P 0x44 5000 3000");
    qemu_io(&img, "read -P 0x55 2097252 70000");
    qemu_io(&img, "read -P 0x33 2097152 100");
    qemu_io(&img, "read -P 0x66 40M 8k");
    qemu_io(&img, "read -P 0 1M 1M");
}

#[test]
fn created_images_pass_qemu_check() {
    if !have_qemu_img() {
        eprintln!("SKIPPED: qemu-img not installed");
        return;
    }
    let dir = tempdir();
    for (name, opts) in [
        (
            "v3.qcow2",
            CreateOptions {
                size: 3 << 30,
                ..Default::default()
            },
        ),
        (
            "v2.qcow2",
            CreateOptions {
                size: 100 << 20,
                version: 2,
                ..Default::default()
            },
        ),
        (
            "small.qcow2",
            CreateOptions {
                size: 300 << 20,
                cluster_size: 4096,
                refcount_bits: 1,
                ..Default::default()
            },
        ),
        (
            "meta.qcow2",
            CreateOptions {
                size: 256 << 20,
                preallocation: image::Preallocation::Metadata,
                ..Default::default()
            },
        ),
    ] {
        let img = dir.join(name);
        Qcow2::create(&img, &opts).expect("succeeds");
        let check = qemu_img(&["check", img.to_str().expect("succeeds")]);
        assert!(check.contains("No errors were found"), "{name}: {check}");
        // Writes spread over the disk: many L2 tables and refcount blocks.
        {
            let image = image::open(&img, &ImageOptions::default()).expect("succeeds");
            let step = opts.size / 97;
            for i in 0..97u64 {
                image
                    .write_at(&[i as u8 + 1; 5000], i * step)
                    .expect("succeeds");
            }
        }
        let check = qemu_img(&["check", img.to_str().expect("succeeds")]);
        assert!(check.contains("No errors were found"), "{name}: {check}");
        let image = image::open(
            &img,
            &ImageOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .expect("succeeds");
        let step = opts.size / 97;
        for i in 0..97u64 {
            let mut b = vec![0u8; 5000];
            image.read_at(&mut b, i * step).expect("succeeds");
            assert!(b.iter().all(|&x| x == i as u8 + 1), "{name} {i}");
        }
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vireo-qcow2-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("succeeds");
    dir
}

#[test]
fn internal_snapshots_interoperate_with_qemu_img() {
    if !have_qemu_img() {
        eprintln!("SKIPPED: qemu-img not installed");
        return;
    }
    let dir = tempdir();
    let img = dir.join("s.qcow2");
    let p = img.to_str().expect("utf-8 path");
    Qcow2::create(
        &img,
        &CreateOptions {
            size: 32 << 20,
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .expect("create");
    {
        let image = image::open(&img, &ImageOptions::default()).expect("open");
        image.write_at(&[1u8; 10000], 0).expect("write");
        image.write_at(&[2u8; 10000], 20 << 20).expect("write");
    }
    {
        let mut q = Qcow2::open(&img, false).expect("open");
        let info = q.snapshot_create("first").expect("snapshot");
        assert_eq!(info.id, "1");
        // Copy-on-write of clusters shared with the snapshot.
        q.write_at(&[3u8; 5000], 2000).expect("write");
        q.write_at(&[4u8; 100], 30 << 20).expect("write");
    }
    let check = qemu_img(&["check", p]);
    assert!(check.contains("No errors were found"), "{check}");
    let list = qemu_img(&["snapshot", "-l", p]);
    assert!(list.contains("first"), "{list}");
    // qemu-img's own snapshot on top of ours, then ours applied back.
    qemu_img(&["snapshot", "-c", "second", p]);
    qemu_io(&img, "write -P 9 0 64k");
    {
        let mut q = Qcow2::open(&img, false).expect("open");
        assert_eq!(q.snapshots().len(), 2);
        q.snapshot_apply("first").expect("apply");
        let mut b = vec![0u8; 10000];
        q.read_at(&mut b, 0).expect("read");
        assert!(b.iter().all(|&x| x == 1), "snapshot contents not restored");
        q.read_at(&mut b, 20 << 20).expect("read");
        assert!(b.iter().all(|&x| x == 2));
        let mut c = vec![0u8; 100];
        q.read_at(&mut c, 30 << 20).expect("read");
        assert!(c.iter().all(|&x| x == 0));
    }
    let check = qemu_img(&["check", p]);
    assert!(check.contains("No errors were found"), "{check}");
    {
        let mut q = Qcow2::open(&img, false).expect("open");
        q.snapshot_delete("second").expect("delete");
        q.snapshot_delete("1").expect("delete by id");
        assert!(q.snapshots().is_empty());
        q.write_at(&[7u8; 9000], 100).expect("write in place again");
    }
    let check = qemu_img(&["check", p]);
    assert!(
        check.contains("No errors were found") && !check.contains("leaked"),
        "{check}"
    );
    qemu_io(&img, "read -P 7 100 9000");
    qemu_io(&img, "read -P 2 20M 10000");
}

#[test]
fn check_finds_and_repairs_leaks_and_low_refcounts_like_qemu_img() {
    use std::os::unix::fs::FileExt;
    use vireo_disk::image::qcow2::RepairMode;
    if !have_qemu_img() {
        eprintln!("SKIPPED: qemu-img not installed");
        return;
    }
    let dir = tempdir();
    let img = dir.join("c.qcow2");
    let p = img.to_str().expect("utf-8 path");
    qemu_img(&["create", "-q", "-f", "qcow2", p, "16M"]);
    qemu_io(&img, "write -P 1 0 192k");
    let mut q = Qcow2::open(&img, true).expect("open");
    let clean = q.check(RepairMode::None).expect("check");
    assert_eq!((clean.corruptions, clean.leaks), (0, 0), "{clean:?}");
    assert_eq!(clean.allocated_clusters, 3);
    assert_eq!(clean.total_clusters, 256);
    drop(q);
    // Drop the L2 entry of the third data cluster: a leak.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open file");
    let mut l1 = [0u8; 8];
    file.read_exact_at(&mut l1, 0x30000).expect("read L1");
    let l2 = u64::from_be_bytes(l1) & 0x00ff_ffff_ffff_fe00;
    file.write_all_at(&[0u8; 8], l2 + 16).expect("patch L2");
    let out = Command::new("qemu-img")
        .args(["check", p])
        .output()
        .expect("qemu-img");
    assert_eq!(out.status.code(), Some(3), "qemu-img sees a leak");
    let mut q = Qcow2::open(&img, false).expect("open");
    let report = q.check(RepairMode::None).expect("check");
    assert_eq!((report.corruptions, report.leaks), (0, 1), "{report:?}");
    let report = q.check(RepairMode::Leaks).expect("repair");
    assert_eq!(
        (report.leaks_fixed, report.leaks, report.corruptions),
        (1, 0, 0),
        "{report:?}"
    );
    drop(q);
    let check = qemu_img(&["check", p]);
    assert!(check.contains("No errors were found"), "{check}");
    // A refcount of 0 under a referenced cluster: a corruption, fixed by -r all.
    let mut rt = [0u8; 8];
    file.read_exact_at(&mut rt, 0x10000)
        .expect("read refcount table");
    let block = u64::from_be_bytes(rt);
    let data_cluster = {
        let mut e = [0u8; 8];
        file.read_exact_at(&mut e, l2).expect("read L2");
        (u64::from_be_bytes(e) & 0x00ff_ffff_ffff_fe00) >> 16
    };
    file.write_all_at(&[0u8; 2], block + data_cluster * 2)
        .expect("patch refcount");
    let out = Command::new("qemu-img")
        .args(["check", p])
        .output()
        .expect("qemu-img");
    assert_eq!(out.status.code(), Some(2), "qemu-img sees a corruption");
    let mut q = Qcow2::open(&img, false).expect("open");
    let report = q.check(RepairMode::None).expect("check");
    assert!(report.corruptions >= 1, "{report:?}");
    let report = q.check(RepairMode::All).expect("repair");
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{report:?}");
    drop(q);
    let check = qemu_img(&["check", p]);
    assert!(check.contains("No errors were found"), "{check}");
    qemu_io(&img, "read -P 1 0 128k");
}
