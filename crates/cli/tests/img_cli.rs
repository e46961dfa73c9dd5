//! `vireo img` against the real qemu-img: the same files give the same
//! answers, and what one writes the other reads. Skipped (loudly) when
//! qemu-img is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: qemu-img or qemu-io is not installed");
    }
    ok
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-img-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `vireo img ARGS` in `dir`; must succeed.
fn vireo(dir: &Path, args: &[&str]) -> String {
    let out = vireo_raw(dir, args);
    assert!(
        out.status.success(),
        "vireo img {args:?} failed: {}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

fn vireo_raw(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["img"];
    all.extend_from_slice(args);
    run(env!("CARGO_BIN_EXE_vireo"), dir, &all)
}

/// Runs `qemu-img ARGS` in `dir`; must succeed.
fn qemu_img(dir: &Path, args: &[&str]) -> String {
    let out = run("qemu-img", dir, args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

fn qemu_io(dir: &Path, file: &str, cmds: &[&str]) {
    let mut args = vec![];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(file);
    let out = run("qemu-io", dir, &args);
    assert!(
        out.status.success() && !text(&out).contains("error"),
        "qemu-io {cmds:?}: {}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// base (64M: data, a zero range) <- mid (data) <- top (data, compressed,
/// zero cluster), all made by qemu.
fn chain(dir: &Path) {
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"]);
    qemu_io(
        dir,
        "base.qcow2",
        &[
            "write -P 0xaa 0 1M",
            "write -P 0xbb 4M 512k",
            "write -z 8M 1M",
        ],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    qemu_io(
        dir,
        "mid.qcow2",
        &["write -P 0xcc 512k 1M", "write -P 0x11 10M 100k"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io(
        dir,
        "top.qcow2",
        &[
            "write -P 0xdd 2M 64k",
            "write -c -P 0xee 3M 64k",
            "write -z 4M 64k",
        ],
    );
}

#[test]
fn create_is_read_by_qemu_img() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("create");
    let dir = &d.0;
    let out = vireo(dir, &["create", "-f", "qcow2", "a.qcow2", "1G"]);
    assert_eq!(
        out,
        qemu_img(dir, &["create", "-f", "qcow2", "q.qcow2", "1G"]).replace("q.qcow2", "a.qcow2")
    );
    vireo(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k,compat=0.10",
            "b.qcow2",
            "1.5M",
        ],
    );
    vireo(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "c.qcow2",
        ],
    );
    vireo(dir, &["create", "-q", "r.raw", "100k"]);
    let a = json(&qemu_img(dir, &["info", "--output=json", "a.qcow2"]));
    assert_eq!(a["virtual-size"], 1u64 << 30);
    assert_eq!(a["cluster-size"], 65536);
    assert_eq!(a["format-specific"]["data"]["compat"], "1.1");
    let b = json(&qemu_img(dir, &["info", "--output=json", "b.qcow2"]));
    assert_eq!(b["virtual-size"], 1536 << 10);
    assert_eq!(b["cluster-size"], 4096);
    assert_eq!(b["format-specific"]["data"]["compat"], "0.10");
    let c = json(&qemu_img(dir, &["info", "--output=json", "c.qcow2"]));
    assert_eq!(c["virtual-size"], 1u64 << 30);
    assert_eq!(c["backing-filename"], "a.qcow2");
    assert_eq!(c["backing-filename-format"], "qcow2");
    let r = json(&qemu_img(dir, &["info", "--output=json", "r.raw"]));
    assert_eq!(
        (r["format"].clone(), r["virtual-size"].clone()),
        ("raw".into(), (100u64 << 10).into())
    );
    for f in ["a.qcow2", "b.qcow2", "c.qcow2"] {
        qemu_img(dir, &["check", "-q", f]);
    }
    // A backing file without its format is refused, with the format to add.
    let out = vireo_raw(dir, &["create", "-f", "qcow2", "-b", "a.qcow2", "d.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("vireo img: ") && err.contains("-F qcow2"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn info_and_map_print_what_qemu_img_prints() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("info");
    let dir = &d.0;
    chain(dir);
    qemu_img(dir, &["snapshot", "-c", "snap1", "mid.qcow2"]);
    qemu_img(dir, &["create", "-q", "-f", "raw", "r.raw", "3M"]);
    qemu_io(dir, "r.raw", &["write -P 1 1M 64k"]);
    for f in ["top.qcow2", "mid.qcow2", "base.qcow2", "r.raw"] {
        for args in [
            &["info", f][..],
            &["info", "--output=json", f],
            &["info", "--backing-chain", f],
            &["info", "--backing-chain", "--output=json", f],
            &["map", "--output=json", f],
        ] {
            assert_eq!(vireo(dir, args), qemu_img(dir, args), "{args:?}");
        }
    }
    // Human map: the same rows; the compressed cluster of top cannot be shown.
    for f in ["mid.qcow2", "base.qcow2", "r.raw"] {
        assert_eq!(vireo(dir, &["map", f]), qemu_img(dir, &["map", f]), "{f}");
    }
    let out = vireo_raw(dir, &["map", "top.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    // A window.
    let args = [
        "map",
        "--output=json",
        "--start-offset=1k",
        "--max-length=3M",
        "top.qcow2",
    ];
    assert_eq!(vireo(dir, &args), qemu_img(dir, &args));
    // The JSON shorthand.
    assert_eq!(
        vireo(dir, &["info", "--json", "top.qcow2"]),
        qemu_img(dir, &["info", "--output=json", "top.qcow2"])
    );
    // Errors: one line, exit 1.
    let out = vireo_raw(dir, &["info", "missing.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("vireo img: ") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn convert_writes_what_qemu_img_writes() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("convert");
    let dir = &d.0;
    chain(dir);
    // To raw: byte for byte the same file, equally sparse.
    vireo(dir, &["convert", "-O", "raw", "top.qcow2", "v.raw"]);
    qemu_img(dir, &["convert", "-O", "raw", "top.qcow2", "q.raw"]);
    let (v, q) = (
        std::fs::read(dir.join("v.raw")).expect("read"),
        std::fs::read(dir.join("q.raw")).expect("read"),
    );
    assert!(v == q, "raw outputs differ");
    assert_eq!(
        vireo(dir, &["map", "--output=json", "v.raw"]),
        qemu_img(dir, &["map", "--output=json", "q.raw"])
    );
    // To qcow2, plain and compressed: the same contents, the same clusters
    // allocated, and qemu-img check finds nothing wrong.
    vireo(dir, &["convert", "-O", "qcow2", "top.qcow2", "v.qcow2"]);
    qemu_img(dir, &["convert", "-O", "qcow2", "top.qcow2", "q.qcow2"]);
    vireo(
        dir,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            "v.raw",
            "vc.qcow2",
        ],
    );
    for f in ["v.qcow2", "vc.qcow2"] {
        qemu_img(dir, &["compare", "q.raw", f]);
        qemu_img(dir, &["check", "-q", f]);
    }
    let coverage = |f: &str| -> Vec<(u64, u64, bool)> {
        json(&qemu_img(dir, &["map", "--output=json", f]))
            .as_array()
            .expect("list")
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().expect("start"),
                    e["length"].as_u64().expect("length"),
                    e["data"].as_bool().expect("data"),
                )
            })
            .collect()
    };
    assert_eq!(coverage("v.qcow2"), coverage("q.qcow2"));
    let vc = json(&qemu_img(dir, &["check", "--output=json", "vc.qcow2"]));
    assert!(vc["compressed-clusters"].as_u64().unwrap_or(0) > 0, "{vc}");
    // Several sources joined, with progress.
    let out = vireo(
        dir,
        &[
            "convert",
            "-p",
            "-O",
            "raw",
            "base.qcow2",
            "mid.qcow2",
            "j.raw",
        ],
    );
    assert!(
        out.starts_with("    (0.00/100%)\r") && out.ends_with("    (100.00/100%)\r\n"),
        "{out:?}"
    );
    qemu_img(
        dir,
        &["convert", "-O", "raw", "base.qcow2", "mid.qcow2", "qj.raw"],
    );
    assert!(
        std::fs::read(dir.join("j.raw")).expect("read")
            == std::fs::read(dir.join("qj.raw")).expect("read")
    );
    // An overlay (-B): only top's own clusters are copied.
    vireo(
        dir,
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "ov.qcow2",
        ],
    );
    qemu_img(dir, &["compare", "q.raw", "ov.qcow2"]);
    let own: u64 = json(&qemu_img(dir, &["map", "--output=json", "ov.qcow2"]))
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["depth"] == 0 && e["present"] == true)
        .map(|e| e["length"].as_u64().expect("length"))
        .sum();
    assert_eq!(own, 3 * 65536);
    // Raw to qcow2 and back.
    vireo(
        dir,
        &["convert", "-f", "raw", "-O", "qcow2", "q.raw", "back.qcow2"],
    );
    qemu_img(dir, &["compare", "q.raw", "back.qcow2"]);
    // -S 0 allocates everything.
    vireo(
        dir,
        &[
            "convert",
            "-S",
            "0",
            "-O",
            "qcow2",
            "base.qcow2",
            "full.qcow2",
        ],
    );
    let full = json(&qemu_img(dir, &["check", "--output=json", "full.qcow2"]));
    assert_eq!(full["allocated-clusters"], full["total-clusters"]);
}

#[test]
fn resize_rebase_commit_agree_with_qemu_img() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("modify");
    let dir = &d.0;
    chain(dir);
    qemu_img(dir, &["convert", "-O", "raw", "top.qcow2", "top.raw"]);
    // Safe rebase of top onto base: mid's data moves into top.
    for f in ["top.qcow2", "mid.qcow2", "base.qcow2"] {
        std::fs::copy(dir.join(f), dir.join(format!("q-{f}"))).expect("copy");
    }
    qemu_img(
        dir,
        &[
            "rebase",
            "-u",
            "-b",
            "q-mid.qcow2",
            "-F",
            "qcow2",
            "q-top.qcow2",
        ],
    );
    qemu_img(
        dir,
        &[
            "rebase",
            "-u",
            "-b",
            "q-base.qcow2",
            "-F",
            "qcow2",
            "q-mid.qcow2",
        ],
    );
    vireo(
        dir,
        &["rebase", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    );
    qemu_img(
        dir,
        &["rebase", "-b", "q-base.qcow2", "-F", "qcow2", "q-top.qcow2"],
    );
    qemu_img(dir, &["compare", "top.raw", "top.qcow2"]);
    qemu_img(dir, &["check", "-q", "top.qcow2"]);
    assert_eq!(
        qemu_img(dir, &["map", "--output=json", "top.qcow2"]),
        qemu_img(dir, &["map", "--output=json", "q-top.qcow2"])
    );
    // Unsafe rebase: the header only.
    vireo(
        dir,
        &[
            "rebase",
            "-u",
            "-b",
            "other.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    let mid = json(&qemu_img(dir, &["info", "--output=json", "mid.qcow2"]));
    assert_eq!(mid["backing-filename"], "other.qcow2");
    vireo(
        dir,
        &[
            "rebase",
            "-u",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    // Commit top into base, then top is empty and still reads the same.
    let out = vireo(dir, &["commit", "top.qcow2"]);
    assert_eq!(out, "Image committed.\n");
    qemu_img(dir, &["compare", "top.raw", "base.qcow2"]);
    qemu_img(dir, &["compare", "top.raw", "top.qcow2"]);
    qemu_img(dir, &["check", "-q", "base.qcow2"]);
    let top_map = json(&qemu_img(dir, &["map", "--output=json", "top.qcow2"]));
    assert!(
        top_map
            .as_array()
            .expect("list")
            .iter()
            .all(|e| e["depth"] != 0),
        "{top_map}"
    );
    // Resize: grow, refuse to shrink without --shrink, shrink.
    assert_eq!(
        vireo(dir, &["resize", "base.qcow2", "+1M"]),
        "Image resized.\n"
    );
    let out = vireo_raw(dir, &["resize", "base.qcow2", "-2M"]);
    assert_eq!(out.status.code(), Some(1));
    vireo(dir, &["resize", "--shrink", "base.qcow2", "-2M"]);
    let info = json(&qemu_img(dir, &["info", "--output=json", "base.qcow2"]));
    assert_eq!(info["virtual-size"], (64u64 << 20) - (1 << 20));
    vireo(dir, &["resize", "-f", "raw", "top.raw", "80M"]);
    assert_eq!(
        std::fs::metadata(dir.join("top.raw")).expect("stat").len(),
        80 << 20
    );
    qemu_img(dir, &["check", "-q", "base.qcow2"]);
}

#[test]
fn snapshot_and_check_agree_with_qemu_img() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new("snapcheck");
    let dir = &d.0;
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "s.qcow2", "64M"]);
    qemu_io(dir, "s.qcow2", &["write -P 1 0 1M"]);
    vireo(dir, &["snapshot", "-c", "first", "s.qcow2"]);
    qemu_io(dir, "s.qcow2", &["write -P 2 0 1M"]);
    assert_eq!(
        vireo(dir, &["snapshot", "-l", "s.qcow2"]),
        qemu_img(dir, &["snapshot", "-l", "s.qcow2"])
    );
    assert!(qemu_img(dir, &["snapshot", "-l", "s.qcow2"]).contains(" first "));
    vireo(dir, &["snapshot", "-a", "first", "s.qcow2"]);
    qemu_io(dir, "s.qcow2", &["read -P 1 0 1M"]);
    for args in [
        &["check", "s.qcow2"][..],
        &["check", "--output=json", "s.qcow2"],
    ] {
        assert_eq!(vireo(dir, args), qemu_img(dir, args), "{args:?}");
    }
    vireo(dir, &["snapshot", "-d", "first", "s.qcow2"]);
    assert_eq!(vireo(dir, &["snapshot", "-l", "s.qcow2"]), "");
    qemu_img(dir, &["check", "-q", "s.qcow2"]);
    // A leaked cluster: L2 entry 3 of the first L2 table zeroed.
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "l.qcow2", "64M"]);
    qemu_io(dir, "l.qcow2", &["write -P 0x5a 0 256k"]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("l.qcow2"))
            .expect("open");
        f.write_all_at(&[0u8; 8], 0x40000 + 3 * 8).expect("poke");
    }
    for args in [
        &["check", "l.qcow2"][..],
        &["check", "--output=json", "l.qcow2"],
    ] {
        let v = vireo_raw(dir, args);
        let q = run("qemu-img", dir, args);
        assert_eq!(v.status.code(), Some(3), "{args:?}");
        assert_eq!(q.status.code(), Some(3));
        assert_eq!(text(&v), text(&q), "{args:?}");
    }
    let v = vireo_raw(dir, &["check", "-r", "leaks", "l.qcow2"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(text(&v).contains("    1 leaked clusters"), "{}", text(&v));
    qemu_img(dir, &["check", "-q", "l.qcow2"]);
    // Raw images have nothing to check.
    qemu_img(dir, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    assert_eq!(vireo_raw(dir, &["check", "r.raw"]).status.code(), Some(63));
}
