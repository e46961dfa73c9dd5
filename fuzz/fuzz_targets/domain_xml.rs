//! libvirt domain XML from untrusted hands (API requests, `vireo define`):
//! `Domain::from_xml` must never panic, and whatever it accepts must write
//! back to XML that parses to the same domain and writes back identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vireo_domain::Domain;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(domain) = Domain::from_xml(text) else {
        return;
    };
    let xml = domain.to_xml();
    let again = match Domain::from_xml(&xml) {
        Ok(d) => d,
        Err(e) => panic!("normalised XML refused: {e}\n{xml}"),
    };
    assert_eq!(again, domain, "round trip changed the domain");
    assert_eq!(again.to_xml(), xml, "normalised output is not stable");
});
