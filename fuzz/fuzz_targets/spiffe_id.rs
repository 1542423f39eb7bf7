//! `SpiffeId::parse` on arbitrary text. Properties: a parsed ID prints back
//! to the same text, which parses again to the same value; trust domain and
//! path put together give the ID; what parses obeys the SPIFFE rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::identity::spiffe::MAX_SPIFFE_ID_LEN;
use portcullis::identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(id) = SpiffeId::parse(&text) else {
        return;
    };
    let printed = id.to_string();
    assert_eq!(printed, text, "to_string changed the ID");
    assert_eq!(SpiffeId::parse(&printed), Ok(id.clone()), "round trip");
    assert_eq!(
        format!("spiffe://{}{}", id.trust_domain(), id.path()),
        printed
    );
    assert!(printed.len() <= MAX_SPIFFE_ID_LEN);
    let td = id.trust_domain();
    assert!(!td.is_empty());
    assert!(td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
    let path = id.path();
    if !path.is_empty() {
        assert!(path.starts_with('/'));
        for segment in path[1..].split('/') {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        }
    }
    // No query, fragment, port or user info can survive.
    assert!(!printed.contains(['?', '#', '@', '%']));
    assert!(!printed["spiffe://".len()..].contains(':'));
});
