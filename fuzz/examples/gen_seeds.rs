//! Writes the seed corpus: a few well-formed inputs per target, in the
//! format of src/lib.rs, so that fuzzing starts from real requests.
//!
//! `cargo run --example gen_seeds` (from fuzz/); run.sh does it when a
//! corpus folder is missing. The files are small and committed.
//!
//! qcow2_open's seeds are tiny images (512-byte to 4 KiB clusters) made by
//! qemu-img and qemu-io (skipped, with a message, without them) and one made
//! by Vireo.

use std::path::Path;
use std::process::Command;

use vireo_devices::virtio::block::request::types;
use vireo_fuzz::seed::{input, table, Desc, FREE};
use vireo_fuzz::{F_INDIRECT, F_NEXT, F_WRITE};

const R: u16 = F_NEXT;
const W: u16 = F_WRITE | F_NEXT;
const WL: u16 = F_WRITE;

fn blk_header(t: u32, sector: u64) -> Vec<u8> {
    let mut h = t.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, n: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&n.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus folder");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let h = FREE; // request headers and small blobs live from here
    let data = 0x1000; // data buffers: zero memory past the image

    // virtqueue: well-formed chains of every kind.
    let vq = root.join("virtqueue");
    let d: &[Desc] = &[
        (data, 16, R, 1),
        (data + 0x100, 0, R, 2),
        (data + 0x200, 100, W, 3),
        (data + 0x300, 4, WL, 0),
    ];
    write(&vq, "direct", &input(16, false, 0, 0, d, &[0], &[]));
    let ind = table(&[(data, 8, R, 1), (data + 0x100, 8, WL, 0)]);
    let d: &[Desc] = &[(h, 32, F_INDIRECT, 0)];
    write(
        &vq,
        "indirect",
        &input(16, false, 0, 0, d, &[0], &[(h, &ind)]),
    );
    let d: &[Desc] = &[
        (data, 8, 0, 0),
        (data + 8, 8, W, 2),
        (data + 16, 8, WL, 0),
        (data + 24, 1, WL, 0),
    ];
    write(
        &vq,
        "three_chains_event_idx",
        &input(8, true, 0, 2, d, &[0, 1, 3], &[]),
    );
    // Buffers up to the end of the first region (0x40000); with memory
    // shapes 1 (hole) and 2 (adjacent regions) the fuzzer moves them across.
    let d: &[Desc] = &[(0x3_ff00, 0x100, R, 1), (0x4_0000, 0x100, WL, 0)];
    write(&vq, "region_edge", &input(4, false, 0, 1, d, &[0], &[]));

    // blk_request: one of each request type, and some framings.
    let blk = root.join("blk_request");
    let rw = |t: u32, sector: u64, data_flags: u16, len: u32| -> Vec<u8> {
        let d: &[Desc] = &[
            (h, 16, R, 1),
            (data, len, data_flags, 2),
            (data + 0x1000, 1, WL, 0),
        ];
        input(16, false, 2, 0, d, &[0], &[(h, &blk_header(t, sector))])
    };
    write(&blk, "read", &rw(types::IN, 3, W, 1024));
    write(&blk, "write", &rw(types::OUT, 7, R, 512));
    write(&blk, "get_id", &rw(types::GET_ID, 0, W, 20));
    let d: &[Desc] = &[(h, 16, R, 1), (data + 0x1000, 1, WL, 0)];
    write(
        &blk,
        "flush",
        &input(
            16,
            false,
            2,
            0,
            d,
            &[0],
            &[(h, &blk_header(types::FLUSH, 0))],
        ),
    );
    for (name, t, seg) in [
        ("discard", types::DISCARD, segment(8, 4, 0)),
        (
            "write_zeroes_unmap",
            types::WRITE_ZEROES,
            segment(120, 8, 1),
        ),
    ] {
        let d: &[Desc] = &[(h, 16, R, 1), (h + 16, 16, R, 2), (data + 0x1000, 1, WL, 0)];
        let blobs: &[(u64, &[u8])] = &[(h, &blk_header(t, 0)), (h + 16, &seg)];
        write(&blk, name, &input(16, false, 2, 0, d, &[0], blobs));
    }
    // A read whose header is split 5 + 11 and whose status shares the last
    // data descriptor.
    let hdr = blk_header(types::IN, 1);
    let d: &[Desc] = &[
        (h, 5, R, 1),
        (h + 0x20, 11, R, 2),
        (data, 512, W, 3),
        (data + 0x200, 513, WL, 0),
    ];
    let blobs: &[(u64, &[u8])] = &[(h, &hdr[..5]), (h + 0x20, &hdr[5..])];
    write(&blk, "read_split", &input(16, false, 2, 0, d, &[0], blobs));
    // A write through an indirect table.
    let ind = table(&[(h, 16, R, 1), (data, 512, R, 2), (data + 0x1000, 1, WL, 0)]);
    let d: &[Desc] = &[(h + 0x40, 48, F_INDIRECT, 0)];
    let blobs: &[(u64, &[u8])] = &[(h, &blk_header(types::OUT, 2)), (h + 0x40, &ind)];
    write(
        &blk,
        "write_indirect",
        &input(16, false, 2, 0, d, &[0], blobs),
    );
    // A batch (read, write, flush), completions through host_event, then
    // through a reset, then inline with a second round.
    let d: &[Desc] = &[
        (h, 16, R, 1),
        (data, 512, W, 2),
        (data + 0x1000, 1, WL, 0),
        (h + 16, 16, R, 4),
        (data + 0x200, 1024, R, 5),
        (data + 0x1001, 1, WL, 0),
        (h + 32, 16, R, 7),
        (data + 0x1002, 1, WL, 0),
    ];
    let blobs: &[(u64, &[u8])] = &[
        (h, &blk_header(types::IN, 0)),
        (h + 16, &blk_header(types::OUT, 10)),
        (h + 32, &blk_header(types::FLUSH, 0)),
    ];
    write(
        &blk,
        "batch_events",
        &input(16, true, 2 | 4, 0, d, &[0, 3, 6], blobs),
    );
    write(
        &blk,
        "batch_reset",
        &input(16, false, 8, 0, d, &[0, 3, 6], blobs),
    );
    write(
        &blk,
        "batch_two_rounds",
        &input(16, false, 0, 1, d, &[0, 3], blobs),
    );
    // A read into a buffer across the end of the first region (memory
    // shape 2 makes it two adjacent host mappings).
    let d: &[Desc] = &[
        (h, 16, R, 1),
        (0x3_ff00, 512, W, 2),
        (data + 0x1000, 1, WL, 0),
    ];
    let mut s = input(16, false, 2, 0, d, &[0], &[(h, &blk_header(types::IN, 0))]);
    s[1] |= 2 << 1;
    write(&blk, "read_across_regions", &s);

    // net_tx: transmit chains and control commands.
    let tx = root.join("net_tx");
    let d: &[Desc] = &[(h, 12, R, 1), (data, 60, 0, 0)];
    write(
        &tx,
        "header_and_frame",
        &input(16, false, 0, 0, d, &[0], &[]),
    );
    let d: &[Desc] = &[(data, 72, 0, 0), (data + 0x100, 10, 0, 0)];
    write(&tx, "two_packets", &input(16, false, 0, 0, d, &[0, 1], &[]));
    for (name, cmd) in [
        ("ctrl_mq_pairs", &[4u8, 0, 2, 0][..]),
        ("ctrl_rx_promisc", &[0, 0, 1][..]),
        ("ctrl_mac_table", &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0][..]),
    ] {
        let d: &[Desc] = &[(h, cmd.len() as u32, R, 1), (data, 1, WL, 0)];
        write(&tx, name, &input(16, false, 1, 0, d, &[0], &[(h, cmd)]));
    }

    // net_rx: parameters, then receive chains; the packet sits in the image.
    let rx = root.join("net_rx");
    let pkt_at = 0x400u16;
    let rx_input = |features: u64, mtu: u16, pkt: &[u8], d: &[Desc], heads: &[u16]| {
        let mut v = features.to_le_bytes().to_vec();
        v.extend_from_slice(&mtu.to_le_bytes());
        v.extend_from_slice(&pkt_at.to_le_bytes());
        v.extend_from_slice(&(pkt.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend(input(
            16,
            false,
            0,
            0,
            d,
            heads,
            &[(u64::from(pkt_at), pkt)],
        ));
        v
    };
    let mut plain = vec![0u8; 12 + 60];
    plain[12..].fill(0xab);
    let d: &[Desc] = &[(data, 1526, WL, 0), (data + 0x800, 1526, WL, 0)];
    write(&rx, "plain", &rx_input(0, 0, &plain, d, &[0, 1]));
    write(
        &rx,
        "plain_mtu",
        &rx_input(1 << 3, 1500, &plain, d, &[0, 1]),
    );
    let mut big = vec![0u8; 12 + 100];
    big[12..].fill(0xcd);
    let d: &[Desc] = &[
        (data, 32, WL, 0),
        (data + 0x40, 32, WL, 0),
        (data + 0x80, 16, W, 3),
        (data + 0xc0, 64, WL, 0),
    ];
    write(&rx, "mergeable", &rx_input(1 << 15, 0, &big, d, &[0, 1, 2]));
    // A TSO4 packet with a partial checksum, for a driver with GUEST_CSUM
    // and GUEST_TSO4.
    let mut tso = vec![0u8; 12 + 200];
    tso[0] = 1; // NEEDS_CSUM
    tso[1] = 1; // GSO_TCPV4
    let d: &[Desc] = &[(data, 4096, WL, 0)];
    write(
        &rx,
        "tso4",
        &rx_input((1 << 1) | (1 << 7), 0, &tso, d, &[0]),
    );

    qcow2_seeds(&root.join("qcow2_open"));
}

/// One qcow2 seed: `qemu-img create` with `create` (options, size), then
/// each step: a qemu-io command, or `qemu-img ARGS` (the image last).
fn qemu_seed(dir: &Path, name: &str, create: &[&str], steps: &[&str]) {
    let tmp = std::env::temp_dir().join(format!("vireo-seed-{}-{name}", std::process::id()));
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    let (size, options) = create.split_last().expect("a size");
    args.extend_from_slice(options);
    let _ = std::fs::remove_file(&tmp);
    let out = Command::new("qemu-img")
        .args(&args)
        .arg(&tmp)
        .arg(size)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in steps {
        match step.strip_prefix("qemu-img ") {
            Some(args) => run("qemu-img", &args.split(' ').collect::<Vec<_>>()),
            None => run("qemu-io", &["-f", "qcow2", "-c", step]),
        }
    }
    let bytes = std::fs::read(&tmp).expect("read the image");
    let _ = std::fs::remove_file(&tmp);
    write(dir, name, &bytes);
}

fn qcow2_seeds(dir: &Path) {
    vireo_seed(dir);
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("qemu-img not found: only Vireo's qcow2_open seed written");
        return;
    }
    qemu_seed(
        dir,
        "v2",
        &["-o", "compat=0.10,cluster_size=512", "256K"],
        &[
            "write -P 0x11 0 1k",
            "write -P 0x22 100k 512",
            "write -z 2k 1k",
        ],
    );
    qemu_seed(
        dir,
        "v3_4k",
        &["-o", "cluster_size=4096", "1M"],
        &[
            "write -P 0x33 0 6k",
            "write -z 16k 8k",
            "write -P 0x44 900k 4k",
            "discard 0 4k",
        ],
    );
    qemu_seed(
        dir,
        "compressed",
        &["-o", "cluster_size=4096", "256K"],
        &[
            "write -c -P 0x55 0 4k",
            "write -c -P 0x66 4k 4k",
            "write -P 7 12k 1k",
        ],
    );
    qemu_seed(
        dir,
        "compressed_zstd",
        &["-o", "cluster_size=512,compression_type=zstd", "64K"],
        &["write -c -P 0x77 0 512", "write -c -P 0x78 1k 512"],
    );
    qemu_seed(
        dir,
        "snapshot",
        &["-o", "cluster_size=512", "128K"],
        &[
            "write -P 1 0 2k",
            "qemu-img snapshot -c first",
            "write -P 2 512 1k",
            "write -P 3 100k 512",
        ],
    );
    qemu_seed(
        dir,
        "backing",
        &["-o", "cluster_size=512", "64K"],
        // Written first: qemu-io would open the (missing) backing file.
        &["write -P 3 1k 512", "qemu-img rebase -u -b base.raw -F raw"],
    );
    qemu_seed(
        dir,
        "refcount1",
        &["-o", "cluster_size=512,refcount_bits=1", "64K"],
        &["write -P 4 0 1k", "write -P 5 40k 512"],
    );
}

/// A seed in Vireo's own layout, written through the library.
fn vireo_seed(dir: &Path) {
    use vireo_disk::image::{CreateOptions, Image, Qcow2};
    let tmp = std::env::temp_dir().join(format!("vireo-seed-{}-vireo", std::process::id()));
    Qcow2::create(
        &tmp,
        &CreateOptions {
            size: 128 << 10,
            // The smallest clusters a 512-byte sector can compress (one
            // sector saved at least).
            cluster_size: 1024,
            ..CreateOptions::default()
        },
    )
    .expect("create the image");
    {
        let image = Qcow2::open(&tmp, false).expect("open the image");
        image.write_at(&[0x61; 1500], 300).expect("write");
        image.write_at(&[0x62; 512], 70 << 10).expect("write");
        image
            .write_compressed(100 << 10, &[0x63; 512])
            .expect("compressed write");
        image.write_zeroes(0, 1024, false).expect("write zeroes");
        image.flush().expect("flush");
    }
    let bytes = std::fs::read(&tmp).expect("read the image");
    let _ = std::fs::remove_file(&tmp);
    write(dir, "vireo", &bytes);
}
