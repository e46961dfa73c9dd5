//! The domain XML corpus.
//!
//! - `corpus/good/NAME.xml` must be accepted; its normalised output must
//!   equal `corpus/good/NAME.expected.xml` byte for byte, read back to the
//!   same domain, and write again unchanged. Generated UUIDs and MAC
//!   addresses come from a counter, so outputs are stable.
//! - `corpus/bad/NAME.xml` must be refused; its first line is
//!   `<!-- expect: TEXT -->` and the error's text must contain TEXT.
//!
//! `VIREO_BLESS=1 cargo test -p vireo-domain --test corpus` rewrites the
//! expected outputs (review the diff before committing it).

use std::fs;
use std::path::{Path, PathBuf};

use vireo_domain::{Domain, IdGenerator, MacAddr, Uuid, MAX_DOCUMENT_BYTES};

/// UUIDs `00000000-0000-4000-8000-00000000000N` and MACs `52:54:00:00:00:0N`.
#[derive(Default)]
struct Counter {
    uuids: u8,
    macs: u8,
}

impl IdGenerator for Counter {
    fn uuid(&mut self) -> Uuid {
        self.uuids += 1;
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | u128::from(self.uuids))
    }

    fn mac(&mut self) -> MacAddr {
        self.macs += 1;
        MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, self.macs])
    }
}

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".xml") && !name.ends_with(".expected.xml")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn good_documents_normalise_to_their_expected_output() {
    let bless = std::env::var_os("VIREO_BLESS").is_some();
    let files = corpus("good");
    assert!(files.len() >= 6, "the good corpus shrank: {files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let name = path.display();
        let input = fs::read_to_string(path).expect("readable corpus file");
        let domain = match Domain::from_xml_with(&input, &mut Counter::default()) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{name}: refused: {e}"));
                continue;
            }
        };
        let out = domain.to_xml();
        let expected_path = path.with_extension("expected.xml");
        if bless {
            fs::write(&expected_path, &out).expect("write expected output");
        }
        match fs::read_to_string(&expected_path) {
            Ok(expected) if expected == out => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs from {}:\n--- expected\n{expected}\n--- got\n{out}",
                expected_path.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", expected_path.display())),
        }
        // Round trip: the output reads back to the same domain (nothing left
        // to generate) and writes again unchanged.
        match Domain::from_xml(&out) {
            Ok(again) if again == domain => {
                if again.to_xml() != out {
                    failures.push(format!("{name}: to_xml is not idempotent"));
                }
            }
            Ok(again) => failures.push(format!(
                "{name}: reads back differently:\n{domain:#?}\n{again:#?}"
            )),
            Err(e) => failures.push(format!("{name}: output refused: {e}\n{out}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Checks what a mutated document does: refused cleanly, or accepted and
/// round-tripping like any accepted document.
fn check_mutant(doc: &str, what: &str) -> Result<(), String> {
    let Ok(d) = Domain::from_xml(doc) else {
        return Ok(());
    };
    let out = d.to_xml();
    match Domain::from_xml(&out) {
        Ok(again) if again == d && again.to_xml() == out => Ok(()),
        Ok(_) => Err(format!("{what}: accepted but does not round-trip:\n{doc}")),
        Err(e) => Err(format!(
            "{what}: accepted but its output is refused: {e}\n{out}"
        )),
    }
}

#[test]
fn mutated_good_documents_are_refused_or_round_trip() {
    let mut failures = Vec::new();
    for path in corpus("good") {
        let input = fs::read_to_string(&path).expect("readable corpus file");
        let name = path.display().to_string();
        let bounds: Vec<usize> = input.char_indices().map(|(i, _)| i).collect();
        for (n, &i) in bounds.iter().enumerate() {
            let next = bounds.get(n + 1).copied().unwrap_or(input.len());
            // This character deleted; every third one replaced by a quote,
            // a bracket or an ampersand in turn; every seventh position cut.
            let mut mutants = vec![format!("{}{}", &input[..i], &input[next..])];
            if n % 3 == 0 {
                let c = ['\'', '<', '&'][(n / 3) % 3];
                mutants.push(format!("{}{c}{}", &input[..i], &input[next..]));
            }
            if n % 7 == 0 {
                mutants.push(input[..i].to_string());
            }
            for (k, m) in mutants.iter().enumerate() {
                if let Err(e) = check_mutant(m, &format!("{name} at byte {i}, mutation {k}")) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_documents_are_refused_with_the_expected_error() {
    let files = corpus("bad");
    assert!(
        files.len() >= 40,
        "the bad corpus shrank: {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path.display();
        let input = fs::read_to_string(path).expect("readable corpus file");
        let Some(expect) = input
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("<!-- expect: "))
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            failures.push(format!("{name}: no `<!-- expect: ... -->` first line"));
            continue;
        };
        match Domain::from_xml(&input) {
            Ok(d) => failures.push(format!("{name}: accepted:\n{}", d.to_xml())),
            Err(e) if e.to_string().contains(expect) => {}
            Err(e) => failures.push(format!("{name}: wanted {expect:?}, got {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_document_over_one_mib_is_refused_before_parsing() {
    let padding = "x".repeat(MAX_DOCUMENT_BYTES);
    let doc = format!(
        "<domain type='kvm'>\n<name>big</name>\n<description>{padding}</description>\n\
         <memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    );
    let e = Domain::from_xml(&doc).expect_err("too large");
    assert_eq!(e.line, 1);
    assert!(e.message.contains("at most 1048576 (1 MiB)"), "{e}");
    // Just under the limit is fine.
    let fits = format!(
        "<domain type='kvm'>\n<name>big</name>\n<description>{}</description>\n\
         <memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>",
        "x".repeat(MAX_DOCUMENT_BYTES - 200)
    );
    Domain::from_xml(&fits).expect("a large description under 1 MiB");
}

#[test]
fn more_pci_devices_than_slots_are_refused() {
    let disks: String = (0..32)
        .map(|i| {
            let letter = char::from(b'a' + (i % 26) as u8);
            let dev = if i < 26 {
                format!("vd{letter}")
            } else {
                format!("vda{letter}")
            };
            format!("<disk type='file'><source file='/d/{i}.img'/><target dev='{dev}'/></disk>\n")
        })
        .collect();
    let doc = format!(
        "<domain type='kvm'><name>many</name><memory unit='MiB'>64</memory>\
         <os><type>hvm</type></os>\n<devices>\n{disks}</devices></domain>"
    );
    let e = Domain::from_xml(&doc).expect_err("32 disks");
    assert_eq!(e.path, "/domain/devices");
    assert!(e.message.contains("room for 31"), "{e}");
}
